"""Embedding cache: features of a frozen backbone, computed once per (dataset, backbone, size, policy).

A frozen backbone gives the same features every epoch, so running it every epoch wastes nearly all of the
training time. Features are computed once from the preprocessed image cache and stored in
`artifacts/cache/embeddings/<image cache key>-<extractor id>/`:

- `features.npy`: float32 memmap (N, D) in image-cache row order (rows that failed to decode stay zero);
- `features_flip.npy`: the same for horizontally flipped images, when asked for (`flip=True`);
- `embeddings.json`: the key parts, the feature width and `complete` plus `done_rows` per file, so an
  interrupted computation resumes from the last finished chunk.

The head then trains on these arrays in seconds. The trade-off: image augmentation cannot act on stored
features; the flipped copy is the one augmentation kept (see genre_core.training.config).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from genre_core.models import ncnn_engine
from genre_core.runs.store import Cancelled
from genre_core.util import fileio, paths


CHUNK_ROWS = 256
EMBEDDINGS_VERSION = 1


@dataclass
class Embeddings:
    """Cached features: `features` (N, D) float32 memmap and optionally `flipped` (N, D)."""

    folder: Path
    features: np.ndarray
    flipped: np.ndarray | None
    extractor_id: str

    @property
    def dim(self) -> int:
        """Feature width D."""
        return int(self.features.shape[1])


def embeddings_folder(image_cache, extractor_id: str) -> Path:
    """Where the features of `image_cache` under the extractor `extractor_id` are stored."""
    digest = hashlib.sha1(extractor_id.encode("utf-8")).hexdigest()[:10]
    name = paths.sanitize_id(f"{Path(image_cache.folder).name}-{extractor_id}", max_length=100) + f"-{digest}"
    return paths.cache_dir() / "embeddings" / name


def compute_embeddings(
    image_cache,
    extractor,
    extractor_id: str,
    flip: bool = False,
    batch_size: int = 32,
    progress: Callable[[dict], None] | None = None,
    cancel_check: Callable[[], bool] | None = None,
    jit_compile: bool = False,
    engine: str = "keras",
    notes: list[str] | None = None,
) -> Embeddings:
    """Return the cached features of every image-cache row, computing (or finishing) them if needed.

    `extractor` maps float images 0..255 (B, H, W, 3) to (B, D). `cancel_check` is polled every batch;
    when it returns True the partial work is kept (resumable) and `genre_core.runs.store.Cancelled` is raised.
    `engine` runs the pass: "keras"; "ncnn" (genre_core.models.ncnn_engine: Winograd convolutions on the CPU,
    HED-VGG16 at 224 px in ~0.1 s per image on 2 cores against Keras's 0.24 s); or "auto" (ncnn when it
    is installed, no GPU is visible and the backbone converts; Keras otherwise). `jit_compile` compiles
    the Keras pass with XLA (on 2 CPU cores: HED-VGG16 at 176 px, 0.130 s per image against 0.150 s).
    The engine that ran is recorded in embeddings.json and appended to `notes` when given.
    """
    folder = embeddings_folder(image_cache, extractor_id)
    folder.mkdir(parents=True, exist_ok=True)
    info_path = folder / "embeddings.json"
    images = image_cache.images
    rows = int(images.shape[0])
    ok = image_cache.manifest["ok"].to_numpy(dtype=bool)
    dim = int(extractor.output.shape[-1])
    expected = {"version": EMBEDDINGS_VERSION, "extractor_id": extractor_id, "rows": rows, "dim": dim,
                "image_cache": str(Path(image_cache.folder).name)}
    info = fileio.read_json(info_path, None) or {}
    if any(info.get(key) != value for key, value in expected.items()):
        info = {**expected, "files": {}}
    files = {"features.npy": False} | ({"features_flip.npy": True} if flip else {})

    total = sum(rows - _done_rows(info, folder / name) for name in files)
    if total == 0:
        if notes is not None:
            notes.append(f"backbone features read from the embedding cache (computed with {info.get('engine', 'keras')})")
        return open_embeddings(image_cache, extractor_id, flip=flip)
    forward, engine_label = feature_pass(extractor, engine, jit_compile, notes)
    # Provenance only: both engines give the same features (to ~1e-4 of each feature's spread), so a pass
    # resumed with the other engine stays valid.
    info["engine"] = engine_label
    done_overall = 0
    started = time.monotonic()
    for name, flipped in files.items():
        path = folder / name
        done_rows = _done_rows(info, path)
        if done_rows >= rows:
            continue
        mode = "r+" if path.exists() and done_rows > 0 else "w+"
        array = np.lib.format.open_memmap(path, mode=mode, dtype=np.float32, shape=(rows, dim))
        for start in range(done_rows, rows, CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, rows)
            for batch_start in range(start, stop, batch_size):
                if cancel_check is not None and cancel_check():
                    array.flush()

                    raise Cancelled("cancelled while computing features")
                batch_stop = min(batch_start + batch_size, stop)
                batch = np.asarray(images[batch_start:batch_stop])
                array[batch_start:batch_stop] = forward(batch, flipped)
                done_overall += batch_stop - batch_start
                if progress is not None:
                    elapsed = time.monotonic() - started
                    progress({"stage": "features", "done": done_overall, "total": total,
                              "message": f"backbone features {done_overall}/{total} images ({elapsed:.0f} s, "
                                         f"{engine_label})"})
            # Rows that failed to decode hold zeros in the image cache; their features are zeroed too.
            failed = np.flatnonzero(~ok[start:stop]) + start
            if len(failed):
                array[failed] = 0.0
            array.flush()
            info["files"][name] = {"done_rows": stop, "complete": stop >= rows}
            fileio.atomic_write_json(info_path, info)
        del array
    return open_embeddings(image_cache, extractor_id, flip=flip)


def _done_rows(info: dict, path: Path) -> int:
    """Rows of a feature file already computed: as recorded in embeddings.json, or 0 if the file is gone."""
    return int(info["files"].get(path.name, {}).get("done_rows", 0)) if path.exists() else 0


ENGINES = ("auto", "keras", "ncnn")


def feature_pass(extractor, engine: str = "keras", jit_compile: bool = False,
                 notes: list[str] | None = None) -> tuple[Callable[[np.ndarray, bool], np.ndarray], str]:
    """Return (forward(batch, flipped) -> float32 features, engine label) for the chosen engine.

    "ncnn" fails with genre_core.models.ncnn_engine.NcnnUnsupported when ncnn is missing or the backbone does
    not convert; "auto" then falls back to Keras and says why in `notes`.
    """
    import tensorflow as tf

    if engine not in ENGINES:
        raise ValueError(f"unknown feature engine {engine!r}; choose one of {', '.join(ENGINES)}")
    reason = None  # set when "auto" chose: why
    if engine == "auto":
        if tf.config.list_physical_devices("GPU"):
            engine, reason = "keras", "a GPU is visible"
        elif not ncnn_engine.available():
            engine, reason = "keras", "ncnn is not installed"
        else:
            engine, reason = "ncnn", ""
    if engine == "ncnn":
        try:
            fast = ncnn_engine.NcnnExtractor(extractor)
        except ncnn_engine.NcnnUnsupported as exc:
            if reason is None:
                raise
            engine, reason = "keras", str(exc)
        else:
            def forward_ncnn(batch, flipped):
                batch = np.asarray(batch, dtype=np.float32)
                return fast(batch[:, :, ::-1] if flipped else batch)

            label = f"ncnn {ncnn_engine.version()}"
            if notes is not None:
                notes.append(f"backbone features computed with {label} (Winograd convolutions on the CPU)")
            return forward_ncnn, label

    @tf.function(reduce_retracing=True, jit_compile=bool(jit_compile))
    def forward(batch, flipped):
        batch = tf.cast(batch, tf.float32)
        if flipped:
            batch = tf.reverse(batch, axis=[2])
        return tf.cast(extractor(batch, training=False), tf.float32)

    label = "keras" + (" + XLA" if jit_compile else "")
    if notes is not None:
        notes.append(f"backbone features computed with {label}" + (f" ({reason})" if reason else ""))
    return (lambda batch, flipped: forward(batch, tf.constant(flipped)).numpy()), label


def open_embeddings(image_cache, extractor_id: str, flip: bool = False) -> Embeddings:
    """Open complete cached features (ValueError if they are missing or incomplete)."""
    folder = embeddings_folder(image_cache, extractor_id)
    info = fileio.read_json(folder / "embeddings.json", None) or {}
    names = ["features.npy"] + (["features_flip.npy"] if flip else [])
    for name in names:
        if not info.get("files", {}).get(name, {}).get("complete"):
            raise ValueError(f"{folder}: {name} is not complete; compute the embeddings first")
    features = np.load(folder / "features.npy", mmap_mode="r")
    flipped = np.load(folder / "features_flip.npy", mmap_mode="r") if flip else None
    if features.shape[0] != len(image_cache.manifest):
        raise ValueError(f"{folder}: {features.shape[0]} feature rows but the image cache has "
                         f"{len(image_cache.manifest)}")
    return Embeddings(folder=folder, features=features, flipped=flipped, extractor_id=extractor_id)
