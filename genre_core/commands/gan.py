"""`gan train`, `gan sample`, `gan interpolate`: train a GAN on a genre and look at what it makes."""

from __future__ import annotations

import argparse
from pathlib import Path

from genre_core.gan import trainer
from genre_core.gan.networks import (ARCHITECTURES, AUGMENT_TRANSFORMS, DOWNSAMPLINGS, FEATURE_MIXINGS,
                                     GENERATOR_CONVS, GENERATOR_PADDINGS, GENERATOR_TOP_UPSAMPLINGS,
                                     GEOMETRIC_MAX_DEGREES, GLOBAL_HEAD_INPUTS,
                                     GLOBAL_HEAD_SIZE, GLOBAL_HEAD_SIZES, HEAD_BALANCES,
                                     GEOMETRIC_MAX_SCALE, PRECISIONS, R1_SAMPLES, SPECTRUM_PENALTY_KINDS,
                                     SPECTRUM_PENALTY_PERIOD, SPECTRUM_PENALTY_PERIODS, SUPPORTED_SIZES)
from genre_core.runs import jobs, store


def register(subparsers) -> None:
    parser = subparsers.add_parser("gan", help="train a GAN on a genre, sample it, interpolate between seeds")
    commands = parser.add_subparsers(dest="gan_command", metavar="GAN_COMMAND")
    commands.required = True

    train = commands.add_parser("train", help="train a GAN (FastGAN-style G, projected D, DiffAugment, EMA) on a genre")
    train.add_argument("--data", default="demo", help='dataset path or "demo" (default demo)')
    train.add_argument("--genre", default=None, help="the genre to learn (unconditional; default landscape)")
    train.add_argument("--conditional", action="store_true", help="one model for several genres, chosen when sampling")
    train.add_argument("--genres", nargs="+", default=[], help="conditional: the genres to learn (default: all)")
    train.add_argument("--size", type=int, default=128, choices=SUPPORTED_SIZES,
                       help="image size in pixels (default 128; 256 needs a GPU to be useful)")
    train.add_argument("--architecture", default="projected", choices=ARCHITECTURES,
                       help="projected: FastGAN-style generator + projected discriminator (default); dcgan: the old one")
    train.add_argument("--epochs", type=int, default=None,
                       help="default 20, or with --minutes as many as fit in the budget")
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--minutes", type=float, default=0.0,
                       help="time budget from start to finish: training stops after the last step that still fits "
                            "with its epoch's measurement and checkpoint (the last epoch may be shorter)")
    train.add_argument("--budget-clock", default="wall", choices=("wall", "cpu"),
                       help="cpu: count this process's CPU time / usable cores, for a machine shared with other jobs")
    train.add_argument("--max-images", type=int, default=0, help="use at most this many images (0: all)")
    train.add_argument("--holdout", default=None, choices=trainer.HOLDOUTS,
                       help="for a genre without a val/test split of its own, how the fifth kept out of training "
                            "(for KID, diversity and the judge) is drawn: random, by the seed (default); stratified, "
                            f"the same share from each of {trainer.HOLDOUT_CLUSTERS} k-means clusters of the images' "
                            "fixed-space features, so each seed holds out and trains on every kind of painting in "
                            "proportion (one extra feature pass over the genre at the start, about 20 s for 1,153 "
                            "images on 2 cores)")
    train.add_argument("--learning-rate", type=float, default=None, help="Adam learning rate of both networks "
                                                                        "(default 1e-4)")
    train.add_argument("--lr-decay", default=None, choices=trainer.LR_DECAYS,
                       help="linear: both learning rates fall linearly to 0 over the run (--minutes, else --epochs), so "
                            "the samples settle at the end (default); none: constant")
    train.add_argument("--lr-decay-power", type=float, default=None, metavar="P",
                       help="with --lr-decay linear, the rates are the starting rate times (1 - share of the run "
                            "done) ** P: above 1 they fall faster and lie lower over the last part of the run "
                            f"(default {trainer.GanConfig.lr_decay_power:g}; 1: a straight line)")
    train.add_argument("--ema-lr-power", type=float, default=None,
                       help="the sampled (EMA) generator follows the trained one by a share per step times (learning "
                            "rate / starting rate) ** this, so it keeps averaging as the rate falls instead of "
                            "settling on the last step; 0: a fixed share (default 0.5)")
    train.add_argument("--discriminator-reconstruction", type=float, default=None, metavar="W",
                       help="FastGAN's self-supervised discriminator on the whole-picture head: a small decoder "
                            "redraws each real picture at 32 px from the head's last map, and D pays W times its mean "
                            "absolute error, so that the head's features must hold the layout (default "
                            f"{trainer.PROJECTED_RECONSTRUCTION:g} for unconditional runs of the projected networks with a "
                            "whole-picture head; 0: off; conditional runs: 0)")
    train.add_argument("--ema-decay", type=float, default=None, metavar="D",
                       help="the sampled (EMA) generator keeps D of itself per step (at the starting learning rate), "
                            "so its memory is about 1 / (1 - D) steps; with a smaller --batch-size, a D nearer 1 keeps "
                            f"that memory in images (default {trainer.GanConfig.ema_decay:g})")
    train.add_argument("--sampled-generator", default=None, choices=trainer.SAMPLED_GENERATORS,
                       help="which generator the grids, quality numbers and saved generators are: ema, the running "
                            "average of the trained one (default); better: at every measured epoch both are "
                            "measured and the one with the lower KID by the --best-by rule is kept "
                            "(history.csv gets both fixed-space KIDs and which one it was)")
    train.add_argument("--best-by", default=None, choices=trainer.BEST_BY,
                       help="what the best epoch (generator_best.keras, which gan sample draws from) is chosen by: "
                            "train, the fixed-space KID against a seeded sample of the training images, scaled by "
                            "that sample's RMS (default; history.csv's kid_fixed_train); heldout, the run's own-space "
                            "KID against the held-out images every reported KID compares with (the rule before stop "
                            "61; it makes the chosen epoch's numbers optimistic)")
    train.add_argument("--best-from", type=float, default=None, metavar="SHARE",
                       help="keep the best epoch (generator_best.keras, gan sample --checkpoint best) only among the "
                            "epochs that end after SHARE of the run (of the time budget or of the epochs, the "
                            "learning-rate schedule's clock); the last epoch always counts, so a short run still "
                            "keeps one, and --rollback goes back only to a kept epoch (default "
                            f"{trainer.GanConfig.best_from:g}: every epoch)")
    train.add_argument("--discriminator-lr-scale", type=float, default=None, metavar="S",
                       help="the discriminator's learning rate is the generator's times S, at every step of the "
                            "schedule (two time-scale updates, TTUR); below 1 the discriminator learns more slowly "
                            f"(default {trainer.GanConfig.discriminator_lr_scale:g})")
    train.add_argument("--discriminator-lr-floor", type=float, default=None, metavar="F",
                       help="the discriminator's learning rate stops falling at F times its starting rate, while the "
                            "generator's goes on falling to 0: a discriminator that keeps learning over the end of "
                            f"the run (default {trainer.GanConfig.discriminator_lr_floor:g}: both fall together)")
    train.add_argument("--layout-freeze", type=float, default=None, metavar="SHARE",
                       help="the share of the run by which the generator's layout stages (its 16-px map and what "
                            "feeds it) stop learning; their rate falls as the rest's does, but to 0 there, so that "
                            "the composition settles while the detail is still drawn (0.1..1; default 0: off)")
    train.add_argument("--layout-mmd", type=float, default=None, metavar="W",
                       help="weight of a generator term that compares where the colour masses lie: MMD² between "
                            "the generated batch and training images drawn at random, both averaged down to 8 px "
                            "(generative moment matching); a target that does not move as the discriminator does "
                            "(default 0: off)")
    train.add_argument("--lookahead", type=int, default=None, metavar="K",
                       help="Lookahead-Minmax (Chavdarova et al., ICLR 2021): after every K-th step both networks "
                            "move back to --lookahead-alpha of the way from their weights K steps before to where the "
                            "steps took them, and go on from there; damps the circling of the two-player game "
                            f"(the paper's K is 5; default {trainer.GanConfig.lookahead}: off)")
    train.add_argument("--lookahead-alpha", type=float, default=None, metavar="A",
                       help=f"how far toward the new weights a lookahead sync goes (default "
                            f"{trainer.GanConfig.lookahead_alpha:g}, the paper's)")
    train.add_argument("--generator-fakes", choices=trainer.GENERATOR_FAKES, default=None,
                       help="the generated batch the generator's step learns from: fresh (a new one, drawn after the "
                            "discriminator's step) or shared (the one the discriminator's step just saw: one "
                            "generator forward pass a step instead of two, so more steps fit in --minutes) "
                            f"(default {trainer.GanConfig.generator_fakes})")
    train.add_argument("--top-k", type=float, default=None, metavar="NU",
                       help="Top-k training: the generator's adversarial loss learns only from the generated images "
                            "of its batch that the discriminator scores as most real, a share falling over the run "
                            "from the whole batch to NU (0..1, e.g. 0.5) (default 0: every image)")
    train.add_argument("--rollback", type=float, default=None, metavar="RATIO",
                       help="after a measured epoch whose fixed-space KID against the training sample "
                            "(kid_fixed_train) is above RATIO times the lowest so far (and 0.03 above it), restore "
                            "the whole training state kept at that epoch and go on (from epoch 3, never the last; "
                            "no held-out image is read); 0: never (default 0)")
    train.add_argument("--rollback-limit", type=int, default=None, metavar="N",
                       help=f"at most N rollbacks in a run (default {trainer.GanConfig.rollback_limit})")
    train.add_argument("--beta-1", type=float, default=None, help="Adam beta_1 of both networks (default 0)")
    train.add_argument("--generator-padding", default=None, choices=GENERATOR_PADDINGS,
                       help="how the projected generator's 3x3 convolutions pad (default reflect; zeros paints "
                            "frames)")
    train.add_argument("--generator-convs", type=int, default=None, choices=GENERATOR_CONVS,
                       help="(3x3 convolution, batch norm, LeakyReLU) blocks after each upsampling of the projected "
                            "generator; a second one smooths the blocks that nearest upsampling leaves (default 2)")
    train.add_argument("--generator-noise", type=float, default=None, metavar="S",
                       help="per-pixel noise after each convolution block of the projected generator (after its "
                            "batch norm), times a learned per-channel strength that starts at S (StyleGAN, FastGAN), "
                            "so it can paint random texture rather than stripes; 0: none (default 0)")
    train.add_argument("--generator-noise-from", type=int, default=None, metavar="SIZE",
                       help="the smallest generator size in px that gets noise inputs (default 8: every size)")
    train.add_argument("--generator-noise-gain", type=float, default=None, metavar="G",
                       help="the noise strengths learn G times faster than the other weights (default 1)")
    train.add_argument("--generator-top-channels", type=int, default=None, metavar="C",
                       help="channels of the projected generator's last, full-size stage, which paints the finest "
                            "detail (default 0: the base width, 16)")
    train.add_argument("--generator-top-upsample", default=None, choices=GENERATOR_TOP_UPSAMPLINGS,
                       help="how the projected generator doubles its map into the full-size stage: nearest (each "
                            "value copied into a 2x2 block, whose edges every other pixel make fine cross-hatching) "
                            "or bilinear (default nearest)")
    train.add_argument("--discriminator-downsample", default=None, choices=DOWNSAMPLINGS,
                       help="how the projected discriminator shrinks images for its trunk and whole-picture head: "
                            "average (pooling, whose gradient to the generator is blocky) or blur (a [1, 3, 3, 1] "
                            "filter, whose gradient is smooth; steadier on the kit, not better on average) "
                            "(default average)")
    train.add_argument("--augment", default=None, type=_augment_choice, metavar="{adaptive,P}",
                       help="DiffAugment (the --augment-policy transforms) before the discriminator: a fixed probability "
                            "P per image (0..1), or adaptive (from 0, raised while the discriminator calls more than "
                            "60%% of the real images real and lowered while it calls fewer, as in ADA) "
                            "(default adaptive)")
    train.add_argument("--augment-target", type=float, default=None, metavar="T",
                       help="adaptive augmentation: the share of real images the discriminator should call real; "
                            "the probability rises while it calls more and falls while it calls fewer "
                            f"(default {trainer.GanConfig.augment_target:g})")
    train.add_argument("--augment-speed", type=_non_negative, default=None, metavar="S",
                       help="adaptive augmentation: per step, the probability moves by S times (the share called "
                            f"real - the target) (default {trainer.GanConfig.augment_speed:g})")
    train.add_argument("--augment-hold", type=float, default=None, metavar="F",
                       help="adaptive augmentation: hold the probability (and APA's) where it is for the last F "
                            "share of the run, while the learning rates fall to 0; 0 lets it adapt to the end "
                            f"(default {trainer.GanConfig.augment_hold:g})")
    train.add_argument("--pseudo-augment", action="store_true", default=None,
                       help="adaptive pseudo augmentation (APA, Jiang et al. 2021): show the discriminator some "
                            "generated images labelled real, each real image replaced with a probability that starts "
                            "at 0 and moves as the adaptive augmentation's does (default off)")
    train.add_argument("--augment-policy", default=None, nargs="+", choices=AUGMENT_TRANSFORMS,
                       help="the DiffAugment transforms (default: translation, color, cutout; geometric rotates by up "
                            f"to {GEOMETRIC_MAX_DEGREES:g} degrees and scales by up to {GEOMETRIC_MAX_SCALE:g}x)")
    train.add_argument("--feature-mixing", default=None, choices=FEATURE_MIXINGS,
                       help="fixed random 1x1 projections of the projected discriminator's trunk maps before its heads "
                            "(Projected GAN): channels (CCM), channels_scales (CCM and CSM), none (default none)")
    train.add_argument("--feature-diffusion", type=float, default=None, metavar="SIGMA",
                       help="Diffusion-GAN's instance noise on the projected discriminator's trunk maps: each map is "
                            "diffused by a random number of forward diffusion steps with noise of standard deviation "
                            "SIGMA (e.g. 0.5), the chain growing with the adaptive augmentation probability, in both "
                            "networks' steps; 0 turns it off (default 0)")
    train.add_argument("--head-balance", default=None, choices=HEAD_BALANCES,
                       help="how the projected discriminator's patch heads (pixels and three trunk depths) share its "
                            "loss: patches (each patch logit alike, so the heads on large maps weigh most and the "
                            "deepest trunk head, the texture one, 2.7%% at 128 px) or heads (each head alike) "
                            "(default heads)")
    train.add_argument("--global-head", type=float, default=None,
                       help="share of the projected discriminator's loss on one whole-picture logit, which sees where "
                            "things are (sky above, ground below); 0 turns it off (default 0.2)")
    train.add_argument("--global-head-end", type=float, default=None, metavar="S",
                       help="the whole-picture head's share at the end of the run: it rises from --global-head to S "
                            "as the run goes on (as the learning rates fall), so that the discriminator weighs the "
                            "layout more late (default 0: it stays at --global-head)")
    train.add_argument("--global-head-input", default=None, choices=GLOBAL_HEAD_INPUTS,
                       help="what the whole-picture head reads: pixels (the image at 32 px) or features (the frozen "
                            "trunk's deepest map, pretrained features of what is where) (default pixels)")
    train.add_argument("--global-head-size", type=int, default=None, choices=GLOBAL_HEAD_SIZES, metavar="PX",
                       help="the size at which the whole-picture head (and the reconstruction term's decoder) see the "
                            "picture: 32 shows where the colours are, 64 also the shapes; a smaller --size is seen "
                            f"at its own size ({', '.join(map(str, GLOBAL_HEAD_SIZES))}; default {GLOBAL_HEAD_SIZE})")
    train.add_argument("--global-head-mbstd", type=int, default=None, metavar="G",
                       help="give the whole-picture head a minibatch standard deviation channel over groups of G "
                            "images (ProGAN, StyleGAN2), so that it sees how alike the pictures of a batch are; G must "
                            "divide --batch-size; 0: none (default 0)")
    train.add_argument("--global-head-gain", type=float, default=None, metavar="G",
                       help="multiply the whole-picture head's logit by G, so that its hinge and the generator's "
                            "gradient from it see a logit G times larger than its spectrally normalised layers give; "
                            "at 4 on the kit the layout was worse on both seeds tried; 1: none (default 1)")
    train.add_argument("--conditional-norm", action="store_true", default=None,
                       help="conditional runs: give every batch norm of the generator a per-genre gain and bias "
                            "(class-conditional batch norm, as BigGAN), so the genre reaches every layer, not only "
                            "the input vector")
    train.add_argument("--mode-seeking", type=_non_negative, default=None, metavar="W",
                       help="weight of the MSGAN mode-seeking term, which pays the generator for making different "
                            "images of one genre from different latent vectors; 0 turns it off (default "
                            f"{trainer.CONDITIONAL_MODE_SEEKING:g} for conditional runs, 0 otherwise)")
    train.add_argument("--lecam", type=_non_negative, default=None, metavar="W",
                       help="weight of LeCam regularisation (Tseng et al. 2021), which keeps the discriminator's "
                            "scores of real and generated images near each other's moving averages so that it "
                            "overfits a small training set less; 0 turns it off (default "
                            f"{trainer.PROJECTED_LECAM:g} for the projected networks, 0 for dcgan)")
    train.add_argument("--r1", type=_non_negative, default=None, metavar="W",
                       help="weight of the R1 gradient penalty (Mescheder et al. 2018) on the discriminator: the "
                            "squared gradient of its score on real images, computed on "
                            f"{R1_SAMPLES} images of each batch; 0 (the default) turns it off")
    train.add_argument("--spectrum-penalty", type=_non_negative, default=None, metavar="W",
                       help="weight of the generator's spectrum penalty: its batch's power spectrum against the "
                            "training images' at fine periods (--spectrum-penalty-period), counting only excess "
                            "power, which fights cross-hatching the discriminator cannot see; 0 turns it off (default "
                            f"{trainer.PROJECTED_SPECTRUM_PENALTY:g} for the projected networks, 0 for dcgan)")
    train.add_argument("--spectrum-penalty-kind", default=None, choices=SPECTRUM_PENALTY_KINDS,
                       help="what the spectrum penalty compares: level (each band's power against the real images'), "
                            "direction (also how much of a scale's detail runs horizontally and vertically) or bins "
                            "(each frequency bin's power in a running mean of the generated batches, which finds a "
                            "weave at one period and angle) (default level)")
    train.add_argument("--spectrum-penalty-period", type=int, default=None, metavar="PX",
                       help="the spectrum penalty's band: detail with a period of up to PX pixels along either axis "
                            f"({SPECTRUM_PENALTY_PERIODS[0]} up to half the image size; default "
                            f"{SPECTRUM_PENALTY_PERIOD})")
    train.add_argument("--precision", default=None, choices=PRECISIONS,
                       help="projected GAN arithmetic: auto (mixed_bfloat16 where the CPU or GPU has bfloat16, about "
                            "1.5x faster steps; else float32), float32 or mixed_bfloat16 (default auto)")
    train.add_argument("--kid-samples", type=int, default=256, help="images per KID measurement (0: no KID)")
    train.add_argument("--feature-space", default="auto", choices=("auto", "inception_v3", "hed_vgg16"),
                       help="the run's own KID space; KID in the fixed space (hed_vgg16_conv345_rms@64) is always added")
    train.add_argument("--judge", default="auto",
                       help='classifier that scores recognisability: a run id or folder, "bundled", "auto" (the newest '
                            'finished run that knows the genre(s), else the bundled model) or "none"')
    train.add_argument("--judge-samples", type=int, default=64, help="images per genre the judge classifies per epoch")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--background", action="store_true", help="run as a background job and return at once")
    train.set_defaults(func=cmd_train)

    sample = commands.add_parser("sample", help="write a PNG grid of generated images")
    sample.add_argument("run", help="GAN run id or folder")
    sample.add_argument("--n", type=int, default=16)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--genre", default=None, help="conditional runs: the genre to draw (default: all in turn)")
    sample.add_argument("--columns", type=int, default=0, help="images per row (default: a square grid)")
    sample.add_argument("--out", default=None, help="PNG path (default: <run>/samples/sample_seed<SEED>.png)")
    sample.add_argument("--checkpoint", default=trainer.DEFAULT_CHECKPOINT, choices=trainer.CHECKPOINTS,
                        help="best: the epoch the run's best_by rule chose, the lowest fixed-space KID against the "
                             "training images (stop 61's runs: own-space; runs before it: against the held-out "
                             "images; the last epoch when the run kept none); last: the last epoch (default "
                             f"{trainer.DEFAULT_CHECKPOINT}: on 21 runs scored outside the small kit the best epoch was "
                             "lower on average, 0.106 against 0.127, and above 0.15 twice against six times, but the "
                             "early epochs it keeps are coarser pictures and one run fell below 45%% recognised)")
    sample.set_defaults(func=cmd_sample)

    between = commands.add_parser("interpolate", help="write a strip PNG walking the latent space between two seeds")
    between.add_argument("run", help="GAN run id or folder")
    between.add_argument("--seeds", type=int, nargs=2, default=(0, 1), metavar=("A", "B"))
    between.add_argument("--steps", type=int, default=8)
    between.add_argument("--genre", default=None)
    between.add_argument("--out", default=None, help="PNG path (default: <run>/samples/interpolate_A_B.png)")
    between.add_argument("--checkpoint", default=trainer.DEFAULT_CHECKPOINT, choices=trainer.CHECKPOINTS,
                         help=f"best or last, as for sample (default {trainer.DEFAULT_CHECKPOINT})")
    between.set_defaults(func=cmd_interpolate)

    compare = commands.add_parser("compare", help="compare GAN runs: last and best fixed-space KID, recognised "
                                                  "share, diversity, and the settings in which they differ")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="GAN run ids or folders")
    compare.add_argument("--epochs", action="store_true",
                         help="also print a Markdown table per epoch (cells: KID fixed / recognised)")
    compare.add_argument("--names", nargs="+", default=None, help="column names for --epochs (default: run ids)")
    compare.add_argument("--csv", default=None, help="also write the comparison table to this CSV file")
    compare.set_defaults(func=cmd_compare)

    score = commands.add_parser("score", help="score finished GAN runs again in the fixed space against real images "
                                              "they never trained on: their held-out split or another dataset's")
    score.add_argument("runs", nargs="+", metavar="RUN", help="GAN run ids or folders")
    score.add_argument("--reference", default=None, metavar="DATA",
                       help="a dataset whose images of the run's genre(s) are the real set, less every file "
                            "byte-identical to one of the run's own dataset (e.g. the full kit for runs on the "
                            "small kit); default: the run's own held-out images")
    score.add_argument("--samples", type=int, default=1024, help="generated images per genre (default 1024)")
    score.add_argument("--seed", type=int, default=0, help="seed of the latents and of the KID subsets")
    score.add_argument("--checkpoint", default=trainer.DEFAULT_CHECKPOINT, choices=trainer.CHECKPOINTS,
                       help=f"best or last, as for sample (default {trainer.DEFAULT_CHECKPOINT})")
    score.set_defaults(func=cmd_score)


