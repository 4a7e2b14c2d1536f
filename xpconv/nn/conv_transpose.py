"""ConvTranspose2d: the convolution's backward-data pass used as a forward; its backward is a convolution.

The associated convolution maps z (N, out, OH, OW) to (N, in, H, W) with weight (in, out // groups, kh, kw):
the transposed convolution of x is dL/dz of that convolution for dL/d(output) = x, and its
gradients are that convolution's forward (dL/dx) and weight gradient (dL/dW).
"""
from __future__ import annotations

import math

from .._docstrings import fill_doc
from .._geometry import make_geometry
from .._ops import DEFAULT_MAX_WORKSPACE_BYTES, conv_transpose, conv_transpose_grads, namespace_of
from ..validation import int_tuple, positive_int
from .conv import conv_extra_repr
from .init import init_weight_and_bias
from .module import Module, Parameter

__all__ = ["ConvTranspose2d"]


@fill_doc(c_in="in", c_out="out")
class ConvTranspose2d(Module):
    """2-D transposed convolution layer (the convolution's gradient as a layer), as ``torch.nn.ConvTranspose2d``.

    (N, in, H, W) -> (N, out, OH, OW), OH = (H - 1)·stride - 2·padding + dilation·(kh - 1) + output_padding + 1.

    weight (in, out // groups, kh, kw) and bias (out,) as in PyTorch, initialized like torch from ``seed``.
    ``output_padding`` must be smaller than ``stride``.  Inputs must be batched (4-D), channels first.

    Parameters
    ----------
    {in_out_channels}
    kernel_size : int or tuple of 2 int
        ``(kh, kw)``, each >= 1.
    stride : int or tuple of 2 int, default 1
        Stride of the associated convolution, i.e. the upsampling factor; each >= 1.
    padding : int or tuple of 2 int, default 0
        Padding of the associated convolution, each >= 0: ``dilation·(kh - 1) - padding`` zeros are
        effectively added to the input's sides.  Strings (``"same"``, ``"valid"``) are not accepted.
    output_padding : int or tuple of 2 int, default 0
        Extra rows/columns added to the high side of the output, to pick among the output sizes that
        map to the same input size under the associated convolution; each smaller than ``stride``.
    groups : int, default 1
        Blocked connections; must divide ``in_channels`` and ``out_channels``.
    {bias}
    dilation : int or tuple of 2 int, default 1
        Spacing between kernel taps, each >= 1.
    {backend_device_dtype}
    {seed}
    {max_workspace_bytes}

    Attributes
    ----------
    weight : Parameter
        ``(in, out // groups, kh, kw)``, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with
        ``fan_in = out // groups * kh * kw`` (PyTorch's choice for this weight).
    bias : Parameter or None
        ``(out,)``, same initialization; None when ``bias=False``.

    Raises
    ------
    {raises_unavailable}
    ValueError
        If a channel count is not a positive int; ``kernel_size``, ``stride``, ``padding``, ``dilation``,
        ``groups`` or ``output_padding`` is invalid (wrong length or out of range), ``padding`` is a string,
        ``output_padding`` is not smaller than ``stride``, ``groups`` does not divide both channel counts,
        {bad_backend}.
    TypeError
        If a tuple hyper-parameter holds a non-int, or ``backend`` is neither a name nor a Backend.

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> up = nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1, seed=0)
    >>> up.weight.shape, up.bias.shape
    ((4, 2, 3, 3), (2,))
    >>> y = up(np.ones((1, 4, 5, 5), dtype=np.float32))
    >>> y.shape
    (1, 2, 10, 10)
    >>> grad_x = up.backward(np.ones_like(y))
    >>> grad_x.shape, up.weight.grad.shape, up.bias.grad.tolist()
    ((1, 4, 5, 5), (4, 2, 3, 3), [100.0, 100.0])
    """

    weight: Parameter
    bias: Parameter | None

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, *, backend=None, device=None, dtype="float32", seed=None,
                 max_workspace_bytes=DEFAULT_MAX_WORKSPACE_BYTES):
        super().__init__(backend=backend, device=device, dtype=dtype)
        in_channels, out_channels = positive_int("in_channels", in_channels), positive_int("out_channels", out_channels)
        if isinstance(padding, str):
            raise ValueError(f"ConvTranspose2d padding must be an int or a pair of ints, got {padding!r}")
        kernel = int_tuple("kernel_size", kernel_size, 2, 1)
        self.geometry = make_geometry(kernel, stride, padding, dilation, groups)
        self.output_padding = int_tuple("output_padding", output_padding, 2, 0)
        if any(op >= s for op, s in zip(self.output_padding, self.geometry.stride, strict=True)):
            raise ValueError(f"output_padding {self.output_padding} must be smaller than stride "
                             f"{self.geometry.stride}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        self.in_channels, self.out_channels, self.kernel_size = int(in_channels), int(out_channels), kernel
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, self.geometry.groups
        self.max_workspace_bytes = max_workspace_bytes
        fan_in = out_channels // groups * math.prod(kernel)               # torch's fan_in of this weight
        init_weight_and_bias(self, (in_channels, out_channels // groups, *kernel), fan_in,
                             out_channels if bias else None, seed)
        self._x = None

    def _clear_cache(self) -> None:
        self._x = None

    def output_shape(self, spatial) -> tuple[int, int]:
        """The output's ``(OH, OW)`` for an input of spatial shape ``spatial = (H, W)``."""
        return tuple((s - 1) * st - lo - hi + d * (k - 1) + op + 1 for s, st, (lo, hi), d, k, op in
                     zip(spatial, self.geometry.stride, self.geometry.padding, self.geometry.dilation, self.kernel_size,
                         self.output_padding, strict=True))

    @fill_doc(x_shape="``(N, in, H, W)``", y_shape="``(N, out, OH, OW)``",
              bad_x="is not 4-D with ``in`` channels, or gives an empty output")
    def forward(self, x):
        """y = col2im(Wᵀ · x) + b: the backward-data pass of the associated convolution, chunked like it.

        {layer_forward}
        """
        bias = None if self.bias is None else self.bias.data
        namespace_of(x, self.weight.data, bias, names=["x", "weight", "bias"])
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ConvTranspose2d expects x of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[2:]
        out = self.output_shape((h, w))
        if any(o < 1 for o in out):
            raise ValueError(f"input {(h, w)} gives an empty output {out} with padding {self.padding}")
        y = conv_transpose(x, self.weight.data, bias, self.geometry, out, max_workspace_bytes=self.max_workspace_bytes)
        self._x = x if self.training else None
        return y                                                            # (N, out, OH, OW)

    @fill_doc(grad_output_shape="``(N, out, OH, OW)``", grad_input_shape="``(N, in, H, W)``")
    def backward(self, grad_output):
        """dL/dx = conv2d(dL/dy, W); dL/dW is the associated convolution's weight gradient.

        {layer_backward}
        """
        x = self._need_cache(self._x)
        self._x = None
        namespace_of(grad_output, x, names=["grad_output", "x"])
        expected = (x.shape[0], self.out_channels, *self.output_shape(x.shape[2:]))
        if tuple(grad_output.shape) != expected:
            raise ValueError(f"grad_output must have the output's shape {expected}, got {tuple(grad_output.shape)}")
        grad_x, grad_w, grad_b = conv_transpose_grads(x, self.weight.data, self.geometry, grad_output,
                                                      max_workspace_bytes=self.max_workspace_bytes)
        self.weight.grad += grad_w
        if self.bias is not None:
            self.bias.grad += grad_b
        return grad_x

    def extra_repr(self) -> str:
        return conv_extra_repr(self, **({"output_padding": self.output_padding} if any(self.output_padding) else {}))
