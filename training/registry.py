"""MLflow tracking and the model registry: where runs go, how models are found, pinned and promoted.

Every function takes the working folder ``work`` (``vae --work-dir``); None is the default one,
:func:`default_work_dir`. ``MLFLOW_TRACKING_URI``, when set, names the store instead.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

CHAMPION = "champion"
DEFAULT_MODEL_URI = "models:/vae-digits@champion"
EXPERIMENT = "vae"
WORK_DIR_ENV = "VAE_WORK_DIR"
DEFAULT_WORK_DIR = "~/vae-work"  # the one default of the CLI and the Airflow DAGs


def default_work_dir() -> Path:
    """``$VAE_WORK_DIR`` when set, else ``~/vae-work``: where the CLI and the DAGs keep the MLflow
    store and their outputs unless told otherwise (a relative path is taken from the current folder)."""
    return Path(os.environ.get(WORK_DIR_ENV) or DEFAULT_WORK_DIR).expanduser().resolve()


def work_dir(path: str | os.PathLike | None = None, create: bool = True) -> Path:
    """The working folder ``path`` (absolute), or :func:`default_work_dir`; created unless ``create`` is False."""
    folder = Path(path).expanduser().resolve() if path else default_work_dir()
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def tracking_uri(work: str | os.PathLike | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a SQLite store in the working folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{work_dir(work) / 'mlflow.db'}"


def client(work: str | os.PathLike | None = None) -> MlflowClient:
    """An MLflow client on the working folder's store (tracking and registry)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(work))


def configure(work: str | os.PathLike | None = None, experiment: str = EXPERIMENT) -> str:
    """Points MLflow (process-wide, for ``mlflow.start_run`` and friends) at the working folder's
    store and selects the experiment; returns the URI."""
    import mlflow

    uri = tracking_uri(work)
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        location = None
        if uri.startswith("sqlite:///"):  # artifacts beside the database, not in whatever the cwd is
            location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    return uri


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


def check_uri(uri: str) -> None:
    """Raises ValueError for a URI that is neither ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``
    nor a ``.keras`` file, FileNotFoundError for a local ``.keras`` file that does not exist."""
    if _MODELS_URI.match(uri):
        return
    if not uri.endswith(".keras"):
        raise ValueError(f"{uri}: expected models:/NAME@ALIAS, models:/NAME/VERSION or a .keras file")
    if "://" not in uri and not Path(uri).expanduser().exists():
        raise FileNotFoundError(f"{uri}: no such model file")


def resolve(uri: str, work: str | os.PathLike | None = None) -> tuple[str, str]:
    """(registered name, version) for ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``;
    (file stem, "local") for a ``.keras`` file."""
    match = _MODELS_URI.match(uri)
    if not match:
        if uri.endswith(".keras"):
            return Path(uri).stem, "local"
        raise ValueError(f"{uri}: expected models:/NAME@ALIAS, models:/NAME/VERSION or a .keras file")
    from mlflow.exceptions import MlflowException

    name = match["name"]
    mlflow_client = client(work)
    try:
        if match["version"]:
            return name, str(mlflow_client.get_model_version(name, match["version"]).version)
        return name, str(mlflow_client.get_model_version_by_alias(name, match["alias"]).version)
    except MlflowException as exc:
        raise LookupError(_not_found(uri, name, match["version"], match["alias"], mlflow_client, work)) from exc


def _not_found(uri: str, name: str, version: str | None, alias: str | None, mlflow_client: MlflowClient, work) -> str:
    """One line: what ``uri`` asked for, and what the store has instead (versions and aliases)."""
    from mlflow.exceptions import MlflowException

    store = tracking_uri(work)
    try:
        model = mlflow_client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in mlflow_client.search_registered_models(max_results=50))
        known = f"the registered models are {', '.join(names)}" if names else "it has no registered models"
        return f"{uri}: no registered model named {name!r} in {store}; {known}"
    versions = sorted(
        (int(v.version) for v in mlflow_client.search_model_versions(f"name = '{name}'", max_results=1000)),
    )
    aliases = ", ".join(f"@{a} (version {v})" for a, v in sorted((model.aliases or {}).items())) or "none"
    asked = f"version {version}" if version else f"alias {alias!r}"
    return (
        f"{uri}: {name} has no {asked}; its versions are {_ranges(versions) or 'none'}, its aliases {aliases} "
        f"(in {store})"
    )


