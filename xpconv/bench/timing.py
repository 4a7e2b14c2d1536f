"""Timers and memory probes: wall clock on the CPU, CUDA events on the GPU, allocator peaks."""
from __future__ import annotations

import gc
import statistics
import time
import tracemalloc

__all__ = ["wall_times", "cupy_times", "torch_cuda_times", "tracemalloc_peak", "cupy_pool_peak",
           "torch_cuda_peak", "median"]


def median(times) -> float:
    return statistics.median(times)


def wall_times(fn, repeats: int, warmup: int) -> list[float]:
    """Seconds per call of ``fn`` (synchronous: NumPy, torch on the CPU), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    gc.collect()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def cupy_times(fn, repeats: int, warmup: int) -> list[float]:
    """GPU seconds per call, from CUDA events around each call (``cupyx.profiler.benchmark``)."""
    from cupyx.profiler import benchmark

    result = benchmark(fn, n_repeat=repeats, n_warmup=warmup)
    return [float(t) for t in result.gpu_times[0]]


def torch_cuda_times(fn, repeats: int, warmup: int) -> list[float]:
    """GPU seconds per call, from a pair of CUDA events recorded around each call on the current stream."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    pairs = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return [s.elapsed_time(e) / 1e3 for s, e in pairs]


def tracemalloc_peak(fn) -> int:
    """Peak bytes allocated during one call of ``fn`` (NumPy reports its buffers to tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def cupy_pool_peak(fn) -> int:
    """Bytes the CuPy memory pool had to grow by during one call: the device-memory peak of ``fn``."""
    import cupy

    pool = cupy.get_default_memory_pool()
    cupy.cuda.Device().synchronize()
    gc.collect()
    pool.free_all_blocks()
    base = pool.total_bytes()
    fn()
    cupy.cuda.Device().synchronize()
    return pool.total_bytes() - base


def torch_cuda_peak(fn) -> int:
    """Peak CUDA bytes allocated by torch's caching allocator during one call of ``fn``."""
    import torch

    torch.cuda.synchronize()
    gc.collect()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base
