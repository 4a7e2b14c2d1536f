"""``xpconv bench --model NAME``: images/s of a whole training step of a model, per backend and against torch.

One step is what :func:`xpconv.training.fit` does per batch: zero the gradients, forward, cross-entropy,
backward, SGD-with-momentum update.  Each xpconv backend runs the model built from one ``arch`` record
(same seed, same weights); ``torch-ref`` runs the same network as ``torch.nn`` modules with torch's
autograd and ``torch.optim.SGD``, built by :func:`torch_mirror` from the xpconv model and loaded with its
``state_dict()``; ``jax-ref`` runs it as a jitted JAX function (:mod:`xpconv.bench.jax_step`).  Times come
from each runner's :meth:`~xpconv.backends.Backend.times` (median after
warm-up; CUDA events on a GPU).
"""
from __future__ import annotations

import statistics
import sys
from collections import OrderedDict
from typing import Any

import numpy as np

from .. import nn
from ..models import MODELS, ZeroPadShortcut, build_model, input_shape
from ..optim import SGD

__all__ = ["torch_mirror", "bench_models", "model_table", "run_model"]

LR, MOMENTUM, NUM_CLASSES = 0.01, 0.9, 10


def torch_mirror(model: nn.Module):
    """The same network as ``torch.nn`` modules (CPU, model's dtype) holding ``model``'s parameters and buffers.

    Supports the layers the models of :mod:`xpconv.models` use; the ``state_dict()`` keys are the same,
    so the weights load without renaming.  Raises ValueError for a layer it cannot mirror.
    """
    import torch

    tnn = torch.nn

    class Residual(tnn.Module):
        def __init__(self, main, shortcut, activation):
            super().__init__()
            for name, layer in main:
                self.add_module(name, layer)
            self.main_names, self.shortcut, self.activation = [n for n, _ in main], shortcut, activation

        def forward(self, x):
            y = x
            for name in self.main_names:
                y = getattr(self, name)(y)
            y = y + (x if self.shortcut is None else self.shortcut(x))
            return y if self.activation is None else self.activation(y)

    class ZeroPad(tnn.Module):
        def __init__(self, m: ZeroPadShortcut):
            super().__init__()
            self.stride, self.low, self.high = m.stride, m.low, m.out_channels - m.in_channels - m.low

        def forward(self, x):
            s = self.stride
            return tnn.functional.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, self.low, self.high))

    def convert(m):
        children = [(name, convert(c)) for name, c in m._modules.items()]
        if isinstance(m, nn.Sequential):
            return tnn.Sequential(OrderedDict(children))
        if isinstance(m, nn.Residual):
            named = dict(children)
            return Residual([c for c in children if c[0] not in ("shortcut", "activation")],
                            named.get("shortcut"), named.get("activation"))
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            return tnn.Conv2d(m.in_channels, m.out_channels, (kh, kw), m.stride, m.padding, m.dilation, m.groups,
                              bias=m.bias is not None)
        if isinstance(m, nn.BatchNorm2d):
            return tnn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine)
        if isinstance(m, nn.Linear):
            return tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            return getattr(tnn, type(m).__name__)(m.kernel_size, m.stride, m.padding)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return tnn.AdaptiveAvgPool2d(m.output_size)
        if isinstance(m, nn.Flatten):
            return tnn.Flatten(m.start_dim, m.end_dim)
        if isinstance(m, nn.ReLU):
            return tnn.ReLU()
        if isinstance(m, ZeroPadShortcut):
            return ZeroPad(m)
        raise ValueError(f"no torch mirror for {type(m).__name__}")

    mirror = convert(model).to(getattr(torch, model.dtype_name))
    mirror.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    return mirror


def _xpconv_step(runner, arch, x, labels):
    """The training step of the model ``arch`` on an xpconv backend."""
    model = build_model(arch, backend=runner.backend)
    x, labels = runner.backend.asarray(x), runner.backend.asarray(labels)
    optimizer, loss_fn = SGD(model.parameters(), lr=LR, momentum=MOMENTUM), nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad()
        loss_fn(model(x), labels)
        model.backward(loss_fn.backward())
        optimizer.step()

    return step


