"""Direct depthwise convolution: a multiply-accumulate per kernel tap, no columns and no GEMM.

For a depthwise convolution (one input channel per group, C // groups == 1, any channel multiplier
``M = O // C``) im2col builds a column buffer K times the input only to feed C tiny GEMMs.  Here each of
the K kernel taps is one broadcast multiply-add over a strided slice of the padded input instead::

    y[:, c, m, *out]  +=  w[c, m, tap] * xpad[:, c, None, tap_d * dilation_d + stride_d * out_d]

dL/dx is, for stride 1 and no multiplier, the same direct convolution of dY with the flipped kernel;
otherwise it adds ``w[c, m, tap] * dy`` (summed over m) back into the same slices of a padded zero buffer (the
adjoint of the gather).  dL/dW[c, m, tap] is the sum over the batch and the output positions of
``dy * xpad[tap slice]``.  Pure Array API: the namespace comes from the arguments; any stride, padding,
dilation and rank (1-D, 2-D, 3-D).

Shapes::

    x     (N, C, *spatial)        weight  (O, 1, *kernel) = (C * M, 1, *kernel)      y  (N, O, *out)
    xpad  (n, C, 1, *padded)      a chunk of n samples           w  (1, C, M, K) after a reshape
    acc   (n, C, M, *out)         one chunk's output (or dY) with its multiplier axis

The work is done in steps whose workspace stays under ``max_workspace_bytes`` (and a quarter of
``cache_chunk_bytes`` where given): chunks of samples from the engine's :func:`~xpconv._engine.batch_chunks`,
or groups of one sample's channels where a sample is over that budget; a cap below one channel of one sample is
a ValueError.  Rounding: each output is a sum of K products accumulated in
the data's dtype, like the engine's GEMM; docs/algorithms.md states the float32 bound the tests hold.
"""
from __future__ import annotations

import math
from itertools import product

from array_api_compat import device

from ._engine import (
    batch_chunks,
    check_max_workspace_bytes,
    check_memory,
    flipped_geometry,
    flipped_transposed_weight,
    format_bytes,
    itemsize,
)
from ._geometry import ConvGeometry
from ._namespace import namespace
from ._typing import Array

__all__ = ["direct_unsupported", "direct_forward", "direct_backward"]


def direct_unsupported(geom: ConvGeometry, channels: int | None = None) -> str | None:
    """Why the direct algorithm cannot compute geometry ``geom`` (with ``channels`` input channels, where
    known), or None when it can: it is depthwise only, one input channel per group."""
    if channels is not None and channels != geom.groups:
        return (f"it is depthwise only: one input channel per group (C // groups == 1), got {channels} channels "
                f"in {geom.groups} group(s)")
    return None


