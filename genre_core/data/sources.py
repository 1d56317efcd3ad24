"""Dataset sources: every format becomes the same `Dataset` (see docs/architecture.md).

Formats:
- "pbn": Painter by Numbers as downloaded from Kaggle: `all_data_info.csv` (or `train_info.csv`) beside
  `train/` and `test/`. `in_train` picks the folder and the split; `new_filename` is the file name.
- "artgan": the ArtGAN WikiArt layout: `genre_class`, `genre_train.csv` (split "train") and `genre_val.csv`
  (the published held-out split, so split "test"), images at `Style/file.jpg`.
- "folder": `root/<genre>/**/*.jpg`, or `root/<split>/<genre>/**` when every top folder is a split name.
- "csv": a plain CSV with a path and a genre column (optional split); paths are relative to the CSV's folder.
- "parquet": a local Parquet export of a Hugging Face WikiArt dataset (a file or a folder of them).
- "demo": the bundled demo dataset (`genre_core.data.demo.ensure_demo()`), read as a folder.

Partial downloads are normal: rows whose file is absent and rows without a genre are counted and reported,
never fatal. Input that could make us read outside the dataset root (absolute paths, `../`) is refused.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import io
import json
import os
import re
import threading
from pathlib import Path, PurePosixPath

import pandas as pd

from genre_core.data import demo, genres as genre_vocab
from genre_core.data.dataset import Dataset
from genre_core.data.images import image_info, ImageError, is_image_file
from genre_core.util.paths import resolve_inside


SOURCES = ("pbn", "artgan", "folder", "csv", "parquet", "demo")
PBN_METADATA_FILES = ("all_data_info.csv", "train_info.csv")
PBN_REQUIRED_COLUMNS = ("new_filename", "genre", "in_train")
ARTGAN_CLASS_FILES = ("genre_class", "genre_class.txt")
ARTGAN_SPLIT_FILES = (("genre_train.csv", "train"), ("genre_val.csv", "test"))
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test", "holdout": "test",
    "": "",
}
CSV_PATH_COLUMNS = ("path", "filepath", "file_path", "image_path", "file", "filename", "image")
CSV_GENRE_COLUMNS = ("genre", "label", "class")
METADATA_COLUMNS = ("artist", "style", "date", "title", "width", "height")
EXAMPLES_PER_PROBLEM = 5
# Metadata files up to this size are hashed by content for the fingerprint; larger ones by size and mtime.
CONTENT_HASH_LIMIT = 64 * 1024 * 1024


# ----------------------------------------------------------------------------------------------------------
# Public API


def detect_source(path: str | os.PathLike) -> str:
    """Guess the source format of a path; ValueError when it is missing, ambiguous or unknown."""
    if _is_demo(path):
        return "demo"
    path = Path(path)
    if not path.exists():
        raise ValueError(f"dataset path {path} does not exist")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".csv":
            columns = {column.strip().lower() for column in _read_csv_header(path)}
            if set(PBN_REQUIRED_COLUMNS) <= columns or (path.name.lower() == "train_info.csv" and "filename" in columns):
                return "pbn"
            return "csv"
        if suffix == ".parquet":
            return "parquet"
        raise ValueError(
            f"cannot tell the dataset format of the file {path}: expected a .csv or .parquet file "
            f"or a dataset folder; pass source= one of {', '.join(SOURCES)} explicitly"
        )
    found = []
    names = {entry.name for entry in os.scandir(path)}
    pbn_files = [name for name in PBN_METADATA_FILES if name in names]
    if pbn_files:
        found.append(("pbn", pbn_files[0]))
    artgan_files = [name for name in ARTGAN_CLASS_FILES if name in names]
    if artgan_files:
        found.append(("artgan", artgan_files[0]))
    parquet_files = _parquet_files_in(path)
    if parquet_files:
        found.append(("parquet", f"{len(parquet_files)} .parquet file(s)"))
    if len(found) == 1:
        return found[0][0]
    if len(found) > 1:
        described = "; ".join(f"{what} ({kind})" for kind, what in found)
        raise ValueError(
            f"{path} is ambiguous: it holds {described}; pass source= one of "
            f"{', '.join(kind for kind, _ in found)} explicitly"
        )
    if _has_image_subfolder(path):
        return "folder"
    shown = sorted(names)[:8]
    listing = ", ".join(shown) + (", ..." if len(names) > len(shown) else "") if names else "nothing"
    raise ValueError(
        f"cannot tell the dataset format of {path}: found {listing}, but no {' or '.join(PBN_METADATA_FILES)} "
        f"(pbn), no genre_class (artgan), no .parquet files (parquet) and no genre sub-folders holding images "
        f"(folder); for a CSV of path,genre pass the CSV file itself, or pass source= one of "
        f"{', '.join(SOURCES)} explicitly"
    )


def load_dataset(path_or_demo: str | os.PathLike, source: str | None = None) -> Dataset:
    """Load a dataset from any supported source; the word "demo" means the bundled demo dataset."""
    if source is None:
        source = detect_source(path_or_demo)
    if source not in SOURCES:
        raise ValueError(f"unknown dataset source {source!r}; use one of {', '.join(SOURCES)}")
    if source == "demo" or _is_demo(path_or_demo):
        return load_demo()
    path = Path(path_or_demo)
    if not path.exists():
        raise ValueError(f"dataset path {path} does not exist")
    loader = {
        "pbn": load_pbn,
        "artgan": load_artgan,
        "folder": load_folder,
        "csv": load_csv,
        "parquet": load_parquet,
    }[source]
    return loader(path)


def read_image_bytes(path: str | os.PathLike) -> bytes:
    """Return the encoded bytes of a manifest path: a real file or a `<file.parquet>#<row>` reference.

    Raises ImageError (a ValueError) naming the path when the bytes cannot be read.
    """
    text = os.fspath(path)
    reference = _parse_parquet_reference(text)
    if reference is not None:
        return _parquet_image_bytes(*reference)
    try:
        with open(text, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise ImageError(text, "file not found") from None
    except IsADirectoryError:
        raise ImageError(text, "is a folder, not an image file") from None
    except OSError as exc:
        raise ImageError(text, f"cannot read file ({exc.strerror or exc})") from None


def check_images(dataset: Dataset, progress=None) -> list[tuple[str, str]]:
    """Read every image's header (no decoding); record unreadable files in the report and return them."""
    failures: list[tuple[str, str]] = []
    paths = dataset.manifest["path"].tolist()
    total = len(paths)
    for done, path in enumerate(paths, start=1):
        try:
            image_info(read_image_bytes(path), name=path)
        except ImageError as exc:
            failures.append((path, exc.reason))
        if progress is not None and (done == total or done % 200 == 0):
            progress({"stage": "check", "done": done, "total": total})
    dataset.report["unreadable"] = len(dataset.report.get("zero_byte_files", [])) + len(failures)
    dataset.report["checked"] = True
    if failures:
        examples = "; ".join(f"{path}: {reason}" for path, reason in failures[:EXAMPLES_PER_PROBLEM])
        more = f" (and {len(failures) - EXAMPLES_PER_PROBLEM} more)" if len(failures) > EXAMPLES_PER_PROBLEM else ""
        dataset.report["problems"].append(f"{len(failures)} image(s) cannot be read: {examples}{more}")
    return failures


