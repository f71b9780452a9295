"""A scorecard against the previous one, and the rule a default changes by.

Per (data set, protocol, detector) cell: the previous and the new mean over seeds, the change, and
whether the change is beyond the seed spread. The spread of a cell is the larger of its two
standard deviations over seeds, ``max(std_prev, std_new)`` (0 where neither run had two seeds,
so with one seed any change counts). A change is *beyond the spread* when ``|change| > spread``.

The Pareto rule: a new default is accepted only when no cell of the default detector got worse by
more than its seed spread; :func:`pareto_violations` returns the cells that did (a cell that was
finite before and is NaN now, a failure, counts as worse). Cells only one scorecard has are listed
but never violate the rule.

Two scorecards differ in more than the default (their fits, and the seeds and classes they ran), so
the rule is also applied *within one run* (:func:`paired`): every VAE method is computed from the
same fit of every task, so the default against the method it replaces differs only in the score.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

KEYS = ["data", "protocol", "detector"]
COLUMNS = [*KEYS, "previous_mean", "previous_std", "new_mean", "new_std", "change", "spread", "verdict"]
DEFAULT_DETECTOR = "vae_anomaly_score"


def read_summary(path: str | Path) -> pd.DataFrame:
    """A ``summary.csv`` of ``vae evaluate``; raises ``ValueError`` if it is not one."""
    frame = pd.read_csv(path)
    missing = [c for c in [*KEYS, "auroc_mean", "auroc_std"] if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not an evaluation summary (no {', '.join(missing)} column)")
    return frame


def _verdict(row: pd.Series) -> str:
    before, after = row["previous_mean"], row["new_mean"]
    if row["_in_previous"] is False:
        return "new cell"
    if row["_in_new"] is False:
        return "not run"
    if math.isfinite(before) and not math.isfinite(after):
        return "worse"  # a failure now
    if not math.isfinite(before) or not math.isfinite(after):
        return "n/a"
    if abs(row["change"]) > row["spread"]:
        return "worse" if row["change"] < 0 else "better"
    return "within spread"


def compare(previous: pd.DataFrame, new: pd.DataFrame, metric: str = "auroc") -> pd.DataFrame:
    """One row per cell of either summary (the new one's order, then cells only the previous one
    has): :data:`COLUMNS`, ``verdict`` one of ``better``, ``worse``, ``within spread``,
    ``new cell``, ``not run`` or ``n/a`` (NaN before and now)."""

    def side(frame: pd.DataFrame, name: str) -> pd.DataFrame:
        part = frame[[*KEYS, f"{metric}_mean", f"{metric}_std"]].copy()
        part.columns = [*KEYS, f"{name}_mean", f"{name}_std"]
        part[f"_in_{name}"] = True
        return part

    before, after = side(previous, "previous"), side(new, "new")
    merged = after.merge(before, on=KEYS, how="left")
    gone = before.merge(after[KEYS], on=KEYS, how="left", indicator=True)
    gone = gone[gone["_merge"] == "left_only"].drop(columns="_merge")
    merged = pd.concat([merged, gone], ignore_index=True)
    for name in ("previous", "new"):
        merged[f"_in_{name}"] = merged[f"_in_{name}"].astype("boolean").fillna(False).astype(bool)
        for stat in ("mean", "std"):
            merged[f"{name}_{stat}"] = pd.to_numeric(merged[f"{name}_{stat}"], errors="coerce").astype(float)
    merged["change"] = merged["new_mean"] - merged["previous_mean"]
    merged["spread"] = merged[["previous_std", "new_std"]].max(axis=1, skipna=True).fillna(0.0)
    merged["verdict"] = [_verdict(row) for _, row in merged.iterrows()] if len(merged) else []
    return merged[COLUMNS].reset_index(drop=True)


def pareto_violations(
    previous: pd.DataFrame, new: pd.DataFrame, detector: str = DEFAULT_DETECTOR, metric: str = "auroc"
) -> pd.DataFrame:
    """The cells of ``detector`` that got worse by more than their seed spread (the Pareto rule:
    the new scorecard may replace the previous default only if this is empty)."""
    table = compare(previous, new, metric)
    return table[(table["detector"] == detector) & (table["verdict"] == "worse")].reset_index(drop=True)


def fmt(value: float, sign: bool = False) -> str:
    """A figure to 3 decimals (``sign``: with its sign), ``n/a`` when missing or not finite."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.3f}" if sign else f"{value:.3f}"


def _mean_std(mean: float, std: float) -> str:
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return fmt(mean) if std is None or not math.isfinite(std) else f"{fmt(mean)} ± {fmt(std)}"


def _marked(verdict: str) -> str:
    """A verdict beyond the spread in bold."""
    return f"**{verdict}**" if verdict in ("better", "worse") else verdict


