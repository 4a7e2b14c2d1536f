"""What is timed: xpconv's convolution on one backend, torch's and JAX's own convolutions, and a plain GEMM.

Each :class:`Runner` builds, for a :class:`~xpconv.bench.suite.Layer`, three
callables - forward, backward, forward+backward - that do what a training step
of a conv layer does, and times and measures them through its
:class:`~xpconv.backends.Backend` (wall clock on the CPU, device time on a GPU).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .._geometry import make_geometry
from .._ops import ALGORITHMS, choose_algorithm, conv, conv_grads
from ..backends import LIBRARY_NAMES, Backend, get_backend

__all__ = ["BACKEND_CHOICES", "Case", "Runner", "jax_conv", "layer_geometry", "layer_inputs", "make_runner"]

BACKEND_CHOICES = (*LIBRARY_NAMES, "torch-ref", "jax-ref")


@dataclass
class Case:
    forward: Callable[[], object]
    backward: Callable[[], object]
    step: Callable[[], object]


def layer_inputs(layer, rng: np.random.Generator):
    """float32 x, weight, bias and grad_output on the host, scaled like a real layer."""
    x = rng.standard_normal(layer.x_shape, dtype=np.float32)
    w = rng.standard_normal(layer.w_shape, dtype=np.float32) / np.float32(np.sqrt(np.prod(layer.w_shape[1:])))
    b = rng.standard_normal(layer.o, dtype=np.float32)
    dy = rng.standard_normal(layer.y_shape, dtype=np.float32)
    return x, w, b, dy


class Runner:
    """One backend under test (``name``) on one device: cases, a GEMM, a timer and a memory probe."""

    name: str
    backend: Backend

    @property
    def device(self) -> str:
        return self.backend.device_name

    @property
    def on_gpu(self) -> bool:
        return self.backend.is_gpu

    @property
    def measures_memory(self) -> bool:
        return self.backend.measures_memory

    def case(self, layer, rng, max_workspace_bytes) -> Case:
        raise NotImplementedError

    def runs(self, layer) -> bool:
        """Whether this runner can compute ``layer`` (an algorithm may be limited to some geometries)."""
        return True

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
        """Seconds per call of ``fn``: the backend's clock (CUDA events on a GPU)."""
        return self.backend.times(fn, repeats, warmup)

    def peak_bytes(self, fn) -> int | None:
        """Peak bytes allocated during one call of ``fn``, or None where this backend cannot tell."""
        return self.backend.peak_bytes(fn)

    def _asarray(self, a):
        return self.backend.asarray(a)


def layer_geometry(layer):
    """The :class:`~xpconv._geometry.ConvGeometry` of a suite layer."""
    return make_geometry((layer.k,) * layer.nd, layer.stride, layer.pad, 1, layer.groups)


class XpconvRunner(Runner):
    """xpconv's engine on a backend, called as the Conv layers call it (forward keeps its columns), with one
    ``algorithm``; named ``backend:algorithm`` unless it is ``"auto"``."""

    def __init__(self, backend: Backend, algorithm: str = "auto"):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}; choose from {', '.join(ALGORITHMS)}")
        self.name = backend.name if algorithm == "auto" else f"{backend.name}:{algorithm}"
        self.backend = backend
        self.algorithm = algorithm
        self.chose: dict[str, str] = {}          # layer name -> the algorithm the first forward ran (auto's choice)

    def runs(self, layer) -> bool:
        try:
            choose_algorithm(self.algorithm, layer_geometry(layer), layer.c)
        except ValueError:
            return False
        return True

    def case(self, layer, rng, max_workspace_bytes) -> Case:
        x, w, b, dy = (self._asarray(a) for a in layer_inputs(layer, rng))
        geom = layer_geometry(layer)

        def forward():
            return conv(x, w, b, geom, max_workspace_bytes=max_workspace_bytes, keep_cols=True,
                        algorithm=self.algorithm)

        ctx = forward()[1]
        self.chose[layer.name] = ctx.algorithm
        return Case(forward=forward,
                    backward=lambda: conv_grads(ctx, dy, max_workspace_bytes=max_workspace_bytes),
                    step=lambda: conv_grads(forward()[1], dy, max_workspace_bytes=max_workspace_bytes))


class TorchRefRunner(Runner):
    """torch's own ``torch.nn.functional.conv{1,2,3}d`` with autograd: the reference to beat."""

    name = "torch-ref"

    def __init__(self, backend: Backend):
        import torch

        self.torch = torch
        self.backend = backend

    def case(self, layer, rng, max_workspace_bytes) -> Case:
        torch_conv = getattr(self.torch.nn.functional, f"conv{layer.nd}d")
        x, w, b, dy = (self._asarray(a) for a in layer_inputs(layer, rng))
        for t in (x, w, b):
            t.requires_grad_(True)

        def forward():
            return torch_conv(x, w, b, stride=layer.stride, padding=layer.pad, groups=layer.groups)

        y = forward()
        grad = self.torch.autograd.grad
        return Case(forward=forward,
                    backward=lambda: grad(y, (x, w, b), dy, retain_graph=True),
                    step=lambda: grad(forward(), (x, w, b), dy))