def map_dataset_genres(dataset: Dataset, target: str = "artgan", *, broad: bool = False) -> Dataset:
    """Rename genres into another vocabulary with `genres.map_genre`; rows with no counterpart are dropped.

    Classes, labels, report counts and the fingerprint are recomputed; the report says how many rows were
    dropped and which genres had no counterpart.
    """
    mapped = dataset.manifest["genre"].map(lambda name: genre_vocab.map_genre(name, target, broad=broad))
    keep = mapped.notna()
    manifest = dataset.manifest.loc[keep].copy()
    manifest["genre"] = mapped[keep].astype(str)
    unmapped = sorted(dataset.manifest.loc[~keep, "genre"].unique().tolist())
    problems = list(dataset.report.get("problems", []))
    if unmapped:
        problems.append(
            f"{int((~keep).sum()):,} images dropped: genre(s) with no {target} counterpart: {', '.join(unmapped)}")
    return _row_subset(dataset, manifest, sorted(manifest["genre"].unique().tolist()), f"{target}\0{broad}",
                       problems=problems, genre_mapping={"target": target, "broad": broad,
                                                         "dropped_rows": int((~keep).sum()), "unmapped": unmapped})


def keep_genres(dataset: Dataset, genres) -> Dataset:
    """The dataset with only the rows of `genres`, in manifest order (so a seeded split of a genre picks the
    same rows as in the whole dataset); the dataset itself when it has no other genre.

    Classes (sorted), labels, report counts and the fingerprint are recomputed, so an image cache of the
    subset is its own cache. Raises ValueError naming a genre the dataset does not have.
    """
    genres = list(dict.fromkeys(str(name) for name in genres))
    unknown = [name for name in genres if name not in dataset.classes]
    if unknown:
        raise ValueError(f"genre {unknown[0]!r} is not in {dataset.root}; its genres are: {', '.join(dataset.classes)}")
    if set(genres) >= set(dataset.classes):
        return dataset
    classes = sorted(genres)
    manifest = dataset.manifest.loc[dataset.manifest["genre"].isin(genres).to_numpy()].copy()
    return _row_subset(dataset, manifest, classes, f"genres\0{'/'.join(classes)}", kept_genres=classes)


def without_files_of(dataset: Dataset, other: Dataset) -> tuple[Dataset, int]:
    """`dataset` without the rows whose file is byte-identical to one of `other`'s files, and how many rows
    that dropped: images from outside `other` (a superset's images a model trained on `other` never saw).
    Files are compared by content (a hash of their bytes), so a copy under another name or folder is dropped
    too. Raises ImageError naming the first file that cannot be read."""
    def digests(frame) -> list[str]:
        return [hashlib.blake2b(read_image_bytes(path), digest_size=16).hexdigest() for path in frame["path"]]

    seen = set(digests(other.manifest))
    keep = [digest not in seen for digest in digests(dataset.manifest)]
    dropped = len(keep) - sum(keep)
    if not dropped:
        return dataset, 0
    manifest = dataset.manifest.loc[keep].copy()
    classes = [name for name in dataset.classes if name in set(manifest["genre"])]
    return _row_subset(dataset, manifest, classes, f"without\0{other.fingerprint}", dropped_as_in=str(other.root)), dropped


