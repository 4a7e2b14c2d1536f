"""Where a model's training step goes on NumPy: forward and backward time per layer type (convolutions by shape).

    python benchmarks/profile_step.py --model resnet20 --batch-size 128 --threads 1 --steps 3

Every leaf layer's ``forward`` and ``backward`` is wrapped with a clock (this process's CPU time with one thread,
wall time with more); the table gives ms per step and the share of the step, largest first, after one warm-up
step.  The wrappers cost a few microseconds a call.
"""
from __future__ import annotations

import argparse
import collections
import time

import numpy as np
from threadpoolctl import threadpool_limits

from xpconv import nn
from xpconv.allocator import keep_freed_memory
from xpconv.models import MODELS, build_model, input_shape
from xpconv.optim import SGD


def _key(layer) -> str:
    name = type(layer).__name__
    if name.startswith("Conv"):
        return f"{name} {layer.in_channels}->{layer.out_channels} k{layer.kernel_size} s{layer.stride}"
    return name


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20", choices=sorted(MODELS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    keep_freed_memory()
    clock = time.process_time if args.threads == 1 else time.perf_counter
    spent: collections.Counter[tuple[str, str]] = collections.Counter()
    arch = MODELS[args.model](num_classes=10).arch
    model = build_model(arch, backend="numpy")

    def timed(layer, what: str):
        inner = getattr(layer, what)

        def run(a):
            start = clock()
            out = inner(a)
            spent[_key(layer), what] += clock() - start
            return out
        setattr(layer, what, run)

    for _, layer in model._named_modules():
        if not layer._modules:
            timed(layer, "forward")
            timed(layer, "backward")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch_size, *input_shape(arch)), dtype=np.float32)
    labels = rng.integers(0, 10, args.batch_size)
    optimizer, loss_fn = SGD(model.parameters(), lr=0.01, momentum=0.9), nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad()
        loss_fn(model(x), labels)
        model.backward(loss_fn.backward())
        optimizer.step()

    with threadpool_limits(args.threads):
        step()
        spent.clear()
        steps = []
        for _ in range(args.steps):
            start = clock()
            step()
            steps.append(clock() - start)
    total = sum(steps)
    print(f"{args.model}, batch {args.batch_size}, {args.threads} thread(s), "
          f"{'CPU' if args.threads == 1 else 'wall'} time: steps {', '.join(f'{t * 1e3:.0f}' for t in steps)} ms")
    print("| layer | pass | ms per step | share |\n|---|---|---:|---:|")
    for (name, what), t in spent.most_common():
        print(f"| {name} | {what} | {t / args.steps * 1e3:.1f} | {t / total:.1%} |")
    rest = total - sum(spent.values())
    print(f"| everything else (loss, optimizer, containers) | | {rest / args.steps * 1e3:.1f} | {rest / total:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
