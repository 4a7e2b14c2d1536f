"""The convolution math: N-d im2col / col2im and the GEMM-shaped contractions.

Pure Array API: every function takes its namespace from its array arguments,
so the same lines run on NumPy, CuPy, PyTorch and array-api-strict.

Shapes (``nd`` spatial dims, ``K = prod(kernel)``, ``L = prod(out)``):
    x       (N, C, *spatial)
    weight  (O, C // G, *kernel)
    cols    (N, C, *kernel, *out)   viewed as (N, G, (C // G) * K, L) for the GEMM
    y       (N, O, *out)

The batch is processed in chunks whose workspace stays under ``max_workspace_bytes``
(and, on the CPU, cache-sized); the results do not depend on the chunking, to the last
bit on NumPy.  Measurements behind the choices: docs/benchmarks.md.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache

from array_api_compat import array_namespace, device

DEFAULT_MAX_WORKSPACE_BYTES = 256 * 2**20
CPU_CHUNK_BYTES = 8 * 2**20
TRANSPOSED_DX_MAX_CHANNELS = 64


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: tuple[int, int] = (0, 0),
                     dilation: int = 1) -> int:
    """Length of one output axis: ``floor((size + lo + hi - dilation*(kernel-1) - 1) / stride) + 1``."""
    lo, hi = padding
    return (size + lo + hi - dilation * (kernel - 1) - 1) // stride + 1


def _window(size: int, out: int, k: int, stride: int, lo: int, dilation: int):
    """Where kernel tap ``k`` of one axis reads: (output slice, input slice), or None if only padding.

    Output position ``j`` reads input ``k*dilation - lo + j*stride``; only the
    ``j`` whose input lies inside ``[0, size)`` are returned, so padding is never
    materialized.
    """
    offset = k * dilation - lo
    j_lo = max(0, (-offset + stride - 1) // stride)
    j_hi = min(out, (size - 1 - offset) // stride + 1)
    if j_hi <= j_lo:
        return None
    start = offset + j_lo * stride
    return slice(j_lo, j_hi), slice(start, offset + (j_hi - 1) * stride + 1, stride)


@dataclass(frozen=True)
class ConvGeometry:
    """Everything about a convolution except the data: kernel, stride, (lo, hi) padding, dilation, groups."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int = 1

    @property
    def nd(self) -> int:
        return len(self.kernel)

    def output_shape(self, spatial) -> tuple[int, ...]:
        return tuple(conv_output_size(*a) for a in zip(spatial, self.kernel, self.stride, self.padding,
                                                       self.dilation))

    @cached_property
    def is_pointwise(self) -> bool:
        """True when cols is just x: 1x..x1 kernel, stride 1, no padding (no im2col needed)."""
        return all(k == 1 and s == 1 and p == (0, 0) for k, s, p in zip(self.kernel, self.stride, self.padding))

    def windows(self, spatial):
        """Per kernel tap: (tap index, output slices, input slices, covers the whole output); cached."""
        return _windows(self, tuple(spatial))

    def im2col_elements(self, channels: int, spatial) -> int:
        """Elements :func:`im2col` allocates per sample: the columns, plus a padded copy of x if padded."""
        if self.is_pointwise:
            return 0
        padded = [s + lo + hi for s, (lo, hi) in zip(spatial, self.padding)]
        extra = math.prod(padded) if any(p != (0, 0) for p in self.padding) else 0
        return channels * (math.prod(self.kernel) * math.prod(self.output_shape(spatial)) + extra)


@lru_cache(maxsize=256)
def _windows(geom: ConvGeometry, spatial: tuple[int, ...]) -> tuple:
    out = geom.output_shape(spatial)
    per_axis = [
        [(k, _window(size, o, k, s, p[0], d)) for k in range(kk)]
        for size, o, kk, s, p, d in zip(spatial, out, geom.kernel, geom.stride, geom.padding, geom.dilation)
    ]
    windows = []
    for taps in itertools.product(*per_axis):
        if any(w is None for _, w in taps):
            continue
        out_sl = tuple(w[0] for _, w in taps)
        full = all(sl.stop - sl.start == o for sl, o in zip(out_sl, out))
        windows.append((tuple(k for k, _ in taps), out_sl, tuple(w[1] for _, w in taps), full))
    return tuple(windows)


