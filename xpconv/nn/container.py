"""Sequential: layers applied in order; backward runs them in reverse."""
from __future__ import annotations

from .module import Module

__all__ = ["Sequential"]


class Sequential(Module):
    """``Sequential(l0, l1, ...)``: ``model(x)`` is ``l1(l0(x))``; ``model.backward(g)`` chains the backwards.

    Children are registered as "0", "1", ... so ``state_dict()`` keys read like torch's ("0.weight").
    The container takes its backend and dtype from its first layer.
    """

    def __init__(self, *layers: Module):
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential takes Modules, got {type(layer).__name__} at position {i}")
        first = layers[0] if layers else None
        super().__init__(backend=first.backend if first else None, dtype=first.dtype_name if first else "float32")
        for i, layer in enumerate(layers):
            setattr(self, str(i), layer)

    def forward(self, x):
        for layer in self._modules.values():
            x = layer(x)
        return x

    def backward(self, grad_output):
        for layer in reversed(self._modules.values()):
            grad_output = layer.backward(grad_output)
        return grad_output

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index):
        layers = list(self._modules.values())
        if isinstance(index, slice):
            return Sequential(*layers[index])
        return layers[index]
