"""The preprocessed cache: build, reuse, resume, invalidation, failed files, and the tf.data pipeline."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_GENRES, write_tiny_folder_dataset
from genre_core.data import cache as cache_module
from genre_core.data.cache import ImageCache, load_arrays, load_genre_images, make_tf_dataset, prepare_cache
from genre_core.data.dataset import Dataset
from genre_core.data.images import load_rgb

SIZE = 32


def folder_dataset(root: Path, fingerprint: str = "tiny-v1", extra_paths: dict[str, str] | None = None) -> Dataset:
    """Build a Dataset by hand from a folder per genre (sorted by genre, then file name)."""
    rows = []
    for genre in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for file in sorted((root / genre).iterdir()):
            rows.append({"path": str(file), "genre": genre, "split": ""})
    for path, genre in (extra_paths or {}).items():
        rows.append({"path": path, "genre": genre, "split": ""})
    manifest = pd.DataFrame(rows)
    classes = sorted(manifest["genre"].unique())
    manifest["label"] = manifest["genre"].map({name: i for i, name in enumerate(classes)})
    # Give every third row a split so split filtering has something to find.
    manifest["split"] = np.where(np.arange(len(manifest)) % 3 == 0, "val", "train")
    return Dataset(source="folder", root=root, manifest=manifest, classes=classes, report={}, fingerprint=fingerprint)


@pytest.fixture()
def broken_dataset(tmp_path) -> Dataset:
    """3 genres x 6 images plus a text file named .jpg, an empty file and a missing file."""
    root = write_tiny_folder_dataset(tmp_path / "data", per_genre=6, size=40)
    (root / "abstract" / "zz_not_an_image.jpg").write_text("hello, I am not a JPEG")
    (root / "landscape" / "zz_empty.png").write_bytes(b"")
    return folder_dataset(root, extra_paths={str(root / "portrait" / "zz_missing.jpg"): "portrait"})


class DecodeCounter:
    """Wraps load_rgb and counts calls (in-process builds only)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return load_rgb(*args, **kwargs)


def test_build_decodes_every_row_and_lists_failures(isolated_artifacts, broken_dataset):
    events = []
    cache = prepare_cache(broken_dataset, SIZE, progress=events.append, workers=1)
    total = len(broken_dataset.manifest)
    assert total == 21
    assert cache.images.shape == (total, SIZE, SIZE, 3)
    assert cache.images.dtype == np.uint8
    assert cache.folder == isolated_artifacts / "cache" / f"tiny-v1-{SIZE}x{SIZE}-squash"
    for name in ("images.npy", "manifest.csv", "cache.json"):
        assert (cache.folder / name).exists()
    assert (cache.folder / "chunks").is_dir()
    info = json.loads((cache.folder / "cache.json").read_text())
    assert info["complete"] is True and info["fingerprint"] == "tiny-v1" and info["size"] == [SIZE, SIZE]
    assert info["failed"] == 3

    failures = cache.failures()
    assert sorted(Path(p).name for p in failures["path"]) == ["zz_empty.png", "zz_missing.jpg", "zz_not_an_image.jpg"]
    reasons = dict(zip((Path(p).name for p in failures["path"]), failures["error"]))
    assert "empty file" in reasons["zz_empty.png"]
    assert "file not found" in reasons["zz_missing.jpg"]
    assert "not an image file" in reasons["zz_not_an_image.jpg"]

    ok = cache.ok_indices()
    assert len(ok) == 18
    # Every good row holds exactly what load_rgb gives for that file; failed rows are zeros.
    for row in ok[:: 5]:
        expected = load_rgb(cache.manifest["path"].iloc[row], SIZE)
        np.testing.assert_array_equal(cache.images[row], expected)
    bad = np.setdiff1d(np.arange(total), ok)
    assert not cache.images[bad].any()
    assert cache.labels.tolist() == broken_dataset.manifest["label"].tolist()
    assert events[-1]["stage"] == "prepare" and events[-1]["done"] == events[-1]["total"] == total
    assert all(set(e) >= {"stage", "done", "total"} for e in events)


