"""Shared pieces of the public docstrings, so that each piece of documentation is written once.

:data:`DOCS` maps a name to a numpydoc fragment (parameter entries, Raises entries, a sentence) or to the
default of a slot inside one; :func:`fill_doc` fills a docstring's ``{name}`` placeholders from it and
from per-object values when the function or class is defined, so ``help()`` and doctest read the
complete ``__doc__``.  Only ``{word}`` is a placeholder; other braces, as in ``{"float32", "float64"}``,
are text.  Imports nothing but the standard library's ``re`` and ``textwrap``.
"""
from __future__ import annotations

import re
import textwrap

__all__ = ["CONV_ND", "DOCS", "STATELESS", "fill_doc", "render"]

_PLACEHOLDER = re.compile(r"\{(\w+)\}")

DOCS = {
    # -- constructor parameters shared by the layers --
    "backend_device_dtype": """
        backend : str, Backend or None, default None
            {backend_role}
            ``"numpy"``, ``"torch"``, ``"cupy"``, ``"array_api_strict"`` or ``"auto"`` (CuPy when a CUDA device
            is usable, else NumPy); None: the default backend (:func:`xpconv.set_default_backend`,
            ``$XPCONV_BACKEND``, else ``"numpy"``).
        device : int, str or None, default None
            A GPU index or ``"cuda:N"`` for cupy/torch, ``"cpu"`` otherwise; None: the backend's default.
        dtype : {"float32", "float64", "float16", "bfloat16"}, default "float32"
            {dtype_role}
            float16 needs a library that has it (not array-api-strict), bfloat16 torch (docs/precision.md).
        """,
    "backend_role": "Where the parameters live and the layer computes:",
    "dtype_role": "Floating dtype of the parameters; inputs must have the same dtype.",
    "seed": """
        seed : int or None, default None
            Seed of the NumPy generator that draws the initial weight and bias on the host, so one seed gives
            the same numbers on every backend; None: fresh entropy.
        """,
    "in_out_channels": """
        in_channels : int
            Number of input channels ``{c_in}``.
        out_channels : int
            Number of output channels ``{c_out}``.
        """,
    "bias": """
        bias : bool, default True
            Whether the layer has a learnable bias ``({c_out},)``.
        """,
    "c_in": "C",
    "c_out": "O",
    "max_workspace_bytes": """
        max_workspace_bytes : int or None, default 256 MiB
            Bound on the workspace (column buffers and their products) of each pass, a positive int: the
            batch is processed in chunks whose workspace stays under it, and a sample over it in bands of
            output rows.  None: the whole batch in one chunk.  y and dL/dx do not depend on it (to the
            last bit on NumPy while the GEMMs take the same BLAS kernel), dL/dW to rounding (see
            docs/layers.md).  Raises ValueError when one output row alone needs more.  On a GPU the
            default grows to half the memory the device has free (docs/gpu.md).
        """,
    "algorithm": """
        algorithm : {"auto", "im2col", "winograd", "winograd4x4", "direct", "fft"}, default "auto"
            How the convolution is computed, like cuDNN's algorithm choice: ``"im2col"`` (any geometry, the
            reference path), ``"winograd"`` (F(2x2, 3x3): 2-D, 3x3, stride 1, dilation 1, any padding and
            groups; 2.25x fewer multiplications, float32 error within 4 eps32 of the scale, as im2col),
            ``"winograd4x4"`` (F(4x4, 3x3), the same geometries: 4x fewer multiplications, float32 error within
            32 eps32), ``"direct"`` (depthwise only, one input channel per group: a multiply-add per kernel tap,
            no columns), ``"fft"`` (any geometry, through ``rfftn``/``irfftn``: for large kernels; its float32
            error grows with the transform size) or ``"auto"``: im2col, or with :func:`xpconv.set_autotune` the
            fastest of the algorithms within auto's float32 bound, timed once per shape (see docs/algorithms.md).
            A ValueError names why an algorithm cannot do a geometry.
        """,
    # -- the convolution's hyper-parameters (xpconv.conv*d and nn.Conv*d) --
    "conv_hyper": """
        stride : int or tuple of int, default 1
            Step of the kernel along each spatial axis; one int for all axes or one per axis, each >= 1.
        padding : int, tuple of int, "valid" or "same", default 0
            Zeros added on both sides of each spatial axis (one int or one per axis, each >= 0).  ``"valid"``
            means no padding; ``"same"`` pads so the output has the input's spatial shape (stride 1 only; an
            odd total padding puts the extra zero on the high side, as in PyTorch).
        dilation : int or tuple of int, default 1
            Spacing between kernel taps along each spatial axis, each >= 1.
        groups : int, default 1
            Number of blocked connections: the channels are split into ``groups`` groups and group ``g`` of
            the output sees only group ``g`` of the input.  Must divide ``C`` and ``O``.
        """,
    "bad_conv_hyper": ("``stride``, ``padding``, ``dilation`` or ``groups`` is invalid (wrong length, out of range,\n"
                       "an unknown padding string, ``\"same\"`` with a stride other than 1)"),
    "output_size": "``(size + 2 * padding - dilation * (k - 1) - 1) // stride + 1``",
    # -- Raises entries --
    "bad_backend": "``dtype`` is unknown or not available on the backend, or ``backend``/``device`` is unknown",
    "raises_unavailable": """
        xpconv.BackendUnavailableError
            If the backend is not installed or has no usable device.
        """,
    "raises_no_forward": """
        RuntimeError
            If no forward in training mode precedes this call (each forward's cache serves one backward).
        """,
    "raises_backward": """
        {raises_no_forward}
        TypeError
            If ``grad_output`` is not an array of the layer's library and dtype.
        ValueError
            If ``grad_output`` is on another device or does not have the output's shape.
        """,
    # -- the sections of a layer's forward and backward --
    "layer_forward": """
        Parameters
        ----------
        x : array
            {x_shape} on the layer's backend and device, of its dtype.

        Returns
        -------
        y : array
            {y_shape}.

        Raises
        ------
        TypeError
            If ``x`` is not an array of the layer's library and dtype.
        ValueError
            If ``x`` is on another device, {bad_x}.
        """,
    "layer_backward": """
        Adds dL/dweight to ``weight.grad`` and dL/dbias to ``bias.grad``: they accumulate (call
        ``zero_grad()`` between steps).  The forward cache is cleared.

        Parameters
        ----------
        grad_output : array
            dL/dy, {grad_output_shape}.

        Returns
        -------
        grad_input : array
            dL/dx, {grad_input_shape}.

        Raises
        ------
        {raises_backward}
        """,
    "grad_output_shape": "the forward output's shape",
    "grad_input_shape": "the forward input's shape",
}

