"""Linear, ReLU, Flatten and Sequential: finite differences, torch as reference, modes, errors."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import HAS_TORCH, as_numpy, f32_tol
from layer_check import check_layer_gradients, torch_leaf
from xpconv import nn

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")


def _away_from_zero(rng, shape):
    """Normal values with |v| >= 0.1, so ReLU's kink is never within a finite-difference step."""
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < 0.1, 0.1 + np.abs(x), x)


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 5)])
def test_linear_gradients_by_finite_differences(backend, rng, shape):
    layer = nn.Linear(5, 3, backend=backend, dtype="float64", seed=1)
    check_layer_gradients(layer, rng.standard_normal(shape))


def test_linear_without_bias_by_finite_differences(backend, rng):
    layer = nn.Linear(4, 2, bias=False, backend=backend, dtype="float64", seed=1)
    assert [n for n, _ in layer.named_parameters()] == ["weight"]
    check_layer_gradients(layer, rng.standard_normal((3, 4)))


def test_relu_and_flatten_by_finite_differences(backend, rng):
    check_layer_gradients(nn.ReLU(backend=backend, dtype="float64"), _away_from_zero(rng, (2, 3, 4)))
    check_layer_gradients(nn.Flatten(backend=backend, dtype="float64"), rng.standard_normal((2, 3, 2, 2)))


def test_relu_treats_nan_as_torch_does(backend):
    """As torch.relu (2.13): NaN in gives NaN out (not a silent 0); dL/dx is 0 at x <= 0 and passes at NaN."""
    x = backend.asarray(np.array([[-1.0, 0.0, float("nan"), 2.0]]), dtype="float64")
    layer = nn.ReLU(backend=backend, dtype="float64")
    y = as_numpy(layer(x))
    np.testing.assert_array_equal(y, [[0.0, 0.0, np.nan, 2.0]])
    dx = as_numpy(layer.backward(backend.xp.ones_like(x)))
    np.testing.assert_array_equal(dx, [[0.0, 0.0, 1.0, 1.0]])


