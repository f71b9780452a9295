"""``vae train``: a thin shell over :func:`training.train.train`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

from pipeline.cli.support import friendly_errors, parse_shape, result_json_option
from pipeline.contract import TRAIN_KEYS

if TYPE_CHECKING:
    from training.config import TrainConfig

# scoring.anomaly.METHODS, the default first
ANOMALY_METHODS = ("elbo_latent_knn_rarity_rate", "elbo_latent_knn_rarity", "elbo_latent_knn", "neg_elbo")
LIKELIHOOD_CHOICES = ("auto", "bernoulli", "continuous_bernoulli", "gaussian")


def train_options(func):
    """The options shared by ``vae train`` and ``vae run``."""
    from training.config import TrainConfig

    d = TrainConfig()
    options = [*_model_options(d), *_fit_options(d), *_detector_options(d), *_data_options(d), *_compute_options()]
    for option in reversed(options):
        func = option(func)
    return func


def _model_options(d: TrainConfig) -> list:
    """The model: its latent, networks and likelihood."""
    return [
        click.option(
            "--latent-dim",
            type=click.IntRange(1),
            default=d.latent_dim,
            show_default=True,
            help="Size of the latent space z.",
        ),
        click.option(
            "--architecture",
            type=click.Choice(("auto", "dense", "conv")),
            default=d.architecture,
            show_default=True,
            help="Encoder and decoder: dense layers, or convolutions sized from the image shape; auto: "
            "convolutions for a conditional model of at least 1,000 training images at least 16 pixels on a "
            "side, else dense.",
        ),
        click.option(
            "--likelihood",
            type=click.Choice(LIKELIHOOD_CHOICES),
            default=d.likelihood,
            show_default=True,
            help="Decoder likelihood p(x|z); auto: Bernoulli for binary images, the continuous Bernoulli binned "
            "to the grey levels of quantised pixels, else its density. Scores are in nats per example.",
        ),
    ]


def _fit_options(d: TrainConfig) -> list:
    """How the model is fitted."""
    from training.config import CONDITIONAL_BETA

    return [
        click.option(
            "--epochs",
            type=click.IntRange(1),
            default=d.epochs,
            show_default=True,
            help="Maximum epochs (early stopping may end sooner).",
        ),
        click.option(
            "--batch-size",
            type=click.IntRange(1),
            default=d.batch_size,
            show_default=True,
            help="Images per gradient step.",
        ),
        click.option(
            "--learning-rate",
            type=click.FloatRange(min=0, min_open=True),
            default=d.learning_rate,
            show_default=True,
            help="Adam learning rate.",
        ),
        click.option(
            "--kl-warmup",
            type=click.IntRange(0),
            default=d.kl_warmup,
            show_default=True,
            help="Epochs over which the KL weight rises linearly to --beta (0: no warm-up).",
        ),
        click.option(
            "--beta",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            help="Weight of the KL term in the training loss after warm-up. Default: 1 (the ELBO) for a plain "
            f"model, {CONDITIONAL_BETA:g} for a --conditional one, whose latent then keeps more of each image's "
            "style and whose samples vary more (README: Synthetic images). Scores always use the full ELBO.",
        ),
        click.option(
            "--early-stopping",
            type=click.IntRange(0),
            default=d.early_stopping,
            show_default=True,
            help="Stop after this many epochs without a better validation negative ELBO, keeping "
            "the best weights (0: off).",
        ),
        click.option(
            "--seed",
            type=int,
            default=d.seed,
            show_default=True,
            help="Seed for the split, initialisation, sampling and scoring.",
        ),
    ]


class _Folds(click.ParamType):
    name = "auto|N"

    def convert(self, value, param, ctx):
        from training.cross_fit import check_folds

        if value is None or value == "auto":
            return None
        try:
            folds = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither auto nor a whole number", param, ctx)
        try:
            check_folds(folds)
        except ValueError as error:
            self.fail(str(error), param, ctx)
        return folds


_FOLDS = _Folds()


def _detector_options(d: TrainConfig) -> list:
    """The anomaly detector fitted after training, and promotion."""
    from training.config import PROMOTE_CHOICES

    return [
        click.option(
            "--fpr",
            "target_fpr",
            type=click.FloatRange(0, 1, min_open=True, max_open=True),
            default=d.target_fpr,
            show_default=True,
            help="Target false positive rate that sets the anomaly threshold on held-out scores: the "
            "calibration part's, or cross-fitted ones when that part is small (--calibration-folds); warns "
            "when they are too few for it.",
        ),
        click.option(
            "--calibration-folds",
            type=_FOLDS,
            default="auto",
            show_default=True,
            help="Cross-fit the threshold: train this many more models, each without one fold of the "
            "non-holdout rows, and calibrate on every row's score from the model that left it out (0: the "
            "calibration part alone). auto: 5 when the calibration part has fewer rows than an empirical "
            "threshold at --fpr needs (1,000 at 1%), else 0. Semi-supervised models and memory-mapped data are "
            "never cross-fitted.",
        ),
        click.option(
            "--anomaly-score",
            type=click.Choice(ANOMALY_METHODS),
            default=d.anomaly_score,
            show_default=True,
            help="What anomaly_score is: elbo_latent_knn_rarity_rate, the evidence that an image is improbable "
            "(its ELBO), new (far from the training images' latents), rare (far at the scale of 3% of them) or "
            "empty (its rate, the KL term, far below the training images'); elbo_latent_knn_rarity, the same "
            "without the last (the previous default); elbo_latent_knn, the plain sum of the first two; or the "
            "negative ELBO alone (docs/detection.md).",
        ),
        click.option(
            "--score-samples",
            type=click.IntRange(1),
            default=d.score_samples,
            show_default=True,
            help="Posterior samples per example for the stored negative ELBO estimate.",
        ),
        click.option(
            "--promote",
            type=click.Choice(PROMOTE_CHOICES),
            default=d.promote,
            show_default=True,
            help="Move the 'champion' alias to the new version: if it beats the champion's negative ELBO "
            "on the fixed, fingerprinted holdout (scored for both), always, or never.",
        ),
    ]


def _data_options(d: TrainConfig) -> list:
    """How the training images are read."""
    return [
        click.option(
            "--shape",
            callback=parse_shape,
            default=None,
            help="Image shape HxWxC for a Parquet 'pixels' column without height/width columns.",
        ),
        click.option(
            "--pixel-scale",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            help="Divide numeric pixels by this (e.g. 16 for 0-16 grey levels, 1 for 0/1 integer masks, 255 for "
            "0-255 floats). Default: integers by 255, floats as they are. The model records it and every job "
            "that feeds it scales the same way.",
        ),
        click.option(
            "--max-reject-rate",
            type=click.FloatRange(0, 1),
            default=d.max_reject_rate,
            show_default=True,
            help="Rows that cannot be used are quarantined (rejects.parquet in the MLflow run); stop when a "
            "larger share of the input is rejected.",
        ),
        click.option(
            "--memory-budget-mb",
            type=click.IntRange(0),
            default=None,
            help="Images beyond this many MiB are read into a memory-mapped file in the work folder and "
            "streamed from disk batch by batch (default: half the machine's memory).",
        ),
    ]


def _compute_options() -> list:
    """How the training step is computed (for GPUs)."""
    return [
        click.option("--mixed-precision", is_flag=True, help="mixed_float16 compute (for GPUs)."),
        click.option("--xla", is_flag=True, help="Compile the train step with XLA."),
    ]


@click.command("train")
@click.option(
    "--data",
    multiple=True,
    default=("digits",),
    show_default=True,
    help="digits or mnist5k (built in), mnist, fashion_mnist, or a path: Parquet file or folder (hive KEY=VALUE "
    "folders are read as columns), .npz, PNG folder. Repeat it to train on several inputs as one data set, e.g. "
    "--data real/ --data OUT/synthetic (vae generate's output) for augmentation.",
)
@click.option("--model-name", default="vae-digits", show_default=True, help="Registered model name in MLflow.")
@click.option(
    "--conditional",
    is_flag=True,
    help="Train a label-conditioned VAE. The data need labels; rows without one are learnt from too "
    "(semi-supervised, with a classifier q(y|x)), and every part of the split needs some labelled rows.",
)
@result_json_option(", ".join(TRAIN_KEYS), on_failure=False)
@train_options
@click.pass_context
@friendly_errors
def train_command(ctx: click.Context, result_json: str | None, **options) -> None:
    """Train a VAE, calibrate its anomaly threshold, log it to MLflow and register it.

    Uses a SQLite MLflow store in the working folder unless MLFLOW_TRACKING_URI is set.
    """
    result = run_training(ctx, **options)
    print_result(result, ctx.obj["work_dir"])
    if result_json:
        from pipeline.outputs.result_json import write_result_json

        write_result_json(result_json, train_outcome(result))


def train_outcome(result) -> dict:
    """What a scheduler needs to know about the new model version (:data:`pipeline.contract.TRAIN_KEYS`)."""
    outcome = {
        "model_name": result.model_name,
        "version": str(result.version),
        "promoted": bool(result.promoted),
        "run_id": result.run_id,
        "validation_neg_elbo": float(result.validation_neg_elbo),
        "holdout_neg_elbo": float(result.holdout_neg_elbo),
        "holdout_fingerprint": result.holdout_fingerprint,
        "conditional": bool(result.model.num_classes),
    }
    return {key: outcome[key] for key in TRAIN_KEYS}


def run_training(ctx: click.Context, **options):
    from training.config import TrainConfig
    from training.train import train

    return train(TrainConfig(work_dir=str(ctx.obj["work_dir"]), **options))


def print_result(result, work_dir: str | os.PathLike | None = None) -> None:
    from training import registry

    where = registry.tracking_uri(work_dir)
    click.echo(f"run id:              {result.run_id}")
    click.echo(f"registered:          {result.model_name} version {result.version}  ({where})")
    model = result.model
    levels = f", binned to {model.pixel_levels} grey levels" if model.pixel_levels else ""
    click.echo(f"likelihood:          {model.likelihood}{levels}  ({model.likelihood_reason})")
    samples = getattr(model, "score_samples", 1)
    click.echo(
        f"validation neg ELBO: {result.validation_neg_elbo:.3f} nats  (the kept epoch's weights scored with {samples} "
        "posterior samples per image; the epoch lines' val_neg_elbo draws one, so it differs a little)"
    )
    holdout = f"holdout {result.holdout_fingerprint}, {len(result.split.holdout)} rows"
    click.echo(f"holdout neg ELBO:    {result.holdout_neg_elbo:.3f} nats  ({holdout})")
    if result.calibration_folds:
        calibration = (
            f"on anomaly_score, from {result.calibration_rows:,} rows, each scored by one of "
            f"{result.calibration_folds} cross-fitted models that left it out"
        )
    else:
        calibration = f"on anomaly_score, from {result.calibration_rows:,} calibration rows"
    click.echo(f"anomaly threshold:   {result.threshold:.3f}  ({calibration})")
    if result.unlabelled_rows and result.classifier_accuracy is not None:
        click.echo(
            f"unlabelled rows:     {result.unlabelled_rows:,} learnt from (semi-supervised); their classifier q(y|x) "
            f"labels {result.classifier_accuracy:.1%} of the labelled holdout right. Scores, the threshold and the "
            "holdout use the labelled rows"
        )
    verdict = "promoted to @champion" if result.promoted else "not promoted"
    click.echo(f"alias:               {verdict} ({result.promotion_reason})")
