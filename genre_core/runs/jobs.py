"""Background jobs: launch a run in its own process, queue jobs, cancel, resume, and notice crashes.

- `launch(run)` starts `python -m genre_core.runs.jobs <run_dir>` in a new session, so the job survives the
  Streamlit process and page reloads; its stdout and stderr are appended to the run's `log.txt`.
- Two locks keep jobs apart. Each run has `<run>/.lock`, held with `fcntl.flock` by the job process for its
  whole life (the launcher takes it first and hands it to the child), so one run folder never has two
  writers. The queue is a set of global slot locks, `<artifacts>/jobs.lock` (plus `jobs-1.lock`, ... when
  GENRE_MAX_JOBS > 1): a job waits in state "queued" until it holds a slot, oldest request first.
- A job whose process dies without recording a final state (SIGKILL, power loss, out of memory) is reported
  as "interrupted" by `Run.status()`, because its recorded pid is no longer alive.
- `resume(run)` relaunches an interrupted, cancelled or failed run with `config["resume"] = True`; the
  executor picks up from `run.checkpoint_dir`.
- Stalls. The job's working code path beats (`heartbeat.beat`, per batch, chunk or queue poll) into status.json;
  a live job with no beat for its stall limit reads "stalled". A stalled job keeps its slot lock while its
  process lives, so the job first in line ends it (SIGTERM and SIGCONT, then SIGKILL after a grace period),
  records it as failed with the reason, and takes the slot: the queue moves on. `cancel` ends a stalled job
  the same way. A multi-worker job also runs a watchdog that fails the process when no step completes
  within the limit (a dead peer leaves the others waiting in a collective op).
- Logs. A job whose stdout/stderr is its run's log.txt rotates it when it passes $GENRE_LOG_MAX_BYTES:
  log.txt moves to log.1.txt and a new log.txt starts with the old one's tail, so the pages' tail survives.
- Queue limit: inside `queue_limit(n)` (the app in shared mode), or with $GENRE_MAX_QUEUED set, `launch`
  refuses a job when n jobs already wait (QueueFullError) and marks the new run cancelled, never started.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

from genre_core.runs import heartbeat, kinds, store
from genre_core.runs.store import ACTIVE_STATES, Cancelled, FINAL_STATES, Run
from genre_core.util import cluster, fileio, paths

Progress = Callable[[dict], None]

POLL_SECONDS = 0.2
STALE_TEMP_SECONDS = 60.0
STALL_CHECK_SECONDS = 1.0
DEFAULT_STOP_GRACE_SECONDS = 10.0
DEFAULT_LOG_MAX_BYTES = 20_000_000
LOG_TAIL_BYTES = 64_000
LOG_CHECK_SECONDS = 2.0
# The waiting-job limit of the current launch (set by `queue_limit`, e.g. by the app in shared mode).
_QUEUE_LIMIT: contextvars.ContextVar[int | None] = contextvars.ContextVar("genre_queue_limit", default=None)

# Child processes started by this process, kept so they can be reaped (no zombies in a long-lived app).
_children: dict[int, subprocess.Popen] = {}


class JobLockedError(RuntimeError):
    """The run already has a job process (its run lock is held)."""


class QueueFullError(RuntimeError):
    """The queue already holds the allowed number of waiting jobs; the new job was not started."""


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


def stop_grace_seconds() -> float:
    """Seconds between SIGTERM and SIGKILL when a stalled job is ended: $GENRE_STOP_GRACE_SECONDS (default 10)."""
    return float(heartbeat.positive_env("GENRE_STOP_GRACE_SECONDS", DEFAULT_STOP_GRACE_SECONDS))


def log_max_bytes() -> int:
    """The size at which a job rotates its log.txt: $GENRE_LOG_MAX_BYTES (default 20 MB)."""
    return int(heartbeat.positive_env("GENRE_LOG_MAX_BYTES", DEFAULT_LOG_MAX_BYTES))


def max_queued() -> int | None:
    """The waiting-job limit in force: `queue_limit`'s value, else $GENRE_MAX_QUEUED, else None (no limit)."""
    limit = _QUEUE_LIMIT.get()
    if limit is not None:
        return limit
    value = heartbeat.positive_env("GENRE_MAX_QUEUED", None)
    return int(value) if value is not None else None


