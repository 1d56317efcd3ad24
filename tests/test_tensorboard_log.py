"""TensorBoard event files (genre_core/tensorboard_log.py): classifier and GAN epochs, chief only, and writing
without the tensorboard package installed."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from genre_core.runs import store
from genre_core.training import tensorboard_log

PROJECT = Path(__file__).resolve().parents[1]


def test_classifier_epochs_become_scalars_and_gaps_are_skipped(isolated_artifacts):
    run = store.create_run("classifier", {"model": "small_cnn", "data": "demo"})
    for epoch in (1, 2):
        tensorboard_log.log_epoch(run, {"epoch": epoch, "loss": 1.0 / epoch, "accuracy": 0.5, "val_loss": float("nan"),
                                        "val_accuracy": None, "lr": 0.001, "seconds": 1.5})
    tensorboard_log.close()
    scalars = tensorboard_log.read_scalars(run.path / tensorboard_log.FOLDER)
    assert scalars["loss"] == [(1, 1.0), (2, 0.5)]
    assert set(scalars) == {"loss", "accuracy", "learning_rate", "seconds_per_epoch"}


def test_only_the_chief_writes(isolated_artifacts, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]},
                                                "task": {"type": "worker", "index": 1}}))
    run = store.create_run("classifier", {"model": "small_cnn", "data": "demo"})
    tensorboard_log.log_epoch(run, {"epoch": 1, "loss": 1.0})
    assert not (run.path / tensorboard_log.FOLDER).exists()


def test_gan_epochs_log_losses_kid_and_the_sample_grid(isolated_artifacts):
    run = store.create_run("gan", {"genre": "landscape", "data": "demo"})
    grid = run.path / "epoch_0001.png"
    Image.fromarray(np.full((8, 12, 3), 128, np.uint8)).save(grid)
    tensorboard_log.log_gan_epoch(run, {"epoch": 1, "d_loss": 1.2, "g_loss": 0.7, "kid": 0.05, "kid_std": 0.01,
                                        "aug_p": 0.1, "seconds": 3.0}, grid)
    tensorboard_log.close()
    scalars = tensorboard_log.read_scalars(run.path / tensorboard_log.FOLDER)
    assert {"d_loss", "g_loss", "kid", "kid_std", "aug_p", "seconds_per_epoch"} == set(scalars)
    import tensorflow as tf

    (events,) = list((run.path / tensorboard_log.FOLDER).glob("events.out.tfevents.*"))
    images = [value.image for event in tf.compat.v1.train.summary_iterator(str(events))
              for value in event.summary.value if value.HasField("image")]
    assert len(images) == 1 and (images[0].width, images[0].height) == (12, 8)
    assert Image.open(io.BytesIO(images[0].encoded_image_string)).size == (12, 8)


def test_writing_needs_no_tensorboard_package(tmp_path):
    script = (
        "import sys; sys.modules['tensorboard'] = None\n"  # any import of tensorboard now fails
        "from genre_core.training import tensorboard_log as t\n"
        f"t.log_scalars({str(tmp_path)!r}, 3, {{'loss': 0.25}}); t.close()\n"
        f"print(t.read_scalars({str(tmp_path)!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, capture_output=True, text=True, timeout=120,
                            env={"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin",
                                 "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "{'loss': [(3, 0.25)]}" in result.stdout
    assert "TensorBoard logging" not in result.stderr
