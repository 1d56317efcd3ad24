"""The one training loop: a custom loop (tf.function step run through `strategy.run`) for one process or many.

`fit(...)` serves one CPU, several GPUs (MirroredStrategy) and several machines (MultiWorkerMirroredStrategy
from TF_CONFIG) with the same code: the loss is summed per replica and scaled by the global batch size
(`tf.nn.compute_average_loss`), datasets come from `distribute_datasets_from_function`, and every step
all-reduces a stop flag, so a cancel seen by the chief stops every worker after that batch. Keras's
`model.fit` is not used because it fails under MultiWorkerMirroredStrategy (keras-team/keras#20585).

The trainer knows nothing of run folders: what happens around an epoch (history, checkpoints, cancel,
progress) comes in through `LoopHooks`. Dropout and augmentation are re-seeded from (seed, epoch) at every
epoch, so a resumed run is reproducible, though not bit-identical to one that never stopped.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from genre_core.runs import heartbeat
from genre_core.training.config import TrainConfig
from genre_core.util.cluster import worker_count

log = logging.getLogger(__name__)

Progress = Callable[[dict], None]


@dataclass
class LoopState:
    """What the loop carries between epochs (and into checkpoint/state.json)."""

    epoch: int = 0  # epochs finished
    best_monitor: float = math.inf
    best_epoch: int = 0
    epochs_without_improvement: int = 0
    seed: int = 0
    history: list[dict] = field(default_factory=list)


@dataclass
class LoopResult:
    """The loop's outcome: the model holds the best weights when this is returned."""

    state: LoopState
    cancelled: bool = False
    stopped_early: bool = False


@dataclass
class LoopHooks:
    """What the loop calls around its epochs; every hook is optional.

    evaluate_val() -> (val_loss, val_accuracy) on the chief's model copy (every worker computes the same
    numbers); without it the best epoch is chosen by training loss. on_improvement(state) runs when the
    monitored loss improves, on_epoch_end(history row) and checkpoint(state) after every epoch, and
    cancel_requested() before every batch. progress gets "batch" and "epoch" events."""

    evaluate_val: Callable[[], tuple[float, float]] | None = None
    on_improvement: Callable[[LoopState], None] | None = None
    on_epoch_end: Callable[[dict], None] | None = None
    checkpoint: Callable[[LoopState], None] | None = None
    cancel_requested: Callable[[], bool] = lambda: False
    progress: Progress = lambda event: None


# ----------------------------------------------------------------------------------------------------------
# Factories


def make_optimizer(config: TrainConfig, total_steps: int = 0):
    """Adam (beta_1/beta_2 as given), AdamW (decoupled weight decay) or SGD with momentum.

    lr_schedule "cosine" decays the learning rate from config.learning_rate to 0 over `total_steps`
    optimizer steps (keras.optimizers.schedules.CosineDecay); the step count lives in the optimizer, so a
    resumed run continues the same curve.
    """
    import keras

    learning_rate = config.learning_rate
    if config.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(config.learning_rate, max(1, int(total_steps)))
    if config.optimizer == "adam":
        optimizer = keras.optimizers.Adam(learning_rate, beta_1=config.beta_1, beta_2=config.beta_2)
    elif config.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=config.weight_decay or 0.004,
                                           beta_1=config.beta_1, beta_2=config.beta_2)
    else:
        optimizer = keras.optimizers.SGD(learning_rate, momentum=config.momentum, nesterov=True)
    if config.mixed_precision and keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def make_loss(config: TrainConfig):
    """The per-example loss on one-hot targets: categorical cross-entropy, or focal loss for "focal"."""
    import keras

    if config.balancing == "focal":
        return keras.losses.CategoricalFocalCrossentropy(gamma=config.focal_gamma,
                                                         label_smoothing=config.label_smoothing, reduction=None)
    return keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing, reduction=None)


AUGMENTATION_LAYERS = {
    "flip": lambda keras, seed: keras.layers.RandomFlip("horizontal", seed=seed),
    # Zooming in by up to 20% is a random crop resized back to the input size.
    "crop": lambda keras, seed: keras.layers.RandomZoom((-0.2, 0.0), seed=seed),
    "zoom": lambda keras, seed: keras.layers.RandomZoom(0.15, seed=seed),
    "rotation": lambda keras, seed: keras.layers.RandomRotation(0.05, seed=seed),
    "contrast": lambda keras, seed: keras.layers.RandomContrast(0.2, seed=seed),
    "brightness": lambda keras, seed: keras.layers.RandomBrightness(0.2, value_range=(0.0, 255.0), seed=seed),
}


