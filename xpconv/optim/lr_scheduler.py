"""Learning-rate schedulers with ``torch.optim.lr_scheduler``'s names, arguments and sequences.

A scheduler sets ``group["lr"]`` of its optimizer's parameter groups once per :meth:`LRScheduler.step` (call it
after ``optimizer.step()``).  It computes with Python floats only, never touching an array, so it costs no
device work or synchronization.  The formulas are torch's, including its recursive ("chainable") forms, so
the rates equal torch's for the same settings; ``state_dict()`` is plain JSON-able data and
``load_state_dict`` resumes the sequence.  Building a scheduler records each group's starting rate as
``group["initial_lr"]`` and sets the first rate, as torch does.
"""
from __future__ import annotations

import copy
import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .._docstrings import fill_doc
from ..validation import check_int, check_real, positive_int
from .optimizer import Optimizer

__all__ = ["LRScheduler", "StepLR", "MultiStepLR", "CosineAnnealingLR", "LinearLR", "OneCycleLR", "SequentialLR"]

_DOCS = {
    "optimizer": """
        optimizer : Optimizer
            The optimizer whose groups' ``"lr"`` the scheduler sets.
        """,
    "last_epoch": """
        last_epoch : int, default -1
            Index of the last step taken; -1 starts the schedule.  Another value resumes it, and needs each
            group's ``"initial_lr"`` (from an optimizer state dict); prefer ``load_state_dict``.
        """,
    "raises": """
        TypeError
            If ``optimizer`` is not an :class:`~xpconv.optim.Optimizer`.
        ValueError
            If an argument is out of range (the message names it), or ``last_epoch`` is not -1 and a group
            lacks ``"initial_lr"``.
        """,
    "setup": """
        >>> import numpy as np
        >>> from xpconv.nn import Parameter
        >>> from xpconv.optim import SGD
        >>> from xpconv.optim import lr_scheduler
        >>> opt = SGD([Parameter(np.zeros(1))], lr=1.0)
        """,
}


@fill_doc(**_DOCS)
class LRScheduler:
    """Base class: ``step()``, ``get_last_lr()``, ``state_dict()`` and ``load_state_dict()``, as torch's.

    A subclass computes the next rates in :meth:`get_lr` (from ``last_epoch`` and the groups' current rates).

    Parameters
    ----------
    {optimizer}
    {last_epoch}

    Raises
    ------
    {raises}

    Examples
    --------
    {setup}
    >>> class Halving(lr_scheduler.LRScheduler):
    ...     def get_lr(self):
    ...         return [base / 2 ** self.last_epoch for base in self.base_lrs]
    >>> sched = Halving(opt)
    >>> for _ in range(3):
    ...     opt.step()
    ...     sched.step()
    >>> sched.get_last_lr()
    [0.125]
    """

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"a scheduler needs an xpconv Optimizer, got {type(optimizer).__name__}")
        last_epoch = check_int("last_epoch", last_epoch, -1)
        self.optimizer = optimizer
        for i, group in enumerate(optimizer.param_groups):
            if last_epoch == -1:
                group.setdefault("initial_lr", group["lr"])
            elif "initial_lr" not in group:
                raise ValueError(f"param_groups[{i}] has no 'initial_lr' to resume the schedule from "
                                 f"last_epoch={last_epoch}: load the optimizer's state dict first")
        self.base_lrs: list[float] = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._initial_step()

    def _initial_step(self) -> None:
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def get_lr(self) -> list[float]:  # pragma: no cover - every scheduler overrides it
        """The rates of step ``last_epoch``, one per group (called by :meth:`step`; read them with
        :meth:`get_last_lr`)."""
        raise NotImplementedError

    def _closed_form_lr(self) -> list[float]:
        """The rates of step ``last_epoch`` from ``base_lrs`` alone (torch's ``_get_closed_form_lr``)."""
        return self.get_lr()

    def step(self) -> None:
        """Advance the schedule by one step and set every group's ``"lr"``; call after ``optimizer.step()``."""
        self._step_count += 1
        self.last_epoch += 1
        self._set_lrs(self.get_lr())

    def _restart(self) -> None:
        """Jump to step 0 with the closed form (how :class:`SequentialLR` starts a later scheduler)."""
        self.last_epoch = 0
        self._set_lrs(self._closed_form_lr())

    def _set_lrs(self, lrs: list[float]) -> None:
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        """The rates the last :meth:`step` set, one per parameter group."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """Everything but the optimizer, as plain (JSON-able) Python values."""
        return {key: copy.deepcopy(value) for key, value in self.__dict__.items() if key != "optimizer"}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Resume from a :meth:`state_dict`; ValueError (changing nothing) if its entries are not this
        scheduler's."""
        own = self.state_dict()
        if not isinstance(state_dict, Mapping) or set(state_dict) != set(own):
            got = sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict).__name__
            raise ValueError(f"{type(self).__name__} state dict must have the entries {sorted(own)}, got {got}")
        for key, value in own.items():
            if isinstance(value, list) and (not isinstance(state_dict[key], list)
                                            or len(state_dict[key]) != len(value)):
                raise ValueError(f"{type(self).__name__} state entry {key!r} must be a list of {len(value)}, "
                                 f"got {state_dict[key]!r:.80}")
        self.__dict__.update(copy.deepcopy(dict(state_dict)))

    def _current_lrs(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]


