"""Atomic file writes (temporary file in the same folder, then rename) and tolerant reads."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` so that readers see either the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _clear_os_error(exc, path) from exc
    try:
        # mkstemp creates the file readable by its owner only; give it the old file's mode, or rw-r--r--.
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:
            mode = 0o644
        try:
            os.fchmod(fd, mode)
        except (AttributeError, OSError):
            pass  # Some platforms and file systems have no POSIX modes; the write itself still counts.
        with os.fdopen(fd, "wb") as handle:
            _write_file(handle, data, path)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise _clear_os_error(exc, path) from exc
        raise
    return path


def _write_file(handle, data: bytes, path: Path) -> None:
    """Write, flush and fsync the temporary file (a seam the fault-injection tests patch)."""
    handle.write(data)
    handle.flush()
    os.fsync(handle.fileno())


def _clear_os_error(exc: OSError, path: Path) -> OSError:
    """Return an OSError whose message names the file being written (full disk, no permission, ...)."""
    if str(path) in str(exc):
        return exc
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        reason = "No space left on device"
    elif exc.errno == errno.EDQUOT:
        reason = "Disk quota exceeded"
    message = f"{reason} while writing {path}"
    try:
        return type(exc)(exc.errno, message) if exc.errno else OSError(message)
    except TypeError:
        return OSError(exc.errno, message)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write an object as indented JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_csv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame as CSV atomically."""
    return atomic_write_text(path, frame.to_csv(index=False))


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """Read JSON; return `default` if the file is missing. Corrupt JSON raises ValueError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return default
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: corrupt JSON (not UTF-8 text: {exc.reason} at byte {exc.start})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt JSON ({exc.msg} at line {exc.lineno})") from exc


def read_json_file(path: str | os.PathLike, what: str = "file") -> Any:
    """Read a JSON file the user named: a missing file or corrupt JSON raises ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist")
    return read_json(path)


def _json_default(value: Any) -> Any:
    # NumPy scalars and paths appear in configs and metrics; store them as plain JSON values.
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot store {type(value).__name__} in JSON")
