"""Run folders: one folder per training job holding its config, status, history, metrics and model.

A run folder is the only place a job writes to, and the only place the app reads a job's state from, so a
run can be inspected, cancelled or resumed from its folder alone (see "Run folders" in
docs/architecture.md). Every JSON/CSV write is atomic, and `status.json` updates are serialised with a
small file lock so that the launcher, the job and the app never lose each other's fields.
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from genre_core.runs import kinds
from genre_core.runs.heartbeat import _heartbeat_written, _status_stall_limit, beat, heartbeat_age, now_iso, pid_alive
from genre_core.util import fileio, paths


# States status.json records. "stalled" is never recorded: like "interrupted" for a dead process, it is how a
# live job with no heartbeat for its stall limit reads (see `effective_status`).
STATES = ("queued", "running", "finished", "failed", "cancelled", "interrupted")
RECORDED_ACTIVE_STATES = ("queued", "running")
ACTIVE_STATES = ("queued", "running", "stalled")
FINAL_STATES = ("finished", "failed", "cancelled")
STALLED = "stalled"

# Keys a run's config.json holds besides the job's own config (written by create_run and jobs.resume; "kind" too).
RUN_ONLY_KEYS = ("created", "classes", "resume", "run_id")

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
CLASSES_FILE = "classes.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
CANCEL_FILE = "cancel"
LOG_FILE = "log.txt"
OLD_LOG_FILE = "log.1.txt"
MODEL_FILE = "model.keras"
CHECKPOINT_DIR = "checkpoint"
RUN_LOCK_FILE = ".lock"
STATUS_LOCK_FILE = ".status.lock"


class Cancelled(Exception):
    """Raised by an executor (or the job runner) when the user asked to cancel the run."""


def kind_root(kind: str) -> Path:
    """Return (creating it) the folder that holds runs of `kind` (genre_core.runs.kinds)."""
    root = paths.artifacts_root() / kinds.get(kind).folder
    root.mkdir(parents=True, exist_ok=True)
    return root


def all_roots() -> list[Path]:
    """Return every distinct run root folder, classifier first."""
    roots: list[Path] = []
    for kind in kinds.KINDS:
        root = kind_root(kind)
        if root not in roots:
            roots.append(root)
    return roots


# ----------------------------------------------------------------------------------------------------------
# The run folder.


class Run:
    """One run folder. All reads are tolerant of missing files; all writes are atomic."""

    def __init__(self, path: str | os.PathLike, kind: str | None = None):
        self.path = Path(path).resolve()
        self.id = self.path.name
        self._kind = kind

    def __repr__(self) -> str:
        return f"Run({self.id!r}, kind={self.kind!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    # Paths -------------------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """The run kind from config.json, else the kind given when opening, else guessed from the root."""
        if self._kind is None:
            try:
                kind = self.config().get("kind")
            except ValueError:
                kind = None
            if kind not in kinds.KINDS:
                # The last kind listed whose folder holds this run (job_runs without a kind: selftest).
                by_folder = {spec.folder: name for name, spec in kinds.KINDS.items()}
                kind = by_folder.get(self.path.parent.name, "classifier")
            self._kind = kind
        return self._kind

    def file(self, name: str | os.PathLike) -> Path:
        """Return the path of `name` inside the run folder, refusing names that would leave it."""
        if not str(name).strip():
            raise ValueError(f"run {self.id}: empty file name")
        return paths.resolve_inside(self.path, name)

    @property
    def log_path(self) -> Path:
        return self.path / LOG_FILE

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def checkpoint_dir(self) -> Path:
        """The folder with last-epoch state for resume (created on first use)."""
        folder = self.path / CHECKPOINT_DIR
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @property
    def lock_path(self) -> Path:
        """The per-run lock file held (fcntl.flock) by the job process for its whole life."""
        return self.path / RUN_LOCK_FILE

    # Config and classes -------------------------------------------------------------------------------

    def config(self) -> dict:
        """Return config.json as a dict. Missing or corrupt -> ValueError naming the file."""
        config = fileio.read_json(self.path / CONFIG_FILE, default=None)
        if config is None:
            raise ValueError(f"run {self.id}: {CONFIG_FILE} is missing")
        if not isinstance(config, dict):
            raise ValueError(f"run {self.id}: {CONFIG_FILE} does not hold a JSON object")
        return config

    def write_config(self, config: dict) -> None:
        """Replace config.json atomically."""
        fileio.atomic_write_json(self.path / CONFIG_FILE, config)

    def classes(self) -> list[str]:
        """Return the genre names in label order (classes.json, else config["classes"], else [])."""
        classes = fileio.read_json(self.path / CLASSES_FILE, default=None)
        if classes is None:
            try:
                classes = self.config().get("classes") or []
            except ValueError:
                classes = []
        if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
            raise ValueError(f"run {self.id}: {CLASSES_FILE} must hold a list of genre names")
        return classes

    def write_classes(self, classes: list[str]) -> None:
        """Write classes.json (genre names in label order)."""
        fileio.atomic_write_json(self.path / CLASSES_FILE, [str(name) for name in classes])

    # Status ------------------------------------------------------------------------------------------

    def raw_status(self) -> dict:
        """Return status.json exactly as recorded. Missing or corrupt -> ValueError naming the file."""
        status = fileio.read_json(self.path / STATUS_FILE, default=None)
        if status is None:
            raise ValueError(f"run {self.id}: {STATUS_FILE} is missing")
        if not isinstance(status, dict):
            raise ValueError(f"run {self.id}: {STATUS_FILE} does not hold a JSON object")
        return status

    def status(self) -> dict:
        """Return status.json with the effective state: a queued/running run whose process died is
        reported as "interrupted" (the recorded state is kept under "recorded_state")."""
        status = self.raw_status()
        return effective_status(status)

    def state(self) -> str:
        """Return the effective state string."""
        return self.status().get("state", "queued")

    def is_active(self) -> bool:
        """True while a live job process is queued or running on this run."""
        try:
            return self.state() in ACTIVE_STATES
        except ValueError:
            return False

    @contextmanager
    def _status_lock(self) -> Iterator[None]:
        """Serialise read-modify-write of status.json between processes (fcntl.flock where available)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX systems write without the lock
            yield
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / STATUS_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def update_status(self, **fields: Any) -> dict:
        """Merge `fields` into status.json atomically, stamp "updated", and return the new status.

        A corrupt status.json is replaced rather than blocking every later update."""
        with self._status_lock():
            try:
                status = self.raw_status()
            except ValueError:
                status = {}
            status.update(fields)
            status["updated"] = now_iso()
            fileio.atomic_write_json(self.path / STATUS_FILE, status)
        return status

    # History and metrics -----------------------------------------------------------------------------

    def history(self):
        """Return history.csv as a DataFrame (empty if there is none yet)."""
        import pandas as pd

        path = self.path / HISTORY_FILE
        if not path.exists() or path.stat().st_size == 0:
            return pd.DataFrame()
        try:
            return pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise ValueError(f"run {self.id}: {HISTORY_FILE} is corrupt ({exc})") from exc

    def _read_history_rows(self) -> tuple[list[str], list[dict]]:
        """Read history.csv with the csv module (no pandas, so job processes start fast)."""
        path = self.path / HISTORY_FILE
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                rows = list(reader)
                columns = list(reader.fieldnames or [])
        except FileNotFoundError:
            return [], []
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ValueError(f"run {self.id}: {HISTORY_FILE} is corrupt ({exc})") from exc
        if any(None in row for row in rows):
            raise ValueError(f"run {self.id}: {HISTORY_FILE} has rows with more cells than columns")
        return columns, rows

    def _write_history_rows(self, columns: list[str], rows: list[dict]) -> None:
        """Rewrite history.csv atomically."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        fileio.atomic_write_text(self.path / HISTORY_FILE, buffer.getvalue())

    def append_history(self, row: dict) -> None:
        """Append one row to history.csv (atomic rewrite; new columns are added, missing ones left empty)."""
        columns, rows = self._read_history_rows()
        new_row = {str(key): _csv_value(value) for key, value in row.items()}
        columns += [key for key in new_row if key not in columns]
        rows.append(new_row)
        self._write_history_rows(columns, rows)

    def truncate_history(self, last_epoch: int) -> None:
        """Drop history rows after `last_epoch` (used on resume so a re-run epoch is not listed twice)."""
        columns, rows = self._read_history_rows()
        if "epoch" not in columns:
            return
        kept = [row for row in rows if _epoch_number(row.get("epoch")) <= last_epoch]
        if len(kept) != len(rows):
            self._write_history_rows(columns, kept)

    def metrics(self) -> dict:
        """Return metrics.json ({} if not written yet)."""
        metrics = fileio.read_json(self.path / METRICS_FILE, default={})
        return metrics if isinstance(metrics, dict) else {}

    def write_metrics(self, metrics: dict) -> None:
        """Write metrics.json atomically."""
        fileio.atomic_write_json(self.path / METRICS_FILE, metrics)

    def predictions(self):
        """predictions.csv as a DataFrame (see `predictions_frame`); FileNotFoundError before it is written."""
        import pandas as pd

        path = self.path / PREDICTIONS_FILE
        if not path.exists():
            raise FileNotFoundError(f"run {self.id} has no {PREDICTIONS_FILE} (it has not finished training)")
        try:
            return pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise ValueError(f"run {self.id}: {PREDICTIONS_FILE} is corrupt ({exc})") from exc

    def write_predictions(self, frame) -> None:
        """Write predictions.csv atomically (a `predictions_frame` table)."""
        fileio.atomic_write_csv(self.path / PREDICTIONS_FILE, frame)

    # Cancel ------------------------------------------------------------------------------------------

    def request_cancel(self) -> None:
        """Ask the job to stop: executors check `cancel_requested()` every batch."""
        fileio.atomic_write_text(self.path / CANCEL_FILE, now_iso() + "\n")

    def cancel_requested(self) -> bool:
        """True if a cancel was requested (the `cancel` file exists)."""
        return (self.path / CANCEL_FILE).exists()

    def clear_cancel(self) -> None:
        """Remove a cancel request (used when a run is resumed)."""
        try:
            (self.path / CANCEL_FILE).unlink()
        except FileNotFoundError:
            pass

    def check_cancel(self) -> None:
        """Raise `Cancelled` if a cancel was requested; executors call this every batch."""
        if self.cancel_requested():
            raise Cancelled(f"run {self.id} was cancelled")

    # Summary -----------------------------------------------------------------------------------------

    def summary(self) -> dict:
        """Return the listing row for this run (never raises; a broken folder gets `damaged`)."""
        return _summarise(self.path, self._kind)


def effective_status(status: dict, now: datetime | None = None) -> dict:
    """Return a copy of `status` with the effective state: "interrupted" if it claims to be queued or running
    but its process died; "stalled" if the process lives but its heartbeat is older than the stall limit the
    job recorded (`stall_seconds`). The recorded state is kept under "recorded_state"; a stalled status gets
    `stalled_seconds` and a message naming the last thing the job was doing."""
    status = dict(status)
    state = status.get("state")
    if state in RECORDED_ACTIVE_STATES and status.get("pid") is not None:
        if not pid_alive(status.get("pid"), status.get("pid_start")):
            status["recorded_state"] = state
            status["state"] = "interrupted"
            status["message"] = f"the job process (pid {status.get('pid')}) stopped without finishing"
            return status
        age = heartbeat_age(status, now)
        limit = _status_stall_limit(status)
        if age is not None and age > limit:
            last = str(status.get("message") or state)
            status["recorded_state"] = state
            status["state"] = STALLED
            status["stalled_seconds"] = round(age, 1)
            status["last_message"] = last
            status["message"] = f"no progress for {age:.0f} s (limit {limit:g} s); last: {last}"
    return status


def _csv_value(value: Any) -> Any:
    """Turn NumPy scalars into plain values and None/NaN into an empty CSV cell."""
    if hasattr(value, "item"):
        value = value.item()
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return value


def _epoch_number(value: Any) -> float:
    """Parse an epoch cell; unparseable cells count as infinitely late so truncation drops them."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("inf")


