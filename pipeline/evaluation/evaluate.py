"""The VAE against classical detectors (PyOD) on labelled images: several protocols, data sets
and seeds.

The protocols and their cells are in :mod:`pipeline.evaluation.tasks`: ``held-out``,
``contaminated-clustered-{1,3,10}``, ``contaminated-scattered-{1,3,10}``, ``one-class`` and
``corrupted`` (the broken images of :mod:`pipeline.evaluation.corruptions`).

Every detector in a task sees the same fit and test images, and every random step is seeded by
the run's seed (the split, the planted anomalies, the corruptions, the VAE, and the detectors that
take a seed), so a table is reproducible. Per seed, a detector's AUROC and average precision are
averaged over the tasks of a protocol cell; the summary gives the mean, standard deviation and
worst of those over the seeds (:mod:`pipeline.evaluation.tables`). ``flagged_rate`` is the share
of a task's anomalies above a detector's threshold: the VAE's default score has one (the product's
rule, :class:`scoring.detector.VAEDetector` at 1 % on the task's validation images, normal and
unseen by the weights; none in the unsupervised cells, whose validation images are fit images); PyOD's
detectors get NaN.

The VAE is the plain (unconditional) model of :mod:`training.model`, fitted fresh per task with
:func:`training.train.fit` (settings: :func:`vae_config`), then the anomaly score is fitted on the
task's fit images (the ``score_fit`` hook, :class:`scoring.detector.VAEDetector` by default) and the
test images are scored with :func:`scoring.detector.score_images`; nothing is registered. The
classical detectors are PyOD's, with its defaults (:mod:`scoring.detectors`). A classical
detector that raises or returns a non-finite score gets NaN metrics for that task and a logged
warning; the evaluation carries on. A run with a previous summary beside it (``previous``) also
writes the comparison of :mod:`pipeline.evaluation.comparison`.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.evaluation import comparison, corruptions, tables
from pipeline.evaluation.tasks import (  # noqa: F401  (re-exported: the evaluation's public names)
    CLUSTERED,
    CONTAMINATION,
    PLANTED_CLASSES,
    PROTOCOLS,
    SCATTERED,
    SHORTHANDS,
    Task,
    build_tasks,
    check_protocols,
    contaminated_task,
    corrupted_task,
    count_tasks,
    held_out_tasks,
    one_class_tasks,
    planted_classes,
    scattered_task,
)
from pipeline.outputs.files import write_atomically
from pipeline.steps import Reporter, Step
from scoring import metrics
from scoring.anomaly import METHODS as ANOMALY_METHODS
from scoring.anomaly import PREVIOUS_METHOD
from scoring.detectors import DETECTOR_NAMES, classical_detectors
from training import data as data_lib
from training.config import TrainConfig

log = logging.getLogger(__name__)

DATA_SETS = ("digits", "mnist5k", "mnist5k-binary")
DEFAULT_SEEDS = (0, 1, 2)
#: the default score first; then every other method of scoring.anomaly, from the same fit
VAE_SCORES = ("anomaly_score", "neg_elbo", "iwae_nll", *(m for m in ANOMALY_METHODS if m != "neg_elbo"))
VAE_DETECTORS = tuple(f"vae_{s}" for s in VAE_SCORES)
CLASSICAL = DETECTOR_NAMES
DETECTORS = VAE_DETECTORS + CLASSICAL
METRICS = tables.METRICS
#: PyOD detectors left out of the default run on images of more than SLOW_MAX_PIXELS pixels: on
#: 28x28 they cost 5-50x what KNN, LOF, HBOS, IForest and ECOD do (KDE up to 2 minutes a task)
#: and never ranked first there in the last scorecard but KDE, within 0.01 of LOF
SLOW_DETECTORS = ("ocsvm", "pca", "kde")
SLOW_MAX_PIXELS = 256
#: the default plan on such large images (28x28), to keep the scorecard's time in bounds: held-out
#: and one-class for 3 classes per seed (0, 3, 7; 1, 4, 8; 2, 5, 9: 9 of 10 over the default
#: seeds) and one planted class per clustered cell (class s for seed s)
LARGE_CLASSES = 3
LARGE_PLANTED = 1
TARGET_FPR = 0.01  # the VAE's threshold: the product's calibration rule
DEFAULT_EPOCHS = 30
IWAE_K = 0  # the IWAE bound ranked no better than the ELBO (README); --iwae-k 100 adds it
ONE_CLASS_EPOCH_FACTOR = 4
QUICK_EPOCHS = 2  # --quick: epochs per VAE fit,
QUICK_CLASSES = 2  # held-out and one-class tasks for the first classes only,
QUICK_SEEDS = (0,)  # one seed, digits only, and no IWAE,
QUICK_PROTOCOLS = ("held-out", "contaminated-clustered-3", "contaminated-scattered-3", "one-class", "corrupted")
QUICK_PLANTED = 1  # the 3% contaminated cells with one planted class,
QUICK_KINDS = ("blank", "saturated", "wrong-scale", "rotated")  # and four corruptions
RESULT_COLUMNS = (
    "data",
    "seed",
    "protocol",
    "task",
    "detector",
    "auroc",
    "average_precision",
    "flagged_rate",
    "seconds",
    "n_fit",
    "n_normal",
    "n_anomalous",
)


#: ``score_fit(model, task)``: fits the anomaly score's statistics after the VAE fit.
ScoreFit = Callable[[Any, Task], None]


@dataclass
class EvaluationResult:
    """What :func:`evaluate` returns; ``paths`` names the files written (``results``, ``summary``,
    ``fits``, ``tables``, ``plot``, and ``comparison`` and ``previous`` with a previous summary),
    when an output folder was given."""

    results: pd.DataFrame = field(repr=False)  # one row per data set, seed, protocol, task, detector
    summary: pd.DataFrame = field(repr=False)  # one row per data set, protocol, detector
    fits: pd.DataFrame = field(repr=False)  # one row per VAE fit: epochs, seconds, mean scores, KL
    markdown: str = field(repr=False)  # tables.md
    comparison: pd.DataFrame | None = field(default=None, repr=False)  # against the previous summary, if any
    comparison_markdown: str = field(default="", repr=False)  # comparison.md
    previous: pd.DataFrame | None = field(default=None, repr=False)  # the summary compared with
    # the default against the method it replaced, from the same fits (comparison.paired)
    paired: pd.DataFrame | None = field(default=None, repr=False)
    seconds: float = 0.0
    paths: dict[str, Path] = field(default_factory=dict)
    run_id: str | None = None


# --- the VAE ---------------------------------------------------------------------------------


def vae_config(base: TrainConfig, task: Task) -> TrainConfig:
    """The VAE settings for one task: the base settings, with the warm-up capped at a third of
    the epochs; no early stopping where the VAE fits and scores the same images (contaminated);
    and for one-class fits, whose epochs hold a tenth of the images, ``ONE_CLASS_EPOCH_FACTOR``
    times the epochs, warm-up and patience, so they get a comparable number of gradient steps."""
    factor = ONE_CLASS_EPOCH_FACTOR if task.protocol == "one-class" else 1
    epochs = base.epochs * factor
    cfg = replace(
        base,
        conditional=False,
        epochs=epochs,
        kl_warmup=min(base.kl_warmup * factor, max(1, epochs // 3)),
        early_stopping=base.early_stopping * factor,
    )
    if task.unsupervised:
        cfg = replace(cfg, early_stopping=0)
    return cfg


def score_with_vae(
    task: Task, cfg: TrainConfig, iwae_k: int | None = IWAE_K, score_fit: ScoreFit | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Fits a fresh plain VAE on the task's images, fits its anomaly score (``score_fit``, by
    default :class:`scoring.detector.VAEDetector` with ``cfg.anomaly_score``) and scores the test images: the dict of
    :func:`scoring.detector.score_images` (``anomaly_score``, ``neg_elbo``, ``reconstruction_nll``,
    ``kl``, and ``iwae_nll`` when ``iwae_k``), and a summary of the fit (epochs, seconds, the
    normal test examples' mean scores, and ``threshold``: the default score's threshold from the
    validation images, as ``vae train`` calibrates, where they are unseen by the fit)."""
    import keras

    from scoring.detector import model_method_scores, score_images
    from training.train import build_model, fit, set_seeds

    keras.backend.clear_session()
    set_seeds(cfg.seed)
    split = data_lib.Split(task.fit, task.validation, task.test)
    model = build_model(cfg, task.fit)
    started = time.perf_counter()
    epoch_log = logging.getLogger("training.callbacks")  # one line per task, not per epoch of every fit
    level = epoch_log.level
    epoch_log.setLevel(max(level, logging.WARNING))
    try:
        history, seconds_per_epoch = fit(cfg, model, split)
    finally:
        epoch_log.setLevel(level)
    fit_seconds = time.perf_counter() - started
    threshold = None
    if score_fit is None:  # the product's detector; its threshold from the normal, unseen validation images
        from scoring.detector import VAEDetector

        detector = VAEDetector(model, cfg.anomaly_score, target_fpr=TARGET_FPR)
        detector.fit(task.fit.images, calibration_images=None if task.unsupervised else task.validation.images)
        threshold = None if task.unsupervised else detector.threshold_
    else:
        score_fit(model, task)
    scores = score_images(
        model, task.test.images, num_samples=cfg.score_samples, seed=cfg.seed, iwae_k=iwae_k or None, batch_size=128
    )
    scores |= {m: v for m, v in model_method_scores(model, scores).items() if m != "neg_elbo"}  # every method
    normal = ~task.is_anomaly
    summary: dict[str, Any] = {
        "protocol": task.protocol,
        "task": task.target,
        "likelihood": getattr(model, "likelihood", cfg.likelihood),  # what "auto" chose for these images
        "epochs_run": len(history.get("loss", [])),
        "seconds": round(time.perf_counter() - started, 2),
        "fit_seconds": round(fit_seconds, 2),
        "seconds_per_epoch": round(seconds_per_epoch, 3),
        "normal_kl": float(scores["kl"][normal].mean()),
        "normal_neg_elbo": float(scores["neg_elbo"][normal].mean()),
        "anomalous_neg_elbo": float(scores["neg_elbo"][task.is_anomaly].mean()),
        "normal_anomaly_score": float(scores["anomaly_score"][normal].mean()),
        "anomalous_anomaly_score": float(scores["anomaly_score"][task.is_anomaly].mean()),
    }
    if "iwae_nll" in scores:
        summary["normal_iwae_nll"] = float(scores["iwae_nll"][normal].mean())
    if threshold is not None:
        summary["threshold"] = threshold
    return scores, summary