# The roles in ``backend_device_dtype`` of a layer that holds no arrays (ReLU, Flatten, the poolings).
STATELESS = {
    "backend_role": "The module's backend (the layer holds no arrays and takes floating inputs of any backend):",
    "dtype_role": "The module's dtype name; the output has the input's dtype.",
}

# Per-dimension names of the N-d convolutions' docs: spatial axes, output axes, kernel axes.
CONV_ND = {
    1: {"nd": "1", "spatial": "L", "out": "OL", "kernel": "k"},
    2: {"nd": "2", "spatial": "H, W", "out": "OH, OW", "kernel": "kh, kw"},
    3: {"nd": "3", "spatial": "D, H, W", "out": "OD, OH, OW", "kernel": "kd, kh, kw"},
}


def render(template: str, **values: str) -> str:
    """``template`` with each ``{name}`` replaced by ``values[name]``, else ``DOCS[name]``, filled in turn.

    A value is dedented and stripped of its surrounding blank lines; its second and later lines get the
    indentation of the line its placeholder stands on, so a block written flush left lands in place.

    Raises KeyError for a name in neither ``values`` nor ``DOCS``.

    >>> render("Parameters\\n    {x}", x="x : int\\n    The x.")
    'Parameters\\n    x : int\\n        The x.'
    """
    def replace(match: re.Match) -> str:
        name = match[1]
        text = render(textwrap.dedent(values[name] if name in values else DOCS[name]).strip("\n"), **values)
        line = template[template.rfind("\n", 0, match.start()) + 1:]
        indent = line[:len(line) - len(line.lstrip(" "))]
        first, *rest = text.split("\n")
        return "\n".join([first, *(indent + t if t else t for t in rest)])

    return _PLACEHOLDER.sub(replace, template)


def fill_doc(**values: str):
    """Decorator: fill the ``{name}`` placeholders of a function's or class's ``__doc__`` (see :func:`render`).

    >>> @fill_doc(what="a layer")
    ... def f():
    ...     '''Make {what}.'''
    >>> f.__doc__
    'Make a layer.'
    """
    def decorate(obj):
        if obj.__doc__:                                     # None under ``python -OO``
            obj.__doc__ = render(obj.__doc__, **values)
        return obj

    return decorate
