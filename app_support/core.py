"""Guarded, cached access to genre_core from the pages.

Every page reaches the core through these helpers so that:
- a core error shows as one st.error line naming the problem, never a traceback;
- data loads are cached on (path, modification time) and models on (run folder, model file time).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import streamlit as st

from app_support import shared
from genre_core.data import demo, images, sources
from genre_core.evaluation import bundle, classify, evaluate
from genre_core.gan import score, trainer
from genre_core.runs import store
from genre_core.util import paths


DEMO = "demo"


def call(function: Callable, *args, failure: str = "That did not work", **kwargs) -> Any:
    """Run a core call; on any error show `failure: message` with st.error and stop the page (no traceback)."""
    try:
        return function(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the UI shows every failure as one line, never a traceback.
        st.error(f"{failure}: {describe_error(exc)}")
        st.stop()


def describe_error(exc: BaseException) -> str:
    """One line for an exception: its message, or its type when the message is empty."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text or type(exc).__name__


def modification_time(path: str | os.PathLike) -> float:
    """The file's modification time, or 0.0 when it does not exist."""
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


# ---------------------------------------------------------------------------------------------------------
# Datasets


def ensure_demo():
    """Generate the demo dataset if it is missing or outdated (about 10 s the first time; instant after)."""
    return call(demo.ensure_demo, failure="Cannot create the demo dataset")


def dataset_stamp(spec: str) -> float:
    """A cache key part that changes when the dataset on disk changes (folder or file modification time)."""
    if spec == DEMO:
        return modification_time(paths.demo_dir())
    return modification_time(Path(spec).expanduser())


@st.cache_resource(show_spinner="Reading the dataset...", max_entries=4)
def _load_dataset(spec: str, stamp: float):
    # cache_resource, not cache_data: a manifest of 100,000 rows is shared read-only instead of unpickled on
    # every rerun. Pages never modify it.
    return sources.load_dataset(spec)


def load_dataset(spec: str, reload: bool = False):
    """Load a dataset ("demo" or a path) through the core, cached on (spec, modification time); `reload`
    drops the cached copy first (files inside a genre folder change no top-level modification time)."""
    if spec == DEMO:
        ensure_demo()  # Otherwise sources.load_dataset("demo") would generate it with a worker pool.
    if reload:
        _load_dataset.clear(spec, dataset_stamp(spec))
    return call(_load_dataset, spec, dataset_stamp(spec), failure=f"Cannot read the dataset {spec}")


def thumbnail(path: str, size: int, stamp: float):
    """A small RGB array of one dataset image for galleries (cached per file and size). On a shared server an
    image whose real location leaves the allowed folders (a symlink inside a dataset) is not read: a plain
    grey square stands in for it, so every page that shows paintings stays whole."""
    try:
        shared.check_image_file(path)
    except ValueError:
        return np.full((size, size, 3), 200, dtype=np.uint8)
    return _thumbnail(path, size, stamp)


@st.cache_data(show_spinner=False, max_entries=64)
def _thumbnail(path: str, size: int, stamp: float):
    source = sources.read_image_bytes(path) if "#" in path else path
    return images.load_rgb(source, size=size, policy="letterbox", name=path, pad_color=(255, 255, 255))


@st.cache_data(show_spinner="Reading image sizes...", max_entries=8)
def _image_sizes(fingerprint: str, rows: tuple[tuple[str, str], ...]) -> pd.DataFrame:
    records = []
    for path, genre in rows:
        try:
            source = sources.read_image_bytes(path) if "#" in path else path
            info = images.image_info(source, name=path)
        except (ValueError, OSError):
            continue
        records.append({"width": info["width"], "height": info["height"], "genre": genre})
    return pd.DataFrame(records, columns=["width", "height", "genre"])


