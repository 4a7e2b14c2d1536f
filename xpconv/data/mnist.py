"""MNIST from files you already have: the IDX format (gzip or not) and ``mnist.npz``.

Shapes: IDX image files hold ``(N, H, W)`` uint8, label files ``(N,)``; ``mnist.npz`` holds ``x_train``,
``y_train``, ``x_test``, ``y_test`` in the same shapes (as Keras ships it).  The result is a
:class:`~xpconv.data.dataset.Dataset` of images ``(N, 1, H, W)`` float32 in [0, 1] and labels int64.
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from .dataset import Dataset, check_labels, read_npz_splits, unit_images

__all__ = ["read_idx", "load_mnist", "IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC"]

# IDX type codes (third magic byte) -> big-endian dtype.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 0x00000803, 0x00000801


def read_idx(path: str | os.PathLike[str], expected_magic: int | None = None) -> np.ndarray:
    """Parse one IDX file (gzip-compressed or not): ``00 00 <type> <ndim>``, ndim big-endian uint32 sizes, data.

    Parameters
    ----------
    path : str or os.PathLike
        The file; gzip is recognized by its magic bytes, not by the name.
    expected_magic : int or None, default None
        The magic number the file must carry (:data:`IDX_IMAGES_MAGIC`, :data:`IDX_LABELS_MAGIC`).

    Returns
    -------
    numpy.ndarray
        The array the header describes, in native byte order (``uint8`` for MNIST).

    Raises
    ------
    ValueError
        Naming the file: corrupt gzip data, a wrong magic number, an unknown type, or a data length that
        does not match the header (truncated or padded file).
    FileNotFoundError
        If ``path`` does not exist.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
    >>> _ = path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 1, 4]))
    >>> read_idx(path, IDX_LABELS_MAGIC)
    array([7, 1, 4], dtype=uint8)
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


def _mnist_split(images: np.ndarray, labels: np.ndarray, where: str,
                 labels_where: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) images and (N,) labels in 0..9 -> float32 (N, 1, H, W) in [0, 1] and int64."""
    if images.ndim != 3:
        raise ValueError(f"{where}: expected images (N, H, W), got shape {images.shape}")
    labels = check_labels(labels, 10, labels_where or where, count=images.shape[0])
    return unit_images(images, where)[:, None, :, :], labels


def _dataset(splits: list[np.ndarray], where: str, name: str) -> Dataset:
    x_train, y_train, x_test, y_test = splits
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"{where}: train images {x_train.shape[1:]} and test images {x_test.shape[1:]} differ "
                         "in size")
    return Dataset(x_train, y_train, x_test, y_test, name)


def _load_mnist_npz(path: Path) -> Dataset:
    arrays = read_npz_splits(path, "mnist.npz")
    splits: list[np.ndarray] = []
    for split in ("train", "test"):
        splits += _mnist_split(arrays[f"x_{split}"], arrays[f"y_{split}"], f"{path} ({split})")
    return _dataset(splits, str(path), "mnist")


def load_mnist(path: str | os.PathLike[str]) -> Dataset:
    """MNIST from files you already have: ``mnist.npz`` (x_train, y_train, x_test, y_test) or the IDX files.

    Parameters
    ----------
    path : str or os.PathLike
        An ``.npz`` file, or a directory holding ``mnist.npz`` (read first when present) or
        ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``
        and ``t10k-labels-idx1-ubyte[.gz]``.

    Returns
    -------
    Dataset
        Images (N, 1, H, W) float32 in [0, 1] (uint8 scaled by 1/255; float images kept as they are when
        already in [0, 1]), labels (N,) int64.

    Raises
    ------
    FileNotFoundError
        If ``path`` or one of the IDX files is missing.
    ValueError
        Naming the file: see :func:`read_idx` and :mod:`xpconv.data.dataset` for the rules (dtype and range
        of images and labels, matching counts, image shapes).

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "mnist.npz")
    >>> x, y = np.zeros((4, 28, 28), np.uint8), np.array([3, 1, 4, 1], np.uint8)
    >>> np.savez(path, x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    >>> d = load_mnist(path)
    >>> d.x_train.shape, d.x_train.dtype, d.y_test.tolist()
    ((4, 1, 28, 28), dtype('float32'), [3, 1])
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
        image_file, label_file = _find_idx(path, split, "images"), _find_idx(path, split, "labels")
        images, labels = read_idx(image_file, IDX_IMAGES_MAGIC), read_idx(label_file, IDX_LABELS_MAGIC)
        splits += _mnist_split(images, labels, str(image_file), str(label_file))
    return _dataset(splits, str(path), "mnist")
