"""Classify paintings with a trained run's model, and explain one prediction with a Grad-CAM heat map.

A saved classifier takes RGB 0..255 input and outputs softmax probabilities over the run's classes.json
(docs/architecture.md, "Saved classifier contract"), so classifying is exactly the training normalisation
(`images.load_rgb` with the run's size and resize policy) followed by one call of the model.

Caching: `load_classifier` keeps the four most recent classifiers in a `functools.lru_cache` keyed by
(run folder, model.keras modification time and size), so a retrained model is reloaded and a page rerun is
free. The app may still wrap it in `st.cache_resource`; both are safe.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from genre_core import fileio, images
from genre_core.evaluate import resolve_run_dir

DEFAULT_POLICY = "squash"
PREDICT_BATCH_SIZE = 32
NO_CONV_MESSAGE = "this model has no convolutional layer; Grad-CAM unavailable"


@dataclass
class Classifier:
    """A loaded classifier: the Keras model, its class names and the input normalisation it was trained with."""

    model: Any
    classes: list[str]
    size: tuple[int, int]   # (width, height), as images.load_rgb takes it
    policy: str
    run_dir: Path | None = None

    def load(self, source: images.ImageSource, name: str | None = None) -> np.ndarray:
        """Load one image exactly as training did: RGB uint8 at the run's size and resize policy."""
        return images.load_rgb(source, self.size, self.policy, name=name)

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities (N, classes) for uint8 images (N, H, W, 3); a single (H, W, 3) image also works."""
        array = np.asarray(batch)
        if array.ndim == 3:
            array = array[None]
        expected = (self.size[1], self.size[0], 3)
        if array.ndim != 4 or array.shape[1:] != expected:
            raise ValueError(f"images must have shape (N, {expected[0]}, {expected[1]}, 3), got {array.shape}")
        if len(array) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        import keras

        # Calling the model directly (not model.predict) keeps one-image latency at the bare call's.
        outputs = [
            keras.ops.convert_to_numpy(
                self.model(array[start:start + PREDICT_BATCH_SIZE].astype(np.float32), training=False)
            )
            for start in range(0, len(array), PREDICT_BATCH_SIZE)
        ]
        return np.concatenate(outputs).astype(np.float32)

    def classify(self, sources: Sequence[images.ImageSource], names: Sequence[str] | None = None,
                 top_k: int = 3) -> list[dict]:
        """Classify files or bytes; each result is {name, ok, error, top: [(genre, p)], probabilities: {genre: p}}.

        A file that cannot be read gets ok=False and an error naming it; the others are still classified.
        """
        if names is not None and len(names) != len(sources):
            raise ValueError(f"got {len(names)} names for {len(sources)} images")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        results: list[dict] = []
        loaded: list[np.ndarray] = []
        loaded_positions: list[int] = []
        for position, source in enumerate(sources):
            name = names[position] if names is not None else images.source_name(source)
            result = {"name": name, "ok": False, "error": None, "top": [], "probabilities": {}}
            try:
                loaded.append(self.load(source, name=name))
                loaded_positions.append(position)
            except (ValueError, OSError) as exc:
                result["error"] = str(exc)
            results.append(result)
        if loaded:
            probabilities = self.predict_arrays(np.stack(loaded))
            for position, row in zip(loaded_positions, probabilities):
                results[position].update(ok=True, top=top_genres(row, self.classes, top_k),
                                         probabilities={g: float(p) for g, p in zip(self.classes, row)})
        return results


def top_genres(probabilities: np.ndarray, classes: Sequence[str], k: int = 3) -> list[tuple[str, float]]:
    """The k most probable (genre, probability) pairs, most probable first."""
    order = np.argsort(-np.asarray(probabilities), kind="stable")[:k]
    return [(classes[i], float(probabilities[i])) for i in order]


def run_input_size(config: dict | None, model: Any = None) -> tuple[int, int]:
    """(width, height) from the run config ("size", "image_size" or "input_size"), else from the model's input."""
    config = config if isinstance(config, dict) else {}
    for key in ("size", "image_size", "input_size"):
        value = config.get(key)
        if value is not None:
            return images.parse_size(tuple(value) if isinstance(value, list) else value)
    shape = getattr(model, "input_shape", None)
    if shape and len(shape) == 4 and shape[1] and shape[2]:
        return int(shape[2]), int(shape[1])
    raise ValueError("the run's config.json records no input size and the model's input has no fixed size")


