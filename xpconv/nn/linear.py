"""Fully connected layer ``y = x Wᵀ + b`` with weight (out_features, in_features), as in PyTorch."""
from __future__ import annotations

from .._ops import namespace_of
from ..validation import positive_int
from .init import init_weight_and_bias
from .module import Module

__all__ = ["Linear"]


class Linear(Module):
    """x (*, in_features) -> y (*, out_features); weight (out, in), bias (out,).

    Initialized as torch does, U(-1/sqrt(in), 1/sqrt(in)) for weight and bias, from ``seed``.
    """

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

    def forward(self, x):
        xp = namespace_of(x, self.weight.data, names=["x", "weight"])
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear({self.in_features}, {self.out_features}) expects input of shape "
                             f"(*, {self.in_features}), got {tuple(x.shape)}")
        y = xp.matmul(x, xp.matrix_transpose(self.weight.data))       # (*, out)
        if self.bias is not None:
            y = y + self.bias.data
        self._x = x if self.training else None
        return y

    def backward(self, grad_output):
        """dL/dx (*, in) for dL/dy (*, out); adds dL/dW (out, in) and dL/db (out,) to the grads."""
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
