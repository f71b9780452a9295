"""Synthetic images from a registered VAE: an Apache Beam job that writes the ``synthetic/`` dataset.

The job reads as a sentence: ``PlanShards >> Spread >> Decode >> ToArrow >> WriteParquet``.

- The driver pins the model URI to one registry version (so every worker decodes with the same
  weights) and plans which sample gets which label (and, for ``posterior``, which source image; for
  ``interpolate``, which latent between two images' posterior means),
  cut into shards of whole blocks (:mod:`pipeline.beam.generate_plan`).
- Each block draws from its own random stream and is decoded as one batch: the same seed gives the
  same images whatever the number of shards or workers, and a million samples spread over as many
  workers as the runner has.
- Workers load the model once each (``DoFn.setup``), decode, encode PNGs, and write Parquet files
  (:mod:`pipeline.outputs.synthetic`) straight into a temporary folder under ``OUTPUT/.staging``;
  the driver switches it with the method's folder in one step
  (:func:`pipeline.outputs.atomic.atomic_dataset_dir`) when the whole job has succeeded and the row
  count matches the plan. A failed job leaves nothing behind; a second run writing the same method at
  the same time is refused. Other methods' samples stay beside it.

Run it through ``vae generate`` or, Beam-examples style, ``python -m pipeline.beam.generate_job
--method prior --output ... [pipeline options]`` (see :func:`run`; the settings are one
:class:`~pipeline.beam.options.GenerateOptions`).
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics

from pipeline.beam.defaults import DEFAULT_FIDELITY_K, DEFAULT_INPUT
from pipeline.beam.generate_plan import (
    GenerateError,
    Plan,
    Shard,
    indices_only,
    make_shards,
    plan_interpolation,
    plan_samples,
)
from pipeline.beam.options import GenerateOptions
from pipeline.beam.runner import make_pipeline
from pipeline.outputs import result_json, synthetic
from pipeline.outputs.atomic import STAGING, atomic_dataset_dir, output_folder
from pipeline.outputs.manifest import MANIFEST, build_manifest, fingerprint_of, write_manifest
from pipeline.steps import Step
from scoring.fidelity import METRICS as FIDELITY_METRICS
from training.data import ImageData
from training.data.validate import ModelSpec
from training.registry import ModelRef

log = logging.getLogger(__name__)

METRICS_NAMESPACE = "vae_generate"
# real images per label below which --compare-with's printout warns that they are too few
DENSE_REFERENCE = 300


@dataclass(frozen=True)
class Request:
    """Everything a worker needs besides its shard (small and picklable)."""

    model: ModelRef
    method: str
    seed: int
    temperature: float
    pixel_temperature: float
    latent_prior: str
    created_at: datetime
    run: str  # the tag in every file name this run writes
    class_names: tuple[str, ...] = ()  # the model's: label index -> the label_name column


class DecodeShard(beam.DoFn):
    """Samples latents block by block and decodes them with the model (loaded once per worker):
    shard -> dict of numpy columns."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.samples = Metrics.counter(METRICS_NAMESPACE, "samples")
        self.model: Any = None

    def setup(self) -> None:
        self.model = self.request.model.load()

    def process(self, shard: Shard) -> Iterator[dict[str, Any]]:
        from pipeline.beam.generate_plan import SAMPLES_PER_BLOCK
        from scoring.sampling import decode_images, stream_seed, synthesize

        r = self.request
        images, latents = [], []
        for offset in range(0, len(shard), SAMPLES_PER_BLOCK):
            block = (shard.start + offset) // SAMPLES_PER_BLOCK
            rows = slice(offset, offset + SAMPLES_PER_BLOCK)
            labels = shard.labels[rows]
            if shard.latents is not None:  # interpolate: the latents are given; only pixels may be drawn
                z = shard.latents[rows]
                rng = np.random.default_rng([stream_seed(r.seed, block), 1])
                decoded = decode_images(
                    self.model,
                    z,
                    labels if self.model.num_classes else None,
                    pixel_temperature=r.pixel_temperature,
                    rng=rng,
                )
                images.append(np.asarray(decoded, dtype=np.float32))
                latents.append(z)
                continue
            decoded, z = synthesize(
                self.model,
                r.method,
                len(labels),
                seed=stream_seed(r.seed, block),
                labels=labels if self.model.num_classes else None,
                images=None if shard.images is None else shard.images[rows],
                temperature=r.temperature,
                pixel_temperature=r.pixel_temperature,
                latent_prior=r.latent_prior,
            )
            images.append(decoded)
            latents.append(z)
        self.samples.inc(len(shard))
        log.info(
            "shard %d/%d: decoded %d samples",
            shard.index + 1,
            shard.total,
            len(shard),
            extra=Step(shard.index + 1, shard.total, f"shard {shard.index + 1}").extra(),
        )
        yield {
            "shard": shard.index,
            "shards": shard.total,
            "index": np.arange(shard.start, shard.start + len(shard)),
            "labels": shard.labels,
            "images": np.concatenate(images),
            "latents": np.concatenate(latents),
            "source_ids": shard.source_ids,
        }


