"""The classifier job: `execute(run)` trains the run its config describes and writes everything its folder holds.

The job runner (genre_core.runs.jobs) calls `execute` for runs of kind "classifier"; `new_run_config` checks a
new run's config before its folder is made. In order: prepare the data (image cache, splits, balancing),
build the model (for a frozen pretrained backbone: compute or read the cached features and build a head),
cross-validate when asked, train with the one loop (genre_core.training.loop), save model.keras, then score
train, validation and test and write metrics.json and predictions.csv (docs/architecture.md lists the files).

Cancel: `run.cancel_requested()` is checked before every batch; the best model so far is saved and
`store.Cancelled` is raised. Resume: `checkpoint/` holds the last finished epoch.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from genre_core.data import cache as image_cache
from genre_core.models import zoo
from genre_core.runs import store
from genre_core.training import checkpoint, crossval, distribute, features, tensorboard_log
from genre_core.training.config import TrainConfig
from genre_core.training.loop import (fit, LoopHooks, LoopState, make_augmenter, make_optimizer,
                                      predict_probabilities, set_precision)
from genre_core.training.run_data import class_weight_vector, genre_counts, prepare_data, PreparedData
from genre_core.training.scoring import classification_scores
from genre_core.util.cluster import is_chief

log = logging.getLogger(__name__)

Progress = Callable[[dict], None]


def new_run_config(config: TrainConfig | dict) -> tuple[dict, None]:
    """Check a new classifier run's config before its folder is made (the "classifier" kind's new_run).

    Unknown keys, bad values, unknown model names and missing data fail here with a ValueError. On a worker
    other than the chief of a multi-machine run, the artifacts root becomes a throwaway folder
    ($GENRE_WORKER_ARTIFACTS or a new temporary folder): only the chief's run folder is kept."""
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    config.validate()
    zoo.get_spec(config.model)
    if config.data != "demo" and not Path(config.data).expanduser().exists():
        raise ValueError(f"dataset path {config.data} does not exist")
    if not is_chief():
        os.environ["GENRE_ARTIFACTS"] = str(distribute.worker_root())
    return config.to_dict(), None


def config_from_run(run) -> TrainConfig:
    """The TrainConfig of a run folder (run-only keys such as "created" or "resume" are set aside)."""
    try:
        return TrainConfig.from_run_config(run.config())
    except (TypeError, ValueError) as exc:
        raise ValueError(f"run {run.id}: config.json: {exc}") from None


def execute(run, progress: Progress | None = None) -> dict:
    """Train the run described by `run.config()` and write its folder; return metrics.json's content.

    Raises store.Cancelled when a cancel was requested (after saving the best model so far).
    """
    strategy = distribute.get_strategy()  # First: MultiWorkerMirroredStrategy must exist before other TF work.
    if not is_chief():
        run = distribute.worker_run(run)
    config = config_from_run(run)
    with store.recording_progress(run, progress) as report:
        return _execute(run, config, strategy, report)


@dataclass
class _Model:
    """The model being trained: the whole network, or a head on cached features of a frozen extractor."""

    model: object
    frozen: bool
    extractor: object = None
    features: np.ndarray | None = None
    flipped: np.ndarray | None = None


def _execute(run, config: TrainConfig, strategy, progress: Progress) -> dict:
    """The body of `execute` (see there)."""
    import keras

    started = time.monotonic()
    size = config.size or zoo.get_spec(config.model).default_size
    config = config.replace(size=size)
    run.write_config({**run.config(), **config.to_dict()})
    mixed = set_precision(config)
    try:
        progress({"stage": "prepare", "done": 0, "total": 1, "message": f"preparing {config.data} at {size} px"})
        data = prepare_data(config, size, progress)
        if len(data.classes) < 2:
            raise ValueError(f"dataset {config.data} has {len(data.classes)} genre; a classifier needs at least 2")
        run.write_classes(data.classes)
        run.update_status(epochs=config.epochs, message="; ".join(data.notes) or "data ready")
        built = _build(run, config, data, strategy, progress)
        cv_result = _cross_validate(run, config, data, built, strategy, progress) if config.cv_folds else None
        result = _train(run, config, data, built, strategy, progress)
        model = _save(run, config, data, built, result)
        progress({"stage": "evaluate", "done": 0, "total": 1, "message": "scoring train, val and test"})
        metrics = _score(run, config, data, built, model, strategy, result)
        metrics["wall_seconds"] = round(time.monotonic() - started, 2)
        if cv_result is not None:
            metrics["crossval"] = cv_result
        run.write_metrics(metrics)
        run.update_status(state="finished", epoch=result.state.epoch, message=summary_line(metrics), eta_seconds=0)
        progress({"stage": "done", "done": 1, "total": 1, "message": summary_line(metrics)})
        return metrics
    finally:
        if mixed:
            keras.mixed_precision.set_global_policy("float32")


