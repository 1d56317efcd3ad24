"""GAN runs: train a GAN on one genre (or a conditional one on several), sample it, measure it.

A GAN run is a folder under `artifacts/gan_runs/<id>/` (see docs/architecture.md, "Run folders"):

| file | content |
| --- | --- |
| `config.json` | the `GanConfig` plus `kind: "gan"` and `data` |
| `classes.json` | the genres, label order (one genre for an unconditional run) |
| `samples/epoch_0001.png` | a grid from a fixed latent batch after every epoch |
| `generator.keras` | the EMA generator of the last epoch (loads with `safe_mode=True`); with `sampled_generator` "better", whichever of it and the trained generator had the lower KID by the `best_by` rule |
| `generator_best.keras`, `best.json` | that generator at the epoch with the lowest fixed-space KID against a seeded sample of the training images (`best_by` "train", `kid_fixed_train`; stop 61's runs chose by the own-space `kid_train`; "heldout": the own-space KID against the held-out images, as runs before stop 61), and that epoch's numbers (`best_by`, `score`: the number chosen by, `score_of`: its history column; `generator`: "ema" or "trained") |
| `history.csv` | `epoch, d_loss, g_loss, kid, kid_std, aug_p, apa_p, learning_rate, steps, seconds, cpu_seconds, real_accuracy, margin_patches, feature_space, kid_fixed, kid_fixed_std, kid_fixed_block3, kid_fixed_block4, kid_fixed_block5, recognised, recognised_real, diversity, stripes, generator, spectrum_loss, elapsed_seconds` (with `best_by` "train", also `kid_train, kid_fixed_train`; with `sampled_generator` "better", also `kid_fixed_ema, kid_fixed_trained`; with a whole-picture head, also `margin_global`; with `global_head_end`, also `global_head_share`; with `discriminator_reconstruction`, also `reconstruction_loss`; with `layout_mmd`, also `layout_mmd`: the layout term's mean over the epoch; with `rollback`, also `rolled_back_to`: the epoch whose training state this epoch's end restored, else empty) |
| `quality.json` | per-epoch quality records, each naming its feature space, and the latest one |
| `checkpoint/` | `state.npz` (G, D, EMA weights, both optimizers, seed and augmentation state) + `state.json` |

Quality per epoch (all measured on a fixed latent batch against real images the GAN did not train on):
`kid` in the configured feature space, `kid_fixed` in `quality.FIXED_SPACE` (comparable across projects) and
`kid_fixed_block3` to `kid_fixed_block5` in each of its three layers alone (`quality.fixed_kid_by_depth`: texture
to layout),
`recognised` (the share of samples a real-painting classifier calls by the run's genre; `recognised_real`
is the same share for held-out real images brought to the GAN's size), `diversity` (mean pairwise feature
distance of samples over that of real images, per genre) and `stripes` (`quality.stripes`: the share of the
samples' finest detail in horizontal and vertical stripes over the real images' share; 1 is as real).

`execute(run)` is the executor that `python -m genre_core job RUN_DIR` calls for kind "gan"; it resumes from
`checkpoint/` when one exists and stops cleanly (raising `store.Cancelled`) when a cancel is requested.
The app uses `load_generator`, `sample`, `interpolate`, `grid` and `quality_by_genre`; runs start through
`genre_core.runs.jobs.start("gan", config)`.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genre_core.data import cache as cache_module, sources, splits
from genre_core.evaluation import bundle, classify
from genre_core.gan import networks, quality
from genre_core.models import zoo
from genre_core.runs import store
from genre_core.training import tensorboard_log
from genre_core.util import fileio


GENERATOR_FILE = "generator.keras"
BEST_GENERATOR_FILE = "generator_best.keras"
BEST_FILE = "best.json"
CHECKPOINTS = ("best", "last")  # which saved generator sampling uses
# What sampling uses unless told: the last epoch's generator since stop 62. The best epoch (chosen without the
# held-out images, `_keep_if_best`) averaged lower fixed-space KID than the last on seven new seeds (0.122 against
# 0.141) but moved one run from under 0.15 to above it (0.164 against 0.142), which the rule written before those
# runs did not allow; docs/gan-measurements.md, "The best epoch chosen in the fixed space, against the training
# images". Stop 72, the 21 default runs of stops 65-70 scored outside the small kit (1,024 samples): the best epoch
# 0.106 against 0.127, lower on 15, 2 above 0.15 against 6, but one run fell from 51% to 41% recognised and the
# early epochs it keeps (3-5 on seven runs) are coarser pictures, so the last stays the default ("The kept best
# epoch against the last, outside the small kit"). Stop 74, the epoch kept only from the second half of the run
# (`best_from` 0.5) on five new seeds: 0.080 against 0.094 outside the small kit, none above 0.15 against one, but
# lower on 2 and higher on 2, which its rule did not allow ("A kept epoch from the second half of the run").
DEFAULT_CHECKPOINT = "last"
QUALITY_FILE = "quality.json"
SAMPLES_DIR = "samples"
CHECKPOINT_STATE = "state.npz"
CHECKPOINT_INFO = "state.json"
RESIZE_POLICIES = ("crop", "squash", "letterbox")
BUDGET_EPOCHS = 10_000  # epochs = 0 with a time budget: train until the budget says stop
BUDGET_CLOCKS = ("wall", "cpu")
LR_DECAYS = ("linear", "none")
# Which generator an epoch's grid, numbers and saved files are: "ema", the running average (the default); "better",
# whichever of the average and the trained generator has the lower KID by the `best_by` rule at that epoch
# (both are measured on the same latent batch).
SAMPLED_GENERATORS = ("ema", "better")
# What the best epoch (generator_best.keras) and sampled_generator "better" are chosen by: "train", the fixed
# space's KID against a seeded sample of the training images, scaled by that sample's RMS (`kid_fixed_train`;
# StyleGAN2-ADA picks its snapshots by FID against the training set), or "heldout", the own-space KID against the
# held-out images that every reported KID compares with (runs written before `best_by`; a choice made on the test
# images makes their number optimistic).
BEST_BY = ("train", "heldout")
# How a genre without a val/test split of its own is split into training and held-out images (`holdout`): random,
# a seeded random draw; stratified, the same share drawn from each of HOLDOUT_CLUSTERS k-means clusters of the
# images' fixed-space features, so every seed holds out (and trains on) each kind of painting in proportion. On the
# kit the random draw moved a generator's KID up to 2.9x from seed to seed and the stratified one halved that spread
# (docs/gan-measurements.md, "A representative held-out split").
HOLDOUTS = ("random", "stratified")
# Which generated batch the generator's step learns from (GENERATOR_FAKES): fresh (a new batch, drawn after the
# discriminator's step) | shared (the batch the discriminator's step just saw, as PyTorch's DCGAN example does: one
# generator forward pass a step instead of two).
GENERATOR_FAKES = ("fresh", "shared")
HOLDOUT_CLUSTERS = 16
# The history column each best_by rule chooses by (best.json's `score_of`). Stop 61's "train" runs chose by the
# own-space `kid_train` (their best.json has no `score_of`); unscaled, it picked worse epochs than the last on fresh
# runs, and the scaled fixed space picked better ones in simulation (docs/gan-measurements.md).
SCORE_OF = {"train": "kid_fixed_train", "heldout": "kid"}
# The training images `kid_train` and `kid_fixed_train` compare with: a sample seeded by the run's seed + 7.
TRAIN_SAMPLE_SEED_OFFSET = 7
# A rollback (GanConfig.rollback) is considered from this epoch on (the first two fall fast from noise), and only
# for a rise of more than ROLLBACK_MARGIN above the lowest KID so far (at 256 samples, KIDs near 0.05 differ by
# about 0.02 from one batch to the next).
ROLLBACK_FROM = 3
ROLLBACK_MARGIN = 0.03
# The mode-seeking weight of a conditional run that does not set one. 1.0 (MSGAN's) until issue 13's kit runs:
# on four kit genres it pushed every genre's diversity above the real images' and left 9% of samples
# recognised; 0.1 reached the real diversity with a lower KID
# (docs/gan-measurements.md, "Conditional runs and diversity").
CONDITIONAL_MODE_SEEKING = 0.1
# What a conditional run written before new runs saved their resolved weight trained with.
OLDER_CONDITIONAL_MODE_SEEKING = 1.0
# The LeCam weight of a projected run that does not set one: the paper's weight with BigGAN's hinge loss, which
# ended issue 13's kit runs without a late rise (docs/gan-measurements.md, "LeCam regularisation").
# DCGAN runs: 0 (not measured).
PROJECTED_LECAM = 0.3
# The weight of the whole-picture head's reconstruction term (FastGAN's self-supervised discriminator) for unconditional
# runs of the projected networks with a whole-picture head (GanConfig.discriminator_reconstruction -1): 2, which ended
# seven kit seeds between 0.025 and 0.127 (last third 0.066 on average) where weight 1 ended the same seeds between
# 0.012 and 0.167 (0.086) (docs/gan-measurements.md, "Weight 2 for the reconstruction term"). Runs that saved 1
# resume with 1.
PROJECTED_RECONSTRUCTION = 2.0
# The spectrum penalty's weight in a projected run that does not set one (docs/gan-measurements.md, "A spectrum
# penalty on the generator": lower stripes on every seed measured, last-epoch KID as good or better). DCGAN runs: 0.
PROJECTED_SPECTRUM_PENALTY = 0.1


def budget_clock(kind: str = "wall"):
    """A seconds clock for time budgets: wall-clock time, or this process's CPU time divided by the cores it
    may use (on a machine shared with other jobs, "15 minutes on 2 cores" means 30 CPU-minutes of work)."""
    if kind == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return lambda: time.process_time() / cores
    return time.monotonic


@dataclass
class GanConfig:
    """Every option of one GAN run; saved as the run's config.json so the run can be rebuilt from it."""

    data: str = "demo"
    genre: str | None = "landscape"  # unconditional: the genre to learn
    conditional: bool = False
    genres: list[str] = field(default_factory=list)  # conditional: the genres to learn (empty: all)
    conditional_norm: bool = False  # conditional projected G: per-genre gain and bias in every batch norm (BigGAN)
    architecture: str = "projected"  # projected (FastGAN-style G, Projected-GAN D) | dcgan (see networks.py)
    image_size: int = 128
    policy: str = "crop"
    epochs: int = 20  # 0: as many as the time budget allows
    batch_size: int = 16
    min_steps_per_epoch: int = 50  # small genres repeat their images so that an epoch has at least this many steps
    max_images: int = 0  # 0: every image of the genre(s)
    holdout_fraction: float = 0.2  # share of each genre kept out of training for KID when the data has no val/test
    # How that share is drawn (HOLDOUTS): random (a seeded permutation) | stratified (in proportion to
    # HOLDOUT_CLUSTERS k-means clusters of the genre's fixed-space features: splits.representative_split).
    holdout: str = "random"
    latent_dim: int = 128
    base_channels: int = 16
    generator_padding: str = "reflect"  # projected generator's 3x3 convolutions: reflect | zeros (zeros paints frames)
    generator_convs: int = 2  # projected generator: (3x3 conv, BN, LeakyReLU) blocks per doubling (GENERATOR_CONVS)
    generator_noise: float = 0.0  # projected generator: per-pixel noise after each conv block's batch norm, with
    # learned per-channel strengths that start at this (StyleGAN/FastGAN noise inputs); 0: none
    generator_noise_from: int = 8  # the smallest generator size (px) with noise inputs
    generator_noise_gain: float = 1.0  # the noise strengths learn this many times faster (NoiseInjection's gain)
    generator_top_channels: int = 0  # projected generator: channels of the full-size stage; 0: base_channels
    generator_top_upsample: str = "nearest"  # projected generator: doubling into the full-size stage: nearest | bilinear
    precision: str = "auto"  # projected: auto (mixed_bfloat16 where the CPU/GPU has bfloat16) | float32 | mixed_bfloat16
    discriminator_downsample: str = "average"  # projected D shrinks images by: average (pooling) | blur (BlurPool2D)
    feature_mixing: str = "none"  # projected D: fixed random projections before the heads (networks.FEATURE_MIXINGS)
    # Projected D: Diffusion-GAN's feature diffusion (Wang et al., ICLR 2023; FeatureDiffusion in
    # genre_core.models.layers): each trunk map, in both networks' steps, is diffused by a random number of forward
    # diffusion steps with this noise standard deviation (the paper's 0.5), the chain as long as the adaptive
    # augmentation probability says. 0: off (measured at 0.5 on the kit in stop 77 and not kept: higher than the
    # default outside the small kit on 4 of 5 seeds, 0.118 against 0.084; docs/gan-measurements.md).
    feature_diffusion: float = 0.0
    # Projected D: how its patch heads share the patch part of the losses (networks.HEAD_BALANCES): patches (each
    # logit alike, so block3's head carries 2.7% at 128 px) | heads (each head alike; the default since stop 55,
    # with lr_decay_power 2: lower than the old default on 5 of 6 seeds run side by side, docs/gan-measurements.md).
    head_balance: str = "heads"
    global_head: float = 0.2  # projected D: share of the loss on one whole-picture logit (composition); 0: off
    global_head_input: str = "pixels"  # what that head reads: pixels (32 px) | features (the frozen trunk's block3)
    # The size (px) at which that head, and the reconstruction term's decoder, see the picture
    # (networks.GLOBAL_HEAD_SIZES; a smaller image is seen at its own size): 32 shows where the colours are, 64 also
    # the shapes.
    global_head_size: int = networks.GLOBAL_HEAD_SIZE
    # The whole-picture head's minibatch standard deviation channel (ProGAN/StyleGAN2; MinibatchStdDev in
    # genre_core.models.layers): over groups of this many images of a batch, how alike they are, read by the head's
    # dense logit. 0: none (measured on the kit and not kept: docs/gan-measurements.md).
    global_head_minibatch_std: int = 0
    # A fixed gain on the whole-picture head's logit: the hinge loss sees gain x the head's spectrally normalised
    # logit, so the head reaches the hinge's margin sooner and the generator's gradient from it is that many times
    # larger (a loss share would not change the head's own Adam steps). 1: none (measured at 4 on the kit and not
    # kept: the layout worse on both seeds, docs/gan-measurements.md).
    global_head_gain: float = 1.0
    # The whole-picture head's share at the end of the run: it rises from `global_head` in step with the run's share
    # done (as the learning rate falls), so that D weighs the layout more late. 0: it stays at `global_head`.
    global_head_end: float = 0.0
    # Weight of the whole-picture head's reconstruction term in D's loss (FastGAN's self-supervised discriminator,
    # networks.Gan._reconstruction_loss): a decoder redraws each real picture from the head's last map. 0: off;
    # -1: PROJECTED_RECONSTRUCTION for unconditional runs of the projected networks with a whole-picture head, else 0
    # (conditional runs: 0, since with it their layout got worse on both seeds measured: docs/gan-measurements.md).
    discriminator_reconstruction: float = -1.0
    loss: str = ""  # "" picks the architecture's loss (projected: hinge; dcgan: non_saturating)
    mode_seeking: float = -1.0  # MSGAN mode-seeking weight; -1: CONDITIONAL_MODE_SEEKING if conditional, else 0
    lecam: float = -1.0  # LeCam weight of D's loss (Tseng et al. 2021); -1: PROJECTED_LECAM if projected, else 0
    r1: float = 0.0  # weight of the R1 gradient penalty on D's real images (Mescheder et al. 2018); 0: off
    # Weight of the generator's spectrum penalty (networks.Gan._spectrum_loss); 0: off; -1: PROJECTED_SPECTRUM_PENALTY
    # if projected, else 0.
    spectrum_penalty: float = -1.0
    spectrum_penalty_kind: str = "level"  # what it compares: level | direction | bins (networks.SPECTRUM_PENALTY_KINDS)
    spectrum_penalty_period: int = networks.SPECTRUM_PENALTY_PERIOD  # its band: periods up to this many px
    learning_rate: float = 1e-4
    lr_decay: str = "linear"  # linear: both learning rates fall linearly to 0 over the run (budget or epochs) | none
    lr_decay_power: float = 2.0  # linear decay: the rate is learning_rate * (1 - share done) ** this (1: a line)
    discriminator_lr_scale: float = 1.0  # the discriminator's learning rate is the generator's times this (TTUR)
    # The discriminator's rate stops falling at this share of its starting rate (the generator's goes on to 0): a
    # discriminator that keeps learning late. 0: it falls with the generator's.
    discriminator_lr_floor: float = 0.0
    # The share of the run (`share_done`) by which the generator's layout stages (its 16-px map and what it depends
    # on: networks.generator_layout_variables) stop learning: their rate falls along the same curve as the rest's,
    # but to 0 here instead of at the end, so that the composition settles while the detail is still drawn.
    # 0: off, they learn to the end like the rest.
    layout_freeze: float = 0.0
    # Roll back: after a measured epoch (from ROLLBACK_FROM on, never the last), when the fixed-space KID against the
    # training sample (`kid_fixed_train`, what best_by "train" chooses by; no held-out image) is above
    # `rollback_threshold` of the lowest so far, the whole training state kept at that epoch (networks, EMA,
    # optimizers, augmentation probability; not the random seeds) is restored and the run goes on at the rate the
    # clock gives, at most `rollback_limit` times: a layout that jumped away mid-run is not kept. 0: never.
    rollback: float = 0.0
    rollback_limit: int = 2
    # Weight of the generator's layout term (networks.Gan._layout_mmd_loss): MMD² between the generated batch and
    # training images drawn at random, both averaged down to 8 px, so that where the colour masses lie follows the
    # training images rather than whatever the discriminator happens to reward mid-run. 0: off.
    layout_mmd: float = 0.0
    # Lookahead-Minmax (Chavdarova et al., ICLR 2021; networks.Gan): after every `lookahead`-th step, both networks'
    # trained weights move back to `lookahead_alpha` of the way from the weights of the previous such step to where
    # the steps took them, and both go on from there (Adam's moments kept): it damps the rotation of the two-player
    # game, the circling that plain alternating steps follow. 0: off.
    lookahead: int = 0
    lookahead_alpha: float = 0.5
    # The generated batch the generator's step learns from (GENERATOR_FAKES): fresh | shared (that of the
    # discriminator's step: its generator pass serves both steps, so a step costs one generator forward less). Fresh
    # by default: on the kit (stop 75) shared trained 1.095x the steps in 15 minutes but ended higher outside the
    # small kit on 2 of 3 seeds (docs/gan-measurements.md, "The generator's step on the discriminator's batch").
    generator_fakes: str = "fresh"
    # Top-k training (Sinha et al., NeurIPS 2020; networks.Gan._top_k_rows): the generator's adversarial loss
    # learns only from the generated images of its batch that the discriminator scores as most real; their share
    # falls on a line over the run (`share_done`, the learning rate's clock) from the whole batch to `top_k` (the
    # paper's nu; it decays k per epoch, and these runs have twenty-odd epochs). 0: off, every image. Off by default:
    # on the kit (stop 76) 0.5 ended lower outside the small kit on 4 of 5 seeds but not on the mean, 0.085 against
    # 0.084 (docs/gan-measurements.md, "Top-k training for the generator").
    top_k: float = 0.0
    beta_1: float = 0.0
    ema_decay: float = 0.995
    ema_lr_power: float = 0.5  # the EMA's per-step share is times (lr / learning_rate) ** this; 0: a fixed share
    sampled_generator: str = "ema"  # ema | better (SAMPLED_GENERATORS)
    best_by: str = "train"  # the best epoch and "better" are chosen by KID against: train | heldout (BEST_BY)
    # The kept best epoch (generator_best.keras) is chosen only among the epochs that end after this share of the
    # run (`share_done`, the learning-rate schedule's clock); the last epoch always counts. 0: every epoch.
    best_from: float = 0.0
    bn_calibration_samples: int = 1024  # samples (in batches of 256) that re-estimate the EMA generator's BatchNorm
    augment_probability: float = 0.0  # the starting DiffAugment probability
    augment_policy: list[str] = field(default_factory=lambda: list(networks.AUGMENT_POLICIES))  # its transforms
    adaptive_augment: bool = True  # raise/lower it ADA-style from D's accuracy on real images
    # Adaptive pseudo augmentation (APA, Jiang et al. 2021): replace real images in D's batch by generated ones
    # labelled real, with a probability that starts at 0 and moves by the augmentation probability's rule.
    pseudo_augment: bool = False
    augment_target: float = 0.6  # adaptive: the share of real images D should call real
    augment_hold: float = 0.0  # adaptive: the last share of the run in which the probability (and APA's) stops moving
    augment_speed: float = 0.005  # adaptive: per step the probability moves by this times (share - target)
    horizontal_flip: bool = True
    feature_space: str = "auto"  # auto | inception_v3 | hed_vgg16 (see quality.py)
    kid_image_size: int = 64
    kid_samples: int = 256  # generated and real images per KID measurement; 0 switches KID off
    kid_every: int = 1
    judge: str = "auto"  # real-painting classifier run for the recognisability score; "auto": newest fitting; "": off
    judge_samples: int = 64  # generated (and real) images the judge classifies per epoch
    grid_images: int = 36
    time_budget_minutes: float = 0.0  # 0: no limit; else training stops at the last step that fits (README)
    budget_clock: str = "wall"  # wall: wall-clock time; cpu: this process's CPU time / usable cores (a shared machine)
    seed: int = 0

    def validate(self) -> "GanConfig":
        """Raise ValueError naming the first bad option; return self."""
        networks.check_size(self.image_size)
        if self.architecture not in networks.ARCHITECTURES:
            raise ValueError(f"architecture {self.architecture!r} is not one of {networks.ARCHITECTURES}")
        if self.architecture == "dcgan" and self.image_size > 128:
            raise ValueError("the dcgan architecture goes up to 128 px; use architecture 'projected' for 256")
        if self.generator_padding not in networks.GENERATOR_PADDINGS:
            raise ValueError(f"generator_padding {self.generator_padding!r} is not one of {networks.GENERATOR_PADDINGS}")
        if self.generator_convs not in networks.GENERATOR_CONVS:
            raise ValueError(f"generator_convs {self.generator_convs!r} is not one of {networks.GENERATOR_CONVS}")
        if self.feature_mixing not in networks.FEATURE_MIXINGS:
            raise ValueError(f"feature_mixing {self.feature_mixing!r} is not one of {networks.FEATURE_MIXINGS}")
        if not 0.0 <= float(self.feature_diffusion) <= 4.0:
            raise ValueError(f"feature_diffusion must be in 0..4 (0: off), got {self.feature_diffusion}")
        if float(self.feature_diffusion) and self.architecture != "projected":
            raise ValueError("feature_diffusion diffuses the projected discriminator's trunk maps; the "
                             f"{self.architecture!r} architecture has none")
        if self.head_balance not in networks.HEAD_BALANCES:
            raise ValueError(f"head_balance {self.head_balance!r} is not one of {networks.HEAD_BALANCES}")
        if self.discriminator_downsample not in networks.DOWNSAMPLINGS:
            raise ValueError(f"discriminator_downsample {self.discriminator_downsample!r} is not one of "
                             f"{networks.DOWNSAMPLINGS}")
        if not (0.0 <= self.lecam <= 10.0 or self.lecam == -1.0):
            raise ValueError(f"lecam must be in 0..10 (or -1, the default), got {self.lecam}")
        if not 0.0 <= float(self.r1) <= 1000.0:
            raise ValueError(f"r1 must be in 0..1000, got {self.r1}")
        if not (0.0 <= float(self.spectrum_penalty) <= 100.0 or self.spectrum_penalty == -1.0):
            raise ValueError(f"spectrum_penalty must be in 0..100 (or -1, the default), got {self.spectrum_penalty}")
        if self.spectrum_penalty_kind not in networks.SPECTRUM_PENALTY_KINDS:
            raise ValueError(f"spectrum_penalty_kind {self.spectrum_penalty_kind!r} is not one of "
                             f"{networks.SPECTRUM_PENALTY_KINDS}")
        low, high = networks.SPECTRUM_PENALTY_PERIODS
        if not low <= int(self.spectrum_penalty_period) <= min(high, self.image_size // 2):
            raise ValueError(f"spectrum_penalty_period must be in {low}..{min(high, self.image_size // 2)} px for "
                             f"{self.image_size}-px images, got {self.spectrum_penalty_period}")
        if not (0.0 <= float(self.discriminator_reconstruction) <= 100.0 or self.discriminator_reconstruction == -1.0):
            raise ValueError(f"discriminator_reconstruction must be in 0..100 (or -1, the default), got "
                             f"{self.discriminator_reconstruction}")
        if self.discriminator_reconstruction > 0 and (self.architecture != "projected" or not self.global_head):
            raise ValueError("discriminator_reconstruction redraws the picture from the whole-picture head: it needs "
                             "the projected architecture with global_head > 0")
        if not 0.0 <= self.ema_lr_power <= 2.0:
            raise ValueError(f"ema_lr_power must be in 0..2, got {self.ema_lr_power}")
        if int(self.bn_calibration_samples) < 2:
            raise ValueError(f"bn_calibration_samples must be at least 2, got {self.bn_calibration_samples}")
        if not 0.0 < float(self.discriminator_lr_scale) <= 10.0:
            raise ValueError(f"discriminator_lr_scale must be more than 0 and at most 10, got "
                             f"{self.discriminator_lr_scale}")
        if not 0.0 <= float(self.discriminator_lr_floor) <= 1.0:
            raise ValueError(f"discriminator_lr_floor must be in 0..1, got {self.discriminator_lr_floor}")
        if self.sampled_generator not in SAMPLED_GENERATORS:
            raise ValueError(f"sampled_generator {self.sampled_generator!r} is not one of {SAMPLED_GENERATORS}")
        if self.best_by not in BEST_BY:
            raise ValueError(f"best_by {self.best_by!r} is not one of {BEST_BY}")
        if not 0.0 <= float(self.best_from) < 1.0:
            raise ValueError(f"best_from must be in 0..1 (exclusive of 1; the share of the run before which no epoch "
                             f"is kept as the best; 0: every epoch), got {self.best_from}")
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"lr_decay {self.lr_decay!r} is not one of {LR_DECAYS}")
        if not 0.25 <= float(self.lr_decay_power) <= 4.0:
            raise ValueError(f"lr_decay_power must be in 0.25..4, got {self.lr_decay_power}")
        if self.precision not in networks.PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {networks.PRECISIONS}")
        if not 0.0 <= self.global_head < 1.0:
            raise ValueError(f"global_head must be in 0..1 (exclusive of 1), got {self.global_head}")
        if self.global_head_end and not (self.global_head and 0.0 < self.global_head_end < 1.0):
            raise ValueError(f"global_head_end must be in 0..1 (exclusive) with a whole-picture head (global_head > "
                             f"0), got {self.global_head_end} with global_head {self.global_head}")
        if self.layout_freeze and not 0.1 <= float(self.layout_freeze) <= 1.0:
            raise ValueError(f"layout_freeze must be in 0.1..1 (the share of the run by which the layout stages "
                             f"stop learning; 0: off), got {self.layout_freeze}")
        if self.layout_freeze and (self.architecture != "projected" or self.image_size <= networks.LAYOUT_SIZE):
            raise ValueError(f"layout_freeze needs the projected architecture's generator and images larger than "
                             f"{networks.LAYOUT_SIZE} px (its layout stages end at {networks.LAYOUT_SIZE} px), got "
                             f"{self.architecture!r} at {self.image_size} px")
        if self.rollback and not float(self.rollback) > 1.0:
            raise ValueError(f"rollback must be above 1 (how many times its lowest the training-image KID may rise "
                             f"to before the run goes back; 0: never), got {self.rollback}")
        if self.rollback and (self.best_by != "train" or not self.kid_samples):
            raise ValueError("rollback reads the fixed-space KID against the training images, so it needs best_by "
                             "\"train\" and kid_samples above 0")
        if float(self.layout_mmd) < 0:
            raise ValueError(f"layout_mmd must be 0 (off) or above, got {self.layout_mmd}")
        if self.layout_mmd and self.conditional:
            raise ValueError("layout_mmd compares the samples with all the training images alike, not genre by genre, "
                             "so it is for unconditional runs")
        if self.layout_mmd and self.image_size < networks.LAYOUT_MMD_SIZE:
            raise ValueError(f"layout_mmd needs images of at least {networks.LAYOUT_MMD_SIZE} px")
        if int(self.lookahead) < 0 or int(self.lookahead) != self.lookahead:
            raise ValueError(f"lookahead must be a whole number of steps, 0 (off) or more, got {self.lookahead}")
        if not 0.0 < float(self.lookahead_alpha) < 1.0:
            raise ValueError(f"lookahead_alpha must be in 0..1 (exclusive; 1 would be no lookahead), got "
                             f"{self.lookahead_alpha}")
        if int(self.rollback_limit) < 1:
            raise ValueError(f"rollback_limit must be at least 1, got {self.rollback_limit}")
        if self.layout_freeze and not (self.time_budget_minutes or self.epochs):
            raise ValueError("layout_freeze follows the run's share done, so it needs epochs or a time budget")
        if int(self.global_head_size) not in networks.GLOBAL_HEAD_SIZES:
            raise ValueError(f"global_head_size must be one of {networks.GLOBAL_HEAD_SIZES}, got "
                             f"{self.global_head_size}")
        if not 0.1 <= float(self.global_head_gain) <= 100.0:
            raise ValueError(f"global_head_gain must be in 0.1..100, got {self.global_head_gain}")
        if float(self.global_head_gain) != 1.0 and (self.architecture != "projected" or not self.global_head):
            raise ValueError("global_head_gain needs the projected architecture's whole-picture head (global_head > "
                             f"0), got {self.architecture!r} with global_head {self.global_head}")
        group = int(self.global_head_minibatch_std)
        if group:
            if group < 2:
                raise ValueError(f"global_head_minibatch_std must be 0 (off) or at least 2, got {group}")
            if self.architecture != "projected" or not self.global_head:
                raise ValueError("global_head_minibatch_std needs the projected architecture's whole-picture head "
                                 f"(global_head > 0), got {self.architecture!r} with global_head {self.global_head}")
            if int(self.batch_size) % group:
                raise ValueError(f"global_head_minibatch_std {group} must divide batch_size {self.batch_size}, so "
                                 "that no group mixes real and generated images")
        if self.global_head_input not in networks.GLOBAL_HEAD_INPUTS:
            raise ValueError(f"global_head_input {self.global_head_input!r} is not one of "
                             f"{networks.GLOBAL_HEAD_INPUTS}")
        if self.loss and self.loss not in networks.LOSSES:
            raise ValueError(f"loss {self.loss!r} is not one of {networks.LOSSES}")
        if int(self.epochs) == 0 and not self.time_budget_minutes:
            raise ValueError("epochs 0 means 'until the time budget', so it needs time_budget_minutes > 0")
        if int(self.epochs) < 0:
            raise ValueError(f"epochs must be at least 0, got {self.epochs}")
        if not 0.0 <= self.holdout_fraction < 0.9:
            raise ValueError(f"holdout_fraction must be in 0..0.9, got {self.holdout_fraction}")
        if not (self.top_k == 0 or 0.0 < float(self.top_k) < 1.0):
            raise ValueError(f"top_k must be 0 (off) or a share of the batch in 0..1 (exclusive), got {self.top_k}")
        if self.generator_fakes not in GENERATOR_FAKES:
            raise ValueError(f"generator_fakes {self.generator_fakes!r} is not one of {GENERATOR_FAKES}")
        if self.holdout not in HOLDOUTS:
            raise ValueError(f"holdout {self.holdout!r} is not one of {HOLDOUTS}")
        if self.budget_clock not in BUDGET_CLOCKS:
            raise ValueError(f"budget_clock {self.budget_clock!r} is not one of {BUDGET_CLOCKS}")
        if self.judge_samples < 0:
            raise ValueError(f"judge_samples must be at least 0, got {self.judge_samples}")
        if self.policy not in RESIZE_POLICIES:
            raise ValueError(f"policy {self.policy!r} is not one of {RESIZE_POLICIES}")
        if not self.conditional and not self.genre:
            raise ValueError("an unconditional GAN needs a genre (or pass conditional=True)")
        if not 0.0 <= float(self.generator_noise) <= 1.0:
            raise ValueError(f"generator_noise must be in 0..1, got {self.generator_noise}")
        noise_sizes = [2 ** power for power in range(3, 9)]  # the generator's maps after the 4x4 start
        if int(self.generator_noise_from) not in noise_sizes:
            raise ValueError(f"generator_noise_from must be a generator size from 8 px up "
                             f"({', '.join(map(str, noise_sizes))}), got {self.generator_noise_from}")
        if not 0 <= int(self.generator_top_channels) <= 512:
            raise ValueError(f"generator_top_channels must be in 0..512 (0: base_channels), got "
                             f"{self.generator_top_channels}")
        if not 1.0 <= float(self.generator_noise_gain) <= 100.0:
            raise ValueError(f"generator_noise_gain must be in 1..100, got {self.generator_noise_gain}")
        if self.generator_noise and self.architecture != "projected":
            raise ValueError("generator_noise (noise inputs) is for the projected architecture's generator")
        if self.generator_top_channels and self.architecture != "projected":
            raise ValueError("generator_top_channels is for the projected architecture's generator")
        if self.generator_top_upsample not in networks.GENERATOR_TOP_UPSAMPLINGS:
            raise ValueError(f"generator_top_upsample {self.generator_top_upsample!r} is not one of "
                             f"{networks.GENERATOR_TOP_UPSAMPLINGS}")
        if self.generator_top_upsample != "nearest" and self.architecture != "projected":
            raise ValueError("generator_top_upsample is for the projected architecture's generator")
        if self.conditional_norm and not (self.conditional and self.architecture == "projected"):
            raise ValueError("conditional_norm (per-genre batch norm) needs a conditional run of the projected "
                             "architecture")
        for name in ("batch_size", "latent_dim", "base_channels", "min_steps_per_epoch", "kid_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        networks.check_augment_policy(self.augment_policy)
        if not 0.0 < float(self.augment_target) < 1.0:
            raise ValueError(f"augment_target must be between 0 and 1 (exclusive), got {self.augment_target}")
        if not 0.0 <= float(self.augment_hold) < 1.0:
            raise ValueError(f"augment_hold must be in 0..1 (exclusive of 1), got {self.augment_hold}")
        if not 0.0 <= float(self.augment_speed) <= 1.0:
            raise ValueError(f"augment_speed must be in 0..1, got {self.augment_speed}")
        if not 0.0 <= self.augment_probability <= 1.0:
            raise ValueError(f"augment_probability must be in 0..1, got {self.augment_probability}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in 0..1 (exclusive of 1), got {self.ema_decay}")
        if self.kid_samples < 0 or self.kid_samples == 1:
            raise ValueError(f"kid_samples must be 0 (off) or at least 2, got {self.kid_samples}")
        return self

    @classmethod
    def from_dict(cls, values: dict) -> "GanConfig":
        """Build a config from a dict or a run's config.json, setting aside the keys runs add (kind, created,
        resume, ...) and rejecting unknown keys with a clear message, as TrainConfig does."""
        if not isinstance(values, dict):
            raise ValueError(f"a GAN config must be a JSON object, not {type(values).__name__}")
        names = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names - set(store.RUN_ONLY_KEYS) - {"kind"})
        if unknown:
            raise ValueError(f"unknown GAN option(s) {', '.join(unknown)}; known options are {', '.join(sorted(names))}")
        return cls(**{key: value for key, value in values.items() if key in names})

    @classmethod
    def from_run_config(cls, values: dict) -> "GanConfig":
        """The GanConfig of a run's config.json. A run written before `generator_padding` existed used zero
        padding, one written before `global_head` had no whole-picture head, one written before `precision`
        computed in float32, one written before `lr_decay` kept its learning rate and one written before
        `ema_lr_power` moved its EMA a fixed share per step with BatchNorm statistics from 256 samples, and one
        written before `augment_policy` augmented with translation, colour and cutout, one written before
        `generator_convs` had one convolution block per doubling, one written before `lecam` had no LeCam
        term, one written before `generator_noise` had no noise inputs, one written before the spectrum penalty
        became the default (a config without `spectrum_penalty`) had none, one written before the whole-picture
        head's reconstruction term became the default had none, one written before equal heads and the faster
        fall became the default (a config without `head_balance` or `lr_decay_power`) had patches and a line, one
        written before `best_by` chose its best epoch by the held-out images, one written before `generator_fakes`
        drew a fresh batch for the generator's step, and a conditional run whose config
        leaves `mode_seeking` to the default (-1; new runs save the weight they use) trained with
        OLDER_CONDITIONAL_MODE_SEEKING, so it resumes and samples with the networks (and trains with the schedule)
        it was started with."""
        values = dict(values)
        if values.get("conditional") and float(values.get("mode_seeking", -1.0)) < 0:
            values["mode_seeking"] = OLDER_CONDITIONAL_MODE_SEEKING
        return cls.from_dict({"generator_padding": "zeros", "generator_convs": 1, "generator_noise": 0.0,
                              "global_head": 0.0,
                              "precision": "float32", "lr_decay": "none", "ema_lr_power": 0.0, "lecam": 0.0,
                              "spectrum_penalty": 0.0, "discriminator_reconstruction": 0.0,
                              "bn_calibration_samples": 256, "head_balance": "patches", "lr_decay_power": 1.0,
                              "best_by": "heldout", "best_from": 0.0, "holdout": "random", "generator_fakes": "fresh",
                              "augment_policy": list(networks.AUGMENT_POLICIES), **values})

    def to_dict(self) -> dict:
        """The config as a plain dict."""
        return dataclasses.asdict(self)

    @property
    def planned_epochs(self) -> int:
        """The epoch count to train for: `epochs`, or BUDGET_EPOCHS when 0 leaves it to the time budget."""
        return int(self.epochs) or BUDGET_EPOCHS

    def ema_rate_scale(self, learning_rate: float) -> float:
        """What the EMA's per-step share (1 - ema_decay) is multiplied by at this learning rate:
        (learning_rate / the starting rate) ** ema_lr_power.

        With a rate that falls to 0 and a fixed share (power 0), the EMA converges on the last trained generator,
        a single iterate, and the generator's quality swings between nearby iterates (on one seed-0 kit run the
        trained generator's fixed-space KID was 4.9 where its EMA's, converging on it, was 0.55). With power 1
        the EMA stands still as the rate falls and lags behind a generator that is still improving (on seeds 1
        and 2 the trained generator ended at 0.12 and 0.10 while that EMA stayed at 0.18 and 0.21)."""
        if not self.ema_lr_power or not self.learning_rate:
            return 1.0
        return float(min(1.0, max(0.0, learning_rate / self.learning_rate)) ** self.ema_lr_power)

    def learning_rate_at(self, epoch: float, elapsed_seconds: float) -> float:
        """The learning rate of both networks for the step that starts now (`epoch`: 0-based epochs done,
        fractional within an epoch; `elapsed_seconds` on the budget's clock). The trainer sets it before every
        step. lr_decay "linear" falls from `learning_rate` to 0 over the run: over the time budget when there
        is one, over the epochs when they are set, whichever is further along; a GAN's samples then settle in
        the last steps instead of wandering with the full step size. `lr_decay_power` bends the line as Keras'
        PolynomialDecay does (its `power`, with the run's share done for the step count): above 1 the rate
        falls faster early and lies lower over the last part of the run (2: a ninth of the starting rate with a
        third of the run left, where the line gives a third)."""
        if self.lr_decay == "none":
            return float(self.learning_rate)
        remaining = 1.0 - self.share_done(epoch, elapsed_seconds)
        return float(self.learning_rate) * remaining ** float(self.lr_decay_power)

    def layout_rate_scale(self, epoch: float, elapsed_seconds: float) -> float:
        """What the generator's layout stages' step is multiplied by for the step that starts now, against the
        rest of the generator's: 1 without `layout_freeze`; with it, their rate is the schedule's curve with the
        run's share done stretched so that it reaches 0 at `layout_freeze` (linear decay: learning_rate *
        (1 - done / layout_freeze) ** lr_decay_power; no decay: a line from learning_rate to 0 there), and this
        is that rate over `learning_rate_at`'s (0 once the layout stages stop, and while the rest's rate is 0)."""
        if not self.layout_freeze:
            return 1.0
        done = self.share_done(epoch, elapsed_seconds)
        left = max(0.0, 1.0 - done / float(self.layout_freeze))
        if self.lr_decay == "none":
            return left
        rest = 1.0 - done
        if left <= 0.0 or rest <= 0.0:
            return 0.0
        return float(min(1.0, (left / rest) ** float(self.lr_decay_power)))

    def discriminator_learning_rate(self, generator_rate: float) -> float:
        """The discriminator's rate for a step at which the generator's is `generator_rate`: that times
        `discriminator_lr_scale`, but never below `discriminator_lr_floor` of its own starting rate."""
        starting = float(self.learning_rate) * float(self.discriminator_lr_scale)
        scaled = float(generator_rate) * float(self.discriminator_lr_scale)
        return max(scaled, float(self.discriminator_lr_floor) * starting)

    def share_done(self, epoch: float, elapsed_seconds: float) -> float:
        """How far along the run is, 0..1: of the time budget when there is one, of the epochs when they are
        set, whichever is further (the learning-rate schedule's clock); 0 when the run has neither."""
        fractions = []
        if self.time_budget_minutes:
            fractions.append(elapsed_seconds / (self.time_budget_minutes * 60.0))
        if self.epochs:
            fractions.append(epoch / int(self.epochs))
        return min(1.0, max(fractions, default=0.0))

    def augment_rate_scale(self, epoch: float, elapsed_seconds: float) -> float:
        """What the adaptive augmentation's per-step move (and APA's) is multiplied by now: 1, or 0 once the
        run is in its last `augment_hold` share (`share_done`), so that the discriminator sees a fixed mix of
        augmented images while the learning rates fall to 0 instead of a mix that still drifts."""
        if self.augment_hold and self.share_done(epoch, elapsed_seconds) >= 1.0 - float(self.augment_hold):
            return 0.0
        return 1.0

    def global_head_share_at(self, epoch: float, elapsed_seconds: float) -> float:
        """The whole-picture head's share of the hinge losses for the step that starts now: `global_head`, or with
        `global_head_end` a line from it to that over the run (`share_done`, the learning-rate schedule's clock)."""
        if not self.global_head_end:
            return float(self.global_head)
        done = self.share_done(epoch, elapsed_seconds)
        return float(self.global_head) + (float(self.global_head_end) - float(self.global_head)) * done

    def top_k_share_at(self, epoch: float, elapsed_seconds: float) -> float:
        """The share of the generated batch the generator's adversarial loss learns from for the step that starts
        now: 1 without `top_k`; with it, a line from 1 to `top_k` over the run (`share_done`)."""
        if not self.top_k:
            return 1.0
        return 1.0 - (1.0 - float(self.top_k)) * self.share_done(epoch, elapsed_seconds)

    @property
    def mode_seeking_weight(self) -> float:
        """The mode-seeking weight in use (-1 resolves to CONDITIONAL_MODE_SEEKING for conditional runs, else 0)."""
        if self.mode_seeking < 0:
            return CONDITIONAL_MODE_SEEKING if self.conditional else 0.0
        return float(self.mode_seeking)

    @property
    def lecam_weight(self) -> float:
        """The LeCam weight in use (-1 resolves to PROJECTED_LECAM for the projected networks, else 0)."""
        if self.lecam < 0:
            return PROJECTED_LECAM if self.architecture == "projected" else 0.0
        return float(self.lecam)

    @property
    def discriminator_reconstruction_weight(self) -> float:
        """The reconstruction term's weight in use (-1 resolves to PROJECTED_RECONSTRUCTION for unconditional runs
        of the projected networks with a whole-picture head, else 0)."""
        if self.discriminator_reconstruction < 0:
            wanted = self.architecture == "projected" and self.global_head and not self.conditional
            return PROJECTED_RECONSTRUCTION if wanted else 0.0
        return float(self.discriminator_reconstruction)

    @property
    def spectrum_penalty_weight(self) -> float:
        """The spectrum penalty's weight in use (-1 resolves to PROJECTED_SPECTRUM_PENALTY for the projected
        networks, else 0)."""
        if self.spectrum_penalty < 0:
            return PROJECTED_SPECTRUM_PENALTY if self.architecture == "projected" else 0.0
        return float(self.spectrum_penalty)


