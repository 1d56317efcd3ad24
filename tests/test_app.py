"""AppTest tests of the Streamlit app: every page's guard, its widgets by key, and its core call on tiny data.

Runs are hand-built (app_support.testing.write_run) so no test trains a model; the one background job used
is the TensorFlow-free "selftest" job kind.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import app_page, make_tiny_image, TINY_GENRES, write_tiny_folder_dataset

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from app_support import charts, state  # noqa: E402
from app_support.testing import write_run, write_tiny_model  # noqa: E402

TIMEOUT = 60
RUN_ID = "20260101-000000-small_cnn-test"


def page(name: str) -> AppTest:
    """An AppTest of one page file (run on its own, as the task asks)."""
    return app_page(name, TIMEOUT)


def texts(elements) -> list[str]:
    return [str(element.value) for element in elements]


def table_with(app: AppTest, *columns: str) -> pd.DataFrame:
    """The first st.dataframe whose columns include `columns` (AppTest keeps no keys on dataframes)."""
    for element in app.dataframe:
        frame = element.value
        if set(columns) <= set(frame.columns):
            return frame
    raise AssertionError(f"no dataframe with columns {columns}")


@pytest.fixture()
def tiny_run(isolated_artifacts, tiny_dataset_dir) -> Path:
    """A hand-built finished run over the tiny dataset (30 test predictions, 3 genres), made active."""
    image_paths = sorted(str(p) for p in tiny_dataset_dir.rglob("*") if p.is_file())
    genres = [Path(p).parent.name for p in image_paths]
    folder = write_run(RUN_ID, image_paths, genres, list(TINY_GENRES), seed=3, data=str(tiny_dataset_dir))
    state.set_active_dataset(str(tiny_dataset_dir))
    state.set_active_run(RUN_ID)
    return folder


# ---------------------------------------------------------------------------------------------------------
# Helpers without Streamlit


def test_ui_state_persists_on_disk_and_tolerates_corruption(isolated_artifacts):
    assert state.read_state()["active_dataset"] is None
    state.set_active_dataset("/data/a")
    state.set_active_dataset("demo")
    state.set_active_dataset("/data/a")
    remembered = state.read_state()
    assert remembered["active_dataset"] == "/data/a"
    assert remembered["recent_datasets"] == ["/data/a", "demo"]
    state.set_active_run("run-1")
    assert state.read_state()["active_run"] == "run-1"
    (isolated_artifacts / "ui_state.json").write_text("{not json")
    assert state.read_state() == {"active_dataset": None, "active_run": None, "active_gan_run": None, "recent_datasets": []}
    with pytest.raises(ValueError, match="empty"):
        state.set_active_dataset("  ")


def test_confusion_figure_is_a_clickable_scatter_that_maps_back_to_cells():
    classes = ["a", "b", "c"]
    matrix = np.array([[5, 1, 0], [2, 7, 1], [0, 3, 4]])
    figure = charts.confusion_figure(matrix, classes)
    trace = figure.data[0]
    assert trace.type == "scatter" and trace.marker.symbol == "square"
    assert list(trace.text) == ["5", "1", "0", "2", "7", "1", "0", "3", "4"]
    assert list(trace.customdata[5]) == ["b", "c"]  # row-major: true b, predicted c
    # Streamlit's selection event carries customdata, x/y, or only a point index; all map to (true, predicted).
    assert charts.selected_cell({"selection": {"points": [{"customdata": ["c", "b"]}]}}, classes) == ("c", "b")
    assert charts.selected_cell({"selection": {"points": [{"x": "a", "y": "b"}]}}, classes) == ("b", "a")
    assert charts.selected_cell({"selection": {"points": [{"point_index": 7}]}}, classes) == ("c", "b")
    assert charts.selected_cell({"selection": {"points": []}}, classes) is None
    with pytest.raises(ValueError, match="does not match 3 classes"):
        charts.confusion_figure(np.zeros((2, 2)), classes)


def test_genre_counts_figure_stacks_splits_in_count_order():
    table = pd.DataFrame({"train": [8, 2, 5], "test": [2, 1, 1]}, index=["landscape", "abstract", "portrait"])
    figure = charts.genre_counts_figure(table, log_scale=True)
    assert [trace.name for trace in figure.data] == ["train", "test"]
    assert list(figure.data[0].x) == ["landscape", "portrait", "abstract"]
    assert list(figure.data[0].y) == [8, 5, 2]
    assert figure.layout.barmode == "stack" and figure.layout.yaxis.type == "log"
    assert charts.selected_bar({"selection": {"points": [{"x": "portrait", "y": 5}]}}) == "portrait"


# ---------------------------------------------------------------------------------------------------------
# app.py: navigation, first launch, sidebar


def test_first_launch_creates_the_demo_and_offers_a_demo_run(isolated_artifacts, monkeypatch):
    from genre_core.data import demo
    from genre_core.util import paths

    # The real demo takes ~20 s on two cores; the tiny dataset stands in for it here.
    monkeypatch.setattr(demo, "ensure_demo", lambda *args, **kwargs: write_tiny_folder_dataset(paths.demo_dir()))
    app = AppTest.from_file(str(PROJECT / "app.py"), default_timeout=TIMEOUT).run()
    assert not app.exception
    assert state.read_state()["active_dataset"] == "demo"
    assert "**Dataset:** `demo`" in texts(app.sidebar.markdown)
    assert app.title[0].value == "Dataset"
    assert app.get_by_key("demo_train").label == "Train a demo model"
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics["Images"] == "30" and metrics["Genres"] == "3"
    # Every page is reachable through the navigation and renders without an exception.
    for name, title in (("train", "Train"), ("evaluate", "Evaluate"), ("classify", "Classify"), ("gan", "GAN")):
        app.switch_page(f"app_pages/{name}.py").run()
        assert not app.exception, name
        assert app.title[0].value == title


# ---------------------------------------------------------------------------------------------------------
# Dataset page


def test_dataset_page_guard_without_a_dataset(isolated_artifacts, monkeypatch):
    from genre_core.data import demo

    def refuse(*args, **kwargs):
        raise ValueError("disk full")

    monkeypatch.setattr(demo, "ensure_demo", refuse)
    app = page("dataset").run()
    assert not app.exception
    assert texts(app.info) == ["No dataset is active yet. Pick the demo or enter a path above."]
    # A path that does not exist gives one clear error, not a traceback.
    app.text_input(key="dataset_path").set_value("/no/such/folder")
    app.button[0].click().run()
    assert texts(app.error) == ["/no/such/folder: no such file or folder"]
    assert state.read_state()["active_dataset"] is None


def test_dataset_page_reads_a_folder_dataset(isolated_artifacts, tiny_dataset_dir):
    app = page("dataset").run()
    app.text_input(key="dataset_path").set_value(str(tiny_dataset_dir))
    app.button[0].click().run()
    assert not app.exception
    assert state.read_state()["active_dataset"] == str(tiny_dataset_dir)
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics["Images"] == "30" and metrics["Genres"] == "3" and metrics["Source"] == "folder"
    assert metrics["Imbalance ratio"] == "1.0"
    plan = table_with(app, "genre", "have", "copies")
    assert list(plan["copies"]) == [0, 0, 0]
    app.number_input(key="dataset_topup_min").set_value(14).run()
    assert list(table_with(app, "genre", "have", "copies")["copies"]) == [4, 4, 4]
    # The gallery shows the chosen genre's paintings.
    app.selectbox(key="dataset_gallery_genre").set_value("portrait").run()
    app.slider(key="dataset_gallery_count").set_value(4).run()
    captions = [caption for image in app.image for caption in image.captions]
    assert captions == [f"portrait_{i:03d}{'.png' if i % 3 == 0 else '.jpg'}" for i in range(4)]
    # The recent path is remembered on disk and offered next time.
    assert str(tiny_dataset_dir) in page("dataset").run().selectbox(key="dataset_recent").options


# ---------------------------------------------------------------------------------------------------------
# Train page and jobs


def test_train_page_guard_without_a_dataset(isolated_artifacts):
    app = page("train").run()
    assert not app.exception
    info = texts(app.info)
    assert info == ["Choose a dataset on the Dataset page first."]


@pytest.fixture()
def fake_start_run(monkeypatch):
    """Replace jobs.start (expensive) by one that writes a classifier run in the middle of epoch 2."""
    from genre_core.runs import jobs, store
    from genre_core.training.config import TrainConfig

    calls = []

    def start(kind, config, background=False, progress=None):
        assert kind == "classifier" and background
        config = TrainConfig.from_dict(config)
        calls.append(config)
        run = store.create_run("classifier", config.to_dict(), classes=list(TINY_GENRES))
        run.update_status(state="running", epoch=1, epochs=config.epochs, batch=2, batches=4, eta_seconds=75,
                          pid=os.getpid(), message="epoch 2/3, batch 2/4")
        run.append_history({"epoch": 1, "loss": 1.0, "accuracy": 0.5, "val_loss": 1.1, "val_accuracy": 0.4})
        return run

    monkeypatch.setattr(jobs, "start", start)
    return calls


def test_train_page_launches_a_run_and_shows_live_progress(isolated_artifacts, tiny_dataset_dir, fake_start_run):
    state.set_active_dataset(str(tiny_dataset_dir))
    app = page("train").run()
    assert not app.exception
    assert texts(app.info) == ["No training runs yet. Fill in the form in the sidebar and press **Start training**."]
    assert app.selectbox(key="train_recipe").value == "cpu-15min"  # the measured recipe is the default
    app.selectbox(key="train_recipe").set_value("")  # "the settings above"
    app.selectbox(key="train_model").set_value("small_cnn")
    app.number_input(key="train_epochs").set_value(3)
    app.number_input(key="train_size").set_value(32)
    app.selectbox(key="train_balancing").set_value("class_weights")
    app.slider(key="train_fraction").set_value(0.5)
    app.sidebar.button[0].click().run()
    assert not app.exception
    (config,) = fake_start_run
    assert (config.model, config.epochs, config.size, config.balancing, config.data_fraction) == (
        "small_cnn", 3, 32, "class_weights", 0.5)
    assert config.data == str(tiny_dataset_dir)
    progress = [(bar.value, bar.text) for bar in app.get("progress")]
    assert progress == [(33, "epoch 1/3, ETA 1 min 15 s"), (50, "batch 2/4")]
    run_id = app.selectbox(key="train_followed_run").value
    assert state.read_state()["active_run"] == run_id
    # Cancel writes the cancel request that the job checks every batch.
    app.button(key="train_job_cancel").click().run()
    assert (isolated_artifacts / "runs" / run_id / "cancel").exists()
    table = table_with(app, "id", "state", "model")
    assert list(table["state"]) == ["running"] and list(table["queue"]) == [0]  # 0: the running job


def test_train_page_recipe_replaces_the_model_settings_but_keeps_fraction_and_seed(
        isolated_artifacts, tiny_dataset_dir, fake_start_run):
    from genre_core.training.config import RECIPES

    state.set_active_dataset(str(tiny_dataset_dir))
    app = page("train").run()
    app.selectbox(key="train_model").set_value("small_cnn")
    app.slider(key="train_fraction").set_value(0.5)
    app.number_input(key="train_seed").set_value(3)
    app.selectbox(key="train_recipe").set_value("cpu-15min")
    app.sidebar.button[0].click().run()
    assert not app.exception
    (config,) = fake_start_run
    recipe = RECIPES["cpu-15min"]
    assert (config.model, config.size, config.feature_transform, config.lr_schedule, config.xla) == (
        recipe["model"], recipe["size"], "sqrt", "cosine", True)
    assert (config.data, config.data_fraction, config.seed) == (str(tiny_dataset_dir), 0.5, 3)


def test_train_page_shows_a_failed_job_with_its_error(isolated_artifacts, tiny_dataset_dir, fake_start_run):
    from genre_core.runs import store

    state.set_active_dataset(str(tiny_dataset_dir))
    run = store.create_run("classifier", {"model": "small_cnn", "data": "demo", "epochs": 2})
    run.update_status(state="failed", error="ValueError: out of memory in epoch 1")
    app = page("train").run()
    assert not app.exception
    assert texts(app.error) == [f"{run.id} failed: ValueError: out of memory in epoch 1"]


def test_background_job_is_seen_by_two_sessions_until_it_finishes(isolated_artifacts):
    """A real TensorFlow-free job: two AppTest sessions (two tabs) follow the same run folder."""
    from genre_core.runs import jobs, store

    run = store.create_run("selftest", {"epochs": 2, "batches": 2, "step_seconds": 0.05})
    jobs.launch(run)

    def follow(run_path):
        from app_support import jobs_ui

        jobs_ui.job_panel(run_path, key="job")

    first = AppTest.from_function(follow, args=(str(run.path),), default_timeout=TIMEOUT).run()
    assert not first.exception
    status = jobs.wait(run, timeout=60)
    assert status["state"] == "finished"
    second = AppTest.from_function(follow, args=(str(run.path),), default_timeout=TIMEOUT).run()
    assert texts(second.success) == [f"{run.id} finished."]
    assert first.run().success[0].value == f"{run.id} finished."


# ---------------------------------------------------------------------------------------------------------
# Evaluate page


def test_evaluate_page_guard_without_runs(isolated_artifacts):
    app = page("evaluate").run()
    assert not app.exception
    assert texts(app.info)[0].startswith("No finished run with test predictions yet.")


def test_evaluate_page_metrics_matrix_and_cells(tiny_run):
    from genre_core.evaluation.evaluate import Interpretation

    expected = Interpretation.from_run(tiny_run)
    app = page("evaluate").run()
    assert not app.exception, app.exception
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics["Accuracy"] == f"{expected.metrics()['accuracy']:.1%}"
    assert metrics["Test images"] == "30"
    # The keyboard pickers default to the most-confused pair and show that cell's paintings, worst first.
    pair = expected.most_confused().iloc[0]
    assert (app.selectbox(key="eval_true").value, app.selectbox(key="eval_predicted").value) == (pair["true"], pair["predicted"])
    cell = table_with(app, "path", "true", "predicted", "confidence", "loss")
    assert len(cell) == pair["count"]
    assert list(cell["confidence"]) == sorted(cell["confidence"], reverse=True)
    app.selectbox(key="eval_true").set_value("portrait")
    app.selectbox(key="eval_predicted").set_value("portrait").run()
    diagonal = int(expected.confusion_matrix().loc["portrait", "portrait"])
    assert f"**{diagonal} paintings** of true genre *portrait* predicted as *portrait*, worst first" in texts(app.markdown)
    assert len(app.image) == min(diagonal, 12)
    assert all(image.captions[0].startswith("portrait → portrait (") for image in app.image)
    app.radio(key="eval_normalize").set_value("normalised by true genre").run()
    assert not app.exception
    per_class = table_with(app, "genre", "precision", "recall", "f1")
    assert list(per_class["genre"]) == list(TINY_GENRES)
    assert list(table_with(app, "run", "model", "test_accuracy")["run"]) == [RUN_ID]


# ---------------------------------------------------------------------------------------------------------
# Classify page


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_classify_page_guard_without_a_model(tiny_run, monkeypatch):
    from genre_core.evaluation import bundle

    monkeypatch.setattr(bundle, "available", lambda: False)
    app = page("classify").run()
    assert not app.exception
    assert texts(app.info)[0].startswith("No model yet: the bundled model is missing and no run has finished.")


def test_classify_page_defaults_to_the_bundled_model_on_a_fresh_clone(isolated_artifacts):
    app = page("classify").run()
    assert not app.exception
    picker = app.selectbox(key="classify_run")
    assert picker.value == "bundled" and picker.options == ["Bundled real-painting model (WikiArt, 10 genres)"]
    assert texts(app.info) == ["Drop one or more paintings (JPEG, PNG, WebP, ...) to classify them."]


def test_classify_page_classifies_good_files_and_names_bad_ones(tiny_run, monkeypatch):
    from app_support import uploads

    write_tiny_model(tiny_run / "model.keras", 32, len(TINY_GENRES))
    monkeypatch.setattr(uploads, "MAX_UPLOAD_PIXELS", 5000)
    app = page("classify").run()
    assert not app.exception
    app.selectbox(key="classify_run").set_value(tiny_run.name).run()  # the run, not the bundled model
    assert texts(app.info) == ["Drop one or more paintings (JPEG, PNG, WebP, ...) to classify them."]
    app.get_by_key("classify_files").set_value(
        [
            ("portrait.png", png_bytes(make_tiny_image("portrait", 1)), "image/png"),
            ("broken.jpg", b"not an image at all", "image/jpeg"),
            ("huge.png", png_bytes(Image.new("RGB", (100, 100))), "image/png"),
            ("landscape.png", png_bytes(make_tiny_image("landscape", 2)), "image/png"),
        ]
    )
    app.slider(key="classify_top_k").set_value(2).run()
    assert not app.exception
    assert texts(app.error) == [
        "broken.jpg: not an image file Pillow can read",
        "huge.png: 100x100 = 10,000 pixels is over the limit of 5,000",
    ]
    table = table_with(app, "file", "error")
    assert list(table["file"]) == ["portrait.png", "broken.jpg", "huge.png", "landscape.png"]
    assert list(table.columns) == ["file", "genre_1", "probability_1", "genre_2", "probability_2", "error"]
    good = table[table["error"] == ""]
    assert len(good) == 2 and set(good["genre_1"]) <= set(TINY_GENRES)
    assert (good["probability_1"] >= good["probability_2"]).all()
    # Each good painting shows the picture and its Grad-CAM overlay.
    captions = [caption for image in app.image for caption in image.captions]
    assert captions == ["portrait.png", "Grad-CAM", "landscape.png", "Grad-CAM"]
    assert app.get_by_key("classify_download").label == "Download CSV"


# ---------------------------------------------------------------------------------------------------------
# GAN page


def test_gan_page_renders_its_guard_or_form(isolated_artifacts):
    app = page("gan").run()
    assert not app.exception
    assert app.title[0].value == "GAN"


def test_gan_page_guard_without_runs(isolated_artifacts, tiny_dataset_dir):
    state.set_active_dataset(str(tiny_dataset_dir))
    app = page("gan").run()
    assert not app.exception
    assert texts(app.info) == ["No GAN runs yet. Fill in the form in the sidebar and press **Start GAN training**."]
    assert app.selectbox(key="gan_genre").options == list(TINY_GENRES)


def test_gan_page_launches_a_job(isolated_artifacts, tiny_dataset_dir, monkeypatch):
    from genre_core.gan.trainer import GanConfig
    from genre_core.runs import jobs, store

    launched = []

    def start(kind, config, background=False, progress=None):
        assert kind == "gan" and background
        launched.append(config)
        return store.create_run("gan", config, classes=config["genres"] or [config["genre"]])

    monkeypatch.setattr(jobs, "start", start)
    state.set_active_dataset(str(tiny_dataset_dir))
    app = page("gan").run()
    app.selectbox(key="gan_genre").set_value("portrait")
    app.number_input(key="gan_epochs").set_value(2)
    app.selectbox(key="gan_image_size").set_value(32)
    app.sidebar.button[0].click().run()
    assert not app.exception
    (config,) = launched
    assert (config["genre"], config["epochs"], config["image_size"], config["conditional"]) == ("portrait", 2, 32, False)
    assert config["genres"] == [] and config["holdout"] == GanConfig.holdout
    assert GanConfig.from_dict(config).validate().to_dict()["data"] == str(tiny_dataset_dir)  # a valid config
    assert state.read_state()["active_gan_run"] == app.selectbox(key="gan_run").value
    # A conditional run on two of the genres.
    app.toggle(key="gan_conditional").set_value(True)
    app.multiselect(key="gan_genres").set_value(["portrait", "landscape"])
    app.selectbox(key="gan_holdout").set_value("stratified")
    app.sidebar.button[0].click().run()
    assert not app.exception
    assert launched[-1]["holdout"] == "stratified"
    assert (launched[-1]["conditional"], launched[-1]["genre"], launched[-1]["genres"]) == (True, None, ["portrait", "landscape"])
    assert GanConfig.from_dict(launched[-1]).validate().genres == ["portrait", "landscape"]


def test_gan_page_samples_interpolates_and_shows_kid(isolated_artifacts):
    from app_support.testing import write_gan_run
    from genre_core.gan import trainer

    folder = write_gan_run("20260101-000000-landscape-gan1", epochs=3, image_size=16)
    app = page("gan").run()
    assert not app.exception, app.exception
    # The fixed-space KID and recognisability charts a judged run has (st.line_chart takes no key).
    assert {"KID, fixed space (lower is better)", "Recognised as the genre",
            "Diversity (1 = as spread out as real images)", "Stripes (1 = as real images)"} <= {
        item.value for item in app.subheader}
    assert not app.dataframe  # one genre: its diversity is the run's line, no per-genre table
    assert any("block5 the layout" in item.value for item in app.caption)  # the KID by depth under it
    assert not any("keeps the better generator" in item.value for item in app.caption)  # an EMA-only run
    assert app.select_slider(key="gan_epoch").value == 3
    app.number_input(key="gan_sample_n").set_value(4)
    app.number_input(key="gan_sample_seed").set_value(7)
    app.slider(key="gan_steps").set_value(5).run()
    assert not app.exception
    sample_url, strip_url = app.image[1].value[0], app.image[2].value[0]
    assert sample_url != strip_url
    # The page shows exactly what the core generates for that seed: a 2 x 2 grid of 16-px images.
    expected = trainer.grid(trainer.sample(folder, n=4, seed=7), columns=2)
    assert expected.shape == (34, 34, 3)
    assert [image.captions[0] for image in app.image] == [
        "epoch 3 (fixed latent batch)", "4 samples, seed 7", "seed 0 → seed 1"]
    assert app.get_by_key("gan_sample_download").label == "Download PNG"


def test_gan_page_shows_both_generators_of_a_better_of_two_run(isolated_artifacts):
    """A run with sampled_generator "better" gets both generators' fixed-space KID and how often each was kept."""
    import pandas as pd

    from app_support.testing import write_gan_run
    from genre_core.util.fileio import atomic_write_csv

    folder = write_gan_run("20260101-000000-landscape-gan1", epochs=3, image_size=16)
    history = pd.read_csv(folder / "history.csv")
    history["generator"] = ["ema", "trained", "trained"]
    history["kid_fixed_ema"], history["kid_fixed_trained"] = [0.5, 0.3, 0.2], [0.6, 0.25, 0.12]
    atomic_write_csv(folder / "history.csv", history)
    app = page("gan").run()
    assert not app.exception, app.exception
    assert any("the trained one was kept at 2 of 3 measured epochs" in item.value for item in app.caption)


