"""The training job: fit, calibrate, log to MLflow, register, promote."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from scoring.calibration import Calibration
from scoring.elbo import score_images
from training import data as data_lib
from training import registry
from training.callbacks import EpochReporter, KLWarmup, NaNGuard
from training.config import PROMOTE_CHOICES, TrainConfig

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_id: str
    model_name: str
    version: str
    promoted: bool
    promotion_reason: str
    validation_neg_elbo: float
    test_neg_elbo: float
    threshold: float
    seconds_per_epoch: float
    epochs_run: int
    model: object = field(repr=False)
    split: data_lib.Split = field(repr=False)


def build_model(cfg: TrainConfig, data: data_lib.ImageData):
    import keras

    from training.model import VariationalAutoencoder, compile_model

    if cfg.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    model = VariationalAutoencoder(
        data.image_shape,
        latent_dim=cfg.latent_dim,
        likelihood=cfg.likelihood,
        num_classes=len(data.class_names) if cfg.conditional else 0,
        class_names=data.class_names if cfg.conditional else None,
        architecture=cfg.architecture,
        filters=cfg.filters,
        hidden_units=cfg.hidden_units,
        seed=cfg.seed,
        score_samples=cfg.score_samples,
        score_seed=cfg.seed,
    )
    compile_model(model, cfg.learning_rate, jit_compile=True if cfg.xla else "auto")
    return model


def set_seeds(seed: int) -> None:
    import keras

    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def fit(cfg: TrainConfig, model, split: data_lib.Split, sink=None):
    """Runs ``model.fit`` with warm-up, early stopping on validation neg ELBO and the NaN guard."""
    import keras

    from training.model import model_inputs

    def xy(part: data_lib.ImageData):
        return model_inputs(part.images, part.labels, cfg.conditional), np.zeros(len(part), np.float32)

    guard = NaNGuard()
    callbacks = [KLWarmup(cfg.kl_warmup), guard, EpochReporter(cfg.epochs, sink)]
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
    x, y = xy(split.train)
    started = time.perf_counter()
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


def neg_elbo_scores(model, part: data_lib.ImageData) -> np.ndarray:
    """Per-example negative ELBO with the model's own scoring settings."""
    labels = part.labels if model.num_classes else None
    return score_images(model, part.images, labels, num_samples=model.score_samples, seed=model.score_seed)["neg_elbo"]


def load_training_data(cfg: TrainConfig) -> data_lib.Split:
    data = data_lib.load(cfg.data, cfg.shape)
    if cfg.conditional and data.labels is None:
        raise data_lib.DataError(
            f"{data.source}: --conditional needs labels, and this data set has none "
            "(add a 'label' column, a 'y' array, or sub-folders named by label)"
        )
    return data_lib.split(data, seed=cfg.seed)


def decide_promotion(
    cfg: TrainConfig, champion: str | None, new_score: float, split: data_lib.Split
) -> tuple[bool, str]:
    if cfg.promote == "always":
        return True, "--promote always"
    if cfg.promote == "never":
        return False, "--promote never"
    if champion is None:
        return True, "no champion yet"
    current = registry.load_model(f"models:/{cfg.model_name}/{champion}").model
    keep = f"kept champion v{champion} (--promote always replaces it)"
    if tuple(current.image_shape) != split.validation.image_shape:
        return False, f"champion v{champion} takes {current.image_shape} images, not comparable; {keep}"
    if current.likelihood != cfg.likelihood:
        return False, (
            f"champion v{champion} uses the {current.likelihood} likelihood, this model {cfg.likelihood}: "
            f"their nats are not comparable; {keep}"
        )
    if bool(current.num_classes) != cfg.conditional:
        return False, f"one of the two models is conditional (log p(x|y) against log p(x)), not comparable; {keep}"
    champion_score = float(neg_elbo_scores(current, split.validation).mean())
    if new_score < champion_score:
        return True, f"validation neg ELBO {new_score:.3f} < champion v{champion}'s {champion_score:.3f}"
    return False, f"validation neg ELBO {new_score:.3f} >= champion v{champion}'s {champion_score:.3f}"


