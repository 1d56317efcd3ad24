"""TrainConfig: every option of a classifier run in one typed dataclass, saved as the run's config.json.

A run is rebuilt from its folder alone, so everything that changes the result lives here.

Augmentation and frozen features: when the backbone is frozen (`fine_tune_layers == 0` for a pretrained
backbone) and `embedding_cache` is on, features are computed once and the head trains on them in seconds.
Image augmentation cannot act on cached features, so in that mode the image augmentations listed in
`augmentation` are not applied; the only augmentation is `flip_features`, which also computes features of
horizontally flipped images (one more backbone pass) and picks the original or the flipped features at
random for every image in every epoch. Set `embedding_cache=False` to run the backbone on augmented images
each epoch instead (much slower, real augmentation).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from genre_core.data.images import POLICIES
from genre_core.models.layers import FEATURE_TRANSFORMS
from genre_core.runs.store import RUN_ONLY_KEYS
from genre_core.util import fileio

OPTIMIZERS = ("adam", "adamw", "sgd")
BALANCING = ("none", "class_weights", "focal", "oversample")
AUGMENTATIONS = ("flip", "crop", "zoom", "rotation", "contrast", "brightness")
POOLINGS = ("avg", "avgstd")
TRANSFER_VARIANTS = ("keep_top", "replace_top", "fine_tune")
LR_SCHEDULES = ("constant", "cosine")
FEATURE_ENGINES = ("auto", "keras", "ncnn")
_CHOICES = {"policy": POLICIES, "optimizer": OPTIMIZERS, "balancing": BALANCING, "pooling": POOLINGS,
            "feature_transform": FEATURE_TRANSFORMS, "lr_schedule": LR_SCHEDULES, "feature_engine": FEATURE_ENGINES,
            "variant": TRANSFER_VARIANTS}
_WHOLE_NUMBERS = ("size", "epochs", "batch_size", "patience", "min_per_genre", "fine_tune_layers", "head_units",
                  "seed", "cv_folds")
_NUMBERS = ("learning_rate", "beta_1", "beta_2", "momentum", "weight_decay", "dropout", "focal_gamma",
            "label_smoothing", "data_fraction", "val_fraction", "test_fraction", "logit_adjustment")

# Named recipes: training settings measured on real paintings (README "Results on real paintings"). A recipe
# sets the model and how it trains; the data, splits and seed stay the user's. `recipe_values` applies one.
RECIPES = {
    # Frozen HED-VGG16 block3/4/5 mean+std features at 224 px, power-normalised, and a linear softmax head
    # with L2, trained along a cosine learning-rate curve. The backbone pass runs on ncnn (feature_engine
    # "auto" on a CPU; 2-2.5x TensorFlow's speed). 9-11 min from nothing on 2 CPU cores for the 5,354 ArtGAN
    # paintings (almost all of it one backbone pass); about 50 s once the features are cached. XLA compiles
    # the head's train step (and the backbone pass when Keras runs it). Logit adjustment (tau 0.5): on 5-fold
    # cross-validation over the kit it trades 0.7 points of accuracy for 2.8 of macro-F1 and 6.4 of balanced
    # accuracy (60.4% / 0.494 / 0.470 -> 59.7% / 0.522 / 0.533).
    "cpu-15min": {
        "model": "hed_vgg16", "size": 224, "epochs": 100, "batch_size": 64, "learning_rate": 0.001,
        "optimizer": "adam", "patience": 0, "head_units": 0, "dropout": 0.0, "weight_decay": 0.033,
        "label_smoothing": 0.0, "balancing": "none", "feature_transform": "sqrt", "lr_schedule": "cosine",
        "feature_layers": ["block3_conv3", "block4_conv3", "block5_conv3"], "pooling": "avgstd",
        "embedding_cache": True, "xla": True, "feature_engine": "auto", "logit_adjustment": 0.5,
    },
}


def recipe_values(name: str) -> dict:
    """The TrainConfig values of a named recipe (a copy); ValueError naming the known recipes."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return json.loads(json.dumps(RECIPES[name]))


