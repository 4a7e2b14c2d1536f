"""The workspace cap: chunking the batch changes no bit of the results, and bounds the memory used."""
from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

import xpconv
from conftest import as_numpy
from xpconv._columns import ConvGeometry, column_layout
from xpconv._engine import conv_backward, conv_backward_data, conv_forward, data_grad_geometry
from xpconv.backends import UnitMap, _blas_pools

# (x shape, weight shape, stride, padding, groups): batches of 5 split as 1+1+1+1+1 and 2+2+1
LAYERS = {
    "2d-padded": ((5, 3, 9, 8), (4, 3, 3, 3), 1, 1, 1),
    "2d-transposed-dx": ((5, 4, 9, 8), (4, 4, 3, 3), 1, 1, 1),
    "2d-strided-grouped": ((5, 4, 9, 9), (6, 2, 3, 3), 2, 1, 2),
    "2d-depthwise": ((5, 4, 8, 8), (4, 1, 3, 3), 1, 1, 4),
    "2d-pointwise": ((5, 6, 7, 7), (3, 6, 1, 1), 1, 0, 1),
    "1d": ((5, 3, 17), (4, 3, 5), 1, 2, 1),
    "3d": ((5, 2, 5, 6, 4), (3, 2, 3, 2, 3), 1, 1, 1),
}


def _setup(name, rng, dtype=np.float32):
    x_shape, w_shape, stride, pad, groups = LAYERS[name]
    nd = len(x_shape) - 2
    geom = ConvGeometry(w_shape[2:], (stride,) * nd, ((pad, pad),) * nd, (1,) * nd, groups)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    dy = rng.standard_normal((x_shape[0], w_shape[0], *geom.output_shape(x_shape[2:]))).astype(dtype)
    return geom, x, w, b, dy


def _per_sample_cols_bytes(x, geom):
    return 4 * x.shape[1] * math.prod(geom.kernel) * math.prod(geom.output_shape(x.shape[2:]))


def _sample_bytes(x, w, geom):
    """An upper bound on one sample's float32 workspace in every pass (columns, folds, outputs, dW, and the
    columns of dY when dL/dx is a convolution): a cap of 1 to 4 times this chunks the batch, never one sample."""
    c, o = x.shape[1], w.shape[0]
    lay = column_layout(geom, x.shape[2:])
    elements = lay.columns_elements(c) + lay.fold_elements(c) + 2 * o * lay.length + o * w[0].size
    flipped = data_grad_geometry(geom, o, c)
    if flipped is not None:
        dy_lay = column_layout(flipped, lay.out)
        elements += dy_lay.columns_elements(o) + c * dy_lay.length
    return 4 * elements


@pytest.mark.parametrize("cap_in_samples", [1, 2.5])
@pytest.mark.parametrize("name", LAYERS)
def test_chunked_results_are_bit_identical_on_numpy(rng, name, cap_in_samples, batch_inner):
    """Forward y, dx and dW under a small cap equal the one-chunk results: to the last bit with per-sample
    GEMMs, to float32 rounding with the batch inside the GEMM (whose width then changes with the chunks).

    The cap is one sample's workspace (at least one sample per chunk, no row bands) or 2.5 of them (uneven chunks).
    """
    geom, x, w, b, dy = _setup(name, rng)
    cap = int(cap_in_samples * _sample_bytes(x, w, geom))
    kw = {"batch_inner": batch_inner}

    def same(a, b):
        if batch_inner:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()), strict=True)
        else:
            np.testing.assert_array_equal(a, b, strict=True)  # same shape, dtype and values

    y_one, cols = conv_forward(x, w, b, geom, max_workspace_bytes=None, keep_cols=True, **kw)
    assert cols is not None
    same(conv_forward(x, w, b, geom, **kw)[0], y_one)
    same(conv_forward(x, w, b, geom, max_workspace_bytes=cap, keep_cols=True, **kw)[0], y_one)
    dx_one, dw_one = conv_backward(dy, x, w, geom, cols=cols, **kw)
    for dx, dw in (conv_backward(dy, x, w, geom, max_workspace_bytes=None, **kw),
                   conv_backward(dy, x, w, geom, max_workspace_bytes=cap, **kw),
                   conv_backward(dy, x, w, geom, cols=cols, max_workspace_bytes=cap, **kw)):
        same(dx, dx_one)
        same(dw, dw_one)


