"""Benchmarks for run folders: listing many runs, throttled progress writes."""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

RUN_COUNT = 50


@contextmanager
def _temporary_artifacts():
    """Point GENRE_ARTIFACTS at a fresh temporary folder for the duration of the block."""
    previous = os.environ.get("GENRE_ARTIFACTS")
    with tempfile.TemporaryDirectory(prefix="bench_runs_") as folder:
        os.environ["GENRE_ARTIFACTS"] = folder
        try:
            yield Path(folder)
        finally:
            if previous is None:
                os.environ.pop("GENRE_ARTIFACTS", None)
            else:
                os.environ["GENRE_ARTIFACTS"] = previous


def _best_of(function, repeats: int = 3) -> float:
    """Return the fastest of `repeats` timings of `function()` in seconds."""
    timings = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        timings.append(time.perf_counter() - began)
    return min(timings)


def _row(name: str, baseline: float, candidate: float, target_ratio: float, note: str) -> dict:
    """Build one result row; ok when baseline/candidate reaches `target_ratio`."""
    ratio = baseline / candidate if candidate > 0 else float("inf")
    return {"name": name, "baseline_s": round(baseline, 4), "candidate_s": round(candidate, 4),
            "ratio": round(ratio, 2), "target": f">={target_ratio:g}x", "ok": ratio >= target_ratio, "note": note}


def bench_listing() -> dict:
    """list_runs over 50 runs (small JSON reads) against a pandas-per-run listing."""
    import pandas as pd

    from genre_core import runs

    for index in range(RUN_COUNT):
        run = runs.create_run("classifier", {"model": f"m{index}", "data": "demo", "epochs": 10})
        for epoch in range(1, 11):
            run.append_history({"epoch": epoch, "loss": 1 / epoch, "accuracy": 0.5, "val_loss": 1 / epoch,
                                "val_accuracy": 0.5, "lr": 0.001, "seconds": 1.0})
        run.write_metrics({"test": {"accuracy": 0.5, "macro_f1": 0.4, "loss": 1.0}})
        run.update_status(state="finished", epoch=10)

    def pandas_listing():
        """The obvious listing: open each run, read its history with pandas, its status and metrics."""
        rows = []
        for folder in sorted(runs.kind_root("classifier").iterdir()):
            run = runs.open_run(folder)
            history = pd.read_csv(run.path / "history.csv")
            rows.append({"id": run.id, "state": run.status()["state"], "epochs": len(history),
                         "test": run.metrics().get("test", {}).get("accuracy"), "model": run.config()["model"]})
        return pd.DataFrame(rows)

    baseline = _best_of(pandas_listing)
    candidate = _best_of(lambda: runs.list_runs("classifier"))
    return _row(f"list_runs, {RUN_COUNT} runs", baseline, candidate, 2,
                f"{candidate / RUN_COUNT * 1000:.2f} ms per run; baseline reads history.csv with pandas per run")


def bench_progress() -> dict:
    """ProgressWriter over 500 batch events against writing status.json on every batch."""
    from genre_core import runs

    run = runs.create_run("classifier", {"model": "progress"})
    events = [{"stage": "batch", "done": batch, "total": 500} for batch in range(1, 501)]

    def unthrottled():
        for event in events:
            run.update_status(batch=event["done"], batches=event["total"])

    def throttled():
        writer = runs.ProgressWriter(run)
        writer({"stage": "epoch", "done": 0, "total": 1})
        for event in events:
            writer(event)
        writer({"stage": "epoch", "done": 1, "total": 1})

    baseline = _best_of(unthrottled, repeats=1)
    candidate = _best_of(throttled, repeats=1)
    return _row("ProgressWriter, 500 batch events", baseline, candidate, 20,
                "baseline writes status.json (fsync) per batch; candidate at most 2 writes/s plus epoch ends")


def run() -> list[dict]:
    """Run every benchmark of this area and return the rows."""
    rows = []
    for bench in (bench_listing, bench_progress):
        with _temporary_artifacts():
            try:
                rows.append(bench())
            except Exception as exc:  # One broken benchmark must not hide the others.
                rows.append({"name": bench.__name__, "baseline_s": None, "candidate_s": None, "ratio": None,
                             "target": "-", "ok": False, "note": f"error: {exc}"})
    return rows


if __name__ == "__main__":
    for result in run():
        print(result)
