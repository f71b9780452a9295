"""Does a likelihood ratio fix the VAE's complexity bias on held-out digits?

For each held-out-class task of ``vae evaluate`` (same split, same 30-epoch VAE), compares the AUROC
of ``neg_elbo`` with that of ``neg_elbo - background_nll``, where the background is a per-pixel
independent continuous Bernoulli fitted to the same training images (the idea of Ren et al., 2019,
and Serrà et al., 2020: subtract what a simple model already explains about an image).

    .venv/bin/python benchmarks/held_out_likelihood_ratio.py [--epochs 30] [--seed 0]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from pipeline import evaluate as ev  # noqa: E402
from scoring import likelihoods, metrics  # noqa: E402
from training import data as data_lib  # noqa: E402
from training.config import TrainConfig  # noqa: E402

LOGIT_GRID = np.linspace(-8, 8, 801, dtype=np.float32)


def _cb_nll(x: np.ndarray, logits: np.ndarray) -> np.ndarray:
    nll = likelihoods.negative_log_likelihood(
        x.reshape(-1, 1, 1, 1), logits.reshape(-1, 1, 1, 1), "continuous_bernoulli"
    )
    return np.asarray(ops.convert_to_numpy(nll), np.float64)


def fit_background(images: np.ndarray) -> np.ndarray:
    """Per-pixel continuous-Bernoulli logits, each the maximum-likelihood value on a fine grid."""
    pixels = images.reshape(len(images), -1).astype(np.float32)
    logits = np.empty(pixels.shape[1], np.float32)
    for p in range(pixels.shape[1]):
        x = np.broadcast_to(pixels[:, p][None], (LOGIT_GRID.size, len(pixels)))
        grid = np.broadcast_to(LOGIT_GRID[:, None], x.shape)
        logits[p] = LOGIT_GRID[np.argmin(_cb_nll(x, grid).reshape(x.shape).mean(axis=1))]
    return logits


def background_nll(logits: np.ndarray, images: np.ndarray) -> np.ndarray:
    pixels = images.reshape(len(images), -1)
    return _cb_nll(pixels, np.broadcast_to(logits, pixels.shape)).reshape(pixels.shape).sum(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    base = TrainConfig(epochs=args.epochs, seed=args.seed)
    print("| held-out digit | vae_neg_elbo | likelihood ratio | background alone |")
    print("|---|---|---|---|")
    rows = []
    for task in ev.held_out_tasks(data_lib.load_digits(), seed=args.seed):
        scores, _ = ev.score_with_vae(task, ev.vae_config(base, task), iwae_k=1)
        background = background_nll(fit_background(task.fit.images), task.test.images)
        row = [
            metrics.auroc(task.is_anomaly, s)
            for s in (scores["neg_elbo"], scores["neg_elbo"] - background, -background)
        ]
        rows.append(row)
        print(f"| {task.target} | {row[0]:.3f} | {row[1]:.3f} | {row[2]:.3f} |", flush=True)
    mean = np.mean(rows, axis=0)
    print(f"| **mean** | {mean[0]:.3f} | {mean[1]:.3f} | {mean[2]:.3f} |")


if __name__ == "__main__":
    main()
