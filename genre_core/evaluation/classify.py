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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from genre_core.data import cache as image_cache, images
from genre_core.data.dataset import Dataset
from genre_core.evaluation import bundle
from genre_core.models import embeddings, layers
from genre_core.training.features import frozen_parts
from genre_core.util import fileio


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
    config: dict | None = None  # the run's config.json
    # Set by `with_engine`: (uint8 batch -> probabilities) through a fast feature engine, and its label.
    fast_forward: Any = None
    engine: str = "keras"

    def frozen_parts(self) -> tuple[Any, Any, str] | None:
        """(extractor, head, extractor id) when the model is head(frozen extractor) from a frozen-feature run,
        so features can come from the embedding cache and the fast engine; None otherwise."""
        return frozen_parts(self.model, self.config or {})

    def with_engine(self, engine: str = "auto") -> "Classifier":
        """This classifier with `predict_arrays` running the frozen backbone of a head(frozen extractor) model on
        `engine` (`embeddings.feature_pass`: "auto" is ncnn on a CPU where it converts, as training's feature
        pass) and only the head in Keras. Itself when the model is not of that kind or the engine is Keras.

        For a caller that classifies batches again and again (the GAN's judge, every epoch): on 2 cores the
        kit judge (HED-VGG16 at 224 px) classified 64 images in 5.2-5.7 s against Keras's 9.5 s, with the same
        genre for every image and probabilities within 1.3e-6 (`python3 -m bench evaluate`, row "GAN judge")."""
        parts = self.frozen_parts()
        if parts is None or engine == "keras":
            return self
        extractor, head, _ = parts
        features, label = embeddings.feature_pass(extractor, engine)
        if label.startswith("keras"):
            return self
        import keras

        def forward(batch: np.ndarray) -> np.ndarray:
            return keras.ops.convert_to_numpy(head(features(batch, False), training=False))

        return replace(self, fast_forward=forward, engine=label)

    def predict_dataset(self, dataset, progress=None, cancel_check=None) -> tuple[np.ndarray, list[str | None]]:
        """Probabilities (N, classes) for every manifest row of `dataset`, and per row None or why it could
        not be read.

        The images are decoded once into the image cache at the run's size and policy (parallel workers,
        reused next time). A frozen-feature model then takes its features from the embedding cache, computed
        on the fast engine (ncnn on a CPU) the way training computes them, and runs only its head; other
        models run on the cached images. Rows that could not be read get NaN probabilities.
        """
        workers = 1 if len(dataset.manifest) < 64 else None
        cached = image_cache.prepare_cache(dataset, self.size, self.policy, progress=progress, workers=workers)
        ok = cached.manifest["ok"].to_numpy(dtype=bool)
        parts = self.frozen_parts()
        if parts is not None:
            extractor, head, identity = parts
            features = embeddings.compute_embeddings(cached, extractor, identity, progress=progress,
                                                     cancel_check=cancel_check, engine="auto").features
            arrays, forward = features, head
        else:
            arrays, forward = cached.images, self.model
        import keras

        probabilities = np.full((len(ok), len(self.classes)), np.nan, dtype=np.float32)
        rows = np.flatnonzero(ok)
        step = 256 if parts is not None else PREDICT_BATCH_SIZE
        for start in range(0, len(rows), step):
            chunk = rows[start:start + step]
            batch = np.asarray(arrays[chunk], dtype=np.float32)
            probabilities[chunk] = keras.ops.convert_to_numpy(forward(batch, training=False))
        errors = [None if good else str(error or "unreadable image")
                  for good, error in zip(ok, cached.manifest["error"].fillna(""))]
        return probabilities, errors

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
        forward = self.fast_forward or (lambda chunk: keras.ops.convert_to_numpy(self.model(chunk, training=False)))
        outputs = [forward(array[start:start + PREDICT_BATCH_SIZE].astype(np.float32))
                   for start in range(0, len(array), PREDICT_BATCH_SIZE)]
        return np.concatenate(outputs).astype(np.float32)

    def classify_files(self, paths_: Sequence[str | os.PathLike], top_k: int = 3, progress=None) -> list[dict]:
        """Like `classify` for many files, through the image and embedding caches (see `predict_dataset`):
        a folder of paintings is decoded by parallel workers and a frozen-feature model runs the fast engine."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        probabilities, errors = self.predict_dataset(files_dataset(paths_, self.classes), progress=progress)
        results = []
        for path, row, error in zip(paths_, probabilities, errors):
            result = {"name": images.source_name(str(path)), "ok": error is None, "error": error, "top": [],
                      "probabilities": {}}
            if error is None:
                result.update(top=top_genres(row, self.classes, top_k),
                              probabilities={g: float(p) for g, p in zip(self.classes, row)})
            results.append(result)
        return results

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


def files_dataset(paths_: Sequence[str | os.PathLike], classes: Sequence[str]):
    """Image files of unknown genre as a Dataset, so they go through the image and embedding caches.

    Every row carries the first class as a placeholder genre: predicting never reads it."""
    import pandas as pd

    paths_ = [str(Path(path).resolve()) for path in paths_]
    root = Path(os.path.commonpath(paths_)) if paths_ else Path(".")
    return Dataset(source="files", root=root, classes=list(classes),
                   manifest=pd.DataFrame({"path": paths_, "genre": [classes[0]] * len(paths_)}))


def top_genres(probabilities: np.ndarray, classes: Sequence[str], k: int = 3) -> list[tuple[str, float]]:
    """The k most probable (genre, probability) pairs, most probable first."""
    order = np.argsort(-np.asarray(probabilities), kind="stable")[:k]
    return [(classes[i], float(probabilities[i])) for i in order]


def run_input_size(config: dict | None, model: Any = None) -> tuple[int, int]:
    """(width, height) from the run config ("size", "image_size" or "input_size"), else from the model's input."""
    config = config if isinstance(config, dict) else {}
    for key in ("size", "image_size", "input_size"):
        value = config.get(key)
        # A size of 0 means "the model's default"; the model's own input shape says what that is.
        if value not in (None, 0, "", "0"):
            return images.parse_size(tuple(value) if isinstance(value, list) else value)
    shape = getattr(model, "input_shape", None)
    if shape and len(shape) == 4 and shape[1] and shape[2]:
        return int(shape[2]), int(shape[1])
    raise ValueError("the run's config.json records no input size and the model's input has no fixed size")


