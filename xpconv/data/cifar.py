"""CIFAR-10 from files you already have: the binary version (tarball or extracted) or an ``.npz``.

Binary format (``cifar-10-binary.tar.gz`` from the CIFAR page, extracted to ``cifar-10-batches-bin/``):
``data_batch_1.bin`` .. ``data_batch_5.bin`` (train) and ``test_batch.bin``, each a sequence of records of
1 label byte (0..9) and 3,072 pixel bytes: the R, G and B planes of a 32x32 image, row-major.  The files are
read with ``np.frombuffer``; the tarball is read in memory with :mod:`tarfile`, nothing is extracted to disk.
No pickle is ever loaded (the Python version of CIFAR-10 is a pickle and is not supported).

Shapes: records (N, 3073) -> images (N, 3, 32, 32) float32 in [0, 1], labels (N,) int64.
"""
from __future__ import annotations

import os
import posixpath
import tarfile
import zlib
from pathlib import Path

import numpy as np

from .dataset import Dataset, check_labels, read_npz_splits, unit_images

__all__ = ["load_cifar10", "read_cifar10_bin", "parse_cifar10_records", "CIFAR10_TRAIN_FILES", "CIFAR10_TEST_FILE",
           "CIFAR10_CLASSES"]

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch.bin"
_FILES = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_SHAPE = (3, 32, 32)
_RECORD = 1 + 3 * 32 * 32                      # 3073 bytes: label, then R, G, B planes
_TARBALL, _FOLDER, _NPZ = "cifar-10-binary.tar.gz", "cifar-10-batches-bin", "cifar10.npz"


