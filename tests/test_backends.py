"""The same model code trains, saves and reloads on the JAX backend (TensorFlow is the default)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("jax")

SCRIPT = """
import keras, numpy as np
from training import data
from training.model import VariationalAutoencoder, compile_model, model_inputs
from scoring import elbo
from scoring.detector import score_images
keras.utils.set_random_seed(0)
split = data.split(data.load_digits(), seed=0)
for classes in (0, 10):
    model = VariationalAutoencoder((8, 8, 1), latent_dim=4, num_classes=classes, seed=0)
    compile_model(model)
    x = model_inputs(split.train.images[:256], split.train.labels[:256], bool(classes))
    history = model.fit(x, np.zeros(256), epochs=2, batch_size=64, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    model.save("m.keras")
    loaded = keras.saving.load_model("m.keras", safe_mode=True)
    labels = split.test.labels if classes else None
    a = score_images(model, split.test.images, labels)["neg_elbo"]
    b = score_images(loaded, split.test.images, labels)["neg_elbo"]
    np.testing.assert_allclose(a, b, rtol=1e-6)
    elbo.COMPILED = False  # the jitted scoring step against the eager ops
    eager = score_images(model, split.test.images, labels)["neg_elbo"]
    elbo.COMPILED = True
    np.testing.assert_allclose(a, eager, rtol=1e-5)
print("backend", keras.backend.backend(), "ok")
"""


@pytest.mark.slow
def test_trains_and_reloads_on_jax(tmp_path):
    env = os.environ | {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "backend jax ok" in done.stdout
