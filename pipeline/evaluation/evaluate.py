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
:func:`training.fitting.fit` (settings: :func:`vae_config`), then the anomaly score is fitted on the
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
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.evaluation import corruptions, tables
from pipeline.evaluation.results import (
    DETECTORS,
    RESULT_COLUMNS,
    EvaluationResult,
    assemble,
    log_evaluation,
    previous_summary,
    vae_settings,
    write_outputs,
    write_results,
)
from pipeline.evaluation.task_scores import IWAE_K, ONE_CLASS_EPOCH_FACTOR, ScoreFit, evaluate_task, vae_config
from pipeline.evaluation.tasks import PLANTED_CLASSES, PROTOCOLS, Task, build_tasks, check_protocols, count_tasks
from pipeline.steps import Reporter, Step
from training import data as data_lib
from training.config import TrainConfig

log = logging.getLogger(__name__)

DATA_SETS = ("digits", "mnist5k", "mnist5k-binary")
DEFAULT_SEEDS = (0, 1, 2)
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
DEFAULT_EPOCHS = 30
QUICK_EPOCHS = 2  # --quick: epochs per VAE fit,
QUICK_CLASSES = 2  # held-out and one-class tasks for the first classes only,
QUICK_SEEDS = (0,)  # one seed, digits only, and no IWAE,
QUICK_PROTOCOLS = ("held-out", "contaminated-clustered-3", "contaminated-scattered-3", "one-class", "corrupted")
QUICK_PLANTED = 1  # the 3% contaminated cells with one planted class,
QUICK_KINDS = ("blank", "saturated", "wrong-scale", "rotated")  # and four corruptions


# --- the VAE ---------------------------------------------------------------------------------


# --- one task --------------------------------------------------------------------------------


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
    before = previous_summary(previous, folder if keep_previous else None)
    started = time.perf_counter()
    rows, fits = _run_tasks(plan, _TaskSteps(total, progress), score_fit, folder)
    results = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    result = assemble(results, pd.DataFrame(fits), plan.header, started, before)
    if folder is not None:
        write_outputs(result, folder)
    if run_id is not None or log_to_mlflow:
        log_evaluation(result, plan.base, plan.params(), folder, run_id)
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
            write_results(folder, rows, fits)
    return rows, fits


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
