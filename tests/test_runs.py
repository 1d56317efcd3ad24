"""Run folders: creation, opening, status (dead-process detection), history, metrics, listing, progress."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from genre_core.runs import heartbeat, store
from genre_core.util import paths


def test_create_run_writes_config_status_and_classes(isolated_artifacts):
    run = store.create_run("classifier", {"model": "hed_vgg16", "epochs": 5, "data": "demo"},
                          classes=["landscape", "portrait"])
    assert run.path.parent == paths.runs_dir()
    assert re.fullmatch(r"\d{8}-\d{6}-hed_vgg16-[0-9a-f]{4}", run.id)
    config = json.loads((run.path / "config.json").read_text())
    assert config["kind"] == "classifier" and config["model"] == "hed_vgg16" and config["epochs"] == 5
    assert run.classes() == ["landscape", "portrait"]
    status = run.status()
    assert status["state"] == "queued" and status["epochs"] == 5 and status["pid"] is None
    assert run.kind == "classifier"


def test_create_run_places_gan_runs_and_refuses_existing_or_unknown(isolated_artifacts):
    run = store.create_run("gan", {"genre": "landscape"}, run_id="my-gan")
    assert run.path == paths.gan_runs_dir() / "my-gan"
    with pytest.raises(ValueError, match="already exists"):
        store.create_run("gan", {}, run_id="my-gan")
    with pytest.raises(ValueError, match="unknown run kind"):
        store.create_run("painting", {})
    with pytest.raises(ValueError, match="must be a dict"):
        store.create_run("classifier", ["not", "a", "dict"])


def test_run_ids_are_sanitised_and_cannot_escape(isolated_artifacts):
    run = store.create_run("classifier", {"model": "../../etc/passwd x"}, run_id="../../etc")
    assert run.path.parent == paths.runs_dir() and run.id == "etc"
    generated = store.create_run("classifier", {"model": "../../etc/passwd x"})
    assert generated.path.parent == paths.runs_dir()
    assert "/" not in generated.id and ".." not in generated.id
    with pytest.raises(ValueError, match="not a valid run id"):
        store.open_run("etc;rm")
    with pytest.raises(ValueError):
        store.open_run("..")
    # A path outside the run roots is only opened if it is a run folder; /etc is not.
    with pytest.raises((ValueError, FileNotFoundError)):
        store.open_run(os.path.join(str(paths.runs_dir()), "..", "..", "..", "etc"))
    with pytest.raises(ValueError, match="leaves"):
        run.file("../config.json")
    with pytest.raises(ValueError):
        run.file("/etc/passwd")
    assert run.file("checkpoint/state.json") == run.path / "checkpoint" / "state.json"


def test_open_run_by_id_and_by_path(isolated_artifacts):
    classifier = store.create_run("classifier", {"model": "small_cnn"})
    gan = store.create_run("gan", {"genre": "portrait"})
    assert store.open_run(classifier.id) == classifier
    assert store.open_run(gan.id).kind == "gan"
    assert store.open_run(str(classifier.path)) == classifier
    assert store.open_run(classifier.path).id == classifier.id
    with pytest.raises(FileNotFoundError, match="no run with id"):
        store.open_run("20990101-000000-nothing-0000")
    with pytest.raises(FileNotFoundError, match="no run with id"):
        store.open_run(gan.id, kind="classifier")


def _dead_pid() -> int:
    """Return the pid of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_status_reports_interrupted_when_the_process_died(isolated_artifacts):
    run = store.create_run("classifier", {"model": "m"})
    run.update_status(state="running", pid=_dead_pid())
    status = run.status()
    assert status["state"] == "interrupted" and status["recorded_state"] == "running"
    assert run.raw_status()["state"] == "running"
    # The current process is alive, so the same record with our pid reads as running.
    run.update_status(pid=os.getpid(), pid_start=heartbeat.process_start_time(os.getpid()))
    assert run.status()["state"] == "running"


def test_status_guards_against_pid_reuse(isolated_artifacts):
    run = store.create_run("classifier", {"model": "m"})
    start = heartbeat.process_start_time(os.getpid())
    if start is None:
        pytest.skip("/proc is not available")
    # Our pid, but a different start time: the recorded job was an earlier process that had this pid.
    run.update_status(state="running", pid=os.getpid(), pid_start=start - 1)
    assert run.status()["state"] == "interrupted"


def test_unreaped_child_counts_as_dead(isolated_artifacts):
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while heartbeat._process_state(process.pid) not in ("Z", None) and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        assert not heartbeat.pid_alive(process.pid)
    finally:
        process.wait()


