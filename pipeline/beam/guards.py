"""The guards of a scoring run: what a run must look like before its output may replace the last one.

A day whose input lost its ``pixels`` column is still "scored": every row is rejected. The guards
turn such a run into a failure. They are checked after the Beam run, on the counts of what it
wrote, and before the commit (:func:`pipeline.beam.score_job.score_dataset`): a run past a guard
raises :class:`GuardFailed`, nothing in ``OUTPUT/scores`` or ``OUTPUT/rejects`` is replaced, and
the run's rejects are kept under ``OUTPUT/_failed/RUN_ID/rejects/`` for inspection.

Kept free of heavy imports: the ``vae`` command reads the defaults from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

DEFAULT_MAX_REJECT_RATE = 0.1  # more than 10 % of the rows rejected: the input is broken, not noisy
DEFAULT_MIN_ROWS = 1  # an empty input is a failure, not a day with nothing to flag
# the brightest pixel of every image checked below 1/16 of the training images' typical brightest
# pixel: the pixels were scaled wrongly (0/1 masks read as 0-255, 0-255 values in a 16-bit PNG)
DEFAULT_MIN_BRIGHTNESS = 1 / 16
PIXEL_RANGE_SHARDS = 8  # the pixel-range check reads the first batch of this many shards
PIXEL_RANGE_MIN_IMAGES = 8  # and judges only when at least this many images were scorable


@dataclass(frozen=True)
class Guards:
    """``max_reject_rate``: the largest share of the rows read that may be rejected (1 turns the
    guard off); ``min_rows``: the fewest rows the input must have (rows read, scored or not)."""

    max_reject_rate: float = DEFAULT_MAX_REJECT_RATE
    min_rows: int = DEFAULT_MIN_ROWS

    def check(self, rows_read: int, rows_rejected: int, reasons: dict[str, int] | None = None) -> str | None:
        """Why a run with these counts fails its guards (one line), or None if it passes."""
        failures = []
        if rows_read < self.min_rows:
            failures.append(f"{rows_read:,} rows read, fewer than --min-rows {self.min_rows:,}")
        if rows_read and rows_rejected / rows_read > self.max_reject_rate:
            top = sorted((reasons or {}).items(), key=lambda kv: -kv[1])[:3]
            why = "".join(f", {count:,} x {reason}" for reason, count in top)
            failures.append(
                f"{rows_rejected:,} of {rows_read:,} rows rejected ({rows_rejected / rows_read:.1%}{why}), "
                f"more than --max-reject-rate {self.max_reject_rate:g}"
            )
        return "; ".join(failures) or None

    def describe(self) -> str:
        return f"at most {self.max_reject_rate:.1%} rejected, at least {self.min_rows:,} row(s) read"


class GuardFailed(ValueError):
    """A run past a guard; ``summary`` is its summary (status ``failed``, the reason, the counts,
    where its rejects were kept), for the result JSON."""

    def __init__(self, message: str, summary: Any) -> None:
        super().__init__(message)
        self.summary = summary


def seal_scoring_run(summary: Any, scores_dir: str | os.PathLike, rejects_dir: str | os.PathLike, model: Any) -> Any:
    """The last step of a scoring run before its commit, on the staged folders ``scores_dir`` and
    ``rejects_dir``: checks ``summary.guards``. Past a guard it moves the rejects (with a manifest
    saying why) to ``OUTPUT/_failed/RUN_ID/rejects/`` and raises :class:`GuardFailed` with the
    summary (status ``failed``), so the commit is abandoned and nothing public changes. Else it
    writes each folder's ``_manifest.json`` (:mod:`pipeline.outputs.manifest`) and returns the
    summary with ``manifest_path``: the scores' manifest, once committed."""
    from pipeline.outputs.atomic import keep_failed
    from pipeline.outputs.manifest import MANIFEST, build_manifest, write_manifest

    s = summary
    about = {
        "partition": s.partition,
        "model": model,
        "input": s.input_spec,
        "input_fingerprint": s.input_fingerprint,
        "run_id": s.run_id,
    }
    reason = s.guards.check(s.rows_read, s.rows_rejected, s.reject_reasons) if s.guards else None
    if reason:
        manifest = build_manifest(dataset="rejects", rows=s.rows_rejected, status="failed", reason=reason, **about)
        write_manifest(rejects_dir, manifest)
        kept = keep_failed(rejects_dir, s.output, s.run_id, "rejects")
        failed = replace(s, status="failed", reason=reason, rejects_path=kept)
        raise GuardFailed(
            f"the run failed its guards: {reason}. Nothing was replaced in {s.scores_path} or {s.rejects_path}; "
            f"the run's rejects are kept in {kept}",
            failed,
        )
    write_manifest(scores_dir, build_manifest(dataset="scores", rows=s.rows_scored, **about))
    write_manifest(rejects_dir, build_manifest(dataset="rejects", rows=s.rows_rejected, **about))
    return replace(s, manifest_path=_join(s.scores_path, MANIFEST))


def _join(folder: str | os.PathLike, name: str) -> Path | str:
    return folder / name if isinstance(folder, Path) else f"{str(folder).rstrip('/')}/{name}"


class PixelRangeError(ValueError):
    """An input whose pixels are implausibly dark for the model: scaled wrongly, not anomalous."""


def check_pixel_range(
    plan: Any,
    spec: Any,
    brightest: float | None,
    min_brightness: float,
    *,
    shape_hint: tuple[int, int, int] | None = None,
    pixel_scale: float | None = None,
    batch_size: int = 256,
    model_name: str = "the model",
) -> int:
    """Reads the first batch of the first :data:`PIXEL_RANGE_SHARDS` shards of ``plan`` through the
    validator, before any scoring; raises :class:`PixelRangeError` (naming the fix) when the
    brightest pixel of every scorable image there is below ``min_brightness`` x ``brightest`` (the
    training images' typical brightest pixel, stored with the model; None for older models, which
    skips the check). Returns how many images it looked at."""
    if not brightest or min_brightness <= 0:
        return 0
    import numpy as np

    from training.data.validate import validate_batch

    peaks: list = []
    for shard in plan.shards[:PIXEL_RANGE_SHARDS]:
        try:
            batch = next(iter(shard.read(batch_size)), None)
        except Exception:  # noqa: BLE001 - an unreadable shard is the run's to report, with its rows
            continue
        if batch is None:
            continue
        valid, _ = validate_batch(batch, spec, shape_hint, pixel_scale)
        if valid is not None:
            peaks.append(valid.images.reshape(len(valid), -1).max(axis=1))
    seen = int(sum(len(p) for p in peaks))
    if seen < PIXEL_RANGE_MIN_IMAGES:
        return seen
    top = float(np.concatenate(peaks).max())
    limit = min_brightness * brightest
    if top < limit:
        raise PixelRangeError(
            f"the pixels look wrongly scaled for {model_name}: the brightest pixel of every one of the {seen:,} "
            f"images checked is at most {top:.4g} after scaling, below {min_brightness:g} of the training images' "
            f"typical brightest pixel ({brightest:.4g}). Integer pixels are divided by 255 and 16-bit PNGs by "
            "65,535: score 0/1 masks with --pixel-scale 1 (0-16 levels: --pixel-scale 16), save 0-255 images as "
            "8-bit PNGs, or, if the images really are blank or dark, pass --min-brightness 0 to score them as they are "
            "(a blank image gets a high anomaly_score). Nothing was scored or replaced"
        )
    return seen
