"""``--result-json``: one JSON object a scheduler reads after ``vae score`` or ``vae generate``.

Written atomically (a temporary file, then one rename: :func:`pipeline.outputs.files.write_atomically`),
on success and on failure: a run that fails its guards writes its counts with ``status`` ``failed``
and the ``reason``; a run that fails otherwise writes what it knew (model, input, output) and nulls.

Keys: :data:`pipeline.contract.SCORE_KEYS` and :data:`~pipeline.contract.GENERATE_KEYS`, every one
present in order. Paths are strings; what a run did not produce is null (a failed score run's
``scores_path`` and ``manifest_path``; its ``rejects_path`` is where its rejects were kept).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.contract import GENERATE_KEYS, SCORE_KEYS
from pipeline.outputs.files import write_atomically

KEYS = {"score": SCORE_KEYS, "generate": GENERATE_KEYS}


def write_result_json(path: str | os.PathLike, result: dict[str, Any]) -> Path:
    """Writes ``result`` as one line of JSON to ``path`` (its folder made if missing), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, json.dumps(result, default=_plain) + "\n")


def result(command: str, **values: Any) -> dict[str, Any]:
    """The result object of ``command`` with every key of the contract, in order: ``values`` where
    given, else null. A key the contract does not have is a TypeError."""
    keys = KEYS[command]
    unknown = sorted(set(values) - set(keys))
    if unknown:
        raise TypeError(f"not a key of the {command} result: {', '.join(unknown)}")
    out = {key: values.get(key) for key in keys}
    out["command"] = command
    out["status"] = out["status"] or "ok"
    return {key: _plain(value) if isinstance(value, os.PathLike) else value for key, value in out.items()}


def score_result(summary: Any) -> dict[str, Any]:
    """The ``score`` result of a :class:`pipeline.beam.score_job.ScoreSummary` (committed or failed)."""
    ok = summary.status == "ok"
    return result(
        "score",
        status=summary.status,
        reason=summary.reason,
        model_name=summary.model_name,
        model_version=summary.model_version,
        input=summary.input_spec or summary.input,
        output=summary.output,
        partition=summary.partition,
        run_id=summary.run_id,
        rows_read=summary.rows_read,
        rows_scored=summary.rows_scored,
        rows_rejected=summary.rows_rejected,
        reject_rate=summary.reject_rate,
        anomalies=summary.anomalies,
        anomaly_rate=summary.anomaly_rate,
        threshold=summary.threshold,
        target_fpr=summary.target_fpr,
        scores_path=summary.scores_path if ok else None,
        rejects_path=summary.rejects_path,
        manifest_path=summary.manifest_path if ok else None,
    )


def generate_result(summary: Any) -> dict[str, Any]:
    """The ``generate`` result of a :class:`pipeline.beam.generate_job.GenerateSummary`."""
    return result(
        "generate",
        model_name=summary.model_name,
        model_version=summary.model_version,
        method=summary.method,
        rows=summary.rows,
        output=summary.output.parent,  # the OUTPUT folder; summary.output is OUTPUT/synthetic
        synthetic_path=summary.folder,
        run_id=summary.run_id,
        manifest_path=summary.manifest_path,
    )


@contextmanager
def recorded(
    path: str | os.PathLike | None, to_result: Callable[[Any], dict[str, Any]], if_failed: dict[str, Any]
) -> Iterator[Callable[[Any], Any]]:
    """Writes the result JSON of the run in the ``with`` body to ``path`` (nothing if None), also when
    it fails. The body passes its summary to the function it is given (which returns it); an
    exception with a ``summary`` (:class:`pipeline.beam.guards.GuardFailed`) is written from that
    summary, any other as ``if_failed`` (a :func:`result`) with status ``failed`` and the error as the
    reason. The exception is raised again."""

    def record(summary: Any) -> Any:
        if path is not None:
            write_result_json(path, to_result(summary))
        return summary

    try:
        yield record
    except Exception as exc:
        if path is not None:
            summary = getattr(exc, "summary", None)
            if summary is not None:
                outcome = to_result(summary)
            else:
                outcome = {**if_failed, "status": "failed", "reason": error_reason(exc)}
            write_result_json(path, outcome)
        raise


def error_reason(exc: BaseException) -> str:
    """What went wrong, in one line, from an error or a worker traceback that Beam wrapped."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    causes = [line for line in lines if "Error: " in line or "Exception: " in line]
    return causes[-1] if causes else " ".join(lines) or type(exc).__name__


def _plain(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item"):  # a numpy number
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
