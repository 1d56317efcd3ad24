"""Shared (exposed) mode: loopback detection, dataset roots (outside, '..', symlinks leaving a root) in
genre_core.runs.access, in `data info` with GENRE_DATA_ROOTS, and on the Dataset page (AppTest)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from conftest import write_tiny_folder_dataset
from genre_core.cli import main
from genre_core.runs import access

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from app_support import state  # noqa: E402


@pytest.fixture()
def roots(tmp_path, monkeypatch, tiny_dataset_dir):
    """GENRE_DATA_ROOTS = one root holding a dataset, a '..' path, and a symlink that leaves the root."""
    root = tmp_path / "datasets"
    inside = write_tiny_folder_dataset(root / "paintings", per_genre=2)
    outside = write_tiny_folder_dataset(tmp_path / "private", per_genre=2)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    monkeypatch.setenv("GENRE_DATA_ROOTS", str(root))
    return {"root": root, "inside": inside, "outside": outside, "dotdot": f"{root}/../private",
            "link": root / "escape"}


def refusals(paths: dict) -> dict[str, str]:
    """Each refused path of the `roots` fixture with the expected start of its one-line reason."""
    return {str(paths["outside"]): "outside the allowed folders",
            paths["dotdot"]: "paths with '..' are not accepted",
            str(paths["link"]): "a symbolic link leads outside the allowed folders",
            "/etc": "outside the allowed folders"}


def test_loopback_addresses_and_shared_mode(monkeypatch):
    monkeypatch.delenv("GENRE_SHARED", raising=False)
    for address in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        assert access.is_loopback(address) and not access.shared_mode(address)
    for address in ("0.0.0.0", "", None, "192.168.1.20", "::", "studio.example.org"):
        assert access.shared_mode(address)
    monkeypatch.setenv("GENRE_SHARED", "1")
    assert access.shared_mode("127.0.0.1")


def test_dataset_paths_are_checked_against_the_roots(roots, monkeypatch):
    allowed = access.data_roots()
    assert allowed == [roots["root"].resolve()]
    assert access.check_dataset_path("demo", allowed) == "demo"
    assert access.check_dataset_path(str(roots["inside"]), allowed) == str(roots["inside"])
    for path, reason in refusals(roots).items():
        with pytest.raises(ValueError, match=reason) as caught:
            access.check_dataset_path(path, allowed)
        assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="accepts only the demo dataset"):
        access.check_dataset_path(str(roots["inside"]), None)
    monkeypatch.setenv("GENRE_MAX_QUEUED", "3")
    assert access.max_queued() == 3


def test_data_info_enforces_the_roots_when_set(roots, capsys):
    assert main(["data", "info", str(roots["inside"])]) == 0
    assert "abstract" in capsys.readouterr().out
    for path, reason in refusals(roots).items():
        assert main(["data", "info", path]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path}: ") and reason in err and len(err.strip().splitlines()) == 1
    assert main(["data", "prepare", str(roots["link"]), "--size", "16"]) == 2
    assert "symbolic link" in capsys.readouterr().err


def dataset_page() -> AppTest:
    return AppTest.from_file(str(PROJECT / "app_pages" / "dataset.py"), default_timeout=60)


def choose(app: AppTest, path: str) -> AppTest:
    app.text_input(key="dataset_path").set_value(path)
    return app.button[0].click().run()


def test_dataset_page_in_shared_mode_refuses_paths_outside_the_roots(isolated_artifacts, roots, monkeypatch):
    monkeypatch.setenv("GENRE_SHARED", "1")
    state.set_active_dataset(str(roots["outside"]))  # Chosen before the server was shared.
    app = dataset_page().run()
    assert not app.exception
    assert any("Shared server: this app accepts the demo dataset and paths under" in text.value for text in app.caption)
    assert app.warning[0].value.startswith("The active dataset is not available on this shared server")
    assert str(roots["outside"]) not in app.selectbox(key="dataset_recent").options
    for path, reason in refusals(roots).items():
        choose(app, path)
        assert len(app.error) == 1 and app.error[0].value.startswith(f"{path}: ") and reason in app.error[0].value
        assert state.read_state()["active_dataset"] == str(roots["outside"])
    choose(app, str(roots["inside"]))
    assert not app.error and state.read_state()["active_dataset"] == str(roots["inside"])
    assert {metric.label: metric.value for metric in app.metric}["Images"] == "6"


@pytest.fixture()
def loopback_server():
    """Streamlit's server.address set to 127.0.0.1 (as .streamlit/config.toml does), whatever the cwd."""
    from streamlit import config

    previous = config.get_option("server.address")
    config.set_option("server.address", "127.0.0.1")
    yield
    config.set_option("server.address", previous)


def test_dataset_page_on_localhost_is_unchanged(isolated_artifacts, roots, monkeypatch, loopback_server):
    monkeypatch.delenv("GENRE_SHARED", raising=False)
    app = choose(dataset_page().run(), str(roots["outside"]))
    assert not app.error and state.read_state()["active_dataset"] == str(roots["outside"])
    assert not any("Shared server" in text.value for text in app.caption)


def test_shared_mode_refuses_a_job_when_the_queue_is_full(isolated_artifacts, monkeypatch, tiny_dataset_dir):
    from genre_core.runs import jobs, store

    monkeypatch.setenv("GENRE_SHARED", "1")
    monkeypatch.setenv("GENRE_MAX_QUEUED", "1")
    state.set_active_dataset("demo")
    monkeypatch.setattr(jobs, "waiting_jobs", lambda: [{"id": "someone-else", "state": "queued"}])
    app = dataset_page().run()
    (prepare,) = [button for button in app.button if button.label == "Prepare"]
    prepare.click().run()
    assert [error.value for error in app.error] == [
        "The queue is full: 1 jobs are already waiting (limit 1). Nothing was started; try again when one of them "
        "has started."]
    assert store.list_runs("prepare") == []


def test_the_ui_never_deletes_files():
    """Run deletion stays impossible from the UI: no page or UI helper calls a deleting function."""
    deleting = {"rmtree", "unlink", "remove", "rmdir", "removedirs"}
    for path in [PROJECT / "app.py", *(PROJECT / "app_pages").glob("*.py"), *(PROJECT / "app_support").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr not in deleting, f"{path.name}:{node.lineno} calls {node.func.attr}"


def test_gallery_images_leaving_the_roots_are_not_read_in_shared_mode(isolated_artifacts, roots, monkeypatch):
    from app_support import core

    monkeypatch.setenv("GENRE_SHARED", "1")
    outside_image = next(roots["outside"].rglob("*.png"))
    (roots["inside"] / "portrait" / "linked.png").symlink_to(outside_image)
    grey = core.thumbnail(str(roots["inside"] / "portrait" / "linked.png"), 32, 0.0)
    assert grey.shape == (32, 32, 3) and (grey == 200).all()
    inside_image = next((roots["inside"] / "portrait").glob("portrait_*.png"))
    assert not (core.thumbnail(str(inside_image), 32, 0.0) == 200).all()