def to_arrow(batch: dict[str, Any], request: Request) -> tuple[int, int, pa.Table]:
    """One decoded shard as (shard, shards, rows of :data:`pipeline.outputs.synthetic.SCHEMA`)."""
    table = synthetic.synthetic_table(
        index=batch["index"],
        labels=batch["labels"],
        images=batch["images"],
        latents=batch["latents"],
        source_ids=batch["source_ids"],
        method=request.method,
        seed=request.seed,
        model=request.model,
        created_at=request.created_at,
        class_names=request.class_names,
    )
    return batch["shard"], batch["shards"], table


class WriteParquet(beam.DoFn):
    """Writes each shard's table, one file per label folder; emits (path, rows)."""

    def __init__(self, folder: str, run: str) -> None:
        self.folder = folder
        self.run = run
        self.files = Metrics.counter(METRICS_NAMESPACE, "files")

    def process(self, element: tuple[int, int, pa.Table]) -> Iterator[tuple[str, int]]:
        shard, shards, table = element
        written = synthetic.write_partitions(table, self.folder, run=self.run, shard=shard, shards=shards)
        self.files.inc(len(written))
        yield from written


def build_pipeline(pipeline: beam.Pipeline, shards: list[Shard], request: Request, folder: str) -> beam.PCollection:
    """Adds the generation steps to a Beam pipeline; returns the PCollection of (path, rows) written."""
    return (
        pipeline
        | "PlanShards" >> beam.Create(shards, reshuffle=False)
        | "Spread" >> beam.Reshuffle()
        | "Decode" >> beam.ParDo(DecodeShard(request))
        | "ToArrow" >> beam.Map(to_arrow, request)
        | "WriteParquet" >> beam.ParDo(WriteParquet(folder, request.run))
    )


# --------------------------------------------------------------------------------------------------
# The library entry point