@dataclass
class _ModelShape:
    """What `networks.make_gan` needs: the config plus the number of genres."""

    config: GanConfig
    num_classes: int

    @property
    def mode_seeking(self) -> float:
        return self.config.mode_seeking_weight

    @property
    def lecam(self) -> float:
        return self.config.lecam_weight

    @property
    def spectrum_penalty(self) -> float:
        return self.config.spectrum_penalty_weight

    @property
    def discriminator_reconstruction(self) -> float:
        return self.config.discriminator_reconstruction_weight

    def __getattr__(self, name):
        return getattr(self.config, name)


def build_gan(config: GanConfig, num_classes: int, images):
    """The config's untrained Gan, ready to train on `images` (its training images, uint8 or floats in [-1, 1]):
    with the spectrum penalty on, its target is set from them, as random horizontal flips show them when
    `config.horizontal_flip`."""
    gan = networks.make_gan(_ModelShape(config, num_classes))
    if config.spectrum_penalty_weight:
        gan.set_spectrum_target(images, mirrored=config.horizontal_flip)
    if config.layout_mmd:
        gan.set_layout_target(images, mirrored=config.horizontal_flip, seed=config.seed)
    return gan


# ----------------------------------------------------------------------------------------------------------
# Data.


class TrainingImages(tuple):
    """(train uint8 (N,S,S,3), train labels int32, reference uint8 images, reference labels, classes), which it
    unpacks as, plus `held_out_from`: per genre, where its reference images came from: "split" (the dataset's own
    val/test split), "drawn" (a seeded `holdout_fraction` of the genre, drawn as `config.holdout` says) or "none"
    (too few images: the reference is the training images)."""

    held_out_from: dict

    def __new__(cls, parts, held_out_from: dict):
        result = super().__new__(cls, parts)
        result.held_out_from = dict(held_out_from)
        return result