def _row_subset(dataset: Dataset, manifest, classes: list[str], fingerprint_key: str, **report) -> Dataset:
    """A Dataset of some of `dataset`'s rows (`manifest`, genres possibly renamed): labels renumbered in the
    order of `classes`, the report's counts recomputed (plus `report`'s entries), and a fingerprint derived
    from the dataset's and `fingerprint_key`, so that an image cache of it is its own cache."""
    manifest = manifest.reset_index(drop=True)
    manifest["label"] = manifest["genre"].map({genre: label for label, genre in enumerate(classes)}).astype("int64")
    report = dict(dataset.report, images=int(len(manifest)), genres_with_images=int(manifest["genre"].nunique()),
                  **report)
    digest = hashlib.blake2b(f"{dataset.fingerprint}\0{fingerprint_key}".encode(), digest_size=16)
    return Dataset(source=dataset.source, root=dataset.root, manifest=manifest, classes=classes, report=report,
                   fingerprint=digest.hexdigest())


# ----------------------------------------------------------------------------------------------------------
# Loaders


def load_pbn(path: str | os.PathLike) -> Dataset:
    """Load Painter by Numbers: a folder holding all_data_info.csv/train_info.csv, or that CSV file itself."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / name for name in PBN_METADATA_FILES if (path / name).is_file()]
        if not candidates:
            raise ValueError(f"{path} holds neither {' nor '.join(PBN_METADATA_FILES)}")
        metadata_file, root = candidates[0], path
    else:
        metadata_file, root = path, path.parent
    issues = _Issues()
    frame = _read_csv_table(metadata_file, issues)
    name = metadata_file.name
    if "new_filename" in frame.columns and "in_train" in frame.columns:
        file_column = "new_filename"
        in_train = frame["in_train"].str.strip().str.lower()
        split = in_train.map({"true": "train", "1": "train", "false": "test", "0": "test"})
        for index in frame.index[split.isna()]:
            issues.add("bad_in_train", "rows have an in_train value that is neither True nor False; dropped",
                       f"{name} row {index + 1} ({frame.at[index, 'in_train']!r})")
    elif "filename" in frame.columns:
        # Kaggle's train_info.csv lists only the train folder.
        file_column = "filename"
        split = pd.Series("train", index=frame.index)
    else:
        raise ValueError(
            f"{metadata_file}: missing required column(s) new_filename and in_train (or filename for "
            f"train_info.csv); found columns: {', '.join(frame.columns)}"
        )
    if "genre" not in frame.columns:
        raise ValueError(f"{metadata_file}: missing required column genre; found columns: {', '.join(frame.columns)}")

    folders = {"train": _pbn_folders(root, "train"), "test": _pbn_folders(root, "test")}
    listings = {split_name: _merge_listings(dirs) for split_name, dirs in folders.items()}
    for target, candidates in (("width", ("pixelsx", "width")), ("height", ("pixelsy", "height"))):
        column = next((candidate for candidate in candidates if candidate in frame.columns), None)
        if column is not None:
            frame[f"_{target}"] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    carried = [column for column in ("artist", "style", "date", "title") if column in frame.columns]
    carried += [f"_{name}" for name in ("width", "height") if f"_{name}" in frame.columns]
    # Plain Python lists: iterating pandas rows is far slower on 103k-row files.
    columns = {column: frame[column].tolist() for column in carried}
    splits = split.tolist()
    file_names = frame[file_column].tolist()
    genre_names = frame["genre"].tolist()
    records = []
    present = 0
    for index in range(len(frame)):
        row_split = splits[index]
        if not isinstance(row_split, str):
            continue
        file_name = file_names[index].strip()
        genre = genre_names[index].strip()
        where = f"{name} row {index + 1}"
        if not file_name:
            issues.add("empty_path", "rows have no file name; dropped", where)
            continue
        _check_inside(root, file_name, where)
        found = listings[row_split].get(file_name) if "/" not in file_name and "\\" not in file_name else None
        if found is not None:
            present += 1
        if genre_vocab.is_no_genre(genre):
            issues.add("no_genre", "rows have no genre; dropped", f"{where} ({file_name})")
            continue
        issues.metadata_genres[genre] += 1
        if not genre_vocab.is_known_genre(genre):
            issues.unknown_genre(genre, "rows have a genre that is not a Painter by Numbers genre; kept as new "
                                 "classes", where)
        if found is None:
            issues.add("missing_files", "rows with a genre name a file that is not present (a partial "
                         "download?)", f"{where} ({row_split}/{file_name})")
            continue
        full_path, size, mtime = found
        if size == 0:
            issues.zero_byte(full_path, where)
            continue
        record = {"path": full_path, "genre": genre, "split": row_split}
        for column in carried:
            record[column.lstrip("_")] = columns[column][index]
        record["_stat"] = (size, mtime)
        records.append(record)
    issues.files_present = present
    return _finish("pbn", root, records, issues, rows=len(frame), metadata_files=[metadata_file])


def load_artgan(root: str | os.PathLike) -> Dataset:
    """Load the ArtGAN WikiArt layout: genre_class, genre_train.csv / genre_val.csv, Style/file.jpg."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder; the ArtGAN layout is a folder holding genre_class")
    issues = _Issues()
    class_file = next((root / name for name in ARTGAN_CLASS_FILES if (root / name).is_file()), None)
    if class_file is None:
        raise ValueError(f"{root} has no genre_class file (lines 'index name')")
    class_names = _read_index_names(class_file, issues)
    split_files = [(root / name, split) for name, split in ARTGAN_SPLIT_FILES if (root / name).is_file()]
    if not split_files:
        raise ValueError(f"{root} has neither genre_train.csv nor genre_val.csv")
    listings = _DirectoryListings(root)
    records = []
    rows = 0
    for split_file, split in split_files:
        text = _read_text(split_file, issues)
        for line_number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line:
                continue
            rows += 1
            where = f"{split_file.name} line {line_number}"
            relative, sep, index_text = line.rpartition(",")
            relative = relative.strip()
            if not sep or not relative:
                issues.add("bad_line", "lines are not 'Style/file.jpg,index'; dropped", f"{where} ({line[:60]!r})")
                continue
            try:
                class_index = int(index_text.strip())
            except ValueError:
                issues.add("bad_line", "lines are not 'Style/file.jpg,index'; dropped", f"{where} ({line[:60]!r})")
                continue
            if class_index not in class_names:
                issues.add("bad_index", "lines have a genre index that genre_class does not define; dropped",
                           f"{where} (index {class_index})")
                continue
            issues.metadata_genres[class_names[class_index]] += 1
            relative = _check_inside(root, relative, where)
            found = listings.lookup(relative)
            if found is None:
                issues.add("missing_files", "rows name a file that is not present (a partial download?)",
                             f"{where} ({relative})")
                continue
            full_path, size, mtime = found
            if size == 0:
                issues.zero_byte(full_path, where)
                continue
            parts = PurePosixPath(relative).parts
            record = {
                "path": full_path,
                "genre": class_names[class_index],
                "split": split,
                "style": parts[0] if len(parts) > 1 else "",
                "artist": PurePosixPath(relative).stem.split("_")[0],
                "_stat": (size, mtime),
            }
            records.append(record)
    metadata = [class_file] + [split_file for split_file, _ in split_files]
    return _finish("artgan", root, records, issues, rows=rows, metadata_files=metadata)


