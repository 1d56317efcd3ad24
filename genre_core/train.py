"""The one training loop: a custom loop (tf.function step run through `strategy.run`) for one process or many.

- `execute(run)`: the executor `python -m genre_core job RUN_DIR` calls. Reads `run.config()`, prepares the
  data (image cache, splits, balancing), trains, and writes everything a run folder holds (docs/architecture.md).
- `start_run(config, background)`: create a run folder; start it as a background job or run it here.
- `fit(...)`: the loop itself. The same code serves one CPU, several GPUs (MirroredStrategy) and several
  machines (MultiWorkerMirroredStrategy from TF_CONFIG): the loss is summed per replica and scaled by the
  global batch size (`tf.nn.compute_average_loss`), datasets come from `distribute_datasets_from_function`,
  and every step all-reduces a stop flag, so a cancel seen by the chief stops every worker after that batch.
  Keras's `model.fit` is not used because it fails under MultiWorkerMirroredStrategy (keras-team/keras#20585).
- Frozen pretrained backbones train only the head, on features cached by `genre_core.embeddings`; the saved
  model.keras is the full `head(extractor(image))` model all the same.
- Only the chief writes the run folder; other workers write to a temporary artifacts root.
- Cancel: `run.cancel_requested()` is checked before every batch; the best model so far is saved and
  `runs.Cancelled` is raised. Resume: `checkpoint/` holds the last finished epoch (weights, optimizer state,
  epoch, best so far, seed); a resumed run continues its history. Dropout and augmentation are re-seeded
  from (seed, epoch) at every epoch, so a resumed run is reproducible, though not bit-identical to one that
  never stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from genre_core import crossval, fileio, runs
from genre_core.cluster import cluster_spec, is_chief, worker_count  # noqa: F401 - part of train's API
from genre_core.config import RUN_ONLY_KEYS, TrainConfig
from genre_core.scoring import classification_scores

log = logging.getLogger(__name__)

Progress = Callable[[dict], None]
CHECKPOINT_STATE = "state.json"
_STRATEGY = None
_EXTRA_PROGRESS: list[Progress] = []


# ----------------------------------------------------------------------------------------------------------
# Distribution


def get_strategy():
    """The distribution strategy the environment asks for (created once per process, before other TF work).

    TF_CONFIG naming several workers: MultiWorkerMirroredStrategy; several GPUs on this host:
    MirroredStrategy; otherwise the default strategy.
    """
    global _STRATEGY
    if _STRATEGY is not None:
        return _STRATEGY
    import tensorflow as tf

    if worker_count() > 1:
        _STRATEGY = tf.distribute.MultiWorkerMirroredStrategy()
    elif len(tf.config.list_physical_devices("GPU")) > 1:
        _STRATEGY = tf.distribute.MirroredStrategy()
    else:
        _STRATEGY = tf.distribute.get_strategy()
    return _STRATEGY


# ----------------------------------------------------------------------------------------------------------
# Progress


@contextlib.contextmanager
def progress_to(callback: Progress):
    """Also send this process's training progress events to `callback` (e.g. a terminal progress bar)."""
    _EXTRA_PROGRESS.append(callback)
    try:
        yield
    finally:
        _EXTRA_PROGRESS.remove(callback)


def _fan_out(*callbacks: Progress | None) -> Progress:
    """One progress callback that calls each of `callbacks` and the ones registered with progress_to."""
    targets = [callback for callback in callbacks if callback is not None]

    def progress(event: dict) -> None:
        for callback in targets + list(_EXTRA_PROGRESS):
            callback(event)

    return progress


# ----------------------------------------------------------------------------------------------------------
# Building blocks


def config_from_run(run) -> TrainConfig:
    """The TrainConfig of a run folder (run-only keys such as "created" or "resume" are set aside)."""
    try:
        return TrainConfig.from_run_config(run.config())
    except (TypeError, ValueError) as exc:
        raise ValueError(f"run {run.id}: config.json: {exc}") from None


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


def make_augmenter(augmentation: list[str], seed: int = 0):
    """A Keras preprocessing pipeline for float images 0..255, or None when no augmentation is asked for."""
    if not augmentation:
        return None
    import keras

    layers = []
    for index, name in enumerate(augmentation):
        layer_seed = seed + index
        if name == "flip":
            layers.append(keras.layers.RandomFlip("horizontal", seed=layer_seed))
        elif name == "crop":
            # Zooming in by up to 20% is a random crop resized back to the input size.
            layers.append(keras.layers.RandomZoom((-0.2, 0.0), seed=layer_seed))
        elif name == "zoom":
            layers.append(keras.layers.RandomZoom(0.15, seed=layer_seed))
        elif name == "rotation":
            layers.append(keras.layers.RandomRotation(0.05, seed=layer_seed))
        elif name == "contrast":
            layers.append(keras.layers.RandomContrast(0.2, seed=layer_seed))
        elif name == "brightness":
            layers.append(keras.layers.RandomBrightness(0.2, value_range=(0.0, 255.0), seed=layer_seed))
        else:
            raise ValueError(f"unknown augmentation {name!r}")
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
# The loop


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