def jax_conv(x, w, b, stride, padding, dilation, groups):
    """y = conv(x, w) + b in JAX, channels-first like xpconv: ``jax.lax.conv_general_dilated`` at full float32
    precision (``Precision.HIGHEST``: no TF32 or bfloat16 passes on an accelerator); ``stride``, ``dilation``
    per axis, ``padding`` (lo, hi) per axis, ``b`` None or (O,)."""
    from jax import lax

    nd = x.ndim - 2
    axes = "DHW"[-nd:]
    dims = lax.conv_dimension_numbers(x.shape, w.shape, (f"NC{axes}", f"OI{axes}", f"NC{axes}"))
    y = lax.conv_general_dilated(x, w, tuple(stride), [tuple(p) for p in padding], rhs_dilation=tuple(dilation),
                                 dimension_numbers=dims, feature_group_count=groups,
                                 precision=lax.Precision.HIGHEST)
    return y if b is None else y + b.reshape((1, -1) + (1,) * nd)


class JaxRefRunner(Runner):
    """JAX's own convolution (:func:`jax_conv`) under ``jax.jit``, differentiated with ``jax.vjp``; every call
    waits for its results (``block_until_ready``), so the wall clock times the work, not its dispatch.

    Forward is the jitted convolution, backward the jitted vjp function of a forward done once (as torch-ref's
    backward reuses a saved graph), forward+backward one jitted function returning y and the three gradients.
    XLA's CPU threads are set before JAX is imported (:func:`xpconv.bench.environment.set_xla_threads`)."""

    name = "jax-ref"

    def __init__(self, backend: Backend):
        import jax

        self.jax = jax
        self.backend = backend                       # the host clock; JAX arrays live on jax's default device
        self._device = jax.devices()[0]

    @property
    def device(self) -> str:
        return f"{self._device.platform}:{self._device.id}"

    @property
    def on_gpu(self) -> bool:
        return self._device.platform == "gpu"

    @property
    def measures_memory(self) -> bool:
        return False

    def peak_bytes(self, fn) -> int | None:
        return None                                  # XLA's buffers are not seen by tracemalloc

    def _asarray(self, a):
        return self.jax.device_put(a, self._device)

    def _jitted(self, fn):
        jitted = self.jax.jit(fn)
        return lambda *args: self.jax.block_until_ready(jitted(*args))

    def gemm(self, m: int, rng) -> Callable[[], object]:
        a = rng.standard_normal((m, m), dtype=np.float32)
        a, b = self._asarray(a), self._asarray(a.T.copy())
        matmul = self._jitted(lambda p, q: p @ q)
        return lambda: matmul(a, b)

    def shaped_gemm(self, layer, rng) -> Callable[[], object]:
        g, ck = layer.groups, layer.c // layer.groups * layer.k ** layer.nd
        a = self._asarray(rng.standard_normal((g, layer.o // g, ck), dtype=np.float32))
        b = self._asarray(rng.standard_normal((g, ck, layer.n * math.prod(layer.out_size)), dtype=np.float32))
        matmul = self._jitted(lambda p, q: p @ q)
        return lambda: matmul(a, b)

    def case(self, layer, rng, max_workspace_bytes) -> Case:
        jax = self.jax
        x, w, b, dy = (self._asarray(a) for a in layer_inputs(layer, rng))
        geom = layer_geometry(layer)

        def f(x, w, b):
            return jax_conv(x, w, b, geom.stride, geom.padding, geom.dilation, geom.groups)

        def step(x, w, b, dy):
            y, vjp = jax.vjp(f, x, w, b)
            return y, vjp(dy)

        forward = self._jitted(f)
        backward = self._jitted(lambda vjp, dy: vjp(dy))
        vjp = jax.vjp(jax.jit(f), x, w, b)[1]
        step_fn = self._jitted(step)
        return Case(forward=lambda: forward(x, w, b), backward=lambda: backward(vjp, dy),
                    step=lambda: step_fn(x, w, b, dy))


def make_runner(name: str, torch_device: str = "cpu", algorithm: str = "auto") -> Runner:
    """The runner for backend ``name`` (xpconv's with ``algorithm``); raises (ImportError, RuntimeError, ...) when
    it cannot run here."""
    if name not in BACKEND_CHOICES:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKEND_CHOICES)}")
    if name == "torch-ref":
        return TorchRefRunner(get_backend("torch", torch_device))
    if name == "jax-ref":
        return JaxRefRunner(get_backend("numpy"))
    return XpconvRunner(get_backend(name, torch_device if name == "torch" else None), algorithm)
