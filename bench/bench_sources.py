"""Benchmarks for dataset sources: file-presence checks by folder listing vs per-row stat, and whole loads.

Uses the real Painter by Numbers metadata (103,250 rows) when /work/shared/data is there, else a synthetic
PBN-shaped folder of the same row count with a few files present. Run through `python3 -m bench`.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

SHARED_PBN = Path(__file__).resolve().parents[2] / "shared" / "data" / "painter-by-numbers"
SHARED_ARTGAN = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikiart-artgan"


def _synthetic_pbn(folder: Path, rows: int = 103_250, present: int = 200) -> Path:
    """A PBN-shaped folder: all_data_info.csv with `rows` rows and `present` tiny files in train/."""
    (folder / "train").mkdir(parents=True)
    (folder / "test").mkdir()
    lines = ["artist,genre,in_train,new_filename\n"]
    for index in range(rows):
        lines.append(f"artist {index % 97},portrait,True,{index}.jpg\n")
    (folder / "all_data_info.csv").write_text("".join(lines))
    for index in range(present):
        (folder / "train" / f"{index}.jpg").write_bytes(b"x")
    return folder


def _best_of(function, repeats: int = 3) -> float:
    """The fastest of a few timed calls, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def run() -> list[dict]:
    import pandas as pd

    from genre_core.data.sources import load_dataset

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = SHARED_PBN if (SHARED_PBN / "all_data_info.csv").is_file() else _synthetic_pbn(Path(scratch) / "pbn")
        kind = "real kit" if root == SHARED_PBN else "synthetic"
        frame = pd.read_csv(root / "all_data_info.csv", usecols=["in_train", "new_filename"], dtype=str)
        names = frame["new_filename"].tolist()
        folders = ["train" if value == "True" else "test" for value in frame["in_train"].tolist()]

        def per_row_stat():
            return sum(os.path.exists(os.path.join(root, folder, name)) for folder, name in zip(folders, names))

        def listed_once():
            listings = {}
            for folder in ("train", "test"):
                try:
                    with os.scandir(root / folder) as entries:
                        listings[folder] = {entry.name for entry in entries}
                except FileNotFoundError:
                    listings[folder] = set()
            return sum(name in listings[folder] for folder, name in zip(folders, names))

        assert per_row_stat() == listed_once()
        baseline, candidate = _best_of(per_row_stat), _best_of(listed_once)
        ratio = baseline / candidate
        rows.append({
            "name": f"pbn file presence, {len(names):,} rows ({kind})",
            "baseline_s": round(baseline, 4),
            "candidate_s": round(candidate, 4),
            "ratio": round(ratio, 1),
            "target": ">=5x",
            "ok": ratio >= 5,
            "note": "os.path.exists per row vs one os.scandir per folder into a set",
        })
        load_seconds = _best_of(lambda: load_dataset(root, source="pbn"), repeats=2)
        rows.append({
            "name": f"load_dataset pbn, {len(names):,} rows ({kind})",
            "baseline_s": 3.0,
            "candidate_s": round(load_seconds, 3),
            "ratio": round(load_seconds / 3.0, 2),
            "target": "<=1x",
            "ok": load_seconds <= 3.0,
            "note": "baseline is the 3 s budget for `data info` on the full PBN metadata",
        })
    if (SHARED_ARTGAN / "genre_class").is_file():
        artgan_seconds = _best_of(lambda: load_dataset(SHARED_ARTGAN, source="artgan"), repeats=2)
        rows.append({
            "name": "load_dataset artgan, 45,503 rows, 5,354 files (real kit)",
            "baseline_s": 3.0,
            "candidate_s": round(artgan_seconds, 3),
            "ratio": round(artgan_seconds / 3.0, 2),
            "target": "<=1x",
            "ok": artgan_seconds <= 3.0,
            "note": "baseline is the 3 s budget for `data info`",
        })
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