def predict_probabilities(model, inputs, batch_size: int = 64) -> np.ndarray:
    """Softmax outputs for an array (images or features) or a tf.data dataset of (x, y) batches."""
    forward = _forward_function(model)
    outputs = []
    if isinstance(inputs, np.ndarray):
        for start in range(0, len(inputs), batch_size):
            outputs.append(forward(np.asarray(inputs[start:start + batch_size])).numpy())
            runs.beat()  # Validation and final scoring report no progress events; they still beat.
    else:
        for batch, _labels in inputs:
            outputs.append(forward(batch).numpy())
            runs.beat()
    if not outputs:
        return np.zeros((0, int(model.output.shape[-1])), dtype=np.float32)
    return np.concatenate(outputs).astype(np.float32)


_FORWARD = weakref.WeakKeyDictionary()


def _forward_function(model):
    """One traced inference function per model (float32 probabilities), reused across calls."""
    import tensorflow as tf

    if model not in _FORWARD:
        @tf.function(reduce_retracing=True)
        def forward(batch):
            return tf.cast(model(tf.cast(batch, tf.float32), training=False), tf.float32)

        _FORWARD[model] = forward
    return _FORWARD[model]


def agree(strategy, value: float) -> float:
    """Average a number over all workers, so every worker takes the same early-stopping decision."""
    if worker_count() <= 1 or not math.isfinite(value):
        return value
    import tensorflow as tf

    per_replica = strategy.run(lambda: tf.constant(value, tf.float32))
    return float(strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None))


def scores(labels: np.ndarray, probabilities: np.ndarray, num_classes: int) -> dict:
    """Accuracy, macro-F1, balanced accuracy, top-3 accuracy and log loss (genre_core.scoring)."""
    return classification_scores(labels, probabilities, num_classes)


