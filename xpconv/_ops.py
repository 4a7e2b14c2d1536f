"""The op layer: validate the arrays once, put them in the engine's layout, run the engine, shape the results.

Both the functional API (:mod:`xpconv.functional`) and the layers (:mod:`xpconv.nn`) call these
entry points; nothing else calls the engine.  A convolution in the caller's layout is ``x`` (N, C, *spatial)
or unbatched (C, *spatial), ``weight`` (O, C // groups, *kernel); with ``channels_last`` they are
(N, *spatial, C) and (O, *kernel, C // groups).  The engine always sees batched, channels-first arrays.
The namespace and device come from the inputs, and so do those of every result; the engine's chunking
policy comes from the inputs' :class:`~xpconv.backends.Backend`.

Dtypes: float16, float32 and float64, and bfloat16 where the library has it (torch), the same for every
array; nothing is promoted.  A float16/bfloat16 convolution runs the engine in that dtype (the library's
GEMM decides its accumulation: float32 in NumPy's and torch's; docs/precision.md).
Memory: every entry point validates ``max_workspace_bytes`` and asks
the inputs' backend once per call for its free memory (:meth:`~xpconv.backends.Backend.free_memory_bytes`);
the engine raises MemoryError before it allocates a workspace larger than :func:`max_memory_fraction` of it.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from array_api_compat import array_namespace, device

from ._columns import col2im, im2col
from ._direct import direct_backward, direct_forward, direct_unsupported
from ._docstrings import CONV_ND
from ._engine import (
    DEFAULT_MAX_WORKSPACE_BYTES,
    check_max_workspace_bytes,
    conv_backward,
    conv_backward_data,
    conv_forward,
    itemsize,
)
from ._fft import fft_backward, fft_forward
from ._geometry import ConvGeometry, make_geometry
from ._kn2row import kn2row_backward, kn2row_forward, kn2row_preferred, kn2row_unsupported, workspace_bytes
from ._namespace import namespace
from ._typing import Array
from ._winograd import winograd_backward, winograd_forward, winograd_unsupported
from .backends import Backend, library_of
from .tuning import autotune_enabled, tuned_choice
from .validation import check_real

__all__ = ["ALGORITHMS", "REGISTRY", "Algorithm", "AUTO_FLOAT32_BOUND", "ConvContext", "choose_algorithm",
           "select_algorithm", "namespace_of", "ConvSpec", "prepare", "conv",
           "conv_grads", "conv_transpose", "conv_transpose_grads", "conv_transpose_output_shape", "unfold", "fold",
           "DEFAULT_MAX_WORKSPACE_BYTES", "DEFAULT_MAX_MEMORY_FRACTION", "SUPPORTED_DTYPES",
           "check_max_workspace_bytes", "max_memory_fraction", "memory_limit", "engine_policy"]

SUPPORTED_DTYPES = ("float16", "bfloat16", "float32", "float64")
DEFAULT_MAX_MEMORY_FRACTION = 0.9
_FRACTION_VARIABLE = "XPCONV_MAX_MEMORY_FRACTION"


def max_memory_fraction() -> float:
    """The fraction of the device's free memory one workspace may take: ``$XPCONV_MAX_MEMORY_FRACTION``
    (a number in (0, 1], read at each call), else 0.9; ValueError naming the variable when it is not one."""
    text = os.environ.get(_FRACTION_VARIABLE, "").strip()
    if not text:
        return DEFAULT_MAX_MEMORY_FRACTION
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{_FRACTION_VARIABLE} must be a number in (0, 1], got {text!r}") from None
    return check_real(_FRACTION_VARIABLE, value, 0.0, 1.0, low_open=True)


def memory_limit(backend: Backend) -> int | None:
    """The most bytes one workspace may take on ``backend``'s device now (None where its free memory is unknown)."""
    free = backend.free_memory_bytes()
    return None if free is None else int(max_memory_fraction() * free)


