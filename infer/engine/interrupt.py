"""Graceful stop on SIGTERM / SIGINT: the main thread gets `Interrupted`, writes in progress in any thread are
abandoned at their next chunk (their temporary files removed), and the command exits non-zero.

A handler is needed for SIGTERM in a container: as PID 1 a process ignores every signal it has no handler for,
so `docker stop` would otherwise wait for its SIGKILL.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_stopping = threading.Event()
_stopped_by = signal.SIGTERM


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (a KeyboardInterrupt, so `except Exception` never swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def check_stop() -> None:
    """Raise `Interrupted` once a stop signal has arrived (called by writers between chunks)."""
    if _stopping.is_set():
        raise Interrupted(_stopped_by)


def _handle(signum: int, frame: object) -> None:
    global _stopped_by
    _stopped_by = signum
    _stopping.set()
    raise Interrupted(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block (entered in the main thread), SIGTERM and SIGINT raise `Interrupted`; the previous
    handlers are restored on exit."""
    _stopping.clear()
    previous = {s: signal.signal(s, _handle) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
