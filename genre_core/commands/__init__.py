"""The command groups of `python -m genre_core`: one module per group, each with `register(subparsers)`."""


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""
