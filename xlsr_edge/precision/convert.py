"""fp16 / int8-dynamic / int8 bundles: convert the verified fp32 graph, gate it on transcribed speech, report.

Called by xlsr_edge.export's export_bundle after the fp32 parity gate passed. The bundle ships only the converted graph: the fp32
graph is reproducible from the checkpoint, and the gate's fp32 figures are kept in bundle.json.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xlsr_edge.bundle import ModelInfo
from xlsr_edge.constants import MODEL_ONNX, MODEL_ONNX_DATA
from xlsr_edge.errors import ExportError

if TYPE_CHECKING:  # the quantization modules import onnx/onnxruntime.quantization: load them when used
    from xlsr_edge.precision.calibration_set import CalibrationSet
    from xlsr_edge.precision.gate import GateSet


logger = logging.getLogger(__name__)
# Below these, a gate (or calibration) set says little: the shipped clips are 4 Turkish utterances, 9.3 s.
GATE_MIN_UTTERANCES = 20
GATE_MIN_SECONDS = 60.0
# transcript letters the vocabulary cannot write (the shipped clips on an English vocabulary: ~13 %)
FOREIGN_LETTERS_SHARE = 0.05


def _log(msg: str) -> None:
    logger.info(msg)


@dataclass
class PrecisionInputs:
    source: str
    calibration: CalibrationSet | None  # int8 (static) only
    gate: GateSet


def load_precision_inputs(options, info: ModelInfo, languages: Sequence[str] = ()) -> PrecisionInputs:
    """Read the manifest, the calibration set (int8) and the gate's utterances, before any export work;
    warn when they are too few or of another language than the model's (``languages``, where known)."""
    from xlsr_edge.data import CLIPS_MANIFEST
    from xlsr_edge.datasets import read_manifest
    from xlsr_edge.precision.calibration_set import load_calibration_set
    from xlsr_edge.precision.gate import select_gate_set

    source = options.calibration if options.calibration is not None else CLIPS_MANIFEST
    calib = None
    if options.precision == "int8":
        calib = load_calibration_set(source, info, options.calibration_size, options.seed)
    manifest = read_manifest(source)
    used = calib.utterances if calib is not None else []
    gate = select_gate_set(manifest, used, info, options.gate_size, options.seed, str(source))
    inputs = PrecisionInputs(source=str(source), calibration=calib, gate=gate)
    languages = [*languages, *([options.target_lang] if getattr(options, "target_lang", None) else [])]
    for message in gate_set_warnings(inputs, info, options.calibration is None, languages):
        logger.warning("warning: %s", message)
    return inputs


def _is_turkish(language: str) -> bool:
    return re.split(r"[-_]", language.lower())[0] in ("tr", "tur")


def gate_set_warnings(
    inputs: PrecisionInputs,
    info: ModelInfo,
    shipped: bool,
    languages: Sequence[str] = (),
    fix: str | None = None,
) -> list[str]:
    """Why the accuracy gate's verdict (and int8's ranges) may not hold for this model: too little speech, or
    speech of another language (``languages``: the model's, where known; else the share of transcript letters
    its vocabulary cannot write). ``shipped``: the set is the shipped Turkish demo clips (no --calibration).
    ``fix``: what to do about it, where the command's flags differ from export's."""
    uses = "int8 calibration and the gate read it" if inputs.calibration is not None else "the gate reads it"
    fix = fix or f"give --calibration MANIFEST, transcribed speech in the model's language ({uses})"
    out = []
    gate = inputs.gate.describe(info.sample_rate)
    n, seconds = gate["utterances"], gate["seconds"]
    what = "the shipped Turkish demo clips" if shipped else inputs.source
    if n < GATE_MIN_UTTERANCES or seconds < GATE_MIN_SECONDS:
        calib = inputs.calibration
        also = (
            f" and int8 calibration on {len(calib.utterances)} ({calib.seconds(info.sample_rate):.1f} s)"
            if calib is not None
            else ""
        )
        out.append(
            f"the accuracy gate decodes {n} utterances ({seconds:.1f} s) of {what}{also}: too few to show a "
            f"real accuracy loss (want >= {GATE_MIN_UTTERANCES} utterances, >= {GATE_MIN_SECONDS:g} s); {fix}"
        )
    foreign = [lang for lang in languages if not _is_turkish(lang)]
    if shipped and foreign:
        out.append(f"the shipped demo clips are Turkish, not {'/'.join(foreign)} like the model: {fix}")
        return out
    writable = {c for token in info.vocab for c in token.lower()}
    letters = [c for u in inputs.gate.utterances for c in (u.text or "").lower() if c.isalpha()]
    missing = [c for c in letters if c not in writable]
    if letters and len(missing) / len(letters) > FOREIGN_LETTERS_SHARE:
        examples = " ".join(sorted(set(missing))[:6])
        out.append(
            f"{len(missing) / len(letters):.0%} of the letters in the transcripts of {what} are not in the "
            f"model's vocabulary ({examples}): another language than the model's? {fix}"
        )
    return out


