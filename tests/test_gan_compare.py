"""Comparing GAN runs (genre_core.gan.compare and `gan compare`): last and best KID, the settings that differ,
the per-epoch curves and Markdown table, and damaged or missing runs that never hide the others."""

from __future__ import annotations

import math

import pytest

from app_support.testing import write_gan_run
from genre_core import cli
from genre_core.gan import compare
from genre_core.util import fileio


@pytest.fixture
def two_runs(isolated_artifacts):
    """Two finished 3-epoch landscape runs, seeds 0 and 1; the second with batch 32."""
    first = write_gan_run("20260101-000000-landscape-aaaa", epochs=3, with_generator=False, seed=0)
    second = write_gan_run("20260101-000001-landscape-bbbb", epochs=3, with_generator=False, seed=1)
    config = fileio.read_json(second / "config.json")
    fileio.atomic_write_json(second / "config.json", {**config, "batch_size": 32})
    return first, second


def test_compare_runs_reports_last_and_best_kid_and_the_settings_that_differ(two_runs):
    first, second = two_runs
    table = compare.compare_runs([first.name, second, "/no/such/run"])
    assert list(table.columns) == list(compare.COMPARISON_COLUMNS)
    assert list(table["found"]) == [True, True, False]
    row = table.iloc[0]
    # write_gan_run's history: kid_fixed 0.50 -> 0.12, recognised 0.30 -> 0.55, diversity 0.60 -> 0.90.
    assert (row["genres"], row["size"], row["seed"], row["epochs"]) == ("landscape", 16, 0, 3)
    assert (row["kid_fixed"], row["best_kid_fixed"], row["best_epoch"]) == pytest.approx((0.12, 0.12, 3))
    assert (row["kept_kid_fixed"], row["kept_epoch"]) == pytest.approx((0.12, 3))  # no best.json: the last
    assert row["late_climb"] == 0.0  # it fell at every epoch
    assert row["late_mean"] == pytest.approx(0.12)  # the last third of 3 epochs is the last one
    assert (row["recognised"], row["recognised_real"], row["diversity"]) == pytest.approx((0.55, 0.70, 0.90))
    assert math.isnan(row["minutes"])  # no elapsed_seconds column in this history
    assert list(table["differs"][:2]) == ["batch_size=8", "batch_size=32"]  # seed has its own column
    assert table.iloc[1]["seed"] == 1 and table.iloc[0]["problems"] == ""
    assert "run folder /no/such/run does not exist" in table.iloc[2]["problems"]


def test_the_kept_epoch_is_best_jsons_and_a_damaged_record_is_named(two_runs):
    """kept_kid_fixed is the fixed-space KID of the epoch the run kept as its best: best.json's epoch (here
    epoch 2, whose kid_fixed is 0.31), not the run's lowest; a damaged best.json falls back to the last epoch and
    is named in problems without hiding the run."""
    first, second = two_runs
    fileio.atomic_write_json(first / "best.json", {"epoch": 2, "kid": 1.0, "best_by": "train", "score": 0.5})
    (second / "best.json").write_text("[]")
    table = compare.compare_runs([first, second])
    assert (table.iloc[0]["kept_kid_fixed"], table.iloc[0]["kept_epoch"]) == pytest.approx((0.31, 2))
    assert table.iloc[0]["best_kid_fixed"] == pytest.approx(0.12) and table.iloc[0]["problems"] == ""
    assert (table.iloc[1]["kept_kid_fixed"], table.iloc[1]["kept_epoch"]) == pytest.approx((0.12, 3))
    assert "best.json is not a best-epoch record" in table.iloc[1]["problems"]


def test_late_climb_adds_up_the_rises_over_the_last_third_of_the_measured_epochs():
    # 10 measurements, 9 steps: the last 3 steps are the last third. Rises of 0.02 and 0.03 there; the big rise
    # at the third epoch is earlier and does not count, nor do the unmeasured (NaN) epochs.
    kid = [0.9, 0.5, 0.8, float("nan"), 0.3, 0.2, 0.15, 0.1, 0.12, 0.11, 0.14]
    assert compare.late_climb(kid) == pytest.approx(0.05)
    assert compare.late_climb([0.5, 0.4, 0.3, 0.2]) == 0.0  # falling steadily
    assert compare.late_climb([0.5, 0.6]) == pytest.approx(0.1)  # one step: it is the last third
    assert math.isnan(compare.late_climb([0.5])) and math.isnan(compare.late_climb([]))


