"""Monitoring of scoring runs: real Beam runs (in-process) scored with the session's tiny models,
rows appended to OUTPUT/monitoring/ and read back with pyarrow, real MLflow, the `vae monitor`
command through click, and the report's section."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import numpy as np
import pyarrow.dataset as ds
import pytest
from click.testing import CliRunner

from pipeline.contract import MONITOR_ALARM_PREFIX
from pipeline.monitoring import read_rows, record_scoring_run, record_shadow
from pipeline.monitoring.statistics import (
    QUANTILE_COLUMNS,
    QUANTILES,
    critical_drift,
    flagged_rate_bound,
    score_drift,
)

FAST = {"direct_running_mode": "in_memory", "direct_num_workers": 1}
NORMAL_DAY, SHIFTED_DAY = "date=2026-11-19", "date=2026-11-20"


def scored(trained, data, output, partition, *, fpr=None, model_uri=None):
    """Scores ``data`` into ``output`` (``partition``) as `vae score` does, which records the run: its row."""
    from pipeline.beam.options import ScoreOptions
    from pipeline.beam.score_job import score_dataset

    uri = model_uri or f"models:/{trained.model_name}/{trained.version}"
    options = ScoreOptions.of(model=uri, output=str(output), partition=partition, fpr=fpr, **FAST)
    summary = score_dataset(options, input_data=data)
    rows = [r for r in read_rows(output).to_pylist() if r["run_id"] == summary.run_id]
    assert len(rows) == 1, rows  # one row per committed run, written by score_dataset itself
    return summary, rows[0]


def inverted(data):
    """The same digits, ink and paper swapped: a shift every detector should see."""
    return dataclasses.replace(data, images=1.0 - data.images, source=f"{data.source} (inverted)")


def read_scores(output, partition):
    return ds.dataset(str(output / "scores" / partition), format="parquet").to_table()


@pytest.fixture(scope="module")
def daily(trained_plain, tmp_path_factory):
    """An output with a normal day, a shifted day, and a rerun of the normal day: three runs."""
    out = tmp_path_factory.mktemp("monitored") / "daily"
    holdout = trained_plain.split.holdout
    rows = [
        scored(trained_plain, holdout, out, NORMAL_DAY)[1],
        scored(trained_plain, inverted(holdout), out, SHIFTED_DAY)[1],
        scored(trained_plain, holdout, out, NORMAL_DAY)[1],
    ]
    return out, rows


def invoke(*args, work_dir=None):
    from pipeline.cli.monitor import monitor_command

    return CliRunner().invoke(monitor_command, [str(a) for a in args], obj={"work_dir": work_dir})


# --- the statistics, no model needed ------------------------------------------------------------


def test_the_bound_holds_at_its_confidence_when_nothing_changed_and_the_binomial_one_does_not():
    """Threshold fitted on 200 calibration scores at 5 %, then 2,000 new scores from the same
    distribution, 400 times: the beta-binomial bound is breached about 1 - confidence of the time;
    a binomial interval at the target rate, which ignores the threshold's own noise, far more often."""
    from scipy import stats

    from scoring.calibration import threshold_at

    rng = np.random.default_rng(0)
    confidence, outside_beta, outside_binomial = 0.95, 0, 0
    low, high = stats.binom(2000, 0.05).ppf([0.025, 0.975]) / 2000
    bound = None
    for _ in range(400):
        calibration = np.sort(rng.normal(size=200))
        threshold = threshold_at(calibration, 0.05)
        assert np.count_nonzero(calibration > threshold) == 10  # so the bound is the same every time
        rate = float(np.mean(rng.normal(size=2000) > threshold))
        bound = bound or flagged_rate_bound(
            2000, calibration_scores=calibration, threshold=threshold, confidence=confidence
        )
        outside_beta += not bound.holds(rate)
        outside_binomial += not low <= rate <= high
    assert bound.method == "beta-binomial" and bound.expected == pytest.approx(11 / 201)
    assert outside_beta / 400 <= 0.08
    assert outside_binomial / 400 >= 0.3


def test_without_calibration_scores_the_bound_is_binomial_and_without_a_rate_there_is_none():
    bound = flagged_rate_bound(10_000, target_fpr=0.01, confidence=0.999)
    assert bound.method == "binomial" and bound.lower < 0.01 < bound.upper and bound.upper < 0.015
    assert flagged_rate_bound(10_000) is None and flagged_rate_bound(0, target_fpr=0.01) is None
    with pytest.raises(ValueError, match="confidence"):
        flagged_rate_bound(10, target_fpr=0.01, confidence=1.0)


