"""Background jobs: launch a run in its own process, queue jobs, cancel, resume, and notice crashes.

- `launch(run)` starts `python -m genre_core job <run_dir>` in a new session, so the job survives the
  Streamlit process and page reloads; its stdout and stderr are appended to the run's `log.txt`.
- Two locks keep jobs apart. Each run has `<run>/.lock`, held with `fcntl.flock` by the job process for its
  whole life (the launcher takes it first and hands it to the child), so one run folder never has two
  writers. The queue is a set of global slot locks, `<artifacts>/jobs.lock` (plus `jobs-1.lock`, ... when
  GENRE_MAX_JOBS > 1): a job waits in state "queued" until it holds a slot, oldest request first.
- A job whose process dies without recording a final state (SIGKILL, power loss, out of memory) is reported
  as "interrupted" by `Run.status()`, because its recorded pid is no longer alive.
- `resume(run)` relaunches an interrupted, cancelled or failed run with `config["resume"] = True`; the
  executor picks up from `run.checkpoint_dir`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from genre_core import fileio, paths, runs
from genre_core.runs import ACTIVE_STATES, FINAL_STATES, Cancelled, Run

POLL_SECONDS = 0.2
STALE_TEMP_SECONDS = 60.0

# Child processes started by this process, kept so they can be reaped (no zombies in a long-lived app).
_children: dict[int, subprocess.Popen] = {}


class JobLockedError(RuntimeError):
    """The run already has a job process (its run lock is held)."""


class _Terminated(BaseException):
    """Raised inside the job process when it receives SIGTERM, so the run is marked interrupted."""


# ----------------------------------------------------------------------------------------------------------
# Locks.


def max_jobs() -> int:
    """Return how many jobs may run at once: $GENRE_MAX_JOBS (default 1)."""
    text = os.environ.get("GENRE_MAX_JOBS", "").strip()
    if not text:
        return 1
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"GENRE_MAX_JOBS={text!r} is not a whole number") from None
    if value < 1:
        raise ValueError(f"GENRE_MAX_JOBS={value} must be at least 1")
    return value


def slot_paths(count: int | None = None) -> list[Path]:
    """Return the global queue lock files: `jobs.lock`, then `jobs-1.lock`, ... for extra slots."""
    count = max_jobs() if count is None else count
    root = paths.artifacts_root()
    return [root / "jobs.lock"] + [root / f"jobs-{index}.lock" for index in range(1, count)]


def _try_flock(fd: int) -> bool:
    """Try to take an exclusive flock on `fd` without waiting; True on success."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _acquire_run_lock(run: Run) -> int:
    """Take the run's exclusive lock and return its file descriptor; JobLockedError if a job holds it."""
    fd = os.open(run.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    if not _try_flock(fd):
        os.close(fd)
        holder = _lock_holder(run)
        raise JobLockedError(
            f"run {run.id} already has a job process{f' (pid {holder})' if holder else ''}; "
            "a run folder never gets two jobs at once")
    return fd


def _lock_holder(run: Run) -> str | None:
    """Return the pid written into the run's lock file, if any."""
    try:
        return run.lock_path.read_text().strip() or None
    except OSError:
        return None


def _write_lock_pid(fd: int) -> None:
    """Record this process's pid in the lock file (for humans; the flock is what counts)."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass


def is_locked(run: Run) -> bool:
    """True if some process holds the run's lock right now (a short non-blocking probe)."""
    import fcntl

    try:
        fd = os.open(run.lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        if _try_flock(fd):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        return True
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------------------
# Launching, cancelling and resuming (called by the app and the CLI).


def _reap() -> None:
    """Collect exit codes of finished children so they do not linger as zombies."""
    for pid, process in list(_children.items()):
        if process.poll() is not None:
            _children.pop(pid, None)


def _spawn(run: Run, lock_fd: int) -> int:
    """Start the job process for `run`, handing it the run lock `lock_fd`; return its pid."""
    run.log_path.parent.mkdir(parents=True, exist_ok=True)
    # `python -m genre_core.jobs` is the same job runner as `python -m genre_core job`, without loading
    # every CLI command module, so a job starts fast and never depends on unrelated commands importing.
    command = [sys.executable, "-m", "genre_core.jobs", str(run.path), "--lock-fd", str(lock_fd)]
    # The child must use the same artifacts root (and so the same queue locks) even though it runs in the
    # project folder: pass the root as an absolute path, whatever the parent's working directory is.
    environment = dict(os.environ)
    environment["GENRE_ARTIFACTS"] = str(paths.artifacts_root().resolve())
    try:
        with open(run.log_path, "ab") as log:
            log.write(f"=== {runs.now_iso()} launching job for run {run.id} ===\n".encode())
            log.flush()
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=str(paths.PROJECT_DIR), env=environment, start_new_session=True,
                pass_fds=(lock_fd,), close_fds=True,
            )
    except OSError as exc:
        run.update_status(state="failed", error=f"could not start the job process: {exc}",
                          message="launch failed", finished_at=runs.now_iso())
        raise
    finally:
        # The child holds its own copy of the lock; ours is closed either way.
        os.close(lock_fd)
    _children[process.pid] = process
    run.update_status(pid=process.pid, pid_start=runs.process_start_time(process.pid))
    return process.pid


def launch(run: Run | str | os.PathLike) -> int:
    """Start the job for a freshly created (queued) run in the background and return its pid.

    Refused (JobLockedError) while another job process holds the run; refused (ValueError) for a run
    that already ran (use `resume`)."""
    run = runs.open_run(run)
    _reap()
    lock_fd = _acquire_run_lock(run)
    try:
        status = run.status()
        state = status.get("state")
        if state != "queued":
            raise ValueError(f"run {run.id} is {state}; only a new (queued) run can be launched — "
                             "use resume to continue it")
        run.config()  # A run without a readable config cannot be executed.
        run.update_status(state="queued", queued_at=runs.now_iso(), pid=None, pid_start=None, error=None,
                          message="waiting for a free job slot", finished_at=None)
    except BaseException:
        os.close(lock_fd)
        raise
    return _spawn(run, lock_fd)


def resume(run: Run | str | os.PathLike) -> int:
    """Relaunch an interrupted, cancelled or failed run with config["resume"] = True; return the pid."""
    run = runs.open_run(run)
    _reap()
    lock_fd = _acquire_run_lock(run)
    try:
        state = run.status().get("state")
        if state == "finished":
            raise ValueError(f"run {run.id} already finished; there is nothing to resume")
        if state == "queued" and run.raw_status().get("pid") is None:
            raise ValueError(f"run {run.id} has not started yet; launch it instead of resuming")
        config = run.config()
        config["resume"] = True
        run.write_config(config)
        run.clear_cancel()
        run.update_status(state="queued", queued_at=runs.now_iso(), pid=None, pid_start=None, error=None,
                          message=f"resuming after {state}", finished_at=None)
    except BaseException:
        os.close(lock_fd)
        raise
    return _spawn(run, lock_fd)


def cancel(run: Run | str | os.PathLike) -> str:
    """Ask a run to stop and return its state afterwards.

    A live job notices the request (within ~1 s while queued, every batch while running); a run whose
    process is gone, or that was never launched, is marked cancelled at once. Finished runs are left alone."""
    run = runs.open_run(run)
    _reap()
    try:
        status = run.status()
    except ValueError:
        status = {"state": "damaged"}
    state = status.get("state")
    if state in FINAL_STATES:
        return state
    run.request_cancel()
    never_launched = state == "queued" and status.get("pid") is None and not is_locked(run)
    if state in ("interrupted", "damaged") or never_launched:
        run.update_status(state="cancelled", message="cancelled", finished_at=runs.now_iso())
        return "cancelled"
    return state


def active_jobs() -> list[dict]:
    """Return listing rows of runs (every kind) that a live job is running or holding in the queue,
    running first, then queued in queue order."""
    _reap()
    rows = [row for row in runs.list_runs(kind=None)
            if row.get("state") in ACTIVE_STATES and row.get("pid") is not None and not row.get("damaged")]
    rows.sort(key=lambda row: (row["state"] != "running", str(row.get("queued_at") or ""), row["id"]))
    return rows


def queue() -> list[dict]:
    """Like `active_jobs()`, with "position": 0 for running jobs, 1, 2, ... for waiting ones."""
    rows = active_jobs()
    waiting = 0
    for row in rows:
        if row["state"] == "running":
            row["position"] = 0
        else:
            waiting += 1
            row["position"] = waiting
    return rows


def wait(run: Run | str | os.PathLike, timeout: float = 60.0, poll: float = 0.1) -> dict:
    """Block until the run reaches a final or interrupted state and return its status (TimeoutError otherwise)."""
    run = runs.open_run(run)
    deadline = time.monotonic() + timeout
    while True:
        _reap()
        status = run.status()
        if status.get("state") not in ACTIVE_STATES:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run.id} still {status.get('state')} after {timeout:.0f} s")
        time.sleep(poll)


