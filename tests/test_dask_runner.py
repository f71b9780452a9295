"""``--runner DaskRunner``: both jobs on a real dask.distributed local cluster of two worker processes,
against the DirectRunner on the same input and seed (identical rows), with both of ``vae score``'s
datasets written, the model loaded once per worker process, and the work spread over both workers.

The cluster is started once for the module (worker processes import TensorFlow: seconds each); the
``vae`` command test starts its own, as a user's run does.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipeline.beam.options import GenerateOptions, ScoreOptions
from pipeline.outputs.files import is_temporary
from pipeline.outputs.png import decode_png
from training.data import load_digits

FAST = {"direct_running_mode": "in_memory", "direct_num_workers": 1}
WHEN = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def read(path) -> pa.Table:
    return ds.dataset(path, format="parquet").to_table().sort_by("example_id")


def assert_same_rows(
    a: pa.Table, b: pa.Table, floats=("anomaly_score", "neg_elbo", "reconstruction_nll", "kl", "p_value")
):
    """Equal tables; the float scores to 1e-6 (TensorFlow in another process sums in another order,
    as the DirectRunner's own modes do: tests/test_score_pipeline.py)."""
    assert a.schema.equals(b.schema) and a.num_rows == b.num_rows
    for name in a.column_names:
        if name in floats:
            x, y = a.column(name).combine_chunks(), b.column(name).combine_chunks()
            if pa.types.is_list(x.type):
                assert x.value_lengths().equals(y.value_lengths()), name
                x, y = x.flatten(), y.flatten()
            np.testing.assert_allclose(x.to_numpy(), y.to_numpy(), rtol=1e-6, atol=1e-6, err_msg=name)
        else:
            assert a.column(name).equals(b.column(name)), name


def _count_model_loads() -> None:
    """On a worker: count :meth:`ModelRef._load` calls from now on, with an empty model cache."""
    from training import registry

    registry._LOADED.clear()
    original = registry.ModelRef._load
    registry._LOAD_CALLS = 0  # type: ignore[attr-defined]

    def counted(self):
        registry._LOAD_CALLS += 1  # type: ignore[attr-defined]
        return original(self)

    registry.ModelRef._load = counted


def _model_loads() -> int:
    from training import registry

    return getattr(registry, "_LOAD_CALLS", -1)


def _worker_settings(dask_worker) -> dict:
    """On a worker: what :data:`pipeline.beam.dask_runner.WORKER_CONFIG` and the job's log set-up change."""
    import logging
    import os

    handlers = logging.getLogger("pipeline").handlers
    return {
        "profiler": any(name.startswith("profile") for name in dask_worker.periodic_callbacks),
        "trim_threshold": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
        "formatter": type(handlers[0].formatter).__name__ if handlers else None,
    }


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client

    from pipeline.beam.dask_runner import local_cluster

    with local_cluster(workers=2) as running, Client(running.scheduler_address) as client:
        yield running.scheduler_address, client


@pytest.fixture(scope="module")
def model_uri(trained_conditional):
    return f"models:/{trained_conditional.model_name}/{trained_conditional.version}"


@pytest.fixture(scope="module")
def mixed_input(tmp_path_factory):
    """Digits as a Parquet file of 600 rows in 6 row groups, 7 of them bad in 3 ways, one row group clean."""
    folder = tmp_path_factory.mktemp("dask-input")
    digits = load_digits()
    pixels = (digits.images[:600].reshape(600, -1) * 16).round().astype(np.uint8)
    rows = [list(map(int, p)) for p in pixels]
    labels = digits.labels[:600].astype(np.int64).tolist()
    rows[3] = rows[3][:50]  # wrong size
    rows[250] = rows[250][:10]
    labels[120], labels[121] = 42, -1  # unknown labels for a conditional model
    for i in (310, 311, 312):
        rows[i] = None  # null pixels
    table = pa.table(
        {
            "example_id": [f"d{i}" for i in range(600)],
            "pixels": pa.array(rows, pa.list_(pa.uint8())),
            "height": pa.array(np.full(600, 8), pa.int32()),
            "width": pa.array(np.full(600, 8), pa.int32()),
            "label": labels,
        }
    )
    path = folder / "mixed.parquet"
    pq.write_table(table, path, row_group_size=100)
    return path


def score(model: str, input: str, output, **options):
    from pipeline.beam.score_job import score_dataset

    return score_dataset(ScoreOptions.of(model=model, input=input, output=output, **options), scored_at=WHEN)


@pytest.mark.slow
def test_score_on_dask_matches_the_direct_runner_both_datasets_one_load_per_worker(
    cluster, model_uri, mixed_input, tmp_path
):
    address, client = cluster
    client.run(_count_model_loads)
    direct = score(model_uri, str(mixed_input), tmp_path / "direct", shard_rows=100, batch_size=64, **FAST)
    dask = score(
        model_uri,
        str(mixed_input),
        tmp_path / "dask",
        shard_rows=100,
        batch_size=64,
        runner="DaskRunner",
        dask_address=address,
    )
    assert (dask.rows_read, dask.rows_scored, dask.rows_rejected) == (600, 593, 7)
    assert (dask.rows_scored, dask.rows_rejected, dask.anomalies) == (
        direct.rows_scored,
        direct.rows_rejected,
        direct.anomalies,
    )
    assert dask.reject_reasons == direct.reject_reasons == {"wrong size": 2, "unknown label": 2, "null value": 3}
    for dataset in ("scores", "rejects"):  # the same rows, every column
        assert_same_rows(read(tmp_path / "dask" / dataset), read(tmp_path / "direct" / dataset))
    # one file per shard with rows (shard 0 always writes both), complete, named after the shard
    scores = sorted(p.name for p in (tmp_path / "dask/scores").glob("*.parquet"))
    rejects = sorted(p.name for p in (tmp_path / "dask/rejects").glob("*.parquet"))
    assert len(scores) == 6 and all(name.endswith(f"-{i:05d}-of-00006.parquet") for i, name in enumerate(scores))
    assert [name[-23:] for name in rejects] == [f"-{i:05d}-of-00006.parquet" for i in (0, 1, 2, 3)]
    assert not [p for p in (tmp_path / "dask").rglob("*") if is_temporary(p.name)]
    # six shards (six Dask tasks) over two worker processes: both worked, each loaded the model once
    loads = client.run(_model_loads)
    assert sorted(loads.values()) == [1, 1], loads
    # no profiler growing by the task, glibc's own mmap threshold, our progress lines in our format
    for settings in client.run(_worker_settings).values():
        assert settings["profiler"] is False and settings["trim_threshold"] is None, settings
        assert settings["formatter"] in ("TimedFormatter", "PlainFormatter"), settings


@pytest.mark.slow
def test_an_input_of_no_rows_reaches_the_guards_on_dask_as_on_the_direct_runner(cluster, model_uri, tmp_path):
    address, _ = cluster
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"pixels": pa.array([], pa.list_(pa.uint8()))}), empty)
    for name, runner in (("direct", FAST), ("dask", {"runner": "DaskRunner", "dask_address": address})):
        summary = score(model_uri, str(empty), tmp_path / name, min_rows=0, **runner)
        assert (summary.rows_read, summary.rows_scored, summary.rows_rejected) == (0, 0, 0)
        assert read(tmp_path / name / "scores").num_rows == read(tmp_path / name / "rejects").num_rows == 0
    assert read(tmp_path / "dask" / "scores").schema == read(tmp_path / "direct" / "scores").schema
    with pytest.raises(Exception, match="0 rows") as refused:  # the default --min-rows guard, not an Arrow error
        score(model_uri, str(empty), tmp_path / "guarded", runner="DaskRunner", dask_address=address)
    assert "FieldRef" not in str(refused.value)


