"""The training job against a real SQLite MLflow store: registry, alias, reload, logging, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from pipeline.cli import main
from scoring.calibration import Calibration
from scoring.elbo import score_images
from training import registry
from training.callbacks import NaNGuard, TrainingDiverged
from training.config import TrainConfig
from training.train import train

from .conftest import QUICK

pytestmark = pytest.mark.slow


def test_training_registers_a_version_with_the_champion_alias(trained_plain):
    client = MlflowClient()
    version = client.get_model_version_by_alias("vae-test-plain", "champion")
    assert str(version.version) == trained_plain.version and version.run_id == trained_plain.run_id


def test_champion_from_the_registry_scores_like_the_in_memory_model(trained_conditional):
    loaded = registry.load_model("models:/vae-test-cond@champion")
    assert loaded.version == trained_conditional.version and loaded.model.is_conditional
    test = trained_conditional.split.test
    ours = score_images(trained_conditional.model, test.images, test.labels, num_samples=4, seed=0, iwae_k=8)
    theirs = score_images(loaded.model, test.images, test.labels, num_samples=4, seed=0, iwae_k=8)
    for key in ours:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-6)


def test_run_logs_params_per_epoch_metrics_plots_and_calibration(trained_conditional):
    client = MlflowClient()
    run = client.get_run(trained_conditional.run_id)
    assert run.data.params["latent_dim"] == str(TrainConfig().latent_dim) and run.data.params["conditional"] == "True"
    assert len(run.data.tags["data_fingerprint"]) == 16
    for key in ("neg_elbo", "val_neg_elbo", "reconstruction", "val_reconstruction", "kl", "val_kl"):
        assert len(client.get_metric_history(run.info.run_id, key)) == QUICK["epochs"]
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {
        f"plots/{n}.png"
        for n in (
            "learning_curves",
            "reconstructions",
            "prior_samples",
            "latent_map",
            "score_histogram",
            "samples_per_label",
        )
    } <= plots
    stored = Path(client.download_artifacts(run.info.run_id, "calibration.json")).read_text()
    calibration = Calibration.from_dict(json.loads(stored))
    assert calibration.threshold == pytest.approx(trained_conditional.threshold)
    assert trained_conditional.model.calibration["threshold"] == pytest.approx(calibration.threshold)


def test_threshold_keeps_the_validation_false_positive_rate_at_target(trained_plain):
    calibration = Calibration.from_dict(trained_plain.model.calibration)
    n = calibration.scores.size
    assert np.sum(calibration.scores > calibration.threshold) == int(np.floor(n * calibration.target_fpr + 1e-9))
    p = calibration.p_values(calibration.scores)
    assert p.min() > 0 and p.max() <= 1


def test_promotion_follows_the_promote_option(mlflow_store):
    name = "vae-test-promote"
    first = train(TrainConfig(**(QUICK | {"model_name": name, "promote": "if-better"})))
    assert first.promoted and first.promotion_reason == "no champion yet"
    never = train(TrainConfig(**(QUICK | {"model_name": name, "promote": "never"})))
    assert not never.promoted and registry.champion_version(name) == first.version
    worse = train(TrainConfig(**(QUICK | {"model_name": name, "epochs": 1, "promote": "if-better"})))
    assert not worse.promoted and registry.champion_version(name) == first.version
    assert ">=" in worse.promotion_reason
    better = train(TrainConfig(**(QUICK | {"model_name": name, "epochs": 8, "promote": "if-better"})))
    assert better.promoted and registry.champion_version(name) == better.version
    forced = train(TrainConfig(**(QUICK | {"model_name": name, "epochs": 1, "promote": "always"})))
    assert forced.promoted and registry.champion_version(name) == forced.version


def test_if_better_never_compares_different_likelihoods(mlflow_store):
    name = "vae-test-likelihoods"
    first = train(TrainConfig(**(QUICK | {"model_name": name, "epochs": 1, "likelihood": "bernoulli"})))
    other = train(TrainConfig(**(QUICK | {"model_name": name, "likelihood": "continuous_bernoulli"})))
    assert first.promoted and not other.promoted  # -70 nats of a density do not beat 25 nats of a Bernoulli
    assert "not comparable" in other.promotion_reason and registry.champion_version(name) == first.version


def test_vae_train_command_end_to_end(mlflow_store):
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--data",
            "digits",
            "--model-name",
            "vae-test-cli",
            "--epochs",
            "2",
            "--kl-warmup",
            "1",
            "--score-samples",
            "2",
            "--seed",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "registered:          vae-test-cli version 1" in result.output
    assert "promoted to @champion (no champion yet)" in result.output
    assert registry.champion_version("vae-test-cli") == "1"


def test_vae_train_reports_bad_data_plainly(mlflow_store, tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.full((20, 4, 4), 3.5))
    result = CliRunner().invoke(main, ["train", "--data", str(tmp_path / "bad.npz"), "--epochs", "1"])
    assert result.exit_code == 1
    assert "Error: " in result.output and "bad.npz: row 0 has values in [3.5, 3.5]" in result.output
    assert "Traceback" not in result.output


def test_help_explains_every_option():
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0
    command = main.commands["train"]
    for param in command.params:
        if param.name != "help":
            assert any(opt in result.output for opt in param.opts), param.name
            assert param.help, f"{param.name} has no help text"


def test_a_loss_that_becomes_nan_stops_training_with_a_clear_message():
    from training.model import VariationalAutoencoder, compile_model

    model = VariationalAutoencoder((8, 8, 1), latent_dim=2, seed=0)
    compile_model(model, learning_rate=1e-3)
    x = np.random.default_rng(0).random((64, 8, 8, 1), dtype=np.float32)
    x[5] = np.nan  # poisons the loss in the first batch
    guard = NaNGuard()
    history = model.fit(x, np.zeros(64), epochs=3, batch_size=32, verbose=0, callbacks=[guard])
    assert guard.failure and "became nan at epoch 1" in guard.failure
    assert len(history.history["loss"]) == 1  # stopped in the first epoch, not after all three
    with pytest.raises(TrainingDiverged, match="lower --learning-rate"):
        guard.raise_if_failed()
