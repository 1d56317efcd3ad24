"""Shared test fixtures. Tests never touch ../shared/data and never download anything."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

TINY_GENRES = ("abstract", "landscape", "portrait")


@pytest.fixture(scope="session", autouse=True)
def session_artifacts(tmp_path_factory) -> Path:
    """Point GENRE_ARTIFACTS at a temporary folder for the whole test session."""
    root = tmp_path_factory.mktemp("artifacts")
    previous = os.environ.get("GENRE_ARTIFACTS")
    os.environ["GENRE_ARTIFACTS"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("GENRE_ARTIFACTS", None)
    else:
        os.environ["GENRE_ARTIFACTS"] = previous


@pytest.fixture()
def isolated_artifacts(tmp_path, monkeypatch) -> Path:
    """A fresh artifacts root for one test."""
    root = tmp_path / "artifacts"
    root.mkdir()
    monkeypatch.setenv("GENRE_ARTIFACTS", str(root))
    return root


def app_page(name: str, timeout: float = 60):
    """An AppTest of one page file of app_pages/ (run on its own)."""
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app_pages" / f"{name}.py"),
                             default_timeout=timeout)


def make_tiny_image(genre: str, index: int, size: int = 48) -> Image.Image:
    """A small synthetic painting whose genre is learnable: abstract = random colour blocks,
    landscape = blue sky over green ground, portrait = light oval on a dark ground."""
    rng = np.random.default_rng(1000 * TINY_GENRES.index(genre) + index if genre in TINY_GENRES else index)
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size, 3), dtype=np.float64)
    if genre == "landscape":
        horizon = 0.45 + 0.1 * rng.random()
        img[y < horizon] = [90, 140, 230]
        img[y >= horizon] = [60, 150, 60]
    elif genre == "portrait":
        img[:] = [30, 25, 20]
        oval = ((x - 0.5) / 0.22) ** 2 + ((y - 0.45) / 0.3) ** 2 < 1
        img[oval] = [230, 190, 160]
    else:
        for _ in range(4):
            x0, y0 = rng.integers(0, size // 2, 2)
            img[y0:y0 + size // 2, x0:x0 + size // 2] = rng.integers(0, 255, 3)
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def write_tiny_folder_dataset(root: Path, per_genre: int = 10, size: int = 48) -> Path:
    """Write a folder-per-genre dataset of synthetic images under `root` and return it."""
    for genre in TINY_GENRES:
        folder = root / genre
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_genre):
            suffix = ".png" if i % 3 == 0 else ".jpg"
            make_tiny_image(genre, i, size).save(folder / f"{genre}_{i:03d}{suffix}")
    return root


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory) -> Path:
    """A folder-per-genre dataset: 3 genres x 10 synthetic 48-px images (PNG and JPEG). Read-only by convention."""
    return write_tiny_folder_dataset(tmp_path_factory.mktemp("tiny_dataset"))


def wait_for(predicate, timeout: float = 20.0, poll: float = 0.05):
    """Poll `predicate` until it returns a truthy value; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"condition not met within {timeout} s")


@pytest.fixture()
def stop_leftover_jobs():
    """After the test, stop any job process it started that is still alive (only ours, by pid)."""
    from genre_core.runs import jobs

    yield
    for _pid, process in list(jobs._children.items()):
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)
