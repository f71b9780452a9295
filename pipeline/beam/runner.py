"""The Beam pipeline both jobs run in, its runner set up explicitly (cheap to import: Beam loads on first use)."""

from __future__ import annotations

import shlex
import sys
from typing import TYPE_CHECKING, Any

from pipeline.beam.defaults import DASK_RUNNER, DEFAULT_RUNNER, DEFAULT_WORKERS, RUNNING_MODES
from pipeline.logging_setup import is_verbose

if TYPE_CHECKING:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

__all__ = ["DEFAULT_WORKERS", "RUNNING_MODES", "WORKER_COMMAND", "make_pipeline"]

# what a multi_processing DirectRunner starts per worker: Beam's SDK harness behind our logging set-up
WORKER_COMMAND = f"{shlex.quote(sys.executable)} -m pipeline.beam.worker_main"


def make_pipeline(options: PipelineOptions) -> beam.Pipeline:
    """A pipeline for a job's options (:mod:`pipeline.beam.options`), its runner set explicitly.

    ``DirectRunner`` here is Beam's FnApiRunner, the engine the DirectRunner itself picks for batch
    jobs; naming it directly keeps ``--direct_running_mode`` in force and never tries to download the
    Prism runner binary (this project runs offline). ``DaskRunner`` is :mod:`pipeline.beam.dask_runner`'s:
    on ``--dask-address``, or on a local cluster of ``--dask-workers`` processes started for the run.
    Any other runner goes to Beam as is, with the options' other flags (``--project``, ``--region``,
    ``--temp_location``, ``--setup_file`` ...).
    Workers log our progress lines, not the harness's chatter, unless ``--default_sdk_harness_log_level``
    says otherwise (or ``vae -v``); worker processes (``multi_processing``) start through
    :mod:`pipeline.beam.worker_main`, so they print in the command's log format and without
    TensorFlow's start-up lines; the main session is never pickled.
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import DirectOptions, SetupOptions, StandardOptions, WorkerOptions

    runner = options.view_as(StandardOptions).runner or DEFAULT_RUNNER
    mode = options.view_as(DirectOptions).direct_running_mode
    if mode not in RUNNING_MODES:
        raise ValueError(f"direct_running_mode must be one of {', '.join(RUNNING_MODES)}, got {mode!r}")
    worker = options.view_as(WorkerOptions)
    if worker.default_sdk_harness_log_level is None:
        worker.default_sdk_harness_log_level = "INFO" if is_verbose() else "WARNING"
        worker.sdk_harness_log_level_overrides = {"pipeline": "INFO", **(worker.sdk_harness_log_level_overrides or {})}
    options.view_as(SetupOptions).save_main_session = False
    if runner in ("DirectRunner", "FnApiRunner"):
        from apache_beam.portability.api import beam_provision_api_pb2
        from apache_beam.runners.portability.fn_api_runner import fn_runner
        from apache_beam.runners.portability.portable_runner import JobServiceHandle

        encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
        provision = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
        runner_class = _quiet_workers_runner(fn_runner.FnApiRunner)
        return beam.Pipeline(runner=runner_class(provision_info=provision), options=options)
    if runner == DASK_RUNNER:
        from pipeline.beam.dask_runner import DaskRunner

        settings = options.get_all_options()
        dask = DaskRunner(settings.get("dask_address"), settings.get("dask_workers") or DEFAULT_WORKERS)
        return beam.Pipeline(runner=dask, options=options)
    return beam.Pipeline(options=options)


def _quiet_workers_runner(base: type) -> type:
    """The FnApiRunner with its worker command replaced by :data:`WORKER_COMMAND`. The runner sets the
    command in ``run_pipeline`` (from ``direct_running_mode``), after any constructor argument, so
    the replacement happens where it is stored."""
    from apache_beam.transforms.environments import SubprocessSDKEnvironment

    class QuietWorkersRunner(base):
        @property
        def _default_environment(self) -> Any:
            return self.__environment

        @_default_environment.setter
        def _default_environment(self, environment: Any) -> None:
            stock = isinstance(environment, SubprocessSDKEnvironment) and environment.command_string.endswith(
                " -m apache_beam.runners.worker.sdk_worker_main"
            )
            self.__environment = SubprocessSDKEnvironment.from_command_string(WORKER_COMMAND) if stock else environment

    return QuietWorkersRunner
