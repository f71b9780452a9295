"""How useful are the conditional VAE's synthetic digits? Label fidelity and augmentation lift.

1. Train a conditional VAE on the digits train split (or take ``--model``) and write
   ``--per-label`` conditional samples per label with the Beam pipeline (``vae generate``'s code).
2. Label fidelity: a classifier trained on the real train split labels the samples; the share it
   assigns to the requested label. Improved precision and recall (Kynkaanniemi et al., 2019; k = 3,
   pixel space) and diversity (mean pairwise distance of the samples over that of the real images)
   per label, against the real images of the fixed holdout (``digits:holdout``, never trained on):
   :func:`scoring.fidelity.per_label_fidelity`; the mean over labels and the worst label.
3. Augmentation lift: test accuracy of a classifier trained on a stratified ``--fraction`` of the
   real train split plus the samples, against the same fraction alone, on the real test split,
   averaged over ``--subsets`` seeds of the subset.
4. With ``--fair``, the lift again with a generator trained only on each small subset: the first
   lift borrows labelled knowledge of the whole train split through the generator, this one does not.

Usage::

    python benchmarks/fidelity.py [--model models:/NAME@ALIAS] [--epochs 60] [--grid docs/images/fidelity_grid.png]

Trains into a throw-away MLflow store unless ``--model`` is given (then ``MLFLOW_TRACKING_URI`` or
``VAE_WORK_DIR`` decides where it is found).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("fidelity")


def classifier(kind: str, seed: int = 0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    if kind == "svc":
        return SVC(C=10.0, gamma="scale", random_state=seed)
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=0.1, random_state=seed))


def flat(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1)


def spread(images: np.ndarray) -> float:
    """Mean Euclidean distance of images to their centroid: how varied a set is."""
    x = flat(images)
    return float(np.sqrt(((x - x.mean(axis=0)) ** 2).sum(axis=1)).mean())


def latent_usage(model_uri: str, work_dir, test) -> dict:
    """Mean KL per test image (nats) and the active latent units (variance of posterior means > 0.01):
    a conditional VAE whose KL collapses leaves the label to do the work, and its samples vary little."""
    from scoring.elbo import neg_elbo_terms
    from scoring.sampling import posterior_means
    from training import registry

    model = registry.pin(model_uri, work_dir).load()
    terms = neg_elbo_terms(model, test.images, test.labels, num_samples=4, seed=0)
    means = posterior_means(model, test.images, test.labels)
    return {
        "test_neg_elbo": float(terms["neg_elbo"].mean()),
        "test_kl": float(terms["kl"].mean()),
        "active_units": int((means.var(axis=0) > 0.01).sum()),
        "latent_dim": int(model.latent_dim),
    }


def conditional_samples(model_uri: str, output: Path, per_label: int, temperature: float, seed: int, work_dir):
    from pipeline.beam.generate_job import generate_dataset
    from pipeline.beam.options import GenerateOptions
    from pipeline.outputs.synthetic import images_of, read_synthetic

    options = GenerateOptions.of(
        model=model_uri,
        method="conditional",
        output=output,
        per_label=per_label,
        temperature=temperature,
        seed=seed,
        direct_running_mode="in_memory",
        direct_num_workers=1,
        work_dir=work_dir,
    )
    summary = generate_dataset(options)
    table = read_synthetic(summary.output, "conditional")
    labels = np.asarray(table.column("label").to_pylist(), dtype=np.int64)
    return summary, table, images_of(table), labels


def train_conditional(name: str, train_data, epochs: int, seed: int, work_dir: str) -> str:
    """Trains a conditional VAE on ``train_data`` only (its own validation split for early stopping)."""
    from training.config import TrainConfig
    from training.train import train

    cfg = TrainConfig(conditional=True, model_name=name, epochs=epochs, seed=seed, promote="always", work_dir=work_dir)
    if train_data is None:
        result = train(cfg)
    else:  # a data set of our own: saved as NPZ so that train() loads it like any user file
        path = Path(work_dir) / f"{name}.npz"
        np.savez(path, x=train_data.images, y=train_data.labels)
        result = train(TrainConfig(**{**cfg.__dict__, "data": str(path)}))
    return f"models:/{result.model_name}/{result.version}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="models:/NAME@ALIAS of a conditional VAE (default: train one)")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--per-label", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--subsets", type=int, default=5, help="seeds of the small real subset to average over")
    parser.add_argument("--classifier", choices=("svc", "logistic"), default="svc")
    parser.add_argument("--seed", type=int, default=0, help="split, training and sampling seed")
    parser.add_argument("--fair", action="store_true", help="also train a generator on each small subset only")
    parser.add_argument("--k", type=int, default=3, help="neighbours of improved precision and recall")
    parser.add_argument("--grid", default="docs/images/fidelity_grid.png")
    parser.add_argument("--work-dir", default=None, help="MLflow store and outputs (default: a temporary folder)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("absl", "tensorflow", "alembic", "mlflow", "apache_beam", "pipeline", "training"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from sklearn.model_selection import train_test_split

    from pipeline.report.figures import grid_figure
    from training import data as data_lib

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="vae-fidelity-"))
    if args.model is None and args.work_dir is None:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    split = data_lib.split(data_lib.load_digits(), seed=args.seed)
    train, test = split.train, split.test
    started = time.perf_counter()
    model_uri = args.model or train_conditional("vae-fidelity", None, args.epochs, args.seed, str(work))
    train_seconds = time.perf_counter() - started
    summary, table, samples, sample_labels = conditional_samples(
        model_uri, work / "outputs", args.per_label, args.temperature, args.seed, str(work)
    )

    # (a) label fidelity
    judge = classifier(args.classifier, args.seed).fit(flat(train.images), train.labels)
    judge_accuracy = float((judge.predict(flat(test.images)) == test.labels).mean())
    predicted = judge.predict(flat(samples))
    fidelity = float((predicted == sample_labels).mean())
    per_label = {int(k): float((predicted[sample_labels == k] == k).mean()) for k in np.unique(sample_labels)}

    # diversity: how much the samples of a label vary, relative to the real training images of it
    diversity = float(
        np.mean([spread(samples[sample_labels == k]) / spread(train.images[train.labels == k]) for k in per_label])
    )
    usage = latent_usage(model_uri, str(work), test)

    # improved precision / recall and diversity per label against the holdout the generator never saw
    from scoring.fidelity import per_label_fidelity

    holdout = data_lib.read_images("digits:holdout", split_seed=args.seed).data
    manifold = per_label_fidelity(holdout.images, holdout.labels, samples, sample_labels, k=args.k)

    # (b) augmentation lift over seeds of the small subset
    rows = []
    for s in range(args.subsets):
        index, _ = train_test_split(
            np.arange(len(train)), train_size=args.fraction, random_state=s, stratify=train.labels
        )
        small = train.subset(np.sort(index))
        alone = classifier(args.classifier, s).fit(flat(small.images), small.labels)
        both = classifier(args.classifier, s).fit(
            np.concatenate([flat(small.images), flat(samples)]), np.concatenate([small.labels, sample_labels])
        )
        row = {
            "subset_seed": s,
            "n_real": len(small),
            "real_only": float((alone.predict(flat(test.images)) == test.labels).mean()),
            "real_plus_synthetic": float((both.predict(flat(test.images)) == test.labels).mean()),
        }
        if args.fair:
            own = train_conditional(f"vae-fidelity-subset-{s}", small, args.epochs, s, str(work))
            _, _, own_samples, own_labels = conditional_samples(
                own, work / f"outputs-subset-{s}", args.per_label, args.temperature, s, str(work)
            )
            fair = classifier(args.classifier, s).fit(
                np.concatenate([flat(small.images), flat(own_samples)]), np.concatenate([small.labels, own_labels])
            )
            row["real_plus_own_synthetic"] = float((fair.predict(flat(test.images)) == test.labels).mean())
        rows.append(row)
        log.info("subset %d: %s", s, row)

    # the grid: 10 samples per label
    import matplotlib.pyplot as plt

    grid_path = Path(args.grid)
    grid_path.parent.mkdir(parents=True, exist_ok=True)
    figure = grid_figure(
        table, summary.class_names, per_label=10, title=f"conditional samples (T={args.temperature:g})"
    )
    figure.savefig(grid_path, dpi=100)
    plt.close(figure)

    real_only = np.mean([r["real_only"] for r in rows])
    augmented = np.mean([r["real_plus_synthetic"] for r in rows])
    report = {
        "model": f"{summary.model_name} v{summary.model_version}",
        "train_seconds": train_seconds,
        "classifier": args.classifier,
        "classifier_test_accuracy_full_real": judge_accuracy,
        "label_fidelity": fidelity,
        "label_fidelity_per_label": per_label,
        "diversity_ratio": diversity,
        "holdout_rows": len(holdout),
        "k": args.k,
        "precision": manifold["precision"],
        "recall": manifold["recall"],
        "diversity": manifold["diversity"],
        "worst": {m: {"label": label, "value": v} for m, (label, v) in manifold["worst"].items()},
        "fidelity_per_label": manifold["labels"],
        **usage,
        "subsets": rows,
        "real_only_mean": float(real_only),
        "real_plus_synthetic_mean": float(augmented),
        "lift": float(augmented - real_only),
        "grid": str(grid_path),
    }
    print()
    print(f"model:                     {report['model']} (temperature {args.temperature:g})")
    print(
        f"classifier:                {args.classifier}; on all {len(train)} real training images it scores "
        f"{judge_accuracy:.3f} on the {len(test)} test images"
    )
    print(
        f"label fidelity:            {fidelity:.3f} of {len(samples)} conditional samples "
        f"({args.per_label} per label) get the requested label"
    )
    print("  per label:               " + ", ".join(f"{k}: {v:.2f}" for k, v in per_label.items()))
    print(
        f"spread:                    samples spread {diversity:.2f}x as far around their label's centroid as "
        f"the real training images do"
    )
    worst = manifold["worst"]
    print(
        f"against the holdout:       {len(holdout)} real images never trained on; improved precision/recall "
        f"(k = {args.k}, pixel space), diversity = mean pairwise distance of samples / of real, per label"
    )
    for metric in ("precision", "recall", "diversity"):
        label, value = worst[metric]
        print(f"  {metric + ':':<25}{manifold[metric]:.3f} mean over labels, worst label {label}: {value:.3f}")
    print(
        "  per label (P/R/D):       "
        + ", ".join(
            f"{k}: {v['precision']:.2f}/{v['recall']:.2f}/{v['diversity']:.2f}" for k, v in manifold["labels"].items()
        )
    )
    if manifold["skipped"]:
        print(f"  not measured (too few images): labels {manifold['skipped']}")
    print(
        f"latent use:                test KL {usage['test_kl']:.2f} nats per image (neg ELBO "
        f"{usage['test_neg_elbo']:.2f}); {usage['active_units']} of {usage['latent_dim']} latent units active"
    )
    print(f"augmentation ({args.fraction:.0%} real, {args.subsets} subsets, test accuracy, mean ± sd):")
    for key, text in (
        ("real_only", "real only"),
        ("real_plus_synthetic", "real + synthetic"),
        ("real_plus_own_synthetic", "real + own-subset synthetic"),
    ):
        values = [r[key] for r in rows if key in r]
        if values:
            print(
                f"  {text:<28} {np.mean(values):.3f} ± {np.std(values):.3f}   ({', '.join(f'{v:.3f}' for v in values)})"
            )
    print(f"  lift:                      {augmented - real_only:+.3f}")
    print(f"grid:                      {grid_path}")
    return report


if __name__ == "__main__":
    main()
