"""The VAE against classical detectors on labelled images, under three protocols.

- ``held-out``: train on every class but one (the usual train split), score the test split;
  the anomalies are the left-out class. One task per class, and the mean.
- ``contaminated``: the unsupervised setting of ODDS ``optdigits``: every class but the first,
  plus examples of the first class making up about 3% of the data; fit on all of it, score all
  of it; the anomalies are the first class.
- ``one-class``: train on one class, score the test split; the anomalies are the other classes.

Every detector in a task sees the same fit and test images, and every random step is seeded,
so a table is reproducible. The VAE is the plain (unconditional) model of
:mod:`training.model`, fitted with :func:`training.train.fit` and scored with
:func:`scoring.elbo.score_images`; nothing is registered.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from scoring import metrics
from scoring.detectors import classical_detectors
from training import data as data_lib
from training.config import TrainConfig

log = logging.getLogger(__name__)

PROTOCOLS = ("held-out", "contaminated", "one-class")
VAE_SCORES = ("neg_elbo", "iwae_nll", "reconstruction_nll")
VAE_DETECTORS = tuple(f"vae_{s}" for s in VAE_SCORES)
CLASSICAL = ("isolation_forest", "one_class_svm", "pca_reconstruction", "kde")
DETECTORS = VAE_DETECTORS + CLASSICAL
METRICS = ("auroc", "average_precision")
CONTAMINATION = 0.03
DEFAULT_EPOCHS = 30
ONE_CLASS_EPOCH_FACTOR = 4


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


@dataclass
class EvaluationResult:
    rows: list[dict] = field(repr=False)  # one per task and detector
    fits: list[dict] = field(repr=False)  # one per VAE fit: epochs, test likelihood, KL, time
    tables: dict[str, str]  # markdown, per protocol
    csv_path: Path | None = None
    plot_path: Path | None = None
    run_id: str | None = None


def _labels(data: data_lib.ImageData) -> np.ndarray:
    if data.labels is None or not data.class_names:
        raise data_lib.DataError(f"{data.source}: the evaluation needs labelled images (classes define anomalies)")
    return data.labels


def held_out_tasks(data: data_lib.ImageData, seed: int = 0) -> list[Task]:
    """Per class c: fit on the train split without c, score the whole test split; anomalies = c."""
    labels = _labels(data)
    parts = data_lib.split(data, seed=seed)
    tasks = []
    for c in np.unique(labels):
        tasks.append(
            Task(
                protocol="held-out",
                target=data.class_names[c],
                fit=parts.train.subset(np.flatnonzero(parts.train.labels != c)),
                validation=parts.validation.subset(np.flatnonzero(parts.validation.labels != c)),
                test=parts.test,
                is_anomaly=parts.test.labels == c,
            )
        )
    return tasks


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


def one_class_tasks(data: data_lib.ImageData, seed: int = 0) -> list[Task]:
    """Per class c: fit on the train split of c only, score the whole test split; anomalies = not c."""
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
        for c in np.unique(labels)
    ]


def build_tasks(data: data_lib.ImageData, protocols: Sequence[str] = PROTOCOLS, seed: int = 0) -> list[Task]:
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocol(s) {', '.join(unknown)}; choose from {', '.join(PROTOCOLS)}")
    tasks: list[Task] = []
    for protocol in PROTOCOLS:  # table order, whatever order they were asked in
        if protocol not in protocols:
            continue
        if protocol == "held-out":
            tasks += held_out_tasks(data, seed)
        elif protocol == "contaminated":
            tasks.append(contaminated_task(data, seed))
        else:
            tasks += one_class_tasks(data, seed)
    return tasks


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


def score_with_vae(task: Task, cfg: TrainConfig, iwae_k: int = 100) -> tuple[dict[str, np.ndarray], dict]:
    """Fits a fresh plain VAE on the task's images and scores its test images: the three VAE
    scores, and a summary of the fit (epochs, the normal test examples' mean scores)."""
    import keras

    from scoring.elbo import score_images
    from training.train import build_model, fit, set_seeds

    keras.backend.clear_session()
    set_seeds(cfg.seed)
    split = data_lib.Split(task.fit, task.validation, task.test)
    model = build_model(cfg, task.fit)
    started = time.perf_counter()
    epoch_log = logging.getLogger("training.callbacks")  # one line per task, not per epoch of 21 fits
    level = epoch_log.level
    epoch_log.setLevel(max(level, logging.WARNING))
    try:
        history, seconds_per_epoch = fit(cfg, model, split)
    finally:
        epoch_log.setLevel(level)
    scores = score_images(
        model, task.test.images, num_samples=cfg.score_samples, seed=cfg.seed, iwae_k=iwae_k, batch_size=128
    )
    normal = ~task.is_anomaly
    summary = {
        "protocol": task.protocol,
        "target": task.target,
        "epochs_run": len(history.get("loss", [])),
        "seconds": round(time.perf_counter() - started, 2),
        "seconds_per_epoch": round(seconds_per_epoch, 3),
        "normal_neg_elbo": float(scores["neg_elbo"][normal].mean()),
        "normal_iwae_nll": float(scores["iwae_nll"][normal].mean()),
        "normal_kl": float(scores["kl"][normal].mean()),
        "anomalous_neg_elbo": float(scores["neg_elbo"][task.is_anomaly].mean()),
    }
    return scores, summary


def evaluate_task(task: Task, cfg: TrainConfig, iwae_k: int = 100, detectors: Iterable[str] = DETECTORS):
    """Every requested detector on one task: rows of AUROC and average precision, and the VAE
    fit summary (None when no VAE detector was asked for)."""
    wanted = set(detectors)
    scores: dict[str, np.ndarray] = {}
    summary = None
    if wanted & set(VAE_DETECTORS):
        vae_scores, summary = score_with_vae(task, cfg, iwae_k)
        scores |= {f"vae_{k}": vae_scores[k] for k in VAE_SCORES}
    same = task.fit is task.test  # unsupervised: fit on the images that are scored
    for detector in classical_detectors(cfg.seed):
        if detector.name in wanted:
            if same:
                scores[detector.name] = detector.fit_score(task.fit.images)
            else:
                scores[detector.name] = detector.fit(task.fit.images).score(task.test.images)
    rows = [
        {
            "protocol": task.protocol,
            "target": task.target,
            "detector": name,
            "auroc": metrics.auroc(task.is_anomaly, scores[name]),
            "average_precision": metrics.average_precision(task.is_anomaly, scores[name]),
            **task.counts,
        }
        for name in DETECTORS
        if name in scores
    ]
    return rows, summary


def results_table(rows: list[dict], protocol: str, metric: str):
    """A pandas table: one row per task (and the mean), one column per detector."""
    import pandas as pd

    frame = pd.DataFrame([r for r in rows if r["protocol"] == protocol])
    if frame.empty:
        return frame
    table = frame.pivot(index="target", columns="detector", values=metric)
    table = table[[d for d in DETECTORS if d in table.columns]]
    table = table.loc[sorted(table.index, key=_natural)]
    if len(table) > 1:
        table.loc["mean"] = table.mean(axis=0)
    table.index.name = "anomalous class" if protocol != "one-class" else "normal class"
    return table


def _natural(value: str):
    return (0, int(value), "") if str(value).isdigit() else (1, 0, str(value))


def markdown_table(table) -> str:
    """A pipe table with the best detector of each row in bold."""
    if table.empty:
        return ""
    columns = list(table.columns)
    lines = [
        "| " + " | ".join([table.index.name or "", *columns]) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for index, row in table.iterrows():
        values = row.to_numpy(dtype=float)
        best = np.nanmax(values) if np.isfinite(values).any() else math.nan
        cells = []
        for v in values:
            text = "n/a" if not math.isfinite(v) else f"{v:.3f}"
            cells.append(f"**{text}**" if math.isfinite(v) and v == best else text)
        label = f"**{index}**" if index == "mean" else str(index)
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def render_tables(rows: list[dict]) -> dict[str, str]:
    """Markdown, per protocol: the AUROC table, then the average-precision table."""
    out = {}
    for protocol in PROTOCOLS:
        parts = []
        for metric in METRICS:
            table = results_table(rows, protocol, metric)
            if not table.empty:
                parts.append(f"{metric.replace('_', ' ').upper() if metric == 'auroc' else 'Average precision'}:\n\n")
                parts[-1] += markdown_table(table)
        if parts:
            out[protocol] = "\n\n".join(parts)
    return out


def plot_results(rows: list[dict]):
    """AUROC per task for every detector, one panel per protocol (the mean in the legend)."""
    from training.plots import new_figure

    protocols = [p for p in PROTOCOLS if any(r["protocol"] == p for r in rows)]
    fig, axes = new_figure(1, len(protocols), figsize=(5.2 * len(protocols), 4.2), squeeze=False)
    markers = "ovs^DPX*"
    for ax, protocol in zip(axes[0], protocols, strict=True):
        table = results_table(rows, protocol, "auroc")
        per_task = table.drop(index="mean") if "mean" in table.index else table
        if len(per_task) == 1:
            values = per_task.iloc[0]
            colours = [f"C{i}" for i in range(len(values))]
            ax.barh(list(values.index)[::-1], values.to_numpy()[::-1], color=colours[::-1])
            for y, v in enumerate(values.to_numpy()[::-1]):
                ax.text(min(v, 1.0) - 0.01, y, f"{v:.3f}", va="center", ha="right", color="white", fontsize=8)
            ax.set_xlim(max(0.0, float(np.nanmin(values.to_numpy())) - 0.1), 1.0)
            ax.set_xlabel("AUROC")
        else:
            x = np.arange(len(per_task))
            for i, detector in enumerate(per_task.columns):
                mean = table.loc["mean", detector] if "mean" in table.index else per_task[detector].mean()
                ax.plot(
                    x,
                    per_task[detector].to_numpy(),
                    marker=markers[i % len(markers)],
                    linestyle="-" if detector.startswith("vae_") else ":",
                    color=f"C{i}",
                    label=f"{detector} ({mean:.3f})",
                )
            ax.set_xticks(x, list(per_task.index))
            ax.set_xlabel(table.index.name)
            ax.set_ylabel("AUROC")
            ax.legend(fontsize=7, loc="lower left")
        ax.set_title(protocol)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def evaluate(
    data: str | data_lib.ImageData = "digits",
    protocols: Sequence[str] = PROTOCOLS,
    *,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    output_dir: str | Path | None = None,
    run_id: str | None = None,
    log_to_mlflow: bool = False,
    train_config: TrainConfig | None = None,
    iwae_k: int = 100,
    detectors: Iterable[str] = DETECTORS,
    progress: Callable[[str], None] | None = None,
) -> EvaluationResult:
    """Runs the protocols and every detector; writes ``results.csv``, ``vae_fits.csv``,
    ``tables.md`` and ``evaluation.png`` to ``output_dir`` when given, and logs them to MLflow
    when ``run_id`` is given (into that run) or ``log_to_mlflow`` is set (a new run).

    ``train_config`` sets the VAE (its defaults otherwise); ``epochs`` and ``seed`` override it.
    """
    say = progress or log.info
    images = data if isinstance(data, data_lib.ImageData) else data_lib.load(data)
    base = replace(train_config or TrainConfig(), epochs=epochs, seed=seed, conditional=False)
    tasks = build_tasks(images, protocols, seed)
    detectors = [d for d in DETECTORS if d in set(detectors)]
    rows: list[dict] = []
    fits: list[dict] = []
    started = time.perf_counter()
    for i, task in enumerate(tasks, 1):
        task_rows, summary = evaluate_task(task, vae_config(base, task), iwae_k, detectors)
        rows += task_rows
        if summary:
            fits.append(summary)
        best = max(task_rows, key=lambda r: r["auroc"] if math.isfinite(r["auroc"]) else -1.0)
        vae = next((r for r in task_rows if r["detector"] == "vae_neg_elbo"), None)
        say(
            f"[{i}/{len(tasks)}] {task.protocol} {task.target}: "
            + (f"vae_neg_elbo AUROC {vae['auroc']:.3f}, " if vae else "")
            + f"best {best['detector']} {best['auroc']:.3f}"
            + (f" (VAE {summary['epochs_run']} epochs, KL {summary['normal_kl']:.2f} nats)" if summary else "")
            + f"  [{time.perf_counter() - started:.0f}s]"
        )
    result = EvaluationResult(rows=rows, fits=fits, tables=render_tables(rows))
    if output_dir is not None:
        write_outputs(result, Path(output_dir), base, iwae_k)
    if run_id is not None or log_to_mlflow:
        result.run_id = log_results(result, base, iwae_k, run_id)
    return result


def write_outputs(result: EvaluationResult, folder: Path, cfg: TrainConfig, iwae_k: int) -> None:
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    result.csv_path = folder / "results.csv"
    pd.DataFrame(result.rows).to_csv(result.csv_path, index=False)
    if result.fits:
        pd.DataFrame(result.fits).to_csv(folder / "vae_fits.csv", index=False)
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("work_dir", "promote", "model_name")}
    text = [f"VAE settings: {settings}, IWAE K = {iwae_k}\n"]
    text += [f"## {protocol}\n\n{body}\n" for protocol, body in result.tables.items()]
    (folder / "tables.md").write_text("\n".join(text))
    figure = plot_results(result.rows)
    result.plot_path = folder / "evaluation.png"
    figure.savefig(result.plot_path, dpi=110)


def summary_metrics(rows: list[dict]) -> dict[str, float]:
    """Mean AUROC and average precision per protocol and detector, for MLflow."""
    out = {}
    for protocol in PROTOCOLS:
        for metric in METRICS:
            table = results_table(rows, protocol, metric)
            if table.empty:
                continue
            means = table.loc["mean"] if "mean" in table.index else table.iloc[0]
            for detector, value in means.items():
                if math.isfinite(value):
                    out[f"eval.{protocol}.{detector}.mean_{metric}"] = float(value)
    return out


def log_results(result: EvaluationResult, cfg: TrainConfig, iwae_k: int, run_id: str | None = None) -> str:
    """Logs the mean metrics, the tables, the CSV and the plot into ``run_id`` (or a new run)."""
    import mlflow

    from training import registry

    registry.configure(cfg.work_dir)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else "evaluation") as run:
        if run_id is None:
            mlflow.log_params(
                {
                    "eval_epochs": cfg.epochs,
                    "eval_seed": cfg.seed,
                    "eval_iwae_k": iwae_k,
                    "latent_dim": cfg.latent_dim,
                    "likelihood": cfg.likelihood,
                    "kl_warmup": cfg.kl_warmup,
                }
            )
        mlflow.log_metrics(summary_metrics(result.rows))
        mlflow.log_text("\n\n".join(f"## {p}\n\n{t}" for p, t in result.tables.items()), "evaluation/tables.md")
        for path in (result.csv_path, result.plot_path):
            if path is not None:
                mlflow.log_artifact(str(path), "evaluation")
        return run.info.run_id
