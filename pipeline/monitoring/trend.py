"""The trend: which rows make it, the run ``--check`` judges, and the table ``vae monitor`` prints.

A rerun of a partition replaces that partition's scores, so the trend shows each partition's latest
row (in partition order: ``date=...`` sorts by day); a whole-dataset output (no partition) is a
series of runs, each its own point, in the order they ran. ``--partition`` shows every run of one
partition instead."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa

from pipeline.monitoring.row import SCORE, SHADOW, judge, present


def frame_of(table: pa.Table) -> pd.DataFrame:
    """The rows as a frame, nulls as None (not NaN) in the text and count columns."""
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


def trend(frame: pd.DataFrame, *, partition: str | None = None, last: int | None = None) -> pd.DataFrame:
    """The scoring rows to plot and print (see the module docstring), oldest first, at most ``last``."""
    rows = frame[frame["kind"] == SCORE]
    if partition is not None:
        rows = rows[rows["partition"] == partition].sort_values("recorded_at", kind="stable")
    else:
        latest = rows.sort_values("recorded_at", kind="stable")
        partitioned = latest[latest["partition"].notna()].drop_duplicates(["output", "partition"], keep="last")
        whole = latest[latest["partition"].isna()]
        rows = pd.concat([whole, partitioned.sort_values("partition", kind="stable")])
    return (rows.tail(last) if last else rows).reset_index(drop=True)


def shadow_rows(frame: pd.DataFrame, *, partition: str | None = None, last: int | None = None) -> pd.DataFrame:
    rows = frame[frame["kind"] == SHADOW]
    if partition is not None:
        rows = rows[rows["partition"] == partition]
    rows = rows.sort_values("recorded_at", kind="stable")
    return (rows.tail(last) if last else rows).reset_index(drop=True)


def selected_run(frame: pd.DataFrame, partition: str | None = None, run_id: str | None = None) -> dict[str, Any] | None:
    """The run ``--check`` judges: the scoring row of ``run_id`` when given, else the latest recorded
    scoring row of ``partition``, else the latest."""
    rows = frame[frame["kind"] == SCORE]
    if partition is not None:
        rows = rows[rows["partition"] == partition]
    if run_id is not None:
        rows = rows[rows["run_id"] == run_id]
    if rows.empty:
        return None
    return clean(rows.sort_values("recorded_at", kind="stable").iloc[-1].to_dict())


def clean(row: dict[str, Any]) -> dict[str, Any]:
    """pandas' missing values (NaN, NA, NaT) as None."""
    return {key: (value if present_or_text(value) else None) for key, value in row.items()}


def present_or_text(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return False
    return isinstance(value, str) or present(value)


def label(row: dict[str, Any]) -> str:
    """A point's name: its partition, else its run time."""
    if row.get("partition"):
        return str(row["partition"])
    when = row.get("run_at") or row.get("recorded_at")
    return when.strftime("%Y-%m-%d %H:%M") if when is not None else "?"


def point_labels(rows: pd.DataFrame) -> list[str]:
    """The x labels of a trend: partitions (with the run time when a partition repeats), else run times."""
    records = [clean(r) for r in rows.to_dict("records")]
    names = [label(r) for r in records]
    if len(set(names)) < len(names):
        names = [f"{name} {_when(r)}" if r.get("partition") else name for name, r in zip(names, records, strict=True)]
    return names


def _when(row: dict[str, Any]) -> str:
    when = row.get("run_at") or row.get("recorded_at")
    return when.strftime("%Y-%m-%d %H:%M") if when is not None else "–"


def _pct(value: Any) -> str:
    return f"{value:.2%}" if present(value) else "–"


def table_lines(rows: pd.DataFrame) -> list[str]:
    """The trend as aligned text: partition, run time, model, rows, anomaly rate and its bound, drift
    and its limit, status."""
    return _aligned(*trend_cells(rows))


def trend_cells(rows: pd.DataFrame) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """(header, a tuple of cells per row) of :func:`table_lines`."""
    head = ("partition", "run at", "model", "rows", "anomaly rate", "bound", "drift (KS)", "status")
    body = []
    for record in rows.to_dict("records"):
        row = clean(record)
        status, _ = judge(row)
        scored = row.get("rows_scored")
        rows_text = f"{scored:,}" if scored is not None else "–"
        if row.get("rows_rejected"):
            rows_text += f" (+{row['rows_rejected']:,} rejected)"
        bound = (
            f"[{_pct(row.get('rate_lower'))}, {_pct(row.get('rate_upper'))}]" if present(row.get("rate_upper")) else "–"
        )
        drift = (
            f"{row['drift_statistic']:.3f} / {row['drift_limit']:.3f}"
            if present(row.get("drift_statistic")) and present(row.get("drift_limit"))
            else "–"
        )
        body.append(
            (
                row.get("partition") or "(all)",
                _when(row),
                f"{row.get('model_name')} v{row.get('model_version')}",
                rows_text,
                _pct(row.get("anomaly_rate")),
                bound,
                drift,
                status.upper() if status == "alarm" else status,
            )
        )
    return head, body


def shadow_lines(rows: pd.DataFrame) -> list[str]:
    """Shadow comparisons as aligned text."""
    return _aligned(*shadow_cells(rows))


def shadow_cells(rows: pd.DataFrame) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    head = ("run", "champion", "challenger", "rows", "champion rate", "challenger rate", "agreement", "kappa")
    body = []
    for record in rows.to_dict("records"):
        row = clean(record)
        kappa = row.get("cohen_kappa")
        body.append(
            (
                label(row),
                f"{row.get('model_name')} v{row.get('model_version')}",
                f"{row.get('shadow_model_name')} v{row.get('shadow_model_version')}",
                f"{row.get('shadow_rows') or 0:,}",
                _pct(row.get("anomaly_rate")),
                _pct(row.get("shadow_anomaly_rate")),
                _pct(row.get("agreement")),
                f"{kappa:.3f}" if present(kappa) else "–",
            )
        )
    return head, body


def _aligned(head: tuple[str, ...], body: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(str(cells[i])) for cells in (head, *body)) for i in range(len(head))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip() for cells in (head, *body)]
