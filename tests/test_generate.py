"""``vae generate``: synthetic images through a real Beam pipeline, read back with pyarrow and DuckDB."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from pipeline.beam import generate_job as gp
from pipeline.beam.generate_plan import (
    SAMPLES_PER_BLOCK,
    GenerateError,
    Plan,
    make_shards,
    parse_labels,
    plan_samples,
)
from pipeline.beam.options import GenerateOptions
from pipeline.outputs import synthetic
from pipeline.outputs.png import decode_png, encode_png, to_uint8
from pipeline.outputs.synthetic import COLUMNS, NO_LABEL, images_of, label_dir, read_synthetic
from training.data.validate import ModelSpec
from training.registry import ModelRef

IN_PROCESS = {"direct_running_mode": "in_memory", "direct_num_workers": 1}
CLI_IN_PROCESS = ["--direct-running-mode", "in_memory", "--direct-num-workers", "1"]
RUN_FILE = r"part-[0-9a-f]{8}-\d{5}-of-\d{5}\.parquet"  # part-RUN-SSSSS-of-NNNNN.parquet


def uri(trained) -> str:
    return f"models:/{trained.model_name}@champion"


def model(num_classes: int = 10) -> tuple[ModelRef, ModelSpec]:
    """A registered model's reference and what it takes, for planning without a model."""
    names = tuple(str(i) for i in range(num_classes))
    return ModelRef("m", "1", "models:/m/1", None), ModelSpec((8, 8, 1), num_classes, names)


def generate(model_uri: str, method: str, output, *, test_pipeline=None, **options) -> gp.GenerateSummary:
    """:func:`generate_dataset` with the options object built as ``vae generate`` builds it."""
    settings = GenerateOptions.of(model=model_uri, method=method, output=output, **options)
    return gp.generate_dataset(settings, test_pipeline=test_pipeline)


def without_created_at(table):
    return table.drop_columns(["created_at"])


def leftovers(root: Path) -> list[Path]:
    """Temporary or swapped-out folders left behind: anything hidden (but the committed versions that
    :mod:`pipeline.outputs.atomic` keeps in ``.versions``), or in the (empty) staging folder."""
    staging = root / ".staging"
    hidden = [p for p in root.rglob(".*") if p != staging and ".versions" not in p.relative_to(root).parts]
    return hidden + (list(staging.iterdir()) if staging.exists() else [])


# --- cheap: planning, shards, seeds, PNG ------------------------------------------------------------


def test_png_round_trip_is_the_8_bit_quantisation():
    rng = np.random.default_rng(0)
    for shape in ((5, 7, 1), (4, 3, 3)):
        image = rng.random(shape).astype(np.float32)
        decoded = decode_png(encode_png(image))
        assert decoded.shape == shape and decoded.dtype == np.uint8
        np.testing.assert_array_equal(decoded, np.round(image * 255).astype(np.uint8))
        assert encode_png(image) == encode_png(image)  # deterministic bytes
    assert to_uint8(np.array([0.0, 0.5 / 255, 1.0])).tolist() == [0, 0, 255]


def test_stream_seeds_are_deterministic_and_distinct():
    from pipeline.beam import defaults
    from pipeline.beam.flags import GENERATE_FLAGS
    from scoring import sampling
    from scoring.sampling import SAMPLE_METHODS, stream_seed

    # the CLI's choices are the sampler's own, written once (scoring.sampling_choices)
    assert defaults.SAMPLE_METHODS is SAMPLE_METHODS and (*SAMPLE_METHODS, "interpolate") == defaults.METHODS
    flags = {flag.name: flag for flag in GENERATE_FLAGS}
    prior = flags["latent_prior"]
    assert prior.choices is sampling.LATENT_PRIORS and prior.default == "fitted"
    assert flags["method"].choices is defaults.METHODS

    assert stream_seed(0, 1) == stream_seed(0, 1)
    assert len({stream_seed(s, b) for s in range(3) for b in range(50)}) == 150