def fit(
    model,
    optimizer,
    make_dataset: Callable,
    steps_per_epoch: int,
    config: TrainConfig,
    num_classes: int,
    strategy,
    evaluate_val: Callable[[], tuple[float, float]] | None = None,
    class_weight: np.ndarray | None = None,
    state: LoopState | None = None,
    checkpoint: Callable[[LoopState], None] | None = None,
    on_improvement: Callable[[LoopState], None] | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
    cancel_requested: Callable[[], bool] | None = None,
    progress: Progress | None = None,
) -> LoopResult:
    """Train `model` (built under `strategy.scope()`) for config.epochs epochs with one custom loop.

    make_dataset(epoch, input_context) -> tf.data.Dataset of (x, int labels) batches at the per-replica batch
    size, repeating; each epoch takes `steps_per_epoch` batches. evaluate_val() -> (val_loss, val_accuracy)
    on the chief's model copy (every worker computes the same numbers). The best weights by val_loss (train
    loss without validation) are kept in memory and put back in the model at the end or on cancel.
    """
    import keras
    import tensorflow as tf

    state = state or LoopState(seed=config.seed)
    global_batch = config.batch_size * strategy.num_replicas_in_sync
    loss_function = make_loss(config)
    weights = np.ones(num_classes, np.float32) if class_weight is None else np.asarray(class_weight, np.float32)
    with strategy.scope():
        class_weight_tensor = tf.constant(weights)
        optimizer.build(model.trainable_variables)

    def replica_step(images, labels, stop):
        labels = tf.cast(labels, tf.int32)
        with tf.GradientTape() as tape:
            probabilities = model(tf.cast(images, tf.float32), training=True)
            probabilities = tf.cast(probabilities, tf.float32)
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

    compiled_step = tf.function(replica_step, jit_compile=bool(config.xla)) if config.xla else replica_step

    @tf.function
    def distributed_step(batch, stop):
        images, labels = batch
        outputs = strategy.run(compiled_step, args=(images, labels, stop))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for value in outputs]

    progress = progress or (lambda event: None)
    cancel_requested = cancel_requested or (lambda: False)
    monitor_name = "val_loss" if evaluate_val is not None else "loss"
    # Best weights of this process's epochs; a resumed run's earlier best lives in checkpoint/best.weights.h5.
    best_weights = None
    result = LoopResult(state=state)

    start_epoch = state.epoch
    for epoch in range(start_epoch, config.epochs):
        epoch_started = time.monotonic()
        keras.utils.set_random_seed(config.seed + epoch)
        dataset = strategy.distribute_datasets_from_function(
            lambda context, epoch=epoch: make_dataset(epoch, context))
        iterator = iter(dataset)
        loss_sum = correct_sum = 0.0
        seen = 0
        for step in range(steps_per_epoch):
            stop_flag = tf.constant(1.0 if cancel_requested() else 0.0)
            loss, correct, stop = distributed_step(next(iterator), stop_flag)
            loss_sum += float(loss)
            correct_sum += float(correct)
            seen += global_batch
            progress({"stage": "batch", "done": step + 1, "total": steps_per_epoch,
                      "message": f"epoch {epoch + 1}/{config.epochs}, batch {step + 1}/{steps_per_epoch}, "
                                 f"loss {loss_sum / (step + 1):.4f}"})
            if float(stop) > 0:
                result.cancelled = True
                break
        if result.cancelled:
            break
        train_loss = loss_sum / max(steps_per_epoch, 1)
        train_accuracy = correct_sum / max(seen, 1)
        val_loss, val_accuracy = evaluate_val() if evaluate_val is not None else (float("nan"), float("nan"))
        val_loss, val_accuracy = agree(strategy, val_loss), agree(strategy, val_accuracy)
        learning_rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        row = {"epoch": epoch + 1, "loss": round(train_loss, 6), "accuracy": round(train_accuracy, 6),
               "val_loss": round(val_loss, 6), "val_accuracy": round(val_accuracy, 6),
               "lr": learning_rate, "seconds": round(time.monotonic() - epoch_started, 3)}
        state.history.append(row)
        state.epoch = epoch + 1
        monitor = val_loss if evaluate_val is not None else train_loss
        if monitor < state.best_monitor - 1e-6 or not math.isfinite(state.best_monitor):
            state.best_monitor = float(monitor)
            state.best_epoch = epoch + 1
            state.epochs_without_improvement = 0
            best_weights = model.get_weights()
            if on_improvement is not None:
                on_improvement(state)
        else:
            state.epochs_without_improvement += 1
        if on_epoch_end is not None:
            on_epoch_end(row)
        if checkpoint is not None:
            checkpoint(state)
        progress({"stage": "epoch", "done": epoch + 1, "total": config.epochs,
                  "message": f"epoch {epoch + 1}/{config.epochs}: loss {train_loss:.4f}, "
                             f"{monitor_name} {monitor:.4f}, val_accuracy {val_accuracy:.3f}"})
        if config.patience and state.epochs_without_improvement >= config.patience:
            result.stopped_early = True
            break
    if best_weights is not None:
        model.set_weights(best_weights)
    return result


# ----------------------------------------------------------------------------------------------------------
# Data for a run


@dataclass
class PreparedData:
    """Everything the loop needs to know about the data of one run."""

    cache: object  # genre_core.cache.ImageCache
    classes: list[str]
    manifest: object  # pandas DataFrame: cache rows in use, with "row" (cache row index) and "split"
    train_rows: np.ndarray  # cache rows, after oversampling
    val_rows: np.ndarray
    test_rows: np.ndarray
    notes: list[str]


