"""On a real GPU: a training step never waits for the device, uploads nothing in forward/backward, and runs on
the GPU it was given.  (tests/test_device_scope.py checks the same on the CPU, through array-api-strict.)

Synchronizations are caught by ``torch.cuda.set_sync_debug_mode`` on torch, and counted on CuPy at the Python
entry points that wait for the device (``ndarray.get``/``item``/``tolist``, ``cupy.asnumpy``, stream and
device ``synchronize``; ``float()``/``int()``/``bool()`` of an array go through ``get``).  Every test here
carries the ``gpu`` marker and is skipped with a reason where no CUDA device is usable.
"""
from __future__ import annotations

import contextlib
import json
import math
import warnings

import numpy as np
import pytest
from instrumented import every_state_model

from conftest import CUDA_COUNT, TORCH_CUDA
from xpconv import nn
from xpconv.amp import GradScaler
from xpconv.backends import get_backend
from xpconv.cli import main
from xpconv.data import Compose, DataLoader, RandomCrop, RandomHorizontalFlip, load_dataset
from xpconv.optim import Adam
from xpconv.training import fit

pytestmark = pytest.mark.gpu
NO_CUPY = "CuPy with a usable CUDA device is not available"
NO_TORCH_CUDA = "torch with a usable CUDA device is not available"
SPECS = [pytest.param(("cupy", 0), id="cupy", marks=pytest.mark.skipif(CUDA_COUNT == 0, reason=NO_CUPY)),
         pytest.param(("torch", "cuda:0"), id="torch-cuda", marks=pytest.mark.skipif(not TORCH_CUDA,
                                                                                       reason=NO_TORCH_CUDA))]
BATCH = 16


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0).subset(96)          # 6 steps per epoch


def _augment():
    return Compose([RandomCrop(8, padding=1, seed=1), RandomHorizontalFlip(seed=2)])


@contextlib.contextmanager
def counted_syncs(monkeypatch, backend):
    """Counts the host's waits for the device while the block runs: a list, one entry per wait."""
    waits: list[str] = []
    with monkeypatch.context() as m:
        if backend.name == "cupy":
            import cupy

            def counted(owner, name):
                real = getattr(owner, name)

                def wait(*args, **kwargs):
                    waits.append(name)
                    return real(*args, **kwargs)
                m.setattr(owner, name, wait)

            for name in ("get", "item", "tolist"):
                counted(cupy.ndarray, name)
            counted(cupy, "asnumpy")
            counted(cupy.cuda.Stream, "synchronize")
            counted(cupy.cuda.Device, "synchronize")
            yield waits
        else:
            import torch

            torch.cuda.set_sync_debug_mode("warn")
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    yield waits
                waits.extend(str(w.message) for w in caught if "synchroniz" in str(w.message))
            finally:
                torch.cuda.set_sync_debug_mode("default")


@contextlib.contextmanager
def no_syncs(monkeypatch, backend):
    """The block may not wait for the device: torch raises at the wait; CuPy's waits are counted and must be 0."""
    if backend.name == "torch":
        import torch

        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
    else:
        with counted_syncs(monkeypatch, backend) as waits:
            yield
        assert waits == [], f"the step waited for the GPU: {waits}"


def _refuse_host(real, name):
    def guarded(obj, *args, **kwargs):
        if isinstance(obj, (np.ndarray, list, tuple)):
            raise AssertionError(f"host -> device copy ({name}) inside forward/backward")
        return real(obj, *args, **kwargs)
    return guarded


