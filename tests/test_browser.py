"""Real-browser tests: Playwright drives Debian's chromium against `streamlit run app.py`.

Three journeys: drop paintings on Classify and see predictions; click a confusion-matrix cell on Evaluate and
see its paintings; launch a training run from the Train sidebar and see it finish. Each page is also saved
as a full-page screenshot: into docs/screenshots/<page>.png for the README when GENRE_UPDATE_SCREENSHOTS=1,
otherwise into the test's temporary artifacts root (so a test run leaves the working tree clean).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from PIL import Image

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
DOC_SCREENSHOTS = PROJECT / "docs" / "screenshots"
RUN_ID = "20260101-000000-small_cnn-browser"
DEMO_TOTAL = 120
DEMO_GENRES = ("abstract", "cityscape", "flower painting", "landscape", "marina", "portrait", "religious painting",
               "still life")
WIDTH = 1280

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium); CI installs it", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")


@contextlib.contextmanager
def artifacts_env(root: Path):
    """Point GENRE_ARTIFACTS at `root` while building fixtures, then restore the session's value."""
    previous = os.environ.get("GENRE_ARTIFACTS")
    os.environ["GENRE_ARTIFACTS"] = str(root)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("GENRE_ARTIFACTS", None)
        else:
            os.environ["GENRE_ARTIFACTS"] = previous


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def app_url(tmp_path_factory):
    """`streamlit run app.py` on a free localhost port over a temp artifacts root holding a small demo-style
    dataset (120 procedural paintings, 8 genres, generated in a few seconds), a finished classifier run with a
    tiny saved model, and a finished GAN run."""
    from app_support import state
    from app_support.testing import write_gan_run, write_run
    from genre_core.data import demo

    base = tmp_path_factory.mktemp("browser")
    root = base / "artifacts"
    # One worker: earlier AppTest runs in this process leave a page script installed as __main__.
    dataset = demo.ensure_demo(base / "paintings", total=DEMO_TOTAL, size=96, workers=1)
    image_paths = sorted(str(p) for p in dataset.rglob("*.jpg"))
    genres = [Path(p).parent.name for p in image_paths]
    with artifacts_env(root):
        write_run(RUN_ID, image_paths, genres, sorted(set(genres)), seed=3, with_model=True, data=str(dataset))
        write_gan_run("20260101-000000-landscape-browser", epochs=3, image_size=32, seed=1)
        state.set_active_dataset(str(dataset))
        state.set_active_run(RUN_ID)
    with streamlit_server(root, base / "streamlit.log") as url:
        yield url


@contextlib.contextmanager
def streamlit_server(root: Path, log_path: Path, **environment: str):
    """`streamlit run app.py` on a free 127.0.0.1 port over the artifacts root `root`; yields its URL."""
    port = free_port()
    environment = dict(os.environ, GENRE_ARTIFACTS=str(root), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
                       **environment)
    log = open(log_path, "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address",
         "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=PROJECT, env=environment, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"streamlit did not start: {log_path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.3)
    try:
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="session")
def browser():
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": WIDTH, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(60_000)
    yield tab
    context.close()


def open_page(page, url: str, name: str, ready_text: str) -> None:
    """Open one app page and wait until `ready_text` shows and the script has stopped running."""
    # The default page (Dataset) lives at the root URL.
    page.goto(f"{url}/{'' if name == 'dataset' else name}")
    page.get_by_text(ready_text, exact=False).first.wait_for()
    settle(page)


def settle(page, quiet_seconds: float = 1.5, timeout: float = 60.0) -> None:
    """Wait until the app's script has not been running for `quiet_seconds` in a row (reruns included)."""
    app = page.locator('[data-testid="stApp"]')
    deadline = time.monotonic() + timeout
    quiet_since = None
    while time.monotonic() < deadline:
        if app.get_attribute("data-test-script-state") == "running":
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_seconds:
            return
        page.wait_for_timeout(250)
    raise AssertionError("the app kept running its script for more than a minute")


