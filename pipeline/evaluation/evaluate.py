"""The VAE against classical detectors (PyOD) on labelled images: three protocols, several data
sets, several seeds.

- ``held-out``: train on every class but one (the usual train split), score the test split;
  the anomalies are the left-out class. One task per class.
- ``contaminated``: the unsupervised setting of ODDS ``optdigits``: every class but the first,
  plus examples of the first class making up about 3% of the data; fit on all of it, score all
  of it; the anomalies are the first class. One task.
- ``one-class``: train on one class, score the test split; the anomalies are the other classes.
  One task per class.

Every detector in a task sees the same fit and test images, and every random step is seeded by
the run's seed (the split, the planted anomalies, the VAE, and the detectors that take a seed),
so a table is reproducible. Per seed, a detector's AUROC and average precision are averaged over
the tasks of a protocol; the summary gives the mean, standard deviation and worst of those over
the seeds (:mod:`pipeline.evaluation.tables`).

The VAE is the plain (unconditional) model of :mod:`training.model`, fitted fresh per task with
:func:`training.train.fit` (settings: :func:`vae_config`), then the anomaly score is fitted on the
task's fit images (the ``score_fit`` hook, :class:`scoring.detector.VAEDetector` by default) and the
test images are scored with :func:`scoring.detector.score_images`; nothing is registered. The
classical detectors are PyOD's, with its defaults (:mod:`scoring.detectors`). A classical
detector that raises or returns a non-finite score gets NaN metrics for that task and a logged
warning; the evaluation carries on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.evaluation import tables
from pipeline.outputs.files import write_atomically
from scoring import metrics
from scoring.detectors import DETECTOR_NAMES, classical_detectors
from training import data as data_lib
from training.config import TrainConfig

log = logging.getLogger(__name__)

DATA_SETS = ("digits", "mnist5k")
DEFAULT_SEEDS = (0, 1, 2)
PROTOCOLS = ("held-out", "contaminated", "one-class")
VAE_SCORES = ("anomaly_score", "neg_elbo", "iwae_nll")  # the default score first
VAE_DETECTORS = tuple(f"vae_{s}" for s in VAE_SCORES)
CLASSICAL = DETECTOR_NAMES
DETECTORS = VAE_DETECTORS + CLASSICAL
METRICS = tables.METRICS
CONTAMINATION = 0.03
DEFAULT_EPOCHS = 30
IWAE_K = 0  # the IWAE bound ranked no better than the ELBO (README); --iwae-k 100 adds it
ONE_CLASS_EPOCH_FACTOR = 4
QUICK_EPOCHS = 2  # --quick: epochs per VAE fit,
QUICK_CLASSES = 2  # held-out and one-class tasks for the first classes only,
QUICK_SEEDS = (0,)  # one seed, digits only, and no IWAE
RESULT_COLUMNS = (
    "data",
    "seed",
    "protocol",
    "task",
    "detector",
    "auroc",
    "average_precision",
    "seconds",
    "n_fit",
    "n_normal",
    "n_anomalous",
)


@dataclass(frozen=True)
class Task:
    """One comparison: the images every detector is fitted on, and the images it is scored on."""

    protocol: str
    target: str  # the class that defines the task (left out, planted, or the only one)
    fit: data_lib.ImageData
    validation: data_lib.ImageData  # early stopping for the VAE only; never scored
    test: data_lib.ImageData
    is_anomaly: np.ndarray  # bool, one per test image

    @property
    def counts(self) -> dict[str, int]:
        return {
            "n_fit": len(self.fit),
            "n_normal": int((~self.is_anomaly).sum()),
            "n_anomalous": int(self.is_anomaly.sum()),
        }

    @property
    def unsupervised(self) -> bool:
        """True where the scored images are the fit images (the contaminated protocol)."""
        return self.fit is self.test


#: ``score_fit(model, task)``: fits the anomaly score's statistics after the VAE fit.
ScoreFit = Callable[[Any, Task], None]


@dataclass
class EvaluationResult:
    """What :func:`evaluate` returns; ``paths`` names the files written (``results``, ``summary``,
    ``fits``, ``tables``, ``plot``), when an output folder was given."""

    results: pd.DataFrame = field(repr=False)  # one row per data set, seed, protocol, task, detector
    summary: pd.DataFrame = field(repr=False)  # one row per data set, protocol, detector
    fits: pd.DataFrame = field(repr=False)  # one row per VAE fit: epochs, seconds, mean scores, KL
    markdown: str = field(repr=False)  # tables.md
    seconds: float = 0.0
    paths: dict[str, Path] = field(default_factory=dict)
    run_id: str | None = None


# --- tasks -----------------------------------------------------------------------------------


def _labels(data: data_lib.ImageData) -> np.ndarray:
    if data.labels is None or not data.class_names:
        raise data_lib.DataError(f"{data.source}: the evaluation needs labelled images (classes define anomalies)")
    return data.labels


def _classes(labels: np.ndarray, max_classes: int | None) -> np.ndarray:
    classes = np.unique(labels)
    return classes if max_classes is None else classes[:max_classes]


def held_out_tasks(data: data_lib.ImageData, seed: int = 0, max_classes: int | None = None) -> list[Task]:
    """Per class c (the first ``max_classes`` only, if given): fit on the train split without c,
    score the whole test split; anomalies = c."""
    labels = _labels(data)
    parts = data_lib.split(data, seed=seed)
    return [
        Task(
            protocol="held-out",
            target=data.class_names[c],
            fit=parts.train.subset(np.flatnonzero(parts.train.labels != c)),
            validation=parts.validation.subset(np.flatnonzero(parts.validation.labels != c)),
            test=parts.test,
            is_anomaly=parts.test.labels == c,
        )
        for c in _classes(labels, max_classes)
    ]


def contaminated_task(
    data: data_lib.ImageData, seed: int = 0, anomaly_class: int = 0, contamination: float = CONTAMINATION
) -> Task:
    """Every class but ``anomaly_class``, plus a seeded sample of it making up ``contamination``
    of the whole; fit and score on the same images (unsupervised)."""
    labels = _labels(data)
    normal = np.flatnonzero(labels != anomaly_class)
    candidates = np.flatnonzero(labels == anomaly_class)
    n_anomalous = min(len(candidates), max(1, round(contamination * len(normal) / (1.0 - contamination))))
    planted = np.random.default_rng(seed).choice(candidates, size=n_anomalous, replace=False)
    everything = data.subset(np.sort(np.concatenate([normal, planted])))
    return Task(
        protocol="contaminated",
        target=data.class_names[anomaly_class],
        fit=everything,
        validation=everything,
        test=everything,
        is_anomaly=everything.labels == anomaly_class,
    )


def one_class_tasks(data: data_lib.ImageData, seed: int = 0, max_classes: int | None = None) -> list[Task]:
    """Per class c (the first ``max_classes`` only, if given): fit on the train split of c only,
    score the whole test split; anomalies = not c."""
    labels = _labels(data)
    parts = data_lib.split(data, seed=seed)
    return [
        Task(
            protocol="one-class",
            target=data.class_names[c],
            fit=parts.train.subset(np.flatnonzero(parts.train.labels == c)),
            validation=parts.validation.subset(np.flatnonzero(parts.validation.labels == c)),
            test=parts.test,
            is_anomaly=parts.test.labels != c,
        )
        for c in _classes(labels, max_classes)
    ]


def check_protocols(protocols: Iterable[str]) -> list[str]:
    """The protocols in table order; raises ``ValueError`` on an unknown one."""
    wanted = list(protocols)
    unknown = [p for p in wanted if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocol(s) {', '.join(unknown)}; choose from {', '.join(PROTOCOLS)}")
    return [p for p in PROTOCOLS if p in wanted]


def build_tasks(
    data: data_lib.ImageData, protocols: Sequence[str] = PROTOCOLS, seed: int = 0, max_classes: int | None = None
) -> list[Task]:
    """The tasks of ``protocols`` on ``data`` for one seed, in table order (held-out, contaminated,
    one-class) whatever order they were asked in."""
    tasks: list[Task] = []
    for protocol in check_protocols(protocols):
        if protocol == "held-out":
            tasks += held_out_tasks(data, seed, max_classes)
        elif protocol == "contaminated":
            tasks.append(contaminated_task(data, seed))
        else:
            tasks += one_class_tasks(data, seed, max_classes)
    return tasks


def count_tasks(data: data_lib.ImageData, protocols: Sequence[str] = PROTOCOLS, max_classes: int | None = None) -> int:
    """How many tasks :func:`build_tasks` makes per seed, without building them."""
    classes = len(_classes(_labels(data), max_classes))
    return sum(1 if p == "contaminated" else classes for p in check_protocols(protocols))


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
    if task.protocol == "contaminated":
        cfg = replace(cfg, early_stopping=0)
    return cfg


def score_with_vae(
    task: Task, cfg: TrainConfig, iwae_k: int | None = IWAE_K, score_fit: ScoreFit | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Fits a fresh plain VAE on the task's images, fits its anomaly score (``score_fit``, by
    default :class:`scoring.detector.VAEDetector` with ``cfg.anomaly_score``) and scores the test images: the dict of
    :func:`scoring.detector.score_images` (``anomaly_score``, ``neg_elbo``, ``reconstruction_nll``,
    ``kl``, and ``iwae_nll`` when ``iwae_k``), and a summary of the fit (epochs, seconds, the
    normal test examples' mean scores)."""
    import keras

    from scoring.detector import score_images
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
    if score_fit is None:
        from scoring.detector import VAEDetector

        VAEDetector(model, cfg.anomaly_score).fit(task.fit.images)
    else:
        score_fit(model, task)
    scores = score_images(
        model, task.test.images, num_samples=cfg.score_samples, seed=cfg.seed, iwae_k=iwae_k or None, batch_size=128
    )
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
    return scores, summary


