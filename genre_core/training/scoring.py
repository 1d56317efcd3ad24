"""One set of classification scores for predicted probabilities, used by training, cross-validation and reports.

Accuracy alone flatters a classifier on imbalanced genres (the majority genre of the ArtGAN split is 21%
of it), so every score set also carries macro-F1 and balanced accuracy (the mean per-genre recall), plus
top-3 accuracy. All numbers come from scikit-learn.
"""

from __future__ import annotations

import numpy as np

# Probabilities are clipped to this before the log loss, everywhere the project computes one.
PROBABILITY_FLOOR = 1e-7


def classification_scores(labels, probabilities, num_classes: int) -> dict:
    """Accuracy, macro-F1, balanced accuracy, top-3 accuracy and log loss of predicted probabilities."""
    from sklearn.metrics import accuracy_score, f1_score, top_k_accuracy_score

    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities)
    if len(labels) == 0:
        return {"accuracy": None, "macro_f1": None, "balanced_accuracy": None, "top3_accuracy": None,
                "loss": None, "count": 0}
    predicted = probabilities.argmax(axis=1)
    class_range = list(range(num_classes))
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, average="macro", labels=class_range, zero_division=0)),
        "balanced_accuracy": _balanced_accuracy(labels, predicted),
        # With three genres or fewer, top-3 accuracy is 1 by construction: not reported.
        "top3_accuracy": float(top_k_accuracy_score(labels, probabilities, k=3, labels=class_range))
        if num_classes > 3 else None,
        "loss": mean_log_loss(labels, probabilities, num_classes),
        "count": int(len(labels)),
    }


def mean_log_loss(labels, probabilities, num_classes: int) -> float:
    """scikit-learn's log loss after clipping the probabilities to PROBABILITY_FLOOR and renormalising (the
    one definition behind metrics.json's and evaluation.json's losses)."""
    from sklearn.metrics import log_loss

    clipped = np.clip(np.asarray(probabilities, dtype=np.float64), PROBABILITY_FLOOR, 1.0)
    clipped /= clipped.sum(axis=1, keepdims=True)
    return float(log_loss(labels, clipped, labels=list(range(num_classes))))


def _balanced_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Mean recall over the genres present in `labels` (scikit-learn's balanced accuracy, without its warning
    about predicted genres that have no true example)."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(labels, predicted))
