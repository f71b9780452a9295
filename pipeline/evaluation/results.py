"""What an evaluation leaves behind: its tables as CSV and Markdown beside a plot, the comparison
with a previous summary, runs made in pieces combined, and the summary logged to MLflow."""

from __future__ import annotations

import logging
import math
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.evaluation import comparison, tables
from pipeline.evaluation.tasks import PROTOCOLS
from pipeline.outputs.files import write_atomically
from scoring.anomaly import METHODS as ANOMALY_METHODS
from scoring.anomaly import PREVIOUS_METHOD
from scoring.detectors import DETECTOR_NAMES
from training.config import TrainConfig

log = logging.getLogger(__name__)

#: the default score first; then every other method of scoring.anomaly, from the same fit
VAE_SCORES = ("anomaly_score", "neg_elbo", "iwae_nll", *(m for m in ANOMALY_METHODS if m != "neg_elbo"))
VAE_DETECTORS = tuple(f"vae_{s}" for s in VAE_SCORES)
CLASSICAL = DETECTOR_NAMES
DETECTORS = VAE_DETECTORS + CLASSICAL


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


def previous_summary(
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
    before = previous_summary(previous, None) if previous is not None else None
    result = assemble(results, fits, lambda _seconds: header, None, before)
    write_outputs(result, Path(output_dir))
    return result


def vae_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The VAE settings worth recording (no paths, no registry settings)."""
    skip = ("work_dir", "promote", "model_name", "data", "shape", "target_fpr", "seed", "conditional")
    skip += ("calibration_folds",)  # vae train's; the scorecard calibrates on each task's validation images
    settings = {k: v for k, v in asdict(cfg).items() if k not in skip}
    if settings.get("architecture") == "auto":  # the scorecard's models are plain: auto is dense
        settings["architecture"] = "dense"
    return settings


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Writes beside ``path``, then renames: a reader never sees half a file."""
    write_atomically(path, lambda tmp: frame.to_csv(tmp, index=False))


def write_results(folder: Path, rows: list[dict[str, Any]], fits: list[dict[str, Any]]) -> dict[str, Path]:
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
    paths = write_results(folder, result.results.to_dict("records"), result.fits.to_dict("records"))
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
        for metric in tables.METRICS:
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


def assemble(
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


def log_evaluation(
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
