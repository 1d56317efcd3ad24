"""DCGAN models, training step, run folder (checkpoint, resume, cancel), sampling and the gan CLI; all tiny."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genre_core import cli
from genre_core.gan import networks, quality, trainer
from genre_core.runs import store
from genre_core.util import fileio


def tiny_model_config(conditional=False, num_classes=2, image_size=16):
    """A GanConfig-like object for networks.make_gan with tiny sizes. Without the spectrum penalty (the projected
    default), whose target needs real images: the tests that train these networks on a batch test other parts."""
    config = trainer.GanConfig(image_size=image_size, latent_dim=8, base_channels=8, conditional=conditional,
                           genre=None if conditional else "landscape", augment_probability=1.0,
                           spectrum_penalty=0.0)
    return trainer._ModelShape(config, num_classes)


def eager(*gans):
    """Make these GANs step eagerly: the same `train_step` code, not traced. A trace costs about 6 s per GAN
    instance even at these sizes, and the tests that compare one step with and without a term build three or
    more; `test_one_projected_train_step_with_every_optional_term_on` takes one traced step with all of those
    terms on."""
    for gan in gans:
        gan.run_eagerly = True
    return gans[0] if len(gans) == 1 else gans


def one_step_each(images, *gans) -> list[dict]:
    """One eager train step of each GAN on the same images (label 0) from the same seed state (so that GANs built
    with the same weights differ only by what their configs switch on); their logs, in order."""
    logs = []
    for gan in (eager(*gans) if len(gans) > 1 else [eager(*gans)]):
        gan.seed_generator.state.assign([7, 0])
        logs.append(gan.train_on_batch(images, np.zeros(len(images), np.int32), return_dict=True))
    return logs


def assert_a_generator_term_steps(config, prepare, images, metric: str) -> None:
    """A generator-only term (on in `config`; `prepare` sets its target and a large weight on the model, so that
    its share of the gradient is plain): one step with it changes the generator differently from one without, from
    the same weights and seed, leaves the discriminator's step as it was, and reports `metric` (above 0)."""
    plain = tiny_model_config(image_size=int(config.image_size))
    without, with_term, control = networks.make_gan(plain), networks.make_gan(config), networks.make_gan(plain)
    for gan in (with_term, control):
        gan.set_weights(without.get_weights())
    prepare(with_term)
    logs = one_step_each(images, without, with_term, control)
    assert same_weights(without.generator, control.generator)
    assert not same_weights(without.generator, with_term.generator)
    assert same_weights(without.discriminator, with_term.discriminator)
    assert logs[1][metric] > 0 and metric not in logs[0]


def same_weights(a, b) -> bool:
    """Whether two models' trainable weights are equal (to 1e-6): did one train step leave them alike?"""
    return all(np.allclose(x.numpy(), y.numpy(), atol=1e-6) for x, y in zip(a.trainable_weights, b.trainable_weights))


def assert_saved_as_its_weight_and_off_in_older_runs(key: str, weight: str, value: float):
    """A default weight (-1 in GanConfig) is saved in a new run's config.json as the weight in use, `value`, so a
    later change of the default does not change what the run resumes with (a run that saved another weight, as
    under an older default, resumes with that one); a run written before it was the default (its config has no
    `key`) resumes with it off."""
    saved = trainer.new_run_config(trainer.GanConfig())[0]
    assert saved[key] == value
    before = {k: v for k, v in saved.items() if k != key}
    assert getattr(trainer.GanConfig.from_run_config(before), weight) == 0.0
    assert getattr(trainer.GanConfig.from_run_config(saved), weight) == value
    assert getattr(trainer.GanConfig.from_run_config({**saved, key: value / 2}), weight) == value / 2


def assert_read_as_off_in_older_runs_and_passed_by_the_cli(key: str, off, flag: str, value):
    """A GanConfig field added later: a run config without `key` (written before it) reads as `off`, and
    `gan train FLAG value` parses to `value` (in the argument named after the flag)."""
    older = trainer.new_run_config(trainer.GanConfig().validate())[0]
    older.pop(key)
    assert getattr(trainer.GanConfig.from_run_config(older), key) == off
    parsed = cli.build_parser().parse_args(["gan", "train", flag, str(value)])
    assert getattr(parsed, flag.lstrip("-").replace("-", "_")) == value


def test_channel_widths_and_network_shapes():
    assert networks.channel_widths(64) == [256, 128, 64, 32]
    assert networks.channel_widths(32, base_channels=8) == [32, 16, 8]
    with pytest.raises(ValueError, match="not supported"):
        networks.check_size(48)
    generator = networks.make_generator(32, latent_dim=8, base_channels=8)
    discriminator = networks.make_discriminator(32, base_channels=8)
    images = np.asarray(generator(np.zeros((3, 8), np.float32), training=False))
    assert images.shape == (3, 32, 32, 3)
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert tuple(discriminator(images).shape) == (3, 1)


def test_diff_augment_keeps_shape_passes_gradients_and_probability_zero_is_identity():
    import keras
    import tensorflow as tf

    seed = keras.random.SeedGenerator(0)
    images = tf.Variable(np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32))
    with tf.GradientTape() as tape:
        augmented = networks.diff_augment(images, seed, 1.0)
        total = tf.reduce_sum(augmented)
    assert augmented.shape == images.shape
    assert not np.allclose(augmented.numpy(), images.numpy())
    assert tape.gradient(total, images) is not None
    unchanged = networks.diff_augment(images, seed, tf.constant(0.0))
    np.testing.assert_array_equal(unchanged.numpy(), images.numpy())


def test_augment_policy_without_colour_only_moves_and_cuts_out_pixels():
    """Without "color", every augmented pixel is a pixel of the image or a zero (translation's border, cutout);
    with it, the values themselves change. The policy reaches the Gan from the config."""
    import keras

    grey = np.full((8, 16, 16, 3), 0.5, np.float32)
    seed = keras.random.SeedGenerator(0)
    moved = networks.diff_augment(grey, seed, 1.0, ("translation", "cutout")).numpy()
    assert set(np.unique(moved)) <= {0.0, 0.5} and (moved == 0.0).any()
    coloured = networks.diff_augment(grey, seed, 1.0, ("color",)).numpy()
    assert not set(np.unique(coloured)) <= {0.0, 0.5}

    config = tiny_model_config()
    config.config.augment_policy = ["translation", "cutout"]
    assert networks.make_gan(config).augment_policy == ("translation", "cutout")
    assert networks.make_gan(tiny_model_config()).augment_policy == networks.AUGMENT_POLICIES
    with pytest.raises(ValueError, match="augment_policy has unknown transform"):
        trainer.GanConfig(augment_policy=["rotate"]).validate()


def test_geometric_augment_rotates_and_scales_and_passes_gradients():
    """"geometric" keeps a flat image flat (mirrored borders, no black corners), turns a vertical line into one
    that leans or widens, keeps the values in range, and passes a gradient back to the images."""
    import keras
    import tensorflow as tf

    seed = keras.random.SeedGenerator(0)
    grey = np.full((8, 32, 32, 3), 0.5, np.float32)
    np.testing.assert_allclose(networks.diff_augment(grey, seed, 1.0, ("geometric",)).numpy(), 0.5, atol=1e-5)
    line = np.full((8, 32, 32, 3), -1.0, np.float32)
    line[:, :, 15:17, :] = 1.0
    turned = networks.diff_augment(line, seed, 1.0, ("geometric",)).numpy()
    assert turned.min() >= -1.0 - 1e-5 and turned.max() <= 1.0 + 1e-5
    changed = [not np.allclose(turned[i], line[i], atol=1e-3) for i in range(8)]
    assert all(changed)
    # The line stays a line through the middle: the centre pixel is still bright.
    assert (turned[:, 16, 15:17, 0].max(axis=1) > 0.5).all()
    images = tf.Variable(line)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(networks.diff_augment(images, seed, 1.0, ("geometric",)) ** 2)
    gradient = tape.gradient(total, images)
    assert gradient is not None and float(tf.reduce_sum(tf.abs(gradient))) > 0
    assert trainer.GanConfig(augment_policy=["translation", "geometric"]).validate().augment_policy == [
        "translation", "geometric"]


def test_one_train_step_changes_both_networks_and_the_ema():
    model = networks.make_gan(tiny_model_config())
    before = [w.numpy().copy() for w in (model.generator.weights[0], model.discriminator.trainable_weights[0],
                                    model.ema_generator.weights[0])]
    images = np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    logs = model.train_on_batch(images, np.zeros(8, np.int32), return_dict=True)
    after = [w.numpy().copy() for w in (model.generator.weights[0], model.discriminator.trainable_weights[0],
                                   model.ema_generator.weights[0])]
    for name, old, new in zip(("generator", "discriminator", "ema generator"), before, after):
        assert not np.allclose(old, new), f"{name} weights did not change"
    assert np.isfinite(logs["d_loss"]) and np.isfinite(logs["g_loss"])


def test_ema_slows_down_with_the_learning_rate():
    """The EMA's per-step share is scaled by (lr / starting lr) ** ema_lr_power, so once the rate is 0 the EMA
    stands still instead of converging on the last trained generator; power 0 keeps the fixed share."""
    config = trainer.GanConfig(learning_rate=1e-4)
    assert config.ema_lr_power == 0.5
    assert config.ema_rate_scale(1e-4) == 1.0 and config.ema_rate_scale(2.5e-5) == pytest.approx(0.5)
    assert config.ema_rate_scale(0.0) == 0.0
    assert trainer.GanConfig(ema_lr_power=1.0).ema_rate_scale(2.5e-5) == pytest.approx(0.25)
    assert trainer.GanConfig(ema_lr_power=0.0).ema_rate_scale(2.5e-5) == 1.0
    with pytest.raises(ValueError, match="ema_lr_power must be in 0..2, got -1"):
        trainer.GanConfig(ema_lr_power=-1).validate()

    model = networks.make_gan(tiny_model_config())
    model.ema_rate_scale.assign(0.0)
    images = np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    ema_before = [w.numpy().copy() for w in model.ema_generator.trainable_weights]
    generator_before = model.generator.trainable_weights[0].numpy().copy()
    model.train_on_batch(images, np.zeros(8, np.int32))
    assert not np.allclose(generator_before, model.generator.trainable_weights[0].numpy())
    for old, weight in zip(ema_before, model.ema_generator.trainable_weights):
        np.testing.assert_array_equal(old, weight.numpy())
    model.ema_rate_scale.assign(1.0)
    model.train_on_batch(images, np.zeros(8, np.int32))
    assert not np.allclose(ema_before[0], model.ema_generator.trainable_weights[0].numpy())


def test_batchnorm_recalibration_averages_the_statistics_of_its_batches():
    """recalibrate_ema in batches gives the mean of the batches' statistics: for the first BatchNorm (whose
    input no other BatchNorm changes), two batches of 256 give the same moving mean as one batch of 512."""
    import keras

    model = networks.make_gan(tiny_model_config())
    first = next(layer for layer in model.ema_generator.layers if isinstance(layer, keras.layers.BatchNormalization))
    model.recalibrate_ema(samples=512, seed=7, batch_size=512)
    whole = first.moving_mean.numpy().copy()
    model.recalibrate_ema(samples=512, seed=7, batch_size=256)
    np.testing.assert_allclose(first.moving_mean.numpy(), whole, rtol=1e-4, atol=1e-5)
    model.recalibrate_ema(samples=256, seed=7, batch_size=256)
    assert not np.allclose(first.moving_mean.numpy(), whole, rtol=1e-4, atol=1e-5)
    assert first.momentum == 0.9  # the layer's own momentum is back


def test_conditional_label_changes_the_output():
    model = networks.make_gan(tiny_model_config(conditional=True, num_classes=2))
    noise = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    first = np.asarray(model.generator([noise, np.array([0, 0], np.int32)], training=False))
    second = np.asarray(model.generator([noise, np.array([1, 1], np.int32)], training=False))
    assert not np.allclose(first, second)
    logits = [np.asarray(model.discriminator([first, np.array([label] * 2, np.int32)])) for label in (0, 1)]
    assert not np.allclose(logits[0], logits[1])


def test_grid_tiles_images_and_rejects_bad_input():
    images = np.stack([np.full((4, 5, 3), value, np.uint8) for value in (10, 20, 30)])
    canvas = trainer.grid(images, columns=2, gap=1)
    assert canvas.shape == (4 * 2 + 1, 5 * 2 + 1, 3)
    assert canvas[0, 0, 0] == 10 and canvas[0, 6, 0] == 20 and canvas[5, 0, 0] == 30
    assert canvas[5, 6, 0] == 255  # the empty fourth cell stays white
    with pytest.raises(ValueError, match="shape"):
        trainer.grid(np.zeros((4, 5, 3)), 2)


def test_slerp_ends_at_both_vectors():
    start, end = np.array([1.0, 0.0]), np.array([0.0, 2.0])
    path = networks.slerp(start, end, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(path[0], start, atol=1e-12)
    np.testing.assert_allclose(path[-1], end, atol=1e-12)
    assert path[1, 0] > 0 and path[1, 1] > 0


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="not supported"):
        trainer.GanConfig(image_size=100).validate()
    with pytest.raises(ValueError, match="needs a genre"):
        trainer.GanConfig(genre=None).validate()
    with pytest.raises(ValueError, match="batch_size"):
        trainer.GanConfig(batch_size=0).validate()
    with pytest.raises(ValueError, match=r"augment_target must be between 0 and 1 \(exclusive\), got 1.0"):
        trainer.GanConfig(augment_target=1.0).validate()
    with pytest.raises(ValueError, match="augment_speed must be in 0..1, got 2"):
        trainer.GanConfig(augment_speed=2).validate()


def run_config(data_dir, **overrides):
    """A tiny GAN run config on the tiny folder dataset."""
    values = dict(data=str(data_dir), genre="landscape", image_size=16, epochs=2, batch_size=4,
                  min_steps_per_epoch=3, latent_dim=8, base_channels=8, kid_samples=0, grid_images=4,
                  judge="")  # no judge unless a test asks: the bundled model would be slow here
    values.update(overrides)
    return trainer.GanConfig(**values).validate()


def test_training_images_decode_only_the_gans_genres(tiny_dataset_dir, isolated_artifacts, monkeypatch):
    decoded = []
    prepare = trainer.cache_module.prepare_cache

    def recording(dataset, *args, **kwargs):
        decoded.append(list(dataset.classes))
        return prepare(dataset, *args, **kwargs)

    monkeypatch.setattr(trainer.cache_module, "prepare_cache", recording)
    images, labels, _, _, classes = trainer.load_training_images(run_config(tiny_dataset_dir))
    assert decoded == [["landscape"]] and classes == ["landscape"] and set(labels.tolist()) == {0}
    assert len(images) == 10  # every landscape, nothing else
    config = run_config(tiny_dataset_dir, conditional=True, genre=None, genres=["portrait", "landscape"])
    _, labels, _, _, classes = trainer.load_training_images(config)
    assert decoded[-1] == ["landscape", "portrait"] and classes == ["portrait", "landscape"]
    assert sorted(set(labels.tolist())) == [0, 1]  # labels follow the run's genre order
    with pytest.raises(ValueError, match="genre 'fresco' is not in .*; its genres are: .*landscape"):
        trainer.load_training_images(run_config(tiny_dataset_dir, genre="fresco"))