# ----------------------------------------------------------------------------------------------------------
# The job process.


def _queue_position(run: Run) -> int:
    """Return how many live queued jobs asked before this one (0 = next in line)."""
    try:
        mine = run.raw_status()
    except ValueError:
        return 0
    my_key = (str(mine.get("queued_at") or ""), run.id)
    ahead = 0
    for root in runs.all_roots():
        try:
            folders = list(root.iterdir())
        except OSError:
            continue
        for folder in folders:
            if folder == run.path or not folder.is_dir():
                continue
            try:
                status = fileio.read_json(folder / runs.STATUS_FILE, default=None)
            except ValueError:
                continue
            if not isinstance(status, dict) or status.get("state") != "queued" or status.get("pid") is None:
                continue
            if (str(status.get("queued_at") or ""), folder.name) < my_key and runs.pid_alive(
                    status.get("pid"), status.get("pid_start")):
                ahead += 1
    return ahead


def _wait_for_slot(run: Run, poll: float) -> list[int] | None:
    """Wait in state "queued" until this job holds a global slot lock; None if cancelled while waiting."""
    slot_files = slot_paths()
    last_position = None
    while True:
        if run.cancel_requested():
            return None
        position = _queue_position(run)
        if position < len(slot_files):
            for slot_file in slot_files:
                fd = os.open(slot_file, os.O_RDWR | os.O_CREAT, 0o644)
                if _try_flock(fd):
                    return [fd]
                os.close(fd)
        if position != last_position:
            ahead = "the running job" if position == 0 else f"{position} queued job{'s' if position > 1 else ''}"
            run.update_status(message=f"waiting for a free job slot (after {ahead})")
            last_position = position
        time.sleep(poll)


