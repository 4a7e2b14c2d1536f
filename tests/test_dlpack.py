"""Moves between array libraries: zero-copy by DLPack on one device, an explicit copy between devices.

Every ordered pair of the backends available here is tried (conftest's ``BACKENDS``); CuPy and torch-CUDA
pairs run where a GPU is usable (marked ``gpu``).
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from conftest import BACKENDS, as_numpy, make_backend
from xpconv import nn, optim
from xpconv.backends import dlpack_device_of, to_numpy

PAIRS = [pytest.param(a.values[0], b.values[0], id=f"{a.id}->{b.id}", marks=[*a.marks, *b.marks])
         for a, b in itertools.permutations(BACKENDS, 2)]


def _same_device(source, target) -> bool:
    return source.dlpack_device == target.dlpack_device


def _write_first(backend, x, value):
    """x[0, 0] = value in x's own library (every library here has item assignment)."""
    x[0, 0] = backend.asarray(np.asarray(value, dtype=np.float32))


@pytest.mark.parametrize("source_spec,target_spec", PAIRS)
def test_move_shares_memory_on_one_device_and_copies_across_devices(source_spec, target_spec):
    source, target = make_backend(source_spec), make_backend(target_spec)
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    x = source.asarray(values, copy=True)
    y = target.asarray(x)
    assert type(y) is type(target.asarray(values)) and dlpack_device_of(y) == target.dlpack_device
    np.testing.assert_array_equal(to_numpy(y), values)              # identical either way
    _write_first(source, x, -1.0)
    moved = float(as_numpy(y)[0, 0])
    if _same_device(source, target):
        assert moved == -1.0, "a move on one device must share memory (DLPack)"
    else:
        assert moved == 0.0, "a move across devices is a copy"
    back = source.asarray(y)                                         # and back again
    np.testing.assert_array_equal(as_numpy(back), as_numpy(x))


@pytest.mark.parametrize("source_spec,target_spec", PAIRS)
def test_copy_true_and_a_new_dtype_never_share(source_spec, target_spec):
    source, target = make_backend(source_spec), make_backend(target_spec)
    x = source.asarray(np.zeros((2, 2), dtype=np.float32))
    copied, cast = target.asarray(x, copy=True), target.asarray(x, dtype="float64")
    _write_first(source, x, 5.0)
    assert float(as_numpy(copied)[0, 0]) == 0.0 and float(as_numpy(cast)[0, 0]) == 0.0


@pytest.mark.parametrize("target_spec", [p for p in BACKENDS if p.values[0] != "numpy"])
def test_read_only_and_flipped_numpy_arrays_are_copied(target_spec):
    target = make_backend(target_spec)
    frozen = np.arange(4.0)
    frozen.flags.writeable = False
    flipped = np.arange(4.0)[::-1]                      # negative strides: torch's from_dlpack would abort
    for x in (frozen, flipped):
        y = target.asarray(x)
        np.testing.assert_array_equal(to_numpy(y), x)
    y = target.asarray(flipped)
    flipped[0] = 9.0
    assert float(as_numpy(y)[0]) == 3.0


def _model(backend):
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, seed=0, backend=backend), nn.BatchNorm2d(2, backend=backend),
                         nn.Flatten(backend=backend), nn.Linear(2 * 4 * 4, 3, seed=1, backend=backend))


@pytest.mark.parametrize("source_spec,target_spec", PAIRS)
def test_module_to_moves_without_copy_and_gives_identical_results(source_spec, target_spec, rng):
    source, target = make_backend(source_spec), make_backend(target_spec)
    model = _model(source).eval()
    x = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    expected = as_numpy(model(source.asarray(x)))
    before = model.state_dict()
    old_weight = model[0].weight.data
    model.to(target)
    assert model.backend == target and model[0].backend == target
    got = as_numpy(model(target.asarray(x)))
    copied = _model(target).eval()                              # the same weights through host copies
    copied.load_state_dict(before)
    np.testing.assert_array_equal(got, as_numpy(copied(target.asarray(x, copy=True))))   # identical either way
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)                       # another library's math
    if _same_device(source, target):
        _write_first(source, old_weight[0, 0, ...], 7.0)          # the old array is the moved one's memory
        assert float(as_numpy(model[0].weight.data)[0, 0, 0, 0]) == 7.0
        _write_first(source, old_weight[0, 0, ...], float(before["0.weight"][0, 0, 0, 0]))
    # Training on the target never writes into the arrays the model held before the move.
    model.train()
    opt = optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(model(target.asarray(x)), np.array([0, 1]))
    model.backward(loss_fn.backward())
    opt.step()
    np.testing.assert_array_equal(as_numpy(old_weight), before["0.weight"])
    assert not np.array_equal(model.state_dict()["0.weight"], before["0.weight"])


def test_numpy_scalars_move_as_0d_arrays(backend):
    """A NumPy scalar (BatchNorm's counter becomes one on NumPy) has no DLPack: it moves as a 0-d array."""
    y = backend.asarray(np.int64(3))
    assert tuple(y.shape) == () and int(as_numpy(y)) == 3
