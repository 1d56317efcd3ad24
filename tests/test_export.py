"""Model export (genre_core/export.py): each format reloads and matches model.predict to 1e-4 on real images,
with the preprocessing inside the graph and a JSON sidecar; the CLI and its refusals."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from genre_core import cli
from genre_core.data import images
from genre_core.evaluation import export
from genre_core.models import zoo
from genre_core.runs import store
from genre_core.runs import jobs

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def trained_run(tiny_dataset_dir):
    """A frozen HED-VGG16 run at 32 px with every custom layer: Caffe preprocessing, mean+std pooling, sqrt."""
    run = jobs.start("classifier", {"data": str(tiny_dataset_dir), "model": "hed_vgg16", "size": 32, "epochs": 2,
                           "batch_size": 8, "head_units": 8, "feature_transform": "sqrt", "val_fraction": 0.2,
                           "test_fraction": 0.2})
    assert run.status()["state"] == "finished"
    return run


def painting_batch(run, tiny_dataset_dir, count: int = 4) -> np.ndarray:
    """The first paintings of the tiny dataset, resized as the run's config says."""
    config = run.config()
    paths = sorted(tiny_dataset_dir.rglob("*.jpg"))[:count]
    return np.stack([images.load_rgb(path, config["size"], config["policy"]) for path in paths]).astype(np.float32)


@pytest.mark.parametrize("format_name, out_name", [("saved_model", "genre_model"), ("tflite", "genre.tflite"),
                                                   ("onnx", "genre.onnx")])
def test_each_format_round_trips_to_model_predict(trained_run, tiny_dataset_dir, tmp_path, format_name, out_name):
    if format_name == "onnx":
        for package in ("tf2onnx", "onnxruntime"):
            if importlib.util.find_spec(package) is None:
                pytest.skip(f"ONNX export not tested: the {package} package is not installed "
                            "(requirements-dev.txt installs it)")
    out = tmp_path / out_name
    info = export.export_run(trained_run, format_name, out)
    sidecar = json.loads(export.sidecar_path(out).read_text())
    assert sidecar == json.loads(json.dumps(info))
    assert sidecar["classes"] == trained_run.classes() and sidecar["size"] == [32, 32]
    assert sidecar["resize_policy"] == "squash" and sidecar["input"]["range"] == [0, 255]
    assert sidecar["check"]["checked"] and sidecar["check"]["max_abs_difference"] <= TOLERANCE
    batch = painting_batch(trained_run, tiny_dataset_dir)
    expected = zoo.load_model(trained_run.model_path).predict(batch, verbose=0)
    got = export.load_predictor(out, format_name)(batch)
    assert got.shape == expected.shape == (len(batch), len(trained_run.classes()))
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)


def test_onnx_without_onnxruntime_is_reported_not_failed(trained_run, tmp_path, monkeypatch):
    if importlib.util.find_spec("tf2onnx") is None:
        pytest.skip("ONNX export not tested: the tf2onnx package is not installed")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(export.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a))
    info = export.export_run(trained_run, "onnx", tmp_path / "genre.onnx")
    assert info["check"] == {"checked": False, "reason": "onnxruntime is not installed (pip install onnxruntime), "
                                                         "so the ONNX export cannot be run here"}
    assert (tmp_path / "genre.onnx").stat().st_size > 0


def test_export_cli_writes_and_refuses_in_one_line(trained_run, tmp_path, capsys):
    out = tmp_path / "model.tflite"
    assert cli.main(["export", str(trained_run.path), "--format", "tflite", "--out", str(out), "--no-check"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == str(out) and "tflite export of run" in printed[1] and "not checked" in printed[1]
    assert cli.main(["export", str(trained_run.path), "--format", "tflite", "--out", str(out)]) == 2
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert cli.main(["export", str(trained_run.path), "--format", "onnx", "--out", str(tmp_path / "x.tflite")]) == 2
    assert "one file ending in .onnx" in capsys.readouterr().err
    empty = store.create_run("classifier", {"model": "small_cnn", "data": "demo"})
    assert cli.main(["export", empty.id, "--format", "saved_model", "--out", str(tmp_path / "m")]) == 2
    assert "has no model.keras" in capsys.readouterr().err
