"""The `data` CLI: info (text and JSON), prepare, demo, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genre_core.cli import main

PROJECT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """Run `python -m genre_core ...` in this process; return (exit code, stdout, stderr)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_info_text(capsys, tiny_dataset_dir):
    code, out, _err = run_cli(capsys, "data", "info", str(tiny_dataset_dir))
    assert code == 0
    assert "source: folder" in out
    assert "images: 30 usable" in out
    assert "genres: 3" in out
    assert "problems: none" in out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ") and line.split()}
    assert lines["abstract"] == ["10", "10"] and lines["portrait"] == ["10", "10"]


def test_info_json_with_check_finds_unreadable_files(capsys, tmp_path, tiny_dataset_dir):
    root = tmp_path / "mixed"
    for genre in ("abstract", "portrait"):
        (root / genre).mkdir(parents=True)
        for source in sorted((tiny_dataset_dir / genre).iterdir())[:3]:
            (root / genre / source.name).write_bytes(source.read_bytes())
    (root / "portrait" / "broken.jpg").write_text("not a picture")
    (root / "portrait" / "empty.png").write_bytes(b"")
    code, out, err = run_cli(capsys, "data", "info", str(root), "--json", "--check")
    assert code == 0
    report = json.loads(out)
    assert report["source"] == "folder"
    assert report["images"] == 7  # 6 good + broken.jpg (the empty file is left out)
    assert report["unreadable"] == 2 and report["checked"] is True
    assert report["counts"] == {"portrait": {"unsplit": 4}, "abstract": {"unsplit": 3}}
    assert report["classes"] == ["abstract", "portrait"]
    assert any("broken.jpg" in problem for problem in report["problems"])
    assert "checking images" in err


def test_info_on_a_pbn_folder_shows_metadata_rows(capsys, tmp_path):
    root = tmp_path / "pbn"
    (root / "test").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "test" / "1.jpg")
    (root / "all_data_info.csv").write_text(
        "artist,genre,in_train,new_filename\nA,portrait,False,1.jpg\nB,landscape,True,2.jpg\nC,,True,3.jpg\n")
    code, out, _err = run_cli(capsys, "data", "info", str(root))
    assert code == 0
    assert "metadata rows: 3" in out and "rows without a genre: 1" in out and "missing files: 1" in out
    assert "genres: 2 (1 with images)" in out
    assert "no image present (1): landscape" in out


@pytest.mark.parametrize("argv, message", [
    (["data", "info", "/no/such/dataset"], "does not exist"),
    (["data", "info", ".", "--source", "imagenet"], "unknown dataset source 'imagenet'"),
    (["data", "prepare", ".", "--size", "0"], "size"),
    (["data", "prepare", ".", "--policy", "stretch"], "resize policy 'stretch'"),
])
def test_bad_input_exits_non_zero_with_one_line(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code != 0
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and message in err


def test_csv_missing_columns_exits_non_zero(capsys, tmp_path):
    (tmp_path / "list.csv").write_text("file_name,genre_name\na.jpg,portrait\n")
    code, _out, err = run_cli(capsys, "data", "info", str(tmp_path / "list.csv"))
    assert code == 2 and "missing required column(s) path" in err and "list.csv" in err


def test_cli_subprocess_one_line_reason():
    environment = dict(os.environ, PYTHONPATH=str(PROJECT))
    result = subprocess.run([sys.executable, "-m", "genre_core", "data", "info", "/no/such/place"],
                            capture_output=True, text=True, cwd=PROJECT, env=environment, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: dataset path /no/such/place does not exist"


def test_prepare_builds_the_cache_and_lists_failures(capsys, tmp_path, tiny_dataset_dir, isolated_artifacts):
    root = tmp_path / "prep"
    for genre in ("landscape", "portrait"):
        (root / genre).mkdir(parents=True)
        for source in sorted((tiny_dataset_dir / genre).iterdir())[:2]:
            (root / genre / source.name).write_bytes(source.read_bytes())
    (root / "portrait" / "zz_broken.jpg").write_text("not a picture")
    code, out, err = run_cli(capsys, "data", "prepare", str(root), "--size", "24x16", "--policy", "crop",
                             "--workers", "1")
    assert code == 0, err
    folder = Path(out.splitlines()[0].removeprefix("cache: "))
    assert folder.is_dir() and isolated_artifacts in folder.parents
    images = np.load(folder / "images.npy", mmap_mode="r")
    assert images.shape == (5, 16, 24, 3)
    assert "4 images at 24x16 (crop), 1 failed" in out
    assert any(line.startswith("failed: ") and "zz_broken.jpg" in line for line in out.splitlines())
    assert "preparing: 5/5 (100%" in err and "\r" not in err


def test_demo_command_prints_the_folder(capsys, tmp_path, monkeypatch):
    from genre_core.data import demo

    monkeypatch.setattr(demo, "ensure_demo", lambda root=None, progress=None: tmp_path / "demo-here")
    code, out, _err = run_cli(capsys, "data", "demo")
    assert code == 0 and out.strip() == str(tmp_path / "demo-here")


def test_prepare_with_no_usable_images_is_an_error(capsys, tmp_path, isolated_artifacts):
    (tmp_path / "all_data_info.csv").write_text("artist,genre,in_train,new_filename\nA,portrait,True,1.jpg\n")
    code, out, err = run_cli(capsys, "data", "prepare", str(tmp_path), "--size", "16")
    assert code == 2 and out == ""
    assert "no usable images to prepare (1 metadata rows, 1 missing files" in err
