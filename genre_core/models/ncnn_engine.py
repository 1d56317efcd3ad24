"""Run a frozen backbone's convolution trunk with ncnn on the CPU, for the one-off embedding pass.

Why: on the 2 AVX2 cores this project targets, TensorFlow runs VGG-style 3x3 convolutions directly at
close to the cores' peak, and HED-VGG16 at 224 px still takes 0.24 s per painting. ncnn computes the same
convolutions with Winograd transforms (F(6,3) / F(4,3): 2-5x fewer multiplications) and does the pass in
0.4-0.6 of the time (`python3 -m bench features` measures both in one process). The features agree with
Keras's to about 1e-6 of their scale, so heads trained on them work on the Keras model that is saved
in the run (the saved model never depends on ncnn).

Scope: a trunk is converted when it is a plain chain of `InputLayer`, `Conv2D` (stride 1, no dilation,
odd kernel, padding same/valid, ReLU or linear) and `MaxPooling2D` (pool == strides, padding valid):
VGG16/VGG19 and HED-VGG16. Anything else raises `NcnnUnsupported` and the caller keeps Keras.
The extractor around the trunk (preprocessing before it, pooling after it) still runs in Keras, split off
the extractor's own graph, so the two engines share one definition of those layers.

ncnn is imported only when a trunk is converted. fp16/bf16/int8 storage and arithmetic are switched off:
all arithmetic stays float32.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BACKBONE_LAYER = "backbone"


class NcnnUnsupported(ValueError):
    """The model cannot run on ncnn (a layer or setting the converter does not handle, or ncnn missing)."""


def available() -> bool:
    """True when the `ncnn` package is installed."""
    return importlib.util.find_spec("ncnn") is not None


def version() -> str | None:
    """The installed ncnn version, or None."""
    if not available():
        return None
    from importlib import metadata

    try:
        return metadata.version("ncnn")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source build without metadata
        return "unknown"


@dataclass
class NcnnTrunk:
    """An ncnn network text (`param`) and weights (`weights`) equivalent to a Keras trunk."""

    param: str
    weights: bytes
    input_name: str
    output_names: list[str]
    input_shape: tuple[int, int, int]


def _activation_code(layer) -> int:
    name = getattr(layer.activation, "__name__", str(layer.activation))
    if name == "relu":
        return 1
    if name == "linear":
        return 0
    raise NcnnUnsupported(f"layer {layer.name}: activation {name!r} is not converted (relu or linear only)")


def convert_trunk(trunk) -> NcnnTrunk:
    """Translate a Keras chain of Conv2D / MaxPooling2D layers into ncnn's param text and weights.

    The trunk's outputs (one or several layers' outputs, e.g. VGG16 taps at block3/4/5) become ncnn
    outputs named after the layers that produce them.
    """
    import keras

    layers = list(trunk.layers)
    if not layers or not isinstance(layers[0], keras.layers.InputLayer):
        raise NcnnUnsupported(f"{trunk.name}: the trunk must start with its Input layer")
    shape = tuple(trunk.input_shape[1:])
    if len(shape) != 3 or any(v is None for v in shape):
        raise NcnnUnsupported(f"{trunk.name}: needs a fixed (height, width, channels) input, got {shape}")
    shape = tuple(int(v) for v in shape)
    producers = {id(trunk.inputs[0]): layers[0].name}
    lines = [f"Input {layers[0].name} 0 1 {layers[0].name} 0={shape[1]} 1={shape[0]} 2={shape[2]}"]
    weights = bytearray()
    previous = layers[0].name
    for layer in layers[1:]:
        nodes = layer._inbound_nodes
        inbound = nodes[0].input_tensors if nodes else []
        if len(nodes) != 1 or len(inbound) != 1 or producers.get(id(inbound[0])) != previous:
            raise NcnnUnsupported(f"{trunk.name}: layer {layer.name} is not part of a simple chain")
        if type(layer) is keras.layers.Conv2D:
            kernel_h, kernel_w = layer.kernel_size
            if tuple(layer.strides) != (1, 1) or tuple(layer.dilation_rate) != (1, 1) or layer.groups != 1:
                raise NcnnUnsupported(f"layer {layer.name}: only stride 1, dilation 1, groups 1 are converted")
            if layer.data_format != "channels_last" or kernel_h % 2 == 0 or kernel_w % 2 == 0:
                raise NcnnUnsupported(f"layer {layer.name}: only channels_last and odd kernels are converted")
            if layer.padding not in ("same", "valid"):
                raise NcnnUnsupported(f"layer {layer.name}: padding {layer.padding!r} is not converted")
            kernel, *bias = (np.asarray(value, dtype=np.float32) for value in layer.get_weights())
            pad_w, pad_h = ((kernel_w // 2, kernel_h // 2) if layer.padding == "same" else (0, 0))
            bias_term = 1 if bias else 0
            lines.append(
                f"Convolution {layer.name} 1 1 {previous} {layer.name} 0={layer.filters} 1={kernel_w} 11={kernel_h} "
                f"4={pad_w} 14={pad_h} 5={bias_term} 6={kernel.size} 9={_activation_code(layer)}")
            weights += np.zeros(1, np.uint32).tobytes()  # tag 0: raw float32 weights follow
            weights += np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)).tobytes()  # HWIO -> OIHW
            if bias:
                weights += bias[0].tobytes()
        elif type(layer) is keras.layers.MaxPooling2D:
            pool_h, pool_w = layer.pool_size
            if tuple(layer.strides) != (pool_h, pool_w) or layer.padding != "valid":
                raise NcnnUnsupported(f"layer {layer.name}: only non-overlapping 'valid' max pooling is converted")
            # 5=1: valid padding (floor), as Keras; ncnn's default pads to ceil like Caffe.
            lines.append(f"Pooling {layer.name} 1 1 {previous} {layer.name} 0=0 1={pool_w} 11={pool_h} "
                         f"2={pool_w} 12={pool_h} 5=1")
        else:
            raise NcnnUnsupported(f"layer {layer.name} ({type(layer).__name__}) is not converted")
        producers[id(layer.output)] = layer.name
        previous = layer.name
    outputs = []
    for tensor in trunk.outputs:
        if id(tensor) not in producers:
            raise NcnnUnsupported(f"{trunk.name}: an output is not produced by a converted layer")
        outputs.append(producers[id(tensor)])
    param = "7767517\n" + f"{len(lines)} {len(lines)}\n" + "\n".join(lines) + "\n"
    return NcnnTrunk(param, bytes(weights), layers[0].name, outputs, shape)


def _split_extractor(extractor):
    """Cut a feature extractor at its `backbone` layer: (Keras model before, trunk, Keras model after)."""
    import keras

    try:
        trunk = extractor.get_layer(BACKBONE_LAYER)
    except ValueError as exc:
        raise NcnnUnsupported(f"{extractor.name} has no '{BACKBONE_LAYER}' layer") from exc
    if len(trunk._inbound_nodes) != 1:
        raise NcnnUnsupported(f"{extractor.name}: the backbone is called more than once")
    node = trunk._inbound_nodes[0]
    if len(node.input_tensors) != 1:
        raise NcnnUnsupported(f"{extractor.name}: the backbone takes several inputs")
    before = keras.Model(extractor.inputs, node.input_tensors[0], name="before_backbone")
    after = keras.Model(list(node.output_tensors), extractor.outputs, name="after_backbone")
    return before, trunk, after


def _usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _load_net(ncnn, threads: int, param_path: Path, weights_path: Path, name: str):
    """An ncnn.Net for the converted trunk on `threads` threads, all arithmetic in float32."""
    net = ncnn.Net()
    options = net.opt
    options.num_threads = int(threads)
    for option in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage",
                   "use_bf16_packed", "use_int8_inference", "use_int8_storage", "use_int8_packed",
                   "use_int8_arithmetic", "use_vulkan_compute"):
        if hasattr(options, option):
            setattr(options, option, False)
    # Load from files: ncnn reads them into its own buffers (loading from memory would keep pointers into a
    # Python object).
    if net.load_param(str(param_path)) != 0:
        raise NcnnUnsupported(f"ncnn rejected the converted network for {name}")
    if net.load_model(str(weights_path)) != 0:
        raise NcnnUnsupported(f"ncnn rejected the converted weights for {name}")
    return net


class ThreadChooser:
    """Pick the thread count that is fastest per image right now.

    Each count is timed first; then the fastest by a moving average of seconds per image is used, and every
    `explore_every` images one of the others is timed again, so a machine that gets busy (or quiet) in the
    middle of a pass is followed within a few dozen images.
    """

    def __init__(self, counts: list[int], explore_every: int = 24, smoothing: float = 0.3):
        self.counts = list(counts)
        self.seconds: dict[int, float | None] = {count: None for count in self.counts}
        self.explore_every = int(explore_every)
        self.smoothing = float(smoothing)
        self.calls = 0

    def pick(self) -> int:
        """The thread count for the next image."""
        self.calls += 1
        untried = [count for count in self.counts if self.seconds[count] is None]
        if untried:
            return untried[0]
        best = self.best()
        others = [count for count in self.counts if count != best]
        if others and self.calls % self.explore_every == 0:
            return others[(self.calls // self.explore_every) % len(others)]
        return best

    def best(self) -> int:
        """The count with the lowest average seconds per image so far (untried counts last)."""
        return min(self.counts, key=lambda count: (self.seconds[count] is None, self.seconds[count] or 0.0))

    def record(self, count: int, seconds: float) -> None:
        """Fold one image's time on the count in use into its moving average; a re-timed other count's old
        average is stale, so its new time replaces it."""
        previous = self.seconds[count]
        in_use = previous is not None and count == self.best()
        self.seconds[count] = (1 - self.smoothing) * previous + self.smoothing * seconds if in_use else seconds


class NcnnExtractor:
    """Callable like the Keras extractor on a batch of images (B, H, W, 3) 0..255 -> features (B, D).

    Preprocessing and pooling run in Keras (split from `extractor`); the trunk runs in ncnn, one image at a
    time on `threads` threads (default: every core this process may use, or one thread while that is
    faster because other processes keep the cores busy).
    """

    def __init__(self, extractor, threads: int | None = None):
        if not available():
            raise NcnnUnsupported("the ncnn package is not installed: pip install ncnn")
        import ncnn
        import tensorflow as tf

        self.before, trunk, self.after = _split_extractor(extractor)
        self.spec = convert_trunk(trunk)
        # One net per thread count: all the usable cores, and one thread. ncnn's OpenMP threads wait for each
        # other after every layer, so on a machine that other processes keep busy, two threads ran a 96-px
        # VGG16 pass 10x slower than one (640 ms against 60 ms per image); when the cores are free, all of
        # them are faster. The chooser keeps whichever is faster now (see ThreadChooser).
        counts = [int(threads)] if threads else sorted({_usable_cores(), 1}, reverse=True)
        with tempfile.TemporaryDirectory(prefix="genre-ncnn-") as folder:
            param_path, weights_path = Path(folder) / "trunk.param", Path(folder) / "trunk.bin"
            param_path.write_text(self.spec.param, encoding="utf-8")
            weights_path.write_bytes(self.spec.weights)
            self.nets = {count: _load_net(ncnn, count, param_path, weights_path, trunk.name) for count in counts}
        self.chooser = ThreadChooser(counts)
        self._ncnn = ncnn
        self._before = tf.function(lambda x: self.before(x, training=False), reduce_retracing=True)
        self._after = tf.function(lambda maps: self.after(maps, training=False), reduce_retracing=True)

    @property
    def net(self):
        """The net with the most threads (the one used when the machine is quiet)."""
        return self.nets[max(self.nets)]

    def trunk_maps(self, images: np.ndarray) -> list[np.ndarray]:
        """The trunk's output maps (B, h, w, c) per output, for already-preprocessed images (B, H, W, C)."""
        ncnn = self._ncnn
        per_output: list[list[np.ndarray]] = [[] for _ in self.spec.output_names]
        for image in images:
            # ncnn.Mat wraps the array's memory without copying: `chw` must stay alive until extraction ends.
            chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
            count = self.chooser.pick()
            started = time.perf_counter()
            extractor = self.nets[count].create_extractor()
            extractor.input(self.spec.input_name, ncnn.Mat(chw))
            for index, name in enumerate(self.spec.output_names):
                status, mat = extractor.extract(name)
                if status != 0:
                    raise RuntimeError(f"ncnn failed on layer {name} (status {status})")
                per_output[index].append(np.array(mat).transpose(1, 2, 0))
            self.chooser.record(count, time.perf_counter() - started)
        return [np.stack(maps) for maps in per_output]

    def __call__(self, images) -> np.ndarray:
        prepared = np.asarray(self._before(np.asarray(images, dtype=np.float32)), dtype=np.float32)
        maps = self.trunk_maps(prepared)
        out = self._after(maps if len(maps) > 1 else maps[0])
        return np.asarray(out, dtype=np.float32)
