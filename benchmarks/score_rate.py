"""Raw scoring rate against the machine's own limits, before and after the compiled scoring step.

In one run, for 8x8 (digits) and 28x28 (mnist5k) images, plain and conditional models, the
default score (:func:`scoring.detector.score_images`, ``anomaly_score``) and ``neg_elbo`` alone
(:func:`scoring.elbo.score_terms`), on each Keras backend (TensorFlow, JAX; one child process
each), it measures

- the rows/s of the scoring path before issue 22 (``benchmarks/eager_scoring.py``, frozen: eager
  ops, numpy sampling, the old likelihood) and of today's, on the same rows, alternately;
- the matrix rate of the process: float32 1024x512 by 512x512 products, numpy and the backend,
  the faster, measured before each case (the machine is shared: a case is compared with the rate
  of its own moment);
- the element-wise rate of the compiled likelihood alone (ns per pixel and posterior sample);

and prints rows/s, the matrix work's GFLOP/s (dense layers' multiply-adds: the encoder once,
the decoder once per posterior sample), its fraction of the matrix rate, and the fraction of a
*limit*: the matrix work at the matrix rate plus the likelihood at its compiled element-wise rate,
nothing else (no sampling, copies or per-call overhead). Every rate is the best of ``--repeats``.
The largest difference between the two paths' scores, max |after - before| / max(|before|, 1),
is printed with them. Both run at the 16 posterior samples per row of the default when issue 22 was
filed; a third column times today's path at ``--samples`` (default: the model's own count), against
the same "TF before": what fewer decoder passes per row would buy.

Usage::

    python benchmarks/score_rate.py [--backends tensorflow jax] [--data digits mnist5k]
        [--rows 16384 4096] [--scores neg_elbo default] [--repeats 2] [--samples N] [--work DIR]

Trains the four models (2 epochs; the rate does not depend on the fit) with ``vae train``'s
code into ``--work`` (a throw-away folder unless given; given, they are reused).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULT = "RESULT "
ISSUE_SAMPLES = 16  # posterior samples per row when issue 22 was filed (the default then)
IMAGE_SIZE = {"digits": "8x8", "mnist5k": "28x28"}


def train_models(work: Path, data: list[str]) -> None:
    """In a child: the missing ``{data}-{plain,cond}.keras`` models, trained as ``vae train`` does."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    from training import registry
    from training.config import TrainConfig
    from training.train import train

    registry.configure(work)
    for name in data:
        for conditional in (False, True):
            path = model_path(work, name, conditional)
            if path.exists():
                continue
            cfg = TrainConfig(
                data=name,
                conditional=conditional,
                epochs=2,
                kl_warmup=1,
                early_stopping=0,
                model_name=path.stem,
                promote="always",
                calibration_folds=0,  # the threshold does not matter to the rate
            )
            train(cfg).model.save(path)


def model_path(work: Path, data: str, conditional: bool) -> Path:
    return work / f"{data}-{'cond' if conditional else 'plain'}.keras"


def best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matrix_rate() -> float:
    """GFLOP/s of float32 (1024, 512) x (512, 512) products: numpy's or the backend's, the faster."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.random((1024, 512), np.float32), rng.random((512, 512), np.float32)
    flops = 2 * 1024 * 512 * 512
    if keras.backend.backend() == "jax":
        import jax

        product = jax.jit(lambda x, y: x @ y)
        ta, tb = jax.numpy.asarray(a), jax.numpy.asarray(b)
        backend = lambda: product(ta, tb).block_until_ready()  # noqa: E731
    else:
        import tensorflow as tf

        ta, tb = tf.constant(a), tf.constant(b)
        backend = lambda: tf.linalg.matmul(ta, tb).numpy()  # noqa: E731
    rates = []
    for fn in (lambda: a @ b, backend):
        fn()
        rates.append(flops / best_seconds(fn, 20) / 1e9)
    return max(rates)


def likelihood_ns(model, images) -> float:
    """ns per pixel and posterior sample of the model's likelihood alone, compiled as the scoring step is."""
    import keras
    import numpy as np
    from keras import ops

    from scoring import likelihoods

    x = np.resize(images, (4096, *images.shape[1:])).astype(np.float32)
    params_shape = tuple(model.decoder.output.shape[1:])
    params = np.random.default_rng(0).normal(0.0, 4.0, (4096, *params_shape)).astype(np.float32)

    def nll(x, params):
        return likelihoods.negative_log_likelihood(x, params, model.likelihood, model.pixel_levels)

    if keras.backend.backend() == "jax":
        import jax

        compiled = jax.jit(nll)
    else:
        import tensorflow as tf

        compiled = tf.function(nll, jit_compile=True)
    run = lambda: np.asarray(ops.convert_to_numpy(compiled(x, params)))  # noqa: E731
    run()
    return best_seconds(run, 10) / x.size * 1e9


