"""Test-split likelihood and training speed of the default VAE against a keras-io-style reference.

Both models train for the same number of epochs on the same digits split and are scored by the
same library functions (negative ELBO with the model's posterior samples, IWAE with K = 1000).

    .venv/bin/python benchmarks/train_quality.py [--epochs 60] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers, ops  # noqa: E402

from scoring.detector import score_images  # noqa: E402
from training import data  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.fitting import (
    build_model,
    fit,
    set_seeds,  # noqa: E402
)


class KerasIoVAE(keras.Model):
    """The keras-io ``examples/generative/vae.py`` architecture, adapted to 8x8 inputs: conv 32/64
    stride 2, Dense(16), a 2-D latent, a transposed-conv decoder, summed binary cross-entropy."""

    likelihood = "bernoulli"
    num_classes = 0

    def __init__(self, latent_dim: int = 2, seed: int = 0) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        x = keras.Input((8, 8, 1))
        h = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
        h = layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")(h)
        h = layers.Dense(16, activation="relu")(layers.Flatten()(h))
        self.encoder = keras.Model(x, [layers.Dense(latent_dim)(h), layers.Dense(latent_dim)(h)])
        z = keras.Input((latent_dim,))
        g = layers.Reshape((2, 2, 64))(layers.Dense(2 * 2 * 64, activation="relu")(z))
        g = layers.Conv2DTranspose(64, 3, strides=2, padding="same", activation="relu")(g)
        g = layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu")(g)
        self.decoder = keras.Model(z, layers.Conv2DTranspose(1, 3, padding="same")(g))  # logits
        self.seed_generator = keras.random.SeedGenerator(seed)

    def encode(self, images, one_hot=None):
        return self.encoder(ops.convert_to_tensor(images, "float32"))

    def decode(self, z, one_hot=None):
        return self.decoder(ops.convert_to_tensor(z, "float32"))

    def call(self, x):
        mean, log_var = self.encoder(x)
        z = mean + ops.exp(0.5 * log_var) * keras.random.normal(ops.shape(mean), seed=self.seed_generator)
        logits = self.decoder(z)
        rec = ops.sum(ops.reshape(ops.softplus(logits) - x * logits, (ops.shape(x)[0], -1)), axis=1)
        kl = -0.5 * ops.sum(1 + log_var - mean**2 - ops.exp(log_var), axis=1)
        return ops.stack([rec, kl], axis=-1)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return ops.mean(y_pred[:, 0] + y_pred[:, 1])


def evaluate(model, test: data.ImageData, samples: int, seed: int) -> dict[str, float]:
    scores = score_images(model, test.images, num_samples=samples, seed=seed, iwae_k=1000, batch_size=90)
    return {"neg_elbo": float(scores["neg_elbo"].mean()), "iwae_1000": float(scores["iwae_nll"].mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    split = data.split(data.load_digits(), seed=args.seed)
    rows = []
    configs = {
        "this project, defaults (dense, z = 16, continuous Bernoulli binned to 17 levels)": {},
        "this project, conv, z = 2, binned continuous Bernoulli (the old architecture)": {
            "architecture": "conv",
            "latent_dim": 2,
        },
        "this project, conv, Bernoulli, z = 2 (the reference's likelihood and latent)": {
            "architecture": "conv",
            "likelihood": "bernoulli",
            "latent_dim": 2,
        },
        "this project, dense, Bernoulli, z = 16": {"likelihood": "bernoulli"},
    }
    for label, overrides in configs.items():
        cfg = TrainConfig(epochs=args.epochs, seed=args.seed, **overrides)
        set_seeds(cfg.seed)
        model = build_model(cfg, split.train)
        history, seconds_per_epoch = fit(cfg, model, split)
        rows.append(
            (label, len(history["loss"]), evaluate(model, split.test, cfg.score_samples, cfg.seed), seconds_per_epoch)
        )

    set_seeds(args.seed)
    reference = KerasIoVAE(seed=args.seed)
    reference.compile(optimizer=keras.optimizers.Adam())
    started = time.perf_counter()
    reference.fit(split.train.images, np.zeros(len(split.train)), epochs=args.epochs, batch_size=128, verbose=0)
    reference_spe = (time.perf_counter() - started) / args.epochs
    rows.append(
        (
            "keras-io style reference (Bernoulli, z = 2)",
            args.epochs,
            evaluate(reference, split.test, TrainConfig().score_samples, args.seed),
            reference_spe,
        )
    )

    print(
        f"digits, {len(split.train)} train / {len(split.test)} test images, seed {args.seed}, "
        f"backend {keras.backend.backend()}, {args.epochs} epochs max"
    )
    print("| model | epochs run | test neg ELBO (nats) | test IWAE K=1000 (nats) | s / epoch | vs reference |")
    print("|---|---|---|---|---|---|")
    for label, epochs, result, spe in rows:
        print(
            f"| {label} | {epochs} | {result['neg_elbo']:.2f} | {result['iwae_1000']:.2f} | {spe:.2f} | "
            f"{spe / reference_spe:.1f}x |"
        )
    print("Bernoulli and binned continuous-Bernoulli nats are not comparable: compare rows of the same likelihood.")


if __name__ == "__main__":
    main()
