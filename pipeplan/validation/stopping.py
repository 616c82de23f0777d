"""The launcher's answer to SIGTERM, SIGHUP and SIGINT: stop the run, then leave with 128 + the signal.

``stop_on_signals()`` installs one handler for the three signals for as long as the run lasts. The
first signal raises ``Stopped`` in the launcher's main thread, wherever it is waiting (on torchrun's
output, on a rank's exit, in a write), so the code that started processes ends them on the way out;
later signals are only recorded, so that clean-up itself is never interrupted. Inside ``deferred()``
even the first signal is only recorded and raised on leaving it: for steps that must not be cut
short, such as removing the run folder.

``Stopped`` derives from ``BaseException``, as ``KeyboardInterrupt`` does, so no ``except Exception``
on the way swallows it.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class Stopped(BaseException):
    """The launcher received ``signum``; by the time this leaves ``run_validation`` every process the
    run started is gone and its run folder removed. ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, signum: int, detail: str = "") -> None:
        self.signum = signum
        self.detail = detail
        super().__init__(f"stopped by {self.signal_name}" + (f": {detail}" if detail else ""))

    @property
    def signal_name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class SignalGuard:
    """What arrived (``signum``, the first stop signal, or None) and whether it was already raised."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._raised = False
        self._deferring = 0

    def handle(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum
        if not self._deferring:
            self.raise_if_signalled()

    def raise_if_signalled(self) -> None:
        """Raise ``Stopped`` for a recorded signal, once."""
        if self.signum is not None and not self._raised:
            self._raised = True
            raise Stopped(self.signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Record a stop signal arriving inside this block and raise it only on leaving (if the block
        raised nothing else)."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        if not self._deferring:
            self.raise_if_signalled()


@contextmanager
def stop_on_signals() -> Iterator[SignalGuard]:
    """A ``SignalGuard`` that receives SIGTERM, SIGHUP and SIGINT while the block runs; the previous
    handlers are back afterwards. Python delivers signals to the main thread only: called from another
    thread the guard installs nothing (the caller's own handling stays in charge)."""
    guard = SignalGuard()
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    previous = {s: signal.signal(s, guard.handle) for s in STOP_SIGNALS}
    try:
        yield guard
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
