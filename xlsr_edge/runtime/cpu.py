"""What CPU this is, read from /proc/cpuinfo: architecture, model, feature flags, and on ARM the implementer/part.

One parser for both halves: the runtime's choices (OpenVINO's precision hint) and the benchmarks' machine record
(``xlsr_edge.measure.sysinfo``) read the same ``CpuInfo``. Pure functions of the text, so the tests feed recorded
cpuinfo files of other machines (tests/data/cpuinfo/).

* x86: ``flags`` holds the instruction sets (AVX2, AVX512-VNNI, AVX512-BF16, AMX...).
* ARM (aarch64): ``Features`` holds them under other names (``asimd``, ``asimddp``, ``i8mm``, ``bf16``, ``sve``,
  ``fphp``/``asimdhp`` for half-precision arithmetic); the core is named by ``CPU implementer`` + ``CPU part``
  (0x41 + 0xd42 = Arm Cortex-A78AE, Jetson Orin), since ARM kernels print no ``model name`` worth reading.

Under user-mode emulation (qemu-user) /proc/cpuinfo is the host's: ``read_cpuinfo`` then reports the
interpreter's architecture with the text's own next to it (``cpuinfo_arch``), and the flags of the text.
No torch, nothing of the package: part of the runtime.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")

# x86: what `bench` and the benchmarks report, name -> /proc/cpuinfo flag
X86_INSTRUCTION_SETS = {
    "AVX2": "avx2",
    "AVX512F": "avx512f",
    "AVX-VNNI": "avx_vnni",
    "AVX512-VNNI": "avx512_vnni",
    "AVX512-BF16": "avx512_bf16",
    "AVX512-FP16": "avx512_fp16",
    "AMX-INT8": "amx_int8",
    "AMX-BF16": "amx_bf16",
    "AMX-FP16": "amx_fp16",
}
# ARM: the Features that decide which kernels run (dot products, int8 matmul, bf16, SVE, fp16 arithmetic)
ARM_FEATURES = ("asimd", "asimddp", "i8mm", "bf16", "sve", "fphp", "asimdhp")
# x86 flags with native bf16 arithmetic (AMX tiles, or AVX512 dot products)
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
# ARM Features with native fp16 arithmetic (scalar and vector): what OpenVINO's ARM plugin runs best in f16
ARM_FP16_FLAGS = frozenset({"fphp", "asimdhp"})

ARM_IMPLEMENTERS = {
    0x41: "Arm",
    0x42: "Broadcom",
    0x4E: "NVIDIA",
    0x51: "Qualcomm",
    0x61: "Apple",
    0xC0: "Ampere",
}
# (implementer, part) -> core name, from Arm's technical reference manuals (MIDR_EL1.PartNum)
ARM_PARTS = {
    (0x41, 0xD03): "Cortex-A53",
    (0x41, 0xD05): "Cortex-A55",
    (0x41, 0xD08): "Cortex-A72",
    (0x41, 0xD0B): "Cortex-A76",
    (0x41, 0xD0C): "Neoverse-N1",
    (0x41, 0xD40): "Neoverse-V1",
    (0x41, 0xD41): "Cortex-A78",
    (0x41, 0xD42): "Cortex-A78AE",
    (0x41, 0xD49): "Neoverse-N2",
    (0x41, 0xD4F): "Neoverse-V2",
    (0x4E, 0x004): "Carmel",
}
_ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64", "x64": "x86_64"}


def normalize_arch(arch: str) -> str:
    """platform.machine()'s spelling to Linux's: arm64 -> aarch64, AMD64 -> x86_64."""
    a = arch.strip().lower()
    return _ARCH_ALIASES.get(a, a)


def is_arm(arch: str) -> bool:
    return normalize_arch(arch).startswith(("aarch64", "arm"))


@dataclass(frozen=True)
class CpuInfo:
    arch: str  # "x86_64", "aarch64", ...
    model: str  # x86 "model name"; ARM "Arm Cortex-A78AE" from implementer + part
    flags: frozenset[str] = frozenset()
    implementer: str | None = None  # ARM "CPU implementer", e.g. "0x41"
    part: str | None = None  # ARM "CPU part", e.g. "0xd42"
    board: str | None = None  # ARM "Model" line (Raspberry Pi), where the kernel prints one
    cpuinfo_arch: str | None = None  # the text's own architecture where it differs from `arch` (emulation)

    @property
    def arm(self) -> bool:
        return is_arm(self.cpuinfo_arch or self.arch)

    def instruction_sets(self) -> dict[str, bool]:
        """x86: {"AVX512-VNNI": True, ...}; ARM: {"asimd": True, "i8mm": False, ...}, from the text's flags."""
        if self.arm:
            return {name: name in self.flags for name in ARM_FEATURES}
        return {name: flag in self.flags for name, flag in X86_INSTRUCTION_SETS.items()}

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"arch": self.arch, "cpu": self.model}
        for key in ("implementer", "part", "board", "cpuinfo_arch"):
            value = getattr(self, key)
            if value is not None:
                out["cpu_" + key if key in ("implementer", "part") else key] = value
        out["instruction_sets"] = self.instruction_sets()
        return out


