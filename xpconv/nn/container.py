"""Sequential: layers applied in order; backward runs them in reverse."""
from __future__ import annotations

from .module import Module

__all__ = ["Sequential"]


class Sequential(Module):
    """``Sequential(l0, l1, ...)``: ``model(x)`` is ``l1(l0(x))``; ``model.backward(g)`` chains the backwards.

    Children are registered as "0", "1", ... so ``state_dict()`` keys read like torch's ("0.weight").
    The container takes its backend and dtype from its first layer.  Indexing gives a layer, slicing a
    new Sequential of the same layers (shared, not copied), as in ``torch.nn.Sequential``.

    Parameters
    ----------
    *layers : Module
        The layers, applied in the order given.

    Raises
    ------
    TypeError
        If a layer is not a :class:`~xpconv.nn.Module`.

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, seed=0), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
    ...                       nn.Linear(4 * 4 * 4, 10, seed=0))
    >>> logits = model(np.ones((2, 1, 8, 8), dtype=np.float32))
    >>> logits.shape
    (2, 10)
    >>> model.backward(np.ones_like(logits)).shape
    (2, 1, 8, 8)
    >>> [name for name, _ in model.named_parameters()]
    ['0.weight', '0.bias', '4.weight', '4.bias']
    >>> len(model), model[0].weight.grad.shape
    (5, (4, 1, 3, 3))
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
        """Apply the layers in order and return the last one's output."""
        for layer in self._modules.values():
            x = layer(x)
        return x

    def backward(self, grad_output):
        """Run the layers' backwards in reverse order and return dL/d(input).

        Each layer accumulates its parameter gradients into their ``.grad``; errors are the layers' own
        (a RuntimeError when there was no training-mode forward).
        """
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
