"""Where the project writes things: one artifacts root, overridable with GENRE_ARTIFACTS."""

from __future__ import annotations

import os
import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
PROJECT_DIR = PACKAGE_DIR.parent

_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


def artifacts_root() -> Path:
    """Return the artifacts root: $GENRE_ARTIFACTS if set, else `<project>/artifacts`."""
    root = os.environ.get("GENRE_ARTIFACTS")
    path = Path(root).expanduser() if root else PROJECT_DIR / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    """Return the folder holding one sub-folder per classifier run."""
    return _sub("runs")


def gan_runs_dir() -> Path:
    """Return the folder holding one sub-folder per GAN run."""
    return _sub("gan_runs")


def cache_dir() -> Path:
    """Return the folder holding preprocessed image caches and embedding caches."""
    return _sub("cache")


def demo_dir() -> Path:
    """Return the folder where the bundled demo dataset is generated."""
    return artifacts_root() / "demo"


def _sub(name: str) -> Path:
    path = artifacts_root() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def sanitize_id(text: str, max_length: int = 80) -> str:
    """Turn any text into a safe single path component (letters, digits, '.', '_', '-')."""
    cleaned = _SAFE_ID.sub("-", str(text)).strip(".-_")
    cleaned = cleaned[:max_length].strip(".-_")
    if not cleaned:
        raise ValueError(f"{text!r} gives an empty identifier once unsafe characters are removed")
    return cleaned


def resolve_inside(root: Path, relative: str | os.PathLike) -> Path:
    """Resolve `relative` under `root`, refusing absolute paths and anything that escapes `root`."""
    rel = Path(relative)
    if rel.is_absolute():
        raise ValueError(f"absolute path {str(relative)!r} is not allowed; paths must be relative to {root}")
    root_resolved = Path(root).resolve()
    candidate = (root_resolved / rel).resolve()
    if candidate != root_resolved and root_resolved not in candidate.parents:
        raise ValueError(f"path {str(relative)!r} leaves the dataset root {root_resolved}")
    return candidate
