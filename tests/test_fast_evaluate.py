"""evaluate --data and folder classify on a frozen-feature run: image cache, embedding cache, fast engine."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd

from conftest import make_tiny_image, write_tiny_folder_dataset
from genre_core import cli
from genre_core.data import images
from genre_core.evaluation import classify
from genre_core.runs import jobs
from genre_core.util import fileio


def test_evaluate_data_uses_the_caches_and_the_fast_engine(tiny_dataset_dir, isolated_artifacts, tmp_path,
                                                          capsys):
    config = {"data": str(tiny_dataset_dir), "model": "hed_vgg16", "size": 32, "epochs": 2, "batch_size": 8,
              "head_units": 0, "feature_layers": ["block3_conv3"], "val_fraction": 0.2, "test_fraction": 0.2,
              "learning_rate": 0.01}
    run = jobs.start("classifier", config)
    assert run.status()["state"] == "finished"
    data = write_tiny_folder_dataset(tmp_path / "elsewhere", per_genre=3, size=40)
    (data / "portrait" / "broken.jpg").write_bytes(b"not a picture")
    embeddings_root = isolated_artifacts / "cache" / "embeddings"
    before = set(embeddings_root.iterdir())

    assert cli.main(["evaluate", str(run.path), "--data", str(data)]) == 0
    capsys.readouterr()
    summary = fileio.read_json(run.path / "evaluations" / "elsewhere" / "evaluation.json")
    assert summary["metrics"]["n"] == 9
    assert summary["skipped"]["unreadable"] == 1
    assert any("broken.jpg" in error for error in summary["read_errors"])
    # The features went through the embedding cache, computed by ncnn like training's.
    added = set(embeddings_root.iterdir()) - before
    assert len(added) == 1
    assert fileio.read_json(next(iter(added)) / "embeddings.json")["engine"].startswith("ncnn ")
    # Same probabilities as the saved Keras model on the same images.
    predictions = pd.read_csv(run.path / "evaluations" / "elsewhere" / "predictions.csv")
    batch = np.stack([images.load_rgb(path, 32, "squash") for path in predictions["path"]]).astype("float32")
    model = classify.load_classifier(run.path).model
    np.testing.assert_allclose(np.asarray(model(batch, training=False)), predictions[run.classes()].to_numpy(),
                               atol=1e-4)

    # A second evaluation reuses both caches: nothing new is decoded or extracted.
    assert cli.main(["evaluate", str(run.path), "--data", str(data)]) == 0
    assert set(embeddings_root.iterdir()) - before == added


def test_predict_dataset_on_an_end_to_end_model_reads_cached_images(tiny_dataset_dir, isolated_artifacts, tmp_path):
    run = jobs.start("classifier", {"data": str(tiny_dataset_dir), "model": "small_cnn", "size": 32, "epochs": 1,
                           "batch_size": 8, "val_fraction": 0.2, "test_fraction": 0.2})
    classifier = classify.load_classifier(run.path)
    assert classifier.frozen_parts() is None
    assert classifier.with_engine("auto") is classifier  # nothing to run on ncnn: the whole model stays Keras
    folder = tmp_path / "few"
    folder.mkdir()
    make_tiny_image("abstract", 1).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"\x89PNG broken")
    dataset = classify.files_dataset([folder / "a.png", folder / "b.png"], classifier.classes)
    probabilities, errors = classifier.predict_dataset(dataset)
    good = [index for index, error in enumerate(errors) if error is None]
    assert len(good) == 1 and np.isnan(probabilities[1 - good[0]]).all()
    expected = classifier.predict_arrays(classifier.load(str(folder / "a.png")))
    np.testing.assert_allclose(probabilities[good[0]], expected[0], atol=1e-5)
    json.dumps(errors)  # errors are plain strings or None


def test_folder_classify_goes_through_the_caches_and_matches_single_images(tiny_dataset_dir, isolated_artifacts,
                                                                          capsys):
    from genre_core.commands import evaluate as evaluate_command

    run = jobs.start("classifier", {"data": str(tiny_dataset_dir), "model": "hed_vgg16", "size": 32, "epochs": 1,
                           "batch_size": 8, "head_units": 0, "feature_layers": ["block3_conv3"],
                           "val_fraction": 0.2, "test_fraction": 0.2})
    capsys.readouterr()
    paths = classify.collect_images([str(tiny_dataset_dir)])
    assert len(paths) >= evaluate_command.CACHED_CLASSIFY_MIN
    assert cli.main(["classify", "--run", str(run.path), str(tiny_dataset_dir), "--format", "csv"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert len(table) == len(paths)
    classifier = classify.load_classifier(run.path)
    # The GAN judge's path: the frozen backbone on ncnn, the head in Keras, the same probabilities in batches.
    fast = classifier.with_engine("auto")
    assert fast is not classifier and fast.engine.startswith("ncnn ") and classifier.engine == "keras"
    assert classifier.with_engine("keras") is classifier
    loaded = [classifier.load(str(path)) for path in paths]
    batch = np.stack((loaded * 2)[:classify.PREDICT_BATCH_SIZE + 3])  # more than one predict batch
    np.testing.assert_allclose(fast.predict_arrays(batch), classifier.predict_arrays(batch), atol=1e-4)
    assert fast.predict_arrays(batch[0]).shape == (1, len(classifier.classes))
    direct = classifier.classify([str(path) for path in paths[:3]])
    cached = classifier.classify_files(paths[:3])
    for one, other in zip(direct, cached):
        assert one["name"] == other["name"] and one["top"][0][0] == other["top"][0][0]
        np.testing.assert_allclose(list(one["probabilities"].values()), list(other["probabilities"].values()),
                                   atol=1e-4)
