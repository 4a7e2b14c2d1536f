"""PyTorch's default initialization of the layers with weights, and the element budget of a model being built."""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np

from .module import Module, Parameter

__all__ = ["kaiming_uniform", "init_weight_and_bias", "element_budget", "claim_elements"]

_BUDGET: ContextVar[list[int] | None] = ContextVar("xpconv_element_budget", default=None)   # [left, limit]


@contextmanager
def element_budget(elements: int) -> Iterator[None]:
    """Within it, the layers being built may allocate at most ``elements`` parameter and buffer values in all.

    A model rebuilt from a file's architecture record uses the number of values the file stores: a record
    that asks for more cannot fit the file, and is refused (ValueError) before anything that big is allocated.
    """
    token = _BUDGET.set([elements, elements])
    try:
        yield
    finally:
        _BUDGET.reset(token)


def claim_elements(module: Module, *shapes: tuple[int, ...]) -> None:
    """Count arrays of ``shapes`` that ``module`` is about to allocate against the active :func:`element_budget`."""
    budget = _BUDGET.get()
    if budget is None:
        return
    budget[0] -= sum(math.prod(s) for s in shapes)
    if budget[0] < 0:
        raise ValueError(f"it holds more than the {budget[1]:,} parameter and buffer values allowed; the "
                         f"{type(module).__name__} of shapes {', '.join(map(str, shapes))} goes over")


def kaiming_uniform(rng: np.random.Generator, shape, fan_in: int) -> np.ndarray:
    """PyTorch's default init for conv/linear (kaiming_uniform with a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape)


def init_weight_and_bias(module: Module, shape, fan_in: int, bias_size: int | None, seed, channels_last: bool = False):
    """Give ``module`` a ``weight`` of ``shape`` and a ``bias`` of ``(bias_size,)`` (None: no bias), as torch does.

    Both are drawn on the host from ``seed``, so every backend gets the same numbers; with
    ``channels_last`` the weight's axis 1 (input channels) moves to the end.
    """
    claim_elements(module, tuple(shape), *([] if bias_size is None else [(bias_size,)]))
    rng = np.random.default_rng(seed)
    w = kaiming_uniform(rng, shape, fan_in)
    if channels_last:
        w = np.moveaxis(w, 1, -1)
    module.weight = Parameter(module.backend.asarray(w, dtype=module.dtype))
    module.bias = None if bias_size is None else Parameter(
        module.backend.asarray(kaiming_uniform(rng, (bias_size,), fan_in), dtype=module.dtype))
