"""Type aliases for xpconv's annotations.

The Python Array API has no static types that NumPy, CuPy, PyTorch and array-api-strict arrays all
satisfy (array-api-compat ships none), so to a type checker an array is ``Any``; the alias names the intent.
"""
from __future__ import annotations

from typing import Any, TypeAlias

__all__ = ["Array", "Device"]

Array: TypeAlias = Any
"""An array of any supported library (NumPy, CuPy, torch, array-api-strict)."""

Device: TypeAlias = Any
"""A device as its library names it, or as xpconv accepts it: a GPU index, ``"cuda:N"``, ``"cpu"``."""
