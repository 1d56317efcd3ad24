"""Classifying uploaded files: a byte and pixel cap, one clear error per bad file, the good files still classified."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from genre_core.data import images
from genre_core.evaluation.classify import top_genres


# Largest image (in pixels) the Classify page decodes; the byte cap is server.maxUploadSize in .streamlit/config.toml.
MAX_UPLOAD_PIXELS = int(os.environ.get("GENRE_MAX_UPLOAD_PIXELS", 40_000_000))
UPLOAD_TYPES = [extension.lstrip(".") for extension in images.IMAGE_EXTENSIONS]


def classify_uploads(classifier, uploads: list[tuple[str, bytes]], top_k: int = 3,
                     max_pixels: int | None = None) -> list[dict]:
    """Classify (name, bytes) pairs in upload order, in one batch through the classifier.

    Each file is decoded once with images.load_rgb at the run's size and policy, refusing images over the
    pixel cap before any pixel is decoded. A result is {name, ok, error, top: [(genre, p)], probabilities,
    image}: `image` is the decoded uint8 array (for display and Grad-CAM), None for a file that failed.
    """
    max_pixels = max_pixels or MAX_UPLOAD_PIXELS
    results = []
    for name, data in uploads:
        result = {"name": name, "ok": False, "error": None, "top": [], "probabilities": {}, "image": None}
        try:
            result["image"] = images.load_rgb(data, classifier.size, classifier.policy, name=name, max_pixels=max_pixels)
        except (ValueError, OSError) as exc:
            result["error"] = str(exc)
        results.append(result)
    loaded = [result for result in results if result["image"] is not None]
    if loaded:
        probabilities = classifier.predict_arrays(np.stack([result["image"] for result in loaded]))
        for result, row in zip(loaded, probabilities):
            result.update(ok=True, top=top_genres(row, classifier.classes, top_k),
                          probabilities={genre: float(p) for genre, p in zip(classifier.classes, row)})
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
