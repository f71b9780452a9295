"""One options object per Beam job, carrying every setting of a run: ``vae score`` and ``vae
generate`` build it from their parameters (:meth:`JobOptions.of`), a Beam-style command line from its
flags (:meth:`JobOptions.from_argv`, e.g. ``python -m pipeline.beam.score_job --model ... --output ...
--runner DataflowRunner --project P``). Beam reads the runner flags from the same object.

Flags are Beam-style (``--batch_size``) and also take hyphens (``--batch-size``). ``vae generate
--labels`` is ``--class_labels`` here: ``--labels`` is Dataflow's job labels.

Where :meth:`JobOptions.of` gets both keyword values and Beam flags, a keyword value is explicit: a
flag that names the same option (``--batch_size``, ``--runner`` ...) is refused with an error naming
both, never silently overridden. Values that are only defaults (the ``vae`` parameters a user did not
give) go in ``defaults=`` and give way to such a flag.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Self

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.beam.defaults import (
    DASK_RUNNER,
    DEFAULT_BATCH_SIZE,
    DEFAULT_INTERPOLATION_STEPS,
    DEFAULT_MODEL_URI,
    DEFAULT_RUNNER,
    DEFAULT_RUNNING_MODE,
    DEFAULT_SEED,
    DEFAULT_SHARD_ROWS,
    DEFAULT_SPLIT_SEED,
    DEFAULT_TEMPERATURE,
    DEFAULT_WORKERS,
    METHODS,
    parse_shape,
)
from pipeline.beam.guards import DEFAULT_MAX_REJECT_RATE, DEFAULT_MIN_BRIGHTNESS, DEFAULT_MIN_ROWS
from scoring.sampling_choices import DEFAULT_LATENT_PRIOR, DEFAULT_PIXEL_TEMPERATURE, LATENT_PRIORS

#: Beam's own runner options that the ``vae`` commands set, and their defaults (ours, not Beam's:
#: the local engine with worker processes). Given as leading flags, so later flags override them.
RUNNER_OPTIONS = ("runner", "direct_num_workers", "direct_running_mode")
RUNNER_DEFAULT_FLAGS = (
    f"--runner={DEFAULT_RUNNER}",
    f"--direct_num_workers={DEFAULT_WORKERS}",
    f"--direct_running_mode={DEFAULT_RUNNING_MODE}",
)
_PARTITION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=[A-Za-z0-9_.:-]+$")


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    """``--name``, and ``--name-with-hyphens`` where that differs."""
    flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    parser.add_argument(*flags, dest=name, **kwargs)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # a flag Beam cannot parse either: say so, do not exit
        raise ValueError(f"Beam pipeline options: {message}")


def _shape(text: str) -> tuple[int, int, int]:
    try:
        return parse_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


class JobOptions(PipelineOptions):
    """The flags both jobs take. Beam builds one parser from every direct subclass of
    ``PipelineOptions``, so a flag is declared by one class only: the jobs' classes list
    ``PipelineOptions`` again as a base so that Beam finds their own flags too."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        _flag(parser, "model", default=DEFAULT_MODEL_URI, help="models:/NAME@ALIAS, models:/NAME/VERSION or .keras")
        _flag(
            parser,
            "input",
            default=None,
            help="the images to read (see `vae score --help`; `vae score` requires it); default digits",
        )
        _flag(parser, "output", default=None, help="output folder (required)")
        _flag(parser, "shape", type=_shape, default=None, help="image shape HxWxC of a Parquet 'pixels' column")
        _flag(parser, "work_dir", default=None, help="working folder: the MLflow store (default: vae's)")
        _flag(parser, "result_json", default=None, help="also write the run's outcome to this JSON file, failed or not")
        _flag(parser, "dask_address", default=None, help="DaskRunner: a running scheduler, e.g. tcp://HOST:8786")
        _flag(
            parser,
            "dask_workers",
            type=int,
            default=DEFAULT_WORKERS,
            help="DaskRunner without --dask-address: worker processes of the local cluster",
        )

    @classmethod
    def option_names(cls) -> frozenset[str]:
        """The options this class declares (its own and its bases')."""
        parser = argparse.ArgumentParser(add_help=False)
        for klass in cls.__mro__:
            if klass is not PipelineOptions and "_add_argparse_args" in vars(klass):
                klass._add_argparse_args(parser)
        return frozenset(vars(parser.parse_args([])))

    @classmethod
    def of(cls, beam_args: Sequence[str] = (), *, defaults: Mapping[str, Any] | None = None, **values: Any) -> Self:
        """The options from keyword values named like the options (the ``vae`` commands, tests), the
        runner options (``runner``, ``direct_num_workers``, ``direct_running_mode``) among them, and
        any other Beam pipeline flags in ``beam_args``; checked (:meth:`check`).

        ``values`` are explicit: a flag in ``beam_args`` for the same option is a ValueError naming
        both. ``defaults`` (same names) are used only for the options ``beam_args`` does not name."""
        defaults = dict(defaults or {})
        unknown = sorted((set(values) | set(defaults)) - cls.option_names() - set(RUNNER_OPTIONS))
        if unknown:
            raise TypeError(f"{cls.__name__} has no option {', '.join(unknown)}")
        given = cls.flags_given(beam_args)
        twice = sorted(set(values) & set(given))
        if twice:
            raise ValueError(
                "set twice, as a value and as a Beam flag: "
                + "; ".join(f"{name}={values[name]!r} and {given[name]}" for name in twice)
                + ": give each once"
            )
        values = {**{k: v for k, v in defaults.items() if k not in given}, **values}
        values = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in values.items()}
        options = PipelineOptions([*RUNNER_DEFAULT_FLAGS, *beam_args], **values).view_as(cls)
        options.check()
        return options

    @classmethod
    def flags_given(cls, beam_args: Sequence[str]) -> dict[str, str]:
        """The options of this class and the runner options that ``beam_args`` sets: {option name:
        the flag as given, e.g. ``--direct_num_workers=3``}. Parsed the way Beam parses them (whole
        flag names only, ``--name value`` or ``--name=value``)."""
        parser = _Parser(allow_abbrev=False, add_help=False)
        for klass in cls.__mro__:
            if klass is not PipelineOptions and "_add_argparse_args" in vars(klass):
                klass._add_argparse_args(parser)
        for name in RUNNER_OPTIONS:  # Beam's own flags: underscores only
            parser.add_argument(f"--{name}", dest=name)
        unset = object()
        namespace = argparse.Namespace(**{action.dest: unset for action in parser._actions})
        parser.parse_known_args(list(beam_args), namespace)
        given = {name for name, value in vars(namespace).items() if value is not unset}
        flags: dict[str, str] = {}
        for i, arg in enumerate(beam_args):
            flag, _, value = arg.partition("=")
            action = parser._option_string_actions.get(flag)
            if action is not None and action.dest in given:
                if not value and action.nargs != 0 and i + 1 < len(beam_args):
                    arg = f"{arg} {beam_args[i + 1]}"
                flags[action.dest] = arg
        return flags

    @classmethod
    def from_argv(cls, argv: Sequence[str]) -> Self:
        """The options from a Beam-style command line; checked (:meth:`check`)."""
        options = PipelineOptions([*RUNNER_DEFAULT_FLAGS, *argv]).view_as(cls)
        options.check()
        return options

    @property
    def runner(self) -> str:
        return self.view_as(StandardOptions).runner or DEFAULT_RUNNER

    def check(self) -> None:
        """Raises ValueError, naming the flag, for a value the job cannot take."""
        if not self.output:
            raise ValueError("--output is required")
        if self.dask_workers < 1:
            raise ValueError(f"--dask-workers must be at least 1, got {self.dask_workers}")
        if self.dask_address is not None and self.runner != DASK_RUNNER:
            raise ValueError(f"--dask-address is for --runner {DASK_RUNNER}, not {self.runner}")


