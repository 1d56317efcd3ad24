"""The job kinds: one table naming, for each kind of run, its folder, its stall limit and the code that runs it.

Adding a kind touches this table only. `jobs.start(kind, config, background)` checks a new run's config with
the kind's `new_run` function, creates its folder under `folder` and runs (or launches) the kind's `execute`
function; `jobs.dispatch` calls `execute` in the job process.

The two functions are named as "module:function" and imported when a job needs them, the way task queues
name their tasks: this table belongs to the run-folder layer, which sits below training, evaluation and the
GAN and must not import them (the import-linter contracts in `.importlinter` check that).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Kind:
    """One kind of job."""

    name: str
    folder: str  # where its run folders live, relative to the artifacts root
    stall_seconds: float  # a live job of this kind with no heartbeat for this long reads "stalled"
    execute: str  # "module:function"; function(run, progress=None) does the job and writes the run folder
    new_run: str | None = None  # "module:function"; function(config) -> (config.json values, classes or None)
    description: str = ""

    def executor(self) -> Callable:
        """The kind's execute function."""
        return resolve(self.execute)

    def new_run_config(self, config) -> tuple[dict, list[str] | None]:
        """Check a new run's config (ValueError names the problem) and return what its config.json holds and
        its classes when they are known before the job starts."""
        if self.new_run is None:
            return dict(config), None
        return resolve(self.new_run)(config)


# The stall limits only have to cover the slowest single step of each kind: the working code beats at least
# once per batch, cache chunk or feature batch. The prepare and selftest kinds share one folder so they never
# clutter the classifier list; their config.json tells them apart.
KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    Kind("classifier", "runs", 600.0, "genre_core.training.executor:execute",
         "genre_core.training.executor:new_run_config", "train a genre classifier"),
    Kind("gan", "gan_runs", 900.0, "genre_core.gan.trainer:execute",
         "genre_core.gan.trainer:new_run_config", "train a GAN on one genre or several"),
    Kind("search", "search_runs", 600.0, "genre_core.training.search_job:execute",
         "genre_core.training.search:new_run_config", "hyper-parameter search with Optuna"),
    Kind("prepare", "job_runs", 600.0, "genre_core.data.cache:execute_prepare",
         None, "build the preprocessed image cache of a dataset"),
    Kind("selftest", "job_runs", 120.0, "genre_core.runs.selftest:execute",
         None, "a tiny job without TensorFlow, for tests"),
)}


def get(name: str) -> Kind:
    """The kind called `name` (ValueError listing the kinds when there is none)."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown run kind {name!r}; expected one of {', '.join(KINDS)}") from None


def resolve(reference: str) -> Callable:
    """Import "module:function" and return the function."""
    module_name, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module_name), attribute)
