"""Winograd convolution F(2x2, 3x3) (Lavin & Gray, 2016) for 2-D, stride-1, dilation-1, 3x3 kernels.

Pure Array API: the namespace comes from the arguments.  The output is cut into 2x2 tiles; each reads a
4x4 tile of the padded input (tiles overlap by 2).  With the transforms

    V = Bᵀ d B   (input tile d, 4x4)      U = G g Gᵀ   (kernel g, 3x3 -> 4x4)      y = Aᵀ M A   (M 4x4 -> 2x2)

the convolution is ``M[ξ, ν] = sum_c U[ξ, ν, o, c] V[ξ, ν, c, tile]``: one batched GEMM over the 16 tile
positions, ``(16, G, O/G, C/G) @ (16, G, C/G, tiles)``, with the batch inside the tiles (one GEMM per chunk, as
the engine's ``batch_inner`` policy does).  That is 16 multiplications per 4 outputs instead of 36.

Shapes::

    x       (N, C, H, W)          weight  (O, C // G, 3, 3)          y  (N, O, Ho, Wo)
    xpad    (C, m, 2*th + 2, 2*tw + 2)   a chunk of m samples, padded, th = ceil(Ho / 2), tw = ceil(Wo / 2)
    V       (4, 4, C, m, th, tw)  U  (4, 4, O, C // G)          M  (4, 4, O, m, th, tw)

The input transform is a few elementwise passes over strided slices of the padded input (rows, then
columns), as im2col gathers its taps; the kernel transform one GEMM with G ⊗ G; the output transform
elementwise passes again.  dL/dx is the Winograd convolution of dY with the flipped, transposed kernel
(padding ``2 - p``: a negative one crops dY).  dL/dW is the adjoint of the same map:
``dU[ξ, ν] = dM[ξ, ν] · V[ξ, ν]ᵀ`` with ``dM = A dY Aᵀ`` per tile, then ``dW = Gᵀ dU G``; the GEMM
``(16, G, O/G, tiles) @ (16, G, tiles, C/G)`` sums over the tiles.

The batch is processed in chunks whose workspace stays under ``max_workspace_bytes`` (and
``cache_chunk_bytes`` where given), as in :mod:`xpconv._engine`; Winograd does not split a sample into row bands,
so a sample over the cap is a ValueError.  Rounding: the transforms hold only 0, ±1 and ±½; the float32 error
measured at im2col's level, and docs/algorithms.md states the bound the tests hold it to.
"""
from __future__ import annotations

from functools import lru_cache

from array_api_compat import array_namespace, device

from ._engine import (
    batch_chunks,
    check_max_workspace_bytes,
    check_memory,
    flipped_transposed_weight,
    format_bytes,
    itemsize,
)
from ._geometry import ConvGeometry
from ._typing import Array

__all__ = ["winograd_unsupported", "winograd_forward", "winograd_backward"]

# G (4x3) of F(2x2, 3x3): U = G g Gᵀ
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def winograd_unsupported(geom: ConvGeometry) -> str | None:
    """Why F(2x2, 3x3) cannot compute a convolution of geometry ``geom``, or None when it can."""
    if geom.nd != 2:
        return f"it is 2-D only (this convolution is {geom.nd}-D)"
    if geom.kernel != (3, 3):
        return f"it needs a 3x3 kernel (got {geom.kernel[0]}x{geom.kernel[1]})"
    if geom.stride != (1, 1):
        return f"it needs stride 1 (got {geom.stride})"
    if geom.dilation != (1, 1):
        return f"it needs dilation 1 (got {geom.dilation})"
    return None


def _tiles(out: tuple[int, ...]) -> tuple[int, int]:
    return (out[0] + 1) // 2, (out[1] + 1) // 2


def _padded(x: Array, pads, tiles: tuple[int, int]) -> Array:
    """x (m, C, H, W) -> (C, m, 2*th + 2, 2*tw + 2): x placed at the low padding inside zeros; a negative
    padding crops x's low (or high) end."""
    xp = array_namespace(x)
    m, c, *spatial = x.shape
    size = tuple(2 * t + 2 for t in tiles)
    src, dst = [], []
    for n, (lo, _), p in zip(spatial, pads, size, strict=True):
        a = max(-lo, 0)                                  # first row of x used
        b = min(n, p - lo)                               # one past the last
        src.append(slice(a, max(a, b)))
        dst.append(slice(a + lo, a + lo + max(b - a, 0)))
    xpad = xp.zeros((c, m, *size), dtype=x.dtype, device=device(x))
    xpad[(slice(None), slice(None), *dst)] = xp.permute_dims(x[(slice(None), slice(None), *src)], (1, 0, 2, 3))
    return xpad


