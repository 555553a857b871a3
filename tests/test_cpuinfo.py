"""The cpuinfo parser (xlsr_edge.runtime.cpu) on recorded ARM texts, the precision hint it drives, and the machine
record of the benchmarks (xlsr_edge.measure.sysinfo).

The texts in tests/data/cpuinfo/ are written from the vendors' published feature lists (Arm's technical reference
manuals for the cores, NVIDIA / Raspberry Pi / AWS documents for the boards; see the README there), not captured on
the boards: none is available here."""

from __future__ import annotations

from pathlib import Path

import pytest

from xlsr_edge.runtime.cpu import ARM_FEATURES, instruction_sets, parse_cpuinfo, read_cpuinfo
from xlsr_edge.runtime.openvino import choose_precision_hint, resolve_precision_hint

DATA = Path(__file__).parent / "data" / "cpuinfo"


@pytest.mark.parametrize(
    ("name", "core", "have", "lack"),
    [
        (
            "jetson-orin-cortex-a78ae",
            "Arm Cortex-A78AE",
            {"asimd", "asimddp", "fphp", "asimdhp"},
            {"i8mm", "bf16", "sve"},
        ),
        (
            "raspberry-pi-5-cortex-a76",
            "Arm Cortex-A76",
            {"asimd", "asimddp", "fphp", "asimdhp"},
            {"i8mm", "bf16", "sve"},
        ),
        ("graviton3-neoverse-v1", "Arm Neoverse-V1", set(ARM_FEATURES), set()),
    ],
)
def test_arm_boards_record_arm_features_and_pick_f16(name, core, have, lack):
    info = parse_cpuinfo((DATA / f"{name}.txt").read_text(encoding="utf-8"))
    assert info.arch == "aarch64" and info.arm and info.cpuinfo_arch is None
    assert info.model == core and info.implementer == "0x41"
    isa = info.instruction_sets()
    assert list(isa) == list(ARM_FEATURES)  # ARM names, not x86 flags
    assert {k for k, v in isa.items() if v} == have and {k for k, v in isa.items() if not v} == lack
    record = info.as_dict()
    assert record["arch"] == "aarch64" and record["cpu"] == core and record["cpu_part"] == info.part
    assert not any(k.startswith(("AVX", "AMX")) for k in record["instruction_sets"])
    # fp16 arithmetic on every one of them: OpenVINO's ARM plugin runs f16
    assert choose_precision_hint(info.flags) == "f16" == resolve_precision_hint("auto", info.flags)
    assert instruction_sets(info.flags) == isa  # the flags alone say ARM


def test_board_model_line_and_arm_without_fp16():
    pi = parse_cpuinfo((DATA / "raspberry-pi-5-cortex-a76.txt").read_text(encoding="utf-8"))
    assert pi.board == "Raspberry Pi 5 Model B Rev 1.0" and pi.part == "0xd0b"
    # Cortex-A72 (Raspberry Pi 4): no fp16 arithmetic -> f32
    a72 = parse_cpuinfo(
        "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
        "CPU architecture: 8\nCPU part\t: 0xd08\n"
    )
    assert a72.model == "Arm Cortex-A72" and choose_precision_hint(a72.flags) == "f32"
    assert not any(a72.instruction_sets()[k] for k in ("asimddp", "fphp", "asimdhp"))


def test_x86_text_and_emulated_arm(tmp_path):
    x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B45\nflags\t\t: fpu avx2 avx512_bf16\n"
    info = parse_cpuinfo(x86)
    assert info.arch == "x86_64" and not info.arm and info.model == "AMD EPYC 9B45"
    assert info.instruction_sets()["AVX512-BF16"] and not info.instruction_sets()["AMX-BF16"]
    assert choose_precision_hint(info.flags) == "bf16"
    # qemu-user: an aarch64 interpreter reading the x86 host's /proc/cpuinfo says both
    emulated = parse_cpuinfo(x86, arch="arm64")
    assert emulated.arch == "aarch64" and emulated.cpuinfo_arch == "x86_64"
    assert emulated.as_dict()["cpuinfo_arch"] == "x86_64" and "AVX2" in emulated.instruction_sets()
    missing = read_cpuinfo(tmp_path / "none", arch="aarch64")
    assert missing.arch == "aarch64" and missing.flags == frozenset()


def test_sysinfo_machine_record_uses_the_parser(tmp_path, monkeypatch):
    from xlsr_edge.measure import sysinfo

    orin = DATA / "jetson-orin-cortex-a78ae.txt"
    monkeypatch.setattr(sysinfo, "CPUINFO", orin)
    monkeypatch.setattr(sysinfo.platform, "machine", lambda: "aarch64")
    m = sysinfo.machine()
    assert m["arch"] == "aarch64" and m["cpu"] == "Arm Cortex-A78AE" and m["cpu_part"] == "0xd42"
    assert m["instruction_sets"]["asimddp"] and not m["instruction_sets"]["sve"]
    assert m["logical_cpus"] >= 1 and m["usable_cpus"] >= 1
    assert "asimddp" in sysinfo.isa_summary(m["instruction_sets"])
    assert "no i8mm, bf16, sve" in sysinfo.isa_summary(m["instruction_sets"])