def test_gan_page_says_how_the_whole_picture_heads_share_rose(isolated_artifacts):
    """A run with a scheduled whole-picture head share gets one caption with its first and last share; others none."""
    import pandas as pd

    from app_support.testing import write_gan_run
    from genre_core.util.fileio import atomic_write_csv

    folder = write_gan_run("20260101-000000-landscape-gan1", epochs=3, image_size=16)
    app = page("gan").run()
    assert not app.exception, app.exception
    assert not any("whole-picture head" in item.value for item in app.caption)
    history = pd.read_csv(folder / "history.csv")
    history["global_head_share"] = [0.3, 0.4, 0.5]
    atomic_write_csv(folder / "history.csv", history)
    app = page("gan").run()
    assert not app.exception, app.exception
    assert any("carried 30% of its loss at epoch 1 and 50% at epoch 3" in item.value for item in app.caption)


def test_gan_page_says_where_a_run_rolled_back(isolated_artifacts):
    """A run with `rollback` gets one caption naming each epoch that went back and where to; a run without, none."""
    import pandas as pd

    from app_support.testing import write_gan_run
    from genre_core.util.fileio import atomic_write_csv

    folder = write_gan_run("20260101-000000-landscape-gan1", epochs=3, image_size=16)
    history = pd.read_csv(folder / "history.csv")
    history["rolled_back_to"] = [None, None, None]
    atomic_write_csv(folder / "history.csv", history)
    app = page("gan").run()
    assert not app.exception, app.exception
    assert not any("rolled back" in item.value for item in app.caption)
    history["rolled_back_to"] = [None, 1, None]
    atomic_write_csv(folder / "history.csv", history)
    app = page("gan").run()
    assert not app.exception, app.exception
    assert any("rolled back" in item.value and item.value.endswith("after epoch 2 to epoch 1")
               for item in app.caption)


