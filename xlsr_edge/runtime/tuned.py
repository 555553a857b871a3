"""The runtime a bundle was optimized for: ``bundle.json``'s ``"runtime"`` (written by `xlsr-edge optimize`), read back.

``Recognizer.from_bundle`` and the commands use it where the caller gave nothing (explicit values win):

* ``backend``, ``threads`` and OpenVINO's ``precision_hint`` as measured fastest under the accuracy gate;
* on a CPU whose instruction sets differ from the recorded ones (or another architecture), one warning per
  bundle and process suggests running `xlsr-edge optimize` again there; the recorded backend and threads are
  still used (never a failure), but a bf16/f16 hint falls back to ``auto`` (chosen from this CPU's flags);
* a recorded OpenVINO runtime on a device without OpenVINO runs on onnxruntime, with a warning.

Old bundles have no ``"runtime"``: onnxruntime with its defaults, as before. No torch, nothing of the export side.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xlsr_edge.runtime.cpu import CpuInfo, normalize_arch, read_cpuinfo

logger = logging.getLogger(__name__)
DEFAULT_BACKEND = "onnxruntime"


@dataclass(frozen=True)
class TunedRuntime:
    backend: str
    precision_hint: str | None = None
    threads: int | None = None
    chosen: str | None = None
    cpu: str = "?"
    arch: str = "?"
    instruction_sets: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> TunedRuntime | None:
        """From a validated ``bundle.json`` ``"runtime"`` (xlsr_edge.bundle checks the types), or None."""
        if not record:
            return None
        machine = record.get("machine") or {}
        return cls(
            backend=record["backend"],
            precision_hint=record.get("precision_hint"),
            threads=record.get("threads"),
            chosen=record.get("chosen"),
            cpu=str(machine.get("cpu", "?")),
            arch=str(machine.get("arch", "?")),
            instruction_sets=dict(machine.get("instruction_sets") or {}),
        )

    def describe(self) -> str:
        hint = f" {self.precision_hint}" if self.precision_hint else ""
        threads = f", {self.threads} thread{'s' if self.threads != 1 else ''}" if self.threads else ""
        return f"{self.backend}{hint}{threads}"


def isa_differences(recorded: Mapping[str, bool], current: Mapping[str, bool]) -> tuple[list[str], list[str]]:
    """(instruction sets the recorded CPU had and this one lacks, those this one adds), over the names either
    record has (a name only one side lists counts as absent on the other)."""
    names = list(dict.fromkeys([*recorded, *current]))
    lacks = [n for n in names if recorded.get(n) and not current.get(n)]
    adds = [n for n in names if current.get(n) and not recorded.get(n)]
    return lacks, adds


def mismatch(tuned: TunedRuntime, cpu: CpuInfo) -> str | None:
    """Why the recorded choice may not hold on ``cpu`` (another architecture or other instruction sets), or None."""
    if tuned.arch != "?" and normalize_arch(tuned.arch) != normalize_arch(cpu.arch):
        return f"it was optimized on {tuned.arch} ({tuned.cpu}), this is {cpu.arch} ({cpu.model})"
    lacks, adds = isa_differences(tuned.instruction_sets, cpu.instruction_sets())
    if not lacks and not adds:
        return None
    parts = ([f"lacks {', '.join(lacks)}"] if lacks else []) + ([f"adds {', '.join(adds)}"] if adds else [])
    return f"it was optimized on {tuned.cpu}; this CPU ({cpu.model}) {' and '.join(parts)}"


_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_once(key: str, message: str) -> bool:
    """Log ``message`` as a warning the first time ``key`` is seen in this process; True when it was logged."""
    with _warned_lock:
        if key in _warned:
            return False
        _warned.add(key)
    logger.warning("warning: %s", message)
    return True


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def runtime_defaults(
    record: Mapping[str, Any] | None,
    folder: str | Path,
    *,
    backend: str | None,
    threads: int | None,
    runner_kwargs: Mapping[str, Any],
    cpu: CpuInfo | None = None,
) -> tuple[str, int | None, dict[str, Any]]:
    """(backend, threads, runner keywords) for a bundle: the caller's where given, else the recorded ones.

    Warns (once per bundle) when this CPU differs from the one the record was measured on, and when a recorded
    OpenVINO runtime cannot be used here; never raises for either."""
    kwargs = dict(runner_kwargs)
    tuned = TunedRuntime.from_record(record)
    if tuned is None:
        return backend or DEFAULT_BACKEND, threads, kwargs
    cpu = cpu or read_cpuinfo()
    why = mismatch(tuned, cpu)
    if why:
        warn_once(
            f"isa:{Path(folder).resolve()}",
            f"{folder}: {why}; its recorded runtime ({tuned.describe()}) may not be the fastest here: "
            "run `xlsr-edge optimize` on this machine",
        )
    chosen = backend or tuned.backend
    if backend is None and chosen == "openvino" and not _installed("openvino"):
        warn_once(
            f"ov:{Path(folder).resolve()}",
            f"{folder} was optimized for OpenVINO, which is not installed here: running it on onnxruntime "
            "(pip install 'xlsr-edge[openvino]' for the measured speed)",
        )
        chosen = DEFAULT_BACKEND
    if threads is None and chosen in ("onnxruntime", "openvino"):  # TensorRT takes no thread count
        threads = tuned.threads
    hint = tuned.precision_hint
    if chosen == "openvino" and tuned.backend == "openvino" and "precision_hint" not in kwargs and hint:
        # another CPU may lack the recorded hint's arithmetic: let OpenVINO's runner choose from this one's flags
        kwargs["precision_hint"] = "auto" if why and hint != "f32" else hint
    return chosen, threads, kwargs
