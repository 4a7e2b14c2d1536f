"""Convolution layers Conv1d / Conv2d / Conv3d over the shared im2col engine."""
from __future__ import annotations

import math

from .._docstrings import CONV_ND, fill_doc
from .._geometry import make_geometry
from .._ops import DEFAULT_MAX_WORKSPACE_BYTES, check_max_workspace_bytes, choose_algorithm, conv, conv_grads
from ..validation import int_tuple, positive_int
from .init import init_weight_and_bias
from .module import Module, Parameter

__all__ = ["Conv1d", "Conv2d", "Conv3d"]

# The body of Conv{nd}d's docstring, filled per dimension from CONV_ND (see xpconv._docstrings).
_LAYER_BODY = """
    Shapes: (N, C, {spatial}) -> (N, O, {out}); weight (O, C // groups, {kernel}).  With ``channels_last``:
    (N, {spatial}, C) -> (N, {out}, O) and weight (O, {kernel}, C // groups).  Unbatched inputs (no ``N``)
    work too.  Each output size is {output_size}.

    Parameters
    ----------
    {in_out_channels}
    kernel_size : int or tuple of {nd} int
        Kernel size ``{kernel}``; one int for all axes or one per axis, each >= 1.
    {conv_hyper}
    {bias}
    {backend_device_dtype}
    channels_last : bool, default False
        Take ``x`` and return ``y`` with the channels last, and store ``weight`` as
        ``(O, *kernel, C // groups)``.
    {seed}
    {max_workspace_bytes}
    {algorithm}

    Attributes
    ----------
    weight : Parameter
        ``(O, C // groups, *kernel)``, initialized as PyTorch does: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        with ``fan_in = C // groups * prod(kernel)``.
    bias : Parameter or None
        ``(O,)``, same initialization; None when ``bias=False``.

    Raises
    ------
    {raises_unavailable}
    ValueError
        If ``in_channels``/``out_channels`` is not a positive int, ``kernel_size`` is invalid,
        {bad_conv_hyper},
        ``groups`` does not divide both channel counts,
        {bad_backend}, ``algorithm`` is unknown or one that cannot do the geometry (Winograd: 2-D 3x3 stride 1;
        direct: depthwise).
    TypeError
        If a tuple hyper-parameter holds a non-int, or ``backend`` is neither a name nor a Backend.

    See Also
    --------
    xpconv.conv{nd}d, xpconv.conv{nd}d_backward
"""


class _ConvNd(Module):
    """Shared implementation of :class:`Conv1d`, :class:`Conv2d` and :class:`Conv3d` (see those for the docs)."""

    nd = 0

    weight: Parameter
    bias: Parameter | None

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, *, backend=None, device=None, dtype="float32", channels_last=False, seed=None,
                 max_workspace_bytes=DEFAULT_MAX_WORKSPACE_BYTES, algorithm="auto"):
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
        self.max_workspace_bytes = check_max_workspace_bytes(max_workspace_bytes)
        choose_algorithm(algorithm, self.geometry, in_channels)                      # a ValueError now, not later
        self.algorithm = algorithm
        cg = in_channels // groups
        init_weight_and_bias(self, (out_channels, cg, *kernel), cg * math.prod(kernel),
                             out_channels if bias else None, seed, channels_last)
        self._ctx = None
        self._input_grad = True

    def requires_input_grad(self, needed: bool = True) -> None:
        """With ``needed=False``, :meth:`backward` skips dL/dx (one GEMM and the col2im) and returns None."""
        self._input_grad = bool(needed)

    def _clear_cache(self) -> None:
        self._ctx = None

    @fill_doc(x_shape="``(N, C, *spatial)`` or unbatched ``(C, *spatial)``\n(``(N, *spatial, C)`` with channels_last)",
              y_shape="``(N, O, *out)`` (``(N, *out, O)`` with channels_last; unbatched for an unbatched ``x``)",
              bad_x="of the wrong rank or channel count,\nor smaller than the dilated kernel")
    def forward(self, x):
        """Convolve ``x`` with ``weight`` and add ``bias``; in training mode keep what backward needs.

        {layer_forward}
        """
        y, ctx = conv(x, self.weight.data, None if self.bias is None else self.bias.data, self.geometry,
                      channels_last=self.channels_last, max_workspace_bytes=self.max_workspace_bytes,
                      keep_cols=self.training, algorithm=self.algorithm)
        self._ctx = ctx if self.training else None
        return y

    @fill_doc()
    def backward(self, grad_output):
        """Back-propagate ``grad_output = dL/dy`` through the last training-mode forward; return dL/dx (None after
        ``requires_input_grad(False)``).

        {layer_backward}
        """
        ctx = self._need_cache(self._ctx)
        self._ctx = None
        grad_x, grad_w, grad_b = conv_grads(ctx, grad_output, max_workspace_bytes=self.max_workspace_bytes,
                                            need_input_grad=self._input_grad)
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
    if getattr(layer, "algorithm", "auto") != "auto":
        parts.append(f"algorithm={layer.algorithm!r}")
    return ", ".join([*parts, f"backend={layer.backend.name!r}"])