def _remove_stale_temp_files(run: Run) -> None:
    """Delete temporary files left in the run folder by a writer that crashed before its rename."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    for folder in (run.path, run.path / runs.CHECKPOINT_DIR):
        for temp in folder.glob(".*.tmp"):
            try:
                if temp.stat().st_mtime < cutoff:
                    temp.unlink()
            except OSError:
                pass


def _one_line(exc: BaseException) -> str:
    """Return the first line of an exception's message, with its type when the message is empty."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _say(message: str) -> None:
    """Print a time-stamped line to the job log."""
    print(f"[{runs.now_iso()}] {message}", flush=True)


def run_job(run: Run | str | os.PathLike, lock_fd: int | None = None, poll: float = POLL_SECONDS,
            handle_signals: bool = False) -> str:
    """Run a job in this process: take the run lock, wait for a queue slot, execute, record the final state.

    Returns the final state. JobLockedError if another process already holds the run."""
    run = runs.open_run(run)
    if lock_fd is None:
        lock_fd = _acquire_run_lock(run)
        # Started by hand rather than by launch/resume: never silently redo a finished run.
        try:
            recorded = run.raw_status().get("state") if (run.path / runs.STATUS_FILE).exists() else None
        except ValueError:
            recorded = None
        if recorded == "finished":
            os.close(lock_fd)
            raise ValueError(f"run {run.id} already finished; create a new run to train again")
    else:
        _adopt_lock(run, lock_fd)
    _write_lock_pid(lock_fd)
    previous_handler = None
    if handle_signals:
        previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
    slot_fds: list[int] = []
    final: dict[str, Any] = {}
    try:
        try:
            status = run.raw_status()
        except ValueError:
            # A missing or corrupt status.json is rewritten from here on.
            status = {}
        run.update_status(state="queued", pid=os.getpid(), pid_start=runs.process_start_time(os.getpid()),
                          queued_at=status.get("queued_at") or runs.now_iso(), error=None,
                          message="waiting for a free job slot")
        _remove_stale_temp_files(run)
        _say(f"job {run.id} (pid {os.getpid()}) queued")
        slot_fds = _wait_for_slot(run, poll) or []
        if not slot_fds:
            _say("cancelled while queued")
            final = {"state": "cancelled", "message": "cancelled while queued"}
            return "cancelled"
        run.update_status(state="running", started_at=runs.now_iso(), message=f"starting the {run.kind} job")
        _say(f"running ({run.kind})")
        final = _execute(run)
        return final["state"]
    except _Terminated:
        _say("stopped by SIGTERM")
        final = {"state": "interrupted", "message": "stopped by SIGTERM; resume to continue"}
        return "interrupted"
    except KeyboardInterrupt:
        final = {"state": "interrupted", "message": "stopped by an interrupt; resume to continue"}
        raise
    finally:
        if final:
            try:
                run.update_status(finished_at=runs.now_iso(), **final)
                _say(f"final state: {final['state']}" + (f" ({final['error']})" if final.get("error") else ""))
            except OSError as exc:
                _say(f"could not record the final state {final['state']}: {exc}")
        for fd in slot_fds:
            os.close(fd)
        os.close(lock_fd)
        if handle_signals and previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def _execute(run: Run) -> dict:
    """Dispatch to the executor and turn its outcome into the final status fields."""
    try:
        dispatch(run)
    except Cancelled as exc:
        _say(f"cancelled: {_one_line(exc)}")
        return {"state": "cancelled", "message": "cancelled"}
    except (_Terminated, KeyboardInterrupt):
        raise
    except Exception as exc:
        # The traceback goes to log.txt; the status gets one readable line.
        traceback.print_exc()
        sys.stdout.flush()
        return {"state": "failed", "error": _one_line(exc), "message": "failed"}
    try:
        recorded = run.raw_status().get("state")
    except ValueError:
        recorded = None
    if recorded in FINAL_STATES:
        # The executor recorded its own final state; keep it.
        return {"state": recorded}
    if run.cancel_requested():
        return {"state": "cancelled", "message": "cancelled"}
    return {"state": "finished", "message": "finished", "eta_seconds": 0}


