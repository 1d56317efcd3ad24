"""Command-line interface: `python -m genre_core <command> ...`.

Each command group lives in `genre_core/commands/<name>.py` and exposes `register(subparsers)`, which adds
its sub-parser and sets `func` (called with the parsed arguments, returning an exit code). Registering must
stay cheap: command modules import TensorFlow inside their functions, never at module level.
"""

from __future__ import annotations

import argparse
import os
import sys

from genre_core.commands import CliError, data, evaluate, export, gan, runs, search, train

# Command modules, in the order they appear in --help.
COMMAND_MODULES = (data, evaluate, runs, gan, train, search, export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m genre_core",
        description="Painting Genre Studio: datasets, training, evaluation and GANs from the command line.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CliError, ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        # One-line reason for bad input; tracebacks are for bugs, not for users.
        print(f"error: {exc}", file=sys.stderr)
        return 2
