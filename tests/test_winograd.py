"""algorithm="winograd" (F(2x2, 3x3)), "winograd4x4" (F(4x4, 3x3)) and "auto" against the float64 loop reference,
on every backend; the Toom-Cook matrices against the correlation they compute."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xpconv
import xpconv._winograd as winograd
from algorithm_checks import (
    check_against_reference,
    check_finite_differences,
    check_layer_matches_im2col,
    check_layouts_match_im2col,
    float32_errors,
    workspace_peaks,
)
from conftest import as_numpy
from xpconv import nn
from xpconv._ops import REGISTRY

WINOGRAD = {"winograd": 2, "winograd4x4": 4}           # algorithm -> output tile side m
EPS32 = float(np.finfo(np.float32).eps)
# The float32 bounds docs/algorithms.md states, in eps32: max |y32 - y64| <= bound * eps32 * max conv(|x|, |W|),
# likewise for dL/dx (with |dY|, |W|) and dL/dW (with |dY|, |x|).
DOCUMENTED_BOUNDS = {"im2col": 4, "winograd": 4, "winograd4x4": 32}


def _check(backend, rng, n, c, o, size, groups, padding, algorithm, bias=True, max_workspace_bytes=2**28):
    check_against_reference(backend, rng, (n, c, *size), (o, c // groups, 3, 3), algorithm, padding=padding,
                            groups=groups, bias=bias, max_workspace_bytes=max_workspace_bytes)


@pytest.mark.parametrize("algorithm", ["auto", "im2col", *WINOGRAD])
@pytest.mark.parametrize("n, c, o, size, groups, padding", [
    (2, 3, 4, (7, 8), 1, 1),        # odd output rows: a half tile
    (1, 4, 6, (5, 5), 2, 0),        # groups, no padding
    (2, 2, 3, (6, 9), 1, 3),        # padding beyond the kernel: dL/dx's flipped padding is negative (crops dY)
    (3, 4, 4, (4, 3), 4, (2, 1)),   # depthwise, per-axis padding
    (1, 1, 1, (3, 3), 1, 0),        # a single output
])
def test_every_algorithm_matches_the_reference(backend, rng, algorithm, n, c, o, size, groups, padding):
    _check(backend, rng, n, c, o, size, groups, padding, algorithm)


def _one_sample_bytes(algorithm, c, o, out, size):
    """float64 bytes of one sample's workspace, the larger of forward (and dL/dW) and dL/dx's forward."""
    m = WINOGRAD[algorithm]
    t = winograd.TRANSFORMS[m]
    return 8 * max(winograd._per_sample(c, o, t, winograd._tiles(out, m)),
                   winograd._per_sample(o, c, t, winograd._tiles(size, m)))


@pytest.mark.parametrize("algorithm", WINOGRAD)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 3), cg=st.integers(1, 3), og=st.integers(1, 3), groups=st.integers(1, 2),
       h=st.integers(1, 9), w=st.integers(1, 9), pad_h=st.integers(0, 3), pad_w=st.integers(0, 3),
       bias=st.booleans(), per_chunk=st.sampled_from([None, 1, 2]), seed=st.integers(0, 2**16))
def test_winograd_on_random_configurations(backend, algorithm, n, cg, og, groups, h, w, pad_h, pad_w, bias,
                                           per_chunk, seed):
    """Random sizes, paddings, groups, and workspace caps that let 1 or 2 samples (or all: None) in a chunk."""
    h, w = max(h, 3 - 2 * pad_h), max(w, 3 - 2 * pad_w)
    rng = np.random.default_rng(seed)
    c, o = cg * groups, og * groups
    per_sample = _one_sample_bytes(algorithm, c, o, (h + 2 * pad_h - 2, w + 2 * pad_w - 2), (h, w))
    _check(backend, rng, n, c, o, (h, w), groups, (pad_h, pad_w), algorithm, bias,
           None if per_chunk is None else per_chunk * per_sample)


@pytest.mark.parametrize("algorithm", WINOGRAD)
def test_winograd_gradients_by_finite_differences(backend, rng, algorithm):
    check_finite_differences(backend, rng, (2, 4, 7, 6), (4, 2, 3, 3), algorithm, padding=(1, 2), groups=2)


def test_the_registry_holds_the_documented_bounds():
    assert {name: a.float32_bound for name, a in REGISTRY.items() if name in DOCUMENTED_BOUNDS} == DOCUMENTED_BOUNDS


@pytest.mark.parametrize("algorithm", ["im2col", *WINOGRAD])
@pytest.mark.parametrize("c, o, size", [(3, 16, 16), (64, 32, 8), (256, 16, 6)])
def test_float32_error_stays_under_the_documented_bound(backend, rng, algorithm, c, o, size):
    """float32 results against float64, each relative to the convolution of the absolute values."""
    errors = float32_errors(backend, rng, (2, c, size, size), (o, c, 3, 3), algorithm, padding=1)
    assert max(errors) <= DOCUMENTED_BOUNDS[algorithm] * EPS32, [e / EPS32 for e in errors]


@pytest.mark.parametrize("algorithm", WINOGRAD)
def test_the_layer_takes_the_algorithm(backend, rng, algorithm):
    """nn.Conv2d(algorithm=...) gives im2col's layer's output and gradients (float64)."""
    check_layer_matches_im2col(backend, rng, lambda **kw: nn.Conv2d(4, 6, 3, padding=1, groups=2, backend=backend,
                                                                     dtype="float64", seed=3, **kw),
                               algorithm, (2, 4, 5, 6), (2, 6, 5, 6))


@pytest.mark.parametrize("algorithm", WINOGRAD)
@pytest.mark.parametrize("kwargs, why", [
    (dict(kernel_size=5, padding=2), "3x3 kernel"),
    (dict(kernel_size=3, stride=2), "stride 1"),
    (dict(kernel_size=3, dilation=2), "dilation 1"),
])
def test_winograd_refuses_what_it_cannot_do(algorithm, kwargs, why):
    with pytest.raises(ValueError, match=f"algorithm='{algorithm}' cannot.*{why}"):
        nn.Conv2d(2, 2, algorithm=algorithm, **kwargs)
    x, w = np.ones((1, 2, 8, 8)), np.ones((2, 2, kwargs["kernel_size"], kwargs["kernel_size"]))
    hyper = {k: v for k, v in kwargs.items() if k != "kernel_size"}
    with pytest.raises(ValueError, match=why):
        xpconv.conv2d(x, w, algorithm=algorithm, **hyper)


@pytest.mark.parametrize("algorithm", WINOGRAD)
def test_winograd_is_two_dimensional_and_names_are_checked(algorithm):
    with pytest.raises(ValueError, match="2-D only"):
        xpconv.conv1d(np.ones((1, 2, 8)), np.ones((2, 2, 3)), algorithm=algorithm)
    with pytest.raises(ValueError, match="2-D only"):
        nn.Conv3d(2, 2, 3, algorithm=algorithm)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        nn.Conv2d(2, 2, 3, algorithm="winograd6x6")
    with pytest.raises(ValueError, match="algorithm must be one of"):
        xpconv.conv2d_backward(np.ones((1, 2, 6, 6)), np.ones((1, 2, 8, 8)), np.ones((2, 2, 3, 3)), algorithm="gemm")


@pytest.mark.parametrize("algorithm", WINOGRAD)
def test_a_workspace_cap_below_one_sample_is_a_clear_error(algorithm):
    x, w = np.ones((2, 8, 16, 16)), np.ones((8, 8, 3, 3))
    with pytest.raises(ValueError, match="Winograd does not split a sample"):
        xpconv.conv2d(x, w, padding=1, algorithm=algorithm, max_workspace_bytes=1024)
    one_sample = _one_sample_bytes(algorithm, 8, 8, (16, 16), (16, 16))
    chunked = xpconv.conv2d(x, w, padding=1, algorithm=algorithm, max_workspace_bytes=one_sample)
    np.testing.assert_allclose(chunked, xpconv.conv2d(x, w, padding=1), rtol=1e-12)


@pytest.mark.parametrize("algorithm", WINOGRAD)
def test_an_empty_batch(backend, algorithm):
    x = backend.asarray(np.ones((0, 2, 5, 5)), dtype="float64")
    w = backend.asarray(np.ones((3, 2, 3, 3)), dtype="float64")
    y = xpconv.conv2d(x, w, padding=1, algorithm=algorithm)
    assert tuple(y.shape) == (0, 3, 5, 5)
    dx, dw, _ = xpconv.conv2d_backward(y, x, w, padding=1, algorithm=algorithm)
    assert tuple(dx.shape) == (0, 2, 5, 5) and float(as_numpy(dw).sum()) == 0.0


@pytest.mark.parametrize("algorithm", WINOGRAD)
@pytest.mark.parametrize("channels_last, unbatched", [(True, False), (False, True), (True, True)])
def test_channels_last_and_unbatched_inputs(backend, rng, algorithm, channels_last, unbatched):
    """The op layer's layouts reach Winograd channels-first and batched: the same values as im2col (float64)."""
    check_layouts_match_im2col(backend, rng, algorithm, (2, 5, 6, 4) if channels_last else (2, 4, 5, 6),
                               (6, 3, 3, 2) if channels_last else (6, 2, 3, 3), unbatched, padding=1, groups=2,
                               channels_last=channels_last)