def engine_policy(backend: Backend, max_workspace_bytes: int | None) -> dict[str, Any]:
    """The engine's keyword arguments for one call on ``backend``: the workspace cap, the chunking, GEMM and
    column policies, the columns' fast path (:attr:`~xpconv.backends.Backend.window_view`), the threads the
    units may run on (:attr:`~xpconv.backends.Backend.unit_map`) and the free-memory guard (see
    :class:`~xpconv.backends.Backend`).

    The default cap, 256 MiB, is a CPU figure; on a GPU, where fewer, larger chunks mean fewer launches, it
    grows to half the :func:`memory_limit` (the device's free memory, times :func:`max_memory_fraction`), so a
    benchmark batch of 128 is not split.  An explicit cap (another value, or None) is kept as given.
    """
    limit = memory_limit(backend)
    if backend.is_gpu and max_workspace_bytes == DEFAULT_MAX_WORKSPACE_BYTES and limit is not None:
        max_workspace_bytes = max(DEFAULT_MAX_WORKSPACE_BYTES, limit // 2)
    return {"max_workspace_bytes": max_workspace_bytes, "cache_chunk_bytes": backend.cache_chunk_bytes,
            "batch_inner": backend.batch_inner_gemm, "gather": backend.gather_columns, "memory_limit": limit,
            "windows": backend.window_view, "unit_map": backend.unit_map}


def namespace_of(*arrays: Array | None, names: Sequence[str] | None = None) -> Any:
    """The common Array API namespace of ``arrays`` (None entries skipped).

    Raises TypeError for non-arrays, arrays of different libraries or different
    floating dtypes, and ValueError for arrays on different devices: xpconv never
    converts or copies silently.
    """
    names = names or [f"argument {i}" for i in range(len(arrays))]
    given = [(n, a) for n, a in zip(names, arrays, strict=True) if a is not None]
    try:
        xp = namespace(*(a for _, a in given))
    except TypeError:
        for name, a in given:
            try:
                array_namespace(a)
            except TypeError:
                raise TypeError(f"{name} must be an array (NumPy, CuPy, torch or array-api-strict), "
                                f"got {type(a).__name__}") from None
        libs = ", ".join(f"{n}: {library_of(a) or type(a).__name__}" for n, a in given)
        raise TypeError(f"arrays come from different libraries ({libs}); move them to one backend first, "
                        "e.g. with xpconv.get_backend(name).asarray(...)") from None
    first_name, first = given[0]
    if len(given) > 1:
        first_device = device(first)
        for name, a in given[1:]:
            if device(a) != first_device:
                raise ValueError(f"{name} is on device {device(a)!r} but {first_name} is on {first_device!r}; "
                                 "xpconv does not copy between devices silently")
    supported = _supported_dtypes(xp)
    for name, a in given:
        if a.dtype not in supported:
            raise TypeError(f"{name} must have a real floating dtype (float16, float32, float64, or bfloat16 "
                            f"where the library has it), got {a.dtype}")
        if a.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {a.dtype} but {first_name} has {first.dtype}; "
                            "mixed float dtypes are not promoted silently, cast one of them")
    return xp


@lru_cache(maxsize=16)
def _supported_dtypes(xp: Any) -> tuple[Any, ...]:
    return tuple(getattr(xp, d) for d in SUPPORTED_DTYPES if hasattr(xp, d))


@dataclass
class ConvContext:
    """What backward needs from forward: x (N, C, *s) and weight (O, Cg, *k) channels-first, and cols."""

    xp: Any
    x: Array
    weight: Array
    geom: ConvGeometry
    batched: bool
    channels_last: bool
    out_shape: tuple[int, ...]
    backend: Backend
    cols: Array | None = None
    algorithm: str = "im2col"


