"""Voice activity detection for live streams: Silero VAD (shipped ONNX model) run with onnxruntime, no torch.

The model (``xlsr_edge/data/vad/silero_vad_16k_sequence.onnx``, MIT, see the README next to it) gives one
speech probability per 32 ms frame (512 samples at 16 kHz); its LSTM state is carried between calls, so a
stream can hand it any number of whole frames at a time and get bit-identical probabilities whatever the
blocking (one ONNX call per packet instead of one per frame). ``Endpointer`` turns the probabilities into
speech starts and ends with Silero's own rules (start at a frame >= threshold; end after ``min_silence``
below ``threshold - 0.15``). Why Silero and not webrtcvad: docs/streaming.md, "Choosing the VAD".
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xlsr_edge.errors import XlsrEdgeError
from xlsr_edge.limits import MAX_STREAM_SECONDS, check_number

VAD_RATE = 16000
VAD_FRAME = 512  # samples per probability (32 ms)
VAD_CONTEXT = 64  # samples of the previous frame the model sees in front of each frame
VAD_MODEL = Path(__file__).resolve().parents[1] / "data" / "vad" / "silero_vad_16k_sequence.onnx"


@dataclass(frozen=True)
class VadOptions:
    """Endpointing settings (seconds at the model's 16 kHz).

    threshold: a frame with speech probability >= threshold is speech; neg_threshold (default threshold -
    0.15, as Silero does): below it a frame counts towards the silence that ends an utterance.
    min_silence_seconds: silence that ends an utterance (the final comes this long after the speech ends).
    speech_pad_seconds: audio kept before the speech start and after its end.
    """

    threshold: float = 0.5
    neg_threshold: float | None = None
    min_silence_seconds: float = 0.5
    speech_pad_seconds: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"VAD threshold must be within (0, 1), got {self.threshold}")
        if self.neg_threshold is not None and not 0.0 <= self.neg_threshold <= self.threshold:
            raise ValueError(f"VAD neg_threshold must be within [0, threshold], got {self.neg_threshold}")
        check_number("VAD min_silence_seconds", self.min_silence_seconds, 0, MAX_STREAM_SECONDS, lo_open=True)
        if not 0.0 <= self.speech_pad_seconds <= self.min_silence_seconds:
            raise ValueError("VAD speech_pad_seconds must be within [0, min_silence_seconds]")

    @property
    def low_threshold(self) -> float:
        return self.neg_threshold if self.neg_threshold is not None else max(self.threshold - 0.15, 0.01)


class SileroVad:
    """One onnxruntime session of the sequence model; thread-safe, shared by every stream (``shared()``)."""

    _shared: SileroVad | None = None
    _lock = threading.Lock()

    def __init__(self, model_path: str | Path = VAD_MODEL, threads: int = 1) -> None:
        import onnxruntime as ort

        path = Path(model_path)
        if not path.is_file():
            raise XlsrEdgeError(f"the VAD model is missing: {path} (reinstall xlsr-edge)")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    @classmethod
    def shared(cls) -> SileroVad:
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def new_state(self) -> VadState:
        return VadState()

    def probabilities(self, state: VadState, audio: np.ndarray) -> np.ndarray:
        """Speech probability of each whole 512-sample frame of `audio` (16 kHz float32, continuing the
        audio the state has seen); a length that is not a multiple of 512 is an error."""
        n = len(audio) // VAD_FRAME
        if n * VAD_FRAME != len(audio):
            raise ValueError(f"VAD input must be whole {VAD_FRAME}-sample frames, got {len(audio)} samples")
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        frames = np.asarray(audio, dtype=np.float32).reshape(n, VAD_FRAME)
        block = np.empty((n, VAD_CONTEXT + VAD_FRAME), dtype=np.float32)
        block[:, VAD_CONTEXT:] = frames
        block[0, :VAD_CONTEXT] = state.context
        if n > 1:
            block[1:, :VAD_CONTEXT] = frames[:-1, -VAD_CONTEXT:]
        probs, state.h, state.c = self.session.run(
            ["speech_probs", "hn", "cn"], {"input": block, "h": state.h, "c": state.c}
        )
        state.context = frames[-1, -VAD_CONTEXT:].copy()
        return np.asarray(probs, dtype=np.float32).reshape(-1)


class VadState:
    """Per-stream LSTM state and the last 64 samples."""

    def __init__(self) -> None:
        self.h = np.zeros((1, 1, 128), dtype=np.float32)
        self.c = np.zeros((1, 1, 128), dtype=np.float32)
        self.context = np.zeros(VAD_CONTEXT, dtype=np.float32)


class Endpointer:
    """Per-frame probabilities -> ("start", sample) at a speech start, ("end", sample) once the silence after
    it lasted min_silence (the sample where the silence began). Samples count from the stream's start."""

    def __init__(self, options: VadOptions, frame: int = VAD_FRAME, rate: int = VAD_RATE) -> None:
        self.options = options
        self.frame = frame
        self.min_silence = int(round(options.min_silence_seconds * rate))
        self.index = 0  # frames seen
        self.triggered = False
        self.silence_start: int | None = None  # where the current run of low-probability frames began

    def step(self, prob: float) -> tuple[str, int] | None:
        start = self.index * self.frame
        self.index += 1
        end = start + self.frame
        if prob >= self.options.threshold:
            self.silence_start = None
            if not self.triggered:
                self.triggered = True
                return ("start", start)
            return None
        if self.triggered and prob < self.options.low_threshold:
            if self.silence_start is None:
                self.silence_start = start
            if end - self.silence_start >= self.min_silence:
                ended = self.silence_start
                self.triggered = False
                self.silence_start = None
                return ("end", ended)
        return None
