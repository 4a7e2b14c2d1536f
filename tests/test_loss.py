"""CrossEntropyLoss: value and gradient against torch and finite differences, stability, label checks."""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import HAS_TORCH, as_numpy
from layer_check import numeric_grad, torch_leaf
from xpconv import nn
from xpconv.backends import library_of


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
def test_rejects_host_labels_out_of_range(backend, labels):
    logits = backend.xp.zeros((3, 3), dtype=backend.xp.float32, device=backend.device)
    for host in (labels, np.array(labels)):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
            nn.CrossEntropyLoss()(logits, host)


@pytest.mark.parametrize("labels", [[0, 1, 3], [-1, 0, 1]])
def test_device_labels_out_of_range_give_nan_without_a_host_read(backend, labels):
    """Labels on the device are not read back: the bad sample's loss is NaN, the others are right."""
    logits = backend.asarray(np.arange(9.0).reshape(3, 3), dtype="float32")
    device_labels = backend.asarray(np.array(labels))
    if library_of(device_labels) == "numpy":
        pytest.skip("NumPy labels are host labels, checked on the host")
    per_sample = as_numpy(nn.CrossEntropyLoss(reduction="none")(logits, device_labels))
    good = [i for i, label in enumerate(labels) if 0 <= label < 3]
    fixed = [labels[i] if i in good else 0 for i in range(3)]
    expected = as_numpy(nn.CrossEntropyLoss(reduction="none")(logits, fixed))
    assert np.isnan(per_sample[[i for i in range(3) if i not in good]]).all()
    np.testing.assert_allclose(per_sample[good], expected[good], rtol=1e-6)
    assert np.isnan(nn.CrossEntropyLoss()(logits, device_labels))


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


# -- reductions, weights, label smoothing; MSELoss and BCEWithLogitsLoss ------------------------------------
def _ce(weight=None, **kw):
    return nn.CrossEntropyLoss(weight, **kw)


# (id, xpconv loss factory(backend), torch functional, target maker(rng, input shape), input shape)
LOSS_CASES = [
    ("ce-weight-smooth", lambda r: _ce([0.5, 2.0, 1.0, 0.0], reduction=r, label_smoothing=0.2),
     lambda torch, z, t, r: torch.nn.functional.cross_entropy(
         z, t, weight=torch.tensor([0.5, 2.0, 1.0, 0.0], dtype=torch.float64), reduction=r, label_smoothing=0.2),
     lambda rng, shape: rng.integers(0, shape[1], shape[0]), (5, 4)),
    ("ce-smooth", lambda r: _ce(reduction=r, label_smoothing=0.1),
     lambda torch, z, t, r: torch.nn.functional.cross_entropy(z, t, reduction=r, label_smoothing=0.1),
     lambda rng, shape: rng.integers(0, shape[1], shape[0]), (5, 4)),
    ("mse", lambda r: nn.MSELoss(reduction=r),
     lambda torch, z, t, r: torch.nn.functional.mse_loss(z, t, reduction=r),
     lambda rng, shape: rng.standard_normal(shape), (3, 2, 4)),
    ("bce", lambda r: nn.BCEWithLogitsLoss(reduction=r),
     lambda torch, z, t, r: torch.nn.functional.binary_cross_entropy_with_logits(z, t, reduction=r),
     lambda rng, shape: rng.uniform(0, 1, shape), (3, 4)),
    ("bce-pos-weight", lambda r: nn.BCEWithLogitsLoss(reduction=r, pos_weight=[0.5, 1.0, 2.0, 3.0]),
     lambda torch, z, t, r: torch.nn.functional.binary_cross_entropy_with_logits(
         z, t, reduction=r, pos_weight=torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)),
     lambda rng, shape: rng.uniform(0, 1, shape), (3, 4)),
]
LOSS_IDS = [c[0] for c in LOSS_CASES]


def _target(backend, t):
    return _labels(backend, t) if t.dtype.kind == "i" else backend.asarray(t)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name, make, ref, target, shape", LOSS_CASES, ids=LOSS_IDS)
