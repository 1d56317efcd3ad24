"""`data` commands: `data info PATH`, `data prepare PATH --size N`, `data demo`.

Wherever a dataset path is expected, the word `demo` means the bundled demo dataset.
"""

from __future__ import annotations

import json
import time

from genre_core.commands.progress import TerminalProgress
from genre_core.data import demo
from genre_core.data.cache import prepare_cache
from genre_core.data.images import parse_size, POLICIES
from genre_core.data.sources import check_images, load_dataset
from genre_core.data.splits import imbalance_stats
from genre_core.runs import access


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="inspect datasets, prepare image caches, generate the demo dataset")
    commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    commands.required = True

    info = commands.add_parser("info", help="counts per genre and split, missing and unreadable files, problems")
    info.add_argument("path", help="dataset folder, metadata file (.csv/.parquet) or the word 'demo'")
    info.add_argument("--source", default=None, help="pbn, artgan, folder, csv, parquet or demo (default: detect)")
    info.add_argument("--check", action="store_true", help="also open every image's header to find unreadable files")
    info.add_argument("--json", action="store_true", help="print the report as JSON")
    info.set_defaults(func=cmd_info)

    prepare = commands.add_parser("prepare", help="decode every image once into the preprocessed cache")
    prepare.add_argument("path", help="dataset folder, metadata file (.csv/.parquet) or the word 'demo'")
    prepare.add_argument("--source", default=None, help="pbn, artgan, folder, csv, parquet or demo (default: detect)")
    prepare.add_argument("--size", default="224", help="N or WIDTHxHEIGHT in pixels (default 224)")
    prepare.add_argument("--policy", default="squash", help="squash, crop or letterbox (default squash)")
    prepare.add_argument("--workers", type=int, default=None, help="decoding processes (default: all CPUs)")
    prepare.set_defaults(func=cmd_prepare)

    demo = commands.add_parser("demo", help="generate the bundled demo dataset (if needed) and print its folder")
    demo.set_defaults(func=cmd_demo)


def check_roots(path: str) -> None:
    """With GENRE_DATA_ROOTS set, refuse (ValueError, one line) a dataset path outside those folders."""
    roots = access.data_roots()
    if roots is not None:
        access.check_dataset_path(path, roots)


def cmd_info(args) -> int:
    """Print what a dataset holds and what is wrong with it."""
    check_roots(args.path)
    dataset = load_dataset(args.path, source=args.source)
    if args.check:
        check_images(dataset, progress=TerminalProgress("checking images", bar_stages=None))
    if args.json:
        print(json.dumps(info_dict(dataset), indent=2, default=str))
    else:
        print(format_info(dataset))
    return 0


def cmd_prepare(args) -> int:
    """Build (or reuse) the preprocessed image cache and list the files that failed."""
    size = parse_size(args.size)
    if args.policy not in POLICIES:
        raise ValueError(f"resize policy {args.policy!r} is not one of {', '.join(POLICIES)}")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be 1 or more, not {args.workers}")
    check_roots(args.path)
    dataset = load_dataset(args.path, source=args.source)
    if dataset.manifest.empty:
        report = dataset.report
        raise ValueError(f"{args.path}: no usable images to prepare ({report['rows']:,} metadata rows, "
                         f"{report['missing_files']:,} missing files, {report['no_genre']:,} without a genre)")
    started = time.perf_counter()
    cache = prepare_cache(dataset, size, args.policy, progress=TerminalProgress("preparing", bar_stages=None),
                          workers=args.workers)
    seconds = time.perf_counter() - started
    failures = cache.failures()
    print(f"cache: {cache.folder}")
    print(f"{len(cache.manifest) - len(failures):,} images at {size[0]}x{size[1]} ({args.policy}), "
          f"{len(failures):,} failed, {seconds:.1f} s")
    for row in failures.itertuples(index=False):
        print(f"failed: {row.error or row.path}")
    return 0


def cmd_demo(args) -> int:
    """Generate the demo dataset if needed and print its folder."""
    print(demo.ensure_demo(progress=TerminalProgress("generating demo", bar_stages=None)))
    return 0


def info_dict(dataset) -> dict:
    """The report plus counts per genre and split, classes and fingerprint, as plain JSON values."""
    table = dataset.counts(by_split=True) if len(dataset.manifest) else None
    counts = {}
    if table is not None:
        counts = {str(genre): {str(split): int(value) for split, value in row.items()} for genre, row in table.iterrows()}
    return {
        **dataset.report,
        "classes": list(dataset.classes),
        "counts": counts,
        "fingerprint": dataset.fingerprint,
    }


def format_info(dataset) -> str:
    """A plain-text report for `data info`."""
    report = dataset.report
    lines = [
        f"source: {report['source']} ({report.get('root', dataset.root)})",
        f"metadata rows: {report['rows']:,}",
        f"images: {report['images']:,} usable (files present: {report.get('files_present', report['images']):,})",
        f"missing files: {report['missing_files']:,}",
        f"rows without a genre: {report['no_genre']:,}",
        f"duplicate rows dropped: {report['duplicates']:,}",
        f"unreadable files: {report.get('unreadable', 0):,}" + ("" if report.get("checked") else
                                                                " (empty files only; --check opens every image)"),
        f"genres: {report['genres']}" + (f" ({report['genres_with_images']} with images)"
                                         if report.get("genres_with_images", report["genres"]) != report["genres"] else ""),
    ]
    if len(dataset.manifest):
        stats = imbalance_stats(dataset.manifest)
        lines.append(f"imbalance ratio (most / fewest images per genre): {stats['imbalance_ratio']:.1f}")
        table = dataset.counts(by_split=True)
        table.columns = [str(column) for column in table.columns]
        table["total"] = table.sum(axis=1)
        rows_per_genre = report.get("rows_per_genre") or {}
        if rows_per_genre:
            table.insert(0, "rows", [rows_per_genre.get(genre, 0) for genre in table.index])
        lines.append("images per genre and split:")
        lines.extend("  " + line for line in table.to_string().splitlines())
    missing_genres = [genre for genre in (report.get("rows_per_genre") or {}) if genre not in set(dataset.classes)]
    if missing_genres:
        lines.append(f"genres named in the metadata with no image present ({len(missing_genres)}): "
                     + ", ".join(missing_genres))
    problems = report.get("problems") or []
    lines.append(f"problems: {len(problems)}" if problems else "problems: none")
    lines.extend(f"  - {problem}" for problem in problems)
    return "\n".join(lines)

