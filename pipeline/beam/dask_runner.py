"""Beam's Dask runner, made fit for these jobs (``--runner DaskRunner``): dask.distributed runs the same
way on a laptop, a cluster or Kubernetes, so it is the scale-out engine that can be tested offline.

Beam 2.77's :class:`apache_beam.runners.dask.dask_runner.DaskRunner` is used as it is; this subclass
only supplies what a job needs around it:

- the cluster: ``--dask-address`` (a running scheduler, ``tcp://HOST:8786``) or, by default, a
  ``distributed.LocalCluster`` of ``--dask-workers`` worker processes (one thread each) started for
  the run and closed after it, its workers without two Dask defaults that cost these jobs memory and
  half their speed (:data:`WORKER_CONFIG`; ``pipeline/beam/dask_config/`` sets the same on the
  workers of an existing cluster);
- parallelism: one Dask partition per element of ``Create`` (a shard of the input) unless
  ``--dask_npartitions`` / ``--dask_partition_size`` say otherwise (Beam's default puts up to 128
  elements in one partition: a job of a few shards would run as one task on one worker);
- the client: closed when the run ends (Beam's keeps reconnecting to a closed scheduler); the
  workers log their per-shard progress lines in the job's format (a local cluster's workers write
  to this terminal).
  They are not forwarded with ``Client.forward_logging``: with it, a run's result once never reached
  the client (the generate test hung after every shard was written).

What the runner cannot do is worked around in the pipelines, not here: it translates ``Create``,
``ParDo``, ``GroupByKey`` and ``Flatten`` only, computes only the last transform's branch, hands a
multi-output ``ParDo``'s outputs to every consumer unsplit, and runs ``DoFn.setup`` once per
partition (the model is cached per process: :meth:`training.registry.ModelRef.load`). The scoring
job therefore runs as one branch on it (:mod:`pipeline.beam.score_shards`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import distributed
from apache_beam.runners.dask.dask_runner import DaskOptions, DaskRunnerResult
from apache_beam.runners.dask.dask_runner import DaskRunner as BeamDaskRunner

from pipeline.beam.defaults import DEFAULT_WORKERS
from pipeline.logging_setup import configure_dask_worker

log = logging.getLogger(__name__)
POLL_SECONDS = 5.0  # DaskResult.wait_until_finish: how often the client and the scheduler are asked

__all__ = ["WORKER_CONFIG", "WORKER_CONFIG_DIR", "DaskOptions", "DaskRunner", "local_cluster"]


# Dask's defaults that cost these jobs memory and speed; WORKER_CONFIG_DIR holds the same as a Dask
# config file, for the workers of an existing cluster (copied into ~/.config/dask/ where they start)
WORKER_CONFIG_DIR = Path(__file__).parent / "dask_config"
WORKER_CONFIG: dict[str, Any] = {
    # The statistical profiler keeps the last 1,000 one-second cycles of call trees, and a tree per
    # task: with TensorFlow's deep stacks a worker grew by about 5 MB per task for its first 17 minutes.
    "distributed.worker.profile.enabled": False,
    # A fixed glibc trim threshold also fixes the mmap threshold at 128 KiB, so TensorFlow's tensors of
    # a few MB are mapped and unmapped (and their pages faulted in) on every op: half the throughput.
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
}


def local_cluster(workers: int = DEFAULT_WORKERS, threads: int = 1) -> Any:
    """A ``distributed.LocalCluster`` of ``workers`` processes with ``threads`` threads each, quiet, no
    dashboard, with :data:`WORKER_CONFIG`; the scheduler's HTTP endpoints on a free local port, never a
    fixed one another run holds."""
    import dask
    from distributed import LocalCluster

    with dask.config.set(WORKER_CONFIG):  # the nannies pass the config to their workers as they start
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=threads,
            processes=True,
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "localhost:0"},
            silence_logs=logging.WARNING,
        )


def _set_up_worker(launcher_pid: int, dask_worker=None) -> dict[str, Any]:
    """On a worker: the job's loggers (unless the worker lives in the launcher's own process), and
    the two settings of :data:`WORKER_CONFIG` it runs with."""
    import os

    if os.getpid() != launcher_pid:
        configure_dask_worker()
    return {
        "profiler": any(name.startswith("profile") for name in dask_worker.periodic_callbacks),
        "trim_threshold": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
    }


def configure_workers(address: str | None, scheduler_file: str | None = None, timeout: float | None = None) -> None:
    """Before the run: the workers log our progress lines in the job's format
    (:func:`pipeline.logging_setup.configure_dask_worker`; a local cluster's reach this terminal, a
    remote one's are in the workers' logs), and a warning names the workers that run with the Dask
    defaults :data:`WORKER_CONFIG` turns off. The run goes on if any of it fails."""
    import os

    from distributed import Client

    if not address and not scheduler_file:
        return  # (a Client without either would start a cluster of its own)
    try:
        with Client(
            address=address, scheduler_file=scheduler_file, **({"timeout": timeout} if timeout else {})
        ) as client:
            settings = client.run(_set_up_worker, os.getpid(), on_error="return")
    except Exception as exc:  # noqa: BLE001
        log.warning("cannot set up the Dask workers' logging (the run goes on): %s", exc)
        return
    failed = sorted(worker for worker, got in settings.items() if isinstance(got, BaseException))
    if failed:
        log.warning("cannot set up logging on Dask worker(s) %s: %s", ", ".join(failed), settings[failed[0]])
    costly = sorted(
        worker
        for worker, got in settings.items()
        if isinstance(got, dict) and (got["profiler"] or got["trim_threshold"] is not None)
    )
    if costly:
        log.warning(
            "%d of %d Dask workers run with the statistical profiler or a fixed MALLOC_TRIM_THRESHOLD_ "
            "(memory that grows by the task, about half the throughput): start them with %s "
            "(README: Scale out, Worker settings)",
            len(costly),
            len(settings),
            WORKER_CONFIG_DIR / "vae-workers.yaml",
        )


@dataclasses.dataclass
class DaskResult(DaskRunnerResult):
    """Beam's result; waiting for it also closes the client and, if the run started one, the cluster."""

    cluster: Any = None

    def wait_until_finish(self, duration=None) -> str:
        """Waits for every future (``duration``: at most that many milliseconds), then raises a
        worker's error here. Beam's own wait gathers each result (which the jobs do not use) and
        waits on the client's copy of each task's state alone: under load a finished run's last
        message once never reached the client, and the job hung with its results written. Here the
        client's state is read every :data:`POLL_SECONDS`, and the scheduler is asked about any task
        the client still thinks is running."""
        from apache_beam.runners.runner import PipelineState

        try:
            deadline = None if duration is None else time.monotonic() + duration / 1000
            pending = list(self.futures)
            while pending:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"the Dask run did not finish in {duration / 1000:g} s")
                wait_s = POLL_SECONDS if deadline is None else min(POLL_SECONDS, deadline - time.monotonic())
                with self.client.as_current(), contextlib.suppress(TimeoutError):
                    distributed.wait(pending, timeout=max(wait_s, 0.0))
                pending = [f for f in pending if f.status in ("pending", "lost")]
                if pending:  # the client was not told: the scheduler's word
                    pending = self._still_running(pending)
            for future in self.futures:
                if future.status == "error":
                    future.result()  # raises the worker's error, with its traceback
            self._state = PipelineState.DONE
            return self._state
        except BaseException:
            self._state = PipelineState.FAILED
            raise
        finally:
            self.close()

    def _still_running(self, futures: list) -> list:
        """Of ``futures``, those the scheduler is still working on; one it holds in memory is done,
        and one that failed or that it forgot is an error, named."""
        states = self.client.sync(self.client.scheduler.get_task_status, keys=[f.key for f in futures])
        for future in futures:
            if states.get(future.key) in ("erred", None):
                raise RuntimeError(f"the Dask task {future.key} {states.get(future.key) or 'was forgotten'}")
        return [f for f in futures if states.get(f.key) != "memory"]

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()
                self.cluster = None


class DaskRunner(BeamDaskRunner):
    """Beam's DaskRunner on ``address`` (a scheduler) or on a local cluster of ``workers`` processes."""

    def __init__(self, address: str | None = None, workers: int = DEFAULT_WORKERS) -> None:
        super().__init__()
        self.address = address
        self.workers = workers

    def run_pipeline(self, pipeline, options):
        dask = options.view_as(DaskOptions)
        if self.address:
            dask.address = self.address
        if dask.npartitions is None and dask.partition_size is None:
            dask.partition_size = 1  # one shard per task: the scheduler spreads them over the workers
        cluster = None
        if not dask.address and not dask.scheduler_file:
            cluster = local_cluster(self.workers)
            dask.address = cluster.scheduler_address
            log.info("started a local Dask cluster of %d worker processes at %s", self.workers, dask.address)
        try:
            configure_workers(dask.address, dask.scheduler_file, dask.timeout)
            result = super().run_pipeline(pipeline, options)
        except BaseException:
            if cluster is not None:
                cluster.close()
            raise
        finally:
            if cluster is not None:  # the options are the caller's: a second run starts its own cluster
                dask.address = None
        return DaskResult(result.client, result.futures, cluster)
