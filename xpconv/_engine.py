"""The convolution passes: forward, dL/dW and dL/dx as GEMM-shaped contractions over column buffers.

Pure Array API: every function takes its namespace from its array arguments,
so the same lines run on NumPy, CuPy, PyTorch and array-api-strict.

Shapes (``nd`` spatial dims, ``K = prod(kernel)``, ``L = prod(out)``):
    x       (N, C, *spatial)
    weight  (O, C // G, *kernel)
    cols    (N, C, *kernel, *out)   im2col's layout, viewed as (N, G, (C // G) * K, L) for the GEMM
    y       (N, O, *out)

Stride-1 convolutions use "wide" columns instead (:class:`~xpconv._columns.WideLayout`): each
kernel tap's block is one contiguous slice of the flattened, padded x, and the GEMM also computes
outputs over the padding columns, which are then dropped.

The batch is processed in chunks whose workspace stays under ``max_workspace_bytes``
(and, on the CPU, cache-sized); the results do not depend on the chunking, to the last
bit on NumPy.  Measurements behind the choices: docs/benchmarks.md.
"""
from __future__ import annotations

import math
from dataclasses import replace

from array_api_compat import array_namespace, device

from ._columns import (_ALL2, ConvGeometry, WideLayout, col2im, has_extra_columns, im2col, wide_col2im,
                       wide_im2col, wide_layout)

DEFAULT_MAX_WORKSPACE_BYTES = 256 * 2**20
CPU_CHUNK_BYTES = 8 * 2**20
TRANSPOSED_DX_MAX_CHANNELS = 64


