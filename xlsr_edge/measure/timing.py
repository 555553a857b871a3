"""Measurement primitives of the benchmarks: interleaved timing rounds, summaries, throughput, memory, sizes.

* ``interleave``: warm-up calls (excluded), then ``repeat`` rounds in which every case runs once, cases
  of one group back to back in an order that rotates every round, so machine noise (other processes,
  thermal drift) hits all cases alike. Wall-clock (``time.perf_counter``) or process CPU time
  (``time.process_time``, all threads of this process).
* ``summarize`` (n, mean, p50, p95, min, max; percentiles linear-interpolated as numpy does),
  ``throughput`` (audio-seconds per second), ``rtf`` and ``ratio``.
* ``peak_rss_bytes`` / ``rss_bytes``: VmHWM / VmRSS from ``/proc/self/status`` (no psutil); elsewhere
  ``resource.getrusage``'s ``ru_maxrss``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])  # "VmHWM:   123456 kB"
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process: VmHWM from /proc/self/status, else getrusage's ru_maxrss."""
    kb = _proc_status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):
        return None
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # macOS: bytes, Linux: KiB


def rss_bytes() -> int | None:
    """Current resident set size (VmRSS); None where /proc is not available."""
    kb = _proc_status_kb("VmRSS")
    return None if kb is None else kb * 1024


def mib(n: float | None) -> float | None:
    return None if n is None else n / (1024 * 1024)


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def interleave(
    cases: Mapping[Hashable, Callable[[], Any]],
    repeat: int,
    *,
    warmup: int = 1,
    clock: str = "wall",
    self_timed: bool = False,
    group: Callable[[Hashable], Hashable] | None = None,
) -> dict[Hashable, list[float]]:
    """Time every case `repeat` times in interleaved rounds; returns the samples (seconds) per case.

    warmup: untimed calls of each case first, in the mapping's order. Each round runs every case once:
    cases of one group (``group(key)``; default: all in one group) back to back, groups in the order of
    their first case, and inside a group the order rotates by one every round, so no case is always first.
    clock: "wall" (perf_counter) or "cpu" (process_time: CPU seconds of all threads of this process).
    self_timed: the callables measure themselves and return seconds (e.g. a worker process timing its own
    model call); otherwise the clock is read around each call and return values are ignored.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    try:
        now = CLOCKS[clock]
    except KeyError:
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}") from None
    keys = list(cases)
    groups: dict[Hashable, list[Hashable]] = {}
    for k in keys:
        groups.setdefault(group(k) if group else None, []).append(k)
    for _ in range(warmup):
        for k in keys:
            cases[k]()
    samples: dict[Hashable, list[float]] = {k: [] for k in keys}
    for r in range(repeat):
        for members in groups.values():
            shift = r % len(members)
            for k in members[shift:] + members[:shift]:
                if self_timed:
                    samples[k].append(float(cases[k]()))
                else:
                    t0 = now()
                    cases[k]()
                    samples[k].append(now() - t0)
    return samples


def percentile(samples: Sequence[float], q: float) -> float:
    """q-th percentile (0..100), linear interpolation between closest ranks (numpy's default)."""
    if not len(samples):
        raise ValueError("no samples")
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """n, mean, p50, p95, min, max, stdev of timing samples (seconds)."""
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no samples")
    return {
        "n": int(a.size),
        "mean": float(a.mean()),
        "p50": percentile(a, 50),
        "p95": percentile(a, 95),
        "min": float(a.min()),
        "max": float(a.max()),
        "stdev": float(a.std(ddof=1)) if a.size > 1 else 0.0,
    }


def throughput(audio_seconds: float, seconds: float) -> float:
    """Audio-seconds processed per second of (wall or CPU) time."""
    return audio_seconds / seconds if seconds > 0 else math.inf


def rtf(audio_seconds: float, seconds: float) -> float:
    """Real-time factor: processing time / audio duration (< 1 is faster than real time)."""
    return seconds / audio_seconds if audio_seconds > 0 else math.inf


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None or baseline == 0:
        return None
    return value / baseline


def folder_size_bytes(path: str | Path, names: Sequence[str] | None = None) -> int:
    """Bytes of every file under `path` (or of the given file names in it); a file path gives its size."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if names is not None:
        return sum((p / n).stat().st_size for n in names if (p / n).is_file())
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
