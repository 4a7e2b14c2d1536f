"""Convolutions with PyTorch's names and semantics, on the op layer (:mod:`xpconv._ops`).

``x`` is ``(N, C, *spatial)`` (or ``(C, *spatial)`` unbatched) and ``weight`` is
``(O, C // groups, *kernel)``; with ``channels_last=True`` they are
``(N, *spatial, C)`` and ``(O, *kernel, C // groups)``.  The namespace and
device come from the inputs, and so do those of every result.
"""
from __future__ import annotations

from ._ops import DEFAULT_MAX_WORKSPACE_BYTES, conv, conv_grads, prepare, weight_geometry

__all__ = [
    "conv1d", "conv2d", "conv3d",
    "conv1d_backward", "conv2d_backward", "conv3d_backward",
]


def _conv(nd, x, weight, bias, stride, padding, dilation, groups, channels_last, max_workspace_bytes):
    geom = weight_geometry(nd, x, weight, stride, padding, dilation, groups, channels_last)
    return conv(x, weight, bias, geom, channels_last=channels_last, max_workspace_bytes=max_workspace_bytes)[0]


def _conv_backward(nd, grad_output, x, weight, stride, padding, dilation, groups, channels_last,
                   max_workspace_bytes):
    geom = weight_geometry(nd, x, weight, stride, padding, dilation, groups, channels_last)
    ctx = prepare(x, weight, None, geom, channels_last=channels_last, grad_output=grad_output)
    return conv_grads(ctx, grad_output, max_workspace_bytes=max_workspace_bytes)


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
