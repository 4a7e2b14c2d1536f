"""algorithm="fft" against the float64 loop reference on every backend, 1-D, 2-D and 3-D; its float32 bound,
workspace cap and the measured rule :func:`xpconv._fft.fft_preferred`."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xpconv
import xpconv._fft as fft
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
from xpconv._geometry import make_geometry
from xpconv.bench.suite import select_layers

EPS32 = float(np.finfo(np.float32).eps)


def float32_bound(kernel, padding, spatial) -> float:
    """The bound docs/algorithms.md states: max |y32 - y64| <= log2(prod(S)) / 2 * eps32 * max conv(|x|, |W|)."""
    size = fft.transform_shape(make_geometry(kernel, 1, padding, 1, 1), spatial)
    return math.log2(math.prod(size)) / 2 * EPS32


@pytest.mark.parametrize("x_shape, w_shape, hyper", [
    ((2, 3, 11), (4, 3, 5), dict(padding=2)),                                      # 1-D
    ((2, 2, 9), (3, 2, 4), dict(padding="same")),                                  # even kernel: lo != hi
    ((1, 4, 12), (4, 2, 3), dict(stride=3, dilation=2, groups=2, padding=1)),      # stride, dilation, groups
    ((2, 3, 7, 8), (4, 3, 5, 5), dict(padding=2)),                                 # 2-D 5x5
    ((1, 4, 9, 6), (6, 2, 3, 2), dict(stride=(2, 1), dilation=(1, 2), padding=(4, 1), groups=2)),  # pad > kernel
    ((3, 4, 4, 3), (4, 1, 3, 3), dict(padding=(2, 1), groups=4)),                  # depthwise
    ((1, 1, 3, 3), (1, 1, 3, 3), {}),                                              # a single output
    ((2, 2, 4, 5, 3), (3, 2, 3, 2, 3), dict(padding=(1, 0, 2), stride=(1, 2, 1))),  # 3-D
])
def test_fft_matches_the_reference(backend, rng, x_shape, w_shape, hyper):
    check_against_reference(backend, rng, x_shape, w_shape, "fft", **hyper)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), nd=st.integers(1, 3), n=st.integers(1, 3), cg=st.integers(1, 3), og=st.integers(1, 3),
       groups=st.integers(1, 2), bias=st.booleans(), per_chunk=st.sampled_from([None, 1, 2]),
       seed=st.integers(0, 2**16))
def test_fft_on_random_configurations(backend, data, nd, n, cg, og, groups, bias, per_chunk, seed):
    """Random ranks, sizes, kernels, strides, dilations, paddings, groups, and workspace caps that let 1 or 2 samples
    (or all: None) in a chunk."""
    axes = st.integers(1, 2 if nd == 3 else 3)
    kernel = data.draw(st.tuples(*[st.integers(1, 4)] * nd))
    stride = data.draw(st.tuples(*[axes] * nd))
    dilation = data.draw(st.tuples(*[axes] * nd))
    padding = data.draw(st.tuples(*[st.integers(0, 3)] * nd))
    spatial = tuple(max(data.draw(st.integers(1, 6 if nd == 3 else 10)), d * (k - 1) + 1 - 2 * p)
                    for k, d, p in zip(kernel, dilation, padding, strict=True))
    c, o = cg * groups, og * groups
    cap = None
    if per_chunk is not None:
        fixed, per_sample = fft.workspace_elements(c, o, groups, fft.transform_shape(
            make_geometry(kernel, stride, padding, dilation, groups), spatial))
        cap = 8 * (fixed + per_chunk * per_sample)
    check_against_reference(backend, np.random.default_rng(seed), (n, c, *spatial), (o, cg, *kernel), "fft",
                            stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias,
                            max_workspace_bytes=cap)


@pytest.mark.parametrize("x_shape, w_shape, hyper", [
    ((2, 4, 6, 5), (4, 2, 3, 2), dict(padding=(1, 2), stride=(2, 1), dilation=(1, 2), groups=2)),
    ((2, 3, 9), (2, 3, 4), dict(padding="same")),
])
def test_fft_gradients_by_finite_differences(backend, rng, x_shape, w_shape, hyper):
    check_finite_differences(backend, rng, x_shape, w_shape, "fft", **hyper)


@pytest.mark.parametrize("c, o, spatial, k", [(3, 16, (16, 16), 5), (32, 16, (24, 24), 7), (8, 8, (4096,), 31),
                                              (4, 4, (8, 8, 8), 5)])
def test_float32_error_stays_under_the_documented_bound(backend, rng, c, o, spatial, k):
    """FFT's float32 results against float64, relative to the largest convolution of the absolute values."""
    nd = len(spatial)
    errors = float32_errors(backend, rng, (2, c, *spatial), (o, c, *(k,) * nd), "fft", padding=k // 2)
    assert max(errors) <= float32_bound((k,) * nd, k // 2, spatial), errors


def test_the_bound_is_over_the_whole_output(rng):
    """A signal loud in one half and quiet in the other: the error stays under the bound taken over the whole
    output, though in the quiet half it is far above that half's own scale (an FFT mixes every position)."""
    x = rng.standard_normal((1, 4, 2048))
    x[..., :1024] *= 1e3
    x[..., 1024:] *= 1e-3
    w = rng.standard_normal((4, 4, 15)) / np.sqrt(60)
    exact, scale = xpconv.conv1d(x, w, padding=7), xpconv.conv1d(abs(x), abs(w), padding=7)
    error = np.abs(xpconv.conv1d(x.astype(np.float32), w.astype(np.float32), padding=7, algorithm="fft") - exact)
    assert error.max() / scale.max() <= float32_bound((15,), 7, (2048,))
    quiet = slice(1100, None)
    assert error[..., quiet].max() / scale[..., quiet].max() > 1e4 * EPS32


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_the_layer_takes_the_algorithm(backend, rng, nd):
    """nn.Conv{nd}d(algorithm="fft") gives im2col's layer's output and gradients (float64)."""
    cls = getattr(nn, f"Conv{nd}d")
    check_layer_matches_im2col(backend, rng, lambda **kw: cls(4, 6, 3, padding=1, stride=2, dilation=1, groups=2,
                                                              backend=backend, dtype="float64", seed=3, **kw),
                               "fft", (2, 4, *(7,) * nd), (2, 6, *(4,) * nd))


def test_a_workspace_cap_below_one_sample_is_a_clear_error():
    x, w = np.ones((2, 8, 16, 16)), np.ones((8, 8, 5, 5))
    with pytest.raises(ValueError, match="FFT does not split a sample"):
        xpconv.conv2d(x, w, padding=2, algorithm="fft", max_workspace_bytes=1024)
    with pytest.raises(ValueError, match=r"FFT's backward .*transform size \(18, 18\)"):
        xpconv.conv2d_backward(np.ones((2, 8, 16, 16)), x, w, padding=2, algorithm="fft", max_workspace_bytes=1024)
    fixed, per_sample = fft.workspace_elements(8, 8, 1, (18, 18))
    chunked = xpconv.conv2d(x, w, padding=2, algorithm="fft", max_workspace_bytes=8 * (fixed + per_sample))
    np.testing.assert_allclose(chunked, xpconv.conv2d(x, w, padding=2), rtol=1e-12)


def test_an_empty_batch(backend):
    x = backend.asarray(np.ones((0, 2, 5, 5)), dtype="float64")
    w = backend.asarray(np.ones((3, 2, 3, 3)), dtype="float64")
    y = xpconv.conv2d(x, w, padding=1, algorithm="fft")
    assert tuple(y.shape) == (0, 3, 5, 5)
    dx, dw, _ = xpconv.conv2d_backward(y, x, w, padding=1, algorithm="fft")
    assert tuple(dx.shape) == (0, 2, 5, 5) and float(as_numpy(dw).sum()) == 0.0


@pytest.mark.parametrize("channels_last, unbatched", [(True, False), (False, True), (True, True)])
def test_channels_last_and_unbatched_inputs(backend, rng, channels_last, unbatched):
    """The op layer's layouts reach FFT channels-first and batched: the same values as im2col (float64)."""
    check_layouts_match_im2col(backend, rng, "fft", (2, 9, 4) if channels_last else (2, 4, 9),
                               (6, 5, 2) if channels_last else (6, 2, 5), unbatched, padding=2, groups=2,
                               channels_last=channels_last)


@pytest.mark.parametrize("x_shape, o, k, cap", [((256, 8, 300), 8, 9, 2 * 2**20), ((64, 16, 16, 16), 16, 5, 8 * 2**20),
                                                 ((16, 4, 10, 10, 10), 4, 3, 2 * 2**20)])
def test_workspace_stays_under_the_cap(rng, x_shape, o, k, cap):
    """NumPy, tracemalloc: the peak of each pass beyond its results stays under max_workspace_bytes (5 % slack for
    Python objects), where the whole batch's workspace is more than twice the cap."""
    n, c, *spatial = x_shape
    nd = len(spatial)
    x, w = rng.standard_normal(x_shape), rng.standard_normal((o, c, *(k,) * nd))
    dy = rng.standard_normal((n, o, *spatial))
    forward_peak, backward_peak = workspace_peaks(x, w, dy, padding=k // 2, algorithm="fft", max_workspace_bytes=cap)
    fixed, per_sample = fft.workspace_elements(c, o, 1, fft.transform_shape(make_geometry((k,) * nd, 1, k // 2, 1, 1),
                                                                            spatial))
    assert 8 * (fixed + n * per_sample) > 2 * cap
    assert forward_peak <= 1.05 * cap and backward_peak <= 1.05 * cap, (forward_peak / cap, backward_peak / cap)


def test_transform_sizes_are_smooth_and_no_smaller_than_needed():
    assert [fft._smooth(n) for n in (1, 11, 13, 17, 97, 121)] == [1, 12, 14, 18, 98, 125]
    geom = make_geometry((5, 5), 1, 2, 1, 1)
    assert fft.transform_shape(geom, (32, 32)) == (35, 35)          # 32 + 2 padded low -> 34 -> 35 = 5 * 7


# forward+backward time fft / im2col, measured as docs/algorithms.md says (CPU time, 1 thread, min of 3 rounds)
MEASURED = [("8,32,64x64,32,5,1,2", 2.41), ("32,32,32x32,32,5,1,2", 1.00), ("32,64,32x32,64,5,1,2", 1.51),
            ("32,8,32x32,8,5,1,2", 0.88), ("32,32,32x32,32,7,1,3", 0.56), ("16,64,16x16,64,5,1,2", 1.39),
            ("32,64,512,64,5,1,2", 3.01), ("32,64,2048,64,9,1,4", 3.17), ("32,64,2048,64,31,1,15", 1.06),
            ("32,16,4096,16,15,1,7", 1.29), ("32,64,32x32,64,3,1,1", 3.64), ("8,16,16x16x16,16,5,1,2", 0.36)]


@pytest.mark.parametrize("spec, ratio", MEASURED)
def test_the_rule_prefers_fft_where_it_measured_clearly_faster(spec, ratio):
    """fft_preferred says yes exactly where FFT took at most 0.75 of im2col's time, on the measured layers."""
    layer = select_layers(spec)[0]
    geom = make_geometry((layer.k,) * layer.nd, layer.stride, layer.pad, 1, layer.groups)
    assert fft.fft_preferred(geom, layer.x_shape) == (ratio <= 0.75)


def test_the_rule_never_prefers_a_strided_or_many_channel_convolution():
    assert not fft.fft_preferred(make_geometry((7, 7), 2, 3, 1, 1), (8, 16, 32, 32))     # stride 2: stride-1 work
    assert not fft.fft_preferred(make_geometry((7, 7), 1, 3, 1, 1), (8, 64, 32, 32))     # 64 channels per group
    assert fft.fft_preferred(make_geometry((7, 7), 1, 3, 1, 2), (8, 64, 32, 32))         # 32 per group