def test_plans_give_exact_counts_per_label():
    per_label = plan_samples(*model(), "conditional", per_label=3, labels="0,3,7")
    assert np.bincount(per_label.labels).tolist() == [3, 0, 0, 3, 0, 0, 0, 3]
    assert np.bincount(plan_samples(*model(), "conditional").labels).tolist() == [100] * 10
    spread = plan_samples(*model(), "prior", n=23)  # 23 over 10 labels: 3 get one more
    assert np.bincount(spread.labels).tolist() == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert np.all(np.diff(spread.labels) >= 0)  # grouped by label: few files per partition
    plain = plan_samples(*model(0), "prior")
    assert len(plain) == 1000 and set(plain.labels.tolist()) == {NO_LABEL}
    assert parse_labels(["7", 3, "7"], [str(i) for i in range(10)]) == [7, 3]
    assert parse_labels("cat", ["dog", "cat"]) == [1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "conditional"}, "plain (unconditional) VAE"),
        ({"method": "prior", "labels": "1"}, "plain (unconditional) VAE"),
        ({"method": "prior", "n": 5, "per_label": 5}, "not both"),
        ({"method": "sideways"}, "unknown method"),
        ({"method": "posterior"}, "needs real images"),
    ],
)
def test_impossible_requests_are_refused_with_what_to_do(kwargs, message):
    with pytest.raises(GenerateError, match=re.escape(message)):
        plan_samples(*model(0), **kwargs)
    with pytest.raises(GenerateError, match="unknown label '12'"):
        plan_samples(*model(), "conditional", labels="3,12")


def test_posterior_plan_keeps_sources_and_filters_labels():
    from training.data import ImageData

    images = np.random.default_rng(0).random((12, 8, 8, 1)).astype(np.float32)
    labels = np.array([0, 1, 2] * 4)
    data = ImageData(images, labels, np.array([f"x{i}" for i in range(12)]), ["0", "1", "2"], "test")
    plan = plan_samples(*model(3), "posterior", labels="2,0", data=data)
    assert plan.source_ids.tolist() == ["x0", "x3", "x6", "x9", "x2", "x5", "x8", "x11"]
    assert plan.labels.tolist() == [0] * 4 + [2] * 4
    np.testing.assert_array_equal(plan.images[0], images[0])
    cycled = plan_samples(*model(3), "posterior", per_label=6, labels="1", data=data)
    assert cycled.source_ids.tolist() == ["x1", "x4", "x7", "x10", "x1", "x4"]
    with pytest.raises(GenerateError, match="takes 8x8x1"):
        plan_samples(*model(3), "posterior", data=ImageData(images[:, :4], labels, data.example_ids, None, "s"))


def test_shards_are_whole_blocks_covering_the_plan():
    plan = Plan(np.zeros(1000, np.int64))
    shards = make_shards(plan, 3)
    assert [s.start for s in shards] == [0, 512, 768]
    assert sum(len(s) for s in shards) == 1000 and all(s.start % SAMPLES_PER_BLOCK == 0 for s in shards)
    assert len(make_shards(plan, 50)) == 4  # never more shards than blocks
    assert len(make_shards(plan)) == 1
    assert label_dir(NO_LABEL) == label_dir(None) == "label-none"
    assert label_dir(3) == "label-3"


