"""The engine and its column buffers: output sizes, im2col/col2im (exact and wide) against explicit loops and
each other, forward/backward against the loop reference, chunking helpers."""
from __future__ import annotations

import numpy as np
import pytest

import xpconv._columns as columns
from conftest import as_numpy
from reference import conv_backward_reference, conv_reference
from xpconv._columns import GatherLayout, WideLayout, col2im, column_layout, im2col, wide_col2im, wide_im2col
from xpconv._engine import (
    batch_chunks,
    columns_grad,
    conv_backward,
    conv_backward_data,
    conv_forward,
    flipped_geometry,
    flipped_transposed_weight,
)
from xpconv._geometry import ConvGeometry, conv_output_size
from xpconv.backends import CPU_CHUNK_BYTES

# (x shape, kernel, stride, (lo, hi) padding, dilation, groups)
CASES = {
    "1d-pad": ((2, 3, 7), (3,), (1,), ((1, 1),), (1,), 1),
    "2d-stride-dilation-groups": ((2, 4, 6, 5), (3, 2), (2, 1), ((1, 0), (2, 1)), (1, 2), 2),
    "3d-mixed": ((1, 2, 4, 5, 3), (2, 3, 1), (1, 2, 1), ((0, 1), (1, 1), (0, 0)), (2, 1, 1), 1),
    "pointwise": ((3, 4, 5, 5), (1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1), 2),
    "stride>kernel": ((2, 2, 7, 7), (2, 2), (3, 3), ((0, 0), (0, 0)), (1, 1), 1),
    "padding-only-taps": ((1, 2, 2, 3), (3, 3), (1, 2), ((3, 3), (2, 1)), (2, 1), 1),
    # stride 1 and O <= C: dL/dx through the transposed convolution
    "2d-transposed-dx-groups": ((2, 4, 7, 6), (3, 2), (1, 1), ((2, 1), (1, 0)), (2, 1), 2),
    "3d-transposed-dx": ((1, 4, 4, 5, 3), (2, 3, 2), (1, 1, 1), ((1, 0), (1, 1), (0, 1)), (1, 1, 2), 1),
    "3d-wide": ((2, 2, 3, 12, 11), (2, 3, 3), (1, 1, 1), ((1, 0), (1, 1), (0, 2)), (1, 1, 1), 1),
}


# the cases whose stride-1 geometry takes the wide layout; the others use im2col's exact one
WIDE_CASES = {"1d-pad", "2d-transposed-dx-groups", "3d-wide"}


@pytest.fixture(params=["chosen", "exact", "gather", "windows"])
def layout(request, monkeypatch):
    """Run a test with the layout the engine chooses, again with the wide layout switched off, (where the
    test passes ``gather=``) with the gather layout of a GPU, and (where it passes ``windows=``) with the chosen
    layouts built through the backend's strided-view fast path."""
    if request.param == "exact":
        monkeypatch.setattr(columns, "WIDE_MAX_OVERHEAD", 0.0)
    return request.param


def _geometry(case):
    _, kernel, stride, padding, dilation, groups = case
    return ConvGeometry(kernel, stride, padding, dilation, groups)


def _im2col_loops(x, geom):
    """cols[n, c, *t, *j] = x_padded[n, c, *(j * stride + t * dilation)], one element at a time."""
    n, c, *spatial = x.shape
    xpad = np.pad(x, [(0, 0), (0, 0), *geom.padding])
    out = geom.output_shape(spatial)
    cols = np.zeros((n, c, *geom.kernel, *out))
    for t in np.ndindex(*geom.kernel):
        for j in np.ndindex(*out):
            pos = tuple(ji * s + ti * d for ji, ti, s, d in zip(j, t, geom.stride, geom.dilation, strict=True))
            cols[(slice(None), slice(None), *t, *j)] = xpad[(slice(None), slice(None), *pos)]
    return cols


@pytest.mark.parametrize("size,kernel,stride,padding,dilation,expected", [
    (32, 3, 1, (1, 1), 1, 32), (32, 3, 2, (1, 1), 1, 16), (7, 3, 2, (0, 0), 2, 2),
    (5, 1, 1, (0, 0), 1, 5), (4, 3, 1, (0, 1), 1, 3), (10, 4, 3, (2, 2), 1, 4), (3, 3, 1, (0, 0), 1, 1),
])
def test_conv_output_size_matches_pytorch_formula_examples(size, kernel, stride, padding, dilation, expected):
    assert conv_output_size(size, kernel, stride, padding, dilation) == expected


