"""Guards, result JSON and per-partition manifests of ``vae score`` and ``vae generate``: real Beam
(DirectRunner, in process), a real SQLite MLflow store, Parquet read back with pyarrow and DuckDB."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.beam.guards import GuardFailed, Guards
from pipeline.beam.options import ScoreOptions
from pipeline.cli.main import main
from pipeline.contract import GENERATE_KEYS, SCORE_KEYS, SKIPPED
from pipeline.outputs.manifest import MANIFEST, fingerprint_of, read_manifest
from training.data import ImageData, load_digits

DAY = "date=2026-11-20"
IN_PROCESS = ["--direct-running-mode", "in_memory", "--direct-num-workers", "1"]
RUN_FILE = re.compile(r"part-([0-9a-f]{8})-.*\.parquet")


def write_digits(path: Path, n: int, start: int = 0) -> Path:
    pixels = load_digits().images[start : start + n].reshape(n, -1)
    ids = [f"day-{i}" for i in range(start, start + n)]
    pq.write_table(pa.table({"example_id": ids, "pixels": pa.array(pixels.tolist(), pa.list_(pa.float32()))}), path)
    return path


def write_without_pixels(path: Path, n: int) -> Path:
    """A day's file that lost its ``pixels`` column: every row is rejected."""
    pq.write_table(pa.table({"example_id": [f"lost-{i}" for i in range(n)], "label": list(range(n))}), path)
    return path


def read(path: Path) -> pa.Table:
    return ds.dataset(path, format="parquet").to_table().sort_by("example_id")


def score_cli(model: str, input: Path | str, out: Path, *args: str):
    argv = ["score", "--model", model, "--input", str(input), "--output", str(out), *IN_PROCESS, *args]
    return CliRunner().invoke(main, argv)


@pytest.fixture(scope="module")
def plain_uri(trained_plain):
    return f"models:/{trained_plain.model_name}/{trained_plain.version}"


# --- cheap: the guard rule, the options, the fingerprint ------------------------------------------


def test_the_guards_fail_a_run_with_too_many_rejects_or_too_few_rows():
    guards = Guards(max_reject_rate=0.1, min_rows=5)
    assert guards.check(100, 10) is None  # exactly at the limit passes
    reason = guards.check(100, 11, {"missing column": 9, "not finite": 2})
    assert reason == (
        "11 of 100 rows rejected (11.0%, 9 x missing column, 2 x not finite), more than --max-reject-rate 0.1"
    )
    assert guards.check(4, 0) == "4 rows read, fewer than --min-rows 5"
    assert "fewer than --min-rows 5; 4 of 4 rows rejected" in guards.check(4, 4)
    assert Guards(max_reject_rate=1.0, min_rows=0).check(0, 0) is None  # both off: an empty run passes
    assert Guards().check(0, 0) == "0 rows read, fewer than --min-rows 1"  # the defaults fail an empty day


