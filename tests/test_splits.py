"""Splits and balance: stratified, deterministic splits that keep a source's own split; weights; top-up plan."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from genre_core.data import splits
from genre_core.data.dataset import Dataset


def manifest_of(counts: dict[str, int], split: str = "") -> pd.DataFrame:
    """A manifest with `counts[genre]` rows per genre, all in `split`."""
    rows = []
    for genre, count in counts.items():
        rows += [{"path": f"/data/{genre}/{i:04d}.jpg", "genre": genre, "split": split} for i in range(count)]
    frame = pd.DataFrame(rows)
    classes = sorted(counts)
    frame["label"] = frame["genre"].map(classes.index)
    return frame


def test_unsplit_data_gets_stratified_train_val_test():
    manifest = manifest_of({"a": 100, "b": 50, "c": 20})
    result = splits.assign_splits(manifest, val_fraction=0.1, test_fraction=0.2, seed=3)
    table = pd.crosstab(result["genre"], result["split"])
    assert table.loc["a"].to_dict() == {"test": 20, "train": 70, "val": 10}
    assert table.loc["b"].to_dict() == {"test": 10, "train": 35, "val": 5}
    assert table.loc["c"].to_dict() == {"test": 4, "train": 14, "val": 2}
    # The input is not changed.
    assert set(manifest["split"]) == {""}


def test_splits_are_deterministic_for_a_seed_and_independent_of_row_order():
    manifest = manifest_of({"a": 40, "b": 30, "c": 30})
    first = splits.assign_splits(manifest, seed=7)
    again = splits.assign_splits(manifest, seed=7)
    assert first["split"].tolist() == again["split"].tolist()
    shuffled = manifest.sample(frac=1, random_state=1)
    reshuffled = splits.assign_splits(shuffled, seed=7)
    assert dict(zip(reshuffled["path"], reshuffled["split"])) == dict(zip(first["path"], first["split"]))
    other = splits.assign_splits(manifest, seed=8)
    assert other["split"].tolist() != first["split"].tolist()


def test_a_sources_own_test_split_is_kept_and_val_comes_from_train():
    manifest = pd.concat([manifest_of({"a": 50, "b": 50}, "train"), manifest_of({"a": 10, "b": 10}, "test")
                          .assign(path=lambda f: f["path"] + ".test")], ignore_index=True)
    result = splits.assign_splits(manifest, val_fraction=0.2, seed=0)
    assert (result.loc[manifest["split"] == "test", "split"] == "test").all()
    table = pd.crosstab(result["genre"], result["split"])
    assert table.loc["a"].to_dict() == {"test": 10, "train": 40, "val": 10}
    assert table.loc["b"].to_dict() == {"test": 10, "train": 40, "val": 10}


def test_a_source_with_only_train_gets_test_and_val_carved():
    manifest = manifest_of({"a": 60, "b": 40}, "train")
    result = splits.assign_splits(manifest, val_fraction=0.1, test_fraction=0.1, seed=0)
    assert result["split"].value_counts().to_dict() == {"train": 80, "test": 10, "val": 10}


def test_existing_val_and_test_are_left_alone():
    manifest = manifest_of({"a": 10, "b": 10})
    manifest["split"] = ["train", "val", "test", "train", "train"] * 4
    result = splits.assign_splits(manifest, seed=0)
    assert result["split"].tolist() == manifest["split"].tolist()


def test_rare_genres_do_not_crash_stratification_and_are_explained():
    manifest = manifest_of({"common": 40, "other": 30, "single": 1, "pair": 2})
    notes: list[str] = []
    result = splits.assign_splits(manifest, seed=0, notes=notes)
    rare = result[result["genre"].isin(["single", "pair"])]
    assert (rare["split"] == "train").all()
    assert any("fewer than 3 images" in note and "pair" in note and "single" in note for note in notes)
    assert set(result.loc[result["genre"] == "common", "split"]) == {"train", "val", "test"}


def test_tiny_data_falls_back_without_crashing():
    manifest = manifest_of({"a": 3, "b": 3, "c": 3, "d": 3})
    notes: list[str] = []
    result = splits.assign_splits(manifest, val_fraction=0.1, test_fraction=0.1, seed=0, notes=notes)
    assert set(result["split"]) <= {"train", "val", "test"}
    assert (result["split"] == "train").sum() >= 8
    assert notes  # an unstratified fallback (1 test image for 4 genres) is reported


def test_assign_splits_on_a_dataset_records_notes_in_the_report():
    manifest = manifest_of({"a": 20, "b": 20, "c": 1})
    dataset = Dataset(source="folder", root=__import__("pathlib").Path("/data"), manifest=manifest,
                      classes=["a", "b", "c"], report={"problems": []}, fingerprint="x")
    result = splits.assign_splits(dataset, seed=0)
    assert isinstance(result, Dataset) and result is not dataset
    assert result.report["split_notes"] and result.report["splits"]["train"] > 0
    assert set(dataset.manifest["split"]) == {""}


def test_bad_split_arguments_are_value_errors():
    manifest = manifest_of({"a": 10})
    with pytest.raises(ValueError, match="leaves no training data"):
        splits.assign_splits(manifest, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="val_fraction must be in"):
        splits.assign_splits(manifest, val_fraction=-0.1)
    with pytest.raises(ValueError, match="values other than train/val/test"):
        splits.assign_splits(manifest.assign(split="dev"))
    with pytest.raises(ValueError, match="missing column"):
        splits.assign_splits(manifest.drop(columns="genre"))


def test_subsample_is_stratified_per_split_and_keeps_rare_genres():
    manifest = manifest_of({"a": 90, "b": 30, "c": 1}, "train")
    third = splits.subsample(manifest, 1 / 3, seed=0)
    assert third["genre"].value_counts().to_dict() == {"a": 30, "b": 10, "c": 1}
    assert splits.subsample(manifest, 1 / 3, seed=0)["path"].tolist() == third["path"].tolist()
    assert splits.subsample(manifest, 1 / 3, seed=1)["path"].tolist() != third["path"].tolist()
    assert len(splits.subsample(manifest, 1.0)) == len(manifest)
    with pytest.raises(ValueError, match="fraction"):
        splits.subsample(manifest, 0)


def test_imbalance_stats_known_values():
    stats = splits.imbalance_stats(["a"] * 100 + ["b"] * 10, beta=0.9)
    assert stats["counts"] == {"a": 100, "b": 10}
    assert stats["imbalance_ratio"] == pytest.approx(10.0)
    # Effective number (1 - beta^n) / (1 - beta): for beta = 0.9, n = 10 gives 6.5132, n = 100 gives ~10.
    assert stats["effective_number"]["b"] == pytest.approx((1 - 0.9 ** 10) / 0.1)
    assert stats["effective_number"]["a"] == pytest.approx((1 - 0.9 ** 100) / 0.1)
    weights = stats["class_balanced_weights"]
    assert sum(weights.values()) == pytest.approx(2.0)
    assert weights["b"] / weights["a"] == pytest.approx(stats["effective_number"]["a"] / stats["effective_number"]["b"])


def test_imbalance_stats_of_one_split():
    manifest = pd.concat([manifest_of({"a": 10, "b": 5}, "train"), manifest_of({"a": 1, "b": 9}, "test")
                          .assign(path=lambda f: f["path"] + ".t")], ignore_index=True)
    assert splits.imbalance_stats(manifest, split="train")["counts"] == {"a": 10, "b": 5}
    assert splits.imbalance_stats(manifest)["counts"] == {"a": 11, "b": 14}


def test_balanced_class_weights_match_scikit_learn_formula():
    manifest = manifest_of({"a": 60, "b": 30, "c": 10}, "train")
    weights = splits.class_weights(manifest)
    # n / (k * n_c): 100 / (3 * 60), 100 / (3 * 30), 100 / (3 * 10); keys are the integer labels.
    assert weights == pytest.approx({0: 100 / 180, 1: 100 / 90, 2: 100 / 30})
    assert all(isinstance(key, int) for key in weights)
    by_name = splits.class_weights(manifest["genre"].tolist())
    assert by_name == pytest.approx({"a": 100 / 180, "b": 100 / 90, "c": 100 / 30})


def test_effective_number_class_weights():
    labels = [0] * 1000 + [1] * 10
    weights = splits.class_weights(labels, method="effective", beta=0.99)
    effective = {0: (1 - 0.99 ** 1000) / 0.01, 1: (1 - 0.99 ** 10) / 0.01}
    expected_ratio = effective[0] / effective[1]
    assert weights[1] / weights[0] == pytest.approx(expected_ratio)
    assert sum(weights.values()) == pytest.approx(2.0)
    # beta = 0 gives equal weights; beta -> 1 approaches inverse frequency.
    assert splits.class_weights(labels, "effective", beta=0.0) == pytest.approx({0: 1.0, 1: 1.0})
    near_inverse = splits.class_weights(labels, "effective", beta=0.999999)
    assert near_inverse[1] / near_inverse[0] == pytest.approx(100, rel=0.01)


def test_class_weights_for_listed_classes_and_errors():
    weights = splits.class_weights([0, 0, 1], classes=[0, 1, 2])
    assert weights[2] == 0.0 and weights[0] == pytest.approx(0.75) and weights[1] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="'focal'"):
        splits.class_weights([0, 1], method="focal")
    with pytest.raises(ValueError, match="beta"):
        splits.class_weights([0, 1], method="effective", beta=1.0)
    with pytest.raises(ValueError, match="no images"):
        splits.class_weights([])


def test_topup_plan():
    manifest = pd.concat([manifest_of({"a": 50, "b": 8, "c": 2}, "train"), manifest_of({"c": 40}, "test")
                          .assign(path=lambda f: f["path"] + ".t")], ignore_index=True)
    plan = splits.topup_plan(manifest, minimum=20)
    assert plan.to_dict("records") == [
        {"genre": "c", "have": 2, "need": 20, "copies": 18, "per_image": 9},
        {"genre": "b", "have": 8, "need": 20, "copies": 12, "per_image": 2},
        {"genre": "a", "have": 50, "need": 20, "copies": 0, "per_image": 0},
    ]
    capped = splits.topup_plan(manifest, minimum=20, max_copies_per_image=4).set_index("genre")
    assert capped.loc["c", "copies"] == 8 and capped.loc["b", "copies"] == 12
    assert math.isclose(plan["copies"].sum(), 30)
    with pytest.raises(ValueError, match="minimum"):
        splits.topup_plan(manifest, minimum=0)


def test_splits_on_a_loaded_folder_dataset(tiny_dataset_dir):
    from genre_core.data.sources import load_dataset

    dataset = splits.assign_splits(load_dataset(tiny_dataset_dir), val_fraction=0.2, test_fraction=0.2, seed=0)
    table = pd.crosstab(dataset.manifest["genre"], dataset.manifest["split"])
    assert (table["test"] == 2).all() and (table["val"] == 2).all() and (table["train"] == 6).all()
    assert np.isclose(sum(splits.class_weights(dataset).values()), 3.0)


def test_a_source_split_with_no_training_rows_is_explained_or_resplit():
    manifest = manifest_of({"a": 10, "b": 10}, "test")
    notes: list[str] = []
    kept = splits.assign_splits(manifest, seed=0, notes=notes)
    assert (kept["split"] == "test").all()
    assert any("leaves no rows for training" in note for note in notes)
    fresh = splits.assign_splits(manifest, val_fraction=0.1, test_fraction=0.1, seed=0, keep_source_split=False)
    assert fresh["split"].value_counts().to_dict() == {"train": 16, "test": 2, "val": 2}


def test_representative_split_holds_out_each_cluster_in_proportion():
    """Three far-apart blobs of 60, 30 and 10 rows, 20 held out: every seed holds out 12, 6 and 2 of them (a random
    draw would not), the two parts cover every row once, and a seed gives the same split again."""
    rng = np.random.default_rng(0)
    blob = np.repeat([0, 1, 2], [60, 30, 10])
    features = rng.normal(0, 0.1, (100, 5)) + 10.0 * np.eye(5)[blob]
    draws = set()
    for seed in range(6):
        rest, held = splits.representative_split(features, 20, seed, clusters=3)
        assert np.bincount(blob[held], minlength=3).tolist() == [12, 6, 2]
        assert sorted(np.concatenate([rest, held]).tolist()) == list(range(100))
        again = splits.representative_split(features, 20, seed, clusters=3)
        assert np.array_equal(again[1], held) and np.array_equal(again[0], rest)
        draws.add(tuple(held.tolist()))
    assert len(draws) == 6  # the seed picks which rows of each cluster


def test_representative_split_merges_a_lone_row_and_rejects_bad_input():
    """A single far-off row makes a cluster of its own: it joins the nearest cluster instead of failing the
    stratified split. Sizes that leave a part empty and features that are not a table are named."""
    rng = np.random.default_rng(1)
    features = np.concatenate([rng.normal(0, 0.1, (20, 3)), rng.normal(5, 0.1, (20, 3)), [[100.0, 100.0, 100.0]]])
    rest, held = splits.representative_split(features, 10, 0, clusters=3)
    assert len(rest) == 31 and len(held) == 10
    with pytest.raises(ValueError, match="cannot hold out 41 of 41 rows"):
        splits.representative_split(features, 41, 0)
    with pytest.raises(ValueError, match="cannot hold out 0 of 41 rows"):
        splits.representative_split(features, 0, 0)
    with pytest.raises(ValueError, match=r"2-D array of at least 4 rows, got shape \(41,\)"):
        splits.representative_split(features[:, 0], 10, 0)
