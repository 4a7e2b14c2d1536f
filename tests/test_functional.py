"""conv1d/2d/3d and their backward passes against the explicit-loop reference, on every backend."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xpconv
import xpconv._columns as columns
from conftest import as_numpy
from reference import conv_backward_reference, conv_reference, same_pads

CONV = {1: (xpconv.conv1d, xpconv.conv1d_backward), 2: (xpconv.conv2d, xpconv.conv2d_backward),
        3: (xpconv.conv3d, xpconv.conv3d_backward)}


@st.composite
def conv_configs(draw):
    """A random valid convolution: rank, groups, stride/dilation/padding (int, tuple, 'same', 'valid'), layouts."""
    nd = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 3))
    cg, og = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    if draw(st.booleans()):                      # depthwise: one input channel per group
        cg = 1
    kernel = [draw(st.integers(1, 3)) for _ in range(nd)]
    dilation = [draw(st.integers(1, 2)) for _ in range(nd)]
    mode = draw(st.sampled_from(["int", "tuple", "same", "valid"]))
    stride = [1] * nd if mode == "same" else [draw(st.integers(1, 3)) for _ in range(nd)]
    if mode == "int":
        padding = draw(st.integers(0, 2))
        pads = [(padding, padding)] * nd
    elif mode == "tuple":
        padding = tuple(draw(st.integers(0, 2)) for _ in range(nd))
        pads = [(p, p) for p in padding]
    elif mode == "same":
        padding, pads = "same", same_pads(kernel, dilation)
    else:
        padding, pads = "valid", [(0, 0)] * nd
    max_size = 7 if nd < 3 else 5
    spatial = []
    for k, d, (lo, hi) in zip(kernel, dilation, pads, strict=True):
        extent = d * (k - 1) + 1
        spatial.append(draw(st.integers(max(1, extent - lo - hi), max(max_size, extent))))
    unbatched = draw(st.booleans())
    return dict(nd=nd, n=1 if unbatched else draw(st.integers(1, 2)), c=cg * groups, o=og * groups, groups=groups,
                kernel=kernel, stride=stride, dilation=dilation, padding=padding, pads=pads, spatial=spatial,
                bias=draw(st.booleans()), channels_last=draw(st.booleans()), unbatched=unbatched,
                stride_arg=draw(st.sampled_from(["int", "tuple"])) if len(set(stride)) == 1 else "tuple")


def _user_layout(a, channels_last, unbatched):
    """Channels-first batched float64 -> the layout the user passes (channels-last and/or unbatched)."""
    if channels_last:
        a = np.moveaxis(a, 1, -1)
    return a[0] if unbatched else a


def _weight_layout(w, channels_last):
    return np.moveaxis(w, 1, -1) if channels_last else w


NONCONTIGUOUS = ("every-second-element", "flipped", "transposed")


def _noncontiguous(xp, a, kind):
    """``a``'s values as a view that is not C-contiguous in memory (as Chainer's tests do), built with ``xp``.

    every-second-element: ``a`` interleaved with NaN along its last axis, then ``[..., ::2]`` (stride 2; a NaN
    read by mistake shows in the results). flipped: a flipped copy flipped back (negative strides on NumPy;
    torch's flip copies). transposed: the axes reversed in a copy and reversed back (Fortran order).
    """
    if kind == "every-second-element":
        both = xp.stack([a, xp.full_like(a, xp.nan)], axis=-1)
        return xp.reshape(both, (*a.shape[:-1], 2 * a.shape[-1]))[..., ::2]
    if kind == "flipped":
        return xp.flip(_c_order_copy(xp, xp.flip(a)))
    if kind == "transposed":
        axes = tuple(range(a.ndim))[::-1]
        return xp.permute_dims(_c_order_copy(xp, xp.permute_dims(a, axes)), axes)
    raise ValueError(kind)


def _c_order_copy(xp, view):
    """A new C-ordered array with ``view``'s values (``asarray(view, copy=True)`` may keep its memory order)."""
    return xp.reshape(xp.asarray(xp.reshape(view, (-1,)), copy=True), view.shape)


def _is_c_contiguous(a) -> bool | None:
    """Whether ``a`` is C-contiguous, where the library says so (NumPy, CuPy, torch); None otherwise."""
    if hasattr(a, "flags"):
        return bool(a.flags.c_contiguous)
    if hasattr(a, "is_contiguous"):
        return a.is_contiguous()
    return None


@pytest.mark.parametrize("kind", NONCONTIGUOUS)
def test_noncontiguous_views_keep_the_values_but_not_the_layout(backend, rng, kind):
    host = rng.standard_normal((2, 3, 4, 5))
    view = _noncontiguous(backend.xp, backend.asarray(host, dtype="float64"), kind)
    np.testing.assert_array_equal(as_numpy(view), host)
    torch_copies = kind == "flipped" and hasattr(view, "is_contiguous")  # torch has no negative strides
    assert _is_c_contiguous(view) in ((True, None) if torch_copies else (False, None))


def assert_close(actual, expected, rtol=1e-10):
    actual = as_numpy(actual)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cfg=conv_configs(), seed=st.integers(0, 2**16), wide_limit=st.sampled_from([0.0, 1.5, math.inf]))
