"""Column buffers: im2col / col2im, and the two column layouts the engine multiplies by the weight.

Pure Array API, like the engine that uses them (:mod:`xpconv._engine`).  Shapes (``K = prod(kernel)``):
    x       (N, C, *spatial)
    cols    (N, C, *kernel, *out)   :func:`im2col`: any stride; padding copied in once
            (C, *kernel, N, *out)   the same with ``batch_inner``: the batch inside the GEMM's columns
    wide    (N, C, K, length)       :func:`wide_im2col`: stride 1, one contiguous slice per kernel tap
            (C, K, N, length)       the same with the layout's ``batch_inner``

A layout (:class:`ExactLayout` or :class:`WideLayout`, chosen by :func:`column_layout`) is everything the
engine needs to know about its columns: ``length`` GEMM columns per sample over a ``grid`` that holds the
output ``out`` (the wide grid holds extra columns, computed and dropped), how to build the columns of x
(``columns``) and view them as the GEMM's operand (``gemm_operand``), fold their gradient back (``fold``),
and what each allocates per sample.

The GEMM takes the batch one of two ways (``batch_inner``, the backend's policy):
    per sample   cols (m, G, Cg*K, L): W · cols broadcasts over the samples, a small GEMM each; y comes out
                 in place, dL/dW sums the per-sample products
    batch inner  cols (G, Cg*K, m*L): one GEMM for the whole chunk (one kernel launch on a GPU); y and dY
                 pass through one transposing copy each
On the CPU with one BLAS thread the per-sample GEMMs measured faster (the copies cost more than the calls
save, docs/benchmarks.md).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache

import numpy as np
from array_api_compat import device

from ._geometry import ConvGeometry
from ._namespace import namespace

__all__ = ["ExactLayout", "WideLayout", "GatherLayout", "Layout", "column_layout", "im2col", "col2im", "col2im_into",
           "wide_im2col", "wide_col2im", "WIDE_MAX_OVERHEAD"]

# Wide columns are used while they hold at most 1.5x the exact ones: measured faster on the suite's
# stride-1 layers (1.06x-1.27x extra) and on small 2-D/3-D ones up to 1.5x; a 7x7 kernel on 7x7 (1.86x) was slower.
WIDE_MAX_OVERHEAD = 1.5

_ALL2 = (slice(None), slice(None))


# -- the two layouts --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Layout:
    """What both layouts share: the GEMM's columns per sample and how they map to the output."""

    geom: ConvGeometry
    spatial: tuple[int, ...]
    grid: tuple[int, ...]     # the positions the GEMM computes; ``out`` is its leading corner
    out: tuple[int, ...]
    batch_inner: bool         # the batch inside the GEMM's columns, else one GEMM per sample

    @cached_property
    def length(self) -> int:
        """GEMM columns per sample."""
        return math.prod(self.grid)

    @cached_property
    def has_extra_columns(self) -> bool:
        """Whether the grid holds columns beyond the output (which are computed, then dropped)."""
        return self.grid != self.out

    @cached_property
    def taps(self) -> int:
        return math.prod(self.geom.kernel)

    def gemm_operand(self, cols, groups: int):
        """Columns (C, K, m, length) -> (G, Cg*K, m*length), or per sample (m, C, K, length) -> (m, G, Cg*K, length)."""
        xp = namespace(cols)
        if self.batch_inner:
            c, k, m, length = cols.shape
            return xp.reshape(cols, (groups, c // groups * k, m * length))
        m, c, k, length = cols.shape
        return xp.reshape(cols, (m, groups, c // groups * k, length))

    def column_blocks(self, dcols):
        """The inverse of :meth:`gemm_operand`: (C, K, m, length), or per sample (m, C, K, length)."""
        xp = namespace(dcols)
        if self.batch_inner:
            g, cgk, ml = dcols.shape
            return xp.reshape(dcols, (g * cgk // self.taps, self.taps, ml // self.length, self.length))
        m, g, cgk, length = dcols.shape
        return xp.reshape(dcols, (m, g * cgk // self.taps, self.taps, length))

    def outputs(self, yc):
        """GEMM result (G, O/G, m*length), or (m, G, O/G, length), -> y (m, O, *out) without the extra columns;
        a view."""
        xp = namespace(yc)
        if self.batch_inner:
            y = _swap01(xp, xp.reshape(yc, (yc.shape[0] * yc.shape[1], yc.shape[2] // self.length, *self.grid)))
        else:
            y = xp.reshape(yc, (yc.shape[0], yc.shape[1] * yc.shape[2], *self.grid))
        return y[(*_ALL2, *self._crop)] if self.has_extra_columns else y

    def output_columns(self, dy, groups: int):
        """The adjoint of :meth:`outputs`: dY (m, O, *out) -> (G, O/G, m*length), or (m, G, O/G, length), zero
        on the extra columns."""
        xp = namespace(dy)
        m, o = dy.shape[:2]
        if self.batch_inner:
            dy = _swap01(xp, dy)                                            # (O, m, *out), a view
        if self.has_extra_columns:
            wide = xp.zeros((*dy.shape[:2], *self.grid), dtype=dy.dtype, device=dy.device)
            wide[(*_ALL2, *self._crop)] = dy
            dy = wide
        if self.batch_inner:
            return xp.reshape(dy, (groups, o // groups, m * self.length))  # copies where dy is a strided view
        return xp.reshape(dy, (m, groups, o // groups, self.length))

    def output_copy_elements(self, channels: int) -> int:
        """Elements per sample of :meth:`output_columns`'s copy of dY (none where it is a view)."""
        return channels * self.length if self.has_extra_columns or self.batch_inner else 0

    @cached_property
    def _crop(self) -> tuple[slice, ...]:
        return tuple(slice(0, o) for o in self.out)

    def fold_elements(self, channels: int) -> int:
        """Elements the fold of one sample's column gradient allocates: the gradient and its fold."""
        if self.geom.is_pointwise:
            return 0
        return channels * (self.taps * self.length + math.prod(self._fold_shape))

    @property
    def _fold_shape(self) -> tuple[int, ...]:
        return self.spatial


@dataclass(frozen=True)
class ExactLayout(_Layout):
    """im2col's columns: one per output position, for any stride."""

    def columns(self, x, windows=None):
        """x (m, C, *spatial) -> (C, K, m, length), or per sample (m, C, K, length)."""
        m, c = x.shape[:2]
        blocks = (c, self.taps, m, self.length) if self.batch_inner else (m, c, self.taps, self.length)
        return namespace(x).reshape(im2col(x, self.geom, batch_inner=self.batch_inner, windows=windows), blocks)

    def columns_elements(self, channels: int) -> int:
        """Elements :meth:`columns` allocates per sample (a pointwise convolution's x, moved inside the batch)."""
        if self.geom.is_pointwise and self.batch_inner:
            return channels * self.length
        return self.geom.im2col_elements(channels, self.spatial)

    def fold(self, dcols):
        """dcols (C, K, m, length), or (m, C, K, length), -> dL/dx (m, C, *spatial)."""
        return col2im(self._unflat(dcols), self.geom, self.spatial, batch_inner=self.batch_inner)

    def fold_into(self, x, batch: slice, row: int, dcols) -> None:
        """Add the fold of dcols (C, K, m, length), or (m, C, K, length), into ``x[batch, :, row:row + spatial[0]]``."""
        col2im_into(x, batch, row, self._unflat(dcols), self.geom, self.spatial, batch_inner=self.batch_inner)

    def _unflat(self, dcols):
        """(C, K, m, length) -> (C, *kernel, m, *out), or (m, C, K, length) -> (m, C, *kernel, *out)."""
        if self.batch_inner:
            shape = (dcols.shape[0], *self.geom.kernel, dcols.shape[2], *self.out)
        else:
            shape = (*dcols.shape[:2], *self.geom.kernel, *self.out)
        return namespace(dcols).reshape(dcols, shape)


@dataclass(frozen=True)
class WideLayout(_Layout):
    """Stride-1 columns as contiguous slices of the flattened padded input.

    With x padded to ``padded`` (one extra zero row on the first axis) and flattened to
    ``F = prod(padded)`` elements, output position ``(o_1, ..., o_nd)`` of tap ``t`` reads
    ``flat[offsets[t] + i]`` at ``i = o_1*S_1 + ... + o_nd*S_nd`` (``S`` the padded strides).
    Columns run over the grid ``(O_1, P_2, ..., P_nd)``: ``length = O_1*S_1`` positions, of which
    those beyond ``out`` on the trailing axes are computed and dropped (their gradient is zero).
    The extra row keeps the last tap's slice inside the buffer.
    """

    padded: tuple[int, ...]    # (P_1 + 1, P_2, ..., P_nd)
    offsets: tuple[int, ...]   # per kernel tap, in the weight's (*kernel) order

    @cached_property
    def tap_steps(self) -> tuple[int, ...]:
        """Per spatial axis, the elements between two kernel taps in the flattened padded x."""
        return tuple(d * a for d, a in zip(self.geom.dilation, _axis_steps(self.padded), strict=True))

    def columns(self, x, windows=None):
        """x (m, C, *spatial) -> (C, K, m, length), or per sample (m, C, K, length)."""
        return wide_im2col(x, self, windows)

    def columns_elements(self, channels: int) -> int:
        """Elements :meth:`columns` allocates per sample: the padded copy of x and the columns."""
        return channels * (self.taps * self.length + math.prod(self.padded))

    def fold(self, dcols):
        """dcols (C, K, m, length), or (m, C, K, length), -> dL/dx (m, C, *spatial)."""
        return wide_col2im(dcols, self)

    @property
    def _fold_shape(self) -> tuple[int, ...]:
        return self.padded


@dataclass(frozen=True)
class GatherLayout(_Layout):
    """im2col as one gather: the columns are ``take(flat, indices)`` of the flattened padded input, and their
    fold is its adjoint, one ``take`` of the column gradient (plus a zero) at the at most K columns that read
    each input element, and one ``sum``.  Three array operations each way whatever the kernel, where the slice
    copies take one per kernel tap: the layout of a device where every operation is a kernel launch.
    """

    padded: tuple[int, ...]

    def columns(self, x, windows=None):
        """x (m, C, *spatial) -> (C, K, m, length), or per sample (m, C, K, length); ``windows`` is not used."""
        xp = namespace(x)
        m, c = x.shape[:2]
        flat = _pad(x, self.geom, self.padded, self.batch_inner)
        if self.batch_inner:
            cols = xp.take(xp.reshape(flat, (c, -1)), self._indices(x, m)[0], axis=1)
            return xp.reshape(cols, (c, self.taps, m, self.length))
        cols = xp.take(xp.reshape(flat, (m, c, -1)), self._indices(x, 1)[0], axis=2)
        return xp.reshape(cols, (m, c, self.taps, self.length))

    def columns_elements(self, channels: int) -> int:
        """Elements :meth:`columns` allocates per sample: the padded copy of x and the columns."""
        return channels * (self.taps * self.length + math.prod(self.padded))

    def fold_elements(self, channels: int) -> int:
        """Elements the fold allocates per sample: the gradient with its zero, the gathered terms (at most K
        per input element) and their sum."""
        return channels * (2 * self.taps * self.length + (self.taps + 1) * math.prod(self.padded) + 1)

    def fold(self, dcols):
        """dcols (C, K, m, length), or (m, C, K, length), -> dL/dx (m, C, *spatial), a view."""
        xp = namespace(dcols)
        m = dcols.shape[2] if self.batch_inner else dcols.shape[0]
        lead = (dcols.shape[0],) if self.batch_inner else dcols.shape[:2]      # (C,) or (m, C)
        flat = xp.reshape(dcols, (*lead, -1))
        flat = xp.concat([flat, xp.zeros((*lead, 1), dtype=dcols.dtype, device=dcols.device)], axis=-1)
        _, inverse = self._indices(dcols, m if self.batch_inner else 1)
        terms = xp.take(flat, xp.reshape(inverse, (-1,)), axis=len(lead))
        dx = xp.sum(xp.reshape(terms, (*lead, *inverse.shape)), axis=-1)     # (C, m*P) or (m, C, P)
        if self.batch_inner:
            dx = _swap01(xp, xp.reshape(dx, (lead[0], m, *self.padded)))
        else:
            dx = xp.reshape(dx, (*lead, *self.padded))
        return dx[(*_ALL2, *self.geom.interior(self.spatial))]

    def _indices(self, a, m: int):
        """(gather indices (K * m * length,), inverse (m * P, R)) on ``a``'s device, for ``m`` samples (1: per
        sample); the inverse lists the at most R <= K column entries that read each padded element, padded with
        the index of the appended zero."""
        return _device_indices(self, m, namespace(a), device(a))


@lru_cache(maxsize=64)
def _device_indices(layout: GatherLayout, m: int, xp, dev):
    gather, inverse = _gather_maps(layout.geom, layout.spatial, m)
    return (xp.asarray(gather, device=dev), xp.asarray(inverse, device=dev))


@lru_cache(maxsize=64)
def _gather_maps(geom: ConvGeometry, spatial: tuple[int, ...], m: int) -> tuple[np.ndarray, np.ndarray]:
    """The host index maps of :class:`GatherLayout` (int64): tap t, sample n, output l reads the flattened
    padded input at ``n * P + sum_d (o_d * stride_d + k_d * dilation_d) * S_d``."""
    padded, out = geom.padded_shape(spatial), geom.output_shape(spatial)
    nd = geom.nd
    index = np.zeros((1,) * 2 * nd, dtype=np.int64)
    for d in range(nd):
        taps = np.arange(geom.kernel[d]) * geom.dilation[d]
        outs = np.arange(out[d]) * geom.stride[d]
        shape = [1] * 2 * nd
        shape[d], shape[nd + d] = geom.kernel[d], 1
        pos = taps.reshape(shape) + outs.reshape([1] * nd + [out[d] if i == d else 1 for i in range(nd)])
        index = index + pos * math.prod(padded[d + 1:])
    index = index.reshape(math.prod(geom.kernel), 1, math.prod(out))                       # (K, 1, L)
    size = math.prod(padded)
    gather = (index + (np.arange(m) * size).reshape(1, m, 1)).reshape(-1)                 # (K * m * L,)
    order = np.argsort(gather, kind="stable")
    counts = np.bincount(gather, minlength=m * size)
    rank = np.arange(gather.size) - np.repeat(np.cumsum(counts) - counts, counts)
    inverse = np.full((m * size, max(int(counts.max()), 1)), gather.size, dtype=np.int64)
    inverse[gather[order], rank] = order
    return gather, inverse


Layout = ExactLayout | WideLayout | GatherLayout


def column_layout(geom: ConvGeometry, spatial, batch_inner: bool = False, gather: bool = False) -> Layout:
    """The columns' layout: with ``gather`` (a device policy) :class:`GatherLayout` wherever an im2col is needed;
    else the wide layout for stride-1 convolutions, when its extra columns cost at most ``WIDE_MAX_OVERHEAD``
    times the exact ones, and im2col's exact layout otherwise.  ``batch_inner``: see the module."""
    return _column_layout(geom, tuple(spatial), WIDE_MAX_OVERHEAD, batch_inner, gather)


@lru_cache(maxsize=256)
def _column_layout(geom: ConvGeometry, spatial: tuple[int, ...], max_overhead: float, batch_inner: bool,
                   gather: bool):
    out = geom.output_shape(spatial)
    exact = ExactLayout(geom, spatial, out, out, batch_inner)
    if geom.is_pointwise:
        return exact
    if gather:
        return GatherLayout(geom, spatial, out, out, batch_inner, geom.padded_shape(spatial))
    if any(s != 1 for s in geom.stride):
        return exact
    padded = geom.padded_shape(spatial)
    grid = (out[0], *padded[1:])
    if math.prod(grid) > max_overhead * math.prod(out):
        return exact
    strides = [math.prod(padded[d + 1:]) for d in range(geom.nd)]
    offsets = tuple(sum(k * d * s for k, d, s in zip(taps, geom.dilation, strides, strict=True))
                    for taps in itertools.product(*(range(k) for k in geom.kernel)))
    return WideLayout(geom, spatial, grid, out, batch_inner, (padded[0] + 1, *padded[1:]), offsets)


# -- the copies -------------------------------------------------------------------------------------
def _swap01(xp, a):
    """``a`` with its first two axes swapped: (N, C, ...) <-> (C, N, ...), a view."""
    return xp.permute_dims(a, (1, 0, *range(2, a.ndim)))


def _pad(x, geom: ConvGeometry, padded, batch_inner: bool = False):
    """x (N, C, *spatial) placed at geom's low padding inside zeros (N, C, *padded), or (C, N, *padded)."""
    xp = namespace(x)
    lead = x.shape[:2][::-1] if batch_inner else x.shape[:2]
    xpad = xp.zeros((*lead, *padded), dtype=x.dtype, device=x.device)
    xpad[(*_ALL2, *geom.interior(x.shape[2:]))] = _swap01(xp, x) if batch_inner else x
    return xpad


def wide_im2col(x, layout: WideLayout, windows=None):
    """x (N, C, *spatial) -> cols (N, C, K, length), or with ``layout.batch_inner`` (C, K, N, length): one
    contiguous slice copy per kernel tap, or with ``windows`` (a backend's
    :attr:`~xpconv.backends.Backend.window_view`) one copy of a strided view holding every tap."""
    xp = namespace(x)
    inner = layout.batch_inner
    lead = x.shape[:2][::-1] if inner else x.shape[:2]                    # (C, N) or (N, C)
    size = math.prod(layout.padded)
    flat = xp.reshape(_pad(x, layout.geom, layout.padded, inner), (*lead, size))
    taps, length = len(layout.offsets), layout.length
    if windows is not None:
        kernel, steps = layout.geom.kernel, layout.tap_steps
        if inner:                                                          # (C, *kernel, N, length)
            view = windows(flat, (lead[0], *kernel, lead[1], length), (lead[1] * size, *steps, size, 1))
            return xp.reshape(view, (lead[0], taps, lead[1], length), copy=True)
        view = windows(flat, (*lead, *kernel, length), (lead[1] * size, size, *steps, 1))
        return xp.reshape(view, (*lead, taps, length), copy=True)
    cols = xp.empty((lead[0], taps, lead[1], length) if inner else (*lead, taps, length),
                    dtype=x.dtype, device=x.device)
    for t, start in enumerate(layout.offsets):
        cols[_wide_tap(t, inner)] = flat[:, :, start:start + length]
    return cols


def wide_col2im(cols, layout: WideLayout):
    """The adjoint of :func:`wide_im2col`: cols (N, C, K, length), or (C, K, N, length), -> (N, C, *spatial),
    a view."""
    xp = namespace(cols)
    inner = layout.batch_inner
    lead = (cols.shape[0], cols.shape[2]) if inner else cols.shape[:2]
    flat = xp.zeros((*lead, math.prod(layout.padded)), dtype=cols.dtype, device=cols.device)
    length = layout.length
    for t, start in enumerate(layout.offsets):
        flat[:, :, start:start + length] += cols[_wide_tap(t, inner)]
    padded = xp.reshape(flat, (*lead, *layout.padded))[(*_ALL2, *layout.geom.interior(layout.spatial))]
    return _swap01(xp, padded) if inner else padded


def _axis_steps(padded) -> tuple[int, ...]:
    """Per spatial axis, the elements between neighbours in a C-contiguous array of spatial shape ``padded``."""
    return tuple(math.prod(padded[i + 1:]) for i in range(len(padded)))


def _wide_tap(t: int, batch_inner: bool) -> tuple:
    """The index of tap ``t``'s block in wide columns (N, C, K, length), or (C, K, N, length)."""
    return (slice(None), t, slice(None), slice(None)) if batch_inner else (*_ALL2, t, slice(None))


def _tap(taps, out_sl, batch_inner: bool) -> tuple:
    """The index of one kernel tap's block in cols (N, C, *kernel, *out), or (C, *kernel, N, *out)."""
    return (slice(None), *taps, slice(None), *out_sl) if batch_inner else (*_ALL2, *taps, *out_sl)


def im2col(x, geom: ConvGeometry, *, batch_inner: bool = False, windows=None):
    """Unfold x (N, C, *spatial) into cols (N, C, *kernel, *out), or with ``batch_inner`` (C, *kernel, N, *out),
    one strided slice copy per kernel tap, or for a padded convolution with ``windows`` (a backend's
    :attr:`~xpconv.backends.Backend.window_view`) one copy of a strided view of the padded x."""
    xp = namespace(x)
    n, c, *spatial = x.shape
    out = geom.output_shape(spatial)
    lead = (c, *geom.kernel, n) if batch_inner else (n, c, *geom.kernel)
    if geom.is_pointwise:
        return xp.reshape(_swap01(xp, x) if batch_inner else x, (*lead, *out))
    if windows is not None and geom.is_padded:
        padded = geom.padded_shape(spatial)
        size, axis = math.prod(padded), _axis_steps(padded)
        steps = tuple(d * a for d, a in zip(geom.dilation, axis, strict=True))
        strides = tuple(s * a for s, a in zip(geom.stride, axis, strict=True))
        src = _pad(x, geom, padded, batch_inner)                          # (N, C, *padded) or (C, N, *padded)
        if batch_inner:
            view = windows(src, (*lead, *out), (n * size, *steps, size, *strides))
        else:
            view = windows(src, (*lead, *out), (c * size, size, *steps, *strides))
        return xp.asarray(view, copy=True)
    windows = geom.windows(spatial)
    if not (len(windows) == math.prod(geom.kernel) and all(w[3] for w in windows)):
        # Pad once, so that every tap copies a whole window and cols needs no zero-filling.
        padded = geom.padded_shape(spatial)
        src, windows = _pad(x, geom, padded, batch_inner), replace(geom, padding=((0, 0),) * geom.nd).windows(padded)
    else:
        src = _swap01(xp, x) if batch_inner else x
    cols = xp.empty((*lead, *out), dtype=x.dtype, device=x.device)
    for taps, out_sl, in_sl, _ in windows:
        cols[_tap(taps, out_sl, batch_inner)] = src[(*_ALL2, *in_sl)]
    return cols


def col2im(cols, geom: ConvGeometry, spatial, *, batch_inner: bool = False):
    """Fold cols (N, C, *kernel, *out), or (C, *kernel, N, *out), back to (N, C, *spatial), adding overlaps
    with slice ``+=``."""
    xp = namespace(cols)
    c, n = (cols.shape[0], cols.shape[1 + geom.nd]) if batch_inner else cols.shape[1::-1]
    if geom.is_pointwise:
        if batch_inner:
            return _swap01(xp, xp.reshape(cols, (c, n, *spatial)))
        return xp.reshape(cols, (n, c, *spatial))
    x = xp.zeros((n, c, *spatial), dtype=cols.dtype, device=cols.device)
    col2im_into(x, slice(None), 0, cols, geom, spatial, batch_inner=batch_inner)
    return x


def col2im_into(x, batch: slice, row: int, cols, geom: ConvGeometry, spatial, *, batch_inner: bool = False) -> None:
    """Add the fold of cols (m, C, *kernel, *out), or (C, *kernel, m, *out), into
    ``x[batch, :, row:row + spatial[0], ...]`` in place.

    Each element receives its terms in kernel-tap order, as in :func:`col2im`: folding row bands of the
    output into one ``x``, the band of the last rows first, adds every element's terms in that same order.
    """
    xp = namespace(x)
    for taps, out_sl, in_sl, _ in geom.windows(spatial):
        first = slice(in_sl[0].start + row, in_sl[0].stop + row, in_sl[0].step)
        block = cols[_tap(taps, out_sl, batch_inner)]
        x[(batch, slice(None), first, *in_sl[1:])] += _swap01(xp, block) if batch_inner else block