# ----------------------------------------------------------------------------------------------------------
# Creating, opening and listing runs.


def make_run_id(kind: str, config: dict) -> str:
    """Return `<YYYYmmdd-HHMMSS>-<model or genre or kind>-<4 hex>`, sanitised."""
    slug = config.get("model") or config.get("genre") or config.get("name") or kind
    try:
        slug = paths.sanitize_id(str(slug), max_length=40)
    except ValueError:
        slug = kind
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return paths.sanitize_id(f"{stamp}-{slug}-{secrets.token_hex(2)}")


def create_run(kind: str, config: dict, run_id: str | None = None, classes: list[str] | None = None) -> Run:
    """Create a new run folder with config.json (plus "kind") and status.json in state "queued"."""
    if not isinstance(config, dict):
        raise ValueError(f"run config must be a dict, got {type(config).__name__}")
    root = kind_root(kind)
    explicit_id = run_id is not None
    for _attempt in range(20):
        identifier = paths.sanitize_id(run_id) if explicit_id else make_run_id(kind, config)
        folder = root / identifier
        try:
            folder.mkdir(parents=False, exist_ok=False)
            break
        except FileExistsError:
            if explicit_id:
                raise ValueError(f"run folder {folder} already exists; choose another run id") from None
    else:  # pragma: no cover - 20 random collisions in one second
        raise RuntimeError(f"could not find a free run id under {root}")
    run = Run(folder, kind)
    full_config = dict(config)
    full_config["kind"] = kind
    full_config.setdefault("created", now_iso())
    if classes is not None:
        full_config.setdefault("classes", list(classes))
    run.write_config(full_config)
    if classes is not None:
        run.write_classes(list(classes))
    run.update_status(state="queued", epoch=0, epochs=full_config.get("epochs"), batch=0, batches=None,
                      eta_seconds=None, message="created", error=None, pid=None,
                      created=full_config["created"])
    return run


