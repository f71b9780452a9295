"""``vae models``: the registry for people. A thin shell over :mod:`training.catalog` (list,
describe) and :mod:`training.aliases` (promote, rollback, history)."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from pipeline.cli.support import friendly_errors

CHAMPION = "champion"  # training.registry.CHAMPION, without importing MLflow to build --help


@click.group("models")
def models_command() -> None:
    """List, inspect, promote and roll back registered model versions.

    Aliases moved with promote (or vae calibrate --alias) are recorded in tags of the registered
    model (alias_history.ALIAS, alias_stack.ALIAS), so rollback can move them back.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars between the lines


@models_command.command("list")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per version, one a line, instead of a table.")
@click.option("--no-trunc", is_flag=True, help="Full run ids.")
@click.pass_context
@friendly_errors(loading="MLflow")
def list_command(ctx: click.Context, name: str | None, as_json: bool, no_trunc: bool) -> None:
    """Every registered model (or NAME) with its versions, aliases, holdout scores and calibration.

    holdout neg ELBO: mean over the fixed holdout (what --promote if-better compares); threshold
    and fpr: the stored anomaly threshold and the false positive rate it was set at; flagged: the
    share of the holdout above that threshold.
    """
    from training import catalog, registry

    rows = catalog.list_versions(name, ctx.obj["work_dir"])
    if as_json:
        for row in rows:
            click.echo(json.dumps(row.to_dict()))
        return
    if not rows:
        click.echo(f"no registered models in {registry.tracking_uri(ctx.obj['work_dir'])}")
        return
    headers = ["name", "version", "aliases", "created (UTC)", "run", "holdout neg ELBO", "threshold", "fpr", "flagged"]
    table = [
        [
            row.name,
            row.version,
            ",".join(f"@{a}" for a in row.aliases),
            row.created.replace("T", " ").removesuffix("Z"),
            (row.run_id or "") if no_trunc else (row.run_id or "")[:8],
            _number(row.holdout_neg_elbo, ".3f"),
            _number(row.threshold, ".4f"),
            _number(row.target_fpr, "g"),
            _number(row.holdout_flagged_rate, ".2%"),
            f"recalibrated v{row.recalibrated_from}" if row.recalibrated_from else "",
        ]
        for row in rows
    ]
    for line in _aligned([*headers, "note"], table, right={1, 5, 6, 7, 8}):
        click.echo(line)


@models_command.command("describe")
@click.argument("name")
@click.option("--version", default=None, help="The version to show.")
@click.option("--alias", default=None, help="The version this alias points at.")
@click.option("--json", "as_json", is_flag=True, help="Everything as one JSON object.")
@click.pass_context
@friendly_errors(loading="MLflow")
def describe_command(ctx: click.Context, name: str, version: str | None, alias: str | None, as_json: bool) -> None:
    """One version in full: source run, params, metrics, calibration, tags, signature, alias moves.

    Without --version or --alias: the version @champion points at, else the newest.
    """
    from training import catalog

    detail = catalog.describe(name, version, alias, ctx.obj["work_dir"])
    if as_json:
        click.echo(json.dumps(detail.to_dict(), indent=2))
        return
    for line in describe_lines(detail):
        click.echo(line)


@models_command.command("promote")
@click.argument("name")
@click.argument("version")
@click.option("--alias", default=CHAMPION, show_default=True, help="The alias to move.")
@click.option("--reason", default=None, help="Why, kept in the alias history.")
@click.pass_context
@friendly_errors(loading="MLflow")
def promote_command(ctx: click.Context, name: str, version: str, alias: str, reason: str | None) -> None:
    """Point NAME@ALIAS at VERSION; prints old -> new. Rollback moves it back."""
    from training import aliases

    move = aliases.promote(name, version, alias, ctx.obj["work_dir"], reason=reason)
    click.echo(move.line())
    if move.note is None:
        click.echo(f"recorded: {move.by} at {move.at}; `vae models rollback {name} --alias {alias}` undoes it")


@models_command.command("rollback")
@click.argument("name")
@click.option("--alias", default=CHAMPION, show_default=True, help="The alias to move back.")
@click.option("--reason", default=None, help="Why, kept in the alias history.")
@click.pass_context
@friendly_errors(loading="MLflow")
def rollback_command(ctx: click.Context, name: str, alias: str, reason: str | None) -> None:
    """Point NAME@ALIAS back at the version that held it before; prints old -> new."""
    from training import aliases

    move = aliases.rollback(name, alias, ctx.obj["work_dir"], reason=reason)
    click.echo(move.line())
    click.echo(f"recorded: {move.by} at {move.at}")