def make_augmenter(augmentation: list[str], seed: int = 0):
    """A Keras preprocessing pipeline for float images 0..255, or None when no augmentation is asked for."""
    if not augmentation:
        return None
    import keras

    unknown = [name for name in augmentation if name not in AUGMENTATION_LAYERS]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}")
    layers = [AUGMENTATION_LAYERS[name](keras, seed + index) for index, name in enumerate(augmentation)]
    return keras.Sequential(layers, name="augmentation")


def set_precision(config: TrainConfig) -> bool:
    """Switch on mixed_float16 when asked and a GPU is present; otherwise warn and stay in float32."""
    import keras
    import tensorflow as tf

    if not config.mixed_precision:
        keras.mixed_precision.set_global_policy("float32")
        return False
    if not tf.config.list_physical_devices("GPU"):
        log.warning("mixed_precision was asked for but there is no GPU; training in float32")
        print("warning: mixed_precision needs a GPU; training in float32", file=sys.stderr)
        keras.mixed_precision.set_global_policy("float32")
        return False
    keras.mixed_precision.set_global_policy("mixed_float16")
    return True


# ----------------------------------------------------------------------------------------------------------
# Inference


_FORWARD = weakref.WeakKeyDictionary()


def predict_probabilities(model, inputs, batch_size: int = 64) -> np.ndarray:
    """Softmax outputs for an array (images or features) or a tf.data dataset of (x, y) batches."""
    forward = _forward_function(model)
    outputs = []
    if isinstance(inputs, np.ndarray):
        for start in range(0, len(inputs), batch_size):
            outputs.append(forward(np.asarray(inputs[start:start + batch_size])).numpy())
            heartbeat.beat()  # Validation and final scoring report no progress events; they still beat.
    else:
        for batch, _labels in inputs:
            outputs.append(forward(batch).numpy())
            heartbeat.beat()
    if not outputs:
        return np.zeros((0, int(model.output.shape[-1])), dtype=np.float32)
    return np.concatenate(outputs).astype(np.float32)


def _forward_function(model):
    """One traced inference function per model (float32 probabilities), reused across calls."""
    import tensorflow as tf

    if model not in _FORWARD:
        @tf.function(reduce_retracing=True)
        def forward(batch):
            return tf.cast(model(tf.cast(batch, tf.float32), training=False), tf.float32)

        _FORWARD[model] = forward
    return _FORWARD[model]


# ----------------------------------------------------------------------------------------------------------
# The loop


def agree(strategy, value: float) -> float:
    """Average a number over all workers, so every worker takes the same early-stopping decision."""
    if worker_count() <= 1 or not math.isfinite(value):
        return value
    import tensorflow as tf

    per_replica = strategy.run(lambda: tf.constant(value, tf.float32))
    return float(strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None))


def fit(model, optimizer, make_dataset: Callable, steps_per_epoch: int, config: TrainConfig, num_classes: int,
        strategy, class_weight: np.ndarray | None = None, state: LoopState | None = None,
        hooks: LoopHooks | None = None) -> LoopResult:
    """Train `model` (built under `strategy.scope()`) for config.epochs epochs with one custom loop.

    make_dataset(epoch, input_context) -> tf.data.Dataset of (x, int labels) batches at the per-replica batch
    size, repeating; each epoch takes `steps_per_epoch` batches. The best weights by validation loss (train
    loss without validation) are kept in memory and put back in the model at the end or on cancel.
    """
    import keras

    hooks = hooks or LoopHooks()
    state = state or LoopState(seed=config.seed)
    step = _distributed_step(model, optimizer, config, num_classes, strategy, class_weight)
    best_weights = None  # Of this process's epochs; a resumed run's earlier best is in checkpoint/best.weights.h5.
    result = LoopResult(state=state)
    for epoch in range(state.epoch, config.epochs):
        started = time.monotonic()
        keras.utils.set_random_seed(config.seed + epoch)
        dataset = strategy.distribute_datasets_from_function(
            lambda context, epoch=epoch: make_dataset(epoch, context))
        train_loss, train_accuracy, result.cancelled = _train_epoch(
            step, iter(dataset), epoch, steps_per_epoch, config, strategy, hooks)
        if result.cancelled:
            break
        improved = _end_epoch(state, hooks, strategy, optimizer, epoch, train_loss, train_accuracy, started)
        if improved:
            best_weights = model.get_weights()
            if hooks.on_improvement is not None:
                hooks.on_improvement(state)
        if hooks.on_epoch_end is not None:
            hooks.on_epoch_end(state.history[-1])
        if hooks.checkpoint is not None:
            hooks.checkpoint(state)
        _epoch_event(state, hooks, config)
        if config.patience and state.epochs_without_improvement >= config.patience:
            result.stopped_early = True
            break
    if best_weights is not None:
        model.set_weights(best_weights)
    return result


