"""Run the suite: every layer on every backend, plus a GEMM ceiling and an optional memory sweep."""
from __future__ import annotations

import math
import statistics
import sys

import numpy as np

from .runners import make_runner
from .suite import MEMORY_SWEEP_BATCHES, MEMORY_SWEEP_LAYER, SUITE

__all__ = ["make_runners", "run_suite", "memory_sweep", "summarize"]


def make_runners(names, torch_device: str = "cpu", algorithms=("auto",)):
    """(runners, skipped): the backends that run here, and {name: reason} for those that cannot.

    xpconv's backends get one runner per algorithm in ``algorithms``; torch-ref and jax-ref one each."""
    runners, skipped = [], {}
    jobs = [(name, alg) for name in names for alg in (("auto",) if name.endswith("-ref") else algorithms)]
    for name, algorithm in jobs:
        try:
            runners.append(make_runner(name, torch_device, algorithm))
        except ValueError:
            raise
        except Exception as exc:  # not installed, no device, ...: skip with the reason
            skipped[name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            print(f"note: skipping backend {name!r}: {skipped[name]}", file=sys.stderr)
    return runners, skipped


def _gemm_size(flops: int) -> int:
    """Side m of the square GEMM with the same FLOPs (2 m^3) as a layer's forward pass: the BLAS ceiling."""
    return max(1, round((flops / 2) ** (1 / 3)))


def _bench_one(runner, layer, repeats, warmup, max_workspace_bytes, seed) -> dict:
    rng = np.random.default_rng(seed)
    case = runner.case(layer, rng, max_workspace_bytes)
    row = {"layer": layer.name, "backend": runner.name, "device": runner.device}
    for part in ("forward", "backward", "step"):
        times = runner.times(getattr(case, part), repeats, warmup)
        row[f"{part}_s"] = statistics.median(times)
        row[f"{part}_times"] = times
    m = _gemm_size(layer.flops)
    gemm_s = statistics.median(runner.times(runner.gemm(m, rng), repeats, warmup))
    row["gemm_m"] = m
    row["gemm_gflops"] = 2 * m**3 / gemm_s / 1e9
    row["forward_gflops"] = layer.flops / row["forward_s"] / 1e9
    row["backward_gflops"] = 2 * layer.flops / row["backward_s"] / 1e9
    row["step_gflops"] = 3 * layer.flops / row["step_s"] / 1e9
    row["gemm_ratio"] = row["step_gflops"] / row["gemm_gflops"]
    shaped_s = statistics.median(runner.times(runner.shaped_gemm(layer, rng), repeats, warmup))
    row["shaped_gemm_gflops"] = layer.flops / shaped_s / 1e9
    row["shaped_gemm_ratio"] = row["step_gflops"] / row["shaped_gemm_gflops"]
    row["peak_workspace_bytes"] = runner.peak_bytes(case.step)
    return row


def run_suite(runners, layers, *, repeats: int, warmup: int, max_workspace_bytes, seed: int = 0,
              progress: bool = True) -> list[dict]:
    """One result row per (layer, runner): median times, GFLOP/s, GEMM ratio, peak bytes, ratio to torch-ref."""
    from tqdm.auto import tqdm

    rows = []
    jobs = []
    # One untimed step of every job first, so that each layer meets a process that has already run the
    # others, as in a network: without it the first layer paid page faults that later ones did not.  An algorithm
    # asked for by name that refuses a layer there (e.g. FFT's kernel transform over the workspace cap) is
    # left out of that layer's rows, with the reason on stderr.
    for layer, runner in tqdm([(layer, runner) for layer in layers for runner in runners if runner.runs(layer)],
                              desc="warm-up", unit="run", file=sys.stderr, disable=not progress):
        try:
            runner.case(layer, np.random.default_rng(seed), max_workspace_bytes).step()
        except ValueError as exc:
            if getattr(runner, "algorithm", "auto") == "auto":
                raise
            print(f"{runner.name} skipped on {layer.name}: {exc}", file=sys.stderr)
            continue
        jobs.append((layer, runner))
    for layer, runner in tqdm(jobs, desc="bench", unit="run", file=sys.stderr, disable=not progress):
        rows.append(_bench_one(runner, layer, repeats, warmup, max_workspace_bytes, seed))
    refs = {r["layer"]: r["step_s"] for r in rows if r["backend"] == "torch-ref"}
    for r in rows:
        r["ref_ratio"] = r["step_s"] / refs[r["layer"]] if r["layer"] in refs else None
    return rows


def _geomean(values):
    values = [v for v in values if v is not None]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def summarize(rows) -> dict:
    """Per backend: geometric mean and worst of the forward+backward ratio to torch-ref and to the GEMM."""
    summary = {}
    for name in dict.fromkeys(r["backend"] for r in rows):
        mine = [r for r in rows if r["backend"] == name]
        ref = [r["ref_ratio"] for r in mine if r["ref_ratio"] is not None]
        summary[name] = {
            "geomean_vs_torch_ref": _geomean(ref),
            "worst_vs_torch_ref": max(ref) if ref else None,
            "geomean_vs_gemm": _geomean(r["gemm_ratio"] for r in mine),
            "geomean_vs_shaped_gemm": _geomean(r["shaped_gemm_ratio"] for r in mine),
        }
    return summary


def memory_sweep(runners, max_workspace_bytes, *, repeats: int, warmup: int, seed: int = 0, layer=None,
                 batches=MEMORY_SWEEP_BATCHES, progress: bool = True) -> list[dict]:
    """Peak bytes and time of forward+backward vs batch size, with the workspace cap and without it.

    ``layer`` defaults to the suite's :data:`MEMORY_SWEEP_LAYER`.  Only runners that can
    measure memory take part (NumPy via tracemalloc, CuPy's pool, torch.cuda).
    """
    from tqdm.auto import tqdm

    base = layer or next(s for s in SUITE if s.name == MEMORY_SWEEP_LAYER)
    rng = np.random.default_rng(seed)
    usable = [r for r in runners if r.measures_memory]
    rows = []
    jobs = [(r, n, cap) for r in usable for n in batches for cap in (max_workspace_bytes, None)]
    for runner, n, cap in tqdm(jobs, desc="memory sweep", unit="run", file=sys.stderr, disable=not progress):
        sized = base.with_batch(n)
        case = runner.case(sized, rng, cap)
        step_s = statistics.median(runner.times(case.step, repeats, warmup))
        rows.append({
            "backend": runner.name, "layer": base.name, "n": n, "max_workspace_bytes": cap,
            "peak_bytes": runner.peak_bytes(case.step), "step_s": step_s,
            "step_gflops": 3 * sized.flops / step_s / 1e9,
            "activation_bytes": 4 * max(math.prod(sized.x_shape), math.prod(sized.y_shape)),
            "im2col_bytes": 4 * n * sized.c * sized.k ** sized.nd * math.prod(sized.out_size),
        })
    return rows
