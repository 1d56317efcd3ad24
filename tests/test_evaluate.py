"""Evaluation on hand-made predictions where every number is known in advance."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from genre_core import cli
from genre_core.evaluation import evaluate
from genre_core.evaluation.evaluate import compare_runs, Interpretation, learning_curves
from genre_core.util import fileio

CLASSES = ["abstract", "landscape", "portrait", "still_life"]

# (true genre, probabilities over CLASSES). Row 9's true genre and every probability were chosen so that:
# correct rows are 0, 1, 4, 5, 6, 8; the true genre is outside the top 3 in rows 3 and 9; no two losses tie.
ROWS = [
    ("abstract", [0.70, 0.20, 0.05, 0.05]),   # 0 correct
    ("abstract", [0.60, 0.25, 0.10, 0.05]),   # 1 correct
    ("abstract", [0.20, 0.70, 0.06, 0.04]),   # 2 -> landscape
    ("abstract", [0.04, 0.30, 0.60, 0.06]),   # 3 -> portrait, true genre ranked 4th
    ("landscape", [0.10, 0.80, 0.05, 0.05]),  # 4 correct
    ("landscape", [0.20, 0.50, 0.20, 0.10]),  # 5 correct
    ("landscape", [0.28, 0.62, 0.06, 0.04]),  # 6 correct
    ("portrait", [0.05, 0.90, 0.03, 0.02]),   # 7 -> landscape, true genre ranked 3rd
    ("portrait", [0.10, 0.20, 0.65, 0.05]),   # 8 correct
    ("portrait", [0.15, 0.80, 0.02, 0.03]),   # 9 -> landscape, true genre ranked 4th
]
TRUE_PROBABILITIES = [0.70, 0.60, 0.20, 0.04, 0.80, 0.50, 0.62, 0.03, 0.65, 0.02]


def predictions_frame(rows=ROWS, classes=CLASSES) -> pd.DataFrame:
    """A predictions.csv table in the run-folder format, built from (true, probabilities) rows."""
    probabilities = np.array([p for _, p in rows])
    predicted = probabilities.argmax(axis=1)
    frame = pd.DataFrame({
        "path": [f"/images/{i:02d}.jpg" for i in range(len(rows))],
        "true": [t for t, _ in rows],
        "predicted": [classes[i] for i in predicted],
        "confidence": probabilities.max(axis=1),
    })
    for index, genre in enumerate(classes):
        frame[genre] = probabilities[:, index]
    return frame


def write_run(folder, *, predictions=True, metrics=True, history=True, config=True, train_counts=True):
    """Write a hand-made classifier run folder and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    fileio.atomic_write_json(folder / "classes.json", CLASSES)
    if config:
        fileio.atomic_write_json(folder / "config.json", {"kind": "classifier", "model": "tiny_cnn", "size": 64,
                                                          "policy": "squash", "epochs": 5, "data": "nowhere"})
    if metrics:
        payload = {"train": {"accuracy": 0.95, "macro_f1": 0.9, "loss": 0.2},
                   "val": {"accuracy": 0.62, "macro_f1": 0.5, "loss": 1.1},
                   "test": {"accuracy": 0.6, "macro_f1": 0.433333, "macro_recall": 0.458333, "loss": 1.3},
                   "wall_seconds": 123.0}
        if train_counts:
            payload["train_counts"] = {"abstract": 40, "landscape": 30, "portrait": 20, "still_life": 5}
        fileio.atomic_write_json(folder / "metrics.json", payload)
    if history:
        fileio.atomic_write_csv(folder / "history.csv", pd.DataFrame({
            "epoch": [1, 2, 3], "loss": [1.2, 0.8, 0.4], "accuracy": [0.5, 0.7, 0.9],
            "val_loss": [1.1, 1.0, 1.05], "val_accuracy": [0.5, 0.58, 0.55], "lr": [1e-3] * 3,
            "seconds": [10.0, 9.0, 9.5],
        }))
    if predictions:
        fileio.atomic_write_csv(folder / "predictions.csv", predictions_frame())
    return folder


@pytest.fixture()
def interp(tmp_path) -> Interpretation:
    return Interpretation.from_run(write_run(tmp_path / "run-a"))


