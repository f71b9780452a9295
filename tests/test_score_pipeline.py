"""Beam batch scoring: real pipelines on the DirectRunner, Parquet read back with pyarrow and DuckDB.

Cheap checks (validation rules, ``--help``) need no model; the rest use the session's trained
models and are marked slow. Most pipelines run in-process (``in_memory``) for speed; one runs the
default multi-processing mode.
"""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipeline.beam.options import ScoreOptions
from pipeline.beam.score_job import ScoreSummary, score_dataset
from pipeline.outputs.score_tables import REJECTS_SCHEMA, SCORES_SCHEMA, top_anomalies
from training.data import load_digits, training_split
from training.data.reader import plan_input
from training.data.validate import ModelSpec, validate_batch

FAST = {"direct_running_mode": "in_memory", "direct_num_workers": 1}
PLAIN = ModelSpec((8, 8, 1))
CONDITIONAL = ModelSpec((8, 8, 1), 10, tuple(str(i) for i in range(10)))
WHEN = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
HOLDOUT_ROWS = len(training_split(load_digits()).holdout)  # digits:test is the hash-chosen holdout


def digits_pixels(n: int, start: int = 0) -> list[list[float]]:
    return load_digits().images[start : start + n].reshape(n, -1).tolist()


def read(path) -> pa.Table:
    return ds.dataset(path, format="parquet").to_table().sort_by("example_id")


def duckdb_rows(path) -> int:

    return duckdb.sql(f"select count(*) from read_parquet('{path}/*.parquet')").fetchall()[0][0]


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    array = (np.squeeze(array, axis=-1) if array.ndim == 3 else array).astype(np.uint8)
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def score(model: str, input: str, output, *, scored_at: datetime | None = None, **options) -> ScoreSummary:
    """:func:`score_dataset` with the options object built as ``vae score`` builds it."""
    return score_dataset(ScoreOptions.of(model=model, input=input, output=output, **options), scored_at=scored_at)


def datasets_and_no_leftovers(out) -> list[str]:
    """The committed datasets under ``out``, after checking no temporary or swapped-out folder was left
    (``monitoring/``, a row appended after each commit, is not one of them: tests/test_monitoring.py)."""
    staging = out / ".staging"
    assert not staging.exists() or not any(staging.iterdir()), list(staging.iterdir())
    skip = (".staging", ".versions", "monitoring")  # atomic's own, and the monitoring rows
    return sorted(p.name for p in out.iterdir() if p.name not in skip)


def without_scored_at(table: pa.Table) -> pa.Table:
    return table.drop_columns(["scored_at"])


# --- validation rules, no model needed ----------------------------------------------------------


def test_pixel_rows_are_validated_one_by_one_with_a_reason():
    good = digits_pixels(2)
    rows = {
        "ok-0": good[0],
        "ok-1": good[1],
        "float-255": (np.asarray(good[1]) * 255).round().tolist(),  # float 0-255: rejected, the fix named
        "nan": [float("nan")] + good[0][1:],
        "range": [-0.5] + good[0][1:-1] + [2.5],
        "short": good[0][:63],
        "null": None,
        "null-value": [None] + good[0][1:],
    }
    batch = pa.RecordBatch.from_pydict(
        {
            "example_id": list(rows),
            "source": ["t"] * len(rows),
            "pixels": pa.array(list(rows.values()), pa.list_(pa.float64())),
        }
    )
    valid, rejected = validate_batch(batch, PLAIN)
    assert valid.example_ids.to_pylist() == ["ok-0", "ok-1"]
    np.testing.assert_array_equal(valid.images[1].ravel(), np.asarray(good[1], np.float32))
    assert valid.images.dtype == np.float32 and valid.images.shape == (2, 8, 8, 1)
    assert valid.labels is None and valid.label_out.null_count == 2
    reasons = dict(zip(rejected.example_ids.to_pylist(), rejected.reasons.to_pylist(), strict=True))
    assert reasons["nan"].startswith("not finite")
    assert "look like 0-255 values: store them as integers, or train with --pixel-scale 255" in reasons["float-255"]
    assert reasons["range"].startswith("out of range: values in [-0.5, 2.5]")
    assert reasons["short"] == "wrong size: 63 pixels, the model expects 64 (8x8x1)"
    assert reasons["null"] == "null value: pixels is null"
    assert reasons["null-value"].startswith("not finite")
    raws = dict(zip(rejected.example_ids.to_pylist(), rejected.raws.to_pylist(), strict=True))
    assert raws["range"].startswith("[-0.5, ") and raws["null"] is None


