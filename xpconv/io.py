"""Save and load models as backend-independent ``.npz`` or ``.safetensors`` files, and move weights to and from PyTorch.

A file holds the model's ``state_dict()`` (host NumPy arrays, one entry per
dotted name) and one JSON metadata entry: the format name and version, the
architecture to rebuild the model from (when the model carries an ``arch``
attribute, as :mod:`xpconv.models` builders set), and any extra information
the caller passes (the CLI stores the data set, seed and metrics).  Nothing is
pickled, so loading a file never runs code.  The format follows the file's suffix: ``.safetensors``
(the `safetensors <https://huggingface.co/docs/safetensors>`_ library, the ``xpconv[safetensors]`` extra; the
metadata is the string value ``__xpconv_meta__`` of the header's ``__metadata__``), anything else ``.npz``.
The ``state_dict()`` keys are PyTorch's, so :func:`to_torch_state_dict` and :func:`from_torch_state_dict`
move weights to and from an equivalent ``torch.nn`` model.
"""
from __future__ import annotations

import io
import json
import os
import secrets
import signal
import threading
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from ._typing import Device

if TYPE_CHECKING:
    from .backends import Backend
    from .nn.module import Module

StrPath = str | os.PathLike[str]

__all__ = ["save", "load", "read_metadata", "read_npz", "read_safetensors", "is_safetensors", "check_format",
           "atomic_write", "from_torch_state_dict", "to_torch_state_dict", "FORMAT", "FORMAT_VERSION",
           "SAFETENSORS_SUFFIX"]

FORMAT, FORMAT_VERSION = "xpconv-model", 1
SAFETENSORS_SUFFIX = ".safetensors"
_META_KEY = "__xpconv_meta__"


def _open(path: Path, kind: str) -> IO[bytes]:
    """``path`` opened for reading; FileNotFoundError, IsADirectoryError, PermissionError naming it."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"{path}: is a directory, not an {kind} file") from None
    except PermissionError:
        raise PermissionError(f"{path}: permission denied (cannot read the file)") from None


def read_npz(path: StrPath) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file at ``path``, read fully into memory.

    FileNotFoundError when missing, IsADirectoryError for a directory, PermissionError when it cannot be
    read; ValueError naming the file when it is not an ``.npz`` archive (a text, JSON or ``.npy`` file) or not
    a readable one (truncated, corrupt, or holding pickled objects).
    """
    path = Path(path)
    # The file is opened here, not by np.load, which leaves its own handle open when the zip is invalid.
    with _open(path, ".npz") as fh:
        if fh.read(4)[:2] != b"PK":  # every zip archive, np.savez's included, starts with this signature
            raise ValueError(f"{path}: not an .npz archive (no zip signature; a text, JSON or .npy file?)")
        fh.seek(0)
        try:
            # np.load reads each member only up to its array's end, so zipfile never checks its CRC: a changed
            # byte in an .npy header ('<f4' -> '>f4') would load as other numbers. Reading each member whole
            # makes zipfile check its CRC, and the array is parsed from those bytes: one read per member.
            arrays = {}
            with zipfile.ZipFile(fh) as archive:
                for info in archive.infolist():
                    if not info.filename.endswith(".npy"):
                        raise ValueError(f"member {info.filename!r} is not an .npy array")
                    data = io.BytesIO(archive.read(info))
                    arrays[info.filename[:-4]] = np.lib.format.read_array(data, allow_pickle=False)
            return arrays
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error, NotImplementedError,
                RuntimeError) as exc:
            raise ValueError(f"{path}: not a readable .npz file, it may be truncated or corrupt ({exc})") from None


def _safetensors_numpy() -> Any:
    """``safetensors.numpy``, or an ImportError that says how to install it."""
    try:
        import safetensors.numpy
    except ImportError:
        raise ImportError(f"{SAFETENSORS_SUFFIX} files need the safetensors package: pip install safetensors "
                          '(or "xpconv[safetensors]")') from None
    return safetensors.numpy


