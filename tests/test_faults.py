"""Fault injection (reliability item 3): killed jobs, full disks, concurrent launches, damaged run folders,
crashes inside an atomic write, and hostile run ids. Each test fails if the matching handling is removed."""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from genre_core.runs import jobs, store
from genre_core.util import fileio, paths
from conftest import wait_for


pytestmark = pytest.mark.usefixtures("stop_leftover_jobs")


def read_csv_rows(path) -> list[dict]:
    """Parse a CSV strictly: every row must have exactly the header's number of cells."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = [row for row in reader]
    assert all(len(row) == len(header) for row in rows), f"ragged CSV {path}"
    return [dict(zip(header, row)) for row in rows]


def test_sigkill_mid_epoch_leaves_run_interrupted_consistent_and_resumable(isolated_artifacts):
    run = store.create_run("selftest", {"epochs": 6, "step_seconds": 0.2, "batches": 4})
    pid = jobs.launch(run)
    # Kill the job inside epoch 3, after two epochs completed and at least one batch of the third ran.
    wait_for(lambda: run.raw_status().get("epoch") == 2 and (run.raw_status().get("batch") or 0) >= 1)
    os.kill(pid, signal.SIGKILL)

    status = wait_for(lambda: (lambda s: s if s["state"] == "interrupted" else None)(run.status()))
    assert status["recorded_state"] == "running"
    assert "stopped without finishing" in status["message"]
    assert [row["state"] for row in store.list_runs(kind="selftest")] == ["interrupted"]
    assert jobs.active_jobs() == []

    # Every file the job wrote is complete and parseable.
    json.loads((run.path / "config.json").read_text())
    json.loads((run.path / "status.json").read_text())
    checkpoint_epoch = json.loads((run.checkpoint_dir / "selftest.json").read_text())["epoch"]
    history_epochs = [int(row["epoch"]) for row in read_csv_rows(run.path / "history.csv")]
    assert history_epochs == list(range(1, len(history_epochs) + 1))
    assert checkpoint_epoch >= 2 and checkpoint_epoch in (history_epochs[-1], history_epochs[-1] - 1)

    # Resume continues after the last checkpointed epoch instead of starting over.
    jobs.resume(run)
    final = jobs.wait(run, timeout=30)
    assert final["state"] == "finished", run.log_path.read_text()
    assert run.history()["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    log = run.log_path.read_text()
    assert f"resuming from epoch {checkpoint_epoch}" in log
    assert log.count("epoch 1/6 done") == 1


def test_full_disk_fails_the_job_clearly_and_keeps_the_last_good_file(isolated_artifacts, monkeypatch):
    run = store.create_run("selftest", {"epochs": 3, "step_seconds": 0.01, "batches": 1})
    real_write = fileio._write_file
    history_writes = []

    def full_disk_on_second_history_write(handle, data, path):
        """Let the first history write through; the second writes half its bytes, then the disk is full."""
        if path.name == "history.csv":
            history_writes.append(path)
            if len(history_writes) >= 2:
                handle.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(handle, data, path)

    monkeypatch.setattr(fileio, "_write_file", full_disk_on_second_history_write)
    assert jobs.run_job(run, poll=0.01) == "failed"

    status = run.raw_status()
    assert status["state"] == "failed"
    assert "No space left on device while writing" in status["error"]
    assert status["error"].endswith("history.csv")
    # The previous history (epoch 1) is intact and no half-written temporary file is left behind.
    assert [row["epoch"] for row in read_csv_rows(run.path / "history.csv")] == ["1"]
    assert list(run.path.glob(".*.tmp")) == []


def test_two_launches_at_once_are_queued_and_never_overlap(isolated_artifacts):
    first = store.create_run("selftest", {"epochs": 3, "step_seconds": 0.2, "batches": 2})
    second = store.create_run("selftest", {"epochs": 1, "step_seconds": 0.1, "batches": 1})
    jobs.launch(first)
    jobs.launch(second)
    wait_for(lambda: first.status()["state"] == "running")
    # While the first runs, the second waits in the queue.
    assert second.status()["state"] == "queued"
    observed = set()
    while first.status()["state"] == "running":
        observed.add(second.status()["state"])
        time.sleep(0.05)
    assert observed == {"queued"}
    assert jobs.wait(second, timeout=30)["state"] == "finished"
    assert first.status()["state"] == "finished"
    assert second.raw_status()["started_at"] >= first.raw_status()["finished_at"]


def test_launching_the_same_run_twice_is_refused(isolated_artifacts):
    run = store.create_run("selftest", {"epochs": 2, "step_seconds": 0.2, "batches": 2})
    results, barrier = [], threading.Barrier(2)

    def try_launch():
        """Launch the run, recording the pid or the refusal."""
        barrier.wait()
        try:
            results.append(jobs.launch(run))
        except (jobs.JobLockedError, ValueError) as exc:
            results.append(exc)

    threads = [threading.Thread(target=try_launch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pids = [result for result in results if isinstance(result, int)]
    assert len(pids) == 1, results
    assert jobs.wait(run, timeout=30)["state"] == "finished"
    # Exactly one job wrote the run: one launch line, one set of epochs.
    log = run.log_path.read_text()
    assert log.count("launching job") == 1 and log.count("epoch 2/2 done") == 1
    assert run.history()["epoch"].tolist() == [1, 2]
    # And a launch while it is live is refused with a clear reason.
    again = store.create_run("selftest", {"epochs": 20, "step_seconds": 0.2})
    jobs.launch(again)
    with pytest.raises(jobs.JobLockedError, match="already has a job process"):
        jobs.launch(again)
    with pytest.raises(jobs.JobLockedError):
        jobs.resume(again)
    jobs.cancel(again)
    assert jobs.wait(again, timeout=10)["state"] == "cancelled"


def test_damaged_run_folders_are_listed_and_the_others_listed_normally(isolated_artifacts):
    good_old = store.create_run("classifier", {"model": "a", "created": "2026-01-01T00:00:00.000+00:00"})
    good_new = store.create_run("classifier", {"model": "b", "created": "2026-03-01T00:00:00.000+00:00"})
    good_new.write_metrics({"test": {"accuracy": 0.9, "macro_f1": 0.8}})
    corrupt_status = store.create_run("classifier", {"model": "c"}, run_id="corrupt-status")
    (corrupt_status.path / "status.json").write_text('{"state": "runn')
    missing_config = store.create_run("classifier", {"model": "d"}, run_id="missing-config")
    (missing_config.path / "config.json").unlink()
    binary_status = store.create_run("classifier", {"model": "e"}, run_id="binary-status")
    (binary_status.path / "status.json").write_bytes(b"\xff\xfe\x00garbage")
    list_config = store.create_run("classifier", {"model": "f"}, run_id="list-config")
    (list_config.path / "config.json").write_text("[1, 2]")
    bad_metrics = store.create_run("classifier", {"model": "g"}, run_id="bad-metrics")
    (bad_metrics.path / "metrics.json").write_text("{")
    (paths.runs_dir() / "empty-folder").mkdir()
    (paths.runs_dir() / "stray-file.txt").write_text("not a run")

    rows = {row["id"]: row for row in store.list_runs()}
    assert set(rows) == {good_old.id, good_new.id, "corrupt-status", "missing-config", "binary-status",
                         "list-config", "bad-metrics", "empty-folder"}
    assert rows[good_new.id]["damaged"] is None and rows[good_new.id]["test_accuracy"] == 0.9
    assert rows[good_old.id]["damaged"] is None and rows[good_old.id]["state"] == "queued"
    assert "status.json is corrupt" in rows["corrupt-status"]["damaged"]
    assert rows["corrupt-status"]["state"] == "damaged" and rows["corrupt-status"]["model"] == "c"
    assert rows["missing-config"]["damaged"] == "config.json is missing"
    assert "status.json is corrupt" in rows["binary-status"]["damaged"]
    assert rows["list-config"]["damaged"] == "config.json does not hold a JSON object"
    assert "metrics.json is corrupt" in rows["bad-metrics"]["damaged"]
    assert "config.json is missing" in rows["empty-folder"]["damaged"]
    assert "status.json is missing" in rows["empty-folder"]["damaged"]
    # Opening a damaged run gives a clear error naming the file, not a crash.
    with pytest.raises(ValueError, match="corrupt-status.*status.json|status.json.*corrupt"):
        store.open_run("corrupt-status").status()
    # A damaged run can still be cancelled (so the app can clear it from the queue).
    assert jobs.cancel("corrupt-status") == "cancelled"


def test_crash_between_temp_write_and_rename_keeps_the_previous_file(isolated_artifacts):
    run = store.create_run("selftest", {"epochs": 1, "step_seconds": 0.01, "batches": 1})
    run.write_metrics({"test": {"accuracy": 0.5}})
    crash = textwrap.dedent(f"""
        import os
        from genre_core.util import fileio
        os.replace = lambda source, target: os._exit(9)  # the process dies after the temp file is written
        fileio.atomic_write_json({str(run.path / 'metrics.json')!r}, {{"test": {{"accuracy": 0.99}}}})
    """)
    result = subprocess.run([sys.executable, "-c", crash], cwd=paths.PROJECT_DIR, timeout=30)
    assert result.returncode == 9
    assert run.metrics() == {"test": {"accuracy": 0.5}}
    leftovers = list(run.path.glob(".metrics.json.*.tmp"))
    assert len(leftovers) == 1 and json.loads(leftovers[0].read_text()) == {"test": {"accuracy": 0.99}}
    # Listing ignores the leftover; the next job on the run removes it once it is stale.
    assert [row["id"] for row in store.list_runs(kind="selftest")] == [run.id]
    old = time.time() - 3600
    os.utime(leftovers[0], (old, old))
    assert jobs.run_job(run, poll=0.01) == "finished"
    assert list(run.path.glob(".*.tmp")) == []


def test_interrupt_inside_an_atomic_write_cleans_up_and_keeps_the_previous_file(isolated_artifacts, monkeypatch):
    run = store.create_run("classifier", {"model": "m"})
    run.append_history({"epoch": 1, "loss": 0.5})
    before = (run.path / "history.csv").read_bytes()

    def interrupted_write(handle, data, path):
        """Write part of the data, then stop as if the user pressed Ctrl-C."""
        handle.write(data[:5])
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio, "_write_file", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        run.append_history({"epoch": 2, "loss": 0.25})
    assert (run.path / "history.csv").read_bytes() == before
    assert list(run.path.glob(".*.tmp")) == []


def test_hostile_run_ids_and_file_names_cannot_escape(isolated_artifacts, tmp_path):
    run = store.create_run("classifier", {"model": "../../../tmp/evil"}, run_id="../../etc")
    assert run.path == paths.runs_dir() / "etc"
    generated = store.create_run("classifier", {"model": "../../../tmp/evil"})
    assert generated.path.parent == paths.runs_dir()
    for hostile in ("../../etc", "..", "a/../../b"):
        with pytest.raises((ValueError, FileNotFoundError)):
            store.open_run(hostile)
    for hostile_name in ("../../outside.json", "/etc/passwd", "checkpoint/../../x"):
        with pytest.raises(ValueError):
            run.file(hostile_name)
    # A path that is not a run folder is refused even when it exists.
    with pytest.raises(ValueError, match="not a run folder"):
        store.open_run(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError)):
        jobs.cancel("../../etc")
    assert not (tmp_path / "cancel").exists()


def test_job_rewrites_a_missing_status_file(isolated_artifacts):
    run = store.create_run("selftest", {"epochs": 1, "step_seconds": 0.01, "batches": 1})
    (run.path / "status.json").unlink()
    assert store.list_runs(kind="selftest")[0]["damaged"] == "status.json is missing"
    assert jobs.run_job(run, poll=0.01) == "finished"
    assert store.list_runs(kind="selftest")[0]["damaged"] is None
    assert run.status()["state"] == "finished"


def test_atomic_writes_leave_files_readable_and_keep_their_mode(tmp_path):
    target = tmp_path / "status.json"
    fileio.atomic_write_json(target, {"state": "queued"})
    assert target.stat().st_mode & 0o777 == 0o644
    os.chmod(target, 0o664)
    fileio.atomic_write_json(target, {"state": "running"})
    assert target.stat().st_mode & 0o777 == 0o664
    assert fileio.read_json(target) == {"state": "running"}