# -- the algorithms: each a name in REGISTRY ---------------------------------------------------------
@dataclass(frozen=True)
class Algorithm:
    """One way to compute a convolution (docs/algorithms.md).

    ``unsupported(geom, channels)`` says why it cannot compute geometry ``geom`` with ``channels`` input channels
    (None where that is not known) or None when it can;
    ``forward(ctx, bias, policy, keep_cols) -> y`` and ``backward(ctx, dy, policy, need_input_grad) -> (dL/dx or
    None, dL/dW)`` take the engine's layout (batched, channels-first) and :func:`engine_policy`'s keywords;
    ``float32_bound`` is the documented float32 error bound in units of eps32 (max |result32 - result64| over
    max conv(|a|, |b|)), which decides whether auto-tuning may pick it (see :data:`AUTO_FLOAT32_BOUND`); ``inf``
    where it depends on the size (FFT's).
    """

    unsupported: Callable[[ConvGeometry, int | None], str | None]
    forward: Callable[[ConvContext, Array | None, dict[str, Any], bool], Array]
    backward: Callable[[ConvContext, Array, dict[str, Any], bool], tuple[Array | None, Array]]
    float32_bound: float


def _im2col_forward(ctx: ConvContext, bias: Array | None, policy: dict[str, Any], keep_cols: bool) -> Array:
    y, ctx.cols = conv_forward(ctx.x, ctx.weight, bias, ctx.geom, keep_cols=keep_cols, **policy)
    return y


def _im2col_backward(ctx: ConvContext, dy: Array, policy: dict[str, Any], need_input_grad: bool,
                     ) -> tuple[Array | None, Array]:
    return conv_backward(dy, ctx.x, ctx.weight, ctx.geom, cols=ctx.cols, need_input_grad=need_input_grad, **policy)


def _chunked_policy(policy: dict[str, Any]) -> dict[str, Any]:
    """The part of :func:`engine_policy` Winograd, the direct algorithm and FFT take (no column or GEMM choices)."""
    return {k: policy[k] for k in ("max_workspace_bytes", "cache_chunk_bytes", "memory_limit")}


def _threaded_policy(policy: dict[str, Any]) -> dict[str, Any]:
    """:func:`_chunked_policy` and the threads the chunks may run on (kn2row)."""
    return {**_chunked_policy(policy), "unit_map": policy["unit_map"]}


def _forward_of(forward: Callable[..., Array], policy_of: Callable[..., dict[str, Any]] = _chunked_policy,
                **fixed: Any) -> Callable[..., Array]:
    """An :class:`Algorithm`'s forward from a pass ``forward(x, weight, bias, geom, **policy)``."""
    def run(ctx: ConvContext, bias: Array | None, policy: dict[str, Any], keep_cols: bool) -> Array:
        return forward(ctx.x, ctx.weight, bias, ctx.geom, **fixed, **policy_of(policy))
    return run


def _backward_of(backward: Callable[..., tuple[Array | None, Array]],
                 policy_of: Callable[..., dict[str, Any]] = _chunked_policy, **fixed: Any) -> Callable[..., Any]:
    """An :class:`Algorithm`'s backward from a pass ``backward(dy, x, weight, geom, need_input_grad=, **policy)``."""
    def run(ctx: ConvContext, dy: Array, policy: dict[str, Any], need_input_grad: bool) -> tuple[Array | None, Array]:
        return backward(dy, ctx.x, ctx.weight, ctx.geom, need_input_grad=need_input_grad, **fixed,
                        **policy_of(policy))
    return run


def _any_geometry(geom: ConvGeometry, channels: int | None = None) -> str | None:
    return None


def _geometry_only(unsupported: Callable[[ConvGeometry], str | None]) -> Callable[[ConvGeometry, int | None], Any]:
    def check(geom: ConvGeometry, channels: int | None = None) -> str | None:
        return unsupported(geom)
    return check