# --- one task --------------------------------------------------------------------------------


def classical_scores(detector: Any, task: Task) -> np.ndarray | None:
    """One PyOD wrapper's scores of the task's test images (``decision_scores_`` where the test
    images are the fit images), or None, with a warning logged, if it raised or any score is
    not finite."""
    try:
        if task.unsupervised:
            scores = detector.fit_score(task.fit.images)
        else:
            scores = detector.fit(task.fit.images).score(task.test.images)
    except Exception as exc:  # whatever a third-party detector raises costs one NaN cell, not the run
        log.warning("%s failed (%s: %s); its metrics are NaN", _where(detector.name, task), type(exc).__name__, exc)
        return None
    return _finite_or_none(detector.name, task, scores)


def _where(name: str, task: Task) -> str:
    return f"{name} on {task.protocol} {task.target}"


def _finite_or_none(name: str, task: Task, scores: np.ndarray) -> np.ndarray | None:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.shape != (len(task.test),):
        log.warning("%s: %d scores for %d images; its metrics are NaN", _where(name, task), scores.size, len(task.test))
        return None
    bad = int((~np.isfinite(scores)).sum())
    if bad:
        log.warning("%s: %d of %d scores are not finite; its metrics are NaN", _where(name, task), bad, scores.size)
        return None
    return scores