@pytest.mark.parametrize("algorithm", WINOGRAD)
@pytest.mark.parametrize("shape", [(32, 3, 17, 32), (32, 32, 17, 3), (64, 16, 32, 8)])
@pytest.mark.parametrize("cap", [2 * 2**20, 4 * 2**20])
def test_workspace_stays_under_the_cap(rng, algorithm, shape, cap):
    """NumPy, tracemalloc: the peak of each pass beyond its results stays under max_workspace_bytes (5 % slack for
    Python objects), where the whole batch's workspace is more than twice the cap."""
    n, c, h, o = shape
    x, w, dy = rng.standard_normal((n, c, h, h)), rng.standard_normal((o, c, 3, 3)), rng.standard_normal((n, o, h, h))
    forward_peak, backward_peak = workspace_peaks(x, w, dy, padding=1, algorithm=algorithm, max_workspace_bytes=cap)
    assert n * _one_sample_bytes(algorithm, c, o, (h, h), (h, h)) > 2 * cap
    assert forward_peak <= 1.05 * cap and backward_peak <= 1.05 * cap, (forward_peak / cap, backward_peak / cap)


@pytest.mark.parametrize("m, points", [(2, (0, 1, -1)), (4, (0, 1, -1, 2, -2)), (4, (0, 1, -1, 0.5, -0.5)),
                                       (3, (0, 1, -1, 2))])
def test_toom_cook_matrices_compute_the_correlation(rng, m, points):
    """Aᵀ [(G g) ⊙ (Bᵀ d)] = (sum_k d[i + k] g[k])_i for random d (m + 2) and g (3), float64."""
    t = winograd.toom_cook(m, points)
    at, g_mat, bt = (np.array(a) for a in (t.at, t.g, t.bt))
    assert at.shape == (m, m + 2) and g_mat.shape == (m + 2, 3) and bt.shape == (m + 2, m + 2)
    for _ in range(5):
        d, g = rng.standard_normal(m + 2), rng.standard_normal(3)
        np.testing.assert_allclose(at @ ((g_mat @ g) * (bt @ d)), np.correlate(d, g, mode="valid"), rtol=1e-12,
                                   atol=1e-12)


def test_toom_cook_needs_distinct_points():
    with pytest.raises(ValueError, match="3 distinct finite points"):
        winograd.toom_cook(2, (0, 1, 1))
