"""Benchmarks: `python3 -m bench [NAME ...]` runs every `bench/bench_<name>.py` and prints one table.

Each module exposes `run() -> list[dict]`; a row has `name`, `baseline_s`, `candidate_s`, `ratio`, `target`
(">=5x": ratio = baseline / candidate must reach 5; "<=1.1x": ratio = candidate / baseline must stay under
1.1), `ok` and `note`. Baseline and candidate are timed in the same process, so ratios, not absolute
seconds, are what compare across machines. `make_row` and `best_of` below are optional helpers.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

ROW_KEYS = ("name", "baseline_s", "candidate_s", "ratio", "target", "ok", "note")
_TARGET = re.compile(r"^\s*(>=|<=)\s*([0-9]*\.?[0-9]+)\s*x\s*$")


def parse_target(target: str) -> tuple[str, float]:
    """Split a target such as ">=5x" or "<=1.1x" into its comparison and its number."""
    match = _TARGET.match(str(target))
    if not match:
        raise ValueError(f"benchmark target {target!r} is not of the form '>=Nx' or '<=Nx'")
    return match.group(1), float(match.group(2))


def make_row(name: str, baseline_s: float, candidate_s: float, target: str, note: str = "") -> dict:
    """One result row; ">=Nx" compares baseline/candidate (a speed-up), "<=Nx" candidate/baseline (an overhead)."""
    comparison, bound = parse_target(target)
    if comparison == ">=":
        ratio = baseline_s / candidate_s if candidate_s > 0 else float("inf")
        ok = ratio >= bound
    else:
        ratio = candidate_s / baseline_s if baseline_s > 0 else float("inf")
        ok = ratio <= bound
    return {
        "name": name,
        "baseline_s": round(float(baseline_s), 4),
        "candidate_s": round(float(candidate_s), 4),
        "ratio": round(float(ratio), 2),
        "target": target,
        "ok": bool(ok),
        "note": note,
    }


def best_of(function: Callable[[], object], repeats: int = 3) -> float:
    """The fastest of `repeats` wall-clock timings of `function()`, in seconds."""
    timings = []
    for _ in range(max(1, int(repeats))):
        started = time.perf_counter()
        function()
        timings.append(time.perf_counter() - started)
    return min(timings)


@contextmanager
def temporary_artifacts(prefix: str = "bench_") -> Iterator[Path]:
    """Point GENRE_ARTIFACTS at `<fresh temp folder>/artifacts` for the block; yield the temp folder."""
    previous = os.environ.get("GENRE_ARTIFACTS")
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["GENRE_ARTIFACTS"] = str(folder / "artifacts")
    try:
        yield folder
    finally:
        if previous is None:
            os.environ.pop("GENRE_ARTIFACTS", None)
        else:
            os.environ["GENRE_ARTIFACTS"] = previous
        shutil.rmtree(folder, ignore_errors=True)
