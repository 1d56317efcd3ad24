"""GAN quality: KID and FID between generated and real images in a fixed, named feature space.

Numbers are only comparable within one feature space, so every result carries its name, for example
`{"kid": 0.12, "kid_std": 0.01, "feature_space": "hed_vgg16_pool345@128"}`.

- `inception_v3_pool@299`: the usual InceptionV3 pool features, used when Keras's ImageNet weights file is
  already on this machine (never downloaded here).
- `hed_vgg16_pool345@<size>`: the offline pretrained HED-VGG16 (`backbones.hed_vgg16`), images resized to
  `size`, global-average-pooled block3, block4 and block5 pool outputs concatenated (1,280 numbers).
- `hed_vgg16_conv345_rms@64` (`FIXED_SPACE`, issue 13): the one fixed space in which numbers from this project
  and from elsewhere compare. HED-VGG16 at 64x64 input with its Caffe preprocessing, global average pooling
  of block3_conv3, block4_conv3 and block5_conv3 (1,280 values), every feature divided by one global scale
  (the root mean square of the real set's features), KID averaged over 10 random subsets of 200 per set
  (`fixed_kid`).

Beside KID: `diversity` (mean pairwise distance of scaled features, generated against real: partial mode
collapse shows as a ratio well below 1), `recognisability` (the share of images that a real-painting
classifier calls by the wanted genre) and `stripes` (how much more of the images' fine detail lies in
horizontal and vertical stripes than in real images': 1 is as real, the projected generator's
cross-hatching without noise inputs scores 2.9-5.7 on the kit).

KID (Binkowski et al. 2018) is the unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3,
averaged over random subsets, with its spread; it is unbiased on small sets, which is why gan_ada.py uses it.
FID needs many images to be meaningful, so it is only computed with at least `MIN_FID_IMAGES` per set.
"""

from __future__ import annotations

import numpy as np

from genre_core.models import backbones
from genre_core.runs import heartbeat

MIN_FID_IMAGES = 2048
INCEPTION_WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
FEATURE_SPACES = ("auto", "inception_v3", "hed_vgg16", "hed_vgg16_fixed")
HED_POOL_LAYERS = ("block3_pool", "block4_pool", "block5_pool")
FIXED_LAYERS = ("block3_conv3", "block4_conv3", "block5_conv3")
FIXED_IMAGE_SIZE = 64
FIXED_SPACE = "hed_vgg16_conv345_rms@64"
FIXED_LAYER_WIDTHS = (256, 512, 512)  # channels of FIXED_LAYERS, in the order the fixed features hold them
FIXED_DEPTHS = ("block3", "block4", "block5")  # names of FIXED_LAYERS for the KID by depth
FIXED_SUBSETS = 10
FIXED_SUBSET_SIZE = 200
# `stripes`: fine detail at periods of 2 to 2.7 px (the larger of |fx|, |fy| in 0.37..0.5 cycles per pixel),
# on the two frequency axes (within STRIPE_AXIS_BINS bins of them: horizontal and vertical stripes) or off them.
STRIPE_BAND = (0.37, 0.5)
STRIPE_AXIS_BINS = 1.5

_EXTRACTORS: dict[tuple[str, int], "FeatureExtractor"] = {}
_HED_NETWORKS: dict[int, object] = {}  # image size -> HED-VGG16 giving every pooled layer that a space reads


def _check_features(features, name: str) -> np.ndarray:
    """Return features as a finite 2-D float64 array, or raise ValueError naming the set."""
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name}: features must be a 2-D array (samples x dimensions), got shape {array.shape}")
    if len(array) < 2:
        raise ValueError(f"{name}: at least 2 samples are needed, got {len(array)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: features contain NaN or infinite values")
    return array


def kid(features_a, features_b, subsets: int = 50, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance between two feature sets -> (mean, std) of unbiased MMD^2 over subsets."""
    a = _check_features(features_a, "first feature set")
    b = _check_features(features_b, "second feature set")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"need subsets >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    size = min(len(a), len(b), int(subset_size))
    dimension = a.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(int(subsets))
    for index in range(int(subsets)):
        x = a[rng.choice(len(a), size, replace=False)]
        y = b[rng.choice(len(b), size, replace=False)]
        kernel_xx = (x @ x.T / dimension + 1.0) ** 3
        kernel_yy = (y @ y.T / dimension + 1.0) ** 3
        kernel_xy = (x @ y.T / dimension + 1.0) ** 3
        # Unbiased estimate: the diagonals of the within-set kernels are left out.
        within = (kernel_xx.sum() - np.trace(kernel_xx) + kernel_yy.sum() - np.trace(kernel_yy)) / (size * (size - 1))
        values[index] = within - 2.0 * kernel_xy.mean()
    return float(values.mean()), float(values.std())


def fid(features_a, features_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (call only with enough samples)."""
    from scipy import linalg

    a = _check_features(features_a, "first feature set")
    b = _check_features(features_b, "second feature set")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    if not np.all(np.isfinite(root)):
        # A near-singular product: nudge both covariances as the reference implementation does.
        offset = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    root = np.real(root)
    return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(root))


