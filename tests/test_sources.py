"""Dataset sources on tiny generated data: PBN, ArtGAN, folder, CSV, Parquet, demo; detection; fingerprints."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from genre_core.data import genres, sources
from genre_core.data.images import ImageError, load_rgb
from genre_core.data.sources import detect_source, load_dataset, read_image_bytes


def save_image(path: Path, color=(120, 60, 30), size=(12, 10)) -> Path:
    """Write a small solid-colour JPEG/PNG (by suffix) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def png_bytes(color, size=(9, 7)) -> bytes:
    """Encode a solid-colour PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------------
# Genre vocabularies


def test_genre_vocabularies():
    assert len(genres.PBN_GENRES) == 42 and len(set(genres.PBN_GENRES)) == 42
    assert genres.PBN_GENRES[:4] == ("portrait", "landscape", "genre painting", "abstract")
    assert genres.PBN_GENRES[-1] == "urushi-e"
    assert "nude painting (nu)" in genres.PBN_GENRES
    assert len(genres.ARTGAN_GENRES) == 10
    assert set(genres.PBN_TO_ARTGAN) <= set(genres.PBN_GENRES)
    assert sorted(genres.PBN_TO_ARTGAN.values()) == sorted(genres.ARTGAN_GENRES)
    assert set(genres.PBN_TO_ARTGAN_BROAD.values()) <= set(genres.ARTGAN_GENRES)


def test_map_genre():
    assert genres.map_genre("nude painting (nu)", "artgan") == "nude_painting"
    assert genres.map_genre("Still Life", "artgan") == "still_life"
    assert genres.map_genre("self-portrait", "artgan") is None
    assert genres.map_genre("self-portrait", "artgan", broad=True) == "portrait"
    assert genres.map_genre("veduta", "artgan", broad=True) == "cityscape"
    assert genres.map_genre("marina", "artgan", broad=True) == "landscape"
    assert genres.map_genre("abstract_painting", "pbn") == "abstract"
    assert genres.map_genre("sketch_and_study", "pbn") == "sketch and study"
    assert genres.map_genre("landscape", "artgan") == "landscape"
    assert genres.map_genre("no such genre", "pbn") is None
    with pytest.raises(ValueError, match="unknown genre vocabulary"):
        genres.map_genre("portrait", "imagenet")


# ----------------------------------------------------------------------------------------------------------
# Painter by Numbers


PBN_HEADER = "artist,date,genre,pixelsx,pixelsy,size_bytes,source,style,title,artist_group,in_train,new_filename\n"


@pytest.fixture()
def pbn_dir(tmp_path) -> Path:
    """A partial PBN download: 9 metadata rows, 4 files present, blank genres, an unknown genre, a missing file."""
    root = tmp_path / "pbn"
    rows = [
        ("Monet", "1890.0", "landscape", 120, 80, "True", "1.jpg"),          # present (train)
        ("Monet", "1891.0", "landscape", 120, 80, "True", "2.jpg"),          # missing
        ("Rembrandt", "", "portrait", 90, 120, "False", "3.jpg"),            # present (test)
        ("Nobody", "", "", 10, 10, "True", "4.jpg"),                         # blank genre, file present
        ("Nobody", "", "", 10, 10, "False", "5.jpg"),                        # blank genre, missing
        ("Klimt", "1907", "gold leaf", 50, 50, "True", "6.jpg"),             # unknown genre, present
        ("Monet", "1890.0", "landscape", 120, 80, "True", "1.jpg"),          # duplicate row
        ("X", "", "portrait", 1, 1, "maybe", "7.jpg"),                       # bad in_train
        ("Sargent", "1884", "portrait", 60, 90, "False", "8.jpg"),           # missing
    ]
    lines = [PBN_HEADER] + [
        f"{artist},{date},{genre},{width},{height},1000,wikiart,Impressionism,Title {i},train_and_test,{in_train},{name}\n"
        for i, (artist, date, genre, width, height, in_train, name) in enumerate(rows)
    ]
    root.mkdir()
    (root / "all_data_info.csv").write_text("".join(lines), encoding="utf-8")
    save_image(root / "train" / "1.jpg")
    save_image(root / "test" / "3.jpg")
    save_image(root / "train" / "4.jpg")
    save_image(root / "train" / "6.jpg")
    save_image(root / "train" / "not-listed.jpg")
    return root


def test_pbn_partial_download_counts_everything(pbn_dir):
    dataset = load_dataset(pbn_dir)
    report = dataset.report
    assert dataset.source == "pbn"
    assert report["rows"] == 9
    assert report["no_genre"] == 2
    assert report["missing_files"] == 2  # 2.jpg and 8.jpg (5.jpg has no genre, 7.jpg has a bad in_train)
    assert report["files_present"] == 5  # rows whose file is present: 1, 3, 4, 6 and the duplicate of 1
    assert report["duplicates"] == 1
    assert report["images"] == 3
    assert report["unknown_genres"] == ["gold leaf"]
    assert dataset.classes == ["gold leaf", "landscape", "portrait"]
    assert report["genres"] == 3 and report["rows_per_genre"]["landscape"] == 3
    manifest = dataset.manifest.set_index(dataset.manifest["path"].map(lambda p: Path(p).name))
    assert manifest.loc["1.jpg", "split"] == "train" and manifest.loc["3.jpg", "split"] == "test"
    assert manifest.loc["1.jpg", "artist"] == "Monet" and manifest.loc["1.jpg", "width"] == 120
    assert manifest.loc["3.jpg", "label"] == dataset.classes.index("portrait")
    assert all(Path(path).is_absolute() and Path(path).exists() for path in dataset.manifest["path"])
    problems = "\n".join(report["problems"])
    assert "all_data_info.csv row 2 (train/2.jpg)" in problems
    assert "all_data_info.csv row 8 ('maybe')" in problems
    assert "gold leaf" in problems


def test_pbn_from_the_csv_file_and_detection(pbn_dir):
    assert detect_source(pbn_dir) == "pbn"
    assert detect_source(pbn_dir / "all_data_info.csv") == "pbn"
    dataset = load_dataset(pbn_dir / "all_data_info.csv")
    assert dataset.source == "pbn" and dataset.report["images"] == 3


def test_pbn_train_info_csv_lists_the_train_folder(tmp_path):
    root = tmp_path / "pbn"
    root.mkdir()
    (root / "train_info.csv").write_text("filename,artist,title,style,genre,date\n"
                                          "a.jpg,A,T,Baroque,portrait,1650\nb.jpg,B,T,Baroque,,1650\n")
    save_image(root / "train" / "a.jpg")
    dataset = load_dataset(root)
    assert dataset.source == "pbn"
    assert dataset.manifest["split"].tolist() == ["train"]
    assert dataset.report["no_genre"] == 1


def test_pbn_missing_columns_is_a_clear_error(tmp_path):
    root = tmp_path / "pbn"
    root.mkdir()
    (root / "all_data_info.csv").write_text("artist,genre\nA,portrait\n")
    with pytest.raises(ValueError, match=r"all_data_info\.csv: missing required column"):
        load_dataset(root)


def test_pbn_file_name_escaping_the_root_is_refused(tmp_path):
    root = tmp_path / "pbn"
    root.mkdir()
    (root / "all_data_info.csv").write_text(PBN_HEADER + "A,,portrait,1,1,1,w,s,t,g,True,../../etc/passwd\n")
    with pytest.raises(ValueError, match=r"all_data_info\.csv row 1: .*leaves the dataset root"):
        load_dataset(root)


# ----------------------------------------------------------------------------------------------------------
# ArtGAN WikiArt layout


@pytest.fixture()
def artgan_dir(tmp_path) -> Path:
    """ArtGAN layout: 3 classes, 5 train rows (1 missing, 1 bad index), 2 val rows (1 missing)."""
    root = tmp_path / "wikiart"
    root.mkdir()
    (root / "genre_class").write_text("0 abstract_painting\n1 cityscape\n2 portrait\n")
    (root / "genre_train.csv").write_text(
        "Cubism/pablo-picasso_guitar.jpg,0\n"
        "Impressionism/claude-monet_rouen.jpg,1\n"
        "Baroque/rembrandt_self, with a comma.jpg,2\n"
        "Baroque/absent_file.jpg,2\n"
        "Baroque/rembrandt_other.jpg,7\n"
        "\n"
    )
    (root / "genre_val.csv").write_text("Rococo/boucher_lady.jpg,2\nRococo/missing_one.jpg,2\n")
    for relative in ("Cubism/pablo-picasso_guitar.jpg", "Impressionism/claude-monet_rouen.jpg",
                     "Baroque/rembrandt_self, with a comma.jpg", "Rococo/boucher_lady.jpg",
                     "Baroque/rembrandt_other.jpg"):
        save_image(root / relative)
    return root


def test_artgan_layout(artgan_dir):
    assert detect_source(artgan_dir) == "artgan"
    dataset = load_dataset(artgan_dir)
    report = dataset.report
    assert dataset.source == "artgan"
    assert report["rows"] == 7
    assert report["images"] == 4
    assert report["missing_files"] == 2
    assert report["genres"] == 3
    assert dataset.classes == ["abstract_painting", "cityscape", "portrait"]
    by_name = dataset.manifest.set_index(dataset.manifest["path"].map(lambda p: Path(p).name))
    assert by_name.loc["boucher_lady.jpg", "split"] == "test"  # genre_val is the published held-out split
    assert by_name.loc["pablo-picasso_guitar.jpg", "split"] == "train"
    assert by_name.loc["pablo-picasso_guitar.jpg", "style"] == "Cubism"
    assert by_name.loc["pablo-picasso_guitar.jpg", "artist"] == "pablo-picasso"
    assert by_name.loc["rembrandt_self, with a comma.jpg", "genre"] == "portrait"
    problems = "\n".join(report["problems"])
    assert "genre_train.csv line 5 (index 7)" in problems
    assert "genre_val.csv line 2 (Rococo/missing_one.jpg)" in problems


def test_artgan_bad_class_file_names_the_line(artgan_dir):
    (artgan_dir / "genre_class").write_text("0 abstract_painting\nbroken\n")
    with pytest.raises(ValueError, match=r"genre_class line 2"):
        load_dataset(artgan_dir)


def test_artgan_row_escaping_the_root_is_refused(artgan_dir):
    (artgan_dir / "genre_train.csv").write_text("../outside.jpg,0\n")
    with pytest.raises(ValueError, match=r"genre_train\.csv line 1: .*leaves the dataset root"):
        load_dataset(artgan_dir)


# ----------------------------------------------------------------------------------------------------------
# Folder per genre


def test_folder_per_genre(tiny_dataset_dir):
    assert detect_source(tiny_dataset_dir) == "folder"
    dataset = load_dataset(tiny_dataset_dir)
    assert dataset.source == "folder"
    assert dataset.classes == ["abstract", "landscape", "portrait"]
    assert len(dataset.manifest) == 30 and dataset.report["images"] == 30
    assert dataset.counts().to_dict() == {"abstract": 10, "landscape": 10, "portrait": 10}
    assert set(dataset.manifest["split"]) == {""}
    assert dataset.manifest["label"].tolist() == [dataset.classes.index(g) for g in dataset.manifest["genre"]]
    assert list(dataset.manifest.columns[:3]) == ["path", "genre", "split"]
    first = dataset.manifest["path"].iloc[0]
    assert load_rgb(read_image_bytes(first), 16).shape == (16, 16, 3)


def test_folder_nested_hidden_empty_and_loose_files(tmp_path):
    root = tmp_path / "paintings"
    save_image(root / "marina" / "a.png")
    save_image(root / "marina" / "deeper" / "b.jpg")
    save_image(root / "marina" / ".hidden.jpg")
    (root / "marina" / "notes.txt").write_text("not an image")
    (root / "marina" / "empty.jpg").write_bytes(b"")
    save_image(root / "veduta" / "c.jpg")
    save_image(root / "loose.jpg")
    dataset = load_dataset(root)
    names = sorted(Path(path).name for path in dataset.manifest["path"])
    assert names == ["a.png", "b.jpg", "c.jpg"]
    assert dataset.report["unreadable"] == 1 and dataset.report["skipped_files"] == 1
    problems = "\n".join(dataset.report["problems"])
    assert "empty.jpg" in problems and "loose.jpg" in problems


def test_folder_with_split_subfolders(tmp_path):
    root = tmp_path / "split_layout"
    save_image(root / "train" / "portrait" / "a.jpg")
    save_image(root / "train" / "landscape" / "b.jpg")
    save_image(root / "validation" / "portrait" / "c.jpg")
    save_image(root / "test" / "landscape" / "d.jpg")
    dataset = load_dataset(root)
    splits = dict(zip(dataset.manifest["path"].map(lambda p: Path(p).name), dataset.manifest["split"]))
    assert splits == {"a.jpg": "train", "b.jpg": "train", "c.jpg": "val", "d.jpg": "test"}
    assert dataset.classes == ["landscape", "portrait"]


# ----------------------------------------------------------------------------------------------------------
# Plain CSV


@pytest.fixture()
def csv_dir(tmp_path) -> Path:
    """A folder of images plus files.csv: good rows, blank genre, unknown genre, missing file, duplicate, bad split."""
    root = tmp_path / "csvset"
    save_image(root / "img" / "a.jpg")
    save_image(root / "img" / "b.jpg")
    save_image(root / "img" / "c.jpg")
    save_image(root / "img" / "d.jpg")
    (root / "files.csv").write_text(
        "path,genre,split,artist\n"
        "img/a.jpg,portrait,train,Ann\n"
        "img/b.jpg,landscape,test,Bob\n"
        "img/c.jpg,,train,Cy\n"
        "img/d.jpg,space opera,val,Di\n"
        "img/zzz.jpg,portrait,train,Ed\n"
        "img/a.jpg,portrait,train,Ann\n"
        "img\\b.jpg,landscape,holdout-ish,Bob\n"
    )
    return root


def test_csv_with_bad_rows(csv_dir):
    assert detect_source(csv_dir / "files.csv") == "csv"
    dataset = load_dataset(csv_dir / "files.csv")
    report = dataset.report
    assert dataset.source == "csv"
    assert report["rows"] == 7
    assert report["no_genre"] == 1
    assert report["missing_files"] == 1
    assert report["duplicates"] == 2  # the repeated a.jpg, and img\b.jpg (same file as img/b.jpg)
    assert report["images"] == 3
    assert report["unknown_genres"] == ["space opera"]
    assert dataset.classes == ["landscape", "portrait", "space opera"]
    by_name = dataset.manifest.set_index(dataset.manifest["path"].map(lambda p: Path(p).name))
    assert by_name.loc["d.jpg", "split"] == "val" and by_name.loc["b.jpg", "split"] == "test"
    assert by_name.loc["a.jpg", "artist"] == "Ann"
    problems = "\n".join(report["problems"])
    assert "files.csv row 5 (img/zzz.jpg)" in problems
    assert "files.csv row 4 ('space opera')" in problems
    assert "files.csv row 7 ('holdout-ish')" in problems


@pytest.mark.parametrize("bad_path, message", [
    ("../outside.jpg", "leaves the dataset root"),
    ("img/../../outside.jpg", "leaves the dataset root"),
    ("/etc/passwd", "absolute path"),
    ("C:\\\\Windows\\\\x.jpg", "absolute path"),
])
def test_csv_paths_leaving_the_root_are_refused_naming_the_row(csv_dir, bad_path, message):
    (csv_dir.parent / "outside.jpg").write_bytes(png_bytes((1, 2, 3)))
    (csv_dir / "bad.csv").write_text(f"path,genre\nimg/a.jpg,portrait\n\"{bad_path}\",portrait\n")
    with pytest.raises(ValueError, match=rf"bad\.csv row 2: .*{message}"):
        load_dataset(csv_dir / "bad.csv")


def test_csv_inner_dotdot_that_stays_inside_is_fine(csv_dir):
    (csv_dir / "ok.csv").write_text("path,genre\nimg/../img/a.jpg,portrait\n")
    assert load_dataset(csv_dir / "ok.csv").report["images"] == 1


def test_csv_missing_required_columns(csv_dir):
    (csv_dir / "nogenre.csv").write_text("path,artist\nimg/a.jpg,Ann\n")
    with pytest.raises(ValueError, match=r"nogenre\.csv: missing required column\(s\) genre; found columns: path, artist"):
        load_dataset(csv_dir / "nogenre.csv")


def test_csv_latin1_is_read_with_a_reported_problem(csv_dir):
    (csv_dir / "latin.csv").write_bytes("path,genre,artist\nimg/a.jpg,portrait,Bernard Buffet Ã©\nimg/b.jpg,portrait,Gérôme\n"
                                        .encode("latin-1", errors="replace"))
    dataset = load_dataset(csv_dir / "latin.csv")
    assert dataset.report["images"] == 2
    assert "Gérôme" in dataset.manifest["artist"].tolist()
    assert any("latin.csv: not valid UTF-8" in problem for problem in dataset.report["problems"])


def test_csv_label_column_alias_and_empty_file(csv_dir):
    (csv_dir / "alias.csv").write_text("filename,label\nimg/a.jpg,portrait\n")
    assert load_dataset(csv_dir / "alias.csv", source="csv").classes == ["portrait"]
    (csv_dir / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"empty\.csv: the file is empty"):
        load_dataset(csv_dir / "empty.csv", source="csv")


CSV_ALPHABET = st.sampled_from(list("ab,\"\n/.\\: éx\x00\t") + ["path", "genre", "split", "..", "img/a.jpg", "train"])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(CSV_ALPHABET, max_size=40).map("".join), encoding=st.sampled_from(["utf-8", "latin-1"]))
def test_random_csv_contents_only_ever_raise_value_error(csv_dir, text, encoding):
    target = csv_dir / "random.csv"
    target.write_bytes(text.encode(encoding, errors="replace"))
    for source in ("csv", "pbn"):
        try:
            dataset = load_dataset(target, source=source)
        except ValueError:
            continue
        assert all(Path(path).resolve().is_relative_to(csv_dir.resolve()) for path in dataset.manifest["path"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(train=st.lists(CSV_ALPHABET, max_size=30).map("".join), classes=st.lists(CSV_ALPHABET, max_size=12).map("".join))
def test_random_artgan_files_only_ever_raise_value_error(artgan_dir, train, classes):
    (artgan_dir / "genre_train.csv").write_text(train, encoding="utf-8")
    (artgan_dir / "genre_class").write_text(classes + "\n0 portrait\n", encoding="utf-8")
    try:
        load_dataset(artgan_dir, source="artgan")
    except ValueError:
        pass


# ----------------------------------------------------------------------------------------------------------
# Parquet (a Hugging Face WikiArt export written here with pyarrow)


def write_hf_parquet(path: Path, colors, labels, names, image_as_struct=True, with_metadata=True) -> Path:
    """Write a parquet file shaped like a Hugging Face `datasets` export: image struct + ClassLabel genre."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = [png_bytes(color) for color in colors]
    if image_as_struct:
        image_column = pa.array([{"bytes": data, "path": f"{i}.png"} for i, data in enumerate(images)],
                                type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    else:
        image_column = pa.array(images, type=pa.binary())
    table = pa.table({"image": image_column, "genre": pa.array(labels, type=pa.int64()),
                      "artist": pa.array([0] * len(labels), type=pa.int64())})
    if with_metadata:
        features = {"image": {"_type": "Image"}, "genre": {"names": names, "_type": "ClassLabel"},
                    "artist": {"names": ["Unknown Artist"], "_type": "ClassLabel"}}
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=2)
    return path


