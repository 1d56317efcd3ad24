"""Distribution: the strategy the environment asks for, and the throwaway run copy of a non-chief worker.

TF_CONFIG naming several workers gives MultiWorkerMirroredStrategy (genre_core.util.cluster reads it);
several GPUs on this host give MirroredStrategy; otherwise the default strategy. Only the chief writes the
run folder; the other workers write to a temporary artifacts root.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from genre_core.runs import store
from genre_core.util.cluster import worker_count

_STRATEGY = None


def get_strategy():
    """The distribution strategy the environment asks for (created once per process, before other TF work)."""
    global _STRATEGY
    if _STRATEGY is not None:
        return _STRATEGY
    import tensorflow as tf

    if worker_count() > 1:
        _STRATEGY = tf.distribute.MultiWorkerMirroredStrategy()
    elif len(tf.config.list_physical_devices("GPU")) > 1:
        _STRATEGY = tf.distribute.MirroredStrategy()
    else:
        _STRATEGY = tf.distribute.get_strategy()
    return _STRATEGY


def worker_root() -> Path:
    """The throwaway artifacts root of a non-chief worker: $GENRE_WORKER_ARTIFACTS, else a new temp folder."""
    root = os.environ.get("GENRE_WORKER_ARTIFACTS")
    if not root:
        root = tempfile.mkdtemp(prefix="genre-worker-")
        os.environ["GENRE_WORKER_ARTIFACTS"] = root
    return Path(root).resolve()


def worker_run(run: store.Run) -> store.Run:
    """A non-chief worker's private copy of the run (in its throwaway root), so only the chief writes `run`."""
    root = worker_root()
    if root in run.path.parents:
        return run
    folder = root / "runs" / run.id
    folder.mkdir(parents=True, exist_ok=True)
    copy = store.Run(folder, "classifier")
    copy.write_config(run.config())
    return copy
