"""Heads on cached features: a frozen pretrained backbone's features are computed once
(genre_core.models.embeddings), and only the head trains, in seconds per epoch.

Training, k-fold cross-validation and search build, train and score heads through these functions, so a
head scored by cross-validation or by a search trial is trained exactly as the kept model is.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from genre_core.models import embeddings, zoo
from genre_core.models.layers import prior_correction_numpy
from genre_core.runs import heartbeat, store
from genre_core.training import crossval
from genre_core.training.config import TrainConfig
from genre_core.training.loop import fit, LoopHooks, make_optimizer, predict_probabilities
from genre_core.training.run_data import balanced_weights, class_weight_vector, PreparedData
from genre_core.training.scoring import classification_scores
from genre_core.util import fileio

Progress = Callable[[dict], None]


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


def cached_features(run, config: TrainConfig, data: PreparedData, strategy, progress: Progress):
    """The frozen extractor of a config (its size resolved) and the features of every image-cache row:
    computed once, or read from the embedding cache. Returns (extractor, features, flipped features or None)."""
    options = zoo.model_options(config)
    weights = zoo.resolve_weights_option(config.model, config.weights)
    with strategy.scope():
        extractor = zoo.build_feature_extractor(config.model, config.size, weights, **options)
    cached = embeddings.compute_embeddings(
        data.cache, extractor, zoo.frozen_extractor_id(config), flip=config.flip_features, batch_size=32,
        progress=progress, cancel_check=run.cancel_requested, jit_compile=config.xla,
        engine=config.feature_engine, notes=data.notes)
    flipped = np.asarray(cached.flipped) if cached.flipped is not None else None
    return extractor, np.asarray(cached.features), flipped


def new_feature_head(config: TrainConfig, features, flipped, train_rows, num_classes: int, strategy):
    """The config's head for cached features (built under `strategy`), its normalisation adapted to the
    features (and flipped features) of the distinct `train_rows`."""
    with strategy.scope():
        head = zoo.build_head(features.shape[1], num_classes, head_units=config.head_units,
                              dropout=config.dropout, weight_decay=zoo.model_options(config)["weight_decay"],
                              feature_transform=config.feature_transform)
    unique = np.unique(train_rows)
    zoo.adapt_head(head, np.concatenate([features[unique]] + ([flipped[unique]] if flipped is not None else [])))
    return head


def fit_feature_head(config: TrainConfig, features, flipped, labels, train_rows, num_classes: int, strategy,
                     progress: Progress, cancel_requested: Callable[[], bool]):
    """A fresh head trained on cached features of `train_rows` for all epochs (no validation, no checkpoint)."""
    head = new_feature_head(config, features, flipped, train_rows, num_classes, strategy)
    weights = balanced_weights(labels[train_rows], num_classes) if config.balancing == "class_weights" else None
    result = _fit_head(head, config.replace(patience=0), features, flipped, labels, train_rows, num_classes,
                       strategy, weights, LoopHooks(cancel_requested=cancel_requested, progress=progress))
    if result.cancelled:
        raise store.Cancelled("cancelled during cross-validation")
    return head


def _fit_head(head, config: TrainConfig, features, flipped, labels, train_rows, num_classes: int, strategy,
              class_weight, hooks: LoopHooks):
    """Train `head` on the cached features of `train_rows` with the loop (a cosine schedule over all epochs)."""
    steps = max(1, math.ceil(len(train_rows) / (config.batch_size * strategy.num_replicas_in_sync)))
    with strategy.scope():
        optimizer = make_optimizer(config, total_steps=steps * config.epochs)
    return fit(head, optimizer,
               lambda epoch, context: feature_stream(config, features, flipped, labels, train_rows, strategy,
                                                      epoch, context),
               steps, config, num_classes, strategy, class_weight=class_weight, hooks=hooks)


def cross_validate_head(run, config: TrainConfig, data: PreparedData, features, flipped, strategy,
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

        head = fit_feature_head(config, features, flipped, labels, train_rows, num_classes, strategy,
                                fold_progress, run.cancel_requested)
        return predict_probabilities(head, features[held_rows], 256)

    def adjust(probabilities: np.ndarray, train_rows: np.ndarray) -> np.ndarray:
        return adjusted_probabilities(config, probabilities, labels[train_rows], num_classes)

    result = crossval.cross_validate(rows, labels, config.cv_folds, config.seed, num_classes, train_fold,
                                     adjust if config.logit_adjustment else None, progress)
    fileio.atomic_write_json(run.path / "crossval.json", result)
    return result


def train_head(config: TrainConfig, data, cached: np.ndarray, flipped: np.ndarray | None, num_classes: int,
               strategy, on_epoch: Callable[[dict], None], last_scores: dict,
               cancel_requested: Callable[[], bool] | None = None) -> dict | None:
    """Train one head on cached features and score it on validation, as a search trial does; return its
    validation scores (None if cancelled).

    `last_scores` is refreshed with the validation scores of every epoch before `on_epoch(row)` runs, so a
    pruning hook can report any metric. Nothing here reads the test split."""
    labels = data.cache.labels
    train_rows, val_rows = data.train_rows, data.val_rows
    head = new_feature_head(config, cached, flipped, train_rows, num_classes, strategy)

    def val_probabilities() -> np.ndarray:
        # Scored as the kept model will output them: with the config's logit adjustment applied.
        return adjusted_probabilities(config, predict_probabilities(head, cached[val_rows], 256),
                                      labels[train_rows], num_classes)

    def evaluate_val():
        result = classification_scores(labels[val_rows], val_probabilities(), num_classes)
        last_scores.clear()
        last_scores.update(result)
        return result["loss"], result["accuracy"]

    hooks = LoopHooks(evaluate_val=evaluate_val, on_epoch_end=on_epoch, progress=lambda event: heartbeat.beat(),
                      cancel_requested=cancel_requested or (lambda: False))
    result = _fit_head(head, config, cached, flipped, labels, train_rows, num_classes, strategy,
                       class_weight_vector(config, data), hooks)
    if result.cancelled:
        return None
    val = classification_scores(labels[val_rows], val_probabilities(), num_classes)
    return {"val": val, "epochs_run": result.state.epoch, "best_epoch": result.state.best_epoch}


def adjusted_probabilities(config: TrainConfig, probabilities: np.ndarray, train_labels: np.ndarray,
                           num_classes: int) -> np.ndarray:
    """What the saved model outputs for a head's probabilities: logit-adjusted by the training labels' priors
    when the config asks for it (the PriorCorrection layer's NumPy twin), else unchanged."""
    if not config.logit_adjustment:
        return probabilities

    return prior_correction_numpy(probabilities, zoo.log_priors(train_labels, num_classes),
                                  config.logit_adjustment)


def frozen_parts(model, run_config: dict):
    """(extractor, head, extractor id) when `model` is head(frozen extractor) saved by a frozen-feature run with
    this config.json content; None for an end-to-end model or a config this version does not read."""
    try:
        config = TrainConfig.from_run_config(run_config)
        extractor, head = model.get_layer("features"), model.get_layer("head")
    except (TypeError, ValueError):
        return None
    if not zoo.uses_frozen_features(config.model, zoo.model_options(config)) or not config.embedding_cache:
        return None
    return extractor, head, zoo.frozen_extractor_id(config)
