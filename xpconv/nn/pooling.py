"""Pooling layers in 1, 2 and 3 spatial dimensions, as PyTorch's: fixed windows and adaptive bins.

Shapes (``K = prod(kernel)``, ``*s`` the spatial axes, ``*o`` the output's):
    x        (N, C, *s)  or unbatched (C, *s)
    windows  (N, C, K, *o)        MaxPool*/AvgPool*: ``xpconv._ops.unfold`` of the convolution's im2col
    y        (N, C, *o)

Fixed windows (:class:`MaxPool2d`, :class:`AvgPool2d`, ...) reduce the im2col windows; backward folds the
window gradients back with col2im.  ``ceil_mode`` adds a high-side padding so that the last, clipped window
exists; it is masked (max) or left out of the divisor (average) exactly as PyTorch does.  Adaptive pools
(:class:`AdaptiveAvgPool2d`, ...) use PyTorch's bins ``[floor(i*L/o), ceil((i+1)*L/o))``: a reshape when
each ``o`` divides ``L`` (global pooling is the case ``o = 1``), else, for the average, one
``(o, L)`` bin-averaging matrix per axis (``tensordot``; backward multiplies by its transpose), and for the
maximum a gather of each bin (``take``; backward multiplies by the gather's one-hot matrix).
"""
from __future__ import annotations

import math

from array_api_compat import device

from .._docstrings import CONV_ND, STATELESS, fill_doc
from .._geometry import ConvGeometry
from .._ops import fold, namespace_of, unfold
from ..validation import int_tuple, positive_int
from .module import Module

__all__ = ["MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d",
           "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AdaptiveMaxPool2d"]

# -- shared docstring sections (see xpconv._docstrings); {spatial}/{out} come from CONV_ND --------------------
_COMMON_RAISES = """
    {raises_unavailable}
    ValueError
        If {bad_args},
        {bad_backend}.
    TypeError
        If a tuple argument holds a non-int.
"""

_FORWARD = """The pooled ``x``; in training mode keep what backward needs.

Parameters
----------
x : array
    ``(N, C, *s)`` or unbatched ``(C, *s)`` with one to three spatial axes ``*s`` (the layer's),
    real floating, of any backend.

Returns
-------
y : array
    ``(N, C, *o)`` (unbatched: ``(C, *o)``), ``x``'s dtype.

Raises
------
TypeError
    If ``x`` is not an array with a real floating dtype.
ValueError
    If ``x`` has the wrong rank, an empty spatial axis, or the window is larger than the padded input.
"""

_BACKWARD = """dL/dx for dL/dy; the forward cache is cleared once ``grad_output`` passed its checks.

Parameters
----------
grad_output : array
    dL/dy, the forward output's shape.

Returns
-------
grad_input : array
    dL/dx, the forward input's shape.

Raises
------
{raises_no_forward}
TypeError
    If ``grad_output`` is not an array with a real floating dtype.
ValueError
    If ``grad_output`` does not have the output's shape (the cache is kept, so a corrected call works).
"""

_WINDOW_ARGS = """
    kernel_size : int or tuple of {nd} int
        Window ``({kernel})``, each >= 1.
    stride : int, tuple of {nd} int or None, default None
        Step of the window, each >= 1; None: ``kernel_size``.
    padding : int or tuple of {nd} int, default 0
        Implicit padding on both sides of each spatial axis, each >= 0 and at most half the kernel size.
"""

_CEIL_MODE = """
    ceil_mode : bool, default False
        Round the output size up instead of down: a last window that starts inside the input or the low
        padding but runs past the high padding is kept, clipped.
"""

_MAX_DOC = """Max over each window: (N, C, {spatial}) -> (N, C, {out}); padding never wins (it acts as -inf).

    As ``torch.nn.MaxPool{nd}d``: ``{out_size}`` per axis (with ``ceil_mode`` rounded up, as in PyTorch).
    Backward routes each output gradient to its window's arg-max (the first one on ties).

    Parameters
    ----------
    {window_args}
    dilation : int or tuple of {nd} int, default 1
        Spacing between window taps, each >= 1.
    return_indices : bool, default False
        Only False: returning the arg-max indices is not supported.
    {ceil_mode}
    {backend_device_dtype}

    Raises
    ------
    {common_raises}
"""

