"""Corrupted files: a random truncation or byte corruption of an IDX file or of a CIFAR-10 binary batch
either raises a ValueError that names the file, or loads exactly what the corrupted bytes encode; a model
file's either raises that ValueError or loads what was saved (checkpoints: tests/test_checkpoint.py).

The property, precisely: the readers accept a file if and only if an independent decoder written here
(``struct`` for the IDX header, a loop over CIFAR records) says its bytes are a valid file of that kind, and
then return the arrays that decoder reads.  A flipped pixel byte is undetectable and legitimately loads
(with the flipped pixel); anything else (a wrong magic number, header sizes that disagree with the length, a
cut record, a label above 9, counts that do not match) must be a ValueError naming the file, never another
exception and never a silent success with other data.
"""
from __future__ import annotations

import re
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpconv.data import load_mnist, read_cifar10_bin

N_TRAIN, N_TEST, SIZE = 3, 2, 4
RECORD = 3073


def _damage():
    """A truncation at a random length, or 1..3 bytes set to random values."""
    cut = st.tuples(st.just("cut"), st.floats(0.0, 1.0, exclude_max=True))
    flips = st.tuples(st.just("set"), st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)),
                                               min_size=1, max_size=3))
    return st.one_of(cut, flips)


def _apply(raw: bytes, damage) -> bytes:
    kind, arg = damage
    if kind == "cut":
        return raw[:int(arg * len(raw))]
    out = bytearray(raw)
    for where, value in arg:
        out[int(where * len(out))] = value
    return bytes(out)


def _decode_idx_images(raw: bytes, count: int):
    """(count, H, W) uint8 images of an IDX image file, or None where it is not one (independent decoder)."""
    if len(raw) < 16 or raw[:4] != b"\x00\x00\x08\x03":
        return None
    n, h, w = struct.unpack(">III", raw[4:16])
    if n != count or len(raw) != 16 + n * h * w or (h, w) != (SIZE, SIZE):
        return None
    return np.array(list(raw[16:]), dtype=np.uint8).reshape(n, h, w)


def _idx(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), damage=_damage())
def test_corrupt_idx_images_file(seed, damage):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (N_TRAIN, SIZE, SIZE), dtype=np.uint8)
    labels = rng.integers(0, 10, N_TRAIN, dtype=np.uint8)
    test_images = rng.integers(0, 256, (N_TEST, SIZE, SIZE), dtype=np.uint8)
    test_labels = rng.integers(0, 10, N_TEST, dtype=np.uint8)
    raw = _apply(_idx(images, 0x803), damage)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        target = folder / "train-images-idx3-ubyte"
        target.write_bytes(raw)
        (folder / "train-labels-idx1-ubyte").write_bytes(_idx(labels, 0x801))
        (folder / "t10k-images-idx3-ubyte").write_bytes(_idx(test_images, 0x803))
        (folder / "t10k-labels-idx1-ubyte").write_bytes(_idx(test_labels, 0x801))
        expected = _decode_idx_images(raw, N_TRAIN)
        if expected is None:
            with pytest.raises(ValueError, match=re.escape(str(target))):
                load_mnist(folder)
            return
        data = load_mnist(folder)
    np.testing.assert_array_equal(data.x_train[:, 0], expected.astype(np.float32) / np.float32(255.0))
    np.testing.assert_array_equal(data.y_train, labels)


def _decode_cifar(raw: bytes):
    """(images (N, 3, 32, 32) uint8, labels) of a CIFAR-10 batch, or None where it is not one (independent)."""
    if not raw or len(raw) % RECORD:
        return None
    images, labels = [], []
    for start in range(0, len(raw), RECORD):
        if raw[start] > 9:
            return None
        labels.append(raw[start])
        images.append(np.array(list(raw[start + 1:start + RECORD]), dtype=np.uint8).reshape(3, 32, 32))
    return np.stack(images), np.array(labels)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), n=st.integers(1, 3), damage=_damage(),
       label=st.one_of(st.none(), st.tuples(st.integers(0, 2), st.integers(0, 255))))
def test_corrupt_cifar_batch_file(seed, n, damage, label):
    rng = np.random.default_rng(seed)
    raw = bytearray(b"".join(bytes([int(rng.integers(0, 10))]) + rng.integers(0, 256, 3072, dtype=np.uint8).tobytes()
                             for _ in range(n)))
    if label is not None:                               # also set a label byte (a random byte rarely is one)
        raw[(label[0] % n) * RECORD] = label[1]
    raw = _apply(bytes(raw), damage)
    expected = _decode_cifar(raw)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data_batch_1.bin"
        path.write_bytes(raw)
        if expected is None:
            with pytest.raises(ValueError, match=re.escape(str(path))):
                read_cifar10_bin(path)
            return
        images, labels = read_cifar10_bin(path)
    np.testing.assert_array_equal(images, expected[0].astype(np.float32) / np.float32(255.0))
    np.testing.assert_array_equal(labels, expected[1])


def _load(read):
    """(what ``read()`` returns, None), or (None, the message of the ValueError it raised); other errors propagate."""
    try:
        return read(), None
    except ValueError as exc:
        return None, str(exc)


def _small_model():
    from xpconv.models import small_cnn

    return small_cnn(channels=(2, 3), image_size=8, num_classes=3, seed=0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damage=_damage())
def test_corrupt_model_file(damage):
    """A damaged model file is a ValueError naming it, or (the damage fell where the zip format does not look,
    e.g. a timestamp) it loads the very arrays and metadata that were saved."""
    import xpconv

    model = _small_model()
    with tempfile.TemporaryDirectory() as tmp:
        good = xpconv.save(model, Path(tmp) / "good.npz", metadata={"note": "kept"})
        path = Path(tmp) / "model.npz"
        path.write_bytes(_apply(good.read_bytes(), damage))
        loaded, error = _load(lambda: (xpconv.load(path), xpconv.io.read_metadata(path)))
        if error is not None:
            assert str(path) in error
            return
        loaded, meta = loaded
    assert meta["extra"] == {"note": "kept"}
    assert meta["arch"] == model.arch
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value, strict=True)