class _CountingUnitMap(UnitMap):
    """A UnitMap that counts the passes it ran, so a test sees the threads were used."""

    passes = 0

    def __call__(self, fn, items):
        self.passes += 1
        yield from super().__call__(fn, items)


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("name", LAYERS)
def test_threaded_units_give_the_one_chunk_bits(rng, name, workers):
    """Units run on threads (NumPy's policy with several BLAS threads) give the one-chunk y, dx and dW to the
    last bit, with no cap and under a cap of 2.5 samples per thread: dW's per-unit products are still added in
    the units' order."""
    geom, x, w, b, dy = _setup(name, rng)
    threads = _CountingUnitMap(workers, _blas_pools())
    y_one, cols = conv_forward(x, w, b, geom, max_workspace_bytes=None, keep_cols=True)
    dx_one, dw_one = conv_backward(dy, x, w, geom, cols=cols)
    for cap in (None, int(2.5 * workers * _sample_bytes(x, w, geom))):
        np.testing.assert_array_equal(conv_forward(x, w, b, geom, max_workspace_bytes=cap, unit_map=threads)[0],
                                      y_one, strict=True)
        dx, dw = conv_backward(dy, x, w, geom, max_workspace_bytes=cap, unit_map=threads)
        np.testing.assert_array_equal(dx, dx_one, strict=True)
        np.testing.assert_array_equal(dw, dw_one, strict=True)
        dx = conv_backward_data(dy, w, geom, x.shape[2:], max_workspace_bytes=cap, unit_map=threads)
        np.testing.assert_array_equal(dx, dx_one, strict=True)
    assert threads.passes >= 6


def test_threaded_units_stay_under_the_cap(rng):
    """With units on 2 threads, forward and backward still allocate at most their results plus the cap (after a
    first call has started the threads)."""
    geom, x, w, b, dy = _setup("2d-padded", rng)
    cap = 2 * _sample_bytes(x, w, geom)
    threads = _CountingUnitMap(2, _blas_pools())
    conv_backward(dy, x, w, geom, max_workspace_bytes=cap, unit_map=threads)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        y, _ = conv_forward(x, w, b, geom, max_workspace_bytes=cap, unit_map=threads)
        forward_peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        dx, dw = conv_backward(dy, x, w, geom, max_workspace_bytes=cap, unit_map=threads)
        backward_peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert threads.passes >= 3
    assert forward_peak <= y.nbytes + cap
    assert backward_peak <= dx.nbytes + dw.nbytes + cap

