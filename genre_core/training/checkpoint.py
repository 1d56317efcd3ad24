"""Checkpoints of a classifier run: `checkpoint/` holds the last finished epoch (weights, optimizer state, and
state.json with the epoch, the best so far and the seed), so a resumed run continues its history; the best
weights so far are in `checkpoint/best.weights.h5`. Every file is written beside its place and renamed in.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

from genre_core.training.config import TrainConfig
from genre_core.training.loop import LoopState
from genre_core.util import fileio

CHECKPOINT_STATE = "state.json"
BEST_WEIGHTS = "best.weights.h5"


def save_model_atomically(model, path: Path) -> None:
    """model.save to a temporary .keras file beside `path`, then rename it into place."""
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    model.save(temporary)
    os.replace(temporary, path)


def save_weights_atomically(model, path: Path) -> None:
    """model.save_weights to a temporary .weights.h5 file, then rename it into place."""
    temporary = path.with_name(f".{os.getpid()}.tmp.weights.h5")
    model.save_weights(temporary)
    os.replace(temporary, path)


def save_checkpoint(folder: Path, model, optimizer, state: LoopState, config: TrainConfig) -> None:
    """Write checkpoint/: model weights, optimizer state, and state.json (epoch, best so far, seed)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_weights_atomically(model, folder / "model.weights.h5")
    values = {f"v{index}": np.asarray(variable.numpy()) for index, variable in enumerate(optimizer.variables)}
    temporary = folder / f".optimizer.{os.getpid()}.tmp.npz"
    with open(temporary, "wb") as handle:
        np.savez(handle, **values)
    os.replace(temporary, folder / "optimizer.npz")
    fileio.atomic_write_json(folder / CHECKPOINT_STATE, {
        "epoch": state.epoch,
        "best_monitor": state.best_monitor if math.isfinite(state.best_monitor) else None,
        "best_epoch": state.best_epoch,
        "epochs_without_improvement": state.epochs_without_improvement,
        "seed": config.seed,
        "history": state.history,
        "saved": time.time(),
    })


def restore_checkpoint(folder: Path, model, optimizer) -> LoopState:
    """Load checkpoint/ into the model and the (built) optimizer; return the loop state to continue from."""
    info = fileio.read_json(folder / CHECKPOINT_STATE)
    if not isinstance(info, dict) or "epoch" not in info:
        raise ValueError(f"{folder / CHECKPOINT_STATE}: not a training checkpoint")
    try:
        model.load_weights(folder / "model.weights.h5")
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder}: the checkpoint weights do not fit this model ({exc})") from None
    optimizer.build(model.trainable_variables)
    with np.load(folder / "optimizer.npz") as stored:
        if len(stored.files) != len(optimizer.variables):
            raise ValueError(f"{folder}: the optimizer state has {len(stored.files)} variables, "
                             f"the optimizer {len(optimizer.variables)}")
        for index, variable in enumerate(optimizer.variables):
            variable.assign(stored[f"v{index}"])
    best = info.get("best_monitor")
    return LoopState(
        epoch=int(info["epoch"]),
        best_monitor=float(best) if best is not None else math.inf,
        best_epoch=int(info.get("best_epoch", 0)),
        epochs_without_improvement=int(info.get("epochs_without_improvement", 0)),
        seed=int(info.get("seed", 0)),
        history=list(info.get("history", [])),
    )
