"""An independent judge of synthetic images: a classifier trained on real images only.

It gives two things the pixels cannot: **label fidelity** (the share of samples of label y that it
calls y) and a **feature space** in which precision, recall, density and coverage
(:func:`scoring.fidelity.prdc`) compare what a digit looks like rather than where its pixels sit. The
features are the activations of its last hidden layer, the standard practice of FID and of Naeem et
al. (2020), here with a small multilayer perceptron, because the images are small and the judge must
train in seconds on two cores. It never sees a synthetic image and shares nothing with the VAE.
"""

from __future__ import annotations

import numpy as np

HIDDEN = (256, 128)


class Judge:
    """A multilayer perceptron fitted to real ``images`` and ``labels``; reproducible for a seed."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int = 0, hidden: tuple[int, ...] = HIDDEN) -> None:
        from sklearn.neural_network import MLPClassifier

        self._net = MLPClassifier(hidden_layer_sizes=hidden, alpha=1e-2, max_iter=500, random_state=seed)
        self._net.fit(_flat(images), np.asarray(labels))

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self._net.predict(_flat(images))

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        """The share of ``images`` it calls by their ``labels``: its accuracy on real images, label
        fidelity on samples generated for those labels."""
        return float((self.predict(images) == np.asarray(labels)).mean())

    def features(self, images: np.ndarray) -> np.ndarray:
        """The last hidden layer's ReLU activations, (N, hidden[-1]) float64."""
        h = _flat(images)
        for weights, bias in zip(self._net.coefs_[:-1], self._net.intercepts_[:-1], strict=True):
            h = np.maximum(h @ weights + bias, 0.0)
        return h


def _flat(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images, dtype=np.float64)
    return x.reshape(len(x), -1)
