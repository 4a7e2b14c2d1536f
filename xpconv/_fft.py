"""FFT convolution: forward, dL/dx and dL/dW through the Array API ``fft`` extension (``rfftn``/``irfftn``).

Pure Array API: the namespace comes from the arguments.  Any geometry: 1-, 2- and 3-D, padding, groups,
dilation (the kernel spread with zeros) and stride (the stride-1 result subsampled: the work of stride 1).

Along each spatial axis, with the input size ``n``, padding ``(lo, hi)``, dilated kernel extent
``K = d (k - 1) + 1`` and the stride-1 output needed ``L = (out - 1) s + 1``, the transform size is any
``S >= max(n + lo, L + K - 1 - lo, K, L)``, rounded up to a 7-smooth size (:func:`transform_shape`).
x is zero-filled to S at its high end (``rfftn(x, s=S)``) and the kernel spread into S, rolled by ``-lo``:
``kk[(t d - lo) mod S] = w[t]``.  Then the circular cross-correlation ``z[j] = sum_m kk[m] x[(j + m) mod S]``
equals the convolution's stride-1 output at every ``j < L``: each tap reads x where it should and zeros where
the padding is (the size above keeps the two apart).  In the frequency domain, per frequency f,

    Y[f]  = conj(KK[f]) X[f]                 (O, C/G) @ (C/G, m) per group      y  = irfftn(Y)[:L:s]
    DX[f] = KK[f]ᵀ DY[f]                     (C/G, O/G) @ (O/G, m)             dx = irfftn(DX)[:n]
    DKK[f] = sum over the batch of conj(DY[f]) X[f]ᵀ                           dW = roll(irfftn(DKK), lo)[:K:d]

with DY the transform of dY spread to stride s.  Each product is one batched complex GEMM over the F
frequencies and the groups, ``(F, G, O/G, C/G) @ (F, G, C/G, m)``.  The kernel's transform is made once
per call; the batch is processed in chunks of ``m`` samples.

Workspace, in real elements (a complex one counts 2; ``Sp = prod(S)``, ``Fp = prod(S[:-1]) (S[-1] // 2 + 1)``):
``fixed = O (C/G) (2 Sp + 8 Fp)`` for the kernel (its spread and rolled copies, its transform and conjugate;
dL/dW's accumulator and its last product) plus ``m (4 (C + O) Fp + max(C, O) Sp)`` for a chunk of m samples (a
transform and its GEMM layout on one side, the product and its layout on the other, the inverse transform).
A chunk stays under ``max_workspace_bytes`` (and :data:`CHUNK_FACTOR` times ``cache_chunk_bytes``) with the
fixed part; when the fixed part and one sample do not fit, that is a ValueError (FFT does not split a sample), as
for Winograd.  Rounding: the float32 error grows with log(S) and with the whole signal's magnitude
(docs/algorithms.md states the bound the tests hold).
"""
from __future__ import annotations

import math

from array_api_compat import device

from ._engine import itemsize, sample_chunks
from ._geometry import ConvGeometry
from ._namespace import namespace
from ._typing import Array

__all__ = ["transform_shape", "workspace_elements", "fft_forward", "fft_backward", "fft_preferred"]


def _smooth(n: int) -> int:
    """The smallest 2^a 3^b 5^c 7^d >= n: sizes the FFT libraries (pocketfft, cuFFT) transform fastest."""
    while True:
        rest = n
        for p in (2, 3, 5, 7):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return n
        n += 1


def transform_shape(geom: ConvGeometry, spatial) -> tuple[int, ...]:
    """The FFT size S per spatial axis for x's ``spatial`` shape (module docstring)."""
    sizes = []
    for n, k, s, (lo, _), d, out in zip(spatial, geom.kernel, geom.stride, geom.padding, geom.dilation,
                                        geom.output_shape(spatial), strict=True):
        extent, needed = d * (k - 1) + 1, (out - 1) * s + 1
        sizes.append(_smooth(max(n + lo, needed + extent - 1 - lo, extent, needed)))
    return tuple(sizes)


