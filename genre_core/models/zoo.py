"""Model zoo: pure factories selected by name, each with its preprocessing inside the model.

Every model follows the saved-classifier contract (docs/architecture.md): input RGB float 0..255 of shape
(size, size, 3), output softmax probabilities. No Lambda layers: preprocessing uses Keras layers or the
registered layers of `genre_core.models.layers`, so `load_model(path)` (safe_mode=True) works.

Models with a pretrained backbone are built as `head(extractor(image))`: the extractor (preprocessing,
backbone, pooling) is a nested model named "features" whose inner backbone is named "backbone"; the head is
a nested model named "head". When the backbone is frozen, training can run the extractor once per image
(genre_core.models.embeddings) and fit only the head, then reassemble the same full model for saving.

    model = build_model("vgg19_head", num_classes=10, input_size=224, weights="imagenet", head_units=120)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from genre_core.models.backbones import hed_vgg16, resolve_weights
from genre_core.models.layers import (caffe_preprocess, FEATURE_TRANSFORMS, mean_std_pooling, prior_correction,
                                      register_all, signed_sqrt, signed_sqrt_numpy)

# Keras's cached ImageNet weight file names (~/.keras/models), used to fail fast when offline.
IMAGENET_FILES = {
    "vgg19_notop": "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "resnet50_notop": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "resnet50_top": "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
    "efficientnetv2_b0_notop": "efficientnetv2-b0_notop.h5",
}
DEFAULT_FINE_TUNE_LAYERS = 24  # report 4.3: fine-tune the last 24 layers of ResNet-50


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about a model name."""

    description: str
    default_size: int
    default_weights: str | None  # "imagenet", "hed" or None
    pretrained_backbone: bool  # True: built as head(extractor(image)), frozen unless fine-tuned
    extractor: Callable | None = None  # (input_size, weights, options) -> (features model, backbone)
    factory: Callable | None = None  # (num_classes, input_size, weights, options) -> keras.Model


def _keras():
    import keras

    return keras


# ----------------------------------------------------------------------------------------------------------
# Shared pieces


def build_head(feature_dim: int, num_classes: int, head_units: int = 0, dropout: float = 0.0,
               weight_decay: float = 0.0, name: str = "head", feature_transform: str = "none"):
    """A head on a feature vector: [SignedSqrt], Normalization, [Dense(head_units, relu)], [Dropout], Dense softmax.

    feature_transform "sqrt" puts a power normalisation (sign(x) * sqrt(|x|)) first. The Normalization
    layer starts as the identity; training adapts it to the training features (`adapt_head(head,
    features)`), since raw backbone features have very uneven scales.
    """
    if feature_transform not in FEATURE_TRANSFORMS:
        raise ValueError(f"feature_transform {feature_transform!r} is not one of {', '.join(FEATURE_TRANSFORMS)}")
    keras = _keras()
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay > 0 else None
    inputs = keras.Input((feature_dim,), name="features")
    x = signed_sqrt(name="transform")(inputs) if feature_transform == "sqrt" else inputs
    x = keras.layers.Normalization(axis=-1, name="normalize")(x)
    if head_units > 0:
        x = keras.layers.Dense(head_units, activation="relu", kernel_regularizer=regularizer, name="hidden")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = keras.layers.Dense(num_classes, kernel_regularizer=regularizer, name="logits")(x)
    # Softmax in float32 so mixed precision keeps probabilities accurate.
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


def adapt_head(head, features, variance_floor: float = 0.01) -> None:
    """Set the head's Normalization to the mean and variance of `features` (N, D).

    Variances are floored at `variance_floor` times their average, so a feature that happens to be
    (nearly) constant on the training images cannot blow up on a new image.
    """
    import numpy as np

    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) == 0:
        raise ValueError(f"adapt_head needs a non-empty (N, D) feature array, got shape {features.shape}")
    if any(layer.name == "transform" for layer in head.layers):
        features = signed_sqrt_numpy(features, head.get_layer("transform").epsilon)
    mean = features.mean(axis=0)
    variance = features.var(axis=0)
    variance = np.maximum(variance, variance_floor * float(variance.mean()) + 1e-12)
    layer = head.get_layer("normalize")
    layer.set_weights([mean.astype(np.float32), variance.astype(np.float32), np.array(len(features), np.int64)])
    layer.finalize_state()


def log_priors(labels, num_classes: int):
    """Log of each class's share of `labels` (integer class indices); a class with no example counts as 0.5."""
    import numpy as np

    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    counts = np.maximum(counts, 0.5)
    return np.log(counts / counts.sum())


