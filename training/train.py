"""The training job: fit, calibrate, log to MLflow, register, promote (on a fixed holdout)."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from scoring.anomaly import DEFAULT_METHOD, reference_rows
from scoring.calibration import Calibration, rows_needed
from scoring.detector import VAEDetector, score_images
from scoring.latent_prior import fit_latent_prior
from training import aliases, cross_fit, registry
from training import data as data_lib
from training.callbacks import EpochReporter, KLWarmup, NaNGuard
from training.config import PROMOTE_CHOICES, TrainConfig

log = logging.getLogger(__name__)
LATENT_MAP_ROWS = 5_000  # holdout images drawn in the latent map (a memory-mapped holdout is read in part)


@dataclass
class TrainResult:
    run_id: str
    model_name: str
    version: str
    promoted: bool
    promotion_reason: str
    validation_neg_elbo: float  # mean over the validation part (early stopping's data)
    holdout_neg_elbo: float  # mean over the fixed holdout (promotion's data)
    threshold: float  # on anomaly_score, from the calibration part or cross-fitted (calibration_folds)
    seconds_per_epoch: float
    epochs_run: int
    holdout_fingerprint: str
    calibration_warning: str | None  # scoring.calibration.size_warning, or None
    model: object = field(repr=False)
    split: data_lib.TrainingSplit = field(repr=False)  # a semi-supervised model's: the labelled rows
    unlabelled_rows: int = 0  # rows without a label that a conditional model learnt from (semi-supervised)
    classifier_accuracy: float | None = None  # q(y|x) on the labelled holdout, for a semi-supervised model
    calibration_rows: int = 0  # the held-out scores behind the threshold
    calibration_folds: int = 0  # cross-fitted models behind them (0: the calibration part alone)


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
        architecture=cfg.architecture,
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


def memory_budget(cfg: TrainConfig) -> int:
    """Bytes of images to hold in memory: ``--memory-budget-mb``, else half the memory this process
    may use (the machine's RAM, or a container's cgroup limit when that is lower)."""
    if cfg.memory_budget_mb is not None:
        return int(cfg.memory_budget_mb) * 2**20
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total // 2


def read_training_data(cfg: TrainConfig, spill_dir: Path | None = None) -> data_lib.ReadResult:
    """Every input of ``cfg.data`` through the one reader and validator; rows that cannot be used
    are quarantined, and more than ``cfg.max_reject_rate`` of them stops the run. Images beyond
    the memory budget go to memory-mapped files in ``spill_dir`` and are streamed from there."""
    if not 0.0 <= cfg.max_reject_rate <= 1.0:
        raise ValueError(f"--max-reject-rate must be in [0, 1], got {cfg.max_reject_rate}")
    result = data_lib.read_images(
        cfg.data,
        shape=cfg.shape,
        pixel_scale=cfg.pixel_scale,
        require_labels=cfg.conditional,
        split_seed=cfg.seed,
        spill_dir=spill_dir,
        memory_budget=memory_budget(cfg),
    )
    if result.rejects.num_rows:
        message = f"{result.data.source}: {result.describe_rejects()}"
        if result.reject_rate > cfg.max_reject_rate:
            raise data_lib.DataError(f"{message}; above --max-reject-rate {cfg.max_reject_rate:g}, nothing was trained")
        log.warning("%s (quarantined; logged with the run as rejects.parquet)", message)
    if cfg.pixel_scale is None and float(result.data.images.max()) <= 1.0 / 255.0 + 1e-7:
        log.warning(
            "%s: every pixel is at most 1/255 after scaling (integer pixels are read as 0-255 values); "
            "if these are 0/1 masks, train with --pixel-scale 1",
            result.data.source,
        )
    return result


def load_training_data(cfg: TrainConfig) -> data_lib.TrainingSplit:
    return data_lib.training_split(read_training_data(cfg).data, seed=cfg.seed)


def calibrate(
    model,
    split: data_lib.TrainingSplit,
    target_fpr: float,
    method: str = DEFAULT_METHOD,
    held_out_scores: np.ndarray | None = None,
) -> Calibration:
    """Fits the anomaly detector (:class:`scoring.detector.VAEDetector`): the score's statistics on
    the train part, the threshold and p-values on the calibration part's ``anomaly_score`` (data
    that neither fitted the weights nor chose the epoch), or on ``held_out_scores`` when given
    (cross-fitted: :mod:`training.cross_fit`). Stores both in the model."""
    conditional = bool(model.num_classes)
    detector = VAEDetector(model, method, target_fpr=target_fpr).fit(
        split.train.images,
        labels=split.train.labels if conditional else None,
        calibration_images=split.calibration.images,
        calibration_labels=split.calibration.labels if conditional else None,
        held_out_scores=held_out_scores,  # when given, VAEDetector.fit uses these instead
    )
    return detector.calibration_


def _likelihood_name(name: str, levels: int) -> str:
    return f"{name} ({levels} grey levels)" if levels else name


def _holdout_name(holdout_fingerprint: str, rows: int) -> str:
    return f"holdout {holdout_fingerprint} ({rows} rows)"


def decide_promotion(
    cfg: TrainConfig,
    champion: str | None,
    new_score: float,
    holdout: data_lib.ImageData,
    holdout_fingerprint: str | None = None,
    likelihood: tuple[str, int] | None = None,
) -> tuple[bool, str]:
    """Whether the new model (mean holdout neg ELBO ``new_score``) takes the champion alias, and why.

    ``if-better`` scores the champion on this run's ``holdout``. The holdout is chosen by a hash of
    the example ids, so on the same data it is the champion's own holdout (its stored
    ``holdout_fingerprint`` matches); on new data the reason says that the holdout changed.
    ``likelihood``: the new model's (name, grey levels); its nats compare only with the same."""
    if cfg.promote == "always":
        return True, "--promote always"
    if cfg.promote == "never":
        return False, "--promote never"
    if champion is None:
        return True, "no champion yet"
    current = registry.pin(f"models:/{cfg.model_name}/{champion}", cfg.work_dir).load()
    keep = f"kept champion v{champion} (--promote always replaces it)"
    if tuple(current.image_shape) != holdout.image_shape:
        return False, f"champion v{champion} takes {current.image_shape} images, not comparable; {keep}"
    fingerprint = holdout_fingerprint or data_lib.fingerprint(holdout)
    stored = registry.version_tags(cfg.model_name, champion, cfg.work_dir).get("holdout_fingerprint")
    if stored is None:  # saved before holdouts (and before the continuous-Bernoulli fix)
        return True, (
            f"champion v{champion} predates the fixed holdout: it may have trained on the rows of "
            f"{_holdout_name(fingerprint, len(holdout))} and its nats may predate the likelihood fix, so no fair "
            "comparison is possible; the new model replaces it"
        )
    theirs = (current.likelihood, int(getattr(current, "pixel_levels", 0)))
    if likelihood is None:  # not given: the configured one, or the champion's under "auto"
        likelihood = theirs if cfg.likelihood == "auto" else (cfg.likelihood, theirs[1])
    ours = likelihood
    if theirs != ours:
        return False, (
            f"champion v{champion} uses the {_likelihood_name(*theirs)} likelihood, this model "
            f"{_likelihood_name(*ours)}: their nats are not comparable; {keep}"
        )
    if bool(current.num_classes) != cfg.conditional:
        return False, f"one of the two models is conditional (log p(x|y) against log p(x)), not comparable; {keep}"
    if getattr(current, "score_prior", "standard") != ("fitted" if cfg.conditional else "standard"):
        return False, (
            f"champion v{champion} was scored against another prior p(z|y) (N(0, I); this model's fitted "
            f"per-label prior), so their nats are not comparable; {keep}"
        )
    if stored != fingerprint:
        note = f"; the holdout changed since champion v{champion} (fingerprints {stored} -> {fingerprint}): new data"
    else:
        note = f", champion v{champion}'s own holdout"
    champion_score = float(neg_elbo_scores(current, holdout).mean())
    where = f"on {_holdout_name(fingerprint, len(holdout))}{note}"
    if new_score < champion_score:
        return True, f"holdout neg ELBO {new_score:.3f} < champion v{champion}'s {champion_score:.3f} {where}"
    return False, f"holdout neg ELBO {new_score:.3f} >= champion v{champion}'s {champion_score:.3f} {where}"


