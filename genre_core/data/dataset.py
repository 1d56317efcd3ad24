"""The Dataset record every source produces: a manifest of images plus what `data info` reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

MANIFEST_COLUMNS = ("path", "genre", "split")
OPTIONAL_COLUMNS = ("artist", "style", "date", "width", "height", "title")
SPLITS = ("train", "val", "test")


@dataclass
class Dataset:
    """A dataset from any source, in one shape: see docs/architecture.md."""

    source: str
    root: Path
    manifest: pd.DataFrame
    classes: list[str]
    report: dict = field(default_factory=dict)
    fingerprint: str = ""

    @property
    def name(self) -> str:
        """A short display name: "demo" or the root folder's name."""
        return "demo" if self.source == "demo" else self.root.name

    def counts(self, by_split: bool = False) -> pd.Series | pd.DataFrame:
        """Images per genre (sorted by count, descending), or a genre x split table."""
        if by_split:
            table = pd.crosstab(self.manifest["genre"], self.manifest["split"].replace("", "unsplit"))
            return table.loc[table.sum(axis=1).sort_values(ascending=False).index]
        return self.manifest["genre"].value_counts()
