"""Shared checks for layers with an explicit backward: central finite differences in float64, torch copies."""
from __future__ import annotations

import numpy as np

from conftest import as_numpy


def numeric_grad(f, a: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d f / d a by central differences, one element at a time (f: float64 array -> float)."""
    a = np.array(a, dtype=np.float64)
    grad = np.empty_like(a)
    for i in np.ndindex(*a.shape):
        old = a[i]
        a[i] = old + eps
        hi = f(a)
        a[i] = old - eps
        lo = f(a)
        a[i] = old
        grad[i] = (hi - lo) / (2 * eps)
    return grad


def check_layer_gradients(layer, x, *, seed: int = 0, reset=None, rtol: float = 1e-5, atol: float = 1e-7):
    """Assert that ``layer.backward`` matches finite differences of ``L = sum(layer(x) * r)``.

    Checks dL/dx and dL/dp for every parameter p.  ``layer`` must be float64 and in training mode;
    ``reset()`` (optional) runs before every forward, e.g. to replay a dropout mask.
    """
    backend, x = layer.backend, np.asarray(x, dtype=np.float64)
    reset = reset or (lambda: None)
    reset()
    y = layer(backend.asarray(x))
    r = np.random.default_rng(seed).standard_normal(tuple(y.shape))
    layer.zero_grad()
    grad_x = as_numpy(layer.backward(backend.asarray(r)))

    def loss(xv) -> float:
        reset()
        return float(np.sum(as_numpy(layer(backend.asarray(xv))) * r))

    np.testing.assert_allclose(grad_x, numeric_grad(loss, x), rtol=rtol, atol=atol, err_msg="dL/dx")
    for name, p in layer.named_parameters():
        analytic, base = as_numpy(p.grad), as_numpy(p.data)

        def loss_p(v, p=p) -> float:
            p.data = backend.asarray(v)
            return loss(x)

        numeric = numeric_grad(loss_p, base)
        p.data = backend.asarray(base)
        np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol, err_msg=f"dL/d{name}")


def torch_leaf(a):
    """A float64 torch tensor copy of ``a`` (any backend) that records gradients."""
    import torch

    return torch.tensor(as_numpy(a), dtype=torch.float64, requires_grad=True)
