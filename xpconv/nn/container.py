"""Containers: Sequential (layers applied in order) and Residual (a sequence plus a skip connection).

Both register their children under names (``"0"``, ``"1"``, ... or the names of an ``OrderedDict``), so
``state_dict()`` keys read like those of the equivalent PyTorch module tree.  Their backward runs the
children's backwards in reverse; Residual's adds the gradients of its two branches.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from .._ops import namespace_of
from .module import Module

__all__ = ["Sequential", "Residual"]


def _named_layers(owner: str, layers: tuple) -> list[tuple[str, Module]]:
    """(name, layer) pairs from ``Sequential``-style arguments: Modules, or one OrderedDict of named Modules."""
    if len(layers) == 1 and isinstance(layers[0], OrderedDict):
        pairs = list(layers[0].items())
    else:
        pairs = [(str(i), layer) for i, layer in enumerate(layers)]
    for i, (name, layer) in enumerate(pairs):
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"{owner} layer names must be non-empty strings without '.', got {name!r}")
        if not isinstance(layer, Module):
            raise TypeError(f"{owner} takes Modules, got {type(layer).__name__} at position {i}")
    return pairs


def _register(container: Module, pairs: list[tuple[str, Module]]) -> None:
    """Add each (name, layer) as a child; a name that is already an attribute of the container is refused."""
    for name, layer in pairs:
        if hasattr(type(container), name) or name in vars(container):
            raise ValueError(f"{type(container).__name__} cannot name a layer {name!r}: that is an attribute")
        setattr(container, name, layer)


class Sequential(Module):
    """``Sequential(l0, l1, ...)``: ``model(x)`` is ``l1(l0(x))``; ``model.backward(g)`` chains the backwards.

    As ``torch.nn.Sequential``: children are registered as "0", "1", ..., or under the names of an
    ``OrderedDict`` passed as the only argument, so ``state_dict()`` keys read like torch's ("0.weight",
    "conv1.weight").  Indexing gives a layer, slicing a new Sequential of the same layers (shared, not
    copied; names kept).  The container takes its backend and dtype from its first layer; with no layers
    it is the identity.

    Parameters
    ----------
    *layers : Module or OrderedDict of str to Module
        The layers, applied in the order given; or one ``OrderedDict`` mapping names to layers.

    Raises
    ------
    TypeError
        If a layer is not a :class:`~xpconv.nn.Module`.
    ValueError
        If a name is empty, holds a ``"."`` or is an attribute of the container (``"forward"``).

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

    Named layers, as with torch's ``OrderedDict`` form:

    >>> from collections import OrderedDict
    >>> head = nn.Sequential(OrderedDict(flatten=nn.Flatten(), fc=nn.Linear(4, 2, seed=0)))
    >>> list(head.state_dict()), head.fc.weight.shape
    (['fc.weight', 'fc.bias'], (2, 4))
    """

    def __init__(self, *layers: Module | OrderedDict[str, Module]):
        pairs = _named_layers("Sequential", layers)
        first = pairs[0][1] if pairs else None
        super().__init__(backend=first.backend if first else None, dtype=first.dtype_name if first else "float32")
        self._shape: tuple[int, ...] | None = None
        _register(self, pairs)

    def _clear_cache(self) -> None:
        self._shape = None

    def requires_input_grad(self, needed: bool = True) -> None:
        """Passed to the first layer, which takes this container's input (see :meth:`Module.requires_input_grad`)."""
        if self._modules:
            next(iter(self._modules.values())).requires_input_grad(needed)

    def forward(self, x):
        """Apply the layers in order and return the last one's output."""
        for layer in self._modules.values():
            x = layer(x)
        self._shape = tuple(x.shape) if self.training else None
        return x

    def backward(self, grad_output):
        """Run the layers' backwards in reverse order and return dL/d(input).

        Each layer accumulates its parameter gradients into their ``.grad``.  Raises RuntimeError when
        there was no training-mode forward, ValueError (naming both shapes, nothing changed) when
        ``grad_output`` does not have the output's shape.
        """
        self._check_grad_shape(grad_output, self._need_cache(self._shape))
        self._shape = None
        for layer in reversed(self._modules.values()):
            grad_output = layer.backward(grad_output)
        return grad_output

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(OrderedDict(list(self._modules.items())[index]))
        return list(self._modules.values())[index]


