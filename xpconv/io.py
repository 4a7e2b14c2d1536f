"""Save and load models as backend-independent ``.npz`` files.

A file holds the model's ``state_dict()`` (host NumPy arrays, one entry per
dotted name) and one JSON metadata entry: the format name and version, the
architecture to rebuild the model from (when the model carries an ``arch``
attribute, as :mod:`xpconv.models` builders set), and any extra information
the caller passes (the CLI stores the data set, seed and metrics).  Nothing is
pickled, so loading a file never runs code.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._typing import Device

if TYPE_CHECKING:
    from .backends import Backend
    from .nn.module import Module

StrPath = str | os.PathLike[str]

__all__ = ["save", "load", "read_metadata", "read_npz", "FORMAT", "FORMAT_VERSION"]

FORMAT, FORMAT_VERSION = "xpconv-model", 1
_META_KEY = "__xpconv_meta__"


def read_npz(path: StrPath) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file at ``path``, read fully into memory.

    FileNotFoundError when missing; ValueError naming the file when it is not a
    readable ``.npz`` archive (truncated, corrupt, or holding pickled objects).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        # The file is opened here, not by np.load, which leaves its own handle open when the zip is invalid.
        with open(path, "rb") as fh:
            f = np.load(fh, allow_pickle=False)
            if not isinstance(f, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an .npz archive")
            with f:
                return {key: f[key] for key in f.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as exc:
        raise ValueError(f"{path}: not a readable .npz file, it may be truncated or corrupt ({exc})") from None


def save(model: Module, path: StrPath, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model.state_dict()`` and metadata to ``path`` (an ``.npz`` file); returns the path.

    The file is written to a temporary name first and then renamed, so an
    interrupted save never leaves a half-written file at ``path``.
    ``metadata`` must be JSON-serializable.
    """
    path = Path(path)
    state = model.state_dict()
    reserved = sorted({_META_KEY, "file", "allow_pickle"} & set(state))   # ours, and np.savez's own arguments
    if reserved:
        raise ValueError(f"state dict keys {reserved} are reserved in .npz model files; rename those attributes")
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "arch": getattr(model, "arch", None),
            "extra": metadata or {}}
    state[_META_KEY] = np.array(json.dumps(meta))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            # numpy's stub types **kwds as if they could be savez's allow_pickle flag; reserved keys are refused above.
            np.savez(f, **state)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def _read(path: StrPath) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(state dict, metadata) of a file written by :func:`save`; ValueError if it is not one."""
    arrays = read_npz(path)
    if _META_KEY not in arrays:
        raise ValueError(f"{path}: not an xpconv model file (no {_META_KEY!r} entry)")
    try:
        meta = json.loads(str(arrays.pop(_META_KEY)))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an xpconv model file (format {meta.get('format')!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: file format version {meta.get('version')!r}, this xpconv reads version "
                         f"{FORMAT_VERSION}")
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
        from .models import build_model

        if not meta.get("arch"):
            raise ValueError(f"{path}: the file records no architecture; build the model and pass it as "
                             "load(path, model)")
        model = build_model(meta["arch"], backend=backend, device=device)
    elif backend is not None or device is not None:
        raise ValueError("give either model= (loaded on its own backend) or backend=/device=, not both")
    try:
        model.load_state_dict(state)
    except ValueError as exc:
        raise ValueError(f"{path} does not fit the model: {exc}") from None
    return model
