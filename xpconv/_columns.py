"""Column buffers: im2col / col2im, and the two column layouts the engine multiplies by the weight.

Pure Array API, like the engine that uses them (:mod:`xpconv._engine`).  Shapes (``K = prod(kernel)``):
    x       (N, C, *spatial)
    cols    (N, C, *kernel, *out)   :func:`im2col`: any stride; padding copied in once
    wide    (N, C, K, length)       :func:`wide_im2col`: stride 1, one contiguous slice per kernel tap

A layout (:class:`ExactLayout` or :class:`WideLayout`, chosen by :func:`column_layout`) is everything the
engine needs to know about its columns: ``length`` GEMM columns per sample over a ``grid`` that holds the
output ``out`` (the wide grid holds extra columns, computed and dropped), how to build the columns of x
(``columns``), fold their gradient back (``fold``), and what each allocates per sample.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from functools import lru_cache

from array_api_compat import array_namespace, device

from ._geometry import ConvGeometry

__all__ = ["ExactLayout", "WideLayout", "column_layout", "im2col", "col2im", "col2im_into", "wide_im2col",
           "wide_col2im", "WIDE_MAX_OVERHEAD"]

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

    @property
    def length(self) -> int:
        """GEMM columns per sample."""
        return math.prod(self.grid)

    @property
    def has_extra_columns(self) -> bool:
        """Whether the grid holds columns beyond the output (which are computed, then dropped)."""
        return self.grid != self.out

    @property
    def taps(self) -> int:
        return math.prod(self.geom.kernel)

    def outputs(self, yc):
        """GEMM result (m, G, O/G, length) -> y (m, O, *out), dropping the extra columns."""
        xp = array_namespace(yc)
        m, o = yc.shape[0], yc.shape[1] * yc.shape[2]
        if not self.has_extra_columns:
            return xp.reshape(yc, (m, o, *self.out))
        return xp.reshape(yc, (m, o, *self.grid))[(*_ALL2, *self._crop)]

    def output_columns(self, dy, groups: int):
        """The adjoint of :meth:`outputs`: dY (m, O, *out) -> (m, G, O/G, length), zero on the extra columns."""
        xp = array_namespace(dy)
        m, o = dy.shape[:2]
        if self.has_extra_columns:
            wide = xp.zeros((m, o, *self.grid), dtype=dy.dtype, device=device(dy))
            wide[(*_ALL2, *self._crop)] = dy
            dy = wide
        return xp.reshape(dy, (m, groups, o // groups, self.length))

    @property
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

    def columns(self, x):
        """x (m, C, *spatial) -> (m, C, K, length)."""
        return array_namespace(x).reshape(im2col(x, self.geom), (*x.shape[:2], self.taps, self.length))

    def columns_elements(self, channels: int) -> int:
        """Elements :meth:`columns` allocates per sample."""
        return self.geom.im2col_elements(channels, self.spatial)

    def fold(self, dcols):
        """dcols (m, C, K, length) -> dL/dx (m, C, *spatial)."""
        return col2im(self._unflat(dcols), self.geom, self.spatial)

    def fold_into(self, x, batch: slice, row: int, dcols) -> None:
        """Add the fold of dcols (m, C, K, length) into ``x[batch, :, row:row + spatial[0], ...]``."""
        col2im_into(x, batch, row, self._unflat(dcols), self.geom, self.spatial)

    def _unflat(self, dcols):
        return array_namespace(dcols).reshape(dcols, (*dcols.shape[:2], *self.geom.kernel, *self.out))


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

    def columns(self, x):
        """x (m, C, *spatial) -> (m, C, K, length)."""
        return wide_im2col(x, self)

    def columns_elements(self, channels: int) -> int:
        """Elements :meth:`columns` allocates per sample: the padded copy of x and the columns."""
        return channels * (self.taps * self.length + math.prod(self.padded))

    def fold(self, dcols):
        """dcols (m, C, K, length) -> dL/dx (m, C, *spatial)."""
        return wide_col2im(dcols, self)

    @property
    def _fold_shape(self) -> tuple[int, ...]:
        return self.padded


def column_layout(geom: ConvGeometry, spatial) -> ExactLayout | WideLayout:
    """The wide layout for stride-1 convolutions that need an im2col, when its extra columns cost at most
    ``WIDE_MAX_OVERHEAD`` times the exact ones; else im2col's exact layout."""
    return _column_layout(geom, tuple(spatial), WIDE_MAX_OVERHEAD)


