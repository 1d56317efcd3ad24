"""Shared (exposed) mode in the app: the rules of genre_core.runs.access applied to what a visitor can do.

The app is shared when Streamlit's `server.address` is not a loopback address (e.g. `--server.address
0.0.0.0`) or GENRE_SHARED=1. Then dataset paths must lie under GENRE_DATA_ROOTS (the demo is always allowed),
at most GENRE_MAX_QUEUED jobs may wait, and image files whose real location leaves the allowed folders are not
shown. On localhost every helper here lets everything through.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import streamlit as st

from genre_core.runs import access, jobs


def is_shared() -> bool:
    """True when others can reach this app (non-loopback server address, or GENRE_SHARED=1)."""
    return access.shared_mode(st.get_option("server.address"))


def dataset_refusal(spec: str) -> str | None:
    """The one-line reason a dataset path is not allowed here, or None when it is (always None on localhost)."""
    if not is_shared():
        return None
    try:
        access.check_dataset_path(spec, access.data_roots())
    except ValueError as exc:
        return str(exc)
    return None


def allowed_datasets(specs: list[str]) -> list[str]:
    """The entries of `specs` that may be used here (all of them on localhost)."""
    return [spec for spec in specs if dataset_refusal(spec) is None]


def dataset_notice() -> None:
    """On a shared server, say where datasets may come from."""
    if is_shared():
        st.caption(f":material/lock: Shared server: this app accepts {access.describe_roots(access.data_roots())}.")


def queue_refusal() -> str | None:
    """On a shared server with GENRE_MAX_QUEUED jobs already waiting, the message that refuses another one."""
    if not is_shared():
        return None
    limit = access.max_queued()
    waiting = len(jobs.waiting_jobs())
    if waiting < limit:
        return None
    return (f"The queue is full: {waiting} jobs are already waiting (limit {limit}). Nothing was started; "
            "try again when one of them has started.")


@contextlib.contextmanager
def launch_limits() -> Iterator[None]:
    """Around a launch: on a shared server, `jobs.launch` refuses a job beyond the waiting-job limit."""
    with jobs.queue_limit(access.max_queued() if is_shared() else None):
        yield


def check_image_file(path: str) -> None:
    """On a shared server, refuse (ValueError) an image whose real location leaves the allowed folders."""
    if is_shared():
        access.check_file_inside_roots(path, access.data_roots())
