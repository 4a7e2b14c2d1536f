"""Export a model to ONNX: :func:`export` writes the graph of its eval-mode forward pass, batch axis dynamic.

Each layer of :mod:`xpconv.nn` that ONNX can express becomes the standard operator that computes it, built
with the ``onnx`` package's helpers (the ``xpconv[onnx]`` extra) at opset :data:`OPSET` and checked with
``onnx.checker``:

=================================================  ==================================================================
layer                                              ONNX
=================================================  ==================================================================
``Conv1d/2d/3d``                                   ``Conv`` (groups, dilation, padding incl. "same"; channels_last
                                                   between two ``Transpose``)
``ConvTranspose1d/2d/3d``                          ``ConvTranspose`` (incl. ``output_padding``)
``MaxPool1d/2d/3d``                                ``MaxPool``, ceil_mode as explicit end padding
``AvgPool1d/2d/3d``                                ``AveragePool`` (times a constant per output position where the
                                                   divisor is not the window's inside count: ceil_mode,
                                                   count_include_pad, divisor_override)
``AdaptiveAvgPool1d/2d/3d``                        ``GlobalAveragePool``; ``AveragePool`` when each output size
                                                   divides the input's; else ``Einsum`` with the bin-averaging
                                                   matrices
``AdaptiveMaxPool2d``                              ``GlobalMaxPool``; ``MaxPool`` when each output size divides the
                                                   input's (uneven bins: an error)
``BatchNorm1d/2d/3d``, ``SyncBatchNorm``           ``BatchNormalization`` (inference form: the running
                                                   statistics)
``LayerNorm``, ``GroupNorm``                       ``LayerNormalization``, ``GroupNormalization`` (opset 21)
``ReLU``, ``LeakyReLU``, ``ELU``, ``GELU``,        ``Relu``, ``LeakyRelu``, ``Elu``, ``Gelu``, ``Sigmoid``,
``Sigmoid``, ``SiLU``, ``Tanh``, ``Softmax``       ``x * Sigmoid(x)``, ``Tanh``, ``Softmax``
``Linear``                                         ``Gemm`` (2-D input), else ``MatMul`` + ``Add``
``Flatten``                                        ``Flatten`` (from axis 1), else ``Reshape``
``Upsample``                                       ``Resize`` (nearest, integer scales)
``Identity``, ``Dropout``, ``Dropout2d``           ``Identity`` (dropout is the identity in eval mode)
``Sequential``, ``Residual``                       their children in order; ``Add`` for the skip connection
``ZeroPadShortcut`` (ResNet option A)              ``Slice`` with steps, ``Pad`` with zero channels
=================================================  ==================================================================

The export follows the example input through the model once (in eval mode, restoring each module's mode
afterwards), so every layer knows the shape it is given; spatial sizes are fixed by the example, the batch
axis is named ``"batch"`` and free.  A module without an ONNX form (a loss, a ``BatchNorm`` without running
statistics, a user's own layer) stops the export with a ValueError naming it and its place in the model.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import nn
from .backends import to_numpy
from .io import atomic_write
from .models import ZeroPadShortcut
from .nn.pooling import adaptive_bins, pool_output_size

__all__ = ["export", "OPSET"]

OPSET = 21          # GroupNormalization with per-channel scale and bias is opset 21; Gelu is opset 20

_Converter = Callable[["_Graph", Any, str, tuple[int, ...], Any], str]
_CONVERTERS: dict[type, _Converter] = {}


def _exports(*layers: type) -> Callable[[_Converter], _Converter]:
    """Register a converter ``fn(graph, layer, input_name, input_shape, output) -> output_name`` for ``layers``."""
    def register(fn: _Converter) -> _Converter:
        _CONVERTERS.update(dict.fromkeys(layers, fn))
        return fn
    return register


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ImportError('ONNX export needs the onnx package: pip install onnx (or "xpconv[onnx]")') from None
    return onnx


class _Graph:
    """The nodes and initializers (constants) of the graph being built, with fresh names."""

    def __init__(self, onnx: Any, dtype: np.dtype) -> None:
        self.onnx, self.dtype = onnx, dtype
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._used: set[str] = {"input", "output"}        # the graph's own input and output

    def fresh(self, hint: str) -> str:
        name, i = hint, 1
        while name in self._used:
            name, i = f"{hint}_{i}", i + 1
        self._used.add(name)
        return name

    def const(self, hint: str, value: Any, dtype: Any = None) -> str:
        """A constant (an array of the model, in the graph's float dtype unless ``dtype``); returns its name."""
        array = np.asarray(to_numpy(value) if not isinstance(value, (list, tuple, int, float)) else value,
                           dtype=dtype or self.dtype)
        name = self.fresh(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], hint: str, **attributes: Any) -> str:
        """Add ``op`` on ``inputs`` (an empty name: an optional input left out); returns its output's name."""
        out = self.fresh(hint)
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=out, **attributes))
        return out