def test_integer_pixels_are_0_255_and_shapes_come_from_height_width_columns():
    images = (load_digits().images[:3] * 255).round().astype(np.uint8)
    pixels = images.reshape(3, -1).tolist()
    pixels[2] = [300] * 64  # not a 0-255 value
    batch = pa.RecordBatch.from_pydict(
        {
            "example_id": ["a", "b", "c"],
            "source": ["t"] * 3,
            "pixels": pa.array(pixels, pa.list_(pa.int32())),
            "height": [8, 4, 8],
            "width": [8, 16, 8],
        }
    )
    valid, rejected = validate_batch(batch, PLAIN)
    assert valid.example_ids.to_pylist() == ["a"]
    np.testing.assert_allclose(valid.images[0].ravel(), images[0].ravel() / 255, rtol=1e-6)
    assert rejected.reasons.to_pylist() == [
        "wrong shape: 4x16x1 image, the model expects 8x8x1",
        "out of range: values in [300, 300]; integer pixels are divided by 255 and must then lie in [0, 1]",
    ]


def test_integer_pixels_follow_one_rule_whatever_their_values():
    """Integer pixels are 0-255 values by their type: a 0/1 row is divided by 255 like any other
    (a near-black image), unless the model was trained with another pixel scale, which it records."""
    binary = (load_digits().images[:2] > 0.5).astype(np.uint8)
    batch = pa.RecordBatch.from_pydict(
        {
            "example_id": ["bin", "u8"],
            "source": ["t"] * 2,
            "height": [8, 8],
            "width": [8, 8],
            "pixels": pa.array([binary[0].ravel().tolist(), (binary[1] * 255).ravel().tolist()], pa.list_(pa.int32())),
        }
    )
    valid, _ = validate_batch(batch, PLAIN)
    np.testing.assert_array_equal(valid.images[0].ravel(), binary[0].ravel() / np.float32(255))
    np.testing.assert_array_equal(valid.images[1].ravel(), binary[1].ravel())
    masks = ModelSpec(PLAIN.image_shape, pixel_scale=1.0)  # a model trained with --pixel-scale 1
    valid, rejected = validate_batch(batch, masks)
    np.testing.assert_array_equal(valid.images[0].ravel(), binary[0].ravel())
    assert rejected.reasons.to_pylist() == [
        "out of range: values in [0, 255]; integer pixels are divided by 1 and must then lie in [0, 1]"
    ]


def test_image_bytes_are_decoded_scaled_or_rejected():
    digit = (load_digits().images[0, ..., 0] * 255).round().astype(np.uint8)
    batch = pa.RecordBatch.from_pydict(
        {
            "example_id": ["png", "junk", "big", "null"],
            "source": ["t"] * 4,
            "image": pa.array([png_bytes(digit), b"not an image", png_bytes(np.zeros((9, 9))), None], pa.binary()),
        }
    )
    valid, rejected = validate_batch(batch, PLAIN)
    np.testing.assert_allclose(valid.images[0, ..., 0], digit / 255, rtol=1e-6)
    reasons = rejected.reasons.to_pylist()
    assert reasons[0].startswith("unreadable image")
    assert reasons[1] == "wrong shape: 9x9x1 image, the model expects 8x8x1"
    assert reasons[2] == "null value: image is null"
    assert rejected.raws.to_pylist()[0].startswith("base64:")


def test_a_conditional_model_rejects_rows_without_a_known_label():
    pixels = digits_pixels(4)
    batch = pa.RecordBatch.from_pydict(
        {
            "example_id": list("abcd"),
            "source": ["t"] * 4,
            "pixels": pa.array(pixels, pa.list_(pa.float32())),
            "label": pa.array(["3", None, "cat", "7"]),
        }
    )
    valid, rejected = validate_batch(batch, CONDITIONAL)
    assert valid.example_ids.to_pylist() == ["a", "d"] and valid.labels.tolist() == [3, 7]
    assert rejected.reasons.to_pylist() == [
        "missing label: label is null and the model is conditional",
        "unknown label: 'cat' is not one of the model's classes (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)",
    ]
    assert rejected.raws.to_pylist() == [None, "cat"]

    no_labels = batch.drop_columns(["label"])
    valid, rejected = validate_batch(no_labels, CONDITIONAL)
    assert valid is None and len(rejected) == 4
    assert set(rejected.reasons.to_pylist()) == {"missing label: the model is conditional and the input has no 'label'"}

    out_of_range = batch.set_column(3, "label", pa.array([3, 10, -1, None]))
    valid, rejected = validate_batch(out_of_range, CONDITIONAL)
    assert valid.example_ids.to_pylist() == ["a"]
    assert [r.split(":")[0] for r in rejected.reasons.to_pylist()] == ["unknown label"] * 2 + ["missing label"]


def test_plans_cut_inputs_into_shards_with_stable_ids(tmp_path):
    table = pa.table({"pixels": pa.array(digits_pixels(25), pa.list_(pa.float32()))})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=10)
    plan = plan_input(str(tmp_path / "a.parquet"), shard_rows=10)
    assert plan.total_rows == 25 and [s.num_rows for s in plan.shards] == [10, 10, 5]
    ids = [i for s in plan.shards for b in s.read(4) for i in b.column("example_id").to_pylist()]
    assert ids == [f"a.parquet:{i}" for i in range(25)]

    holdout = training_split(load_digits(), seed=0).holdout
    test_part = plan_input("digits:test", split_seed=0)
    assert (
        test_part.total_rows == len(holdout) and test_part.shards[0].batch.column("source")[0].as_py() == "digits:test"
    )
    assert plan_input("digits:holdout", split_seed=1).total_rows == len(holdout)  # the holdout ignores the seed
    with pytest.raises(ValueError, match="digits:test"):
        plan_input("digits:tset")


