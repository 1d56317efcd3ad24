"""The app's remembered choices (active dataset, active run, recent dataset paths), stored on disk.

`st.session_state` is not storage: a choice that must survive a reload or a second tab lives in
`<artifacts>/ui_state.json`, written atomically.
"""

from __future__ import annotations

from pathlib import Path

from genre_core.util import fileio, paths

STATE_FILE_NAME = "ui_state.json"
MAX_RECENT_DATASETS = 8
DEMO = "demo"


def state_path() -> Path:
    """Return the path of the UI state file under the artifacts root."""
    return paths.artifacts_root() / STATE_FILE_NAME


def read_state() -> dict:
    """Read the UI state; a missing or corrupt file gives the empty state instead of an error."""
    try:
        state = fileio.read_json(state_path(), default={})
    except ValueError:
        state = {}
    if not isinstance(state, dict):
        state = {}
    recent = state.get("recent_datasets")
    return {
        "active_dataset": state.get("active_dataset") or None,
        "active_run": state.get("active_run") or None,
        "active_gan_run": state.get("active_gan_run") or None,
        "recent_datasets": [str(item) for item in recent] if isinstance(recent, list) else [],
    }


def _write(state: dict) -> dict:
    fileio.atomic_write_json(state_path(), state)
    return state


def set_active_dataset(dataset: str) -> dict:
    """Make `dataset` ("demo" or a path) the active dataset and put it first in the recent list."""
    dataset = str(dataset).strip()
    if not dataset:
        raise ValueError("the dataset path is empty")
    state = read_state()
    state["active_dataset"] = dataset
    recent = [dataset] + [item for item in state["recent_datasets"] if item != dataset]
    state["recent_datasets"] = recent[:MAX_RECENT_DATASETS]
    return _write(state)


def forget_dataset(dataset: str) -> dict:
    """Remove `dataset` from the recent list (and unset it if it was active)."""
    state = read_state()
    state["recent_datasets"] = [item for item in state["recent_datasets"] if item != dataset]
    if state["active_dataset"] == dataset:
        state["active_dataset"] = None
    return _write(state)


def set_active_run(run_id: str | None, kind: str = "classifier") -> dict:
    """Remember the active classifier run (or GAN run when kind == "gan")."""
    state = read_state()
    state["active_gan_run" if kind == "gan" else "active_run"] = run_id or None
    return _write(state)