_AVG_DOC = """Mean over each window: (N, C, {spatial}) -> (N, C, {out}).

    As ``torch.nn.AvgPool{nd}d``: ``{out_size}`` per axis with dilation 1 (with ``ceil_mode`` rounded
    up).  Each output is the window's sum divided by the window's size clipped to the padded input
    (``count_include_pad=True``) or to the input (``False``), or by ``divisor_override``.  Backward spreads
    each output gradient, divided the same way, over its window.

    Parameters
    ----------
    {window_args}
    {ceil_mode}
    count_include_pad : bool, default True
        Whether the zero padding counts in the divisor.
    divisor_override : int or None, default None
        A fixed divisor (>= 1) for every window (``torch.nn.AvgPool1d`` has no such argument); None: the
        window's size as above.
    {backend_device_dtype}

    Raises
    ------
    {common_raises}
"""

_ADAPTIVE_DOC = """{what} over adaptive bins: (N, C, {spatial}) -> (N, C, {out}) for any input size.

    As ``torch.nn.Adaptive{kind}Pool{nd}d``: along an axis of length ``L`` with ``o`` outputs, output ``i``
    {reduces} the bin ``[floor(i*L/o), ceil((i+1)*L/o))``; bins overlap when ``o`` does not divide ``L``.
    {cost}

    Parameters
    ----------
    output_size : {output_size_type}
        The output's spatial size ``({out})``, each >= 1{output_size_none}.
    {extra_args}
    {backend_device_dtype}

    Raises
    ------
    {common_raises}
"""


def _nd_doc(nd: int, **values: str) -> dict[str, str]:
    """The fill_doc values of an ``nd``-dimensional pooling docstring."""
    names = CONV_ND[nd]
    return {**STATELESS, **values, "nd": names["nd"], "spatial": names["spatial"], "out": names["out"],
            "kernel": names["kernel"], "window_args": _WINDOW_ARGS, "ceil_mode": _CEIL_MODE,
            "common_raises": _COMMON_RAISES, "out_size": "(L + 2 * padding - dilation * (k - 1) - 1) // stride + 1",
            "output_size_type": "int or tuple of 1 int" if nd == 1 else "int, None or tuple of {nd} int or None",
            "output_size_none": "" if nd == 1 else "; a None entry keeps the input's size on that axis"}


class _Pool(Module):
    """What every pooling shares: batched/unbatched input, the cache, the grad_output check.

    A subclass sets ``nd`` and defines ``_forward(xp, x) -> (y, state)`` on batched x (N, C, *s) and
    ``_backward(xp, dy, x_shape, state) -> dx``.
    """

    nd: int

    def __init__(self, *, backend=None, device=None, dtype="float32"):
        super().__init__(backend=backend, device=device, dtype=dtype)
        self._cache = None

    def _clear_cache(self) -> None:
        self._cache = None

    @fill_doc(body=_FORWARD)
    def forward(self, x):
        """{body}"""
        xp = namespace_of(x, names=["x"])
        nd, name = self.nd, type(self).__name__
        if x.ndim not in (nd + 1, nd + 2):
            spatial = CONV_ND[nd]["spatial"]
            raise ValueError(f"{name} expects x of shape (N, C, {spatial}) or (C, {spatial}), got {tuple(x.shape)}")
        if any(s < 1 for s in x.shape[-nd:]):
            raise ValueError(f"{name} needs non-empty spatial axes, got x of shape {tuple(x.shape)}")
        batched = x.ndim == nd + 2
        xb = x if batched else xp.expand_dims(x, axis=0)
        y, state = self._forward(xp, xb)
        if self.training:
            self._cache = (tuple(xb.shape), tuple(y.shape), batched, state)
        return y if batched else y[0, ...]

    @fill_doc(body=_BACKWARD)
    def backward(self, grad_output):
        """{body}"""
        x_shape, y_shape, batched, state = self._need_cache(self._cache)
        xp = namespace_of(grad_output, names=["grad_output"])
        self._check_grad_shape(grad_output, y_shape if batched else y_shape[1:])
        self._cache = None
        dy = grad_output if batched else xp.expand_dims(grad_output, axis=0)
        dx = self._backward(xp, dy, x_shape, state)
        return dx if batched else dx[0, ...]

    def _forward(self, xp, x):  # pragma: no cover - every pooling overrides it
        raise NotImplementedError

    def _backward(self, xp, dy, x_shape, state):  # pragma: no cover - every pooling overrides it
        raise NotImplementedError


