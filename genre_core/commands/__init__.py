"""CLI command groups; see genre_core/cli.py."""
