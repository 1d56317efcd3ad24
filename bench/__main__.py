"""`python3 -m bench [NAME ...] [--json FILE]`: run benchmark modules and print one table of ratios.

Without names every `bench/bench_*.py` runs; `python3 -m bench preprocess` runs only bench_preprocess.py.
A module that fails is reported as an ERROR row and the others still run. The exit code is 0 even when
targets are not met (those rows say NOT MET); it is 2 only for bad arguments, such as an unknown name.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import pkgutil
import sys
import time
import traceback
from pathlib import Path

from bench import ROW_KEYS

BENCH_DIR = Path(__file__).resolve().parent
PREFIX = "bench_"


def available() -> list[str]:
    """Names of the benchmark modules (without the bench_ prefix), sorted."""
    return sorted(
        info.name[len(PREFIX):]
        for info in pkgutil.iter_modules([str(BENCH_DIR)])
        if info.name.startswith(PREFIX) and not info.ispkg
    )


def run_module(name: str) -> tuple[list[dict], float]:
    """Import bench_<name> and call its run(); failures come back as one ERROR row."""
    started = time.perf_counter()
    try:
        module = importlib.import_module(f"bench.{PREFIX}{name}")
        if not callable(getattr(module, "run", None)):
            raise TypeError(f"bench/{PREFIX}{name}.py has no run() function")
        rows = module.run()
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise TypeError(f"bench/{PREFIX}{name}.py run() returned {type(rows).__name__}, not a list of dicts")
        checked = [_checked_row(name, row) for row in rows]
    except Exception as exc:  # A broken benchmark must not hide the others' results.
        detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        checked = [{
            "name": "(module failed)", "baseline_s": float("nan"), "candidate_s": float("nan"), "ratio": float("nan"),
            "target": "", "ok": False, "note": detail, "error": True,
        }]
        traceback.print_exc(file=sys.stderr)
    for row in checked:
        row["module"] = name
    return checked, time.perf_counter() - started


def _checked_row(module: str, row: dict) -> dict:
    """A copy of `row` with every expected key present (missing ones are noted, not fatal)."""
    missing = [key for key in ROW_KEYS if key not in row]
    checked = dict(row)
    for key in missing:
        checked[key] = "" if key in ("name", "target", "note") else (False if key == "ok" else float("nan"))
    if missing:
        checked["note"] = f"{checked['note']} [row lacks {', '.join(missing)}]".strip()
        checked["ok"] = False
    return checked


def _number(value, digits: int = 3) -> str:
    """Format a timing or ratio for the table."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return "-"
    if math.isinf(number):
        return "inf"
    return f"{number:.{digits}f}" if abs(number) < 1000 else f"{number:.0f}"


def format_table(rows: list[dict]) -> str:
    """The results as a fixed-width text table."""
    header = ("benchmark", "baseline_s", "candidate_s", "ratio", "target", "status", "note")
    lines = []
    for row in rows:
        status = "ERROR" if row.get("error") else ("ok" if row.get("ok") else "NOT MET")
        lines.append((
            f"{row['module']}: {row['name']}",
            _number(row["baseline_s"]),
            _number(row["candidate_s"]),
            _number(row["ratio"], 2) + ("x" if _number(row["ratio"]) not in ("-", "inf") else ""),
            str(row["target"]),
            status,
            str(row["note"]),
        ))
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) if lines else len(header[i]) for i in range(6)]
    def render(cells):
        left = [cells[0].ljust(widths[0])] + [cells[i].rjust(widths[i]) for i in range(1, 6)]
        return "  ".join(left + [cells[6]]).rstrip()
    separator = "  ".join("-" * width for width in widths) + "  ----"
    return "\n".join([render(header), separator] + [render(line) for line in lines])


def main(argv: list[str] | None = None) -> int:
    names = available()
    parser = argparse.ArgumentParser(prog="python3 -m bench", description="Run benchmarks and print baseline/candidate ratios.")
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all): {', '.join(names)}")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    parser.add_argument("--list", action="store_true", help="list the benchmark names and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(names))
        return 0
    # Accept "preprocess", "bench_preprocess" and "bench/bench_preprocess.py" alike.
    selected = [Path(name).name.removesuffix(".py").removeprefix(PREFIX) for name in args.names] or names
    unknown = [name for name in selected if name not in names]
    if unknown:
        print(f"error: unknown benchmark {', '.join(unknown)}; available: {', '.join(names)}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    rows: list[dict] = []
    for name in selected:
        print(f"running bench_{name} ...", file=sys.stderr, flush=True)
        module_rows, seconds = run_module(name)
        print(f"  bench_{name}: {len(module_rows)} rows in {seconds:.1f} s", file=sys.stderr, flush=True)
        rows.extend(module_rows)
    print(format_table(rows))
    met = sum(1 for row in rows if row.get("ok"))
    print(f"\n{met}/{len(rows)} targets met (cpu_count={os.cpu_count()}); ratios compare baseline and candidate run in this process.")
    if args.json:
        from genre_core.util.fileio import atomic_write_json

        atomic_write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
