"""TensorBoard event files for runs: `RUN/tensorboard/` (see it with `tensorboard --logdir artifacts`).

Classifier runs log loss, val_loss, accuracy, val_accuracy, learning rate and seconds per epoch; GAN runs
log their losses, KID (with its spread), the augmentation probability, seconds per epoch and the epoch's
sample grid; search trials log the classifier scalars under `SEARCH/tensorboard/trial-NNNN/`.

Events are written with TensorFlow's own summary writer (`tf.summary.create_file_writer` and
`tf.summary.experimental.write_raw_pb` of `Summary` protos with scalar `simple_value`s and PNG images), so
writing needs no `tensorboard` package; only viewing does (`pip install tensorboard`, an optional extra). Only the chief of a multi-worker run writes.
Logging never breaks a run: a failure is reported once on stderr and logging stops for that folder.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from genre_core.util import cluster

FOLDER = "tensorboard"
# history.csv column -> TensorBoard tag.
CLASSIFIER_TAGS = {"loss": "loss", "val_loss": "val_loss", "accuracy": "accuracy",
                   "val_accuracy": "val_accuracy", "lr": "learning_rate", "seconds": "seconds_per_epoch"}
GAN_TAGS = {"d_loss": "d_loss", "g_loss": "g_loss", "kid": "kid", "kid_std": "kid_std", "aug_p": "aug_p",
            "apa_p": "apa_p", "real_accuracy": "real_accuracy", "seconds": "seconds_per_epoch"}

_writers: dict[str, object] = {}
_broken: set[str] = set()


def classifier_scalars(row: dict) -> dict:
    """The TensorBoard scalars of one classifier history row."""
    return {tag: row.get(column) for column, tag in CLASSIFIER_TAGS.items()}


def log_epoch(run, row: dict) -> None:
    """Log one classifier epoch (a history.csv row) into RUN/tensorboard/ (chief only)."""
    if not _is_chief():
        return
    log_scalars(Path(run.path) / FOLDER, int(row["epoch"]), classifier_scalars(row))


def log_gan_epoch(run, row: dict, grid_png: str | Path | None = None) -> None:
    """Log one GAN epoch: losses, KID, augmentation probability, seconds, and the sample grid PNG."""
    folder = Path(run.path) / FOLDER
    step = int(row["epoch"])
    log_scalars(folder, step, {tag: row.get(column) for column, tag in GAN_TAGS.items()})
    if grid_png is not None and Path(grid_png).exists():
        log_png(folder, step, "samples", Path(grid_png).read_bytes())


def log_scalars(folder: str | Path, step: int, values: dict) -> None:
    """Write finite numbers of `values` as scalars at `step` (None and NaN are skipped)."""
    def summary(summary_pb2):
        proto = summary_pb2.Summary()
        for tag, value in values.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(number):
                proto.value.add(tag=tag, simple_value=number)
        return proto

    _write(folder, step, summary)


def log_png(folder: str | Path, step: int, tag: str, png: bytes) -> None:
    """Write an encoded PNG as an image summary at `step`."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        width, height = image.size

    def summary(summary_pb2):
        proto = summary_pb2.Summary()
        proto.value.add(tag=tag, image=summary_pb2.Summary.Image(height=height, width=width, colorspace=3,
                                                                 encoded_image_string=png))
        return proto

    _write(folder, step, summary)


def close(folder: str | Path | None = None) -> None:
    """Flush and close the writer of `folder` (all writers when None)."""
    keys = list(_writers) if folder is None else [str(Path(folder))]
    for key in keys:
        writer = _writers.pop(key, None)
        if writer is not None:
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - closing a log must never fail a run
                pass


def _write(folder: str | Path, step: int, summary) -> None:
    """Write the Summary proto `summary(summary_pb2)` at `step` into the folder's event file; never raises."""
    key = str(Path(folder))
    if key in _broken:
        return
    try:
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        proto = summary(summary_pb2)
        if not proto.value:
            return
        writer = _writers.get(key)
        if writer is None:
            Path(folder).mkdir(parents=True, exist_ok=True)
            writer = tf.summary.create_file_writer(key)
            _writers[key] = writer
        with writer.as_default():
            tf.summary.experimental.write_raw_pb(proto.SerializeToString(), step=step)
        writer.flush()
    except Exception as exc:  # noqa: BLE001 - a TensorBoard log is never worth a failed run
        _broken.add(key)
        print(f"warning: TensorBoard logging to {key} stopped: {exc}", file=sys.stderr, flush=True)


def _is_chief() -> bool:
    try:
        return cluster.is_chief()
    except ValueError:  # a malformed TF_CONFIG fails the run elsewhere, with its own message
        return True


def read_scalars(folder: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Read back the scalars of every event file under `folder` (tag -> [(step, value)]); for tests and tools."""
    import tensorflow as tf

    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(folder).rglob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.WhichOneof("value") == "simple_value":
                    found.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
    return found
