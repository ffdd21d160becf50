"""One exception type for bad input, so callers can catch our refusals apart from bugs; and SIGTERM
as an exception, so a stopped job cleans up as Ctrl-C does."""

import contextlib
import signal
import threading
from collections.abc import Iterator


class InitError(ValueError):
    """Raised before any work when the input cannot give a correct result.

    The message names the problem and the fix.
    """


class FingerprintMismatch(InitError):
    """A residual-method adapter met a base model other than the one it was made on."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``, a job scheduler's time limit) taken the way Ctrl-C is: the work stops
    through its own cleanup — a fit saves its state, a process pool ends its workers, a temp file is
    removed — where the default action ends the process with none of it. Exit status 143 (128 + 15)."""

    def __init__(self, message: str = "terminated (SIGTERM)") -> None:
        super().__init__(message)


def _raise_terminated(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise Terminated


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within this block (main thread; elsewhere a no-op), SIGTERM raises :class:`Terminated`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
