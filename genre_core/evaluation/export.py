"""Export a classifier run's model for serving: TensorFlow SavedModel, TFLite (LiteRT) or ONNX.

Built on Keras 3's `model.export` (formats "tf_saved_model", "litert", "onnx"). The saved classifier does all
its own preprocessing (docs/architecture.md, "Saved classifier contract"), so the exported graph does too:
it takes float32 RGB pixels in 0..255, shape (N, H, W, 3), and returns softmax probabilities over the run's
classes. Resizing a painting to H x W stays outside the graph (Pillow's resize is what the model was trained
on); the JSON sidecar written beside the export names the size and the resize policy, the classes in output
order, and how the export was checked.

Every export is reloaded once and compared with `model.predict` on two random images; the largest absolute
difference is recorded in the sidecar ("check"). ONNX needs `tf2onnx` to write and `onnxruntime` to check.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np

from genre_core.models import zoo
from genre_core.runs import store
from genre_core.util import fileio


FORMATS = ("saved_model", "tflite", "onnx")
KERAS_FORMATS = {"saved_model": "tf_saved_model", "tflite": "litert", "onnx": "onnx"}
SUFFIXES = {"tflite": ".tflite", "onnx": ".onnx"}


class ExportUnavailable(RuntimeError):
    """A format needs a package that is not installed (the message says which)."""


def sidecar_path(out: str | Path) -> Path:
    """Where the JSON sidecar of an export at `out` goes: `<out>.json` beside it."""
    out = Path(out)
    return out.parent / f"{out.name}.json"


def check_format(format: str, out: str | Path) -> Path:
    """Validate the format and output path; return the path (ValueError with the reason)."""
    if format not in FORMATS:
        raise ValueError(f"export format {format!r} is not one of {', '.join(FORMATS)}")
    out = Path(out).expanduser()
    suffix = SUFFIXES.get(format)
    if suffix and out.suffix != suffix:
        raise ValueError(f"a {format} export is one file ending in {suffix}; got {out}")
    if format == "onnx" and importlib.util.find_spec("tf2onnx") is None:
        raise ExportUnavailable("ONNX export needs the tf2onnx package (pip install tf2onnx onnx); "
                                "saved_model and tflite work without it")
    return out


def export_run(run, format: str, out: str | Path, overwrite: bool = False, check: bool = True) -> dict:
    """Export the model of a finished classifier run to `out`; write the sidecar and return its content."""
    run = store.open_run(run, kind="classifier")
    out = check_format(format, out)
    if not run.model_path.exists():
        raise ValueError(f"run {run.id} has no model.keras to export")
    if out.exists() or sidecar_path(out).exists():
        if not overwrite:
            raise ValueError(f"{out} already exists (pass --overwrite to replace it)")
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    config = run.config()
    size = int(config.get("size") or 0)
    classes = run.classes() or config.get("classes") or []
    model = zoo.load_model(run.model_path)
    height, width = (int(dim) for dim in model.input_shape[1:3])
    if size and (height, width) != (size, size):
        raise ValueError(f"run {run.id}: config size {size} but the model takes {height}x{width}")
    _ensure_called(model, height, width)
    _normalization_reads_variables(model)
    model.export(str(out), format=KERAS_FORMATS[format], verbose=False)
    info = {
        "format": format,
        "path": out.name,
        "run": run.id,
        "model": config.get("model"),
        "classes": list(classes),
        "input": {"shape": [None, height, width, 3], "dtype": "float32", "range": [0, 255], "color": "RGB",
                  "layout": "NHWC"},
        "output": {"shape": [None, len(classes)], "meaning": "softmax probabilities, in the order of classes"},
        "size": [height, width],
        "resize_policy": config.get("policy", "squash"),
        "preprocessing": "inside the graph (rescaling and the backbone's own preprocessing); resize each image "
                         "to size with resize_policy (genre_core.data.images.load_rgb) before calling it",
        "serving": _serving_note(format),
        "versions": _versions(),
    }
    if check:
        info["check"] = verify(model, out, format)
    fileio.atomic_write_json(sidecar_path(out), info)
    return info


def _ensure_called(model, height: int, width: int) -> None:
    """Keras's exporters need a model that has been called once (a loaded functional model may not have)."""
    model(np.zeros((1, height, width, 3), np.float32), training=False)


