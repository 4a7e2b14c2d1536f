"""Convolutions with PyTorch's names and semantics, on the op layer (:mod:`xpconv._ops`).

``x`` is ``(N, C, *spatial)`` (or ``(C, *spatial)`` unbatched) and ``weight`` is
``(O, C // groups, *kernel)``; with ``channels_last=True`` they are
``(N, *spatial, C)`` and ``(O, *kernel, C // groups)``.  The namespace and
device come from the inputs, and so do those of every result.
"""
from __future__ import annotations

from ._docstrings import CONV_ND, fill_doc
from ._ops import DEFAULT_MAX_WORKSPACE_BYTES, ConvSpec, conv, conv_grads, prepare, select_algorithm

__all__ = [
    "conv1d", "conv2d", "conv3d",
    "conv1d_backward", "conv2d_backward", "conv3d_backward",
]


def _conv(nd, x, weight, bias, stride, padding, dilation, groups, channels_last, max_workspace_bytes, algorithm):
    spec = ConvSpec(nd, stride, padding, dilation, groups)
    return conv(x, weight, bias, spec, channels_last=channels_last, max_workspace_bytes=max_workspace_bytes,
                algorithm=algorithm)[0]


def _conv_backward(nd, grad_output, x, weight, stride, padding, dilation, groups, channels_last,
                   max_workspace_bytes, algorithm):
    spec = ConvSpec(nd, stride, padding, dilation, groups)
    ctx = prepare(x, weight, None, spec, channels_last=channels_last, grad_output=grad_output)
    ctx.algorithm = select_algorithm(algorithm, ctx, None, max_workspace_bytes)
    return conv_grads(ctx, grad_output, max_workspace_bytes=max_workspace_bytes)


_WS = DEFAULT_MAX_WORKSPACE_BYTES

# The docstrings of conv{nd}d and conv{nd}d_backward, filled per dimension from CONV_ND (see xpconv._docstrings).
_CONV_BODY = """
    Shapes::

        x       (N, C, {spatial})
        weight  (O, C // groups, {kernel})
        bias    (O,)
        y       (N, O, {out})

    Each output size is {output_size} per axis.

    With ``channels_last=True``: x (N, {spatial}, C), weight (O, {kernel}, C // groups) -> y (N, {out}, O).
    An unbatched ``x`` (no ``N`` axis) gives an unbatched ``y``.

    Parameters
    ----------
    x : array
        Input, ``(N, C, *spatial)`` or unbatched ``(C, *spatial)``; float32, float64, float16 or (torch)
        bfloat16.
    weight : array
        Kernel, ``(O, C // groups, *kernel)``; same library, device and dtype as ``x``.
    bias : array or None, default None
        Per-output-channel bias ``(O,)``, or None for no bias.
    {conv_hyper}
    channels_last : bool, default False
        Take and return ``x``, ``weight`` and ``y`` with the channels as the last axis (layouts above).
    {max_workspace_bytes}
    {algorithm}

    Returns
    -------
    y : array
        The convolution (cross-correlation, as in PyTorch) of ``x`` with ``weight`` plus ``bias``,
        ``(N, O, *out)``, in ``x``'s namespace, device and dtype.

    Raises
    ------
    TypeError
        If an argument is not a NumPy, CuPy, torch or array-api-strict array, the arrays come from
        different libraries, a dtype is not a supported floating one,
        or the dtypes differ (nothing is promoted); also if a tuple of ``stride``/``padding``/``dilation``
        holds a non-int.
    ValueError
        If the arrays are on different devices; ``x`` or ``weight`` has the wrong rank;
        {bad_conv_hyper};
        ``groups`` does not divide ``C`` or ``O``; ``C`` differs from ``weight``'s ``C // groups`` times
        ``groups``; the dilated kernel is larger than the padded input; ``bias`` is not ``(O,)``;
        ``max_workspace_bytes`` is not a positive int or None, or is smaller than one output row's workspace
        (with Winograd, FFT or the direct algorithm: one sample's); ``algorithm`` is unknown, or one that cannot
        do the geometry (Winograd: 2-D 3x3 stride 1; direct: depthwise).
    MemoryError
        If the workspace would exceed ``$XPCONV_MAX_MEMORY_FRACTION`` (default 0.9) of the device's free memory.

    See Also
    --------
    :func:`conv{nd}d_backward`, :class:`xpconv.nn.Conv{nd}d`
"""