def prepare_data(config: TrainConfig, size: int, progress: Progress | None = None) -> PreparedData:
    """Load the dataset, build its image cache, assign splits, subsample and apply oversampling."""
    from genre_core import cache as image_cache
    from genre_core import sources, splits

    dataset = sources.load_dataset(config.data)
    if len(dataset.manifest) == 0:
        raise ValueError(f"dataset {config.data} has no usable images")
    # Small datasets decode faster in this process than through a pool of fresh worker processes.
    workers = 1 if len(dataset.manifest) < 500 else None
    cache = image_cache.prepare_cache(dataset, (size, size), config.policy, progress=progress, workers=workers)
    manifest = cache.manifest.copy()
    manifest["row"] = np.arange(len(manifest))
    manifest = manifest[manifest["ok"]].reset_index(drop=True)
    if len(manifest) == 0:
        raise ValueError(f"dataset {config.data}: no image could be decoded")
    notes: list[str] = []
    manifest = splits.assign_splits(manifest, config.val_fraction, config.test_fraction, config.seed, notes)
    if config.data_fraction < 1:
        manifest = splits.subsample(manifest, config.data_fraction, config.seed, notes)
    if config.refit:
        moved = int((manifest["split"] == "val").sum())
        manifest.loc[manifest["split"] == "val", "split"] = "train"
        notes.append(f"refit: the kept model trains on train+val ({moved} validation images moved to train); "
                     "it has no validation scores")
    train = manifest[manifest["split"] == "train"]
    if len(train) == 0:
        raise ValueError(f"dataset {config.data}: the train split is empty")
    train_rows = train["row"].to_numpy(dtype=np.int64)
    if config.balancing == "oversample":
        minimum = config.min_per_genre or int(train["genre"].value_counts().max())
        plan = splits.topup_plan(train, minimum, split="train")
        rng = np.random.default_rng(config.seed)
        extra = []
        for item in plan.itertuples():
            if item.copies > 0:
                pool = train.loc[train["genre"] == item.genre, "row"].to_numpy(dtype=np.int64)
                # Whole passes over the genre first, then a random remainder, so copies are spread evenly.
                repeats, remainder = divmod(int(item.copies), len(pool))
                extra.append(np.tile(pool, repeats))
                extra.append(rng.choice(pool, size=remainder, replace=False))
        if extra:
            train_rows = np.concatenate([train_rows] + extra)
            notes.append(f"oversampled the train split to at least {minimum} images per genre "
                         f"({len(train_rows) - len(train)} repeated images)")
    return PreparedData(
        cache=cache,
        classes=list(cache.classes),
        manifest=manifest,
        train_rows=train_rows,
        val_rows=manifest.loc[manifest["split"] == "val", "row"].to_numpy(dtype=np.int64),
        test_rows=manifest.loc[manifest["split"] == "test", "row"].to_numpy(dtype=np.int64),
        notes=notes,
    )


def class_weight_vector(config: TrainConfig, data: PreparedData) -> np.ndarray | None:
    """Per-class loss weights for balancing="class_weights" (scikit-learn "balanced"), else None."""
    if config.balancing != "class_weights":
        return None
    return _balanced_weights(data.cache.labels[data.train_rows], len(data.classes))


