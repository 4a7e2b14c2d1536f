"""Checkpoints: everything a training run needs to continue as if it had never stopped, in one ``.npz`` file.

A checkpoint holds the model's state dict (arrays ``model.<name>``), the optimizer's state (arrays
``optimizer.<index>.<name>``, numbers in the metadata), and one JSON metadata entry with the architecture, the
scheduler's state, the run's configuration and its progress: epoch and batch position, the data order's and
every layer's random-generator state, and the metrics so far.  Like model files it is backend-independent,
never pickled, and written atomically (:func:`xpconv.io.atomic_write`); every structural problem on reading is
a ``ValueError`` naming the file.
"""
from __future__ import annotations

import io as _bytes_io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .io import StrPath, atomic_write, read_npz

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "FORMAT", "FORMAT_VERSION"]

FORMAT, FORMAT_VERSION = "xpconv-checkpoint", 1
_META_KEY = "__xpconv_checkpoint__"
_SECTIONS: dict[str, type | tuple[type, ...]] = {
    "arch": (dict, type(None)), "config": dict, "progress": dict, "scheduler": (dict, type(None)),
    "optimizer": dict}


@dataclass
class Checkpoint:
    """The state of a training run.

    Attributes
    ----------
    model : dict of str to ndarray
        The model's ``state_dict()``.
    optimizer : dict
        The optimizer's ``state_dict()``: ``{"state": {index: {name: ndarray or number}}, "param_groups": [...]}``.
    scheduler : dict or None
        The learning-rate scheduler's ``state_dict()`` (plain numbers), if the run has one.
    progress : dict
        Where the run stands (JSON values): epoch, batch, random-generator states, metrics so far.
    config : dict
        How the run was configured (JSON values), so that a resumed run continues the same run.
    arch : dict or None
        The model's architecture record (see :func:`xpconv.models.build_model`).
    """

    model: dict[str, np.ndarray]
    optimizer: dict[str, Any]
    progress: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] | None = None
    arch: dict[str, Any] | None = None


def save_checkpoint(checkpoint: Checkpoint, path: StrPath) -> None:
    """Write ``checkpoint`` to ``path`` (``.npz``) atomically: a reader sees the old file or the new one, whole.

    Raises TypeError if a metadata section is not JSON-serializable.
    """
    arrays = {f"model.{name}": np.asarray(a) for name, a in checkpoint.model.items()}
    opt_state: dict[str, dict[str, Any]] = {}
    for index, entries in checkpoint.optimizer.get("state", {}).items():
        numbers = opt_state.setdefault(str(index), {})
        for name, value in entries.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                numbers[name] = value
            else:
                arrays[f"optimizer.{index}.{name}"] = np.asarray(value)
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "arch": checkpoint.arch, "config": checkpoint.config,
            "progress": checkpoint.progress, "scheduler": checkpoint.scheduler,
            "optimizer": {"param_groups": checkpoint.optimizer.get("param_groups", []), "state": opt_state}}
    try:
        arrays[_META_KEY] = np.array(json.dumps(meta, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"checkpoint metadata is not plain JSON ({exc})") from None
    buffer = _bytes_io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]   # keys are prefixed: never savez's own arguments
    atomic_write(path, buffer.getvalue())


def _fail(path: StrPath, what: str) -> ValueError:
    return ValueError(f"{path}: not a valid xpconv checkpoint ({what})")


def load_checkpoint(path: StrPath) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises FileNotFoundError if ``path`` does not exist, ValueError naming the file if it is not a complete,
    well-formed checkpoint of this format version.
    """
    arrays = read_npz(path)
    if _META_KEY not in arrays:
        raise _fail(path, f"no {_META_KEY!r} entry; a model file is read with xpconv.load")
    try:
        meta = json.loads(str(arrays.pop(_META_KEY)))
    except json.JSONDecodeError as exc:
        raise _fail(path, f"corrupt metadata: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _fail(path, "wrong format record")
    if meta.get("version") != FORMAT_VERSION:
        raise _fail(path, f"format version {meta.get('version')!r}, this xpconv reads {FORMAT_VERSION}")
    for name, kinds in _SECTIONS.items():
        if not isinstance(meta.get(name), kinds):
            raise _fail(path, f"metadata section {name!r} is missing or not of the expected type")
    opt = meta["optimizer"]
    if not isinstance(opt.get("param_groups"), list) or not isinstance(opt.get("state"), dict) or not all(
            isinstance(v, dict) for v in opt["state"].values()):
        raise _fail(path, "malformed optimizer section")
    model: dict[str, np.ndarray] = {}
    state: dict[int, dict[str, Any]] = {}
    for key, value in arrays.items():
        kind, _, rest = key.partition(".")
        index, _, name = rest.partition(".")
        if kind == "model" and rest:
            model[rest] = value
        elif kind == "optimizer" and index.isdigit() and name:
            state.setdefault(int(index), {})[name] = value
        else:
            raise _fail(path, f"unexpected array {key!r}")
    for index, numbers in opt["state"].items():
        if not index.isdigit():
            raise _fail(path, f"optimizer state index {index!r}")
        state.setdefault(int(index), {}).update(numbers)
    return Checkpoint(model=model, optimizer={"state": state, "param_groups": opt["param_groups"]},
                      progress=meta["progress"], config=meta["config"], scheduler=meta["scheduler"],
                      arch=meta["arch"])
