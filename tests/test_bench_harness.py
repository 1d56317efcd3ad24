"""The benchmark harness: row helpers, module discovery, failing modules, the table and the exit code."""

from __future__ import annotations

import math
import sys
import types

import pytest

import bench
from bench import __main__ as harness


def test_make_row_speedup_and_overhead_targets():
    speedup = bench.make_row("decode", baseline_s=2.0, candidate_s=0.25, target=">=5x", note="n")
    assert speedup == {"name": "decode", "baseline_s": 2.0, "candidate_s": 0.25, "ratio": 8.0, "target": ">=5x",
                       "ok": True, "note": "n"}
    assert bench.make_row("slow", 1.0, 0.5, ">=5x")["ok"] is False
    overhead = bench.make_row("page", baseline_s=1.0, candidate_s=1.05, target="<=1.1x")
    assert overhead["ratio"] == 1.05 and overhead["ok"] is True
    assert bench.make_row("page", 1.0, 1.3, "<=1.1x")["ok"] is False
    with pytest.raises(ValueError, match="not of the form"):
        bench.make_row("x", 1.0, 1.0, "fast")


def test_best_of_returns_the_fastest_timing():
    calls = []
    assert bench.best_of(lambda: calls.append(1), repeats=4) >= 0
    assert len(calls) == 4


def test_discovery_lists_bench_modules():
    names = harness.available()
    assert "preprocess" in names
    assert all(not name.startswith("bench_") for name in names)


@pytest.fixture()
def fake_modules(monkeypatch):
    good = types.ModuleType("bench.bench_fakegood")
    good.run = lambda: [bench.make_row("fast thing", 1.0, 0.1, ">=5x", "fine"),
                        bench.make_row("slow thing", 1.0, 0.9, ">=5x", "too slow")]
    broken = types.ModuleType("bench.bench_fakebroken")

    def explode():
        raise RuntimeError("no data here")

    broken.run = explode
    monkeypatch.setitem(sys.modules, "bench.bench_fakegood", good)
    monkeypatch.setitem(sys.modules, "bench.bench_fakebroken", broken)
    monkeypatch.setattr(harness, "available", lambda: ["fakebroken", "fakegood"])


def test_failing_module_becomes_an_error_row_and_others_still_run(fake_modules, capsys, tmp_path):
    output = tmp_path / "rows.json"
    assert harness.main(["--json", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "fakebroken: (module failed)" in printed and "ERROR" in printed and "RuntimeError: no data here" in printed
    assert "fakegood: fast thing" in printed and "10.00x" in printed
    assert "NOT MET" in printed
    assert "1/3 targets met" in printed
    import json

    rows = json.loads(output.read_text())
    assert [row["module"] for row in rows] == ["fakebroken", "fakegood", "fakegood"]
    assert math.isnan(rows[0]["ratio"])


def test_selecting_one_module_and_unknown_names(fake_modules, capsys):
    assert harness.main(["fakegood"]) == 0
    assert "fakebroken" not in capsys.readouterr().out
    assert harness.main(["bench/bench_fakegood.py"]) == 0
    assert harness.main(["nosuch"]) == 2
    assert "unknown benchmark nosuch" in capsys.readouterr().err


def test_rows_missing_keys_are_flagged_not_fatal():
    row = harness._checked_row("m", {"name": "partial", "ratio": 3.0})
    assert row["ok"] is False and "row lacks" in row["note"]
    table = harness.format_table([dict(row, module="m")])
    assert "m: partial" in table and "NOT MET" in table