def test_synthetic_files_carry_method_and_label_for_every_reader(tmp_path):
    """pyarrow (with and without hive discovery), pandas and DuckDB (with and without hive) each see
    one ``method`` and one ``label`` column with the written values, nulls included; so does a file alone."""
    import duckdb
    import pandas as pd
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    root = tmp_path / "synthetic"
    rng = np.random.default_rng(0)
    made = datetime(2026, 1, 2, tzinfo=UTC)
    expected = []
    for method, labels in (("conditional", [0, 0, 3, 7]), ("prior", [NO_LABEL] * 3), ("posterior", [1, 2])):
        labels = np.asarray(labels, np.int64)
        table = synthetic.synthetic_table(
            index=np.arange(len(labels)),
            labels=labels,
            images=rng.random((len(labels), 4, 4, 1)).astype(np.float32),
            latents=rng.normal(size=(len(labels), 2)).astype(np.float32),
            source_ids=None,
            method=method,
            seed=0,
            model=model()[0],
            created_at=made,
        )
        synthetic.write_partitions(table, synthetic.method_dir(root, method), run="abcd1234", shard=0, shards=1)
        expected += [(method, None if label == NO_LABEL else int(label)) for label in labels]
    expected = sorted(expected, key=str)
    files = sorted(str(f.relative_to(root)) for f in root.rglob("*.parquet"))
    assert files[0] == "conditional/label-0/part-abcd1234-00000-of-00001.parquet"
    assert "prior/label-none/part-abcd1234-00000-of-00001.parquet" in files

    def pairs(methods, labels) -> list:
        return sorted(zip(methods, [None if pd.isna(v) else int(v) for v in labels], strict=True), key=str)

    for table in (
        ds.dataset(root, format="parquet", partitioning="hive").to_table(),
        ds.dataset(root, format="parquet").to_table(),
        pq.read_table(root),
        read_synthetic(root),
    ):
        assert table.column_names.count("label") == table.column_names.count("method") == 1
        assert table.schema.field("label").type == pa.int64() and table.schema.field("method").type == pa.string()
        assert pairs(table.column("method").to_pylist(), table.column("label").to_pylist()) == expected
    frame = pd.read_parquet(root)
    assert list(frame.columns).count("label") == 1 and pairs(frame["method"], frame["label"]) == expected
    for hive in ("true", "false"):
        query = f"SELECT method, label FROM read_parquet('{root}/**/*.parquet', hive_partitioning = {hive})"
        relation = duckdb.sql(query)
        assert relation.columns == ["method", "label"] and relation.types[1] == "BIGINT"
        assert pairs(*zip(*relation.fetchall(), strict=True)) == expected
    alone = pq.read_table(root / "prior" / "label-none" / "part-abcd1234-00000-of-00001.parquet")
    assert alone.column("method").to_pylist() == ["prior"] * 3 and alone.column("label").null_count == 3
    files, counts = synthetic.inventory(root / "conditional")
    assert counts == {0: 2, 3: 1, 7: 1} and len(files) == 3


