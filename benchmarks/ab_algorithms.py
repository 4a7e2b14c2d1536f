"""Time each convolution algorithm side by side, interleaved, on 2-D 3x3 stride-1 layers.

    python benchmarks/ab_algorithms.py --threads 2 --rounds 5
    python benchmarks/ab_algorithms.py --layers resnet20 --algorithms im2col,winograd,winograd4x4

``xpconv bench --algorithms ...`` times one algorithm after the other; on a shared machine the load can change
between them.  Here every round times one forward and one forward+backward call of each algorithm in turn
(through ``nn.Conv2d``, float32, NumPy), after one untimed round, and prints the medians over the rounds with
each algorithm's ratio to the first one (below 1: faster), and the BLAS kernels that ran (threadpoolctl).
Layers: ``suite`` (the suite's 2-D 3x3 stride-1 layers), ``resnet20`` (its 3x3 stride-1 convolutions at batch
128: 16, 32, 64 channels on 32x32, 16x16, 8x8), or both (``suite,resnet20``, the default).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from xpconv import nn
from xpconv.bench.suite import SUITE, Layer

RESNET20 = [Layer(f"resnet20-c{c}-{s}", 128, c, (s, s), c, 3, 1, 1) for c, s in ((16, 32), (32, 16), (64, 8))]
LAYERS = {"suite": [s for s in SUITE if s.nd == 2 and s.k == 3 and s.stride == 1], "resnet20": RESNET20}


def _blas_kernels() -> str:
    return "; ".join(f"{p.get('internal_api')} {p.get('version')} ({p.get('architecture')} kernels, "
                     f"{p.get('num_threads')} threads)" for p in threadpool_info() if p.get("user_api") == "blas")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--algorithms", default="im2col,winograd,winograd4x4")
    parser.add_argument("--layers", default="suite,resnet20")
    args = parser.parse_args(argv)
    algorithms = args.algorithms.split(",")
    layers = [layer for part in args.layers.split(",") for layer in LAYERS[part]]
    rng = np.random.default_rng(0)
    with threadpool_limits(args.threads):
        print(f"BLAS: {_blas_kernels()}")
        first = algorithms[0]
        heads = [f"{a} {part} ms" + ("" if a == first else " | ratio") for part in ("fwd", "fwd+bwd")
                 for a in algorithms]
        print("| layer | (N,C,S,O,k,s,p) | " + " | ".join(heads) + " |")
        print("|---|---|" + "---:|" * sum(h.count("|") + 1 for h in heads))
        for layer in layers:
            x = rng.standard_normal(layer.x_shape, dtype=np.float32)
            dy = rng.standard_normal(layer.y_shape, dtype=np.float32)
            convs = {a: nn.Conv2d(layer.c, layer.o, 3, padding=layer.pad, groups=layer.groups, seed=0, algorithm=a)
                     for a in algorithms}
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
                for a in algorithms:
                    cells.append(f"{med[a, part]:.1f}")
                    if a != first:
                        cells.append(f"{med[a, part] / med[first, part]:.2f}")
            print(f"| {layer.name} | {layer.spec()} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
