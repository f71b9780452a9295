"""numpy's BLAS on one thread while a model scores.

On a CPU, TensorFlow's thread pool runs the compiled scoring step and numpy's OpenBLAS runs the
score's distance matrices between its calls. OpenBLAS's idle threads keep spinning for a while
after each call, on the cores TensorFlow's next step needs: on 2 cores, scoring in 1,024-row calls
ran at 22,500 rows/s with OpenBLAS's 2 threads and 30,000-33,000 with one (8,192-row calls: 27,500
against 32,000; calls of 65,536 rows, which switch rarely, 33,000 either way). The distance
matrices lose a little (about 190,000 rows/s against 200,000), far less than TensorFlow gains.

The limit is process-wide (OpenBLAS has one thread count), so it is counted: the first scorer to
enter sets it, the last to leave restores it, and concurrent scorers (the DirectRunner's threads)
never restore it under one another. Another user of threadpoolctl in a concurrent thread (e.g.
scikit-learn's KMeans) can still restore in the other order; nothing in these jobs does. OpenBLAS
splits a matrix product by blocks of its output, so each value is summed by one thread in the
same order: the scores came out bit for bit the same on 1 and 2 threads (tested)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)
_LOCK = threading.Lock()
_state: dict[str, Any] = {"users": 0, "limiter": None}


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Within it, every BLAS library loaded (numpy's OpenBLAS, scipy's) runs one thread, for every
    thread of the process. Looked up afresh whenever no scorer holds the limit (under a
    millisecond), so a library loaded since is limited too. Where it cannot be set, scoring runs
    as it would have."""
    with _LOCK:
        if _state["users"] == 0:
            try:
                from threadpoolctl import ThreadpoolController

                _state["limiter"] = ThreadpoolController().limit(limits=1, user_api="blas")
            except Exception as exc:  # noqa: BLE001 - a speed-up only: never fail a scoring over it
                log.debug("numpy's BLAS threads left as they are: %s", exc)
                _state["limiter"] = None
        _state["users"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _state["users"] -= 1
            if _state["users"] == 0 and _state["limiter"] is not None:
                _state["limiter"].restore_original_limits()
                _state["limiter"] = None