def _input_transform(xpad: Array, tiles: tuple[int, int]) -> Array:
    """V = Bᵀ d B for every 4x4 tile d of xpad (C, m, 2*th + 2, 2*tw + 2) -> (4, 4, C, m, th, tw)."""
    xp = array_namespace(xpad)
    th, tw = tiles
    rows = [xpad[:, :, i:i + 2 * th - 1:2, :] for i in range(4)]                     # (C, m, th, 2*tw + 2)
    v = xp.empty((4, 4, *xpad.shape[:2], th, tw), dtype=xpad.dtype, device=device(xpad))
    for a, t in enumerate(_bt(rows)):
        for b, tile in enumerate(_bt([t[..., j:j + 2 * tw - 1:2] for j in range(4)])):
            v[a, b, ...] = tile
    return v


def _bt(d):
    """Bᵀ applied along a list of 4 arrays: Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]."""
    return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]


def _at(m):
    """Aᵀ applied along a list of 4 arrays: Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]."""
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def _a(dy):
    """A (the adjoint of Aᵀ) applied along a list of 2 arrays -> 4."""
    return [dy[0], dy[0] + dy[1], dy[0] - dy[1], -dy[1]]


# G ⊗ G (16x9): U = G g Gᵀ flattened, row-major, is (G ⊗ G) times g flattened
_GG = tuple(tuple(_G[i][k] * _G[j][m] for k in range(3) for m in range(3)) for i in range(4) for j in range(4))


def _gg(xp, like: Array) -> Array:
    """G ⊗ G in ``like``'s dtype on its device, made once per (library, device, dtype): no upload per call."""
    return _device_gg(xp, device(like), like.dtype)


@lru_cache(maxsize=16)
def _device_gg(xp, dev, dtype) -> Array:
    return xp.asarray(_GG, dtype=dtype, device=dev)


