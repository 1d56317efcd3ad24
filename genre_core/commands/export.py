"""`export` command: a classifier run's model as a TensorFlow SavedModel, a TFLite file or an ONNX file.

    python -m genre_core export RUN --format saved_model --out exported/genre_model
    python -m genre_core export RUN --format tflite --out exported/genre.tflite
    python -m genre_core export RUN --format onnx --out exported/genre.onnx      # needs tf2onnx

The exported graph takes float32 RGB pixels 0..255 at the run's size and does its own preprocessing; the JSON
sidecar `<out>.json` names the classes, the input size and the resize policy (genre_core/export.py).
"""

from __future__ import annotations

from genre_core.evaluation import export


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export a run's model (saved_model, tflite or onnx) with a "
                                                  "JSON sidecar")
    parser.add_argument("run", help="run id or run folder")
    parser.add_argument("--format", required=True, choices=("saved_model", "tflite", "onnx"), help="export format")
    parser.add_argument("--out", required=True, help="output folder (saved_model) or file (.tflite, .onnx)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export at --out")
    parser.add_argument("--no-check", action="store_true", help="skip reloading the export and comparing its "
                                                                "outputs with the Keras model")
    parser.add_argument("--json", action="store_true", help="print the sidecar as JSON")
    parser.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    """Export, print the output path and a one-line summary (or the sidecar as JSON)."""
    try:
        info = export.export_run(args.run, args.format, args.out, overwrite=args.overwrite, check=not args.no_check)
    except export.ExportUnavailable as exc:
        raise ValueError(str(exc)) from None
    if args.json:
        print(export.main_json(info))
    else:
        print(args.out)
        print(export.describe(info))
    return 0
