"""DCGAN networks, differentiable augmentation and the GAN training model.

The GAN follows keras-io's `dcgan_overriding_train_step.py` and `gan_ada.py`: a thin `keras.Model` subclass
that overrides `compile` and `train_step`, tracks its losses with `keras.metrics.Mean` and draws all its
randomness from one `keras.random.SeedGenerator`. On top of the plain DCGAN it adds what makes a GAN work
on a few thousand images:

- the non-saturating generator loss (as in the report) with a spectrally normalised discriminator
  (`keras.layers.SpectralNormalization`);
- DiffAugment (translation, colour, cutout; Zhao et al. 2020) applied to real and generated images alike,
  in both the discriminator and the generator step, to each image with probability `aug_p`, which can adapt
  as in ADA / gan_ada.py (raised while the discriminator is too sure of the real images);
- an exponential moving average (EMA) of the generator weights; the EMA generator is the one sampled and
  saved. Its per-step share can be scaled by the learning rate (`ema_rate_scale`, set by the trainer), and
  its BatchNorm statistics are re-estimated from generated batches (`recalibrate_ema`).

A conditional model embeds the genre and concatenates it to z in the generator (and, with
`conditional_norm`, also gives every generator batch norm a per-genre gain and bias, as BigGAN); the
discriminator is a projection discriminator (Miyato & Koyama 2018).

Two architectures (`ARCHITECTURES`):

- `projected` (the default, issue 13): a FastGAN-style generator (Liu et al., ICLR 2021: nearest upsampling
  + 3x3 convolution instead of transposed convolutions, so no checkerboard, and skip-layer excitation from
  the 4/8/16-px maps onto the 32/64/128-px ones) and a Projected-GAN-style discriminator (Sauer et al.,
  NeurIPS 2021): DiffAugment, then the frozen offline HED-VGG16 trunk up to block3_conv2 at half the image
  size, with small trainable spectrally normalised heads on block1_conv2, block2_conv2 and block3_conv2
  plus one small head on the full-size pixels; every head gives a map of patch logits. A whole-picture
  head (the image at 32 px, convolutions down to 4x4, then one dense logit) carries a share of the loss
  (`global_weight`; 0.2 in GanConfig): patch logits cannot see where a patch is, so without it nothing asks
  for sky above and ground below. Hinge loss. The trunk stops before block3_conv3, the first layer that the
  fixed KID space reads. Both networks can compute in mixed bfloat16 (`resolve_precision`): float32
  weights, bfloat16 arithmetic, float32 images and logits.
- `dcgan`: the earlier DCGAN (transposed convolutions, one discriminator on pixels, non-saturating loss).

The generator can also pay a spectrum penalty (`spectrum_penalty`; the projected default in the trainer): the mean
power spectrum of its batch (per colour channel, Hann-windowed) against that of the training images, on the fine-
detail band (periods up to SPECTRUM_PENALTY_PERIOD px, or `spectrum_penalty_period`), one-sided: only power above
the real images' counts; the "direction" kind also counts fine detail that runs more along the two axes, relative
to the rest of its scale, than in the real images; the "bins" kind judges each frequency bin on its own, by a
running mean of the generated batches (a narrow weave that blocks of bins average away). The frozen trunk sees the
image at half size, where a one-pixel stripe averages out, so nothing else tells the generator that real paintings
have no cross-hatching (spectral regularisation, as Durall et al., CVPR 2020, there on the azimuthal mean of the
spectrum).

The whole-picture head can also learn to redraw the picture (`reconstruction`; FastGAN's self-supervised
discriminator, Liu et al., ICLR 2021): a small decoder (`make_reconstruction_decoder`) turns the head's last map of
each real image back into that image at the head's size, and its error is part of D's loss, so that the head's
features must hold the picture's layout rather than only what tells this batch apart.

A conditional run can add the mode-seeking term (Mao et al., CVPR 2019, MSGAN): the generator is paid for
making two latent vectors of the same genre give different images, which fights partial mode collapse.

TensorFlow and Keras are imported inside functions so that importing this module stays cheap.
"""

from __future__ import annotations

import math
from pathlib import Path

from genre_core.models import backbones
from genre_core.models.layers import layer_classes

SUPPORTED_SIZES = (16, 32, 64, 128, 256)
ARCHITECTURES = ("projected", "dcgan")
LOSSES = ("hinge", "non_saturating")
# LeCam regularisation: the decay of the moving averages of D's mean logits (the paper's and its code's 0.99).
LECAM_DECAY = 0.99
PRECISIONS = ("auto", "float32", "mixed_bfloat16")  # "auto": mixed_bfloat16 where the hardware has bfloat16
GENERATOR_PADDINGS = ("zeros", "reflect")  # how the projected generator's 3x3 convolutions pad
GENERATOR_TOP_UPSAMPLINGS = ("nearest", "bilinear")  # how the projected generator doubles into its full-size stage
GENERATOR_CONVS = (1, 2)  # (3x3 conv, BN, LeakyReLU) blocks after each upsampling of the projected generator
AUGMENT_POLICIES = ("translation", "color", "cutout")
# Transforms DiffAugment can also apply (not in the default policy): "geometric" rotates each image by up to
# GEOMETRIC_MAX_DEGREES and scales it by up to GEOMETRIC_MAX_SCALE either way, resampled bilinearly with
# mirrored borders (ADA's "geometric" group, Karras et al. 2020, in a small range).
AUGMENT_TRANSFORMS = AUGMENT_POLICIES + ("geometric",)
GEOMETRIC_MAX_DEGREES = 10.0
GEOMETRIC_MAX_SCALE = 1.1
# The frozen trunk layers whose maps the projected discriminator's heads read, and a fixed divisor for each
# (about the RMS of that layer's activations on real paintings at 64 px), so that the heads see inputs of
# order one whatever the layer.
PROJECTED_LAYERS = (("block1_conv2", 80.0), ("block2_conv2", 40.0), ("block3_conv2", 25.0))
# FastGAN's channel multipliers per resolution, times `base_channels`.
FASTGAN_MULTIPLIERS = {4: 16, 8: 16, 16: 8, 32: 4, 64: 2, 128: 1, 256: 1}
# Skip-layer excitation: the small map on the left gates the large map on the right.
FASTGAN_EXCITATIONS = ((4, 32), (8, 64), (16, 128), (32, 256))
# How the projected discriminator shrinks the image for its trunk and its whole-picture head.
DOWNSAMPLINGS = ("average", "blur")
# How the projected discriminator's patch heads share the patch part of its hinge losses: "patches", every patch
# logit weighs the same (so a head's share follows its map's area: at 128 px the pixels and block1 heads 256 logits
# each, block2 64, block3 16, which leaves block3 2.7% of it); "heads", each head carries the same share (the smaller
# heads' logits repeated), as Projected GAN's one discriminator per scale.
HEAD_BALANCES = ("patches", "heads")
# Fixed random projections of the trunk's maps before the heads (Projected GAN's CCM and CSM; `_mix_features`).
FEATURE_MIXINGS = ("none", "channels", "channels_scales")
# What the projected discriminator's whole-picture head reads: the image shrunk to GLOBAL_HEAD_SIZE px, or the
# frozen trunk's deepest map (block3_conv2, after any feature mixing).
GLOBAL_HEAD_INPUTS = ("pixels", "features")
# R1: how many of a batch's real images the gradient penalty is computed on (an unbiased estimate of the
# batch's mean at a quarter of the double backward pass's cost for batches of 16).
R1_SAMPLES = 4

# The spectrum penalty's band by default: frequencies (cycles per pixel) with max(|fy|, |fx|) at least
# 1 / SPECTRUM_PENALTY_PERIOD, periods up to that many px on either axis. Wide enough that stripes moved to 3-4 px
# (as a fixed output blur made them) still pay. `--spectrum-penalty-period` widens it (SPECTRUM_PENALTY_PERIODS).
SPECTRUM_PENALTY_PERIOD = 8
SPECTRUM_PENALTY_PERIODS = (4, 64)  # the shortest and longest band edge (px) allowed
# The penalty compares power summed over blocks of BLOCK x BLOCK frequency bins, and lets the batch's log power
# exceed the target's by MARGIN before it counts: a batch of 16 real training images against their own mean then
# scores 0.004, where a 128-px default run's last generator scores 0.065 (per-bin logs without margin: 0.047
# against 0.105).
SPECTRUM_PENALTY_BLOCK = 4
SPECTRUM_PENALTY_MARGIN = 0.25
# What the penalty compares (`Gan._spectrum_loss`): "level", each block's power against the real images';
# "direction", also each block's share of its scale's power against theirs; "bins", each single frequency bin's
# power in a running mean of the generated batches (`SPECTRUM_RUNNING_DECAY`) against the real images', so that a
# narrow peak (a weave at one period and angle) is not averaged away with its neighbours in a block, and a batch
# of 16 is not too noisy to judge one bin.
SPECTRUM_PENALTY_KINDS = ("level", "direction", "bins")
# The "bins" kind's running mean of the generated power spectrum: each generator step adds its batch with this
# share left to the old mean (about 50 steps, one epoch of the kit's landscapes, of memory; zero-debiased).
SPECTRUM_RUNNING_DECAY = 0.98
SPECTRUM_EPSILON = 1e-8  # added to the power before its log (a flat image has none)
# The layout term (GanConfig.layout_mmd): the generated batch and LAYOUT_MMD_REALS training images drawn from a pool
# of LAYOUT_MMD_POOL, all averaged down to LAYOUT_MMD_SIZE px, compared by MMD² (generative moment matching, Li et
# al. 2015) with a sum of Gaussian kernels on the mean squared difference per value, exp(-d / s) at these scales (two
# 8-px thumbnails of unrelated landscapes differ by about 0.3 per value). A target that does not move, unlike the
# discriminator: where the colour masses of a landscape lie, sky above land.
LAYOUT_MMD_SIZE = 8
LAYOUT_MMD_SCALES = (0.05, 0.2, 0.8)
LAYOUT_MMD_REALS = 256
LAYOUT_MMD_POOL = 2048
# The size at which the projected discriminator's whole-picture head sees the image (composition, not texture),
# by default, and the sizes `--global-head-size` allows (a smaller image is seen at its own size). At 32 px a tree
# is a few pixels; at 64 the head (and the reconstruction term's decoder) see shapes, not only where the colours are.
GLOBAL_HEAD_SIZE = 32
GLOBAL_HEAD_SIZES = (16, 32, 64, 128)
# The generator's layout stages: the layers that its map at this size depends on (the latent projection and the
# blocks up to it), which `GanConfig.layout_freeze` stops learning before the rest (`generator_layout_variables`).
LAYOUT_SIZE = 16


def check_augment_policy(policy) -> tuple:
    """Return the DiffAugment transforms `policy` as a tuple, or raise ValueError naming any unknown one."""
    unknown = sorted(set(policy) - set(AUGMENT_TRANSFORMS))
    if unknown:
        raise ValueError(f"augment_policy has unknown transform(s) {', '.join(unknown)}; known are "
                         f"{', '.join(AUGMENT_TRANSFORMS)}")
    return tuple(policy)


def check_size(image_size: int) -> int:
    """Return `image_size` if it is a supported square GAN size, else raise ValueError."""
    if int(image_size) not in SUPPORTED_SIZES:
        raise ValueError(f"GAN image size {image_size} is not supported; use one of {SUPPORTED_SIZES}")
    return int(image_size)