def _batch_chunks(n: int, bytes_per_sample: int, max_workspace_bytes: int | None, cache_sized: bool = False):
    """Slices over the batch so that one chunk's workspace stays under the cap (at least 1 sample).

    ``None`` means no cap: the whole batch in one chunk.  Under a cap, with ``cache_sized``, a
    chunk is also kept under ``CPU_CHUNK_BYTES`` (a single sample when one alone is larger): a workspace
    that small stays in the caches and reuses heap pages, which measured faster than one big buffer even
    though backward then redoes the im2col (see docs/benchmarks.md).
    """
    if max_workspace_bytes is None:
        return [slice(0, n)]
    budget = max_workspace_bytes
    if cache_sized:
        budget = min(budget, CPU_CHUNK_BYTES)
    step = max(1, min(n, budget // max(bytes_per_sample, 1)))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _cache_sized_chunks(x, geom: ConvGeometry) -> bool:
    """Whether to prefer cache-sized chunks: on the CPU (not CUDA, where one big chunk means fewer
    kernel launches), for convolutions that need an im2col (a pointwise one has nothing to keep hot)."""
    return "cuda" not in str(device(x)).lower() and not geom.is_pointwise


def conv_forward(x, weight, bias, geom: ConvGeometry, *, max_workspace_bytes=DEFAULT_MAX_WORKSPACE_BYTES,
                 keep_cols: bool = False):
    """y = W · cols(x) + b, one batched GEMM per chunk of the batch.

    Workspace per chunk: its columns and padded x (none for pointwise convolutions) and its GEMM result.
    Returns ``(y, cols)``; ``cols``, the GEMM operand (N, G, (C // G) * K, L or the wide length), is
    returned only when ``keep_cols`` and the whole batch fit in one chunk, else None.
    """
    xp = array_namespace(x, weight)
    n, c, *spatial = x.shape
    o, g = weight.shape[0], geom.groups
    out = geom.output_shape(spatial)
    layout = wide_layout(geom, spatial)
    w3 = xp.reshape(weight, (g, o // g, (c // g) * math.prod(geom.kernel)))   # (G, O/G, Cg*K)
    per_sample = _cols_elements(geom, c, spatial, layout) + o * _length(layout, out)
    chunks = _batch_chunks(n, _itemsize(x) * per_sample, max_workspace_bytes,
                           _cache_sized_chunks(x, geom))
    one_gemm = len(chunks) == 1 and not has_extra_columns(layout)
    y = None if one_gemm else xp.empty((n, o, *out), dtype=x.dtype, device=device(x))
    cols = None
    for sl in chunks:
        cols = _gemm_cols(x[sl, ...], geom, layout, out)              # (m, G, Cg*K, L)
        yc = _outputs(xp.matmul(w3, cols), layout, out)                # (m, O, *out)
        if one_gemm:
            y = yc
        else:
            y[sl, ...] = yc
        if len(chunks) > 1:
            cols = yc = None                                          # freed before the next chunk's
    if bias is not None:
        y += xp.reshape(bias, (1, o) + (1,) * geom.nd)
    return y, (cols if keep_cols and len(chunks) == 1 else None)


def conv_backward(grad_output, x, weight, geom: ConvGeometry, *, cols=None, need_input_grad: bool = True,
                  max_workspace_bytes=DEFAULT_MAX_WORKSPACE_BYTES):
    """(dL/dx or None, dL/dW) for y = conv(x, W); ``cols`` is forward's GEMM operand when kept.

    dL/dW = sum over the batch of dY · colsᵀ, added one sample after the other: chunking
            the batch does not change a bit of it (NumPy sums axis 0 in order)
    dL/dx = :func:`conv_backward_data`; its fold of Wᵀ · dY is done in this loop, on the same chunk of dY

    Workspace per chunk: cols (unless kept), dY in the columns' layout, per-sample dW, dcols and their fold.
    """
    xp = array_namespace(grad_output, x, weight)
    n, c, *spatial = x.shape
    o, g = weight.shape[0], geom.groups
    out = tuple(grad_output.shape[2:])
    layout = wide_layout(geom, spatial)
    ck, length = (c // g) * math.prod(geom.kernel), _length(layout, out)
    w3 = xp.reshape(weight, (g, o // g, ck))
    transposed = _transposed_dx_geometry(geom, o, c)
    fold = need_input_grad and transposed is None
    grad_input = None
    if need_input_grad:
        grad_input = (conv_backward_data(grad_output, weight, geom, spatial, max_workspace_bytes=max_workspace_bytes)
                      if transposed is not None else xp.empty(x.shape, dtype=x.dtype, device=device(x)))
    per_sample = ((cols is None) * _cols_elements(geom, c, spatial, layout) + has_extra_columns(layout) * o * length
                  + o * ck + fold * _fold_elements(geom, c, spatial, layout, length))
    chunks = _batch_chunks(n, _itemsize(x) * per_sample, max_workspace_bytes, _cache_sized_chunks(x, geom))
    grad_weight = None
    for sl in chunks:
        chunk_cols = _gemm_cols(x[sl, ...], geom, layout, out) if cols is None else cols[sl, ...]
        dy = _output_columns(grad_output[sl, ...], layout, g)          # (m, G, O/G, L)
        # dWᵀ = cols · dYᵀ: measured 1.4x faster than dY · colsᵀ with OpenBLAS's AVX-512 kernels
        partial = xp.matmul(chunk_cols, xp.matrix_transpose(dy))      # (m, G, Cg*K, O/G)
        if grad_weight is not None:
            partial[0, ...] += grad_weight
        grad_weight = xp.sum(partial, axis=0)
        if fold:
            grad_input[sl, ...] = _fold(_transposed_product(w3, dy), geom, layout, spatial)
        chunk_cols = partial = dy = None                               # freed before the next chunk's
    return grad_input, xp.reshape(xp.matrix_transpose(grad_weight), weight.shape)


def conv_backward_data(grad_output, weight, geom: ConvGeometry, spatial, *,
                       max_workspace_bytes=DEFAULT_MAX_WORKSPACE_BYTES):
    """dL/dx (N, C, *spatial) of y = conv(x, W) from dL/dy (N, O, *out): also a transposed convolution's forward.

    conv(dY, flipped Wᵀ) where :func:`_transposed_dx_geometry` allows it, else fold(Wᵀ · dY), chunk by
    chunk.  Workspace per chunk: dY in the columns' layout, dcols, their fold.
    """
    xp = array_namespace(grad_output, weight)
    n, o = grad_output.shape[:2]
    g = geom.groups
    c = weight.shape[1] * g
    transposed = _transposed_dx_geometry(geom, o, c)
    if transposed is not None:
        return conv_forward(grad_output, _transposed_weight(weight, g), None, transposed,
                            max_workspace_bytes=max_workspace_bytes)[0]
    layout = wide_layout(geom, spatial)
    length = _length(layout, grad_output.shape[2:])
    w3 = xp.reshape(weight, (g, o // g, (c // g) * math.prod(geom.kernel)))
    per_sample = _fold_elements(geom, c, spatial, layout, length) + has_extra_columns(layout) * o * length
    chunks = _batch_chunks(n, _itemsize(grad_output) * per_sample, max_workspace_bytes,
                           _cache_sized_chunks(grad_output, geom))
    grad_input = xp.empty((n, c, *spatial), dtype=grad_output.dtype, device=device(grad_output))
    for sl in chunks:
        dy = _output_columns(grad_output[sl, ...], layout, g)          # (m, G, O/G, L)
        grad_input[sl, ...] = _fold(_transposed_product(w3, dy), geom, layout, spatial)
        dy = None                                                      # freed before the next chunk's
    return grad_input


def _transposed_dx_geometry(geom: ConvGeometry, o: int, c: int) -> ConvGeometry | None:
    """The geometry of dL/dx as conv(dY, flipped Wᵀ), where that is used: the transposed convolution
    unfolds dY (O channels) instead of folding dcols (C channels); it pays where Wᵀ · dY is a thin GEMM
    (O <= C, inner dimension O/G <= 64) and measured neutral to slower for wider ones."""
    if o // geom.groups > TRANSPOSED_DX_MAX_CHANNELS or o > c:
        return None
    return _transposed_geometry(geom)


def _fold_elements(geom: ConvGeometry, channels: int, spatial, layout: WideLayout | None, length: int) -> int:
    """Elements the fold of Wᵀ · dY allocates per sample: dcols and the buffer they are added into."""
    if geom.is_pointwise:
        return 0
    folded = math.prod(spatial if layout is None else layout.padded)
    return channels * (math.prod(geom.kernel) * length + folded)


def _length(layout: WideLayout | None, out) -> int:
    """Columns per sample of the GEMM: the wide length, or prod(out)."""
    return math.prod(out) if layout is None else layout.length


def _cols_elements(geom: ConvGeometry, channels: int, spatial, layout: WideLayout | None) -> int:
    """Elements :func:`_gemm_cols` allocates per sample."""
    if layout is None:
        return geom.im2col_elements(channels, spatial)
    return channels * (len(layout.offsets) * layout.length + math.prod(layout.padded))


def _gemm_cols(x, geom: ConvGeometry, layout: WideLayout | None, out):
    """The GEMM operand for x (m, C, *spatial): columns viewed as (m, G, (C // G) * K, L)."""
    xp = array_namespace(x)
    cols = im2col(x, geom) if layout is None else wide_im2col(x, geom, layout)
    m, c, g = x.shape[0], x.shape[1], geom.groups
    return xp.reshape(cols, (m, g, (c // g) * math.prod(geom.kernel), _length(layout, out)))


def _outputs(yc, layout: WideLayout | None, out):
    """GEMM result (m, G, O/G, L) -> y (m, O, *out), dropping the wide layout's extra columns."""
    xp = array_namespace(yc)
    m, o = yc.shape[0], yc.shape[1] * yc.shape[2]
    if not has_extra_columns(layout):
        return xp.reshape(yc, (m, o, *out))
    return xp.reshape(yc, (m, o, *layout.grid))[(*_ALL2, *layout.crop)]


def _output_columns(dy, layout: WideLayout | None, groups: int):
    """The adjoint of :func:`_outputs`: dY (m, O, *out) -> (m, G, O/G, L), zero on the extra columns."""
    xp = array_namespace(dy)
    m, o = dy.shape[:2]
    if has_extra_columns(layout):
        wide = xp.zeros((m, o, *layout.grid), dtype=dy.dtype, device=device(dy))
        wide[(*_ALL2, *layout.crop)] = dy
        dy = wide
    return xp.reshape(dy, (m, groups, o // groups, _length(layout, dy.shape[2:])))


def _fold(dcols, geom: ConvGeometry, layout: WideLayout | None, spatial):
    """dcols (m, G, (C // G) * K, L) folded back to dL/dx (m, C, *spatial)."""
    xp = array_namespace(dcols)
    m, c = dcols.shape[0], dcols.shape[1] * dcols.shape[2] // math.prod(geom.kernel)
    if layout is None:
        out = geom.output_shape(spatial)
        return col2im(xp.reshape(dcols, (m, c, *geom.kernel, *out)), geom, spatial)
    return wide_col2im(xp.reshape(dcols, (m, c, len(layout.offsets), layout.length)), geom, layout, spatial)


def _transposed_geometry(geom: ConvGeometry) -> ConvGeometry | None:
    """Stride 1: the geometry of dL/dx = conv(dY, flipped Wᵀ), padded by dilation*(k-1) - padding;
    None for other strides or when the padding exceeds the kernel's reach."""
    pads = tuple((d * (k - 1) - lo, d * (k - 1) - hi)
                 for k, d, (lo, hi) in zip(geom.kernel, geom.dilation, geom.padding))
    if any(s != 1 for s in geom.stride) or min(p for pair in pads for p in pair) < 0:
        return None
    return replace(geom, padding=pads)


def _transposed_weight(weight, groups: int):
    """(O, C/G, *kernel) -> (C, O/G, *kernel), flipped along every kernel axis; a new, contiguous array.

    The copy matters: with one output channel per group (depthwise) a reshaped view of the flipped
    weight has negative strides, which NumPy's matmul cannot hand to BLAS (measured 5x slower).
    """
    xp = array_namespace(weight)
    o, cg, *kernel = weight.shape
    axes = tuple(range(3, 3 + len(kernel)))
    w = xp.reshape(weight, (groups, o // groups, cg, *kernel))
    w = xp.flip(xp.permute_dims(w, (0, 2, 1, *axes)), axis=axes)     # (G, C/G, O/G, *kernel)
    return xp.reshape(w, (groups * cg, o // groups, *kernel), copy=True)


def _transposed_product(w3, dy):
    """Wᵀ · dY per group: w3 (G, O/G, Cg*K), dy (m, G, O/G, L) -> (m, G, Cg*K, L).

    With one output channel per group (depthwise) each entry is a single product, so a
    broadcast multiply gives the same bits as matmul; on NumPy it measured ~4x faster.
    """
    xp = array_namespace(w3, dy)
    if w3.shape[1] == 1:
        return xp.matrix_transpose(w3) * dy
    return xp.matmul(xp.matrix_transpose(w3), dy)


def _itemsize(x) -> int:
    """Bytes per element of x's dtype, from the namespace's finfo (works on every backend)."""
    return array_namespace(x).finfo(x.dtype).bits // 8
