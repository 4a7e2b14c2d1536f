"""Data: a seeded batch iterator that moves batches to a backend, the digits data set and an MNIST reader.

Data sets live on the host as NumPy arrays, images ``(N, 1, H, W)`` float32 in
[0, 1] and labels ``(N,)`` int64; :class:`DataLoader` copies one batch at a time
to the model's backend with :meth:`Backend.asarray`.  Nothing here downloads.
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ._typing import Array, Device
from .backends import Backend, get_backend, to_numpy
from .io import read_npz
from .validation import positive_int

__all__ = ["Dataset", "DataLoader", "load_digits", "load_mnist", "read_idx", "load_dataset", "DATASETS"]

DATASETS = ("digits", "mnist")
_EXAMPLES_HINT = 'pip install "xpconv[examples]"'


class Dataset(NamedTuple):
    """A train/test split: images (N, 1, H, W) float32 in [0, 1], labels (N,) int64."""

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


class DataLoader:
    """Iterate over ``(x, y)`` batches on ``backend``, reshuffled every epoch from one seeded generator.

    ``x`` (N, ...) and ``y`` (N,) are host arrays (any backend's arrays are copied
    to the host once); each batch is ``backend.asarray(x[idx], dtype)`` and int64
    labels.  The same ``seed`` gives the same sequence of batches.
    """

    def __init__(self, x: Array, y: Array, batch_size: int = 64, shuffle: bool = True,
                 seed: int | Sequence[int] | None = None, backend: str | Backend | None = None, device: Device = None,
                 dtype: str = "float32", drop_last: bool = False) -> None:
        self.x, self.y = np.asarray(to_numpy(x)), np.asarray(to_numpy(y))
        if self.x.ndim < 1 or self.y.ndim != 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x (N, ...) and y (N,) must have the same length N, got shapes {self.x.shape} "
                             f"and {self.y.shape}")
        if self.x.shape[0] == 0:
            raise ValueError("cannot iterate over an empty data set")
        if not np.issubdtype(self.y.dtype, np.integer):
            raise TypeError(f"labels y must be integers, got dtype {self.y.dtype}")
        batch_size = positive_int("batch_size", batch_size)
        self.batch_size, self.shuffle, self.drop_last = batch_size, bool(shuffle), bool(drop_last)
        self.backend = get_backend(backend, device)
        self.dtype = self.backend.dtype(dtype)
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Array, Array]]:
        n = self.x.shape[0]
        order = self._rng.permutation(n) if self.shuffle else np.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield (self.backend.asarray(self.x[idx], dtype=self.dtype),
                   self.backend.asarray(self.y[idx].astype(np.int64)))


def load_digits(test_size: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 images), split stratified and seeded, scaled to [0, 1].

    Images (N, 1, 8, 8) float32, labels int64.  Needs scikit-learn (the ``examples`` extra).
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must lie strictly between 0 and 1, got {test_size!r}")
    try:
        from sklearn.datasets import load_digits as sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ImportError(f"the digits data set comes with scikit-learn, which is not installed; "
                          f"install it with: {_EXAMPLES_HINT}") from None
    digits = sk_load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    return Dataset(x_train, y_train, x_test, y_test, "digits")


# IDX type codes (third magic byte) -> big-endian dtype.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 0x00000803, 0x00000801


def read_idx(path: str | os.PathLike[str], expected_magic: int | None = None) -> np.ndarray:
    """Parse one IDX file (gzip-compressed or not): ``00 00 <type> <ndim>``, ndim big-endian uint32 sizes, data.

    Raises ValueError on a wrong magic number, an unknown type, or a size that does not
    match the header (truncated or padded file); FileNotFoundError if ``path`` is missing.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(raw)} bytes, no complete header)")
    magic = int.from_bytes(raw[:4], "big")
    if raw[0] or raw[1] or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (magic number 0x{magic:08X})")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"{path}: magic number 0x{magic:08X}, expected 0x{expected_magic:08X}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions need {header})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: header says shape {shape} ({expected} data bytes) but the file holds "
                         f"{len(raw) - header} ({'truncated' if len(raw) - header < expected else 'extra bytes'})")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