def test_headline_metrics_match_hand_computed_values(interp):
    metrics = interp.metrics()
    assert metrics["n"] == 10
    assert metrics["accuracy"] == pytest.approx(0.6)
    # Balanced accuracy averages recall over genres present in the test set: (1/2 + 1 + 1/3) / 3.
    assert metrics["balanced_accuracy"] == pytest.approx((0.5 + 1.0 + 1 / 3) / 3)
    assert metrics["top_k"] == 3
    assert metrics["top3_accuracy"] == pytest.approx(0.8)
    assert metrics["log_loss"] == pytest.approx(-np.mean(np.log(TRUE_PROBABILITIES)))
    # Macro averages include still_life (no test examples, never predicted) as 0, scikit-learn's convention.
    assert metrics["macro_precision"] == pytest.approx((1.0 + 0.5 + 0.5 + 0.0) / 4)
    assert metrics["macro_recall"] == pytest.approx((0.5 + 1.0 + 1 / 3 + 0.0) / 4)
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0.4 + 0.0) / 4)
    assert metrics["weighted_f1"] == pytest.approx((4 * 2 / 3 + 3 * 2 / 3 + 3 * 0.4) / 10)


def test_overfitting_gap_from_metrics_and_history(interp):
    gap = interp.metrics()["overfitting"]
    assert gap["train_accuracy"] == pytest.approx(0.95)
    assert gap["test_accuracy"] == pytest.approx(0.6)
    assert gap["accuracy_gap"] == pytest.approx(0.35)
    assert gap["macro_f1_gap"] == pytest.approx(0.9 - 0.433333)
    assert gap["final_train_accuracy"] == pytest.approx(0.9)
    assert gap["final_val_accuracy"] == pytest.approx(0.55)
    assert gap["history_gap"] == pytest.approx(0.35)


def test_per_class_table(interp):
    table = interp.per_class().set_index("genre")
    assert list(table.index) == CLASSES
    np.testing.assert_allclose(table["precision"], [1.0, 0.5, 0.5, 0.0])
    np.testing.assert_allclose(table["recall"], [0.5, 1.0, 1 / 3, 0.0])
    np.testing.assert_allclose(table["f1"], [2 / 3, 2 / 3, 0.4, 0.0])
    assert table["support"].tolist() == [4, 3, 3, 0]
    assert table["predicted_count"].tolist() == [2, 6, 2, 0]
    assert table["train_count"].tolist() == [40, 30, 20, 5]
    rare_first = interp.f1_vs_train_count()
    assert rare_first["genre"].tolist() == ["still_life", "portrait", "landscape", "abstract"]


def test_confusion_matrix_raw_and_normalised(interp):
    raw = interp.confusion_matrix()
    expected = [[2, 1, 1, 0], [0, 3, 0, 0], [0, 2, 1, 0], [0, 0, 0, 0]]
    assert raw.to_numpy().tolist() == expected
    assert list(raw.index) == CLASSES and list(raw.columns) == CLASSES
    normalised = interp.confusion_matrix(normalize="true").to_numpy()
    np.testing.assert_allclose(normalised[0], [0.5, 0.25, 0.25, 0.0])
    np.testing.assert_allclose(normalised[2], [0.0, 2 / 3, 1 / 3, 0.0])
    np.testing.assert_allclose(normalised[3], [0.0, 0.0, 0.0, 0.0])  # No still_life examples: a zero row.
    with pytest.raises(ValueError, match="normalize"):
        interp.confusion_matrix(normalize="all")


def test_most_confused_ordering(interp):
    pairs = interp.most_confused()
    assert list(pairs.itertuples(index=False, name=None)) == [
        ("portrait", "landscape", 2), ("abstract", "landscape", 1), ("abstract", "portrait", 1),
    ]
    assert list(interp.most_confused(min_count=2).itertuples(index=False, name=None)) == [
        ("portrait", "landscape", 2),
    ]


def test_top_losses_and_mistakes_ordering(interp):
    assert interp.top_losses(k=None)["index"].tolist() == [9, 7, 3, 2, 5, 1, 6, 8, 0, 4]
    top = interp.top_losses(k=3)
    assert top["index"].tolist() == [9, 7, 3]
    assert top["loss"].iloc[0] == pytest.approx(-math.log(0.02))
    assert interp.mistakes(by="confidence")["index"].tolist() == [7, 9, 2, 3]
    assert interp.mistakes(by="loss")["index"].tolist() == [9, 7, 3, 2]
    with pytest.raises(ValueError, match="rank mistakes"):
        interp.mistakes(by="size")


