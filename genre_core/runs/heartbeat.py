"""Heartbeats and process liveness: how a live job shows it is making progress, and how a dead or stalled one
is told apart from it (genre_core.runs.store reads these into a run's effective state).

- `beat()` is called from the loops that do the work (a batch, a cache chunk, a feature batch, a queue poll),
  never from a timer thread, so a deadlock or a hung read stops it; `attach_heartbeat(run, limit)` (the job
  runner) makes it stamp `heartbeat` into the run's status.json at most every couple of seconds.
- `stall_seconds(kind)`: $GENRE_STALL_SECONDS, else the kind's limit from genre_core.runs.kinds.
- `pid_alive(pid, start_time)`: a recorded job process still runs (Linux /proc, guarding against pid reuse).
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from genre_core.runs import kinds


def now_iso() -> str:
    """Return the current UTC time as an ISO 8601 string with milliseconds (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# ----------------------------------------------------------------------------------------------------------
# Process liveness (used to tell a running job from one that died without saying so).


def process_start_time(pid: int) -> int | None:
    """Return the start time of process `pid` in clock ticks since boot (Linux /proc), or None if unknown."""
    try:
        text = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name (field 2) may contain spaces or parentheses, so split after the last ')'.
    fields = text[text.rfind(")") + 2:].split()
    try:
        # After the command name, field 3 (state) is index 0, so field 22 (starttime) is index 19.
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _process_state(pid: int) -> str | None:
    """Return the one-letter /proc state of `pid` (e.g. 'R', 'S', 'Z'), or None if unknown."""
    try:
        text = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text[text.rfind(")") + 2:].split()
    return fields[0] if fields else None


def pid_alive(pid: Any, start_time: Any = None) -> bool:
    """True if process `pid` exists, is not a zombie and (when known) started at `start_time`."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # The process exists but belongs to another user.
        pass
    except OSError:
        return False
    if _process_state(pid) in ("Z", "X"):
        # A killed child that its parent has not reaped yet is a zombie: it no longer runs anything.
        return False
    if start_time is not None:
        current = process_start_time(pid)
        if current is not None and int(current) != int(start_time):
            # The pid was reused by an unrelated process started later.
            return False
    return True


# ----------------------------------------------------------------------------------------------------------
# Heartbeat and stall limits.


def positive_env(name: str, default: float | None) -> float | None:
    """Return $name as a positive number, `default` when unset; ValueError naming the variable otherwise."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a number") from None
    if not value > 0:
        raise ValueError(f"{name}={text} must be more than 0")
    return value


def _default_stall_seconds(kind) -> float:
    """The kind's stall limit from genre_core.runs.kinds (600 s for an unknown kind)."""
    spec = kinds.KINDS.get(str(kind))
    return spec.stall_seconds if spec is not None else 600.0


def stall_seconds(kind: str | None = None) -> float:
    """Return the stall limit in seconds: $GENRE_STALL_SECONDS, else the default for `kind` (ValueError if the
    variable is not a positive number)."""
    return float(positive_env("GENRE_STALL_SECONDS", _default_stall_seconds(kind)))


class _Heartbeat:
    """This process's heartbeat: when the working code path last made progress, and which run it beats for."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.run: Any = None  # the Run whose status.json gets the beats
        self.write_every = 2.0
        self.written = -float("inf")


_HEARTBEAT = _Heartbeat()


def attach_heartbeat(run: Any, limit: float | None = None) -> None:
    """Make `beat()` stamp `heartbeat` into this run's status.json (None detaches). The job runner calls this.

    Beats are written at most every 2 s, and at least five times per stall limit when the limit is short."""
    _HEARTBEAT.run = run
    _HEARTBEAT.written = -float("inf")
    _HEARTBEAT.last = time.monotonic()
    _HEARTBEAT.write_every = min(2.0, float(limit) / 5.0) if limit else 2.0


def beat() -> None:
    """Record progress of the working code path (a batch, a chunk, a feature batch, a queue poll).

    Called from the loops that do the work, never from a free-running thread, so a deadlock or a hung read
    stops the heartbeat. Cheap: the status file is written at most every couple of seconds."""
    now = time.monotonic()
    _HEARTBEAT.last = now
    run = _HEARTBEAT.run
    if run is not None and now - _HEARTBEAT.written >= _HEARTBEAT.write_every:
        _HEARTBEAT.written = now
        try:
            run.update_status(heartbeat=now_iso())
        except OSError:
            pass  # A full disk is reported by the writes that matter; a missed beat is not an error.


def _heartbeat_written(run: Any) -> None:
    """Note that `run`'s status was just written with a fresh heartbeat (so `beat` need not write again)."""
    now = time.monotonic()
    _HEARTBEAT.last = now
    if _HEARTBEAT.run is not None and _HEARTBEAT.run.path == run.path:
        _HEARTBEAT.written = now


def seconds_since_beat() -> float:
    """Seconds since this process last called `beat()` (or attached a run)."""
    return time.monotonic() - _HEARTBEAT.last


def heartbeat_age(status: dict, now: datetime | None = None) -> float | None:
    """Seconds since the status's `heartbeat` (else its `updated` stamp), or None when neither parses."""
    for key in ("heartbeat", "updated"):
        text = status.get(key)
        if not text:
            continue
        try:
            stamp = datetime.fromisoformat(str(text))
        except ValueError:
            continue
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=timezone.utc)
        return max(0.0, ((now or datetime.now(timezone.utc)) - stamp).total_seconds())
    return None


def _status_stall_limit(status: dict) -> float:
    """The stall limit the job recorded for itself, else this process's setting (never raises)."""
    try:
        recorded = float(status.get("stall_seconds") or 0)
    except (TypeError, ValueError):
        recorded = 0.0
    if recorded > 0:
        return recorded
    try:
        return stall_seconds(status.get("kind"))
    except ValueError:
        return _default_stall_seconds(status.get("kind"))
