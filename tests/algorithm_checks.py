"""Checks shared by the tests of each convolution algorithm (im2col, Winograd, direct, FFT, ...), through the
functional API: the float64 loop reference at 1e-10, central finite differences, the float32 error against
float64, and the workspace's peak measured by tracemalloc on NumPy."""
from __future__ import annotations

import tracemalloc

import numpy as np

import xpconv
from conftest import as_numpy
from layer_check import numeric_grad
from reference import conv_backward_reference, conv_reference, same_pads

# The float32 bound docs/algorithms.md states for im2col, Winograd F(2x2) and auto:
# max |y32 - y64| <= 4 eps32 * max conv(|x|, |W|), likewise for dL/dx (with |dY|, |W|) and dL/dW (with |dY|, |x|).
FLOAT32_BOUND = 4 * float(np.finfo(np.float32).eps)


def _per_axis(value, nd: int) -> tuple[int, ...]:
    return (value,) * nd if isinstance(value, int) else tuple(value)


def _pads(padding, kernel, dilation):
    """(lo, hi) pairs for an int, per-axis or "same" padding."""
    if padding == "same":
        return tuple(same_pads(kernel, dilation))
    return tuple((p, p) for p in _per_axis(padding, len(kernel)))


def _functions(nd: int):
    return getattr(xpconv, f"conv{nd}d"), getattr(xpconv, f"conv{nd}d_backward")


def check_against_reference(backend, rng, x_shape, w_shape, algorithm, *, stride=1, padding=0, dilation=1, groups=1,
                            bias=True, max_workspace_bytes=2**28) -> None:
    """y, dL/dx, dL/dW, dL/db of ``algorithm`` on ``backend`` (float64) equal the loop reference to 1e-10;
    ``padding`` an int, one int per axis (symmetric) or "same"."""
    nd = len(x_shape) - 2
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0]) if bias else None
    hyper = (_per_axis(stride, nd), _pads(padding, w_shape[2:], _per_axis(dilation, nd)), _per_axis(dilation, nd),
             groups)
    y_ref = conv_reference(x, w, b, *hyper)
    dy = rng.standard_normal(y_ref.shape)
    dx_ref, dw_ref, db_ref = conv_backward_reference(dy, x, w, *hyper)
    as_b = lambda a: backend.asarray(a, dtype="float64")  # noqa: E731
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, algorithm=algorithm,
              max_workspace_bytes=max_workspace_bytes)
    conv, conv_backward = _functions(nd)
    y = conv(as_b(x), as_b(w), None if b is None else as_b(b), **kw)
    grads = conv_backward(as_b(dy), as_b(x), as_b(w), **kw)
    for got, want in zip((y, *grads), (y_ref, dx_ref, dw_ref, db_ref), strict=True):
        assert type(got) is type(as_b(x))
        got = as_numpy(got)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * max(1.0, np.abs(want).max()))


def check_finite_differences(backend, rng, x_shape, w_shape, algorithm, **hyper) -> None:
    """dL/dx and dL/dW of L = sum(conv(x, W) * R) against central differences, float64, every entry."""
    conv, conv_backward = _functions(len(x_shape) - 2)
    kw = dict(hyper, algorithm=algorithm)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    as_b = lambda a: backend.asarray(a, dtype="float64")  # noqa: E731
    r = rng.standard_normal(as_numpy(conv(as_b(x), as_b(w), **kw)).shape)
    dx, dw, _ = (as_numpy(g) for g in conv_backward(as_b(r), as_b(x), as_b(w), **kw))
    np.testing.assert_allclose(dx, numeric_grad(lambda a: float(np.sum(as_numpy(conv(as_b(a), as_b(w), **kw)) * r)),
                                                x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, numeric_grad(lambda a: float(np.sum(as_numpy(conv(as_b(x), as_b(a), **kw)) * r)),
                                                w), rtol=1e-6, atol=1e-7)


def float32_errors(backend, rng, x_shape, w_shape, algorithm, **hyper) -> list[float]:
    """max |float32 - float64| of y, dL/dx and dL/dW by ``algorithm``, each over the max of the same computation
    on the absolute values (float64, im2col): the quantity each algorithm's float32 bound bounds.  x and dY are
    standard normal, W scaled by 1 / sqrt(its fan-in)."""
    conv, conv_backward = _functions(len(x_shape) - 2)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))
    dy = rng.standard_normal(as_numpy(conv(x, w, **hyper)).shape)
    exact = [conv(x, w, **hyper), *conv_backward(dy, x, w, **hyper)[:2]]
    scale = [conv(abs(x), abs(w), **hyper), *conv_backward(abs(dy), abs(x), abs(w), **hyper)[:2]]
    x32, w32, dy32 = (backend.asarray(a, dtype="float32") for a in (x, w, dy))
    got = [conv(x32, w32, algorithm=algorithm, **hyper),
           *conv_backward(dy32, x32, w32, algorithm=algorithm, **hyper)[:2]]
    errors = []
    for g, e, s in zip(got, exact, scale, strict=True):
        assert g.dtype == backend.xp.float32
        errors.append(float(np.abs(as_numpy(g) - e).max() / s.max()))
    return errors


def workspace_peaks(x, w, dy, **kw):
    """NumPy, tracemalloc: the peak bytes of forward and of backward beyond their results (after a warm-up call of
    each, which also starts the threads the chunks may run on)."""
    conv, conv_backward = _functions(x.ndim - 2)
    conv_backward(dy, x, w, **kw)                                         # imports, caches and threads first
    tracemalloc.start()
    y = conv(x, w, **kw)
    forward_peak = tracemalloc.get_traced_memory()[1] - y.nbytes
    tracemalloc.stop()
    tracemalloc.start()
    dx, dw, db = conv_backward(dy, x, w, **kw)
    backward_peak = tracemalloc.get_traced_memory()[1] - dx.nbytes - dw.nbytes - db.nbytes
    tracemalloc.stop()
    return forward_peak, backward_peak


def check_layer_matches_im2col(backend, rng, make_layer, algorithm, x_shape, dy_shape) -> None:
    """A layer ``make_layer(algorithm=...)`` (float64 on ``backend``) running ``algorithm`` gives the output and
    gradients of the same layer running im2col, and its repr names the algorithm."""
    layers = [make_layer(algorithm=a) for a in ("im2col", algorithm)]
    x = backend.asarray(rng.standard_normal(x_shape), dtype="float64")
    dy = backend.asarray(rng.standard_normal(dy_shape), dtype="float64")
    results = []
    for layer in layers:
        y = layer(x)
        results.append([as_numpy(a) for a in (y, layer.backward(dy), layer.weight.grad, layer.bias.grad)])
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert f"algorithm={algorithm!r}" in repr(layers[1])


def check_layouts_match_im2col(backend, rng, algorithm, x_shape, w_shape, unbatched, **kw) -> None:
    """The functional API's ``algorithm`` gives im2col's y, dL/dx, dL/dW and dL/db (float64) for x and weight of
    these shapes, in the layout ``kw`` asks for (``channels_last=``), with x's first sample alone if ``unbatched``."""
    nd = len(x_shape) - 2
    conv, conv_backward = _functions(nd)
    x = rng.standard_normal(x_shape)
    xb = backend.asarray(x[0] if unbatched else x, dtype="float64")
    wb = backend.asarray(rng.standard_normal(w_shape), dtype="float64")
    results = []
    for name in ("im2col", algorithm):
        y = conv(xb, wb, algorithm=name, **kw)
        results.append([as_numpy(a) for a in (y, *conv_backward(y, xb, wb, algorithm=name, **kw))])
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
