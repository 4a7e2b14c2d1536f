"""Convolutions with PyTorch's names and semantics: validate the input, run the engine, shape the result.

``x`` is ``(N, C, *spatial)`` (or ``(C, *spatial)`` unbatched) and ``weight`` is
``(O, C // groups, *kernel)``; with ``channels_last=True`` they are
``(N, *spatial, C)`` and ``(O, *kernel, C // groups)``.  The namespace and
device come from the inputs, and so do those of every result.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

from array_api_compat import array_namespace, device

from ._columns import ConvGeometry
from ._engine import DEFAULT_MAX_WORKSPACE_BYTES, conv_backward, conv_forward

__all__ = [
    "conv1d", "conv2d", "conv3d",
    "conv1d_backward", "conv2d_backward", "conv3d_backward",
    "namespace_of", "make_geometry",
]


def namespace_of(*arrays, names=None):
    """The common Array API namespace of ``arrays`` (None entries skipped).

    Raises TypeError for non-arrays, arrays of different libraries or different
    floating dtypes, and ValueError for arrays on different devices: xpconv never
    converts or copies silently.
    """
    names = names or [f"argument {i}" for i in range(len(arrays))]
    given = [(n, a) for n, a in zip(names, arrays) if a is not None]
    for name, a in given:
        try:
            array_namespace(a)
        except TypeError:
            raise TypeError(f"{name} must be an array (NumPy, CuPy, torch or array-api-strict), "
                            f"got {type(a).__name__}") from None
    try:
        xp = array_namespace(*(a for _, a in given))
    except TypeError:
        libs = ", ".join(f"{n}: {type(a).__module__.split('.')[0]}" for n, a in given)
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

    xp: object
    x: object
    weight: object
    geom: ConvGeometry
    batched: bool
    channels_last: bool
    out_shape: tuple
    cols: object = None


def _int_tuple(value, nd: int, name: str, minimum: int) -> tuple[int, ...]:
    values = (value,) * nd if isinstance(value, numbers.Integral) else value
    if not isinstance(values, (tuple, list)) or len(values) != nd:
        raise ValueError(f"{name} must be an int or a tuple of {nd} ints, got {value!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must contain ints, got {value!r}")
        if v < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return tuple(int(v) for v in values)


def make_geometry(kernel, stride, padding, dilation, groups) -> ConvGeometry:
    """Validate the hyper-parameters and turn them into a :class:`ConvGeometry`.

    ``padding``: int, tuple of ints (symmetric per axis), "valid" or "same"
    (stride 1 only; an odd total goes to the high side, as in PyTorch).
    """
    nd = len(kernel)
    stride = _int_tuple(stride, nd, "stride", 1)
    dilation = _int_tuple(dilation, nd, "dilation", 1)
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if isinstance(padding, str):
        if padding == "valid":
            pads = ((0, 0),) * nd
        elif padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"padding='same' needs stride 1 (as in PyTorch), got stride={stride}")
            totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
            pads = tuple((t // 2, t - t // 2) for t in totals)
        else:
            raise ValueError(f"padding must be an int, a tuple of ints, 'valid' or 'same', got {padding!r}")
    else:
        pads = tuple((p, p) for p in _int_tuple(padding, nd, "padding", 0))
    return ConvGeometry(tuple(kernel), stride, pads, dilation, int(groups))


def _to_channels_first(xp, a, channels_last: bool):
    """(N, *spatial, C) -> (N, C, *spatial) as a view; identity when channels-first already."""
    if not channels_last:
        return a
    return xp.permute_dims(a, (0, a.ndim - 1, *range(1, a.ndim - 1)))


def _from_channels_first(xp, a, channels_last: bool):
    if not channels_last:
        return a
    return xp.permute_dims(a, (0, *range(2, a.ndim), 1))


def _prepare(x, weight, bias, nd, stride, padding, dilation, groups, channels_last, grad_output=None):
    """Validate everything and put x and weight channels-first and batched, in a :class:`ConvContext`."""
    xp = namespace_of(x, weight, bias, grad_output, names=["x", "weight", "bias", "grad_output"])
    layout = "(N, *spatial, C)" if channels_last else "(N, C, *spatial)"
    if x.ndim not in (nd + 1, nd + 2):
        raise ValueError(f"conv{nd}d expects x of rank {nd + 2} {layout} or {nd + 1} (unbatched), "
                         f"got shape {tuple(x.shape)}")
    if weight.ndim != nd + 2:
        wl = "(O, *kernel, C // groups)" if channels_last else "(O, C // groups, *kernel)"
        raise ValueError(f"conv{nd}d expects weight of rank {nd + 2} {wl}, got shape {tuple(weight.shape)}")
    batched = x.ndim == nd + 2
    if not batched:
        x = xp.expand_dims(x, axis=0)
    x = _to_channels_first(xp, x, channels_last)
    weight = _to_channels_first(xp, weight, channels_last)
    o, cg, *kernel = weight.shape
    c = x.shape[1]
    geom = make_geometry(kernel, stride, padding, dilation, groups)
    if c % geom.groups:
        raise ValueError(f"groups={geom.groups} does not divide the {c} input channels")
    if o % geom.groups:
        raise ValueError(f"groups={geom.groups} does not divide the {o} output channels (weight.shape[0])")
    if cg * geom.groups != c:
        raise ValueError(f"x has {c} channels but weight expects {cg} x groups={geom.groups} = "
                         f"{cg * geom.groups} (weight shape {tuple(weight.shape)})")
    if any(k < 1 for k in kernel):
        raise ValueError(f"kernel sizes must be >= 1, got weight shape {tuple(weight.shape)}")
    out = geom.output_shape(x.shape[2:])
    if any(s < 1 for s in out):
        padded = [s + lo + hi for s, (lo, hi) in zip(x.shape[2:], geom.padding)]
        span = [d * (k - 1) + 1 for d, k in zip(geom.dilation, kernel)]
        raise ValueError(f"kernel extent {span} (dilation included) is larger than the padded input {padded}")
    if bias is not None and (bias.ndim != 1 or bias.shape[0] != o):
        raise ValueError(f"bias must have shape ({o},) for {o} output channels, got {tuple(bias.shape)}")
    return ConvContext(xp, x, weight, geom, batched, channels_last, (x.shape[0], o, *out))


def _finish(xp, a, batched, channels_last):
    a = _from_channels_first(xp, a, channels_last)
    return a if batched else a[0, ...]


def _forward(nd, x, weight, bias, stride, padding, dilation, groups, channels_last, max_workspace_bytes,
             keep_cols=False):
    """Validated forward pass: (y in the caller's layout, the ConvContext backward needs)."""
    ctx = _prepare(x, weight, bias, nd, stride, padding, dilation, groups, channels_last)
    y, ctx.cols = conv_forward(ctx.x, ctx.weight, bias, ctx.geom, max_workspace_bytes=max_workspace_bytes,
                               keep_cols=keep_cols)
    return _finish(ctx.xp, y, ctx.batched, channels_last), ctx


def _backward(ctx: ConvContext, grad_output, max_workspace_bytes, need_input_grad=True):
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
                                   need_input_grad=need_input_grad, max_workspace_bytes=max_workspace_bytes)
    grad_b = xp.sum(dy, axis=(0, *range(2, dy.ndim)))
    grad_w = _from_channels_first(xp, grad_w, ctx.channels_last)
    if grad_x is not None:
        grad_x = _finish(xp, grad_x, ctx.batched, ctx.channels_last)
    return grad_x, grad_w, grad_b


