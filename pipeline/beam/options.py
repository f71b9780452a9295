"""One options object per Beam job, carrying every setting of a run: ``vae score`` and ``vae
generate`` build it from their parameters (:meth:`JobOptions.of`), a Beam-style command line from its
flags (:meth:`JobOptions.from_argv`, e.g. ``python -m pipeline.beam.score_job --model ... --output ...
--runner DataflowRunner --project P``). Beam reads the runner flags from the same object.

The flags are declared once, in :mod:`pipeline.beam.flags`. They are Beam-style (``--batch_size``)
and also take hyphens (``--batch-size``). ``vae generate --labels`` is ``--class_labels`` here:
``--labels`` is Dataflow's job labels.

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
    DEFAULT_RUNNER,
    DEFAULT_RUNNING_MODE,
    DEFAULT_WORKERS,
    parse_shape,
)
from pipeline.beam.flags import DASK_FLAGS, GENERATE_FLAGS, JOB_FLAGS, SCORE_FLAGS
from scoring.sampling_choices import DEFAULT_PIXEL_TEMPERATURE

#: Beam's own runner options that the ``vae`` commands set, and their defaults (ours, not Beam's:
#: the local engine with worker processes). Given as leading flags, so later flags override them.
RUNNER_OPTIONS = ("runner", "direct_num_workers", "direct_running_mode")
RUNNER_DEFAULT_FLAGS = (
    f"--runner={DEFAULT_RUNNER}",
    f"--direct_num_workers={DEFAULT_WORKERS}",
    f"--direct_running_mode={DEFAULT_RUNNING_MODE}",
)
_PARTITION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=[A-Za-z0-9_.:-]+$")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # a flag Beam cannot parse either: say so, do not exit
        raise ValueError(f"Beam pipeline options: {message}")


def _add_own_flags(cls: type, parser: argparse.ArgumentParser) -> None:
    """A class's own ``FLAGS``, each as ``--name`` and ``--name-with-hyphens`` where that differs.
    Beam calls the ``_add_argparse_args`` of each class in the MRO that has one in its own
    ``__dict__``, so each class that declares ``FLAGS`` sets this as its ``_add_argparse_args``."""
    for flag in vars(cls)["FLAGS"]:
        names = [f"--{flag.name}"] + ([f"--{flag.name.replace('_', '-')}"] if "_" in flag.name else [])
        kwargs: dict[str, Any] = {"dest": flag.name, "default": flag.default, "help": flag.help.replace("%", "%%")}
        if flag.type is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = _shape if flag.type is tuple else flag.type
        parser.add_argument(*names, **kwargs)


def _shape(text: str) -> tuple[int, int, int]:
    try:
        return parse_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


class JobOptions(PipelineOptions):
    """The flags both jobs take. Beam builds one parser from every direct subclass of
    ``PipelineOptions``, so a flag is declared by one class only: the jobs' classes list
    ``PipelineOptions`` again as a base so that Beam finds their own flags too."""

    FLAGS = JOB_FLAGS + DASK_FLAGS

    _add_argparse_args = classmethod(_add_own_flags)

    @classmethod
    def _declaring(cls) -> list[type[JobOptions]]:
        """This class and the bases that declare flags of their own (``FLAGS``)."""
        return [klass for klass in cls.__mro__ if "FLAGS" in vars(klass)]

    def check_flags(self) -> None:
        """Raises ValueError, naming the flag, for a value out of its declared range or choices."""
        for klass in self._declaring():
            for flag in klass.FLAGS:
                problem = flag.problem(getattr(self, flag.name))
                if problem:
                    raise ValueError(problem)

    @classmethod
    def option_names(cls) -> frozenset[str]:
        """The options this class declares (its own and its bases')."""
        return frozenset(flag.name for klass in cls._declaring() for flag in klass.FLAGS)

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
        for klass in cls._declaring():
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
        self.check_flags()
        if self.dask_address is not None and self.runner != DASK_RUNNER:
            raise ValueError(f"--dask-address is for --runner {DASK_RUNNER}, not {self.runner}")


class ScoreOptions(JobOptions, PipelineOptions):
    """``vae score``: what :func:`pipeline.beam.score_job.score_dataset` scores, how, and where to."""

    FLAGS = SCORE_FLAGS

    _add_argparse_args = classmethod(_add_own_flags)

    def check(self) -> None:
        super().check()
        if self.partition is not None and not _PARTITION.match(self.partition):
            raise ValueError(f"--partition {self.partition!r}: expected KEY=VALUE, e.g. date=2026-11-20")


class GenerateOptions(JobOptions, PipelineOptions):
    """``vae generate``: what :func:`pipeline.beam.generate_job.generate_dataset` samples, and where to."""

    FLAGS = GENERATE_FLAGS

    _add_argparse_args = classmethod(_add_own_flags)

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
        if self.n is not None and self.per_label is not None:
            raise ValueError("give --n (samples in all) or --per-label (samples per label), not both")
        if self.sample_pixels and self.pixel_temperature not in (None, 1.0):
            raise ValueError("--sample-pixels means --pixel-temperature 1: give one of them")
        if self.input is not None and self.method not in ("posterior", "interpolate"):
            raise ValueError(f"--input is only used by --method posterior or interpolate, not {self.method}")
        if self.method == "interpolate":
            if not self.from_id or not self.to_id:
                raise ValueError("--method interpolate needs the two images' example ids: --from ID --to ID")
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
