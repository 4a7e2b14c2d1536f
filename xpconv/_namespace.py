"""The Array API namespace of arrays, looked up once per array type.

``array_api_compat.array_namespace`` inspects every argument on every call (several µs each on NumPy, two dozen
calls per convolution's forward and backward); the namespace depends only on the arrays' types, so
:func:`namespace` asks it once per type and remembers the answer.  Arrays of different types and non-arrays
go to ``array_namespace`` every time, so its errors are raised as it raises them.
"""
from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace

__all__ = ["namespace"]

_BY_TYPE: dict[type, Any] = {}


def namespace(*arrays: Any) -> Any:
    """The namespace of ``arrays`` (None entries skipped), as ``array_namespace`` gives it."""
    kind = None
    for a in arrays:
        if a is not None:
            if kind is None:
                kind = type(a)
            elif type(a) is not kind:
                return array_namespace(*(a for a in arrays if a is not None))
    xp = _BY_TYPE.get(kind)                                  # type: ignore[arg-type]
    if xp is None:
        xp = _BY_TYPE[kind] = array_namespace(*(a for a in arrays if a is not None))   # type: ignore[index]
    return xp