def test_help_documents_every_option():
    from click.testing import CliRunner

    from pipeline.cli.main import main

    result = CliRunner().invoke(main, ["score", "--help"])
    assert result.exit_code == 0, result.output
    for option in (
        "--model",
        "--input",
        "--output",
        "--iwae-k",
        "--fpr",
        "--batch-size",
        "--shape",
        "--split-seed",
        "--shard-rows",
        "--pixel-scores",
        "--runner",
        "--direct-num-workers",
        "--direct-running-mode",
        "pipeline option",
    ):
        assert option in result.output, option


def test_the_cli_and_beam_style_flags_build_the_same_options_with_one_set_of_defaults():
    import click
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    from pipeline.beam.defaults import DEFAULT_INPUT
    from pipeline.beam.options import RUNNER_OPTIONS
    from pipeline.cli.score import score_command

    parsed = ScoreOptions.from_argv(["--output", "out"])
    runner = {
        "runner": parsed.view_as(StandardOptions).runner,
        "direct_num_workers": parsed.view_as(DirectOptions).direct_num_workers,
        "direct_running_mode": parsed.view_as(DirectOptions).direct_running_mode,
    }
    context = click.Context(score_command)
    clicked = {p.name: p.get_default(context) for p in score_command.params if p.name not in ("beam_args", "help")}
    assert set(clicked) == (ScoreOptions.option_names() | set(RUNNER_OPTIONS)) - {"work_dir"}  # work_dir: vae's
    for name, default in clicked.items():
        if name == "input":  # the command needs one (issue 21); the job alone reads the built-in digits
            assert not isinstance(default, str) and parsed.input is None and DEFAULT_INPUT == "digits"
        elif name != "output":
            assert default == (runner[name] if name in RUNNER_OPTIONS else getattr(parsed, name)), name

    flags = ["--model", "m.keras", "--output", "out", "--iwae-k", "3", "--batch_size", "64", "--shape", "8x8"]
    argv = ScoreOptions.from_argv([*flags, "--partition", "date=2026-01-01", "--direct_running_mode", "in_memory"])
    values = ScoreOptions.of(
        model="m.keras",
        output="out",
        iwae_k=3,
        batch_size=64,
        shape=(8, 8, 1),
        partition="date=2026-01-01",
        direct_running_mode="in_memory",
    )
    for name in ScoreOptions.option_names():
        assert getattr(argv, name) == getattr(values, name), name
    assert argv.view_as(DirectOptions).direct_running_mode == values.view_as(DirectOptions).direct_running_mode


