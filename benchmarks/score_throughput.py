"""Beam scoring throughput against raw in-process scoring of the same rows, with peak memory per process.

For each ``--rows`` N: tile the built-in ``--data`` (digits, or mnist5k's 28x28 images) to N rows in a
Parquet file (``pixels`` as a list of float32, row groups of ``--shard-rows``), then measure

(a) raw: :func:`scoring.detector.score_images` on the same rows held in memory (batched, in this process);
(b) Beam: ``score_dataset`` on the Parquet file, end to end (worker start-up, reading, validation,
    scoring, Parquet writing, the atomic commit), on the DirectRunner (``--mode``) or on the
    DaskRunner (``--runner DaskRunner``: a local cluster of worker processes started for each run),
    with each of ``--workers``, each run in a fresh child process (the job's launcher), so that its
    memory is the job's own, not this process's data and model;

and print rows/s of each, the ratio (b)/(a), and the peak resident memory of the job (the launcher
and all its worker processes together, sampled every 0.2 s), of the launcher alone, and of the
largest single worker process (memory per worker; with the DirectRunner's threads the launcher is
the one worker).

Usage::

    python benchmarks/score_throughput.py --rows 100000 1000000 [--model models:/NAME@ALIAS]
        [--batch-size 1024] [--workers 1 2] [--raw-rows 200000] [--runner DaskRunner]

Trains a quick model into a throw-away MLflow store unless ``--model`` is given. ``--raw-rows``
caps (a) at that many rows (the rate, not the total, is compared) to save time on big N.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from pipeline.beam.defaults import DEFAULT_RUNNING_MODE

log = logging.getLogger("score_throughput")


class PeakMemory:
    """Peak resident memory of a process and of its descendants, sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0  # the process + its workers
        self.own_peak = 0  # the process alone
        self.one_worker_peak = 0  # the largest single descendant
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        with contextlib.suppress(psutil.Error):
            own = self.process.memory_info().rss
            workers = largest = 0
            for proc in self.process.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    rss = proc.memory_info().rss
                    workers += rss
                    largest = max(largest, rss)
            self.peak = max(self.peak, own + workers)
            self.own_peak = max(self.own_peak, own)
            self.one_worker_peak = max(self.one_worker_peak, largest)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def tiled(data: str, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` images of the built-in data set ``data``, repeated as often as it takes."""
    from training.data import load

    images = load(data)
    index = np.arange(rows) % len(images)
    return images.images[index], images.labels[index]


def write_parquet(path: Path, images: np.ndarray, labels: np.ndarray, row_group: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, pixels = len(images), int(np.prod(images.shape[1:]))
    flat = pa.array(np.ascontiguousarray(images, dtype=np.float32).reshape(-1))
    offsets = pa.array(np.arange(0, n * pixels + 1, pixels, dtype=np.int32))
    table = pa.table({"pixels": pa.ListArray.from_arrays(offsets, flat), "label": pa.array(labels)})
    pq.write_table(table, path, row_group_size=row_group)


def quick_model(folder: Path, data: str) -> str:
    """Trains a small VAE (few epochs; scoring cost does not depend on how well it fits)."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    from training import registry
    from training.config import TrainConfig
    from training.train import train

    registry.configure(folder)
    cfg = TrainConfig(  # calibration_folds 0: the threshold does not matter to the rate
        data=data,
        epochs=2,
        kl_warmup=1,
        early_stopping=0,
        model_name="vae-bench",
        promote="always",
        calibration_folds=0,
    )
    result = train(cfg)
    return f"models:/vae-bench/{result.version}"


def raw_rate(model, images: np.ndarray, batch_size: int) -> tuple[float, float]:
    from scoring.detector import score_images

    score_images(model, images[:batch_size], num_samples=model.score_samples, seed=model.score_seed)  # warm-up
    start = time.perf_counter()
    score_images(model, images, num_samples=model.score_samples, seed=model.score_seed, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return len(images) / seconds, seconds


def one_run(spec: dict) -> None:
    """In the child: one ``score_dataset`` run as ``spec`` says; writes its figures as JSON to
    ``spec["result"]`` (not stdout, which its worker processes share)."""
    if spec.pop("without_jax", False):
        sys.modules["jax"] = None  # as if not installed: TensorFlow's tf.lite imports it when it is
    from pipeline.beam.options import ScoreOptions
    from pipeline.beam.score_job import score_dataset

    result = Path(spec.pop("result"))
    summary = score_dataset(ScoreOptions.of(**spec))
    figures = {"rows": summary.rows_read, "pipeline_seconds": summary.pipeline_seconds, "seconds": summary.seconds}
    result.write_text(json.dumps(figures))


def run_in_child(spec: dict, result: Path) -> tuple[dict, PeakMemory]:
    """Runs :func:`one_run` in a fresh interpreter (its output passes through) and samples its memory."""
    command = [sys.executable, __file__, "--one-run", json.dumps(spec | {"result": str(result)}, default=str)]
    child = subprocess.Popen(command)
    with PeakMemory(child.pid) as memory:
        child.wait()
    if child.returncode != 0:
        raise SystemExit(f"the run {spec} failed with exit code {child.returncode}")
    return json.loads(result.read_text()), memory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--data", default="digits", help="the built-in data set tiled to --rows (digits, mnist5k)")
    parser.add_argument("--model", default=None, help="models:/NAME@ALIAS or .keras (default: train a quick one)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--shard-rows", type=int, default=50_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--mode", default=DEFAULT_RUNNING_MODE, help="DirectRunner: direct_running_mode")
    parser.add_argument("--runner", default="DirectRunner", choices=("DirectRunner", "DaskRunner"))
    parser.add_argument("--raw-rows", type=int, default=None, help="measure (a) on at most this many rows")
    parser.add_argument(
        "--without-jax",
        action="store_true",
        help="run the job as on an install without jax (the dev extra installs it, and TensorFlow then imports "
        "it: about 0.1 GiB); DirectRunner only",
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep the data and outputs in this folder")
    parser.add_argument("--one-run", default=None, help=argparse.SUPPRESS)  # the child's job, as JSON
    args = parser.parse_args(argv)
    if args.without_jax and (args.runner != "DirectRunner" or args.mode == "multi_processing"):
        parser.error("--without-jax hides jax in the launcher only: use it with the DirectRunner's threads")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("apache_beam", "absl", "mlflow", "alembic", "tensorflow", "training", "distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.one_run:
        return one_run(json.loads(args.one_run))

    from training import registry

    work = args.keep or Path(tempfile.mkdtemp(prefix="score-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model_uri = args.model or quick_model(work, args.data)
    pinned = registry.pin(model_uri)  # the default store, or quick_model's (MLFLOW_TRACKING_URI)
    model, name, version = pinned.load(), pinned.name, pinned.version
    log.info(
        "model %s version %s: %d posterior samples per row, batch %d",
        name,
        version,
        model.score_samples,
        args.batch_size,
    )
    results = []
    for rows in args.rows:
        images, labels = tiled(args.data, rows)
        data = work / f"{args.data}-{rows}.parquet"
        write_parquet(data, images, labels, args.shard_rows)
        raw_n = min(rows, args.raw_rows or rows)
        raw, raw_seconds = raw_rate(model, images[:raw_n], args.batch_size)
        log.info("(a) raw score_images: %s rows in %.1f s = %s rows/s", f"{raw_n:,}", raw_seconds, f"{raw:,.0f}")
        del images
        for workers in args.workers:
            runner = {"runner": args.runner}
            if args.runner == "DaskRunner":
                runner["dask_workers"] = workers
            else:
                runner |= {"direct_num_workers": workers, "direct_running_mode": args.mode}
            spec = {
                "model": model_uri,
                "input": str(data),
                "output": str(work / f"out-{rows}-{workers}"),
                "batch_size": args.batch_size,
                "shard_rows": args.shard_rows,
                **runner,
            } | ({"without_jax": True} if args.without_jax else {})
            run, memory = run_in_child(spec, work / f"result-{rows}-{workers}.json")
            beam = run["rows"] / run["pipeline_seconds"]
            results.append((rows, workers, raw, beam, run, memory))
            log.info(
                "(b) Beam pipeline, %d workers: %s rows in %.1f s = %s rows/s; ratio (b)/(a) = %.2f; peak memory "
                "%.2f GiB (launcher %.2f GiB, largest worker %.2f GiB)",
                workers,
                f"{rows:,}",
                run["pipeline_seconds"],
                f"{beam:,.0f}",
                beam / raw,
                memory.peak / 2**30,
                memory.own_peak / 2**30,
                memory.one_worker_peak / 2**30,
            )
    engine = f"DirectRunner ({args.mode})" if args.runner == "DirectRunner" else "DaskRunner (local cluster)"
    print(
        f"\nmodel {name} v{version}, {model.score_samples} posterior samples/row, batch {args.batch_size}, "
        f"shards of {args.shard_rows:,} rows, {engine}, {os.cpu_count()} CPU cores"
        + (", jax hidden from the job" if args.without_jax else "")
    )
    header = f"{'rows':>10} {'workers':>7} {'raw rows/s':>11} {'Beam rows/s':>12} {'ratio':>6} {'Beam s':>8}"
    print(header + f" {'total s':>8} {'job GiB':>8} {'launcher GiB':>13} {'per worker GiB':>15}")
    threads = args.runner == "DirectRunner" and args.mode != "multi_processing"  # the launcher is the worker
    for rows, workers, raw, beam, run, memory in results:
        per_worker = memory.own_peak if threads else memory.one_worker_peak
        print(
            f"{rows:>10,} {workers:>7} {raw:>11,.0f} {beam:>12,.0f} {beam / raw:>6.2f} "
            f"{run['pipeline_seconds']:>8.1f} {run['seconds']:>8.1f} {memory.peak / 2**30:>8.2f} "
            f"{memory.own_peak / 2**30:>13.2f} {per_worker / 2**30:>15.2f}"
        )


if __name__ == "__main__":
    main()