def load_folder(root: str | os.PathLike, source: str = "folder") -> Dataset:
    """Load `root/<genre>/**/image` (or `root/<split>/<genre>/**/image`); genre = the top folder's name."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    issues = _Issues()
    top_dirs = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    split_layout = bool(top_dirs) and all(name.lower() in SPLIT_ALIASES for name in top_dirs)
    records = []
    rows = 0
    skipped = 0

    def collect(folder: Path, genre: str, split: str) -> None:
        nonlocal rows, skipped
        for full_path, size, mtime in _walk_files(folder):
            if not is_image_file(full_path):
                skipped += 1
                continue
            rows += 1
            if size == 0:
                issues.zero_byte(full_path, f"genre folder {genre!r}")
                continue
            records.append({"path": full_path, "genre": genre, "split": split, "_stat": (size, mtime)})

    for entry in sorted(os.scandir(root), key=lambda item: item.name):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and is_image_file(entry.name):
            issues.add("loose_image", "images lie directly in the dataset root, outside any genre folder; ignored",
                       entry.path)
        elif entry.is_dir():
            if split_layout:
                split = SPLIT_ALIASES[entry.name.lower()]
                for genre_entry in sorted(os.scandir(entry.path), key=lambda item: item.name):
                    if genre_entry.is_dir() and not genre_entry.name.startswith("."):
                        collect(Path(genre_entry.path), genre_entry.name, split)
                    elif genre_entry.is_file() and is_image_file(genre_entry.name):
                        issues.add("loose_image", "images lie directly in a split folder, outside any genre "
                                   "folder; ignored", genre_entry.path)
            else:
                collect(Path(entry.path), entry.name, "")
    if not records:
        raise ValueError(f"{root} holds no images in genre sub-folders (expected {root}/<genre>/<image>.jpg)")
    dataset = _finish(source, root, records, issues, rows=rows, metadata_files=[])
    dataset.report["skipped_files"] = skipped
    dataset.report["layout"] = "split/genre" if split_layout else "genre"
    return dataset


def load_csv(csv_path: str | os.PathLike) -> Dataset:
    """Load a CSV of path,genre[,split,...]; paths are relative to the CSV's folder and may not leave it."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ValueError(f"{csv_path} is not a file")
    root = csv_path.parent
    issues = _Issues()
    frame = _read_csv_table(csv_path, issues)
    path_column = next((name for name in CSV_PATH_COLUMNS if name in frame.columns), None)
    genre_column = next((name for name in CSV_GENRE_COLUMNS if name in frame.columns), None)
    missing = [label for label, column in (("path", path_column), ("genre", genre_column)) if column is None]
    if missing:
        raise ValueError(
            f"{csv_path}: missing required column(s) {', '.join(missing)}; found columns: "
            f"{', '.join(frame.columns) or 'none'} (expected path,genre[,split])"
        )
    name = csv_path.name
    listings = _DirectoryListings(root)
    records = []
    for index in frame.index:
        where = f"{name} row {index + 1}"
        relative = frame.at[index, path_column].strip()
        if not relative:
            issues.add("empty_path", "rows have an empty path; dropped", where)
            continue
        genre = frame.at[index, genre_column].strip()
        if genre_vocab.is_no_genre(genre):
            issues.add("no_genre", "rows have no genre; dropped", f"{where} ({relative})")
            continue
        issues.metadata_genres[genre] += 1
        relative = _check_inside(root, relative, where)
        if not genre_vocab.is_known_genre(genre):
            issues.unknown_genre(genre, "rows have a genre name that is in no known vocabulary; kept as new "
                                 "classes", where)
        split = ""
        if "split" in frame.columns:
            raw_split = frame.at[index, "split"].strip().lower()
            if raw_split in SPLIT_ALIASES:
                split = SPLIT_ALIASES[raw_split]
            else:
                issues.add("bad_split", "rows have a split that is not train/val/test; left unsplit",
                           f"{where} ({raw_split!r})")
        found = listings.lookup(relative)
        if found is None:
            issues.add("missing_files", "rows name a file that is not present", f"{where} ({relative})")
            continue
        full_path, size, mtime = found
        if size == 0:
            issues.zero_byte(full_path, where)
            continue
        record = {"path": full_path, "genre": genre, "split": split, "_stat": (size, mtime)}
        for column in METADATA_COLUMNS:
            if column in frame.columns:
                record[column] = frame.at[index, column]
        records.append(record)
    return _finish("csv", root, records, issues, rows=len(frame), metadata_files=[csv_path])


