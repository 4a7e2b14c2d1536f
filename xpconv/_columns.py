"""Convolution geometry and the column buffers: output sizes, im2col / col2im and the wide layout.

Pure Array API, like the engine that uses them (:mod:`xpconv._engine`).  Shapes
(``K = prod(kernel)``):
    x       (N, C, *spatial)
    cols    (N, C, *kernel, *out)   :func:`im2col`: any stride; padding copied in once
    wide    (N, C, K, length)       :func:`wide_im2col`: stride 1, one contiguous slice per kernel tap
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache

from array_api_compat import array_namespace, device

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


def has_extra_columns(layout: WideLayout | None) -> bool:
    """Whether a layout's grid holds columns beyond the output (not in 1-D, nor with a kernel of width 1
    on the trailing axes, nor for im2col's exact layout, None)."""
    return layout is not None and layout.grid != layout.out


def wide_layout(geom: ConvGeometry, spatial) -> WideLayout | None:
    """The wide layout for stride-1 convolutions that need an im2col, when the extra columns cost at
    most ``WIDE_MAX_OVERHEAD`` times the exact ones; else None (im2col's exact layout is used)."""
    return _wide_layout(geom, tuple(spatial), WIDE_MAX_OVERHEAD)


@lru_cache(maxsize=256)
def _wide_layout(geom: ConvGeometry, spatial: tuple[int, ...], max_overhead: float) -> WideLayout | None:
    if geom.is_pointwise or any(s != 1 for s in geom.stride):
        return None
    padded = [s + lo + hi for s, (lo, hi) in zip(spatial, geom.padding)]
    out = geom.output_shape(spatial)
    grid = (out[0], *padded[1:])
    if math.prod(grid) > max_overhead * math.prod(out):
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