_ALL2 = (slice(None), slice(None))


def im2col(x, geom: ConvGeometry):
    """Unfold x (N, C, *spatial) into cols (N, C, *kernel, *out), one strided slice copy per kernel tap."""
    xp = array_namespace(x)
    n, c, *spatial = x.shape
    out = geom.output_shape(spatial)
    if geom.is_pointwise:
        return xp.reshape(x, (n, c, *geom.kernel, *out))
    windows = geom.windows(spatial)
    if not (len(windows) == math.prod(geom.kernel) and all(w[3] for w in windows)):
        # Pad once, so that every tap copies a whole window and cols needs no zero-filling.
        padded = [s + lo + hi for s, (lo, hi) in zip(spatial, geom.padding)]
        xpad = xp.zeros((n, c, *padded), dtype=x.dtype, device=device(x))
        xpad[(*_ALL2, *(slice(lo, lo + s) for s, (lo, _) in zip(spatial, geom.padding)))] = x
        x, windows = xpad, replace(geom, padding=((0, 0),) * geom.nd).windows(padded)
    cols = xp.empty((n, c, *geom.kernel, *out), dtype=x.dtype, device=device(x))
    for taps, out_sl, in_sl, _ in windows:
        cols[(*_ALL2, *taps, *out_sl)] = x[(*_ALL2, *in_sl)]
    return cols


def _add_cols(target, batch: slice, cols, geom: ConvGeometry) -> None:
    """target[batch] += col2im(cols), in place: one strided slice ``+=`` per kernel tap."""
    for taps, out_sl, in_sl, _ in geom.windows(target.shape[2:]):
        target[(batch, slice(None), *in_sl)] += cols[(*_ALL2, *taps, *out_sl)]


