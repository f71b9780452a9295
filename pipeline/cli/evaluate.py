"""``vae evaluate``: a thin shell over :func:`pipeline.evaluation.evaluate.evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from pipeline.cli.progress import Progress
from pipeline.cli.support import friendly_errors

if TYPE_CHECKING:
    from pipeline.evaluation.evaluate import EvaluationResult

PROTOCOL_HELP = (
    "Comma-separated: held-out (one class left out of training); contaminated-clustered-1|3|10 (a class planted "
    "at 1/3/10%, unsupervised), contaminated-scattered-1|3|10 (broken images planted at 1/3/10%), or the shorthands "
    "contaminated, contaminated-clustered, contaminated-scattered; one-class; corrupted (fit on clean images, "
    "10% of the test split broken, one task per corruption)."
)


def _items(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]


def parse_protocols(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    from pipeline.evaluation.tasks import PROTOCOLS, SHORTHANDS, check_protocols

    if value is None:
        return None
    chosen = tuple(_items(value))
    try:
        cells = check_protocols(chosen)
    except ValueError:
        cells = []
    if not cells:
        raise click.BadParameter(f"{value!r}: choose one or more of {', '.join([*PROTOCOLS, *SHORTHANDS])}")
    return tuple(cells)


def parse_corruptions(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    from pipeline.evaluation.corruptions import KINDS

    if value is None:
        return None
    chosen = tuple(dict.fromkeys(_items(value)))
    unknown = [k for k in chosen if k not in KINDS]
    if unknown or not chosen:
        raise click.BadParameter(f"{value!r}: choose one or more of {', '.join(KINDS)}")
    return chosen


def parse_data(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    chosen = tuple(dict.fromkeys(_items(value)))
    if not chosen:
        raise click.BadParameter(f"{value!r}: give one or more data sets, e.g. digits,mnist5k")
    return chosen


def parse_seeds(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        seeds = tuple(dict.fromkeys(int(s) for s in _items(value)))
    except ValueError:
        seeds = ()
    if not seeds:
        raise click.BadParameter(f"{value!r}: give comma-separated integers, e.g. 0,1,2")
    return seeds


def parse_detectors(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    from pipeline.evaluation.evaluate import DETECTORS

    if value is None:
        return None
    chosen = tuple(dict.fromkeys(_items(value)))
    unknown = [d for d in chosen if d not in DETECTORS]
    if unknown or not chosen:
        raise click.BadParameter(f"{value!r}: choose one or more of {', '.join(DETECTORS)}")
    return chosen


@click.command("evaluate")
@click.option(
    "--data",
    default=None,
    callback=parse_data,
    help="Comma-separated labelled data sets: built-in names (digits, mnist5k, ...) or paths "
    "(Parquet, .npz, PNG folder with labels). Default: digits,mnist5k,mnist5k-binary (digits with --quick).",
)
@click.option(
    "--seeds",
    default=None,
    callback=parse_seeds,
    help="Comma-separated seeds for splits, fits and scores; the summary is over them. "
    "Default: 0,1,2 (0 with --quick).",
)
@click.option(
    "--protocols",
    default=None,
    callback=parse_protocols,
    help=PROTOCOL_HELP + " Default: all (with --quick: held-out, contaminated-clustered-3, "
    "contaminated-scattered-3, one-class, corrupted).",
)
@click.option(
    "--epochs",
    type=click.IntRange(1),
    default=None,
    help="VAE epochs per fit (default: the evaluation's own, 30; 2 with --quick).",
)
@click.option(
    "--quick",
    is_flag=True,
    help="A smoke run: 2 epochs, digits and one seed (unless --data/--seeds), the 3% contaminated cells only "
    "(unless --protocols) with one planted class, the first 2 classes of held-out and one-class, 4 corruptions, "
    "no IWAE.",
)
@click.option(
    "--classes",
    type=click.IntRange(0),
    default=None,
    help="Held-out and one-class on this many classes per seed, rotating with the seed (0: every class). "
    "Default: every class on the 8x8 digits, 3 on 28x28 images.",
)
@click.option(
    "--planted",
    type=click.IntRange(1),
    default=None,
    help="Planted classes per contaminated-clustered cell and seed, rotating with the seed. "
    "Default: 3 on the 8x8 digits, 1 on 28x28 images (1 with --quick).",
)
@click.option(
    "--corruptions",
    default=None,
    callback=parse_corruptions,
    help="Comma-separated corruptions of the corrupted and scattered protocols (default: all): blank, saturated, "
    "inverted, wrong-scale, impulse-noise, gaussian-noise, shifted, rotated, stripe, half-occluded, blurred.",
)
@click.option(
    "--detectors",
    default=None,
    callback=parse_detectors,
    help="Comma-separated detectors, for every data set: vae_anomaly_score, vae_neg_elbo, vae_iwae_nll, "
    "iforest, ocsvm, pca, kde, knn, lof, hbos, ecod. Default: all, but ocsvm, pca and kde only on images of at most "
    "256 pixels (the 8x8 digits; they are slow on 28x28).",
)
@click.option(
    "--iwae-k",
    type=click.IntRange(0),
    default=None,
    help="Samples of the IWAE bound behind vae_iwae_nll; 0 (the default) skips it.",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for results.csv, summary.csv, vae_fits.csv, tables.md and evaluation.png "
    "(default: WORK_DIR/evaluation).",
)
@click.option(
    "--previous",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="A previous summary.csv to compare with (comparison.md, and a section of tables.md); "
    "default: the summary.csv already in the output folder, if any.",
)
@click.option("--no-previous", is_flag=True, help="Compare with no previous summary.")
@click.option("--run-id", default=None, help="Log into this MLflow run (default: a new run named 'evaluation').")
@click.option("--no-mlflow", is_flag=True, help="Do not log to MLflow.")
@click.pass_context
@friendly_errors
def evaluate_command(
    ctx: click.Context,
    data: tuple[str, ...] | None,
    seeds: tuple[int, ...] | None,
    protocols: tuple[str, ...] | None,
    epochs: int | None,
    quick: bool,
    classes: int | None,
    planted: int | None,
    corruptions: tuple[str, ...] | None,
    detectors: tuple[str, ...] | None,
    iwae_k: int | None,
    output: str | None,
    previous: str | None,
    no_previous: bool,
    run_id: str | None,
    no_mlflow: bool,
) -> None:
    """Compare the VAE's scores with PyOD's detectors over data sets, protocols and seeds.

    Prints, per data set and protocol, each detector's AUROC and average precision: the mean over
    seeds (of the mean over the protocol's tasks), the standard deviation and the worst seed.
    """
    from pipeline.evaluation.corruptions import KINDS
    from pipeline.evaluation.evaluate import (
        DATA_SETS,
        DEFAULT_EPOCHS,
        DEFAULT_SEEDS,
        IWAE_K,
        QUICK_CLASSES,
        QUICK_EPOCHS,
        QUICK_KINDS,
        QUICK_PLANTED,
        QUICK_PROTOCOLS,
        QUICK_SEEDS,
        evaluate,
    )
    from pipeline.evaluation.tasks import PROTOCOLS
    from training import registry
    from training.config import TrainConfig

    work = ctx.obj["work_dir"]
    folder = Path(output) if output else registry.work_dir(work) / "evaluation"
    with Progress("evaluate", unit="task") as progress:  # a bar at a terminal, a log line per task elsewhere
        result = evaluate(
            data or (("digits",) if quick else DATA_SETS),
            protocols or (QUICK_PROTOCOLS if quick else PROTOCOLS),
            seeds=seeds or (QUICK_SEEDS if quick else DEFAULT_SEEDS),
            epochs=epochs or (QUICK_EPOCHS if quick else DEFAULT_EPOCHS),
            train_config=TrainConfig(work_dir=str(work)),
            iwae_k=iwae_k if iwae_k is not None else (0 if quick else IWAE_K),
            detectors=detectors,
            max_classes=QUICK_CLASSES if quick else None,
            classes=0 if quick and classes is None else classes,  # --quick: the first classes (max_classes)
            planted=QUICK_PLANTED if quick and planted is None else planted,
            kinds=corruptions or (QUICK_KINDS if quick else KINDS),
            output_dir=folder,
            previous=previous,
            keep_previous=not no_previous,
            run_id=run_id,
            log_to_mlflow=not no_mlflow,
            progress=progress,
        )
    _print_result(result, folder)


def _print_result(result: EvaluationResult, folder: Path) -> None:
    """The summary per cell, the headline, the verdicts against the previous scorecard and from
    the same fits, and where the files are."""
    from pipeline.evaluation.comparison import fmt
    from pipeline.evaluation.tables import headline_table, summary_table

    summary = result.summary
    for data_name, protocol in dict.fromkeys(zip(summary["data"], summary["protocol"], strict=True)):
        part = summary[(summary["data"] == data_name) & (summary["protocol"] == protocol)]
        seeds_run, tasks = int(part["n_seeds"].max()), int(part["n_tasks"].max())
        click.echo(f"\n{data_name}: {protocol} ({tasks} task(s), {seeds_run} seed(s))\n")
        click.echo(summary_table(summary, data_name, protocol))
    click.echo("\nThe default VAE score against the best PyOD detector (mean AUROC over seeds):\n")
    click.echo(headline_table(summary, result.results))
    if result.comparison is not None:
        from pipeline.evaluation.comparison import pareto_line, pareto_violations

        click.echo("\n" + pareto_line(pareto_violations(result.previous, summary)).replace("**", ""))
    if result.paired is not None and not result.paired.empty:
        worse = result.paired[result.paired["verdict"] == "worse"]
        cells = ", ".join(f"{r.data} {r.protocol} ({fmt(r.change, sign=True)})" for r in worse.itertuples())
        click.echo(
            f"Against {result.paired['baseline'].iloc[0]}, from the same fits: "
            + (
                f"{len(worse)} cell(s) worse beyond their seed spread: {cells}."
                if cells
                else "no cell worse beyond its seed spread."
            )
        )
    click.echo(f"\n{result.seconds:.0f} s. Results in {folder}: " + ", ".join(p.name for p in result.paths.values()))
    if result.run_id:
        click.echo(f"MLflow run: {result.run_id}")