def test_forward_and_gradients_match_reference(backend, monkeypatch, cfg, seed, wide_limit):
    """``wide_limit``: stride-1 columns never wide, wide as the engine chooses, or always wide."""
    monkeypatch.setattr(columns, "WIDE_MAX_OVERHEAD", wide_limit)
    _check_against_reference(backend, cfg, seed)


def _check_against_reference(backend, cfg, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((cfg["n"], cfg["c"], *cfg["spatial"]))
    w = rng.standard_normal((cfg["o"], cfg["c"] // cfg["groups"], *cfg["kernel"]))
    b = rng.standard_normal(cfg["o"]) if cfg["bias"] else None
    y_ref = conv_reference(x, w, b, cfg["stride"], cfg["pads"], cfg["dilation"], cfg["groups"])
    dy = rng.standard_normal(y_ref.shape)
    dx_ref, dw_ref, db_ref = conv_backward_reference(dy, x, w, cfg["stride"], cfg["pads"], cfg["dilation"],
                                                     cfg["groups"])
    cl, ub = cfg["channels_last"], cfg["unbatched"]
    stride = cfg["stride"][0] if cfg["stride_arg"] == "int" else tuple(cfg["stride"])
    kwargs = dict(stride=stride, padding=cfg["padding"], dilation=tuple(cfg["dilation"]), groups=cfg["groups"],
                  channels_last=cl)
    fwd, bwd = CONV[cfg["nd"]]
    as_b = lambda a: backend.asarray(a, dtype="float64")  # noqa: E731
    xb, wb = as_b(_user_layout(x, cl, ub)), as_b(_weight_layout(w, cl))
    y = fwd(xb, wb, None if b is None else as_b(b), **kwargs)
    assert_close(y, _user_layout(y_ref, cl, ub))
    dx, dw, db = bwd(as_b(_user_layout(dy, cl, ub)), xb, wb, **kwargs)
    assert_close(dx, _user_layout(dx_ref, cl, ub))
    assert_close(dw, _weight_layout(dw_ref, cl))
    assert_close(db, db_ref)
    for result in (y, dx, dw, db):
        assert type(result) is type(xb)
    # The same values as non-contiguous views of x, W, b and dL/dy give the same results.
    bb, dyb = None if b is None else as_b(b), as_b(_user_layout(dy, cl, ub))
    for kind in NONCONTIGUOUS:
        xv, wv, bv, dyv = (None if a is None else _noncontiguous(backend.xp, a, kind) for a in (xb, wb, bb, dyb))
        y_v = fwd(xv, wv, bv, **kwargs)
        for got, want in zip((y_v, *bwd(dyv, xv, wv, **kwargs)), (y, dx, dw, db), strict=True):
            assert type(got) is type(xb)
            assert_close(got, as_numpy(want), rtol=1e-12)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_gradients_by_finite_differences(backend, nd, rng):
    """dL/dx, dL/dW, dL/db of L = sum(conv(x, W, b) * R) by central differences, float64, every entry."""
    spatial = (5, 4, 3)[:nd]
    kw = dict(stride=(2, 1, 1)[:nd], padding=(1, 0, 1)[:nd], dilation=(1, 2, 1)[:nd], groups=2)
    x = rng.standard_normal((2, 4, *spatial))
    w = rng.standard_normal((4, 2, *(2,) * nd))
    b = rng.standard_normal(4)
    fwd, bwd = CONV[nd]
    as_b = lambda a: backend.asarray(a, dtype="float64")  # noqa: E731
    r = rng.standard_normal(as_numpy(fwd(as_b(x), as_b(w), as_b(b), **kw)).shape)

    def loss(xv, wv, bv):
        return float(np.sum(as_numpy(fwd(as_b(xv), as_b(wv), as_b(bv), **kw)) * r))

    dx, dw, db = (as_numpy(g) for g in bwd(as_b(r), as_b(x), as_b(w), **kw))
    eps = 1e-6
    for arr, grad, slot in ((x, dx, 0), (w, dw, 1), (b, db, 2)):
        numeric = np.zeros_like(arr)
        for idx in np.ndindex(*arr.shape):
            args = [x.copy(), w.copy(), b.copy()]
            args[slot][idx] += eps
            up = loss(*args)
            args[slot][idx] -= 2 * eps
            numeric[idx] = (up - loss(*args)) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-7)


def test_same_results_from_every_backend(backend, rng):
    x = rng.standard_normal((2, 3, 9, 8))
    w = rng.standard_normal((6, 1, 3, 3))
    b = rng.standard_normal(6)
    kw = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=3)
    y_np = xpconv.conv2d(x, w, b, **kw)
    grads_np = xpconv.conv2d_backward(np.ones_like(y_np), x, w, **kw)
    as_b = lambda a: backend.asarray(a, dtype="float64")  # noqa: E731
    y = xpconv.conv2d(as_b(x), as_b(w), as_b(b), **kw)
    np.testing.assert_allclose(as_numpy(y), y_np, rtol=1e-12, atol=1e-12)
    for g, g_np in zip(xpconv.conv2d_backward(as_b(np.ones_like(y_np)), as_b(x), as_b(w), **kw), grads_np, strict=True):
        np.testing.assert_allclose(as_numpy(g), g_np, rtol=1e-12, atol=1e-12)


def test_float32_stays_float32_and_inputs_are_untouched(backend, rng):
    x = backend.asarray(rng.standard_normal((2, 3, 6, 6)), dtype="float32")
    w = backend.asarray(rng.standard_normal((4, 3, 3, 3)), dtype="float32")
    b = backend.asarray(rng.standard_normal(4), dtype="float32")
    before = [as_numpy(a).copy() for a in (x, w, b)]
    y = xpconv.conv2d(x, w, b, padding=1)
    grads = xpconv.conv2d_backward(backend.xp.ones_like(y), x, w, padding=1)
    assert y.dtype == backend.xp.float32
    assert all(g.dtype == backend.xp.float32 for g in grads)
    for a, a0 in zip((x, w, b), before, strict=True):
        np.testing.assert_array_equal(as_numpy(a), a0)
    y64 = conv_reference(before[0], before[1], before[2], (1, 1), [(1, 1)] * 2, (1, 1), 1)
    np.testing.assert_allclose(as_numpy(y), y64, rtol=1e-4, atol=1e-4)


def test_readme_walkthrough_image_5x5x3_with_16_filters(rng):
    """The README walk-through: image (5, 5, 3), 16 filters (3, 3, 3), stride 1, padding 0."""
    image = rng.standard_normal((5, 5, 3))
    filters = rng.standard_normal((16, 3, 3, 3))           # (O, kh, kw, C) with channels_last
    h = xpconv.conv2d(image, filters, channels_last=True)
    assert h.shape == (3, 3, 16)
    dh = rng.standard_normal((3, 3, 16))
    dx, dw, db = xpconv.conv2d_backward(dh, image, filters, channels_last=True)
    assert dx.shape == (5, 5, 3) and dw.shape == (16, 3, 3, 3) and db.shape == (16,)
    # dL/dX is the full correlation of dL/dh with the 180-degree-rotated filters, summed over filters.
    dh_first = np.moveaxis(dh, -1, 0)[None]                  # (1, 16, 3, 3)
    rotated = np.moveaxis(filters[:, ::-1, ::-1, :], -1, 0)  # (C=3, O=16, 3, 3): filters as (in=16, out=3)
    full = conv_reference(dh_first, rotated, None, (1, 1), [(2, 2), (2, 2)], (1, 1), 1)[0]
    np.testing.assert_allclose(dx, np.moveaxis(full, 0, -1), rtol=1e-12, atol=1e-12)
