"""`search` command: an Optuna hyper-parameter search over the head on cached frozen features.

    python -m genre_core search --data PATH --recipe cpu-15min --trials 30 [--minutes 20] [--space space.json]
    python -m genre_core search --data demo --trials 20 --size 64 --background

It prints the search's run folder (under artifacts/search_runs/), then the best trial and the folder of the
classifier run trained from it. `cancel` and `resume` work on a search like on any job; a resumed search keeps
its finished trials (genre_core/search.py).
"""

from __future__ import annotations

import json
import sys

from genre_core.commands.progress import TerminalProgress
from genre_core.commands.train import OPTIONS
from genre_core.runs import jobs, store
from genre_core.training import search

# The training flags a search takes for its base config: the same flags, types and help as `train`'s.
OVERRIDES = {flag: OPTIONS[flag] for flag in ("--size", "--seed", "--val-fraction", "--test-fraction",
                                             "--data-fraction", "--feature-engine")}


def register(subparsers) -> None:
    parser = subparsers.add_parser("search", help="hyper-parameter search (Optuna) on cached features; prints "
                                                  "the search folder and the best run")
    parser.add_argument("--data", default=None, help="dataset folder, metadata file or 'demo' (required)")
    parser.add_argument("--recipe", default="cpu-15min", help="the recipe the trials start from (default cpu-15min)")
    parser.add_argument("--trials", type=int, default=None, help="how many trials to finish (pruned ones count; "
                                                                 "required)")
    parser.add_argument("--minutes", type=float, default=None, help="stop starting trials after this many minutes "
                                                                   "of trials (the feature pass is not counted)")
    parser.add_argument("--space", default=None, help="JSON file of the search space (default: "
                                                      "genre_core.training.search.DEFAULT_SPACE)")
    parser.add_argument("--metric", default="accuracy", choices=("accuracy", "macro_f1", "loss"),
                        help="the validation score to optimise (default accuracy)")
    for flag, (_field, kind, text) in OVERRIDES.items():
        parser.add_argument(flag, type=kind, default=None, help=text)
    parser.add_argument("--background", action="store_true", help="launch as a background job and return")
    parser.add_argument("--show-space", action="store_true", help="print the default search space as JSON and exit")
    parser.set_defaults(func=cmd_search)


def cmd_search(args) -> int:
    """Run (or launch) a search and print its folder, the best trial and the best run."""
    if args.show_space:
        print(json.dumps(search.DEFAULT_SPACE, indent=2))
        return 0
    if args.data is None or args.trials is None:
        raise ValueError("--data and --trials are required (a dataset path or 'demo', and a number of trials)")
    overrides = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _kind, _text) in OVERRIDES.items()}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    space = search.read_space_file(args.space) if args.space else None
    settings = {"data": args.data, "trials": args.trials, "recipe": args.recipe, "minutes": args.minutes,
                "space": space, "metric": args.metric, "overrides": overrides}
    if args.background:
        run = jobs.start("search", settings, background=True)
        print(run.path)
        return 0
    display = TerminalProgress(min_seconds=10.0)  # In a log: a line at most every 10 s, plus each trial's line.
    run = jobs.start("search", settings, background=False, progress=display)
    display.close()
    print(run.path)
    status = run.status()
    if status.get("state") != "finished":
        reason = status.get("error") or status.get("message") or status.get("state")
        print(f"error: search {status.get('state')}: {reason}", file=sys.stderr)
        return 1
    print(status.get("message", "finished"), file=sys.stderr)
    best = search.summary(run)
    if best.get("best_run"):
        print(store.open_run(best["best_run"], kind="classifier").path)
    return 0
