"""ConvTranspose1d/2d/3d: the convolution's backward-data pass used as a forward; its backward is a convolution.

The associated convolution maps z (N, out, *out_spatial) to (N, in, *spatial) with weight
(in, out // groups, *kernel): the transposed convolution of x is dL/dz of that convolution for
dL/d(output) = x, and its gradients are that convolution's forward (dL/dx) and weight gradient (dL/dW).
"""
from __future__ import annotations

import math

from .._docstrings import CONV_ND, fill_doc
from .._geometry import make_geometry
from .._ops import (
    DEFAULT_MAX_WORKSPACE_BYTES,
    check_max_workspace_bytes,
    conv_transpose,
    conv_transpose_grads,
    conv_transpose_output_shape,
)
from ..validation import int_tuple, positive_int
from .conv import conv_extra_repr
from .init import init_weight_and_bias
from .module import Module, Parameter

__all__ = ["ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"]

# The body of ConvTranspose{nd}d's docstring, filled per dimension from CONV_ND (see xpconv._docstrings).
_BODY = """
    (N, in, {spatial}) -> (N, out, {out}), each output size
    ``(size - 1)·stride - 2·padding + dilation·(k - 1) + output_padding + 1``.

    weight (in, out // groups, {kernel}) and bias (out,) as in PyTorch, initialized like torch from ``seed``.
    Inputs must be batched, channels first.

    Parameters
    ----------
    {in_out_channels}
    kernel_size : int or tuple of {nd} int
        ``({kernel})``, each >= 1.
    stride : int or tuple of {nd} int, default 1
        Stride of the associated convolution, i.e. the upsampling factor; each >= 1.
    padding : int or tuple of {nd} int, default 0
        Padding of the associated convolution, each >= 0: ``dilation·(k - 1) - padding`` zeros are
        effectively added to the input's sides.  Strings (``"same"``, ``"valid"``) are not accepted.
    output_padding : int or tuple of {nd} int, default 0
        Extra elements added to the high side of each output axis, to pick among the output sizes that
        map to the same input size under the associated convolution; each smaller than that axis's
        ``stride`` or ``dilation`` (as in PyTorch).
    groups : int, default 1
        Blocked connections; must divide ``in_channels`` and ``out_channels``.
    {bias}
    dilation : int or tuple of {nd} int, default 1
        Spacing between kernel taps, each >= 1.
    {backend_device_dtype}
    {seed}
    {max_workspace_bytes}

    Attributes
    ----------
    weight : Parameter
        ``(in, out // groups, {kernel})``, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with
        ``fan_in = out // groups * prod(kernel)`` (PyTorch's choice for this weight).
    bias : Parameter or None
        ``(out,)``, same initialization; None when ``bias=False``.

    Raises
    ------
    {raises_unavailable}
    ValueError
        If a channel count is not a positive int; ``kernel_size``, ``stride``, ``padding``, ``dilation``,
        ``groups`` or ``output_padding`` is invalid (wrong length or out of range), ``padding`` is a string,
        ``output_padding`` is not smaller than ``stride`` or ``dilation``, ``groups`` does not divide both
        channel counts, ``max_workspace_bytes`` is not a positive int or None,
        {bad_backend}.
    TypeError
        If a tuple hyper-parameter holds a non-int, or ``backend`` is neither a name nor a Backend.

    See Also
    --------
    xpconv.nn.Conv{nd}d
"""


