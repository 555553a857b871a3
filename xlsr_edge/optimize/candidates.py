"""What `optimize` tries on this machine: graph variants x backends x OpenVINO precision hints, and what it skips.

Pure functions of the CPU's instruction sets (``xlsr_edge.runtime.cpu``'s names: AVX2, AVX512-VNNI, AMX-INT8, ...;
ARM: asimddp, i8mm, fphp, ...) and of which backends are installed, so the tests feed recorded machines.

* Graph variants: fp32; fp16 where fp16 arithmetic can pay (a CPU with AVX512-FP16/AMX-FP16 or ARM fp16, run on
  OpenVINO with the f16 hint); int8-dynamic and int8 (Q/DQ), each with and without the FeatureEncoder group
  (CNN layers 1-6 as int8 MatMuls: XLS-R-style feature encoders only); where the CPU has an int8 dot product
  (VNNI, AMX, ARM dot product) also int8 Q/DQ with the attention score/context MatMuls in int8 (``+attn``:
  5 % faster on OpenVINO with AMX on the 300M shape, +0.16 CER points on the demo model; the gate decides).
* onnxruntime's int8 kernels per instruction-set class: with an int8 dot product (AVX512-VNNI, AVX-VNNI,
  AMX-INT8; ARM dot product) u8s8 with the full 8-bit range is exact and fastest. Without one (AVX2 or
  AVX512BW only) onnxruntime's u8s8 kernel adds pairs of u8 x s8 products in int16 (``vpmaddubsw``), which can
  saturate, so onnxruntime suggests 7-bit weights (``reduce_range``) or u8u8: all three are planned there and
  the gate and the clock decide. (Planned from onnxruntime's documentation; not measured on an AVX2 CPU here.)
* OpenVINO: every graph but int8-dynamic (its DynamicQuantizeLinear/MatMulInteger graphs run slowly there, with
  4 GB of memory on the 300M shape: docs/precision.md), with the f32 hint and, where the CPU computes them
  natively, bf16 (AMX-BF16 / AVX512-BF16) and f16 (AVX512-FP16 / AMX-FP16; ARM fphp/asimdhp).

The order is the order of measurement, most promising first for the instruction-set class, so a
``--budget-minutes`` cut-off drops the least promising; the fp32 graph on onnxruntime comes first: it is the
reference every speed and CER is compared with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from xlsr_edge.runtime.cpu import is_arm

BACKENDS = ("onnxruntime", "openvino")
REFERENCE = "fp32"  # the graph every candidate is gated and timed against (on onnxruntime)
QUANTIZE_GROUPS = ("MatMul", "Gemm")
FE = "FeatureEncoder"

# instruction sets (xlsr_edge.runtime.cpu names) with native arithmetic of a kind
INT8_DOT = ("AMX-INT8", "AVX512-VNNI", "AVX-VNNI", "asimddp", "i8mm")
BF16_MATH = ("AMX-BF16", "AVX512-BF16")
FP16_MATH = ("AVX512-FP16", "AMX-FP16", "fphp", "asimdhp")


@dataclass(frozen=True)
class GraphVariant:
    """One graph to export: a precision, whether the FeatureEncoder group is quantized, onnxruntime's kernels."""

    precision: str  # fp32 | fp16 | int8-dynamic | int8
    feature_encoder: bool = False
    weight_type: str = "int8"  # int8-dynamic: "int8" (u8s8 kernels) | "uint8" (u8u8)
    reduce_range: bool = False  # int8-dynamic: 7-bit weights (no int16 saturation on AVX2 without VNNI)
    attention: bool = False  # int8 (Q/DQ): the activation x activation attention MatMuls in int8 too

    @property
    def name(self) -> str:
        extra = ["+fe"] if self.feature_encoder else []
        if self.attention:
            extra.append("+attn")
        if self.weight_type == "uint8":
            extra.append(" u8u8")
        if self.reduce_range:
            extra.append(" reduce-range")
        return self.precision + "".join(extra)

    @property
    def quantize_ops(self) -> tuple[str, ...]:
        return (
            QUANTIZE_GROUPS
            + ((FE,) if self.feature_encoder else ())
            + (("Attention",) if self.attention else ())
        )

    def to_json(self) -> dict:
        out = {"precision": self.precision, "quantize_ops": list(self.quantize_ops)}
        if self.precision == "int8-dynamic":
            out.update(weight_type=self.weight_type, reduce_range=self.reduce_range)
        return out


@dataclass(frozen=True)
class Candidate:
    graph: GraphVariant
    backend: str = "onnxruntime"
    precision_hint: str | None = None  # openvino: f32 | bf16 | f16

    @property
    def name(self) -> str:
        return f"{self.graph.name} @ {self.backend}" + (
            f" {self.precision_hint}" if self.precision_hint else ""
        )

    @property
    def is_reference(self) -> bool:
        return self.graph == GraphVariant(REFERENCE) and self.backend == "onnxruntime"


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str


def isa_class(isa: Mapping[str, bool], arch: str = "x86_64") -> str:
    """The instruction-set class that decides the kernels: amx, avx512-vnni, avx-vnni, avx512, avx2, x86;
    arm-i8mm, arm-dotprod, arm."""
    have = {k for k, v in isa.items() if v}
    if is_arm(arch):
        return "arm-i8mm" if "i8mm" in have else "arm-dotprod" if "asimddp" in have else "arm"
    for name, cls in (
        ("AMX-INT8", "amx"),
        ("AVX512-VNNI", "avx512-vnni"),
        ("AVX-VNNI", "avx-vnni"),
        ("AVX512F", "avx512"),
        ("AVX2", "avx2"),
    ):
        if name in have:
            return cls
    return "x86"


