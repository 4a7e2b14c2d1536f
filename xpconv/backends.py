"""Backends: an Array API namespace ``xp``, a device, and everything that differs between array libraries.

A :class:`Backend` is resolved once, when a layer is built, and carries the namespace ``xp`` and the
device that every array of that layer lives on, plus the behaviour that depends on the library: where
arrays go (:meth:`Backend.asarray`), whether the device is a GPU, how the engine should chunk its
work, how to wait for the device, time a call and measure its peak memory.  Each library is one small
subclass that overrides only what differs.

This module is the only place in xpconv that knows the names of array libraries: every other module
asks a :class:`Backend` (or :func:`library_of`, which dispatches with array-api-compat's predicates).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import functools
import gc
import importlib
import os
import time
import tracemalloc
import warnings
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
from array_api_compat import (
    array_namespace,
    is_array_api_obj,
    is_array_api_strict_namespace,
    is_cupy_array,
    is_numpy_array,
    is_torch_array,
)

from ._typing import Array, Device

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "BACKEND_NAMES",
    "LIBRARY_NAMES",
    "CPU_CHUNK_BYTES",
    "FLOAT_DTYPES",
    "available_backends",
    "cuda_device_count",
    "dlpack_device_of",
    "get_backend",
    "get_default_backend",
    "gpu_name",
    "is_host_data",
    "library_of",
    "set_default_backend",
    "to_numpy",
    "torch_cuda_device_count",
    "UnitMap",
    "zero_where",
]

# On the CPU the engine keeps each chunk of its workspace under this size: a workspace that small stays
# in the caches and reuses heap pages, which measured faster than one big buffer (docs/benchmarks.md).
CPU_CHUNK_BYTES = 8 * 2**20
# The floating dtypes a layer or model may be built in (bfloat16 only where the library has it: torch).
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
_DLPACK_CPU, _DLPACK_CUDA = 1, 2      # DLPack's DLDeviceType codes kDLCPU and kDLCUDA

_default_name: str | None = None


class BackendUnavailableError(RuntimeError):
    """A backend was asked for that is not installed or has no usable device."""


@dataclass(frozen=True, repr=False)
class Backend:
    """An Array API namespace ``xp`` plus the ``device`` arrays are put on, and the library's behaviour.

    Build one with :func:`get_backend` (by name) or :meth:`Backend.from_array` (from an array).
    """

    xp: Any                        # the Array API namespace (array-api-compat's wrapper, or array_api_strict)
    device: Device

    name: ClassVar[str]
    module: ClassVar[str]          # the library's import name
    install_hint: ClassVar[str]

    # -- what the device is ----------------------------------------------------------------------
    @property
    def is_gpu(self) -> bool:
        """Whether arrays live on a GPU (a call returns before the work is done, copies cross a bus)."""
        return False

    @property
    def device_name(self) -> str:
        """A short name of the device: ``"cpu"``, ``"cuda:0"``, ..."""
        return str(self.device)

    @property
    def collective(self) -> str:
        """How :mod:`xpconv.distributed` reduces this backend's arrays across processes: ``"mpi"`` (through
        host NumPy buffers) or ``"nccl"`` (on the GPU, never leaving it)."""
        return "mpi"

    @property
    def cache_chunk_bytes(self) -> int | None:
        """The engine's chunking policy: keep each chunk's workspace under this many bytes (cache-sized
        chunks on the CPU), or None for one chunk as large as ``max_workspace_bytes`` allows (a GPU,
        where fewer, larger chunks mean fewer kernel launches)."""
        return None if self.is_gpu else CPU_CHUNK_BYTES

    @property
    def batch_inner_gemm(self) -> bool:
        """The engine's GEMM policy: the batch folded into one GEMM per chunk (a GPU: one kernel launch instead
        of one per sample), or one GEMM per sample (the CPU, where that measured faster: docs/benchmarks.md)."""
        return self.is_gpu

    @property
    def gather_columns(self) -> bool:
        """The engine's column policy: im2col and its fold as one gather each (a GPU: a few kernel launches
        instead of one per kernel tap), or strided slice copies (the CPU, where the gather measured no faster
        and its fold 3.7x slower: docs/gpu.md)."""
        return self.is_gpu

    @property
    def window_view(self) -> Callable[[Array, tuple[int, ...], tuple[int, ...]], Array] | None:
        """The engine's column fast path: a function ``(a, shape, strides) -> view`` giving a read-only strided
        view of the elements of C-contiguous ``a`` (``strides`` in elements), so that im2col is one copy of
        that view instead of one slice copy per kernel tap; None where the library has none or it was not
        measured faster (then the portable slices are used).  NumPy: 1.3-3x faster columns (docs/benchmarks.md).
        """
        return None

    @property
    def kn2row_rule(self) -> bool:
        """Whether ``algorithm="auto"`` takes kn2row where its measured rule says so
        (:func:`~xpconv._kn2row.kn2row_preferred`): on NumPy, where it was measured; im2col elsewhere until it is
        measured there (docs/algorithms.md)."""
        return False

    @property
    def unit_map(self) -> UnitMap | None:
        """The engine's threading policy: a :class:`UnitMap` that runs a pass's units of work (chunks of the batch)
        on several threads, or None for one after the other.  NumPy: as many threads as its BLAS was given
        (threadpoolctl, ``OPENBLAS_NUM_THREADS``), each unit's GEMMs on one BLAS thread, where that measured
        faster than the same threads inside each GEMM (docs/benchmarks.md); None with one BLAS thread.  Other
        libraries thread their own kernels."""
        return None

    @staticmethod
    def zero_where(cond: Array, a: Array) -> Array:
        """``where(cond, +0, a)``: ``a`` with the entries where boolean ``cond`` holds set to +0 (NaN and inf too),
        a new array of ``a``'s shape, dtype and device; ``cond`` has ``a``'s shape."""
        xp = array_namespace(a)
        return xp.where(cond, xp.zeros((), dtype=a.dtype, device=_device_of(a)), a)

    def activate(self) -> AbstractContextManager[Any]:
        """A context under which the library allocates and launches on this backend's device.

        Every op of a layer, loss, optimizer and training step runs under it: CuPy (and array-api-compat's
        creation functions, which ignore ``device=`` for CuPy) allocate on the *current* GPU, so without it a
        layer on GPU 1 would put its buffers on GPU 0.  CuPy: ``cupy.cuda.Device(i)``; torch on CUDA:
        ``torch.cuda.device(i)``; nothing to select on the CPU.  Contexts nest.
        """
        return contextlib.nullcontext()

    # -- random numbers ----------------------------------------------------------------------------
    def generator(self, seed: int | None) -> Any:
        """A seeded random generator of this library, drawing on this device (None: fresh entropy).

        One seed gives the same draws on the same backend; different libraries draw different numbers.
        """
        return np.random.default_rng(seed)

    def random(self, generator: Any, shape: tuple[int, ...], dtype: Any) -> Array:
        """Uniform numbers in [0, 1) of ``shape`` and floating ``dtype``, drawn on the device from ``generator``."""
        return self.asarray(generator.random(shape), dtype=dtype)

    def generator_state(self, generator: Any) -> Any:
        """The state of ``generator`` as plain JSON values (for checkpoints)."""
        return generator.bit_generator.state

    def set_generator_state(self, generator: Any, state: Any) -> None:
        """Restore a state :meth:`generator_state` returned."""
        generator.bit_generator.state = state

    # -- arrays ------------------------------------------------------------------------------------
    def asarray(self, x: Any, dtype: Any = None, *, copy: bool | None = None) -> Array:
        """``x`` (any array, list or scalar) as an array of this backend, on its device.

        An array of another library moves by DLPack (``xp.from_dlpack``) wherever it lives where this backend's
        arrays live (both on the CPU, or both on the same GPU): the result then **shares x's memory**, as
        ``np.asarray`` does for a NumPy array, and writing into one changes the other.  Where the devices differ
        (CPU <-> GPU, or two GPUs) it is copied through host memory: this is the one place such a copy happens,
        and only when asked for.  A source that cannot be handed on safely is copied too: a read-only array,
        one with negative strides (``x[::-1]``), a GPU tensor whose library refuses to export it (a torch tensor
        that requires grad).  ``copy=True`` always returns a new array; a ``dtype`` other than x's is a new
        array as well.
        """
        if isinstance(dtype, str):
            dtype = self.dtype(dtype)
        with self.activate():
            if library_of(x) not in (None, self.name):
                x = self._from_other_library(x)
            return self.xp.asarray(x, dtype=dtype, device=self.device, copy=copy)

    @property
    def dlpack_device(self) -> tuple[int, int]:
        """This backend's device as DLPack names it, ``(device type, index)``: ``(1, 0)`` is the CPU, ``(2, N)``
        CUDA GPU N; arrays with the same pair can share memory."""
        return (_DLPACK_CPU, 0)

    def _from_other_library(self, x: Array) -> Any:
        """``x``, an array of another library, as an array of this one: zero-copy by DLPack when it lives on this
        backend's device, else through host memory (a copy)."""
        if not hasattr(x, "__dlpack_device__"):
            return to_numpy(x)                  # a NumPy scalar (np.float32(1.0)): immutable, nothing to share
        if dlpack_device_of(x) != self.dlpack_device:
            return to_numpy(x)                  # CPU <-> GPU, or another GPU: the documented copy
        if not self.is_gpu:
            # On the CPU go through a NumPy view (no copy), whose layout can be read: torch's from_dlpack aborts
            # the process on negative strides (torch 2.13) and would make a read-only buffer writable.
            x = to_numpy(x)
            if not x.flags.writeable or any(step < 0 for step in x.strides):
                return np.array(x, copy=True)
        elif any(step < 0 for step in getattr(x, "strides", ())):
            return to_numpy(x)                  # a flipped GPU array: no library takes negative strides by DLPack
        try:
            return self.xp.from_dlpack(x)
        except (BufferError, RuntimeError, TypeError, ValueError):
            return to_numpy(x)                  # refused (a torch tensor that requires grad): a copy

    def upload(self, x: np.ndarray, dtype: Any = None) -> Array:
        """A host batch ``x`` on the device, copied without making the host wait where the library allows.

        CPU backends: :meth:`asarray`.  On a GPU the copy is queued on the current stream from pinned
        (page-locked) host memory, so it overlaps the work queued before it; the caller must not change
        ``x`` afterwards (the data loader hands in a fresh batch every time).
        """
        return self.asarray(x, dtype)

    def dtype(self, name: Any) -> Any:
        """The floating dtype called ``name`` (one of :data:`FLOAT_DTYPES`) in this namespace.

        ValueError for another name, and for ``"bfloat16"`` where the library has none (NumPy, CuPy,
        array-api-strict): of the supported libraries only torch has it.
        """
        if not isinstance(name, str):
            return name
        if name not in FLOAT_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(map(repr, FLOAT_DTYPES))}, got {name!r}")
        if not hasattr(self.xp, name):
            raise ValueError(f"dtype {name!r} is not available on the {self.name} backend ({self.module} has no "
                             f"{name}); use the torch backend for it, or float16")
        return getattr(self.xp, name)

    @staticmethod
    def to_numpy(x: Array) -> np.ndarray:
        """A host NumPy array of ``x``, an array of this library."""
        return np.asarray(x)

    # -- waiting, timing and measuring -------------------------------------------------------------
    def synchronize(self) -> None:
        """Wait until the device has finished the work queued so far; on the CPU there is nothing to wait for.

        For timing: CuPy and torch return from a GPU call before the GPU is done.
        """

    def times(self, fn: Callable[[], object], repeats: int, warmup: int) -> list[float]:
        """Seconds per call of ``fn`` after ``warmup`` untimed calls: wall clock here, device time on a GPU."""
        for _ in range(warmup):
            fn()
        gc.collect()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return times

    @property
    def measures_memory(self) -> bool:
        """Whether :meth:`peak_bytes` can tell."""
        return False

    def peak_bytes(self, fn: Callable[[], object]) -> int | None:
        """Peak bytes allocated on this device during one call of ``fn``, or None (without calling it) where
        that cannot be told."""
        return None

    def free_memory_bytes(self) -> int | None:
        """Bytes of memory free on this device now, or None where that cannot be told.

        On the CPU: the physical pages the OS reports available (``os.sysconf("SC_AVPHYS_PAGES")``, free
        pages on Linux, not counting the page cache it could reclaim).  A GPU backend overrides it.
        """
        try:
            pages, size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return None
        return pages * size if pages >= 0 and size > 0 else None

    # -- construction ------------------------------------------------------------------------------
    @staticmethod
    def from_array(x: Array) -> Backend:
        """The backend (library and device) that array ``x`` belongs to; TypeError for non-arrays."""
        name = library_of(x)
        if name is None:
            raise TypeError(f"expected an array of {', '.join(LIBRARY_NAMES)}, got {type(x).__name__}")
        cls = _CLASSES[name]
        return cls(_compat_namespace(name), _device_of(x))

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, device={self.device!r})"