@dataclass(frozen=True)
class GenerateSummary:
    """What a generation run wrote."""

    output: Path  # the dataset: OUTPUT/synthetic
    folder: Path  # OUTPUT/synthetic/METHOD, replaced by this run
    method: str
    model_name: str
    model_version: str
    seed: int
    temperature: float
    pixel_temperature: float
    latent_prior: str
    shards: int
    rows: int
    counts: dict[int | None, int]  # samples per label (None: no label)
    class_names: list[str]
    files: list[Path]
    created_at: datetime
    grid: Path | None = None
    compare_with: str | None = None  # the real images the samples were measured against
    fidelity: dict | None = None  # scoring.fidelity.per_label_fidelity of the samples against them
    fidelity_run: str | None = None  # the MLflow run the figures were logged to
    run_id: str = ""  # the run tag in the file names: part-RUN_ID-...
    manifest_path: Path | None = None  # FOLDER/_manifest.json

    def fidelity_metrics(self) -> dict[str, float]:
        """The figures as MLflow metrics: ``fidelity_METHOD_{precision,recall,density,coverage,diversity}``
        (means over labels), ``..._worst`` (the lowest label's) and ``..._label_L`` (label index L's)."""
        if not self.fidelity:
            return {}
        prefix = f"fidelity_{self.method}"
        out: dict[str, float] = {}
        for metric in FIDELITY_METRICS:
            out[f"{prefix}_{metric}"] = self.fidelity[metric]
            if metric in self.fidelity["worst"]:
                out[f"{prefix}_{metric}_worst"] = self.fidelity["worst"][metric][1]
            for label, figures in self.fidelity["labels"].items():
                if label is not None:
                    out[f"{prefix}_{metric}_label_{label}"] = figures[metric]
        return out

    def label_name(self, label: int | None) -> str:
        if label is None:
            return "(none)"
        return self.class_names[label] if label < len(self.class_names) else str(label)

    def lines(self) -> list[str]:
        pixels = f"pixel temperature {self.pixel_temperature:g}" if self.pixel_temperature else "likelihood mean"
        if self.method in ("prior", "conditional"):
            pixels = f"{self.latent_prior} latent prior, {pixels}"
        per_label = ", ".join(f"{self.label_name(k)}: {v}" for k, v in self.counts.items())
        out = [
            f"model:        {self.model_name} v{self.model_version}",
            f"method:       {self.method} ("
            + ("" if self.method == "interpolate" else f"temperature {self.temperature:g}, ")
            + f"{pixels}, seed {self.seed})",
            f"samples:      {self.rows:,} in {self.shards} shard{'s' if self.shards != 1 else ''}",
            f"per label:    {per_label}",
            f"dataset:      {self.output}",
            f"written:      {self.folder} ({len(self.files)} Parquet file{'s' if len(self.files) != 1 else ''})",
        ]
        if self.manifest_path:
            out.append(f"manifest:     {self.manifest_path} (run {self.run_id})")
        if self.grid:
            out.append(f"grid:         {self.grid}")
        return out + self.fidelity_lines()

    def fidelity_lines(self) -> list[str]:
        f = self.fidelity
        if not f:
            return []
        labelled = None not in f["labels"] and None not in f["skipped"]
        real = sum(v["real"] for v in f["labels"].values())
        out = [
            f"compared:     with {real:,} real images of {self.compare_with}: improved precision and recall "
            f"(Kynkaanniemi et al. 2019), density and coverage (Naeem et al. 2020), k = {f['k']}, pixel space; "
            "diversity = mean pairwise distance of the samples / of the real images"
            + ("; per label" if labelled else "; all samples pooled"),
        ]
        fewest = min((v["real"] for v in f["labels"].values()), default=0)
        if 0 < fewest < DENSE_REFERENCE:
            out.append(
                f"caution:      {fewest} real images in the smallest group: with fewer than about "
                f"{DENSE_REFERENCE} the k-NN balls grow so wide that pixel noise counts as realistic; "
                "compare with a denser set (benchmarks/synthetic_quality.py)"
            )
        for metric in FIDELITY_METRICS:
            line = f"{metric + ':':<14}{f[metric]:.3f}"
            if labelled and metric in f["worst"]:
                label, value = f["worst"][metric]
                line += f" (mean over {len(f['labels'])} labels; worst {self.label_name(label)}: {value:.3f})"
            out.append(line)
        if labelled and f["labels"]:
            out.append(
                "by label:     "
                + ", ".join(
                    f"{self.label_name(k)}: P {v['precision']:.2f} R {v['recall']:.2f} C {v['coverage']:.2f} "
                    f"D {v['diversity']:.2f}"
                    for k, v in f["labels"].items()
                )
            )
        if f["skipped"]:
            skipped = ", ".join("all" if k is None else self.label_name(k) for k in f["skipped"])
            out.append(f"not measured: {skipped} (each side needs more than k = {f['k']} images)")
        if self.fidelity_run:
            out.append(f"logged:       fidelity_{self.method}_* metrics to MLflow run {self.fidelity_run}")
        return out