@pytest.mark.slow
def test_generate_on_dask_writes_the_same_images_as_the_direct_runner(cluster, model_uri, tmp_path):
    from pipeline.beam.generate_job import generate_dataset

    address, _ = cluster
    common = {"model": model_uri, "method": "conditional", "per_label": 60, "seed": 7, "shards": 5}
    direct = generate_dataset(GenerateOptions.of(output=tmp_path / "direct", **common, **FAST))
    dask = generate_dataset(
        GenerateOptions.of(output=tmp_path / "dask", runner="DaskRunner", dask_address=address, **common)
    )
    assert dask.rows == direct.rows == 600 and dask.counts == direct.counts
    a = read_synthetic_sorted(tmp_path / "direct")
    b = read_synthetic_sorted(tmp_path / "dask")
    assert_same_rows(
        b.drop_columns(["created_at", "image_png"]), a.drop_columns(["created_at", "image_png"]), ("pixels",)
    )
    pngs = [
        np.abs(decode_png(x).astype(int) - decode_png(y)).max()
        for x, y in zip(a["image_png"].to_pylist(), b["image_png"].to_pylist(), strict=True)
    ]
    assert max(pngs) <= 1  # the same 8-bit images, but for a pixel on a rounding edge


def read_synthetic_sorted(output) -> pa.Table:
    from pipeline.outputs.synthetic import read_synthetic

    return read_synthetic(output / "synthetic", "conditional").sort_by("sample_id")


