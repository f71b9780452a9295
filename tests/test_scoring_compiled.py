"""The compiled scoring step (scoring.elbo's XLA / jit path) gives the eager path's scores, row by
row, on real trained models: 8x8 digits and 28x28 mnist5k, plain and conditional."""

from __future__ import annotations

import numpy as np
import pytest
from keras import ops

from scoring import detector, elbo, likelihoods
from training.data import load_digits, load_mnist5k, split
from training.model import VariationalAutoencoder

TERMS = ("neg_elbo", "reconstruction_nll", "kl")


def both_paths(monkeypatch, score, *args, **kwargs):
    fast = score(*args, **kwargs)
    with monkeypatch.context() as patch:
        patch.setattr(elbo, "COMPILED", False)
        eager = score(*args, **kwargs)
    return fast, eager


def assert_same_scores(fast, eager, keys):
    for key in keys:
        # anomaly_score is standardised (of order 1, often near 0): 1e-5 of its scale, not of itself
        atol = 1e-5 if key == "anomaly_score" else 0.0
        np.testing.assert_allclose(fast[key], eager[key], rtol=1e-5, atol=atol, err_msg=key)
    np.testing.assert_allclose(fast["posterior_mean"], eager["posterior_mean"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conditional", [False, True])
def test_compiled_scores_equal_eager_scores_on_trained_digits_models(
    conditional, trained_plain, trained_conditional, monkeypatch
):
    model = (trained_conditional if conditional else trained_plain).model
    digits = load_digits()
    images, labels = digits.images[:700], digits.labels[:700] if conditional else None
    # 16 samples: 256-row blocks; batches of 300 end in a 44-row block padded to 64
    settings = {"num_samples": 16, "seed": model.score_seed, "iwae_k": 8, "batch_size": 300}
    fast, eager = both_paths(monkeypatch, detector.score_images, model, images, labels, **settings)
    assert model.anomaly and model.likelihood == "continuous_bernoulli" and model.pixel_levels == 17
    assert_same_scores(fast, eager, (*TERMS, "iwae_nll", "anomaly_score"))
    one_batch = detector.score_images(model, images, labels, **settings | {"batch_size": 1024})
    assert_same_scores(one_batch, fast, (*TERMS, "anomaly_score"))  # nor on its batch or block


@pytest.fixture(scope="module")
def mnist_models():
    """Dense VAEs trained for one epoch on about 1,000 28x28 mnist5k images (binned, 256 grey levels)."""
    from training.config import TrainConfig
    from training.fitting import build_model, fit, set_seeds

    parts = split(load_mnist5k().subset(np.arange(1500)), seed=0)
    models = {}
    for conditional in (False, True):
        cfg = TrainConfig(data="mnist5k", conditional=conditional, epochs=1, kl_warmup=1, early_stopping=0)
        set_seeds(0)
        model = build_model(cfg, parts.train)
        fit(cfg, model, parts)
        models[conditional] = model
    return models, parts.test


@pytest.mark.parametrize("conditional", [False, True])
def test_compiled_scores_equal_eager_scores_on_trained_mnist_models(conditional, mnist_models, monkeypatch):
    models, test = mnist_models
    model = models[conditional]
    assert model.image_shape == (28, 28, 1) and model.pixel_levels == 256
    images, labels = test.images, test.labels if conditional else None
    fast, eager = both_paths(
        monkeypatch, elbo.score_terms, model, images, labels, num_samples=16, seed=0, iwae_k=5, batch_size=200
    )
    assert_same_scores(fast, eager, (*TERMS, "iwae_nll"))


def test_compiled_scores_follow_the_weights(monkeypatch):
    """The compiled step reads the variables at each call: new weights, new scores (no stale cache)."""
    model = VariationalAutoencoder((8, 8, 1), latent_dim=3, num_classes=4, seed=0, architecture="dense")
    images = np.random.default_rng(1).random((40, 8, 8, 1), dtype=np.float32)
    labels = np.arange(40) % 4
    before = elbo.score_terms(model, images, labels, num_samples=5)
    for variable in model.decoder.trainable_variables:
        variable.assign(ops.convert_to_numpy(variable) * 1.5)
    fast, eager = both_paths(monkeypatch, elbo.score_terms, model, images, labels, num_samples=5)
    assert not np.allclose(fast["neg_elbo"], before["neg_elbo"])
    assert_same_scores(fast, eager, TERMS)


def test_more_samples_than_one_call_holds(monkeypatch):
    """More posterior samples than MAX_DECODE: samples in several calls, the last one padded."""
    model = VariationalAutoencoder((8, 8, 1), latent_dim=2, seed=0, architecture="dense", likelihood="bernoulli")
    images = np.round(np.random.default_rng(2).random((7, 8, 8, 1), dtype=np.float32))
    monkeypatch.setattr(elbo, "MAX_DECODE", 8)
    fast, eager = both_paths(monkeypatch, elbo.neg_elbo_terms, model, images, num_samples=21, seed=4)
    assert_same_scores(fast, eager, TERMS)


@pytest.mark.parametrize("levels", [17, 256])
def test_binned_log_mass_matches_float64_down_to_logit_zero(levels):
    rng = np.random.default_rng(levels)
    x = (rng.integers(0, levels, 20_000) / (levels - 1)).astype(np.float32)
    logits = np.concatenate([rng.normal(0, 20, 10_000), rng.normal(0, 1e-5, 9_990), np.zeros(10)]).astype(np.float32)
    got = np.asarray(ops.convert_to_numpy(likelihoods._binned_cb_log_mass(x, logits, levels)), np.float64)
    # float64 from the same float32 bin edges (their rounding is the input's, not the formula's)
    half = np.float32(0.5 / (levels - 1))
    a = np.maximum(x - half, np.float32(0)).astype(np.float64)
    b = np.minimum(x + half, np.float32(1)).astype(np.float64)
    t = np.abs(logits.astype(np.float64))
    gap = np.where(logits > 0, 1.0 - b, a)
    with np.errstate(divide="ignore", invalid="ignore"):
        exact = -t * gap + np.log(np.expm1(-t * (b - a)) / np.expm1(-t))
    exact = np.where(t == 0, np.log(b - a), exact)
    # float32 carries about 6e-8 * t in -t * gap whatever the formula
    np.testing.assert_array_less(np.abs(got - exact), 1e-5 * np.abs(exact) + 1e-6 * np.maximum(1.0, t))


def test_threads_scoring_a_fresh_model_at_once_compile_each_step_once_and_agree(monkeypatch):
    """Two scoring threads (the DirectRunner's) start on a model no one has scored: the first call of a
    step and shape runs alone, and both threads get the single-threaded scores."""
    import threading

    model = VariationalAutoencoder((8, 8, 1), latent_dim=3, seed=0, architecture="dense", likelihood="bernoulli")
    images = np.round(np.random.default_rng(3).random((50, 8, 8, 1), dtype=np.float32))
    steps = elbo._compiled(model)
    compiling, most = [0], [0]  # calls running while no shape was compiled yet: first calls
    counter = threading.Lock()
    step = steps.elbo._step

    def watched(*args):
        with counter:
            first = not steps.elbo._compiled
            compiling[0] += first
            most[0] = max(most[0], compiling[0])
        try:
            return step(*args)
        finally:
            with counter:
                compiling[0] -= first

    monkeypatch.setattr(steps.elbo, "_step", watched)
    barrier = threading.Barrier(4)
    results: list = [None] * 4

    def score(i: int) -> None:
        barrier.wait()
        results[i] = elbo.neg_elbo_terms(model, images, num_samples=4, seed=1)["neg_elbo"]

    threads = [threading.Thread(target=score, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1  # no two first calls of the shape overlapped
    assert len(steps.elbo._compiled) == 1
    _, eager = both_paths(monkeypatch, elbo.neg_elbo_terms, model, images, num_samples=4, seed=1)
    for got in results:
        np.testing.assert_allclose(got, eager["neg_elbo"], rtol=1e-5)


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_scoring_runs_numpy_blas_on_one_thread_and_gives_the_same_scores(trained_plain):
    """numpy's BLAS runs one thread while a model scores (its idle threads would spin on
    TensorFlow's cores), counted across concurrent scorers, restored after; the scores are those
    of the process's own BLAS setting, bit for bit."""
    import threading

    from threadpoolctl import threadpool_limits

    from scoring.blas_threads import one_blas_thread

    before = _blas_threads()
    inside, other_left = threading.Event(), threading.Event()

    def other_scorer() -> None:
        with one_blas_thread():
            inside.set()
        other_left.set()

    with one_blas_thread():
        assert set(_blas_threads()) == {1}
        worker = threading.Thread(target=other_scorer)
        worker.start()
        assert inside.wait(10) and other_left.wait(10)
        worker.join()
        assert set(_blas_threads()) == {1}  # the other scorer left first: not restored under this one
    assert _blas_threads() == before

    model, images = trained_plain.model, load_digits().images[:600]
    seen = []
    real_terms = detector.score_terms

    def recording_terms(*args, **kwargs):
        seen.append(set(_blas_threads()))
        return real_terms(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(detector, "score_terms", recording_terms)
        scored = detector.score_images(model, images, num_samples=4, seed=0)
        detector.VAEDetector(model).decision_function(images[:10])
    assert seen == [{1}, {1}]  # the library entry point and the detector both score on one thread
    terms = {k: v for k, v in scored.items() if k != "anomaly_score"}
    with threadpool_limits(2, user_api="blas"):
        two_threads = detector.model_anomaly_scores(model, terms)
    np.testing.assert_array_equal(scored["anomaly_score"], two_threads)
    assert _blas_threads() == before
