"""Live recognition: a Stream takes audio packets of any size and emits Partial and Final events.

XLS-R attends over its whole input, so a stream runs the model on windows, the way offline chunking does
(``runtime.batching.plan_windows``): a *chunk* of frames plus left context (audio already heard) and right
look-ahead (audio the chunk has to wait for), aligned to the frame stride, keeping only the chunk's frames.
Each window is normalized on its own (zero mean, unit variance over the window), as the Hugging Face pipeline
does with its strided chunks. Every decision is a function of the audio alone, never of how it was cut into
packets: a step happens when the stream has received enough samples for it, and steps run in order of that
sample position (VAD frame, maximum-length cut, then chunk, on ties).

Utterances. With a VAD (``StreamOptions.vad``), an utterance starts ``speech_pad`` before the first speech
frame and ends ``speech_pad`` after the speech, once ``min_silence`` of silence followed it; the model only
sees audio inside utterances and each utterance gives one Final. Without a VAD the stream is one utterance
cut at the maximum length. An utterance that reaches ``max_utterance_seconds`` is cut in the middle of the
longest run of blank/word-delimiter frames of its last 2 s (a pause, as the model hears it), its Final is
emitted, and the next utterance starts at the cut with the earlier audio as left context.

Partials come after each chunk and may change; a Final is never revised. Events carry stream time in
seconds (samples at the model's rate since the stream's first sample); word times likewise.

For servers: ``feed`` + ``pending`` / ``complete`` let a caller run the windows of many streams in one
batched inference call (``xlsr_edge.runtime.server``); ``accept`` and ``close`` run them one by one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from xlsr_edge import limits
from xlsr_edge.bundle import BundleManifest, ModelInfo
from xlsr_edge.decoders import Decoded, Decoder, Word
from xlsr_edge.errors import AudioError, XlsrEdgeError
from xlsr_edge.runtime.audio import check_samples, normalize
from xlsr_edge.runtime.batching import infer_batch
from xlsr_edge.runtime.runners import Runner
from xlsr_edge.runtime.vad import VAD_FRAME, VAD_RATE, Endpointer, SileroVad, VadOptions

CUT_SEARCH_SECONDS = 2.0  # a maximum-length cut looks for a pause in the utterance's last 2 s


@dataclass(frozen=True)
class StreamOptions:
    """chunk_seconds: frames decided per step (partial cadence); left_context_seconds: earlier audio each
    window also sees; right_context_seconds: look-ahead a chunk waits for (adds to latency).
    vad: VadOptions (or True) to endpoint utterances at pauses, None/False for finals at max length only.
    max_utterance_seconds: longest utterance before a forced cut. partials: emit Partial events.
    sample_rate: rate of the samples given to ``accept`` (None = the model's); others are resampled (soxr).
    """

    chunk_seconds: float = 1.0
    left_context_seconds: float = 2.0
    right_context_seconds: float = 0.25
    vad: VadOptions | bool | None = True
    max_utterance_seconds: float = 20.0
    partials: bool = True
    sample_rate: int | None = None

    def __post_init__(self) -> None:  # finite and in range (xlsr_edge.limits): inf would overflow much later
        check, most = limits.check_number, limits.MAX_STREAM_SECONDS
        check("chunk_seconds", self.chunk_seconds, 0, most, lo_open=True)
        check("left_context_seconds", self.left_context_seconds, 0, most)
        check("right_context_seconds", self.right_context_seconds, 0, most)
        check(
            "max_utterance_seconds",
            self.max_utterance_seconds,
            2 * CUT_SEARCH_SECONDS,
            limits.MAX_UTTERANCE_SECONDS,
        )
        if self.sample_rate is not None:  # the rule files follow: 8 to 384 kHz (runtime.audio.check_rate)
            limits.check_sample_rate("sample_rate", self.sample_rate)
        if self.vad is True:
            object.__setattr__(self, "vad", VadOptions())
        elif self.vad is False:
            object.__setattr__(self, "vad", None)
        elif self.vad is not None and not isinstance(self.vad, VadOptions):
            raise ValueError(f"vad must be VadOptions, True, False or None, got {self.vad!r}")


@dataclass(frozen=True)
class StreamEvent:
    """What a stream emits: text, its words (stream seconds) and the span [start, end) in stream seconds."""

    text: str
    words: tuple[Word, ...] = ()
    start: float = 0.0
    end: float = 0.0
    type: ClassVar[str] = "event"

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "text": self.text,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "words": [
                {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)} for w in self.words
            ],
        }


@dataclass(frozen=True)
class Partial(StreamEvent):
    """The current utterance so far; a later Partial or the utterance's Final replaces it."""

    type: ClassVar[str] = "partial"


@dataclass(frozen=True)
class Final(StreamEvent):
    """One utterance, never revised. Empty text only when partials of it were shown (it retracts them)."""

    type: ClassVar[str] = "final"


Event = StreamEvent


@dataclass(frozen=True)
class WindowRequest:
    """One model input a stream waits for: run ``samples`` (normalized float32), hand back the output."""

    samples: np.ndarray
    keep_from: int  # first frame of the output that belongs to the chunk
    keep_to: int  # exclusive


@dataclass
class _Utterance:
    start: int  # stream sample (a multiple of the frame stride)
    floor: int  # earliest sample left context may reach (the utterance start, or earlier after a cut)
    end: int | None = None  # known once the VAD, a cut or close() ends it
    cut: bool = False  # ended by the maximum length: the Final stops at a pause found in its frames
    parts: list[np.ndarray] = field(default_factory=list)
    frames: int = 0  # frames decided so far
    shown: bool = False  # a Partial of it was emitted
    partial: str = ""

    def logits(self) -> np.ndarray:
        if len(self.parts) > 1:
            self.parts = [np.concatenate(self.parts)]
        return self.parts[0]


class _Audio:
    """Received samples from stream sample `start` on, in a growable array (amortized appends)."""

    def __init__(self) -> None:
        self.data = np.zeros(1 << 16, dtype=np.float32)
        self.start = 0
        self.size = 0

    @property
    def end(self) -> int:
        return self.start + self.size

    def append(self, x: np.ndarray) -> None:
        need = self.size + len(x)
        if need > len(self.data):
            grown = np.zeros(max(need, 2 * len(self.data)), dtype=np.float32)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : need] = x
        self.size = need

    def slice(self, a: int, b: int) -> np.ndarray:
        if a < self.start or b > self.end or a > b:
            raise RuntimeError(f"audio [{a}, {b}) outside the buffer [{self.start}, {self.end})")
        return self.data[a - self.start : b - self.start]

    def drop_before(self, k: int) -> None:
        """Forget samples before k (moved only when that frees a fair share, so appends stay cheap)."""
        k = min(k, self.end)
        drop = k - self.start
        if drop <= 0 or drop < max(VAD_RATE, self.size // 2):
            return
        self.data[: self.size - drop] = self.data[drop : self.size]
        self.size -= drop
        self.start = k


def to_float32(samples: Any) -> np.ndarray:
    """int16 (or other integer PCM) -> float32 in [-1, 1); float arrays as float32; 1-D only."""
    x = np.asarray(samples)
    if x.ndim == 2 and 1 in x.shape:
        x = x.reshape(-1)
    if x.ndim != 1:
        raise AudioError(f"stream samples must be mono (1-D), got shape {x.shape}")
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.float32) / float(np.iinfo(x.dtype).max + 1)
    if not np.issubdtype(x.dtype, np.floating):
        raise AudioError(f"unsupported sample type {x.dtype} (float32 or int16)")
    check_samples("stream", x, what="the stream")  # NaN/inf or absurd values: refused before any arithmetic
    return x.astype(np.float32, copy=False)


