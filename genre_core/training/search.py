"""Hyper-parameter search with Optuna over the head trained on cached frozen-backbone features.

A search is a background job of kind "search" with its own run folder under `artifacts/search_runs/`:

- `config.json`: the base `TrainConfig` (a recipe plus the user's data, size, splits and seed) under "base",
  the search space, the number of trials, the time budget and the metric;
- `study.journal`: Optuna's file-based journal storage (no database server); every trial's parameters,
  intermediate values and outcome. A search killed outright (SIGKILL) resumes from it: finished trials are
  kept, the trial that was running is retried with the same parameters;
- `trials.csv`: one row per trial (number, state, value, parameters, validation scores, seconds);
- `search.json`: the best trial, the best trial's run, and where the time went (feature pass, trials);
- `metrics.json`: the best run's train/val/test scores plus the best trial and timing;
- `tensorboard/trial-NNNN/`: per-epoch scalars of every trial (genre_core.training.tensorboard_log).

This module defines a search (its space, settings and files) and reads one; the job itself is
genre_core.training.search_job. The feature pass runs once for the whole search (genre_core.models.embeddings
caches it). Trials vary only the head and how it trains, on those features (genre_core.training.features
.train_head, through the loop's on_epoch_end hook): each epoch reports the validation score to Optuna and
unpromising trials are pruned (median rule). Selection uses the validation split only; the test split is never
looked at by a trial. When the trials are done, the best trial's full config becomes a normal classifier run,
the only model scored on the test split.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from genre_core.models import zoo
from genre_core.runs import store
from genre_core.training.config import recipe_values, TrainConfig
from genre_core.util import fileio


KIND = "search"
JOURNAL_FILE = "study.journal"
TRIALS_FILE = "trials.csv"
SUMMARY_FILE = "search.json"
STUDY_NAME = "search"
METRICS = {"accuracy": "maximize", "macro_f1": "maximize", "loss": "minimize"}

# What a trial may change: the head and how it trains. Everything that changes the features (model, size,
# layers, pooling, flipped copies) is fixed for the whole search, since the feature pass is done once.
SEARCHABLE = ("learning_rate", "weight_decay", "dropout", "head_units", "balancing", "label_smoothing",
              "feature_transform", "lr_schedule", "epochs", "batch_size", "optimizer", "focal_gamma")
# The default space around the cpu-15min recipe (README "Results on real paintings"). A parameter given as
# a plain value is fixed; a dict is searched: {"type": "float", "low", "high", "log"}, {"type": "int", "low",
# "high", "step"} or {"type": "categorical", "choices": [...]}.
DEFAULT_SPACE = {
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "weight_decay": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "head_units": {"type": "categorical", "choices": [0, 256, 512]},
    "balancing": {"type": "categorical", "choices": ["none", "class_weights"]},
    "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
    "feature_transform": {"type": "categorical", "choices": ["none", "sqrt"]},
    "lr_schedule": {"type": "categorical", "choices": ["constant", "cosine"]},
    "epochs": {"type": "int", "low": 30, "high": 150, "step": 10},
}

Progress = Callable[[dict], None]


# ----------------------------------------------------------------------------------------------------------
# The search space


def parse_space(space: dict | None) -> dict:
    """Validate a search space (None: DEFAULT_SPACE) and return it; ValueError naming the bad entry."""
    if space is None:
        return json.loads(json.dumps(DEFAULT_SPACE))
    if not isinstance(space, dict) or not space:
        raise ValueError("a search space must be a non-empty JSON object of parameter -> range or value")

    checked = {}
    for name, spec in space.items():
        if name not in SEARCHABLE:
            raise ValueError(f"search space: {name!r} cannot be searched (the feature pass is fixed for the "
                             f"whole search); searchable: {', '.join(SEARCHABLE)}")
        values = [spec]
        if isinstance(spec, dict):
            kind = spec.get("type")
            if kind in ("float", "int"):
                low, high = spec.get("low"), spec.get("high")
                if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or low > high:
                    raise ValueError(f"search space: {name} needs numbers low <= high, got {low!r}, {high!r}")
                if spec.get("log") and low <= 0:
                    raise ValueError(f"search space: {name} has log=true, so low must be > 0")
                if kind == "int" and (int(low) != low or int(high) != high):
                    raise ValueError(f"search space: {name} is an int range; low and high must be whole numbers")
                values = [low, high]
            elif kind == "categorical":
                values = spec.get("choices")
                if not isinstance(values, list) or not values:
                    raise ValueError(f"search space: {name} needs a non-empty list of choices")
            else:
                raise ValueError(f"search space: {name} has type {kind!r}; use float, int or categorical")
        for value in values:
            if name == "balancing" and value == "oversample":
                raise ValueError("search space: balancing 'oversample' changes the training rows; search "
                                 "none, class_weights or focal")
            try:
                TrainConfig().replace(**{name: int(value) if name in ("epochs", "head_units", "batch_size")
                                         and isinstance(value, float) and value.is_integer() else value})
            except (TypeError, ValueError) as exc:
                raise ValueError(f"search space: {name}={value!r} is not a valid value ({exc})") from None
        checked[name] = spec
    return checked


def read_space_file(path: str | os.PathLike) -> dict:
    """Read and validate a search-space JSON file (ValueError naming the file)."""
    values = fileio.read_json_file(path, "search space file")
    try:
        return parse_space(values)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def suggest(trial, space: dict) -> dict:
    """Draw one set of TrainConfig overrides from `space` through an Optuna trial."""
    params = {}
    for name, spec in space.items():
        if not isinstance(spec, dict):
            params[name] = spec
        elif spec["type"] == "float":
            params[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]),
                                               log=bool(spec.get("log", False)))
        elif spec["type"] == "int":
            params[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]),
                                             step=int(spec.get("step", 1)), log=bool(spec.get("log", False)))
        else:
            params[name] = trial.suggest_categorical(name, list(spec["choices"]))
    return params


# ----------------------------------------------------------------------------------------------------------
# Creating and starting a search


def base_config(data: str, recipe: str | None = "cpu-15min", overrides: dict | None = None):
    """The TrainConfig every trial starts from: a recipe, the data, then `overrides` (size, seed, splits...)."""
    values = recipe_values(recipe) if recipe else {}
    values.update(overrides or {})
    values["data"] = data
    config = TrainConfig.from_dict(values)
    options = zoo.model_options(config)
    zoo.get_spec(config.model)
    if not (config.embedding_cache and zoo.uses_frozen_features(config.model, options)):
        raise ValueError(f"a search trains heads on cached features: model {config.model} with these options has "
                         "no frozen backbone (use a pretrained model, fine_tune_layers 0, embedding_cache on)")
    if config.balancing == "oversample":
        raise ValueError("a search cannot start from balancing 'oversample'; use none, class_weights or focal")
    return config


def new_run_config(settings: dict) -> tuple[dict, None]:
    """Check a new search's settings before its folder is made (the "search" kind's new_run) and return its
    config.json: "data" and "trials" (required), "recipe", "minutes", "space", "metric" and "overrides"."""
    settings = dict(settings)
    unknown = set(settings) - {"data", "trials", "recipe", "minutes", "space", "metric", "overrides"}
    if unknown:
        raise ValueError(f"unknown search setting(s): {', '.join(sorted(unknown))}")
    if "data" not in settings or "trials" not in settings:
        raise ValueError("a search needs \"data\" and \"trials\"")
    data, trials = settings["data"], settings["trials"]
    recipe = settings.get("recipe", "cpu-15min")
    minutes, metric = settings.get("minutes"), settings.get("metric", "accuracy")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"--trials must be a whole number >= 1, got {trials!r}")
    if minutes is not None and not minutes > 0:
        raise ValueError(f"--minutes must be more than 0, got {minutes}")
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    if data != "demo" and not Path(data).expanduser().exists():
        raise ValueError(f"dataset path {data} does not exist")
    base = base_config(data, recipe, settings.get("overrides"))
    base_values = base.to_dict()
    base_values.pop("kind", None)
    return {
        "name": "search", "data": data, "recipe": recipe, "base": base_values,
        "space": parse_space(settings.get("space")), "trials": trials, "epochs": trials, "minutes": minutes,
        "metric": metric, "seed": base.seed,
    }, None


def create_search(data: str, trials: int, recipe: str | None = "cpu-15min", minutes: float | None = None,
                  space: dict | None = None, metric: str = "accuracy", overrides: dict | None = None):
    """Validate the settings and create a queued search run folder without starting it. Returns the Run;
    `genre_core.runs.jobs.start("search", settings)` creates and starts one."""
    settings, _classes = new_run_config({"data": data, "trials": trials, "recipe": recipe, "minutes": minutes,
                                         "space": space, "metric": metric, "overrides": overrides})
    return store.create_run(KIND, settings)


# ----------------------------------------------------------------------------------------------------------
# Reading a search (the app and the CLI)


def load_study(run):
    """The run's Optuna study, read from its journal (ValueError when the search has not started a trial)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    run = store.open_run(run)
    journal = run.path / JOURNAL_FILE
    if not journal.exists():
        raise ValueError(f"search {run.id} has no study yet (its feature pass may still be running)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    return optuna.load_study(study_name=STUDY_NAME, storage=storage)


def trials_table(run):
    """trials.csv as a DataFrame (empty when no trial has finished)."""
    import pandas as pd

    path = store.open_run(run).path / TRIALS_FILE
    if not path.exists():
        return pd.DataFrame(columns=["trial", "state", "value"])
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return pd.DataFrame(columns=["trial", "state", "value"])


def summary(run) -> dict:
    """search.json: best trial, best run, timing ({} before the first trial ends)."""
    return fileio.read_json(store.open_run(run).path / SUMMARY_FILE, default={}) or {}


def figures(run) -> dict:
    """Optuna's Plotly figures of a search: optimization history, parameter importances, parallel coordinates.

    Importances need at least two finished trials with varied parameters; a figure that cannot be drawn
    yet is left out (its key maps to the reason, a string)."""
    import optuna
    from optuna.trial import TrialState

    study = load_study(run)
    finished = [trial for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    out: dict[str, Any] = {}
    if not finished:
        reason = "no trial has finished yet"
        return {"history": reason, "importances": reason, "parallel": reason}
    out["history"] = optuna.visualization.plot_optimization_history(study)
    try:
        if len(finished) < 2:
            raise ValueError("parameter importances need at least two finished trials")
        out["importances"] = optuna.visualization.plot_param_importances(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        out["importances"] = str(exc)
    out["parallel"] = optuna.visualization.plot_parallel_coordinate(study)
    return out


def in_space(spec, value) -> bool:
    """True when `value` is one the searched parameter `spec` can take."""
    if not isinstance(spec, dict):
        return spec == value
    if spec["type"] == "categorical":
        return value in spec["choices"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not spec["low"] <= value <= spec["high"]:
        return False
    step = spec.get("step")
    return spec["type"] == "float" or not step or (value - spec["low"]) % step == 0


def suggest_fixed(space: dict) -> dict:
    """The fixed (non-searched) values of a space."""
    return {name: spec for name, spec in space.items() if not isinstance(spec, dict)}


def write_trials(run, study) -> None:
    """Write trials.csv: one row per trial with its state, value, parameters and validation scores."""
    import pandas as pd

    rows = []
    for trial in study.get_trials(deepcopy=False):
        row = {"trial": trial.number, "state": trial.state.name.lower(), "value": trial.value}
        row.update({f"param_{name}": value for name, value in trial.params.items()})
        for key in ("val_accuracy", "val_macro_f1", "val_loss", "epochs_run", "best_epoch", "seconds", "retry_of"):
            row[key] = trial.user_attrs.get(key)
        if trial.state.name == "PRUNED" and trial.last_step is not None:
            row["epochs_run"] = trial.last_step
        rows.append(row)
    fileio.atomic_write_csv(run.path / TRIALS_FILE, pd.DataFrame(rows))


def write_summary(run, record: dict) -> None:
    """Write search.json."""
    fileio.atomic_write_json(run.path / SUMMARY_FILE, record)