def _balanced_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """scikit-learn's "balanced" per-class weights for these training labels."""
    from genre_core import splits

    weights = splits.class_weights(list(labels), method="balanced", classes=list(range(num_classes)), split=None)
    return np.array([weights[index] for index in range(num_classes)], dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------
# The executor


def execute(run, progress: Progress | None = None) -> dict:
    """Train the run described by `run.config()` and write its folder; return metrics.json's content.

    Raises runs.Cancelled when a cancel was requested (after saving the best model so far).
    """
    from genre_core import runs

    strategy = get_strategy()  # First: MultiWorkerMirroredStrategy must exist before other TF work.
    if not is_chief():
        run = _worker_run(run)
    config = config_from_run(run)
    writer = runs.ProgressWriter(run)
    progress = _fan_out(writer, progress)
    try:
        return _execute(run, config, strategy, progress)
    finally:
        if writer is not None:
            writer.flush()


def worker_root() -> Path:
    """The throwaway artifacts root of a non-chief worker: $GENRE_WORKER_ARTIFACTS, else a new temp folder."""
    root = os.environ.get("GENRE_WORKER_ARTIFACTS")
    if not root:
        root = tempfile.mkdtemp(prefix="genre-worker-")
        os.environ["GENRE_WORKER_ARTIFACTS"] = root
    return Path(root).resolve()


def _worker_run(run):
    """A non-chief worker's private copy of the run (in its throwaway root), so only the chief writes `run`."""
    from genre_core import runs

    root = worker_root()
    if root in run.path.parents:
        return run
    folder = root / "runs" / run.id
    folder.mkdir(parents=True, exist_ok=True)
    copy = runs.Run(folder, "classifier")
    copy.write_config(run.config())
    return copy


def _execute(run, config: TrainConfig, strategy, progress: Progress) -> dict:
    """The body of `execute` (see there)."""
    import keras
    import tensorflow as tf

    from genre_core import embeddings, models, runs, tensorboard_log

    wall_started = time.monotonic()
    size = config.size or models.get_spec(config.model).default_size
    options = models.model_options(config)
    if size != config.size:
        config = config.replace(size=size)
    run.write_config({**run.config(), **config.to_dict()})
    mixed = set_precision(config)
    try:
        progress({"stage": "prepare", "done": 0, "total": 1, "message": f"preparing {config.data} at {size} px"})
        data = prepare_data(config, size, progress)
        num_classes = len(data.classes)
        if num_classes < 2:
            raise ValueError(f"dataset {config.data} has {num_classes} genre; a classifier needs at least 2")
        run.write_classes(data.classes)
        run.update_status(epochs=config.epochs, message="; ".join(data.notes) or "data ready")
        labels = data.cache.labels
        frozen = models.uses_frozen_features(config.model, options) and config.embedding_cache
        weights = models.resolve_weights_option(config.model, config.weights)

        with strategy.scope():
            if frozen:
                extractor = models.build_feature_extractor(config.model, size, weights, **options)
            else:
                model = models.build_model(config.model, num_classes, size, weights, **options)
        if frozen:
            identity = models.frozen_extractor_id(config)
            cached = embeddings.compute_embeddings(
                data.cache, extractor, identity, flip=config.flip_features, batch_size=32, progress=progress,
                cancel_check=run.cancel_requested, jit_compile=config.xla, engine=config.feature_engine,
                notes=data.notes)
            progress({"stage": "prepare", "message": data.notes[-1]})
            features = np.asarray(cached.features)
            flipped = np.asarray(cached.flipped) if cached.flipped is not None else None
            model = new_feature_head(config, features, flipped, data.train_rows, num_classes, strategy)
        else:
            if models.get_spec(config.model).pretrained_backbone:
                _adapt_head_normalization(model, data, size)

        steps_per_epoch = max(1, math.ceil(len(data.train_rows) / (config.batch_size * strategy.num_replicas_in_sync)))
        with strategy.scope():
            optimizer = make_optimizer(config, total_steps=steps_per_epoch * config.epochs)
        augmenter = None if frozen else make_augmenter(config.augmentation, config.seed)

        if frozen and config.cv_folds:
            cv_result = _cross_validate_head(run, config, data, features, flipped, strategy, progress)
            data.notes.append(f"{config.cv_folds}-fold cross-validation on train+val: "
                              f"{crossval.summary_line(cv_result)}")
            run.update_status(message=data.notes[-1])
        elif config.cv_folds:
            raise ValueError("cv_folds needs a frozen pretrained backbone with the embedding cache "
                             "(cross-validation reuses the cached features)")

        def make_dataset(epoch: int, context):
            """The per-worker training stream of one epoch: this worker's shard, shuffled by (seed, epoch)."""
            if frozen:
                return feature_stream(config, features, flipped, labels, data.train_rows, strategy, epoch, context)
            per_replica = context.get_per_replica_batch_size(config.batch_size * strategy.num_replicas_in_sync)
            rows = data.train_rows[context.input_pipeline_id::context.num_input_pipelines]
            from genre_core import cache as image_cache

            stream = image_cache.make_tf_dataset(data.cache, rows, per_replica, shuffle=True,
                                                 seed=config.seed + epoch, repeat=True, drop_remainder=True)
            if augmenter is not None:
                stream = stream.map(lambda x, y: (augmenter(tf.cast(x, tf.float32), training=True), y),
                                    num_parallel_calls=tf.data.AUTOTUNE)
            return stream

        def evaluate_rows(rows: np.ndarray) -> np.ndarray:
            """Probabilities for cache rows, in the order of `rows`."""
            if len(rows) == 0:
                return np.zeros((0, num_classes), np.float32)
            order = np.argsort(rows, kind="stable")
            probabilities = np.empty((len(rows), num_classes), np.float32)
            if frozen:
                probabilities[order] = predict_probabilities(model, features[rows[order]], 256)
            else:
                from genre_core import cache as image_cache

                stream = image_cache.make_tf_dataset(data.cache, rows[order], config.batch_size, shuffle=False)
                probabilities[order] = predict_probabilities(model, stream)
            return probabilities

        def evaluate_val():
            result = scores(labels[data.val_rows], evaluate_rows(data.val_rows), num_classes)
            return result["loss"], result["accuracy"]

        checkpoint_dir = run.path / runs.CHECKPOINT_DIR
        state = None
        if (checkpoint_dir / CHECKPOINT_STATE).exists():
            state = _restore_checkpoint(checkpoint_dir, model, optimizer)
            run.truncate_history(state.epoch)
            progress({"stage": "resume", "done": state.epoch, "total": config.epochs,
                      "message": f"resuming after epoch {state.epoch}"})
            if state.epoch >= config.epochs:
                log.info("the checkpoint already holds all %s epochs", config.epochs)
        best_file = checkpoint_dir / "best.weights.h5"

        def on_improvement(loop_state: LoopState) -> None:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            _save_weights_atomically(model, best_file)

        def on_epoch_end(row: dict) -> None:
            run.append_history(row)
            tensorboard_log.log_epoch(run, row)  # RUN/tensorboard/ scalars (chief only)

        def checkpoint(loop_state: LoopState) -> None:
            _save_checkpoint(checkpoint_dir, model, optimizer, loop_state, config)

        if run.cancel_requested():
            raise runs.Cancelled(f"run {run.id} was cancelled before training started")
        result = fit(
            model, optimizer, make_dataset, steps_per_epoch, config, num_classes, strategy,
            evaluate_val=evaluate_val if len(data.val_rows) else None,
            class_weight=class_weight_vector(config, data), state=state, checkpoint=checkpoint,
            on_improvement=on_improvement, on_epoch_end=on_epoch_end, cancel_requested=run.cancel_requested,
            progress=progress,
        )
        if state is not None and result.state.best_epoch and best_file.exists() and \
                result.state.best_epoch <= state.epoch:
            # The best epoch came before the interruption: its weights are in the checkpoint folder.
            model.load_weights(best_file)

        if config.logit_adjustment:
            # Post-hoc: the priors of the genres as trained (after oversampling), applied inside the saved model.
            model = models.with_prior_correction(
                model, models.log_priors(labels[data.train_rows], num_classes), config.logit_adjustment)
        full_model = models.assemble(extractor, model, name=config.model) if frozen else model
        _save_model_atomically(full_model, run.path / runs.MODEL_FILE)
        if result.cancelled:
            raise runs.Cancelled(f"run {run.id} was cancelled; the best model so far is saved")

        progress({"stage": "evaluate", "done": 0, "total": 1, "message": "scoring train, val and test"})
        metrics = {}
        test_probabilities = None
        for split_name, rows in (("train", np.unique(data.train_rows)), ("val", data.val_rows),
                                 ("test", data.test_rows)):
            probabilities = evaluate_rows(rows)
            metrics[split_name] = scores(labels[rows], probabilities, num_classes)
            if split_name == "test":
                test_probabilities = probabilities
        metrics.update({
            "wall_seconds": round(time.monotonic() - wall_started, 2),
            "epochs_run": result.state.epoch,
            "best_epoch": result.state.best_epoch,
            "stopped_early": result.stopped_early,
            "frozen_features": frozen,
            "replicas": strategy.num_replicas_in_sync,
            "refit": config.refit,
            "logit_adjustment": config.logit_adjustment,
            "train_counts": _genre_counts(labels[data.train_rows], data.classes),
            "split_counts": {name: _genre_counts(labels[rows], data.classes) for name, rows in
                             (("train", data.train_rows), ("val", data.val_rows), ("test", data.test_rows))},
            "notes": data.notes,
        })
        if frozen and config.cv_folds:
            metrics["crossval"] = cv_result
        run.write_metrics(metrics)
        _write_predictions(run.path / "predictions.csv", data, test_probabilities)
        run.update_status(state="finished", epoch=result.state.epoch, message=_summary_line(metrics),
                          eta_seconds=0)
        progress({"stage": "done", "done": 1, "total": 1, "message": _summary_line(metrics)})
        return metrics
    finally:
        if mixed:
            keras.mixed_precision.set_global_policy("float32")


def feature_stream(config: TrainConfig, features, flipped, labels, train_rows, strategy, epoch: int, context):
    """One epoch's per-worker stream of cached features: this worker's shard, shuffled by (seed, epoch); with
    flipped features, each image's original or flipped features at random."""
    import tensorflow as tf

    per_replica = context.get_per_replica_batch_size(config.batch_size * strategy.num_replicas_in_sync)
    rows = train_rows[context.input_pipeline_id::context.num_input_pipelines]
    chosen = features[rows]
    if flipped is not None:
        pick = np.random.default_rng(config.seed * 1000 + epoch).random(len(rows)) < 0.5
        chosen = np.where(pick[:, None], flipped[rows], chosen)
    stream = tf.data.Dataset.from_tensor_slices((chosen.astype(np.float32), labels[rows]))
    stream = stream.shuffle(len(rows), seed=config.seed + epoch).repeat()
    return stream.batch(per_replica, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def new_feature_head(config: TrainConfig, features, flipped, train_rows, num_classes: int, strategy):
    """The config's head for cached features (built under `strategy`), its normalisation adapted to the
    features (and flipped features) of the distinct `train_rows`."""
    from genre_core import models

    with strategy.scope():
        head = models.build_head(features.shape[1], num_classes, head_units=config.head_units,
                                 dropout=config.dropout, weight_decay=models.model_options(config)["weight_decay"],
                                 feature_transform=config.feature_transform)
    unique = np.unique(train_rows)
    models.adapt_head(head, np.concatenate([features[unique]] + ([flipped[unique]] if flipped is not None else [])))
    return head


def _fit_feature_head(config: TrainConfig, features, flipped, labels, train_rows, num_classes: int, strategy,
                      progress: Progress, cancel_requested: Callable[[], bool]):
    """A fresh head trained on cached features of `train_rows` for all epochs (no validation, no checkpoint)."""
    from genre_core import models

    head = new_feature_head(config, features, flipped, train_rows, num_classes, strategy)
    steps = max(1, math.ceil(len(train_rows) / (config.batch_size * strategy.num_replicas_in_sync)))
    with strategy.scope():
        optimizer = make_optimizer(config, total_steps=steps * config.epochs)
    weights = _balanced_weights(labels[train_rows], num_classes) if config.balancing == "class_weights" else None
    result = fit(head, optimizer,
                 lambda epoch, context: feature_stream(config, features, flipped, labels, train_rows, strategy,
                                                        epoch, context),
                 steps, config.replace(patience=0), num_classes, strategy, class_weight=weights,
                 cancel_requested=cancel_requested, progress=progress)
    if result.cancelled:
        raise runs.Cancelled("cancelled during cross-validation")
    return head


def _cross_validate_head(run, config: TrainConfig, data: PreparedData, features, flipped, strategy,
                         progress: Progress) -> dict:
    """k-fold cross-validation of the head's settings on train+val, from the cached features; written to
    crossval.json at once (so a later cancel keeps it) and returned."""
    labels = data.cache.labels
    num_classes = len(data.classes)
    rows = np.unique(np.concatenate([data.train_rows, data.val_rows]))

    def train_fold(fold: int, train_rows: np.ndarray, held_rows: np.ndarray) -> np.ndarray:
        def fold_progress(event: dict) -> None:
            if event.get("stage") in ("batch", "epoch"):
                event = {**event, "message": f"fold {fold + 1}/{config.cv_folds}: {event.get('message', '')}"}
            progress(event)

        head = _fit_feature_head(config, features, flipped, labels, train_rows, num_classes, strategy,
                                 fold_progress, run.cancel_requested)
        return predict_probabilities(head, features[held_rows], 256)

    def adjust(probabilities: np.ndarray, train_rows: np.ndarray) -> np.ndarray:
        return adjusted_probabilities(config, probabilities, labels[train_rows], num_classes)

    result = crossval.cross_validate(rows, labels, config.cv_folds, config.seed, num_classes, train_fold,
                                     adjust if config.logit_adjustment else None, progress)
    fileio.atomic_write_json(run.path / "crossval.json", result)
    return result


def adjusted_probabilities(config: TrainConfig, probabilities: np.ndarray, train_labels: np.ndarray,
                           num_classes: int) -> np.ndarray:
    """What the saved model outputs for a head's probabilities: logit-adjusted by the training labels' priors
    when the config asks for it (the PriorCorrection layer's NumPy twin), else unchanged."""
    if not config.logit_adjustment:
        return probabilities
    from genre_core import models
    from genre_core.layers import prior_correction_numpy

    return prior_correction_numpy(probabilities, models.log_priors(train_labels, num_classes),
                                  config.logit_adjustment)


def _genre_counts(labels: np.ndarray, classes: list[str]) -> dict:
    """{genre: images} for integer labels, every genre listed."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    return {genre: int(count) for genre, count in zip(classes, counts)}


def _adapt_head_normalization(model, data: PreparedData, size: int, sample: int = 256) -> None:
    """Adapt the head's Normalization to backbone features of up to `sample` training images."""
    head = model.get_layer("head")
    extractor = model.get_layer("features")
    rows = np.sort(np.unique(data.train_rows))[:sample]
    features = predict_probabilities(extractor, np.asarray(data.cache.images[rows]), batch_size=32)
    from genre_core import models

    models.adapt_head(head, features)


def _summary_line(metrics: dict) -> str:
    """One line for status.json: test accuracy and macro-F1 (val when there is no test split)."""
    for split_name in ("test", "val", "train"):
        part = metrics.get(split_name) or {}
        if part.get("accuracy") is not None:
            return (f"finished: {split_name} accuracy {part['accuracy']:.3f}, macro-F1 {part['macro_f1']:.3f} "
                    f"({part['count']} images)")
    return "finished"


def _write_predictions(path: Path, data: PreparedData, probabilities: np.ndarray | None) -> None:
    """predictions.csv for the test split: path, true, predicted, confidence, one column per class."""
    import pandas as pd

    rows = data.test_rows
    classes = data.classes
    probabilities = probabilities if probabilities is not None else np.zeros((0, len(classes)), np.float32)
    frame = pd.DataFrame({
        "path": data.cache.manifest["path"].to_numpy()[rows] if len(rows) else [],
        "true": [classes[label] for label in data.cache.labels[rows]],
        "predicted": [classes[index] for index in probabilities.argmax(axis=1)] if len(rows) else [],
        "confidence": probabilities.max(axis=1) if len(rows) else [],
    })
    for index, name in enumerate(classes):
        frame[name] = probabilities[:, index] if len(rows) else []
    fileio.atomic_write_csv(path, frame)


def _save_model_atomically(model, path: Path) -> None:
    """model.save to a temporary .keras file beside `path`, then rename it into place."""
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    model.save(temporary)
    os.replace(temporary, path)


def _save_weights_atomically(model, path: Path) -> None:
    """model.save_weights to a temporary .weights.h5 file, then rename it into place."""
    temporary = path.with_name(f".{os.getpid()}.tmp.weights.h5")
    model.save_weights(temporary)
    os.replace(temporary, path)


def _save_checkpoint(folder: Path, model, optimizer, state: LoopState, config: TrainConfig) -> None:
    """Write checkpoint/: model weights, optimizer state, and state.json (epoch, best so far, seed)."""
    folder.mkdir(parents=True, exist_ok=True)
    _save_weights_atomically(model, folder / "model.weights.h5")
    values = {f"v{index}": np.asarray(variable.numpy()) for index, variable in enumerate(optimizer.variables)}
    temporary = folder / f".optimizer.{os.getpid()}.tmp.npz"
    with open(temporary, "wb") as handle:
        np.savez(handle, **values)
    os.replace(temporary, folder / "optimizer.npz")
    fileio.atomic_write_json(folder / CHECKPOINT_STATE, {
        "epoch": state.epoch,
        "best_monitor": state.best_monitor if math.isfinite(state.best_monitor) else None,
        "best_epoch": state.best_epoch,
        "epochs_without_improvement": state.epochs_without_improvement,
        "seed": config.seed,
        "history": state.history,
        "saved": time.time(),
    })


def _restore_checkpoint(folder: Path, model, optimizer) -> LoopState:
    """Load checkpoint/ into the model and the (built) optimizer; return the loop state to continue from."""
    info = fileio.read_json(folder / CHECKPOINT_STATE)
    if not isinstance(info, dict) or "epoch" not in info:
        raise ValueError(f"{folder / CHECKPOINT_STATE}: not a training checkpoint")
    try:
        model.load_weights(folder / "model.weights.h5")
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder}: the checkpoint weights do not fit this model ({exc})") from None
    optimizer.build(model.trainable_variables)
    with np.load(folder / "optimizer.npz") as stored:
        if len(stored.files) != len(optimizer.variables):
            raise ValueError(f"{folder}: the optimizer state has {len(stored.files)} variables, "
                             f"the optimizer {len(optimizer.variables)}")
        for index, variable in enumerate(optimizer.variables):
            variable.assign(stored[f"v{index}"])
    best = info.get("best_monitor")
    return LoopState(
        epoch=int(info["epoch"]),
        best_monitor=float(best) if best is not None else math.inf,
        best_epoch=int(info.get("best_epoch", 0)),
        epochs_without_improvement=int(info.get("epochs_without_improvement", 0)),
        seed=int(info.get("seed", 0)),
        history=list(info.get("history", [])),
    )


# ----------------------------------------------------------------------------------------------------------
# Starting runs


def start_run(config: TrainConfig | dict, background: bool = False, progress: Progress | None = None):
    """Create a run folder for `config`; launch it as a background job, or train it here. Returns the Run."""
    from genre_core import jobs, runs

    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    config.validate()
    from genre_core import models

    models.get_spec(config.model)  # Unknown model names and missing data fail before a folder is made.
    if config.data != "demo" and not Path(config.data).expanduser().exists():
        raise ValueError(f"dataset path {config.data} does not exist")
    if not is_chief():
        # Other workers of a multi-machine run write to a throwaway artifacts root ($GENRE_WORKER_ARTIFACTS
        # or a new temporary folder); only the chief's run folder is kept.
        os.environ["GENRE_ARTIFACTS"] = str(worker_root())
    values = config.to_dict()
    values.pop("kind", None)
    run = runs.create_run("classifier", values)
    if background:
        jobs.launch(run)
        return run
    log_path = run.log_path

    def log_line(event: dict) -> None:
        """In the foreground, log.txt gets every message except per-batch ones (a job's log gets stdout)."""
        if event.get("stage") not in ("batch", "features") and event.get("message"):
            with open(log_path, "a", encoding="utf-8") as handle:
                handle.write(f"[{runs.now_iso()}] {event['message']}\n")

    with contextlib.ExitStack() as stack:
        for callback in (log_line, progress):
            if callback is not None:
                stack.enter_context(progress_to(callback))
        jobs.run_job(run)
    return run