# --- one task --------------------------------------------------------------------------------


def classical_scores(detector: Any, task: Task) -> dict[str, np.ndarray | None]:
    """One PyOD wrapper's scores per part of the task (:attr:`Task.subtasks`): ``decision_scores_``
    where the test images are the fit images, else ``decision_function`` on each part's images
    (each part scored on its own: ECOD's scores of a batch depend on the whole batch); None for
    every part, with a warning logged, if it raised, and for a part with a non-finite score."""
    parts = task.subtasks
    try:
        if task.unsupervised:
            return {parts[0][0]: _finite_or_none(detector.name, task, detector.fit_score(task.fit.images))}
        detector.fit(task.fit.images)
        return {
            name: _finite_or_none(detector.name, task, detector.score(task.test.images[rows]), len(rows))
            for name, rows in parts
        }
    except Exception as exc:  # whatever a third-party detector raises costs one NaN cell, not the run
        log.warning("%s failed (%s: %s); its metrics are NaN", _where(detector.name, task), type(exc).__name__, exc)
        return dict.fromkeys((name for name, _ in parts), None)


def _where(name: str, task: Task) -> str:
    return f"{name} on {task.protocol} {task.target}"


def _finite_or_none(name: str, task: Task, scores: np.ndarray, expected: int | None = None) -> np.ndarray | None:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    expected = len(task.test) if expected is None else expected
    if scores.shape != (expected,):
        log.warning("%s: %d scores for %d images; its metrics are NaN", _where(name, task), scores.size, expected)
        return None
    bad = int((~np.isfinite(scores)).sum())
    if bad:
        log.warning("%s: %d of %d scores are not finite; its metrics are NaN", _where(name, task), bad, scores.size)
        return None
    return scores