def test_update_status_merges_and_stamps(isolated_artifacts):
    run = store.create_run("classifier", {"model": "m", "epochs": 3})
    before = run.raw_status()["updated"]
    time.sleep(0.002)
    status = run.update_status(epoch=2, message="half way")
    assert status["epoch"] == 2 and status["epochs"] == 3 and status["message"] == "half way"
    assert status["updated"] > before
    assert run.raw_status() == status


def test_update_status_replaces_a_corrupt_status_file(isolated_artifacts):
    run = store.create_run("classifier", {"model": "m"})
    (run.path / "status.json").write_text("{not json")
    with pytest.raises(ValueError, match="status.json"):
        run.status()
    run.update_status(state="failed", error="x")
    assert run.status()["state"] == "failed"


def test_history_append_adds_columns_and_truncates(isolated_artifacts):
    run = store.create_run("classifier", {"model": "m"})
    assert run.history().empty
    run.append_history({"epoch": 1, "loss": 0.9})
    run.append_history({"epoch": 2, "loss": 0.5, "lr": 0.001})
    run.append_history({"epoch": 3, "loss": 0.25})
    history = run.history()
    assert list(history.columns) == ["epoch", "loss", "lr"]
    assert history["epoch"].tolist() == [1, 2, 3]
    assert history["loss"].tolist() == [0.9, 0.5, 0.25]
    assert history["lr"].isna().tolist() == [True, False, True]
    run.truncate_history(2)
    assert run.history()["epoch"].tolist() == [1, 2]
    (run.path / "history.csv").write_bytes(b"epoch,loss\n1,0.5,7,8\n")
    with pytest.raises(ValueError, match="history.csv"):
        run.append_history({"epoch": 2})


def test_metrics_and_cancel_files(isolated_artifacts):
    run = store.create_run("classifier", {"model": "m"})
    assert run.metrics() == {}
    run.write_metrics({"test": {"accuracy": 0.75, "macro_f1": 0.5, "loss": 1.0}})
    assert run.metrics()["test"]["accuracy"] == 0.75
    assert not run.cancel_requested()
    run.check_cancel()
    run.request_cancel()
    assert run.cancel_requested()
    with pytest.raises(store.Cancelled):
        run.check_cancel()
    run.clear_cancel()
    assert not run.cancel_requested()
    assert run.model_path.name == "model.keras" and run.log_path.name == "log.txt"
    assert run.checkpoint_dir.is_dir()


def test_list_runs_newest_first_with_headline_metrics(isolated_artifacts):
    older = store.create_run("classifier", {"model": "a", "data": "demo", "epochs": 4,
                                           "created": "2026-01-01T00:00:00.000+00:00"})
    newer = store.create_run("classifier", {"model": "b", "data": "/data/x", "epochs": 2,
                                           "created": "2026-02-01T00:00:00.000+00:00"})
    newer.append_history({"epoch": 1, "loss": 1.0})
    newer.write_metrics({"test": {"accuracy": 0.8, "macro_f1": 0.6}})
    store.create_run("gan", {"genre": "portrait"})
    rows = store.list_runs()
    assert [row["id"] for row in rows] == [newer.id, older.id]
    first = rows[0]
    assert first["model"] == "b" and first["data"] == "/data/x" and first["state"] == "queued"
    assert first["test_accuracy"] == 0.8 and first["macro_f1"] == 0.6
    assert first["epoch"] == 1 and first["epochs"] == 2 and first["damaged"] is None
    assert rows[1]["test_accuracy"] is None
    assert len(store.list_runs(kind="gan")) == 1
    assert len(store.list_runs(kind=None)) == 3


