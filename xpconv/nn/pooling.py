"""MaxPool2d and AvgPool2d through the convolution's im2col engine.

im2col unfolds x (N, C, H, W) into cols (N, C, kh, kw, OH, OW) per channel; pooling
reduces the window axes, and backward folds the window gradients back with col2im.
"""
from __future__ import annotations

import math

from array_api_compat import device

from .._geometry import ConvGeometry
from .._ops import fold, namespace_of, unfold
from ..validation import int_tuple
from .module import Module

__all__ = ["MaxPool2d", "AvgPool2d"]


class _Pool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, *, backend=None, device=None, dtype="float32"):
        super().__init__(backend=backend, device=device, dtype=dtype)
        kernel = int_tuple("kernel_size", kernel_size, 2, 1)
        stride = kernel if stride is None else int_tuple("stride", stride, 2, 1)
        padding = int_tuple("padding", padding, 2, 0)
        if any(2 * p > k for p, k in zip(padding, kernel)):
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
                             f"{tuple(s + 2 * p for s, p in zip(x.shape[2:], self.padding))}")
        return xp, unfold(x, self.geometry)

    def _check_grad(self, grad_output, expected):
        namespace_of(grad_output, names=["grad_output"])
        if tuple(grad_output.shape) != expected:
            raise ValueError(f"grad_output must have the output's shape {expected}, got {tuple(grad_output.shape)}")

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Max over each kh×kw window: (N, C, H, W) -> (N, C, OH, OW); padding never wins (it acts as -inf).

    Backward routes each output gradient to its window's arg-max (the first one on ties).
    """

    def forward(self, x):
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

    def backward(self, grad_output):
        argmax, shape = self._need_cache(self._cache)
        self._cache = None
        self._check_grad(grad_output, (*shape[:2], *argmax.shape[2:]))
        xp = namespace_of(grad_output, names=["grad_output"])
        taps = xp.arange(math.prod(self.kernel_size), dtype=argmax.dtype, device=device(argmax))
        hit = xp.expand_dims(argmax, axis=2) == xp.reshape(taps, (1, 1, -1, 1, 1))  # (N, C, K, OH, OW) one-hot
        grad = xp.expand_dims(grad_output, axis=2)
        return fold(xp.where(hit, grad, xp.zeros_like(grad)), self.geometry, shape[2:])


class AvgPool2d(_Pool2d):
    """Mean over each kh×kw window, padding counted as zeros (torch's count_include_pad=True)."""

    def forward(self, x):
        xp, windows = self._unfold(x)
        if self.training:
            self._cache = tuple(x.shape)
        return xp.mean(windows, axis=2)

    def backward(self, grad_output):
        shape = self._need_cache(self._cache)
        self._cache = None
        self._check_grad(grad_output, (*shape[:2], *self.geometry.output_shape(shape[2:])))
        xp = namespace_of(grad_output, names=["grad_output"])
        k = math.prod(self.kernel_size)
        grad = xp.expand_dims(grad_output / k, axis=2)                      # (N, C, 1, OH, OW)
        return fold(xp.broadcast_to(grad, (*grad.shape[:2], k, *grad.shape[3:])), self.geometry, shape[2:])
