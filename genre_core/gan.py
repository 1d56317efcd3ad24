"""GAN runs: train a DCGAN on one genre (or a conditional one on several), sample it, measure it.

A GAN run is a folder under `artifacts/gan_runs/<id>/` (see docs/architecture.md, "Run folders"):

| file | content |
| --- | --- |
| `config.json` | the `GanConfig` plus `kind: "gan"` and `data` |
| `classes.json` | the genres, label order (one genre for an unconditional run) |
| `samples/epoch_0001.png` | a grid from a fixed latent batch after every epoch |
| `generator.keras` | the EMA generator (loads with `safe_mode=True`) |
| `history.csv` | `epoch, d_loss, g_loss, kid, kid_std, aug_p, seconds, cpu_seconds, real_accuracy, feature_space` |
| `quality.json` | per-epoch quality records, each naming its feature space, and the latest one |
| `checkpoint/` | `state.npz` (G, D, EMA weights, both optimizers, seed and augmentation state) + `state.json` |

`execute(run)` is the executor that `python -m genre_core job RUN_DIR` calls for kind "gan"; it resumes from
`checkpoint/` when one exists and stops cleanly (raising `runs.Cancelled`) when a cancel is requested.
The app uses `start_gan_run`, `load_generator`, `sample`, `interpolate` and `grid`.
"""

from __future__ import annotations

import dataclasses
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genre_core import fileio, gan_models, runs, tensorboard_log

GENERATOR_FILE = "generator.keras"
QUALITY_FILE = "quality.json"
SAMPLES_DIR = "samples"
CHECKPOINT_STATE = "state.npz"
CHECKPOINT_INFO = "state.json"
RESIZE_POLICIES = ("crop", "squash", "letterbox")


@dataclass
class GanConfig:
    """Every option of one GAN run; saved as the run's config.json so the run can be rebuilt from it."""

    data: str = "demo"
    genre: str | None = "landscape"  # unconditional: the genre to learn
    conditional: bool = False
    genres: list[str] = field(default_factory=list)  # conditional: the genres to learn (empty: all)
    image_size: int = 64
    policy: str = "crop"
    epochs: int = 20
    batch_size: int = 32
    min_steps_per_epoch: int = 50  # small genres repeat their images so that an epoch has at least this many steps
    max_images: int = 0  # 0: every image of the genre(s)
    latent_dim: int = 128
    base_channels: int = 32
    learning_rate: float = 2e-4
    beta_1: float = 0.5
    ema_decay: float = 0.995
    augment_probability: float = 0.0  # the starting DiffAugment probability
    adaptive_augment: bool = True  # raise/lower it ADA-style from D's accuracy on real images
    augment_target: float = 0.6
    augment_speed: float = 0.005
    horizontal_flip: bool = True
    feature_space: str = "auto"  # auto | inception_v3 | hed_vgg16 (see quality.py)
    kid_image_size: int = 96
    kid_samples: int = 256  # generated and real images per KID measurement; 0 switches KID off
    kid_every: int = 1
    grid_images: int = 36
    time_budget_minutes: float = 0.0  # 0: no limit; else stop after the epoch that passes it
    seed: int = 0

    def validate(self) -> "GanConfig":
        """Raise ValueError naming the first bad option; return self."""
        gan_models.check_size(self.image_size)
        if self.policy not in RESIZE_POLICIES:
            raise ValueError(f"policy {self.policy!r} is not one of {RESIZE_POLICIES}")
        if not self.conditional and not self.genre:
            raise ValueError("an unconditional GAN needs a genre (or pass conditional=True)")
        for name in ("epochs", "batch_size", "latent_dim", "base_channels", "min_steps_per_epoch", "kid_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.augment_probability <= 1.0:
            raise ValueError(f"augment_probability must be in 0..1, got {self.augment_probability}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in 0..1 (exclusive of 1), got {self.ema_decay}")
        if self.kid_samples < 0 or self.kid_samples == 1:
            raise ValueError(f"kid_samples must be 0 (off) or at least 2, got {self.kid_samples}")
        return self

    @classmethod
    def from_dict(cls, values: dict) -> "GanConfig":
        """Build a config from a config.json dict, ignoring the keys runs add (kind, created, ...)."""
        names = {item.name for item in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})

    def to_dict(self) -> dict:
        """The config as a plain dict."""
        return dataclasses.asdict(self)


@dataclass
class _ModelShape:
    """What `gan_models.make_gan` needs: the config plus the number of genres."""

    config: GanConfig
    num_classes: int

    def __getattr__(self, name):
        return getattr(self.config, name)


