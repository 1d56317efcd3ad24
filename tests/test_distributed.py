"""Two workers on 127.0.0.1 (TF_CONFIG, MultiWorkerMirroredStrategy) train one model with the one loop."""

from __future__ import annotations

import json
import os
import socket
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from genre_core.util import cluster
from conftest import wait_for

PROJECT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_worker_roles_come_from_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert cluster.worker_count() == 1 and cluster.is_chief()
    workers = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": workers, "task": {"type": "worker", "index": 1}}))
    assert cluster.worker_count() == 2 and not cluster.is_chief()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": workers, "task": {"type": "worker", "index": 0}}))
    assert cluster.is_chief()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"chief": ["a:1"], **workers},
                                                "task": {"type": "worker", "index": 0}}))
    assert cluster.worker_count() == 3 and not cluster.is_chief()
    monkeypatch.setenv("TF_CONFIG", "{broken")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        cluster.worker_count()


def start_workers(dataset: Path, tmp_path: Path, epochs: int, output=subprocess.PIPE,
                  **environment: str) -> list[subprocess.Popen]:
    """Start two `train` workers on 127.0.0.1 (worker 0 is the chief and writes under artifacts0)."""
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = []
    for index in range(2):
        env = dict(os.environ,
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
                   GENRE_ARTIFACTS=str(tmp_path / f"artifacts{index}"), CUDA_VISIBLE_DEVICES="",
                   GENRE_WORKER_ARTIFACTS=str(tmp_path / f"worker{index}"),
                   TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(PROJECT), **environment)
        command = [sys.executable, "-m", "genre_core", "train", "--data", str(dataset),
                   "--model", "small_cnn", "--size", "32", "--epochs", str(epochs), "--batch-size", "4"]
        stream = output if output is subprocess.PIPE else open(tmp_path / f"worker{index}.log", "w")
        processes.append(subprocess.Popen(command, cwd=PROJECT, env=env, stdout=stream, stderr=subprocess.STDOUT
                                          if stream is not subprocess.PIPE else subprocess.PIPE, text=True))
    return processes


def test_two_workers_train_to_identical_weights(tiny_dataset_dir, tmp_path):
    from genre_core.models import zoo

    processes = start_workers(tiny_dataset_dir, tmp_path, epochs=2)
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
    chief, worker = (zoo.load_model(folder / "model.keras") for folder in folders)
    for variable, worker_weights in zip(chief.weights, worker.get_weights()):
        np.testing.assert_allclose(np.asarray(variable), worker_weights, rtol=0, atol=1e-6, err_msg=variable.path)
    history = (folders[0] / "history.csv").read_text().splitlines()
    assert len(history) == 3
    metrics = json.loads((folders[0] / "metrics.json").read_text())
    assert metrics["replicas"] == 2


def test_a_killed_worker_makes_the_other_fail_within_the_stall_limit(tiny_dataset_dir, tmp_path):
    from genre_core.runs import store

    limit = 60
    processes = start_workers(tiny_dataset_dir, tmp_path, epochs=100_000, output=None,
                              GENRE_STALL_SECONDS=str(limit))
    chief, peer = processes
    try:
        def chief_run():
            folders = list((tmp_path / "artifacts0" / "runs").glob("*"))
            return store.Run(folders[0]) if folders and (folders[0] / "status.json").exists() else None

        run = wait_for(lambda: (found := chief_run()) and (found.raw_status().get("epoch") or 0) >= 1 and found,
                       timeout=300)
        assert chief.poll() is None and peer.poll() is None
        peer.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        chief.wait(timeout=limit + 240)
        elapsed = time.monotonic() - killed
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    log = (tmp_path / "worker0.log").read_text(errors="replace")
    status = run.status()
    print(f"surviving worker ended {elapsed:.1f} s after its peer was killed: {status.get('error')}")
    assert chief.returncode != 0, log[-3000:]
    assert status["state"] == "failed", (status, log[-3000:])
    # Either TensorFlow's peer health check or the job's watchdog ended it, within the stall limit (plus the
    # watchdog's polling and the process exit).
    assert elapsed <= limit + 30, (elapsed, status)