# name -> Algorithm, in the order auto-tuning times them; a new algorithm is one line here (docs/algorithms.md).
# FFT's float32 bound grows with the transform size S, log2(prod(S)) / 2 eps32: looser than auto's beyond 256
# points, so auto-tuning never times it (it is there to be asked for by name).
REGISTRY: dict[str, Algorithm] = {
    "im2col": Algorithm(_any_geometry, _im2col_forward, _im2col_backward, 4.0),
    "winograd": Algorithm(_geometry_only(winograd_unsupported), _forward_of(winograd_forward, m=2),
                          _backward_of(winograd_backward, m=2), 4.0),
    "winograd4x4": Algorithm(_geometry_only(winograd_unsupported), _forward_of(winograd_forward, m=4),
                             _backward_of(winograd_backward, m=4), 32.0),
    "direct": Algorithm(direct_unsupported, _forward_of(direct_forward), _backward_of(direct_backward), 4.0),
    "kn2row": Algorithm(_geometry_only(kn2row_unsupported), _forward_of(kn2row_forward, _threaded_policy),
                        _backward_of(kn2row_backward, _threaded_policy), 4.0),
    "fft": Algorithm(_any_geometry, _forward_of(fft_forward), _backward_of(fft_backward), math.inf),
}
ALGORITHMS = ("auto", *REGISTRY)
# auto's documented float32 bound (eps32 units): auto-tuning only times algorithms whose bound is no looser
AUTO_FLOAT32_BOUND = 4.0


def choose_algorithm(algorithm: object, geom: ConvGeometry, channels: int | None = None,
                     backend: Backend | None = None) -> str:
    """The algorithm that computes a convolution of geometry ``geom`` (``channels`` input channels, where known)
    when ``algorithm`` is asked for on ``backend`` (None: NumPy's rule), by rule.

    A name of :data:`REGISTRY` is taken as asked; ValueError when it cannot do ``geom``, naming why, or for an
    unknown name.  ``"auto"`` is kn2row where :func:`~xpconv._kn2row.kn2row_preferred` says it measured faster
    (2-D and 3-D, stride 1 along the first axis, no groups, 8 or more input channels) on a backend that measured it
    (:attr:`~xpconv.backends.Backend.kn2row_rule`: NumPy), else im2col: neither Winograd, the direct algorithm
    nor FFT measured a clear win on the suite's layers (docs/algorithms.md); :func:`select_algorithm` also keeps
    im2col where one sample is over the workspace cap or the call is small (:data:`KN2ROW_MIN_MACS`), and with
    auto-tuning on times the candidates instead.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(map(repr, ALGORITHMS))}, got {algorithm!r}")
    if algorithm == "auto":
        measured = backend is None or backend.kn2row_rule
        return "kn2row" if measured and kn2row_preferred(geom, channels) else "im2col"
    if (why := REGISTRY[str(algorithm)].unsupported(geom, channels)) is not None:
        raise ValueError(f"algorithm={algorithm!r} cannot compute this convolution: {why}; use 'im2col' or 'auto'")
    return str(algorithm)


# kn2row's few more array operations cost about 75 µs a call on NumPy (benchmarks/tiny_call.py: 2.9x torch's time
# against im2col's 2.0x on a 1x4x8x8 input); below this many multiply-adds a call, auto keeps im2col.
KN2ROW_MIN_MACS = 2**24


def _kn2row_pays(ctx: ConvContext, max_workspace_bytes: int | None) -> bool:
    """Whether auto's kn2row rule holds for ctx's shapes: the call has at least :data:`KN2ROW_MIN_MACS`
    multiply-adds and one sample's workspace fits the cap."""
    return _kn2row_fits(ctx.geom, tuple(ctx.x.shape), tuple(ctx.weight.shape), itemsize(ctx.x), max_workspace_bytes)


