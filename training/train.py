"""The training job: read, fit (:mod:`training.fitting`), calibrate (:mod:`training.threshold`),
log to MLflow, register and promote (:mod:`training.run_log`, on a fixed holdout)."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from training import cross_fit, registry
from training import data as data_lib
from training.config import PROMOTE_CHOICES, TrainConfig
from training.fitting import PARTS, build_model, classifier_accuracy, fit, labelled_parts, set_seeds, unlabelled_rows
from training.run_log import log_figures, log_inputs, register_and_promote
from training.threshold import fit_scoring

log = logging.getLogger(__name__)


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


def _train(cfg: TrainConfig, spill: Path) -> TrainResult:
    import mlflow

    from training import plots  # noqa: F401 - drawing fails here, before training, if it cannot work

    read = read_training_data(cfg, spill)
    split = data_lib.training_split(read.data, seed=cfg.seed)
    read = replace(read, data=None)  # the parts are copies: let the whole array go
    # auto resolved once, on the training part: cross-fitted calibration's smaller fits build the same
    cfg = replace(cfg, architecture=cfg.model_architecture(split.train.image_shape, len(split.train)))
    registry.configure(cfg.work_dir)
    registry.check_model_name(cfg.model_name, cfg.work_dir)
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
        log_inputs(cfg, model, read, split, rows, holdout_fingerprint)
        history, seconds_per_epoch = fit(cfg, model, split, sink=lambda logs, step: mlflow.log_metrics(logs, step=step))
        accuracy = None
        if labelled is not None:  # every row taught the model; scores and the prior need a label
            split = labelled
            accuracy = classifier_accuracy(model, split.holdout)
            log.info("the classifier q(y|x) labels %.1f%% of the labelled holdout right", 100 * accuracy)
            mlflow.log_metric("classifier_holdout_accuracy", accuracy)
        calibration, summary, warning = fit_scoring(cfg, model, split, seconds_per_epoch, folds)
        log_figures(cfg, model, history, split.holdout, calibration)
        version, promoted, reason = register_and_promote(cfg, model, split, summary, calibration, holdout_fingerprint)
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
