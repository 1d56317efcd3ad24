"""Benchmarks for run folders: listing many runs, throttled progress writes."""

from __future__ import annotations


from bench import best_of, make_row, temporary_artifacts

RUN_COUNT = 50


def bench_listing() -> dict:
    """list_runs over 50 runs (small JSON reads) against a pandas-per-run listing."""
    import pandas as pd

    from genre_core.runs import store

    for index in range(RUN_COUNT):
        run = store.create_run("classifier", {"model": f"m{index}", "data": "demo", "epochs": 10})
        for epoch in range(1, 11):
            run.append_history({"epoch": epoch, "loss": 1 / epoch, "accuracy": 0.5, "val_loss": 1 / epoch,
                                "val_accuracy": 0.5, "lr": 0.001, "seconds": 1.0})
        run.write_metrics({"test": {"accuracy": 0.5, "macro_f1": 0.4, "loss": 1.0}})
        run.update_status(state="finished", epoch=10)

    def pandas_listing():
        """The obvious listing: open each run, read its history with pandas, its status and metrics."""
        rows = []
        for folder in sorted(store.kind_root("classifier").iterdir()):
            run = store.open_run(folder)
            history = pd.read_csv(run.path / "history.csv")
            rows.append({"id": run.id, "state": run.status()["state"], "epochs": len(history),
                         "test": run.metrics().get("test", {}).get("accuracy"), "model": run.config()["model"]})
        return pd.DataFrame(rows)

    baseline = best_of(pandas_listing)
    candidate = best_of(lambda: store.list_runs("classifier"))
    return make_row(f"list_runs, {RUN_COUNT} runs", baseline, candidate, ">=2x",
                f"{candidate / RUN_COUNT * 1000:.2f} ms per run; baseline reads history.csv with pandas per run")


def bench_progress() -> dict:
    """ProgressWriter over 500 batch events against writing status.json on every batch."""
    from genre_core.runs import store

    run = store.create_run("classifier", {"model": "progress"})
    events = [{"stage": "batch", "done": batch, "total": 500} for batch in range(1, 501)]

    def unthrottled():
        for event in events:
            run.update_status(batch=event["done"], batches=event["total"])

    def throttled():
        writer = store.ProgressWriter(run)
        writer({"stage": "epoch", "done": 0, "total": 1})
        for event in events:
            writer(event)
        writer({"stage": "epoch", "done": 1, "total": 1})

    baseline = best_of(unthrottled, repeats=1)
    candidate = best_of(throttled, repeats=1)
    return make_row("ProgressWriter, 500 batch events", baseline, candidate, ">=20x",
                "baseline writes status.json (fsync) per batch; candidate at most 2 writes/s plus epoch ends")


def run() -> list[dict]:
    """Run every benchmark of this area and return the rows."""
    rows = []
    for bench in (bench_listing, bench_progress):
        with temporary_artifacts("bench_runs_"):
            try:
                rows.append(bench())
            except Exception as exc:  # One broken benchmark must not hide the others.
                rows.append({"name": bench.__name__, "baseline_s": None, "candidate_s": None, "ratio": None,
                             "target": "-", "ok": False, "note": f"error: {exc}"})
    return rows


if __name__ == "__main__":
    for result in run():
        print(result)