def train(cfg: TrainConfig) -> TrainResult:
    """Trains, calibrates, logs and registers one model; the library function behind ``vae train``.

    The data fall into four parts with one job each (:func:`training.data.training_split`): train
    fits the weights, validation stops early, calibration sets the threshold (unless it is too small:
    then every non-holdout row, cross-fitted, :mod:`training.cross_fit`), and the fixed holdout
    measures the model and decides ``--promote if-better``."""
    if cfg.promote not in PROMOTE_CHOICES:
        raise ValueError(f"--promote must be one of {', '.join(PROMOTE_CHOICES)}")
    cross_fit.check_folds(cfg.calibration_folds)
    set_seeds(cfg.seed)
    spill = _spill_folder(registry.work_dir(cfg.work_dir))
    try:
        return _train(cfg, spill)
    finally:
        if any(spill.iterdir()):  # the result's parts still read these files: remove them at exit
            atexit.register(shutil.rmtree, spill, ignore_errors=True)
        else:
            shutil.rmtree(spill, ignore_errors=True)


def _spill_folder(work: Path) -> Path:
    """A folder for this process's memory-mapped images, ``WORK/spill-HOST-PID-XXXX``; those of
    processes of this host no longer running (killed trainings) are removed first."""
    host = socket.gethostname().replace("-", "_")
    for old in work.glob(f"spill-{host}-*"):  # only this host's: another host's pids mean nothing here
        pid = old.name.split("-")[2]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"spill-{host}-{os.getpid()}-", dir=work))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


