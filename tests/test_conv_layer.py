"""nn.Conv1d/2d/3d: construction, init, forward/backward caching, gradient accumulation, moving."""
from __future__ import annotations

import math

import numpy as np
import pytest

import xpconv
from conftest import HAS_TORCH, as_numpy
from reference import conv_backward_reference, conv_reference
from xpconv import nn


def test_layer_matches_reference_and_accumulates_grads(backend, rng):
    layer = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2), groups=2, backend=backend,
                      dtype="float64", seed=0)
    x = rng.standard_normal((3, 4, 7, 6))
    w, b = as_numpy(layer.weight.data), as_numpy(layer.bias.data)
    args = ((2, 1), [(1, 1), (1, 1)], (1, 2), 2)
    y = layer(backend.asarray(x, dtype="float64"))
    np.testing.assert_allclose(as_numpy(y), conv_reference(x, w, b, *args), rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(tuple(y.shape))
    dx = layer.backward(backend.asarray(dy, dtype="float64"))
    dx_ref, dw_ref, db_ref = conv_backward_reference(dy, x, w, *args)
    np.testing.assert_allclose(as_numpy(dx), dx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(as_numpy(layer.weight.grad), dw_ref, rtol=1e-12, atol=1e-12)
    layer(backend.asarray(x, dtype="float64"))
    layer.backward(backend.asarray(dy, dtype="float64"))
    np.testing.assert_allclose(as_numpy(layer.bias.grad), 2 * db_ref, rtol=1e-12, atol=1e-12)
    layer.zero_grad()
    assert not np.any(as_numpy(layer.weight.grad))


def test_backward_needs_a_training_forward_and_cache_is_not_leaked(rng):
    layer = nn.Conv1d(2, 3, 3, seed=1)
    x = rng.standard_normal((2, 2, 8)).astype(np.float32)
    with pytest.raises(RuntimeError, match="needs a preceding forward"):
        layer.backward(np.ones((2, 3, 6), np.float32))
    y = layer(x)
    layer.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match="needs a preceding forward"):
        layer.backward(np.ones_like(y))          # the cache was released after the first backward
    layer.eval()
    layer(x)
    assert layer._ctx is None                    # inference keeps nothing
    with pytest.raises(RuntimeError, match="training mode"):
        layer.backward(np.ones_like(y))


def test_init_is_torch_like_and_reproducible():
    a = nn.Conv3d(4, 8, 3, groups=2, seed=7)
    b = nn.Conv3d(4, 8, 3, groups=2, seed=7)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    bound = 1 / math.sqrt(2 * 27)
    w = a.weight.data
    assert w.shape == (8, 2, 3, 3, 3) and w.dtype == np.float32
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
    assert np.abs(a.bias.data).max() <= bound
    assert not np.array_equal(w, nn.Conv3d(4, 8, 3, groups=2, seed=8).weight.data)


def test_channels_last_layer_has_channels_last_weight(rng):
    layer = nn.Conv2d(3, 16, 3, channels_last=True, seed=0, dtype="float64")
    assert layer.weight.shape == (16, 3, 3, 3)
    image = rng.standard_normal((5, 5, 3))
    h = layer(image)
    assert h.shape == (3, 3, 16)
    dx = layer.backward(np.ones((3, 3, 16)))
    assert dx.shape == (5, 5, 3) and layer.weight.grad.shape == (16, 3, 3, 3)
    expected = xpconv.conv2d(image, layer.weight.data, layer.bias.data, channels_last=True)
    np.testing.assert_array_equal(h, expected)


def test_layer_moves_between_backends(rng):
    # one algorithm on both (auto's rule is kn2row on NumPy, im2col on array-api-strict): the same sums
    layer = nn.Conv2d(2, 4, 3, padding="same", seed=3, dtype="float64", algorithm="im2col")
    x = rng.standard_normal((1, 2, 5, 5))
    y_np = layer(x)
    layer.to("array_api_strict")
    assert layer.backend.name == "array_api_strict"
    strict = layer.backend
    y = layer(strict.asarray(x, dtype="float64"))
    assert type(y) is type(strict.asarray(x))
    np.testing.assert_allclose(as_numpy(y), y_np, rtol=1e-14)
    with pytest.raises(TypeError, match="different libraries"):
        layer(x)                                # a NumPy input to a strict layer is not copied silently


@pytest.mark.parametrize("kwargs, match", [
    (dict(in_channels=0, out_channels=2, kernel_size=3), "in_channels must be a positive int"),
    (dict(in_channels=3, out_channels=2, kernel_size=(3, 3, 3)), "kernel_size must be an int or a tuple of 2 ints"),
    (dict(in_channels=3, out_channels=6, kernel_size=3, groups=2), "groups=2 must divide in_channels=3"),
    (dict(in_channels=2, out_channels=2, kernel_size=3, padding="circular"), "padding must be an int"),
    (dict(in_channels=2, out_channels=2, kernel_size=3, dtype="int8"), "dtype must be one of 'float16'"),
    (dict(in_channels=2, out_channels=2, kernel_size=3, dtype="bfloat16"), "'bfloat16' is not available on the numpy"),
])
def test_bad_layer_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nn.Conv2d(**kwargs)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_layer_agrees_with_torch_conv2d(rng):
    import torch

    layer = nn.Conv2d(3, 5, 3, stride=2, padding=1, seed=0, dtype="float64")
    ref = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(layer.weight.data))
        ref.bias.copy_(torch.from_numpy(layer.bias.data))
    x = rng.standard_normal((2, 3, 9, 9))
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    y = layer(x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(y.shape)
    yt.backward(torch.from_numpy(g))
    np.testing.assert_allclose(layer.backward(g), xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad, ref.weight.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.bias.grad, ref.bias.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_first_layer_skips_the_input_gradient_and_changes_nothing_else(backend, rng, monkeypatch):
    """``requires_input_grad(False)`` (what fit sets for a model's first layer): the conv's backward asks the op
    layer for no dL/dx and returns None; the parameter gradients are bit for bit the same."""
    from xpconv.nn import conv as conv_module

    asked = []
    real = conv_module.conv_grads

    def spy(*args, need_input_grad=True, **kwargs):
        asked.append(need_input_grad)
        return real(*args, need_input_grad=need_input_grad, **kwargs)

    monkeypatch.setattr(conv_module, "conv_grads", spy)
    x = backend.asarray(rng.standard_normal((2, 3, 6, 6)), dtype="float64")
    grads = []
    for needed in (True, False):
        model = nn.Sequential(nn.Conv2d(3, 4, 3, backend=backend, dtype="float64", seed=0), nn.ReLU(),
                              nn.Flatten(), nn.Linear(4 * 4 * 4, 2, backend=backend, dtype="float64", seed=1))
        model.requires_input_grad(needed)
        y = model(x)
        grad_x = model.backward(backend.xp.ones_like(y))
        assert (grad_x is None) == (not needed)
        grads.append({name: as_numpy(p.grad) for name, p in model.named_parameters()})
    assert asked == [True, False]
    for name, value in grads[0].items():
        np.testing.assert_array_equal(grads[1][name], value, err_msg=name)
    model.requires_input_grad(True)
    model(x)
    assert model.backward(backend.xp.ones_like(y)) is not None