def test_held_out_share_is_random_by_seed_or_stratified_by_feature_clusters(tmp_path, isolated_artifacts):
    """A genre without a val/test split: `holdout` random keeps the seeded permutation that runs have always used;
    stratified holds out `splits.representative_split` of the genre's scaled fixed-space features, so each kind of
    image (here 70 dark and 30 bright ones, far apart in any space) is held out in proportion. Older runs read as
    random; an unknown holdout is named; `gan train --holdout stratified` passes it."""
    folder = tmp_path / "kinds" / "landscape"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(100):
        level = 30 if index < 70 else 220
        pixels = np.clip(rng.normal(level, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"painting_{index:03d}.png")
    base = dict(holdout_fraction=0.5, seed=4)
    random_config = run_config(tmp_path / "kinds", **base)
    train, _, held, _, _ = trainer.load_training_images(random_config)
    cache = trainer.cache_module.prepare_cache(trainer.sources.keep_genres(
        trainer.sources.load_dataset(random_config.data), ["landscape"]), (16, 16), random_config.policy)
    indices = cache.ok_indices(genre="landscape")
    all_images, _ = trainer.cache_module.load_arrays(cache, indices)
    shuffled = np.random.default_rng(4).permutation(indices)
    expected_held, _ = trainer.cache_module.load_arrays(cache, np.sort(shuffled[:50]))
    np.testing.assert_array_equal(held, expected_held)
    assert len(train) == 50
    stratified = run_config(tmp_path / "kinds", holdout="stratified", **base)
    train, _, held, _, _ = trainer.load_training_images(stratified)
    features = quality.feature_extractor("hed_vgg16_fixed")(all_images)
    rest, chosen = trainer.splits.representative_split(features / quality.fixed_scale(features), 50, 4,
                                                       clusters=trainer.HOLDOUT_CLUSTERS)
    np.testing.assert_array_equal(held, all_images[chosen])
    np.testing.assert_array_equal(train, all_images[rest])
    bright = lambda images: int((images.reshape(len(images), -1).mean(axis=1) > 128).sum())  # noqa: E731
    assert (bright(held), bright(train)) == (15, 15)
    with pytest.raises(ValueError, match=r"holdout 'odd' is not one of \('random', 'stratified'\)"):
        trainer.GanConfig(holdout="odd").validate()
    assert_read_as_off_in_older_runs_and_passed_by_the_cli("holdout", "random", "--holdout", "stratified")


def test_run_trains_writes_its_folder_and_samples_are_reproducible(tiny_dataset_dir, isolated_artifacts):
    # The adaptive augmentation starts at 0.5, moves fast and is held for the second half of the run.
    config = run_config(tiny_dataset_dir, kid_samples=6, kid_image_size=32, feature_space="hed_vgg16",
                        augment_probability=0.5, augment_speed=0.05, augment_hold=0.5)
    run = store.create_run("gan", config.to_dict(), classes=[config.genre])
    trainer.execute(run)
    for name in ("config.json", "classes.json", "generator.keras", "history.csv", "quality.json",
                 "samples/epoch_0001.png", "samples/epoch_0002.png", "checkpoint/state.npz"):
        assert (run.path / name).exists(), name
    history = run.history()
    assert list(history["epoch"]) == [1, 2]
    assert {"d_loss", "g_loss", "kid", "kid_std", "aug_p", "seconds"} <= set(history.columns)
    assert history[["kid", "kid_train", "kid_fixed_train"]].notna().all().all()
    best = trainer.read_best(run)
    assert (best["best_by"], best["score_of"]) == ("train", "kid_fixed_train")
    assert best["score"] == pytest.approx(history["kid_fixed_train"].min())
    assert best["epoch"] == int(history["epoch"][history["kid_fixed_train"].idxmin()])
    # lr_decay linear over 2 epochs of 3 steps, set before every step: the last steps are at 2/3 and 5/3 epochs,
    # the rate falling with the square of the share left (lr_decay_power 2, the default).
    assert list(history["learning_rate"]) == pytest.approx([1e-4 * (1 - 1 / 3) ** 2, 1e-4 * (1 - 5 / 6) ** 2])
    assert list(history["steps"]) == [3, 3]
    # The trainer sets the hold before every step: it moved in epoch 1 and stood still through epoch 2.
    assert history["aug_p"][0] != pytest.approx(0.5) and history["aug_p"][1] == history["aug_p"][0]
    quality = fileio.read_json(run.path / "quality.json")
    assert quality["latest"]["feature_space"] == "hed_vgg16_pool345@32"
    assert fileio.read_json(run.path / "checkpoint/state.json")["epoch"] == 2
    grid_image = Image.open(run.path / "samples/epoch_0001.png")
    assert grid_image.size == (16 * 2 + 2, 16 * 2 + 2)

    first = trainer.sample(run, 3, seed=5)
    trainer._GENERATORS.clear()  # Reload the saved generator from disk.
    again = trainer.sample(run, 3, seed=5)
    assert first.shape == (3, 16, 16, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, trainer.sample(run, 3, seed=6))
    strip = trainer.interpolate(run, 0, 1, steps=4)
    np.testing.assert_array_equal(strip[0], trainer.sample(run, 1, seed=0)[0])
    with pytest.raises(ValueError, match="only genre"):
        trainer.sample(run, 2, seed=0, genre="portrait")

    out = isolated_artifacts / "grid.png"
    assert cli.main(["gan", "sample", str(run.path), "--n", "4", "--seed", "1", "--out", str(out)]) == 0
    assert Image.open(out).size == (16 * 2 + 2, 16 * 2 + 2)
    assert cli.main(["gan", "interpolate", run.id, "--seeds", "0", "3", "--steps", "3"]) == 0
    assert Image.open(run.path / "samples/interpolate_0_3.png").size == (16 * 3 + 4, 16)
    assert cli.main(["gan", "sample", "no-such-run"]) == 2
    # A fresh process, where nothing has registered the custom layers yet, samples the reflect-padded run too.
    fresh = subprocess.run([sys.executable, "-m", "genre_core", "gan", "sample", str(run.path), "--n", "2",
                            "--out", str(isolated_artifacts / "fresh.png")], capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert Image.open(isolated_artifacts / "fresh.png").size == (16 * 2 + 2, 16)


def test_cancel_then_resume_continues_from_the_checkpoint(tiny_dataset_dir, isolated_artifacts):
    config = run_config(tiny_dataset_dir, epochs=3)
    run = store.create_run("gan", config.to_dict(), classes=[config.genre])
    events = []

    def cancel_in_second_epoch(event):
        events.append(event)
        if event["stage"] == "batch" and any(e["stage"] == "epoch" and e["done"] == 1 for e in events):
            run.request_cancel()

    with pytest.raises(store.Cancelled):
        trainer.execute(run, progress=cancel_in_second_epoch)
    assert list(run.history()["epoch"]) == [1]
    assert fileio.read_json(run.path / "checkpoint/state.json")["epoch"] == 1
    assert not (run.path / "samples/epoch_0002.png").exists()

    run.clear_cancel()
    trainer.execute(run)
    assert list(run.history()["epoch"]) == [1, 2, 3]
    assert fileio.read_json(run.path / "checkpoint/state.json")["epoch"] == 3


def test_conditional_run_samples_the_chosen_genre(tiny_dataset_dir, isolated_artifacts, monkeypatch):
    make_judge_run(["landscape", "portrait"])
    config = run_config(tiny_dataset_dir, conditional=True, genre=None, genres=["landscape", "portrait"], epochs=1,
                        kid_samples=8, kid_image_size=32, feature_space="hed_vgg16", judge="auto", judge_samples=2)
    run = store.create_run("gan", config.to_dict())
    trainer.execute(run)
    assert run.classes() == ["landscape", "portrait"]
    # Diversity and the judge's shares per genre (4 samples of each against that genre's held-out images; the
    # judge sees 2 of them), as the GAN page reads them.
    rows = trainer.quality_by_genre(run)
    assert [(row["epoch"], row["genre"]) for row in rows] == [(1, "landscape"), (1, "portrait")]
    assert all(row["diversity"] > 0 and row["recognised"] in (0.0, 0.5, 1.0) for row in rows)
    assert run.history()["recognised"].iloc[0] == pytest.approx(np.mean([row["recognised"] for row in rows]))
    assert run.history()["diversity"].iloc[0] == pytest.approx(np.mean([row["diversity"] for row in rows]))
    seen = []
    original = trainer._generate

    def spy(generator, noise, labels, batch_size=64):
        seen.append(None if labels is None else labels.tolist())
        return original(generator, noise, labels, batch_size)

    monkeypatch.setattr(trainer, "_generate", spy)
    portraits = trainer.sample(run, 2, seed=0, genre="portrait")
    landscapes = trainer.sample(run, 2, seed=0, genre="landscape")
    assert seen == [[1, 1], [0, 0]]
    assert not np.array_equal(portraits, landscapes)
    with pytest.raises(ValueError, match="not one of"):
        trainer.sample(run, 2, seed=0, genre="abstract")


def test_the_best_epoch_by_own_kid_is_kept_and_sampled_on_request(tiny_dataset_dir, isolated_artifacts, capsys):
    """_keep_if_best saves the EMA generator and best.json only when an epoch's KID (run's own space; here the
    "heldout" rule, which reads `kid`) is the lowest so far; sampling uses the last generator by default (since
    stop 62) and that one on request; a run without one samples its last generator for "best" too; a damaged
    best.json and an unknown checkpoint are refused by name."""
    assert trainer.DEFAULT_CHECKPOINT == "last"
    from functools import partial
    config = run_config(tiny_dataset_dir)
    run = store.create_run("gan", config.to_dict(), classes=[config.genre])
    gan = networks.make_gan(trainer._ModelShape(config, 1))
    trainer.save_generator(gan, run)
    assert trainer.read_best(run) is None
    assert trainer.generator_path(run, "best") == trainer.generator_path(run) == run.path / trainer.GENERATOR_FILE
    last_only = trainer.sample(run, n=2, seed=3, checkpoint="best")
    keep_if_best = trainer._keep_if_best
    trainer_keep = partial(keep_if_best, best_by="heldout")
    assert trainer_keep(gan, run, 1, {"kid": 5.0, "feature_space": "s", "kid_fixed": 0.5}) is True
    weights = gan.ema_generator.get_weights()
    gan.ema_generator.set_weights([w + 0.05 for w in weights])  # a later, different generator
    assert trainer_keep(gan, run, 2, {"kid": 7.0, "feature_space": "s"}) is False  # worse: not kept
    assert trainer_keep(gan, run, 3, {}) is False  # not measured
    trainer.save_generator(gan, run)  # the last epoch's generator
    assert trainer.read_best(run)["epoch"] == 1 and trainer.read_best(run)["kid"] == 5.0
    assert trainer.generator_path(run, "best") == run.path / trainer.BEST_GENERATOR_FILE
    assert trainer.generator_path(run) == run.path / trainer.GENERATOR_FILE
    best, last = trainer.sample(run, n=2, seed=3, checkpoint="best"), trainer.sample(run, n=2, seed=3)
    np.testing.assert_array_equal(best, last_only)  # epoch 1's generator, as saved then
    assert not np.array_equal(best, last)
    np.testing.assert_array_equal(last, trainer.sample(run, n=2, seed=3, checkpoint="last"))
    assert trainer_keep(gan, run, 4, {"kid": 3.0, "feature_space": "s"}) is True
    assert trainer.read_best(run)["epoch"] == 4
    np.testing.assert_array_equal(trainer.sample(run, n=2, seed=3, checkpoint="best"), last)
    out = run.path / "last.png"
    assert cli.main(["gan", "sample", run.id, "--n", "2", "--checkpoint", "last", "--out", str(out)]) == 0
    assert out.exists()
    assert cli.main(["gan", "interpolate", run.id, "--steps", "2", "--checkpoint", "best"]) == 0
    with pytest.raises(SystemExit):
        cli.main(["gan", "sample", run.id, "--checkpoint", "middle"])
    assert "invalid choice: 'middle'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="checkpoint 'middle'"):
        trainer.generator_path(run, "middle")
    (run.path / trainer.BEST_FILE).write_text('{"epoch": "one"}')
    with pytest.raises(ValueError, match="best.json is not a best-epoch record"):
        trainer.read_best(run)
    # Training does not stop over a damaged record: the next measured epoch replaces it.
    assert trainer_keep(gan, run, 5, {"kid": 9.0, "feature_space": "s"}) is True
    assert trainer.read_best(run)["epoch"] == 5
    assert "keeping epoch 5 as the best" in capsys.readouterr().out


def test_the_best_epoch_is_chosen_by_kid_against_the_training_images_by_default(tiny_dataset_dir,
                                                                               isolated_artifacts):
    """best_by "train" (the default) reads `kid_fixed_train` (the fixed space against the training sample), never
    the held-out `kid` nor the own-space `kid_train`; best.json names the rule, its number and that number's
    column; a record that chose by another number is replaced; runs written before `best_by` read as "heldout",
    and the CLI passes the flag; a bad rule is refused by name."""
    assert trainer.GanConfig().best_by == "train"
    measured = {"kid": 1.0, "kid_train": 3.0, "kid_fixed_train": 2.0}
    assert trainer.selection_kid(measured) == 2.0 and trainer.selection_kid(measured, "heldout") == 1.0
    assert trainer.selection_kid({"kid": 1.0, "kid_train": 1.0}) is None
    assert trainer.selection_kid({"kid_fixed_train": np.nan}) is None
    with pytest.raises(ValueError, match="best_by 'test' is not one of"):
        trainer.selection_kid({}, "test")
    with pytest.raises(ValueError, match="best_by 'test' is not one of"):
        trainer.GanConfig(best_by="test").validate()
    assert_read_as_off_in_older_runs_and_passed_by_the_cli("best_by", "heldout", "--best-by", "heldout")
    config = run_config(tiny_dataset_dir)
    run = store.create_run("gan", config.to_dict(), classes=[config.genre])
    gan = networks.make_gan(trainer._ModelShape(config, 1))
    trainer.save_generator(gan, run)
    assert trainer._keep_if_best(gan, run, 1, {"kid": 9.0, "kid_fixed_train": 4.0, "kid_fixed": 0.5}) is True
    # A lower held-out KID (or own-space training KID) with a higher fixed training KID is not better.
    assert trainer._keep_if_best(gan, run, 2, {"kid": 1.0, "kid_train": 0.1, "kid_fixed_train": 5.0}) is False
    assert trainer._keep_if_best(gan, run, 3, {"kid": 1.0}) is False  # kid_fixed_train not measured
    best = trainer.read_best(run)
    assert (best["epoch"], best["best_by"], best["score"], best["score_of"]) == (1, "train", 4.0, "kid_fixed_train")
    assert (best["kid"], best["kid_fixed_train"]) == (9.0, 4.0)
    assert trainer._keep_if_best(gan, run, 4, {"kid": 9.5, "kid_fixed_train": 3.0}) is True
    assert trainer.read_best(run)["epoch"] == 4
    # A record written by the held-out rule (or before best_by, which has neither field), or by stop 61's own-space
    # "train" (no score_of), chose by another number and is not compared with.
    stop_61 = {"epoch": 4, "kid": 0.1, "best_by": "train", "score": 0.1, "kid_train": 0.1}
    for older, score_of in (({"epoch": 4, "kid": 0.1}, "kid"), (stop_61, "kid_train")):
        fileio.atomic_write_json(run.path / trainer.BEST_FILE, older)
        assert trainer.read_best(run)["score_of"] == score_of
        assert trainer._keep_if_best(gan, run, 5, {"kid": 9.0, "kid_fixed_train": 8.0}) is True
        assert (trainer.read_best(run)["score_of"], trainer.read_best(run)["epoch"]) == ("kid_fixed_train", 5)


def test_best_from_keeps_no_epoch_before_its_share_of_the_run_and_always_the_last_may_count(
        tiny_dataset_dir, isolated_artifacts, monkeypatch):
    """With `best_from`, an epoch that ends before that share of the run (`share_done`) is never kept, however low
    its kid_fixed_train; among the later ones the lowest is, and the last epoch counts even past the share; best.json
    records the share. Runs written before it keep every epoch; bad shares are refused by name; the CLI passes it."""
    assert trainer.GanConfig().best_from == 0.0
    assert_read_as_off_in_older_runs_and_passed_by_the_cli("best_from", 0.0, "--best-from", 0.4)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="best_from must be in 0..1"):
            trainer.GanConfig(best_from=bad).validate()
    real_measure = trainer.measure
    scripted = {}

    def measure(generator, *args, **kwargs):
        return {**real_measure(generator, *args, **kwargs), "kid_fixed_train": next(scripted["kids"])}

    monkeypatch.setattr(trainer, "measure", measure)
    # Five epochs: share_done 0.2, 0.4, 0.6, 0.8, 1.0; epoch 1 is the lowest of all, epoch 4 of those from 0.5 on.
    kids = [0.1, 0.5, 0.4, 0.3, 0.35]
    for best_from, kept in ((0.0, 1), (0.5, 4), (0.9, 5)):
        scripted["kids"] = iter(kids)
        config = run_config(tiny_dataset_dir, epochs=5, kid_samples=6, kid_image_size=32, best_from=best_from)
        run = store.create_run("gan", config.to_dict(), classes=[config.genre])
        trainer.execute(run)
        best = trainer.read_best(run)
        assert (best["epoch"], best["best_from"], best["score"]) == (kept, best_from, kids[kept - 1])
        assert list(run.history()["kid_fixed_train"]) == kids


def test_the_training_sample_is_seeded_training_images_in_the_runs_own_space(tiny_dataset_dir, isolated_artifacts):
    """prepare_reference with train_images keeps both spaces' features of a sample of them (kid_samples, seeded by
    the run's seed + TRAIN_SAMPLE_SEED_OFFSET) beside the held-out ones, and measure reports kid_train and
    kid_fixed_train from them (here for a stub generator that replays the sampled training images)."""
    config = run_config(tiny_dataset_dir, kid_samples=4, kid_image_size=32, feature_space="hed_vgg16", seed=3)
    train, _, held, held_labels, classes = trainer.load_training_images(config)
    reference = trainer.prepare_reference(config, held, held_labels, classes, train_images=train)
    rng = np.random.default_rng(3 + trainer.TRAIN_SAMPLE_SEED_OFFSET)
    chosen = np.sort(rng.choice(len(train), 4, replace=False))
    expected, expected_fixed = quality.extract_many(train[chosen], [reference.extractor, reference.fixed_extractor])
    np.testing.assert_allclose(reference.train_features, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reference.train_fixed_features, expected_fixed, rtol=1e-5, atol=1e-5)
    without = trainer.prepare_reference(config, held, held_labels, classes)
    assert without.train_features is None and without.train_fixed_features is None

    class Replay:  # a "generator" that returns the chosen training images themselves
        def __call__(self, inputs, training=False):
            return train[chosen][: len(inputs)].astype(np.float32) / 127.5 - 1.0

    measured = trainer.measure(Replay(), np.zeros((4, 8), np.float32), None, reference, classes, seed=0,
                               judge=False)
    # The replayed images' features are `expected`: kid_train compares them with the training sample, in
    # subsets of half the smaller set, as `kid` does with the held-out features.
    assert measured["kid_train"] == pytest.approx(quality.kid(expected, reference.train_features, 50, 2, 0)[0])
    assert measured["kid"] == pytest.approx(quality.kid(expected, reference.features, 50, 2, 0)[0])
    # In the fixed space, scaled by the training sample's own RMS: the fixed KID with the training sample as the
    # real set.
    assert measured["kid_fixed_train"] == pytest.approx(
        quality.fixed_kid(expected_fixed, reference.train_fixed_features, seed=0)["kid"])


def test_quality_by_genre_reads_every_epoch_and_names_a_bad_file(isolated_artifacts):
    run = store.create_run("gan", {"genre": None, "conditional": True}, classes=["landscape", "portrait"])
    assert trainer.quality_by_genre(run) == []  # nothing measured yet
    fileio.atomic_write_json(run.path / trainer.QUALITY_FILE, {"history": [
        {"epoch": 1, "per_genre": {"landscape": {"diversity": 0.5}, "portrait": {}}},
        {"epoch": 2, "per_genre": {"landscape": {"diversity": 0.9, "recognised": 0.6, "recognised_real": 0.7}}}]})
    assert trainer.quality_by_genre(run.path) == [
        {"epoch": 1, "genre": "landscape", "diversity": 0.5, "recognised": None, "recognised_real": None},
        {"epoch": 1, "genre": "portrait", "diversity": None, "recognised": None, "recognised_real": None},
        {"epoch": 2, "genre": "landscape", "diversity": 0.9, "recognised": 0.6, "recognised_real": 0.7}]
    (run.path / trainer.QUALITY_FILE).write_text('{"history": 3}')
    with pytest.raises(ValueError, match=r"quality\.json: not a GAN quality record"):
        trainer.quality_by_genre(run)
    (run.path / trainer.QUALITY_FILE).write_text("{")
    with pytest.raises(ValueError, match=r"quality\.json: corrupt JSON"):
        trainer.quality_by_genre(run)


def test_gan_train_cli_rejects_bad_input(capsys):
    assert cli.main(["gan", "train", "--data", "/no/such/folder", "--epochs", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    for bad, message in (("1.5", "augmentation probability 1.5 is not in 0..1"),
                         ("often", "'often' is neither 'adaptive' nor a probability")):
        with pytest.raises(SystemExit):
            cli.main(["gan", "train", "--epochs", "1", "--augment", bad])
        assert message in capsys.readouterr().err
    for bad, message in (("-1", "argument --mode-seeking: -1 is below 0"),
                         ("much", "argument --mode-seeking: 'much' is not a number")):
        with pytest.raises(SystemExit):
            cli.main(["gan", "train", "--conditional", "--mode-seeking", bad])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["gan", "train", "--lecam", "-0.3"])
    assert "argument --lecam: -0.3 is below 0" in capsys.readouterr().err
    assert cli.main(["gan", "train", "--epochs", "1", "--lecam", "20"]) == 2
    assert "lecam must be in 0..10 (or -1, the default), got 20.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["gan", "train", "--spectrum-penalty", "-1"])
    assert "argument --spectrum-penalty: -1 is below 0" in capsys.readouterr().err
    assert cli.main(["gan", "train", "--epochs", "1", "--spectrum-penalty", "500"]) == 2
    assert "spectrum_penalty must be in 0..100 (or -1, the default), got 500.0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="spectrum_penalty_kind 'sideways' is not one of"):
        trainer.GanConfig(spectrum_penalty_kind="sideways").validate()


def test_gan_train_flags_reach_the_run_config(monkeypatch):
    """--learning-rate, --beta-1, --generator-padding, --global-head, --precision, --lr-decay, --ema-lr-power,
    --ema-decay, --discriminator-downsample, --augment, --augment-policy, --mode-seeking, --feature-mixing,
    --conditional-norm, --generator-convs, --lecam, --generator-noise(-from, -gain), --generator-top-channels,
    --spectrum-penalty(-kind, -period), --r1, --augment-target/-speed, --pseudo-augment,
    --discriminator-lr-scale, --global-head-input, --augment-hold, --lr-decay-power, --discriminator-lr-floor and
    --sampled-generator, --global-head-end, --discriminator-reconstruction, --global-head-size, --layout-freeze and
    --head-balance set the run's config; left out, the GanConfig defaults stand."""
    from genre_core.commands import gan as gan_command

    started = []
    monkeypatch.setattr(gan_command.jobs, "start", lambda kind, config, background=False: started.append(config)
                        or types.SimpleNamespace(id="x", path="x", status=lambda: {"state": "finished"}))
    assert cli.main(["gan", "train", "--epochs", "1", "--learning-rate", "3e-4", "--beta-1", "0.5",
                     "--generator-padding", "zeros", "--global-head", "0", "--precision", "float32",
                     "--lr-decay", "none", "--ema-lr-power", "0", "--ema-decay", "0.9975",
                     "--discriminator-downsample", "blur",
                     "--augment", "0.5", "--augment-policy", "translation", "cutout", "geometric",
                     "--conditional", "--mode-seeking", "0.1", "--feature-mixing", "channels_scales",
                     "--conditional-norm", "--generator-convs", "2", "--lecam", "0.5",
                     "--generator-noise", "0.1", "--generator-noise-from", "64", "--generator-noise-gain", "10",
                     "--generator-top-channels", "32", "--spectrum-penalty", "0.3",
                     "--spectrum-penalty-kind", "direction", "--spectrum-penalty-period", "16",
                     "--r1", "0.5", "--augment-target", "0.7", "--augment-speed", "0.02",
                     "--pseudo-augment", "--discriminator-lr-scale", "0.5", "--global-head-input", "features",
                     "--augment-hold", "0.3", "--lr-decay-power", "2",
                     "--discriminator-lr-floor", "0.5", "--sampled-generator", "better"]) == 0
    assert cli.main(["gan", "train", "--epochs", "1", "--spectrum-penalty-kind", "bins"]) == 0
    assert cli.main(["gan", "train", "--epochs", "1"]) == 0
    assert cli.main(["gan", "train", "--epochs", "1", "--augment", "adaptive"]) == 0
    assert cli.main(["gan", "train", "--epochs", "1", "--global-head-end", "0.5",
                     "--discriminator-reconstruction", "1", "--global-head-size", "64",
                     "--layout-freeze", "0.67", "--head-balance", "patches"]) == 0
    chosen, bins, default, adaptive, rising = started
    assert (rising.global_head, rising.global_head_end, default.global_head_end) == (0.2, 0.5, 0.0)
    assert (rising.global_head_size, default.global_head_size) == (64, 32)
    assert (rising.layout_freeze, default.layout_freeze) == (0.67, 0.0)
    assert (rising.head_balance, default.head_balance) == ("patches", "heads")
    assert bins.spectrum_penalty_kind == "bins"
    assert (chosen.augment_probability, chosen.adaptive_augment) == (0.5, False)
    assert (chosen.conditional, chosen.mode_seeking_weight) == (True, 0.1)
    assert (chosen.conditional_norm, default.conditional_norm) == (True, False)
    assert (chosen.generator_convs, default.generator_convs) == (2, trainer.GanConfig.generator_convs)
    assert (chosen.generator_noise, default.generator_noise) == (0.1, trainer.GanConfig.generator_noise)
    assert (chosen.generator_noise_from, chosen.generator_noise_gain) == (64, 10.0)
    assert (chosen.generator_top_channels, default.generator_top_channels) == (32, 0)
    assert (chosen.spectrum_penalty, default.spectrum_penalty, default.spectrum_penalty_weight) == (0.3, -1.0, 0.1)
    assert (chosen.spectrum_penalty_kind, default.spectrum_penalty_kind) == ("direction", "level")
    assert (chosen.spectrum_penalty_period, default.spectrum_penalty_period) == (16, 8)
    assert (chosen.r1, default.r1) == (0.5, 0.0)
    assert (chosen.augment_target, chosen.augment_speed) == (0.7, 0.02)
    assert (chosen.pseudo_augment, default.pseudo_augment) == (True, False)
    assert (chosen.discriminator_lr_scale, default.discriminator_lr_scale) == (0.5, 1.0)
    assert (chosen.global_head_input, default.global_head_input) == ("features", "pixels")
    assert (chosen.augment_hold, default.augment_hold) == (0.3, 0.0)
    assert (chosen.lr_decay_power, default.lr_decay_power) == (2.0, 2.0)
    assert (chosen.discriminator_lr_floor, default.discriminator_lr_floor) == (0.5, 0.0)
    assert (chosen.sampled_generator, default.sampled_generator) == ("better", "ema")
    assert (chosen.ema_decay, default.ema_decay) == (0.9975, trainer.GanConfig.ema_decay)
    assert (rising.discriminator_reconstruction, default.discriminator_reconstruction) == (1.0, -1.0)
    assert default.discriminator_reconstruction_weight == trainer.PROJECTED_RECONSTRUCTION
    assert (default.augment_target, default.augment_speed) == (0.6, 0.005)
    assert (default.generator_noise_from, default.generator_noise_gain) == (trainer.GanConfig.generator_noise_from,
                                                                            trainer.GanConfig.generator_noise_gain)
    assert (chosen.lecam, chosen.lecam_weight, default.lecam, default.lecam_weight) == (0.5, 0.5, -1.0, 0.3)
    assert (default.mode_seeking, default.mode_seeking_weight) == (-1.0, 0.0)  # unconditional: off
    assert (chosen.feature_mixing, default.feature_mixing) == ("channels_scales", "none")
    assert chosen.augment_policy == ["translation", "cutout", "geometric"]
    assert default.augment_policy == list(networks.AUGMENT_POLICIES)
    assert (adaptive.augment_probability, adaptive.adaptive_augment) == (0.0, True)
    assert (default.augment_probability, default.adaptive_augment) == (
        trainer.GanConfig.augment_probability, trainer.GanConfig.adaptive_augment)
    assert (chosen.learning_rate, chosen.beta_1, chosen.generator_padding, chosen.global_head, chosen.precision,
            chosen.lr_decay, chosen.ema_lr_power, chosen.discriminator_downsample) == (
        3e-4, 0.5, "zeros", 0.0, "float32", "none", 0.0, "blur")
    assert (default.learning_rate, default.generator_padding, default.global_head, default.precision,
            default.lr_decay, default.ema_lr_power, default.discriminator_downsample) == (
        1e-4, "reflect", 0.2, "auto", "linear", 0.5, "average")


def test_sampled_generator_better_keeps_whichever_of_ema_and_trained_measures_lower(tiny_dataset_dir,
                                                                                   isolated_artifacts, monkeypatch,
                                                                                   capsys):
    """With sampled_generator "better", every measured epoch measures the EMA generator and then the trained one on
    the same latent batch, and the one with the lower KID against the training sample is the epoch's: its numbers
    in history.csv (with both fixed-space KIDs and which it was), its weights in generator.keras, and, when best,
    in generator_best.keras and best.json. Epoch 1 is made to favour the trained generator, epoch 2 the EMA one
    (a worse epoch than 1, so the best stays epoch 1's trained generator). The judge classifies only the kept
    generator's images, once an epoch. A bad choice is refused by name."""
    real_measure, real_recognise, real_share = trainer.measure, trainer.recognise, quality.recognisability
    train_kids = iter([2.0, 1.0, 1.5, 3.0])  # (EMA, trained) at epoch 1, then at epoch 2
    passed, judged, classified = [], [], []

    def measure(generator, *args, **kwargs):
        result = real_measure(generator, *args, **kwargs)
        passed.append([w.copy() for w in generator.get_weights()])
        return {**result, "kid_fixed_train": next(train_kids)}  # what the choice reads (best_by "train", the default)

    def recognise(generator, *args, **kwargs):
        judged.append([w.copy() for w in generator.get_weights()])
        return real_recognise(generator, *args, **kwargs)

    def recognisability(classifier, images, genre, **kwargs):
        classified.append(len(images))
        return real_share(classifier, images, genre, **kwargs)

    monkeypatch.setattr(trainer, "measure", measure)
    monkeypatch.setattr(trainer, "recognise", recognise)
    monkeypatch.setattr(quality, "recognisability", recognisability)
    make_judge_run(["abstract", "landscape", "portrait"])
    config = run_config(tiny_dataset_dir, epochs=2, kid_samples=6, kid_image_size=32, sampled_generator="better",
                        judge="auto", judge_samples=4)
    run = store.create_run("gan", config.to_dict(), classes=[config.genre])
    trainer.execute(run)
    history = run.history()
    assert list(history["generator"]) == ["trained", "ema"]
    assert list(history["kid_fixed_train"]) == [1.0, 1.5]
    assert history["kid_fixed"][0] == history["kid_fixed_trained"][0] != history["kid_fixed_ema"][0]
    assert history["kid_fixed"][1] == history["kid_fixed_ema"][1] != history["kid_fixed_trained"][1]
    assert len(passed) == 4
    # Once for the real images, then once an epoch for the kept generator's first 4 images: epoch 1's trained one
    # and epoch 2's EMA.
    assert classified == [4, 4, 4] and len(judged) == 2
    for seen, kept in zip(judged, (passed[1], passed[2]), strict=True):
        for weight, value in zip(seen, kept, strict=True):
            np.testing.assert_allclose(weight, value)
    assert history["recognised"].between(0, 1).all() and history["recognised_real"].between(0, 1).all()
    assert trainer.read_best(run)["epoch"] == 1 and trainer.read_best(run)["generator"] == "trained"
    for saved, expected in ((trainer.load_generator(run, "best"), passed[1]),  # epoch 1's trained generator
                            (trainer.load_generator(run, "last"), passed[2])):  # epoch 2's EMA generator
        for weight, value in zip(saved.get_weights(), expected, strict=True):
            np.testing.assert_allclose(weight, value)
    printed = capsys.readouterr().out
    assert "trained generator (fixed KID: EMA" in printed and "ema generator (fixed KID: EMA" in printed
    with pytest.raises(ValueError, match="sampled_generator 'latest' is not one of"):
        trainer.GanConfig(sampled_generator="latest").validate()


def test_a_rise_of_the_training_image_kid_rolls_the_whole_state_back_to_the_best_epoch(tiny_dataset_dir,
                                                                                      isolated_artifacts, monkeypatch,
                                                                                      capsys):
    """With `rollback`, an epoch whose kid_fixed_train is above rollback_threshold of the lowest so far restores
    the training state kept at that epoch (networks, EMA, optimizers; not the random seed), once per allowed
    rollback and never at the last epoch; history.csv says where it went back to and the checkpoint counts it."""
    assert trainer.rollback_threshold(0.2, 1.4) == pytest.approx(0.28)
    assert trainer.rollback_threshold(0.05, 1.4) == pytest.approx(0.08)  # at least ROLLBACK_MARGIN above
    assert trainer.rollback_threshold(-0.01, 1.4) == pytest.approx(0.02)
    assert trainer.GanConfig().rollback == 0.0
    assert_read_as_off_in_older_runs_and_passed_by_the_cli("rollback", 0.0, "--rollback", 1.4)
    for bad, message in (({"rollback": 1.0}, "rollback must be above 1"),
                         ({"rollback": 1.4, "best_by": "heldout"}, "needs best_by"),
                         ({"rollback": 1.4, "rollback_limit": 0}, "rollback_limit must be at least 1")):
        with pytest.raises(ValueError, match=message):
            trainer.GanConfig(kid_samples=8, **bad).validate()
    real_measure, real_save = trainer.measure, trainer.save_checkpoint
    # Epoch 4 rises past 0.28 (1.4 x epoch 3's 0.2): back to epoch 3. Epoch 5 rises again, but the one rollback
    # allowed is spent; epoch 6 is the last.
    train_kids = iter([0.5, 0.3, 0.2, 0.5, 0.6, 0.9])
    measured, saved = [], []

    def measure(generator, *args, **kwargs):
        measured.append([w.copy() for w in generator.get_weights()])
        return {**real_measure(generator, *args, **kwargs), "kid_fixed_train": next(train_kids)}

    def save_checkpoint(gan, run, epoch, extra=None):
        saved.append((extra["rollbacks"], [w.copy() for w in gan.ema_generator.get_weights()],
                      [v.numpy().copy() for v in gan.generator_optimizer.variables],
                      gan.seed_generator.state.numpy().copy()))
        return real_save(gan, run, epoch, extra)

    monkeypatch.setattr(trainer, "measure", measure)
    monkeypatch.setattr(trainer, "save_checkpoint", save_checkpoint)
    config = run_config(tiny_dataset_dir, epochs=6, kid_samples=6, kid_image_size=32, rollback=1.4,
                        rollback_limit=1)
    run = store.create_run("gan", config.to_dict(), classes=[config.genre])
    trainer.execute(run)
    history = run.history()
    assert history["rolled_back_to"].fillna(0).astype(int).tolist() == [0, 0, 0, 3, 0, 0]
    assert [count for count, *_ in saved] == [0, 0, 0, 1, 1, 1]
    # After epoch 4's end the state is epoch 3's: its EMA generator (as measured) and its optimizer moments; the
    # random seed went on.
    for weight, value in zip(saved[3][1], measured[2], strict=True):
        np.testing.assert_array_equal(weight, value)
    for weight, value in zip(saved[3][2], saved[2][2], strict=True):
        np.testing.assert_array_equal(weight, value)
    assert not np.array_equal(saved[3][3], saved[2][3])
    assert not all(np.array_equal(w, v) for w, v in zip(saved[4][1], measured[2]))  # epoch 5 trained on from it
    assert trainer.read_best(run)["epoch"] == 3
    out = capsys.readouterr().out
    assert "rolled back to epoch 3 (kid_fixed_train 0.5000 > 0.2800; 1 of 1)" in out
    # The tiny set's 10 landscapes are too few to hold any out, and the run says what it measures against.
    assert "no images held out (too few), so quality is measured against the 10 training images" in out


def test_the_discriminator_learns_at_its_scale_and_floor_of_the_generators_bent_schedule(tiny_dataset_dir,
                                                                                       isolated_artifacts):
    # With the schedule's power at 2 and a floor for D's rate, so that one tiny run shows the trainer using all three.
    config = run_config(tiny_dataset_dir, discriminator_lr_scale=0.25, lr_decay_power=2.0, discriminator_lr_floor=0.1)
    run = store.create_run("gan", config.to_dict(), classes=[config.genre])
    trainer.execute(run)
    # Set before every step with the schedule: the last step (5/3 epochs of 2) ran G at 1e-4 / 36; D's quarter of
    # that (0.69e-6) is below its floor, a tenth of its own starting rate (0.25e-4 / 10).
    last = 1e-4 * (1 - 5 / 6) ** 2
    assert run.history()["learning_rate"].iloc[-1] == pytest.approx(last)  # the column is the generator's rate
    resumed = networks.make_gan(trainer._ModelShape(config, 1))
    assert float(resumed.discriminator_optimizer.learning_rate) == pytest.approx(0.25 * 1e-4)  # from the start
    trainer.load_checkpoint(resumed, run)
    assert float(resumed.generator_optimizer.learning_rate) == pytest.approx(last)
    assert float(resumed.discriminator_optimizer.learning_rate) == pytest.approx(0.1 * 0.25 * 1e-4)
    assert trainer.GanConfig().discriminator_lr_scale == 1.0
    for bad in (0, -1, 11):
        with pytest.raises(ValueError, match=f"discriminator_lr_scale must be more than 0 and at most 10, got {bad}"):
            trainer.GanConfig(discriminator_lr_scale=bad).validate()


def test_a_whole_picture_head_schedule_weights_its_columns_by_the_share_it_is_given():
    """With a scheduled share, the hinge losses weight the whole-picture head's columns so that they carry exactly
    that share (the plain mean otherwise); the schedule is refused without a head or outside 0..1."""
    d = networks.make_projected_discriminator(32, base_channels=2, global_weight=0.2)
    columns, total = networks.global_head_columns(d), d.output_shape[-1]
    assert columns == round(0.25 * (total - columns)) and networks.global_head_columns(
        networks.make_projected_discriminator(32, base_channels=2)) == 0
    values = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]], np.float32)  # column means 2, 3, 4
    assert float(networks.weighted_logit_mean(values, np.ones(3, np.float32))) == pytest.approx(3.0)
    assert float(networks.weighted_logit_mean(values, np.array([1.0, 0.0, 3.0], np.float32))) == pytest.approx(3.5)

    shape = tiny_model_config()
    plain = networks.make_gan(shape)
    shape.config.global_head_end = 0.6
    scheduled = eager(networks.make_gan(shape))
    total = scheduled.discriminator.output.shape[-1]
    assert plain.global_head_share() == pytest.approx(scheduled.global_columns / total)  # about 0.2, by rounding
    ones_on_global = np.zeros((4, total), np.float32)
    ones_on_global[:, total - scheduled.global_columns:] = 1.0  # patch logits 0, the head's columns 1
    for share in (0.2, 0.45, 0.6):
        scheduled.set_global_head_share(share)
        assert scheduled.global_head_share() == pytest.approx(share)
        assert float(scheduled._logit_mean(ones_on_global)) == pytest.approx(share, abs=1e-6)
        # D's hinge loss: each patch logit pays 1 on either side, each of the head's columns 2.
        assert float(scheduled._discriminator_loss(-ones_on_global, ones_on_global)) == pytest.approx(2 + 2 * share)
    assert float(plain._logit_mean(ones_on_global)) == pytest.approx(plain.global_head_share())
    scheduled.train_step((np.zeros((4, 16, 16, 3), np.float32), np.zeros((4,), np.int32)))  # one step runs
    with pytest.raises(ValueError, match="built without a whole-picture head schedule"):
        plain.set_global_head_share(0.5)
    with pytest.raises(ValueError, match="share must be in 0..1"):
        scheduled.set_global_head_share(1.0)
    shape.config.global_head = 0.0
    with pytest.raises(ValueError, match="needs a discriminator with a whole-picture head"):
        networks.make_gan(shape)
    for bad in ({"global_head": 0.0, "global_head_end": 0.5}, {"global_head_end": 1.0}, {"global_head_end": -0.1}):
        with pytest.raises(ValueError, match="global_head_end must be in 0..1"):
            trainer.GanConfig(**bad).validate()