def compare(generated_features, real_features, feature_space: str, subsets: int = 50,
            subset_size: int = 1000, seed: int = 0) -> dict:
    """KID (and FID when both sets are large enough) with the feature space named beside the numbers."""
    kid_mean, kid_std = kid(generated_features, real_features, subsets, subset_size, seed)
    result = {
        "kid": kid_mean,
        "kid_std": kid_std,
        "fid": None,
        "feature_space": feature_space,
        "n_generated": int(len(generated_features)),
        "n_real": int(len(real_features)),
    }
    if min(len(generated_features), len(real_features)) >= MIN_FID_IMAGES:
        result["fid"] = fid(generated_features, real_features)
    else:
        result["fid_note"] = f"FID not computed: needs at least {MIN_FID_IMAGES} images per set"
    return result


def fixed_scale(real_features) -> float:
    """The fixed space's one global scale: the root mean square of the real set's features."""
    real = _check_features(real_features, "real feature set")
    scale = float(np.sqrt(np.mean(real ** 2)))
    if scale <= 0.0:
        raise ValueError("real feature set: all features are zero; no scale can be taken from it")
    return scale


def fixed_kid(generated_features, real_features, seed: int = 0, subsets: int = FIXED_SUBSETS,
              subset_size: int = FIXED_SUBSET_SIZE) -> dict:
    """KID in the fixed space (`FIXED_SPACE`): both sets divided by the real set's RMS, then unbiased MMD^2
    over `subsets` random subsets of `subset_size` per set (smaller when a set is smaller)."""
    scale = fixed_scale(real_features)
    generated = _check_features(generated_features, "generated feature set") / scale
    real = np.asarray(real_features, dtype=np.float64) / scale
    mean, std = kid(generated, real, subsets=subsets, subset_size=subset_size, seed=seed)
    return {"kid": mean, "kid_std": std, "feature_space": FIXED_SPACE, "scale": scale,
            "subset_size": int(min(subset_size, len(generated), len(real))), "subsets": int(subsets),
            "n_generated": int(len(generated)), "n_real": int(len(real))}


def fixed_kid_by_depth(generated_features, real_features, seed: int = 0, subsets: int = FIXED_SUBSETS,
                       subset_size: int = FIXED_SUBSET_SIZE) -> dict[str, float]:
    """The fixed space's KID one layer at a time ({"block3": kid, "block4": kid, "block5": kid}): each layer's
    averages (FIXED_LAYERS, held in that order in the fixed features) scaled by that layer's own real RMS, as
    `fixed_kid` scales the three together. block3_conv3 reads texture; block5_conv3, a 4x4 map of a 64-px image,
    reads what is where in the picture (its layout). On the kit, the late rises of the landscape GAN's KID were
    in block5 (docs/gan-measurements.md, "Where the late rise lives")."""
    generated = _check_features(generated_features, "generated feature set")
    real = _check_features(real_features, "real feature set")
    width = sum(FIXED_LAYER_WIDTHS)
    for features, name in ((generated, "generated feature set"), (real, "real feature set")):
        if features.shape[1] != width:
            widths = " + ".join(map(str, FIXED_LAYER_WIDTHS))
            raise ValueError(f"{name}: the fixed space has {width} features a row ({widths} for "
                             f"{', '.join(FIXED_LAYERS)}), got {features.shape[1]}")
    result, start = {}, 0
    for depth, count in zip(FIXED_DEPTHS, FIXED_LAYER_WIDTHS):
        columns = slice(start, start + count)
        result[depth] = fixed_kid(generated[:, columns], real[:, columns], seed=seed, subsets=subsets,
                                  subset_size=subset_size)["kid"]
        start += count
    return result


def mean_pairwise_distance(features) -> float:
    """Mean Euclidean distance between all pairs of rows (how spread out a set of images is)."""
    array = _check_features(features, "feature set")
    squared = np.sum(array ** 2, axis=1)
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2.0 * array @ array.T, 0.0))
    count = len(array)
    return float(distances.sum() / (count * (count - 1)))


def diversity(generated_features, real_features) -> dict:
    """Spread of generated images against real ones in the same space: mean pairwise distance of each set
    (features divided by the real set's RMS) and their ratio; well below 1 means partial mode collapse."""
    scale = fixed_scale(real_features)
    generated = mean_pairwise_distance(np.asarray(generated_features, dtype=np.float64) / scale)
    real = mean_pairwise_distance(np.asarray(real_features, dtype=np.float64) / scale)
    return {"generated": generated, "real": real, "ratio": generated / real if real > 0 else float("nan")}