def _augment_choice(value: str) -> str | float:
    """--augment's value: "adaptive", or a probability in 0..1."""
    if value == "adaptive":
        return value
    try:
        probability = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither 'adaptive' nor a probability") from None
    if not 0.0 <= probability <= 1.0:
        raise argparse.ArgumentTypeError(f"augmentation probability {value} is not in 0..1")
    return probability


def _non_negative(text: str) -> float:
    """argparse type: a number of at least 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} is below 0")
    return value


def _augment_options(choice: str | float | None) -> dict:
    """The GanConfig options for --augment (none when it is left out)."""
    if choice is None:
        return {}
    if choice == "adaptive":
        return {"adaptive_augment": True, "augment_probability": 0.0}
    return {"adaptive_augment": False, "augment_probability": float(choice)}


def cmd_train(args: argparse.Namespace) -> int:
    if args.conditional and args.genre:
        raise ValueError("--genre is for unconditional runs; use --genres with --conditional")
    config = trainer.GanConfig(
        data=args.data, genre=None if args.conditional else (args.genre or "landscape"),
        conditional=args.conditional, genres=list(args.genres), image_size=args.size,
        architecture=args.architecture, epochs=args.epochs if args.epochs is not None else (0 if args.minutes else 20),
        batch_size=args.batch_size, time_budget_minutes=args.minutes, budget_clock=args.budget_clock,
        max_images=args.max_images,
        kid_samples=args.kid_samples, feature_space=args.feature_space, seed=args.seed,
        judge="" if args.judge in ("none", "") else args.judge, judge_samples=args.judge_samples,
        **{name: value for name, value in (("learning_rate", args.learning_rate), ("beta_1", args.beta_1),
                                           ("generator_padding", args.generator_padding),
                                           ("generator_convs", args.generator_convs),
                                           ("generator_noise", args.generator_noise),
                                           ("generator_noise_from", args.generator_noise_from),
                                           ("generator_noise_gain", args.generator_noise_gain),
                                           ("generator_top_channels", args.generator_top_channels),
                                           ("generator_top_upsample", args.generator_top_upsample),
                                           ("discriminator_downsample", args.discriminator_downsample),
                                           ("head_balance", args.head_balance),
                                           ("global_head", args.global_head),
                                           ("global_head_end", args.global_head_end),
                                           ("discriminator_reconstruction", args.discriminator_reconstruction),
                                           ("global_head_input", args.global_head_input),
                                           ("global_head_size", args.global_head_size),
                                           ("global_head_minibatch_std", args.global_head_mbstd),
                                           ("global_head_gain", args.global_head_gain),
                                           ("precision", args.precision),
                                           ("lr_decay", args.lr_decay), ("lr_decay_power", args.lr_decay_power),
                                           ("ema_decay", args.ema_decay), ("ema_lr_power", args.ema_lr_power),
                                           ("sampled_generator", args.sampled_generator),
                                           ("best_by", args.best_by), ("best_from", args.best_from),
                                           ("holdout", args.holdout),
                                           ("discriminator_lr_scale", args.discriminator_lr_scale),
                                           ("discriminator_lr_floor", args.discriminator_lr_floor),
                                           ("layout_freeze", args.layout_freeze),
                                           ("layout_mmd", args.layout_mmd),
                                           ("lookahead", args.lookahead),
                                           ("lookahead_alpha", args.lookahead_alpha),
                                           ("generator_fakes", args.generator_fakes),
                                           ("top_k", args.top_k),
                                           ("rollback", args.rollback), ("rollback_limit", args.rollback_limit),
                                           ("mode_seeking", args.mode_seeking), ("lecam", args.lecam), ("r1", args.r1),
                                           ("spectrum_penalty", args.spectrum_penalty),
                                           ("spectrum_penalty_kind", args.spectrum_penalty_kind),
                                           ("spectrum_penalty_period", args.spectrum_penalty_period),
                                           ("conditional_norm", args.conditional_norm),
                                           ("feature_mixing", args.feature_mixing),
                                           ("feature_diffusion", args.feature_diffusion),
                                           ("augment_target", args.augment_target),
                                           ("augment_speed", args.augment_speed),
                                           ("augment_hold", args.augment_hold),
                                           ("pseudo_augment", args.pseudo_augment))
           if value is not None},
        **_augment_options(args.augment),
        **({"augment_policy": list(args.augment_policy)} if args.augment_policy else {}),
    ).validate()
    if args.data != "demo" and not Path(args.data).exists():
        raise FileNotFoundError(f"dataset {args.data} does not exist")
    run = jobs.start("gan", config, background=args.background)
    if args.background:
        print(f"started GAN run {run.id} in the background: {run.path}")
        return 0
    state = run.status().get("state")
    print(f"GAN run {run.id}: {state} ({run.path})")
    return 0 if state == "finished" else 1


def _default_out(run_ref: str, name: str) -> Path:
    """A PNG path inside the run's samples folder."""
    return store.open_run(run_ref, kind="gan").path / trainer.SAMPLES_DIR / name


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np

    images = trainer.sample(args.run, args.n, args.seed, args.genre, args.checkpoint)
    columns = args.columns or int(np.ceil(np.sqrt(len(images))))
    out = Path(args.out) if args.out else _default_out(args.run, f"sample_seed{args.seed}.png")
    trainer.write_png(trainer.grid(images, columns), out)
    print(out)
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    seed_a, seed_b = args.seeds
    images = trainer.interpolate(args.run, seed_a, seed_b, args.steps, args.genre, args.checkpoint)
    out = Path(args.out) if args.out else _default_out(args.run, f"interpolate_{seed_a}_{seed_b}.png")
    trainer.write_png(trainer.grid(images, len(images)), out)
    print(out)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Print the comparison (one block per run); 1 when a run could not be read (its problem is printed)."""
    from genre_core.gan import compare

    if args.names is not None and len(args.names) != len(args.runs):
        raise ValueError(f"--names gives {len(args.names)} names for {len(args.runs)} runs")
    table = compare.compare_runs(args.runs)
    for row in table.to_dict("records"):
        print(_comparison_block(row))
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    readable = [run for run, found in zip(args.runs, table["found"]) if found]
    if args.epochs and readable:
        names = [name for name, found in zip(args.names or args.runs, table["found"]) if found]
        print(compare.epoch_table(readable, names))
    return 0 if len(readable) == len(args.runs) else 1


def _as_trained(result: dict) -> str:
    """"; history's last epoch 0.120 against the held-out images" (or "history's epoch 4 (the kept one) ..." when
    the score drew the kept best generator): what the run logged, as trained, for the generator that was scored;
    "" when its history has no fixed-space KID for it."""
    run = store.open_run(result["path"], kind="gan")
    history = run.history()
    if "kid_fixed" not in history.columns:
        return ""
    rows, label = history, "history's last epoch"
    if trainer.generator_path(run, result["checkpoint"]).name == trainer.BEST_GENERATOR_FILE:
        best = trainer.read_best(run)
        if not best or "epoch" not in history.columns:
            return ""
        rows, label = history[history["epoch"] == best["epoch"]], f"history's epoch {best['epoch']} (the kept one)"
    values = rows["kid_fixed"].dropna()
    return f"; {label} {float(values.iloc[-1]):.3f} against the held-out images" if len(values) else ""


def cmd_score(args: argparse.Namespace) -> int:
    """Print each run's score beside the KID its history logged for the same generator (the last epoch's, or the
    kept one's with --checkpoint best) against its held-out images; 1 when a run could not be scored."""
    from genre_core.gan import score

    if args.reference is not None and not Path(args.reference).exists():
        raise FileNotFoundError(f"reference dataset {args.reference} does not exist")

    def show(result: dict) -> None:
        if "problem" in result:
            print(f"{result['run']}: {result['problem']}", flush=True)
            return
        genres = "; ".join(f"{name} {item['kid']:.3f} ± {item['kid_std']:.3f} against {item['n_real']} real"
                           for name, item in result["per_genre"].items())
        print(f"{result['run']}: KID (fixed space, {result['checkpoint']} epoch, {result['samples']} samples) "
              f"{result['kid']:.3f}: {genres}; {result['what']}"
              + (f", {result['left_out']} of its files left out as the run's own" if result["left_out"] else "")
              + _as_trained(result), flush=True)

    results = score.score_runs(args.runs, args.reference, args.samples, args.seed, args.checkpoint, on_result=show)
    return 0 if all("problem" not in result for result in results) else 1