def test_complete_cache_is_reused_without_decoding(isolated_artifacts, broken_dataset, monkeypatch):
    first = prepare_cache(broken_dataset, SIZE, workers=1)

    def refuse(*args, **kwargs):
        raise AssertionError("a complete cache must not decode again")

    monkeypatch.setattr(cache_module, "load_rgb", refuse)
    events = []
    second = prepare_cache(broken_dataset, SIZE, progress=events.append, workers=1)
    assert second.folder == first.folder
    np.testing.assert_array_equal(second.images, first.images)
    assert events == [{"stage": "prepare", "done": 21, "total": 21, "message": "image cache already prepared"}]
    assert isinstance(second.images, np.memmap) and not second.images.flags.writeable


def test_interrupted_build_resumes_from_done_chunks(isolated_artifacts, broken_dataset, monkeypatch):
    class Stop(Exception):
        pass

    def stop_after_first_chunk(event):
        if 0 < event["done"] < event["total"]:
            raise Stop()

    decoded_chunks = []
    real_decode_chunk = cache_module._decode_chunk

    def spy(images_path, chunks_dir, start, stop, *rest):
        decoded_chunks.append((start, stop))
        return real_decode_chunk(images_path, chunks_dir, start, stop, *rest)

    monkeypatch.setattr(cache_module, "_decode_chunk", spy)
    with pytest.raises(Stop):
        prepare_cache(broken_dataset, SIZE, progress=stop_after_first_chunk, workers=1, chunk_rows=8)
    assert decoded_chunks == [(0, 8)]
    folder = cache_module.cache_folder(broken_dataset, SIZE)
    assert json.loads((folder / "cache.json").read_text())["complete"] is False
    assert len(list((folder / "chunks").glob("*.json"))) == 1
    with pytest.raises(ValueError, match="incomplete"):
        ImageCache.open(folder)

    # The rerun decodes only the two chunks that were not done, keeping the chunk size of the first run.
    decoded_chunks.clear()
    resumed = prepare_cache(broken_dataset, SIZE, workers=1)
    assert decoded_chunks == [(8, 16), (16, 21)]
    assert len(resumed.ok_indices()) == 18

    monkeypatch.setattr(cache_module, "load_rgb", load_rgb)
    fresh = prepare_cache(folder_dataset(broken_dataset.root, "other-fingerprint", {
        broken_dataset.manifest["path"].iloc[-1]: "portrait"}), SIZE, workers=1)
    np.testing.assert_array_equal(resumed.images, fresh.images)


def test_fingerprint_size_policy_and_manifest_changes_invalidate(isolated_artifacts, tiny_dataset_dir, monkeypatch):
    dataset = folder_dataset(tiny_dataset_dir, "fp-a")
    base = prepare_cache(dataset, SIZE, workers=1)
    assert prepare_cache(folder_dataset(tiny_dataset_dir, "fp-b"), SIZE, workers=1).folder != base.folder
    bigger = prepare_cache(dataset, 40, workers=1)
    assert bigger.folder != base.folder and bigger.images.shape[1:] == (40, 40, 3)
    cropped = prepare_cache(dataset, (SIZE, 24), policy="crop", workers=1)
    assert cropped.folder.name == f"fp-a-{SIZE}x24-crop" and cropped.images.shape[1:] == (24, SIZE, 3)

    # Same fingerprint but a different manifest (here: fewer rows) is a stale folder: detected and rebuilt.
    counter = DecodeCounter()
    monkeypatch.setattr(cache_module, "load_rgb", counter)
    smaller = Dataset(
        source="folder", root=tiny_dataset_dir, manifest=dataset.manifest.iloc[:12].copy(),
        classes=dataset.classes, report={}, fingerprint="fp-a",
    )
    rebuilt = prepare_cache(smaller, SIZE, workers=1)
    assert rebuilt.folder == base.folder
    assert counter.calls == 12 and len(rebuilt) == 12
    assert cache_module.open_cache(dataset, SIZE) is None
    assert cache_module.open_cache(smaller, SIZE) is not None


