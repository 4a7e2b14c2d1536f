"""One ``backend`` fixture parametrizes every backend-generic test.

numpy and array_api_strict (on its default device and on ``device1``) always run; torch
when installed; cupy (and torch on CUDA) only where a CUDA device is usable, marked ``gpu`` and skipped with a
reason otherwise.  ``XPCONV_TEST_BACKENDS=cupy`` (comma-separated) restricts
the run to the named backends, e.g. to run the whole suite on the GPU.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from xpconv.backends import cuda_device_count, get_backend, to_numpy, torch_cuda_device_count

HAS_TORCH = importlib.util.find_spec("torch") is not None
CUDA_COUNT = cuda_device_count()
TORCH_CUDA = HAS_TORCH and torch_cuda_device_count() > 0


def _backend_params():
    no_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
    no_cupy = pytest.mark.skipif(CUDA_COUNT == 0, reason="CuPy with a usable CUDA device is not available")
    no_torch_cuda = pytest.mark.skipif(not TORCH_CUDA, reason="torch with a usable CUDA device is not available")
    params = [
        pytest.param("numpy", id="numpy"),
        pytest.param("array_api_strict", id="array_api_strict"),
        # its non-default device: an array created without the layer's device makes the next operation raise
        pytest.param("array_api_strict:device1", id="array_api_strict-device1"),
        pytest.param("torch", id="torch", marks=no_torch),
        pytest.param("cupy", id="cupy", marks=[pytest.mark.gpu, no_cupy]),
        pytest.param("torch:cuda", id="torch-cuda", marks=[pytest.mark.gpu, no_torch_cuda]),
    ]
    only = os.environ.get("XPCONV_TEST_BACKENDS")
    if only:
        wanted = {b.strip() for b in only.split(",")}
        params = [p for p in params if p.values[0] in wanted or p.id in wanted]
    return params


BACKENDS = _backend_params()

if HAS_TORCH:
    import torch

    # Tiny tensors: one thread avoids torch's thread-pool overhead, which dominates on few-core or shared CPUs.
    torch.set_num_threads(1)


def make_backend(spec: str):
    name, _, device = spec.partition(":")
    return get_backend(name, "cuda:0" if device == "cuda" else device or None)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """A resolved :class:`xpconv.Backend` (namespace ``.xp``, ``.device``, ``.asarray``)."""
    return make_backend(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def tf32_active(backend) -> bool:
    """Whether float32 matrix products on ``backend`` may round their inputs to TF32 (10-bit mantissa): CuPy
    with ``CUPY_TF32=1``, torch on CUDA unless its float32 matmul precision is "highest"; never on a CPU."""
    if not backend.is_gpu:
        return False
    if backend.name == "cupy":
        return os.environ.get("CUPY_TF32") == "1"
    import torch

    return torch.get_float32_matmul_precision() != "highest"


def f32_tol(backend, rtol: float, atol: float = 0.0) -> dict[str, float]:
    """float32 tolerances for ``assert_allclose``: the given ones, loosened where TF32 is active on ``backend``
    (a 2**-11 relative rounding of each GEMM input, about 2e-2 after the sums of a layer)."""
    if tf32_active(backend):
        return {"rtol": max(rtol, 2e-2), "atol": max(atol, 2e-3)}
    return {"rtol": rtol, "atol": atol}


def as_numpy(a) -> np.ndarray:
    """Host float64 copy of an array from any backend, for comparisons."""
    return np.asarray(to_numpy(a), dtype=np.float64)


@pytest.fixture(params=[False, True], ids=["per-sample", "batch-inner"])
def batch_inner(request):
    """The engine's two GEMM policies: one GEMM per sample (the CPU's), the batch inside one GEMM (a GPU's)."""
    return request.param