def test_parquet_with_hugging_face_label_names(tmp_path):
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30), (200, 200, 0)]
    names = ["abstract_painting", "cityscape", "portrait", "Unknown Genre"]
    file = write_hf_parquet(tmp_path / "hf" / "train-00000-of-00001.parquet", colors, [0, 2, 1, 3, 9], names)
    assert detect_source(file) == "parquet" and detect_source(file.parent) == "parquet"
    dataset = load_dataset(file)
    assert dataset.source == "parquet"
    assert dataset.report["rows"] == 5
    assert dataset.report["no_genre"] == 1  # "Unknown Genre"
    assert dataset.report["images"] == 3  # label 9 is out of range
    assert any("row 4 (label 9)" in problem for problem in dataset.report["problems"])
    assert dataset.manifest["path"].tolist() == [f"{file.resolve()}#{row}" for row in (0, 1, 2)]
    assert dataset.manifest["genre"].tolist() == ["abstract_painting", "portrait", "cityscape"]
    assert set(dataset.manifest["split"]) == {"train"}
    assert dataset.manifest["artist"].tolist() == ["Unknown Artist"] * 3
    # Rows are read back out of the file (row 2 is in the second row group).
    for row, color in ((0, (255, 0, 0)), (2, (0, 0, 255)), (1, (0, 255, 0))):
        assert load_rgb(read_image_bytes(f"{file.resolve()}#{row}"))[3, 3].tolist() == list(color)
    with pytest.raises(ImageError, match="out of range"):
        read_image_bytes(f"{file.resolve()}#99")