def open_run(run_id_or_path: str | os.PathLike | Run, kind: str | None = None) -> Run:
    """Open an existing run from its folder path, or from its id (looked up in the run roots)."""
    if isinstance(run_id_or_path, Run):
        return run_id_or_path
    text = os.fspath(run_id_or_path)
    if not str(text).strip():
        raise ValueError("empty run id")
    looks_like_path = isinstance(run_id_or_path, os.PathLike) or os.sep in text or "/" in text
    if looks_like_path:
        folder = Path(text).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"run folder {folder} does not exist")
        if not ((folder / CONFIG_FILE).exists() or (folder / STATUS_FILE).exists()):
            raise ValueError(f"{folder} is not a run folder (no {CONFIG_FILE} or {STATUS_FILE})")
        return Run(folder, kind)
    if paths.sanitize_id(text) != text or text in (".", ".."):
        raise ValueError(f"{text!r} is not a valid run id (letters, digits, '.', '_' and '-' only)")
    roots = [kind_root(kind)] if kind else all_roots()
    for root in roots:
        folder = root / text
        if folder.is_dir():
            return Run(folder, kind)
    where = ", ".join(str(root) for root in roots)
    raise FileNotFoundError(f"no run with id {text!r} in {where}")


def _read_small_json(path: Path) -> tuple[Any, str | None]:
    """Read a small JSON file with the standard library; return (value, problem or None)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, f"{path.name} is missing"
    except OSError as exc:
        return None, f"{path.name} cannot be read ({exc.strerror or exc})"
    try:
        value = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"{path.name} is corrupt ({getattr(exc, 'msg', exc)})"
    if not isinstance(value, dict):
        return None, f"{path.name} does not hold a JSON object"
    return value, None


def _count_epochs(path: Path) -> int | None:
    """Count data rows in history.csv without pandas (None if there is none)."""
    try:
        with open(path, "rb") as handle:
            lines = [line for line in handle.read().splitlines() if line.strip()]
    except OSError:
        return None
    return max(len(lines) - 1, 0)


def _summarise(folder: Path, kind: str | None = None) -> dict:
    """Build one listing row from a run folder, reading only small files; never raises."""
    row: dict[str, Any] = {
        "id": folder.name, "path": str(folder), "kind": kind, "state": None, "model": None, "data": None,
        "created": None, "epoch": None, "epochs": None, "test_accuracy": None, "macro_f1": None,
        "message": None, "error": None, "pid": None, "damaged": None, "queued_at": None,
    }
    problems = []
    try:
        config, problem = _read_small_json(folder / CONFIG_FILE)
        if problem:
            problems.append(problem)
            config = {}
        status, problem = _read_small_json(folder / STATUS_FILE)
        if problem:
            problems.append(problem)
            status = {}
        status = effective_status(status) if status else status
        row["kind"] = config.get("kind") or kind
        row["model"] = config.get("model") or config.get("architecture")
        row["data"] = config.get("data")
        row["created"] = config.get("created") or status.get("created")
        if row["created"] is None:
            row["created"] = datetime.fromtimestamp(folder.stat().st_mtime, timezone.utc).isoformat(
                timespec="milliseconds")
        for key in ("state", "epoch", "epochs", "message", "error", "pid", "queued_at"):
            if key in status:
                row[key] = status[key]
        if row["epochs"] is None:
            row["epochs"] = config.get("epochs")
        history_epochs = _count_epochs(folder / HISTORY_FILE)
        if history_epochs is not None and not row["epoch"]:
            row["epoch"] = history_epochs
        metrics, problem = _read_small_json(folder / METRICS_FILE)
        if metrics:
            test = metrics.get("test") if isinstance(metrics.get("test"), dict) else {}
            row["test_accuracy"] = test.get("accuracy")
            row["macro_f1"] = test.get("macro_f1")
        elif problem and "missing" not in problem:
            problems.append(problem)
    except Exception as exc:  # Listing must survive any single broken folder.
        problems.append(f"unreadable run folder ({exc})")
    if problems:
        row["damaged"] = "; ".join(problems)
        if row["state"] is None:
            row["state"] = "damaged"
    return row


def list_runs(kind: str | None = "classifier") -> list[dict]:
    """List runs of `kind` (None or "all": every kind) newest first; broken folders are marked `damaged`."""
    if kind in (None, "all"):
        roots = [(root, None) for root in all_roots()]
    else:
        roots = [(kind_root(kind), kind)]
    rows = []
    for root, root_kind in roots:
        try:
            entries = sorted(root.iterdir())
        except OSError:
            continue
        for folder in entries:
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            row = _summarise(folder, root_kind)
            # The job kinds share one root; filter them by the kind recorded in their config.
            if kind not in (None, "all") and row["kind"] not in (None, kind):
                continue
            rows.append(row)
    rows.sort(key=lambda row: (str(row.get("created") or ""), row["id"]), reverse=True)
    return rows


# ----------------------------------------------------------------------------------------------------------
# Progress written into status.json.


@contextmanager
def recording_progress(run: "Run", also: Callable[[dict], None] | None = None) -> Iterator[Callable[[dict], None]]:
    """A job's progress callback: each event is recorded in the run's status.json (a throttled
    `ProgressWriter`, flushed on leaving the block) and passed on to `also` (a terminal bar, a test's list)."""
    writer = ProgressWriter(run)

    def report(event: dict) -> None:
        writer(event)
        if also is not None:
            also(event)

    try:
        yield report
    finally:
        writer.flush()


class ProgressWriter:
    """A progress callback (docs/architecture.md) that records epoch/batch/ETA in status.json.

    Writes are throttled to at most one every `min_interval` seconds, except epoch ends and stage
    changes, which are always written, so per-batch progress does not hammer the disk."""

    def __init__(self, run: Run, min_interval: float = 0.5, clock: Callable[[], float] = time.monotonic):
        self.run = run
        self.min_interval = float(min_interval)
        self.clock = clock
        self.writes = 0
        self._last_write = -float("inf")
        self._origins: dict[str, tuple[float, float]] = {}
        self._epoch = 0
        self._epochs: int | None = None
        self._stage: str | None = None
        self._pending: dict | None = None

    def _fraction(self, batch: int | None, batches: int | None) -> float | None:
        """Return the share of the whole job done, from completed epochs and the batch within the epoch."""
        if not self._epochs:
            return None
        within = (batch / batches) if batch is not None and batches else 0.0
        return min(1.0, (self._epoch + within) / self._epochs)

    def _eta(self, fraction: float | None, scale: str = "training") -> float | None:
        """Estimate the seconds left by extrapolating the speed since the first event on the same scale
        (training progress for epochs and batches; each other stage has its own done/total scale)."""
        now = self.clock()
        if fraction is None:
            return None
        if scale not in self._origins:
            self._origins[scale] = (now, fraction)
            return None
        start_time, start_fraction = self._origins[scale]
        progressed = fraction - start_fraction
        if progressed <= 0:
            return None
        return round((now - start_time) / progressed * (1.0 - fraction), 1)

    def __call__(self, event: dict) -> None:
        beat()
        stage = str(event.get("stage", ""))
        done = event.get("done")
        total = event.get("total")
        fields: dict[str, Any] = {"stage": stage}
        force = stage != self._stage
        self._stage = stage
        if stage == "epoch":
            self._epoch = int(done or 0)
            self._epochs = int(total) if total else self._epochs
            fields.update(epoch=self._epoch, epochs=self._epochs, batch=0,
                          eta_seconds=self._eta(self._fraction(None, None)))
            fields["message"] = event.get("message") or f"epoch {self._epoch}/{self._epochs} done"
            force = True
        elif stage == "batch":
            fields.update(batch=done, batches=total, eta_seconds=self._eta(self._fraction(done, total)))
            if self._epochs:
                fields["message"] = event.get("message") or (
                    f"epoch {self._epoch + 1}/{self._epochs}, batch {done}/{total}")
        else:
            fraction = (float(done) / float(total)) if done is not None and total else None
            fields.update(done=done, total=total)
            if not self._epochs:
                fields["eta_seconds"] = self._eta(fraction, scale=f"stage:{stage}")
            fields["message"] = event.get("message") or (
                f"{stage} {done}/{total}" if total else stage)
            if done is not None and total and done >= total:
                force = True
        self._write(fields, force)

    def _write(self, fields: dict, force: bool) -> None:
        now = self.clock()
        if self._pending:
            fields = {**self._pending, **fields}
        if not force and now - self._last_write < self.min_interval:
            self._pending = fields
            return
        self._pending = None
        self._last_write = now
        self.writes += 1
        self.run.update_status(heartbeat=now_iso(), **fields)
        _heartbeat_written(self.run)

    def flush(self) -> None:
        """Write any throttled progress now."""
        if self._pending:
            self._write({}, force=True)


@dataclass
class RunFiles:
    """A run folder read tolerantly, for evaluation and comparison: what is missing or corrupt is listed in
    `problems` instead of raised, so one damaged run never hides the others. `Run` is the strict reader and
    the writer; both read the same files."""

    path: Path
    config: dict | None = None
    classes: list[str] | None = None
    metrics: dict | None = None
    status: dict | None = None
    problems: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, folder: str | os.PathLike) -> "RunFiles":
        """Read config.json, classes.json, metrics.json and status.json of `folder`."""
        files = cls(Path(folder))
        for name, file_name in (("config", CONFIG_FILE), ("classes", CLASSES_FILE), ("metrics", METRICS_FILE),
                                ("status", STATUS_FILE)):
            try:
                value = fileio.read_json(files.path / file_name)
            except ValueError as exc:
                files.problems.append(str(exc))
                value = None
            if value is None and name != "status" and not (files.path / file_name).exists():
                files.problems.append(f"{file_name} missing")
            setattr(files, name, value)
        if files.classes is not None and not (
                isinstance(files.classes, list) and all(isinstance(name, str) for name in files.classes)):
            files.problems.append(f"{files.path / CLASSES_FILE}: not a list of genre names")
            files.classes = None
        return files

    @property
    def run_id(self) -> str:
        """The run id, which is the folder name."""
        return self.path.name

    def history(self):
        """history.csv as a DataFrame, or None when it is missing or unreadable."""
        return self._csv(HISTORY_FILE)

    def predictions(self):
        """predictions.csv as a DataFrame, or None when it is missing or unreadable."""
        return self._csv(PREDICTIONS_FILE)

    def _csv(self, name: str):
        import pandas as pd

        path = self.path / name
        if not path.exists():
            self.problems.append(f"{name} missing")
            return None
        try:
            return pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
            self.problems.append(f"{path}: unreadable CSV ({exc})")
            return None