@lru_cache(maxsize=1024)
def _kn2row_fits(geom: ConvGeometry, x_shape: tuple[int, ...], w_shape: tuple[int, ...], item: int,
                 max_workspace_bytes: int | None) -> bool:
    if x_shape[0] * math.prod(w_shape) * math.prod(geom.output_shape(x_shape[2:])) < KN2ROW_MIN_MACS:
        return False
    cap = check_max_workspace_bytes(max_workspace_bytes)
    return cap is None or workspace_bytes(geom, x_shape, w_shape[0], item) <= cap


def _candidates(geom: ConvGeometry, channels: int) -> list[str]:
    """What auto-tuning may pick for ``geom``: the algorithms that can compute it, within auto's float32 bound."""
    return [name for name, a in REGISTRY.items()
            if a.float32_bound <= AUTO_FLOAT32_BOUND and a.unsupported(geom, channels) is None]


def select_algorithm(algorithm: object, ctx: ConvContext, bias: Array | None,
                     max_workspace_bytes: int | None) -> str:
    """:func:`choose_algorithm`, except that ``"auto"`` under auto-tuning (:mod:`xpconv.tuning`) takes the
    fastest candidate for ctx's shapes, geometry, dtype, library and device: timed once per process (forward and
    backward, as a training step runs them), then cached."""
    chosen = choose_algorithm(algorithm, ctx.geom, ctx.x.shape[1], ctx.backend)
    if algorithm != "auto":
        return chosen
    if not autotune_enabled():
        return "im2col" if chosen == "kn2row" and not _kn2row_pays(ctx, max_workspace_bytes) else chosen
    key = (ctx.backend.name, str(ctx.backend.device), str(ctx.x.dtype), tuple(ctx.x.shape), tuple(ctx.weight.shape),
           ctx.geom, max_workspace_bytes)
    policy = engine_policy(ctx.backend, max_workspace_bytes)

    def step(name: str) -> None:                                        # forward + backward on a copy of ctx
        trial = replace(ctx, cols=None, algorithm=name)
        with ctx.backend.activate():
            y = REGISTRY[name].forward(trial, bias, policy, True)
            REGISTRY[name].backward(trial, y, policy, True)

    return tuned_choice(key, _candidates(ctx.geom, ctx.x.shape[1]), step, ctx.backend)


def _weight_layout(channels_last: bool) -> str:
    return "(O, *kernel, C // groups)" if channels_last else "(O, C // groups, *kernel)"


def _check_ranks(nd: int, x: Array, weight: Array, channels_last: bool) -> None:
    layout = "(N, *spatial, C)" if channels_last else "(N, C, *spatial)"
    if x.ndim not in (nd + 1, nd + 2):
        raise ValueError(f"conv{nd}d expects x of rank {nd + 2} {layout} or {nd + 1} (unbatched), "
                         f"got shape {tuple(x.shape)}")
    if weight.ndim != nd + 2:
        raise ValueError(f"conv{nd}d expects weight of rank {nd + 2} {_weight_layout(channels_last)}, "
                         f"got shape {tuple(weight.shape)}")


@dataclass(frozen=True)
class ConvSpec:
    """The functional API's hyper-parameters: a geometry still waiting for its kernel, which is the weight's.

    :func:`prepare` completes it once it has checked the weight, so every check runs once per call.
    """

    nd: int
    stride: int | Sequence[int]
    padding: int | Sequence[int] | str
    dilation: int | Sequence[int]
    groups: int

    def geometry(self, weight_shape: tuple[int, ...]) -> ConvGeometry:
        """The validated geometry for a channels-first weight (O, C // groups, *kernel)."""
        kernel = weight_shape[2:]
        if any(k < 1 for k in kernel):
            raise ValueError(f"kernel sizes must be >= 1, got weight shape {weight_shape}")
        return make_geometry(tuple(kernel), self.stride, self.padding, self.dilation, self.groups)