def _normalization_reads_variables(model) -> None:
    """Point adapted Normalization layers at their mean and variance variables.

    After `finalize_state`, a Normalization layer holds its statistics as eager tensors, which the ONNX
    converter (tf2onnx) turns into extra graph inputs instead of constants; variables are frozen into the
    graph. Only layers normalising the last axis of a 2-D input are changed, where (D,) broadcasts as (1, D)."""
    import keras

    stack = [model]
    while stack:
        layer = stack.pop()
        stack.extend(getattr(layer, "layers", []))
        if not isinstance(layer, keras.layers.Normalization) or getattr(layer, "adapt_mean", None) is None:
            continue
        shape = list(getattr(layer, "_broadcast_shape", []) or [])
        if len(shape) == 2 and shape[0] == 1 and tuple(layer.adapt_mean.shape) == (shape[1],):
            layer.mean, layer.variance = layer.adapt_mean, layer.adapt_variance


def _serving_note(format: str) -> str:
    return {
        "saved_model": "tf.saved_model.load(path).serve(images) (signature serving_default)",
        "tflite": "tf.lite.Interpreter(model_path=path); resize the input tensor to the batch, then invoke()",
        "onnx": "onnxruntime.InferenceSession(path).run(None, {input_name: images})",
    }[format]


def _versions() -> dict:
    import keras
    import tensorflow as tf

    return {"keras": keras.__version__, "tensorflow": tf.__version__}


def load_predictor(path: str | Path, format: str):
    """A function images (N, H, W, 3) float32 -> probabilities (N, C) for an exported model.

    ExportUnavailable when the runtime for the format is missing (ONNX without onnxruntime)."""
    path = str(path)
    if format == "saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(path)
        return lambda images: np.asarray(loaded.serve(tf.constant(images, tf.float32)))
    if format == "tflite":
        import tensorflow as tf

        interpreter = tf.lite.Interpreter(model_path=path)

        def predict_tflite(images):
            images = np.asarray(images, np.float32)
            source = interpreter.get_input_details()[0]
            interpreter.resize_tensor_input(source["index"], list(images.shape))
            interpreter.allocate_tensors()
            interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
            interpreter.invoke()
            return np.asarray(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))

        return predict_tflite
    if format == "onnx":
        if importlib.util.find_spec("onnxruntime") is None:
            raise ExportUnavailable("onnxruntime is not installed (pip install onnxruntime), so the ONNX export "
                                    "cannot be run here")
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda images: np.asarray(session.run(None, {name: np.asarray(images, np.float32)})[0])
    raise ValueError(f"export format {format!r} is not one of {', '.join(FORMATS)}")


def verify(model, out: str | Path, format: str, images: np.ndarray | None = None) -> dict:
    """Compare the export's outputs with `model.predict` on `images` (two random images by default)."""
    height, width = (int(dim) for dim in model.input_shape[1:3])
    if images is None:
        images = np.random.default_rng(0).uniform(0, 255, (2, height, width, 3)).astype(np.float32)
    expected = model.predict(images, verbose=0)
    try:
        got = load_predictor(out, format)(images)
    except ExportUnavailable as exc:
        return {"checked": False, "reason": str(exc)}
    difference = float(np.max(np.abs(got - expected)))
    return {"checked": True, "images": int(len(images)), "max_abs_difference": difference}


def describe(info: dict) -> str:
    """A short text summary of an export's sidecar for the CLI."""
    check = info.get("check") or {}
    if check.get("checked"):
        checked = f"matches model.predict to {check['max_abs_difference']:.1e}"
    else:
        checked = f"not checked: {check.get('reason', 'check off')}"
    return (f"{info['format']} export of run {info['run']}: input {info['size'][0]}x{info['size'][1]} RGB 0..255 "
            f"({info['resize_policy']} resize), {len(info['classes'])} classes; {checked}")


def main_json(info: dict) -> str:
    """The sidecar as pretty JSON (for --json)."""
    return json.dumps(info, indent=2)
