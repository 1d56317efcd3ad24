"""KID/FID maths on known feature sets, and the named offline feature space."""

from __future__ import annotations

import numpy as np
import pytest

from genre_core.gan import quality


def test_kid_of_constant_sets_has_the_closed_form_value():
    # With d = 1, a = 0 and b = 1: k(a, a) = 1, k(b, b) = (1 + 1)^3 = 8, k(a, b) = 1, so MMD^2 = 1 + 8 - 2 = 7.
    mean, std = quality.kid(np.zeros((20, 1)), np.ones((20, 1)), subsets=5, subset_size=10)
    assert mean == pytest.approx(7.0)
    assert std == pytest.approx(0.0)


def test_kid_of_a_set_against_itself_is_about_zero_and_against_noise_is_large():
    rng = np.random.default_rng(0)
    features = rng.normal(0.0, 1.0, (400, 32))
    same_mean, same_std = quality.kid(features, features, subsets=20, subset_size=200)
    other_draw, _ = quality.kid(features, rng.normal(0.0, 1.0, (400, 32)), subsets=20, subset_size=200)
    noise_mean, noise_std = quality.kid(features, rng.uniform(0.0, 3.0, (400, 32)), subsets=20, subset_size=200)
    # Subsets of one set share samples, which biases the estimate slightly; it stays near 0 next to noise.
    assert abs(same_mean) < 0.1 and abs(other_draw) < 0.02
    assert noise_mean > 10.0
    assert noise_mean > 100 * max(abs(same_mean), same_std)
    assert noise_std >= 0.0


def test_kid_rejects_bad_input_with_a_clear_message():
    with pytest.raises(ValueError, match="differ in dimension"):
        quality.kid(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        quality.kid(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        quality.kid(np.full((4, 3), np.nan), np.zeros((5, 3)))


def test_fid_is_zero_for_identical_sets_and_the_mean_shift_squared_otherwise():
    rng = np.random.default_rng(1)
    features = rng.normal(0.0, 1.0, (500, 4))
    assert quality.fid(features, features) == pytest.approx(0.0, abs=1e-6)
    # Shifting every feature by 2 moves the mean by 2 in each of 4 dimensions: FID = 4 * 2^2 = 16.
    assert quality.fid(features, features + 2.0) == pytest.approx(16.0, abs=1e-4)


def test_compare_names_the_feature_space_and_skips_fid_on_small_sets():
    rng = np.random.default_rng(2)
    small = quality.compare(rng.normal(size=(100, 8)), rng.normal(size=(120, 8)), "test_space@1", subsets=3)
    assert small["feature_space"] == "test_space@1"
    assert small["fid"] is None and "2048" in small["fid_note"]
    assert (small["n_generated"], small["n_real"]) == (100, 120)
    large = quality.compare(rng.normal(size=(2048, 4)), rng.normal(size=(2048, 4)), "test_space@1", subsets=2,
                            subset_size=100)
    assert large["fid"] is not None and large["fid"] < 0.1


def test_feature_space_names_and_hed_features(monkeypatch):
    monkeypatch.setattr(quality.backbones, "keras_cached_weights", lambda name: None)
    assert quality.resolve_feature_space("auto") == "hed_vgg16"
    with pytest.raises(ValueError, match="unknown feature space"):
        quality.resolve_feature_space("clip")
    extractor = quality.FeatureExtractor("auto", image_size=32)
    assert extractor.name == "hed_vgg16_pool345@32"
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (3, 20, 20, 3), dtype=np.uint8)
    features = extractor(np.concatenate([images, images[:1]]))
    assert features.shape == (4, 256 + 512 + 512)
    np.testing.assert_allclose(features[0], features[3], rtol=1e-5)
    assert not np.allclose(features[0], features[1])
    with pytest.raises(ValueError, match="shape"):
        extractor(np.zeros((2, 20, 20), dtype=np.uint8))


def test_inception_feature_space_loads_a_local_weights_file(tmp_path, monkeypatch):
    """The InceptionV3 path, offline: a weights file standing in for Keras's cached ImageNet file."""
    import keras

    source = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(299, 299, 3))
    weights_file = tmp_path / "inception_v3_notop.weights.h5"
    source.save_weights(weights_file)
    asked = []
    monkeypatch.setattr(quality.backbones, "keras_cached_weights",
                        lambda name: asked.append(name) or weights_file)
    assert quality.resolve_feature_space("auto") == "inception_v3"
    assert asked == [quality.INCEPTION_WEIGHTS_FILE]
    extractor = quality.FeatureExtractor("auto", image_size=64)
    assert (extractor.name, extractor.image_size) == ("inception_v3_pool@299", 299)
    images = np.random.default_rng(4).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    features = extractor(images)
    assert features.shape == (2, 2048) and np.isfinite(features).all()
    # The file's weights, not a fresh initialisation, are in the feature network.
    loaded = extractor._model.get_layer(index=1).get_weights()[0]
    np.testing.assert_array_equal(loaded, source.get_layer(index=1).get_weights()[0])


