"""Residual networks: basic and bottleneck blocks, and He et al.'s CIFAR ResNets (ResNet-20/32/56).

The module trees and ``state_dict()`` keys are those of the widely used PyTorch CIFAR ResNet
(``conv1, bn1, layer1.{i}, layer2.{i}, layer3.{i}, linear``; blocks ``conv1, bn1, conv2, bn2,
shortcut``), so its weights load without renaming.  Convolution and linear weights are drawn as
``torch.nn.init.kaiming_normal_`` does (N(0, 2 / fan_in)), on the host from a seed, so one seed gives the
same network on every backend; BatchNorm starts at weight 1, bias 0 and the linear bias keeps torch's
default U(-1/sqrt(64), 1/sqrt(64)).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import numpy as np
from array_api_compat import device as device_of

from .. import nn
from .._docstrings import fill_doc
from .._ops import namespace_of
from .._typing import Device
from ..backends import Backend
from ..validation import positive_int

__all__ = ["ZeroPadShortcut", "BasicBlock", "Bottleneck", "cifar_resnet", "resnet20", "resnet32", "resnet56"]

SHORTCUTS = ("A", "B")
_ROLE = {"backend_role": "Where the parameters live and the model computes:"}


def _kaiming_normal(layer: Any, rng: np.random.Generator) -> Any:
    """Redraw ``layer.weight`` as ``torch.nn.init.kaiming_normal_`` (fan_in, ReLU gain): N(0, 2 / fan_in)."""
    shape = layer.weight.shape
    std = math.sqrt(2.0 / math.prod(shape[1:]))
    layer.weight.data = layer.backend.asarray(rng.standard_normal(shape) * std, dtype=layer.dtype)
    return layer


def _conv(rng, in_channels, out_channels, kernel_size, stride=1, **on):
    """A bias-free ``kernel_size`` convolution that keeps the size at stride 1, Kaiming-normal initialized."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False, seed=0,
                     **on)                                    # seed 0: the weight is redrawn from rng
    return _kaiming_normal(conv, rng)


def _shortcut(kind, rng, in_channels, out_channels, stride, **on):
    """None (identity) when the shape is kept, else option A (zero padding) or B (1x1 conv + BatchNorm)."""
    if kind not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {kind!r}")
    if stride == 1 and in_channels == out_channels:
        return None
    if kind == "A":
        return ZeroPadShortcut(in_channels, out_channels, stride, **on)
    return nn.Sequential(_conv(rng, in_channels, out_channels, 1, stride, **on), nn.BatchNorm2d(out_channels, **on))