def held_out_text(config: GanConfig, held_out_from: dict) -> str:
    """Where a run's held-out images came from (`TrainingImages.held_out_from`), in words: the dataset's own val/test
    split, the seed's draw, or none (per genre when the genres differ)."""
    words = {"split": "its own val/test split", "drawn": f"seed {config.seed}, {config.holdout} draw",
             "none": "none held out"}
    kinds = set(held_out_from.values())
    if len(kinds) == 1:
        return words[kinds.pop()]
    return "; ".join(f"{genre}: {words[kind]}" for genre, kind in held_out_from.items())


def load_training_images(config: GanConfig, progress=None) -> TrainingImages:
    """Return (train uint8 (N,S,S,3), train labels int32, reference uint8 images, reference labels, classes), as
    a `TrainingImages` that also says where each genre's reference images came from.

    Images come from the preprocessed cache at the GAN size, which holds only the GAN's genres. The reference
    set for KID, diversity and the judge is the genre's held-out split (val/test) when it has at least 50
    images; else a seeded `holdout_fraction` of the genre is kept out of training (when both parts keep at least
    50 images), drawn at random or, with `holdout` "stratified", in proportion to clusters of the genre's
    fixed-space features (`_held_out_share`); else, for tiny genres, the training images themselves."""
    dataset = sources.load_dataset(config.data)
    if config.conditional:
        classes = list(config.genres) or list(dataset.classes)
    else:
        classes = [config.genre]
    # Only the GAN's genres are decoded: on the 17,589-painting kit a landscape GAN decodes 3,845 images.
    # keep_genres also rejects a genre the data does not have, naming it and the data's genres.
    cache = cache_module.prepare_cache(sources.keep_genres(dataset, classes), (config.image_size, config.image_size),
                                       config.policy, progress=progress)
    train_parts, held_out_parts, held_out_from = [], [], {}
    for name in classes:
        indices = cache.ok_indices(genre=name)
        if len(indices) == 0:
            raise ValueError(f"genre {name!r} has no readable images in {config.data}")
        splits = cache.manifest["split"].to_numpy()[indices]
        held_out = indices[np.isin(splits, ("val", "test"))]
        train = indices[~np.isin(splits, ("val", "test"))]
        held_out_from[name] = "split"
        if len(held_out) < 50 or len(train) < 50:
            count = int(round(len(indices) * config.holdout_fraction))
            if count >= 50 and len(indices) - count >= 50:
                train, held_out = _held_out_share(config, cache, indices, count, progress)
                held_out_from[name] = "drawn"
            else:
                train, held_out = indices, np.array([], dtype=int)
                held_out_from[name] = "none"
        train_parts.append(train)
        held_out_parts.append(held_out)
    train_indices = np.concatenate(train_parts)
    held_out_indices = np.concatenate(held_out_parts)
    rng = np.random.default_rng(config.seed)
    if config.max_images and len(train_indices) > config.max_images:
        train_indices = np.sort(rng.choice(train_indices, config.max_images, replace=False))
    images, cache_labels = cache_module.load_arrays(cache, train_indices)
    label_of = {cache.classes.index(name): position for position, name in enumerate(classes)}
    labels = np.array([label_of[int(label)] for label in cache_labels], dtype=np.int32)
    if len(held_out_indices):
        reference, reference_cache_labels = cache_module.load_arrays(cache, held_out_indices)
        reference_labels = np.array([label_of[int(label)] for label in reference_cache_labels], dtype=np.int32)
    else:
        reference, reference_labels = images, labels
    return TrainingImages((images, labels, reference, reference_labels, classes), held_out_from)


