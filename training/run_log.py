"""What a training run records: its inputs, figures and rejects in MLflow, the model registered
with its tags and description, and the champion alias moved when the new model wins."""

from __future__ import annotations

import logging
from dataclasses import asdict

import numpy as np

from training import aliases, registry
from training import data as data_lib
from training.config import TrainConfig
from training.fitting import neg_elbo_scores

log = logging.getLogger(__name__)
LATENT_MAP_ROWS = 5_000  # holdout images drawn in the latent map (a memory-mapped holdout is read in part)


def _likelihood_name(name: str, levels: int) -> str:
    return f"{name} ({levels} grey levels)" if levels else name


def _holdout_name(holdout_fingerprint: str, rows: int) -> str:
    return f"holdout {holdout_fingerprint} ({rows} rows)"


def decide_promotion(
    cfg: TrainConfig,
    champion: str | None,
    new_score: float,
    holdout: data_lib.ImageData,
    holdout_fingerprint: str | None = None,
    likelihood: tuple[str, int] | None = None,
) -> tuple[bool, str]:
    """Whether the new model (mean holdout neg ELBO ``new_score``) takes the champion alias, and why.

    ``if-better`` scores the champion on this run's ``holdout``. The holdout is chosen by a hash of
    the example ids, so on the same data it is the champion's own holdout (its stored
    ``holdout_fingerprint`` matches); on new data the reason says that the holdout changed.
    ``likelihood``: the new model's (name, grey levels); its nats compare only with the same."""
    if cfg.promote == "always":
        return True, "--promote always"
    if cfg.promote == "never":
        return False, "--promote never"
    if champion is None:
        return True, "no champion yet"
    current = registry.pin(f"models:/{cfg.model_name}/{champion}", cfg.work_dir).load()
    keep = f"kept champion v{champion} (--promote always replaces it)"
    if tuple(current.image_shape) != holdout.image_shape:
        return False, f"champion v{champion} takes {current.image_shape} images, not comparable; {keep}"
    fingerprint = holdout_fingerprint or data_lib.fingerprint(holdout)
    stored = registry.version_tags(cfg.model_name, champion, cfg.work_dir).get("holdout_fingerprint")
    if stored is None:  # saved before holdouts (and before the continuous-Bernoulli fix)
        return True, (
            f"champion v{champion} predates the fixed holdout: it may have trained on the rows of "
            f"{_holdout_name(fingerprint, len(holdout))} and its nats may predate the likelihood fix, so no fair "
            "comparison is possible; the new model replaces it"
        )
    theirs = (current.likelihood, int(getattr(current, "pixel_levels", 0)))
    if likelihood is None:  # not given: the configured one, or the champion's under "auto"
        likelihood = theirs if cfg.likelihood == "auto" else (cfg.likelihood, theirs[1])
    ours = likelihood
    if theirs != ours:
        return False, (
            f"champion v{champion} uses the {_likelihood_name(*theirs)} likelihood, this model "
            f"{_likelihood_name(*ours)}: their nats are not comparable; {keep}"
        )
    if bool(current.num_classes) != cfg.conditional:
        return False, f"one of the two models is conditional (log p(x|y) against log p(x)), not comparable; {keep}"
    if getattr(current, "score_prior", "standard") != ("fitted" if cfg.conditional else "standard"):
        return False, (
            f"champion v{champion} was scored against another prior p(z|y) (N(0, I); this model's fitted "
            f"per-label prior), so their nats are not comparable; {keep}"
        )
    if stored != fingerprint:
        note = f"; the holdout changed since champion v{champion} (fingerprints {stored} -> {fingerprint}): new data"
    else:
        note = f", champion v{champion}'s own holdout"
    champion_score = float(neg_elbo_scores(current, holdout).mean())
    where = f"on {_holdout_name(fingerprint, len(holdout))}{note}"
    if new_score < champion_score:
        return True, f"holdout neg ELBO {new_score:.3f} < champion v{champion}'s {champion_score:.3f} {where}"
    return False, f"holdout neg ELBO {new_score:.3f} >= champion v{champion}'s {champion_score:.3f} {where}"


def log_inputs(cfg: TrainConfig, model, read, split: data_lib.TrainingSplit, rows: dict, holdout_fingerprint: str):
    """The run's params, tags and input metrics, and its rejects, before training."""
    import mlflow

    params = {k: v for k, v in asdict(cfg).items() if k not in ("work_dir", "pixel_levels", "data")}
    params["beta"] = cfg.kl_beta()
    params["architecture"] = model.architecture  # auto resolved
    params["data"] = " + ".join([cfg.data] if isinstance(cfg.data, str) else cfg.data)
    mlflow.log_params(
        params
        | rows
        | {
            "image_shape": str(split.train.image_shape),
            "backend": _backend(),
            "holdout_fraction": data_lib.HOLDOUT_FRACTION,
        }
    )
    mlflow.set_tags(
        {
            "data_fingerprint": data_lib.fingerprint(split.train),
            "holdout_fingerprint": holdout_fingerprint,
            "data_source": split.train.source,
            "model_name": cfg.model_name,
        }
    )
    log.info("likelihood: %s (%s)", _likelihood_name(model.likelihood, model.pixel_levels), model.likelihood_reason)
    mlflow.log_params({"chosen_likelihood": model.likelihood, "pixel_levels": model.pixel_levels})
    mlflow.log_metrics(
        {"rows_read": read.rows_read, "rows_rejected": read.rejects.num_rows, "reject_rate": read.reject_rate}
    )
    if read.rejects.num_rows:
        _log_rejects(read)
    mlflow.set_tag("likelihood_reason", model.likelihood_reason)


