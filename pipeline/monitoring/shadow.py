"""Shadow scoring: how often a challenger's flags agree with the champion's on the same rows.

The champion's scores are ``OUTPUT/scores`` (its ``partition``), the challenger's the same partition
of ``SHADOW_OUTPUT/scores``; rows are matched by ``example_id`` (the input contract makes ids unique
within a run). Agreement is the share of matched rows both flag or both pass; Cohen's kappa is that
agreement beyond what two independent raters with these two flag rates would reach by chance (1:
the same flags; 0: no better than chance; undefined, so null, when chance alone gives full
agreement, e.g. neither model flags anything)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import numpy as np

from pipeline.monitoring import tracking
from pipeline.monitoring.row import SHADOW, empty_row
from pipeline.monitoring.scores import read_run_scores
from pipeline.monitoring.store import append_row
from pipeline.outputs.atomic import output_folder


def flag_agreement(champion: np.ndarray, challenger: np.ndarray) -> dict[str, Any]:
    """Counts and agreement of two aligned boolean flag arrays."""
    champion, challenger = np.asarray(champion, dtype=bool), np.asarray(challenger, dtype=bool)
    n = int(champion.size)
    both = int(np.count_nonzero(champion & challenger))
    champion_only = int(np.count_nonzero(champion & ~challenger))
    shadow_only = int(np.count_nonzero(~champion & challenger))
    agreement = (n - champion_only - shadow_only) / n if n else None
    kappa = None
    if n:
        p1, p2 = champion.mean(), challenger.mean()
        chance = p1 * p2 + (1 - p1) * (1 - p2)
        kappa = float((agreement - chance) / (1 - chance)) if chance < 1 else None
    return {
        "shadow_rows": n,
        "both_flagged": both,
        "champion_only": champion_only,
        "shadow_only": shadow_only,
        "agreement": agreement,
        "cohen_kappa": kappa,
        "anomaly_rate": float(champion.mean()) if n else None,
        "shadow_anomaly_rate": float(challenger.mean()) if n else None,
    }


def record_shadow(
    output: str | os.PathLike,
    shadow_output: str | os.PathLike,
    *,
    partition: str | None = None,
    work_dir: str | os.PathLike | None = None,
    log_to_mlflow: bool = True,
) -> dict[str, Any]:
    """Appends a ``shadow`` row comparing the flags of ``OUTPUT/scores`` and ``SHADOW_OUTPUT/scores``
    (the same ``partition``) to ``OUTPUT/monitoring/`` and returns it. Rows without a flag on either
    side (an uncalibrated model) are left out of the agreement; a side with no flags at all is an
    error, since there is nothing to compare."""
    champion = read_run_scores(output, partition, "anomaly_score", with_ids=True)
    challenger = read_run_scores(shadow_output, partition, "anomaly_score", with_ids=True)
    for run in (champion, challenger):
        if len(run) and np.isnan(run.flags).all():
            raise ValueError(f"{run.path}: no row has a flag (the model has no threshold): nothing to compare")
    ids_a, ids_b = champion.example_ids.astype(str), challenger.example_ids.astype(str)
    common, at_a, at_b = np.intersect1d(ids_a, ids_b, assume_unique=False, return_indices=True)
    flags_a, flags_b = champion.flags[at_a], challenger.flags[at_b]
    flagged = ~np.isnan(flags_a) & ~np.isnan(flags_b)
    row = empty_row(SHADOW) | {
        "run_at": champion.scored_at,
        "recorded_at": datetime.now(UTC),
        "output": str(output_folder(output)),
        "partition": partition,
        "run_id": ",".join(champion.run_ids) or None,
        "model_name": champion.model_name,
        "model_version": champion.model_version,
        "rows_scored": len(champion),
        "shadow_output": str(output_folder(shadow_output)),
        "shadow_model_name": challenger.model_name,
        "shadow_model_version": challenger.model_version,
        "shadow_unmatched": len(ids_a) + len(ids_b) - 2 * len(common),
    }
    row |= flag_agreement(flags_a[flagged] > 0.5, flags_b[flagged] > 0.5)
    row["anomalies"] = row["both_flagged"] + row["champion_only"]
    if log_to_mlflow:
        from training import registry

        row["mlflow_run_id"] = tracking.log_row_quietly(row, registry.tracking_uri(work_dir))
    append_row(output, row)
    return row