def _ranges(numbers: list[int]) -> str:
    """``1-3, 5`` for [1, 2, 3, 5]."""
    out: list[str] = []
    for n in numbers:
        if out and n == int(out[-1].split("-")[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


@dataclass(frozen=True)
class ModelRef:
    """One model version, pinned (:func:`pin`): what every worker of a job loads, and what each
    output row names. Small and picklable, unlike the model."""

    name: str
    version: str  # "local" for a .keras file
    uri: str  # models:/NAME/VERSION, or an absolute .keras path
    tracking_uri: str | None  # None for a .keras file

    def load(self) -> Any:
        """The model (``training.model.VariationalAutoencoder``, ``safe_mode=True``), loaded once per
        process: a Beam worker, or the driver of an in-process run, which shares the copy it planned with."""
        key = (self.tracking_uri, self.uri)
        with _LOADED_LOCK:
            if key not in _LOADED:
                start = time.perf_counter()
                _LOADED[key] = self._load()
                log.info("pid %d loaded %s in %.1f s", os.getpid(), self.uri, time.perf_counter() - start)
            return _LOADED[key]

    def _load(self) -> Any:
        import keras

        import training.model  # noqa: F401  registers the custom classes for deserialisation

        if self.tracking_uri is None:
            return keras.saving.load_model(self.uri, safe_mode=True)
        import mlflow
        import mlflow.keras

        mlflow.set_tracking_uri(self.tracking_uri)  # mlflow.keras.load_model reads the process-wide store
        return mlflow.keras.load_model(self.uri, load_model_kwargs={"safe_mode": True})


_LOADED: dict[tuple[str | None, str], Any] = {}
_LOADED_LOCK = threading.Lock()


def pin(model_uri: str, work: str | os.PathLike | None = None) -> ModelRef:
    """Resolves an alias to the version it names *now*, once per job, so that a promotion during a
    run cannot mix two versions in one output."""
    if model_uri.endswith(".keras"):
        path = model_uri if "://" in model_uri else str(Path(model_uri).resolve())
        return ModelRef(Path(model_uri).stem, "local", path, None)
    name, version = resolve(model_uri, work)
    return ModelRef(name, version, f"models:/{name}/{version}", tracking_uri(work))


#: what MLflow answers for a registered model or alias that does not exist; any other error (a store
#: that is locked or down) must not read as "no champion", or a worse model would take the alias
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def champion_version(name: str, work: str | os.PathLike | None = None, attempts: int = 3) -> str | None:
    """The version ``@champion`` names now, or None when the model or the alias does not exist; a
    store error (a locked SQLite file) is tried again ``attempts`` times in all, then raised."""
    import time

    from mlflow.exceptions import MlflowException

    for attempt in range(1, attempts + 1):
        try:
            return str(client(work).get_model_version_by_alias(name, CHAMPION).version)
        except MlflowException as exc:
            if exc.error_code in _NOT_FOUND:
                return None
            if attempt == attempts:
                raise
            log.warning("reading %s@%s failed (%s); trying again", name, CHAMPION, exc.message)
            time.sleep(2.0 * attempt)
    return None


def check_model_name(name: str, work: str | os.PathLike | None = None) -> None:
    """Raises ValueError with MLflow's reason if the registry would refuse ``name`` (before training,
    not after it)."""
    from mlflow.exceptions import MlflowException

    try:
        client(work).get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "INVALID_PARAMETER_VALUE":
            raise ValueError(f"--model-name {name!r}: {exc.message}") from exc
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


def set_alias(name: str, version: str, alias: str = CHAMPION, work: str | os.PathLike | None = None) -> None:
    client(work).set_registered_model_alias(name, alias, version)


def run_id(name: str, version: str, work: str | os.PathLike | None = None) -> str | None:
    """The MLflow run that produced a registered model version (None for a local ``.keras`` model)."""
    if version == "local":
        return None
    return client(work).get_model_version(name, str(version)).run_id


def version_tags(name: str, version: str, work: str | os.PathLike | None = None) -> dict[str, str]:
    """The tags of one registered model version (e.g. its ``holdout_fingerprint``)."""
    return dict(client(work).get_model_version(name, version).tags)


def log_and_register(model, name: str, signature) -> str:
    """Logs ``model`` (a Keras model) to the active MLflow run as ``model``, with ``signature`` and the
    Keras and numpy it was saved with, and registers it as a new version of ``name``; returns the
    version. The one way ``vae train`` and ``vae calibrate`` put a model in the registry."""
    import keras
    import mlflow.keras
    import numpy as np

    info = mlflow.keras.log_model(
        model,
        name="model",
        signature=signature,
        registered_model_name=name,
        pip_requirements=[f"keras=={keras.__version__}", f"numpy=={np.__version__}"],
    )
    return str(info.registered_model_version)


def set_version_tags(name: str, version: str, tags: dict[str, object], work: str | os.PathLike | None = None) -> None:
    """Sets tags on one registered model version; values are stored as strings."""
    mlflow_client = client(work)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, version, key, str(value))


def log_artifact(
    name: str, version: str, path: str | os.PathLike, artifact_path: str, work: str | os.PathLike | None = None
) -> str | None:
    """Logs a file to the MLflow run that produced a registered model version, under ``artifact_path``;
    returns the run id (None for a local ``.keras`` model, which has no run)."""
    run = run_id(name, version, work)
    if run:
        client(work).log_artifact(run, str(path), artifact_path)
    return run


def log_metrics(
    name: str, version: str, metrics: dict[str, float], work: str | os.PathLike | None = None
) -> str | None:
    """Logs metrics to the MLflow run that produced a registered model version (a later value of the
    same metric is added to its history); returns the run id (None for a local ``.keras`` model, which
    has no run). NaN values are left out."""
    import math
    import time

    from mlflow.entities import Metric

    run = run_id(name, version, work)
    if run:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, 0) for k, v in metrics.items() if not math.isnan(float(v))]
        client(work).log_batch(run, metrics=batch)
    return run