def load_classifier(run_or_path: Any) -> Classifier:
    """Load a run's classifier (model.keras with safe_mode=True, classes.json, size and policy from config.json)."""
    run_dir = bundle.resolve_model_dir(run_or_path).resolve()
    model_path = run_dir / ("model.keras" if not bundle.is_bundle(run_dir) else bundle.HEAD_FILE)
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
        layers.register_all()
    except ImportError:
        pass
    folder = Path(run_dir)
    classes = fileio.read_json(folder / "classes.json")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{folder / 'classes.json'}: missing or not a list of genre names")
    config = fileio.read_json(folder / "config.json", default={})
    model_file = folder / ("model.keras" if not bundle.is_bundle(folder) else bundle.HEAD_FILE)
    try:
        model = bundle.load_model(folder) if bundle.is_bundle(folder) else \
            keras.saving.load_model(model_file, safe_mode=True)
    except (ValueError, OSError, TypeError) as exc:
        raise ValueError(f"{model_file}: cannot load the model ({exc})") from None
    outputs = model.output_shape[-1] if hasattr(model, "output_shape") else None
    if outputs is not None and outputs != len(classes):
        raise ValueError(f"{folder}: the model outputs {outputs} probabilities but classes.json lists {len(classes)}")
    size = run_input_size(config, model)
    policy = str(config.get("policy") or config.get("resize_policy") or DEFAULT_POLICY)
    if policy not in images.POLICIES:
        raise ValueError(f"{folder / 'config.json'}: unknown resize policy {policy!r}")
    return Classifier(model=model, classes=list(classes), size=size, policy=policy, run_dir=folder,
                      config=config if isinstance(config, dict) else {})


def classify_images(run_or_path: Any, sources: Sequence[images.ImageSource], names: Sequence[str] | None = None,
                    top_k: int = 3) -> list[dict]:
    """Load a run's classifier (cached) and classify files or bytes; see `Classifier.classify`."""
    return load_classifier(run_or_path).classify(sources, names=names, top_k=top_k)


# ----------------------------------------------------------------------------------------------------------
# Grad-CAM
# ----------------------------------------------------------------------------------------------------------


def _is_model(layer: Any) -> bool:
    """True for a nested Keras model used as a layer (Functional or Sequential)."""
    import keras

    return isinstance(layer, keras.Model)


def _graph_of(model: Any) -> Any | None:
    """The functional graph of a model: itself when Functional, its inner graph when Sequential, else None."""
    if hasattr(model, "_run_through_graph") and hasattr(model, "_nodes_by_depth"):
        return model
    inner = getattr(model, "_functional", None)
    return inner if inner is not None and hasattr(inner, "_run_through_graph") else None


