"""The frozen-backbone feature pass: Keras against ncnn (genre_core.models.ncnn_engine), HED-VGG16 at 224 px.

This pass is nearly all of a frozen-feature run's time (21 of 22 minutes for the 5,354 ArtGAN paintings
with Keras on 2 CPU cores), so its speed decides which image size fits a time budget.

Rows (the same 32 images, the same extractor object, best of 2 passes each after a warm-up batch):
- Keras `extractor(batch)` (TensorFlow's direct convolutions) against the ncnn engine (Winograd
  convolutions; Keras still runs the preprocessing and the pooling);
- Keras compiled with XLA (`--xla`, the previous fastest path) against the ncnn engine.
Target >= 1.5x for both: what lets 224 px fit the 15-minute budget on 2 cores (at most 14 minutes for the
5,354 ArtGAN paintings is 0.157 s per image; Keras takes 0.236 s). ncnn's time varies more than Keras's from
run to run on a shared 2-core machine (100-132 ms per image seen here), so the ratio does too.
The note gives the largest feature difference relative to that feature's spread over the 32 images.
"""

from __future__ import annotations

import os

import numpy as np

from bench import best_of, make_row

SIZE, COUNT, BATCH = 224, 32, 32


def _paintings(count: int, size: int) -> np.ndarray:
    """Smooth colour fields with strokes of noise: picture-like input (speed does not depend on content)."""
    rng = np.random.default_rng(0)
    grid = np.linspace(0.0, 1.0, size, dtype=np.float32)
    images = []
    for _ in range(count):
        base = rng.uniform(0, 255, 3).astype(np.float32)
        slope = rng.uniform(-120, 120, (2, 3)).astype(np.float32)
        image = base + grid[:, None, None] * slope[0] + grid[None, :, None] * slope[1]
        image = image + rng.normal(0, 25, (size, size, 3)).astype(np.float32)
        images.append(np.clip(image, 0, 255))
    return np.stack(images)


def run() -> list[dict]:
    """The feature-pass rows."""
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from genre_core.models import ncnn_engine, zoo

    images = _paintings(COUNT, SIZE)
    extractor = zoo.build_feature_extractor("hed_vgg16", SIZE, "hed")

    def keras_pass(function):
        return np.concatenate([np.asarray(function(images[start:start + BATCH]))
                               for start in range(0, COUNT, BATCH)])

    plain = tf.function(lambda batch: extractor(batch, training=False), reduce_retracing=True)
    xla = tf.function(lambda batch: extractor(batch, training=False), jit_compile=True, reduce_retracing=True)
    fast = ncnn_engine.NcnnExtractor(extractor)
    for function in (plain, xla, fast):
        function(images[:BATCH])  # warm-up: tracing, compilation, ncnn's Winograd weight transforms
    expected = keras_pass(plain)
    scale = np.maximum(expected.std(axis=0), np.abs(expected).mean(axis=0)) + 1e-6
    difference = float((np.abs(keras_pass(fast) - expected) / scale).max())

    keras_s = best_of(lambda: keras_pass(plain), repeats=2)
    xla_s = best_of(lambda: keras_pass(xla), repeats=2)
    ncnn_s = best_of(lambda: keras_pass(fast), repeats=2)
    note = (f"{COUNT} images at {SIZE} px; per image: Keras {keras_s / COUNT * 1000:.0f} ms, XLA "
            f"{xla_s / COUNT * 1000:.0f} ms, ncnn {ncnn_s / COUNT * 1000:.0f} ms; largest feature difference "
            f"{difference:.1e} of the feature's spread; ncnn {ncnn_engine.version()}, {fast.net.opt.num_threads} threads")
    return [
        make_row("HED-VGG16 feature pass: Keras vs ncnn", keras_s, ncnn_s, ">=1.5x", note),
        make_row("HED-VGG16 feature pass: Keras + XLA vs ncnn", xla_s, ncnn_s, ">=1.5x", note),
    ]


if __name__ == "__main__":
    for result in run():
        print(result)