def _conv(nd, x, weight, bias, stride, padding, dilation, groups, channels_last, max_workspace_bytes):
    return _forward(nd, x, weight, bias, stride, padding, dilation, groups, channels_last, max_workspace_bytes)[0]


def _conv_backward(nd, grad_output, x, weight, stride, padding, dilation, groups, channels_last,
                   max_workspace_bytes):
    ctx = _prepare(x, weight, None, nd, stride, padding, dilation, groups, channels_last, grad_output)
    return _backward(ctx, grad_output, max_workspace_bytes)


_WS = DEFAULT_MAX_WORKSPACE_BYTES


def conv1d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1, channels_last=False,
           max_workspace_bytes=_WS):
    """1-D convolution: x (N, C, L), weight (O, C // groups, k) -> y (N, O, OL)."""
    return _conv(1, x, weight, bias, stride, padding, dilation, groups, channels_last, max_workspace_bytes)


def conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1, channels_last=False,
           max_workspace_bytes=_WS):
    """2-D convolution: x (N, C, H, W), weight (O, C // groups, kh, kw) -> y (N, O, OH, OW).

    With ``channels_last=True``: x (N, H, W, C), weight (O, kh, kw, C // groups) -> y (N, OH, OW, O).
    ``max_workspace_bytes`` caps the im2col buffer; larger batches are processed in chunks.
    """
    return _conv(2, x, weight, bias, stride, padding, dilation, groups, channels_last, max_workspace_bytes)


def conv3d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1, channels_last=False,
           max_workspace_bytes=_WS):
    """3-D convolution: x (N, C, D, H, W), weight (O, C // groups, kd, kh, kw) -> y (N, O, OD, OH, OW)."""
    return _conv(3, x, weight, bias, stride, padding, dilation, groups, channels_last, max_workspace_bytes)


def conv1d_backward(grad_output, x, weight, *, stride=1, padding=0, dilation=1, groups=1, channels_last=False,
                    max_workspace_bytes=_WS):
    """(grad_input, grad_weight, grad_bias) of :func:`conv1d` given grad_output = dL/dy."""
    return _conv_backward(1, grad_output, x, weight, stride, padding, dilation, groups, channels_last,
                          max_workspace_bytes)


def conv2d_backward(grad_output, x, weight, *, stride=1, padding=0, dilation=1, groups=1, channels_last=False,
                    max_workspace_bytes=_WS):
    """(grad_input, grad_weight, grad_bias) of :func:`conv2d` given grad_output = dL/dy.

    grad_input = col2im(Wᵀ · dY) has x's shape, grad_weight has weight's, and
    grad_bias (O,) is dY summed over the batch and spatial axes.
    """
    return _conv_backward(2, grad_output, x, weight, stride, padding, dilation, groups, channels_last,
                          max_workspace_bytes)


def conv3d_backward(grad_output, x, weight, *, stride=1, padding=0, dilation=1, groups=1, channels_last=False,
                    max_workspace_bytes=_WS):
    """(grad_input, grad_weight, grad_bias) of :func:`conv3d` given grad_output = dL/dy."""
    return _conv_backward(3, grad_output, x, weight, stride, padding, dilation, groups, channels_last,
                          max_workspace_bytes)
