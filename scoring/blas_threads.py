"""numpy's BLAS on one thread while a model scores.

On a CPU, TensorFlow's thread pool runs the compiled scoring step and numpy's OpenBLAS runs the
score's distance matrices between its calls. OpenBLAS's idle threads keep spinning for a while
after each call, on the cores TensorFlow's next step needs: on 2 cores, scoring in 1,024-row calls
ran at 22,500 rows/s with OpenBLAS's 2 threads and 30,000-33,000 with one (8,192-row calls: 27,500
against 32,000; calls of 65,536 rows, which switch rarely, 33,000 either way). The distance
matrices lose a little (about 190,000 rows/s against 200,000), far less than TensorFlow gains.

The limit is process-wide (OpenBLAS has one thread count), so it is counted: the first scorer to
enter sets it, the last to leave restores it, and concurrent scorers (the DirectRunner's threads)
never restore it under one another. A GEMM's result does not depend on OpenBLAS's thread count."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

_LOCK = threading.Lock()
_state: dict[str, Any] = {"users": 0, "limiter": None, "controller": None}


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Within it, numpy's BLAS runs one thread (for every thread of the process)."""
    with _LOCK:
        if _state["users"] == 0:
            from threadpoolctl import ThreadpoolController

            if _state["controller"] is None:
                _state["controller"] = ThreadpoolController()
            _state["limiter"] = _state["controller"].limit(limits=1, user_api="blas")
        _state["users"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _state["users"] -= 1
            if _state["users"] == 0:
                _state["limiter"].restore_original_limits()
                _state["limiter"] = None
