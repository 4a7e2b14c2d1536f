"""CIFAR-10 readers on small files written here (binary batches, the tarball, .npz); nothing is downloaded."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from xpconv.data import load_cifar10, load_dataset, read_cifar10_bin

NAMES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def cifar_records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """The binary format written independently: per image, the label byte then R, G, B planes row by row."""
    out = bytearray()
    for img, label in zip(images, labels, strict=True):        # img (3, 32, 32) uint8
        out.append(int(label))
        for plane in img:
            for row in plane:
                out += bytes(int(v) for v in row)
    return bytes(out)


def make_batches(rng, per_file=(3, 2, 1, 2, 3, 4)):
    return {name: (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8))
            for name, n in zip(NAMES, per_file, strict=True)}


def write_folder(folder, batches):
    folder.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in batches.items():
        (folder / name).write_bytes(cifar_records(x, y))
    return folder


def write_tarball(path, batches, prefix="cifar-10-batches-bin/"):
    with tarfile.open(path, "w:gz") as tar:
        for name, (x, y) in batches.items():
            data = cifar_records(x, y)
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def check(d, batches):
    xtr = np.concatenate([batches[n][0] for n in NAMES[:5]])
    ytr = np.concatenate([batches[n][1] for n in NAMES[:5]])
    assert d.name == "cifar10" and d.x_train.shape == (len(xtr), 3, 32, 32) and d.x_train.dtype == np.float32
    assert d.y_train.dtype == np.int64
    np.testing.assert_allclose(d.x_train, xtr / 255.0, rtol=1e-6)
    np.testing.assert_allclose(d.x_test, batches[NAMES[5]][0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(d.y_train, ytr)
    np.testing.assert_array_equal(d.y_test, batches[NAMES[5]][1])


def test_extracted_folder_itself_or_inside(tmp_path, rng):
    batches = make_batches(rng)
    write_folder(tmp_path / "cifar-10-batches-bin", batches)
    check(load_cifar10(tmp_path), batches)
    check(load_cifar10(tmp_path / "cifar-10-batches-bin"), batches)


def test_tarball_read_without_extracting(tmp_path, rng):
    batches = make_batches(rng)
    write_tarball(tmp_path / "cifar-10-binary.tar.gz", batches)
    check(load_cifar10(tmp_path), batches)
    check(load_cifar10(tmp_path / "cifar-10-binary.tar.gz"), batches)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-binary.tar.gz"]      # nothing extracted


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_npz_layouts(tmp_path, rng, layout):
    batches = make_batches(rng)
    xtr = np.concatenate([batches[n][0] for n in NAMES[:5]])
    ytr = np.concatenate([batches[n][1] for n in NAMES[:5]])
    xte, yte = batches[NAMES[5]]
    to = (lambda a: a.transpose(0, 2, 3, 1)) if layout == "nhwc" else (lambda a: a)
    np.savez(tmp_path / "cifar10.npz", x_train=to(xtr), y_train=ytr[:, None], x_test=to(xte), y_test=yte)
    check(load_cifar10(tmp_path), batches)


def test_search_order_and_load_dataset(tmp_path, rng):
    first, second = make_batches(rng), make_batches(rng)
    write_folder(tmp_path / "cifar-10-batches-bin", first)
    write_tarball(tmp_path / "cifar-10-binary.tar.gz", second)
    check(load_cifar10(tmp_path), first)                      # the extracted folder comes before the tarball
    a = load_dataset("cifar10", tmp_path, seed=3)
    assert sorted(a.y_train.tolist()) == sorted(load_cifar10(tmp_path).y_train.tolist())
    np.testing.assert_array_equal(a.y_train, load_dataset("cifar10", tmp_path, seed=3).y_train)


def test_read_one_batch(tmp_path, rng):
    x, y = make_batches(rng)["test_batch.bin"]
    (tmp_path / "b.bin").write_bytes(cifar_records(x, y))
    images, labels = read_cifar10_bin(tmp_path / "b.bin")
    np.testing.assert_allclose(images, x / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(labels, y)


@pytest.mark.parametrize("damage,match", [
    (lambda b: b[:-1], "not a whole number of CIFAR-10 records"),
    (lambda b: b + b"\x00", "not a whole number of CIFAR-10 records"),
    (lambda b: b"", "0 bytes"),
    (lambda b: bytes([10]) + b[1:], r"labels must lie in 0\.\.9"),
])
def test_corrupt_batch_file(tmp_path, rng, damage, match):
    folder = write_folder(tmp_path, make_batches(rng))
    path = folder / "data_batch_3.bin"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=match) as info:
        load_cifar10(folder)
    assert "data_batch_3.bin" in str(info.value)


def test_missing_and_corrupt_archives(tmp_path, rng):
    batches = make_batches(rng)
    folder = write_folder(tmp_path / "f", batches)
    (folder / "test_batch.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"test_batch\.bin"):
        load_cifar10(folder)
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 files"):
        load_cifar10(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cifar10(tmp_path / "nowhere")
    tarball = write_tarball(tmp_path / "t.tar.gz", batches)
    good = tarball.read_bytes()
    tarball.write_bytes(good[:len(good) // 2])
    with pytest.raises(ValueError, match=r"t\.tar\.gz: not a readable tar archive"):
        load_cifar10(tarball)
    write_tarball(tarball, {k: v for k, v in batches.items() if k != "data_batch_2.bin"})
    with pytest.raises(ValueError, match=r"missing \['data_batch_2.bin'\]"):
        load_cifar10(tarball)


@pytest.mark.parametrize("change,match", [
    (dict(x_train=np.zeros((2, 32, 32, 4), np.uint8)), r"\(N, 32, 32, 3\) or \(N, 3, 32, 32\)"),
    (dict(x_train=np.full((2, 3, 32, 32), 2.0)), r"float images must already lie in \[0, 1\]"),
    (dict(y_train=np.array([1, 11])), r"0\.\.9"),
    (dict(y_train=np.array([1.0, np.nan])), "labels must be integers"),
    (dict(y_train=np.array([1, 2, 3])), "2 images but 3 labels"),
    (dict(y_test=None), r"missing keys \['y_test'\]"),
])
def test_npz_contents_checked(tmp_path, change, match):
    arrays = dict(x_train=np.zeros((2, 3, 32, 32), np.uint8), y_train=np.array([0, 1]),
                  x_test=np.zeros((1, 32, 32, 3), np.uint8), y_test=np.array([[9]]))
    arrays.update(change)
    np.savez(tmp_path / "c.npz", **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(ValueError, match=match) as info:
        load_cifar10(tmp_path / "c.npz")
    assert "c.npz" in str(info.value)


def test_npz_with_pickled_objects_is_refused(tmp_path):
    np.savez(tmp_path / "p.npz", x_train=np.array([{"a": 1}], dtype=object), y_train=np.zeros(1),
             x_test=np.zeros(1), y_test=np.zeros(1))
    with pytest.raises(ValueError, match=r"p\.npz"):
        load_cifar10(tmp_path / "p.npz")
