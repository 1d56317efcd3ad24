"""Scoring finished GAN runs again (genre_core.gan.score and `gan score`): against the run's held-out split or
another dataset's images less the run's own files (compared by content), kept in the run's scores.json."""

from __future__ import annotations

import dataclasses
import math
import shutil

import pytest

from app_support.testing import write_gan_run
from genre_core import cli
from genre_core.data import sources
from genre_core.gan import score, trainer
from genre_core.util import fileio
from conftest import make_tiny_image


def write_reference(root, copies: int, new: int, tiny_dataset_dir):
    """A folder dataset: `copies` of the tiny dataset's landscapes under other names, `new` landscapes of its
    own and two portraits."""
    (root / "landscape").mkdir(parents=True)
    (root / "portrait").mkdir()
    for index, source in enumerate(sorted((tiny_dataset_dir / "landscape").iterdir())[:copies]):
        shutil.copy(source, root / "landscape" / f"copy_{index}{source.suffix}")
    for index in range(new):
        make_tiny_image("landscape", 100 + index).save(root / "landscape" / f"new_{index:03d}.png")
    for index in range(2):
        make_tiny_image("portrait", 100 + index).save(root / "portrait" / f"new_{index:03d}.png")
    return root


def tiny_run(run_id, tiny_dataset_dir):
    """A finished landscape run with a tiny generator, trained (as its config says) on the tiny dataset."""
    folder = write_gan_run(run_id, epochs=2)
    config = fileio.read_json(folder / "config.json")
    fileio.atomic_write_json(folder / "config.json", {**config, "data": str(tiny_dataset_dir)})
    return folder


def test_without_files_of_drops_byte_identical_files_under_any_name(tiny_dataset_dir, tmp_path):
    reference = write_reference(tmp_path / "reference", copies=3, new=4, tiny_dataset_dir=tiny_dataset_dir)
    own = sources.keep_genres(sources.load_dataset(tiny_dataset_dir), ["landscape"])
    wanted = sources.keep_genres(sources.load_dataset(reference), ["landscape"])
    outside, dropped = sources.without_files_of(wanted, own)
    assert dropped == 3 and len(outside.manifest) == 4
    assert all("new_" in path for path in outside.manifest["path"])
    assert outside.fingerprint != wanted.fingerprint  # a cache of the subset is its own cache
    # Nothing in common: the dataset itself.
    portraits = sources.keep_genres(sources.load_dataset(tiny_dataset_dir), ["portrait"])
    same, none = sources.without_files_of(wanted, portraits)
    assert same is wanted and none == 0


def test_score_runs_against_another_datasets_outside_images_and_the_held_out_split(tiny_dataset_dir, tmp_path,
                                                                                   isolated_artifacts, capsys):
    run = tiny_run("20260101-000000-landscape-aaaa", tiny_dataset_dir)
    reference = write_reference(tmp_path / "reference", copies=2, new=24, tiny_dataset_dir=tiny_dataset_dir)
    [result] = score.score_runs([run.name], data=str(reference), samples=8)
    assert result["left_out"] == 2 and result["reference"] == str(reference)
    assert result["per_genre"]["landscape"]["n_real"] == 24 and result["per_genre"]["landscape"]["n_generated"] == 8
    assert math.isfinite(result["kid"]) and result["kid"] == result["per_genre"]["landscape"]["kid"]
    # Scoring again with the same reference, checkpoint, samples and seed replaces the entry; the held-out split
    # (here the training images themselves: ten landscapes are too few to hold any out) is a second entry.
    score.score_runs([run.name], data=str(reference), samples=8)
    seen = []
    [own] = score.score_runs([run.name], samples=8, on_result=seen.append)
    assert seen == [own]  # each run's entry as soon as it is ready (the CLI prints it then)
    assert own["reference"] == score.HELD_OUT and "too few to hold any out" in own["what"]
    assert own["per_genre"]["landscape"]["n_real"] == 10
    kept = fileio.read_json(run / score.SCORES_FILE)["scores"]
    assert [entry["reference"] for entry in kept] == [str(reference), score.HELD_OUT]
    rows = score.read_scores(run)
    assert [(row["reference"], row["genre"], row["n_real"], row["left_out"]) for row in rows] == [
        (str(reference), "landscape", 24, 2), (score.HELD_OUT, "landscape", 10, 0)]
    assert list(rows[0]) == list(score.SCORE_COLUMNS)
    # The CLI prints each run beside its history's last held-out KID; a run that cannot be read is named and
    # does not stop the others.
    assert cli.main(["gan", "score", run.name, "nosuchrun", "--reference", str(reference), "--samples", "8"]) == 1
    out = capsys.readouterr().out
    assert f"{run.name}: KID (fixed space, last epoch, 8 samples)" in out
    assert "against 24 real; images of" in out and "2 of its files left out as the run's own" in out
    assert "history's last epoch 0.120 against the held-out images" in out
    assert "nosuchrun: no run with id 'nosuchrun'" in out
    # Scoring the kept best epoch's generator prints what the history logged for that epoch, not the last one's.
    shutil.copy(run / trainer.GENERATOR_FILE, run / trainer.BEST_GENERATOR_FILE)
    fileio.atomic_write_json(run / trainer.BEST_FILE, {"epoch": 1, "kid": 0.3, "best_by": "train"})
    assert cli.main(["gan", "score", run.name, "--reference", str(reference), "--samples", "8",
                     "--checkpoint", "best"]) == 0
    out = capsys.readouterr().out
    assert f"{run.name}: KID (fixed space, best epoch, 8 samples)" in out
    assert "history's epoch 1 (the kept one) 0.500 against the held-out images" in out


