"""Candidate anomaly scores built from a VAE's own outputs, side by side on the evaluation's tasks.

The evidence behind ``scoring.anomaly.DEFAULT_METHOD`` (README, "How the defaults were chosen").
Each task fits one VAE (the training defaults unless overridden) and scores its test images with
every candidate: the ELBO and its terms, the IWAE bound, latent-space distances and densities
against the training images' posterior means, their sums with the ELBO, two-sided typicality and
a density of states (a KDE over the per-image statistics of held-out normal images). Prints the
mean AUROC per data set, protocol and candidate, and writes one row per task and candidate.

    .venv/bin/python benchmarks/anomaly_candidates.py --data digits --protocols held-out,contaminated
    .venv/bin/python benchmarks/anomaly_candidates.py --data mnist5k --classes 1,9 --seeds 0
    .venv/bin/python benchmarks/anomaly_candidates.py --likelihood continuous_bernoulli --pixel-levels 0

About 3 minutes per seed for the digits' held-out and contaminated tasks on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from pipeline.evaluation.evaluate import build_tasks, vae_config  # noqa: E402
from scoring import metrics  # noqa: E402
from scoring.anomaly import knn_distance  # noqa: E402
from training import data as data_lib  # noqa: E402
from training.config import TrainConfig  # noqa: E402


def robust_z(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    q25, median, q75 = np.percentile(reference, [25, 50, 75])
    return (values - median) / max(q75 - q25, 1e-9)


def aggregate_nll(points: np.ndarray, means: np.ndarray, log_vars: np.ndarray, leave_out: bool) -> np.ndarray:
    """-log of the aggregate posterior (the mixture of the training posteriors) at ``points``."""
    from scipy.special import logsumexp

    out = np.empty(len(points))
    for start in range(0, len(points), 256):
        chunk = points[start : start + 256, None, :]
        log_p = -0.5 * (((chunk - means[None]) ** 2) / np.exp(log_vars)[None] + log_vars[None] + np.log(2 * np.pi))
        log_p = log_p.sum(-1)
        if leave_out:
            rows = np.arange(log_p.shape[0])
            log_p[rows, start + rows] = -np.inf
        out[start : start + 256] = -(logsumexp(log_p, axis=1) - np.log(log_p.shape[1] - leave_out))
    return out


def candidate_scores(task, cfg: TrainConfig) -> tuple[dict[str, np.ndarray], dict]:
    import keras
    from scipy.stats import gaussian_kde

    from scoring.detector import score_images
    from scoring.elbo import iwae_nll
    from training.train import build_model, fit, set_seeds

    keras.backend.clear_session()
    set_seeds(cfg.seed)
    model = build_model(cfg, task.fit)
    history, _ = fit(cfg, model, data_lib.Split(task.fit, task.validation, task.test))
    same = task.fit is task.test  # unsupervised: the fit images are the scored ones

    def terms(images):
        out = score_images(model, images, num_samples=cfg.score_samples, seed=cfg.seed)
        log_var = np.concatenate(
            [
                np.asarray(keras.ops.convert_to_numpy(model.encode(images[i : i + 1024])[1]))
                for i in range(0, len(images), 1024)
            ]
        )
        return out | {"log_var": log_var.astype(np.float64), "mean": out["posterior_mean"].astype(np.float64)}

    test = terms(task.test.images)
    fit_t = test if same else terms(task.fit.images)
    held = fit_t if same else terms(task.validation.images)  # normal images the weights never saw

    k_big = max(5, int(np.ceil(0.05 * len(fit_t["mean"]))))
    knn = {k: knn_distance(test["mean"], fit_t["mean"], k, exclude_self=same) for k in (1, 5, k_big)}
    fit_knn = {k: knn_distance(fit_t["mean"], fit_t["mean"], k, exclude_self=True) for k in (5, k_big)}
    held_knn5 = knn_distance(held["mean"], fit_t["mean"], 5, exclude_self=same)
    agg = aggregate_nll(test["mean"], fit_t["mean"], fit_t["log_var"], same)
    fit_agg = aggregate_nll(fit_t["mean"], fit_t["mean"], fit_t["log_var"], True)
    z_elbo = robust_z(test["neg_elbo"], fit_t["neg_elbo"])

    scores = {
        "neg_elbo": test["neg_elbo"],
        "reconstruction_nll": test["reconstruction_nll"],
        "kl": test["kl"],
        "minus_kl": -test["kl"],
        "iwae_nll_k64": iwae_nll(model, task.test.images, k=64, seed=cfg.seed),
        "latent_knn1": knn[1],
        "latent_knn5": knn[5],
        "latent_knn_5pct": knn[k_big],
        "aggregate_posterior_nll": agg,
        "elbo+0.5*latent_knn5": z_elbo + 0.5 * robust_z(knn[5], fit_knn[5]),
        "elbo+latent_knn5 (default)": z_elbo + robust_z(knn[5], fit_knn[5]),
        "elbo+2*latent_knn5": z_elbo + 2.0 * robust_z(knn[5], fit_knn[5]),
        "elbo+latent_knn_5pct": z_elbo + robust_z(knn[k_big], fit_knn[k_big]),
        "elbo+aggregate_posterior": z_elbo + robust_z(agg, fit_agg),
    }
    # statistics standardised on held-out normal images: typicality and a density of states
    stats = np.stack([test["reconstruction_nll"], test["kl"], knn[5]], 1)
    held_stats = np.stack([held["reconstruction_nll"], held["kl"], held_knn5], 1)
    q25, median, q75 = np.percentile(held_stats, [25, 50, 75], axis=0)
    z_test, z_held = (stats - median) / (q75 - q25 + 1e-9), (held_stats - median) / (q75 - q25 + 1e-9)
    scores["typicality(rec,kl)"] = np.abs(z_test[:, :2]).sum(1)
    scores["typicality(rec,kl,knn)"] = np.abs(z_test).sum(1)
    scores["density_of_states(rec,kl,knn)"] = -gaussian_kde(z_held.T).logpdf(z_test.T)
    info = {"epochs": len(history.get("loss", [])), "kl": float(test["kl"][~task.is_anomaly].mean())}
    return scores, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="digits", help="digits, mnist5k, or any labelled data set")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--protocols", default="held-out,contaminated,one-class")
    parser.add_argument("--classes", default=None, help="only these classes' held-out and one-class tasks")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--latent-dim", type=int, default=None)
    parser.add_argument("--architecture", default=None)
    parser.add_argument("--likelihood", default=None)
    parser.add_argument("--pixel-levels", type=int, default=None)
    parser.add_argument("--csv", default=None, help="write one row per task and candidate here")
    args = parser.parse_args()

    import pandas as pd

    images = data_lib.load(args.data)
    overrides = {
        key: value
        for key, value in {
            "latent_dim": args.latent_dim,
            "architecture": args.architecture,
            "likelihood": args.likelihood,
            "pixel_levels": args.pixel_levels,
        }.items()
        if value is not None
    }
    rows, started = [], time.perf_counter()
    for seed in (int(s) for s in args.seeds.split(",")):
        base = replace(TrainConfig(), epochs=args.epochs, seed=seed, conditional=False, **overrides)
        tasks = build_tasks(images, args.protocols.split(","), seed)
        if args.classes:
            wanted = set(args.classes.split(","))
            tasks = [t for t in tasks if t.protocol == "contaminated" or t.target in wanted]
        for task in tasks:
            scores, info = candidate_scores(task, vae_config(base, task))
            for name, values in scores.items():
                rows.append(
                    {
                        "data": args.data,
                        "seed": seed,
                        "protocol": task.protocol,
                        "target": task.target,
                        "candidate": name,
                        "auroc": metrics.auroc(task.is_anomaly, values),
                    }
                )
            default = metrics.auroc(task.is_anomaly, scores["elbo+latent_knn5 (default)"])
            print(
                f"{args.data} seed {seed} {task.protocol} {task.target}: default {default:.3f}, "
                f"neg_elbo {metrics.auroc(task.is_anomaly, scores['neg_elbo']):.3f} "
                f"({info['epochs']} epochs, KL {info['kl']:.1f} nats) [{time.perf_counter() - started:.0f} s]",
                flush=True,
            )
    frame = pd.DataFrame(rows)
    if args.csv:
        frame.to_csv(args.csv, index=False)
    per_seed = frame.groupby(["protocol", "candidate", "seed"], sort=False).auroc.mean()
    table = per_seed.groupby(["protocol", "candidate"], sort=False).mean().unstack(0)
    print(f"\nmean AUROC over tasks and seeds ({args.data}):\n{table.round(3).to_string()}")


if __name__ == "__main__":
    main()