def test_gan_page_lists_the_runs_kept_scores(isolated_artifacts):
    """A run scored again (`gan score`) shows each score in a table; a run without scores shows none."""
    from app_support.testing import write_gan_run
    import pandas as pd

    from genre_core.gan import score
    from genre_core.util.fileio import atomic_write_csv, atomic_write_json

    folder = write_gan_run("20260101-000000-landscape-gan1", epochs=3, image_size=16)
    app = page("gan").run()
    assert not app.exception, app.exception
    assert not any("Scored again" in item.value for item in app.caption)
    atomic_write_json(folder / score.SCORES_FILE, {"scores": [
        {"reference": "/data/full", "what": "images of /data/full not in demo", "left_out": 3, "checkpoint": "last",
         "samples": 1024, "seed": 0, "kid": 0.042, "scored": "2026-12-07T02:00:00+00:00",
         "per_genre": {"landscape": {"kid": 0.042, "kid_std": 0.004, "n_real": 2692, "n_generated": 1024}}}]})
    app = page("gan").run()
    assert not app.exception, app.exception
    assert any("Scored again" in item.value for item in app.caption)
    table = next(frame.value for frame in app.dataframe if "reference" in frame.value.columns)
    assert table.iloc[0]["reference"] == "/data/full" and table.iloc[0]["n_real"] == 2692
    assert table.iloc[0]["kid"] == 0.042
    # A run whose history has no fixed-space KID (kid_samples 0, or written before it) still lists its scores.
    history = pd.read_csv(folder / "history.csv")
    atomic_write_csv(folder / "history.csv", history.drop(columns=[c for c in history if c.startswith("kid_fixed")]))
    app = page("gan").run()
    assert not app.exception, app.exception
    assert any("Scored again" in item.value for item in app.caption)