def test_generate_options_follow_the_cli_and_beam_style_flags():
    import click

    from pipeline.beam.options import RUNNER_OPTIONS
    from pipeline.cli.generate import generate_command

    parsed = GenerateOptions.from_argv(["--method", "prior", "--output", "out"])
    context = click.Context(generate_command)
    clicked = {p.name: p.get_default(context) for p in generate_command.params if p.name not in ("beam_args", "help")}
    options = GenerateOptions.option_names() | set(RUNNER_OPTIONS)
    assert set(clicked) - options == {"grid", "log_grid"}  # drawing the grid is the command's, not the job's
    assert options - set(clicked) == {"work_dir"}  # vae --work-dir
    for name in set(clicked) & GenerateOptions.option_names() - {"method", "output"}:
        assert clicked[name] == getattr(parsed, name), name
    argv = GenerateOptions.from_argv(
        ["--method", "conditional", "--output", "o", "--per-label", "5", "--class_labels", "0,3", "--sample_pixels"]
    )
    values = GenerateOptions.of(method="conditional", output="o", per_label=5, class_labels="0,3", sample_pixels=True)
    assert all(getattr(argv, name) == getattr(values, name) for name in GenerateOptions.option_names())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"n": 5, "per_label": 5}, "not both"),
        ({"seed": -1}, "--seed must be non-negative"),
        ({"temperature": -0.5}, "--temperature must be non-negative"),
        ({"shards": 0}, "--shards must be at least 1"),
        ({"input": "digits"}, "--input is only used by --method posterior"),
        ({"runner": "DataflowRunner"}, "DirectRunner only"),
        ({"method": "sideways"}, "--method must be one of"),
        ({"method": "interpolate", "from_id": "a"}, "--method interpolate needs the two images' example ids"),
        ({"method": "interpolate", "from_id": "a", "to_id": "b", "steps": 1}, "--steps must be at least 2"),
        ({"method": "interpolate", "from_id": "a", "to_id": "b", "n": 3}, "takes --steps, not --n"),
        ({"from_id": "a", "to_id": "b"}, "--from and --to are only used by --method interpolate"),
    ],
)
def test_generate_options_the_job_cannot_take_are_refused(values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        GenerateOptions.of(**{"method": "prior", "output": "out", **values})


def test_a_dataset_in_the_older_hive_layout_is_refused_before_any_work(tmp_path):
    (tmp_path / "synthetic" / "method=prior" / "label=__HIVE_DEFAULT_PARTITION__").mkdir(parents=True)
    with pytest.raises(GenerateError, match="method=prior, written in the older layout"):
        generate("models:/never-looked-up@champion", "prior", tmp_path, n=5)


def test_score_and_generate_resolve_an_output_path_with_links_and_dots_the_same_way(tmp_path):
    from pipeline.outputs.atomic import output_folder
    from pipeline.outputs.score_tables import output_paths

    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real" / "sub")
    given = f"{tmp_path}/link/../out"  # the system opens real/out; a lexical reading would give tmp_path/out
    assert output_folder(given) == tmp_path / "real" / "out"
    assert output_folder("gs://bucket/out/") == "gs://bucket/out"

    scores, rejects, commit = output_paths(given)  # vae score
    assert (scores, rejects) == (tmp_path / "real" / "out" / "scores", tmp_path / "real" / "out" / "rejects")
    with commit(scores, rejects) as (scores_tmp, rejects_tmp):
        (scores_tmp / "part-0.parquet").write_bytes(b"s")
        (rejects_tmp / "part-0.parquet").write_bytes(b"r")
    assert (tmp_path / "real" / "out" / "scores" / "part-0.parquet").read_bytes() == b"s"
    assert not (tmp_path / "out").exists()

    legacy = tmp_path / "real" / "out" / "synthetic" / "method=prior"  # vae generate names the folder it reads
    legacy.mkdir(parents=True)
    with pytest.raises(GenerateError, match=re.escape(f"{tmp_path / 'real' / 'out' / 'synthetic'} holds method=prior")):
        generate("models:/never-looked-up@champion", "prior", given, n=5)


# --- the Beam pipeline with registered models ------------------------------------------------------


def test_conditional_dataset_layout_schema_pngs_and_counts(trained_conditional, tmp_path):
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    model = trained_conditional.model
    summary = generate(
        uri(trained_conditional),
        "conditional",
        tmp_path,
        per_label=7,
        class_labels="0,3,7",
        seed=3,
        shards=2,
        pixel_temperature=0.0,  # the likelihood's mean: checked against the decoder below
        **IN_PROCESS,
    )
    assert summary.counts == {0: 7, 3: 7, 7: 7} and summary.rows == 21
    assert summary.model_version == str(trained_conditional.version)
    root = tmp_path / "synthetic"
    files = sorted(str(p.relative_to(tmp_path)) for p in root.rglob("*.parquet"))
    assert files and all(re.fullmatch(rf"synthetic/conditional/label-[037]/{RUN_FILE}", f) for f in files)
    assert not leftovers(tmp_path)  # no temporary folders left

    table = read_synthetic(root)
    assert table.column_names == list(COLUMNS)
    expected_types = {
        "sample_id": pa.string(),
        "method": pa.string(),
        "label": pa.int64(),
        "image_png": pa.binary(),
        "height": pa.int32(),
        "pixels": pa.list_(pa.float32()),
        "latent": pa.list_(pa.float32()),
        "seed": pa.int64(),
        "source_example_id": pa.string(),
        "model_version": pa.string(),
        "created_at": pa.timestamp("us", tz="UTC"),
    }
    for name, dtype in expected_types.items():
        assert table.schema.field(name).type == dtype, name
    rows = table.to_pylist()
    assert len({r["sample_id"] for r in rows}) == 21
    for row in rows:
        assert (row["method"], row["seed"], row["model_name"]) == ("conditional", 3, trained_conditional.model_name)
        assert (row["height"], row["width"], row["channels"]) == model.image_shape
        assert row["source_example_id"] is None and len(row["latent"]) == model.latent_dim
        pixels = np.asarray(row["pixels"], np.float32).reshape(model.image_shape)
        assert pixels.min() >= 0.0 and pixels.max() <= 1.0
        np.testing.assert_array_equal(decode_png(row["image_png"]), np.round(pixels * 255).astype(np.uint8))

    # the same images, decoded directly from the stored latents and labels
    first = rows[0]
    z = np.asarray([first["latent"]], np.float32)
    again = model.decode(z, np.eye(model.num_classes, dtype=np.float32)[[first["label"]]])
    from scoring import likelihoods

    mean = np.asarray(likelihoods.mean_image(again, model.likelihood)).reshape(-1)
    steps = model.pixel_levels - 1  # a binned model's images sit on its grey levels, as its data did
    assert model.pixel_levels == 17
    np.testing.assert_allclose(np.round(mean * steps) / steps, first["pixels"], atol=1e-5)

    # every file holds method and label: pyarrow and DuckDB read them with or without hive discovery
    assert sorted(pq.read_table(root).column("label").to_pylist()) == [0] * 7 + [3] * 7 + [7] * 7
    counts = duckdb.sql(
        f"SELECT method, label, count(*) FROM read_parquet('{root}/**/*.parquet', hive_partitioning = true) "
        "GROUP BY ALL ORDER BY label"
    ).fetchall()
    assert counts == [("conditional", 0, 7), ("conditional", 3, 7), ("conditional", 7, 7)]


def test_same_seed_same_images_whatever_the_shards_and_other_seeds_differ(trained_plain, tmp_path):
    import duckdb

    runs = {
        name: generate(uri(trained_plain), "prior", tmp_path / name, n=600, seed=seed, shards=shards, **IN_PROCESS)
        for name, seed, shards in (("a", 5, 1), ("b", 5, 3), ("c", 6, 1))
    }
    assert runs["a"].shards == 1 and runs["b"].shards == 3 and runs["a"].counts == {None: 600}
    a, b, c = (without_created_at(read_synthetic(tmp_path / name / "synthetic")) for name in "abc")
    assert a.equals(b)
    assert not np.allclose(a.column("latent").to_pylist(), c.column("latent").to_pylist())
    assert a.column("label").null_count == 600  # prior samples of a plain model have no label
    nulls = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{tmp_path}/a/synthetic/**/*.parquet', hive_partitioning = true) "
        "WHERE label IS NULL AND method = 'prior'"
    ).fetchall()
    assert nulls == [(600,)]


