"""DataLoader, the digits split and the MNIST readers (on small files written here; nothing is downloaded)."""
from __future__ import annotations

import gzip
import struct
import sys

import numpy as np
import pytest
from array_api_compat import array_namespace, device

from conftest import as_numpy
from xpconv.data import DataLoader, load_dataset, load_digits, load_mnist, read_idx


# -- DataLoader ------------------------------------------------------------------------------------
def _toy(n=10):
    x = np.arange(n * 4, dtype=np.float64).reshape(n, 1, 2, 2)
    y = np.arange(n) % 3
    return x, y


def test_loader_batches_on_backend(backend):
    x, y = _toy()
    x_before = x.copy()
    loader = DataLoader(x, y, batch_size=4, seed=0, backend=backend)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [tuple(b[0].shape) for b in batches] == [(4, 1, 2, 2), (4, 1, 2, 2), (2, 1, 2, 2)]
    probe = backend.asarray([0.0], dtype="float32")
    for xb, yb in batches:
        assert array_namespace(xb) is array_namespace(probe) and device(xb) == device(probe)
        assert xb.dtype == probe.dtype
        assert backend.xp.isdtype(yb.dtype, "integral")
    xs = np.concatenate([as_numpy(b[0]) for b in batches])
    ys = np.concatenate([as_numpy(b[1]) for b in batches])
    order = (xs[:, 0, 0, 0] // 4).astype(int)          # sample index from its first pixel
    assert sorted(order) == list(range(10)) and order.tolist() != list(range(10))
    np.testing.assert_array_equal(ys, y[order])          # labels travel with their images
    np.testing.assert_array_equal(x, x_before)


def test_loader_seeded_shuffle():
    x, y = _toy(50)

    def epochs(seed, n=2):
        loader = DataLoader(x, y, batch_size=7, seed=seed)
        return [[*np.concatenate([b[1] for b in loader]).tolist(), -1] for _ in range(n)]

    a, b = epochs(3), epochs(3)
    assert a == b                        # same seed, same batches, epoch after epoch
    assert a[0] != a[1]                  # a new order each epoch
    assert epochs(4) != a


def test_loader_no_shuffle_and_drop_last():
    x, y = _toy(10)
    loader = DataLoader(x, y, batch_size=4, shuffle=False, drop_last=True)
    got = [b[1].tolist() for b in loader]
    assert got == [y[:4].tolist(), y[4:8].tolist()] and len(loader) == 2


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(x=np.zeros((3, 2)), y=np.zeros(4, dtype=int)), ValueError, "same length"),
    (dict(x=np.zeros((3, 2)), y=np.zeros(3)), TypeError, "integers"),
    (dict(x=np.zeros((0, 2)), y=np.zeros(0, dtype=int)), ValueError, "empty"),
    (dict(x=np.zeros((3, 2)), y=np.zeros(3, dtype=int), batch_size=0), ValueError, "batch_size"),
])
def test_loader_rejects_bad_input(kwargs, err, match):
    with pytest.raises(err, match=match):
        DataLoader(**kwargs)


# -- digits ----------------------------------------------------------------------------------------
def test_digits_split():
    d = load_digits(test_size=0.25, seed=1)
    assert d.x_train.shape[1:] == (1, 8, 8) and d.x_train.dtype == np.float32
    assert d.y_train.dtype == np.int64
    assert len(d.x_train) + len(d.x_test) == 1797 and len(d.x_test) == 450
    assert d.x_train.min() >= 0.0 and d.x_train.max() == 1.0
    # stratified: every class is represented in the test set in proportion (within one sample)
    total = np.bincount(np.concatenate([d.y_train, d.y_test]), minlength=10)
    assert np.all(np.abs(np.bincount(d.y_test, minlength=10) - total * 0.25) <= 1)
    # no image is in both splits
    train_rows = {r.tobytes() for r in d.x_train}
    assert sum(r.tobytes() in train_rows for r in d.x_test) <= 5   # the digits set holds a few duplicate images
    again, other = load_digits(test_size=0.25, seed=1), load_digits(test_size=0.25, seed=2)
    np.testing.assert_array_equal(again.y_test, d.y_test)
    assert not np.array_equal(other.y_test, d.y_test)


def test_digits_bad_test_size_and_missing_sklearn(monkeypatch):
    with pytest.raises(ValueError, match="test_size"):
        load_digits(test_size=1.5)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r'pip install "xpconv\[examples\]"'):
        load_digits()