def test_drift_limit_is_rarely_passed_by_samples_of_one_distribution_and_passed_by_a_shift():
    """Over calibration sets and runs both drawn anew (the limit allows for the noise of both)."""
    rng = np.random.default_rng(1)
    same = [
        score_drift(rng.normal(size=500), rng.normal(size=300), confidence=0.99, min_drift=0).drifted
        for _ in range(300)
    ]
    assert np.mean(same) <= 0.03
    reference = rng.normal(size=300)
    shifted = score_drift(rng.normal(0.5, size=500), reference, confidence=0.99, min_drift=0)
    assert shifted.drifted and shifted.p_value < 1e-6
    assert critical_drift(300, 500, 0.99) == pytest.approx(1.628 * np.sqrt(800 / 150_000), rel=1e-3)
    assert score_drift(rng.normal(size=50), reference, min_drift=0.9).limit == 0.9  # the floor
    assert score_drift(np.array([np.nan]), reference) is None and score_drift(reference, None) is None


# --- scoring runs, recorded ----------------------------------------------------------------------


@pytest.mark.slow
def test_one_row_per_run_with_the_rate_inside_its_bound_and_a_shift_outside(daily, trained_plain):
    out, (normal, shifted, rerun) = daily
    table = read_rows(out)
    assert table.num_rows == 3 and len(list((out / "monitoring").glob("*.parquet"))) == 3
    assert table.column("partition").to_pylist() == [NORMAL_DAY, SHIFTED_DAY, NORMAL_DAY]
    assert table.column("rows_scored").to_pylist() == [len(trained_plain.split.holdout)] * 3
    assert set(table.column("model_version").to_pylist()) == {trained_plain.version}
    for row in (normal, rerun):
        assert row["status"] == "ok", row["reason"]
        assert row["rate_lower"] <= row["anomaly_rate"] <= row["rate_upper"]
        assert row["drift_statistic"] <= row["drift_limit"]
        assert row["bound_method"] == "beta-binomial" and row["calibration_rows"] == len(
            trained_plain.split.calibration
        )
    assert shifted["status"] == "alarm" and shifted["anomaly_rate"] > shifted["rate_upper"]
    assert shifted["drift_statistic"] > max(normal["drift_statistic"], shifted["drift_limit"])
    assert "above its" in shifted["reason"]
    assert normal["threshold"] == pytest.approx(trained_plain.threshold)
    assert normal["target_fpr"] == pytest.approx(trained_plain.model.calibration["target_fpr"])
    # the row's run id is the one in the committed file names
    files = ds.dataset(str(out / "scores" / NORMAL_DAY), format="parquet").files
    assert all(f"part-{rerun['run_id']}-" in f for f in files)


@pytest.mark.slow
def test_quantiles_and_counts_are_those_of_the_scores_read_back(daily):
    out, (normal, shifted, rerun) = daily
    for row, partition in ((rerun, NORMAL_DAY), (shifted, SHIFTED_DAY)):
        scores = read_scores(out, partition)
        values = scores.column("anomaly_score").to_numpy()
        expected = np.quantile(values, QUANTILES)
        assert [row[c] for c in QUANTILE_COLUMNS] == pytest.approx(expected.tolist())
        assert row["score_mean"] == pytest.approx(values.mean())
        assert row["anomalies"] == int(np.sum(scores.column("is_anomaly").to_numpy(zero_copy_only=False)))
    stored = read_rows(out).to_pylist()[-1]
    assert [stored[c] for c in QUANTILE_COLUMNS] == pytest.approx([rerun[c] for c in QUANTILE_COLUMNS])


@pytest.mark.slow
def test_each_row_is_an_mlflow_run_with_its_numbers(daily, mlflow_store):
    from mlflow import MlflowClient

    _, rows = daily
    client = MlflowClient(tracking_uri=mlflow_store)
    for row in rows:
        run = client.get_run(row["mlflow_run_id"])
        assert run.info.run_name == f"daily/{row['partition']}"
        assert run.data.tags["model_version"] == row["model_version"] and run.data.tags["status"] == row["status"]
        assert run.data.metrics["anomaly_rate"] == pytest.approx(row["anomaly_rate"])
        assert run.data.metrics["drift_statistic"] == pytest.approx(row["drift_statistic"])
        assert client.get_experiment(run.info.experiment_id).name == "vae-monitoring"


