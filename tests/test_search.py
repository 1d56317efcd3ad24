"""Hyper-parameter search (genre_core/search.py): the space, a search from the CLI to its best run, pruning
through the epoch hook, and a search killed with SIGKILL that resumes without repeating finished trials."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pandas as pd
import pytest

from conftest import wait_for
from genre_core import cli
from genre_core.runs import jobs, store
from genre_core.training import scoring, search, tensorboard_log
from genre_core.training.config import TrainConfig

pytest.importorskip("optuna", reason="optuna is in requirements.txt")

# Trials on the tiny dataset: a frozen HED-VGG16 at 32 px (features cached once per session), a few epochs.
BASE = ["--size", "32", "--val-fraction", "0.2", "--test-fraction", "0.2", "--seed", "0"]
SPACE = {
    "learning_rate": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
    "head_units": {"type": "categorical", "choices": [0, 16]},
    "balancing": {"type": "categorical", "choices": ["none", "class_weights"]},
    "epochs": {"type": "int", "low": 3, "high": 5},
    "batch_size": 8,
}


def test_the_space_refuses_what_a_search_cannot_vary(tmp_path):
    assert search.parse_space(None) == search.DEFAULT_SPACE
    with pytest.raises(ValueError, match="'size' cannot be searched"):
        search.parse_space({"size": {"type": "int", "low": 64, "high": 224}})
    with pytest.raises(ValueError, match="oversample"):
        search.parse_space({"balancing": {"type": "categorical", "choices": ["none", "oversample"]}})
    with pytest.raises(ValueError, match="low <= high"):
        search.parse_space({"dropout": {"type": "float", "low": 0.5, "high": 0.1}})
    with pytest.raises(ValueError, match="log=true"):
        search.parse_space({"weight_decay": {"type": "float", "low": 0, "high": 0.1, "log": True}})
    with pytest.raises(ValueError, match="dropout=1.5"):
        search.parse_space({"dropout": 1.5})
    bad = tmp_path / "space.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="space.json: corrupt JSON"):
        search.read_space_file(bad)
    assert search.in_space(search.DEFAULT_SPACE["epochs"], 100) and not search.in_space(search.DEFAULT_SPACE["epochs"], 95)
    assert search.in_space(search.DEFAULT_SPACE["learning_rate"], 1e-3)
    assert not search.in_space(search.DEFAULT_SPACE["head_units"], 120)
    with pytest.raises(ValueError, match="no frozen backbone"):
        search.base_config("demo", None, {"model": "small_cnn"})


def test_a_cli_search_selects_by_validation_and_trains_the_best_trial_as_a_run(tiny_dataset_dir, tmp_path, capsys):
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    code = cli.main(["search", "--data", str(tiny_dataset_dir), "--trials", "3", "--space", str(space), *BASE])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-2000:]
    search_path, best_path = printed.out.split()[-2:]
    run = store.open_run(search_path)
    assert run.kind == "search" and run.status()["state"] == "finished"
    trials = search.trials_table(run)
    assert list(trials["trial"]) == [0, 1, 2] and set(trials["state"]) <= {"complete", "pruned"}
    assert {"param_learning_rate", "param_head_units", "val_accuracy", "val_macro_f1"} <= set(trials.columns)
    summary = search.summary(run)
    best = store.open_run(best_path)
    assert summary["best_run"] == best.id and best.kind == "classifier" and best.status()["state"] == "finished"
    # The best run is a normal run folder whose config is the recipe plus the best trial's parameters.
    config = best.config()
    assert config["model"] == "hed_vgg16" and config["size"] == 32 and config["batch_size"] == 8
    for name, value in summary["best_params"].items():
        assert config[name] == value
    # Only the best run is scored on the test split; the search's metrics carry its numbers.
    metrics = run.metrics()
    assert metrics["test"] == best.metrics()["test"] and metrics["best_trial"] == summary["best_trial"]
    assert summary["best_value"] == trials.loc[trials["value"].idxmax(), "value"]
    # Every trial and the best run leave TensorBoard scalars.
    for number in range(3):
        scalars = tensorboard_log.read_scalars(run.path / "tensorboard" / f"trial-{number:04d}")
        assert {"loss", "val_loss", "val_accuracy", "learning_rate", "seconds_per_epoch"} <= set(scalars)
    assert len(tensorboard_log.read_scalars(best.path / "tensorboard")["val_loss"]) == config["epochs"]
    figures = search.figures(run)
    assert {"history", "importances", "parallel"} == set(figures)
    assert not isinstance(figures["history"], str) and not isinstance(figures["parallel"], str)
    assert run.id in [row["id"] for row in store.list_runs("search")]


def test_pruning_goes_through_the_epoch_hook(tiny_dataset_dir):
    """train_head reports every epoch's validation score to the hook, and a hook that prunes stops the loop."""
    import optuna

    from genre_core.training import distribute, features, run_data

    base = search.base_config(str(tiny_dataset_dir), overrides={"size": 32, "val_fraction": 0.2,
                                                               "test_fraction": 0.2, "batch_size": 8})
    data = run_data.prepare_data(base, 32)
    config = base.replace(epochs=6, learning_rate=0.01)
    seen = []

    class AlwaysPrune:
        def report(self, value, step):
            seen.append((step, value))

        def should_prune(self):
            return True

    trial = AlwaysPrune()
    rng = np.random.default_rng(0)
    cached = rng.normal(size=(len(data.cache.manifest), 8)).astype("float32")
    scores: dict = {}

    def on_epoch(row):
        trial.report(scores["accuracy"], row["epoch"])
        if trial.should_prune():
            raise optuna.TrialPruned("pruned")

    with pytest.raises(optuna.TrialPruned):
        features.train_head(config, data, cached, None, len(data.classes), distribute.get_strategy(), on_epoch,
                              scores)
    assert seen and seen[0][0] == 1  # reported after the first epoch, then stopped