PARTS = ("train", "validation", "calibration", "holdout")


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


def _train(cfg: TrainConfig, spill: Path) -> TrainResult:
    import mlflow

    from training import plots  # noqa: F401 - drawing fails here, before training, if it cannot work

    read = read_training_data(cfg, spill)
    split = data_lib.training_split(read.data, seed=cfg.seed)
    read = replace(read, data=None)  # the parts are copies: let the whole array go
    registry.configure(cfg.work_dir)
    champion = registry.champion_version(cfg.model_name, cfg.work_dir)
    unlabelled = sum(unlabelled_rows(getattr(split, part)) for part in PARTS)
    # a conditional model learns from rows without a label, then needs labelled ones in every part
    # (checked before training: data_lib.DataError if a part has none)
    labelled = labelled_parts(split) if cfg.conditional and unlabelled else None
    model = build_model(cfg, split.train, semi_supervised=labelled is not None)
    folds = cross_fit.resolve_folds(  # before training: a bad setting fails now, not after the fit
        cfg.calibration_folds,
        len(split.calibration),
        cfg.target_fpr,
        semi_supervised=labelled is not None,
        on_disk=isinstance(split.train.images, np.memmap),
        rows=len(split.train) + len(split.validation) + len(split.calibration),
    )
    holdout_fingerprint = data_lib.fingerprint(split.holdout)
    rows = _describe_parts(cfg, split, unlabelled)

    with mlflow.start_run() as run:
        _log_inputs(cfg, model, read, split, rows, holdout_fingerprint)
        history, seconds_per_epoch = fit(cfg, model, split, sink=lambda logs, step: mlflow.log_metrics(logs, step=step))
        accuracy = None
        if labelled is not None:  # every row taught the model; scores and the prior need a label
            split = labelled
            accuracy = classifier_accuracy(model, split.holdout)
            log.info("the classifier q(y|x) labels %.1f%% of the labelled holdout right", 100 * accuracy)
            mlflow.log_metric("classifier_holdout_accuracy", accuracy)
        calibration, summary, warning = _fit_scoring(cfg, model, split, seconds_per_epoch, folds)
        _log_figures(cfg, model, history, split.holdout, calibration)
        version, promoted, reason = _register_and_promote(
            cfg, model, split, champion, summary, calibration, holdout_fingerprint
        )
        return TrainResult(
            run_id=run.info.run_id,
            model_name=cfg.model_name,
            version=version,
            promoted=promoted,
            promotion_reason=reason,
            validation_neg_elbo=summary["validation_neg_elbo"],
            holdout_neg_elbo=summary["holdout_neg_elbo"],
            threshold=calibration.threshold,
            seconds_per_epoch=seconds_per_epoch,
            epochs_run=len(history.get("loss", [])),
            holdout_fingerprint=holdout_fingerprint,
            calibration_warning=warning,
            model=model,
            split=split,
            unlabelled_rows=unlabelled,
            classifier_accuracy=accuracy,
            calibration_rows=int(summary["calibration_rows"]),
            calibration_folds=int(summary["calibration_folds"]),
        )


