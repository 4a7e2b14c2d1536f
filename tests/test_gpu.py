"""GPU: arrays stay on the device end to end, GPU results match NumPy's, and the CPU fallbacks say so.

The ``gpu`` tests run on CuPy (and torch on CUDA) only where a CUDA device is usable and are skipped
with a reason otherwise. Inside every forward and backward, any device -> host copy raises
(``no_host_copies``), so a silent round trip through NumPy fails the test instead of slowing it down.
The unmarked tests at the end check, on any machine, what happens without a GPU.
"""
from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
from array_api_compat import device

import xpconv
from conftest import CUDA_COUNT, TORCH_CUDA, as_numpy, f32_tol, make_backend
from xpconv import backends, nn
from xpconv import functional as F
from xpconv.backends import library_of
from xpconv.cli import main

NO_CUPY = "CuPy with a usable CUDA device is not available"
GPU_SPECS = [
    pytest.param("cupy", id="cupy", marks=[pytest.mark.gpu, pytest.mark.skipif(CUDA_COUNT == 0, reason=NO_CUPY)]),
    pytest.param("torch:cuda", id="torch-cuda", marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not TORCH_CUDA, reason="torch with a usable CUDA device is not available")]),
]
F64_TOL = {"rtol": 1e-9, "atol": 1e-11}


def tol(backend, dtype):
    """float64: tight; float32: 1e-4, loosened where TF32 is active (conftest.f32_tol)."""
    return F64_TOL if dtype == "float64" else f32_tol(backend, 1e-4, 1e-5)


def _refuse(*args, **kwargs):
    raise AssertionError("device -> host copy inside a GPU forward/backward")


@contextlib.contextmanager
def no_host_copies(monkeypatch):
    """Inside the block, copying a CuPy array or a CUDA torch tensor to the host raises AssertionError."""
    with monkeypatch.context() as m:
        if CUDA_COUNT:
            import cupy

            for name in ("get", "tolist"):
                m.setattr(cupy.ndarray, name, _refuse)
            m.setattr(cupy, "asnumpy", _refuse)
        if TORCH_CUDA:
            import torch

            for name in ("cpu", "numpy", "tolist"):
                m.setattr(torch.Tensor, name, _refuse)
        yield


def assert_on(a, ref, backend):
    """``a`` is an array of ``backend``'s library on the same device as ``ref`` (the input)."""
    assert library_of(a) == backend.name, f"expected a {backend.name} array, got {type(a).__name__}"
    assert device(a) == device(ref) == backend.device


def assert_close(gpu_result, numpy_result, dtype):
    tolerance = tol(backends.Backend.from_array(gpu_result), dtype)
    np.testing.assert_allclose(as_numpy(gpu_result), as_numpy(numpy_result), **tolerance)


@pytest.mark.parametrize("spec", GPU_SPECS)
def test_guard_catches_host_copies(spec, monkeypatch):
    backend = make_backend(spec)
    x = backend.asarray(np.ones((2, 3)), dtype="float32")
    with no_host_copies(monkeypatch):
        with pytest.raises(AssertionError, match="device -> host"):
            xpconv.to_numpy(x)
        with pytest.raises(AssertionError, match="device -> host"):
            xpconv.get_backend("numpy").asarray(x)
    np.testing.assert_array_equal(xpconv.to_numpy(x), np.ones((2, 3), np.float32))  # restored afterwards


CONV_CASES = [  # (nd, x shape, weight shape, keyword arguments)
    (1, (2, 3, 11), (4, 3, 3), {"stride": 2, "padding": 1}),
    (2, (2, 4, 9, 8), (6, 2, 3, 3), {"padding": "same", "dilation": 2, "groups": 2}),
    (2, (3, 3, 7, 7), (5, 3, 1, 1), {}),
    (3, (1, 2, 5, 6, 4), (3, 2, 2, 3, 2), {"stride": (1, 2, 1), "padding": 1}),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("nd, x_shape, w_shape, kwargs", CONV_CASES)
@pytest.mark.parametrize("spec", GPU_SPECS)
def test_functional_conv_stays_on_device_and_matches_numpy(spec, nd, x_shape, w_shape, kwargs, dtype, rng,
                                                           monkeypatch):
    conv, conv_backward = getattr(F, f"conv{nd}d"), getattr(F, f"conv{nd}d_backward")
    host = [rng.standard_normal(s) for s in (x_shape, w_shape, (w_shape[0],))]
    cpu, gpu = xpconv.get_backend("numpy"), make_backend(spec)
    x, w, b = (gpu.asarray(a, dtype=dtype) for a in host)
    with no_host_copies(monkeypatch):
        y = conv(x, w, b, **kwargs)
        dy = gpu.xp.ones_like(y) * 0.5 + y
        grads = conv_backward(dy, x, w, **kwargs)
    for out in (y, *grads):
        assert_on(out, x, gpu)
    xc, wc, bc = (cpu.asarray(a, dtype=dtype) for a in host)
    yc = conv(xc, wc, bc, **kwargs)
    assert_close(y, yc, dtype)
    for got, want in zip(grads, conv_backward(np.ones_like(yc) * 0.5 + yc, xc, wc, **kwargs), strict=True):
        assert_close(got, want, dtype)


def small_model(backend, dtype):
    """conv-batchnorm-relu-maxpool-convtranspose-avgpool-flatten-linear on (N, 2, 8, 8) images, 5 classes."""
    kw = {"backend": backend, "dtype": dtype}
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, seed=0, **kw), nn.BatchNorm2d(4, **kw), nn.ReLU(**kw),
                         nn.MaxPool2d(2, **kw), nn.ConvTranspose2d(4, 3, 2, stride=2, seed=1, **kw),
                         nn.AvgPool2d(2, **kw), nn.Flatten(**kw), nn.Linear(48, 5, seed=2, **kw))


