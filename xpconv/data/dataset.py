"""The :class:`Dataset` record and the checks that every data source's arrays pass before they are used.

Every reader (IDX, ``.npz``, CIFAR-10 binary, digits, mnist5k) turns its arrays into images
``(N, C, H, W)`` float32 in [0, 1] and labels ``(N,)`` int64 through the two functions here, so one set
of rules holds for all of them:

- images: ``uint8`` is scaled by 1/255; a floating dtype must already lie in [0, 1] (finite) and is kept
  as it is (never divided by 255 a second time); any other dtype is refused;
- labels: integers, or integral floats with no NaN/inf, in ``[0, num_classes)``; ``bool`` is refused;
- as many labels as images.

Each failure is a ``ValueError`` whose message starts with ``where`` (the file, and the split).
"""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from ..io import read_npz
from ..validation import positive_int

__all__ = ["Dataset", "unit_images", "check_labels", "read_npz_splits", "SPLIT_KEYS"]

SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")


class Dataset(NamedTuple):
    """A train/test split: images (N, C, H, W) float32 in [0, 1], labels (N,) int64.

    Parameters
    ----------
    x_train, x_test : numpy.ndarray
        Images ``(N, C, H, W)`` float32 in [0, 1] on the host.
    y_train, y_test : numpy.ndarray
        Labels ``(N,)`` int64 in ``[0, num_classes)``.
    name : str
        The data set's name (``"digits"``, ``"mnist"``, ``"mnist5k"``, ``"cifar10"``).
    num_classes : int, default 10

    Raises
    ------
    ValueError
        From :meth:`subset`, for a ``limit`` that is not a positive int.

    Examples
    --------
    >>> import numpy as np
    >>> d = Dataset(np.zeros((5, 1, 2, 2), np.float32), np.zeros(5, np.int64),
    ...             np.zeros((3, 1, 2, 2), np.float32), np.zeros(3, np.int64), "toy")
    >>> d.subset(2).x_train.shape, d.subset(2).x_test.shape
    ((2, 1, 2, 2), (2, 1, 2, 2))
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    num_classes: int = 10

    def subset(self, limit: int | None) -> Dataset:
        """At most the first ``limit`` samples of each split; all of them for None."""
        if limit is None:
            return self
        limit = positive_int("limit", limit)
        return self._replace(x_train=self.x_train[:limit], y_train=self.y_train[:limit],
                             x_test=self.x_test[:limit], y_test=self.y_test[:limit])


def unit_images(images: np.ndarray, where: str) -> np.ndarray:
    """Images as float32 in [0, 1]: uint8 scaled by 1/255, floats checked to lie in [0, 1] and kept.

    Parameters
    ----------
    images : numpy.ndarray
        Images of any shape, ``uint8`` (0..255) or floating (already in [0, 1]).
    where : str
        The file (and split) the images come from, to start every error message.

    Returns
    -------
    numpy.ndarray
        float32 array of the same shape; a new array, ``images`` is not modified.

    Raises
    ------
    ValueError
        For another dtype, or floats outside [0, 1] or not finite (a float image saved as 0..255 is refused,
        not guessed at: scale it by 1/255 or save it as uint8).

    Examples
    --------
    >>> import numpy as np
    >>> unit_images(np.array([0, 51, 255], np.uint8), "demo")
    array([0. , 0.2, 1. ], dtype=float32)
    >>> unit_images(np.array([0.0, 0.5]), "demo")
    array([0. , 0.5], dtype=float32)
    >>> unit_images(np.array([0.0, 255.0]), "demo")
    Traceback (most recent call last):
    ...
    ValueError: demo: float images must already lie in [0, 1], got values from 0 to 255; ...
    """
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"{where}: images must be uint8 (0..255) or floating in [0, 1], got dtype {images.dtype}")
    if images.size and not np.all(np.isfinite(images)):
        raise ValueError(f"{where}: images hold NaN or infinite values")
    if images.size and (images.min() < 0.0 or images.max() > 1.0):
        raise ValueError(f"{where}: float images must already lie in [0, 1], got values from {images.min():g} to "
                         f"{images.max():g}; scale them by 1/255 or store them as uint8")
    return images.astype(np.float32)


def check_labels(labels: np.ndarray, num_classes: int, where: str, count: int | None = None) -> np.ndarray:
    """Labels ``(N,)`` as int64 after checking dtype, values in ``[0, num_classes)`` and, if given, ``N == count``.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(N,)`` integers, or floats that are all integral (no NaN or inf).
    num_classes : int
        Labels must lie in ``0 .. num_classes - 1``.
    where : str
        The file (and split) the labels come from, to start every error message.
    count : int or None, default None
        The number of images the labels belong to.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` int64, a new array.

    Raises
    ------
    ValueError
        For a shape other than (N,), a count that differs from ``count``, a bool or non-numeric dtype,
        NaN, inf or fractional floats, or a label outside ``[0, num_classes)``.

    Examples
    --------
    >>> import numpy as np
    >>> check_labels(np.array([0.0, 9.0]), 10, "demo")
    array([0, 9])
    >>> check_labels(np.array([0.0, np.nan]), 10, "demo")
    Traceback (most recent call last):
    ...
    ValueError: demo: labels must be integers, got floats that are NaN, infinite or fractional
    """
    if labels.ndim != 1:
        raise ValueError(f"{where}: labels must have shape (N,), got {labels.shape}")
    if count is not None and labels.shape[0] != count:
        raise ValueError(f"{where}: {count} images but {labels.shape[0]} labels")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels) & (labels == np.round(labels))):
            raise ValueError(f"{where}: labels must be integers, got floats that are NaN, infinite or fractional")
    elif labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{where}: labels must lie in 0..{num_classes - 1}, got {labels.min():g}..{labels.max():g}")
    return labels.astype(np.int64)


def read_npz_splits(path: str | os.PathLike[str], what: str) -> dict[str, np.ndarray]:
    """The four arrays ``x_train, y_train, x_test, y_test`` of an ``.npz`` file (no pickle); ValueError if missing."""
    arrays = read_npz(path)
    missing = [k for k in SPLIT_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{path}: not a {what} file, missing keys {missing} (has {sorted(arrays)})")
    return arrays
