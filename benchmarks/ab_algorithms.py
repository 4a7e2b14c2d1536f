"""Time convolution algorithms side by side, interleaved, on the suite's layers or custom ones.

    python benchmarks/ab_algorithms.py --threads 2 --rounds 7                          # im2col vs winograd, 3x3
    python benchmarks/ab_algorithms.py --algorithms im2col,fft --layers "2d-k5-64;32,32,32x32,32,5,1,2"
    python benchmarks/ab_algorithms.py --layers resnet20 --algorithms im2col,winograd,winograd4x4

``xpconv bench --algorithms im2col,winograd`` times one algorithm after the other; on a shared machine
the load can change between them.  Here every round times one forward and one forward+backward call of
each algorithm in turn (through ``nn.Conv1d/2d/3d``, float32, NumPy), after one untimed round, and the medians
(or minima: ``--statistic min``) over the rounds are printed with the ratio of each algorithm to the first (below 1:
faster than the first).
The default layers are the suite's 2-D 3x3 stride-1 ones; ``--layers`` takes what ``xpconv bench --layers`` does,
or ``resnet20``: ResNet-20's 3x3 stride-1 convolutions at batch 128 (16, 32, 64 channels on 32x32, 16x16, 8x8).
It ends with the BLAS ``threadpoolctl`` reports (which library, kernels and threads ran).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from xpconv import nn
from xpconv.bench.suite import SUITE, Layer, select_layers

RESNET20 = [Layer(f"resnet20-c{c}-{s}", 128, c, (s, s), c, 3, 1, 1) for c, s in ((16, 32), (32, 16), (64, 8))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--algorithms", default="im2col,winograd", help="comma-separated; ratios are to the first")
    parser.add_argument("--layers", default=None,
                        help="as xpconv bench --layers, or resnet20 (default: the suite's 2-D 3x3 stride-1 ones)")
    parser.add_argument("--statistic", choices=("median", "min"), default="median",
                        help="over the rounds; min discards the time other processes took on a loaded machine")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this process's CPU time (all its threads), which waiting for a loaded CPU does not "
                             "count; with --threads 1 it is the work done")
    args = parser.parse_args(argv)
    algorithms = args.algorithms.split(",")
    if args.layers == "resnet20":
        layers = RESNET20
    else:
        layers = (select_layers(args.layers) if args.layers else
                  [s for s in SUITE if s.nd == 2 and s.k == 3 and s.stride == 1])
    rng = np.random.default_rng(0)
    first, others = algorithms[0], algorithms[1:]
    head = [f"{a} {part} ms" for part in ("fwd", "fwd+bwd") for a in algorithms]
    ratios = [f"{a}/{first} {part}" for part in ("fwd", "fwd+bwd") for a in others]
    print("| layer | (N,C,S,O,k,s,p) | " + " | ".join(head + ratios) + " |")
    print("|---|---|" + "---:|" * (len(head) + len(ratios)))
    with threadpool_limits(args.threads):
        for layer in layers:
            x = rng.standard_normal(layer.x_shape, dtype=np.float32)
            dy = rng.standard_normal(layer.y_shape, dtype=np.float32)
            cls = getattr(nn, f"Conv{layer.nd}d")
            convs = {a: cls(layer.c, layer.o, layer.k, stride=layer.stride, padding=layer.pad, groups=layer.groups,
                            seed=0, algorithm=a) for a in algorithms}
            try:
                for conv in convs.values():
                    conv(x)
            except ValueError as exc:                    # e.g. FFT's kernel transform over the workspace cap
                print(f"| {layer.name} | {layer.spec()} | skipped: {exc} |", flush=True)
                continue
            clock = time.perf_counter if args.clock == "wall" else time.process_time
            times: dict[tuple[str, str], list[float]] = {}
            for r in range(args.rounds + 1):
                for a, conv in convs.items():
                    start = clock()
                    conv(x)
                    mid = clock()
                    conv.backward(dy)
                    end = clock()
                    if r:
                        times.setdefault((a, "fwd"), []).append(mid - start)
                        times.setdefault((a, "step"), []).append(end - start)
            stat = statistics.median if args.statistic == "median" else min
            med = {k: stat(v) * 1e3 for k, v in times.items()}
            cells = [f"{med[a, part]:.1f}" for part in ("fwd", "step") for a in algorithms]
            cells += [f"{med[a, part] / med[first, part]:.2f}" for part in ("fwd", "step") for a in others]
            print(f"| {layer.name} | {layer.spec()} | " + " | ".join(cells) + " |", flush=True)
        for pool in threadpool_info():
            print(f"# {pool.get('internal_api')} {pool.get('version')} {pool.get('architecture')} "
                  f"threads={pool.get('num_threads')} {pool.get('filepath')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
