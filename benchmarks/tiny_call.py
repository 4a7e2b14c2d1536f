"""The cost of one small layer call: ``nn.Conv2d`` forward + backward against ``torch.nn.Conv2d`` with autograd.

    python benchmarks/tiny_call.py --channels 4 --size 8 --rounds 7

A 4->4-channel 3x3 convolution of a 1x4x8x8 input does almost no arithmetic, so its time is the Python and the
array operations per call (issue 14's "less Python per call", target: at most 2x torch's time).  Both run one
thread; the rounds alternate the two and each round times ``--calls`` calls, so a busy machine slows both.
The report gives the median round of each, in wall time and in this process's CPU time (which other jobs on
the machine disturb less).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--algorithm", default="auto", help="the xpconv layer's algorithm (default: auto)")
    args = parser.parse_args(argv)
    import torch

    from xpconv import nn

    torch.set_num_threads(1)
    c, s = args.channels, args.size
    x = np.random.default_rng(0).standard_normal((1, c, s, s), dtype=np.float32)
    layer = nn.Conv2d(c, c, 3, padding=1, seed=0, algorithm=args.algorithm)
    grad = np.ones((1, c, s, s), dtype=np.float32)
    ref = torch.nn.Conv2d(c, c, 3, padding=1)
    tx, tgrad = torch.from_numpy(x).requires_grad_(), torch.from_numpy(grad)

    def xpconv_call():
        layer.forward(x)
        layer.backward(grad)

    def torch_call():
        ref(tx).backward(tgrad)

    calls = {"xpconv nn.Conv2d": xpconv_call, "torch nn.Conv2d": torch_call}
    wall: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    with threadpool_limits(1):
        for f in calls.values():
            for _ in range(50):
                f()
        for _ in range(args.rounds):
            for name, f in calls.items():
                w, p = time.perf_counter(), time.process_time()
                for _ in range(args.calls):
                    f()
                wall[name].append((time.perf_counter() - w) / args.calls)
                cpu[name].append((time.process_time() - p) / args.calls)
    print(f"forward + backward of a {c}->{c}-channel 3x3 convolution on 1x{c}x{s}x{s}, one thread, median of "
          f"{args.rounds} rounds of {args.calls} calls")
    print("| call | wall µs | CPU µs |\n|---|---|---|")
    for name in calls:
        print(f"| {name} | {statistics.median(wall[name]) * 1e6:.1f} | {statistics.median(cpu[name]) * 1e6:.1f} |")
    names = list(calls)
    print(f"ratio xpconv / torch: wall {statistics.median(wall[names[0]]) / statistics.median(wall[names[1]]):.2f}x, "
          f"CPU {statistics.median(cpu[names[0]]) / statistics.median(cpu[names[1]]):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