def _to_channels_first(xp: Any, a: Array, channels_last: bool) -> Array:
    """(N, *spatial, C) -> (N, C, *spatial) as a view; identity when channels-first already."""
    if not channels_last:
        return a
    return xp.permute_dims(a, (0, a.ndim - 1, *range(1, a.ndim - 1)))


def _from_channels_first(xp: Any, a: Array, channels_last: bool) -> Array:
    if not channels_last:
        return a
    return xp.permute_dims(a, (0, *range(2, a.ndim), 1))


def prepare(x: Array, weight: Array, bias: Array | None, geom: ConvGeometry | ConvSpec, *,
            channels_last: bool = False, grad_output: Array | None = None) -> ConvContext:
    """Validate x, weight and bias against ``geom`` (a layer's, or the functional API's :class:`ConvSpec`
    completed here with the weight's kernel); put x and weight channels-first and batched."""
    xp = namespace_of(x, weight, bias, grad_output, names=["x", "weight", "bias", "grad_output"])
    _check_ranks(geom.nd, x, weight, channels_last)
    batched = x.ndim == geom.nd + 2
    if not batched:
        x = xp.expand_dims(x, axis=0)
    x = _to_channels_first(xp, x, channels_last)
    weight = _to_channels_first(xp, weight, channels_last)
    if isinstance(geom, ConvSpec):
        geom = geom.geometry(tuple(weight.shape))
    o, cg, *kernel = weight.shape
    c, g = x.shape[1], geom.groups
    if tuple(kernel) != geom.kernel:
        raise ValueError(f"weight has kernel {tuple(kernel)} but the layer was built for {geom.kernel}")
    if c % g:
        raise ValueError(f"groups={g} does not divide the {c} input channels")
    if o % g:
        raise ValueError(f"groups={g} does not divide the {o} output channels (weight.shape[0])")
    if cg * g != c:
        raise ValueError(f"x has {c} channels but weight expects {cg} x groups={g} = "
                         f"{cg * g} (weight shape {tuple(weight.shape)})")
    out = geom.output_shape(x.shape[2:])
    if any(s < 1 for s in out):
        span = [d * (k - 1) + 1 for d, k in zip(geom.dilation, kernel, strict=True)]
        raise ValueError(f"kernel extent {span} (dilation included) is larger than the padded input "
                         f"{list(geom.padded_shape(x.shape[2:]))}")
    if bias is not None and (bias.ndim != 1 or bias.shape[0] != o):
        raise ValueError(f"bias must have shape ({o},) for {o} output channels, got {tuple(bias.shape)}")
    return ConvContext(xp, x, weight, geom, batched, channels_last, (x.shape[0], o, *out), Backend.from_array(x))


def _finish(xp: Any, a: Array, batched: bool, channels_last: bool) -> Array:
    a = _from_channels_first(xp, a, channels_last)
    return a if batched else a[0, ...]


def conv(x: Array, weight: Array, bias: Array | None, geom: ConvGeometry | ConvSpec, *, channels_last: bool = False,
         max_workspace_bytes: int | None = DEFAULT_MAX_WORKSPACE_BYTES, keep_cols: bool = False,
         algorithm: str = "auto") -> tuple[Array, ConvContext]:
    """Validated forward pass: (y in the caller's layout, the :class:`ConvContext` backward needs).

    ``algorithm``: see :func:`choose_algorithm`; backward uses the one chosen here."""
    check_max_workspace_bytes(max_workspace_bytes)
    ctx = prepare(x, weight, bias, geom, channels_last=channels_last)
    ctx.algorithm = select_algorithm(algorithm, ctx, bias, max_workspace_bytes)
    policy = engine_policy(ctx.backend, max_workspace_bytes)
    with ctx.backend.activate():                     # the functional API too allocates on the inputs' device
        y = REGISTRY[ctx.algorithm].forward(ctx, bias, policy, keep_cols)
        return _finish(ctx.xp, y, ctx.batched, channels_last), ctx