def with_prior_correction(model, log_prior, tau: float):
    """`model` (probabilities out) followed by a PriorCorrection layer, keeping its name; tau 0 returns it as is."""
    if not tau:
        return model
    keras = _keras()
    outputs = prior_correction([float(value) for value in log_prior], tau, name="logit_adjustment")(model.output)
    return keras.Model(model.inputs, outputs, name=model.name)


def _check_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r}: a classifier needs at least 2 classes")


def _check_size(name: str, input_size: int, minimum: int = 32) -> int:
    if isinstance(input_size, (tuple, list)):
        if len(set(input_size)) != 1:
            raise ValueError(f"model {name}: only square inputs are supported, got {input_size}")
        input_size = input_size[0]
    input_size = int(input_size)
    if input_size < minimum:
        raise ValueError(f"model {name}: input size {input_size} px is below its minimum of {minimum} px")
    return input_size


def _applications_weights(weights: str | None, cached_file: str | None) -> str | None:
    """Turn our weights option into a keras.applications `weights=` value (failing fast offline)."""
    if weights == "hed":
        raise ValueError("weights='hed' only applies to the hed_vgg16 model")
    return resolve_weights(weights, cached_file)


def _freeze(backbone, fine_tune_layers: int) -> None:
    """Freeze a backbone, or leave its last `fine_tune_layers` layers trainable (BatchNorm stays frozen)."""
    keras = _keras()
    if fine_tune_layers <= 0:
        backbone.trainable = False
        return
    backbone.trainable = True
    layers = backbone.layers
    cut = max(len(layers) - fine_tune_layers, 0)
    for index, layer in enumerate(layers):
        # BatchNormalization layers stay in inference mode and frozen, as the Keras fine-tuning guide advises.
        layer.trainable = index >= cut and not isinstance(layer, keras.layers.BatchNormalization)


def _extractor_model(inputs, features, name: str = "features"):
    return _keras().Model(inputs, features, name=name)


# ----------------------------------------------------------------------------------------------------------
# Factories


def _small_cnn(num_classes, input_size, weights, options):
    """A small CPU-friendly CNN trained from scratch: three conv blocks, global average pooling, softmax."""
    keras = _keras()
    if weights not in (None, "none", "default"):
        raise ValueError("small_cnn is trained from scratch; it takes no pretrained weights (use --weights none)")
    dropout = float(options.get("dropout", 0.0)) or 0.2
    width = int(options.get("width", 32))
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    for block, filters in enumerate((width, width * 2, width * 4)):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{block + 1}")(x)
        # Synchronized batch statistics keep the moving averages identical on every worker of a
        # multi-worker run; in one process it is plain batch normalization.
        x = keras.layers.BatchNormalization(synchronized=True, name=f"bn{block + 1}")(x)
        x = keras.layers.Activation("relu", name=f"relu{block + 1}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{block + 1}")(x)
    x = keras.layers.Conv2D(width * 4, 3, padding="same", activation="relu", name="conv4")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = keras.layers.Dense(num_classes, name="logits")(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


def _resnet50_scratch(num_classes, input_size, weights, options):
    """ResNet-50 from random initialisation (report 4.2: 128 px, Adam, learning rate 0.001)."""
    keras = _keras()
    if weights not in (None, "none", "default"):
        raise ValueError("resnet50 is the from-scratch model; use resnet50_transfer for pretrained weights")
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = caffe_preprocess(name="preprocess")(inputs)
    backbone = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg",
                                           input_shape=(input_size, input_size, 3), name="backbone")
    x = backbone(x)
    if options.get("dropout", 0.0):
        x = keras.layers.Dropout(float(options["dropout"]), name="dropout")(x)
    x = keras.layers.Dense(num_classes, name="logits")(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="resnet50")


def _vgg19_features(input_size, weights, options):
    """Frozen VGG-19 (Caffe preprocessing), global average pool of block 5 (report 4.1)."""
    keras = _keras()
    resolved = _applications_weights(weights, IMAGENET_FILES["vgg19_notop"])
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = caffe_preprocess(name="preprocess")(inputs)
    backbone = keras.applications.VGG19(weights=resolved, include_top=False,
                                        input_shape=(input_size, input_size, 3), name="backbone")
    x = backbone(x, training=False)
    features = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return _extractor_model(inputs, features), backbone