def dense_multiply_adds(model) -> tuple[int, int]:
    """(encoder, decoder) multiply-adds per row of the dense layers (conv layers are not counted)."""
    import keras

    def count(sub) -> int:
        return sum(
            int(layer.kernel.shape[0] * layer.kernel.shape[1])
            for layer in sub.layers
            if isinstance(layer, keras.layers.Dense)
        )

    return count(model.encoder), count(model.decoder)


def relative_difference(a, b) -> float:
    """max |a - b| / max(|b|, 1): relative for neg_elbo (tens to hundreds of nats); for the
    standardised anomaly_score (of order 1, often near 0) relative to its scale."""
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1.0)))


def measure(spec: dict) -> None:
    """In a child (``KERAS_BACKEND`` set): every case of ``spec``; one ``RESULT`` JSON line each."""
    import eager_scoring
    import keras
    import numpy as np

    import training.model  # noqa: F401 (registers the model classes)
    from scoring.detector import score_images
    from scoring.elbo import score_terms
    from training.data import load_builtin

    backend = keras.backend.backend()
    for name, rows in zip(spec["data"], spec["rows"], strict=True):
        data = load_builtin(name)
        index = np.arange(rows) % len(data)
        images, all_labels = data.images[index], data.labels[index]
        for conditional in (False, True):
            model = keras.saving.load_model(model_path(Path(spec["work"]), name, conditional))
            labels = all_labels if conditional else None
            # before and after at the issue's sample count (the same samples: equal scores), and the
            # default's own count when it differs (fewer samples: fewer decoder passes per row)
            settings = {"num_samples": ISSUE_SAMPLES, "seed": model.score_seed, "batch_size": spec["batch_size"]}
            default = settings | {"num_samples": spec["samples"] or model.score_samples}
            ew_ns = likelihood_ns(model, data.images)
            encoder, decoder = dense_multiply_adds(model)
            flops = 2 * (encoder + ISSUE_SAMPLES * decoder)  # of the before and after columns
            for score in spec["scores"]:
                key = "anomaly_score" if score == "default" else "neg_elbo"
                before_fn = eager_scoring.score_images if score == "default" else eager_scoring.score_terms
                after_fn = score_images if score == "default" else score_terms
                warm = slice(0, spec["batch_size"])
                for kwargs in (settings, default):  # compiles each sample count's step
                    after_fn(model, images[warm], None if labels is None else labels[warm], **kwargs)
                matrix = matrix_rate()
                runs = {"before": (before_fn, settings), "after": (after_fn, settings), "default": (after_fn, default)}
                seconds = dict.fromkeys(runs, float("inf"))
                scores = {}
                for _ in range(spec["repeats"]):  # alternately, so that all see the same load
                    for which, (fn, kwargs) in runs.items():
                        start = time.perf_counter()
                        scores[which] = fn(model, images, labels, **kwargs)[key]
                        seconds[which] = min(seconds[which], time.perf_counter() - start)
                matrix = max(matrix, matrix_rate())
                result = {
                    "backend": backend,
                    "data": name,
                    "conditional": conditional,
                    "score": score,
                    "rows": rows,
                    "issue_samples": ISSUE_SAMPLES,
                    "samples": default["num_samples"],
                    "before": rows / seconds["before"],
                    "after": rows / seconds["after"],
                    "default": rows / seconds["default"],
                    "matrix_gflops": matrix,
                    "likelihood_ns": ew_ns,
                    "flops_per_row": flops,
                    "pixel_samples_per_row": int(np.prod(images.shape[1:])) * ISSUE_SAMPLES,
                    "max_relative_difference": relative_difference(scores["after"], scores["before"]),
                }
                print(RESULT + json.dumps(result), flush=True)


