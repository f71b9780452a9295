"""vae_retrain: weekly, train a challenger VAE and promote it to @champion only if it is better.

``train`` runs ``vae train --promote if-better`` in the project's environment; ``publish_model``
records an event on the model Asset with ``{"model_name", "version", "promoted", ...}``, which
schedules ``vae_augment``. Settings: see ``_vae_common`` and docs/operations.md.
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
    model_event_extra,
    param,
    parse_train_result,
    schedule,
    setting,
    train_command,
)
from airflow.sdk import dag, task

log = logging.getLogger(__name__)


@dag(
    dag_id="vae_retrain",
    schedule=schedule("VAE_RETRAIN_SCHEDULE", "@weekly"),
    doc_md=__doc__,
    **dag_defaults(),
    params={
        "train_data": param("train_data", "Training data: digits, mnist, fashion_mnist or a path."),
        "conditional": param("conditional", "Train a label-conditioned VAE (true/false).", "boolean"),
        "epochs": param("epochs", "Maximum epochs.", "integer"),
        "train_args": param("train_args", "More `vae train` options."),
        **common_params(),
    },
)
def vae_retrain() -> None:
    @task.bash(
        output_processor=parse_train_result,
        skip_on_exit_code=None,
        execution_timeout=timedelta(hours=6),
    )
    def train(params: dict[str, Any] | None = None) -> str:
        return train_command(params)

    @task(outlets=[MODEL_ASSET])
    def publish_model(
        result: dict[str, Any], params: dict[str, Any] | None = None, outlet_events: Any = None
    ) -> dict[str, Any]:
        extra = model_event_extra(result, conditional=flag(setting("conditional", params)))
        outlet_events[MODEL_ASSET].extra = extra
        verdict = "promoted to @champion" if extra["promoted"] else "not promoted; the champion stays"
        log.info("%s version %s: %s", extra["model_name"], extra["version"], verdict)
        return extra

    publish_model(train())


vae_retrain()
