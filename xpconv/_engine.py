"""The convolution math: N-d im2col / col2im and the GEMM-shaped contractions.

Pure Array API: every function takes its namespace from its array arguments,
so the same lines run on NumPy, CuPy, PyTorch and array-api-strict.

Shapes (``nd`` spatial dims, ``K = prod(kernel)``, ``L = prod(out)``):
    x       (N, C, *spatial)
    weight  (O, C // G, *kernel)
    cols    (N, C, *kernel, *out)   im2col's layout, viewed as (N, G, (C // G) * K, L) for the GEMM
    y       (N, O, *out)

Stride-1 convolutions use "wide" columns instead (see :class:`WideLayout`): each kernel tap's
block is one contiguous slice of the flattened, padded x, and the GEMM also computes outputs
over the padding columns, which are then dropped.

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
# Wide columns are used while they hold at most 1.5x the exact ones: measured faster on the suite's
# stride-1 layers (1.06x-1.27x extra) and on small 2-D/3-D ones up to 1.5x; a 7x7 kernel on 7x7 (1.86x) was slower.
WIDE_MAX_OVERHEAD = 1.5


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


@dataclass(frozen=True)
class WideLayout:
    """Stride-1 columns as contiguous slices of the flattened padded input.

    With x padded to ``padded`` (one extra zero row on the first axis) and flattened to
    ``F = prod(padded)`` elements, output position ``(o_1, ..., o_nd)`` of tap ``t`` reads
    ``flat[offsets[t] + i]`` at ``i = o_1*S_1 + ... + o_nd*S_nd`` (``S`` the padded strides).
    Columns run over the grid ``(O_1, P_2, ..., P_nd)``: ``length = O_1*S_1`` positions, of which
    those beyond ``out`` on the trailing axes are computed and dropped (their gradient is zero).
    The extra row keeps the last tap's slice inside the buffer.
    """

    padded: tuple[int, ...]   # (P_1 + 1, P_2, ..., P_nd)
    grid: tuple[int, ...]     # (O_1, P_2, ..., P_nd)
    out: tuple[int, ...]
    offsets: tuple[int, ...]  # per kernel tap, in the weight's (*kernel) order

    @property
    def length(self) -> int:
        return math.prod(self.grid)

    @property
    def crop(self) -> tuple[slice, ...]:
        """Selects ``out`` from the grid."""
        return tuple(slice(0, o) for o in self.out)

    @property
    def has_extra_columns(self) -> bool:
        """False when the grid is the output (1-D, or a kernel of width 1 on the trailing axes)."""
        return self.grid != self.out


def _has_extra_columns(layout: WideLayout | None) -> bool:
    return layout is not None and layout.has_extra_columns


@lru_cache(maxsize=256)
def wide_layout(geom: ConvGeometry, spatial: tuple[int, ...]) -> WideLayout | None:
    """The wide layout for stride-1 convolutions that need an im2col, when the extra columns cost at
    most ``WIDE_MAX_OVERHEAD`` times the exact ones; else None (im2col's exact layout is used)."""
    if geom.is_pointwise or any(s != 1 for s in geom.stride):
        return None
    padded = [s + lo + hi for s, (lo, hi) in zip(spatial, geom.padding)]
    out = geom.output_shape(spatial)
    grid = (out[0], *padded[1:])
    if math.prod(grid) > WIDE_MAX_OVERHEAD * math.prod(out):
        return None
    strides = [math.prod(padded[d + 1:]) for d in range(geom.nd)]
    offsets = tuple(sum(k * d * s for k, d, s in zip(taps, geom.dilation, strides))
                    for taps in itertools.product(*(range(k) for k in geom.kernel)))
    return WideLayout((padded[0] + 1, *padded[1:]), grid, tuple(out), offsets)


def _pad(x, geom: ConvGeometry, padded):
    """x (N, C, *spatial) placed at geom's low padding inside zeros (N, C, *padded)."""
    xp = array_namespace(x)
    xpad = xp.zeros((*x.shape[:2], *padded), dtype=x.dtype, device=device(x))
    xpad[(*_ALL2, *_interior(geom, x.shape[2:]))] = x
    return xpad


def _interior(geom: ConvGeometry, spatial) -> tuple[slice, ...]:
    return tuple(slice(lo, lo + s) for s, (lo, _) in zip(spatial, geom.padding))


def wide_im2col(x, geom: ConvGeometry, layout: WideLayout):
    """x (N, C, *spatial) -> cols (N, C, K, length): one contiguous slice copy per kernel tap."""
    xp = array_namespace(x)
    n, c = x.shape[:2]
    flat = xp.reshape(_pad(x, geom, layout.padded), (n, c, math.prod(layout.padded)))
    cols = xp.empty((n, c, len(layout.offsets), layout.length), dtype=x.dtype, device=device(x))
    for t, start in enumerate(layout.offsets):
        cols[:, :, t, :] = flat[:, :, start:start + layout.length]
    return cols


def wide_col2im(cols, geom: ConvGeometry, layout: WideLayout, spatial):
    """The adjoint of :func:`wide_im2col`: cols (N, C, K, length) -> (N, C, *spatial)."""
    xp = array_namespace(cols)
    n, c = cols.shape[:2]
    flat = xp.zeros((n, c, math.prod(layout.padded)), dtype=cols.dtype, device=device(cols))
    for t, start in enumerate(layout.offsets):
        flat[:, :, start:start + layout.length] += cols[:, :, t, :]
    return xp.reshape(flat, (n, c, *layout.padded))[(*_ALL2, *_interior(geom, spatial))]


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
        x, windows = _pad(x, geom, padded), replace(geom, padding=((0, 0),) * geom.nd).windows(padded)
    cols = xp.empty((n, c, *geom.kernel, *out), dtype=x.dtype, device=device(x))
    for taps, out_sl, in_sl, _ in windows:
        cols[(*_ALL2, *taps, *out_sl)] = x[(*_ALL2, *in_sl)]
    return cols


def col2im(cols, geom: ConvGeometry, spatial):
    """Fold cols (N, C, *kernel, *out) back to (N, C, *spatial), adding overlaps with slice ``+=``."""
    xp = array_namespace(cols)
    n, c = cols.shape[:2]
    if geom.is_pointwise:
        return xp.reshape(cols, (n, c, *spatial))
    x = xp.zeros((n, c, *spatial), dtype=cols.dtype, device=device(cols))
    for taps, out_sl, in_sl, _ in geom.windows(spatial):
        x[(*_ALL2, *in_sl)] += cols[(*_ALL2, *taps, *out_sl)]
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
    """y = W · cols(x) + b, one batched GEMM per chunk of the batch.

    Workspace per chunk: its columns and padded x (none for pointwise convolutions) and its GEMM result.
    Returns ``(y, cols)``; ``cols``, the GEMM operand (N, G, (C // G) * K, L or the wide length), is
    returned only when ``keep_cols`` and the whole batch fit in one chunk, else None.
    """
    xp = array_namespace(x, weight)
    n, c, *spatial = x.shape
    o, g = weight.shape[0], geom.groups
    out = geom.output_shape(spatial)
    layout = wide_layout(geom, tuple(spatial))
    w3 = xp.reshape(weight, (g, o // g, (c // g) * math.prod(geom.kernel)))   # (G, O/G, Cg*K)
    per_sample = _cols_elements(geom, c, spatial, layout) + o * _length(layout, out)
    chunks = _batch_chunks(n, _itemsize(x) * per_sample, max_workspace_bytes,
                           _cache_sized_chunks(x, geom))
    one_gemm = len(chunks) == 1 and not _has_extra_columns(layout)
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
    dL/dx = :func:`conv_backward_data`

    Workspace per chunk of dL/dW: cols (unless kept), dY in the columns' layout, per-sample dW.
    """
    xp = array_namespace(grad_output, x, weight)
    n, c, *spatial = x.shape
    o, g = weight.shape[0], geom.groups
    out = tuple(grad_output.shape[2:])
    layout = wide_layout(geom, tuple(spatial))
    ck, length = (c // g) * math.prod(geom.kernel), _length(layout, out)
    grad_input = None
    if need_input_grad:
        grad_input = conv_backward_data(grad_output, weight, geom, spatial, max_workspace_bytes=max_workspace_bytes)
    per_sample = ((cols is None) * _cols_elements(geom, c, spatial, layout) + _has_extra_columns(layout) * o * length
                  + o * ck)
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
        chunk_cols = partial = dy = None                               # freed before the next chunk's
    return grad_input, xp.reshape(xp.matrix_transpose(grad_weight), weight.shape)


def conv_backward_data(grad_output, weight, geom: ConvGeometry, spatial, *,
                       max_workspace_bytes=DEFAULT_MAX_WORKSPACE_BYTES):
    """dL/dx (N, C, *spatial) of y = conv(x, W) from dL/dy (N, O, *out): also a transposed convolution's forward.

    conv(dY, flipped Wᵀ) for stride 1, O <= C and O/G <= 64 (measured faster there), else
    fold(Wᵀ · dY), chunk by chunk.  Workspace per chunk: dY in the columns' layout, dcols, their fold.
    """
    xp = array_namespace(grad_output, weight)
    n, o = grad_output.shape[:2]
    g = geom.groups
    c = weight.shape[1] * g
    # The transposed convolution unfolds dY (O channels) instead of folding dcols (C channels); it pays
    # where Wᵀ · dY is a thin GEMM (inner dimension O/G <= 64) and measured neutral to slower for wider ones.
    transposed = _transposed_geometry(geom) if o // g <= TRANSPOSED_DX_MAX_CHANNELS and o <= c else None
    if transposed is not None:
        return conv_forward(grad_output, _transposed_weight(weight, g), None, transposed,
                            max_workspace_bytes=max_workspace_bytes)[0]
    layout = wide_layout(geom, tuple(spatial))
    k, length = math.prod(geom.kernel), _length(layout, grad_output.shape[2:])
    w3 = xp.reshape(weight, (g, o // g, (c // g) * k))
    folded = math.prod(spatial if layout is None else layout.padded)
    per_sample = (0 if geom.is_pointwise else c * (k * length + folded)) + _has_extra_columns(layout) * o * length
    chunks = _batch_chunks(n, _itemsize(grad_output) * per_sample, max_workspace_bytes,
                           _cache_sized_chunks(grad_output, geom))
    grad_input = xp.empty((n, c, *spatial), dtype=grad_output.dtype, device=device(grad_output))
    for sl in chunks:
        dy = _output_columns(grad_output[sl, ...], layout, g)          # (m, G, O/G, L)
        grad_input[sl, ...] = _fold(_transposed_product(w3, dy), geom, layout, spatial)
        dy = None                                                      # freed before the next chunk's
    return grad_input


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
    if not _has_extra_columns(layout):
        return xp.reshape(yc, (m, o, *out))
    return xp.reshape(yc, (m, o, *layout.grid))[(*_ALL2, *layout.crop)]


def _output_columns(dy, layout: WideLayout | None, groups: int):
    """The adjoint of :func:`_outputs`: dY (m, O, *out) -> (m, G, O/G, L), zero on the extra columns."""
    xp = array_namespace(dy)
    m, o = dy.shape[:2]
    if _has_extra_columns(layout):
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