def test_work_dir_names_the_store_the_model_is_looked_up_in(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from pipeline.cli.main import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    work = tmp_path / "work"
    args = ["--work-dir", str(work), "score", "--model", "models:/absent@champion", "--input", "digits:holdout"]
    result = CliRunner().invoke(main, [*args, "--output", str(tmp_path / "o")])
    assert result.exit_code == 1, result.output
    assert f"no registered model named 'absent' in sqlite:///{work / 'mlflow.db'}" in result.output


def test_runner_options_and_extra_beam_flags_reach_the_pipeline():
    from apache_beam.options.pipeline_options import DirectOptions, GoogleCloudOptions, WorkerOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from pipeline.beam.runner import make_pipeline

    options = ScoreOptions.of(
        ["--job_name=nightly", "--direct_num_workers=3"], output="out", direct_running_mode="in_memory"
    )
    pipeline = make_pipeline(options)
    assert isinstance(pipeline.runner, FnApiRunner)
    direct = pipeline.options.view_as(DirectOptions)
    assert (direct.direct_running_mode, direct.direct_num_workers) == ("in_memory", 3)
    assert pipeline.options.view_as(GoogleCloudOptions).job_name == "nightly"
    assert pipeline.options.view_as(WorkerOptions).default_sdk_harness_log_level == "WARNING"
    assert pipeline.options.get_all_options()["batch_size"] == options.batch_size  # the job's own flags travel too


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"iwae_k": 0}, "--iwae-k must be at least 1"),
        ({"fpr": 1.0}, "--fpr must be in (0, 1)"),
        ({"batch_size": 0}, "--batch-size must be at least 1"),
        ({"shard_rows": 0}, "--shard-rows must be at least 1"),
        ({"partition": "../escape"}, "expected KEY=VALUE"),
        ({"output": None}, "--output is required"),
    ],
)
def test_options_the_job_cannot_take_are_refused_naming_the_flag(values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ScoreOptions.of(**{"output": "out", **values})
    with pytest.raises(TypeError, match="no option iwae"):
        ScoreOptions.of(output="out", iwae=3)


# --- real pipelines with trained models ---------------------------------------------------------


@pytest.fixture(scope="module")
def plain_uri(trained_plain):
    return f"models:/{trained_plain.model_name}/{trained_plain.version}"


@pytest.mark.slow
def test_pipeline_scores_equal_score_images(trained_plain, plain_uri, tmp_path):
    from scoring.calibration import Calibration
    from scoring.detector import score_images

    model, test = trained_plain.model, trained_plain.split.holdout
    options = ScoreOptions.of(
        model=plain_uri, output=tmp_path, iwae_k=3, fpr=0.2, batch_size=64, shard_rows=100, **FAST
    )
    summary = score_dataset(options, input_data=test, scored_at=WHEN)
    assert (summary.rows_read, summary.rows_scored, summary.rows_rejected) == (len(test), len(test), 0)

    table = read(tmp_path / "scores")
    assert table.schema.equals(SCORES_SCHEMA)
    assert read(tmp_path / "rejects").schema.equals(REJECTS_SCHEMA)
    order = np.argsort(test.example_ids)
    assert table.column("example_id").to_pylist() == test.example_ids[order].tolist()
    expected = score_images(model, test.images[order], num_samples=model.score_samples, seed=model.score_seed, iwae_k=3)
    for name in ("anomaly_score", "neg_elbo", "reconstruction_nll", "kl", "iwae_nll"):
        # atol: anomaly_score is a sum of standardised terms, often near zero
        np.testing.assert_allclose(table.column(name).to_numpy(), expected[name], rtol=1e-5, atol=1e-5, err_msg=name)
    # the default anomaly_score is not the ELBO alone: it adds the latent term the model stores
    assert model.anomaly["method"] == "elbo_latent_knn_rarity_rate" and "log_rate_center" in model.anomaly
    assert not np.allclose(expected["anomaly_score"], expected["neg_elbo"])
    calibration = Calibration.from_dict(model.calibration).with_fpr(0.2)
    assert calibration.score == "anomaly_score"
    anomaly_score = table.column("anomaly_score").to_numpy()
    np.testing.assert_allclose(table.column("p_value").to_numpy(), calibration.p_values(anomaly_score))
    assert set(table.column("threshold").to_pylist()) == {calibration.threshold} == {summary.threshold}
    assert table.column("is_anomaly").to_pylist() == calibration.is_anomaly(anomaly_score).tolist()
    assert summary.anomalies == int(calibration.is_anomaly(anomaly_score).sum())
    assert table.column("label").to_pylist() == test.labels[order].tolist()
    assert set(table.column("model_name").to_pylist()) == {trained_plain.model_name}
    assert set(table.column("model_version").to_pylist()) == {str(trained_plain.version)}
    assert set(table.column("scored_at").to_pylist()) == {WHEN}
    assert duckdb_rows(tmp_path / "scores") == len(test)
    top = top_anomalies(tmp_path / "scores", n=3)
    assert top.column("anomaly_score").to_pylist() == sorted(anomaly_score, reverse=True)[:3]


@pytest.fixture
def mixed_parquet(tmp_path):
    """A folder of two Parquet files: good rows, bad rows, and a file with no pixel column."""
    folder = tmp_path / "input"
    folder.mkdir()
    good = digits_pixels(6)
    pixels = [
        good[0],
        good[1],
        (np.asarray(good[2]) * 255).round().tolist(),
        [float("nan")] * 64,
        [1.5] * 64,
        good[3][:60],
        None,
        good[4],
        good[5],
    ]
    ids = ["g0", "g1", "g255", "nan", "range", "short", "null", None, "g5"]
    table = pa.table({"example_id": ids, "pixels": pa.array(pixels, pa.list_(pa.float32()))})
    pq.write_table(table, folder / "mixed.parquet", row_group_size=4)
    pq.write_table(pa.table({"example_id": ["x1", "x2"], "label": [1, 2]}), folder / "no_pixels.parquet")
    return folder


@pytest.mark.slow
def test_rows_in_equal_rows_scored_plus_rejected(plain_uri, mixed_parquet, tmp_path):
    summary = score(plain_uri, str(mixed_parquet), tmp_path / "out", shard_rows=4, max_reject_rate=1, **FAST)
    assert (summary.rows_read, summary.rows_scored, summary.rows_rejected) == (11, 4, 7)
    scores, rejects = read(tmp_path / "out/scores"), read(tmp_path / "out/rejects")
    assert scores.column("example_id").to_pylist() == ["g0", "g1", "g5", "mixed.parquet:7"]
    assert set(scores.column("source").to_pylist()) == {str(mixed_parquet / "mixed.parquet")}
    reasons = dict(zip(rejects.column("example_id").to_pylist(), rejects.column("reason").to_pylist(), strict=True))
    assert "store them as integers, or train with --pixel-scale 255" in reasons["g255"]  # float 0-255
    assert {k: v.split(":")[0] for k, v in reasons.items()} == {
        "g255": "out of range",
        "nan": "not finite",
        "range": "out of range",
        "short": "wrong size",
        "null": "null value",
        "x1": "missing column",
        "x2": "missing column",
    }
    assert summary.reject_reasons == {
        "not finite": 1,
        "out of range": 2,
        "wrong size": 1,
        "null value": 1,
        "missing column": 2,
    }
    assert set(rejects.column("model_version").to_pylist()) == {summary.model_version}
    assert duckdb_rows(tmp_path / "out/scores") + duckdb_rows(tmp_path / "out/rejects") == 11

    by_reason = duckdb.sql(
        f"select split_part(reason, ':', 1) as kind, count(*) from read_parquet('{tmp_path}/out/rejects/*.parquet') "
        "group by kind order by kind"
    ).fetchall()
    assert dict(by_reason) == summary.reject_reasons


@pytest.mark.slow
def test_a_rerun_gives_identical_output(plain_uri, mixed_parquet, tmp_path):
    out = tmp_path / "out"
    first = score(plain_uri, str(mixed_parquet), out, shard_rows=4, batch_size=3, max_reject_rate=1, **FAST)
    scores, rejects = read(out / "scores"), read(out / "rejects")
    second = score(plain_uri, str(mixed_parquet), out, shard_rows=4, batch_size=3, max_reject_rate=1, **FAST)
    assert (first.rows_scored, first.rows_rejected) == (second.rows_scored, second.rows_rejected)
    assert without_scored_at(read(out / "scores")).equals(without_scored_at(scores))
    assert without_scored_at(read(out / "rejects")).equals(without_scored_at(rejects))
    assert datasets_and_no_leftovers(out) == ["rejects", "scores"]


@pytest.mark.slow
def test_a_failure_mid_write_leaves_the_older_output_intact(plain_uri, tmp_path):
    out = tmp_path / "out"
    score(plain_uri, "digits:test", out, **FAST)
    before = read(out / "scores")

    # Two row groups; the second's page header is garbage, so reading it fails after the
    # first row group has been scored and written to the (temporary) sink.
    broken = tmp_path / "broken.parquet"
    table = pa.table({"pixels": pa.array(digits_pixels(20), pa.list_(pa.float32()))})
    pq.write_table(table, broken, row_group_size=10, compression="none")
    column = pq.ParquetFile(broken).metadata.row_group(1).column(0)
    offset = column.dictionary_page_offset or column.data_page_offset
    data = bytearray(broken.read_bytes())
    data[offset : offset + 16] = b"\xff" * 16
    broken.write_bytes(bytes(data))

    with pytest.raises(Exception, match="row groups"):
        score(plain_uri, str(broken), out, shard_rows=10, batch_size=5, **FAST)
    assert read(out / "scores").equals(before)
    assert datasets_and_no_leftovers(out) == ["rejects", "scores"]

    from click.testing import CliRunner

    from pipeline.cli.main import main

    args = ["--input", str(broken), "--output", str(out), "--shard-rows", "10", "--direct-running-mode", "in_memory"]
    result = CliRunner().invoke(main, ["score", "--model", plain_uri, *args])
    assert result.exit_code == 1 and "left as it was" in result.output and "row groups" in result.output
    assert read(out / "scores").equals(before)


@pytest.mark.slow
def test_multi_processing_mode_matches_in_process(plain_uri, tmp_path):
    """Two worker processes, each loading the model in DoFn.setup (the default mode is threads)."""
    in_process = score(plain_uri, "digits:test", tmp_path / "a", shard_rows=100, scored_at=WHEN, **FAST)
    multi = score(
        plain_uri, "digits:test", tmp_path / "b", shard_rows=100, scored_at=WHEN, direct_running_mode="multi_processing"
    )
    assert multi.rows_scored == in_process.rows_scored == HOLDOUT_ROWS
    assert len(list((tmp_path / "b/scores").glob("*.parquet"))) >= 1
    a, b = read(tmp_path / "a/scores"), read(tmp_path / "b/scores")
    assert a.column("example_id").equals(b.column("example_id"))
    for name in ("neg_elbo", "p_value"):
        np.testing.assert_allclose(b.column(name).to_numpy(), a.column(name).to_numpy(), rtol=1e-6)


@pytest.mark.slow
def test_conditional_model_scores_with_labels(trained_conditional, tmp_path):
    from scoring.detector import score_images

    model = trained_conditional.model
    digits = load_digits()
    x = (digits.images[:40] * 255).round().astype(np.uint8)
    y = digits.labels[:40].copy()
    y[[3, 7]] = [10, 42]  # not classes of the model
    np.savez(tmp_path / "digits.npz", x=x, y=y)
    uri = f"models:/{trained_conditional.model_name}/{trained_conditional.version}"
    summary = score(uri, str(tmp_path / "digits.npz"), tmp_path / "out", **FAST)
    assert (summary.rows_scored, summary.rows_rejected) == (38, 2)
    keep = np.setdiff1d(np.arange(40), [3, 7])
    scores = ds.dataset(tmp_path / "out/scores").to_table()
    index = np.array([int(i.split(":")[1]) for i in scores.column("example_id").to_pylist()])
    np.testing.assert_array_equal(np.sort(index), keep)
    expected = score_images(model, x[index] / 255.0, y[index], num_samples=model.score_samples, seed=model.score_seed)
    np.testing.assert_allclose(scores.column("neg_elbo").to_numpy(), expected["neg_elbo"], rtol=1e-5)
    assert scores.column("label").to_pylist() == y[index].tolist()
    rejects = read(tmp_path / "out/rejects")
    assert rejects.column("example_id").to_pylist() == ["digits.npz:3", "digits.npz:7"]
    assert rejects.column("raw").to_pylist() == ["10", "42"]


@pytest.mark.slow
def test_cli_scores_a_png_folder(trained_plain, mlflow_store, tmp_path):
    from click.testing import CliRunner

    from pipeline.cli.main import main

    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(load_digits().images[:5]):
        (folder / f"digit-{i}.png").write_bytes(png_bytes((image * 255).round()))
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "gone.png").symlink_to(tmp_path / "deleted.png")  # a link to nothing: a reject, not a failed run
    result = CliRunner().invoke(
        main,
        [
            "score",
            "--model",
            f"models:/{trained_plain.model_name}@champion",
            "--input",
            str(folder),
            "--output",
            str(tmp_path / "out"),
            "--direct-running-mode",
            "in_memory",
            "--direct-num-workers",
            "1",
            "--max-reject-rate",
            "0.3",
            "--",
            "--job_name=score-test",  # an extra Beam pipeline option, passed through after --
        ],
    )
    assert result.exit_code == 0, result.output
    assert "passed through: --job_name=score-test" in result.output
    for text in ("rows read:  7", "scored:     5", "rejected:   2", "2 x unreadable image", "throughput:"):
        assert text in result.output, text
    scores = read(tmp_path / "out/scores")
    assert scores.column("example_id").to_pylist() == [f"digit-{i}.png" for i in range(5)]
    rejects = read(tmp_path / "out/rejects").sort_by("example_id")
    assert rejects.column("example_id").to_pylist() == ["broken.png", "gone.png"]
    assert (
        rejects.column("reason").to_pylist()[1] == "unreadable image: cannot read the file (No such file or directory)"
    )

    missing = CliRunner().invoke(
        main, ["score", "--model", "models:/no-such-model@champion", "--input", "digits", "--output", "x"]
    )
    assert missing.exit_code != 0 and "no-such-model" in missing.output