class NumpyBackend(Backend):
    name, module = "numpy", "numpy"
    install_hint = "pip install numpy"

    @property
    def window_view(self) -> Callable[[Array, tuple[int, ...], tuple[int, ...]], Array] | None:
        return _numpy_window_view

    @staticmethod
    def zero_where(cond: np.ndarray, a: np.ndarray) -> np.ndarray:
        """The same bits as the portable ``where`` (tested), as a bitwise AND of ``a`` with a mask of all ones
        where ``cond`` is False: NumPy's ``where`` branches per element and measured 8x slower on the random
        masks of a ReLU's backward, 2x on constant ones (``benchmarks/ab_zero_where.py``)."""
        bits = np.dtype(f"u{a.dtype.itemsize}")
        mask = cond.astype(bits)
        mask -= 1                                                   # 0 where cond, all ones elsewhere
        mask &= a.view(bits)
        return mask.view(a.dtype)

    @property
    def unit_map(self) -> UnitMap | None:
        return UnitMap.for_blas_threads()

    @property
    def kn2row_rule(self) -> bool:
        return True

    @property
    def measures_memory(self) -> bool:
        return True

    def peak_bytes(self, fn: Callable[[], object]) -> int | None:
        """NumPy reports its buffers to tracemalloc: the peak above what was allocated before the call."""
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            fn()
            return tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()