def test_gan_page_samples_the_best_or_the_last_generator(isolated_artifacts):
    import shutil

    from app_support.testing import write_gan_run
    from genre_core.gan import trainer
    from genre_core.util import fileio

    folder = write_gan_run("20260101-000000-landscape-gan1", epochs=3, image_size=16)
    app = page("gan").run()
    assert not app.exception, app.exception
    choice = app.radio(key="gan_checkpoint")
    # The last epoch's generator is the default (since stop 62); the best is one click away.
    assert choice.value == "last" and "none kept yet" in choice.format_func("best")
    # A run that kept a best epoch names it; both choices sample without error.
    shutil.copy(folder / trainer.GENERATOR_FILE, folder / trainer.BEST_GENERATOR_FILE)
    fileio.atomic_write_json(folder / trainer.BEST_FILE, {"epoch": 2, "kid": 1.0, "feature_space": "x"})
    app = page("gan").run()
    assert not app.exception, app.exception
    # A record without best_by (written before it) was chosen against the held-out images.
    assert app.radio(key="gan_checkpoint").format_func("best") == (
        "best epoch (2, lowest own-space KID against the held-out images)")
    # Stop 61's "train" records (no score_of) chose in the run's own space; later ones in the fixed space.
    record = {"epoch": 2, "kid": 1.0, "best_by": "train", "score": 0.5}
    for extra, label in (({}, "own-space"), ({"score_of": "kid_fixed_train"}, "fixed-space")):
        fileio.atomic_write_json(folder / trainer.BEST_FILE, {**record, **extra})
        app = page("gan").run()
        assert app.radio(key="gan_checkpoint").format_func("best") == (
            f"best epoch (2, lowest {label} KID against the training images)")
    app.radio(key="gan_checkpoint").set_value("best").run()
    assert not app.exception, app.exception
    (folder / trainer.BEST_FILE).write_text("[]")
    app = page("gan").run()
    assert any("best.json is not a best-epoch record" in item.value for item in app.error)


