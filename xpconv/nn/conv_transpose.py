"""ConvTranspose2d: the convolution's backward-data pass used as a forward; its backward is a convolution.

The associated convolution maps z (N, out, OH, OW) to (N, in, H, W) with weight (in, out // groups, kh, kw):
the transposed convolution of x is dL/dz of that convolution for dL/d(output) = x, and its
gradients are that convolution's forward (dL/dx) and weight gradient (dL/dW).
"""
from __future__ import annotations

import math

from .._engine import DEFAULT_MAX_WORKSPACE_BYTES, conv_backward, conv_backward_data, conv_forward
from ..functional import _int_tuple, make_geometry, namespace_of
from .conv import conv_extra_repr
from .init import init_weight_and_bias, positive_int
from .module import Module

__all__ = ["ConvTranspose2d"]


class ConvTranspose2d(Module):
    """(N, in, H, W) -> (N, out, OH, OW), OH = (H - 1)·stride - 2·padding + dilation·(kh - 1) + output_padding + 1.

    weight (in, out // groups, kh, kw) and bias (out,) as in PyTorch, initialized like torch from ``seed``.
    ``output_padding`` must be smaller than ``stride``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, *, backend=None, device=None, dtype="float32", seed=None,
                 max_workspace_bytes=DEFAULT_MAX_WORKSPACE_BYTES):
        super().__init__(backend=backend, device=device, dtype=dtype)
        in_channels, out_channels = positive_int("in_channels", in_channels), positive_int("out_channels", out_channels)
        if isinstance(padding, str):
            raise ValueError(f"ConvTranspose2d padding must be an int or a pair of ints, got {padding!r}")
        kernel = _int_tuple(kernel_size, 2, "kernel_size", 1)
        self.geom = make_geometry(kernel, stride, padding, dilation, groups)
        self.output_padding = _int_tuple(output_padding, 2, "output_padding", 0)
        if any(op >= s for op, s in zip(self.output_padding, self.geom.stride)):
            raise ValueError(f"output_padding {self.output_padding} must be smaller than stride {self.geom.stride}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        self.in_channels, self.out_channels, self.kernel_size = int(in_channels), int(out_channels), kernel
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.max_workspace_bytes = max_workspace_bytes
        fan_in = out_channels // groups * math.prod(kernel)               # torch's fan_in of this weight
        init_weight_and_bias(self, (in_channels, out_channels // groups, *kernel), fan_in,
                             out_channels if bias else None, seed)
        self._x = None

    def _clear_cache(self) -> None:
        self._x = None

    def output_shape(self, spatial) -> tuple[int, int]:
        return tuple((s - 1) * st - lo - hi + d * (k - 1) + op + 1 for s, st, (lo, hi), d, k, op in
                     zip(spatial, self.geom.stride, self.geom.padding, self.geom.dilation, self.kernel_size,
                         self.output_padding))

    def forward(self, x):
        """y = col2im(Wᵀ · x) + b: the backward-data pass of the associated convolution, chunked like it."""
        bias = None if self.bias is None else self.bias.data
        xp = namespace_of(x, self.weight.data, bias, names=["x", "weight", "bias"])
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ConvTranspose2d expects x of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[2:]
        out = self.output_shape((h, w))
        if any(o < 1 for o in out):
            raise ValueError(f"input {(h, w)} gives an empty output {out} with padding {self.padding}")
        y = conv_backward_data(x, self.weight.data, self.geom, out, max_workspace_bytes=self.max_workspace_bytes)
        if bias is not None:
            y = y + xp.reshape(bias, (1, -1, 1, 1))
        self._x = x if self.training else None
        return y                                                            # (N, out, OH, OW)

    def backward(self, grad_output):
        """dL/dx = conv2d(dL/dy, W); adds dL/dW (the convolution's weight gradient) and dL/db to the grads."""
        x = self._need_cache(self._x)
        self._x = None
        xp = namespace_of(grad_output, x, names=["grad_output", "x"])
        expected = (x.shape[0], self.out_channels, *self.output_shape(x.shape[2:]))
        if tuple(grad_output.shape) != expected:
            raise ValueError(f"grad_output must have the output's shape {expected}, got {tuple(grad_output.shape)}")
        grad_x, cols = conv_forward(grad_output, self.weight.data, None, self.geom, keep_cols=True,
                                    max_workspace_bytes=self.max_workspace_bytes)
        _, grad_w = conv_backward(x, grad_output, self.weight.data, self.geom, cols=cols, need_input_grad=False,
                                  max_workspace_bytes=self.max_workspace_bytes)
        self.weight.grad += grad_w
        if self.bias is not None:
            self.bias.grad += xp.sum(grad_output, axis=(0, 2, 3))
        return grad_x

    def extra_repr(self) -> str:
        return conv_extra_repr(self, **({"output_padding": self.output_padding} if any(self.output_padding) else {}))
