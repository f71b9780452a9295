"""Synthetic images from a registered VAE: an Apache Beam job that writes the ``synthetic/`` dataset.

The job reads as a sentence: ``PlanShards >> Spread >> Decode >> ToArrow >> WriteParquet``.

- The driver resolves the model URI to one registry version (so every worker decodes with the
  same weights), plans which sample gets which label (and, for ``posterior``, which source image),
  and cuts the plan into shards of whole *blocks* of :data:`SAMPLES_PER_BLOCK` samples.
- Each block draws from its own random stream, seeded by ``SeedSequence([seed, block])``
  (:func:`scoring.sampling.stream_seed`), and is decoded as one batch. A sample therefore depends only
  on the seed, the request and its index: the same seed gives the same images whatever the number of
  shards or workers, and a million samples spread over as many workers as the runner has.
- Workers load the model once each (``DoFn.setup``), decode, encode PNGs, and write Arrow tables as
  Parquet files straight into a temporary folder under ``OUTPUT/.staging`` (outside the dataset);
  the driver switches it with the partition in one step (:func:`pipeline.outputs.atomic.atomic_dataset_dir`)
  when the whole job has succeeded and the row count matches the plan. A failed job leaves nothing
  behind; a second run writing the same method at the same time is refused.

Layout (hive partitioning; ``label`` null is ``label=__HIVE_DEFAULT_PARTITION__``, which pyarrow and
DuckDB read as null)::

    OUTPUT/synthetic/method=conditional/label=3/part-00000.parquet

Each run replaces the partition of its own method (``OUTPUT/synthetic/method=METHOD``) and leaves the
others, so prior, conditional and posterior samples live side by side in one dataset. ``method`` and
``label`` live in the folder names, not inside the files (as Spark, pyarrow and DuckDB expect); read
the dataset with :func:`read_synthetic`, or in DuckDB with
``read_parquet('OUTPUT/synthetic/**/*.parquet', hive_partitioning = true)``.
"""

import logging
import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics

from pipeline.beam.runner import DEFAULT_WORKERS, make_pipeline
from pipeline.outputs.atomic import STAGING, atomic_dataset_dir
from scoring.sampling import SAMPLE_METHODS, stream_seed, synthesize

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

SAMPLES_PER_BLOCK = 256  # the unit of randomness and of decoding: one stream, one batch
SAMPLES_PER_SHARD = 4096  # default shard size (shards are the unit of work handed to workers)
DEFAULT_PRIOR_SAMPLES = 1000
DEFAULT_PER_LABEL = 100
DATASET = "synthetic"  # the folder under --output, beside scores/ and rejects/
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
NO_LABEL = -1

