"""What is timed: xpconv's convolution on one backend, torch's own convolution, and a plain GEMM.

Each :class:`Runner` builds, for a :class:`~xpconv.bench.suite.Layer`, three
callables - forward, backward, forward+backward - that do what a training step
of a conv layer does, and knows how to time and measure them on its device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import timing

__all__ = ["BACKEND_CHOICES", "Case", "Runner", "make_runner"]

BACKEND_CHOICES = ("numpy", "cupy", "torch", "torch-ref")


@dataclass
class Case:
    forward: Callable[[], object]
    backward: Callable[[], object]
    step: Callable[[], object]


def _inputs(layer, rng: np.random.Generator):
    """float32 x, weight, bias and grad_output on the host, scaled like a real layer."""
    x = rng.standard_normal(layer.x_shape, dtype=np.float32)
    w = rng.standard_normal(layer.w_shape, dtype=np.float32) / np.float32(np.sqrt(np.prod(layer.w_shape[1:])))
    b = rng.standard_normal(layer.o, dtype=np.float32)
    dy = rng.standard_normal(layer.y_shape, dtype=np.float32)
    return x, w, b, dy


class Runner:
    """One backend under test (``name``) on one device: cases, a GEMM, a timer and a memory probe."""

    name: str
    device: str
    measures_memory = False

    def case(self, layer, rng, max_workspace_bytes) -> Case:
        raise NotImplementedError

    def gemm(self, m: int, rng) -> Callable[[], object]:
        """A plain (m, m) @ (m, m) float32 matrix product on this backend."""
        a = rng.standard_normal((m, m), dtype=np.float32)
        a, b = self._asarray(a), self._asarray(a.T.copy())
        return lambda: a @ b

    def shaped_gemm(self, layer, rng) -> Callable[[], object]:
        """The layer's forward product as one plain GEMM: (G, O/G, Cg*K) @ (G, Cg*K, N*L), same FLOPs."""
        g, ck = layer.groups, layer.c // layer.groups * layer.k ** layer.nd
        a = self._asarray(rng.standard_normal((g, layer.o // g, ck), dtype=np.float32))
        b = self._asarray(rng.standard_normal((g, ck, layer.n * math.prod(layer.out_size)), dtype=np.float32))
        return lambda: a @ b

    def times(self, fn, repeats: int, warmup: int) -> list[float]:
        return timing.wall_times(fn, repeats, warmup)

    def peak_bytes(self, fn) -> int | None:
        """Peak bytes allocated during one call of ``fn``, or None where this backend cannot tell."""
        return None

    def _asarray(self, a):
        raise NotImplementedError


class XpconvRunner(Runner):
    """xpconv's engine on a backend, called as the Conv layers call it (forward keeps its columns)."""

    def __init__(self, name: str, torch_device: str):
        from ..backends import get_backend

        self.name = name
        self.backend = get_backend(name, torch_device if name == "torch" else None)
        self.device = str(self.backend.device)
        self.on_gpu = name == "cupy" or self.device.startswith("cuda")
        self.measures_memory = name == "numpy" or self.on_gpu

    def _asarray(self, a):
        return self.backend.asarray(a)

    def case(self, layer, rng, max_workspace_bytes) -> Case:
        from ..functional import _backward, _forward

        x, w, b, dy = (self._asarray(a) for a in _inputs(layer, rng))

        def forward():
            return _forward(layer.nd, x, w, b, layer.stride, layer.pad, 1, layer.groups, False,
                            max_workspace_bytes, keep_cols=True)

        ctx = forward()[1]
        return Case(forward=forward,
                    backward=lambda: _backward(ctx, dy, max_workspace_bytes),
                    step=lambda: _backward(forward()[1], dy, max_workspace_bytes))

    def times(self, fn, repeats, warmup):
        if self.name == "cupy":
            return timing.cupy_times(fn, repeats, warmup)
        if self.on_gpu:
            return timing.torch_cuda_times(fn, repeats, warmup)
        return timing.wall_times(fn, repeats, warmup)

    def peak_bytes(self, fn):
        if self.name == "numpy":
            return timing.tracemalloc_peak(fn)
        if self.name == "cupy":
            return timing.cupy_pool_peak(fn)
        if self.on_gpu:
            return timing.torch_cuda_peak(fn)
        return None


class TorchRefRunner(Runner):
    """torch's own ``torch.nn.functional.conv{1,2,3}d`` with autograd: the reference to beat."""

    name = "torch-ref"

    def __init__(self, torch_device: str):
        import torch

        self.torch = torch
        self.device = torch_device
        self.on_gpu = torch_device.startswith("cuda")
        if self.on_gpu and not torch.cuda.is_available():
            raise RuntimeError("torch has no usable CUDA device")
        self.measures_memory = self.on_gpu

    def _asarray(self, a):
        return self.torch.asarray(a, device=self.device)

    def case(self, layer, rng, max_workspace_bytes) -> Case:
        conv = getattr(self.torch.nn.functional, f"conv{layer.nd}d")
        x, w, b, dy = (self._asarray(a) for a in _inputs(layer, rng))
        for t in (x, w, b):
            t.requires_grad_(True)

        def forward():
            return conv(x, w, b, stride=layer.stride, padding=layer.pad, groups=layer.groups)

        y = forward()
        grad = self.torch.autograd.grad
        return Case(forward=forward,
                    backward=lambda: grad(y, (x, w, b), dy, retain_graph=True),
                    step=lambda: grad(forward(), (x, w, b), dy))

    def times(self, fn, repeats, warmup):
        if self.on_gpu:
            return timing.torch_cuda_times(fn, repeats, warmup)
        return timing.wall_times(fn, repeats, warmup)

    def peak_bytes(self, fn):
        return timing.torch_cuda_peak(fn) if self.on_gpu else None


def make_runner(name: str, torch_device: str = "cpu") -> Runner:
    """The runner for backend ``name``; raises (ImportError, RuntimeError, ...) when it cannot run here."""
    if name not in BACKEND_CHOICES:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKEND_CHOICES)}")
    if name == "torch-ref":
        return TorchRefRunner(torch_device)
    return XpconvRunner(name, torch_device)