def _kernel_transform(weight: Array, groups: int) -> Array:
    """U = G g Gᵀ for every kernel, as one GEMM (G ⊗ G) · gᵀ: weight (O, C/G, 3, 3) -> (16, G, O/G, C/G)."""
    xp = array_namespace(weight)
    o, cg = weight.shape[:2]
    u = xp.matmul(_gg(xp, weight), xp.matrix_transpose(xp.reshape(weight, (o * cg, 9))))    # (16, O*C/G)
    return xp.reshape(u, (16, groups, o // groups, cg))


def _output_transform(mm: Array, out: tuple[int, ...]) -> Array:
    """y = Aᵀ M A per tile: M (4, 4, O, m, th, tw) -> y (m, O, Ho, Wo)."""
    xp = array_namespace(mm)
    _, _, o, m, th, tw = mm.shape
    full = xp.empty((m, o, 2 * th, 2 * tw), dtype=mm.dtype, device=device(mm))
    for r, z in enumerate(_at([mm[i, ...] for i in range(4)])):                  # z (4, O, m, th, tw)
        for s, val in enumerate(_at([z[j, ...] for j in range(4)])):
            full[:, :, r::2, s::2] = xp.permute_dims(val, (1, 0, 2, 3))
    return full[:, :, :out[0], :out[1]]


def _output_adjoint(dy: Array, tiles: tuple[int, int]) -> Array:
    """dM = A dY Aᵀ per 2x2 tile: dy (m, O, Ho, Wo) -> (4, 4, O, m, th, tw), zero beyond the output."""
    xp = array_namespace(dy)
    m, o, ho, wo = dy.shape
    th, tw = tiles
    full = xp.zeros((o, m, 2 * th, 2 * tw), dtype=dy.dtype, device=device(dy))
    full[:, :, :ho, :wo] = xp.permute_dims(dy, (1, 0, 2, 3))
    dm = xp.empty((4, 4, o, m, th, tw), dtype=dy.dtype, device=device(dy))
    for a, t in enumerate(_a([full[:, :, r::2, :] for r in range(2)])):           # (O, m, th, 2*tw)
        for b, tile in enumerate(_a([t[..., s::2] for s in range(2)])):
            dm[a, b, ...] = tile
    return dm


def _per_sample(c: int, o: int, tiles: tuple[int, int]) -> int:
    """Workspace elements per sample, an upper bound for both passes: padded x, its row pass, V and a column
    pass's temporaries; then with V, M and the output pass (forward) or dY's copy, its row pass and dM (dL/dW)."""
    th, tw = tiles
    t = th * tw
    return c * ((2 * th + 2) * (2 * tw + 2) + 4 * th * (2 * tw + 2) + 20 * t) + 30 * o * t


def _chunks(what: str, x_shape, w_shape, per_sample: int, itemsize: int, max_workspace_bytes,
            cache_chunk_bytes, memory_limit) -> list[slice]:
    cap = check_max_workspace_bytes(max_workspace_bytes)
    if cap is not None and per_sample * itemsize > cap:
        raise ValueError(f"max_workspace_bytes={cap} is too small for Winograd's {what} of x {tuple(x_shape)} with "
                         f"weight {tuple(w_shape)}: one sample needs {format_bytes(per_sample * itemsize)} "
                         f"({per_sample * itemsize} bytes) and Winograd does not split a sample; raise the cap, "
                         "pass None, or use algorithm='im2col'")
    chunks = batch_chunks(x_shape[0], per_sample * itemsize, cap, cache_chunk_bytes)
    biggest = max((sl.stop - sl.start for sl in chunks), default=0) * per_sample * itemsize
    check_memory(f"Winograd's {what}", x_shape, w_shape, biggest, memory_limit)
    return chunks


def winograd_forward(x: Array, weight: Array, bias: Array | None, geom: ConvGeometry, *,
                     max_workspace_bytes: int | None, cache_chunk_bytes: int | None = None,
                     memory_limit: int | None = None) -> Array:
    """y (N, O, Ho, Wo) = conv(x, weight) + bias by F(2x2, 3x3); ``geom`` must pass :func:`winograd_unsupported`."""
    xp = array_namespace(x, weight)
    n, c, *spatial = x.shape
    o, groups = weight.shape[0], geom.groups
    out = geom.output_shape(spatial)
    tiles = _tiles(out)
    u = _kernel_transform(weight, groups)
    y = xp.empty((n, o, *out), dtype=x.dtype, device=device(x))
    for sl in _chunks("forward", tuple(x.shape), tuple(weight.shape), _per_sample(c, o, tiles), itemsize(x),
                      max_workspace_bytes, cache_chunk_bytes, memory_limit):
        m = sl.stop - sl.start
        v = _input_transform(_padded(x[sl, ...], geom.padding, tiles), tiles)
        v = xp.reshape(v, (16, groups, c // groups, m * tiles[0] * tiles[1]))
        mm = xp.reshape(xp.matmul(u, v), (4, 4, o, m, *tiles))
        y[sl, ...] = _output_transform(mm, out)
        v = mm = None                                                             # freed before the next chunk's
    if bias is not None:
        y += xp.reshape(bias, (1, o, 1, 1))
    return y


def winograd_backward(grad_output: Array, x: Array, weight: Array, geom: ConvGeometry, *,
                      need_input_grad: bool = True, max_workspace_bytes: int | None,
                      cache_chunk_bytes: int | None = None, memory_limit: int | None = None,
                      ) -> tuple[Array | None, Array]:
    """(dL/dx or None, dL/dW) of y = conv(x, weight) by F(2x2, 3x3): dL/dx the Winograd convolution of dY with
    the flipped, transposed kernel, dL/dW the adjoint of the forward map, one GEMM per chunk summed."""
    xp = array_namespace(grad_output, x, weight)
    c = x.shape[1]
    o, groups = weight.shape[0], geom.groups
    grad_input = None
    if need_input_grad:
        pads = tuple((2 - lo, 2 - hi) for lo, hi in geom.padding)
        flipped = ConvGeometry((3, 3), (1, 1), pads, (1, 1), groups)
        grad_input = winograd_forward(grad_output, flipped_transposed_weight(weight, groups), None, flipped,
                                      max_workspace_bytes=max_workspace_bytes, cache_chunk_bytes=cache_chunk_bytes,
                                      memory_limit=memory_limit)
    out = tuple(grad_output.shape[2:])
    tiles = _tiles(out)
    du = None
    for sl in _chunks("weight gradient", tuple(x.shape), tuple(weight.shape), _per_sample(c, o, tiles),
                      itemsize(x), max_workspace_bytes, cache_chunk_bytes, memory_limit):
        p = (sl.stop - sl.start) * tiles[0] * tiles[1]
        v = _input_transform(_padded(x[sl, ...], geom.padding, tiles), tiles)
        v = xp.reshape(v, (16, groups, c // groups, p))
        dm = xp.reshape(_output_adjoint(grad_output[sl, ...], tiles), (16, groups, o // groups, p))
        part = xp.matmul(dm, xp.matrix_transpose(v))                              # (16, G, O/G, C/G)
        du = part if du is None else du + part
        v = dm = part = None                                                      # freed before the next chunk's
    if du is None:                                                                # an empty batch
        return grad_input, xp.zeros(weight.shape, dtype=weight.dtype, device=device(weight))
    dw = xp.matmul(xp.matrix_transpose(_gg(xp, weight)), xp.reshape(du, (16, o * (c // groups))))  # Gᵀ dU G
    return grad_input, xp.reshape(xp.matrix_transpose(dw), weight.shape)