def predictions_frame(image_paths, true_genres, probabilities, classes):
    """The predictions table of the run-folder contract (predictions.csv, and an evaluation's predictions):
    path, true, predicted, confidence, then one probability column per class in class order."""
    import numpy as np
    import pandas as pd

    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(image_paths), len(classes))
    predicted = probabilities.argmax(axis=1)
    frame = pd.DataFrame({
        "path": list(image_paths),
        "true": list(true_genres),
        "predicted": [classes[index] for index in predicted],
        "confidence": probabilities[np.arange(len(predicted)), predicted],
    })
    for index, genre in enumerate(classes):
        frame[genre] = probabilities[:, index]
    return frame


def resolve_run_dir(run_or_path: Any) -> Path:
    """Return the folder of a run given a Run object, a folder path or a classifier run id
    (genre_core.evaluation.bundle.resolve_model_dir also takes "bundled")."""
    if not isinstance(run_or_path, (str, os.PathLike)):
        # A genre_core.runs.store.Run (or anything like it) carries its folder in `.path`.
        value = getattr(run_or_path, "path", None)
        if isinstance(value, (str, os.PathLike)):
            return Path(value)
        raise ValueError(f"cannot find a run folder from {run_or_path!r}; pass a path or a run id")
    candidate = Path(run_or_path).expanduser()
    if candidate.is_dir():
        return candidate
    text = os.fspath(run_or_path)
    if os.sep not in text and "/" not in text and text.strip():
        # A run id: open_run knows where run folders live (and checks the id).
        return open_run(text, kind="classifier").path
    raise FileNotFoundError(f"run {text!r} not found (neither a folder nor a run id in {paths.runs_dir()})")