def load_classifier(run_or_path: Any) -> Classifier:
    """Load a run's classifier (model.keras with safe_mode=True, classes.json, size and policy from config.json)."""
    run_dir = resolve_run_dir(run_or_path).resolve()
    model_path = run_dir / "model.keras"
    try:
        stat = model_path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{run_dir}: no model.keras (the run has not saved a model yet)") from None
    return _load_classifier_cached(str(run_dir), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _load_classifier_cached(run_dir: str, mtime_ns: int, size: int) -> Classifier:
    """Load a classifier; cached by (folder, model file time and size) so a changed model is reloaded."""
    import keras

    try:
        from genre_core import layers

        layers.register_all()
    except ImportError:
        pass
    folder = Path(run_dir)
    classes = fileio.read_json(folder / "classes.json")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{folder / 'classes.json'}: missing or not a list of genre names")
    config = fileio.read_json(folder / "config.json", default={})
    try:
        model = keras.saving.load_model(folder / "model.keras", safe_mode=True)
    except (ValueError, OSError, TypeError) as exc:
        raise ValueError(f"{folder / 'model.keras'}: cannot load the model ({exc})") from None
    outputs = model.output_shape[-1] if hasattr(model, "output_shape") else None
    if outputs is not None and outputs != len(classes):
        raise ValueError(f"{folder}: the model outputs {outputs} probabilities but classes.json lists {len(classes)}")
    size = run_input_size(config, model)
    policy = str(config.get("policy") or config.get("resize_policy") or DEFAULT_POLICY)
    if policy not in images.POLICIES:
        raise ValueError(f"{folder / 'config.json'}: unknown resize policy {policy!r}")
    return Classifier(model=model, classes=list(classes), size=size, policy=policy, run_dir=folder)


# ----------------------------------------------------------------------------------------------------------
# Grad-CAM
# ----------------------------------------------------------------------------------------------------------


def _is_model(layer: Any) -> bool:
    """True for a nested Keras model used as a layer (Functional or Sequential)."""
    import keras

    return isinstance(layer, keras.Model)


def _rank(tensor: Any) -> int:
    """Number of dimensions of a symbolic tensor (batch included)."""
    return len(tensor.shape)


def _node_in(model: Any, layer: Any) -> Any | None:
    """The node where `model`'s own graph calls `layer` (a layer can be shared by several models)."""
    graph_nodes = {id(node) for nodes in getattr(model, "_nodes_by_depth", {}).values() for node in nodes}
    for node in getattr(layer, "_inbound_nodes", None) or []:
        if id(node) in graph_nodes:
            return node
    return None


def _output_in(model: Any, layer: Any) -> Any:
    """The symbolic output of `layer` in the graph of `model`."""
    node = _node_in(model, layer)
    return node.output_tensors[0] if node is not None else layer.output


def _input_in(model: Any, layer: Any) -> Any:
    """The symbolic input of `layer` in the graph of `model`."""
    node = _node_in(model, layer)
    return node.input_tensors[0] if node is not None else layer.input


def _has_convolution(model: Any) -> bool:
    """True when the model (or a model nested in it) has a convolution layer (Conv2D, DepthwiseConv2D, ...)."""
    for layer in getattr(model, "layers", []):
        if "Conv" in type(layer).__name__ or (_is_model(layer) and _has_convolution(layer)):
            return True
    return False


def _find_conv_target(model: Any) -> tuple[Any, Any | None]:
    """Find the last layer with a 4-D output: returns (outer layer, inner layer inside it or None)."""
    import keras

    if not _has_convolution(model):
        raise ValueError(NO_CONV_MESSAGE)
    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if _is_model(layer):
            if _rank(layer.output) == 4:
                return layer, None
            for inner in reversed(layer.layers):
                if isinstance(inner, keras.layers.InputLayer) or _is_model(inner):
                    continue
                if _rank(inner.output) == 4:
                    return layer, inner
            continue
        try:
            if _rank(_output_in(model, layer)) == 4:
                return layer, None
        except (AttributeError, ValueError, IndexError):
            continue
    raise ValueError(NO_CONV_MESSAGE)


@dataclass
class _GradCamGraph:
    """Callables that map an input batch to (conv feature map, class scores) with the feature map on the tape."""

    prefix: Any           # input -> nested model's input (None for a flat target)
    features: Any         # (prefix output or input) -> [feature map, stage output]
    head: Any             # stage output -> penultimate activations or probabilities
    dense: Any | None     # final softmax Dense layer whose logits we use, or None to use probabilities


def _final_softmax_dense(model: Any) -> Any | None:
    """The model's last layer when it is a Dense with softmax activation (so Grad-CAM can use its logits)."""
    import keras

    last = model.layers[-1]
    if isinstance(last, keras.layers.Dense) and getattr(last.activation, "__name__", "") == "softmax":
        return last
    return None


@functools.lru_cache(maxsize=8)
def _gradcam_graph(model: Any) -> _GradCamGraph:
    """Build (once per model) the sub-models Grad-CAM needs, for flat models and nested backbones."""
    import keras

    outer, inner = _find_conv_target(model)
    dense = _final_softmax_dense(model)
    final = _input_in(model, dense) if dense is not None else model.outputs[0]
    if inner is None:
        features = keras.Model(model.inputs, [_output_in(model, outer), final])
        return _GradCamGraph(prefix=None, features=features, head=None, dense=dense)
    # The feature map lives inside a nested model: run the layers before it, the nested model (exposing the
    # inner feature map), then the layers after it, each as its own sub-model.
    prefix = keras.Model(model.inputs, _input_in(model, outer))
    features = keras.Model(outer.inputs, [_output_in(outer, inner), outer.outputs[0]])
    stage_output = _output_in(model, outer)
    # When the nested model feeds the final layer directly there is nothing in between to run.
    head = None if stage_output is final else keras.Model(stage_output, final)
    return _GradCamGraph(prefix=prefix, features=features, head=head, dense=dense)


def gradcam(classifier: Classifier | Any, image_uint8: np.ndarray, class_index: int | None = None
            ) -> tuple[np.ndarray, int]:
    """Grad-CAM heat map (H x W floats in 0..1, the image's size) for one image; class defaults to the top one.

    Works for a flat convolutional model and for one whose backbone is a nested Keras model; a model without a
    4-D (convolutional) output raises ValueError.
    """
    import tensorflow as tf

    model = classifier.model if isinstance(classifier, Classifier) else classifier
    image = np.asarray(image_uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"Grad-CAM needs one RGB image of shape (H, W, 3), got {image.shape}")
    graph = _gradcam_graph(model)
    batch = tf.convert_to_tensor(image[None].astype(np.float32))
    with tf.GradientTape() as tape:
        stage_input = graph.prefix(batch, training=False) if graph.prefix is not None else batch
        feature_map, stage_output = graph.features(stage_input, training=False)
        final = graph.head(stage_output, training=False) if graph.head is not None else stage_output
        if graph.dense is not None:
            scores = tf.matmul(final, graph.dense.kernel.value)
            if graph.dense.use_bias:
                scores = scores + graph.dense.bias.value
        else:
            scores = final
        if class_index is None:
            class_index = int(tf.argmax(scores[0]))
        if not 0 <= class_index < scores.shape[-1]:
            raise ValueError(f"class index {class_index} is outside 0..{scores.shape[-1] - 1}")
        score = scores[:, class_index]
    gradients = tape.gradient(score, feature_map)
    if gradients is None:
        raise ValueError("Grad-CAM got no gradient from the class score to the feature map")
    weights = tf.reduce_mean(gradients, axis=(1, 2))                        # (1, channels)
    cam = tf.nn.relu(tf.reduce_sum(feature_map * weights[:, None, None, :], axis=-1))[0]
    cam = tf.image.resize(cam[..., None], image.shape[:2], method="bilinear")[..., 0].numpy()
    peak = float(cam.max())
    heatmap = cam / peak if peak > 0 else np.zeros_like(cam)
    return np.clip(heatmap, 0.0, 1.0).astype(np.float32), int(class_index)


def _jet_lut() -> np.ndarray:
    """A 256-entry jet colormap (blue -> cyan -> yellow -> red) as uint8 RGB, without matplotlib."""
    x = np.linspace(0.0, 1.0, 256)
    red = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    green = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    blue = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return (np.stack([red, green, blue], axis=1) * 255).round().astype(np.uint8)


JET = _jet_lut()


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """Map a 0..1 heat map to jet colours, uint8 (H, W, 3)."""
    values = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float64)), 0.0, 1.0)
    return JET[(values * 255).round().astype(np.uint8)]


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend a heat map (resized to the image if needed) over an RGB uint8 image; returns uint8 (H, W, 3)."""
    from PIL import Image

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"overlay needs an RGB image of shape (H, W, 3), got {image.shape}")
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != image.shape[:2]:
        resized = Image.fromarray(heat).resize((image.shape[1], image.shape[0]), Image.Resampling.BILINEAR)
        heat = np.asarray(resized, dtype=np.float32)
    colours = colorize(heat).astype(np.float32)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def collect_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (searched recursively for image files, sorted) into a list of paths."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and images.is_image_file(p))
        else:
            found.append(path)
    return found
