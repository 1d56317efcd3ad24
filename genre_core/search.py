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
- `tensorboard/trial-NNNN/`: per-epoch scalars of every trial (genre_core.tensorboard_log).

The feature pass runs once for the whole search (genre_core.embeddings caches it). Trials vary only the head
and how it trains, on those features, through `train.fit`'s `on_epoch_end` hook: each epoch reports the
validation score to Optuna (`trial.report`) and unpromising trials are pruned (`trial.should_prune`, median
rule). Selection uses the validation split only; the test split is never looked at by a trial. When the
trials are done, the best trial's full config becomes a normal classifier run (`train.execute`), which is the
only model scored on the test split.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from genre_core import fileio, runs

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
    from genre_core.config import TrainConfig

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
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"search space file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt JSON ({exc.msg} at line {exc.lineno})") from None
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
    from genre_core import models
    from genre_core.config import TrainConfig, recipe_values

    values = recipe_values(recipe) if recipe else {}
    values.update(overrides or {})
    values["data"] = data
    config = TrainConfig.from_dict(values)
    options = models.model_options(config)
    models.get_spec(config.model)
    if not (config.embedding_cache and models.uses_frozen_features(config.model, options)):
        raise ValueError(f"a search trains heads on cached features: model {config.model} with these options has "
                         "no frozen backbone (use a pretrained model, fine_tune_layers 0, embedding_cache on)")
    if config.balancing == "oversample":
        raise ValueError("a search cannot start from balancing 'oversample'; use none, class_weights or focal")
    return config


def create_search(data: str, trials: int, recipe: str | None = "cpu-15min", minutes: float | None = None,
                  space: dict | None = None, metric: str = "accuracy", overrides: dict | None = None):
    """Validate the settings and create a queued search run folder (not launched). Returns the Run."""
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"--trials must be a whole number >= 1, got {trials!r}")
    if minutes is not None and not minutes > 0:
        raise ValueError(f"--minutes must be more than 0, got {minutes}")
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    if data != "demo" and not Path(data).expanduser().exists():
        raise ValueError(f"dataset path {data} does not exist")
    base = base_config(data, recipe, overrides)
    space = parse_space(space)
    base_values = base.to_dict()
    base_values.pop("kind", None)
    settings = {
        "name": "search", "data": data, "recipe": recipe, "base": base_values, "space": space,
        "trials": trials, "epochs": trials, "minutes": minutes, "metric": metric, "seed": base.seed,
    }
    return runs.create_run(KIND, settings)


def start_search(data: str, trials: int, background: bool = True, progress: Progress | None = None, **options):
    """Create a search run and launch it as a background job (or run it here). Returns the Run."""
    from genre_core import jobs

    run = create_search(data, trials, **options)
    if background:
        jobs.launch(run)
        return run
    from genre_core import train

    with train.progress_to(progress) if progress is not None else _nothing():
        jobs.run_job(run)
    return run