def convert_graph(
    fp32_path: Path, dst: Path, info: ModelInfo, options, calib: CalibrationSet | None
) -> dict[str, Any]:
    """Write ``options.precision``'s graph of ``fp32_path`` to ``dst`` (no gate); return the converter's method
    record. int8-dynamic reads ``options.weight_type`` / ``reduce_range`` where given (xlsr-edge optimize)."""
    from xlsr_edge.precision.dynamic import quantize_int8_dynamic
    from xlsr_edge.precision.fp16 import convert_fp16
    from xlsr_edge.precision.static import quantize_int8_static

    precision = options.precision
    _log(f"converting to {precision}")
    if precision == "int8-dynamic":
        return quantize_int8_dynamic(
            fp32_path,
            dst,
            quantize_groups=options.quantize_ops,
            exclude=options.exclude_ops,
            weight_type=getattr(options, "weight_type", "int8"),
            reduce_range=getattr(options, "reduce_range", False),
        )
    if precision == "int8":
        if calib is None:
            raise ExportError("int8 (static) needs a calibration set")
        _log(
            f"calibrating ({options.calibration_method}) on {len(calib.utterances)} utterances, "
            f"{calib.seconds(info.sample_rate):.1f} s"
        )
        return quantize_int8_static(
            fp32_path,
            dst,
            calib,
            info.uses_attention_mask,
            method=options.calibration_method,
            quantize_groups=options.quantize_ops,
            exclude=options.exclude_ops,
        )
    if precision == "fp16":
        return convert_fp16(fp32_path, dst, exclude=options.exclude_ops)
    raise ExportError(f"unknown precision {precision!r}")


def convert_precision(
    fp32_path: Path,
    bundle_dir: Path,
    info: ModelInfo,
    options,
    inputs: PrecisionInputs,
    *,
    graph_name: str = MODEL_ONNX,
    heads: dict[str, tuple[ModelInfo, Any]] | None = None,
) -> dict[str, Any]:
    """Replace ``bundle_dir/<graph_name>`` (fp32) by the ``options.precision`` graph; return the report.

    ``heads``: a multi-language backbone (hidden states out) is gated once per language, language -> (that
    language's ModelInfo, a function wrapping a backbone runner into a logits runner with its head).
    Raises ExportError when the accuracy gate fails (the caller's atomic folder then leaves no bundle).
    """
    import onnx

    from xlsr_edge.precision.gate import precision_gate
    from xlsr_edge.precision.graph import graph_bytes, save_graph

    precision = options.precision
    t0 = time.perf_counter()
    # scratch space beside the bundle (same filesystem), never inside it: the bundle hashes every file
    work = Path(tempfile.mkdtemp(prefix=".xlsr-precision-", dir=bundle_dir.parent))
    try:
        candidate = work / "candidate.onnx"
        calib = inputs.calibration
        method = convert_graph(fp32_path, candidate, info, options, calib)
        gate = inputs.gate
        on = getattr(options, "gate_backend", "onnxruntime")
        _log(
            f"accuracy gate: fp32 vs {precision}{'' if on == 'onnxruntime' else f' on {on}'} on {len(gate.utterances)} utterances"
        )
        gates = heads or {None: (info, None)}
        reports = {
            lang: precision_gate(
                fp32_path,
                candidate,
                lang_info,
                gate,
                max_cer_delta=options.max_cer_delta,
                min_agreement=options.min_frame_agreement,
                backend=getattr(options, "gate_backend", "onnxruntime"),
                wrap=wrap,
            )
            for lang, (lang_info, wrap) in gates.items()
        }
        if heads is None:
            gate_report = reports[None]
        else:
            failures = [f"{lang}: {f}" for lang, r in reports.items() for f in r["failures"]]
            gate_report = {"languages": reports, "failures": failures, "passed": not failures}
        if not gate_report["passed"]:
            raise ExportError(
                f"{precision} accuracy gate failed, no bundle written: " + "; ".join(gate_report["failures"])
            )
        fp32_bytes = graph_bytes(fp32_path)  # before the fp32 graph is replaced below
        report = precision_report(precision, method, candidate, fp32_bytes, calib, info)
        # move the candidate into the bundle under the standard names
        for f in (bundle_dir / graph_name, bundle_dir / MODEL_ONNX_DATA):
            f.unlink(missing_ok=True)
        external = save_graph(onnx.load(str(candidate)), bundle_dir / graph_name, MODEL_ONNX_DATA)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["gate"] = {"source": inputs.source, **gate_report}
    report["sizes"]["external_data"] = external
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def precision_report(
    precision: str,
    method: dict[str, Any],
    graph: Path,
    fp32_bytes: int,
    calib: CalibrationSet | None,
    info: ModelInfo,
) -> dict[str, Any]:
    """bundle.json's extra["precision_report"] of a converted ``graph``, less "gate" (and "seconds",
    "sizes.external_data"), which the caller adds."""
    from xlsr_edge.precision.graph import graph_bytes, op_summary

    cand_bytes = graph_bytes(graph)
    return {
        "precision": precision,
        "method": method,
        "ops": op_summary(graph),
        "calibration": calib.describe(info.sample_rate) if calib is not None else None,
        "sizes": {
            "fp32_graph_bytes": fp32_bytes,
            "graph_bytes": cand_bytes,
            "ratio": round(cand_bytes / fp32_bytes, 4),
        },
    }