_BACKWARD_BODY = """
    Pass the same ``x``, ``weight`` and hyper-parameters as to the forward call; nothing is cached
    between the two calls.  grad_input is col2im(Wᵀ · dY).

    Parameters
    ----------
    grad_output : array
        dL/dy, with the forward output's shape (layout as ``x``'s, see :func:`conv{nd}d`).
    x : array
        The forward input.
    weight : array
        The forward kernel.
    stride : int or tuple of int, default 1
    padding : int, tuple of int, "valid" or "same", default 0
    dilation : int or tuple of int, default 1
    groups : int, default 1
    channels_last : bool, default False
        The forward call's hyper-parameters, with the meanings given in :func:`conv{nd}d`.
    max_workspace_bytes : int or None, default 256 MiB
        Bound on the workspace, as in :func:`conv{nd}d`.
    algorithm : {"auto", "im2col", "winograd", "winograd4x4", "direct", "fft"}, default "auto"
        The algorithm, as in :func:`conv{nd}d`.

    Returns
    -------
    grad_input : array
        dL/dx, ``x``'s shape.
    grad_weight : array
        dL/dweight, ``weight``'s shape.
    grad_bias : array
        dL/dbias ``(O,)``: ``grad_output`` summed over the batch and spatial axes (returned whether or
        not the forward call had a bias).

    Raises
    ------
    TypeError
        In the cases of :func:`conv{nd}d`, and if ``grad_output`` is not an array of ``x``'s library and dtype.
    ValueError
        In the cases of :func:`conv{nd}d`, and if ``grad_output`` is on another device than ``x`` or does not
        have the forward output's shape.
    MemoryError
        As in :func:`conv{nd}d`.
"""


@fill_doc(body=_CONV_BODY, **CONV_ND[1])
def conv1d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1, channels_last=False,
           max_workspace_bytes=_WS, algorithm="auto"):
    """1-D convolution (PyTorch's ``torch.nn.functional.conv1d``).

    {body}

    Examples
    --------
    >>> import numpy as np, xpconv
    >>> x = np.ones((2, 3, 10), dtype=np.float32)
    >>> w = np.ones((4, 3, 3), dtype=np.float32)
    >>> xpconv.conv1d(x, w).shape
    (2, 4, 8)
    >>> xpconv.conv1d(x, w, padding="same", dilation=2).shape
    (2, 4, 10)
    >>> xpconv.conv1d(x, w)[0, 0].tolist()
    [9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0]
    """
    return _conv(1, x, weight, bias, stride, padding, dilation, groups, channels_last, max_workspace_bytes, algorithm)


@fill_doc(body=_CONV_BODY, **CONV_ND[2])
def conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1, channels_last=False,
           max_workspace_bytes=_WS, algorithm="auto"):
    """2-D convolution (PyTorch's ``torch.nn.functional.conv2d``).

    {body}

    Examples
    --------
    >>> import numpy as np, xpconv
    >>> x = np.ones((1, 1, 4, 4), dtype=np.float32)
    >>> w = np.ones((2, 1, 3, 3), dtype=np.float32)
    >>> y = xpconv.conv2d(x, w, padding=1)
    >>> y.shape
    (1, 2, 4, 4)
    >>> y[0, 0].tolist()
    [[4.0, 6.0, 6.0, 4.0], [6.0, 9.0, 9.0, 6.0], [6.0, 9.0, 9.0, 6.0], [4.0, 6.0, 6.0, 4.0]]
    >>> xpconv.conv2d(x, w, stride=2).shape
    (1, 2, 1, 1)
    >>> xpconv.conv2d(x[0], w, padding="same").shape       # unbatched
    (2, 4, 4)
    >>> x_nhwc = np.ones((1, 4, 4, 1), dtype=np.float32)
    >>> xpconv.conv2d(x_nhwc, np.ones((2, 3, 3, 1), dtype=np.float32), channels_last=True).shape
    (1, 2, 2, 2)
    """
    return _conv(2, x, weight, bias, stride, padding, dilation, groups, channels_last, max_workspace_bytes, algorithm)


