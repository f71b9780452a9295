"""Are the conditional VAE's samples images a person would take for real? Measured against a dense reference.

For each data set and seed:

1. **A dense real reference that no model trained on.** mnist5k and mnist5k-binary: 60 % of the
   images, chosen by a hash of their ids (about 300 per digit); the generator learns from the other 40 %.
   digits (1,797 images, about 180 per digit, so no dense reference exists offline): the rows of ``vae
   train``'s split that never fit the weights (validation, calibration, holdout: about 80 per digit).
2. **The generator**: a conditional VAE trained as ``vae train --conditional`` trains it (early stopping
   on 15 % of its rows, the fitted latent prior) on the rest (digits: on the train part), once with this
   round's defaults (``after``) and once with the previous ones (``before``: beta 1, pixel temperature 0.7).
3. **The figures**, each beside the same figure for real images: as many real training images per
   digit as samples, against the same reference. Improved precision and recall (Kynkaanniemi et al.
   2019), density and coverage (Naeem et al. 2020), k = 3, per digit then averaged, in pixel space and
   in the feature space of an independent judge (:mod:`scoring.judge`: a classifier trained on the real
   training images only); diversity (mean pairwise distance of the samples over that of the real
   images); label fidelity (the judge's verdict on the samples; for real images, its accuracy on the
   reference, which it never saw). The mean KL per holdout image says how much the latent carries.
4. **Augmentation** (``--augment``): at 1 %, 5 % and 10 % of the labels, a classifier (an RBF SVM)
   trained on the labelled images alone against one trained on them plus 100 samples per digit from a
   generator that saw only those labelled images; accuracy on the reference. Also the
   semi-supervised generator's samples, and as many posterior variations of the labelled images
   (``posterior_gain``).

Usage::

    python benchmarks/synthetic_quality.py [--data digits,mnist5k,mnist5k-binary] [--seeds 0,1,2]
        [--settings before,dense,after] [--augment] [--out docs/synthetic]

Prints every seed, then the mean, spread (standard deviation) and worst over the seeds; writes
``results.csv``, ``summary.csv`` and one grid of samples per data set and setting to ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("synthetic_quality")

#: The previous defaults (the KL at full weight, pixels drawn at temperature 0.7) and this round's.
SETTINGS = {  # None: the product's default
    "before": {"beta": 1.0, "pixel_temperature": 0.7, "architecture": "dense"},  # two rounds ago
    "dense": {"beta": None, "pixel_temperature": None, "architecture": "dense"},  # the last round's default
    "after": {"beta": None, "pixel_temperature": None, "architecture": None},  # auto: conv from 16x16 up
}
REFERENCE_SHARE = 0.6  # of mnist5k: about 300 images per digit
METRICS = ("precision", "recall", "density", "coverage", "diversity")
FRACTIONS = (0.01, 0.05, 0.1)


@dataclass
class Parts:
    pool: object  # ImageData the generator's split is drawn from
    reference: object  # ImageData never trained on


def reference_split(name: str, seed: int) -> Parts:
    from training.data import load_builtin, training_split

    data = load_builtin(name)
    if name == "digits":
        split = training_split(data, seed=seed)
        unused = np.flatnonzero(~np.isin(data.example_ids, split.train.example_ids))
        return Parts(split.train, data.subset(unused))
    bucket = np.array(
        [int(hashlib.sha256(f"reference:{i}".encode()).hexdigest()[:8], 16) % 100 for i in data.example_ids]
    )
    held = bucket < int(REFERENCE_SHARE * 100)
    return Parts(data.subset(np.flatnonzero(~held)), data.subset(np.flatnonzero(held)))


def train_generator(
    rows,
    seed: int,
    beta: float | None,
    epochs: int,
    classifier_weight: float | None = None,
    architecture: str | None = None,
):
    """A conditional VAE trained as ``vae train --conditional`` trains one, without MLflow: early stopping
    on a validation part (15 % of ``rows``; the rest fits the weights), the fitted latent prior on the
    fitting part. Returns (model, seconds)."""
    from types import SimpleNamespace

    from sklearn.model_selection import train_test_split

    from scoring.latent_prior import fit_latent_prior
    from training.config import TrainConfig
    from training.fitting import build_model, fit, set_seeds

    cfg = TrainConfig(conditional=True, seed=seed, epochs=epochs, beta=beta, architecture=architecture or "auto")
    cfg.classifier_weight = classifier_weight
    set_seeds(seed)
    classes = len(np.unique(rows.labels))
    counts = np.bincount(rows.labels + 1)  # -1: unlabelled
    stratify = rows.labels if counts[counts > 0].min() >= 2 and 0.15 * len(rows) >= classes else None
    fit_index, stop_index = train_test_split(np.arange(len(rows)), test_size=0.15, random_state=seed, stratify=stratify)
    parts = SimpleNamespace(train=rows.subset(np.sort(fit_index)), validation=rows.subset(np.sort(stop_index)))
    model = build_model(cfg, parts.train)
    started = time.perf_counter()
    fit(cfg, model, parts)
    labelled = parts.train.subset(np.flatnonzero(parts.train.labels >= 0))
    model.latent_prior = fit_latent_prior(model, labelled.images, labelled.labels).to_config()
    return model, time.perf_counter() - started


def samples(model, counts: np.ndarray, seed: int, pixel_temperature: float | None) -> tuple[np.ndarray, np.ndarray]:
    from scoring.sampling import DEFAULT_PIXEL_TEMPERATURE, synthesize

    labels = np.repeat(np.arange(len(counts)), counts)
    temperature = DEFAULT_PIXEL_TEMPERATURE if pixel_temperature is None else pixel_temperature
    images, _ = synthesize(model, "conditional", len(labels), seed=seed, labels=labels, pixel_temperature=temperature)
    return images, labels


def figures(reference, images: np.ndarray, labels: np.ndarray, judge) -> dict[str, float]:
    from scoring.fidelity import per_label_fidelity

    pixel = per_label_fidelity(reference.images, reference.labels, images, labels)
    feature = per_label_fidelity(judge.features(reference.images), reference.labels, judge.features(images), labels)
    out = {f"pixel_{m}": pixel[m] for m in METRICS} | {f"feature_{m}": feature[m] for m in METRICS}
    return out


def mean_kl(model, part) -> float:
    from scoring.elbo import neg_elbo_terms

    return float(neg_elbo_terms(model, part.images, part.labels, num_samples=1)["kl"].mean())


def run_seed(name: str, seed: int, settings: list[str], epochs: int, grids: Path | None) -> list[dict]:
    from scoring.judge import Judge

    parts = reference_split(name, seed)
    train_rows, reference = parts.pool, parts.reference
    classes = int(max(train_rows.labels.max(), reference.labels.max())) + 1
    counts = np.array([min((train_rows.labels == k).sum(), (reference.labels == k).sum()) for k in range(classes)])
    judge = Judge(train_rows.images, train_rows.labels, seed=seed)
    rng = np.random.default_rng(seed)
    real = np.concatenate(
        [rng.choice(np.flatnonzero(train_rows.labels == k), c, replace=False) for k, c in enumerate(counts)]
    )
    base = {"data": name, "seed": seed, "reference_per_label": float(np.bincount(reference.labels).mean())}
    rows = [
        base
        | {"setting": "real", "label_fidelity": judge.accuracy(reference.images, reference.labels)}
        | figures(reference, train_rows.images[real], train_rows.labels[real], judge)
    ]
    if grids is not None and seed == 0:
        save_grid(train_rows.images[real], train_rows.labels[real], grids / f"{name}_real.png")
    for setting in settings:
        knobs = SETTINGS[setting]
        model, seconds = train_generator(train_rows, seed, knobs["beta"], epochs, architecture=knobs["architecture"])
        images, labels = samples(model, counts, seed, knobs["pixel_temperature"])
        rows.append(
            base
            | {"setting": setting, "label_fidelity": judge.accuracy(images, labels), "kl": mean_kl(model, reference)}
            | {"train_seconds": seconds}
            | figures(reference, images, labels, judge)
        )
        if grids is not None and seed == 0:
            save_grid(images, labels, grids / f"{name}_{setting}.png")
        log.info(
            "%s seed %d %s: %s",
            name,
            seed,
            setting,
            {k: round(v, 3) for k, v in rows[-1].items() if isinstance(v, float)},
        )
    return rows


def augmentation(name: str, seed: int, epochs: int, per_label: int = 100) -> list[dict]:
    """Honest augmentation: the generator sees only the labelled subset."""
    from sklearn.model_selection import train_test_split
    from sklearn.svm import SVC

    parts = reference_split(name, seed)
    flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
    rows = []
    for fraction in FRACTIONS:
        classes = int(parts.pool.labels.max()) + 1
        size = max(classes, round(fraction * len(parts.pool)))  # at least one image per digit
        index, _ = train_test_split(
            np.arange(len(parts.pool)), train_size=size, random_state=seed, stratify=parts.pool.labels
        )
        small = parts.pool.subset(np.sort(index))
        alone = SVC(C=10.0, gamma="scale").fit(flat(small.images), small.labels)
        real_only = float((alone.predict(flat(parts.reference.images)) == parts.reference.labels).mean())
        model, _ = train_generator(small, seed, None, epochs)
        images, labels = samples(model, np.full(int(small.labels.max()) + 1, per_label), seed, None)
        both = SVC(C=10.0, gamma="scale").fit(
            np.concatenate([flat(small.images), flat(images)]), np.concatenate([small.labels, labels])
        )
        augmented = float((both.predict(flat(parts.reference.images)) == parts.reference.labels).mean())
        hidden = parts.pool.labels.copy()
        hidden[np.setdiff1d(np.arange(len(hidden)), index)] = -1
        partly = replace(parts.pool, labels=hidden)
        semi, _ = train_generator(partly, seed, None, epochs)
        semi_images, semi_labels = samples(semi, np.full(int(small.labels.max()) + 1, per_label), seed, None)
        with_semi = SVC(C=10.0, gamma="scale").fit(
            np.concatenate([flat(small.images), flat(semi_images)]), np.concatenate([small.labels, semi_labels])
        )
        semi_augmented = float((with_semi.predict(flat(parts.reference.images)) == parts.reference.labels).mean())
        posterior_augmented = _posterior_augmented(semi, small, parts.reference, per_label, seed)
        m2 = np.asarray(semi.classify(parts.reference.images)).argmax(axis=1)
        rows.append(
            {"data": name, "seed": seed, "fraction": fraction, "labelled": len(small), "real_only": real_only}
            | {"real_plus_synthetic": augmented, "gain": augmented - real_only}
            | {"real_plus_semi_synthetic": semi_augmented, "semi_gain": semi_augmented - real_only}
            | {"real_plus_semi_posterior": posterior_augmented, "posterior_gain": posterior_augmented - real_only}
            | {"semi_classifier": float((m2 == parts.reference.labels).mean())}
        )
        log.info("%s", rows[-1])
    return rows


def _posterior_augmented(model, small, reference, per_label: int, seed: int) -> float:
    """The SVM's accuracy on ``reference`` when trained on the labelled rows ``small`` plus posterior
    variations of them (z ~ q(z|x, y), decoded with their own label), each row the same number of
    times, at least as many in all as the conditional samples: variety around real labelled images
    rather than draws from each class's prior."""
    from sklearn.svm import SVC

    from scoring.sampling import synthesize

    flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
    source = np.repeat(np.arange(len(small)), int(np.ceil(per_label * (small.labels.max() + 1) / len(small))))
    labels = small.labels[source]
    images, _ = synthesize(model, "posterior", len(source), seed=seed, labels=labels, images=small.images[source])
    svm = SVC(C=10.0, gamma="scale").fit(
        np.concatenate([flat(small.images), flat(images)]), np.concatenate([small.labels, labels])
    )
    return float((svm.predict(flat(reference.images)) == reference.labels).mean())