def test_a_reference_with_too_few_outside_images_or_without_the_genre_is_named(tiny_dataset_dir, tmp_path,
                                                                               isolated_artifacts, capsys):
    run = tiny_run("20260101-000000-landscape-bbbb", tiny_dataset_dir)
    copies = write_reference(tmp_path / "copies", copies=10, new=3, tiny_dataset_dir=tiny_dataset_dir)
    [result] = score.score_runs([run.name], data=str(copies), samples=8)
    assert result["problem"] == (f"reference dataset {copies}: 3 images of genre 'landscape' are not in the run's "
                                 f"dataset {tiny_dataset_dir} (10 of its files are); at least 20 are needed")
    portraits = tmp_path / "portraits" / "portrait"
    portraits.mkdir(parents=True)
    for index in range(3):
        make_tiny_image("portrait", index).save(portraits / f"p{index}.png")
    [result] = score.score_runs([run.name], data=str(portraits.parent), samples=8)
    assert "genre 'landscape' is not in" in result["problem"] and "its genres are: portrait" in result["problem"]
    assert not (run / score.SCORES_FILE).exists() and score.read_scores(run) == []  # nothing half-written
    (run / score.SCORES_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match="scores.json: not a scores record"):
        score.read_scores(run)
    assert cli.main(["gan", "score", run.name, "--reference", str(tmp_path / "nothing")]) == 2
    assert f"reference dataset {tmp_path / 'nothing'} does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="samples must be at least 2"):
        score.score_run(run, {"images": {}, "what": "", "left_out": 0}, samples=1)


def test_runs_of_one_seed_whose_held_out_images_are_drawn_differently_never_share_a_reference(
        tiny_dataset_dir, tmp_path, isolated_artifacts, monkeypatch):
    # Two runs of one seed, one drawing its held-out images at random and one stratified: against their own
    # held-out images each is scored against its own draw (a shared one would hold images the other trained on);
    # against another dataset they share it.
    first = tiny_run("20260101-000000-landscape-aaaa", tiny_dataset_dir)
    second = tiny_run("20260101-000001-landscape-bbbb", tiny_dataset_dir)
    config = fileio.read_json(second / "config.json")
    fileio.atomic_write_json(second / "config.json", {**config, "holdout": "stratified"})
    built, reference_images = [], score.reference_images
    monkeypatch.setattr(score, "reference_images",
                        lambda config, data=None: built.append(config.holdout) or reference_images(config, data))
    results = score.score_runs([first.name, second.name], samples=8)
    assert [("problem" in result) for result in results] == [False, False] and built == ["random", "stratified"]
    built.clear()
    reference = write_reference(tmp_path / "reference", copies=0, new=24, tiny_dataset_dir=tiny_dataset_dir)
    assert all("problem" not in result for result in score.score_runs([first.name, second.name], data=str(reference),
                                                                      samples=8))
    assert built == ["random"]
    # What else draws the split keeps references apart too; another dataset's images do not depend on it.
    base = trainer.GanConfig.from_run_config(fileio.read_json(first / "config.json"))
    other = dataclasses.replace(base, holdout_fraction=0.3)
    assert score.reference_key(base) != score.reference_key(other)
    assert score.reference_key(base, str(reference)) == score.reference_key(other, str(reference))
    assert score.reference_key(base) != score.reference_key(dataclasses.replace(base, seed=base.seed + 1))


def test_the_held_out_reference_says_whether_the_dataset_split_it_or_the_seed_drew_it(tmp_path, isolated_artifacts):
    """A dataset with its own val/test split (50 or more images each side) is scored against that split, and the
    reference says so rather than naming a draw; one without is scored against the seed's draw."""
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)

    def save(folder, count):
        folder.mkdir(parents=True)
        for index in range(count):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"p{index:03d}.png")

    save(tmp_path / "split" / "train" / "landscape", 60)
    save(tmp_path / "split" / "test" / "landscape", 50)
    save(tmp_path / "unsplit" / "landscape", 110)
    base = trainer.GanConfig(genre="landscape", image_size=16, seed=5, holdout_fraction=0.5, judge="")
    own = trainer.load_training_images(dataclasses.replace(base, data=str(tmp_path / "split")))
    assert own.held_out_from == {"landscape": "split"} and len(own[2]) == 50
    assert score.reference_images(dataclasses.replace(base, data=str(tmp_path / "split")))["what"] == (
        f"the run's held-out images of {tmp_path / 'split'} (its own val/test split)")
    drawn = dataclasses.replace(base, data=str(tmp_path / "unsplit"))
    assert trainer.load_training_images(drawn).held_out_from == {"landscape": "drawn"}
    assert score.reference_images(drawn)["what"] == (
        f"the run's held-out images of {tmp_path / 'unsplit'} (seed 5, random draw)")
    # Genres held out differently are named one by one.
    assert trainer.held_out_text(base, {"landscape": "split", "portrait": "drawn"}) == (
        "landscape: its own val/test split; portrait: seed 5, random draw")