def test_losses_match_torch(backend, rng, name, make, ref, target, shape, reduction):
    import torch

    z, t = 3 * rng.standard_normal(shape), target(rng, shape)
    loss_fn = make(reduction)
    loss = loss_fn(backend.asarray(z), _target(backend, t))
    zt = torch_leaf(z)
    expected = ref(torch, zt, torch.from_numpy(t), reduction)
    g = rng.standard_normal(tuple(expected.shape)) if reduction == "none" else 0.7
    expected.backward(torch.tensor(g, dtype=torch.float64))
    if reduction == "none":
        assert loss.dtype == backend.xp.float64
        np.testing.assert_allclose(as_numpy(loss), expected.detach().numpy(), rtol=1e-10, atol=1e-14)
        grad = loss_fn.backward(backend.asarray(g))
    else:
        assert isinstance(loss, float) and loss == pytest.approx(expected.item(), rel=1e-10)
        grad = loss_fn.backward(g)
    np.testing.assert_allclose(as_numpy(grad), zt.grad.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name, make, ref, target, shape", LOSS_CASES, ids=LOSS_IDS)
def test_losses_by_finite_differences(backend, rng, name, make, ref, target, shape, reduction):
    z, t = 3 * rng.standard_normal(shape), target(rng, shape)
    loss_fn = make(reduction)
    r = None

    def value(zv) -> float:
        out = loss_fn(backend.asarray(zv), _target(backend, t))
        return float(np.sum(as_numpy(out) * r)) if reduction == "none" else out

    out = loss_fn(backend.asarray(z), _target(backend, t))
    if reduction == "none":
        r = rng.standard_normal(tuple(out.shape))
        grad = loss_fn.backward(backend.asarray(r))
    else:
        grad = loss_fn.backward()
    np.testing.assert_allclose(as_numpy(grad), numeric_grad(value, z), rtol=1e-6, atol=1e-9)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_empty_batch_and_zero_weight_give_nan_as_in_torch(backend):
    import torch

    xp = backend.xp
    empty = xp.zeros((0, 3), dtype=xp.float64, device=backend.device)
    for loss_fn, target in ((nn.CrossEntropyLoss(), _labels(backend, np.zeros(0, dtype=np.int64))),
                            (nn.MSELoss(), empty), (nn.BCEWithLogitsLoss(), empty)):
        assert math.isnan(loss_fn(empty, target))
        assert tuple(loss_fn.backward().shape) == (0, 3)
    assert nn.CrossEntropyLoss(reduction="sum")(empty, []) == 0.0
    assert tuple(nn.CrossEntropyLoss(reduction="none")(empty, []).shape) == (0,)
    z = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    ref = torch.nn.CrossEntropyLoss(weight=torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64))(z, torch.tensor([0, 0]))
    ref.backward()
    loss_fn = nn.CrossEntropyLoss([0.0, 1.0, 1.0])
    assert math.isnan(loss_fn(xp.zeros((2, 3), dtype=xp.float64, device=backend.device), [0, 0]))
    assert math.isnan(ref.item())
    np.testing.assert_array_equal(np.isnan(as_numpy(loss_fn.backward())), np.isnan(z.grad.numpy()))


def test_loss_arguments_and_backward_checks(backend):
    xp = backend.xp
    z = xp.zeros((2, 3), dtype=xp.float32, device=backend.device)
    for bad in ("avg", None):
        with pytest.raises(ValueError, match="reduction must be one of"):
            nn.MSELoss(reduction=bad)
    with pytest.raises(ValueError, match="label_smoothing"):
        nn.CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="weight must be 1-D"):
        nn.CrossEntropyLoss([[1.0, 2.0]])
    with pytest.raises(TypeError, match="weight must be an array"):
        nn.CrossEntropyLoss("1,2")
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        nn.CrossEntropyLoss([1.0, 2.0])(z, [0, 1])
    with pytest.raises(ValueError, match="target must have the input's shape"):
        nn.MSELoss()(z, xp.zeros((3, 2), dtype=xp.float32, device=backend.device))
    with pytest.raises(TypeError, match="dtype"):
        nn.BCEWithLogitsLoss()(z, xp.zeros((2, 3), dtype=xp.float64, device=backend.device))
    with pytest.raises(ValueError, match="does not broadcast"):
        nn.BCEWithLogitsLoss(pos_weight=[1.0, 2.0, 3.0, 4.0])(z, z)
    loss_fn = nn.MSELoss(reduction="none")
    loss_fn(z, z)
    with pytest.raises(ValueError, match=r"loss's shape \(2, 3\), got \(3,\)"):
        loss_fn.backward(xp.ones((3,), dtype=xp.float32, device=backend.device))
    assert tuple(loss_fn.backward().shape) == (2, 3)                          # the cache survived; default ones
    loss_fn = nn.MSELoss()
    loss_fn(z, z)
    with pytest.raises(TypeError, match="grad_output must be a number"):
        loss_fn.backward("1")
    with pytest.raises(RuntimeError, match="needs a preceding"):
        nn.BCEWithLogitsLoss().backward()


def test_bce_is_stable_for_huge_logits(backend):
    x = backend.asarray(np.array([-1e4, -100.0, 100.0, 1e4], dtype=np.float32))
    t = backend.asarray(np.array([1.0, 0.0, 1.0, 0.0], dtype=np.float32))
    loss_fn = nn.BCEWithLogitsLoss(reduction="none")
    np.testing.assert_allclose(as_numpy(loss_fn(x, t)), [1e4, 0.0, 0.0, 1e4], rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(as_numpy(loss_fn.backward()), [-1.0, 0.0, 0.0, 1.0], atol=1e-30)