def conv_grads(ctx: ConvContext, grad_output: Array, *, max_workspace_bytes: int | None = DEFAULT_MAX_WORKSPACE_BYTES,
               need_input_grad: bool = True) -> tuple[Array | None, Array, Array]:
    """(grad_input or None, grad_weight, grad_bias) in the caller's layout, from forward's context."""
    xp, nd = ctx.xp, ctx.geom.nd
    check_max_workspace_bytes(max_workspace_bytes)
    namespace_of(ctx.x, grad_output, names=["x", "grad_output"])
    dy = grad_output if ctx.batched else xp.expand_dims(grad_output, axis=0)
    dy = _to_channels_first(xp, dy, ctx.channels_last)
    if tuple(dy.shape) != ctx.out_shape:
        expected = list(ctx.out_shape) if ctx.batched else list(ctx.out_shape[1:])
        if ctx.channels_last:
            expected.append(expected.pop(-nd - 1))
        raise ValueError(f"grad_output must have the output's shape {tuple(expected)}, "
                         f"got {tuple(grad_output.shape)}")
    policy = engine_policy(ctx.backend, max_workspace_bytes)
    with ctx.backend.activate():
        grad_x, grad_w = REGISTRY[ctx.algorithm].backward(ctx, dy, policy, need_input_grad)
        grad_b = xp.sum(dy, axis=(0, *range(2, dy.ndim)))
        grad_w = _from_channels_first(xp, grad_w, ctx.channels_last)
        if grad_x is not None:
            grad_x = _finish(xp, grad_x, ctx.batched, ctx.channels_last)
        return grad_x, grad_w, grad_b


# -- the transposed convolution: the convolution's data gradient used as a forward --------------------
def conv_transpose_output_shape(geom: ConvGeometry, spatial: Sequence[int],
                                output_padding: Sequence[int]) -> tuple[int, ...]:
    """A transposed convolution's output size per axis:
    ``(size - 1) * stride - lo - hi + dilation * (kernel - 1) + output_padding + 1``."""
    return tuple((n - 1) * s - lo - hi + d * (k - 1) + op + 1 for n, s, (lo, hi), d, k, op in
                 zip(spatial, geom.stride, geom.padding, geom.dilation, geom.kernel, output_padding, strict=True))


def _associated(geom: ConvGeometry, output_padding: Sequence[int]) -> tuple[ConvGeometry, tuple[int, ...]]:
    """The associated convolution's geometry and the output's zero-filled high end, per axis.

    ``output_padding`` rows come off the associated convolution's high padding (its input z then maps to x's
    size exactly, whatever the stride); where they exceed it, the rest lies beyond every kernel tap's reach
    and receives only the bias.
    """
    pads = tuple((lo, max(hi - op, 0)) for (lo, hi), op in zip(geom.padding, output_padding, strict=True))
    extra = tuple(max(op - hi, 0) for (_, hi), op in zip(geom.padding, output_padding, strict=True))
    return replace(geom, padding=pads), extra


def _core(a: Array, extra: Sequence[int]) -> Array:
    """``a`` (N, C, *spatial) without its last ``extra`` elements along each spatial axis."""
    return a[(slice(None), slice(None), *(slice(0, n - e) for n, e in zip(a.shape[2:], extra, strict=True)))]


