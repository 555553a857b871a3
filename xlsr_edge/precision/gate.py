"""Accuracy gate for reduced-precision graphs: the fp32 graph and the converted graph on the same utterances.

With transcripts: corpus CER/WER of both (greedy decoding, xlsr_edge.scoring.error_rates); the gate fails when
CER rises by more than ``max_cer_delta`` percentage points. Without transcripts (a folder of audio): the share
of frames whose argmax equals the fp32 graph's must reach ``min_agreement``. Both figures are always reported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xlsr_edge.bundle import ModelInfo
from xlsr_edge.datasets import Utterance, manifest_digest, select_stratified
from xlsr_edge.decoders import GreedyDecoder, Vocabulary
from xlsr_edge.precision.calibration_set import load_utterance
from xlsr_edge.runtime.audio import normalize
from xlsr_edge.runtime.backend_options import DEFAULT_BACKEND, BackendOptions, OpenVinoOptions, OrtOptions
from xlsr_edge.runtime.batching import run_batches
from xlsr_edge.runtime.runners import Runner
from xlsr_edge.scoring import error_rates

GATE_BATCH_SIZE = 8


@dataclass
class GateSet:
    utterances: list[Utterance]
    arrays: list[np.ndarray]  # normalized, full length
    held_out: bool  # True when none of them was used for calibration

    @property
    def has_text(self) -> bool:
        return bool(self.utterances) and all(u.text is not None and u.text.strip() for u in self.utterances)

    def describe(self, sample_rate: int) -> dict[str, Any]:
        return {
            "utterances": len(self.utterances),
            "seconds": round(sum(len(a) for a in self.arrays) / sample_rate, 2),
            "sha256": manifest_digest(self.utterances),
            "held_out_from_calibration": self.held_out,
            "has_text": self.has_text,
        }


def select_gate_set(
    manifest: Sequence[Utterance],
    calibration: Sequence[Utterance],
    info: ModelInfo,
    size: int,
    seed: int = 0,
    source: str = "manifest",
) -> GateSet:
    """Up to ``size`` utterances (stratified by duration), preferring ones not used for calibration."""
    used = {(u.raw_path, u.line) for u in calibration}
    rest = [u for u in manifest if (u.raw_path, u.line) not in used]
    held_out = len(rest) >= min(size, len(manifest)) // 2 and len(rest) > 0
    pool = rest if held_out else list(manifest)
    picked = select_stratified(pool, size, seed=seed + 1)
    arrays = [normalize(load_utterance(u, source, info), info.do_normalize) for u in picked]
    return GateSet(utterances=picked, arrays=arrays, held_out=held_out)


def graph_runner(
    path: Path, backend: str = DEFAULT_BACKEND, threads: int | None = None, precision_hint: str | None = None
) -> Runner:
    """A runner for a bare graph file on onnxruntime or OpenVINO (precision hint: the CPU's unless given; no
    compiled-model cache)."""
    options = BackendOptions(
        backend,
        onnxruntime=OrtOptions(threads=threads),
        openvino=OpenVinoOptions(threads=threads, precision_hint=precision_hint or "auto", cache_dir=None),
    )
    return options.graph_runner(path)


def run_graph(
    path: Path,
    info: ModelInfo,
    arrays: Sequence[np.ndarray],
    threads: int | None = None,
    backend: str = DEFAULT_BACKEND,
    wrap: Callable[[Runner], Runner] | None = None,
    precision_hint: str | None = None,
):
    """Logits (valid frames only) per utterance, batched like the runtime (unpadded for no-mask models).

    `wrap`: turns the graph's runner into a logits runner (a multi-language backbone plus one language's head)."""
    out: list[np.ndarray | None] = [None] * len(arrays)
    runner = graph_runner(path, backend, threads, precision_hint)
    with wrap(runner) if wrap is not None else runner as active:
        for batch, logits in run_batches(
            active, arrays, batch_size=GATE_BATCH_SIZE, uses_mask=info.uses_attention_mask
        ):
            for i, lg in zip(batch, logits):
                out[i] = np.asarray(lg, dtype=np.float32)
    return out


def _argmax_agreement(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    same = sum(int((x.argmax(-1) == y.argmax(-1)).sum()) for x, y in zip(a, b))
    return same / max(sum(x.shape[0] for x in a), 1)


def precision_gate(
    fp32_path: Path,
    candidate_path: Path,
    info: ModelInfo,
    gate: GateSet,
    *,
    max_cer_delta: float,
    min_agreement: float,
    backend: str = DEFAULT_BACKEND,
    wrap: Callable[[Runner], Runner] | None = None,
    precision_hint: str | None = None,
    reference: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Compare the two graphs; returns the report with ``passed`` and ``failures`` (raises nothing).

    ``backend``: the engine that runs the converted graph (the fp32 reference always runs on onnxruntime), so
    the gate measures what a deployment on OpenVINO (bf16 precision hint where the CPU has it, or
    ``precision_hint``) will see. ``reference``: the fp32 graph's logits from ``run_graph`` when the caller
    gates several candidates against it (xlsr-edge optimize), so they are computed once.
    """
    decoder = GreedyDecoder(Vocabulary.from_model_info(info))
    ref = list(reference) if reference is not None else run_graph(fp32_path, info, gate.arrays, wrap=wrap)
    cand = run_graph(
        candidate_path, info, gate.arrays, backend=backend, wrap=wrap, precision_hint=precision_hint
    )
    ref_text = [decoder.decode(x).text for x in ref]
    cand_text = [decoder.decode(x).text for x in cand]
    report: dict[str, Any] = {
        "set": gate.describe(info.sample_rate),
        "argmax_agreement": round(_argmax_agreement(ref, cand), 6),
        "max_abs_logit_diff": float(max(np.abs(x - y).max() for x, y in zip(ref, cand) if x.size)),
        "transcripts_changed": sum(a != b for a, b in zip(ref_text, cand_text)),
        "backend": backend,
        **({"precision_hint": precision_hint} if precision_hint else {}),
        "criterion": None,
    }
    failures = []
    if gate.has_text:
        refs = [u.text or "" for u in gate.utterances]
        r32, rq = error_rates(refs, ref_text), error_rates(refs, cand_text)
        delta = (rq.cer - r32.cer) * 100
        points_per_char = 100 / max(r32.ref_chars, 1)
        report.update(
            criterion=f"CER rise <= {max_cer_delta:g} points",
            max_cer_delta=max_cer_delta,
            reference_chars=r32.ref_chars,
            points_per_char=round(points_per_char, 4),
            fp32={"cer": round(r32.cer, 6), "wer": round(r32.wer, 6)},
            candidate={"cer": round(rq.cer, 6), "wer": round(rq.wer, 6)},
            cer_delta_points=round(delta, 4),
            wer_delta_points=round((rq.wer - r32.wer) * 100, 4),
        )
        if delta > max_cer_delta:
            coarse = (
                f" (the gate set has {r32.ref_chars} reference characters: one character is "
                f"{points_per_char:.2f} points; pass --calibration with more of your own transcribed speech)"
                if points_per_char > max_cer_delta > 0
                else ""
            )
            failures.append(
                f"CER rose {delta:.2f} points ({r32.cer:.2%} -> {rq.cer:.2%}) > --max-cer-delta {max_cer_delta:g}"
                + coarse
            )
    else:
        report.update(criterion=f"frame argmax agreement >= {min_agreement:g}", min_agreement=min_agreement)
        if report["argmax_agreement"] < min_agreement:
            failures.append(
                f"frame argmax agreement with fp32 {report['argmax_agreement']:.4f} < {min_agreement:g} "
                "(no transcripts in the manifest, so the gate compares frames)"
            )
    report["failures"] = failures
    report["passed"] = not failures
    return report
