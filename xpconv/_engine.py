"""The convolution passes: forward, dL/dW and dL/dx as GEMM-shaped contractions over column buffers.

Pure Array API: every function takes its namespace from its array arguments,
so the same lines run on NumPy, CuPy, PyTorch and array-api-strict.

Shapes (``nd`` spatial dims, ``K = prod(kernel)``, ``L = prod(out)``):
    x       (N, C, *spatial)
    weight  (O, C // G, *kernel)
    cols    (N, C, *kernel, *out)   im2col's layout, viewed as (N, G, (C // G) * K, L) for the GEMM, or with
            (C, *kernel, N, *out)   the batch inside (``batch_inner``), viewed as (G, (C // G) * K, N * L)
    y       (N, O, *out)

Each pass is one GEMM per unit of work: broadcast over the unit's samples, or with ``batch_inner`` (the
backend's policy: one kernel launch per GEMM on a GPU) one plain GEMM with the samples folded into its
columns, no per-sample dL/dW buffer and no batch sum.  The columns come in one of two layouts
(:mod:`xpconv._columns`): im2col's exact one, or for stride-1 convolutions "wide" columns, where each
kernel tap's block is one contiguous slice of the flattened, padded x and the GEMM also computes outputs
over the padding columns, which are then dropped.  The engine reads the same way for all of these: it asks
the layout.

``max_workspace_bytes`` bounds the workspace of every pass (the arrays it allocates besides its
inputs and results).  The batch is processed in chunks whose workspace stays under it and, when the
caller passes its backend's ``cache_chunk_bytes`` (the CPU's policy), under that too; the results do
not depend on the chunking, to the last bit on NumPy, with per-sample GEMMs; with ``batch_inner`` a chunk's
GEMM is wider or narrower, which can change the last bits.  When one sample alone
is over the cap, each sample is split into bands of output rows along the first spatial axis
(:class:`_Unit`): a band is the convolution of the input rows it reads (its halo included) in im2col's
exact layout; dL/dW sums the bands, and dL/dx folds each band into its input rows, the last band first, so
that every element of dL/dx adds its terms in the unsplit fold's order.  A single output row over the cap is a
ValueError.  ``memory_limit`` (the op layer's free-memory guard) turns a workspace larger than it into
a MemoryError before anything is allocated.  The engine never inspects devices: the chunking policy
and the limit are arguments.  Measurements behind the choices: docs/benchmarks.md.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

from ._columns import ExactLayout, Layout, column_layout
from ._geometry import ConvGeometry
from ._namespace import namespace
from ._typing import Array
from .validation import positive_int

__all__ = ["DEFAULT_MAX_WORKSPACE_BYTES", "batch_chunks", "check_max_workspace_bytes", "check_memory", "itemsize",
           "conv_forward", "conv_backward", "conv_backward_data", "columns_grad", "data_grad_geometry",
           "flipped_geometry", "flipped_transposed_weight", "format_bytes", "row_bands", "run_units", "sample_chunks",
           "fitting", "unit_workers"]

DEFAULT_MAX_WORKSPACE_BYTES = 256 * 2**20
FLIPPED_DX_MAX_CHANNELS = 64


def check_max_workspace_bytes(value: object) -> int | None:
    """``max_workspace_bytes`` as a positive int, or None (no cap); ValueError for 0, negatives, floats,
    NaN, bools and non-numbers."""
    return None if value is None else positive_int("max_workspace_bytes", value)


def format_bytes(n: float) -> str:
    """``n`` bytes as a short human-readable size: ``"512 B"``, ``"1.5 MiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def batch_chunks(n: int, bytes_per_sample: int, max_workspace_bytes: int | None,
                 cache_chunk_bytes: int | None = None) -> list[slice]:
    """Slices over the batch so that one chunk's workspace stays under the cap (at least 1 sample).

    ``None`` means no cap: the whole batch in one chunk; an empty batch has no chunks.  Under a cap,
    ``cache_chunk_bytes`` also keeps a chunk under that size (a single sample when one alone is larger):
    on the CPU a workspace that small stays in the caches and reuses heap pages, which measured faster
    than one big buffer even though backward then redoes the im2col (see docs/benchmarks.md).
    """
    if max_workspace_bytes is None or n == 0:
        return [slice(0, n)] if n else []
    budget = max_workspace_bytes
    if cache_chunk_bytes is not None:
        budget = min(budget, cache_chunk_bytes)
    step = max(1, min(n, budget // max(bytes_per_sample, 1)))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def sample_chunks(name: str, what: str, x_shape, w_shape, per_sample: int, max_workspace_bytes: int | None,
                  cache_chunk_bytes: int | None, memory_limit: int | None, fixed: int = 0,
                  needs: str = "one sample needs", workers: int = 1) -> list[slice]:
    """Chunks of whole samples for an algorithm ``name`` that does not split a sample (Winograd, FFT): each chunk's
    workspace, ``fixed`` bytes plus ``per_sample`` bytes a sample, stays under the cap (and ``cache_chunk_bytes``);
    ValueError naming the algorithm and pass ``what`` when ``fixed`` and one sample are over the cap (``needs``
    says what they hold), MemoryError over ``memory_limit``.  With ``workers`` > 1 (chunks run on that many threads
    at once, without a ``fixed`` part) each gets 1/``workers`` of the cap, and the batch is cut into at least
    2 * ``workers`` chunks where it has that many samples."""
    cap = check_max_workspace_bytes(max_workspace_bytes)
    if cap is not None and fixed + per_sample > cap:
        total = fixed + per_sample
        raise ValueError(f"max_workspace_bytes={cap} is too small for {name}'s {what} of x {tuple(x_shape)} with "
                         f"weight {tuple(w_shape)}: {needs} {format_bytes(total)} ({total} bytes) and {name} does not "
                         "split a sample; raise the cap, pass None, or use algorithm='im2col'")
    n = x_shape[0]
    if workers > 1 and not fixed and n >= 2:                                 # the caller checked the cap (fitting)
        even = per_sample * -(-n // min(n, 2 * workers))                     # 2 * workers chunks, or one a sample
        share = even if cap is None else cap // workers
        chunks = batch_chunks(n, per_sample, share, even if cache_chunk_bytes is None else min(cache_chunk_bytes, even))
        biggest = min(workers, len(chunks)) * max(sl.stop - sl.start for sl in chunks) * per_sample
    else:
        chunks = batch_chunks(n, per_sample, None if cap is None else cap - fixed, cache_chunk_bytes)
        biggest = fixed + max((sl.stop - sl.start for sl in chunks), default=0) * per_sample
    check_memory(f"{name}'s {what}", x_shape, w_shape, biggest, memory_limit)
    return chunks


# -- the units of work: chunks of the batch, or row bands of one sample -----------------------------
@dataclass(frozen=True)
class _Unit:
    """One step of a pass: samples ``batch``, output rows ``rows`` of the first spatial axis, which read
    input rows ``inputs`` (halo included), as the convolution ``layout`` of those rows."""

    batch: slice
    layout: Layout
    rows: slice | None = None           # None: the whole sample
    inputs: slice | None = None

    @property
    def is_band(self) -> bool:
        return self.rows is not None

    def of_input(self, a: Array) -> Array:
        return a[self.batch, :, self.inputs or slice(None), ...]

    @property
    def output_index(self) -> tuple:
        return (self.batch, slice(None), self.rows or slice(None), Ellipsis)


def row_bands(geom: ConvGeometry, spatial: Sequence[int], rows: int,
              batch_inner: bool = False) -> list[tuple[slice, slice, ExactLayout]]:
    """Bands of ``rows`` output rows along the first spatial axis, the last band first:
    (output rows, input rows read, the band's exact layout: those input rows padded by what it reads
    beyond x).  An input slice is never out of bounds, even for a band that reads only padding."""
    size, *rest = spatial
    out = geom.output_shape(spatial)
    s, d, k, lo = geom.stride[0], geom.dilation[0], geom.kernel[0], geom.padding[0][0]
    bands = []
    for r0 in range(0, out[0], rows):
        r1 = min(r0 + rows, out[0])
        start, end = r0 * s - lo, (r1 - 1) * s + d * (k - 1) - lo + 1        # rows read, padding included
        a = min(max(start, 0), size)
        b = min(max(end, a), size)
        pad_lo = min(max(a - start, 0), end - start)
        band_geom = replace(geom, padding=((pad_lo, end - start - (b - a) - pad_lo), *geom.padding[1:]))
        band_out = (r1 - r0, *out[1:])
        bands.append((slice(r0, r1), slice(a, b),
                      ExactLayout(band_geom, (b - a, *rest), band_out, band_out, batch_inner)))
    return bands[::-1]


def _units(what: str, x_shape: tuple[int, ...], w_shape: tuple[int, ...], geom: ConvGeometry,
           layout: Layout, itemsize: int, per_sample: int, band_cost: tuple[int, int, bool],
           max_workspace_bytes: int | None, cache_chunk_bytes: int | None,
           memory_limit: int | None, workers: int = 1) -> tuple[_Unit, ...]:
    """The units of a pass over x (N, C, *spatial), checked against the cap and the memory limit.

    ``per_sample``: the workspace elements of one sample in ``layout``; ``band_cost`` = (elements per
    output row, fixed elements, whether the band builds im2col columns) of a row band: the band's
    workspace is ``rows * per_row + fixed`` plus, with columns, an upper bound on a padded copy of the rows it reads.
    With ``workers`` > 1 (units run on that many threads at once) a chunk gets at most 1/``workers`` of the cap
    and the batch is cut into at least 2 * ``workers`` chunks where it has that many samples, so the threads
    share the work evenly; row bands, which add into the same rows of dL/dx, are planned as for one thread.
    The units depend on shapes and policies only, so they are planned once per combination (the memory limit,
    which changes from call to call, is checked each time).
    """
    units, nbytes = _plan_units(what, x_shape, w_shape, geom, layout, itemsize, per_sample, band_cost,
                                max_workspace_bytes, cache_chunk_bytes, workers)
    check_memory(what, x_shape, w_shape, nbytes, memory_limit)
    return units


@lru_cache(maxsize=1024)
def _plan_units(what: str, x_shape: tuple[int, ...], w_shape: tuple[int, ...], geom: ConvGeometry,
                layout: Layout, itemsize: int, per_sample: int, band_cost: tuple[int, int, bool],
                max_workspace_bytes: int | None, cache_chunk_bytes: int | None,
                workers: int = 1) -> tuple[tuple[_Unit, ...], int]:
    """(the units of :func:`_units`, the workspace of the units that may run at once, in bytes)."""
    n, c, *spatial = x_shape
    cap = check_max_workspace_bytes(max_workspace_bytes)
    if workers > 1 and n >= 2:                                                # the caller checked the cap (fitting)
        share = None if cap is None else cap // workers
        cache = None if geom.is_pointwise else cache_chunk_bytes
        even = itemsize * per_sample * -(-n // min(n, 2 * workers))         # 2 * workers chunks, or one a sample
        chunks = batch_chunks(n, itemsize * per_sample, share if share is not None else even,
                              even if cache is None else min(cache, even))
        biggest = max(sl.stop - sl.start for sl in chunks) * per_sample * itemsize
        return tuple(_Unit(sl, layout) for sl in chunks), min(workers, len(chunks)) * biggest
    if cap is None or per_sample * itemsize <= cap or n == 0:
        chunks = batch_chunks(n, itemsize * per_sample, cap, None if geom.is_pointwise else cache_chunk_bytes)
        biggest = max((sl.stop - sl.start for sl in chunks), default=0) * per_sample * itemsize
        return tuple(_Unit(sl, layout) for sl in chunks), biggest
    per_row, fixed, builds_columns = band_cost
    s, d, k = geom.stride[0], geom.dilation[0], geom.kernel[0]
    pad_row = c * math.prod(geom.padded_shape(spatial)[1:]) if builds_columns and not geom.is_pointwise else 0

    def elements(rows: int) -> int:
        return rows * per_row + fixed + pad_row * ((rows - 1) * s + d * (k - 1) + 1)

    if elements(1) * itemsize > cap:
        raise ValueError(f"max_workspace_bytes={cap} is too small for {what} of x {x_shape} with weight {w_shape}: "
                         f"one output row of one sample needs {format_bytes(elements(1) * itemsize)} "
                         f"({elements(1) * itemsize} bytes) of workspace; raise the cap or pass None")
    rows = min(geom.output_shape(spatial)[0], (cap // itemsize - elements(0)) // (per_row + pad_row * s))
    bands = row_bands(geom, spatial, rows, layout.batch_inner)
    units = tuple(_Unit(slice(i, i + 1), lay, out_rows, in_rows) for i in range(n) for out_rows, in_rows, lay in bands)
    return units, elements(rows) * itemsize


def check_memory(what: str, x_shape, w_shape, nbytes: int, memory_limit: int | None) -> None:
    """MemoryError naming ``what`` when a workspace of ``nbytes`` exceeds ``memory_limit`` (None: no limit)."""
    if memory_limit is not None and nbytes > memory_limit:
        raise MemoryError(f"{what} of x {x_shape} with weight {w_shape} asks for a workspace of "
                          f"{format_bytes(nbytes)} ({nbytes} bytes), more than the {format_bytes(memory_limit)} "
                          "allowed (XPCONV_MAX_MEMORY_FRACTION of the device's free memory); lower "
                          "max_workspace_bytes or the batch size")


def itemsize(a: Array) -> int:
    """Bytes per element of floating array ``a``."""
    return _itemsize(namespace(a), a.dtype)


@lru_cache(maxsize=64)
def _itemsize(xp, dtype) -> int:
    return int(xp.finfo(dtype).bits) // 8


def _row_elements(layout: Layout) -> int:
    """Output positions per row of the first spatial axis."""
    return math.prod(layout.out[1:])


# -- the passes ---------------------------------------------------------------------------------------
def conv_forward(x: Array, weight: Array, bias: Array | None, geom: ConvGeometry, *,
                 max_workspace_bytes: int | None = DEFAULT_MAX_WORKSPACE_BYTES, cache_chunk_bytes: int | None = None,
                 batch_inner: bool = False, gather: bool = False, keep_cols: bool = False,
                 memory_limit: int | None = None, windows=None, unit_map=None) -> tuple[Array, Array | None]:
    """y = W · cols(x) + b, one GEMM per unit (chunk of the batch or row band).

    Workspace per unit: its columns (for pointwise convolutions x in the columns' order) and its GEMM result.
    Returns ``(y, cols)``; ``cols``, the GEMM operand, is returned only when ``keep_cols`` and the whole
    batch fit in one chunk, else None.  ``unit_map``: the backend's :attr:`~xpconv.backends.Backend.unit_map`.
    """
    xp = namespace(x, weight)
    n, c, *spatial = x.shape
    o, g = weight.shape[0], geom.groups
    layout = column_layout(geom, spatial, batch_inner, gather)
    w3 = xp.reshape(weight, (g, o // g, (c // g) * layout.taps))               # (G, O/G, Cg*K)
    per_sample = layout.columns_elements(c) + o * layout.length
    row = _row_elements(layout)
    threads = fitting(unit_map, per_sample * itemsize(x), max_workspace_bytes)
    units = _units("the convolution's forward", tuple(x.shape), tuple(weight.shape), geom, layout, itemsize(x),
                   per_sample, ((c * layout.taps + o) * row, 0, True), max_workspace_bytes, cache_chunk_bytes,
                   memory_limit, unit_workers(threads))
    # per sample, one unit and no extra columns: y is the GEMM's result itself
    one = len(units) == 1 and not units[0].is_band
    in_place = one and not layout.has_extra_columns and not batch_inner
    y: Array = None if in_place else xp.empty((n, o, *layout.out), dtype=x.dtype, device=x.device)

    def unit(u: _Unit) -> tuple[Array, Array] | None:
        cols = u.layout.gemm_operand(u.layout.columns(u.of_input(x), windows), g)   # (G, Cg*K, m*L), (m, G, Cg*K, L)
        yc = u.layout.outputs(xp.matmul(w3, cols))                            # (m, O, *out)
        if not in_place:
            y[u.output_index] = yc
        return (yc, cols) if one else None                                    # else freed before the next unit's

    cols = None
    for done in run_units(threads, unit, units):
        if done is not None:
            yc, cols = done
            y = yc if in_place else y
    if bias is not None:
        y += xp.reshape(bias, (1, o) + (1,) * geom.nd)
    return y, (cols if keep_cols and one else None)


def conv_backward(grad_output: Array, x: Array, weight: Array, geom: ConvGeometry, *, cols: Array | None = None,
                  need_input_grad: bool = True, max_workspace_bytes: int | None = DEFAULT_MAX_WORKSPACE_BYTES,
                  cache_chunk_bytes: int | None = None, batch_inner: bool = False, gather: bool = False,
                  memory_limit: int | None = None, windows=None, unit_map=None) -> tuple[Array | None, Array]:
    """(dL/dx or None, dL/dW) for y = conv(x, W); ``cols`` is forward's GEMM operand when kept.

    dL/dW = sum of dY · colsᵀ: per sample, added one sample after the other (chunking the batch does not
            change a bit of it: NumPy sums axis 0 in order), or with ``batch_inner`` one GEMM per unit;
            row bands split the contraction over the output positions, which changes the last bits
    dL/dx = :func:`conv_backward_data`; its fold of Wᵀ · dY is done in this loop, on the same unit of dY

    Workspace per unit: cols (unless kept), dY in the columns' layout, dW (per sample), dcols and their fold.
    Kept ``cols`` are used when the backward pass also takes the batch in one unit, else rebuilt per unit.
    An empty batch gives an empty dL/dx and a zero dL/dW.  With a ``unit_map`` the units run on its threads and
    their dL/dW products are still added in the units' order, so the bits do not change.
    """
    xp = namespace(grad_output, x, weight)
    _, c, *spatial = x.shape
    o, g = weight.shape[0], geom.groups
    layout = column_layout(geom, spatial, batch_inner, gather)
    ck = (c // g) * layout.taps
    w3 = xp.reshape(weight, (g, o // g, ck))
    as_conv = data_grad_geometry(geom, o, c) is not None
    fold_here = need_input_grad and not as_conv
    grad_input: Array = None
    if need_input_grad and as_conv:
        grad_input = conv_backward_data(grad_output, weight, geom, spatial, max_workspace_bytes=max_workspace_bytes,
                                        cache_chunk_bytes=cache_chunk_bytes, batch_inner=batch_inner,
                                        gather=gather, memory_limit=memory_limit, windows=windows,
                                        unit_map=unit_map)
    row = _row_elements(layout)
    band_per_row = (c * layout.taps * (2 if fold_here else 1) + o) * row      # cols, dcols, dY's copy

    def per_sample(cols_kept: bool) -> int:
        elements = layout.output_copy_elements(o) + o * ck                    # dY in the columns' layout, dW
        if not cols_kept:
            elements += layout.columns_elements(c)
        if fold_here:
            elements += layout.fold_elements(c)
        return elements

    threads = fitting(unit_map, per_sample(False) * itemsize(x), max_workspace_bytes)

    def plan(cols_kept: bool) -> tuple[_Unit, ...]:
        return _units("the convolution's backward", tuple(x.shape), tuple(weight.shape), geom, layout, itemsize(x),
                      per_sample(cols_kept), (band_per_row, 2 * o * ck, True), max_workspace_bytes,
                      cache_chunk_bytes, memory_limit, unit_workers(threads))

    units = plan(cols is not None)
    if cols is not None and (len(units) > 1 or units[0].is_band):
        cols, units = None, plan(False)                                       # kept cols cover the whole batch only
    if fold_here:
        banded = any(u.is_band for u in units)
        grad_input = (xp.zeros if banded else xp.empty)(x.shape, dtype=x.dtype, device=x.device)

    def unit(u: _Unit) -> Array:
        lay = u.layout
        chunk_cols = cols if cols is not None else lay.gemm_operand(lay.columns(u.of_input(x), windows), g)
        dy = lay.output_columns(grad_output[u.output_index], g)             # (G, O/G, m*L) or (m, G, O/G, L)
        if fold_here:
            _fold_unit(grad_input, u, columns_grad(w3, dy))
        # dWᵀ = cols · dYᵀ: measured 1.4x faster than dY · colsᵀ per sample with OpenBLAS's AVX-512 kernels
        return xp.matmul(chunk_cols, xp.matrix_transpose(dy))                # (G, Cg*K, O/G) or (m, G, Cg*K, O/G)

    grad_weight = None
    for partial in run_units(threads, unit, units):
        if batch_inner:
            grad_weight = partial if grad_weight is None else grad_weight + partial
        else:
            if grad_weight is not None:
                partial[0, ...] += grad_weight
            grad_weight = xp.sum(partial, axis=0)
        partial = None                                                        # freed before the next unit's
    if grad_weight is None:                                                   # an empty batch
        return grad_input, xp.zeros(weight.shape, dtype=weight.dtype, device=weight.device)
    return grad_input, xp.reshape(xp.matrix_transpose(grad_weight), weight.shape)


def conv_backward_data(grad_output: Array, weight: Array, geom: ConvGeometry, spatial: Sequence[int], *,
                       max_workspace_bytes: int | None = DEFAULT_MAX_WORKSPACE_BYTES,
                       cache_chunk_bytes: int | None = None, batch_inner: bool = False, gather: bool = False,
                       memory_limit: int | None = None, windows=None, unit_map=None) -> Array:
    """dL/dx (N, C, *spatial) of y = conv(x, W) from dL/dy (N, O, *out): also a transposed convolution's forward.

    conv(dY, flipped Wᵀ) where :func:`data_grad_geometry` allows it, else fold(Wᵀ · dY), unit by
    unit.  Workspace per unit: dY in the columns' layout, dcols, their fold.
    """
    xp = namespace(grad_output, weight)
    n, o = grad_output.shape[:2]
    g = geom.groups
    c = weight.shape[1] * g
    as_conv = data_grad_geometry(geom, o, c)
    if as_conv is not None:
        return conv_forward(grad_output, flipped_transposed_weight(weight, g), None, as_conv,
                            max_workspace_bytes=max_workspace_bytes, cache_chunk_bytes=cache_chunk_bytes,
                            batch_inner=batch_inner, gather=gather, memory_limit=memory_limit, windows=windows,
                            unit_map=unit_map)[0]
    layout = column_layout(geom, spatial, batch_inner, gather)
    w3 = xp.reshape(weight, (g, o // g, (c // g) * layout.taps))
    per_sample = layout.fold_elements(c) + layout.output_copy_elements(o)    # dcols and their fold, dY's copy
    x_shape = (n, c, *spatial)
    threads = fitting(unit_map, per_sample * itemsize(grad_output), max_workspace_bytes)
    units = _units("the convolution's backward-data pass", x_shape, tuple(weight.shape), geom, layout,
                   itemsize(grad_output), per_sample, ((c * layout.taps + o) * _row_elements(layout), 0, False),
                   max_workspace_bytes, cache_chunk_bytes, memory_limit, unit_workers(threads))
    banded = any(u.is_band for u in units)
    grad_input = (xp.zeros if banded else xp.empty)(x_shape, dtype=grad_output.dtype, device=grad_output.device)

    def unit(u: _Unit) -> None:
        dy = u.layout.output_columns(grad_output[u.output_index], g)         # (G, O/G, m*L) or (m, G, O/G, L)
        _fold_unit(grad_input, u, columns_grad(w3, dy))

    for _ in run_units(threads, unit, units):
        pass
    return grad_input


def fitting(unit_map, per_sample: int, max_workspace_bytes: int | None):
    """``unit_map`` where its threads can each hold a chunk of at least one sample (``per_sample`` bytes of
    workspace) under the cap at once, else None: the chunks then run one after the other."""
    cap = check_max_workspace_bytes(max_workspace_bytes)
    if unit_map is None or (cap is not None and unit_map.workers * per_sample > cap):
        return None
    return unit_map


def unit_workers(unit_map) -> int:
    """How many units ``unit_map`` runs at once (1 without one)."""
    return 1 if unit_map is None else unit_map.workers


def run_units(unit_map, fn, units: Sequence) -> Iterator:
    """``fn(u)`` for each unit, in order: on ``unit_map``'s threads where there are several chunks of the batch,
    else here (one unit; row bands, which add into the same rows of dL/dx)."""
    if unit_map is None or len(units) < 2 or getattr(units[0], "is_band", False):
        return map(fn, units)
    return unit_map(fn, units)


def _fold_unit(grad_input: Array, u: _Unit, dcols: Array) -> None:
    """Put unit ``u``'s dcols (the GEMM's shape), folded, into dL/dx: a chunk's fold is assigned,
    a band's added into its input rows (units come the last band first, see :func:`row_bands`)."""
    lay = u.layout
    flat = lay.column_blocks(dcols)
    if u.is_band:
        lay.fold_into(grad_input, u.batch, u.inputs.start, flat)          # type: ignore[union-attr]
    else:
        grad_input[u.batch, ...] = lay.fold(flat)


def data_grad_geometry(geom: ConvGeometry, o: int, c: int) -> ConvGeometry | None:
    """The geometry of dL/dx computed as conv(dY, flipped Wᵀ), where that is used, else None.

    That convolution unfolds dY (O channels) instead of folding dcols (C channels); it pays where
    Wᵀ · dY is a thin GEMM (O <= C, inner dimension O/G <= 64) and measured neutral to slower for wider ones.
    """
    if o // geom.groups > FLIPPED_DX_MAX_CHANNELS or o > c:
        return None
    return flipped_geometry(geom)


@lru_cache(maxsize=256)
def flipped_geometry(geom: ConvGeometry) -> ConvGeometry | None:
    """Stride 1: the geometry of conv(dY, flipped Wᵀ), padded by dilation*(k-1) - padding;
    None for other strides or when the padding exceeds the kernel's reach."""
    pads = tuple((d * (k - 1) - lo, d * (k - 1) - hi)
                 for k, d, (lo, hi) in zip(geom.kernel, geom.dilation, geom.padding, strict=True))
    if any(s != 1 for s in geom.stride) or min(p for pair in pads for p in pair) < 0:
        return None
    return replace(geom, padding=pads)


def flipped_transposed_weight(weight: Array, groups: int) -> Array:
    """(O, C/G, *kernel) -> (C, O/G, *kernel), flipped along every kernel axis; a new, contiguous array.

    The copy matters: with one output channel per group (depthwise) a reshaped view of the flipped
    weight has negative strides, which NumPy's matmul cannot hand to BLAS (measured 5x slower).
    """
    xp = namespace(weight)
    o, cg, *kernel = weight.shape
    axes = tuple(range(3, 3 + len(kernel)))
    w = xp.reshape(weight, (groups, o // groups, cg, *kernel))
    w = xp.flip(xp.permute_dims(w, (0, 2, 1, *axes)), axis=axes)     # (G, C/G, O/G, *kernel)
    return xp.reshape(w, (groups * cg, o // groups, *kernel), copy=True)


def columns_grad(w3: Array, dy: Array) -> Array:
    """dcols = Wᵀ · dY per group: w3 (G, O/G, Cg*K), dy (G, O/G, m*L) -> (G, Cg*K, m*L), or per sample
    dy (m, G, O/G, L) -> (m, G, Cg*K, L).

    With one output channel per group (depthwise) each entry is a single product, so a
    broadcast multiply gives the same bits as matmul; on NumPy it measured ~4x faster.
    """
    xp = namespace(w3, dy)
    if w3.shape[1] == 1:
        return xp.matrix_transpose(w3) * dy
    return xp.matmul(xp.matrix_transpose(w3), dy)
