"""Model zoo: every factory builds at 32 px and takes a training step; weights options; custom layers; config."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genre_core.models import zoo
from genre_core.training.config import TrainConfig

SIZE = 32


def _one_step(model, seed: int = 0) -> None:
    """Run one optimiser step of sparse cross-entropy on four random images."""
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=True)
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (4, SIZE, SIZE, 3)).astype("float32")
    model.train_on_batch(images, np.array([0, 1, 2, 0]))


def _snapshot(layer) -> list[np.ndarray]:
    return [np.array(weight) for weight in layer.get_weights()]


def _changed(before, after) -> bool:
    return any(not np.array_equal(a, b) for a, b in zip(before, after))


def test_registry_lists_every_required_model():
    assert {"small_cnn", "resnet50", "vgg19_head", "resnet50_transfer", "efficientnetv2_b0", "hed_vgg16"} <= set(zoo.MODELS)
    with pytest.raises(ValueError, match="unknown model 'vgg99'"):
        zoo.build_model("vgg99", 3, SIZE)
    with pytest.raises(ValueError, match="at least 2 classes"):
        zoo.build_model("small_cnn", 1, SIZE)
    with pytest.raises(ValueError, match="below its minimum"):
        zoo.build_model("small_cnn", 3, 8)


def test_small_cnn_trains_and_reloads_with_safe_mode(tmp_path):
    model = zoo.build_model("small_cnn", 3, SIZE)
    assert model.input_shape == (None, SIZE, SIZE, 3)
    assert model.output_shape == (None, 3)
    before = _snapshot(model)
    _one_step(model)
    assert _changed(before, _snapshot(model))
    images = np.random.default_rng(1).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    probabilities = np.asarray(model(images, training=False))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    path = tmp_path / "small.keras"
    model.save(path)
    reloaded = zoo.load_model(path)
    np.testing.assert_allclose(np.asarray(reloaded(images, training=False)), probabilities, atol=1e-6)


@pytest.mark.parametrize(
    "name, options, frozen",
    [
        ("resnet50", {}, False),
        ("vgg19_head", {"head_units": 8}, True),
        ("resnet50_transfer", {"variant": "keep_top", "head_units": 0}, True),
        ("resnet50_transfer", {"variant": "fine_tune"}, False),
        ("efficientnetv2_b0", {"fine_tune_layers": 5}, False),
        ("hed_vgg16", {"pooling": "avgstd"}, True),
    ],
)
def test_factory_builds_and_takes_one_training_step(name, options, frozen):
    weights = "default" if name == "hed_vgg16" else None
    model = zoo.build_model(name, 3, SIZE, weights=weights, **options)
    assert model.output_shape == (None, 3)
    if name == "resnet50":
        trained_part = model
        backbone_before = None
    else:
        trained_part = model.get_layer("head")
        backbone = model.get_layer("features").get_layer("backbone")
        backbone_before = _snapshot(backbone)
        assert backbone.trainable is (not frozen)
    before = _snapshot(trained_part)
    _one_step(model)
    assert _changed(before, _snapshot(trained_part)), f"{name}: the trained part did not change"
    if backbone_before is not None:
        # A frozen backbone keeps its weights; a fine-tuned one changes in its last layers.
        assert _changed(backbone_before, _snapshot(backbone)) is not frozen


def test_resnet50_transfer_fine_tunes_the_last_24_layers_by_default():
    model = zoo.build_model("resnet50_transfer", 3, SIZE, weights=None, variant="fine_tune")
    backbone = model.get_layer("features").get_layer("backbone")
    trainable = [layer for layer in backbone.layers if layer.trainable_weights]
    assert trainable, "fine_tune left no backbone layer trainable"
    assert all(index >= len(backbone.layers) - zoo.DEFAULT_FINE_TUNE_LAYERS
               for index, layer in enumerate(backbone.layers) if layer.trainable_weights)
    frozen = zoo.build_model("resnet50_transfer", 3, SIZE, weights=None, variant="replace_top")
    assert not frozen.get_layer("features").trainable_weights


def test_local_weights_file_loads_into_the_backbone(tmp_path):
    import keras

    source = keras.applications.VGG19(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    path = tmp_path / "vgg19_notop.weights.h5"
    source.save_weights(path)
    model = zoo.build_model("vgg19_head", 3, SIZE, weights=str(path), head_units=0)
    backbone = model.get_layer("features").get_layer("backbone")
    for expected, actual in zip(source.get_weights(), backbone.get_weights()):
        np.testing.assert_array_equal(expected, actual)
    with pytest.raises(Exception, match="does not exist"):
        zoo.build_model("vgg19_head", 3, SIZE, weights=str(tmp_path / "missing.weights.h5"))


def test_imagenet_offline_fails_at_once_with_instructions(tmp_path, monkeypatch):
    from genre_core.models.backbones import WeightsUnavailableError

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras-home"))
    monkeypatch.delenv("GENRE_ALLOW_DOWNLOAD", raising=False)
    for name in ("vgg19_head", "resnet50_transfer", "efficientnetv2_b0"):
        with pytest.raises(WeightsUnavailableError) as caught:
            zoo.build_model(name, 3, SIZE, weights="imagenet")
        message = str(caught.value)
        assert "offline" in message and "--weights" in message and ".h5" in message
    with pytest.raises(ValueError, match="from scratch"):
        zoo.build_model("small_cnn", 3, SIZE, weights="imagenet")


def test_custom_layers_compute_known_values():
    import keras

    from genre_core.models import layers

    image = np.zeros((1, 2, 2, 3), np.float32)
    image[..., 0], image[..., 1], image[..., 2] = 10.0, 20.0, 30.0
    expected = keras.applications.vgg16.preprocess_input(image.copy())
    np.testing.assert_allclose(np.asarray(layers.caffe_preprocess()(image)), expected, atol=1e-4)

    feature_map = np.array([1.0, 3.0, 5.0, 7.0], np.float32).reshape(1, 2, 2, 1)
    pooled = np.asarray(layers.mean_std_pooling(epsilon=0.0)(feature_map))
    np.testing.assert_allclose(pooled, [[4.0, np.sqrt(5.0)]], rtol=1e-5)


def test_adapt_head_normalises_features_and_floors_variance():
    head = zoo.build_head(3, 2)
    features = np.array([[0.0, 10.0, 5.0], [2.0, 30.0, 5.0]])
    zoo.adapt_head(head, features)
    normalised = np.asarray(head.get_layer("normalize")(features.astype("float32")))
    np.testing.assert_allclose(normalised[:, 0], [-1.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(normalised[:, 1], [-1.0, 1.0], atol=1e-5)
    # The constant third feature gets a floored variance instead of a division by ~0.
    assert np.all(np.abs(normalised[:, 2]) < 1e-3)


def test_sqrt_feature_transform_head_adapts_on_transformed_features_and_reloads(tmp_path):
    head = zoo.build_head(2, 2, feature_transform="sqrt")
    features = np.array([[0.0, 4.0], [16.0, 64.0], [4.0, 16.0]])
    zoo.adapt_head(head, features)
    # sqrt first: 0, 4, 2 and 2, 8, 4 are then standardised (not the raw values).
    transformed = np.asarray(head.get_layer("transform")(features.astype("float32")))
    np.testing.assert_allclose(transformed, np.sqrt(features), atol=1e-5)
    normalised = np.asarray(head.get_layer("normalize")(transformed))
    np.testing.assert_allclose(normalised.mean(axis=0), [0.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(normalised.std(axis=0), [1.0, 1.0], atol=1e-4)
    # Signed: negative inputs keep their sign.
    np.testing.assert_allclose(np.asarray(head.get_layer("transform")(np.array([[-9.0, 9.0]], "float32"))),
                               [[-3.0, 3.0]], atol=1e-5)
    path = tmp_path / "head.keras"
    head.save(path)
    reloaded = zoo.load_model(path)
    np.testing.assert_allclose(reloaded.predict(features, verbose=0), head.predict(features, verbose=0), atol=1e-6)
    with pytest.raises(ValueError, match="feature_transform 'log'"):
        zoo.build_head(2, 2, feature_transform="log")


def test_cosine_schedule_decays_the_learning_rate_to_zero_over_the_run():
    from genre_core.training.loop import make_optimizer

    optimizer = make_optimizer(TrainConfig(learning_rate=0.01, lr_schedule="cosine"), total_steps=100)
    assert float(optimizer.learning_rate) == pytest.approx(0.01)
    optimizer.iterations.assign(50)
    assert float(optimizer.learning_rate) == pytest.approx(0.005, rel=1e-3)
    optimizer.iterations.assign(100)
    assert float(optimizer.learning_rate) == pytest.approx(0.0, abs=1e-7)
    constant = make_optimizer(TrainConfig(learning_rate=0.01), total_steps=100)
    constant.iterations.assign(100)
    assert float(constant.learning_rate) == pytest.approx(0.01)


def test_train_config_round_trips_and_rejects_bad_input(tmp_path):
    config = TrainConfig.from_dict({"data": "demo", "model": "hed_vgg16", "balancing": "class_weights",
                                    "augmentation": ["flip", "contrast"], "epochs": 3})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    assert TrainConfig.from_json(path) == config
    with pytest.raises(ValueError, match="unknown training option.*learnin_rate"):
        TrainConfig.from_dict({"learnin_rate": 0.1})
    with pytest.raises(ValueError, match="balancing"):
        TrainConfig.from_dict({"balancing": "smote"})
    with pytest.raises(ValueError, match="augmentation"):
        TrainConfig.from_dict({"augmentation": ["mixup"]})
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig.from_dict({"epochs": 0})
    with pytest.raises(ValueError, match="feature_transform='log'"):
        TrainConfig.from_dict({"feature_transform": "log"})
    with pytest.raises(ValueError, match="lr_schedule='step'"):
        TrainConfig.from_dict({"lr_schedule": "step"})
    with pytest.raises(ValueError, match="feature_engine='tpu'.*auto, keras, ncnn"):
        TrainConfig.from_dict({"feature_engine": "tpu"})
    with pytest.raises(ValueError, match="val_fraction"):
        TrainConfig.from_dict({"val_fraction": 0.6, "test_fraction": 0.5})
    path.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt JSON"):
        TrainConfig.from_json(path)