def save_grid(images: np.ndarray, labels: np.ndarray, path: Path, per_row: int = 10) -> None:
    from PIL import Image

    scale = max(1, 32 // images.shape[1])  # tiles of about 32 pixels
    tiles = []
    for k in np.unique(labels):
        row = np.clip(images[labels == k][:per_row, ..., 0], 0.0, 1.0)
        row = np.concatenate([row, np.zeros((per_row - len(row), *row.shape[1:]), row.dtype)])
        row = np.pad(row, ((0, 0), (0, 1), (0, 1)), constant_values=0.5)  # a grey line between images
        tiles.append(np.concatenate(list(row), axis=1))
    grid = np.concatenate(tiles, axis=0)
    picture = Image.fromarray((grid * 255).astype(np.uint8))
    picture = picture.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)


def summarise(frame: pd.DataFrame, by: list[str], columns: list[str], worst_is_min: bool = True) -> pd.DataFrame:
    """Mean, spread (standard deviation over seeds) and worst seed of each column."""
    grouped = frame.groupby(by, sort=False)[columns]
    parts = {
        "mean": grouped.mean(),
        "std": grouped.std(ddof=0),
        "worst": grouped.min() if worst_is_min else grouped.max(),
    }
    return pd.concat(parts, axis=1).round(3)