def test_each_method_replaces_only_its_own_partition_and_failures_leave_it(trained_conditional, tmp_path, monkeypatch):
    model_uri = uri(trained_conditional)
    generate(model_uri, "prior", tmp_path, n=30, **IN_PROCESS)
    generate(model_uri, "conditional", tmp_path, per_label=2, **IN_PROCESS)
    generate(model_uri, "prior", tmp_path, n=20, class_labels="1", seed=9, **IN_PROCESS)
    table = read_synthetic(tmp_path / "synthetic")
    methods = table.group_by("method").aggregate([("sample_id", "count")]).to_pydict()
    assert dict(zip(methods["method"], methods["sample_id_count"], strict=True)) == {"prior": 20, "conditional": 20}
    before = without_created_at(table)

    def disk_full(*args, **kwargs):  # a full disk cannot be arranged here
        raise OSError("No space left on device")

    monkeypatch.setattr(synthetic, "write_partitions", disk_full)
    with pytest.raises(Exception, match="No space left"):
        generate(model_uri, "prior", tmp_path, n=50, **IN_PROCESS)
    assert without_created_at(read_synthetic(tmp_path / "synthetic")).equals(before)
    assert not leftovers(tmp_path)
    monkeypatch.undo()

    # a comparison that cannot be made (real images of another shape) fails the run before its commit
    np.savez(tmp_path / "nine.npz", x=np.zeros((20, 9, 9), np.float32))
    with pytest.raises(GenerateError, match="its images are 9x9x1, the samples 8x8x1"):
        generate(model_uri, "prior", tmp_path, n=50, compare_with=str(tmp_path / "nine.npz"), **IN_PROCESS)
    assert without_created_at(read_synthetic(tmp_path / "synthetic")).equals(before)
    assert not leftovers(tmp_path)


