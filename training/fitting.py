"""The model and its fit: the likelihood chosen from the images, the network built from the
settings, ``model.fit`` with warm-up, early stopping and the NaN guard, and the model's own scores."""

from __future__ import annotations

import time

import numpy as np

from scoring.anomaly import reference_rows
from scoring.detector import score_images
from scoring.latent_prior import fit_latent_prior
from training import data as data_lib
from training.callbacks import EpochReporter, KLWarmup, NaNGuard
from training.config import TrainConfig

PARTS = ("train", "validation", "calibration", "holdout")


def choose_likelihood(cfg: TrainConfig, images: np.ndarray) -> tuple[str, int, str]:
    """(likelihood, grey levels, why) for ``cfg``'s ``auto`` settings, from the training images.

    Binary images get the Bernoulli (a continuous density on {0, 1} is degenerate). Pixels on a
    grid of grey levels (0-16 digits, 8-bit images) get the continuous Bernoulli *binned* to those
    levels: a probability per pixel, bounded, where a density on quantised pixels is unbounded.
    Anything else gets the continuous-Bernoulli density. A likelihood the user set is kept.
    """
    levels = data_lib.grey_levels(images) if cfg.pixel_levels is None else int(cfg.pixel_levels)
    if cfg.likelihood != "auto":
        kept = levels if cfg.likelihood == "continuous_bernoulli" else 0
        return cfg.likelihood, kept, "set by --likelihood"
    if levels == 2:
        return "bernoulli", 0, "the images are binary (only 0 and 1)"
    if levels > 2:
        return "continuous_bernoulli", levels, data_lib.levels_reason(images, levels)
    return "continuous_bernoulli", 0, "the pixels are continuous in [0, 1]"


def build_model(cfg: TrainConfig, data: data_lib.ImageData, semi_supervised: bool | None = None):
    import keras

    from training.model import VariationalAutoencoder, compile_model

    if cfg.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    likelihood, levels, why = choose_likelihood(cfg, data.images)
    if semi_supervised is None:  # some row of ``data`` has no label (the caller may know of other parts)
        semi_supervised = bool(cfg.conditional and data.labels is not None and unlabelled_rows(data))
    model = VariationalAutoencoder(
        data.image_shape,
        latent_dim=cfg.latent_dim,
        likelihood=likelihood,
        num_classes=len(data.class_names) if cfg.conditional else 0,
        class_names=data.class_names if cfg.conditional else None,
        architecture=cfg.model_architecture(data.image_shape, len(data)),
        pixel_levels=levels,
        pixel_scale=cfg.pixel_scale,
        pixel_brightest=data_lib.typical_brightest(data.images),
        reference_rows=reference_rows(len(data)),
        filters=cfg.filters,
        hidden_units=cfg.hidden_units,
        seed=cfg.seed,
        score_samples=cfg.score_samples,
        score_seed=cfg.seed,
        beta=cfg.kl_beta(),
        semi_supervised=semi_supervised,
        classifier_weight=cfg.classifier_loss_weight(data.image_shape),
    )
    compile_model(model, cfg.learning_rate, jit_compile=True if cfg.xla else "auto")
    model.likelihood_reason = why
    return model


def set_seeds(seed: int) -> None:
    import keras

    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def fit(cfg: TrainConfig, model, split: data_lib.Split | data_lib.TrainingSplit, sink=None, report: bool = True):
    """Runs ``model.fit`` on ``split.train`` with warm-up, early stopping on ``split.validation``'s
    neg ELBO (its only use) and the NaN guard; ``report``: a log line per epoch."""
    import keras

    from training.model import model_inputs

    def xy(part: data_lib.ImageData):
        return model_inputs(part.images, part.labels, cfg.conditional), np.zeros(len(part), np.float32)

    guard = NaNGuard()
    callbacks = [KLWarmup(cfg.kl_warmup), guard] + ([EpochReporter(cfg.epochs, sink)] if report else [])
    if cfg.early_stopping > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_neg_elbo",
                mode="min",
                patience=cfg.early_stopping,
                restore_best_weights=True,
                start_from_epoch=cfg.kl_warmup,
            )
        )
    started = time.perf_counter()
    if isinstance(split.train.images, np.memmap):  # on disk: stream batches from the memory map
        from training.streaming import MemmapBatches

        history = model.fit(
            MemmapBatches(split.train, cfg.batch_size, cfg.conditional, shuffle=True, seed=cfg.seed),
            validation_data=MemmapBatches(split.validation, cfg.batch_size, cfg.conditional),
            epochs=cfg.epochs,
            callbacks=callbacks,
            verbose=0,
        )
    else:
        x, y = xy(split.train)
        history = model.fit(
            x,
            y,
            validation_data=xy(split.validation),
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            callbacks=callbacks,
            verbose=0,
            shuffle=True,
        )
    elapsed = time.perf_counter() - started
    guard.raise_if_failed()
    model.kl_weight.assign(1.0)
    return history.history, elapsed / max(1, len(history.history.get("loss", [1])))


def part_scores(model, part: data_lib.ImageData) -> dict[str, np.ndarray]:
    """Every per-example score (``neg_elbo``, ``anomaly_score``, ...) with the model's own settings."""
    labels = part.labels if model.num_classes else None
    return score_images(model, part.images, labels, num_samples=model.score_samples, seed=model.score_seed)


def neg_elbo_scores(model, part: data_lib.ImageData) -> np.ndarray:
    """Per-example negative ELBO with the model's own scoring settings."""
    return part_scores(model, part)["neg_elbo"]


def unlabelled_rows(part: data_lib.ImageData) -> int:
    return 0 if part.labels is None else int((part.labels == data_lib.UNLABELLED).sum())


def labelled_parts(split: data_lib.TrainingSplit) -> data_lib.TrainingSplit:
    """The labelled rows of every part: what a conditional model's scores, calibration and latent prior
    need once semi-supervised training has learnt from all of them. Raises if a part has none."""
    parts = {}
    for name in PARTS:
        part = getattr(split, name)
        index = np.flatnonzero(part.labels != data_lib.UNLABELLED)
        if not len(index):
            raise data_lib.DataError(
                f"{part.source}: the {name} part ({len(part)} rows) has no labelled row, and a conditional model "
                "is calibrated and measured on labelled rows: label more rows or add more data"
            )
        parts[name] = part.subset(index)
    return data_lib.TrainingSplit(**parts)


def classifier_accuracy(model, part: data_lib.ImageData) -> float:
    """The share of ``part`` that a semi-supervised model's q(y|x) labels right."""
    predicted = np.asarray(model.classify(part.images)).argmax(axis=1)
    return float((predicted == part.labels).mean())


def fit_priors(cfg: TrainConfig, model, train: data_lib.ImageData) -> None:
    """The latent prior fitted to ``train``'s posteriors; a conditional model is scored against it
    (:func:`scoring.elbo.scoring_prior`), so this comes before any score."""
    model.latent_prior = fit_latent_prior(model, train.images, train.labels).to_config()
    if cfg.conditional:
        model.score_prior = "fitted"
