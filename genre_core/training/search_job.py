"""The search job: one feature pass, then Optuna trials of heads on the cached features, then the best trial
trained as a normal classifier run (see genre_core.training.search for the run folder it writes).

Trials train through the one loop (genre_core.training.loop) with its `on_epoch_end` hook: each epoch reports
the validation score to Optuna (`trial.report`) and unpromising trials are pruned (`trial.should_prune`,
median rule). Selection uses the validation split only; only the best trial's run is scored on the test split.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable


from genre_core.models import zoo
from genre_core.runs import heartbeat, store
from genre_core.training import executor, features, tensorboard_log
from genre_core.training.config import TrainConfig
from genre_core.training.distribute import get_strategy
from genre_core.training.loop import set_precision
from genre_core.training.run_data import prepare_data
from genre_core.training.search import (METRICS, JOURNAL_FILE, STUDY_NAME, in_space, parse_space, suggest,
                                        suggest_fixed, summary, write_summary, write_trials)
from genre_core.util import fileio

Progress = Callable[[dict], None]


@dataclass
class _Settings:
    """A search's config.json, read and checked."""

    base: TrainConfig
    space: dict
    trials: int
    metric: str
    minutes: float | None


def execute(run, progress: Progress | None = None) -> dict:
    """Run (or resume) the search described by `run.config()` and write its folder; return its metrics."""
    settings = _read_settings(run)
    with store.recording_progress(run, progress) as report:
        started = time.monotonic()
        record = summary(run)
        base, data, cached, flipped = _feature_pass(run, settings.base, record, report)
        study = _open_study(run, settings, base, report)
        objective = _Objective(run, settings, base, data, cached, flipped, report)
        seconds = _run_trials(run, settings, study, objective, report)
        best = _record_trials(run, study, record, settings, seconds)
        return _train_best(run, settings, base, best, record, started, report)


def _read_settings(run) -> _Settings:
    """The search's settings from config.json (ValueError naming the problem)."""
    config = run.config()
    try:
        settings = _Settings(base=TrainConfig.from_dict(config["base"]), space=parse_space(config.get("space")),
                             trials=int(config["trials"]), metric=config.get("metric", "accuracy"),
                             minutes=config.get("minutes"))
        METRICS[settings.metric]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"search {run.id}: bad config.json ({exc})") from None
    return settings


def _feature_pass(run, base: TrainConfig, record: dict, progress: Progress):
    """Data and cached features, once for the whole search: (base with its size, data, features, flipped)."""
    feature_started = time.monotonic()
    size = base.size or zoo.get_spec(base.model).default_size
    base = base.replace(size=size)
    set_precision(base)
    progress({"stage": "prepare", "done": 0, "total": 1, "message": f"preparing {base.data} at {size} px"})
    data = prepare_data(base, size, progress)
    if len(data.classes) < 2:
        raise ValueError(f"dataset {base.data} has {len(data.classes)} genre; a classifier needs at least 2")
    if len(data.val_rows) == 0:
        raise ValueError(f"dataset {base.data}: the validation split is empty; a search selects by validation")
    run.write_classes(data.classes)
    _extractor, cached, flipped = features.cached_features(run, base, data, get_strategy(), progress)
    feature_seconds = round(time.monotonic() - feature_started, 2)
    record.setdefault("feature_seconds", []).append(feature_seconds)
    record["notes"] = data.notes
    write_summary(run, record)
    progress({"stage": "prepare", "done": 1, "total": 1,
              "message": f"features ready in {feature_seconds:.0f} s ({data.notes[-1] if data.notes else ''})"})
    return base, data, cached, flipped


def _open_study(run, settings: _Settings, base: TrainConfig, progress: Progress):
    """The study, resumed from its journal when the search ran before; trial 0 of a new one is the recipe."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(run.path / JOURNAL_FILE)))
    direction = METRICS[settings.metric]
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction=direction, load_if_exists=True)
    retried = _requeue_interrupted(study)
    existing = len(study.trials)
    warmup = max(1, _lowest_epochs(settings.space, base) // 4)
    study = optuna.create_study(
        study_name=STUDY_NAME, storage=storage, direction=direction, load_if_exists=True,
        # The sampler's seed moves on with the trials already run, so a resumed search does not redraw them.
        sampler=optuna.samplers.TPESampler(seed=base.seed + existing, n_startup_trials=min(8, settings.trials)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup))
    space = settings.space
    recipe = {name: getattr(base, name) for name, spec in space.items() if isinstance(spec, dict)}
    if existing == 0 and all(in_space(spec, recipe[name]) for name, spec in space.items() if name in recipe):
        # Trial 0 is the starting recipe itself, so the search can only improve on it by validation.
        study.enqueue_trial(recipe, user_attrs={"recipe": True})
    if retried:
        progress({"stage": "resume", "done": 0, "total": 1,
                  "message": f"resuming: trial(s) {', '.join(map(str, retried))} will run again"})
    return study


def _finished_count(study) -> int:
    """Trials that completed or were pruned."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