def test_gan_page_shows_a_conditional_runs_diversity_per_genre(isolated_artifacts):
    from app_support import core
    from app_support.testing import write_gan_run

    folder = write_gan_run("20260101-000000-conditional-gan2", epochs=3, genres=["landscape", "portrait"],
                           with_generator=False)
    app = page("gan").run()
    assert not app.exception, app.exception
    assert "Diversity (1 = as spread out as real images)" in [item.value for item in app.subheader]
    # The latest epoch's numbers per genre, as the run wrote them to quality.json.
    (table,) = app.dataframe
    assert list(table.value.index) == ["landscape", "portrait"]
    assert list(table.value["diversity"]) == pytest.approx([0.90, 0.80])
    assert list(table.value["recognised"]) == pytest.approx([0.55, 0.55])
    assert "epoch 3, per genre" in " ".join(item.value for item in app.caption)
    # The chart draws one line per genre and the real images' level.
    figure = charts.diversity_figure(core.read_history(folder), core.gan_quality_by_genre(folder))
    assert [trace.name for trace in figure.data] == ["landscape", "portrait"]
    assert list(figure.data[1].y) == pytest.approx([0.50, 0.65, 0.80])
    assert [shape.y0 for shape in figure.layout.shapes] == [1.0]


def test_kid_figure_draws_the_training_images_kid_when_the_run_measured_it():
    history = pd.DataFrame({"epoch": [1, 2, 3], "kid": [3.0, 2.0, 2.5], "kid_std": [0.1] * 3})
    assert [trace.name for trace in charts.kid_figure(history).data] == ["against held-out images"]
    history["kid_train"] = [2.5, 1.0, None]
    figure = charts.kid_figure(history)
    assert [trace.name for trace in figure.data] == ["against held-out images",
                                                     "against training images (chooses the best epoch)"]
    assert list(figure.data[1].y) == [2.5, 1.0] and list(figure.data[1].x) == [1, 2]
    # From stop 62 the fixed space against the training images chooses: its chart names it, the own-space one not.
    history["kid_fixed"], history["kid_fixed_std"], history["kid_fixed_train"] = [0.3, 0.2, 0.1], [0.01] * 3, [0.2] * 3
    assert [trace.name for trace in charts.kid_figure(history).data] == ["against held-out images",
                                                                         "against training images"]
    figure = charts.kid_figure(history, "kid_fixed")
    assert [trace.name for trace in figure.data] == ["against held-out images",
                                                     "against training images (chooses the best epoch)"]
    assert list(figure.data[0].y) == [0.3, 0.2, 0.1] and list(figure.data[0].error_y.array) == [0.01] * 3


