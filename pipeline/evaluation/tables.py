"""Aggregation, tables and the plot of ``vae evaluate``, from its results frame.

The results frame has one row per data set, seed, protocol, task and detector, with the columns
``data, seed, protocol, task, detector, auroc, average_precision`` (and others that are ignored
here). The summary, per data set, protocol and detector, is taken in two steps:

1. per seed, the mean over the tasks of the protocol (the 10 held-out digits, say);
2. over the seeds, the mean, the standard deviation (``ddof=1``; NaN with one seed) and the
   worst seed (the lowest per-seed mean) with its seed.

A missing value (NaN: a detector that failed on a task) is never skipped: it makes that seed's
mean NaN, and so the summary's, so a failure cannot pass for a good score. ``flagged_rate`` (the
share of anomalies above a detector's threshold, NaN for a detector without one) is summarised
the same way, as ``flagged_rate_mean`` only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRICS = ("auroc", "average_precision")
METRIC_LABELS = {"auroc": "AUROC", "average_precision": "AP"}
KEYS = ("data", "protocol", "detector")
FLAGGED_KINDS = ("blank", "saturated", "wrong-scale")  # the headline's flagged shares (corrupted)
TASK_LABELS = {"one-class": "normal class", "corrupted": "corruption", "held-out": "anomalous class"}


def _order(values: pd.Series, preferred: Sequence[str] | None) -> list[str]:
    """The distinct values of a column: those in ``preferred`` first, in its order, then the rest
    in order of appearance."""
    seen = list(dict.fromkeys(values.tolist()))
    if not preferred:
        return seen
    first = [v for v in preferred if v in seen]
    return first + [v for v in seen if v not in first]


def _strict_mean(values: pd.Series) -> float:
    return float(values.mean(skipna=False)) if len(values) else math.nan


def per_seed(results: pd.DataFrame) -> pd.DataFrame:
    """Step 1: the mean over tasks, per data set, protocol, detector and seed (NaN if any task is)."""
    grouped = results.groupby([*KEYS, "seed"], sort=False)
    columns = [*METRICS, "flagged_rate"] if "flagged_rate" in results.columns else list(METRICS)
    frame = grouped[columns].agg(_strict_mean)
    frame["n_tasks"] = grouped.size()
    return frame.reset_index()


def summarise(
    results: pd.DataFrame,
    detectors: Sequence[str] | None = None,
    protocols: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Mean, standard deviation and worst seed of every metric, per data set, protocol and detector.

    Columns: ``data, protocol, detector, n_seeds, n_tasks``, then for each metric ``<metric>_mean``,
    ``<metric>_std``, ``<metric>_worst`` and ``<metric>_worst_seed``. Rows come in data set order
    (of appearance), then ``protocols`` order, then ``detectors`` order (when given).
    """
    columns = [*KEYS, "n_seeds", "n_tasks"]
    for metric in METRICS:
        columns += [f"{metric}_mean", f"{metric}_std", f"{metric}_worst", f"{metric}_worst_seed"]
    columns.append("flagged_rate_mean")
    if results.empty:
        return pd.DataFrame(columns=columns)
    seeds = per_seed(results)
    rows: list[dict[str, Any]] = []
    for (data, protocol, detector), group in seeds.groupby(list(KEYS), sort=False):
        row: dict[str, Any] = {
            "data": data,
            "protocol": protocol,
            "detector": detector,
            "n_seeds": int(group["seed"].nunique()),
            "n_tasks": int(group["n_tasks"].max()),
        }
        for metric in METRICS:
            values = group[metric].to_numpy(dtype=float)
            failed = np.isnan(values).any()
            row[f"{metric}_mean"] = math.nan if failed else float(values.mean())
            row[f"{metric}_std"] = math.nan if failed or len(values) < 2 else float(values.std(ddof=1))
            worst = int(np.argmin(values)) if not failed else None
            row[f"{metric}_worst"] = math.nan if worst is None else float(values[worst])
            row[f"{metric}_worst_seed"] = None if worst is None else int(group["seed"].iloc[worst])
        flagged = group["flagged_rate"].to_numpy(dtype=float) if "flagged_rate" in group else np.array([math.nan])
        row["flagged_rate_mean"] = float(flagged.mean())
        rows.append(row)
    summary = pd.DataFrame(rows, columns=columns)
    order = {
        "data": _order(results["data"], None),
        "protocol": _order(results["protocol"], protocols),
        "detector": _order(results["detector"], detectors),
    }
    rank = [summary[k].map({v: i for i, v in enumerate(order[k])}) for k in KEYS]
    summary = summary.assign(_d=rank[0], _p=rank[1], _x=rank[2]).sort_values(["_d", "_p", "_x"], kind="stable")
    return summary.drop(columns=["_d", "_p", "_x"]).reset_index(drop=True)


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _best(values: pd.Series) -> str | None:
    """The displayed text of the best (highest) finite value, or None."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return _fmt(max(finite)) if finite else None


def _mean_std(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return _fmt(mean) if not math.isfinite(std) else f"{_fmt(mean)} ± {_fmt(std)}"


def summary_table(summary: pd.DataFrame, data: str, protocol: str) -> str:
    """A markdown table for one data set and protocol: a row per detector, the columns
    ``AUROC mean ± std``, ``worst seed`` (the lowest per-seed AUROC, and its seed) and
    ``AP mean ± std``; the best mean of each metric is in bold. Empty if there are no rows."""
    part = summary[(summary["data"] == data) & (summary["protocol"] == protocol)]
    if part.empty:
        return ""
    best = {metric: _best(part[f"{metric}_mean"]) for metric in METRICS}
    lines = ["| detector | AUROC mean ± std | worst seed | AP mean ± std |", "|---|---|---|---|"]
    for _, row in part.iterrows():
        cells = []
        for metric in METRICS:
            text = _mean_std(row[f"{metric}_mean"], row[f"{metric}_std"])
            bold = best[metric] is not None and _fmt(row[f"{metric}_mean"]) == best[metric]
            cells.append(f"**{text}**" if bold else text)
        worst = row["auroc_worst"]
        seed = row["auroc_worst_seed"]
        worst_text = "n/a" if not math.isfinite(worst) else f"{_fmt(worst)} (seed {int(seed)})"
        lines.append(f"| {row['detector']} | {cells[0]} | {worst_text} | {cells[1]} |")
    return "\n".join(lines)


def _natural(value: Any) -> tuple:
    text = str(value)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def per_task_table(
    results: pd.DataFrame,
    data: str,
    protocol: str,
    metric: str = "auroc",
    detectors: Sequence[str] | None = None,
    bold: bool = True,
) -> str:
    """A markdown table of ``metric`` per task (rows) and detector (columns), the mean over seeds,
    with a last row of the mean over tasks; the best of each row in bold. Empty for a protocol
    with a single task (the summary table says it all). Tasks come in natural order (classes),
    except corruption kinds, which come in the order they were run."""
    part = results[(results["data"] == data) & (results["protocol"] == protocol)]
    if detectors is not None:
        part = part[part["detector"].isin(detectors)]
    if part.empty or part["task"].nunique() < 2:
        return ""
    table = part.groupby(["task", "detector"], sort=False)[metric].agg(_strict_mean).unstack("detector")
    table = table[_order(part["detector"], detectors)]
    order = _order(part["task"], None) if protocol == "corrupted" else sorted(table.index, key=_natural)
    table = table.loc[order]
    table.loc["mean"] = table.mean(axis=0, skipna=False)
    label = TASK_LABELS.get(protocol, "planted class" if "clustered" in protocol else "task")
    lines = ["| " + " | ".join([label, *table.columns]) + " |", "|" + "---|" * (len(table.columns) + 1)]
    for index, values in table.iterrows():
        best = _best(values) if bold else None
        cells = [f"**{_fmt(v)}**" if best is not None and _fmt(v) == best else _fmt(v) for v in values]
        name = f"**{index}**" if index == "mean" else str(index)
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def _task_means(results: pd.DataFrame | None, data: str, protocol: str, detector: str, metric: str) -> pd.Series:
    """``metric`` of ``detector`` per task, the mean over seeds, in order of appearance."""
    if results is None or results.empty:
        return pd.Series(dtype=float)
    part = results[(results["data"] == data) & (results["protocol"] == protocol) & (results["detector"] == detector)]
    return part.groupby("task", sort=False)[metric].agg(_strict_mean)


def worst_task(results: pd.DataFrame | None, data: str, protocol: str, detector: str) -> str:
    """The task with the lowest mean AUROC over seeds and that AUROC (``rotated 0.612``), or ""
    for a protocol with one task."""
    means = _task_means(results, data, protocol, detector, "auroc")
    if len(means) < 2:
        return ""
    if means.isna().any():
        return "n/a"
    return f"{means.idxmin()} {_fmt(means.min())}"


def flagged_shares(results: pd.DataFrame | None, data: str, detector: str, kinds: Sequence[str] = FLAGGED_KINDS) -> str:
    """The share of ``kinds``' broken images that ``detector`` flags in the corrupted protocol,
    the mean over seeds, as ``a / b / c`` (n/a for a kind not run or without a threshold)."""
    means = _task_means(results, data, "corrupted", detector, "flagged_rate")
    return " / ".join(_fmt(means[k], 2) if k in means.index else "n/a" for k in kinds)


def headline_table(
    summary: pd.DataFrame,
    results: pd.DataFrame | None = None,
    vae: str = "vae_anomaly_score",
    also: str = "vae_neg_elbo",
) -> str:
    """One row per data set and protocol: the default VAE score (mean ± std over seeds, worst
    seed), the ELBO alone, the best PyOD detector (by mean AUROC) and the default's margin over
    it (negative: it loses); from ``results``, the default's worst task (class or corruption
    kind, mean over seeds) and, for ``corrupted``, the share of the blank / saturated /
    wrong-scale images it flags at its threshold."""
    lines = [
        f"| data set | protocol | {vae} (mean ± std, worst seed) | {also} | best PyOD detector | margin "
        f"| worst task | flagged: {' / '.join(FLAGGED_KINDS)} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (data, protocol), part in summary.groupby(["data", "protocol"], sort=False):
        rows = part.set_index("detector")
        classical = rows[~rows.index.str.startswith("vae_")]["auroc_mean"].dropna()
        if vae not in rows.index or classical.empty:
            continue
        best = classical.idxmax()
        ours, theirs = rows.loc[vae], rows.loc[best]
        other = _mean_std(rows.loc[also, "auroc_mean"], rows.loc[also, "auroc_std"]) if also in rows.index else "n/a"
        flagged = flagged_shares(results, data, vae) if protocol == "corrupted" else ""
        lines.append(
            f"| {data} | {protocol} | {_mean_std(ours['auroc_mean'], ours['auroc_std'])} "
            f"({_fmt(ours['auroc_worst'])}) | {other} | {best} {_mean_std(theirs['auroc_mean'], theirs['auroc_std'])} "
            f"| {ours['auroc_mean'] - theirs['auroc_mean']:+.3f} | {worst_task(results, data, protocol, vae)} "
            f"| {flagged} |"
        )
    return "\n".join(lines)


def markdown_report(
    results: pd.DataFrame,
    summary: pd.DataFrame,
    header: str = "",
    detectors: Sequence[str] | None = None,
    comparison: str = "",
) -> str:
    """``tables.md``: the headline, the comparison with the previous scorecard (when given), the
    summary table per data set and protocol, then the AUROC per task (and, for the corrupted
    protocol, the share of each kind's broken images the default VAE score flags)."""
    out = [header.rstrip() + "\n"] if header else []
    out.append("## Headline: mean AUROC over seeds\n\n" + headline_table(summary, results) + "\n")
    if comparison:
        out.append(comparison.rstrip() + "\n")
    pairs = list(dict.fromkeys(zip(summary["data"], summary["protocol"], strict=True)))
    for data, protocol in pairs:
        part = summary[(summary["data"] == data) & (summary["protocol"] == protocol)]
        seeds, tasks = int(part["n_seeds"].max()), int(part["n_tasks"].max())
        out.append(
            f"## {data}: {protocol}\n\nMean over {seeds} seed(s) of the mean over {tasks} task(s); "
            "the worst seed is the lowest per-seed mean AUROC.\n\n" + summary_table(summary, data, protocol) + "\n"
        )
    for data, protocol in pairs:
        table = per_task_table(results, data, protocol, "auroc", detectors)
        if table:
            out.append(f"### {data}: {protocol}, AUROC per task (mean over seeds)\n\n{table}\n")
        if protocol == "corrupted" and "flagged_rate" in results.columns:
            vae = [d for d in (detectors or []) if d.startswith("vae_")][:1] or ["vae_anomaly_score"]
            flagged = per_task_table(results, data, protocol, "flagged_rate", vae, bold=False)
            if flagged:
                out.append(
                    f"### {data}: corrupted, share of the broken images flagged at the default threshold "
                    f"(99th percentile of the validation scores; mean over seeds)\n\n{flagged}\n"
                )
    return "\n".join(out)


def plot_summary(summary: pd.DataFrame) -> Figure:
    """Mean AUROC per detector with the standard deviation over seeds as error bars (and the
    worst seed as a cross), one panel per data set (rows) and protocol (columns)."""
    from matplotlib.figure import Figure  # not training.plots.new_figure: that module imports Keras

    datasets = list(dict.fromkeys(summary["data"]))
    protocols = list(dict.fromkeys(summary["protocol"]))
    detectors = list(dict.fromkeys(summary["detector"]))
    height = 0.9 + 0.28 * len(detectors)
    fig = Figure(figsize=(4.6 * len(protocols), height * len(datasets)))
    axes = fig.subplots(len(datasets), len(protocols), squeeze=False)
    for i, data in enumerate(datasets):
        for j, protocol in enumerate(protocols):
            ax = axes[i][j]
            part = summary[(summary["data"] == data) & (summary["protocol"] == protocol)]
            part = part.set_index("detector").reindex(detectors)
            y = np.arange(len(detectors))[::-1]
            mean = part["auroc_mean"].to_numpy(dtype=float)
            std = np.nan_to_num(part["auroc_std"].to_numpy(dtype=float))
            colours = ["C0" if d.startswith("vae_") else "C7" for d in detectors]
            ax.barh(y, np.nan_to_num(mean), xerr=std, color=colours, capsize=2, error_kw={"elinewidth": 0.8})
            ax.plot(part["auroc_worst"].to_numpy(dtype=float), y, "x", color="C3", markersize=4)
            low = np.nanmin(np.concatenate([mean - std, part["auroc_worst"].to_numpy(dtype=float), [1.0]]))
            left = max(0.0, math.floor((low - 0.05) * 10) / 10)
            for yy, m in zip(y, mean, strict=True):
                text = "n/a" if not math.isfinite(m) else f"{m:.3f}"
                ax.text(left + 0.005, yy, text, va="center", fontsize=7, color="w" if m > left + 0.1 else "k")
            ax.set_yticks(y, detectors if j == 0 else [""] * len(detectors), fontsize=8)
            ax.set_xlim(left, 1.0)
            ax.axvline(0.5, color="k", linewidth=0.6, linestyle=":")
            ax.set_title(f"{data}: {protocol}", fontsize=9)
            ax.grid(axis="x", alpha=0.3)
            if i == len(datasets) - 1:
                ax.set_xlabel("AUROC: mean ± std over seeds; x = worst seed", fontsize=8)
    fig.tight_layout()
    return fig
