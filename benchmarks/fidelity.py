"""How useful are the conditional VAE's synthetic digits? Label fidelity and augmentation lift.

1. Train a conditional VAE on the train part of ``vae train``'s split of ``--data`` (or take
   ``--model``) and write
   ``--per-label`` conditional samples per label with the Beam pipeline (``vae generate``'s code).
2. Label fidelity: a classifier trained on the real train split labels the samples; the share it
   assigns to the requested label. Improved precision and recall (Kynkaanniemi et al., 2019; k = 3,
   pixel space) and diversity (mean pairwise distance of the samples over that of the real images)
   per label, against the real images of the fixed holdout (``DATA:holdout``, never trained on):
   :func:`scoring.fidelity.per_label_fidelity`; the mean over labels and the worst label.
3. Augmentation lift: accuracy on the holdout of a classifier trained on a stratified ``--fraction``
   of the real train part plus the samples, against the same fraction alone, averaged over
   ``--subsets`` seeds of the subset.
4. With ``--fair``, the lift again with a generator trained only on each small subset: the first
   lift borrows labelled knowledge of the whole train split through the generator, this one does not.

Usage::

    python benchmarks/fidelity.py [--data digits|mnist5k] [--seeds 0 1 2] [--fair] [--pixel-temperature 0.7]
        [--latent-prior fitted|standard] [--model models:/NAME@ALIAS] [--grid docs/images/fidelity_grid.png]

With several ``--seeds`` it prints each seed, then the mean, spread and worst over the seeds.

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


def conditional_samples(model_uri: str, output: Path, args, seed: int, work_dir):
    from pipeline.beam.generate_job import generate_dataset
    from pipeline.beam.options import GenerateOptions
    from pipeline.outputs.synthetic import images_of, read_synthetic

    options = GenerateOptions.of(
        model=model_uri,
        method="conditional",
        output=output,
        per_label=args.per_label,
        temperature=args.temperature,
        pixel_temperature=args.pixel_temperature,
        latent_prior=args.latent_prior,
        seed=seed,
        direct_running_mode="in_memory",
        direct_num_workers=1,
        work_dir=work_dir,
    )
    summary = generate_dataset(options)
    table = read_synthetic(summary.output, "conditional")
    labels = np.asarray(table.column("label").to_pylist(), dtype=np.int64)
    return summary, table, images_of(table), labels


def train_conditional(name: str, data: str, train_data, epochs: int, seed: int, work_dir: str) -> str:
    """Trains a conditional VAE on ``data`` (``vae train``'s split of it), or on ``train_data`` only
    (then split the same way: 55 % of it fits the weights)."""
    from training.config import TrainConfig
    from training.train import train

    cfg = TrainConfig(
        data=data,
        conditional=True,
        model_name=name,
        epochs=epochs,
        seed=seed,
        promote="always",
        work_dir=work_dir,
        calibration_folds=0,  # the threshold does not matter to the samples
    )
    if train_data is None:
        result = train(cfg)
    else:  # a data set of our own: saved as NPZ so that train() loads it like any user file
        path = Path(work_dir) / f"{name}.npz"
        np.savez(path, x=train_data.images, y=train_data.labels)
        result = train(TrainConfig(**{**cfg.__dict__, "data": str(path)}))
    return f"models:/{result.model_name}/{result.version}"


def run_seed(args, seed: int, work: Path) -> dict:
    """Every figure of the benchmark for one seed (split, generator training, sampling, subsets)."""
    from sklearn.model_selection import train_test_split

    from scoring.fidelity import per_label_fidelity
    from training import data as data_lib
    from training.data.splits import training_split

    work.mkdir(parents=True, exist_ok=True)
    split = training_split(data_lib.read_images(args.data).data, seed=seed)
    train, test = split.train, split.holdout  # the holdout: never seen by a generator or a classifier
    started = time.perf_counter()
    model_uri = args.model or train_conditional("vae-fidelity", args.data, None, args.epochs, seed, str(work))
    train_seconds = time.perf_counter() - started
    summary, table, samples, sample_labels = conditional_samples(model_uri, work / "outputs", args, seed, str(work))

    judge = classifier(args.classifier, seed).fit(flat(train.images), train.labels)
    judge_accuracy = float((judge.predict(flat(test.images)) == test.labels).mean())
    predicted = judge.predict(flat(samples))
    per_label = {int(k): float((predicted[sample_labels == k] == k).mean()) for k in np.unique(sample_labels)}
    manifold = per_label_fidelity(test.images, test.labels, samples, sample_labels, k=args.k)
    usage = latent_usage(model_uri, str(work), test)

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
            own = train_conditional(f"vae-fidelity-subset-{s}", args.data, small, args.epochs, s, str(work))
            _, _, own_samples, own_labels = conditional_samples(own, work / f"outputs-subset-{s}", args, s, str(work))
            fair = classifier(args.classifier, s).fit(
                np.concatenate([flat(small.images), flat(own_samples)]), np.concatenate([small.labels, own_labels])
            )
            row["real_plus_own_synthetic"] = float((fair.predict(flat(test.images)) == test.labels).mean())
        rows.append(row)
        log.info("seed %d, subset %d: %s", seed, s, row)
    means = {key: float(np.mean([r[key] for r in rows if key in r])) for key in AUGMENTATION if key in rows[0]}
    return {
        "seed": seed,
        "model": f"{summary.model_name} v{summary.model_version}",
        "train_seconds": train_seconds,
        "classifier_accuracy_full_real": judge_accuracy,
        "label_fidelity": float((predicted == sample_labels).mean()),
        "label_fidelity_per_label": per_label,
        "precision": manifold["precision"],
        "recall": manifold["recall"],
        "diversity": manifold["diversity"],
        "worst": {m: {"label": label, "value": v} for m, (label, v) in manifold["worst"].items()},
        "fidelity_per_label": manifold["labels"],
        "holdout_rows": len(test),
        **usage,
        "subsets": rows,
        **{f"{key}_mean": value for key, value in means.items()},
        "lift": means["real_plus_synthetic"] - means["real_only"],
        **({"own_lift": means["real_plus_own_synthetic"] - means["real_only"]} if args.fair else {}),
        "table": table,
        "class_names": summary.class_names,
    }


AUGMENTATION = {
    "real_only": "real only",
    "real_plus_synthetic": "real + synthetic",
    "real_plus_own_synthetic": "real + own-subset synthetic",
}
HEADLINE = ("precision", "recall", "diversity", "label_fidelity", "lift", "own_lift")


def print_seed(report: dict, args) -> None:
    seed = report["seed"]
    print(
        f"\nseed {seed}: {report['model']} on {args.data}; pixel temperature {args.pixel_temperature:g}, "
        f"latent prior {args.latent_prior}, temperature {args.temperature:g}"
    )
    print(
        f"  classifier ({args.classifier}) on all real training images: {report['classifier_accuracy_full_real']:.3f} "
        f"on the {report['holdout_rows']} holdout images"
    )
    print(
        f"  label fidelity: {report['label_fidelity']:.3f}  ("
        + ", ".join(f"{k}: {v:.2f}" for k, v in report["label_fidelity_per_label"].items())
        + ")"
    )
    for metric in ("precision", "recall", "diversity"):
        worst, value = report["worst"][metric], report[metric]
        print(f"  {metric + ':':<11}{value:.3f} mean over labels, worst label {worst['label']}: {worst['value']:.3f}")
    print(
        f"  latent use: test KL {report['test_kl']:.2f} nats per image; "
        f"{report['active_units']} of {report['latent_dim']} units active"
    )
    for key, text in AUGMENTATION.items():
        values = [r[key] for r in report["subsets"] if key in r]
        if values:
            print(
                f"  {text:<28} {np.mean(values):.3f} ± {np.std(values):.3f}   ({', '.join(f'{v:.3f}' for v in values)})"
            )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="digits", help="a built-in labelled data set: digits, mnist5k, ...")
    parser.add_argument("--model", default=None, help="models:/NAME@ALIAS of a conditional VAE (default: train one)")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--per-label", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--pixel-temperature", type=float, default=None, help="default: vae generate's")
    parser.add_argument("--latent-prior", default=None, help="fitted | standard (default: vae generate's)")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--subsets", type=int, default=5, help="seeds of the small real subset to average over")
    parser.add_argument("--classifier", choices=("svc", "logistic"), default="svc")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="split, training and sampling seeds")
    parser.add_argument("--fair", action="store_true", help="also train a generator on each small subset only")
    parser.add_argument("--k", type=int, default=3, help="neighbours of improved precision and recall")
    parser.add_argument("--grid", default="docs/images/fidelity_grid.png", help="samples of the first seed")
    parser.add_argument("--work-dir", default=None, help="MLflow store and outputs (default: a temporary folder)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("absl", "tensorflow", "alembic", "mlflow", "apache_beam", "pipeline", "training"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from scoring.sampling import DEFAULT_LATENT_PRIOR, DEFAULT_PIXEL_TEMPERATURE

    args.pixel_temperature = DEFAULT_PIXEL_TEMPERATURE if args.pixel_temperature is None else args.pixel_temperature
    args.latent_prior = args.latent_prior or DEFAULT_LATENT_PRIOR
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="vae-fidelity-"))
    if args.model is None and args.work_dir is None:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    reports = []
    for seed in args.seeds:
        report = run_seed(args, seed, work / f"seed-{seed}")
        print_seed(report, args)
        reports.append(report)

    import matplotlib.pyplot as plt

    from pipeline.report.figures import grid_figure

    grid_path = Path(args.grid)
    grid_path.parent.mkdir(parents=True, exist_ok=True)
    figure = grid_figure(
        reports[0]["table"],
        reports[0]["class_names"],
        per_label=10,
        title=f"conditional samples ({args.latent_prior} prior, pixel temperature {args.pixel_temperature:g})",
    )
    figure.savefig(grid_path, dpi=100)
    plt.close(figure)

    overall = {}
    print(f"\nover {len(reports)} seed(s) ({', '.join(map(str, args.seeds))}): mean ± sd, worst")
    for key in HEADLINE:
        values = [r[key] for r in reports if key in r]
        if values:
            overall[key] = {"mean": float(np.mean(values)), "sd": float(np.std(values)), "worst": float(np.min(values))}
            print(f"  {key + ':':<16}{np.mean(values):+.3f} ± {np.std(values):.3f}, worst {np.min(values):+.3f}")
    print(f"grid:             {grid_path}")
    for r in reports:
        r.pop("table")
    return {"seeds": reports, "overall": overall, "grid": str(grid_path)}


if __name__ == "__main__":
    main()