def test_compare_figure_draws_one_line_per_run_from_the_long_curves_table():
    curves = pd.DataFrame({"run": ["b", "b", "a", "a", "a"], "epoch": [1, 2, 1, 2, 1],
                           "metric": ["loss", "loss", "loss", "loss", "val_accuracy"],
                           "value": [0.9, 0.7, 1.0, 0.8, 0.5]})
    figure = charts.compare_figure(curves, "loss")
    assert [(trace.name, list(trace.y)) for trace in figure.data] == [("a", [1.0, 0.8]), ("b", [0.9, 0.7])]
    assert figure.layout.yaxis.title.text == "loss"


def test_gan_page_compares_runs(isolated_artifacts):
    from app_support.testing import write_gan_run

    first = write_gan_run("20260101-000000-landscape-gan1", epochs=3, with_generator=False)
    second = write_gan_run("20260101-000001-landscape-gan2", epochs=2, with_generator=False, seed=1)
    app = page("gan").run()
    assert not app.exception, app.exception
    assert app.multiselect(key="gan_compare").value == [second.name]  # the newest run, alone: nothing to compare
    app.multiselect(key="gan_compare").set_value([first.name, second.name]).run()
    assert not app.exception, app.exception
    (table,) = [frame.value for frame in app.dataframe]
    assert list(table["run"]) == [first.name, second.name] and list(table["epochs"]) == [3, 2]
    assert list(table["kid_fixed"]) == pytest.approx([0.12, 0.12]) and list(table["seed"]) == [0, 1]
    assert list(table["late_climb"]) == [0.0, 0.0]  # both fell at every epoch
    assert list(table["late_mean"]) == pytest.approx([0.12, 0.12])  # the last third of 3 or 2 epochs: the last
    assert any("late_mean: the mean fixed-space KID over the last third" in caption.value for caption in app.caption)
    assert app.selectbox(key="gan_compare_metric").value == "kid_fixed"
    app.selectbox(key="gan_compare_metric").set_value("recognised").run()
    assert not app.exception