def _build(run, config: TrainConfig, data: PreparedData, strategy, progress: Progress) -> _Model:
    """Build the model; for a frozen backbone, compute (or read) the cached features and build their head."""
    options = zoo.model_options(config)
    frozen = zoo.uses_frozen_features(config.model, options) and config.embedding_cache
    weights = zoo.resolve_weights_option(config.model, config.weights)
    num_classes = len(data.classes)
    if not frozen:
        with strategy.scope():
            model = zoo.build_model(config.model, num_classes, config.size, weights, **options)
        if zoo.get_spec(config.model).pretrained_backbone:
            _adapt_head_normalization(model, data)
        return _Model(model=model, frozen=False)
    extractor, cached_features, flipped = features.cached_features(run, config, data, strategy, progress)
    progress({"stage": "prepare", "message": data.notes[-1]})
    head = features.new_feature_head(config, cached_features, flipped, data.train_rows, num_classes, strategy)
    return _Model(model=head, frozen=True, extractor=extractor, features=cached_features, flipped=flipped)


def _cross_validate(run, config: TrainConfig, data: PreparedData, built: _Model, strategy,
                    progress: Progress) -> dict:
    """k-fold cross-validation of the head on train+val (frozen backbones only); noted in the status."""
    if not built.frozen:
        raise ValueError("cv_folds needs a frozen pretrained backbone with the embedding cache "
                         "(cross-validation reuses the cached features)")
    result = features.cross_validate_head(run, config, data, built.features, built.flipped, strategy, progress)
    data.notes.append(f"{config.cv_folds}-fold cross-validation on train+val: {crossval.summary_line(result)}")
    run.update_status(message=data.notes[-1])
    return result


def _train(run, config: TrainConfig, data: PreparedData, built: _Model, strategy, progress: Progress):
    """Train the model with the loop, from the checkpoint when there is one; return the LoopResult."""
    steps_per_epoch = max(1, math.ceil(len(data.train_rows) / (config.batch_size * strategy.num_replicas_in_sync)))
    with strategy.scope():
        optimizer = make_optimizer(config, total_steps=steps_per_epoch * config.epochs)
    folder = run.path / store.CHECKPOINT_DIR
    best_file = folder / checkpoint.BEST_WEIGHTS
    state = _resume_state(run, config, built.model, optimizer, progress)
    labels = data.cache.labels
    num_classes = len(data.classes)
    predict = _predictor(config, data, built)

    def evaluate_val() -> tuple[float, float]:
        result = classification_scores(labels[data.val_rows], predict(built.model, data.val_rows), num_classes)
        return result["loss"], result["accuracy"]

    def on_improvement(loop_state: LoopState) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        checkpoint.save_weights_atomically(built.model, best_file)

    def on_epoch_end(row: dict) -> None:
        run.append_history(row)
        tensorboard_log.log_epoch(run, row)  # RUN/tensorboard/ scalars (chief only)

    hooks = LoopHooks(
        evaluate_val=evaluate_val if len(data.val_rows) else None, on_improvement=on_improvement,
        on_epoch_end=on_epoch_end, cancel_requested=run.cancel_requested, progress=progress,
        checkpoint=lambda loop_state: checkpoint.save_checkpoint(folder, built.model, optimizer, loop_state, config))
    if run.cancel_requested():
        raise store.Cancelled(f"run {run.id} was cancelled before training started")
    result = fit(built.model, optimizer, _training_stream(config, data, built, strategy), steps_per_epoch, config,
                 num_classes, strategy, class_weight=class_weight_vector(config, data), state=state, hooks=hooks)
    if state is not None and result.state.best_epoch and best_file.exists() and result.state.best_epoch <= state.epoch:
        # The best epoch came before the interruption: its weights are in the checkpoint folder.
        built.model.load_weights(best_file)
    return result


def _resume_state(run, config: TrainConfig, model, optimizer, progress: Progress) -> LoopState | None:
    """The loop state saved in checkpoint/ (model and optimizer restored from it), or None for a fresh run."""
    folder = run.path / store.CHECKPOINT_DIR
    if not (folder / checkpoint.CHECKPOINT_STATE).exists():
        return None
    state = checkpoint.restore_checkpoint(folder, model, optimizer)
    run.truncate_history(state.epoch)
    progress({"stage": "resume", "done": state.epoch, "total": config.epochs,
              "message": f"resuming after epoch {state.epoch}"})
    if state.epoch >= config.epochs:
        log.info("the checkpoint already holds all %s epochs", config.epochs)
    return state


