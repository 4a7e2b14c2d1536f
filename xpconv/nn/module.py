"""Module and Parameter: the containers every layer is built from.

A module holds its Parameters (``.data`` and ``.grad`` arrays) and buffers on
one :class:`~xpconv.backends.Backend`, chosen at construction; ``forward``
caches what ``backward`` needs, and ``backward(grad_output)`` returns
dL/d(input) while accumulating dL/d(parameter) into each ``.grad``.  Every
``forward`` and ``backward`` of every layer runs under its backend's
:meth:`~xpconv.backends.Backend.activate`, so whatever it allocates lands on
the layer's device, not the current one.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import numpy as np

from .._namespace import namespace
from .._typing import Array, Device
from ..backends import Backend, get_backend, to_numpy

__all__ = ["Parameter", "Module"]

_M = TypeVar("_M", bound="Module")
_F = TypeVar("_F", bound=Callable[..., Any])


def _on_device(method: _F) -> _F:
    """``method(self, ...)`` run under ``self.backend.activate()``."""
    @functools.wraps(method)
    def run(self: Module, *args: Any, **kwargs: Any) -> Any:
        with self.backend.activate():
            return method(self, *args, **kwargs)
    return run  # type: ignore[return-value]


class Parameter:
    """A trainable array ``data`` and its accumulated gradient ``grad`` (same shape, dtype, device)."""

    def __init__(self, data: Array) -> None:
        self.data: Array = data
        with Backend.from_array(data).activate():
            self.grad: Array = namespace(data).zeros_like(data)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: parameters, buffers and child modules are registered by attribute assignment."""

    _parameters: dict[str, Parameter]
    _buffers: dict[str, bool]
    _modules: dict[str, Module]
    arch: dict[str, Any] | None = None  # the record xpconv.models.build_model rebuilds the model from, if any

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Run the ``forward`` and ``backward`` a layer defines under its backend's device."""
        super().__init_subclass__(**kwargs)
        for name in ("forward", "backward"):
            if name in cls.__dict__:
                setattr(cls, name, _on_device(cls.__dict__[name]))

    def __init__(self, *, backend: str | Backend | None = None, device: Device = None, dtype: str = "float32") -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_modules", {})
        self.backend: Backend = get_backend(backend, device)
        self.backend.dtype(dtype)  # validates the name
        self.dtype_name: str = dtype
        self.training = True

    @property
    def dtype(self) -> Any:
        """This module's floating dtype in its backend's namespace."""
        return self.backend.dtype(self.dtype_name)

    def __setattr__(self, name: str, value: Any) -> None:
        """Register Parameters and Modules by assignment; assigning to a buffer's name keeps it a buffer
        (as in PyTorch), so ``bn.running_mean = new`` stays in ``state_dict()``."""
        buffers = self.__dict__.get("_buffers", {})
        if name in buffers and not isinstance(value, (Parameter, Module)):
            object.__setattr__(self, name, value)
            return
        for registry in ("_parameters", "_buffers", "_modules"):
            self.__dict__.get(registry, {}).pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value: Array | None) -> None:
        """Keep a non-trainable array (e.g. running statistics) that moves and saves with the module.

        A None buffer (as torch's ``BatchNorm(track_running_stats=False)``) is neither moved nor saved.
        """
        object.__setattr__(self, name, value)
        self._buffers[name] = True

    def _present_buffers(self) -> list[str]:
        """The names of the buffers that hold an array (not None)."""
        return [name for name in self._buffers if getattr(self, name) is not None]

    # -- running ---------------------------------------------------------------------------------
    def __call__(self, x: Array) -> Array:
        return self.forward(x)

    def forward(self, x: Array) -> Array:  # pragma: no cover - every layer overrides it
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def backward(self, grad_output: Array) -> Array:  # pragma: no cover - every layer overrides it
        raise NotImplementedError(f"{type(self).__name__} does not define backward()")

    def _need_cache(self, cache: Any, what: str = "forward") -> Any:
        """The cached forward state, or a clear error when backward comes without a training forward."""
        if cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward() needs a preceding {what} in training mode "
                               "(model.train()); the cache is cleared after each backward")
        return cache

    def _check_grad_shape(self, grad_output: Array, expected_shape: tuple[int, ...]) -> None:
        """ValueError naming both shapes unless ``grad_output`` has ``expected_shape`` (the forward output's).

        Call it in ``backward`` before dropping the forward cache, so a rejected gradient leaves it intact.
        """
        got, expected = tuple(grad_output.shape), tuple(expected_shape)
        if got != expected:
            raise ValueError(f"{type(self).__name__}.backward() expects grad_output of the forward output's "
                             f"shape {expected}, got {got}")

    # -- parameters and modes --------------------------------------------------------------------
    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for name, p in self._parameters.items():
            yield prefix + name, p
        for name, m in self._modules.items():
            yield from m.named_parameters(f"{prefix}{name}.")

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """The direct child modules with their names, in registration order."""
        yield from self._modules.items()

    def modules(self) -> Iterator[Module]:
        yield self
        for m in self._modules.values():
            yield from m.modules()

    def zero_grad(self) -> None:
        with self.backend.activate():
            for p in self.parameters():
                p.grad = namespace(p.data).zeros_like(p.data)

    def train(self: _M, mode: bool = True) -> _M:
        for m in self.modules():
            m.training = mode
            m._clear_cache()
        return self

    def eval(self: _M) -> _M:
        return self.train(False)

    def _clear_cache(self) -> None:
        """Drop whatever forward kept for backward (layers with a cache override this)."""

    def requires_input_grad(self, needed: bool = True) -> None:
        """Say whether :meth:`backward` must return dL/d(input).  With ``needed=False`` (the input is data, as
        for a model's first layer) a layer that can skip that work does, and its backward returns None: a
        convolution then computes only dL/dW and dL/db.  Containers pass it to the layer that takes their
        input; the other layers ignore it.  :func:`xpconv.training.fit` sets it for the steps of a run.
        """

    # -- moving and saving ----------------------------------------------------------------------
    def to(self: _M, backend: str | Backend, device: Device = None) -> _M:
        """Move every parameter, gradient and buffer to ``backend`` (a name or Backend); returns self.

        Each array goes through :meth:`Backend.asarray`: between libraries on the same device (NumPy, torch
        on the CPU and array-api-strict; CuPy and torch on one GPU) by DLPack, without a copy, so the moved
        arrays share memory with the module's arrays from before the move, as torch's ``Module.to`` returns the
        same tensors when nothing changes; between the CPU and a GPU, a copy.  Nothing the caller gave is
        modified by sharing: xpconv rebinds ``.data`` and buffers on every update (it never writes into them),
        and only gradients accumulate in place, into ``.grad`` arrays the module allocated itself.
        """
        target = get_backend(backend, device)
        for m in self.modules():
            for p in m._parameters.values():
                p.data = target.asarray(p.data)
                p.grad = target.asarray(p.grad)
            for name in m._present_buffers():
                object.__setattr__(m, name, target.asarray(getattr(m, name)))
            m._clear_cache()
            object.__setattr__(m, "backend", target)
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers as host NumPy copies, keyed by dotted names."""
        state = {}
        for prefix, m in self._named_modules():
            for name, p in m._parameters.items():
                state[prefix + name] = np.array(to_numpy(p.data), copy=True)
            for name in m._present_buffers():
                state[prefix + name] = np.array(to_numpy(getattr(m, name)), copy=True)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load arrays saved by :meth:`state_dict`; on any mismatch raise ValueError and change nothing."""
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"state dict does not match {type(self).__name__}: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        host = {}
        for key, value in own.items():
            got = np.array(to_numpy(state[key]), copy=True)  # a copy: the model never aliases the caller's arrays
            if got.shape != value.shape:
                raise ValueError(f"state dict entry {key!r} has shape {got.shape}, the model expects {value.shape}")
            if got.dtype.kind not in "biuf":
                raise ValueError(f"state dict entry {key!r} has non-numeric dtype {got.dtype}")
            host[key] = got
        # Convert everything first, then assign: a failure part-way leaves the model unchanged.
        new = {}
        for prefix, m in self._named_modules():
            for name in (*m._parameters, *m._present_buffers()):
                old = m._parameters[name].data if name in m._parameters else getattr(m, name)
                new[prefix + name] = m.backend.asarray(host[prefix + name], dtype=old.dtype)
        for prefix, m in self._named_modules():
            for name, p in m._parameters.items():
                p.data = new[prefix + name]
            for name in m._present_buffers():
                object.__setattr__(m, name, new[prefix + name])
            m._clear_cache()

    def _named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, m in self._modules.items():
            yield from m._named_modules(f"{prefix}{name}.")

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        children = "".join(f"\n  ({n}): " + repr(m).replace("\n", "\n  ") for n, m in self._modules.items())
        head = f"{type(self).__name__}({self.extra_repr()}"
        return head + (children + "\n)" if children else ")")
