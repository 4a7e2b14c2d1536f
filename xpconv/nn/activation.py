"""Layers without parameters that act elementwise or on the shape: ReLU, Flatten, Dropout."""
from __future__ import annotations

import math

from ..functional import namespace_of
from .module import Module

__all__ = ["ReLU", "Flatten"]


class ReLU(Module):
    """y = max(x, 0), any shape; the gradient at 0 is 0, as in PyTorch."""

    def __init__(self, *, backend=None, device=None, dtype="float32"):
        super().__init__(backend=backend, device=device, dtype=dtype)
        self._mask = None

    def _clear_cache(self) -> None:
        self._mask = None

    def forward(self, x):
        xp = namespace_of(x, names=["x"])
        mask = x > 0
        self._mask = mask if self.training else None
        return xp.where(mask, x, xp.zeros_like(x))

    def backward(self, grad_output):
        mask = self._need_cache(self._mask)
        self._mask = None
        xp = namespace_of(grad_output, names=["grad_output"])
        return xp.where(mask, grad_output, xp.zeros_like(grad_output))


class Flatten(Module):
    """Merge axes ``start_dim..end_dim`` into one: (N, C, H, W) -> (N, C*H*W) by default."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1, *, backend=None, device=None, dtype="float32"):
        super().__init__(backend=backend, device=device, dtype=dtype)
        self.start_dim, self.end_dim = start_dim, end_dim
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
