"""Moving a registered model's aliases (``@champion``) with a history, so a move can be undone.

MLflow keeps only where an alias points now. Every move made here is also recorded in two tags of
the registered model, per alias:

- ``alias_history.ALIAS``: the last :data:`LOG_LENGTH` moves, a JSON list of
  ``{"action", "from", "to", "at", "by", "reason"}`` (``from`` is null when the alias was unset);
- ``alias_stack.ALIAS``: the versions that held the alias before, most recent last (JSON list):
  a promotion pushes the holder it replaces, a rollback pops it back.

``vae train`` promotes through :func:`promote` too. An alias moved by anything else (the MLflow
UI, Python) is not recorded; a rollback then returns to the last holder the history knows and says
so. Each tag is kept under :data:`TAG_CHARS` characters (MLflow's server stores cap a tag value at
5,000; SQLite does not), dropping the oldest entries first. Two moves of one alias at the same
moment may lose one history entry (tags have no compare-and-set); the alias itself is MLflow's.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import socket
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from training import registry

LOG_LENGTH = 50  # moves kept in alias_history.ALIAS (fewer when they would not fit in TAG_CHARS)
TAG_CHARS = 4500  # below the 5,000 characters a tag value may hold in MLflow's SQL stores
STACK_LENGTH = 50  # earlier holders kept in alias_stack.ALIAS
HISTORY_TAG = "alias_history."
log = logging.getLogger(__name__)
STACK_TAG = "alias_stack."


@dataclass(frozen=True)
class AliasMove:
    """One move of an alias: ``previous`` (None: it was unset) -> ``version``."""

    name: str
    alias: str
    action: str  # "promote" or "rollback"
    previous: str | None
    version: str
    at: str  # UTC ISO time
    by: str
    reason: str | None
    note: str | None = None  # e.g. that the alias had been moved outside this history

    def line(self) -> str:
        """``vae-digits@champion: v2 -> v3``, and the note when there is one."""
        before = f"v{self.previous}" if self.previous else "(unset)"
        text = f"{self.name}@{self.alias}: {before} -> v{self.version}"
        return f"{text} ({self.note})" if self.note else text


def current_user() -> str:
    """``user@host`` of this process, for the history."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def holder(name: str, alias: str, work: str | os.PathLike | None = None) -> str | None:
    """The version ``name@alias`` points at now, or None when the alias is unset."""
    aliases = registered_model(name, work).aliases or {}
    version = aliases.get(alias)
    return None if version is None else str(version)


def registered_model(name: str, work: str | os.PathLike | None = None):
    """The registered model ``name``, or a :class:`LookupError` naming the models there are."""
    from mlflow.exceptions import MlflowException

    mlflow_client = registry.client(work)
    try:
        return mlflow_client.get_registered_model(name)
    except MlflowException as exc:
        known = sorted(m.name for m in mlflow_client.search_registered_models())
        listed = ", ".join(known) if known else "none"
        raise LookupError(
            f"no registered model {name!r} in {registry.tracking_uri(work)} (registered models: {listed})"
        ) from exc


def model_version(name: str, version: str, work: str | os.PathLike | None = None):
    """Version ``version`` of ``name``, or a :class:`LookupError` naming the versions there are."""
    from mlflow.exceptions import MlflowException

    registered_model(name, work)  # an unknown model is named as such, not as an unknown version
    mlflow_client = registry.client(work)
    if not str(version).isdigit():
        raise LookupError(f"{name}: a version is a whole number, got {version!r}")
    try:
        return mlflow_client.get_model_version(name, str(version))
    except MlflowException as exc:
        listed = ", ".join(str(v.version) for v in versions(name, work)) or "none"
        raise LookupError(f"{name} has no version {version} (versions: {listed})") from exc


def versions(name: str, work: str | os.PathLike | None = None) -> list:
    """Every registered version of ``name`` (MLflow ``ModelVersion``), oldest first."""
    found = registry.client(work).search_model_versions(f"name = '{_quote(name)}'")
    return sorted(found, key=lambda v: int(v.version))


def history(name: str, alias: str, work: str | os.PathLike | None = None) -> list[AliasMove]:
    """The recorded moves of ``name@alias``, oldest first (at most :data:`LOG_LENGTH`)."""
    tags = registered_model(name, work).tags or {}
    return [_move(name, alias, entry) for entry in _json_list(tags.get(HISTORY_TAG + alias))]


def histories(name: str, work: str | os.PathLike | None = None) -> dict[str, list[AliasMove]]:
    """Every alias of ``name`` that has a recorded history, with its moves, oldest first."""
    tags = registered_model(name, work).tags or {}
    return {
        key.removeprefix(HISTORY_TAG): [_move(name, key.removeprefix(HISTORY_TAG), e) for e in _json_list(value)]
        for key, value in sorted(tags.items())
        if key.startswith(HISTORY_TAG)
    }