@models_command.command("history")
@click.argument("name")
@click.option("--alias", default=None, help="Only this alias (default: every alias with a history).")
@click.pass_context
@friendly_errors(loading="MLflow")
def history_command(ctx: click.Context, name: str, alias: str | None) -> None:
    """The recorded alias moves of NAME, oldest first."""
    from training import aliases

    work = ctx.obj["work_dir"]
    found = {alias: aliases.history(name, alias, work)} if alias else aliases.histories(name, work)
    rows = [
        [m.at.replace("T", " ").removesuffix("Z"), f"@{m.alias}", m.action, f"v{m.previous}" if m.previous else "-"]
        + [f"v{m.version}", m.by, m.reason or "", m.note or ""]
        for moves in found.values()
        for m in moves
    ]
    if not rows:
        click.echo(f"{name}: no recorded alias moves" + (f" for @{alias}" if alias else ""))
        return
    for line in _aligned(["at (UTC)", "alias", "action", "from", "to", "by", "reason", "note"], rows):
        click.echo(line)


def describe_lines(detail) -> list[str]:
    """``vae models describe`` as text: a heading, then one block per kind of information."""
    s = detail.summary
    held = "  (" + ", ".join(f"@{a}" for a in s.aliases) + ")" if s.aliases else ""
    lines = [f"{s.name} version {s.version}{held}"]
    params = detail.params
    lines += _block(
        "",
        {
            "model uri": detail.model_uri,
            "created": s.created,
            "status": s.status,
            "description": detail.description or None,
            "source run": s.run_id
            and f"{s.run_id}  ({detail.run_name}, {detail.run_status}, experiment {detail.experiment_id})",
            "files": detail.source,
            "image shape": params.get("image_shape"),
            "likelihood": params.get("chosen_likelihood"),
            "anomaly score": params.get("anomaly_score"),
            "signature in": detail.signature.get("inputs"),
            "signature out": detail.signature.get("outputs"),
        },
    )
    c = detail.calibration
    lines += _block(
        "calibration",
        {
            "score": c.get("score"),
            "target fpr": _number(c.get("target_fpr"), "g", None),
            "threshold": _number(c.get("threshold"), ".6g", None),
            "calibration rows": c.get("calibration_rows"),
            "holdout flagged": _number(c.get("holdout_flagged_rate"), ".2%", None),
            "fitted on": c.get("calibration_data"),
            "recalibrated from": c.get("recalibrated_from") and f"version {c['recalibrated_from']}",
            "warning": c.get("warning"),
        },
    )
    lines += _block(
        "holdout",
        {
            "holdout neg ELBO": _number(s.holdout_neg_elbo, ".4f", None),
            "validation neg ELBO": _number(s.validation_neg_elbo, ".4f", None),
            "holdout fingerprint": detail.version_tags.get("holdout_fingerprint"),
            "holdout rows": detail.version_tags.get("holdout_rows"),
        },
    )
    lines += _block("params", params)
    lines += _block("metrics", {k: _number(v, ".6g", None) for k, v in detail.metrics.items()})
    lines += _block("version tags", detail.version_tags)
    lines += _block("run tags", detail.run_tags)
    for alias, moves in detail.alias_history.items():
        lines += _block(
            f"@{alias} moves involving v{s.version}",
            {
                m["at"]: f"{m['action']} v{m['previous'] or '-'} -> v{m['version']} by {m['by']}"
                + (f" ({m['reason']})" if m["reason"] else "")
                for m in moves
            },
        )
    return lines


def _block(title: str, values: dict[str, Any]) -> list[str]:
    shown = {k: v for k, v in values.items() if v is not None and v != ""}
    if not shown:
        return []
    width = max(len(k) for k in shown) + 1
    head = [f"{title}:"] if title else []
    return head + [f"  {(k + ':').ljust(width)} {v}" for k, v in shown.items()]


def _aligned(headers: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> list[str]:
    """Columns padded to their widest cell (numbers in ``right`` flush right), two spaces apart."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        padded = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def _number(value: Any, spec: str, missing: str | None = "-") -> str | None:
    return missing if value is None else format(float(value), spec)
