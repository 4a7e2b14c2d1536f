"""algorithm="winograd" (F(2x2, 3x3)) and "auto" against the float64 loop reference, on every backend."""
from __future__ import annotations

import numpy as np
import pytest
from algorithm_checks import (
    FLOAT32_BOUND,
    check_against_reference,
    check_finite_differences,
    float32_errors,
    workspace_peaks,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xpconv
import xpconv._winograd as winograd
from conftest import as_numpy
from xpconv import nn

ALGORITHMS = ("auto", "im2col", "winograd")


def _check(backend, rng, n, c, o, size, groups, padding, algorithm, bias=True, max_workspace_bytes=2**28):
    check_against_reference(backend, rng, (n, c, *size), (o, c // groups, 3, 3), algorithm, padding=padding,
                            groups=groups, bias=bias, max_workspace_bytes=max_workspace_bytes)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("n, c, o, size, groups, padding", [
    (2, 3, 4, (7, 8), 1, 1),        # odd output rows: a half tile
    (1, 4, 6, (5, 5), 2, 0),        # groups, no padding
    (2, 2, 3, (6, 9), 1, 3),        # padding beyond the kernel: dL/dx's flipped padding is negative (crops dY)
    (3, 4, 4, (4, 3), 4, (2, 1)),   # depthwise, per-axis padding
    (1, 1, 1, (3, 3), 1, 0),        # a single output
])
def test_every_algorithm_matches_the_reference(backend, rng, algorithm, n, c, o, size, groups, padding):
    _check(backend, rng, n, c, o, size, groups, padding, algorithm)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 3), cg=st.integers(1, 3), og=st.integers(1, 3), groups=st.integers(1, 2),
       h=st.integers(1, 9), w=st.integers(1, 9), pad_h=st.integers(0, 3), pad_w=st.integers(0, 3),
       bias=st.booleans(), per_chunk=st.sampled_from([None, 1, 2]), seed=st.integers(0, 2**16))
