"""AdaptiveAvgPool1d/2d/3d and AdaptiveMaxPool2d: torch's bins, finite differences, torch float64, errors."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import HAS_TORCH, as_numpy
from layer_check import check_layer_gradients, torch_leaf
from xpconv import nn

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")

AVG = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
# (layer, input shape, output_size): global, divisible (a plain pool), overlapping bins, None, upsampling bins
CASES = [
    (nn.AdaptiveAvgPool2d, (2, 3, 4, 6), 1),
    (nn.AdaptiveAvgPool2d, (2, 3, 4, 6), (2, 3)),
    (nn.AdaptiveAvgPool2d, (2, 3, 5, 7), (3, 4)),
    (nn.AdaptiveAvgPool2d, (2, 3, 5, 7), (None, 3)),
    (nn.AdaptiveAvgPool2d, (1, 2, 3, 2), (5, 4)),
    (nn.AdaptiveAvgPool1d, (2, 3, 7), 3),
    (nn.AdaptiveAvgPool1d, (2, 3, 8), 1),
    (nn.AdaptiveAvgPool3d, (1, 2, 3, 4, 5), (2, 2, 3)),
    (nn.AdaptiveAvgPool3d, (1, 2, 4, 4, 2), 1),
    (nn.AdaptiveMaxPool2d, (2, 3, 4, 6), 1),
    (nn.AdaptiveMaxPool2d, (2, 3, 4, 6), (2, 3)),
    (nn.AdaptiveMaxPool2d, (2, 3, 5, 7), (3, 4)),
    (nn.AdaptiveMaxPool2d, (2, 3, 5, 7), (None, 2)),
    (nn.AdaptiveMaxPool2d, (1, 2, 3, 2), (5, 4)),
]
IDS = [f"{cls.__name__}-{shape}-{size}" for cls, shape, size in CASES]


def _distinct(rng, shape):
    """Values whose pairwise gaps are >= 0.01, so no max changes within a finite-difference step."""
    return rng.permutation(np.arange(np.prod(shape)) * 0.01 - 1.0).reshape(shape)


def _torch_reference(cls, x_np, output_size, dy_np):
    """(y, dL/dx) of torch's layer of the same name, float64."""
    import torch

    xt = torch_leaf(x_np)
    yt = getattr(torch.nn, cls.__name__)(output_size)(xt)
    yt.backward(torch.from_numpy(np.asarray(dy_np, dtype=np.float64)))
    return yt.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize("cls, shape, output_size", CASES, ids=IDS)
def test_gradients_by_finite_differences(backend, rng, cls, shape, output_size):
    layer = cls(output_size, backend=backend, dtype="float64")
    check_layer_gradients(layer, _distinct(rng, shape))


@needs_torch
@pytest.mark.parametrize("cls, shape, output_size", CASES, ids=IDS)
def test_matches_torch_batched_and_unbatched(backend, rng, cls, shape, output_size):
    x_np = rng.standard_normal(shape)
    for x_in in (x_np, x_np[0]):
        layer = cls(output_size, backend=backend, dtype="float64")
        y = layer(backend.asarray(x_in))
        dy = rng.standard_normal(tuple(y.shape))
        dx = layer.backward(backend.asarray(dy))
        y_ref, dx_ref = _torch_reference(cls, x_in, output_size, dy)
        np.testing.assert_allclose(as_numpy(y), y_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(as_numpy(dx), dx_ref, rtol=1e-10, atol=1e-12)


@needs_torch
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_configurations_match_torch(rng, data):
    nd = data.draw(st.sampled_from([1, 2, 3]), label="nd")
    cls = data.draw(st.sampled_from([AVG[nd], nn.AdaptiveMaxPool2d] if nd == 2 else [AVG[nd]]), label="cls")
    spatial = data.draw(st.lists(st.integers(1, 9), min_size=nd, max_size=nd), label="spatial")
    entry = st.integers(1, 10) if nd == 1 else st.one_of(st.none(), st.integers(1, 10))   # torch: no None in 1-D
    output_size = tuple(data.draw(st.lists(entry, min_size=nd, max_size=nd), label="output_size"))
    x_np = rng.standard_normal((2, 2, *spatial))
    layer = cls(output_size, dtype="float64")
    y = layer(x_np)
    dy = rng.standard_normal(y.shape)
    y_ref, dx_ref = _torch_reference(cls, x_np, output_size, dy)
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.backward(dy), dx_ref, rtol=1e-10, atol=1e-12)


def test_global_average_pooling_is_the_spatial_mean(backend, rng):
    x_np = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    layer = nn.AdaptiveAvgPool2d(1, backend=backend)
    y = layer(backend.asarray(x_np))
    assert y.dtype == backend.xp.float32
    np.testing.assert_allclose(as_numpy(y), x_np.mean(axis=(2, 3), keepdims=True), rtol=1e-6, atol=1e-6)
    dx = layer.backward(backend.xp.ones_like(y))
    assert dx.dtype == backend.xp.float32
    np.testing.assert_allclose(as_numpy(dx), np.full(x_np.shape, 1 / 30), rtol=1e-6)