def projected_feature_size(image_size: int) -> int:
    """The size the projected discriminator's frozen trunk sees: half the image from 128 px up, else all of
    it, and at least 32 px (the smallest input Keras's VGG16 takes)."""
    image_size = check_size(image_size)
    return max(32, image_size // 2 if image_size >= 128 else image_size)


def fastgan_widths(image_size: int, base_channels: int = 16) -> dict[int, int]:
    """Channels of the FastGAN-style generator per resolution from 4 px up to image_size."""
    image_size = check_size(image_size)
    return {size: FASTGAN_MULTIPLIERS[size] * int(base_channels) for size in FASTGAN_MULTIPLIERS if size <= image_size}


def _projected_latent(latent_dim: int, num_classes: int, channels: int, conditional_norm: bool = False):
    """The generator's inputs (z, and a genre label when num_classes > 0) and z (with the label's embedding)
    projected to a batch-normalised 4x4 map of `channels`; returns (inputs, map). With `conditional_norm`
    the batch norm is class-conditional (`_class_batch_norm`)."""
    import keras
    from keras import layers

    noise = keras.Input(shape=(latent_dim,), name="z")
    inputs = [noise]
    x = noise
    if num_classes:
        label = keras.Input(shape=(), dtype="int32", name="label")
        inputs.append(label)
        embedded = layers.Embedding(num_classes, latent_dim, name="label_embedding")(label)
        x = layers.Concatenate(name="z_and_label")([noise, embedded])
    x = layers.Dense(4 * 4 * channels, use_bias=False, name="project")(x)
    x = layers.Reshape((4, 4, channels))(x)
    if num_classes and conditional_norm:
        return inputs, _class_batch_norm(x, inputs[1], num_classes, "project_bn")
    return inputs, layers.BatchNormalization(momentum=0.9, name="project_bn")(x)


def _class_batch_norm(x, label, num_classes: int, name: str):
    """Class-conditional batch norm (BigGAN, Brock et al. 2019; de Vries et al. 2017): normalise with the batch's
    statistics, then scale and shift each channel by a per-genre gain and bias (embeddings that start at 1 and
    0, so a new model starts as plain batch norm). The genre then reaches every layer of the generator, not
    only its input vector. Built from Keras layers only, so the saved model loads with safe_mode=True; the
    BatchNormalization layer keeps the name `name`, so `recalibrate_ema` finds it."""
    from keras import layers

    channels = x.shape[-1]
    x = layers.BatchNormalization(momentum=0.9, center=False, scale=False, name=name)(x)
    gain = layers.Embedding(num_classes, channels, embeddings_initializer="ones", name=f"{name}_gain")(label)
    bias = layers.Embedding(num_classes, channels, embeddings_initializer="zeros", name=f"{name}_bias")(label)
    gain = layers.Reshape((1, 1, channels), name=f"{name}_gain_map")(gain)
    bias = layers.Reshape((1, 1, channels), name=f"{name}_bias_map")(bias)
    x = layers.Multiply(name=f"{name}_scale")([x, gain])
    return layers.Add(name=f"{name}_shift")([x, bias])


def make_fastgan_generator(image_size: int, latent_dim: int = 128, num_classes: int = 0, base_channels: int = 16,
                           padding: str = "zeros", conditional_norm: bool = False, convs_per_size: int = 1,
                           noise: float = 0.0, noise_seed: int = 0, noise_from: int = 8, noise_gain: float = 1.0,
                           top_channels: int = 0, top_upsample: str = "nearest"):
    """Build the FastGAN-style generator: z (and a genre label) -> 4x4 map -> (nearest upsample, 3x3 conv, BN,
    LeakyReLU) per doubling, with skip-layer excitation, -> tanh image in [-1, 1]. `padding` is how the 3x3
    convolutions pad: "zeros" or "reflect" (GENERATOR_PADDINGS). With a genre label and `conditional_norm`,
    every batch norm is class-conditional (`_class_batch_norm`). `convs_per_size` (GENERATOR_CONVS) is how many
    (3x3 conv, BN, LeakyReLU) follow each upsampling: a second one smooths the 2x2 blocks that nearest
    upsampling leaves before the next doubling copies them again (FastGAN's UpBlockComp has two). With `noise`
    > 0, every such block adds per-pixel noise after its batch norm (a NoiseInjection layer: noise times a
    learned per-channel strength that starts at `noise`, relative to the normalised features; FastGAN's
    UpBlockComp and StyleGAN have noise inputs), seeded from `noise_seed`, at the sizes from `noise_from` up,
    with `noise_gain` times the learning rate for the strengths (`NoiseInjection`). `top_channels` > 0 widens
    (or narrows) the last, full-size stage to that many channels (FASTGAN_MULTIPLIERS give it `base_channels`).
    `top_upsample` (GENERATOR_TOP_UPSAMPLINGS) is how the map is doubled into that stage: "nearest" copies each
    value into a 2x2 block, as at every other doubling; "bilinear" interpolates, so that the full-size
    convolutions do not see 2x2 blocks: their edges, every other pixel, are what the default's fine
    cross-hatch (periods of 2-2.7 px, along the axes) is made of (docs/gan-measurements.md)."""
    import keras
    from keras import layers

    if padding not in GENERATOR_PADDINGS:
        raise ValueError(f"generator padding {padding!r} is not one of {GENERATOR_PADDINGS}")
    if convs_per_size not in GENERATOR_CONVS:
        raise ValueError(f"generator convolutions per size {convs_per_size!r} is not one of {GENERATOR_CONVS}")
    if top_upsample not in GENERATOR_TOP_UPSAMPLINGS:
        raise ValueError(f"generator top upsampling {top_upsample!r} is not one of {GENERATOR_TOP_UPSAMPLINGS}")

    def conv3x3(x, filters: int, name: str, **options):
        if padding == "zeros":
            return layers.Conv2D(filters, 3, padding="same", name=name, **options)(x)
        x = layer_classes()["ReflectionPadding2D"](1, name=f"{name}_pad")(x)
        return layers.Conv2D(filters, 3, padding="valid", name=name, **options)(x)

    widths = fastgan_widths(image_size, base_channels)
    if top_channels:
        widths[image_size] = int(top_channels)
    conditional_norm = bool(num_classes and conditional_norm)
    inputs, x = _projected_latent(latent_dim, num_classes, widths[4], conditional_norm)
    x = layers.LeakyReLU(0.2)(x)
    maps = {4: x}
    size = 4
    while size < image_size:
        size *= 2
        interpolation = top_upsample if size == image_size else "nearest"
        x = layers.UpSampling2D(2, interpolation=interpolation, name=f"up{size}")(x)
        for suffix in ("", "b")[:convs_per_size]:
            x = conv3x3(x, widths[size], f"conv{size}{suffix}", use_bias=False)
            if conditional_norm:
                x = _class_batch_norm(x, inputs[1], num_classes, f"conv{size}{suffix}_bn")
            else:
                x = layers.BatchNormalization(momentum=0.9, name=f"conv{size}{suffix}_bn")(x)
            if noise and size >= int(noise_from):
                layer_seed = int(noise_seed) * 64 + 2 * int(math.log2(size)) + len(suffix)
                x = layer_classes()["NoiseInjection"](seed=layer_seed, initial_strength=float(noise),
                                                      gain=float(noise_gain), name=f"conv{size}{suffix}_noise")(x)
            x = layers.LeakyReLU(0.2)(x)
        for small, large in FASTGAN_EXCITATIONS:
            if large == size and small in maps:
                x = _skip_layer_excitation(maps[small], x, widths[size], name=f"sle{small}to{large}")
        maps[size] = x
    image = conv3x3(x, 3, "to_rgb", activation="tanh", dtype="float32")  # float32 images under mixed precision
    return keras.Model(inputs if num_classes else inputs[0], image, name="generator")


def _skip_layer_excitation(small, large, channels: int, name: str):
    """FastGAN's skip-layer excitation: a channel gate computed from a small map multiplies a large map."""
    from keras import layers

    gate = small
    if gate.shape[1] != 4:
        gate = layers.AveragePooling2D(gate.shape[1] // 4, name=f"{name}_pool")(gate)
    gate = layers.Conv2D(channels, 4, padding="valid", name=f"{name}_conv4")(gate)
    gate = layers.LeakyReLU(0.1)(gate)
    gate = layers.Conv2D(channels, 1, activation="sigmoid", name=f"{name}_conv1")(gate)
    return layers.Multiply(name=f"{name}_gate")([large, gate])


def _patch_head(x, widths, name: str):
    """A small spectrally normalised head: stride-2 4x4 convolutions, then a 1x1 convolution to patch logits;
    returns (flattened logits, the last feature map).

    The hinge loss averages over every patch logit of every head, so heads on large maps (pixels, block1)
    weigh more than the block3 head. One mean logit per head (equal weights, as Projected GAN's one logit per
    scale) was measured too and was worse on the kit's landscapes: fixed-space KID 1.19 and 1.27 after epochs
    1 and 2 against 0.48 and 0.61 with patch logits."""
    from keras import layers

    for index, width in enumerate(widths, start=1):
        stride = 2 if x.shape[1] >= 4 else 1
        conv = layers.Conv2D(width, 4, strides=stride, padding="same", name=f"{name}_conv{index}")
        x = layers.SpectralNormalization(conv, name=f"{name}_conv{index}_sn")(x)
        x = layers.LeakyReLU(0.2)(x)
    logits = layers.SpectralNormalization(layers.Conv2D(1, 1, name=f"{name}_logit"), name=f"{name}_logit_sn")(x)
    return layers.Flatten(name=f"{name}_flat")(logits), x


def make_projected_discriminator(image_size: int, num_classes: int = 0, base_channels: int = 16,
                                 feature_size: int | None = None, global_weight: float = 0.0,
                                 downsample: str = "average", mixing: str = "none", mixing_seed: int = 0,
                                 global_input: str = "pixels", global_size: int = GLOBAL_HEAD_SIZE,
                                 head_balance: str = "patches", global_minibatch_std: int = 0,
                                 global_gain: float = 1.0, feature_diffusion: float = 0.0, diffusion_seed: int = 0):
    """Build the Projected-GAN-style discriminator: image in [-1, 1] -> (batch, patch logits of all heads).

    The frozen HED-VGG16 trunk (block1_conv1 .. block3_conv2) sees the image shrunk to `feature_size`
    (default `projected_feature_size`) with the Caffe preprocessing; trainable heads read three of its maps,
    one more reads the full-size pixels. `downsample` is how the image is shrunk for the trunk and the
    whole-picture head (DOWNSAMPLINGS): "average" pooling, or "blur" (BlurPool2D), whose gradient back to the
    generator is smooth where average pooling's is blocky. A conditional discriminator adds a projection
    term (label embedding . pooled head features) to each head's logits.

    `global_weight` > 0 adds a whole-picture head (`_global_head`): one logit for the entire image, seen at
    `global_size` px (GLOBAL_HEAD_SIZES; GLOBAL_HEAD_SIZE by default), which carries that share of the loss (its
    logit is repeated so that the hinge loss's mean over all logits gives it this weight). Patch logits cannot
    tell where in the picture a patch is, so without it nothing asks for sky above and ground below.
    `global_input` (GLOBAL_HEAD_INPUTS) is what that head reads: "pixels", or "features", the trunk's deepest map
    (block3_conv2, 16x16 at 128 px), so that its layout is judged on pretrained features (what is where) rather
    than on 32-px colours.

    `mixing` (FEATURE_MIXINGS) puts fixed random projections between the trunk and the heads (`_mix_features`,
    drawn from `mixing_seed`); "none" reads the trunk's maps directly.

    `head_balance` (HEAD_BALANCES) is how the patch heads share the patch logits' part of the loss: "patches"
    (each logit alike, so the heads on large maps dominate) or "heads" (each head alike: a head with fewer logits
    has them repeated up to the largest head's count, which must be a multiple of its own).

    `global_minibatch_std` > 1 gives the whole-picture head a minibatch standard deviation channel over groups of
    that many images (`MinibatchStdDev`) before its dense logit, so that it sees how alike the pictures of a batch
    are; 0: none. `global_gain` multiplies that head's logit (a fixed `Rescaling`; 1: none), so that its hinge loss
    and the generator's gradient from it see a larger logit than its spectrally normalised layers give.

    `feature_diffusion` > 0 diffuses each scaled trunk map before the heads (`FeatureDiffusion`, Diffusion-GAN's
    Projected-GAN form) with that noise standard deviation (the maps are of order one; the paper's 0.5), by a
    strength the `Gan` sets before each step; 0: no such layer."""
    import keras
    from keras import layers

    image_size = check_size(image_size)
    if downsample not in DOWNSAMPLINGS:
        raise ValueError(f"discriminator downsampling {downsample!r} is not one of {DOWNSAMPLINGS}")
    if mixing not in FEATURE_MIXINGS:
        raise ValueError(f"feature mixing {mixing!r} is not one of {FEATURE_MIXINGS}")
    if global_input not in GLOBAL_HEAD_INPUTS:
        raise ValueError(f"whole-picture head input {global_input!r} is not one of {GLOBAL_HEAD_INPUTS}")
    if head_balance not in HEAD_BALANCES:
        raise ValueError(f"head balance {head_balance!r} is not one of {HEAD_BALANCES}")
    feature_size = int(feature_size or projected_feature_size(image_size))
    if max(image_size, feature_size) % min(image_size, feature_size):
        raise ValueError(f"feature size {feature_size} and image size {image_size} must divide one another")
    image = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = image
    if feature_size < image_size:
        x = _downsample(x, image_size // feature_size, downsample, name="to_feature_size")
    elif feature_size > image_size:
        x = layers.UpSampling2D(feature_size // image_size, interpolation="bilinear", name="to_feature_size")(x)
    x = layers.Rescaling(127.5, offset=127.5, name="to_0_255")(x)
    x = layer_classes()["CaffePreprocess"](name="caffe_preprocess")(x)
    vgg = backbones.hed_vgg16((feature_size, feature_size, 3))
    trunk = keras.Model(vgg.input, [vgg.get_layer(name).output for name, _ in PROJECTED_LAYERS], name="trunk")
    trunk.trainable = False
    maps = [layers.Rescaling(1.0 / scale, name=f"{layer_name}_scale")(feature_map)
            for (layer_name, scale), feature_map in zip(PROJECTED_LAYERS, trunk(x, training=False))]
    if feature_diffusion:
        if not 0.0 < float(feature_diffusion) <= 4.0:
            raise ValueError(f"feature diffusion's noise standard deviation must be in 0..4, got {feature_diffusion}")
        maps = [layer_classes()["FeatureDiffusion"](float(feature_diffusion), seed=int(diffusion_seed) * 8 + index,
                                                    name=f"{layer_name}_diffusion")(feature_map)
                for index, ((layer_name, _), feature_map) in enumerate(zip(PROJECTED_LAYERS, maps))]
    if mixing != "none":
        maps = _mix_features(maps, scales=mixing == "channels_scales", seed=mixing_seed)
    width = int(base_channels)
    heads = []
    for (layer_name, _), feature_map in zip(PROJECTED_LAYERS, maps):
        depth = 2 if feature_map.shape[1] >= 8 else 1
        heads.append(_patch_head(feature_map, [width * 4 * 2 ** i for i in range(depth)], name=f"head_{layer_name}"))
    pixel_widths = [width, width * 2, width * 4][: max(1, min(3, int(math.log2(image_size)) - 3))]
    heads.append(_patch_head(image, pixel_widths, name="head_pixels"))
    counts = [int(logit.shape[-1]) for logit, _ in heads]
    repeats = [1] * len(heads)
    if head_balance == "heads":
        if any(max(counts) % count for count in counts):
            raise ValueError(f"the patch heads' logit counts {counts} do not divide the largest one")
        repeats = [max(counts) // count for count in counts]
    patch_logits = sum(count * repeat for count, repeat in zip(counts, repeats))
    if global_weight:
        if not 0.0 < global_weight < 1.0:
            raise ValueError(f"global_weight must be in 0..1 (exclusive), got {global_weight}")
        if global_size not in GLOBAL_HEAD_SIZES:
            raise ValueError(f"whole-picture head size {global_size} is not one of {GLOBAL_HEAD_SIZES}")
        heads.append(_global_head(image if global_input == "pixels" else maps[-1], width, name="head_global",
                                  downsample=downsample, size=global_size, minibatch_std=global_minibatch_std,
                                  gain=global_gain))
        repeats.append(max(1, round(global_weight / (1.0 - global_weight) * patch_logits)))
    inputs = image
    if num_classes:
        label = keras.Input(shape=(), dtype="int32", name="label")
        inputs = [image, label]
        heads = [(_plus_projection(logit, feature_map, label, num_classes, index), feature_map)
                 for index, (logit, feature_map) in enumerate(heads)]
    logits = [logit if count == 1 else _repeat(logit, count, name=f"head{index}_x{count}")
              for index, ((logit, _), count) in enumerate(zip(heads, repeats))]
    return keras.Model(inputs, layers.Concatenate(name="logits", dtype="float32")(logits), name="discriminator")


def _mix_features(maps, scales: bool, seed: int):
    """Projected GAN's fixed random projections (Sauer et al., NeurIPS 2021): each trunk map goes through a
    random 1x1 convolution that keeps its channel count (cross-channel mixing, CCM), so that no head can lean
    on a few of the trunk's channels; with `scales`, each map also gets the mixed map below it, upsampled
    (bilinear) and projected to its channels by another random 1x1 convolution (cross-scale mixing, CSM, a
    top-down pass as in a U-Net), so the shallow heads see deeper features too. The weights are drawn once
    from `seed` (normal, variance 1 / fan-in, so the maps stay of order one) and are never trained; they are
    saved with the discriminator's weights."""
    from keras import initializers, layers

    def project(x, channels: int, name: str, index: int):
        conv = layers.Conv2D(channels, 1, use_bias=False, trainable=False, name=name,
                             kernel_initializer=initializers.VarianceScaling(1.0, "fan_in", "normal",
                                                                            seed=int(seed) * 16 + index))
        return conv(x)

    names = [layer_name for layer_name, _ in PROJECTED_LAYERS]
    mixed = [project(x, int(x.shape[-1]), f"{name}_channel_mix", index)
             for index, (name, x) in enumerate(zip(names, maps))]
    if scales:
        for index in range(len(mixed) - 2, -1, -1):
            deeper = mixed[index + 1]
            factor = int(mixed[index].shape[1]) // int(deeper.shape[1])
            up = layers.UpSampling2D(factor, interpolation="bilinear", name=f"{names[index]}_from_below")(deeper)
            up = project(up, int(mixed[index].shape[-1]), f"{names[index]}_scale_mix", 8 + index)
            added = layers.Add(name=f"{names[index]}_plus_below")([mixed[index], up])
            mixed[index] = layers.Rescaling(math.sqrt(0.5), name=f"{names[index]}_mixed")(added)
    return mixed


def _downsample(x, factor: int, method: str, name: str):
    """Shrink a map by `factor` (a power of 2): "average" pooling, or "blur" (BlurPool2D, whose gradient is
    smooth where average pooling's is blocky)."""
    from keras import layers

    if method == "average":
        return layers.AveragePooling2D(factor, name=name)(x)
    return layer_classes()["BlurPool2D"](int(math.log2(factor)), name=name)(x)


def _plus_projection(logit, feature_map, label, num_classes: int, index: int):
    """A projection discriminator's term (Miyato & Koyama 2018): logits + embedding(label) . pooled features."""
    from keras import layers

    pooled = layers.GlobalAveragePooling2D(name=f"head{index}_pool")(feature_map)
    embedded = layers.Embedding(num_classes, feature_map.shape[-1], name=f"head{index}_label_projection")(label)
    projection = layers.Dot(axes=1, name=f"head{index}_projection")([embedded, pooled])
    return layers.Add(name=f"head{index}_logits_plus_projection")([logit, projection])


def generator_layout_variables(generator, size: int = LAYOUT_SIZE) -> list:
    """The generator's trainable variables that its `size`-px map depends on: the latent projection and the
    blocks up to that size, which place what is where (a 16-px map of a 128-px picture is a grid of 8-px cells);
    the larger stages, and the skip-layer excitations that read the small maps to gate them, draw the detail.
    Needs a FastGAN-style generator larger than `size` (the input of its `up{2 * size}` upsampling is the map)."""
    import keras

    try:
        upsampling = generator.get_layer(f"up{2 * int(size)}")
    except ValueError:
        raise ValueError(f"the generator has no {2 * int(size)}-px stage, so it has no {size}-px layout stages "
                         f"(needs the projected architecture's generator and images larger than {size} px)") from None
    if not isinstance(upsampling, keras.layers.UpSampling2D):
        raise ValueError(f"the generator's layer up{2 * int(size)} is not an upsampling (dcgan generator?); "
                         "layout stages need the projected architecture's generator")
    layout = keras.Model(generator.inputs, upsampling.input, name=f"layout_{size}px")
    return list(layout.trainable_variables)


def global_head_columns(discriminator) -> int:
    """How many of a projected discriminator's output columns, the last ones, are its whole-picture head's
    (repeated) logit; 0 when it has no such head."""
    names = {layer.name for layer in discriminator.layers}
    if "head_global_dense_sn" not in names or "logits" not in names:
        return 0
    return int(discriminator.get_layer("logits").input[-1].shape[-1])


def weighted_logit_mean(values, weights):
    """The mean of (batch, logits) `values` over the batch, then weighted over the logits by `weights`
    (one per logit): with all weights 1, the plain mean."""
    import tensorflow as tf

    values = tf.cast(values, "float32")
    return tf.reduce_sum(tf.reduce_mean(values, axis=0) * weights) / tf.reduce_sum(weights)


def _repeat(logit, count: int, name: str):
    """(batch, n) -> (batch, n * count): each logit weighted as `count` logits in a mean over logits (n = 1: the
    whole-picture head's one logit)."""
    from keras import layers

    return layers.Flatten(name=name)(layers.RepeatVector(count, name=f"{name}_repeat")(logit))


def _global_head(image, width: int, name: str, downsample: str = "average", size: int = GLOBAL_HEAD_SIZE,
                 minibatch_std: int = 0, gain: float = 1.0):
    """A whole-picture head: the image (or a feature map) shrunk to `size` px (`_downsample`) when
    larger, stride-2 spectrally normalised convolutions down to 4x4, then a dense layer over the whole flattened
    map, so that the one logit depends on where things are (sky above, ground below), which no patch logit can
    see. With `minibatch_std` > 1 the dense layer also reads a minibatch standard deviation channel over groups of
    that many images. Returns (logit, last map), the map before that channel."""
    from keras import layers

    x, input_size = image, int(image.shape[1])
    if input_size > size:
        x = _downsample(x, input_size // size, downsample, name=f"{name}_downscale")
    index = 0
    while x.shape[1] > 4:
        index += 1
        conv = layers.Conv2D(width * 2 ** index, 4, strides=2, padding="same", name=f"{name}_conv{index}")
        x = layers.SpectralNormalization(conv, name=f"{name}_conv{index}_sn")(x)
        x = layers.LeakyReLU(0.2)(x)
    last = x
    if minibatch_std:
        x = layer_classes()["MinibatchStdDev"](group_size=minibatch_std, name=f"{name}_mbstd")(x)
    flat = layers.Flatten(name=f"{name}_flatten")(x)
    logit = layers.SpectralNormalization(layers.Dense(1, name=f"{name}_dense"), name=f"{name}_dense_sn")(flat)
    if float(gain) != 1.0:
        logit = layers.Rescaling(float(gain), name=f"{name}_gain")(logit)
    return logit, last


def global_head_encoder(discriminator):
    """The discriminator's own path from the image to its whole-picture head's last map (before the dense logit and
    any minibatch standard deviation channel, so one picture's map does not depend on the others of its batch), as a
    model that shares its layers. Raises ValueError when the discriminator has no whole-picture head."""
    import keras

    try:
        flatten = discriminator.get_layer("head_global_flatten")
    except ValueError:
        raise ValueError("this discriminator has no whole-picture head (global_head > 0, projected "
                         "architecture)") from None
    names = {layer.name for layer in discriminator.layers}
    last = discriminator.get_layer("head_global_mbstd").input if "head_global_mbstd" in names else flatten.input
    return keras.Model(discriminator.inputs[0], last, name="global_head_encoder")


def reconstruction_decoder_for(discriminator, width: int = 16, head_size: int = GLOBAL_HEAD_SIZE):
    """The reconstruction decoder that fits this discriminator's whole-picture head: from the head's last map to
    the picture at the size the head sees it (the image size, at most `head_size`, the head's `global_size`)."""
    size = min(int(discriminator.inputs[0].shape[1]), int(head_size))
    return make_reconstruction_decoder(global_head_encoder(discriminator).output.shape[1:], size, width)


def make_reconstruction_decoder(map_shape, size: int, width: int = 16, name: str = "reconstruction"):
    """The decoder of FastGAN's self-supervised discriminator, on the whole-picture head: the head's last map
    (`map_shape`, 4x4 by default) -> the image at `size` px in [-1, 1], by nearest upsampling + 3x3 convolutions
    that halve the channels (at least `width`) at each doubling. Trained with D (`Gan._reconstruction_loss`)."""
    import keras
    from keras import layers

    height, _, channels = (int(value) for value in map_shape)
    if size % height or size < height or (size // height) & (size // height - 1):
        raise ValueError(f"the decoder doubles a {height}-px map; it cannot reach {size} px")
    features = keras.Input(shape=(height, height, channels), name=f"{name}_features")
    x, index = features, 0
    while height < size:
        index, height, channels = index + 1, height * 2, max(int(width), channels // 2)
        x = layers.UpSampling2D(2, name=f"{name}_up{index}")(x)
        x = layers.Conv2D(channels, 3, padding="same", name=f"{name}_conv{index}")(x)
        x = layers.LeakyReLU(0.2, name=f"{name}_act{index}")(x)
    x = layers.Conv2D(3, 3, padding="same", name=f"{name}_rgb")(x)
    image = layers.Activation("tanh", dtype="float32", name=f"{name}_image")(x)
    return keras.Model(features, image, name=name)


def channel_widths(image_size: int, base_channels: int = 32, max_channels: int = 512) -> list[int]:
    """Channel widths of the generator stages from 4x4 up to image_size/2 (64 px, base 32: 256,128,64,32)."""
    stages = int(math.log2(check_size(image_size))) - 2
    return [min(max_channels, base_channels * 2 ** (stages - 1 - i)) for i in range(stages)]


def make_generator(image_size: int, latent_dim: int = 128, num_classes: int = 0, base_channels: int = 32):
    """Build the DCGAN generator: z (and a genre label when num_classes > 0) -> tanh image in [-1, 1]."""
    import keras
    from keras import layers

    widths = channel_widths(image_size, base_channels)
    inputs, x = _projected_latent(latent_dim, num_classes, widths[0])
    x = layers.ReLU()(x)
    for index, width in enumerate(widths[1:], start=1):
        x = layers.Conv2DTranspose(width, 4, strides=2, padding="same", use_bias=False, name=f"up{index}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"up{index}_bn")(x)
        x = layers.ReLU()(x)
    image = layers.Conv2DTranspose(3, 4, strides=2, padding="same", activation="tanh", name="to_rgb")(x)
    return keras.Model(inputs if num_classes else inputs[0], image, name="generator")


def make_discriminator(image_size: int, num_classes: int = 0, base_channels: int = 32):
    """Build the spectrally normalised DCGAN discriminator (a projection discriminator when conditional)."""
    import keras
    from keras import layers

    widths = list(reversed(channel_widths(image_size, base_channels)))
    image = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = image
    for index, width in enumerate(widths, start=1):
        conv = layers.Conv2D(width, 4, strides=2, padding="same", name=f"down{index}")
        x = layers.SpectralNormalization(conv, name=f"down{index}_sn")(x)
        x = layers.LeakyReLU(0.2)(x)
    features = layers.GlobalAveragePooling2D(name="pool")(x)
    logit = layers.SpectralNormalization(layers.Dense(1, name="logit"), name="logit_sn")(features)
    if not num_classes:
        return keras.Model(image, logit, name="discriminator")
    label = keras.Input(shape=(), dtype="int32", name="label")
    embedded = layers.Embedding(num_classes, widths[-1], name="label_projection")(label)
    projection = layers.Dot(axes=1, name="projection")([embedded, features])
    logit = layers.Add(name="logit_plus_projection")([logit, projection])
    return keras.Model([image, label], logit, name="discriminator")


def diff_augment(images, seed_generator, probability=1.0, policy=AUGMENT_POLICIES):
    """DiffAugment on a batch in [-1, 1]: each image is augmented with `probability`; differentiable."""
    import tensorflow as tf
    from keras import random

    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    augmented = images
    if "geometric" in policy:
        augmented = _rotate_and_scale(augmented, seed_generator)
    if "color" in policy:
        brightness = random.uniform((batch, 1, 1, 1), -0.5, 0.5, seed=seed_generator)
        augmented = augmented + brightness
        mean = tf.reduce_mean(augmented, axis=3, keepdims=True)
        saturation = random.uniform((batch, 1, 1, 1), 0.0, 2.0, seed=seed_generator)
        augmented = (augmented - mean) * saturation + mean
        mean = tf.reduce_mean(augmented, axis=[1, 2, 3], keepdims=True)
        contrast = random.uniform((batch, 1, 1, 1), 0.5, 1.5, seed=seed_generator)
        augmented = (augmented - mean) * contrast + mean
    if "translation" in policy:
        # Shift by up to 1/8 of the size with zero padding: pad, then gather shifted rows and columns.
        pad_y, pad_x = height // 8, width // 8
        padded = tf.pad(augmented, [[0, 0], [pad_y, pad_y], [pad_x, pad_x], [0, 0]])
        shift_y = tf.cast(random.randint((batch, 1), 0, 2 * pad_y + 1, seed=seed_generator), tf.int32)
        shift_x = tf.cast(random.randint((batch, 1), 0, 2 * pad_x + 1, seed=seed_generator), tf.int32)
        rows = shift_y + tf.range(height)[None, :]
        columns = shift_x + tf.range(width)[None, :]
        augmented = tf.gather(padded, rows, axis=1, batch_dims=1)
        augmented = tf.gather(augmented, columns, axis=2, batch_dims=1)
    if "cutout" in policy:
        # Zero one square of half the size per image, centred anywhere in the image.
        centre_y = random.uniform((batch, 1, 1), 0.0, float(height), seed=seed_generator)
        centre_x = random.uniform((batch, 1, 1), 0.0, float(width), seed=seed_generator)
        grid_y = tf.cast(tf.range(height), images.dtype)[None, :, None] + 0.5
        grid_x = tf.cast(tf.range(width), images.dtype)[None, None, :] + 0.5
        inside = tf.logical_and(
            tf.abs(grid_y - centre_y) < height / 4, tf.abs(grid_x - centre_x) < width / 4
        )
        augmented = augmented * (1.0 - tf.cast(inside, images.dtype))[..., None]
    if isinstance(probability, (int, float)) and probability >= 1.0:
        return augmented
    chosen = random.uniform((batch, 1, 1, 1), seed=seed_generator) < probability
    return tf.where(chosen, augmented, images)


def _rotate_and_scale(images, seed_generator):
    """Rotate each image about its centre by an angle uniform in +-GEOMETRIC_MAX_DEGREES and scale it by a
    factor log-uniform in 1/GEOMETRIC_MAX_SCALE..GEOMETRIC_MAX_SCALE (bilinear, mirrored borders);
    differentiable with respect to the images.

    One `keras.ops.image.affine_transform` per batch rather than keras.layers.RandomRotation followed by
    RandomZoom: one bilinear resampling instead of two (each one blurs), and the angles come from the model's
    own SeedGenerator, whose state a checkpoint keeps, so a resumed run draws what it would have drawn."""
    import tensorflow as tf
    from keras import ops, random

    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    limit = math.radians(GEOMETRIC_MAX_DEGREES)
    angle = random.uniform((batch,), -limit, limit, seed=seed_generator)
    log_scale = random.uniform((batch,), -math.log(GEOMETRIC_MAX_SCALE), math.log(GEOMETRIC_MAX_SCALE),
                               seed=seed_generator)
    # affine_transform maps each output pixel (x, y) to the input point (a0 x + a1 y + a2, b0 x + b1 y + b2).
    shrink = tf.exp(-log_scale)
    a0, a1 = tf.cos(angle) * shrink, -tf.sin(angle) * shrink
    b0, b1 = tf.sin(angle) * shrink, tf.cos(angle) * shrink
    centre_x, centre_y = (width - 1) / 2.0, (height - 1) / 2.0
    a2 = centre_x - a0 * centre_x - a1 * centre_y
    b2 = centre_y - b0 * centre_x - b1 * centre_y
    zeros = tf.zeros_like(angle)
    transform = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    return ops.image.affine_transform(images, tf.cast(transform, images.dtype), interpolation="bilinear",
                                      fill_mode="reflect")


def _debiased_moving_average(average, count, value, decay: float):
    """One step of an exponential moving average that starts at 0: returns (the new average, the new step count,
    the average zero-debiased by the count, as Adam's moments are). Tensors in, tensors out; the caller stores the
    first two."""
    count = count + 1.0
    average = decay * average + (1.0 - decay) * value
    return average, count, average / (1.0 - decay ** count)


def thumbnails(images, size: int = LAYOUT_MMD_SIZE):
    """(N, S, S, 3) images -> (N, size * size * 3) float32 rows: each image averaged down to size x size."""
    import tensorflow as tf

    images = tf.cast(images, "float32")
    factor = int(images.shape[1]) // size
    pooled = tf.nn.avg_pool2d(images, factor, factor, "VALID") if factor > 1 else images
    return tf.reshape(pooled, (tf.shape(images)[0], -1))


def mmd_squared(x, y, scales=LAYOUT_MMD_SCALES):
    """Unbiased MMD² between the rows of x and of y (at least 2 each) with the kernel sum over `scales` of
    exp(-mean squared difference per value / scale)."""
    import tensorflow as tf

    x, y = tf.cast(x, "float32"), tf.cast(y, "float32")
    width = tf.cast(tf.shape(x)[1], "float32")

    def kernel(a, b):
        distance = (tf.reduce_sum(a * a, 1)[:, None] + tf.reduce_sum(b * b, 1)[None, :]
                    - 2.0 * tf.matmul(a, b, transpose_b=True)) / width
        distance = tf.maximum(distance, 0.0)
        return tf.add_n([tf.exp(-distance / scale) for scale in scales])

    def within(a):
        n = tf.cast(tf.shape(a)[0], "float32")
        values = kernel(a, a)
        return (tf.reduce_sum(values) - tf.linalg.trace(values)) / (n * (n - 1.0))

    return within(x) + within(y) - 2.0 * tf.reduce_mean(kernel(x, y))


def slerp(start, end, fractions):
    """Spherical interpolation between two latent vectors at the given fractions -> (len(fractions), dim)."""
    import numpy as np

    start, end = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
    fractions = np.asarray(fractions, dtype=np.float64)[:, None]
    cosine = np.dot(start, end) / (np.linalg.norm(start) * np.linalg.norm(end))
    angle = np.arccos(np.clip(cosine, -1.0, 1.0))
    if angle < 1e-6:
        return (1.0 - fractions) * start + fractions * end
    return (np.sin((1.0 - fractions) * angle) * start + np.sin(fractions * angle) * end) / np.sin(angle)


def hardware_has_bfloat16() -> bool:
    """True when TensorFlow sees a GPU or the CPU has native bfloat16 instructions (AVX512-BF16 or AMX)."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, architecture: str = "projected") -> str:
    """The Keras dtype policy a GAN is built with. Mixed bfloat16 (float32 weights, bfloat16 arithmetic) is
    for the projected architecture only; "auto" picks it where the hardware computes bfloat16 natively."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    if architecture != "projected":
        return "float32"
    if precision == "auto":
        return "mixed_bfloat16" if hardware_has_bfloat16() else "float32"
    return precision


def make_gan(config):
    """Build a compiled `Gan` for a GanConfig-like object (architecture, image_size, latent_dim, ...)."""
    import keras

    num_classes = config.num_classes if config.conditional else 0
    architecture = getattr(config, "architecture", "dcgan")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown GAN architecture {architecture!r}; choose one of {ARCHITECTURES}")
    if architecture == "projected":
        with backbones.keras_dtype_policy(resolve_precision(getattr(config, "precision", "float32"))):
            generator = make_fastgan_generator(config.image_size, config.latent_dim, num_classes,
                                               config.base_channels, getattr(config, "generator_padding", "zeros"),
                                               bool(getattr(config, "conditional_norm", False)),
                                               int(getattr(config, "generator_convs", 1)),
                                               float(getattr(config, "generator_noise", 0.0)),
                                               int(getattr(config, "seed", 0)),
                                               int(getattr(config, "generator_noise_from", 8)),
                                               float(getattr(config, "generator_noise_gain", 1.0)),
                                               int(getattr(config, "generator_top_channels", 0)),
                                               getattr(config, "generator_top_upsample", "nearest"))
            head_size = int(getattr(config, "global_head_size", GLOBAL_HEAD_SIZE))
            discriminator = make_projected_discriminator(
                config.image_size, num_classes, config.base_channels,
                global_weight=float(getattr(config, "global_head", 0.0)),
                downsample=getattr(config, "discriminator_downsample", "average"),
                mixing=getattr(config, "feature_mixing", "none"), mixing_seed=int(getattr(config, "seed", 0)),
                global_input=getattr(config, "global_head_input", "pixels"),
                global_size=head_size, head_balance=getattr(config, "head_balance", "patches"),
                global_minibatch_std=int(getattr(config, "global_head_minibatch_std", 0)),
                global_gain=float(getattr(config, "global_head_gain", 1.0)),
                feature_diffusion=float(getattr(config, "feature_diffusion", 0.0)),
                diffusion_seed=int(getattr(config, "seed", 0)))
            reconstruction_decoder = None
            if float(getattr(config, "discriminator_reconstruction", 0.0)):
                reconstruction_decoder = reconstruction_decoder_for(discriminator, config.base_channels, head_size)
    else:
        reconstruction_decoder = None
        generator = make_generator(config.image_size, config.latent_dim, num_classes, config.base_channels)
        discriminator = make_discriminator(config.image_size, num_classes, config.base_channels)
    loss = getattr(config, "loss", "") or ("hinge" if architecture == "projected" else "non_saturating")
    gan = Gan(
        generator=generator,
        discriminator=discriminator,
        latent_dim=config.latent_dim,
        num_classes=num_classes,
        loss=loss,
        mode_seeking=float(getattr(config, "mode_seeking", 0.0)),
        lecam=float(getattr(config, "lecam", 0.0)),
        r1=float(getattr(config, "r1", 0.0)),
        spectrum_penalty=float(getattr(config, "spectrum_penalty", 0.0)),
        spectrum_penalty_kind=getattr(config, "spectrum_penalty_kind", "level"),
        spectrum_penalty_period=int(getattr(config, "spectrum_penalty_period", SPECTRUM_PENALTY_PERIOD)),
        ema_decay=config.ema_decay,
        augment_probability=config.augment_probability,
        augment_policy=tuple(getattr(config, "augment_policy", AUGMENT_POLICIES)),
        adaptive_augment=config.adaptive_augment,
        augment_target=config.augment_target,
        augment_speed=config.augment_speed,
        pseudo_augment=bool(getattr(config, "pseudo_augment", False)),
        global_head_schedule=bool(getattr(config, "global_head_end", 0.0)),
        reconstruction=float(getattr(config, "discriminator_reconstruction", 0.0)),
        reconstruction_decoder=reconstruction_decoder,
        layout_freeze=bool(getattr(config, "layout_freeze", 0.0)),
        layout_mmd=float(getattr(config, "layout_mmd", 0.0)),
        lookahead=int(getattr(config, "lookahead", 0)),
        lookahead_alpha=float(getattr(config, "lookahead_alpha", 0.5)),
        shared_fakes=getattr(config, "generator_fakes", "fresh") == "shared",
        top_k=bool(getattr(config, "top_k", 0.0)),
        seed=config.seed,
    )
    gan.compile(
        generator_optimizer=keras.optimizers.Adam(config.learning_rate, beta_1=config.beta_1),
        discriminator_optimizer=keras.optimizers.Adam(
            config.learning_rate * float(getattr(config, "discriminator_lr_scale", 1.0)), beta_1=config.beta_1),
    )
    return gan


def _gan_class():
    """Define the Gan model class on first use, so that importing this module does not import Keras."""
    import keras
    import numpy as np
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="genre_core")
    class Gan(keras.Model):
        """DCGAN with DiffAugment, spectral norm, EMA generator and an optional genre label."""

        def __init__(self, generator, discriminator, latent_dim, num_classes=0, ema_decay=0.999,
                     augment_probability=1.0, adaptive_augment=False, augment_target=0.6,
                     augment_speed=0.001, seed=0, loss="non_saturating", mode_seeking=0.0,
                     augment_policy=AUGMENT_POLICIES, lecam=0.0, r1=0.0, spectrum_penalty=0.0,
                     spectrum_penalty_kind="level", spectrum_penalty_period=SPECTRUM_PENALTY_PERIOD,
                     pseudo_augment=False, global_head_schedule=False, reconstruction=0.0,
                     reconstruction_decoder=None, layout_freeze=False, layout_mmd=0.0, lookahead=0,
                     lookahead_alpha=0.5, shared_fakes=False, top_k=False, **kwargs):
            super().__init__(**kwargs)
            if loss not in LOSSES:
                raise ValueError(f"unknown GAN loss {loss!r}; choose one of {LOSSES}")
            self.augment_policy = check_augment_policy(augment_policy)
            self.loss = loss
            self.mode_seeking = float(mode_seeking)
            self.lecam = float(lecam)
            self.r1 = float(r1)
            self.spectrum_penalty = float(spectrum_penalty)
            if spectrum_penalty_kind not in SPECTRUM_PENALTY_KINDS:
                raise ValueError(f"spectrum penalty kind {spectrum_penalty_kind!r} is not one of {SPECTRUM_PENALTY_KINDS}")
            self.spectrum_penalty_kind = spectrum_penalty_kind
            low, high = SPECTRUM_PENALTY_PERIODS
            if not low <= int(spectrum_penalty_period) <= high:
                raise ValueError(f"spectrum penalty period must be in {low}..{high} px, got {spectrum_penalty_period}")
            self.spectrum_penalty_period = int(spectrum_penalty_period)
            self.generator = generator
            self.discriminator = discriminator
            self.ema_generator = keras.models.clone_model(generator)
            self.ema_generator.set_weights(generator.get_weights())
            self.latent_dim = latent_dim
            self.num_classes = num_classes
            self.ema_decay = ema_decay
            self.adaptive_augment = adaptive_augment
            self.augment_target = augment_target
            self.augment_speed = augment_speed
            self.seed_generator = keras.random.SeedGenerator(seed)
            self.augment_probability = keras.Variable(
                float(augment_probability), trainable=False, name="augment_probability"
            )
            # Adaptive pseudo augmentation (APA; Jiang et al., NeurIPS 2021): the probability that a real image
            # in D's batch is replaced by a generated one, still labelled real. Moved by the same rule as the
            # adaptive augmentation probability; training state only when on, so other checkpoints keep their
            # variable count.
            self.pseudo_augment = bool(pseudo_augment)
            self.pseudo_probability = keras.Variable(0.0, trainable=False, name="pseudo_probability")
            # Multiplies the EMA's per-step share; the trainer sets it each epoch (GanConfig.ema_rate_scale). It
            # is not training state (not in state_variables), so older checkpoints still load.
            self.ema_rate_scale = keras.Variable(1.0, trainable=False, name="ema_rate_scale")
            # Multiplies the adaptive augmentation's (and APA's) per-step move; the trainer sets it before every
            # step (GanConfig.augment_rate_scale: 0 holds both probabilities). Not training state either.
            self.augment_rate_scale = keras.Variable(1.0, trainable=False, name="augment_rate_scale")
            # LeCam: moving averages of D's mean logit on real and on generated images (decay LECAM_DECAY,
            # zero-debiased by the step count). Training state only when the term is on, so checkpoints of
            # runs without it keep their variable count.
            self.lecam_averages = keras.Variable([0.0, 0.0, 0.0], trainable=False, name="lecam_averages")
            # The spectrum penalty's target: log of the training images' mean block power (`_block_power`), set
            # by `set_spectrum_target` before training. Not training state: the trainer sets it again from the
            # training images on resume, so checkpoints keep their variable count.
            size = int(generator.output.shape[1])
            blocks = size // self._spectrum_block()  # sizes start at 16 (SUPPORTED_SIZES)
            self.spectrum_target = keras.Variable(tf.zeros((blocks, blocks, 3)), trainable=False,
                                                  name="spectrum_target")
            self.spectrum_target_set = False
            # The "bins" kind's running mean of the generated batches' power spectrum and its step count (for the
            # zero-debiasing); training state only with that kind, so other checkpoints keep their variable count.
            self.spectrum_running = keras.Variable(tf.zeros((size, size, 3)), trainable=False, name="spectrum_running")
            self.spectrum_steps = keras.Variable(0.0, trainable=False, name="spectrum_steps")
            # With a scheduled whole-picture head share (GanConfig.global_head_end), the hinge losses weight the
            # head's columns by this against 1 for each patch logit (`set_global_head_share`); the trainer sets it
            # before every step. Not training state: it follows from the schedule, so checkpoints keep their
            # variable count. Off, the losses are the plain means they always were.
            self.global_columns = global_head_columns(discriminator)
            if global_head_schedule and loss != "hinge":
                raise ValueError(f"a whole-picture head schedule weights the hinge loss, not {loss!r}")
            if global_head_schedule and not self.global_columns:
                raise ValueError("a whole-picture head schedule needs a discriminator with a whole-picture head "
                                 "(global_head > 0, projected architecture)")
            self.global_head_schedule = bool(global_head_schedule)
            self.global_head_weight = keras.Variable(1.0, trainable=False, name="global_head_weight")
            # Top-k training (Sinha et al., NeurIPS 2020; `_top_k_rows`): the generator's adversarial loss takes only
            # the share `top_k_share` of its batch that D scores as most real. The trainer sets the share before
            # every step (GanConfig.top_k_share_at); not training state, so checkpoints keep their variable count.
            self.top_k = bool(top_k)
            self.top_k_share = keras.Variable(1.0, trainable=False, name="top_k_share")
            # Diffusion-GAN's feature diffusion (`FeatureDiffusion` layers in a projected discriminator built with
            # feature_diffusion > 0): their strength is the adaptive augmentation probability, copied in before
            # every step, as the paper's chain length follows the same sign of D's overfitting as ADA's p.
            self.diffusion_layers = [layer for layer in discriminator.layers
                                     if isinstance(layer, layer_classes()["FeatureDiffusion"])]
            # FastGAN's self-supervised discriminator on the whole-picture head (`_reconstruction_loss`): the
            # encoder is D's own path to the head's last map; the decoder's weights are D's, trained by its
            # optimizer, and training state only when the term is on (other checkpoints keep their variable count).
            self.reconstruction = float(reconstruction)
            if self.reconstruction < 0:
                raise ValueError(f"the reconstruction weight must be at least 0, got {reconstruction} (GanConfig "
                                 "resolves its default -1 to the weight in use)")
            self.reconstruction_encoder = self.reconstruction_decoder = None
            if self.reconstruction:
                self.reconstruction_encoder = global_head_encoder(discriminator)
                self.reconstruction_decoder = (reconstruction_decoder if reconstruction_decoder is not None
                                               else reconstruction_decoder_for(discriminator))
            # With a layout freeze (GanConfig.layout_freeze), the generator's layout stages
            # (`generator_layout_variables`, kept as their positions in the generator's trainable variables: a list
            # of the variables themselves would be tracked by Keras as the model's weights a second time) move by
            # `layout_rate_scale` of each step Adam takes with the generator's rate; the trainer sets it before
            # every step (GanConfig.layout_rate_scale: it falls to 0 before the end). Not training state: it
            # follows from the schedule, so checkpoints keep their variable count.
            self.layout_freeze = bool(layout_freeze)
            layout = {id(variable) for variable in generator_layout_variables(generator)} if layout_freeze else set()
            self.layout_positions = [index for index, variable in enumerate(generator.trainable_variables)
                                     if id(variable) in layout]
            self.layout_rate_scale = keras.Variable(1.0, trainable=False, name="layout_rate_scale")
            # The layout term's weight and its pool of training-image thumbnails (set by `set_layout_target` before
            # training; not training state: the trainer sets it again from the training images on resume).
            self.layout_mmd = float(layout_mmd)
            self.layout_reals = keras.Variable(
                tf.zeros((LAYOUT_MMD_POOL, LAYOUT_MMD_SIZE * LAYOUT_MMD_SIZE * 3)),
                trainable=False, name="layout_reals")
            self.layout_target_set = False
            # Lookahead-Minmax (Chavdarova et al., ICLR 2021): the slow copies of what the two optimizers train (the
            # generator's and `discriminator_variables`), in that order; every `lookahead`-th generator step moves
            # them `lookahead_alpha` of the way to the trained weights and sets the trained weights to them. Training
            # state only when on, so other checkpoints keep their variable count.
            self.lookahead = int(lookahead)
            self.lookahead_alpha = float(lookahead_alpha)
            if self.lookahead < 0 or not 0.0 < self.lookahead_alpha < 1.0:
                raise ValueError(f"lookahead must be 0 (off) or more steps and its alpha in 0..1 (exclusive), got "
                                 f"{lookahead} and {lookahead_alpha}")
            self.lookahead_slow = [
                keras.Variable(variable.numpy(), dtype=variable.dtype, trainable=False, name=f"lookahead_slow_{index}")
                for index, variable in enumerate(self._lookahead_fast())] if self.lookahead else []
            # The generator's step on the batch the discriminator's step just saw (GanConfig.generator_fakes
            # "shared", as PyTorch's DCGAN example does): one generator forward pass per step instead of two; the
            # generator's gradient goes through that pass, the discriminator's step in between taken first.
            self.shared_fakes = bool(shared_fakes)

        def _lookahead_fast(self):
            """What Lookahead-Minmax pulls back: the generator's trainable variables, then the discriminator's
            optimizer's (`discriminator_variables`)."""
            return list(self.generator.trainable_variables) + self.discriminator_variables()

        def _lookahead_step(self):
            """After the generator's step: on every `lookahead`-th one (its optimizer's iteration count), slow +=
            alpha (fast - slow) and fast = slow, for both networks at once (joint, as in LA-GAN, so that the pair moves
            back together); on the other steps nothing runs (a tf.cond, so the K - 1 steps between syncs do no
            elementwise work)."""

            def sync():
                for slow, fast in zip(self.lookahead_slow, self._lookahead_fast()):
                    moved = slow + self.lookahead_alpha * (fast - slow)
                    slow.assign(moved)
                    fast.assign(moved)
                return tf.constant(True)

            tf.cond(tf.equal(self.generator_optimizer.iterations % self.lookahead, 0), sync, lambda: tf.constant(False))

        def compile(self, generator_optimizer, discriminator_optimizer, **kwargs):
            """Attach one optimizer per network and the loss trackers."""
            super().compile(**kwargs)
            self.generator_optimizer = generator_optimizer
            self.discriminator_optimizer = discriminator_optimizer
            self.loss_function = keras.losses.BinaryCrossentropy(from_logits=True)
            self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
            self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
            self.real_accuracy_tracker = keras.metrics.Mean(name="real_accuracy")
            self.spectrum_loss_tracker = keras.metrics.Mean(name="spectrum_loss")
            self.reconstruction_loss_tracker = keras.metrics.Mean(name="reconstruction_loss")
            self.layout_mmd_tracker = keras.metrics.Mean(name="layout_mmd")
            # How far apart the discriminator's step puts real and generated images (mean logit, real minus
            # generated, as D saw them: augmented, before its update), for the patch heads and for the
            # whole-picture head alone: a head whose margin stays near 0 no longer tells them apart.
            self.patch_margin_tracker = keras.metrics.Mean(name="margin_patches")
            self.global_margin_tracker = keras.metrics.Mean(name="margin_global")
            self.generator_optimizer.build(self.generator.trainable_variables)
            self.discriminator_optimizer.build(self.discriminator_variables())

        @property
        def layout_variables(self) -> list:
            """The generator's layout stages' variables that a layout freeze slows (none without one)."""
            return [self.generator.trainable_variables[index] for index in self.layout_positions]

        @property
        def metrics(self):
            return [self.d_loss_tracker, self.g_loss_tracker, self.real_accuracy_tracker, self.spectrum_loss_tracker,
                    self.reconstruction_loss_tracker, self.patch_margin_tracker, self.global_margin_tracker,
                    self.layout_mmd_tracker]

        def discriminator_variables(self):
            """What the discriminator's optimizer trains: D's trainable variables, and the reconstruction
            decoder's when that term is on."""
            decoder = list(self.reconstruction_decoder.trainable_variables) if self.reconstruction else []
            return list(self.discriminator.trainable_variables) + decoder

        def state_variables(self):
            """Every variable that defines the training state, in a fixed order (for checkpoints)."""
            return (
                list(self.generator.weights) + list(self.discriminator.weights) + list(self.ema_generator.weights)
                + list(self.generator_optimizer.variables) + list(self.discriminator_optimizer.variables)
                + [self.seed_generator.state, self.augment_probability]
                + ([self.lecam_averages] if self.lecam else [])
                + ([self.pseudo_probability] if self.pseudo_augment else [])
                + ([self.spectrum_running, self.spectrum_steps] if self._running_spectrum() else [])
                + self._noise_states()
                + (list(self.reconstruction_decoder.weights) if self.reconstruction else [])
                + list(self.lookahead_slow)
            )

        def rollback_variables(self):
            """What a rollback restores (GanConfig.rollback): `state_variables` without the random seed states, so
            that the steps after it draw other augmentations and noise than the ones that led away."""
            seeds = {id(variable) for variable in [self.seed_generator.state, *self._noise_states()]}
            return [variable for variable in self.state_variables() if id(variable) not in seeds]

        def _running_spectrum(self) -> bool:
            """Whether training keeps a running mean of the generated power spectrum (the "bins" penalty)."""
            return bool(self.spectrum_penalty) and self.spectrum_penalty_kind == "bins"

        def _spectrum_block(self) -> int:
            """The side of the square of frequency bins the penalty sums: one bin for "bins", else
            SPECTRUM_PENALTY_BLOCK."""
            return 1 if self.spectrum_penalty_kind == "bins" else SPECTRUM_PENALTY_BLOCK

        def _noise_states(self):
            """The SeedGenerator states of the generator's noise layers (none without `generator_noise`, so
            checkpoints of runs without them keep their variable count), so a resumed run draws the noise it
            would have drawn."""
            noise_class = layer_classes()["NoiseInjection"]
            return [layer.seed_generator.state for layer in self.generator.layers if isinstance(layer, noise_class)]

        def global_head_share(self) -> float:
            """The share of the hinge losses that the whole-picture head's columns carry now."""
            columns, total = self.global_columns, int(self.discriminator.output.shape[-1])
            weight = float(self.global_head_weight) if self.global_head_schedule else 1.0
            return weight * columns / (weight * columns + total - columns) if columns else 0.0

        def set_global_head_share(self, share: float):
            """Weight the whole-picture head's columns so that they carry `share` of the hinge losses."""
            if not self.global_head_schedule:
                raise ValueError("this GAN was built without a whole-picture head schedule")
            if not 0.0 < share < 1.0:
                raise ValueError(f"the whole-picture head's share must be in 0..1 (exclusive), got {share}")
            patches = int(self.discriminator.output.shape[-1]) - self.global_columns
            self.global_head_weight.assign(share * patches / ((1.0 - share) * self.global_columns))

        def _logit_mean(self, values):
            """The hinge losses' mean over a batch's logits: plain, or with the scheduled head weight."""
            if not self.global_head_schedule:
                return tf.reduce_mean(values)
            return weighted_logit_mean(values, self._column_weights())

        def _column_weights(self):
            """Each logit column's weight in the losses: 1, and the scheduled weight for the whole-picture head's."""
            total = int(self.discriminator.output.shape[-1])
            if not self.global_head_schedule:
                return tf.ones((total,))
            return tf.concat([tf.ones((total - self.global_columns,)),
                              tf.fill((self.global_columns,), self.global_head_weight.value)], axis=0)

        def _inputs(self, images_or_noise, labels):
            """Pair a tensor with its labels when the model is conditional."""
            return [images_or_noise, labels] if self.num_classes else images_or_noise

        def _augment(self, images):
            return diff_augment(images, self.seed_generator, self.augment_probability, self.augment_policy)

        def _discriminator_loss(self, real_logits, fake_logits):
            """Hinge (projected) or binary cross-entropy (DCGAN) loss of the discriminator."""
            if self.loss == "hinge":
                return (self._logit_mean(tf.nn.relu(1.0 - real_logits))
                        + self._logit_mean(tf.nn.relu(1.0 + fake_logits)))
            return self.loss_function(tf.ones_like(real_logits), real_logits) + self.loss_function(
                tf.zeros_like(fake_logits), fake_logits)

        def _lecam_loss(self, real_logits, fake_logits):
            """LeCam regularisation (Tseng et al., CVPR 2021): keep D's logits on real images from rising above
            the moving average of its logits on generated images, and those on generated images from falling
            below the average on real ones; this bounds how far D can overfit a small training set. Updates
            the moving averages (of this step's mean logits, before the step) and returns the penalty."""
            real, fake = tf.cast(real_logits, "float32"), tf.cast(fake_logits, "float32")
            means = tf.stop_gradient(tf.stack([tf.reduce_mean(real), tf.reduce_mean(fake)]))
            sums, count, averages = _debiased_moving_average(self.lecam_averages[:2], self.lecam_averages[2], means,
                                                             LECAM_DECAY)
            self.lecam_averages.assign(tf.concat([sums, [count]], axis=0))
            average_real, average_fake = tf.unstack(averages)
            return (tf.reduce_mean(tf.square(tf.nn.relu(real - average_fake)))
                    + tf.reduce_mean(tf.square(tf.nn.relu(average_real - fake))))

        def _reconstruction_loss(self, images):
            """FastGAN's self-supervised discriminator (Liu et al., ICLR 2021, section 3.2), on the whole-picture
            head: the mean absolute error between the decoder's picture from the head's last map of each (augmented)
            real image and that image at the decoder's size (average pooling, as the head shrinks it). Paid by D,
            so the head's features must describe the whole picture (what is where), not only what separates the
            batch's real and generated images; FastGAN found this the regulariser that kept its discriminator from
            overfitting a few hundred images. (FastGAN compares with a perceptual distance and also decodes a crop
            of a larger map; here one L1 term on the layout head, where the patch heads already see the detail.)"""
            images = tf.cast(images, "float32")
            decoded = tf.cast(self.reconstruction_decoder(self.reconstruction_encoder(images, training=True),
                                                          training=True), "float32")
            factor = int(images.shape[1]) // int(decoded.shape[1])
            target = tf.nn.avg_pool2d(images, factor, factor, "VALID") if factor > 1 else images
            return tf.reduce_mean(tf.abs(decoded - target))

        def _r1_penalty(self, real_images, labels):
            """R1 (Mescheder et al., ICML 2018): half the squared norm of the gradient, with respect to real
            images, of D's logits summed over each image, divided by the number of logits, and averaged over
            the images. Patch logits see mostly separate patches, so this is about the mean over logits of each
            logit's squared gradient: the usual R1 of a one-logit discriminator, whatever the heads' sizes. It
            keeps D flat around the real data, which is what makes the game converge rather than circle around
            its equilibrium. Called inside the discriminator's tape, so its gradient is second order; on the
            first R1_SAMPLES (augmented) real images of the batch, to keep the double backward pass cheap."""
            real_images = tf.stop_gradient(tf.cast(real_images, "float32"))
            with tf.GradientTape() as tape:
                tape.watch(real_images)
                logits = tf.cast(self.discriminator(self._inputs(real_images, labels), training=True), "float32")
                score = tf.reduce_sum(logits)
            gradient = tape.gradient(score, real_images)
            count = tf.cast(tf.shape(logits)[1], "float32")
            return 0.5 * tf.reduce_mean(tf.reduce_sum(tf.square(gradient), axis=[1, 2, 3])) / count

        def power_spectrum(self, images):
            """Mean power spectrum (size, size, 3) of float images in [-1, 1] (batch, size, size, 3): per colour
            channel, mean removed, Hann window (so the borders add no stripes), numpy's FFT layout. The
            differentiable, per-channel counterpart of `quality.power_spectrum` (numpy, grey, for `stripes`)."""
            images = tf.cast(images, "float32") / 2.0
            size = int(images.shape[1])
            window = tf.signal.hann_window(size, periodic=False)
            window = window[:, None] * window[None, :]
            channels = tf.transpose(images, [0, 3, 1, 2])  # fft2d transforms the last two axes
            channels = (channels - tf.reduce_mean(channels, axis=[2, 3], keepdims=True)) * window
            power = tf.abs(tf.signal.fft2d(tf.complex(channels, tf.zeros_like(channels)))) ** 2
            return tf.transpose(tf.reduce_mean(power, axis=0), [1, 2, 0])

        def set_spectrum_target(self, images, batch_size: int = 64, mirrored: bool = False):
            """Set the spectrum penalty's target from real images (uint8 or floats in [-1, 1], the training
            images of the run): the log of their mean `power_spectrum`, in blocks (`_block_power`). With
            `mirrored`, each image counts half as itself and half mirrored left to right, as a training set
            under random horizontal flips is seen."""
            images = np.asarray(images)
            size = int(self.generator.output.shape[1])
            if images.ndim != 4 or images.shape[1:] != (size, size, 3) or not len(images):
                raise ValueError(f"spectrum target: expected images of shape (N, {size}, {size}, 3), got "
                                 f"{images.shape}")
            total = 0.0
            for start in range(0, len(images), batch_size):
                batch = images[start:start + batch_size]
                if batch.dtype == np.uint8:
                    batch = batch.astype("float32") / 127.5 - 1.0
                power = self.power_spectrum(batch).numpy()
                if mirrored:
                    power = (power + self.power_spectrum(batch[:, :, ::-1]).numpy()) / 2.0
                total += power * len(batch)
            self.spectrum_target.assign(np.log(self._block_power(total / len(images)) + SPECTRUM_EPSILON))
            self.spectrum_target_set = True

        def _block_power(self, power):
            """(size, size, 3) power -> (size / B, size / B, 3) mean power per block of B x B frequency bins
            (B = `_spectrum_block()`)."""
            size, block = int(power.shape[0]), self._spectrum_block()
            blocks = tf.reshape(tf.cast(power, "float32"), (size // block, block, size // block, block, 3))
            return tf.reduce_mean(blocks, axis=[1, 3])

        def _spectrum_band(self):
            """1 for the blocks whose every bin lies in the fine-detail band (periods up to
            `spectrum_penalty_period` px on either axis), else 0."""
            size = int(self.generator.output.shape[1])
            frequencies = np.abs(np.fft.fftfreq(size))
            in_band = np.maximum(frequencies[:, None], frequencies[None, :]) >= 1.0 / self.spectrum_penalty_period
            block = self._spectrum_block()
            return tf.constant(in_band.reshape(size // block, block, size // block, block).all(axis=(1, 3)), "float32")

        def _spectrum_rings(self):
            """(blocks * blocks, rings) one-hot: each block's ring, its centre's distance from the zero frequency
            rounded to whole blocks, so a ring holds the blocks of one scale in every direction."""
            count, size = int(self.spectrum_target.shape[0]), int(self.generator.output.shape[1])
            centres = np.abs(np.fft.fftfreq(size).reshape(count, -1).mean(axis=1)) * count
            ring = np.rint(np.hypot(centres[:, None], centres[None, :])).astype(int).reshape(-1)
            _, ring = np.unique(ring, return_inverse=True)  # no empty rings
            return tf.constant(np.eye(int(ring.max()) + 1)[ring], "float32")

        def _spectrum_loss(self, images):
            """The spectrum penalty: over the blocks of the fine-detail band and the colour channels, the mean of
            max(0, excess - SPECTRUM_PENALTY_MARGIN)^2, where a block's excess is its log block power in the batch
            minus the target's. One-sided: a generator is not paid for adding grain where it paints less detail
            than the real images have. With `spectrum_penalty_kind` "direction" it also pays, in the same way, for
            a block's excess over the mean excess of its ring (`_spectrum_rings`): fine detail that runs more in
            one direction (horizontal and vertical stripes) than in the real images, relative to the detail the
            generator paints at that scale in every direction. The "bins" kind: `_spectrum_bins_loss`."""
            if self.spectrum_penalty_kind == "bins":
                return self._spectrum_bins_loss(self.power_spectrum(images))
            log_power = tf.math.log(self._block_power(self.power_spectrum(images)) + SPECTRUM_EPSILON)
            excess = log_power - self.spectrum_target
            band = self._spectrum_band()[:, :, None]
            penalty = tf.square(tf.nn.relu(excess - SPECTRUM_PENALTY_MARGIN))
            if self.spectrum_penalty_kind == "direction":
                rings = self._spectrum_rings()
                flat = tf.reshape(excess, (-1, 3))
                ring_mean = tf.matmul(rings, tf.matmul(rings, flat, transpose_a=True)
                                      / tf.reduce_sum(rings, axis=0)[:, None])
                relative = flat - ring_mean
                penalty += tf.reshape(tf.square(tf.nn.relu(relative - SPECTRUM_PENALTY_MARGIN)), tf.shape(excess))
            return tf.reduce_sum(penalty * band) / (3.0 * tf.reduce_sum(band))

        def _spectrum_bins_loss(self, power):
            """The "bins" penalty of a batch's power spectrum (size, size, 3): adds the batch to the running mean
            and returns, over the bins of the band and the channels, the mean of max(0, excess - MARGIN)^2, where
            a bin's excess is the log of its running mean minus the target's. The running mean carries no
            gradient; the batch's power does, scaled as the derivative of that square would be at a batch as
            strong as the mean (2 * max(0, excess - MARGIN) * d power / mean power), so only the bins whose mean
            is too strong are pushed down, each by how much."""
            running, steps, mean = _debiased_moving_average(self.spectrum_running, self.spectrum_steps,
                                                            tf.stop_gradient(power), SPECTRUM_RUNNING_DECAY)
            self.spectrum_running.assign(running)
            self.spectrum_steps.assign(steps)
            mean = mean + SPECTRUM_EPSILON
            over = tf.nn.relu(tf.math.log(mean) - self.spectrum_target - SPECTRUM_PENALTY_MARGIN)
            band = self._spectrum_band()[:, :, None]
            count = 3.0 * tf.reduce_sum(band)
            value = tf.reduce_sum(tf.square(over) * band) / count
            pushed = tf.reduce_sum(2.0 * over * power / mean * band) / count
            return value + pushed - tf.stop_gradient(pushed)

        def set_layout_target(self, images, mirrored: bool = False, seed: int = 0, batch_size: int = 256):
            """Fill the layout term's pool from the run's training images (uint8 or floats in [-1, 1]): their
            LAYOUT_MMD_SIZE-px thumbnails, LAYOUT_MMD_POOL of them drawn with a seeded generator (each mirrored
            left to right with probability 1/2 when `mirrored`, as random horizontal flips show them)."""
            images = np.asarray(images)
            size = int(self.generator.output.shape[1])
            if images.ndim != 4 or images.shape[1:] != (size, size, 3) or not len(images):
                raise ValueError(f"layout target: expected images of shape (N, {size}, {size}, 3), got "
                                 f"{images.shape}")
            rows = []
            for start in range(0, len(images), batch_size):
                batch = images[start:start + batch_size]
                if batch.dtype == np.uint8:
                    batch = batch.astype("float32") / 127.5 - 1.0
                rows.append(thumbnails(batch).numpy())
            # A mirrored image's thumbnail is the thumbnail mirrored (the averaging blocks tile the image exactly).
            square = np.concatenate(rows).reshape(len(images), LAYOUT_MMD_SIZE, LAYOUT_MMD_SIZE, 3)
            rows = np.stack([square, square[:, :, ::-1]], 1).reshape(len(images), 2, -1)  # itself, mirrored
            generator = np.random.default_rng(seed)
            chosen = generator.integers(0, len(rows), LAYOUT_MMD_POOL)
            mirror = generator.random(LAYOUT_MMD_POOL) < 0.5 if mirrored else np.zeros(LAYOUT_MMD_POOL, bool)
            self.layout_reals.assign(rows[chosen, mirror.astype(int)])
            self.layout_target_set = True

        def _layout_mmd_loss(self, images):
            """MMD² between the generated batch's thumbnails and LAYOUT_MMD_REALS drawn from the pool."""
            picked = keras.random.randint((LAYOUT_MMD_REALS,), 0, LAYOUT_MMD_POOL, seed=self.seed_generator)
            return mmd_squared(thumbnails(images), tf.gather(self.layout_reals, picked))

        def _mode_seeking_loss(self, noise, images):
            """MSGAN's term: 1 / (image distance / latent distance) over the pairs (i, i + half)."""
            half = tf.shape(images)[0] // 2
            image_distance = tf.reduce_mean(tf.abs(images[:half] - images[half:2 * half]), axis=[1, 2, 3])
            noise_distance = tf.reduce_mean(tf.abs(noise[:half] - noise[half:2 * half]), axis=1)
            return 1.0 / (tf.reduce_mean(image_distance / noise_distance) + 1e-5)

        def train_step(self, data):
            # fit() passes (images, labels); train_on_batch adds a sample weight, which a GAN ignores.
            real_images, labels = data[0], data[1]
            batch_size = tf.shape(real_images)[0]
            for layer in self.diffusion_layers:
                layer.strength.assign(tf.cast(self.augment_probability, layer.strength.dtype))
            noise = keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)
            fake_labels = labels
            if self.shared_fakes:
                if self.mode_seeking:
                    fake_labels = self._mode_seeking_labels(labels, batch_size)
                # One generator pass for both steps: its tape pauses for the discriminator's step.
                with tf.GradientTape() as generator_tape:
                    fake_images = self.generator(self._inputs(noise, fake_labels), training=True)
                    with generator_tape.stop_recording():
                        seen = self._discriminator_step(real_images, labels, fake_images, fake_labels, batch_size)
                    generator_losses = self._generator_losses(noise, fake_labels, fake_images)
            else:
                fake_images = self.generator(self._inputs(noise, labels), training=True)
                seen = self._discriminator_step(real_images, labels, fake_images, labels, batch_size)
                # Generator step on a new batch.
                noise = keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)
                if self.mode_seeking:
                    fake_labels = self._mode_seeking_labels(labels, batch_size)
                with tf.GradientTape() as generator_tape:
                    fake_images = self.generator(self._inputs(noise, fake_labels), training=True)
                    generator_losses = self._generator_losses(noise, fake_labels, fake_images)
            d_loss, real_logits, fake_logits_seen, pseudo, reconstruction_loss = seen
            total_g_loss, g_loss, spectrum_loss, layout_mmd = generator_losses
            gradients = generator_tape.gradient(total_g_loss, self.generator.trainable_variables)
            layout = self.layout_variables
            before = [tf.identity(variable) for variable in layout]
            self.generator_optimizer.apply_gradients(zip(gradients, self.generator.trainable_variables))
            # The layout stages take layout_rate_scale of Adam's step: the same as a smaller learning rate for
            # them alone (Adam's step is the rate times a function of the gradients' moments), without a second
            # optimizer.
            for variable, previous in zip(layout, before):
                variable.assign(previous + self.layout_rate_scale * (variable - previous))
            if self.lookahead:
                self._lookahead_step()  # before the EMA, which then follows the weights the run goes on from

            # The EMA generator follows the trained one, with a shorter memory during the first steps (as in
            # tf.train.ExponentialMovingAverage with num_updates) so that short runs are not dominated by the
            # random initial weights, and times ema_rate_scale (slower while the learning rate is low). Its
            # BatchNorm statistics are recalibrated at each epoch end.
            step = tf.cast(self.generator_optimizer.iterations, "float32")
            share = (1.0 - tf.minimum(self.ema_decay, (1.0 + step) / (10.0 + step))) * self.ema_rate_scale
            for ema_weight, weight in zip(self.ema_generator.trainable_weights, self.generator.trainable_weights):
                ema_weight.assign(ema_weight + share * (weight - ema_weight))

            # ADA-style heuristic: raise the augmentation probability while D is too sure of the reals (the
            # images that are real, not APA's pseudo-real ones).
            genuine = 1.0 - tf.cast(pseudo, "float32")
            called_real = tf.reduce_mean(tf.reshape(tf.cast(real_logits > 0.0, "float32"), (batch_size, -1)), axis=1)
            real_accuracy = tf.reduce_sum(called_real * genuine) / tf.maximum(tf.reduce_sum(genuine), 1.0)
            step = (real_accuracy - self.augment_target) * self.augment_speed * self.augment_rate_scale
            if self.adaptive_augment:
                self.augment_probability.assign(tf.clip_by_value(self.augment_probability + step, 0.0, 1.0))
            if self.pseudo_augment:
                self.pseudo_probability.assign(tf.clip_by_value(self.pseudo_probability + step, 0.0, 1.0))

            self.d_loss_tracker.update_state(d_loss)
            self.g_loss_tracker.update_state(g_loss)
            self.real_accuracy_tracker.update_state(real_accuracy)
            margins = self._margins(real_logits, fake_logits_seen)
            self.patch_margin_tracker.update_state(margins[0])
            if self.global_columns:
                self.global_margin_tracker.update_state(margins[1])
            if self.spectrum_penalty:
                self.spectrum_loss_tracker.update_state(spectrum_loss)
            if self.reconstruction:
                self.reconstruction_loss_tracker.update_state(reconstruction_loss)
            if self.layout_mmd:
                self.layout_mmd_tracker.update_state(layout_mmd)
            return {
                "d_loss": self.d_loss_tracker.result(),
                "g_loss": self.g_loss_tracker.result(),
                "real_accuracy": self.real_accuracy_tracker.result(),
                "aug_p": self.augment_probability.value,
                **({"apa_p": self.pseudo_probability.value} if self.pseudo_augment else {}),
                **({"spectrum_loss": self.spectrum_loss_tracker.result()} if self.spectrum_penalty else {}),
                **({"reconstruction_loss": self.reconstruction_loss_tracker.result()} if self.reconstruction else {}),
                **({"layout_mmd": self.layout_mmd_tracker.result()} if self.layout_mmd else {}),
                "margin_patches": self.patch_margin_tracker.result(),
                **({"margin_global": self.global_margin_tracker.result()} if self.global_columns else {}),
            }

        def _mode_seeking_labels(self, labels, batch_size):
            """The generated batch's labels with the mode-seeking term: pairs (i, i + half) share a genre, so the
            term compares images of one genre."""
            half = batch_size // 2
            return tf.concat([labels[:half], labels[:half], labels[2 * half:]], axis=0)

        def _discriminator_step(self, real_images, labels, fake_images, fake_labels, batch_size):
            """One discriminator step (real images are "1", generated ones "0"); (its loss before the extra terms,
            the logits on real images, those on generated ones, which real images APA replaced, the reconstruction
            term or None)."""
            generated = tf.stop_gradient(fake_images)
            pseudo = tf.zeros((batch_size,), dtype="bool")
            reconstruction_loss = None
            with tf.GradientTape() as tape:
                if self.pseudo_augment:
                    # APA: some "real" images are generated ones (the same genre label), no gradient to G.
                    pseudo = keras.random.uniform((batch_size,), seed=self.seed_generator) < self.pseudo_probability
                    if self.shared_fakes and self.mode_seeking:  # only where the generated image's genre is the same
                        pseudo = tf.logical_and(pseudo, tf.equal(labels, fake_labels))
                    real_images = tf.where(pseudo[:, None, None, None], tf.cast(generated, real_images.dtype),
                                           real_images)
                # One discriminator call on real and generated images together (cheaper than two).
                both = self._augment(tf.concat([real_images, generated], axis=0))
                logits = self.discriminator(self._inputs(both, tf.concat([labels, fake_labels], axis=0)), training=True)
                real_logits, fake_logits = logits[:batch_size], logits[batch_size:]
                d_loss = self._discriminator_loss(real_logits, fake_logits)
                total_d_loss = d_loss
                if self.lecam:
                    total_d_loss = d_loss + self.lecam * self._lecam_loss(real_logits, fake_logits)
                if self.r1:
                    total_d_loss = total_d_loss + self.r1 * self._r1_penalty(both[:R1_SAMPLES], labels[:R1_SAMPLES])
                if self.reconstruction:
                    reconstruction_loss = self._reconstruction_loss(both[:batch_size])
                    total_d_loss = total_d_loss + self.reconstruction * reconstruction_loss
            variables = self.discriminator_variables()
            gradients = tape.gradient(total_d_loss, variables)
            self.discriminator_optimizer.apply_gradients(zip(gradients, variables))
            return d_loss, real_logits, fake_logits, pseudo, reconstruction_loss

        def _generator_losses(self, noise, labels, fake_images):
            """The generator's loss on `fake_images` (the non-saturating or hinge loss: make D call them real) and
            its extra terms, to be taken under the generator's tape: (the total, the adversarial part, the spectrum
            term or None, the layout term or None)."""
            fake_logits = self.discriminator(self._inputs(self._augment(fake_images), labels), training=False)
            if self.top_k:
                fake_logits = self._top_k_rows(fake_logits)
            if self.loss == "hinge":
                g_loss = -self._logit_mean(fake_logits)
            else:
                g_loss = self.loss_function(tf.ones_like(fake_logits), fake_logits)
            total_g_loss = g_loss
            spectrum_loss = layout_mmd = None
            if self.mode_seeking:
                total_g_loss = g_loss + self.mode_seeking * self._mode_seeking_loss(noise, fake_images)
            if self.spectrum_penalty:
                if not self.spectrum_target_set:  # checked while the step is traced
                    raise ValueError("the spectrum penalty needs its target: call set_spectrum_target(real "
                                     "images) before training")
                spectrum_loss = self._spectrum_loss(fake_images)
                total_g_loss = total_g_loss + self.spectrum_penalty * spectrum_loss
            if self.layout_mmd:
                if not self.layout_target_set:  # checked while the step is traced
                    raise ValueError("the layout term needs its target: call set_layout_target(training images) "
                                     "before training")
                layout_mmd = self._layout_mmd_loss(fake_images)
                total_g_loss = total_g_loss + self.layout_mmd * layout_mmd
            return total_g_loss, g_loss, spectrum_loss, layout_mmd

        def _top_k_rows(self, fake_logits):
            """The rows of (batch, logits) `fake_logits` of the generated images D scores as most real: the
            `top_k_share` of the batch (at least one), by each image's logits averaged as the loss weighs them.
            The generator's adversarial loss then learns from those only (Top-k training: the images D already
            rejects most pull the generator toward the mean of the modes rather than toward any one)."""
            weights = self._column_weights()
            scores = tf.reduce_sum(tf.cast(fake_logits, "float32") * weights, axis=-1) / tf.reduce_sum(weights)
            batch = tf.shape(scores)[0]
            k = tf.cast(tf.round(tf.cast(self.top_k_share.value, "float32") * tf.cast(batch, "float32")), "int32")
            _, rows = tf.math.top_k(scores, tf.clip_by_value(k, 1, batch))
            return tf.gather(fake_logits, rows)

        def _margins(self, real_logits, fake_logits):
            """(patch heads' margin, whole-picture head's margin): the mean logit on real images minus that on
            generated ones, over the patch heads' columns and over the whole-picture head's (0.0 without one)."""
            real, fake = tf.cast(real_logits, "float32"), tf.cast(fake_logits, "float32")
            patches = int(real.shape[-1]) - self.global_columns
            patch_margin = tf.reduce_mean(real[:, :patches]) - tf.reduce_mean(fake[:, :patches])
            if not self.global_columns:
                return patch_margin, tf.constant(0.0)
            return patch_margin, tf.reduce_mean(real[:, patches:]) - tf.reduce_mean(fake[:, patches:])

        def recalibrate_ema(self, labels=None, samples=256, seed=0, batch_size=256):
            """Re-estimate the EMA generator's BatchNorm statistics from `samples` generated in training mode,
            as BigGAN's "standing statistics": the mean of the statistics of batches of `batch_size`.

            The generator's output is sensitive to these statistics: on one kit run, four draws of 256 gave
            fixed-space KIDs from 0.34 to 0.65 for the same weights, four draws of 1,024 from 0.36 to 0.44."""
            rng = np.random.default_rng(seed)
            choices = np.arange(self.num_classes) if labels is None else np.asarray(labels)
            norms = [layer for layer in self.ema_generator.layers if isinstance(layer, keras.layers.BatchNormalization)]
            momenta = [layer.momentum for layer in norms]
            try:
                for index, start in enumerate(range(0, int(samples), int(batch_size))):
                    count = min(int(batch_size), int(samples) - start)
                    noise = rng.standard_normal((count, self.latent_dim)).astype("float32")
                    inputs = [noise, rng.choice(choices, count).astype("int32")] if self.num_classes else noise
                    # Momentum index / (index + 1) makes the moving statistics the running mean over batches
                    # (the first batch, with momentum 0, replaces what was there).
                    for layer in norms:
                        layer.momentum = index / (index + 1.0)
                    self.ema_generator(inputs, training=True)
            finally:
                for layer, momentum in zip(norms, momenta):
                    layer.momentum = momentum

    return Gan


_GAN_CLASS = None


def Gan(*args, **kwargs):  # noqa: N802 - behaves as the class constructor
    """Create a `Gan` model (the class is defined lazily; see `_gan_class`)."""
    global _GAN_CLASS
    if _GAN_CLASS is None:
        _GAN_CLASS = _gan_class()
    return _GAN_CLASS(*args, **kwargs)
