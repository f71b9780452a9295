"""The VAE and conditional VAE, in Keras 3 (``keras.ops`` only, so any backend trains it).

``call`` returns the two per-example ELBO terms ``[reconstruction_nll, kl]`` from one
reparameterised posterior sample; ``compute_loss`` weights the KL term (for warm-up) and
``fit`` does the rest. Encoder and decoder are separate functional sub-models, usable alone.
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from scoring import likelihoods
from scoring.elbo import kl_divergence

PACKAGE = "vae"
log = logging.getLogger(__name__)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Sampling(layers.Layer):
    """z = mean + exp(log_var / 2) * eps, with eps from the layer's own seeded generator."""

    def __init__(self, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        mean, log_var = inputs
        eps = keras.random.normal(ops.shape(mean), dtype=mean.dtype, seed=self.seed_generator)
        return mean + ops.exp(0.5 * log_var) * eps

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "seed": self.seed}


def downsampling_steps(image_shape: tuple[int, int, int]) -> int:
    """Stride-2 convolutions that keep the smallest feature map at least 4 pixels on a side."""
    height, width, _ = image_shape
    steps = 0
    while height % 2 == 0 and width % 2 == 0 and height // 2 >= 4 and width // 2 >= 4 and steps < 3:
        height, width, steps = height // 2, width // 2, steps + 1
    return steps


ARCHITECTURES = ("dense", "conv")


def check_architecture(name: str) -> str:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return name


def build_encoder(
    image_shape: tuple[int, int, int],
    latent_dim: int,
    num_classes: int,
    filters: int,
    hidden_units: int,
    architecture: str = "conv",
) -> keras.Model:
    image = keras.Input(shape=image_shape, name="image")
    inputs = [image]
    h = image
    if architecture == "conv":
        for i in range(downsampling_steps(image_shape)):
            h = layers.Conv2D(filters * 2**i, 3, strides=2, padding="same", activation="relu", name=f"conv_{i}")(h)
        h = layers.Flatten(name="flatten")(h)
    else:
        h = layers.Flatten(name="flatten")(h)
        h = layers.Dense(2 * hidden_units, activation="relu", name="dense_0")(h)
    if num_classes:
        label = keras.Input(shape=(num_classes,), name="label_one_hot")
        inputs.append(label)
        h = layers.Concatenate(name="with_label")([h, label])
    h = layers.Dense(hidden_units, activation="relu", name="hidden")(h)
    mean = layers.Dense(latent_dim, name="z_mean", dtype="float32")(h)
    log_var = layers.Dense(latent_dim, name="z_log_var", dtype="float32")(h)
    return keras.Model(inputs if num_classes else image, [mean, log_var], name="encoder")


def build_decoder(
    image_shape: tuple[int, int, int],
    latent_dim: int,
    num_classes: int,
    filters: int,
    hidden_units: int,
    likelihood: str,
    architecture: str = "conv",
) -> keras.Model:
    height, width, channels = image_shape
    out_channels = likelihoods.parameter_channels(likelihood, channels)
    steps = downsampling_steps(image_shape)
    small_h, small_w = height // 2**steps, width // 2**steps
    top_filters = filters * 2 ** max(steps - 1, 0)
    z = keras.Input(shape=(latent_dim,), name="z")
    inputs = [z]
    h = z
    if num_classes:
        label = keras.Input(shape=(num_classes,), name="label_one_hot")
        inputs.append(label)
        h = layers.Concatenate(name="with_label")([h, label])
    h = layers.Dense(hidden_units, activation="relu", name="hidden")(h)
    if architecture == "dense":
        h = layers.Dense(2 * hidden_units, activation="relu", name="dense_0")(h)
        h = layers.Dense(height * width * out_channels, name="project", dtype="float32")(h)
        params = layers.Reshape((height, width, out_channels), name="likelihood_params", dtype="float32")(h)
        return keras.Model(inputs if num_classes else z, params, name="decoder")
    h = layers.Dense(small_h * small_w * top_filters, activation="relu", name="project")(h)
    h = layers.Reshape((small_h, small_w, top_filters), name="unflatten")(h)
    for i in reversed(range(steps)):
        h = layers.Conv2DTranspose(filters * 2**i, 3, strides=2, padding="same", activation="relu", name=f"deconv_{i}")(
            h
        )
    params = layers.Conv2D(out_channels, 3, padding="same", name="likelihood_params", dtype="float32")(h)
    return keras.Model(inputs if num_classes else z, params, name="decoder")


