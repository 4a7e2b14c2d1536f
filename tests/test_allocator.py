"""xpconv.allocator: freed blocks are reused instead of being faulted back in (glibc on Linux)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from xpconv.allocator import keep_freed_memory

# Allocates, writes and frees arrays of 4-24 MiB, the sizes of a training step's activations, five times over,
# and prints the minor page faults of the last four rounds.
_PROBE = """
import resource, sys, numpy as np
from xpconv.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
sizes = [n << 20 for n in (4, 8, 16, 24, 12)]
def rounds(k):
    for _ in range(k):
        for n in sizes:
            x = np.ones(n // 4, np.float32); y = x * 2; del x, y
rounds(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(4)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True).stdout
    kept, faults = out.split()
    return kept, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_kept_memory_is_reused_without_page_faults():
    kept, with_kept = _faults("keep")
    if kept != "True":
        pytest.skip("the C library is not glibc (mallopt refused)")
    _, default = _faults("default")
    assert with_kept < 200, with_kept                          # 4 rounds of 64 MiB would be 65,536 pages
    assert default > 10 * with_kept, (default, with_kept)      # glibc's default policy faults them back in


def test_trim_bytes_is_checked():
    with pytest.raises(ValueError, match="trim_bytes"):
        keep_freed_memory(-1)
    with pytest.raises(ValueError, match="C int"):
        keep_freed_memory(2**31)
