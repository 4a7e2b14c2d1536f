"""Time each convolution algorithm side by side, interleaved, on the suite's 2-D 3x3 stride-1 layers.

    python benchmarks/ab_algorithms.py --threads 2 --rounds 7

``xpconv bench --algorithms im2col,winograd`` times one algorithm after the other; on a shared machine
the load can change between them.  Here every round times one forward and one forward+backward call of
each algorithm in turn (through ``nn.Conv2d``, float32, NumPy), after one untimed round, and the medians
over the rounds are printed with the ratio winograd / im2col (below 1: Winograd is faster).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from xpconv import nn
from xpconv.bench.suite import SUITE

ALGORITHMS = ("im2col", "winograd")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    layers = [s for s in SUITE if s.nd == 2 and s.k == 3 and s.stride == 1]
    rng = np.random.default_rng(0)
    print("| layer | (N,C,S,O,k,s,p) | im2col fwd ms | winograd fwd ms | ratio | im2col fwd+bwd ms "
          "| winograd fwd+bwd ms | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    with threadpool_limits(args.threads):
        for layer in layers:
            x = rng.standard_normal(layer.x_shape, dtype=np.float32)
            dy = rng.standard_normal(layer.y_shape, dtype=np.float32)
            convs = {a: nn.Conv2d(layer.c, layer.o, 3, padding=layer.pad, groups=layer.groups, seed=0, algorithm=a)
                     for a in ALGORITHMS}
            times: dict[tuple[str, str], list[float]] = {}
            for r in range(args.rounds + 1):
                for a, conv in convs.items():
                    start = time.perf_counter()
                    conv(x)
                    mid = time.perf_counter()
                    conv.backward(dy)
                    end = time.perf_counter()
                    if r:
                        times.setdefault((a, "fwd"), []).append(mid - start)
                        times.setdefault((a, "step"), []).append(end - start)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            cells = []
            for part in ("fwd", "step"):
                cells += [f"{med['im2col', part]:.1f}", f"{med['winograd', part]:.1f}",
                          f"{med['winograd', part] / med['im2col', part]:.2f}"]
            print(f"| {layer.name} | {layer.spec()} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