def _batch_inner(cols, nd):
    """(N, C, *kernel, *out) -> (C, *kernel, N, *out): the batch moved in front of the output axes."""
    return np.moveaxis(cols, 0, 1 + nd)


@pytest.mark.parametrize("batch_inner", [False, True], ids=["batch-outer", "batch-inner"])
@pytest.mark.parametrize("name", CASES)
def test_im2col_matches_explicit_loops(backend, rng, name, batch_inner):
    shape = CASES[name][0]
    geom = _geometry(CASES[name])
    x = rng.standard_normal(shape)
    cols = im2col(backend.asarray(x, dtype="float64"), geom, batch_inner=batch_inner)
    expected = _im2col_loops(x, geom)
    np.testing.assert_array_equal(as_numpy(cols), _batch_inner(expected, geom.nd) if batch_inner else expected)


@pytest.mark.parametrize("batch_inner", [False, True], ids=["batch-outer", "batch-inner"])
@pytest.mark.parametrize("name", CASES)
def test_col2im_is_the_adjoint_of_im2col(backend, rng, name, batch_inner):
    """<im2col(x), c> == <x, col2im(c)> for random x and c: col2im adds every copy back."""
    shape = CASES[name][0]
    geom = _geometry(CASES[name])
    x = rng.standard_normal(shape)
    c = rng.standard_normal((shape[0], shape[1], *geom.kernel, *geom.output_shape(shape[2:])))
    if batch_inner:
        c = np.ascontiguousarray(_batch_inner(c, geom.nd))
    xb, cb = backend.asarray(x, dtype="float64"), backend.asarray(c, dtype="float64")
    lhs = np.sum(as_numpy(im2col(xb, geom, batch_inner=batch_inner)) * c)
    folded = col2im(cb, geom, shape[2:], batch_inner=batch_inner)
    assert tuple(folded.shape) == shape
    np.testing.assert_allclose(lhs, np.sum(x * as_numpy(folded)), rtol=1e-12)


def test_im2col_and_col2im_leave_inputs_unchanged(rng):
    geom = _geometry(CASES["2d-stride-dilation-groups"])
    x = rng.standard_normal(CASES["2d-stride-dilation-groups"][0])
    x0 = x.copy()
    cols = im2col(x, geom)
    cols0 = cols.copy()
    col2im(cols, geom, x.shape[2:])
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(cols, cols0)


@pytest.mark.parametrize("name", CASES)
def test_wide_layout_is_chosen_for_stride_1_im2col_geometries(name, layout):
    shape = CASES[name][0]
    chosen = column_layout(_geometry(CASES[name]), shape[2:])
    assert isinstance(chosen, WideLayout) == (name in WIDE_CASES and layout != "exact")   # gather: not asked for
    assert chosen.out == _geometry(CASES[name]).output_shape(shape[2:])
    assert chosen.has_extra_columns == (chosen.grid != chosen.out)


@pytest.mark.parametrize("spatial,kernel,padding,expected", [
    ((32, 32), (3, 3), 1, True),                 # 34 / 32 extra columns
    ((4, 4), (3, 3), 1, True),                   # 6 / 4: exactly the 1.5 limit
    ((7, 7), (7, 7), 3, False),                  # 13 / 7
    ((8, 8, 8), (3, 3, 3), 1, False),            # 10 * 10 / (8 * 8)
    ((16, 16, 16), (3, 3, 3), 1, True),          # 18 * 18 / (16 * 16)
])
def test_wide_layout_limits_the_extra_columns(spatial, kernel, padding, expected):
    nd = len(spatial)
    geom = ConvGeometry(kernel, (1,) * nd, ((padding, padding),) * nd, (1,) * nd)
    assert isinstance(column_layout(geom, spatial), WideLayout) == expected


def _wide_case(name, rng, batch_inner):
    """(x shape, geometry, its wide layout, a random float64 x) for one of WIDE_CASES."""
    shape = CASES[name][0]
    geom = _geometry(CASES[name])
    return shape, geom, column_layout(geom, shape[2:], batch_inner), rng.standard_normal(shape)


@pytest.mark.parametrize("name", sorted(WIDE_CASES))
def test_wide_im2col_matches_explicit_loops_on_the_output_grid(backend, rng, name, batch_inner):
    """Wide columns hold the exact columns at the output positions of their grid (the rest is dropped)."""
    shape, geom, lay, x = _wide_case(name, rng, batch_inner)
    cols = as_numpy(wide_im2col(backend.asarray(x, dtype="float64"), lay))
    n, c = shape[:2]
    if batch_inner:
        assert cols.shape == (c, len(lay.offsets), n, lay.length)
        on_grid = cols.reshape(c, *geom.kernel, n, *lay.grid)[(..., *(slice(0, o) for o in lay.out))]
        np.testing.assert_array_equal(on_grid, _batch_inner(_im2col_loops(x, geom), geom.nd))
    else:
        assert cols.shape == (n, c, len(lay.offsets), lay.length)
        on_grid = cols.reshape(n, c, *geom.kernel, *lay.grid)[(..., *(slice(0, o) for o in lay.out))]
        np.testing.assert_array_equal(on_grid, _im2col_loops(x, geom))