def image_sizes(dataset, sample: int = 400) -> pd.DataFrame:
    """Width and height per image: the manifest's columns when the source records them, else read from the
    headers of an evenly spaced sample of at most `sample` images (cached per dataset fingerprint)."""
    manifest = dataset.manifest
    if {"width", "height"} <= set(manifest.columns) and manifest["width"].notna().any():
        return manifest[["width", "height", "genre"]]
    step = max(1, len(manifest) // sample)
    chosen = manifest.iloc[::step].head(sample)
    return _image_sizes(dataset.fingerprint, tuple(zip(chosen["path"].astype(str), chosen["genre"].astype(str))))


# ---------------------------------------------------------------------------------------------------------
# Runs


def runs_folder(kind: str = "classifier") -> Path:
    """The folder holding runs of this kind (classifier runs, or GAN runs when kind == "gan")."""
    return store.kind_root(kind)


RUN_COLUMNS = ["id", "path", "state", "model", "data", "epoch", "epochs", "test_accuracy", "macro_f1", "message",
               "error", "created", "damaged"]


def run_table(kind: str = "classifier") -> pd.DataFrame:
    """store.list_runs as a table (newest first), with every listing column present even when there are no runs.

    Not cached on purpose: it reads only small files (milliseconds for 50 runs) and must notice a job whose
    process died, which changes no file.
    """
    table = pd.DataFrame(store.list_runs(kind))
    for column in RUN_COLUMNS:
        if column not in table.columns:
            table[column] = None
    return table[RUN_COLUMNS + [c for c in table.columns if c not in RUN_COLUMNS]]


def read_status(run_dir: str | os.PathLike) -> dict:
    """The run's effective status (a dead job reads "interrupted"); a missing or corrupt file reads "damaged"."""
    try:
        return store.Run(run_dir).status()
    except ValueError as exc:
        return {"state": "damaged", "error": str(exc)}


def read_history(run_dir: str | os.PathLike) -> pd.DataFrame:
    """The run's history.csv (an empty table with an epoch column before the first epoch or when corrupt)."""
    try:
        history = store.Run(run_dir).history()
    except ValueError:
        history = pd.DataFrame()
    return history if "epoch" in history.columns else pd.DataFrame(columns=["epoch"])


def finished_runs(kind: str = "classifier", need: str = "model.keras") -> list[str]:
    """Ids of finished runs of this kind that have the file `need` (newest first)."""
    table = run_table(kind)
    folder = runs_folder(kind)
    return [run_id for run_id in table.loc[table["state"] == "finished", "id"] if (folder / run_id / need).exists()]


# ---------------------------------------------------------------------------------------------------------
# Models and interpretations (cache_resource: live objects, shared by sessions)


@st.cache_resource(show_spinner="Loading the model...", max_entries=3)
def _classifier(run_dir: str, stamp: float):
    return classify.load_classifier(run_dir)


def classifier(run_dir: str | os.PathLike):
    """The run's classifier, or the bundled model's (loaded once per model file version)."""
    run_dir = str(run_dir)
    model_file = bundle.HEAD_FILE if bundle.is_bundle(run_dir) else "model.keras"
    return call(_classifier, run_dir, modification_time(Path(run_dir) / model_file), failure=f"Cannot load the model of {Path(run_dir).name}")


@st.cache_data(show_spinner=False, max_entries=2)
def _bundled_card(stamp: float) -> str:
    return bundle.card()


def bundled_card() -> str:
    """The bundled real-painting model's card (markdown), '' when the bundle is missing."""
    if not bundle.available():
        return ""
    return _bundled_card(modification_time(bundle.folder() / bundle.CARD_FILE))


@st.cache_resource(show_spinner="Reading predictions...", max_entries=8)
def _interpretation(run_dir: str, stamp: float):
    return evaluate.Interpretation.from_run(run_dir)


def interpretation(run_dir: str | os.PathLike):
    """The run's Interpretation (built once per predictions.csv version)."""
    run_dir = str(run_dir)
    return call(
        _interpretation,
        run_dir,
        modification_time(Path(run_dir) / "predictions.csv"),
        failure=f"Cannot evaluate {Path(run_dir).name}",
    )


@st.cache_data(show_spinner=False, max_entries=8)
def _comparison(run_dirs: tuple[str, ...], stamps: tuple[float, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    return evaluate.compare_runs(list(run_dirs)), evaluate.learning_curves(list(run_dirs))


def comparison(run_dirs: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(compare_runs table, learning_curves long table) for these runs, cached on their metrics/history times."""
    stamps = tuple(
        modification_time(Path(folder) / name) for folder in run_dirs for name in ("metrics.json", "history.csv")
    )
    return call(_comparison, tuple(run_dirs), stamps, failure="Cannot compare the runs")


@st.cache_data(show_spinner="Generating...", max_entries=32)
def _gan_picture(run_dir: str, stamp: float, what: str, count: int, seed: int, genre: str | None, seed_b: int,
                 checkpoint: str) -> dict:
    import io

    from PIL import Image

    if what == "sample":
        pictures = trainer.sample(run_dir, n=count, seed=seed, genre=genre, checkpoint=checkpoint)
        columns = int(np.ceil(np.sqrt(len(pictures))))
    else:
        pictures = trainer.interpolate(run_dir, seed, seed_b, steps=count, genre=genre, checkpoint=checkpoint)
        columns = len(pictures)
    image = trainer.grid(pictures, columns=columns)
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG")
    return {"image": image, "png": buffer.getvalue()}


@st.cache_data(show_spinner=False, max_entries=8)
def _gan_comparison(run_dirs: tuple[str, ...], stamps: tuple[float, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    from genre_core.gan import compare

    return compare.compare_runs(list(run_dirs)), compare.curves(list(run_dirs))


def gan_comparison(run_dirs: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(gan.compare.compare_runs table, gan.compare.curves long table) for these GAN runs, cached on their
    config and history times."""
    stamps = tuple(modification_time(Path(folder) / name) for folder in run_dirs
                   for name in ("config.json", "history.csv"))
    return call(_gan_comparison, tuple(run_dirs), stamps, failure="Cannot compare the GAN runs")


def gan_quality_by_genre(run_dir: str | os.PathLike) -> pd.DataFrame:
    """The GAN run's per-genre quality by epoch (trainer.QUALITY_BY_GENRE_COLUMNS); empty before the first
    measured epoch. A corrupt quality.json stops the page with one line naming it."""
    rows = call(trainer.quality_by_genre, run_dir, failure="Cannot read the run's quality")
    return pd.DataFrame(rows, columns=list(trainer.QUALITY_BY_GENRE_COLUMNS))


def gan_scores(run_dir: str | os.PathLike) -> pd.DataFrame:
    """The GAN run's kept scores (`gan score`: fixed-space KID against real images it never trained on), one row
    per score and genre (score.SCORE_COLUMNS); empty when it has none. A damaged scores.json stops the page with
    one line naming it."""
    rows = call(score.read_scores, run_dir, failure="Cannot read the run's scores")
    return pd.DataFrame(rows, columns=list(score.SCORE_COLUMNS))


def gan_picture(run_dir: str, what: str, count: int, seed: int, genre: str | None = None, seed_b: int = 1,
                checkpoint: str = trainer.DEFAULT_CHECKPOINT) -> dict:
    """A grid of `count` samples for a seed (what="sample") or an interpolation strip from seed to seed_b, made
    by the run's best or last generator (trainer.generator_path), as {"image": uint8 array, "png": bytes};
    deterministic, so cached per generator file version."""
    path = call(trainer.generator_path, run_dir, checkpoint, failure="Cannot find the run's generator")
    stamp = modification_time(path)
    return call(_gan_picture, run_dir, stamp, what, count, seed, genre, seed_b, checkpoint,
                failure="Cannot generate images")


def gan_best(run_dir: str) -> dict | None:
    """The run's best epoch record (trainer.read_best), or None; a damaged best.json stops the page with one
    line naming it."""
    return call(trainer.read_best, run_dir, failure="Cannot read the run's best epoch")