@lru_cache(maxsize=256)
def _column_layout(geom: ConvGeometry, spatial: tuple[int, ...], max_overhead: float):
    out = geom.output_shape(spatial)
    exact = ExactLayout(geom, spatial, out, out)
    if geom.is_pointwise or any(s != 1 for s in geom.stride):
        return exact
    padded = geom.padded_shape(spatial)
    grid = (out[0], *padded[1:])
    if math.prod(grid) > max_overhead * math.prod(out):
        return exact
    strides = [math.prod(padded[d + 1:]) for d in range(geom.nd)]
    offsets = tuple(sum(k * d * s for k, d, s in zip(taps, geom.dilation, strides, strict=True))
                    for taps in itertools.product(*(range(k) for k in geom.kernel)))
    return WideLayout(geom, spatial, grid, out, (padded[0] + 1, *padded[1:]), offsets)


# -- the copies -------------------------------------------------------------------------------------
def _pad(x, geom: ConvGeometry, padded):
    """x (N, C, *spatial) placed at geom's low padding inside zeros (N, C, *padded)."""
    xp = array_namespace(x)
    xpad = xp.zeros((*x.shape[:2], *padded), dtype=x.dtype, device=device(x))
    xpad[(*_ALL2, *geom.interior(x.shape[2:]))] = x
    return xpad


def wide_im2col(x, layout: WideLayout):
    """x (N, C, *spatial) -> cols (N, C, K, length): one contiguous slice copy per kernel tap."""
    xp = array_namespace(x)
    n, c = x.shape[:2]
    flat = xp.reshape(_pad(x, layout.geom, layout.padded), (n, c, math.prod(layout.padded)))
    cols = xp.empty((n, c, len(layout.offsets), layout.length), dtype=x.dtype, device=device(x))
    for t, start in enumerate(layout.offsets):
        cols[:, :, t, :] = flat[:, :, start:start + layout.length]
    return cols


def wide_col2im(cols, layout: WideLayout):
    """The adjoint of :func:`wide_im2col`: cols (N, C, K, length) -> (N, C, *spatial)."""
    xp = array_namespace(cols)
    n, c = cols.shape[:2]
    flat = xp.zeros((n, c, math.prod(layout.padded)), dtype=cols.dtype, device=device(cols))
    for t, start in enumerate(layout.offsets):
        flat[:, :, start:start + layout.length] += cols[:, :, t, :]
    return xp.reshape(flat, (n, c, *layout.padded))[(*_ALL2, *layout.geom.interior(layout.spatial))]


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
        padded = geom.padded_shape(spatial)
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
    col2im_into(x, slice(None), 0, cols, geom, spatial)
    return x


def col2im_into(x, batch: slice, row: int, cols, geom: ConvGeometry, spatial) -> None:
    """Add the fold of cols (m, C, *kernel, *out) into ``x[batch, :, row:row + spatial[0], ...]`` in place.

    Each element receives its terms in kernel-tap order, as in :func:`col2im`: folding row bands of the
    output into one ``x``, the band of the last rows first, adds every element's terms in that same order.
    """
    for taps, out_sl, in_sl, _ in geom.windows(spatial):
        first = slice(in_sl[0].start + row, in_sl[0].stop + row, in_sl[0].step)
        x[(batch, slice(None), first, *in_sl[1:])] += cols[(*_ALL2, *taps, *out_sl)]
