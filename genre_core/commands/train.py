"""`train` command: train a classifier in the foreground (progress bar) or as a background job.

    python -m genre_core train --data demo --model small_cnn --epochs 5
    python -m genre_core train --config my_run.json --epochs 20      # flags override the file
    python -m genre_core train --data PATH --recipe cpu-15min          # the measured real-painting recipe
    python -m genre_core train --list-models

It prints the run folder. On several machines, run the same command on every machine with TF_CONFIG set;
the chief writes the run folder (see genre_core/training/distribute.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from genre_core.commands.progress import TerminalProgress
from genre_core.models import zoo
from genre_core.runs import jobs
from genre_core.training.config import recipe_values, TrainConfig

# Flag name -> (TrainConfig field, type, help). Every flag defaults to None so that only given flags
# override --config.
OPTIONS = {
    "--data": ("data", str, "dataset folder, metadata file (.csv/.parquet) or 'demo'"),
    "--model": ("model", str, "model name (see --list-models)"),
    "--size": ("size", int, "input size in pixels (default: the model's own)"),
    "--policy": ("policy", str, "resize policy: squash, crop or letterbox"),
    "--epochs": ("epochs", int, "number of epochs"),
    "--batch-size": ("batch_size", int, "batch size per replica"),
    "--learning-rate": ("learning_rate", float, "learning rate"),
    "--optimizer": ("optimizer", str, "adam, adamw or sgd"),
    "--beta-1": ("beta_1", float, "Adam beta_1"),
    "--beta-2": ("beta_2", float, "Adam beta_2"),
    "--weight-decay": ("weight_decay", float, "AdamW decay, or L2 on the head for adam/sgd"),
    "--dropout": ("dropout", float, "dropout rate before the softmax"),
    "--augment": ("augmentation", "list", "comma list: flip,crop,zoom,rotation,contrast,brightness"),
    "--patience": ("patience", int, "early stopping patience in epochs on val_loss (0: off)"),
    "--balancing": ("balancing", str, "none, class_weights, focal or oversample"),
    "--min-per-genre": ("min_per_genre", int, "oversample: minimum train images per genre"),
    "--label-smoothing": ("label_smoothing", float, "label smoothing"),
    "--data-fraction": ("data_fraction", float, "use this fraction of each split and genre"),
    "--fine-tune-layers": ("fine_tune_layers", int, "train the backbone's last N layers (0: frozen)"),
    "--head-units": ("head_units", int, "hidden units in the head (0: softmax on the features)"),
    "--weights": ("weights", str, "default, imagenet, hed, none or a local weights file"),
    "--variant": ("variant", str, "resnet50_transfer: keep_top, replace_top or fine_tune"),
    "--feature-layers": ("feature_layers", "list", "hed_vgg16: comma list of conv layers to pool"),
    "--pooling": ("pooling", str, "hed_vgg16: avg or avgstd"),
    "--feature-transform": ("feature_transform", str, "frozen features: none or sqrt (power normalisation)"),
    "--lr-schedule": ("lr_schedule", str, "constant or cosine (decay to 0 over the epochs)"),
    "--feature-engine": ("feature_engine", str, "frozen backbones' feature pass: auto, keras or ncnn "
                                                 "(auto: ncnn on a CPU when the backbone converts)"),
    "--logit-adjustment": ("logit_adjustment", float, "post-hoc logit adjustment tau: probabilities divided by "
                                                       "the train priors**tau (0: off, 1: balanced)"),
    "--cv-folds": ("cv_folds", int, "frozen features: k-fold cross-validation on train+val before training "
                                    "the kept model (0: off)"),
    "--seed": ("seed", int, "random seed"),
    "--val-fraction": ("val_fraction", float, "validation fraction when the source has no val split"),
    "--test-fraction": ("test_fraction", float, "test fraction when the source has no test split"),
}
SWITCHES = {
    "--flip-features": ("flip_features", True, "frozen backbones: also cache features of flipped images"),
    "--no-embedding-cache": ("embedding_cache", False, "run a frozen backbone every epoch (real augmentation)"),
    "--mixed-precision": ("mixed_precision", True, "mixed_float16 on GPUs"),
    "--xla": ("xla", True, "compile the train step (and a frozen backbone's feature pass) with XLA"),
    "--refit": ("refit", True, "train the kept model on train+val (no validation scores; all epochs)"),
}


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a genre classifier; prints the run folder")
    for flag, (_field, kind, text) in OPTIONS.items():
        parser.add_argument(flag, type=str if kind == "list" else kind, default=None, help=text)
    for flag, (_field, _value, text) in SWITCHES.items():
        parser.add_argument(flag, action="store_true", default=None, help=text)
    parser.add_argument("--recipe", default=None,
                        help="start from a named recipe measured on real paintings (cpu-15min); "
                             "--config and flags override it")
    parser.add_argument("--config", default=None, help="JSON file of TrainConfig options (flags override it)")
    parser.add_argument("--background", action="store_true", help="launch as a background job and return")
    parser.add_argument("--list-models", action="store_true", help="list the model names and exit")
    parser.set_defaults(func=cmd_train)


def config_from_args(args):
    """Build the TrainConfig from --config and the flags given (ValueError on bad values)."""
    values = recipe_values(args.recipe) if getattr(args, "recipe", None) else {}
    if args.config:
        file_config = TrainConfig.from_json(args.config)  # validates, with errors that name the file
        given = json.loads(Path(args.config).read_text(encoding="utf-8"))
        values.update({key: getattr(file_config, key) for key in given})  # only the options the file sets
    for flag, (field, kind, _text) in OPTIONS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        if kind == "list":
            value = [item.strip() for item in value.split(",") if item.strip()]
        if field == "weights" and value.lower() == "none":
            value = None
        values[field] = value
    for flag, (field, switched, _text) in SWITCHES.items():
        if getattr(args, flag[2:].replace("-", "_")):
            values[field] = switched
    if "data" not in values:
        raise ValueError("--data is required (a dataset path or 'demo'), or give it in --config")
    return TrainConfig.from_dict(values)


def cmd_train(args) -> int:
    """Train in the foreground with a progress bar (or launch a job) and print the run folder."""
    if args.list_models:
        for name, spec in zoo.MODELS.items():
            print(f"{name:20s} {spec.default_size:4d} px  {spec.description}")
        return 0
    config = config_from_args(args)
    zoo.get_spec(config.model)
    if args.background:
        run = jobs.start("classifier", config, background=True)
        print(run.path)
        return 0
    # A tqdm bar on a terminal; in a log, a plain line at most every 10 s plus every epoch's summary.
    bar = TerminalProgress(min_seconds=10.0)
    run = jobs.start("classifier", config, background=False, progress=bar)
    bar.close()
    status = run.status()
    state = status.get("state")
    print(run.path)
    if state != "finished":
        reason = status.get("error") or status.get("message") or state
        print(f"error: run {state}: {reason}", file=sys.stderr)
        return 1
    print(status.get("message", "finished"), file=sys.stderr)
    return 0

