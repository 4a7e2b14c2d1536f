"""Winograd convolution F(m x m, 3x3) (Lavin & Gray, 2016), m = 2 or 4, for 2-D, stride-1, dilation-1, 3x3 kernels.

Pure Array API: the namespace comes from the arguments.  The output is cut into m x m tiles; each reads an
a x a tile of the padded input, a = m + 2 (tiles overlap by 2).  With the transforms of one
:class:`Transform`

    V = Bᵀ d B  (input tile d, a x a)     U = G g Gᵀ  (kernel g, 3x3 -> a x a)     y = Aᵀ M A  (M a x a -> m x m)

the convolution is ``M[ξ, ν] = sum_c U[ξ, ν, o, c] V[ξ, ν, c, tile]``: one batched GEMM over the a² tile
positions, ``(a², G, O/G, C/G) @ (a², G, C/G, tiles)``, with the batch inside the tiles (one GEMM per chunk, as
the engine's ``batch_inner`` policy does).  That is a² multiplications per m² outputs instead of 9 m²:
16 per 4 for F(2x2, 3x3), 36 per 16 for F(4x4, 3x3).

Shapes::

    x       (N, C, H, W)          weight  (O, C // G, 3, 3)          y  (N, O, Ho, Wo)
    xpad    (C, n, m*th + 2, m*tw + 2)   a chunk of n samples, padded, th = ceil(Ho / m), tw = ceil(Wo / m)
    V       (a, a, C, n, th, tw)  U  (a, a, O, C // G)          M  (a, a, O, n, th, tw)

The input transform applies Bᵀ to a strided row slices of the padded input, then to a strided column slices of
each result; the output transform (Aᵀ) and dL/dW's ``dM = A dY Aᵀ`` likewise.  Each of these is a list of
elementwise passes generated from the matrix's nonzero coefficients (:func:`_combine`), which measured faster on
NumPy than two small GEMMs per transform (docs/algorithms.md).  The kernel transform is one GEMM with G ⊗ G.
dL/dx is the Winograd convolution of dY with the flipped, transposed kernel (padding ``2 - p``: a negative one
crops dY).  dL/dW is the adjoint of the same map: ``dU[ξ, ν] = dM[ξ, ν] · V[ξ, ν]ᵀ``, then
``dW = Gᵀ dU G``; the GEMM ``(a², G, O/G, tiles) @ (a², G, tiles, C/G)`` sums over the tiles.

The matrices come from the Toom-Cook construction over interpolation points (:func:`toom_cook`): 0, ±1, ∞ for
m = 2 and 0, ±1, ±2, ∞ for m = 4 (Lavin & Gray's).  The batch is processed in chunks whose workspace stays under
``max_workspace_bytes`` (and ``cache_chunk_bytes`` where given), as in :mod:`xpconv._engine`; Winograd does not
split a sample into row bands, so a sample over the cap is a ValueError.  Rounding: docs/algorithms.md states the
float32 bound of each m that the tests hold it to.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

from array_api_compat import device

from ._engine import flipped_transposed_weight, itemsize, sample_chunks
from ._geometry import ConvGeometry
from ._namespace import namespace
from ._typing import Array

__all__ = ["Transform", "toom_cook", "TRANSFORMS", "winograd_unsupported", "winograd_forward", "winograd_backward"]

Matrix = tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class Transform:
    """The matrices of F(m x m, r x r): ``at`` Aᵀ (m, a), ``g`` G (a, r), ``bt`` Bᵀ (a, a), a = m + r - 1."""

    m: int
    at: Matrix
    g: Matrix
    bt: Matrix

    @property
    def alpha(self) -> int:
        """The input tile's side a = m + r - 1."""
        return len(self.bt)


def _roots_poly(roots) -> list[Fraction]:
    """Coefficients, lowest power first, of the product of (x - r) over ``roots``."""
    c = [Fraction(1)]
    for r in roots:
        c = [(c[i - 1] if i else 0) - r * (c[i] if i < len(c) else 0) for i in range(len(c) + 1)]
    return c


