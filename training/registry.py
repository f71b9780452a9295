"""MLflow tracking and the model registry: where runs go, how models are found and promoted."""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

CHAMPION = "champion"
DEFAULT_MODEL_URI = "models:/vae-digits@champion"
EXPERIMENT = "vae"
DEFAULT_WORK_DIR = "vae-work"


def work_dir(path: str | os.PathLike | None = None) -> Path:
    """The project's working folder (``VAE_WORK_DIR`` or ``./vae-work``), created on first use."""
    folder = Path(path or os.environ.get("VAE_WORK_DIR", DEFAULT_WORK_DIR)).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def tracking_uri(work: str | os.PathLike | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a SQLite store in the working folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{work_dir(work) / 'mlflow.db'}"


def configure(work: str | os.PathLike | None = None, experiment: str = EXPERIMENT) -> str:
    """Points MLflow at the tracking store and selects the experiment; returns the URI."""
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


@dataclass(frozen=True)
class LoadedModel:
    model: object  # training.model.VariationalAutoencoder
    name: str
    version: str
    uri: str


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


def resolve(uri: str) -> tuple[str, str]:
    """(registered name, version) for ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``;
    (file stem, "local") for a ``.keras`` file."""
    match = _MODELS_URI.match(uri)
    if not match:
        if uri.endswith(".keras"):
            return Path(uri).stem, "local"
        raise ValueError(f"{uri}: expected models:/NAME@ALIAS, models:/NAME/VERSION or a .keras file")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name = match["name"]
    if match["version"]:
        return name, match["version"]
    try:
        return name, str(MlflowClient().get_model_version_by_alias(name, match["alias"]).version)
    except MlflowException as exc:
        raise LookupError(
            f"{uri}: no model version has the alias {match['alias']!r} in {tracking_uri()}; "
            f"train one with `vae train --model-name {name}`"
        ) from exc


def load_model(uri: str) -> LoadedModel:
    """Loads a registered (or local ``.keras``) VAE with ``safe_mode=True``."""
    import keras

    import training.model  # noqa: F401  registers the custom classes for deserialisation

    name, version = resolve(uri)
    if version == "local":
        model = keras.saving.load_model(uri, safe_mode=True)
    else:
        import mlflow.keras

        model = mlflow.keras.load_model(f"models:/{name}/{version}", load_model_kwargs={"safe_mode": True})
    return LoadedModel(model=model, name=name, version=str(version), uri=uri)


@dataclass(frozen=True)
class PinnedModel:
    uri: str  # what every worker loads: models:/NAME/VERSION, or a .keras path
    name: str
    version: str
    tracking_uri: str | None  # None for a .keras file


def pin(model_uri: str, work: str | os.PathLike | None = None) -> PinnedModel:
    """Resolves an alias to the version it names *now*, once per job, so that a promotion during a
    run cannot mix two versions in one output."""
    if model_uri.endswith(".keras"):
        path = model_uri if "://" in model_uri else str(Path(model_uri).resolve())
        return PinnedModel(path, Path(model_uri).stem, "local", None)
    import mlflow

    uri = tracking_uri(work)
    mlflow.set_tracking_uri(uri)
    name, version = resolve(model_uri)
    return PinnedModel(f"models:/{name}/{version}", name, version, uri)


_LOADED: dict[tuple[str | None, str], LoadedModel] = {}
_LOADED_LOCK = threading.Lock()


def load_pinned(uri: str, tracking: str | None = None) -> LoadedModel:
    """A pinned model (``PinnedModel.uri``), loaded once per process: a Beam worker, or the driver of
    an in-process run, which then shares the copy it loaded to plan the job."""
    key = (tracking, uri)
    with _LOADED_LOCK:
        if key not in _LOADED:
            if tracking:
                import mlflow

                mlflow.set_tracking_uri(tracking)
            _LOADED[key] = load_model(uri)
        return _LOADED[key]


def champion_version(name: str) -> str | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient().get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def set_alias(name: str, version: str, alias: str = CHAMPION) -> None:
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(name, alias, version)


def version_tags(name: str, version: str) -> dict[str, str]:
    """The tags of one registered model version (e.g. its ``holdout_fingerprint``)."""
    from mlflow import MlflowClient

    return dict(MlflowClient().get_model_version(name, version).tags)


def set_version_tags(name: str, version: str, tags: dict[str, object]) -> None:
    """Sets tags on one registered model version; values are stored as strings."""
    from mlflow import MlflowClient

    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
