"""The scorecard's protocols that users meet: the corruptions, the contaminated cells (clustered
and scattered), the corrupted protocol, the flagged share, and the comparison with the previous
scorecard (the Pareto rule)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation import comparison, corruptions, results, task_scores
from pipeline.evaluation import evaluate as ev
from pipeline.evaluation import tasks as task_lib
from training import data as data_lib
from training.config import TrainConfig

RANDOM_KINDS = ("impulse-noise", "gaussian-noise", "shifted", "stripe", "half-occluded")


@pytest.fixture(scope="module")
def digits() -> data_lib.ImageData:
    return data_lib.load_digits()


@pytest.fixture(scope="module")
def binary_digits(digits) -> data_lib.ImageData:
    return data_lib.ImageData(
        (digits.images >= 0.5).astype(np.float32), digits.labels, digits.example_ids, digits.class_names, "bin"
    )


# --- corruptions -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", corruptions.KINDS)
def test_corruptions_keep_shape_range_and_binariness_and_follow_the_seed(kind, digits, binary_digits):
    for data in (digits, binary_digits):
        x = digits.images[:40] if data is digits else binary_digits.images[:40]
        out = corruptions.corrupt(x, kind, seed=3)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert not np.array_equal(out, x)  # it broke something
        np.testing.assert_array_equal(out, corruptions.corrupt(x, kind, seed=3))
        if kind in RANDOM_KINDS:
            assert not np.array_equal(out, corruptions.corrupt(x, kind, seed=4))
    binary = corruptions.corrupt(binary_digits.images[:40], kind, seed=3)
    assert corruptions.is_binary(binary) == (kind != "wrong-scale")  # wrong-scale stays x / 255: the point
    grey = corruptions.corrupt(digits.images[:40], kind, seed=3, levels=17)  # the digits' 0-16 levels
    assert np.allclose(grey * 16, np.round(grey * 16), atol=1e-4) == (kind != "wrong-scale")


def test_what_each_corruption_does(digits):
    x = digits.images[:50]
    assert (corruptions.corrupt(x, "blank") == 0).all() and (corruptions.corrupt(x, "saturated") == 1).all()
    np.testing.assert_allclose(corruptions.corrupt(x, "inverted"), 1 - x)
    np.testing.assert_allclose(corruptions.corrupt(x, "wrong-scale"), x / 255)
    changed = (corruptions.corrupt(x, "impulse-noise", 1) != x).mean()
    assert 0.1 < changed <= 0.2  # 20% of the pixels set to 0 or 1, some of which already were
    noise = corruptions.corrupt(np.full((200, 8, 8, 1), 0.5, np.float32), "gaussian-noise", 1) - 0.5
    assert np.median(np.abs(noise)) == pytest.approx(0.6745 * 0.3, abs=0.01)  # sigma 0.3; clipping spares the median
    shifted = corruptions.corrupt(x, "shifted", 2)
    for image, out in zip(x, shifted, strict=True):  # 2 pixels (a quarter of 8) one way, zero fill
        candidates = [
            np.pad(image, ((0, 0), (2, 0), (0, 0)))[:, :8],
            np.pad(image, ((0, 0), (0, 2), (0, 0)))[:, 2:],
            np.pad(image, ((2, 0), (0, 0), (0, 0)))[:8],
            np.pad(image, ((0, 2), (0, 0), (0, 0)))[2:],
        ]
        assert any(np.array_equal(out, c) for c in candidates)
    stripe = corruptions.corrupt(x, "stripe", 5)
    assert all((s[:, 3] == 1).all() or (s[3, :] == 1).all() for s in stripe)  # 1 pixel wide on 8x8, in the middle
    wide = corruptions.corrupt(np.zeros((4, 28, 28, 1), np.float32), "stripe", 5)
    assert set(np.unique(wide.sum(axis=(1, 2, 3)))) == {3 * 28}  # 3 pixels wide on 28x28
    halves = corruptions.corrupt(np.ones((20, 8, 8, 1), np.float32), "half-occluded", 5)
    assert (halves.sum(axis=(1, 2, 3)) == 32).all()
    dot = np.zeros((1, 21, 21, 1), np.float32)
    dot[0, 10, 20] = 1.0  # a dot right of the centre goes 60 degrees round, counter-clockwise
    turned = corruptions.corrupt(dot, "rotated", levels=0)
    row, col = np.unravel_index(np.argmax(turned[0, ..., 0]), (21, 21))
    assert abs(row - (10 - 10 * math.sin(math.radians(60)))) <= 1 and col == 10 + 10 * math.cos(math.radians(60))
    blurred = corruptions.corrupt(x, "blurred")
    assert blurred.max(axis=(1, 2, 3)).mean() < x.max(axis=(1, 2, 3)).mean()
    with pytest.raises(ValueError, match="unknown corruption"):
        corruptions.corrupt(x, "jpeg")
    with pytest.raises(ValueError, match="batch"):
        corruptions.corrupt(x[0], "blank")


def test_mixed_corruptions_give_every_kind_its_share(digits):
    x = digits.images[:110]
    out, kinds = corruptions.corrupt_mixed(x, list(corruptions.KINDS), seed=0)
    assert sorted(pd.Series(kinds).value_counts().tolist()) == [10] * 11
    blank = kinds == "blank"
    assert (out[blank] == 0).all() and np.allclose(out[kinds == "inverted"], 1 - x[kinds == "inverted"])
    again, same = corruptions.corrupt_mixed(x, list(corruptions.KINDS), seed=0)
    np.testing.assert_array_equal(out, again)
    assert list(kinds) == list(same)


# --- the contaminated cells ------------------------------------------------------------------


def test_planted_classes_rotate_with_the_seed():
    assert [task_lib.planted_classes(10, 3, s) for s in (0, 1, 2)] == [[0, 3, 7], [1, 4, 8], [2, 5, 9]]
    assert task_lib.planted_classes(10, 1, 4) == [4]
    assert task_lib.planted_classes(2, 3, 0) == [0, 1]  # never more than there are


def test_check_protocols_expands_the_shorthands():
    assert task_lib.check_protocols(["contaminated"]) == [*task_lib.CLUSTERED, *task_lib.SCATTERED]
    assert task_lib.check_protocols(["corrupted", "contaminated-scattered"]) == [*task_lib.SCATTERED, "corrupted"]
    assert task_lib.CLUSTERED == ("contaminated-clustered-1", "contaminated-clustered-3", "contaminated-clustered-10")
    with pytest.raises(ValueError, match="unknown protocol"):
        task_lib.check_protocols(["contaminated-5"])


def test_clustered_cells_plant_the_rate_of_each_planted_class(digits):
    built = task_lib.build_tasks(digits, list(task_lib.CLUSTERED), seed=1)
    assert [(t.protocol, t.target) for t in built] == [(p, c) for p in task_lib.CLUSTERED for c in ("1", "4", "8")]
    planted = {}
    for task in built:
        c = int(task.target)
        rate = task_lib.contamination_of(task.protocol)
        normals = int((digits.labels != c).sum())
        expected = min(int((digits.labels == c).sum()), round(rate * normals / (1 - rate)))
        assert task.counts == {"n_fit": normals + expected, "n_normal": normals, "n_anomalous": expected}
        assert set(task.test.labels[task.is_anomaly].tolist()) == {c}
        assert np.array_equal(task.is_anomaly, task.test.labels == c)
        assert task.unsupervised and task.fit is task.test
        assert len(task.validation) == 256  # only logged (no early stopping): a sample, not every image again
        assert set(task.validation.example_ids) <= set(task.fit.example_ids)
        planted[(task.protocol, c)] = set(task.test.example_ids[task.is_anomaly].tolist())
    for c in (1, 4, 8):  # nested: the 1% of a class is among its 3%, which is among its 10%
        assert (
            planted[(task_lib.CLUSTERED[0], c)]
            <= planted[(task_lib.CLUSTERED[1], c)]
            <= planted[(task_lib.CLUSTERED[2], c)]
        )
    assert len(planted[(task_lib.CLUSTERED[0], 4)]) == round(0.01 * 1616 / 0.99)  # 16 of the 181 fours


def test_scattered_cells_replace_the_rate_of_all_images_with_broken_ones(digits, binary_digits):
    for protocol in task_lib.SCATTERED:
        rate = task_lib.contamination_of(protocol)
        task = task_lib.scattered_task(digits, seed=0, contamination=rate)
        assert task.protocol == protocol and task.unsupervised
        n = len(digits)
        assert task.counts == {"n_fit": n, "n_normal": n - round(rate * n), "n_anomalous": round(rate * n)}
        np.testing.assert_array_equal(task.test.example_ids, digits.example_ids)
        np.testing.assert_array_equal(task.test.images[~task.is_anomaly], digits.images[~task.is_anomaly])
        broken = task.test.images[task.is_anomaly]
        assert (broken != digits.images[task.is_anomaly]).any(axis=(1, 2, 3)).all()  # every planted one is broken
    assert len(set(task.test.labels[task.is_anomaly].tolist())) == 10  # from every class, not one cluster
    blank = task_lib.scattered_task(digits, seed=0, contamination=0.1, kinds=["blank"])
    assert (blank.test.images[blank.is_anomaly] == 0).all()
    assert np.array_equal(blank.is_anomaly, task.is_anomaly)  # the same images for any kinds
    assert not np.array_equal(task_lib.scattered_task(digits, seed=1, contamination=0.1).is_anomaly, task.is_anomaly)
    small = task_lib.scattered_task(digits, seed=0, contamination=0.03)
    assert set(np.flatnonzero(small.is_anomaly)) <= set(np.flatnonzero(task.is_anomaly))  # nested over rates
    binary = task_lib.scattered_task(binary_digits, seed=0, contamination=0.1)
    grey = np.isin(binary.test.images, (0.0, 1.0), invert=True).any(axis=(1, 2, 3))
    assert grey.sum() in (16, 17)  # only the wrong-scale share (180 / 11 kinds) is not binary


# --- the corrupted protocol ------------------------------------------------------------------


def test_corrupted_task_scores_the_test_split_with_a_tenth_replaced_per_kind(digits):
    kinds = ["blank", "inverted", "blurred"]
    task = task_lib.corrupted_task(digits, seed=0, kinds=kinds)
    parts = data_lib.split(digits, seed=0)
    n = len(parts.test)
    assert (task.protocol, task.target) == ("corrupted", "3 kinds")
    np.testing.assert_array_equal(task.fit.example_ids, parts.train.example_ids)  # fitted on clean images
    assert len(task.test) == n + 3 * round(0.1 * n) and [name for name, _ in task.parts] == kinds
    replaced = None
    for kind, rows in task.parts:
        assert len(rows) == n  # the test split, a tenth of it replaced
        counts = task.part_counts(rows)
        assert counts["n_anomalous"] == round(0.1 * n) and counts["n_normal"] == n - round(0.1 * n)
        normal, broken = rows[~task.is_anomaly[rows]], rows[task.is_anomaly[rows]]
        ids = [i.split("#")[0] for i in task.test.example_ids[broken]]
        assert all(i.endswith(f"#{kind}") for i in task.test.example_ids[broken])
        assert not set(ids) & set(task.test.example_ids[normal])  # replaced, not added
        assert set(ids) | set(task.test.example_ids[normal]) == set(parts.test.example_ids)
        replaced = replaced or ids
        assert ids == replaced  # the same images broken for every kind
        if kind == "inverted":
            by_id = dict(zip(parts.test.example_ids, parts.test.images, strict=True))
            np.testing.assert_allclose(task.test.images[broken], 1 - np.stack([by_id[i] for i in ids]))
    assert (task.test.images[task.parts[0][1][task.is_anomaly[task.parts[0][1]]]] == 0).all()
    other = task_lib.corrupted_task(digits, seed=1, kinds=kinds)
    assert not np.array_equal(other.test.example_ids, task.test.example_ids)


def test_corrupted_rows_per_kind_with_pyod(digits):
    task = task_lib.corrupted_task(digits, seed=0, kinds=["blank", "saturated", "shifted"])
    rows, fit = task_scores.evaluate_task(task, TrainConfig(seed=0), detectors=["knn", "ecod"])
    assert fit is None
    assert [(r["task"], r["detector"]) for r in rows] == [
        (k, d) for k in ("blank", "saturated", "shifted") for d in ("knn", "ecod")
    ]
    by = {(r["task"], r["detector"]): r for r in rows}
    assert by[("saturated", "knn")]["auroc"] == 1.0  # an all-white square is far from every digit
    assert all(math.isnan(r["flagged_rate"]) for r in rows)  # PyOD's detectors: no threshold here
    assert {r["n_anomalous"] for r in rows} == {round(0.1 * len(data_lib.split(digits, 0).test))}


def test_flagged_rate():
    y = np.array([False, False, True, True, True, True])
    scores = np.array([0.0, 5.0, 1.0, 2.0, 3.0, 9.0])
    assert task_scores.flagged_rate(y, scores, 2.0) == 0.5  # strictly above, as the product flags
    assert math.isnan(task_scores.flagged_rate(y, scores, None)) and math.isnan(task_scores.flagged_rate(y, None, 1.0))
    assert math.isnan(task_scores.flagged_rate(np.zeros(6, bool), scores, 1.0))


# --- the comparison and the Pareto rule ------------------------------------------------------


def _summary(cells: dict[tuple[str, str], tuple[float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"data": "d", "protocol": p, "detector": det, "auroc_mean": m, "auroc_std": s}
            for (p, det), (m, s) in cells.items()
        ]
    )


VAE = "vae_anomaly_score"
PREVIOUS = _summary(
    {
        ("held-out", VAE): (0.90, 0.01),
        ("corrupted", VAE): (0.80, 0.05),
        ("one-class", VAE): (0.90, 0.01),
        ("contaminated-clustered-3", VAE): (0.70, 0.02),
        ("contaminated", VAE): (0.60, 0.09),  # a cell the new scorecard does not have
        ("single-seed", VAE): (0.85, math.nan),
        ("held-out", "knn"): (0.90, 0.01),
    }
)
NEW = _summary(
    {
        ("held-out", VAE): (0.88, 0.005),  # -0.02, spread 0.01: worse
        ("corrupted", VAE): (0.77, 0.02),  # -0.03, spread 0.05: within
        ("one-class", VAE): (0.95, 0.01),  # better
        ("contaminated-clustered-3", VAE): (math.nan, math.nan),  # failed now: worse
        ("contaminated-scattered-3", VAE): (0.10, 0.01),  # new: never a violation
        ("single-seed", VAE): (0.849, math.nan),  # no spread known: any drop counts
        ("held-out", "knn"): (0.50, 0.01),  # worse, but not the default detector
    }
)


def test_pareto_rule_on_a_toy_scorecard():
    violations = comparison.pareto_violations(PREVIOUS, NEW)
    assert list(violations["protocol"]) == ["held-out", "contaminated-clustered-3", "single-seed"]
    assert violations["change"].iloc[0] == pytest.approx(-0.02)
    assert comparison.pareto_violations(PREVIOUS, PREVIOUS).empty  # nothing changed
    assert comparison.pareto_violations(PREVIOUS, NEW, detector="knn")["protocol"].tolist() == ["held-out"]
    better = NEW.assign(auroc_mean=NEW["auroc_mean"] + 0.2)
    assert comparison.pareto_violations(PREVIOUS, better.fillna({"auroc_mean": 0.9})).empty


def _same_fit_results(rows: list[tuple[str, int, str, float]]) -> pd.DataFrame:
    """``results.csv`` rows, two tasks per (protocol, seed, detector) with the same AUROC."""
    fields = ("protocol", "seed", "detector", "auroc")
    return pd.DataFrame([{"data": "d", "task": t, **dict(zip(fields, r, strict=True))} for r in rows for t in (0, 1)])


def test_the_default_against_the_method_it_replaced_from_the_same_fits():
    old = "vae_elbo_latent_knn_rarity"
    results = _same_fit_results(
        [
            ("held-out", 0, VAE, 0.90), ("held-out", 0, old, 0.80),  # better by 0.10 each seed, spread 0.05
            ("held-out", 1, VAE, 0.80), ("held-out", 1, old, 0.70),
            ("corrupted", 0, VAE, 0.90), ("corrupted", 0, old, 0.91),  # -0.01: within a 0.07 spread
            ("corrupted", 1, VAE, 0.80), ("corrupted", 1, old, 0.81),
            ("one-class", 0, VAE, 0.90), ("one-class", 0, old, 0.95),  # -0.05 and -0.03, spread 0.014
            ("one-class", 1, VAE, 0.90), ("one-class", 1, old, 0.93),
            ("one-class", 1, "knn", 0.99),  # other detectors are ignored
            ("single", 0, VAE, math.nan), ("single", 0, old, 0.90),  # the default failed: worse
        ]
    )  # fmt: skip
    one_task_failed = results.index[(results["protocol"] == "held-out") & (results["seed"] == 0)][0]
    results.loc[one_task_failed, "auroc"] = math.nan  # a strict mean: that seed, and the cell, fail
    table = comparison.paired(results, old).set_index("protocol")
    assert math.isnan(table.loc["held-out", "default_mean"]) and table.loc["held-out", "verdict"] == "worse"
    assert table.loc["corrupted", "verdict"] == "within spread"
    assert table.loc["one-class", "change"] == pytest.approx(-0.04)
    assert table.loc["one-class", "worst_seed_change"] == pytest.approx(-0.05)
    assert table.loc["one-class", "verdict"] == "worse"
    assert table.loc["single", "verdict"] == "worse" and math.isnan(table.loc["single", "default_mean"])
    section = comparison.paired_markdown(comparison.paired(results, old))
    assert "3 cell(s) of `vae_anomaly_score` are worse than `vae_elbo_latent_knn_rarity`" in section
    assert comparison.paired(results, "vae_no_such_method").empty and comparison.paired_markdown(pd.DataFrame()) == ""


def test_comparison_lists_every_cell_with_its_verdict():
    table = comparison.compare(PREVIOUS, NEW)
    verdicts = dict(zip(zip(table["protocol"], table["detector"], strict=True), table["verdict"], strict=True))
    assert verdicts == {
        ("held-out", VAE): "worse",
        ("corrupted", VAE): "within spread",
        ("one-class", VAE): "better",
        ("contaminated-clustered-3", VAE): "worse",
        ("contaminated-scattered-3", VAE): "new cell",
        ("single-seed", VAE): "worse",
        ("held-out", "knn"): "worse",
        ("contaminated", VAE): "not run",
    }
    row = table.set_index(["protocol", "detector"]).loc[("corrupted", VAE)]
    assert (row["change"], row["spread"]) == (pytest.approx(-0.03), 0.05)
    whole, section = comparison.comparison_markdown(PREVIOUS, NEW, "`old.csv`")
    within = "| d | corrupted | vae_anomaly_score | 0.800 ± 0.050 | 0.770 ± 0.020 | -0.030 | 0.050 | within spread |"
    assert within in whole
    assert "| d | held-out | knn | 0.900 ± 0.010 | 0.500 ± 0.010 | -0.400 | 0.010 | **worse** |" in whole
    assert "knn" not in section  # tables.md: the default detector only
    assert "3 cell(s) of `vae_anomaly_score` got worse beyond their seed spread" in section
    assert "against `old.csv`" in section


def test_evaluate_compares_with_the_summary_already_in_the_folder(digits, tmp_path):
    small = digits.subset(np.arange(0, len(digits), 3))
    run = {"protocols": ["held-out"], "seeds": (0, 1), "detectors": ["knn", "hbos"], "max_classes": 1}
    first = ev.evaluate(small, **run, output_dir=tmp_path)
    assert first.comparison is None and not (tmp_path / "comparison.md").exists()
    second = ev.evaluate(small, **run, output_dir=tmp_path)
    assert set(second.comparison["verdict"]) == {"within spread"}  # the same seeds: the same numbers
    assert (tmp_path / "comparison.md").read_text().startswith("# Against the previous scorecard")
    assert "## Against the previous scorecard" in (tmp_path / "tables.md").read_text()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "summary.previous.csv"), pd.read_csv(tmp_path / "summary.csv"))
    doctored = first.summary.assign(auroc_mean=first.summary["auroc_mean"] + 0.3)
    third = ev.evaluate(small, **run, previous=doctored)
    assert set(third.comparison["verdict"]) == {"worse"}
    alone = ev.evaluate(small, **run, output_dir=tmp_path, keep_previous=False)
    assert alone.comparison is None
    with pytest.raises(ValueError, match="not an evaluation summary"):
        ev.evaluate(small, **run, previous=tmp_path / "results.csv")


# --- the plan that keeps the full scorecard's time in bounds ---------------------------------


def test_large_images_get_fewer_classes_and_planted_classes_by_default(digits):
    big = data_lib.ImageData(np.zeros((20, 28, 28, 1), np.float32), np.arange(20) % 10, np.arange(20), ["x"], "big")
    assert ev.task_plan(digits, None, None) == (None, task_lib.PLANTED_CLASSES)  # the 8x8 digits: everything
    assert ev.task_plan(big, None, None) == (ev.LARGE_CLASSES, ev.LARGE_PLANTED) == (3, 1)
    assert ev.task_plan(big, 0, 3) == (None, 3)  # asked for: every class, 3 planted
    rotated = task_lib.build_tasks(digits, ["held-out", "one-class"], seed=1, rotate=3)
    assert [(t.protocol, t.target) for t in rotated] == [(p, c) for p in ("held-out", "one-class") for c in "148"]
    assert task_lib.count_tasks(digits, ["held-out", "one-class", "contaminated-clustered-3"], planted=1, rotate=3) == 7


def _results(seed: int, auroc: float) -> pd.DataFrame:
    rows = [
        {"data": "digits", "seed": seed, "protocol": "held-out", "task": t, "detector": d, "auroc": auroc,
         "average_precision": 0.5, "flagged_rate": math.nan, "seconds": 1.0, "n_fit": 10, "n_normal": 9,
         "n_anomalous": 1}
        for t in ("0", "1")
        for d in ("vae_anomaly_score", "knn")
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=list(results.RESULT_COLUMNS))


def test_a_scorecard_run_in_pieces_is_combined_into_one(tmp_path):
    first, second = tmp_path / "seed0", tmp_path / "seeds12"
    for folder, frames in (
        (first, [_results(0, 0.8), _results(1, 0.1)]),
        (second, [_results(1, 0.9), _results(2, 1.0)]),
    ):
        folder.mkdir()
        pd.concat(frames).to_csv(folder / "results.csv", index=False)
    result = results.combine_runs([first, second], tmp_path / "all", note="digits in two runs")
    assert len(result.results) == 12  # seed 1 of the second run replaced the first run's
    row = result.summary.set_index(["protocol", "detector"]).loc[("held-out", "vae_anomaly_score")]
    assert row["auroc_mean"] == pytest.approx(0.9) and row["auroc_worst"] == pytest.approx(0.8)
    written = pd.read_csv(tmp_path / "all" / "summary.csv")
    assert set(written["detector"]) == {"vae_anomaly_score", "knn"}
    assert "digits in two runs" in (tmp_path / "all" / "tables.md").read_text()
