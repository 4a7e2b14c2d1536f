"""ConvTranspose1d/2d/3d: finite differences on every backend, torch as reference, shapes, init and errors."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import HAS_TORCH, as_numpy
from layer_check import check_layer_gradients, torch_leaf
from xpconv import nn

# nd, in, out, kernel, stride, padding, output_padding, groups, dilation
CONFIGS = [
    (2, 2, 3, 3, 1, 0, 0, 1, 1),
    (2, 2, 2, 3, 2, 1, 1, 1, 1),
    (2, 4, 2, (2, 3), (2, 1), (0, 1), (1, 0), 2, 1),
    (2, 2, 4, 2, 3, 1, 2, 2, 2),
    (2, 4, 2, 3, 1, 1, 0, 1, 1),   # stride 1, more inputs than outputs: the fold of wide columns
    (2, 2, 2, 3, 1, 0, 1, 1, 2),   # output_padding >= stride, < dilation: the extra row lies beyond the kernel
    (1, 2, 3, 4, 2, 1, 1, 1, 1),
    (1, 4, 2, 3, 3, 2, 1, 2, 2),
    (1, 2, 2, 3, 1, 1, 1, 1, 2),
    (3, 2, 2, (2, 3, 2), (2, 1, 1), (1, 0, 1), (1, 0, 0), 1, 1),
    (3, 4, 2, 2, 1, 0, (0, 1, 0), 2, (1, 2, 1)),
]
SPATIAL = {1: (5,), 2: (4, 5), 3: (3, 2, 3)}
LAYERS = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def _layer(backend, cfg, dtype="float64", seed=0, **kw):
    nd, cin, cout, k, s, p, op, g, d = cfg
    return LAYERS[nd](cin, cout, k, stride=s, padding=p, output_padding=op, groups=g, dilation=d,
                      backend=backend, dtype=dtype, seed=seed, **kw)


def _small_spatial(nd):
    return {1: (3,), 2: (3, 2), 3: (2, 2, 2)}[nd]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_gradients_by_finite_differences(backend, rng, cfg):
    check_layer_gradients(_layer(backend, cfg), rng.standard_normal((2, cfg[1], *_small_spatial(cfg[0]))))


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("cfg", CONFIGS)
def test_matches_torch(backend, rng, cfg):
    import torch

    nd, cin, _, _, s, p, op, g, d = cfg
    layer = _layer(backend, cfg)
    x_np = rng.standard_normal((3, cin, *SPATIAL[nd]))
    y = layer(backend.asarray(x_np))
    dy = rng.standard_normal(tuple(y.shape))
    dx = layer.backward(backend.asarray(dy))
    xt, wt, bt = torch_leaf(x_np), torch_leaf(layer.weight.data), torch_leaf(layer.bias.data)
    ref = getattr(torch.nn.functional, f"conv_transpose{nd}d")
    yt = ref(xt, wt, bt, stride=s, padding=p, output_padding=op, groups=g, dilation=d)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(as_numpy(y), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(as_numpy(dx), xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(as_numpy(layer.weight.grad), wt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(as_numpy(layer.bias.grad), bt.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_workspace_cap_changes_nothing_but_last_bits(rng, cfg):
    """A 4 KiB cap (chunks of the batch, or row bands) gives the uncapped y, dx and gradients on NumPy:
    y and dx to float32 rounding (row bands change the GEMMs' shapes, see docs/layers.md), the bias
    gradient exactly."""
    x = rng.standard_normal((3, cfg[1], *SPATIAL[cfg[0]])).astype(np.float32)
    results = []
    for cap in (None, 2**12):
        layer = _layer("numpy", cfg, dtype="float32", max_workspace_bytes=cap)
        y = layer(x)
        dx = layer.backward(np.cos(y))
        results.append((y, dx, layer.weight.grad, layer.bias.grad))
    for one, capped in zip(*results, strict=True):
        np.testing.assert_allclose(capped, one, rtol=1e-5, atol=1e-5)
    assert np.array_equal(results[0][3], results[1][3])


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
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_parameter_shapes_and_init_bounds_follow_torch(nd):
    import torch

    kernel = (3, 2, 2)[:nd]
    ours = LAYERS[nd](6, 4, kernel, groups=2, seed=0)
    ref = getattr(torch.nn, f"ConvTranspose{nd}d")(6, 4, kernel, groups=2)
    assert ours.weight.shape == tuple(ref.weight.shape) == (6, 2, *kernel)
    assert ours.bias.shape == tuple(ref.bias.shape)
    bound = 1 / np.sqrt(2 * np.prod(kernel))                     # fan_in = (out / groups) * prod(kernel)
    w = as_numpy(ours.weight.data)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
    assert np.abs(ref.weight.detach().numpy()).max() <= bound


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_rejects_bad_arguments_and_inputs(backend, nd):
    cls = LAYERS[nd]
    with pytest.raises(ValueError, match=r"output_padding .* must be smaller than either stride"):
        cls(2, 2, 3, stride=2, output_padding=2)
    with pytest.raises(ValueError, match=r"output_padding .* must be smaller than either stride"):
        cls(2, 2, 3, stride=1, dilation=2, output_padding=2)
    cls(2, 2, 3, stride=1, dilation=2, output_padding=1)               # < dilation: allowed, as in torch
    with pytest.raises(ValueError, match="groups=2 must divide"):
        cls(3, 2, 3, groups=2)
    with pytest.raises(ValueError, match="padding must be an int"):
        cls(2, 2, 3, padding="same")
    with pytest.raises(ValueError, match="kernel_size must be an int or a tuple of"):
        cls(2, 2, (3,) * (nd + 1))
    with pytest.raises(ValueError, match="max_workspace_bytes must be a positive int"):
        cls(2, 2, 3, max_workspace_bytes=0)
    layer = cls(2, 3, 3, backend=backend)
    xp = backend.xp
    with pytest.raises(ValueError, match=rf"ConvTranspose{nd}d expects x of shape \(N, 2, "):
        layer(xp.zeros((1, 3, *(4,) * nd), dtype=xp.float32, device=backend.device))
    with pytest.raises(ValueError, match=rf"ConvTranspose{nd}d expects x of shape"):
        layer(xp.zeros((2, *(4,) * nd), dtype=xp.float32, device=backend.device))
    y = layer(xp.zeros((1, 2, *(4,) * nd), dtype=xp.float32, device=backend.device))
    with pytest.raises(ValueError, match="grad_output must have the output's shape"):
        layer.backward(y[..., 1:])
