"""Interrupts during a write: SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt (so temp folders are cleaned
up), and are held back while a swap runs (``critical``), then raised once it is over. Used by xlsr_edge.outputs
and by the long jobs that write through it. Standard library only.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_HANDLED = tuple(getattr(signal, s) for s in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, s))


class _SignalState:
    critical = 0
    pending: int | None = None


_STATE = _SignalState()


def _handler(signum: int, frame) -> None:
    if _STATE.critical:
        _STATE.pending = signum  # raised once the swap is over: it must not be cut in half
        return
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def interrupts_raise() -> Iterator[None]:
    """While inside, SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt (cleanup runs); restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; the main thread's own context covers this write
        return
    previous = {s: signal.getsignal(s) for s in _HANDLED}
    for s in _HANDLED:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


@contextmanager
def critical() -> Iterator[None]:
    _STATE.critical += 1
    try:
        yield
    except BaseException:
        _STATE.critical -= 1
        if not _STATE.critical:
            _STATE.pending = None  # an exception is on its way out already
        raise
    _STATE.critical -= 1
    if not _STATE.critical and _STATE.pending is not None:
        signum, _STATE.pending = _STATE.pending, None
        raise KeyboardInterrupt(signal.Signals(signum).name)