def measure_fidelity(
    dataset: Path, method: str, compare_with: str, spec: ModelSpec, shape: tuple[int, int, int] | None = None
) -> dict:
    """:func:`scoring.fidelity.per_label_fidelity` of the samples that ``method`` wrote to ``dataset``
    (the ``synthetic/`` folder, or a run's staged folder of that method) against the real images of
    ``compare_with``, read through the input contract with the model's pixel scale. Real labels are
    matched to the model's classes by name; without labels on either side the sets are compared whole."""
    from scoring.fidelity import per_label_fidelity
    from training.data import read_images

    result = read_images(compare_with, shape=shape, pixel_scale=spec.pixel_scale)
    if result.rejects.num_rows:
        log.warning("--compare-with %s: %s", compare_with, result.describe_rejects())
    real = result.data
    table = synthetic.read_synthetic(dataset, method, columns=["label", "height", "width", "channels", "pixels"])
    fake = synthetic.images_of(table)
    if real.images.shape[1:] != fake.shape[1:]:
        raise GenerateError(
            f"--compare-with {compare_with}: its images are {'x'.join(map(str, real.images.shape[1:]))}, the "
            f"samples {'x'.join(map(str, fake.shape[1:]))}; give images of the model's shape"
        )
    fake_labels = None if table.column("label").null_count else table.column("label").to_numpy()
    real_labels = None
    if fake_labels is not None and real.labels is not None:
        if indices_only(real.class_names, list(spec.class_names)):  # bare class indices, as vae score reads them
            real_labels = np.where(real.labels < len(spec.class_names), real.labels, -1).astype(np.int64)
        else:
            classes = {name: i for i, name in enumerate(spec.class_names)}
            to_model = np.array([classes.get(name, -1) for name in (real.class_names or [])], dtype=np.int64)
            real_labels = to_model[real.labels]
        if not (real_labels >= 0).any():
            raise GenerateError(
                f"--compare-with {compare_with}: none of its labels ({', '.join((real.class_names or [])[:12])}) "
                f"is a class of the model ({', '.join(spec.class_names[:12])})"
            )
    else:
        fake_labels = None  # unlabelled samples or real images: compare the sets whole
    return per_label_fidelity(real.images, real_labels, fake, fake_labels, k=DEFAULT_FIDELITY_K)


def generate_dataset(
    options: GenerateOptions,
    *,
    input_data: ImageData | None = None,
    test_pipeline: beam.Pipeline | None = None,
) -> GenerateSummary:
    """Generates samples with ``options.model`` in a Beam pipeline and writes them to
    ``OUTPUT/synthetic/METHOD/label-L/*.parquet``, replacing that method's folder only on success.

    ``prior``: ``n`` samples (default 1,000), z ~ N(0, T^2 I); a conditional model's labels are spread
    evenly over ``class_labels`` (default: all). ``conditional``: ``per_label`` samples (default 100)
    for each of ``class_labels`` (or ``n`` spread over them); a plain model raises
    :class:`GenerateError`. ``posterior``: encodes the images of ``input`` (default: the built-in
    digits) or ``input_data``, every one once, or ``n`` samples cycling over them, or ``per_label``
    per label; ``class_labels`` filters them. ``interpolate``: ``steps`` images decoded on the straight
    line between the posterior means of the images ``from_id`` and ``to_id`` of ``input`` (a
    conditional model decodes with the first's label). ``compare_with``: real images (e.g. ``digits:holdout``)
    to measure the samples against (:func:`measure_fidelity`: precision, recall and diversity per
    label), in ``summary.fidelity`` and logged as MLflow metrics to the model version's run if it has
    one (:meth:`GenerateSummary.fidelity_metrics`). ``test_pipeline``: a pipeline to build into and run
    instead of :func:`pipeline.beam.runner.make_pipeline`'s. The method's folder gets a
    ``_manifest.json`` (:mod:`pipeline.outputs.manifest`) in the same commit; ``options.result_json``:
    also write the outcome there (:mod:`pipeline.outputs.result_json`), failed or not.
    """
    output = output_folder(options.output) if options.output else None
    known = result_json.result("generate", method=options.method, output=output)
    with result_json.recorded(options.result_json, result_json.generate_result, known) as record:
        return record(_generate_dataset(options, input_data, test_pipeline))


def _refuse_legacy_layout(root: Path) -> None:
    legacy = synthetic.legacy_partitions(root)
    if legacy:
        raise GenerateError(
            f"{root} holds {', '.join(p.name for p in legacy)}, written in the older layout (method and label "
            "only in hive folder names), which cannot be read together with this one: move or delete them"
        )


def _reads_input(method: str) -> bool:
    return method in ("posterior", "interpolate")


def _plan(options: GenerateOptions, model: ModelRef, spec: ModelSpec, vae: Any, input_data: ImageData | None) -> Plan:
    """The samples to draw: an interpolation's steps, or :func:`plan_samples`' draws (reading the
    input images for ``posterior``)."""
    from training import data as data_lib

    data = input_data
    if data is None and _reads_input(options.method):
        data = data_lib.load(options.input or DEFAULT_INPUT, options.shape, pixel_scale=spec.pixel_scale)
    if options.method == "interpolate":
        return plan_interpolation(model, spec, vae, data, options.from_id, options.to_id, options.steps)
    return plan_samples(
        model,
        spec,
        options.method,
        n=options.n,
        per_label=options.per_label,
        labels=options.class_labels,
        data=data,
    )


