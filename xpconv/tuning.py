"""Auto-tuning of ``algorithm="auto"``, like ``torch.backends.cudnn.benchmark``: opt-in, per process.

With it on, the first convolution of each (library, device, dtype, shapes, geometry, workspace cap) key
times forward+backward of every candidate algorithm (those that can compute the geometry and whose documented
float32 bound is no looser than auto's, docs/algorithms.md) and caches the fastest; later calls with the same key
use it without timing.  Off (the default), ``"auto"`` picks by a fixed rule.

    xpconv.set_autotune(True)            # on for the process; None: follow $XPCONV_AUTOTUNE again
    with xpconv.autotune():              # on inside the block only
        y = xpconv.conv2d(x, w, padding=1)
    xpconv.autotune_choices()            # {key: algorithm} chosen so far

``XPCONV_AUTOTUNE=1`` (or true/yes/on; 0/false/no/off or empty: off) turns it on when :func:`set_autotune` has not
been called; it is read at each call.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["set_autotune", "autotune_enabled", "autotune", "autotune_choices", "clear_autotune_cache",
           "tuned_choice", "TIMED_REPEATS"]

_VARIABLE = "XPCONV_AUTOTUNE"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
TIMED_REPEATS = 2                   # timed forward+backward steps per candidate, after one untimed; the least counts
_state: dict[str, bool | None] = {"enabled": None}       # None: follow the environment variable
_cache: dict[Hashable, str] = {}


def set_autotune(enabled: bool | None) -> None:
    """Turn auto-tuning on or off for this process; None hands the choice back to ``$XPCONV_AUTOTUNE``."""
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"set_autotune takes True, False or None, got {enabled!r}")
    _state["enabled"] = enabled


def autotune_enabled() -> bool:
    """Whether ``algorithm="auto"`` is timed now: :func:`set_autotune`'s value, else ``$XPCONV_AUTOTUNE``'s
    (ValueError naming the variable when it is not a yes/no word)."""
    if _state["enabled"] is not None:
        return bool(_state["enabled"])
    text = os.environ.get(_VARIABLE, "").strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"{_VARIABLE} must be one of {', '.join(_TRUE + _FALSE[1:])} (or empty), got {text!r}")


@contextmanager
def autotune(enabled: bool = True) -> Iterator[None]:
    """Auto-tuning on (or off) inside a ``with`` block; the previous setting comes back after it."""
    before = _state["enabled"]
    set_autotune(enabled)
    try:
        yield
    finally:
        _state["enabled"] = before


def autotune_choices() -> dict[Hashable, str]:
    """A copy of the cache: key (library, device, dtype, x shape, weight shape (both batched, channels-first),
    geometry, workspace cap) -> the algorithm chosen for it."""
    return dict(_cache)


def clear_autotune_cache() -> None:
    """Forget every choice: the next call of each key times again."""
    _cache.clear()


def tuned_choice(key: Hashable, candidates: list[str], step: Callable[[str], object], backend: Any) -> str:
    """The cached choice for ``key``, else the candidate whose ``step(name)`` (forward+backward) is fastest on
    ``backend``'s clock (:meth:`~xpconv.backends.Backend.times`: the device's time on a GPU, after a synchronize),
    cached.  A candidate that raises ValueError or MemoryError (a workspace cap below one sample) is left out;
    with none left the first candidate is returned uncached, so the real call raises its error."""
    if key in _cache:
        return _cache[key]
    if len(candidates) == 1:
        _cache[key] = candidates[0]
        return candidates[0]
    best: tuple[float, str] | None = None
    for name in candidates:
        try:
            seconds = min(backend.times(lambda name=name: step(name), TIMED_REPEATS, 1))
        except (ValueError, MemoryError):
            continue
        if best is None or seconds < best[0]:
            best = (seconds, name)
    if best is None:
        return candidates[0]
    _cache[key] = best[1]
    return best[1]