def _counts(d: dict[str, int] | None) -> str:
    return ", ".join(f"{n} {op}" for op, n in sorted((d or {}).items())) or "none"


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f} MB"


def format_report(r: dict[str, Any]) -> list[str]:
    """bundle.json's extra["precision_report"] as `xlsr-edge inspect` lines (label column 14 wide).

    The gate lines say which graphs they compare (the converted graph against the fp32 export), so they are
    not mistaken for the parity gate's figures (the fp32 export against PyTorch).
    """
    out = []
    method = r.get("method") or {}
    ops = r.get("ops") or {}
    out.append(f"{'conversion':<13} {r.get('precision')}: {method.get('method', '?')}")
    if method.get("weights"):
        out.append(f"{'':<13} weights {method['weights']}; activations {method.get('activations', '?')}")
    if ops.get("quantized"):
        out.append(
            f"{'quantized':<13} {_counts(ops['quantized'])}"
            f" (Q nodes: {_counts(ops.get('quantization_nodes'))})"
        )
    if ops.get("float16"):
        out.append(f"{'float16':<13} {_counts(ops['float16'])}")
    out.append(f"{'float32':<13} {_counts(ops.get('float32'))}")
    kept = method.get("kept_float_nodes") or {}
    if kept:
        out.append(f"{'kept float':<13} " + ", ".join(f"{n} {why}" for why, n in sorted(kept.items())))
    if method.get("kept_float32_op_types"):
        out.append(f"{'kept float':<13} {', '.join(method['kept_float32_op_types'])}")
    cal = r.get("calibration")
    if cal:
        out.append(
            f"{'calibration':<13} {cal['utterances']} of {cal['manifest_utterances']} utterances, "
            f"{cal['seconds']:.1f} s, sha256 {cal['sha256'][:16]}… ({Path(cal['source']).name}, seed {cal['seed']})"
        )
    g = r.get("gate") or {}
    # a multi-language backbone is gated once per language
    gates = (
        [(f"gate {lang}", lg) for lang, lg in g["languages"].items()] if "languages" in g else [("gate", g)]
    )
    for label, g in gates:
        if not g:
            continue
        st = g.get("set", {})
        verdict = "passed" if g.get("passed") else "FAILED"
        conv = r.get("precision")
        if "cer_delta_points" in g:
            fig = (
                f"CER fp32 {g['fp32']['cer']:.2%} -> {conv} {g['candidate']['cer']:.2%} "
                f"({g['cer_delta_points']:+.2f} pts, max {g['max_cer_delta']:g}), "
                f"WER fp32 {g['fp32']['wer']:.2%} -> {conv} {g['candidate']['wer']:.2%}"
            )
        else:
            fig = f"no transcripts: frame agreement >= {g.get('min_agreement')}"
        on = (
            f" ({conv} graph run on {g['backend']})"
            if g.get("backend", "onnxruntime") != "onnxruntime"
            else ""
        )
        out.append(f"{label:<13} {verdict}{on}: {fig}")
        out.append(
            f"{'':<13} {conv} graph vs the fp32 graph: frame argmax agreement {g.get('argmax_agreement', 0):.4f}, "
            f"{g.get('transcripts_changed', '?')} transcripts changed, on {st.get('utterances')} utterances "
            f"({st.get('seconds', 0):.1f} s, sha256 {str(st.get('sha256'))[:16]}…"
            f"{', held out from calibration' if st.get('held_out_from_calibration') and cal else ''})"
        )
    sizes = r.get("sizes") or {}
    if sizes:
        out.append(
            f"{'size':<13} fp32 {_mb(sizes.get('fp32_graph_bytes'))} -> {_mb(sizes.get('graph_bytes'))} "
            f"({sizes.get('ratio', 0):.2f}x)"
        )
    return out
