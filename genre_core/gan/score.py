"""Score a finished GAN run's generator again, in the fixed space (`quality.FIXED_SPACE`), against real images of
its genre(s) that it never trained on: its own held-out split (what history.csv's `kid_fixed` compares with), or
another dataset's images of the genre with every file of the run's own dataset left out by content.

Why (docs/gan-measurements.md, "Which landscapes are held out"): a run on the kit holds out 231 landscapes drawn
by its seed, and the same generated images scored 0.12 against one seed's draw and 0.31 against another's. The
full kit's landscapes outside the small kit (2,690, none trained on by any run of the small kit, the same
for every seed) measure a generator with far less of that noise.

Scores are kept in the run's folder (`scores.json`), one entry per reference, checkpoint, sample count and seed,
so a run explains itself with them.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from genre_core.data import cache as cache_module, sources
from genre_core.gan import quality, trainer
from genre_core.runs import store
from genre_core.util import fileio

SCORES_FILE = "scores.json"
HELD_OUT = "held-out"  # the reference when no dataset is given: the run's own held-out split
MIN_REFERENCE_IMAGES = 20  # fewer real images than this make no KID worth reporting


def reference_images(config: trainer.GanConfig, data: str | None = None) -> dict:
    """The real images to score against, per genre of the run: {genre: uint8 (N, S, S, 3)}, plus "what"
    (a sentence on where they come from) and "left_out" (files of `data` that are the run's own, dropped).

    Without `data`: the run's held-out split, as training chose it (`trainer.load_training_images`; the
    training images themselves when the genre was too small to hold any out, which "what" says). With `data`:
    that dataset's images of the run's genres, less every file byte-identical to one of the run's dataset."""
    if data is None:
        loaded = trainer.load_training_images(config)
        images, _, reference, reference_labels, classes = loaded
        unsplit = reference is images
        what = "the run's training images (its genre had too few to hold any out)" if unsplit else \
            f"the run's held-out images of {config.data} ({trainer.held_out_text(config, loaded.held_out_from)})"
        return {"images": {name: reference[reference_labels == index] for index, name in enumerate(classes)},
                "what": what, "left_out": 0}
    genres = list(config.genres) if config.conditional else [config.genre]
    if not Path(data).exists():
        raise FileNotFoundError(f"reference dataset {data} does not exist")
    wanted = sources.keep_genres(sources.load_dataset(data), genres)
    own = sources.keep_genres(sources.load_dataset(config.data), genres)
    outside, left_out = sources.without_files_of(wanted, own)
    result = {}
    for name in genres:
        count = int((outside.manifest["genre"] == name).sum())
        if count < MIN_REFERENCE_IMAGES:
            raise ValueError(f"reference dataset {data}: {count} images of genre {name!r} are not in the run's "
                             f"dataset {config.data} ({left_out} of its files are); at least "
                             f"{MIN_REFERENCE_IMAGES} are needed")
    cache = cache_module.prepare_cache(outside, (config.image_size, config.image_size), config.policy)
    for name in genres:
        result[name] = cache_module.load_arrays(cache, cache.ok_indices(genre=name))[0]
    return {"images": result, "what": f"images of {data} not in {config.data}", "left_out": int(left_out)}