@pytest.mark.slow
def test_vae_score_starts_a_local_cluster_without_an_address(model_uri, tmp_path):
    from click.testing import CliRunner

    from pipeline.cli.main import main

    args = ["score", "--model", model_uri, "--input", "digits:holdout", "--output", str(tmp_path / "out")]
    result = CliRunner().invoke(main, [*args, "--runner", "DaskRunner", "--dask-workers", "1", "--shard-rows", "100"])
    assert result.exit_code == 0, result.output
    assert "scored:" in result.output
    direct = CliRunner().invoke(main, [*args[:-1], str(tmp_path / "direct"), "--direct-running-mode", "in_memory"])
    assert direct.exit_code == 0, direct.output
    for dataset in ("scores", "rejects"):
        a = read(tmp_path / "direct" / dataset).drop_columns(["scored_at"])
        assert_same_rows(read(tmp_path / "out" / dataset).drop_columns(["scored_at"]), a)


def test_workers_on_dasks_defaults_are_named_and_the_launchers_own_loggers_left_alone(caplog):
    import logging

    from distributed import LocalCluster

    from pipeline.beam.dask_runner import configure_workers

    # Dask's default settings, its worker in this process (no nanny to change this process's environment)
    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster,
        caplog.at_level(logging.WARNING, logger="pipeline.beam.dask_runner"),
    ):
        configure_workers(cluster.scheduler_address)
    assert "1 of 1 Dask workers run with the statistical profiler" in caplog.text
    assert "vae-workers.yaml" in caplog.text
    assert logging.getLogger("pipeline").propagate and not logging.getLogger("pipeline").handlers


def test_the_worker_config_for_an_existing_cluster_is_the_local_clusters():
    import dask

    from pipeline.beam.dask_runner import WORKER_CONFIG, WORKER_CONFIG_DIR

    collected = dask.config.collect(paths=[str(WORKER_CONFIG_DIR)], env={})
    missing = object()
    assert {key: dask.config.get(key, missing, config=collected) for key in WORKER_CONFIG} == WORKER_CONFIG


def test_dask_options_are_checked():
    with pytest.raises(ValueError, match="--dask-address is for --runner DaskRunner, not DirectRunner"):
        ScoreOptions.of(output="o", dask_address="tcp://localhost:8786")
    with pytest.raises(ValueError, match="--dask-workers must be at least 1"):
        ScoreOptions.of(output="o", runner="DaskRunner", dask_workers=0)
    options = GenerateOptions.of(method="prior", output="o", runner="DaskRunner", dask_address="tcp://h:8786")
    assert (options.runner, options.dask_address, options.dask_workers) == ("DaskRunner", "tcp://h:8786", 2)
    beam_style = ScoreOptions.from_argv(["--output", "o", "--runner", "DaskRunner", "--dask-workers", "3"])
    assert beam_style.dask_workers == 3


def test_a_run_is_done_when_the_scheduler_holds_its_result_even_if_the_client_missed_it(monkeypatch):
    """The client's copy of a task's state may never hear of its end (seen once under load: the job
    hung with its results written); the wait asks the scheduler too, and still raises a task's error,
    told or not."""
    import distributed
    from apache_beam.runners.runner import PipelineState

    from pipeline.beam import dask_runner

    class NeverToldFuture(distributed.Future):
        @property
        def status(self) -> str:
            return "pending"

    monkeypatch.setattr(dask_runner, "POLL_SECONDS", 0.2)
    with (
        distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        done = client.submit(sum, [1, 2])
        assert done.result() == 3
        stuck = NeverToldFuture(done.key, client)
        result = dask_runner.DaskResult(client=client, futures=[stuck])
        result.close = lambda: None  # the test's client and cluster close below
        assert result.wait_until_finish() == PipelineState.DONE

        def fail() -> None:
            raise ValueError("a worker's own error")

        failing = client.submit(fail)
        failed = dask_runner.DaskResult(client=client, futures=[failing])
        failed.close = lambda: None
        with pytest.raises(ValueError, match="a worker's own error"):
            failed.wait_until_finish()
        assert failed.state == PipelineState.FAILED
        never_told = dask_runner.DaskResult(client=client, futures=[NeverToldFuture(failing.key, client)])
        never_told.close = lambda: None
        with pytest.raises(RuntimeError, match=f"the Dask task {failing.key} erred"):
            never_told.wait_until_finish()