def train(cfg: TrainConfig) -> TrainResult:
    """Trains, calibrates, logs and registers one model; the library function behind ``vae train``."""
    if cfg.promote not in PROMOTE_CHOICES:
        raise ValueError(f"--promote must be one of {', '.join(PROMOTE_CHOICES)}")
    import mlflow

    from training import plots

    set_seeds(cfg.seed)
    split = load_training_data(cfg)
    registry.configure(cfg.work_dir)
    champion = registry.champion_version(cfg.model_name)
    model = build_model(cfg, split.train)
    log.info(
        "training %s on %s: %d train / %d validation / %d test images of shape %s",
        cfg.model_name,
        split.train.source,
        len(split.train),
        len(split.validation),
        len(split.test),
        split.train.image_shape,
    )

    with mlflow.start_run() as run:
        params = {k: v for k, v in asdict(cfg).items() if k != "work_dir"}
        mlflow.log_params(params | {"image_shape": str(split.train.image_shape), "backend": _backend()})
        mlflow.set_tags(
            {
                "data_fingerprint": data_lib.fingerprint(split.train),
                "data_source": split.train.source,
                "model_name": cfg.model_name,
            }
        )
        history, seconds_per_epoch = fit(cfg, model, split, sink=lambda logs, step: mlflow.log_metrics(logs, step=step))

        validation_scores = neg_elbo_scores(model, split.validation)
        calibration = Calibration.fit(validation_scores, cfg.target_fpr)
        model.calibration = calibration.to_dict()
        test_scores = neg_elbo_scores(model, split.test)
        summary = {
            "validation_neg_elbo": float(validation_scores.mean()),
            "test_neg_elbo": float(test_scores.mean()),
            "threshold": calibration.threshold,
            "test_flagged_rate": float(calibration.is_anomaly(test_scores).mean()),
            "seconds_per_epoch": seconds_per_epoch,
        }
        mlflow.log_metrics(summary)
        mlflow.log_dict(calibration.to_dict(), "calibration.json")

        figures = {
            "learning_curves": plots.learning_curves(history),
            "reconstructions": plots.reconstructions(
                model, split.test.images, split.test.labels if cfg.conditional else None
            ),
            "prior_samples": plots.prior_grid(model, seed=cfg.seed),
            "latent_map": plots.latent_map(model, split.test.images, split.test.labels),
            "score_histogram": plots.score_histogram(validation_scores, calibration.threshold),
        }
        if cfg.conditional:
            figures["samples_per_label"] = plots.per_label_grid(model, seed=cfg.seed)
        for name, figure in figures.items():
            mlflow.log_figure(figure, f"plots/{name}.png")

        version = _log_and_register(model, cfg, split)
        promoted, reason = decide_promotion(cfg, champion, summary["validation_neg_elbo"], split)
        if promoted:
            registry.set_alias(cfg.model_name, version)
        mlflow.set_tags({"promoted": str(promoted), "promotion_reason": reason, "model_version": version})
        return TrainResult(
            run_id=run.info.run_id,
            model_name=cfg.model_name,
            version=version,
            promoted=promoted,
            promotion_reason=reason,
            validation_neg_elbo=summary["validation_neg_elbo"],
            test_neg_elbo=summary["test_neg_elbo"],
            threshold=calibration.threshold,
            seconds_per_epoch=seconds_per_epoch,
            epochs_run=len(history.get("loss", [])),
            model=model,
            split=split,
        )


def _log_and_register(model, cfg: TrainConfig, split: data_lib.Split) -> str:
    import keras
    import mlflow.keras
    from mlflow.models import infer_signature

    from training.model import model_inputs

    example = split.validation.subset(np.arange(min(4, len(split.validation))))
    x = model_inputs(example.images, example.labels, cfg.conditional)
    signature = infer_signature(x, np.asarray(keras.ops.convert_to_numpy(model(x))))
    info = mlflow.keras.log_model(
        model,
        name="model",
        signature=signature,
        registered_model_name=cfg.model_name,
        pip_requirements=[f"keras=={keras.__version__}", f"numpy=={np.__version__}"],
    )
    return str(info.registered_model_version)


def _backend() -> str:
    import keras

    return keras.backend.backend()
