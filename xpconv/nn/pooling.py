"""MaxPool2d and AvgPool2d through the convolution's im2col engine.

im2col unfolds x (N, C, H, W) into cols (N, C, kh, kw, OH, OW) per channel; pooling
reduces the window axes, and backward folds the window gradients back with col2im.
"""
from __future__ import annotations

import math

from array_api_compat import device

from .._docstrings import STATELESS, fill_doc
from .._geometry import ConvGeometry
from .._ops import fold, namespace_of, unfold
from ..validation import int_tuple
from .module import Module

__all__ = ["MaxPool2d", "AvgPool2d"]

# The docstring sections MaxPool2d and AvgPool2d share (see xpconv._docstrings); ``padding_note`` is each one's own.
_POOL_BODY = """
    Parameters
    ----------
    kernel_size : int or tuple of 2 int
        Window ``(kh, kw)``, each >= 1.
    stride : int, tuple of 2 int or None, default None
        Step of the window, each >= 1; None: ``kernel_size``.
    padding : int or tuple of 2 int, default 0
        Added on both sides of H and W, each >= 0 and at most half the kernel size.  {padding_note}
    {backend_device_dtype}

    Raises
    ------
    {raises_unavailable}
    ValueError
        If ``kernel_size``, ``stride`` or ``padding`` has the wrong length or is out of range, ``padding``
        exceeds half the kernel size,
        {bad_backend}.
    TypeError
        If a tuple of ``kernel_size``, ``stride`` or ``padding`` holds a non-int.
"""

_FORWARD_SECTIONS = """
    Parameters
    ----------
    x : array
        ``(N, C, H, W)``, real floating.

    Returns
    -------
    y : array
        ``(N, C, OH, OW)``.

    Raises
    ------
    TypeError
        If ``x`` is not an array with a real floating dtype.
    ValueError
        If ``x`` is not 4-D or the window is larger than the padded input.
"""

_BACKWARD_SECTIONS = """
    Parameters
    ----------
    grad_output : array
        dL/dy, ``(N, C, OH, OW)``.

    Returns
    -------
    grad_input : array
        dL/dx, ``(N, C, H, W)``.

    Raises
    ------
    {raises_no_forward}
    TypeError
        If ``grad_output`` is not an array with a real floating dtype.
    ValueError
        If ``grad_output`` does not have the output's shape.
"""


class _Pool2d(Module):
    """Shared implementation of :class:`MaxPool2d` and :class:`AvgPool2d` (see those for the docs)."""

    def __init__(self, kernel_size, stride=None, padding=0, *, backend=None, device=None, dtype="float32"):
        super().__init__(backend=backend, device=device, dtype=dtype)
        kernel = int_tuple("kernel_size", kernel_size, 2, 1)
        stride = kernel if stride is None else int_tuple("stride", stride, 2, 1)
        padding = int_tuple("padding", padding, 2, 0)
        if any(2 * p > k for p, k in zip(padding, kernel, strict=True)):
            raise ValueError(f"padding {padding} must be at most half of kernel_size {kernel} (as in PyTorch)")
        self.kernel_size, self.stride, self.padding = kernel, stride, padding
        self.geometry = ConvGeometry(kernel, stride, tuple((p, p) for p in padding), (1, 1))
        self._cache = None

    def _clear_cache(self) -> None:
        self._cache = None

    def _unfold(self, x):
        """(xp, windows (N, C, kh*kw, OH, OW)) for x (N, C, H, W)."""
        xp = namespace_of(x, names=["x"])
        if x.ndim != 4:
            raise ValueError(f"{type(self).__name__} expects x of shape (N, C, H, W), got {tuple(x.shape)}")
        out = self.geometry.output_shape(x.shape[2:])
        if any(o < 1 for o in out):
            raise ValueError(f"{type(self).__name__}: kernel {self.kernel_size} is larger than the padded input "
                             f"{tuple(s + 2 * p for s, p in zip(x.shape[2:], self.padding, strict=True))}")
        return xp, unfold(x, self.geometry)

    def _check_grad(self, grad_output, expected):
        namespace_of(grad_output, names=["grad_output"])
        if tuple(grad_output.shape) != expected:
            raise ValueError(f"grad_output must have the output's shape {expected}, got {tuple(grad_output.shape)}")

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