@fill_doc(body=_CONV_BODY, **CONV_ND[3])
def conv3d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1, channels_last=False,
           max_workspace_bytes=_WS, algorithm="auto"):
    """3-D convolution (PyTorch's ``torch.nn.functional.conv3d``).

    {body}

    Examples
    --------
    >>> import numpy as np, xpconv
    >>> x = np.ones((1, 2, 4, 4, 4), dtype=np.float32)
    >>> w = np.ones((4, 1, 3, 3, 3), dtype=np.float32)    # groups=2: each output sees 1 input channel
    >>> y = xpconv.conv3d(x, w, groups=2)
    >>> y.shape
    (1, 4, 2, 2, 2)
    >>> int(y.sum())
    864
    """
    return _conv(3, x, weight, bias, stride, padding, dilation, groups, channels_last, max_workspace_bytes, algorithm)


@fill_doc(body=_BACKWARD_BODY, **CONV_ND[1])
def conv1d_backward(grad_output, x, weight, *, stride=1, padding=0, dilation=1, groups=1, channels_last=False,
                    max_workspace_bytes=_WS, algorithm="auto"):
    """Gradients of :func:`conv1d`: (grad_input, grad_weight, grad_bias) for ``grad_output = dL/dy``.

    {body}

    Examples
    --------
    >>> import numpy as np, xpconv
    >>> x, w = np.ones((2, 3, 10), dtype=np.float32), np.ones((4, 3, 3), dtype=np.float32)
    >>> dy = np.ones((2, 4, 8), dtype=np.float32)            # dL/dy of L = conv1d(x, w).sum()
    >>> gx, gw, gb = xpconv.conv1d_backward(dy, x, w)
    >>> gx.shape, gw.shape, gb.shape
    ((2, 3, 10), (4, 3, 3), (4,))
    >>> gb.tolist()
    [16.0, 16.0, 16.0, 16.0]
    """
    return _conv_backward(1, grad_output, x, weight, stride, padding, dilation, groups, channels_last,
                          max_workspace_bytes, algorithm)


@fill_doc(body=_BACKWARD_BODY, **CONV_ND[2])
def conv2d_backward(grad_output, x, weight, *, stride=1, padding=0, dilation=1, groups=1, channels_last=False,
                    max_workspace_bytes=_WS, algorithm="auto"):
    """Gradients of :func:`conv2d`: (grad_input, grad_weight, grad_bias) for ``grad_output = dL/dy``.

    {body}

    Examples
    --------
    >>> import numpy as np, xpconv
    >>> x, w = np.ones((1, 1, 4, 4), dtype=np.float32), np.ones((2, 1, 3, 3), dtype=np.float32)
    >>> dy = np.ones_like(xpconv.conv2d(x, w, padding=1))    # dL/dy of L = y.sum()
    >>> gx, gw, gb = xpconv.conv2d_backward(dy, x, w, padding=1)
    >>> gx.shape, gw.shape, gb.shape
    ((1, 1, 4, 4), (2, 1, 3, 3), (2,))
    >>> gw[0, 0].tolist()
    [[9.0, 12.0, 9.0], [12.0, 16.0, 12.0], [9.0, 12.0, 9.0]]
    >>> gb.tolist()
    [16.0, 16.0]
    """
    return _conv_backward(2, grad_output, x, weight, stride, padding, dilation, groups, channels_last,
                          max_workspace_bytes, algorithm)


@fill_doc(body=_BACKWARD_BODY, **CONV_ND[3])
def conv3d_backward(grad_output, x, weight, *, stride=1, padding=0, dilation=1, groups=1, channels_last=False,
                    max_workspace_bytes=_WS, algorithm="auto"):
    """Gradients of :func:`conv3d`: (grad_input, grad_weight, grad_bias) for ``grad_output = dL/dy``.

    {body}

    Examples
    --------
    >>> import numpy as np, xpconv
    >>> x, w = np.ones((1, 2, 4, 4, 4), dtype=np.float32), np.ones((4, 1, 3, 3, 3), dtype=np.float32)
    >>> dy = np.ones((1, 4, 2, 2, 2), dtype=np.float32)      # dL/dy of L = conv3d(x, w, groups=2).sum()
    >>> gx, gw, gb = xpconv.conv3d_backward(dy, x, w, groups=2)
    >>> gx.shape, gw.shape, gb.tolist()
    ((1, 2, 4, 4, 4), (4, 1, 3, 3, 3), [8.0, 8.0, 8.0, 8.0])
    """
    return _conv_backward(3, grad_output, x, weight, stride, padding, dilation, groups, channels_last,
                          max_workspace_bytes, algorithm)