def test_cell_query_returns_worst_first(interp):
    cell = interp.cell("portrait", "landscape")
    assert cell["index"].tolist() == [7, 9]
    assert cell["path"].tolist() == ["/images/07.jpg", "/images/09.jpg"]
    assert cell["true"].unique().tolist() == ["portrait"]
    assert cell["predicted"].unique().tolist() == ["landscape"]
    np.testing.assert_allclose(cell["confidence"], [0.90, 0.80])
    genres, probabilities = zip(*cell["top3"].iloc[0])
    assert genres == ("landscape", "abstract", "portrait")
    np.testing.assert_allclose(probabilities, [0.90, 0.05, 0.03])
    # Genre indices work as well as names; the diagonal is ordered by confidence too.
    assert interp.cell(2, 1)["index"].tolist() == [7, 9]
    assert interp.cell("landscape", "landscape")["index"].tolist() == [4, 6, 5]
    assert interp.cell("landscape", "abstract").empty


def test_cell_query_rejects_unknown_genre(interp):
    with pytest.raises(ValueError, match="'cubism'"):
        interp.cell("cubism", "landscape")
    with pytest.raises(ValueError, match="index 7"):
        interp.cell("abstract", 7)


def test_label_issues_fall_back_on_tiny_inputs(interp):
    issues = interp.label_issues()
    assert issues.attrs["method"] == "self_confidence"
    assert "cleanlab" in issues.attrs["note"]
    assert issues["index"].tolist() == [9, 7, 3, 2]
    assert issues["given"].tolist() == ["portrait", "portrait", "abstract", "abstract"]
    np.testing.assert_allclose(issues["self_confidence"], [0.02, 0.03, 0.04, 0.20])


def test_label_issues_use_cleanlab_with_enough_examples():
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c"]
    labels = np.repeat([0, 1, 2], 20)
    probabilities = np.full((60, 3), 0.05)
    probabilities[np.arange(60), labels] = 0.9
    probabilities += rng.uniform(0, 0.02, probabilities.shape)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    # Three examples the model confidently places in another genre: likely label errors.
    probabilities[5] = [0.01, 0.97, 0.02]
    probabilities[27] = [0.03, 0.02, 0.95]
    probabilities[48] = [0.94, 0.02, 0.04]
    rows = [(classes[label], list(p)) for label, p in zip(labels, probabilities)]
    issues = Interpretation.from_predictions(predictions_frame(rows, classes), classes).label_issues()
    assert issues.attrs["method"] == "cleanlab"
    assert issues["index"].tolist() == [5, 27, 48]
    assert issues["suggested"].tolist() == ["b", "c", "a"]


def test_bad_predictions_raise_clear_errors():
    frame = predictions_frame()
    with pytest.raises(ValueError, match="still_life"):
        Interpretation.from_predictions(frame.drop(columns=["still_life"]), CLASSES)
    broken = frame.copy()
    broken.loc[4, "true"] = "cubism"
    with pytest.raises(ValueError, match="row 4.*'cubism'"):
        Interpretation.from_predictions(broken, CLASSES)
    broken = frame.copy()
    broken.loc[6, "portrait"] = np.nan
    with pytest.raises(ValueError, match="row 6"):
        Interpretation.from_predictions(broken, CLASSES)


def test_train_counts_missing_gives_nan(tmp_path):
    interp = Interpretation.from_run(write_run(tmp_path / "run-b", train_counts=False))
    assert interp.per_class()["train_count"].isna().all()
    assert interp.metrics()["accuracy"] == pytest.approx(0.6)


def test_train_counts_are_read_only_where_training_writes_them(tmp_path):
    """One spelling: metrics.json "train_counts" as {genre: images}. Counts elsewhere (a list in config.json)
    are not a format any writer produces; such a run reads as an older run without counts."""
    folder = write_run(tmp_path / "run-c", train_counts=False)
    config = fileio.read_json(folder / "config.json")
    config["train_counts"] = [1, 2, 3, 4]
    fileio.atomic_write_json(folder / "config.json", config)
    assert Interpretation.from_run(folder).train_counts().isna().all()
    metrics = fileio.read_json(folder / "metrics.json")
    metrics["train_counts"] = {"abstract": 1, "landscape": 2, "portrait": 3, "still_life": 4}
    fileio.atomic_write_json(folder / "metrics.json", metrics)
    assert Interpretation.from_run(folder).train_counts().tolist() == [1, 2, 3, 4]