def test_fixed_space_kid_of_a_set_with_itself_is_about_zero_and_ignores_the_scale():
    rng = np.random.default_rng(5)
    real = np.abs(rng.normal(0.0, 30.0, (400, 64)))  # pooled ReLU features are non-negative and large
    same = quality.fixed_kid(real, real, seed=0)
    assert same["feature_space"] == quality.FIXED_SPACE == "hed_vgg16_conv345_rms@64"
    assert (same["subsets"], same["subset_size"]) == (10, 200)
    assert same["scale"] == pytest.approx(np.sqrt(np.mean(real ** 2)))
    shifted = quality.fixed_kid(real * 1.5, real, seed=0)
    assert abs(same["kid"]) < 0.02 and shifted["kid"] > 50 * max(abs(same["kid"]), 1e-4)
    # One global scale taken from the real set: multiplying both sets by 10 changes nothing.
    scaled = quality.fixed_kid(real * 15.0, real * 10.0, seed=0)
    assert scaled["kid"] == pytest.approx(shifted["kid"], rel=1e-9)


def test_fixed_kid_by_depth_scores_each_layer_alone_and_names_a_bad_width():
    rng = np.random.default_rng(8)
    widths = quality.FIXED_LAYER_WIDTHS
    real = np.abs(rng.normal(0.0, 30.0, (300, sum(widths))))
    same = quality.fixed_kid_by_depth(real, real, seed=0)
    # About 0 (two draws of 200 from one set of 300 differ by a few hundredths) ...
    assert list(same) == ["block3", "block4", "block5"] and all(abs(value) < 0.05 for value in same.values())
    layout = real.copy()
    layout[:, widths[0] + widths[1]:] *= 1.5  # only block5's averages change
    moved = quality.fixed_kid_by_depth(layout, real, seed=0)
    assert moved["block3"] == pytest.approx(same["block3"]) and moved["block4"] == pytest.approx(same["block4"])
    assert moved["block5"] > 50 * max(abs(same["block5"]), 1e-4)  # ... against about 4 here
    # Each layer is scaled by its own real RMS: one layer ten times larger in both sets changes nothing.
    louder = layout.copy(), real.copy()
    for features in louder:
        features[:, :widths[0]] *= 10.0
    assert quality.fixed_kid_by_depth(*louder, seed=0) == pytest.approx(moved)
    with pytest.raises(ValueError, match=r"generated feature set: the fixed space has 1280 features a row "
                                         r"\(256 \+ 512 \+ 512 for block3_conv3, .*\), got 64"):
        quality.fixed_kid_by_depth(real[:, :64], real)