class StreamSource(Protocol):
    """What a Stream reads of its Recognizer (typed here: runtime.recognizer imports this module, not the
    reverse)."""

    manifest: BundleManifest
    info: ModelInfo
    runner: Runner
    decoder: Decoder


class Stream:
    """A live stream over one Recognizer (``rec.stream(options)``). Not thread-safe: one caller at a time."""

    def __init__(self, recognizer: StreamSource, options: StreamOptions | None = None) -> None:
        o = options or StreamOptions()
        manifest = getattr(recognizer, "manifest", None)
        if manifest is not None and manifest.extra.get("kind") == "multi":
            raise XlsrEdgeError("streaming needs a single-language bundle (this one is multi-language)")
        info = recognizer.info
        self.options = o
        self.rate = info.sample_rate
        self._stride = info.frame_stride_samples
        self._rf = info.receptive_field_samples
        self._frames_for = info.frames_for
        self._do_normalize = info.do_normalize
        self._uses_mask = info.uses_attention_mask
        self._runner = recognizer.runner
        self._decoder = recognizer.decoder
        self._pause_ids = {info.blank_id}
        if info.word_delimiter in info.vocab:
            self._pause_ids.add(info.vocab.index(info.word_delimiter))
        stride = self._stride
        self._chunk = max(1, int(round(o.chunk_seconds * self.rate / stride)))
        self._left = int(round(o.left_context_seconds * self.rate / stride)) * stride
        self._right = int(round(o.right_context_seconds * self.rate))
        self._max = max(
            int(round(o.max_utterance_seconds * self.rate / stride)) * stride, self._chunk * stride + self._rf
        )
        self._search = int(round(CUT_SEARCH_SECONDS * self.rate / stride))
        self._audio = _Audio()
        self._resampler = None
        if o.sample_rate is not None and o.sample_rate != self.rate:
            import soxr

            self._resampler = soxr.ResampleStream(o.sample_rate, self.rate, 1, dtype="float32", quality="HQ")
        self._vad: SileroVad | None = None
        if o.vad is not None:
            if self.rate != VAD_RATE:
                raise XlsrEdgeError(
                    f"the VAD runs at {VAD_RATE} Hz but this bundle's rate is {self.rate} Hz: stream without VAD"
                )
            self._vad = SileroVad.shared()
            self._vad_state = self._vad.new_state()
            self._endpointer = Endpointer(o.vad, VAD_FRAME, VAD_RATE)
            self._pad = int(round(o.vad.speech_pad_seconds * self.rate))
            self._probs = np.zeros(0, dtype=np.float32)  # computed, not yet stepped
            self._vad_done = 0  # frames whose probability is computed
        self._utt: _Utterance | None = None if self._vad else _Utterance(0, 0)
        self._last_end = 0  # end of the previous utterance: the next one starts no earlier
        self._events: list[Event] = []
        self._request: WindowRequest | None = None
        self._closing = False
        self._closed = False

    # -- public ----------------------------------------------------------------------------------------------

    @property
    def samples_received(self) -> int:
        """Samples at the model's rate received so far (stream time = this / rate)."""
        return self._audio.end

    def accept(self, samples: Any) -> list[Event]:
        """Add a packet (float32 in [-1, 1] or int16 PCM, any length) and return the events it completed."""
        self.feed(samples)
        return self._run()

    def close(self) -> list[Event]:
        """End of audio: decide the rest, return the last events (the last Final included)."""
        if self._closed:
            return []
        self.finish()
        events = self._run()
        self._closed = True
        return events

    def feed(self, samples: Any) -> None:
        """Buffer a packet without running the model (``pending``/``complete`` do the work)."""
        if self._closing:
            raise XlsrEdgeError("the stream is closed")
        x = to_float32(samples)
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x, last=False)
        if x.size:
            self._audio.append(x)
            self._audio.drop_before(self._keep_from())

    def finish(self) -> None:
        """Mark the end of the audio (after the resampler's tail); the next ``pending`` calls flush."""
        if self._closing:
            return
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if tail.size:
                self._audio.append(tail)
        self._closing = True

    def pending(self) -> WindowRequest | None:
        """The next window the stream needs run, or None until more audio (or ``finish``) arrives.

        Steps that need no model (VAD frames, cuts, finals) happen here and queue their events."""
        if self._request is not None:
            return self._request
        self._update_vad()
        while True:
            u = self._utt
            if u is not None and u.end is not None:
                total = self._frames_for(u.end - u.start) if u.end > u.start else 0
                if u.frames < total:
                    return self._make_request(u, min(self._chunk, total - u.frames), limit=u.end)
                self._finish_utterance(u, total)
                continue
            step = self._next_step()
            if step is None:
                if self._closing and self._end_for_close():
                    continue
                return None
            kind = step[2]
            if kind == "vad":
                self._vad_step()
            elif kind == "max":
                u.end = u.start + self._max
                u.cut = True
            else:
                return self._make_request(u, self._chunk, limit=None)

    def complete(self, logits: np.ndarray, length: int | None = None) -> None:
        """Hand back the model output for the request ``pending`` returned: logits [frames, vocab]."""
        req, u = self._request, self._utt
        if req is None or u is None:
            raise XlsrEdgeError("complete() without a pending request")
        n = req.keep_to - req.keep_from
        available = logits.shape[0] if length is None else min(int(length), logits.shape[0])
        if available < req.keep_to:
            raise XlsrEdgeError(f"the model returned {available} frames, the window needs {req.keep_to}")
        u.parts.append(np.array(logits[req.keep_from : req.keep_to], dtype=np.float32))
        u.frames += n
        self._request = None
        if u.end is None and self.options.partials:
            self._emit_partial(u)

    def take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    # -- steps -----------------------------------------------------------------------------------------------

    def _run(self) -> list[Event]:
        while (req := self.pending()) is not None:
            (logits,), _ = infer_batch(self._runner, [req.samples], self._uses_mask)
            self.complete(logits)
        return self.take_events()

    def _next_step(self) -> tuple[int, int, str] | None:
        """(sample position, tie order, kind) of the earliest step the received audio allows."""
        total = self._audio.end
        steps = []
        if self._vad is not None and len(self._probs):
            steps.append((self._endpointer.index * VAD_FRAME + VAD_FRAME, 0, "vad"))
        u = self._utt
        if u is not None:
            steps.append((u.start + self._max, 1, "max"))
            chunk_end = (u.frames + self._chunk - 1) * self._stride + self._rf + self._right
            steps.append((u.start + chunk_end, 2, "chunk"))
        steps = [s for s in steps if s[0] <= total]
        return min(steps) if steps else None

    def _update_vad(self) -> None:
        """Speech probabilities of every whole VAD frame received (one ONNX call)."""
        if self._vad is None:
            return
        n = self._audio.end // VAD_FRAME
        if n > self._vad_done:
            audio = self._audio.slice(self._vad_done * VAD_FRAME, n * VAD_FRAME)
            probs = self._vad.probabilities(self._vad_state, audio)
            self._probs = np.concatenate([self._probs, probs]) if len(self._probs) else probs
            self._vad_done = n

    def _vad_step(self) -> None:
        prob = float(self._probs[0])
        self._probs = self._probs[1:]
        position = self._endpointer.index * VAD_FRAME + VAD_FRAME  # end of this frame
        change = self._endpointer.step(prob)
        if change is None:
            return
        kind, sample = change
        if kind == "start" and self._utt is None:
            start = max(self._last_end, sample - self._pad, 0)
            start = -(-start // self._stride) * self._stride
            self._utt = _Utterance(start, start)
        elif kind == "end" and self._utt is not None and self._utt.end is None:
            self._utt.end = max(self._utt.start, min(sample + self._pad, position))

    def _end_for_close(self) -> bool:
        """At the end of the audio: end the open utterance there (or where its trailing silence began)."""
        u = self._utt
        if u is None or u.end is not None:
            return False
        end = self._audio.end
        if self._vad is not None and self._endpointer.silence_start is not None:
            end = min(end, self._endpointer.silence_start + self._pad)
        u.end = max(u.start, end)
        return True

    def _make_request(self, u: _Utterance, n: int, limit: int | None) -> WindowRequest:
        stride = self._stride
        first = u.start + u.frames * stride
        a = max(u.floor, first - self._left)
        b = u.start + (u.frames + n - 1) * stride + self._rf + self._right
        if limit is not None:
            b = min(b, limit)
        x = np.array(self._audio.slice(a, b), dtype=np.float32)
        if self._do_normalize:
            x = normalize(x, True)
        keep_from = (first - a) // stride
        self._request = WindowRequest(x, keep_from, keep_from + n)
        return self._request

    def _decode(self, u: _Utterance, frames: int) -> Decoded:
        if frames <= 0:
            return Decoded("")
        return self._decoder.decode(u.logits()[:frames])

    def _words(self, decoded: Decoded, offset: float) -> tuple[Word, ...]:
        return tuple(Word(w.word, w.start + offset, w.end + offset) for w in decoded.words)

    def _emit_partial(self, u: _Utterance) -> None:
        d = self._decode(u, u.frames)
        if d.text == u.partial:
            return
        u.partial, u.shown = d.text, True
        t0 = u.start / self.rate
        end = (u.start + u.frames * self._stride) / self.rate
        self._events.append(Partial(d.text, self._words(d, t0), t0, end))

    def _cut_frame(self, logits: np.ndarray) -> int:
        """Middle of the longest run of blank/delimiter frames in the last CUT_SEARCH_SECONDS (latest on
        ties), or the end when there is none."""
        total = logits.shape[0]
        lo = max(1, total - min(self._search, total // 2))
        pause = np.isin(logits[lo:].argmax(axis=-1), list(self._pause_ids))
        best, best_len, run = total, 0, 0
        for i, p in enumerate(pause.tolist()):
            run = run + 1 if p else 0
            if run and run >= best_len:  # the run is frames [lo + i + 1 - run, lo + i + 1)
                best_len, best = run, lo + i + 1 - run + run // 2
        return best

    def _finish_utterance(self, u: _Utterance, total: int) -> None:
        frames = self._cut_frame(u.logits()[:total]) if (u.cut and total > 1) else total
        end = u.start + frames * self._stride if u.cut else u.end
        d = self._decode(u, frames)
        if d.text or u.shown:
            t0 = u.start / self.rate
            self._events.append(Final(d.text, self._words(d, t0), t0, end / self.rate))
        self._last_end = end
        self._utt = None
        if u.cut:  # the speech goes on: the next utterance starts at the cut, the earlier audio as context
            self._utt = _Utterance(end, max(u.floor, end - self._left))
        self._audio.drop_before(self._keep_from())

    def _keep_from(self) -> int:
        """The earliest sample a future step can need."""
        k = self._audio.end
        if self._utt is not None:
            k = min(k, self._utt.floor)
        if self._vad is not None:
            k = min(
                k, self._vad_done * VAD_FRAME, self._endpointer.index * VAD_FRAME - self._pad - self._stride
            )
        return max(k, 0)
