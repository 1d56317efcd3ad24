"""Evaluation of a classifier run, in numbers first: metrics, interpretation, label-error hints, comparison.

Built fastai-style: an `Interpretation` is made once from a run's `predictions.csv` (or from any predictions
DataFrame) and answers small questions: `metrics()`, `per_class()`, `confusion_matrix()`, `most_confused()`,
`top_losses()`, `mistakes()`, `cell(true, predicted)`, `label_issues()`, `overfitting()`. Nothing here draws;
the app's pages turn these tables into charts. Metrics come from scikit-learn, label issues from cleanlab.

`evaluate_run(run)` writes `evaluation.json`, `per_class.csv` and `confusion.csv` into the run folder;
`evaluate_run(run, data=PATH)` re-evaluates the run's model on another dataset into
`run/evaluations/<dataset name>/`. `compare_runs()` and `learning_curves()` read many runs and never crash on
a damaged one.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from genre_core.data import genres, sources, splits
from genre_core.data.dataset import Dataset
from genre_core.data.images import parse_size
from genre_core.evaluation import bundle, classify
from genre_core.runs import store
from genre_core.training.scoring import mean_log_loss, PROBABILITY_FLOOR
from genre_core.util import fileio, paths


PREDICTION_COLUMNS = ("path", "true", "predicted", "confidence")
TOP_K = 3
# cleanlab's confident-learning estimates need a handful of examples of every given genre.
CLEANLAB_MIN_PER_CLASS = 5
# Probabilities are clipped away from zero before taking logarithms, as training's scores do.
EPSILON = PROBABILITY_FLOOR


# ----------------------------------------------------------------------------------------------------------
# Interpretation
# ----------------------------------------------------------------------------------------------------------


def _genre_index(classes: Sequence[str], genre: Any, what: str = "genre") -> int:
    """Turn a genre name or index into an index into `classes`; unknown genres raise ValueError."""
    if isinstance(genre, (int, np.integer)) and not isinstance(genre, bool):
        if 0 <= int(genre) < len(classes):
            return int(genre)
        raise ValueError(f"{what} index {genre} is outside 0..{len(classes) - 1}")
    name = str(genre)
    try:
        return list(classes).index(name)
    except ValueError:
        raise ValueError(f"unknown {what} {name!r}; known genres: {', '.join(classes)}") from None


@dataclass
class Interpretation:
    """Everything an evaluation needs, computed once from predictions: labels, probabilities and paths."""

    classes: list[str]
    labels: np.ndarray          # int (N,), index of the true genre
    probabilities: np.ndarray   # float (N, C), rows sum to 1
    paths: np.ndarray           # str (N,)
    predicted: np.ndarray       # int (N,), index of the predicted genre
    run_dir: Path | None = None
    run_metrics: dict | None = None
    config: dict | None = None
    history: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    _train_counts: pd.Series | None = field(default=None, repr=False)

    # ---- construction ------------------------------------------------------------------------------------

    @classmethod
    def from_predictions(cls, frame: pd.DataFrame, classes: Sequence[str], **extra: Any) -> "Interpretation":
        """Build from a predictions table: `path, true, predicted, confidence` + one probability column per class."""
        classes = [str(c) for c in classes]
        if len(classes) < 2:
            raise ValueError(f"need at least two genres to evaluate, got {classes}")
        if len(set(classes)) != len(classes):
            raise ValueError(f"genre names repeat in the class list: {classes}")
        missing = [c for c in classes if c not in frame.columns]
        if missing:
            raise ValueError(f"predictions have no probability column for genre(s) {', '.join(missing)}")
        if "true" not in frame.columns:
            raise ValueError("predictions have no 'true' column")
        if len(frame) == 0:
            raise ValueError("predictions are empty (0 rows)")
        probabilities = frame[classes].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        bad_rows = np.where(~np.isfinite(probabilities).all(axis=1) | (probabilities < 0).any(axis=1))[0]
        if len(bad_rows):
            raise ValueError(f"predictions row {int(bad_rows[0])}: probabilities missing, not numbers or negative")
        sums = probabilities.sum(axis=1)
        if (sums <= 0).any():
            raise ValueError(f"predictions row {int(np.argmax(sums <= 0))}: probabilities sum to 0")
        # Rounded CSV values sum to 1 only approximately; renormalise so every metric sees a distribution.
        probabilities = probabilities / sums[:, None]
        labels = np.array([cls._label_of(value, classes, row) for row, value in enumerate(frame["true"])], dtype=int)
        if "predicted" in frame.columns:
            predicted = np.array(
                [cls._label_of(value, classes, row, "predicted") for row, value in enumerate(frame["predicted"])],
                dtype=int,
            )
        else:
            predicted = probabilities.argmax(axis=1)
        paths_column = frame["path"].astype(str).to_numpy() if "path" in frame.columns else np.array(
            [f"row {i}" for i in range(len(frame))]
        )
        return cls(classes=classes, labels=labels, probabilities=probabilities, paths=paths_column,
                   predicted=predicted, **extra)

    @staticmethod
    def _label_of(value: Any, classes: list[str], row: int, column: str = "true") -> int:
        """Index of a genre given by name (or integer label) in one predictions row."""
        name = str(value)
        if name in classes:
            return classes.index(name)
        if isinstance(value, (int, np.integer)) and 0 <= int(value) < len(classes):
            return int(value)
        raise ValueError(f"predictions row {row}: {column} genre {name!r} is not one of {', '.join(classes)}")

    @classmethod
    def from_run(cls, run_or_path: Any) -> "Interpretation":
        """Build from a run folder's predictions.csv and classes.json (plus metrics, config, history)."""
        files = store.RunFiles.read(bundle.resolve_model_dir(run_or_path))
        if files.classes is None:
            raise ValueError(f"{files.path}: classes.json is missing or corrupt; cannot evaluate")
        frame = files.predictions()
        if frame is None:
            raise ValueError(f"{files.path}: predictions.csv is missing or unreadable; cannot evaluate")
        try:
            return cls.from_predictions(
                frame, files.classes, run_dir=files.path, run_metrics=files.metrics, config=files.config,
                history=files.history(),
            )
        except ValueError as exc:
            raise ValueError(f"{files.path / 'predictions.csv'}: {exc}") from None

    # ---- headline numbers --------------------------------------------------------------------------------

    @property
    def n_classes(self) -> int:
        """Number of genres."""
        return len(self.classes)

    @property
    def label_range(self) -> list[int]:
        """All label indices, so metrics count genres absent from this split too."""
        return list(range(self.n_classes))

    def metrics(self) -> dict:
        """Accuracy, balanced accuracy, top-3 accuracy, log loss, macro and weighted P/R/F1, and the overfitting gap."""
        from sklearn.metrics import (accuracy_score, balanced_accuracy_score, precision_recall_fscore_support,
                                     top_k_accuracy_score)

        k = min(TOP_K, self.n_classes)
        if k >= self.n_classes:
            # With k covering every genre, every example is a top-k hit (scikit-learn warns about this case).
            top_k = 1.0
        else:
            top_k = top_k_accuracy_score(self.labels, self.probabilities, k=k, labels=self.label_range)
        with warnings.catch_warnings():
            # Balanced accuracy warns when a genre has no test examples; the number is still the mean recall.
            warnings.simplefilter("ignore")
            balanced = balanced_accuracy_score(self.labels, self.predicted)
        result = {
            "n": int(len(self.labels)),
            "accuracy": float(accuracy_score(self.labels, self.predicted)),
            "balanced_accuracy": float(balanced),
            "top_k": k,
            "top3_accuracy": float(top_k),
            "log_loss": mean_log_loss(self.labels, self.probabilities, self.n_classes),
        }
        for average in ("macro", "weighted"):
            precision, recall, f1, _ = precision_recall_fscore_support(
                self.labels, self.predicted, labels=self.label_range, average=average, zero_division=0
            )
            result[f"{average}_precision"] = float(precision)
            result[f"{average}_recall"] = float(recall)
            result[f"{average}_f1"] = float(f1)
        result["overfitting"] = self.overfitting()
        return result

    def overfitting(self) -> dict:
        """Train-versus-test gap from metrics.json, and final train-versus-val accuracy from the history."""
        gap: dict[str, float | None] = {
            "train_accuracy": None, "test_accuracy": None, "accuracy_gap": None,
            "train_macro_f1": None, "test_macro_f1": None, "macro_f1_gap": None,
            "final_train_accuracy": None, "final_val_accuracy": None, "history_gap": None,
        }
        metrics_json = self.run_metrics if isinstance(self.run_metrics, dict) else {}
        for key in ("accuracy", "macro_f1"):
            train = _number(_nested(metrics_json, "train", key))
            test = _number(_nested(metrics_json, "test", key))
            gap[f"train_{key}"] = train
            gap[f"test_{key}"] = test
            if train is not None and test is not None:
                gap["accuracy_gap" if key == "accuracy" else "macro_f1_gap"] = train - test
        history = self.history
        if isinstance(history, pd.DataFrame) and len(history):
            last = history.iloc[-1]
            train = _number(last.get("accuracy"))
            val = _number(last.get("val_accuracy"))
            gap["final_train_accuracy"] = train
            gap["final_val_accuracy"] = val
            if train is not None and val is not None:
                gap["history_gap"] = train - val
        return gap

    # ---- tables ------------------------------------------------------------------------------------------

    def per_class(self, train_counts: bool = True) -> pd.DataFrame:
        """Per genre: precision, recall, F1, support (test count), predicted count and (optionally) training count."""
        from sklearn.metrics import precision_recall_fscore_support

        precision, recall, f1, support = precision_recall_fscore_support(
            self.labels, self.predicted, labels=self.label_range, average=None, zero_division=0
        )
        table = pd.DataFrame({
            "genre": self.classes,
            "precision": precision.astype(float),
            "recall": recall.astype(float),
            "f1": f1.astype(float),
            "support": support.astype(int),
            "predicted_count": np.bincount(self.predicted, minlength=self.n_classes).astype(int),
        })
        if train_counts:
            table["train_count"] = self.train_counts().reindex(self.classes).to_numpy(dtype=float)
        return table

    def f1_vs_train_count(self) -> pd.DataFrame:
        """Per-genre F1 next to the genre's training count, rarest genre first (the "rare genres" finding)."""
        table = self.per_class()[["genre", "train_count", "support", "f1", "recall"]]
        return table.sort_values(["train_count", "genre"], na_position="last", kind="stable").reset_index(drop=True)

    def confusion_matrix(self, normalize: str | None = None) -> pd.DataFrame:
        """Confusion matrix (rows = true genre, columns = predicted); normalize="true" gives row fractions."""
        from sklearn.metrics import confusion_matrix

        if normalize not in (None, "true"):
            raise ValueError(f"normalize must be None or 'true', not {normalize!r}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            matrix = confusion_matrix(self.labels, self.predicted, labels=self.label_range, normalize=normalize)
        frame = pd.DataFrame(matrix, index=pd.Index(self.classes, name="true"),
                             columns=pd.Index(self.classes, name="predicted"))
        return frame.fillna(0.0) if normalize else frame.astype(int)

    def most_confused(self, min_count: int = 1) -> pd.DataFrame:
        """Off-diagonal (true, predicted, count) pairs with at least `min_count` examples, most frequent first."""
        matrix = self.confusion_matrix().to_numpy()
        rows = [
            (self.classes[t], self.classes[p], int(matrix[t, p]))
            for t in range(self.n_classes) for p in range(self.n_classes)
            if t != p and matrix[t, p] >= max(min_count, 1)
        ]
        frame = pd.DataFrame(rows, columns=["true", "predicted", "count"])
        # Ties keep the matrix order (true genre, then predicted genre), so the ranking is deterministic.
        return frame.sort_values("count", ascending=False, kind="stable").reset_index(drop=True)

    def losses(self) -> np.ndarray:
        """Per-example cross-entropy loss, -log p(true genre)."""
        true_probability = self.probabilities[np.arange(len(self.labels)), self.labels]
        return -np.log(np.clip(true_probability, EPSILON, 1.0))

    def _examples(self, indices: np.ndarray) -> pd.DataFrame:
        """Rows for the given example indices: path, genres, confidences, loss and the top-3 list."""
        indices = np.asarray(indices, dtype=int)
        probabilities = self.probabilities[indices]
        frame = pd.DataFrame({
            "index": indices,
            "path": self.paths[indices],
            "true": [self.classes[i] for i in self.labels[indices]],
            "predicted": [self.classes[i] for i in self.predicted[indices]],
            "confidence": probabilities[np.arange(len(indices)), self.predicted[indices]],
            "true_probability": probabilities[np.arange(len(indices)), self.labels[indices]],
            "loss": self.losses()[indices],
        })
        frame["top3"] = [self._top(row) for row in probabilities]
        return frame

    def _top(self, probabilities: np.ndarray, k: int = TOP_K) -> list[tuple[str, float]]:
        """The k most probable (genre, probability) pairs of one example, most probable first."""
        order = np.argsort(-probabilities, kind="stable")[:k]
        return [(self.classes[i], float(probabilities[i])) for i in order]

    def top_losses(self, k: int | None = 10, misclassified_only: bool = False) -> pd.DataFrame:
        """The k examples with the largest loss (all examples when k is None), largest first."""
        candidates = np.arange(len(self.labels))
        if misclassified_only:
            candidates = candidates[self.predicted != self.labels]
        order = candidates[np.argsort(-self.losses()[candidates], kind="stable")]
        return self._examples(order[:k] if k is not None else order).reset_index(drop=True)

    def mistakes(self, k: int | None = None, by: str = "confidence") -> pd.DataFrame:
        """Misclassified examples ranked by confidence in the wrong genre (by="confidence") or by loss."""
        if by == "loss":
            return self.top_losses(k, misclassified_only=True)
        if by != "confidence":
            raise ValueError(f"rank mistakes by 'confidence' or 'loss', not {by!r}")
        wrong = np.where(self.predicted != self.labels)[0]
        confidence = self.probabilities[wrong, self.predicted[wrong]]
        order = wrong[np.argsort(-confidence, kind="stable")]
        return self._examples(order[:k] if k is not None else order).reset_index(drop=True)

    def cell(self, true: str | int, predicted: str | int) -> pd.DataFrame:
        """Examples in confusion cell (true, predicted), most confident in the predicted genre first."""
        true_index = _genre_index(self.classes, true, "true genre")
        predicted_index = _genre_index(self.classes, predicted, "predicted genre")
        members = np.where((self.labels == true_index) & (self.predicted == predicted_index))[0]
        confidence = self.probabilities[members, predicted_index]
        order = members[np.argsort(-confidence, kind="stable")]
        return self._examples(order).reset_index(drop=True)

    # ---- label errors ------------------------------------------------------------------------------------

    def label_issues(self, limit: int | None = None) -> pd.DataFrame:
        """Possible label errors, most likely first: cleanlab's confident learning, or a self-confidence ranking.

        The returned frame's `attrs["method"]` is "cleanlab" or "self_confidence", and `attrs["note"]` says
        why the fallback was used.
        """
        counts = np.bincount(self.labels, minlength=self.n_classes)
        present = counts[counts > 0]
        method, note = "cleanlab", ""
        indices: np.ndarray | None = None
        if present.min() < CLEANLAB_MIN_PER_CLASS:
            note = (f"too few examples for confident learning (cleanlab needs at least {CLEANLAB_MIN_PER_CLASS} "
                    f"per genre, the smallest has {int(present.min())}); showing misclassified examples ranked by "
                    "self-confidence instead")
        else:
            try:
                from cleanlab.filter import find_label_issues

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    indices = np.asarray(find_label_issues(
                        self.labels, self.probabilities, return_indices_ranked_by="self_confidence",
                        # One process: spawning workers costs more than the whole job on a test split.
                        n_jobs=1,
                    ), dtype=int)
            except (ValueError, IndexError, ZeroDivisionError, np.linalg.LinAlgError) as exc:
                note = f"cleanlab could not run ({exc}); showing misclassified examples ranked by self-confidence"
        if indices is None:
            method = "self_confidence"
            wrong = np.where(self.predicted != self.labels)[0]
            self_confidence = self.probabilities[wrong, self.labels[wrong]]
            indices = wrong[np.argsort(self_confidence, kind="stable")]
        if limit is not None:
            indices = indices[:limit]
        frame = self._examples(indices)
        frame = frame.rename(columns={"true": "given", "predicted": "suggested", "true_probability": "self_confidence"})
        frame = frame[["index", "path", "given", "suggested", "self_confidence", "confidence", "loss", "top3"]]
        frame = frame.reset_index(drop=True)
        frame.attrs["method"] = method
        frame.attrs["note"] = note
        return frame

    # ---- training counts ---------------------------------------------------------------------------------

    def train_counts(self) -> pd.Series:
        """Training images per genre: metrics.json "train_counts", else recounted (older runs); NaN if unknown."""
        if self._train_counts is None:
            self._train_counts = run_train_counts(self.run_metrics, self.config, self.classes, self.notes)
        return self._train_counts

    # ---- everything at once ------------------------------------------------------------------------------

    def summary(self, most_confused: int = 5) -> dict:
        """The full evaluation as plain JSON-ready data (what evaluation.json holds)."""
        metrics = self.metrics()
        per_class = self.per_class()
        issues = self.label_issues(limit=50)
        return {
            "run": self.run_dir.name if self.run_dir else None,
            "classes": self.classes,
            "metrics": metrics,
            "per_class": _records(per_class),
            "confusion_matrix": self.confusion_matrix().to_numpy().tolist(),
            "confusion_matrix_normalized": self.confusion_matrix("true").to_numpy().tolist(),
            "most_confused": _records(self.most_confused().head(most_confused) if most_confused else self.most_confused()),
            "mistakes_by_confidence": _records(self.mistakes(k=20).drop(columns=["top3"])),
            "mistakes_by_loss": _records(self.mistakes(k=20, by="loss").drop(columns=["top3"])),
            "label_issues": {"method": issues.attrs["method"], "note": issues.attrs["note"],
                             "examples": _records(issues.drop(columns=["top3"]))},
            "notes": list(self.notes),
        }


def run_train_counts(metrics: dict | None, config: dict | None, classes: list[str], notes: list[str] | None = None
                 ) -> pd.Series:
    """Training images per genre for a run: recorded counts, else recounted from its dataset, else NaN."""
    notes = notes if notes is not None else []
    counts = _recorded_train_counts(metrics, classes)
    if counts is None and isinstance(config, dict):
        # A run written before training recorded its counts: an older format, recounted (slow) with a note.
        counts = _recount_train_counts(config, classes, notes)
    if counts is None:
        counts = pd.Series(np.nan, index=classes, dtype=float)
    return counts.reindex(classes).astype(float)


def _records(frame: pd.DataFrame) -> list[dict]:
    """DataFrame rows as JSON-safe dicts (NaN becomes None)."""
    cleaned = frame.astype(object).where(pd.notna(frame), None)
    return [{key: _plain(value) for key, value in row.items()} for row in cleaned.to_dict(orient="records")]


def _plain(value: Any) -> Any:
    """A NumPy scalar as a plain Python value."""
    if hasattr(value, "item"):
        return value.item()
    return value


def _number(value: Any) -> float | None:
    """A finite float, or None for anything missing or not a number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _nested(mapping: Any, *keys: str) -> Any:
    """mapping[k1][k2]..., or None when any level is missing."""
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def _recorded_train_counts(metrics: dict | None, classes: list[str]) -> pd.Series | None:
    """The per-genre training counts training recorded in metrics.json ("train_counts", as trained: after
    oversampling and without unreadable images); None for a run written before they were recorded."""
    counts = metrics.get("train_counts") if isinstance(metrics, dict) else None
    if isinstance(counts, dict) and counts and any(genre in classes for genre in counts):
        return pd.Series({genre: _number(counts.get(genre)) for genre in classes}, dtype=float)
    return None


def _recount_train_counts(config: dict, classes: list[str], notes: list[str]) -> pd.Series | None:
    """Recount training images per genre by splitting the run's dataset again the way training does."""
    data = config.get("data")
    if not data:
        return None
    try:
        manifest = sources.load_dataset(data).manifest
        if "val_fraction" in config or "test_fraction" in config:
            # The same deterministic, seeded split (and subsample) the training run used.
            manifest = splits.assign_splits(manifest, float(config.get("val_fraction", 0.1)),
                                            float(config.get("test_fraction", 0.1)), int(config.get("seed", 0)))
            fraction = float(config.get("data_fraction", 1.0) or 1.0)
            if fraction < 1:
                manifest = splits.subsample(manifest, fraction, int(config.get("seed", 0)))
        train = manifest[manifest["split"] == "train"] if "split" in manifest.columns else manifest.iloc[0:0]
        if len(train) == 0:
            notes.append(f"training counts unknown: the run did not record them and {data} has no train split")
            return None
        notes.append(f"training counts recounted from {data} with the run's split settings: the run was written "
                     "before training recorded them (unreadable images and oversampling not taken into account)")
        return train["genre"].value_counts().reindex(classes).fillna(0).astype(float)
    except Exception as exc:  # noqa: BLE001 - a missing or changed dataset must not break evaluation.
        notes.append(f"training counts unknown: could not recount from {data} ({exc})")
        return None


# ----------------------------------------------------------------------------------------------------------
# Writing an evaluation, and re-evaluating on another dataset
# ----------------------------------------------------------------------------------------------------------


def write_evaluation(interpretation: Interpretation, folder: Path, extra: dict | None = None) -> dict:
    """Write evaluation.json, per_class.csv and confusion.csv into `folder`; return the summary."""
    summary = interpretation.summary()
    if extra:
        summary.update(extra)
    folder = Path(folder)
    fileio.atomic_write_json(folder / "evaluation.json", summary)
    fileio.atomic_write_csv(folder / "per_class.csv", interpretation.per_class())
    fileio.atomic_write_csv(folder / "confusion.csv", interpretation.confusion_matrix().reset_index())
    return summary


def evaluate_run(
    run_or_path: Any,
    data: str | os.PathLike | None = None,
    *,
    map_genres: bool = False,
    broad: bool = False,
    split: str | None = None,
    limit: int | None = None,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """Evaluate a run from its predictions.csv, or (with `data`) re-evaluate its model on another dataset.

    Returns the summary dict plus "folder" (where the files were written) and, with `data`, "skipped".
    """
    run_dir = bundle.resolve_model_dir(run_or_path)
    if data is None:
        if bundle.is_bundle(run_dir):
            raise ValueError("the bundled model ships no test predictions (see its model card for its "
                             "cross-validated numbers); evaluate it on labelled paintings with --data PATH")
        interpretation = Interpretation.from_run(run_dir)
        summary = write_evaluation(interpretation, run_dir)
        summary["folder"] = str(run_dir)
        return summary
    return _evaluate_on_dataset(run_dir, data, map_genres=map_genres, broad=broad, split=split, limit=limit,
                                progress=progress)


def _evaluate_on_dataset(run_dir: Path, data, *, map_genres: bool, broad: bool, split: str | None,
                         limit: int | None, progress) -> dict:
    """Run the saved model over another dataset's images and evaluate the result in run/evaluations/<name>/."""
    classifier = classify.load_classifier(run_dir)
    dataset = sources.load_dataset(data)
    manifest = dataset.manifest
    if split:
        if "split" not in manifest.columns or not (manifest["split"] == split).any():
            raise ValueError(f"dataset {data} has no images in split {split!r}")
        manifest = manifest[manifest["split"] == split]
    by_key = {genres.normalize_name(name): name for name in classifier.classes}
    skipped = {"unmapped_genre": 0, "unreadable": 0}
    unmapped: dict[str, int] = {}
    rows: list[tuple[str, str]] = []
    for path, genre in zip(manifest["path"].astype(str), manifest["genre"].astype(str)):
        target = genres.map_genre(genre, "artgan", broad=broad) if map_genres else genre
        name = by_key.get(genres.normalize_name(target)) if target else None
        if name is None:
            skipped["unmapped_genre"] += 1
            unmapped[genre] = unmapped.get(genre, 0) + 1
            continue
        rows.append((path, name))
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        hint = "" if map_genres else " (try --map-genres)"
        raise ValueError(f"no image in {data} has a genre the run knows ({', '.join(classifier.classes)}){hint}")

    started = time.perf_counter()
    # The selected rows as a dataset of the run's genres: decoded once into the image cache and, for a
    # frozen-feature model, passed once through the fast feature engine into the embedding cache.
    selection = Dataset(source="evaluation", root=Path(os.fspath(data)), classes=list(classifier.classes),
                        manifest=pd.DataFrame({"path": [path for path, _ in rows],
                                               "genre": [genre for _, genre in rows]}))
    probabilities, row_errors = classifier.predict_dataset(selection, progress=progress)
    ok = np.array([error is None for error in row_errors], dtype=bool)
    skipped["unreadable"] = int((~ok).sum())
    errors = [row_errors[index] for index in np.flatnonzero(~ok)[:20]]
    kept_paths = [path for (path, _), good in zip(rows, ok) if good]
    kept_genres = [genre for (_, genre), good in zip(rows, ok) if good]
    if not kept_paths:
        raise ValueError(f"none of the {len(rows)} images in {data} could be read; first error: {errors[:1]}")
    probability_matrix = probabilities[ok]
    frame = store.predictions_frame(kept_paths, kept_genres, probability_matrix, classifier.classes)
    folder = evaluations_dir(run_dir) / paths.sanitize_id(Path(os.fspath(data)).name or str(data))
    fileio.atomic_write_csv(folder / "predictions.csv", frame)
    interpretation = Interpretation.from_predictions(frame, classifier.classes, run_dir=run_dir)
    # Training counts are the run's own (what the model learnt from), not the other dataset's.
    run_files = store.RunFiles.read(run_dir)
    interpretation._train_counts = run_train_counts(run_files.metrics, run_files.config, classifier.classes,
                                                interpretation.notes)
    extra = {
        "data": os.fspath(data),
        "map_genres": map_genres,
        "skipped": skipped,
        "unmapped_genres": dict(sorted(unmapped.items(), key=lambda item: -item[1])),
        "read_errors": errors,
        "seconds": time.perf_counter() - started,
    }
    summary = write_evaluation(interpretation, folder, extra)
    summary["folder"] = str(folder)
    return summary


def evaluations_dir(run_dir: Path) -> Path:
    """Where evaluations of a run on other datasets go: RUN/evaluations, or for the bundled model (which
    lives inside the package) artifacts/evaluations/bundled-<name>."""
    if bundle.is_bundle(run_dir):
        return paths.artifacts_root() / "evaluations" / f"bundled-{run_dir.name}"
    return run_dir / "evaluations"


def format_summary(summary: dict, pairs: int = 5) -> str:
    """A compact text report: accuracy, macro-F1, the per-genre table and the most-confused pairs."""
    metrics = summary["metrics"]
    lines = [
        f"examples {metrics['n']}  accuracy {metrics['accuracy']:.3f}  balanced accuracy "
        f"{metrics['balanced_accuracy']:.3f}  top-{metrics['top_k']} {metrics['top3_accuracy']:.3f}  "
        f"macro-F1 {metrics['macro_f1']:.3f}  weighted-F1 {metrics['weighted_f1']:.3f}",
    ]
    gap = metrics.get("overfitting") or {}
    if gap.get("accuracy_gap") is not None:
        lines.append(f"train accuracy {gap['train_accuracy']:.3f} vs test {gap['test_accuracy']:.3f} "
                     f"(gap {gap['accuracy_gap']:+.3f})")
    if gap.get("history_gap") is not None:
        lines.append(f"final epoch: train accuracy {gap['final_train_accuracy']:.3f} vs val "
                     f"{gap['final_val_accuracy']:.3f} (gap {gap['history_gap']:+.3f})")
    if summary.get("skipped"):
        lines.append("skipped: " + ", ".join(f"{key} {value}" for key, value in summary["skipped"].items()))
    table = pd.DataFrame(summary["per_class"])
    columns = [c for c in ("genre", "train_count", "support", "precision", "recall", "f1") if c in table.columns]
    table = table[columns].copy()
    if "train_count" in table.columns:
        table["train_count"] = pd.to_numeric(table["train_count"], errors="coerce").astype("Int64")
    lines += ["", table.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")]
    confused = summary.get("most_confused") or []
    lines += ["", "most confused (true -> predicted: count):"]
    lines += [f"  {row['true']} -> {row['predicted']}: {row['count']}" for row in confused[:pairs]] or ["  none"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Comparing runs
# ----------------------------------------------------------------------------------------------------------

COMPARISON_COLUMNS = ("run", "model", "train_accuracy", "test_accuracy", "macro_f1", "macro_recall", "epochs",
                      "input_size", "wall_seconds", "problems")


def _input_size(config: dict | None) -> str | None:
    """The run's input size as text "WxH", whatever way the config stored it."""
    if not isinstance(config, dict):
        return None
    for key in ("size", "image_size", "input_size"):
        value = config.get(key)
        if value in (None, 0, "", "0"):
            continue
        try:
            width, height = parse_size(tuple(value) if isinstance(value, list) else value)
            return f"{width}x{height}"
        except (ValueError, TypeError, IndexError):
            return str(value)
    return None


def compare_runs(runs: Iterable[Any]) -> pd.DataFrame:
    """One row per run (the report's Table 4): model, train/test accuracy, macro-F1/recall, epochs, size, time.

    Missing or damaged files give NaN cells and a note in `problems`; a run never breaks the table.
    """
    rows = []
    for run in runs:
        row: dict[str, Any] = {column: np.nan for column in COMPARISON_COLUMNS}
        problems: list[str] = []
        try:
            files = store.RunFiles.read(bundle.resolve_model_dir(run))
        except (FileNotFoundError, ValueError) as exc:
            row["run"] = str(getattr(run, "run_id", run))
            row["problems"] = str(exc)
            rows.append(row)
            continue
        problems += files.problems
        config = files.config if isinstance(files.config, dict) else {}
        metrics = files.metrics if isinstance(files.metrics, dict) else {}
        row["run"] = files.run_id
        row["model"] = config.get("model", np.nan)
        row["train_accuracy"] = _number(_nested(metrics, "train", "accuracy"))
        row["test_accuracy"] = _number(_nested(metrics, "test", "accuracy"))
        row["macro_f1"] = _number(_nested(metrics, "test", "macro_f1"))
        row["macro_recall"] = _number(_nested(metrics, "test", "macro_recall"))
        row["wall_seconds"] = _number(metrics.get("wall_seconds"))
        row["input_size"] = _input_size(config) or np.nan
        history = files.history()
        if history is not None and "epoch" in history.columns and len(history):
            row["epochs"] = int(len(history))
        else:
            row["epochs"] = _number(config.get("epochs"))
        if (row["macro_f1"] is None or row["macro_recall"] is None or row["test_accuracy"] is None) \
                and files.classes is not None:
            frame = files.predictions()
            if frame is not None:
                try:
                    computed = Interpretation.from_predictions(frame, files.classes).metrics()
                    for key, source in (("test_accuracy", "accuracy"), ("macro_f1", "macro_f1"),
                                        ("macro_recall", "macro_recall")):
                        if row[key] is None:
                            row[key] = computed[source]
                except ValueError as exc:
                    problems.append(str(exc))
        row = {key: (np.nan if value is None else value) for key, value in row.items()}
        row["problems"] = "; ".join(dict.fromkeys(problems)) if problems else ""
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
    for column in ("train_accuracy", "test_accuracy", "macro_f1", "macro_recall", "epochs", "wall_seconds"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def learning_curves(runs: Iterable[Any]) -> pd.DataFrame:
    """Every run's history as a long table: run, epoch, metric, value (runs without a history are left out)."""
    parts = []
    for run in runs:
        try:
            files = store.RunFiles.read(bundle.resolve_model_dir(run))
        except (FileNotFoundError, ValueError):
            continue
        history = files.history()
        if history is None or len(history) == 0:
            continue
        history = history.copy()
        if "epoch" not in history.columns:
            history["epoch"] = np.arange(1, len(history) + 1)
        numeric = [c for c in history.columns if c != "epoch" and pd.api.types.is_numeric_dtype(history[c])]
        long = history.melt(id_vars=["epoch"], value_vars=numeric, var_name="metric", value_name="value")
        long.insert(0, "run", files.run_id)
        parts.append(long)
    if not parts:
        return pd.DataFrame(columns=["run", "epoch", "metric", "value"])
    return pd.concat(parts, ignore_index=True)
