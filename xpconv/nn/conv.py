"""Convolution layers Conv1d / Conv2d / Conv3d over the shared im2col engine."""
from __future__ import annotations

import math

import numpy as np

from .._engine import DEFAULT_MAX_WORKSPACE_BYTES
from ..functional import _backward, _forward, make_geometry
from .module import Module, Parameter

__all__ = ["Conv1d", "Conv2d", "Conv3d"]


def kaiming_uniform(rng: np.random.Generator, shape, fan_in: int) -> np.ndarray:
    """PyTorch's default init for conv/linear (kaiming_uniform with a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape)


class _ConvNd(Module):
    nd = 0

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, *, backend=None, device=None, dtype="float32", channels_last=False, seed=None,
                 max_workspace_bytes=DEFAULT_MAX_WORKSPACE_BYTES):
        super().__init__(backend=backend, device=device, dtype=dtype)
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        kernel = (kernel_size,) * self.nd if isinstance(kernel_size, int) else tuple(kernel_size)
        if len(kernel) != self.nd or any(not isinstance(k, int) or k < 1 for k in kernel):
            raise ValueError(f"kernel_size must be a positive int or a tuple of {self.nd}, got {kernel_size!r}")
        geom = make_geometry(kernel, stride, padding, dilation, groups)  # validates the hyper-parameters
        if in_channels % geom.groups or out_channels % geom.groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.channels_last = channels_last
        self.max_workspace_bytes = max_workspace_bytes
        rng = np.random.default_rng(seed)
        cg = in_channels // groups
        fan_in = cg * math.prod(kernel)
        w = kaiming_uniform(rng, (out_channels, cg, *kernel), fan_in)
        if channels_last:
            w = np.moveaxis(w, 1, -1)
        self.weight = Parameter(self.backend.asarray(w, dtype=self.dtype))
        self.bias = Parameter(self.backend.asarray(kaiming_uniform(rng, (out_channels,), fan_in),
                                                   dtype=self.dtype)) if bias else None
        self._ctx = None

    def _clear_cache(self) -> None:
        self._ctx = None

    def forward(self, x):
        """y (N, O, *out) for x (N, C, *spatial) (channels-last layouts when built with channels_last)."""
        y, ctx = _forward(self.nd, x, self.weight.data, None if self.bias is None else self.bias.data,
                          self.stride, self.padding, self.dilation, self.groups, self.channels_last,
                          self.max_workspace_bytes, keep_cols=self.training)
        self._ctx = ctx if self.training else None
        return y

    def backward(self, grad_output):
        """dL/dx for dL/dy; adds dL/dW and dL/db to ``weight.grad`` and ``bias.grad``."""
        ctx = self._need_cache(self._ctx)
        self._ctx = None
        grad_x, grad_w, grad_b = _backward(ctx, grad_output, self.max_workspace_bytes)
        self.weight.grad += grad_w
        if self.bias is not None:
            self.bias.grad += grad_b
        return grad_x

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding!r}")
        if self.dilation != 1:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s + f", backend={self.backend.name!r}"


class Conv1d(_ConvNd):
    """1-D convolution layer: (N, C, L) -> (N, O, OL); weight (O, C // groups, k)."""

    nd = 1


class Conv2d(_ConvNd):
    """2-D convolution layer: (N, C, H, W) -> (N, O, OH, OW); weight (O, C // groups, kh, kw).

    Example: ``Conv2d(3, 16, 3, padding="same", backend="cupy")`` runs on the GPU.
    """

    nd = 2


class Conv3d(_ConvNd):
    """3-D convolution layer: (N, C, D, H, W) -> (N, O, OD, OH, OW); weight (O, C // groups, kd, kh, kw)."""

    nd = 3
