"""The facts a benchmark figure depends on: versions, BLAS and threads, CPU/GPU, TF32 switches."""
from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from typing import Any

__all__ = ["set_threads", "set_xla_threads", "set_tf32", "collect_environment", "blas_pools", "coretype_note"]

_ENV_VARS = ("CUPY_TF32", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
             "MKL_NUM_THREADS", "XPCONV_BACKEND", "XLA_FLAGS")
# XLA has no documented thread-count setting (JAX issues #743, #1539); this pair of flags is the one its
# maintainers gave for a single thread.  Otherwise XLA's CPU pool takes every CPU the process may run on.
_XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def set_threads(threads: int):
    """Limit BLAS/OpenMP pools (threadpoolctl) and torch's intra-op pool to ``threads``.

    Returns the threadpoolctl limiter to keep alive (None when threadpoolctl is missing).
    """
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("note: threadpoolctl is not installed (pip install threadpoolctl); BLAS threads are not limited",
              file=sys.stderr)
        return None
    return threadpool_limits(limits=threads)


def set_xla_threads(threads: int, cpus: int) -> str:
    """Set XLA's CPU threads for ``jax-ref`` before JAX is imported, as far as XLA allows; returns what JAX's
    CPU work runs on, for the report: ``"1"`` (``$XLA_FLAGS`` gets the single-thread flags), ``"all N CPUs"``
    (XLA's default, where ``threads`` >= the CPUs), or that with the reason it could not be limited."""
    if threads >= cpus:
        return f"all {cpus} CPUs"
    if threads != 1:
        return f"all {cpus} CPUs (XLA has no setting for {threads} threads)"
    if "jax" in sys.modules:
        return f"all {cpus} CPUs (JAX was imported before XLA_FLAGS could be set)"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_XLA_ONE_THREAD}".strip()
    return "1"


def set_tf32(enabled: bool) -> None:
    """TF32 for torch's cuDNN/cuBLAS as asked (CuPy reads ``CUPY_TF32`` from the environment when imported)."""
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def coretype_note() -> str | None:
    """A warning when ``OPENBLAS_CORETYPE`` pins NumPy's OpenBLAS kernels, else None."""
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    if not coretype:
        return None
    return (f"note: OPENBLAS_CORETYPE={coretype} is set: NumPy's OpenBLAS runs those kernels whatever this CPU "
            "supports, which can be much slower (Haswell ones: about half the GEMM speed on an AVX-512 CPU; "
            "docs/benchmarks.md)")


def blas_pools() -> list[dict]:
    """The BLAS/OpenMP pools loaded in this process (threadpoolctl): library, version, kernels, threads;
    empty when threadpoolctl is not installed."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("user_api", "internal_api", "prefix", "version", "num_threads", "architecture", "threading_layer")
    return [{k: pool.get(k) for k in keys if k in pool} for pool in threadpool_info()]


def collect_environment(torch_device: str = "cpu") -> dict:
    """Versions, BLAS pools and their threads, CPU and GPU names, TF32 switches, relevant env vars; the torch GPU
    named is ``torch_device`` where that is a CUDA device (the benchmark's own, not the current one)."""
    import array_api_compat
    import numpy

    from .. import __version__

    env: dict[str, Any] = {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["xpconv", *sys.argv[1:]]) if sys.argv else "",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "versions": {"xpconv": __version__, "numpy": numpy.__version__,
                     "array_api_compat": array_api_compat.__version__},
        "blas": blas_pools(),
        "env": {k: os.environ.get(k) for k in _ENV_VARS},
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        env["versions"]["torch"] = torch.__version__
        env["torch"] = {
            "num_threads": torch.get_num_threads(),
            "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "mkldnn_enabled": torch.backends.mkldnn.is_available(),
        }
        if torch.cuda.is_available():
            cuda = torch.device(torch_device) if torch_device.startswith("cuda") else torch.device("cuda", 0)
            env["torch"]["gpu"] = torch.cuda.get_device_name(cuda)
    jax = sys.modules.get("jax")
    if jax is not None:
        env["versions"]["jax"] = jax.__version__
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        env["versions"]["cupy"] = cupy.__version__
        try:
            name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
            env["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
        except Exception as exc:  # no device: record why
            env["gpu"] = f"unavailable ({exc})"
    return env