@dataclass
class TrainConfig:
    """All options of one classifier training run (see the module docstring for the feature-cache trade-off)."""

    data: str = "demo"
    model: str = "small_cnn"
    size: int = 0  # 0: the model's default input size (zoo.MODELS[name].default_size)
    policy: str = "squash"
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    beta_1: float = 0.9
    beta_2: float = 0.999
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0  # adamw: decoupled decay; adam/sgd: L2 on the head's kernels
    dropout: float = 0.0
    augmentation: list[str] = field(default_factory=list)
    patience: int = 0  # early stopping on val_loss; 0 switches it off
    balancing: str = "none"
    min_per_genre: int = 0  # oversample: top each genre of the train split up to this many images (0: the largest genre)
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    data_fraction: float = 1.0
    fine_tune_layers: int = 0  # pretrained backbones: train the last N layers (0: frozen)
    head_units: int = 120  # hidden Dense units before the softmax; 0 puts the softmax right on the features
    weights: str | None = "default"  # "default" (the model's own), "imagenet", "hed", a local file, or None
    variant: str = "replace_top"  # resnet50_transfer: keep_top | replace_top | fine_tune
    feature_layers: list[str] = field(default_factory=lambda: ["block3_conv3", "block4_conv3", "block5_conv3"])
    pooling: str = "avgstd"  # hed_vgg16 features: "avg" or "avgstd" (mean and standard deviation)
    feature_transform: str = "none"  # "sqrt": power-normalise pooled features (sign(x)*sqrt|x|) before the head
    lr_schedule: str = "constant"  # "cosine": decay the learning rate to 0 over all epochs (keras CosineDecay)
    embedding_cache: bool = True
    flip_features: bool = False
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    mixed_precision: bool = False
    xla: bool = False
    feature_engine: str = "auto"  # frozen backbone's feature pass: auto (ncnn on CPU when it converts), keras, ncnn
    # Post-hoc logit adjustment (Menon et al., ICLR 2021): the saved model divides its probabilities by the
    # train split's genre priors to the power tau and renormalises, so rare genres are not swallowed.
    logit_adjustment: float = 0.0
    # Frozen-feature runs: k-fold cross-validation of these settings on the train+val rows (the test split
    # stays out), from the same cached features, before the kept model trains; 0 switches it off.
    cv_folds: int = 0
    # Train the kept model on train+val (no validation: it trains all epochs and keeps the last weights).
    refit: bool = False
    kind: str = "classifier"

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build a config from a dict, rejecting unknown keys and invalid values with a clear message."""
        if not isinstance(values, dict):
            raise ValueError(f"a training config must be a JSON object, not {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown training option(s) {', '.join(unknown)}; known options are {', '.join(sorted(known))}"
            )
        config = cls(**values)
        config.validate()
        return config

    @classmethod
    def from_run_config(cls, values: dict) -> "TrainConfig":
        """The TrainConfig in a run's config.json (run-only keys such as "created" or "resume" set aside)."""
        return cls.from_dict({key: value for key, value in values.items() if key not in RUN_ONLY_KEYS})

    @classmethod
    def from_json(cls, path: str | Path) -> "TrainConfig":
        """Read a config JSON file (a run's config.json or a user's --config file)."""
        values = fileio.read_json_file(path, "config file")
        try:
            return cls.from_dict(values)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None

    def to_dict(self) -> dict:
        """Return the config as a plain JSON-ready dict."""
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        """Return a copy with some options changed (validated)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def validate(self) -> None:
        """Raise ValueError naming the first invalid option."""
        self._check_types()
        self._check_ranges()
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                self._fail(name, f"must be one of {', '.join(allowed)}")
        if not isinstance(self.augmentation, list) or any(a not in AUGMENTATIONS for a in self.augmentation):
            self._fail("augmentation", f"must be a list drawn from {', '.join(AUGMENTATIONS)}")
        if not isinstance(self.feature_layers, list) or not self.feature_layers:
            self._fail("feature_layers", "must be a non-empty list of layer names")
        if self.weights is not None and not isinstance(self.weights, str):
            self._fail("weights", "must be 'default', 'imagenet', 'hed', a file path, or null")
        if not isinstance(self.refit, bool):
            self._fail("refit", "must be true or false")
        if self.cv_folds and self.balancing == "oversample":
            self._fail("cv_folds", "cross-validation folds are not oversampled; use balancing class_weights or focal")
        if self.refit and self.patience:
            self._fail("patience", "early stopping needs a validation split, which refit trains on; set patience 0")
        if self.kind != "classifier":
            self._fail("kind", "must be 'classifier'")

    def _fail(self, name: str, reason: str):
        raise ValueError(f"option {name}={getattr(self, name)!r}: {reason}")

    def _check_types(self) -> None:
        """Strings where names go, whole numbers and numbers where they go."""
        if not isinstance(self.data, str) or not self.data:
            self._fail("data", "must be a dataset path or 'demo'")
        if not isinstance(self.model, str) or not self.model:
            self._fail("model", "must be a model name")
        for name in _WHOLE_NUMBERS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                self._fail(name, "must be a whole number >= 0")
        for name in _NUMBERS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self._fail(name, "must be a number")

    def _check_ranges(self) -> None:
        """Numbers inside their ranges."""
        if self.size and not 16 <= self.size <= 1024:
            self._fail("size", "must be 0 (model default) or between 16 and 1024 pixels")
        if self.epochs < 1:
            self._fail("epochs", "must be at least 1")
        if self.batch_size < 1:
            self._fail("batch_size", "must be at least 1")
        if not self.learning_rate > 0:
            self._fail("learning_rate", "must be > 0")
        if not 0 <= self.beta_1 < 1 or not 0 <= self.beta_2 < 1:
            raise ValueError(f"options beta_1={self.beta_1}, beta_2={self.beta_2}: must be in [0, 1)")
        for name in ("dropout", "label_smoothing"):
            if not 0 <= getattr(self, name) < 1:
                self._fail(name, "must be in [0, 1)")
        if self.weight_decay < 0:
            self._fail("weight_decay", "must be >= 0")
        if not 0 < self.data_fraction <= 1:
            self._fail("data_fraction", "must be in (0, 1]")
        if not 0 <= self.val_fraction < 1 or not 0 <= self.test_fraction < 1 or self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"options val_fraction={self.val_fraction}, test_fraction={self.test_fraction}: each must be in [0, 1) "
                "and together below 1"
            )
        if not 0 <= self.logit_adjustment <= 3:
            self._fail("logit_adjustment", "must be between 0 (off) and 3 (tau; 1 is the usual choice)")
        if self.cv_folds == 1 or self.cv_folds > 20:
            self._fail("cv_folds", "must be 0 (off) or between 2 and 20")