@fill_doc(**_DOCS)
class StepLR(LRScheduler):
    """Multiply the rate by ``gamma`` every ``step_size`` steps, as ``torch.optim.lr_scheduler.StepLR``.

    ``lr = initial_lr * gamma ** (step // step_size)``.

    Parameters
    ----------
    {optimizer}
    step_size : int
        Steps between decays, >= 1.
    gamma : float, default 0.1
        Factor of each decay, >= 0.
    {last_epoch}

    Raises
    ------
    {raises}

    Examples
    --------
    {setup}
    >>> sched = lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    >>> lrs = []
    >>> for _ in range(5):
    ...     lrs.append(sched.get_last_lr()[0])
    ...     opt.step()
    ...     sched.step()
    >>> lrs
    [1.0, 1.0, 0.5, 0.5, 0.25]
    """

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1) -> None:
        self.step_size = positive_int("step_size", step_size)
        self.gamma = check_real("gamma", gamma, 0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch == 0 or self.last_epoch % self.step_size:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]

    def _closed_form_lr(self) -> list[float]:
        return [base * self.gamma ** (self.last_epoch // self.step_size) for base in self.base_lrs]


@fill_doc(**_DOCS)
class MultiStepLR(LRScheduler):
    """Multiply the rate by ``gamma`` at each milestone step, as ``torch.optim.lr_scheduler.MultiStepLR``.

    ``lr = initial_lr * gamma ** (number of milestones <= step)``; a milestone listed twice decays twice.

    Parameters
    ----------
    {optimizer}
    milestones : iterable of int
        Steps at which the rate decays, each >= 0.
    gamma : float, default 0.1
        Factor of each decay, >= 0.
    {last_epoch}

    Raises
    ------
    {raises}

    Examples
    --------
    {setup}
    >>> sched = lr_scheduler.MultiStepLR(opt, milestones=[1, 3], gamma=0.1)
    >>> lrs = []
    >>> for _ in range(4):
    ...     lrs.append(sched.get_last_lr()[0])
    ...     opt.step()
    ...     sched.step()
    >>> [round(lr, 12) for lr in lrs]
    [1.0, 0.1, 0.1, 0.01]
    """

    def __init__(self, optimizer: Optimizer, milestones: Iterable[int], gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        if not isinstance(milestones, Iterable):
            raise TypeError(f"milestones must be an iterable of ints, got {type(milestones).__name__}")
        self.milestones = sorted(check_int("milestones", m, 0) for m in milestones)
        self.gamma = check_real("gamma", gamma, 0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        count = self.milestones.count(self.last_epoch)
        if not count:
            return self._current_lrs()
        return [lr * self.gamma ** count for lr in self._current_lrs()]

    def _closed_form_lr(self) -> list[float]:
        return [base * self.gamma ** bisect_right(self.milestones, self.last_epoch) for base in self.base_lrs]


@fill_doc(**_DOCS)
class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from the initial rate to ``eta_min`` over ``T_max`` steps, as torch's ``CosineAnnealingLR``.

    ``lr = eta_min + (initial_lr - eta_min) (1 + cos(pi step / T_max)) / 2`` (computed recursively from the
    current rate, as torch does; past ``T_max`` the rate rises again along the cosine).

    Parameters
    ----------
    {optimizer}
    T_max : int
        Steps of the half period, >= 1.
    eta_min : float, default 0
        The lowest rate, >= 0.
    {last_epoch}

    Raises
    ------
    {raises}

    Examples
    --------
    {setup}
    >>> sched = lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    >>> lrs = []
    >>> for _ in range(5):
    ...     lrs.append(sched.get_last_lr()[0])
    ...     opt.step()
    ...     sched.step()
    >>> [round(lr, 4) for lr in lrs]
    [1.0, 0.8536, 0.5, 0.1464, 0.0]
    """

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        self.T_max = positive_int("T_max", T_max)
        self.eta_min = check_real("eta_min", eta_min, 0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        t, T, eta_min = self.last_epoch, self.T_max, self.eta_min
        if self._is_initial:
            return self._current_lrs()
        if self._step_count == 1 and t > 0:
            return self._closed_form_lr()
        if (t - 1 - T) % (2 * T) == 0:
            return [lr + (base - eta_min) * (1 - math.cos(math.pi / T)) / 2
                    for base, lr in zip(self.base_lrs, self._current_lrs(), strict=True)]
        return [(1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T)) * (lr - eta_min) + eta_min
                for lr in self._current_lrs()]

    def _closed_form_lr(self) -> list[float]:
        return [self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
                for base in self.base_lrs]


@fill_doc(**_DOCS)
class LinearLR(LRScheduler):
    """Scale the rate by a factor going linearly from ``start_factor`` to ``end_factor`` (torch's ``LinearLR``).

    ``lr = initial_lr * (start + (end - start) * min(step, total_iters) / total_iters)``: with
    ``start_factor < 1`` and ``end_factor = 1`` this is the linear warm-up.

    Parameters
    ----------
    {optimizer}
    start_factor : float, default 1/3
        Factor at step 0, in (0, 1].
    end_factor : float, default 1
        Factor from step ``total_iters`` on, in [0, 1].
    total_iters : int, default 5
        Steps of the ramp, >= 1.
    {last_epoch}

    Raises
    ------
    {raises}

    Examples
    --------
    {setup}
    >>> sched = lr_scheduler.LinearLR(opt, start_factor=0.25, total_iters=3)
    >>> lrs = []
    >>> for _ in range(5):
    ...     lrs.append(sched.get_last_lr()[0])
    ...     opt.step()
    ...     sched.step()
    >>> lrs
    [0.25, 0.5, 0.75, 1.0, 1.0]
    """

    def __init__(self, optimizer: Optimizer, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5, last_epoch: int = -1) -> None:
        self.start_factor = check_real("start_factor", start_factor, 0.0, 1.0, low_open=True)
        self.end_factor = check_real("end_factor", end_factor, 0.0, 1.0)
        self.total_iters = positive_int("total_iters", total_iters)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        t, start, end = self.last_epoch, self.start_factor, self.end_factor
        if t == 0:
            return [lr * start for lr in self._current_lrs()]
        if self._is_initial or t > self.total_iters:
            return self._current_lrs()
        return [lr * (1.0 + (end - start) / (self.total_iters * start + (t - 1) * (end - start)))
                for lr in self._current_lrs()]

    def _closed_form_lr(self) -> list[float]:
        start, end = self.start_factor, self.end_factor
        return [base * (start + (end - start) * min(self.total_iters, self.last_epoch) / self.total_iters)
                for base in self.base_lrs]


def _per_group(name: str, value: Any, optimizer: Optimizer) -> list[float]:
    """A number for every parameter group: one number repeated, or a list with one per group."""
    n = len(optimizer.param_groups)
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise ValueError(f"{name} must be a number or a list of {n} (one per parameter group), got {value!r}")
    return [check_real(name, v, 0.0) for v in values]


@fill_doc(**_DOCS)
class OneCycleLR(LRScheduler):
    """The 1cycle policy (Smith & Topin 2017), as ``torch.optim.lr_scheduler.OneCycleLR``, stepped every batch.

    The rate rises from ``max_lr / div_factor`` to ``max_lr`` over the first ``pct_start`` of the steps and
    anneals to ``max_lr / div_factor / final_div_factor`` by the last; with ``three_phase`` it comes back down
    to the initial rate symmetrically before annealing to the minimum.  With ``cycle_momentum`` the SGD
    momentum (or Adam's beta1) moves inversely, between ``max_momentum`` and ``base_momentum``.

    Parameters
    ----------
    {optimizer}
    max_lr : float or list of float
        The peak rate, one for all groups or one per group.
    total_steps : int or None, default None
        Steps in the cycle; None: ``epochs * steps_per_epoch``.
    epochs, steps_per_epoch : int or None, default None
        Give both when ``total_steps`` is None.
    pct_start : float, default 0.3
        Fraction of the steps spent raising the rate, in [0, 1].
    anneal_strategy : {"cos", "linear"}, default "cos"
        Shape of each phase.
    cycle_momentum : bool, default True
        Cycle the optimizer's ``momentum`` (SGD) or ``betas[0]`` (Adam) too.
    base_momentum, max_momentum : float or list of float, default 0.85, 0.95
        The momentum at the peak rate and at the ends.
    div_factor : float, default 25
        ``initial_lr = max_lr / div_factor``.
    final_div_factor : float, default 1e4
        ``min_lr = initial_lr / final_div_factor``.
    three_phase : bool, default False
        Use three phases (up, down to the initial rate, down to the minimum) as the paper does.
    {last_epoch}

    Raises
    ------
    {raises}

    Examples
    --------
    {setup}
    >>> sched = lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=10)
    >>> lrs, momenta = [], []
    >>> for _ in range(10):
    ...     lrs.append(sched.get_last_lr()[0])
    ...     momenta.append(opt.param_groups[0]["momentum"])
    ...     opt.step()
    ...     sched.step()
    >>> [round(lr, 6) for lr in (lrs[0], lrs[2], lrs[-1])]      # max_lr / 25, the peak, / 1e4 more
    [0.04, 1.0, 4e-06]
    >>> [round(m, 6) for m in (momenta[0], momenta[2], momenta[-1])]
    [0.95, 0.85, 0.95]
    """

    def __init__(self, optimizer: Optimizer, max_lr: float | list[float], total_steps: int | None = None,
                 epochs: int | None = None, steps_per_epoch: int | None = None, pct_start: float = 0.3,
                 anneal_strategy: str = "cos", cycle_momentum: bool = True,
                 base_momentum: float | list[float] = 0.85, max_momentum: float | list[float] = 0.95,
                 div_factor: float = 25.0, final_div_factor: float = 1e4, three_phase: bool = False,
                 last_epoch: int = -1) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"a scheduler needs an xpconv Optimizer, got {type(optimizer).__name__}")
        if total_steps is not None:
            self.total_steps = positive_int("total_steps", total_steps)
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = positive_int("epochs", epochs) * positive_int("steps_per_epoch", steps_per_epoch)
        else:
            raise ValueError("OneCycleLR needs total_steps, or both epochs and steps_per_epoch")
        pct_start = check_real("pct_start", pct_start, 0.0, 1.0)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        div_factor = check_real("div_factor", div_factor, 0.0, low_open=True)
        final_div_factor = check_real("final_div_factor", final_div_factor, 0.0, low_open=True)
        # Phases as torch's: (last step of the phase, start and end rate, start and end momentum), by name.
        up = pct_start * self.total_steps - 1
        self._phases: list[list[Any]]
        if three_phase:
            self._phases = [[up, "initial", "max", "max_m", "base_m"],
                            [2 * pct_start * self.total_steps - 2, "max", "initial", "base_m", "max_m"],
                            [self.total_steps - 1, "initial", "min", "max_m", "max_m"]]
        else:
            self._phases = [[up, "initial", "max", "max_m", "base_m"],
                            [self.total_steps - 1, "max", "min", "base_m", "max_m"]]
        self.max_lrs = _per_group("max_lr", max_lr, optimizer)
        self.initial_lrs = [lr / div_factor for lr in self.max_lrs]
        self.min_lrs = [lr / final_div_factor for lr in self.initial_lrs]
        if last_epoch == -1:
            for group, lr in zip(optimizer.param_groups, self.initial_lrs, strict=True):
                group["initial_lr"] = lr
        self.cycle_momentum = bool(cycle_momentum)
        if self.cycle_momentum:
            if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
                raise ValueError("cycle_momentum=True needs an optimizer with momentum or betas (SGD, Adam)")
            self.use_beta1 = "betas" in optimizer.defaults
            self.max_momentums = _per_group("max_momentum", max_momentum, optimizer)
            self.base_momentums = _per_group("base_momentum", base_momentum, optimizer)
            if last_epoch == -1:
                for group, momentum in zip(optimizer.param_groups, self.max_momentums, strict=True):
                    self._set_momentum(group, momentum)
        super().__init__(optimizer, last_epoch)

    def _set_momentum(self, group: dict[str, Any], momentum: float) -> None:
        if self.use_beta1:
            group["betas"] = (momentum, *group["betas"][1:])
        else:
            group["momentum"] = momentum

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self) -> list[float]:
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(f"OneCycleLR stepped {step} times, more than its total_steps={self.total_steps}")
        lrs = []
        for i, group in enumerate(self.optimizer.param_groups):
            values = {"initial": self.initial_lrs[i], "max": self.max_lrs[i], "min": self.min_lrs[i]}
            if self.cycle_momentum:
                values.update(max_m=self.max_momentums[i], base_m=self.base_momentums[i])
            start_step = 0.0
            for k, (end_step, start_lr, end_lr, start_m, end_m) in enumerate(self._phases):
                if step <= end_step or k == len(self._phases) - 1:
                    pct = (step - start_step) / (end_step - start_step)
                    lrs.append(self._anneal(values[start_lr], values[end_lr], pct))
                    if self.cycle_momentum:
                        self._set_momentum(group, self._anneal(values[start_m], values[end_m], pct))
                    break
                start_step = end_step
        return lrs


@fill_doc(**_DOCS)
class SequentialLR(LRScheduler):
    """Run schedulers one after another, switching at the milestone steps, as torch's ``SequentialLR``.

    Scheduler ``k`` runs from milestone ``k - 1`` (starting at its own step 0) until milestone ``k``:
    ``SequentialLR(opt, [LinearLR(opt, 0.1, total_iters=w), CosineAnnealingLR(opt, T_max=n - w)],
    milestones=[w])`` is a linear warm-up over ``w`` steps followed by cosine annealing.

    Parameters
    ----------
    {optimizer}
    schedulers : list of LRScheduler
        At least one, each built on ``optimizer``.
    milestones : list of int
        ``len(schedulers) - 1`` increasing steps.
    {last_epoch}

    Raises
    ------
    {raises}

    Examples
    --------
    {setup}
    >>> warmup = lr_scheduler.LinearLR(opt, start_factor=0.5, total_iters=2)
    >>> decay = lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    >>> sched = lr_scheduler.SequentialLR(opt, [warmup, decay], milestones=[2])
    >>> lrs = []
    >>> for _ in range(5):
    ...     lrs.append(sched.get_last_lr()[0])
    ...     opt.step()
    ...     sched.step()
    >>> lrs
    [0.5, 0.75, 1.0, 0.5, 0.25]
    """

    def __init__(self, optimizer: Optimizer, schedulers: Sequence[LRScheduler], milestones: Sequence[int],
                 last_epoch: int = -1) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"a scheduler needs an xpconv Optimizer, got {type(optimizer).__name__}")
        schedulers = list(schedulers)
        if not schedulers:
            raise ValueError("SequentialLR needs at least one scheduler")
        for i, scheduler in enumerate(schedulers):
            if not isinstance(scheduler, LRScheduler) or isinstance(scheduler, SequentialLR):
                raise TypeError(f"schedulers[{i}] must be an LRScheduler (not a SequentialLR), "
                                f"got {type(scheduler).__name__}")
            if scheduler.optimizer is not optimizer:
                raise ValueError(f"schedulers[{i}] belongs to another optimizer")
        milestones = [check_int("milestones", m, 1) for m in milestones]
        if len(milestones) != len(schedulers) - 1 or milestones != sorted(set(milestones)):
            raise ValueError(f"milestones must be {len(schedulers) - 1} increasing steps (one fewer than the "
                             f"schedulers), got {milestones}")
        self._schedulers = schedulers
        self._milestones = milestones
        self.last_epoch = check_int("last_epoch", last_epoch, -1) + 1
        self.optimizer = optimizer
        # As torch: undo the first step each scheduler took when it was built, then start the first one.
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        for scheduler in schedulers:
            scheduler.last_epoch -= 1
        schedulers[0]._initial_step()
        self._last_lr = schedulers[0].get_last_lr()

    def step(self) -> None:
        """Advance by one step: the running scheduler steps, or the next one starts at a milestone."""
        self.last_epoch += 1
        k = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[k]
        if k > 0 and self._milestones[k - 1] == self.last_epoch:
            scheduler._restart()
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        """Its own entries plus ``"_schedulers"``: the state dict of each scheduler."""
        state = {key: copy.deepcopy(value) for key, value in self.__dict__.items()
                 if key not in ("optimizer", "_schedulers")}
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Resume from a :meth:`state_dict`; ValueError (changing nothing) if it does not fit."""
        if not isinstance(state_dict, Mapping) or not isinstance(state_dict.get("_schedulers"), list) \
                or len(state_dict["_schedulers"]) != len(self._schedulers):
            raise ValueError(f"SequentialLR state dict must hold one state per scheduler "
                             f"({len(self._schedulers)}) under '_schedulers'")
        own = {k: v for k, v in state_dict.items() if k != "_schedulers"}
        expected = set(self.state_dict()) - {"_schedulers"}
        if set(own) != expected:
            raise ValueError(f"SequentialLR state dict must have the entries {sorted(expected)}, got {sorted(own)}")
        backups = [s.state_dict() for s in self._schedulers]
        try:
            for scheduler, state in zip(self._schedulers, state_dict["_schedulers"], strict=True):
                scheduler.load_state_dict(state)
        except ValueError:
            for scheduler, state in zip(self._schedulers, backups, strict=True):
                scheduler.load_state_dict(state)
            raise
        self.__dict__.update(copy.deepcopy(own))