# ----------------------------------------------------------------------------------------------------------
# Data.


def load_training_images(config: GanConfig, progress=None):
    """Return (train uint8 (N,S,S,3), train labels int32, reference uint8 images, classes) for a config.

    Images come from the preprocessed cache at the GAN size. The reference set for KID is the genre's
    held-out split (val/test) when it has at least 50 images, else a subset of the training images."""
    from genre_core import cache as cache_module
    from genre_core import sources

    dataset = sources.load_dataset(config.data)
    if config.conditional:
        classes = list(config.genres) or list(dataset.classes)
    else:
        classes = [config.genre]
    unknown = [name for name in classes if name not in dataset.classes]
    if unknown:
        raise ValueError(f"genre {unknown[0]!r} is not in {config.data}; its genres are: {', '.join(dataset.classes)}")
    cache = cache_module.prepare_cache(dataset, (config.image_size, config.image_size), config.policy,
                                       progress=progress)
    train_parts, held_out_parts = [], []
    for name in classes:
        indices = cache.ok_indices(genre=name)
        if len(indices) == 0:
            raise ValueError(f"genre {name!r} has no readable images in {config.data}")
        splits = cache.manifest["split"].to_numpy()[indices]
        held_out = indices[np.isin(splits, ("val", "test"))]
        train = indices[~np.isin(splits, ("val", "test"))]
        if len(held_out) < 50 or len(train) < 50:
            train, held_out = indices, np.array([], dtype=int)
        train_parts.append(train)
        held_out_parts.append(held_out)
    train_indices = np.concatenate(train_parts)
    held_out_indices = np.concatenate(held_out_parts)
    rng = np.random.default_rng(config.seed)
    if config.max_images and len(train_indices) > config.max_images:
        train_indices = np.sort(rng.choice(train_indices, config.max_images, replace=False))
    images, cache_labels = cache_module.load_arrays(cache, train_indices)
    label_of = {cache.classes.index(name): position for position, name in enumerate(classes)}
    labels = np.array([label_of[int(label)] for label in cache_labels], dtype=np.int32)
    if len(held_out_indices):
        reference, _ = cache_module.load_arrays(cache, held_out_indices)
    else:
        reference = images
    return images, labels, reference, classes


def make_training_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, horizontal_flip: bool, seed: int):
    """An endless shuffled tf.data pipeline of (float images in [-1, 1], int32 labels) batches."""
    import tensorflow as tf

    if len(images) < batch_size:
        repeats = int(np.ceil(batch_size / len(images)))
        images, labels = np.concatenate([images] * repeats), np.concatenate([labels] * repeats)

    def to_float(image, label):
        image = tf.cast(image, tf.float32) / 127.5 - 1.0
        if horizontal_flip:
            image = tf.image.random_flip_left_right(image, seed=seed)
        return image, label

    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).repeat()
    dataset = dataset.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------------------------------------
# Images.


