"""Cross-fitted calibration (training.cross_fit): every non-holdout row scored by a model that never
saw it, the default when the calibration part is small; through the real training job and CLI."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli.main import main
from scoring.calibration import Calibration, threshold_at
from training import cross_fit
from training import data as data_lib
from training.config import TrainConfig
from training.train import train

from .conftest import QUICK


def test_auto_cross_fits_only_a_calibration_part_too_small_for_an_empirical_threshold(caplog):
    assert cross_fit.resolve_folds(None, 271, 0.01) == cross_fit.DEFAULT_FOLDS
    assert cross_fit.resolve_folds(None, 999, 0.01) == cross_fit.DEFAULT_FOLDS
    assert cross_fit.resolve_folds(None, 1000, 0.01) == 0  # ten scores above a 1 % threshold
    assert cross_fit.resolve_folds(None, 271, 0.05) == 0  # 200 rows suffice at 5 %
    assert cross_fit.resolve_folds(3, 5000, 0.01) == 3 and cross_fit.resolve_folds(0, 10, 0.01) == 0
    assert cross_fit.resolve_folds(None, 271, 0.01, semi_supervised=True) == 0
    assert cross_fit.resolve_folds(None, 3, 0.01, rows=17) == 0  # tiny data: too few rows for five folds
    with pytest.raises(ValueError, match="--calibration-folds 5: 17 non-holdout rows are too few"):
        cross_fit.resolve_folds(5, 3, 0.01, rows=17)
    assert cross_fit.resolve_folds(None, 271, 0.01, on_disk=True) == 0
    assert cross_fit.resolve_folds(3, 271, 0.01, on_disk=True) == 0
    assert "--calibration-folds 3 ignored: the images are memory-mapped" in caplog.text
    for bad in (1, -2):
        with pytest.raises(ValueError, match="folds"):
            cross_fit.resolve_folds(bad, 271, 0.01)
        with pytest.raises(ValueError, match="folds"):  # before any training, not after it
            train(TrainConfig(calibration_folds=bad, data="no/such/data"))


def test_folds_are_balanced_stratified_by_label_and_fixed_by_the_seed():
    folds = cross_fit.fold_of_rows(103, 5, seed=7)
    assert sorted(np.bincount(folds)) == [20, 20, 21, 21, 21]
    np.testing.assert_array_equal(folds, cross_fit.fold_of_rows(103, 5, seed=7))
    assert not np.array_equal(folds, cross_fit.fold_of_rows(103, 5, seed=8))
    labels = np.repeat([0, 1, 2], [50, 7, 46])
    by_label = cross_fit.fold_of_rows(103, 5, seed=7, labels=labels)
    for label in range(3):
        counts = np.bincount(by_label[labels == label], minlength=5)
        assert counts.max() - counts.min() <= 1  # every fold holds each label in proportion
    assert sorted(np.bincount(by_label)) == [20, 20, 21, 21, 21]


def _toy_split(n: int = 60) -> data_lib.TrainingSplit:
    rng = np.random.default_rng(0)
    parts = []
    for name, rows in (("train", n), ("validation", n // 3), ("calibration", n // 3), ("holdout", n // 3)):
        parts.append(
            data_lib.ImageData(
                rng.random((rows, 2, 2, 1)).astype(np.float32),
                None,
                np.array([f"{name}-{i}" for i in range(rows)]),
                None,
                "toy",
            )
        )
    return data_lib.TrainingSplit(*parts)


def test_every_non_holdout_row_is_scored_once_by_a_model_that_never_saw_it():
    split = _toy_split()
    seen: list[set[str]] = []

    def fit_fold(train, validation, k):
        assert not set(train.example_ids) & set(validation.example_ids)
        seen.append(set(train.example_ids) | set(validation.example_ids))
        return k

    scored: dict[str, float] = {}

    def score_rows(k, rows):
        assert not set(rows.example_ids) & seen[k], "a fold model scored a row it was trained on"
        for i in rows.example_ids:
            assert i not in scored, "a row scored twice"
            scored[i] = float(k)
        return np.array([float(i.split("-")[1]) for i in rows.example_ids])

    scores = cross_fit.cross_fitted_scores(split, 4, seed=0, fit_fold=fit_fold, score_rows=score_rows)
    ids = np.concatenate([split.train.example_ids, split.validation.example_ids, split.calibration.example_ids])
    assert set(scored) == set(ids)  # every train, validation and calibration row; no holdout row
    np.testing.assert_array_equal(scores, [float(i.split("-")[1]) for i in ids])  # in the parts' order
    sizes = np.bincount(cross_fit.fold_of_rows(len(ids), 4, seed=0))
    assert [len(s) for s in seen] == [len(ids) - size for size in sizes]  # each saw all the other folds' rows


@pytest.mark.slow
def test_no_fold_model_fits_or_early_stops_on_a_row_it_scores(monkeypatch):
    """Through ``vae train``'s own fold models: the rows each one trains on, stops early on and fits
    the score's statistics on are recorded (by content) and never among the rows it scores."""
    from scoring.detector import VAEDetector
    from training import threshold as threshold_module
    from training.threshold import cross_fitted_calibration_scores

    key = lambda images: {np.asarray(x).tobytes() for x in images}  # noqa: E731
    seen, scored = [], []
    real_fit, real_detector_fit, real_decision = threshold_module.fit, VAEDetector.fit, VAEDetector.decision_function

    def recording_fit(cfg, model, split, sink=None, report=True):
        seen.append(key(split.train.images) | key(split.validation.images))
        return real_fit(cfg, model, split, sink, report)

    def recording_detector_fit(self, images, *args, **kwargs):
        assert key(images) <= seen[-1], "a fold's detector fitted on rows its model did not train on"
        return real_detector_fit(self, images, *args, **kwargs)

    def recording_decision(self, images, labels=None):
        scored.append((len(seen) - 1, key(images)))
        return real_decision(self, images, labels)

    monkeypatch.setattr(threshold_module, "fit", recording_fit)
    monkeypatch.setattr(VAEDetector, "fit", recording_detector_fit)
    monkeypatch.setattr(VAEDetector, "decision_function", recording_decision)
    split = data_lib.training_split(data_lib.load("digits"), seed=0)
    cfg = TrainConfig(**(QUICK | {"epochs": 1}))
    scores = cross_fitted_calibration_scores(cfg, split, 2)
    parts = [split.train.images, split.validation.images, split.calibration.images]
    every = [np.asarray(x).tobytes() for p in parts for x in p]
    unique = {k for k in every if every.count(k) == 1}  # a digit drawn twice may sit in two folds
    assert len(seen) == 2 and [k for k, _ in scored] == [0, 1]
    for fold, rows in scored:
        assert not (rows & unique) & seen[fold], f"fold model {fold} scored a row it had seen"
    assert set().union(*(rows for _, rows in scored)) == set(every)  # every non-holdout row scored
    assert scores.shape == (len(every),) and np.isfinite(scores).all()