# -- fixed windows ------------------------------------------------------------------------------------
def pool_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """PyTorch's pooling output length; with ``ceil_mode`` the last window must start before ``size + padding``."""
    span = dilation * (kernel - 1) + 1
    out = (size + 2 * padding - span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


class _WindowPool(_Pool):
    """MaxPool*/AvgPool*: kernel, stride, padding, dilation and ceil_mode, a geometry per input size."""

    def __init__(self, kernel_size, stride, padding, dilation, ceil_mode, *, backend, device, dtype):
        super().__init__(backend=backend, device=device, dtype=dtype)
        nd = self.nd
        self.kernel_size = int_tuple("kernel_size", kernel_size, nd, 1)
        self.stride = self.kernel_size if stride is None else int_tuple("stride", stride, nd, 1)
        self.padding = int_tuple("padding", padding, nd, 0)
        self.dilation = int_tuple("dilation", dilation, nd, 1)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size, strict=True)):
            raise ValueError(f"padding {self.padding} must be at most half of kernel_size {self.kernel_size} "
                             "(as in PyTorch)")
        self.ceil_mode = bool(ceil_mode)

    def _geometry(self, spatial) -> ConvGeometry:
        """The im2col geometry for ``spatial``: the high padding reaches the end of the last window."""
        axes = list(zip(spatial, self.kernel_size, self.stride, self.padding, self.dilation, strict=True))
        out = [pool_output_size(*a, self.ceil_mode) for a in axes]
        if any(o < 1 for o in out):
            padded = tuple(s + 2 * p for s, p in zip(spatial, self.padding, strict=True))
            raise ValueError(f"{type(self).__name__}: kernel {self.kernel_size} (dilation {self.dilation}) is larger "
                             f"than the padded input {padded}")
        high = [max(0, (o - 1) * s + d * (k - 1) + 1 - size - p)
                for o, (size, k, s, p, d) in zip(out, axes, strict=True)]
        return ConvGeometry(self.kernel_size, self.stride, tuple(zip(self.padding, high, strict=True)), self.dilation)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}")


class _MaxPool(_WindowPool):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False, *,
                 backend=None, device=None, dtype="float32"):
        if return_indices:
            raise ValueError(f"{type(self).__name__}(return_indices=True) is not supported; use return_indices=False")
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode, backend=backend, device=device,
                         dtype=dtype)

    def _forward(self, xp, x):
        geom = self._geometry(x.shape[2:])
        windows = unfold(x, geom)                                              # (N, C, K, *o)
        if geom.is_padded:
            # im2col pads with 0; mark the real taps from an all-ones image and exclude the rest exactly.
            inside = unfold(xp.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=device(x)), geom) > 0
            windows = xp.where(inside, windows, xp.full_like(windows, -math.inf))
        argmax = xp.argmax(windows, axis=2) if self.training else None          # (N, C, *o), first on ties
        return xp.max(windows, axis=2), (argmax, geom)

    def _backward(self, xp, dy, x_shape, state):
        argmax, geom = state
        taps = xp.arange(math.prod(self.kernel_size), dtype=argmax.dtype, device=device(argmax))
        hit = xp.expand_dims(argmax, axis=2) == xp.reshape(taps, (1, 1, -1) + (1,) * self.nd)  # one-hot over K
        grad = xp.expand_dims(dy, axis=2)
        return fold(xp.where(hit, grad, xp.zeros_like(grad)), geom, x_shape[2:])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dilation={self.dilation}"


