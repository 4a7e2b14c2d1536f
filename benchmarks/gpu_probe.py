"""The measurements of benchmarks/gpu_check.sh, one subcommand each, every result as one JSON file.

    python benchmarks/gpu_probe.py info     --out DIR        # device and versions
    python benchmarks/gpu_probe.py syncs    --out DIR        # waits for the GPU per phase of a training step
    python benchmarks/gpu_probe.py timing   --out DIR        # host (CPU) vs device (GPU) time: launch-bound?
    python benchmarks/gpu_probe.py accuracy --out DIR        # float32 vs float64 on benchmark-sized layers

Each runs on CuPy's GPU 0 (``--backend cupy``, the default) or any other xpconv backend.  ``--dry-run`` runs the
same code on the CPU at small sizes (default backend array_api_strict, whose host reads are counted like
CuPy's waits), so that tests/test_gpu_check.py checks the probe on a machine without a GPU.  What each figure
means: docs/gpu.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

import xpconv
from xpconv import nn
from xpconv.backends import Backend, available_backends, get_backend, to_numpy
from xpconv.bench.suite import SUITE, Layer
from xpconv.models import small_cnn
from xpconv.optim import Adam

PHASES = ("upload", "forward", "loss", "backward", "optimizer", "read")


# -- counting the host's waits ------------------------------------------------------------------------
@contextlib.contextmanager
def counting_waits(backend: Backend) -> Iterator[Counter[str] | None]:
    """A Counter of the host's waits for the device while the block runs, by entry point; None where this
    backend's waits cannot be counted (NumPy and torch on the CPU never wait)."""
    waits: Counter[str] = Counter()
    patches: list[tuple[object, str, object]] = []

    def count(owner: object, name: str) -> None:
        real = getattr(owner, name)

        def wait(*args, **kwargs):
            waits[name] += 1
            return real(*args, **kwargs)
        patches.append((owner, name, real))
        setattr(owner, name, wait)

    if backend.name == "cupy":
        import cupy

        for name in ("get", "item", "tolist"):              # float()/int()/bool() of an array go through get
            count(cupy.ndarray, name)
        count(cupy, "asnumpy")
        count(cupy.cuda.Stream, "synchronize")
        count(cupy.cuda.Device, "synchronize")
    elif backend.name == "array_api_strict":
        array_type = type(backend.xp.asarray(0))
        for name in ("__float__", "__int__", "__bool__", "__index__", "__dlpack__"):
            count(array_type, name)
    elif backend.name == "torch" and backend.is_gpu:
        import torch

        torch.cuda.set_sync_debug_mode("warn")
    try:
        if backend.name == "torch" and backend.is_gpu:
            import warnings

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield waits
            waits["synchronizing call"] += sum("synchroniz" in str(w.message) for w in caught)
        else:
            yield waits if patches else None
    finally:
        for owner, name, real in reversed(patches):
            setattr(owner, name, real)
        if backend.name == "torch" and backend.is_gpu:
            import torch

            torch.cuda.set_sync_debug_mode("default")


# -- what is measured ---------------------------------------------------------------------------------
def _step_setup(backend: Backend, dry_run: bool):
    """A CIFAR-sized small CNN step (batch 128, 3x32x32), or a tiny one for a dry run."""
    batch, size, channels = (8, 8, (4, 8)) if dry_run else (128, 32, (32, 64))
    rng = np.random.default_rng(0)
    x = rng.random((batch, 3, size, size), dtype=np.float32)
    y = rng.integers(0, 10, size=batch)
    model = small_cnn(3, 10, size, channels, backend=backend, seed=0)
    return model, nn.CrossEntropyLoss(), Adam(model.parameters(), lr=1e-3), x, y


def syncs(backend: Backend, dry_run: bool, steps: int = 5) -> dict:
    """Waits per phase of a training step (after a warm-up step), summed over ``steps`` steps, and the one
    read of the running loss at the end (what ``fit`` does once per logging interval)."""
    model, loss_fn, optimizer, x, y = _step_setup(backend, dry_run)
    per_phase: dict[str, int | None] = dict.fromkeys(PHASES, 0)
    total = None
    state: dict = {}                                   # what one phase hands the next
    phases: dict[str, Callable[[], object]] = {
        "upload": lambda: state.update(xb=backend.upload(x), yb=backend.upload(y)),
        "forward": lambda: state.update(logits=model(state["xb"])),
        "loss": lambda: state.update(loss=loss_fn.on_device(state["logits"], state["yb"])),
        "backward": lambda: (optimizer.zero_grad(), model.backward(loss_fn.backward())),
        "optimizer": optimizer.step,
    }
    with backend.activate():
        for step in range(steps + 1):
            for name, fn in phases.items():
                with counting_waits(backend) as waits:
                    fn()
                if step and per_phase[name] is not None:                  # step 0 warms up
                    per_phase[name] = None if waits is None else per_phase[name] + sum(waits.values())
            total = state["loss"] if total is None else total + state["loss"]
        with counting_waits(backend) as waits:
            loss = float(total) / (steps + 1)
        per_phase["read"] = None if waits is None else sum(waits.values())
    return {"steps": steps, "waits_per_phase": per_phase, "mean_loss": loss,
            "note": "waits summed over the steps; 'read' is the one read of the running loss after them"}