def test_parquet_folder_raw_bytes_and_sidecar_label_names(tmp_path):
    folder = tmp_path / "export"
    write_hf_parquet(folder / "data" / "train-00000-of-00001.parquet", [(1, 1, 1), (2, 2, 2)], [0, 1], [],
                     image_as_struct=False, with_metadata=False)
    write_hf_parquet(folder / "data" / "test-00000-of-00001.parquet", [(3, 3, 3)], [1], [],
                     image_as_struct=False, with_metadata=False)
    (folder / "label_names.txt").write_text("landscape\nportrait\n")
    dataset = load_dataset(folder)
    assert dataset.classes == ["landscape", "portrait"]
    assert sorted(dataset.manifest["split"]) == ["test", "train", "train"]
    test_path = dataset.manifest.loc[dataset.manifest["split"] == "test", "path"].item()
    assert load_rgb(read_image_bytes(test_path))[0, 0].tolist() == [3, 3, 3]


def test_parquet_without_label_names_uses_numbers_and_says_so(tmp_path):
    file = write_hf_parquet(tmp_path / "bare.parquet", [(5, 5, 5)], [4], [], with_metadata=False)
    dataset = load_dataset(file)
    assert dataset.classes == ["4"]
    assert any("no label names" in problem for problem in dataset.report["problems"])


