"""Stage lines for long jobs (export, Ray start-up): `WHAT [  12.3 s] message`, flushed at once, so a log file or
a CI console shows where the time goes even without a terminal's progress bars.

The lines go to the "xlsr_edge" logger at INFO (the CLI shows them on stderr, `--quiet` hides them; a library
user's logging configuration decides). Standard library only: both halves of the package import it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


def to_stderr(msg: str) -> None:
    """One progress line: INFO on this module's logger, which the CLI shows on stderr."""
    logger.info(msg)


class Stages:
    """One line per stage of a long job, with the seconds elapsed since it started (default: to_stderr)."""

    def __init__(self, what: str, log: Callable[[str], None] | None = None) -> None:
        self.what = what
        self.log = log or to_stderr
        self.started = time.monotonic()

    def __call__(self, msg: str) -> None:
        self.log(f"{self.what} [{time.monotonic() - self.started:6.1f} s] {msg}")
