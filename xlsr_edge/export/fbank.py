"""Wav2Vec2-BERT's SeamlessM4T front end as graph operations, so its bundles still take the raw waveform.

transformers' SeamlessM4TFeatureExtractor (numpy, Kaldi-compatible) per utterance: waveform x 2^15; frames of
400 samples every 160; per frame DC removal, pre-emphasis 0.97, Povey window, 512-point FFT power spectrum;
80 Kaldi mel bins; log with a floor; per mel bin zero mean / unit variance over the utterance's frames (ddof 1);
`stride` (2) consecutive frames stacked into one 160-dim vector, an odd last frame dropped.

In the graph: DC removal, pre-emphasis, window and the real DFT are all linear in the frame, so they are one
constant [2 x 257, 400] matrix applied as a strided Conv (one op, exact framing, no STFT op needed, and TensorRT
and the int8 quantizers leave a Conv alone by default); the mel bank is a constant kernel-1 Conv; statistics are
masked to each clip's own frames, so a padded batch gives every clip its features alone.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from xlsr_edge.export.families import FBANK_FRAME, FBANK_HOP

FFT = 512
PREEMPHASIS = 0.97
MEL_FLOOR = 1.192092955078125e-07
VARIANCE_EPS = 1e-7


def dft_matrix(window: np.ndarray) -> np.ndarray:
    """[2 * (FFT/2 + 1), FRAME]: real and imaginary rows of rfft(window * preemphasis(frame - mean(frame)))."""
    n = FBANK_FRAME
    dc = np.eye(n) - np.full((n, n), 1.0 / n)
    pre = np.eye(n)
    pre[np.arange(1, n), np.arange(n - 1)] = -PREEMPHASIS
    pre[0, 0] = 1.0 - PREEMPHASIS
    bins = np.arange(FFT // 2 + 1)[:, None]
    phase = -2.0 * np.pi * bins * np.arange(n)[None, :] / FFT
    linear = np.diag(window) @ pre @ dc
    dft = np.exp(1j * phase) @ linear
    return np.concatenate([dft.real, dft.imag]).astype(np.float64)


class FbankFrontEnd(nn.Module):
    """(waveform [batch, samples], samples [batch]) -> (features [batch, frames, 80 * stride], mask [batch, frames])."""

    def __init__(self, feature_extractor: dict) -> None:
        super().__init__()
        import transformers

        # the window and the mel bank of transformers' own feature extractor (they changed between versions:
        # the graph equals the extractor of the transformers that exports it)
        rate = int(feature_extractor.get("sampling_rate", 16000))
        kwargs = {k: feature_extractor[k] for k in ("num_mel_bins", "stride") if k in feature_extractor}
        fe = transformers.SeamlessM4TFeatureExtractor(sampling_rate=rate, **kwargs)
        self.stack = int(fe.stride)
        self.mels = int(fe.num_mel_bins)
        filters = np.asarray(fe.mel_filters, dtype=np.float64)  # [FFT/2 + 1, mels]
        if filters.shape != (FFT // 2 + 1, self.mels):
            raise ValueError(f"unexpected SeamlessM4T mel bank shape {filters.shape}")
        window = np.asarray(fe.window, dtype=np.float64)
        self.register_buffer("dft", torch.from_numpy(dft_matrix(window)).float()[:, None, :])
        self.register_buffer("mel", torch.from_numpy(filters.T.copy()).float()[:, :, None])
        self.bins = FFT // 2 + 1

    def forward(self, waveform: torch.Tensor, samples: torch.Tensor):
        x = (waveform * 32768.0)[:, None, :]  # Kaldi works on 16-bit sample values
        spec = nn.functional.conv1d(x, self.dft, stride=FBANK_HOP)  # [batch, 2 * bins, frames]
        re, im = spec[:, : self.bins], spec[:, self.bins :]
        power = re * re + im * im
        mel = nn.functional.conv1d(power, self.mel)  # [batch, mels, frames]
        logmel = torch.log(mel.clamp(min=MEL_FLOOR))
        frames = (torch.div(samples - FBANK_FRAME, FBANK_HOP, rounding_mode="floor") + 1).clamp(min=0)
        steps = torch.arange(logmel.shape[2], device=logmel.device)
        valid = (steps[None, :] < frames[:, None]).to(logmel.dtype)[:, None, :]  # [batch, 1, frames]
        count = frames.to(logmel.dtype)[:, None, None]
        mean = (logmel * valid).sum(-1, keepdim=True) / count.clamp(min=1)
        var = ((logmel - mean) * valid).pow(2).sum(-1, keepdim=True) / (count - 1).clamp(min=1)
        feats = (logmel - mean) / torch.sqrt(var + VARIANCE_EPS) * valid  # padding frames are 0, as padded
        feats = feats.transpose(1, 2)  # [batch, frames, mels]
        stacked = feats.shape[1] // self.stack
        feats = feats[:, : stacked * self.stack].reshape(feats.shape[0], -1, self.mels * self.stack)
        lengths = torch.div(frames, self.stack, rounding_mode="floor")
        steps = torch.arange(feats.shape[1], device=feats.device)
        mask = (steps[None, :] < lengths[:, None]).to(torch.long)
        return feats, mask
