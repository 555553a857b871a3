"""Noise augmentation: coloured noise (white, pink, brown) or recorded noise at a random SNR."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xlsr_edge.errors import XlsrEdgeError

# Power spectrum ~ 1/f^exponent: 0 white, 1 pink, 2 brown.
COLOUR_EXPONENTS = (0.0, 1.0, 2.0)


def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise shaped to a 1/f^exponent power spectrum, unit RMS, float32."""
    white = rng.standard_normal(n)
    if exponent:
        spec = np.fft.rfft(white)
        f = np.arange(spec.size, dtype=np.float64)
        f[0] = 1.0  # keep DC finite
        spec /= f ** (exponent / 2.0)
        spec[0] = 0.0
        white = np.fft.irfft(spec, n)
    rms = np.sqrt(np.mean(white**2)) or 1.0
    return (white / rms).astype(np.float32)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + noise scaled so that 10*log10(P_speech / P_noise) == snr_db."""
    p_speech = float(np.mean(speech.astype(np.float64) ** 2))
    p_noise = float(np.mean(noise.astype(np.float64) ** 2))
    if p_speech == 0.0 or p_noise == 0.0:
        return speech
    scale = np.sqrt(p_speech / (p_noise * 10.0 ** (snr_db / 10.0)))
    return (speech + scale * noise).astype(np.float32)


def fit_length(noise: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A random n-sample crop of the noise, tiled first when it is shorter."""
    if len(noise) < n:
        noise = np.tile(noise, n // len(noise) + 1)
    start = int(rng.integers(0, len(noise) - n + 1))
    return noise[start : start + n]


@dataclass
class NoiseAugmenter:
    """With probability `prob`, add noise at an SNR drawn uniformly from `snr_db`.

    With a `noise_dir`, half of the noisy utterances get a random crop of a recording from it (loaded
    once, resampled to the model rate), the other half coloured noise of a random colour.
    """

    prob: float = 0.0
    snr_db: tuple[float, float] = (5.0, 30.0)
    noise_dir: Path | None = None
    sample_rate: int = 16000
    _noises: list[np.ndarray] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise XlsrEdgeError(f"--noise-prob must be in [0, 1], got {self.prob}")
        lo, hi = self.snr_db
        if lo > hi:
            raise XlsrEdgeError(f"--snr-db LO,HI needs LO <= HI, got {lo},{hi}")
        if self.noise_dir is not None:
            self._noises = self._load(Path(self.noise_dir))

    def _load(self, folder: Path) -> list[np.ndarray]:
        from xlsr_edge.datasets import read_manifest
        from xlsr_edge.runtime.audio import load_audio

        if not folder.is_dir():
            raise XlsrEdgeError(f"--noise-dir {folder} is not a folder")
        noises = [load_audio(u.audio, self.sample_rate) for u in read_manifest(folder)]
        noises = [x for x in noises if len(x) > 0 and np.any(x)]
        if not noises:
            raise XlsrEdgeError(f"--noise-dir {folder} has no usable (non-silent) audio")
        return noises

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.prob <= 0.0 or rng.random() >= self.prob:
            return x
        snr = float(rng.uniform(*self.snr_db))
        if self._noises and rng.random() < 0.5:
            noise = fit_length(self._noises[int(rng.integers(len(self._noises)))], len(x), rng)
        else:
            exponent = COLOUR_EXPONENTS[int(rng.integers(len(COLOUR_EXPONENTS)))]
            noise = coloured_noise(len(x), exponent, rng)
        return mix_at_snr(x, noise, snr)