def col2im(cols, geom: ConvGeometry, spatial):
    """Fold cols (N, C, *kernel, *out) back to (N, C, *spatial), adding overlaps with slice ``+=``."""
    xp = array_namespace(cols)
    n, c = cols.shape[:2]
    if geom.is_pointwise:
        return xp.reshape(cols, (n, c, *spatial))
    x = xp.zeros((n, c, *spatial), dtype=cols.dtype, device=device(cols))
    _add_cols(x, slice(0, n), cols, geom)
    return x


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
    """y = W · im2col(x) + b, one batched GEMM per chunk of the batch.

    Workspace per chunk: its cols and padded x (none for pointwise convolutions) and its GEMM result.
    Returns ``(y, cols)``; ``cols`` (N, C, *kernel, *out) is returned only when
    ``keep_cols`` and the whole batch fit in one chunk, else None.
    """
    xp = array_namespace(x, weight)
    n, c, *spatial = x.shape
    o, g = weight.shape[0], geom.groups
    out = geom.output_shape(spatial)
    ck, length = (c // g) * math.prod(geom.kernel), math.prod(out)
    w3 = xp.reshape(weight, (g, o // g, ck))                        # (G, O/G, Cg*K)
    per_sample = geom.im2col_elements(c, spatial) + o * length
    chunks = _batch_chunks(n, _itemsize(x) * per_sample, max_workspace_bytes,
                           _cache_sized_chunks(x, geom))
    y = None if len(chunks) == 1 else xp.empty((n, g, o // g, length), dtype=x.dtype, device=device(x))
    cols = None
    for sl in chunks:
        cols = im2col(x[sl, ...], geom)
        m = cols.shape[0]
        yc = xp.matmul(w3, xp.reshape(cols, (m, g, ck, length)))  # (m, G, O/G, L)
        if y is None:
            y = yc
        else:
            y[sl, ...] = yc
            cols = yc = None                                          # freed before the next chunk's
    y = xp.reshape(y, (n, o, *out))
    if bias is not None:
        y += xp.reshape(bias, (1, o) + (1,) * geom.nd)
    return y, (cols if keep_cols and len(chunks) == 1 else None)


def conv_backward(grad_output, x, weight, geom: ConvGeometry, *, cols=None, need_input_grad: bool = True,
                  max_workspace_bytes=DEFAULT_MAX_WORKSPACE_BYTES):
    """(dL/dx or None, dL/dW) for y = conv(x, W); ``cols`` is forward's im2col(x) when kept.

    dL/dW = sum over the batch of dY · colsᵀ, added one sample after the other: chunking
            the batch does not change a bit of it (NumPy sums axis 0 in order)
    dL/dx = conv(dY, flipped Wᵀ) for stride 1, O <= C and O/G <= 64 (measured faster there),
            else col2im(Wᵀ · dY), folded into dL/dx chunk by chunk

    Workspace per chunk: cols (unless kept), dcols (if folded), per-sample dW.
    """
    xp = array_namespace(grad_output, x, weight)
    n, c, *spatial = x.shape
    o, g = weight.shape[0], geom.groups
    ck, length = (c // g) * math.prod(geom.kernel), math.prod(grad_output.shape[2:])
    w3 = xp.reshape(weight, (g, o // g, ck))
    dy = xp.reshape(grad_output, (n, g, o // g, length))              # (N, G, O/G, L)
    # The transposed convolution unfolds dY (O channels) instead of folding dcols (C channels); it pays
    # where Wᵀ · dY is a thin GEMM (inner dimension O/G <= 64) and measured neutral to slower for wider ones.
    thin = o // g <= TRANSPOSED_DX_MAX_CHANNELS and o <= c
    transposed = _transposed_geometry(geom) if need_input_grad and thin else None
    grad_input = None
    if transposed is not None:
        grad_input, _ = conv_forward(grad_output, _transposed_weight(weight, g), None, transposed,
                                     max_workspace_bytes=max_workspace_bytes)
    fold = need_input_grad and transposed is None
    dcols_per_sample = 0 if geom.is_pointwise else c * math.prod(geom.kernel) * length
    per_sample = (cols is None) * geom.im2col_elements(c, spatial) + fold * dcols_per_sample + o * ck
    chunks = _batch_chunks(n, _itemsize(x) * per_sample, max_workspace_bytes,
                           _cache_sized_chunks(x, geom))
    if fold and len(chunks) > 1:
        grad_input = xp.zeros(x.shape, dtype=x.dtype, device=device(x))
    grad_weight = None
    for sl in chunks:
        chunk_cols = im2col(x[sl, ...], geom) if cols is None else cols[sl, ...]
        m = chunk_cols.shape[0]
        partial = xp.matmul(dy[sl, ...], xp.matrix_transpose(xp.reshape(chunk_cols, (m, g, ck, length))))
        if grad_weight is not None:                                    # (m, G, O/G, Cg*K)
            partial[0, ...] += grad_weight
        grad_weight = xp.sum(partial, axis=0)
        if fold:
            dcols = xp.reshape(_transposed_product(w3, dy[sl, ...]), chunk_cols.shape)
            if grad_input is None:
                grad_input = col2im(dcols, geom, spatial)
            else:
                _add_cols(grad_input, sl, dcols, geom)
        chunk_cols = partial = dcols = None                            # freed before the next chunk's
    return grad_input, xp.reshape(grad_weight, weight.shape)


def _transposed_geometry(geom: ConvGeometry) -> ConvGeometry | None:
    """Stride 1: the geometry of dL/dx = conv(dY, flipped Wᵀ), padded by dilation*(k-1) - padding;
    None for other strides or when the padding exceeds the kernel's reach."""
    pads = tuple((d * (k - 1) - lo, d * (k - 1) - hi)
                 for k, d, (lo, hi) in zip(geom.kernel, geom.dilation, geom.padding))
    if any(s != 1 for s in geom.stride) or min(p for pair in pads for p in pair) < 0:
        return None
    return replace(geom, padding=pads)


def _transposed_weight(weight, groups: int):
    """(O, C/G, *kernel) -> (C, O/G, *kernel), flipped along every kernel axis."""
    xp = array_namespace(weight)
    o, cg, *kernel = weight.shape
    axes = tuple(range(3, 3 + len(kernel)))
    w = xp.reshape(weight, (groups, o // groups, cg, *kernel))
    w = xp.flip(xp.permute_dims(w, (0, 2, 1, *axes)), axis=axes)     # (G, C/G, O/G, *kernel)
    return xp.reshape(w, (groups * cg, o // groups, *kernel))


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