@pytest.mark.slow
def test_pixel_scores_sum_to_the_reconstruction_nll_and_are_null_unless_asked(trained_plain, tmp_path):
    from click.testing import CliRunner

    from pipeline.cli.main import main
    from scoring.elbo import pixel_nll

    digits = load_digits()
    np.savez(tmp_path / "few.npz", x=digits.images[:6, ..., 0], y=digits.labels[:6])
    uri = f"models:/{trained_plain.model_name}/{trained_plain.version}"
    args = ["score", "--model", uri, "--input", str(tmp_path / "few.npz"), "--direct-running-mode", "in_memory"]
    result = CliRunner().invoke(main, [*args, "--output", str(tmp_path / "with"), "--pixel-scores"])
    assert result.exit_code == 0, result.output
    table = read(tmp_path / "with" / "scores")
    assert table.schema.equals(SCORES_SCHEMA) and table.num_rows == 6
    pixels = np.array(table.column("pixel_nll").to_pylist(), dtype=np.float64)
    assert pixels.shape == (6, 8 * 8 * 1)
    np.testing.assert_allclose(pixels.sum(axis=1), table.column("reconstruction_nll").to_numpy(), rtol=1e-3)
    model = trained_plain.model
    order = [int(i.rsplit(":", 1)[1]) for i in table.column("example_id").to_pylist()]
    expected = pixel_nll(model, digits.images[order], num_samples=model.score_samples, seed=model.score_seed)
    np.testing.assert_allclose(pixels, expected.reshape(6, -1), rtol=1e-4, atol=1e-5)  # row-major (H, W, C)

    result = CliRunner().invoke(main, [*args, "--output", str(tmp_path / "without")])
    assert result.exit_code == 0, result.output
    plain = read(tmp_path / "without" / "scores")
    assert plain.schema.equals(SCORES_SCHEMA) and plain.column("pixel_nll").null_count == 6
    np.testing.assert_array_equal(plain.column("neg_elbo").to_numpy(), table.column("neg_elbo").to_numpy())