def _train_step(model, x, labels, monkeypatch):
    """(logits, loss, dL/dx) of one forward/backward; only the loss value (a Python float) leaves the device."""
    model.zero_grad()
    with no_host_copies(monkeypatch):
        logits = model(x)
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(logits, labels)
    with no_host_copies(monkeypatch):
        grad_x = model.backward(loss_fn.backward())
    return logits, loss, grad_x


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("spec", GPU_SPECS)
def test_model_trains_on_device_and_matches_numpy(spec, dtype, rng, monkeypatch):
    host_x, labels = rng.standard_normal((6, 2, 8, 8)), rng.integers(0, 5, size=6)
    gpu = make_backend(spec)
    model, reference = small_model(gpu, dtype), small_model("numpy", dtype)
    x = gpu.asarray(host_x, dtype=dtype)
    logits, loss, grad_x = _train_step(model, x, labels, monkeypatch)
    ref_logits, ref_loss, ref_grad_x = _train_step(reference, reference.backend.asarray(host_x, dtype=dtype),
                                                   labels, monkeypatch)
    for out in (logits, grad_x):
        assert_on(out, x, gpu)
    assert_close(logits, ref_logits, dtype)
    assert_close(grad_x, ref_grad_x, dtype)
    np.testing.assert_allclose(loss, ref_loss, **tol(gpu, dtype))
    ref_params = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        for a in (p.data, p.grad):
            assert_on(a, x, gpu)
        assert_close(p.grad, ref_params[name].grad, dtype)


@pytest.mark.parametrize("spec", GPU_SPECS)
def test_layer_built_on_the_gpu_keeps_parameters_and_gradients_there(spec, rng, monkeypatch):
    gpu = make_backend(spec)
    layer = nn.Conv2d(3, 4, 3, padding=1, backend=gpu, seed=0)
    x = gpu.asarray(rng.standard_normal((2, 3, 6, 6)), dtype="float32")
    with no_host_copies(monkeypatch):
        y = layer(x)
        grad_x = layer.backward(gpu.xp.ones_like(y))
    for a in (y, grad_x, layer.weight.data, layer.weight.grad, layer.bias.data, layer.bias.grad):
        assert_on(a, x, gpu)
    moved = small_model("numpy", "float32").to(gpu)
    for p in moved.parameters():
        assert_on(p.data, x, gpu)


@pytest.mark.gpu
@pytest.mark.skipif(CUDA_COUNT < 2, reason="needs two usable CUDA devices for CuPy")
def test_cupy_layer_on_the_second_gpu_computes_there(rng, monkeypatch):
    gpu1 = xpconv.get_backend("cupy", 1)
    layer = nn.Conv2d(3, 4, 3, backend=gpu1, seed=0)
    x = gpu1.asarray(rng.standard_normal((2, 3, 6, 6)), dtype="float64")
    with no_host_copies(monkeypatch):
        y = layer(x)
        grad_x = layer.backward(gpu1.xp.ones_like(y))
    for a in (y, grad_x, layer.weight.grad):
        assert_on(a, x, gpu1)
    reference = nn.Conv2d(3, 4, 3, backend="numpy", dtype="float64", seed=0)
    assert_close(y, reference(reference.backend.asarray(as_numpy(x))), "float64")


@pytest.mark.gpu
@pytest.mark.skipif(CUDA_COUNT == 0, reason=NO_CUPY)
def test_auto_picks_cupy_without_warning_and_info_lists_the_gpu(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backend = xpconv.get_backend("auto")
    assert backend.name == "cupy" and backend.device.id == 0
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "cuda:0" in out and "falls back to NumPy" not in out


# -- without a GPU (runs everywhere) ------------------------------------------------------------------
def test_auto_without_gpu_falls_back_to_numpy_with_a_warning(monkeypatch):
    monkeypatch.setattr(backends, "cuda_device_count", lambda: 0)
    with pytest.warns(RuntimeWarning, match="no usable CUDA device for CuPy, falling back to NumPy"):
        backend = xpconv.get_backend("auto")
    assert backend.name == "numpy" and backend.device == "cpu"


def test_cupy_not_installed_names_the_install_command(monkeypatch):
    real = backends.importlib.import_module

    def import_without_cupy(name, *args):
        if name == "cupy":
            raise ImportError("No module named 'cupy'")
        return real(name, *args)

    monkeypatch.setattr(backends.importlib, "import_module", import_without_cupy)
    with pytest.raises(xpconv.BackendUnavailableError, match=r'not installed.*pip install "xpconv\[cuda12\]"'):
        xpconv.get_backend("cupy")


def test_cupy_without_a_usable_device_says_so_and_names_the_install_command(monkeypatch):
    monkeypatch.setattr(backends, "_import", lambda name: object())  # CuPy "installed"
    monkeypatch.setattr(backends, "cuda_device_count", lambda: 0)
    with pytest.raises(xpconv.BackendUnavailableError,
                       match=r'no CUDA device is usable.*pip install "xpconv\[cuda12\]"'):
        xpconv.get_backend("cupy")


def test_info_without_gpu_explains_the_fallback_and_the_container_toolkit(monkeypatch, capsys):
    monkeypatch.setattr(backends, "cuda_device_count", lambda: 0)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    cupy_row = next(line for line in out.splitlines() if line.startswith("cupy "))
    assert " no " in cupy_row
    assert "'--backend auto' falls back to NumPy" in out
    assert "NVIDIA Container Toolkit" in out and "--gpus all" in out