def load_parquet(path: str | os.PathLike) -> Dataset:
    """Load a local Parquet export of a Hugging Face WikiArt dataset (a file, or a folder of .parquet files)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        files = _parquet_files_in(path)
        root = path
        if not files:
            raise ValueError(f"{path} holds no .parquet files")
    else:
        files, root = [path], path.parent
    issues = _Issues()
    records = []
    rows = 0
    for file in files:
        file = file.resolve()
        try:
            parquet = pq.ParquetFile(file)
        except Exception as exc:  # pyarrow raises several error types for a damaged file.
            raise ValueError(f"{file}: not a readable Parquet file ({exc})") from None
        schema = parquet.schema_arrow
        image_column = _parquet_image_column(schema)
        if image_column is None:
            raise ValueError(
                f"{file}: no image column (a struct of bytes/path or a binary column); "
                f"found columns: {', '.join(schema.names)}"
            )
        genre_column = next((name for name in ("genre", "label", "labels") if name in schema.names), None)
        if genre_column is None:
            raise ValueError(f"{file}: no genre column (genre or label); found columns: {', '.join(schema.names)}")
        names_by_column = _parquet_label_names(schema, file, root)
        wanted = [genre_column] + [column for column in METADATA_COLUMNS if column in schema.names]
        table = parquet.read(columns=wanted).to_pandas()
        split = _split_from_name(file, root)
        genre_names = names_by_column.get(genre_column)
        numeric = pd.api.types.is_integer_dtype(table[genre_column]) or pd.api.types.is_float_dtype(table[genre_column])
        if numeric and genre_names is None:
            issues.add("no_label_names", "files have integer genre labels but no label names (no Hugging Face "
                       "metadata, label_names.txt or genre_class); the numbers are used as genre names", str(file))
        rows += len(table)
        for row in range(len(table)):
            where = f"{file.name} row {row}"
            value = table.at[row, genre_column]
            genre = _label_to_name(value, genre_names, numeric)
            if genre is None and numeric and not pd.isna(value):
                issues.add("bad_index", "rows have a genre label outside the label names; dropped",
                           f"{where} (label {value})")
                continue
            if genre is None or genre_vocab.is_no_genre(genre):
                issues.add("no_genre", "rows have no genre (blank or 'Unknown Genre'); dropped", where)
                continue
            issues.metadata_genres[genre] += 1
            record = {"path": f"{file}#{row}", "genre": genre, "split": split}
            for column in wanted[1:]:
                cell = table.at[row, column]
                column_names = names_by_column.get(column)
                if column_names is not None and not pd.isna(cell):
                    cell = _label_to_name(cell, column_names, True) or cell
                record[column] = cell
            records.append(record)
    # Parquet files can be gigabytes: the fingerprint uses their size and mtime, not their contents.
    return _finish("parquet", root, records, issues, rows=rows, metadata_files=files, hash_contents=False)


def load_demo() -> Dataset:
    """Generate (if needed) and load the bundled demo dataset as a folder source."""
    return load_folder(demo.ensure_demo(), source="demo")


# ----------------------------------------------------------------------------------------------------------
# Building the Dataset


class _Issues:
    """Collects counts and problems; each problem kind keeps a few examples naming the file and row."""

    def __init__(self) -> None:
        self.kinds: dict[str, dict] = {}
        self.notes: list[str] = []
        self.zero_byte_files: list[str] = []
        self.unknown_genres: set[str] = set()
        # Every genre named by a metadata row, whether or not its file is present (a partial download still
        # tells us the vocabulary).
        self.metadata_genres: collections.Counter = collections.Counter()
        self.files_present: int | None = None

    def add(self, kind: str, description: str, example: str) -> None:
        """Count one problem of `kind`, keeping the first few examples; it is listed in report["problems"]."""
        entry = self.kinds.setdefault(kind, {"count": 0, "description": description, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < EXAMPLES_PER_PROBLEM:
            entry["examples"].append(example)

    def unknown_genre(self, genre: str, description: str, where: str) -> None:
        """Record a genre name outside the known vocabularies (kept as a new class)."""
        self.unknown_genres.add(genre)
        self.add("unknown_genre", description, f"{where} ({genre!r})")

    def zero_byte(self, path: str, where: str) -> None:
        """Record an empty (0-byte) image file, which is left out of the manifest."""
        self.zero_byte_files.append(path)
        self.add("zero_byte", "image files are empty (0 bytes); left out", f"{where}: {path}")

    def note(self, text: str) -> None:
        """Add a free-form problem line."""
        self.notes.append(text)

    def total(self, kind: str) -> int:
        """How many problems of `kind` were recorded."""
        return self.kinds.get(kind, {}).get("count", 0)

    def problems(self) -> list[str]:
        """Human-readable problem lines, each with examples naming files and rows."""
        lines = list(self.notes)
        for entry in self.kinds.values():
            examples = "; ".join(entry["examples"])
            more = entry["count"] - len(entry["examples"])
            suffix = f"; and {more:,} more" if more > 0 else ""
            lines.append(f"{entry['count']:,} {entry['description']}: {examples}{suffix}")
        return lines


def _finish(source, root, records, issues, rows, metadata_files, hash_contents=True) -> Dataset:
    """Drop duplicates, add labels and build the report and fingerprint."""
    columns = ["path", "genre", "split"]
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=columns + ["_stat"])
    duplicate_mask = frame["path"].duplicated(keep="first")
    duplicates = int(duplicate_mask.sum())
    if duplicates:
        first_genre = frame.loc[~duplicate_mask].set_index("path")["genre"]
        for index in frame.index[duplicate_mask]:
            path = frame.at[index, "path"]
            if frame.at[index, "genre"] != first_genre[path]:
                issues.add("conflict", "duplicate rows give the same image a different genre; the first is kept",
                           f"{path} ({first_genre[path]!r} vs {frame.at[index, 'genre']!r})")
            else:
                issues.add("duplicate", "duplicate rows; dropped", path)
        frame = frame.loc[~duplicate_mask]
    frame = frame.reset_index(drop=True)
    stats = frame.pop("_stat").tolist() if "_stat" in frame.columns else [None] * len(frame)
    frame["genre"] = frame["genre"].astype(str)
    frame["split"] = frame["split"].fillna("").astype(str)
    classes = sorted(frame["genre"].unique().tolist())
    label_of = {genre: label for label, genre in enumerate(classes)}
    frame["label"] = frame["genre"].map(label_of).astype("int64")
    ordered = columns + [column for column in frame.columns if column not in columns]
    frame = frame[ordered]
    problems = issues.problems()
    report = {
        "source": source,
        "root": str(root),
        "rows": int(rows),
        "images": int(len(frame)),
        "missing_files": issues.total("missing_files"),
        "no_genre": issues.total("no_genre"),
        "duplicates": duplicates,
        "files_present": issues.files_present if issues.files_present is not None else int(rows) - issues.total(
            "missing_files"),
        "unreadable": len(issues.zero_byte_files),
        "checked": False,
        "genres": len(set(issues.metadata_genres) | set(classes)),
        # Metadata rows per genre (files present or not), most frequent first; empty for folder sources.
        "rows_per_genre": dict(issues.metadata_genres.most_common()),
        "genres_with_images": len(classes),
        "splits": {name: int(count) for name, count in frame["split"].replace("", "unsplit").value_counts().items()},
        "unknown_genres": sorted(issues.unknown_genres),
        "zero_byte_files": issues.zero_byte_files[:50],
        "problems": problems,
    }
    fingerprint = _fingerprint(source, metadata_files, frame, stats, hash_contents)
    return Dataset(source=source, root=Path(root).resolve(), manifest=frame, classes=classes, report=report,
                   fingerprint=fingerprint)


def _fingerprint(source, metadata_files, frame, stats, hash_contents) -> str:
    """Hash metadata files (contents, or size+mtime) plus sorted (path, genre, split, size, mtime); no decoding."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(source.encode())
    for file in metadata_files:
        stat = Path(file).stat()
        digest.update(f"\0{Path(file).name}\0{stat.st_size}".encode())
        if hash_contents and stat.st_size <= CONTENT_HASH_LIMIT:
            digest.update(Path(file).read_bytes())
        else:
            digest.update(str(stat.st_mtime_ns).encode())
    rows = sorted(zip(frame["path"].tolist(), frame["genre"].tolist(), frame["split"].tolist(), stats))
    for path, genre, split, stat in rows:
        size, mtime = stat if stat is not None else ("", "")
        digest.update(f"\0{path}\t{genre}\t{split}\t{size}\t{mtime}".encode())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Files and folders


