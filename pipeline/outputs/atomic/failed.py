"""What a run that must not commit keeps for inspection: ``OUTPUT/_failed/RUN_ID/NAME/``.

A run that fails its guards (``vae score --max-reject-rate``) replaces nothing, but its rejects say
why it failed. :func:`keep_failed` moves such a staged folder out of ``OUTPUT/.staging`` before the
commit is abandoned (the staging folder is deleted then). ``_failed`` lies outside every dataset
root, and its ``_`` keeps it out of readers of ``OUTPUT`` (pyarrow, the input contract's reader).
Nothing deletes it: remove it once the failure has been looked at.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.outputs.atomic.remote import _match, _mkdirs
from training.paths import is_remote

FAILED = "_failed"  # OUTPUT/_failed/RUN_ID/...: folders of runs that failed, kept for inspection


def failed_dir(output: str | os.PathLike, run_id: str, name: str) -> Path | str:
    """``OUTPUT/_failed/RUN_ID/NAME`` (a str for object stores)."""
    if is_remote(output):
        return f"{str(output).rstrip('/')}/{FAILED}/{run_id}/{name}"
    return Path(output) / FAILED / run_id / name


def keep_failed(staged: str | os.PathLike, output: str | os.PathLike, run_id: str, name: str) -> Path | str:
    """Moves the staged folder ``staged`` (with what is in it) to ``OUTPUT/_failed/RUN_ID/NAME`` and
    returns that path. Locally one rename (the staging folder lies in ``OUTPUT``); on object stores
    each file is moved (copied, then deleted)."""
    target = failed_dir(output, run_id, name)
    if isinstance(target, Path):
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, target)
        return target
    from apache_beam.io.filesystems import FileSystems

    staged = str(staged).rstrip("/")
    files = sorted(_match(f"{staged}/**"))
    _mkdirs(target)
    if files:
        FileSystems.rename(files, [f"{target}/{path[len(staged) + 1 :]}" for path in files])
    return target
