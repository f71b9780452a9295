"""The Beam runner both pipelines use, set up explicitly (cheap to import: Beam loads on first use)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import apache_beam as beam

DEFAULT_WORKERS = 2
RUNNING_MODES = ("multi_processing", "multi_threading", "in_memory")


def make_pipeline(
    runner: str = "DirectRunner",
    *,
    direct_num_workers: int = DEFAULT_WORKERS,
    direct_running_mode: str = "multi_processing",
    beam_args: Sequence[str] = (),
) -> beam.Pipeline:
    """A pipeline with the runner set explicitly.

    ``DirectRunner`` here is Beam's FnApiRunner, the engine the DirectRunner itself picks for batch
    jobs; naming it directly keeps ``direct_running_mode`` in force and never tries to download the
    Prism runner binary (this project runs offline). Any other runner name goes to Beam as is, with
    ``beam_args`` (``--project``, ``--region``, ``--temp_location``, ``--setup_file`` ...).
    """
    if direct_running_mode not in RUNNING_MODES:
        raise ValueError(f"direct_running_mode must be one of {', '.join(RUNNING_MODES)}, got {direct_running_mode!r}")
    quiet = {}  # workers log our progress lines, not the harness's chatter, unless asked otherwise
    if not any(a.startswith("--default_sdk_harness_log_level") for a in beam_args):
        quiet = {"default_sdk_harness_log_level": "WARNING", "sdk_harness_log_level_overrides": {"pipeline": "INFO"}}
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(
        list(beam_args),
        runner=runner,
        direct_num_workers=direct_num_workers,
        direct_running_mode=direct_running_mode,
        save_main_session=False,
        **quiet,
    )
    if runner in ("DirectRunner", "FnApiRunner"):
        from apache_beam.portability.api import beam_provision_api_pb2
        from apache_beam.runners.portability.fn_api_runner import fn_runner
        from apache_beam.runners.portability.portable_runner import JobServiceHandle

        encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
        provision = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
        return beam.Pipeline(runner=fn_runner.FnApiRunner(provision_info=provision), options=options)
    return beam.Pipeline(options=options)