def main(argv: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits,mnist5k,mnist5k-binary")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--settings", default="before,dense,after")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--augment", action="store_true", help="also the augmentation protocol")
    parser.add_argument("--augment-only", action="store_true", help="the augmentation protocol alone")
    parser.add_argument("--out", default=None, help="folder for results.csv, summary.csv and the grids")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("training").setLevel(logging.WARNING)  # not every epoch
    out = Path(args.out) if args.out else None
    settings = args.settings.split(",")
    rows, augment = [], []
    for name in args.data.split(","):
        for seed in map(int, args.seeds.split(",")):
            if not args.augment_only:
                rows += run_seed(name, seed, settings, args.epochs, out)
            if (args.augment or args.augment_only) and name != "mnist5k-binary":
                augment += augmentation(name, seed, args.epochs)
    frame = pd.DataFrame(rows)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 60)
    if rows:
        columns = ["label_fidelity", *(f"{space}_{m}" for space in ("pixel", "feature") for m in METRICS)]
        summary = summarise(frame, ["data", "setting"], columns)
        print(frame.round(3).to_string(index=False))
        print("\nmean / spread / worst over the seeds (diversity: worst is the lowest)\n")
        print(summary.to_string())
    augment_frame = None
    if augment:
        augment_frame = pd.DataFrame(augment)
        print("\naugmentation: accuracy on the reference\n")
        columns = [
            "real_only",
            "real_plus_synthetic",
            "gain",
            "real_plus_semi_synthetic",
            "semi_gain",
            "posterior_gain",
            "semi_classifier",
        ]
        print(summarise(augment_frame, ["data", "fraction"], columns).to_string())
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if rows:
            frame.round(4).to_csv(out / "results.csv", index=False)
            summary.to_csv(out / "summary.csv")
        if augment_frame is not None:
            augment_frame.round(4).to_csv(out / "augmentation.csv", index=False)
    return frame, augment_frame


if __name__ == "__main__":
    main()
