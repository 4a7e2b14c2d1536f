"""Whole models: loss and every gradient of a small CNN against torch autograd with the same weights."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import HAS_TORCH, as_numpy
from layer_check import numeric_grad, torch_leaf
from xpconv import nn


def small_cnn(backend, dtype):
    """conv-relu-pool-flatten-linear on (N, 1, 6, 6) images, 5 classes."""
    kw = {"backend": backend, "dtype": dtype}
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, seed=0, **kw), nn.ReLU(**kw), nn.MaxPool2d(2, **kw),
                         nn.Flatten(**kw), nn.Linear(36, 5, seed=1, **kw))


def wider_cnn(backend, dtype):
    """Every other layer type: conv-batchnorm-relu-avgpool-convtranspose-flatten-linear, (N, 2, 6, 6) input."""
    kw = {"backend": backend, "dtype": dtype}
    return nn.Sequential(nn.Conv2d(2, 4, 3, seed=0, **kw), nn.BatchNorm2d(4, **kw), nn.ReLU(**kw),
                         nn.AvgPool2d(2, **kw), nn.ConvTranspose2d(4, 3, 2, stride=2, seed=2, **kw),
                         nn.Flatten(**kw), nn.Linear(48, 5, seed=1, **kw))


def _torch_forward(model, x, params):
    """The same model with torch.nn.functional ops; ``params`` maps our parameter names to torch leaves."""
    import torch
    import torch.nn.functional as F

    for i, layer in enumerate(model):
        w, b = params.get(f"{i}.weight"), params.get(f"{i}.bias")
        if isinstance(layer, nn.Conv2d):
            x = F.conv2d(x, w, b, stride=layer.stride, padding=layer.padding)
        elif isinstance(layer, nn.ConvTranspose2d):
            x = F.conv_transpose2d(x, w, b, stride=layer.stride, padding=layer.padding)
        elif isinstance(layer, nn.BatchNorm2d):
            x = F.batch_norm(x, None, None, w, b, training=True, eps=layer.eps)
        elif isinstance(layer, nn.ReLU):
            x = torch.relu(x)
        elif isinstance(layer, nn.MaxPool2d):
            x = F.max_pool2d(x, layer.kernel_size, layer.stride, layer.padding)
        elif isinstance(layer, nn.AvgPool2d):
            x = F.avg_pool2d(x, layer.kernel_size, layer.stride, layer.padding)
        elif isinstance(layer, nn.Flatten):
            x = torch.flatten(x, 1)
        elif isinstance(layer, nn.Linear):
            x = F.linear(x, w, b)
        else:
            raise AssertionError(f"no torch mirror for {layer}")
    return x


def _loss_and_grads(model, x_np, labels, backend):
    loss_fn = nn.CrossEntropyLoss()
    model.zero_grad()
    loss = loss_fn(model(backend.asarray(x_np)), backend.asarray(labels))
    grad_x = model.backward(loss_fn.backward())
    return loss, grad_x


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("build, channels", [(small_cnn, 1), (wider_cnn, 2)])
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 2e-5)])
def test_model_gradients_match_torch_autograd(backend, rng, build, channels, dtype, tol):
    import torch

    model = build(backend, dtype)
    x_np = rng.standard_normal((4, channels, 6, 6)).astype(dtype)
    labels = np.array([0, 3, 4, 1])
    loss, grad_x = _loss_and_grads(model, x_np, labels, backend)

    params = {name: torch_leaf(p.data) for name, p in model.named_parameters()}
    xt = torch_leaf(x_np)
    ref = torch.nn.functional.cross_entropy(_torch_forward(model, xt, params), torch.from_numpy(labels))
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=tol)
    np.testing.assert_allclose(as_numpy(grad_x), xt.grad.numpy(), rtol=tol, atol=tol * 1e-2)
    assert grad_x.dtype == getattr(backend.xp, dtype)
    for name, p in model.named_parameters():
        assert p.grad.dtype == getattr(backend.xp, dtype)
        np.testing.assert_allclose(as_numpy(p.grad), params[name].grad.numpy(), rtol=tol, atol=tol * 1e-2,
                                   err_msg=name)


def test_model_input_gradient_by_finite_differences(backend, rng):
    model = small_cnn(backend, "float64")
    x_np, labels = rng.standard_normal((1, 1, 6, 6)), np.array([2])
    _, grad_x = _loss_and_grads(model, x_np, labels, backend)
    loss_fn = nn.CrossEntropyLoss()
    numeric = numeric_grad(lambda v: loss_fn(model(backend.asarray(v)), backend.asarray(labels)), x_np)
    np.testing.assert_allclose(as_numpy(grad_x), numeric, rtol=1e-5, atol=1e-8)


def test_gradients_accumulate_until_zero_grad(backend, rng):
    model = small_cnn(backend, "float64")
    x_np, labels = rng.standard_normal((2, 1, 6, 6)), np.array([0, 1])
    _loss_and_grads(model, x_np, labels, backend)
    once = [as_numpy(p.grad).copy() for p in model.parameters()]
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(model(backend.asarray(x_np)), backend.asarray(labels))
    model.backward(loss_fn.backward())                          # no zero_grad: adds a second copy
    for g1, p in zip(once, model.parameters(), strict=True):
        np.testing.assert_allclose(as_numpy(p.grad), 2 * g1, rtol=1e-12, atol=1e-15)