def test_posterior_keeps_source_ids_and_labels(trained_conditional, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from apache_beam.testing.test_pipeline import TestPipeline

    from scoring.sampling import posterior_means

    test = trained_conditional.split.holdout.subset(np.arange(30))
    source = tmp_path / "input.parquet"
    pq.write_table(
        pa.table(
            {
                "example_id": [f"img-{i}" for i in range(30)],
                "pixels": [img.reshape(-1).tolist() for img in test.images],
                "height": [8] * 30,
                "width": [8] * 30,
                "label": test.labels,
            }
        ),
        source,
    )
    summary = generate(
        uri(trained_conditional),
        "posterior",
        tmp_path / "out",
        input=str(source),
        temperature=0.0,
        seed=1,
        test_pipeline=TestPipeline(runner="FnApiRunner"),
    )
    assert summary.counts == dict(sorted(zip(*np.unique(test.labels, return_counts=True), strict=True)))
    table = read_synthetic(tmp_path / "out" / "synthetic").to_pylist()
    by_id = {row["source_example_id"]: row for row in table}
    assert sorted(by_id) == sorted(f"img-{i}" for i in range(30))
    for i in range(30):
        assert by_id[f"img-{i}"]["label"] == test.labels[i]
    # temperature 0: the latent is the posterior mean of the source image
    means = posterior_means(trained_conditional.model, test.images, test.labels)
    stored = np.array([by_id[f"img-{i}"]["latent"] for i in range(30)])
    np.testing.assert_allclose(stored, means, atol=1e-5)


def test_run_takes_beam_style_flags(trained_plain, tmp_path):
    flags = ["--model", uri(trained_plain), "--method", "prior", "--n", "20", "--output", str(tmp_path)]
    summary = gp.run([*flags, "--direct_running_mode", "in_memory", "--direct_num_workers", "1"])
    assert (summary.rows, summary.counts) == (20, {None: 20})
    assert read_synthetic(tmp_path / "synthetic").num_rows == 20


def test_pixels_are_drawn_from_the_likelihood_unless_the_pixel_temperature_is_0(trained_plain, tmp_path):
    generate(uri(trained_plain), "prior", tmp_path / "mean", n=40, pixel_temperature=0.0, **IN_PROCESS)
    generate(uri(trained_plain), "prior", tmp_path / "drawn", n=40, sample_pixels=True, **IN_PROCESS)
    generate(uri(trained_plain), "prior", tmp_path / "default", n=40, **IN_PROCESS)
    default = read_synthetic(tmp_path / "default" / "synthetic").sort_by("sample_id")
    mean = read_synthetic(tmp_path / "mean" / "synthetic").sort_by("sample_id")
    drawn = read_synthetic(tmp_path / "drawn" / "synthetic").sort_by("sample_id")
    assert mean.column("latent").to_pylist() == drawn.column("latent").to_pylist()  # same z, other pixels
    mean_px = np.asarray(mean.column("pixels").to_pylist())
    drawn_px = np.asarray(drawn.column("pixels").to_pylist())
    assert drawn_px.min() >= 0.0 and drawn_px.max() <= 1.0
    assert np.abs(drawn_px - mean_px).mean() > 0.05  # draws scatter around the mean
    assert abs(drawn_px.mean() - mean_px.mean()) < 0.1  # ... and centre on it
    default_px = np.asarray(default.column("pixels").to_pylist())
    assert default.column("latent").to_pylist() == mean.column("latent").to_pylist()
    np.testing.assert_array_equal(default_px, mean_px)  # the default: the mean, no pixel noise


@pytest.mark.slow
def test_showcase_writes_the_grid_and_logs_it_to_the_models_run(trained_plain, tmp_path):
    from mlflow import MlflowClient
    from PIL import Image

    from pipeline.cli.run import generate_showcase

    summary = generate_showcase(uri(trained_plain), tmp_path, **IN_PROCESS)
    assert (summary.method, summary.rows) == ("prior", 1000)
    assert summary.grid == tmp_path / "synthetic-prior.png"
    with Image.open(summary.grid) as image:
        assert image.size[0] > 300
    run_id = MlflowClient().get_model_version(trained_plain.model_name, trained_plain.version).run_id
    assert "synthetic/synthetic-prior.png" in [a.path for a in MlflowClient().list_artifacts(run_id, "synthetic")]


# --- the command ---------------------------------------------------------------------------------


def test_cli_writes_the_dataset_grid_and_summary(trained_conditional, tmp_path):
    from click.testing import CliRunner

    from pipeline.cli.main import main

    args = ["generate", "--model", uri(trained_conditional), "--method", "conditional", "--per-label", "4"]
    result = CliRunner().invoke(main, [*args, "--labels", "2,5", "--output", str(tmp_path), *CLI_IN_PROCESS])
    assert result.exit_code == 0, result.output
    assert "per label:    2: 4, 5: 4" in result.output
    assert str(tmp_path / "synthetic") in result.output
    assert (tmp_path / "synthetic-conditional.png").is_file()
    assert read_synthetic(tmp_path / "synthetic").num_rows == 8


def test_cli_interpolates_between_the_posterior_means_of_two_images(trained_conditional, tmp_path):
    from click.testing import CliRunner

    from pipeline.cli.main import main
    from scoring.latent_space import interpolation_latents
    from scoring.sampling import decode_images

    model, holdout = trained_conditional.model, trained_conditional.split.holdout
    (id_a, id_b), (label_a, label_b) = holdout.example_ids[:2], holdout.labels[:2]
    args = ["generate", "--model", uri(trained_conditional), "--method", "interpolate", "--from", id_a, "--to", id_b]
    result = CliRunner().invoke(main, [*args, "--steps", "5", "--output", str(tmp_path), *CLI_IN_PROCESS])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "synthetic-interpolate.png").is_file()
    folder = tmp_path / "synthetic" / "interpolate" / label_dir(int(label_a))
    assert [re.fullmatch(RUN_FILE, f.name) is not None for f in folder.iterdir()] == [True]

    rows = read_synthetic(tmp_path / "synthetic", "interpolate").to_pylist()
    assert [r["method"] for r in rows] == ["interpolate"] * 5 and {r["label"] for r in rows} == {int(label_a)}
    assert {r["source_example_id"] for r in rows} == {f"{id_a}->{id_b}"}
    rows.sort(key=lambda r: r["sample_id"])
    expected = interpolation_latents(
        model, holdout.images[0], holdout.images[1], 5, label_a=int(label_a), label_b=int(label_b)
    )
    stored = np.array([r["latent"] for r in rows])
    np.testing.assert_allclose(stored, expected, atol=1e-5)  # from one posterior mean to the other
    # decoded with the first image's label, like any method's images (8-bit PNG)
    decoded = decode_images(model, expected, np.full(5, label_a))
    table = read_synthetic(tmp_path / "synthetic", "interpolate")
    np.testing.assert_allclose(images_of(table), decoded, atol=1 / 255 + 1e-4)

    missing = CliRunner().invoke(main, [*args[:-1], "digits:999999", "--output", str(tmp_path), *CLI_IN_PROCESS])
    assert missing.exit_code != 0 and "--to digits:999999: no image with that example_id" in missing.output