def _has_convolution(model: Any) -> bool:
    """True when the model (or a model nested in it) has a convolution layer (Conv2D, DepthwiseConv2D, ...)."""
    for layer in getattr(model, "layers", []):
        if "Conv" in type(layer).__name__ or (_is_model(layer) and _has_convolution(layer)):
            return True
    return False


def _is_softmax(layer: Any) -> bool:
    """True for a Softmax layer, an Activation("softmax") layer or a Dense layer with softmax activation."""
    name = type(layer).__name__
    activation = getattr(getattr(layer, "activation", None), "__name__", "")
    return name == "Softmax" or (name in ("Activation", "Dense") and activation == "softmax")


class _Tap:
    """What one traced forward pass records: the last 4-D feature map after a convolution, and the logits."""

    def __init__(self):
        self.seen_convolution = False
        self.feature_map = None
        self.logits = None

    def after(self, layer: Any, inputs: tuple, outputs: Any) -> None:
        """Record a layer's output when it is a feature map, and the input of a softmax as the logits."""
        import keras

        if "Conv" in type(layer).__name__:
            self.seen_convolution = True
        if self.seen_convolution and not isinstance(outputs, (list, tuple)) and len(outputs.shape) == 4:
            self.feature_map = outputs
        if _is_softmax(layer) and inputs:
            logits = inputs[0]
            if type(layer).__name__ == "Dense":
                logits = keras.ops.matmul(logits, layer.kernel.value)
                if layer.use_bias:
                    logits = logits + layer.bias.value
            self.logits = logits


def _traced_call(model: Any, inputs: Any, tap: _Tap) -> Any:
    """Run a model layer by layer in inference mode, descending into nested models, reporting to `tap`."""
    graph = _graph_of(model)
    if graph is None:
        raise ValueError(f"Grad-CAM needs a functional or sequential Keras model, not {type(model).__name__}")

    def operation_fn(operation):
        nested = _graph_of(operation) if _is_model(operation) else None

        def call(*args, **kwargs):
            if nested is not None:
                return _traced_call(operation, args[0], tap)
            # As Keras's own graph runner does: pass training=False to the layers that take it.
            if "training" in getattr(operation, "_call_context_args", {}):
                kwargs["training"] = False
            outputs = operation(*args, **kwargs)
            tap.after(operation, args, outputs)
            return outputs

        return call

    if hasattr(graph, "_standardize_inputs"):
        inputs = graph._standardize_inputs(inputs)
    outputs = graph._run_through_graph(inputs, operation_fn=operation_fn)
    return outputs[0] if isinstance(outputs, (list, tuple)) and len(outputs) == 1 else outputs


def gradcam(classifier: Classifier | Any, image_uint8: np.ndarray, class_index: int | None = None
            ) -> tuple[np.ndarray, int]:
    """Grad-CAM heat map (H x W floats in 0..1, the image's size) for one image; class defaults to the top one.

    The feature map is the last 4-D output after a convolution, found while running the model layer by layer,
    also inside nested backbones (at any depth). The class score is the logit before the final softmax when
    there is one, else the probability. A model without convolutions raises ValueError.
    """
    import tensorflow as tf

    model = classifier.model if isinstance(classifier, Classifier) else classifier
    image = np.asarray(image_uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"Grad-CAM needs one RGB image of shape (H, W, 3), got {image.shape}")
    if not _has_convolution(model):
        raise ValueError(NO_CONV_MESSAGE)
    batch = tf.convert_to_tensor(image[None].astype(np.float32))
    tap = _Tap()
    with tf.GradientTape() as tape:
        probabilities = _traced_call(model, batch, tap)
        if tap.feature_map is None:
            raise ValueError(NO_CONV_MESSAGE)
        scores = tf.cast(tap.logits if tap.logits is not None else probabilities, tf.float32)
        if class_index is None:
            class_index = int(tf.argmax(scores[0]))
        if not 0 <= class_index < scores.shape[-1]:
            raise ValueError(f"class index {class_index} is outside 0..{scores.shape[-1] - 1}")
        score = scores[:, class_index]
    gradients = tape.gradient(score, tap.feature_map)
    if gradients is None:
        raise ValueError("Grad-CAM got no gradient from the class score to the last feature map")
    feature_map = tf.cast(tap.feature_map, tf.float32)
    weights = tf.reduce_mean(tf.cast(gradients, tf.float32), axis=(1, 2))           # (1, channels)
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