def _describe_parts(cfg: TrainConfig, split: data_lib.TrainingSplit, unlabelled: int) -> dict[str, int]:
    """The rows of each part (the MLflow params ``*_rows``), logged as a line."""
    rows = {f"{part}_rows": len(getattr(split, part)) for part in PARTS}
    if unlabelled:
        rows["unlabelled_rows"] = unlabelled
        log.info(
            "%d of %d rows have no label: the conditional VAE learns from them too (semi-supervised, Kingma et "
            "al. 2014's M2, with a classifier q(y|x)); calibration, the holdout and the latent prior use the "
            "labelled rows",
            unlabelled,
            sum(len(getattr(split, part)) for part in PARTS),
        )
    log.info(
        "training %s on %s: %d train / %d validation / %d calibration / %d holdout images of shape %s",
        cfg.model_name,
        split.train.source,
        *(rows[f"{part}_rows"] for part in PARTS),
        split.train.image_shape,
    )
    return rows


def _log_inputs(cfg: TrainConfig, model, read, split: data_lib.TrainingSplit, rows: dict, holdout_fingerprint: str):
    """The run's params, tags and input metrics, and its rejects, before training."""
    import mlflow

    params = {k: v for k, v in asdict(cfg).items() if k not in ("work_dir", "pixel_levels", "data")}
    params["beta"] = cfg.kl_beta()
    params["data"] = " + ".join([cfg.data] if isinstance(cfg.data, str) else cfg.data)
    mlflow.log_params(
        params
        | rows
        | {
            "image_shape": str(split.train.image_shape),
            "backend": _backend(),
            "holdout_fraction": data_lib.HOLDOUT_FRACTION,
        }
    )
    mlflow.set_tags(
        {
            "data_fingerprint": data_lib.fingerprint(split.train),
            "holdout_fingerprint": holdout_fingerprint,
            "data_source": split.train.source,
            "model_name": cfg.model_name,
        }
    )
    log.info("likelihood: %s (%s)", _likelihood_name(model.likelihood, model.pixel_levels), model.likelihood_reason)
    mlflow.log_params({"chosen_likelihood": model.likelihood, "pixel_levels": model.pixel_levels})
    mlflow.log_metrics(
        {"rows_read": read.rows_read, "rows_rejected": read.rejects.num_rows, "reject_rate": read.reject_rate}
    )
    if read.rejects.num_rows:
        _log_rejects(read)
    mlflow.set_tag("likelihood_reason", model.likelihood_reason)


def fit_priors(cfg: TrainConfig, model, train: data_lib.ImageData) -> None:
    """The latent prior fitted to ``train``'s posteriors; a conditional model is scored against it
    (:func:`scoring.elbo.scoring_prior`), so this comes before any score."""
    model.latent_prior = fit_latent_prior(model, train.images, train.labels).to_config()
    if cfg.conditional:
        model.score_prior = "fitted"


