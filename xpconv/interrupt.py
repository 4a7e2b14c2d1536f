"""Stopping a long run cleanly: SIGINT (Ctrl-C) and SIGTERM become a request to stop at the next batch boundary.

The training loop asks :attr:`StopRequest.signum` after every step; the command then keeps what it can (a
checkpoint), prints one line and exits with ``128 + signum`` (130 for SIGINT, 143 for SIGTERM), as shells do.
A second signal while the first is being honoured interrupts at once (``KeyboardInterrupt``), so a stuck
run can always be stopped.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

__all__ = ["StopRequest", "exit_status"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_status(signum: int) -> int:
    """The exit status of a process stopped by signal ``signum``, as a shell reports it (128 + signum)."""
    return 128 + int(signum)


class StopRequest:
    """Context manager: while it is active, SIGINT/SIGTERM set :attr:`signum` instead of killing the process.

    Handlers can only be installed from the main thread; elsewhere the context does nothing (signals keep
    their previous behaviour) and :attr:`signum` stays None.

    Examples
    --------
    >>> import os, signal
    >>> with StopRequest() as stop:
    ...     os.kill(os.getpid(), signal.SIGTERM)      # what `kill PID` does
    ...     stop.signum == signal.SIGTERM, stop.name
    (True, 'SIGTERM')
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str | None:
        """``"SIGINT"`` or ``"SIGTERM"`` once a stop was requested, else None."""
        return None if self.signum is None else signal.Signals(self.signum).name

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:          # the second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
