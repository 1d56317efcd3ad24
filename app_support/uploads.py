"""Classifying uploaded files: a byte and pixel cap, one clear error per bad file, the good files still classified."""

from __future__ import annotations

import os

import pandas as pd

from genre_core import images

# Largest image (in pixels) the Classify page decodes; the byte cap is server.maxUploadSize in .streamlit/config.toml.
MAX_UPLOAD_PIXELS = int(os.environ.get("GENRE_MAX_UPLOAD_PIXELS", 40_000_000))
UPLOAD_TYPES = [extension.lstrip(".") for extension in images.IMAGE_EXTENSIONS]


def classify_uploads(classifier, uploads: list[tuple[str, bytes]], top_k: int = 3,
                     max_pixels: int | None = None) -> list[dict]:
    """Classify (name, bytes) pairs; files over the pixel cap or unreadable get ok=False and a one-line error.

    The header of every file is checked first (cheap: no decode), so an oversized image is refused before
    any pixels are decoded; the rest go through the classifier in one batch, in upload order.
    """
    max_pixels = max_pixels or MAX_UPLOAD_PIXELS
    results: list[dict | None] = [None] * len(uploads)
    good_positions, good_sources, good_names = [], [], []
    for position, (name, data) in enumerate(uploads):
        try:
            images.image_info(data, name=name, max_pixels=max_pixels)
        except ValueError as exc:
            results[position] = {"name": name, "ok": False, "error": str(exc), "top": [], "probabilities": {}}
            continue
        good_positions.append(position)
        good_sources.append(data)
        good_names.append(name)
    if good_sources:
        for position, result in zip(good_positions, classifier.classify(good_sources, good_names, top_k=top_k)):
            results[position] = result
    return results


def results_table(results: list[dict], top_k: int) -> pd.DataFrame:
    """One row per file: name, genre_1, probability_1, ..., error."""
    rows = []
    for result in results:
        row = {"file": result["name"]}
        for rank in range(top_k):
            genre, probability = result["top"][rank] if rank < len(result["top"]) else (None, None)
            row[f"genre_{rank + 1}"] = genre
            row[f"probability_{rank + 1}"] = probability
        row["error"] = result.get("error") or ""
        rows.append(row)
    return pd.DataFrame(rows)