@needs_torch
def test_linear_relu_flatten_match_torch(backend, rng):
    import torch

    x_np = rng.standard_normal((3, 2, 2, 3))
    model = nn.Sequential(nn.Flatten(backend=backend, dtype="float64"),
                          nn.Linear(12, 4, backend=backend, dtype="float64", seed=3),
                          nn.ReLU(backend=backend, dtype="float64"))
    y = model(backend.asarray(x_np))
    dy = rng.standard_normal(tuple(y.shape))
    dx = model.backward(backend.asarray(dy))

    xt, wt, bt = torch_leaf(x_np), torch_leaf(model[1].weight.data), torch_leaf(model[1].bias.data)
    yt = torch.relu(torch.nn.functional.linear(torch.flatten(xt, 1), wt, bt))
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(as_numpy(y), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(as_numpy(dx), xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(as_numpy(model[1].weight.grad), wt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(as_numpy(model[1].bias.grad), bt.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_linear_init_follows_torch_default_and_seed(backend):
    a = nn.Linear(16, 8, backend=backend, seed=7)
    b = nn.Linear(16, 8, backend="numpy", seed=7)
    w = as_numpy(a.weight.data)
    assert w.shape == (8, 16) and a.weight.data.dtype == backend.xp.float32
    assert np.abs(w).max() <= 0.25 and np.abs(as_numpy(a.bias.data)).max() <= 0.25   # 1/sqrt(16)
    assert w.std() > 0.1                                                               # U(-1/4, 1/4): std 0.144
    np.testing.assert_array_equal(w, as_numpy(b.weight.data))
    assert not np.array_equal(w, as_numpy(nn.Linear(16, 8, backend="numpy", seed=8).weight.data))


def test_float32_stays_float32_and_input_untouched(backend, rng):
    x_np = rng.standard_normal((4, 6)).astype(np.float32)
    x = backend.asarray(x_np)
    model = nn.Sequential(nn.Linear(6, 5, backend=backend, seed=0), nn.ReLU(backend=backend))
    y = model(x)
    dx = model.backward(backend.xp.ones_like(y))
    assert y.dtype == dx.dtype == model[0].weight.grad.dtype == backend.xp.float32
    np.testing.assert_array_equal(as_numpy(x), x_np)


@pytest.mark.parametrize("shape", [(3, 5), (3,), (2, 4, 3)])
def test_linear_rejects_wrong_input_shape(backend, shape):
    layer = nn.Linear(4, 2, backend=backend)
    with pytest.raises(ValueError, match=r"Linear\(4, 2\) expects input of shape \(\*, 4\)"):
        layer(backend.xp.ones(shape, dtype=backend.xp.float32, device=backend.device))


def test_linear_rejects_bad_sizes_and_wrong_dtype():
    with pytest.raises(ValueError, match="in_features"):
        nn.Linear(0, 2)
    with pytest.raises(ValueError, match="out_features"):
        nn.Linear(2, 2.5)
    with pytest.raises(TypeError, match="dtype"):
        nn.Linear(2, 2)(np.ones((1, 2)))                       # float64 input, float32 layer


def test_backward_needs_a_training_forward(backend):
    layer = nn.Linear(2, 2, backend=backend)
    x = backend.xp.ones((1, 2), dtype=backend.xp.float32, device=backend.device)
    with pytest.raises(RuntimeError, match="preceding forward in training mode"):
        layer.backward(x)
    layer.eval()
    layer(x)
    with pytest.raises(RuntimeError, match="training mode"):
        layer.backward(x)
    layer.train()
    layer(x)
    layer.backward(x)
    with pytest.raises(RuntimeError):                           # the cache is used once
        layer.backward(x)


def test_flatten_dims_and_errors(backend):
    x = backend.xp.zeros((2, 3, 4, 5), dtype=backend.xp.float32, device=backend.device)
    assert tuple(nn.Flatten(backend=backend)(x).shape) == (2, 60)
    assert tuple(nn.Flatten(1, 2, backend=backend)(x).shape) == (2, 12, 5)
    assert tuple(nn.Flatten(0, backend=backend)(x).shape) == (120,)
    with pytest.raises(ValueError, match="does not fit"):
        nn.Flatten(3, 1, backend=backend)(x)


def test_sequential_container(backend):
    model = nn.Sequential(nn.Linear(3, 4, backend=backend, seed=0), nn.ReLU(backend=backend),
                          nn.Linear(4, 2, backend=backend, seed=1))
    assert len(model) == 3 and isinstance(model[-1], nn.Linear) and isinstance(model[1:][0], nn.ReLU)
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert len(list(model.parameters())) == 4
    assert model.backend == backend
    x = backend.xp.ones((5, 3), dtype=backend.xp.float32, device=backend.device)
    model.backward(backend.xp.ones_like(model(x)))
    assert all(float(backend.xp.sum(backend.xp.abs(p.grad))) > 0 for p in model.parameters())
    model.zero_grad()
    assert all(float(backend.xp.sum(backend.xp.abs(p.grad))) == 0 for p in model.parameters())
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    with pytest.raises(TypeError, match="Sequential takes Modules"):
        nn.Sequential(nn.ReLU(), "relu")


def test_sequential_to_moves_every_layer(backend, rng):
    model = nn.Sequential(nn.Linear(3, 4, backend="numpy", seed=0), nn.ReLU(), nn.Linear(4, 2, seed=1))
    x_np = rng.standard_normal((5, 3)).astype(np.float32)
    expected = as_numpy(model(x_np))
    model.to(backend)
    assert all(m.backend == backend for m in model.modules())
    np.testing.assert_allclose(as_numpy(model(backend.asarray(x_np))), expected, **f32_tol(backend, 1e-6, 1e-6))


# -- Flatten's gradient check, Upsample ---------------------------------------------------------------------
def test_flatten_rejects_a_wrong_gradient_and_keeps_its_cache(backend):
    xp = backend.xp
    layer = nn.Flatten(backend=backend)
    layer(xp.zeros((2, 3, 4), dtype=xp.float32, device=backend.device))
    for bad in ((2, 3, 4), (12, 2), (1, 12)):              # the input's shape, a same-size reshape, a broadcast
        with pytest.raises(ValueError, match=r"shape \(2, 12\), got"):
            layer.backward(xp.ones(bad, dtype=xp.float32, device=backend.device))
    assert tuple(layer.backward(xp.ones((2, 12), dtype=xp.float32, device=backend.device)).shape) == (2, 3, 4)


UPSAMPLE_CASES = [((2, 3, 4), {"scale_factor": 3}), ((2, 3, 4), {"size": 8}), ((1, 2, 3, 2), {"scale_factor": 2}),
                  ((1, 2, 3, 2), {"scale_factor": (1, 3)}), ((1, 2, 3, 2), {"scale_factor": 2.0}),
                  ((1, 2, 3, 2), {"size": (6, 10)}), ((1, 1, 2, 3, 2), {"scale_factor": (2, 1, 3)}),
                  ((2, 1, 2, 2, 2), {"size": 4, "mode": "nearest-exact"})]


@pytest.mark.parametrize("shape, kwargs", UPSAMPLE_CASES)
def test_upsample_by_finite_differences(backend, rng, shape, kwargs):
    check_layer_gradients(nn.Upsample(**kwargs, backend=backend, dtype="float64"), rng.standard_normal(shape))


@needs_torch
@pytest.mark.parametrize("shape, kwargs", UPSAMPLE_CASES)
def test_upsample_matches_torch(backend, rng, shape, kwargs):
    import torch

    x_np = rng.standard_normal(shape)
    layer = nn.Upsample(**kwargs, backend=backend, dtype="float64")
    y = layer(backend.asarray(x_np))
    dy = rng.standard_normal(tuple(y.shape))
    dx = layer.backward(backend.asarray(dy))
    xt = torch_leaf(x_np)
    yt = torch.nn.Upsample(**kwargs)(xt)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(as_numpy(y), yt.detach().numpy())
    np.testing.assert_allclose(as_numpy(dx), xt.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_upsample_bad_arguments_and_gradients(backend):
    xp = backend.xp
    x = xp.zeros((1, 2, 3, 3), dtype=xp.float32, device=backend.device)
    for kwargs in ({"scale_factor": 1.5}, {"scale_factor": 0}, {"scale_factor": (2, float("nan"))},
                   {"scale_factor": True}, {"size": 0}, {"size": 2.0}, {}, {"size": 4, "scale_factor": 2},
                   {"scale_factor": 2, "mode": "bilinear"}, {"scale_factor": ()}):
        with pytest.raises(ValueError, match=r"Upsample|scale_factor|size"):
            nn.Upsample(**kwargs)
    with pytest.raises(ValueError, match="multiples of the input"):
        nn.Upsample(size=(4, 6), backend=backend)(x)
    with pytest.raises(ValueError, match=r"needs 1 or 2 values"):
        nn.Upsample(scale_factor=(2, 2, 2), backend=backend)(x)
    with pytest.raises(ValueError, match="1 to 3 spatial axes"):
        nn.Upsample(scale_factor=2, backend=backend)(xp.zeros((2, 3), dtype=xp.float32, device=backend.device))
    layer = nn.Upsample(scale_factor=2, backend=backend)
    y = layer(x)
    assert y.dtype == xp.float32 and tuple(y.shape) == (1, 2, 6, 6)
    with pytest.raises(ValueError, match=r"shape \(1, 2, 6, 6\), got \(1, 2, 6, 1\)"):
        layer.backward(xp.ones((1, 2, 6, 1), dtype=xp.float32, device=backend.device))
    assert tuple(layer.backward(xp.ones_like(y)).shape) == (1, 2, 3, 3)
    layer.eval()
    layer(x)
    with pytest.raises(RuntimeError, match="training mode"):
        layer.backward(y)