@contextlib.contextmanager
def queue_limit(limit: int | None) -> Iterator[None]:
    """Within this block, `launch` (also through `start`) refuses a job when `limit` jobs wait."""
    token = _QUEUE_LIMIT.set(int(limit) if limit is not None else None)
    try:
        yield
    finally:
        _QUEUE_LIMIT.reset(token)


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


DYING_HOLDER_WAIT_SECONDS = 10.0


def _acquire_run_lock(run: Run) -> int:
    """Take the run's exclusive lock and return its file descriptor; JobLockedError if a job holds it.

    A killed job's main thread is a zombie (so its run reads "interrupted") a moment before its last thread
    exits and the kernel closes its files and so its lock; while the pid in the lock file is dead like that,
    wait up to DYING_HOLDER_WAIT_SECONDS for the lock instead of refusing a resume."""
    fd = os.open(run.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + DYING_HOLDER_WAIT_SECONDS
    while not _try_flock(fd):
        holder = _lock_holder(run)
        if holder is not None and not heartbeat.pid_alive(holder) and time.monotonic() < deadline:
            time.sleep(0.05)
            continue
        os.close(fd)
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
    # `python -m genre_core.runs.jobs` is the same job runner as `python -m genre_core job`, without loading
    # every CLI command module, so a job starts fast and never depends on unrelated commands importing.
    command = [sys.executable, "-m", "genre_core.runs.jobs", str(run.path), "--lock-fd", str(lock_fd)]
    # The child must use the same artifacts root (and so the same queue locks) even though it runs in the
    # project folder: pass the root as an absolute path, whatever the parent's working directory is.
    environment = dict(os.environ)
    environment["GENRE_ARTIFACTS"] = str(paths.artifacts_root().resolve())
    try:
        with open(run.log_path, "ab") as log:
            log.write(f"=== {store.now_iso()} launching job for run {run.id} ===\n".encode())
            log.flush()
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=str(paths.PROJECT_DIR), env=environment, start_new_session=True,
                pass_fds=(lock_fd,), close_fds=True,
            )
    except OSError as exc:
        run.update_status(state="failed", error=f"could not start the job process: {exc}",
                          message="launch failed", finished_at=store.now_iso())
        raise
    finally:
        # The child holds its own copy of the lock; ours is closed either way.
        os.close(lock_fd)
    _children[process.pid] = process
    run.update_status(pid=process.pid, pid_start=heartbeat.process_start_time(process.pid))
    return process.pid


def waiting_jobs() -> list[dict]:
    """Listing rows of live jobs waiting for a slot (effective state "queued"), in queue order."""
    return [row for row in active_jobs() if row["state"] == "queued"]


