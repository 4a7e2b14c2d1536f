"""kn2row along the first spatial axis, im2col along the others: the first kernel axis in the GEMM's rows.

im2col multiplies W (O, C K) by columns (C K, L) holding every kernel tap: with few output channels the GEMM is
thin (O rows) and the columns are K times the input.  Here the taps of the first spatial axis (``kd`` of them)
go into the weight's rows instead (kn2row, Vasudevan et al. 2017, along that axis), and the columns hold only
the other axes' taps (``Kr = K / kd``), for every row of the padded input along the first axis::

    Z   (m, G, kd Og, Dp Lr)  =  Wst (G, kd Og, Cg Kr)  @  cols (m, G, Cg Kr, Dp Lr)
    y[:, :, :, d]  =  sum over j of  Z[:, :, j, :, d + j dd]          (kd shifted slices, d < Dout)

with ``Dp`` the padded length of the first axis, ``Lr`` the output positions of the other axes, ``dd`` the
first axis's dilation and ``Og, Cg`` the channels per group.  The GEMM has ``kd`` times the rows and the columns
are ``kd`` times smaller; it computes ``Dp / Dout`` times the FLOPs of the outputs kept (1.06-1.13x for 3x3
kernels on 16-32 rows), and the shifted sum adds ``kd - 1`` passes over y.  Only for stride 1 along the first axis.

dL/dx is this algorithm's forward pass of dY with the flipped, transposed kernel where the geometry allows it
(stride 1, padding within the kernel's reach), else the engine's fold.  dL/dW is one GEMM per sample with dY
placed at the ``kd`` shifts: ``dWstᵀ = cols @ dZᵀ``, ``dZ (m, G, kd Og, Dp Lr)`` zero outside the shifts, summed
over the batch one sample after the other (chunking changes no bit of it).  The batch goes in chunks of whole
samples under ``max_workspace_bytes`` and ``cache_chunk_bytes`` (:func:`~xpconv._engine.sample_chunks`).

Pure Array API; any rank, padding, dilation and groups.  Rounding: each output is a sum of ``C K / G`` products,
as im2col's, in another order; docs/algorithms.md states the float32 bound the tests hold.
"""
from __future__ import annotations

import math
from itertools import product

from array_api_compat import device

from ._engine import (
    conv_backward_data,
    fitting,
    flipped_geometry,
    flipped_transposed_weight,
    itemsize,
    run_units,
    sample_chunks,
    unit_workers,
)
from ._geometry import ConvGeometry
from ._namespace import namespace
from ._typing import Array

__all__ = ["KN2ROW_MIN_CHANNELS", "kn2row_unsupported", "kn2row_preferred", "kn2row_forward", "kn2row_backward",
           "workspace_bytes"]


def kn2row_unsupported(geom: ConvGeometry) -> str | None:
    """Why kn2row cannot compute ``geom``, or None: it needs stride 1 along the first spatial axis."""
    if geom.stride[0] != 1:
        return f"it needs stride 1 along the first spatial axis, got stride {geom.stride}"
    return None


# kn2row's GEMM contracts over C Kr / G: with the 3 channels of an image it is a K = 9 product, and the suite's
# first layer (3 -> 32 channels) measured 1.5x im2col's time with 2 threads (0.91x with one): auto keeps im2col.
KN2ROW_MIN_CHANNELS = 8


def kn2row_preferred(geom: ConvGeometry, channels: int | None = None) -> bool:
    """``auto``'s measured rule: kn2row for 2-D and 3-D convolutions with stride 1 and more than one tap along the
    first axis, no groups, and at least :data:`KN2ROW_MIN_CHANNELS` input channels (where known).  On NumPy it
    measured 0.63-0.69x im2col's time on the 5x5 and 3-D layers of the suite, 0.92-0.97x on its other 3x3 ones,
    0.86-0.93x (2 threads) and 1.02-1.04x (1 thread) on ResNet-20's; 1-D alike (docs/algorithms.md).  Grouped and
    depthwise ones were not measured."""
    return (geom.nd >= 2 and geom.stride[0] == 1 and geom.kernel[0] > 1 and geom.groups == 1
            and (channels is None or channels >= KN2ROW_MIN_CHANNELS))


def workspace_bytes(geom: ConvGeometry, x_shape, o: int, item: int) -> int:
    """One sample's workspace in either pass, in bytes (kn2row does not split a sample)."""
    return _per_sample(geom, x_shape[2:], x_shape[1], o) * item