def test_late_mean_averages_the_last_third_of_the_measured_epochs():
    # 10 measurements: the last ceil(10 / 3) = 4 are the last third; unmeasured (NaN) epochs do not count.
    kid = [0.9, 0.5, 0.8, float("nan"), 0.3, 0.2, 0.15, 0.1, 0.12, 0.11, 0.15]
    assert compare.late_mean(kid) == pytest.approx((0.1 + 0.12 + 0.11 + 0.15) / 4)
    assert compare.late_mean([0.4, 0.2]) == pytest.approx(0.2)  # ceil(2 / 3) = 1: the last one
    assert compare.late_mean([0.3, 0.6, 0.9, 0.2]) == pytest.approx(0.55)  # ceil(4 / 3) = 2
    assert math.isnan(compare.late_mean([])) and math.isnan(compare.late_mean([float("nan")]))


def test_a_damaged_history_is_a_problem_of_its_row_only(two_runs):
    first, second = two_runs
    (second / "history.csv").write_bytes(b"\xff\xfe not a csv")
    table = compare.compare_runs([first, second])
    assert table.iloc[0]["kid_fixed"] == pytest.approx(0.12)
    assert table.iloc[1]["found"] and table.iloc[1]["epochs"] == 0 and math.isnan(table.iloc[1]["kid_fixed"])
    assert "history.csv: unreadable" in table.iloc[1]["problems"]
    assert set(compare.curves([first, second])["run"]) == {first.name}


def test_curves_and_the_per_epoch_markdown_table(two_runs):
    first, second = two_runs
    long = compare.curves([first, second], ("kid_fixed", "recognised"))
    assert len(long) == 2 * 3 * 2 and set(long["metric"]) == {"kid_fixed", "recognised"}
    assert compare.epoch_table([first, second], ["S0", "B1"]).splitlines() == [
        "| epoch | S0 | B1 |",
        "| --- | --- | --- |",
        "| 1 | 0.500 / 30% | 0.500 / 30% |",
        "| 2 | 0.310 / 43% | 0.310 / 43% |",
        "| 3 | 0.120 / 55% | 0.120 / 55% |",
    ]
    with pytest.raises(ValueError, match="1 names for 2 runs"):
        compare.epoch_table([first, second], ["S0"])


def test_gan_compare_cli_prints_each_run_and_the_epoch_table(two_runs, capsys):
    first, second = two_runs
    assert cli.main(["gan", "compare", first.name, second.name, "--epochs", "--names", "S0", "B1",
                     "--csv", str(first.parent / "comparison.csv")]) == 0
    out = capsys.readouterr().out
    assert f"{first.name}: landscape at 16 px on demo, seed 0; 3 epochs in – min" in out
    assert ("  KID (fixed space) last 0.120, lowest 0.120 at epoch 3, kept (best.json's epoch, 3) 0.120; over "
            "the last third mean 0.120, rose 0.000; "
            "recognised 55% (real 70%); diversity 0.90") in out
    assert "  differs: batch_size=32" in out and "| 3 | 0.120 / 55% | 0.120 / 55% |" in out
    assert (first.parent / "comparison.csv").read_text().startswith("run,found,genres")
    # A missing run is named with its problem, the others are still compared, and the exit status says so.
    assert cli.main(["gan", "compare", first.name, "nosuchrun"]) == 1
    out = capsys.readouterr().out
    assert "nosuchrun: no run with id 'nosuchrun'" in out and f"{first.name}: landscape" in out
    assert cli.main(["gan", "compare", first.name, second.name, "--names", "only-one"]) == 2
    assert "--names gives 1 names for 2 runs" in capsys.readouterr().err


def test_curves_include_the_reconstruction_loss_of_the_runs_that_have_it(two_runs):
    """The whole-picture head's reconstruction error is a curve to compare (and to pick on the GAN page) where a
    run's history.csv has it; a run without the term just has no such curve."""
    import pandas as pd

    first, second = two_runs
    history = pd.read_csv(second / "history.csv")
    history["reconstruction_loss"] = [0.25, 0.18, 0.15]
    history.to_csv(second / "history.csv", index=False)
    long = compare.curves([first, second])
    losses = long[long["metric"] == "reconstruction_loss"]
    assert set(losses["run"]) == {second.name}
    assert list(losses.sort_values("epoch")["value"]) == pytest.approx([0.25, 0.18, 0.15])


def test_curves_include_the_discriminators_margins_where_history_has_them(two_runs):
    """The discriminator's margins (patch heads, whole-picture head) are curves to compare where a run's
    history.csv has them (runs before them have none)."""
    import pandas as pd

    first, second = two_runs
    history = pd.read_csv(second / "history.csv")
    history["margin_patches"], history["margin_global"] = [0.3, 0.2, 0.2], [0.05, 0.02, 0.01]
    history.to_csv(second / "history.csv", index=False)
    long = compare.curves([first, second])
    margins = long[long["metric"] == "margin_global"]
    assert set(margins["run"]) == {second.name}
    assert list(margins.sort_values("epoch")["value"]) == pytest.approx([0.05, 0.02, 0.01])
    assert set(long[long["metric"] == "margin_patches"]["run"]) == {second.name}
