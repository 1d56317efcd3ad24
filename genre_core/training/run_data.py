"""The data of one classifier run: the dataset's image cache, its splits, subsampling, refit and oversampling.

`prepare_data(config, size)` returns the cache rows each split uses; training, cross-validation and search
share it, so every one of them sees the same images for the same config and seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from genre_core.data import cache as image_cache, sources, splits
from genre_core.training.config import TrainConfig

Progress = Callable[[dict], None]


@dataclass
class PreparedData:
    """Everything the loop needs to know about the data of one run."""

    cache: image_cache.ImageCache
    classes: list[str]
    manifest: pd.DataFrame  # cache rows in use, with "row" (cache row index) and "split"
    train_rows: np.ndarray  # cache rows, after oversampling
    val_rows: np.ndarray
    test_rows: np.ndarray
    notes: list[str]

    def split_rows(self) -> dict[str, np.ndarray]:
        """{"train", "val", "test"}: the cache rows of each split (train after oversampling)."""
        return {"train": self.train_rows, "val": self.val_rows, "test": self.test_rows}


def prepare_data(config: TrainConfig, size: int, progress: Progress | None = None) -> PreparedData:
    """Load the dataset, build its image cache, assign splits, subsample and apply oversampling."""
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
        train_rows = _oversample(train, train_rows, config, notes)
    return PreparedData(
        cache=cache,
        classes=list(cache.classes),
        manifest=manifest,
        train_rows=train_rows,
        val_rows=manifest.loc[manifest["split"] == "val", "row"].to_numpy(dtype=np.int64),
        test_rows=manifest.loc[manifest["split"] == "test", "row"].to_numpy(dtype=np.int64),
        notes=notes,
    )


def _oversample(train: pd.DataFrame, train_rows: np.ndarray, config: TrainConfig, notes: list[str]) -> np.ndarray:
    """Repeat training rows until every genre has at least config.min_per_genre images (default: as many as
    the largest genre)."""
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
    if not extra:
        return train_rows
    oversampled = np.concatenate([train_rows] + extra)
    notes.append(f"oversampled the train split to at least {minimum} images per genre "
                 f"({len(oversampled) - len(train)} repeated images)")
    return oversampled


def class_weight_vector(config: TrainConfig, data: PreparedData) -> np.ndarray | None:
    """Per-class loss weights for balancing="class_weights" (scikit-learn "balanced"), else None."""
    if config.balancing != "class_weights":
        return None
    return balanced_weights(data.cache.labels[data.train_rows], len(data.classes))


def balanced_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """scikit-learn's "balanced" per-class weights for these training labels."""
    weights = splits.class_weights(list(labels), method="balanced", classes=list(range(num_classes)), split=None)
    return np.array([weights[index] for index in range(num_classes)], dtype=np.float32)


def genre_counts(labels: np.ndarray, classes: list[str]) -> dict:
    """{genre: images} for integer labels, every genre listed."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    return {genre: int(count) for genre, count in zip(classes, counts)}