def describe(name: str, version: str, facts: dict[str, Any], work: str | os.PathLike | None = None) -> None:
    """Writes what a registry user sees first in the MLflow UI: the version's description (its data,
    likelihood, holdout score, threshold and why it was or was not promoted) and the registered
    model's (what the model is, and how its champion is chosen)."""
    f = facts
    kind = "conditional VAE" if f.get("conditional") else "VAE"
    mlflow_client = client(work)
    mlflow_client.update_model_version(
        name,
        version,
        description=(
            f"A {kind} ({f['architecture']}, latent {f['latent_dim']}) trained on {f['data']}: {f['train_rows']:,} "
            f"images of shape {f['shape']}.\n\n"
            f"- likelihood: {f['likelihood']} ({f['likelihood_reason']})\n"
            f"- holdout neg ELBO: {f['holdout_neg_elbo']:.3f} nats per image on holdout {f['holdout_fingerprint']} "
            f"({f['holdout_rows']:,} rows)\n"
            f"- anomaly threshold: {f['threshold']:.4g} on {f['score']} (target false positive rate {f['fpr']:g})\n"
            f"- {'promoted to @champion' if f['promoted'] else 'not promoted'}: {f['promotion_reason']}"
        ),
    )
    mlflow_client.update_registered_model(
        name,
        description=(
            f"A {kind} on {f['data']} (images {f['shape']}) that scores images for anomalies (`vae score`, "
            "the anomaly_score built on the negative ELBO, a calibrated threshold and p-values) and writes "
            "synthetic images (`vae generate`). Each version's description says its data, likelihood, holdout "
            "score and threshold. "
            "`vae train` moves @champion to a new version only when it beats the champion's negative ELBO on "
            "the same fixed holdout (--promote if-better)."
        ),
    )