@pytest.mark.parametrize("name", sorted(WIDE_CASES))
def test_wide_col2im_is_the_adjoint_of_wide_im2col(backend, rng, name, batch_inner):
    shape, _, lay, x = _wide_case(name, rng, batch_inner)
    n, c_in = shape[:2]
    c = rng.standard_normal((c_in, len(lay.offsets), n, lay.length) if batch_inner
                            else (n, c_in, len(lay.offsets), lay.length))
    xb, cb = backend.asarray(x, dtype="float64"), backend.asarray(c, dtype="float64")
    lhs = np.sum(as_numpy(wide_im2col(xb, lay)) * c)
    folded = wide_col2im(cb, lay)
    assert tuple(folded.shape) == shape
    np.testing.assert_allclose(lhs, np.sum(x * as_numpy(folded)), rtol=1e-12)


@pytest.mark.parametrize("wide", [True, False])
@pytest.mark.parametrize("name", CASES)
def test_the_strided_view_fast_path_gives_the_slices_columns_bit_for_bit(backend, rng, name, batch_inner, wide,
                                                                         monkeypatch):
    """A backend's ``window_view`` (NumPy's) builds the same columns, wide or exact, as the portable slice copies."""
    if backend.window_view is None:
        pytest.skip(f"{backend.name} has no strided-view fast path")
    if not wide:
        monkeypatch.setattr(columns, "WIDE_MAX_OVERHEAD", 0.0)
    shape, *_ = CASES[name]
    lay = column_layout(_geometry(CASES[name]), shape[2:], batch_inner)
    x = backend.asarray(rng.standard_normal(shape), dtype="float64")
    fast = lay.columns(x, backend.window_view)
    np.testing.assert_array_equal(as_numpy(fast), as_numpy(lay.columns(x)))
    if not lay.geom.is_pointwise:                                       # (a pointwise convolution's columns are x)
        fast[...] = 0                                                   # a writable copy, not a view of x
        assert as_numpy(lay.columns(x)).any()


@pytest.mark.parametrize("name", CASES)
def test_gather_columns_match_im2col_and_their_fold_is_the_adjoint(backend, rng, name, batch_inner):
    """GatherLayout's one ``take`` gives im2col's columns; its fold (one ``take`` and one ``sum``) is their adjoint."""
    shape, *_ = CASES[name]
    geom = _geometry(CASES[name])
    if geom.is_pointwise:
        pytest.skip("a pointwise convolution needs no columns")
    lay = column_layout(geom, shape[2:], batch_inner, gather=True)
    assert isinstance(lay, GatherLayout)
    x = rng.standard_normal(shape)
    xb = backend.asarray(x, dtype="float64")
    expected = _im2col_loops(x, geom)                                   # (N, C, *kernel, *out)
    n, c = shape[:2]
    if batch_inner:
        expected = _batch_inner(expected, geom.nd).reshape(c, lay.taps, n, lay.length)
    else:
        expected = expected.reshape(n, c, lay.taps, lay.length)
    np.testing.assert_array_equal(as_numpy(lay.columns(xb)), expected)
    dcols = rng.standard_normal(expected.shape)
    folded = as_numpy(lay.fold(backend.asarray(dcols, dtype="float64")))
    assert folded.shape == shape
    np.testing.assert_allclose(np.sum(expected * dcols), np.sum(x * folded), rtol=1e-12)