def test_fixed_space_extractor_reads_block3_to_5_conv3_at_64_px():
    extractor = quality.FeatureExtractor("hed_vgg16_fixed", image_size=128)
    assert (extractor.name, extractor.image_size) == (quality.FIXED_SPACE, 64)
    rng = np.random.default_rng(6)
    # Smooth random "paintings": a 4x4 colour layout blown up to 40 px, and the same layouts much darker.
    layouts = rng.integers(0, 256, (40, 4, 4, 3)).astype(np.uint8)
    images = np.repeat(np.repeat(layouts, 10, axis=1), 10, axis=2)
    features = extractor(images)
    assert features.shape == (40, 256 + 512 + 512) and np.isfinite(features).all()
    itself = quality.fixed_kid(features, features, subset_size=20)
    other = quality.fixed_kid(extractor(images // 4), features, subset_size=20)
    assert abs(itself["kid"]) < 0.05 * other["kid"]


def test_diversity_is_zero_for_copies_and_about_one_for_another_draw():
    rng = np.random.default_rng(7)
    real = rng.normal(0.0, 1.0, (100, 16))
    assert quality.diversity(np.repeat(real[:1], 50, axis=0), real)["ratio"] == pytest.approx(0.0, abs=1e-6)
    assert quality.diversity(rng.normal(0.0, 1.0, (100, 16)), real)["ratio"] == pytest.approx(1.0, abs=0.05)


class StubClassifier:
    """A classifier stand-in: calls an image 'landscape' when it is bright, else 'portrait'."""

    classes = ["abstract", "landscape", "portrait"]
    size = (24, 20)  # (width, height)

    def __init__(self):
        self.shapes = []

    def predict_arrays(self, batch):
        self.shapes.append(batch.shape)
        bright = batch.reshape(len(batch), -1).mean(axis=1) > 128
        probabilities = np.zeros((len(batch), 3))
        probabilities[bright, 1] = 0.9
        probabilities[~bright, 2] = 0.9
        return probabilities


def test_recognisability_on_a_stub_classifier_returns_the_known_share():
    images = np.concatenate([np.full((3, 16, 16, 3), 220, np.uint8), np.full((5, 16, 16, 3), 20, np.uint8)])
    judge = StubClassifier()
    result = quality.recognisability(judge, images, "landscape", batch_size=4)
    assert result == {"share": 3 / 8, "n": 8, "genre": "landscape"}
    assert judge.shapes == [(4, 20, 24, 3), (4, 20, 24, 3)]  # brought to the classifier's size
    assert quality.recognisability(judge, images, "portrait")["share"] == 5 / 8
    with pytest.raises(ValueError, match="does not know genre"):
        quality.recognisability(judge, images, "cityscape")


def test_stripes_are_one_for_real_like_images_and_rise_with_cross_hatching_only():
    """`stripes`: smooth random images against another draw of the same kind give about 1; adding one-pixel
    horizontal and vertical stripes raises the ratio far above 1, and adding the same amount of isotropic
    per-pixel noise (more fine detail, but not in stripes) does not; uint8 and [-1, 1] images of the same
    pictures give the same numbers; a spectrum of another size is refused by name."""
    rng = np.random.default_rng(0)

    def smooth(count):  # isotropic random fields whose power falls with frequency, as in photographs
        frequencies = np.fft.fftfreq(32)
        radius = np.hypot(*np.meshgrid(frequencies, frequencies, indexing="ij"))
        fields = np.fft.ifft2(np.fft.fft2(rng.normal(size=(count, 3, 32, 32))) / (0.03 + radius) ** 1.5).real
        fields = fields.transpose(0, 2, 3, 1)
        return np.clip(128 + 40 * fields / fields.std(), 0, 255)

    real, other = smooth(64), smooth(64)
    spectrum = quality.power_spectrum(real.astype(np.uint8))
    plain = quality.stripes(other.astype(np.uint8), spectrum)
    assert 0.7 < plain["ratio"] < 1.4
    lines = np.zeros((32, 32))
    lines[::2, :] += 12.0  # horizontal one-pixel stripes
    lines[:, ::2] += 12.0  # and vertical ones: cross-hatching
    hatched = quality.stripes(np.clip(other + lines[None, :, :, None], 0, 255).astype(np.uint8), spectrum)
    assert hatched["ratio"] > 5 * plain["ratio"] and hatched["axis"] > 5 * plain["axis"]
    grain = quality.stripes(np.clip(other + rng.normal(0, 12, other.shape), 0, 255).astype(np.uint8), spectrum)
    assert grain["off_axis"] > 2 * plain["off_axis"]  # much more fine detail, but not in stripes
    assert grain["ratio"] < 1.1 * plain["ratio"]
    as_floats = quality.stripes(other.astype(np.uint8).astype(np.float32) / 127.5 - 1.0, spectrum)
    assert as_floats["ratio"] == pytest.approx(plain["ratio"], rel=1e-6)
    with pytest.raises(ValueError, match="real spectrum of shape .16, 16. for images of 32 px"):
        quality.stripes(other.astype(np.uint8), spectrum[:16, :16])
    with pytest.raises(ValueError, match="expected square RGB images"):
        quality.power_spectrum(np.zeros((2, 8, 9, 3)))