def run_child(args: list[str], backend: str | None = None) -> list[dict]:
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"} | ({"KERAS_BACKEND": backend} if backend else {})
    env.setdefault("JAX_PLATFORMS", "cpu")
    done = subprocess.run([sys.executable, __file__, *args], env=env, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{args[0]} {backend or ''} failed with exit code {done.returncode}")
    return [json.loads(line[len(RESULT) :]) for line in done.stdout.splitlines() if line.startswith(RESULT)]


def print_table(results: list[dict], cpus: int | None) -> None:
    print(
        f"\n{cpus} CPU cores; rows/s best of the repeats; 'TF before' = the eager path on TensorFlow (the old "
        f"default); before and after at {ISSUE_SAMPLES} posterior samples (the issue's), 'default' at the "
        "'samples' column's count (--samples; the model's own by default)"
    )
    header = (
        f"{'backend':<10} {'image':<6} {'model':<5} {'score':<9} {'before':>8} {'after':>8} {'x':>5} "
        f"{'x TF before':>11} "
        f"{'GFLOP/s':>8} {'matrix':>7} {'% matrix':>8} {'limit':>7} {'% limit':>7} {'max diff':>9} "
        f"{'samples':>7} {'default':>8} {'x TF (N)':>11}"
    )
    print(header)
    tf_before = {
        (r["data"], r["conditional"], r["score"]): r["before"] for r in results if r["backend"] == "tensorflow"
    }
    for r in results:
        gflops = r["after"] * r["flops_per_row"] / 1e9
        limit = 1.0 / (
            r["flops_per_row"] / (r["matrix_gflops"] * 1e9) + r["pixel_samples_per_row"] * r["likelihood_ns"] * 1e-9
        )
        reference = tf_before.get((r["data"], r["conditional"], r["score"]))
        versus_tf = f"{r['after'] / reference:>11.2f}" if reference else f"{'':>11}"
        default_versus_tf = f"{r['default'] / reference:>11.2f}" if reference else f"{'':>11}"
        print(
            f"{r['backend']:<10} {IMAGE_SIZE[r['data']]:<6} {'cond' if r['conditional'] else 'plain':<5} "
            f"{r['score']:<9} "
            f"{r['before']:>8,.0f} {r['after']:>8,.0f} {r['after'] / r['before']:>5.2f} {versus_tf} {gflops:>8.1f} "
            f"{r['matrix_gflops']:>7.0f} {100 * gflops / r['matrix_gflops']:>7.0f}% {limit:>7,.0f} "
            f"{100 * r['after'] / limit:>6.0f}% {r['max_relative_difference']:>9.1e} "
            f"{r['samples']:>7} {r['default']:>8,.0f} {default_versus_tf}"
        )
    print(
        "limit = rows/s if the matrix work ran at the matrix rate and the likelihood at its compiled rate, nothing else"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax"], choices=("tensorflow", "jax"))
    parser.add_argument("--data", nargs="+", default=["digits", "mnist5k"], choices=tuple(IMAGE_SIZE))
    parser.add_argument("--rows", nargs="+", type=int, default=None, help="rows per data set (16384 8x8, 4096 28x28)")
    parser.add_argument("--scores", nargs="+", default=["neg_elbo", "default"], choices=("neg_elbo", "default"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--samples", type=int, default=None, help="posterior samples of the third column (>= 1)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--work", type=Path, default=None, help="keep (and reuse) the trained models here")
    parser.add_argument("--train", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.samples is not None and args.samples < 1:
        parser.error("--samples must be at least 1")
    if args.train:
        return train_models(**{k: Path(v) if k == "work" else v for k, v in json.loads(args.train).items()})
    if args.measure:
        return measure(json.loads(args.measure))
    work = args.work or Path(tempfile.mkdtemp(prefix="score-rate-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = args.rows or [{"digits": 16384, "mnist5k": 4096}[name] for name in args.data]
    if len(rows) != len(args.data):
        parser.error("--rows takes one count per --data")
    run_child(["--train", json.dumps({"work": str(work), "data": args.data})])
    spec = {
        "work": str(work),
        "data": args.data,
        "rows": rows,
        "scores": args.scores,
        "repeats": args.repeats,
        "batch_size": args.batch_size,
        "samples": args.samples,
    }
    results = []
    for backend in args.backends:
        results += run_child(["--measure", json.dumps(spec)], backend)
    print_table(results, os.cpu_count())


if __name__ == "__main__":
    main()
