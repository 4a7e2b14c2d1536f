"""How every ``xpconv`` subcommand reports the errors a user can cause: one line on stderr, exit status 2."""
from __future__ import annotations

import sys
from collections.abc import Callable

from ..backends import BackendUnavailableError

__all__ = ["guarded"]

USER_ERRORS = (ValueError, TypeError, ImportError, FileNotFoundError, BackendUnavailableError)


def guarded(run: Callable, name: str) -> Callable:
    """``run(args)`` wrapped so that the errors a user can cause become one line on stderr and exit status 2."""
    def command(args) -> int:
        try:
            return run(args)
        except USER_ERRORS as exc:
            print(f"xpconv {name}: error: {exc}", file=sys.stderr)
            return 2
    return command
