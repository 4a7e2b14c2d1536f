"""Convolution geometry: kernel, stride, padding, dilation and groups, output sizes and kernel-tap windows.

Plain Python, no arrays.  :func:`make_geometry` validates the hyper-parameters as PyTorch's
convolutions take them and is the one way the op layer and the layers build a :class:`ConvGeometry`.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property, lru_cache

from .validation import int_tuple, positive_int

__all__ = ["ConvGeometry", "conv_output_size", "make_geometry"]


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
                                                       self.dilation, strict=True))

    def padded_shape(self, spatial) -> tuple[int, ...]:
        """The spatial shape of x once padded on both sides."""
        return tuple(s + lo + hi for s, (lo, hi) in zip(spatial, self.padding, strict=True))

    def interior(self, spatial) -> tuple[slice, ...]:
        """Where x lies inside its padded copy."""
        return tuple(slice(lo, lo + s) for s, (lo, _) in zip(spatial, self.padding, strict=True))

    @property
    def is_padded(self) -> bool:
        return any(p != (0, 0) for p in self.padding)

    @cached_property
    def is_pointwise(self) -> bool:
        """True when cols is just x: 1x..x1 kernel, stride 1, no padding (no im2col needed)."""
        return all(k == 1 and s == 1 and p == (0, 0)
                   for k, s, p in zip(self.kernel, self.stride, self.padding, strict=True))

    def windows(self, spatial):
        """Per kernel tap: (tap index, output slices, input slices, covers the whole output); cached."""
        return _windows(self, tuple(spatial))

    def im2col_elements(self, channels: int, spatial) -> int:
        """Elements :func:`im2col` allocates per sample: the columns, plus a padded copy of x if padded."""
        if self.is_pointwise:
            return 0
        extra = math.prod(self.padded_shape(spatial)) if self.is_padded else 0
        return channels * (math.prod(self.kernel) * math.prod(self.output_shape(spatial)) + extra)


@lru_cache(maxsize=256)
def _windows(geom: ConvGeometry, spatial: tuple[int, ...]) -> tuple:
    out = geom.output_shape(spatial)
    per_axis = [
        [(k, _window(size, o, k, s, p[0], d)) for k in range(kk)]
        for size, o, kk, s, p, d in zip(spatial, out, geom.kernel, geom.stride, geom.padding, geom.dilation,
                                        strict=True)
    ]
    windows = []
    for taps in itertools.product(*per_axis):
        if any(w is None for _, w in taps):
            continue
        out_sl = tuple(w[0] for _, w in taps)
        full = all(sl.stop - sl.start == o for sl, o in zip(out_sl, out, strict=True))
        windows.append((tuple(k for k, _ in taps), out_sl, tuple(w[1] for _, w in taps), full))
    return tuple(windows)


def make_geometry(kernel, stride, padding, dilation, groups) -> ConvGeometry:
    """Validate the hyper-parameters and turn them into a :class:`ConvGeometry`.

    ``kernel``: a tuple of ``nd`` kernel sizes; ``stride``, ``dilation``: an int or ``nd`` ints >= 1;
    ``padding``: an int or ``nd`` ints >= 0 (symmetric per axis), "valid" or "same" (stride 1 only; an odd
    total goes to the high side, as in PyTorch); ``groups``: a positive int.
    """
    nd = len(kernel)
    kernel = int_tuple("kernel_size", tuple(kernel), nd, 1)
    stride = int_tuple("stride", stride, nd, 1)
    dilation = int_tuple("dilation", dilation, nd, 1)
    groups = positive_int("groups", groups)
    if isinstance(padding, str):
        if padding == "valid":
            pads = ((0, 0),) * nd
        elif padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"padding='same' needs stride 1 (as in PyTorch), got stride={stride}")
            totals = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
            pads = tuple((t // 2, t - t // 2) for t in totals)
        else:
            raise ValueError(f"padding must be an int, a tuple of ints, 'valid' or 'same', got {padding!r}")
    else:
        pads = tuple((p, p) for p in int_tuple("padding", padding, nd, 0))
    return ConvGeometry(kernel, stride, pads, dilation, groups)