@contextlib.contextmanager
def _launch_lock() -> Iterator[None]:
    """Serialise count-then-spawn between launchers, so a queue limit cannot be overrun by a race."""
    import fcntl

    fd = os.open(paths.artifacts_root() / "launch.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _check_queue_room(run: Run) -> None:
    """Refuse (QueueFullError) when the waiting-job limit is reached; the run is marked cancelled, never started."""
    limit = max_queued()
    if limit is None:
        return
    waiting = [row for row in waiting_jobs() if row["id"] != run.id]
    if len(waiting) >= limit:
        reason = (f"the queue is full: {len(waiting)} jobs are already waiting (limit {limit}, GENRE_MAX_QUEUED); "
                  "try again when one has started")
        run.update_status(state="cancelled", message=f"not started: {reason}", finished_at=store.now_iso())
        raise QueueFullError(reason)


def _start_fields(run: Run, message: str) -> dict:
    """Status fields of a (re)launched run: queued now, with a fresh heartbeat and the job's stall limit."""
    now = store.now_iso()
    return {"state": "queued", "queued_at": now, "heartbeat": now, "stall_seconds": heartbeat.stall_seconds(run.kind),
            "pid": None, "pid_start": None, "error": None, "message": message, "finished_at": None}


def start(kind: str, config, background: bool = False, progress: Progress | None = None) -> Run:
    """Create a run of `kind` (genre_core.runs.kinds) for `config` and run it: in a background job process
    (`background`), or here until it ends. The one way the CLI, the app and the tests start a run.

    The kind checks the config before any folder is made (ValueError names the problem). In the foreground
    `progress` gets the job's progress events, and log.txt gets every message except per-batch ones (a
    background job's log gets its stdout instead). Returns the Run."""
    spec = kinds.get(kind)
    values, classes = spec.new_run_config(config)
    values = {key: value for key, value in values.items() if key != "kind"}
    run = store.create_run(kind, values, classes=classes)
    if background:
        launch(run)
        return run

    def log_line(event: dict) -> None:
        if event.get("stage") not in ("batch", "features") and event.get("message"):
            with open(run.log_path, "a", encoding="utf-8") as handle:
                handle.write(f"[{store.now_iso()}] {event['message']}\n")

    def both(event: dict) -> None:
        log_line(event)
        if progress is not None:
            progress(event)

    run_job(run, progress=both)
    return run


def launch(run: Run | str | os.PathLike) -> int:
    """Start the job for a freshly created (queued) run in the background and return its pid.

    Refused (JobLockedError) while another job process holds the run; refused (ValueError) for a run
    that already ran (use `resume`); refused (QueueFullError) when a queue limit is in force and reached."""
    run = store.open_run(run)
    _reap()
    lock_fd = _acquire_run_lock(run)
    with contextlib.ExitStack() as stack:
        try:
            status = run.status()
            state = status.get("state")
            if state != "queued":
                raise ValueError(f"run {run.id} is {state}; only a new (queued) run can be launched — "
                                 "use resume to continue it")
            run.config()  # A run without a readable config cannot be executed.
            # Counting the waiting jobs and spawning this one happen under one lock.
            stack.enter_context(_launch_lock())
            _check_queue_room(run)
            run.update_status(**_start_fields(run, "waiting for a free job slot"))
        except BaseException:
            os.close(lock_fd)
            raise
        return _spawn(run, lock_fd)


def resume(run: Run | str | os.PathLike) -> int:
    """Relaunch an interrupted, cancelled or failed run with config["resume"] = True; return the pid."""
    run = store.open_run(run)
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
        run.update_status(**_start_fields(run, f"resuming after {state}"))
    except BaseException:
        os.close(lock_fd)
        raise
    return _spawn(run, lock_fd)


def cancel(run: Run | str | os.PathLike) -> str:
    """Ask a run to stop and return its state afterwards.

    A live job notices the request (within about 0.2 s while queued, every batch while running); a run whose
    process is gone, or that was never launched, is marked cancelled at once. Finished runs are left alone."""
    run = store.open_run(run)
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
        run.update_status(state="cancelled", message="cancelled", finished_at=store.now_iso())
        return "cancelled"
    if state == store.STALLED:
        # A stalled job never reaches its next cancel check: end its process.
        return stop_stalled(run, status, final_state="cancelled",
                            reason=f"cancelled while stalled ({status.get('message')})")
    return state


def _terminate(pid: int, pid_start: Any, grace: float) -> bool:
    """Send SIGTERM (and SIGCONT, so a stopped process acts on it), then SIGKILL after `grace` seconds if
    it still lives; True once the process is gone. A pid reused by another process is never signalled."""
    def alive() -> bool:
        _reap()
        return heartbeat.pid_alive(pid, pid_start)

    for number in (signal.SIGTERM, signal.SIGCONT):
        if not alive():
            return True
        try:
            os.kill(int(pid), number)
        except ProcessLookupError:
            return True
    for limit, kill in ((grace, True), (5.0, False)):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if not alive():
                return True
            time.sleep(0.05)
        if kill and alive():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                return True
    # Still there five seconds after SIGKILL: stuck in the kernel (an uninterruptible read on a dead mount).
    return not alive()


def stop_stalled(run: Run, status: dict, final_state: str, reason: str) -> str:
    """End the process of a stalled job (SIGTERM, SIGCONT, SIGKILL after the grace period) and record
    `final_state` with `reason`. Returns the state afterwards ("stalled" when the process would not die)."""
    pid, pid_start = status.get("pid"), status.get("pid_start")
    grace = stop_grace_seconds()
    _say(f"ending stalled job {run.id} (pid {pid}): {reason}")
    if not _terminate(pid, pid_start, grace):
        return store.STALLED
    fields: dict[str, Any] = {"state": final_state, "finished_at": store.now_iso()}
    if final_state == "failed":
        fields.update(error=reason, message="stalled; stopped")
    else:
        fields.update(message=reason)
    run.update_status(**fields)
    return final_state


def _end_stalled_slot_holders(waiting: Run) -> bool:
    """End running jobs that are stalled (each holds a slot lock); True if one was ended."""
    ended = False
    for row in store.list_runs(kind=None):
        if row.get("state") != store.STALLED or row["id"] == waiting.id:
            continue
        try:
            stalled = store.open_run(Path(row["path"]))
            status = stalled.status()
        except (OSError, ValueError):
            continue
        if status.get("state") != store.STALLED or status.get("recorded_state") != "running":
            continue
        reason = (f"stalled: {status.get('message')}; stopped so that the queued job {waiting.id} could start")
        if stop_stalled(stalled, status, final_state="failed", reason=reason) == "failed":
            ended = True
    return ended


def active_jobs() -> list[dict]:
    """Return listing rows of runs (every kind) that a live job is running or holding in the queue,
    running first, then queued in queue order."""
    _reap()
    rows = [row for row in store.list_runs(kind=None)
            if row.get("state") in ACTIVE_STATES and row.get("pid") is not None and not row.get("damaged")]
    # Running (or stalled while running) jobs hold slots: they come first, then the waiting ones.
    rows.sort(key=lambda row: (row["state"] == "queued", str(row.get("queued_at") or ""), row["id"]))
    return rows


def queue() -> list[dict]:
    """Like `active_jobs()`, with "position": 0 for running (or stalled) jobs, 1, 2, ... for waiting ones."""
    rows = active_jobs()
    waiting = 0
    for row in rows:
        if row["state"] != "queued":
            row["position"] = 0
        else:
            waiting += 1
            row["position"] = waiting
    return rows


def wait(run: Run | str | os.PathLike, timeout: float = 60.0, poll: float = 0.1) -> dict:
    """Block until the run reaches a final or interrupted state and return its status (TimeoutError otherwise)."""
    run = store.open_run(run)
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
    for root in store.all_roots():
        try:
            folders = list(root.iterdir())
        except OSError:
            continue
        for folder in folders:
            if folder == run.path or not folder.is_dir():
                continue
            try:
                status = fileio.read_json(folder / store.STATUS_FILE, default=None)
            except ValueError:
                continue
            if not isinstance(status, dict) or status.get("state") != "queued" or status.get("pid") is None:
                continue
            # A queued job whose process died, or that stopped beating (stalled), holds nobody up.
            if (str(status.get("queued_at") or ""), folder.name) < my_key and \
                    store.effective_status(status).get("state") == "queued":
                ahead += 1
    return ahead


def _wait_for_slot(run: Run, poll: float) -> list[int] | None:
    """Wait in state "queued" until this job holds a global slot lock; None if cancelled while waiting.

    The waiting loop beats, so a queued job that stops (SIGSTOP) reads "stalled" and drops out of line.
    When this job is next in line and every slot is held, stalled slot holders are ended."""
    slot_files = slot_paths()
    last_position = None
    last_stall_check = time.monotonic()
    while True:
        heartbeat.beat()
        if run.cancel_requested():
            return None
        position = _queue_position(run)
        if position < len(slot_files):
            for slot_file in slot_files:
                fd = os.open(slot_file, os.O_RDWR | os.O_CREAT, 0o644)
                if _try_flock(fd):
                    return [fd]
                os.close(fd)
            if time.monotonic() - last_stall_check >= STALL_CHECK_SECONDS:
                last_stall_check = time.monotonic()
                if _end_stalled_slot_holders(run):
                    continue
        if position != last_position:
            ahead = "the running job" if position == 0 else f"{position} queued job{'s' if position > 1 else ''}"
            run.update_status(message=f"waiting for a free job slot (after {ahead})")
            last_position = position
        time.sleep(poll)


def _remove_stale_temp_files(run: Run) -> None:
    """Delete temporary files left in the run folder by a writer that crashed before its rename."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    for folder in (run.path, run.path / store.CHECKPOINT_DIR):
        for temp in folder.glob(".*.tmp"):
            try:
                if temp.stat().st_mtime < cutoff:
                    temp.unlink()
            except OSError:
                pass


def _one_line(exc: BaseException) -> str:
    """Return the first line of an exception's message, with its type when the message is empty.

    A heading such as TensorFlow's "Graph execution error:" gets the first line of substance after it (the
    traceback TensorFlow puts between them is skipped), e.g. which peer of a multi-worker run stopped."""
    lines = [line.strip() for line in str(exc).strip().splitlines()]
    if not lines:
        return type(exc).__name__
    text = lines[0]
    rest = [line for line in lines[1:] if line and not line.startswith(("Detected at", "File ", "[["))
            and not line.endswith(("<module>", "_run_module_as_main", "_run_code"))]
    for line in rest[:2]:
        if not text.endswith(":"):
            break
        text = f"{text} {line}"
    return text


def _say(message: str) -> None:
    """Print a time-stamped line to the job log."""
    print(f"[{store.now_iso()}] {message}", flush=True)


def run_job(run: Run | str | os.PathLike, lock_fd: int | None = None, poll: float = POLL_SECONDS,
            handle_signals: bool = False, progress: Progress | None = None) -> str:
    """Run a job in this process: take the run lock, wait for a queue slot, execute, record the final state.

    `progress` also gets the executor's progress events (a terminal progress bar, a test's list). Returns
    the final state. JobLockedError if another process already holds the run."""
    run = store.open_run(run)
    if lock_fd is None:
        lock_fd = _acquire_run_lock(run)
        # Started by hand rather than by launch/resume: never silently redo a finished run.
        try:
            recorded = run.raw_status().get("state") if (run.path / store.STATUS_FILE).exists() else None
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
    stop_helpers = threading.Event()
    try:
        limit = heartbeat.stall_seconds(run.kind)
        try:
            status = run.raw_status()
        except ValueError:
            # A missing or corrupt status.json is rewritten from here on.
            status = {}
        heartbeat.attach_heartbeat(run, limit)
        run.update_status(state="queued", pid=os.getpid(), pid_start=heartbeat.process_start_time(os.getpid()),
                          queued_at=status.get("queued_at") or store.now_iso(), error=None,
                          message="waiting for a free job slot", heartbeat=store.now_iso(), stall_seconds=limit)
        _start_log_rotation(run, stop_helpers)
        _remove_stale_temp_files(run)
        _say(f"job {run.id} (pid {os.getpid()}) queued")
        slot_fds = _wait_for_slot(run, poll) or []
        if not slot_fds:
            _say("cancelled while queued")
            final = {"state": "cancelled", "message": "cancelled while queued"}
            return "cancelled"
        run.update_status(state="running", started_at=store.now_iso(), message=f"starting the {run.kind} job",
                          heartbeat=store.now_iso())
        heartbeat.beat()
        _say(f"running ({run.kind})")
        workers = _worker_count()
        if workers > 1:
            _start_watchdog(run, limit, workers, stop_helpers)
        final = _execute(run, progress)
        return final["state"]
    except _Terminated:
        _say("stopped by SIGTERM")
        final = {"state": "interrupted", "message": "stopped by SIGTERM; resume to continue"}
        return "interrupted"
    except KeyboardInterrupt:
        final = {"state": "interrupted", "message": "stopped by an interrupt; resume to continue"}
        raise
    finally:
        stop_helpers.set()
        heartbeat.attach_heartbeat(None)
        if final:
            try:
                run.update_status(finished_at=store.now_iso(), **final)
                _say(f"final state: {final['state']}" + (f" ({final['error']})" if final.get("error") else ""))
            except OSError as exc:
                _say(f"could not record the final state {final['state']}: {exc}")
        for fd in slot_fds:
            os.close(fd)
        os.close(lock_fd)
        if handle_signals and previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def _worker_count() -> int:
    """How many training processes TF_CONFIG names (1 without it, or when it cannot be read)."""
    try:
        return cluster.worker_count()
    except ValueError:
        return 1


def _start_watchdog(run: Run, limit: float, workers: int, stop: threading.Event) -> None:
    """Fail this multi-worker job when its working code path has not beaten for `limit` seconds.

    When a peer worker dies, the others can wait in a collective op forever (TensorFlow's own peer health
    check aborts them too, but on its own schedule). The watchdog only reads the heartbeat, so it never
    keeps a hung job looking alive; it records the failure and exits the process (exit code 1)."""
    def watch() -> None:
        while not stop.wait(min(1.0, limit / 5.0)):
            age = heartbeat.seconds_since_beat()
            if age <= limit:
                continue
            try:
                last = run.raw_status().get("message") or "no progress message"
            except (OSError, ValueError):
                last = "no progress message"
            reason = (f"no progress for {age:.0f} s (limit {limit:g} s) in a {workers}-worker run: a peer worker "
                      f"probably stopped; last: {last}")
            try:
                run.update_status(state="failed", error=reason, message="failed: stalled", finished_at=store.now_iso())
            except OSError:
                pass
            _say(f"final state: failed ({reason})")
            print(f"error: run {run.id}: {reason}", file=sys.stderr, flush=True)
            os._exit(1)

    threading.Thread(target=watch, name="genre-watchdog", daemon=True).start()


def _rotate_log(run: Run, max_bytes: int) -> bool:
    """If this process's stdout is the run's log.txt and it is over `max_bytes`, move it to log.1.txt and
    continue in a new log.txt that starts with the old one's last lines; True when it rotated."""
    log_path = run.log_path
    try:
        current = os.fstat(1)
        if not os.path.samestat(current, os.stat(log_path)) or current.st_size <= max_bytes:
            return False
    except OSError:
        return False
    sys.stdout.flush()
    sys.stderr.flush()
    keep = min(LOG_TAIL_BYTES, max_bytes // 4)
    with open(log_path, "rb") as handle:
        handle.seek(max(0, current.st_size - keep))
        tail = handle.read(keep)
    if b"\n" in tail[:-1]:
        tail = tail[tail.index(b"\n") + 1:]  # Start at a whole line.
    old_log = run.path / store.OLD_LOG_FILE
    os.replace(log_path, old_log)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"[{store.now_iso()}] log rotated at {current.st_size:,} bytes; earlier output is in "
                     f"{store.OLD_LOG_FILE}; its last lines follow\n".encode() + tail)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)
    return True


