"""Benchmarks for classify and evaluate: one-image latency, Grad-CAM cost, a full evaluation of a large split,
`evaluate --data` on 500 paintings through the caches and the fast engine against the Keras path, and the GAN's
judge (64 images per epoch) on the fast engine against Keras."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

INPUT_SIZE = 128
NUM_CLASSES = 10
REPEATS = 40


def _median_interleaved(first, second, repeats: int = REPEATS) -> tuple[float, float]:
    """Median timings of two functions, run alternately so background load hits both equally."""
    first_times, second_times = [], []
    for _ in range(repeats):
        for function, times in ((first, first_times), (second, second_times)):
            began = time.perf_counter()
            function()
            times.append(time.perf_counter() - began)
    return statistics.median(first_times), statistics.median(second_times)


def _row(name: str, baseline: float, candidate: float, limit: float, note: str) -> dict:
    """One row whose ratio is candidate / baseline, ok when it is at most `limit`."""
    ratio = candidate / baseline if baseline > 0 else float("inf")
    return {"name": name, "baseline_s": round(baseline, 5), "candidate_s": round(candidate, 5),
            "ratio": round(ratio, 2), "target": f"<={limit:g}x", "ok": ratio <= limit, "note": note}


def _classifier(folder: Path):
    """Save a small_cnn (random weights) as a run folder and load it through the classify API."""
    from genre_core.evaluation import classify
    from genre_core.models import zoo
    from genre_core.util import fileio

    model = zoo.build_model("small_cnn", NUM_CLASSES, INPUT_SIZE, weights=None)
    model.save(folder / "model.keras")
    fileio.atomic_write_json(folder / "classes.json", [f"genre_{i}" for i in range(NUM_CLASSES)])
    fileio.atomic_write_json(folder / "config.json", {"kind": "classifier", "model": "small_cnn",
                                                      "size": INPUT_SIZE, "policy": "squash"})
    return classify.load_classifier(folder)


def bench_latency(classifier) -> dict:
    """Classifier.predict_arrays on one image against the bare `model(x)` call it wraps."""
    image = np.random.default_rng(0).integers(0, 256, (1, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    batch = image.astype(np.float32)
    for _ in range(5):
        classifier.predict_arrays(image)
        classifier.model(batch, training=False)
    bare, wrapped = _median_interleaved(lambda: np.asarray(classifier.model(batch, training=False)),
                                        lambda: classifier.predict_arrays(image))
    return _row("classify: one image, predict_arrays vs bare model(x)", bare, wrapped, 1.3,
                f"small_cnn {INPUT_SIZE}px, median of {REPEATS}")


def bench_gradcam(classifier) -> dict:
    """Grad-CAM (layer-by-layer traced forward + gradient) against one plain forward pass."""
    from genre_core.evaluation import classify

    image = np.random.default_rng(1).integers(0, 256, (INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    batch = image[None].astype(np.float32)
    classify.gradcam(classifier, image)
    forward, heat = _median_interleaved(lambda: np.asarray(classifier.model(batch, training=False)),
                                        lambda: classify.gradcam(classifier, image), repeats=10)
    return _row("classify: Grad-CAM vs one forward pass", forward, heat, 6.0,
                "traced forward + backward; interactive use needs well under a second")


def bench_full_evaluation() -> dict:
    """Interpretation.summary() on a 5,354 x 10 split against bare scikit-learn report + matrix + log loss."""
    from sklearn.metrics import classification_report, confusion_matrix, log_loss

    from genre_core.evaluation import evaluate
    from genre_core.runs import store

    rng = np.random.default_rng(2)
    rows, classes = 5354, [f"genre_{i}" for i in range(NUM_CLASSES)]
    labels = rng.integers(0, NUM_CLASSES, rows)
    logits = rng.normal(0, 1, (rows, NUM_CLASSES))
    logits[np.arange(rows), labels] += 1.5
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = store.predictions_frame([f"/img/{i}.jpg" for i in range(rows)], [classes[i] for i in labels],
                                       probabilities, classes)
    predicted = probabilities.argmax(axis=1)

    def bare() -> None:
        classification_report(labels, predicted, labels=list(range(NUM_CLASSES)), output_dict=True, zero_division=0)
        confusion_matrix(labels, predicted, labels=list(range(NUM_CLASSES)))
        log_loss(labels, probabilities, labels=list(range(NUM_CLASSES)))

    ours = lambda: evaluate.Interpretation.from_predictions(frame, classes).summary()  # noqa: E731
    bare()
    ours()
    baseline, candidate = _median_interleaved(bare, ours, repeats=5)
    return _row("evaluate: full summary of 5,354 predictions vs bare sklearn report", baseline, candidate, 5.0,
                "adds top-3, balanced accuracy, most confused, label issues (cleanlab), JSON-ready tables")


def _cpu15min_classifier(run_dir: Path, classes):
    """An untrained classifier of the cpu-15min recipe (HED-VGG16 at 224 px, frozen, and a random head) saved as
    a run folder `run_dir`, loaded through the classify API."""
    from genre_core.evaluation import classify
    from genre_core.models import zoo
    from genre_core.training.config import recipe_values, TrainConfig
    from genre_core.util import fileio

    config = TrainConfig.from_dict({**recipe_values("cpu-15min"), "data": "demo"})
    run_dir.mkdir()
    model = zoo.build_model(config.model, len(classes), config.size, config.weights, **zoo.model_options(config))
    model.save(run_dir / "model.keras")
    fileio.atomic_write_json(run_dir / "classes.json", list(classes))
    fileio.atomic_write_json(run_dir / "config.json", config.to_dict())
    return classify.load_classifier(run_dir)


def bench_evaluate_data(images: int = 500) -> dict:
    """`evaluate RUN --data` on 500 demo paintings with the cpu-15min extractor (HED-VGG16, 224 px): the
    caches and the fast engine (cold caches: decoding and the ncnn pass included) against the Keras path it
    replaced (each image decoded, then the whole Keras model in batches of 32)."""
    from bench import make_row, temporary_artifacts
    from genre_core.data import sources
    from genre_core.evaluation import classify, evaluate

    with temporary_artifacts("bench_evaluate_data_") as folder:
        dataset = sources.load_dataset("demo")
        run_dir = folder / "run"
        classifier = _cpu15min_classifier(run_dir, dataset.classes)
        rows = dataset.manifest.head(images)

        def keras_path() -> None:
            batch = []
            for path in rows["path"]:
                batch.append(classifier.load(sources.read_image_bytes(path), name=path))
                if len(batch) == classify.PREDICT_BATCH_SIZE:
                    classifier.predict_arrays(np.stack(batch))
                    batch.clear()
            if batch:
                classifier.predict_arrays(np.stack(batch))

        started = time.perf_counter()
        keras_path()
        baseline = time.perf_counter() - started
        started = time.perf_counter()
        summary = evaluate.evaluate_run(run_dir, "demo", limit=images)
        candidate = time.perf_counter() - started
    return make_row(f"evaluate --data: {images} paintings, caches + fast engine vs Keras", baseline, candidate,
                    ">=1.5x", f"HED-VGG16 block3-5 mean+std at 224 px, cold caches; {summary['metrics']['n']} "
                              f"images scored; baseline {baseline / images * 1000:.0f} ms per image")


def bench_judge(images: int = 64, repeats: int = 3) -> dict:
    """What a GAN run's judge does every epoch: classify 64 images (the default `judge_samples`) with a
    cpu-15min classifier (HED-VGG16 at 224 px, frozen, and a head): `Classifier.with_engine("auto")` (the
    backbone on ncnn where it converts) against `predict_arrays` on the whole Keras model. Alternating rounds;
    the note gives how many images got the same genre and the largest probability difference."""
    from bench import make_row, temporary_artifacts
    from genre_core.data import sources

    with temporary_artifacts("bench_judge_") as folder:
        keras_judge = _cpu15min_classifier(folder / "run", sources.load_dataset("demo").classes)
        fast_judge = keras_judge.with_engine("auto")
        batch = np.random.default_rng(3).integers(0, 256, (images, keras_judge.size[1], keras_judge.size[0], 3),
                                                  dtype=np.uint8)
        expected, got = keras_judge.predict_arrays(batch), fast_judge.predict_arrays(batch)  # warm-up
        baseline, candidate = _median_interleaved(lambda: keras_judge.predict_arrays(batch),
                                                  lambda: fast_judge.predict_arrays(batch), repeats=repeats)
    same = int(np.sum(expected.argmax(axis=1) == got.argmax(axis=1)))
    return make_row(f"GAN judge: {images} images per epoch, with_engine('auto') ({fast_judge.engine}) vs Keras",
                    baseline, candidate, ">=1.0x",
                    f"cpu-15min classifier (random head), {keras_judge.size[0]} px, median of {repeats} alternating "
                    f"rounds; same genre for {same}/{images} images, largest probability difference "
                    f"{float(np.abs(expected - got).max()):.1e}")


def run() -> list[dict]:
    """All classify/evaluate benchmark rows."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="bench_evaluate_") as folder:
        folder = Path(folder)
        classifier = _classifier(folder)
        rows = [bench_latency(classifier), bench_gradcam(classifier), bench_full_evaluation()]
    return rows + [bench_evaluate_data(), bench_judge()]


if __name__ == "__main__":
    for result in run():
        print(result)