def _adopt_lock(run: Run, lock_fd: int) -> None:
    """Check that an inherited descriptor really is this run's lock, and hold it (not passed to children)."""
    try:
        same = os.path.samestat(os.fstat(lock_fd), os.stat(run.lock_path))
    except OSError as exc:
        raise ValueError(f"--lock-fd {lock_fd} is not an open file ({exc.strerror})") from None
    if not same:
        raise ValueError(f"--lock-fd {lock_fd} is not the lock file of run {run.id}")
    os.set_inheritable(lock_fd, False)
    if not _try_flock(lock_fd):
        raise JobLockedError(f"run {run.id} already has a job process")


def _raise_terminated(signum, frame) -> None:
    """SIGTERM handler: unwind the job so it can record "interrupted"."""
    raise _Terminated()


def dispatch(run: Run) -> None:
    """Run the executor for the run's kind (imported here, so importing jobs stays cheap)."""
    kind = run.config().get("kind")
    if kind == "classifier":
        from genre_core import train

        train.execute(run)
    elif kind == "gan":
        from genre_core import gan

        gan.execute(run)
    elif kind == "prepare":
        execute_prepare(run)
    elif kind == "selftest":
        execute_selftest(run)
    else:
        raise ValueError(f"run {run.id}: config.json has unknown kind {kind!r}")


# ----------------------------------------------------------------------------------------------------------
# Small built-in executors.