def export(model: nn.Module, example_input: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``model``'s eval-mode forward pass to ``path`` as an ONNX model; returns the path.

    Parameters
    ----------
    model : nn.Module
        Built from layers of :mod:`xpconv.nn` (and :mod:`xpconv.models`) that ONNX can express (see the
        module's table).  Its training mode is restored afterwards.
    example_input : array
        A batched input ``(N, ...)`` of any backend and the model's dtype; it fixes every axis but the batch
        axis, which stays free (``"batch"``) in the graph's input and output.
    path : str or os.PathLike
        The ``.onnx`` file, written atomically (:func:`xpconv.io.atomic_write`).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ImportError
        If the onnx package is not installed.
    TypeError
        If ``model`` is not a :class:`xpconv.nn.Module`.
    ValueError
        If a module has no ONNX form (named, with its place in the model), or the example has no batch axis.

    Examples
    --------
    docs/interop.md (run by tests/test_readme.py).
    """
    onnx = _onnx()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an xpconv.nn.Module, got {type(model).__name__}")
    x = model.backend.asarray(example_input, dtype=model.dtype)
    if x.ndim < 2:
        raise ValueError(f"example_input must be batched, (N, ...) with the batch axis first, got shape "
                         f"{tuple(x.shape)}")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        graph = _Graph(onnx, np.dtype(to_numpy(x).dtype))
        out, y = _convert(graph, model, "input", x, type(model).__name__)
    finally:
        for m, mode in modes:
            m.training = mode
    elem = onnx.helper.np_dtype_to_tensor_dtype(graph.dtype)
    inputs = [onnx.helper.make_tensor_value_info("input", elem, ["batch", *x.shape[1:]])]
    graph.nodes.append(onnx.helper.make_node("Identity", [out], ["output"], name="output"))
    outputs = [onnx.helper.make_tensor_value_info("output", elem, ["batch", *y.shape[1:]])]
    opsets = [onnx.helper.make_opsetid("", OPSET)]
    proto = onnx.helper.make_model(
        onnx.helper.make_graph(graph.nodes, type(model).__name__, inputs, outputs, graph.initializers),
        opset_imports=opsets, producer_name="xpconv",
        ir_version=onnx.helper.find_min_ir_version_for(opsets))      # the oldest IR: runtimes older than onnx run it
    onnx.checker.check_model(proto, full_check=True)
    return atomic_write(path, proto.SerializeToString())


def _convert(g: _Graph, module: nn.Module, name: str, x: Any, where: str) -> tuple[str, Any]:
    """Nodes for ``module`` applied to the tensor ``name`` (whose example value is ``x``): (output name, output)."""
    if isinstance(module, nn.Sequential):
        for child_name, child in module.named_children():
            name, x = _convert(g, child, name, x, f"{where}.{child_name}")
        return name, x
    if isinstance(module, nn.Residual):
        return _residual(g, module, name, x, where)
    converter = next((_CONVERTERS[t] for t in type(module).__mro__ if t in _CONVERTERS), None)
    if converter is None:
        raise ValueError(f"{type(module).__name__} (at {where}) cannot be exported to ONNX: xpconv.onnx knows no "
                         "ONNX form for it (see the table in xpconv.onnx)")
    y = module(x)
    try:
        return converter(g, module, name, tuple(x.shape), y), y
    except _NotExpressible as exc:
        raise ValueError(f"{type(module).__name__} (at {where}) cannot be exported to ONNX: {exc}") from None


def _residual(g: _Graph, block: nn.Residual, name: str, x: Any, where: str) -> tuple[str, Any]:
    """``activation(main(x) + shortcut(x))``: the branches, an ``Add``, the activation."""
    main, y = name, x
    for child_name, child in block.named_children():
        if child_name not in ("shortcut", "activation"):
            main, y = _convert(g, child, main, y, f"{where}.{child_name}")
    skip, s = (name, x) if block.shortcut is None else _convert(g, block.shortcut, name, x, f"{where}.shortcut")
    out, total = g.node("Add", [main, skip], "add"), y + s
    if block.activation is None:
        return out, total
    return _convert(g, block.activation, out, total, f"{where}.activation")


class _NotExpressible(Exception):
    """A layer's configuration that ONNX has no operator for (the message says which)."""


# -- convolutions ---------------------------------------------------------------------------------------
def _pads(geometry: Any) -> list[int]:
    """ONNX ``pads``: every axis's start padding, then every axis's end padding."""
    return [lo for lo, _ in geometry.padding] + [hi for _, hi in geometry.padding]


@_exports(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(g: _Graph, layer: Any, name: str, shape: tuple[int, ...], y: Any) -> str:
    geom, nd = layer.geometry, layer.nd
    weight = to_numpy(layer.weight.data)
    if layer.channels_last:     # (N, *s, C) -> (N, C, *s); weight (O, *k, C/g) -> (O, C/g, *k)
        name = g.node("Transpose", [name], "to_channels_first", perm=[0, nd + 1, *range(1, nd + 1)])
        weight = np.moveaxis(weight, -1, 1)
    inputs = [name, g.const("weight", weight)] + ([g.const("bias", layer.bias.data)] if layer.bias is not None else [])
    out = g.node("Conv", inputs, "conv", kernel_shape=list(geom.kernel), strides=list(geom.stride), pads=_pads(geom),
                 dilations=list(geom.dilation), group=geom.groups)
    if layer.channels_last:
        out = g.node("Transpose", [out], "to_channels_last", perm=[0, *range(2, nd + 2), 1])
    return out


@_exports(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _conv_transpose(g: _Graph, layer: Any, name: str, shape: tuple[int, ...], y: Any) -> str:
    geom = layer.geometry
    inputs = [name, g.const("weight", layer.weight.data)]
    if layer.bias is not None:
        inputs.append(g.const("bias", layer.bias.data))
    return g.node("ConvTranspose", inputs, "conv_transpose", kernel_shape=list(geom.kernel),
                  strides=list(geom.stride), pads=_pads(geom), dilations=list(geom.dilation), group=geom.groups,
                  output_padding=list(layer.output_padding))


# -- pooling --------------------------------------------------------------------------------------------
def _window_pads(layer: Any, spatial: tuple[int, ...]) -> list[int]:
    """Explicit pads of a window pooling: the start padding, and the end padding that reaches the last window
    (ceil_mode's extra windows included), so that ONNX's floor output size is the layer's."""
    ends = []
    for size, k, s, p, d in zip(spatial, layer.kernel_size, layer.stride, layer.padding, layer.dilation, strict=True):
        out = pool_output_size(size, k, s, p, d, layer.ceil_mode)
        ends.append(max(0, (out - 1) * s + d * (k - 1) + 1 - size - p))
    return [*layer.padding, *ends]


@_exports(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
def _max_pool(g: _Graph, layer: Any, name: str, shape: tuple[int, ...], y: Any) -> str:
    return g.node("MaxPool", [name], "max_pool", kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                  pads=_window_pads(layer, shape[2:]), dilations=list(layer.dilation))


@_exports(nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
def _avg_pool(g: _Graph, layer: Any, name: str, shape: tuple[int, ...], y: Any) -> str:
    """The mean over each window's inside values (``count_include_pad=0``), times inside count / the layer's
    divisor: that factor is the layer's own output on an all-ones image, a constant (1, 1, *out)."""
    out = g.node("AveragePool", [name], "avg_pool", kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                 pads=_window_pads(layer, shape[2:]), count_include_pad=0)
    ones = layer.backend.asarray(np.ones((1, 1, *shape[2:])), dtype=layer.dtype)
    factor = to_numpy(layer(ones))
    if np.all(factor == 1):
        return out
    return g.node("Mul", [out, g.const("divisor_factor", factor)], "avg_pool_scaled")


@_exports(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d)
def _adaptive_pool(g: _Graph, layer: Any, name: str, shape: tuple[int, ...], y: Any) -> str:
    spatial, out = shape[2:], tuple(y.shape[2:])
    kind = "Max" if isinstance(layer, nn.AdaptiveMaxPool2d) else "Average"
    if all(o == 1 for o in out):
        return g.node(f"Global{kind}Pool", [name], f"global_{kind.lower()}_pool")
    if all(s % o == 0 for s, o in zip(spatial, out, strict=True)):
        window = [s // o for s, o in zip(spatial, out, strict=True)]
        return g.node(f"{kind}Pool", [name], f"{kind.lower()}_pool", kernel_shape=window, strides=window)
    if kind == "Max":
        raise _NotExpressible(f"output size {out} does not divide the input size {spatial} (uneven bins have no "
                              "ONNX operator)")
    letters_in, letters_out = "xyz"[:len(spatial)], "uvw"[:len(spatial)]
    matrices = []
    for size, o in zip(spatial, out, strict=True):
        mat = np.zeros((o, size))
        for i, (lo, hi) in enumerate(adaptive_bins(size, o)):
            mat[i, lo:hi] = 1.0 / (hi - lo)
        matrices.append(g.const("bins", mat))
    equation = ",".join([f"nc{letters_in}", *(f"{a}{b}" for a, b in zip(letters_out, letters_in, strict=True))])
    return g.node("Einsum", [name, *matrices], "adaptive_avg_pool", equation=f"{equation}->nc{letters_out}")


# -- normalization ----------------------------------------------------------------------------------------
def _scale_and_bias(g: _Graph, layer: Any, shape: tuple[int, ...]) -> list[str]:
    """The affine parameters, ones and zeros where the layer has none."""
    scale = layer.weight.data if layer.weight is not None else np.ones(shape)
    bias = layer.bias.data if layer.bias is not None else np.zeros(shape)
    return [g.const("scale", scale), g.const("bias", bias)]


@_exports(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
def _batch_norm(g: _Graph, layer: Any, name: str, shape: tuple[int, ...], y: Any) -> str:
    if layer.running_mean is None or layer.running_var is None:
        raise _NotExpressible("without running statistics (track_running_stats=False) eval mode normalizes with "
                              "each batch's statistics, which ONNX's inference BatchNormalization does not")
    c = (layer.num_features,)
    return g.node("BatchNormalization", [name, *_scale_and_bias(g, layer, c), g.const("mean", layer.running_mean),
                                         g.const("var", layer.running_var)], "batch_norm", epsilon=layer.eps)


@_exports(nn.LayerNorm)
def _layer_norm(g: _Graph, layer: Any, name: str, shape: tuple[int, ...], y: Any) -> str:
    scale = g.const("scale", layer.weight.data if layer.weight is not None else np.ones(layer.normalized_shape))
    bias = [g.const("bias", layer.bias.data)] if layer.bias is not None else []
    return g.node("LayerNormalization", [name, scale, *bias], "layer_norm", axis=-len(layer.normalized_shape),
                  epsilon=layer.eps)


@_exports(nn.GroupNorm)
def _group_norm(g: _Graph, layer: Any, name: str, shape: tuple[int, ...], y: Any) -> str:
    return g.node("GroupNormalization", [name, *_scale_and_bias(g, layer, (layer.num_channels,))], "group_norm",
                  epsilon=layer.eps, num_groups=layer.num_groups)


# -- activations, linear, shapes -----------------------------------------------------------------------------
_ELEMENTWISE = {nn.ReLU: "Relu", nn.Sigmoid: "Sigmoid", nn.Tanh: "Tanh", nn.Identity: "Identity",
                nn.Dropout: "Identity", nn.Dropout2d: "Identity"}


@_exports(*_ELEMENTWISE)
def _elementwise(g: _Graph, layer: Any, name: str, shape: tuple[int, ...], y: Any) -> str:
    op = next(_ELEMENTWISE[t] for t in type(layer).__mro__ if t in _ELEMENTWISE)
    return g.node(op, [name], op.lower())


@_exports(nn.LeakyReLU)
def _leaky_relu(g: _Graph, layer: Any, name: str, shape: tuple[int, ...], y: Any) -> str:
    return g.node("LeakyRelu", [name], "leaky_relu", alpha=layer.negative_slope)


@_exports(nn.ELU)
def _elu(g: _Graph, layer: Any, name: str, shape: tuple[int, ...], y: Any) -> str:
    return g.node("Elu", [name], "elu", alpha=layer.alpha)


@_exports(nn.GELU)
def _gelu(g: _Graph, layer: Any, name: str, shape: tuple[int, ...], y: Any) -> str:
    return g.node("Gelu", [name], "gelu", approximate=layer.approximate)


@_exports(nn.SiLU)
def _silu(g: _Graph, layer: Any, name: str, shape: tuple[int, ...], y: Any) -> str:
    return g.node("Mul", [name, g.node("Sigmoid", [name], "sigmoid")], "silu")


@_exports(nn.Softmax)
def _softmax(g: _Graph, layer: Any, name: str, shape: tuple[int, ...], y: Any) -> str:
    return g.node("Softmax", [name], "softmax", axis=layer.dim)


@_exports(nn.Linear)
def _linear(g: _Graph, layer: Any, name: str, shape: tuple[int, ...], y: Any) -> str:
    weight = to_numpy(layer.weight.data)                                       # (out, in)
    if len(shape) == 2:
        bias = [g.const("bias", layer.bias.data)] if layer.bias is not None else []
        return g.node("Gemm", [name, g.const("weight", weight), *bias], "gemm", transB=1)
    out = g.node("MatMul", [name, g.const("weight_t", weight.T)], "matmul")
    return out if layer.bias is None else g.node("Add", [out, g.const("bias", layer.bias.data)], "linear")


@_exports(nn.Flatten)
def _flatten(g: _Graph, layer: Any, name: str, shape: tuple[int, ...], y: Any) -> str:
    rank = len(shape)
    start, end = layer.start_dim % rank, layer.end_dim % rank
    if start == 0 and end > 0:
        raise _NotExpressible("it merges the batch axis with others, and the graph's batch axis must stay free")
    if start == 1 and end == rank - 1:
        return g.node("Flatten", [name], "flatten", axis=1)
    target = [0] * start + [-1] + list(shape[end + 1:])                    # 0: keep that axis (the batch axis)
    return g.node("Reshape", [name, g.const("shape", target, np.int64)], "flatten")


@_exports(nn.Upsample)
def _upsample(g: _Graph, layer: Any, name: str, shape: tuple[int, ...], y: Any) -> str:
    scales = [o / s for o, s in zip(y.shape[2:], shape[2:], strict=True)]
    return g.node("Resize", [name, "", g.const("scales", scales, np.float32)], "upsample", mode="nearest",
                  coordinate_transformation_mode="asymmetric", nearest_mode="floor",
                  axes=list(range(2, len(shape))))


@_exports(ZeroPadShortcut)
def _zero_pad_shortcut(g: _Graph, layer: Any, name: str, shape: tuple[int, ...], y: Any) -> str:
    s = layer.stride
    if s != 1:
        big = np.iinfo(np.int64).max
        name = g.node("Slice", [name, g.const("starts", [0, 0], np.int64), g.const("ends", [big, big], np.int64),
                                g.const("axes", [2, 3], np.int64), g.const("steps", [s, s], np.int64)], "subsample")
    high = layer.out_channels - layer.in_channels - layer.low
    return g.node("Pad", [name, g.const("pads", [0, layer.low, 0, 0, 0, high, 0, 0], np.int64)], "zero_channels")
