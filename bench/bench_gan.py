"""GAN train-step time: our DCGAN (DiffAugment + spectral norm + EMA) versus the keras-io DCGAN reference.

The reference is keras-io's `examples/generative/dcgan_overriding_train_step.py` (64x64 CelebA model:
G 8x8x128 -> 128 -> 256 -> 512 channels, D 64 -> 128 -> 128, noisy labels, Adam 1e-4), reimplemented here.
Both train on the same random 64-px batch of 32 in this process, alternating timing rounds so that
load from other processes hits both alike. Target: our step at most as slow as the reference (<= 1.0x).

Run with `python3 -m bench` (all benchmarks) or `python3 bench/bench_gan.py`.
"""

from __future__ import annotations

import os
import statistics
import time

IMAGE_SIZE = 64
BATCH_SIZE = 32
LATENT_DIM = 128
WARMUP_STEPS = 1
STEPS_PER_ROUND = 1
ROUNDS = 3


def keras_io_dcgan(latent_dim: int = LATENT_DIM):
    """The keras-io DCGAN (generator, discriminator and its train_step), as in dcgan_overriding_train_step.py."""
    import keras
    import tensorflow as tf
    from keras import layers

    discriminator = keras.Sequential([
        keras.Input(shape=(64, 64, 3)),
        layers.Conv2D(64, kernel_size=4, strides=2, padding="same"),
        layers.LeakyReLU(negative_slope=0.2),
        layers.Conv2D(128, kernel_size=4, strides=2, padding="same"),
        layers.LeakyReLU(negative_slope=0.2),
        layers.Conv2D(128, kernel_size=4, strides=2, padding="same"),
        layers.LeakyReLU(negative_slope=0.2),
        layers.Flatten(),
        layers.Dropout(0.2),
        layers.Dense(1, activation="sigmoid"),
    ], name="discriminator")
    generator = keras.Sequential([
        keras.Input(shape=(latent_dim,)),
        layers.Dense(8 * 8 * 128),
        layers.Reshape((8, 8, 128)),
        layers.Conv2DTranspose(128, kernel_size=4, strides=2, padding="same"),
        layers.LeakyReLU(negative_slope=0.2),
        layers.Conv2DTranspose(256, kernel_size=4, strides=2, padding="same"),
        layers.LeakyReLU(negative_slope=0.2),
        layers.Conv2DTranspose(512, kernel_size=4, strides=2, padding="same"),
        layers.LeakyReLU(negative_slope=0.2),
        layers.Conv2D(3, kernel_size=5, padding="same", activation="sigmoid"),
    ], name="generator")

    class ReferenceGAN(keras.Model):
        """keras-io's GAN: one discriminator step on real+fake with noisy labels, one generator step."""

        def __init__(self, discriminator, generator, latent_dim):
            super().__init__()
            self.discriminator = discriminator
            self.generator = generator
            self.latent_dim = latent_dim
            self.seed_generator = keras.random.SeedGenerator(1337)

        def compile(self, d_optimizer, g_optimizer, loss_fn):
            super().compile()
            self.d_optimizer = d_optimizer
            self.g_optimizer = g_optimizer
            self.loss_fn = loss_fn
            self.d_loss_metric = keras.metrics.Mean(name="d_loss")
            self.g_loss_metric = keras.metrics.Mean(name="g_loss")

        @property
        def metrics(self):
            return [self.d_loss_metric, self.g_loss_metric]

        def train_step(self, data):
            real_images = data[0] if isinstance(data, tuple) else data
            batch_size = tf.shape(real_images)[0]
            random_latent_vectors = keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)
            generated_images = self.generator(random_latent_vectors)
            combined_images = tf.concat([generated_images, real_images], axis=0)
            labels = tf.concat([tf.ones((batch_size, 1)), tf.zeros((batch_size, 1))], axis=0)
            labels += 0.05 * keras.random.uniform(tf.shape(labels), seed=self.seed_generator)
            with tf.GradientTape() as tape:
                predictions = self.discriminator(combined_images)
                d_loss = self.loss_fn(labels, predictions)
            grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
            self.d_optimizer.apply_gradients(zip(grads, self.discriminator.trainable_weights))
            random_latent_vectors = keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)
            misleading_labels = tf.zeros((batch_size, 1))
            with tf.GradientTape() as tape:
                predictions = self.discriminator(self.generator(random_latent_vectors))
                g_loss = self.loss_fn(misleading_labels, predictions)
            grads = tape.gradient(g_loss, self.generator.trainable_weights)
            self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_weights))
            self.d_loss_metric.update_state(d_loss)
            self.g_loss_metric.update_state(g_loss)
            return {"d_loss": self.d_loss_metric.result(), "g_loss": self.g_loss_metric.result()}

    model = ReferenceGAN(discriminator, generator, latent_dim)
    model.compile(
        d_optimizer=keras.optimizers.Adam(learning_rate=0.0001),
        g_optimizer=keras.optimizers.Adam(learning_rate=0.0001),
        loss_fn=keras.losses.BinaryCrossentropy(),
    )
    return model


def _time_steps(model, images, labels, steps: int) -> float:
    """Seconds per train step over `steps` calls of train_on_batch (process CPU time when BENCH_CPU_TIME=1)."""
    clock = time.process_time if os.environ.get("BENCH_CPU_TIME") == "1" else time.perf_counter
    start = clock()
    for _ in range(steps):
        model.train_on_batch(images, labels)
    return (clock() - start) / steps


def run() -> list[dict]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from genre_core import gan, gan_models

    rng = np.random.default_rng(0)
    images = rng.uniform(-1.0, 1.0, (BATCH_SIZE, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    labels = np.zeros(BATCH_SIZE, dtype="int32")
    config = gan.GanConfig(image_size=IMAGE_SIZE, batch_size=BATCH_SIZE, latent_dim=LATENT_DIM,
                           augment_probability=0.5)
    ours = gan_models.make_gan(gan._ModelShape(config, 1))
    reference = keras_io_dcgan()
    for model in (reference, ours):
        _time_steps(model, images, labels, WARMUP_STEPS)
    baseline, candidate = [], []
    for _ in range(ROUNDS):
        baseline.append(_time_steps(reference, images, labels, STEPS_PER_ROUND))
        candidate.append(_time_steps(ours, images, labels, STEPS_PER_ROUND))
    baseline_s, candidate_s = statistics.median(baseline), statistics.median(candidate)
    ratio = candidate_s / baseline_s
    return [{
        "name": f"gan train step {IMAGE_SIZE}px batch {BATCH_SIZE} (ours vs keras-io DCGAN)",
        "baseline_s": round(baseline_s, 4),
        "candidate_s": round(candidate_s, 4),
        "ratio": round(ratio, 3),
        "target": "<=1.0x",
        "ok": bool(ratio <= 1.0),
        "note": f"median s/step of {ROUNDS} alternating rounds x {STEPS_PER_ROUND} steps; ours adds DiffAugment "
                "(p=0.5), spectral norm and an EMA update",
    }]


if __name__ == "__main__":
    for row in run():
        print(row)
