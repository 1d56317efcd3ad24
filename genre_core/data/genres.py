"""Genre vocabularies: Painter by Numbers (42 genres), ArtGAN WikiArt (10 genres) and the mapping between them.

The Painter by Numbers (PBN) names are spelled exactly as in Kaggle's `all_data_info.csv`, listed by how often
they occur there (103,250 rows; 1,254 rows have no genre). The CS230 report we start from counted 44 classes;
the real file has 42 genre strings plus the blank one.

Mapping PBN -> ArtGAN. ArtGAN's 10 classes are 10 of WikiArt's own genre tags, so the strict mapping
(`PBN_TO_ARTGAN`) only renames those 10 and maps nothing else: a self-portrait, a marina or a veduta carries
its own WikiArt tag and was deliberately not part of ArtGAN's 10 classes. A broader, opt-in mapping
(`PBN_TO_ARTGAN_BROAD`, used with `map_genre(..., broad=True)`) also folds in the PBN genres that are plainly
a sub-kind of one ArtGAN class:

- self-portrait -> portrait
- marina, cloudscape, panorama, pastorale, shan shui -> landscape (views of sea, sky and countryside)
- veduta, capriccio -> cityscape (real and imaginary city views)
- flower painting, vanitas -> still_life
- bird-and-flower painting is NOT mapped (a Chinese genre of living subjects, not a still life), nor are the
  narrative genres (mythological, history, allegorical, literary, battle) that overlap several classes.
"""

from __future__ import annotations

import functools

# The 42 genres of Painter by Numbers' all_data_info.csv, most frequent first, spelled as in the file.
PBN_GENRES: tuple[str, ...] = (
    "portrait",
    "landscape",
    "genre painting",
    "abstract",
    "religious painting",
    "cityscape",
    "sketch and study",
    "illustration",
    "still life",
    "symbolic painting",
    "nude painting (nu)",
    "figurative",
    "design",
    "mythological painting",
    "marina",
    "flower painting",
    "animal painting",
    "self-portrait",
    "allegorical painting",
    "history painting",
    "interior",
    "literary painting",
    "battle painting",
    "wildlife painting",
    "poster",
    "capriccio",
    "veduta",
    "caricature",
    "cloudscape",
    "tessellation",
    "calligraphy",
    "pastorale",
    "bird-and-flower painting",
    "miniature",
    "bijinga",
    "yakusha-e",
    "advertisement",
    "shan shui",
    "vanitas",
    "quadratura",
    "panorama",
    "urushi-e",
)

# The 10 genres of the ArtGAN WikiArt split, in the order (and with the indices) of its `genre_class` file.
ARTGAN_GENRES: tuple[str, ...] = (
    "abstract_painting",
    "cityscape",
    "genre_painting",
    "illustration",
    "landscape",
    "nude_painting",
    "portrait",
    "religious_painting",
    "sketch_and_study",
    "still_life",
)

# Strict mapping: the 10 PBN genres that are the same WikiArt tag as an ArtGAN class.
PBN_TO_ARTGAN: dict[str, str] = {
    "abstract": "abstract_painting",
    "cityscape": "cityscape",
    "genre painting": "genre_painting",
    "illustration": "illustration",
    "landscape": "landscape",
    "nude painting (nu)": "nude_painting",
    "portrait": "portrait",
    "religious painting": "religious_painting",
    "sketch and study": "sketch_and_study",
    "still life": "still_life",
}

# Opt-in broader mapping: the strict one plus PBN genres that are a sub-kind of one ArtGAN class.
PBN_TO_ARTGAN_BROAD: dict[str, str] = {
    **PBN_TO_ARTGAN,
    "self-portrait": "portrait",
    "marina": "landscape",
    "cloudscape": "landscape",
    "panorama": "landscape",
    "pastorale": "landscape",
    "shan shui": "landscape",
    "veduta": "cityscape",
    "capriccio": "cityscape",
    "flower painting": "still_life",
    "vanitas": "still_life",
}

# ArtGAN -> PBN is one-to-one for the 10 strict pairs.
ARTGAN_TO_PBN: dict[str, str] = {artgan: pbn for pbn, artgan in PBN_TO_ARTGAN.items()}

VOCABULARIES: dict[str, tuple[str, ...]] = {"pbn": PBN_GENRES, "artgan": ARTGAN_GENRES}

# Names that mean "no genre" in the sources we read (HF WikiArt exports use "Unknown Genre").
NO_GENRE_NAMES = frozenset({"", "nan", "none", "unknown", "unknown genre", "unknown_genre", "n/a"})


@functools.lru_cache(maxsize=4096)
def normalize_name(name: str) -> str:
    """Lower-case a genre name and unify separators, so "Genre_Painting" and "genre painting" compare equal."""
    return " ".join(str(name).strip().lower().replace("_", " ").split())


_PBN_BY_KEY = {normalize_name(genre): genre for genre in PBN_GENRES}
_ARTGAN_BY_KEY = {normalize_name(genre): genre for genre in ARTGAN_GENRES}


def is_no_genre(name) -> bool:
    """True for a missing or placeholder genre (None, NaN, blank, "Unknown Genre")."""
    if name is None:
        return True
    if isinstance(name, float) and name != name:
        return True
    return normalize_name(name) in NO_GENRE_NAMES


def is_known_genre(name: str) -> bool:
    """True if the name is a PBN or an ArtGAN genre (compared after `normalize_name`)."""
    key = normalize_name(name)
    return key in _PBN_BY_KEY or key in _ARTGAN_BY_KEY


def map_genre(name: str, target: str = "artgan", *, broad: bool = False) -> str | None:
    """Map a genre name from either vocabulary to `target` ("artgan" or "pbn"); None when there is no match.

    Names are compared after `normalize_name`, so "Still_Life", "still life" and "still_life" all work.
    `broad=True` uses `PBN_TO_ARTGAN_BROAD` (e.g. self-portrait -> portrait) when the target is "artgan".
    """
    if target not in VOCABULARIES:
        raise ValueError(f"unknown genre vocabulary {target!r}; use one of {', '.join(VOCABULARIES)}")
    key = normalize_name(name)
    if target == "artgan":
        if key in _ARTGAN_BY_KEY:
            return _ARTGAN_BY_KEY[key]
        if key in _PBN_BY_KEY:
            mapping = PBN_TO_ARTGAN_BROAD if broad else PBN_TO_ARTGAN
            return mapping.get(_PBN_BY_KEY[key])
        return None
    if key in _PBN_BY_KEY:
        return _PBN_BY_KEY[key]
    if key in _ARTGAN_BY_KEY:
        return ARTGAN_TO_PBN[_ARTGAN_BY_KEY[key]]
    return None