def evaluate_task(
    task: Task,
    cfg: TrainConfig,
    iwae_k: int | None = IWAE_K,
    detectors: Iterable[str] = DETECTORS,
    score_fit: ScoreFit | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every requested detector on one task: rows (``protocol, task, detector, auroc,
    average_precision, seconds`` and the counts), in :data:`DETECTORS` order, and the VAE fit
    summary (None when no VAE detector was asked for). ``cfg.seed`` seeds the detectors too."""
    wanted = [d for d in DETECTORS if d in set(detectors)]
    if not iwae_k:
        wanted = [d for d in wanted if d != "vae_iwae_nll"]
    scores: dict[str, np.ndarray | None] = {}
    seconds: dict[str, float] = {}
    summary = None
    vae_wanted = [d for d in wanted if d in VAE_DETECTORS]
    if vae_wanted:
        k = iwae_k if "vae_iwae_nll" in vae_wanted else None
        vae_scores, summary = score_with_vae(task, cfg, k, score_fit)
        for name in vae_wanted:
            scores[name] = _finite_or_none(name, task, vae_scores[name.removeprefix("vae_")])
            seconds[name] = summary["seconds"]
    for detector in classical_detectors(cfg.seed, [d for d in wanted if d in CLASSICAL]):
        started = time.perf_counter()
        scores[detector.name] = classical_scores(detector, task)
        seconds[detector.name] = round(time.perf_counter() - started, 3)
    rows = []
    for name in wanted:
        s = scores[name]
        rows.append(
            {
                "protocol": task.protocol,
                "task": task.target,
                "detector": name,
                "auroc": math.nan if s is None else metrics.auroc(task.is_anomaly, s),
                "average_precision": math.nan if s is None else metrics.average_precision(task.is_anomaly, s),
                "seconds": seconds[name],
                **task.counts,
            }
        )
    return rows, summary


# --- progress --------------------------------------------------------------------------------


class Progress:
    """A tqdm bar over every task (postfix: data set, seed, protocol, task, the last VAE AUROC)
    when ``mode`` is ``"bar"``, or one plain line per finished task (``"lines"``: to stdout, or
    to ``mode`` itself when it is a callable); ``"auto"`` picks the bar when stdout is a
    terminal; ``"off"`` says nothing."""

    def __init__(self, total: int, mode: str | Callable[[str], None] = "auto") -> None:
        self.total = total
        self.done = 0
        self.started = time.perf_counter()
        self.last_vae: str = "-"
        self._bar = None
        self._say: Callable[[str], None] | None = None
        self._stack = contextlib.ExitStack()
        if callable(mode):
            self._say = mode
        elif mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "lines"
        if mode == "bar":
            from tqdm.auto import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=total, unit="task", file=sys.stdout, dynamic_ncols=True)
            self._stack.enter_context(logging_redirect_tqdm())  # warnings print above the bar, not through it
        elif mode == "lines":
            self._say = lambda line: print(line, flush=True)
        elif not callable(mode) and mode != "off":
            raise ValueError(f"progress: {mode!r}; choose auto, bar, lines or off, or pass a callable")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, data: str, seed: int, task: Task) -> None:
        if self._bar is not None:
            postfix = {"data": data, "seed": seed, "protocol": task.protocol, "task": task.target}
            self._bar.set_postfix(postfix | {"vae_auroc": self.last_vae}, refresh=True)

    def finish(self, data: str, seed: int, task: Task, rows: list[dict[str, Any]], fit: dict | None) -> None:
        self.done += 1
        vae = next((r for r in rows if r["detector"].startswith("vae_")), None)
        if vae is not None:
            self.last_vae = f"{vae['auroc']:.3f}"
        if self._bar is not None:
            self._bar.update(1)
        elif self._say is not None:
            finite = [r for r in rows if math.isfinite(r["auroc"])]
            best = max(finite, key=lambda r: r["auroc"]) if finite else None
            self._say(
                f"[{self.done}/{self.total}] {data} seed {seed} {task.protocol} {task.target}: "
                + (f"{vae['detector']} AUROC {vae['auroc']:.3f}, " if vae else "")
                + (f"best {best['detector']} {best['auroc']:.3f}" if best else "no finite AUROC")
                + (f" (VAE {fit['epochs_run']} epochs, KL {fit['normal_kl']:.2f} nats)" if fit else "")
                + f"  [{time.perf_counter() - self.started:.0f}s]"
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._stack.close()


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
    detectors: Iterable[str] = DETECTORS,
    max_classes: int | None = None,
    score_fit: ScoreFit | None = None,
    output_dir: str | Path | None = None,
    run_id: str | None = None,
    log_to_mlflow: bool = False,
    progress: str | Callable[[str], None] = "auto",
) -> EvaluationResult:
    """Runs every protocol on every data set for every seed, with every detector.

    ``data``: built-in names (``digits``, ``mnist5k``, ...), paths or ``ImageData``, one or a list.
    ``train_config`` sets the VAE (the :class:`TrainConfig` defaults otherwise); ``epochs`` and
    each seed override its ``epochs`` and ``seed``, and :func:`vae_config` adapts it per task.
    ``iwae_k``: samples of the IWAE bound (None or 0: no ``vae_iwae_nll``). ``max_classes``: the
    held-out and one-class tasks of the first classes only. ``score_fit``: how the anomaly score
    is fitted after each VAE fit (by default :class:`scoring.detector.VAEDetector` with the
    config's method). ``progress``: see :class:`Progress`.

    Writes ``results.csv``, ``summary.csv``, ``vae_fits.csv``, ``tables.md`` and
    ``evaluation.png`` to ``output_dir`` when given (``results.csv`` and ``vae_fits.csv`` after
    every task, so a stopped run keeps what it did), and logs the summary metrics and those files
    to MLflow when ``run_id`` is given (into that run) or ``log_to_mlflow`` is set (a new run).
    """
    protocols = check_protocols(protocols)
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise ValueError("no seeds: give at least one")
    asked = set(detectors)
    unknown = sorted(asked - set(DETECTORS))
    if unknown:
        raise ValueError(f"unknown detector(s) {', '.join(unknown)}; choose from {', '.join(DETECTORS)}")
    wanted = [d for d in DETECTORS if d in asked and (iwae_k or d != "vae_iwae_nll")]
    if not wanted:
        raise ValueError("no detector to run (vae_iwae_nll needs iwae_k > 0)")
    iwae_k = iwae_k if "vae_iwae_nll" in wanted else None
    base = replace(train_config or TrainConfig(), epochs=epochs, conditional=False)
    datasets = list(load_data_sets(data))
    total = len(seeds) * sum(count_tasks(images, protocols, max_classes) for _, images in datasets)
    folder = Path(output_dir) if output_dir is not None else None
    rows: list[dict[str, Any]] = []
    fits: list[dict[str, Any]] = []
    started = time.perf_counter()
    with Progress(total, progress) as bar:
        for name, images in datasets:
            for seed in seeds:
                cfg = replace(base, seed=seed)
                for task in build_tasks(images, protocols, seed, max_classes):
                    bar.start(name, seed, task)
                    task_rows, fit = evaluate_task(task, vae_config(cfg, task), iwae_k, wanted, score_fit)
                    rows += [{"data": name, "seed": seed} | r for r in task_rows]
                    if fit:
                        fits.append({"data": name, "seed": seed} | fit)
                    bar.finish(name, seed, task, task_rows, fit)
                    if folder is not None:
                        _write_results(folder, rows, fits)
    results = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    summary = tables.summarise(results, DETECTORS, PROTOCOLS)
    seconds = time.perf_counter() - started
    header = _header(base, [n for n, _ in datasets], seeds, iwae_k, max_classes, seconds)
    result = EvaluationResult(
        results=results,
        summary=summary,
        fits=pd.DataFrame(fits),
        markdown=tables.markdown_report(results, summary, header, DETECTORS),
        seconds=seconds,
    )
    if folder is not None:
        write_outputs(result, folder)
    if run_id is not None or log_to_mlflow:
        params = {
            "eval_data": ",".join(n for n, _ in datasets),
            "eval_seeds": ",".join(map(str, seeds)),
            "eval_protocols": ",".join(protocols),
            "eval_epochs": epochs,
            "eval_iwae_k": iwae_k or 0,
            "eval_max_classes": max_classes or "all",
        }
        if folder is None:
            with tempfile.TemporaryDirectory() as tmp:
                write_outputs(result, Path(tmp))
                result.run_id = log_results(result, base, params, run_id)
            result.paths = {}
        else:
            result.run_id = log_results(result, base, params, run_id)
    return result


def vae_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The VAE settings worth recording (no paths, no registry settings)."""
    skip = ("work_dir", "promote", "model_name", "data", "shape", "target_fpr", "seed", "conditional")
    return {k: v for k, v in asdict(cfg).items() if k not in skip}


def _header(
    cfg: TrainConfig, names: list[str], seeds: list[int], iwae_k: int | None, max_classes: int | None, seconds: float
) -> str:
    return (
        "# VAE against PyOD detectors\n\n"
        f"Data sets: {', '.join(names)}; seeds: {', '.join(map(str, seeds))}"
        + (f"; the first {max_classes} classes only (held-out, one-class)" if max_classes else "")
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
        for key in ("results", "summary", "fits", "plot"):
            if key in result.paths:
                mlflow.log_artifact(str(result.paths[key]), "evaluation")
        return run.info.run_id
