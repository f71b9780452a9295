"""The training job against a real SQLite MLflow store: registry, alias, reload, logging, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from pipeline.cli.main import main
from scoring.calibration import Calibration, size_warning, threshold_at
from scoring.detector import score_images
from training import data as data_lib
from training import registry
from training.callbacks import NaNGuard, TrainingDiverged
from training.config import TrainConfig
from training.fitting import neg_elbo_scores
from training.run_log import decide_promotion
from training.train import train

from .conftest import QUICK

pytestmark = pytest.mark.slow


def test_training_registers_a_version_with_the_champion_alias(trained_plain):
    client = MlflowClient()
    version = client.get_model_version_by_alias("vae-test-plain", "champion")
    assert str(version.version) == trained_plain.version and version.run_id == trained_plain.run_id


def test_champion_from_the_registry_scores_like_the_in_memory_model(trained_conditional):
    champion = registry.pin("models:/vae-test-cond@champion")
    loaded = champion.load()
    assert champion.version == trained_conditional.version and loaded.is_conditional
    holdout = trained_conditional.split.holdout
    ours = score_images(trained_conditional.model, holdout.images, holdout.labels, num_samples=4, seed=0, iwae_k=8)
    theirs = score_images(loaded, holdout.images, holdout.labels, num_samples=4, seed=0, iwae_k=8)
    for key in ours:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-6)


def test_run_logs_params_per_epoch_metrics_plots_and_calibration(trained_conditional):
    client = MlflowClient()
    run = client.get_run(trained_conditional.run_id)
    assert run.data.params["latent_dim"] == str(TrainConfig().latent_dim) and run.data.params["conditional"] == "True"
    assert len(run.data.tags["data_fingerprint"]) == 16
    holdout = trained_conditional.split.holdout
    assert (
        run.data.tags["holdout_fingerprint"] == data_lib.fingerprint(holdout) == trained_conditional.holdout_fingerprint
    )
    assert run.data.params["holdout_rows"] == str(len(holdout))
    metrics = run.data.metrics
    assert metrics["validation_neg_elbo"] == pytest.approx(trained_conditional.validation_neg_elbo)
    assert metrics["holdout_neg_elbo"] == pytest.approx(trained_conditional.holdout_neg_elbo)
    assert metrics["threshold"] == pytest.approx(trained_conditional.threshold)
    assert metrics["calibration_rows"] == len(trained_conditional.split.calibration)
    flagged = score_images(trained_conditional.model, holdout.images, holdout.labels, num_samples=4, seed=0)
    assert metrics["holdout_flagged_rate"] == pytest.approx(np.mean(flagged["anomaly_score"] > metrics["threshold"]))
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
            "latent_grid",
            "score_histogram",
            "samples_per_label",
        )
    } <= plots
    stored = Path(client.download_artifacts(run.info.run_id, "calibration.json")).read_text()
    calibration = Calibration.from_dict(json.loads(stored))
    assert calibration.threshold == pytest.approx(trained_conditional.threshold)
    assert trained_conditional.model.calibration["threshold"] == pytest.approx(calibration.threshold)


def test_threshold_keeps_the_calibration_false_positive_rate_at_target(trained_plain):
    calibration = Calibration.from_dict(trained_plain.model.calibration)
    n = calibration.scores.size
    assert n == len(trained_plain.split.calibration)
    assert calibration.threshold == pytest.approx(threshold_at(calibration.scores, calibration.target_fpr))
    above = np.sum(calibration.scores > calibration.threshold)  # the tail rule (small data): near n * fpr
    assert abs(above - n * calibration.target_fpr) <= max(3, 0.5 * n * calibration.target_fpr)
    p = calibration.p_values(calibration.scores)
    assert p.min() > 0 and p.max() <= 1


def test_calibration_is_the_calibration_parts_anomaly_score_not_the_validation_or_training_data(trained_plain):
    model, split = trained_plain.model, trained_plain.split
    assert model.anomaly is not None  # the detector's statistics were fitted before calibrating
    calibration = Calibration.from_dict(model.calibration)
    assert calibration.score == "anomaly_score"
    anomaly = score_images(model, split.calibration.images, num_samples=4, seed=0)["anomaly_score"]
    np.testing.assert_allclose(calibration.scores, np.sort(anomaly))
    expected = threshold_at(np.sort(anomaly), calibration.target_fpr)
    assert calibration.threshold == pytest.approx(expected) == trained_plain.threshold
    jobs = [set(p.example_ids) for p in (split.train, split.validation, split.calibration, split.holdout)]
    assert all(not (jobs[i] & jobs[j]) for i in range(4) for j in range(i + 1, 4))


def test_a_calibration_part_too_small_for_the_target_rate_is_flagged(trained_plain):
    n = len(trained_plain.split.calibration)  # about 270 digits at the default 1 %: 2 above the threshold
    assert trained_plain.calibration_warning == size_warning(n, 0.01)
    assert f"of {n} calibration scores" in trained_plain.calibration_warning
    run = MlflowClient().get_run(trained_plain.run_id)
    assert run.data.tags["calibration_warning"] == trained_plain.calibration_warning
    assert run.data.metrics["calibration_rows_needed"] == 1000


def test_the_holdout_fingerprint_is_stored_with_the_registered_version(trained_plain):
    tags = MlflowClient().get_model_version("vae-test-plain", trained_plain.version).tags
    assert tags["holdout_fingerprint"] == data_lib.fingerprint(trained_plain.split.holdout)
    assert tags["holdout_rows"] == str(len(trained_plain.split.holdout))
    assert float(tags["holdout_neg_elbo"]) == pytest.approx(trained_plain.holdout_neg_elbo)
    assert registry.version_tags("vae-test-plain", trained_plain.version) == tags


def test_if_better_scores_the_champion_on_the_holdout_and_names_it(trained_plain):
    name, version, holdout = "vae-test-plain", trained_plain.version, trained_plain.split.holdout
    cfg = TrainConfig(**(QUICK | {"model_name": name}))
    fingerprint = trained_plain.holdout_fingerprint
    champion_score = float(neg_elbo_scores(trained_plain.model, holdout).mean())
    assert champion_score == pytest.approx(trained_plain.holdout_neg_elbo)

    promoted, reason = decide_promotion(cfg, version, champion_score - 1.0, holdout)
    assert promoted and f"on holdout {fingerprint} ({len(holdout)} rows), champion v{version}'s own holdout" in reason
    promoted, reason = decide_promotion(cfg, version, champion_score + 1.0, holdout, fingerprint)
    assert not promoted and ">=" in reason and fingerprint in reason

    other = holdout.subset(np.arange(len(holdout) - 1))  # new data: another holdout
    promoted, reason = decide_promotion(cfg, version, -1e9, other)
    assert promoted and f"fingerprints {fingerprint} -> {data_lib.fingerprint(other)}" in reason
    assert f"({len(other)} rows)" in reason

    client = MlflowClient()
    client.delete_model_version_tag(name, version, "holdout_fingerprint")  # as on a model from before
    try:
        promoted, reason = decide_promotion(cfg, version, 1e9, holdout, fingerprint)
        assert promoted and "predates the fixed holdout" in reason and fingerprint in reason
    finally:
        client.set_model_version_tag(name, version, "holdout_fingerprint", fingerprint)


def test_promotion_follows_the_promote_option(mlflow_store):
    name = "vae-test-promote"
    first = train(TrainConfig(**(QUICK | {"model_name": name, "promote": "if-better"})))
    assert first.promoted and first.promotion_reason == "no champion yet"
    never = train(TrainConfig(**(QUICK | {"model_name": name, "promote": "never"})))
    assert not never.promoted and registry.champion_version(name) == first.version
    worse = train(TrainConfig(**(QUICK | {"model_name": name, "epochs": 1, "promote": "if-better"})))
    assert not worse.promoted and registry.champion_version(name) == first.version
    assert ">=" in worse.promotion_reason and f"on holdout {worse.holdout_fingerprint}" in worse.promotion_reason
    assert worse.holdout_fingerprint == first.holdout_fingerprint and "own holdout" in worse.promotion_reason
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
            "--calibration-folds",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "registered:          vae-test-cli version 1" in result.output
    assert "promoted to @champion (no champion yet)" in result.output
    assert "holdout neg ELBO:" in result.output and "calibration rows" in result.output
    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.model_name = 'vae-test-cli'")
    assert "calibration scores" in runs["tags.calibration_warning"].iloc[0]  # the small calibration part's
    assert result.output.count("calibration scores") <= 1  # said once, not twice
    assert registry.champion_version("vae-test-cli") == "1"


def test_vae_train_reports_bad_data_plainly(mlflow_store, tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.full((20, 4, 4), 3.5))
    result = CliRunner().invoke(main, ["train", "--data", str(tmp_path / "bad.npz"), "--epochs", "1"])
    assert result.exit_code == 1
    assert "Error: " in result.output and "bad.npz: no usable image in 20 rows (20 x out of range)" in result.output
    assert "example_id bad.npz:0: out of range: values in [3.5, 3.5]" in result.output
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
