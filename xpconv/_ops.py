"""The op layer: validate the arrays once, put them in the engine's layout, run the engine, shape the results.

Both the functional API (:mod:`xpconv.functional`) and the layers (:mod:`xpconv.nn`) call these
entry points; nothing else calls the engine.  A convolution in the caller's layout is ``x`` (N, C, *spatial)
or unbatched (C, *spatial), ``weight`` (O, C // groups, *kernel); with ``channels_last`` they are
(N, *spatial, C) and (O, *kernel, C // groups).  The engine always sees batched, channels-first arrays.
The namespace and device come from the inputs, and so do those of every result; the engine's chunking
policy comes from the inputs' :class:`~xpconv.backends.Backend`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from array_api_compat import array_namespace, device

from ._columns import col2im, im2col
from ._engine import DEFAULT_MAX_WORKSPACE_BYTES, conv_backward, conv_backward_data, conv_forward
from ._geometry import ConvGeometry, make_geometry
from ._typing import Array
from .backends import Backend, library_of

__all__ = ["ConvContext", "namespace_of", "ConvSpec", "prepare", "conv", "conv_grads",
           "conv_transpose", "conv_transpose_grads", "unfold", "fold", "DEFAULT_MAX_WORKSPACE_BYTES"]

def namespace_of(*arrays: Array | None, names: Sequence[str] | None = None) -> Any:
    """The common Array API namespace of ``arrays`` (None entries skipped).

    Raises TypeError for non-arrays, arrays of different libraries or different
    floating dtypes, and ValueError for arrays on different devices: xpconv never
    converts or copies silently.
    """
    names = names or [f"argument {i}" for i in range(len(arrays))]
    given = [(n, a) for n, a in zip(names, arrays, strict=True) if a is not None]
    for name, a in given:
        try:
            array_namespace(a)
        except TypeError:
            raise TypeError(f"{name} must be an array (NumPy, CuPy, torch or array-api-strict), "
                            f"got {type(a).__name__}") from None
    try:
        xp = array_namespace(*(a for _, a in given))
    except TypeError:
        libs = ", ".join(f"{n}: {library_of(a) or type(a).__name__}" for n, a in given)
        raise TypeError(f"arrays come from different libraries ({libs}); move them to one backend first, "
                        "e.g. with xpconv.get_backend(name).asarray(...)") from None
    first_name, first = given[0]
    for name, a in given[1:]:
        if device(a) != device(first):
            raise ValueError(f"{name} is on device {device(a)!r} but {first_name} is on {device(first)!r}; "
                             "xpconv does not copy between devices silently")
    for name, a in given:
        if not xp.isdtype(a.dtype, "real floating"):
            raise TypeError(f"{name} must have a real floating dtype (float32 or float64), got {a.dtype}")
        if a.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {a.dtype} but {first_name} has {first.dtype}; "
                            "mixed float dtypes are not promoted silently, cast one of them")
    return xp


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
    cache_chunk_bytes: int | None
    cols: Array | None = None


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
    return ConvContext(xp, x, weight, geom, batched, channels_last, (x.shape[0], o, *out),
                       Backend.from_array(x).cache_chunk_bytes)


def _finish(xp: Any, a: Array, batched: bool, channels_last: bool) -> Array:
    a = _from_channels_first(xp, a, channels_last)
    return a if batched else a[0, ...]


def conv(x: Array, weight: Array, bias: Array | None, geom: ConvGeometry | ConvSpec, *, channels_last: bool = False,
         max_workspace_bytes: int | None = DEFAULT_MAX_WORKSPACE_BYTES,
         keep_cols: bool = False) -> tuple[Array, ConvContext]:
    """Validated forward pass: (y in the caller's layout, the :class:`ConvContext` backward needs)."""
    ctx = prepare(x, weight, bias, geom, channels_last=channels_last)
    y, ctx.cols = conv_forward(ctx.x, ctx.weight, bias, ctx.geom, max_workspace_bytes=max_workspace_bytes,
                                      cache_chunk_bytes=ctx.cache_chunk_bytes, keep_cols=keep_cols)
    return _finish(ctx.xp, y, ctx.batched, channels_last), ctx


def conv_grads(ctx: ConvContext, grad_output: Array, *, max_workspace_bytes: int | None = DEFAULT_MAX_WORKSPACE_BYTES,
               need_input_grad: bool = True) -> tuple[Array | None, Array, Array]:
    """(grad_input or None, grad_weight, grad_bias) in the caller's layout, from forward's context."""
    xp, nd = ctx.xp, ctx.geom.nd
    namespace_of(ctx.x, grad_output, names=["x", "grad_output"])
    dy = grad_output if ctx.batched else xp.expand_dims(grad_output, axis=0)
    dy = _to_channels_first(xp, dy, ctx.channels_last)
    if tuple(dy.shape) != ctx.out_shape:
        expected = list(ctx.out_shape) if ctx.batched else list(ctx.out_shape[1:])
        if ctx.channels_last:
            expected.append(expected.pop(-nd - 1))
        raise ValueError(f"grad_output must have the output's shape {tuple(expected)}, "
                         f"got {tuple(grad_output.shape)}")
    grad_x, grad_w = conv_backward(dy, ctx.x, ctx.weight, ctx.geom, cols=ctx.cols,
                                          need_input_grad=need_input_grad, max_workspace_bytes=max_workspace_bytes,
                                          cache_chunk_bytes=ctx.cache_chunk_bytes)
    grad_b = xp.sum(dy, axis=(0, *range(2, dy.ndim)))
    grad_w = _from_channels_first(xp, grad_w, ctx.channels_last)
    if grad_x is not None:
        grad_x = _finish(xp, grad_x, ctx.batched, ctx.channels_last)
    return grad_x, grad_w, grad_b


# -- the transposed convolution: the convolution's data gradient used as a forward --------------------
def conv_transpose(x: Array, weight: Array, bias: Array | None, geom: ConvGeometry, out_spatial: Sequence[int], *,
                   max_workspace_bytes: int | None = DEFAULT_MAX_WORKSPACE_BYTES) -> Array:
    """y (N, out, *out_spatial) = col2im(Wᵀ · x) + b for x (N, in, *spatial) and weight (in, out // G, *kernel).

    It is dL/dz of the associated convolution z (N, out, *out_spatial) -> (N, in, *spatial) for dL/d(output) = x.
    """
    xp = array_namespace(x, weight)
    y = conv_backward_data(x, weight, geom, out_spatial, max_workspace_bytes=max_workspace_bytes,
                                  cache_chunk_bytes=Backend.from_array(x).cache_chunk_bytes)
    if bias is not None:
        y = y + xp.reshape(bias, (1, -1) + (1,) * geom.nd)
    return y


def conv_transpose_grads(x: Array, weight: Array, geom: ConvGeometry, grad_output: Array, *,
                         max_workspace_bytes: int | None = DEFAULT_MAX_WORKSPACE_BYTES) -> tuple[Array, Array, Array]:
    """(grad_input, grad_weight, grad_bias) of :func:`conv_transpose` at x for grad_output = dL/dy.

    grad_input is the associated convolution's forward of grad_output, grad_weight that convolution's
    weight gradient with the roles of its input (grad_output) and output gradient (x).
    """
    xp = array_namespace(x, grad_output)
    policy = Backend.from_array(x).cache_chunk_bytes
    grad_x, cols = conv_forward(grad_output, weight, None, geom, keep_cols=True,
                                       max_workspace_bytes=max_workspace_bytes, cache_chunk_bytes=policy)
    _, grad_w = conv_backward(grad_output=x, x=grad_output, weight=weight, geom=geom, cols=cols,
                                     need_input_grad=False, max_workspace_bytes=max_workspace_bytes,
                                     cache_chunk_bytes=policy)
    return grad_x, grad_w, xp.sum(grad_output, axis=(0, *range(2, grad_output.ndim)))


# -- windows, for pooling ---------------------------------------------------------------------------
def unfold(x: Array, geom: ConvGeometry) -> Array:
    """x (N, C, *spatial) -> windows (N, C, K, *out): each output position's kernel window, padding as zeros."""
    xp = array_namespace(x)
    n, c, *spatial = x.shape
    return xp.reshape(im2col(x, geom), (n, c, math.prod(geom.kernel), *geom.output_shape(spatial)))


def fold(windows: Array, geom: ConvGeometry, spatial: Sequence[int]) -> Array:
    """The adjoint of :func:`unfold`: window gradients (N, C, K, *out) summed back into (N, C, *spatial)."""
    xp = array_namespace(windows)
    n, c, _, *out = windows.shape
    return col2im(xp.reshape(windows, (n, c, *geom.kernel, *out)), geom, tuple(spatial))