def cross_fitted_calibration_scores(
    cfg: TrainConfig, split: data_lib.TrainingSplit, folds: int, like=None
) -> np.ndarray:
    """Out-of-fold ``anomaly_score`` of the train, validation and calibration rows
    (:mod:`training.cross_fit`): ``folds`` models trained as this one was (``like``: the trained
    model, whose likelihood and grey levels they keep), their weights initialised and their batches
    shuffled by seeds of their own (the posterior noise and the scores' seed stay ``cfg.seed``)."""
    conditional = bool(cfg.conditional)
    if like is not None:
        cfg = replace(cfg, likelihood=like.likelihood, pixel_levels=int(like.pixel_levels))

    def fit_fold(train: data_lib.ImageData, validation: data_lib.ImageData, k: int) -> VAEDetector:
        set_seeds((cfg.seed + 1) * 1_000 + k)
        model = build_model(cfg, train, semi_supervised=False)
        fit(cfg, model, data_lib.Split(train, validation, validation), report=False)
        fit_priors(cfg, model, train)
        detector = VAEDetector(model, cfg.anomaly_score, target_fpr=cfg.target_fpr)
        return detector.fit(train.images, labels=train.labels if conditional else None)

    def score_rows(detector: VAEDetector, rows: data_lib.ImageData) -> np.ndarray:
        return detector.decision_function(rows.images, rows.labels if conditional else None)

    tf_log = logging.getLogger("tensorflow")
    level = tf_log.level
    tf_log.setLevel(logging.ERROR)  # each fold model retraces its own steps: warned about, expected
    try:
        scores = cross_fit.cross_fitted_scores(split, folds, cfg.seed, fit_fold, score_rows)
    finally:
        tf_log.setLevel(level)
    set_seeds(cfg.seed)
    return scores


def _fit_scoring(cfg: TrainConfig, model, split: data_lib.TrainingSplit, seconds_per_epoch: float, folds: int):
    """After training: the latent prior, the anomaly calibration (cross-fitted when the calibration
    part is small: :mod:`training.cross_fit`) and the run's summary metrics (logged); returns
    (calibration, summary, the calibration's size warning or None)."""
    import mlflow

    fit_priors(cfg, model, split.train)
    validation_neg_elbo = float(neg_elbo_scores(model, split.validation).mean())
    held_out = None
    if folds:
        why = "too few for a stable threshold" if cfg.calibration_folds is None else "--calibration-folds"
        log.info(
            "%d calibration rows at a false positive rate of %g (%s): cross-fitting %d more models so that every "
            "non-holdout row is scored by one that never saw it",
            len(split.calibration),
            cfg.target_fpr,
            why,
            folds,
        )
        held_out = cross_fitted_calibration_scores(cfg, split, folds, like=model)
        mlflow.set_tag(
            "calibration_data",
            f"every non-holdout row of {split.train.source} (seed {cfg.seed}), {held_out.size:,} scores cross-fitted "
            f"by {folds} models that each left a fold out",
        )
    calibration = calibrate(model, split, cfg.target_fpr, cfg.anomaly_score, held_out)
    warning = calibration.size_warning()
    if warning:
        log.warning("%s: %s", cfg.model_name, warning)
        mlflow.set_tag("calibration_warning", warning)
    holdout_scores = part_scores(model, split.holdout)
    summary = {
        "validation_neg_elbo": validation_neg_elbo,
        "holdout_neg_elbo": float(holdout_scores["neg_elbo"].mean()),
        "threshold": calibration.threshold,
        "holdout_flagged_rate": float(calibration.is_anomaly(holdout_scores[calibration.score]).mean()),
        "calibration_rows": calibration.scores.size,
        "calibration_folds": folds,
        "calibration_above_threshold": calibration.above,
        "calibration_rows_needed": rows_needed(cfg.target_fpr),
        "seconds_per_epoch": seconds_per_epoch,
    }
    mlflow.log_metrics(summary)
    mlflow.log_dict(calibration.to_dict(), "calibration.json")
    return calibration, summary, warning


def _log_figures(cfg: TrainConfig, model, history: dict, holdout: data_lib.ImageData, calibration) -> None:
    """The run's pictures, under ``plots/``."""
    import mlflow

    from training import plots

    figures = {
        "learning_curves": plots.learning_curves(history),
        "reconstructions": plots.reconstructions(model, holdout.images, holdout.labels if cfg.conditional else None),
        "prior_samples": plots.prior_grid(model, seed=cfg.seed),
        "latent_map": plots.latent_map(
            model,
            holdout.images[:LATENT_MAP_ROWS],
            None if holdout.labels is None else holdout.labels[:LATENT_MAP_ROWS],
        ),
        "latent_grid": plots.latent_grid_figure(model, *_first_rows(holdout, LATENT_MAP_ROWS)),
        "score_histogram": plots.score_histogram(
            calibration.scores, calibration.threshold, title=f"calibration {calibration.score}"
        ),
    }
    if cfg.conditional:
        figures["samples_per_label"] = plots.per_label_grid(model, seed=cfg.seed)
    for name, figure in figures.items():
        mlflow.log_figure(figure, f"plots/{name}.png")