def power_spectrum(images) -> np.ndarray:
    """The mean power spectrum (numpy FFT layout) of square images (N, S, S, 3; uint8, or floats in [-1, 1]),
    each brought to a range of 1, turned grey, its mean removed and a Hann window applied (so the borders add
    no stripes)."""
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[1] != array.shape[2] or array.shape[-1] != 3 or not len(array):
        raise ValueError(f"power spectrum: expected square RGB images (N, S, S, 3), got shape {array.shape}")
    grey = array.astype(np.float64).mean(axis=-1) / (255.0 if array.dtype == np.uint8 else 2.0)
    grey -= grey.mean(axis=(1, 2), keepdims=True)
    window = np.hanning(grey.shape[1])
    return (np.abs(np.fft.fft2(grey * np.outer(window, window))) ** 2).mean(axis=0)


def stripes(generated, real_spectrum) -> dict:
    """Axis-aligned stripes in generated images, against real ones (`power_spectrum` of real images of the
    same size): at periods of 2 to 2.7 px (STRIPE_BAND), the
    power on the two frequency axes and off them, each as a multiple of the real images'; `ratio` is the first
    over the second: 1 when fine detail is as much in horizontal and vertical stripes as in real paintings,
    above 1 for cross-hatching."""
    real_spectrum = np.asarray(real_spectrum, dtype=np.float64)
    generated = np.asarray(generated)
    spectrum = power_spectrum(generated)
    if real_spectrum.shape != spectrum.shape:
        raise ValueError(f"stripes: real spectrum of shape {real_spectrum.shape} for images of "
                         f"{generated.shape[1]} px")
    size = spectrum.shape[0]
    frequencies = np.fft.fftfreq(size)
    fy, fx = np.meshgrid(frequencies, frequencies, indexing="ij")
    radius = np.maximum(np.abs(fy), np.abs(fx))
    band = (radius >= STRIPE_BAND[0]) & (radius <= STRIPE_BAND[1])
    on_axis = (np.abs(fy) <= STRIPE_AXIS_BINS / size) | (np.abs(fx) <= STRIPE_AXIS_BINS / size)
    shares = {}
    for name, mask in (("axis", band & on_axis), ("off_axis", band & ~on_axis)):
        real = real_spectrum[mask].sum()
        shares[name] = float(spectrum[mask].sum() / real) if real > 0 else float("nan")
    ratio = shares["axis"] / shares["off_axis"] if shares["off_axis"] > 0 else float("nan")
    return {**shares, "ratio": float(ratio)}


def _resize_for(classifier, images) -> np.ndarray:
    """Bring uint8 images to the classifier's input size with one fixed resize (PIL bicubic)."""
    from PIL import Image

    width, height = classifier.size
    images = np.asarray(images)
    if images.shape[1:3] == (height, width):
        return images.astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(np.asarray(image, np.uint8), "RGB").resize(
        (width, height), Image.BICUBIC)) for image in images])


def recognisability(classifier, images, genre: str, batch_size: int = 32) -> dict:
    """The share of `images` (uint8 (N, H, W, 3), any size) that `classifier` calls `genre`.

    `classifier` is a `classify.Classifier` or anything with `.classes`, `.size` (width, height) and
    `.predict_arrays(uint8 batch) -> probabilities`; images are resized to its input size first."""
    classes = list(classifier.classes)
    if genre not in classes:
        raise ValueError(f"the classifier does not know genre {genre!r}; its classes are: {', '.join(classes)}")
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"images must have shape (N, H, W, 3) with N >= 1, got {images.shape}")
    predicted = []
    for start in range(0, len(images), batch_size):
        probabilities = classifier.predict_arrays(_resize_for(classifier, images[start:start + batch_size]))
        predicted.append(np.argmax(np.asarray(probabilities), axis=1))
        heartbeat.beat()
    predicted = np.concatenate(predicted)
    index = classes.index(genre)
    return {"share": float(np.mean(predicted == index)), "n": int(len(predicted)), "genre": genre}


def resolve_feature_space(name: str = "auto") -> str:
    """Turn "auto" into "inception_v3" when its weights are on this machine, else "hed_vgg16"."""
    if name not in FEATURE_SPACES:
        raise ValueError(f"unknown feature space {name!r}; choose one of {FEATURE_SPACES}")
    if name == "auto":
        return "inception_v3" if backbones.keras_cached_weights(INCEPTION_WEIGHTS_FILE) else "hed_vgg16"
    return name


