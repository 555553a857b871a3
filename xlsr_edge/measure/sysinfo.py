"""Where a figure comes from: the machine, the load on it, the library versions, and the provenance that every
results file carries (``xlsr-edge bench`` and every ``benchmarks/*.py`` script).

* ``machine()``: architecture, CPU model, instruction sets (x86: AVX512-VNNI, AVX512-BF16, AMX...; ARM: ``asimd``,
  ``asimddp``, ``i8mm``, ``bf16``, ``sve``, ``fphp``, ``asimdhp`` plus the core's implementer/part), cores. The
  cpuinfo parsing is ``xlsr_edge.runtime.cpu``'s, the same the runtime's precision hint reads.
* ``environment()``: machine + load + python/numpy/onnxruntime/openvino/torch versions.
* ``start_run(argv)`` ... ``.finish()``: ``{"git_commit", "git_dirty", "command", "machine", "loadavg_before",
  "loadavg_after", "started", "finished"}``: what made the file, on what, under which load.
* ``baseline_check``: was the baseline's own run clean enough to judge others against it? A ratio to a baseline
  that collapsed under load (benchmarks/precision.py once printed "34.55x (meets 5.5x)" when PyTorch eager had
  slowed down with other work on the machine) is not a verdict.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xlsr_edge.runtime.cpu import CPUINFO, read_cpuinfo, usable_cpus

# the checkout this package runs from (benchmarks and `xlsr-edge bench` in a clone); an installed wheel has none
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# a baseline whose repeats spread more than this (slowest / fastest) slowed down during its own run
MAX_BASELINE_SPREAD = 1.5


def loadavg() -> list[float] | None:
    """1, 5 and 15-minute load averages (rounded), or None where the OS has none."""
    if not hasattr(os, "getloadavg"):
        return None
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine() -> dict[str, Any]:
    """{"arch", "cpu", ["cpu_implementer", "cpu_part", "board", "cpuinfo_arch"], "instruction_sets",
    "logical_cpus", "usable_cpus"} of this machine."""
    info = read_cpuinfo(CPUINFO, platform.machine())
    return info.as_dict() | {"logical_cpus": os.cpu_count(), "usable_cpus": usable_cpus()}


def cpu_model() -> str:
    return read_cpuinfo(CPUINFO, platform.machine()).model


def environment() -> dict[str, Any]:
    """Where the figures come from: machine, load, library versions."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        **machine(),
        "numpy": np.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    load = loadavg()
    if load is not None:
        env["loadavg_1m"] = load[0]
        env["loadavg"] = load
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    from importlib import metadata

    for dist in ("openvino", "torch"):  # versions without importing them here
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return env


def isa_summary(isa: Mapping[str, bool] | None) -> str:
    """ "AVX512-VNNI, AVX512-BF16; no AMX-BF16, AMX-INT8" (x86) or "asimd, asimddp; no i8mm, bf16, sve" (ARM)."""
    if not isa:
        return "instruction sets unknown"
    have = [k for k, v in isa.items() if v]
    x86 = any(k.startswith(("AVX", "AMX")) for k in isa)
    lack = [k for k, v in isa.items() if not v and (not x86 or "VNNI" in k or "BF16" in k or "AMX" in k)]
    return (", ".join(have) or "none of " + ", ".join(isa)) + (
        f"; no {', '.join(lack)}" if lack and have else ""
    )


# -- provenance ------------------------------------------------------------------------------------------------


def git_state(root: str | Path = PACKAGE_ROOT) -> dict[str, Any]:
    """{"git_commit": sha or None, "git_dirty": bool or None} of the checkout at `root` (None: not a checkout,
    e.g. an installed wheel: never a commit of some enclosing repository)."""
    root = Path(root)
    none: dict[str, Any] = {"git_commit": None, "git_dirty": None}
    if not (root / ".git").exists():
        return none
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return none
    return {"git_commit": sha or None, "git_dirty": bool(status.strip())}


def _command(argv: Sequence[str]) -> list[str]:
    """argv with a script path inside the checkout made relative to it (benchmarks/precision.py, not /home/...)."""
    out = [str(a) for a in argv]
    if out:
        try:
            out[0] = str(Path(out[0]).resolve().relative_to(PACKAGE_ROOT))
        except ValueError:
            out[0] = Path(out[0]).name or out[0]
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class Run:
    """A run being measured: what and when it started; ``finish()`` adds the machine and the load after."""

    command: list[str]
    git: dict[str, Any]
    loadavg_before: list[float] | None
    started: str = field(default_factory=_now)

    def finish(self) -> dict[str, Any]:
        return {
            **self.git,
            "command": self.command,
            "machine": machine(),
            "loadavg_before": self.loadavg_before,
            "loadavg_after": loadavg(),
            "started": self.started,
            "finished": _now(),
        }


def start_run(argv: Sequence[str] | None = None, root: str | Path = PACKAGE_ROOT) -> Run:
    """Record the command (default: sys.argv), the commit and the load before the work starts."""
    return Run(_command(sys.argv if argv is None else argv), git_state(root), loadavg())


# -- was the baseline's run sane? ---------------------------------------------------------------------------


def baseline_check(
    samples: Sequence[float],
    *,
    loadavg_before: Sequence[float] | None = None,
    loadavg_after: Sequence[float] | None = None,
    own_threads: int = 1,
    cores: int | None = None,
    max_spread: float = MAX_BASELINE_SPREAD,
) -> dict[str, Any]:
    """{"sane": bool, "flags": [reasons]} for the baseline's timed repeats (seconds per call).

    Flagged: repeats spread more than `max_spread` (slowest / fastest: its throughput dropped while it ran), or
    other work above the usable cores (1-minute load before the rounds, or after them less this run's own
    threads). A ratio to a flagged baseline is printed, but no "meets"/"misses" verdict is drawn from it."""
    flags: list[str] = []
    cores = cores or usable_cpus()
    xs = [float(s) for s in samples if s and s > 0]
    if len(xs) > 1 and max(xs) / min(xs) > max_spread:
        flags.append(f"baseline repeats spread {max(xs) / min(xs):.2f}x (slowest/fastest > {max_spread:g}x)")
    if loadavg_before and loadavg_before[0] > cores:
        flags.append(f"load average {loadavg_before[0]:.2f} before the rounds > {cores} usable cores")
    if loadavg_after and loadavg_after[0] - own_threads > cores:
        flags.append(
            f"load average {loadavg_after[0]:.2f} after the rounds, less this run's {own_threads} thread(s), "
            f"> {cores} usable cores"
        )
    return {"sane": not flags, "flags": flags}