def conv_transpose(x: Array, weight: Array, bias: Array | None, geom: ConvGeometry, output_padding: Sequence[int], *,
                   max_workspace_bytes: int | None = DEFAULT_MAX_WORKSPACE_BYTES) -> Array:
    """y (N, out, *out_spatial) = col2im(Wᵀ · x) + b for x (N, in, *spatial) and weight (in, out // G, *kernel).

    It is dL/dz of the associated convolution z (N, out, *out_spatial) -> (N, in, *spatial) for dL/d(output) = x.
    Validates x against the weight: rank ``nd + 2``, ``in`` channels, a non-empty output.
    """
    check_max_workspace_bytes(max_workspace_bytes)
    xp = namespace_of(x, weight, bias, names=["x", "weight", "bias"])
    nd, c_in = geom.nd, weight.shape[0]
    if x.ndim != nd + 2 or x.shape[1] != c_in:
        raise ValueError(f"ConvTranspose{nd}d expects x of shape (N, {c_in}, {CONV_ND[nd]['spatial']}), "
                         f"got {tuple(x.shape)}")
    assoc, extra = _associated(geom, output_padding)
    out = conv_transpose_output_shape(geom, x.shape[2:], output_padding)
    core = tuple(o - e for o, e in zip(out, extra, strict=True))
    if any(n < 1 for n in core):
        raise ValueError(f"input {tuple(x.shape[2:])} gives an empty output {out} (without the output padding "
                         f"beyond the kernel's reach: {core}) with padding {geom.padding}")
    backend = Backend.from_array(x)
    with backend.activate():
        y = conv_backward_data(x, weight, assoc, core, **engine_policy(backend, max_workspace_bytes))
        if any(extra):
            full = xp.zeros((*y.shape[:2], *out), dtype=y.dtype, device=device(y))
            full[(slice(None), slice(None), *(slice(0, n) for n in core))] = y
            y = full
        if bias is not None:
            y = y + xp.reshape(bias, (1, -1) + (1,) * nd)
        return y


def conv_transpose_grads(x: Array, weight: Array, geom: ConvGeometry, output_padding: Sequence[int],
                         grad_output: Array, *, max_workspace_bytes: int | None = DEFAULT_MAX_WORKSPACE_BYTES,
                         ) -> tuple[Array, Array, Array]:
    """(grad_input, grad_weight, grad_bias) of :func:`conv_transpose` at x for grad_output = dL/dy.

    grad_input is the associated convolution's forward of grad_output, grad_weight that convolution's
    weight gradient with the roles of its input (grad_output) and output gradient (x).
    """
    check_max_workspace_bytes(max_workspace_bytes)
    xp = namespace_of(grad_output, x, names=["grad_output", "x"])
    expected = (x.shape[0], weight.shape[1] * geom.groups, *conv_transpose_output_shape(geom, x.shape[2:],
                                                                                         output_padding))
    if tuple(grad_output.shape) != expected:
        raise ValueError(f"grad_output must have the output's shape {expected}, got {tuple(grad_output.shape)}")
    assoc, extra = _associated(geom, output_padding)
    dy = _core(grad_output, extra) if any(extra) else grad_output
    backend = Backend.from_array(x)
    policy = engine_policy(backend, max_workspace_bytes)
    with backend.activate():
        grad_x, cols = conv_forward(dy, weight, None, assoc, keep_cols=True, **policy)
        _, grad_w = conv_backward(grad_output=x, x=dy, weight=weight, geom=assoc, cols=cols, need_input_grad=False,
                                  **policy)
        return grad_x, grad_w, xp.sum(grad_output, axis=(0, *range(2, grad_output.ndim)))


# -- windows, for pooling ---------------------------------------------------------------------------
def unfold(x: Array, geom: ConvGeometry) -> Array:
    """x (N, C, *spatial) -> windows (N, C, K, *out): each output position's kernel window, padding as zeros."""
    xp = namespace(x)
    n, c, *spatial = x.shape
    return xp.reshape(im2col(x, geom), (n, c, math.prod(geom.kernel), *geom.output_shape(spatial)))


def fold(windows: Array, geom: ConvGeometry, spatial: Sequence[int]) -> Array:
    """The adjoint of :func:`unfold`: window gradients (N, C, K, *out) summed back into (N, C, *spatial)."""
    xp = namespace(windows)
    n, c, _, *out = windows.shape
    return col2im(xp.reshape(windows, (n, c, *geom.kernel, *out)), geom, tuple(spatial))