def _time(backend: Backend, fn: Callable[[], object], repeats: int) -> dict:
    """Host (CPU) and device (GPU) seconds per call: cupyx.profiler.benchmark on CuPy, wall clock elsewhere."""
    if backend.name == "cupy":
        from cupyx.profiler import benchmark

        with backend.activate():
            result = benchmark(fn, n_repeat=repeats, n_warmup=3)
        cpu, gpu = float(np.median(result.cpu_times)), float(np.median(result.gpu_times[0]))
    else:
        with backend.activate():
            fn()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                backend.synchronize()
                times.append(time.perf_counter() - start)
        cpu, gpu = float(np.median(times)), None
    verdict = None if gpu is None else ("launch-bound" if cpu >= 0.8 * gpu else "compute-bound")
    return {"cpu_s": cpu, "gpu_s": gpu, "cpu_over_gpu": None if gpu is None else cpu / gpu, "verdict": verdict}


def timing(backend: Backend, dry_run: bool) -> dict:
    """A training step of the small CNN, and forward+backward of the 64-channel benchmark layer."""
    model, loss_fn, optimizer, x, y = _step_setup(backend, dry_run)
    xb, yb = backend.asarray(x), backend.asarray(y)

    def step() -> None:
        loss_fn.on_device(model(xb), yb)
        optimizer.zero_grad()
        model.backward(loss_fn.backward())
        optimizer.step()

    layer_spec = _layer("2d-c64-32", dry_run)
    conv = nn.Conv2d(layer_spec.c, layer_spec.o, layer_spec.k, padding=layer_spec.pad, backend=backend, seed=0)
    rng = np.random.default_rng(0)
    lx = backend.asarray(rng.standard_normal(layer_spec.x_shape, dtype=np.float32))
    dy = backend.asarray(rng.standard_normal(layer_spec.y_shape, dtype=np.float32))

    def layer_step() -> None:
        conv(lx)
        conv.backward(dy)

    repeats = 3 if dry_run else 20
    return {"step": _time(backend, step, repeats), "layer": {"name": layer_spec.name, **_time(backend, layer_step,
                                                                                              repeats)}}


def _layer(name: str, dry_run: bool) -> Layer:
    layer = next(layer for layer in SUITE if layer.name == name)
    return layer.with_batch(2) if dry_run else layer


def _relative_error(a, b) -> float:
    a, b = np.asarray(to_numpy(a), np.float64), np.asarray(to_numpy(b), np.float64)
    return float(np.linalg.norm(a - b) / (np.linalg.norm(b) or 1.0))


def accuracy(backend: Backend, dry_run: bool) -> dict:
    """Relative error (2-norm) of float32 y, dL/dx and dL/dW against float64 on the same backend."""
    names = ("2d-c64-32", "2d-c128-16") if dry_run else ("2d-c3-32", "2d-c64-32", "2d-c128-16", "2d-c256-14",
                                                         "2d-1x1-56", "2d-k5-64")
    rows = {}
    for name in names:
        spec = _layer(name, dry_run)
        rng = np.random.default_rng(1)
        x, dy = rng.standard_normal(spec.x_shape), rng.standard_normal(spec.y_shape)
        results = {}
        for dtype in ("float32", "float64"):
            conv = nn.Conv2d(spec.c, spec.o, spec.k, stride=spec.stride, padding=spec.pad, groups=spec.groups,
                             backend=backend, dtype=dtype, seed=0)
            y = conv(backend.asarray(x, dtype=dtype))
            dx = conv.backward(backend.asarray(dy, dtype=dtype))
            results[dtype] = (y, dx, conv.weight.grad)
        rows[name] = {k: _relative_error(a, b) for k, a, b in zip(("y", "dx", "dW"), *results.values(), strict=True)}
    import os

    return {"CUPY_TF32": os.environ.get("CUPY_TF32", ""), "relative_error": rows}


def info(backend: Backend, dry_run: bool) -> dict:
    record = {"xpconv": xpconv.__version__, "python": platform.python_version(), "backend": repr(backend),
              "device": backend.device_name, "backends": available_backends()}
    if backend.name == "cupy":
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(backend.device.id)
        record["gpu"] = {"name": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
                         "compute_capability": f"{props['major']}.{props['minor']}",
                         "memory_bytes": int(props["totalGlobalMem"]),
                         "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
                         "cuda_driver": cupy.cuda.runtime.driverGetVersion()}
    return record


COMMANDS: dict[str, Callable[[Backend, bool], dict]] = {"info": info, "syncs": syncs, "timing": timing,
                                                        "accuracy": accuracy}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=tuple(COMMANDS))
    parser.add_argument("--out", required=True, type=Path, help="folder for COMMAND.json")
    parser.add_argument("--backend", default=None, help="default: cupy (array_api_strict with --dry-run)")
    parser.add_argument("--dry-run", action="store_true", help="small sizes, on the CPU: checks the probe itself")
    args = parser.parse_args(argv)
    backend = get_backend(args.backend or ("array_api_strict" if args.dry_run else "cupy"))
    result = {"command": args.command, "dry_run": args.dry_run, **COMMANDS[args.command](backend, args.dry_run)}
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = f"-tf32-{result['CUPY_TF32'] or 'unset'}" if args.command == "accuracy" else ""
    path = args.out / f"{args.command}{suffix}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result, default=str))
    return 0 if all(math.isfinite(v) for v in _numbers(result)) else 1


def _numbers(value) -> Iterator[float]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, float):
        yield value


if __name__ == "__main__":
    sys.exit(main())
