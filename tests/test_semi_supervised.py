"""Few labels, many images: a conditional VAE trained on rows with and without a label (Kingma et al.
2014's M2), through ``vae train --conditional`` and the real MLflow store; and the KL weight beta."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from training.config import CONDITIONAL_BETA, CONV_MIN_ROWS, TrainConfig


@pytest.fixture(scope="module")
def partly_labelled(tmp_path_factory):
    """The digits as Parquet with a label on one row in five (the others null)."""
    from training.data import load_digits

    digits = load_digits()
    keep = np.random.default_rng(0).random(len(digits)) < 0.2
    labels = [int(y) if k else None for y, k in zip(digits.labels, keep, strict=True)]
    path = tmp_path_factory.mktemp("semi") / "partly.parquet"
    pixels = np.round(digits.images.reshape(len(digits), -1) * 16).astype(np.uint8)
    table = pa.table(
        {
            "example_id": [f"d{i}" for i in range(len(digits))],
            "pixels": pa.array(pixels.tolist(), pa.list_(pa.uint8())),
            "label": pa.array(labels, pa.int64()),
        }
    )
    pq.write_table(table, path)
    return path, int((~keep).sum())


@pytest.fixture(scope="module")
def semi_trained(partly_labelled, mlflow_store):
    from pipeline.cli.main import main

    path, unlabelled = partly_labelled
    args = ["train", "--data", str(path), "--shape", "8x8x1", "--pixel-scale", "16", "--conditional"]
    args += ["--epochs", "12", "--kl-warmup", "2", "--early-stopping", "0", "--model-name", "vae-test-semi"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return result.output, unlabelled


def test_rows_without_a_label_are_learnt_from_not_rejected(semi_trained, mlflow_store):
    from mlflow import MlflowClient

    output, unlabelled = semi_trained
    assert f"unlabelled rows:     {unlabelled:,} learnt from (semi-supervised)" in output
    client = MlflowClient(tracking_uri=mlflow_store)
    version = client.get_model_version_by_alias("vae-test-semi", "champion")
    run = client.get_run(version.run_id)
    assert int(run.data.params["unlabelled_rows"]) == unlabelled
    assert run.data.metrics["rows_rejected"] == 0
    assert run.data.metrics["classifier_holdout_accuracy"] > 0.5  # ten classes: chance is 0.1
    assert run.data.metrics["calibration_folds"] == 0  # calibrated on the labelled rows, never cross-fitted


def test_the_registered_model_keeps_its_classifier_and_generates_by_label(semi_trained, mlflow_store):
    from scoring.sampling import synthesize
    from training import registry
    from training.data import load_digits

    model = registry.pin("models:/vae-test-semi@champion").load()
    assert model.semi_supervised and model.is_conditional
    digits = load_digits()
    probabilities = np.asarray(model.classify(digits.images[:300]))
    assert probabilities.shape == (300, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert (probabilities.argmax(axis=1) == digits.labels[:300]).mean() > 0.5
    labels = np.repeat(np.arange(10), 5)
    images, _ = synthesize(model, "conditional", len(labels), seed=0, labels=labels)
    assert images.shape == (50, 8, 8, 1) and np.isfinite(images).all()
    assert set(np.unique(images * 16).round(4)) <= set(range(17))  # the data's grey levels, no noise


def test_a_data_set_without_any_label_cannot_train_a_conditional_model(tmp_path, mlflow_store):
    from pipeline.cli.main import main

    table = pa.table({"pixels": pa.array([[0, 8, 16, 4]] * 30, pa.list_(pa.uint8())), "label": [None] * 30})
    pq.write_table(table, tmp_path / "none.parquet")
    result = CliRunner().invoke(
        main, ["train", "--data", str(tmp_path / "none.parquet"), "--shape", "2x2x1"] + ["--conditional"]
    )
    assert result.exit_code != 0
    assert "no row has one" in result.output and "Traceback" not in result.output


def test_beta_defaults_to_the_elbo_for_a_plain_model_and_less_for_a_conditional_one():
    from training.data import load_digits
    from training.fitting import build_model

    assert TrainConfig().kl_beta() == 1.0
    assert TrainConfig(conditional=True).kl_beta() == CONDITIONAL_BETA < 1.0
    assert TrainConfig(conditional=True, beta=1.0).kl_beta() == 1.0
    digits = load_digits().subset(np.arange(100))
    model = build_model(TrainConfig(conditional=True), digits)
    assert model.beta == CONDITIONAL_BETA and model.get_config()["beta"] == CONDITIONAL_BETA
    assert not model.semi_supervised  # every row has a label


def test_the_architecture_defaults_to_conv_for_a_conditional_model_of_larger_images_only():
    from dataclasses import replace

    from training.data import load_digits
    from training.fitting import build_model

    conditional = TrainConfig(conditional=True)
    assert conditional.model_architecture((28, 28, 1), 1700) == "conv"
    assert conditional.model_architecture((16, 16, 3), CONV_MIN_ROWS) == "conv"
    assert conditional.model_architecture((28, 28, 1), CONV_MIN_ROWS - 1) == "dense"  # few images
    assert conditional.model_architecture((8, 8, 1), 50_000) == "dense"  # the digits
    assert conditional.model_architecture((17, 17, 1), 50_000) == "dense"  # cannot be halved
    assert TrainConfig().model_architecture((28, 28, 1), 50_000) == "dense"  # the detector
    assert TrainConfig(conditional=True, architecture="dense").model_architecture((28, 28, 1), 50_000) == "dense"
    digits = load_digits()
    large = replace(digits, images=np.repeat(np.repeat(digits.images, 2, axis=1), 2, axis=2))  # 16x16
    assert build_model(conditional, large).architecture == "conv"
    assert build_model(conditional, large.subset(np.arange(100))).architecture == "dense"
    assert build_model(conditional, digits).architecture == "dense"


def test_the_loss_weighs_the_kl_by_beta_and_the_metrics_keep_the_elbo():
    from keras import ops

    from training.data import load_digits
    from training.fitting import build_model
    from training.model import model_inputs

    digits = load_digits().subset(np.arange(64))
    losses = {}
    for beta in (1.0, 0.25):
        model = build_model(TrainConfig(beta=beta, seed=0), digits)
        terms = model(model_inputs(digits.images, None, False))
        losses[beta] = float(model.compute_loss(y_pred=terms))
        reconstruction, kl = (np.asarray(ops.convert_to_numpy(terms))[:, i] for i in (0, 1))
        assert losses[beta] == pytest.approx(float(np.mean(reconstruction + beta * kl)), rel=1e-5)


def test_the_fitted_prior_kl_is_the_standard_one_for_a_standard_prior_and_matches_monte_carlo():
    from types import SimpleNamespace

    from scoring.elbo import prior_kl, prior_log_density

    rng = np.random.default_rng(0)
    mean, log_var = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) * 0.3
    labels = np.array([0, 1, 1, 0, 1, 0])
    standard = SimpleNamespace(score_prior="standard", latent_prior=None)
    identity = SimpleNamespace(
        score_prior="fitted", latent_prior={"means": np.zeros((2, 3)), "cholesky": np.repeat(np.eye(3)[None], 2, 0)}
    )
    np.testing.assert_allclose(prior_kl(identity, mean, log_var, labels), prior_kl(standard, mean, log_var, labels))
    z = rng.normal(size=(4, 6, 3))
    np.testing.assert_allclose(prior_log_density(identity, z, labels), prior_log_density(standard, z, labels))
    # a full-covariance prior per label: the analytic KL against a Monte Carlo estimate
    cholesky = np.array([[[1.5, 0, 0], [0.4, 0.7, 0], [-0.2, 0.1, 1.1]], [[0.8, 0, 0], [0, 1.2, 0], [0.3, 0, 0.5]]])
    fitted = SimpleNamespace(
        score_prior="fitted", latent_prior={"means": rng.normal(size=(2, 3)), "cholesky": cholesky}
    )
    draws = mean[None] + np.exp(0.5 * log_var)[None] * rng.normal(size=(200_000, 6, 3))
    log_q = -0.5 * np.sum((draws - mean) ** 2 / np.exp(log_var) + log_var + np.log(2 * np.pi), axis=-1)
    monte_carlo = (log_q - prior_log_density(fitted, draws, labels)).mean(axis=0)
    np.testing.assert_allclose(prior_kl(fitted, mean, log_var, labels), monte_carlo, rtol=0.02, atol=0.02)


def test_a_conditional_model_is_scored_against_its_fitted_prior_and_a_wrong_label_costs(trained_conditional):
    from scoring.elbo import neg_elbo_terms
    from training.data import load_digits

    model = trained_conditional.model
    assert model.score_prior == "fitted" and model.latent_prior
    digits = load_digits().subset(np.arange(400))
    right = neg_elbo_terms(model, digits.images, digits.labels, num_samples=4)
    wrong = neg_elbo_terms(model, digits.images, (digits.labels + 3) % 10, num_samples=4)
    assert (wrong["kl"] > right["kl"]).mean() > 0.75  # a latent typical of another label is far from this label's prior
    assert wrong["neg_elbo"].mean() > right["neg_elbo"].mean()


def test_a_row_without_a_label_is_never_scored_as_some_class():
    from scoring.elbo import one_hot

    with pytest.raises(ValueError, match="label -1 is not one of"):
        one_hot(np.array([0, -1, 2]), 10)
    with pytest.raises(ValueError, match="label 10 is not one of"):
        one_hot(np.array([10]), 10)


def test_every_part_needs_labelled_rows_and_gets_only_them():
    from training.data import UNLABELLED, DataError, load_digits, training_split
    from training.fitting import labelled_parts

    digits = load_digits()
    labels = digits.labels.copy()
    labels[::3] = UNLABELLED
    split = training_split(replace(digits, labels=labels))
    parts = labelled_parts(split)
    for name in ("train", "validation", "calibration", "holdout"):
        assert (getattr(parts, name).labels >= 0).all()
        assert len(getattr(parts, name)) == int((getattr(split, name).labels >= 0).sum())
    labels[np.isin(digits.example_ids, split.holdout.example_ids)] = UNLABELLED
    unlabelled_holdout = training_split(replace(digits, labels=labels))
    with pytest.raises(DataError, match="the holdout part .* has no labelled row"):
        labelled_parts(unlabelled_holdout)
