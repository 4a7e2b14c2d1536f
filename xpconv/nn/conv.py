"""Convolution layers Conv1d / Conv2d / Conv3d over the shared im2col engine."""
from __future__ import annotations

import math

from .._geometry import make_geometry
from .._ops import DEFAULT_MAX_WORKSPACE_BYTES, conv, conv_grads
from ..validation import int_tuple, positive_int
from .init import init_weight_and_bias
from .module import Module

__all__ = ["Conv1d", "Conv2d", "Conv3d"]


class _ConvNd(Module):
    nd = 0

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, *, backend=None, device=None, dtype="float32", channels_last=False, seed=None,
                 max_workspace_bytes=DEFAULT_MAX_WORKSPACE_BYTES):
        super().__init__(backend=backend, device=device, dtype=dtype)
        in_channels, out_channels = positive_int("in_channels", in_channels), positive_int("out_channels", out_channels)
        kernel = int_tuple("kernel_size", kernel_size, self.nd, 1)
        self.geometry = make_geometry(kernel, stride, padding, dilation, groups)   # validated once, kept
        if in_channels % self.geometry.groups or out_channels % self.geometry.groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, self.geometry.groups
        self.channels_last = channels_last
        self.max_workspace_bytes = max_workspace_bytes
        cg = in_channels // groups
        init_weight_and_bias(self, (out_channels, cg, *kernel), cg * math.prod(kernel),
                             out_channels if bias else None, seed, channels_last)
        self._ctx = None

    def _clear_cache(self) -> None:
        self._ctx = None

    def forward(self, x):
        """y (N, O, *out) for x (N, C, *spatial) (channels-last layouts when built with channels_last)."""
        y, ctx = conv(x, self.weight.data, None if self.bias is None else self.bias.data, self.geometry,
                      channels_last=self.channels_last, max_workspace_bytes=self.max_workspace_bytes,
                      keep_cols=self.training)
        self._ctx = ctx if self.training else None
        return y

    def backward(self, grad_output):
        """dL/dx for dL/dy; adds dL/dW and dL/db to ``weight.grad`` and ``bias.grad``."""
        ctx = self._need_cache(self._ctx)
        self._ctx = None
        grad_x, grad_w, grad_b = conv_grads(ctx, grad_output, max_workspace_bytes=self.max_workspace_bytes)
        self.weight.grad += grad_w
        if self.bias is not None:
            self.bias.grad += grad_b
        return grad_x

    def extra_repr(self) -> str:
        return conv_extra_repr(self)


def conv_extra_repr(layer, **shown) -> str:
    """torch-style repr arguments of a (transposed) convolution layer; ``shown``: extra name=value pairs."""
    parts = [f"{layer.in_channels}, {layer.out_channels}, kernel_size={layer.kernel_size}",
             f"stride={layer.stride}", f"padding={layer.padding!r}", *(f"{k}={v}" for k, v in shown.items())]
    if layer.dilation != 1:
        parts.append(f"dilation={layer.dilation}")
    if layer.groups != 1:
        parts.append(f"groups={layer.groups}")
    if layer.bias is None:
        parts.append("bias=False")
    return ", ".join(parts + [f"backend={layer.backend.name!r}"])


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