CROSS_FITTED = {"model_name": "vae-test-crossfit", "calibration_folds": None, "epochs": 2}  # 6 fits: keep them short


@pytest.fixture(scope="module")
def cross_fitted(mlflow_store):
    return train(TrainConfig(**(QUICK | CROSS_FITTED)))


@pytest.mark.slow
def test_a_small_calibration_part_is_cross_fitted_over_every_non_holdout_row(cross_fitted, mlflow_store):
    from mlflow import MlflowClient

    split = cross_fitted.split
    rows = len(split.train) + len(split.validation) + len(split.calibration)
    calibration = Calibration.from_dict(cross_fitted.model.calibration)
    assert cross_fitted.calibration_folds == cross_fit.DEFAULT_FOLDS
    assert calibration.scores.size == cross_fitted.calibration_rows == rows
    assert calibration.threshold == pytest.approx(threshold_at(calibration.scores, 0.01)) == cross_fitted.threshold
    assert np.sum(calibration.scores > calibration.threshold) == int(0.01 * rows)  # empirical: enough rows now
    assert cross_fitted.calibration_warning is None  # the small part's warning no longer applies
    run = MlflowClient(tracking_uri=mlflow_store).get_run(cross_fitted.run_id)
    assert run.data.metrics["calibration_folds"] == cross_fit.DEFAULT_FOLDS
    assert run.data.metrics["calibration_rows"] == rows
    assert "calibration_warning" not in run.data.tags