def test_cli_compares_the_samples_with_held_out_digits_and_logs_the_figures(
    trained_conditional, mlflow_store, tmp_path
):
    from click.testing import CliRunner
    from mlflow import MlflowClient

    from pipeline.cli.main import main
    from scoring.fidelity import per_label_fidelity
    from training.data import read_images

    args = ["generate", "--model", uri(trained_conditional), "--method", "conditional", "--per-label", "10"]
    args += ["--labels", "2,5", "--compare-with", "digits:holdout", "--no-grid", "--output", str(tmp_path)]
    result = CliRunner().invoke(main, [*args, *CLI_IN_PROCESS])
    assert result.exit_code == 0, result.output
    assert (
        "compared:     with 5" in result.output and "of digits:holdout: improved precision and recall" in result.output
    )
    assert re.search(r"^caution:      \d+ real images in the smallest group", result.output, re.M)  # too few
    for metric in ("precision", "recall", "density", "coverage", "diversity"):
        assert re.search(
            rf"^{metric}:\s+\d+\.\d{{3}} \(mean over 2 labels; worst [25]: \d+\.\d{{3}}\)$", result.output, re.M
        )
    assert re.search(r"^by label:     2: P \d\.\d\d R \d\.\d\d C \d\.\d\d D \d+\.\d\d, 5: P ", result.output, re.M)

    # the same figures as scoring.fidelity gives on the written samples and the holdout, logged to the model's run
    real = read_images("digits:holdout").data
    table = read_synthetic(tmp_path / "synthetic", "conditional")
    expected = per_label_fidelity(real.images, real.labels, images_of(table), table.column("label").to_numpy(), k=3)
    run_id = MlflowClient().get_model_version(trained_conditional.model_name, trained_conditional.version).run_id
    assert f"fidelity_conditional_* metrics to MLflow run {run_id}" in result.output
    logged = MlflowClient().get_run(run_id).data.metrics
    for metric in ("precision", "recall", "density", "coverage", "diversity"):
        assert logged[f"fidelity_conditional_{metric}"] == pytest.approx(expected[metric])
        assert logged[f"fidelity_conditional_{metric}_worst"] == pytest.approx(expected["worst"][metric][1])
        for label in (2, 5):
            assert logged[f"fidelity_conditional_{metric}_label_{label}"] == pytest.approx(
                expected["labels"][label][metric]
            )
    assert 0.0 <= expected["precision"] <= 1.0 and 0.0 <= expected["recall"] <= 1.0 and expected["diversity"] > 0


