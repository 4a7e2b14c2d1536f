"""A model's training step on NumPy with the engine's chunks on threads or not, alternating in one process.

    python benchmarks/ab_unit_threads.py --model resnet20 --batch-size 128 --threads 2 --rounds 5

Three ways, the rounds alternating so a busy machine slows all of them: ``--threads`` BLAS threads with the
chunks one after the other (each GEMM on the BLAS threads: the engine before ``Backend.unit_map``), the same
threads with the chunks on them (``NumpyBackend.unit_map``, each chunk's GEMMs on one BLAS thread: the default),
and one thread.  Wall time per step, median of the rounds.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from xpconv.allocator import keep_freed_memory
from xpconv.backends import NumpyBackend
from xpconv.bench.driver import make_runners
from xpconv.bench.model_step import _xpconv_step
from xpconv.models import MODELS, input_shape


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20", choices=sorted(MODELS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    keep_freed_memory()
    runner = make_runners(["numpy"], "cpu")[0][0]
    arch = MODELS[args.model](num_classes=10).arch
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch_size, *input_shape(arch)), dtype=np.float32)
    labels = rng.integers(0, 10, args.batch_size)
    default = NumpyBackend.unit_map
    ways = {f"{args.threads} threads, chunks in turn": (args.threads, False),
            f"{args.threads} threads, chunks on them": (args.threads, True),
            "1 thread": (1, False)}
    step = _xpconv_step(runner, arch, x, labels)
    times: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for round_ in range(args.rounds + 1):                                # the first round warms up
            for name, (threads, on) in ways.items():
                NumpyBackend.unit_map = default if on else property(lambda self: None)  # type: ignore[method-assign]
                with threadpool_limits(threads):
                    start = time.perf_counter()
                    step()
                    if round_:
                        times[name].append(time.perf_counter() - start)
    finally:
        NumpyBackend.unit_map = default                                      # type: ignore[method-assign]
    for name, ts in times.items():
        median = statistics.median(ts)
        print(f"{name:28s} {median * 1e3:7.0f} ms/step  {args.batch_size / median:6.1f} images/s  "
              f"(rounds: {', '.join(f'{t * 1e3:.0f}' for t in ts)} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
