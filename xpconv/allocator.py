"""The C allocator's policy for a training or benchmark process: keep freed memory for the next step.

A training step allocates and frees the same large arrays (activations, columns, gradients) every step.
glibc's malloc gives blocks above its mmap threshold back to the system when they are freed and trims the
heap above its trim threshold, so each step pays page faults to get the memory back: 17,000-21,000 minor
faults and 0.1-0.24 s of system time per ResNet-20 step at batch 64-128 on NumPy, 15-20% of the step
(docs/benchmarks.md).  :func:`keep_freed_memory` raises both thresholds, as ``GLIBC_TUNABLES`` can, so freed
blocks up to 32 MiB are reused instead.  ``xpconv train`` and ``xpconv bench`` call it; a script of one's own
can too.  The process keeps up to ``trim_bytes`` of freed memory it would otherwise have returned.
"""
from __future__ import annotations

import ctypes
import sys

from .validation import check_int

__all__ = ["keep_freed_memory", "MMAP_THRESHOLD_BYTES", "TRIM_THRESHOLD_BYTES"]

MMAP_THRESHOLD_BYTES = 32 * 2**20       # glibc's largest mmap threshold on 64-bit machines
TRIM_THRESHOLD_BYTES = 2**30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_INT_MAX = 2**31 - 1


def keep_freed_memory(trim_bytes: int = TRIM_THRESHOLD_BYTES) -> bool:
    """Ask glibc's malloc to serve blocks up to 32 MiB from its heap and to keep up to ``trim_bytes`` freed;
    True when it did, False where the C library is not glibc (macOS, Windows, musl): nothing changes there."""
    trim_bytes = check_int("trim_bytes", trim_bytes, 0)
    if trim_bytes > _INT_MAX:
        raise ValueError(f"trim_bytes must be at most {_INT_MAX} (a C int), got {trim_bytes}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and mallopt(_M_TRIM_THRESHOLD, trim_bytes))
