"""PyTorch's default initialization of the layers with weights."""
from __future__ import annotations

import math

import numpy as np

from .module import Module, Parameter

__all__ = ["kaiming_uniform", "init_weight_and_bias"]


def kaiming_uniform(rng: np.random.Generator, shape, fan_in: int) -> np.ndarray:
    """PyTorch's default init for conv/linear (kaiming_uniform with a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape)


def init_weight_and_bias(module: Module, shape, fan_in: int, bias_size: int | None, seed, channels_last: bool = False):
    """Give ``module`` a ``weight`` of ``shape`` and a ``bias`` of ``(bias_size,)`` (None: no bias), as torch does.

    Both are drawn on the host from ``seed``, so every backend gets the same numbers; with
    ``channels_last`` the weight's axis 1 (input channels) moves to the end.
    """
    rng = np.random.default_rng(seed)
    w = kaiming_uniform(rng, shape, fan_in)
    if channels_last:
        w = np.moveaxis(w, 1, -1)
    module.weight = Parameter(module.backend.asarray(w, dtype=module.dtype))
    module.bias = None if bias_size is None else Parameter(
        module.backend.asarray(kaiming_uniform(rng, (bias_size,), fan_in), dtype=module.dtype))