def test_damaged_parquet_is_a_value_error(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match=r"bad\.parquet: not a readable Parquet file"):
        load_dataset(bad)


def test_read_image_bytes_errors_name_the_path(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        read_image_bytes(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="cannot read the Parquet file"):
        read_image_bytes(f"{tmp_path}/nope.parquet#3")


# ----------------------------------------------------------------------------------------------------------
# Demo, detection, fingerprint


def test_demo_word_loads_the_bundled_demo_as_a_folder(tmp_path, monkeypatch):
    root = tmp_path / "demo_images"
    save_image(root / "landscape" / "a.jpg")
    save_image(root / "portrait" / "b.jpg")
    calls = []

    def fake_ensure_demo(root_argument=None, progress=None):
        calls.append(root_argument)
        return root

    from genre_core.data import demo

    monkeypatch.setattr(demo, "ensure_demo", fake_ensure_demo)
    assert detect_source("demo") == "demo"
    dataset = load_dataset("demo")
    assert dataset.source == "demo" and dataset.name == "demo"
    assert dataset.classes == ["landscape", "portrait"]
    assert load_dataset(root, source="demo").source == "demo"
    assert len(calls) == 2


def test_detection_errors(tmp_path, pbn_dir, artgan_dir):
    with pytest.raises(ValueError, match="does not exist"):
        detect_source(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"cannot tell the dataset format .*found readme\.txt.*source="):
        detect_source(empty)
    (artgan_dir / "all_data_info.csv").write_text((pbn_dir / "all_data_info.csv").read_text())
    with pytest.raises(ValueError, match=r"ambiguous.*source= one of pbn, artgan"):
        load_dataset(artgan_dir)
    assert load_dataset(artgan_dir, source="artgan").source == "artgan"
    with pytest.raises(ValueError, match="unknown dataset source 'imagenet'"):
        load_dataset(artgan_dir, source="imagenet")
    with pytest.raises(ValueError, match="expected a .csv or .parquet file"):
        detect_source(artgan_dir / "genre_class")


def test_fingerprint_changes_with_files_and_metadata_only(tmp_path):
    root = tmp_path / "fp"
    save_image(root / "a" / "1.jpg")
    save_image(root / "b" / "2.jpg")
    first = load_dataset(root).fingerprint
    assert load_dataset(root).fingerprint == first
    save_image(root / "b" / "3.jpg")
    second = load_dataset(root).fingerprint
    assert second != first
    stat = (root / "b" / "3.jpg").stat()
    os.utime(root / "b" / "3.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000_000))
    assert load_dataset(root).fingerprint != second
    (root / "list.csv").write_text("path,genre\na/1.jpg,x\n")
    csv_first = load_dataset(root / "list.csv").fingerprint
    (root / "list.csv").write_text("path,genre\na/1.jpg,y\n")
    assert load_dataset(root / "list.csv").fingerprint != csv_first


def test_pbn_presence_check_lists_folders_once(pbn_dir, monkeypatch):
    calls = []
    real_scandir = os.scandir

    def counting_scandir(path=".", *args):
        calls.append(str(path))
        return real_scandir(path, *args)

    monkeypatch.setattr(sources.os, "scandir", counting_scandir)
    load_dataset(pbn_dir, source="pbn")
    # The root (to find train/ and test/) for each split, then each folder once: no per-row calls.
    assert len(calls) <= 4


def test_manifest_matches_the_dataset_contract(tiny_dataset_dir, pbn_dir, artgan_dir, csv_dir):
    for dataset in (load_dataset(tiny_dataset_dir), load_dataset(pbn_dir), load_dataset(artgan_dir),
                    load_dataset(csv_dir / "files.csv")):
        manifest = dataset.manifest
        assert list(manifest.columns[:3]) == ["path", "genre", "split"] and "label" in manifest.columns
        assert set(manifest["split"]) <= {"train", "val", "test", ""}
        assert dataset.classes == sorted(set(manifest["genre"]))
        assert not manifest["path"].duplicated().any()
        for key in ("source", "rows", "images", "missing_files", "no_genre", "duplicates", "genres", "problems"):
            assert key in dataset.report
        assert isinstance(dataset.report["problems"], list)
        assert len(dataset.fingerprint) == 32
        json.dumps(dataset.report)
        assert isinstance(manifest, pd.DataFrame) and np.issubdtype(manifest["label"].dtype, np.integer)


def test_map_dataset_genres_to_artgan(pbn_dir):
    dataset = load_dataset(pbn_dir)
    mapped = sources.map_dataset_genres(dataset, "artgan")
    assert mapped.classes == ["landscape", "portrait"]
    assert mapped.manifest["label"].tolist() == [mapped.classes.index(g) for g in mapped.manifest["genre"]]
    assert mapped.report["genre_mapping"]["unmapped"] == ["gold leaf"]
    assert mapped.report["images"] == 2 and mapped.fingerprint != dataset.fingerprint
    assert any("no artgan counterpart: gold leaf" in problem for problem in mapped.report["problems"])
    assert len(dataset.manifest) == 3  # the original is unchanged


def test_keep_genres_keeps_rows_in_order_with_new_labels_and_fingerprint(tiny_dataset_dir):
    dataset = load_dataset(tiny_dataset_dir)
    assert len(dataset.classes) >= 2
    wanted = dataset.classes[-1]
    kept = sources.keep_genres(dataset, [wanted])
    assert kept.classes == [wanted] and set(kept.manifest["genre"]) == {wanted}
    # Manifest order is kept, so a seeded split of the genre picks the same rows as in the whole dataset.
    assert kept.manifest["path"].tolist() == dataset.manifest.loc[dataset.manifest["genre"] == wanted, "path"].tolist()
    assert kept.manifest["label"].tolist() == [0] * len(kept.manifest)
    assert kept.report["images"] == len(kept.manifest) and kept.fingerprint != dataset.fingerprint
    assert sources.keep_genres(dataset, dataset.classes) is dataset  # nothing to drop
    assert len(dataset.manifest) > len(kept.manifest)  # the original is unchanged
    with pytest.raises(ValueError, match="'fresco' is not in"):
        sources.keep_genres(dataset, [wanted, "fresco"])