def _write_run_manifest(
    tmp: Path, options: GenerateOptions, input_data: ImageData | None, model: ModelRef, run: str, rows: int
) -> None:
    """The method folder's ``_manifest.json``: the model, the run and, for methods that read
    images, the input and its fingerprint."""
    source = None
    if _reads_input(options.method):
        source = input_data if input_data is not None else options.input or DEFAULT_INPUT
    about = {"model": model, "run_id": run, "rows": rows, "partition": options.method}
    fingerprint = None if source is None else fingerprint_of(source)
    named = source if isinstance(source, str | None) else source.source
    write_manifest(tmp, build_manifest(dataset=synthetic.DATASET, input=named, input_fingerprint=fingerprint, **about))


def _generate_dataset(
    options: GenerateOptions, input_data: ImageData | None, test_pipeline: beam.Pipeline | None
) -> GenerateSummary:
    from training import registry

    options.check()
    output = Path(output_folder(options.output))  # as vae score resolves it (local only: options.check)
    root = output / synthetic.DATASET
    _refuse_legacy_layout(root)
    model = registry.pin(options.model, options.work_dir)
    vae = model.load()
    spec = ModelSpec.of(vae)
    plan = _plan(options, model, spec, vae, input_data)
    work = make_shards(plan, options.shards)
    request = Request(
        model=model,
        method=options.method,
        seed=int(options.seed),
        temperature=float(options.temperature),
        pixel_temperature=options.pixels(),
        latent_prior=str(options.latent_prior),
        created_at=datetime.now(UTC).replace(microsecond=0),
        run=uuid.uuid4().hex[:8],
        class_names=tuple(spec.class_names),
    )
    folder = synthetic.method_dir(root, options.method)
    log.info(
        "generating %d %s samples with %s v%s in %d shard(s) -> %s",
        len(plan),
        options.method,
        model.name,
        model.version,
        len(work),
        root,
    )
    # Locks the method's folder (and shares the dataset with other methods' runs) until it is committed.
    with atomic_dataset_dir(folder, staging=output / STAGING) as tmp:
        pipeline = test_pipeline or make_pipeline(options)
        build_pipeline(pipeline, work, request, str(tmp))
        pipeline.run().wait_until_finish()
        files, counts = synthetic.inventory(tmp)
        if sum(counts.values()) != len(plan):
            raise RuntimeError(f"the pipeline wrote {sum(counts.values())} samples, {len(plan)} were planned")
        _write_run_manifest(tmp, options, input_data, model, request.run, len(plan))
        # measured before the commit: a comparison that cannot be made replaces nothing
        figures = None
        if options.compare_with:
            figures = measure_fidelity(tmp, options.method, options.compare_with, spec, options.shape)
    summary = GenerateSummary(
        output=root,
        folder=folder,
        method=options.method,
        model_name=model.name,
        model_version=model.version,
        seed=request.seed,
        temperature=request.temperature,
        pixel_temperature=request.pixel_temperature,
        latent_prior=request.latent_prior,
        shards=len(work),
        rows=len(plan),
        counts=counts,
        class_names=plan.class_names,
        files=[folder / f.relative_to(tmp) for f in files],
        created_at=request.created_at,
        run_id=request.run,
        manifest_path=folder / MANIFEST,
    )
    log.info("wrote %d samples to %s", summary.rows, folder)
    if figures is not None:
        from dataclasses import replace

        summary = replace(summary, compare_with=options.compare_with, fidelity=figures)
        try:  # the samples are committed: a tracking server that is down costs the log, not the run
            run_id = registry.log_metrics(model.name, model.version, summary.fidelity_metrics(), options.work_dir)
        except Exception as exc:  # noqa: BLE001 - MLflow may raise anything when its store is unreachable
            log.warning("the fidelity figures were not logged to MLflow (%s): they are in this run's output", exc)
        else:
            summary = replace(summary, fidelity_run=run_id)
    return summary


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> GenerateSummary:
    """Beam-examples style entry point: ``python -m pipeline.beam.generate_job --method prior --n 1000
    --output ... [--direct_num_workers 4 ...]`` (flags: :class:`~pipeline.beam.options.GenerateOptions`)."""
    options = GenerateOptions.from_argv(sys.argv[1:] if argv is None else argv)
    return generate_dataset(options, test_pipeline=test_pipeline)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for line in run().lines():
        print(line)