def screenshot(page, name: str) -> Path:
    """Save the whole page (the app scrolls inside its main area, so the viewport is stretched to fit)."""
    page.evaluate("document.querySelectorAll('[data-testid=\"stSidebarContent\"], [data-testid=\"stMain\"]')"
                  ".forEach(element => element.scrollTop = 0)")
    height = page.evaluate("Math.max(...Array.from(document.querySelectorAll("
                           "'[data-testid=\"stMain\"], [data-testid=\"stSidebarContent\"]'), e => e.scrollHeight))")
    page.set_viewport_size({"width": WIDTH, "height": max(900, min(int(height) + 40, 6000))})
    page.wait_for_timeout(800)
    folder = DOC_SCREENSHOTS if os.environ.get("GENRE_UPDATE_SCREENSHOTS") == "1" else (
        Path(os.environ["GENRE_ARTIFACTS"]) / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size({"width": WIDTH, "height": 900})
    return path


def test_dataset_and_gan_pages_render(page, app_url):
    open_page(page, app_url, "dataset", "Images per genre")
    page.get_by_text("Gallery").wait_for()
    images_metric = page.locator('[data-testid="stMetric"]').filter(has_text="Images")
    images_metric.wait_for()
    from genre_core.data import demo

    expected = sum(demo.demo_counts(DEMO_TOTAL).values())
    assert images_metric.locator('[data-testid="stMetricValue"]').inner_text() == str(expected)
    assert page.locator('[data-testid="stSidebar"]').get_by_text("Active").is_visible()
    # Clicking a genre's bar opens its gallery (bars are sorted by count, largest first).
    counts = demo.demo_counts(DEMO_TOTAL)
    second = sorted(counts, key=counts.get, reverse=True)[1]
    bars = page.locator(".st-key-dataset_bars .barlayer .point path")
    bars.first.wait_for()
    assert bars.count() == len(counts)
    bars.nth(1).scroll_into_view_if_needed()
    box = bars.nth(1).bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.8)
    captions = page.locator('[data-testid="stImageCaption"]')
    deadline = time.monotonic() + 30
    while not (captions.count() and all(text.startswith(f"{second}_") for text in captions.all_inner_texts())):
        assert time.monotonic() < deadline, f"the gallery did not switch to {second}: {captions.all_inner_texts()}"
        page.wait_for_timeout(250)
    settle(page)
    page.mouse.move(0, 0)
    screenshot(page, "dataset")
    open_page(page, app_url, "gan", "Interpolate between two seeds")
    assert page.get_by_text("epoch 3 (fixed latent batch)").is_visible()
    screenshot(page, "gan")


def test_drop_paintings_and_see_predictions(page, app_url, tmp_path):
    from genre_core.data import demo

    portrait = tmp_path / "portrait.png"
    Image.fromarray(demo.generate_demo_image("portrait", seed=5, size=160)).save(portrait)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a JPEG")
    open_page(page, app_url, "classify", "Drop paintings here")
    # The bundled real-painting model is the default; this journey classifies with the demo-style run.
    model = page.locator(".st-key-classify_run").get_by_role("combobox")
    model.click()
    model.fill(f"run {RUN_ID}")  # the selectbox filters its options as one types
    page.get_by_role("option", name=f"run {RUN_ID}").click()
    settle(page)
    page.locator('input[type="file"]').set_input_files([str(portrait), str(broken)])
    page.get_by_text("Batch results").wait_for(timeout=90_000)
    settle(page)
    # The bad file gets one clear error naming it; the good one is classified with top-k bars and Grad-CAM.
    errors = page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
    assert errors == ["broken.jpg: not an image file Pillow can read"]
    assert page.get_by_text("Grad-CAM", exact=True).first.is_visible()
    assert page.locator(".js-plotly-plot").count() == 1  # the top-k bars of the one good painting
    top_genre = page.locator('[data-testid="stMain"] [data-testid="stMarkdownContainer"] strong').first.inner_text()
    assert top_genre in DEMO_GENRES
    screenshot(page, "classify")


def test_a_fresh_clone_classifies_a_painting_with_the_bundled_model(page, tmp_path):
    """No run and no training: the Classify page answers with the bundled real-painting model."""
    from genre_core.data import demo
    from genre_core.evaluation import bundle
    from genre_core.util import fileio

    classes = fileio.read_json(bundle.folder() / "classes.json")
    painting = tmp_path / "landscape.png"
    Image.fromarray(demo.generate_demo_image("landscape", seed=2, size=300)).save(painting)
    root = tmp_path / "artifacts"
    with streamlit_server(root, tmp_path / "streamlit.log") as url:
        open_page(page, url, "classify", "Drop paintings here")
        picker = page.locator(".st-key-classify_run")
        shown = picker.inner_text() + " ".join(field.input_value() for field in picker.locator("input").all())
        assert "Bundled real-painting model" in shown, shown
        page.locator('input[type="file"]').set_input_files([str(painting)])
        page.get_by_text("Batch results").wait_for(timeout=120_000)
        settle(page)
        top_genre = page.locator('[data-testid="stMain"] [data-testid="stMarkdownContainer"] strong').first.inner_text()
        assert top_genre in classes
        assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    assert not (root / "runs").exists() or not any((root / "runs").iterdir())


def test_click_a_confusion_matrix_cell_and_see_its_paintings(page, app_url):
    open_page(page, app_url, "evaluate", "Confusion matrix")
    page.get_by_text("Compare runs").wait_for()
    settle(page)
    # The default cell is the most-confused pair; clicking the top-left square (abstract, abstract) replaces it.
    points = page.locator(".st-key-eval_confusion .scatterlayer path.point")
    points.first.wait_for()
    assert points.count() == len(DEMO_GENRES) ** 2
    points.nth(0).scroll_into_view_if_needed()
    box = points.nth(0).bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.get_by_text("of true genre abstract predicted as abstract").wait_for(timeout=30_000)
    settle(page)
    captions = page.locator('[data-testid="stImageCaption"]').all_inner_texts()
    assert captions and all(caption.startswith("abstract → abstract (") for caption in captions)
    page.mouse.move(0, 0)  # No hover label in the screenshot.
    # The keyboard pickers follow the click.
    for key in ("eval_true", "eval_predicted"):
        picker = page.locator(f".st-key-{key}")
        shown = picker.inner_text() + " ".join(field.input_value() for field in picker.locator("input").all())
        assert "abstract" in shown, shown
    screenshot(page, "evaluate")