@pytest.mark.slow
def test_monitor_prints_the_trend_draws_it_and_checks_the_selected_run(daily, tmp_path):
    from PIL import Image

    out, (normal, shifted, rerun) = daily
    result = invoke(out, "--plot", tmp_path / "trend.png")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:5] == ["partition", "run", "at", "model", "rows"]
    # one line per partition, its latest run, in partition order
    assert [line.split()[0] for line in lines[1:3]] == [NORMAL_DAY, SHIFTED_DAY]
    assert lines[1].rstrip().endswith("ok") and lines[2].rstrip().endswith("ALARM")
    assert f"{rerun['anomaly_rate']:.2%}" in lines[1] and f"{shifted['drift_statistic']:.3f}" in lines[2]
    with Image.open(tmp_path / "trend.png") as picture:
        assert picture.format == "PNG" and picture.width > 200 and picture.height > 200

    check = invoke(out, "--check", "--plot", tmp_path / "b.png")  # the latest recorded run: the normal day's rerun
    assert check.exit_code == 0 and "within bounds" in check.output
    check = invoke(out, "--check", "--partition", SHIFTED_DAY, "--plot", tmp_path / "c.png")
    assert check.exit_code == 3
    assert f"out of bounds: {SHIFTED_DAY}" in check.output and "anomaly rate" in check.output
    # --on-alarm warn: exit 0, the alarm as the last line of stdout, for a scheduler to log
    warned = invoke(out, "--check", "--partition", SHIFTED_DAY, "--on-alarm", "warn", "--plot", tmp_path / "w.png")
    assert warned.exit_code == 0, warned.output
    assert warned.stdout.splitlines()[-1].startswith(f"{MONITOR_ALARM_PREFIX}out of bounds: {SHIFTED_DAY}")
    # --run-id judges that run, not the partition's latest row; a run without a row fails the check
    by_run = invoke(
        out, "--check", "--partition", SHIFTED_DAY, "--run-id", shifted["run_id"], "--plot", tmp_path / "f.png"
    )
    assert by_run.exit_code == 3
    first = invoke(
        out, "--check", "--partition", NORMAL_DAY, "--run-id", normal["run_id"], "--plot", tmp_path / "g.png"
    )
    assert first.exit_code == 0 and "within bounds" in first.output
    missing = invoke(out, "--check", "--partition", NORMAL_DAY, "--run-id", "nosuchrun", "--plot", tmp_path / "h.png")
    assert missing.exit_code == 1 and "no monitoring row for run nosuchrun" in missing.output
    history = invoke(out, "--partition", NORMAL_DAY, "--last", "5", "--plot", tmp_path / "d.png")
    assert [line.split()[0] for line in history.output.splitlines()[1:3]] == [NORMAL_DAY, NORMAL_DAY]
    assert invoke(out, "--plot", tmp_path / "e.png", "--last", "1").output.splitlines()[1].startswith(SHIFTED_DAY)
    default = invoke(out)
    assert default.exit_code == 0 and (out / "monitoring.png").is_file()
    assert invoke(out, "--partition", "nope").exit_code == 2
    empty = invoke(tmp_path / "nothing", "--plot", tmp_path / "f.png")
    assert empty.exit_code == 1 and "no scoring runs recorded" in empty.output


@pytest.mark.slow
def test_the_report_has_a_monitoring_section_only_when_monitoring_exists(daily, trained_plain, tmp_path):
    from pipeline.report.html import render_report

    out, (_, _, rerun) = daily
    uri = f"models:/{trained_plain.model_name}/{trained_plain.version}"
    page = render_report(out / "scores" / NORMAL_DAY, uri, tmp_path / "r.html", top=3, log_to_mlflow=False)
    text = page.read_text()
    section = text[text.index("<section id='monitoring'>") :]
    assert 'alt="monitoring trend" src="data:image/png;base64,' in section
    assert NORMAL_DAY in section and SHIFTED_DAY in section and f"{rerun['anomaly_rate']:.2%}" in section

    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(out / "scores" / NORMAL_DAY, plain / "scores")
    page = render_report(plain / "scores", uri, tmp_path / "s.html", top=3, log_to_mlflow=False)
    assert "<section id='monitoring'>" not in page.read_text()


# --- shadow scoring and uncalibrated models -----------------------------------------------------