def _distributed_step(model, optimizer, config: TrainConfig, num_classes: int, strategy, class_weight):
    """step(batch, stop) -> (summed loss, correct predictions, stop flag) over all replicas."""
    import tensorflow as tf

    global_batch = config.batch_size * strategy.num_replicas_in_sync
    loss_function = make_loss(config)
    weights = np.ones(num_classes, np.float32) if class_weight is None else np.asarray(class_weight, np.float32)
    with strategy.scope():
        class_weight_tensor = tf.constant(weights)
        optimizer.build(model.trainable_variables)

    def replica_step(images, labels, stop):
        labels = tf.cast(labels, tf.int32)
        with tf.GradientTape() as tape:
            probabilities = tf.cast(model(tf.cast(images, tf.float32), training=True), tf.float32)
            per_example = loss_function(tf.one_hot(labels, num_classes), probabilities)
            per_example = per_example * tf.gather(class_weight_tensor, labels)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled = optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32))
        return loss, correct, stop

    compiled_step = tf.function(replica_step, jit_compile=True) if config.xla else replica_step

    @tf.function
    def distributed_step(batch, stop):
        images, labels = batch
        outputs = strategy.run(compiled_step, args=(images, labels, stop))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for value in outputs]

    return distributed_step


def _train_epoch(step, iterator, epoch: int, steps_per_epoch: int, config: TrainConfig, strategy,
                 hooks: LoopHooks) -> tuple[float, float, bool]:
    """Run one epoch's batches; return (mean train loss, train accuracy, cancelled)."""
    import tensorflow as tf

    global_batch = config.batch_size * strategy.num_replicas_in_sync
    loss_sum = correct_sum = 0.0
    for index in range(steps_per_epoch):
        stop_flag = tf.constant(1.0 if hooks.cancel_requested() else 0.0)
        loss, correct, stop = step(next(iterator), stop_flag)
        loss_sum += float(loss)
        correct_sum += float(correct)
        hooks.progress({"stage": "batch", "done": index + 1, "total": steps_per_epoch,
                        "message": f"epoch {epoch + 1}/{config.epochs}, batch {index + 1}/{steps_per_epoch}, "
                                   f"loss {loss_sum / (index + 1):.4f}"})
        if float(stop) > 0:
            return math.nan, math.nan, True
    return loss_sum / max(steps_per_epoch, 1), correct_sum / max(steps_per_epoch * global_batch, 1), False


def _end_epoch(state: LoopState, hooks: LoopHooks, strategy, optimizer, epoch: int, train_loss: float,
               train_accuracy: float, started: float) -> bool:
    """Validate, append the epoch's history row to `state` and update the best so far; True when it improved."""
    import keras

    if hooks.evaluate_val is not None:
        val_loss, val_accuracy = hooks.evaluate_val()
    else:
        val_loss, val_accuracy = float("nan"), float("nan")
    val_loss, val_accuracy = agree(strategy, val_loss), agree(strategy, val_accuracy)
    row = {"epoch": epoch + 1, "loss": round(train_loss, 6), "accuracy": round(train_accuracy, 6),
           "val_loss": round(val_loss, 6), "val_accuracy": round(val_accuracy, 6),
           "lr": float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
           "seconds": round(time.monotonic() - started, 3)}
    state.history.append(row)
    state.epoch = epoch + 1
    monitor = val_loss if hooks.evaluate_val is not None else train_loss
    improved = monitor < state.best_monitor - 1e-6 or not math.isfinite(state.best_monitor)
    if improved:
        state.best_monitor = float(monitor)
        state.best_epoch = epoch + 1
        state.epochs_without_improvement = 0
    else:
        state.epochs_without_improvement += 1
    return improved


def _epoch_event(state: LoopState, hooks: LoopHooks, config: TrainConfig) -> None:
    """The "epoch" progress event for the epoch just finished."""
    row = state.history[-1]
    monitor_name = "val_loss" if hooks.evaluate_val is not None else "loss"
    monitor = row["val_loss"] if hooks.evaluate_val is not None else row["loss"]
    hooks.progress({"stage": "epoch", "done": state.epoch, "total": config.epochs,
                    "message": f"epoch {state.epoch}/{config.epochs}: loss {row['loss']:.4f}, "
                               f"{monitor_name} {monitor:.4f}, val_accuracy {row['val_accuracy']:.3f}"})
