"""k-fold cross-validation: stratified folds, per-fold scores, mean and spread, adjusted scores."""

from __future__ import annotations

import numpy as np
import pytest

from genre_core.training import crossval


def test_folds_are_stratified_and_cover_every_row_once():
    labels = np.repeat([0, 1, 2], [10, 20, 30])
    splits = crossval.fold_splits(labels, 5, seed=0)
    held = np.concatenate([held for _train, held in splits])
    assert sorted(held.tolist()) == list(range(60))
    for train_at, held_at in splits:
        assert set(train_at).isdisjoint(held_at)
        assert np.bincount(labels[held_at]).tolist() == [2, 4, 6]


def test_too_few_images_of_a_genre_is_refused_with_its_size():
    with pytest.raises(ValueError, match="smallest genre has 2"):
        crossval.fold_splits(np.array([0, 0, 1, 1, 1, 1, 1]), 3, seed=0)


def test_scores_mean_and_sd_over_folds_with_a_known_classifier():
    labels = np.repeat([0, 1], 10)
    rows = np.arange(100, 120)  # cache rows; labels are looked up by row
    all_labels = np.zeros(200, np.int64)
    all_labels[rows] = labels

    def oracle(fold, train_rows, held_rows):
        assert set(train_rows).isdisjoint(held_rows)
        truth = all_labels[held_rows]
        # Right on every fold except the first, where everything is called genre 0.
        return np.eye(2)[truth if fold else np.zeros_like(truth)]

    result = crossval.cross_validate(rows, all_labels, 2, 0, 2, oracle)
    assert [row["accuracy"] for row in result["per_fold"]] == [0.5, 1.0]
    assert result["mean"]["accuracy"] == 0.75 and result["sd"]["accuracy"] == 0.25
    assert result["rows"] == 20 and result["folds"] == 2
    # Over both held-out folds: genre 1 was found 5 times of 10, genre 0 always (15 calls, 10 right).
    assert result["per_class"]["recall"] == [1.0, 0.5] and result["per_class"]["support"] == [10, 10]
    assert result["per_class"]["precision"][0] == pytest.approx(10 / 15, abs=1e-6)
    assert "cross-validation" not in crossval.summary_line(result)
    assert crossval.summary_line(result).startswith("accuracy 0.750 ± 0.250")

    flipped = crossval.cross_validate(rows, all_labels, 2, 0, 2, oracle,
                                      adjust=lambda probabilities, train_rows: probabilities[:, ::-1])
    assert flipped["mean"]["accuracy"] == 0.25 and flipped["unadjusted_mean"]["accuracy"] == 0.75


def test_training_and_evaluation_report_the_same_log_loss():
    import pandas as pd

    from genre_core.evaluation import evaluate
    from genre_core.runs import store
    from genre_core.training import scoring

    probabilities = np.array([[0.0, 1.0], [0.7, 0.3], [0.2, 0.8]])
    labels = np.array([0, 0, 1])
    frame = store.predictions_frame(["a", "b", "c"], ["x", "x", "y"], probabilities, ["x", "y"])
    interpretation = evaluate.Interpretation.from_predictions(pd.DataFrame(frame), ["x", "y"])
    training = scoring.classification_scores(labels, probabilities, 2)["loss"]
    assert interpretation.metrics()["log_loss"] == pytest.approx(training, rel=1e-12)
    assert training == pytest.approx(-np.mean(np.log([1e-7 / (1 + 1e-7), 0.7, 0.8])), rel=1e-6)
