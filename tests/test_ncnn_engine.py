"""The ncnn feature engine: converted trunks give Keras's features; what does not convert falls back."""

from __future__ import annotations

import numpy as np
import pytest

from genre_core.models import embeddings, ncnn_engine, zoo


def _images(size: int, count: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((count, size, size, 3)) * 255).astype("float32")


def _relative_error(expected: np.ndarray, actual: np.ndarray) -> float:
    """Largest difference relative to the largest feature value (features of one layer share a scale)."""
    return float(np.abs(expected - actual).max() / np.abs(expected).max())


@pytest.mark.parametrize("size", [40, 48])
def test_vgg16_trunk_on_ncnn_gives_the_keras_features(size):
    # 40 px reaches block4 at 5x5: Keras's 'valid' max pooling floors to 2x2 where ncnn's default would
    # pad to 3x3, so an odd map checks the pooling translation.
    extractor = zoo.build_feature_extractor("hed_vgg16", size, None)
    x = _images(size)
    expected = np.asarray(extractor(x, training=False))
    fast = ncnn_engine.NcnnExtractor(extractor, threads=1)
    assert fast.spec.output_names == ["block3_conv3", "block4_conv3", "block5_conv3"]
    actual = fast(x)
    assert actual.shape == expected.shape and actual.dtype == np.float32
    assert _relative_error(expected, actual) < 1e-4


def test_vgg19_trunk_converts_whole_with_its_last_pooling():
    extractor = zoo.build_feature_extractor("vgg19_head", 64, None)
    x = _images(64, count=2, seed=3)
    fast = ncnn_engine.NcnnExtractor(extractor, threads=1)
    assert fast.spec.output_names == ["block5_pool"] and fast.spec.param.count("Convolution") == 16
    assert _relative_error(np.asarray(extractor(x, training=False)), fast(x)) < 1e-4


def test_hed_weights_convert_and_match_keras():
    extractor = zoo.build_feature_extractor("hed_vgg16", 32, "hed", feature_layers=["block2_conv2", "block4_conv1"])
    x = _images(32, count=2, seed=1)
    expected = np.asarray(extractor(x, training=False))
    actual = ncnn_engine.NcnnExtractor(extractor)(x)
    assert _relative_error(expected, actual) < 1e-4


def _extractor_with_trunk(trunk_layers):
    import keras

    from genre_core.models.layers import mean_std_pooling

    trunk_input = keras.Input((16, 16, 3))
    x = trunk_input
    for layer in trunk_layers:
        x = layer(x)
    trunk = keras.Model(trunk_input, x, name="backbone")
    inputs = keras.Input((16, 16, 3))
    return keras.Model(inputs, mean_std_pooling(name="stats")(trunk(inputs)))


def test_layers_ncnn_cannot_take_are_refused_by_name_and_auto_falls_back_to_keras():
    import keras

    extractor = _extractor_with_trunk([keras.layers.Conv2D(4, 3, strides=2, name="strided")])
    with pytest.raises(ncnn_engine.NcnnUnsupported, match="strided"):
        ncnn_engine.NcnnExtractor(extractor)
    with pytest.raises(ncnn_engine.NcnnUnsupported, match="strided"):
        embeddings.feature_pass(extractor, "ncnn")

    notes: list[str] = []
    forward, label = embeddings.feature_pass(extractor, "auto", notes=notes)
    assert label == "keras"
    assert "strided" in notes[-1] and "keras" in notes[-1]
    x = _images(16, count=2)
    np.testing.assert_allclose(forward(x, False), np.asarray(extractor(x)), rtol=1e-5, atol=1e-5)
    # The flipped pass mirrors the width axis.
    np.testing.assert_allclose(forward(x, True), np.asarray(extractor(x[:, :, ::-1])), rtol=1e-5, atol=1e-5)

    batchnorm = _extractor_with_trunk([keras.layers.Conv2D(4, 3, padding="same"),
                                       keras.layers.BatchNormalization(name="bn")])
    with pytest.raises(ncnn_engine.NcnnUnsupported, match="bn"):
        ncnn_engine.NcnnExtractor(batchnorm)
    any_size = keras.Input((None, None, 3))
    flexible_trunk = keras.Model(any_size, keras.layers.Conv2D(4, 3, padding="same")(any_size), name="backbone")
    with pytest.raises(ncnn_engine.NcnnUnsupported, match="fixed"):
        ncnn_engine.convert_trunk(flexible_trunk)
    no_backbone = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.GlobalAveragePooling2D()])
    with pytest.raises(ncnn_engine.NcnnUnsupported, match="backbone"):
        ncnn_engine.NcnnExtractor(no_backbone)