@pytest.mark.parametrize("keep_cols", [False, True])
@pytest.mark.parametrize("name", CASES)
def test_forward_and_backward_match_the_loop_reference(backend, rng, name, keep_cols, layout, batch_inner):
    """Every layout (the chosen one, im2col's exact one, the gather; per sample or the batch inside the GEMM)."""
    shape, kernel, stride, padding, dilation, groups = CASES[name]
    geom = _geometry(CASES[name])
    o = 2 * groups
    x = rng.standard_normal(shape)
    w = rng.standard_normal((o, shape[1] // groups, *kernel))
    b = rng.standard_normal(o)
    dy = rng.standard_normal((shape[0], o, *geom.output_shape(shape[2:])))
    xb, wb, bb, dyb = (backend.asarray(a, dtype="float64") for a in (x, w, b, dy))
    policy = {"batch_inner": batch_inner, "gather": layout == "gather",
              "windows": backend.window_view if layout == "windows" else None}
    if layout == "windows" and backend.window_view is None:
        pytest.skip(f"{backend.name} has no strided-view fast path")
    y, cols = conv_forward(xb, wb, bb, geom, keep_cols=keep_cols, **policy)
    assert (cols is not None) == keep_cols
    np.testing.assert_allclose(as_numpy(y), conv_reference(x, w, b, stride, padding, dilation, groups),
                               rtol=1e-10, atol=1e-12)
    dx, dw = conv_backward(dyb, xb, wb, geom, cols=cols, **policy)
    dx_ref, dw_ref, _ = conv_backward_reference(dy, x, w, stride, padding, dilation, groups)
    np.testing.assert_allclose(as_numpy(dx), dx_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(as_numpy(dw), dw_ref, rtol=1e-10, atol=1e-12)
    none, dw2 = conv_backward(dyb, xb, wb, geom, cols=cols, need_input_grad=False, **policy)
    assert none is None
    np.testing.assert_array_equal(as_numpy(dw2), as_numpy(dw))


def _blas_compatible(a: np.ndarray) -> bool:
    """Whether NumPy's matmul can hand this operand to BLAS: no negative strides, and unit steps along
    one of its two matrix axes (a row- or column-major matrix, possibly a transposed view)."""
    if any(s < 0 for s in a.strides):
        return False
    if a.ndim < 2 or 1 in a.shape[-2:]:
        return True
    rows, cols = a.strides[-2:]
    return (cols == a.itemsize and rows >= a.itemsize * a.shape[-1]) or \
           (rows == a.itemsize and cols >= a.itemsize * a.shape[-2])


@pytest.mark.parametrize("per_group", [1, 2])
@pytest.mark.parametrize("name", CASES)
def test_every_numpy_matmul_operand_can_go_to_blas(rng, monkeypatch, name, per_group, layout, batch_inner):
    """NumPy runs matmul on an operand BLAS cannot take (e.g. a flipped view) in its own loop, 5x slower
    on the depthwise layer: every product of forward, backward and the transposed convolution gets
    BLAS-ready operands (per_group=1 is depthwise-like: one output channel per group)."""
    import array_api_compat.numpy as compat_numpy

    seen = []

    def recording_matmul(a, b, **kwargs):
        seen.extend([a, b])
        return np.matmul(a, b, **kwargs)

    monkeypatch.setattr(compat_numpy, "matmul", recording_matmul)
    shape, kernel, *_, groups = CASES[name]
    geom = _geometry(CASES[name])
    o = per_group * groups
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((o, shape[1] // groups, *kernel)).astype(np.float32)
    dy = rng.standard_normal((shape[0], o, *geom.output_shape(shape[2:]))).astype(np.float32)
    policy = {"batch_inner": batch_inner, "gather": layout == "gather"}
    cols = conv_forward(x, w, None, geom, keep_cols=True, **policy)[1]
    conv_backward(dy, x, w, geom, cols=cols, **policy)
    conv_backward_data(dy, w, geom, shape[2:], max_workspace_bytes=2**15, **policy)   # row bands
    assert seen
    assert [(a.shape, a.strides) for a in seen if not _blas_compatible(a)] == []


def test_float32_stays_float32(backend, rng):
    geom = _geometry(CASES["2d-stride-dilation-groups"])
    x = backend.asarray(rng.standard_normal((2, 4, 6, 5)), dtype="float32")
    w = backend.asarray(rng.standard_normal((4, 2, 3, 2)), dtype="float32")
    b = backend.asarray(rng.standard_normal(4), dtype="float32")
    y, cols = conv_forward(x, w, b, geom, keep_cols=True)
    dx, dw = conv_backward(backend.xp.ones_like(y), x, w, geom, cols=cols)
    assert {a.dtype for a in (y, cols, dx, dw)} == {x.dtype}


@pytest.mark.parametrize("cache_chunk_bytes", [None, CPU_CHUNK_BYTES])
@pytest.mark.parametrize("n,per_sample,cap", [(10, 100, 250), (7, 100, 10_000), (5, 100, 1), (1, 10**9, 10),
                                              (9, 3, None), (40, 2**20, None), (40, 2**20, 2**30),
                                              (3, 9 * 2**20, 2**30)])
def test_batch_chunks_cover_the_batch_in_order_under_the_cap(n, per_sample, cap, cache_chunk_bytes):
    chunks = batch_chunks(n, per_sample, cap, cache_chunk_bytes)
    covered = [i for sl in chunks for i in range(sl.start, sl.stop)]
    assert covered == list(range(n))
    if cap is None:
        assert chunks == [slice(0, n)]
        return
    limit = min(cap, cache_chunk_bytes or n * per_sample)
    for sl in chunks:
        assert sl.stop - sl.start == 1 or (sl.stop - sl.start) * per_sample <= limit
    if n * per_sample <= limit:
        assert len(chunks) == 1
    else:
        assert len(chunks) == -(-n // max(1, limit // per_sample))


def test_flipped_geometry_exists_only_for_stride_1_within_the_kernel_reach():
    geom = ConvGeometry((3, 2), (1, 1), ((2, 1), (1, 0)), (2, 1))
    assert flipped_geometry(geom).padding == ((2, 3), (0, 1))
    assert flipped_geometry(ConvGeometry((3,), (2,), ((1, 1),), (1,))) is None
    assert flipped_geometry(ConvGeometry((3,), (1,), ((3, 0),), (1,))) is None


@pytest.mark.parametrize("og", [1, 2])
def test_columns_grad_depthwise_fast_path_matches_matmul(backend, rng, og):
    """The depthwise shortcut (one output channel per group) gives matmul's result, bit for bit on NumPy."""
    w3 = backend.asarray(rng.standard_normal((4, og, 9)), dtype="float32")
    dy = backend.asarray(rng.standard_normal((3, 4, og, 10)), dtype="float32")
    got = columns_grad(w3, dy)
    expected = backend.xp.matmul(backend.xp.matrix_transpose(w3), dy)
    assert tuple(got.shape) == (3, 4, 9, 10)
    if backend.name == "numpy":
        assert np.array_equal(got, expected)
    np.testing.assert_allclose(as_numpy(got), as_numpy(expected), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("o,cg,groups", [(4, 1, 4), (6, 2, 3), (4, 3, 1)])
def test_flipped_transposed_weight_is_a_new_contiguous_array(rng, o, cg, groups):
    """(O, C/G, kh, kw) -> (C, O/G, kh, kw) flipped, written with explicit loops; contiguous, so that NumPy's
    matmul can hand it to BLAS (a depthwise weight's view had negative strides and took a slow loop)."""
    w = rng.standard_normal((o, cg, 2, 3)).astype(np.float32)
    got = flipped_transposed_weight(w, groups)
    expected = np.empty((groups * cg, o // groups, 2, 3), dtype=np.float32)
    for g in range(groups):
        for i in range(cg):
            for j in range(o // groups):
                expected[g * cg + i, j] = w[g * (o // groups) + j, i, ::-1, ::-1]
    assert np.array_equal(got, expected)
    assert got.flags.c_contiguous and not np.shares_memory(got, w)


def test_pointwise_im2col_is_a_view_of_the_input():
    """A 1x1, stride-1, unpadded convolution does no copy: cols shares x's memory."""
    x = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    cols = im2col(x, ConvGeometry((1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1)))
    assert np.shares_memory(cols, x)


@pytest.mark.parametrize("layer", ["conv2d", "conv_transpose2d", "conv1d-grouped"])
def test_layers_give_the_same_results_under_either_gemm_policy(backend, rng, monkeypatch, layer):
    """The backend's GEMM policy (per sample on the CPU, batch inside on a GPU) changes no result beyond
    float64 rounding, through the layers as a user calls them."""
    from xpconv import nn
    from xpconv.backends import Backend

    make = {"conv2d": lambda: nn.Conv2d(4, 6, 3, padding=1, stride=(1, 2), backend=backend, dtype="float64", seed=0),
            "conv_transpose2d": lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, output_padding=1, backend=backend,
                                                           dtype="float64", seed=0),
            "conv1d-grouped": lambda: nn.Conv1d(4, 6, 5, padding=2, groups=2, backend=backend, dtype="float64",
                                                  seed=0)}[layer]
    x = backend.asarray(rng.standard_normal((3, 4, 7, 6)[:3 if layer == "conv1d-grouped" else 4]), dtype="float64")
    results = []
    for policy in (False, True):
        monkeypatch.setattr(Backend, "batch_inner_gemm", property(lambda self, p=policy: p))
        conv = make()
        y = conv(x)
        dx = conv.backward(backend.asarray(np.ones(tuple(y.shape)), dtype="float64"))
        results.append([as_numpy(a) for a in (y, dx, conv.weight.grad, conv.bias.grad)])
    for per_sample, inner in zip(*results, strict=True):
        np.testing.assert_allclose(inner, per_sample, rtol=1e-12, atol=1e-12)
