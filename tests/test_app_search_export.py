"""AppTest tests of the Train page's search section and the Evaluate page's "Download model" box."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from conftest import app_page, TINY_GENRES

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from app_support import state  # noqa: E402
from app_support.testing import write_run  # noqa: E402
from genre_core.runs import store  # noqa: E402
from genre_core.training import search  # noqa: E402
from genre_core.util import fileio  # noqa: E402

TIMEOUT = 120
BEST_ID = "20260101-000000-hed_vgg16-best"


def page(name: str):
    return app_page(name, TIMEOUT)


def finished_run(tiny_dataset_dir, with_model: bool = False) -> Path:
    image_paths = sorted(str(p) for p in tiny_dataset_dir.rglob("*") if p.is_file())
    genres = [Path(p).parent.name for p in image_paths]
    folder = write_run(BEST_ID, image_paths, genres, list(TINY_GENRES), seed=3, data=str(tiny_dataset_dir),
                       with_model=with_model)
    state.set_active_dataset(str(tiny_dataset_dir))
    return folder


def test_train_page_shows_a_search_with_its_trials_best_run_and_a_launch_form(isolated_artifacts, tiny_dataset_dir):
    best = finished_run(tiny_dataset_dir)
    run = search.create_search(str(tiny_dataset_dir), 3, overrides={"size": 32})
    fileio.atomic_write_csv(run.path / search.TRIALS_FILE, pd.DataFrame({
        "trial": [0, 1, 2], "state": ["complete", "pruned", "complete"], "value": [0.6, None, 0.7],
        "param_learning_rate": [0.001, 0.01, 0.003], "val_accuracy": [0.6, 0.3, 0.7]}))
    fileio.atomic_write_json(run.path / search.SUMMARY_FILE, {"best_trial": 2, "best_value": 0.7,
                                                              "best_run": best.name})
    run.update_status(state="finished", epoch=3, message="finished: best trial 2")
    app = page("train").run()
    assert not app.exception
    assert app.selectbox(key="search_followed").value == run.id
    captions = [element.value for element in app.caption]
    assert "3 trials: 2 complete, 1 pruned" in captions
    table = next(element.value for element in app.dataframe if "learning_rate" in element.value.columns)
    assert list(table["trial"]) == [0, 1, 2]
    assert app.button(key="search_open_best").label == f"Open best run {best.name}"
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics["Best trial"] == "2"
    # Launching creates a queued search folder with the form's settings (the job launch itself is patched).
    launched = []
    from genre_core.runs import jobs

    original = jobs.launch
    jobs.launch = lambda new_run: launched.append(new_run) or 0
    try:
        app.number_input(key="search_trials").set_value(5)
        app.number_input(key="search_max_epochs").set_value(20)
        next(button for button in app.button if button.label == "Start search").click().run()
    finally:
        jobs.launch = original
    assert not app.exception
    (new_run,) = launched
    config = store.open_run(new_run.path).config()
    assert config["trials"] == 5 and config["space"]["epochs"] == {"type": "int", "low": 4, "high": 20}
    assert config["base"]["model"] == "hed_vgg16" and config["data"] == str(tiny_dataset_dir)


def test_evaluate_page_downloads_the_model_as_a_zip(isolated_artifacts, tiny_dataset_dir):
    best = finished_run(tiny_dataset_dir, with_model=True)
    state.set_active_run(best.name)
    app = page("evaluate").run()
    assert not app.exception
    app.selectbox(key="export_format").set_value("tflite")
    app.button(key="export_prepare").click().run()
    assert not app.exception and not app.error
    (button,) = [element for element in app.get("download_button")]
    assert "TFLite" in button.proto.label