def test_demo_run_button_starts_the_small_demo_training(isolated_artifacts, tiny_dataset_dir, fake_start_run):
    state.set_active_dataset(str(tiny_dataset_dir))
    app = page("evaluate").run()
    assert texts(app.info)[0].startswith("No finished run with test predictions yet.")
    app.button(key="demo_train").click().run()
    assert not app.exception
    (config,) = fake_start_run
    assert (config.data, config.model, config.epochs, config.size) == ("demo", "hed_vgg16", 40, 96)
    # The offer turns into the live job panel of that run (here: epoch 1 of 40 running).
    app.run()
    assert texts(app.info)[-1] == "A training job is running; every page will have results to show when it finishes."
    assert [bar.text for bar in app.get("progress")][0].startswith("epoch 1/40")


def test_dataset_page_prepares_the_cache_as_a_background_job(isolated_artifacts, tiny_dataset_dir):
    from genre_core.runs import jobs, store

    state.set_active_dataset(str(tiny_dataset_dir))
    app = page("dataset").run()
    app.number_input(key="prepare_size").set_value(32)
    (prepare,) = [button for button in app.button if button.label == "Prepare"]
    prepare.click().run()
    assert not app.exception
    (row,) = store.list_runs("prepare")
    assert row["data"] == str(tiny_dataset_dir)
    assert jobs.wait(row["path"], timeout=60)["state"] == "finished"
    app.run()
    assert f"{row['id']} finished." in texts(app.success)
    assert (isolated_artifacts / "cache").is_dir() and any((isolated_artifacts / "cache").iterdir())