def _training_stream(config: TrainConfig, data: PreparedData, built: _Model, strategy) -> Callable:
    """make_dataset(epoch, context): one epoch's per-worker training stream, this worker's shard shuffled by
    (seed, epoch): cached features, or augmented images from the image cache."""
    import tensorflow as tf

    labels = data.cache.labels
    if built.frozen:
        return lambda epoch, context: features.feature_stream(config, built.features, built.flipped, labels,
                                                              data.train_rows, strategy, epoch, context)
    augmenter = make_augmenter(config.augmentation, config.seed)

    def make_dataset(epoch: int, context):
        per_replica = context.get_per_replica_batch_size(config.batch_size * strategy.num_replicas_in_sync)
        rows = data.train_rows[context.input_pipeline_id::context.num_input_pipelines]
        stream = image_cache.make_tf_dataset(data.cache, rows, per_replica, shuffle=True,
                                             seed=config.seed + epoch, repeat=True, drop_remainder=True)
        if augmenter is not None:
            stream = stream.map(lambda x, y: (augmenter(tf.cast(x, tf.float32), training=True), y),
                                num_parallel_calls=tf.data.AUTOTUNE)
        return stream

    return make_dataset


def _predictor(config: TrainConfig, data: PreparedData, built: _Model) -> Callable:
    """predict(model, rows) -> probabilities for cache rows, in the order of `rows` (cached features for a
    head, the image cache for a whole network)."""
    num_classes = len(data.classes)

    def predict(model, rows: np.ndarray) -> np.ndarray:
        if len(rows) == 0:
            return np.zeros((0, num_classes), np.float32)
        order = np.argsort(rows, kind="stable")
        probabilities = np.empty((len(rows), num_classes), np.float32)
        if built.frozen:
            probabilities[order] = predict_probabilities(model, built.features[rows[order]], 256)
        else:
            stream = image_cache.make_tf_dataset(data.cache, rows[order], config.batch_size, shuffle=False)
            probabilities[order] = predict_probabilities(model, stream)
        return probabilities

    return predict


def _save(run, config: TrainConfig, data: PreparedData, built: _Model, result) -> object:
    """Save model.keras (with the logit adjustment inside, and the extractor in front of a head); raise
    store.Cancelled after saving when the loop was cancelled. Returns the model to score (head or network)."""
    model = built.model
    if config.logit_adjustment:
        # Post-hoc: the priors of the genres as trained (after oversampling), applied inside the saved model.
        priors = zoo.log_priors(data.cache.labels[data.train_rows], len(data.classes))
        model = zoo.with_prior_correction(model, priors, config.logit_adjustment)
    full_model = zoo.assemble(built.extractor, model, name=config.model) if built.frozen else model
    checkpoint.save_model_atomically(full_model, run.path / store.MODEL_FILE)
    if result.cancelled:
        raise store.Cancelled(f"run {run.id} was cancelled; the best model so far is saved")
    return model


def _score(run, config: TrainConfig, data: PreparedData, built: _Model, model, strategy, result) -> dict:
    """Score train, validation and test, write predictions.csv (the test split) and return metrics.json's
    content (without the wall time)."""
    labels = data.cache.labels
    predict = _predictor(config, data, built)
    metrics = {}
    for split_name, rows in (("train", np.unique(data.train_rows)), ("val", data.val_rows),
                             ("test", data.test_rows)):
        probabilities = predict(model, rows)
        metrics[split_name] = classification_scores(labels[rows], probabilities, len(data.classes))
    paths = data.cache.manifest["path"].to_numpy()[data.test_rows]
    run.write_predictions(store.predictions_frame(
        paths, [data.classes[label] for label in labels[data.test_rows]], probabilities, data.classes))
    metrics.update({
        "epochs_run": result.state.epoch,
        "best_epoch": result.state.best_epoch,
        "stopped_early": result.stopped_early,
        "frozen_features": built.frozen,
        "replicas": strategy.num_replicas_in_sync,
        "refit": config.refit,
        "logit_adjustment": config.logit_adjustment,
        "train_counts": genre_counts(labels[data.train_rows], data.classes),
        "split_counts": {name: genre_counts(labels[rows], data.classes) for name, rows in data.split_rows().items()},
        "notes": data.notes,
    })
    return metrics


def _adapt_head_normalization(model, data: PreparedData, sample: int = 256) -> None:
    """Adapt the head's Normalization to backbone features of up to `sample` training images."""
    head = model.get_layer("head")
    extractor = model.get_layer("features")
    rows = np.sort(np.unique(data.train_rows))[:sample]
    zoo.adapt_head(head, predict_probabilities(extractor, np.asarray(data.cache.images[rows]), batch_size=32))


def summary_line(metrics: dict) -> str:
    """One line for status.json: test accuracy and macro-F1 (val when there is no test split)."""
    for split_name in ("test", "val", "train"):
        part = metrics.get(split_name) or {}
        if part.get("accuracy") is not None:
            return (f"finished: {split_name} accuracy {part['accuracy']:.3f}, macro-F1 {part['macro_f1']:.3f} "
                    f"({part['count']} images)")
    return "finished"
