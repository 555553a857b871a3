"""Numeric option checks: one rule for every command line flag, option dataclass and server config frame.

A number a user gives is checked once, up front: a number at all, finite (`inf` and `nan` pass `> 0` tests and
break arithmetic much later), within its range, an integer where one is needed. The message names the bound
that was crossed: `--threads must be >= 1, got 0`, `--chunk-seconds must be a finite number, got inf`.

* `check_number(name, value, lo, hi)`: for dataclass `__post_init__` and config frames; raises OptionError
  (an XlsrEdgeError and a ValueError: the CLIs print one `error:` line and exit 2).
* argparse `type=` factories (`positive_float(hi)`, `int_in(lo, hi)`, `threads()`, ...): the command line's
  face of the same rule; `option_error_line` turns argparse's message into the same one line (cli.Parser).

Resources scale with the machine: threads and processes are capped at THREADS_PER_CPU per CPU this process
may run on (`max_threads`), so `--threads 100000` is refused instead of eating memory.

Standard library only, and nothing of the package but constants and errors: every layer uses it.
"""

from __future__ import annotations

import argparse
import math
import numbers
import os
import re
from collections.abc import Callable

from xlsr_edge.constants import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from xlsr_edge.errors import XlsrEdgeError

# Threads (onnxruntime intra-op, torch) and worker processes (beam decoding) per CPU: a few more than the
# cores can help with I/O or hyper-threads; thousands only cost memory (each thread has its stack and arena).
THREADS_PER_CPU = 4
# Ceilings of sizes that are not tied to this machine (a Ray cluster's workers, an inference batch).
MAX_BATCH = 1024  # windows/utterances per inference call: 1024 x 30 s windows are 2 GB of float32 already
MAX_CLUSTER_WORKERS = 100_000
MAX_STREAMS = 100_000  # open streams of one server (each holds its audio and a slot)
MAX_SEED = 2**32 - 1  # numpy's RandomState takes seeds below 2**32
# Durations given in seconds (limits, windows): a week, far beyond any real value, far below an overflow.
MAX_SECONDS = 7 * 24 * 3600.0
# Offline windows (transcribe --chunk-seconds, --context-seconds): the model attends over the whole window,
# so its memory grows with the square of the window; an hour is already far past what fits.
MAX_CHUNK_SECONDS = 3600.0
MAX_CONTEXT_SECONDS = 600.0
# Live streams (stream, serve): windows of a few seconds; the limits leave room for experiments, not for hours.
MAX_STREAM_SECONDS = 60.0  # chunk, left/right context, VAD silence and padding
MAX_UTTERANCE_SECONDS = 3600.0  # a stream holds its utterance's audio until the final
MAX_BEAM_WIDTH = 100_000
SAMPLE_RATES = (MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)  # the audio front end's rule (runtime.audio.check_rate)

_SHOWN_CHARS = 40  # of a bad value in a message (a 401-digit number is shown cut)


class OptionError(XlsrEdgeError, ValueError):
    """A number outside its range, not finite, or not a number."""


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's share), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def max_threads() -> int:
    """The most threads (or worker processes) one option may ask for on this machine."""
    return THREADS_PER_CPU * cpu_count()


def threads_hint() -> str:
    n = cpu_count()
    return f"{THREADS_PER_CPU} per CPU; this machine has {n} CPU{'' if n == 1 else 's'}"


def _cut(text: str) -> str:
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _shown(value: object) -> str:
    return _cut(repr(value))


def _bound(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def problem(
    value: object,
    lo: float | None = None,
    hi: float | None = None,
    *,
    integer: bool = False,
    lo_open: bool = False,
    hi_open: bool = False,
    hint: str = "",
    shown: str | None = None,
) -> str | None:
    """What is wrong with `value` ("must be >= 1, got 0"), or None when it is a finite number in range.
    `shown`: the value as the user wrote it (a flag's text), for the message."""
    kind = "an integer" if integer else "a number"
    got = _shown(value) if shown is None else shown
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real):
        return f"must be {kind}, got {got}"
    try:
        x = float(value)
    except OverflowError:  # an int of hundreds of digits: past every bound, and past what a float holds
        if not integer:
            return f"must be a finite number, got {got}"
        x = math.inf if value > 0 else -math.inf  # type: ignore[operator]
    if math.isnan(x) or (math.isinf(x) and not integer):
        return f"must be a finite number, got {got}"
    if lo is not None and (x <= lo if lo_open else x < lo):
        return f"must be {'>' if lo_open else '>='} {_bound(lo)}, got {got}"
    if hi is not None and (x >= hi if hi_open else x > hi):
        extra = f" ({hint})" if hint else ""
        return f"must be {'<' if hi_open else '<='} {_bound(hi)}{extra}, got {got}"
    return None


def check_number(
    name: str,
    value: object,
    lo: float | None = None,
    hi: float | None = None,
    *,
    integer: bool = False,
    lo_open: bool = False,
    hi_open: bool = False,
    hint: str = "",
) -> float | int:
    """`value` as a float (an int with integer=True) when it is a finite number within [lo, hi] (open ends with
    lo_open/hi_open, no bound where None); otherwise OptionError("NAME must be ..., got VALUE")."""
    why = problem(value, lo, hi, integer=integer, lo_open=lo_open, hi_open=hi_open, hint=hint)
    if why is not None:
        raise OptionError(f"{name} {why}")
    return int(value) if integer else float(value)  # type: ignore[arg-type]