class _Objective:
    """One trial: a head with the trial's parameters, trained on the cached features and scored on validation."""

    def __init__(self, run, settings: _Settings, base: TrainConfig, data, cached, flipped, progress: Progress):
        self.run, self.settings, self.base, self.data = run, settings, base, data
        self.cached, self.flipped, self.progress = cached, flipped, progress
        self.cancelled = False

    def __call__(self, trial) -> float:
        import keras
        import optuna

        config = self.base.replace(**suggest(trial, self.settings.space))
        started = time.monotonic()
        board = self.run.path / tensorboard_log.FOLDER / f"trial-{trial.number:04d}"
        last_scores: dict = {}
        try:
            result = features.train_head(config, self.data, self.cached, self.flipped, len(self.data.classes),
                                get_strategy(), self._on_epoch(trial, config, board, last_scores), last_scores,
                                cancel_requested=self.run.cancel_requested)
        except optuna.TrialPruned:
            _set_trial_scores(trial, started, last_scores)
            raise
        finally:
            tensorboard_log.close(board)
            keras.backend.clear_session()
        if result is None:
            # Cancelled: the trial is marked so that a resumed search runs it again.
            trial.set_user_attr("interrupted", True)
            self.cancelled = True
            raise store.Cancelled(f"search {self.run.id} was cancelled during trial {trial.number}")
        _set_trial_scores(trial, started, result["val"])
        trial.set_user_attr("epochs_run", result["epochs_run"])
        trial.set_user_attr("best_epoch", result["best_epoch"])
        value = result["val"][self.settings.metric]
        if value is None or not math.isfinite(value):
            raise optuna.TrialPruned(f"val {self.settings.metric} is not a number")
        return float(value)

    def _on_epoch(self, trial, config: TrainConfig, board, last_scores: dict) -> Callable[[dict], None]:
        """The loop's on_epoch_end hook of one trial: TensorBoard, report to Optuna, progress, prune."""
        import optuna

        metric, total = self.settings.metric, self.settings.trials

        def on_epoch(row: dict) -> None:
            tensorboard_log.log_scalars(board, row["epoch"], tensorboard_log.classifier_scalars(row))
            value = last_scores.get(metric)
            if value is not None:
                trial.report(float(value), row["epoch"])
            self.progress({"stage": "batch", "done": row["epoch"], "total": config.epochs,
                           "message": f"trial {trial.number + 1} ({_finished_count(trial.study)}/{total} done), "
                                      f"epoch {row['epoch']}/{config.epochs}: val accuracy {row['val_accuracy']:.3f}"})
            if value is not None and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {row['epoch']} (val {metric} {value:.4f})")

        return on_epoch


def _set_trial_scores(trial, started: float, scores: dict) -> None:
    """Record a trial's time and validation scores as its user attributes (trials.csv reads them)."""
    trial.set_user_attr("seconds", round(time.monotonic() - started, 2))
    for key in ("accuracy", "macro_f1", "loss"):
        trial.set_user_attr(f"val_{key}", scores.get(key))


def _run_trials(run, settings: _Settings, study, objective: _Objective, progress: Progress) -> float:
    """Run the trials still to do, within the time budget; trials.csv is rewritten after each. Returns the
    seconds this job spent on trials."""
    def after_trial(study, frozen) -> None:
        write_trials(run, study)
        best = _best_or_none(study)
        best_text = (f"; best {best.value:.4f} (trial {best.number})" if best is not None else "")
        outcome = f"{frozen.value:.4f}" if frozen.value is not None else frozen.state.name.lower()
        progress({"stage": "epoch", "done": _finished_count(study), "total": settings.trials,
                  "message": f"trial {frozen.number} {outcome}{best_text}"})
        if run.cancel_requested():
            study.stop()

    remaining = settings.trials - _finished_count(study)
    timeout = None
    if settings.minutes:
        timeout = max(0.0, float(settings.minutes) * 60.0 - sum(_trial_seconds(trial) for trial in study.trials))
    started = time.monotonic()
    progress({"stage": "epoch", "done": _finished_count(study), "total": settings.trials,
              "message": f"{_finished_count(study)} of {settings.trials} trials done; {remaining} to run"})
    if remaining > 0 and (timeout is None or timeout > 0):
        try:
            study.optimize(objective, n_trials=remaining, timeout=timeout, callbacks=[after_trial],
                           gc_after_trial=True)
        except store.Cancelled:
            write_trials(run, study)
            raise
    write_trials(run, study)
    if run.cancel_requested() or objective.cancelled:
        raise store.Cancelled(f"search {run.id} was cancelled")
    return time.monotonic() - started