def promote(
    name: str,
    version: str,
    alias: str = registry.CHAMPION,
    work: str | os.PathLike | None = None,
    *,
    reason: str | None = None,
    by: str | None = None,
) -> AliasMove:
    """Points ``name@alias`` at ``version`` and records the move (the holder it replaces can be
    rolled back to). Promoting the version that already holds the alias changes nothing."""
    version = str(model_version(name, version, work).version)
    check_alias(alias)
    previous = holder(name, alias, work)
    move = AliasMove(name, alias, "promote", previous, version, _now(), by or current_user(), reason)
    if previous == version:
        return replace(move, note=f"v{version} already holds @{alias}; nothing changed")
    stack = _stack(name, alias, work)
    if previous is not None:
        stack.append(previous)
    registry.set_alias(name, version, alias, work)
    _record_or_warn(name, alias, move, stack, work)
    return move


def rollback(
    name: str,
    alias: str = registry.CHAMPION,
    work: str | os.PathLike | None = None,
    *,
    reason: str | None = None,
    by: str | None = None,
) -> AliasMove:
    """Points ``name@alias`` back at the version that held it before its current holder, from the
    recorded history; a :class:`LookupError` when there is none to go back to."""
    check_alias(alias)
    current = holder(name, alias, work)
    if current is None:
        raise LookupError(
            f"{name} has no alias @{alias}; set it with `vae models promote {name} VERSION --alias {alias}`"
        )
    moves = history(name, alias, work)
    stack = _stack(name, alias, work)
    note = None
    if moves and moves[-1].version != current:
        # moved by something that keeps no history (the MLflow UI, another MLflow client): the last
        # recorded holder is the best known earlier one, and the stack stays as it is
        target = moves[-1].version
        note = f"@{alias} was moved to v{current} outside `vae models`; v{target} is its last recorded holder"
    else:
        while stack and stack[-1] == current:
            stack.pop()
        if not stack:
            raise LookupError(
                f"{name}@{alias} (v{current}) has no recorded earlier holder to roll back to: only moves made with "
                f"`vae train`, `vae models promote` or `vae calibrate --alias` are recorded; point it at a version "
                f"with `vae models promote {name} VERSION --alias {alias}`"
            )
        target = stack.pop()
    model_version(name, target, work)  # still registered (a deleted version cannot take the alias)
    move = AliasMove(name, alias, "rollback", current, target, _now(), by or current_user(), reason, note)
    registry.set_alias(name, target, alias, work)
    _record_or_warn(name, alias, move, stack, work)
    return move


def _record_or_warn(name: str, alias: str, move: AliasMove, stack: list[str], work) -> None:
    """Records a move that has been made: a store that refuses the tags must not undo or fail it."""
    try:
        _record(name, alias, move, stack, work)
    except Exception as exc:  # noqa: BLE001 - the alias has moved; say the history missed it
        log.warning(
            "%s@%s moved to v%s, but the move was not recorded (rollback will not know it): %s",
            name,
            alias,
            move.version,
            exc,
        )


def _record(name: str, alias: str, move: AliasMove, stack: list[str], work) -> None:
    mlflow_client = registry.client(work)
    entries = _json_list((registered_model(name, work).tags or {}).get(HISTORY_TAG + alias))
    entry = {
        "action": move.action,
        "from": move.previous,
        "to": move.version,
        "at": move.at,
        "by": move.by,
        "reason": _short(move.reason),
    }
    if move.note:
        entry["note"] = _short(move.note)
    entries = _fitting([*entries, entry][-LOG_LENGTH:])
    # the stack first: rollback reads it, so a history write that fails leaves rollback right
    mlflow_client.set_registered_model_tag(name, STACK_TAG + alias, json.dumps(_fitting(stack[-STACK_LENGTH:])))
    mlflow_client.set_registered_model_tag(name, HISTORY_TAG + alias, json.dumps(entries))


def _short(text: str | None, limit: int = 500) -> str | None:
    """A reason or note short enough that one history entry always fits in a tag."""
    return text if text is None or len(text) <= limit else text[: limit - 1] + "…"


def _fitting(items: list) -> list:
    """The newest ``items`` whose JSON fits in :data:`TAG_CHARS` characters."""
    items = list(items)
    while len(items) > 1 and len(json.dumps(items)) > TAG_CHARS:
        items.pop(0)
    return items


def _stack(name: str, alias: str, work) -> list[str]:
    return [str(v) for v in _json_list((registered_model(name, work).tags or {}).get(STACK_TAG + alias))]


def _move(name: str, alias: str, entry: dict) -> AliasMove:
    return AliasMove(
        name,
        alias,
        str(entry.get("action", "?")),
        None if entry.get("from") is None else str(entry["from"]),
        str(entry.get("to")),
        str(entry.get("at", "")),
        str(entry.get("by", "")),
        entry.get("reason"),
        entry.get("note"),
    )


def _json_list(text: str | None) -> list:
    if not text:
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return []  # a hand-edited tag: treated as no history rather than a crash
    return value if isinstance(value, list) else []


_ALIAS = re.compile(r"^[\w\-]+$")
_RESERVED = re.compile(r"^(latest|[vV]\d+)$", re.IGNORECASE)


def check_alias(alias: str) -> None:
    """MLflow's rule for alias names, checked before anything is changed."""
    if not _ALIAS.match(alias or "") or _RESERVED.match(alias):
        raise ValueError(f"{alias!r} is not a usable alias: letters, digits, '_' and '-' only, and not 'latest' or vN")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _quote(name: str) -> str:
    return name.replace("'", "\\'")