@fill_doc(backend_role="The module's backend (it holds no arrays):", dtype_role="The module's dtype name.")
class ZeroPadShortcut(nn.Module):
    """He et al.'s option-A shortcut: ``x[:, :, ::stride, ::stride]`` with zero channels added, no parameters.

    (N, in_channels, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride)); the
    ``out_channels - in_channels`` zero channels are split between both ends, the extra one (if odd) at
    the end, so 16 -> 32 puts the input at channels 8..23, as ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8))``
    in the usual PyTorch CIFAR ResNet.  Backward keeps the gradient of the input's channels and puts it
    back on the subsampled positions (zeros elsewhere).

    Parameters
    ----------
    in_channels : int
        Channels of the input.
    out_channels : int
        Channels of the output, >= ``in_channels``.
    stride : int, default 2
        Subsampling step along H and W.
    {backend_device_dtype}

    Raises
    ------
    ValueError
        If a count is not a positive int or ``out_channels < in_channels``.

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv.models import ZeroPadShortcut
    >>> pad = ZeroPadShortcut(1, 3, stride=2)
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> y = pad(x)
    >>> y.shape, y[0, 1].tolist(), float(abs(y[0, 0]).sum() + abs(y[0, 2]).sum())
    ((1, 3, 2, 2), [[0.0, 2.0], [8.0, 10.0]], 0.0)
    >>> pad.backward(np.ones_like(y))[0, 0].tolist()
    [[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2, *, backend=None, device=None,
                 dtype="float32"):
        super().__init__(backend=backend, device=device, dtype=dtype)
        self.in_channels = positive_int("in_channels", in_channels)
        self.out_channels = positive_int("out_channels", out_channels)
        self.stride = positive_int("stride", stride)
        if out_channels < in_channels:
            raise ValueError(f"ZeroPadShortcut adds channels: out_channels={out_channels} must be >= "
                             f"in_channels={in_channels}")
        self.low = (out_channels - in_channels) // 2          # zero channels before the input's
        self._shape: tuple[int, ...] | None = None

    def _clear_cache(self) -> None:
        self._shape = None

    def forward(self, x):
        """The subsampled ``x`` between zero channels; raises ValueError unless x is (N, in_channels, H, W)."""
        xp = namespace_of(x, names=["x"])
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ZeroPadShortcut expects x of shape (N, {self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        s = self.stride
        sub = x[:, :, ::s, ::s]
        n, _, h, w = sub.shape
        parts = [xp.zeros((n, c, h, w), dtype=x.dtype, device=device_of(x))
                 for c in (self.low, self.out_channels - self.in_channels - self.low)]
        self._shape = tuple(x.shape) if self.training else None
        return xp.concat([p for p in (parts[0], sub, parts[1]) if p.shape[1]], axis=1)

    def backward(self, grad_output):
        """dL/dx: the input channels' gradient on the subsampled positions, zeros elsewhere."""
        shape = self._need_cache(self._shape)
        s = self.stride
        n, _, h, w = shape
        self._check_grad_shape(grad_output, (n, self.out_channels, -(-h // s), -(-w // s)))
        self._shape = None
        xp = namespace_of(grad_output, names=["grad_output"])
        g = grad_output[:, self.low:self.low + self.in_channels, :, :]
        if s == 1:
            return g
        grad_x = xp.zeros(shape, dtype=g.dtype, device=device_of(g))
        grad_x[:, :, ::s, ::s] = g
        return grad_x

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


# The parameters every block shares, written once (see xpconv._docstrings).
_BLOCK_PARAMS = """
    stride : int, default 1
        Stride of the block's 3x3 convolution (2 halves H and W).
    shortcut : {"A", "B"}, default "A"
        When the shape changes: ``"A"`` zero-padding (:class:`ZeroPadShortcut`, no parameters) or ``"B"``
        a 1x1 convolution with ``stride`` and a BatchNorm (``shortcut.0``, ``shortcut.1``).  Otherwise
        the shortcut is the identity.
    {backend_device_dtype}
    seed : int or None, default None
        Seed of the Kaiming-normal convolution weights; None: fresh entropy.
"""


@fill_doc(block_params=_BLOCK_PARAMS, **_ROLE)
class BasicBlock(nn.Residual):
    """ResNet basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, two 3x3 convolutions.

    (N, in_planes, H, W) -> (N, planes, H / stride, W / stride); bias-free convolutions, as in He et al.
    (2016) and the usual PyTorch code, with the same ``state_dict()`` keys.

    Parameters
    ----------
    in_planes : int
        Input channels.
    planes : int
        Output channels of both convolutions.
    {block_params}

    Raises
    ------
    ValueError
        If a count is not a positive int, ``shortcut`` is not "A" or "B", or option A would drop channels.

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv.models import BasicBlock
    >>> block = BasicBlock(4, 8, stride=2, shortcut="B", seed=0)
    >>> y = block(np.ones((2, 4, 6, 6), dtype=np.float32))
    >>> y.shape, block.backward(np.ones_like(y)).shape
    ((2, 8, 3, 3), (2, 4, 6, 6))
    >>> [k for k in block.state_dict() if k.endswith("weight")]
    ['conv1.weight', 'bn1.weight', 'conv2.weight', 'bn2.weight', 'shortcut.0.weight', 'shortcut.1.weight']
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A", *, backend=None,
                 device=None, dtype="float32", seed=None):
        rng = np.random.default_rng(seed)
        on = dict(backend=backend, device=device, dtype=dtype)
        super().__init__(OrderedDict(
            conv1=_conv(rng, in_planes, planes, 3, stride, **on), bn1=nn.BatchNorm2d(planes, **on),
            relu1=nn.ReLU(**on),
            conv2=_conv(rng, planes, planes, 3, **on), bn2=nn.BatchNorm2d(planes, **on),
        ), shortcut=_shortcut(shortcut, rng, in_planes, planes, stride, **on), activation=nn.ReLU(**on))


@fill_doc(block_params=_BLOCK_PARAMS, **_ROLE)
class Bottleneck(nn.Residual):
    """ResNet bottleneck block: 1x1 (reduce) - 3x3 (``stride``) - 1x1 (expand x4) convolutions plus a shortcut.

    ``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x))``:
    (N, in_planes, H, W) -> (N, 4 * planes, H / stride, W / stride), the stride on the 3x3 convolution
    as in torchvision's ``Bottleneck``, with keys ``conv1..3``, ``bn1..3`` and ``shortcut``.

    Parameters
    ----------
    in_planes : int
        Input channels.
    planes : int
        Channels of the 1x1 and 3x3 convolutions; the block outputs ``4 * planes``.
    {block_params}

    Raises
    ------
    ValueError
        If a count is not a positive int, ``shortcut`` is not "A" or "B", or option A would drop channels.

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv.models import Bottleneck
    >>> block = Bottleneck(8, 2, stride=2, shortcut="B", seed=0)
    >>> y = block(np.ones((2, 8, 6, 6), dtype=np.float32))
    >>> y.shape, block.backward(np.ones_like(y)).shape
    ((2, 8, 3, 3), (2, 8, 6, 6))
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A", *, backend=None,
                 device=None, dtype="float32", seed=None):
        rng = np.random.default_rng(seed)
        on = dict(backend=backend, device=device, dtype=dtype)
        out = self.expansion * positive_int("planes", planes)
        super().__init__(OrderedDict(
            conv1=_conv(rng, in_planes, planes, 1, **on), bn1=nn.BatchNorm2d(planes, **on), relu1=nn.ReLU(**on),
            conv2=_conv(rng, planes, planes, 3, stride, **on), bn2=nn.BatchNorm2d(planes, **on),
            relu2=nn.ReLU(**on),
            conv3=_conv(rng, planes, out, 1, **on), bn3=nn.BatchNorm2d(out, **on),
        ), shortcut=_shortcut(shortcut, rng, in_planes, out, stride, **on), activation=nn.ReLU(**on))


