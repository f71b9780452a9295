"""Shared fixtures: a real SQLite MLflow store in a temporary folder, and small trained models
registered in it (trained once per test session and worker)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# calibration_folds 0: the calibration part alone (tests/test_cross_fit.py covers the default, cross-fitting)
QUICK = {"epochs": 4, "kl_warmup": 1, "early_stopping": 0, "score_samples": 4, "calibration_folds": 0}


# The slowest test files first (seconds on 2 cores, pytest --junitxml, 2026-12-06): `make test` hands
# whole files to the two workers in collection order (--dist loadfile --no-loadscope-reorder; xdist
# would otherwise order them by their number of tests, which put the Airflow file, 5 tests and
# 210 s, last), so the long ones start at once and the short ones fill in behind them.
SLOW_FILES = {
    "test_dag_events.py": 210,
    "test_terminal.py": 69,
    "test_dask_runner.py": 58,
    "test_dags.py": 56,
    "test_cross_fit.py": 55,
    "test_score_pipeline.py": 51,
    "test_evaluate.py": 44,
    "test_input_contract.py": 40,
    "test_training.py": 40,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: -SLOW_FILES.get(item.path.name, 0))  # stable: file order kept otherwise


@pytest.fixture(scope="session", autouse=True)
def private_work_dir(tmp_path_factory):
    """The default working folder (``VAE_WORK_DIR``, else ``~/vae-work``) is a temporary one, so no
    test writes into the home directory or the checkout."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VAE_WORK_DIR", str(tmp_path_factory.mktemp("vae-work")))
        yield


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory):
    """Points MLflow (and the ``vae`` command) at a fresh SQLite store for the whole session."""
    from training import registry

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("VAE_WORK_DIR", str(folder / "work"))
        registry.configure(folder / "work")
        yield uri


def _train(mlflow_store, **overrides):
    from training.config import TrainConfig
    from training.train import train

    return train(TrainConfig(**(QUICK | overrides)))


@pytest.fixture(scope="session")
def trained_plain(mlflow_store):
    """A plain VAE on digits registered as ``vae-test-plain`` with the champion alias."""
    return _train(mlflow_store, model_name="vae-test-plain", promote="always")


@pytest.fixture(scope="session")
def trained_conditional(mlflow_store):
    """A conditional VAE on digits registered as ``vae-test-cond`` with the champion alias."""
    return _train(mlflow_store, model_name="vae-test-cond", conditional=True, promote="always")
