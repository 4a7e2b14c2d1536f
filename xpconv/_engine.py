"""The convolution passes: forward, dL/dW and dL/dx as GEMM-shaped contractions over column buffers.

Pure Array API: every function takes its namespace from its array arguments,
so the same lines run on NumPy, CuPy, PyTorch and array-api-strict.

Shapes (``nd`` spatial dims, ``K = prod(kernel)``, ``L = prod(out)``):
    x       (N, C, *spatial)
    weight  (O, C // G, *kernel)
    cols    (N, C, *kernel, *out)   im2col's layout, viewed as (N, G, (C // G) * K, L) for the GEMM
    y       (N, O, *out)

The columns come in one of two layouts (:mod:`xpconv._columns`): im2col's exact one, or for
stride-1 convolutions "wide" columns, where each kernel tap's block is one contiguous slice of the
flattened, padded x and the GEMM also computes outputs over the padding columns, which are then
dropped.  The engine reads the same way for both: it asks the layout.

The batch is processed in chunks whose workspace stays under ``max_workspace_bytes`` and, when
the caller passes its backend's ``cache_chunk_bytes`` (the CPU's policy), under that too; the
results do not depend on the chunking, to the last bit on NumPy.  The engine never inspects
devices: the chunking policy is an argument.  Measurements behind the choices: docs/benchmarks.md.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from array_api_compat import array_namespace, device

from ._columns import ExactLayout, WideLayout, column_layout
from ._geometry import ConvGeometry
from ._typing import Array

__all__ = ["DEFAULT_MAX_WORKSPACE_BYTES", "batch_chunks", "conv_forward", "conv_backward", "conv_backward_data",
           "columns_grad", "data_grad_geometry", "flipped_geometry", "flipped_transposed_weight"]

DEFAULT_MAX_WORKSPACE_BYTES = 256 * 2**20
FLIPPED_DX_MAX_CHANNELS = 64


def batch_chunks(n: int, bytes_per_sample: int, max_workspace_bytes: int | None,
                 cache_chunk_bytes: int | None = None) -> list[slice]:
    """Slices over the batch so that one chunk's workspace stays under the cap (at least 1 sample).

    ``None`` means no cap: the whole batch in one chunk.  Under a cap, ``cache_chunk_bytes`` also
    keeps a chunk under that size (a single sample when one alone is larger): on the CPU a workspace
    that small stays in the caches and reuses heap pages, which measured faster than one big buffer
    even though backward then redoes the im2col (see docs/benchmarks.md).
    """
    if max_workspace_bytes is None:
        return [slice(0, n)]
    budget = max_workspace_bytes
    if cache_chunk_bytes is not None:
        budget = min(budget, cache_chunk_bytes)
    step = max(1, min(n, budget // max(bytes_per_sample, 1)))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _chunks(n: int, elements_per_sample: int, x: Array, geom: ConvGeometry, max_workspace_bytes: int | None,
            cache_chunk_bytes: int | None) -> list[slice]:
    """:func:`batch_chunks` for ``elements_per_sample`` elements of x's dtype; a pointwise convolution
    (no im2col, so nothing to keep in the caches) ignores the cache-sized policy."""
    itemsize = array_namespace(x).finfo(x.dtype).bits // 8
    return batch_chunks(n, itemsize * elements_per_sample, max_workspace_bytes,
                        None if geom.is_pointwise else cache_chunk_bytes)


def conv_forward(x: Array, weight: Array, bias: Array | None, geom: ConvGeometry, *,
                 max_workspace_bytes: int | None = DEFAULT_MAX_WORKSPACE_BYTES, cache_chunk_bytes: int | None = None,
                 keep_cols: bool = False) -> tuple[Array, Array | None]:
    """y = W · cols(x) + b, one batched GEMM per chunk of the batch.

    Workspace per chunk: its columns (none for pointwise convolutions) and its GEMM result.
    Returns ``(y, cols)``; ``cols``, the GEMM operand (N, G, (C // G) * K, length), is
    returned only when ``keep_cols`` and the whole batch fit in one chunk, else None.
    """
    xp = array_namespace(x, weight)
    n, c, *spatial = x.shape
    o, g = weight.shape[0], geom.groups
    layout = column_layout(geom, spatial)
    w3 = xp.reshape(weight, (g, o // g, (c // g) * layout.taps))               # (G, O/G, Cg*K)
    per_sample = layout.columns_elements(c) + o * layout.length
    chunks = _chunks(n, per_sample, x, geom, max_workspace_bytes, cache_chunk_bytes)
    one_gemm = len(chunks) == 1 and not layout.has_extra_columns
    y: Array = None if one_gemm else xp.empty((n, o, *layout.out), dtype=x.dtype, device=device(x))
    cols = None
    for sl in chunks:
        cols = _gemm_columns(x[sl, ...], layout, g)                           # (m, G, Cg*K, L)
        yc = layout.outputs(xp.matmul(w3, cols))                              # (m, O, *out)
        if one_gemm:
            y = yc
        else:
            y[sl, ...] = yc
        if len(chunks) > 1:
            cols = yc = None                                                  # freed before the next chunk's
    if bias is not None:
        y += xp.reshape(bias, (1, o) + (1,) * geom.nd)
    return y, (cols if keep_cols and len(chunks) == 1 else None)


def conv_backward(grad_output: Array, x: Array, weight: Array, geom: ConvGeometry, *, cols: Array | None = None,
                  need_input_grad: bool = True, max_workspace_bytes: int | None = DEFAULT_MAX_WORKSPACE_BYTES,
                  cache_chunk_bytes: int | None = None) -> tuple[Array | None, Array]:
    """(dL/dx or None, dL/dW) for y = conv(x, W); ``cols`` is forward's GEMM operand when kept.

    dL/dW = sum over the batch of dY · colsᵀ, added one sample after the other: chunking
            the batch does not change a bit of it (NumPy sums axis 0 in order)
    dL/dx = :func:`conv_backward_data`; its fold of Wᵀ · dY is done in this loop, on the same chunk of dY

    Workspace per chunk: cols (unless kept), dY in the columns' layout, per-sample dW, dcols and their fold.
    """
    xp = array_namespace(grad_output, x, weight)
    n, c, *spatial = x.shape
    o, g = weight.shape[0], geom.groups
    layout = column_layout(geom, spatial)
    ck = (c // g) * layout.taps
    w3 = xp.reshape(weight, (g, o // g, ck))
    as_conv = data_grad_geometry(geom, o, c) is not None
    fold_here = need_input_grad and not as_conv
    grad_input: Array = None
    if need_input_grad and as_conv:
        grad_input = conv_backward_data(grad_output, weight, geom, spatial, max_workspace_bytes=max_workspace_bytes,
                                        cache_chunk_bytes=cache_chunk_bytes)
    elif fold_here:
        grad_input = xp.empty(x.shape, dtype=x.dtype, device=device(x))
    per_sample = o * ck                                                       # this sample's dW
    if cols is None:
        per_sample += layout.columns_elements(c)
    if layout.has_extra_columns:
        per_sample += o * layout.length                                       # dY widened to the grid
    if fold_here:
        per_sample += layout.fold_elements(c)
    chunks = _chunks(n, per_sample, x, geom, max_workspace_bytes, cache_chunk_bytes)
    grad_weight = None
    for sl in chunks:
        chunk_cols = _gemm_columns(x[sl, ...], layout, g) if cols is None else cols[sl, ...]
        dy = layout.output_columns(grad_output[sl, ...], g)                  # (m, G, O/G, L)
        # dWᵀ = cols · dYᵀ: measured 1.4x faster than dY · colsᵀ with OpenBLAS's AVX-512 kernels
        partial = xp.matmul(chunk_cols, xp.matrix_transpose(dy))             # (m, G, Cg*K, O/G)
        if grad_weight is not None:
            partial[0, ...] += grad_weight
        grad_weight = xp.sum(partial, axis=0)
        if fold_here:
            grad_input[sl, ...] = _fold(columns_grad(w3, dy), layout)
        chunk_cols = partial = dy = None                                      # freed before the next chunk's
    return grad_input, xp.reshape(xp.matrix_transpose(grad_weight), weight.shape)


def conv_backward_data(grad_output: Array, weight: Array, geom: ConvGeometry, spatial: Sequence[int], *,
                       max_workspace_bytes: int | None = DEFAULT_MAX_WORKSPACE_BYTES,
                       cache_chunk_bytes: int | None = None) -> Array:
    """dL/dx (N, C, *spatial) of y = conv(x, W) from dL/dy (N, O, *out): also a transposed convolution's forward.

    conv(dY, flipped Wᵀ) where :func:`data_grad_geometry` allows it, else fold(Wᵀ · dY), chunk by
    chunk.  Workspace per chunk: dY in the columns' layout, dcols, their fold.
    """
    xp = array_namespace(grad_output, weight)
    n, o = grad_output.shape[:2]
    g = geom.groups
    c = weight.shape[1] * g
    as_conv = data_grad_geometry(geom, o, c)
    if as_conv is not None:
        return conv_forward(grad_output, flipped_transposed_weight(weight, g), None, as_conv,
                            max_workspace_bytes=max_workspace_bytes, cache_chunk_bytes=cache_chunk_bytes)[0]
    layout = column_layout(geom, spatial)
    w3 = xp.reshape(weight, (g, o // g, (c // g) * layout.taps))
    per_sample = layout.fold_elements(c)
    if layout.has_extra_columns:
        per_sample += o * layout.length
    chunks = _chunks(n, per_sample, grad_output, geom, max_workspace_bytes, cache_chunk_bytes)
    grad_input = xp.empty((n, c, *spatial), dtype=grad_output.dtype, device=device(grad_output))
    for sl in chunks:
        dy = layout.output_columns(grad_output[sl, ...], g)                  # (m, G, O/G, L)
        grad_input[sl, ...] = _fold(columns_grad(w3, dy), layout)
        dy = None                                                             # freed before the next chunk's
    return grad_input


def data_grad_geometry(geom: ConvGeometry, o: int, c: int) -> ConvGeometry | None:
    """The geometry of dL/dx computed as conv(dY, flipped Wᵀ), where that is used, else None.

    That convolution unfolds dY (O channels) instead of folding dcols (C channels); it pays where
    Wᵀ · dY is a thin GEMM (O <= C, inner dimension O/G <= 64) and measured neutral to slower for wider ones.
    """
    if o // geom.groups > FLIPPED_DX_MAX_CHANNELS or o > c:
        return None
    return flipped_geometry(geom)


def flipped_geometry(geom: ConvGeometry) -> ConvGeometry | None:
    """Stride 1: the geometry of conv(dY, flipped Wᵀ), padded by dilation*(k-1) - padding;
    None for other strides or when the padding exceeds the kernel's reach."""
    pads = tuple((d * (k - 1) - lo, d * (k - 1) - hi)
                 for k, d, (lo, hi) in zip(geom.kernel, geom.dilation, geom.padding, strict=True))
    if any(s != 1 for s in geom.stride) or min(p for pair in pads for p in pair) < 0:
        return None
    return replace(geom, padding=pads)


def flipped_transposed_weight(weight: Array, groups: int) -> Array:
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


def columns_grad(w3: Array, dy: Array) -> Array:
    """dcols = Wᵀ · dY per group: w3 (G, O/G, Cg*K), dy (m, G, O/G, L) -> (m, G, Cg*K, L).

    With one output channel per group (depthwise) each entry is a single product, so a
    broadcast multiply gives the same bits as matmul; on NumPy it measured ~4x faster.
    """
    xp = array_namespace(w3, dy)
    if w3.shape[1] == 1:
        return xp.matrix_transpose(w3) * dy
    return xp.matmul(xp.matrix_transpose(w3), dy)


def _gemm_columns(x: Array, layout: ExactLayout | WideLayout, groups: int) -> Array:
    """The GEMM operand for x (m, C, *spatial): its columns viewed as (m, G, (C // G) * K, length)."""
    m, c = x.shape[:2]
    return array_namespace(x).reshape(layout.columns(x), (m, groups, (c // groups) * layout.taps, layout.length))


def _fold(dcols: Array, layout: ExactLayout | WideLayout) -> Array:
    """dcols (m, G, (C // G) * K, length) folded back to dL/dx (m, C, *spatial)."""
    m, c = dcols.shape[0], dcols.shape[1] * dcols.shape[2] // layout.taps
    return layout.fold(array_namespace(dcols).reshape(dcols, (m, c, layout.taps, layout.length)))