def test_a_run_raises_the_whole_picture_heads_share_along_the_schedule(tiny_dataset_dir, isolated_artifacts):
    config = run_config(tiny_dataset_dir, global_head_end=0.6)
    assert config.global_head_share_at(0, 0) == pytest.approx(0.2)
    assert config.global_head_share_at(2, 0) == pytest.approx(0.6)  # the end of 2 epochs
    run = store.create_run("gan", config.to_dict(), classes=[config.genre])
    trainer.execute(run)
    shares = list(run.history()["global_head_share"])
    # Set before every step: epoch 1 ends on step 3 of 6 (2/6 done), epoch 2 on step 6 (5/6 done).
    assert shares == pytest.approx([0.2 + 0.4 * 2 / 6, 0.2 + 0.4 * 5 / 6], abs=1e-4)
    assert "global_head_share" not in store.create_run("gan", run_config(tiny_dataset_dir).to_dict(),
                                                       classes=["landscape"]).history()


def test_the_discriminators_rate_follows_the_generators_down_to_its_floor():
    floored = trainer.GanConfig(learning_rate=1e-4, discriminator_lr_scale=2.0, discriminator_lr_floor=0.5).validate()
    assert floored.discriminator_learning_rate(1e-4) == pytest.approx(2e-4)  # the start: scale times G's
    assert floored.discriminator_learning_rate(0.6e-4) == pytest.approx(1.2e-4)  # above the floor: scale times G's
    assert floored.discriminator_learning_rate(0.2e-4) == pytest.approx(1e-4)  # half of D's own start, not 0.4e-4
    assert floored.discriminator_learning_rate(0.0) == pytest.approx(1e-4)  # G has stopped; D has not
    default = trainer.GanConfig(learning_rate=1e-4)
    assert default.discriminator_lr_floor == 0.0 and default.discriminator_learning_rate(0.0) == 0.0
    assert default.discriminator_learning_rate(0.3e-4) == pytest.approx(0.3e-4)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=f"discriminator_lr_floor must be in 0..1, got {bad}"):
            trainer.GanConfig(discriminator_lr_floor=bad).validate()


def test_linear_learning_rate_decay_follows_the_budget_or_the_epochs():
    budget = trainer.GanConfig(epochs=0, time_budget_minutes=10, learning_rate=1e-4, lr_decay_power=1.0)
    assert budget.learning_rate_at(0, 0.0) == pytest.approx(1e-4)
    assert budget.learning_rate_at(5, 150.0) == pytest.approx(0.75e-4)  # a quarter of the 600 s budget
    assert budget.learning_rate_at(9, 900.0) == 0.0  # past the budget
    epochs = trainer.GanConfig(epochs=4, learning_rate=2e-4, lr_decay_power=1.0)
    assert [epochs.learning_rate_at(epoch, 1e6) for epoch in range(4)] == pytest.approx([2e-4, 1.5e-4, 1e-4, 0.5e-4])
    assert epochs.learning_rate_at(3.5, 1e6) == pytest.approx(0.25e-4)  # halfway through the last epoch
    both = trainer.GanConfig(epochs=4, time_budget_minutes=10, learning_rate=1e-4, lr_decay_power=1.0)
    assert both.learning_rate_at(1, 450.0) == pytest.approx(0.25e-4)  # the budget is further along than the epochs
    constant = trainer.GanConfig(epochs=4, lr_decay="none", learning_rate=1e-4)
    assert constant.learning_rate_at(3, 1e6) == 1e-4
    with pytest.raises(ValueError, match="lr_decay 'cosine'"):
        trainer.GanConfig(lr_decay="cosine").validate()


def test_the_learning_rate_decay_power_bends_the_line():
    """lr_decay_power P: the rate is learning_rate * (1 - share done) ** P (Keras' PolynomialDecay's power), on
    the same clock as the line; 1 is the line itself, and `lr_decay none` ignores it."""
    import keras

    square = trainer.GanConfig(epochs=3, learning_rate=1e-4, lr_decay_power=2.0).validate()
    # A ninth of the starting rate with a third of the run left, where the line gives a third.
    rates = [square.learning_rate_at(epoch, 1e6) for epoch in range(4)]
    assert rates == pytest.approx([1e-4, 1e-4 * 4 / 9, 1e-4 / 9, 0.0])
    budget = trainer.GanConfig(epochs=0, time_budget_minutes=10, learning_rate=1e-4, lr_decay_power=2.0)
    assert budget.learning_rate_at(0, 300.0) == pytest.approx(0.25e-4)  # half the budget
    # The same numbers as Keras' own polynomial schedule over steps with the run's share done as the step.
    reference = keras.optimizers.schedules.PolynomialDecay(1e-4, decay_steps=12, end_learning_rate=0.0, power=2.0)
    for step in range(13):
        assert square.learning_rate_at(step / 4, 1e6) == pytest.approx(float(reference(step)))
    assert trainer.GanConfig().lr_decay_power == 2.0
    # A run written before the faster fall became the default (its config has no lr_decay_power) kept the line.
    older = trainer.new_run_config(trainer.GanConfig().validate())[0]
    older.pop("lr_decay_power")
    assert trainer.GanConfig.from_run_config(older).lr_decay_power == 1.0
    line = trainer.GanConfig(epochs=4, learning_rate=2e-4, lr_decay_power=1.0)
    assert line.learning_rate_at(1, 1e6) == pytest.approx(1.5e-4)
    assert trainer.GanConfig(epochs=4, lr_decay="none", lr_decay_power=3.0).learning_rate_at(3, 1e6) == 1e-4
    for bad in (0, 0.1, 5, -1):
        with pytest.raises(ValueError, match=f"lr_decay_power must be in 0.25..4, got {bad}"):
            trainer.GanConfig(lr_decay_power=bad).validate()


