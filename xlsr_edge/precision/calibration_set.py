"""Calibration utterances: picked from a manifest (stratified by duration), loaded with the runtime's front end
(load_audio + normalize) so calibration and the accuracy gate see exactly what inference sees."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xlsr_edge.bundle import ModelInfo
from xlsr_edge.datasets import Utterance, manifest_digest, read_manifest, select_stratified
from xlsr_edge.errors import ManifestError, XlsrEdgeError
from xlsr_edge.precision.options import CALIBRATION_MAX_SECONDS, DEFAULT_CALIBRATION_SIZE
from xlsr_edge.runtime.audio import load_audio, normalize


@dataclass
class CalibrationSet:
    """Utterances picked from a manifest, loaded with the runtime's front end (load_audio + normalize)."""

    source: str
    utterances: list[Utterance]
    arrays: list[np.ndarray]  # normalized float32, one per utterance (cropped for calibration)
    manifest_size: int  # utterances in the whole manifest
    digest: str  # manifest_digest of the picked utterances
    seed: int
    cropped: int = 0

    @property
    def has_text(self) -> bool:
        return all(u.text is not None and u.text.strip() for u in self.utterances)

    def seconds(self, sample_rate: int) -> float:
        return sum(len(a) for a in self.arrays) / sample_rate

    def describe(self, sample_rate: int) -> dict[str, Any]:
        return {
            "source": self.source,
            "utterances": len(self.utterances),
            "manifest_utterances": self.manifest_size,
            "seconds": round(self.seconds(sample_rate), 2),
            "sha256": self.digest,
            "seed": self.seed,
            "selection": "stratified by duration",
            "cropped_to_seconds": CALIBRATION_MAX_SECONDS if self.cropped else None,
            "has_text": self.has_text,
        }


def load_utterance(u: Utterance, source: str, info: ModelInfo) -> np.ndarray:
    try:
        x = load_audio(u.audio, info.sample_rate)
    except XlsrEdgeError as exc:
        where = f"{source} line {u.line}" if u.line is not None else source
        raise ManifestError(f"{where}: {exc}") from exc
    if info.frames_for(len(x)) == 0:
        where = f"{source} line {u.line}" if u.line is not None else source
        raise ManifestError(
            f"{where}: {u.raw_path} is shorter than one frame ({len(x) / info.sample_rate:.3f} s); remove it"
        )
    return x


def load_calibration_set(
    source: str | Path,
    info: ModelInfo,
    size: int = DEFAULT_CALIBRATION_SIZE,
    seed: int = 0,
    *,
    max_seconds: float | None = CALIBRATION_MAX_SECONDS,
) -> CalibrationSet:
    """Read a manifest (any format xlsr_edge.datasets reads, or a folder), pick ``size`` utterances
    stratified by duration, load and normalize them exactly as the runtime does.

    Raises ManifestError naming the manifest line for missing or unreadable audio.
    """
    if size < 1:
        raise ValueError(f"--calibration-size must be at least 1, got {size}")
    utts = read_manifest(source, check_audio=True)
    picked = select_stratified(utts, size, seed=seed)
    arrays, cropped = [], 0
    limit = None if max_seconds is None else int(max_seconds * info.sample_rate)
    for u in picked:
        x = load_utterance(u, str(source), info)
        if limit is not None and len(x) > limit:
            start = (len(x) - limit) // 2
            x, cropped = x[start : start + limit], cropped + 1
        arrays.append(normalize(x, info.do_normalize))
    return CalibrationSet(
        source=str(source),
        utterances=picked,
        arrays=arrays,
        manifest_size=len(utts),
        digest=manifest_digest(picked),
        seed=seed,
        cropped=cropped,
    )
