"""A true workspace bound: one sample over max_workspace_bytes is split into row bands; the cap's validation;
the free-memory guard."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import xpconv
import xpconv._engine as engine
from conftest import as_numpy
from reference import conv_backward_reference, conv_reference
from xpconv import nn
from xpconv._engine import conv_backward, conv_backward_data, conv_forward, row_bands
from xpconv._geometry import ConvGeometry
from xpconv.backends import Backend

MIB = 2**20
# The stated bound: under a cap, a pass allocates at most its results plus ONE cap plus 64 KiB of slack.
SLACK = 2**16


def _peak_bytes(fn) -> int:
    """Bytes ``fn`` allocates at its peak, NumPy buffers included, measured on a second call: the first one
    also traces one-off Python allocations (caches, lazy imports) of a few MiB that are no workspace."""
    fn()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def big_layer():
    """The issue's layer: one (1, 8, 256, 256) sample, a 7x7 kernel: its im2col alone is 75 MiB."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 8, 256, 256)).astype(np.float32)
    w = rng.standard_normal((8, 8, 7, 7)).astype(np.float32)
    dy = rng.standard_normal((1, 8, 256, 256)).astype(np.float32)
    return x, w, dy, ConvGeometry((7, 7), (1, 1), ((3, 3), (3, 3)), (1, 1))


def test_one_sample_over_the_cap_stays_under_it_forward_and_backward(big_layer, batch_inner):
    x, w, dy, geom = big_layer
    cap = MIB
    assert x.nbytes * 49 > 64 * cap                          # the unsplit columns
    peak = _peak_bytes(lambda: conv_forward(x, w, None, geom, max_workspace_bytes=cap, batch_inner=batch_inner))
    assert peak <= dy.nbytes + cap + SLACK
    peak = _peak_bytes(lambda: conv_backward(dy, x, w, geom, max_workspace_bytes=cap, batch_inner=batch_inner))
    assert peak <= x.nbytes + w.nbytes + cap + SLACK
    w16 = np.concatenate([w, w])                                  # O > C: dL/dx by folding the column gradient
    dy16 = np.concatenate([dy, dy], axis=1)
    peak = _peak_bytes(lambda: conv_backward(dy16, x, w16, geom, max_workspace_bytes=cap, batch_inner=batch_inner))
    assert peak <= x.nbytes + w16.nbytes + cap + SLACK


def test_row_bands_give_the_unsplit_bits_for_y_and_dx(big_layer):
    """y and dL/dx (both ways: a convolution of dY, and the fold of the column gradient, the last band first)
    are bit-identical to the unsplit ones; dL/dW sums over the bands in another order than one GEMM over
    all output positions, so it agrees to float32 rounding only."""
    x, w, dy, geom = big_layer
    y_one, _ = conv_forward(x, w, None, geom, max_workspace_bytes=None)
    y_bands, _ = conv_forward(x, w, None, geom, max_workspace_bytes=MIB)
    assert np.array_equal(y_bands, y_one)
    for weight, grad in ((w, dy), (np.concatenate([w, w]), np.concatenate([dy, dy], axis=1))):
        dx_one, dw_one = conv_backward(grad, x, weight, geom, max_workspace_bytes=None)
        dx_bands, dw_bands = conv_backward(grad, x, weight, geom, max_workspace_bytes=MIB)
        assert np.array_equal(dx_bands, dx_one)
        np.testing.assert_allclose(dw_bands, dw_one, rtol=1e-5, atol=1e-5 * np.abs(dw_one).max())


def test_bands_cover_the_output_and_read_inside_the_input():
    geom = ConvGeometry((3,), (2,), ((4, 1),), (2,))               # the first rows read only padding
    bands = row_bands(geom, (5,), 1)
    assert [b[0] for b in bands] == [slice(r, r + 1) for r in reversed(range(geom.output_shape((5,))[0]))]
    for _, inputs, layout in bands:
        assert 0 <= inputs.start <= inputs.stop <= 5
        assert layout.out[0] == 1 and layout.geom.output_shape(layout.spatial) == layout.out