# -- IDX / MNIST -------------------------------------------------------------------------------------
def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An IDX file written by hand: big-endian magic, sizes, then the raw uint8 data."""
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def _mnist_arrays(rng, n_train=12, n_test=5, size=4):
    return (rng.integers(0, 256, (n_train, size, size), dtype=np.uint8), rng.integers(0, 10, n_train, dtype=np.uint8),
            rng.integers(0, 256, (n_test, size, size), dtype=np.uint8), rng.integers(0, 10, n_test, dtype=np.uint8))


def _write_idx_dir(tmp_path, arrays, gz=(True, False, False, True)):
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    for name, a, zipped in zip(names, arrays, gz, strict=True):
        data = _idx_bytes(a, 0x803 if a.ndim == 3 else 0x801)
        (tmp_path / (name + ".gz" if zipped else name)).write_bytes(gzip.compress(data) if zipped else data)
    return tmp_path


def _check_mnist(d, arrays):
    xtr, ytr, xte, yte = arrays
    assert d.x_train.shape == (len(xtr), 1, *xtr.shape[1:]) and d.x_train.dtype == np.float32
    np.testing.assert_allclose(d.x_train[:, 0], xtr / 255.0, rtol=1e-6)
    np.testing.assert_allclose(d.x_test[:, 0], xte / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(d.y_train, ytr)
    np.testing.assert_array_equal(d.y_test, yte)
    assert d.y_train.dtype == np.int64


def test_mnist_idx_dir_gzip_or_not(tmp_path, rng):
    arrays = _mnist_arrays(rng)
    _check_mnist(load_mnist(_write_idx_dir(tmp_path, arrays)), arrays)


def test_mnist_npz(tmp_path, rng):
    arrays = _mnist_arrays(rng)
    np.savez(tmp_path / "mnist.npz", **dict(zip(["x_train", "y_train", "x_test", "y_test"], arrays, strict=True)))
    _check_mnist(load_mnist(tmp_path), arrays)
    _check_mnist(load_mnist(tmp_path / "mnist.npz"), arrays)


def test_read_idx_other_types(tmp_path):
    data = np.array([[1.5, -2.0], [3.25, 4.0]], dtype=">f4")
    (tmp_path / "f.idx").write_bytes(b"\x00\x00\x0d\x02" + struct.pack(">II", 2, 2) + data.tobytes())
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx"), data.astype(np.float32))


@pytest.mark.parametrize("damage,match", [
    (lambda b: b[:-3], "truncated"),
    (lambda b: b + b"\x00", "extra bytes"),
    (lambda b: b[:6], "truncated IDX header"),
    (lambda b: b[:2], "truncated IDX file"),
    (lambda b: b"\x12\x34" + b[2:], "not an IDX file"),
    (lambda b: b[:3] + b"\x01" + b[4:], "magic number 0x00000801, expected 0x00000803"),
])
def test_corrupt_idx(tmp_path, rng, damage, match):
    arrays = _mnist_arrays(rng)
    _write_idx_dir(tmp_path, arrays, gz=(False,) * 4)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=match):
        load_mnist(tmp_path)


def test_corrupt_gzip_and_inconsistent_files(tmp_path, rng):
    arrays = _mnist_arrays(rng)
    _write_idx_dir(tmp_path, arrays)
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    good = gz.read_bytes()
    gz.write_bytes(good[:len(good) // 2])
    with pytest.raises(ValueError, match="gzip"):
        load_mnist(tmp_path)
    gz.write_bytes(good)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(arrays[3][:-1], 0x801)))
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        load_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(arrays[3] + 10, 0x801)))
    with pytest.raises(ValueError, match=r"0\.\.9"):
        load_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path)


def test_corrupt_npz(tmp_path, rng):
    arrays = _mnist_arrays(rng)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=arrays[0], y_train=arrays[1], x_test=arrays[2])
    with pytest.raises(ValueError, match=r"missing keys \['y_test'\]"):
        load_mnist(path)
    np.savez(path, **dict(zip(["x_train", "y_train", "x_test", "y_test"], arrays, strict=True)))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_mnist(path)
    with pytest.raises(FileNotFoundError):
        load_mnist(tmp_path / "nowhere")


def test_load_dataset(tmp_path, rng):
    arrays = _mnist_arrays(rng)
    _write_idx_dir(tmp_path, arrays)
    a, b = load_dataset("mnist", tmp_path, seed=5), load_dataset("mnist", tmp_path, seed=5)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert sorted(a.y_train.tolist()) == sorted(arrays[1].tolist())
    assert load_dataset("digits").x_train.shape[1:] == (1, 8, 8)
    with pytest.raises(ValueError, match="--data-dir"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="limit"):
        a.subset(0)
    assert len(a.subset(3).x_train) == 3 and len(a.subset(3).x_test) == 3