class _AvgPool(_WindowPool):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None, *, backend=None, device=None, dtype="float32"):
        super().__init__(kernel_size, stride, padding, 1, ceil_mode, backend=backend, device=device, dtype=dtype)
        self.count_include_pad = bool(count_include_pad)
        self.divisor_override = None if divisor_override is None else positive_int("divisor_override",
                                                                                   divisor_override)

    def _divisor(self, xp, x, geom: ConvGeometry):
        """The divisor of each window as PyTorch's: a Python int when all agree, else (1, 1, *o) in x's dtype."""
        if self.divisor_override is not None:
            return self.divisor_override
        spatial = x.shape[2:]
        counts = []                                                             # per axis, per output
        for size, o, k, s, p in zip(spatial, geom.output_shape(spatial), self.kernel_size, self.stride,
                                    self.padding, strict=True):
            starts = [i * s - p for i in range(o)]
            if self.count_include_pad:
                counts.append([min(a + k, size + p) - a for a in starts])
            else:
                counts.append([min(a + k, size) - max(a, 0) for a in starts])
        if all(len(set(c)) == 1 for c in counts):
            return math.prod(c[0] for c in counts)
        divisor = 1.0
        for axis, c in enumerate(counts):
            shape = [1] * (2 + self.nd)
            shape[2 + axis] = len(c)
            divisor = divisor * xp.reshape(xp.asarray(c, dtype=x.dtype, device=device(x)), tuple(shape))
        return divisor

    def _forward(self, xp, x):
        geom = self._geometry(x.shape[2:])
        divisor = self._divisor(xp, x, geom)
        return xp.sum(unfold(x, geom), axis=2) / divisor, (divisor, geom)

    def _backward(self, xp, dy, x_shape, state):
        divisor, geom = state
        grad = xp.expand_dims(dy / divisor, axis=2)                             # (N, C, 1, *o)
        k = math.prod(self.kernel_size)
        return fold(xp.broadcast_to(grad, (*grad.shape[:2], k, *grad.shape[3:])), geom, x_shape[2:])

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, count_include_pad={self.count_include_pad}, "
                f"divisor_override={self.divisor_override}")


_MAX_ARGS = "``kernel_size``, ``stride``, ``padding`` or ``dilation`` has the wrong length or is out of range, " \
            "``padding`` exceeds half the kernel size, ``return_indices`` is True"
_AVG_ARGS = "``kernel_size``, ``stride`` or ``padding`` has the wrong length or is out of range, ``padding`` " \
            "exceeds half the kernel size, ``divisor_override`` is not a positive int"


@fill_doc(**_nd_doc(1, bad_args=_MAX_ARGS), body=_MAX_DOC)
class MaxPool1d(_MaxPool):
    """{body}
    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> x = np.array([[[1.0, 3.0, 2.0, 5.0, 4.0]]], dtype=np.float32)
    >>> nn.MaxPool1d(2)(x).tolist()
    [[[3.0, 5.0]]]
    >>> nn.MaxPool1d(2, ceil_mode=True)(x).tolist()           # the last window, clipped, is kept
    [[[3.0, 5.0, 4.0]]]
    """

    nd = 1


@fill_doc(**_nd_doc(2, bad_args=_MAX_ARGS), body=_MAX_DOC)
class MaxPool2d(_MaxPool):
    """{body}
    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> pool = nn.MaxPool2d(2)
    >>> y = pool(np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4))
    >>> y.tolist()
    [[[[5.0, 7.0], [13.0, 15.0]]]]
    >>> pool.backward(np.ones_like(y))[0, 0].tolist()
    [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0]]
    >>> nn.MaxPool2d(3, stride=2, padding=1)(np.ones((2, 3, 5, 5), dtype=np.float32)).shape
    (2, 3, 3, 3)
    """

    nd = 2


@fill_doc(**_nd_doc(3, bad_args=_MAX_ARGS), body=_MAX_DOC)
class MaxPool3d(_MaxPool):
    """{body}
    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> x = np.arange(27, dtype=np.float32).reshape(1, 3, 3, 3)       # unbatched (C, D, H, W)
    >>> nn.MaxPool3d(2, stride=1)(x).shape
    (1, 2, 2, 2)
    >>> float(nn.MaxPool3d(2, dilation=2)(x)[0, 0, 0, 0])
    26.0
    """

    nd = 3


