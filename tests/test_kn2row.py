"""algorithm="kn2row" (the first kernel axis in the GEMM's rows, im2col along the others) against the float64 loop
reference on every backend: 1-D, 2-D and 3-D, strides, dilations, paddings, groups, workspace caps, threads; and
``auto``'s rule for it."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xpconv
import xpconv._kn2row as kn2row
from algorithm_checks import (
    FLOAT32_BOUND,
    check_against_reference,
    check_finite_differences,
    check_layer_matches_im2col,
    check_layouts_match_im2col,
    float32_errors,
)
from conftest import as_numpy
from xpconv import nn
from xpconv._engine import flipped_geometry
from xpconv._geometry import make_geometry
from xpconv._ops import KN2ROW_MIN_MACS, _kn2row_fits, choose_algorithm
from xpconv.backends import UnitMap, _blas_pools, get_backend


@pytest.mark.parametrize("x_shape, w_shape, hyper", [
    ((2, 4, 7, 6), (6, 4, 3, 3), dict(padding=1)),                                   # dL/dx by kn2row's own pass
    ((2, 4, 7, 6), (6, 2, 3, 2), dict(padding=(2, 1), dilation=(2, 1), stride=(1, 2), groups=2)),   # dL/dx folded
    ((2, 3, 8, 8), (4, 3, 5, 5), dict(padding=2)),                                   # 5x5
    ((2, 2, 6, 5), (3, 2, 3, 3), dict(padding=3)),                                   # padding beyond the kernel
    ((2, 3, 6, 7), (2, 3, 2, 3), {}),                                                # no padding, even kernel
    ((2, 3, 9), (5, 3, 4), dict(padding=2)),                                         # 1-D: no other axis
    ((2, 4, 11), (4, 1, 3), dict(padding=1, dilation=2, groups=4)),                  # 1-D depthwise, dilated
    ((1, 2, 5, 4, 6), (3, 2, 3, 2, 3), dict(padding=1)),                             # 3-D
    ((2, 2, 4, 5, 6), (4, 1, 3, 3, 3), dict(padding=(1, 0, 2), stride=(1, 2, 1), groups=2)),  # 3-D strided, groups
    ((1, 3, 1, 1), (2, 3, 1, 1), {}),                                                # pointwise, a single output
])
def test_kn2row_matches_the_reference(backend, rng, x_shape, w_shape, hyper):
    check_against_reference(backend, rng, x_shape, w_shape, "kn2row", **hyper)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 3), cg=st.integers(1, 3), og=st.integers(1, 3), groups=st.integers(1, 2),
       kd=st.integers(1, 4), kw=st.integers(1, 3), h=st.integers(1, 8), w=st.integers(1, 8), stride=st.integers(1, 3),
       dilation=st.integers(1, 2), pad=st.integers(0, 3), bias=st.booleans(), per_chunk=st.sampled_from([None, 1, 2]),
       seed=st.integers(0, 2**16))
def test_kn2row_on_random_configurations(backend, n, cg, og, groups, kd, kw, h, w, stride, dilation, pad, bias,
                                         per_chunk, seed):
    """Random sizes, kernels, strides along the other axis, dilations, paddings, groups, and workspace caps of
    1 or 2 samples a chunk (or None)."""
    h = max(h, dilation * (kd - 1) + 1 - 2 * pad)
    w = max(w, dilation * (kw - 1) + 1 - 2 * pad)
    c, o = cg * groups, og * groups
    geom = make_geometry((kd, kw), (1, stride), pad, dilation, groups)
    flipped = flipped_geometry(geom)                   # dL/dx's own kn2row pass, where the geometry allows it
    dy_shape = (n, o, *geom.output_shape((h, w)))
    per_sample = max(kn2row.workspace_bytes(geom, (n, c, h, w), o, 8),
                     0 if flipped is None else kn2row.workspace_bytes(flipped, dy_shape, c, 8))
    check_against_reference(backend, np.random.default_rng(seed), (n, c, h, w), (o, cg, kd, kw), "kn2row",
                            stride=(1, stride), padding=pad, dilation=dilation, groups=groups, bias=bias,
                            max_workspace_bytes=None if per_chunk is None else per_chunk * per_sample)


@pytest.mark.parametrize("hyper", [dict(padding=(1, 2)), dict(padding=1, stride=(1, 2), dilation=(2, 1), groups=2)])
def test_kn2row_gradients_by_finite_differences(backend, rng, hyper):
    check_finite_differences(backend, rng, (2, 4, 5, 4), (4, 4 // hyper.get("groups", 1), 3, 3), "kn2row", **hyper)


@pytest.mark.parametrize("x_shape, w_shape, hyper", [
    ((4, 16, 16, 16), (16, 16, 3, 3), dict(padding=1)), ((2, 8, 24, 24), (8, 8, 5, 5), dict(padding=2)),
    ((2, 8, 8, 8, 8), (8, 8, 3, 3, 3), dict(padding=1)), ((4, 32, 64), (32, 32, 5), dict(padding=2)),
])
def test_float32_error_stays_under_the_documented_bound(backend, rng, x_shape, w_shape, hyper):
    """kn2row's float32 results against float64, relative to the convolution of the absolute values: im2col's bound."""
    errors = float32_errors(backend, rng, x_shape, w_shape, "kn2row", **hyper)
    assert max(errors) <= FLOAT32_BOUND, errors


def test_the_layer_takes_the_algorithm(backend, rng):
    """nn.Conv2d(algorithm="kn2row") gives im2col's layer's output and gradients (float64)."""
    check_layer_matches_im2col(backend, rng, lambda **kw: nn.Conv2d(4, 6, 3, padding=1, backend=backend,
                                                                     dtype="float64", seed=3, **kw),
                               "kn2row", (2, 4, 5, 6), (2, 6, 5, 6))


@pytest.mark.parametrize("channels_last, unbatched", [(True, False), (False, True), (True, True)])
def test_channels_last_and_unbatched_inputs(backend, rng, channels_last, unbatched):
    check_layouts_match_im2col(backend, rng, "kn2row", (2, 5, 6, 4) if channels_last else (2, 4, 5, 6),
                               (6, 3, 3, 4) if channels_last else (6, 4, 3, 3), unbatched, padding=1,
                               channels_last=channels_last)


def test_kn2row_refuses_a_stride_along_the_first_axis():
    with pytest.raises(ValueError, match=r"algorithm='kn2row' cannot.*stride 1 along the first spatial axis"):
        nn.Conv2d(4, 4, 3, stride=2, algorithm="kn2row")
    with pytest.raises(ValueError, match="stride 1 along the first"):
        xpconv.conv1d(np.ones((1, 2, 8)), np.ones((2, 2, 3)), stride=2, algorithm="kn2row")


def test_a_workspace_cap_below_one_sample_is_a_clear_error_and_auto_falls_back_to_im2col():
    x, w = np.ones((2, 8, 16, 16)), np.ones((8, 8, 3, 3))
    with pytest.raises(ValueError, match=r"kn2row's forward.*does not split a sample"):
        xpconv.conv2d(x, w, padding=1, algorithm="kn2row", max_workspace_bytes=16384)
    auto = xpconv.conv2d(x, w, padding=1, max_workspace_bytes=16384)             # im2col's row bands
    np.testing.assert_allclose(auto, xpconv.conv2d(x, w, padding=1, algorithm="im2col"), rtol=1e-12)


def test_auto_takes_kn2row_by_its_measured_rule():
    def chosen(kernel, stride=1, groups=1, channels=16, backend=None):
        return choose_algorithm("auto", make_geometry(kernel, stride, 1, 1, groups), channels, backend)
    assert chosen((3, 3)) == chosen((5, 5)) == chosen((3, 3, 3)) == chosen((3, 3), (1, 2)) == "kn2row"
    assert chosen((3, 3), 2) == chosen((3,)) == chosen((1, 1)) == chosen((1, 3)) == "im2col"
    assert chosen((3, 3), groups=2) == chosen((3, 3), groups=16) == chosen((3, 3), channels=3) == "im2col"
    assert chosen((3, 3), channels=8) == chosen((3, 3), backend=get_backend("numpy")) == "kn2row"
    assert chosen((3, 3), backend=get_backend("array_api_strict")) == "im2col"           # not measured there


def test_auto_keeps_im2col_for_small_calls_and_over_the_cap():
    """The rule's shape checks: at least KN2ROW_MIN_MACS multiply-adds a call, one sample's workspace under the cap."""
    geom = make_geometry((3, 3), 1, 1, 1, 1)
    resnet = ((128, 16, 32, 32), (16, 16, 3, 3))
    assert 128 * 16 * 16 * 9 * 32 * 32 >= KN2ROW_MIN_MACS > 4 * 4 * 9 * 8 * 8
    assert _kn2row_fits(geom, *resnet, 4, None) and _kn2row_fits(geom, *resnet, 4, 2**28)
    assert not _kn2row_fits(geom, (1, 4, 8, 8), (4, 4, 3, 3), 4, None)                 # benchmarks/tiny_call.py's
    one_sample = kn2row.workspace_bytes(geom, resnet[0], 16, 4)
    assert _kn2row_fits(geom, *resnet, 4, one_sample) and not _kn2row_fits(geom, *resnet, 4, one_sample - 1)


def test_an_empty_batch(backend):
    x = backend.asarray(np.ones((0, 2, 5, 5)), dtype="float64")
    w = backend.asarray(np.ones((4, 2, 3, 3)), dtype="float64")
    y = xpconv.conv2d(x, w, padding=1, algorithm="kn2row")
    assert tuple(y.shape) == (0, 4, 5, 5)
    dx, dw, _ = xpconv.conv2d_backward(y, x, w, padding=1, algorithm="kn2row")
    assert tuple(dx.shape) == (0, 2, 5, 5) and float(as_numpy(dw).sum()) == 0.0


@pytest.mark.parametrize("workers", [2, 3])
def test_chunks_on_threads_give_the_same_bits(rng, workers):
    """NumPy's threaded chunks (float32, 7 samples, a cap of 2 samples a thread) give the one-chunk y, dx and dW to
    the last bit: dW's products are added in the chunks' order."""
    x = rng.standard_normal((7, 8, 10, 9)).astype(np.float32)
    w = rng.standard_normal((6, 8, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((7, 6, 10, 9)).astype(np.float32)
    geom = make_geometry((3, 3), 1, 1, 1, 1)
    threads = UnitMap(workers, _blas_pools())
    cap = 2 * workers * kn2row.workspace_bytes(geom, x.shape, 8, 4)
    one = kn2row.kn2row_forward(x, w, None, geom, max_workspace_bytes=None)
    dx_one, dw_one = kn2row.kn2row_backward(dy, x, w, geom, max_workspace_bytes=None)
    for cap_ in (None, cap):
        y = kn2row.kn2row_forward(x, w, None, geom, max_workspace_bytes=cap_, unit_map=threads)
        dx, dw = kn2row.kn2row_backward(dy, x, w, geom, max_workspace_bytes=cap_, unit_map=threads)
        for got, want in ((y, one), (dx, dx_one), (dw, dw_one)):
            np.testing.assert_array_equal(got, want, strict=True)


@pytest.mark.parametrize("shape, w_shape", [((16, 16, 24, 24), (16, 16, 3, 3)), ((4, 8, 6, 8, 8), (8, 8, 3, 3, 3))])
@pytest.mark.parametrize("samples_per_chunk", [1, 3])
def test_workspace_stays_under_the_cap(rng, shape, w_shape, samples_per_chunk):
    """NumPy, tracemalloc: each pass's peak beyond its results stays under max_workspace_bytes, on one thread and
    on two, where the batch is more than one chunk."""
    geom = make_geometry(w_shape[2:], 1, 1, 1, 1)
    cap = samples_per_chunk * kn2row.workspace_bytes(geom, shape, w_shape[0], 8)    # dY's pass is alike (C == O)
    x, w = rng.standard_normal(shape), rng.standard_normal(w_shape)
    dy = rng.standard_normal((shape[0], w_shape[0], *shape[2:]))
    assert shape[0] > samples_per_chunk
    for threads in (None, UnitMap(2, _blas_pools())):
        kw = {"max_workspace_bytes": cap, "unit_map": threads}
        kn2row.kn2row_backward(dy, x, w, geom, **kw)                          # caches and threads first
        tracemalloc.start()
        y = kn2row.kn2row_forward(x, w, None, geom, **kw)
        forward_peak = tracemalloc.get_traced_memory()[1] - y.nbytes
        tracemalloc.stop()
        tracemalloc.start()
        dx, dw = kn2row.kn2row_backward(dy, x, w, geom, **kw)
        backward_peak = tracemalloc.get_traced_memory()[1] - dx.nbytes - dw.nbytes
        tracemalloc.stop()
        assert forward_peak <= cap and backward_peak <= cap, (forward_peak / cap, backward_peak / cap)
