"""Peak memory of reading a training set: in memory against streamed to a memory-mapped file.

    python benchmarks/read_memory.py [--copies 8]

Writes mnist5k ``--copies`` times over (uint8 ``pixels``, 5,000 rows a copy) to a Parquet file,
then reads it with :func:`training.data.read_images` in a fresh process each way and prints the
peak resident memory of each, as a ratio to the float32 size of the images and to a baseline
process that only imports the reader. Nothing here asserts; it measures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time, tracemalloc
import pyarrow as pa
from training.data import read_images

def rss_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024

mode, path, spill = sys.argv[1:4]
started = time.perf_counter()
before = rss_mb("VmRSS")
rows = 0
tracemalloc.start()
if mode != "baseline":
    result = read_images(path, spill_dir=spill if mode == "spilled" else None, memory_budget=0)
    rows = len(result.data)
    result.data.images.sum()  # touch every image, as training does
heap_peak = tracemalloc.get_traced_memory()[1] / 2**20
print(json.dumps({"rows": rows, "before_mb": before, "rss_mb": rss_mb("VmRSS"), "peak_mb": rss_mb("VmHWM"),
                  "heap_peak_mb": heap_peak, "arrow_peak_mb": pa.default_memory_pool().max_memory() / 2**20,
                  "seconds": time.perf_counter() - started}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=8)
    args = parser.parse_args()
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from training.data import load_mnist5k

    images = (load_mnist5k().images[..., 0] * 255).round().astype(np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mnist.parquet"
        with pq.ParquetWriter(
            path, pa.schema([("pixels", pa.list_(pa.uint8())), ("height", pa.int32()), ("width", pa.int32())])
        ) as writer:
            for _ in range(args.copies):
                flat = images.reshape(len(images), -1)
                writer.write_table(
                    pa.table(
                        {
                            "pixels": pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1]).cast(
                                pa.list_(pa.uint8())
                            ),
                            "height": pa.array([28] * len(images), pa.int32()),
                            "width": pa.array([28] * len(images), pa.int32()),
                        }
                    )
                )
        rows = args.copies * len(images)
        array_mb = rows * 28 * 28 * 4 / 2**20
        print(f"{rows:,} rows of 28x28 uint8 pixels; the float32 images are {array_mb:,.0f} MiB")
        results = {}
        for mode in ("baseline", "in-memory", "spilled"):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, mode, str(path), str(Path(folder) / "spill")],
                capture_output=True,
                text=True,
                check=True,
            )
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        for mode in ("in-memory", "spilled"):
            r = results[mode]
            grew = r["peak_mb"] - r["before_mb"]
            print(
                f"{mode:10s} numpy/Python heap peak {r['heap_peak_mb']:6.0f} MiB ({r['heap_peak_mb'] / array_mb:.2f} x "
                f"the images), Arrow pool peak {r['arrow_peak_mb']:4.0f} MiB, resident memory grew by {grew:4.0f} MiB; "
                f"{r['rows'] / r['seconds']:,.0f} rows/s"
            )
        print("(resident memory counts a memory-mapped file's cached pages, which the kernel can drop)")


if __name__ == "__main__":
    main()
