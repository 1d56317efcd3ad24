"""The procedural demo dataset: determinism, genre proportions, idempotent generation, no half demos."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

from genre_core.data import demo
from genre_core.data.demo import demo_counts, DEMO_GENRES, ensure_demo, generate_demo_image, painted_genre, PBN_COUNTS


def test_generate_demo_image_is_deterministic_per_seed():
    for genre in DEMO_GENRES:
        first = generate_demo_image(genre, seed=3, size=48, index=5)
        again = generate_demo_image(genre, seed=3, size=48, index=5)
        assert first.shape == (48, 48, 3) and first.dtype == np.uint8
        np.testing.assert_array_equal(first, again)
        assert not np.array_equal(first, generate_demo_image(genre, seed=4, size=48, index=5))
        assert not np.array_equal(first, generate_demo_image(genre, seed=3, size=48, index=6))
        # A painting, not a flat field and not noise: a spread of tones, and neighbouring pixels correlate.
        grey = first.astype(np.float64).mean(axis=2)
        assert grey.std() > 8
        assert np.corrcoef(grey[:, :-1].ravel(), grey[:, 1:].ravel())[0, 1] > 0.5


def test_every_genre_paints_without_error_over_many_seeds():
    # Random compositions have many branches; paint enough small images to visit them all.
    for genre in DEMO_GENRES:
        for index in range(40):
            image = generate_demo_image(genre, seed=11, size=24, index=index)
            assert image.shape == (24, 24, 3)


def test_bad_genre_and_size_raise_value_error():
    with pytest.raises(ValueError, match="unknown demo genre 'nude'"):
        generate_demo_image("nude", 0, 64)
    with pytest.raises(ValueError, match="16..1024"):
        generate_demo_image("portrait", 0, 8)
    with pytest.raises(ValueError, match="at least 80"):
        demo_counts(20)


def test_genre_counts_follow_painter_by_numbers_proportions():
    counts = demo_counts()
    assert set(counts) == set(PBN_COUNTS) == set(DEMO_GENRES)
    assert 500 <= sum(counts.values()) <= 700
    assert counts["portrait"] == 167 and counts["flower painting"] == 16
    assert 8 <= max(counts.values()) / min(counts.values()) <= 12
    # Same order as the real counts.
    assert sorted(counts, key=counts.get, reverse=True) == sorted(PBN_COUNTS, key=PBN_COUNTS.get, reverse=True)
    assert {"religious painting", "still life", "flower painting"} <= set(counts)


def test_some_images_borrow_a_neighbouring_composition():
    borrowed = [painted_genre("portrait", 0, i) for i in range(400)]
    share = sum(genre != "portrait" for genre in borrowed) / len(borrowed)
    assert 0.01 < share < 0.1
    assert set(borrowed) == {"portrait", "religious painting"}


def test_ensure_demo_writes_a_folder_per_genre_once(tmp_path):
    events = []
    root = ensure_demo(tmp_path / "demo", progress=events.append, seed=1, size=32, total=120)
    counts = demo_counts(120)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(DEMO_GENRES)
    for genre, count in counts.items():
        files = sorted((root / genre).glob("*.jpg"))
        assert len(files) == count
    with Image.open(root / "still life" / "still_life_0000.jpg") as image:
        assert image.size == (32, 32) and image.format == "JPEG"
    marker = json.loads((root / "demo.json").read_text())
    assert marker["generator_version"] == demo.GENERATOR_VERSION and marker["seed"] == 1 and marker["counts"] == counts
    assert all(entry["painted_as"] != entry["genre"] for entry in marker["borrowed"])
    total = sum(counts.values())
    assert 115 <= total <= 125
    assert events[-1] == {"stage": "demo", "done": total, "total": total, "message": events[-1]["message"]}
    # Only the finished folder and the generator lock remain; no temporary folders.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".demo.lock", "demo"]

    # A second call finds the finished demo and writes nothing.
    probe = root / "portrait" / "portrait_0000.jpg"
    before = probe.stat().st_mtime_ns
    again = ensure_demo(tmp_path / "demo", seed=1, size=32, total=120)
    assert again == root and probe.stat().st_mtime_ns == before


def test_same_seed_gives_same_bytes_and_a_new_seed_regenerates(tmp_path):
    first = ensure_demo(tmp_path / "a", seed=2, size=32, total=80, workers=1)
    second = ensure_demo(tmp_path / "b", seed=2, size=32, total=80, workers=1)
    names = sorted(str(p.relative_to(first)) for p in first.rglob("*.jpg"))
    assert names == sorted(str(p.relative_to(second)) for p in second.rglob("*.jpg"))
    for name in names[::7]:
        assert (first / name).read_bytes() == (second / name).read_bytes()

    reseeded = ensure_demo(tmp_path / "a", seed=5, size=32, total=80, workers=1)
    assert json.loads((reseeded / "demo.json").read_text())["seed"] == 5
    assert (reseeded / names[0]).read_bytes() != (second / names[0]).read_bytes()

    # A missing file is noticed and the demo is regenerated.
    (reseeded / names[3]).unlink()
    ensure_demo(tmp_path / "a", seed=5, size=32, total=80, workers=1)
    assert (reseeded / names[3]).exists()


def test_interrupted_generation_leaves_no_half_demo(tmp_path, monkeypatch):
    real_write = demo._write_images
    calls = []

    def fail_on_third_batch(*args):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt()
        return real_write(*args)

    monkeypatch.setattr(demo, "_write_images", fail_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo(tmp_path / "demo", seed=0, size=32, total=300, workers=1)
    assert not (tmp_path / "demo").exists()
    assert [p.name for p in tmp_path.iterdir()] == [".demo.lock"]

    monkeypatch.setattr(demo, "_write_images", real_write)
    root = ensure_demo(tmp_path / "demo", seed=0, size=32, total=80, workers=1)
    assert (root / "demo.json").exists()


def test_default_demo_goes_to_the_artifacts_demo_dir(isolated_artifacts):
    root = ensure_demo(size=24, total=80, workers=1)
    assert root == isolated_artifacts / "demo"
    assert sum(1 for _ in root.rglob("*.jpg")) == sum(demo_counts(80).values())


def test_painting_one_default_size_image_is_fast():
    # A loose sanity bound (the real number is about 20 ms); the full demo is 600 of these.
    started = time.perf_counter()
    for index, genre in enumerate(DEMO_GENRES):
        generate_demo_image(genre, seed=0, size=128, index=index)
    assert (time.perf_counter() - started) / len(DEMO_GENRES) < 1.0


def test_demo_loads_through_the_folder_source(tmp_path):
    sources = pytest.importorskip("genre_core.data.sources")
    root = ensure_demo(tmp_path / "demo", seed=0, size=32, total=80, workers=1)
    dataset = sources.load_folder(root)
    assert sorted(dataset.classes) == sorted(DEMO_GENRES)
    assert len(dataset.manifest) == 80


def test_ensure_demo_never_replaces_a_folder_that_is_not_a_demo(tmp_path):
    mine = tmp_path / "my paintings"
    (mine / "landscape").mkdir(parents=True)
    (mine / "landscape" / "precious.jpg").write_bytes(b"not really a jpeg, but mine")
    with pytest.raises(ValueError, match="not a demo folder"):
        ensure_demo(mine, size=24, total=80, workers=1)
    assert (mine / "landscape" / "precious.jpg").exists()
    (tmp_path / "a file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        ensure_demo(tmp_path / "a file", size=24, total=80, workers=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (ensure_demo(empty, size=24, total=80, workers=1) / "demo.json").exists()