class ScoreOptions(JobOptions, PipelineOptions):
    """``vae score``: what :func:`pipeline.beam.score_job.score_dataset` scores, how, and where to."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        _flag(parser, "partition", default=None, help="KEY=VALUE: write and replace only this hive partition")
        _flag(parser, "iwae_k", type=int, default=None, help="also the IWAE bound with K samples")
        _flag(parser, "fpr", type=float, default=None, help="re-threshold at this false positive rate")
        _flag(
            parser,
            "batch_size",
            type=int,
            default=DEFAULT_BATCH_SIZE,
            help="rows per batch and model call (default: 8,192 rows of 8x8 images, fewer of larger ones, >= 1,024)",
        )
        _flag(parser, "split_seed", type=int, default=DEFAULT_SPLIT_SEED, help="seed of NAME:train|validation|...")
        _flag(parser, "shard_rows", type=int, default=DEFAULT_SHARD_ROWS, help="rows per unit of work")
        _flag(parser, "pixel_scores", action="store_true", help="also each pixel's NLL, the pixel_nll column")
        _flag(
            parser,
            "max_reject_rate",
            type=float,
            default=DEFAULT_MAX_REJECT_RATE,
            help="fail, committing nothing, when more than this share of the rows read is rejected",
        )
        _flag(
            parser,
            "min_rows",
            type=int,
            default=DEFAULT_MIN_ROWS,
            help="fail, committing nothing, when the input has fewer rows",
        )
        _flag(
            parser,
            "min_brightness",
            type=float,
            default=DEFAULT_MIN_BRIGHTNESS,
            help="fail, committing nothing, when every image checked is darker than this share of the training "
            "images' typical brightest pixel (wrongly scaled pixels); 0 turns it off",
        )
        _flag(
            parser, "pixel_scale", type=float, default=None, help="divide numeric pixels by this (default: the model's)"
        )

    def check(self) -> None:
        super().check()
        if self.partition is not None and not _PARTITION.match(self.partition):
            raise ValueError(f"--partition {self.partition!r}: expected KEY=VALUE, e.g. date=2026-11-20")
        if self.iwae_k is not None and self.iwae_k < 1:
            raise ValueError(f"--iwae-k must be at least 1, got {self.iwae_k}")
        if self.fpr is not None and not 0.0 < self.fpr < 1.0:
            raise ValueError(f"--fpr must be in (0, 1), got {self.fpr}")
        for name in ("batch_size", "shard_rows"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.max_reject_rate <= 1.0:
            raise ValueError(f"--max-reject-rate must be in [0, 1], got {self.max_reject_rate}")
        if self.min_rows < 0:
            raise ValueError(f"--min-rows must be at least 0, got {self.min_rows}")
        if not 0.0 <= self.min_brightness <= 1.0:
            raise ValueError(f"--min-brightness must be in [0, 1], got {self.min_brightness}")
        if self.pixel_scale is not None and not self.pixel_scale > 0:
            raise ValueError(f"--pixel-scale must be positive, got {self.pixel_scale}")


class GenerateOptions(JobOptions, PipelineOptions):
    """``vae generate``: what :func:`pipeline.beam.generate_job.generate_dataset` samples, and where to."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        _flag(
            parser,
            "method",
            choices=METHODS,
            default=None,
            help="prior, conditional, posterior or interpolate (required)",
        )
        _flag(parser, "from_id", default=None, help="interpolate: the example_id of the first image")
        _flag(parser, "to_id", default=None, help="interpolate: the example_id of the last image")
        _flag(
            parser,
            "steps",
            type=int,
            default=DEFAULT_INTERPOLATION_STEPS,
            help="interpolate: decoded points from one image to the other, both ends included",
        )
        _flag(parser, "n", type=int, default=None, help="samples in all")
        _flag(parser, "per_label", type=int, default=None, help="samples per label")
        _flag(parser, "class_labels", default=None, help="only these labels: indices or class names, e.g. 0,3,7")
        _flag(parser, "temperature", type=float, default=DEFAULT_TEMPERATURE, help="scales the latent spread")
        _flag(
            parser,
            "pixel_temperature",
            type=float,
            default=None,
            help=f"pixels drawn from p(x|z)^(1/T); 0: its mean on the grey levels [{DEFAULT_PIXEL_TEMPERATURE:g}]",
        )
        _flag(parser, "sample_pixels", action="store_true", help="the same as --pixel_temperature 1")
        _flag(
            parser,
            "latent_prior",
            default=DEFAULT_LATENT_PRIOR,
            help=f"prior and conditional latents: {' or '.join(LATENT_PRIORS)} (the fitted aggregate posterior)",
        )
        _flag(parser, "seed", type=int, default=DEFAULT_SEED, help="the same seed gives the same images")
        _flag(parser, "shards", type=int, default=None, help="units of work (does not change the images)")
        _flag(
            parser,
            "compare_with",
            default=None,
            help="real labelled images, at least 300 per label, that the model never trained on, to measure the "
            "samples against: precision, recall, density, coverage, diversity per label",
        )

    def pixels(self) -> float:
        """The pixel temperature this run decodes with: the flag, else 0 (the likelihood's mean) for
        interpolate, whose images are pictures of the latent space, else the default."""
        if self.sample_pixels:
            return 1.0
        if self.pixel_temperature is not None:
            return float(self.pixel_temperature)
        return 0.0 if self.method == "interpolate" else DEFAULT_PIXEL_TEMPERATURE

    def check(self) -> None:
        super().check()
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("n", "per_label", "shards"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.n is not None and self.per_label is not None:
            raise ValueError("give --n (samples in all) or --per-label (samples per label), not both")
        if self.seed < 0:
            raise ValueError(f"--seed must be a non-negative integer, got {self.seed}")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be non-negative, got {self.temperature}")
        if self.pixel_temperature is not None and self.pixel_temperature < 0:
            raise ValueError(f"--pixel-temperature must be non-negative, got {self.pixel_temperature}")
        if self.sample_pixels and self.pixel_temperature not in (None, 1.0):
            raise ValueError("--sample-pixels means --pixel-temperature 1: give one of them")
        if self.latent_prior not in LATENT_PRIORS:
            raise ValueError(f"--latent-prior must be one of {', '.join(LATENT_PRIORS)}, got {self.latent_prior!r}")
        if self.input is not None and self.method not in ("posterior", "interpolate"):
            raise ValueError(f"--input is only used by --method posterior or interpolate, not {self.method}")
        if self.method == "interpolate":
            if not self.from_id or not self.to_id:
                raise ValueError("--method interpolate needs the two images' example ids: --from ID --to ID")
            if self.steps < 2:
                raise ValueError(f"--steps must be at least 2 (both ends), got {self.steps}")
            if self.n is not None or self.per_label is not None or self.class_labels is not None:
                raise ValueError("--method interpolate takes --steps, not --n, --per-label or --labels")
        elif self.from_id is not None or self.to_id is not None:
            raise ValueError(f"--from and --to are only used by --method interpolate, not {self.method}")
        if "://" in str(self.output) or self.runner not in (DEFAULT_RUNNER, DASK_RUNNER):
            raise ValueError(
                f"vae generate writes to a local folder with the DirectRunner only, or the {DASK_RUNNER} when "
                "its workers see that folder at the same path (its atomic commit renames local folders); got "
                f"--output {self.output} --runner {self.runner}"
            )