def _fields(text: str) -> dict[str, str]:
    """key -> value of the first occurrence of each key: the first processor's lines (later processors repeat
    the same keys), plus machine-wide lines printed once (ARM's ``Model``, ``Hardware``)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def _text_arch(fields: dict[str, str]) -> str | None:
    if "cpu implementer" in fields or "features" in fields:
        return "aarch64" if fields.get("cpu architecture", "8").strip() in ("8", "9", "AArch64") else "armv7l"
    if "flags" in fields or "vendor_id" in fields:
        return "x86_64"
    return None


def _hex(value: str | None) -> int | None:
    try:
        return int(value, 16) if value else None
    except ValueError:
        return None


def parse_cpuinfo(text: str, arch: str | None = None) -> CpuInfo:
    """A CpuInfo from /proc/cpuinfo text; `arch` is the interpreter's (default: the text's own)."""
    fields = _fields(text)
    own = _text_arch(fields)
    arch = normalize_arch(arch or own or platform.machine())
    flags = frozenset((fields.get("flags") or fields.get("features") or "").split())
    implementer, part = fields.get("cpu implementer"), fields.get("cpu part")
    model = fields.get("model name") or ""
    if own is not None and is_arm(own):
        imp, prt = _hex(implementer), _hex(part)
        core = ARM_PARTS.get((imp, prt)) if imp is not None and prt is not None else None
        vendor = ARM_IMPLEMENTERS.get(imp, implementer or "") if imp is not None else ""
        model = " ".join(x for x in (vendor, core or (f"part {part}" if part else "")) if x) or model or "ARM"
    return CpuInfo(
        arch=arch,
        model=model or platform.processor() or arch,
        flags=flags,
        implementer=implementer,
        part=part,
        board=fields.get("model") if own is not None and is_arm(own) else None,
        cpuinfo_arch=own if own is not None and own != arch else None,
    )


def read_cpuinfo(path: str | Path = CPUINFO, arch: str | None = None) -> CpuInfo:
    """This machine's CpuInfo (`arch` default: platform.machine()); an empty record where the file is unreadable."""
    arch = arch or platform.machine()
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text, arch)


def cpu_flags(cpuinfo: str | Path = CPUINFO) -> frozenset[str]:
    """The first processor's feature flags (x86 ``flags``, ARM ``Features``); empty where unreadable."""
    return read_cpuinfo(cpuinfo).flags


def _looks_arm(flags: frozenset[str]) -> bool:
    return "asimd" in flags or ("fp" in flags and "fpu" not in flags)


def instruction_sets(flags: Iterable[str] | None = None) -> dict[str, bool]:
    """{"AVX512-VNNI": True, ...} (x86) or {"asimd": True, "i8mm": False, ...} (ARM) for the given flags,
    default: this CPU."""
    if flags is None:
        return read_cpuinfo().instruction_sets()
    have = frozenset(flags)
    arch = "aarch64" if _looks_arm(have) else "x86_64"
    return CpuInfo(arch, "", have).instruction_sets()


def usable_cpus() -> int:
    """Cores this process may run on (affinity / cgroup-pinned), else the logical CPU count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
