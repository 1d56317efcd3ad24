"""Worker processes and file locks shared by the dataset code (image cache, demo) and the jobs.

- `file_lock(path)`: an exclusive advisory lock that keeps a waiting process's heartbeat going.
- `worker_pool(n)`: a process pool on a start method that is safe here (fork, or spawn beside threads).
- `spawnable_main()`: hide a page script `__main__` from spawned workers while they start.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import time
from pathlib import Path
from typing import Callable


@contextlib.contextmanager
def file_lock(path: Path, on_wait: Callable[[], None] | None = None, repeat_seconds: float = 5.0):
    """Hold an exclusive advisory lock on `path` (created if needed). While another process holds it, call
    `on_wait` at once and then every `repeat_seconds`, so a waiting job keeps its heartbeat (the wait is
    progress of the process that builds)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; builds are still resumable and atomic per chunk.
        yield
        return
    with open(path, "a+") as handle:
        next_call = time.monotonic()
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if on_wait is not None and time.monotonic() >= next_call:
                    on_wait()
                    next_call = time.monotonic() + repeat_seconds
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def worker_context():
    """The multiprocessing context for worker pools: "fork" when that is safe here, else "spawn".

    Fork starts workers in milliseconds, but forking a process that runs other threads (TensorFlow's thread
    pools, a Streamlit server) can deadlock the child; such callers get "spawn" (a second or two per worker).
    """
    import sys
    import threading

    safe_to_fork = (
        sys.platform == "linux"
        and threading.active_count() == 1
        and "tensorflow" not in sys.modules
        and "keras" not in sys.modules
    )
    return multiprocessing.get_context("fork" if safe_to_fork else "spawn")


def worker_pool(worker_count: int) -> concurrent.futures.ProcessPoolExecutor:
    """A process pool on `worker_context()`; submit its first jobs inside `spawnable_main()`."""
    return concurrent.futures.ProcessPoolExecutor(max_workers=worker_count, mp_context=worker_context())


@contextlib.contextmanager
def spawnable_main():
    """Hide a script `__main__` while "spawn" workers start (they start on submit).

    A spawned worker re-runs the parent's `__main__` script. Inside Streamlit (and AppTest) that script is a
    page, which must not run again in every worker; our worker functions live in importable modules, so the
    workers need no `__main__` at all. A `python -m` main is left alone: workers never re-run those.
    """
    import sys
    import types

    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main