def _record_trials(run, study, record: dict, settings: _Settings, seconds_this_job: float):
    """Write the trials' outcome to search.json; return the best trial (ValueError when none finished)."""
    from optuna.trial import TrialState

    record["trials_seconds"] = round(sum(_trial_seconds(trial) for trial in study.trials), 2)
    record["trials_seconds_this_job"] = round(seconds_this_job, 2)
    best = _best_or_none(study)
    if best is None:
        raise ValueError(f"search {run.id}: no trial finished (all {len(study.trials)} were pruned or failed)")
    record.update({
        "best_trial": best.number, "best_value": best.value, "metric": settings.metric, "best_params": best.params,
        "best_val": {key: best.user_attrs.get(f"val_{key}") for key in ("accuracy", "macro_f1", "loss")},
        "trials_finished": _finished_count(study),
        "trials_pruned": len(study.get_trials(states=(TrialState.PRUNED,))),
    })
    write_summary(run, record)
    return best


def _train_best(run, settings: _Settings, base: TrainConfig, best, record: dict, started: float,
                progress: Progress) -> dict:
    """Train the best trial as a normal run folder (the only model scored on the test split); write the
    search's metrics.json and final status and return the metrics."""
    best_config = base.replace(**suggest_fixed(settings.space), **best.params)
    best_run = _run_best(run, record, best_config, progress)
    best_metrics = best_run.metrics()
    record["best_run"] = best_run.id
    record["wall_seconds_this_job"] = round(time.monotonic() - started, 2)
    write_summary(run, record)
    metrics = {
        "train": best_metrics.get("train"), "val": best_metrics.get("val"), "test": best_metrics.get("test"),
        "best_trial": best.number, "best_value": best.value, "metric": settings.metric,
        "best_params": best.params, "best_run": best_run.id, "feature_seconds": record["feature_seconds"][0],
        "trials_seconds": record["trials_seconds"], "wall_seconds": record["wall_seconds_this_job"],
    }
    run.write_metrics(metrics)
    test = best_metrics.get("test") or {}
    test_text = (f"; test accuracy {test['accuracy']:.3f}, macro-F1 {test['macro_f1']:.3f}"
                 if test.get("accuracy") is not None else "")
    message = (f"finished: best trial {best.number} (val {settings.metric} {best.value:.4f}){test_text}; "
               f"run {best_run.id}")
    run.update_status(state="finished", epoch=record["trials_finished"], message=message, eta_seconds=0)
    progress({"stage": "done", "done": 1, "total": 1, "message": message})
    return metrics


def _run_best(run, record: dict, config, progress: Progress):
    """Train the best trial's config as a normal classifier run (resumed if a previous job left it unfinished)."""
    best_run = None
    if record.get("best_run"):
        try:
            best_run = store.open_run(record["best_run"], kind="classifier")
        except (FileNotFoundError, ValueError):
            best_run = None
    if best_run is not None and best_run.status().get("state") == "finished":
        return best_run
    if best_run is None or best_run.config().get("data") != config.data:
        values = config.to_dict()
        values.pop("kind", None)
        best_run = store.create_run("classifier", values)
        record["best_run"] = best_run.id
        write_summary(run, record)
        fileio.atomic_write_text(best_run.log_path,
                                 f"[{store.now_iso()}] the best trial ({record['best_trial']}) of search {run.id}\n")
    else:
        values = best_run.config()
        values["resume"] = True
        best_run.write_config(values)
        best_run.clear_cancel()
    best_run.update_status(state="running", pid=os.getpid(), pid_start=heartbeat.process_start_time(os.getpid()),
                           started_at=store.now_iso(), heartbeat=store.now_iso(), error=None,
                           stall_seconds=heartbeat.stall_seconds("classifier"),
                           message=f"training the best trial of search {run.id}")

    def relay(event: dict) -> None:
        if event.get("stage") == "epoch":
            progress({"stage": "best", "done": event.get("done"), "total": event.get("total"),
                      "message": f"best trial's run {best_run.id}: {event.get('message', '')}"})
        else:
            heartbeat.beat()

    try:
        executor.execute(best_run, progress=relay)
    except store.Cancelled:
        best_run.update_status(state="cancelled", message="cancelled with its search", finished_at=store.now_iso())
        raise
    except Exception as exc:
        best_run.update_status(state="failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                               message="failed", finished_at=store.now_iso())
        raise
    best_run.update_status(finished_at=store.now_iso())
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