def read_safetensors(path: StrPath) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every array of the ``.safetensors`` file at ``path`` and its header's ``__metadata__`` (strings).

    The same errors as :func:`read_npz`: FileNotFoundError, IsADirectoryError, PermissionError, and a ValueError
    naming the file when it is not a readable ``.safetensors`` file (truncated, corrupt, another format);
    ImportError when the safetensors package is not installed.
    """
    path = Path(path)
    library = _safetensors_numpy()
    with _open(path, SAFETENSORS_SUFFIX) as fh:
        raw = fh.read()
    try:
        arrays = library.load(raw)        # checks the header, the dtypes and that the offsets cover the data
        size = int.from_bytes(raw[:8], "little")
        meta = json.loads(raw[8:8 + size]).get("__metadata__") or {}
        if not isinstance(meta, dict):
            raise ValueError(f"__metadata__ is a JSON {type(meta).__name__}, not an object")
    except Exception as exc:              # safetensors raises its own SafetensorError (an Exception) on bad bytes
        raise ValueError(f"{path}: not a readable {SAFETENSORS_SUFFIX} file, it may be truncated or corrupt "
                         f"({type(exc).__name__}: {exc})") from None
    return arrays, meta


def is_safetensors(path: StrPath) -> bool:
    """Whether :func:`save`/:func:`load` treat ``path`` as a ``.safetensors`` file (by its suffix)."""
    return Path(path).suffix.lower() == SAFETENSORS_SUFFIX


def check_format(path: StrPath) -> None:
    """Raise the ImportError :func:`save` would raise for ``path`` (a ``.safetensors`` file without the library),
    before any work: the CLI calls it while it checks its output paths."""
    if is_safetensors(path):
        _safetensors_numpy()


class _Terminated(BaseException):
    """SIGTERM arrived while :func:`atomic_write` was writing (raised once, then the signal is re-sent)."""


class _SigtermGuard:
    """A SIGTERM handler: while armed, the first SIGTERM raises :class:`_Terminated`; later ones are remembered."""

    def __init__(self) -> None:
        self.armed, self.received = True, False

    def __call__(self, signum: int, frame: object) -> None:
        self.received = True
        if self.armed:
            self.armed = False
            raise _Terminated


def _open_new(path: Path) -> tuple[int, Path]:
    """A new hidden file beside ``path``, with the mode ``open(path, "w")`` would give it."""
    try:
        mode = os.stat(path).st_mode & 0o7777          # overwriting keeps the target's permissions
    except OSError:
        mode = None
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)  # & ~umask
        except FileExistsError:
            continue
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: directory {path.parent} does not exist") from None
        except PermissionError:
            raise PermissionError(f"{path}: permission denied (cannot create files in {path.parent})") from None
        if mode is not None and hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        return fd, tmp


def atomic_write(path: StrPath, data: bytes | Callable[[IO[bytes]], object]) -> Path:
    """Write ``data`` to ``path`` atomically: a reader sees the old file or the new one, whole; returns the path.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write (replaced if it exists).
    data : bytes or callable
        The bytes, or a function that writes them to the binary file object it is given.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    IsADirectoryError, FileNotFoundError, PermissionError
        If ``path`` is a directory, its directory is missing, or the directory is not writable (the message
        names ``path``, never the temporary file).

    Notes
    -----
    The data go to a hidden ``.NAME.XXXXXXXX.tmp`` file beside ``path`` (flushed and fsynced), which is then
    renamed over ``path``.  The new file gets the permissions ``open(path, "w")`` would give it: those of the
    file it replaces, else ``0o666 & ~umask``.  On any exception (KeyboardInterrupt included) the temporary
    file is removed and ``path`` is left as it was.  In the main thread, while SIGTERM has its default action,
    a SIGTERM during the write also removes the temporary file first and then ends the process as SIGTERM
    would; a handler a program installed itself is left alone.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from xpconv.io import atomic_write
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "hello.txt"
    >>> atomic_write(target, b"hello").read_bytes()
    b'hello'
    >>> atomic_write(target, lambda f: f.write(b"bye")).read_bytes()
    b'bye'
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory")
    fd, tmp = _open_new(path)
    guard = _SigtermGuard()
    previous = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, guard)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        guard.armed = False                  # no bytecode above may check for signals before this line
        tmp.unlink(missing_ok=True)          # gone already after a successful rename
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
            if guard.received:
                signal.raise_signal(signal.SIGTERM)   # the default action, now that nothing is left behind
    return path