def test_a_stalled_job_shows_as_stalled_in_its_panel_and_the_sidebar(isolated_artifacts):
    from datetime import datetime, timedelta, timezone

    from genre_core.runs import heartbeat, store

    run = store.create_run("selftest", {"epochs": 5})
    # A live process (this one) whose heartbeat is an hour old. Nothing here clicks Cancel: it would signal it.
    run.update_status(state="running", pid=os.getpid(), pid_start=heartbeat.process_start_time(os.getpid()),
                      stall_seconds=60, message="epoch 2/5, batch 3/4", epoch=1, epochs=5,
                      heartbeat=(datetime.now(timezone.utc) - timedelta(hours=1)).isoformat())
    script = f"""
from app_support import jobs_ui, sidebar
sidebar.status_panel()
jobs_ui.job_panel({str(run.path)!r}, key="stalled")
"""
    app = AppTest.from_string(script, default_timeout=TIMEOUT).run()
    assert not app.exception
    (warning,) = app.warning
    assert warning.value.startswith(f"{run.id} stalled: no progress for 36") and "last: epoch 2/5, batch 3/4" in warning.value
    assert any(f"`{run.id}`: stalled, no progress for" in caption.value for caption in app.sidebar.caption)
    assert [button.label for button in app.button] == ["Cancel"]