@contextlib.contextmanager
def no_uploads(monkeypatch, backend):
    """Inside the block, making a device array from host data raises AssertionError."""
    with monkeypatch.context() as m:
        if backend.name == "cupy":
            import cupy

            for name in ("array", "asarray"):
                m.setattr(cupy, name, _refuse_host(getattr(cupy, name), f"cupy.{name}"))
            m.setattr(cupy.ndarray, "set", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ndarray.set")))
        else:
            import torch

            for name in ("asarray", "as_tensor", "tensor", "from_numpy"):
                m.setattr(torch, name, _refuse_host(getattr(torch, name), f"torch.{name}"))
        yield


@pytest.mark.parametrize("spec", SPECS)
def test_training_steps_never_wait_for_the_gpu_nor_upload_in_forward_backward(spec, digits, monkeypatch):
    backend = get_backend(*spec)
    model = every_state_model(backend, channels=8)
    loss_fn, optimizer = nn.CrossEntropyLoss(), Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(digits.x_train, digits.y_train, BATCH, seed=0, backend=backend, transform=_augment())
    total = None
    with backend.activate():
        for xb, yb in loader:                  # the first step warms up (allocations, kernel compilation)
            if total is None:
                total = loss_fn.on_device(model(xb), yb)
                model.backward(loss_fn.backward())
                continue
            with no_syncs(monkeypatch, backend):
                with no_uploads(monkeypatch, backend):    # the batch came up before: nothing goes up in the step
                    loss = loss_fn.on_device(model(xb), yb)
                    optimizer.zero_grad()
                    model.backward(loss_fn.backward())
                optimizer.step()
                total = total + loss
    assert math.isfinite(float(total))                           # the one read, after the steps


@pytest.mark.parametrize("log_interval", [1, 3])
@pytest.mark.parametrize("spec", SPECS)
def test_fit_waits_at_most_once_per_logging_interval(spec, digits, monkeypatch, log_interval):
    """6 steps: ceil(6 / interval) reads, plus the epoch's timing synchronize and the evaluation's read."""
    backend = get_backend(*spec)
    model = every_state_model(backend, channels=8)
    with counted_syncs(monkeypatch, backend) as waits:
        fit(model, digits, epochs=1, batch_size=BATCH, optimizer=Adam(model.parameters(), lr=1e-3),
            augment=_augment(), progress=False, log=lambda line: None, log_interval=log_interval)
    assert len(waits) <= math.ceil(6 / log_interval) + 2, waits


@pytest.mark.parametrize("spec", SPECS)
def test_float16_fit_with_a_grad_scaler_waits_once_per_step_more(spec, digits, monkeypatch):
    """The scaler's inf/NaN check is the one extra read of a step: 6 steps, log interval 3."""
    backend = get_backend(*spec)
    model = every_state_model(backend, channels=8, dtype="float16")
    with counted_syncs(monkeypatch, backend) as waits:
        fit(model, digits, epochs=1, batch_size=BATCH, optimizer=Adam(model.parameters(), lr=1e-3),
            augment=_augment(), progress=False, log=lambda line: None, log_interval=3, scaler=GradScaler())
    assert len(waits) <= 6 + 2 + 2, waits


@pytest.mark.skipif(CUDA_COUNT < 2, reason="needs two usable CUDA devices for CuPy")
def test_a_training_run_on_the_second_gpu_puts_nothing_on_the_first(digits):
    """Every buffer, gradient, optimizer state and batch of a run on cuda:1 lives there (arrays on GPU 0 would
    either raise when mixed or show up in GPU 0's memory pool)."""
    import cupy

    backend = get_backend("cupy", 1)
    with cupy.cuda.Device(0):
        cupy.get_default_memory_pool().free_all_blocks()
        before = cupy.get_default_memory_pool().used_bytes()
    model = every_state_model(backend, channels=8)
    optimizer = Adam(model.parameters(), lr=1e-3)
    history = fit(model, digits, epochs=1, batch_size=BATCH, optimizer=optimizer, augment=_augment(),
                  progress=False, log=lambda line: None)
    assert np.isfinite(history.train_loss).all()
    for p in model.parameters():
        assert p.data.device.id == 1 and p.grad.device.id == 1
    assert all(a.device.id == 1 for state in optimizer.state.values() for a in state.values() if hasattr(a, "device"))
    with cupy.cuda.Device(0):
        assert cupy.get_default_memory_pool().used_bytes() == before


@pytest.mark.skipif(CUDA_COUNT == 0, reason=NO_CUPY)
def test_cli_train_on_cupy_for_one_epoch(tmp_path):
    metrics = tmp_path / "m.json"
    assert main(["train", "--backend", "cupy", "--epochs", "1", "--limit", "200", "--batch-size", "50",
                 "--metrics-out", str(metrics)]) == 0
    record = json.loads(metrics.read_text())
    assert record["backend"] == "cupy" and record["device"] == "cuda:0" and np.isfinite(record["train_loss"]).all()