def check_threads(name: str, value: object) -> int:
    """Threads or worker processes: 1 to max_threads()."""
    return int(check_number(name, value, 1, max_threads(), integer=True, hint=threads_hint()))


def check_workers(name: str, value: object) -> int:
    """Worker processes that may be 0 (none): 0 to max_threads()."""
    return int(check_number(name, value, 0, max_threads(), integer=True, hint=threads_hint()))


def check_sample_rate(name: str, value: object) -> int:
    """A sample rate given as an option: the rule files follow (8 to 384 kHz, see runtime.audio.check_rate)."""
    return int(
        check_number(name, value, *SAMPLE_RATES, integer=True, hint="the fastest audio converters' rate")
    )


# -- argparse --------------------------------------------------------------------------------------------------


class NumberType:
    """An argparse `type=`: parses the text and applies `problem`; its messages start with "must be"."""

    def __init__(
        self,
        lo: float | None,
        hi: float | Callable[[], float] | None,
        *,
        integer: bool,
        lo_open: bool = False,
        hi_open: bool = False,
        hint: Callable[[], str] | str = "",
    ) -> None:
        self.lo, self.hi, self.integer, self.hint = lo, hi, integer, hint
        self.lo_open, self.hi_open = lo_open, hi_open
        self.__name__ = "integer" if integer else "number"  # argparse names the type in some messages

    def __call__(self, text: str) -> float | int:
        try:
            value: float | int = int(text) if self.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {'an integer' if self.integer else 'a number'}, got {_shown(text)}"
            ) from None
        hi = self.hi() if callable(self.hi) else self.hi
        hint = self.hint() if callable(self.hint) else self.hint
        why = problem(
            value,
            self.lo,
            hi,
            integer=self.integer,
            lo_open=self.lo_open,
            hi_open=self.hi_open,
            hint=hint,
            shown=_cut(text.strip()),  # as typed: 1e400, not inf
        )
        if why is not None:
            raise argparse.ArgumentTypeError(why)
        return value

    def __repr__(self) -> str:  # argparse shows repr(type) when a default fails to convert
        return self.__name__


def float_in(
    lo: float | None, hi: float | None, *, lo_open: bool = False, hi_open: bool = False, hint: str = ""
) -> NumberType:
    """A finite float within [lo, hi] (an open end with lo_open / hi_open)."""
    return NumberType(lo, hi, integer=False, lo_open=lo_open, hi_open=hi_open, hint=hint)


def finite() -> NumberType:
    """Any finite float (the range is checked where the value is used)."""
    return float_in(None, None)


def positive_float(hi: float | None = MAX_SECONDS, *, hint: str = "") -> NumberType:
    """A finite float > 0 and <= hi (seconds, rates)."""
    return float_in(0.0, hi, lo_open=True, hint=hint)


def nonneg_float(hi: float | None = MAX_SECONDS, *, hint: str = "") -> NumberType:
    """A finite float >= 0 and <= hi (0 often means "off" or "no limit")."""
    return float_in(0.0, hi, hint=hint)


def int_in(lo: int | None, hi: int | None, *, hint: str = "") -> NumberType:
    """An integer within [lo, hi]."""
    return NumberType(lo, hi, integer=True, hint=hint)


def positive_int(hi: int | None = None, *, hint: str = "") -> NumberType:
    return int_in(1, hi, hint=hint)


def workers() -> NumberType:
    """Beam decoding processes: 0 (none: decode in this process) to max_threads()."""
    return NumberType(0, max_threads, integer=True, hint=threads_hint)


def chunk_seconds() -> NumberType:
    """Offline windows (transcribe, transcribe-dataset): 0 (the whole input at once) to MAX_CHUNK_SECONDS."""
    return nonneg_float(MAX_CHUNK_SECONDS, hint="the model attends over the whole window; 0: no chunking")


def context_seconds() -> NumberType:
    return nonneg_float(MAX_CONTEXT_SECONDS)


def seed() -> NumberType:
    return int_in(0, MAX_SEED)


def threads() -> NumberType:
    """--threads, --workers, --jobs: 1 to max_threads() (looked up when the value is parsed)."""
    return NumberType(1, max_threads, integer=True, hint=threads_hint)


def sample_rate() -> NumberType:
    """--sample-rate: 8000 to 384000 Hz, as for files."""
    return int_in(*SAMPLE_RATES, hint="the fastest audio converters' rate")


_ARGPARSE_VALUE_ERROR = re.compile(r"^argument (?P<flags>[^:]+): (?P<why>must be .*)$", re.S)


def option_error_line(message: str) -> str | None:
    """argparse's "argument -o/--output: must be ..." as "--output must be ..." (one `error:` line, like the
    other user errors), or None for argparse's own messages (those keep its usage line)."""
    m = _ARGPARSE_VALUE_ERROR.match(message)
    if m is None:
        return None
    return f"{m['flags'].split('/')[-1]} {m['why']}"
