"""Parity gate: the exported graph must reproduce PyTorch on real speech, padded batch included."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from xlsr_edge.bundle import ModelInfo
from xlsr_edge.constants import PARITY_MAX_ABS_DIFF, PARITY_MIN_ARGMAX_AGREEMENT, PARITY_MIN_UTTERANCES
from xlsr_edge.data import default_clips
from xlsr_edge.decoders import GreedyDecoder, Vocabulary
from xlsr_edge.errors import ExportError
from xlsr_edge.runtime.audio import load_audio, normalize
from xlsr_edge.runtime.batching import pad_batch
from xlsr_edge.runtime.runners import OnnxRuntimeRunner, Runner


@dataclass(frozen=True)
class ParityThresholds:
    max_abs_diff: float = PARITY_MAX_ABS_DIFF
    min_argmax_agreement: float = PARITY_MIN_ARGMAX_AGREEMENT
    require_equal_transcripts: bool = True

    def __post_init__(self) -> None:
        if self.max_abs_diff <= 0:
            raise ValueError("max_abs_diff must be positive")
        if not 0 <= self.min_argmax_agreement <= 1:
            raise ValueError("min_argmax_agreement must be within [0, 1]")


def verification_audio(
    source: str | Path | None, sample_rate: int, limit: int = 8
) -> list[tuple[str, np.ndarray]]:
    """Speech for the gate: the shipped clips, a folder of audio, or a manifest; at least 3 distinct lengths."""
    if source is None:
        paths = default_clips()
    else:
        from xlsr_edge.datasets import read_manifest  # a folder of audio or any manifest format

        paths = [u.audio for u in read_manifest(Path(source))]
    audios = [(str(p), load_audio(p, sample_rate)) for p in paths[:limit]]
    if len({len(a) for _, a in audios}) < PARITY_MIN_UTTERANCES:
        raise ExportError(
            f"the parity gate needs at least {PARITY_MIN_UTTERANCES} utterances of different lengths; "
            f"{source or 'the shipped clips'} gave {len(audios)}"
        )
    return audios


def _torch_logits(model, info: ModelInfo, arrays: list[np.ndarray]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        if info.uses_attention_mask:
            values, mask = pad_batch(arrays)
            out = model(torch.from_numpy(values), attention_mask=torch.from_numpy(mask)).logits.numpy()
            return [out[i, : info.frames_for(len(a))] for i, a in enumerate(arrays)]
        # group-norm models see padding through their norm: reference them one at a time, unpadded
        return [model(torch.from_numpy(a[None])).logits.numpy()[0] for a in arrays]


def _ort_logits(runner: Runner, info: ModelInfo, arrays: list[np.ndarray], batched: bool):
    if batched:
        values, mask = pad_batch(arrays)
        logits, lengths = runner.infer(values, mask)
        return [logits[i, : lengths[i]] for i in range(len(arrays))], lengths.tolist()
    outs = [runner.infer(a[None], None) for a in arrays]
    return [lg[0, : ln[0]] for lg, ln in outs], [int(ln[0]) for _, ln in outs]


def _compare(a: list[np.ndarray], b: list[np.ndarray], decoder: GreedyDecoder) -> dict:
    diffs, agree, frames, equal = [], 0, 0, []
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return {"max_abs_diff": float("inf"), "argmax_agreement": 0.0, "transcripts_equal": False}
        diffs.append(float(np.abs(x - y).max()) if x.size else 0.0)
        agree += int((x.argmax(-1) == y.argmax(-1)).sum())
        frames += x.shape[0]
        equal.append(decoder.decode(x).text == decoder.decode(y).text)
    return {
        "max_abs_diff": max(diffs),
        "argmax_agreement": agree / max(frames, 1),
        "transcripts_equal": all(equal),
    }


def run_parity(
    model,
    graph: Path | Runner,
    info: ModelInfo,
    audios: list[tuple[str, np.ndarray]],
    thresholds: ParityThresholds = ParityThresholds(),
) -> dict:
    """Compare PyTorch and the exported graph (a path, or a runner giving logits) on the valid frames.

    Returns the report (raises nothing)."""
    arrays = [normalize(a, info.do_normalize) for _, a in audios]
    decoder = GreedyDecoder(Vocabulary.from_model_info(info))
    reference = _torch_logits(model, info, arrays)
    expected_frames = [info.frames_for(len(a)) for a in arrays]
    with graph if isinstance(graph, Runner) else OnnxRuntimeRunner(graph) as runner:
        onnx_out, onnx_lengths = _ort_logits(runner, info, arrays, batched=info.uses_attention_mask)
        report: dict = {"mode": "padded batch" if info.uses_attention_mask else "one at a time, unpadded"}
        report["vs_pytorch"] = _compare(reference, onnx_out, decoder)
        if info.uses_attention_mask:
            single, _ = _ort_logits(runner, info, arrays, batched=False)
            report["batch_vs_single"] = _compare(single, onnx_out, decoder)
    report["lengths_match"] = onnx_lengths == expected_frames
    report["utterances"] = [
        {"audio": name, "samples": len(a), "frames": f, "text": decoder.decode(lg).text}
        for (name, a), f, lg in zip(audios, expected_frames, onnx_out)
    ]
    failures = []
    for key in ("vs_pytorch", "batch_vs_single"):
        r = report.get(key)
        if r is None:
            continue
        if r["max_abs_diff"] > thresholds.max_abs_diff:
            failures.append(f"{key}: max |logit diff| {r['max_abs_diff']:.3g} > {thresholds.max_abs_diff:g}")
        if r["argmax_agreement"] < thresholds.min_argmax_agreement:
            failures.append(
                f"{key}: frame argmax agreement {r['argmax_agreement']:.4f} < {thresholds.min_argmax_agreement}"
            )
        if thresholds.require_equal_transcripts and not r["transcripts_equal"]:
            failures.append(f"{key}: greedy transcripts differ")
    if not report["lengths_match"]:
        failures.append(f"logit_lengths {onnx_lengths} != conv formula {expected_frames}")
    report["thresholds"] = asdict(thresholds)
    report["failures"] = failures
    report["passed"] = not failures
    return report
