"""Optimizers with PyTorch's update rules, written once against the Array API.

Each optimizer holds a list of :class:`~xpconv.nn.Parameter` and reads
``p.grad`` to update ``p.data``.  Its state (momentum buffers, Adam moments)
is allocated with ``zeros_like`` on each parameter's own namespace and device,
so a model moved with ``model.to("cupy")`` before the optimizer is built keeps
everything on the GPU.  Updates rebind ``p.data`` rather than writing in place,
so an array the user handed in is never modified.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from array_api_compat import array_namespace

from ._typing import Array
from .nn.module import Parameter
from .validation import check_real

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


class Optimizer:
    """Base class: a list of parameters, ``zero_grad()`` and per-parameter ``state`` dicts."""

    lr: float  # every optimizer has a learning rate, which a schedule may change between steps

    def __init__(self, params: Iterable[Parameter]) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        for p in self.params:
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizer params must be xpconv Parameters (model.parameters()), "
                                f"got {type(p).__name__}")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("optimizer params contain the same Parameter more than once")
        self.state: list[dict[str, Any]] = [{} for _ in self.params]

    def zero_grad(self) -> None:
        """Reset every parameter's ``.grad`` to zeros (same shape, dtype and device)."""
        for p in self.params:
            p.grad = array_namespace(p.data).zeros_like(p.data)

    def step(self) -> None:
        for p, state in zip(self.params, self.state, strict=True):
            if tuple(p.grad.shape) != tuple(p.data.shape):
                raise ValueError(f"gradient shape {tuple(p.grad.shape)} does not match parameter shape "
                                 f"{tuple(p.data.shape)}")
            p.data = self._update(array_namespace(p.data, p.grad), p.data, p.grad, state)

    def _update(self, xp: Any, param: Array, grad: Array,
                state: dict[str, Any]) -> Array:  # pragma: no cover - every optimizer overrides it
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, dampening, Nesterov and L2 weight decay (torch's rule).

    ``g = grad + weight_decay * p``; with momentum ``buf = g`` at the first step,
    then ``buf = momentum * buf + (1 - dampening) * g``, and ``g = g + momentum * buf``
    (Nesterov) or ``g = buf``; finally ``p = p - lr * g``.
    """

    def __init__(self, params: Iterable[Parameter], lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0) -> None:
        super().__init__(params)
        self.lr = check_real("lr", lr, 0.0)
        self.momentum = check_real("momentum", momentum, 0.0)
        self.dampening = check_real("dampening", dampening, 0.0, 1.0)
        self.weight_decay = check_real("weight_decay", weight_decay, 0.0)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening = 0")

    def _update(self, xp: Any, param: Array, grad: Array, state: dict[str, Any]) -> Array:
        g = grad + self.weight_decay * param if self.weight_decay else grad
        if self.momentum:
            buf = state.get("momentum_buffer")
            buf = g + 0.0 if buf is None else self.momentum * buf + (1.0 - self.dampening) * g
            state["momentum_buffer"] = buf
            g = g + self.momentum * buf if self.nesterov else buf
        return param - self.lr * g


class Adam(Optimizer):
    """Adam (torch's rule, bias-corrected), with L2 or decoupled (AdamW) weight decay.

    ``m = m + (1 - b1) (g - m)``, ``v = b2 v + (1 - b2) g²``,
    ``p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
    With ``decoupled_weight_decay`` the parameter first shrinks by ``1 - lr * weight_decay``;
    otherwise ``weight_decay * p`` is added to the gradient.
    """

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, decoupled_weight_decay: bool = False) -> None:
        super().__init__(params)
        self.lr = check_real("lr", lr, 0.0)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (check_real("betas[0]", betas[0], 0.0, 1.0, high_open=True),
                      check_real("betas[1]", betas[1], 0.0, 1.0, high_open=True))
        self.eps = check_real("eps", eps, 0.0)
        self.weight_decay = check_real("weight_decay", weight_decay, 0.0)
        self.decoupled_weight_decay = bool(decoupled_weight_decay)

    def _update(self, xp: Any, param: Array, grad: Array, state: dict[str, Any]) -> Array:
        beta1, beta2 = self.betas
        if self.weight_decay and self.decoupled_weight_decay:
            param = param * (1.0 - self.lr * self.weight_decay)
        elif self.weight_decay:
            grad = grad + self.weight_decay * param
        if not state:
            state.update(step=0, exp_avg=xp.zeros_like(param), exp_avg_sq=xp.zeros_like(param))
        state["step"] += 1
        m = state["exp_avg"] + (1.0 - beta1) * (grad - state["exp_avg"])
        v = beta2 * state["exp_avg_sq"] + (1.0 - beta2) * (grad * grad)
        state["exp_avg"], state["exp_avg_sq"] = m, v
        step_size = self.lr / (1.0 - beta1 ** state["step"])
        denom = xp.sqrt(v) / math.sqrt(1.0 - beta2 ** state["step"]) + self.eps
        return param - step_size * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (torch.optim.AdamW; default ``weight_decay=0.01``)."""

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, decoupled_weight_decay=True)
