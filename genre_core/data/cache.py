"""The preprocessed image cache: every manifest row decoded once into a uint8 memmap that tf.data streams from.

A cache for one dataset at one size and resize policy lives in
`artifacts/cache/<fingerprint>-<W>x<H>-<policy>/`:

- `images.npy`: uint8 array (N, H, W, 3) in manifest order, written in place by worker processes through
  `np.lib.format.open_memmap`, so memory stays flat however large the dataset is;
- `manifest.csv`: the dataset manifest plus `ok` (bool) and `error` (the ImageError message of rows that failed);
- `cache.json`: fingerprint, size, policy, row count, a digest of the manifest and `complete`;
- `chunks/`: one done-marker per chunk of rows (with that chunk's failures), so an interrupted build resumes.

A different fingerprint, size or policy gives a different folder; a folder whose recorded parameters do not
match (another manifest under the same fingerprint, an older cache version, a resized images.npy) is stale
and is rebuilt from scratch.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from genre_core.data.images import ImageError, load_rgb, parse_size, POLICIES
from genre_core.data.sources import load_dataset, read_image_bytes
from genre_core.runs.store import recording_progress
from genre_core.util import fileio, paths, workers

CACHE_VERSION = 1
MAX_CHUNK_ROWS = 256
MIN_CHUNK_ROWS = 1
Progress = Callable[[dict], None]


@dataclass
class ImageCache:
    """A complete preprocessed cache: a read-only images memmap plus the manifest with ok/error columns."""

    folder: Path
    images: np.ndarray
    manifest: pd.DataFrame
    classes: list[str]
    size: tuple[int, int]
    policy: str
    fingerprint: str

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "ImageCache":
        """Open a complete cache folder; an incomplete or damaged folder raises ValueError."""
        folder = Path(folder)
        info = fileio.read_json(folder / "cache.json")
        if not info:
            raise ValueError(f"{folder} is not an image cache (cache.json is missing)")
        if not info.get("complete"):
            raise ValueError(f"{folder}: the image cache is incomplete; run prepare_cache again to finish it")
        manifest_path = folder / "manifest.csv"
        images_path = folder / "images.npy"
        for required in (manifest_path, images_path):
            if not required.exists():
                raise ValueError(f"{folder}: {required.name} is missing; run prepare_cache again to rebuild it")
        manifest = pd.read_csv(manifest_path, keep_default_na=False, dtype={"path": str, "genre": str, "split": str, "error": str})
        manifest["ok"] = manifest["ok"].astype(str).str.lower().isin(("true", "1"))
        manifest["label"] = manifest["label"].astype(np.int64)
        images = np.load(images_path, mmap_mode="r")
        width, height = info["size"]
        if images.shape != (len(manifest), height, width, 3) or images.dtype != np.uint8:
            raise ValueError(
                f"{images_path}: shape {images.shape} {images.dtype} does not match "
                f"{len(manifest)} rows of {width}x{height}; run prepare_cache again to rebuild it"
            )
        return cls(
            folder=folder,
            images=images,
            manifest=manifest,
            classes=list(info["classes"]),
            size=(int(width), int(height)),
            policy=str(info["policy"]),
            fingerprint=str(info["fingerprint"]),
        )

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def labels(self) -> np.ndarray:
        """Integer labels of every row (int32), indexes into `classes`."""
        return self.manifest["label"].to_numpy(dtype=np.int32)

    def ok_indices(self, split: str | None = None, genre: str | None = None) -> np.ndarray:
        """Row indices that decoded successfully, optionally only those of one split and/or one genre."""
        keep = self.manifest["ok"].to_numpy(dtype=bool).copy()
        if split is not None:
            keep &= (self.manifest["split"] == split).to_numpy()
        if genre is not None:
            if genre not in self.classes:
                raise ValueError(f"genre {genre!r} is not in this cache; its genres are: {', '.join(self.classes)}")
            keep &= (self.manifest["genre"] == genre).to_numpy()
        return np.flatnonzero(keep)

    def failures(self) -> pd.DataFrame:
        """The rows that failed to decode: path and the reason."""
        failed = self.manifest.loc[~self.manifest["ok"], ["path", "error"]]
        return failed.reset_index(drop=True)

    def info(self) -> dict:
        """The cache.json record."""
        return fileio.read_json(self.folder / "cache.json", {})


def cache_key(fingerprint: str, size: tuple[int, int], policy: str) -> str:
    """The folder name of a cache: `<fingerprint>-<W>x<H>-<policy>`."""
    width, height = size
    return paths.sanitize_id(f"{fingerprint}-{width}x{height}-{policy}", max_length=120)


def cache_folder(dataset, size=(224, 224), policy: str = "squash") -> Path:
    """Where `prepare_cache` keeps the cache of `dataset` at this size and policy."""
    return paths.cache_dir() / cache_key(_fingerprint(dataset), parse_size(size), policy)


def prepare_cache(
    dataset,
    size=(224, 224),
    policy: str = "squash",
    progress: Progress | None = None,
    workers: int | None = None,
    chunk_rows: int | None = None,
) -> ImageCache:
    """Decode every manifest row of `dataset` once into an on-disk cache and return it (reused if complete).

    Rows that fail to decode are kept (zeros, `ok` False, `error` = the reason) and the rest still builds.
    An interrupted build resumes from its done chunks. `workers` defaults to os.cpu_count(); 1 decodes in
    this process.
    """
    size = parse_size(size)
    if policy not in POLICIES:
        raise ValueError(f"resize policy {policy!r} is not one of {', '.join(POLICIES)}")
    worker_count = _worker_count(workers)
    if chunk_rows is not None and int(chunk_rows) < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    manifest = _checked_manifest(dataset)
    total = len(manifest)
    if total == 0:
        raise ValueError(f"dataset {getattr(dataset, 'root', '')} has no images to prepare (its manifest is empty)")
    classes = [str(name) for name in dataset.classes]
    fingerprint = _fingerprint(dataset)
    folder = paths.cache_dir() / cache_key(fingerprint, size, policy)
    folder.mkdir(parents=True, exist_ok=True)
    expected = {
        "version": CACHE_VERSION,
        "fingerprint": fingerprint,
        "size": list(size),
        "policy": policy,
        "rows": len(manifest),
        "manifest_digest": _manifest_digest(manifest, classes),
        "classes": classes,
    }

    def waiting() -> None:
        _report(progress, 0, total, "waiting for another process that is building this cache")

    with _folder_lock(folder, on_wait=waiting):
        try:
            info = fileio.read_json(folder / "cache.json", None)
        except ValueError:
            info = {}  # A corrupt cache.json: treat the folder as stale.
        if info is not None and not _matches(info, expected):
            _wipe(folder)
            info = None
        if info is not None and info.get("complete"):
            try:
                cache = ImageCache.open(folder)
            except ValueError:
                _wipe(folder)
                info = None
            else:
                _report(progress, total, total, "image cache already prepared")
                return cache
        started = time.perf_counter()
        if info is None:
            rows_per_chunk = int(chunk_rows or _default_chunk_rows(total, worker_count))
            info = dict(expected, chunk_rows=rows_per_chunk, complete=False)
            fileio.atomic_write_json(folder / "cache.json", info)
        rows_per_chunk = int(info["chunk_rows"])
        images_path = folder / "images.npy"
        shape = (total, size[1], size[0], 3)
        if not _images_file_ok(images_path, shape):
            # A missing or mismatched array invalidates every done chunk; start the rows over.
            shutil.rmtree(folder / "chunks", ignore_errors=True)
            images = np.lib.format.open_memmap(images_path, mode="w+", dtype=np.uint8, shape=shape)
            del images
        chunks_dir = folder / "chunks"
        chunks_dir.mkdir(exist_ok=True)
        bounds = [(start, min(start + rows_per_chunk, total)) for start in range(0, total, rows_per_chunk)]
        pending = [b for b in bounds if not _chunk_marker(chunks_dir, b).exists()]
        done_rows = total - sum(stop - start for start, stop in pending)
        _report(progress, done_rows, total, f"decoding {total - done_rows} of {total} images")
        row_paths = manifest["path"].astype(str).tolist()
        jobs = [(str(images_path), str(chunks_dir), start, stop, row_paths[start:stop], size, policy) for start, stop in pending]
        if worker_count > 1:
            jobs = _largest_first(jobs)
        finished = _run_chunks(jobs, min(worker_count, max(1, len(jobs))))
        try:
            for start, stop in finished:
                done_rows += stop - start
                _report(progress, done_rows, total, f"decoded {done_rows}/{total} images")
        finally:
            # On an error or a cancel raised by `progress`, stop handing out chunks now (not when the
            # traceback is freed); chunks already running finish and keep their done-markers.
            finished.close()
        errors = _collect_errors(chunks_dir, bounds)
        result = manifest.copy()
        result["ok"] = [row not in errors for row in range(total)]
        result["error"] = [errors.get(row, "") for row in range(total)]
        fileio.atomic_write_csv(folder / "manifest.csv", result)
        info.update(
            complete=True,
            failed=len(errors),
            seconds=round(time.perf_counter() - started, 3),
            built=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        fileio.atomic_write_json(folder / "cache.json", info)
        return ImageCache.open(folder)


def open_cache(dataset, size=(224, 224), policy: str = "squash") -> ImageCache | None:
    """The complete cache of `dataset` at this size and policy if one exists and is current, else None."""
    folder = cache_folder(dataset, size, policy)
    try:
        info = fileio.read_json(folder / "cache.json", None)
    except ValueError:
        return None
    if not info or not info.get("complete"):
        return None
    manifest = _checked_manifest(dataset)
    if info.get("manifest_digest") != _manifest_digest(manifest, [str(c) for c in dataset.classes]):
        return None
    try:
        return ImageCache.open(folder)
    except ValueError:
        return None


def list_caches() -> list[dict]:
    """Every cache folder under the artifacts root: fingerprint, size, policy, rows, failed, complete, bytes."""
    records = []
    for folder in sorted(p for p in paths.cache_dir().iterdir() if p.is_dir()):
        try:
            info = fileio.read_json(folder / "cache.json", None)
        except ValueError:
            info = None
        if not isinstance(info, dict) or "fingerprint" not in info:
            continue  # Not an image cache (embedding caches live here too) or a damaged one.
        size_on_disk = sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())
        records.append({
            "folder": str(folder),
            "fingerprint": info.get("fingerprint"),
            "size": info.get("size"),
            "policy": info.get("policy"),
            "rows": info.get("rows"),
            "failed": info.get("failed"),
            "complete": bool(info.get("complete")),
            "bytes": int(size_on_disk),
        })
    return records


def load_arrays(cache: ImageCache, indices: Sequence[int] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Copy the images (uint8 N x H x W x 3) and int32 labels of `indices` (default: all ok rows) into memory."""
    indices = cache.ok_indices() if indices is None else _checked_indices(cache, indices)
    order = np.argsort(indices, kind="stable")
    images = np.empty((len(indices),) + cache.images.shape[1:], dtype=np.uint8)
    images[order] = cache.images[indices[order]]
    return images, cache.labels[indices]


