"""A clean stop on SIGINT or SIGTERM: the signal is recorded, and the training loop acts on it
between two steps (a checkpoint, then `training.TrainingStopped`), so Ctrl-C or a cluster's
pre-emption never leaves a half-written step or checkpoint behind.

`StopRequests` is a context manager: inside the block SIGINT and SIGTERM set `received`
instead of raising `KeyboardInterrupt` or ending the process; on exit the previous handlers
are back. Outside the main thread (where Python refuses handlers) signals are left alone, and
`request` can still be called by the program itself (a timer, a test).
"""

from __future__ import annotations

import signal
from types import FrameType, TracebackType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    """The first stop signal received while the block runs (`received`: its number, or None)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}  # signal -> the handler before the block (what getsignal returned)

    def request(self, signum: int, frame: FrameType | None = None) -> None:
        """Ask for a stop, as the signal `signum` does (the handler installed by `__enter__`)."""
        self.received = signum

    def __enter__(self) -> StopRequests:
        try:
            self._previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
            for s in STOP_SIGNALS:
                signal.signal(s, self.request)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = {}
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
