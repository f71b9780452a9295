"""vae_augment: when vae_retrain registers a model, write a synthetic set for a new champion.

Scheduled on the model Asset. ``choose_model`` reads the triggering events and skips unless one
promoted a version to @champion; ``generate`` runs ``vae generate`` for that version into
``{synthetic_root}/{model_name}/version={version}/``: per label for a conditional model, else from
the prior; its result JSON (rows, where) is logged and returned as the task's XCom. A manual run can
name the version with the params ``model_name`` and ``model_version``.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from _vae_common import (
    MODEL_ASSET,
    common_params,
    dag_defaults,
    flag,
    generate_command,
    latest_promoted,
    param,
    parse_generate_result,
    setting,
)
from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowSkipException

log = logging.getLogger(__name__)


@dag(
    dag_id="vae_augment",
    schedule=[MODEL_ASSET],
    doc_md=__doc__,
    **dag_defaults(),
    params={
        "model_version": Param(
            None, type=["null", "string"], description="Manual runs: the version to generate for (with model_name)."
        ),
        "conditional": param("conditional", "Manual runs: the model is label-conditioned.", "boolean"),
        "synthetic_root": param("synthetic_root", "Root of the synthetic sets."),
        "synthetic_per_label": param("synthetic_per_label", "Images per label (conditional models).", "integer"),
        "synthetic_n": param("synthetic_n", "Images from the prior (plain models).", "integer"),
        "generate_args": param("generate_args", "More `vae generate` options."),
        **common_params(),
    },
)
def vae_augment() -> None:
    @task
    def choose_model(params: dict[str, Any] | None = None, triggering_asset_events: Any = None) -> dict[str, Any]:
        params = params or {}
        if params.get("model_name") and params.get("model_version"):
            chosen = {
                "model_name": params["model_name"],
                "version": str(params["model_version"]),
                "conditional": flag(setting("conditional", params)),
            }
            log.info("Manual run: %s version %s", chosen["model_name"], chosen["version"])
            return chosen
        events = sorted((triggering_asset_events or {}).get(MODEL_ASSET, []), key=lambda event: event.timestamp)
        extras = [dict(event.extra or {}) for event in events]
        for extra in extras:
            log.info("Model event: %s", extra)
        chosen = latest_promoted(extras)
        if chosen is None:
            log.info("No promoted version among %d model event(s): the champion is unchanged, skipping.", len(extras))
            raise AirflowSkipException("no new champion to generate for")
        log.info("New champion: %s version %s", chosen["model_name"], chosen["version"])
        return dict(chosen)

    # the last line vae generate prints is its result JSON, logged and parsed into the XCom
    @task.bash(skip_on_exit_code=None, output_processor=parse_generate_result, execution_timeout=timedelta(hours=2))
    def generate(model: dict[str, Any], params: dict[str, Any] | None = None) -> str:
        return generate_command(model, params)

    generate(choose_model())


vae_augment()
