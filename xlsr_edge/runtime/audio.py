"""Audio front end: read, down-mix, resample, normalize exactly as transformers' feature extractor does."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xlsr_edge.constants import NORMALIZE_EPS
from xlsr_edge.errors import AudioError


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read a file soundfile understands, return float32 mono at `sample_rate`. Raises AudioError."""
    import soundfile as sf

    p = Path(path)
    if not p.is_file():
        raise AudioError(f"{path}: no such file")
    if p.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"{path}: not readable audio ({str(exc).strip() or type(exc).__name__})") from exc
    return prepare_audio(data, sr, sample_rate, name=str(path))


def prepare_audio(data: np.ndarray, source_rate: int, sample_rate: int, name: str = "array") -> np.ndarray:
    """Down-mix [samples, channels] (or 1-D) to mono, check it, resample with soxr to `sample_rate`."""
    x = np.asarray(data)
    if x.ndim == 2:
        x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    elif x.ndim != 1:
        raise AudioError(f"{name}: expected 1-D samples or [samples, channels], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        if np.issubdtype(x.dtype, np.integer):  # PCM integers -> [-1, 1)
            x = x.astype(np.float32) / float(np.iinfo(x.dtype).max + 1)
        else:
            raise AudioError(f"{name}: unsupported sample type {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if x.size == 0:
        raise AudioError(f"{name}: no samples")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise AudioError(f"{name}: {bad} NaN/inf samples; the file is corrupt")
    if source_rate <= 0:
        raise AudioError(f"{name}: invalid sample rate {source_rate}")
    if source_rate != sample_rate:
        import soxr

        x = soxr.resample(x, source_rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(x)


def normalize(x: np.ndarray, do_normalize: bool) -> np.ndarray:
    """Zero mean, unit variance over the utterance (transformers' zero_mean_unit_var_norm, same float32 maths)."""
    x = np.asarray(x, dtype=np.float32)
    if not do_normalize:
        return x
    return (x - x.mean()) / np.sqrt(x.var() + NORMALIZE_EPS)
