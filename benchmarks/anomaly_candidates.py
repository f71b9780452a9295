"""Candidate anomaly scores built from a VAE's own outputs, side by side on every scorecard protocol.

The evidence behind ``scoring.anomaly.DEFAULT_METHOD`` (docs/detection.md, "How the defaults were chosen").
Each task of ``vae evaluate``'s protocols (:mod:`pipeline.evaluation.tasks`: held-out, contaminated
clustered and scattered at 1/3/10 %, one-class, corrupted) fits one VAE with the evaluation's
settings, and every candidate scores the task's images from that one fit, so the candidates differ
only in how they combine the model's outputs. The per-task terms are cached (``--cache``) so new
candidates cost no refit. Prints the mean AUROC per data set, protocol and candidate (each seed's
mean over its tasks, then mean, spread and worst over seeds), and, for the corrupted protocol, the
share of blank, saturated and wrong-scale images flagged at the product's 1 % threshold (fitted on
the task's validation images).

    .venv/bin/python benchmarks/anomaly_candidates.py --data digits --seeds 0,1,2
    .venv/bin/python benchmarks/anomaly_candidates.py --data mnist5k --seeds 0 --classes 3
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from pipeline.evaluation.tables import FLAGGED_KINDS  # noqa: E402
from pipeline.evaluation.task_scores import vae_config  # noqa: E402
from pipeline.evaluation.tasks import PROTOCOLS, build_tasks  # noqa: E402
from scoring import metrics  # noqa: E402
from scoring.anomaly import DEFAULT_METHOD, MASS_SHARE, anomaly_scores, fit_statistics, knn_distance  # noqa: E402
from scoring.calibration import threshold_at  # noqa: E402
from training import data as data_lib  # noqa: E402
from training.config import TrainConfig  # noqa: E402


def _key(task, cfg: TrainConfig) -> str:
    fit_ids = task.fit.example_ids.tolist()[:50]
    return hashlib.sha256(
        repr((task.protocol, task.target, fit_ids, len(task.fit), len(task.test), cfg)).encode()
    ).hexdigest()[:16]


def fitted_terms(task, cfg: TrainConfig, cache: Path | None) -> dict:
    """The fit, test and validation images' terms from one VAE fit (cached by task and the fit's
    settings; the anomaly score's method does not change the fit)."""
    from scoring.anomaly import METHODS

    path = None if cache is None else cache / f"{_key(task, replace(cfg, anomaly_score=''))}.pkl"
    if path is not None and not path.exists():  # cached under a key that still held the method
        for legacy in (cache / f"{_key(task, replace(cfg, anomaly_score=m))}.pkl" for m in METHODS):
            if legacy.exists():
                legacy.rename(path)
                break
    if path is not None and path.exists():
        cached = pickle.loads(path.read_bytes())
        if "kl" in cached["test"]:  # cached before the rate was kept: fit again
            return cached
    import keras

    from scoring.elbo import score_terms
    from training.fitting import build_model, fit, set_seeds

    keras.backend.clear_session()
    set_seeds(cfg.seed)
    model = build_model(cfg, task.fit)
    fit(cfg, model, data_lib.Split(task.fit, task.validation, task.test))

    def terms(images):
        out = score_terms(model, images, num_samples=cfg.score_samples, seed=cfg.seed)
        return {"neg_elbo": out["neg_elbo"], "kl": out["kl"], "mean": out["posterior_mean"].astype(np.float64)}

    test = terms(task.test.images)
    result = {
        "test": test,
        "fit": test if task.unsupervised else terms(task.fit.images),
        "validation": None if task.unsupervised else terms(task.validation.images),
    }
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(result))
    return result


