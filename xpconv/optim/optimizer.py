"""Optimizers with PyTorch's update rules, parameter groups and state dicts, written once against the Array API.

An optimizer holds parameter groups (``param_groups``: dicts of hyper-parameters plus a ``"params"`` list of
:class:`~xpconv.nn.Parameter`) and per-parameter ``state`` (momentum buffers, Adam moments), and reads
``p.grad`` to update ``p.data``.  The state is allocated with ``zeros_like`` on each parameter's own namespace
and device, and it follows its parameter: after ``model.to(...)`` the next :meth:`Optimizer.step` copies it to
the parameter's new backend, so an optimizer may be built before or after the move.

The first update of a parameter rebinds ``p.data`` to a new array (an array the user handed in is never
modified); later updates change that array, which the optimizer made, in place, as do the state arrays: Adam
makes five temporaries per parameter and step, and no new parameter array.  Measured as aten ops on torch
CPU (tests/op_counts.py): an Adam step is 12 kernel launches per parameter, SGD with momentum 4.
:meth:`Optimizer.state_dict` has torch's layout with host NumPy copies, so a state saved on one backend loads
on any other.  A float16/bfloat16 parameter is updated through a float32 master copy (state ``"master_param"``),
with float32 moments (docs/precision.md).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
from array_api_compat import device

from .._docstrings import fill_doc
from .._namespace import namespace
from .._typing import Array
from ..amp import master_dtype
from ..backends import Backend, to_numpy
from ..nn.module import Parameter
from ..validation import check_int, check_real

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]

# Keys a learning-rate scheduler may add to a parameter group (torch's "initial_lr"), besides the defaults.
_SCHEDULER_KEYS = frozenset({"initial_lr"})

_DOCS = {
    "params": """
        params : iterable of Parameter, or iterable of dict
            The parameters to optimize (``model.parameters()``), or parameter groups: dicts with a
            ``"params"`` entry and any hyper-parameters that differ from the defaults for those parameters.
        """,
    "raises": """
        ValueError
            If a hyper-parameter is out of range (the message names it), the parameter list is empty, or a
            Parameter appears twice.
        TypeError
            If ``params`` holds something other than Parameters, or a hyper-parameter is not a number.
        """,
}


class Optimizer:
    """Base class: parameter groups, per-parameter state, ``zero_grad``, ``step`` and state dicts (as torch).

    Subclasses set :attr:`defaults`-style hyper-parameters through ``__init__``, check a group in
    ``_check_group`` and update one parameter in ``_update``.

    Parameters
    ----------
    params : iterable of Parameter, or iterable of dict
        Parameters or parameter groups (see :class:`SGD`).
    defaults : dict
        The hyper-parameters of a group that does not set them.

    Raises
    ------
    ValueError
        If the parameter list is empty, a Parameter appears twice, or a group has an unknown key.
    TypeError
        If ``params`` is a single Parameter or holds something other than Parameters.

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv.nn import Parameter
    >>> from xpconv.optim import SGD
    >>> w, b = Parameter(np.ones(3)), Parameter(np.zeros(1))
    >>> opt = SGD([{"params": [w]}, {"params": [b], "lr": 0.5}], lr=0.1)
    >>> [g["lr"] for g in opt.param_groups]
    [0.1, 0.5]
    """

    state_keys: ClassVar[tuple[str, ...]] = ()   # the state entries a parameter has once it has been stepped

    def __init__(self, params: Iterable[Parameter] | Iterable[dict[str, Any]], defaults: dict[str, Any]) -> None:
        if isinstance(params, Parameter) or not isinstance(params, Iterable):
            raise TypeError("params must be an iterable of Parameters or of dicts (parameter groups), "
                            f"got {type(params).__name__}")
        self.defaults = dict(defaults)
        self.state: dict[Parameter, dict[str, Any]] = {}
        self._made: dict[Parameter, Array] = {}      # the p.data each update made: the optimizer's to change in place
        self.param_groups: list[dict[str, Any]] = []
        groups: list[Any] = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        for group in groups if isinstance(groups[0], dict) else [{"params": groups}]:
            self.add_param_group(group)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group: a dict with ``"params"`` and hyper-parameters (missing ones from the defaults).

        Raises ValueError for an empty group, a Parameter already in a group, an unknown key or a
        hyper-parameter out of range; TypeError for something other than Parameters.
        """
        if not isinstance(param_group, dict) or "params" not in param_group:
            raise TypeError(f"a parameter group must be a dict with a 'params' entry, got {param_group!r:.80}")
        params = param_group["params"]
        params = [params] if isinstance(params, Parameter) else list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizer params must be xpconv Parameters (model.parameters()), "
                                f"got {type(p).__name__}")
        seen = {id(p) for group in self.param_groups for p in group["params"]}
        if len({id(p) for p in params} | seen) != len(params) + len(seen):
            raise ValueError("optimizer params contain the same Parameter more than once")
        group = self._checked_group({**self.defaults, **param_group})
        group["params"] = params
        self.param_groups.append(group)

    def _checked_group(self, group: Mapping[str, Any]) -> dict[str, Any]:
        """The hyper-parameters of ``group`` (without ``params``), checked and as plain Python values."""
        keys = set(group) - {"params"}
        unknown = keys - set(self.defaults) - _SCHEDULER_KEYS
        missing = set(self.defaults) - keys
        if unknown or missing:
            raise ValueError(f"parameter group of {type(self).__name__} has unknown keys {sorted(unknown)} and "
                             f"lacks {sorted(missing)}; its hyper-parameters are {sorted(self.defaults)}")
        checked = self._check_group(dict(group))
        if "initial_lr" in group:
            checked["initial_lr"] = check_real("initial_lr", group["initial_lr"], 0.0)
        return checked

    def _check_group(self, group: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def lr(self) -> float:
        """The learning rate of the first parameter group; setting it sets every group's (an xpconv shorthand)."""
        return float(self.param_groups[0]["lr"])

    @lr.setter
    def lr(self, value: float) -> None:
        value = check_real("lr", value, 0.0)
        for group in self.param_groups:
            group["lr"] = value

    def zero_grad(self) -> None:
        """Reset every parameter's ``.grad`` to zeros (same shape, dtype and device)."""
        for group in self.param_groups:
            for p in group["params"]:
                with Backend.from_array(p.data).activate():
                    p.grad = namespace(p.data).zeros_like(p.data)

    def step(self) -> None:
        """Update every parameter from its ``.grad``; ValueError if a gradient's shape differs from its parameter's.

        A float16/bfloat16 parameter is updated through its float32 master copy (state ``"master_param"``,
        made from ``p.data`` at its first step and whenever ``p.data`` was set from outside since): the
        gradient is taken in float32, the master and the moments are updated in float32, and ``p.data``
        becomes the master rounded to the parameter's dtype (docs/precision.md).
        """
        for group in self.param_groups:
            for p in group["params"]:
                data, grad = p.data, p.grad
                if tuple(grad.shape) != tuple(data.shape):
                    raise ValueError(f"gradient shape {tuple(grad.shape)} does not match parameter shape "
                                     f"{tuple(data.shape)}")
                state = self.state.setdefault(p, {})
                owned = self._made.get(p) is data
                with Backend.from_array(data).activate():     # the state is allocated on the parameter's device
                    xp = namespace(data, grad)
                    wide = master_dtype(xp, data.dtype)
                    if wide == data.dtype:
                        _follow(data, state)
                        p.data = self._made[p] = self._update(xp, data, grad, state, group, owned)
                        continue
                    if not owned or "master_param" not in state:
                        state["master_param"] = xp.astype(data, wide)
                    _follow(state["master_param"], state)
                    master = self._update(xp, state["master_param"], xp.astype(grad, wide, copy=False), state,
                                          group, True)
                    state["master_param"] = master
                    p.data = self._made[p] = xp.astype(master, data.dtype)

    def _update(self, xp: Any, param: Array, grad: Array, state: dict[str, Any], group: dict[str, Any],
                owned: bool) -> Array:  # pragma: no cover - every optimizer overrides it
        """The updated parameter: ``param`` itself, changed in place, when ``owned`` (the optimizer made it)."""
        raise NotImplementedError

    # -- state dicts ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state in torch's layout, with host NumPy copies of the arrays.

        ``{"state": {index: {name: ndarray or int}}, "param_groups": [{hyper-parameter: number, ...,
        "params": [index, ...]}]}``: parameters are numbered in the order of the groups; a parameter that has
        not been stepped has no entry.  Everything but the arrays is plain Python (JSON-able).
        """
        index = {id(p): i for i, p in enumerate(p for group in self.param_groups for p in group["params"])}
        groups = [{**{k: v for k, v in group.items() if k != "params"},
                   "params": [index[id(p)] for p in group["params"]]} for group in self.param_groups]
        state = {index[id(p)]: {k: v if isinstance(v, int) else np.array(to_numpy(v), copy=True)
                                for k, v in entries.items()}
                 for p, entries in self.state.items() if entries}
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a :meth:`state_dict` (from any backend): arrays are copied onto each parameter's backend,
        device and dtype.

        Raises ValueError (and changes nothing) when its keys, the number of groups or of parameters in a
        group, a state entry's names, an array's shape or a non-floating dtype do not fit this optimizer.
        """
        if not isinstance(state_dict, Mapping) or set(state_dict) != {"state", "param_groups"}:
            raise ValueError("an optimizer state dict has exactly the keys 'state' and 'param_groups', got "
                             f"{sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict).__name__}")
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(saved_groups, (list, tuple)) or len(saved_groups) != len(self.param_groups):
            raise ValueError(f"the state dict has {_count(saved_groups)} parameter groups, "
                             f"{type(self).__name__} has {len(self.param_groups)}")
        groups, by_index = [], {}
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            indices = saved.get("params") if isinstance(saved, Mapping) else None
            if not isinstance(indices, (list, tuple)) or len(indices) != len(group["params"]):
                raise ValueError(f"parameter group {i} of the state dict has {_count(indices)} parameters, "
                                 f"the optimizer's has {len(group['params'])}")
            for index, p in zip(indices, group["params"], strict=True):
                if check_int("parameter index", index, 0) in by_index:
                    raise ValueError(f"parameter index {index} appears twice in the state dict's groups")
                by_index[index] = p, i
            groups.append({**self._checked_group(saved), "params": group["params"]})
        if not isinstance(saved_state, Mapping):
            raise ValueError(f"the state dict's 'state' must be a dict, got {type(saved_state).__name__}")
        state = {}
        for index, entries in saved_state.items():
            if index not in by_index:
                raise ValueError(f"the state dict has state for parameter {index!r}, which no group lists")
            p, i = by_index[index]
            state[p] = self._loaded_state(index, entries, p.data, groups[i])
        for group, new in zip(self.param_groups, groups, strict=True):
            group.clear()
            group.update(new)
        self.state = state
        for p, entries in state.items():
            if "master_param" in entries:    # the loaded master goes with the parameter's present data
                self._made[p] = p.data

    def _loaded_state(self, index: int, entries: Any, data: Array, group: dict[str, Any]) -> dict[str, Any]:
        """One parameter's saved state, checked and copied onto ``data``'s backend, device and dtype."""
        expected = set(self._state_keys(group))
        backend = Backend.from_array(data)
        wide = master_dtype(backend.xp, data.dtype)
        if wide != data.dtype:
            expected.add("master_param")
        if not isinstance(entries, Mapping) or (entries and set(entries) != expected):
            raise ValueError(f"state of parameter {index} must have the entries {sorted(expected)}, got "
                             f"{sorted(entries) if isinstance(entries, Mapping) else type(entries).__name__}")
        out = {}
        for name, value in entries.items():
            if name == "step":
                out[name] = check_int(f"state[{index}]['step']", value, 0)
                continue
            host = np.array(to_numpy(value), copy=True)  # a copy: never alias the caller's arrays
            if host.shape != tuple(data.shape):
                raise ValueError(f"state[{index}][{name!r}] has shape {host.shape}, the parameter has "
                                 f"{tuple(data.shape)}")
            if host.dtype.kind != "f":
                raise ValueError(f"state[{index}][{name!r}] has non-floating dtype {host.dtype}")
            out[name] = backend.asarray(host, dtype=wide)
        return out

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return self.state_keys


def _count(value: Any) -> str:
    return str(len(value)) if isinstance(value, (list, tuple)) else f"no list of ({type(value).__name__})"


def _subtract(param: Array, step: Array, owned: bool) -> Array:
    """``param - step``: in place when the optimizer owns ``param``, else a new array (the caller's is kept)."""
    if owned:
        param -= step
        return param
    return param - step


def _follow(data: Array, state: dict[str, Any]) -> None:
    """Move ``state``'s arrays to ``data``'s library, device and dtype where they differ (after ``model.to``)."""
    for name, value in state.items():
        if not isinstance(value, int) and (type(value) is not type(data) or value.dtype != data.dtype
                                           or device(value) != device(data)):
            state[name] = Backend.from_array(data).asarray(value, dtype=data.dtype)


@fill_doc(**_DOCS)
class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay, as ``torch.optim.SGD``.

    Per parameter ``p`` with gradient ``g`` (``-g`` with ``maximize``): ``g = g + weight_decay * p``; with
    momentum, ``buf = g`` at the first step, then ``buf = momentum * buf + (1 - dampening) * g``, and
    ``g = g + momentum * buf`` (Nesterov) or ``g = buf``; finally ``p = p - lr * g``.
    State: ``"momentum_buffer"`` (only with momentum).

    Parameters
    ----------
    {params}
    lr : float, default 1e-3
        Learning rate, >= 0.
    momentum : float, default 0
        Momentum factor, >= 0.
    dampening : float, default 0
        Dampening of the momentum, in [0, 1].
    weight_decay : float, default 0
        L2 penalty, >= 0: ``weight_decay * p`` is added to the gradient.
    nesterov : bool, default False
        Nesterov momentum (needs ``momentum > 0`` and ``dampening = 0``).
    maximize : bool, default False
        Ascend the objective instead of descending it.

    Raises
    ------
    {raises}

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv.nn import Parameter
    >>> from xpconv.optim import SGD
    >>> p = Parameter(np.array([1.0, 2.0]))
    >>> opt = SGD([p], lr=0.1, momentum=0.9)
    >>> p.grad = np.array([1.0, -1.0])
    >>> opt.step(); opt.step()
    >>> p.data.tolist()                     # buf = g, then 0.9 g + g
    [0.71, 2.29]
    >>> opt.state_dict()["state"][0]["momentum_buffer"].tolist()
    [1.9, -1.9]
    """

    state_keys = ("momentum_buffer",)

    def __init__(self, params: Iterable[Parameter] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
                 *, maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize))

    def _check_group(self, group: dict[str, Any]) -> dict[str, Any]:
        checked = dict(lr=check_real("lr", group["lr"], 0.0), momentum=check_real("momentum", group["momentum"], 0.0),
                       dampening=check_real("dampening", group["dampening"], 0.0, 1.0),
                       weight_decay=check_real("weight_decay", group["weight_decay"], 0.0),
                       nesterov=bool(group["nesterov"]), maximize=bool(group["maximize"]))
        if checked["nesterov"] and (checked["momentum"] == 0 or checked["dampening"] != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening = 0")
        return checked

    def _update(self, xp: Any, param: Array, grad: Array, state: dict[str, Any], group: dict[str, Any],
                owned: bool) -> Array:
        lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
        weight_decay = group["weight_decay"]
        g = -grad if group["maximize"] else grad
        if weight_decay:
            g = g + weight_decay * param
        if momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = xp.asarray(g, copy=True)
            else:                                         # the optimizer's own array: updated in place
                buf *= momentum
                buf += (1.0 - dampening) * g if dampening else g
            g = g + momentum * buf if group["nesterov"] else buf
        return _subtract(param, lr * g, owned)

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return self.state_keys if group["momentum"] else ()


@fill_doc(**_DOCS)
class Adam(Optimizer):
    """Adam with bias correction, L2 or decoupled weight decay and AMSGrad, as ``torch.optim.Adam``.

    Per parameter ``p`` with gradient ``g`` (``-g`` with ``maximize``) at step ``t``: weight decay adds
    ``weight_decay * p`` to ``g``, or with ``decoupled_weight_decay`` shrinks ``p`` by ``1 - lr * weight_decay``
    first; ``m = m + (1 - b1)(g - m)``, ``v = b2 v + (1 - b2) g²`` (with AMSGrad ``v̂ = max(v̂, v)`` replaces
    ``v`` below), ``p = p - lr / (1 - b1^t) · m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
    State: ``"step"`` (int), ``"exp_avg"``, ``"exp_avg_sq"`` and with AMSGrad ``"max_exp_avg_sq"``.

    Parameters
    ----------
    {params}
    lr : float, default 1e-3
        Learning rate, >= 0.
    betas : (float, float), default (0.9, 0.999)
        Decay rates of the first and second moment, each in [0, 1).
    eps : float, default 1e-8
        Added to the denominator, >= 0.
    weight_decay : float, default 0
        Weight decay, >= 0 (L2 in the gradient, or decoupled).
    amsgrad : bool, default False
        Use the running maximum of the second moment (Reddi et al. 2018).
    maximize : bool, default False
        Ascend the objective instead of descending it.
    decoupled_weight_decay : bool, default False
        Decay the weights directly (AdamW, Loshchilov & Hutter 2019) instead of adding L2 to the gradient.

    Raises
    ------
    {raises}

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv.nn import Parameter
    >>> from xpconv.optim import Adam
    >>> p = Parameter(np.array([1.0, -1.0]))
    >>> opt = Adam([p], lr=0.1)
    >>> p.grad = np.array([3.0, -0.5])
    >>> opt.step()
    >>> p.data.round(6).tolist()           # the first step moves each entry by lr, against its gradient's sign
    [0.9, -0.9]
    >>> opt.state_dict()["state"][0]["step"]
    1
    """

    state_keys = ("step", "exp_avg", "exp_avg_sq")

    def __init__(self, params: Iterable[Parameter] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 amsgrad: bool = False, *, maximize: bool = False, decoupled_weight_decay: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize, decoupled_weight_decay=decoupled_weight_decay))

    def _check_group(self, group: dict[str, Any]) -> dict[str, Any]:
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        return dict(lr=check_real("lr", group["lr"], 0.0),
                    betas=(check_real("betas[0]", betas[0], 0.0, 1.0, high_open=True),
                           check_real("betas[1]", betas[1], 0.0, 1.0, high_open=True)),
                    eps=check_real("eps", group["eps"], 0.0),
                    weight_decay=check_real("weight_decay", group["weight_decay"], 0.0),
                    amsgrad=bool(group["amsgrad"]), maximize=bool(group["maximize"]),
                    decoupled_weight_decay=bool(group["decoupled_weight_decay"]))

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return (*self.state_keys, "max_exp_avg_sq") if group["amsgrad"] else self.state_keys

    def _update(self, xp: Any, param: Array, grad: Array, state: dict[str, Any], group: dict[str, Any],
                owned: bool) -> Array:
        lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        if group["maximize"]:
            grad = -grad
        if weight_decay and group["decoupled_weight_decay"]:
            if owned:
                param *= 1.0 - lr * weight_decay
            else:
                param, owned = param * (1.0 - lr * weight_decay), True
        elif weight_decay:
            grad = grad + weight_decay * param
        if "step" not in state:
            state.update(step=0, exp_avg=xp.zeros_like(param), exp_avg_sq=xp.zeros_like(param))
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = xp.zeros_like(param)
        state["step"] = t = state["step"] + 1
        # The moments are the optimizer's own arrays: updated in place, one temporary each (torch's lerp_, mul_,
        # addcmul_).  The bias corrections fold into two scalars: sqrt(v)/s + eps == (sqrt(v) + eps*s) / s.
        m, v = state["exp_avg"], state["exp_avg_sq"]
        delta = grad - m
        delta *= 1.0 - beta1
        m += delta
        square = grad * grad
        square *= 1.0 - beta2
        v *= beta2
        v += square
        if group["amsgrad"]:
            v = state["max_exp_avg_sq"] = xp.maximum(state["max_exp_avg_sq"], v)
        correction2 = math.sqrt(1.0 - beta2 ** t)
        denom = xp.sqrt(v)
        denom += eps * correction2
        step = m / denom
        step *= lr * correction2 / (1.0 - beta1 ** t)
        return _subtract(param, step, owned)


@fill_doc(**_DOCS)
class AdamW(Adam):
    """Adam with decoupled weight decay, as ``torch.optim.AdamW`` (default ``weight_decay=0.01``).

    The parameter shrinks by ``1 - lr * weight_decay`` before the Adam step (see :class:`Adam`).

    Parameters
    ----------
    {params}
    lr : float, default 1e-3
        Learning rate, >= 0.
    betas : (float, float), default (0.9, 0.999)
        Decay rates of the first and second moment, each in [0, 1).
    eps : float, default 1e-8
        Added to the denominator, >= 0.
    weight_decay : float, default 0.01
        Decoupled weight decay, >= 0.
    amsgrad : bool, default False
        Use the running maximum of the second moment.
    maximize : bool, default False
        Ascend the objective instead of descending it.

    Raises
    ------
    {raises}

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv.nn import Parameter
    >>> from xpconv.optim import AdamW
    >>> p = Parameter(np.array([2.0]))
    >>> opt = AdamW([p], lr=0.1, weight_decay=0.5)
    >>> p.grad = np.array([0.0])           # no gradient: only the decay acts, 2 * (1 - 0.1 * 0.5)
    >>> opt.step()
    >>> p.data.tolist()
    [1.9]
    """

    def __init__(self, params: Iterable[Parameter] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 amsgrad: bool = False, *, maximize: bool = False) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True)
