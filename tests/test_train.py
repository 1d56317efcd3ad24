"""The training loop end to end on the tiny dataset: run folder contents, reload, frozen features, cancel, resume, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from genre_core.runs import jobs, store
from genre_core.training.config import RUN_ONLY_KEYS, TrainConfig
from genre_core.util import fileio

TINY = {"model": "small_cnn", "size": 32, "epochs": 2, "batch_size": 8, "seed": 0, "val_fraction": 0.2,
        "test_fraction": 0.2}
RUN_FILES = ("config.json", "classes.json", "history.csv", "model.keras", "metrics.json", "predictions.csv",
             "status.json", "log.txt", "checkpoint")


def test_two_epoch_run_writes_every_file_and_reloads(tiny_dataset_dir, isolated_artifacts, monkeypatch):
    from genre_core.data import images
    from genre_core.models import zoo

    events = []
    run = jobs.start("classifier", {**TINY, "data": str(tiny_dataset_dir)}, progress=events.append)
    assert run.status()["state"] == "finished", run.status()
    for name in RUN_FILES:
        assert (run.path / name).exists(), f"{name} is missing from the run folder"
    assert run.path.parent == isolated_artifacts / "runs"

    config = TrainConfig.from_dict({k: v for k, v in run.config().items() if k not in RUN_ONLY_KEYS})
    assert config.model == "small_cnn" and config.size == 32
    assert run.classes() == ["abstract", "landscape", "portrait"]

    history = pd.read_csv(run.path / "history.csv")
    assert list(history.columns) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
    assert history["epoch"].tolist() == [1, 2]
    assert np.isfinite(history[["loss", "val_loss"]].to_numpy()).all()

    metrics = fileio.read_json(run.path / "metrics.json")
    for split in ("train", "val", "test"):
        assert {"accuracy", "macro_f1", "loss"} <= set(metrics[split])
        assert 0.0 <= metrics[split]["accuracy"] <= 1.0
    assert metrics["train"]["count"] + metrics["val"]["count"] + metrics["test"]["count"] == 30

    predictions = pd.read_csv(run.path / "predictions.csv")
    assert list(predictions.columns[:4]) == ["path", "true", "predicted", "confidence"]
    assert list(predictions.columns[4:]) == run.classes()
    assert len(predictions) == metrics["test"]["count"]
    probabilities = predictions[run.classes()].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    accuracy = float((predictions["true"] == predictions["predicted"]).mean())
    assert accuracy == pytest.approx(metrics["test"]["accuracy"])

    # The saved model, loaded with safe_mode=True from the folder alone, predicts what predictions.csv says.
    model = zoo.load_model(run.path / "model.keras")
    batch = np.stack([images.load_rgb(path, config.size, config.policy) for path in predictions["path"]])
    np.testing.assert_allclose(np.asarray(model(batch.astype("float32"), training=False)), probabilities, atol=1e-4)

    stages = {event["stage"] for event in events}
    assert {"prepare", "batch", "epoch"} <= stages
    assert "epoch 2/2" in (run.path / "log.txt").read_text()

    # Evaluating the fresh run reads its folder alone: the dataset is neither reloaded nor split again.
    from genre_core.data import sources
    from genre_core.evaluation import evaluate

    def no_dataset(*args, **kwargs):
        raise AssertionError("evaluate reloaded the dataset")

    monkeypatch.setattr(sources, "load_dataset", no_dataset)
    summary = evaluate.evaluate_run(run)
    assert summary["metrics"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    per_class = {row["genre"]: row["train_count"] for row in summary["per_class"]}
    assert per_class == metrics["train_counts"]


def test_frozen_backbone_trains_its_head_on_cached_features(tiny_dataset_dir, isolated_artifacts):
    from genre_core.data import images
    from genre_core.models import zoo

    config = {**TINY, "data": str(tiny_dataset_dir), "model": "hed_vgg16", "head_units": 0,
              "feature_layers": ["block3_conv3", "block5_conv3"], "flip_features": True,
              "balancing": "class_weights", "epochs": 3, "learning_rate": 0.01}
    first_events = []
    first = jobs.start("classifier", config, progress=first_events.append)
    assert first.status()["state"] == "finished", first.status()
    metrics = first.metrics()
    assert metrics["frozen_features"] is True
    assert any(event["stage"] == "features" for event in first_events)
    folders = list((isolated_artifacts / "cache" / "embeddings").iterdir())
    assert len(folders) == 1
    assert {"features.npy", "features_flip.npy", "embeddings.json"} <= {p.name for p in folders[0].iterdir()}
    # The separable synthetic genres are learnt from features alone.
    assert metrics["train"]["accuracy"] >= 0.8
    # On a CPU the feature pass ran on ncnn (feature_engine "auto"); the run says so.
    info = fileio.read_json(folders[0] / "embeddings.json")
    assert info["engine"].startswith("ncnn ")
    assert any("computed with ncnn" in note for note in metrics["notes"])
    assert "computed with ncnn" in (first.path / "log.txt").read_text()

    # A second run with another head reuses the features: no backbone pass at all. This head power-normalises
    # the features and decays its learning rate along a cosine.
    second_events = []
    second = jobs.start("classifier", {**config, "dropout": 0.1, "feature_transform": "sqrt", "lr_schedule": "cosine"},
                             progress=second_events.append)
    assert second.status()["state"] == "finished"
    assert not any(event["stage"] == "features" for event in second_events)
    learning_rates = pd.read_csv(second.path / "history.csv")["lr"].tolist()
    assert learning_rates[0] < 0.01 and learning_rates == sorted(learning_rates, reverse=True)
    assert learning_rates[-1] == pytest.approx(0.0, abs=1e-6)

    assert any("read from the embedding cache (computed with ncnn" in note for note in second.metrics()["notes"])

    # The saved model is the whole image classifier (extractor + head), all Keras: on the test images it
    # gives the probabilities that the head gave on ncnn's features.
    model = zoo.load_model(second.path / "model.keras")
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 3)
    assert any(layer.name == "transform" for layer in model.get_layer("head").layers)
    predictions = pd.read_csv(second.path / "predictions.csv")
    probabilities = predictions[second.classes()].to_numpy()
    batch = np.stack([images.load_rgb(path, 32, "squash") for path in predictions["path"]]).astype("float32")
    np.testing.assert_allclose(np.asarray(model(batch, training=False)), probabilities, atol=1e-4)


def test_cancel_stops_within_one_batch_keeps_the_model_and_resume_continues(tiny_dataset_dir, isolated_artifacts):
    config = {**TINY, "data": str(tiny_dataset_dir), "epochs": 3, "batch_size": 4}
    seen = []
    holder = {}

    def cancel_in_second_epoch(event):
        seen.append(event)
        epochs_done = sum(1 for item in seen if item["stage"] == "epoch")
        if event["stage"] == "batch" and epochs_done == 1 and event["done"] == 2:
            # The only run folder is this one; a cancel request is just the `cancel` file.
            store.open_run(next((isolated_artifacts / "runs").iterdir())).request_cancel()
            holder["cancelled_at"] = len(seen)

    run = jobs.start("classifier", config, progress=cancel_in_second_epoch)
    status = run.status()
    assert status["state"] == "cancelled", status
    later_batches = [event for event in seen[holder["cancelled_at"]:] if event["stage"] == "batch"]
    assert len(later_batches) <= 1, "training went on for more than one batch after the cancel request"
    assert (run.path / "model.keras").exists()
    assert pd.read_csv(run.path / "history.csv")["epoch"].tolist() == [1]
    assert fileio.read_json(run.path / "checkpoint" / "state.json")["epoch"] == 1

    # Resume: the run continues after its last finished epoch and its history continues too.
    run.clear_cancel()
    run.write_config({**run.config(), "resume": True})
    resumed = []
    state = jobs.run_job(run, progress=resumed.append)
    assert state == "finished", run.status()
    assert pd.read_csv(run.path / "history.csv")["epoch"].tolist() == [1, 2, 3]
    assert any(event["stage"] == "resume" and event["done"] == 1 for event in resumed)
    assert sum(1 for event in resumed if event["stage"] == "epoch") == 2
    assert run.metrics()["epochs_run"] == 3


def test_train_cli_reports_bad_input_in_one_line(tiny_dataset_dir, isolated_artifacts, capsys, tmp_path):
    from genre_core import cli

    assert cli.main(["train", "--data", str(tmp_path / "missing"), "--model", "small_cnn"]) == 2
    assert "does not exist" in capsys.readouterr().err.strip().splitlines()[-1]
    assert cli.main(["train", "--data", str(tiny_dataset_dir), "--model", "vgg99"]) == 2
    assert "unknown model 'vgg99'" in capsys.readouterr().err
    bad_config = tmp_path / "bad.json"
    bad_config.write_text(json.dumps({"data": "demo", "epoks": 3}))
    assert cli.main(["train", "--config", str(bad_config)]) == 2
    assert "unknown training option(s) epoks" in capsys.readouterr().err
    assert not list((isolated_artifacts / "runs").glob("*")) if (isolated_artifacts / "runs").exists() else True


def test_train_cli_runs_a_config_file_with_flag_overrides(tiny_dataset_dir, isolated_artifacts, capsys, tmp_path):
    from genre_core import cli

    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps({**TINY, "data": str(tiny_dataset_dir), "epochs": 5}))
    code = cli.main(["train", "--config", str(config_file), "--epochs", "1", "--augment", "flip,contrast",
                     "--balancing", "oversample"])
    out = capsys.readouterr()
    assert code == 0, out.err
    run = store.open_run(out.out.strip().splitlines()[-1])
    assert run.config()["epochs"] == 1
    assert run.config()["augmentation"] == ["flip", "contrast"]
    assert len(run.history()) == 1


def test_recipe_then_config_file_then_flags(tmp_path):
    import argparse

    from genre_core.commands import train as train_command
    from genre_core.training.config import RECIPES

    parser = argparse.ArgumentParser()
    train_command.register(parser.add_subparsers())
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps({"data": "demo", "epochs": 7}))
    args = parser.parse_args(["train", "--recipe", "cpu-15min", "--config", str(config_file), "--size", "160",
                              "--feature-engine", "keras"])
    config = train_command.config_from_args(args)
    recipe = RECIPES["cpu-15min"]
    # The file sets only data and epochs; it does not reset the recipe's other options to their defaults.
    assert (config.data, config.epochs, config.size, config.feature_engine) == ("demo", 7, 160, "keras")
    assert (config.model, config.feature_transform, config.lr_schedule, config.weight_decay) == (
        recipe["model"], recipe["feature_transform"], recipe["lr_schedule"], recipe["weight_decay"])
    # Every recipe is a valid config.
    for name in RECIPES:
        TrainConfig.from_dict({"data": "demo", **RECIPES[name]})
    with pytest.raises(ValueError, match="unknown recipe 'fast'; known recipes: cpu-15min"):
        train_command.config_from_args(parser.parse_args(["train", "--data", "demo", "--recipe", "fast"]))


def test_mixed_precision_without_a_gpu_falls_back_to_float32_with_a_warning(capsys):
    """Mixed precision asked for on a machine without a GPU: a warning, and training stays in float32."""
    import keras
    import tensorflow as tf

    from genre_core.training.config import TrainConfig
    from genre_core.training.loop import set_precision

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU, so mixed precision is really used")
    try:
        assert set_precision(TrainConfig(data="demo", model="small_cnn", mixed_precision=True)) is False
        assert keras.mixed_precision.global_policy().name == "float32"
        assert "mixed_precision needs a GPU" in capsys.readouterr().err
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_cross_validation_refit_and_logit_adjustment_are_recorded(tiny_dataset_dir, isolated_artifacts):
    from genre_core.data import images
    from genre_core.models import zoo

    config = {**TINY, "data": str(tiny_dataset_dir), "model": "hed_vgg16", "head_units": 0,
              "feature_layers": ["block3_conv3"], "epochs": 3, "learning_rate": 0.01, "cv_folds": 3,
              "refit": True, "logit_adjustment": 1.0}
    events = []
    run = jobs.start("classifier", config, progress=events.append)
    assert run.status()["state"] == "finished", run.status()
    metrics = run.metrics()

    # Cross-validation: 3 folds over train+val (the test split stays out), scored after logit adjustment.
    folds = metrics["crossval"]
    assert folds == fileio.read_json(run.path / "crossval.json")
    assert folds["folds"] == 3 and len(folds["per_fold"]) == 3
    assert folds["rows"] == 30 - metrics["test"]["count"]
    accuracies = [row["accuracy"] for row in folds["per_fold"]]
    assert folds["mean"]["accuracy"] == pytest.approx(np.mean(accuracies), abs=1e-6)
    assert folds["sd"]["accuracy"] == pytest.approx(np.std(accuracies), abs=1e-6)
    assert {"macro_f1", "balanced_accuracy", "top3_accuracy"} <= set(folds["mean"])
    assert "unadjusted_mean" in folds
    assert any(event["stage"] == "crossval" for event in events)
    assert any("cross-validation" in note for note in metrics["notes"])

    # Refit: the validation images trained the kept model; no validation scores; the counts say so.
    assert metrics["refit"] is True and metrics["val"]["count"] == 0
    assert sum(metrics["train_counts"].values()) == metrics["train"]["count"] == 30 - metrics["test"]["count"]
    test_truth = pd.read_csv(run.path / "predictions.csv")["true"]
    assert metrics["split_counts"]["test"] == {genre: int((test_truth == genre).sum()) for genre in run.classes()}

    # Logit adjustment lives inside the saved model: it reproduces predictions.csv, and removing the layer
    # gives probabilities that differ by the train priors.
    model = zoo.load_model(run.path / "model.keras")
    head = model.get_layer("head")
    layer = head.get_layer("logit_adjustment")
    assert layer.tau == 1.0
    counts = np.array([metrics["train_counts"][genre] for genre in run.classes()], float)
    np.testing.assert_allclose(layer.log_prior, np.log(counts / counts.sum()), atol=1e-6)
    predictions = pd.read_csv(run.path / "predictions.csv")
    batch = np.stack([images.load_rgb(path, 32, "squash") for path in predictions["path"]]).astype("float32")
    np.testing.assert_allclose(np.asarray(model(batch, training=False)), predictions[run.classes()].to_numpy(),
                               atol=1e-4)


def test_prior_correction_matches_its_numpy_twin_and_balances_a_prior():
    from genre_core.models import layers, zoo

    probabilities = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]], np.float32)
    log_prior = zoo.log_priors(np.array([0, 0, 0, 0, 1, 1, 2]), 3)
    np.testing.assert_allclose(log_prior, np.log([4 / 7, 2 / 7, 1 / 7]))
    layer = layers.prior_correction(list(log_prior), tau=1.0)
    expected = probabilities / np.exp(log_prior)
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(layer(probabilities)), expected, atol=1e-6)
    np.testing.assert_allclose(layers.prior_correction_numpy(probabilities, log_prior, 1.0), expected, atol=1e-6)
    np.testing.assert_allclose(layers.prior_correction_numpy(probabilities, log_prior, 0.0), probabilities, atol=1e-6)


def test_cross_validation_options_are_checked():
    with pytest.raises(ValueError, match="cv_folds"):
        TrainConfig(cv_folds=1).validate()
    with pytest.raises(ValueError, match="cv_folds"):
        TrainConfig(cv_folds=3, balancing="oversample").validate()
    with pytest.raises(ValueError, match="patience"):
        TrainConfig(refit=True, patience=3).validate()
    with pytest.raises(ValueError, match="logit_adjustment"):
        TrainConfig(logit_adjustment=-1).validate()