def score_run(run, reference: dict, samples: int = 1024, seed: int = 0,
              checkpoint: str = trainer.DEFAULT_CHECKPOINT, data: str | None = None) -> dict:
    """Fixed-space KID of `samples` images of the run's `checkpoint` generator (latents from `seed`) against
    `reference` (`reference_images`, given so that several runs on one dataset share it), per genre and their
    mean; the entry is also kept in the run's scores.json (replacing one with the same reference, checkpoint,
    samples and seed). The real images' features are kept in `reference["features"]` for the next run."""
    if int(samples) < 2:
        raise ValueError(f"samples must be at least 2, got {samples}")
    run = store.open_run(run, kind="gan")
    _scores(run)  # a damaged scores.json is named before any work, and never written over
    extractor = quality.feature_extractor("hed_vgg16_fixed")
    conditional = trainer.GanConfig.from_run_config(run.config()).conditional
    per_genre = {}
    for name, real in reference["images"].items():
        if len(real) < 2:
            raise ValueError(f"run {run.id}: only {len(real)} real images of {name!r} to score against")
        generated = trainer.sample(run, int(samples), seed, name if conditional else None, checkpoint)
        # The real images' features are computed once per reference, for every run scored against it.
        real_features = reference.setdefault("features", {})
        if name not in real_features:
            real_features[name] = extractor(real)
        kid = quality.fixed_kid(extractor(generated), real_features[name], seed=seed)
        per_genre[name] = {"kid": kid["kid"], "kid_std": kid["kid_std"], "n_real": kid["n_real"],
                           "n_generated": kid["n_generated"]}
    entry = {"reference": data or HELD_OUT, "what": reference["what"], "left_out": reference["left_out"],
             "checkpoint": checkpoint, "samples": int(samples), "seed": int(seed),
             "feature_space": quality.FIXED_SPACE, "kid": float(np.mean([item["kid"] for item in per_genre.values()])),
             "per_genre": per_genre,
             "scored": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    same = ("reference", "checkpoint", "samples", "seed")
    kept = [old for old in _scores(run) if [old.get(key) for key in same] != [entry[key] for key in same]]
    fileio.atomic_write_json(run.path / SCORES_FILE, {"scores": kept + [entry]})
    return entry


def reference_key(config: trainer.GanConfig, data: str | None = None) -> tuple:
    """What decides a run's reference images (`reference_images`): runs with the same key share one. Against
    `data`, the run's dataset, genres, size and policy; against its own held-out split, also what draws that
    split (seed, `holdout`, `holdout_fraction`), so that two runs of one seed drawn differently never share one."""
    key = (config.data, tuple(config.genres) if config.conditional else config.genre, config.image_size,
           config.policy)
    return key if data else key + (config.seed, config.holdout, config.holdout_fraction)


def score_runs(runs, data: str | None = None, samples: int = 1024, seed: int = 0,
               checkpoint: str = trainer.DEFAULT_CHECKPOINT, on_result=None) -> list[dict]:
    """Score each run (`score_run`); runs with the same `reference_key` share one reference. One
    entry per run, in order: the score, or {"run", "problem"} for a run that could not be scored
    (the others are still scored). `on_result(entry)` is called as each run's entry is ready."""
    results, references = [], {}
    for name in runs:
        try:
            run = store.open_run(name, kind="gan")
            config = trainer.GanConfig.from_run_config(run.config())
            key = reference_key(config, data)
            if key not in references:
                references[key] = reference_images(config, data)
            result = {"run": run.id, "path": str(run.path),
                      **score_run(run, references[key], samples, seed, checkpoint, data)}
        except (OSError, ValueError, KeyError) as exc:
            result = {"run": str(name), "problem": str(exc)}
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


SCORE_COLUMNS = ("reference", "checkpoint", "samples", "seed", "genre", "kid", "kid_std", "n_real", "left_out",
                 "scored")


def read_scores(run) -> list[dict]:
    """The run's kept scores as rows (SCORE_COLUMNS), one per entry and genre, oldest first; [] when it has none.
    A damaged scores.json raises ValueError naming it."""
    rows = []
    for entry in _scores(store.open_run(run, kind="gan")):
        for genre, item in (entry.get("per_genre") or {}).items():
            rows.append({**{key: entry.get(key) for key in SCORE_COLUMNS}, "genre": genre, "kid": item.get("kid"),
                         "kid_std": item.get("kid_std"), "n_real": item.get("n_real")})
    return rows


def _scores(run: store.Run) -> list[dict]:
    """The entries of the run's scores.json ([] when it has none); a damaged one raises ValueError naming it,
    so that scoring never writes over it."""
    path = run.path / SCORES_FILE
    record = fileio.read_json(path, default={}) or {}
    entries = record.get("scores", []) if isinstance(record, dict) else None
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise ValueError(f"{path}: not a scores record (expected {{\"scores\": [...]}})")
    return entries