def _numpy_window_view(a: np.ndarray, shape: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
    if not a.flags.c_contiguous:
        raise ValueError("window_view needs a C-contiguous array")
    view = np.ndarray(shape, a.dtype, buffer=a, strides=tuple(s * a.itemsize for s in strides))   # as_strided's
    view.flags.writeable = False                                                                   # view, faster
    return view


class ArrayApiStrictBackend(Backend):
    name, module = "array_api_strict", "array_api_strict"
    install_hint = 'pip install array-api-strict  (or "xpconv[test]")'

    @staticmethod
    def to_numpy(x: Array) -> np.ndarray:
        return np.from_dlpack(x)


class CupyBackend(Backend):
    name, module = "cupy", "cupy"
    install_hint = 'pip install "xpconv[cuda12]"  (or "xpconv[cuda13]" for CUDA 13 drivers)'

    @property
    def is_gpu(self) -> bool:
        return True

    @property
    def device_name(self) -> str:
        return f"cuda:{self.device.id}"

    @property
    def dlpack_device(self) -> tuple[int, int]:
        return (_DLPACK_CUDA, int(self.device.id))

    @property
    def collective(self) -> str:
        return "nccl"

    @staticmethod
    def to_numpy(x: Array) -> np.ndarray:
        return x.get()

    def activate(self) -> AbstractContextManager[Any]:
        return self.device                          # cupy.cuda.Device is a (nesting) context manager

    def generator(self, seed: int | None) -> Any:
        """CuPy's generators keep their state on the device, out of a checkpoint's reach, so this one is
        counter-based: draw ``k`` reseeds a ``cupy.random.RandomState`` from ``(seed, k)``."""
        import cupy

        with self.device:
            entropy = np.random.SeedSequence(seed).entropy        # the seed itself, or fresh entropy for None
            return _CountedGenerator(int(entropy), 0, cupy.random.RandomState())  # type: ignore[arg-type]

    def random(self, generator: Any, shape: tuple[int, ...], dtype: Any) -> Array:
        seed = np.random.SeedSequence([generator.seed, generator.draws]).generate_state(1, np.uint32)[0]
        generator.draws += 1
        with self.device:
            generator.source.seed(int(seed))
            return generator.source.random_sample(shape, dtype=dtype)

    def generator_state(self, generator: Any) -> Any:
        return {"seed": int(generator.seed), "draws": generator.draws}

    def set_generator_state(self, generator: Any, state: Any) -> None:
        generator.seed, generator.draws = int(state["seed"]), int(state["draws"])

    def upload(self, x: np.ndarray, dtype: Any = None) -> Array:
        """Through a pinned host buffer, copied on the current stream without waiting; the buffer is kept
        until the copy is done."""
        import cupy
        import cupyx

        host = np.ascontiguousarray(x)
        with self.device:
            pinned = cupyx.empty_pinned(host.shape, host.dtype)
            pinned[...] = host
            out = cupy.empty(host.shape, dtype=host.dtype)
            stream = cupy.cuda.get_current_stream()
            out.set(pinned, stream=stream)
            _PENDING.append((stream.record(), pinned))
            while _PENDING and _PENDING[0][0].done:
                _PENDING.popleft()
            return out if dtype is None else self.xp.astype(out, self.dtype(dtype))

    def synchronize(self) -> None:
        self.device.synchronize()

    def times(self, fn: Callable[[], object], repeats: int, warmup: int) -> list[float]:
        """GPU seconds per call, from CUDA events around each call (``cupyx.profiler.benchmark``)."""
        from cupyx.profiler import benchmark

        with self.device:
            result = benchmark(fn, n_repeat=repeats, n_warmup=warmup, devices=(self.device.id,))
        return [float(t) for t in result.gpu_times[0]]

    @property
    def measures_memory(self) -> bool:
        return True

    def peak_bytes(self, fn: Callable[[], object]) -> int | None:
        """Bytes CuPy's memory pool had to grow by during one call: the device-memory peak of ``fn``."""
        import cupy

        pool = cupy.get_default_memory_pool()
        self.synchronize()
        gc.collect()
        pool.free_all_blocks()
        base = pool.total_bytes()
        with self.device:
            fn()
        self.synchronize()
        return pool.total_bytes() - base

    def free_memory_bytes(self) -> int | None:
        """The device's free bytes (``cudaMemGetInfo``) plus those CuPy's memory pool holds unused."""
        import cupy

        with self.device:
            free, _ = cupy.cuda.runtime.memGetInfo()
        return int(free) + int(cupy.get_default_memory_pool().free_bytes())


class TorchBackend(Backend):
    name, module = "torch", "torch"
    install_hint = "pip install torch  (see https://pytorch.org for the build that fits your machine)"

    @property
    def is_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def dlpack_device(self) -> tuple[int, int]:
        return (_DLPACK_CUDA, self.device.index or 0) if self.is_gpu else (_DLPACK_CPU, 0)

    @staticmethod
    def to_numpy(x: Array) -> np.ndarray:
        """A host copy; a bfloat16 tensor comes as float32 (exact: NumPy has no bfloat16)."""
        import torch

        x = x.detach()
        return (x.float() if x.dtype == torch.bfloat16 else x).cpu().numpy()

    def activate(self) -> AbstractContextManager[Any]:
        if not self.is_gpu:
            return contextlib.nullcontext()
        import torch

        return torch.cuda.device(self.device)

    def generator(self, seed: int | None) -> Any:
        import torch

        generator = torch.Generator(device=self.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        return generator

    def random(self, generator: Any, shape: tuple[int, ...], dtype: Any) -> Array:
        import torch

        with self.activate():
            return torch.rand(shape, generator=generator, device=self.device, dtype=self.dtype(dtype))

    def generator_state(self, generator: Any) -> Any:
        return generator.get_state().tolist()

    def set_generator_state(self, generator: Any, state: Any) -> None:
        import torch

        generator.set_state(torch.tensor(state, dtype=torch.uint8))

    def upload(self, x: np.ndarray, dtype: Any = None) -> Array:
        """On CUDA: from pinned host memory with ``non_blocking=True`` (torch keeps the pinned block alive
        until the copy is done)."""
        if not self.is_gpu:
            return self.asarray(x, dtype)
        import torch

        host = torch.from_numpy(np.ascontiguousarray(x)).pin_memory()
        with self.activate():
            out = host.to(self.device, non_blocking=True)
            return out if dtype is None else out.to(self.dtype(dtype))

    def synchronize(self) -> None:
        if self.is_gpu:
            import torch

            torch.cuda.synchronize(self.device)

    def times(self, fn: Callable[[], object], repeats: int, warmup: int) -> list[float]:
        """Wall clock on the CPU; on CUDA, device seconds from a pair of events recorded around each call."""
        if not self.is_gpu:
            return super().times(fn, repeats, warmup)
        import torch

        with torch.cuda.device(self.device):
            for _ in range(warmup):
                fn()
            self.synchronize()
            pairs = []
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                pairs.append((start, end))
            self.synchronize()
        return [s.elapsed_time(e) / 1e3 for s, e in pairs]

    @property
    def measures_memory(self) -> bool:
        return self.is_gpu

    def peak_bytes(self, fn: Callable[[], object]) -> int | None:
        """Peak CUDA bytes of torch's caching allocator on this device during one call (None on the CPU)."""
        if not self.is_gpu:
            return super().peak_bytes(fn)
        import torch

        self.synchronize()
        gc.collect()
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        with self.activate():
            fn()
        self.synchronize()
        return torch.cuda.max_memory_allocated(self.device) - base

    def free_memory_bytes(self) -> int | None:
        """On CUDA the device's free bytes (``torch.cuda.mem_get_info``) plus those torch's caching allocator
        holds unused; on the CPU the OS's figure."""
        if not self.is_gpu:
            return super().free_memory_bytes()
        import torch

        free, _ = torch.cuda.mem_get_info(self.device)
        cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return int(free) + int(cached)


@dataclass
class _CountedGenerator:
    """A counter-based generator: draw ``draws`` comes from ``source`` reseeded from ``(seed, draws)``."""

    seed: int
    draws: int
    source: Any


_PENDING: deque[tuple[Any, Any]] = deque()   # CuPy uploads in flight: (event, pinned buffer kept alive until done)

_CLASSES: dict[str, type[Backend]] = {cls.name: cls for cls in (NumpyBackend, CupyBackend, TorchBackend,
                                                               ArrayApiStrictBackend)}
LIBRARY_NAMES = tuple(_CLASSES)           # the array libraries, each listed here only
BACKEND_NAMES = (*LIBRARY_NAMES, "auto")


def library_of(x: object) -> str | None:
    """The backend name of array ``x``'s library ("numpy", "cupy", ...), or None for anything else
    (answered once per type)."""
    kind = type(x)
    if kind not in _LIBRARY_BY_TYPE:
        _LIBRARY_BY_TYPE[kind] = _library_of(x)
    return _LIBRARY_BY_TYPE[kind]


_LIBRARY_BY_TYPE: dict[type, str | None] = {}


def _library_of(x: object) -> str | None:
    if is_numpy_array(x):
        return "numpy"
    if is_cupy_array(x):
        return "cupy"
    if is_torch_array(x):
        return "torch"
    if is_array_api_obj(x) and is_array_api_strict_namespace(array_namespace(x)):
        return "array_api_strict"
    return None


class UnitMap:
    """Runs a pass's units of work on ``workers`` threads, with the BLAS libraries held to one thread meanwhile.

    ``unit_map(fn, items)`` yields ``fn(item)`` in the order of ``items``; at most ``workers`` items run at once
    and at most ``workers + 1`` results wait to be taken, so the workspace stays that of ``workers`` units.  Each
    runs in a copy of the caller's context (so NumPy's ``errstate`` holds in it).  NumPy releases the GIL inside
    its copies and GEMMs, which is what the threads run.
    """

    def __init__(self, workers: int, blas: Any) -> None:
        self.workers, self._blas = workers, blas

    @staticmethod
    def for_blas_threads() -> UnitMap | None:
        """A UnitMap with as many workers as the loaded BLAS libraries' largest thread count; None for one thread."""
        blas = _blas_pools()
        workers = max((lib.num_threads for lib in blas.lib_controllers), default=1) if blas is not None else 1
        return UnitMap(workers, blas) if workers > 1 else None

    def __call__(self, fn: Callable[[Any], Any], items: Any) -> Any:
        pool = _thread_pool(self.workers)
        pending: deque[Any] = deque()
        with self._blas.limit(limits=1):
            try:
                for item in items:
                    pending.append(pool.submit(contextvars.copy_context().run, fn, item))   # np.errstate too
                    if len(pending) > self.workers:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:                                            # an error: no unit outlives the pass
                for future in pending:
                    future.cancel()
                concurrent.futures.wait(pending)


@functools.cache
def _blas_pools() -> Any:
    """threadpoolctl's controller of the BLAS libraries loaded with NumPy (None without threadpoolctl)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController().select(user_api="blas")


@functools.cache
def _thread_pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="xpconv-unit")


def zero_where(cond: Array, a: Array) -> Array:
    """``where(cond, +0, a)`` for array ``a`` of any library (see :meth:`Backend.zero_where`)."""
    name = library_of(a)
    if name is None:
        raise TypeError(f"expected an array of {', '.join(LIBRARY_NAMES)}, got {type(a).__name__}")
    return _CLASSES[name].zero_where(cond, a)


def dlpack_device_of(x: Array) -> tuple[int, int]:
    """Where array ``x`` lives as DLPack names it, ``(device type, index)`` (see :attr:`Backend.dlpack_device`)."""
    kind, index = x.__dlpack_device__()
    return int(kind), int(index)


def is_host_data(x: object) -> bool:
    """Whether ``x`` is data in host memory that can be read without waiting for a device: a list, a tuple or a
    NumPy array (not an array of a device library, even one on the CPU)."""
    return isinstance(x, (list, tuple)) or is_numpy_array(x)


@functools.cache
def _compat_namespace(name: str) -> Any:
    """The Array API namespace xpconv uses for library ``name`` (array-api-compat's wrapper where there is one)."""
    if name == "array_api_strict":
        return importlib.import_module("array_api_strict")
    return importlib.import_module(f"array_api_compat.{name}")


def _device_of(x: Array) -> Device:
    return "cpu" if library_of(x) == "numpy" else x.device


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy copy (or view, for NumPy input) of array ``x`` from any backend, on the host."""
    name = library_of(x)
    return _CLASSES[name].to_numpy(x) if name else np.asarray(x)


def cuda_device_count() -> int:
    """Number of CUDA devices CuPy can use; 0 (never an exception) without CuPy, driver or GPU."""
    try:
        import cupy
    except Exception:
        return 0
    try:
        if not cupy.is_available():
            return 0
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


def torch_cuda_device_count() -> int:
    """Number of CUDA devices torch can use; 0 (never an exception) without torch or GPU."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(_CLASSES[name].module)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend {name!r} is not installed ({exc}); install it with: {_CLASSES[name].install_hint}"
        ) from None


def _check_index(device: Device, count: int, what: str) -> int:
    index = 0 if device is None else device
    if isinstance(index, str) and index.startswith("cuda"):
        index = index.partition(":")[2] or "0"
    try:
        index = int(index)
    except (TypeError, ValueError):
        raise ValueError(f"{what} device must be a GPU index like 0 or 'cuda:0', got {device!r}") from None
    if not 0 <= index < count:
        raise BackendUnavailableError(f"{what} device {index} does not exist: {count} CUDA device(s) usable")
    return index


def _make(name: str, device: Device) -> Backend:
    if name not in _CLASSES:
        raise ValueError(f"unknown backend {name!r}; valid backends are: {', '.join(BACKEND_NAMES)}")
    lib = _import(name)
    if name == "cupy":
        count = cuda_device_count()
        if count == 0:
            raise BackendUnavailableError(
                "backend 'cupy' is installed but no CUDA device is usable (no GPU, no driver, or a "
                "CuPy build that does not match the driver). Check `nvidia-smi` and `xpconv info`; "
                f"install the matching build with: {CupyBackend.install_hint}"
            )
        return CupyBackend(_compat_namespace(name), lib.cuda.Device(_check_index(device, count, "cupy")))
    xp = _compat_namespace(name)
    if name == "numpy":
        if device not in (None, "cpu"):
            raise ValueError(f"the numpy backend runs on 'cpu' only, got device={device!r}")
        return NumpyBackend(xp, "cpu")
    if name == "array_api_strict":
        if device is None:
            device = xp.__array_namespace_info__().default_device()
        elif isinstance(device, str):
            # by name ('device1', as `--device device1`) or by repr ("array_api_strict.Device('device1')")
            devices = {str(d): d for d in xp.__array_namespace_info__().devices()}
            devices |= {key.split("'")[1]: d for key, d in devices.items() if key.count("'") == 2}
            if device not in devices:
                raise ValueError(f"array_api_strict device must be one of {sorted(devices)}, got {device!r}")
            device = devices[device]
        return ArrayApiStrictBackend(xp, device)
    if device is None or str(device) == "cpu":
        return TorchBackend(xp, lib.device("cpu"))
    return TorchBackend(xp, lib.device("cuda", _check_index(device, torch_cuda_device_count(), "torch")))


def _normalize(name: str) -> str:
    return name.lower().replace("-", "_")


def get_backend(name: str | Backend | None = None, device: Device = None) -> Backend:
    """Resolve a backend name ("numpy", "cupy", "torch", "array_api_strict", "auto").

    ``None`` means the default (see :func:`get_default_backend`).  ``"auto"``
    picks CuPy when a CUDA device is usable, else NumPy with a warning.
    ``device`` is a GPU index (or ``"cuda:N"``) for cupy/torch, ``"cpu"`` otherwise.
    """
    if isinstance(name, Backend):
        return name if device is None else get_backend(name.name, device)
    if name is None:
        name = get_default_backend()
    if not isinstance(name, str):
        raise TypeError(f"backend must be a name or a Backend, got {type(name).__name__}")
    name = _normalize(name)
    if name == "auto":
        if cuda_device_count() > 0:
            return _make("cupy", device)
        warnings.warn("backend 'auto': no usable CUDA device for CuPy, falling back to NumPy on the CPU",
                      RuntimeWarning, stacklevel=2)
        return _make("numpy", None)
    return _make(name, device)


def get_default_backend() -> str:
    """The default backend name: :func:`set_default_backend`, else ``$XPCONV_BACKEND``, else "numpy"."""
    name = _default_name or os.environ.get("XPCONV_BACKEND") or "numpy"
    if _normalize(name) not in BACKEND_NAMES:
        raise ValueError(f"XPCONV_BACKEND={name!r} is not a backend; valid backends are: {', '.join(BACKEND_NAMES)}")
    return name


def set_default_backend(name: str | None) -> None:
    """Set the backend used when none is given (``None`` restores ``$XPCONV_BACKEND``/"numpy")."""
    global _default_name
    if name is not None and _normalize(name) not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; valid backends are: {', '.join(BACKEND_NAMES)}")
    _default_name = name


def available_backends() -> dict[str, dict[str, Any]]:
    """Which backends are installed and usable here, with versions and devices.

    Returns ``{name: {"installed": bool, "usable": bool, "version": str|None,
    "devices": [str], "note": str}}`` for numpy, cupy, torch and array_api_strict.
    """
    report: dict[str, dict[str, Any]] = {}
    for name, cls in _CLASSES.items():
        entry: dict[str, Any] = {"installed": False, "usable": False, "version": None, "devices": [], "note": ""}
        try:
            mod = importlib.import_module(cls.module)
        except Exception as exc:
            missing = isinstance(exc, ModuleNotFoundError) and exc.name == cls.module
            entry["note"] = f"not installed: {cls.install_hint}" if missing else f"installed but fails to import: {exc}"
            report[name] = entry
            continue
        entry["installed"] = True
        entry["version"] = getattr(mod, "__version__", None)
        if cls is CupyBackend:
            count = cuda_device_count()
            entry["devices"] = [f"cuda:{i}" for i in range(count)]
            entry["usable"] = count > 0
            if count:
                entry["note"] = ", ".join(gpu_name(i) for i in range(count))
            else:
                entry["note"] = "no usable CUDA device (no GPU, no driver, or no NVIDIA container toolkit)"
        elif cls is TorchBackend:
            entry["devices"] = ["cpu"] + [f"cuda:{i}" for i in range(torch_cuda_device_count())]
            entry["usable"] = True
        else:
            entry["devices"] = ["cpu"]
            entry["usable"] = True
        report[name] = entry
    return report


def gpu_name(index: int) -> str:
    """The marketing name of CUDA device ``index`` as CuPy reports it (``"cuda:N"`` when it cannot)."""
    try:
        import cupy

        name = cupy.cuda.runtime.getDeviceProperties(index)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return f"cuda:{index}"