def test_winograd_on_random_configurations(backend, n, cg, og, groups, h, w, pad_h, pad_w, bias, per_chunk, seed):
    """Random sizes, paddings, groups, and workspace caps that let 1 or 2 samples (or all: None) in a chunk."""
    h, w = max(h, 3 - 2 * pad_h), max(w, 3 - 2 * pad_w)
    rng = np.random.default_rng(seed)
    c, o = cg * groups, og * groups
    out = (h + 2 * pad_h - 2, w + 2 * pad_w - 2)
    tiles = [((a + 1) // 2, (b + 1) // 2) for a, b in (out, (h, w))]
    per_sample = 8 * max(winograd._per_sample(c, o, tiles[0]), winograd._per_sample(o, c, tiles[1]))
    _check(backend, rng, n, c, o, (h, w), groups, (pad_h, pad_w), "winograd", bias,
           None if per_chunk is None else per_chunk * per_sample)


def test_winograd_gradients_by_finite_differences(backend, rng):
    check_finite_differences(backend, rng, (2, 4, 5, 4), (4, 2, 3, 3), "winograd", padding=(1, 2), groups=2)


@pytest.mark.parametrize("c, o, size", [(3, 16, 16), (64, 32, 8), (256, 16, 6)])
def test_float32_error_stays_under_the_documented_bound(backend, rng, c, o, size):
    """Winograd's float32 results against float64, each relative to the convolution of the absolute values."""
    errors = float32_errors(backend, rng, (2, c, size, size), (o, c, 3, 3), "winograd", padding=1)
    assert max(errors) <= FLOAT32_BOUND, errors


def test_the_layer_takes_the_algorithm(backend, rng):
    """nn.Conv2d(algorithm="winograd") gives im2col's layer's output and gradients (float64)."""
    layers = [nn.Conv2d(4, 6, 3, padding=1, groups=2, backend=backend, dtype="float64", seed=3, algorithm=a)
              for a in ("im2col", "winograd")]
    x = backend.asarray(rng.standard_normal((2, 4, 5, 6)), dtype="float64")
    dy = backend.asarray(rng.standard_normal((2, 6, 5, 6)), dtype="float64")
    results = []
    for layer in layers:
        y = layer(x)
        results.append([as_numpy(a) for a in (y, layer.backward(dy), layer.weight.grad, layer.bias.grad)])
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert "algorithm='winograd'" in repr(layers[1])


@pytest.mark.parametrize("kwargs, why", [
    (dict(kernel_size=5, padding=2), "3x3 kernel"),
    (dict(kernel_size=3, stride=2), "stride 1"),
    (dict(kernel_size=3, dilation=2), "dilation 1"),
])
def test_winograd_refuses_what_it_cannot_do(kwargs, why):
    with pytest.raises(ValueError, match=f"algorithm='winograd' cannot.*{why}"):
        nn.Conv2d(2, 2, algorithm="winograd", **kwargs)
    x, w = np.ones((1, 2, 8, 8)), np.ones((2, 2, kwargs["kernel_size"], kwargs["kernel_size"]))
    hyper = {k: v for k, v in kwargs.items() if k != "kernel_size"}
    with pytest.raises(ValueError, match=why):
        xpconv.conv2d(x, w, algorithm="winograd", **hyper)


def test_winograd_is_two_dimensional_and_names_are_checked():
    with pytest.raises(ValueError, match="2-D only"):
        xpconv.conv1d(np.ones((1, 2, 8)), np.ones((2, 2, 3)), algorithm="winograd")
    with pytest.raises(ValueError, match="2-D only"):
        nn.Conv3d(2, 2, 3, algorithm="winograd")
    with pytest.raises(ValueError, match="algorithm must be one of"):
        nn.Conv2d(2, 2, 3, algorithm="fast")
    with pytest.raises(ValueError, match="algorithm must be one of"):
        xpconv.conv2d_backward(np.ones((1, 2, 6, 6)), np.ones((1, 2, 8, 8)), np.ones((2, 2, 3, 3)), algorithm="gemm")


def test_a_workspace_cap_below_one_sample_is_a_clear_error():
    x, w = np.ones((2, 8, 16, 16)), np.ones((8, 8, 3, 3))
    with pytest.raises(ValueError, match="Winograd does not split a sample"):
        xpconv.conv2d(x, w, padding=1, algorithm="winograd", max_workspace_bytes=1024)
    chunked = xpconv.conv2d(x, w, padding=1, algorithm="winograd", max_workspace_bytes=300_000)  # one sample per chunk
    np.testing.assert_allclose(chunked, xpconv.conv2d(x, w, padding=1), rtol=1e-12)


def test_an_empty_batch(backend):
    x = backend.asarray(np.ones((0, 2, 5, 5)), dtype="float64")
    w = backend.asarray(np.ones((3, 2, 3, 3)), dtype="float64")
    y = xpconv.conv2d(x, w, padding=1, algorithm="winograd")
    assert tuple(y.shape) == (0, 3, 5, 5)
    dx, dw, _ = xpconv.conv2d_backward(y, x, w, padding=1, algorithm="winograd")
    assert tuple(dx.shape) == (0, 2, 5, 5) and float(as_numpy(dw).sum()) == 0.0


@pytest.mark.parametrize("channels_last, unbatched", [(True, False), (False, True), (True, True)])
def test_channels_last_and_unbatched_inputs(backend, rng, channels_last, unbatched):
    """The op layer's layouts reach Winograd channels-first and batched: the same values as im2col (float64)."""
    x = rng.standard_normal((2, 5, 6, 4) if channels_last else (2, 4, 5, 6))
    w = rng.standard_normal((6, 3, 3, 2) if channels_last else (6, 2, 3, 3))
    if unbatched:
        x = x[0]
    xb, wb = backend.asarray(x, dtype="float64"), backend.asarray(w, dtype="float64")
    kw = dict(padding=1, groups=2, channels_last=channels_last)
    results = []
    for algorithm in ("im2col", "winograd"):
        y = xpconv.conv2d(xb, wb, algorithm=algorithm, **kw)
        results.append([as_numpy(a) for a in (y, *xpconv.conv2d_backward(y, xb, wb, algorithm=algorithm, **kw))])
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(32, 3, 17, 32), (32, 32, 17, 3), (64, 16, 32, 8)])
@pytest.mark.parametrize("cap", [2 * 2**20, 4 * 2**20])
def test_workspace_stays_under_the_cap(rng, shape, cap):
    """NumPy, tracemalloc: the peak of each pass beyond its results stays under max_workspace_bytes (5 % slack for
    Python objects), where the whole batch's workspace is more than twice the cap."""
    n, c, h, o = shape
    x, w, dy = rng.standard_normal((n, c, h, h)), rng.standard_normal((o, c, 3, 3)), rng.standard_normal((n, o, h, h))
    forward_peak, backward_peak = workspace_peaks(x, w, dy, padding=1, algorithm="winograd", max_workspace_bytes=cap)
    assert n * 8 * winograd._per_sample(c, o, ((h + 1) // 2, (h + 1) // 2)) > 2 * cap
    assert forward_peak <= 1.05 * cap and backward_peak <= 1.05 * cap, (forward_peak / cap, backward_peak / cap)
