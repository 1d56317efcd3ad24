"""Small registered Keras layers used inside saved classifiers, so models load with `safe_mode=True`.

Keras is imported when a layer class is first asked for (`caffe_preprocess()`, `mean_std_pooling()`),
never when this module is imported, so `python -m genre_core --help` stays fast.
"""

from __future__ import annotations

import functools

from genre_core.models.backbones import CAFFE_BGR_MEAN

# How a frozen backbone's pooled features are transformed before the head: as they are, or signed square root.
FEATURE_TRANSFORMS = ("none", "sqrt")


@functools.lru_cache(maxsize=None)
def layer_classes() -> dict:
    """Define (once) and return the registered custom layer classes by name."""
    import keras
    import numpy as np
    from keras import ops

    @keras.saving.register_keras_serializable(package="genre_core")
    class CaffePreprocess(keras.layers.Layer):
        """RGB 0..255 in, Caffe-style input out: BGR channel order minus the ImageNet channel means.

        This is what `keras.applications.vgg16/vgg19/resnet50.preprocess_input` does, as a layer.
        """

        def call(self, inputs):
            inputs = ops.cast(inputs, self.compute_dtype)
            bgr = ops.flip(inputs, axis=-1)
            mean = ops.convert_to_tensor(CAFFE_BGR_MEAN, dtype=self.compute_dtype)
            return bgr - mean

        def compute_output_shape(self, input_shape):
            return input_shape

    @keras.saving.register_keras_serializable(package="genre_core")
    class MeanStdPooling2D(keras.layers.Layer):
        """Global pooling that keeps per-channel mean and standard deviation ("style" statistics).

        Output is (batch, 2 * channels): the means followed by the standard deviations. Feature-map
        statistics like these describe texture and brushwork, which is why they help for art.
        """

        def __init__(self, epsilon: float = 1e-6, **kwargs):
            super().__init__(**kwargs)
            self.epsilon = float(epsilon)

        def call(self, inputs):
            inputs = ops.cast(inputs, "float32")
            mean = ops.mean(inputs, axis=(1, 2))
            variance = ops.mean(ops.square(inputs), axis=(1, 2)) - ops.square(mean)
            std = ops.sqrt(ops.maximum(variance, 0.0) + self.epsilon)
            return ops.concatenate([mean, std], axis=-1)

        def compute_output_shape(self, input_shape):
            return (input_shape[0], 2 * input_shape[-1])

        def get_config(self):
            config = super().get_config()
            config["epsilon"] = self.epsilon
            return config

    @keras.saving.register_keras_serializable(package="genre_core")
    class SignedSqrt(keras.layers.Layer):
        """Power normalisation: sign(x) * sqrt(|x|), elementwise (Perronnin et al. 2010, for pooled features).

        Pooled CNN statistics are heavy-tailed (a few channels fire strongly on some paintings); the square
        root evens them out before a linear classifier. A small epsilon keeps the gradient finite at zero.
        """

        def __init__(self, epsilon: float = 1e-6, **kwargs):
            super().__init__(**kwargs)
            self.epsilon = float(epsilon)

        def call(self, inputs):
            inputs = ops.cast(inputs, self.compute_dtype)
            return ops.sign(inputs) * ops.sqrt(ops.abs(inputs) + self.epsilon)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            config = super().get_config()
            config["epsilon"] = self.epsilon
            return config

    @keras.saving.register_keras_serializable(package="genre_core")
    class PriorCorrection(keras.layers.Layer):
        """Post-hoc logit adjustment (Menon et al., ICLR 2021, "Long-tail learning via logit adjustment").

        Input: softmax probabilities. Output: probabilities proportional to p / prior**tau, i.e. the softmax
        of (logits - tau * log prior). With tau = 1 this is the balanced-error Bayes rule: a genre is no
        longer favoured just because it is common in the training data. The priors travel in the config,
        so a saved model applies the same correction wherever it is loaded.
        """

        def __init__(self, log_prior=(), tau: float = 1.0, **kwargs):
            super().__init__(**kwargs)
            self.log_prior = [float(value) for value in log_prior]
            self.tau = float(tau)

        def call(self, inputs):
            inputs = ops.cast(inputs, "float32")
            shift = ops.convert_to_tensor([-self.tau * value for value in self.log_prior], dtype="float32")
            logits = ops.log(ops.maximum(inputs, 1e-30)) + shift
            return ops.softmax(logits, axis=-1)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            config = super().get_config()
            config.update({"log_prior": list(self.log_prior), "tau": self.tau})
            return config

    @keras.saving.register_keras_serializable(package="genre_core")
    class ReflectionPadding2D(keras.layers.Layer):
        """Pad height and width by `padding` pixels on each side with their mirror image (no zeros).

        A generator whose 3x3 convolutions pad with zeros can tell the border cells of its small maps from the
        others and paints a frame one coarse cell in from the edge; mirrored borders carry no such signal."""

        def __init__(self, padding: int = 1, **kwargs):
            super().__init__(**kwargs)
            self.padding = int(padding)

        def call(self, inputs):
            pad = self.padding
            return ops.pad(inputs, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="reflect")

        def compute_output_shape(self, input_shape):
            batch, height, width, channels = input_shape
            grow = lambda size: None if size is None else size + 2 * self.padding  # noqa: E731
            return (batch, grow(height), grow(width), channels)

        def get_config(self):
            config = super().get_config()
            config["padding"] = self.padding
            return config

    @keras.saving.register_keras_serializable(package="genre_core")
    class BlurPool2D(keras.layers.Layer):
        """Halve height and width `times` times, each time with the [1, 3, 3, 1] / 8 low-pass filter over a
        mirrored border, then every second pixel (the anti-aliased downsampling of StyleGAN2 and Zhang 2019).

        Average pooling's gradient copies each value onto a block of pixels, so what flows back through it is
        blocky, and a block's edges are horizontal and vertical lines. This filter's gradient is a smooth
        (bilinear-like) upsampling instead. No weights."""

        def __init__(self, times: int = 1, **kwargs):
            super().__init__(**kwargs)
            self.times = int(times)

        def call(self, inputs):
            taps = np.array([1.0, 3.0, 3.0, 1.0]) / 8.0
            x = inputs
            kernel = np.outer(taps, taps)[:, :, None, None] * np.ones((1, 1, int(x.shape[-1]), 1))
            kernel = ops.convert_to_tensor(kernel, dtype=x.dtype)
            for _ in range(self.times):  # a depthwise convolution: about 12x faster than slicing, same result
                x = ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="reflect")
                x = ops.depthwise_conv(x, kernel, strides=2, padding="valid")
            return x

        def compute_output_shape(self, input_shape):
            batch, height, width, channels = input_shape
            shrink = lambda size: None if size is None else size // 2 ** self.times  # noqa: E731
            return (batch, shrink(height), shrink(width), channels)

        def get_config(self):
            config = super().get_config()
            config["times"] = self.times
            return config

    @keras.saving.register_keras_serializable(package="genre_core")
    class NoiseInjection(keras.layers.Layer):
        """Add per-pixel Gaussian noise, one map per image, times a learned per-channel strength that starts at
        `initial_strength` (StyleGAN's and FastGAN's noise inputs).

        A generator without noise must make every fine detail a function of its latent vector; the cheapest
        high-frequency texture it finds is regular stripes. With noise it can paint random texture instead.
        StyleGAN and FastGAN start the strengths at 0; over a few hundred steps they barely move from there
        (the noise is independent of everything else, so the loss's gradient for a strength of 0 is zero on
        average: on one 15-minute kit run, with the noise before the batch norm, the largest was 0.025), so a
        short run needs them to start above 0.
        `gain` multiplies the learning rate of the strengths (the weight is the strength / gain, as StyleGAN's
        learning-rate multipliers do): Adam moves a weight by about the learning rate per step whatever its
        gradient, so at 1e-4 a strength moves by at most about 0.07 in a 15-minute run; with gain 10, 0.7.
        In training (and when BatchNorm statistics are re-estimated) the noise is fresh on every call and
        differs between images, drawn from the layer's own SeedGenerator; in inference every image gets one
        fixed map (from `inference_seed`), as in StyleGAN2's "const" noise mode, so a latent vector gives the
        same picture wherever it stands in a batch, and the frames of an interpolation share their texture."""

        def __init__(self, seed: int = 0, inference_seed: int = 1, initial_strength: float = 0.0, gain: float = 1.0,
                     **kwargs):
            super().__init__(**kwargs)
            self.initial_strength = float(initial_strength)
            self.gain = float(gain)
            self.seed = int(seed)
            self.inference_seed = int(inference_seed)
            self.seed_generator = keras.random.SeedGenerator(self.seed)

        def build(self, input_shape):
            self.strength = self.add_weight(shape=(int(input_shape[-1]),), name="strength",
                                            initializer=keras.initializers.Constant(self.initial_strength / self.gain))

        def call(self, inputs, training=None):
            shape = ops.shape(inputs)
            if training:
                noise = keras.random.normal((shape[0], shape[1], shape[2], 1), seed=self.seed_generator,
                                            dtype=self.compute_dtype)
            else:
                noise = keras.random.normal((1, shape[1], shape[2], 1), seed=self.inference_seed,
                                            dtype=self.compute_dtype)
            return inputs + ops.cast(self.strength * self.gain, self.compute_dtype) * noise

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            config = super().get_config()
            config.update({"seed": self.seed, "inference_seed": self.inference_seed,
                           "initial_strength": self.initial_strength, "gain": self.gain})
            return config

    @keras.saving.register_keras_serializable(package="genre_core")
    class MinibatchStdDev(keras.layers.Layer):
        """Append one channel: how much the images of a small group of the batch differ from one another (the
        standard deviation of each feature over the group, averaged over the features and positions), the same
        value at every position of each image of the group (ProGAN's and StyleGAN2's minibatch standard
        deviation; Karras et al. 2018). A discriminator that sees it can tell a batch of look-alike pictures from a
        varied one, which no per-image logit can.

        Groups are `group_size` consecutive images (a batch that it does not divide is one group), so a batch made
        of real images followed by as many generated ones never mixes the two in one group when the halves are a
        multiple of it. Computed in float32 whatever the layer's compute dtype."""

        def __init__(self, group_size: int = 4, **kwargs):
            super().__init__(**kwargs)
            self.group_size = int(group_size)
            if self.group_size < 2:
                raise ValueError(f"a minibatch standard deviation group needs at least 2 images, got {group_size}")

        def call(self, inputs):
            x = ops.cast(inputs, "float32")
            _, height, width, channels = inputs.shape
            count = ops.shape(x)[0]
            group = ops.where(ops.equal(count % self.group_size, 0), self.group_size, count)
            grouped = ops.reshape(x, (-1, group, height, width, channels))
            spread = ops.mean(ops.sqrt(ops.var(grouped, axis=1) + 1e-8), axis=(1, 2, 3))
            column = ops.ones_like(grouped[..., :1]) * spread[:, None, None, None, None]
            column = ops.reshape(column, (-1, height, width, 1))
            return ops.concatenate([inputs, ops.cast(column, inputs.dtype)], axis=-1)

        def compute_output_shape(self, input_shape):
            return (*input_shape[:-1], input_shape[-1] + 1)

        def get_config(self):
            config = super().get_config()
            config["group_size"] = self.group_size
            return config

    @keras.saving.register_keras_serializable(package="genre_core")
    class FeatureDiffusion(keras.layers.Layer):
        """Diffuse a feature map as the forward chain of a diffusion model does, by a random number of steps per
        image and channel (Diffusion-GAN, Wang et al., ICLR 2023, in its Projected-GAN form, which diffuses the
        frozen network's feature maps): x_t = sqrt(abar_t) x + sqrt(1 - abar_t) noise_std e, e = +-1 at random.

        `strength` (a non-trainable weight in 0..1, set from outside before each training step; Diffusion-GAN's
        adaptive p) sets the chain's length T = t_min + round(strength (t_max - t_min)), its betas on a line from
        `beta_start` to `beta_end` over T steps, and the share of (image, channel) pairs that are diffused at all,
        min(strength, max_share); a diffused pair's t is drawn from 1..T with a probability rising linearly with
        t (the paper's "priority" sampling: P(t) proportional to t - 1). At strength 0 the map passes unchanged.
        Noise is drawn on every call, in training or not: the layer belongs in a discriminator, which only training
        calls. The gradient flows through sqrt(abar_t) x to whatever made the map, as the paper's generator
        learns through the chain."""

        def __init__(self, noise_std: float = 0.5, t_min: int = 5, t_max: int = 500, beta_start: float = 1e-4,
                     beta_end: float = 1e-2, max_share: float = 0.75, seed: int = 0, **kwargs):
            super().__init__(**kwargs)
            self.noise_std = float(noise_std)
            self.t_min, self.t_max = int(t_min), int(t_max)
            self.beta_start, self.beta_end = float(beta_start), float(beta_end)
            self.max_share = float(max_share)
            self.seed = int(seed)
            if not 1 <= self.t_min <= self.t_max:
                raise ValueError(f"feature diffusion needs 1 <= t_min <= t_max, got {t_min} and {t_max}")
            self.seed_generator = keras.random.SeedGenerator(self.seed)

        def build(self, input_shape):
            if int(input_shape[-1]) % 16:
                raise ValueError(f"feature diffusion draws 16 noise signs per random integer; a map of "
                                 f"{input_shape[-1]} channels is not a multiple of 16")
            self.strength = self.add_weight(shape=(), name="strength", initializer="zeros", trainable=False)

        def alpha_bar(self, steps, chain_length):
            """abar_t = prod over i <= t of (1 - beta_i), beta on a line from beta_start (i = 1) to beta_end
            (i = chain_length); float32 tensors of t (0 gives 1) and of T."""
            index = ops.arange(self.t_max, dtype="float32")
            betas = self.beta_start + (self.beta_end - self.beta_start) * index / ops.maximum(chain_length - 1.0, 1.0)
            kept = ops.concatenate([ops.zeros((1,)), ops.cumsum(ops.log1p(-betas))])
            return ops.exp(ops.take(kept, ops.cast(steps, "int32")))

        def call(self, inputs):
            strength = ops.clip(ops.cast(self.strength, "float32"), 0.0, 1.0)
            chain_length = ops.round(self.t_min + strength * (self.t_max - self.t_min))
            shape = ops.shape(inputs)
            pairs = (shape[0], 1, 1, shape[3])
            diffused = keras.random.uniform(pairs, seed=self.seed_generator) < ops.minimum(strength, self.max_share)
            # t - 1 = j, P(j) proportional to j over 0..T-1: the smallest j with j (j + 1) / 2 >= u T (T - 1) / 2.
            u = keras.random.uniform(pairs, seed=self.seed_generator)
            j = ops.ceil((ops.sqrt(1.0 + 4.0 * u * chain_length * (chain_length - 1.0)) - 1.0) / 2.0)
            steps = ops.where(diffused, ops.clip(j + 1.0, 2.0, chain_length), 0.0)
            alpha_bar = self.alpha_bar(steps, chain_length)
            # Rademacher noise (+-1, the paper's "bernoulli" noise type): Gaussian noise is the textbook choice,
            # but drawing it costs about 3.6x a uniform draw on these CPUs (49 against 14 ms for a batch's block1
            # map), which made the 128-px step 1.34x the default's (1.09x with these signs); after the heads' 4x4
            # convolutions the sum is near Gaussian anyway.
            # 16 signs from each random integer (one random draw per 16 values, not one each).
            words = keras.random.randint((shape[0], shape[1], shape[2], int(inputs.shape[-1]) // 16, 1), 0, 65536,
                                         seed=self.seed_generator, dtype="int32")
            bits = ops.bitwise_and(ops.right_shift(words, ops.arange(16, dtype="int32")), 1)
            signs = ops.equal(ops.reshape(bits, shape), 1)
            keep = ops.cast(ops.sqrt(alpha_bar), self.compute_dtype)
            spread = ops.cast(ops.sqrt(1.0 - alpha_bar) * self.noise_std, self.compute_dtype)
            return keep * inputs + ops.where(signs, -spread, spread)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            config = super().get_config()
            config.update({"noise_std": self.noise_std, "t_min": self.t_min, "t_max": self.t_max,
                           "beta_start": self.beta_start, "beta_end": self.beta_end, "max_share": self.max_share,
                           "seed": self.seed})
            return config

    return {"CaffePreprocess": CaffePreprocess, "MeanStdPooling2D": MeanStdPooling2D, "SignedSqrt": SignedSqrt,
            "PriorCorrection": PriorCorrection, "ReflectionPadding2D": ReflectionPadding2D, "BlurPool2D": BlurPool2D,
            "NoiseInjection": NoiseInjection, "MinibatchStdDev": MinibatchStdDev, "FeatureDiffusion": FeatureDiffusion}


def caffe_preprocess(**kwargs):
    """Return a CaffePreprocess layer (RGB 0..255 -> BGR minus ImageNet means)."""
    return layer_classes()["CaffePreprocess"](**kwargs)


def mean_std_pooling(**kwargs):
    """Return a MeanStdPooling2D layer (per-channel mean and standard deviation)."""
    return layer_classes()["MeanStdPooling2D"](**kwargs)


def signed_sqrt(**kwargs):
    """Return a SignedSqrt layer (sign(x) * sqrt(|x|), elementwise)."""
    return layer_classes()["SignedSqrt"](**kwargs)


def signed_sqrt_numpy(values, epsilon: float = 1e-6):
    """What a SignedSqrt layer computes, in NumPy (to adapt a head's normalisation on transformed features)."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    return np.sign(values) * np.sqrt(np.abs(values) + epsilon)


def prior_correction(log_prior, tau: float = 1.0, **kwargs):
    """Return a PriorCorrection layer (probabilities / prior**tau, renormalised)."""
    return layer_classes()["PriorCorrection"](log_prior=log_prior, tau=tau, **kwargs)


def prior_correction_numpy(probabilities, log_prior, tau: float = 1.0):
    """What a PriorCorrection layer computes, in NumPy (for choosing tau on stored probabilities)."""
    import numpy as np

    logits = np.log(np.maximum(np.asarray(probabilities, dtype=np.float64), 1e-30)) - tau * np.asarray(log_prior)
    logits -= logits.max(axis=-1, keepdims=True)
    exp = np.exp(logits)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def register_all() -> None:
    """Make sure every custom layer is registered before a model is loaded."""
    layer_classes()