# (x shape, weight shape, stride, (lo, hi) padding, dilation, groups, a float64 cap of a few output rows)
CASES = {
    "1d": ((2, 3, 33), (4, 3, 5), (2,), ((2, 1),), (1,), 1, 1400),
    "2d-fold-groups": ((2, 4, 9, 7), (6, 2, 3, 2), (1, 2), ((1, 1), (0, 1)), (2, 1), 2, 6000),
    "2d-flipped-dx": ((1, 4, 9, 8), (4, 4, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1, 6000),
    "2d-padding-only-rows": ((1, 2, 4, 5), (3, 2, 2, 3), (1, 1), ((4, 3), (1, 1)), (1, 1), 1, 6000),
    "2d-pointwise": ((2, 3, 6, 5), (5, 3, 1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1), 1, 800),
    "3d": ((1, 2, 9, 5, 4), (3, 2, 3, 2, 2), (2, 1, 1), ((1, 1), (1, 0), (0, 1)), (1, 1, 2), 1, 12_000),
}


@pytest.mark.parametrize("name", CASES)
def test_banded_passes_match_the_float64_reference_on_every_backend(backend, rng, name, monkeypatch, batch_inner):
    banded = []
    monkeypatch.setattr(engine, "row_bands", lambda *args: banded.append(args) or row_bands(*args))
    monkeypatch.setattr(engine, "_plan_units", engine._plan_units.__wrapped__)      # every pass plans its bands
    x_shape, w_shape, stride, pads, dilation, groups, cap = CASES[name]
    geom = ConvGeometry(w_shape[2:], stride, pads, dilation, groups)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    dy = rng.standard_normal((x_shape[0], w_shape[0], *geom.output_shape(x_shape[2:])))
    xb, wb, dyb = (backend.asarray(a, dtype="float64") for a in (x, w, dy))
    y, _ = conv_forward(xb, wb, None, geom, max_workspace_bytes=cap, batch_inner=batch_inner)
    args = (stride, pads, dilation, groups)
    np.testing.assert_allclose(as_numpy(y), conv_reference(x, w, None, *args), rtol=1e-10, atol=1e-12)
    dx, dw = conv_backward(dyb, xb, wb, geom, max_workspace_bytes=cap, batch_inner=batch_inner)
    dx_ref, dw_ref, _ = conv_backward_reference(dy, x, w, *args)
    np.testing.assert_allclose(as_numpy(dx), dx_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(as_numpy(dw), dw_ref, rtol=1e-10, atol=1e-12)
    dx_data = conv_backward_data(dyb, wb, geom, x_shape[2:], max_workspace_bytes=cap, batch_inner=batch_inner)
    np.testing.assert_allclose(as_numpy(dx_data), dx_ref, rtol=1e-10, atol=1e-12)
    assert len(banded) >= (1 if name == "2d-pointwise" else 3)     # row bands (pointwise: forward only)


def test_a_single_row_over_the_cap_is_a_clear_error(big_layer):
    x, w, _, _ = big_layer
    with pytest.raises(ValueError, match=r"max_workspace_bytes=1000 is too small for the convolution's forward of "
                                         r"x \(1, 8, 256, 256\) with weight \(8, 8, 7, 7\): one output row"):
        xpconv.conv2d(x, w, padding=3, max_workspace_bytes=1000)


@pytest.mark.parametrize("bad", [0, -5, 1.5, 2.0**20, float("nan"), True, "1MiB"])
def test_bad_max_workspace_bytes_is_rejected_everywhere(bad):
    x, w = np.zeros((1, 2, 5, 5), np.float32), np.zeros((3, 2, 3, 3), np.float32)
    match = "max_workspace_bytes must be a positive int"
    calls = [lambda: xpconv.conv2d(x, w, max_workspace_bytes=bad),
             lambda: xpconv.conv2d_backward(np.zeros((1, 3, 3, 3), np.float32), x, w, max_workspace_bytes=bad),
             lambda: xpconv.conv1d(x[:, :, 0], w[:, :, 0], max_workspace_bytes=bad),
             lambda: nn.Conv2d(2, 3, 3, max_workspace_bytes=bad),
             lambda: nn.ConvTranspose2d(2, 3, 3, max_workspace_bytes=bad),
             lambda: conv_forward(x, w, None, ConvGeometry((3, 3), (1, 1), ((0, 0), (0, 0)), (1, 1)),
                                  max_workspace_bytes=bad)]
    for call in calls:
        with pytest.raises(ValueError, match=match):
            call()
    assert nn.Conv2d(2, 3, 3, max_workspace_bytes=None).max_workspace_bytes is None
    assert nn.Conv2d(2, 3, 3, max_workspace_bytes=np.int64(4096)).max_workspace_bytes == 4096


def test_free_memory_guard_raises_before_allocating(monkeypatch):
    x, w = np.zeros((4, 3, 16, 16), np.float32), np.zeros((8, 3, 3, 3), np.float32)
    monkeypatch.setattr(Backend, "free_memory_bytes", lambda self: 10_000)
    with pytest.raises(MemoryError, match=r"forward of x \(4, 3, 16, 16\) with weight \(8, 3, 3, 3\) asks for a "
                                          r"workspace of .* bytes\), more than the 8.8 KiB allowed"):
        xpconv.conv2d(x, w, padding=1)
    with pytest.raises(MemoryError, match="backward of x"):
        xpconv.conv2d_backward(np.zeros((4, 8, 16, 16), np.float32), x, w, padding=1, algorithm="im2col")
    with pytest.raises(MemoryError, match=r"kn2row's forward of x \(4, 8, 16, 16\)"):    # dL/dx, by kn2row's pass
        xpconv.conv2d_backward(np.zeros((4, 8, 16, 16), np.float32), x, w, padding=1, algorithm="kn2row")
    layer = nn.ConvTranspose2d(3, 2, 3)
    with pytest.raises(MemoryError, match="XPCONV_MAX_MEMORY_FRACTION"):
        layer(x)
    xpconv.conv2d(x, w, padding=1, max_workspace_bytes=8192)        # a cap under the limit: no error
    monkeypatch.setenv("XPCONV_MAX_MEMORY_FRACTION", "0.5")
    with pytest.raises(MemoryError, match=r"more than the 4\.9 KiB allowed"):
        xpconv.conv2d(x, w, padding=1, max_workspace_bytes=8192)
    for bad in ("0", "1.5", "lots"):
        monkeypatch.setenv("XPCONV_MAX_MEMORY_FRACTION", bad)
        with pytest.raises(ValueError, match="XPCONV_MAX_MEMORY_FRACTION"):
            xpconv.conv2d(x, w, padding=1)


def test_free_memory_is_reported_on_the_cpu(backend):
    free = backend.free_memory_bytes()
    assert free is None or free > 0