class FeatureExtractor:
    """A fixed pretrained network turning uint8 RGB images into feature vectors for KID/FID."""

    def __init__(self, name: str = "auto", image_size: int = 128, batch_size: int = 64):
        self.kind = resolve_feature_space(name)
        if self.kind == "inception_v3":
            self.image_size = 299
            self.name = "inception_v3_pool@299"
        elif self.kind == "hed_vgg16_fixed":
            # The fixed space ignores `image_size`: its numbers compare only at 64 px.
            self.image_size = FIXED_IMAGE_SIZE
            self.name = FIXED_SPACE
        else:
            if not 32 <= int(image_size) <= 512:
                raise ValueError(f"feature image size {image_size} is outside 32..512")
            self.image_size = int(image_size)
            self.name = f"hed_vgg16_pool345@{self.image_size}"
        self.batch_size = int(batch_size)
        self._model = None

    def _build(self):
        """Build the feature model on first use."""
        import keras

        shape = (self.image_size, self.image_size, 3)
        if self.kind == "inception_v3":
            weights = backbones.keras_cached_weights(INCEPTION_WEIGHTS_FILE)
            if weights is None:
                raise backbones.WeightsUnavailableError(f"InceptionV3 weights {INCEPTION_WEIGHTS_FILE} are not cached")
            return keras.applications.InceptionV3(include_top=False, weights=str(weights), input_shape=shape,
                                                  pooling="avg")
        return _hed_network(self.image_size)

    @property
    def layers(self) -> tuple[str, ...]:
        """The HED-VGG16 layers whose global averages make this space (empty for InceptionV3)."""
        return {"hed_vgg16": HED_POOL_LAYERS, "hed_vgg16_fixed": FIXED_LAYERS}.get(self.kind, ())

    def __call__(self, images) -> np.ndarray:
        """Features (N, D) float64 for uint8 or 0..255 float images (N, H, W, 3) of any size."""
        return extract_many(images, [self])[0]

    def _raw(self, images) -> list:
        """One pass of the network: a list of float64 output arrays (one per pooled layer for HED)."""
        import keras
        import tensorflow as tf

        if self._model is None:
            self._model = self._build()
        outputs = []
        for start in range(0, len(images), self.batch_size):
            batch = tf.convert_to_tensor(images[start:start + self.batch_size], dtype=tf.float32)
            batch = tf.image.resize(batch, (self.image_size, self.image_size), antialias=True)
            if self.kind == "inception_v3":
                batch = keras.applications.inception_v3.preprocess_input(batch)
            else:
                batch = keras.applications.vgg16.preprocess_input(batch)
            result = self._model(batch, training=False)
            outputs.append([np.asarray(item, dtype=np.float64) for item in (result if isinstance(result, (list, tuple))
                                                                              else [result])])
            heartbeat.beat()  # A KID feature pass inside a GAN epoch is progress of the job.
        return [np.concatenate([batch[index] for batch in outputs]) for index in range(len(outputs[0]))]


def _hed_network(image_size: int):
    """HED-VGG16 at `image_size` giving the global average of every layer any HED space reads (built once)."""
    import keras

    if image_size not in _HED_NETWORKS:
        vgg = backbones.hed_vgg16((image_size, image_size, 3))
        names = HED_POOL_LAYERS + FIXED_LAYERS
        pooled = [keras.layers.GlobalAveragePooling2D(name=f"gap_{name}")(vgg.get_layer(name).output) for name in names]
        _HED_NETWORKS[image_size] = keras.Model(vgg.input, pooled, name=f"hed_vgg16_pooled_{image_size}")
    return _HED_NETWORKS[image_size]


def extract_many(images, extractors) -> list[np.ndarray]:
    """Features of the same images in several spaces; HED spaces of one image size share one network pass."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (N, H, W, 3), got {images.shape}")
    if len(images) == 0:
        return [np.zeros((0, 0)) for _ in extractors]
    results: list = [None] * len(extractors)
    passes: dict[int, dict] = {}
    order = HED_POOL_LAYERS + FIXED_LAYERS
    for position, extractor in enumerate(extractors):
        if not extractor.layers:
            results[position] = extractor._raw(images)[0]
            continue
        if extractor.image_size not in passes:
            passes[extractor.image_size] = dict(zip(order, extractor._raw(images)))
        pooled = passes[extractor.image_size]
        results[position] = np.concatenate([pooled[name] for name in extractor.layers], axis=1)
    return results


def feature_extractor(name: str = "auto", image_size: int = 128) -> FeatureExtractor:
    """Return a shared FeatureExtractor for (name, size), building its network once per process."""
    key = (resolve_feature_space(name), int(image_size))
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = FeatureExtractor(name, image_size)
    return _EXTRACTORS[key]
