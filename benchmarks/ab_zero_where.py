"""``where(cond, 0, a)``, NumPy's fast path against the portable ``where``: the op of a ReLU's backward.

    python benchmarks/ab_zero_where.py --shape 128 16 32 32 --rounds 7

``xpconv.backends.Backend.zero_where`` (``xp.where``) and ``NumpyBackend.zero_where`` (a bitwise AND) on a
random mask of ``--fraction`` True entries; the rounds alternate the two, one thread, median of this process's
CPU time per call.  ``--fraction 0`` and ``1`` give the masks whose branches a CPU predicts.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from xpconv.backends import Backend, NumpyBackend


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[128, 16, 32, 32])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--fraction", type=float, default=0.5, help="share of entries set to zero")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    a = rng.standard_normal(args.shape).astype(args.dtype)
    cond = rng.random(args.shape) < args.fraction
    ways = {"portable where": Backend.zero_where, "numpy bitwise": NumpyBackend.zero_where}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, fn in ways.items():
            start = time.process_time()
            for _ in range(args.calls):
                fn(cond, a)
            times[name].append((time.process_time() - start) / args.calls)
    base = statistics.median(times["portable where"])
    print(f"shape {tuple(args.shape)} {args.dtype}, {args.fraction:.0%} zeroed, median CPU ms per call:")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"  {name:15s} {t * 1e3:7.2f} ms   {base / t:5.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