def parse_cifar10_records(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode the bytes of one CIFAR-10 binary batch file into uint8 images and int64 labels.

    Parameters
    ----------
    raw : bytes
        The file's content: ``N`` records of 3,073 bytes (label byte, then 3 planes of 32x32 pixels).
    where : str
        The file's name, to start every error message.

    Returns
    -------
    images : numpy.ndarray
        ``(N, 3, 32, 32)`` uint8.
    labels : numpy.ndarray
        ``(N,)`` int64 in 0..9.

    Raises
    ------
    ValueError
        Naming the file: empty, a length that is not a whole number of records (truncated or extra bytes),
        or a label byte above 9 (not a CIFAR-10 file, or a corrupt one).

    Examples
    --------
    >>> record = bytes([7]) + bytes(3072)
    >>> images, labels = parse_cifar10_records(record * 2, "demo.bin")
    >>> images.shape, images.dtype, labels.tolist()
    ((2, 3, 32, 32), dtype('uint8'), [7, 7])
    """
    if not raw or len(raw) % _RECORD:
        raise ValueError(f"{where}: {len(raw)} bytes is not a whole number of CIFAR-10 records of {_RECORD} bytes "
                         "(label byte + 3x32x32 pixels): the file is truncated, padded or not a CIFAR-10 batch")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _RECORD)
    labels = check_labels(records[:, 0], 10, where)
    return records[:, 1:].reshape(-1, *_SHAPE), labels


def read_cifar10_bin(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch file as images ``(N, 3, 32, 32)`` float32 in [0, 1] and labels ``(N,)`` int64.

    Parameters
    ----------
    path : str or os.PathLike
        A file such as ``cifar-10-batches-bin/data_batch_1.bin``.

    Returns
    -------
    images, labels : numpy.ndarray

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        Naming the file, as :func:`parse_cifar10_records`.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "test_batch.bin"
    >>> _ = path.write_bytes(bytes([3]) + bytes([255]) * 3072)
    >>> images, labels = read_cifar10_bin(path)
    >>> images.shape, float(images.max()), labels.tolist()
    ((1, 3, 32, 32), 1.0, [3])
    """
    images, labels = parse_cifar10_records(Path(path).read_bytes(), str(path))
    return unit_images(images, str(path)), labels


def _read_tarball(path: Path) -> dict[str, bytes]:
    """The six batch files of a CIFAR-10 binary tarball (any compression tarfile reads), by base name."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = posixpath.basename(member.name)
                if name in _FILES and member.isfile():
                    if name in found:
                        raise ValueError(f"{path}: holds {name} twice")
                    data = tar.extractfile(member)
                    found[name] = data.read() if data is not None else b""
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise ValueError(f"{path}: not a readable tar archive, it may be truncated or corrupt ({exc})") from None
    missing = [n for n in _FILES if n not in found]
    if missing:
        raise ValueError(f"{path}: not a CIFAR-10 binary archive, missing {missing}")
    return found


def _from_batches(read: dict[str, bytes], where: str) -> Dataset:
    parts = {name: parse_cifar10_records(raw, f"{where}{name}") for name, raw in read.items()}
    x_train = np.concatenate([parts[n][0] for n in CIFAR10_TRAIN_FILES])
    y_train = np.concatenate([parts[n][1] for n in CIFAR10_TRAIN_FILES])
    x_test, y_test = parts[CIFAR10_TEST_FILE]
    return Dataset(unit_images(x_train, where), y_train, unit_images(x_test, where), y_test, "cifar10")


def _cifar_npz_split(images: np.ndarray, labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) or (N, 3, 32, 32) images and (N,) or (N, 1) labels -> (N, 3, 32, 32) float32, (N,) int64."""
    if images.ndim == 4 and images.shape[1:] == (32, 32, 3):
        images = np.moveaxis(images, 3, 1)
    elif images.ndim != 4 or images.shape[1:] != _SHAPE:
        raise ValueError(f"{where}: images must have shape (N, 32, 32, 3) or (N, 3, 32, 32), got {images.shape}")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    labels = check_labels(labels, 10, where, count=images.shape[0])
    return np.ascontiguousarray(unit_images(images, where)), labels


def _load_npz(path: Path) -> Dataset:
    arrays = read_npz_splits(path, "CIFAR-10 .npz")
    x_train, y_train = _cifar_npz_split(arrays["x_train"], arrays["y_train"], f"{path} (train)")
    x_test, y_test = _cifar_npz_split(arrays["x_test"], arrays["y_test"], f"{path} (test)")
    return Dataset(x_train, y_train, x_test, y_test, "cifar10")


def _batch_folder(folder: Path) -> dict[str, bytes] | None:
    """The six batch files of ``folder``; None if it holds none of them, FileNotFoundError if only some."""
    present = [n for n in _FILES if (folder / n).is_file()]
    if not present:
        return None
    if len(present) < len(_FILES):
        missing = [n for n in _FILES if n not in present]
        raise FileNotFoundError(f"{folder}: CIFAR-10 batch files {missing} are missing (found {present})")
    return {n: (folder / n).read_bytes() for n in _FILES}


def load_cifar10(path: str | os.PathLike[str]) -> Dataset:
    """CIFAR-10 (50,000 train, 10,000 test images of 10 classes) from files you already have.

    Parameters
    ----------
    path : str or os.PathLike
        A file (``*.npz``: an ``.npz`` file; anything else: a tarball of the binary version), or a directory,
        searched in this order:

        1. the directory holds ``data_batch_1.bin`` .. ``data_batch_5.bin`` and ``test_batch.bin``
           (it is the extracted ``cifar-10-batches-bin``);
        2. its ``cifar-10-batches-bin/`` subdirectory holds them;
        3. ``cifar-10-binary.tar.gz`` (read in memory, not extracted);
        4. ``cifar10.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``: images uint8 (or floats in
           [0, 1]) in the layout ``(N, 32, 32, 3)`` (channels last, as ``keras.datasets.cifar10`` gives
           them) or ``(N, 3, 32, 32)``; labels ``(N,)`` or ``(N, 1)``.  Loaded with ``allow_pickle=False``.

    Returns
    -------
    Dataset
        Images ``(N, 3, 32, 32)`` float32 in [0, 1], labels ``(N,)`` int64, ``name="cifar10"``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist, holds none of the forms above, or only some of the six batch files.
    ValueError
        Naming the file: a truncated or padded batch file, a label above 9, an unreadable tarball or one
        without the six files, an ``.npz`` with missing keys, wrong shapes or dtypes, bad labels or
        mismatched counts (the rules of :mod:`xpconv.data.dataset`).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> for name in CIFAR10_TRAIN_FILES + (CIFAR10_TEST_FILE,):
    ...     _ = (folder / name).write_bytes((bytes([1]) + bytes(3072)) * 2)
    >>> d = load_cifar10(folder)
    >>> d.x_train.shape, d.x_test.shape, d.x_train.dtype, d.y_train.dtype
    ((10, 3, 32, 32), (2, 3, 32, 32), dtype('float32'), dtype('int64'))
    """
    path = Path(path)
    if path.is_file():
        return _load_npz(path) if path.suffix == ".npz" else _from_batches(_read_tarball(path), f"{path}:")
    if not path.is_dir():
        raise FileNotFoundError(f"CIFAR-10 path {path} does not exist")
    for folder in (path, path / _FOLDER):
        files = _batch_folder(folder)
        if files is not None:
            return _from_batches(files, f"{folder}{os.sep}")
    if (path / _TARBALL).is_file():
        return _from_batches(_read_tarball(path / _TARBALL), f"{path / _TARBALL}:")
    if (path / _NPZ).is_file():
        return _load_npz(path / _NPZ)
    raise FileNotFoundError(f"no CIFAR-10 files in {path}: looked for the six .bin files, {_FOLDER}/, {_TARBALL} "
                            f"and {_NPZ} (xpconv never downloads; get the binary version from "
                            "https://www.cs.toronto.edu/~kriz/cifar.html)")