def test_parallel_build_matches_in_process_build(isolated_artifacts, tiny_dataset_dir):
    dataset = folder_dataset(tiny_dataset_dir, "parallel")
    events = []
    parallel = prepare_cache(dataset, SIZE, progress=events.append, workers=2, chunk_rows=8)
    assert len(list((parallel.folder / "chunks").glob("*.json"))) == 4
    assert [e["done"] for e in events] == sorted(e["done"] for e in events)
    single = prepare_cache(folder_dataset(tiny_dataset_dir, "single"), SIZE, workers=1)
    np.testing.assert_array_equal(parallel.images, single.images)


def test_bad_arguments_raise_clear_errors(isolated_artifacts, tiny_dataset_dir):
    dataset = folder_dataset(tiny_dataset_dir)
    with pytest.raises(ValueError, match="resize policy"):
        prepare_cache(dataset, SIZE, policy="stretch")
    with pytest.raises(ValueError, match="size"):
        prepare_cache(dataset, "big")
    with pytest.raises(ValueError, match="workers"):
        prepare_cache(dataset, SIZE, workers=0)
    broken = folder_dataset(tiny_dataset_dir)
    broken.manifest.loc[3, "label"] = 7
    with pytest.raises(ValueError, match="row 3"):
        prepare_cache(broken, SIZE, workers=1)


@pytest.fixture()
def tiny_cache(isolated_artifacts, tiny_dataset_dir) -> ImageCache:
    return prepare_cache(folder_dataset(tiny_dataset_dir, "tf"), SIZE, workers=1)


def test_make_tf_dataset_shapes_labels_and_order(tiny_cache):
    indices = tiny_cache.ok_indices(split="train")
    assert len(indices) == 20
    data = make_tf_dataset(tiny_cache, indices, batch_size=8, shuffle=False)
    images_spec, labels_spec = data.element_spec
    assert images_spec.dtype.name == "uint8" and tuple(images_spec.shape[1:]) == (SIZE, SIZE, 3)
    assert labels_spec.dtype.name == "int32"
    batches = [(x.numpy(), y.numpy()) for x, y in data]
    assert [len(y) for _, y in batches] == [8, 8, 4]
    images = np.concatenate([x for x, _ in batches])
    labels = np.concatenate([y for _, y in batches])
    np.testing.assert_array_equal(images, tiny_cache.images[indices])
    np.testing.assert_array_equal(labels, tiny_cache.labels[indices])

    # Unsorted indices come back in the order given, although each batch is read in sorted order.
    reverse = indices[::-1].copy()
    x, y = next(iter(make_tf_dataset(tiny_cache, reverse, batch_size=5, shuffle=False)))
    np.testing.assert_array_equal(x.numpy(), tiny_cache.images[reverse[:5]])
    np.testing.assert_array_equal(y.numpy(), tiny_cache.labels[reverse[:5]])

    dropped = make_tf_dataset(tiny_cache, indices, batch_size=8, shuffle=False, drop_remainder=True)
    assert tuple(dropped.element_spec[0].shape) == (8, SIZE, SIZE, 3)
    assert sum(1 for _ in dropped) == 2