def test_overlapping_bins_follow_torch_formula(backend):
    """L = 5, o = 3: bins [0, 2), [1, 4), [3, 5) (start floor(i*L/o), end ceil((i+1)*L/o))."""
    x = np.array([[[1.0, 2.0, 4.0, 8.0, 16.0]]])
    y = nn.AdaptiveAvgPool1d(3, backend=backend, dtype="float64")(backend.asarray(x))
    np.testing.assert_allclose(as_numpy(y), [[[1.5, 14 / 3, 12.0]]], rtol=1e-12)


def test_max_routes_gradient_to_first_argmax_in_overlapping_bins(backend):
    x = np.array([[[[3.0, 3.0, 1.0], [0.0, 2.0, 2.0], [1.0, 0.0, 1.0]]]], dtype=np.float32)
    layer = nn.AdaptiveMaxPool2d(2, backend=backend)                 # bins [0, 2) and [1, 3) per axis
    y = layer(backend.asarray(x))
    np.testing.assert_array_equal(as_numpy(y), [[[[3.0, 3.0], [2.0, 2.0]]]])
    dx = layer.backward(backend.asarray(np.array([[[[1.0, 2.0], [4.0, 8.0]]]], dtype=np.float32)))
    # ties go to the first position in row-major order: (0, 0) for bin (0, 0), (0, 1) for bin (0, 1)
    np.testing.assert_array_equal(as_numpy(dx), [[[[1.0, 2.0, 0.0], [0.0, 12.0, 0.0], [0.0, 0.0, 0.0]]]])


@pytest.mark.parametrize("cls", [nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d])
@pytest.mark.parametrize("output_size", [1, (2, 3), (3, 2)])
def test_empty_batch_gives_empty_outputs_and_grads(backend, cls, output_size):
    xp = backend.xp
    layer = cls(output_size, backend=backend)
    y = layer(xp.zeros((0, 3, 4, 6), dtype=xp.float32, device=backend.device))
    assert tuple(y.shape) == (0, 3, *((1, 1) if output_size == 1 else output_size))
    assert tuple(layer.backward(xp.zeros_like(y)).shape) == (0, 3, 4, 6)


@pytest.mark.parametrize("cls", [nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d])
@pytest.mark.parametrize("output_size", [1, (3, 2)])
def test_wrong_grad_shape_is_rejected_and_keeps_the_cache(backend, rng, cls, output_size):
    x_np = rng.standard_normal((2, 3, 4, 5))
    layer = cls(output_size, backend=backend, dtype="float64")
    y = layer(backend.asarray(x_np))
    with pytest.raises(ValueError, match=r"grad_output of the forward output's shape \(2, 3, \d, \d\), got \(2, 3\)"):
        layer.backward(backend.asarray(np.ones((2, 3))))
    dx = layer.backward(backend.xp.ones_like(y))                     # the cache survived the rejected call
    assert tuple(dx.shape) == x_np.shape
    with pytest.raises(RuntimeError, match="training mode"):
        layer.backward(backend.xp.ones_like(y))


def test_eval_keeps_no_cache_and_leaves_input_untouched(backend, rng):
    x_np = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    x = backend.asarray(x_np)
    for cls in (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d):
        layer = cls(3, backend=backend).eval()
        y = layer(x)
        np.testing.assert_array_equal(as_numpy(x), x_np)
        with pytest.raises(RuntimeError, match="training mode"):
            layer.backward(y)


@pytest.mark.parametrize("cls, kwargs, error, match", [
    (nn.AdaptiveAvgPool2d, {"output_size": 0}, ValueError, "output_size must be a positive int"),
    (nn.AdaptiveAvgPool2d, {"output_size": (1, 2, 3)}, ValueError, "tuple of 2 ints or None"),
    (nn.AdaptiveAvgPool1d, {"output_size": 2.5}, ValueError, "output_size must be an int or a tuple of 1 ints"),
    (nn.AdaptiveAvgPool3d, {"output_size": (1, 2)}, ValueError, "tuple of 3 ints or None"),
    (nn.AdaptiveAvgPool1d, {"output_size": None}, ValueError, "output_size must be an int or a tuple of 1 ints"),
    (nn.AdaptiveMaxPool2d, {"output_size": 2, "return_indices": True}, ValueError, "return_indices=True"),
])
def test_rejects_bad_arguments(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(**kwargs)


def test_rejects_bad_inputs(backend):
    xp = backend.xp
    layer = nn.AdaptiveAvgPool2d(2, backend=backend)
    with pytest.raises(ValueError, match=r"expects x of shape \(N, C, H, W\) or \(C, H, W\)"):
        layer(xp.zeros((4, 4), dtype=xp.float32, device=backend.device))
    with pytest.raises(ValueError, match="non-empty spatial axes"):
        layer(xp.zeros((1, 2, 0, 4), dtype=xp.float32, device=backend.device))
    with pytest.raises(TypeError, match="real floating"):
        layer(xp.zeros((1, 2, 4, 4), dtype=xp.int32, device=backend.device))
    assert repr(nn.AdaptiveAvgPool2d((None, 3))) == "AdaptiveAvgPool2d(output_size=(None, 3))"
