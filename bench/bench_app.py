"""Benchmarks for the Streamlit app: classify latency through the app's code path, and page render times
with many runs on disk.

Rows:
- one dropped painting through the Classify page's path (cached classifier + header check + load_rgb +
  classify) against the bare `model(x)` call on the same, already decoded image;
- the first render of each page (AppTest, caches cleared) with 50 hand-built runs on disk against the same
  render with 1 run: the page must not slow down with the number of runs.
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

from bench import best_of, make_row, temporary_artifacts

PROJECT = Path(__file__).resolve().parents[1]
PAGES = ("dataset", "train", "evaluate", "classify", "gan")
MANY_RUNS = 50
LATENCY_REPEATS = 40
RENDER_REPEATS = 3


def _build_root(root: Path, dataset: Path, runs: int) -> None:
    """An artifacts root with `runs` finished classifier runs (one with a small_cnn model) and one GAN run."""
    from app_support import state
    from app_support.testing import write_gan_run, write_run

    os.environ["GENRE_ARTIFACTS"] = str(root)
    image_paths = sorted(str(p) for p in dataset.rglob("*.jpg"))
    genres = [Path(p).parent.name for p in image_paths]
    classes = sorted(set(genres))
    for index in range(runs):
        write_run(f"20260101-{index:06d}-small_cnn-bench", image_paths, genres, classes, seed=index,
                  data=str(dataset), with_model=index == runs - 1, size=64)
    write_gan_run("20260101-000000-landscape-bench", epochs=3, image_size=32)
    state.set_active_dataset(str(dataset))


def bench_classify_latency(root: Path, dataset: Path) -> dict:
    """The Classify page's path for one JPEG painting against bare model(x) on the decoded image."""
    from app_support import core, uploads

    os.environ["GENRE_ARTIFACTS"] = str(root)
    run_dir = sorted((root / "runs").iterdir())[-1]
    classifier = core.classifier(run_dir)
    painting = sorted(dataset.rglob("*.jpg"))[0]
    data = painting.read_bytes()
    batch = classifier.load(data, name=painting.name)[None].astype(np.float32)
    app_path = lambda: uploads.classify_uploads(core.classifier(run_dir), [(painting.name, data)], top_k=3)  # noqa: E731
    bare = lambda: np.asarray(classifier.model(batch, training=False))  # noqa: E731
    for _ in range(5):
        app_path()
        bare()
    baseline, candidate = best_of(bare, LATENCY_REPEATS), best_of(app_path, LATENCY_REPEATS)
    return make_row("app classify: one dropped painting vs bare model(x)", baseline, candidate, "<=1.3x",
                f"small_cnn 64 px, {painting.stat().st_size // 1024} KB JPEG 128 px, best of {LATENCY_REPEATS}")


def _first_render(page: str, root: Path) -> float:
    """Seconds for a fresh session's first render of one page, with Streamlit's caches cleared."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["GENRE_ARTIFACTS"] = str(root)
    st.cache_data.clear()
    st.cache_resource.clear()
    app = AppTest.from_file(str(PROJECT / "app_pages" / f"{page}.py"), default_timeout=300)
    began = time.perf_counter()
    app.run()
    seconds = time.perf_counter() - began
    if app.exception:
        raise RuntimeError(f"page {page} raised: {app.exception[0].value}")
    return seconds


def bench_page_renders(few_root: Path, many_root: Path) -> list[dict]:
    """First render of each page with 50 runs on disk against 1 run (imports warmed up first)."""
    for page in PAGES:
        _first_render(page, few_root)  # Imports (scikit-learn, Keras, Plotly) are paid here, not in the timings.
    rows = []
    for page in PAGES:
        few, many = [], []
        for _ in range(RENDER_REPEATS):
            few.append(_first_render(page, few_root))
            many.append(_first_render(page, many_root))
        rows.append(make_row(f"app page {page}: first render, {MANY_RUNS} runs vs 1", statistics.median(few),
                             statistics.median(many), "<=1.5x",
                             f"AppTest, caches cleared, median of {RENDER_REPEATS}; {statistics.median(many):.2f} s "
                             f"with {MANY_RUNS} runs"))
    return rows


def run() -> list[dict]:
    """All app benchmark rows (about a minute on two CPU cores)."""
    from genre_core.data import demo

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore")
    with temporary_artifacts("bench-app-") as base:
        dataset = demo.ensure_demo(base / "paintings", total=80, size=128, workers=1)
        few_root, many_root = base / "few", base / "many"
        _build_root(few_root, dataset, 1)
        _build_root(many_root, dataset, MANY_RUNS)
        rows = [bench_classify_latency(many_root, dataset)]
        rows += bench_page_renders(few_root, many_root)
        return rows

if __name__ == "__main__":
    for result in run():
        print(result)