@pytest.mark.parametrize(
    ("values", "message"),
    [({"max_reject_rate": 1.5}, "--max-reject-rate must be in [0, 1]"), ({"min_rows": -1}, "--min-rows must be")],
)
def test_guard_options_out_of_range_are_refused(values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ScoreOptions.of(output="out", **values)
    options = ScoreOptions.from_argv(["--output", "o", "--max_reject_rate", "0.5", "--min-rows", "7"])
    assert (options.max_reject_rate, options.min_rows, options.result_json) == (0.5, 7, None)
    defaults = ScoreOptions.of(output="o")
    assert (defaults.max_reject_rate, defaults.min_rows) == (0.1, 1)


def test_the_input_fingerprint_follows_the_files_and_the_values(tmp_path):
    folder = tmp_path / "day"
    folder.mkdir()
    write_digits(folder / "a.parquet", 10)
    write_digits(folder / "b.parquet", 10, start=10)
    first = fingerprint_of(str(folder))
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert fingerprint_of(str(folder)) == first  # stable: nothing read twice differs
    os.utime(folder / "b.parquet", ns=(1, 1))  # touched
    touched = fingerprint_of(str(folder))
    assert touched != first
    write_digits(folder / "c.parquet", 1, start=30)  # one more file
    assert fingerprint_of(str(folder)) not in (first, touched)

    digits = load_digits()
    data = ImageData(digits.images[:50], digits.labels[:50], digits.example_ids[:50], digits.class_names, "mem")
    from pipeline.outputs.manifest import input_fingerprint
    from training.data.reader import plan_input

    whole = input_fingerprint(plan_input(data, shard_rows=50))
    assert input_fingerprint(plan_input(data, shard_rows=7)) == whole  # however the rows are cut
    changed = data.images.copy()
    changed[3, 0, 0, 0] += 0.5
    other = ImageData(changed, data.labels, data.example_ids, data.class_names, "mem")
    assert input_fingerprint(plan_input(other, shard_rows=50)) != whole


def test_a_manifest_written_by_the_run_goes_into_the_object_store_commits_own(tmp_path):
    """On object stores the commit writes ``_manifest.json`` naming its files: the run's manifest
    keys are merged into it, not overwritten (Beam's local file system runs the same code here)."""
    from pipeline.outputs.atomic import atomic_filesystem_dir, committed_files
    from pipeline.outputs.manifest import write_manifest

    target = tmp_path / "out" / "scores" / DAY
    with atomic_filesystem_dir(str(target), staging=str(tmp_path / "out" / ".staging")) as tmp:
        pq.write_table(pa.table({"x": [1, 2]}), f"{tmp}/part-0.parquet")
        write_manifest(tmp, {"dataset": "scores", "rows": 2, "run_id": "abcd1234"})
    manifest = read_manifest(target)
    assert (manifest["dataset"], manifest["rows"], manifest["run_id"]) == ("scores", 2, "abcd1234")
    assert manifest["files"] == ["part-0.parquet"] and manifest["run"].startswith("run-")
    assert committed_files(str(target)) == [f"{target}/part-0.parquet"]
    assert sorted(p.name for p in target.iterdir()) == [MANIFEST, "part-0.parquet"]


def test_a_run_that_fails_before_it_has_counts_writes_a_failed_result(mlflow_store, tmp_path):
    result_path = tmp_path / "result.json"
    result = score_cli("models:/no-such-model@champion", "digits", tmp_path / "out", "--result-json", str(result_path))
    assert result.exit_code == 1 and "no-such-model" in result.output
    outcome = json.loads(result_path.read_text())
    assert list(outcome) == list(SCORE_KEYS)
    assert (outcome["command"], outcome["status"], outcome["input"]) == ("score", "failed", "digits")
    assert "no-such-model" in outcome["reason"] and outcome["rows_read"] is None
    assert outcome["output"] == str(tmp_path / "out")


def test_an_input_refused_before_the_run_starts_writes_a_failed_result_too(tmp_path):
    result_path = tmp_path / "result.json"
    result = score_cli(
        "models:/m@champion", str(tmp_path / "nosuch"), tmp_path / "out", "--result-json", str(result_path)
    )
    assert result.exit_code == 1 and "nosuch: no such file or folder" in result.output
    outcome = json.loads(result_path.read_text())
    assert list(outcome) == list(SCORE_KEYS)
    assert (outcome["command"], outcome["status"], outcome["input"]) == ("score", "failed", str(tmp_path / "nosuch"))
    assert outcome["reason"].startswith(f"{tmp_path / 'nosuch'}: no such file or folder")


def test_on_failure_skip_exits_the_skip_code_and_the_result_can_be_the_last_line(mlflow_store, tmp_path):
    """What a shadow task relies on: ``vae --on-failure skip`` turns a failure into exit 99 with the
    same message, and ``--result-json -`` prints the result as the last line of stdout."""
    argv = ["score", "--model", "models:/no-such-model@champion", "--input", "digits", "--output", str(tmp_path)]
    result = CliRunner().invoke(main, ["--on-failure", "skip", *argv, *IN_PROCESS, "--result-json", "-"])
    assert result.exit_code == SKIPPED == 99 and "Error:" in result.stderr and "no-such-model" in result.stderr
    outcome = json.loads(result.stdout.splitlines()[-1])
    assert list(outcome) == list(SCORE_KEYS) and outcome["status"] == "failed" and "no-such-model" in outcome["reason"]
    assert not (tmp_path / "-").exists()
    assert CliRunner().invoke(main, [*argv, *IN_PROCESS]).exit_code == 1  # the default: a failure is a failure
    usage = CliRunner().invoke(main, ["--on-failure", "skip", "score", "--no-such-flag"])
    assert usage.exit_code == SKIPPED and "No such option" in usage.stderr


# --- real scoring runs --------------------------------------------------------------------------


@pytest.mark.slow
def test_a_day_without_pixels_fails_its_guard_and_leaves_the_previous_scores(plain_uri, tmp_path):
    out = tmp_path / "out"
    good = write_digits(tmp_path / "good.parquet", 30)
    first = score_cli(plain_uri, good, out, "--partition", DAY, "--result-json", "-")
    assert first.exit_code == 0, first.output
    printed = json.loads(first.stdout.splitlines()[-1])  # --result-json -: the last line of stdout
    assert (printed["status"], printed["rows_read"], printed["partition"]) == ("ok", 30, DAY)
    assert "guards:     passed (at most 10.0% rejected, at least 1 row(s) read)" in first.output
    scores_before, rejects_before = read(out / "scores" / DAY), read(out / "rejects" / DAY)
    manifest_before = read_manifest(out / "scores" / DAY)

    lost = write_without_pixels(tmp_path / "lost.parquet", 12)
    result_path = tmp_path / "results" / "score.json"
    result = score_cli(plain_uri, lost, out, "--partition", DAY, "--result-json", str(result_path))
    assert result.exit_code == 1, result.output
    assert (
        "Error: the run failed its guards: 12 of 12 rows rejected (100.0%, 12 x missing column), more than "
        "--max-reject-rate 0.1" in result.output
    )
    assert "guards:     FAILED: 12 of 12 rows rejected" in result.output

    # the day's committed scores and rejects, and their manifest, are the first run's
    assert read(out / "scores" / DAY).equals(scores_before)
    assert read(out / "rejects" / DAY).equals(rejects_before)
    assert read_manifest(out / "scores" / DAY) == manifest_before

    outcome = json.loads(result_path.read_text())
    assert list(outcome) == list(SCORE_KEYS)
    kept = out / "_failed" / outcome["run_id"] / "rejects"
    assert f"the run's rejects are kept in {kept}" in " ".join(result.output.split())
    assert outcome["status"] == "failed" and outcome["reason"].startswith("12 of 12 rows rejected (100.0%")
    assert (outcome["rows_read"], outcome["rows_scored"], outcome["rows_rejected"]) == (12, 0, 12)
    assert (outcome["reject_rate"], outcome["anomaly_rate"], outcome["partition"]) == (1.0, None, DAY)
    assert (outcome["scores_path"], outcome["manifest_path"], outcome["rejects_path"]) == (None, None, str(kept))
    assert outcome["input"] == str(lost) and outcome["output"] == str(out)

    rejects = read(kept)
    assert rejects.num_rows == 12
    assert {r.split(":")[0] for r in rejects.column("reason").to_pylist()} == {"missing column"}
    assert all(RUN_FILE.fullmatch(p.name)[1] == outcome["run_id"] for p in kept.glob("*.parquet"))
    manifest = read_manifest(kept)
    assert (manifest["status"], manifest["rows"], manifest["run_id"]) == ("failed", 12, outcome["run_id"])
    assert manifest["reason"] == outcome["reason"]
    assert not (out / ".staging").exists() or not any((out / ".staging").iterdir())


@pytest.mark.slow
def test_min_rows_fails_a_short_day_also_from_beam_style_flags(plain_uri, tmp_path):
    from pipeline.beam.score_job import run

    out = tmp_path / "out"
    short = write_digits(tmp_path / "short.parquet", 20)
    result_path = tmp_path / "r.json"
    argv = ["--model", plain_uri, "--input", str(short), "--output", str(out), "--min_rows", "21"]
    argv += ["--result_json", str(result_path), "--direct_running_mode", "in_memory"]
    with pytest.raises(GuardFailed, match="20 rows read, fewer than --min-rows 21") as failure:
        run(argv)
    summary = failure.value.summary
    assert (summary.status, summary.rows_scored, summary.manifest_path) == ("failed", 20, None)
    assert not os.path.lexists(out / "scores") and not os.path.lexists(out / "rejects")  # nothing committed
    outcome = json.loads(result_path.read_text())
    assert (outcome["status"], outcome["rows_read"], outcome["reject_rate"]) == ("failed", 20, 0.0)
    assert read(Path(outcome["rejects_path"])).num_rows == 0  # no rejects, but the folder says why

    passed = run([*argv[:-4], "--min_rows", "20", "--direct_running_mode", "in_memory"])
    assert passed.status == "ok" and passed.rows_scored == 20


@pytest.mark.slow
def test_a_good_run_writes_its_result_and_a_manifest_per_partition(trained_plain, plain_uri, tmp_path):
    from scoring.calibration import Calibration

    out = tmp_path / "out"
    day = tmp_path / "day"
    day.mkdir()
    write_digits(day / "part-0.parquet", 40)
    bad = load_digits().images[:2].reshape(2, -1).tolist()
    bad[1] = [float("nan")] * 64
    pq.write_table(
        pa.table({"example_id": ["b0", "b1"], "pixels": pa.array(bad, pa.list_(pa.float32()))}), day / "part-1.parquet"
    )
    other_day = score_cli(
        plain_uri, write_digits(tmp_path / "other.parquet", 10), out, "--partition", "date=2026-11-19"
    )
    assert other_day.exit_code == 0, other_day.output

    result_path = tmp_path / "score.json"
    result = score_cli(plain_uri, day, out, "--partition", DAY, "--result-json", str(result_path))
    assert result.exit_code == 0, result.output
    outcome = json.loads(result_path.read_text())
    assert list(outcome) == list(SCORE_KEYS)
    scores, rejects = read(out / "scores" / DAY), read(out / "rejects" / DAY)
    flagged = sum(scores.column("is_anomaly").to_pylist())
    calibration = Calibration.from_dict(trained_plain.model.calibration)
    assert outcome == {
        "command": "score",
        "status": "ok",
        "reason": None,
        "model_name": trained_plain.model_name,
        "model_version": str(trained_plain.version),
        "input": str(day),
        "output": str(out),
        "partition": DAY,
        "run_id": outcome["run_id"],
        "rows_read": 42,
        "rows_scored": 41,
        "rows_rejected": 1,
        "reject_rate": 1 / 42,
        "anomalies": flagged,
        "anomaly_rate": flagged / 41,
        "threshold": scores.column("threshold")[0].as_py(),
        "target_fpr": calibration.target_fpr,
        "scores_path": str(out / "scores" / DAY),
        "rejects_path": str(out / "rejects" / DAY),
        "manifest_path": str(out / "scores" / DAY / MANIFEST),
    }
    assert f"manifest:   {out / 'scores' / DAY / MANIFEST} (run {outcome['run_id']})" in result.output
    assert {RUN_FILE.fullmatch(p.name)[1] for p in (out / "scores" / DAY).glob("*.parquet")} == {outcome["run_id"]}

    for dataset, table in (("scores", scores), ("rejects", rejects)):
        manifest = read_manifest(out / dataset / DAY)
        assert set(manifest) == {
            "dataset",
            "partition",
            "rows",
            "model_name",
            "model_version",
            "model_uri",
            "input",
            "input_fingerprint",
            "run_id",
            "written_at",
            "vae_version",
        }
        assert (manifest["dataset"], manifest["partition"], manifest["rows"]) == (dataset, DAY, table.num_rows)
        assert (manifest["model_name"], manifest["model_version"]) == (
            trained_plain.model_name,
            str(trained_plain.version),
        )
        assert manifest["model_uri"] == plain_uri and manifest["input"] == str(day)
        assert manifest["input_fingerprint"] == fingerprint_of(str(day))
        assert manifest["run_id"] == outcome["run_id"] and manifest["vae_version"]
        assert datetime.fromisoformat(manifest["written_at"]).utcoffset().total_seconds() == 0
    assert read_manifest(out / "scores" / "date=2026-11-19")["rows"] == 10  # the other day keeps its own

    # readers of the whole dataset skip the manifests
    per_day = duckdb.sql(
        f"SELECT date, count(*) FROM read_parquet('{out}/scores/**/*.parquet', hive_partitioning = true) "
        "GROUP BY date ORDER BY date"
    ).fetchall()
    assert [(str(d), n) for d, n in per_day] == [("2026-11-19", 10), ("2026-11-20", 41)]
    dataset = ds.dataset(out / "scores", format="parquet", partitioning="hive")
    assert dataset.count_rows() == 51 and all(f.endswith(".parquet") for f in dataset.files)
    assert ds.dataset(out / "rejects", format="parquet", partitioning="hive").count_rows() == 1


@pytest.mark.slow
def test_a_whole_dataset_run_has_its_manifest_at_the_dataset_root(trained_plain, plain_uri, tmp_path):
    from pipeline.beam.score_job import score_dataset

    holdout = trained_plain.split.holdout
    options = ScoreOptions.of(model=plain_uri, output=tmp_path, direct_running_mode="in_memory")
    summary = score_dataset(options, input_data=holdout)
    assert summary.manifest_path == tmp_path / "scores" / MANIFEST and summary.status == "ok"
    manifest = read_manifest(tmp_path / "scores")
    assert (manifest["partition"], manifest["rows"], manifest["input"]) == (None, len(holdout), holdout.source)
    assert manifest["input_fingerprint"] == fingerprint_of(holdout)
    count = duckdb.sql(f"select count(*) from read_parquet('{tmp_path}/scores/**/*.parquet')").fetchall()[0][0]
    assert count == len(holdout) == ds.dataset(tmp_path / "scores", format="parquet").count_rows()


# --- generation -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_generate_writes_its_result_and_the_methods_manifest(trained_plain, plain_uri, tmp_path):
    from pipeline.outputs.synthetic import read_synthetic

    result_path = tmp_path / "gen.json"
    args = ["generate", "--model", plain_uri, "--method", "prior", "--n", "12", "--output", str(tmp_path)]
    result = CliRunner().invoke(main, [*args, "--no-grid", "--result-json", str(result_path), *IN_PROCESS])
    assert result.exit_code == 0, result.output
    outcome = json.loads(result_path.read_text())
    assert list(outcome) == list(GENERATE_KEYS)
    folder = tmp_path / "synthetic" / "prior"
    files = sorted(folder.rglob("*.parquet"))
    run_id = RUN_FILE.fullmatch(files[0].name)[1]
    assert outcome == {
        "command": "generate",
        "status": "ok",
        "reason": None,
        "model_name": trained_plain.model_name,
        "model_version": str(trained_plain.version),
        "method": "prior",
        "rows": 12,
        "output": str(tmp_path),
        "synthetic_path": str(folder),
        "run_id": run_id,
        "manifest_path": str(folder / MANIFEST),
    }
    manifest = read_manifest(folder)
    assert (manifest["dataset"], manifest["partition"], manifest["rows"]) == ("synthetic", "prior", 12)
    assert (manifest["run_id"], manifest["model_uri"], manifest["input"]) == (run_id, plain_uri, None)
    assert manifest["input_fingerprint"] is None  # prior samples read no input
    assert read_synthetic(tmp_path / "synthetic").num_rows == 12  # the reader skips the manifest

    posterior = tmp_path / "post"
    args = ["generate", "--model", plain_uri, "--method", "posterior", "--input", "digits:holdout"]
    result = CliRunner().invoke(main, [*args, "--n", "5", "--output", str(posterior), "--no-grid", *IN_PROCESS])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(posterior / "synthetic" / "posterior")
    assert (manifest["input"], manifest["rows"]) == ("digits:holdout", 5)
    assert manifest["input_fingerprint"] == fingerprint_of("digits:holdout")

    failed_path = tmp_path / "failed.json"
    args = ["generate", "--model", plain_uri, "--method", "conditional", "--output", str(tmp_path / "x")]
    result = CliRunner().invoke(main, [*args, "--result-json", str(failed_path), *IN_PROCESS])
    assert result.exit_code == 1  # a plain model cannot sample per label
    failed = json.loads(failed_path.read_text())
    assert (failed["status"], failed["method"], failed["rows"]) == ("failed", "conditional", None)
    assert failed["reason"] and failed["output"] == str(tmp_path / "x")


# --- issue 21: a missing model version, implausibly dark input, the registry's descriptions ------


def test_a_missing_version_or_model_is_one_line_naming_what_exists(trained_plain, mlflow_store, tmp_path):
    name = trained_plain.model_name
    missing = score_cli(f"models:/{name}/99", "digits", tmp_path / "out")
    assert missing.exit_code == 1 and "Traceback" not in missing.output
    line = missing.output.strip().splitlines()[-1]
    assert line.startswith(f"Error: models:/{name}/99: {name} has no version 99; its versions are ")
    assert f"@champion (version {trained_plain.version})" in line
    unknown = score_cli("models:/no-such-model/1", "digits", tmp_path / "out")
    last = unknown.output.strip().splitlines()[-1]
    assert last.startswith("Error: models:/no-such-model/1: no registered model named 'no-such-model'")
    assert name in last


def test_implausibly_dark_input_fails_at_once_naming_the_fix(trained_plain, plain_uri, tmp_path):
    import numpy as np

    assert 0.5 < trained_plain.model.pixel_brightest <= 1.0  # the digits' typical brightest pixel
    masks = (load_digits().images[:30] > 0.5).reshape(30, -1).astype(np.uint8)  # 0/1 values in a uint8 column
    path = tmp_path / "masks.parquet"
    pq.write_table(pa.table({"pixels": pa.array(masks.tolist(), pa.list_(pa.uint8()))}), path)
    out = tmp_path / "out"
    failed = score_cli(plain_uri, path, out, "--result-json", str(tmp_path / "r.json"))
    assert failed.exit_code == 1, failed.output
    assert "the pixels look wrongly scaled" in failed.output and "--pixel-scale 1" in failed.output
    assert not (out / "scores").exists()
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "failed"
    fixed = score_cli(plain_uri, path, out, "--pixel-scale", "1")
    assert fixed.exit_code == 0, fixed.output
    assert "scored:     30" in fixed.output and not fixed.output.startswith("\n")


def test_the_registered_model_and_its_version_say_what_they_are(trained_plain, mlflow_store):
    from training import registry

    client = registry.client()
    version = client.get_model_version(trained_plain.model_name, trained_plain.version).description
    assert f"holdout neg ELBO: {trained_plain.holdout_neg_elbo:.3f} nats" in version
    assert f"anomaly threshold: {trained_plain.threshold:.4g}" in version and "promoted to @champion" in version
    assert "trained on digits" in version and "likelihood: " in version
    model = client.get_registered_model(trained_plain.model_name).description
    assert "@champion" in model and "digits" in model


@pytest.mark.parametrize(
    ("how", "plain", "skipped"),
    [("exit", 2, SKIPPED), ("interrupt", 1, SKIPPED), ("crash", 1, SKIPPED), ("verdict", 3, 3), ("ok", 0, 0)],
)
def test_on_failure_skip_turns_every_failure_into_the_skip_code_but_not_a_verdict(how, plain, skipped):
    import sys

    import click

    from pipeline.cli.main import VaeGroup
    from pipeline.contract import ON_FAILURE

    @click.group(cls=VaeGroup)
    @click.option("--on-failure", type=click.Choice(ON_FAILURE), default="fail")
    def group(on_failure: str) -> None:
        pass

    @group.command()
    @click.argument("how")
    def run(how: str) -> None:
        if how == "exit":
            sys.exit(2)
        if how == "interrupt":
            raise KeyboardInterrupt
        if how == "crash":
            raise RuntimeError("boom")
        if how == "verdict":
            click.get_current_context().exit(3)  # vae monitor --check's out of bounds

    assert CliRunner().invoke(group, ["run", how]).exit_code == plain
    assert CliRunner().invoke(group, ["--on-failure", "skip", "run", how]).exit_code == skipped
    assert CliRunner().invoke(group, ["--on-failure", "skip", "no-such-command"]).exit_code == SKIPPED


def test_on_failure_skip_covers_a_wrong_option_of_vae_itself():
    assert CliRunner().invoke(main, ["--bogus", "score"]).exit_code == 2
    assert CliRunner().invoke(main, ["--on-failure", "skip", "--bogus", "score"]).exit_code == SKIPPED
    assert CliRunner().invoke(main, ["--on-failure=skip", "--log-format", "loud", "score"]).exit_code == SKIPPED
    assert CliRunner().invoke(main, ["--log-format", "loud", "score", "--on-failure", "skip"]).exit_code == 2