_IDX_STEMS = {"train": "train", "test": "t10k"}


def _find_idx(directory: Path, split: str, kind: str) -> Path:
    """``{train|t10k}-{images-idx3|labels-idx1}-ubyte`` (also ``.idx3-ubyte`` spelling), optionally ``.gz``."""
    stem, ext = _IDX_STEMS[split], {"images": "idx3-ubyte", "labels": "idx1-ubyte"}[kind]
    names = [f"{stem}-{kind}-{ext}", f"{stem}-{kind}.{ext}"]
    for name in names:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"no MNIST {split} {kind} file in {directory} (looked for {names[0]}[.gz]); "
                            "put mnist.npz or the four IDX files there (xpconv never downloads)")


def _check_split(images: np.ndarray, labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, H, W) images and (N,) labels in 0..9 -> float32 (N, 1, H, W) in [0, 1] and int64."""
    if images.ndim != 3 or labels.ndim != 1:
        raise ValueError(f"{where}: expected images (N, H, W) and labels (N,), got shapes {images.shape} "
                         f"and {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{where}: {images.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{where}: labels must lie in 0..9, got {labels.min()}..{labels.max()}")
    return (images.astype(np.float32) / 255.0)[:, None, :, :], labels.astype(np.int64)


def _load_mnist_npz(path: Path) -> Dataset:
    arrays = read_npz(path)
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise ValueError(f"{path}: not an mnist.npz file, missing keys {missing} (has {sorted(arrays)})")
    x_train, y_train = _check_split(arrays["x_train"], arrays["y_train"], f"{path} (train)")
    x_test, y_test = _check_split(arrays["x_test"], arrays["y_test"], f"{path} (test)")
    return Dataset(x_train, y_train, x_test, y_test, "mnist")


def load_mnist(path: str | os.PathLike[str]) -> Dataset:
    """MNIST from files you already have: ``mnist.npz`` (x_train, y_train, x_test, y_test) or the IDX files.

    ``path`` is an ``.npz`` file or a directory holding ``mnist.npz`` or
    ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
    ``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]``.
    Images (N, 1, 28, 28) float32 in [0, 1], labels int64.
    """
    path = Path(path)
    if path.is_file():
        return _load_mnist_npz(path)
    if not path.is_dir():
        raise FileNotFoundError(f"MNIST path {path} does not exist")
    if (path / "mnist.npz").is_file():
        return _load_mnist_npz(path / "mnist.npz")
    splits: list[np.ndarray] = []
    for split in ("train", "test"):
        images = read_idx(_find_idx(path, split, "images"), IDX_IMAGES_MAGIC)
        labels = read_idx(_find_idx(path, split, "labels"), IDX_LABELS_MAGIC)
        splits += _check_split(images, labels, f"{path} ({split})")
    x_train, y_train, x_test, y_test = splits
    return Dataset(x_train, y_train, x_test, y_test, "mnist")


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None, seed: int = 0) -> Dataset:
    """A data set by name: "digits" (scikit-learn, split with ``seed``) or "mnist" (files in ``data_dir``).

    The MNIST training set is shuffled with ``seed`` so that a subset of it is balanced.
    """
    if name == "digits":
        return load_digits(seed=seed)
    if name == "mnist":
        if data_dir is None:
            raise ValueError("the mnist data set needs a data directory (--data-dir) holding mnist.npz or the "
                             "four IDX files; xpconv never downloads")
        data = load_mnist(data_dir)
        order = np.random.default_rng(seed).permutation(data.x_train.shape[0])
        return data._replace(x_train=data.x_train[order], y_train=data.y_train[order])
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
