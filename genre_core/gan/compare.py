"""Compare GAN runs: one row per run (last and best fixed-space KID, recognisability, diversity, time, and the
settings in which the runs differ) and their per-epoch curves as one long table.

A GAN's last epoch is one draw from a chaotic trajectory (README, "GAN"): the same command can end anywhere
from the best to the worst of a setting, so settings are compared over several seeds. This module reads run
folders tolerantly (`store.RunFiles`): a missing or damaged file gives empty cells and a note in `problems`,
and never hides the other runs.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable

import numpy as np
import pandas as pd

from genre_core.gan import trainer
from genre_core.runs import store

COMPARISON_COLUMNS = ("run", "found", "genres", "data", "size", "seed", "epochs", "minutes", "kid_fixed",
                      "best_kid_fixed", "best_epoch", "kept_kid_fixed", "kept_epoch", "late_mean", "late_climb",
                      "recognised", "recognised_real", "diversity", "stripes", "differs", "problems")
CURVE_METRICS = ("kid_fixed", "kid_fixed_block3", "kid_fixed_block4", "kid_fixed_block5", "recognised",
                 "recognised_real", "diversity", "stripes", "kid_fixed_train", "kid", "kid_train", "d_loss", "g_loss",
                 "aug_p", "apa_p", "reconstruction_loss", "margin_patches", "margin_global")
# Settings that say what a run is rather than how it was set up, so "differs" leaves them out.
NOT_SETTINGS = {"kind", "created", "classes", "data", "genre", "genres", "conditional", "image_size", "seed", "judge"}


def _last(history: pd.DataFrame, column: str) -> float:
    """The last measured value of a history column (NaN when it was never measured)."""
    if column not in history.columns:
        return float("nan")
    values = pd.to_numeric(history[column], errors="coerce").dropna()
    return float(values.iloc[-1]) if len(values) else float("nan")


def _measured(kid: Iterable[float]) -> np.ndarray:
    """The measured (finite) values of a KID curve, in epoch order."""
    return np.asarray([value for value in kid if np.isfinite(value)], dtype=float)


def late_climb(kid: Iterable[float]) -> float:
    """How much a KID curve rose over the last third of its measured epochs: the sum of its rises from one
    measured epoch to the next over the last ceil(n / 3) such steps (0: it fell or held at every late epoch;
    NaN with fewer than two measurements). The issue's "falling steadily rather than wandering" as a number:
    a curve that ends at its low has 0, one that wanders late has the size of its wandering."""
    values = _measured(kid)
    if len(values) < 2:
        return float("nan")
    steps = np.diff(values)[-math.ceil((len(values) - 1) / 3):]
    return float(np.clip(steps, 0.0, None).sum())


def late_mean(kid: Iterable[float]) -> float:
    """The mean of a KID curve over its last third: its last ceil(n / 3) measured epochs (NaN with none). Where
    the last epoch is one draw from a wandering curve, this says where the run stood late, and how it compares
    with another run's (docs/gan-measurements.md, "A rising share for the whole-picture head")."""
    values = _measured(kid)
    if not len(values):
        return float("nan")
    return float(values[-math.ceil(len(values) / 3):].mean())


def _genres(config: dict, classes: list[str] | None) -> str:
    """'landscape' for an unconditional run; 'a, b, c' for a conditional one."""
    if classes:
        return ", ".join(classes)
    return str(config.get("genre") or ", ".join(config.get("genres") or []) or "")


def _kept(folder, history: pd.DataFrame, problems: list[str]) -> tuple[float, float]:
    """The fixed-space KID and the epoch of the generator the run kept as its best (generator_best.keras, what
    `gan sample --checkpoint best` draws): best.json's epoch (chosen by the run's best_by rule), else the last
    epoch; a damaged best.json is noted in `problems`."""
    epoch = None
    try:
        best = trainer.read_best(folder)
        epoch = int(best["epoch"]) if best else None
    except ValueError as exc:
        problems.append(str(exc))
    if epoch is None:
        if not len(history):
            return np.nan, np.nan
        epoch = int(history["epoch"].iloc[-1])
    kid = pd.to_numeric(history.loc[history["epoch"] == epoch, "kid_fixed"] if "kid_fixed" in history.columns
                        else pd.Series([], dtype=float), errors="coerce")
    return (float(kid.iloc[-1]) if len(kid) else np.nan), float(epoch)