def test_auto_uses_ncnn_for_vgg_on_the_cpu_and_flips_like_keras():
    extractor = zoo.build_feature_extractor("hed_vgg16", 32, None, feature_layers=["block3_conv3"])
    notes: list[str] = []
    forward, label = embeddings.feature_pass(extractor, "auto", notes=notes)
    assert label.startswith("ncnn ") and "ncnn" in notes[-1]
    x = _images(32, count=2, seed=2)
    flipped = np.asarray(extractor(x[:, :, ::-1], training=False))
    assert _relative_error(flipped, forward(x, True)) < 1e-4
    with pytest.raises(ValueError, match="unknown feature engine"):
        embeddings.feature_pass(extractor, "tpu")


def test_auto_keeps_keras_when_a_gpu_is_visible_or_ncnn_is_missing(monkeypatch):
    import tensorflow as tf

    extractor = zoo.build_feature_extractor("hed_vgg16", 32, None, feature_layers=["block1_conv1"])
    real = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: ["/physical_device:GPU:0"] if kind == "GPU" else real(kind))
    notes: list[str] = []
    assert embeddings.feature_pass(extractor, "auto", notes=notes)[1] == "keras"
    assert "a GPU is visible" in notes[-1]
    monkeypatch.setattr(tf.config, "list_physical_devices", real)
    monkeypatch.setattr(ncnn_engine, "available", lambda: False)
    assert embeddings.feature_pass(extractor, "auto", notes=notes)[1] == "keras"
    assert "ncnn is not installed" in notes[-1]
    with pytest.raises(ncnn_engine.NcnnUnsupported, match="pip install ncnn"):
        embeddings.feature_pass(extractor, "ncnn")


def test_embedding_cache_records_the_engine_reuses_features_and_recomputes_a_deleted_file(tmp_path,
                                                                                        isolated_artifacts):
    from types import SimpleNamespace

    import pandas as pd

    from genre_core.util import fileio

    pictures = _images(32, count=5, seed=5).astype(np.uint8)
    image_cache = SimpleNamespace(images=pictures, manifest=pd.DataFrame({"ok": [True] * 4 + [False]}),
                                  folder=tmp_path / "cache-32")
    extractor = zoo.build_feature_extractor("hed_vgg16", 32, None, feature_layers=["block3_conv3"])
    notes: list[str] = []
    first = embeddings.compute_embeddings(image_cache, extractor, "tiny", flip=True, batch_size=2,
                                          engine="auto", notes=notes)
    expected = np.asarray(extractor(pictures.astype("float32"), training=False))
    assert _relative_error(expected[:4], np.asarray(first.features)[:4]) < 1e-4
    assert not np.asarray(first.features)[4].any()  # the row that failed to decode stays zero
    info = fileio.read_json(first.folder / "embeddings.json")
    assert info["engine"].startswith("ncnn ") and "computed with ncnn" in notes[-1]

    again = embeddings.compute_embeddings(image_cache, extractor, "tiny", flip=True, engine="keras", notes=notes)
    assert "read from the embedding cache (computed with ncnn" in notes[-1]
    np.testing.assert_array_equal(np.asarray(again.features), np.asarray(first.features))

    # A deleted feature file is computed again (here by Keras), not reported as cached.
    (first.folder / "features_flip.npy").unlink()
    redone = embeddings.compute_embeddings(image_cache, extractor, "tiny", flip=True, engine="keras", notes=notes)
    assert notes[-1] == "backbone features computed with keras"
    flipped = np.asarray(extractor(pictures[:, :, ::-1].astype("float32"), training=False))
    assert _relative_error(flipped[:4], np.asarray(redone.flipped)[:4]) < 1e-4
    assert fileio.read_json(first.folder / "embeddings.json")["engine"] == "keras"


def test_thread_chooser_times_each_count_then_keeps_the_fastest_and_re_explores():
    chooser = ncnn_engine.ThreadChooser([2, 1], explore_every=5)
    times = {2: 0.6, 1: 0.06}  # a busy machine: one thread is faster
    picks = []
    for _ in range(20):
        count = chooser.pick()
        picks.append(count)
        chooser.record(count, times[count])
    assert picks[:2] == [2, 1]
    assert chooser.best() == 1
    assert picks.count(2) == 1 + sum(1 for call in range(3, 21) if call % 5 == 0)
    times = {2: 0.03, 1: 0.06}  # the machine went quiet: the next exploration finds two threads faster
    for _ in range(15):
        count = chooser.pick()
        chooser.record(count, times[count])
    assert chooser.best() == 2
