"""Background jobs with the built-in selftest executor (no TensorFlow): launch, queue, cancel, fail, CLI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from genre_core import cli
from genre_core.runs import heartbeat, jobs, store
from genre_core.util import paths
from conftest import wait_for


pytestmark = pytest.mark.usefixtures("stop_leftover_jobs")


def selftest_run(epochs: int = 2, step_seconds: float = 0.2, **extra) -> store.Run:
    """Create a selftest run with `epochs` epochs of `step_seconds` each."""
    return store.create_run("selftest", {"epochs": epochs, "step_seconds": step_seconds, "batches": 2, **extra})


def test_launched_selftest_finishes_with_history_metrics_and_log(isolated_artifacts):
    run = selftest_run(epochs=3, step_seconds=0.1)
    pid = jobs.launch(run)
    assert run.raw_status()["pid"] == pid
    status = jobs.wait(run, timeout=30)
    assert status["state"] == "finished", run.log_path.read_text()
    assert status["epoch"] == 3 and status["epochs"] == 3 and status["error"] is None
    assert run.history()["epoch"].tolist() == [1, 2, 3]
    assert run.metrics()["test"]["accuracy"] == pytest.approx(1 - 0.5 / 3, abs=1e-6)
    log = run.log_path.read_text()
    assert "launching job" in log and "epoch 3/3 done" in log and "final state: finished" in log
    assert json.loads((run.checkpoint_dir / "selftest.json").read_text()) == {"epoch": 3}
    assert jobs.active_jobs() == []


def test_failing_executor_marks_the_run_failed_with_its_message(isolated_artifacts):
    run = selftest_run(epochs=3, step_seconds=0.05, fail_at=2)
    jobs.launch(run)
    status = jobs.wait(run, timeout=30)
    assert status["state"] == "failed"
    assert status["error"] == "selftest failure injected at epoch 2"
    assert run.history()["epoch"].tolist() == [1]
    log = run.log_path.read_text()
    assert "Traceback" in log and "RuntimeError: selftest failure injected at epoch 2" in log


def test_cancel_running_job(isolated_artifacts):
    run = selftest_run(epochs=50, step_seconds=0.2)
    jobs.launch(run)
    wait_for(lambda: run.status()["state"] == "running")
    assert jobs.cancel(run) == "running"
    status = jobs.wait(run, timeout=10)
    assert status["state"] == "cancelled"
    assert len(run.history()) < 50


def test_cancel_queued_job_while_another_runs(isolated_artifacts):
    first = selftest_run(epochs=50, step_seconds=0.2)
    second = selftest_run(epochs=1, step_seconds=0.05)
    jobs.launch(first)
    wait_for(lambda: first.status()["state"] == "running")
    jobs.launch(second)
    wait_for(lambda: second.raw_status().get("message", "").startswith("waiting for a free job slot ("))
    assert [row["id"] for row in jobs.queue()] == [first.id, second.id]
    assert [row["position"] for row in jobs.queue()] == [0, 1]
    jobs.cancel(second)
    status = jobs.wait(second, timeout=10)
    assert status["state"] == "cancelled" and status["message"] == "cancelled while queued"
    assert second.history().empty
    assert first.status()["state"] == "running"
    jobs.cancel(first)
    assert jobs.wait(first, timeout=10)["state"] == "cancelled"


def test_cancel_without_a_live_process_marks_cancelled_at_once(isolated_artifacts):
    never_launched = selftest_run()
    assert jobs.cancel(never_launched) == "cancelled"
    assert never_launched.status()["state"] == "cancelled"
    finished = selftest_run()
    finished.update_status(state="finished")
    assert jobs.cancel(finished) == "finished"
    assert not finished.cancel_requested()


def test_launch_refuses_a_run_that_already_ran(isolated_artifacts):
    run = selftest_run()
    run.update_status(state="failed")
    with pytest.raises(ValueError, match="use resume"):
        jobs.launch(run)
    run.update_status(state="finished")
    with pytest.raises(ValueError, match="already finished"):
        jobs.resume(run)


def test_resume_after_failure_continues_and_finishes(isolated_artifacts):
    run = selftest_run(epochs=3, step_seconds=0.05, fail_at=3)
    jobs.launch(run)
    assert jobs.wait(run, timeout=30)["state"] == "failed"
    config = run.config()
    config["fail_at"] = None
    run.write_config(config)
    jobs.resume(run)
    status = jobs.wait(run, timeout=30)
    assert status["state"] == "finished" and status["error"] is None
    assert run.config()["resume"] is True
    assert run.history()["epoch"].tolist() == [1, 2, 3]
    assert "resuming from epoch 2" in run.log_path.read_text()


def test_sigterm_marks_the_run_interrupted(isolated_artifacts):
    run = selftest_run(epochs=50, step_seconds=0.2)
    pid = jobs.launch(run)
    wait_for(lambda: run.status()["state"] == "running")
    os.kill(pid, signal.SIGTERM)
    status = jobs.wait(run, timeout=10)
    assert status["state"] == "interrupted"
    assert run.raw_status()["state"] == "interrupted"
    assert "SIGTERM" in status["message"]


def test_two_slots_run_two_jobs_at_once(isolated_artifacts, monkeypatch):
    monkeypatch.setenv("GENRE_MAX_JOBS", "2")
    first, second = selftest_run(epochs=50), selftest_run(epochs=50)
    jobs.launch(first)
    jobs.launch(second)
    wait_for(lambda: first.status()["state"] == second.status()["state"] == "running")
    assert {row["state"] for row in jobs.active_jobs()} == {"running"}
    for run in (first, second):
        jobs.cancel(run)
    for run in (first, second):
        assert jobs.wait(run, timeout=10)["state"] == "cancelled"


def test_max_jobs_rejects_bad_values(monkeypatch):
    monkeypatch.setenv("GENRE_MAX_JOBS", "many")
    with pytest.raises(ValueError, match="GENRE_MAX_JOBS"):
        jobs.max_jobs()
    monkeypatch.setenv("GENRE_MAX_JOBS", "0")
    with pytest.raises(ValueError, match="at least 1"):
        jobs.max_jobs()
    monkeypatch.setenv("GENRE_MAX_JOBS", "3")
    assert [path.name for path in jobs.slot_paths()] == ["jobs.lock", "jobs-1.lock", "jobs-2.lock"]


def test_job_in_process_unknown_kind_fails_cleanly(isolated_artifacts):
    run = selftest_run()
    config = run.config()
    config["kind"] = "sculpture"
    run.write_config(config)
    assert jobs.run_job(run, poll=0.05) == "failed"
    assert "unknown kind 'sculpture'" in run.raw_status()["error"]


# ---------------------------------------------------------------------------------------------------------
# CLI. Only this area's command module is registered, so these tests do not depend on other commands.


@pytest.fixture()
def runs_cli(monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", (cli.runs,))
    return cli.main


def test_cli_runs_lists_table_and_json(isolated_artifacts, runs_cli, capsys):
    run = selftest_run()
    run.write_metrics({"test": {"accuracy": 0.5, "macro_f1": 0.25}})
    broken = paths.artifacts_root() / "job_runs" / "broken"
    broken.mkdir()
    assert runs_cli(["runs", "--kind", "selftest"]) == 0
    table = capsys.readouterr().out
    assert "test acc" in table and run.id in table and "0.500" in table and "0.250" in table
    assert "damaged: config.json is missing" in table
    assert runs_cli(["runs", "--kind", "all", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {row["id"] for row in rows} == {run.id, "broken"}
    assert runs_cli(["runs", "--kind", "gan"]) == 0
    assert "no gan runs yet" in capsys.readouterr().out


def test_cli_cancel_resume_and_errors(isolated_artifacts, runs_cli, capsys):
    run = selftest_run(epochs=1, step_seconds=0.05)
    assert runs_cli(["cancel", run.id]) == 0
    assert "cancelled" in capsys.readouterr().out
    assert runs_cli(["resume", run.id]) == 0
    assert "resumed in the background" in capsys.readouterr().out
    assert jobs.wait(run, timeout=30)["state"] == "finished"
    assert runs_cli(["resume", run.id]) == 2
    assert "already finished" in capsys.readouterr().err
    assert runs_cli(["cancel", "no-such-run"]) == 2
    assert "no run with id 'no-such-run'" in capsys.readouterr().err
    assert runs_cli(["cancel", "../../etc"]) == 2


def test_job_command_refuses_a_held_run(isolated_artifacts):
    run = selftest_run(epochs=50, step_seconds=0.2)
    jobs.launch(run)
    wait_for(lambda: run.status()["state"] == "running")
    before = run.raw_status()
    second = subprocess.run([sys.executable, "-m", "genre_core.runs.jobs", str(run.path)],
                            capture_output=True, text=True, cwd=paths.PROJECT_DIR, timeout=30)
    assert second.returncode == 2
    assert "already has a job process" in second.stderr
    after = run.raw_status()
    assert after["pid"] == before["pid"] and after["state"] == "running"
    jobs.cancel(run)
    assert jobs.wait(run, timeout=10)["state"] == "cancelled"


def test_prepare_job_builds_the_image_cache(isolated_artifacts, tiny_dataset_dir):
    run = store.create_run("prepare", {"data": str(tiny_dataset_dir), "size": 32, "policy": "squash",
                                      "workers": 1, "name": "prepare"})
    assert run.path.parent == paths.artifacts_root() / "job_runs"
    jobs.launch(run)
    status = jobs.wait(run, timeout=90)
    assert status["state"] == "finished", run.log_path.read_text()
    cache_info = json.loads((store.Path(status["cache"]) / "cache.json").read_text())
    assert cache_info["complete"] is True and cache_info["rows"] == 30 and cache_info["size"] == [32, 32]
    assert status["stage"] == "prepare" and status["done"] == status["total"] == 30


def test_prepare_job_without_data_fails_with_a_clear_message(isolated_artifacts):
    run = store.create_run("prepare", {"size": 32})
    assert jobs.run_job(run, poll=0.01) == "failed"
    assert "needs \"data\"" in run.raw_status()["error"]


def test_relative_artifacts_root_reaches_the_child_as_absolute(tmp_path, monkeypatch):
    # The launcher runs in tmp_path with a relative GENRE_ARTIFACTS; the child runs in the project folder.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENRE_ARTIFACTS", "relative_artifacts")
    run = selftest_run(epochs=1, step_seconds=0.01)
    jobs.launch(run)
    assert jobs.wait(run, timeout=30)["state"] == "finished", run.log_path.read_text()
    assert (tmp_path / "relative_artifacts" / "jobs.lock").exists()
    assert not (paths.PROJECT_DIR / "relative_artifacts").exists()


def test_job_started_by_hand_refuses_a_finished_run(isolated_artifacts):
    run = selftest_run()
    run.update_status(state="finished")
    with pytest.raises(ValueError, match="already finished"):
        jobs.run_job(run)
    assert not jobs.is_locked(run)


def test_cli_job_command_runs_a_job_in_the_foreground(isolated_artifacts, runs_cli):
    run = selftest_run(epochs=2, step_seconds=0.01)
    previous_handler = signal.getsignal(signal.SIGTERM)
    assert runs_cli(["job", str(run.path)]) == 0
    assert signal.getsignal(signal.SIGTERM) == previous_handler
    assert run.status()["state"] == "finished" and run.history()["epoch"].tolist() == [1, 2]
    failing = selftest_run(epochs=2, step_seconds=0.01, fail_at=1)
    assert runs_cli(["job", str(failing.path)]) == 1
    cancelled = selftest_run(epochs=2, step_seconds=0.01)
    cancelled.request_cancel()
    assert runs_cli(["job", str(cancelled.path)]) == 3
    assert runs_cli(["job", str(run.path)]) == 2  # already finished


def test_queue_is_first_come_first_served(isolated_artifacts):
    first = selftest_run(epochs=2, step_seconds=0.2)
    jobs.launch(first)
    wait_for(lambda: first.status()["state"] == "running")
    waiting = [selftest_run(epochs=1, step_seconds=0.05) for _ in range(3)]
    for run in waiting:
        jobs.launch(run)
        time.sleep(0.02)  # Distinct queued_at stamps.
    wait_for(lambda: [row["id"] for row in jobs.queue()] == [first.id] + [run.id for run in waiting])
    for run in waiting:
        assert jobs.wait(run, timeout=30)["state"] == "finished"
    started = [run.raw_status()["started_at"] for run in [first, *waiting]]
    assert started == sorted(started)
    finished = [run.raw_status()["finished_at"] for run in [first, *waiting]]
    # One at a time: each job starts only after the previous one finished.
    assert all(finished[index] <= started[index + 1] for index in range(3))


# ---------------------------------------------------------------------------------------------------------
# Stalls, the queue limit and log rotation.


def wait_until_running_a_batch(run: store.Run) -> None:
    wait_for(lambda: run.status()["state"] == "running" and run.raw_status().get("batch"), timeout=30)


@contextlib.contextmanager
def stopped(pid: int, run: store.Run):
    """SIGSTOP the job process `pid`, wait until its run reads "stalled", yield; SIGCONT it afterwards."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield wait_for(lambda: (current := run.status())["state"] == "stalled" and current, timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def test_a_sigstopped_job_reads_stalled_and_the_next_queued_job_starts(isolated_artifacts, monkeypatch, runs_cli,
                                                                       capsys):
    monkeypatch.setenv("GENRE_STALL_SECONDS", "3")
    first = selftest_run(epochs=500, step_seconds=0.2)
    pid = jobs.launch(first)
    wait_until_running_a_batch(first)
    with stopped(pid, first) as status:
        assert status["recorded_state"] == "running" and status["stalled_seconds"] >= 3
        assert status["message"].startswith("no progress for ") and "(limit 3 s); last: epoch 1/500" in status["message"]
        assert [(row["id"], row["state"]) for row in jobs.active_jobs()] == [(first.id, "stalled")]
        assert runs_cli(["runs", "--kind", "selftest"]) == 0
        assert "stalled: no progress for" in capsys.readouterr().out
        # The next job is first in line and every slot is held by a stalled job: it ends that job and starts.
        second = selftest_run(epochs=1, step_seconds=0.05)
        jobs.launch(second)
        assert jobs.wait(second, timeout=60)["state"] == "finished", second.log_path.read_text()
        ended = first.status()
        assert ended["state"] == "failed" and ended["message"] == "stalled; stopped"
        assert ended["error"].startswith("stalled: no progress for") and second.id in ended["error"]
        assert "ending stalled job" in second.log_path.read_text()