def save(model: Module, path: StrPath, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model.state_dict()`` and metadata to ``path``; returns the path.

    A path ending in ``.safetensors`` gets a safetensors file (readable by ``safetensors.numpy.load_file`` and
    ``safetensors.torch.load_file``, the metadata in the header's ``__metadata__``), any other an ``.npz`` file.
    The file is written with :func:`atomic_write`: an interrupted save leaves ``path`` as it was and no
    temporary file behind, and a new file gets the permissions ``open(path, "w")`` would give it.
    ``metadata`` must be JSON-serializable.
    """
    path = Path(path)
    state = model.state_dict()
    meta = json.dumps({"format": FORMAT, "version": FORMAT_VERSION, "arch": getattr(model, "arch", None),
                       "extra": metadata or {}})
    if is_safetensors(path):
        library = _safetensors_numpy()
        if "__metadata__" in state:
            raise ValueError("state dict key '__metadata__' is reserved in .safetensors files; rename that attribute")
        blob = library.save({k: np.asarray(v, order="C") for k, v in state.items()}, metadata={_META_KEY: meta})
        return atomic_write(path, blob)
    reserved = sorted({_META_KEY, "file", "allow_pickle"} & set(state))   # ours, and np.savez's own arguments
    if reserved:
        raise ValueError(f"state dict keys {reserved} are reserved in .npz model files; rename those attributes")
    state[_META_KEY] = np.array(meta)
    # numpy's stub types **kwds as if they could be savez's allow_pickle flag; reserved keys are refused above.
    return atomic_write(path, lambda f: np.savez(f, **state))  # type: ignore[arg-type]


def _read(path: StrPath) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(state dict, metadata) of a file written by :func:`save`; ValueError if it is not one."""
    if is_safetensors(path):
        arrays, header = read_safetensors(path)
        text = header.get(_META_KEY)
    else:
        arrays = read_npz(path)
        text = str(arrays.pop(_META_KEY)) if _META_KEY in arrays else None
    if text is None:
        raise ValueError(f"{path}: not an xpconv model file (no {_META_KEY!r} entry)")
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as exc:      # JSONDecodeError is a ValueError
        raise ValueError(f"{path}: corrupt metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: not an xpconv model file (its metadata is a JSON {type(meta).__name__}, "
                         "not an object)")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an xpconv model file (format {meta.get('format')!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: file format version {meta.get('version')!r}, this xpconv reads version "
                         f"{FORMAT_VERSION}")
    if not isinstance(meta.get("extra"), dict):
        raise ValueError(f"{path}: corrupt metadata ('extra' must be an object, got {meta.get('extra')!r})")
    arch = meta.get("arch")
    if arch is not None and not (isinstance(arch, dict) and isinstance(arch.get("name"), str)
                                 and isinstance(arch.get("kwargs", {}), dict)):
        raise ValueError(f"{path}: corrupt metadata ('arch' must be null or "
                         f'{{"name": str, "kwargs": {{...}}}}, got {arch!r})')
    return arrays, meta


def read_metadata(path: StrPath) -> dict[str, Any]:
    """The metadata of a saved model: ``format``, ``version``, ``arch`` and the caller's ``extra`` dict."""
    return _read(path)[1]


def load(path: StrPath, model: Module | None = None, *, backend: str | Backend | None = None,
         device: Device = None) -> Module:
    """Load a model saved by :func:`save`; returns it.

    With ``model``, its parameters and buffers are replaced by the file's (the
    model keeps its backend); the whole file is read and checked against the model
    first, so on any error (missing, truncated, mismatched file) the model is unchanged.
    Without ``model``, the architecture recorded in the file is rebuilt on
    ``backend``/``device`` (see :mod:`xpconv.models`).
    """
    state, meta = _read(path)
    if model is None:
        from .backends import get_backend
        from .models import build_model

        if not meta.get("arch"):
            raise ValueError(f"{path}: the file records no architecture; build the model and pass it as "
                             "load(path, model)")
        target = get_backend(backend, device)   # a bad backend/device is the caller's error, not the file's
        try:
            model = build_model(meta["arch"], backend=target, max_elements=sum(a.size for a in state.values()))
        except Exception as exc:                 # the record comes from the file: any failure is the file's
            raise ValueError(f"{path}: the recorded architecture cannot be built "
                             f"({type(exc).__name__}: {exc})") from None
    elif backend is not None or device is not None:
        raise ValueError("give either model= (loaded on its own backend) or backend=/device=, not both")
    try:
        model.load_state_dict(state)
    except ValueError as exc:
        raise ValueError(f"{path} does not fit the model: {exc}") from None
    return model


def to_torch_state_dict(model: Module) -> dict[str, Any]:
    """``model.state_dict()`` as torch CPU tensors, for ``torch_model.load_state_dict``.

    The keys are PyTorch's (``conv1.weight``, ``bn1.running_mean``, ``layer1.0.shortcut.0.weight``, ...), so an
    equivalent ``torch.nn`` model takes them as they are; the tensors have the model's dtype and are new
    (they share no memory with the model).  torch is imported here only: without it,
    :class:`~xpconv.backends.BackendUnavailableError` says how to install it.  Example: docs/interop.md.
    """
    from .backends import get_backend

    torch_cpu = get_backend("torch")                  # BackendUnavailableError, with the install hint, if missing
    return {key: torch_cpu.asarray(value) for key, value in model.state_dict().items()}


def from_torch_state_dict(model: Module, state_dict: Mapping[str, Any]) -> Module:
    """Load a PyTorch ``state_dict`` (tensors on any device, or arrays; or a ``torch.nn.Module``, whose
    ``state_dict()`` is taken) into ``model``; returns the model.

    The keys must be the model's own (PyTorch's naming, see :func:`to_torch_state_dict`); the values are copied
    to the model's backend and dtype, so a model trained in PyTorch runs on NumPy, CuPy or any other backend.
    On a missing or unexpected key, or a shape that differs, ValueError naming them, and the model is unchanged.
    """
    to_state = getattr(state_dict, "state_dict", None)
    model.load_state_dict(to_state() if callable(to_state) else state_dict)
    return model
