"""On-device augmentation: crops are windows of the zero-padded image, flips are mirror images, seeded, and the
same on every backend (checked against NumPy loops written here)."""
from __future__ import annotations

import numpy as np
import pytest
from array_api_compat import array_namespace, device
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import as_numpy
from xpconv.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    Compose,
    DataLoader,
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


def _images(rng, n=6, c=3, h=7, w=5):
    return (rng.random((n, c, h, w)) + 0.5).astype(np.float32)      # no zeros: padding is recognisable


def _windows(padded, size):
    """Every (top, left) whose window of ``padded`` (C, Hp, Wp) has shape ``size``."""
    th, tw = size
    return [(t, c) for t in range(padded.shape[1] - th + 1) for c in range(padded.shape[2] - tw + 1)]


def test_random_crop_gives_windows_of_the_padded_image(backend, rng):
    x = _images(rng, n=20)
    out = as_numpy(RandomCrop((6, 4), padding=2, seed=0)(backend.asarray(x)))
    assert out.shape == (20, 3, 6, 4)
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    offsets = set()
    for img, ref in zip(out, padded, strict=True):
        hits = [(t, c) for t, c in _windows(ref, (6, 4)) if np.array_equal(ref[:, t:t + 6, c:c + 4], img)]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 5                         # the windows differ from image to image


def test_flip_gives_the_image_or_its_mirror(backend, rng):
    x = _images(rng, n=32)
    out = as_numpy(RandomHorizontalFlip(seed=1)(backend.asarray(x)))
    mirrored = [np.array_equal(o, i[:, :, ::-1]) for o, i in zip(out, x, strict=True)]
    kept = [np.array_equal(o, i) for o, i in zip(out, x, strict=True)]
    assert all(m != k for m, k in zip(mirrored, kept, strict=True))
    assert 0 < sum(mirrored) < 32
    assert np.array_equal(as_numpy(RandomHorizontalFlip(p=0.0)(backend.asarray(x))), x)


def _pipeline(seed):
    return Compose([RandomCrop(5, padding=2, seed=seed), RandomHorizontalFlip(seed=seed + 1),
                    Normalize([0.1, 0.2, 0.3], [0.5, 0.25, 2.0])])


def test_same_seed_same_batch_on_every_backend(backend, rng):
    x = _images(rng, n=16)
    ref = _pipeline(4)(x)                                       # on NumPy
    t = _pipeline(4)
    got = t(backend.asarray(x))
    probe = backend.asarray(np.zeros(1, np.float32))
    assert array_namespace(got) is array_namespace(probe) and device(got) == device(probe)
    assert got.dtype == probe.dtype
    np.testing.assert_allclose(as_numpy(got), ref, rtol=1e-6, atol=1e-6)
    assert not np.allclose(as_numpy(t(backend.asarray(x))), ref)             # the next call draws anew
    assert not np.allclose(_pipeline(5)(x), ref)


def test_state_dict_replays_the_draws(backend, rng):
    x = backend.asarray(_images(rng))
    t = _pipeline(0)
    t(x)
    state = t.state_dict()
    a = as_numpy(t(x))
    fresh = _pipeline(99)
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(as_numpy(fresh(x)), a)
    with pytest.raises(ValueError, match="holds 3 transforms"):
        Compose([]).load_state_dict(state)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 4), c=st.integers(1, 3), h=st.integers(1, 6), w=st.integers(1, 6), data=st.data())
def test_crop_and_flip_match_loops(n, c, h, w, data):
    x = np.arange(n * c * h * w, dtype=np.float64).reshape(n, c, h, w)
    th, tw = data.draw(st.integers(1, h)), data.draw(st.integers(1, w))
    top = data.draw(st.lists(st.integers(0, h - th), min_size=n, max_size=n))
    left = data.draw(st.lists(st.integers(0, w - tw), min_size=n, max_size=n))
    expected = np.stack([x[i, :, top[i]:top[i] + th, left[i]:left[i] + tw] for i in range(n)])
    np.testing.assert_array_equal(crop(x, top, left, (th, tw)), expected)
    bits = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    expected = np.stack([x[i, :, :, ::-1] if bits[i] else x[i] for i in range(n)])
    np.testing.assert_array_equal(hflip(x, np.array(bits)), expected)


def test_pad_and_normalize_on_backend(backend, rng):
    x = _images(rng)
    xb = backend.asarray(x)
    np.testing.assert_array_equal(as_numpy(pad2d(xb, 3)), np.pad(x, ((0, 0), (0, 0), (3, 3), (3, 3))))
    mean, std = [0.5, -1.0, 2.0], [2.0, 0.5, 1.0]
    ref = (x - np.array(mean, np.float32)[:, None, None]) / np.array(std, np.float32)[:, None, None]
    np.testing.assert_allclose(as_numpy(normalize(xb, mean, std)), ref, rtol=1e-6)
    np.testing.assert_array_equal(x, as_numpy(xb))                          # the input is not modified


def test_loader_applies_the_transform_on_the_device(backend, rng):
    x, y = _images(rng, n=10), np.arange(10)
    batches = list(DataLoader(x, y, batch_size=4, seed=0, backend=backend, transform=RandomCrop(3, seed=0)))
    assert [tuple(b[0].shape) for b in batches] == [(4, 3, 3, 3), (4, 3, 3, 3), (2, 3, 3, 3)]
    assert array_namespace(batches[0][0]) is backend.xp


def test_channel_stats_and_constants(rng):
    x = rng.random((50, 3, 4, 4)).astype(np.float32)
    mean, std = channel_stats(x, chunk=7)
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, x.astype(np.float64).std(axis=(0, 2, 3)), rtol=1e-12)
    assert len(CIFAR10_MEAN) == len(CIFAR10_STD) == 3


def test_augmentation_recipes():
    t = augmentation("cifar10", seed=0)
    assert [type(s) for s in t.transforms] == [RandomCrop, RandomHorizontalFlip]
    assert t.transforms[0].size == (32, 32) and t.transforms[0].padding == 4
    assert [type(s) for s in augmentation("mnist5k").transforms] == [RandomCrop]
    with pytest.raises(ValueError, match="no augmentation"):
        augmentation("imagenet")


@pytest.mark.parametrize("call,err,match", [
    (lambda x: RandomCrop(20, padding=1)(x), ValueError, "larger than the padded images"),
    (lambda x: RandomCrop(3, padding=-1), ValueError, "padding"),
    (lambda x: RandomHorizontalFlip(p=1.5), ValueError, "p must lie"),
    (lambda x: Normalize([0.5], [0.5])(x), ValueError, "one value per channel"),
    (lambda x: Normalize([0.5] * 3, [0.5, 0.0, 1.0]), ValueError, "std"),
    (lambda x: crop(x, [0] * 6, [0] * 5, 2), ValueError, "left must be 6 integers"),
    (lambda x: crop(x, [9] * 6, [0] * 6, 2), ValueError, "top must be 6 integers in 0..5"),
    (lambda x: hflip(x, [1] * 6), ValueError, "booleans"),
    (lambda x: pad2d(x[0], 1), ValueError, r"\(N, C, H, W\)"),
    (lambda x: Compose([1]), TypeError, "callables"),
])
def test_bad_arguments(rng, call, err, match):
    with pytest.raises(err, match=match):
        call(_images(rng))
