"""Argument checks shared by the whole library: one way to say "a positive int", "a number in [a, b]", ...

Every check accepts what PyTorch accepts: Python numbers and NumPy scalars (``np.int64(3)``,
``np.float32(0.1)``), never ``bool``.  It returns a plain Python ``int``/``float``/tuple, or raises a
``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, wrong value) that names the argument.
"""
from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["check_int", "positive_int", "non_negative_int", "int_tuple", "check_real", "positive_real", "cli_type"]

_T = TypeVar("_T")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an ``int`` (>= ``minimum`` when given); ValueError naming ``name`` otherwise."""
    if not _is_int(value) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else (" positive" if minimum == 1 else f" >= {minimum}")
        raise ValueError(f"{name} must be a{bound} int, got {value!r}")
    return int(value)


def positive_int(name: str, value: Any) -> int:
    """``value`` as an ``int`` >= 1; ValueError naming ``name`` otherwise."""
    return check_int(name, value, 1)


def non_negative_int(name: str, value: Any) -> int:
    """``value`` as an ``int`` >= 0; ValueError naming ``name`` otherwise."""
    return check_int(name, value, 0)


def int_tuple(name: str, value: Any, nd: int, minimum: int) -> tuple[int, ...]:
    """An int (repeated ``nd`` times) or a tuple/list of ``nd`` ints, each >= ``minimum``, as a tuple.

    ``kernel_size``, ``stride``, ``padding``, ``dilation`` and ``output_padding`` are all read this way.
    """
    values = (value,) * nd if _is_int(value) else value
    if not isinstance(values, (tuple, list)) or len(values) != nd:
        raise ValueError(f"{name} must be an int or a tuple of {nd} ints, got {value!r}")
    for v in values:
        if not _is_int(v):
            raise TypeError(f"{name} must contain ints, got {value!r}")
        if v < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return tuple(int(v) for v in values)


def check_real(name: str, value: Any, low: float = -math.inf, high: float = math.inf, *,
               low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a ``float`` inside the interval from ``low`` to ``high`` (each end closed unless ``*_open``).

    TypeError when it is not a real number (``bool`` included); ValueError, naming the interval, when it
    is outside it or NaN.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must lie in {interval}, got {value}")
    return value


def positive_real(name: str, value: Any) -> float:
    """``value`` as a ``float`` > 0."""
    return check_real(name, value, 0.0, low_open=True)


def cli_type(check: Callable[[str, Any], _T], parse: Callable[[str], Any] = int) -> Callable[[str], _T]:
    """An argparse ``type=`` that parses the text with ``parse`` and validates it with ``check``.

    ``type=cli_type(positive_int)`` turns ``--epochs 0`` into argparse's one-line usage error.
    """
    def convert(text: str) -> _T:
        try:
            return check("value", parse(text))
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc).replace("value ", "", 1)) from None

    convert.__name__ = check.__name__.replace("_", " ")
    return convert