def _is_demo(path) -> bool:
    """True if the dataset argument is the word "demo"."""
    return isinstance(path, str) and path.strip().lower() == "demo"


def _check_inside(root: Path, relative: str, where: str) -> str:
    """Refuse absolute paths and `..` escapes with an error naming the row; return the path with "/" separators."""
    normalized = relative.replace("\\", "/")
    if ".." not in normalized and not normalized.startswith("/") and ":" not in normalized[:2]:
        return normalized
    if normalized.startswith("/") or re.match(r"^[A-Za-z]:/", normalized):
        raise ValueError(f"{where}: absolute path {relative!r} is not allowed; paths must be relative to {root}")
    if ".." in PurePosixPath(normalized).parts:
        try:
            resolve_inside(root, normalized)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return normalized


class _DirectoryListings:
    """Answers "is root/rel present?" by listing each folder once with os.scandir (no per-file stat calls)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.listings: dict[str, dict[str, os.DirEntry]] = {}

    def lookup(self, relative: str) -> tuple[str, int, int] | None:
        """Return (absolute path, size, mtime_ns) for a relative file path, or None when it is absent."""
        relative = os.path.normpath(relative)
        folder, _, name = relative.rpartition(os.sep)
        listing = self.listings.get(folder)
        if listing is None:
            listing = self.listings[folder] = _list_folder(self.root / folder if folder else self.root)
        entry = listing.get(name)
        if entry is None:
            return None
        try:
            stat = entry.stat()
        except OSError:
            return None
        return os.path.abspath(entry.path), stat.st_size, stat.st_mtime_ns


def _list_folder(folder: Path) -> dict[str, os.DirEntry]:
    """Map file names to directory entries for one folder (empty when the folder is absent)."""
    try:
        with os.scandir(folder) as entries:
            return {entry.name: entry for entry in entries if entry.is_file()}
    except (FileNotFoundError, NotADirectoryError, PermissionError, ValueError):
        return {}


def _pbn_folders(root: Path, split: str) -> list[Path]:
    """The folders that hold one PBN split: `train/` (and Kaggle's `train_1/`...) or `test/`."""
    pattern = re.compile(rf"^{split}(_\d+)?$")
    try:
        return sorted(Path(entry.path) for entry in os.scandir(root) if entry.is_dir() and pattern.match(entry.name))
    except FileNotFoundError:
        return []


def _merge_listings(folders: list[Path]) -> dict[str, tuple[str, int, int]]:
    """List several folders once each; map file name -> (absolute path, size, mtime_ns)."""
    merged: dict[str, tuple[str, int, int]] = {}
    for folder in folders:
        for name, entry in _list_folder(folder).items():
            if name not in merged:
                stat = entry.stat()
                merged[name] = (os.path.abspath(entry.path), stat.st_size, stat.st_mtime_ns)
    return merged


def _walk_files(folder: Path):
    """Yield (absolute path, size, mtime_ns) for every non-hidden file under `folder`, sorted, recursively."""
    try:
        entries = sorted(os.scandir(folder), key=lambda item: item.name)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_files(Path(entry.path))
        elif entry.is_file():
            stat = entry.stat()
            yield os.path.abspath(entry.path), stat.st_size, stat.st_mtime_ns


def _has_image_subfolder(path: Path) -> bool:
    """True if some sub-folder of `path` holds an image file (stops at the first one found)."""
    for entry in os.scandir(path):
        if entry.is_dir() and not entry.name.startswith("."):
            for _folder, _dirs, files in os.walk(entry.path):
                if any(is_image_file(name) for name in files):
                    return True
    return False


def _parquet_files_in(folder: Path) -> list[Path]:
    """Parquet files in a folder and its sub-folders (Hugging Face puts them under data/), sorted."""
    found = []
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(name for name in dirs if not name.startswith("."))
        depth = len(Path(current).relative_to(folder).parts)
        if depth >= 2:
            dirs[:] = []
        found.extend(Path(current) / name for name in files if name.lower().endswith(".parquet"))
    return sorted(found)


# ----------------------------------------------------------------------------------------------------------
# Text and CSV


def _read_text(path: Path, issues: _Issues | None = None) -> str:
    """Read a text file as UTF-8, falling back to Latin-1 with a reported problem."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if issues is not None:
            issues.note(f"{path.name}: not valid UTF-8 (first bad byte at offset {exc.start}); read as Latin-1, "
                        f"so check accented names")
        return data.decode("latin-1")


def _read_csv_header(path: Path) -> list[str]:
    """The column names of a CSV file (first line only)."""
    with open(path, "rb") as handle:
        first = handle.readline(1 << 20)
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = first.decode("latin-1")
    try:
        return list(pd.read_csv(io.StringIO(text), nrows=0, dtype=str).columns)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError):
        return []


def _read_csv_table(path: Path, issues: _Issues) -> pd.DataFrame:
    """Read a CSV as strings (blank cells stay ""), column names stripped and lower-cased."""
    text = _read_text(path, issues)
    if not text.strip():
        raise ValueError(f"{path}: the file is empty")
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, UnicodeError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a readable CSV ({message})") from None
    frame.columns = [str(column).strip().lower() for column in frame.columns]
    if frame.columns.duplicated().any():
        duplicated = sorted(set(frame.columns[frame.columns.duplicated()]))
        raise ValueError(f"{path}: duplicate column name(s) {', '.join(duplicated)}")
    return frame.fillna("").reset_index(drop=True)


def _read_index_names(path: Path, issues: _Issues) -> dict[int, str]:
    """Parse lines "index name" (ArtGAN's genre_class); a malformed line raises ValueError naming it."""
    names: dict[int, str] = {}
    for line_number, line in enumerate(_read_text(path, issues).splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        index_text, _, name = line.partition(" ")
        if not index_text.isdigit() or not name.strip():
            raise ValueError(f"{path} line {line_number}: expected 'index name', found {line[:60]!r}")
        names[int(index_text)] = name.strip()
    if not names:
        raise ValueError(f"{path}: no genres listed (expected lines 'index name')")
    return names


# ----------------------------------------------------------------------------------------------------------
# Parquet


def _parquet_image_column(schema) -> str | None:
    """The name of the image column: a struct holding `bytes`, or a binary column; "image" preferred."""
    import pyarrow as pa

    candidates = []
    for field in schema:
        kind = field.type
        if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
            candidates.append(field.name)
        elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            candidates.append(field.name)
    if "image" in candidates:
        return "image"
    return candidates[0] if candidates else None


def _parquet_label_names(schema, file: Path, root: Path) -> dict[str, list[str]]:
    """ClassLabel names per column from Hugging Face metadata, else from label_names.txt / genre_class."""
    names: dict[str, list[str]] = {}
    metadata = schema.metadata or {}
    raw = metadata.get(b"huggingface")
    if raw:
        try:
            info = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            info = {}
        features = (info.get("info") or {}).get("features") or info.get("features") or {}
        if isinstance(features, dict):
            for column, feature in features.items():
                if isinstance(feature, dict) and isinstance(feature.get("names"), list):
                    names[column] = [str(name) for name in feature["names"]]
    if "genre" not in names and "label" not in names:
        for folder in dict.fromkeys([file.parent, root]):
            sidecar = folder / "label_names.txt"
            if sidecar.is_file():
                lines = [line.strip() for line in _read_text(sidecar).splitlines() if line.strip()]
                names["genre"] = names["label"] = lines
                break
            class_file = next((folder / name for name in ARTGAN_CLASS_FILES if (folder / name).is_file()), None)
            if class_file is not None:
                by_index = _read_index_names(class_file, _Issues())
                listed = [by_index.get(index, "") for index in range(max(by_index) + 1)]
                names["genre"] = names["label"] = listed
                break
    return names


def _label_to_name(value, names: list[str] | None, numeric: bool) -> str | None:
    """Turn a label cell into a genre name (None when blank or out of range)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if not numeric:
        return str(value).strip()
    index = int(value)
    if names is None:
        return str(index)
    if 0 <= index < len(names):
        return names[index]
    return None


def _split_from_name(file: Path, root: Path) -> str:
    """The split a Hugging Face file name or folder implies ("train-00000-of-00002.parquet" -> "train")."""
    match = re.match(r"^(train|training|test|testing|validation|valid|val|dev)(?=[-_.])", file.name.lower())
    if match:
        return SPLIT_ALIASES[match.group(1)]
    parent = file.parent.name.lower()
    if file.parent != root and parent in SPLIT_ALIASES:
        return SPLIT_ALIASES[parent]
    return ""


_PARQUET_REFERENCE = re.compile(r"^(.*\.parquet)#(\d+)$", re.IGNORECASE)
_PARQUET_LOCK = threading.Lock()


def _parse_parquet_reference(text: str) -> tuple[str, int] | None:
    """Split "<file.parquet>#<row>" into (file, row); None for a plain path."""
    match = _PARQUET_REFERENCE.match(text)
    if match is None:
        return None
    return match.group(1), int(match.group(2))


@functools.lru_cache(maxsize=8)
def _open_parquet(file: str, size: int, mtime_ns: int, pid: int):
    """Open a Parquet file once per process (keyed by size, mtime and process id, so a forked worker opens its
    own handle): (file, row-group starts, image column)."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(file)
    column = _parquet_image_column(parquet.schema_arrow)
    starts = [0]
    for group in range(parquet.num_row_groups):
        starts.append(starts[-1] + parquet.metadata.row_group(group).num_rows)
    return parquet, starts, column


@functools.lru_cache(maxsize=4)
def _parquet_group_images(file: str, size: int, mtime_ns: int, pid: int, group: int) -> list:
    """The image cells of one row group, cached so that reading rows in order decodes each group once."""
    parquet, _starts, column = _open_parquet(file, size, mtime_ns, pid)
    return parquet.read_row_group(group, columns=[column]).column(0).to_pylist()


def _parquet_image_bytes(file: str, row: int) -> bytes:
    """The encoded image bytes of one Parquet row (a struct's bytes, or its path read inside the folder)."""
    label = f"{file}#{row}"
    try:
        stat = os.stat(file)
    except OSError as exc:
        raise ImageError(label, f"cannot read the Parquet file ({exc.strerror or exc})") from None
    with _PARQUET_LOCK:
        try:
            _parquet, starts, column = _open_parquet(file, stat.st_size, stat.st_mtime_ns, os.getpid())
        except Exception as exc:  # pyarrow raises several error types for a damaged file.
            raise ImageError(label, f"not a readable Parquet file ({exc})") from None
        if column is None:
            raise ImageError(label, "the Parquet file has no image column")
        if not 0 <= row < starts[-1]:
            raise ImageError(label, f"row {row} is out of range (the file has {starts[-1]} rows)")
        group = next(index for index in range(len(starts) - 1) if starts[index] <= row < starts[index + 1])
        cell = _parquet_group_images(file, stat.st_size, stat.st_mtime_ns, os.getpid(), group)[row - starts[group]]
    if isinstance(cell, dict):
        data, stored_path = cell.get("bytes"), cell.get("path")
        if data:
            return bytes(data)
        if stored_path:
            try:
                target = resolve_inside(Path(file).parent, stored_path)
            except ValueError as exc:
                raise ImageError(label, str(exc)) from None
            return read_image_bytes(target)
        raise ImageError(label, "the image cell is empty")
    if cell:
        return bytes(cell)
    raise ImageError(label, "the image cell is empty")