@pytest.mark.slow
def test_run_takes_beam_style_arguments_and_an_injected_pipeline(plain_uri, tmp_path):
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from pipeline.beam.score_job import run

    summary = run(
        ["--model", plain_uri, "--input", "digits:test", "--output", str(tmp_path), "--batch_size", "50"],
        test_pipeline=beam.Pipeline(runner=FnApiRunner()),
    )
    assert summary.rows_scored == HOLDOUT_ROWS and summary.scores_path == tmp_path / "scores"
    assert duckdb_rows(tmp_path / "scores") == HOLDOUT_ROWS


@pytest.mark.slow
def test_a_partition_is_written_and_replaced_alone(plain_uri, tmp_path):
    out = tmp_path / "daily"
    first = score(plain_uri, "digits:test", out, partition="date=2026-11-19", **FAST)
    score(plain_uri, "digits:validation", out, partition="date=2026-11-20", **FAST)
    assert first.scores_path == out / "scores" / "date=2026-11-19"
    assert (out / "rejects" / "date=2026-11-20").is_dir()
    rerun = score(plain_uri, "digits:validation", out, partition="date=2026-11-19", **FAST)
    validation_rows = rerun.rows_scored
    assert validation_rows == len(training_split(load_digits(), seed=0).validation)
    per_day = duckdb.sql(
        f"SELECT date, count(*) FROM read_parquet('{out}/scores/*/*.parquet', hive_partitioning = true) "
        "GROUP BY date ORDER BY date"
    ).fetchall()
    assert [(str(day), n) for day, n in per_day] == [("2026-11-19", validation_rows), ("2026-11-20", validation_rows)]
    assert sorted(p.name for p in (out / "scores").iterdir()) == ["date=2026-11-19", "date=2026-11-20"]
    assert datasets_and_no_leftovers(out) == ["rejects", "scores"]
    with pytest.raises(ValueError, match="KEY=VALUE"):
        score(plain_uri, "digits:test", out, partition="../escape", **FAST)