def execute_prepare(run: Run) -> None:
    """Build the preprocessed image cache for config["data"] at config["size"] with config["policy"]."""
    from genre_core import cache, images, sources

    config = run.config()
    if not config.get("data"):
        raise ValueError(f"run {run.id}: a prepare job needs \"data\" (a dataset path or \"demo\") in its config")
    size = images.parse_size(config.get("size", 224))
    policy = config.get("policy", "squash")
    dataset = sources.load_dataset(config["data"])
    writer = runs.ProgressWriter(run)

    def progress(event: dict) -> None:
        """Record progress and stop at the next chunk when a cancel was requested."""
        writer(event)
        run.check_cancel()

    kwargs = {}
    if config.get("workers") is not None:
        kwargs["workers"] = int(config["workers"])
    image_cache = cache.prepare_cache(dataset, size=size, policy=policy, progress=progress, **kwargs)
    writer.flush()
    cache_path = getattr(image_cache, "path", None) or getattr(image_cache, "folder", None)
    run.update_status(message=f"cache ready{f' at {cache_path}' if cache_path else ''}",
                      cache=str(cache_path) if cache_path else None)


def execute_selftest(run: Run) -> None:
    """A tiny job without TensorFlow: `epochs` epochs of `batches` sleeps totalling `step_seconds` each.

    Writes history rows, progress and a checkpoint per epoch, honours cancel every batch, resumes from its
    checkpoint, and raises at epoch `fail_at` when asked. Used by the job tests and the app's tests."""
    config = run.config()
    try:
        epochs = int(config.get("epochs", 3))
        step_seconds = float(config.get("step_seconds", 0.2))
        batches = int(config.get("batches", 4))
        fail_at = config.get("fail_at")
        fail_at = int(fail_at) if fail_at is not None else None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"run {run.id}: bad selftest config ({exc})") from None
    if epochs < 1 or batches < 1 or step_seconds < 0:
        raise ValueError(f"run {run.id}: selftest needs epochs >= 1, batches >= 1 and step_seconds >= 0")
    checkpoint = run.checkpoint_dir / "selftest.json"
    start_epoch = 0
    if config.get("resume"):
        saved = fileio.read_json(checkpoint, default=None)
        start_epoch = int(saved["epoch"]) if isinstance(saved, dict) and "epoch" in saved else 0
        # Rows written after the last checkpoint belong to an epoch that will run again.
        run.truncate_history(start_epoch)
        _say(f"resuming from epoch {start_epoch}")
    progress = runs.ProgressWriter(run)
    progress({"stage": "epoch", "done": start_epoch, "total": epochs})
    began = time.monotonic()
    for epoch in range(start_epoch + 1, epochs + 1):
        epoch_began = time.monotonic()
        for batch in range(1, batches + 1):
            run.check_cancel()
            time.sleep(step_seconds / batches)
            progress({"stage": "batch", "done": batch, "total": batches})
        if fail_at is not None and epoch == fail_at:
            raise RuntimeError(f"selftest failure injected at epoch {epoch}")
        run.append_history({"epoch": epoch, "loss": round(1.0 / epoch, 6), "accuracy": round(1.0 - 0.5 / epoch, 6),
                            "seconds": round(time.monotonic() - epoch_began, 3)})
        fileio.atomic_write_json(checkpoint, {"epoch": epoch})
        progress({"stage": "epoch", "done": epoch, "total": epochs})
        _say(f"epoch {epoch}/{epochs} done")
    run.check_cancel()
    accuracy = round(1.0 - 0.5 / epochs, 6)
    run.write_metrics({"test": {"accuracy": accuracy, "macro_f1": accuracy, "loss": round(1.0 / epochs, 6)},
                       "wall_seconds": round(time.monotonic() - began, 3)})


# ----------------------------------------------------------------------------------------------------------
# Entry point of the job process.


def main(argv: list[str] | None = None) -> int:
    """`python -m genre_core.jobs RUN_DIR [--lock-fd N]`: run one job; exit 0 finished, 1 failed or
    interrupted, 3 cancelled, 2 bad input or run already held by another job."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m genre_core.jobs", description="Run one background job.")
    parser.add_argument("run_dir", help="the run folder")
    parser.add_argument("--lock-fd", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        state = run_job(args.run_dir, lock_fd=args.lock_fd, handle_signals=True)
    except (JobLockedError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return exit_code(state)


def exit_code(state: str) -> int:
    """Map a final job state to the job process's exit code."""
    return {"finished": 0, "cancelled": 3}.get(state, 1)


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy, so there is one set of module globals.
    from genre_core.jobs import main as _main

    sys.exit(_main())
