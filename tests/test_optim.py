"""Optimizers against torch.optim, step by step, on every backend."""
from __future__ import annotations

import numpy as np
import pytest
from array_api_compat import array_namespace, device

from conftest import HAS_TORCH, as_numpy
from xpconv.nn import Parameter
from xpconv.optim import SGD, Adam, AdamW

CASES = [
    (SGD, dict(lr=0.1)),
    (SGD, dict(lr=0.05, momentum=0.9)),
    (SGD, dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    (SGD, dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1)),
    (Adam, dict(lr=0.01)),
    (Adam, dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    (Adam, dict(lr=0.02, weight_decay=0.1, decoupled_weight_decay=True)),
    (AdamW, dict(lr=0.02)),
]


def _torch_optimizer(cls, kwargs, params):
    import torch

    kwargs = dict(kwargs)
    if cls is AdamW:
        return torch.optim.AdamW(params, **kwargs)
    if cls is Adam:
        return torch.optim.Adam(params, **kwargs)
    return torch.optim.SGD(params, **kwargs)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("cls,kwargs", CASES, ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(CASES)])
def test_matches_torch_optim(backend, rng, cls, kwargs):
    import torch

    shapes = [(3, 4), (5,)]
    init = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(5)]
    ours = [Parameter(backend.asarray(a, dtype="float64")) for a in init]
    theirs = [torch.tensor(a, requires_grad=True) for a in init]
    opt, ref = cls(ours, **kwargs), _torch_optimizer(cls, kwargs, theirs)
    for step_grads in grads:
        opt.zero_grad()
        for p, g in zip(ours, step_grads, strict=True):
            p.grad += backend.asarray(g, dtype="float64")
        for t, g in zip(theirs, step_grads, strict=True):
            t.grad = torch.tensor(g)
        opt.step()
        ref.step()
        for p, t in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(as_numpy(p.data), t.detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls,kwargs", [CASES[2], CASES[5]], ids=["SGD", "Adam"])
def test_keeps_dtype_device_and_user_arrays(backend, rng, cls, kwargs):
    user = backend.asarray(rng.standard_normal((4, 3)), dtype="float32")
    before = as_numpy(user).copy()
    p = Parameter(user)
    p.grad = backend.asarray(rng.standard_normal((4, 3)), dtype="float32")
    opt = cls([p], **kwargs)
    for _ in range(2):
        opt.step()
    assert p.data.dtype == user.dtype
    assert array_namespace(p.data) is array_namespace(user)
    assert device(p.data) == device(user)
    assert not np.allclose(as_numpy(p.data), before)
    np.testing.assert_array_equal(as_numpy(user), before)
    for value in opt.state[0].values():
        if not isinstance(value, int):
            assert value.dtype == user.dtype and device(value) == device(user)


def test_zero_grad_and_reuse(backend):
    p = Parameter(backend.asarray([1.0, 2.0], dtype="float32"))
    p.grad = backend.asarray([0.5, -0.5], dtype="float32")
    opt = SGD([p], lr=1.0)
    opt.step()
    np.testing.assert_allclose(as_numpy(p.data), [0.5, 2.5])
    opt.zero_grad()
    np.testing.assert_array_equal(as_numpy(p.grad), [0.0, 0.0])
    opt.step()
    np.testing.assert_allclose(as_numpy(p.data), [0.5, 2.5])


@pytest.mark.parametrize("cls,kwargs,match", [
    (SGD, dict(lr=-0.1), "lr"),
    (SGD, dict(lr=0.1, momentum=-1), "momentum"),
    (SGD, dict(lr=0.1, weight_decay=-1), "weight_decay"),
    (SGD, dict(lr=0.1, nesterov=True), "nesterov"),
    (SGD, dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "nesterov"),
    (Adam, dict(lr=-1e-3), "lr"),
    (Adam, dict(betas=(1.0, 0.999)), r"betas\[0\]"),
    (Adam, dict(betas=(0.9, -0.1)), r"betas\[1\]"),
    (Adam, dict(betas=0.9), "betas"),
    (Adam, dict(eps=-1e-8), "eps"),
    (AdamW, dict(weight_decay=-0.01), "weight_decay"),
])
def test_rejects_bad_hyperparameters(cls, kwargs, match):
    p = Parameter(np.zeros(2, dtype=np.float32))
    with pytest.raises(ValueError, match=match):
        cls([p], **kwargs)


def test_rejects_bad_params():
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match="Parameter"):
        SGD([np.zeros(2)], lr=0.1)
    with pytest.raises(TypeError, match="lr must be a number"):
        SGD([Parameter(np.zeros(2))], lr="0.1")
    p = Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="more than once"):
        Adam([p, p])
