"""Layers without parameters that act elementwise or on the shape: ReLU, Flatten, Dropout."""
from __future__ import annotations

import math

import numpy as np
from array_api_compat import device

from .._ops import namespace_of
from ..backends import library_of
from ..validation import check_int, check_real
from .module import Module

__all__ = ["ReLU", "Flatten", "Dropout"]


class ReLU(Module):
    """y = max(x, 0), any shape, as torch.relu: NaN stays NaN; the gradient is 0 where x <= 0 (at 0 too)
    and passes where x > 0 or x is NaN."""

    def __init__(self, *, backend=None, device=None, dtype="float32"):
        super().__init__(backend=backend, device=device, dtype=dtype)
        self._mask = None

    def _clear_cache(self) -> None:
        self._mask = None

    def forward(self, x):
        xp = namespace_of(x, names=["x"])
        self._mask = xp.logical_not(x <= 0) if self.training else None
        return xp.where(x < 0, xp.zeros_like(x), x)

    def backward(self, grad_output):
        mask = self._need_cache(self._mask)
        self._mask = None
        xp = namespace_of(grad_output, names=["grad_output"])
        return xp.where(mask, grad_output, xp.zeros_like(grad_output))


class Flatten(Module):
    """Merge axes ``start_dim..end_dim`` into one: (N, C, H, W) -> (N, C*H*W) by default."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1, *, backend=None, device=None, dtype="float32"):
        super().__init__(backend=backend, device=device, dtype=dtype)
        self.start_dim, self.end_dim = check_int("start_dim", start_dim), check_int("end_dim", end_dim)
        self._shape = None

    def _clear_cache(self) -> None:
        self._shape = None

    def forward(self, x):
        xp = namespace_of(x, names=["x"])
        shape = tuple(x.shape)
        start, end = (d + len(shape) if d < 0 else d for d in (self.start_dim, self.end_dim))
        if not 0 <= start <= end < len(shape):
            raise ValueError(f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim}) does not fit an "
                             f"input of shape {shape}")
        self._shape = shape if self.training else None
        return xp.reshape(x, (*shape[:start], math.prod(shape[start:end + 1]), *shape[end + 1:]))

    def backward(self, grad_output):
        shape = self._need_cache(self._shape)
        self._shape = None
        return namespace_of(grad_output, names=["grad_output"]).reshape(grad_output, shape)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Dropout(Module):
    """In training, zero each element with probability ``p`` and scale the rest by 1/(1-p); identity in eval.

    Masks come from a NumPy generator seeded by ``seed`` and are copied to the backend, so one seed
    gives the same masks on every backend (at the cost of one host-to-device copy per forward on a GPU).
    """

    def __init__(self, p: float = 0.5, *, backend=None, device=None, dtype="float32", seed=None):
        super().__init__(backend=backend, device=device, dtype=dtype)
        self.p = check_real("dropout probability p", p, 0.0, 1.0)
        self.rng = np.random.default_rng(seed)
        self._mask = None

    def _clear_cache(self) -> None:
        self._mask = None

    def forward(self, x):
        xp = namespace_of(x, names=["x"])
        if not self.training:
            return x
        if xp is not self.backend.xp or device(x) != self.backend.device:
            raise ValueError(f"x is a {library_of(x)} array on {device(x)!r} but this Dropout "
                             f"draws its masks on {self.backend}; move the model with .to(...)")
        keep = self.backend.asarray(self.rng.random(tuple(x.shape)) >= self.p)   # bool, x's shape
        self._mask = xp.astype(keep, x.dtype) * (1.0 / (1.0 - self.p) if self.p < 1 else 0.0)
        return x * self._mask

    def backward(self, grad_output):
        mask = self._need_cache(self._mask)
        self._mask = None
        namespace_of(grad_output, mask, names=["grad_output", "the dropout mask"])
        return grad_output * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"
