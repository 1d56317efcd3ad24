"""Two workers on 127.0.0.1 (TF_CONFIG, MultiWorkerMirroredStrategy) train one model with the one loop."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from genre_core import train

PROJECT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_worker_roles_come_from_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert train.worker_count() == 1 and train.is_chief()
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert train.worker_count() == 2 and not train.is_chief()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert train.is_chief()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"chief": ["a:1"], **cluster},
                                                "task": {"type": "worker", "index": 0}}))
    assert train.worker_count() == 3 and not train.is_chief()
    monkeypatch.setenv("TF_CONFIG", "{broken")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        train.worker_count()


def test_two_workers_train_to_identical_weights(tiny_dataset_dir, tmp_path):
    from genre_core import models

    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = []
    for index in range(2):
        env = dict(os.environ,
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
                   GENRE_ARTIFACTS=str(tmp_path / f"artifacts{index}"), CUDA_VISIBLE_DEVICES="",
                   GENRE_WORKER_ARTIFACTS=str(tmp_path / f"worker{index}"),
                   TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(PROJECT))
        command = [sys.executable, "-m", "genre_core", "train", "--data", str(tiny_dataset_dir),
                   "--model", "small_cnn", "--size", "32", "--epochs", "2", "--batch-size", "4"]
        processes.append(subprocess.Popen(command, cwd=PROJECT, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=300))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    folders = [Path(out.strip().splitlines()[-1]) for out, _err in outputs]
    # The chief (worker 0) wrote into its artifacts root; worker 1 wrote into a throwaway folder.
    assert folders[0].parent == tmp_path / "artifacts0" / "runs"
    assert folders[1].parent == tmp_path / "worker1" / "runs"
    assert not (tmp_path / "artifacts1").exists()
    chief, worker = (models.load_model(folder / "model.keras") for folder in folders)
    for variable, worker_weights in zip(chief.weights, worker.get_weights()):
        np.testing.assert_allclose(np.asarray(variable), worker_weights, rtol=0, atol=1e-6, err_msg=variable.path)
    history = (folders[0] / "history.csv").read_text().splitlines()
    assert len(history) == 3
    metrics = json.loads((folders[0] / "metrics.json").read_text())
    assert metrics["replicas"] == 2
