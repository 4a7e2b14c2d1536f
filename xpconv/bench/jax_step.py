"""``xpconv bench --model NAME --backends ...,jax-ref``: the same training step written in JAX.

:func:`jax_mirror` turns an xpconv model (the layers :mod:`xpconv.models` uses: Sequential, Residual, Conv2d,
BatchNorm2d, ReLU, the ResNets' zero-padding shortcut, global average pooling, Flatten, Linear) into a pure
function ``apply(params, state, x) -> (logits, new_state)`` in training mode (batch statistics, running
statistics updated as torch does), its parameters and buffers keyed by the model's ``state_dict()`` names.
:func:`jax_train_step` jits one step: cross-entropy, ``jax.value_and_grad``, SGD with momentum as
``torch.optim.SGD`` (``v = momentum * v + g``, ``p -= lr * v``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import nn
from ..models import ZeroPadShortcut
from .runners import jax_conv

__all__ = ["jax_mirror", "jax_train_step"]

Apply = Callable[[dict, dict, Any], tuple[Any, dict]]


def jax_mirror(model: nn.Module) -> tuple[dict, dict, Apply]:
    """(params, buffers, apply) of ``model`` in JAX; ValueError naming a layer it cannot mirror."""
    import jax.numpy as jnp

    params = {name: jnp.asarray(np.asarray(p.data)) for name, p in model.named_parameters()}
    buffers = {k: jnp.asarray(v) for k, v in model.state_dict().items() if k not in params}
    return params, buffers, _convert(model, "")


def _convert(m: nn.Module, prefix: str) -> Apply:
    import jax.numpy as jnp

    children = [(name, _convert(c, f"{prefix}{name}.")) for name, c in m.named_children()]
    if isinstance(m, nn.Residual):
        named = dict(children)
        main = [f for name, f in children if name not in ("shortcut", "activation")]
        shortcut, activation = named.get("shortcut"), named.get("activation")

        def residual(params, state, x):
            y, state = _chain(main, params, state, x)
            s, state = (x, state) if shortcut is None else shortcut(params, state, x)
            return (y + s, state) if activation is None else activation(params, state, y + s)

        return residual
    if isinstance(m, nn.Sequential):
        return lambda params, state, x: _chain([f for _, f in children], params, state, x)
    if isinstance(m, nn.Conv2d):
        g = m.geometry
        bias = f"{prefix}bias" if m.bias is not None else None
        return lambda params, state, x: (jax_conv(x, params[f"{prefix}weight"], params.get(bias), g.stride,
                                                  g.padding, g.dilation, g.groups), state)
    if isinstance(m, nn.BatchNorm2d) and m.affine and m.track_running_stats and m.momentum is not None:
        return _batch_norm(m, prefix)
    if isinstance(m, nn.ReLU):
        return lambda params, state, x: (jnp.maximum(x, 0), state)
    if isinstance(m, ZeroPadShortcut):
        s, low, high = m.stride, m.low, m.out_channels - m.in_channels - m.low
        return lambda params, state, x: (jnp.pad(x[:, :, ::s, ::s], ((0, 0), (low, high), (0, 0), (0, 0))), state)
    if isinstance(m, nn.AdaptiveAvgPool2d) and tuple(m.output_size) == (1, 1):
        return lambda params, state, x: (jnp.mean(x, axis=(2, 3), keepdims=True), state)
    if isinstance(m, nn.Flatten) and (m.start_dim, m.end_dim) == (1, -1):
        return lambda params, state, x: (jnp.reshape(x, (x.shape[0], -1)), state)
    if isinstance(m, nn.Linear):
        bias = f"{prefix}bias" if m.bias is not None else None

        def linear(params, state, x):
            y = x @ params[f"{prefix}weight"].T
            return (y if bias is None else y + params[bias]), state

        return linear
    raise ValueError(f"no JAX mirror for {type(m).__name__}")


def _chain(functions, params, state, x):
    for f in functions:
        x, state = f(params, state, x)
    return x, state


def _batch_norm(m, prefix: str) -> Apply:
    """Training-mode BatchNorm2d: normalize by the batch's biased variance, update the running statistics with
    the unbiased one and the momentum, count the batch."""
    import jax.numpy as jnp

    eps, mom, c = m.eps, m.momentum, m.num_features

    def batch_norm(params, state, x):
        mean, var = jnp.mean(x, axis=(0, 2, 3)), jnp.var(x, axis=(0, 2, 3))
        count = x.size // c
        shape = (1, c, 1, 1)
        y = (x - mean.reshape(shape)) / jnp.sqrt(var.reshape(shape) + eps)
        y = y * params[f"{prefix}weight"].reshape(shape) + params[f"{prefix}bias"].reshape(shape)
        state = {**state,
                 f"{prefix}running_mean": (1 - mom) * state[f"{prefix}running_mean"] + mom * mean,
                 f"{prefix}running_var": (1 - mom) * state[f"{prefix}running_var"] + mom * count / (count - 1) * var,
                 f"{prefix}num_batches_tracked": state[f"{prefix}num_batches_tracked"] + 1}
        return y, state

    return batch_norm


def jax_train_step(apply: Apply, lr: float, momentum: float):
    """A jitted ``step(params, velocity, state, x, labels) -> (params, velocity, state, loss)``."""
    import jax
    import jax.numpy as jnp

    def loss_fn(params, state, x, labels):
        logits, state = apply(params, state, x)
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1)), state

    @jax.jit
    def step(params, velocity, state, x, labels):
        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, x, labels)
        velocity = jax.tree.map(lambda v, g: momentum * v + g, velocity, grads)
        params = jax.tree.map(lambda p, v: p - lr * v, params, velocity)
        return params, velocity, state, loss

    return step
