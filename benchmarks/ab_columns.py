"""im2col's two ways on NumPy, side by side: one slice copy per kernel tap (the portable path) against one copy
of a strided view (``Backend.window_view``, NumPy's fast path), for the chunks the engine builds on ResNet-20's
3x3 layers and a tiny layer.

    python benchmarks/ab_columns.py --threads 1

Each line is the best of 7 rounds of this process's CPU time per call; both give the same bits
(tests/test_engine.py).
"""
from __future__ import annotations

import argparse
import time
import timeit

import numpy as np
from threadpoolctl import threadpool_limits

from xpconv._columns import column_layout
from xpconv._geometry import make_geometry
from xpconv.backends import get_backend

# (samples per chunk, channels, size): the engine's cache-sized chunks of ResNet-20's stages, and a tiny call
CHUNKS = ((1, 4, 8), (12, 16, 32), (22, 32, 16), (40, 64, 8))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    windows = get_backend("numpy").window_view
    geom = make_geometry((3, 3), 1, 1, 1, 1)
    print("| chunk (m, C, HxW) | slices µs | strided view µs | speed-up |\n|---|---|---|---|")
    with threadpool_limits(args.threads):
        for m, c, s in CHUNKS:
            x = np.random.default_rng(0).standard_normal((m, c, s, s), dtype=np.float32)
            layout = column_layout(geom, (s, s))
            times = []
            for win in (None, windows):
                n = max(5, 20_000 // (m * c * s * s // 64 + 1))
                best = min(timeit.repeat(lambda w=win, lay=layout, a=x: lay.columns(a, w), number=n, repeat=7,
                                         timer=time.process_time))
                times.append(best / n * 1e6)
            print(f"| ({m}, {c}, {s}x{s}) | {times[0]:.0f} | {times[1]:.0f} | {times[0] / times[1]:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