def load_genre_images(dataset_or_cache, genre: str, size=None, policy: str = "squash", progress: Progress | None = None, workers: int | None = None) -> np.ndarray:
    """The uint8 images (N, H, W, 3) of one genre, backed by the cache memmap where the rows are contiguous.

    Pass an ImageCache, or a Dataset plus `size` (the cache is prepared if needed). Failed rows are left out.
    """
    if isinstance(dataset_or_cache, ImageCache):
        cache = dataset_or_cache
        if size is not None and parse_size(size) != cache.size:
            raise ValueError(f"size {parse_size(size)} differs from the cache's size {cache.size}; prepare a cache at that size")
    else:
        if size is None:
            raise ValueError("size is required when passing a Dataset to load_genre_images (e.g. 64)")
        cache = prepare_cache(dataset_or_cache, size, policy, progress=progress, workers=workers)
    indices = cache.ok_indices(genre=genre)
    if len(indices) == 0:
        raise ValueError(f"genre {genre!r} has no decodable images in {cache.folder}")
    if indices[-1] - indices[0] + 1 == len(indices):
        # Contiguous rows: a slice keeps the memmap, so nothing is read until it is used.
        return cache.images[indices[0]: indices[-1] + 1]
    return cache.images[indices]


def make_tf_dataset(
    cache: ImageCache,
    indices: Sequence[int] | np.ndarray,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    repeat: bool = False,
    drop_remainder: bool = False,
):
    """A tf.data.Dataset of (uint8 images (B, H, W, 3), int32 labels (B,)) gathered per batch from the memmap.

    Batches keep the order of `indices` (after the seeded shuffle); each batch is read from the memmap in
    ascending row order, which is what makes the gather fast, and put back in order afterwards.
    """
    import tensorflow as tf

    indices = _checked_indices(cache, indices)
    if len(indices) == 0:
        raise ValueError("make_tf_dataset needs at least one row index")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    batch_size = int(batch_size)
    images = cache.images
    labels = cache.labels
    width, height = cache.size

    def gather(batch_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(batch_indices, kind="stable")
        batch = np.empty((len(batch_indices), height, width, 3), dtype=np.uint8)
        batch[order] = images[batch_indices[order]]
        return batch, labels[batch_indices]

    def gather_op(batch_indices):
        batch, batch_labels = tf.numpy_function(gather, [batch_indices], [tf.uint8, tf.int32], stateful=False)
        rows = batch_size if drop_remainder else None
        batch.set_shape((rows, height, width, 3))
        batch_labels.set_shape((rows,))
        return batch, batch_labels

    data = tf.data.Dataset.from_tensor_slices(indices.astype(np.int64))
    if shuffle:
        data = data.shuffle(len(indices), seed=int(seed), reshuffle_each_iteration=True)
    if repeat:
        data = data.repeat()
    data = data.batch(batch_size, drop_remainder=drop_remainder)
    data = data.map(gather_op, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return data.prefetch(tf.data.AUTOTUNE)


def _checked_indices(cache: ImageCache, indices) -> np.ndarray:
    """Validate row indices: integers inside the cache, all of rows that decoded."""
    array = np.asarray(indices)
    if array.ndim != 1:
        raise ValueError(f"indices must be a 1-D sequence of row numbers, got shape {array.shape}")
    if array.size and array.dtype.kind not in "iu":
        raise ValueError(f"indices must be integers, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= len(cache)):
        raise ValueError(f"indices must be in 0..{len(cache) - 1}; got {array.min()}..{array.max()}")
    ok = cache.manifest["ok"].to_numpy(dtype=bool)
    bad = array[~ok[array]] if array.size else array
    if bad.size:
        first = int(bad[0])
        raise ValueError(
            f"{bad.size} of the requested rows failed to decode (first: row {first}, "
            f"{cache.manifest['path'].iloc[first]}: {cache.manifest['error'].iloc[first]}); use cache.ok_indices()"
        )
    return array


def _checked_manifest(dataset) -> pd.DataFrame:
    """The dataset manifest with a validated integer `label` column."""
    manifest = getattr(dataset, "manifest", None)
    if not isinstance(manifest, pd.DataFrame):
        raise ValueError("prepare_cache needs a Dataset whose manifest is a pandas DataFrame")
    for column in ("path", "genre"):
        if column not in manifest.columns:
            raise ValueError(f"the dataset manifest has no {column!r} column")
    manifest = manifest.reset_index(drop=True).copy()
    if "split" not in manifest.columns:
        manifest["split"] = ""
    classes = [str(name) for name in dataset.classes]
    if "label" not in manifest.columns:
        lookup = {name: index for index, name in enumerate(classes)}
        unknown = sorted(set(manifest["genre"].astype(str)) - set(lookup))
        if unknown:
            raise ValueError(f"manifest genres {unknown[:5]} are not in the dataset classes {classes}")
        manifest["label"] = manifest["genre"].astype(str).map(lookup)
    labels = pd.to_numeric(manifest["label"], errors="coerce")
    bad = labels.isna() | (labels < 0) | (labels >= len(classes))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"manifest row {row} ({manifest['path'].iloc[row]}) has label {manifest['label'].iloc[row]!r}, not in 0..{len(classes) - 1}")
    manifest["label"] = labels.astype(np.int64)
    manifest["path"] = manifest["path"].astype(str)
    return manifest


def _fingerprint(dataset) -> str:
    """The dataset fingerprint, or a digest of its manifest when the dataset has none."""
    fingerprint = str(getattr(dataset, "fingerprint", "") or "")
    if fingerprint:
        return fingerprint
    manifest = _checked_manifest(dataset)
    return "manifest-" + _manifest_digest(manifest, [str(c) for c in dataset.classes])[:16]


def _manifest_digest(manifest: pd.DataFrame, classes: list[str]) -> str:
    """A digest of what the cache content depends on: row paths, labels and the class list."""
    digest = hashlib.sha256()
    digest.update("\x1f".join(classes).encode("utf-8"))
    for path, label in zip(manifest["path"].astype(str), manifest["label"].astype(np.int64)):
        digest.update(f"\x1e{path}\x1f{label}".encode("utf-8"))
    return digest.hexdigest()


def _matches(info: dict, expected: dict) -> bool:
    """True if a recorded cache.json was built for exactly these parameters."""
    return all(info.get(key) == value for key, value in expected.items()) and "chunk_rows" in info


def _images_file_ok(path: Path, shape: tuple[int, ...]) -> bool:
    """True if `path` is a uint8 .npy array of the given shape."""
    if not path.exists():
        return False
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError):
        return False
    ok = array.shape == shape and array.dtype == np.uint8
    del array
    return ok


def _wipe(folder: Path) -> None:
    """Delete the contents of a stale cache folder (the lock file stays)."""
    for child in folder.iterdir():
        if child.name == ".lock":
            continue
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _folder_lock(folder: Path, on_wait: Callable[[], None] | None = None):
    """Hold an exclusive lock on the cache folder, so two processes never build the same cache at once."""
    return workers.file_lock(folder / ".lock", on_wait)


def _worker_count(workers: int | None) -> int:
    """The number of decode processes: `workers`, or os.cpu_count()."""
    if workers is None:
        return max(1, os.cpu_count() or 1)
    if int(workers) < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return int(workers)


def _default_chunk_rows(total: int, workers: int) -> int:
    """Chunks small enough to keep every worker busy (about four chunks each), at most 256 rows.

    A few large paintings therefore still spread over all workers; the done-markers stay few (4 per worker).
    """
    if total <= 0:
        return MAX_CHUNK_ROWS
    return int(min(MAX_CHUNK_ROWS, max(MIN_CHUNK_ROWS, math.ceil(total / (4 * workers)))))


def _largest_first(jobs: list[tuple]) -> list[tuple]:
    """Order chunk jobs by the bytes of their files, largest first, so that one huge painting does not
    start last and leave the other workers idle at the end (a longest-processing-time-first schedule).

    Row paths that are not plain files (a Parquet row "file.parquet#3") count as 0 bytes.
    """
    def chunk_bytes(job: tuple) -> int:
        total = 0
        for path in job[4]:
            try:
                total += os.stat(path).st_size
            except (OSError, ValueError):
                pass
        return total

    return sorted(jobs, key=chunk_bytes, reverse=True)


def _chunk_marker(chunks_dir: Path, bounds: tuple[int, int]) -> Path:
    """The done-marker file of the chunk of rows [start, stop)."""
    start, stop = bounds
    return chunks_dir / f"{start:09d}-{stop:09d}.json"


def _collect_errors(chunks_dir: Path, bounds: Iterable[tuple[int, int]]) -> dict[int, str]:
    """Row -> error message from every chunk marker."""
    errors: dict[int, str] = {}
    for chunk in bounds:
        record = fileio.read_json(_chunk_marker(chunks_dir, chunk), None)
        if record is None:
            raise RuntimeError(f"chunk {chunk} of {chunks_dir} has no done-marker after the build")
        errors.update({int(row): str(message) for row, message in record.get("errors", {}).items()})
    return errors


def _report(progress: Progress | None, done: int, total: int, message: str) -> None:
    """Send one progress event, if anyone listens."""
    if progress is not None:
        progress({"stage": "prepare", "done": int(done), "total": int(total), "message": message})


def _run_chunks(jobs: list[tuple], worker_count: int):
    """Decode the chunks, yielding (start, stop) of each as it finishes; in-process when one worker."""
    if not jobs:
        return
    if worker_count <= 1:
        for job in jobs:
            yield _decode_chunk(*job)
        return
    with workers.worker_pool(worker_count) as pool:
        with workers.spawnable_main():
            futures = [pool.submit(_decode_chunk, *job) for job in jobs]
        try:
            for future in concurrent.futures.as_completed(futures):
                yield future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _decode_chunk(images_path: str, chunks_dir: str, start: int, stop: int, row_paths: list[str], size, policy: str) -> tuple[int, int]:
    """Decode rows [start, stop) into the shared images.npy, then write the chunk's done-marker."""
    images = np.load(images_path, mmap_mode="r+")
    errors: dict[str, str] = {}
    for offset, path in enumerate(row_paths):
        row = start + offset
        try:
            source = read_image_bytes(path)
            images[row] = load_rgb(source, size, policy, name=path)
        except (ImageError, ValueError, OSError) as exc:
            images[row] = 0
            errors[str(row)] = str(exc) if isinstance(exc, ImageError) else f"{path}: {exc}"
    images.flush()
    del images
    fileio.atomic_write_json(_chunk_marker(Path(chunks_dir), (start, stop)), {"rows": [start, stop], "errors": errors})
    return start, stop


# ----------------------------------------------------------------------------------------------------------
# The "prepare" job.


def execute_prepare(run, progress: Progress | None = None) -> None:
    """The "prepare" job (genre_core.runs.kinds): build the preprocessed image cache for config["data"] at
    config["size"] with config["policy"], recording progress in the run folder."""
    config = run.config()
    if not config.get("data"):
        raise ValueError(f"run {run.id}: a prepare job needs \"data\" (a dataset path or \"demo\") in its config")
    size = parse_size(config.get("size", 224))
    policy = config.get("policy", "squash")
    dataset = load_dataset(config["data"])
    kwargs = {"workers": int(config["workers"])} if config.get("workers") is not None else {}
    with recording_progress(run, progress) as report:
        def record(event: dict) -> None:
            """Record progress and stop at the next chunk when a cancel was requested."""
            report(event)
            run.check_cancel()

        image_cache = prepare_cache(dataset, size=size, policy=policy, progress=record, **kwargs)
    cache_path = getattr(image_cache, "path", None) or getattr(image_cache, "folder", None)
    run.update_status(message=f"cache ready{f' at {cache_path}' if cache_path else ''}",
                      cache=str(cache_path) if cache_path else None)