def test_augment_hold_stops_the_adaptive_probabilities_for_the_last_share_of_the_run():
    """augment_hold F: over the last F of the run (the learning-rate schedule's clock, `share_done`) the
    adaptive augmentation's and APA's per-step moves are multiplied by 0, so both probabilities stay where they
    are; before it, and with F = 0 (the default), they move as ever."""
    budget = trainer.GanConfig(epochs=0, time_budget_minutes=10, augment_hold=0.25)
    assert trainer.GanConfig.augment_hold == 0.0
    assert budget.share_done(3, 300.0) == pytest.approx(0.5)
    assert [budget.augment_rate_scale(0, seconds) for seconds in (0.0, 449.0, 450.0, 600.0, 900.0)] == [
        1.0, 1.0, 0.0, 0.0, 0.0]
    epochs = trainer.GanConfig(epochs=4, augment_hold=0.25)
    assert [epochs.augment_rate_scale(epoch, 0.0) for epoch in (0, 2.9, 3.0, 3.5)] == [1.0, 1.0, 0.0, 0.0]
    assert trainer.GanConfig(epochs=4).augment_rate_scale(3.9, 0.0) == 1.0
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match=f"augment_hold must be in 0..1 \\(exclusive of 1\\), got {bad}"):
            trainer.GanConfig(augment_hold=bad).validate()

    config = tiny_model_config()
    config.config.pseudo_augment = True
    gan = eager(networks.make_gan(config))
    gan.adaptive_augment, gan.augment_target, gan.augment_speed = True, -1.0, 0.01  # a step up whatever D says
    gan.augment_probability.assign(0.3)
    gan.pseudo_probability.assign(0.2)
    images = np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    gan.augment_rate_scale.assign(0.0)
    logs = gan.train_on_batch(images, np.zeros(8, np.int32), return_dict=True)
    assert (float(logs["aug_p"]), float(logs["apa_p"])) == pytest.approx((0.3, 0.2))
    gan.augment_rate_scale.assign(1.0)
    logs = gan.train_on_batch(images, np.zeros(8, np.int32), return_dict=True)
    assert float(logs["aug_p"]) >= 0.31 and float(logs["apa_p"]) >= 0.21


def test_projected_networks_shapes_and_frozen_trunk():
    assert networks.fastgan_widths(128, 16) == {4: 256, 8: 256, 16: 128, 32: 64, 64: 32, 128: 16}
    assert [networks.projected_feature_size(size) for size in (16, 32, 64, 128, 256)] == [32, 32, 64, 64, 128]
    generator = networks.make_fastgan_generator(32, latent_dim=8, base_channels=2)
    assert not any("transpose" in layer.__class__.__name__.lower() for layer in generator.layers)
    assert any(layer.name.startswith("sle4to32") for layer in generator.layers)  # skip-layer excitation
    images = np.asarray(generator(np.zeros((3, 8), np.float32), training=False))
    assert images.shape == (3, 32, 32, 3) and images.min() >= -1.0 and images.max() <= 1.0
    discriminator = networks.make_projected_discriminator(32, base_channels=2)
    logits = np.asarray(discriminator(images))
    assert logits.shape[0] == 3 and logits.ndim == 2 and logits.shape[1] > 4  # patch logits of 4 heads
    trunk = discriminator.get_layer("trunk")
    assert not trunk.trainable and all(not weight.trainable for weight in trunk.weights)
    conditional = networks.make_projected_discriminator(32, num_classes=2, base_channels=2)
    assert np.asarray(conditional([images, np.array([0, 1, 1], np.int32)])).shape == logits.shape


