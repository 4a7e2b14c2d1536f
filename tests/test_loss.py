"""CrossEntropyLoss: value and gradient against torch and finite differences, stability, label checks."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import HAS_TORCH, as_numpy
from layer_check import numeric_grad, torch_leaf
from xpconv import nn


def _labels(backend, values):
    return backend.asarray(np.asarray(values, dtype=np.int64))


def test_gradient_by_finite_differences(backend, rng):
    logits, labels = rng.standard_normal((4, 5)), np.array([0, 4, 2, 2])
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(backend.asarray(logits), _labels(backend, labels))
    grad = as_numpy(loss_fn.backward())
    numeric = numeric_grad(lambda z: loss_fn(backend.asarray(z), _labels(backend, labels)), logits)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_value_and_gradient_match_torch(backend, rng):
    import torch

    logits, labels = rng.standard_normal((6, 3)) * 4, np.array([0, 1, 2, 1, 0, 2])
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(backend.asarray(logits), _labels(backend, labels))
    zt = torch_leaf(logits)
    ref = torch.nn.functional.cross_entropy(zt, torch.from_numpy(labels))
    ref.backward()
    assert isinstance(loss, float)
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(as_numpy(loss_fn.backward()), zt.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_stable_for_huge_logits(backend):
    logits = np.array([[1000.0, 0.0, -1000.0], [-5000.0, 5000.0, 4990.0]], dtype=np.float32)
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(backend.asarray(logits), _labels(backend, [1, 2]))
    # -log softmax from the definition, in float64 with np.logaddexp: [1000, 10 + log(1 + e^-10)]
    expected = np.mean([np.logaddexp.reduce(row.astype(np.float64)) - row[k]
                        for row, k in zip(logits, [1, 2], strict=True)])
    assert np.isfinite(loss) and loss == pytest.approx(expected, rel=1e-6)
    grad = loss_fn.backward()
    assert grad.dtype == backend.xp.float32 and np.all(np.isfinite(as_numpy(grad)))


def test_numpy_and_list_labels_are_copied_to_the_logits_backend(backend, rng):
    logits = backend.asarray(rng.standard_normal((3, 4)))
    loss_fn = nn.CrossEntropyLoss()
    expected = loss_fn(logits, _labels(backend, [3, 0, 1]))
    assert loss_fn(logits, np.array([3, 0, 1], dtype=np.int32)) == expected
    assert loss_fn(logits, [3, 0, 1]) == expected


@pytest.mark.parametrize("labels", [[0, 1, 3], [-1, 0, 1]])
def test_rejects_labels_out_of_range(backend, labels):
    logits = backend.xp.zeros((3, 3), dtype=backend.xp.float32, device=backend.device)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        nn.CrossEntropyLoss()(logits, _labels(backend, labels))


def test_rejects_float_labels_and_bad_shapes(backend):
    xp = backend.xp
    logits = xp.zeros((2, 3), dtype=xp.float32, device=backend.device)
    loss_fn = nn.CrossEntropyLoss()
    with pytest.raises(TypeError, match="labels must be integers"):
        loss_fn(logits, backend.asarray(np.array([0.0, 1.0])))
    with pytest.raises(TypeError, match="labels must be integers"):
        loss_fn(logits, [0.0, 1.0])
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        loss_fn(logits, _labels(backend, [0, 1, 1]))
    with pytest.raises(ValueError, match=r"logits must have shape \(N, C\)"):
        loss_fn(xp.zeros((2, 3, 1), dtype=xp.float32, device=backend.device), _labels(backend, [0, 1]))
    with pytest.raises(TypeError, match="real floating"):
        loss_fn(_labels(backend, [[0, 1]]), _labels(backend, [0]))
    with pytest.raises(RuntimeError, match="needs a preceding"):
        nn.CrossEntropyLoss().backward()


def test_rejects_labels_from_another_array_library(backend):
    if backend.name == "numpy":
        pytest.skip("NumPy labels are accepted on every backend; this checks the other direction")
    logits = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(TypeError, match="pass labels of the same library or NumPy"):
        nn.CrossEntropyLoss()(logits, _labels(backend, [0, 1]))
