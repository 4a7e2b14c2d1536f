"""Backend names -> Array API namespaces and devices.

A :class:`Backend` is resolved once, when a layer is built, and carries the
namespace ``xp`` and the device that every array of that layer lives on.  This
module is the only place in xpconv that knows the names of array libraries;
the math below ``functional`` only ever sees ``xp``.
"""
from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "BACKEND_NAMES",
    "available_backends",
    "get_backend",
    "get_default_backend",
    "set_default_backend",
    "to_numpy",
]

BACKEND_NAMES = ("numpy", "cupy", "torch", "array_api_strict", "auto")
_INSTALL_HINT = {
    "numpy": 'pip install numpy',
    "cupy": 'pip install "xpconv[cuda12]"  (or "xpconv[cuda13]" for CUDA 13 drivers)',
    "torch": 'pip install torch  (see https://pytorch.org for the build that fits your machine)',
    "array_api_strict": 'pip install array-api-strict  (or "xpconv[test]")',
}
_default_name: str | None = None


class BackendUnavailableError(RuntimeError):
    """A backend was asked for that is not installed or has no usable device."""


@dataclass(frozen=True)
class Backend:
    """An Array API namespace ``xp`` plus the ``device`` arrays are put on."""

    name: str
    xp: Any
    device: Any

    def asarray(self, x, dtype=None):
        """``x`` (any array, list or scalar) as an array of this backend, on its device.

        Arrays of another library go through host memory explicitly; this is
        the one place where such a copy happens, and only when asked for.
        """
        if dtype is not None and isinstance(dtype, str):
            dtype = self.dtype(dtype)
        if _namespace_name(x) not in (None, self.name):
            x = to_numpy(x)
        if isinstance(x, np.ndarray) and self.name == "cupy":
            import cupy

            with cupy.cuda.Device(self.device.id):
                return cupy.asarray(x, dtype=dtype)
        return self.xp.asarray(x, dtype=dtype, device=self.device)

    def synchronize(self) -> None:
        """Wait until the device has finished the work queued so far (CUDA); nothing to wait for on the CPU.

        For timing: CuPy and torch return from a GPU call before the GPU is done.
        """
        if self.name == "cupy":
            self.device.synchronize()
        elif self.name == "torch" and self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def dtype(self, name):
        """The floating dtype called ``name`` ("float32"/"float64") in this namespace."""
        if not isinstance(name, str):
            return name
        if name not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {name!r}")
        return getattr(self.xp, name)

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, device={self.device!r})"


def _namespace_name(x) -> str | None:
    """Short library name of array ``x`` ("numpy", "cupy", ...), or None for non-arrays."""
    mod = type(x).__module__.split(".")[0]
    return {"numpy": "numpy", "cupy": "cupy", "torch": "torch", "array_api_strict": "array_api_strict"}.get(mod)


def to_numpy(x) -> np.ndarray:
    """A NumPy copy (or view, for NumPy input) of array ``x`` from any backend, on the host."""
    name = _namespace_name(x)
    if name == "cupy":
        return x.get()
    if name == "torch":
        return x.detach().cpu().numpy()
    if name == "array_api_strict":
        return np.from_dlpack(x)
    return np.asarray(x)


def _cuda_device_count() -> int:
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


def _torch_cuda_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def _import(module: str, backend: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend {backend!r} is not installed ({exc}); install it with: {_INSTALL_HINT[backend]}"
        ) from None


def _check_index(device, count: int, what: str) -> int:
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