def flagged_rate(is_anomaly: np.ndarray, scores: np.ndarray | None, threshold: float | None) -> float:
    """The share of the anomalies scored above ``threshold`` (NaN without a threshold, scores or anomalies)."""
    anomalous = np.asarray(is_anomaly, bool)
    if threshold is None or scores is None or not anomalous.any():
        return math.nan
    return float((np.asarray(scores)[anomalous] > threshold).mean())


def evaluate_task(
    task: Task,
    cfg: TrainConfig,
    iwae_k: int | None = IWAE_K,
    detectors: Iterable[str] = DETECTORS,
    score_fit: ScoreFit | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every requested detector on one task: rows (``protocol, task, detector, auroc,
    average_precision, flagged_rate, seconds`` and the counts), per part of the task (one part,
    ``task.target``, unless it has ``parts``) in :data:`DETECTORS` order, and the VAE fit summary
    (None when no VAE detector was asked for). ``cfg.seed`` seeds the detectors too.

    ``flagged_rate`` needs a threshold per detector: ``vae_anomaly_score`` takes the VAE
    summary's ``threshold`` when there is one; every other detector has none (NaN)."""
    wanted = [d for d in DETECTORS if d in set(detectors)]
    if not iwae_k:
        wanted = [d for d in wanted if d != "vae_iwae_nll"]
    scores: dict[str, dict[str, np.ndarray | None]] = {}  # detector -> part -> scores of the part's rows
    thresholds: dict[str, float] = {}
    seconds: dict[str, float] = {}
    summary = None
    vae_wanted = [d for d in wanted if d in VAE_DETECTORS]
    if vae_wanted:
        k = iwae_k if "vae_iwae_nll" in vae_wanted else None
        vae_scores, summary = score_with_vae(task, cfg, k, score_fit)
        for name in vae_wanted:
            whole = vae_scores.get(name.removeprefix("vae_"))
            whole = None if whole is None else _finite_or_none(name, task, whole)
            scores[name] = {part: None if whole is None else whole[rows] for part, rows in task.subtasks}
            seconds[name] = summary["seconds"]
        if summary.get("threshold") is not None:
            thresholds[VAE_DETECTORS[0]] = float(summary["threshold"])
    for detector in classical_detectors(cfg.seed, [d for d in wanted if d in CLASSICAL]):
        started = time.perf_counter()
        scores[detector.name] = classical_scores(detector, task)
        seconds[detector.name] = round(time.perf_counter() - started, 3)
    rows = []
    for part, index in task.subtasks:
        y = task.is_anomaly[index]
        for name in wanted:
            s = scores[name][part]
            rows.append(
                {
                    "protocol": task.protocol,
                    "task": part,
                    "detector": name,
                    "auroc": math.nan if s is None else metrics.auroc(y, s),
                    "average_precision": math.nan if s is None else metrics.average_precision(y, s),
                    "flagged_rate": flagged_rate(y, s, thresholds.get(name)),
                    "seconds": seconds[name],
                    **task.part_counts(index),
                }
            )
    return rows, summary


# --- progress --------------------------------------------------------------------------------


class _TaskSteps:
    """Reports each task to ``report`` as a :class:`pipeline.steps.Step`: when it starts (data set,
    seed, protocol, task, the last VAE AUROC) and when it finishes (the VAE's AUROC, the best
    detector's, the VAE fit, the time so far). ``report`` None: silent."""

    def __init__(self, total: int, report: Reporter | None) -> None:
        self.total = total
        self.report = report
        self.done = 0
        self.started = time.perf_counter()
        self.last_vae = "-"

    def start(self, data: str, seed: int, task: Task) -> None:
        if self.report is not None:
            note = f"{data} seed {seed} {task.protocol} {task.target} (last VAE AUROC {self.last_vae})"
            self.report(Step(self.done, self.total, note, finished=False))

    def finish(self, data: str, seed: int, task: Task, rows: list[dict[str, Any]], fit: dict | None) -> None:
        self.done += 1
        aurocs: dict[str, list[float]] = {}
        for r in rows:  # a task with parts (the corruption kinds): the mean over its parts
            aurocs.setdefault(r["detector"], []).append(r["auroc"])
        means = {d: float(np.mean(v)) for d, v in aurocs.items()}
        vae = next((d for d in means if d.startswith("vae_")), None)
        if vae is not None:
            self.last_vae = f"{means[vae]:.3f}"
        if self.report is None:
            return
        finite = {d: v for d, v in means.items() if math.isfinite(v)}
        best = max(finite, key=finite.__getitem__) if finite else None
        mean_of = f" (mean of {len(task.parts)})" if task.parts else ""
        note = (
            f"{data} seed {seed} {task.protocol} {task.target}: "
            + (f"{vae} AUROC {means[vae]:.3f}{mean_of}, " if vae else "")
            + (f"best {best} {finite[best]:.3f}" if best else "no finite AUROC")
            + (f" (VAE {fit['epochs_run']} epochs, KL {fit['normal_kl']:.2f} nats)" if fit else "")
            + f"  [{time.perf_counter() - self.started:.0f}s]"
        )
        self.report(Step(self.done, self.total, note))


# --- the evaluation --------------------------------------------------------------------------


def _as_list(data: str | data_lib.ImageData | Sequence[str | data_lib.ImageData]) -> list[str | data_lib.ImageData]:
    if isinstance(data, str | data_lib.ImageData):
        return [data]
    return list(data)


def load_data_sets(
    data: str | data_lib.ImageData | Sequence[str | data_lib.ImageData],
) -> Iterator[tuple[str, data_lib.ImageData]]:
    """(name, images) per data set: a built-in name or path is loaded (the name is the spec), an
    ``ImageData`` is used as it is (the name is its ``source``)."""
    for item in _as_list(data):
        if isinstance(item, data_lib.ImageData):
            yield item.source, item
        else:
            yield item, data_lib.load(item)


def evaluate(
    data: str | data_lib.ImageData | Sequence[str | data_lib.ImageData] = DATA_SETS,
    protocols: Sequence[str] = PROTOCOLS,
    *,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    epochs: int = DEFAULT_EPOCHS,
    train_config: TrainConfig | None = None,
    iwae_k: int | None = IWAE_K,
    detectors: Iterable[str] | None = None,
    max_classes: int | None = None,
    classes: int | None = None,
    planted: int | None = None,
    kinds: Sequence[str] = corruptions.KINDS,
    score_fit: ScoreFit | None = None,
    output_dir: str | Path | None = None,
    previous: str | Path | pd.DataFrame | None = None,
    keep_previous: bool = True,
    run_id: str | None = None,
    log_to_mlflow: bool = False,
    progress: Reporter | None = None,
) -> EvaluationResult:
    """Runs every protocol on every data set for every seed, with every detector.

    ``data``: built-in names (``digits``, ``mnist5k``, ...), paths or ``ImageData``, one or a list.
    ``train_config`` sets the VAE (the :class:`TrainConfig` defaults otherwise); ``epochs`` and
    each seed override its ``epochs`` and ``seed``, and :func:`vae_config` adapts it per task.
    ``iwae_k``: samples of the IWAE bound (None or 0: no ``vae_iwae_nll``). ``detectors``: the
    detectors, on every data set; None: all of them, less :data:`SLOW_DETECTORS` on images of
    more than :data:`SLOW_MAX_PIXELS` pixels (:func:`default_detectors`). ``classes``: held-out
    and one-class on that many classes per seed, rotating with the seed (0: every class; None:
    every class, or :data:`LARGE_CLASSES` on large images); ``planted``: planted classes per
    clustered cell (None: :data:`PLANTED_CLASSES`, or :data:`LARGE_PLANTED` on large images);
    see :func:`task_plan`. ``max_classes``: the
    held-out and one-class tasks of the first classes only (before ``classes``). ``kinds``: the
    corruptions of the corrupted and scattered cells. ``score_fit``: how the anomaly score
    is fitted after each VAE fit (by default :class:`scoring.detector.VAEDetector` with the
    config's method). ``progress``: called with a :class:`pipeline.steps.Step` as each task starts and
    ends (None: silent; ``vae evaluate`` passes its bar).

    ``previous``: a previous ``summary.csv`` (path or frame) to compare with
    (:mod:`pipeline.evaluation.comparison`); without one, and with ``keep_previous``, the
    ``summary.csv`` already in ``output_dir`` is the previous one.

    Writes ``results.csv``, ``summary.csv``, ``vae_fits.csv``, ``tables.md`` and
    ``evaluation.png`` to ``output_dir`` when given (``results.csv`` and ``vae_fits.csv`` after
    every task, so a stopped run keeps what it did), with a previous summary also
    ``comparison.md`` and ``summary.previous.csv`` (the summary compared with), and logs the
    summary metrics and those files to MLflow when ``run_id`` is given (into that run) or
    ``log_to_mlflow`` is set (a new run).
    """
    plan = _Plan.of(
        data,
        protocols=protocols,
        seeds=seeds,
        epochs=epochs,
        train_config=train_config,
        iwae_k=iwae_k,
        detectors=detectors,
        max_classes=max_classes,
        classes=classes,
        planted=planted,
        kinds=kinds,
    )
    total = plan.total()
    folder = Path(output_dir) if output_dir is not None else None
    before = _previous_summary(previous, folder if keep_previous else None)
    started = time.perf_counter()
    rows, fits = _run_tasks(plan, _TaskSteps(total, progress), score_fit, folder)
    results = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    result = _assemble(results, pd.DataFrame(fits), plan.header, started, before)
    if folder is not None:
        write_outputs(result, folder)
    if run_id is not None or log_to_mlflow:
        _log_evaluation(result, plan.base, plan.params(), folder, run_id)
    return result


@dataclass(frozen=True)
class _Plan:
    """One evaluation's settings, checked: what :func:`evaluate` runs, in order."""

    datasets: list[tuple[str, data_lib.ImageData]]
    protocols: list[str]
    seeds: list[int]
    base: TrainConfig  # the VAE's settings, before the seed and the task
    iwae_k: int | None
    wanted: list[str]  # the detectors asked for
    all_detectors: bool  # none named: the slow ones only on small images (default_detectors)
    max_classes: int | None
    plans: dict[str, tuple[int | None, int]]  # per data set: rotating classes, planted classes (task_plan)
    kinds: list[str]

    @classmethod
    def of(
        cls,
        data: str | data_lib.ImageData | Sequence[str | data_lib.ImageData],
        *,
        protocols: Sequence[str],
        seeds: Sequence[int],
        epochs: int,
        train_config: TrainConfig | None,
        iwae_k: int | None,
        detectors: Iterable[str] | None,
        max_classes: int | None,
        classes: int | None,
        planted: int | None,
        kinds: Sequence[str],
    ) -> _Plan:
        protocols = check_protocols(protocols)
        kinds = corruptions.check_kinds(kinds)
        if not kinds:
            raise ValueError("no corruption kinds: give at least one")
        seeds = list(dict.fromkeys(int(s) for s in seeds))
        if not seeds:
            raise ValueError("no seeds: give at least one")
        wanted = _wanted_detectors(detectors, iwae_k)
        datasets = list(load_data_sets(data))
        return cls(
            datasets=datasets,
            protocols=protocols,
            seeds=seeds,
            base=replace(train_config or TrainConfig(), epochs=epochs, conditional=False),
            iwae_k=iwae_k if "vae_iwae_nll" in wanted else None,
            wanted=wanted,
            all_detectors=detectors is None,
            max_classes=max_classes,
            plans={name: task_plan(images, classes, planted) for name, images in datasets},
            kinds=kinds,
        )

    def total(self) -> int:
        return len(self.seeds) * sum(
            count_tasks(images, self.protocols, self.max_classes, self.plans[name][1], self.plans[name][0])
            for name, images in self.datasets
        )

    def tasks(self) -> Iterator[tuple[str, int, TrainConfig, list[str], Task]]:
        """(data set, seed, the VAE's settings for the seed, the detectors, task), in run order."""
        for name, images in self.datasets:
            chosen = default_detectors(images, self.wanted) if self.all_detectors else self.wanted
            rotate, planted = self.plans[name]
            for seed in self.seeds:
                cfg = replace(self.base, seed=seed)
                for task in build_tasks(images, self.protocols, seed, self.max_classes, planted, self.kinds, rotate):
                    yield name, seed, cfg, chosen, task

    def header(self, seconds: float) -> str:
        names = [n for n, _ in self.datasets]
        return _header(self.base, names, self.seeds, self.iwae_k, self.max_classes, seconds, self.plans, self.kinds)

    def params(self) -> dict[str, Any]:
        """The run's settings as MLflow parameters."""
        return {
            "eval_data": ",".join(n for n, _ in self.datasets),
            "eval_seeds": ",".join(map(str, self.seeds)),
            "eval_protocols": ",".join(self.protocols),
            "eval_epochs": self.base.epochs,
            "eval_iwae_k": self.iwae_k or 0,
            "eval_max_classes": self.max_classes or "all",
            "eval_plan": "; ".join(f"{n}: classes {r or 'all'}, planted {p}" for n, (r, p) in self.plans.items()),
            "eval_corruptions": ",".join(self.kinds),
        }


def _run_tasks(
    plan: _Plan, steps: _TaskSteps, score_fit: ScoreFit | None, folder: Path | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every task of ``plan``: (one row per task part and detector, one row per VAE fit), written
    to ``folder`` after each task when given, so a stopped run keeps what it did."""
    rows: list[dict[str, Any]] = []
    fits: list[dict[str, Any]] = []
    for name, seed, cfg, chosen, task in plan.tasks():
        steps.start(name, seed, task)
        task_rows, fit = evaluate_task(task, vae_config(cfg, task), plan.iwae_k, chosen, score_fit)
        rows += [{"data": name, "seed": seed} | r for r in task_rows]
        if fit:
            fits.append({"data": name, "seed": seed} | fit)
        steps.finish(name, seed, task, task_rows, fit)
        if folder is not None:
            _write_results(folder, rows, fits)
    return rows, fits


def _assemble(
    results: pd.DataFrame,
    fits: pd.DataFrame,
    header: Callable[[float], str],
    started: float | None,
    before: tuple[str, pd.DataFrame] | None,
) -> EvaluationResult:
    """The result of the tasks' ``results`` and ``fits``: the summary, the tables (headed by
    ``header(seconds)``) and the default against the method it replaced from the same fits, and,
    with a previous summary ``before`` (its source and frame), the comparison with it.
    ``started``: the run's ``time.perf_counter()`` start (None: not timed)."""
    summary = tables.summarise(results, DETECTORS, PROTOCOLS)
    seconds = 0.0 if started is None else time.perf_counter() - started
    against, section, whole = None, "", ""
    if before is not None:
        source, frame = before
        against = comparison.compare(frame, summary)
        whole, section = comparison.comparison_markdown(frame, summary, source)
    same_fits = comparison.paired(results, f"vae_{PREVIOUS_METHOD}")
    if not same_fits.empty:
        section += "\n" + comparison.paired_markdown(same_fits)
    result = EvaluationResult(
        results=results,
        summary=summary,
        fits=fits,
        markdown=tables.markdown_report(results, summary, header(seconds), DETECTORS, section),
        comparison=against,
        comparison_markdown=whole,
        seconds=seconds,
        paired=same_fits,
    )
    if before is not None:
        result.previous = before[1]
    return result


def _wanted_detectors(detectors: Iterable[str] | None, iwae_k: int | None) -> list[str]:
    """The detectors asked for (None: all), in :data:`DETECTORS` order, less ``vae_iwae_nll`` without ``iwae_k``."""
    asked = set(DETECTORS if detectors is None else detectors)
    unknown = sorted(asked - set(DETECTORS))
    if unknown:
        raise ValueError(f"unknown detector(s) {', '.join(unknown)}; choose from {', '.join(DETECTORS)}")
    wanted = [d for d in DETECTORS if d in asked and (iwae_k or d != "vae_iwae_nll")]
    if not wanted:
        raise ValueError("no detector to run (vae_iwae_nll needs iwae_k > 0)")
    return wanted


def _log_evaluation(
    result: EvaluationResult, base: TrainConfig, params: dict[str, Any], folder: Path | None, run_id: str | None
) -> None:
    """Logs ``result`` to MLflow (into ``run_id``, or a new run); without an output folder the
    files are written to a temporary one for the upload and ``result.paths`` stays empty."""
    if folder is not None:
        result.run_id = log_results(result, base, params, run_id)
        return
    with tempfile.TemporaryDirectory() as tmp:
        write_outputs(result, Path(tmp))
        result.run_id = log_results(result, base, params, run_id)
    result.paths = {}


def task_plan(images: data_lib.ImageData, classes: int | None, planted: int | None) -> tuple[int | None, int]:
    """(rotating classes for held-out and one-class, None for all; planted classes per clustered
    cell) on ``images``: the values given, else the defaults for their size (:data:`LARGE_CLASSES`
    and :data:`LARGE_PLANTED` on more than :data:`SLOW_MAX_PIXELS` pixels)."""
    large = int(np.prod(images.image_shape)) > SLOW_MAX_PIXELS
    rotate = (LARGE_CLASSES if large else None) if classes is None else (classes or None)
    return rotate, (LARGE_PLANTED if large else PLANTED_CLASSES) if planted is None else planted


def default_detectors(images: data_lib.ImageData, wanted: Sequence[str] = DETECTORS) -> list[str]:
    """``wanted`` less :data:`SLOW_DETECTORS` on images of more than :data:`SLOW_MAX_PIXELS` pixels."""
    pixels = int(np.prod(images.image_shape))
    return [d for d in wanted if pixels <= SLOW_MAX_PIXELS or d not in SLOW_DETECTORS]


def _previous_summary(
    previous: str | Path | pd.DataFrame | None, folder: Path | None
) -> tuple[str, pd.DataFrame] | None:
    """(where it came from, the frame) of the summary to compare with, or None."""
    if isinstance(previous, pd.DataFrame):
        return "the previous summary", previous
    path = Path(previous) if previous is not None else (folder / "summary.csv" if folder is not None else None)
    if path is None or (previous is None and not path.is_file()):
        return None
    return f"`{path}`", comparison.read_summary(path)


def combine_runs(
    folders: Sequence[str | Path],
    output_dir: str | Path,
    previous: str | Path | pd.DataFrame | None = None,
    note: str = "",
) -> EvaluationResult:
    """One scorecard from runs made in pieces (other data sets or seeds, same settings): their
    ``results.csv`` and ``vae_fits.csv`` concatenated (a later folder's rows replace an earlier
    one's for the same data set, seed, protocol, task and detector), summarised and written to
    ``output_dir`` as :func:`evaluate` writes, against ``previous`` when given. ``note`` heads the
    tables (what ran, how long)."""
    keys = ["data", "seed", "protocol", "task", "detector"]
    results = pd.concat([pd.read_csv(Path(f) / "results.csv") for f in folders], ignore_index=True)
    results = results.drop_duplicates(keys, keep="last").reset_index(drop=True)
    fit_files = [Path(f) / "vae_fits.csv" for f in folders if (Path(f) / "vae_fits.csv").is_file()]
    fits = pd.concat([pd.read_csv(f) for f in fit_files], ignore_index=True) if fit_files else pd.DataFrame()
    names = list(dict.fromkeys(results["data"]))
    seeds = sorted(int(s) for s in results["seed"].unique())
    header = f"# VAE against PyOD detectors\n\nData sets: {', '.join(names)}; seeds: {', '.join(map(str, seeds))}.\n"
    header += f"\n{note}\n" if note else ""
    before = _previous_summary(previous, None) if previous is not None else None
    result = _assemble(results, fits, lambda _seconds: header, None, before)
    write_outputs(result, Path(output_dir))
    return result


def vae_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The VAE settings worth recording (no paths, no registry settings)."""
    skip = ("work_dir", "promote", "model_name", "data", "shape", "target_fpr", "seed", "conditional")
    skip += ("calibration_folds",)  # vae train's; the scorecard calibrates on each task's validation images
    return {k: v for k, v in asdict(cfg).items() if k not in skip}


def _header(
    cfg: TrainConfig,
    names: list[str],
    seeds: list[int],
    iwae_k: int | None,
    max_classes: int | None,
    seconds: float,
    plans: dict[str, tuple[int | None, int]] | None = None,
    kinds: Sequence[str] = corruptions.KINDS,
) -> str:
    first = f"the first {max_classes} classes" if max_classes else "every class"
    plan = "; ".join(
        f"{n}: held-out and one-class on {f'{r} classes per seed' if r else first}, {p} planted class(es) "
        "per clustered cell"
        for n, (r, p) in (plans or {}).items()
    )
    return (
        "# VAE against PyOD detectors\n\n"
        f"Data sets: {', '.join(names)}; seeds: {', '.join(map(str, seeds))}"
        + (f". {plan}" if plan else "")
        + f"; corruptions: {', '.join(kinds)}"
        + f"; {seconds:.0f} s.\n\nVAE settings: {vae_settings(cfg)}, IWAE K = {iwae_k or 'none'} "
        f"(one-class fits: {ONE_CLASS_EPOCH_FACTOR}x the epochs; contaminated: no early stopping).\n"
    )


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Writes beside ``path``, then renames: a reader never sees half a file."""
    write_atomically(path, lambda tmp: frame.to_csv(tmp, index=False))


def _write_results(folder: Path, rows: list[dict[str, Any]], fits: list[dict[str, Any]]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"results": folder / "results.csv"}
    _write_csv(pd.DataFrame(rows, columns=list(RESULT_COLUMNS)), paths["results"])
    if fits:
        paths["fits"] = folder / "vae_fits.csv"
        _write_csv(pd.DataFrame(fits), paths["fits"])
    return paths


def write_outputs(result: EvaluationResult, folder: Path) -> None:
    """``results.csv``, ``vae_fits.csv`` (when the VAE ran), ``summary.csv``, ``tables.md`` and
    ``evaluation.png`` into ``folder``, each replaced whole (:func:`pipeline.outputs.files.write_atomically`);
    their paths go to ``result.paths``."""
    paths = _write_results(folder, result.results.to_dict("records"), result.fits.to_dict("records"))
    paths["summary"] = folder / "summary.csv"
    _write_csv(result.summary, paths["summary"])
    paths["tables"] = folder / "tables.md"
    write_atomically(paths["tables"], result.markdown)
    paths["plot"] = folder / "evaluation.png"
    figure = tables.plot_summary(result.summary)
    write_atomically(paths["plot"], lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    if result.comparison_markdown:
        paths["comparison"] = folder / "comparison.md"
        write_atomically(paths["comparison"], result.comparison_markdown)
    if result.previous is not None:
        paths["previous"] = folder / "summary.previous.csv"
        _write_csv(result.previous, paths["previous"])
    result.paths = paths


def _metric_name(text: str) -> str:
    return re.sub(r"[^\w\-. /]", "_", text)


def summary_metrics(summary: pd.DataFrame) -> dict[str, float]:
    """``eval.<data>.<protocol>.<detector>.<metric>_<mean|std|worst>`` for MLflow (finite values only)."""
    out = {}
    for _, row in summary.iterrows():
        prefix = _metric_name(f"eval.{row['data']}.{row['protocol']}.{row['detector']}")
        for metric in METRICS:
            for stat in ("mean", "std", "worst"):
                value = row[f"{metric}_{stat}"]
                if value is not None and math.isfinite(value):
                    out[f"{prefix}.{metric}_{stat}"] = float(value)
    return out


def log_results(
    result: EvaluationResult, cfg: TrainConfig, params: dict[str, Any] | None = None, run_id: str | None = None
) -> str:
    """Logs the summary metrics and the output files into ``run_id`` (or a new run named
    ``evaluation``, with the evaluation's and the VAE's settings as parameters)."""
    import mlflow

    from training import registry

    registry.configure(cfg.work_dir)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else "evaluation") as run:
        if run_id is None:
            mlflow.log_params((params or {}) | vae_settings(cfg))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mlflow.log_metrics(summary_metrics(result.summary))
        mlflow.log_text(result.markdown, "evaluation/tables.md")
        for key in ("results", "summary", "fits", "plot", "comparison"):
            if key in result.paths:
                mlflow.log_artifact(str(result.paths[key]), "evaluation")
        return run.info.run_id
