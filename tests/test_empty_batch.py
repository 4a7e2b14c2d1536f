"""An empty batch (N = 0): empty outputs and input gradients, zero parameter gradients, as in PyTorch."""
from __future__ import annotations

import numpy as np
import pytest

import xpconv
from conftest import HAS_TORCH, as_numpy
from xpconv import nn

LAYERS = [
    (lambda **kw: nn.Conv1d(3, 4, 3, padding=1, **kw), (3, 7)),
    (lambda **kw: nn.Conv2d(3, 4, 3, stride=2, **kw), (3, 7, 6)),
    (lambda **kw: nn.Conv3d(2, 4, 2, groups=2, **kw), (2, 3, 4, 3)),
    (lambda **kw: nn.ConvTranspose1d(3, 2, 3, stride=2, **kw), (3, 5)),
    (lambda **kw: nn.ConvTranspose2d(3, 2, 3, stride=2, output_padding=1, **kw), (3, 4, 5)),
    (lambda **kw: nn.ConvTranspose3d(4, 2, 2, groups=2, **kw), (4, 2, 3, 2)),
    (lambda max_workspace_bytes, **kw: nn.Linear(5, 3, **kw), (5,)),
]


@pytest.mark.parametrize("cap", [None, 2**20])
@pytest.mark.parametrize("make, shape", LAYERS)
def test_layers_take_an_empty_batch(backend, make, shape, cap):
    kw = dict(backend=backend, dtype="float64", seed=0)
    layer = make(max_workspace_bytes=cap, **kw)
    xp = backend.xp
    x = xp.zeros((0, *shape), dtype=xp.float64, device=backend.device)
    y = layer(x)
    assert y.shape[0] == 0
    grad_x = layer.backward(xp.zeros(y.shape, dtype=xp.float64, device=backend.device))
    assert tuple(grad_x.shape) == (0, *shape)
    for _, p in layer.named_parameters():
        assert p.grad.shape == p.data.shape and not np.any(as_numpy(p.grad))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_functional_backward_of_an_empty_batch(backend, nd):
    xp = backend.xp
    x = xp.zeros((0, 4, *(5,) * nd), dtype=xp.float32, device=backend.device)
    w = xp.ones((6, 2, *(3,) * nd), dtype=xp.float32, device=backend.device)
    conv = getattr(xpconv, f"conv{nd}d")
    y = conv(x, w, groups=2, padding=1)
    assert tuple(y.shape) == (0, 6, *(5,) * nd)
    grad_x, grad_w, grad_b = getattr(xpconv, f"conv{nd}d_backward")(xp.ones_like(y), x, w, groups=2, padding=1)
    assert tuple(grad_x.shape) == tuple(x.shape) and grad_x.dtype == xp.float32
    assert tuple(grad_w.shape) == tuple(w.shape) and grad_w.dtype == xp.float32
    assert not np.any(as_numpy(grad_w)) and not np.any(as_numpy(grad_b)) and tuple(grad_b.shape) == (6,)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_empty_batch_gradients_match_torch():
    import torch

    x = torch.zeros((0, 3, 6, 6), dtype=torch.float64, requires_grad=True)
    w = torch.ones((4, 3, 3, 3), dtype=torch.float64, requires_grad=True)
    b = torch.ones(4, dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.conv2d(x, w, b, padding=1)
    y.backward(torch.ones_like(y))
    grads = xpconv.conv2d_backward(np.ones(tuple(y.shape)), x.detach().numpy(), w.detach().numpy(), padding=1)
    for ours, ref in zip(grads, (x.grad, w.grad, b.grad), strict=True):
        assert ours.shape == tuple(ref.shape)
        np.testing.assert_array_equal(ours, ref.numpy())
