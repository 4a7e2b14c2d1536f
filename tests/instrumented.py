"""A CPU stand-in for a GPU profiler: array-api-strict with every namespace call, array operator and host read counted.

``instrument(monkeypatch)`` wraps, for the duration of a test, every function of the ``array_api_strict``
namespace and every arithmetic or indexing operator of its arrays, and counts each call by name:

- in ``ops`` when it runs under :meth:`xpconv.backends.Backend.activate` (the device context), in ``outside``
  when it does not (on CuPy, such an op would allocate or launch on the *current* GPU, not the layer's);
- host reads, in ``reads``: ``float()``, ``int()``, ``bool()``, ``complex()``, ``operator.index()``, NumPy's
  ``__array__`` and DLPack exports (what ``to_numpy`` does).  On a GPU each is a wait for the device.
- uploads, in ``uploads``: ``asarray`` or ``from_dlpack`` of a host object (NumPy array, list or scalar) inside the
  device context.

The counts stand for kernel launches and synchronizations that a GPU would see; the GPU tests check the real ones.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import array_api_strict

from xpconv.backends import library_of

# namespace functions that only inspect dtypes or shapes: no array work, no device
_INSPECTION = {"isdtype", "result_type", "can_cast", "finfo", "iinfo", "broadcast_shapes",
               "get_array_api_strict_flags", "set_array_api_strict_flags", "reset_array_api_strict_flags"}
_OPERATORS = ("__abs__", "__add__", "__and__", "__floordiv__", "__getitem__", "__iadd__", "__iand__",
              "__ifloordiv__", "__imatmul__", "__imod__", "__imul__", "__invert__", "__ior__", "__ipow__", "__isub__",
              "__itruediv__", "__matmul__", "__mod__", "__mul__", "__neg__", "__or__", "__pos__", "__pow__",
              "__radd__", "__rand__", "__rfloordiv__", "__rmatmul__", "__rmod__", "__rmul__", "__ror__", "__rpow__",
              "__rsub__", "__rtruediv__", "__setitem__", "__sub__", "__truediv__", "__xor__",
              "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__")
_HOST_READS = ("__float__", "__int__", "__bool__", "__complex__", "__index__", "__array__", "__dlpack__")


@dataclass
class Tally:
    ops: Counter[str] = field(default_factory=Counter)
    outside: Counter[str] = field(default_factory=Counter)
    reads: Counter[str] = field(default_factory=Counter)
    uploads: Counter[str] = field(default_factory=Counter)
    depth: int = 0

    def reset(self) -> None:
        for counter in (self.ops, self.outside, self.reads, self.uploads):
            counter.clear()


@contextlib.contextmanager
def instrument(monkeypatch) -> Iterator[Tally]:
    """Count array-api-strict's calls (see the module) while the block runs; yields the :class:`Tally`."""
    from xpconv.backends import ArrayApiStrictBackend  # type: ignore[attr-defined]

    tally = Tally()
    array_type = type(array_api_strict.asarray(0))

    @contextlib.contextmanager
    def activate(self):
        tally.depth += 1
        try:
            yield
        finally:
            tally.depth -= 1

    def op(name, fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            (tally.ops if tally.depth else tally.outside)[name] += 1
            if name in ("asarray", "from_dlpack") and tally.depth and library_of(args[0]) != "array_api_strict":
                tally.uploads[type(args[0]).__name__] += 1
            return fn(*args, **kwargs)
        return run

    def read(name, fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            tally.reads[name] += 1
            return fn(*args, **kwargs)
        return run

    with monkeypatch.context() as m:
        m.setattr(ArrayApiStrictBackend, "activate", activate)
        for name, fn in vars(array_api_strict).items():
            if not name.startswith("_") and inspect.isfunction(fn) and name not in _INSPECTION:
                m.setattr(array_api_strict, name, op(name, fn))
        for name in _OPERATORS:
            m.setattr(array_type, name, op(name, getattr(array_type, name)))
        for name in _HOST_READS:
            m.setattr(array_type, name, read(name, getattr(array_type, name)))
        yield tally


def every_state_model(backend, channels: int = 4, dtype: str = "float32"):
    """A small model with every kind of layer state (conv, batch-norm buffers, dropout generator, pooling,
    linear) for 8x8 digits: what the device-discipline tests train."""
    from xpconv import nn

    on = dict(backend=backend, dtype=dtype)
    return nn.Sequential(nn.Conv2d(1, channels, 3, padding=1, seed=0, **on), nn.BatchNorm2d(channels, **on),
                         nn.ReLU(**on), nn.MaxPool2d(2, **on), nn.Dropout(0.2, seed=0, **on), nn.Flatten(**on),
                         nn.Linear(channels * 4 * 4, 10, seed=1, **on))
