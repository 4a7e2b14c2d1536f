"""Residual and Sequential containers: finite differences on every backend, torch for the option-A shortcut,
gradient-shape checks that leave the cache intact, names and keys, errors."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from conftest import HAS_TORCH, as_numpy
from layer_check import check_layer_gradients, torch_leaf
from xpconv import nn
from xpconv.models import BasicBlock, Bottleneck, ZeroPadShortcut

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")


def _blocks(backend):
    """Small float64 residual blocks covering every shortcut kind: identity, zero padding, projection."""
    kw = {"backend": backend, "dtype": "float64"}
    return {
        "identity+relu": (nn.Residual(nn.Conv2d(3, 3, 3, padding=1, seed=0, **kw), nn.ReLU(**kw),
                                      activation=nn.ReLU(**kw)), (2, 3, 4, 4)),
        "basic-A": (BasicBlock(2, 4, stride=2, shortcut="A", seed=1, **kw), (2, 2, 5, 5)),
        "basic-B": (BasicBlock(2, 4, stride=2, shortcut="B", seed=2, **kw), (2, 2, 4, 4)),
        "bottleneck-B": (Bottleneck(4, 2, stride=2, shortcut="B", seed=3, **kw), (2, 4, 4, 4)),
        "bottleneck-identity": (Bottleneck(8, 2, seed=4, **kw), (2, 8, 3, 3)),
    }


@pytest.mark.parametrize("kind", list(_blocks("numpy")))
def test_residual_block_gradients_by_finite_differences(backend, rng, kind):
    block, shape = _blocks(backend)[kind]
    check_layer_gradients(block, rng.standard_normal(shape), rtol=1e-5, atol=1e-7)


def test_residual_sums_the_gradients_of_both_branches(backend, rng):
    """Linear main branch, identity shortcut: dL/dx = g Wᵀ... i.e. g @ W + g; a Linear shortcut adds g @ W2."""
    kw = {"backend": backend, "dtype": "float64"}
    main, side = nn.Linear(3, 3, bias=False, seed=0, **kw), nn.Linear(3, 3, bias=False, seed=1, **kw)
    x, g = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    w1, w2 = as_numpy(main.weight.data), as_numpy(side.weight.data)
    identity = nn.Residual(main)
    np.testing.assert_allclose(as_numpy(identity(backend.asarray(x))), x @ w1.T + x, rtol=1e-12)
    np.testing.assert_allclose(as_numpy(identity.backward(backend.asarray(g))), g @ w1 + g, rtol=1e-12)
    projected = nn.Residual(main, shortcut=side)
    projected(backend.asarray(x))
    np.testing.assert_allclose(as_numpy(projected.backward(backend.asarray(g))), g @ w1 + g @ w2, rtol=1e-12)


@needs_torch
@pytest.mark.parametrize("c_in, c_out, stride, size", [(2, 4, 2, 5), (3, 4, 2, 6), (2, 5, 1, 3)])
def test_zero_pad_shortcut_matches_torch(backend, rng, c_in, c_out, stride, size):
    """As ``F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, lo, hi))``: output and input gradient, odd sizes too."""
    import torch

    x, lo = rng.standard_normal((2, c_in, size, size)), (c_out - c_in) // 2
    xt = torch_leaf(x)
    ref = torch.nn.functional.pad(xt[:, :, ::stride, ::stride], (0, 0, 0, 0, lo, c_out - c_in - lo))
    g = rng.standard_normal(tuple(ref.shape))
    ref.backward(torch.from_numpy(g))
    pad = ZeroPadShortcut(c_in, c_out, stride, backend=backend, dtype="float64")
    y = pad(backend.asarray(x))
    np.testing.assert_array_equal(as_numpy(y), ref.detach().numpy())
    np.testing.assert_array_equal(as_numpy(pad.backward(backend.asarray(g))), xt.grad.numpy())


def _container_cases(backend):
    kw = {"backend": backend, "dtype": "float64"}
    return [
        (nn.Sequential(nn.Linear(3, 2, seed=0, **kw), nn.ReLU(**kw)), (4, 3), (4, 2)),
        (nn.Residual(nn.Linear(3, 3, seed=0, **kw), activation=nn.ReLU(**kw)), (4, 3), (4, 3)),
        (BasicBlock(2, 4, stride=2, seed=0, **kw), (2, 2, 4, 4), (2, 4, 2, 2)),
        (ZeroPadShortcut(2, 4, **kw), (2, 2, 4, 4), (2, 4, 2, 2)),
    ]


@pytest.mark.parametrize("case", range(4))
def test_backward_rejects_a_wrong_gradient_shape_and_keeps_the_cache(backend, rng, case):
    module, x_shape, y_shape = _container_cases(backend)[case]
    x = backend.asarray(rng.standard_normal(x_shape))
    y = module(x)
    assert tuple(y.shape) == y_shape
    bad = backend.asarray(np.ones((y_shape[0] + 1, *y_shape[1:])))
    with pytest.raises(ValueError, match=rf"{type(module).__name__}.*\({y_shape[0]}, .*got \({y_shape[0] + 1}, "):
        module.backward(bad)
    good = backend.asarray(rng.standard_normal(y_shape))
    grad = module.backward(good)                      # the rejected call changed nothing
    assert tuple(grad.shape) == x_shape
    with pytest.raises(RuntimeError, match="needs a preceding forward"):
        module.backward(good)


def test_branches_of_different_shapes_are_refused():
    block = nn.Residual(nn.Conv2d(2, 4, 1, seed=0))
    with pytest.raises(ValueError, match=r"main branch gives shape \(1, 4, 3, 3\) but the shortcut \(1, 2, 3, 3\)"):
        block(np.ones((1, 2, 3, 3), dtype=np.float32))


def test_named_layers_give_torch_keys_and_slices_keep_names():
    seq = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 2, 3, seed=0), act=nn.ReLU(), fc=nn.Linear(2, 2, seed=0)))
    assert list(seq.state_dict()) == ["conv.weight", "conv.bias", "fc.weight", "fc.bias"]
    assert seq.conv is seq[0] and list(seq[1:].state_dict()) == ["fc.weight", "fc.bias"]
    block = BasicBlock(2, 4, stride=2, shortcut="B", seed=0)
    assert [k for k in block.state_dict() if not k.startswith(("bn", "shortcut.1"))] == [
        "conv1.weight", "conv2.weight", "shortcut.0.weight"]
    assert block.shortcut.__class__ is nn.Sequential and BasicBlock(4, 4).shortcut is None
    assert isinstance(BasicBlock(2, 4, stride=2).shortcut, ZeroPadShortcut)
    if HAS_TORCH:
        import torch

        ref = torch.nn.Sequential(OrderedDict(conv=torch.nn.Conv2d(1, 2, 3), act=torch.nn.ReLU(),
                                              fc=torch.nn.Linear(2, 2)))
        assert list(ref.state_dict()) == list(seq.state_dict())


def test_container_argument_errors():
    with pytest.raises(TypeError, match="Sequential takes Modules, got str at position 1"):
        nn.Sequential(nn.ReLU(), "relu")
    with pytest.raises(TypeError, match="Residual takes Modules"):
        nn.Residual(OrderedDict(a=nn.ReLU(), b=3))
    with pytest.raises(ValueError, match="at least one main-branch layer"):
        nn.Residual(shortcut=nn.ReLU())
    with pytest.raises(TypeError, match="shortcut must be a Module or None, got function"):
        nn.Residual(nn.ReLU(), shortcut=lambda x: x)
    for name in ("shortcut", "forward", "main"):
        with pytest.raises(ValueError, match=f"cannot name a layer '{name}'"):
            nn.Residual(OrderedDict([(name, nn.ReLU())]))
    with pytest.raises(ValueError, match="cannot name a layer 'training'"):
        nn.Sequential(OrderedDict(training=nn.ReLU()))
    for name in ("", "a.b", 3):
        with pytest.raises(ValueError, match="non-empty strings without"):
            nn.Sequential(OrderedDict([(name, nn.ReLU())]))
    with pytest.raises(ValueError, match="shortcut must be one of"):
        BasicBlock(2, 4, stride=2, shortcut="C")
    with pytest.raises(ValueError, match="out_channels=2 must be >= in_channels=4"):
        ZeroPadShortcut(4, 2)
    with pytest.raises(ValueError, match=r"expects x of shape \(N, 2, H, W\)"):
        ZeroPadShortcut(2, 4)(np.ones((1, 3, 4, 4), dtype=np.float32))


def test_empty_sequential_is_the_identity():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    seq = nn.Sequential()
    assert seq(x) is x and seq.backward(x) is x