@fill_doc(body=_LAYER_BODY, **CONV_ND[1])
class Conv1d(_ConvNd):
    """1-D convolution layer with explicit forward and backward, as ``torch.nn.Conv1d``.

    {body}

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> conv = nn.Conv1d(3, 6, 5, stride=2, groups=3, bias=False, seed=0)
    >>> conv.weight.shape, conv.bias
    ((6, 1, 5), None)
    >>> y = conv(np.ones((2, 3, 11), dtype=np.float32))
    >>> y.shape
    (2, 6, 4)
    >>> conv.backward(np.ones_like(y)).shape
    (2, 3, 11)
    >>> conv.weight.grad[0].tolist()
    [[8.0, 8.0, 8.0, 8.0, 8.0]]
    """

    nd = 1


@fill_doc(body=_LAYER_BODY, **CONV_ND[2])
class Conv2d(_ConvNd):
    """2-D convolution layer with explicit forward and backward, as ``torch.nn.Conv2d``.

    {body}

    Examples
    --------
    ``nn.Conv2d(3, 16, 3, padding="same", backend="cupy")`` runs on the GPU; here, on NumPy:

    >>> import numpy as np
    >>> from xpconv import nn
    >>> conv = nn.Conv2d(1, 2, 3, padding="same", seed=0)
    >>> conv.weight.shape, conv.bias.shape
    ((2, 1, 3, 3), (2,))
    >>> x = np.ones((4, 1, 8, 8), dtype=np.float32)
    >>> y = conv(x)
    >>> y.shape
    (4, 2, 8, 8)
    >>> grad_x = conv.backward(np.ones_like(y))           # dL/dx; dL/dW and dL/db go to .grad
    >>> grad_x.shape, conv.weight.grad.shape
    ((4, 1, 8, 8), (2, 1, 3, 3))
    >>> conv.bias.grad.tolist()
    [256.0, 256.0]
    >>> nn.Conv2d(3, 8, 3, channels_last=True, seed=0)(np.ones((2, 6, 6, 3), dtype=np.float32)).shape
    (2, 4, 4, 8)
    """

    nd = 2


@fill_doc(body=_LAYER_BODY, **CONV_ND[3])
class Conv3d(_ConvNd):
    """3-D convolution layer with explicit forward and backward, as ``torch.nn.Conv3d``.

    {body}

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> conv = nn.Conv3d(2, 4, (1, 3, 3), padding=(0, 1, 1), dtype="float64", seed=0)
    >>> y = conv(np.ones((1, 2, 3, 5, 5)))
    >>> y.shape, y.dtype
    ((1, 4, 3, 5, 5), dtype('float64'))
    >>> conv.backward(np.ones_like(y)).shape
    (1, 2, 3, 5, 5)
    >>> conv.bias.grad.tolist()
    [75.0, 75.0, 75.0, 75.0]
    """

    nd = 3