def build_classifier(image_shape: tuple[int, int, int], num_classes: int, hidden_units: int) -> keras.Model:
    """q(y|x) of a semi-supervised conditional VAE: the logits of each class from the image alone."""
    image = keras.Input(shape=image_shape, name="image")
    h = layers.Flatten(name="flatten")(image)
    h = layers.Dense(2 * hidden_units, activation="relu", name="dense_0")(h)
    h = layers.Dense(hidden_units, activation="relu", name="hidden")(h)
    logits = layers.Dense(num_classes, name="logits", dtype="float32")(h)
    return keras.Model(image, logits, name="classifier")


@keras.saving.register_keras_serializable(package=PACKAGE)
class VariationalAutoencoder(keras.Model):
    """A VAE; with ``num_classes > 0`` a conditional VAE whose encoder and decoder see the label.

    Inputs: an image batch (N, H, W, C) in [0, 1], or for a conditional model a dict
    ``{"image": ..., "label": int labels}``. Everything needed to rebuild it, including the
    anomaly calibration and the scoring settings, lives in its config, so a saved ``.keras``
    file reloads with ``safe_mode=True``.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent_dim: int = 8,
        likelihood: str = "bernoulli",
        num_classes: int = 0,
        class_names: list[str] | None = None,
        filters: int = 32,
        hidden_units: int = 256,
        seed: int | None = None,
        calibration: dict[str, Any] | None = None,
        score_samples: int = 16,
        score_seed: int = 0,
        architecture: str = "conv",
        anomaly: dict[str, Any] | None = None,
        pixel_levels: int = 0,
        reference_rows: int = 0,
        pixel_scale: float | None = None,
        latent_prior: dict[str, Any] | None = None,
        pixel_brightest: float | None = None,
        beta: float = 1.0,
        semi_supervised: bool = False,
        classifier_weight: float = 1.0,
        score_prior: str = "standard",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.latent_dim = int(latent_dim)
        self.likelihood = likelihoods.check_likelihood(likelihood)
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(self.num_classes)]
        self.filters = int(filters)
        self.hidden_units = int(hidden_units)
        self.seed = seed
        self.calibration = calibration
        self.score_samples = int(score_samples)
        self.score_seed = int(score_seed)
        self.architecture = check_architecture(architecture)
        self.pixel_levels = int(pixel_levels)  # grey levels of the training data (0: continuous)
        self.anomaly = anomaly  # the anomaly score's fitted statistics (scoring.anomaly)
        self.latent_prior = latent_prior  # generation's fitted latent distribution (scoring.latent_prior)
        # the prior p(z|y) of the scores' KL term: "standard" N(0, I), or "fitted", the latent prior above
        # (a conditional model trained since it was introduced; scoring.elbo.scoring_prior)
        self.score_prior = str(score_prior)
        # how numeric pixels of the training data were scaled (None: the default rule,
        # training.data.validate); every job that feeds this model scales the same way
        self.pixel_scale = None if pixel_scale is None else float(pixel_scale)
        # the training images' typical (median) brightest pixel, after scaling: vae score's check that an
        # input's pixels are scaled as the training data's were (None: a model saved before it was kept)
        self.pixel_brightest = None if pixel_brightest is None else float(pixel_brightest)
        # the KL term's weight in the training loss once warm-up ends: 1 trains on the ELBO; below 1 the
        # latent carries more of each image (training.config.TrainConfig.beta). Scores always use the ELBO.
        self.beta = float(beta)
        # M2 of Kingma et al. (2014): rows whose label is -1 (unknown) are explained by every label,
        # weighted by the classifier q(y|x), which also learns from the labelled rows
        self.semi_supervised = bool(semi_supervised) and self.num_classes > 0
        self.classifier_weight = float(classifier_weight)
        # posterior means of training images, for the anomaly score's latent term (scoring.anomaly)
        self.reference_rows = int(reference_rows)
        self._build_layers(hidden_units, seed)
        self.built = True

    def _build_layers(self, hidden_units: int, seed: int | None) -> None:
        """The networks (encoder, decoder, and q(y|x) when semi-supervised) and the non-trainable weights."""
        self.encoder = build_encoder(
            self.image_shape, self.latent_dim, self.num_classes, self.filters, hidden_units, self.architecture
        )
        self.decoder = build_decoder(
            self.image_shape,
            self.latent_dim,
            self.num_classes,
            self.filters,
            hidden_units,
            self.likelihood,
            self.architecture,
        )
        if self.semi_supervised:
            self.classifier = build_classifier(self.image_shape, self.num_classes, hidden_units)
        self.sampling = Sampling(seed, name="sampling")
        self.kl_weight = self.add_weight(shape=(), initializer="ones", trainable=False, name="kl_weight")
        if self.reference_rows:
            self.reference_latents = self.add_weight(
                shape=(self.reference_rows, self.latent_dim),
                initializer="zeros",
                trainable=False,
                name="reference_latents",
            )

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> VariationalAutoencoder:
        config = dict(config)
        legacy = "pixel_levels" not in config and config.get("likelihood") == "continuous_bernoulli"
        if legacy and config.get("calibration"):
            # saved before the exact continuous-Bernoulli normaliser: its stored threshold and
            # p-values were fitted on scores this code no longer computes
            log.warning(
                "%s was calibrated with the old, clipped continuous-Bernoulli density: its threshold no longer "
                "fits its scores and is dropped (threshold, p_value and is_anomaly will be null); retrain it",
                config.get("name", "this model"),
            )
            config["calibration"] = None
        return cls(**config)

    def set_reference_latents(self, latents: np.ndarray) -> None:
        """Stores up to ``reference_rows`` posterior means (the rest of the weight stays zero)."""
        latents = np.asarray(latents, dtype=np.float32)
        if not self.reference_rows or len(latents) > self.reference_rows:
            raise ValueError(f"this model stores at most {self.reference_rows} reference latents, got {len(latents)}")
        padded = np.zeros((self.reference_rows, self.latent_dim), np.float32)
        padded[: len(latents)] = latents
        self.reference_latents.assign(padded)

    def reference_latents_array(self) -> np.ndarray:
        return np.asarray(ops.convert_to_numpy(self.reference_latents), dtype=np.float64)

    @property
    def is_conditional(self) -> bool:
        return self.num_classes > 0

    def _one_hot(self, labels):
        return ops.one_hot(ops.cast(labels, "int32"), self.num_classes)

    def split_inputs(self, inputs):
        """(images, one-hot labels or None) from whatever form ``call`` accepts."""
        if isinstance(inputs, dict):
            images, labels = inputs["image"], inputs.get("label")
        else:
            images, labels = inputs, None
        if self.is_conditional:
            if labels is None:
                raise ValueError("this is a conditional VAE: pass {'image': ..., 'label': ...}")
            return images, self._one_hot(labels)
        return images, None

    def encode(self, images, one_hot=None):
        """(mean, log_var) of q(z|x); accepts numpy arrays or tensors."""
        images = ops.convert_to_tensor(images, dtype="float32")
        if self.is_conditional:
            return self.encoder([images, ops.convert_to_tensor(one_hot, dtype="float32")])
        return self.encoder(images)

    def decode(self, z, one_hot=None):
        """The likelihood's parameters for latents ``z``; accepts numpy arrays or tensors."""
        z = ops.convert_to_tensor(z, dtype="float32")
        if self.is_conditional:
            return self.decoder([z, ops.convert_to_tensor(one_hot, dtype="float32")])
        return self.decoder(z)

    def classify(self, images):
        """q(y|x), (N, num_classes) class probabilities, of a semi-supervised model."""
        if not self.semi_supervised:
            raise ValueError("only a semi-supervised conditional VAE has a classifier q(y|x)")
        return ops.softmax(self.classifier(ops.convert_to_tensor(images, dtype="float32")))

    def _semi_supervised_terms(self, images, labels):
        """Per row [reconstruction, kl, kl of z, classifier cross-entropy, 1 if labelled]. A labelled row: its label's
        terms. An unlabelled row (label -1): the terms of every label weighted by q(y|x), and in the KL
        column also KL(q(y|x) || uniform), so that reconstruction + kl bounds -log p(x)."""
        k = self.num_classes
        labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
        known = labels >= 0
        logits = ops.cast(self.classifier(images), "float32")
        log_q = ops.log_softmax(logits, axis=-1)
        q = ops.exp(log_q)
        n = ops.shape(images)[0]
        every = ops.repeat(images, k, axis=0)  # row i with each label in turn
        one_hots = ops.tile(ops.eye(k, dtype="float32"), (n, 1))
        mean, log_var = self.encode(every, one_hots)
        params = self.decode(self.sampling([mean, log_var]), one_hots)
        rec = ops.reshape(
            likelihoods.negative_log_likelihood(every, ops.cast(params, "float32"), self.likelihood, self.pixel_levels),
            (n, k),
        )
        kl_z = ops.reshape(kl_divergence(mean, log_var), (n, k))
        given = ops.one_hot(ops.maximum(labels, 0), k)
        weights = ops.where(known[:, None], given, q)
        label_kl = ops.where(known, 0.0, ops.sum(q * log_q, axis=-1) + float(np.log(k)))
        cross_entropy = ops.where(known, -ops.sum(given * log_q, axis=-1), 0.0)
        kl = ops.sum(weights * kl_z, axis=-1)
        terms = [ops.sum(weights * rec, axis=-1), kl + label_kl, kl, cross_entropy, ops.cast(known, "float32")]
        return ops.stack(terms, axis=-1)

    def call(self, inputs, training=False):
        if self.semi_supervised and isinstance(inputs, dict):
            return self._semi_supervised_terms(inputs["image"], inputs["label"])
        images, one_hot = self.split_inputs(inputs)
        mean, log_var = self.encode(images, one_hot)
        z = self.sampling([mean, log_var])
        params = self.decode(z, one_hot)
        reconstruction = likelihoods.negative_log_likelihood(
            images, ops.cast(params, "float32"), self.likelihood, self.pixel_levels
        )
        return ops.stack([reconstruction, kl_divergence(mean, log_var)], axis=-1)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        y_pred = ops.cast(y_pred, "float32")
        if self.semi_supervised:  # the label's KL at full weight; the classifier's loss per labelled row
            reconstruction, kl, kl_z, cross_entropy, known = (y_pred[:, i] for i in range(5))
            labelled = ops.maximum(ops.sum(known), 1.0)
            elbo = ops.mean(reconstruction + (self.beta * self.kl_weight) * kl_z + (kl - kl_z))
            return elbo + self.classifier_weight * ops.sum(cross_entropy) / labelled
        return ops.mean(y_pred[:, 0] + (self.beta * self.kl_weight) * y_pred[:, 1])

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image_shape": list(self.image_shape),
            "latent_dim": self.latent_dim,
            "likelihood": self.likelihood,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "filters": self.filters,
            "hidden_units": self.hidden_units,
            "seed": self.seed,
            "calibration": self.calibration,
            "score_samples": self.score_samples,
            "score_seed": self.score_seed,
            "architecture": self.architecture,
            "anomaly": self.anomaly,
            "pixel_levels": self.pixel_levels,
            "reference_rows": self.reference_rows,
            "pixel_scale": self.pixel_scale,
            "latent_prior": self.latent_prior,
            "pixel_brightest": self.pixel_brightest,
            "beta": self.beta,
            "semi_supervised": self.semi_supervised,
            "score_prior": self.score_prior,
            "classifier_weight": self.classifier_weight,
        }


# Compile-time metrics over the per-example terms that ``call`` returns.
@keras.saving.register_keras_serializable(package=PACKAGE)
def reconstruction(y_true, y_pred):
    return y_pred[:, 0]


@keras.saving.register_keras_serializable(package=PACKAGE)
def kl(y_true, y_pred):
    return y_pred[:, 1]


@keras.saving.register_keras_serializable(package=PACKAGE)
def neg_elbo(y_true, y_pred):
    return y_pred[:, 0] + y_pred[:, 1]


def compile_model(model: VariationalAutoencoder, learning_rate: float = 1e-3, jit_compile: bool | str = "auto") -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        metrics=[reconstruction, kl, neg_elbo],
        jit_compile=jit_compile,
    )


def model_inputs(images: np.ndarray, labels: np.ndarray | None, conditional: bool):
    """The ``x`` that ``fit`` and ``call`` expect for this kind of model."""
    if conditional:
        return {"image": images, "label": labels.astype("int32")}
    return images
