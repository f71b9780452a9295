"""Every flag of the two Beam jobs, declared once: name, type, default, range and help. The Beam
options (:mod:`pipeline.beam.options`) build their argparse flags and their range checks from this
table, and ``vae score`` / ``vae generate`` their click options (:func:`pipeline.cli.support.job_flags`),
so a flag cannot mean one thing on the command line and another in the job. Free of Beam: the ``vae``
commands read it at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.beam.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FIDELITY_K,
    DEFAULT_INPUT,
    DEFAULT_INTERPOLATION_STEPS,
    DEFAULT_MODEL_URI,
    DEFAULT_PER_LABEL,
    DEFAULT_PRIOR_SAMPLES,
    DEFAULT_SEED,
    DEFAULT_SHARD_ROWS,
    DEFAULT_SPLIT_SEED,
    DEFAULT_TEMPERATURE,
    DEFAULT_WORKERS,
    METHODS,
    SAMPLES_PER_SHARD,
)
from pipeline.beam.guards import DEFAULT_MAX_REJECT_RATE, DEFAULT_MIN_BRIGHTNESS, DEFAULT_MIN_ROWS
from scoring.sampling_choices import DEFAULT_LATENT_PRIOR, DEFAULT_PIXEL_TEMPERATURE, LATENT_PRIORS


@dataclass(frozen=True)
class Flag:
    """One job option. ``name`` is the option's (``batch_size``: Beam's ``--batch_size``, also
    ``--batch-size``); ``cli`` the ``vae`` spelling where it differs (``--labels``: Beam's
    ``--labels`` is Dataflow's job labels); ``minimum``/``maximum`` bound a number, excluded where
    ``open``; ``cli=""`` leaves it out of the ``vae`` command (it has its own way to set it). A
    ``tuple`` flag is an image shape, ``HxWxC``."""

    name: str
    help: str
    type: type = str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    open: bool = False
    choices: tuple[str, ...] | None = None
    cli: str | None = None
    metavar: str | None = None
    show_default: bool = False

    @property
    def spelling(self) -> str:
        """The flag as the ``vae`` command spells it, for messages."""
        return self.cli or f"--{self.name.replace('_', '-')}"

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` for this flag, naming it, or None."""
        if self.choices is not None and value not in self.choices:
            return f"{self.spelling} must be one of {', '.join(self.choices)}, got {value!r}"
        if value is None or self.type is bool:
            return None
        low, high = self.minimum, self.maximum
        below = low is not None and (value <= low if self.open else value < low)
        above = high is not None and (value >= high if self.open else value > high)
        if not (below or above):
            return None
        if high is not None:
            within = f"({low:g}, {high:g})" if self.open else f"[{low:g}, {high:g}]"
            return f"{self.spelling} must be in {within}, got {value}"
        if low == 0:
            return f"{self.spelling} must be {'positive' if self.open else 'non-negative'}, got {value}"
        return f"{self.spelling} must be at least {low:g}, got {value}"


JOB_FLAGS = (
    Flag(
        "model",
        "models:/NAME@ALIAS, models:/NAME/VERSION, or a .keras file. An alias is resolved once, at the start.",
        default=DEFAULT_MODEL_URI,
        show_default=True,
    ),
    Flag("input", f"The images to read [{DEFAULT_INPUT}]."),
    Flag("output", "Output folder (required)."),
    Flag("shape", "Image shape HxWxC of a Parquet 'pixels' column without height/width columns [the model's].", tuple),
    Flag("work_dir", "Working folder: the MLflow store [vae's].", cli=""),
    Flag("result_json", "Also write the run's outcome to this JSON file, failed or not.", cli=""),
)

DASK_FLAGS = (
    Flag(
        "dask_address",
        "DaskRunner: the scheduler of a running Dask cluster, e.g. tcp://HOST:8786 [a local cluster started for "
        "the run].",
    ),
    Flag(
        "dask_workers",
        "DaskRunner without --dask-address: worker processes of the local cluster.",
        int,
        DEFAULT_WORKERS,
        minimum=1,
        show_default=True,
    ),
)

SCORE_FLAGS = (
    Flag(
        "partition",
        "Write only this hive partition, e.g. date=2026-11-20: OUTPUT/scores/date=2026-11-20/ and the same under "
        "rejects/, replacing that partition alone (what the daily Airflow DAG uses).",
        metavar="KEY=VALUE",
    ),
    Flag(
        "iwae_k",
        "Also compute the importance-weighted bound iwae_nll with K samples (slower; null when not given).",
        int,
        minimum=1,
    ),
    Flag(
        "pixel_scores",
        "Also write pixel_nll: each pixel's share of reconstruction_nll, a list in row-major (H, W, C) order (a "
        "heat map of where the image is unusual; null when not given).",
        bool,
        False,
    ),
    Flag(
        "fpr",
        "Re-threshold at this false positive rate on the model's held-out scores [the stored threshold].",
        float,
        minimum=0,
        maximum=1,
        open=True,
    ),
    Flag(
        "batch_size",
        "Rows per Arrow record batch and per model call [as many as hold 524,288 pixels, between 1,024 and 8,192: "
        "8,192 rows of 8x8 images, 1,024 of 28x28; larger batches score faster and take more memory].",
        int,
        DEFAULT_BATCH_SIZE,
        minimum=1,
    ),
    Flag(
        "split_seed",
        "Seed of the split for NAME:train|validation|calibration (the --seed the model was trained with).",
        int,
        DEFAULT_SPLIT_SEED,
        show_default=True,
    ),
    Flag(
        "shard_rows",
        "Rows per unit of work spread over the workers (Parquet: whole row groups).",
        int,
        DEFAULT_SHARD_ROWS,
        minimum=1,
        show_default=True,
    ),
    Flag(
        "max_reject_rate",
        "Fail (exit 1, replacing nothing) when more than this share of the rows read is rejected; the run's "
        "rejects are kept in OUTPUT/_failed/RUN_ID/rejects/. 1 turns the guard off.",
        float,
        DEFAULT_MAX_REJECT_RATE,
        minimum=0,
        maximum=1,
        show_default=True,
    ),
    Flag(
        "min_rows",
        "Fail (exit 1, replacing nothing) when the input has fewer rows than this (rows read, scored or not).",
        int,
        DEFAULT_MIN_ROWS,
        minimum=0,
        show_default=True,
    ),
    Flag(
        "min_brightness",
        "Fail at once (exit 1, replacing nothing) when the brightest pixel of every image in the first batches is "
        "below this share of the training images' typical brightest pixel: pixels scaled wrongly (0/1 masks read "
        "as 0-255 values, 0-255 values in 16-bit PNGs). 0 turns the guard off.",
        float,
        DEFAULT_MIN_BRIGHTNESS,
        minimum=0,
        maximum=1,
        show_default=True,
    ),
    Flag(
        "pixel_scale",
        "Divide numeric pixels by this instead of the model's scale (e.g. 1 for 0/1 integer masks).",
        float,
        minimum=0,
        open=True,
    ),
)

GENERATE_FLAGS = (
    Flag(
        "method",
        "prior: z drawn from --latent-prior (default: the Gaussian fitted to the training images' posteriors), its "
        "spread scaled by --temperature T (any model); conditional: N images per label (conditional models); "
        "posterior: encode real images from --input, sample z ~ q(z|x), decode; interpolate: decode --steps points "
        "on the straight line between the posterior means of the --input images --from and --to.",
        choices=METHODS,
    ),
    Flag("from_id", "interpolate: the first image's example_id.", cli="--from", metavar="ID"),
    Flag("to_id", "interpolate: the last image's example_id.", cli="--to", metavar="ID"),
    Flag(
        "steps",
        "interpolate: images from one to the other, both ends included.",
        int,
        DEFAULT_INTERPOLATION_STEPS,
        minimum=2,
        show_default=True,
    ),
    Flag(
        "n",
        f"Samples in all [prior: {DEFAULT_PRIOR_SAMPLES}; posterior: one per input image]. For a conditional model "
        "they are spread evenly over the labels; for posterior they cycle over the input images.",
        int,
        minimum=1,
    ),
    Flag("per_label", f"Samples per label [conditional: {DEFAULT_PER_LABEL}]. Not with --n.", int, minimum=1),
    Flag(
        "class_labels",
        "Only these labels, as indices or class names separated by commas, e.g. 0,3,7 [all]. For posterior: only "
        "input images with these labels.",
        cli="--labels",
        metavar="LIST",
    ),
    Flag(
        "temperature",
        "Scales the latent standard deviation: of the prior, or of q(z|x) for posterior (0: the mean).",
        float,
        DEFAULT_TEMPERATURE,
        minimum=0,
        show_default=True,
    ),
    Flag(
        "pixel_temperature",
        "Draw the pixels from p(x|z)^(1/T), the likelihood tempered by T: 1 is a plain draw, below 1 a sharper "
        "one with less speckle, 0 the likelihood's mean on the data's grey levels, an image a person would draw, "
        f"whose variety comes from the latent [{DEFAULT_PIXEL_TEMPERATURE:g}]. docs/synthetic.md.",
        float,
        minimum=0,
    ),
    Flag("sample_pixels", "The same as --pixel-temperature 1.", bool, False),
    Flag(
        "latent_prior",
        "prior and conditional: where latents are drawn. fitted: the Gaussian (per label) fitted to the training "
        "images' posteriors when the model was trained (N(0, I) for older models); standard: N(0, I).",
        default=DEFAULT_LATENT_PRIOR,
        choices=LATENT_PRIORS,
        show_default=True,
    ),
    Flag(
        "seed",
        "Seed: the same seed gives the same images, whatever the shards or workers.",
        int,
        DEFAULT_SEED,
        minimum=0,
        show_default=True,
    ),
    Flag(
        "shards",
        f"Units of work handed to Beam workers [one per {SAMPLES_PER_SHARD} samples]. Does not change the images.",
        int,
        minimum=1,
    ),
    Flag(
        "compare_with",
        "Real labelled images to measure the samples against, never trained on and dense (300 or more per label: "
        "with fewer, pixel noise passes for realistic), e.g. a Parquet file or folder, .npz, PNG folder, read with "
        "the model's pixel scale. Prints improved precision and recall (Kynkaanniemi et al. 2019), density and "
        f"coverage (Naeem et al. 2020), k = {DEFAULT_FIDELITY_K}, pixel space, and diversity (mean pairwise distance "
        "of the samples / of the real images) per label and their means, and logs them as MLflow metrics "
        "fidelity_METHOD_* to the model version's run [none]. benchmarks/synthetic_quality.py prints the same "
        "beside real images against the same reference.",
        metavar="INPUT",
    ),
)