@pytest.mark.slow
def test_cross_fitted_scores_are_out_of_fold_and_the_same_for_the_same_seed(cross_fitted):
    """Recomputed with the same settings they match the stored ones (reruns give the same numbers),
    and they are not the final model's own scores of those rows."""
    from training.threshold import cross_fitted_calibration_scores

    cfg = TrainConfig(**(QUICK | CROSS_FITTED))
    again = cross_fitted_calibration_scores(cfg, cross_fitted.split, cross_fit.DEFAULT_FOLDS, like=cross_fitted.model)
    np.testing.assert_allclose(np.sort(again), Calibration.from_dict(cross_fitted.model.calibration).scores, rtol=1e-5)
    from scoring.detector import VAEDetector

    in_sample = VAEDetector.from_model(cross_fitted.model).decision_function(cross_fitted.split.train.images)
    out_of_fold = again[: len(cross_fitted.split.train)]
    assert np.mean(np.abs(out_of_fold - in_sample)) > 0.05


@pytest.mark.slow
def test_vae_train_says_how_the_threshold_was_calibrated(mlflow_store):
    import mlflow

    args = ["train", "--model-name", "vae-test-folds", "--epochs", "1", "--kl-warmup", "1", "--score-samples", "2"]
    cross = CliRunner().invoke(main, args + ["--calibration-folds", "2"])
    assert cross.exit_code == 0, cross.output
    assert "each scored by one of 2 cross-fitted models that left it out" in cross.output
    part = CliRunner().invoke(main, args + ["--calibration-folds", "0"])
    assert part.exit_code == 0, part.output
    assert "calibration rows)" in part.output and "cross-fitted" not in part.output
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.model_name = 'vae-test-folds'")
    runs = runs.sort_values("start_time")
    assert list(runs["metrics.calibration_folds"]) == [2, 0]
    assert list(runs["metrics.calibration_rows"].astype(int)) == [1532, 271]
    warnings = list(runs["tags.calibration_warning"])  # the small part's warning, only without the folds
    assert not isinstance(warnings[0], str) and "of 271 calibration scores" in warnings[1]
    assert "cross-fitted by 2 models" in runs["tags.calibration_data"].iloc[0]
    for bad, why in (("1", "use 0 (no cross-fitting), 2 or more, or auto"), ("many", "neither auto nor a whole")):
        refused = CliRunner().invoke(main, args + ["--calibration-folds", bad])
        assert refused.exit_code == 2 and why in refused.output


@pytest.mark.slow
def test_vae_calibrate_reuses_the_cross_fitted_scores_at_a_new_rate(cross_fitted, mlflow_store):
    """The out-of-fold scores came from models that no longer exist: a new rate reuses them (a
    calibration part re-scored by the final model would be a smaller, different sample)."""
    from mlflow import MlflowClient

    from training.recalibrate import recalibrate

    stored = Calibration.from_dict(cross_fitted.model.calibration)
    uri = f"models:/{cross_fitted.model_name}/{cross_fitted.version}"
    looser = recalibrate(uri, 0.05)
    assert looser.calibration_rows == stored.scores.size
    assert looser.threshold == pytest.approx(stored.with_fpr(0.05).threshold)
    assert "cross-fitted by 5 models" in looser.calibration_data
    back = recalibrate(f"models:/{cross_fitted.model_name}/{looser.version}", 0.01)  # the new version's too
    assert back.threshold == pytest.approx(cross_fitted.threshold)
    run = MlflowClient(tracking_uri=mlflow_store).get_run(looser.run_id)
    assert run.data.metrics["calibration_folds"] == cross_fit.DEFAULT_FOLDS
    other = recalibrate(uri, 0.01, data="digits:calibration")  # other data: re-scored, not reused
    assert other.calibration_rows == len(cross_fitted.split.calibration) and "out-of-fold" not in other.calibration_data
    assert MlflowClient(tracking_uri=mlflow_store).get_run(other.run_id).data.metrics["calibration_folds"] == 0