@pytest.mark.slow
def test_scores_and_rejects_become_visible_together(plain_uri, mixed_parquet, tmp_path, monkeypatch):
    """Both datasets are complete in the new version before anything is switched, and one rename of
    the versions pointer switches both; if that fails, both stay the old run's."""
    from pipeline.outputs import atomic
    from pipeline.outputs.atomic import versions

    out = tmp_path / "out"
    later = datetime(2025, 6, 7, 8, 9, 10, tzinfo=UTC)
    first = score(plain_uri, str(mixed_parquet), out, shard_rows=4, scored_at=WHEN, max_reject_rate=1, **FAST)

    def stamps(folder) -> set:
        return set(read(folder).column("scored_at").to_pylist())

    real, seen = versions._switch, []

    def switch(versions, version, previous):
        new = [versions / version / name for name in ("scores", "rejects")]
        public = [out / "scores", out / "rejects"]
        seen.append(([read(p).num_rows for p in new], [stamps(p) for p in new], [stamps(p) for p in public]))
        return real(versions, version, previous)

    monkeypatch.setattr(versions, "_switch", switch)
    second = score(plain_uri, str(mixed_parquet), out, shard_rows=4, scored_at=later, max_reject_rate=1, **FAST)
    # one switch, with both new datasets complete and both public ones still the old run
    assert seen == [([first.rows_scored, first.rows_rejected], [{later}, {later}], [{WHEN}, {WHEN}])]
    assert stamps(out / "scores") == stamps(out / "rejects") == {later}
    assert [stamps(p) for p in atomic.snapshots(out / "scores", out / "rejects")] == [{later}, {later}]
    assert second.scores_path == out / "scores" and datasets_and_no_leftovers(out) == ["rejects", "scores"]
    names = sorted(p.name for p in (out / "scores").iterdir() if not p.name.startswith("_"))
    assert names and all(n.startswith("part-") and n.endswith(".parquet") for n in names)  # part-RUN-SSSSS-of-NNNNN

    def failing(versions, version, previous):
        raise OSError("switching failed")

    monkeypatch.setattr(versions, "_switch", failing)
    with pytest.raises(OSError, match="switching failed"):
        score(plain_uri, str(mixed_parquet), out, shard_rows=4, scored_at=WHEN, max_reject_rate=1, **FAST)
    assert stamps(out / "scores") == stamps(out / "rejects") == {later}
    assert datasets_and_no_leftovers(out) == ["rejects", "scores"]


@pytest.mark.slow
def test_a_second_run_writing_the_same_output_is_refused(plain_uri, tmp_path):
    """Another run holds OUTPUT/scores/date=1 (and rejects/date=1): a run for the same day is refused
    before its pipeline starts, a run for another day goes ahead at the same time."""
    from pipeline.outputs.atomic import DatasetLockedError, atomic_datasets

    out = tmp_path / "out"
    day = ("scores/date=2026-11-19", "rejects/date=2026-11-19")
    with (
        pytest.raises(KeyError, match="the holder gives up"),
        atomic_datasets(*(out / d for d in day), staging=out / ".staging"),
    ):
        with pytest.raises(
            DatasetLockedError, match=r"date=2026-11-19 is being written by another run: its lock .*pid"
        ):
            score(plain_uri, "digits:test", out, partition="date=2026-11-19", **FAST)
        other = score(plain_uri, "digits:test", out, partition="date=2026-11-20", **FAST)
        raise KeyError("the holder gives up")
    assert other.rows_scored == HOLDOUT_ROWS
    assert sorted(p.name for p in (out / "scores").iterdir()) == ["date=2026-11-20"]
    assert datasets_and_no_leftovers(out) == ["rejects", "scores"]