def _row(files: store.RunFiles) -> tuple[dict[str, Any], dict]:
    """One run's comparison row (without `differs`) and its config."""
    config = files.config if isinstance(files.config, dict) else {}
    problems = [text for text in files.problems if text != f"{store.METRICS_FILE} missing"]  # GANs write none
    row: dict[str, Any] = {"run": files.run_id, "found": True, "genres": _genres(config, files.classes),
                           "data": os.path.basename(str(config.get("data", "")).rstrip("/")) or np.nan,
                           "size": config.get("image_size", np.nan), "seed": config.get("seed", np.nan)}
    history = files.history()
    if history is None or "epoch" not in history.columns or not len(history):
        if (files.path / store.HISTORY_FILE).exists():
            problems.append(f"{files.path / store.HISTORY_FILE}: unreadable")
        history = pd.DataFrame(columns=["epoch"])
    row["epochs"] = int(len(history))
    seconds = _last(history, "elapsed_seconds")
    row["minutes"] = seconds / 60.0 if np.isfinite(seconds) else np.nan
    for column in ("kid_fixed", "recognised", "recognised_real", "diversity", "stripes"):
        row[column] = _last(history, column)
    kid = pd.to_numeric(history.get("kid_fixed", pd.Series([], dtype=float)), errors="coerce")
    if kid.notna().any():
        best = int(kid.idxmin())
        row["best_kid_fixed"], row["best_epoch"] = float(kid[best]), int(history["epoch"].iloc[best])
    else:
        row["best_kid_fixed"], row["best_epoch"] = np.nan, np.nan
    row["kept_kid_fixed"], row["kept_epoch"] = _kept(files.path, history, problems)
    row["late_mean"] = late_mean(kid)
    row["late_climb"] = late_climb(kid)
    row["problems"] = "; ".join(dict.fromkeys(problems))
    return row, config


def compare_runs(runs: Iterable[Any]) -> pd.DataFrame:
    """One row per GAN run (COMPARISON_COLUMNS); `runs` are run ids or folders (or `store.Run`s). A run that
    cannot be opened gets `found` False and the reason in `problems`.

    `kid_fixed`, `recognised`, `recognised_real`, `diversity` and `stripes` are the last measured epoch's;
    `best_kid_fixed` and `best_epoch` the lowest KID over the run (which no rule could know to pick);
    `kept_kid_fixed` and `kept_epoch` that of the epoch the run kept as its best (best.json's, else the last; what
    `gan sample --checkpoint best` draws, while by default it draws the last); `late_mean` the mean KID and
    `late_climb` how much it rose over the run's last third (the functions `late_mean` and `late_climb`). `differs`
    lists, as key=value, the settings of this run's config.json that are not the same in every compared run (the
    data, genres, size and seed have columns)."""
    rows, configs = [], []
    for run in runs:
        try:
            folder = store.open_run(run, "gan").path
        except (FileNotFoundError, ValueError) as exc:
            rows.append({"run": str(getattr(run, "id", run)), "found": False, "problems": str(exc)})
            configs.append({})
            continue
        row, config = _row(store.RunFiles.read(folder))
        rows.append(row)
        configs.append(config)
    keys = sorted({key for config in configs for key in config} - NOT_SETTINGS)
    missing = object()
    varying = [key for key in keys if len({repr(config.get(key, missing)) for config in configs if config}) > 1]
    for row, config in zip(rows, configs):
        row["differs"] = ", ".join(f"{key}={config.get(key, '–')}" for key in varying) if config else ""
    frame = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
    for column in ("epochs", "minutes", "kid_fixed", "best_kid_fixed", "best_epoch", "kept_kid_fixed",
                   "kept_epoch", "late_mean", "late_climb",
                   "recognised", "recognised_real", "diversity", "stripes"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def curves(runs: Iterable[Any], metrics: Iterable[str] = CURVE_METRICS) -> pd.DataFrame:
    """Every run's per-epoch `metrics` as a long table: run, epoch, metric, value (unreadable runs and metrics a
    run did not measure are left out)."""
    parts = []
    for run in runs:
        try:
            files = store.RunFiles.read(store.open_run(run, "gan").path)
        except (FileNotFoundError, ValueError):
            continue
        history = files.history()
        if history is None or "epoch" not in history.columns or not len(history):
            continue
        present = [name for name in metrics if name in history.columns]
        long = history.melt(id_vars=["epoch"], value_vars=present, var_name="metric", value_name="value")
        long["value"] = pd.to_numeric(long["value"], errors="coerce")
        long = long.dropna(subset=["value"])
        long.insert(0, "run", files.run_id)
        parts.append(long)
    if not parts:
        return pd.DataFrame(columns=["run", "epoch", "metric", "value"])
    return pd.concat(parts, ignore_index=True)


def epoch_table(runs: Iterable[Any], names: Iterable[str] | None = None) -> str:
    """A Markdown table: one row per epoch, one column per run, cells 'fixed-space KID / recognised share'
    (as in docs/gan-measurements.md); `names` label the columns (default: the run ids)."""
    runs = list(runs)
    long = curves(runs, ("kid_fixed", "recognised"))
    ids = [store.open_run(run, "gan").path.name for run in runs]
    labels = list(names) if names is not None else ids
    if len(labels) != len(runs):
        raise ValueError(f"{len(labels)} names for {len(runs)} runs")
    epochs = sorted({int(epoch) for epoch in long["epoch"]})
    lines = ["| epoch | " + " | ".join(labels) + " |", "| --- " * (len(runs) + 1) + "|"]
    for epoch in epochs:
        cells = []
        for run_id in ids:
            mine = long[(long["run"] == run_id) & (long["epoch"] == epoch)].set_index("metric")["value"]
            if "kid_fixed" not in mine:
                cells.append("–")
                continue
            share = f" / {mine['recognised']:.0%}" if "recognised" in mine else ""
            cells.append(f"{mine['kid_fixed']:.3f}{share}")
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