def _resnet50_features(input_size, weights, options):
    """ResNet-50 transfer features: the ImageNet top kept (1000 probabilities) or replaced (pooled features)."""
    keras = _keras()
    variant = options.get("variant", "replace_top")
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = caffe_preprocess(name="preprocess")(inputs)
    if variant == "keep_top":
        if weights not in (None, "none") and input_size != 224:
            raise ValueError(f"resnet50_transfer variant keep_top uses the ImageNet top, which needs 224 px, "
                             f"not {input_size}")
        resolved = _applications_weights(weights, IMAGENET_FILES["resnet50_top"])
        backbone = keras.applications.ResNet50(weights=resolved, include_top=True,
                                               input_shape=(input_size, input_size, 3), name="backbone")
    else:
        resolved = _applications_weights(weights, IMAGENET_FILES["resnet50_notop"])
        backbone = keras.applications.ResNet50(weights=resolved, include_top=False, pooling="avg",
                                               input_shape=(input_size, input_size, 3), name="backbone")
    features = backbone(x, training=False)
    return _extractor_model(inputs, features), backbone


def _efficientnetv2_features(input_size, weights, options):
    """EfficientNetV2-B0 with its own preprocessing (input 0..255), globally average pooled."""
    keras = _keras()
    resolved = _applications_weights(weights, IMAGENET_FILES["efficientnetv2_b0_notop"])
    inputs = keras.Input((input_size, input_size, 3), name="image")
    backbone = keras.applications.EfficientNetV2B0(weights=resolved, include_top=False, pooling="avg",
                                                   include_preprocessing=True,
                                                   input_shape=(input_size, input_size, 3))
    backbone.name = "backbone"  # EfficientNetV2's `name` argument selects the variant, so rename afterwards.
    features = backbone(inputs, training=False)
    return _extractor_model(inputs, features), backbone


