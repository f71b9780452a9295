"""The trend figure: the flagged rate inside its bound, the drift statistic under its limit, and the
score quantiles, one point per run (or partition); points out of bounds in red."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.monitoring.trend import point_labels


def _values(rows: pd.DataFrame, column: str) -> np.ndarray:
    return pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _wide(x: np.ndarray, *values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each point's value held over [x - 0.4, x + 0.4]: bands and reference lines stay visible when
    there is only one run to draw."""
    return (np.stack([x - 0.4, x + 0.4], axis=1).ravel(), *(np.repeat(v, 2) for v in values))


def trend_figure(rows: pd.DataFrame, title: str | None = None):
    """A matplotlib figure: three panels over the rows of :func:`pipeline.monitoring.trend.trend`
    (oldest first)."""
    from matplotlib.figure import Figure  # outside pyplot, as training.plots (which would import TensorFlow)

    fig = Figure(figsize=(max(6.0, 0.35 * len(rows) + 3), 8.0))
    axes = fig.subplots(3, 1)
    x = np.arange(len(rows))
    names = point_labels(rows)
    rate, lower, upper = (_values(rows, c) * 100 for c in ("anomaly_rate", "rate_lower", "rate_upper"))
    target = _values(rows, "target_fpr") * 100
    out = (rate < lower) | (rate > upper)
    ax = axes[0]
    wide_x, wide_lower, wide_upper, wide_target = _wide(x, lower, upper, target)
    ax.fill_between(wide_x, wide_lower, wide_upper, color="C0", alpha=0.15, label="acceptance bound")
    ax.plot(wide_x, wide_target, "--", color="C2", label="target FPR")
    ax.plot(x, rate, "o-", color="C0", label="anomaly rate")
    ax.plot(x[out], rate[out], "o", color="C3", label="outside its bound" if out.any() else None)
    ax.set_ylabel("flagged (%)")
    ax.legend(loc="upper left", fontsize="small")

    drift, limit = _values(rows, "drift_statistic"), _values(rows, "drift_limit")
    over = drift > limit
    ax = axes[1]
    ax.plot(*_wide(x, limit), "--", color="C3", label="limit")
    ax.plot(x, drift, "o-", color="C1", label="KS drift vs calibration")
    ax.plot(x[over], drift[over], "o", color="C3")
    ax.set_ylabel("KS statistic")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize="small")

    ax = axes[2]
    quantiles = (_values(rows, q) for q in ("score_q05", "score_q95", "score_q25", "score_q75", "threshold"))
    wide_x, q05, q95, q25, q75, threshold = _wide(x, *quantiles)
    ax.fill_between(wide_x, q05, q95, color="C4", alpha=0.15, label="5-95 %")
    ax.fill_between(wide_x, q25, q75, color="C4", alpha=0.3, label="25-75 %")
    ax.plot(x, _values(rows, "score_q50"), "o-", color="C4", label="median")
    ax.plot(wide_x, threshold, "--", color="C3", label="threshold")
    column = next((c for c in rows.get("score_column", pd.Series(dtype=str)).dropna()), "anomaly_score")
    ax.set_ylabel(column)
    ax.legend(loc="upper left", fontsize="small")
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize="small")
        ax.grid(alpha=0.3)
    for ax in axes[:-1]:
        ax.tick_params(labelbottom=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_trend(rows: pd.DataFrame, path: str | os.PathLike, title: str | None = None) -> Path:
    """:func:`trend_figure` written whole to the PNG ``path``."""
    from pipeline.outputs.files import write_atomically

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = trend_figure(rows, title)
    return write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=90, bbox_inches="tight"))
