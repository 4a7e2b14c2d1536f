"""A model's training step on NumPy under the engine's two GEMM policies, alternating in one process.

    python benchmarks/ab_gemm_policy.py --model resnet20 --batch-size 128 --threads 2 --rounds 3

Per sample (the CPU's default: one BLAS call per sample) against the batch inside one GEMM per chunk
(``Backend.batch_inner_gemm``, a GPU's default); the rounds alternate the two, so a busy machine slows both.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from xpconv.backends import Backend
from xpconv.bench.driver import make_runners
from xpconv.bench.model_step import _xpconv_step
from xpconv.models import MODELS, input_shape


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20", choices=sorted(MODELS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    runner = make_runners(["numpy"], "cpu")[0][0]
    arch = MODELS[args.model](num_classes=10).arch
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch_size, *input_shape(arch)), dtype=np.float32)
    labels = rng.integers(0, 10, args.batch_size)
    default = Backend.batch_inner_gemm
    times: dict[bool, list[float]] = {False: [], True: []}
    try:
        with threadpool_limits(args.threads):
            steps = {}
            for policy in times:
                Backend.batch_inner_gemm = property(lambda self, p=policy: p)   # type: ignore[method-assign]
                steps[policy] = _xpconv_step(runner, arch, x, labels)
                steps[policy]()                                                   # warm-up
            for _ in range(args.rounds):
                for policy, step in steps.items():
                    Backend.batch_inner_gemm = property(lambda self, p=policy: p)  # type: ignore[method-assign]
                    start = time.perf_counter()
                    step()
                    times[policy].append(time.perf_counter() - start)
    finally:
        Backend.batch_inner_gemm = default                                         # type: ignore[method-assign]
    for policy, ts in times.items():
        median = statistics.median(ts)
        print(f"{'batch inside' if policy else 'per sample  '}: {median * 1e3:7.0f} ms/step  "
              f"{args.batch_size / median:6.1f} images/s  (rounds: {', '.join(f'{t * 1e3:.0f}' for t in ts)} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