def test_launch_a_training_run_from_the_sidebar_and_see_it_finish(page, app_url):
    open_page(page, app_url, "train", "Queue and history")
    sidebar = page.locator('[data-testid="stSidebar"]')
    # The form defaults to the measured recipe; this test trains the small settings it types in.
    recipe = sidebar.get_by_role("combobox", name="Recipe")
    recipe.click()
    recipe.fill("the settings above")  # the selectbox filters its options as one types
    page.get_by_role("option", name="the settings above").click()
    settle(page)
    assert recipe.input_value() == "the settings above"
    sidebar.get_by_label("Epochs").fill("1")
    sidebar.get_by_label("Image size (px, 0 = the model's default)").fill("32")
    sidebar.get_by_label("Batch size").fill("8")
    sidebar.get_by_role("button", name="Start training").click()
    # The job runs as its own process; the page follows the new run and shows "finished" once it ends.
    finished = page.locator('[data-testid="stAlertContentSuccess"]').filter(has_text="finished.").filter(
        has_not_text=RUN_ID)
    failed = page.locator('[data-testid="stAlertContentError"]')
    progress_seen = []
    deadline = time.monotonic() + 150
    while finished.count() == 0 and failed.count() == 0 and time.monotonic() < deadline:
        progress_seen += page.locator('[data-testid="stProgress"]').all_inner_texts()
        page.wait_for_timeout(500)
    assert failed.count() == 0, failed.first.inner_text()
    assert any(text.startswith("epoch 0/1") for text in progress_seen), progress_seen
    assert finished.count() == 1, "the training run did not finish within 150 s"
    run_id = finished.first.inner_text().split(" finished.")[0].strip()
    assert run_id != RUN_ID and "small_cnn" in run_id
    settle(page)
    screenshot(page, "train")


def test_shared_mode_refuses_a_path_outside_the_data_roots(page, tmp_path):
    from app_support import state
    from conftest import write_tiny_folder_dataset

    roots = tmp_path / "datasets"
    dataset = write_tiny_folder_dataset(roots / "paintings", per_genre=2)
    with artifacts_env(tmp_path / "artifacts"):
        state.set_active_dataset(str(dataset))
    with streamlit_server(tmp_path / "artifacts", tmp_path / "streamlit.log", GENRE_SHARED="1",
                          GENRE_DATA_ROOTS=str(roots)) as url:
        open_page(page, url, "dataset", "Images per genre")
        assert page.get_by_text(f"Shared server: this app accepts the demo dataset and paths under {roots}").is_visible()
        page.locator(".st-key-dataset_path input").fill("/etc")
        page.get_by_role("button", name="Use this dataset").click()
        error = page.locator('[data-testid="stAlertContentError"]')
        error.first.wait_for(timeout=30_000)
        settle(page)
        assert error.all_inner_texts() == [
            f"/etc: outside the allowed folders; a shared server accepts the demo dataset and paths under {roots}"]
        assert page.get_by_text("Images per genre").count() == 0


def test_launch_a_search_from_the_train_page_see_trials_and_open_the_best_run(page, app_url):
    pytest.importorskip("optuna", reason="optuna is in requirements.txt")
    open_page(page, app_url, "train", "Queue and history")
    page.get_by_text("Hyper-parameter search (Optuna)").click()
    form = page.locator('[data-testid="stForm"]').filter(has_text="New search")
    form.get_by_label("Trials", exact=True).fill("3")
    form.get_by_label("Image size (px, 0 = the recipe's)").fill("32")
    form.get_by_label("Most epochs per trial").fill("5")
    form.get_by_role("button", name="Start search").click()
    # The search runs as its own job; its trials appear as they finish, then the best trial's run.
    trials_seen = []
    best = page.get_by_role("button", name="Open best run")
    failed = page.locator('[data-testid="stAlertContentError"]')
    deadline = time.monotonic() + 240
    while best.count() == 0 and failed.count() == 0 and time.monotonic() < deadline:
        trials_seen += [text for text in page.get_by_text(" trials: ").all_inner_texts() if "complete" in text]
        page.wait_for_timeout(500)
    assert failed.count() == 0, failed.first.inner_text()
    assert best.count() == 1, "the search did not finish within 240 s"
    assert any(text.startswith(("1 trials", "2 trials")) for text in trials_seen), trials_seen
    assert page.get_by_text("3 trials: ").count() == 1
    settle(page)
    page.get_by_text("Optimization history").first.wait_for()
    screenshot(page, "search")
    best_id = best.inner_text().split("Open best run")[-1].strip()
    best.click()
    page.get_by_text("Confusion matrix").wait_for(timeout=60_000)
    settle(page)
    assert page.url.endswith("/evaluate")
    picker = page.locator(".st-key-eval_run")
    shown = picker.inner_text() + " ".join(field.input_value() for field in picker.locator("input").all())
    assert best_id in shown, shown