@fill_doc(**_ROLE)
def cifar_resnet(num_blocks=(3, 3, 3), in_channels: int = 3, num_classes: int = 10, shortcut: str = "A", *,
                 backend: str | Backend | None = None, device: Device = None, dtype: str = "float32",
                 seed: int | None = 0) -> nn.Sequential:
    """He et al.'s CIFAR ResNet (2016, sec. 4.2) with ``num_blocks`` basic blocks per stage.

    A 3x3 convolution to 16 channels, BatchNorm, ReLU; three stages of :class:`BasicBlock` at 16, 32 and
    64 channels with strides 1, 2, 2; global average pooling; a linear layer.  Depth ``6 n + 2`` for
    ``n`` blocks per stage.  Input (N, in_channels, H, W), 32x32 for CIFAR; logits (N, num_classes).
    ``state_dict()`` keys: ``conv1.weight``, ``bn1.*``, ``layer1.<i>.*`` to ``layer3.<i>.*``, ``linear.*``.

    Parameters
    ----------
    num_blocks : sequence of 3 int, default (3, 3, 3)
        Basic blocks in each stage, each >= 1.
    in_channels : int, default 3
        Input channels.
    num_classes : int, default 10
        Number of output logits.
    shortcut : {"A", "B"}, default "A"
        Shortcut of the blocks that change the shape: zero padding (A, the paper's CIFAR choice) or
        1x1 convolution + BatchNorm (B).
    {backend_device_dtype}
    seed : int or None, default 0
        Seed of the initial weights; None: fresh entropy.

    Returns
    -------
    model : nn.Sequential
        Its ``arch`` record rebuilds it with :func:`xpconv.models.build_model`.

    Raises
    ------
    ValueError
        If ``num_blocks`` is not three positive ints, a count is not a positive int, ``shortcut`` is not
        "A" or "B", or ``dtype``/``backend`` is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv.models import cifar_resnet
    >>> model = cifar_resnet((1, 1, 1))                           # ResNet-8
    >>> model(np.zeros((2, 3, 8, 8), dtype=np.float32)).shape
    (2, 10)
    >>> [k for k in model.state_dict() if k.endswith("conv1.weight")]
    ['conv1.weight', 'layer1.0.conv1.weight', 'layer2.0.conv1.weight', 'layer3.0.conv1.weight']
    """
    return _cifar_resnet("cifar_resnet", num_blocks, in_channels, num_classes, shortcut, backend, device, dtype,
                         seed)


