"""BatchNorm1d/2d/3d, LayerNorm, GroupNorm: finite differences on every backend, torch float64 in train and eval
(outputs, input and parameter gradients, running statistics, state dicts), None buffers, errors."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import HAS_TORCH, as_numpy
from layer_check import check_layer_gradients, torch_leaf
from xpconv import nn

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")

# (class name, constructor arguments, input shape)
CASES = [
    ("BatchNorm1d", (3,), {}, (4, 3)),
    ("BatchNorm1d", (3,), {"momentum": None}, (2, 3, 4)),
    ("BatchNorm2d", (3,), {"affine": False}, (2, 3, 2, 3)),
    ("BatchNorm2d", (3,), {"track_running_stats": False}, (2, 3, 2, 3)),
    ("BatchNorm3d", (2,), {"momentum": 0.3}, (2, 2, 2, 3, 2)),
    ("LayerNorm", (5,), {}, (3, 5)),
    ("LayerNorm", ((3, 4),), {"bias": False}, (2, 3, 4)),
    ("LayerNorm", ((2, 3),), {"elementwise_affine": False}, (2, 2, 2, 3)),
    ("GroupNorm", (2, 4), {}, (2, 4, 3)),
    ("GroupNorm", (1, 3), {"affine": False}, (2, 3, 2, 2)),
    ("GroupNorm", (3, 3), {}, (3, 3, 2, 2, 2)),
]
IDS = [f"{name}-{args}-{kwargs}" for name, args, kwargs, _ in CASES]


def _randomize_parameters(layer, rng, ref=None):
    """Give ours (and torch's ``ref``, when given) the same random weight and bias."""
    for name, p in layer.named_parameters():
        value = rng.uniform(0.5, 2.0, p.shape) if name == "weight" else rng.standard_normal(p.shape)
        p.data = layer.backend.asarray(value, dtype="float64")
        if ref is not None:
            import torch

            with torch.no_grad():
                getattr(ref, name).copy_(torch.from_numpy(value))


@pytest.mark.parametrize("name, args, kwargs, shape", CASES, ids=IDS)
def test_gradients_by_finite_differences(backend, rng, name, args, kwargs, shape):
    layer = getattr(nn, name)(*args, **kwargs, backend=backend, dtype="float64")
    _randomize_parameters(layer, rng)
    check_layer_gradients(layer, rng.standard_normal(shape) * 2 + 1)


@needs_torch
@pytest.mark.parametrize("name, args, kwargs, shape", CASES, ids=IDS)
def test_matches_torch_in_train_and_eval(backend, rng, name, args, kwargs, shape):
    import torch

    ours = getattr(nn, name)(*args, **kwargs, backend=backend, dtype="float64")
    ref = getattr(torch.nn, name)(*args, **kwargs, dtype=torch.float64)
    _randomize_parameters(ours, rng, ref)
    for step in range(3):                                   # the running statistics move over several batches
        x_np = rng.standard_normal(shape) * (step + 1) + step
        ours.zero_grad()
        ref.zero_grad()
        y = ours(backend.asarray(x_np))
        dy = rng.standard_normal(shape)
        dx = ours.backward(backend.asarray(dy))
        xt = torch_leaf(x_np)
        yt = ref(xt)
        yt.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(as_numpy(y), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(as_numpy(dx), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
        for pname, p in ours.named_parameters():
            np.testing.assert_allclose(as_numpy(p.grad), getattr(ref, pname).grad.numpy(), rtol=1e-10, atol=1e-12,
                                       err_msg=pname)
    state, ref_state = ours.state_dict(), ref.state_dict()
    assert list(state) == list(ref_state)
    for key, value in ref_state.items():
        np.testing.assert_allclose(state[key], value.numpy(), rtol=1e-12, atol=1e-15, err_msg=key)
        assert state[key].dtype == value.numpy().dtype, key
    ours.eval()
    ref.eval()
    x_np = rng.standard_normal(shape)
    np.testing.assert_allclose(as_numpy(ours(backend.asarray(x_np))), ref(torch.from_numpy(x_np)).detach().numpy(),
                               rtol=1e-10, atol=1e-12)


@needs_torch
def test_loads_a_torch_state_dict(rng):
    import torch

    ref = torch.nn.BatchNorm2d(3, dtype=torch.float64)
    for _ in range(2):
        ref(torch.from_numpy(rng.standard_normal((4, 3, 2, 2))))
    ref.eval()
    ours = nn.BatchNorm2d(3, dtype="float64").eval()
    ours.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    assert int(ours.num_batches_tracked) == 2
    x_np = rng.standard_normal((2, 3, 2, 2))
    np.testing.assert_allclose(ours(x_np), ref(torch.from_numpy(x_np)).detach().numpy(), rtol=1e-12)


def test_untracked_batchnorm_has_none_buffers_and_uses_batch_statistics(backend, rng):
    layer = nn.BatchNorm2d(2, track_running_stats=False, backend=backend, dtype="float64")
    assert layer.running_mean is None and layer.running_var is None and layer.num_batches_tracked is None
    assert sorted(layer.state_dict()) == ["bias", "weight"]
    x_np = rng.standard_normal((3, 2, 2, 2)) * 3 + 1
    expected = (x_np - x_np.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(x_np.var(axis=(0, 2, 3), keepdims=True)
                                                                          + 1e-5)
    np.testing.assert_allclose(as_numpy(layer.eval()(backend.asarray(x_np))), expected, rtol=1e-10)
    layer.to("numpy")
    assert layer.running_mean is None
    layer.load_state_dict({"weight": np.full(2, 2.0), "bias": np.zeros(2)})
    np.testing.assert_allclose(layer(x_np), 2 * expected, rtol=1e-10)
    with pytest.raises(ValueError, match=r"unexpected keys \['running_mean'\]"):
        layer.load_state_dict({"weight": np.ones(2), "bias": np.zeros(2), "running_mean": np.zeros(2)})


def test_eval_uses_running_statistics_only(backend, rng):
    layer = nn.BatchNorm1d(2, backend=backend, dtype="float64").eval()
    layer.running_mean = backend.asarray(np.array([1.0, -2.0]))
    layer.running_var = backend.asarray(np.array([4.0, 0.25]))
    x_np = rng.standard_normal((3, 2, 5))
    expected = (x_np - np.array([1.0, -2.0])[:, None]) / np.sqrt(np.array([4.0, 0.25]) + 1e-5)[:, None]
    np.testing.assert_allclose(as_numpy(layer(backend.asarray(x_np))), expected, rtol=1e-12)
    np.testing.assert_array_equal(as_numpy(layer.running_mean), [1.0, -2.0])
    assert int(as_numpy(layer.num_batches_tracked)) == 0
    with pytest.raises(RuntimeError, match="training mode"):
        layer.backward(backend.asarray(x_np))


def test_cumulative_average_with_momentum_none(backend, rng):
    layer = nn.BatchNorm1d(3, momentum=None, backend=backend, dtype="float64")
    batches = [rng.standard_normal((5, 3)) + i for i in range(3)]
    for x_np in batches:
        layer(backend.asarray(x_np))
    np.testing.assert_allclose(as_numpy(layer.running_mean), np.mean([b.mean(axis=0) for b in batches], axis=0),
                               rtol=1e-12)
    # the first batch's factor is 1: the initial running_var of 1 is forgotten
    np.testing.assert_allclose(as_numpy(layer.running_var), np.mean([b.var(axis=0, ddof=1) for b in batches], axis=0),
                               rtol=1e-12)


@pytest.mark.parametrize("name, args, kwargs, shape", CASES, ids=IDS)
def test_keeps_float32_and_wrong_grad_shape_keeps_the_cache(backend, rng, name, args, kwargs, shape):
    xp = backend.xp
    layer = getattr(nn, name)(*args, **kwargs, backend=backend)
    y = layer(backend.asarray(rng.standard_normal(shape), dtype="float32"))
    assert y.dtype == xp.float32
    with pytest.raises(ValueError, match=r"forward output's shape .*, got \(1,\)"):
        layer.backward(xp.ones((1,), dtype=xp.float32, device=backend.device))
    dx = layer.backward(xp.ones_like(y))
    assert dx.dtype == xp.float32 and tuple(dx.shape) == shape
    for p in layer.parameters():
        assert p.grad.dtype == xp.float32


def test_empty_batch(backend):
    xp = backend.xp
    empty = xp.zeros((0, 3, 2, 2), dtype=xp.float32, device=backend.device)
    bn = nn.BatchNorm2d(3, backend=backend)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(empty)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(xp.ones((1, 3, 1, 1), dtype=xp.float32, device=backend.device))
    assert tuple(bn.eval()(empty).shape) == (0, 3, 2, 2)             # eval: the running statistics need no batch
    for layer in (nn.LayerNorm((2, 2), backend=backend), nn.GroupNorm(3, 3, backend=backend)):
        y = layer(empty)
        assert tuple(y.shape) == (0, 3, 2, 2)
        assert tuple(layer.backward(y).shape) == (0, 3, 2, 2)
        np.testing.assert_array_equal(as_numpy(layer.weight.grad), 0.0)


@pytest.mark.parametrize("make, x_shape, match", [
    (lambda b: nn.BatchNorm2d(3, backend=b), (2, 4, 2, 2), r"BatchNorm2d\(3\) expects x of shape \(N, 3, H, W\)"),
    (lambda b: nn.BatchNorm2d(3, backend=b), (2, 3, 2), r"expects x of shape \(N, 3, H, W\)"),
    (lambda b: nn.BatchNorm1d(3, backend=b), (2, 3, 2, 2), r"expects x of shape \(N, 3\) or \(N, 3, L\)"),
    (lambda b: nn.BatchNorm3d(3, backend=b), (2, 3, 2, 2), r"expects x of shape \(N, 3, D, H, W\)"),
    (lambda b: nn.LayerNorm((2, 3), backend=b), (2, 3, 2), r"LayerNorm\(\(2, 3\)\) expects x of shape \(\*, 2, 3\)"),
    (lambda b: nn.LayerNorm((2, 3), backend=b), (3,), r"expects x of shape \(\*, 2, 3\)"),
    (lambda b: nn.GroupNorm(2, 4, backend=b), (2, 3, 5), r"GroupNorm\(2, 4\) expects x of shape \(N, 4, \*\)"),
])
def test_rejects_bad_inputs(backend, make, x_shape, match):
    xp = backend.xp
    with pytest.raises(ValueError, match=match):
        make(backend)(xp.ones(x_shape, dtype=xp.float32, device=backend.device))
    with pytest.raises(TypeError, match="dtype"):
        make(backend)(xp.ones(x_shape, dtype=xp.float64, device=backend.device))


@pytest.mark.parametrize("make, error, match", [
    (lambda: nn.BatchNorm1d(0), ValueError, "num_features must be a positive int"),
    (lambda: nn.BatchNorm2d(2, eps=0), ValueError, "eps must lie in"),
    (lambda: nn.BatchNorm3d(2, momentum=2), ValueError, "momentum must lie in"),
    (lambda: nn.BatchNorm2d(2, momentum="0.1"), TypeError, "momentum must be a number"),
    (lambda: nn.LayerNorm(()), ValueError, "normalized_shape must hold at least one size"),
    (lambda: nn.LayerNorm((3, 0)), ValueError, "normalized_shape must be >= 1"),
    (lambda: nn.LayerNorm(2.5), TypeError, "normalized_shape must contain ints"),
    (lambda: nn.GroupNorm(3, 4), ValueError, "num_groups=3 must divide num_channels=4"),
    (lambda: nn.GroupNorm(0, 4), ValueError, "num_groups must be a positive int"),
    (lambda: nn.GroupNorm(2, 4, eps=-1.0), ValueError, "eps must lie in"),
])
def test_rejects_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_repr_and_parameter_names():
    assert repr(nn.BatchNorm1d(4, momentum=None)).startswith(
        "BatchNorm1d(4, eps=1e-05, momentum=None, affine=True, track_running_stats=True, backend=")
    assert [n for n, _ in nn.LayerNorm(3, bias=False).named_parameters()] == ["weight"]
    assert [n for n, _ in nn.GroupNorm(1, 2).named_parameters()] == ["weight", "bias"]
    assert list(nn.LayerNorm(3, elementwise_affine=False).named_parameters()) == []
