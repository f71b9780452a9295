"""Where a path points, with the standard library only: every job and the atomic commits import it."""

from __future__ import annotations

import os


def is_remote(path: str | os.PathLike) -> bool:
    """True for URLs such as ``gs://bucket/x`` (any scheme), False for local paths."""
    return "://" in str(path)
