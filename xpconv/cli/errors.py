"""How every ``xpconv`` subcommand ends, whatever goes wrong.

=========================================================  ===========  ==========================================
what happened                                              exit status  on stderr
=========================================================  ===========  ==========================================
success                                                    0            nothing
an error a user can cause (:data:`USER_ERRORS`: bad         2            one line ``xpconv CMD: error: ...``
values, missing/unreadable/unwritable files, no memory,
a library or backend that is not installed or usable)
Ctrl-C (KeyboardInterrupt)                                 130          one line ``xpconv CMD: interrupted``
stdout closed early (``xpconv ... | head -1``)             141          nothing (128 + SIGPIPE, as a shell reports
                                                                        a process ended by SIGPIPE)
anything else: a bug in xpconv                             1            the traceback and a line asking to report it
=========================================================  ===========  ==========================================

With the global ``--debug`` flag the traceback of a user error is printed too (the exit status stays 2).
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback
from collections.abc import Callable

from ..backends import BackendUnavailableError

__all__ = ["guarded", "flush_stdout", "USER_ERRORS", "EXIT_USER_ERROR", "EXIT_BUG", "EXIT_INTERRUPTED",
           "EXIT_BROKEN_PIPE"]

# OSError covers FileNotFoundError, PermissionError, IsADirectoryError and a full disk.
USER_ERRORS = (ValueError, TypeError, ImportError, OSError, MemoryError, BackendUnavailableError)
EXIT_BUG, EXIT_USER_ERROR, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 1, 2, 130, 141


def flush_stdout() -> bool:
    """Flush stdout; False when its reader has gone (stdout then points at devnull, as Python's docs advise,
    so that the interpreter's last flush finds no broken pipe either)."""
    try:
        sys.stdout.flush()
        return True
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):   # a stdout without a file descriptor
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return False


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    if isinstance(exc, MemoryError):
        text = f"out of memory ({text})"
    return " ".join(text.split())


def guarded(run: Callable, name: str) -> Callable:
    """``run(args)`` wrapped so that it ends as the table of :mod:`xpconv.cli.errors` says.

    Parameters
    ----------
    run : callable
        A subcommand: takes the parsed arguments, returns the exit status.
    name : str
        The subcommand's name, which starts every error line.

    Returns
    -------
    callable
        ``command(args) -> int``; wrapping it again changes nothing.

    Raises
    ------
    SystemExit
        Only what ``run`` raises itself (argparse-style exits pass through).

    Examples
    --------
    >>> import argparse, contextlib, io
    >>> def fails(args):
    ...     raise ValueError("--epochs must be a positive int, got 0")
    >>> err = io.StringIO()
    >>> with contextlib.redirect_stderr(err):
    ...     guarded(fails, "train")(argparse.Namespace())
    2
    >>> err.getvalue()
    'xpconv train: error: --epochs must be a positive int, got 0\\n'
    """
    if getattr(run, "guarded", False):
        return run

    @functools.wraps(run)
    def command(args) -> int:
        try:
            status = run(args)
        except BrokenPipeError:
            flush_stdout()
            return EXIT_BROKEN_PIPE
        except KeyboardInterrupt:
            print(f"xpconv {name}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except USER_ERRORS as exc:
            if getattr(args, "debug", False):
                traceback.print_exc()
            print(f"xpconv {name}: error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_USER_ERROR
        except Exception as exc:
            traceback.print_exc()
            print(f"xpconv {name}: internal error ({type(exc).__name__}): this is a bug in xpconv; please report "
                  "it with the traceback above", file=sys.stderr)
            return EXIT_BUG
        return status if flush_stdout() else EXIT_BROKEN_PIPE

    command.guarded = True  # type: ignore[attr-defined]
    return command