def test_blur_downsampling_passes_smooth_gradients_and_is_wired_into_the_discriminator():
    """BlurPool2D keeps a flat image flat, removes a one-pixel stripe pattern, and sends one output pixel's
    gradient back as the outer product of [1, 3, 3, 1] / 8 (smooth) where average pooling sends a 2x2 block.
    discriminator_downsample "blur" puts it before the trunk and the whole-picture head."""
    import tensorflow as tf

    from genre_core.models import layers

    pool = layers.layer_classes()["BlurPool2D"](1)
    flat = np.full((1, 8, 8, 3), -0.4, np.float32)
    np.testing.assert_allclose(np.asarray(pool(flat)), np.full((1, 4, 4, 3), -0.4), atol=1e-6)
    stripes = np.broadcast_to(np.cos(np.pi * np.arange(8))[None, None, :, None], (1, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(pool(stripes)), 0.0, atol=1e-6)
    image = tf.convert_to_tensor(np.zeros((1, 8, 8, 1), np.float32))
    with tf.GradientTape() as tape:
        tape.watch(image)
        picked = pool(image)[0, 2, 1, 0]
    gradient = np.asarray(tape.gradient(picked, image))[0, :, :, 0]
    taps = np.array([1, 3, 3, 1]) / 8
    expected = np.zeros((8, 8))
    expected[3:7, 1:5] = np.outer(taps, taps)  # output (2, 1) reads input rows 3..6 and columns 1..4
    np.testing.assert_allclose(gradient, expected, atol=1e-6)
    assert layers.layer_classes()["BlurPool2D"](2)(np.zeros((2, 16, 16, 3), np.float32)).shape == (2, 4, 4, 3)
    blurred = networks.make_projected_discriminator(64, base_channels=2, feature_size=32, global_weight=0.2,
                                                    downsample="blur")
    for name in ("to_feature_size", "head_global_downscale"):
        assert blurred.get_layer(name).__class__.__name__ == "BlurPool2D"
    default = networks.make_projected_discriminator(64, base_channels=2, feature_size=32, global_weight=0.2)
    assert default.get_layer("to_feature_size").__class__.__name__ == "AveragePooling2D"
    assert len(blurred.weights) == len(default.weights)  # no weights: checkpoints keep their layout
    config = trainer.GanConfig(image_size=64, latent_dim=8, base_channels=2, discriminator_downsample="blur")
    gan = networks.make_gan(trainer._ModelShape(config, 1))  # the config's choice reaches the networks
    assert gan.discriminator.get_layer("head_global_downscale").__class__.__name__ == "BlurPool2D"
    with pytest.raises(ValueError, match="discriminator downsampling 'nearest'"):
        networks.make_projected_discriminator(64, base_channels=2, downsample="nearest")


def test_whole_picture_head_weighs_its_share_and_sees_where_things_are():
    """global_weight 0.5: one whole-picture logit, repeated as often as there are patch logits (half the hinge
    loss), that tells a picture from its upside-down copy (a patch logit's mean cannot, up to the borders)."""
    images = np.zeros((2, 32, 32, 3), np.float32)
    images[:, :12] = 0.8  # a bright sky above a dark ground
    images[1] = images[1, ::-1]  # the same picture upside down
    plain = networks.make_projected_discriminator(32, base_channels=2)
    patches = plain.output_shape[-1]
    with_global = networks.make_projected_discriminator(32, base_channels=2, global_weight=0.5)
    assert with_global.output_shape[-1] == 2 * patches
    global_logits = np.asarray(with_global(images))[:, patches:]
    assert np.ptp(global_logits, axis=1).max() < 1e-6  # one logit, repeated
    assert abs(global_logits[0, 0] - global_logits[1, 0]) > 1e-4
    quarter = networks.make_projected_discriminator(32, num_classes=2, base_channels=2, global_weight=0.25)
    assert quarter.output_shape[-1] == patches + round(patches / 3)
    assert np.asarray(quarter([images, np.array([0, 1], np.int32)])).shape == (2, patches + round(patches / 3))
    with pytest.raises(ValueError, match="global_weight"):
        networks.make_projected_discriminator(32, base_channels=2, global_weight=1.0)
    with pytest.raises(ValueError, match="global_head"):
        trainer.GanConfig(global_head=1.5).validate()
    # Reading the frozen trunk's deepest map instead of the pixels: the same share, still position-aware, and
    # its layers sit on the trunk's block3 map, not on the image.
    on_features = networks.make_projected_discriminator(32, base_channels=2, global_weight=0.5, global_input="features")
    assert on_features.output_shape[-1] == 2 * patches
    feature_logits = np.asarray(on_features(images))[:, patches:]
    assert abs(feature_logits[0, 0] - feature_logits[1, 0]) > 1e-4
    first_conv = on_features.get_layer("head_global_conv1_sn")
    assert first_conv.input.shape[1:] == on_features.get_layer("trunk").output[-1].shape[1:]
    with pytest.raises(ValueError, match="whole-picture head input 'depth'"):
        networks.make_projected_discriminator(32, base_channels=2, global_weight=0.5, global_input="depth")
    with pytest.raises(ValueError, match="global_head_input"):
        trainer.GanConfig(global_head_input="depth").validate()


def test_reflect_padded_generator_has_no_zero_padding_and_loads_with_safe_mode(tmp_path):
    """generator_padding "reflect": every 3x3 convolution of the projected generator reads a mirrored border
    (no zero padding for the frame artifact to come from), and the model reloads with safe_mode=True."""
    import keras

    from genre_core.models import layers

    generator = networks.make_fastgan_generator(32, latent_dim=8, base_channels=2, padding="reflect")
    convs = [layer for layer in generator.layers if isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (3, 3)]
    assert convs and all(layer.padding == "valid" for layer in convs)
    noise = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
    images = np.asarray(generator(noise, training=False))
    assert images.shape == (2, 32, 32, 3)
    generator.save(tmp_path / "generator.keras")
    layers.register_all()
    again = keras.saving.load_model(tmp_path / "generator.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(np.asarray(again(noise, training=False)), images, atol=1e-5)
    with pytest.raises(ValueError, match="generator padding 'wrap'"):
        networks.make_fastgan_generator(32, latent_dim=8, base_channels=2, padding="wrap")
    with pytest.raises(ValueError, match="generator_padding"):
        trainer.GanConfig(generator_padding="wrap").validate()


def test_new_runs_pad_by_reflection_and_older_runs_keep_zero_padding():
    assert trainer.GanConfig().generator_padding == "reflect"
    older = {key: value for key, value in trainer.GanConfig().to_dict().items() if key != "generator_padding"}
    assert trainer.GanConfig.from_run_config({**older, "kind": "gan", "created": "x"}).generator_padding == "zeros"
    assert trainer.GanConfig.from_run_config(trainer.GanConfig().to_dict()).generator_padding == "reflect"
    # The same for the whole-picture head: new runs have it, runs written before it existed do not.
    assert trainer.GanConfig().global_head == 0.2
    before_global = {key: value for key, value in older.items() if key != "global_head"}
    assert trainer.GanConfig.from_run_config({**before_global, "kind": "gan"}).global_head == 0.0
    # And for mixed precision: runs written before it computed in float32.
    assert trainer.GanConfig().precision == "auto"
    before_precision = {key: value for key, value in before_global.items() if key != "precision"}
    assert trainer.GanConfig.from_run_config(before_precision).precision == "float32"
    assert trainer.GanConfig.from_run_config({k: v for k, v in before_precision.items() if k != "lr_decay"}).lr_decay == "none"
    # And for the EMA: runs written before ema_lr_power moved it a fixed share per step, with 256-sample statistics.
    before_ema = {k: v for k, v in trainer.GanConfig().to_dict().items() if k not in ("ema_lr_power", "bn_calibration_samples")}
    assert trainer.GanConfig.from_run_config(before_ema).ema_lr_power == 0.0
    assert trainer.GanConfig.from_run_config(before_ema).bn_calibration_samples == 256
    assert (trainer.GanConfig().ema_lr_power, trainer.GanConfig().bn_calibration_samples) == (0.5, 1024)
    # The discriminator's downsampling: average pooling unless a run chose blur (runs before it had no choice).
    before_blur = {k: v for k, v in trainer.GanConfig().to_dict().items() if k != "discriminator_downsample"}
    assert trainer.GanConfig.from_run_config(before_blur).discriminator_downsample == "average"
    blurred = {**before_blur, "discriminator_downsample": "blur"}
    assert trainer.GanConfig.from_run_config(blurred).discriminator_downsample == "blur"
    with pytest.raises(ValueError, match="discriminator_downsample 'max'"):
        trainer.GanConfig(discriminator_downsample="max").validate()
    # The augmentation policy: runs written before it had translation, colour and cutout, whatever the default.
    before_policy = {k: v for k, v in trainer.GanConfig().to_dict().items() if k != "augment_policy"}
    assert trainer.GanConfig.from_run_config(before_policy).augment_policy == list(networks.AUGMENT_POLICIES)
    chosen_policy = {**before_policy, "augment_policy": ["geometric"]}
    assert trainer.GanConfig.from_run_config(chosen_policy).augment_policy == ["geometric"]
    # The generator's depth: two convolution blocks per doubling now, one in runs written before the option.
    before_convs = {k: v for k, v in trainer.GanConfig().to_dict().items() if k != "generator_convs"}
    assert trainer.GanConfig().generator_convs == 2
    assert trainer.GanConfig.from_run_config(before_convs).generator_convs == 1
    assert trainer.GanConfig.from_run_config(trainer.GanConfig().to_dict()).generator_convs == 2
    # LeCam: 0.3 in new projected runs (saved as the weight in use), 0 for dcgan unless set, and off in runs
    # written before the option (their checkpoints lack its averages).
    assert (trainer.GanConfig().lecam_weight, trainer.GanConfig(architecture="dcgan").lecam_weight) == (0.3, 0.0)
    assert trainer.GanConfig(architecture="dcgan", lecam=0.2).lecam_weight == 0.2
    assert_saved_as_its_weight_and_off_in_older_runs("lecam", "lecam_weight", 0.3)
    with pytest.raises(ValueError, match="lecam must be in 0..10"):
        trainer.GanConfig(lecam=-0.5).validate()
    # The spectrum penalty likewise: 0.1 in new projected runs (saved as the weight in use), 0 for dcgan unless
    # set, and off in runs written before it was the default.
    assert (trainer.GanConfig().spectrum_penalty_weight,
            trainer.GanConfig(architecture="dcgan").spectrum_penalty_weight) == (0.1, 0.0)
    assert trainer._ModelShape(trainer.GanConfig(spectrum_penalty=0.5), 1).spectrum_penalty == 0.5
    assert_saved_as_its_weight_and_off_in_older_runs("spectrum_penalty", "spectrum_penalty_weight", 0.1)
    with pytest.raises(ValueError, match=r"spectrum_penalty must be in 0..100 \(or -1, the default\), got -0.5"):
        trainer.GanConfig(spectrum_penalty=-0.5).validate()
    with pytest.raises(ValueError, match="unknown GAN option.*colour"):
        trainer.GanConfig.from_dict({"colour": "blue"})


def test_one_projected_train_step_changes_both_networks_but_not_the_trunk():
    config = tiny_model_config()
    assert config.architecture == "projected"
    model = networks.make_gan(config)
    trunk = model.discriminator.get_layer("trunk").weights[0]
    watched = (model.generator.get_layer("conv16").weights[0], model.discriminator.trainable_weights[0],
               model.ema_generator.get_layer("conv16").weights[0], trunk)
    before = [w.numpy().copy() for w in watched]
    images = np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    logs = model.train_on_batch(images, np.zeros(8, np.int32), return_dict=True)
    after = [w.numpy().copy() for w in watched]
    for name, old, new in zip(("generator", "discriminator head", "ema generator"), before, after):
        assert not np.allclose(old, new), f"{name} weights did not change"
    np.testing.assert_array_equal(before[3], after[3])  # the pretrained trunk stays frozen
    assert np.isfinite(logs["d_loss"]) and np.isfinite(logs["g_loss"])


@pytest.mark.parametrize("generator_fakes", trainer.GENERATOR_FAKES)
def test_one_projected_train_step_with_every_optional_term_on(generator_fakes):
    """The traced (tf.function) train step with LeCam, R1, APA, the spectrum penalty, the layout term, a slower
    discriminator, the whole-picture head on trunk features, its reconstruction term, Lookahead-Minmax, top-k
    training and feature diffusion all on at once, with the generator's step on a fresh batch and on the discriminator's: it builds,
    changes both networks and the EMA, and reports every term's metric. The tests of each term's arithmetic step eagerly (`eager`,
    `one_step_each`)."""
    config = tiny_model_config(image_size=32)
    config.config.generator_fakes = generator_fakes
    config.config.r1, config.config.pseudo_augment, config.config.spectrum_penalty = 1.0, True, 1.0
    config.config.discriminator_lr_scale, config.config.global_head_input = 0.5, "features"
    config.config.discriminator_reconstruction, config.config.layout_mmd = 1.0, 1.0
    config.config.lookahead = 1  # a sync after every step: the weights still move, by alpha of the step
    config.config.top_k, config.config.feature_diffusion = 0.5, 0.5
    model = networks.make_gan(config)
    model.top_k_share.assign(0.5)
    assert not model.run_eagerly and (model.lecam, model.r1, model.pseudo_augment) == (0.3, 1.0, True)
    images = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
    model.set_spectrum_target(images)
    model.set_layout_target(images)
    model.pseudo_probability.assign(0.5)
    watched = (model.generator.get_layer("conv32").weights[0], model.discriminator.get_layer("head_global_dense_sn"
                                                                                            ).trainable_weights[0],
               model.ema_generator.get_layer("conv32").weights[0])
    before = [w.numpy().copy() for w in watched]
    logs = model.train_on_batch(images, np.zeros(8, np.int32), return_dict=True)
    for name, old, new in zip(("generator", "whole-picture head", "ema generator"), before, [w.numpy() for w in watched]):
        assert not np.allclose(old, new), f"{name} weights did not change"
    assert {"d_loss", "g_loss", "spectrum_loss", "apa_p", "reconstruction_loss", "margin_patches",
            "margin_global", "layout_mmd"} <= set(logs)
    assert all(np.isfinite(float(value)) for value in logs.values())
    assert float(model.discriminator_optimizer.learning_rate) == pytest.approx(
        0.5 * float(model.generator_optimizer.learning_rate))


def test_lookahead_pulls_both_networks_back_halfway_every_kth_step_and_is_checkpointed_only_when_on(tmp_path):
    """Lookahead-Minmax with K = 2, alpha 0.5, from the same weights and seed as a GAN without it: after step 1 the
    two are alike (no sync yet); after step 2 both networks' trained weights (the reconstruction decoder's too) are
    halfway between where they started and where the plain GAN's two steps took them, and the slow copies are
    there too; the EMA follows the synced weights. The slow copies are checkpoint state only when it is on. Bad
    values are refused by name, runs written before it read as off, and the CLI passes it."""
    from genre_core.runs import store

    config = tiny_model_config()
    config.config.lookahead, config.config.lookahead_alpha = 2, 0.5
    with_la = networks.make_gan(config)
    plain = networks.make_gan(tiny_model_config())
    assert with_la.reconstruction and len(with_la.lookahead_slow) == len(with_la._lookahead_fast())
    assert not plain.lookahead_slow
    for source, target in ((with_la.generator, plain.generator), (with_la.discriminator, plain.discriminator),
                           (with_la.ema_generator, plain.ema_generator),
                           (with_la.reconstruction_decoder, plain.reconstruction_decoder)):
        target.set_weights(source.get_weights())
    start = [variable.numpy().copy() for variable in with_la._lookahead_fast()]
    images = np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    one_step_each(images, plain, with_la)
    assert same_weights(plain.generator, with_la.generator) and same_weights(plain.discriminator,
                                                                              with_la.discriminator)
    for slow, value in zip(with_la.lookahead_slow, start):
        np.testing.assert_array_equal(slow.numpy(), value)  # no sync after step 1
    for gan in (plain, with_la):  # step 2 from the same seed state again
        gan.seed_generator.state.assign([8, 0])
        gan.train_on_batch(images, np.zeros(8, np.int32))
    assert int(with_la.generator_optimizer.iterations) == 2
    moved = 0
    for fast, slow, reference, value in zip(with_la._lookahead_fast(), with_la.lookahead_slow, plain._lookahead_fast(),
                                            start):
        halfway = value + 0.5 * (reference.numpy() - value)
        np.testing.assert_allclose(fast.numpy(), halfway, atol=1e-6)
        np.testing.assert_allclose(slow.numpy(), halfway, atol=1e-6)
        moved += not np.allclose(reference.numpy(), value)
    assert moved > len(start) // 2  # the steps moved most variables, so the halfway points are not the start
    assert not same_weights(plain.ema_generator, with_la.ema_generator)

    assert len(with_la.state_variables()) == len(plain.state_variables()) + len(with_la.lookahead_slow)
    run = store.Run(tmp_path / "run")
    trainer.save_checkpoint(with_la, run, 1)
    fresh = networks.make_gan(config)
    trainer.load_checkpoint(fresh, run)
    for restored, slow in zip(fresh.lookahead_slow, with_la.lookahead_slow):
        np.testing.assert_array_equal(restored.numpy(), slow.numpy())
    with pytest.raises(ValueError, match="was the config changed"):
        trainer.load_checkpoint(plain, run)
    assert (trainer.GanConfig().lookahead, trainer.GanConfig().lookahead_alpha) == (0, 0.5)
    assert_read_as_off_in_older_runs_and_passed_by_the_cli("lookahead", 0, "--lookahead", 5)
    assert cli.build_parser().parse_args(["gan", "train", "--lookahead-alpha", "0.3"]).lookahead_alpha == 0.3
    with pytest.raises(ValueError, match="lookahead must be a whole number of steps"):
        trainer.GanConfig(lookahead=-1).validate()
    with pytest.raises(ValueError, match="lookahead_alpha must be in 0..1"):
        trainer.GanConfig(lookahead=5, lookahead_alpha=1.0).validate()


def test_shared_fakes_call_the_generator_once_a_step_and_take_the_same_discriminator_step():
    """`generator_fakes` "shared": from the same weights and seed state as the default ("fresh"), one step calls
    the generator once instead of twice, takes the same discriminator step (both learn from the batch drawn
    first), and moves the generator differently (its step learns from that batch rather than a new one). A
    conditional run with mode seeking and APA steps with it too. Bad values are refused by name, runs written
    before it read as fresh, and the CLI passes it."""
    config = tiny_model_config()
    config.config.generator_fakes = "shared"
    shared, fresh = networks.make_gan(config), networks.make_gan(tiny_model_config())
    assert shared.shared_fakes and not fresh.shared_fakes
    for source, target in ((shared.generator, fresh.generator), (shared.discriminator, fresh.discriminator),
                           (shared.ema_generator, fresh.ema_generator),
                           (shared.reconstruction_decoder, fresh.reconstruction_decoder)):
        target.set_weights(source.get_weights())
    start = [weight.numpy().copy() for weight in shared.generator.trainable_weights]
    calls = {}
    for name, gan in (("shared", shared), ("fresh", fresh)):
        forward = gan.generator.call

        def counted(*args, name=name, forward=forward, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return forward(*args, **kwargs)

        gan.generator.call = counted
    images = np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    logs = one_step_each(images, shared, fresh)
    assert calls == {"shared": 1, "fresh": 2}
    assert same_weights(shared.discriminator, fresh.discriminator)
    assert same_weights(shared.reconstruction_decoder, fresh.reconstruction_decoder)
    assert logs[0]["d_loss"] == logs[1]["d_loss"] and logs[0]["g_loss"] != logs[1]["g_loss"]
    assert not same_weights(shared.generator, fresh.generator)
    assert not all(np.allclose(weight.numpy(), value) for weight, value in zip(shared.generator.trainable_weights,
                                                                               start))

    conditional = tiny_model_config(conditional=True)
    conditional.config.generator_fakes, conditional.config.pseudo_augment = "shared", True
    gan = networks.make_gan(conditional)
    assert gan.mode_seeking > 0 and gan.pseudo_augment
    before = [weight.numpy().copy() for weight in gan.generator.trainable_weights + gan.discriminator.trainable_weights]
    eager(gan).train_on_batch(images, np.array([0, 1] * 4, np.int32))
    after = [weight.numpy() for weight in gan.generator.trainable_weights + gan.discriminator.trainable_weights]
    assert any(not np.allclose(a, b) for a, b in zip(before[:len(gan.generator.trainable_weights)], after))
    assert any(not np.allclose(a, b) for a, b in zip(before[len(gan.generator.trainable_weights):],
                                                     after[len(gan.generator.trainable_weights):]))

    assert trainer.GanConfig().generator_fakes == "fresh"
    assert_read_as_off_in_older_runs_and_passed_by_the_cli("generator_fakes", "fresh", "--generator-fakes", "shared")
    with pytest.raises(ValueError, match="generator_fakes 'both' is not one of"):
        trainer.GanConfig(generator_fakes="both").validate()


def test_top_k_training_takes_the_generators_loss_on_the_images_d_scores_highest():
    """`top_k`: `_top_k_rows` keeps the rows of the generated batch's logits whose mean is highest, the share
    `top_k_share` of the batch (at least one row); from the same weights and seed as the default, a step with the
    whole batch is the default's step, and then one with half the batch takes the same discriminator step and a
    different generator step. The share falls on a line over the run from 1 to `top_k`; bad values are refused by
    name, runs written before it read as off, and the CLI passes it."""
    import tensorflow as tf

    config = tiny_model_config()
    config.config.top_k = 0.5
    top, plain = networks.make_gan(config), networks.make_gan(tiny_model_config())
    assert top.top_k and not plain.top_k
    columns = int(top.discriminator.output.shape[-1])
    logits = np.zeros((4, columns), np.float32)
    logits[:, 0] = [0.0, 3.0, -1.0, 2.0]  # row means in the order 1, 3, 0, 2
    for share, rows in ((0.5, [1, 3]), (0.75, [1, 3, 0]), (1.0, [1, 3, 0, 2]), (0.01, [1])):
        top.top_k_share.assign(share)
        np.testing.assert_array_equal(top._top_k_rows(tf.constant(logits)).numpy(), logits[rows])

    for source, target in ((top.generator, plain.generator), (top.discriminator, plain.discriminator),
                           (top.ema_generator, plain.ema_generator),
                           (top.reconstruction_decoder, plain.reconstruction_decoder)):
        target.set_weights(source.get_weights())
    images = np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    top.top_k_share.assign(1.0)
    logs = one_step_each(images, top, plain)
    assert same_weights(top.generator, plain.generator) and same_weights(top.discriminator, plain.discriminator)
    assert logs[0]["g_loss"] == pytest.approx(logs[1]["g_loss"], abs=1e-6)
    top.top_k_share.assign(0.5)  # the next step from the same state
    logs = one_step_each(images, top, plain)
    assert same_weights(top.discriminator, plain.discriminator)
    assert logs[0]["d_loss"] == pytest.approx(logs[1]["d_loss"], abs=1e-6)
    assert not same_weights(top.generator, plain.generator) and logs[0]["g_loss"] != logs[1]["g_loss"]

    schedule = trainer.GanConfig(top_k=0.5, time_budget_minutes=10)
    assert [schedule.top_k_share_at(0, seconds) for seconds in (0, 300, 600)] == [1.0, 0.75, 0.5]
    assert trainer.GanConfig().top_k_share_at(3, 300) == 1.0
    assert trainer.GanConfig().top_k == 0.0
    assert_read_as_off_in_older_runs_and_passed_by_the_cli("top_k", 0.0, "--top-k", 0.5)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="top_k must be 0 \\(off\\) or a share"):
            trainer.GanConfig(top_k=bad).validate()


def test_feature_diffusion_diffuses_the_trunk_maps_by_the_adaptive_strength():
    """`FeatureDiffusion` (Diffusion-GAN on the projected discriminator's trunk maps): at strength 0 a map passes
    unchanged, and a map whose channels are not a multiple of 16 is refused; at strength 1, about 3 in 4 (image,
    channel) pairs are diffused, each to sqrt(abar_t) x +- sqrt(1 - abar_t) sigma with abar_t the product of (1 -
    beta) over the chain's first t betas and t drawn with P(t) proportional to t - 1, the signs of the noise even. A
    GAN built with it has one such layer on each trunk map, whose strength is the augmentation probability the step
    starts with, and its step differs from the default's from the same weights and seed; bad values are refused by
    name, runs written before it read as off, and the CLI passes it."""
    import keras

    from genre_core.models import layers

    layer = layers.layer_classes()["FeatureDiffusion"](0.5, t_min=4, t_max=4, seed=3)
    x = np.full((64, 2, 2, 32), 0.8, np.float32)
    np.testing.assert_array_equal(layer(x).numpy(), x)  # strength 0
    with pytest.raises(ValueError, match="not a multiple of 16"):
        layers.layer_classes()["FeatureDiffusion"](0.5)(np.zeros((1, 2, 2, 24), np.float32))
    layer.strength.assign(1.0)
    betas = np.linspace(1e-4, 1e-2, 4)
    alpha_bar = np.cumprod(1.0 - betas)
    np.testing.assert_allclose(layer.alpha_bar(np.arange(5, dtype=np.float32), 4.0).numpy(),
                               [1.0, *alpha_bar], rtol=1e-6)
    y = layer(x).numpy()
    pairs = y.transpose(0, 3, 1, 2).reshape(-1, 4)  # (image, channel) pairs, their 2x2 values
    steps, signs = np.zeros(len(pairs), int), []
    for t in (2, 3, 4):  # a pair diffused t steps has every value at sqrt(abar_t) 0.8 +- sqrt(1 - abar_t) 0.5
        level, spread = np.sqrt(alpha_bar[t - 1]) * 0.8, np.sqrt(1.0 - alpha_bar[t - 1]) * 0.5
        hit = np.all(np.isclose(np.abs(pairs - level), spread, atol=1e-5), axis=1)
        steps[hit] = t
        signs.append(np.sign(pairs[hit] - level))
    unchanged = np.all(pairs == 0.8, axis=1)
    assert np.all(unchanged != (steps > 0))  # every pair either passed unchanged or was diffused t steps
    assert 0.68 < np.mean(steps > 0) < 0.82  # the diffused share min(strength, 0.75)
    counts = np.array([(steps == t).sum() for t in (2, 3, 4)]) / (steps > 0).sum()
    np.testing.assert_allclose(counts, [1 / 6, 2 / 6, 3 / 6], atol=0.06)  # P(t) proportional to t - 1
    assert abs(np.concatenate(signs).mean()) < 0.1  # the noise's signs even

    config = tiny_model_config(image_size=32)
    config.config.feature_diffusion = 0.5
    diffusing, plain = networks.make_gan(config), networks.make_gan(tiny_model_config(image_size=32))
    assert len(diffusing.diffusion_layers) == 3 and not plain.diffusion_layers
    for source, target in ((diffusing.generator, plain.generator), (diffusing.ema_generator, plain.ema_generator),
                           (diffusing.reconstruction_decoder, plain.reconstruction_decoder)):
        target.set_weights(source.get_weights())
    for layer in plain.discriminator.layers:
        if layer.weights:
            layer.set_weights(diffusing.discriminator.get_layer(layer.name).get_weights())
    for gan in (diffusing, plain):
        gan.augment_probability.assign(0.4)
    images = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
    logs = one_step_each(images, diffusing, plain)
    assert all(float(layer.strength.numpy()) == pytest.approx(0.4) for layer in diffusing.diffusion_layers)
    assert logs[0]["d_loss"] != logs[1]["d_loss"]
    assert not same_weights(diffusing.discriminator, plain.discriminator)
    assert not same_weights(diffusing.generator, plain.generator)
    assert keras.saving.get_registered_object("genre_core>FeatureDiffusion") is not None

    assert trainer.GanConfig().feature_diffusion == 0.0
    assert_read_as_off_in_older_runs_and_passed_by_the_cli("feature_diffusion", 0.0, "--feature-diffusion", 0.5)
    for bad in (-0.1, 5.0):
        with pytest.raises(ValueError, match="feature_diffusion must be in 0..4"):
            trainer.GanConfig(feature_diffusion=bad).validate()
    with pytest.raises(ValueError, match="feature_diffusion diffuses the projected discriminator"):
        trainer.GanConfig(architecture="dcgan", feature_diffusion=0.5).validate()


def test_margins_split_the_patch_heads_from_the_whole_picture_head():
    """`_margins` is the mean logit on real images minus that on generated ones, over the patch columns and over
    the whole-picture head's columns (the last `global_columns`); without that head the second is 0 and the
    step's logs carry no `margin_global`."""
    import tensorflow as tf

    gan = networks.make_gan(tiny_model_config(image_size=32))
    columns, total = gan.global_columns, int(gan.discriminator.output.shape[-1])
    assert 0 < columns < total
    patches = total - columns
    real = np.concatenate([np.full((4, patches), 0.5), np.full((4, columns), 0.1)], axis=1).astype(np.float32)
    fake = np.concatenate([np.full((4, patches), -0.25), np.full((4, columns), 0.3)], axis=1).astype(np.float32)
    patch_margin, global_margin = gan._margins(tf.constant(real), tf.constant(fake))
    assert float(patch_margin) == pytest.approx(0.75) and float(global_margin) == pytest.approx(-0.2)

    config = tiny_model_config(image_size=32)
    config.config.global_head = 0.0
    plain = eager(networks.make_gan(config))
    assert plain.global_columns == 0
    images = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    logs = plain.train_on_batch(images, np.zeros(4, np.int32), return_dict=True)
    assert "margin_global" not in logs and np.isfinite(float(logs["margin_patches"]))


def test_feature_mixing_projects_the_trunks_maps_with_fixed_random_weights():
    """Projected GAN's CCM/CSM: random 1x1 projections between trunk and heads, drawn from the seed, never
    trained; same logits shape as without; one step trains the heads and leaves the projections alone."""
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    plain = networks.make_projected_discriminator(32, base_channels=2)
    mixed = networks.make_projected_discriminator(32, base_channels=2, mixing="channels_scales", mixing_seed=1)
    assert np.asarray(mixed(images)).shape == np.asarray(plain(images)).shape
    channel = [mixed.get_layer(f"{name}_channel_mix") for name, _ in networks.PROJECTED_LAYERS]
    scale = [mixed.get_layer(f"{name}_scale_mix") for name, _ in networks.PROJECTED_LAYERS[:-1]]
    assert not any(layer.trainable for layer in channel + scale)
    assert [tuple(layer.kernel.shape[2:]) for layer in channel] == [(64, 64), (128, 128), (256, 256)]
    assert [tuple(layer.kernel.shape[2:]) for layer in scale] == [(128, 64), (256, 128)]  # deeper onto shallower
    assert len(mixed.trainable_weights) == len(plain.trainable_weights)  # nothing new is trained
    only_channels = networks.make_projected_discriminator(32, base_channels=2, mixing="channels", mixing_seed=1)
    assert not any("scale_mix" in layer.name for layer in only_channels.layers)
    again = networks.make_projected_discriminator(32, base_channels=2, mixing="channels", mixing_seed=1)
    other = networks.make_projected_discriminator(32, base_channels=2, mixing="channels", mixing_seed=2)
    kernel = lambda model: model.get_layer("block2_conv2_channel_mix").kernel.numpy()  # noqa: E731
    np.testing.assert_array_equal(kernel(again), kernel(only_channels))
    assert not np.allclose(kernel(other), kernel(only_channels))
    with pytest.raises(ValueError, match="feature mixing 'random' is not one of"):
        networks.make_projected_discriminator(32, mixing="random")
    with pytest.raises(ValueError, match="feature_mixing 'random'"):
        trainer.GanConfig(feature_mixing="random").validate()

    config = tiny_model_config()
    config.feature_mixing = "channels_scales"
    model = networks.make_gan(config)
    projection = model.discriminator.get_layer("block1_conv2_scale_mix").kernel
    head = model.discriminator.get_layer("head_block1_conv2_conv1_sn").trainable_weights[0]
    before = (projection.numpy().copy(), head.numpy().copy())
    model.train_on_batch(np.random.default_rng(1).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32),
                         np.zeros(8, np.int32), return_dict=True)
    np.testing.assert_array_equal(projection.numpy(), before[0])
    assert not np.allclose(head.numpy(), before[1])


def test_mixed_bfloat16_gan_computes_in_bfloat16_gives_float32_images_and_leaves_the_global_policy(tmp_path):
    """precision "mixed_bfloat16": float32 weights, bfloat16 arithmetic (about 1.5x faster steps on a CPU with
    AVX512-BF16, bench gan), float32 images and logits; one step trains; the generator reloads with
    safe_mode; the process's global dtype policy is left as it was."""
    import keras

    from genre_core.models import layers

    config = tiny_model_config()
    config.precision = "mixed_bfloat16"
    model = networks.make_gan(config)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert model.generator.get_layer("conv16").compute_dtype == "bfloat16"
    assert model.generator.get_layer("conv16").weights[0].dtype == "float32"
    assert model.ema_generator.get_layer("conv16").compute_dtype == "bfloat16"
    assert model.discriminator.get_layer("trunk").layers[1].compute_dtype == "bfloat16"
    before = model.generator.get_layer("conv16").weights[0].numpy().copy()
    images = np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    logs = model.train_on_batch(images, np.zeros(8, np.int32), return_dict=True)
    assert np.isfinite(logs["d_loss"]) and np.isfinite(logs["g_loss"])
    assert not np.allclose(before, model.generator.get_layer("conv16").weights[0].numpy())
    noise = np.random.default_rng(1).normal(size=(2, 8)).astype(np.float32)
    samples = model.ema_generator(noise, training=False)
    assert samples.dtype == "float32" and model.discriminator(samples).dtype == "float32"
    model.ema_generator.save(tmp_path / "generator.keras")
    layers.register_all()
    again = keras.saving.load_model(tmp_path / "generator.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(np.asarray(again(noise, training=False)), np.asarray(samples), atol=1e-2)
    assert networks.resolve_precision("auto", "dcgan") == "float32"
    assert networks.resolve_precision("float32") == "float32"
    assert networks.resolve_precision("auto") in ("float32", "mixed_bfloat16")
    with pytest.raises(ValueError, match="precision 'half'"):
        networks.resolve_precision("half")
    with pytest.raises(ValueError, match="precision 'half'"):
        trainer.GanConfig(precision="half").validate()


def test_conditional_projected_gan_trains_with_the_mode_seeking_term():
    config = tiny_model_config(conditional=True, num_classes=2)
    assert config.mode_seeking == trainer.CONDITIONAL_MODE_SEEKING == 0.1  # on by default for conditional runs
    model = networks.make_gan(config)
    assert model.mode_seeking == 0.1
    images = np.random.default_rng(1).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    logs = model.train_on_batch(images, np.array([0, 1] * 4, np.int32), return_dict=True)
    assert np.isfinite(logs["g_loss"])
    assert trainer._ModelShape(trainer.GanConfig(), 1).mode_seeking == 0.0
    # A new run saves the weight it uses; an older conditional run that left it to the default (-1) trained
    # with 1.0 and resumes with 1.0; an explicit weight is kept.
    saved, _ = trainer.new_run_config(trainer.GanConfig(conditional=True, genre=None))
    assert saved["mode_seeking"] == 0.1
    assert trainer.new_run_config(trainer.GanConfig())[0]["mode_seeking"] == 0.0
    assert trainer.GanConfig.from_run_config(saved).mode_seeking_weight == 0.1
    older = {**saved, "mode_seeking": -1.0}
    assert trainer.GanConfig.from_run_config(older).mode_seeking_weight == 1.0
    assert trainer.GanConfig.from_run_config({**older, "mode_seeking": 0.5}).mode_seeking_weight == 0.5
    assert trainer.GanConfig.from_run_config({**older, "conditional": False, "genre": "x"}).mode_seeking_weight == 0.0


def test_lecam_term_follows_the_papers_formula_trains_and_is_checkpointed_only_when_on(tmp_path):
    """LeCam (Tseng et al. 2021): penalty = mean(relu(D(real) - avg fake)^2) + mean(relu(avg real - D(fake))^2)
    with zero-debiased moving averages (decay 0.99) of D's mean logits; one train step with it changes D
    differently from one without; its averages are checkpoint state only when the term is on."""
    import tensorflow as tf

    from genre_core.runs import store

    config = tiny_model_config()
    model = networks.make_gan(config)
    off = tiny_model_config()
    off.config.lecam = 0.0
    assert model.lecam == 0.3 and networks.make_gan(off).lecam == 0.0
    # First call: the averages are this step's means (real 1, fake 0) after debiasing.
    first = model._lecam_loss(tf.constant([2.0, 0.0]), tf.constant([-1.0, 1.0]))
    assert float(first) == pytest.approx(4.0)  # mean([2^2, 0]) + mean([(1 - -1)^2, 0])
    # Second call: average real = 0.99 * 0.01 * 1 / (1 - 0.99^2) = 0.4975, average fake = 0.
    second = model._lecam_loss(tf.constant([0.0, 0.0]), tf.constant([0.0, 0.0]))
    assert float(second) == pytest.approx(0.4975 ** 2, rel=1e-4)
    np.testing.assert_allclose(model.lecam_averages.numpy(), [0.0099, 0.0, 2.0], rtol=1e-5)

    without = networks.make_gan(off)
    with_term = networks.make_gan(config)
    with_term.set_weights(without.get_weights())
    with_term.lecam = 10.0  # a large weight, so that its share of the gradient is plain
    control = networks.make_gan(off)  # the same step without the term: the same weights
    control.set_weights(without.get_weights())
    one_step_each(np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32),
                  without, with_term, control)

    assert same_weights(without.discriminator, control.discriminator)
    assert not same_weights(without.discriminator, with_term.discriminator)
    assert float(with_term.lecam_averages.numpy()[2]) == 1.0

    assert len(with_term.state_variables()) == len(without.state_variables()) + 1
    run = store.Run(tmp_path / "run")
    trainer.save_checkpoint(with_term, run, 1)
    fresh = networks.make_gan(config)
    trainer.load_checkpoint(fresh, run)
    np.testing.assert_allclose(fresh.lecam_averages.numpy(), with_term.lecam_averages.numpy())
    with pytest.raises(ValueError, match="was the config changed"):
        trainer.load_checkpoint(without, run)


def test_discriminator_reconstruction_redraws_real_pictures_from_the_whole_picture_head(tmp_path):
    """FastGAN's self-supervised discriminator on the whole-picture head: the decoder turns the head's 4x4 map back
    into the picture at the head's size (16 px here, 32 px from 32 px up); the term is the mean absolute error
    against the real images average-pooled to that size; one step with it trains the decoder and changes the head
    differently from a step without (the patch heads' losses are the same), and the decoder's weights are
    checkpoint state only when the term is on. The config refuses it without a whole-picture head."""
    import keras
    import tensorflow as tf

    from genre_core.runs import store

    decoder = networks.make_reconstruction_decoder((4, 4, 64), 32, width=8)
    assert tuple(decoder.output.shape) == (None, 32, 32, 3)
    assert [layer.filters for layer in decoder.layers if hasattr(layer, "filters")] == [32, 16, 8, 3]
    with pytest.raises(ValueError, match="cannot reach 24 px"):
        networks.make_reconstruction_decoder((4, 4, 64), 24)

    off, on = tiny_model_config(), tiny_model_config()
    off.config.discriminator_reconstruction = 0.0
    on.config.discriminator_reconstruction = 10.0  # a large weight, so that its share of the gradient is plain
    without, with_term, control = networks.make_gan(off), networks.make_gan(on), networks.make_gan(off)
    assert (without.reconstruction, with_term.reconstruction, without.reconstruction_decoder) == (0.0, 10.0, None)
    assert tuple(with_term.reconstruction_encoder.output.shape) == (None, 4, 4, 32)
    assert tuple(with_term.reconstruction_decoder.output.shape) == (None, 16, 16, 3)
    for gan in (with_term, control):
        for name in ("generator", "discriminator", "ema_generator"):
            getattr(gan, name).set_weights(getattr(without, name).get_weights())

    # The term on a discriminator whose "head" map is the image average-pooled to 4x4 (no spectral norm, whose
    # power iteration moves in training mode): the decoder's picture from that map against the 16-px image.
    image = keras.Input((16, 16, 3))
    pooled = keras.layers.AveragePooling2D(4)(image)
    plain = keras.Model(image, keras.layers.Dense(1)(keras.layers.Flatten(name="head_global_flatten")(pooled)))
    gan = networks.Gan(without.generator, plain, latent_dim=8, reconstruction=1.0)
    images = np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)
    decoded = gan.reconstruction_decoder(tf.constant(images.reshape(4, 4, 4, 4, 4, 3).mean(axis=(2, 4)))).numpy()
    expected = np.abs(decoded - images).mean()  # 16 px: the head sees the image itself
    assert float(gan._reconstruction_loss(tf.constant(images))) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="no whole-picture head"):
        networks.Gan(without.generator, without.generator, latent_dim=8, reconstruction=1.0)
    with pytest.raises(ValueError, match="reconstruction weight must be at least 0, got -1"):
        networks.Gan(without.generator, plain, latent_dim=8, reconstruction=-1.0)

    decoder_before = [w.numpy().copy() for w in with_term.reconstruction_decoder.trainable_weights]
    batch = np.random.default_rng(1).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    logs = one_step_each(batch, without, with_term, control)
    assert ["reconstruction_loss" in step for step in logs] == [False, True, False]
    assert same_weights(without.discriminator, control.discriminator)
    head = "head_global_conv1_sn"
    assert not same_weights(without.discriminator.get_layer(head), with_term.discriminator.get_layer(head))
    assert not all(np.allclose(old, new.numpy()) for old, new in
                   zip(decoder_before, with_term.reconstruction_decoder.trainable_weights))

    # 3 convolutions' kernel and bias, and the two Adam moments of each in D's optimizer
    assert len(with_term.state_variables()) == len(without.state_variables()) + 18
    run = store.Run(tmp_path / "run")
    trainer.save_checkpoint(with_term, run, 1)
    fresh = networks.make_gan(on)
    trainer.load_checkpoint(fresh, run)
    assert same_weights(fresh.reconstruction_decoder, with_term.reconstruction_decoder)

    # The default: on (weight 2) for unconditional runs of the projected networks with a whole-picture head, saved as
    # the weight in use; off without that head, for dcgan, in conditional runs (unless asked for), and in runs
    # written before it was the default.
    assert (trainer.GanConfig().discriminator_reconstruction, trainer.GanConfig().discriminator_reconstruction_weight
            ) == (-1.0, trainer.PROJECTED_RECONSTRUCTION) == (-1.0, 2.0)
    assert trainer.GanConfig(global_head=0.0).validate().discriminator_reconstruction_weight == 0.0
    assert trainer.GanConfig(architecture="dcgan").validate().discriminator_reconstruction_weight == 0.0
    conditional = trainer.GanConfig(conditional=True, genre=None).validate()
    assert conditional.discriminator_reconstruction_weight == 0.0
    assert trainer.new_run_config(conditional)[0]["discriminator_reconstruction"] == 0.0
    assert trainer.GanConfig(conditional=True, genre=None, discriminator_reconstruction=1.0
                             ).validate().discriminator_reconstruction_weight == 1.0
    assert_saved_as_its_weight_and_off_in_older_runs("discriminator_reconstruction",
                                                     "discriminator_reconstruction_weight", 2.0)
    with pytest.raises(ValueError, match="needs the projected architecture with global_head > 0"):
        trainer.GanConfig(discriminator_reconstruction=1.0, global_head=0.0).validate()
    with pytest.raises(ValueError, match=r"discriminator_reconstruction must be in 0..100 \(or -1, the default\)"):
        trainer.GanConfig(discriminator_reconstruction=-2.0).validate()


