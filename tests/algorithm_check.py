"""Shared checks for the convolution algorithms (``algorithm=`` of xpconv.conv*d): the float64 reference, finite
differences, float32 error against float64, and the workspace's peak measured by tracemalloc on NumPy."""
from __future__ import annotations

import tracemalloc

import numpy as np

import xpconv
from conftest import as_numpy
from layer_check import numeric_grad
from reference import conv_backward_reference, conv_reference, same_pads


def _pads(padding, kernel, dilation):
    """(lo, hi) pairs for an int, per-axis or "same" padding."""
    if padding == "same":
        return tuple(same_pads(kernel, dilation))
    return tuple((p, p) for p in ((padding,) * len(kernel) if isinstance(padding, int) else padding))


def _functions(nd):
    return getattr(xpconv, f"conv{nd}d"), getattr(xpconv, f"conv{nd}d_backward")


def check_against_reference(backend, rng, x_shape, w_shape, algorithm, *, stride=1, padding=0, dilation=1, groups=1,
                            bias=True, max_workspace_bytes=2**28):
    """Forward, dL/dx, dL/dW and dL/db of ``algorithm`` on ``backend`` against the float64 loop reference at 1e-10."""
    nd = len(x_shape) - 2
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0]) if bias else None
    per_axis = lambda v: (v,) * nd if isinstance(v, int) else tuple(v)  # noqa: E731
    ref_args = (per_axis(stride), _pads(padding, w_shape[2:], per_axis(dilation)), per_axis(dilation), groups)
    y_ref = conv_reference(x, w, b, *ref_args)
    dy = rng.standard_normal(y_ref.shape)
    dx_ref, dw_ref, db_ref = conv_backward_reference(dy, x, w, *ref_args)
    as_b = lambda a: backend.asarray(a, dtype="float64")  # noqa: E731
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, algorithm=algorithm,
              max_workspace_bytes=max_workspace_bytes)
    forward, backward = _functions(nd)
    y = forward(as_b(x), as_b(w), None if b is None else as_b(b), **kw)
    grads = backward(as_b(dy), as_b(x), as_b(w), **kw)
    for got, want in zip((y, *grads), (y_ref, dx_ref, dw_ref, db_ref), strict=True):
        assert type(got) is type(as_b(x))
        got = as_numpy(got)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * max(1.0, np.abs(want).max()))


def check_gradients_by_differences(backend, rng, x_shape, w_shape, **kw):
    """dL/dx and dL/dW of L = sum(conv(x, W) * R) against central differences, float64, every entry."""
    forward, backward = _functions(len(x_shape) - 2)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    as_b = lambda a: backend.asarray(a, dtype="float64")  # noqa: E731
    r = rng.standard_normal(as_numpy(forward(as_b(x), as_b(w), **kw)).shape)
    dx, dw, _ = (as_numpy(g) for g in backward(as_b(r), as_b(x), as_b(w), **kw))
    np.testing.assert_allclose(dx, numeric_grad(lambda a: float(np.sum(as_numpy(forward(as_b(a), as_b(w), **kw)) * r)),
                                                x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, numeric_grad(lambda a: float(np.sum(as_numpy(forward(as_b(x), as_b(a), **kw)) * r)),
                                                w), rtol=1e-6, atol=1e-7)


def float32_errors(backend, x, w, dy, algorithm, **kw):
    """max |result32 - result64| / max |conv|(|a|, |b|) for y, dL/dx and dL/dW (module docstring of each algorithm):
    float32 on ``backend`` against float64 on NumPy, each relative to the same operation on the absolute values."""
    forward, backward = _functions(x.ndim - 2)
    exact = [forward(x, w, **kw), *backward(dy, x, w, **kw)[:2]]
    scale = [forward(abs(x), abs(w), **kw), *backward(abs(dy), abs(x), abs(w), **kw)[:2]]
    x32, w32, dy32 = (backend.asarray(a, dtype="float32") for a in (x, w, dy))
    got = [forward(x32, w32, algorithm=algorithm, **kw), *backward(dy32, x32, w32, algorithm=algorithm, **kw)[:2]]
    for g in got:
        assert g.dtype == backend.xp.float32
    return [float(np.abs(as_numpy(g) - e).max() / s.max()) for g, e, s in zip(got, exact, scale, strict=True)]


def workspace_peaks(x, w, dy, **kw):
    """NumPy, tracemalloc: the peak bytes of forward and of backward beyond their results (after a warm-up call)."""
    forward, backward = _functions(x.ndim - 2)
    forward(x[:1], w, **kw)                                               # imports and caches first
    tracemalloc.start()
    y = forward(x, w, **kw)
    forward_peak = tracemalloc.get_traced_memory()[1] - y.nbytes
    tracemalloc.stop()
    tracemalloc.start()
    dx, dw, db = backward(dy, x, w, **kw)
    backward_peak = tracemalloc.get_traced_memory()[1] - dx.nbytes - dw.nbytes - db.nbytes
    tracemalloc.stop()
    return forward_peak, backward_peak
