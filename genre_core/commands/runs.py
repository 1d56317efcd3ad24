"""`runs`, `cancel`, `resume` and the internal `job` command: list runs and control background jobs."""

from __future__ import annotations

import argparse
import json
import sys

from genre_core.runs import jobs, kinds, store

KINDS = (*kinds.KINDS, "all")
TABLE_COLUMNS = (
    ("id", "id"), ("state", "state"), ("model", "model"), ("data", "data"), ("epochs", "epochs"),
    ("test acc", "test_accuracy"), ("macro-F1", "macro_f1"),
)


def register(subparsers) -> None:
    listing = subparsers.add_parser("runs", help="list runs with their state and headline metrics")
    listing.add_argument("--kind", choices=KINDS, default="classifier", help="which runs to list (default classifier)")
    listing.add_argument("--json", action="store_true", help="print the listing as JSON")
    listing.set_defaults(func=cmd_runs)

    cancel = subparsers.add_parser("cancel", help="ask a queued or running job to stop")
    cancel.add_argument("run", help="run id or run folder")
    cancel.set_defaults(func=cmd_cancel)

    resume = subparsers.add_parser("resume", help="relaunch an interrupted, cancelled or failed run in the background")
    resume.add_argument("run", help="run id or run folder")
    resume.set_defaults(func=cmd_resume)

    # The job runner itself; launched by genre_core.runs.jobs.launch, not meant for everyday use.
    job = subparsers.add_parser("job", help="(internal) run one background job in this process")
    job.add_argument("run_dir", help="run folder")
    job.add_argument("--lock-fd", type=int, default=None, help=argparse.SUPPRESS)
    job.set_defaults(func=cmd_job)


def _cell(value, key: str) -> str:
    """Format one table cell."""
    if value is None or value == "":
        return "-"
    if key in ("test_accuracy", "macro_f1"):
        try:
            return f"{float(value):.3f}"
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def format_table(rows: list[dict]) -> str:
    """Render listing rows as a fixed-width text table (damaged runs show the reason)."""
    header = [title for title, _key in TABLE_COLUMNS]
    body = []
    for row in rows:
        cells = []
        for _title, key in TABLE_COLUMNS:
            if key == "epochs":
                done, total = row.get("epoch"), row.get("epochs")
                cells.append(f"{done if done is not None else 0}/{total}" if total else _cell(done, key))
            elif key == "state" and row.get("damaged"):
                cells.append(f"damaged: {row['damaged']}")
            elif key == "state" and row.get("state") == "stalled":
                cells.append(f"stalled: {row.get('message')}")
            else:
                cells.append(_cell(row.get(key), key))
        body.append(cells)
    widths = [max(len(line[index]) for line in [header, *body]) for index in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *body]]
    return "\n".join(lines)


def cmd_runs(args) -> int:
    rows = store.list_runs(kind=None if args.kind == "all" else args.kind)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    elif not rows:
        print(f"no {args.kind} runs yet")
    else:
        print(format_table(rows))
    return 0


def cmd_cancel(args) -> int:
    state = jobs.cancel(args.run)
    if state == "cancelled":
        print(f"{args.run}: cancelled")
    elif state in ("finished", "failed"):
        print(f"{args.run}: already {state}; nothing to cancel")
    elif state == "stalled":
        print(f"{args.run}: stalled, and its process did not end even after SIGKILL (stuck in the kernel, e.g. "
              "a read on a dead network folder); it ends when that call returns")
        return 1
    else:
        print(f"{args.run}: cancel requested; the {state} job stops at its next check")
    return 0


def cmd_resume(args) -> int:
    pid = jobs.resume(args.run)
    print(f"{args.run}: resumed in the background (pid {pid}); follow it with `python -m genre_core runs`")
    return 0


def cmd_job(args) -> int:
    try:
        state = jobs.run_job(args.run_dir, lock_fd=args.lock_fd, handle_signals=True)
    except jobs.JobLockedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return jobs.exit_code(state)
