"""Ready-made models, each rebuildable from the ``arch`` record that :func:`xpconv.save` stores.

=================  ==========================================================  ==================
name               network                                                     input
=================  ==========================================================  ==================
``small_cnn``      two conv-ReLU-maxpool stages and a linear layer              (N, 1, 8, 8)
``lenet5``         LeNet-5, modern variant (ReLU, max pooling)                  (N, 1, 28, 28)
``resnet20/32/56`` He et al.'s CIFAR ResNets, option-A shortcuts by default     (N, 3, 32, 32)
``cifar_resnet``   the same family with any number of blocks per stage         (N, 3, 32, 32)
=================  ==========================================================  ==================
"""
from __future__ import annotations

import inspect
from contextlib import nullcontext
from typing import Any

from .. import nn
from .._typing import Device
from ..backends import Backend
from ..nn.init import element_budget
from .lenet import lenet5
from .resnet import BasicBlock, Bottleneck, ZeroPadShortcut, cifar_resnet, resnet20, resnet32, resnet56
from .small_cnn import small_cnn

__all__ = ["small_cnn", "lenet5", "resnet20", "resnet32", "resnet56", "cifar_resnet", "BasicBlock", "Bottleneck",
           "ZeroPadShortcut", "build_model", "input_shape", "MODELS"]

MODELS = {"small_cnn": small_cnn, "lenet5": lenet5, "resnet20": resnet20, "resnet32": resnet32,
          "resnet56": resnet56, "cifar_resnet": cifar_resnet}


def build_model(arch: dict[str, Any], *, backend: str | Backend | None = None, device: Device = None,
                max_elements: int | None = None) -> nn.Module:
    """The model an ``arch`` record ``{"name": ..., "kwargs": {...}}`` describes, on ``backend``/``device``.

    Parameters
    ----------
    arch : dict
        ``{"name": <a key of MODELS>, "kwargs": {...}}``, as a builder stores in ``model.arch`` and
        :func:`xpconv.save` writes to the file.
    backend, device
        Where to build the model.
    max_elements : int, optional
        The most parameter and buffer values the model may hold (a model file's count of stored values):
        a record asking for more is refused before the layer that exceeds it allocates anything.

    Raises
    ------
    ValueError
        If the name is unknown, the keyword arguments do not fit the builder, or the model would hold more
        than ``max_elements`` values.

    Examples
    --------
    >>> from xpconv.models import build_model, lenet5
    >>> build_model(lenet5(num_classes=3).arch).fc3.out_features
    3
    """
    _check_record(arch)
    try:
        with nullcontext() if max_elements is None else element_budget(max_elements):
            return MODELS[arch["name"]](**arch.get("kwargs", {}), backend=backend, device=device)
    except TypeError as exc:
        raise ValueError(f"architecture record {arch!r} does not fit {arch['name']}: {exc}") from None


def input_shape(arch: dict[str, Any]) -> tuple[int, int, int]:
    """``(C, H, W)``: one input of the model an ``arch`` record describes, as its builder sizes it.

    ``small_cnn`` takes its ``image_size``, ``lenet5`` 28x28 images, the ResNets 32x32 (CIFAR); ``C`` is the
    record's ``in_channels`` (else the builder's default).

    Examples
    --------
    >>> from xpconv.models import input_shape, lenet5, resnet20, small_cnn
    >>> input_shape(small_cnn(image_size=12).arch), input_shape(lenet5().arch), input_shape(resnet20().arch)
    ((1, 12, 12), (1, 28, 28), (3, 32, 32))
    """
    _check_record(arch)
    defaults = {k: p.default for k, p in inspect.signature(MODELS[arch["name"]]).parameters.items()}
    kwargs = defaults | arch.get("kwargs", {})
    size = kwargs.get("image_size", 28 if arch["name"] == "lenet5" else 32)
    return kwargs["in_channels"], size, size


def _check_record(arch: Any) -> None:
    """ValueError unless ``arch`` is ``{"name": <a key of MODELS>, "kwargs": {...}}``."""
    if not isinstance(arch, dict) or arch.get("name") not in MODELS or not isinstance(arch.get("kwargs", {}), dict):
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(MODELS)}")