def _held_out_share(config: GanConfig, cache, indices: np.ndarray, count: int, progress=None):
    """(train, held_out) cache indices of one genre, `count` of them held out as `config.holdout` says."""
    if config.holdout == "random":
        shuffled = np.random.default_rng(config.seed).permutation(indices)
        return np.sort(shuffled[count:]), np.sort(shuffled[:count])
    if progress is not None:
        progress({"stage": "prepare", "done": 0, "total": 1,
                  "message": f"clustering {len(indices)} images for a representative held-out split"})
    images, _ = cache_module.load_arrays(cache, indices)
    features = quality.feature_extractor("hed_vgg16_fixed")(images)
    rest, held = splits.representative_split(features / quality.fixed_scale(features), count, config.seed,
                                             clusters=HOLDOUT_CLUSTERS)
    return indices[rest], indices[held]


def make_training_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, horizontal_flip: bool, seed: int):
    """An endless shuffled tf.data pipeline of (float images in [-1, 1], int32 labels) batches."""
    import tensorflow as tf

    if len(images) < batch_size:
        repeats = int(np.ceil(batch_size / len(images)))
        images, labels = np.concatenate([images] * repeats), np.concatenate([labels] * repeats)

    def to_float(image, label):
        image = tf.cast(image, tf.float32) / 127.5 - 1.0
        if horizontal_flip:
            image = tf.image.random_flip_left_right(image, seed=seed)
        return image, label

    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).repeat()
    dataset = dataset.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------------------------------------