# Columns stored in each Parquet file; ``method`` and ``label`` come from the folder names.
FILE_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("image_png", pa.binary(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("channels", pa.int32(), nullable=False),
        pa.field("pixels", pa.list_(pa.float32()), nullable=False),
        pa.field("latent", pa.list_(pa.float32()), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("source_example_id", pa.string()),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)
PARTITION_SCHEMA = pa.schema([pa.field("method", pa.string()), pa.field("label", pa.int64())])
COLUMNS = (
    "sample_id",
    "method",
    "label",
    "image_png",
    "height",
    "width",
    "channels",
    "pixels",
    "latent",
    "seed",
    "source_example_id",
    "model_name",
    "model_version",
    "created_at",
)


class GenerateError(ValueError):
    """A request that cannot be served (e.g. labels for a plain model), with what to do instead."""


# --------------------------------------------------------------------------------------------------
# The plan: who gets which label and source image, cut into shards of whole blocks


@dataclass(frozen=True)
class ModelInfo:
    """What the driver needs to know about the model to plan the work."""

    name: str
    version: str
    uri: str  # pinned: models:/NAME/VERSION, or an absolute .keras path
    latent_dim: int
    num_classes: int
    class_names: list[str]
    image_shape: tuple[int, int, int]
    likelihood: str

    @classmethod
    def of(cls, loaded: Any) -> "ModelInfo":
        model = loaded.model
        pinned = loaded.uri if loaded.version == "local" else f"models:/{loaded.name}/{loaded.version}"
        return cls(
            name=loaded.name,
            version=str(loaded.version),
            uri=pinned,
            latent_dim=int(model.latent_dim),
            num_classes=int(model.num_classes),
            class_names=list(model.class_names) if model.num_classes else [],
            image_shape=tuple(int(d) for d in model.image_shape),  # type: ignore[arg-type]
            likelihood=str(model.likelihood),
        )


@dataclass(frozen=True)
class Plan:
    """One row per sample, in output order (grouped by label)."""

    labels: np.ndarray  # int64, NO_LABEL where there is none
    images: np.ndarray | None = None  # posterior: the source images
    source_ids: np.ndarray | None = None  # posterior: their example ids
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Shard:
    """A unit of work: consecutive whole blocks of the plan, with the rows they need."""

    index: int
    total: int
    start: int  # index of the first sample; a multiple of SAMPLES_PER_BLOCK
    labels: np.ndarray
    images: np.ndarray | None = None
    source_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


def parse_labels(values: Sequence[int | str] | str | None, class_names: Sequence[str]) -> list[int] | None:
    """Label indices for ``"0,3,7"`` or a list of indices or class names; None means all."""
    if values is None:
        return None
    tokens = [t.strip() for t in values.split(",")] if isinstance(values, str) else [str(v) for v in values]
    tokens = [t for t in tokens if t]
    if not tokens:
        raise GenerateError("--labels is empty; give label indices or class names separated by commas, e.g. 0,3,7")
    names = list(class_names)
    indices: list[int] = []
    for token in tokens:
        if token in names:
            index = names.index(token)
        elif token.lstrip("-").isdigit() and 0 <= int(token) < len(names):
            index = int(token)
        else:
            raise GenerateError(
                f"unknown label {token!r}; this model's labels are {', '.join(names)} (indices 0-{len(names) - 1})"
            )
        if index not in indices:
            indices.append(index)
    return indices


def _spread(total: int, labels: list[int]) -> np.ndarray:
    """``total`` labels spread as evenly as possible over ``labels`` (the first ones get the remainder)."""
    k = len(labels)
    counts = [total // k + (1 if i < total % k else 0) for i in range(k)]
    return np.repeat(np.asarray(labels, dtype=np.int64), counts)


def _plain_model_error(info: ModelInfo, what: str) -> GenerateError:
    return GenerateError(
        f"{info.name} v{info.version} is a plain (unconditional) VAE, so it cannot {what}. "
        "Use --method prior (or posterior) with this model, or train a label-conditioned one with "
        f"`vae train --conditional --model-name {info.name}-cond` and generate from that."
    )


def plan_samples(
    info: ModelInfo,
    method: str,
    *,
    n: int | None = None,
    per_label: int | None = None,
    labels: Sequence[int | str] | str | None = None,
    data: Any = None,
) -> Plan:
    """Which label (and source image) each sample gets. ``data`` is the ImageData for ``posterior``."""
    if method not in SAMPLE_METHODS:
        raise GenerateError(f"unknown method {method!r}; choose one of {', '.join(SAMPLE_METHODS)}")
    if n is not None and per_label is not None:
        raise GenerateError("give --n (samples in all) or --per-label (samples per label), not both")
    for name, value in (("--n", n), ("--per-label", per_label)):
        if value is not None and value < 1:
            raise GenerateError(f"{name} must be at least 1, got {value}")
    if method == "posterior":
        return _plan_posterior(info, n=n, per_label=per_label, labels=labels, data=data)
    if data is not None:
        raise GenerateError(f"--input is only used by --method posterior, not {method}")
    if not info.num_classes:
        if method == "conditional":
            raise _plain_model_error(info, "generate images for a requested label")
        if labels is not None or per_label is not None:
            raise _plain_model_error(info, "take --labels or --per-label")
        return Plan(np.full(n or DEFAULT_PRIOR_SAMPLES, NO_LABEL, dtype=np.int64))
    chosen = parse_labels(labels, info.class_names) or list(range(info.num_classes))
    if per_label is not None:
        planned = np.repeat(np.asarray(chosen, dtype=np.int64), per_label)
    elif n is not None:
        planned = _spread(n, chosen)
    else:
        planned = (
            _spread(DEFAULT_PRIOR_SAMPLES, chosen)
            if method == "prior"
            else np.repeat(np.asarray(chosen, np.int64), DEFAULT_PER_LABEL)
        )
    return Plan(planned, class_names=info.class_names)


def _plan_posterior(info: ModelInfo, *, n, per_label, labels, data) -> Plan:
    if data is None:
        raise GenerateError("--method posterior needs real images to encode: give --input PATH or --input digits")
    if tuple(data.image_shape) != tuple(info.image_shape):
        raise GenerateError(
            f"{data.source}: images are {'x'.join(map(str, data.image_shape))} but {info.name} v{info.version} "
            f"takes {'x'.join(map(str, info.image_shape))}"
        )
    if data.labels is None:
        if info.num_classes:
            raise GenerateError(
                f"{data.source}: has no labels, but {info.name} v{info.version} is a conditional VAE and "
                "encodes each image with its label; give labelled images (a 'label' column or sub-folders)"
            )
        if labels is not None or per_label is not None:
            raise GenerateError(f"{data.source}: has no labels, so --labels and --per-label cannot be used")
        source_labels = np.full(len(data), NO_LABEL, dtype=np.int64)
        class_names: list[str] = []
    elif info.num_classes:  # the model's label indices, matched by class name
        missing = sorted({data.class_names[i] for i in np.unique(data.labels)} - set(info.class_names))
        if missing:
            raise GenerateError(
                f"{data.source}: labels {', '.join(missing)} are not among {info.name}'s classes "
                f"({', '.join(info.class_names)})"
            )
        to_model = np.array([info.class_names.index(name) for name in data.class_names], dtype=np.int64)
        source_labels = to_model[data.labels]
        class_names = info.class_names
    else:
        source_labels = data.labels.astype(np.int64)
        class_names = list(data.class_names)

    chosen = parse_labels(labels, class_names) if class_names else None
    pool = np.arange(len(data))
    if chosen is not None:
        pool = pool[np.isin(source_labels[pool], chosen)]
        if len(pool) == 0:
            raise GenerateError(f"{data.source}: no images have the labels {labels}")
    if per_label is not None:
        wanted = chosen if chosen is not None else sorted(set(source_labels[pool].tolist()))
        parts = []
        for label in wanted:
            members = pool[source_labels[pool] == label]
            if len(members) == 0:
                raise GenerateError(f"{data.source}: no images with label {class_names[label]!r} to encode")
            parts.append(members[np.arange(per_label) % len(members)])
        sources = np.concatenate(parts)
    elif n is not None:
        sources = pool[np.arange(n) % len(pool)]  # more samples than images: several draws per image
    else:
        sources = pool
    sources = sources[np.argsort(source_labels[sources], kind="stable")]
    return Plan(
        labels=source_labels[sources],
        images=np.ascontiguousarray(data.images[sources], dtype=np.float32),
        source_ids=np.asarray(data.example_ids[sources]).astype(str),
        class_names=class_names,
    )


def make_shards(plan: Plan, shards: int | None = None) -> list[Shard]:
    """Cuts the plan into ``shards`` pieces of whole blocks (default: one per SAMPLES_PER_SHARD samples)."""
    blocks = math.ceil(len(plan) / SAMPLES_PER_BLOCK)
    wanted = shards if shards is not None else math.ceil(len(plan) / SAMPLES_PER_SHARD)
    count = max(1, min(wanted, blocks))
    out = []
    for index, part in enumerate(np.array_split(np.arange(blocks), count)):
        start, stop = int(part[0]) * SAMPLES_PER_BLOCK, min(len(plan), (int(part[-1]) + 1) * SAMPLES_PER_BLOCK)
        out.append(
            Shard(
                index=index,
                total=count,
                start=start,
                labels=plan.labels[start:stop],
                images=None if plan.images is None else plan.images[start:stop],
                source_ids=None if plan.source_ids is None else plan.source_ids[start:stop],
            )
        )
    return out


# --------------------------------------------------------------------------------------------------
# The Beam steps


@dataclass(frozen=True)
class Request:
    """Everything a worker needs besides its shard (small and picklable)."""

    model_uri: str
    tracking_uri: str | None
    model_name: str
    model_version: str
    method: str
    seed: int
    temperature: float
    sample_pixels: bool
    created_at: datetime
    image_shape: tuple[int, int, int]


def resolve_model(model_uri: str, work_dir: str | os.PathLike | None = None) -> tuple[ModelInfo, str | None]:
    """Pins ``model_uri`` (:func:`training.registry.pin`) and loads that version once per process;
    returns its info and the tracking URI the workers need (None for a ``.keras`` file)."""
    from training import registry

    pinned = registry.pin(str(model_uri), work_dir)
    return ModelInfo.of(registry.load_pinned(pinned.uri, pinned.tracking_uri)), pinned.tracking_uri


def sample_id(method: str, seed: int, index: int) -> str:
    return f"{method}-s{seed}-{index:08d}"


class DecodeShard(beam.DoFn):
    """Samples latents block by block and decodes them with the model (loaded once per worker):
    shard -> dict of numpy columns."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.samples = Metrics.counter("vae_generate", "samples")
        self.model: Any = None

    def setup(self) -> None:
        from training import registry

        self.model = registry.load_pinned(self.request.model_uri, self.request.tracking_uri).model

    def process(self, shard: Shard) -> Iterator[dict[str, Any]]:
        r = self.request
        images, latents = [], []
        for offset in range(0, len(shard), SAMPLES_PER_BLOCK):
            block = (shard.start + offset) // SAMPLES_PER_BLOCK
            rows = slice(offset, offset + SAMPLES_PER_BLOCK)
            labels = shard.labels[rows]
            decoded, z = synthesize(
                self.model,
                r.method,
                len(labels),
                seed=stream_seed(r.seed, block),
                labels=labels if self.model.num_classes else None,
                images=None if shard.images is None else shard.images[rows],
                temperature=r.temperature,
                sample_pixels=r.sample_pixels,
            )
            images.append(decoded)
            latents.append(z)
        self.samples.inc(len(shard))
        log.info("shard %d/%d: decoded %d samples", shard.index + 1, shard.total, len(shard))
        yield {
            "shard": shard.index,
            "index": np.arange(shard.start, shard.start + len(shard)),
            "labels": shard.labels,
            "images": np.concatenate(images),
            "latents": np.concatenate(latents),
            "source_ids": shard.source_ids,
        }


def _list_array(rows: np.ndarray) -> pa.ListArray:
    flat = np.ascontiguousarray(rows, dtype=np.float32).reshape(len(rows), -1)
    offsets = np.arange(0, flat.size + 1, flat.shape[1], dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat.reshape(-1)))


def to_arrow(batch: dict[str, Any], request: Request) -> tuple[int, pa.Table, np.ndarray]:
    """Columns of one shard as an Arrow table in the file schema, with its labels alongside."""
    from pipeline.outputs.png import encode_pngs

    images = batch["images"]
    n = len(images)
    height, width, channels = request.image_shape
    source_ids = batch["source_ids"]
    table = pa.table(
        {
            "sample_id": pa.array([sample_id(request.method, request.seed, int(i)) for i in batch["index"]]),
            "image_png": pa.array(encode_pngs(images), pa.binary()),
            "height": pa.array(np.full(n, height, np.int32)),
            "width": pa.array(np.full(n, width, np.int32)),
            "channels": pa.array(np.full(n, channels, np.int32)),
            "pixels": _list_array(images),
            "latent": _list_array(batch["latents"]),
            "seed": pa.array(np.full(n, request.seed, np.int64)),
            "source_example_id": pa.nulls(n, pa.string())
            if source_ids is None
            else pa.array([str(s) for s in source_ids], pa.string()),
            "model_name": pa.array([request.model_name] * n, pa.string()),
            "model_version": pa.array([request.model_version] * n, pa.string()),
            "created_at": pa.array([request.created_at] * n, pa.timestamp("us", tz="UTC")),
        },
        schema=FILE_SCHEMA,
    )
    return batch["shard"], table, np.asarray(batch["labels"])


def partition_name(label: int | None) -> str:
    return f"label={HIVE_NULL if label is None or label == NO_LABEL else int(label)}"


def write_partitions(shard_index: int, table: pa.Table, labels: np.ndarray, folder: str) -> list[tuple[str, int]]:
    """One Parquet file per label in the shard: ``folder/label=L/part-SSSSS.parquet``. Idempotent
    (a retried shard overwrites its own files). Returns (path, rows) for each file."""
    import pyarrow.parquet as pq

    written = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        directory = Path(folder) / partition_name(int(label))
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"part-{shard_index:05d}.parquet"
        pq.write_table(table.take(pa.array(rows)), path, compression="zstd")
        written.append((str(path), len(rows)))
    return written


class WriteParquet(beam.DoFn):
    """Writes each shard's table, one file per label partition; emits (path, rows)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.files = Metrics.counter("vae_generate", "files")

    def process(self, element: tuple[int, pa.Table, np.ndarray]) -> Iterator[tuple[str, int]]:
        written = write_partitions(*element, self.folder)
        self.files.inc(len(written))
        yield from written


def build_pipeline(pipeline: Any, shards: list[Shard], request: Request, folder: str) -> Any:
    """Adds the generation steps to a Beam pipeline; returns the PCollection of (path, rows) written."""
    return (
        pipeline
        | "PlanShards" >> beam.Create(shards, reshuffle=False)
        | "Spread" >> beam.Reshuffle()
        | "Decode" >> beam.ParDo(DecodeShard(request))
        | "ToArrow" >> beam.Map(to_arrow, request)
        | "WriteParquet" >> beam.ParDo(WriteParquet(folder))
    )


# --------------------------------------------------------------------------------------------------
# The library entry point


@dataclass(frozen=True)
class GenerateSummary:
    """What a generation run wrote."""

    output: Path  # the dataset: OUTPUT/synthetic
    partition: Path  # OUTPUT/synthetic/method=METHOD, replaced by this run
    method: str
    model_name: str
    model_version: str
    seed: int
    temperature: float
    sample_pixels: bool
    shards: int
    rows: int
    counts: dict[int | None, int]  # samples per label (None: no label)
    class_names: list[str]
    files: list[Path]
    created_at: datetime
    grid: Path | None = None

    def label_name(self, label: int | None) -> str:
        if label is None:
            return "(none)"
        return self.class_names[label] if label < len(self.class_names) else str(label)

    def lines(self) -> list[str]:
        pixels = "sampled pixels" if self.sample_pixels else "likelihood mean"
        per_label = ", ".join(f"{self.label_name(k)}: {v}" for k, v in self.counts.items())
        out = [
            f"model:        {self.model_name} v{self.model_version}",
            f"method:       {self.method} (temperature {self.temperature:g}, {pixels}, seed {self.seed})",
            f"samples:      {self.rows:,} in {self.shards} shard{'s' if self.shards != 1 else ''}",
            f"per label:    {per_label}",
            f"dataset:      {self.output}",
            f"written:      {self.partition} ({len(self.files)} Parquet file{'s' if len(self.files) != 1 else ''})",
        ]
        if self.grid:
            out.append(f"grid:         {self.grid}")
        return out


def generate_dataset(
    model_uri: str,
    method: str,
    output: str | os.PathLike,
    *,
    n: int | None = None,
    per_label: int | None = None,
    labels: Sequence[int | str] | str | None = None,
    temperature: float = 1.0,
    input: str | None = None,
    shape: tuple[int, int, int] | None = None,
    sample_pixels: bool = False,
    seed: int = 0,
    shards: int | None = None,
    runner: str = "DirectRunner",
    direct_num_workers: int = DEFAULT_WORKERS,
    direct_running_mode: str = "multi_processing",
    beam_args: Sequence[str] = (),
    work_dir: str | os.PathLike | None = None,
    test_pipeline: Any = None,
) -> GenerateSummary:
    """Generates samples with a registered VAE in a Beam pipeline and writes them to
    ``output/synthetic/method=METHOD/label=L/*.parquet``, replacing that partition only on success.

    ``prior``: ``n`` samples (default 1,000), z ~ N(0, T^2 I); a conditional model's labels are spread
    evenly over ``labels`` (default: all). ``conditional``: ``per_label`` samples (default 100) for each
    of ``labels`` (or ``n`` spread over them); a plain model raises :class:`GenerateError`.
    ``posterior``: encodes the images of ``input`` (default: the built-in digits), every one once, or
    ``n`` samples cycling over them, or ``per_label`` per label; ``labels`` filters them.
    ``test_pipeline``: a pipeline to build into and run instead of
    :func:`pipeline.beam.runner.make_pipeline`'s (same runner options as ``vae score``).
    """
    from training import data as data_lib

    if seed < 0:
        raise GenerateError(f"--seed must be a non-negative integer, got {seed}")
    if temperature < 0:
        raise GenerateError(f"--temperature must be non-negative, got {temperature}")
    if shards is not None and shards < 1:
        raise GenerateError(f"--shards must be at least 1, got {shards}")
    if "://" in str(output) or runner != "DirectRunner":
        raise GenerateError(
            "vae generate writes to a local folder with the DirectRunner only (its atomic commit renames "
            f"local folders); got --output {output} --runner {runner}"
        )
    info, tracking_uri = resolve_model(model_uri, work_dir)
    if method != "posterior" and input is not None:
        raise GenerateError(f"--input is only used by --method posterior, not {method}")
    if method == "posterior" and input is None:
        input = "digits"
    data = data_lib.load(input, shape) if input is not None else None
    plan = plan_samples(info, method, n=n, per_label=per_label, labels=labels, data=data)
    work = make_shards(plan, shards)
    request = Request(
        model_uri=info.uri,
        tracking_uri=tracking_uri,
        model_name=info.name,
        model_version=info.version,
        method=method,
        seed=int(seed),
        temperature=float(temperature),
        sample_pixels=bool(sample_pixels),
        created_at=datetime.now(UTC).replace(microsecond=0),
        image_shape=info.image_shape,
    )
    root = Path(output).resolve() / DATASET
    partition = root / f"method={method}"
    log.info(
        "generating %d %s samples with %s v%s in %d shard(s) -> %s",
        len(plan),
        method,
        info.name,
        info.version,
        len(work),
        root,
    )
    # Locks the partition (and shares the dataset with other methods' runs) until it is committed.
    with atomic_dataset_dir(partition, staging=Path(output).resolve() / STAGING) as tmp:
        pipeline = test_pipeline or make_pipeline(
            runner,
            direct_num_workers=direct_num_workers,
            direct_running_mode=direct_running_mode,
            beam_args=beam_args,
        )
        build_pipeline(pipeline, work, request, str(tmp))
        pipeline.run().wait_until_finish()
        files, counts = _inventory(tmp)
        if sum(counts.values()) != len(plan):
            raise RuntimeError(f"the pipeline wrote {sum(counts.values())} samples, {len(plan)} were planned")
    files = [partition / f.relative_to(tmp) for f in files]
    summary = GenerateSummary(
        output=root,
        partition=partition,
        method=method,
        model_name=info.name,
        model_version=info.version,
        seed=int(seed),
        temperature=float(temperature),
        sample_pixels=bool(sample_pixels),
        shards=len(work),
        rows=len(plan),
        counts=counts,
        class_names=plan.class_names,
        files=files,
        created_at=request.created_at,
    )
    log.info("wrote %d samples to %s", summary.rows, partition)
    return summary


def _inventory(folder: Path) -> tuple[list[Path], dict[int | None, int]]:
    """The Parquet files under a method partition and the rows per label, from the file footers."""
    import pyarrow.parquet as pq

    files = sorted(folder.rglob("*.parquet"))
    counts: Counter[int | None] = Counter()
    for path in files:
        value = path.parent.name.removeprefix("label=")
        counts[None if value == HIVE_NULL else int(value)] += pq.ParquetFile(path).metadata.num_rows
    return files, dict(sorted(counts.items(), key=lambda kv: -1 if kv[0] is None else kv[0]))


# --------------------------------------------------------------------------------------------------
# Reading back, the grid of samples, and logging it to MLflow


def read_synthetic(
    path: str | os.PathLike, method: str | None = None, columns: Sequence[str] | None = None
) -> pa.Table:
    """The ``synthetic/`` dataset (or one method of it) with the documented column order and types
    (``method`` string, ``label`` int64 from the folder names), sorted by method, label and sample_id."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(path), format="parquet", partitioning=ds.partitioning(PARTITION_SCHEMA, flavor="hive"))
    wanted = list(columns or COLUMNS)
    table = dataset.to_table(columns=wanted, filter=None if method is None else ds.field("method") == method)
    keys = [(k, "ascending") for k in ("method", "label", "sample_id") if k in wanted]
    return table.sort_by(keys) if keys else table


def images_of(table: pa.Table) -> np.ndarray:
    """The ``pixels`` column as float32 (N, H, W, C) images."""
    if table.num_rows == 0:
        return np.zeros((0, 1, 1, 1), np.float32)
    h, w, c = (table.column(k)[0].as_py() for k in ("height", "width", "channels"))
    flat = table.column("pixels").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32).reshape(table.num_rows, h, w, c)


def grid_figure(
    table: pa.Table, class_names: Sequence[str] = (), per_label: int = 10, title: str | None = None
) -> "Figure":
    """A matplotlib figure of synthetic samples: one row of ``per_label`` images per label, or the first
    ``per_label**2`` samples in rows of ``per_label`` when there are no labels."""
    from training.plots import image_grid

    labels = np.array([-1 if v is None else v for v in table.column("label").to_pylist()], dtype=np.int64)
    present = sorted(set(labels.tolist()) - {-1})
    if present:
        rows_of_grid, row_labels = [], []
        for label in present:
            block = images_of(table.take(pa.array(np.flatnonzero(labels == label)[:per_label])))
            pad = np.zeros((per_label - len(block), *block.shape[1:]), np.float32)  # each label starts a row
            rows_of_grid.append(np.concatenate([block, pad]))
            row_labels.append(class_names[label] if label < len(class_names) else str(label))
        grid = np.concatenate(rows_of_grid)
    else:
        grid, row_labels = images_of(table.slice(0, per_label * per_label)), None
    return image_grid(grid, ncols=per_label, title=title, row_labels=row_labels)


def save_grid(summary: GenerateSummary, path: str | os.PathLike | None = None, per_label: int = 10) -> Path:
    """Renders the samples ``summary`` wrote as a PNG grid, by default beside the dataset
    (``OUTPUT/synthetic-METHOD.png``); returns its path."""
    target = Path(path) if path else summary.output.parent / f"{DATASET}-{summary.method}.png"
    table = read_synthetic(
        summary.output, summary.method, columns=("label", "sample_id", "height", "width", "channels", "pixels")
    )
    title = f"{summary.method} samples, {summary.model_name} v{summary.model_version}"
    fig = grid_figure(table, summary.class_names, per_label=per_label, title=title)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=100)
    return target


def log_grid(
    model_name: str, model_version: str, path: str | os.PathLike, artifact_path: str = "synthetic"
) -> str | None:
    """Logs a file to the MLflow run that produced a registered model version; returns the run id
    (None for a local ``.keras`` model, which has no run)."""
    if model_version == "local":
        return None
    from mlflow import MlflowClient

    client = MlflowClient()
    run_id = client.get_model_version(model_name, str(model_version)).run_id
    if run_id:
        client.log_artifact(run_id, str(path), artifact_path)
    return run_id


def generate_showcase(
    model_uri: str,
    output: str | os.PathLike,
    *,
    seed: int = 0,
    log_to_mlflow: bool = True,
    test_pipeline: Any = None,
    **options: Any,
) -> GenerateSummary:
    """What ``vae run`` writes: 100 conditional samples per label (1,000 prior samples for a plain
    model) into ``output/synthetic``, a PNG grid of them beside it (``output/synthetic-METHOD.png``,
    also in ``summary.grid``), logged to the model version's MLflow run under ``synthetic/``.
    ``options`` go to :func:`generate_dataset` (``work_dir``, ``direct_running_mode`` ...)."""
    from dataclasses import replace

    info, _ = resolve_model(model_uri, options.get("work_dir"))
    method = "conditional" if info.num_classes else "prior"
    sizes = {"per_label": DEFAULT_PER_LABEL} if method == "conditional" else {"n": DEFAULT_PRIOR_SAMPLES}
    summary = generate_dataset(info.uri, method, output, seed=seed, test_pipeline=test_pipeline, **sizes, **options)
    grid = save_grid(summary)
    if log_to_mlflow:
        log_grid(summary.model_name, summary.model_version, grid)
    return replace(summary, grid=grid)
