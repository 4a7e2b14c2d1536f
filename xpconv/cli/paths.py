"""Output paths checked before a command does any work: a long run must not fail at its very end."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["check_outputs"]


def check_outputs(outputs: Mapping[str, str | os.PathLike[str] | None],
                  inputs: Mapping[str, str | os.PathLike[str] | None] | None = None) -> None:
    """Check that every output path can be written, before the work that produces it starts.

    Parameters
    ----------
    outputs : mapping of str to path or None
        ``{flag: path}`` of the files the command will write (``None``: the option was not given).
    inputs : mapping of str to path or None, optional
        ``{flag: path}`` of the files or directories it reads, which no output may replace.

    Raises
    ------
    FileNotFoundError
        If an output's directory does not exist.
    IsADirectoryError
        If an output is a directory.
    PermissionError
        If an output's directory (or the existing file) is not writable.
    ValueError
        If two outputs are the same file, or an output is one of the inputs (symbolic links resolved).

    Every message starts with the user's flag and path.

    Examples
    --------
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> check_outputs({"--json": f"{out}/r.json", "--plot": None})
    >>> check_outputs({"--json": f"{out}/r.json", "--plot": f"{out}/./r.json"})
    Traceback (most recent call last):
    ...
    ValueError: --plot ...r.json: the same file as --json
    """
    seen: dict[Path, str] = {}
    for flag, given in (inputs or {}).items():
        if given is not None:
            seen.setdefault(Path(given).resolve(), flag)
    inputs_resolved = dict(seen)
    for flag, given in outputs.items():
        if given is None:
            continue
        path = Path(given)
        where = f"{flag} {given}"
        if path.is_dir():
            raise IsADirectoryError(f"{where}: is a directory")
        parent = path.parent
        if not parent.is_dir():
            raise FileNotFoundError(f"{where}: directory {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise PermissionError(f"{where}: permission denied")
        resolved = path.resolve()
        if resolved in inputs_resolved:
            raise ValueError(f"{where}: would overwrite the input {inputs_resolved[resolved]}")
        if resolved in seen:
            raise ValueError(f"{where}: the same file as {seen[resolved]}")
        seen[resolved] = flag