def to_uint8(images) -> np.ndarray:
    """Generator output in [-1, 1] -> uint8 0..255."""
    return np.clip((np.asarray(images, dtype=np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def grid(images, columns: int = 8, gap: int = 2) -> np.ndarray:
    """Tile uint8 images (N, H, W, 3) into one uint8 image with `columns` per row and a white gap."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"grid needs images of shape (N, H, W, 3) with N >= 1, got {images.shape}")
    if int(columns) < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    count, height, width, _ = images.shape
    columns = min(int(columns), count)
    rows = int(np.ceil(count / columns))
    canvas = np.full((rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap, 3), 255, np.uint8)
    for index, image in enumerate(images.astype(np.uint8)):
        row, column = divmod(index, columns)
        top, left = row * (height + gap), column * (width + gap)
        canvas[top:top + height, left:left + width] = image
    return canvas


def write_png(image: np.ndarray, path) -> Path:
    """Write a uint8 RGB image as PNG atomically and return the path."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8), "RGB").save(buffer, format="PNG")
    return fileio.atomic_write_bytes(path, buffer.getvalue())


def latent_vectors(seed: int, count: int, latent_dim: int) -> np.ndarray:
    """The latent batch for a seed: the same seed always gives the same vectors (NumPy, backend-free)."""
    return np.random.default_rng(int(seed)).standard_normal((int(count), int(latent_dim))).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Checkpoints.


def save_checkpoint(gan, run: runs.Run, epoch: int, extra: dict | None = None) -> None:
    """Save the whole training state (networks, EMA, optimizers, seeds, aug_p) for resume after `epoch`."""
    buffer = io.BytesIO()
    variables = gan.state_variables()
    np.savez(buffer, **{f"v{index:04d}": np.asarray(variable.numpy()) for index, variable in enumerate(variables)})
    folder = run.checkpoint_dir
    fileio.atomic_write_bytes(folder / CHECKPOINT_STATE, buffer.getvalue())
    # state.json is written last: it is what says the checkpoint is complete.
    fileio.atomic_write_json(folder / CHECKPOINT_INFO, {"epoch": int(epoch), "variables": len(variables),
                                                         **(extra or {})})


def load_checkpoint(gan, run: runs.Run) -> dict | None:
    """Restore the training state from the run's checkpoint; return its info (None if there is none)."""
    folder = run.path / runs.CHECKPOINT_DIR
    info = fileio.read_json(folder / CHECKPOINT_INFO, default=None)
    if not info:
        return None
    variables = gan.state_variables()
    if info.get("variables") != len(variables):
        raise ValueError(f"run {run.id}: checkpoint holds {info.get('variables')} variables but the model has "
                         f"{len(variables)}; was the config changed?")
    with np.load(folder / CHECKPOINT_STATE) as stored:
        for index, variable in enumerate(variables):
            value = stored[f"v{index:04d}"]
            if tuple(value.shape) != tuple(variable.shape):
                raise ValueError(f"run {run.id}: checkpoint variable {variable.path} has shape {value.shape}, "
                                 f"expected {tuple(variable.shape)}")
            variable.assign(value)
    return info


def save_generator(gan, run: runs.Run) -> Path:
    """Save the EMA generator as generator.keras (written to a temporary file, then renamed)."""
    path = run.path / GENERATOR_FILE
    temporary = run.path / f".{GENERATOR_FILE}.{os.getpid()}.keras"
    gan.ema_generator.save(temporary)
    os.replace(temporary, path)
    return path


# ----------------------------------------------------------------------------------------------------------
# Training.


def _generate(generator, noise: np.ndarray, labels: np.ndarray | None, batch_size: int = 64) -> np.ndarray:
    """Run a generator in inference mode in batches -> uint8 images."""
    outputs = []
    for start in range(0, len(noise), batch_size):
        inputs = noise[start:start + batch_size]
        if labels is not None:
            inputs = [inputs, labels[start:start + batch_size].astype(np.int32)]
        outputs.append(to_uint8(generator(inputs, training=False)))
    return np.concatenate(outputs)


def _epoch_callback_class():
    """Define the Keras callback that writes samples, quality, history and checkpoints (Keras imported here)."""
    import keras

    class GanRunCallback(keras.callbacks.Callback):
        """Per batch: progress and cancel. Per epoch: EMA recalibration, grid, KID, history, checkpoint."""

        def __init__(self, run, config, classes, steps_per_epoch, progress, real_features, extractor, start_time,
                     previous_seconds):
            super().__init__()
            self.run = run
            self.config = config
            self.classes = classes
            self.steps_per_epoch = steps_per_epoch
            self.progress = progress
            self.real_features = real_features
            self.extractor = extractor
            self.cancelled = False
            self.start_time = start_time
            self.previous_seconds = previous_seconds
            self.epoch_start = time.monotonic()
            self.epoch_cpu_start = time.process_time()
            conditional = config.conditional
            self.grid_noise = latent_vectors(config.seed + 1, config.grid_images, config.latent_dim)
            self.grid_labels = (np.arange(config.grid_images) % len(classes)).astype(np.int32) if conditional else None
            self.kid_noise = latent_vectors(config.seed + 2, config.kid_samples, config.latent_dim)
            self.kid_labels = (np.arange(config.kid_samples) % len(classes)).astype(np.int32) if conditional else None

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_start = time.monotonic()
            self.epoch_cpu_start = time.process_time()

        def on_train_batch_end(self, batch, logs=None):
            self.progress({"stage": "batch", "done": batch + 1, "total": self.steps_per_epoch})
            if self.run.cancel_requested():
                self.cancelled = True
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            if self.cancelled:
                return
            logs = logs or {}
            gan = self.model
            config = self.config
            number = epoch + 1
            gan.recalibrate_ema(seed=config.seed + 3)
            samples = _generate(gan.ema_generator, self.grid_noise, self.grid_labels)
            columns = int(np.ceil(np.sqrt(len(samples))))
            if config.conditional:
                columns = len(self.classes) * max(1, columns // len(self.classes))
            write_png(grid(samples, columns), self.run.path / SAMPLES_DIR / f"epoch_{number:04d}.png")
            measured = {"kid": None, "kid_std": None, "feature_space": None}
            if self.real_features is not None and (number % config.kid_every == 0 or number == config.epochs):
                measured = measure(gan.ema_generator, self.kid_noise, self.kid_labels, self.real_features,
                                   self.extractor, seed=config.seed)
                _append_quality(self.run, number, measured)
            seconds = time.monotonic() - self.epoch_start
            row = {
                "epoch": number,
                "d_loss": float(logs.get("d_loss", np.nan)),
                "g_loss": float(logs.get("g_loss", np.nan)),
                "kid": measured["kid"],
                "kid_std": measured["kid_std"],
                "aug_p": float(logs.get("aug_p", np.nan)),
                "seconds": round(seconds, 2),
                "cpu_seconds": round(time.process_time() - self.epoch_cpu_start, 2),
                "real_accuracy": float(logs.get("real_accuracy", np.nan)),
                "feature_space": measured["feature_space"],
            }
            self.run.append_history(row)
            tensorboard_log.log_gan_epoch(self.run, row, self.run.path / SAMPLES_DIR / f"epoch_{number:04d}.png")
            save_generator(gan, self.run)
            elapsed = self.previous_seconds + time.monotonic() - self.start_time
            save_checkpoint(gan, self.run, number, {"elapsed_seconds": round(elapsed, 2)})
            kid_text = f"{measured['kid']:.4g} ± {measured['kid_std']:.2g}" if measured["kid"] is not None else "-"
            print(f"epoch {number}/{config.epochs}: d_loss {row['d_loss']:.3f} g_loss {row['g_loss']:.3f} "
                  f"aug_p {row['aug_p']:.2f} KID {kid_text} ({seconds:.0f} s)", flush=True)
            self.progress({"stage": "epoch", "done": number, "total": config.epochs,
                           "message": f"epoch {number}/{config.epochs}, KID {kid_text}"})
            budget = config.time_budget_minutes * 60.0
            if budget and elapsed >= budget and number < config.epochs:
                print(f"time budget of {config.time_budget_minutes} min reached after epoch {number}", flush=True)
                gan.stop_training = True

    return GanRunCallback


def measure(generator, noise, labels, real_features, extractor, seed: int = 0) -> dict:
    """KID of the generator's images for a fixed latent batch against precomputed real features."""
    from genre_core import quality

    generated = _generate(generator, noise, labels)
    features = extractor(generated)
    # Subsets of half the smaller set, so that the spread over subsets says how stable the number is.
    subset_size = max(2, min(len(features), len(real_features), 2000) // 2)
    return quality.compare(features, real_features, extractor.name, subsets=50, subset_size=subset_size, seed=seed)


def _append_quality(run: runs.Run, epoch: int, measured: dict) -> None:
    """Add one per-epoch record to quality.json (each record names its feature space)."""
    record = fileio.read_json(run.path / QUALITY_FILE, default={}) or {}
    history = [item for item in record.get("history", []) if item.get("epoch", 0) < epoch]
    history.append({"epoch": epoch, **measured})
    fileio.atomic_write_json(run.path / QUALITY_FILE, {"latest": history[-1], "history": history})


def execute(run, progress=None) -> None:
    """Train (or resume) the GAN described by the run folder's config.json; the job runner calls this."""
    import keras

    run = runs.open_run(run, kind="gan")
    config = GanConfig.from_dict(run.config()).validate()
    writer = runs.ProgressWriter(run)
    progress = progress or writer
    keras.utils.set_random_seed(config.seed)
    progress({"stage": "prepare", "done": 0, "total": 1, "message": "loading images"})
    images, labels, reference, classes = load_training_images(config, progress=progress)
    run.write_classes(classes)
    gan = gan_models.make_gan(_ModelShape(config, len(classes)))
    info = load_checkpoint(gan, run)
    initial_epoch = int(info["epoch"]) if info else 0
    previous_seconds = float(info.get("elapsed_seconds", 0.0)) if info else 0.0
    run.truncate_history(initial_epoch)
    if initial_epoch:
        print(f"resuming after epoch {initial_epoch}", flush=True)
    if initial_epoch >= config.epochs:
        return
    real_features, extractor = None, None
    if config.kid_samples:
        from genre_core import quality

        progress({"stage": "prepare", "done": 0, "total": 1, "message": "computing real-image features for KID"})
        extractor = quality.feature_extractor(config.feature_space, config.kid_image_size)
        rng = np.random.default_rng(config.seed)
        chosen = rng.choice(len(reference), min(config.kid_samples, len(reference)), replace=False)
        real_features = extractor(np.asarray(reference[np.sort(chosen)]))
    steps_per_epoch = max(len(images) // config.batch_size, config.min_steps_per_epoch)
    print(f"training on {len(images)} images of {', '.join(classes)} at {config.image_size} px, "
          f"{steps_per_epoch} steps per epoch", flush=True)
    dataset = make_training_dataset(images, labels, config.batch_size, config.horizontal_flip,
                                    config.seed + initial_epoch)
    callback = _epoch_callback_class()(run, config, classes, steps_per_epoch, progress, real_features, extractor,
                                       time.monotonic(), previous_seconds)
    progress({"stage": "epoch", "done": initial_epoch, "total": config.epochs})
    try:
        gan.fit(dataset, epochs=config.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
                callbacks=[callback], verbose=0)
    finally:
        if hasattr(progress, "flush"):
            progress.flush()
    if callback.cancelled:
        raise runs.Cancelled(f"run {run.id} was cancelled")


def start_gan_run(config: GanConfig | dict, background: bool = True) -> runs.Run:
    """Create a GAN run folder for `config` and train it in a background job (or in this process)."""
    from genre_core import jobs

    if isinstance(config, dict):
        config = GanConfig.from_dict(config)
    config.validate()
    classes = [config.genre] if not config.conditional else (list(config.genres) or None)
    run = runs.create_run("gan", config.to_dict(), classes=classes)
    if background:
        jobs.launch(run)
    else:
        jobs.run_job(run)
    return run


# ----------------------------------------------------------------------------------------------------------
# Sampling.

_GENERATORS: dict[tuple[str, float], object] = {}


def load_generator(run):
    """Load the run's EMA generator (safe_mode=True), cached per file version."""
    import keras

    run = runs.open_run(run, kind="gan")
    path = run.path / GENERATOR_FILE
    if not path.exists():
        raise FileNotFoundError(f"run {run.id} has no {GENERATOR_FILE} yet (no epoch finished)")
    key = (str(path), path.stat().st_mtime)
    if key not in _GENERATORS:
        # Keep only the newest version of each run's generator in memory.
        for old in [old for old in _GENERATORS if old[0] == key[0]]:
            del _GENERATORS[old]
        _GENERATORS[key] = keras.saving.load_model(path, safe_mode=True, compile=False)
    return _GENERATORS[key]


def _labels_for(run, count: int, genre: str | None) -> np.ndarray | None:
    """Label input for a run: None when unconditional; else the genre's label, or all genres in turn."""
    config = GanConfig.from_dict(run.config())
    classes = run.classes()
    if not config.conditional:
        if genre is not None and genre != config.genre:
            raise ValueError(f"run {run.id} learned only genre {config.genre!r}, not {genre!r}")
        return None
    if genre is None:
        return (np.arange(count) % len(classes)).astype(np.int32)
    if genre not in classes:
        raise ValueError(f"genre {genre!r} is not one of run {run.id}'s genres: {', '.join(classes)}")
    return np.full(count, classes.index(genre), dtype=np.int32)


def sample(run, n: int = 16, seed: int = 0, genre: str | None = None) -> np.ndarray:
    """Generate `n` images (uint8 (n, H, W, 3)); the same run, seed and genre give the same images."""
    if int(n) < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    run = runs.open_run(run, kind="gan")
    generator = load_generator(run)
    config = GanConfig.from_dict(run.config())
    return _generate(generator, latent_vectors(seed, n, config.latent_dim), _labels_for(run, int(n), genre))


def interpolate(run, seed_a: int, seed_b: int, steps: int = 8, genre: str | None = None) -> np.ndarray:
    """Images along the spherical path between the latent vectors of two seeds (uint8 (steps, H, W, 3))."""
    if int(steps) < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    run = runs.open_run(run, kind="gan")
    config = GanConfig.from_dict(run.config())
    start = latent_vectors(seed_a, 1, config.latent_dim)[0]
    end = latent_vectors(seed_b, 1, config.latent_dim)[0]
    noise = gan_models.slerp(start, end, np.linspace(0.0, 1.0, int(steps))).astype(np.float32)
    labels = _labels_for(run, int(steps), genre)
    if labels is not None and genre is None:
        labels = np.zeros(int(steps), dtype=np.int32)
    return _generate(load_generator(run), noise, labels)