def _cifar_resnet(name, num_blocks, in_channels, num_classes, shortcut, backend, device, dtype, seed):
    """The CIFAR ResNet, its ``arch`` record under ``name`` (a ``resnetN`` records no ``num_blocks``)."""
    if not isinstance(num_blocks, (tuple, list)) or len(num_blocks) != 3:
        raise ValueError(f"num_blocks must be three ints (blocks per stage), got {num_blocks!r}")
    num_blocks = [positive_int(f"num_blocks[{i}]", n) for i, n in enumerate(num_blocks)]
    rng = np.random.default_rng(seed)
    on = dict(backend=backend, device=device, dtype=dtype)

    def child_seed() -> int:
        return int(rng.integers(2**63))

    layers = OrderedDict(conv1=_conv(rng, positive_int("in_channels", in_channels), 16, 3, **on),
                         bn1=nn.BatchNorm2d(16, **on), relu=nn.ReLU(**on))
    in_planes = 16
    for stage, (planes, stride, n) in enumerate(zip((16, 32, 64), (1, 2, 2), num_blocks, strict=True), start=1):
        blocks = []
        for i in range(n):
            blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, shortcut, seed=child_seed(), **on))
            in_planes = planes
        layers[f"layer{stage}"] = nn.Sequential(*blocks)
    layers["avgpool"] = nn.AdaptiveAvgPool2d(1, **on)
    layers["flatten"] = nn.Flatten(**on)
    layers["linear"] = _kaiming_normal(nn.Linear(64, num_classes, seed=child_seed(), **on), rng)
    model = nn.Sequential(layers)
    kwargs: dict[str, Any] = {"num_blocks": num_blocks} if name == "cifar_resnet" else {}
    model.arch = {"name": name, "kwargs": kwargs | {"in_channels": in_channels, "num_classes": num_classes,
                                                    "shortcut": shortcut, "dtype": dtype}}
    return model


_RESNET_DOC = """He et al.'s ResNet-{depth} for CIFAR: :func:`cifar_resnet` with {n} basic blocks per stage.

    {params} parameters with option-A shortcuts and 10 classes.

    Parameters
    ----------
    in_channels : int, default 3
        Input channels.
    num_classes : int, default 10
        Number of output logits.
    shortcut : {"A", "B"}, default "A"
        Shortcut of the blocks that change the shape: zero padding (A) or 1x1 convolution + BatchNorm (B).
    {backend_device_dtype}
    seed : int or None, default 0
        Seed of the initial weights; None: fresh entropy.

    Returns
    -------
    model : nn.Sequential
        Its ``arch`` record ``{"name": "resnet{depth}", ...}`` rebuilds it with :func:`xpconv.models.build_model`.

    Raises
    ------
    ValueError
        If a count is not a positive int, ``shortcut`` is not "A" or "B", or ``dtype``/``backend`` is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv.models import resnet{depth}
    >>> model = resnet{depth}()
    >>> sum(p.data.size for p in model.parameters())
    {params_int}
    >>> model(np.zeros((2, 3, 8, 8), dtype=np.float32)).shape
    (2, 10)
    """


def _resnet(depth: int, params: int):
    """The builder ``resnet{depth}`` (n = (depth - 2) / 6 blocks per stage); ``params``: its documented size."""
    n = (depth - 2) // 6

    def build(in_channels: int = 3, num_classes: int = 10, shortcut: str = "A", *,
              backend: str | Backend | None = None, device: Device = None, dtype: str = "float32",
              seed: int | None = 0) -> nn.Sequential:
        return _cifar_resnet(f"resnet{depth}", (n, n, n), in_channels, num_classes, shortcut, backend, device,
                             dtype, seed)

    build.__name__ = build.__qualname__ = f"resnet{depth}"
    build.__doc__ = _RESNET_DOC
    return fill_doc(depth=str(depth), n=str(n), params=f"{params:,}", params_int=str(params), **_ROLE)(build)


resnet20, resnet32, resnet56 = _resnet(20, 269_722), _resnet(32, 464_154), _resnet(56, 853_018)
