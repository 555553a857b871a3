"""Parity gate: the exported graph must reproduce PyTorch on real speech, padded batch included, every family."""

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
from xlsr_edge.runtime.batching import infer_batch, pad_batch
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


def _seamless_features(model, info: ModelInfo, arrays: list[np.ndarray], batched: bool):
    """transformers' own SeamlessM4T feature extractor (Wav2Vec2-BERT's reference front end)."""
    import transformers

    settings = dict(getattr(model, "xlsr_feature_extractor", None) or {})
    kwargs = {
        k: settings[k] for k in ("feature_size", "num_mel_bins", "padding_value", "stride") if k in settings
    }
    fe = transformers.SeamlessM4TFeatureExtractor(sampling_rate=info.sample_rate, **kwargs)
    out = fe(arrays if batched else arrays[0], sampling_rate=info.sample_rate, return_tensors="pt")
    features, mask = out["input_features"], out["attention_mask"]
    if not batched:  # alone: without the masked frame that pads odd frame counts (the adapters would see it)
        n = int(mask.sum())
        features, mask = features[:, :n], mask[:, :n]
    return features, mask


def torch_logits(model, info: ModelInfo, arrays: list[np.ndarray], batched: bool = False) -> list[np.ndarray]:
    """PyTorch logits of the valid frames of each (normalized) clip: each alone, or as one padded batch.

    Alone is the contract's reference; the padded batch shows what PyTorch itself does with padding."""
    import torch

    from xlsr_edge.export.families import FAMILIES

    family = FAMILIES.get(info.model_type)
    fbank = family is not None and family.front_end == "fbank"

    def run(batch: list[np.ndarray]) -> np.ndarray:
        if fbank:
            features, mask = _seamless_features(model, info, batch, batched=len(batch) > 1 or batched)
            return model(features, attention_mask=mask if info.uses_attention_mask else None).logits.numpy()
        values, mask = pad_batch(batch)
        kwargs = {"attention_mask": torch.from_numpy(mask)} if info.uses_attention_mask else {}
        return model(torch.from_numpy(values), **kwargs).logits.numpy()

    with torch.no_grad():
        if batched:
            out = run(arrays)
            return [out[i, : info.frames_for(len(a))] for i, a in enumerate(arrays)]
        return [run([a])[0, : info.frames_for(len(a))] for a in arrays]


def _ort_logits(runner: Runner, arrays: list[np.ndarray], uses_mask: bool, batched: bool):
    """The graph's valid logits and reported lengths per clip: all clips as one padded batch, or each alone."""
    if batched:
        return infer_batch(runner, arrays, uses_mask)
    outs = [infer_batch(runner, [a], uses_mask) for a in arrays]
    return [lg[0] for lg, _ in outs], [n[0] for _, n in outs]


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
    """The one contract, for every family: a clip's logits do not depend on what it is batched with, and equal
    PyTorch on the clip alone.

    Bundles with a mask: the graph on one padded batch vs PyTorch on each clip alone, and vs the graph on each
    clip alone. Bundles fed unpadded: each clip alone vs PyTorch, and a batch of equal lengths (the clips cut to
    the shortest, as the runtime batches them) vs the graph on each of those alone.
    Returns the report (raises nothing)."""
    arrays = [normalize(a, info.do_normalize) for _, a in audios]
    decoder = GreedyDecoder(Vocabulary.from_model_info(info))
    reference = torch_logits(model, info, arrays)
    expected_frames = [info.frames_for(len(a)) for a in arrays]
    mask = info.uses_attention_mask
    with graph if isinstance(graph, Runner) else OnnxRuntimeRunner(graph) as runner:
        alone, alone_lengths = _ort_logits(runner, arrays, mask, batched=False)
        if mask:
            batch, batch_lengths = _ort_logits(runner, arrays, mask, batched=True)
            single = alone
        else:  # the runtime batches equal lengths only: check exactly that
            short = min(len(a) for a in arrays)
            cut = [a[:short] for a in arrays]
            batch, batch_lengths = _ort_logits(runner, cut, mask, batched=True)
            single, _ = _ort_logits(runner, cut, mask, batched=False)
        checked = batch if mask else alone
        report: dict = {
            "mode": "padded batch" if mask else "feed unpadded (equal-length batches)",
            "family": info.model_type,
        }
        report["vs_pytorch"] = _compare(reference, checked, decoder)
        report["batch_vs_single"] = _compare(single, batch, decoder)
    scale = max((float(np.abs(r).max()) for r in reference if r.size), default=0.0)
    report["logit_scale"] = scale
    report["vs_pytorch"]["relative_max_abs_diff"] = report["vs_pytorch"]["max_abs_diff"] / max(scale, 1e-12)
    if mask:
        # what PyTorch itself does with a padded batch (the graph masks where it leaks): informational
        leak = _compare(reference, torch_logits(model, info, arrays, batched=True), decoder)
        report["pytorch_padded_batch_vs_alone"] = {"max_abs_diff": leak["max_abs_diff"]}
    onnx_lengths = batch_lengths if mask else alone_lengths
    report["lengths_match"] = onnx_lengths == expected_frames
    if info.spare_ids:
        spare = np.array(info.spare_ids)
        report["spare_vocab_frames"] = int(sum(np.isin(lg.argmax(-1), spare).sum() for lg in checked))
    report["utterances"] = [
        {"audio": name, "samples": len(a), "frames": f, "text": decoder.decode(lg).text}
        for (name, a), f, lg in zip(audios, expected_frames, checked)
    ]
    failures = []
    for key in ("vs_pytorch", "batch_vs_single"):
        r = report[key]
        if r["max_abs_diff"] > thresholds.max_abs_diff:
            failures.append(f"{key}: max |logit diff| {r['max_abs_diff']:.3g} > {thresholds.max_abs_diff:g}")
        if r["argmax_agreement"] < thresholds.min_argmax_agreement:
            failures.append(
                f"{key}: frame argmax agreement {r['argmax_agreement']:.4f} < {thresholds.min_argmax_agreement}"
            )
        if thresholds.require_equal_transcripts and not r["transcripts_equal"]:
            failures.append(f"{key}: greedy transcripts differ")
    if not report["lengths_match"]:
        failures.append(f"logit_lengths {onnx_lengths} != length formula {expected_frames}")
    report["thresholds"] = asdict(thresholds)
    report["failures"] = failures
    report["passed"] = not failures
    return report