def test_a_search_killed_with_sigkill_resumes_without_repeating_finished_trials(tiny_dataset_dir, tmp_path,
                                                                                 stop_leftover_jobs):
    space = dict(SPACE, epochs=60)  # Long enough trials that the kill lands inside one.
    run = search.create_search(str(tiny_dataset_dir), 3, space=space,
                               overrides={"size": 32, "val_fraction": 0.2, "test_fraction": 0.2, "seed": 1})
    pid = jobs.launch(run)
    # Wait until one trial has finished and the next one is training.
    wait_for(lambda: (run.path / search.TRIALS_FILE).exists()
             and "trial 2 (1/3 done)" in str(run.raw_status().get("message")), timeout=240, poll=0.1)
    before = search.trials_table(run)
    finished_before = before[before["state"].isin(["complete", "pruned"])]
    assert len(finished_before) >= 1
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: run.status()["state"] == "interrupted", timeout=30)
    # The main thread of a killed multi-threaded process is reaped before its last thread lets the run lock go.
    wait_for(lambda: not jobs.is_locked(run), timeout=30)
    jobs.resume(run)
    wait_for(lambda: run.status()["state"] not in store.ACTIVE_STATES, timeout=300, poll=0.2)
    assert run.status()["state"] == "finished", run.status()
    after = search.trials_table(run)
    done = after[after["state"].isin(["complete", "pruned"])]
    assert len(done) == 3
    # The trials finished before the kill are kept as they were and never run again.
    for row in finished_before.itertuples():
        kept = after.loc[after["trial"] == row.trial].iloc[0]
        assert kept["state"] == row.state and kept["param_learning_rate"] == row.param_learning_rate
    retries = after.dropna(subset=["retry_of"])
    assert set(retries["retry_of"].astype(int)) <= set(after.loc[after["state"] == "fail", "trial"])
    assert not set(retries["retry_of"].astype(int)) & set(finished_before["trial"])
    # The interrupted trial ran again with the same parameters.
    for retry in retries.itertuples():
        original = after.loc[after["trial"] == int(retry.retry_of)].iloc[0]
        assert retry.param_learning_rate == original["param_learning_rate"]
    assert isinstance(pd.read_csv(run.path / search.TRIALS_FILE), pd.DataFrame)


