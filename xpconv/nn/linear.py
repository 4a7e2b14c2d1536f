"""Fully connected layer ``y = x Wᵀ + b`` with weight (out_features, in_features), as in PyTorch."""
from __future__ import annotations

from .._docstrings import fill_doc
from .._ops import namespace_of
from ..validation import positive_int
from .init import init_weight_and_bias
from .module import Module, Parameter

__all__ = ["Linear"]


@fill_doc(c_out="out_features")
class Linear(Module):
    """Fully connected layer ``y = x Wᵀ + b``, as ``torch.nn.Linear``.

    x (*, in_features) -> y (*, out_features); weight (out, in), bias (out,).

    Initialized as torch does, U(-1/sqrt(in), 1/sqrt(in)) for weight and bias, from ``seed``.

    Parameters
    ----------
    in_features : int
        Size of the input's last axis.
    out_features : int
        Size of the output's last axis.
    {bias}
    {backend_device_dtype}
    {seed}

    Attributes
    ----------
    weight : Parameter
        ``(out_features, in_features)``.
    bias : Parameter or None
        ``(out_features,)``; None when ``bias=False``.

    Raises
    ------
    {raises_unavailable}
    ValueError
        If ``in_features`` or ``out_features`` is not a positive int,
        {bad_backend}.
    TypeError
        If ``backend`` is neither a name nor a Backend.

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv import nn
    >>> fc = nn.Linear(3, 2, seed=0)
    >>> y = fc(np.ones((4, 3), dtype=np.float32))
    >>> y.shape
    (4, 2)
    >>> fc.backward(np.ones_like(y)).shape
    (4, 3)
    >>> fc.weight.grad.tolist(), fc.bias.grad.tolist()
    ([[4.0, 4.0, 4.0], [4.0, 4.0, 4.0]], [4.0, 4.0])
    >>> nn.Linear(3, 2, bias=False)(np.ones((5, 7, 3), dtype=np.float32)).shape
    (5, 7, 2)
    """

    weight: Parameter
    bias: Parameter | None

    def __init__(self, in_features, out_features, bias=True, *, backend=None, device=None, dtype="float32",
                 seed=None):
        super().__init__(backend=backend, device=device, dtype=dtype)
        self.in_features = positive_int("in_features", in_features)
        self.out_features = positive_int("out_features", out_features)
        init_weight_and_bias(self, (self.out_features, self.in_features), self.in_features,
                             self.out_features if bias else None, seed)
        self._x = None

    def _clear_cache(self) -> None:
        self._x = None

    @fill_doc(x_shape="``(*, in_features)``", y_shape="``(*, out_features)``",
              bad_x="or its last axis is not ``in_features`` long")
    def forward(self, x):
        """``y = x Wᵀ + b``; in training mode keep ``x`` for backward.

        {layer_forward}
        """
        xp = namespace_of(x, self.weight.data, names=["x", "weight"])
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear({self.in_features}, {self.out_features}) expects input of shape "
                             f"(*, {self.in_features}), got {tuple(x.shape)}")
        y = xp.matmul(x, xp.matrix_transpose(self.weight.data))       # (*, out)
        if self.bias is not None:
            y = y + self.bias.data
        self._x = x if self.training else None
        return y

    @fill_doc(grad_output_shape="``(*, out_features)`` with the forward input's leading axes")
    def backward(self, grad_output):
        """dL/dx (*, in) for dL/dy (*, out); dL/dW is (out, in) and dL/db (out,).

        {layer_backward}
        """
        x = self._need_cache(self._x)
        self._x = None
        xp = namespace_of(x, grad_output, names=["x", "grad_output"])
        if tuple(grad_output.shape) != (*x.shape[:-1], self.out_features):
            raise ValueError(f"grad_output must have shape {(*x.shape[:-1], self.out_features)}, "
                             f"got {tuple(grad_output.shape)}")
        dy2 = xp.reshape(grad_output, (-1, self.out_features))       # (M, out)
        self.weight.grad += xp.matmul(xp.matrix_transpose(dy2), xp.reshape(x, (-1, self.in_features)))
        if self.bias is not None:
            self.bias.grad += xp.sum(dy2, axis=0)
        return xp.matmul(grad_output, self.weight.data)               # (*, in)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, backend={self.backend.name!r}")