def test_summary_of_unlabelled_samples_compares_them_pooled():
    figures = {
        "k": 3,
        "labels": {
            None: {"precision": 0.5, "recall": 0.25, "density": 0.4, "coverage": 0.3, "diversity": 0.75}
            | {"real": 400, "fake": 100}
        },
        "skipped": [],
        "worst": {"precision": (None, 0.5), "recall": (None, 0.25), "density": (None, 0.4)}
        | {"coverage": (None, 0.3), "diversity": (None, 0.75)},
        "precision": 0.5,
        "recall": 0.25,
        "density": 0.4,
        "coverage": 0.3,
        "diversity": 0.75,
    }
    summary = gp.GenerateSummary(
        Path("o/synthetic"), Path("o/synthetic/prior"), "prior", "m", "1", 0, 1.0, 0.7, "fitted", 1, 100,
        {None: 100}, [], [], datetime.now(UTC), compare_with="real.npz", fidelity=figures, fidelity_run="abc",
    )  # fmt: skip
    lines = summary.lines()
    assert "precision:    0.500" in lines and "recall:       0.250" in lines and "diversity:    0.750" in lines
    assert "density:      0.400" in lines and "coverage:     0.300" in lines
    assert any(line.startswith("compared:     with 400 real images of real.npz") for line in lines)
    assert not any(line.startswith("by label:") or line.startswith("caution:") for line in lines)  # 400: dense
    assert summary.fidelity_metrics() == {
        "fidelity_prior_precision": 0.5,
        "fidelity_prior_precision_worst": 0.5,
        "fidelity_prior_recall": 0.25,
        "fidelity_prior_recall_worst": 0.25,
        "fidelity_prior_density": 0.4,
        "fidelity_prior_density_worst": 0.4,
        "fidelity_prior_coverage": 0.3,
        "fidelity_prior_coverage_worst": 0.3,
        "fidelity_prior_diversity": 0.75,
        "fidelity_prior_diversity_worst": 0.75,
    }


def test_cli_refuses_to_log_a_grid_it_was_told_not_to_draw(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli.main import main

    argv = ["generate", "--method", "prior", "--no-grid", "--log-grid", "--output", str(tmp_path)]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2 and "--log-grid logs the grid that --no-grid turns off" in result.output
    assert not (tmp_path / "synthetic").exists()


def test_cli_conditional_sampling_of_a_plain_model_is_a_clear_error(trained_plain, tmp_path):
    from click.testing import CliRunner

    from pipeline.cli.main import main

    args = ["generate", "--model", uri(trained_plain), "--method", "conditional", "--output", str(tmp_path)]
    result = CliRunner().invoke(main, [*args, *CLI_IN_PROCESS])
    assert result.exit_code == 1
    assert "Error: vae-test-plain" in result.output and "plain (unconditional) VAE" in result.output
    assert "--method prior" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "synthetic").exists()


def test_help_documents_every_option():
    import click
    from click.testing import CliRunner

    from pipeline.cli.generate import generate_command
    from pipeline.cli.main import main

    result = CliRunner().invoke(main, ["generate", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for param in generate_command.params:
        if isinstance(param, click.Option):
            assert all(opt in text for opt in param.opts), param.name
            assert param.help, f"{param.name} has no help"
    assert "BEAM_ARGS" in text


def test_grid_of_unlabelled_samples_is_square():
    import pyarrow as pa

    images = np.random.default_rng(0).random((30, 8, 8, 1)).astype(np.float32)
    table = pa.table(
        {
            "label": pa.nulls(30, pa.int64()),
            "height": [8] * 30,
            "width": [8] * 30,
            "channels": [1] * 30,
            "pixels": [i.reshape(-1).tolist() for i in images],
        }
    )
    np.testing.assert_allclose(images_of(table), images, atol=1e-7)
    from pipeline.report.figures import grid_figure

    figure = grid_figure(table, per_label=5)
    assert len(figure.axes) == 25