def workspace_elements(c: int, o: int, groups: int, size: tuple[int, ...]) -> tuple[int, int]:
    """(fixed, per sample) workspace in real elements for transform size ``size`` (module docstring)."""
    sp = math.prod(size)
    fp = sp // size[-1] * (size[-1] // 2 + 1)
    return o * (c // groups) * (2 * sp + 8 * fp), 4 * (c + o) * fp + max(c, o) * sp


# The GEMM's columns are the chunk's samples: a cache-sized chunk holds one or two samples of a 64x64 image, and its
# products become matrix-vector ones.  Chunks 4 times the engine's measured 1.1-2x faster (docs/algorithms.md).
CHUNK_FACTOR = 4


def _chunks(what: str, x_shape, w_shape, groups: int, size, item: int, max_workspace_bytes, cache_chunk_bytes,
            memory_limit) -> list[slice]:
    fixed, per_sample = (e * item for e in workspace_elements(x_shape[1], w_shape[0], groups, size))
    return sample_chunks("FFT", what, x_shape, w_shape, per_sample, max_workspace_bytes,
                         None if cache_chunk_bytes is None else cache_chunk_bytes * CHUNK_FACTOR, memory_limit,
                         fixed, f"the kernel's transform (transform size {size}) and one sample need")


def _axes(nd: int) -> tuple[int, ...]:
    return tuple(range(2, 2 + nd))


def _to_gemm(a: Array, groups: int) -> Array:
    """A transform (m, C, *F) -> (F, G, C/G, m), the layout of the batched GEMM."""
    xp = namespace(a)
    m, c = a.shape[:2]
    a = xp.permute_dims(xp.reshape(a, (m, groups, c // groups, -1)), (3, 1, 2, 0))
    return xp.reshape(a, a.shape, copy=True)         # contiguous: a BLAS GEMM per frequency (NumPy: 10x faster)


def _from_gemm(a: Array, freq: tuple[int, ...]) -> Array:
    """The GEMM's (F, G, C/G, m) -> (m, C, *F)."""
    xp = namespace(a)
    _, g, cg, m = a.shape
    return xp.reshape(xp.permute_dims(a, (3, 1, 2, 0)), (m, g * cg, *freq))


def _kernel_transform(weight: Array, geom: ConvGeometry, size: tuple[int, ...]) -> Array:
    """KK: the kernel spread by the dilation into ``size``, rolled by -lo, transformed -> (F, G, O/G, C/G)."""
    xp = namespace(weight)
    o, cg, *kernel = weight.shape
    spread = xp.zeros((o, cg, *size), dtype=weight.dtype, device=device(weight))
    taps = tuple(slice(0, d * (k - 1) + 1, d) for k, d in zip(kernel, geom.dilation, strict=True))
    spread[(slice(None), slice(None), *taps)] = weight
    axes = _axes(geom.nd)
    spread = xp.roll(spread, tuple(-lo for lo, _ in geom.padding), axis=axes)
    kk = xp.fft.rfftn(spread, axes=axes)
    kk = xp.reshape(kk, (geom.groups, o // geom.groups, cg, -1))
    return xp.permute_dims(kk, (3, 0, 1, 2))


def _spread(dy: Array, geom: ConvGeometry, size: tuple[int, ...]) -> Array:
    """dY (m, O, *out) at every stride-th position of zeros (m, O, *size): the stride-1 output's gradient."""
    xp = namespace(dy)
    if all(s == 1 for s in geom.stride):
        return dy
    full = xp.zeros((*dy.shape[:2], *size), dtype=dy.dtype, device=device(dy))
    at = tuple(slice(0, (n - 1) * s + 1, s) for n, s in zip(dy.shape[2:], geom.stride, strict=True))
    full[(slice(None), slice(None), *at)] = dy
    return full


def fft_forward(x: Array, weight: Array, bias: Array | None, geom: ConvGeometry, *,
                max_workspace_bytes: int | None, cache_chunk_bytes: int | None = None,
                memory_limit: int | None = None) -> Array:
    """y (N, O, *out) = conv(x, weight) + bias by FFT, for x (N, C, *spatial) and weight (O, C/G, *kernel)."""
    xp = namespace(x, weight)
    n, _, *spatial = x.shape
    o, groups, axes = weight.shape[0], geom.groups, _axes(geom.nd)
    out = geom.output_shape(spatial)
    size = transform_shape(geom, spatial)
    y = xp.empty((n, o, *out), dtype=x.dtype, device=device(x))
    chunks = _chunks("forward", tuple(x.shape), tuple(weight.shape), groups, size, itemsize(x),
                     max_workspace_bytes, cache_chunk_bytes, memory_limit)
    if chunks:
        kk = xp.conj(_kernel_transform(weight, geom, size))
        keep = tuple(slice(0, (m - 1) * s + 1, s) for m, s in zip(out, geom.stride, strict=True))
        for sl in chunks:
            xf = xp.fft.rfftn(x[sl, ...], s=size, axes=axes)
            yf = _from_gemm(xp.matmul(kk, _to_gemm(xf, groups)), tuple(xf.shape[2:]))
            xf = None                                                              # freed before the inverse
            y[sl, ...] = xp.fft.irfftn(yf, s=size, axes=axes)[(slice(None), slice(None), *keep)]
            yf = None
    if bias is not None:
        y += xp.reshape(bias, (1, o) + (1,) * geom.nd)
    return y


def fft_backward(grad_output: Array, x: Array, weight: Array, geom: ConvGeometry, *, need_input_grad: bool = True,
                 max_workspace_bytes: int | None, cache_chunk_bytes: int | None = None,
                 memory_limit: int | None = None) -> tuple[Array | None, Array]:
    """(dL/dx or None, dL/dW) of y = conv(x, weight) by FFT: each chunk's transforms of x and dY serve both."""
    xp = namespace(grad_output, x, weight)
    spatial = tuple(x.shape[2:])
    o, groups, axes = weight.shape[0], geom.groups, _axes(geom.nd)
    size = transform_shape(geom, spatial)
    chunks = _chunks("backward", tuple(x.shape), tuple(weight.shape), groups, size, itemsize(x),
                     max_workspace_bytes, cache_chunk_bytes, memory_limit)
    if not chunks:                                                                 # an empty batch
        return (xp.zeros(x.shape, dtype=x.dtype, device=device(x)) if need_input_grad else None,
                xp.zeros(weight.shape, dtype=weight.dtype, device=device(weight)))
    grad_input = xp.empty(x.shape, dtype=x.dtype, device=device(x)) if need_input_grad else None
    kkt = xp.matrix_transpose(_kernel_transform(weight, geom, size)) if need_input_grad else None
    inside = tuple(slice(0, m) for m in spatial)
    dkk = None
    for sl in chunks:
        dyf = _to_gemm(xp.fft.rfftn(_spread(grad_output[sl, ...], geom, size), s=size, axes=axes), groups)
        xf = xp.fft.rfftn(x[sl, ...], s=size, axes=axes)
        freq = tuple(xf.shape[2:])
        part = xp.matmul(xp.conj(dyf), xp.matrix_transpose(_to_gemm(xf, groups)))    # (F, G, O/G, C/G)
        xf = None
        if dkk is None:
            dkk = part
        else:
            dkk += part
        part = None
        if kkt is not None and grad_input is not None:
            dxf = _from_gemm(xp.matmul(kkt, dyf), freq)
            dyf = None
            grad_input[sl, ...] = xp.fft.irfftn(dxf, s=size, axes=axes)[(slice(None), slice(None), *inside)]
            dxf = None
        dyf = None
    assert dkk is not None                                                        # chunks is not empty
    spread = xp.fft.irfftn(xp.reshape(xp.permute_dims(dkk, (1, 2, 3, 0)), (o, dkk.shape[3], *freq)), s=size,
                           axes=axes)
    spread = xp.roll(spread, tuple(lo for lo, _ in geom.padding), axis=axes)
    taps = tuple(slice(0, d * (k - 1) + 1, d) for k, d in zip(geom.kernel, geom.dilation, strict=True))
    return grad_input, spread[(slice(None), slice(None), *taps)]


def fft_preferred(geom: ConvGeometry, x_shape) -> bool:
    """Whether FFT measured clearly faster than im2col (forward + backward, NumPy, docs/algorithms.md) for a
    convolution of geometry ``geom`` on x (N, C, *spatial): stride 1, 2-D or 3-D, a kernel of at least 49 taps
    (7x7, 5x5x5) and at most 32 input channels per group.  ``auto`` does not use it yet."""
    return (all(s == 1 for s in geom.stride) and geom.nd >= 2 and math.prod(geom.kernel) >= 49
            and x_shape[1] // geom.groups <= 32)
