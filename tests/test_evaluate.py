"""The evaluation: protocol splits on every data set, ranking metrics, the PyOD wrappers, the
aggregation over seeds, the outputs, and the command."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation import evaluate as ev
from pipeline.evaluation import results, tables, task_scores
from pipeline.evaluation import tasks as task_lib
from scoring import metrics
from scoring.detectors import DETECTOR_NAMES, classical_detectors, make_detector
from training import data as data_lib
from training.config import TrainConfig

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits() -> data_lib.ImageData:
    return data_lib.load_digits()


@pytest.fixture(scope="module", params=["digits", "mnist5k", "mnist5k-binary"])
def dataset(request) -> data_lib.ImageData:
    """Every data set the evaluation runs by default, loaded once per module."""
    return data_lib.load(request.param)


# --- protocols -------------------------------------------------------------------------------


def _ids(part: data_lib.ImageData) -> set[str]:
    return set(part.example_ids.tolist())


def test_held_out_leaves_one_class_out_of_training(dataset):
    parts = data_lib.split(dataset, seed=0)
    tasks = task_lib.held_out_tasks(dataset, seed=0)
    assert [t.target for t in tasks] == dataset.class_names
    for c, task in enumerate(tasks):
        assert task.protocol == "held-out"
        assert c not in set(task.fit.labels.tolist()) | set(task.validation.labels.tolist())
        assert len(task.fit) == int((parts.train.labels != c).sum())
        assert not _ids(task.fit) & _ids(task.test)  # never scored on what it was fitted on
        assert not _ids(task.validation) & _ids(task.test)
        assert np.array_equal(task.test.example_ids, parts.test.example_ids)  # the same test split every time
        assert np.array_equal(task.is_anomaly, task.test.labels == c)
        assert task.counts["n_normal"] + task.counts["n_anomalous"] == len(parts.test)
    assert sum(t.counts["n_anomalous"] for t in tasks) == len(parts.test)
    assert len(parts.test) == pytest.approx(0.15 * len(dataset), abs=1)


def test_contaminated_plants_about_three_percent_of_the_first_class(dataset):
    task = task_lib.contaminated_task(dataset, seed=0)
    normals = int((dataset.labels != 0).sum())
    expected = {"digits": (1619, 50), "mnist5k": (4500, 139), "mnist5k-binary": (4500, 139)}[dataset.source]
    assert (normals, task.counts["n_anomalous"]) == expected
    assert task.counts == {"n_fit": normals + expected[1], "n_normal": normals, "n_anomalous": expected[1]}
    assert task.counts["n_anomalous"] / len(task.test) == pytest.approx(0.03, abs=0.001)
    assert task.protocol == "contaminated-clustered-3"
    assert task.unsupervised and np.array_equal(task.fit.example_ids, task.test.example_ids)
    assert np.array_equal(task.is_anomaly, task.test.labels == 0)
    again = task_lib.contaminated_task(dataset, seed=0)
    assert np.array_equal(task.test.example_ids, again.test.example_ids)
    other = task_lib.contaminated_task(dataset, seed=1)
    assert not np.array_equal(task.test.example_ids, other.test.example_ids)


def test_one_class_trains_on_one_class(dataset):
    parts = data_lib.split(dataset, seed=0)
    tasks = task_lib.one_class_tasks(dataset, seed=0)
    assert len(tasks) == len(dataset.class_names)
    for c, task in enumerate(tasks):
        assert set(task.fit.labels.tolist()) == {c} == set(task.validation.labels.tolist())
        assert len(task.fit) == int((parts.train.labels == c).sum())
        assert not _ids(task.fit) & _ids(task.test)
        assert task.counts["n_normal"] == int((parts.test.labels == c).sum())
        assert task.counts["n_anomalous"] == len(parts.test) - task.counts["n_normal"]
        assert np.array_equal(task.is_anomaly, task.test.labels != c)


def test_tasks_depend_on_the_seed_only(dataset):
    first, again, other = (task_lib.build_tasks(dataset, seed=s) for s in (0, 0, 1))
    # held-out and one-class: a task per class; clustered: 3 rates x 3 planted classes; scattered: 3; corrupted: 1
    assert len(first) == task_lib.count_tasks(dataset) == 2 * len(dataset.class_names) + 9 + 3 + 1
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.fit.example_ids, b.fit.example_ids)
        assert np.array_equal(a.test.example_ids, b.test.example_ids)
    held_out = [t for t in first if t.protocol == "held-out"]
    held_out_other = [t for t in other if t.protocol == "held-out"]
    assert not np.array_equal(held_out[0].test.example_ids, held_out_other[0].test.example_ids)
    assert not np.array_equal(held_out[0].fit.example_ids, held_out_other[0].fit.example_ids)


def test_build_tasks_in_table_order_limits_classes_and_rejects_unknown(digits):
    tasks = task_lib.build_tasks(digits, ["one-class", "contaminated-clustered-3"])
    assert [t.protocol for t in tasks] == ["contaminated-clustered-3"] * 3 + ["one-class"] * 10
    limited = task_lib.build_tasks(digits, ["corrupted", "contaminated", "held-out", "one-class"], 1, 2, 1, ["blank"])
    assert [(t.protocol, t.target) for t in limited] == [
        ("held-out", "0"),
        ("held-out", "1"),
        ("contaminated-clustered-1", "1"),  # one planted class: the seed's first (seed 1: class 1)
        ("contaminated-clustered-3", "1"),
        ("contaminated-clustered-10", "1"),
        ("contaminated-scattered-1", "mixed"),
        ("contaminated-scattered-3", "mixed"),
        ("contaminated-scattered-10", "mixed"),
        ("one-class", "0"),
        ("one-class", "1"),
        ("corrupted", "1 kinds"),
    ]
    assert task_lib.count_tasks(digits, ["contaminated", "held-out", "one-class", "corrupted"], 2, 1) == 11
    assert task_lib.count_tasks(digits, max_classes=2) == 2 + 9 + 3 + 2 + 1
    with pytest.raises(ValueError, match="unknown protocol"):
        task_lib.build_tasks(digits, ["leave-one-out"])
    unlabelled = data_lib.ImageData(digits.images[:20], None, digits.example_ids[:20], None, "x")
    with pytest.raises(data_lib.DataError, match="labelled"):
        task_lib.build_tasks(unlabelled)


def test_vae_config_for_tasks(digits):
    base = TrainConfig(epochs=6, kl_warmup=10, early_stopping=10)
    held_out = task_scores.vae_config(base, task_lib.held_out_tasks(digits)[0])
    assert (held_out.kl_warmup, held_out.early_stopping, held_out.conditional) == (2, 10, False)
    assert task_scores.vae_config(base, task_lib.contaminated_task(digits)).early_stopping == 0
    one_class = task_scores.vae_config(base, task_lib.one_class_tasks(digits)[0])
    factor = task_scores.ONE_CLASS_EPOCH_FACTOR
    assert (one_class.epochs, one_class.kl_warmup, one_class.early_stopping) == (6 * factor, 2 * factor, 10 * factor)


def test_slow_pyod_detectors_are_left_out_on_large_images_by_default(digits):
    assert ev.default_detectors(digits) == list(ev.DETECTORS)
    big = data_lib.ImageData(np.zeros((2, 28, 28, 1), np.float32), None, np.array(["a", "b"]), None, "big")
    kept = ev.default_detectors(big)
    assert not set(kept) & {"kde", "ocsvm", "pca"}
    assert {"knn", "lof", "hbos", "iforest", "ecod", "vae_anomaly_score"} <= set(kept)  # PyOD's best stay


def test_detector_names():
    assert ev.DETECTORS[0] == "vae_anomaly_score"  # the default score leads every table
    assert results.VAE_DETECTORS[:3] == ("vae_anomaly_score", "vae_neg_elbo", "vae_iwae_nll")
    assert {"vae_elbo_latent_knn", "vae_elbo_latent_knn_rarity"} <= set(results.VAE_DETECTORS)
    assert results.CLASSICAL == DETECTOR_NAMES == ("iforest", "ocsvm", "pca", "kde", "knn", "lof", "hbos", "ecod")


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


# --- the PyOD wrappers -----------------------------------------------------------------------


def test_pyod_detectors_rank_an_obvious_outlier_first(digits):
    normal = digits.subset(np.flatnonzero(digits.labels == 3))
    fit, inliers = normal.images[:120], normal.images[120:]
    outlier = np.ones((1, *digits.image_shape), np.float32)  # an all-white square
    test = np.concatenate([inliers, outlier])
    detectors = classical_detectors(seed=0)
    assert [d.name for d in detectors] == list(DETECTOR_NAMES)
    for detector in detectors:
        scores = detector.fit(fit).score(test)  # semi-supervised: PyOD's decision_function
        assert scores.shape == (len(test),)
        assert np.all(np.isfinite(scores)), detector.name
        assert scores[-1] > scores[:-1].max(), detector.name
        own = detector.fit_score(test)  # unsupervised: PyOD's decision_scores_ of the fit images
        assert np.array_equal(own, detector.model.decision_scores_)
        assert own[-1] > own[:-1].max(), detector.name


def test_constant_pixels_are_dropped_so_pca_scores_digits(digits):
    x = digits.images
    pca = make_detector("pca", seed=0).fit(x)
    flat = x.reshape(len(x), -1)
    constant = flat.max(axis=0) == flat.min(axis=0)
    assert constant.sum() >= 3  # the always-blank border pixels of the 8x8 digits
    assert np.array_equal(pca.columns, ~constant)
    assert pca.model.detector_.n_features_in_ == 64 - constant.sum()  # the sklearn PCA inside PyOD's
    assert np.all(np.isfinite(pca.model.decision_scores_))
    inked = x[:10].copy().reshape(10, -1)
    inked[:, constant] = 1.0  # ink where no fit image has any: those pixels are not seen
    assert np.array_equal(pca.score(inked.reshape(x[:10].shape)), pca.score(x[:10]))
    with pytest.raises(ValueError, match="constant"):
        make_detector("knn").fit(np.zeros((5, 8, 8, 1)))


def test_pyod_wrappers_are_seeded_and_need_fit(digits):
    x = digits.images[:200]
    for name in ("iforest", "pca"):
        a = make_detector(name, seed=3).fit(x).score(x[:20])
        b = make_detector(name, seed=3).fit(x).score(x[:20])
        np.testing.assert_array_equal(a, b)
    assert make_detector("iforest", seed=3).factory().random_state == 3
    with pytest.raises(RuntimeError, match="fit"):
        make_detector("ecod").score(x)
    with pytest.raises(ValueError, match="unknown detector"):
        classical_detectors(names=["iforest", "autoencoder"])


@pytest.mark.filterwarnings("ignore:n_neighbors .* is greater than")
def test_a_failing_detector_gets_nan_and_a_warning(digits, caplog):
    tiny = task_lib.Task(
        protocol="held-out",
        target="0",
        fit=digits.subset(np.arange(3)),  # KNN needs more than its 5 neighbours: it raises
        validation=digits.subset(np.arange(3)),
        test=digits.subset(np.arange(3, 60)),
        is_anomaly=digits.labels[3:60] == 0,
    )
    with caplog.at_level(logging.WARNING, logger="pipeline.evaluation.task_scores"):
        rows, fit = task_scores.evaluate_task(tiny, TrainConfig(seed=0), detectors=["knn", "iforest"])
    assert fit is None  # no VAE detector asked for: no VAE fit
    by_name = {r["detector"]: r for r in rows}
    assert list(by_name) == ["iforest", "knn"]  # table order
    assert math.isnan(by_name["knn"]["auroc"]) and math.isnan(by_name["knn"]["average_precision"])
    assert 0.0 <= by_name["iforest"]["auroc"] <= 1.0
    assert any("knn" in r.getMessage() and "NaN" in r.getMessage() for r in caplog.records)
    assert task_scores.classical_scores(make_detector("lof"), tiny) is not None  # LOF shrinks its neighbourhood


# --- aggregation -----------------------------------------------------------------------------


def _hand_made() -> pd.DataFrame:
    """Two seeds, two tasks, two detectors, one data set and protocol; one failed cell on 'b'."""
    auroc = {  # (seed, task, detector)
        (0, "0", "a"): 0.8,
        (0, "1", "a"): 0.6,  # seed 0 mean 0.7
        (1, "0", "a"): 1.0,
        (1, "1", "a"): 0.8,  # seed 1 mean 0.9
        (0, "0", "b"): 0.5,
        (0, "1", "b"): 0.7,
        (1, "0", "b"): math.nan,
        (1, "1", "b"): 0.9,
    }
    return pd.DataFrame(
        [
            {
                "data": "d",
                "seed": s,
                "protocol": "held-out",
                "task": t,
                "detector": det,
                "auroc": v,
                "average_precision": v / 2,
            }
            for (s, t, det), v in auroc.items()
        ]
    )


def test_summary_is_mean_std_and_worst_over_seeds_of_the_task_means():
    results = _hand_made()
    seeds = tables.per_seed(results)
    assert seeds.loc[seeds["detector"] == "a", "auroc"].tolist() == pytest.approx([0.7, 0.9])
    summary = tables.summarise(results, detectors=["a", "b"])
    a = summary.set_index("detector").loc["a"]
    assert (a["n_seeds"], a["n_tasks"]) == (2, 2)
    assert a["auroc_mean"] == pytest.approx(0.8)
    assert a["auroc_std"] == pytest.approx(np.std([0.7, 0.9], ddof=1))
    assert (a["auroc_worst"], a["auroc_worst_seed"]) == (pytest.approx(0.7), 0)
    assert a["average_precision_mean"] == pytest.approx(0.4)
    assert a["average_precision_worst"] == pytest.approx(0.35)
    b = summary.set_index("detector").loc["b"]
    assert math.isnan(b["auroc_mean"]) and math.isnan(b["auroc_worst"])  # a failure is never averaged away
    one_seed = tables.summarise(results[results["seed"] == 0])
    assert math.isnan(one_seed["auroc_std"].iloc[0])  # no spread from a single seed
    assert list(tables.summarise(results, detectors=["b", "a"])["detector"]) == ["b", "a"]


def test_markdown_tables_bold_the_best_mean():
    results = _hand_made()
    results.loc[results["auroc"].isna(), ["auroc", "average_precision"]] = (0.7, 0.35)
    summary = tables.summarise(results)
    table = tables.summary_table(summary, "d", "held-out")
    lines = table.splitlines()
    assert lines[0] == "| detector | AUROC mean ± std | worst seed | AP mean ± std |"
    assert lines[2] == "| a | **0.800 ± 0.141** | 0.700 (seed 0) | **0.400 ± 0.071** |"
    assert lines[3] == "| b | 0.700 ± 0.141 | 0.600 (seed 0) | 0.350 ± 0.071 |"
    per_task = tables.per_task_table(results, "d", "held-out", "auroc")
    assert "| **mean** | **0.800** | 0.700 |" in per_task
    assert tables.summary_table(summary, "d", "one-class") == ""


def test_headline_sets_the_default_vae_score_against_the_best_pyod_detector():
    values = {0: (0.90, 0.70, 0.95, 0.80), 1: (0.94, 0.72, 0.93, 0.82)}  # per seed: the mean of two tasks
    results = pd.DataFrame(
        [
            {
                "data": "d",
                "seed": seed,
                "protocol": "held-out",
                "task": task,
                "detector": det,
                "auroc": v + shift,
                "average_precision": 0.5,
            }
            for seed, row in values.items()
            for task, shift in (("0", 0.05), ("1", -0.05))
            for det, v in zip(("vae_anomaly_score", "vae_neg_elbo", "knn", "iforest"), row, strict=True)
        ]
    )
    summary = tables.summarise(results)
    lines = tables.headline_table(summary, results).splitlines()
    assert len(lines) == 3
    assert lines[2] == (
        "| d | held-out | 0.920 ± 0.028 (0.900) | 0.710 ± 0.014 | knn 0.940 ± 0.014 | -0.020 | 1 0.870 |  |"
    )
    assert tables.headline_table(summary).splitlines()[2].endswith("| -0.020 |  |  |")  # no results: no worst task


# --- the evaluation, without the VAE ----------------------------------------------------------


@pytest.fixture(scope="module")
def classical_result(digits, tmp_path_factory):
    """Every PyOD detector over two seeds on a third of the digits, the first two classes."""
    folder = tmp_path_factory.mktemp("evaluation")
    steps: list = []
    every_third = digits.subset(np.arange(0, len(digits), 3))
    result = ev.evaluate(
        every_third,
        ["held-out", "contaminated-clustered-3", "one-class", "corrupted"],
        seeds=(0, 1),
        detectors=results.CLASSICAL,
        max_classes=2,
        planted=1,
        kinds=["rotated", "blank"],
        output_dir=folder,
        progress=steps.append,
    )
    return result, folder, steps


def test_classical_evaluation_writes_results_summary_tables_and_plot(classical_result):
    result, folder, steps = classical_result
    lines = [step.line() for step in steps if step.finished]
    assert {p.name for p in folder.iterdir()} == {"results.csv", "summary.csv", "tables.md", "evaluation.png"}
    frame = pd.read_csv(folder / "results.csv", dtype={"task": str})
    assert list(frame.columns) == list(results.RESULT_COLUMNS)
    assert len(frame) == 2 * 7 * len(results.CLASSICAL)  # seeds x tasks (two of them corruption kinds) x detectors
    assert frame["auroc"].between(0, 1).all()
    assert frame["average_precision"].between(0, 1 + 1e-12).all()  # scikit-learn's AP may be 1 + 2e-16
    assert frame["flagged_rate"].isna().all()  # PyOD's detectors have no threshold here
    corrupted = frame[frame["protocol"] == "corrupted"]
    assert list(corrupted["task"].unique()) == ["blank", "rotated"]  # KINDS order
    blank = corrupted[corrupted["task"] == "blank"].set_index(["seed", "detector"])
    assert (blank["n_anomalous"] / (blank["n_anomalous"] + blank["n_normal"])).round(2).eq(0.1).all()
    assert set(frame["data"]) == {"digits"} and set(frame["seed"]) == {0, 1}
    summary = pd.read_csv(folder / "summary.csv")
    assert len(summary) == 4 * len(results.CLASSICAL)
    assert list(summary["detector"][: len(results.CLASSICAL)]) == list(results.CLASSICAL)
    assert (summary["n_seeds"] == 2).all() and summary["auroc_std"].notna().all()
    held_out = summary[summary["protocol"] == "held-out"].set_index("detector")
    assert (held_out["auroc_mean"] > 0.5).all()  # every baseline beats chance on held-out digits
    assert (held_out["auroc_worst"] <= held_out["auroc_mean"]).all()
    text = (folder / "tables.md").read_text()
    assert text.count("| detector | AUROC mean ± std | worst seed | AP mean ± std |") == 4
    assert "## digits: held-out" in text and "## digits: one-class" in text
    assert (folder / "evaluation.png").read_bytes()[:8] == PNG
    assert len(lines) == 12 and lines[0].startswith("[1/12] digits seed 0 held-out 0:")
    assert "[6/12] digits seed 0 corrupted 2 kinds: best " in lines[5]
    started = [step for step in steps if not step.finished]  # each task also says when it starts
    assert [step.done for step in started] == list(range(12)) and started[0].note.startswith("digits seed 0 held-out")
    assert results.summary_metrics(result.summary)["eval.digits.held-out.knn.auroc_mean"] == pytest.approx(
        held_out.loc["knn", "auroc_mean"]
    )


def test_write_outputs_replaces_each_file_whole_and_a_failed_write_keeps_the_old_one(tmp_path, monkeypatch):
    import contextlib
    from dataclasses import replace

    from matplotlib.figure import Figure

    class Broken(Figure):
        def savefig(self, fname, *args, **kwargs):
            with open(fname, "wb") as file:
                file.write(b"\x89PNG half")
            raise OSError("disk full")

    names = ["evaluation.png", "results.csv", "summary.csv", "tables.md"]
    first = results.EvaluationResult(
        results=pd.DataFrame(columns=list(results.RESULT_COLUMNS)),
        summary=pd.DataFrame({"detector": ["knn"], "auroc_mean": [0.9]}),
        fits=pd.DataFrame(),
        markdown="# first\n",
    )
    monkeypatch.setattr(tables, "plot_summary", lambda summary: Figure(figsize=(1, 1)))
    results.write_outputs(first, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    before = {name: (tmp_path / name).read_bytes() for name in names}
    with contextlib.ExitStack() as stack:
        readers = {name: stack.enter_context(open(tmp_path / name, "rb")) for name in names}  # of the first files
        second = replace(first, summary=pd.DataFrame({"detector": ["knn"], "auroc_mean": [0.5]}), markdown="# 2\n")
        monkeypatch.setattr(tables, "plot_summary", lambda summary: Broken(figsize=(1, 1)))
        with pytest.raises(OSError, match="disk full"):
            results.write_outputs(second, tmp_path)
        for name, reader in readers.items():
            assert reader.read() == before[name], name  # each file was replaced, none rewritten in place
    assert (tmp_path / "evaluation.png").read_bytes() == before["evaluation.png"]  # the failed one: the old file
    assert (tmp_path / "tables.md").read_text() == "# 2\n" and "0.5" in (tmp_path / "summary.csv").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no temporary file left behind


def test_evaluation_logs_summary_metrics_and_files_to_mlflow(classical_result, mlflow_store):
    from mlflow import MlflowClient

    result, _, _ = classical_result
    run_id = results.log_results(result, TrainConfig(), {"eval_seeds": "0,1"})
    run = MlflowClient().get_run(run_id)
    assert run.data.params["eval_seeds"] == "0,1"
    assert run.data.metrics["eval.digits.one-class.iforest.auroc_mean"] == pytest.approx(
        result.summary.set_index(["protocol", "detector"]).loc[("one-class", "iforest"), "auroc_mean"]
    )
    assert "eval.digits.contaminated-clustered-3.ecod.average_precision_worst" in run.data.metrics
    assert {a.path for a in MlflowClient().list_artifacts(run_id, "evaluation")} >= {
        "evaluation/results.csv",
        "evaluation/summary.csv",
        "evaluation/tables.md",
        "evaluation/evaluation.png",
    }


# --- the command -----------------------------------------------------------------------------


@pytest.mark.slow
def test_quick_evaluation_runs_end_to_end(tmp_path):
    import shutil
    from pathlib import Path

    from click.testing import CliRunner

    from pipeline.cli.main import main

    out = tmp_path / "evaluation"
    out.mkdir()
    previous = Path(__file__).parents[1] / "docs" / "evaluation" / "summary.csv"
    shutil.copy(previous, out / "summary.csv")  # the last scorecard: the quick run compares with it
    args = ["--work-dir", str(tmp_path / "work"), "evaluate", "--quick", "--no-mlflow", "--output", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {
        "results.csv",
        "summary.csv",
        "summary.previous.csv",
        "vae_fits.csv",
        "tables.md",
        "comparison.md",
        "evaluation.png",
    }
    assert "[7/7] digits seed 0 corrupted 4 kinds: vae_anomaly_score AUROC" in result.output  # a line per task
    assert "digits: held-out (2 task(s), 1 seed(s))" in result.output
    assert "Pareto rule:" in result.output
    assert "Against vae_elbo_latent_knn_rarity, from the same fits:" in result.output
    assert "## The default against `vae_elbo_latent_knn_rarity`, from the same fits" in (out / "tables.md").read_text()
    frame = pd.read_csv(out / "results.csv", dtype={"task": str})
    vae = frame[frame["detector"] == "vae_anomaly_score"]
    assert list(zip(vae["protocol"], vae["task"], strict=True)) == [
        ("held-out", "0"),
        ("held-out", "1"),
        ("contaminated-clustered-3", "0"),
        ("contaminated-scattered-3", "mixed"),
        ("one-class", "0"),
        ("one-class", "1"),
        ("corrupted", "blank"),
        ("corrupted", "saturated"),
        ("corrupted", "wrong-scale"),
        ("corrupted", "rotated"),
    ]
    assert vae["auroc"].between(0, 1).all()
    flagged = vae.set_index("protocol")["flagged_rate"]
    assert flagged[["held-out", "one-class", "corrupted"]].between(0, 1).all()  # the VAE's threshold
    assert flagged[["contaminated-clustered-3", "contaminated-scattered-3"]].isna().all()  # none: unsupervised
    assert frame.loc[frame["detector"] != "vae_anomaly_score", "flagged_rate"].isna().all()
    assert "vae_iwae_nll" not in set(frame["detector"])  # no IWAE in --quick
    # every method, from the same fit
    vae_methods = {"vae_elbo_latent_knn", "vae_elbo_latent_knn_rarity", "vae_elbo_latent_knn_rarity_rate"}
    assert set(frame["detector"]) == {"vae_anomaly_score", "vae_neg_elbo", *vae_methods, *results.CLASSICAL}
    summary = pd.read_csv(out / "summary.csv")
    assert summary["detector"].iloc[0] == "vae_anomaly_score" and len(summary) == 5 * len(set(frame["detector"]))
    fits = pd.read_csv(out / "vae_fits.csv")
    assert len(fits) == 7 and (fits["epochs_run"] > 0).all()
    assert (
        fits.set_index("protocol")["threshold"].notna().to_dict()
        == {
            "held-out": True,
            "contaminated-clustered-3": False,
            "contaminated-scattered-3": False,
            "one-class": True,
            "corrupted": True,
        }
        or fits["threshold"].notna().sum() == 5
    )
    text = (out / "tables.md").read_text()
    assert "| vae_anomaly_score |" in text and "## Against the previous scorecard" in text
    last = (
        pd.read_csv(previous)
        .set_index(["data", "protocol", "detector"])
        .loc[("digits", "held-out", "vae_anomaly_score")]
    )
    cell = f"| digits | held-out | vae_anomaly_score | {last['auroc_mean']:.3f} ± {last['auroc_std']:.3f} |"
    assert cell in text  # the previous scorecard's cell
    assert "| digits | corrupted |" in text and "flagged at the default threshold" in text
    unrun = (
        pd.read_csv(previous)
        .set_index(["data", "protocol", "detector"])
        .loc[("digits", "contaminated-clustered-10", "vae_anomaly_score")]
    )  # a cell of the last scorecard that --quick does not run
    mean_std = f"{unrun['auroc_mean']:.3f} ± {unrun['auroc_std']:.3f}"
    row = f"| digits | contaminated-clustered-10 | vae_anomaly_score | {mean_std} |"
    assert f"{row} n/a | n/a | n/a | not run |" in text
    assert (out / "evaluation.png").read_bytes()[:8] == PNG


def test_evaluate_command_rejects_bad_options():
    from click.testing import CliRunner

    from pipeline.cli.main import main

    result = CliRunner().invoke(main, ["evaluate", "--protocols", "held-out,bogus"])
    assert result.exit_code == 2
    assert "choose one or more of" in result.output and "contaminated-scattered" in result.output
    result = CliRunner().invoke(main, ["evaluate", "--corruptions", "blank,jpeg"])
    assert result.exit_code == 2 and "half-occluded" in result.output
    result = CliRunner().invoke(main, ["evaluate", "--seeds", "0,one"])
    assert result.exit_code == 2
    assert "comma-separated integers" in result.output
    result = CliRunner().invoke(main, ["evaluate", "--detectors", "kde,vae_elbo"])
    assert result.exit_code == 2
    assert "vae_anomaly_score" in result.output