def toom_cook(m: int, points, r: int = 3) -> Transform:
    """F(m, r)'s matrices from the m + r - 2 finite interpolation ``points`` and ∞, computed exactly.

    ``y = Aᵀ [(G g) ⊙ (Bᵀ d)]`` is the correlation ``y_i = sum_k d_(i+k) g_k`` (the transpose of the Toom-Cook
    polynomial product): Aᵀ[i, j] = p_j^i, G[j, k] = p_j^k / N_j with N_j = prod_(l != j) (p_j - p_l), and row j of
    Bᵀ the coefficients of N_j L_j (L_j the Lagrange polynomial of p_j); ∞ takes the leading coefficients.
    """
    a = m + r - 1
    p = [Fraction(v) for v in points]
    if len(p) != a - 1 or len(set(p)) != len(p):
        raise ValueError(f"F({m}, {r}) needs {a - 1} distinct finite points, got {points}")
    norms = [_prod(pj - pl for pl in p if pl != pj) for pj in p]
    at = [[*(pj ** i for pj in p), Fraction(i == m - 1)] for i in range(m)]
    g = [*([pj ** k / nj for k in range(r)] for pj, nj in zip(p, norms, strict=True)),
         [Fraction(k == r - 1) for k in range(r)]]
    bt = [*([*_roots_poly([pl for pl in p if pl != pj]), Fraction(0)] for pj in p), _roots_poly(p)]
    return Transform(m, _floats(at), _floats(g), _floats(bt))


def _floats(rows) -> Matrix:
    return tuple(tuple(float(v) for v in row) for row in rows)


def _prod(values) -> Fraction:
    out = Fraction(1)
    for v in values:
        out *= v
    return out


# F(2x2, 3x3) and F(4x4, 3x3), by output tile side m
TRANSFORMS = {2: toom_cook(2, (0, 1, -1)), 4: toom_cook(4, (0, 1, -1, 2, -2))}


def winograd_unsupported(geom: ConvGeometry) -> str | None:
    """Why F(m x m, 3x3) cannot compute a convolution of geometry ``geom``, or None when it can (any m)."""
    if geom.nd != 2:
        return f"it is 2-D only (this convolution is {geom.nd}-D)"
    if geom.kernel != (3, 3):
        return f"it needs a 3x3 kernel (got {geom.kernel[0]}x{geom.kernel[1]})"
    if geom.stride != (1, 1):
        return f"it needs stride 1 (got {geom.stride})"
    if geom.dilation != (1, 1):
        return f"it needs dilation 1 (got {geom.dilation})"
    return None