def test_whole_picture_head_size_sets_what_the_head_and_the_reconstruction_decoder_see():
    """`global_head_size` 64 on a 128-px discriminator: the head shrinks the image to 64 px (not 32), its convolutions
    go one doubling deeper down to the same 4x4 map, the reconstruction decoder redraws the picture at 64 px, and the
    term compares it with the real images average-pooled to 64 px; one step trains with it. The config refuses a size
    that is not one of GLOBAL_HEAD_SIZES, sees a smaller image at its own size, and reads older runs (no such key)
    as 32."""
    import tensorflow as tf

    def head_shapes(gan):
        d = gan.discriminator
        return (tuple(d.get_layer("head_global_downscale").output.shape[1:3]),
                tuple(gan.reconstruction_encoder.output.shape[1:3]),
                tuple(gan.reconstruction_decoder.output.shape[1:3]))

    shapes = {}
    for size in (32, 64):
        config = tiny_model_config(image_size=128)
        config.config.discriminator_reconstruction, config.config.global_head_size = 2.0, size
        gan = networks.make_gan(config)
        shapes[size] = head_shapes(gan)
        convs = [layer.name for layer in gan.discriminator.layers if layer.name.startswith("head_global_conv")]
        assert len(convs) == {32: 3, 64: 4}[size]
    assert shapes == {32: ((32, 32), (4, 4), (32, 32)), 64: ((64, 64), (4, 4), (64, 64))}

    images = np.random.default_rng(2).uniform(-1, 1, (2, 128, 128, 3)).astype(np.float32)
    decoded = gan.reconstruction_decoder(gan.reconstruction_encoder(tf.constant(images), training=True),
                                         training=True).numpy()
    target = images.reshape(2, 64, 2, 64, 2, 3).mean(axis=(2, 4))
    # The term in training mode (spectral norm's power iteration moves the weights a little between calls).
    assert float(gan._reconstruction_loss(tf.constant(images))) == pytest.approx(
        float(np.abs(decoded - target).mean()), rel=0.05)
    before = [w.numpy().copy() for w in gan.reconstruction_decoder.trainable_weights]
    eager(gan)
    logs = gan.train_on_batch(images, np.zeros(2, np.int32), return_dict=True)
    assert np.isfinite(logs["reconstruction_loss"])
    assert not all(np.allclose(old, new.numpy()) for old, new in
                   zip(before, gan.reconstruction_decoder.trainable_weights))

    assert trainer.GanConfig().global_head_size == networks.GLOBAL_HEAD_SIZE == 32
    assert trainer.GanConfig(global_head_size=64).validate().global_head_size == 64
    with pytest.raises(ValueError, match="global_head_size must be one of"):
        trainer.GanConfig(global_head_size=48).validate()
    # A picture smaller than the head's size is seen at its own size (the default 32 on a 16-px run).
    small = tiny_model_config(image_size=16)
    small.config.global_head_size = 64
    assert small.config.validate() and networks.make_gan(small).reconstruction_decoder.output.shape[1] == 16
    older = trainer.new_run_config(trainer.GanConfig().validate())[0]
    older.pop("global_head_size")
    assert trainer.GanConfig.from_run_config(older).global_head_size == 32
    with pytest.raises(ValueError, match="whole-picture head size 48"):
        networks.make_projected_discriminator(64, global_weight=0.2, global_size=48)


def test_minibatch_std_channel_lets_the_whole_picture_head_see_how_alike_a_group_is(tmp_path):
    """The MinibatchStdDev layer appends, to each image, the mean over features of their standard deviation over its
    group of consecutive images (about 0 for a group of copies); a batch its group size does not divide is one
    group. In the discriminator (`--global-head-mbstd 4`) an image's whole-picture logit then moves when another
    image of its group changes and not when one of another group does, while the patch logits and the head's map
    (what the reconstruction term reads) stay per image. One step trains with it; the config refuses a group that
    does not divide the batch or a run without the head; the CLI sets it; older runs (no key) have none; the
    discriminator saves and loads."""
    import keras
    import tensorflow as tf

    from genre_core.models.layers import layer_classes

    layer = layer_classes()["MinibatchStdDev"](group_size=4)
    x = np.random.default_rng(0).normal(size=(8, 4, 4, 3)).astype(np.float32)
    x[:4] = x[0]
    out = layer(tf.constant(x)).numpy()
    assert out.shape == (8, 4, 4, 4) and np.allclose(out[..., :3], x)
    assert np.allclose(out[:4, ..., 3], 1e-4, atol=1e-5)
    assert np.allclose(out[4:, ..., 3], np.std(x[4:], axis=0).mean(), rtol=1e-4)
    assert np.allclose(layer(tf.constant(x[:6])).numpy()[..., 3], np.std(x[:6], axis=0).mean(), rtol=1e-4)
    with pytest.raises(ValueError, match="at least 2 images"):
        layer_classes()["MinibatchStdDev"](group_size=1)

    config = tiny_model_config(image_size=32)
    config.config.discriminator_reconstruction, config.config.global_head_minibatch_std = 2.0, 4
    config.config.precision = "float32"
    gan = networks.make_gan(config)
    d = gan.discriminator
    global_columns = networks.global_head_columns(d)
    images = np.random.default_rng(1).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
    changed = images.copy()
    changed[5:] = images[4]  # the second group: image 4 unchanged, the others now copies of it
    before, after = d(tf.constant(images)).numpy(), d(tf.constant(changed)).numpy()
    moved = ~np.isclose(before[:, -global_columns:], after[:, -global_columns:], atol=1e-6).all(axis=1)
    assert moved.tolist() == [False] * 4 + [True] * 4
    assert np.allclose(before[4, :-global_columns], after[4, :-global_columns], atol=1e-6)
    maps = gan.reconstruction_encoder(tf.constant(images)).numpy()
    # Image 4 is unchanged but its group is not: its map stays the same only if the encoder stops before the channel.
    assert np.allclose(maps[:5], gan.reconstruction_encoder(tf.constant(changed)).numpy()[:5], atol=1e-6)
    assert maps.shape[-1] == d.get_layer("head_global_mbstd").output.shape[-1] - 1
    eager(gan)
    logs = gan.train_on_batch(images, np.zeros(8, np.int32), return_dict=True)
    assert np.isfinite(logs["d_loss"]) and np.isfinite(logs["g_loss"])
    d.save(tmp_path / "d.keras")
    loaded = keras.saving.load_model(tmp_path / "d.keras", compile=False)
    assert np.allclose(loaded(tf.constant(images)).numpy(), d(tf.constant(images)).numpy(), atol=1e-5)

    assert trainer.GanConfig().global_head_minibatch_std == 0
    assert trainer.GanConfig(global_head_minibatch_std=8).validate().global_head_minibatch_std == 8
    with pytest.raises(ValueError, match="must divide batch_size 16"):
        trainer.GanConfig(global_head_minibatch_std=3).validate()
    with pytest.raises(ValueError, match="at least 2"):
        trainer.GanConfig(global_head_minibatch_std=1).validate()
    with pytest.raises(ValueError, match="whole-picture head"):
        trainer.GanConfig(global_head_minibatch_std=4, global_head=0.0).validate()
    assert_read_as_off_in_older_runs_and_passed_by_the_cli("global_head_minibatch_std", 0, "--global-head-mbstd", 4)