def log_figures(cfg: TrainConfig, model, history: dict, holdout: data_lib.ImageData, calibration) -> None:
    """The run's pictures, under ``plots/``."""
    import mlflow

    from training import plots

    figures = {
        "learning_curves": plots.learning_curves(history),
        "reconstructions": plots.reconstructions(model, holdout.images, holdout.labels if cfg.conditional else None),
        "prior_samples": plots.prior_grid(model, seed=cfg.seed),
        "latent_map": plots.latent_map(
            model,
            holdout.images[:LATENT_MAP_ROWS],
            None if holdout.labels is None else holdout.labels[:LATENT_MAP_ROWS],
        ),
        "latent_grid": plots.latent_grid_figure(model, *_first_rows(holdout, LATENT_MAP_ROWS)),
        "score_histogram": plots.score_histogram(
            calibration.scores, calibration.threshold, title=f"calibration {calibration.score}"
        ),
    }
    if cfg.conditional:
        figures["samples_per_label"] = plots.per_label_grid(model, seed=cfg.seed)
    for name, figure in figures.items():
        mlflow.log_figure(figure, f"plots/{name}.png")


def register_and_promote(
    cfg: TrainConfig,
    model,
    split: data_lib.TrainingSplit,
    summary: dict,
    calibration,
    holdout_fingerprint: str,
) -> tuple[str, bool, str]:
    """Registers the model, tags the version, moves the champion alias if it wins; (version, promoted, why).
    The champion is read now, after training: an alias moved meanwhile is the one to beat."""
    import mlflow

    holdout = split.holdout
    champion = registry.champion_version(cfg.model_name, cfg.work_dir) if cfg.promote == "if-better" else None
    version = _log_and_register(model, cfg, split)
    registry.set_version_tags(
        cfg.model_name,
        version,
        {
            "holdout_fingerprint": holdout_fingerprint,
            "holdout_rows": len(holdout),
            "holdout_neg_elbo": repr(summary["holdout_neg_elbo"]),
        },
        work=cfg.work_dir,
    )
    promoted, reason = decide_promotion(
        cfg,
        champion,
        summary["holdout_neg_elbo"],
        holdout,
        holdout_fingerprint,
        likelihood=(model.likelihood, model.pixel_levels),
    )
    if promoted:
        aliases.promote(cfg.model_name, version, registry.CHAMPION, cfg.work_dir, reason=reason, by="vae train")
    mlflow.set_tags({"promoted": str(promoted), "promotion_reason": reason, "model_version": version})
    try:  # the registry's descriptions: after the promotion, so a failure here is a warning
        registry.describe(
            cfg.model_name,
            version,
            {
                "conditional": cfg.conditional,
                "architecture": model.architecture,
                "latent_dim": cfg.latent_dim,
                "data": split.train.source,
                "train_rows": len(split.train),
                "shape": "x".join(map(str, split.train.image_shape)),
                "likelihood": _likelihood_name(model.likelihood, model.pixel_levels),
                "likelihood_reason": model.likelihood_reason,
                "holdout_neg_elbo": summary["holdout_neg_elbo"],
                "holdout_fingerprint": holdout_fingerprint,
                "holdout_rows": len(holdout),
                "threshold": calibration.threshold,
                "score": calibration.score,
                "fpr": cfg.target_fpr,
                "promoted": promoted,
                "promotion_reason": reason,
            },
            cfg.work_dir,
        )
    except Exception as exc:  # noqa: BLE001 - MLflow's errors vary by store
        log.warning("could not write the registry's description of %s v%s: %s", cfg.model_name, version, exc)
    return version, promoted, reason


def _log_and_register(model, cfg: TrainConfig, split: data_lib.TrainingSplit) -> str:
    import keras
    from mlflow.models import infer_signature

    from training.model import model_inputs

    example = split.validation.subset(np.arange(min(4, len(split.validation))))
    x = model_inputs(example.images, example.labels, cfg.conditional)
    signature = infer_signature(x, np.asarray(keras.ops.convert_to_numpy(model(x))))
    return registry.log_and_register(model, cfg.model_name, signature)


def _first_rows(part: data_lib.ImageData, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(images, labels) of at most ``n`` rows spread evenly over the part (it is sorted by id, so
    the first rows could be one class); a memory-mapped part reads only those rows."""
    rows = np.unique(np.linspace(0, len(part) - 1, min(n, len(part))).astype(np.int64))
    return np.asarray(part.images[rows]), None if part.labels is None else part.labels[rows]


def _log_rejects(read: data_lib.ReadResult) -> None:
    """The rejected input rows as ``rejects.parquet`` of the run, and a count per reason."""
    import tempfile
    from pathlib import Path

    import mlflow
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rejects.parquet"
        pq.write_table(read.rejects, path)
        mlflow.log_artifact(str(path))
    mlflow.log_dict(dict(read.reasons()), "reject_reasons.json")


def _backend() -> str:
    import keras

    return keras.backend.backend()