class _ConvTransposeNd(Module):
    """Shared implementation of ConvTranspose1d/2d/3d (see those for the docs)."""

    nd = 0

    weight: Parameter
    bias: Parameter | None

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, *, backend=None, device=None, dtype="float32", seed=None,
                 max_workspace_bytes=DEFAULT_MAX_WORKSPACE_BYTES):
        super().__init__(backend=backend, device=device, dtype=dtype)
        name, nd = type(self).__name__, self.nd
        in_channels, out_channels = positive_int("in_channels", in_channels), positive_int("out_channels", out_channels)
        if isinstance(padding, str):
            raise ValueError(f"{name} padding must be an int or a tuple of {nd} ints, got {padding!r}")
        kernel = int_tuple("kernel_size", kernel_size, nd, 1)
        self.geometry = make_geometry(kernel, stride, padding, dilation, groups)
        self.output_padding = int_tuple("output_padding", output_padding, nd, 0)
        if any(op >= max(s, d) for op, s, d in zip(self.output_padding, self.geometry.stride, self.geometry.dilation,
                                                   strict=True)):
            raise ValueError(f"output_padding {self.output_padding} must be smaller than either stride "
                             f"{self.geometry.stride} or dilation {self.geometry.dilation} on each axis")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, self.geometry.groups
        self.max_workspace_bytes = check_max_workspace_bytes(max_workspace_bytes)
        fan_in = out_channels // groups * math.prod(kernel)               # torch's fan_in of this weight
        init_weight_and_bias(self, (in_channels, out_channels // groups, *kernel), fan_in,
                             out_channels if bias else None, seed)
        self._x = None

    def _clear_cache(self) -> None:
        self._x = None

    def output_shape(self, spatial) -> tuple[int, ...]:
        """The output's spatial shape for an input of spatial shape ``spatial``."""
        return conv_transpose_output_shape(self.geometry, spatial, self.output_padding)

    @fill_doc(x_shape="``(N, in, *spatial)``", y_shape="``(N, out, *out_spatial)``",
              bad_x="does not have rank ``nd + 2`` with ``in`` channels, or gives an empty output")
    def forward(self, x):
        """y = col2im(Wᵀ · x) + b: the backward-data pass of the associated convolution, chunked like it.

        {layer_forward}
        """
        bias = None if self.bias is None else self.bias.data
        y = conv_transpose(x, self.weight.data, bias, self.geometry, self.output_padding,
                           max_workspace_bytes=self.max_workspace_bytes)
        self._x = x if self.training else None
        return y

    @fill_doc(grad_output_shape="``(N, out, *out_spatial)``", grad_input_shape="``(N, in, *spatial)``")
    def backward(self, grad_output):
        """dL/dx = conv(dL/dy, W); dL/dW is the associated convolution's weight gradient.

        {layer_backward}
        """
        x = self._need_cache(self._x)
        self._x = None
        grad_x, grad_w, grad_b = conv_transpose_grads(x, self.weight.data, self.geometry, self.output_padding,
                                                      grad_output, max_workspace_bytes=self.max_workspace_bytes)
        self.weight.grad += grad_w
        if self.bias is not None:
            self.bias.grad += grad_b
        return grad_x

    def extra_repr(self) -> str:
        return conv_extra_repr(self, **({"output_padding": self.output_padding} if any(self.output_padding) else {}))


@fill_doc(body=_BODY, c_in="in", c_out="out", **CONV_ND[1])
class ConvTranspose1d(_ConvTransposeNd):
    """1-D transposed convolution layer (the convolution's gradient as a layer), as ``torch.nn.ConvTranspose1d``.

    {body}

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> up = nn.ConvTranspose1d(3, 2, 4, stride=2, padding=1, seed=0)
    >>> up.weight.shape
    (3, 2, 4)
    >>> y = up(np.ones((5, 3, 8), dtype=np.float32))
    >>> y.shape
    (5, 2, 16)
    >>> up.backward(np.ones_like(y)).shape, up.bias.grad.tolist()
    ((5, 3, 8), [80.0, 80.0])
    """

    nd = 1


@fill_doc(body=_BODY, c_in="in", c_out="out", **CONV_ND[2])
class ConvTranspose2d(_ConvTransposeNd):
    """2-D transposed convolution layer (the convolution's gradient as a layer), as ``torch.nn.ConvTranspose2d``.

    {body}

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

    nd = 2


@fill_doc(body=_BODY, c_in="in", c_out="out", **CONV_ND[3])
class ConvTranspose3d(_ConvTransposeNd):
    """3-D transposed convolution layer (the convolution's gradient as a layer), as ``torch.nn.ConvTranspose3d``.

    {body}

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> up = nn.ConvTranspose3d(2, 4, (1, 2, 2), stride=(1, 2, 2), groups=2, dtype="float64", seed=0)
    >>> up.weight.shape
    (2, 2, 1, 2, 2)
    >>> y = up(np.ones((1, 2, 3, 4, 4)))
    >>> y.shape
    (1, 4, 3, 8, 8)
    >>> up.backward(np.ones_like(y)).shape
    (1, 2, 3, 4, 4)
    """

    nd = 3
