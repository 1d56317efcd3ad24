"""Discriminator-guided sampling: draw more candidates than asked for and keep those the run's own last
discriminator finds most like the real paintings, in proportion to its estimate of how much likelier each is
under the real paintings than under the generator.

A GAN's discriminator, at the end of training, still knows things about the generator's mistakes that the
generator has not learned to avoid. Discriminator Rejection Sampling (Azadi et al., ICLR 2019) and MH-GAN
(Turner et al., ICML 2019) use it after training: a discriminator that is the best classifier of real against
generated images has the logit log p_data(x) / p_g(x), so drawing generated images with weights exp(logit)
draws from p_data. Here:

1. `factor` x n candidates come from the latents of `seed` (the first n are exactly `trainer.sample`'s images);
2. every candidate and a seeded sample of the run's **training** images (never its held-out ones) get the
   discriminator's score: its logits on the image (unaugmented, inference mode) averaged as the hinge loss
   weighs them (`discriminator_scores`);
3. a logistic regression of real against generated on that score (scikit-learn) turns it into a log density
   ratio a * score (MH-GAN's calibration; the hinge loss does not make raw logits one);
4. n of the candidates are kept without replacement, each with probability proportional to exp(a * score):
   the n largest of a * score plus Gumbel noise from `seed` (the Gumbel top-k trick).

The discriminator is the last epoch's, restored from the run's checkpoint (checkpoint/state.npz, which a
finished run keeps); it was trained against the last epoch's generator, so that is the generator this is meant
for. Measured in docs/gan-measurements.md ("Sampling guided by the run's own discriminator").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genre_core.gan import trainer
from genre_core.runs import store

CALIBRATION_IMAGES = 1024  # training images the calibration compares the candidates with
CALIBRATION_SEED_OFFSET = 11  # their draw: the run's seed plus this (apart from the training sample's offset)
SCORE_BATCH = 64

_DISCRIMINATORS: dict[tuple[str, float], tuple] = {}


def check_factor(factor) -> int:
    """`factor` as an int of at least 1 (1: no guidance), else ValueError naming it."""
    try:
        whole = not isinstance(factor, bool) and float(factor).is_integer() and int(factor) >= 1
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise ValueError(f"discriminator_resample must be a whole number of at least 1 (1: off), got {factor!r}")
    return int(factor)


def load_discriminator(run):
    """The run's last discriminator and its calibration images, restored from its checkpoint: (gan, training
    images uint8, their labels). Cached per checkpoint version. A run without a checkpoint, or of the DCGAN
    architecture (no hinge-trained projected discriminator), raises ValueError naming the run."""
    run = store.open_run(run, kind="gan")
    config = trainer.GanConfig.from_run_config(run.config())
    if config.architecture != "projected":
        raise ValueError(f"run {run.id}: discriminator-guided sampling needs a projected GAN, not "
                         f"{config.architecture!r}")
    state = run.path / store.CHECKPOINT_DIR / trainer.CHECKPOINT_STATE
    if not state.exists():
        raise ValueError(f"run {run.id} keeps no discriminator ({state} is missing): discriminator-guided "
                         f"sampling needs the checkpoint a run writes after every epoch")
    key = (str(state), state.stat().st_mtime)
    if key not in _DISCRIMINATORS:
        for old in [old for old in _DISCRIMINATORS if old[0] == key[0]]:
            del _DISCRIMINATORS[old]
        images, labels, _, _, classes = trainer.load_training_images(config)
        gan = trainer.build_gan(config, len(classes), images)
        trainer.load_checkpoint(gan, run)
        rng = np.random.default_rng(config.seed + CALIBRATION_SEED_OFFSET)
        chosen = np.sort(rng.choice(len(images), min(CALIBRATION_IMAGES, len(images)), replace=False))
        _DISCRIMINATORS[key] = (gan, images[chosen], labels[chosen])
    return _DISCRIMINATORS[key]


def discriminator_scores(gan, images: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """Per image (uint8 (N, S, S, 3)), the discriminator's logits averaged over its output columns as the hinge
    loss weighs them (with a whole-picture head schedule, its current weight): higher is "more real"."""
    import tensorflow as tf

    columns = int(gan.discriminator.output.shape[-1])
    weights = np.ones(columns, np.float32)
    if gan.global_head_schedule and gan.global_columns:
        weights[columns - gan.global_columns:] = float(gan.global_head_weight.numpy())
    scores = []
    for start in range(0, len(images), SCORE_BATCH):
        batch = tf.convert_to_tensor(np.asarray(images[start:start + SCORE_BATCH], np.float32) / 127.5 - 1.0)
        inputs = [batch, tf.convert_to_tensor(labels[start:start + SCORE_BATCH], tf.int32)] \
            if gan.num_classes else batch
        logits = np.asarray(tf.cast(gan.discriminator(inputs, training=False), tf.float32))
        scores.append(logits @ weights / weights.sum())
    return np.concatenate(scores).astype(np.float64)


def calibrate(real_scores: np.ndarray, generated_scores: np.ndarray) -> float:
    """The slope a of a logistic regression of real (1) against generated (0) on the score, classes weighed
    equally: a * score is then the log density ratio up to a constant. 0 when the score does not tell them
    apart the right way round (a <= 0), which turns the guidance off."""
    from sklearn.linear_model import LogisticRegression

    scores = np.concatenate([real_scores, generated_scores])[:, None]
    truth = np.concatenate([np.ones(len(real_scores)), np.zeros(len(generated_scores))])
    model = LogisticRegression(class_weight="balanced").fit(scores, truth)
    return max(float(model.coef_[0, 0]), 0.0)


def select(log_weights: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of `n` of the candidates, drawn without replacement with probability proportional to
    exp(log_weights) (the n largest of log_weights + Gumbel noise), in candidate order."""
    if n > len(log_weights):
        raise ValueError(f"cannot keep {n} of {len(log_weights)} candidates")
    keys = np.asarray(log_weights, np.float64) + np.random.default_rng(seed).gumbel(size=len(log_weights))
    return np.sort(np.argsort(-keys, kind="stable")[:n])


