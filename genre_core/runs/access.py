"""Shared (exposed) mode: what someone who can reach the app may do, decided without Streamlit.

The app is shared when its server address is not a loopback address, or when GENRE_SHARED=1; the app passes
the address in (genre_core never imports Streamlit). Then:
- a dataset path (absolute, or relative to the working folder) is accepted only under one of GENRE_DATA_ROOTS (a list separated by os.pathsep, ':' on
  Linux); the demo is always allowed; a path with a `..` component is refused, and so is a path whose real
  location (symlinks resolved) leaves every root;
- at most GENRE_MAX_QUEUED jobs wait in the queue (default 10);
- the CLI's `data` commands check GENRE_DATA_ROOTS whenever it is set, whatever the mode.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from genre_core.runs import heartbeat
from genre_core.util import paths

DEMO = "demo"
DEFAULT_MAX_QUEUED = 10
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(address: str | None) -> bool:
    """True for a loopback server address (127.0.0.0/8, ::1, localhost); an empty address listens everywhere."""
    text = (address or "").strip().strip("[]")
    if not text:
        return False
    if text.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def shared_mode(server_address: str | None) -> bool:
    """True when the app is reachable by others: GENRE_SHARED=1, or a server address that is not loopback."""
    if os.environ.get("GENRE_SHARED", "").strip() == "1":
        return True
    return not is_loopback(server_address)


def data_roots() -> list[Path] | None:
    """The folders GENRE_DATA_ROOTS names, resolved (None when the variable is unset or empty)."""
    text = os.environ.get("GENRE_DATA_ROOTS", "").strip()
    if not text:
        return None
    roots = [Path(part).expanduser().resolve() for part in text.split(os.pathsep) if part.strip()]
    return roots or None


def max_queued() -> int:
    """How many jobs may wait in shared mode: GENRE_MAX_QUEUED (default 10)."""
    return int(heartbeat.positive_env("GENRE_MAX_QUEUED", DEFAULT_MAX_QUEUED))


def describe_roots(roots: list[Path] | None) -> str:
    """One line for users: where datasets may come from."""
    if not roots:
        return "only the demo dataset (GENRE_DATA_ROOTS is not set)"
    return "the demo dataset and paths under " + ", ".join(str(root) for root in roots)


def check_dataset_path(spec: str, roots: list[Path] | None) -> str:
    """Return `spec` when it is the demo or lies under one of `roots`; ValueError with one line otherwise.

    `roots` None or empty allows only the demo. The check runs on the real location (symlinks resolved), so
    a link inside a root that points elsewhere is refused."""
    text = str(spec).strip()
    if text == DEMO:
        return text
    if not text:
        raise ValueError("the dataset path is empty")
    path = Path(text).expanduser()
    if ".." in path.parts:
        raise ValueError(f"{text}: paths with '..' are not accepted on a shared server")
    path = Path(os.path.abspath(path))
    allowed = describe_roots(roots)
    if not roots:
        raise ValueError(f"{text}: not allowed on a shared server, which accepts {allowed}")
    real = Path(os.path.realpath(path))
    for root in roots:
        if real == root or root in real.parents:
            return text
    if any(path == root or root in path.parents for root in roots):
        raise ValueError(f"{text}: a symbolic link leads outside the allowed folders (to {real}); "
                         f"a shared server accepts {allowed}")
    raise ValueError(f"{text}: outside the allowed folders; a shared server accepts {allowed}")


def check_file_inside_roots(path: str, roots: list[Path] | None) -> None:
    """Refuse (ValueError) an image file whose real location leaves the data roots and the artifacts root
    (a symlink inside a dataset pointing elsewhere). Members of archives ('file#member') check the file."""
    real = Path(os.path.realpath(str(path).split("#")[0]))
    allowed = list(roots or []) + [paths.artifacts_root().resolve()]
    if not any(real == root or root in real.parents for root in allowed):
        raise ValueError(f"{Path(path).name}: its real location is outside the allowed folders")
