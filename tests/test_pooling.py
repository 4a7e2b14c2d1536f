"""MaxPool1d/2d/3d and AvgPool1d/2d/3d: finite differences on every backend, torch float64 as reference
(fixed configurations and hypothesis), ceil_mode, count_include_pad, padding, empty batches, errors."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import HAS_TORCH, as_numpy
from layer_check import check_layer_gradients, torch_leaf
from xpconv import nn
from xpconv.nn.pooling import pool_output_size

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")

MAX = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
AVG = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
# (cls, input shape, kwargs): non-overlapping, overlapping, padded, rectangular, kernel 1, ceil_mode with a clipped
# last window, count_include_pad=False, divisor_override, dilation, 1-D and 3-D
CASES = [
    (nn.MaxPool2d, (1, 2, 5, 6), {"kernel_size": 2}),
    (nn.MaxPool2d, (1, 2, 5, 6), {"kernel_size": 3, "stride": 1, "padding": 1}),
    (nn.MaxPool2d, (1, 2, 5, 6), {"kernel_size": (2, 3), "stride": (1, 2), "padding": (1, 0)}),
    (nn.MaxPool2d, (1, 2, 5, 6), {"kernel_size": 1}),
    (nn.MaxPool2d, (1, 2, 5, 6), {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
    (nn.MaxPool2d, (1, 2, 7, 6), {"kernel_size": 2, "stride": 2, "dilation": (2, 1), "ceil_mode": True}),
    (nn.MaxPool1d, (2, 2, 7), {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
    (nn.MaxPool3d, (1, 2, 3, 4, 5), {"kernel_size": 2, "stride": (1, 2, 2), "padding": (0, 1, 1)}),
    (nn.AvgPool2d, (1, 2, 5, 6), {"kernel_size": 2}),
    (nn.AvgPool2d, (1, 2, 5, 6), {"kernel_size": 3, "stride": 1, "padding": 1}),
    (nn.AvgPool2d, (1, 2, 5, 6), {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
    (nn.AvgPool2d, (1, 2, 5, 6), {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True,
                                  "count_include_pad": False}),
    (nn.AvgPool2d, (1, 2, 5, 6), {"kernel_size": (2, 3), "padding": 1, "divisor_override": 4}),
    (nn.AvgPool1d, (2, 2, 7), {"kernel_size": 2, "ceil_mode": True, "count_include_pad": False}),
    (nn.AvgPool3d, (1, 2, 3, 4, 5), {"kernel_size": 2, "stride": (1, 2, 2), "padding": (0, 1, 1), "ceil_mode": True}),
]
IDS = [f"{cls.__name__}-{shape}-{kwargs}" for cls, shape, kwargs in CASES]


def _distinct(rng, shape):
    """Values whose pairwise gaps are >= 0.01, so no max changes within a finite-difference step."""
    return rng.permutation(np.arange(np.prod(shape)) * 0.01 - 1.0).reshape(shape)


def _torch_reference(cls, x_np, kwargs, dy_np):
    """(y, dL/dx) of torch's layer of the same name and arguments, float64; dL/dx is None where y has an infinity.

    A dilated max window that holds only padding gives -inf, and torch 2.13's backward then writes its gradient
    outside the input's memory (heap corruption, seen as an abort), so torch's backward is not called there.
    """
    import torch

    xt = torch_leaf(x_np)
    yt = getattr(torch.nn, cls.__name__)(**kwargs)(xt)
    if torch.isinf(yt).any():
        return yt.detach().numpy(), None
    yt.backward(torch.from_numpy(np.asarray(dy_np, dtype=np.float64)))
    return yt.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize("cls, shape, kwargs", CASES, ids=IDS)
def test_gradients_by_finite_differences(backend, rng, cls, shape, kwargs):
    check_layer_gradients(cls(**kwargs, backend=backend, dtype="float64"), _distinct(rng, shape))


@needs_torch
@pytest.mark.parametrize("cls, shape, kwargs", CASES, ids=IDS)
def test_matches_torch_batched_and_unbatched(backend, rng, cls, shape, kwargs):
    x_np = rng.standard_normal(shape) - 2.0                  # mostly negative: padding must never win the max
    for x_in in (x_np, x_np[0]):
        layer = cls(**kwargs, backend=backend, dtype="float64")
        y = layer(backend.asarray(x_in))
        dy = rng.standard_normal(tuple(y.shape))
        dx = layer.backward(backend.asarray(dy))
        y_ref, dx_ref = _torch_reference(cls, x_in, kwargs, dy)
        np.testing.assert_allclose(as_numpy(y), y_ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(as_numpy(dx), dx_ref, rtol=1e-12, atol=1e-12)


@st.composite
def pool_configs(draw):
    """A random valid pooling: class, input shape and torch keyword arguments."""
    nd = draw(st.sampled_from([1, 2, 3]))
    is_max = draw(st.booleans())
    kernel = draw(st.lists(st.integers(1, 4), min_size=nd, max_size=nd))
    stride = draw(st.lists(st.integers(1, 3), min_size=nd, max_size=nd))
    padding = [draw(st.integers(0, k // 2)) for k in kernel]
    dilation = draw(st.lists(st.integers(1, 2), min_size=nd, max_size=nd)) if is_max else [1] * nd
    ceil_mode = draw(st.booleans())
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True)]
    # torch's avg_pool3d also wants the unpadded input as large as the kernel; xpconv pools those inputs too
    low = span if nd == 3 and not is_max else [max(1, s - 2 * p) for s, p in zip(span, padding, strict=True)]
    spatial = [draw(st.integers(lo, s + 5)) for lo, s in zip(low, span, strict=True)]
    kwargs = {"kernel_size": tuple(kernel), "stride": tuple(stride), "padding": tuple(padding), "ceil_mode": ceil_mode}
    if is_max:
        kwargs["dilation"] = tuple(dilation)
    else:
        kwargs["count_include_pad"] = draw(st.booleans())
        if nd > 1 and draw(st.booleans()):                   # torch.nn.AvgPool1d has no divisor_override
            kwargs["divisor_override"] = draw(st.integers(1, 5))
    return (MAX if is_max else AVG)[nd], (2, 2, *spatial), kwargs


@needs_torch
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cfg=pool_configs())
def test_random_configurations_match_torch(rng, cfg):
    cls, shape, kwargs = cfg
    x_np = _distinct(rng, shape) - 2.0
    layer = cls(**kwargs, dtype="float64")
    y = layer(x_np)
    dy = rng.standard_normal(y.shape)
    y_ref, dx_ref = _torch_reference(cls, x_np, kwargs, dy)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    if dx_ref is None:
        # A dilated window that holds only padding gives -inf in both; xpconv sends no gradient from it.
        assert np.all(np.isfinite(layer.backward(dy)))
        return
    np.testing.assert_allclose(layer.backward(dy), dx_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size, kernel, stride, padding, dilation, ceil_mode, expected", [
    (5, 2, 2, 0, 1, False, 2),
    (5, 2, 2, 0, 1, True, 3),       # the last window starts inside the input
    (6, 2, 2, 1, 1, True, 4),       # 6 + 2 padding, 2 stride: ceil gives 4, the 4th starts at 6 < 6 + 1
    (5, 2, 2, 1, 1, True, 3),       # ceil would give 4, but the 4th window would start in the high padding
    (7, 3, 2, 1, 2, False, 3),       # span 5 over 7 + 2: windows start at 0, 2, 4
])
def test_output_size_follows_torch(size, kernel, stride, padding, dilation, ceil_mode, expected):
    assert pool_output_size(size, kernel, stride, padding, dilation, ceil_mode) == expected


def test_max_pool_routes_gradient_to_argmax_and_skips_padding(backend):
    x = np.array([[[[-5.0, -1.0, -7.0],
                    [-3.0, -9.0, -2.0],
                    [-4.0, -6.0, -8.0]]]], dtype=np.float32)
    layer = nn.MaxPool2d(2, stride=2, padding=1, backend=backend)
    y = layer(backend.asarray(x))
    # windows over the padded input: {-5}, {-1, -7}, {-3, -4}, {-9, -2, -6, -8}
    np.testing.assert_array_equal(as_numpy(y), [[[[-5.0, -1.0], [-3.0, -2.0]]]])
    dx = layer.backward(backend.asarray(np.array([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=np.float32)))
    np.testing.assert_array_equal(as_numpy(dx), [[[[1.0, 2.0, 0.0], [3.0, 0.0, 4.0], [0.0, 0.0, 0.0]]]])
    assert dx.dtype == backend.xp.float32


def test_avg_pool_divisors_with_and_without_padding(backend):
    x = backend.asarray(np.ones((1, 1, 2, 2), dtype=np.float32))
    y = nn.AvgPool2d(2, stride=1, padding=1, backend=backend)(x)
    np.testing.assert_allclose(as_numpy(y), [[[[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]]]])
    y = nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False, backend=backend)(x)
    np.testing.assert_allclose(as_numpy(y), np.ones((1, 1, 3, 3)))
    # ceil_mode: the clipped last window [4, 6) of [0, 5) divides by 1, not 2, even with count_include_pad
    y = nn.AvgPool1d(2, ceil_mode=True, backend=backend)(backend.asarray(np.ones((1, 1, 5), dtype=np.float32)))
    np.testing.assert_allclose(as_numpy(y), np.ones((1, 1, 3)))
    assert y.dtype == backend.xp.float32


@pytest.mark.parametrize("cls", [nn.MaxPool2d, nn.AvgPool2d])
@pytest.mark.parametrize("kwargs", [{"kernel_size": 2},
                                    {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}])
def test_empty_batch_gives_empty_outputs_and_grads(backend, cls, kwargs):
    xp = backend.xp
    layer = cls(**kwargs, backend=backend)
    y = layer(xp.zeros((0, 3, 5, 6), dtype=xp.float32, device=backend.device))
    assert tuple(y.shape) == (0, 3, *((2, 3) if kwargs["kernel_size"] == 2 else (3, 4)))
    assert tuple(layer.backward(xp.zeros_like(y)).shape) == (0, 3, 5, 6)


@pytest.mark.parametrize("cls", [nn.MaxPool2d, nn.AvgPool2d])
def test_wrong_grad_shape_is_rejected_and_keeps_the_cache(backend, rng, cls):
    x_np = rng.standard_normal((2, 3, 4, 4))
    layer = cls(2, backend=backend, dtype="float64")
    y = layer(backend.asarray(x_np))
    with pytest.raises(ValueError, match=r"forward output's shape \(2, 3, 2, 2\), got \(2, 3, 3, 3\)"):
        layer.backward(backend.asarray(np.ones((2, 3, 3, 3))))
    assert tuple(layer.backward(backend.xp.ones_like(y)).shape) == x_np.shape
    unbatched = cls(2, backend=backend, dtype="float64")
    y = unbatched(backend.asarray(x_np[0]))
    with pytest.raises(ValueError, match=r"forward output's shape \(3, 2, 2\), got \(1, 3, 2, 2\)"):
        unbatched.backward(backend.xp.ones((1, 3, 2, 2), dtype=y.dtype, device=backend.device))
    assert tuple(unbatched.backward(backend.xp.ones_like(y)).shape) == x_np.shape[1:]


def test_eval_mode_keeps_no_cache_and_input_untouched(backend, rng):
    x_np = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    x = backend.asarray(x_np)
    for cls in (nn.MaxPool2d, nn.AvgPool2d):
        layer = cls(2, backend=backend).eval()
        assert tuple(layer(x).shape) == (2, 3, 2, 2)
        np.testing.assert_array_equal(as_numpy(x), x_np)
        with pytest.raises(RuntimeError, match="training mode"):
            layer.backward(backend.xp.ones((2, 3, 2, 2), dtype=backend.xp.float32, device=backend.device))


@pytest.mark.parametrize("cls, kwargs, error, match", [
    (nn.MaxPool2d, {"kernel_size": 2, "padding": 2}, ValueError, "at most half of kernel_size"),
    (nn.AvgPool2d, {"kernel_size": 0}, ValueError, "kernel_size"),
    (nn.MaxPool1d, {"kernel_size": (2, 2)}, ValueError, "kernel_size must be an int or a tuple of 1 ints"),
    (nn.MaxPool3d, {"kernel_size": 2, "stride": 0}, ValueError, "stride must be >= 1"),
    (nn.MaxPool2d, {"kernel_size": 2, "dilation": 0}, ValueError, "dilation must be >= 1"),
    (nn.MaxPool2d, {"kernel_size": (2, 2.0)}, TypeError, "kernel_size must contain ints"),
    (nn.MaxPool2d, {"kernel_size": 2, "return_indices": True}, ValueError, r"return_indices=True\) is not supported"),
    (nn.AvgPool2d, {"kernel_size": 2, "divisor_override": 0}, ValueError, "divisor_override must be a positive int"),
])
def test_rejects_bad_arguments(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(**kwargs)


def test_rejects_bad_inputs(backend):
    xp = backend.xp
    with pytest.raises(ValueError, match=r"expects x of shape \(N, C, H, W\) or \(C, H, W\)"):
        nn.MaxPool2d(2, backend=backend)(xp.zeros((4, 4), dtype=xp.float32, device=backend.device))
    with pytest.raises(ValueError, match=r"expects x of shape \(N, C, L\) or \(C, L\)"):
        nn.AvgPool1d(2, backend=backend)(xp.zeros((1, 1, 4, 4), dtype=xp.float32, device=backend.device))
    with pytest.raises(ValueError, match="larger than the padded input"):
        nn.AvgPool2d(5, backend=backend)(xp.zeros((1, 1, 3, 3), dtype=xp.float32, device=backend.device))
    with pytest.raises(ValueError, match="larger than the padded input"):
        nn.MaxPool1d(2, dilation=3, backend=backend)(xp.zeros((1, 1, 3), dtype=xp.float32, device=backend.device))
    with pytest.raises(TypeError, match="real floating"):
        nn.MaxPool2d(2, backend=backend)(xp.zeros((1, 1, 4, 4), dtype=xp.int64, device=backend.device))
