"""A model's training step on NumPy with and without ``xpconv.allocator.keep_freed_memory``, each in a fresh
process (malloc's policy is per process), alternating.

    python benchmarks/ab_allocator.py --model resnet20 --batch-size 128 --threads 1 --rounds 2

Each run builds the model, takes one untimed step, then times ``--steps`` steps: the median CPU time of this
process per step (other jobs on a shared machine disturb it less than wall time), and the minor page faults and
system time of those steps.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _child(args) -> dict:
    import numpy as np
    from threadpoolctl import threadpool_limits

    from xpconv import nn
    from xpconv.allocator import keep_freed_memory
    from xpconv.models import MODELS, input_shape
    from xpconv.optim import SGD

    kept = keep_freed_memory() if args.keep else None
    model = MODELS[args.model](num_classes=10)
    opt, loss_fn = SGD(model.parameters(), lr=0.01, momentum=0.9), nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch_size, *input_shape(model.arch)), dtype=np.float32)
    y = rng.integers(0, 10, args.batch_size)

    def step():
        opt.zero_grad()
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward())
        opt.step()

    with threadpool_limits(args.threads):
        step()
        before, times = resource.getrusage(resource.RUSAGE_SELF), []
        for _ in range(args.steps):
            start = time.process_time()
            step()
            times.append(time.process_time() - start)
        after = resource.getrusage(resource.RUSAGE_SELF)
    return {"kept": kept, "step_ms": statistics.median(times) * 1e3,
            "faults_per_step": (after.ru_minflt - before.ru_minflt) / args.steps,
            "system_ms_per_step": (after.ru_stime - before.ru_stime) * 1e3 / args.steps}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)       # the child's switch
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args)))
        return 0
    common = ["--model", args.model, "--batch-size", str(args.batch_size), "--threads", str(args.threads),
              "--steps", str(args.steps), "--child"]
    print(f"{args.model}, batch {args.batch_size}, {args.threads} thread(s), CPU time per step (median of "
          f"{args.steps}), each run a fresh process\n")
    print("| round | allocator | step ms | minor faults / step | system ms / step |\n|---|---|---:|---:|---:|")
    for r in range(1, args.rounds + 1):
        for keep in (False, True):
            out = subprocess.run([sys.executable, __file__, *common, *(["--keep"] if keep else [])],
                                 capture_output=True, text=True, check=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            label = "default" if not keep else f"keep_freed_memory ({'applied' if res['kept'] else 'not glibc'})"
            print(f"| {r} | {label} | {res['step_ms']:.0f} | {res['faults_per_step']:.0f} | "
                  f"{res['system_ms_per_step']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
