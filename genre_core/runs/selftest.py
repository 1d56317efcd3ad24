"""The "selftest" job: a tiny job without TensorFlow that exercises everything the job runner offers (progress,
history, checkpoints, cancel, resume, failures, chatty logs), for the job tests and the app's tests."""

from __future__ import annotations

import time
from typing import Callable

from genre_core.runs import store
from genre_core.runs.store import Run
from genre_core.util import fileio

Progress = Callable[[dict], None]


def execute(run: Run, progress: Progress | None = None) -> None:
    """A tiny job without TensorFlow: `epochs` epochs of `batches` sleeps totalling `step_seconds` each
    (and, with `chatter`, a log line of that many dots per batch).

    Writes history rows, progress and a checkpoint per epoch, honours cancel every batch, resumes from its
    checkpoint, and raises at epoch `fail_at` when asked. Used by the job tests and the app's tests."""
    config = run.config()
    try:
        epochs = int(config.get("epochs", 3))
        step_seconds = float(config.get("step_seconds", 0.2))
        batches = int(config.get("batches", 4))
        fail_at = config.get("fail_at")
        fail_at = int(fail_at) if fail_at is not None else None
        chatter = int(config.get("chatter", 0))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"run {run.id}: bad selftest config ({exc})") from None
    if epochs < 1 or batches < 1 or step_seconds < 0:
        raise ValueError(f"run {run.id}: selftest needs epochs >= 1, batches >= 1 and step_seconds >= 0")
    checkpoint = run.checkpoint_dir / "selftest.json"
    start_epoch = 0
    if config.get("resume"):
        saved = fileio.read_json(checkpoint, default=None)
        start_epoch = int(saved["epoch"]) if isinstance(saved, dict) and "epoch" in saved else 0
        # Rows written after the last checkpoint belong to an epoch that will run again.
        run.truncate_history(start_epoch)
        _say(f"resuming from epoch {start_epoch}")
    with store.recording_progress(run, progress) as report:
        report({"stage": "epoch", "done": start_epoch, "total": epochs})
        began = time.monotonic()
        for epoch in range(start_epoch + 1, epochs + 1):
            epoch_began = time.monotonic()
            for batch in range(1, batches + 1):
                run.check_cancel()
                time.sleep(step_seconds / batches)
                if chatter:
                    print(f"epoch {epoch} batch {batch} " + "." * chatter, flush=True)
                report({"stage": "batch", "done": batch, "total": batches})
            if fail_at is not None and epoch == fail_at:
                raise RuntimeError(f"selftest failure injected at epoch {epoch}")
            run.append_history({"epoch": epoch, "loss": round(1.0 / epoch, 6), "accuracy": round(1.0 - 0.5 / epoch, 6),
                                "seconds": round(time.monotonic() - epoch_began, 3)})
            fileio.atomic_write_json(checkpoint, {"epoch": epoch})
            report({"stage": "epoch", "done": epoch, "total": epochs})
            _say(f"epoch {epoch}/{epochs} done")
    run.check_cancel()
    accuracy = round(1.0 - 0.5 / epochs, 6)
    run.write_metrics({"test": {"accuracy": accuracy, "macro_f1": accuracy, "loss": round(1.0 / epochs, 6)},
                       "wall_seconds": round(time.monotonic() - began, 3)})


def _say(message: str) -> None:
    """Print a time-stamped line to the job log."""
    print(f"[{store.now_iso()}] {message}", flush=True)
