"""k-fold cross-validation of a training recipe on cached frozen features.

One split can flatter a recipe by several points (a lucky 20% test split overstated one by about six
points on paintings from outside the kit), so recipes are compared by the mean and spread of k folds.
The backbone's features are computed once; each fold trains a fresh head on k-1 folds and scores the
held-out fold. This module only splits, scores and summarises: the caller supplies `train_fold`, which
trains a head exactly the way the run trains its kept model.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from genre_core.training.scoring import classification_scores

SUMMARY_KEYS = ("accuracy", "macro_f1", "balanced_accuracy", "top3_accuracy", "loss")


def fold_splits(labels: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (scikit-learn) positions into `labels`: [(train positions, held-out positions)]."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    counts = np.bincount(labels)
    present = counts[counts > 0]
    if len(present) < 2:
        raise ValueError("cross-validation needs at least 2 genres with images")
    if present.min() < folds:
        raise ValueError(f"cross-validation with {folds} folds needs at least {folds} images of every genre; "
                         f"the smallest genre has {int(present.min())}")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels))


def cross_validate(
    rows: np.ndarray,
    labels: np.ndarray,
    folds: int,
    seed: int,
    num_classes: int,
    train_fold: Callable[[int, np.ndarray, np.ndarray], np.ndarray],
    adjust: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """Cross-validate on `rows` (cache rows) whose genres are `labels[rows]`.

    train_fold(fold, train_rows, held_out_rows) -> probabilities (len(held_out_rows), num_classes).
    adjust(probabilities, train_rows) -> the probabilities the kept model would output (e.g. after logit
    adjustment); when given, the fold scores are those of the adjusted probabilities and the raw ones are
    kept under "unadjusted". Returns {"folds", "seed", "rows", "per_fold": [...], "mean": {...}, "sd": {...},
    "per_class": {precision, recall, f1, support lists over all held-out predictions}} plus "unadjusted_mean"
    when `adjust` is given.
    """
    rows = np.asarray(rows, dtype=np.int64)
    fold_labels = np.asarray(labels)[rows]
    per_fold, unadjusted = [], []
    held_labels, held_predicted = [], []
    for fold, (train_at, held_at) in enumerate(fold_splits(fold_labels, folds, seed)):
        started = time.monotonic()
        if progress is not None:
            progress({"stage": "crossval", "done": fold, "total": folds,
                      "message": f"cross-validation fold {fold + 1}/{folds}"})
        train_rows, held_rows = rows[train_at], rows[held_at]
        probabilities = np.asarray(train_fold(fold, train_rows, held_rows), dtype=np.float32)
        raw = classification_scores(fold_labels[held_at], probabilities, num_classes)
        scores = raw
        if adjust is not None:
            unadjusted.append(raw)
            probabilities = adjust(probabilities, train_rows)
            scores = classification_scores(fold_labels[held_at], probabilities, num_classes)
        held_labels.append(fold_labels[held_at])
        held_predicted.append(probabilities.argmax(axis=1))
        per_fold.append({"fold": fold + 1, **scores, "seconds": round(time.monotonic() - started, 2)})
    result = {"folds": folds, "seed": seed, "rows": int(len(rows)), "per_fold": per_fold,
              "mean": _aggregate(per_fold, np.mean), "sd": _aggregate(per_fold, np.std),
              "per_class": _per_class(np.concatenate(held_labels), np.concatenate(held_predicted), num_classes)}
    if adjust is not None:
        result["unadjusted_mean"] = _aggregate(unadjusted, np.mean)
    if progress is not None:
        mean = result["mean"]
        progress({"stage": "crossval", "done": folds, "total": folds,
                  "message": f"cross-validation: accuracy {mean['accuracy']:.3f} ± {result['sd']['accuracy']:.3f}, "
                             f"macro-F1 {mean['macro_f1']:.3f} over {folds} folds"})
    return result


def _per_class(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> dict:
    """Precision, recall, F1 and support per class (lists in class order) over every held-out prediction."""
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=list(range(num_classes)), zero_division=0)
    return {"precision": [round(float(v), 6) for v in precision], "recall": [round(float(v), 6) for v in recall],
            "f1": [round(float(v), 6) for v in f1], "support": [int(v) for v in support]}


def _aggregate(rows: list[dict], function) -> dict:
    """function (mean or sd) of each score over folds; a score missing in any fold is None."""
    out = {}
    for key in SUMMARY_KEYS:
        values = [row.get(key) for row in rows]
        out[key] = None if any(value is None for value in values) else round(float(function(values)), 6)
    return out


def summary_line(result: dict) -> str:
    """'accuracy 0.612 ± 0.011, macro-F1 0.534 ± 0.015 (5 folds)'."""
    mean, sd = result["mean"], result["sd"]
    return (f"accuracy {mean['accuracy']:.3f} ± {sd['accuracy']:.3f}, macro-F1 {mean['macro_f1']:.3f} ± "
            f"{sd['macro_f1']:.3f}, balanced accuracy {mean['balanced_accuracy']:.3f} ({result['folds']} folds)")