def _torch_step(runner, arch, x, labels):
    """The same step in torch: its modules, autograd and ``torch.optim.SGD``."""
    import torch

    model = torch_mirror(build_model(arch, backend="numpy")).to(runner.backend.device).train()
    x, labels = runner.backend.asarray(x), runner.backend.asarray(labels)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

    def step():
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), labels).backward()
        optimizer.step()

    return step


def _jax_step(runner, arch, x, labels):
    """The same step in JAX (:mod:`xpconv.bench.jax_step`), every step waited for."""
    import jax

    from .jax_step import jax_mirror, jax_train_step

    params, state, apply = jax_mirror(build_model(arch, backend="numpy"))
    train = jax_train_step(apply, LR, MOMENTUM)
    x, labels = jax.device_put(x), jax.device_put(labels)
    held = [params, jax.tree.map(jax.numpy.zeros_like, params), state]

    def step():
        *held[:], _ = jax.block_until_ready(train(*held, x, labels))

    return step


def bench_models(runners, name: str, *, batch_size: int, steps: int, warmup: int, seed: int = 0) -> list[dict]:
    """One row per runner: median seconds per training step of model ``name``, images/s, ratio to torch-ref."""
    arch = MODELS[name](num_classes=NUM_CLASSES).arch
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size, *input_shape(arch)), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, batch_size)
    rows: list[dict[str, Any]] = []
    for runner in runners:
        make = {"torch-ref": _torch_step, "jax-ref": _jax_step}.get(runner.name, _xpconv_step)
        times = runner.times(make(runner, arch, x, labels), steps, warmup)
        step_s = statistics.median(times)
        rows.append({"model": name, "backend": runner.name, "device": runner.device, "batch_size": batch_size,
                     "step_s": step_s, "step_times": times, "images_per_s": batch_size / step_s})
    ref = next((r["step_s"] for r in rows if r["backend"] == "torch-ref"), None)
    for r in rows:
        r["ref_ratio"] = None if ref is None else r["step_s"] / ref
    return rows


def model_table(rows) -> str:
    """Markdown: one line per backend, step time, images/s and time relative to torch-ref (lower is faster)."""
    lines = ["| model | backend | device | batch | step ms | images/s | time / torch-ref |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        ratio = "-" if r["ref_ratio"] is None else f"{r['ref_ratio']:.2f}"
        lines.append(f"| {r['model']} | {r['backend']} | {r['device']} | {r['batch_size']} | "
                     f"{r['step_s'] * 1e3:.1f} | {r['images_per_s']:.1f} | {ratio} |")
    return "\n".join(lines)


def run_model(args, threads: int, xla_threads: str | None = None) -> int:
    """``xpconv bench --model``: the environment line, the table, skipped backends; ``--json`` as the suite.

    ``args`` are the bench command's; ``threads``: the BLAS/torch threads to set; ``xla_threads``: what
    :func:`~xpconv.bench.environment.set_xla_threads` set, reported where jax-ref runs.
    """
    from . import report
    from .driver import make_runners
    from .environment import collect_environment, coretype_note, set_tf32, set_threads

    runners, skipped = make_runners(args.backends, args.torch_device)
    if not runners:
        print("error: none of the requested backends can run here", file=sys.stderr)
        return 1
    set_tf32(args.tf32)
    limiter = set_threads(threads)
    env = collect_environment(args.torch_device)
    env["threads"], env["tf32"] = threads, args.tf32
    if any(r.name == "jax-ref" for r in runners):
        env["xla_threads"] = xla_threads
    if note := coretype_note():
        print(note, file=sys.stderr)
    try:
        rows = bench_models(runners, args.model, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                            seed=args.seed)
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
    print(report.environment_line(env))
    print()
    print(model_table(rows))
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    if args.json:
        report.write_json(args.json, {
            "environment": env,
            "config": {"model": args.model, "backends": args.backends, "batch_size": args.batch_size,
                       "steps": args.steps, "warmup": args.warmup, "threads": threads, "lr": LR,
                       "momentum": MOMENTUM, "torch_device": args.torch_device, "tf32": args.tf32},
            "results": rows, "skipped": skipped})
        print(f"wrote {args.json}", file=sys.stderr)
    return 0