def test_search_cli_shows_the_space_and_refuses_missing_settings(capsys, tmp_path):
    assert cli.main(["search", "--show-space"]) == 0
    assert json.loads(capsys.readouterr().out) == search.DEFAULT_SPACE
    assert cli.main(["search", "--data", "demo"]) == 2
    assert "--data and --trials are required" in capsys.readouterr().err
    assert cli.main(["search", "--data", "demo", "--trials", "0"]) == 2
    assert "--trials must be a whole number >= 1" in capsys.readouterr().err
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"pooling": "avg"}))
    assert cli.main(["search", "--data", "demo", "--trials", "2", "--space", str(space)]) == 2
    assert "'pooling' cannot be searched" in capsys.readouterr().err


def test_trial_zero_is_the_recipe_when_the_space_holds_it(tiny_dataset_dir):
    space = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
             "epochs": {"type": "int", "low": 2, "high": 4}, "batch_size": 8}
    run = search.create_search(str(tiny_dataset_dir), 2, space=space,
                               overrides={"size": 32, "epochs": 3, "val_fraction": 0.2, "test_fraction": 0.2})
    assert jobs.run_job(run) == "finished"
    first = search.load_study(run).trials[0]
    assert first.user_attrs.get("recipe") is True
    assert first.params == {"learning_rate": 0.001, "epochs": 3}  # cpu-15min's rate, the overridden epochs


def test_trials_are_scored_as_the_kept_model_outputs_with_logit_adjustment(tiny_dataset_dir, monkeypatch):
    """With the recipe's logit adjustment, a trial's validation scores are those of the adjusted probabilities
    that the kept model (PriorCorrection layer) will output."""
    from genre_core.training import distribute, features, run_data
    from genre_core.training.features import adjusted_probabilities

    uniform = np.full((4, 3), 1 / 3, np.float32)
    train_labels = np.array([0, 0, 0, 0, 1, 1, 2])  # genre 2 is the rarest
    adjusted = adjusted_probabilities(TrainConfig(logit_adjustment=1.0), uniform, train_labels, 3)
    assert (adjusted.argmax(axis=1) == 2).all()
    np.testing.assert_allclose(adjusted[0], [1 / 7, 2 / 7, 4 / 7], atol=1e-6)
    assert adjusted_probabilities(TrainConfig(), uniform, train_labels, 3) is uniform

    # In a trial: the head's probabilities (made uniform here) are adjusted by the train split's priors
    # before scoring, so with a skewed train split every validation image is called the rarest genre.
    base = search.base_config(str(tiny_dataset_dir), overrides={"size": 32, "val_fraction": 0.2,
                                                               "test_fraction": 0.2, "batch_size": 8})
    data = run_data.prepare_data(base, 32)
    labels = data.cache.labels
    rarest = 2  # not genre 0, which unadjusted uniform probabilities pick
    keep = data.train_rows[(labels[data.train_rows] != rarest) | (np.arange(len(data.train_rows)) % 4 == 0)]
    data.train_rows = keep
    monkeypatch.setattr(features, "predict_probabilities",
                        lambda model, inputs, batch_size=64: np.full((len(inputs), 3), 1 / 3, np.float32))
    cached = np.random.default_rng(1).normal(size=(len(data.cache.manifest), 8)).astype("float32")
    result = features.train_head(base.replace(epochs=1, logit_adjustment=1.0), data, cached, None, 3,
                                   distribute.get_strategy(), lambda row: None, {})
    val_labels = labels[data.val_rows]
    expected = adjusted_probabilities(TrainConfig(logit_adjustment=1.0),
                                      np.full((len(val_labels), 3), 1 / 3, np.float32), labels[data.train_rows], 3)
    assert result["val"]["accuracy"] == pytest.approx(float(np.mean(val_labels == rarest)))
    assert result["val"]["loss"] == pytest.approx(scoring.mean_log_loss(val_labels, expected, 3))
    unadjusted = features.train_head(base.replace(epochs=1, logit_adjustment=0.0), data, cached, None, 3,
                                       distribute.get_strategy(), lambda row: None, {})
    assert unadjusted["val"]["loss"] == pytest.approx(np.log(3))
    assert abs(result["val"]["loss"] - np.log(3)) > 0.01