# Images.


def to_uint8(images) -> np.ndarray:
    """Generator output in [-1, 1] -> uint8 0..255."""
    return np.clip((np.asarray(images, dtype=np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def grid(images, columns: int = 8, gap: int = 2) -> np.ndarray:
    """Tile uint8 images (N, H, W, 3) into one uint8 image with `columns` per row and a white gap."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"grid needs images of shape (N, H, W, 3) with N >= 1, got {images.shape}")
    if int(columns) < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    count, height, width, _ = images.shape
    columns = min(int(columns), count)
    rows = int(np.ceil(count / columns))
    canvas = np.full((rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap, 3), 255, np.uint8)
    for index, image in enumerate(images.astype(np.uint8)):
        row, column = divmod(index, columns)
        top, left = row * (height + gap), column * (width + gap)
        canvas[top:top + height, left:left + width] = image
    return canvas


def write_png(image: np.ndarray, path) -> Path:
    """Write a uint8 RGB image as PNG atomically and return the path."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8), "RGB").save(buffer, format="PNG")
    return fileio.atomic_write_bytes(path, buffer.getvalue())


def latent_vectors(seed: int, count: int, latent_dim: int) -> np.ndarray:
    """The latent batch for a seed: the same seed always gives the same vectors (NumPy, backend-free)."""
    return np.random.default_rng(int(seed)).standard_normal((int(count), int(latent_dim))).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Checkpoints.


def save_checkpoint(gan, run: store.Run, epoch: int, extra: dict | None = None) -> None:
    """Save the whole training state (networks, EMA, optimizers, seeds, aug_p) for resume after `epoch`."""
    buffer = io.BytesIO()
    variables = gan.state_variables()
    np.savez(buffer, **{f"v{index:04d}": np.asarray(variable.numpy()) for index, variable in enumerate(variables)})
    folder = run.checkpoint_dir
    fileio.atomic_write_bytes(folder / CHECKPOINT_STATE, buffer.getvalue())
    # state.json is written last: it is what says the checkpoint is complete.
    fileio.atomic_write_json(folder / CHECKPOINT_INFO, {"epoch": int(epoch), "variables": len(variables),
                                                         **(extra or {})})


def load_checkpoint(gan, run: store.Run) -> dict | None:
    """Restore the training state from the run's checkpoint; return its info (None if there is none)."""
    folder = run.path / store.CHECKPOINT_DIR
    info = fileio.read_json(folder / CHECKPOINT_INFO, default=None)
    if not info:
        return None
    variables = gan.state_variables()
    if info.get("variables") != len(variables):
        raise ValueError(f"run {run.id}: checkpoint holds {info.get('variables')} variables but the model has "
                         f"{len(variables)}; was the config changed?")
    with np.load(folder / CHECKPOINT_STATE) as stored:
        for index, variable in enumerate(variables):
            value = stored[f"v{index:04d}"]
            if tuple(value.shape) != tuple(variable.shape):
                raise ValueError(f"run {run.id}: checkpoint variable {variable.path} has shape {value.shape}, "
                                 f"expected {tuple(variable.shape)}")
            variable.assign(value)
    return info


def save_generator(gan, run: store.Run, name: str = GENERATOR_FILE, generator=None) -> Path:
    """Save `generator` (by default the EMA generator) as `name` in the run folder (written to a temporary file,
    then renamed)."""
    path = run.path / name
    temporary = run.path / f".{name}.{os.getpid()}.keras"
    (gan.ema_generator if generator is None else generator).save(temporary)
    os.replace(temporary, path)
    return path


def selection_kid(measured: dict, best_by: str = "train") -> float | None:
    """The number the best epoch and sampled_generator "better" are chosen by (lower is better), the column
    SCORE_OF names: the fixed-space KID against the training sample (`kid_fixed_train`) with best_by "train", the
    own-space KID against the held-out images (`kid`) with "heldout"; None when it was not measured or is not
    finite."""
    if best_by not in BEST_BY:
        raise ValueError(f"best_by {best_by!r} is not one of {BEST_BY}")
    value = measured.get(SCORE_OF[best_by])
    return float(value) if value is not None and np.isfinite(value) else None


def read_best(run) -> dict | None:
    """The run's best.json ({epoch, best_by, score, score_of, kid, kid_train, kid_fixed_train, feature_space,
    kid_fixed, recognised, generator}), or None before any epoch was measured (and for runs written before it
    existed). Older records are filled in: one written before `best_by` was chosen by the held-out rule and reads
    as best_by "heldout" with its `kid` as the score; one of best_by "train" without `score_of` (stop 61's runs)
    was chosen by the own-space `kid_train`. A damaged file raises ValueError naming it."""
    run = store.open_run(run, kind="gan")
    path = run.path / BEST_FILE
    if not path.exists():
        return None
    best = fileio.read_json(path)
    if not isinstance(best, dict) or not isinstance(best.get("epoch"), int) or best.get("kid") is None:
        raise ValueError(f"{path} is not a best-epoch record (expected an epoch and a kid)")
    best = {"best_by": "heldout", "score": best["kid"], **best}
    return {"score_of": "kid_train" if best["best_by"] == "train" else SCORE_OF.get(best["best_by"]), **best}


def _keep_if_best(gan, run: store.Run, epoch: int, measured: dict, generator=None, best_by: str = "train",
                  best_from: float = 0.0) -> bool:
    """After a measured epoch: when its `selection_kid` (the fixed-space KID against the training sample with
    best_by "train", the own-space KID against the held-out images with "heldout") is the lowest so far, save the
    epoch's generator (`generator`, by default the EMA one) as generator_best.keras and the epoch's numbers as
    best.json (with which generator it is, `measured["generator"]`, the rule, `best_by`, its number, `score`, and
    that number's column, `score_of`, and `best_from`, the share of the run before which the caller kept no epoch);
    True when it did. A best.json that chose by another number (another rule, a record from before `best_by`, or
    stop 61's own-space "train") is replaced.

    Stop 62: the fixed space against the training sample, scaled by that sample's RMS. Simulated on the grids of
    the 20 default runs of stops 56-61 (36 images an epoch against 256 training images), it picked epochs at
    0.080 against 0.090 at the last (lower on 13, higher on 4); on all 41 runs 0.092 against 0.104. Built in and
    run on seven new seeds (256 samples an epoch): 0.122 against 0.141, lower on 5, higher on 1 (0.164 over a
    last epoch of 0.142), so sampling draws the last epoch unless told (DEFAULT_CHECKPOINT).

    Before stop 61 the rule was "heldout" only; stop 61's "train" read the own-space `kid_train`. Simulated on the
    17 default runs of stops 56-60 (each epoch's 36-image grid against 256 training images), "train" picked epochs
    whose fixed-space KID averaged 0.085 against 0.093 at the last epoch (lower on 10, higher on 3); on six new runs
    (stop 61, 256 samples) 0.075 against 0.068, one pick at 0.171 over a last epoch of 0.093 (the own space is
    unscaled, so each real sample's quirks move its curve); pooled, 0.083 against 0.087. docs/gan-measurements.md,
    "A best epoch chosen without the held-out images". Earlier measurements of the "heldout" rule:

    Issue 13's kit runs (two-block generator, five seeds) ended 0.007-0.092 above the fixed-space KID of the
    epoch that this rule picks, and never below it: KID often rises over the last epochs while the learning
    rate runs out. With reconstruction weight 2 (seven seeds) the picked epoch was no better than the last on
    average (0.078 against 0.062), and once it was epoch 3 (0.198 against 0.127 at the last epoch;
    docs/gan-measurements.md, "Weight 2 for the reconstruction term"); on a machine that ran 11-13 epochs in 15
    minutes it was better than the last (0.085 against 0.109, eight runs; "The defaults on a machine half as
    fast"), and picking only among the last third's epochs gave 0.100. That rule reads the run's own space, not
    the fixed one, so that the fixed-space number stays a measurement rather than the thing selected on (both
    compare with the same held-out images, so the picked epoch's fixed-space KID is still somewhat
    optimistic)."""
    score = selection_kid(measured, best_by)
    if score is None:
        return False
    try:
        best = read_best(run)
    except ValueError as error:  # a damaged record must not end the run: this epoch replaces it
        print(f"{error}; keeping epoch {epoch} as the best", flush=True)
        best = None
    if (best is not None and best["score_of"] == SCORE_OF[best_by] and best["score"] <= score
            and (run.path / BEST_GENERATOR_FILE).exists()):
        return False
    save_generator(gan, run, BEST_GENERATOR_FILE, generator)
    fileio.atomic_write_json(run.path / BEST_FILE, {
        "epoch": int(epoch), "best_by": best_by, "score": score, "score_of": SCORE_OF[best_by],
        "kid": measured.get("kid"), "kid_train": measured.get("kid_train"),
        "kid_fixed_train": measured.get("kid_fixed_train"), "feature_space": measured.get("feature_space"),
        "kid_fixed": measured.get("kid_fixed"), "recognised": measured.get("recognised"),
        "generator": measured.get("generator", "ema"), "best_from": float(best_from)})
    return True


# ----------------------------------------------------------------------------------------------------------
# Training.


def _generate(generator, noise: np.ndarray, labels: np.ndarray | None, batch_size: int = 64) -> np.ndarray:
    """Run a generator in inference mode in batches -> uint8 images."""
    outputs = []
    for start in range(0, len(noise), batch_size):
        inputs = noise[start:start + batch_size]
        if labels is not None:
            inputs = [inputs, labels[start:start + batch_size].astype(np.int32)]
        outputs.append(to_uint8(generator(inputs, training=False)))
    return np.concatenate(outputs)


def rollback_threshold(lowest: float, ratio: float) -> float:
    """The training-image KID above which a run with `rollback` goes back to the epoch of its lowest: `ratio` times
    that lowest, and at least ROLLBACK_MARGIN above it."""
    return max(ratio * lowest, lowest + ROLLBACK_MARGIN)


def _epoch_callback_class():
    """Define the Keras callback that writes samples, quality, history and checkpoints (Keras imported here)."""
    import keras

    class GanRunCallback(keras.callbacks.Callback):
        """Per batch: progress and cancel. Per epoch: EMA recalibration, grid, quality, history, checkpoint."""

        def __init__(self, run, config, classes, steps_per_epoch, progress, reference, start_time,
                     previous_seconds, clock=time.monotonic, rollbacks: int = 0):
            super().__init__()
            self.run = run
            self.config = config
            self.classes = classes
            self.steps_per_epoch = steps_per_epoch
            self.progress = progress
            self.reference = reference
            self.cancelled = False
            self.start_time = start_time
            self.previous_seconds = previous_seconds
            self.clock = clock  # the budget's clock (wall or CPU); start_time is on it
            self.learning_rate = float(config.learning_rate)  # set before every step (lr_decay)
            self.epoch = 0
            self.steps_done = 0  # steps of the current epoch
            self.budget_reached = False  # the budget stopped the current epoch before its last step
            # The budget's seconds that an epoch's end takes (EMA statistics, grid, quality, checkpoint), the
            # longest so far: a step is not started unless this much is left after it. None before the first.
            self.end_seconds = None
            # Which generator the grids, numbers and saved files are ("ema" or "trained"): with sampled_generator
            # "better", the one with the lower KID at the last measured epoch.
            self.chosen = "ema"
            # With `rollback`: (epoch, kid_fixed_train, the values of gan.rollback_variables()) at the best epoch
            # so far (in memory: after a resume, none until the next best), and the rollbacks made (resumes included).
            self.kept_state = None
            self.rollbacks = rollbacks
            self.epoch_clock_start = clock()
            self.epoch_start = time.monotonic()
            self.epoch_cpu_start = time.process_time()
            conditional = config.conditional
            self.grid_noise = latent_vectors(config.seed + 1, config.grid_images, config.latent_dim)
            self.grid_labels = (np.arange(config.grid_images) % len(classes)).astype(np.int32) if conditional else None
            self.kid_noise = latent_vectors(config.seed + 2, config.kid_samples, config.latent_dim)
            self.kid_labels = (np.arange(config.kid_samples) % len(classes)).astype(np.int32) if conditional else None

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            self.steps_done = 0
            self.epoch_start = time.monotonic()
            self.epoch_clock_start = self.clock()
            self.epoch_cpu_start = time.process_time()

        def _elapsed(self) -> float:
            """Seconds on the budget's clock since the run started (resumed runs included)."""
            return self.previous_seconds + self.clock() - self.start_time

        def on_train_batch_begin(self, batch, logs=None):
            # The learning rate falls step by step, not epoch by epoch: on a large genre an epoch is a sixth of
            # a 15-minute run, and a per-epoch staircase ended such runs at a fifth of the starting rate.
            position, elapsed = self.epoch + batch / self.steps_per_epoch, self._elapsed()
            self.learning_rate = self.config.learning_rate_at(position, elapsed)
            self.model.generator_optimizer.learning_rate.assign(self.learning_rate)
            self.model.discriminator_optimizer.learning_rate.assign(
                self.config.discriminator_learning_rate(self.learning_rate))
            self.model.ema_rate_scale.assign(self.config.ema_rate_scale(self.learning_rate))
            self.model.augment_rate_scale.assign(self.config.augment_rate_scale(position, elapsed))
            if self.config.layout_freeze:
                self.model.layout_rate_scale.assign(self.config.layout_rate_scale(position, elapsed))
            if self.config.global_head_end:
                self.model.set_global_head_share(self.config.global_head_share_at(position, elapsed))
            if self.config.top_k:
                self.model.top_k_share.assign(self.config.top_k_share_at(position, elapsed))

        def on_train_batch_end(self, batch, logs=None):
            self.steps_done = batch + 1
            self.progress({"stage": "batch", "done": batch + 1, "total": self.steps_per_epoch})
            if self.run.cancel_requested():
                self.cancelled = True
                self.model.stop_training = True
                return
            # The budget may end an epoch after any step: another step (about the last one's time) and the
            # epoch's end must still fit.
            budget = self.config.time_budget_minutes * 60.0
            if budget and self.end_seconds is not None and batch + 1 < self.steps_per_epoch:
                step_seconds = (self.clock() - self.epoch_clock_start) / (batch + 1)
                if self._elapsed() + step_seconds + self.end_seconds > budget:
                    self.budget_reached = True
                    self.model.stop_training = True

        def _planned_total(self, number: int, epoch_seconds: float, elapsed: float, ends: bool) -> int:
            """The epoch count to show: the config's, or (budget only) this one when the budget ends here, else
            how many more fit at this pace, a shortened last one included."""
            if self.config.epochs:
                return int(self.config.epochs)
            if ends:
                return number
            remaining = self.config.time_budget_minutes * 60.0 - elapsed
            return number + max(1, math.ceil(remaining / max(epoch_seconds, 1e-6)))

        def _measure_and_choose(self, gan) -> dict:
            """Measure the EMA generator (and, with sampled_generator "better", the trained one on the same latent
            batch); set `self.chosen` to the one with the lower `selection_kid` (the fixed space against the
            training sample with best_by "train"), and return its numbers with "generator" and both fixed-space
            KIDs. The choice reads what the best-epoch rule reads, so that no choice reads the fixed-space KID
            against the held-out images: it stays a measurement."""
            config = self.config
            better = config.sampled_generator == "better"
            # With "better", the judge classifies only the generator kept (its 64 images cost more than the KIDs).
            ema = measure(gan.ema_generator, self.kid_noise, self.kid_labels, self.reference, self.classes,
                          seed=config.seed, judge=not better)
            ema["generator"], self.chosen = "ema", "ema"
            if not better:
                return ema
            trained = measure(gan.generator, self.kid_noise, self.kid_labels, self.reference, self.classes,
                              seed=config.seed, judge=False)
            trained["generator"] = "trained"
            both = {"kid_fixed_ema": ema.get("kid_fixed"), "kid_fixed_trained": trained.get("kid_fixed")}
            ema_kid, trained_kid = selection_kid(ema, config.best_by), selection_kid(trained, config.best_by)
            if trained_kid is not None and (ema_kid is None or trained_kid < ema_kid):
                self.chosen = "trained"
            kept, generator = (trained, gan.generator) if self.chosen == "trained" else (ema, gan.ema_generator)
            judged = recognise(generator, self.kid_noise, self.kid_labels, self.reference, self.classes)
            return {**with_recognition(kept, judged), **both}

        def _roll_back_if_risen(self, gan, number: int, measured: dict, kept: bool, last: bool) -> int | None:
            """With `rollback`: keep the training state in memory when this epoch is the new best (`kept`), or
            restore the kept one when this epoch's `kid_fixed_train` rose above `rollback_threshold` of it (from
            ROLLBACK_FROM on, never at the last epoch, at most `rollback_limit` times); the epoch gone back to, else
            None."""
            config = self.config
            score = selection_kid(measured, config.best_by) if config.rollback else None
            if score is None:
                return None
            if kept:
                values = [np.array(variable.numpy()) for variable in gan.rollback_variables()]
                self.kept_state = (number, score, values)
                return None
            if (last or self.kept_state is None or number < ROLLBACK_FROM or self.rollbacks >= config.rollback_limit
                    or score <= rollback_threshold(self.kept_state[1], config.rollback)):
                return None
            epoch, _, values = self.kept_state
            for variable, value in zip(gan.rollback_variables(), values):
                variable.assign(value)
            self.rollbacks += 1
            return epoch

        def on_epoch_end(self, epoch, logs=None):
            if self.cancelled:
                return
            logs = logs or {}
            gan = self.model
            config = self.config
            number = epoch + 1
            planned = config.planned_epochs
            train_seconds = self.clock() - self.epoch_clock_start
            end_start = self.clock()
            gan.recalibrate_ema(samples=int(config.bn_calibration_samples), seed=config.seed + 3)
            # The budget may end the run after this epoch: measure the last epoch in any case. Another epoch is
            # started only when, after this epoch's end and the next one's, a quarter of an epoch's steps fit
            # (that epoch then stops at whichever step the budget allows).
            budget = config.time_budget_minutes * 60.0
            end_seconds = self.end_seconds if self.end_seconds is not None else 0.15 * train_seconds
            full_epoch = train_seconds * self.steps_per_epoch / max(1, self.steps_done)
            left = budget - self._elapsed() - 2 * end_seconds
            budget_ends = bool(budget) and (self.budget_reached or left < 0.25 * full_epoch)
            last = number >= planned or budget_ends
            measured = {}
            if self.reference is not None and (number % config.kid_every == 0 or last):
                measured = self._measure_and_choose(gan)
                _append_quality(self.run, number, measured)
            chosen = gan.generator if self.chosen == "trained" else gan.ema_generator
            samples = _generate(chosen, self.grid_noise, self.grid_labels)
            columns = int(np.ceil(np.sqrt(len(samples))))
            if config.conditional:
                columns = len(self.classes) * max(1, columns // len(self.classes))
            write_png(grid(samples, columns), self.run.path / SAMPLES_DIR / f"epoch_{number:04d}.png")
            seconds = time.monotonic() - self.epoch_start
            budget_seconds = self.clock() - self.epoch_clock_start
            elapsed = self._elapsed()
            save_generator(gan, self.run, generator=chosen)
            # An epoch before best_from of the run is not kept (the last one always may be).
            eligible = last or config.share_done(number, elapsed) >= float(config.best_from)
            kept = eligible and _keep_if_best(gan, self.run, number, measured, chosen, config.best_by,
                                              config.best_from)
            # After the generators are saved: a rollback restores the state kept at the best epoch.
            rolled_back_to = self._roll_back_if_risen(gan, number, measured, kept, last)
            row = {
                "epoch": number,
                "d_loss": float(logs.get("d_loss", np.nan)),
                "g_loss": float(logs.get("g_loss", np.nan)),
                "kid": measured.get("kid"),
                "kid_std": measured.get("kid_std"),
                **({"kid_train": measured.get("kid_train"), "kid_fixed_train": measured.get("kid_fixed_train")}
                   if config.best_by == "train" else {}),
                "aug_p": float(logs.get("aug_p", np.nan)),
                "apa_p": float(logs["apa_p"]) if "apa_p" in logs else None,
                "learning_rate": self.learning_rate,  # at the epoch's last step
                "steps": self.steps_done,
                "seconds": round(seconds, 2),
                "cpu_seconds": round(time.process_time() - self.epoch_cpu_start, 2),
                "real_accuracy": float(logs.get("real_accuracy", np.nan)),
                "margin_patches": float(logs.get("margin_patches", np.nan)),
                **({"margin_global": float(logs["margin_global"])} if "margin_global" in logs else {}),
                "feature_space": measured.get("feature_space"),
                "kid_fixed": measured.get("kid_fixed"),
                "kid_fixed_std": measured.get("kid_fixed_std"),
                "kid_fixed_block3": measured.get("kid_fixed_block3"),
                "kid_fixed_block4": measured.get("kid_fixed_block4"),
                "kid_fixed_block5": measured.get("kid_fixed_block5"),
                "recognised": measured.get("recognised"),
                "recognised_real": measured.get("recognised_real"),
                "diversity": measured.get("diversity"),
                "stripes": measured.get("stripes"),
                "generator": self.chosen,
                **({"kid_fixed_ema": measured.get("kid_fixed_ema"), "kid_fixed_trained": measured.get("kid_fixed_trained")}
                   if config.sampled_generator == "better" else {}),
                "spectrum_loss": float(logs["spectrum_loss"]) if "spectrum_loss" in logs else None,
                # With a scheduled whole-picture head, its share at the epoch's last step.
                **({"global_head_share": round(gan.global_head_share(), 4)} if config.global_head_end else {}),
                # With top-k training, the share of the generated batch its adversarial loss took at the last step.
                **({"top_k_share": round(float(gan.top_k_share.numpy()), 4)} if config.top_k else {}),
                **({"reconstruction_loss": float(logs["reconstruction_loss"])}
                   if "reconstruction_loss" in logs else {}),
                **({"rolled_back_to": rolled_back_to} if config.rollback else {}),
                **({"layout_mmd": float(logs["layout_mmd"])} if "layout_mmd" in logs else {}),
                "elapsed_seconds": round(elapsed, 2),  # since the start, on the budget's clock
            }
            self.run.append_history(row)
            tensorboard_log.log_gan_epoch(self.run, row, self.run.path / SAMPLES_DIR / f"epoch_{number:04d}.png")
            save_checkpoint(gan, self.run, number, {"elapsed_seconds": round(elapsed, 2), "rollbacks": self.rollbacks})
            self.end_seconds = max(self.end_seconds or 0.0, 1.15 * (self.clock() - end_start))
            text = _quality_text(measured)
            if rolled_back_to is not None:
                threshold = rollback_threshold(self.kept_state[1], config.rollback)
                text += (f"; rolled back to epoch {rolled_back_to} (kid_fixed_train {measured['kid_fixed_train']:.4f}"
                         f" > {threshold:.4f}; {self.rollbacks} of {config.rollback_limit})")
            total = self._planned_total(number, budget_seconds, elapsed, budget_ends)
            print(f"epoch {number}/{total}: d_loss {row['d_loss']:.3f} g_loss {row['g_loss']:.3f} "
                  f"aug_p {row['aug_p']:.2f} "
                  + (f"apa_p {row['apa_p']:.2f} " if row["apa_p"] is not None else "")
                  + (f"spectrum_loss {row['spectrum_loss']:.3f} " if row["spectrum_loss"] is not None else "")
                  + (f"reconstruction_loss {row['reconstruction_loss']:.3f} " if "reconstruction_loss" in row else "")
                  + (f"layout_mmd {row['layout_mmd']:.4f} " if "layout_mmd" in row else "")
                  + f"{text} ({seconds:.0f} s, {elapsed / 60:.1f} min in all)", flush=True)
            self.progress({"stage": "epoch", "done": number, "total": total,
                           "message": f"epoch {number}/{total}, {text}"})
            if budget_ends and number < planned:
                steps = (f" ({self.steps_done} of its {self.steps_per_epoch} steps)"
                         if self.steps_done < self.steps_per_epoch else "")
                print(f"time budget of {config.time_budget_minutes} min: stopping after epoch {number}{steps} "
                      f"({elapsed / 60:.1f} min)", flush=True)
                gan.stop_training = True

    return GanRunCallback


def _quality_text(measured: dict) -> str:
    """A short progress text of the epoch's quality numbers."""
    parts = []
    if measured.get("kid_fixed") is not None:
        parts.append(f"KID(fixed) {measured['kid_fixed']:.3g} ± {measured['kid_fixed_std']:.2g}")
    if measured.get("kid") is not None:
        parts.append(f"KID {measured['kid']:.4g}")
    if measured.get("recognised") is not None:
        parts.append(f"recognised {measured['recognised']:.0%} (real {measured['recognised_real']:.0%})")
    if measured.get("diversity") is not None:
        parts.append(f"diversity {measured['diversity']:.2f}")
    if measured.get("stripes") is not None:
        parts.append(f"stripes {measured['stripes']:.1f}x")
    if measured.get("kid_fixed_trained") is not None:
        parts.append(f"{measured['generator']} generator (fixed KID: EMA {measured['kid_fixed_ema']:.3g}, "
                     f"trained {measured['kid_fixed_trained']:.3g})")
    return ", ".join(parts) or "no quality measured"


@dataclass
class Reference:
    """Real images the GAN did not train on, with what every epoch compares against, computed once."""

    images: np.ndarray
    labels: np.ndarray
    extractor: object  # the configured KID space
    features: np.ndarray  # in the configured space (at most kid_samples images)
    fixed_extractor: object
    fixed_features: np.ndarray  # in quality.FIXED_SPACE (every reference image)
    judge: object = None  # a classify.Classifier, or None
    judge_name: str | None = None
    judge_real: dict = field(default_factory=dict)  # genre -> share of real images the judge calls that genre
    judge_samples: int = 64  # images per genre that the judge classifies
    spectrum: np.ndarray | None = None  # quality.power_spectrum of the images (for `stripes`)
    # A seeded sample of kid_samples training images, in the configured space (for `kid_train`) and in the fixed
    # one (for `kid_fixed_train`, what best_by "train" chooses the best epoch by, so that the choice never reads
    # the held-out images). None: not measured.
    train_features: np.ndarray | None = None
    train_fixed_features: np.ndarray | None = None


def prepare_reference(config: GanConfig, reference: np.ndarray, reference_labels: np.ndarray, classes,
                      progress=None, train_images: np.ndarray | None = None) -> Reference:
    """Features of the held-out real images in both spaces, and the judge with its share on real images; with
    `train_images`, also both spaces' features of a seeded sample of them (kid_samples, for `kid_train` and
    `kid_fixed_train`)."""
    progress = progress or (lambda event: None)
    progress({"stage": "prepare", "done": 0, "total": 1, "message": "computing real-image features for KID"})
    extractor = quality.feature_extractor(config.feature_space, config.kid_image_size)
    fixed_extractor = quality.feature_extractor("hed_vgg16_fixed")
    rng = np.random.default_rng(config.seed)
    chosen = np.sort(rng.choice(len(reference), min(config.kid_samples, len(reference)), replace=False))
    # One pass over every held-out image gives both spaces (the configured one keeps kid_samples of them).
    features, fixed_features = quality.extract_many(np.asarray(reference), [extractor, fixed_extractor])
    features = features[chosen]
    result = Reference(np.asarray(reference), np.asarray(reference_labels), extractor, features, fixed_extractor,
                       fixed_features, judge_samples=int(config.judge_samples),
                       spectrum=quality.power_spectrum(reference))
    if train_images is not None and len(train_images) >= 2:
        # Its own seed, so that the held-out sample above is the one runs written before it used.
        train_rng = np.random.default_rng(config.seed + TRAIN_SAMPLE_SEED_OFFSET)
        sample = np.sort(train_rng.choice(len(train_images), min(config.kid_samples, len(train_images)),
                                          replace=False))
        result.train_features, result.train_fixed_features = quality.extract_many(
            np.asarray(train_images)[sample], [extractor, fixed_extractor])
    judge_path = find_judge(config.judge, classes)
    if judge_path is not None and config.judge_samples:
        progress({"stage": "prepare", "done": 0, "total": 1, "message": "the judge classifies real images"})
        # Every epoch classifies judge_samples images: the backbone runs on the fast engine where it converts.
        result.judge = classify.load_classifier(judge_path).with_engine("auto")
        result.judge_name = Path(judge_path).name
        for label, genre in enumerate(classes):
            of_genre = np.flatnonzero(result.labels == label)[: config.judge_samples]
            if len(of_genre):
                result.judge_real[genre] = quality.recognisability(result.judge, result.images[of_genre], genre)["share"]
    return result


def find_judge(judge: str | None, genres) -> Path | None:
    """The classifier that scores recognisability: `judge` (a run id or folder, or "bundled") when given,
    which must know every genre; with "auto" the newest finished classifier run whose classes include every
    genre, else the bundled real-painting model when it knows them; None when `judge` is empty or "auto"
    finds none."""
    if not judge or judge == "none":
        return None
    genres = list(genres)
    if bundle.is_reference(judge):
        missing = [genre for genre in genres if genre not in _bundle_classes()]
        if missing:
            raise ValueError(f"the bundled model does not know genre(s) {', '.join(missing)}")
        return bundle.folder()
    if judge != "auto":
        run = store.open_run(judge, kind="classifier")
        missing = [genre for genre in genres if genre not in (run.classes() or [])]
        if missing:
            raise ValueError(f"judge run {run.id} does not know genre(s) {', '.join(missing)}")
        if not (run.path / "model.keras").exists():
            raise ValueError(f"judge run {run.id} has no model.keras")
        return run.path
    for row in store.list_runs("classifier"):
        if row.get("state") != "finished" or row.get("damaged"):
            continue
        folder = Path(row["path"])
        classes = fileio.read_json(folder / "classes.json", default=None) or []
        if all(genre in classes for genre in genres) and (folder / "model.keras").exists():
            return folder
    if all(genre in _bundle_classes() for genre in genres):
        return bundle.folder()
    return None


def _bundle_classes() -> list[str]:
    """The bundled real-painting model's genres (empty when it is not shipped)."""
    if not bundle.available():
        return []
    return fileio.read_json(bundle.folder() / "classes.json", default=None) or []


def measure(generator, noise, labels, reference: Reference, classes, seed: int = 0, judge: bool = True) -> dict:
    """Quality of the generator's images for a fixed latent batch against the held-out real images:
    KID in the configured space and in the fixed space, diversity and, with `judge`, recognisability (per
    genre, averaged). `judge=False` leaves recognisability to `recognise`, for a caller that judges only the
    generator it keeps."""
    generated = _generate(generator, noise, labels)
    features, fixed_features = quality.extract_many(generated, [reference.extractor, reference.fixed_extractor])

    def half_the_smaller(real_features) -> int:
        # Subsets of half the smaller set, so that the spread over subsets says how stable the number is.
        return max(2, min(len(features), len(real_features), 2000) // 2)

    result = quality.compare(features, reference.features, reference.extractor.name, subsets=50,
                             subset_size=half_the_smaller(reference.features), seed=seed)
    fixed = quality.fixed_kid(fixed_features, reference.fixed_features, seed=seed)
    result.update(kid_fixed=fixed["kid"], kid_fixed_std=fixed["kid_std"], fixed_space=fixed["feature_space"])
    if reference.train_features is not None:
        result["kid_train"], result["kid_train_std"] = quality.kid(
            features, reference.train_features, 50, half_the_smaller(reference.train_features), seed)
    if reference.train_fixed_features is not None:
        # Scaled by the training sample's own RMS (fixed_kid scales by its second set), so that it never reads
        # the held-out images.
        against_train = quality.fixed_kid(fixed_features, reference.train_fixed_features, seed=seed)
        result["kid_fixed_train"], result["kid_fixed_train_std"] = against_train["kid"], against_train["kid_std"]
    by_depth = quality.fixed_kid_by_depth(fixed_features, reference.fixed_features, seed=seed)
    result.update({f"kid_fixed_{depth}": value for depth, value in by_depth.items()})
    if reference.spectrum is not None:
        result["stripes"] = quality.stripes(generated, reference.spectrum)["ratio"]
    generated_labels = np.zeros(len(generated), np.int32) if labels is None else np.asarray(labels)
    ratios, per_genre = [], {}
    for label, genre in enumerate(classes):
        mine = generated_labels == label
        real = reference.labels == label
        per_genre[genre] = {}
        if mine.sum() >= 2 and real.sum() >= 2:
            per_genre[genre]["diversity"] = quality.diversity(fixed_features[mine],
                                                              reference.fixed_features[real])["ratio"]
            ratios.append(per_genre[genre]["diversity"])
    result.update(diversity=float(np.mean(ratios)) if ratios else None, per_genre=per_genre)
    judged = _judged(generated, generated_labels, reference, classes) if judge else _not_judged(reference)
    return with_recognition(result, judged)


def with_recognition(result: dict, judged: dict) -> dict:
    """`result` (from `measure`) with the recognisability numbers of `judged` (from `recognise`), per genre too."""
    per_genre = {genre: {**record, **judged["per_genre"].get(genre, {})}
                 for genre, record in (result.get("per_genre") or {}).items()}
    return {**result, **{key: value for key, value in judged.items() if key != "per_genre"}, "per_genre": per_genre}


def recognise(generator, noise, labels, reference: Reference, classes) -> dict:
    """Recognisability of the generator's images for the latent batch `measure` uses: only the images the judge
    classifies (the first `judge_samples` of each genre) are generated. Returns "recognised", "recognised_real",
    "judge" and "per_genre" ({genre: {"recognised", "recognised_real"}})."""
    generated_labels = np.zeros(len(noise), np.int32) if labels is None else np.asarray(labels)
    chosen = np.concatenate([np.flatnonzero(generated_labels == label)[:reference.judge_samples]
                             for label in range(len(classes))]).astype(int)
    if reference.judge is None or len(chosen) == 0:
        return _not_judged(reference)
    generated = _generate(generator, noise[chosen], None if labels is None else np.asarray(labels)[chosen])
    return _judged(generated, generated_labels[chosen], reference, classes)


def _not_judged(reference: Reference) -> dict:
    """Recognisability left unmeasured (no judge, or left to `recognise`)."""
    return {"recognised": None, "recognised_real": None, "judge": reference.judge_name, "per_genre": {}}


def _judged(generated, generated_labels, reference: Reference, classes) -> dict:
    """The judge's share of each genre's first `judge_samples` generated images called by that genre, beside its
    share of the real held-out images, per genre and averaged."""
    shares, real_shares, per_genre = [], [], {}
    for label, genre in enumerate(classes):
        if reference.judge is None or genre not in reference.judge_real:
            continue
        chosen = np.flatnonzero(generated_labels == label)[:reference.judge_samples]
        if len(chosen) == 0:
            continue
        record = {"recognised": quality.recognisability(reference.judge, generated[chosen], genre)["share"],
                  "recognised_real": reference.judge_real[genre]}
        shares.append(record["recognised"])
        real_shares.append(record["recognised_real"])
        per_genre[genre] = record
    return {
        "recognised": float(np.mean(shares)) if shares else None,
        "recognised_real": float(np.mean(real_shares)) if real_shares else None,
        "judge": reference.judge_name,
        "per_genre": per_genre,
    }


def _append_quality(run: store.Run, epoch: int, measured: dict) -> None:
    """Add one per-epoch record to quality.json (each record names its feature space)."""
    record = fileio.read_json(run.path / QUALITY_FILE, default={}) or {}
    history = [item for item in record.get("history", []) if item.get("epoch", 0) < epoch]
    history.append({"epoch": epoch, **measured})
    fileio.atomic_write_json(run.path / QUALITY_FILE, {"latest": history[-1], "history": history})


QUALITY_BY_GENRE_COLUMNS = ("epoch", "genre", "diversity", "recognised", "recognised_real")


def quality_by_genre(run) -> list[dict]:
    """Per-genre quality of every measured epoch, read from the run's quality.json: one row per (epoch, genre)
    with QUALITY_BY_GENRE_COLUMNS (None where a number was not measured). Empty before the first measured
    epoch; ValueError naming the file when quality.json is not a quality record."""
    run = store.open_run(run, "gan")
    path = run.path / QUALITY_FILE
    record = fileio.read_json(path, default={}) or {}
    history = record.get("history", []) if isinstance(record, dict) else None
    if not isinstance(history, list) or not all(isinstance(item, dict) for item in history):
        raise ValueError(f"{path}: not a GAN quality record (expected {{'history': [{{'epoch': ..., ...}}]}})")
    rows = []
    for item in history:
        for genre, numbers in (item.get("per_genre") or {}).items():
            numbers = numbers if isinstance(numbers, dict) else {}
            rows.append({"epoch": item.get("epoch"), "genre": genre,
                         **{name: numbers.get(name) for name in QUALITY_BY_GENRE_COLUMNS[2:]}})
    return rows


def execute(run, progress=None) -> None:
    """Train (or resume) the GAN described by the run folder's config.json; the job runner calls this.
    Progress is recorded in status.json and also passed to `progress`."""
    run = store.open_run(run, kind="gan")
    with store.recording_progress(run, progress) as report:
        _execute(run, report)


def _execute(run, progress) -> None:
    """The body of `execute`."""
    import keras

    config = GanConfig.from_run_config(run.config()).validate()
    clock = budget_clock(config.budget_clock)
    start_time = clock()
    keras.utils.set_random_seed(config.seed)
    progress({"stage": "prepare", "done": 0, "total": 1, "message": "loading images"})
    loaded = load_training_images(config, progress=progress)
    images, labels, reference_images, reference_labels, classes = loaded
    run.write_classes(classes)
    gan = build_gan(config, len(classes), images)  # the spectrum target again on resume (not checkpoint state)
    info = load_checkpoint(gan, run)
    initial_epoch = int(info["epoch"]) if info else 0
    previous_seconds = float(info.get("elapsed_seconds", 0.0)) if info else 0.0
    run.truncate_history(initial_epoch)
    if initial_epoch:
        print(f"resuming after epoch {initial_epoch}", flush=True)
    if initial_epoch >= config.planned_epochs:
        return
    reference = None
    if config.kid_samples:
        reference = prepare_reference(config, reference_images, reference_labels, classes, progress,
                                      train_images=images if config.best_by == "train" else None)
        if reference.judge is not None:
            shares = ", ".join(f"{genre} {share:.0%}" for genre, share in reference.judge_real.items())
            print(f"judge {reference.judge_name} ({reference.judge.engine}) calls held-out real images by their "
                  f"genre: {shares}", flush=True)
        elif config.judge:
            print("no finished classifier run knows these genres: recognisability is not measured", flush=True)
    steps_per_epoch = max(len(images) // config.batch_size, config.min_steps_per_epoch)
    print(f"training on {len(images)} images of {', '.join(classes)} at {config.image_size} px "
          f"({config.architecture}, {networks.resolve_precision(config.precision, config.architecture)}), "
          f"{steps_per_epoch} steps per epoch; "
          + (f"no images held out (too few), so quality is measured against the {len(images)} training images"
             if reference_images is images else
             f"{len(reference_images)} held-out images for quality ({held_out_text(config, loaded.held_out_from)})"),
          flush=True)
    dataset = make_training_dataset(images, labels, config.batch_size, config.horizontal_flip,
                                    config.seed + initial_epoch)
    callback = _epoch_callback_class()(run, config, classes, steps_per_epoch, progress, reference, start_time,
                                       previous_seconds, clock, rollbacks=int((info or {}).get("rollbacks", 0)))
    progress({"stage": "epoch", "done": initial_epoch, "total": config.epochs or initial_epoch + 1})
    try:
        gan.fit(dataset, epochs=config.planned_epochs, initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
                callbacks=[callback], verbose=0)
    finally:
        if hasattr(progress, "flush"):
            progress.flush()
    if callback.cancelled:
        raise store.Cancelled(f"run {run.id} was cancelled")


def new_run_config(config: GanConfig | dict) -> tuple[dict, list[str] | None]:
    """Check a new GAN run's config before its folder is made (the "gan" kind's new_run): its config.json
    and its classes (the genre, or the genres of a conditional GAN when they are listed)."""
    if isinstance(config, dict):
        config = GanConfig.from_dict(config)
    config.validate()
    classes = [config.genre] if not config.conditional else (list(config.genres) or None)
    # The weights in use, not -1: a later change of a default does not change what this run resumes with.
    return {**config.to_dict(), "mode_seeking": config.mode_seeking_weight, "lecam": config.lecam_weight,
            "spectrum_penalty": config.spectrum_penalty_weight,
            "discriminator_reconstruction": config.discriminator_reconstruction_weight}, classes


# ----------------------------------------------------------------------------------------------------------
# Sampling.

_GENERATORS: dict[tuple[str, float], object] = {}


def generator_path(run, checkpoint: str = DEFAULT_CHECKPOINT) -> Path:
    """The saved generator that sampling uses: "best" (generator_best.keras, the epoch the run's best_by rule
    chose, see `_keep_if_best`; the last epoch's generator when the run has none, as runs written before it) or
    "last" (generator.keras)."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint {checkpoint!r} is not one of {CHECKPOINTS}")
    run = store.open_run(run, kind="gan")
    best = run.path / BEST_GENERATOR_FILE
    if checkpoint == "best" and best.exists():
        return best
    return run.path / GENERATOR_FILE


def load_generator(run, checkpoint: str = DEFAULT_CHECKPOINT):
    """Load the run's saved generator (safe_mode=True; the EMA one unless the run kept the trained one,
    `sampled_generator`) of the `checkpoint` (`generator_path`), cached per file version."""
    run = store.open_run(run, kind="gan")
    path = generator_path(run, checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"run {run.id} has no {GENERATOR_FILE} yet (no epoch finished)")
    key = (str(path), path.stat().st_mtime)
    if key not in _GENERATORS:
        # Keep only the newest version of each run's generator in memory.
        for old in [old for old in _GENERATORS if old[0] == key[0]]:
            del _GENERATORS[old]
        # zoo.load_model registers the custom layers first: a reflect-padded generator holds ReflectionPadding2D.
        _GENERATORS[key] = zoo.load_model(path)
    return _GENERATORS[key]


def _labels_for(run, count: int, genre: str | None) -> np.ndarray | None:
    """Label input for a run: None when unconditional; else the genre's label, or all genres in turn."""
    config = GanConfig.from_run_config(run.config())
    classes = run.classes()
    if not config.conditional:
        if genre is not None and genre != config.genre:
            raise ValueError(f"run {run.id} learned only genre {config.genre!r}, not {genre!r}")
        return None
    if genre is None:
        return (np.arange(count) % len(classes)).astype(np.int32)
    if genre not in classes:
        raise ValueError(f"genre {genre!r} is not one of run {run.id}'s genres: {', '.join(classes)}")
    return np.full(count, classes.index(genre), dtype=np.int32)


def sample(run, n: int = 16, seed: int = 0, genre: str | None = None,
           checkpoint: str = DEFAULT_CHECKPOINT) -> np.ndarray:
    """Generate `n` images (uint8 (n, H, W, 3)) with the `checkpoint` generator (`generator_path`); the same
    run, seed, genre and checkpoint give the same images."""
    if int(n) < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    run = store.open_run(run, kind="gan")
    generator = load_generator(run, checkpoint)
    config = GanConfig.from_run_config(run.config())
    return _generate(generator, latent_vectors(seed, n, config.latent_dim), _labels_for(run, int(n), genre))


def interpolate(run, seed_a: int, seed_b: int, steps: int = 8, genre: str | None = None,
                checkpoint: str = DEFAULT_CHECKPOINT) -> np.ndarray:
    """Images along the spherical path between the latent vectors of two seeds (uint8 (steps, H, W, 3)), with
    the `checkpoint` generator (`generator_path`)."""
    if int(steps) < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    run = store.open_run(run, kind="gan")
    config = GanConfig.from_run_config(run.config())
    start = latent_vectors(seed_a, 1, config.latent_dim)[0]
    end = latent_vectors(seed_b, 1, config.latent_dim)[0]
    noise = networks.slerp(start, end, np.linspace(0.0, 1.0, int(steps))).astype(np.float32)
    labels = _labels_for(run, int(steps), genre)
    if labels is not None and genre is None:
        labels = np.zeros(int(steps), dtype=np.int32)
    return _generate(load_generator(run, checkpoint), noise, labels)