def _taps(geom: ConvGeometry, out: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """The strided slice of the padded input each kernel tap reads, one per tap in the weight's order."""
    per_axis = [[slice(t * d, t * d + s * (o - 1) + 1, s) for t in range(k)]
                for k, s, d, o in zip(geom.kernel, geom.stride, geom.dilation, out, strict=True)]
    return [tuple(p) for p in product(*per_axis)]


def _padded(x: Array, geom: ConvGeometry) -> Array:
    """x (n, C, *spatial) -> (n, C, 1, *padded): x inside zeros (x itself, reshaped, when unpadded)."""
    xp = namespace(x)
    n, c, *spatial = x.shape
    if not geom.is_padded:
        return xp.reshape(x, (n, c, 1, *spatial))
    xpad = xp.zeros((n, c, 1, *geom.padded_shape(spatial)), dtype=x.dtype, device=device(x))
    xpad[(slice(None), slice(None), 0, *geom.interior(spatial))] = x
    return xpad


def _per_channel(m: int, geom: ConvGeometry, spatial) -> int:
    """Workspace elements per sample and input channel, an upper bound for every pass: two padded inputs
    (x and dL/dx), a tap's slice, and two (M, *out) temporaries beside the (M, *out) accumulator."""
    out = math.prod(geom.output_shape(spatial))
    return 2 * math.prod(geom.padded_shape(spatial)) + out + 3 * m * out


def _units(what: str, x_shape, w_shape, geom: ConvGeometry, size: int, max_workspace_bytes, cache_chunk_bytes,
           memory_limit) -> list[tuple[slice, slice]]:
    """(samples, channels) of each step: chunks of whole samples, or, where one sample's workspace is over the
    budget, channel groups of one sample (the channels of a depthwise convolution are independent).

    The budget is ``max_workspace_bytes`` and, where given, a quarter of ``cache_chunk_bytes``: NumPy's
    multiply-adds ran 5-10x faster per sample with an accumulator under 1 MiB than with 2 MiB or more
    (2 MiB L2 per core here; docs/algorithms.md)."""
    cap = check_max_workspace_bytes(max_workspace_bytes)
    n, c = x_shape[:2]
    per_channel = _per_channel(w_shape[0] // c, geom, x_shape[2:]) * size
    if cap is not None and per_channel > cap:
        raise ValueError(f"max_workspace_bytes={cap} is too small for the direct {what} of x {tuple(x_shape)} with "
                         f"weight {tuple(w_shape)}: one channel of one sample needs {format_bytes(per_channel)} "
                         f"({per_channel} bytes); raise the cap, pass None, or use algorithm='im2col'")
    cache = None if cache_chunk_bytes is None else max(cache_chunk_bytes // 4, 1)
    budget = min(b for b in (cap, cache, per_channel * c) if b is not None)
    if per_channel * c <= budget:
        units = [(sl, slice(0, c)) for sl in batch_chunks(n, per_channel * c, cap, cache)]
    else:
        units = [(slice(i, i + 1), cs) for i in range(n) for cs in batch_chunks(c, per_channel, cap, cache)]
    biggest = max(((b.stop - b.start) * (cs.stop - cs.start) for b, cs in units), default=0) * per_channel
    check_memory(f"the direct {what}", x_shape, w_shape, biggest, memory_limit)
    return units


def _weight(weight: Array, c: int) -> Array:
    """weight (C * M, 1, *kernel) -> (1, C, M, K): tap ``t`` is ``w[..., t]``, broadcast over (n, C, M)."""
    xp = namespace(weight)
    return xp.reshape(weight, (1, c, weight.shape[0] // c, math.prod(weight.shape[2:])))


def _tap_weight(w: Array, t: int, nd: int) -> Array:
    """(1, C, M, 1, ..., 1): tap ``t``'s weights, broadcast over the output positions."""
    xp = namespace(w)
    return xp.reshape(w[..., t], (*w.shape[:3], *(1,) * nd))


def _sum_multiplier(a: Array) -> Array:
    """(n, C, M, *out) -> (n, C, *out), summed over the multiplier (a reshape when M == 1)."""
    xp = namespace(a)
    return xp.reshape(a, (*a.shape[:2], *a.shape[3:])) if a.shape[2] == 1 else xp.sum(a, axis=2)


def direct_forward(x: Array, weight: Array, bias: Array | None, geom: ConvGeometry, *,
                   max_workspace_bytes: int | None, cache_chunk_bytes: int | None = None,
                   memory_limit: int | None = None) -> Array:
    """y (N, O, *out) = conv(x, weight) + bias by one multiply-add per kernel tap; depthwise ``geom`` only."""
    xp = namespace(x, weight)
    n, c, *spatial = x.shape
    o, nd = weight.shape[0], geom.nd
    out = geom.output_shape(spatial)
    mult = o // c
    w = _weight(weight, c)
    taps = _taps(geom, out)
    y = xp.empty((n, o, *out), dtype=x.dtype, device=device(x))
    for sl, cs in _units("forward", tuple(x.shape), tuple(weight.shape), geom, itemsize(x), max_workspace_bytes,
                         cache_chunk_bytes, memory_limit):
        wc = w[:, cs, ...]
        xpad = _padded(x[sl, cs, ...], geom)
        acc = _tap_weight(wc, 0, nd) * xpad[(slice(None), slice(None), slice(None), *taps[0])]  # (n, C, M, *out)
        for t, window in enumerate(taps[1:], start=1):
            acc += _tap_weight(wc, t, nd) * xpad[(slice(None), slice(None), slice(None), *window)]
        y[sl, cs.start * mult:cs.stop * mult, ...] = xp.reshape(acc, (acc.shape[0], -1, *out))
        xpad = acc = None                                                          # freed before the next chunk's
    if bias is not None:
        y += xp.reshape(bias, (1, o, *(1,) * nd))
    return y


def direct_backward(grad_output: Array, x: Array, weight: Array, geom: ConvGeometry, *,
                    need_input_grad: bool = True, max_workspace_bytes: int | None,
                    cache_chunk_bytes: int | None = None, memory_limit: int | None = None,
                    ) -> tuple[Array | None, Array]:
    """(dL/dx or None, dL/dW) of y = conv(x, weight) by the direct algorithm: dL/dx scatter-added through the
    forward's tap slices, dL/dW one product and sum per tap."""
    xp = namespace(grad_output, x, weight)
    c, spatial = x.shape[1], x.shape[2:]
    o, nd = weight.shape[0], geom.nd
    out = tuple(grad_output.shape[2:])
    w = _weight(weight, c)
    taps = _taps(geom, out)
    space = tuple(range(3, 3 + nd))
    mult = o // c
    flipped = flipped_geometry(geom) if mult == 1 else None
    grad_input = None
    if need_input_grad and flipped is not None:       # stride 1, no multiplier: a direct forward pass of dY
        grad_input = direct_forward(grad_output, flipped_transposed_weight(weight, geom.groups), None, flipped,
                                    max_workspace_bytes=max_workspace_bytes, cache_chunk_bytes=cache_chunk_bytes,
                                    memory_limit=memory_limit)
    scattered = xp.empty(x.shape, dtype=x.dtype, device=device(x)) if need_input_grad and flipped is None else None
    dw = xp.zeros(w.shape[1:], dtype=weight.dtype, device=device(weight))                 # (C, M, K)
    for sl, cs in _units("backward", tuple(x.shape), tuple(weight.shape), geom, itemsize(x), max_workspace_bytes,
                         cache_chunk_bytes, memory_limit):
        wc = w[:, cs, ...]
        dy = grad_output[sl, cs.start * mult:cs.stop * mult, ...]
        dy = xp.reshape(dy, (dy.shape[0], cs.stop - cs.start, mult, *out))
        xpad = _padded(x[sl, cs, ...], geom)
        parts = [xp.sum(dy * xpad[(slice(None), slice(None), slice(None), *window)], axis=(0, *space))
                 for window in taps]
        dw[cs, ...] += xp.stack(parts, axis=-1)
        if scattered is not None:
            dpad = xp.zeros(xpad.shape[:2] + xpad.shape[3:], dtype=x.dtype, device=device(x))  # (n, C, *padded)
            for t, window in enumerate(taps):
                dpad[(slice(None), slice(None), *window)] += _sum_multiplier(_tap_weight(wc, t, nd) * dy)
            scattered[sl, cs, ...] = dpad[(slice(None), slice(None), *geom.interior(spatial))]
        dy = xpad = None                                                           # freed before the next chunk's
    return (grad_input if scattered is None else scattered), xp.reshape(dw, weight.shape)