def test_chunked_functional_api_is_bit_identical(rng):
    """Through xpconv.conv2d / conv2d_backward with a cap of one sample's workspace."""
    x = rng.standard_normal((6, 3, 10, 10)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    kw = dict(stride=2, padding=1)
    geom = ConvGeometry((3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1))
    kw_cap = dict(max_workspace_bytes=_sample_bytes(x, w, geom), **kw)
    y = xpconv.conv2d(x, w, b, **kw)
    assert np.array_equal(xpconv.conv2d(x, w, b, **kw_cap), y)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    full = xpconv.conv2d_backward(dy, x, w, **kw)
    chunked = xpconv.conv2d_backward(dy, x, w, **kw_cap)
    for a, b_ in zip(full, chunked, strict=True):
        assert np.array_equal(a, b_)


@pytest.mark.parametrize("name", ["2d-strided-grouped", "3d"])
def test_chunked_results_match_on_every_backend(backend, rng, name):
    geom, x, w, b, dy = _setup(name, rng)
    xb, wb, bb, dyb = (backend.asarray(a) for a in (x, w, b, dy))
    y_one, cols = conv_forward(xb, wb, bb, geom, keep_cols=True)
    cap = _sample_bytes(x, w, geom)
    y_chunked, _ = conv_forward(xb, wb, bb, geom, max_workspace_bytes=cap)
    np.testing.assert_allclose(as_numpy(y_chunked), as_numpy(y_one), rtol=1e-5, atol=1e-5)
    for one, chunked in zip(conv_backward(dyb, xb, wb, geom, cols=cols),
                            conv_backward(dyb, xb, wb, geom, max_workspace_bytes=cap), strict=True):
        np.testing.assert_allclose(as_numpy(chunked), as_numpy(one), rtol=1e-5, atol=1e-4)


def _peak_bytes(fn) -> int:
    """Bytes ``fn`` allocates at its peak, after one untimed call (lazy imports and caches of a first call)."""
    fn()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("gather", [False, True], ids=["slices", "gather"])
def test_the_cap_bounds_the_memory_forward_and_backward_allocate(rng, batch_inner, gather):
    """With a 2 MiB cap, forward allocates at most y + cap, backward dx + dW + cap (+ 64 KiB slack),
    although the full im2col buffer of this layer is 18 MiB."""
    x = rng.standard_normal((32, 16, 32, 32)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((32, 16, 32, 32)).astype(np.float32)
    geom = ConvGeometry((3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1))
    cap, slack = 2 * 2**20, 2**16
    assert 32 * _per_sample_cols_bytes(x, geom) > 8 * cap
    kw = {"batch_inner": batch_inner, "gather": gather}
    assert _peak_bytes(lambda: conv_forward(x, w, None, geom, max_workspace_bytes=cap, **kw)) <= dy.nbytes + cap + slack
    peak = _peak_bytes(lambda: conv_backward(dy, x, w, geom, max_workspace_bytes=cap, **kw))
    assert peak <= x.nbytes + w.nbytes + cap + slack
    uncapped = _peak_bytes(lambda: conv_backward(dy, x, w, geom, max_workspace_bytes=None, **kw))
    assert peak < uncapped


def test_pointwise_convolution_copies_nothing(rng):
    """1x1: forward allocates only y, backward only dx, the per-sample dW products and a transposed W."""
    x = rng.standard_normal((8, 32, 16, 16)).astype(np.float32)
    w = rng.standard_normal((16, 32, 1, 1)).astype(np.float32)
    dy = rng.standard_normal((8, 16, 16, 16)).astype(np.float32)
    geom = ConvGeometry((1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1))
    assert _peak_bytes(lambda: conv_forward(x, w, None, geom)) <= dy.nbytes + 4096
    assert _peak_bytes(lambda: conv_backward(dy, x, w, geom)) <= x.nbytes + (8 + 2) * w.nbytes + 4096


def test_inputs_are_not_modified_when_chunked(rng):
    geom, x, w, b, dy = _setup("2d-padded", rng)
    saved = [a.copy() for a in (x, w, b, dy)]
    for cap in (_sample_bytes(x, w, geom), 2**12):          # chunks of the batch, row bands
        conv_forward(x, w, b, geom, max_workspace_bytes=cap)
        conv_backward(dy, x, w, geom, max_workspace_bytes=cap)
    for a, a0 in zip((x, w, b, dy), saved, strict=True):
        assert np.array_equal(a, a0)


def test_gpu_default_cap_follows_free_memory_and_explicit_caps_stay(monkeypatch):
    """On a GPU the default 256 MiB grows to half the memory limit; on the CPU, and for any explicit cap, no."""
    from xpconv._ops import DEFAULT_MAX_WORKSPACE_BYTES, engine_policy, memory_limit
    from xpconv.backends import NumpyBackend, get_backend

    def budget(backend, cap):
        policy = engine_policy(backend, cap)
        return policy["max_workspace_bytes"], policy["memory_limit"]

    free = 40 * 2**30
    monkeypatch.setattr(NumpyBackend, "free_memory_bytes", lambda self: free)
    cpu = get_backend("numpy")
    limit = memory_limit(cpu)
    assert limit == int(0.9 * free)
    assert budget(cpu, DEFAULT_MAX_WORKSPACE_BYTES) == (DEFAULT_MAX_WORKSPACE_BYTES, limit)
    assert engine_policy(cpu, None)["batch_inner"] is False                     # the CPU's GEMM and column policies
    assert engine_policy(cpu, None)["gather"] is False
    monkeypatch.setattr(NumpyBackend, "is_gpu", property(lambda self: True))    # a GPU as far as the op layer sees
    assert budget(cpu, DEFAULT_MAX_WORKSPACE_BYTES) == (limit // 2, limit)
    assert budget(cpu, 2**20) == (2**20, limit)
    assert budget(cpu, None) == (None, limit)
    assert engine_policy(cpu, None)["batch_inner"] is True
    assert engine_policy(cpu, None)["gather"] is True
    free = 100 * 2**20                                        # little free memory: never below the default
    assert budget(cpu, DEFAULT_MAX_WORKSPACE_BYTES)[0] == DEFAULT_MAX_WORKSPACE_BYTES