def test_make_tf_dataset_shuffle_is_seeded(tiny_cache):
    indices = tiny_cache.ok_indices()

    def labels_of(seed):
        data = make_tf_dataset(tiny_cache, indices, batch_size=7, shuffle=True, seed=seed)
        return np.concatenate([y.numpy() for _, y in data]), np.concatenate([x.numpy() for x, _ in data])

    labels_a, images_a = labels_of(3)
    labels_b, images_b = labels_of(3)
    _, images_c = labels_of(4)
    np.testing.assert_array_equal(labels_a, labels_b)
    np.testing.assert_array_equal(images_a, images_b)
    assert sorted(labels_a.tolist()) == sorted(tiny_cache.labels.tolist())
    assert not np.array_equal(images_a, tiny_cache.images[indices])  # Shuffled, not in row order.
    assert not np.array_equal(images_a, images_c)  # Another seed, another order.

    repeated = make_tf_dataset(tiny_cache, indices, batch_size=16, repeat=True, seed=1)
    assert sum(1 for _ in repeated.take(5)) == 5


def test_make_tf_dataset_rejects_bad_indices(isolated_artifacts, broken_dataset):
    cache = prepare_cache(broken_dataset, SIZE, workers=1)
    with pytest.raises(ValueError, match="failed to decode"):
        make_tf_dataset(cache, np.arange(len(cache)), batch_size=4)
    with pytest.raises(ValueError, match="0..20"):
        make_tf_dataset(cache, [0, 99], batch_size=4)
    with pytest.raises(ValueError, match="at least one"):
        make_tf_dataset(cache, [], batch_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        make_tf_dataset(cache, cache.ok_indices(), batch_size=0)


def test_load_arrays_and_genre_images(tiny_cache, tiny_dataset_dir):
    indices = np.array([25, 3, 14])
    images, labels = load_arrays(tiny_cache, indices)
    assert images.shape == (3, SIZE, SIZE, 3) and labels.dtype == np.int32
    np.testing.assert_array_equal(images[0], tiny_cache.images[25])
    assert labels.tolist() == [2, 0, 1]

    landscapes = load_genre_images(tiny_cache, "landscape")
    assert landscapes.shape == (10, SIZE, SIZE, 3)
    assert isinstance(landscapes, np.memmap)
    np.testing.assert_array_equal(landscapes, tiny_cache.images[10:20])
    with pytest.raises(ValueError, match="not in this cache"):
        load_genre_images(tiny_cache, "marina")
    from_dataset = load_genre_images(folder_dataset(tiny_dataset_dir, "tf"), "portrait", size=SIZE)
    np.testing.assert_array_equal(from_dataset, tiny_cache.images[20:30])
    with pytest.raises(ValueError, match="size is required"):
        load_genre_images(folder_dataset(tiny_dataset_dir, "tf"), "portrait")
    assert tuple(TINY_GENRES) == tuple(tiny_cache.classes)


def test_corrupt_cache_json_and_empty_datasets(isolated_artifacts, tiny_dataset_dir):
    dataset = folder_dataset(tiny_dataset_dir, "corrupt")
    first = prepare_cache(dataset, SIZE, workers=1)
    (first.folder / "cache.json").write_text("{ not json")
    assert cache_module.open_cache(dataset, SIZE) is None
    rebuilt = prepare_cache(dataset, SIZE, workers=1)
    np.testing.assert_array_equal(rebuilt.images, first.images)
    assert rebuilt.info()["complete"] is True

    empty = Dataset(source="folder", root=tiny_dataset_dir, manifest=dataset.manifest.iloc[:0].copy(),
                    classes=dataset.classes, fingerprint="empty")
    with pytest.raises(ValueError, match="no images to prepare"):
        prepare_cache(empty, SIZE, workers=1)


def test_a_second_builder_waits_for_the_first(isolated_artifacts, tiny_dataset_dir):
    fcntl = pytest.importorskip("fcntl")
    import threading

    dataset = folder_dataset(tiny_dataset_dir, "locked")
    folder = cache_module.cache_folder(dataset, SIZE)
    folder.mkdir(parents=True)
    events, results = [], []
    with open(folder / ".lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # Another "process" is building.
        builder = threading.Thread(target=lambda: results.append(prepare_cache(dataset, SIZE, progress=events.append, workers=1)))
        builder.start()
        deadline = time.time() + 10
        while not events and time.time() < deadline:
            time.sleep(0.02)
        assert events and "waiting for another process" in events[0]["message"]
        assert not results
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    builder.join(timeout=30)
    assert results and len(results[0].ok_indices()) == 30


def test_parallel_build_interrupted_by_progress_resumes(isolated_artifacts, tiny_dataset_dir):
    # A cancel raised from the progress callback (as jobs do) stops the worker pool; done chunks are kept.
    dataset = folder_dataset(tiny_dataset_dir, "parallel-cancel")

    class Cancelled(Exception):
        pass

    def cancel_after_first_chunk(event):
        if 0 < event["done"] < event["total"]:
            raise Cancelled()

    with pytest.raises(Cancelled):
        prepare_cache(dataset, SIZE, progress=cancel_after_first_chunk, workers=2, chunk_rows=5)
    folder = cache_module.cache_folder(dataset, SIZE)
    # How many chunks finish before the pool stops depends on timing; the build is incomplete either way.
    done = len(list((folder / "chunks").glob("*.json")))
    assert done >= 1
    assert json.loads((folder / "cache.json").read_text())["complete"] is False
    events = []
    resumed = prepare_cache(dataset, SIZE, progress=events.append, workers=2)
    assert events[0]["done"] == 5 * done
    single = prepare_cache(folder_dataset(tiny_dataset_dir, "parallel-cancel-single"), SIZE, workers=1)
    np.testing.assert_array_equal(resumed.images, single.images)


def test_list_caches_reports_each_cache(isolated_artifacts, tiny_dataset_dir):
    dataset = folder_dataset(tiny_dataset_dir, "listed")
    prepare_cache(dataset, SIZE, workers=1)
    prepare_cache(dataset, 24, workers=1)
    (isolated_artifacts / "cache" / "embeddings-something").mkdir()  # Not an image cache: skipped.
    listed = cache_module.list_caches()
    assert [(c["size"], c["rows"], c["complete"], c["failed"]) for c in listed] == [([24, 24], 30, True, 0), ([SIZE, SIZE], 30, True, 0)]
    assert all(c["bytes"] >= c["rows"] * c["size"][0] * c["size"][1] * 3 for c in listed)


def test_spawned_workers_never_rerun_a_script_main(tmp_path, monkeypatch):
    """Inside Streamlit/AppTest `__main__` is a page script; spawned workers must not run it again."""
    import multiprocessing
    import sys
    import types

    from genre_core.util import workers

    script = tmp_path / "page.py"
    script.write_text("raise SystemExit('the page script ran again in a worker')\n")
    page_main = types.ModuleType("__main__")
    page_main.__file__ = str(script)
    page_main.__spec__ = None
    monkeypatch.setitem(sys.modules, "__main__", page_main)
    monkeypatch.setattr(workers, "worker_context", lambda: multiprocessing.get_context("spawn"))
    with workers.worker_pool(2) as pool:
        with workers.spawnable_main():
            futures = [pool.submit(abs, -index) for index in range(4)]
        assert sorted(future.result() for future in futures) == [0, 1, 2, 3]
    assert sys.modules["__main__"] is page_main


def test_parallel_chunks_start_with_the_largest_files(tmp_path):
    # Longest-processing-time first: a huge painting in the last chunk would leave the other workers idle.
    sizes = {"a.jpg": 10, "b.jpg": 5000, "c.jpg": 20, "d.jpg": 300}
    for name, count in sizes.items():
        (tmp_path / name).write_bytes(b"x" * count)
    jobs = [("images.npy", "chunks", row, row + 1, [str(tmp_path / name)], (8, 8), "squash")
            for row, name in enumerate(sizes)]
    jobs.append(("images.npy", "chunks", 4, 5, ["table.parquet#3"], (8, 8), "squash"))  # no file: 0 bytes
    ordered = cache_module._largest_first(jobs)
    assert [job[2] for job in ordered] == [1, 3, 2, 0, 4]