@fill_doc(body=_POOL_BODY, padding_note="Padding never wins the max.", **STATELESS)
class MaxPool2d(_Pool2d):
    """Max over each kh×kw window: (N, C, H, W) -> (N, C, OH, OW); padding never wins (it acts as -inf).

    As ``torch.nn.MaxPool2d`` (dilation 1, floor mode).  ``OH = (H + 2 * padding - kh) // stride + 1``,
    and likewise OW.  Backward routes each output gradient to its window's arg-max (the first one on ties).

    {body}

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

    @fill_doc(forward_sections=_FORWARD_SECTIONS)
    def forward(self, x):
        """The window maxima; in training mode keep each window's arg-max for backward.

        {forward_sections}
        """
        xp, windows = self._unfold(x)                                        # (N, C, K, OH, OW)
        if any(self.padding):
            # im2col fills padding with 0; mark those taps from an all-ones image and exclude them exactly.
            ones = xp.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=device(x))
            inside = unfold(ones, self.geometry) > 0
            windows = xp.where(inside, windows, xp.full_like(windows, -math.inf))
        y = xp.max(windows, axis=2)
        if self.training:
            self._cache = (xp.argmax(windows, axis=2), tuple(x.shape))      # (N, C, OH, OW) int
        return y

    @fill_doc(backward_sections=_BACKWARD_SECTIONS)
    def backward(self, grad_output):
        """dL/dx: each output gradient added at its window's arg-max, zero elsewhere.

        {backward_sections}
        """
        argmax, shape = self._need_cache(self._cache)
        self._cache = None
        self._check_grad(grad_output, (*shape[:2], *argmax.shape[2:]))
        xp = namespace_of(grad_output, names=["grad_output"])
        taps = xp.arange(math.prod(self.kernel_size), dtype=argmax.dtype, device=device(argmax))
        hit = xp.expand_dims(argmax, axis=2) == xp.reshape(taps, (1, 1, -1, 1, 1))  # (N, C, K, OH, OW) one-hot
        grad = xp.expand_dims(grad_output, axis=2)
        return fold(xp.where(hit, grad, xp.zeros_like(grad)), self.geometry, shape[2:])


@fill_doc(body=_POOL_BODY, padding_note="Padded zeros count in the mean.", **STATELESS)
class AvgPool2d(_Pool2d):
    """Mean over each kh×kw window, padding counted as zeros (torch's count_include_pad=True).

    As ``torch.nn.AvgPool2d`` (floor mode): (N, C, H, W) -> (N, C, OH, OW) with
    ``OH = (H + 2 * padding - kh) // stride + 1``, and likewise OW.  Backward spreads each output
    gradient evenly, divided by kh·kw, over its window.

    {body}

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
    >>> padded = nn.AvgPool2d(3, stride=1, padding=1)(np.ones((2, 3, 5, 5), dtype=np.float32))
    >>> padded.shape, round(float(padded[0, 0, 0, 0]), 4)     # zeros count: a corner averages 4 ones of 9
    ((2, 3, 5, 5), 0.4444)
    """

    @fill_doc(forward_sections=_FORWARD_SECTIONS)
    def forward(self, x):
        """The window means (padding counted as zeros); in training mode keep the input's shape.

        {forward_sections}
        """
        xp, windows = self._unfold(x)
        if self.training:
            self._cache = tuple(x.shape)
        return xp.mean(windows, axis=2)

    @fill_doc(backward_sections=_BACKWARD_SECTIONS)
    def backward(self, grad_output):
        """dL/dx: each output gradient divided by kh·kw and added over its window.

        {backward_sections}
        """
        shape = self._need_cache(self._cache)
        self._cache = None
        self._check_grad(grad_output, (*shape[:2], *self.geometry.output_shape(shape[2:])))
        xp = namespace_of(grad_output, names=["grad_output"])
        k = math.prod(self.kernel_size)
        grad = xp.expand_dims(grad_output / k, axis=2)                      # (N, C, 1, OH, OW)
        return fold(xp.broadcast_to(grad, (*grad.shape[:2], k, *grad.shape[3:])), self.geometry, shape[2:])