@pytest.mark.slow
def test_shadow_agreement_of_two_models_is_recorded(trained_plain, trained_conditional, mlflow_store, tmp_path):
    holdout = trained_plain.split.holdout
    champion, challenger = tmp_path / "champion", tmp_path / "challenger"
    scored(trained_plain, holdout, champion, NORMAL_DAY, fpr=0.2)
    scored(trained_conditional, holdout, challenger, NORMAL_DAY, fpr=0.2)
    result = invoke(champion, "--shadow", challenger, "--partition", NORMAL_DAY, "--plot", tmp_path / "t.png")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"shadow: {trained_conditional.model_name} v{trained_conditional.version}")

    a = read_scores(champion, NORMAL_DAY).sort_by("example_id")
    b = read_scores(challenger, NORMAL_DAY).sort_by("example_id")
    assert a.column("example_id").equals(b.column("example_id"))
    flags_a, flags_b = (t.column("is_anomaly").to_numpy(zero_copy_only=False).astype(bool) for t in (a, b))
    row = read_rows(champion).to_pylist()[-1]
    assert row["kind"] == "shadow" and row["shadow_model_name"] == trained_conditional.model_name
    assert row["shadow_rows"] == len(holdout) and row["shadow_unmatched"] == 0
    assert row["both_flagged"] == int(np.sum(flags_a & flags_b))
    assert row["champion_only"] == int(np.sum(flags_a & ~flags_b))
    assert row["shadow_only"] == int(np.sum(~flags_a & flags_b))
    assert row["agreement"] == pytest.approx(np.mean(flags_a == flags_b))
    assert row["anomaly_rate"] == pytest.approx(flags_a.mean()) and 0 < flags_a.mean() < 1
    assert "agreement" in result.output and f"{row['agreement']:.2%}" in result.output

    itself = record_shadow(champion, champion, partition=NORMAL_DAY, log_to_mlflow=False)
    assert (itself["agreement"], itself["cohen_kappa"], itself["champion_only"]) == (1.0, 1.0, 0)
    assert read_rows(champion).num_rows == 3  # the champion's scoring run and two comparisons


@pytest.mark.slow
def test_an_uncalibrated_model_gets_a_row_with_null_bound_and_drift(trained_plain, tmp_path):
    model = trained_plain.model
    stored, model.calibration = model.calibration, None
    try:
        path = tmp_path / "uncalibrated.keras"
        model.save(path)
    finally:
        model.calibration = stored
    out = tmp_path / "out"
    summary, row = scored(trained_plain, trained_plain.split.holdout, out, None, model_uri=str(path))
    assert summary.threshold is None
    assert row["status"] == "unchecked" and row["anomalies"] is None and row["anomaly_rate"] is None
    for column in ("rate_lower", "rate_upper", "drift_statistic", "drift_limit", "threshold", "target_fpr"):
        assert row[column] is None, column
    assert row["score_q50"] is not None and row["rows_scored"] == len(trained_plain.split.holdout)
    result = invoke(out, "--check", "--plot", tmp_path / "t.png")
    assert result.exit_code == 0 and "not checked" in result.output
    line = result.output.splitlines()[1]
    assert line.startswith("(all)") and line.rstrip().endswith("unchecked")


def test_recording_a_run_that_was_never_committed_names_the_missing_folder(tmp_path):
    summary = type("Summary", (), {"rows_scored": 1, "threshold": None, "calibrated_score": "anomaly_score"})()
    with pytest.raises(FileNotFoundError, match="no scores to monitor"):
        record_scoring_run(summary, output=tmp_path, partition=NORMAL_DAY, target_fpr=None, model=None)
    failed = type("Summary", (), {"status": "failed", "reason": "too many rejects", "rows_scored": 1})()
    with pytest.raises(ValueError, match="did not commit"):
        record_scoring_run(failed, output=tmp_path, partition=None, target_fpr=None, model=None)
    assert not (tmp_path / "monitoring").exists()


def test_rows_written_before_a_column_existed_read_it_as_null(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "monitoring"
    folder.mkdir()
    when = datetime(2026, 1, 1, tzinfo=UTC)
    old = pa.table({"kind": ["score"], "recorded_at": pa.array([when], pa.timestamp("us", tz="UTC"))})
    pq.write_table(old, folder / "part-old.parquet")
    (folder / ".part-half-written.parquet.tmp").write_bytes(b"PAR1")  # a write in progress is never read
    rows = read_rows(tmp_path)
    assert rows.num_rows == 1 and rows.column("drift_statistic").null_count == 1