class FakeClock:
    """A controllable monotonic clock for the throttling tests."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_writer_throttles_batches_but_always_writes_epochs(isolated_artifacts):
    run = store.create_run("classifier", {"model": "m"})
    clock = FakeClock()
    writer = store.ProgressWriter(run, min_interval=0.5, clock=clock)
    writer({"stage": "epoch", "done": 0, "total": 4})
    assert writer.writes == 1
    for batch in range(1, 101):
        clock.now += 0.001
        writer({"stage": "batch", "done": batch, "total": 100})
    # The first batch event is a new stage and is written; the other 99 fall inside the 0.5 s window.
    assert writer.writes == 2
    assert run.raw_status()["batch"] == 1
    clock.now += 1.0
    writer({"stage": "batch", "done": 100, "total": 100})
    assert writer.writes == 3 and run.raw_status()["batch"] == 100
    writer({"stage": "epoch", "done": 1, "total": 4})
    status = run.raw_status()
    assert writer.writes == 4 and status["epoch"] == 1 and status["epochs"] == 4
    # One epoch of four took 1.1 s since the first event, so three more take about 3.3 s.
    assert status["eta_seconds"] == pytest.approx(3.3, abs=0.05)


def test_progress_writer_flushes_pending_and_handles_other_stages(isolated_artifacts):
    run = store.create_run("classifier", {"model": "m"})
    clock = FakeClock()
    writer = store.ProgressWriter(run, min_interval=10, clock=clock)
    writer({"stage": "prepare", "done": 0, "total": 10})
    clock.now += 1
    writer({"stage": "prepare", "done": 5, "total": 10, "message": "decoding"})
    assert run.raw_status()["done"] == 0
    writer.flush()
    status = run.raw_status()
    assert status["done"] == 5 and status["message"] == "decoding" and status["stage"] == "prepare"
    assert status["eta_seconds"] == pytest.approx(1.0)


def test_progress_writer_eta_after_a_prepare_stage(isolated_artifacts):
    # A finished "prepare" stage (fraction 1.0 on its own scale) must not hide the training ETA.
    run = store.create_run("classifier", {"model": "m"})
    clock = FakeClock()
    writer = store.ProgressWriter(run, min_interval=0, clock=clock)
    writer({"stage": "prepare", "done": 0, "total": 2})
    clock.now += 1
    writer({"stage": "prepare", "done": 2, "total": 2})
    writer({"stage": "epoch", "done": 0, "total": 2})
    clock.now += 2
    writer({"stage": "batch", "done": 5, "total": 10})
    assert run.raw_status()["eta_seconds"] == pytest.approx(6.0)
    clock.now += 2
    writer({"stage": "epoch", "done": 1, "total": 2})
    assert run.raw_status()["eta_seconds"] == pytest.approx(4.0)


# ---------------------------------------------------------------------------------------------------------
# Heartbeat and stalls.


def test_a_live_job_without_a_heartbeat_for_its_limit_reads_stalled(isolated_artifacts, monkeypatch):
    from datetime import datetime, timedelta, timezone

    monkeypatch.delenv("GENRE_STALL_SECONDS", raising=False)
    run = store.create_run("selftest", {"epochs": 1})
    beat = datetime.now(timezone.utc)
    run.update_status(state="running", pid=os.getpid(), pid_start=heartbeat.process_start_time(os.getpid()),
                      heartbeat=beat.isoformat(), stall_seconds=30, message="epoch 2/5, batch 7/9")
    assert run.status()["state"] == "running"
    later = store.effective_status(run.raw_status(), now=beat + timedelta(seconds=31))
    assert later["state"] == "stalled" and later["recorded_state"] == "running"
    assert later["message"] == "no progress for 31 s (limit 30 s); last: epoch 2/5, batch 7/9"
    assert later["last_message"] == "epoch 2/5, batch 7/9"
    # Without a recorded limit the observer's setting applies; a dead process is interrupted, never stalled.
    status = {**run.raw_status(), "stall_seconds": None}
    monkeypatch.setenv("GENRE_STALL_SECONDS", "100")
    assert store.effective_status(status, now=beat + timedelta(seconds=31))["state"] == "running"
    dead = {**status, "pid": 2 ** 22 + 12345}
    assert store.effective_status(dead, now=beat + timedelta(seconds=999))["state"] == "interrupted"


def test_stall_seconds_defaults_per_kind_and_rejects_bad_values(monkeypatch):
    monkeypatch.delenv("GENRE_STALL_SECONDS", raising=False)
    assert heartbeat.stall_seconds("classifier") == 600 and heartbeat.stall_seconds("gan") == 900
    monkeypatch.setenv("GENRE_STALL_SECONDS", "3")
    assert heartbeat.stall_seconds("gan") == 3
    for bad in ("soon", "0", "-5"):
        monkeypatch.setenv("GENRE_STALL_SECONDS", bad)
        with pytest.raises(ValueError, match="GENRE_STALL_SECONDS"):
            heartbeat.stall_seconds()


def test_progress_writes_and_beats_stamp_the_heartbeat(isolated_artifacts):
    run = store.create_run("selftest", {"epochs": 1})
    writer = store.ProgressWriter(run, min_interval=0.0)
    writer({"stage": "features", "done": 1, "total": 4})
    first = run.raw_status()["heartbeat"]
    heartbeat.attach_heartbeat(run, limit=1.0)
    try:
        time.sleep(0.25)
        heartbeat.beat()
        assert run.raw_status()["heartbeat"] > first
        assert heartbeat.seconds_since_beat() < 1.0
    finally:
        heartbeat.attach_heartbeat(None)