def test_global_head_gain_multiplies_the_whole_picture_logit_and_only_it():
    """`--global-head-gain 4`: the whole-picture head's columns are 4x the head's spectrally normalised logit (the
    layer before the gain), the patch columns are as without a gain; the config refuses a gain out of range or
    without a whole-picture head, and reads older runs (no such key) as 1; the CLI passes it on."""
    import keras
    import tensorflow as tf

    d = networks.make_projected_discriminator(32, base_channels=8, global_weight=0.2, global_gain=4.0)
    plain = networks.make_projected_discriminator(32, base_channels=8, global_weight=0.2)
    assert "head_global_gain" in {layer.name for layer in d.layers}
    assert "head_global_gain" not in {layer.name for layer in plain.layers}
    for layer in plain.layers:  # the gain has no weights: give both the same ones, layer by layer
        if layer.weights:
            layer.set_weights(d.get_layer(layer.name).get_weights())
    images = tf.constant(np.random.default_rng(5).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32))
    before_gain = keras.Model(d.input, d.get_layer("head_global_dense_sn").output)(images)
    columns = networks.global_head_columns(d)
    logits, plain_logits = np.asarray(d(images)), np.asarray(plain(images))
    assert columns == networks.global_head_columns(plain) and logits.shape == plain_logits.shape
    np.testing.assert_allclose(logits[:, -columns:], 4.0 * np.repeat(np.asarray(before_gain), columns, axis=1),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits[:, -columns:], 4.0 * plain_logits[:, -columns:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits[:, :-columns], plain_logits[:, :-columns], rtol=1e-6, atol=1e-6)
    shape = tiny_model_config(image_size=32)
    shape.config.global_head_gain = 4.0
    assert "head_global_gain" in {layer.name for layer in networks.make_gan(shape).discriminator.layers}

    assert trainer.GanConfig(global_head_gain=4.0).validate().global_head_gain == 4.0
    with pytest.raises(ValueError, match="0.1..100"):
        trainer.GanConfig(global_head_gain=0.0).validate()
    with pytest.raises(ValueError, match="whole-picture head"):
        trainer.GanConfig(global_head_gain=4.0, global_head=0.0).validate()
    assert_read_as_off_in_older_runs_and_passed_by_the_cli("global_head_gain", 1.0, "--global-head-gain", 4.0)


def test_head_balance_heads_gives_each_patch_head_the_same_share_of_the_loss():
    """At 128 px the patch heads have 256 (pixels), 256 (block1), 64 (block2) and 16 (block3) logits. With
    "patches" the mean over D's columns weighs each logit alike, so block3's head carries 16 / 592 of it; with
    "heads" each head's logits are repeated up to 256, and the mean over all columns is the mean of the four heads'
    means, with the whole-picture head still at its share. One step trains with it; the config refuses an unknown
    balance and reads older runs (no such key) as "patches"."""
    import keras
    import tensorflow as tf

    heads = ("head_pixels", "head_block1_conv2", "head_block2_conv2", "head_block3_conv2")
    images = tf.constant(np.random.default_rng(3).uniform(-1, 1, (2, 128, 128, 3)).astype(np.float32))
    columns = {}
    for balance in networks.HEAD_BALANCES:
        d = networks.make_projected_discriminator(128, base_channels=4, head_balance=balance)
        columns[balance] = int(d.output.shape[-1])
        probe = keras.Model(d.input, [d.output] + [d.get_layer(f"{name}_flat").output for name in heads])
        logits, *per_head = [t.numpy() for t in probe(images, training=False)]
        assert [p.shape[-1] for p in per_head] == [256, 256, 64, 16]
        weights = [1.0] * 4 if balance == "heads" else [p.shape[-1] for p in per_head]
        expected = sum(w * p.mean() for w, p in zip(weights, per_head)) / sum(weights)
        assert logits.mean() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert columns == {"patches": 592, "heads": 1024}
    with_head = networks.make_projected_discriminator(128, base_channels=4, global_weight=0.2, head_balance="heads")
    assert networks.global_head_columns(with_head) == round(0.25 * 1024)

    config = tiny_model_config(image_size=128)
    config.config.head_balance = "heads"
    gan = eager(networks.make_gan(config))
    assert int(gan.discriminator.output.shape[-1]) == 1024 + networks.global_head_columns(gan.discriminator)
    g_before, d_before = keras.models.clone_model(gan.generator), keras.models.clone_model(gan.discriminator)
    g_before.set_weights(gan.generator.get_weights())
    d_before.set_weights(gan.discriminator.get_weights())
    logs = gan.train_on_batch(images.numpy(), np.zeros(2, np.int32), return_dict=True)
    assert np.isfinite(logs["d_loss"]) and np.isfinite(logs["g_loss"])
    assert not same_weights(g_before, gan.generator) and not same_weights(d_before, gan.discriminator)

    assert trainer.GanConfig().head_balance == "heads"  # the default since stop 55
    with pytest.raises(ValueError, match="head_balance 'layers' is not one of"):
        trainer.GanConfig(head_balance="layers").validate()
    older = trainer.new_run_config(trainer.GanConfig(head_balance="heads").validate())[0]
    older.pop("head_balance")
    assert trainer.GanConfig.from_run_config(older).head_balance == "patches"
    with pytest.raises(ValueError, match="head balance 'layers'"):
        networks.make_projected_discriminator(64, head_balance="layers")


def test_layout_freeze_slows_only_the_generators_layout_stages_and_stops_them_at_its_share():
    """`layout_freeze`: the layout stages are the variables the generator's 16-px map depends on (the latent
    projection, the 8- and 16-px blocks), not the larger blocks, the excitations or the output; a step moves them by
    `layout_rate_scale` of what the same step moves them without it (0: not at all) and the rest of both networks
    alike. The schedule's scale is 1 at the start, the stretched curve's rate over the rest's, and 0 from its share
    on; the config refuses a share outside 0.1..1, a dcgan generator, 16-px images or a run with neither epochs nor
    a budget, and runs without it (the default, older runs) are off."""
    off, on = tiny_model_config(image_size=32), tiny_model_config(image_size=32)
    on.config.layout_freeze = 0.5
    without, half, frozen = networks.make_gan(off), networks.make_gan(on), networks.make_gan(on)
    assert (without.layout_freeze, without.layout_variables, half.layout_freeze) == (False, [], True)
    layers = {variable.path.split("/")[0] for variable in half.layout_variables}
    assert {"project", "conv8", "conv16", "conv16_bn"} <= layers
    assert not {name for name in layers if name.startswith(("conv32", "sle", "to_rgb"))}
    assert len(half.layout_variables) < len(half.generator.trainable_variables)
    assert len(half.state_variables()) == len(without.state_variables())

    for gan in (half, frozen):
        gan.set_weights(without.get_weights())
    half.layout_rate_scale.assign(0.5)
    frozen.layout_rate_scale.assign(0.0)
    start = [variable.numpy().copy() for variable in without.generator.trainable_variables]
    batch = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
    one_step_each(batch, without, half, frozen)
    assert same_weights(without.discriminator, half.discriminator)
    layout_paths = {variable.path for variable in half.layout_variables}
    moved_layout = 0
    for old, full, halved, still in zip(start, without.generator.trainable_variables,
                                        half.generator.trainable_variables, frozen.generator.trainable_variables):
        if full.path in layout_paths:
            np.testing.assert_allclose(halved.numpy() - old, 0.5 * (full.numpy() - old), atol=1e-6)
            np.testing.assert_array_equal(still.numpy(), old)
            moved_layout += not np.allclose(full.numpy(), old)
        else:
            np.testing.assert_allclose(halved.numpy(), full.numpy(), atol=1e-6)
            np.testing.assert_allclose(still.numpy(), full.numpy(), atol=1e-6)
    assert moved_layout

    config = trainer.GanConfig(layout_freeze=0.5, time_budget_minutes=10, lr_decay_power=1.0).validate()
    minute = 60.0
    assert config.layout_rate_scale(0, 0.0) == 1.0
    # A quarter done: the layout stages' rate is 1 - 0.25 / 0.5 = 0.5 of the start, the rest's 0.75.
    assert config.layout_rate_scale(0, 2.5 * minute) == pytest.approx(0.5 / 0.75)
    assert config.layout_rate_scale(0, 5 * minute) == config.layout_rate_scale(0, 8 * minute) == 0.0
    flat = trainer.GanConfig(layout_freeze=0.5, time_budget_minutes=10, lr_decay="none").validate()
    assert flat.layout_rate_scale(0, 2.5 * minute) == pytest.approx(0.5)
    assert trainer.GanConfig(time_budget_minutes=10).layout_rate_scale(0, 9 * minute) == 1.0
    assert trainer.GanConfig().layout_freeze == 0.0
    older = trainer.new_run_config(trainer.GanConfig().validate())[0]
    older.pop("layout_freeze")
    assert trainer.GanConfig.from_run_config(older).layout_freeze == 0.0
    for bad, message in (({"layout_freeze": 0.05}, "layout_freeze must be in 0.1..1"),
                         ({"layout_freeze": 1.5}, "layout_freeze must be in 0.1..1"),
                         ({"layout_freeze": 0.5, "architecture": "dcgan"}, "projected architecture"),
                         ({"layout_freeze": 0.5, "image_size": 16}, "larger than 16 px"),
                         ({"layout_freeze": 0.5, "time_budget_minutes": 0, "epochs": 0}, "epochs or a time budget")):
        with pytest.raises(ValueError, match=message):
            trainer.GanConfig(**{"time_budget_minutes": 10, **bad}).validate()
    with pytest.raises(ValueError, match="no 32-px stage"):
        networks.generator_layout_variables(networks.make_fastgan_generator(16, latent_dim=8, base_channels=8))


def test_r1_penalty_is_the_per_logit_squared_gradient_on_real_images_and_changes_the_step():
    """R1: half the squared norm of the gradient of the image's summed logits over the number of logits, averaged
    over images; for a linear discriminator (logits = flattened image @ W) that is 0.5 |W summed over logits|^2 /
    logits whatever the image. Its gradient reaches D (a train step with it differs from one without), it
    adds no training state, and --r1 reaches the config (0 by default) and is bounded."""
    import keras
    import tensorflow as tf

    config = tiny_model_config()
    model = networks.make_gan(config)
    weights = np.random.default_rng(1).normal(size=(16 * 16 * 3, 5)).astype(np.float32)
    image = keras.Input((16, 16, 3))
    linear = keras.Model(image, keras.layers.Dense(5, use_bias=False)(keras.layers.Flatten()(image)))
    linear.layers[-1].set_weights([weights])
    gan = networks.Gan(model.generator, linear, latent_dim=8, r1=1.0)
    images = np.random.default_rng(2).uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
    expected = 0.5 * float(np.sum(weights.sum(axis=1) ** 2)) / 5
    assert float(gan._r1_penalty(tf.constant(images), None)) == pytest.approx(expected, rel=1e-4)

    off = tiny_model_config()
    on = tiny_model_config()
    on.config.r1 = 10.0  # a large weight, so that its share of the gradient is plain
    without, with_term, control = networks.make_gan(off), networks.make_gan(on), networks.make_gan(off)
    assert (without.r1, with_term.r1) == (0.0, 10.0)
    for gan in (with_term, control):
        gan.set_weights(without.get_weights())
    batch = np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    one_step_each(batch, without, with_term, control)

    assert same_weights(without.discriminator, control.discriminator)
    assert not same_weights(without.discriminator, with_term.discriminator)
    assert len(with_term.state_variables()) == len(without.state_variables())
    assert trainer.GanConfig().r1 == 0.0
    with pytest.raises(ValueError, match="r1 must be in 0..1000"):
        trainer.GanConfig(r1=5000).validate()


def test_pseudo_augment_shows_d_generated_images_as_real_and_adapts_like_the_augmentation(tmp_path):
    """APA (Jiang et al. 2021): at probability 1 the discriminator's "real" images are all generated ones, so
    two different real batches train it alike (without APA they do not); the probability starts at 0 and moves
    by the augmentation probability's rule; it is checkpoint state and an "apa_p" metric only when on."""
    from genre_core.runs import store

    off, on = tiny_model_config(), tiny_model_config()
    on.config.pseudo_augment = True
    assert trainer.GanConfig().pseudo_augment is False
    without, with_apa = networks.make_gan(off), networks.make_gan(on)
    assert (without.pseudo_augment, with_apa.pseudo_augment) == (False, True)
    assert float(with_apa.pseudo_probability.numpy()) == 0.0
    assert len(with_apa.state_variables()) == len(without.state_variables()) + 1

    rng = np.random.default_rng(0)
    batches = [rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32) for _ in range(2)]
    labels = np.zeros(8, np.int32)

    def trained(config, batch, probability=None):
        gan = eager(networks.make_gan(config))
        gan.set_weights(without.get_weights())
        if probability is not None:
            gan.pseudo_probability.assign(probability)
        gan.seed_generator.state.assign([7, 0])
        logs = gan.train_on_batch(batch, labels, return_dict=True)
        return gan, logs

    first, logs = trained(on, batches[0], 1.0)
    second, _ = trained(on, batches[1], 1.0)
    assert same_weights(first.discriminator, second.discriminator)
    assert "apa_p" in logs
    plain = [trained(off, batch)[0] for batch in batches]
    assert not same_weights(*(gan.discriminator for gan in plain))
    assert "apa_p" not in trained(off, batches[0])[1]

    # From 0, with the augmentation adaptive from 0 too, both probabilities take the same step.
    gan = eager(networks.make_gan(on))
    gan.set_weights(without.get_weights())
    gan.augment_probability.assign(0.0)
    gan.adaptive_augment, gan.augment_target, gan.augment_speed = True, -1.0, 0.01  # a step up whatever D says
    logs = gan.train_on_batch(batches[0], labels, return_dict=True)
    assert float(logs["apa_p"]) == pytest.approx(float(logs["aug_p"])) and float(logs["apa_p"]) >= 0.01

    run = store.Run(tmp_path / "run")
    trainer.save_checkpoint(gan, run, 1)
    fresh = networks.make_gan(on)
    trainer.load_checkpoint(fresh, run)
    assert float(fresh.pseudo_probability.numpy()) == pytest.approx(float(logs["apa_p"]))
    with pytest.raises(ValueError, match="was the config changed"):
        trainer.load_checkpoint(without, run)


def test_generator_convs_adds_a_second_convolution_after_each_upsampling():
    """generator_convs 2: each doubling of the projected generator has two (3x3 conv, BN, LeakyReLU) blocks,
    the output shape is unchanged, and a bad count is refused with the option's name; generator_top_channels
    sets the width of the last stage only."""
    import keras

    def three_by_three(generator):
        return [layer.name for layer in generator.layers
                if isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (3, 3) and layer.name != "to_rgb"]

    one = networks.make_fastgan_generator(32, latent_dim=8, base_channels=2, padding="reflect")
    two = networks.make_fastgan_generator(32, latent_dim=8, base_channels=2, padding="reflect", convs_per_size=2)
    assert three_by_three(one) == ["conv8", "conv16", "conv32"]
    assert three_by_three(two) == ["conv8", "conv8b", "conv16", "conv16b", "conv32", "conv32b"]
    noise = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
    assert np.asarray(two(noise, training=False)).shape == (2, 32, 32, 3)
    config = trainer.GanConfig(image_size=16, latent_dim=8, base_channels=8, generator_convs=2).validate()
    assert "conv16b" in three_by_three(networks.make_gan(trainer._ModelShape(config, 1)).generator)
    with pytest.raises(ValueError, match="generator_convs 3"):
        trainer.GanConfig(generator_convs=3).validate()
    # generator_top_channels widens only the last, full-size stage.
    wide = networks.make_gan(trainer._ModelShape(trainer.GanConfig(
        image_size=16, latent_dim=8, base_channels=8, generator_top_channels=24).validate(), 1)).generator
    assert [wide.get_layer(name).filters for name in ("conv8", "conv8b", "conv16", "conv16b")] == [128, 128, 24, 24]
    assert np.asarray(wide(noise, training=False)).shape == (2, 16, 16, 3)
    with pytest.raises(ValueError, match="generator_top_channels must be in 0..512"):
        trainer.GanConfig(generator_top_channels=-1).validate()
    with pytest.raises(ValueError, match="generator_top_channels is for the projected"):
        trainer.GanConfig(generator_top_channels=32, architecture="dcgan", image_size=64).validate()
    with pytest.raises(ValueError, match="convolutions per size 0"):
        networks.make_fastgan_generator(32, latent_dim=8, base_channels=2, convs_per_size=0)


def test_generator_top_upsample_bilinear_doubles_into_the_full_size_stage_without_2x2_blocks():
    """generator_top_upsample "bilinear": the doubling into the projected generator's full-size stage interpolates,
    so the map its 3x3 convolutions read has no 2x2 blocks of copies (nearest's, whose edges every other pixel are
    the cross-hatch), while every smaller doubling stays nearest; the weights are the same as nearest's (a
    trained nearest generator's weights load into it), the config and the CLI carry it, and a run written before
    the option samples with nearest."""
    import keras

    def top_input(generator, noise):
        return np.asarray(keras.Model(generator.input, generator.get_layer("up32").output)(noise, training=False))

    def has_blocks(maps):
        return bool(np.allclose(maps[:, ::2], maps[:, 1::2]) and np.allclose(maps[:, :, ::2], maps[:, :, 1::2]))

    noise = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
    nearest = networks.make_fastgan_generator(32, latent_dim=8, base_channels=2, padding="reflect", convs_per_size=2)
    bilinear = networks.make_fastgan_generator(32, latent_dim=8, base_channels=2, padding="reflect", convs_per_size=2,
                                               top_upsample="bilinear")
    bilinear.set_weights(nearest.get_weights())
    assert [layer.interpolation for layer in bilinear.layers if isinstance(layer, keras.layers.UpSampling2D)] == [
        "nearest", "nearest", "bilinear"]
    assert has_blocks(top_input(nearest, noise)) and not has_blocks(top_input(bilinear, noise))
    # The smaller stages are the same network: the maps before the last doubling agree.
    before = [keras.Model(model.input, model.get_layer("conv16b").output)(noise, training=False)
              for model in (nearest, bilinear)]
    assert np.allclose(*map(np.asarray, before))
    images = np.asarray(bilinear(noise, training=False))
    assert images.shape == (2, 32, 32, 3) and not np.allclose(images, np.asarray(nearest(noise, training=False)))

    config = trainer.GanConfig(image_size=16, latent_dim=8, base_channels=8,
                               generator_top_upsample="bilinear").validate()
    generator = networks.make_gan(trainer._ModelShape(config, 1)).generator
    assert generator.get_layer("up16").interpolation == "bilinear"
    assert generator.get_layer("up8").interpolation == "nearest"
    assert trainer.GanConfig().generator_top_upsample == "nearest"
    with pytest.raises(ValueError, match="generator_top_upsample 'bicubic' is not one of"):
        trainer.GanConfig(generator_top_upsample="bicubic").validate()
    with pytest.raises(ValueError, match="generator_top_upsample is for the projected"):
        trainer.GanConfig(generator_top_upsample="bilinear", architecture="dcgan", image_size=64).validate()
    with pytest.raises(ValueError, match="top upsampling 'area'"):
        networks.make_fastgan_generator(32, latent_dim=8, base_channels=2, top_upsample="area")
    older = trainer.new_run_config(trainer.GanConfig().validate())[0]
    older.pop("generator_top_upsample")
    assert trainer.GanConfig.from_run_config(older).generator_top_upsample == "nearest"
    parsed = cli.build_parser().parse_args(["gan", "train", "--generator-top-upsample", "bilinear"])
    assert parsed.generator_top_upsample == "bilinear"
    assert cli.build_parser().parse_args(["gan", "train"]).generator_top_upsample is None


def test_generator_noise_adds_learned_noise_that_trains_samples_repeatably_and_is_checkpointed(tmp_path):
    """generator_noise S: a NoiseInjection layer after each conv block's batch norm in the projected generator,
    with per-channel strengths that start at S (and with strengths of 0 the generator draws what it would
    without them); one train step moves the strengths; in inference a latent vector gives the same image twice,
    wherever it stands in the batch, and in training the noise is fresh; the generator reloads with
    safe_mode=True; the noise layers' seed states are checkpoint state; dcgan and a strength above 1 are refused
    by name, and a run written before the option has none; `generator_noise_from` puts noise only at that size
    and up, and `generator_noise_gain` makes the strengths learn that many times faster."""
    import keras

    from genre_core.models import layers

    config = trainer.GanConfig(image_size=16, latent_dim=8, base_channels=8, generator_noise=0.1,
                               precision="float32", spectrum_penalty=0.0).validate()
    model = networks.make_gan(trainer._ModelShape(config, 1))
    generator = model.generator
    noise_layers = [layer for layer in generator.layers if layer.name.endswith("_noise")]
    assert [layer.name for layer in noise_layers] == ["conv8_noise", "conv8b_noise", "conv16_noise", "conv16b_noise"]
    assert all(np.allclose(layer.strength.numpy(), 0.1) for layer in noise_layers)
    assert [generator.layers[generator.layers.index(layer) - 1].name for layer in noise_layers] == [
        "conv8_bn", "conv8b_bn", "conv16_bn", "conv16b_bn"]
    plain_config = trainer.GanConfig(image_size=16, latent_dim=8, base_channels=8, precision="float32",
                                     spectrum_penalty=0.0)
    plain = networks.make_gan(trainer._ModelShape(plain_config, 1))
    assert not any(layer.name.endswith("_noise") for layer in plain.generator.layers)
    plain.generator.set_weights([w for w, v in zip(generator.get_weights(), generator.weights)
                                 if not v.path.endswith("strength")])
    z = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    with_noise = np.asarray(generator(z, training=False))
    for layer in noise_layers:
        layer.strength.assign(np.zeros(layer.strength.shape, np.float32))
    assert not np.allclose(with_noise, np.asarray(generator(z, training=False)), atol=1e-4)
    np.testing.assert_allclose(np.asarray(generator(z, training=False)), np.asarray(plain.generator(z, training=False)),
                               atol=1e-6)  # strength 0: no change

    images = np.random.default_rng(1).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    for layer in noise_layers:
        layer.strength.assign(np.full(layer.strength.shape, 0.1, np.float32))
    model.train_on_batch(images, np.zeros(8, np.int32))
    assert all(np.abs(layer.strength.numpy() - 0.1).max() > 0 for layer in noise_layers)
    for layer in noise_layers:
        layer.strength.assign(np.ones(layer.strength.shape, np.float32))  # plain to see
    first, second = (np.asarray(generator(z, training=False)) for _ in range(2))
    np.testing.assert_allclose(first, second)
    np.testing.assert_allclose(np.asarray(generator(z[::-1], training=False)), first[::-1], atol=1e-6)
    assert not np.allclose(np.asarray(generator(z, training=True)), np.asarray(generator(z, training=True)))

    generator.save(tmp_path / "generator.keras")  # (the training calls moved the batch-norm statistics)
    layers.register_all()
    again = keras.saving.load_model(tmp_path / "generator.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(np.asarray(again(z, training=False)), np.asarray(generator(z, training=False)),
                               atol=1e-5)

    # 4 strengths in G, in its EMA and twice in Adam (m, v), and the 4 layers' seed states
    assert len(model.state_variables()) == len(plain.state_variables()) + 4 * 4 + 4
    run = store.Run(tmp_path / "run")
    trainer.save_checkpoint(model, run, 1)
    states = [layer.seed_generator.state.numpy().copy() for layer in noise_layers]
    fresh = networks.make_gan(trainer._ModelShape(config, 1))
    fresh_noise = [layer for layer in fresh.generator.layers if layer.name.endswith("_noise")]
    unused = [layer.seed_generator.state.numpy().copy() for layer in fresh_noise]
    assert not all(np.array_equal(a, b) for a, b in zip(unused, states))  # training drew from them
    trainer.load_checkpoint(fresh, run)
    assert all(np.array_equal(layer.seed_generator.state.numpy(), state) for layer, state in zip(fresh_noise, states))

    with pytest.raises(ValueError, match="generator_noise"):
        trainer.GanConfig(generator_noise=0.1, architecture="dcgan", image_size=64).validate()
    # From a size up only, and strengths that learn `gain` times faster: Adam's first step (beta_1 0) moves a
    # weight by its learning rate times |g| / (|g| + epsilon), so each strength by at most 10x the rate, and by
    # 10x where its gradient is not tiny.
    faster = trainer.GanConfig(image_size=16, latent_dim=8, base_channels=8, generator_noise=0.1,
                               generator_noise_from=16, generator_noise_gain=10, precision="float32",
                               spectrum_penalty=0.0).validate()
    model = networks.make_gan(trainer._ModelShape(faster, 1))
    noise_layers = [layer for layer in model.generator.layers if layer.name.endswith("_noise")]
    assert [layer.name for layer in noise_layers] == ["conv16_noise", "conv16b_noise"]
    assert all(np.allclose(layer.strength.numpy() * layer.gain, 0.1) for layer in noise_layers)
    model.train_on_batch(images, np.zeros(8, np.int32))
    steps = np.concatenate([np.abs(layer.strength.numpy() * layer.gain - 0.1) for layer in noise_layers])
    assert steps.max() == pytest.approx(10 * faster.learning_rate, rel=0.02)
    assert np.all(steps <= 10 * faster.learning_rate * 1.02)
    with pytest.raises(ValueError, match="generator_noise_from must be a generator size from 8 px up"):
        trainer.GanConfig(generator_noise_from=12).validate()
    with pytest.raises(ValueError, match="generator_noise_gain must be in 1..100, got 0.5"):
        trainer.GanConfig(generator_noise_gain=0.5).validate()
    with pytest.raises(ValueError, match="generator_noise must be in 0..1, got 2"):
        trainer.GanConfig(generator_noise=2).validate()
    before_noise = {k: v for k, v in trainer.GanConfig(generator_noise=0.1).to_dict().items()
                    if k != "generator_noise"}
    assert trainer.GanConfig.from_run_config(before_noise).generator_noise == 0.0