def _make(name: str, device) -> Backend:
    if name == "numpy":
        from array_api_compat import numpy as xp

        if device not in (None, "cpu"):
            raise ValueError(f"the numpy backend runs on 'cpu' only, got device={device!r}")
        return Backend("numpy", xp, "cpu")
    if name == "array_api_strict":
        xp = _import("array_api_strict", name)
        if device is None:
            device = xp.__array_namespace_info__().default_device()
        elif isinstance(device, str):
            devices = {str(d): d for d in xp.__array_namespace_info__().devices()}
            if device not in devices:
                raise ValueError(f"array_api_strict device must be one of {sorted(devices)}, got {device!r}")
            device = devices[device]
        return Backend(name, xp, device)
    if name == "cupy":
        cupy = _import("cupy", name)
        count = _cuda_device_count()
        if count == 0:
            raise BackendUnavailableError(
                "backend 'cupy' is installed but no CUDA device is usable (no GPU, no driver, or a "
                "CuPy build that does not match the driver). Check `nvidia-smi` and `xpconv info`; "
                f"install the matching build with: {_INSTALL_HINT['cupy']}"
            )
        from array_api_compat import cupy as xp

        return Backend(name, xp, cupy.cuda.Device(_check_index(device, count, "cupy")))
    if name == "torch":
        torch = _import("torch", name)
        from array_api_compat import torch as xp

        if device is None or str(device) == "cpu":
            return Backend(name, xp, torch.device("cpu"))
        index = _check_index(device, _torch_cuda_count(), "torch")
        return Backend(name, xp, torch.device("cuda", index))
    raise ValueError(f"unknown backend {name!r}; valid backends are: {', '.join(BACKEND_NAMES)}")


def get_backend(name: str | Backend | None = None, device=None) -> Backend:
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
    name = name.lower().replace("-", "_")
    if name == "auto":
        if _cuda_device_count() > 0:
            return _make("cupy", device)
        warnings.warn("backend 'auto': no usable CUDA device for CuPy, falling back to NumPy on the CPU",
                      RuntimeWarning, stacklevel=2)
        return _make("numpy", None)
    return _make(name, device)


def get_default_backend() -> str:
    """The default backend name: :func:`set_default_backend`, else ``$XPCONV_BACKEND``, else "numpy"."""
    name = _default_name or os.environ.get("XPCONV_BACKEND") or "numpy"
    if name.lower().replace("-", "_") not in BACKEND_NAMES:
        raise ValueError(f"XPCONV_BACKEND={name!r} is not a backend; valid backends are: {', '.join(BACKEND_NAMES)}")
    return name


def set_default_backend(name: str | None) -> None:
    """Set the backend used when none is given (``None`` restores ``$XPCONV_BACKEND``/"numpy")."""
    global _default_name
    if name is not None and name.lower().replace("-", "_") not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; valid backends are: {', '.join(BACKEND_NAMES)}")
    _default_name = name


def available_backends() -> dict[str, dict]:
    """Which backends are installed and usable here, with versions and devices.

    Returns ``{name: {"installed": bool, "usable": bool, "version": str|None,
    "devices": [str], "note": str}}`` for numpy, cupy, torch and array_api_strict.
    """
    report = {}
    for name, module in (("numpy", "numpy"), ("cupy", "cupy"), ("torch", "torch"),
                         ("array_api_strict", "array_api_strict")):
        entry = {"installed": False, "usable": False, "version": None, "devices": [], "note": ""}
        try:
            mod = importlib.import_module(module)
        except Exception as exc:
            missing = isinstance(exc, ModuleNotFoundError) and exc.name == module
            entry["note"] = f"not installed: {_INSTALL_HINT[name]}" if missing else f"installed but fails to import: {exc}"
            report[name] = entry
            continue
        entry["installed"] = True
        entry["version"] = getattr(mod, "__version__", None)
        if name == "cupy":
            count = _cuda_device_count()
            entry["devices"] = [f"cuda:{i}" for i in range(count)]
            entry["usable"] = count > 0
            if count:
                entry["note"] = ", ".join(_cupy_device_name(i) for i in range(count))
            else:
                entry["note"] = "no usable CUDA device (no GPU, no driver, or no NVIDIA container toolkit)"
        elif name == "torch":
            entry["devices"] = ["cpu"] + [f"cuda:{i}" for i in range(_torch_cuda_count())]
            entry["usable"] = True
        else:
            entry["devices"] = ["cpu"]
            entry["usable"] = True
        report[name] = entry
    return report


def _cupy_device_name(index: int) -> str:
    try:
        import cupy

        name = cupy.cuda.runtime.getDeviceProperties(index)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return f"cuda:{index}"