def _sizes(geom: ConvGeometry, spatial) -> tuple[int, int, tuple[int, ...], int]:
    """(Dp: padded length of the first axis, Dout, the other axes' output shape, Kr: their kernel taps)."""
    lo, hi = geom.padding[0]
    out = geom.output_shape(spatial)
    return spatial[0] + lo + hi, out[0], tuple(out[1:]), math.prod(geom.kernel[1:])


def _per_sample(geom: ConvGeometry, spatial, c: int, o: int) -> int:
    """Workspace elements of one sample in either pass, an upper bound: the padded x, the columns, Z and the
    shifted sums (or dZ), the per-sample dW product, and the stacked weight and its gradient (counted per sample,
    so a chunk of one sample holds them)."""
    dp, _, out_rest, kr = _sizes(geom, spatial)
    lr = math.prod(out_rest)
    kd = geom.kernel[0]
    padded = c * math.prod(geom.padded_shape(spatial))
    return padded + c * kr * dp * lr + 2 * kd * o * dp * lr + 3 * kd * o * (c // geom.groups) * kr


def _stacked_weight(weight: Array, groups: int) -> Array:
    """(O, Cg, kd, *krest) -> (G, kd Og, Cg Kr): the first axis's taps stacked in the rows, a contiguous copy."""
    xp = namespace(weight)
    o, cg, kd, *krest = weight.shape
    w = xp.reshape(weight, (groups, o // groups, cg, kd, math.prod(krest)))
    w = xp.permute_dims(w, (0, 3, 1, 2, 4))                                    # (G, kd, Og, Cg, Kr)
    return xp.reshape(w, (groups, kd * (o // groups), cg * math.prod(krest)), copy=True)


def _columns(x: Array, geom: ConvGeometry) -> Array:
    """x (m, C, *spatial) -> (m, G, Cg Kr, Dp Lr): per padded row of the first axis, the other axes' taps."""
    xp = namespace(x)
    m, c, *spatial = x.shape
    dp, _, out_rest, kr = _sizes(geom, spatial)
    if geom.is_padded:
        xpad = xp.zeros((m, c, *geom.padded_shape(spatial)), dtype=x.dtype, device=device(x))
        xpad[(slice(None), slice(None), *geom.interior(spatial))] = x
    else:
        xpad = x
    per_axis = [[slice(t * d, t * d + s * (n - 1) + 1, s) for t in range(k)]
                for k, s, d, n in zip(geom.kernel[1:], geom.stride[1:], geom.dilation[1:], out_rest, strict=True)]
    taps = [xpad[(slice(None), slice(None), slice(None), *window)] for window in product(*per_axis)]
    cols = xp.stack(taps, axis=2) if len(taps) > 1 else xp.reshape(taps[0], (m, c, 1, *taps[0].shape[2:]))
    g = geom.groups
    return xp.reshape(cols, (m, g, (c // g) * kr, dp * math.prod(out_rest)))   # (m, C, Kr, Dp, *out_rest)


def _shift_sum(z: Array, geom: ConvGeometry, o: int, dout: int, dp: int) -> Array:
    """Z (m, G, kd Og, Dp Lr) -> y (m, O, Dout Lr): the sum of the kd shifted slices, in the taps' order."""
    xp = namespace(z)
    m, g = z.shape[:2]
    kd, dd = geom.kernel[0], geom.dilation[0]
    z = xp.reshape(z, (m, g, kd, o // g, dp, z.shape[-1] // dp))             # (m, G, kd, Og, Dp, Lr)
    y = z[:, :, 0, :, 0:dout, :]
    for j in range(1, kd):
        y = y + z[:, :, j, :, j * dd:j * dd + dout, :]
    return xp.reshape(y, (m, o, -1))


def _shifted_grad(dy: Array, geom: ConvGeometry, dp: int) -> Array:
    """dY (m, O, Dout, *out_rest) -> dZ (m, G, kd Og, Dp Lr): dY at each of the kd shifts, zeros elsewhere."""
    xp = namespace(dy)
    m, o, dout = dy.shape[:3]
    g, kd, dd = geom.groups, geom.kernel[0], geom.dilation[0]
    lr = math.prod(dy.shape[3:])
    dz = xp.zeros((m, g, kd, o // g, dp, lr), dtype=dy.dtype, device=device(dy))
    dy = xp.reshape(dy, (m, g, o // g, dout, lr))
    for j in range(kd):
        dz[:, :, j, :, j * dd:j * dd + dout, :] = dy
    return xp.reshape(dz, (m, g, kd * (o // g), dp * lr))


def kn2row_forward(x: Array, weight: Array, bias: Array | None, geom: ConvGeometry, *,
                   max_workspace_bytes: int | None, cache_chunk_bytes: int | None = None,
                   memory_limit: int | None = None, unit_map=None) -> Array:
    """y (N, O, *out) = conv(x, weight) + bias, the first kernel axis in the GEMM's rows (module docstring);
    ``unit_map``: the backend's :attr:`~xpconv.backends.Backend.unit_map`, the threads the chunks may run on."""
    xp = namespace(x, weight)
    n, c, *spatial = x.shape
    o = weight.shape[0]
    dp, dout, out_rest, _ = _sizes(geom, spatial)
    out = (dout, *out_rest)
    wst = _stacked_weight(weight, geom.groups)
    y = xp.empty((n, o, *out), dtype=x.dtype, device=device(x))

    def chunk(sl: slice) -> None:
        z = xp.matmul(wst, _columns(x[sl, ...], geom))                       # (m, G, kd Og, Dp Lr)
        y[sl, ...] = xp.reshape(_shift_sum(z, geom, o, dout, dp), (z.shape[0], o, *out))

    per_sample = _per_sample(geom, spatial, c, o) * itemsize(x)
    threads = fitting(unit_map, per_sample, max_workspace_bytes)
    chunks = sample_chunks("kn2row", "forward", tuple(x.shape), tuple(weight.shape), per_sample, max_workspace_bytes,
                           cache_chunk_bytes, memory_limit, workers=unit_workers(threads))
    for _ in run_units(threads, chunk, chunks):
        pass
    if bias is not None:
        y += xp.reshape(bias, (1, o, *(1,) * geom.nd))
    return y


def kn2row_backward(grad_output: Array, x: Array, weight: Array, geom: ConvGeometry, *,
                    need_input_grad: bool = True, max_workspace_bytes: int | None,
                    cache_chunk_bytes: int | None = None, memory_limit: int | None = None, unit_map=None,
                    ) -> tuple[Array | None, Array]:
    """(dL/dx or None, dL/dW) of y = conv(x, weight): dL/dx by kn2row's forward of dY with the flipped, transposed
    kernel (or the engine's fold where the geometry does not allow it), dL/dW by the shifted-dY GEMMs, added in
    the chunks' order whether they run on ``unit_map``'s threads or not."""
    xp = namespace(grad_output, x, weight)
    c, *spatial = x.shape[1:]
    o, g = weight.shape[0], geom.groups
    policy = {"max_workspace_bytes": max_workspace_bytes, "cache_chunk_bytes": cache_chunk_bytes,
              "memory_limit": memory_limit, "unit_map": unit_map}
    grad_input = None
    if need_input_grad:
        flipped = flipped_geometry(geom)
        grad_input = (kn2row_forward(grad_output, flipped_transposed_weight(weight, g), None, flipped, **policy)
                      if flipped is not None else conv_backward_data(grad_output, weight, geom, spatial, **policy))
    dp, _, _, kr = _sizes(geom, spatial)
    kd, cg, og = geom.kernel[0], c // g, o // g
    grad_stacked = None                                                       # (G, Cg Kr, kd Og): dWstᵀ

    def chunk(sl: slice) -> Array:
        dz = _shifted_grad(grad_output[sl, ...], geom, dp)                   # (m, G, kd Og, Dp Lr)
        return xp.matmul(_columns(x[sl, ...], geom), xp.matrix_transpose(dz))    # (m, G, Cg Kr, kd Og)

    per_sample = _per_sample(geom, spatial, c, o) * itemsize(x)
    threads = fitting(unit_map, per_sample, max_workspace_bytes)
    chunks = sample_chunks("kn2row", "weight gradient", tuple(x.shape), tuple(weight.shape), per_sample,
                           max_workspace_bytes, cache_chunk_bytes, memory_limit, workers=unit_workers(threads))
    for partial in run_units(threads, chunk, chunks):
        if grad_stacked is not None:
            partial[0, ...] += grad_stacked
        grad_stacked = xp.sum(partial, axis=0)
        partial = None                                                        # freed before the next chunk's
    if grad_stacked is None:                                                  # an empty batch
        return grad_input, xp.zeros(weight.shape, dtype=weight.dtype, device=device(weight))
    dw = xp.reshape(grad_stacked, (g, cg, kr, kd, og))                        # (G, Cg, Kr, kd, Og)
    dw = xp.permute_dims(dw, (0, 4, 1, 3, 2))                                 # (G, Og, Cg, kd, Kr)
    return grad_input, xp.reshape(dw, weight.shape, copy=True)