@fill_doc(**_nd_doc(1, bad_args=_AVG_ARGS), body=_AVG_DOC)
class AvgPool1d(_AvgPool):
    """{body}
    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> x = np.array([[[1.0, 2.0, 3.0, 4.0, 5.0]]], dtype=np.float32)
    >>> nn.AvgPool1d(2)(x).tolist()
    [[[1.5, 3.5]]]
    >>> nn.AvgPool1d(2, ceil_mode=True)(x).tolist()           # the clipped last window divides by 1
    [[[1.5, 3.5, 5.0]]]
    """

    nd = 1


@fill_doc(**_nd_doc(2, bad_args=_AVG_ARGS), body=_AVG_DOC)
class AvgPool2d(_AvgPool):
    """{body}
    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> pool = nn.AvgPool2d(2)
    >>> pool(x).tolist()
    [[[[2.5, 4.5], [10.5, 12.5]]]]
    >>> grad_x = pool.backward(np.ones((1, 1, 2, 2), dtype=np.float32))   # 1/4 of each gradient per tap
    >>> grad_x.shape, grad_x[0, 0, 0].tolist()
    ((1, 1, 4, 4), [0.25, 0.25, 0.25, 0.25])
    >>> ones = np.ones((2, 3, 5, 5), dtype=np.float32)
    >>> round(float(nn.AvgPool2d(3, stride=1, padding=1)(ones)[0, 0, 0, 0]), 4)   # a corner: 4 ones of 9
    0.4444
    >>> float(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)(ones)[0, 0, 0, 0])
    1.0
    """

    nd = 2


@fill_doc(**_nd_doc(3, bad_args=_AVG_ARGS), body=_AVG_DOC)
class AvgPool3d(_AvgPool):
    """{body}
    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> x = np.ones((2, 3, 4, 4, 4), dtype=np.float32)
    >>> y = nn.AvgPool3d(2)(x)
    >>> y.shape, float(y.max())
    ((2, 3, 2, 2, 2), 1.0)
    """

    nd = 3