def _tiles(out: tuple[int, ...], m: int) -> tuple[int, int]:
    return -(-out[0] // m), -(-out[1] // m)


def _constant(like: Array, t: Transform) -> Array:
    """G ⊗ G (a², 9) of ``t`` in ``like``'s dtype on its device, made once per (library, device, dtype): no upload
    per call.  U = G g Gᵀ flattened, row-major, is (G ⊗ G) times g flattened."""
    return _device_gg(namespace(like), device(like), like.dtype, t)


@lru_cache(maxsize=64)
def _device_gg(xp, dev, dtype, t: Transform) -> Array:
    return xp.asarray([[gi[k] * gj[n] for k in range(3) for n in range(3)] for gi in t.g for gj in t.g],
                      dtype=dtype, device=dev)


def _combine(mat: Matrix, items: list[Array]) -> list[Array]:
    """``mat`` applied along a list of arrays: ``[sum_j mat[i][j] * items[j] for each row i]``, written as
    elementwise passes over the nonzero coefficients only (±1 as an addition or subtraction)."""
    out = []
    for row in mat:
        acc = None
        for c, item in zip(row, items, strict=True):
            if c == 0:
                continue
            if acc is None:
                acc = item if c == 1 else -item if c == -1 else c * item
            else:
                acc = acc + item if c == 1 else acc - item if c == -1 else acc + c * item
        out.append(acc)
    return out


def _transpose(mat: Matrix) -> Matrix:
    return tuple(zip(*mat, strict=True))


def _padded(x: Array, pads, size: tuple[int, int]) -> Array:
    """x (n, C, H, W) -> (C, n, *size): x placed at the low padding inside zeros; a negative padding crops x's
    low (or high) end."""
    xp = namespace(x)
    n, c, *spatial = x.shape
    src, dst = [], []
    for length, (lo, _), p in zip(spatial, pads, size, strict=True):
        a = max(-lo, 0)                                  # first row of x used
        b = min(length, p - lo)                          # one past the last
        src.append(slice(a, max(a, b)))
        dst.append(slice(a + lo, a + lo + max(b - a, 0)))
    xpad = xp.zeros((c, n, *size), dtype=x.dtype, device=device(x))
    xpad[(slice(None), slice(None), *dst)] = xp.permute_dims(x[(slice(None), slice(None), *src)], (1, 0, 2, 3))
    return xpad


def _input_transform(x: Array, pads, t: Transform, tiles: tuple[int, int]) -> Array:
    """V = Bᵀ d B for every a x a tile d of x (n, C, H, W) padded by ``pads`` -> (a, a, C, n, th, tw): Bᵀ over a
    strided row slices of the padded x, then over a strided column slices of each result."""
    xp = namespace(x)
    m, a = t.m, t.alpha
    th, tw = tiles
    xpad = _padded(x, pads, (m * th + 2, m * tw + 2))
    rows = [xpad[:, :, i:i + m * (th - 1) + 1:m, :] for i in range(a)]          # (C, n, th, m*tw + 2)
    v = xp.empty((a, a, *xpad.shape[:2], th, tw), dtype=x.dtype, device=device(x))
    for i, r in enumerate(_combine(t.bt, rows)):
        for j, tile in enumerate(_combine(t.bt, [r[..., j:j + m * (tw - 1) + 1:m] for j in range(a)])):
            v[i, j, ...] = tile
    return v


def _kernel_transform(weight: Array, groups: int, t: Transform) -> Array:
    """U = G g Gᵀ for every kernel, as one GEMM (G ⊗ G) · gᵀ: weight (O, C/G, 3, 3) -> (a², G, O/G, C/G)."""
    xp = namespace(weight)
    o, cg = weight.shape[:2]
    u = xp.matmul(_constant(weight, t), xp.matrix_transpose(xp.reshape(weight, (o * cg, 9))))
    return xp.reshape(u, (t.alpha ** 2, groups, o // groups, cg))


def _output_transform(mm: Array, t: Transform, out: tuple[int, ...]) -> Array:
    """y = Aᵀ M A per tile: M (a, a, O, n, th, tw) -> y (n, O, Ho, Wo), written through strided slices."""
    xp = namespace(mm)
    a, _, o, n, th, tw = mm.shape
    m = t.m
    full = xp.empty((n, o, m * th, m * tw), dtype=mm.dtype, device=device(mm))
    for r, z in enumerate(_combine(t.at, [mm[i, ...] for i in range(a)])):        # z (a, O, n, th, tw)
        for s, val in enumerate(_combine(t.at, [z[j, ...] for j in range(a)])):
            full[:, :, r::m, s::m] = xp.permute_dims(val, (1, 0, 2, 3))
    return full[:, :, :out[0], :out[1]]


def _output_adjoint(dy: Array, t: Transform, tiles: tuple[int, int]) -> Array:
    """dM = A dY Aᵀ per m x m tile: dy (n, O, Ho, Wo) -> (a, a, O, n, th, tw), zero beyond the output."""
    xp = namespace(dy)
    n, o, ho, wo = dy.shape
    m, a, (th, tw) = t.m, t.alpha, tiles
    full = xp.zeros((o, n, m * th, m * tw), dtype=dy.dtype, device=device(dy))
    full[:, :, :ho, :wo] = xp.permute_dims(dy, (1, 0, 2, 3))
    adjoint = _transpose(t.at)                                                     # A (a, m)
    dm = xp.empty((a, a, o, n, th, tw), dtype=dy.dtype, device=device(dy))
    for i, row in enumerate(_combine(adjoint, [full[:, :, r::m, :] for r in range(m)])):    # (O, n, th, m*tw)
        for j, tile in enumerate(_combine(adjoint, [row[..., s::m] for s in range(m)])):
            dm[i, j, ...] = tile
    return dm


def _per_sample(c: int, o: int, t: Transform, tiles: tuple[int, int]) -> int:
    """Workspace elements per sample, an upper bound for both passes: padded x, Bᵀ's row pass (with two
    temporaries), V and a column pass's temporaries; then with V, M and the output transform's passes and its
    tiles (forward) or dY's copy, A's row pass and dM (dL/dW)."""
    m, a = t.m, t.alpha
    th, tw = tiles
    n_tiles = th * tw
    padded = (m * th + 2) * (m * tw + 2)
    return (c * (padded + (a + 2) * th * (m * tw + 2) + (a * a + a + 2) * n_tiles)
            + o * n_tiles * (a * a + (m + 2) * a + m * m + m + 2))


def winograd_forward(x: Array, weight: Array, bias: Array | None, geom: ConvGeometry, *, m: int = 2,
                     max_workspace_bytes: int | None, cache_chunk_bytes: int | None = None,
                     memory_limit: int | None = None) -> Array:
    """y (N, O, Ho, Wo) = conv(x, weight) + bias by F(m x m, 3x3), m in :data:`TRANSFORMS`; ``geom`` must pass
    :func:`winograd_unsupported`."""
    xp = namespace(x, weight)
    t = TRANSFORMS[m]
    n, c, *spatial = x.shape
    o, groups = weight.shape[0], geom.groups
    out = geom.output_shape(spatial)
    tiles = _tiles(out, m)
    u = _kernel_transform(weight, groups, t)
    y = xp.empty((n, o, *out), dtype=x.dtype, device=device(x))
    for sl in sample_chunks("Winograd", "forward", tuple(x.shape), tuple(weight.shape),
                            _per_sample(c, o, t, tiles) * itemsize(x), max_workspace_bytes, cache_chunk_bytes,
                            memory_limit):
        size = sl.stop - sl.start
        v = _input_transform(x[sl, ...], geom.padding, t, tiles)
        v = xp.reshape(v, (t.alpha ** 2, groups, c // groups, size * tiles[0] * tiles[1]))
        mm = xp.reshape(xp.matmul(u, v), (t.alpha, t.alpha, o, size, *tiles))
        v = None                                                                  # freed before the output's
        y[sl, ...] = _output_transform(mm, t, out)
        mm = None                                                                 # freed before the next chunk's
    if bias is not None:
        y += xp.reshape(bias, (1, o, 1, 1))
    return y


def winograd_backward(grad_output: Array, x: Array, weight: Array, geom: ConvGeometry, *, m: int = 2,
                      need_input_grad: bool = True, max_workspace_bytes: int | None,
                      cache_chunk_bytes: int | None = None, memory_limit: int | None = None,
                      ) -> tuple[Array | None, Array]:
    """(dL/dx or None, dL/dW) of y = conv(x, weight) by F(m x m, 3x3): dL/dx the Winograd convolution of dY with
    the flipped, transposed kernel, dL/dW the adjoint of the forward map, one GEMM per chunk summed."""
    xp = namespace(grad_output, x, weight)
    t = TRANSFORMS[m]
    c = x.shape[1]
    o, groups = weight.shape[0], geom.groups
    grad_input = None
    if need_input_grad:
        pads = tuple((2 - lo, 2 - hi) for lo, hi in geom.padding)
        flipped = ConvGeometry((3, 3), (1, 1), pads, (1, 1), groups)
        grad_input = winograd_forward(grad_output, flipped_transposed_weight(weight, groups), None, flipped, m=m,
                                      max_workspace_bytes=max_workspace_bytes, cache_chunk_bytes=cache_chunk_bytes,
                                      memory_limit=memory_limit)
    tiles = _tiles(tuple(grad_output.shape[2:]), m)
    du = None
    for sl in sample_chunks("Winograd", "weight gradient", tuple(x.shape), tuple(weight.shape),
                            _per_sample(c, o, t, tiles) * itemsize(x), max_workspace_bytes, cache_chunk_bytes,
                            memory_limit):
        p = (sl.stop - sl.start) * tiles[0] * tiles[1]
        v = xp.reshape(_input_transform(x[sl, ...], geom.padding, t, tiles), (t.alpha ** 2, groups, c // groups, p))
        dm = xp.reshape(_output_adjoint(grad_output[sl, ...], t, tiles), (t.alpha ** 2, groups, o // groups, p))
        part = xp.matmul(dm, xp.matrix_transpose(v))                              # (a², G, O/G, C/G)
        du = part if du is None else du + part
        v = dm = part = None                                                      # freed before the next chunk's
    if du is None:                                                                # an empty batch
        return grad_input, xp.zeros(weight.shape, dtype=weight.dtype, device=device(weight))
    dw = xp.matmul(xp.matrix_transpose(_constant(weight, t)),                    # Gᵀ dU G
                   xp.reshape(du, (t.alpha ** 2, o * (c // groups))))
    return grad_input, xp.reshape(xp.matrix_transpose(dw), weight.shape)