def _has(isa: Mapping[str, bool], names: Iterable[str]) -> bool:
    return any(isa.get(n) for n in names)


def openvino_hints(isa: Mapping[str, bool]) -> list[str]:
    """f32 always; bf16 / f16 where the CPU computes them natively."""
    return ["f32"] + (["bf16"] if _has(isa, BF16_MATH) else []) + (["f16"] if _has(isa, FP16_MATH) else [])


def dynamic_kernels(isa: Mapping[str, bool], arch: str = "x86_64") -> list[tuple[str, bool]]:
    """(weight_type, reduce_range) choices for int8-dynamic on onnxruntime (see the module docstring)."""
    if is_arm(arch) or _has(isa, INT8_DOT):
        return [("int8", False)]
    return [("int8", False), ("int8", True), ("uint8", False)]


def graph_variants(
    isa: Mapping[str, bool], arch: str = "x86_64", *, feature_encoder: bool = True
) -> tuple[list[GraphVariant], list[Skipped]]:
    """The graphs worth exporting here; ``feature_encoder``: the model has an XLS-R-style CNN (layer norm)."""
    skipped = []
    out = [GraphVariant("fp32")]
    if _has(isa, FP16_MATH):
        out.append(GraphVariant("fp16"))
    else:
        skipped.append(
            Skipped(
                "fp16",
                "no fp16 arithmetic on this CPU (AVX512-FP16, AMX-FP16, ARM fphp): fp16 pays on GPUs "
                "(export --precision fp16, build-engine)",
            )
        )
    fes = [False, True] if feature_encoder else [False]
    if not feature_encoder:
        skipped.append(
            Skipped(
                "+fe variants",
                "the FeatureEncoder group needs an XLS-R-style CNN (feat_extract_norm='layer')",
            )
        )
    for fe in fes:
        for weight_type, reduce_range in dynamic_kernels(isa, arch):
            out.append(GraphVariant("int8-dynamic", fe, weight_type, reduce_range))
        out.append(GraphVariant("int8", fe))
    if _has(isa, INT8_DOT):  # int8 attention: only with the CNN variant that is fastest there
        out.append(GraphVariant("int8", fes[-1], attention=True))
    return out, skipped


def _priority(c: Candidate, isa: Mapping[str, bool]) -> tuple:
    """Most promising first (lower sorts first): int8 before float, FeatureEncoder first; OpenVINO with the
    CPU's fast hint first where it has bf16 math (measured 1.4-1.5x onnxruntime on AVX512-BF16), onnxruntime
    first elsewhere (AVX2: OpenVINO 1.2x eager against onnxruntime's 2.0x, issue 26)."""
    precision = {"int8": 0, "int8-dynamic": 0, "fp16": 1, "fp32": 2}[c.graph.precision]
    ov_first = _has(isa, BF16_MATH)
    backend = (0 if ov_first else 1) if c.backend == "openvino" else (1 if ov_first else 0)
    hint = {"bf16": 0, "f16": 1, "f32": 2, None: 0}[c.precision_hint]
    kernel = (c.graph.weight_type != "int8", c.graph.reduce_range)
    return (precision, not c.graph.feature_encoder, backend, hint, c.graph.attention, kernel)


def plan(
    isa: Mapping[str, bool],
    arch: str = "x86_64",
    *,
    backends: Sequence[str] = BACKENDS,
    feature_encoder: bool = True,
) -> tuple[list[Candidate], list[Skipped]]:
    """Candidates in measurement order (the fp32 reference first) and what is skipped with why.

    ``backends``: the installed ones (OpenVINO is an extra)."""
    variants, skipped = graph_variants(isa, arch, feature_encoder=feature_encoder)
    if "openvino" not in backends:
        skipped.append(Skipped("openvino", "OpenVINO is not installed (pip install 'xlsr-edge[openvino]')"))
    hints = openvino_hints(isa)
    out: list[Candidate] = []
    for g in variants:
        if g.precision == "fp16":
            skipped.append(
                Skipped(
                    f"{g.name} @ onnxruntime",
                    "onnxruntime's CPU provider has no fp16 GEMM on x86 (Casts around every MatMul): "
                    "no faster than fp32",
                )
            )
        else:
            out.append(Candidate(g, "onnxruntime"))
        if "openvino" not in backends:
            continue
        if g.precision == "int8-dynamic":
            if g.weight_type == "int8" and not g.reduce_range:
                skipped.append(
                    Skipped(
                        f"{g.name} @ openvino",
                        "OpenVINO runs DynamicQuantizeLinear/MatMulInteger graphs slowly, with 4 GB of memory "
                        "on the 300M shape (docs/precision.md): the int8 Q/DQ graph is its int8 form",
                    )
                )
            continue
        # the fp16 graph computes in the hint's precision: only the f16 hint makes it differ from fp32's
        for hint in ["f16"] if g.precision == "fp16" else hints:
            out.append(Candidate(g, "openvino", hint))
    out.sort(key=lambda c: (not c.is_reference, _priority(c, isa)))
    return out, skipped