def _register_and_promote(
    cfg: TrainConfig,
    model,
    split: data_lib.TrainingSplit,
    champion: str | None,
    summary: dict,
    calibration,
    holdout_fingerprint: str,
) -> tuple[str, bool, str]:
    """Registers the model, tags the version, moves the champion alias if it wins; (version, promoted, why)."""
    import mlflow

    holdout = split.holdout
    version = _log_and_register(model, cfg, split)
    registry.set_version_tags(
        cfg.model_name,
        version,
        {
            "holdout_fingerprint": holdout_fingerprint,
            "holdout_rows": len(holdout),
            "holdout_neg_elbo": repr(summary["holdout_neg_elbo"]),
        },
        work=cfg.work_dir,
    )
    promoted, reason = decide_promotion(
        cfg,
        champion,
        summary["holdout_neg_elbo"],
        holdout,
        holdout_fingerprint,
        likelihood=(model.likelihood, model.pixel_levels),
    )
    if promoted:
        aliases.promote(cfg.model_name, version, registry.CHAMPION, cfg.work_dir, reason=reason, by="vae train")
    mlflow.set_tags({"promoted": str(promoted), "promotion_reason": reason, "model_version": version})
    try:  # the registry's descriptions: after the promotion, so a failure here is a warning
        registry.describe(
            cfg.model_name,
            version,
            {
                "conditional": cfg.conditional,
                "architecture": cfg.architecture,
                "latent_dim": cfg.latent_dim,
                "data": split.train.source,
                "train_rows": len(split.train),
                "shape": "x".join(map(str, split.train.image_shape)),
                "likelihood": _likelihood_name(model.likelihood, model.pixel_levels),
                "likelihood_reason": model.likelihood_reason,
                "holdout_neg_elbo": summary["holdout_neg_elbo"],
                "holdout_fingerprint": holdout_fingerprint,
                "holdout_rows": len(holdout),
                "threshold": calibration.threshold,
                "score": calibration.score,
                "fpr": cfg.target_fpr,
                "promoted": promoted,
                "promotion_reason": reason,
            },
            cfg.work_dir,
        )
    except Exception as exc:  # noqa: BLE001 - MLflow's errors vary by store
        log.warning("could not write the registry's description of %s v%s: %s", cfg.model_name, version, exc)
    return version, promoted, reason


def _log_and_register(model, cfg: TrainConfig, split: data_lib.TrainingSplit) -> str:
    import keras
    from mlflow.models import infer_signature

    from training.model import model_inputs

    example = split.validation.subset(np.arange(min(4, len(split.validation))))
    x = model_inputs(example.images, example.labels, cfg.conditional)
    signature = infer_signature(x, np.asarray(keras.ops.convert_to_numpy(model(x))))
    return registry.log_and_register(model, cfg.model_name, signature)


def _first_rows(part: data_lib.ImageData, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(images, labels) of at most ``n`` rows spread evenly over the part (it is sorted by id, so
    the first rows could be one class); a memory-mapped part reads only those rows."""
    rows = np.unique(np.linspace(0, len(part) - 1, min(n, len(part))).astype(np.int64))
    return np.asarray(part.images[rows]), None if part.labels is None else part.labels[rows]


def _log_rejects(read: data_lib.ReadResult) -> None:
    """The rejected input rows as ``rejects.parquet`` of the run, and a count per reason."""
    import tempfile
    from pathlib import Path

    import mlflow
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rejects.parquet"
        pq.write_table(read.rejects, path)
        mlflow.log_artifact(str(path))
    mlflow.log_dict(dict(read.reasons()), "reject_reasons.json")


def _backend() -> str:
    import keras

    return keras.backend.backend()