def comparison_table(table: pd.DataFrame, detectors: list[str] | None = None) -> str:
    """A markdown table of :func:`compare`'s rows (of ``detectors`` only, if given); verdicts
    beyond the spread in bold."""
    if detectors is not None:
        table = table[table["detector"].isin(detectors)]
    lines = [
        "| data set | protocol | detector | previous | new | change | spread | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        verdict = _marked(row["verdict"])
        lines.append(
            f"| {row['data']} | {row['protocol']} | {row['detector']} "
            f"| {_mean_std(row['previous_mean'], row['previous_std'])} | {_mean_std(row['new_mean'], row['new_std'])} "
            f"| {fmt(row['change'], sign=True)} "
            f"| {'n/a' if row['verdict'] in ('new cell', 'not run') else fmt(row['spread'])} | {verdict} |"
        )
    return "\n".join(lines)


def pareto_line(violations: pd.DataFrame, detector: str = DEFAULT_DETECTOR) -> str:
    """One sentence: does ``detector`` pass the Pareto rule, and if not, where it got worse."""
    if violations.empty:
        return f"Pareto rule: no cell of `{detector}` got worse by more than its seed spread."
    cells = ", ".join(f"{r['data']} {r['protocol']} ({fmt(r['change'], sign=True)})" for _, r in violations.iterrows())
    return f"Pareto rule: **{len(violations)} cell(s) of `{detector}` got worse beyond their seed spread**: {cells}."


def comparison_markdown(
    previous: pd.DataFrame, new: pd.DataFrame, source: str = "the previous summary", detector: str = DEFAULT_DETECTOR
) -> tuple[str, str]:
    """(``comparison.md``, the section for ``tables.md``): mean AUROC against ``source``; the
    file has every detector, the section the default detector only."""
    table = compare(previous, new)
    intro = (
        f"Mean AUROC over seeds against {source}. Spread = max(previous std, new std) over seeds "
        "(0 with one seed); a change beyond it is in bold.\n\n"
        + pareto_line(pareto_violations(previous, new, detector), detector)
        + "\n"
    )
    whole = "# Against the previous scorecard\n\n" + intro + "\n" + comparison_table(table) + "\n"
    section = "## Against the previous scorecard\n\n" + intro + "\n" + comparison_table(table, [detector]) + "\n"
    return whole, section


PAIRED_COLUMNS = ["data", "protocol", "baseline", "default_mean", "baseline_mean", "change", "worst_seed_change"]


def paired(results: pd.DataFrame, baseline: str, detector: str = DEFAULT_DETECTOR) -> pd.DataFrame:
    """``detector`` against ``baseline`` in the same run (``results.csv``'s rows: the same fits,
    seeds and tasks), per (data set, protocol): the means over seeds, the mean of the per-seed
    changes, the lowest of them, the spread (the larger std over seeds) and the verdict as in
    :func:`compare` (a cell where the default failed and the baseline did not is worse). Means are
    strict, as the summary's: a failed (NaN) task makes its seed's, and so its cell's, value NaN.
    Empty when ``results`` lacks either detector."""
    rows = results[results["detector"].isin([detector, baseline])]
    keys = ["data", "protocol", "seed", "detector"]
    per_seed = rows.groupby(keys, sort=False)["auroc"].agg(lambda v: v.mean(skipna=False)).unstack("detector")
    if detector not in per_seed or baseline not in per_seed:
        return pd.DataFrame(columns=[*PAIRED_COLUMNS, "spread", "verdict"])
    change = (per_seed[detector] - per_seed[baseline]).groupby(level=["data", "protocol"], sort=False)
    by_cell = per_seed.groupby(level=["data", "protocol"], sort=False)
    table = pd.DataFrame(
        {
            "baseline": baseline,
            "default_mean": by_cell[detector].agg(lambda v: v.mean(skipna=False)),
            "baseline_mean": by_cell[baseline].agg(lambda v: v.mean(skipna=False)),
            "change": change.agg(lambda v: v.mean(skipna=False)),
            "worst_seed_change": change.agg(lambda v: v.min(skipna=False)),
            "spread": pd.concat([by_cell[detector].std(), by_cell[baseline].std()], axis=1).max(axis=1).fillna(0.0),
        }
    ).reset_index()
    columns = ["default_mean", "baseline_mean", "change", "spread"]
    table["verdict"] = [_paired_verdict(*values) for values in table[columns].itertuples(index=False)]
    return table


def _paired_verdict(default: float, baseline: float, change: float, spread: float) -> str:
    if math.isfinite(baseline) and not math.isfinite(default):
        return "worse"  # the default failed where the method it replaces did not
    if not math.isfinite(change):
        return "n/a"
    if abs(change) > spread:
        return "worse" if change < 0 else "better"
    return "within spread"


def paired_markdown(table: pd.DataFrame, detector: str = DEFAULT_DETECTOR) -> str:
    """The ``tables.md`` section of :func:`paired` (empty for an empty table)."""
    if table.empty:
        return ""
    baseline = table["baseline"].iloc[0]
    worse = table[table["verdict"] == "worse"]
    verdict = (
        f"no cell of `{detector}` is worse than `{baseline}` by more than its seed spread"
        if worse.empty
        else f"**{len(worse)} cell(s) of `{detector}` are worse than `{baseline}` beyond their seed spread**"
    )
    lines = [
        f"## The default against `{baseline}`, from the same fits",
        "",
        f"Mean AUROC over seeds of `{detector}` and `{baseline}` computed from the same VAE fit of every "
        "task, so they differ only in the score; change = the mean of the per-seed changes, worst seed = the "
        f"lowest of them. Pareto rule within this run: {verdict}.",
        "",
        "| data set | protocol | default | baseline | change | worst seed | spread | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        mark = _marked(row["verdict"])
        lines.append(
            f"| {row['data']} | {row['protocol']} | {fmt(row['default_mean'])} | {fmt(row['baseline_mean'])} "
            f"| {fmt(row['change'], sign=True)} | {fmt(row['worst_seed_change'], sign=True)} "
            f"| {fmt(row['spread'])} | {mark} |"
        )
    return "\n".join(lines) + "\n"
