"""Mixed precision: float16/bfloat16 layers, float32 master weights and dynamic loss scaling (docs/precision.md).

xpconv's mixed precision is explicit (apex's "O2"), not an autocast: a model built with ``dtype="float16"``
(or ``"bfloat16"`` on torch) holds its weights and computes its activations in that dtype; the numerically
sensitive parts compute in float32 (:func:`master_dtype`): the loss (log-sum-exp) and the normalization
statistics, whose parameters and running statistics are float32.  The optimizers keep a float32 master
copy of every float16/bfloat16 parameter, update it and round it into the parameter (:mod:`xpconv.optim`).
:class:`GradScaler` keeps small float16 gradients from flushing to zero, as ``torch.amp.GradScaler`` does.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ._namespace import namespace
from ._typing import Array
from .backends import Backend, to_numpy
from .validation import check_real, non_negative_int, positive_int

__all__ = ["GradScaler", "master_dtype"]


def master_dtype(xp: Any, dtype: Any) -> Any:
    """The dtype to accumulate, normalize and update ``dtype`` values in: float32 for float16 and bfloat16,
    ``dtype`` itself for float32 and float64.

    Examples
    --------
    >>> import numpy as np
    >>> from array_api_compat import numpy as xp
    >>> master_dtype(xp, xp.float16), master_dtype(xp, xp.float64)
    (dtype('float32'), dtype('float64'))
    """
    return xp.float32 if xp.finfo(dtype).bits < 32 else dtype


def _params(optimizer: Any) -> Iterator[Any]:
    for group in optimizer.param_groups:
        yield from group["params"]


class GradScaler:
    """Dynamic loss scaling, as ``torch.amp.GradScaler`` (same names, defaults and sequence of scales).

    The loss gradient is multiplied by ``scale`` (:meth:`scale`) before the backward pass, so that small
    float16 gradients stay representable; :meth:`unscale_` divides the gradients by it in float32 and checks
    them for inf/NaN on the device; :meth:`step` skips the optimizer step when one is found (one host read of
    one number per step); :meth:`update` multiplies the scale by ``backoff_factor`` after a skipped step and by
    ``growth_factor`` after ``growth_interval`` steps in a row without one.  The scale is a float32 value,
    as torch's.  Disabled (``enabled=False``), every method passes through: ``step`` is ``optimizer.step()``.

    Parameters
    ----------
    init_scale : float, default 2.0**16
        The first scale, > 0.
    growth_factor : float, default 2.0
        Multiplies the scale after ``growth_interval`` good steps; > 1.
    backoff_factor : float, default 0.5
        Multiplies the scale after a step with inf/NaN gradients; in (0, 1).
    growth_interval : int, default 2000
        Good steps in a row before the scale grows; >= 1.
    enabled : bool, default True
        False: a pass-through (float32 training needs no scaling, nor does bfloat16, whose range is float32's).

    Raises
    ------
    ValueError
        If a factor or the interval is out of range (the message names it).
    TypeError
        If one is not a number.

    Examples
    --------
    >>> import numpy as np
    >>> from xpconv.amp import GradScaler
    >>> from xpconv.nn import Parameter
    >>> from xpconv.optim import SGD
    >>> p = Parameter(np.ones(2, dtype=np.float16))
    >>> opt, scaler = SGD([p], lr=0.5), GradScaler(init_scale=4.0, growth_interval=1)
    >>> p.grad = scaler.scale(np.array([1.0, 2.0], dtype=np.float16))   # what backward gives for a scaled loss
    >>> scaler.step(opt); scaler.update()                               # unscaled: [1, 2]; the scale grows
    >>> p.data.tolist(), scaler.get_scale()
    ([0.5, 0.0], 8.0)
    >>> p.grad = np.array([np.inf, 1.0], dtype=np.float16)
    >>> scaler.step(opt); scaler.update()                               # skipped; the scale backs off
    >>> p.data.tolist(), scaler.get_scale()
    ([0.5, 0.0], 4.0)
    """

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True) -> None:
        self._enabled = bool(enabled)
        self._scale = _float32(check_real("init_scale", init_scale, 0.0, low_open=True))
        self._growth_factor = check_real("growth_factor", growth_factor, 1.0, low_open=True)
        self._backoff_factor = check_real("backoff_factor", backoff_factor, 0.0, 1.0, low_open=True, high_open=True)
        self._growth_interval = positive_int("growth_interval", growth_interval)
        self._growth_tracker = 0
        # per optimizer unscaled since the last update: the 0-d device sum of its gradients, then whether it was finite
        self._found_inf: dict[int, Array | bool | None] = {}
        self._stepped: set[int] = set()

    def is_enabled(self) -> bool:
        return self._enabled

    def get_scale(self) -> float:
        """The current scale (1.0 when disabled)."""
        return self._scale if self._enabled else 1.0

    def scale(self, outputs: Any) -> Any:
        """``outputs`` (an array, or a number such as the ``grad_output`` of a loss's backward) times the scale;
        ``outputs`` unchanged when disabled."""
        return outputs * self._scale if self._enabled else outputs

    def unscale_(self, optimizer: Any) -> None:
        """Divide every gradient of ``optimizer``'s parameters by the scale, in float32 (:func:`master_dtype`):
        ``p.grad`` becomes that float32 array, which :meth:`step` (or a clipping in between) reads.

        The sum of each gradient is added up on the device: a non-finite entry makes it non-finite (so does a sum
        beyond float32's range, ~3e38, whose step would be no better), and :meth:`step` reads that one number.
        RuntimeError if called twice before :meth:`update`.
        """
        if not self._enabled:
            return
        if id(optimizer) in self._found_inf:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update()")
        inv_scale, total = 1.0 / self._scale, None
        for p in _params(optimizer):
            with Backend.from_array(p.grad).activate():
                xp = namespace(p.grad)
                p.grad = xp.astype(p.grad, master_dtype(xp, p.grad.dtype), copy=False) * inv_scale
                total = xp.sum(p.grad) if total is None else total + xp.sum(p.grad)
        self._found_inf[id(optimizer)] = total

    def step(self, optimizer: Any) -> None:
        """``optimizer.step()`` unless the unscaled gradients hold an inf or a NaN (unscales them first if
        :meth:`unscale_` was not called).  RuntimeError if called twice before :meth:`update`."""
        if not self._enabled:
            optimizer.step()
            return
        if id(optimizer) in self._stepped:
            raise RuntimeError("step() has already been called since the last update()")
        if id(optimizer) not in self._found_inf:
            self.unscale_(optimizer)
        self._stepped.add(id(optimizer))
        if not self._found(id(optimizer)):
            optimizer.step()

    def _found(self, key: int) -> bool:
        """Whether the unscaled gradients of optimizer ``key`` hold an inf or NaN: the one host read of a step,
        whose answer is kept until :meth:`update`."""
        total = self._found_inf[key]
        if not isinstance(total, bool):
            total = self._found_inf[key] = total is not None and not math.isfinite(float(to_numpy(total)))
        return total

    def update(self, new_scale: float | None = None) -> None:
        """Lower the scale after a step with inf/NaN gradients, raise it after ``growth_interval`` good steps
        in a row (torch's rule), or set it to ``new_scale``; RuntimeError if no optimizer was unscaled since the
        last update."""
        if not self._enabled:
            return
        if new_scale is not None:
            self._scale = _float32(check_real("new_scale", new_scale, 0.0, low_open=True))
        else:
            if not self._found_inf:
                raise RuntimeError("update() needs a preceding unscale_() or step() since the last update()")
            if any(self._found(key) for key in self._found_inf):
                self._scale = _float32(self._scale * self._backoff_factor)
                self._growth_tracker = 0
            elif self._growth_tracker + 1 == self._growth_interval:
                grown = _float32(self._scale * self._growth_factor)
                self._scale = grown if math.isfinite(grown) else self._scale
                self._growth_tracker = 0
            else:
                self._growth_tracker += 1
        self._found_inf.clear()
        self._stepped.clear()

    # -- state dicts -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch's keys as plain numbers: ``scale``, ``growth_factor``, ``backoff_factor``, ``growth_interval``,
        ``_growth_tracker``; empty when disabled."""
        if not self._enabled:
            return {}
        return {"scale": self._scale, "growth_factor": self._growth_factor, "backoff_factor": self._backoff_factor,
                "growth_interval": self._growth_interval, "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a :meth:`state_dict`; ValueError (changing nothing) for an empty or malformed one."""
        if not self._enabled:
            return
        keys = {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}
        if not isinstance(state_dict, Mapping) or set(state_dict) != keys:
            raise ValueError(f"a GradScaler state dict has exactly the keys {sorted(keys)} (an empty one comes "
                             f"from a disabled scaler), got {state_dict!r:.200}")
        loaded = GradScaler(state_dict["scale"], state_dict["growth_factor"], state_dict["backoff_factor"],
                            state_dict["growth_interval"])
        tracker = non_negative_int("_growth_tracker", state_dict["_growth_tracker"])
        self._scale, self._growth_factor = loaded._scale, loaded._growth_factor
        self._backoff_factor, self._growth_interval = loaded._backoff_factor, loaded._growth_interval
        self._growth_tracker = tracker

    def __repr__(self) -> str:
        return (f"GradScaler(scale={self.get_scale()}, growth_factor={self._growth_factor}, "
                f"backoff_factor={self._backoff_factor}, growth_interval={self._growth_interval}, "
                f"enabled={self._enabled})")


def _float32(value: float) -> float:
    """``value`` rounded to float32, as torch keeps its scale (a product of two float32 values rounded once
    equals float32 arithmetic's); beyond float32's range, inf."""
    with np.errstate(over="ignore"):
        return float(np.float32(value))