def _comparison_block(row: dict) -> str:
    """A few lines for one compared run."""
    def number(key: str, pattern: str = "{:.3f}") -> str:
        value = row.get(key)
        return "–" if value is None or value != value else pattern.format(value)

    if not row.get("found"):
        return f"{row['run']}: {row['problems']}"
    lines = [f"{row['run']}: {row['genres']} at {number('size', '{:.0f}')} px on {row['data']}, seed "
             f"{number('seed', '{:.0f}')}; {number('epochs', '{:.0f}')} epochs in {number('minutes', '{:.1f}')} min",
             f"  KID (fixed space) last {number('kid_fixed')}, lowest {number('best_kid_fixed')} at epoch "
             f"{number('best_epoch', '{:.0f}')}, kept (best.json's epoch, "
             f"{number('kept_epoch', '{:.0f}')}) {number('kept_kid_fixed')}; over the last third mean "
             f"{number('late_mean')}, rose "
             f"{number('late_climb')}; recognised "
             f"{number('recognised', '{:.0%}')} (real {number('recognised_real', '{:.0%}')}); diversity "
             f"{number('diversity', '{:.2f}')}"]
    if row.get("differs"):
        lines.append(f"  differs: {row['differs']}")
    if row.get("problems"):
        lines.append(f"  problems: {row['problems']}")
    return "\n".join(lines)