class _nothing:
    """A context manager that does nothing (contextlib.nullcontext, without the import at module level)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ----------------------------------------------------------------------------------------------------------
# Reading a search (the app and the CLI)


def load_study(run):
    """The run's Optuna study, read from its journal (ValueError when the search has not started a trial)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    run = runs.open_run(run)
    journal = run.path / JOURNAL_FILE
    if not journal.exists():
        raise ValueError(f"search {run.id} has no study yet (its feature pass may still be running)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    return optuna.load_study(study_name=STUDY_NAME, storage=storage)


def trials_table(run):
    """trials.csv as a DataFrame (empty when no trial has finished)."""
    import pandas as pd

    path = runs.open_run(run).path / TRIALS_FILE
    if not path.exists():
        return pd.DataFrame(columns=["trial", "state", "value"])
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return pd.DataFrame(columns=["trial", "state", "value"])


def summary(run) -> dict:
    """search.json: best trial, best run, timing ({} before the first trial ends)."""
    return fileio.read_json(runs.open_run(run).path / SUMMARY_FILE, default={}) or {}


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


# ----------------------------------------------------------------------------------------------------------
# The executor


def execute(run, progress: Progress | None = None) -> dict:
    """Run (or resume) the search described by `run.config()` and write its folder; return its metrics."""
    import keras
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    from genre_core import models, tensorboard_log, train
    from genre_core.config import TrainConfig

    settings = run.config()
    try:
        base = TrainConfig.from_dict(settings["base"])
        space = parse_space(settings.get("space"))
        total_trials = int(settings["trials"])
        metric = settings.get("metric", "accuracy")
        direction = METRICS[metric]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"search {run.id}: bad config.json ({exc})") from None
    minutes = settings.get("minutes")
    writer = runs.ProgressWriter(run)
    progress = train._fan_out(writer, progress)
    record = summary(run)
    wall_started = time.monotonic()

    # Data and features, once for the whole search.
    strategy = train.get_strategy()
    feature_started = time.monotonic()
    size = base.size or models.get_spec(base.model).default_size
    base = base.replace(size=size)
    train.set_precision(base)
    progress({"stage": "prepare", "done": 0, "total": 1, "message": f"preparing {base.data} at {size} px"})
    data = train.prepare_data(base, size, progress)
    num_classes = len(data.classes)
    if num_classes < 2:
        raise ValueError(f"dataset {base.data} has {num_classes} genre; a classifier needs at least 2")
    if len(data.val_rows) == 0:
        raise ValueError(f"dataset {base.data}: the validation split is empty; a search selects by validation")
    run.write_classes(data.classes)
    options = models.model_options(base)
    weights = models.resolve_weights_option(base.model, base.weights)
    extractor = models.build_feature_extractor(base.model, size, weights, **options)
    identity = models.extractor_id(base.model, size, weights, options)
    from genre_core import embeddings

    cached = embeddings.compute_embeddings(
        data.cache, extractor, identity, flip=base.flip_features, batch_size=32, progress=progress,
        cancel_check=run.cancel_requested, jit_compile=base.xla, engine=base.feature_engine, notes=data.notes)
    features = np.asarray(cached.features)
    flipped = np.asarray(cached.flipped) if cached.flipped is not None else None
    del extractor
    feature_seconds = round(time.monotonic() - feature_started, 2)
    record.setdefault("feature_seconds", [])
    record["feature_seconds"].append(feature_seconds)
    record["notes"] = data.notes
    _write_summary(run, record)
    progress({"stage": "prepare", "done": 1, "total": 1,
              "message": f"features ready in {feature_seconds:.0f} s ({data.notes[-1] if data.notes else ''})"})

    # The study, resumed from its journal when the search ran before.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(run.path / JOURNAL_FILE)))
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction=direction, load_if_exists=True)
    retried = _requeue_interrupted(study)
    existing = len(study.trials)
    warmup = max(1, _lowest_epochs(space, base) // 4)
    study = optuna.create_study(
        study_name=STUDY_NAME, storage=storage, direction=direction, load_if_exists=True,
        # The sampler's seed moves on with the trials already run, so a resumed search does not redraw them.
        sampler=optuna.samplers.TPESampler(seed=base.seed + existing, n_startup_trials=min(8, total_trials)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup))
    recipe = {name: getattr(base, name) for name, spec in space.items() if isinstance(spec, dict)}
    if existing == 0 and all(in_space(spec, recipe[name]) for name, spec in space.items() if name in recipe):
        # Trial 0 is the starting recipe itself, so the search can only improve on it by validation.
        study.enqueue_trial(recipe, user_attrs={"recipe": True})
    if retried:
        progress({"stage": "resume", "done": 0, "total": 1,
                  "message": f"resuming: trial(s) {', '.join(map(str, retried))} will run again"})

    done_states = (TrialState.COMPLETE, TrialState.PRUNED)
    cancelled = {"flag": False}

    def finished_count() -> int:
        return len(study.get_trials(deepcopy=False, states=done_states))

    def objective(trial) -> float:
        params = suggest(trial, space)
        config = base.replace(**params)
        number = trial.number
        trial_started = time.monotonic()
        board = run.path / tensorboard_log.FOLDER / f"trial-{number:04d}"
        last_scores: dict = {}

        def on_epoch(row: dict) -> None:
            tensorboard_log.log_scalars(board, row["epoch"], tensorboard_log.classifier_scalars(row))
            value = last_scores.get(metric)
            if value is not None:
                trial.report(float(value), row["epoch"])
            progress({"stage": "batch", "done": row["epoch"], "total": config.epochs,
                      "message": f"trial {number + 1} ({finished_count()}/{total_trials} done), epoch "
                                 f"{row['epoch']}/{config.epochs}: val accuracy {row['val_accuracy']:.3f}"})
            if value is not None and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {row['epoch']} (val {metric} {value:.4f})")

        try:
            result = train_head(config, data, features, flipped, num_classes, strategy, on_epoch,
                                last_scores, cancel_requested=run.cancel_requested)
        except optuna.TrialPruned:
            trial.set_user_attr("seconds", round(time.monotonic() - trial_started, 2))
            for key in ("accuracy", "macro_f1", "loss"):
                trial.set_user_attr(f"val_{key}", last_scores.get(key))
            raise
        finally:
            tensorboard_log.close(board)
            keras.backend.clear_session()
        if result is None:
            # Cancelled: the trial is marked so that a resumed search runs it again.
            trial.set_user_attr("interrupted", True)
            cancelled["flag"] = True
            raise runs.Cancelled(f"search {run.id} was cancelled during trial {number}")
        trial.set_user_attr("seconds", round(time.monotonic() - trial_started, 2))
        for key in ("accuracy", "macro_f1", "loss"):
            trial.set_user_attr(f"val_{key}", result["val"][key])
        trial.set_user_attr("epochs_run", result["epochs_run"])
        trial.set_user_attr("best_epoch", result["best_epoch"])
        value = result["val"][metric]
        if value is None or not math.isfinite(value):
            raise optuna.TrialPruned(f"val {metric} is not a number")
        return float(value)

    def after_trial(study, frozen) -> None:
        write_trials(run, study)
        best = _best_or_none(study)
        best_text = (f"; best {best.value:.4f} (trial {best.number})" if best is not None else "")
        outcome = f"{frozen.value:.4f}" if frozen.value is not None else frozen.state.name.lower()
        progress({"stage": "epoch", "done": finished_count(), "total": total_trials,
                  "message": f"trial {frozen.number} {outcome}{best_text}"})
        if run.cancel_requested():
            study.stop()

    remaining = total_trials - finished_count()
    timeout = None
    if minutes:
        used = sum(_trial_seconds(trial) for trial in study.trials)
        timeout = max(0.0, float(minutes) * 60.0 - used)
    trials_started = time.monotonic()
    progress({"stage": "epoch", "done": finished_count(), "total": total_trials,
              "message": f"{finished_count()} of {total_trials} trials done; {remaining} to run"})
    if remaining > 0 and (timeout is None or timeout > 0):
        try:
            study.optimize(objective, n_trials=remaining, timeout=timeout, callbacks=[after_trial],
                           gc_after_trial=True)
        except runs.Cancelled:
            write_trials(run, study)
            raise
    write_trials(run, study)
    if run.cancel_requested() or cancelled["flag"]:
        raise runs.Cancelled(f"search {run.id} was cancelled")
    record["trials_seconds"] = round(sum(_trial_seconds(trial) for trial in study.trials), 2)
    record["trials_seconds_this_job"] = round(time.monotonic() - trials_started, 2)
    best = _best_or_none(study)
    if best is None:
        raise ValueError(f"search {run.id}: no trial finished (all {len(study.trials)} were pruned or failed)")
    record.update({
        "best_trial": best.number, "best_value": best.value, "metric": metric, "best_params": best.params,
        "best_val": {key: best.user_attrs.get(f"val_{key}") for key in ("accuracy", "macro_f1", "loss")},
        "trials_finished": finished_count(), "trials_pruned": len(study.get_trials(states=(TrialState.PRUNED,))),
    })
    _write_summary(run, record)

    # The best trial becomes a normal run folder; only it is scored on the test split.
    best_config = base.replace(**suggest_fixed(space), **best.params)
    best_run = _run_best(run, record, best_config, progress)
    best_metrics = best_run.metrics()
    record["best_run"] = best_run.id
    record["wall_seconds_this_job"] = round(time.monotonic() - wall_started, 2)
    _write_summary(run, record)
    metrics = {
        "train": best_metrics.get("train"), "val": best_metrics.get("val"), "test": best_metrics.get("test"),
        "best_trial": best.number, "best_value": best.value, "metric": metric, "best_params": best.params,
        "best_run": best_run.id, "feature_seconds": record["feature_seconds"][0],
        "trials_seconds": record["trials_seconds"], "wall_seconds": record["wall_seconds_this_job"],
    }
    run.write_metrics(metrics)
    test = best_metrics.get("test") or {}
    test_text = (f"; test accuracy {test['accuracy']:.3f}, macro-F1 {test['macro_f1']:.3f}"
                 if test.get("accuracy") is not None else "")
    message = (f"finished: best trial {best.number} (val {metric} {best.value:.4f}){test_text}; run {best_run.id}")
    run.update_status(state="finished", epoch=finished_count(), message=message, eta_seconds=0)
    progress({"stage": "done", "done": 1, "total": 1, "message": message})
    return metrics


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


def train_head(config, data, features: np.ndarray, flipped: np.ndarray | None, num_classes: int, strategy,
               on_epoch: Callable[[dict], None], last_scores: dict,
               cancel_requested: Callable[[], bool] | None = None) -> dict | None:
    """Train one head on cached features with `train.fit`; return its validation scores (None if cancelled).

    `last_scores` is refreshed with the validation scores of every epoch before `on_epoch(row)` runs, so a
    pruning hook can report any metric. Nothing here reads the test split."""
    from genre_core import train

    labels = data.cache.labels
    train_rows = data.train_rows
    head = train.new_feature_head(config, features, flipped, train_rows, num_classes, strategy)
    steps_per_epoch = max(1, math.ceil(len(train_rows) / (config.batch_size * strategy.num_replicas_in_sync)))
    with strategy.scope():
        optimizer = train.make_optimizer(config, total_steps=steps_per_epoch * config.epochs)

    def make_dataset(epoch: int, context):
        return train.feature_stream(config, features, flipped, labels, train_rows, strategy, epoch, context)

    val_rows = data.val_rows

    def val_probabilities() -> np.ndarray:
        # Scored as the kept model will output them: with the config's logit adjustment applied.
        return train.adjusted_probabilities(config, train.predict_probabilities(head, features[val_rows], 256),
                                            labels[train_rows], num_classes)

    def evaluate_val():
        result = train.scores(labels[val_rows], val_probabilities(), num_classes)
        last_scores.clear()
        last_scores.update(result)
        return result["loss"], result["accuracy"]

    def progress(event: dict) -> None:
        runs.beat()

    result = train.fit(head, optimizer, make_dataset, steps_per_epoch, config, num_classes, strategy,
                       evaluate_val=evaluate_val, class_weight=train.class_weight_vector(config, data),
                       on_epoch_end=on_epoch, cancel_requested=cancel_requested, progress=progress)
    if result.cancelled:
        return None
    val = train.scores(labels[val_rows], val_probabilities(), num_classes)
    return {"val": val, "epochs_run": result.state.epoch, "best_epoch": result.state.best_epoch}


def _run_best(run, record: dict, config, progress: Progress):
    """Train the best trial's config as a normal classifier run (resumed if a previous job left it unfinished)."""
    from genre_core import train

    best_run = None
    if record.get("best_run"):
        try:
            best_run = runs.open_run(record["best_run"], kind="classifier")
        except (FileNotFoundError, ValueError):
            best_run = None
    if best_run is not None and best_run.status().get("state") == "finished":
        return best_run
    if best_run is None or best_run.config().get("data") != config.data:
        values = config.to_dict()
        values.pop("kind", None)
        best_run = runs.create_run("classifier", values)
        record["best_run"] = best_run.id
        _write_summary(run, record)
        fileio.atomic_write_text(best_run.log_path,
                                 f"[{runs.now_iso()}] the best trial ({record['best_trial']}) of search {run.id}\n")
    else:
        values = best_run.config()
        values["resume"] = True
        best_run.write_config(values)
        best_run.clear_cancel()
    best_run.update_status(state="running", pid=os.getpid(), pid_start=runs.process_start_time(os.getpid()),
                           started_at=runs.now_iso(), heartbeat=runs.now_iso(), error=None,
                           stall_seconds=runs.stall_seconds("classifier"),
                           message=f"training the best trial of search {run.id}")

    def relay(event: dict) -> None:
        if event.get("stage") == "epoch":
            progress({"stage": "best", "done": event.get("done"), "total": event.get("total"),
                      "message": f"best trial's run {best_run.id}: {event.get('message', '')}"})
        else:
            runs.beat()

    try:
        train.execute(best_run, progress=relay)
    except runs.Cancelled:
        best_run.update_status(state="cancelled", message="cancelled with its search", finished_at=runs.now_iso())
        raise
    except Exception as exc:
        best_run.update_status(state="failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                               message="failed", finished_at=runs.now_iso())
        raise
    best_run.update_status(finished_at=runs.now_iso())
    return best_run


def _requeue_interrupted(study) -> list[int]:
    """Mark trials left running by a killed job as failed and queue their parameters again (once each).

    Returns the numbers of the trials that will run again. Finished trials are never repeated."""
    from optuna.trial import TrialState

    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    already = {trial.user_attrs.get("retry_of") for trial in trials}
    retried = []
    for trial in trials:
        if trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted") and trial.number not in already:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
            retried.append(trial.number)
    return retried


def _best_or_none(study):
    """study.best_trial, or None while no trial has completed."""
    try:
        return study.best_trial
    except ValueError:
        return None


def _trial_seconds(trial) -> float:
    """Seconds a finished trial took (0 for one still running or waiting)."""
    if trial.datetime_start is None or trial.datetime_complete is None:
        return 0.0
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def _lowest_epochs(space: dict, base) -> int:
    """The fewest epochs a trial can run (for the pruner's warm-up)."""
    spec = space.get("epochs", base.epochs)
    if isinstance(spec, dict):
        return int(spec["low"]) if spec["type"] != "categorical" else int(min(spec["choices"]))
    return int(spec)


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


def _write_summary(run, record: dict) -> None:
    fileio.atomic_write_json(run.path / SUMMARY_FILE, record)
