"""Discriminator-guided sampling (genre_core.gan.guided, `gan sample/score --discriminator-resample K`): the run's
own last discriminator, restored from its checkpoint, keeps n of K x n candidates in proportion to its calibrated
density ratio."""

from __future__ import annotations

import numpy as np
import pytest

from genre_core import cli
from genre_core.gan import guided, score, trainer
from genre_core.runs import store
from test_gan import run_config


def test_select_keeps_n_distinct_candidates_in_proportion_to_their_weights():
    chosen = guided.select(np.zeros(10), 4, seed=3)
    assert len(chosen) == 4 and len(set(chosen)) == 4 and list(chosen) == sorted(chosen)
    assert list(guided.select(np.zeros(10), 4, seed=3)) == list(chosen)  # the seed decides
    assert list(guided.select(np.array([0.0, 50.0, 0.0, 0.0]), 1, seed=0)) == [1]
    # One of two candidates whose weights are 2 : 1 (log 2 against 0): the first is kept two times in three.
    kept_first = np.mean([guided.select(np.array([np.log(2.0), 0.0]), 1, seed)[0] == 0 for seed in range(3000)])
    assert kept_first == pytest.approx(2 / 3, abs=0.03)
    with pytest.raises(ValueError, match="cannot keep 5 of 4 candidates"):
        guided.select(np.zeros(4), 5, seed=0)


def test_calibration_recovers_the_log_density_ratio_of_a_known_score():
    rng = np.random.default_rng(0)
    # Real scores ~ N(1, 1), generated ~ N(0, 1): log p_real(s) / p_generated(s) = s - 0.5, a slope of 1.
    real, generated = rng.normal(1.0, 1.0, 20_000), rng.normal(0.0, 1.0, 20_000)
    assert guided.calibrate(real, generated) == pytest.approx(1.0, abs=0.08)
    # The same scores the wrong way round: no guidance.
    assert guided.calibrate(generated, real) == 0.0
    # Unequal counts are weighed equally: the slope does not depend on them.
    assert guided.calibrate(real[:2_000], generated) == pytest.approx(1.0, abs=0.12)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "x"])
def test_the_factor_must_be_a_whole_number_of_at_least_one(bad):
    with pytest.raises(ValueError, match="discriminator_resample must be a whole number of at least 1"):
        guided.check_factor(bad)


def test_guided_samples_come_from_the_runs_candidates_by_its_restored_discriminator(tiny_dataset_dir,
                                                                                  isolated_artifacts, capsys):
    config = run_config(tiny_dataset_dir)
    run = store.create_run("gan", config.to_dict(), classes=[config.genre])
    trainer.execute(run)

    images, info = guided.sample(run, 6, seed=0, factor=3)
    candidates = trainer.sample(run, 18, seed=0)
    assert images.shape == (6, 16, 16, 3) and images.dtype == np.uint8
    assert info["factor"] == 3 and info["candidates"] == 18 and info["slope"] >= 0
    assert 1 <= info["effective_candidates"] <= 18
    # Every kept image is one of the candidates, in candidate order; the same call gives the same images.
    positions = [next(index for index, candidate in enumerate(candidates) if np.array_equal(candidate, image))
                 for image in images]
    assert positions == sorted(positions) and len(set(positions)) == 6
    assert info["kept_first"] == sum(position < 6 for position in positions)
    np.testing.assert_array_equal(guided.sample(run, 6, seed=0, factor=3)[0], images)
    # Factor 1 is plain sampling.
    plain, plain_info = guided.sample(run, 6, seed=0, factor=1)
    np.testing.assert_array_equal(plain, candidates[:6])
    assert plain_info == {"factor": 1}

    # The discriminator is the checkpoint's (the last epoch's): its scores are its logits' mean over columns.
    gan, real, _ = guided.load_discriminator(run)
    fresh = trainer.build_gan(config, 1, real)
    trainer.load_checkpoint(fresh, run)
    direct = np.asarray(fresh.discriminator(candidates[:4].astype(np.float32) / 127.5 - 1.0, training=False),
                        np.float64).mean(axis=1)
    np.testing.assert_allclose(guided.discriminator_scores(gan, candidates[:4]), direct, rtol=1e-4, atol=1e-5)
    assert len(real) == 10  # every training landscape of the tiny set (fewer than CALIBRATION_IMAGES)

    # gan score keeps the guided score beside the plain one; gan sample prints what the guidance did.
    reference = score.reference_images(trainer.GanConfig.from_run_config(run.config()))
    plain_entry = score.score_run(run, reference, samples=6)
    guided_entry = score.score_run(run, reference, samples=6, discriminator_resample=3)
    assert plain_entry["discriminator_resample"] == 1 and guided_entry["discriminator_resample"] == 3
    assert guided_entry["per_genre"]["landscape"]["guidance"]["candidates"] == 18
    rows = score.read_scores(run)
    assert [row["discriminator_resample"] for row in rows] == [1, 3]
    out = isolated_artifacts / "guided.png"
    assert cli.main(["gan", "sample", str(run.path), "--n", "4", "--discriminator-resample", "2",
                     "--out", str(out)]) == 0
    assert out.exists() and "discriminator-guided" in capsys.readouterr().out


def test_a_run_without_its_checkpoint_or_of_the_dcgan_says_it_cannot_be_guided(tiny_dataset_dir,
                                                                              isolated_artifacts):
    config = run_config(tiny_dataset_dir, epochs=1)
    run = store.create_run("gan", config.to_dict(), classes=[config.genre])
    trainer.execute(run)
    assert guided.has_discriminator(run)
    (run.path / store.CHECKPOINT_DIR / trainer.CHECKPOINT_STATE).unlink()
    assert not guided.has_discriminator(run)
    with pytest.raises(ValueError, match=f"run {run.id} keeps no discriminator .*state.npz is missing"):
        guided.sample(run, 2, factor=2)
    dcgan = store.create_run("gan", {**config.to_dict(), "architecture": "dcgan"}, classes=[config.genre])
    with pytest.raises(ValueError, match="needs a projected GAN, not 'dcgan'"):
        guided.load_discriminator(dcgan)
    assert cli.main(["gan", "score", str(run.path), "--samples", "4", "--discriminator-resample", "2"]) == 1
    assert not (run.path / score.SCORES_FILE).exists()  # nothing written for a run that could not be scored