def _hed_vgg16_features(input_size, weights, options):
    """HED-VGG16 (ImageNet then BSDS500 edges, offline) with several conv layers pooled and concatenated.

    options: feature_layers (default block3_conv3, block4_conv3, block5_conv3) and pooling ("avg" or
    "avgstd": per-channel mean and standard deviation, the "style" statistics that help for art).
    """
    keras = _keras()
    shape = (input_size, input_size, 3)
    if weights in ("hed", "default"):
        vgg = hed_vgg16(shape)
    else:
        resolved = _applications_weights(weights, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
        vgg = keras.applications.VGG16(weights=resolved, include_top=False, input_shape=shape)
    layer_names = list(options.get("feature_layers") or ["block3_conv3", "block4_conv3", "block5_conv3"])
    available = [layer.name for layer in vgg.layers]
    missing = [name for name in layer_names if name not in available]
    if missing:
        raise ValueError(f"hed_vgg16: unknown feature layer(s) {missing}; choose from {available[1:]}")
    # The tap model exposes the chosen conv layers; everything after the deepest one is dropped.
    backbone = keras.Model(vgg.input, [vgg.get_layer(name).output for name in layer_names], name="backbone")
    pooling = options.get("pooling", "avgstd")
    inputs = keras.Input(shape, name="image")
    x = caffe_preprocess(name="preprocess")(inputs)
    maps = backbone(x, training=False)
    if not isinstance(maps, (list, tuple)):
        maps = [maps]
    pooled = []
    for name, feature_map in zip(layer_names, maps):
        if pooling == "avgstd":
            pooled.append(mean_std_pooling(name=f"stats_{name}")(feature_map))
        else:
            pooled.append(keras.layers.GlobalAveragePooling2D(name=f"pool_{name}")(feature_map))
    features = pooled[0] if len(pooled) == 1 else keras.layers.Concatenate(name="concat")(pooled)
    return _extractor_model(inputs, features), backbone


MODELS: dict[str, ModelSpec] = {
    "small_cnn": ModelSpec("small CNN from scratch (CPU baseline)", 64, None, False, factory=_small_cnn),
    "resnet50": ModelSpec("ResNet-50 from scratch (report 4.2)", 128, None, False, factory=_resnet50_scratch),
    "vgg19_head": ModelSpec("frozen VGG-19, GAP block 5, Dense head (report 4.1)", 224, "imagenet", True,
                            extractor=_vgg19_features),
    "resnet50_transfer": ModelSpec("ResNet-50 transfer: keep_top / replace_top / fine_tune (report 4.3)", 224,
                                   "imagenet", True, extractor=_resnet50_features),
    "efficientnetv2_b0": ModelSpec("EfficientNetV2-B0 transfer, frozen or fine-tuned", 224, "imagenet", True,
                                   extractor=_efficientnetv2_features),
    "hed_vgg16": ModelSpec("offline HED-VGG16, multi-layer mean/std features + head", 224, "hed", True,
                           extractor=_hed_vgg16_features),
}


# ----------------------------------------------------------------------------------------------------------
# Public API


def get_spec(name: str) -> ModelSpec:
    """Return the registry entry for a model name, or raise ValueError listing the names."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]


def resolve_weights_option(name: str, weights: str | None) -> str | None:
    """Map "default" to the model's own default weights; keep anything else."""
    if weights == "default":
        return get_spec(name).default_weights
    if weights in ("", "none", "None"):
        return None
    return weights


def fine_tune_count(name: str, options: dict) -> int:
    """How many backbone layers train: fine_tune_layers, or 24 for resnet50_transfer's fine_tune variant."""
    count = int(options.get("fine_tune_layers", 0) or 0)
    if name == "resnet50_transfer" and options.get("variant") == "fine_tune" and count == 0:
        count = DEFAULT_FINE_TUNE_LAYERS
    return count


def uses_frozen_features(name: str, options: dict) -> bool:
    """True when the model is head(frozen extractor), so features can be computed once and cached."""
    return get_spec(name).pretrained_backbone and fine_tune_count(name, options) == 0


def build_feature_extractor(name: str, input_size: int, weights: str | None = "default", **options):
    """Return the frozen feature extractor (image 0..255 -> feature vector) of a pretrained-backbone model."""
    spec = get_spec(name)
    if not spec.pretrained_backbone:
        raise ValueError(f"model {name} has no pretrained backbone to extract features with")
    input_size = _check_size(name, input_size)
    extractor, backbone = spec.extractor(input_size, resolve_weights_option(name, weights), options)
    _freeze(backbone, fine_tune_count(name, options))
    if fine_tune_count(name, options) == 0:
        extractor.trainable = False
    return extractor


def build_model(name: str, num_classes: int, input_size: int | None = None, weights: str | None = "default",
                **options):
    """Build a classifier by name: input RGB 0..255 (input_size, input_size, 3), output softmax.

    options: dropout, head_units, weight_decay (L2 on the head), fine_tune_layers, variant
    (resnet50_transfer), feature_layers and pooling (hed_vgg16), width (small_cnn).
    """
    spec = get_spec(name)
    _check_classes(num_classes)
    input_size = _check_size(name, input_size or spec.default_size)
    weights = resolve_weights_option(name, weights)
    if not spec.pretrained_backbone:
        return spec.factory(num_classes, input_size, weights, options)
    extractor = build_feature_extractor(name, input_size, weights, **options)
    head = build_head(int(extractor.output.shape[-1]), num_classes,
                      head_units=int(options.get("head_units", 0)), dropout=float(options.get("dropout", 0.0)),
                      weight_decay=float(options.get("weight_decay", 0.0)),
                      feature_transform=str(options.get("feature_transform", "none")))
    return assemble(extractor, head, name=name)


def assemble(extractor, head, name: str = "classifier"):
    """Join a feature extractor and a head into one classifier model (what model.keras holds)."""
    keras = _keras()
    inputs = keras.Input(extractor.input.shape[1:], name="image")
    outputs = head(extractor(inputs))
    return keras.Model(inputs, outputs, name=name)


def extractor_id(name: str, input_size: int, weights: str | None, options: dict) -> str:
    """A stable text naming what a frozen extractor computes (model, weights, layers, pooling, size)."""
    weights = resolve_weights_option(name, weights)
    if weights not in (None, "imagenet", "hed"):
        path = Path(weights).expanduser()
        stat = path.stat() if path.exists() else None
        token = f"{path.resolve()}:{stat.st_size if stat else 0}:{stat.st_mtime_ns if stat else 0}"
        weights = "file-" + hashlib.sha1(token.encode()).hexdigest()[:10]
    parts = [name, str(weights or "random"), str(input_size)]
    if name == "hed_vgg16":
        parts += ["+".join(options.get("feature_layers") or ["block3_conv3", "block4_conv3", "block5_conv3"]),
                  options.get("pooling", "avgstd")]
    if name == "resnet50_transfer":
        parts.append("keep_top" if options.get("variant") == "keep_top" else "notop")
    return "-".join(parts)


def frozen_extractor_id(config) -> str:
    """The extractor id a TrainConfig's frozen-feature run caches its features under (its size resolved)."""
    size = config.size or get_spec(config.model).default_size
    return extractor_id(config.model, size, resolve_weights_option(config.model, config.weights),
                        model_options(config))


def model_options(config) -> dict:
    """The factory options a TrainConfig implies."""
    return {
        "dropout": config.dropout,
        "head_units": config.head_units,
        "weight_decay": config.weight_decay if config.optimizer != "adamw" else 0.0,
        "fine_tune_layers": config.fine_tune_layers,
        "variant": config.variant,
        "feature_layers": list(config.feature_layers),
        "pooling": config.pooling,
        "feature_transform": config.feature_transform,
    }


def load_model(path: str | Path):
    """Load a saved model (a classifier, a GAN generator) with safe_mode=True after registering our custom
    layers."""
    keras = _keras()
    register_all()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    return keras.saving.load_model(path, safe_mode=True, compile=False)
