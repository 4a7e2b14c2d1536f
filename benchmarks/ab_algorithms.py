"""Time im2col against another convolution algorithm side by side, interleaved, on the layers it can compute.

    python benchmarks/ab_algorithms.py --threads 2 --rounds 7                       # winograd, suite's 3x3 layers
    python benchmarks/ab_algorithms.py --algorithm direct --layers "2d-dw-32;32,32,112x112,32,3,1,1,32"

``xpconv bench --algorithms im2col,winograd`` times one algorithm after the other; on a shared machine
the load can change between them.  Here every round times one forward and one forward+backward call of
each algorithm in turn (through ``nn.Conv{1,2,3}d``, float32, NumPy), after one untimed round, and the medians
over the rounds are printed with the ratio algorithm / im2col (below 1: the other algorithm is faster).
``--layers`` takes what ``xpconv bench --layers`` takes (default: every suite layer the algorithm can compute).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from xpconv import nn
from xpconv._ops import ALGORITHMS
from xpconv.bench.runners import make_runner
from xpconv.bench.suite import select_layers


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm", choices=[a for a in ALGORITHMS if a not in ("auto", "im2col")],
                        default="winograd", help="the algorithm timed against im2col (default winograd)")
    parser.add_argument("--layers", default="all", help="as xpconv bench --layers (default all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    other = args.algorithm
    computes = make_runner("numpy", algorithm=other).runs
    layers = [layer for layer in select_layers(args.layers) if computes(layer)]
    rng = np.random.default_rng(0)
    print(f"| layer | (N,C,S,O,k,s,p) | im2col fwd ms | {other} fwd ms | ratio | im2col fwd+bwd ms "
          f"| {other} fwd+bwd ms | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    with threadpool_limits(args.threads):
        for layer in layers:
            x = rng.standard_normal(layer.x_shape, dtype=np.float32)
            dy = rng.standard_normal(layer.y_shape, dtype=np.float32)
            kind = getattr(nn, f"Conv{layer.nd}d")
            convs = {a: kind(layer.c, layer.o, layer.k, stride=layer.stride, padding=layer.pad, groups=layer.groups,
                             seed=0, algorithm=a) for a in ("im2col", other)}
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
                cells += [f"{med['im2col', part]:.1f}", f"{med[other, part]:.1f}",
                          f"{med[other, part] / med['im2col', part]:.2f}"]
            print(f"| {layer.name} | {layer.spec()} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