def sample(run, n: int = 16, seed: int = 0, genre: str | None = None,
           checkpoint: str = trainer.DEFAULT_CHECKPOINT, factor: int = 4) -> tuple[np.ndarray, dict]:
    """`n` images (uint8 (n, H, W, 3)) kept from `factor` x n candidates of the `checkpoint` generator by the
    run's last discriminator (module docstring), and what it did: {"factor", "slope", "candidates",
    "effective_candidates" (Kish's effective sample size of the weights: how many candidates the weights
    amount to), "kept_first" (how many of `trainer.sample`'s n images were kept)}. factor 1: `trainer.sample`."""
    factor = check_factor(factor)
    run = store.open_run(run, kind="gan")
    if factor == 1:
        return trainer.sample(run, n, seed, genre, checkpoint), {"factor": 1}
    gan, real, real_labels = load_discriminator(run)
    candidates = trainer.sample(run, int(n) * factor, seed, genre, checkpoint)
    config = trainer.GanConfig.from_run_config(run.config())
    labels = None
    if config.conditional:
        labels = trainer._labels_for(run, len(candidates), genre)
        if genre is not None:
            # Calibrate against the training images of that genre only.
            keep = real_labels == run.classes().index(genre)
            real, real_labels = real[keep], real_labels[keep]
    generated_scores = discriminator_scores(gan, candidates, labels)
    slope = calibrate(discriminator_scores(gan, real, real_labels), generated_scores) if len(real) else 0.0
    log_weights = slope * generated_scores
    # Unguided when the score cannot tell real from generated: the plain sample, not a random subset of candidates.
    chosen = select(log_weights, int(n), seed) if slope > 0 else np.arange(int(n))
    weights = np.exp(log_weights - log_weights.max())
    info = {"factor": factor, "slope": slope, "candidates": len(candidates),
            "effective_candidates": float(weights.sum() ** 2 / (weights ** 2).sum()),
            "kept_first": int((chosen < int(n)).sum())}
    return candidates[chosen], info


def has_discriminator(run) -> bool:
    """Whether the run keeps the checkpoint that discriminator-guided sampling restores its discriminator from."""
    run = store.open_run(run, kind="gan")
    return Path(run.path / store.CHECKPOINT_DIR / trainer.CHECKPOINT_STATE).exists() and \
        trainer.GanConfig.from_run_config(run.config()).architecture == "projected"

