"""The evaluation: protocol splits, ranking metrics, classical detectors, and the command."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline import evaluate as ev
from scoring import metrics
from scoring.detectors import classical_detectors
from training import data as data_lib


@pytest.fixture(scope="module")
def digits() -> data_lib.ImageData:
    return data_lib.load_digits()


@pytest.fixture(scope="module")
def parts(digits) -> data_lib.Split:
    return data_lib.split(digits, seed=0)


# --- protocols -------------------------------------------------------------------------------


def test_held_out_leaves_one_class_out_of_training(digits, parts):
    tasks = ev.held_out_tasks(digits, seed=0)
    assert [t.target for t in tasks] == [str(d) for d in range(10)]
    for digit, task in enumerate(tasks):
        assert task.protocol == "held-out"
        assert digit not in set(task.fit.labels.tolist()) | set(task.validation.labels.tolist())
        assert len(task.fit) == int((parts.train.labels != digit).sum())
        assert task.counts["n_anomalous"] == int((parts.test.labels == digit).sum())
        assert task.counts["n_normal"] == len(parts.test) - task.counts["n_anomalous"]
        assert np.array_equal(task.test.example_ids, parts.test.example_ids)  # the same test split every time
        assert np.array_equal(task.is_anomaly, task.test.labels == digit)
    assert sum(t.counts["n_anomalous"] for t in tasks) == len(parts.test)


def test_contaminated_plants_about_three_percent_of_zeros(digits):
    task = ev.contaminated_task(digits, seed=0)
    normals = int((digits.labels != 0).sum())
    assert normals == 1619
    assert task.counts == {"n_fit": normals + 50, "n_normal": normals, "n_anomalous": 50}
    assert task.counts["n_anomalous"] / len(task.test) == pytest.approx(0.03, abs=0.001)
    assert np.array_equal(task.fit.example_ids, task.test.example_ids)  # fit on all of it, score all of it
    assert np.array_equal(task.is_anomaly, task.test.labels == 0)
    again = ev.contaminated_task(digits, seed=0)
    assert np.array_equal(task.test.example_ids, again.test.example_ids)
    other = ev.contaminated_task(digits, seed=1)
    assert not np.array_equal(task.test.example_ids, other.test.example_ids)


def test_one_class_trains_on_one_class(digits, parts):
    tasks = ev.one_class_tasks(digits, seed=0)
    assert len(tasks) == 10
    for digit, task in enumerate(tasks):
        assert set(task.fit.labels.tolist()) == {digit} == set(task.validation.labels.tolist())
        assert len(task.fit) == int((parts.train.labels == digit).sum())
        assert task.counts["n_normal"] == int((parts.test.labels == digit).sum())
        assert task.counts["n_anomalous"] == len(parts.test) - task.counts["n_normal"]


def test_build_tasks_in_table_order_and_rejects_unknown(digits):
    tasks = ev.build_tasks(digits, ["one-class", "contaminated"])
    assert [t.protocol for t in tasks] == ["contaminated"] + ["one-class"] * 10
    with pytest.raises(ValueError, match="unknown protocol"):
        ev.build_tasks(digits, ["leave-one-out"])
    unlabelled = data_lib.ImageData(digits.images[:20], None, digits.example_ids[:20], None, "x")
    with pytest.raises(data_lib.DataError, match="labelled"):
        ev.build_tasks(unlabelled)


def test_vae_config_for_tasks(digits):
    from training.config import TrainConfig

    base = TrainConfig(epochs=6, kl_warmup=10, early_stopping=10)
    held_out = ev.vae_config(base, ev.held_out_tasks(digits)[0])
    assert (held_out.kl_warmup, held_out.early_stopping, held_out.conditional) == (2, 10, False)
    assert ev.vae_config(base, ev.contaminated_task(digits)).early_stopping == 0
    one_class = ev.vae_config(base, ev.one_class_tasks(digits)[0])
    factor = ev.ONE_CLASS_EPOCH_FACTOR
    assert (one_class.epochs, one_class.kl_warmup, one_class.early_stopping) == (6 * factor, 2 * factor, 10 * factor)


# --- metrics ---------------------------------------------------------------------------------


def test_auroc_and_average_precision_of_perfect_and_reversed_scores():
    y = np.array([0, 0, 0, 1, 1])
    perfect = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert metrics.auroc(y, perfect) == 1.0
    assert metrics.auroc(y, -perfect) == 0.0
    assert metrics.average_precision(y, perfect) == 1.0
    assert metrics.average_precision(y, -perfect) < 0.5
    assert metrics.auroc(y, np.ones(5)) == 0.5  # all tied: chance


def test_metrics_edge_cases():
    y = np.array([False, False, True])
    assert metrics.auroc(y, [0.0, 1.0, np.inf]) == 1.0  # a certain detector may say inf
    assert metrics.average_precision(y, [-np.inf, 0.0, np.inf]) == 1.0
    assert math.isnan(metrics.auroc([0, 0, 0], [1.0, 2.0, 3.0]))  # one class: undefined
    assert math.isnan(metrics.average_precision([1, 1], [1.0, 2.0]))
    assert math.isnan(metrics.auroc([], []))
    with pytest.raises(ValueError, match="NaN"):
        metrics.auroc(y, [0.0, np.nan, 1.0])
    with pytest.raises(ValueError, match="labels but"):
        metrics.auroc(y, [0.0, 1.0])


# --- detectors -------------------------------------------------------------------------------


def test_classical_detectors_rank_an_obvious_outlier_first(digits):
    normal = digits.subset(np.flatnonzero(digits.labels == 3))
    fit, inliers = normal.images[:120], normal.images[120:]
    outlier = np.ones((1, *digits.image_shape), np.float32)  # an all-white square
    test = np.concatenate([inliers, outlier])
    for detector in classical_detectors(seed=0):
        scores = detector.fit(fit).score(test)
        assert scores.shape == (len(test),)
        assert np.all(np.isfinite(scores)), detector.name
        assert scores[-1] > scores[:-1].max(), detector.name


def test_detectors_are_deterministic_and_need_fit(digits):
    x = digits.images[:200]
    a = [d.fit(x).score(x[:20]) for d in classical_detectors(seed=3)]
    b = [d.fit(x).score(x[:20]) for d in classical_detectors(seed=3)]
    for first, second in zip(a, b, strict=True):
        np.testing.assert_array_equal(first, second)
    with pytest.raises(RuntimeError, match="fit"):
        classical_detectors()[0].score(x)


def test_kde_bandwidth_comes_from_cross_validation(digits):
    from scoring.detectors import KDEDetector

    kde = KDEDetector().fit(digits.images[:300])
    assert kde.bandwidth in kde.bandwidths
    assert kde.bandwidths.min() < kde.bandwidth < kde.bandwidths.max()  # an interior optimum, not a grid edge


# --- tables and outputs ----------------------------------------------------------------------


def test_classical_evaluation_writes_tables_csv_and_plot(digits, tmp_path):
    import pandas as pd

    every_third = digits.subset(np.arange(0, len(digits), 3))  # a third of the images keeps the test quick
    result = ev.evaluate(
        every_third, ["held-out", "contaminated"], output_dir=tmp_path, detectors=ev.CLASSICAL, progress=lambda _: None
    )
    assert len(result.rows) == (10 + 1) * len(ev.CLASSICAL)
    frame = pd.read_csv(result.csv_path)
    assert set(frame.columns) >= {"protocol", "target", "detector", "auroc", "average_precision", "n_anomalous"}
    assert frame["auroc"].between(0, 1).all()
    table = ev.results_table(result.rows, "held-out", "auroc")
    assert list(table.columns) == list(ev.CLASSICAL)
    assert list(table.index) == [str(d) for d in range(10)] + ["mean"]
    assert (table.loc["mean"] > 0.6).all()  # every baseline beats chance on held-out digits
    assert "| **mean** |" in result.tables["held-out"]
    assert result.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "tables.md").read_text().count("| anomalous class |") == 4


@pytest.mark.slow
def test_evaluate_command_with_the_vae_logs_to_mlflow(mlflow_store, tmp_path):
    from click.testing import CliRunner
    from mlflow import MlflowClient

    from pipeline.cli import main

    out = tmp_path / "evaluation"
    args = ["evaluate", "--protocols", "contaminated", "--epochs", "2", "--output", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "vae_neg_elbo" in result.output and "average_precision" in result.output
    assert {p.name for p in out.iterdir()} == {"results.csv", "vae_fits.csv", "tables.md", "evaluation.png"}
    run_id = result.output.strip().splitlines()[-1].split()[-1]
    run = MlflowClient().get_run(run_id)
    assert 0.0 <= run.data.metrics["eval.contaminated.vae_iwae_nll.mean_auroc"] <= 1.0
    assert {a.path for a in MlflowClient().list_artifacts(run_id, "evaluation")} >= {
        "evaluation/results.csv",
        "evaluation/evaluation.png",
        "evaluation/tables.md",
    }


def test_evaluate_command_rejects_unknown_protocol():
    from click.testing import CliRunner

    from pipeline.cli import main

    result = CliRunner().invoke(main, ["evaluate", "--protocols", "held-out,bogus"])
    assert result.exit_code == 2
    assert "choose one or more of" in result.output