def test_class_conditional_batch_norm_gives_each_genre_its_own_gain_and_bias(tmp_path):
    """conditional_norm: every batch norm of the projected generator is plain normalisation followed by a
    per-genre gain and bias; a new model starts as plain batch norm (gain 1, bias 0), one train step moves the
    gains of the genres in the batch, a genre's gain changes only its own images, the model reloads with
    safe_mode=True, and the option is refused where it cannot apply."""
    import keras

    from genre_core.models import layers

    config = trainer.GanConfig(image_size=16, latent_dim=8, base_channels=8, conditional=True, genre=None,
                               conditional_norm=True, precision="float32", spectrum_penalty=0.0).validate()
    model = networks.make_gan(trainer._ModelShape(config, 3))
    generator = model.generator
    gains = [layer for layer in generator.layers if layer.name.endswith("_bn_gain")]
    norms = [layer for layer in generator.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert {layer.name for layer in gains} == {f"{norm.name}_gain" for norm in norms} == {
        "project_bn_gain", "conv8_bn_gain", "conv8b_bn_gain", "conv16_bn_gain", "conv16b_bn_gain"}
    assert all(not norm.center and not norm.scale for norm in norms)
    assert all(np.all(layer.get_weights()[0] == 1.0) for layer in gains)
    before = generator.get_layer("conv8_bn_gain").get_weights()[0].copy()
    images = np.random.default_rng(1).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    model.train_on_batch(images, np.array([0, 1] * 4, np.int32))
    moved = np.abs(generator.get_layer("conv8_bn_gain").get_weights()[0] - before).max(axis=1)
    assert moved[0] > 0 and moved[1] > 0 and moved[2] == 0  # genre 2 was not in the batch

    noise = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    labels = np.array([0, 2], np.int32)
    first = np.asarray(generator([noise, labels], training=False))
    weights = generator.get_layer("conv16_bn_gain").get_weights()[0]
    weights[2] *= 2.0
    generator.get_layer("conv16_bn_gain").set_weights([weights])
    second = np.asarray(generator([noise, labels], training=False))
    np.testing.assert_allclose(second[0], first[0], atol=1e-6)  # genre 0's image is untouched
    assert not np.allclose(second[1], first[1])

    generator.save(tmp_path / "generator.keras")
    layers.register_all()
    again = keras.saving.load_model(tmp_path / "generator.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(np.asarray(again([noise, labels], training=False)), second, atol=1e-5)
    model.recalibrate_ema(samples=16, batch_size=8)  # finds the conditional batch norms by their names
    plain = networks.make_gan(tiny_model_config(conditional=True, num_classes=3)).generator
    assert not any(layer.name.endswith("_bn_gain") for layer in plain.layers)
    with pytest.raises(ValueError, match="conditional_norm"):
        trainer.GanConfig(conditional_norm=True).validate()  # unconditional
    with pytest.raises(ValueError, match="conditional_norm"):
        trainer.GanConfig(conditional=True, genre=None, conditional_norm=True, architecture="dcgan",
                          image_size=64).validate()


def test_the_budget_ends_an_epoch_after_the_step_that_still_fits(tiny_dataset_dir, isolated_artifacts, monkeypatch):
    # A fake budget clock on which every training step takes 10 s and nothing else takes any time.
    now = {"t": 0.0}
    monkeypatch.setattr(trainer, "budget_clock", lambda kind: (lambda: now["t"]))

    def progress(event):
        if event.get("stage") == "batch":
            now["t"] += 10.0

    config = run_config(tiny_dataset_dir, epochs=0, time_budget_minutes=75 / 60)  # 3 steps (30 s) an epoch
    run = store.create_run("gan", config.to_dict(), classes=[config.genre])
    trainer.execute(run, progress=progress)
    history = run.history()
    # Epochs 1 and 2 end at 30 s and 60 s; epoch 3 stops after its first step (70 s), as a second would end
    # at 80 s, past the 75-s budget. That last step ran at 60/75 of the budget: a fifth of it left.
    assert list(history["steps"]) == [3, 3, 1]
    assert list(history["elapsed_seconds"]) == pytest.approx([30.0, 60.0, 70.0])
    assert history["learning_rate"].iloc[-1] == pytest.approx(1e-4 * 0.2 ** 2)  # a fifth left, squared (power 2)
    assert fileio.read_json(run.path / "checkpoint/state.json")["epoch"] == 3
    assert (run.path / "samples/epoch_0003.png").exists()


def test_epochs_zero_means_until_the_budget():
    assert trainer.GanConfig(epochs=0, time_budget_minutes=15).validate().planned_epochs == trainer.BUDGET_EPOCHS
    with pytest.raises(ValueError, match="time budget"):
        trainer.GanConfig(epochs=0).validate()
    with pytest.raises(ValueError, match="architecture"):
        trainer.GanConfig(architecture="stylegan").validate()
    with pytest.raises(ValueError, match="up to 128"):
        trainer.GanConfig(architecture="dcgan", image_size=256).validate()


def make_judge_run(classes, size=16):
    """A finished classifier run whose tiny model calls bright images 'landscape' (a stand-in judge)."""
    import keras

    inputs = keras.Input((size, size, 3))
    brightness = keras.layers.GlobalAveragePooling2D()(inputs)
    logits = keras.layers.Dense(len(classes))(brightness)
    model = keras.Model(inputs, keras.layers.Softmax()(logits))
    weights = np.zeros((3, len(classes)), np.float32)
    bias = np.zeros(len(classes), np.float32)
    weights[:, classes.index("landscape")] = 1.0
    bias[classes.index("landscape")] = -3 * 100.0  # landscape when the mean channel sum passes 300
    model.layers[2].set_weights([weights, bias])
    run = store.create_run("classifier", {"model": "tiny", "size": size, "policy": "squash", "data": "tiny"},
                          classes=classes)
    model.save(run.path / "model.keras")
    run.update_status(state="finished")
    return run


def test_find_judge_picks_a_finished_run_that_knows_the_genre(isolated_artifacts, monkeypatch):
    monkeypatch.setattr(trainer, "_bundle_classes", lambda: [])  # no bundled model: "auto" finds nothing
    assert trainer.find_judge("auto", ["landscape"]) is None
    assert trainer.find_judge("", ["landscape"]) is None
    other = make_judge_run(["landscape", "portrait"])
    assert trainer.find_judge("auto", ["landscape"]) == other.path
    assert trainer.find_judge("auto", ["cityscape"]) is None
    assert trainer.find_judge(other.id, ["portrait", "landscape"]) == other.path
    with pytest.raises(ValueError, match="does not know"):
        trainer.find_judge(str(other.path), ["cityscape"])
    # Without a fitting run, "auto" falls back to the bundled real-painting model when it knows the genre.
    monkeypatch.setattr(trainer, "_bundle_classes", lambda: ["cityscape", "landscape"])
    from genre_core.evaluation import bundle

    assert trainer.find_judge("auto", ["cityscape"]) == bundle.folder()
    assert trainer.find_judge("bundled", ["landscape"]) == bundle.folder()


def test_run_records_fixed_kid_recognisability_and_diversity(tiny_dataset_dir, isolated_artifacts):
    judge = make_judge_run(["abstract", "landscape", "portrait"])
    config = run_config(tiny_dataset_dir, epochs=1, kid_samples=6, kid_image_size=32, judge="auto", judge_samples=4)
    assert config.spectrum_penalty_weight > 0  # the default: the trainer sets its target from the training images
    run = store.create_run("gan", config.to_dict(), classes=[config.genre])
    trainer.execute(run)
    row = run.history().iloc[0]
    for column in ("kid_fixed", "kid_fixed_std", "kid_fixed_block3", "kid_fixed_block4", "kid_fixed_block5",
                   "recognised", "recognised_real", "diversity", "stripes", "spectrum_loss", "elapsed_seconds"):
        assert np.isfinite(row[column]), column
    assert 0.0 <= row["recognised"] <= 1.0 and 0.0 <= row["recognised_real"] <= 1.0
    latest = fileio.read_json(run.path / "quality.json")["latest"]
    assert latest["fixed_space"] == "hed_vgg16_conv345_rms@64"
    assert latest["judge"] == judge.id
    # The measured epoch is the best so far: its generator and numbers are kept beside the last one.
    assert (run.path / trainer.BEST_GENERATOR_FILE).exists()
    assert trainer.read_best(run) == {"epoch": 1, "best_by": "train", "score": row["kid_fixed_train"],
                                      "score_of": "kid_fixed_train", "kid": row["kid"], "kid_train": row["kid_train"],
                                      "kid_fixed_train": row["kid_fixed_train"], "feature_space": row["feature_space"],
                                      "kid_fixed": row["kid_fixed"], "recognised": row["recognised"],
                                      "generator": "ema", "best_from": 0.0}
    assert row["generator"] == "ema" and "kid_fixed_trained" not in row.index  # the default samples the EMA


def test_spectrum_penalty_counts_only_excess_fine_detail_and_trains_only_the_generator():
    """The spectrum penalty (`Gan._spectrum_loss`): a set against its own target scores 0, another draw of the
    same kind of picture about 0, the same pictures with one-pixel cross-hatching far more, and blurred ones 0
    (one-sided: less fine detail than the target is not penalised); images of the wrong size are refused by
    name, and training without a target is refused; a mirrored target is that of the set and its mirror images. The "direction" kind also scores faint hatching on softened
    pictures, which "level" lets pass. One train step with the penalty changes the generator differently from one without, from the same
    weights and seed, and leaves the discriminator's step as it was; the step reports the penalty."""
    import tensorflow as tf

    rng = np.random.default_rng(0)

    def smooth(count):  # isotropic random fields whose power falls with frequency, as in photographs
        frequencies = np.fft.fftfreq(32)
        radius = np.hypot(*np.meshgrid(frequencies, frequencies, indexing="ij"))
        fields = np.fft.ifft2(np.fft.fft2(rng.normal(size=(count, 3, 32, 32))) / (0.03 + radius) ** 1.5).real
        return np.clip(0.3 * fields.transpose(0, 2, 3, 1) / fields.std(), -1, 1).astype(np.float32)

    config = tiny_model_config(image_size=32)
    config.config.spectrum_penalty = 1.0
    model = networks.make_gan(config)
    assert model.spectrum_penalty == 1.0 and networks.make_gan(tiny_model_config(image_size=32)).spectrum_penalty == 0
    real = smooth(64)
    model.set_spectrum_target(real)
    assert model.spectrum_target.shape == (8, 8, 3)  # blocks of 4 x 4 frequency bins
    assert float(model._spectrum_loss(tf.constant(real))) == pytest.approx(0.0, abs=1e-6)
    both = np.concatenate([real, real[:, :, ::-1]])  # the set as random horizontal flips show it
    model.set_spectrum_target(both)
    expected = model.spectrum_target.numpy()
    model.set_spectrum_target(real, mirrored=True)
    np.testing.assert_allclose(model.spectrum_target.numpy(), expected, rtol=1e-5, atol=1e-5)
    model.set_spectrum_target(real)
    other = smooth(16)
    plain = float(model._spectrum_loss(tf.constant(other)))
    lines = np.zeros((32, 32), np.float32)
    lines[::2, :] += 0.1  # horizontal one-pixel stripes
    lines[:, ::2] += 0.1  # and vertical ones: cross-hatching
    hatched = float(model._spectrum_loss(tf.constant(np.clip(other + lines[None, :, :, None], -1, 1))))
    blurred = tf.nn.avg_pool2d(tf.constant(other), 3, 1, "SAME")
    assert plain < 0.01 and hatched > 0.1 and hatched > 100 * plain
    assert float(model._spectrum_loss(blurred)) == 0.0
    unset = eager(networks.make_gan(config))
    with pytest.raises(ValueError, match="the spectrum penalty needs its target"):
        unset.train_on_batch(real[:8], np.zeros(8, np.int32))
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 32, 32, 3\), got \(4, 16, 16, 3\)"):
        model.set_spectrum_target(np.zeros((4, 16, 16, 3), np.uint8))

    # "direction": fine detail that runs along the axes more than the rest of its scale does. Mildly blurred
    # pictures (an isotropic Gaussian) lose fine detail in every direction alike and score about 0 there too;
    # faint cross-hatching on them stays below the real images' power (level 0) but shows against its scale.
    frequencies = np.fft.fftfreq(32)
    radius = np.hypot(*np.meshgrid(frequencies, frequencies, indexing="ij"))
    soft = np.fft.ifft2(np.fft.fft2(other, axes=(1, 2)) * np.exp(-(radius / 0.5) ** 2)[None, :, :, None],
                        axes=(1, 2)).real.astype(np.float32)
    faint = soft + lines[None, :, :, None] * 0.2  # stripes of 0.02
    model.spectrum_penalty_kind = "direction"
    soft_direction, faint_direction = (float(model._spectrum_loss(tf.constant(x))) for x in (soft, faint))
    assert float(model._spectrum_loss(tf.constant(real))) == pytest.approx(0.0, abs=1e-6)
    assert soft_direction < 0.01 and faint_direction > 0.03 and faint_direction > 5 * soft_direction
    model.spectrum_penalty_kind = "level"
    assert float(model._spectrum_loss(tf.constant(faint))) == 0.0

    def prepare(gan):
        gan.set_spectrum_target(real)
        gan.spectrum_penalty = 100.0

    assert_a_generator_term_steps(config, prepare, real[:8], "spectrum_loss")


def test_layout_term_compares_where_the_colour_masses_lie_and_trains_only_the_generator():
    """The layout term (`Gan._layout_mmd_loss`, `networks.mmd_squared` of `networks.thumbnails`): two draws of
    one kind of picture score about 0, pictures with the sky below the land far more; the pool holds the training
    images' 8-px thumbnails (mirrored ones too when asked); images of the wrong size and training without a target
    are refused by name. One train step with the term changes the generator differently from one without, from
    the same weights and seed, and leaves the discriminator's step as it was; the step reports the term."""
    import tensorflow as tf

    rng = np.random.default_rng(0)

    def landscapes(count, flipped=False):  # blue sky over green land, the horizon somewhere in the middle
        images = np.empty((count, 32, 32, 3), np.float32)
        for image, horizon in zip(images, rng.integers(10, 22, count), strict=True):
            image[:horizon] = (-0.6, -0.2, 0.8)
            image[horizon:] = (-0.4, 0.5, -0.5)
        images += rng.normal(0, 0.1, images.shape).astype(np.float32)
        return images[:, ::-1] if flipped else images

    assert tuple(networks.thumbnails(tf.constant(landscapes(3))).shape) == (3, 8 * 8 * 3)
    first, second, upside_down = landscapes(64), landscapes(64), landscapes(64, flipped=True)
    same = float(networks.mmd_squared(networks.thumbnails(first), networks.thumbnails(second)))
    other = float(networks.mmd_squared(networks.thumbnails(first), networks.thumbnails(upside_down)))
    assert abs(same) < 0.03 and other > 0.3 and other > 10 * abs(same)
    config = tiny_model_config(image_size=32)
    config.config.layout_mmd = 1.0
    model = networks.make_gan(config)
    assert model.layout_mmd == 1.0 and networks.make_gan(tiny_model_config(image_size=32)).layout_mmd == 0
    model.set_layout_target((np.clip(first, -1, 1) * 127.5 + 127.5).astype(np.uint8), seed=1)
    pool = model.layout_reals.numpy()
    assert pool.shape == (networks.LAYOUT_MMD_POOL, 8 * 8 * 3)
    sky = pool.reshape(-1, 8, 8, 3)[:, 0, :, 2].mean()
    assert sky > 0.6  # the top row is the sky's blue in every drawn thumbnail
    assert float(model._layout_mmd_loss(tf.constant(second))) < 0.02
    assert float(model._layout_mmd_loss(tf.constant(upside_down))) > 0.3
    mirrored = np.zeros((2, 32, 32, 3), np.float32)
    mirrored[:, :, :16] = 1.0  # white on the left
    model.set_layout_target(mirrored, mirrored=True, seed=1)
    left = model.layout_reals.numpy().reshape(-1, 8, 8, 3)[:, :, 0, 0].mean(axis=1)
    assert 0.3 < (left > 0).mean() < 0.7  # about half of them mirrored: white on the right
    unset = eager(networks.make_gan(config))
    with pytest.raises(ValueError, match="the layout term needs its target"):
        unset.train_on_batch(first[:8], np.zeros(8, np.int32))
    with pytest.raises(ValueError, match=r"layout target: expected images of shape \(N, 32, 32, 3\)"):
        model.set_layout_target(np.zeros((4, 16, 16, 3), np.uint8))

    def prepare(gan):
        gan.set_layout_target(first)
        gan.layout_mmd = 100.0

    assert_a_generator_term_steps(config, prepare, first[:8], "layout_mmd")
    assert trainer.GanConfig().layout_mmd == 0.0
    assert_read_as_off_in_older_runs_and_passed_by_the_cli("layout_mmd", 0.0, "--layout-mmd", 0.3)
    with pytest.raises(ValueError, match="layout_mmd must be 0"):
        trainer.GanConfig(layout_mmd=-1).validate()
    with pytest.raises(ValueError, match="so it is for unconditional runs"):
        trainer.GanConfig(layout_mmd=0.3, conditional=True, genre=None, genres=["landscape", "portrait"]).validate()


def test_a_run_with_the_layout_term_fills_its_pool_from_the_training_images_and_reports_it(tiny_dataset_dir,
                                                                                           isolated_artifacts):
    config = run_config(tiny_dataset_dir, epochs=1, layout_mmd=0.5)
    images = trainer.load_training_images(config)[0]
    gan = trainer.build_gan(config, 1, images)
    assert gan.layout_target_set and not trainer.build_gan(run_config(tiny_dataset_dir), 1, images).layout_target_set
    run = store.create_run("gan", config.to_dict(), classes=[config.genre])
    trainer.execute(run)
    assert run.history()["layout_mmd"].notna().all()


def test_spectrum_penalty_bins_finds_a_narrow_weave_that_blocks_average_away():
    """The "bins" kind judges each frequency bin by a running mean of the generated batches: a faint diagonal
    weave at one frequency (10.7 px along each axis, the kind left on the kit's penalised runs) that "level"'s
    blocks of 4 x 4 bins average away (about 0 even with the 16-px band) scores several times more than the
    same pictures without it, once a few batches are in the mean; the penalty's gradient on the images lies at
    the weave's frequency; the running mean is training state only with this kind."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    real = np.clip(rng.normal(0, 0.3, (128, 64, 64, 3)), -1, 1).astype(np.float32)  # white noise: every frequency
    other = np.clip(rng.normal(0, 0.3, (160, 64, 64, 3)), -1, 1).astype(np.float32)
    y, x = np.mgrid[:64, :64]
    weave = 0.02 * np.cos(2 * np.pi * 6 * (x + y) / 64)  # 6 cycles per 64 px along each axis
    models = {}
    for kind in ("level", "bins"):
        config = tiny_model_config(image_size=64)
        config.config.spectrum_penalty = 1.0
        config.config.spectrum_penalty_kind = kind
        config.config.spectrum_penalty_period = 16
        models[kind] = networks.make_gan(config)
        models[kind].set_spectrum_target(real)
    model = models["bins"]
    assert model.spectrum_target.shape == (64, 64, 3)  # one bin per block
    assert len(model.state_variables()) == len(models["level"].state_variables()) + 2

    def scores(added):
        model.spectrum_running.assign(tf.zeros_like(model.spectrum_running))
        model.spectrum_steps.assign(0.0)
        batches = [tf.constant(np.clip(other[start:start + 16] + added, -1, 1).astype(np.float32))
                   for start in range(0, 160, 16)]
        return [float(model._spectrum_loss(batch)) for batch in batches], batches[-1]

    plain, _ = scores(0.0)
    woven, last = scores(weave[None, :, :, None])
    assert float(models["level"]._spectrum_loss(last)) < 1e-4
    assert woven[-1] > 3e-4 and woven[-1] > 4 * plain[-1]
    assert model.spectrum_steps.numpy() == 10.0
    with tf.GradientTape() as tape:
        tape.watch(last)
        loss = model._spectrum_loss(last)
    gradient = tape.gradient(loss, last).numpy()
    power = (np.abs(np.fft.fft2(gradient.transpose(0, 3, 1, 2))) ** 2).sum(axis=(0, 1))
    peak = np.unravel_index(int(power.argmax()), power.shape)
    assert peak in ((6, 6), (58, 58))


def test_spectrum_penalty_period_widens_the_band():
    """`spectrum_penalty_period` is the longest period (px, along either axis) the penalty covers: diagonal
    stripes with a period of 10.7 px along each axis (what penalised runs on the kit moved their weave to) pay
    nothing in the default band (periods up to 8 px) and pay with a band of 16 px; the wider band holds every
    block of the default one and more. Out-of-range periods are refused by name."""
    import tensorflow as tf

    config = tiny_model_config(image_size=64)
    config.config.spectrum_penalty = 1.0
    model = networks.make_gan(config)
    assert model.spectrum_penalty_period == networks.SPECTRUM_PENALTY_PERIOD == 8
    rng = np.random.default_rng(0)
    real = np.clip(rng.normal(0, 0.3, (32, 64, 64, 3)), -1, 1).astype(np.float32)  # white noise: every frequency
    model.set_spectrum_target(real)
    y, x = np.mgrid[:64, :64]
    diagonal = 0.5 * np.cos(2 * np.pi * 6 * (x + y) / 64)  # 6 cycles per 64 px along each axis
    striped = tf.constant(np.clip(real[:16] + diagonal[None, :, :, None], -1, 1).astype(np.float32))
    narrow_band = model._spectrum_band().numpy()
    assert float(model._spectrum_loss(striped)) == 0.0
    model.spectrum_penalty_period = 16
    wide_band = model._spectrum_band().numpy()
    assert float(model._spectrum_loss(striped)) > 0.01
    assert (wide_band >= narrow_band).all() and wide_band.sum() > narrow_band.sum()
    with pytest.raises(ValueError, match="spectrum penalty period must be in 4..64 px, got 2"):
        networks.Gan(model.generator, model.discriminator, latent_dim=8, spectrum_penalty_period=2)
    with pytest.raises(ValueError, match="spectrum_penalty_period must be in 4..16 px for 32-px images, got 32"):
        trainer.GanConfig(image_size=32, spectrum_penalty_period=32).validate()