class Residual(Module):
    """``Residual(l0, l1, ..., shortcut=s, activation=a)``: ``y = a(l1(l0(x)) + s(x))``, a skip connection.

    The main branch is a sequence of layers given as to :class:`Sequential` (positional, or one
    ``OrderedDict`` of names) and registered on the Residual itself, the shortcut under ``"shortcut"`` and
    the activation under ``"activation"``.  A ResNet block thus has the ``state_dict()`` keys of the usual
    PyTorch one (``conv1.weight``, ``bn1.running_mean``, ``shortcut.0.weight``); parameter-free layers,
    such as ReLUs, add no keys.  The shortcut is the identity when None.  Backward sends the gradient
    through the activation, then through both branches, and returns the sum of their input gradients.
    Subclass it to name a block (``class BasicBlock(nn.Residual)``), as :mod:`xpconv.models` does.

    Parameters
    ----------
    *layers : Module or OrderedDict of str to Module
        The main branch, at least one layer, applied in order; or one ``OrderedDict`` of named layers.
    shortcut : Module or None, default None
        Applied to the block's input; its output must have the main branch's shape.  None: the identity.
    activation : Module or None, default None
        Applied to the sum (``nn.ReLU()`` in a ResNet block); None: none.

    Raises
    ------
    TypeError
        If a layer, the shortcut or the activation is not a :class:`~xpconv.nn.Module`.
    ValueError
        If there is no main-branch layer, or a name is empty, holds a ``"."``, is ``"shortcut"``,
        ``"activation"`` or another attribute of the container.

    Examples
    --------
    >>> import numpy as np
    >>> from collections import OrderedDict
    >>> from xpconv import nn
    >>> block = nn.Residual(OrderedDict(conv1=nn.Conv2d(4, 4, 3, padding=1, bias=False, seed=0),
    ...                                 bn1=nn.BatchNorm2d(4)), activation=nn.ReLU())
    >>> x = np.ones((2, 4, 5, 5), dtype=np.float32)
    >>> y = block(x)
    >>> y.shape
    (2, 4, 5, 5)
    >>> block.backward(np.ones_like(y)).shape
    (2, 4, 5, 5)
    >>> list(block.state_dict())
    ['conv1.weight', 'bn1.weight', 'bn1.bias', 'bn1.running_mean', 'bn1.running_var', 'bn1.num_batches_tracked']

    A projection shortcut (a 1x1 convolution with stride 2 and a BatchNorm) when the shape changes:

    >>> down = nn.Residual(nn.Conv2d(4, 8, 3, stride=2, padding=1, seed=0),
    ...                    shortcut=nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=False, seed=1),
    ...                                           nn.BatchNorm2d(8)))
    >>> down(x).shape, [k for k in down.state_dict() if k.startswith("shortcut.0")]
    ((2, 8, 3, 3), ['shortcut.0.weight'])
    """

    def __init__(self, *layers: Module | OrderedDict[str, Module], shortcut: Module | None = None,
                 activation: Module | None = None):
        pairs = _named_layers("Residual", layers)
        if not pairs:
            raise ValueError("Residual needs at least one main-branch layer")
        for name, value in (("shortcut", shortcut), ("activation", activation)):
            if value is not None and not isinstance(value, Module):
                raise TypeError(f"Residual {name} must be a Module or None, got {type(value).__name__}")
        first = pairs[0][1]
        super().__init__(backend=first.backend, dtype=first.dtype_name)
        self.shortcut = self.activation = None                  # placeholders: a main layer may not take the names
        self._main = tuple(name for name, _ in pairs)
        self._shape: tuple[int, ...] | None = None
        _register(self, pairs)
        self.shortcut, self.activation = shortcut, activation     # registered after the main branch, as in torch

    @property
    def main(self) -> list[Module]:
        """The main branch's layers, in order."""
        return [self._modules[name] for name in self._main]

    def _clear_cache(self) -> None:
        self._shape = None

    def forward(self, x):
        """``activation(main(x) + shortcut(x))``.

        Raises ValueError if the two branches' outputs differ in shape, and the children's errors for a
        bad ``x``.
        """
        y = x
        for layer in self.main:
            y = layer(y)
        skip = x if self.shortcut is None else self.shortcut(x)
        if tuple(y.shape) != tuple(skip.shape):
            raise ValueError(f"Residual: the main branch gives shape {tuple(y.shape)} but the shortcut "
                             f"{tuple(skip.shape)}; give a shortcut that maps x to the main branch's shape")
        namespace_of(y, skip, names=["main branch output", "shortcut output"])
        out = y + skip
        if self.activation is not None:
            out = self.activation(out)
        self._shape = tuple(out.shape) if self.training else None
        return out

    def backward(self, grad_output):
        """dL/dx = (main branch's dL/dx) + (shortcut's dL/dx) for ``grad_output = dL/dy``.

        Parameter gradients accumulate into ``.grad``.  Raises RuntimeError when there was no
        training-mode forward, ValueError (naming both shapes, nothing changed) when ``grad_output``
        does not have the output's shape.
        """
        self._check_grad_shape(grad_output, self._need_cache(self._shape))
        self._shape = None
        g = grad_output if self.activation is None else self.activation.backward(grad_output)
        grad_main = g
        for layer in reversed(self.main):
            grad_main = layer.backward(grad_main)
        return grad_main + (g if self.shortcut is None else self.shortcut.backward(g))

    def extra_repr(self) -> str:
        return "identity shortcut" if self.shortcut is None else ""
