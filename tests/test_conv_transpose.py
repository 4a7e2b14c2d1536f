"""ConvTranspose2d: finite differences on every backend, torch as reference, shapes, init and errors."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import HAS_TORCH, as_numpy
from layer_check import check_layer_gradients, torch_leaf
from xpconv import nn

# in, out, kernel, stride, padding, output_padding, groups, dilation
CONFIGS = [
    (2, 3, 3, 1, 0, 0, 1, 1),
    (2, 2, 3, 2, 1, 1, 1, 1),
    (4, 2, (2, 3), (2, 1), (0, 1), (1, 0), 2, 1),
    (2, 4, 2, 3, 1, 2, 2, 2),
    (4, 2, 3, 1, 1, 0, 1, 1),   # stride 1, more inputs than outputs: the fold of wide columns
]


def _layer(backend, cfg, dtype="float64", seed=0):
    cin, cout, k, s, p, op, g, d = cfg
    return nn.ConvTranspose2d(cin, cout, k, stride=s, padding=p, output_padding=op, groups=g, dilation=d,
                              backend=backend, dtype=dtype, seed=seed)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_gradients_by_finite_differences(backend, rng, cfg):
    check_layer_gradients(_layer(backend, cfg), rng.standard_normal((2, cfg[0], 3, 2)))


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("cfg", CONFIGS)
def test_matches_torch(backend, rng, cfg):
    import torch

    cin, _, _, s, p, op, g, d = cfg
    layer = _layer(backend, cfg)
    x_np = rng.standard_normal((3, cin, 4, 5))
    y = layer(backend.asarray(x_np))
    dy = rng.standard_normal(tuple(y.shape))
    dx = layer.backward(backend.asarray(dy))
    xt, wt, bt = torch_leaf(x_np), torch_leaf(layer.weight.data), torch_leaf(layer.bias.data)
    yt = torch.nn.functional.conv_transpose2d(xt, wt, bt, stride=s, padding=p, output_padding=op, groups=g,
                                              dilation=d)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(as_numpy(y), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(as_numpy(dx), xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(as_numpy(layer.weight.grad), wt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(as_numpy(layer.bias.grad), bt.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_chunked_batch_gives_the_same_bits(rng, cfg):
    """max_workspace_bytes=1 (one sample per chunk) changes no bit of y, dx or the gradients on NumPy."""
    x = rng.standard_normal((3, cfg[0], 4, 5)).astype(np.float32)
    results = []
    for cap in (None, 1):
        layer = nn.ConvTranspose2d(*cfg[:3], stride=cfg[3], padding=cfg[4], output_padding=cfg[5], groups=cfg[6],
                                   dilation=cfg[7], seed=0, max_workspace_bytes=cap)
        y = layer(x)
        dx = layer.backward(np.cos(y))
        results.append((y, dx, layer.weight.grad, layer.bias.grad))
    for one, chunked in zip(*results, strict=True):
        assert np.array_equal(one, chunked)


def test_upsamples_and_keeps_float32(backend, rng):
    layer = nn.ConvTranspose2d(4, 2, 4, stride=2, padding=1, backend=backend, seed=1)
    x_np = rng.standard_normal((2, 4, 5, 3)).astype(np.float32)
    x = backend.asarray(x_np)
    y = layer(x)
    assert tuple(y.shape) == (2, 2, 10, 6) and y.dtype == backend.xp.float32
    dx = layer.backward(backend.xp.ones_like(y))
    assert dx.dtype == layer.weight.grad.dtype == backend.xp.float32
    np.testing.assert_array_equal(as_numpy(x), x_np)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_parameter_shapes_and_init_bounds_follow_torch():
    import torch

    ours = nn.ConvTranspose2d(6, 4, (3, 2), groups=2, seed=0)
    ref = torch.nn.ConvTranspose2d(6, 4, (3, 2), groups=2)
    assert ours.weight.shape == tuple(ref.weight.shape) == (6, 2, 3, 2)
    assert ours.bias.shape == tuple(ref.bias.shape)
    bound = 1 / np.sqrt(2 * 3 * 2)                              # fan_in = (out / groups) * kh * kw
    w = as_numpy(ours.weight.data)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
    assert np.abs(ref.weight.detach().numpy()).max() <= bound


def test_rejects_bad_arguments_and_inputs(backend):
    with pytest.raises(ValueError, match="output_padding"):
        nn.ConvTranspose2d(2, 2, 3, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="groups=2 must divide"):
        nn.ConvTranspose2d(3, 2, 3, groups=2)
    with pytest.raises(ValueError, match="padding must be an int"):
        nn.ConvTranspose2d(2, 2, 3, padding="same")
    layer = nn.ConvTranspose2d(2, 3, 3, backend=backend)
    xp = backend.xp
    with pytest.raises(ValueError, match=r"expects x of shape \(N, 2, H, W\)"):
        layer(xp.zeros((1, 3, 4, 4), dtype=xp.float32, device=backend.device))
    y = layer(xp.zeros((1, 2, 4, 4), dtype=xp.float32, device=backend.device))
    with pytest.raises(ValueError, match="grad_output must have the output's shape"):
        layer.backward(y[..., 1:])