def robust_z(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    q25, median, q75 = np.percentile(reference, [25, 50, 75])
    return (values - median) / max(q75 - q25, 1e-9)


def candidate_scores(terms: dict, unsupervised: bool, task=None) -> dict[str, dict[str, np.ndarray]]:
    """Per candidate, its scores of the test images and (where there are any) of the validation images.

    ``task``: when given, also the candidates that add the pixel-space distance to the neighbour at
    4 % of the fit images (a mass statistic outside the model)."""
    fit = terms["fit"]
    n = len(fit["mean"])
    k_mass = max(5, int(MASS_SHARE * n))
    k_pixels = max(5, int(0.04 * n))
    fit_pixels = None if task is None else task.fit.images.reshape(len(task.fit), -1).astype(np.float64)
    fit_pixel_mass = None
    if fit_pixels is not None:
        fit_pixel_mass = knn_distance(fit_pixels, fit_pixels, k_pixels, exclude_self=True)
    fence = np.quantile(fit["neg_elbo"], 0.01)
    iqr = max(np.subtract(*np.percentile(fit["neg_elbo"], [75, 25])), 1e-9)
    fit_knn = {k: knn_distance(fit["mean"], fit["mean"], k, exclude_self=True) for k in (5, k_mass)}
    fit_log_rate = np.log(np.maximum(fit["kl"], 1e-3))
    # the default as the product computes it (its floors and gates included), from the same terms
    stats = fit_statistics({"neg_elbo": fit["neg_elbo"], "kl": fit["kl"]}, DEFAULT_METHOD, fit["mean"])

    def product(t):
        scored = {"neg_elbo": t["neg_elbo"], "kl": t["kl"], "posterior_mean": t["mean"]}
        return anomaly_scores(stats, scored, fit["mean"])

    def parts(t, same, images=None):
        e = robust_z(t["neg_elbo"], fit["neg_elbo"])
        knn = {k: robust_z(knn_distance(t["mean"], fit["mean"], k, exclude_self=same), fit_knn[k]) for k in fit_knn}
        low = np.maximum((fence - t["neg_elbo"]) / iqr, 0.0)
        empty = -robust_z(np.log(np.maximum(t["kl"], 1e-3)), fit_log_rate)  # the rate below its median, in IQRs
        r = np.maximum
        rarity = r(e, -1) + r(knn[5], -1) + r(knn[k_mass] - 1, 0)
        extra = {}
        if images is not None:
            flat = images.reshape(len(images), -1).astype(np.float64)
            pixels = robust_z(knn_distance(flat, fit_pixels, k_pixels, exclude_self=same), fit_pixel_mass)
            extra = {
                "rarity+2R(empty-2)+pixel mass": rarity + 2 * r(empty - 2, 0) + pixels,
                "rarity+2R(empty-2)+R(pixel mass-1)": rarity + 2 * r(empty - 2, 0) + r(pixels - 1, 0),
                "elbo+pixel mass": e + pixels,
            }
        return extra | {
            "neg_elbo": t["neg_elbo"],
            "elbo+knn5 (elbo_latent_knn)": e + knn[5],
            "R(elbo)+R(knn5)": r(e, 0) + r(knn[5], 0),
            "R(elbo)+R(knn5)+R(mass-1)": r(e, 0) + r(knn[5], 0) + r(knn[k_mass] - 1, 0),
            "R(elbo)+R(knn5)+low": r(e, 0) + r(knn[5], 0) + low,
            "R(elbo)+R(knn5)+R(mass-1)+low": r(e, 0) + r(knn[5], 0) + r(knn[k_mass] - 1, 0) + low,
            "elbo+knn_mass": e + knn[k_mass],
            "C1(elbo)+C1(knn5)+R(mass-1)": r(e, -1) + r(knn[5], -1) + r(knn[k_mass] - 1, 0),
            "C2(elbo)+C2(knn5)+R(mass-1)": r(e, -2) + r(knn[5], -2) + r(knn[k_mass] - 1, 0),
            "C1(elbo)+C1(knn5)": r(e, -1) + r(knn[5], -1),
            "C1(elbo)+C1(knn5)+R(mass-1)+low": r(e, -1) + r(knn[5], -1) + r(knn[k_mass] - 1, 0) + low,
            "C1(elbo)+C1(knn5)+R(mass-1)+R(-elbo-2)": r(e, -1) + r(knn[5], -1) + r(knn[k_mass] - 1, 0) + r(-e - 2, 0),
            "C1(elbo)+C1(knn5)+R(mass-1)+R(-elbo-3)": r(e, -1) + r(knn[5], -1) + r(knn[k_mass] - 1, 0) + r(-e - 3, 0),
            "rarity+R(empty-1)": rarity + r(empty - 1, 0),
            "rarity+R(empty-2)": rarity + r(empty - 2, 0),
            "rarity+2R(empty-1)": rarity + 2 * r(empty - 1, 0),
            "rarity+2R(empty-2) (elbo_latent_knn_rarity_rate)": product(t),
            "rarity+2R(empty-3)": rarity + 2 * r(empty - 3, 0),
            "rarity+3R(empty-2)": rarity + 3 * r(empty - 2, 0),
            "max(rarity, empty-1)": r(rarity, empty - 1),
        }

    test = parts(terms["test"], unsupervised, None if task is None else task.test.images)
    validation = None
    if terms["validation"] is not None:
        validation = parts(terms["validation"], False, None if task is None else task.validation.images)
    return {name: {"test": test[name], "validation": None if validation is None else validation[name]} for name in test}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="digits", help="digits, mnist5k, mnist5k-binary, or labelled images")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--classes", type=int, default=None, help="held-out and one-class on this many classes")
    parser.add_argument("--planted", type=int, default=3, help="planted classes per clustered cell")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--cache", default=".benchmarks/anomaly_candidates", help="per-task terms ('' for none)")
    parser.add_argument("--csv", default=None, help="write one row per task part and candidate here")
    parser.add_argument("--pixels", action="store_true", help="also the candidates with a pixel-space mass term")
    args = parser.parse_args()

    import pandas as pd

    images = data_lib.load(args.data)
    cache = Path(args.cache) if args.cache else None
    rows, started = [], time.perf_counter()
    for seed in (int(s) for s in args.seeds.split(",")):
        base = replace(TrainConfig(), epochs=args.epochs, seed=seed, conditional=False)
        tasks = build_tasks(images, args.protocols.split(","), seed, planted=args.planted, rotate=args.classes)
        for task in tasks:
            terms = fitted_terms(task, vae_config(base, task), cache)
            scores = candidate_scores(terms, task.unsupervised, task if args.pixels else None)
            for part, index in task.subtasks:
                y = task.is_anomaly[index]
                for name, s in scores.items():
                    row = {"data": args.data, "seed": seed, "protocol": task.protocol, "task": part, "candidate": name}
                    row["auroc"] = metrics.auroc(y, s["test"][index])
                    if s["validation"] is not None:
                        threshold = threshold_at(np.sort(s["validation"]), 0.01)
                        row["flagged"] = float(np.mean(s["test"][index][y] > threshold))
                    rows.append(row)
            print(
                f"{args.data} seed {seed} {task.protocol} {task.target} [{time.perf_counter() - started:.0f} s]",
                flush=True,
            )
    frame = pd.DataFrame(rows)
    if args.csv:
        frame.to_csv(args.csv, index=False)
    per_seed = frame.groupby(["protocol", "candidate", "seed"], sort=False).auroc.mean()
    table = per_seed.groupby(["protocol", "candidate"], sort=False).agg(["mean", "std", "min"])
    print(f"\nAUROC, each seed's mean over its tasks; mean, std and worst over seeds ({args.data}):")
    print(table["mean"].unstack(0).round(3).to_string())
    print("\nworst seed:")
    print(table["min"].unstack(0).round(3).to_string())
    corrupted = frame[(frame.protocol == "corrupted") & frame.task.isin(FLAGGED_KINDS)]
    if not corrupted.empty:
        print("\ncorrupted, share flagged at the 1 % threshold:")
        print(corrupted.groupby(["candidate", "task"]).flagged.mean().unstack(1).round(2).to_string())
        worst = frame[frame.protocol == "corrupted"].groupby(["candidate", "task"]).auroc.mean().unstack(1)
        print("\ncorrupted, AUROC per kind:")
        print(worst.round(3).to_string())


if __name__ == "__main__":
    main()
