"""Splits and class balance: stratified train/val/test, subsampling, imbalance statistics, class weights, a
plan to top up rare genres, and a held-out share stratified by feature clusters.

Every function but `representative_split` (which splits the rows of a feature array and returns their positions)
takes a manifest DataFrame (columns `genre`, `split`, ...) or a `Dataset`, and returns a new object; nothing is
changed in place. Functions that must fall back (a genre too rare to stratify, say) append a
human-readable sentence to `notes` when a list is given, and, for a Dataset, to `report["split_notes"]`.

Effective number of samples (Cui et al., 2019, "Class-Balanced Loss Based on Effective Number of Samples"):
E_n = (1 - beta^n) / (1 - beta); the class-balanced weight of a class is proportional to 1 / E_n, normalised
so that the weights sum to the number of classes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from genre_core.data.dataset import Dataset, SPLITS

DEFAULT_BETA = 0.999
# A genre needs this many images in the pool being split for stratification to give it a place in each part.
MIN_STRATIFY_COUNT = 3


def assign_splits(
    data: pd.DataFrame | Dataset,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    notes: list[str] | None = None,
    keep_source_split: bool = True,
) -> pd.DataFrame | Dataset:
    """Give every row a split ("train", "val" or "test"), stratified by genre and deterministic for a seed.

    A source's own split is kept: rows already marked "val" or "test" stay. When the data has no test rows,
    `test_fraction` of the unsplit and train rows is carved out as test; when it has no val rows,
    `val_fraction` of them is carved out as val (so for a source with train and test, val comes out of
    train). Genres with fewer than 3 images stay in train (said in `notes`); if stratification is still
    impossible the split falls back to an unstratified random one and says so. `keep_source_split=False`
    ignores the source's split and splits everything afresh.
    """
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves no training data")
    manifest, wrap = _unwrap(data)
    _require_columns(manifest, ("genre",))
    notes = notes if notes is not None else []
    frame = manifest.copy()
    if "split" in frame.columns and keep_source_split:
        split = frame["split"].fillna("").astype(str)
    else:
        split = pd.Series("", index=frame.index, dtype=object)
    unknown = sorted(set(split) - set(SPLITS) - {""})
    if unknown:
        raise ValueError(f"split column holds values other than train/val/test/blank: {', '.join(map(repr, unknown))}")
    # Work in path order (when there is a path) so the result does not depend on the manifest's row order.
    order = frame.sort_values("path", kind="stable").index if "path" in frame.columns else frame.index
    pool = [index for index in order if split[index] in ("", "train")]
    if not pool and len(frame):
        notes.append("the source's own split leaves no rows for training (every image is in val or test); "
                     "pass keep_source_split=False to split them afresh")
    has_test = (split == "test").any()
    has_val = (split == "val").any()
    genres = frame["genre"].astype(str)
    if not has_test and test_fraction > 0:
        pool, carved = _carve(pool, genres, test_fraction, seed, "test", notes)
        split[carved] = "test"
    if not has_val and val_fraction > 0:
        # Val is a fraction of the whole, so scale it to what is left once test was carved out.
        share = val_fraction if has_test else val_fraction / (1 - test_fraction)
        pool, carved = _carve(pool, genres, min(share, 0.99), seed + 1, "val", notes)
        split[carved] = "val"
    split[pool] = "train"
    frame["split"] = split.astype(str)
    return wrap(frame, notes)


def subsample(
    data: pd.DataFrame | Dataset,
    fraction: float,
    seed: int = 0,
    notes: list[str] | None = None,
) -> pd.DataFrame | Dataset:
    """Keep `fraction` of the rows of each (split, genre) group, at least one per group; deterministic for a seed."""
    _check_fraction("fraction", fraction, allow_one=True)
    manifest, wrap = _unwrap(data)
    _require_columns(manifest, ("genre",))
    notes = notes if notes is not None else []
    if fraction >= 1:
        return wrap(manifest.copy(), notes)
    frame = manifest
    if "path" in frame.columns:
        frame = frame.sort_values("path", kind="stable")
    keys = [frame["split"].fillna("").astype(str) if "split" in frame.columns else pd.Series("", index=frame.index),
            frame["genre"].astype(str)]
    kept = []
    rng = np.random.default_rng(seed)
    for _key, group in frame.groupby(keys, sort=True):
        count = max(1, int(round(fraction * len(group))))
        kept.extend(group.index[np.sort(rng.choice(len(group), size=count, replace=False))])
    result = manifest.loc[sorted(kept, key=manifest.index.get_loc)].reset_index(drop=True)
    notes.append(f"subsampled {fraction:.0%} of each split and genre: {len(result):,} of {len(manifest):,} images")
    return wrap(result, notes)


def imbalance_stats(data, beta: float = DEFAULT_BETA, split: str | None = None) -> dict:
    """Counts per genre, imbalance ratio (max/min), effective number of samples and class-balanced weights.

    `data` is a manifest, a Dataset or a sequence of genre labels; `split` restricts to one split.
    Returns {"counts", "imbalance_ratio", "effective_number", "class_balanced_weights", "beta", "total"}, the
    per-genre dicts ordered by count (largest first).
    """
    _check_beta(beta)
    labels = _labels(data, split)
    counts = labels.value_counts()
    if counts.empty:
        raise ValueError("no images to compute imbalance statistics on")
    effective = {genre: _effective_number(int(count), beta) for genre, count in counts.items()}
    weights = _normalise({genre: 1.0 / value for genre, value in effective.items()})
    return {
        "counts": {genre: int(count) for genre, count in counts.items()},
        "total": int(counts.sum()),
        "imbalance_ratio": float(counts.max() / counts.min()),
        "beta": beta,
        "effective_number": effective,
        "class_balanced_weights": weights,
    }


def class_weights(
    data,
    method: str = "balanced",
    beta: float = DEFAULT_BETA,
    classes: Sequence | None = None,
    split: str | None = "train",
) -> dict:
    """Per-class loss weights: "balanced" (scikit-learn, n / (k * n_c)) or "effective" (Cui et al., 2019).

    `data` is a manifest or Dataset (uses `label` if present, else `genre`; the train split by default) or
    a sequence of labels. Keys are the labels (ints for `label`, so the result feeds Keras' `class_weight`);
    classes listed in `classes` but absent from the data get weight 0.
    """
    if method not in ("balanced", "effective"):
        raise ValueError(f"class weight method {method!r} is not 'balanced' or 'effective'")
    labels = _labels(data, split, prefer_label=True)
    if labels.empty:
        raise ValueError("no images to compute class weights on")
    present = np.array(sorted(labels.unique().tolist()))
    if method == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        values = compute_class_weight("balanced", classes=present, y=labels.to_numpy())
        weights = {_plain(label): float(value) for label, value in zip(present, values)}
    else:
        _check_beta(beta)
        counts = labels.value_counts()
        weights = _normalise({_plain(label): 1.0 / _effective_number(int(counts[label]), beta) for label in present})
    if classes is not None:
        return {_plain(label): weights.get(_plain(label), 0.0) for label in classes}
    return weights


def topup_plan(data, minimum: int, split: str | None = "train", max_copies_per_image: int | None = None) -> pd.DataFrame:
    """Plan to top up every genre to at least `minimum` images with augmented copies (the plan is data).

    Columns: genre, have (images), need (the minimum), copies (augmented copies to generate, max(0, need -
    have)), per_image (copies per original, rounded up). `max_copies_per_image` caps copies (a genre with 2
    images is not blown up to 500). Sorted by have, rarest first. The training loop applies it as
    oversampling with augmentation.
    """
    if int(minimum) != minimum or minimum < 1:
        raise ValueError(f"minimum must be a positive whole number of images, not {minimum!r}")
    if max_copies_per_image is not None and max_copies_per_image < 0:
        raise ValueError(f"max_copies_per_image must be 0 or more, not {max_copies_per_image!r}")
    labels = _labels(data, split)
    counts = labels.value_counts()
    rows = []
    for genre, have in counts.items():
        copies = max(0, int(minimum) - int(have))
        if max_copies_per_image is not None:
            copies = min(copies, int(have) * max_copies_per_image)
        rows.append({
            "genre": genre,
            "have": int(have),
            "need": int(minimum),
            "copies": copies,
            "per_image": math.ceil(copies / have) if have else 0,
        })
    plan = pd.DataFrame(rows, columns=["genre", "have", "need", "copies", "per_image"])
    return plan.sort_values(["have", "genre"], kind="stable").reset_index(drop=True)


def representative_split(features, size: int, seed: int, clusters: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Row positions (rest, held) of a random `size` rows of `features` held out in proportion to k-means
    clusters of them, so the held-out part and the rest each hold every kind of row in its share.

    The clusters are a property of the rows (KMeans with a fixed random_state and 4 starts, at most `clusters`
    of them and never more than either part can give a place to); the seed only picks which rows of each
    cluster are held out (scikit-learn's `train_test_split(stratify=...)`). A cluster of one row joins the
    nearest cluster of several. Why: on the kit, the random 231 of 1,153 landscapes a GAN run holds out moved one
    generator's KID up to 2.9 times from seed to seed; held out by 16 clusters of their fixed-space features,
    the spread over seeds halved (docs/gan-measurements.md, "A representative held-out split")."""
    from sklearn.cluster import KMeans
    from sklearn.model_selection import train_test_split

    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 4:
        raise ValueError(f"representative_split needs a 2-D array of at least 4 rows, got shape {features.shape}")
    count = len(features)
    size = int(size)
    if not 1 <= size <= count - 1:
        raise ValueError(f"cannot hold out {size} of {count} rows: keep at least one on each side")
    positions = np.arange(count)
    k = min(int(clusters), size, count - size, count // 2)
    if k < 2:
        rest, held = train_test_split(positions, test_size=size, random_state=seed)
        return np.sort(rest), np.sort(held)
    model = KMeans(n_clusters=k, n_init=4, random_state=0).fit(features)
    labels = model.labels_.copy()
    sizes = np.bincount(labels, minlength=k)
    if (sizes < 2).any():
        distances = model.transform(features)
        distances[:, sizes < 2] = np.inf
        lonely = sizes[labels] < 2
        labels[lonely] = distances[lonely].argmin(axis=1)
    rest, held = train_test_split(positions, test_size=size, random_state=seed, stratify=labels)
    return np.sort(rest), np.sort(held)


# ----------------------------------------------------------------------------------------------------------
# Helpers


def _carve(pool: list, genres: pd.Series, fraction: float, seed: int, name: str, notes: list[str]):
    """Split `fraction` of the pool off as `name`, stratified by genre; return (rest, carved) index lists."""
    from sklearn.model_selection import train_test_split

    if not pool:
        return pool, []
    pool_genres = genres.loc[pool]
    counts = pool_genres.value_counts()
    rare = sorted(counts.index[counts < MIN_STRATIFY_COUNT].tolist())
    rare_set = set(rare)
    kept_back = [index for index, genre in zip(pool, pool_genres) if genre in rare_set]
    candidates = [index for index, genre in zip(pool, pool_genres) if genre not in rare_set]
    if rare:
        notes.append(
            f"{len(rare)} genre(s) have fewer than {MIN_STRATIFY_COUNT} images to split and stay in train only, "
            f"with none in {name}: {', '.join(rare[:10])}{' ...' if len(rare) > 10 else ''}"
        )
    size = int(round(fraction * len(pool)))
    if size < 1 or len(candidates) - size < 1:
        notes.append(f"too few images ({len(pool)}) to carve a {name} split of {fraction:.0%}; none carved")
        return pool, []
    labels = genres.loc[candidates].to_numpy()
    try:
        rest, carved = train_test_split(candidates, test_size=size, random_state=seed, stratify=labels)
    except ValueError as exc:
        notes.append(f"stratified {name} split impossible ({exc}); used an unstratified random split instead")
        rest, carved = train_test_split(candidates, test_size=size, random_state=seed)
    return list(rest) + kept_back, list(carved)


def _unwrap(data):
    """Return (manifest, wrap) where wrap(frame, notes) rebuilds the caller's type."""
    if isinstance(data, Dataset):
        def wrap(frame, notes):
            report = dict(data.report)
            report["split_notes"] = list(report.get("split_notes", [])) + list(notes)
            if "split" in frame.columns:
                report["splits"] = {str(k): int(v) for k, v in frame["split"].replace("", "unsplit").value_counts().items()}
            return dataclasses.replace(data, manifest=frame, report=report)

        return data.manifest, wrap
    if isinstance(data, pd.DataFrame):
        return data, lambda frame, notes: frame
    raise ValueError(f"expected a manifest DataFrame or a Dataset, not {type(data).__name__}")


def _labels(data, split: str | None, prefer_label: bool = False) -> pd.Series:
    """The label column of a manifest/Dataset (optionally one split), or a sequence of labels as a Series."""
    if isinstance(data, Dataset):
        data = data.manifest
    if isinstance(data, pd.DataFrame):
        frame = data
        if split is not None and "split" in frame.columns:
            if split not in SPLITS:
                raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
            chosen = frame[frame["split"] == split]
            # A manifest without any split assigned yet is used whole.
            frame = chosen if len(chosen) or (frame["split"] != "").any() else frame
        column = "label" if prefer_label and "label" in frame.columns else "genre"
        _require_columns(frame, (column,))
        return frame[column].reset_index(drop=True)
    if isinstance(data, (pd.Series, np.ndarray, list, tuple)):
        return pd.Series(list(data))
    raise ValueError(f"expected a manifest, a Dataset or a sequence of labels, not {type(data).__name__}")


def _effective_number(count: int, beta: float) -> float:
    """Effective number of samples (1 - beta^n) / (1 - beta), Cui et al. 2019."""
    return float((1.0 - beta ** count) / (1.0 - beta))


def _normalise(raw: dict) -> dict:
    """Scale weights so that they sum to the number of classes."""
    total = sum(raw.values())
    return {key: float(value * len(raw) / total) for key, value in raw.items()}


def _plain(value):
    """NumPy scalars -> plain Python values, so dict keys are ints/strs (JSON- and Keras-friendly)."""
    return value.item() if hasattr(value, "item") else value


def _check_fraction(name: str, value: float, allow_one: bool = False) -> None:
    """Refuse fractions outside [0, 1) (or (0, 1] with `allow_one`)."""
    if not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number, not {value!r}")
    if allow_one and not 0 < value <= 1:
        raise ValueError(f"{name} must be in (0, 1], not {value}")
    if not allow_one and not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), not {value}")


def _check_beta(beta: float) -> None:
    """Refuse beta outside [0, 1)."""
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), not {beta}")


def _require_columns(frame: pd.DataFrame, columns) -> None:
    """ValueError naming the missing manifest columns."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"manifest is missing column(s) {', '.join(missing)}; it has {', '.join(map(str, frame.columns))}")
