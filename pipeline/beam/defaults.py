"""The Beam jobs' defaults and choices, free of Beam and numpy: the ``vae`` commands read them at
start-up and :mod:`pipeline.beam.options` declares its flags with them, so each is written once."""

from __future__ import annotations

import math

from scoring.sampling_choices import SAMPLE_METHODS
from training.limits import DEFAULT_SHARD_ROWS
from training.registry import DEFAULT_MODEL_URI

__all__ = [
    "DASK_RUNNER",
    "DEFAULT_BATCH_PIXELS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_FIDELITY_K",
    "DEFAULT_INPUT",
    "DEFAULT_INTERPOLATION_STEPS",
    "DEFAULT_MODEL_URI",
    "DEFAULT_PER_LABEL",
    "DEFAULT_PRIOR_SAMPLES",
    "DEFAULT_RUNNER",
    "DEFAULT_RUNNING_MODE",
    "DEFAULT_SEED",
    "DEFAULT_SHARD_ROWS",
    "DEFAULT_SPLIT_SEED",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_WORKERS",
    "METHODS",
    "ONE_BRANCH_RUNNERS",
    "RUNNING_MODES",
    "SAMPLE_METHODS",
    "SAMPLES_PER_SHARD",
    "parse_shape",
]

# the runner (both jobs)
DEFAULT_RUNNER = "DirectRunner"
DEFAULT_WORKERS = 2
# threads: one process, one TensorFlow and one model shared by the workers, as fast as worker processes for
# TensorFlow scoring and 60 % less memory (README, Throughput); multi_processing for Python-heavy inputs
DEFAULT_RUNNING_MODE = "multi_threading"
RUNNING_MODES = ("multi_processing", "multi_threading", "in_memory")
DASK_RUNNER = "DaskRunner"  # Beam's runner on dask.distributed: pipeline.beam.dask_runner
ONE_BRANCH_RUNNERS = (DASK_RUNNER,)  # they compute one sink per pipeline: vae score runs as one branch there

# both jobs: the images read when --input is not given (vae score; vae generate --method posterior, interpolate)
DEFAULT_INPUT = "digits"

# vae score
# rows per record batch and per model call, unless --batch-size says: as many as hold
# DEFAULT_BATCH_PIXELS pixels, between 1,024 and 8,192 (8x8 images: 8,192; 28x28: 1,024). A model
# call costs more per row the fewer rows it has (benchmarks/score_throughput.py, 8x8: Beam/raw 0.67
# at 1,024 rows, 0.86 at 8,192, peak 1.24 GiB); larger images need the memory (28x28 at 8,192 rows:
# 1.37 GiB against 1.23 at 1,024). See batch_rows.
DEFAULT_BATCH_SIZE = None
DEFAULT_BATCH_PIXELS = 8192 * 64
MIN_BATCH_ROWS, MAX_BATCH_ROWS = 1024, 8192
# DEFAULT_SHARD_ROWS: the input reader's (training.limits)
DEFAULT_SPLIT_SEED = 0

# vae generate
METHODS = (*SAMPLE_METHODS, "interpolate")  # interpolate: decoded latents between two images' posterior means
DEFAULT_INTERPOLATION_STEPS = 10
DEFAULT_TEMPERATURE = 1.0
DEFAULT_SEED = 0
DEFAULT_PRIOR_SAMPLES = 1000
DEFAULT_PER_LABEL = 100
SAMPLES_PER_SHARD = 4096  # default shard size: shards are the units of work handed to workers
DEFAULT_FIDELITY_K = 3  # --compare-with: neighbours of improved precision and recall (Kynkaanniemi et al.)


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"28x28x1"`` (or ``"28x28"``, one channel) as (H, W, C); ValueError otherwise."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 2:
        parts.append(1)
    if len(parts) != 3 or min(parts) < 1:
        raise ValueError(f"{text!r}: give the image shape as HxW or HxWxC, e.g. 28x28x1")
    return parts[0], parts[1], parts[2]


def batch_rows(batch_size: int | None, image_shape: tuple[int, ...]) -> int:
    """Rows per record batch and model call: ``batch_size``, or for None as many images of
    ``image_shape`` as hold :data:`DEFAULT_BATCH_PIXELS` pixels, between the two bounds."""
    if batch_size is not None:
        return int(batch_size)
    pixels = max(1, math.prod(image_shape))
    return max(MIN_BATCH_ROWS, min(MAX_BATCH_ROWS, DEFAULT_BATCH_PIXELS // pixels))
