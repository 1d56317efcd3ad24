"""Training benchmarks, all through the one training loop (`genre_core.training.loop.fit`), on synthetic images.

Rows:
- head epoch from the embedding cache against a full frozen-backbone forward pass every epoch (hed_vgg16 at
  64 px, 128 images, head only trained in both): what caching frozen features buys (target >= 50x);
- a training epoch of small_cnn (64 px, 512 images, batch 32) streamed from the on-disk image cache
  (`cache.make_tf_dataset`, memmap gather) against the same model fed from in-memory tensors (<= 1.1x);
- peak memory (ru_maxrss of a `python -m genre_core train` subprocess) training one epoch on N = 600 against
  4N = 2,400 cached 64-px images (<= 1.15x). The images are memory-mapped, so the pages an epoch touches
  count in RSS too; at this size they are small next to TensorFlow's own footprint, which the note says.
Timings are wall-clock on a possibly shared machine; ratios are what matter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench import make_row, temporary_artifacts

PROJECT = Path(__file__).resolve().parents[1]
GENRES = ("abstract", "landscape", "portrait", "still_life")


def _write_folder_dataset(root: Path, count: int, size: int = 64) -> Path:
    """Write `count` synthetic PNG paintings in a folder per genre and return the folder."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for index in range(count):
        genre = GENRES[index % len(GENRES)]
        folder = root / genre
        folder.mkdir(parents=True, exist_ok=True)
        base = np.zeros((size, size, 3), np.float32) + 40 * GENRES.index(genre)
        image = base + rng.normal(0, 30, (size, size, 3))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{genre}_{index:05d}.png")
    return root


def _time_epochs(model, make_dataset, steps: int, config, repeats: int = 3) -> float:
    """Fastest of `repeats` epochs of one loop.fit call, after a first warm-up epoch (tracing)."""
    import keras
    import tensorflow as tf

    from genre_core.training import loop

    strategy = tf.distribute.get_strategy()
    optimizer = keras.optimizers.Adam(1e-3)
    result = loop.fit(model, optimizer, make_dataset, steps, config.replace(epochs=1 + repeats), 4, strategy)
    return min(row["seconds"] for row in result.state.history[1:])


def bench_embedding_cache() -> dict:
    """A head epoch on cached features against a frozen backbone forward pass in every epoch."""
    import tensorflow as tf

    from genre_core.models import zoo
    from genre_core.training.config import TrainConfig

    size, count, batch = 64, 128, 32
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (count, size, size, 3)).astype(np.float32)
    labels = (np.arange(count) % 4).astype(np.int32)
    config = TrainConfig(model="hed_vgg16", size=size, batch_size=batch, head_units=0)
    steps = count // batch

    full = zoo.build_model("hed_vgg16", 4, size, weights="default", head_units=0)

    def image_stream(epoch, context):
        return tf.data.Dataset.from_tensor_slices((images, labels)).repeat().batch(batch, drop_remainder=True)

    baseline = _time_epochs(full, image_stream, steps, config, repeats=2)

    extractor = full.get_layer("features")
    started = time.perf_counter()
    features = extractor.predict(images, batch_size=batch, verbose=0)
    extraction = time.perf_counter() - started
    head = zoo.build_head(features.shape[1], 4)

    def feature_stream(epoch, context):
        return tf.data.Dataset.from_tensor_slices((features, labels)).repeat().batch(batch, drop_remainder=True)

    candidate = _time_epochs(head, feature_stream, steps, config)
    return make_row("head epoch: cached features vs backbone forward", baseline, candidate, ">=50x",
                    f"hed_vgg16 64 px, {count} images; features computed once in {extraction:.2f} s")


def bench_cache_pipeline(root: Path) -> dict:
    """small_cnn epoch from the on-disk image cache against in-memory tensors."""
    import tensorflow as tf

    from genre_core.data import cache as image_cache, sources
    from genre_core.models import zoo
    from genre_core.training.config import TrainConfig

    size, count, batch = 64, 512, 32
    dataset = sources.load_dataset(_write_folder_dataset(root / "pipeline", count, size))
    cache = image_cache.prepare_cache(dataset, size, workers=1)
    rows = cache.ok_indices()
    images, labels = image_cache.load_arrays(cache, rows)
    config = TrainConfig(model="small_cnn", size=size, batch_size=batch)
    steps = count // batch
    model = zoo.build_model("small_cnn", 4, size)

    def in_memory(epoch, context):
        stream = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(count, seed=epoch).repeat()
        return stream.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    def on_disk(epoch, context):
        return image_cache.make_tf_dataset(cache, rows, batch, shuffle=True, seed=epoch, repeat=True,
                                           drop_remainder=True)

    baseline = _time_epochs(model, in_memory, steps, config)
    candidate = _time_epochs(model, on_disk, steps, config)
    return make_row("train epoch: on-disk cache vs in-memory", baseline, candidate, "<=1.1x",
                    f"small_cnn 64 px, {count} images, batch {batch}, best of 3 epochs")


def _peak_rss_mb(arguments: list[str], env: dict) -> float:
    """Peak resident memory (MB) of a `python -m genre_core ...` subprocess, via a wrapper process."""
    wrapper = ("import resource, subprocess, sys; "
               "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode; "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)")
    completed = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "genre_core"] + arguments,
                               cwd=PROJECT, env=env, capture_output=True, text=True, check=True)
    kilobytes, code = completed.stdout.split()
    if code != "0":
        raise RuntimeError(f"genre_core {' '.join(arguments)} exited with {code}")
    return int(kilobytes) / 1024.0


def bench_memory(root: Path) -> dict:
    """Peak RSS training one epoch on N against 4N cached images."""
    from genre_core.data import cache as image_cache, sources

    size, count = 64, 2400
    folder = _write_folder_dataset(root / "memory", count, size)
    image_cache.prepare_cache(sources.load_dataset(folder), size)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(PROJECT))
    common = ["train", "--data", str(folder), "--model", "small_cnn", "--size", str(size), "--epochs", "1",
              "--batch-size", "64", "--val-fraction", "0.05", "--test-fraction", "0.05"]
    started = time.perf_counter()
    small = _peak_rss_mb(common + ["--data-fraction", "0.25"], env)
    large = _peak_rss_mb(common, env)
    row = make_row("peak RSS: train on 4N vs N images", small, large, "<=1.15x",
                   f"small_cnn 64 px, N={count // 4}: {small:.0f} MB, 4N={count}: {large:.0f} MB "
                   f"(images {count * size * size * 3 / 2**20:.0f} MB on disk; measured in "
                   f"{time.perf_counter() - started:.0f} s)")
    # The MB values are not seconds; keep them in the note and the ratio only.
    row["baseline_s"], row["candidate_s"] = float("nan"), float("nan")
    return row


def run() -> list[dict]:
    """All training benchmark rows."""
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    rows = []
    with temporary_artifacts("bench_train_") as root:
        rows.append(bench_embedding_cache())
        rows.append(bench_cache_pipeline(root))
        rows.append(bench_memory(root))
    return rows


if __name__ == "__main__":
    for result in run():
        print(result)
