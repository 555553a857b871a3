"""The streaming benchmark's audio (benchmarks/streaming.py): noise floor, speech spans, the demo model's test set."""

from __future__ import annotations

import json

import numpy as np
from _common import REPO

RATE = 16000
ROOT = REPO
DEMO = ROOT / "models" / "demo-tr"


def quiet(seconds: float, seed: int, level: float = 1e-3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (level * rng.standard_normal(int(round(seconds * RATE)))).astype(np.float32)


def speech_span(x: np.ndarray) -> tuple[int, int]:
    """[first, last) sample of a clean clip whose 10 ms energy is within 40 dB of its peak."""
    e = np.convolve(x.astype(np.float64) ** 2, np.ones(160) / 160, mode="same")
    idx = np.nonzero(e > e.max() * 1e-4)[0]
    return (int(idx[0]), int(idx[-1]) + 1) if len(idx) else (0, len(x))


def test_set() -> list[tuple[np.ndarray, str]]:
    from xlsr_edge.runtime.audio import load_audio

    manifest = DEMO / "test" / "test.jsonl"
    out = []
    for line in manifest.read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            out.append((load_audio(DEMO / "test" / d["audio_filepath"], RATE), d["text"]))
    return out


def cer(refs: list[str], hyps: list[str]) -> float:
    from xlsr_edge.measure.metrics import error_rates

    return error_rates(refs, hyps).cer