# -- adaptive bins ------------------------------------------------------------------------------------
def adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling bins of one axis: ``(floor(i*size/out), ceil((i+1)*size/out))`` for i < out."""
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


class _AdaptivePool(_Pool):
    def __init__(self, output_size, *, backend=None, device=None, dtype="float32"):
        super().__init__(backend=backend, device=device, dtype=dtype)
        nd = self.nd
        if nd == 1:                                                 # as torch: no None in one dimension
            self.output_size: tuple[int | None, ...] = int_tuple("output_size", output_size, 1, 1)
            return
        sizes = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size,) * nd
        if len(sizes) != nd:
            raise ValueError(f"output_size must be an int, None or a tuple of {nd} ints or None, got {output_size!r}")
        self.output_size = tuple(None if s is None else positive_int("output_size", s) for s in sizes)

    def _out(self, spatial) -> tuple[int, ...]:
        return tuple(s if o is None else o for s, o in zip(spatial, self.output_size, strict=True))

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


def _split_axes(xp, x, out):
    """x (N, C, *s) with every o dividing s -> (N, C, o_1, s_1/o_1, ..., o_nd, s_nd/o_nd) and the window axes."""
    shape = [q for s, o in zip(x.shape[2:], out, strict=True) for q in (o, s // o)]
    return xp.reshape(x, (*x.shape[:2], *shape)), tuple(range(3, 2 + len(shape), 2))


class _AdaptiveAvgPool(_AdaptivePool):
    def _forward(self, xp, x):
        spatial = x.shape[2:]
        out = self._out(spatial)
        if all(s % o == 0 for s, o in zip(spatial, out, strict=True)):     # a plain pool (global: o = 1)
            split, axes = _split_axes(xp, x, out)
            return xp.mean(split, axis=axes), None
        mats = [self._bin_matrix(xp, x, s, o) for s, o in zip(spatial, out, strict=True)]
        y = x
        for mat in mats:                       # contract the first remaining input axis; outputs gather at the end
            y = xp.tensordot(y, mat, axes=([2], [1]))
        return y, mats

    def _backward(self, xp, dy, x_shape, mats):
        if mats is None:
            out = dy.shape[2:]
            k = math.prod(x_shape[2:]) // math.prod(out)
            shape = [q for o in out for q in (o, 1)]
            grad = xp.reshape(dy / k, (*dy.shape[:2], *shape))
            split = [q for s, o in zip(x_shape[2:], out, strict=True) for q in (o, s // o)]
            return xp.reshape(xp.broadcast_to(grad, (*dy.shape[:2], *split)), x_shape)
        dx = dy
        for mat in mats:
            dx = xp.tensordot(dx, mat, axes=([2], [0]))
        return dx

    @staticmethod
    def _bin_matrix(xp, x, size: int, out: int):
        """(out, size): row i is 1 / (bin size) on bin i, 0 elsewhere."""
        lo, hi = ([b[e] for b in adaptive_bins(size, out)] for e in (0, 1))
        dev = device(x)
        lo, hi = (xp.reshape(xp.asarray(a, dtype=x.dtype, device=dev), (-1, 1)) for a in (lo, hi))
        j = xp.reshape(xp.arange(size, dtype=x.dtype, device=dev), (1, -1))
        inside = xp.astype((j >= lo) & (j < hi), x.dtype)
        return inside / (hi - lo)


class _AdaptiveMaxPool(_AdaptivePool):
    def __init__(self, output_size, return_indices=False, *, backend=None, device=None, dtype="float32"):
        if return_indices:
            raise ValueError(f"{type(self).__name__}(return_indices=True) is not supported; use return_indices=False")
        super().__init__(output_size, backend=backend, device=device, dtype=dtype)

    def _forward(self, xp, x):
        spatial = x.shape[2:]
        out, nd = self._out(spatial), self.nd
        gathers = []                          # per axis: the input index of each (bin, tap), (o * kmax,)
        g = x
        for axis, (s, o) in enumerate(zip(spatial, out, strict=True)):
            bins = adaptive_bins(s, o)
            kmax = max(hi - lo for lo, hi in bins)
            # Short bins repeat their last element: a repeat never changes the max nor the first arg-max.
            index = [min(lo + t, hi - 1) for lo, hi in bins for t in range(kmax)]
            index = xp.asarray(index, device=device(x))
            gathers.append((index, kmax))
            g = xp.take(g, index, axis=2 + 2 * axis)
            g = xp.reshape(g, (*g.shape[:2 + 2 * axis], o, kmax, *g.shape[3 + 2 * axis:]))
        # (N, C, o_1, k_1, ..., o_nd, k_nd) -> (N, C, *o, K)
        g = xp.permute_dims(g, (0, 1, *range(2, 2 + 2 * nd, 2), *range(3, 3 + 2 * nd, 2)))
        g = xp.reshape(g, (*g.shape[:2 + nd], math.prod(k for _, k in gathers)))
        argmax = xp.argmax(g, axis=-1) if self.training else None
        return xp.max(g, axis=-1), (argmax, gathers)

    def _backward(self, xp, dy, x_shape, state):
        argmax, gathers = state
        nd, kmax = self.nd, [k for _, k in gathers]
        taps = xp.arange(math.prod(kmax), dtype=argmax.dtype, device=device(argmax))
        hit = xp.expand_dims(argmax, axis=-1) == taps                           # (N, C, *o, K) one-hot
        grad = xp.expand_dims(dy, axis=-1)
        g = xp.reshape(xp.where(hit, grad, xp.zeros_like(grad)), (*dy.shape, *kmax))
        # (N, C, *o, *k) -> (N, C, o_1 * k_1, ..., o_nd * k_nd)
        g = xp.permute_dims(g, (0, 1, *(a for d in range(nd) for a in (2 + d, 2 + nd + d))))
        g = xp.reshape(g, (*dy.shape[:2], *(o * k for o, k in zip(dy.shape[2:], kmax, strict=True))))
        for (index, _), size in zip(gathers, x_shape[2:], strict=True):
            # the adjoint of take: add each (bin, tap) gradient at its input index (one-hot matrix, no scatter)
            inputs = xp.arange(size, dtype=index.dtype, device=device(index))
            onehot = xp.astype(xp.reshape(index, (-1, 1)) == xp.reshape(inputs, (1, -1)), dy.dtype)  # (o * k, L)
            g = xp.tensordot(g, onehot, axes=([2], [0]))
        return g


_ADAPTIVE_ARGS = "``output_size`` has the wrong length or an entry that is not None or a positive int"
_AVG_COST = ("When each ``o`` divides ``L`` it is a reshape and a mean (global pooling, ``output_size=1``, is\n"
             "the mean over the spatial axes); else one ``(o, L)`` averaging matrix per axis, contracted with\n"
             "``tensordot`` (cost ``N*C*L*o`` per axis; backward the same with the transposes).")


@fill_doc(**_nd_doc(1, bad_args=_ADAPTIVE_ARGS), body=_ADAPTIVE_DOC, what="Mean", kind="Avg", reduces="averages",
          cost=_AVG_COST, extra_args="")
class AdaptiveAvgPool1d(_AdaptiveAvgPool):
    """{body}
    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> x = np.array([[[1.0, 2.0, 3.0, 4.0, 5.0]]], dtype=np.float32)
    >>> nn.AdaptiveAvgPool1d(2)(x).tolist()                   # bins [0, 3) and [2, 5)
    [[[2.0, 4.0]]]
    """

    nd = 1


@fill_doc(**_nd_doc(2, bad_args=_ADAPTIVE_ARGS), body=_ADAPTIVE_DOC, what="Mean", kind="Avg", reduces="averages",
          cost=_AVG_COST, extra_args="")
class AdaptiveAvgPool2d(_AdaptiveAvgPool):
    """{body}
    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> gap = nn.AdaptiveAvgPool2d(1)                       # global average pooling
    >>> x = np.arange(32, dtype=np.float32).reshape(2, 1, 4, 4)
    >>> y = gap(x)
    >>> y.shape, y[:, 0, 0, 0].tolist()
    ((2, 1, 1, 1), [7.5, 23.5])
    >>> gap.backward(np.ones_like(y))[0, 0, 0].tolist()     # 1/16 to every position
    [0.0625, 0.0625, 0.0625, 0.0625]
    >>> nn.AdaptiveAvgPool2d((3, None))(x).shape            # None keeps the input's width
    (2, 1, 3, 4)
    """

    nd = 2


@fill_doc(**_nd_doc(3, bad_args=_ADAPTIVE_ARGS), body=_ADAPTIVE_DOC, what="Mean", kind="Avg", reduces="averages",
          cost=_AVG_COST, extra_args="")
class AdaptiveAvgPool3d(_AdaptiveAvgPool):
    """{body}
    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> nn.AdaptiveAvgPool3d((1, 2, 3))(np.ones((2, 4, 5, 5, 5), dtype=np.float32)).shape
    (2, 4, 1, 2, 3)
    """

    nd = 3


@fill_doc(**_nd_doc(2, bad_args=_ADAPTIVE_ARGS + ", ``return_indices`` is True"), body=_ADAPTIVE_DOC, what="Max",
          kind="Max", reduces="takes the maximum of",
          cost=("Each bin is gathered with ``take`` (short bins repeat their last element); backward routes each\n"
                "gradient to its bin's arg-max (the first one on ties) through the gather's one-hot ``(o*k, L)``\n"
                "matrix per axis (cost ``N*C*o*k*L`` per axis)."),
          extra_args="return_indices : bool, default False\n    Only False: returning the indices is not supported.")
class AdaptiveMaxPool2d(_AdaptiveMaxPool):
    """{body}
    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> x = np.array([[[[1.0, 5.0, 2.0], [4.0, 3.0, 6.0], [9.0, 8.0, 7.0]]]], dtype=np.float32)
    >>> pool = nn.AdaptiveMaxPool2d(2)                      # 2x2 bins that overlap on the middle row/column
    >>> y = pool(x)
    >>> y.tolist()
    [[[[5.0, 6.0], [9.0, 8.0]]]]
    >>> pool.backward(np.ones_like(y))[0, 0].tolist()
    [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]
    """

    nd = 2