def _start_log_rotation(run: Run, stop: threading.Event) -> None:
    """Check the job's log size every couple of seconds (only when stdout is the run's log.txt)."""
    try:
        if not os.path.samestat(os.fstat(1), os.stat(run.log_path)):
            return
    except OSError:
        return
    max_bytes = log_max_bytes()

    def check() -> None:
        while not stop.wait(LOG_CHECK_SECONDS):
            try:
                _rotate_log(run, max_bytes)
            except OSError as exc:
                print(f"[{store.now_iso()}] could not rotate the log: {exc}", flush=True)

    threading.Thread(target=check, name="genre-log-rotation", daemon=True).start()


def _execute(run: Run, progress: Progress | None) -> dict:
    """Dispatch to the executor and turn its outcome into the final status fields."""
    try:
        dispatch(run, progress)
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


def dispatch(run: Run, progress: Progress | None = None) -> None:
    """Run the executor of the run's kind (genre_core.runs.kinds), imported only now."""
    kind = run.config().get("kind")
    if kind not in kinds.KINDS:
        raise ValueError(f"run {run.id}: config.json has unknown kind {kind!r}")
    kinds.get(kind).executor()(run, progress)


# ----------------------------------------------------------------------------------------------------------
# Entry point of the job process.


def main(argv: list[str] | None = None) -> int:
    """`python -m genre_core.runs.jobs RUN_DIR [--lock-fd N]`: run one job; exit 0 finished, 1 failed or
    interrupted, 3 cancelled, 2 bad input or run already held by another job."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m genre_core.runs.jobs", description="Run one background job.")
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
    from genre_core.runs.jobs import main as _main

    sys.exit(_main())