def test_a_mistyped_option_is_an_error_not_a_beam_option(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli.main import main

    result = CliRunner().invoke(main, ["score", "--output", str(tmp_path), "--partiton", "date=2026-01-01"])
    assert result.exit_code == 2
    assert "No such option '--partiton'. Did you mean '--partition'?" in result.output
    assert not (tmp_path / "scores").exists()


def _cli_options(monkeypatch, tmp_path, *args):
    """(result, the ScoreOptions ``vae score ARGS`` hands the job): the job itself is replaced."""
    from click.testing import CliRunner

    from pipeline.beam import score_job
    from pipeline.cli.main import main

    seen = []

    class Summary:
        def lines(self):
            return ["done"]

    def fake(options, **_):
        seen.append(options)
        return Summary()

    monkeypatch.setattr(score_job, "score_dataset", fake)
    result = CliRunner().invoke(main, ["score", "--input", "digits:holdout", "--output", str(tmp_path / "out"), *args])
    return result, (seen[0] if seen else None)


def test_beam_flags_after_the_double_dash_replace_the_defaults_of_the_cli(monkeypatch, tmp_path):
    from apache_beam.options.pipeline_options import DirectOptions, GoogleCloudOptions, StandardOptions

    from pipeline.beam.defaults import DEFAULT_BATCH_SIZE
    from pipeline.beam.runner import make_pipeline

    after = ["--direct_num_workers=3", "--batch_size", "7", "--direct_running_mode=in_memory", "--job_name=nightly"]
    result, options = _cli_options(monkeypatch, tmp_path, "--shard-rows", "9", "--", *after)
    assert result.exit_code == 0, result.output
    assert (options.batch_size, options.shard_rows) == (7, 9)
    pipeline = make_pipeline(options)
    direct = pipeline.options.view_as(DirectOptions)
    assert (direct.direct_num_workers, direct.direct_running_mode) == (3, "in_memory")
    assert pipeline.options.view_as(GoogleCloudOptions).job_name == "nightly"
    assert pipeline.options.get_all_options()["batch_size"] == 7

    result, options = _cli_options(monkeypatch, tmp_path, "--", "--runner", "DataflowRunner")
    assert result.exit_code == 0, result.output
    assert options.view_as(StandardOptions).runner == "DataflowRunner" == options.runner

    result, options = _cli_options(monkeypatch, tmp_path)  # nothing after --: the defaults
    assert (options.runner, options.view_as(DirectOptions).direct_num_workers, options.batch_size) == (
        "DirectRunner",
        2,
        DEFAULT_BATCH_SIZE,
    )


def test_an_option_given_before_and_after_the_double_dash_is_an_error_naming_both(monkeypatch, tmp_path):
    result, options = _cli_options(monkeypatch, tmp_path, "--direct-num-workers", "4", "--", "--direct_num_workers=3")
    assert result.exit_code == 2 and options is None
    assert "--direct-num-workers 4 and, after --, --direct_num_workers=3 set the same option" in result.output

    result, options = _cli_options(monkeypatch, tmp_path, "--batch-size", "5", "--", "--batch-size", "6")
    assert result.exit_code == 2 and options is None
    assert "--batch-size 5 and, after --, --batch-size 6 set the same option" in result.output

    # the library: keyword values are explicit, defaults= give way
    with pytest.raises(ValueError, match=re.escape("runner='DirectRunner' and --runner=DataflowRunner")):
        ScoreOptions.of(["--runner=DataflowRunner"], output="out", runner="DirectRunner")
    options = ScoreOptions.of(
        ["--direct_num_workers=8", "--runner=DataflowRunner", "--batch_size=7"],
        output="out",
        defaults={"direct_num_workers": 2, "runner": "DirectRunner", "batch_size": 1024, "shard_rows": 5},
    )
    assert (options.runner, options.batch_size, options.shard_rows) == ("DataflowRunner", 7, 5)
    assert options.get_all_options()["direct_num_workers"] == 8


def test_the_shard_size_default_is_written_once_and_the_cli_defaults_stay_light():
    import inspect
    import subprocess
    import sys

    from pipeline.beam import defaults
    from training.data import reader

    assert defaults.DEFAULT_SHARD_ROWS is reader.DEFAULT_SHARD_ROWS
    for module in (defaults, reader):
        assert "DEFAULT_SHARD_ROWS =" not in inspect.getsource(module), module.__name__
    code = "import sys, pipeline.beam.defaults; print(sorted({'numpy', 'pyarrow'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_the_default_batch_holds_a_fixed_number_of_pixels_between_two_bounds():
    from pipeline.beam.defaults import DEFAULT_BATCH_PIXELS, MAX_BATCH_ROWS, MIN_BATCH_ROWS, batch_rows

    assert batch_rows(None, (8, 8, 1)) == MAX_BATCH_ROWS == DEFAULT_BATCH_PIXELS // 64  # small images: many rows
    assert batch_rows(None, (16, 16, 1)) == 2048
    assert batch_rows(None, (28, 28, 1)) == batch_rows(None, (64, 64, 3)) == MIN_BATCH_ROWS  # memory first
    assert batch_rows(7, (28, 28, 1)) == 7  # --batch-size wins