def test_cancel_ends_a_stalled_job(isolated_artifacts, monkeypatch):
    monkeypatch.setenv("GENRE_STALL_SECONDS", "3")
    run = selftest_run(epochs=500, step_seconds=0.2)
    pid = jobs.launch(run)
    wait_until_running_a_batch(run)
    with stopped(pid, run):
        assert jobs.cancel(run) == "cancelled"
        jobs._reap()
        assert not heartbeat.pid_alive(pid)
        status = run.status()
        assert status["state"] == "cancelled" and status["message"].startswith("cancelled while stalled (no progress")


def test_terminate_escalates_to_sigkill_for_a_process_that_ignores_sigterm():
    ignoring = subprocess.Popen([sys.executable, "-c", "import signal, sys, time\n"
                                 "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n"
                                 "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert ignoring.stdout.readline().strip() == "ready"
        jobs._children[ignoring.pid] = ignoring
        assert jobs._terminate(ignoring.pid, heartbeat.process_start_time(ignoring.pid), grace=0.5)
        assert ignoring.wait(timeout=10) == -signal.SIGKILL
    finally:
        if ignoring.poll() is None:
            ignoring.kill()
            ignoring.wait()


def test_a_stalled_queued_job_drops_out_of_line(isolated_artifacts, monkeypatch):
    monkeypatch.setenv("GENRE_STALL_SECONDS", "3")
    first = selftest_run(epochs=500, step_seconds=0.2)
    jobs.launch(first)
    wait_until_running_a_batch(first)
    stopped_run, later = selftest_run(epochs=1, step_seconds=0.05), selftest_run(epochs=1, step_seconds=0.05)
    stopped_pid = jobs.launch(stopped_run)
    wait_for(lambda: stopped_run.raw_status().get("message", "").startswith("waiting for a free job slot ("))
    time.sleep(0.02)
    jobs.launch(later)
    with stopped(stopped_pid, stopped_run):
        wait_for(lambda: later.raw_status().get("message") == "waiting for a free job slot (after the running job)",
                 timeout=30)
        jobs.cancel(first)
        assert jobs.wait(later, timeout=60)["state"] == "finished"
        assert jobs.cancel(stopped_run) == "cancelled"


def test_an_eleventh_waiting_job_is_refused_with_max_queued_10(isolated_artifacts, monkeypatch):
    monkeypatch.setenv("GENRE_MAX_QUEUED", "10")
    first = selftest_run(epochs=500, step_seconds=0.2)
    jobs.launch(first)
    wait_for(lambda: first.status()["state"] == "running")
    waiting = [selftest_run(epochs=1, step_seconds=0.05) for _ in range(10)]
    for run in waiting:
        jobs.launch(run)
    assert len(jobs.waiting_jobs()) == 10
    eleventh = selftest_run(epochs=1, step_seconds=0.05)
    with pytest.raises(jobs.QueueFullError, match=r"^the queue is full: 10 jobs are already waiting \(limit 10"):
        jobs.launch(eleventh)
    status = eleventh.status()
    assert status["state"] == "cancelled" and status["pid"] is None
    assert status["message"].startswith("not started: the queue is full")
    assert len(jobs.waiting_jobs()) == 10
    for run in [first, *waiting]:
        jobs.cancel(run)
    for run in [first, *waiting]:
        assert jobs.wait(run, timeout=30)["state"] == "cancelled"


def test_queue_limit_applies_only_inside_its_block(isolated_artifacts, monkeypatch):
    monkeypatch.delenv("GENRE_MAX_QUEUED", raising=False)
    assert jobs.max_queued() is None
    first = selftest_run(epochs=500, step_seconds=0.2)
    jobs.launch(first)
    wait_for(lambda: first.status()["state"] == "running")
    queued = selftest_run(epochs=1, step_seconds=0.05)
    with jobs.queue_limit(1):
        jobs.launch(queued)
        with pytest.raises(jobs.QueueFullError):
            jobs.launch(selftest_run())
    assert jobs.max_queued() is None
    for run in (queued, first):
        jobs.cancel(run)
        assert jobs.wait(run, timeout=30)["state"] == "cancelled"


def test_a_job_log_is_rotated_and_keeps_the_tail_the_pages_show(isolated_artifacts, monkeypatch):
    monkeypatch.setenv("GENRE_LOG_MAX_BYTES", "40000")
    run = selftest_run(epochs=20, step_seconds=0.5, batches=20, chatter=150)
    jobs.launch(run)
    assert jobs.wait(run, timeout=90)["state"] == "finished", run.log_path.read_text()[-2000:]
    old_log = run.path / store.OLD_LOG_FILE
    assert old_log.exists()
    # Checked every 2 s, at about 7 kB/s here: never far over the cap.
    assert run.log_path.stat().st_size < 80000 and old_log.stat().st_size < 80000
    lines = run.log_path.read_text().splitlines()
    assert any("log rotated at" in line for line in lines)
    assert lines[-1].endswith("final state: finished")
    assert len(lines) >= 30  # The job panel shows the last 30 lines.


def test_a_multi_worker_job_that_stops_beating_fails_through_its_watchdog(isolated_artifacts, monkeypatch):
    # TF_CONFIG naming two workers arms the watchdog; a selftest batch that sleeps 600 s never beats.
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    monkeypatch.setenv("GENRE_STALL_SECONDS", "3")
    run = selftest_run(epochs=1, step_seconds=600.0, batches=1)
    jobs.launch(run)
    status = jobs.wait(run, timeout=60)
    assert status["state"] == "failed" and status["message"] == "failed: stalled"
    assert status["error"].startswith("no progress for ") and "in a 2-worker run: a peer worker probably stopped" \
        in status["error"]
    assert f"error: run {run.id}: no progress for" in run.log_path.read_text()


def test_one_line_errors_skip_tensorflow_s_traceback_block():
    message = ("Graph execution error:\n\nDetected at node CollectiveReduceV2 defined at (most recent call last):\n"
               '  File "/work/main/genre_core/train.py", line 368, in distributed_step\n'
               "Collective ops is aborted by: Error reported from /job:worker/task:1: The following tasks are "
               "unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have crashed.")
    assert jobs._one_line(RuntimeError(message)) == (
        "Graph execution error: Collective ops is aborted by: Error reported from /job:worker/task:1: The following "
        "tasks are unhealthy (stopped sending heartbeats): /job:worker/replica:0/task:1")
    assert jobs._one_line(ValueError("bad size: 0\nsecond line")) == "bad size: 0"


def test_one_table_of_kinds_drives_folders_stall_limits_and_dispatch(isolated_artifacts, monkeypatch):
    """Adding a kind is one row in genre_core.runs.kinds: its folder, stall limit, config check and executor
    are all read from there by jobs.start, the run store and the job runner."""
    from genre_core.runs import kinds

    assert set(kinds.KINDS) == {"classifier", "gan", "search", "prepare", "selftest"}
    for kind in kinds.KINDS.values():
        assert callable(kind.executor()), kind.name  # every executor named in the table imports
        if kind.new_run:
            assert callable(kinds.resolve(kind.new_run)), kind.name
    with pytest.raises(ValueError, match="unknown run kind 'nope'"):
        jobs.start("nope", {})

    checked = []

    def new_run(config):
        checked.append(config)
        if config.get("epochs", 1) < 1:
            raise ValueError("epochs must be at least 1")
        return {**config, "batches": 1}, ["a", "b"]

    monkeypatch.setitem(sys.modules, "tests_extra_kind", type(sys)("tests_extra_kind"))
    sys.modules["tests_extra_kind"].new_run = new_run
    monkeypatch.setitem(kinds.KINDS, "extra", kinds.Kind(
        "extra", "extra_runs", 7.0, "genre_core.runs.selftest:execute", "tests_extra_kind:new_run"))
    with pytest.raises(ValueError, match="epochs must be at least 1"):
        jobs.start("extra", {"epochs": 0})
    assert not (isolated_artifacts / "extra_runs").exists() or not list((isolated_artifacts / "extra_runs").iterdir())
    events = []
    run = jobs.start("extra", {"epochs": 2, "step_seconds": 0.01}, progress=events.append)
    assert run.path.parent == isolated_artifacts / "extra_runs" and run.kind == "extra"
    assert run.status()["state"] == "finished" and run.classes() == ["a", "b"]
    assert run.raw_status()["stall_seconds"] == 7.0
    assert [event["done"] for event in events if event["stage"] == "epoch"] == [0, 1, 2]
    assert [row["id"] for row in store.list_runs("extra")] == [run.id]


def test_run_lock_waits_for_a_dead_holder_and_refuses_a_live_one(isolated_artifacts, monkeypatch):
    import fcntl
    import threading

    run = store.create_run("selftest", {"epochs": 1})
    # A dying job: its pid reads dead while its last thread still holds the lock for a moment.
    holder = os.open(run.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(holder, fcntl.LOCK_EX)
    run.lock_path.write_text("999999999\n")
    threading.Timer(0.3, os.close, args=(holder,)).start()
    fd = jobs._acquire_run_lock(run)
    os.close(fd)
    # A live holder (this process) is refused at once, naming its pid.
    holder = os.open(run.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(holder, fcntl.LOCK_EX)
    run.lock_path.write_text(f"{os.getpid()}\n")
    monkeypatch.setattr(jobs, "DYING_HOLDER_WAIT_SECONDS", 30.0)
    started = time.monotonic()
    with pytest.raises(jobs.JobLockedError, match=f"pid {os.getpid()}"):
        jobs._acquire_run_lock(run)
    assert time.monotonic() - started < 5
    os.close(holder)