def test_evaluate_run_writes_files(tmp_path):
    folder = write_run(tmp_path / "run-d")
    summary = evaluate.evaluate_run(folder)
    saved = json.loads((folder / "evaluation.json").read_text())
    assert saved["metrics"]["accuracy"] == pytest.approx(0.6)
    assert saved["most_confused"][0] == {"true": "portrait", "predicted": "landscape", "count": 2}
    assert saved["confusion_matrix"][2] == [0, 2, 1, 0]
    assert [row["index"] for row in saved["mistakes_by_confidence"]] == [7, 9, 2, 3]
    assert [row["index"] for row in saved["mistakes_by_loss"]] == [9, 7, 3, 2]
    assert [row["index"] for row in saved["label_issues"]["examples"]] == [9, 7, 3, 2]
    assert summary["folder"] == str(folder)
    per_class = pd.read_csv(folder / "per_class.csv")
    assert per_class["support"].tolist() == [4, 3, 3, 0]
    confusion = pd.read_csv(folder / "confusion.csv")
    assert confusion["true"].tolist() == CLASSES
    assert confusion["landscape"].tolist() == [1, 3, 2, 0]


def test_cli_evaluate_prints_summary(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMAND_MODULES", (cli.evaluate,))
    folder = write_run(tmp_path / "run-e")
    assert cli.main(["evaluate", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "accuracy 0.600" in out
    assert "macro-F1 0.433" in out
    assert "portrait -> landscape: 2" in out
    assert (folder / "evaluation.json").exists()


def test_cli_evaluate_bad_run_exits_nonzero(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMAND_MODULES", (cli.evaluate,))
    assert cli.main(["evaluate", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "missing" in err and "\n" not in err
    folder = write_run(tmp_path / "no-predictions", predictions=False)
    assert cli.main(["evaluate", str(folder)]) == 2
    assert "predictions.csv" in capsys.readouterr().err


def test_compare_runs_with_damaged_run(tmp_path):
    good = write_run(tmp_path / "good")
    no_metrics = write_run(tmp_path / "no-metrics", metrics=False, history=False)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_text("{not json")
    (damaged / "predictions.csv").write_text("")
    table = compare_runs([good, no_metrics, damaged, tmp_path / "gone"])
    assert table["run"].tolist() == ["good", "no-metrics", "damaged", str(tmp_path / "gone")]
    first = table.iloc[0]
    assert first["model"] == "tiny_cnn"
    assert first["train_accuracy"] == pytest.approx(0.95)
    assert first["test_accuracy"] == pytest.approx(0.6)
    assert first["macro_f1"] == pytest.approx(0.433333)
    assert first["epochs"] == 3
    assert first["input_size"] == "64x64"
    assert first["wall_seconds"] == pytest.approx(123.0)
    assert first["problems"] == ""
    # Without metrics.json the test numbers are recomputed from predictions.csv.
    second = table.iloc[1]
    assert np.isnan(second["train_accuracy"])
    assert second["test_accuracy"] == pytest.approx(0.6)
    assert second["macro_recall"] == pytest.approx((0.5 + 1.0 + 1 / 3) / 4)
    assert second["epochs"] == 5  # From config.json, since there is no history.
    assert "metrics.json missing" in second["problems"]
    third = table.iloc[2]
    assert np.isnan(third["test_accuracy"]) and np.isnan(third["epochs"])
    assert "corrupt JSON" in third["problems"]
    assert "not found" in table.iloc[3]["problems"]


def test_learning_curves_long_table(tmp_path):
    good = write_run(tmp_path / "good")
    other = write_run(tmp_path / "other")
    no_history = write_run(tmp_path / "plain", history=False)
    curves = learning_curves([good, other, no_history, tmp_path / "gone"])
    assert list(curves.columns) == ["run", "epoch", "metric", "value"]
    assert sorted(curves["run"].unique()) == ["good", "other"]
    # Three epochs x six numeric metrics per run.
    assert len(curves) == 2 * 3 * 6
    val = curves[(curves["run"] == "good") & (curves["metric"] == "val_accuracy")]
    assert val["value"].tolist() == [0.5, 0.58, 0.55]
    assert learning_curves([]).empty


def test_train_counts_recounted_from_the_dataset(tmp_path, monkeypatch):
    from genre_core.data import sources
    from genre_core.data.dataset import Dataset

    manifest = pd.DataFrame({"path": [f"/x/{i}.jpg" for i in range(7)],
                             "genre": ["abstract"] * 3 + ["portrait"] * 2 + ["landscape"] * 2,
                             "split": ["train", "train", "test", "train", "train", "train", "val"]})
    seen = []

    def fake_load_dataset(path, source=None):
        seen.append(path)
        return Dataset(source="csv", root=tmp_path, manifest=manifest, classes=sorted(set(manifest["genre"])))

    monkeypatch.setattr(sources, "load_dataset", fake_load_dataset)
    interp = Interpretation.from_run(write_run(tmp_path / "run-f", train_counts=False))
    assert interp.train_counts().tolist() == [2, 1, 2, 0]
    assert seen == ["nowhere"]
    assert any("recounted" in note for note in interp.notes)

    def broken_load_dataset(path, source=None):
        raise FileNotFoundError(f"{path} does not exist")

    monkeypatch.setattr(sources, "load_dataset", broken_load_dataset)
    interp = Interpretation.from_run(write_run(tmp_path / "run-g", train_counts=False))
    assert interp.train_counts().isna().all()
    assert any("does not exist" in note for note in interp.notes)


def test_train_counts_recount_uses_the_runs_split_settings(tmp_path, monkeypatch):
    from genre_core.data import sources, splits
    from genre_core.data.dataset import Dataset

    genres = ["abstract"] * 10 + ["landscape"] * 20 + ["portrait"] * 10
    manifest = pd.DataFrame({"path": [f"/x/{i}.jpg" for i in range(len(genres))], "genre": genres,
                             "split": [""] * len(genres)})
    monkeypatch.setattr(sources, "load_dataset", lambda path, source=None: Dataset(
        source="folder", root=tmp_path, manifest=manifest.copy(), classes=sorted(set(genres))))
    folder = write_run(tmp_path / "run-h", train_counts=False)
    config = fileio.read_json(folder / "config.json")
    config.update(val_fraction=0.2, test_fraction=0.2, seed=4)
    fileio.atomic_write_json(folder / "config.json", config)
    expected = splits.assign_splits(manifest.copy(), 0.2, 0.2, 4)
    expected = expected[expected["split"] == "train"]["genre"].value_counts()
    counts = Interpretation.from_run(folder).train_counts()
    assert counts["landscape"] == expected["landscape"] and counts["abstract"] == expected["abstract"]
    assert 0 < counts.sum() < len(genres)
    assert counts["still_life"] == 0


def test_runs_are_found_by_id_and_by_run_object(isolated_artifacts):
    from genre_core.runs import store
    from genre_core.util import paths

    folder = write_run(paths.runs_dir() / "20260101-000000-tiny-abc")
    by_id = Interpretation.from_run("20260101-000000-tiny-abc")
    by_object = Interpretation.from_run(store.open_run(folder))
    assert by_id.run_dir.resolve() == by_object.run_dir.resolve() == folder.resolve()
    with pytest.raises(FileNotFoundError, match="no-such-run"):
        Interpretation.from_run("no-such-run")
    assert compare_runs(["20260101-000000-tiny-abc"])["test_accuracy"].tolist() == [pytest.approx(0.6)]


def test_two_genres_and_integer_labels():
    classes = ["portrait", "landscape"]
    frame = pd.DataFrame({"true": [0, 1, 1, 0], "portrait": [0.9, 0.3, 0.6, 0.2], "landscape": [0.1, 0.7, 0.4, 0.8]})
    interp = Interpretation.from_predictions(frame, classes)
    metrics = interp.metrics()
    assert metrics["top_k"] == 2 and metrics["top3_accuracy"] == 1.0
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert interp.predicted.tolist() == [0, 1, 0, 1]
    assert interp.cell("landscape", "portrait")["path"].tolist() == ["row 2"]
