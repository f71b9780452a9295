"""How much the anomaly threshold moves between equivalent retrains, and the false positive rate
it gives on clean rows no run ever saw.

A fixed fifth of the data (by a seed of its own) is kept aside as the measurement set; every
retrain trains on the rest exactly as ``vae train`` does (``training_split`` by its seed: train,
validation, calibration, holdout parts) and calibrates with :class:`scoring.detector.VAEDetector`.
Per retrain it prints three thresholds: the shipped one (``vae train``'s, cross-fitted over every
non-holdout row when the calibration part is small: :mod:`training.cross_fit`), the calibration
part's alone with the same rule (:func:`scoring.calibration.threshold_at`: the empirical quantile,
or the tail fit when fewer than 10 calibration scores lie above it; the previous default), and the
plain order statistic of the calibration part; and each one's observed false positive rate on the
measurement set with the 95 % acceptance interval of that rate (beta-binomial, the monitoring
bound). Then the spread over the retrains: (max - min) / median of the thresholds and the
coefficient of variation.

    .venv/bin/python benchmarks/threshold_stability.py --data digits --retrains 5
    .venv/bin/python benchmarks/threshold_stability.py --data mnist5k-binary --retrains 5 --epochs 30

The shipped rule's name says how many folds it cross-fitted (none when the calibration part is large
enough, and then it is the calibration part's rule).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from pipeline.monitoring.statistics import flagged_rate_bound  # noqa: E402
from scoring.calibration import Calibration  # noqa: E402
from training import data as data_lib  # noqa: E402
from training.config import TrainConfig  # noqa: E402

MEASUREMENT_SHARE = 0.2


def retrain(cfg: TrainConfig, data: data_lib.ImageData) -> tuple[object, dict[str, Calibration]]:
    """One retrain as ``vae train`` does it; its calibrations by name (the shipped one first)."""
    import keras

    from training import cross_fit
    from training.fitting import build_model, fit, fit_priors, set_seeds
    from training.threshold import calibrate, cross_fitted_calibration_scores

    keras.backend.clear_session()
    set_seeds(cfg.seed)
    split = data_lib.training_split(data, seed=cfg.seed)
    model = build_model(cfg, split.train)
    fit(cfg, model, split)
    fit_priors(cfg, model, split.train)
    folds = cross_fit.resolve_folds(cfg.calibration_folds, len(split.calibration), cfg.target_fpr)
    part = calibrate(model, split, cfg.target_fpr, cfg.anomaly_score)
    if not folds:
        return model, {"shipped": part, "calibration part": part}
    shipped = calibrate(
        model, split, cfg.target_fpr, cfg.anomaly_score, cross_fitted_calibration_scores(cfg, split, folds, like=model)
    )
    return model, {f"shipped ({folds} folds)": shipped, "calibration part": part}


def spread(values: list[float]) -> str:
    v = np.asarray(values)
    return f"(max - min) / median {np.ptp(v) / abs(np.median(v)):.1%}, CV {np.std(v) / abs(np.mean(v)):.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--retrains", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    parser.add_argument("--target-fpr", type=float, default=0.01)
    parser.add_argument("--anomaly-score", default=TrainConfig().anomaly_score)
    args = parser.parse_args()

    from scoring.detector import VAEDetector

    images = data_lib.load(args.data)
    aside = np.random.default_rng(12345).random(len(images)) < MEASUREMENT_SHARE
    measurement, training = images.subset(np.flatnonzero(aside)), images.subset(np.flatnonzero(~aside))
    print(f"{args.data}: {len(training)} rows to train on, {len(measurement)} clean rows to measure the rate on")
    thresholds: dict[str, list[float]] = {}
    for seed in range(args.retrains):
        cfg = replace(
            TrainConfig(), seed=seed, epochs=args.epochs, target_fpr=args.target_fpr, anomaly_score=args.anomaly_score
        )
        model, calibrations = retrain(cfg, training)
        part = calibrations["calibration part"]
        order = float(np.quantile(part.scores, 1 - cfg.target_fpr, method="inverted_cdf"))
        rules = {name: (c.threshold, c.scores) for name, c in calibrations.items()}
        rules["order statistic"] = (order, part.scores)
        scores = VAEDetector.from_model(model).decision_function(measurement.images)
        line = f"retrain {seed}"
        for name, (threshold, calibration_scores) in rules.items():
            rate = float(np.mean(scores > threshold))
            bound = flagged_rate_bound(
                len(scores), calibration_scores=calibration_scores, threshold=threshold, confidence=0.95
            )
            inside = bound.lower <= rate <= bound.upper
            line += (
                f"; {name} {threshold:.3f} from {calibration_scores.size} rows: FPR {rate:.2%} "
                f"(95 % interval {bound.lower:.2%}-{bound.upper:.2%}{'' if inside else ', OUTSIDE'})"
            )
            thresholds.setdefault(name, []).append(threshold)
        print(line, flush=True)
    for name, values in thresholds.items():
        print(f"{name}: thresholds {np.round(values, 3).tolist()}: {spread(values)}")


if __name__ == "__main__":
    main()
