"""Recognizer: a pipeline of small stages (load -> normalize -> window -> batch -> infer -> stitch -> decode)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xlsr_edge.bundle import BundleManifest, load_bundle
from xlsr_edge.constants import DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_CONTEXT_SECONDS, DEFAULT_CHUNK_SECONDS
from xlsr_edge.decoders import Decoded, Decoder, GreedyOptions, Vocabulary, make_decoder
from xlsr_edge.errors import AudioError, XlsrEdgeError
from xlsr_edge.runtime.audio import load_audio, normalize, prepare_audio
from xlsr_edge.runtime.batching import Window, bucket, pad_batch, plan_windows
from xlsr_edge.runtime.runners import Runner, make_runner

AudioInput = str | Path | np.ndarray


@dataclass
class Transcript:
    audio: str  # the input exactly as given (path string), or "<array N>"
    text: str = ""
    words: list[dict[str, Any]] = field(default_factory=list)
    duration: float = 0.0
    decoder: str = ""
    error: str | None = None
    language: str | None = None  # multi-language bundles only
    language_confidence: float | None = None

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"audio": self.audio, "error": self.error}
        out = {
            "audio": self.audio,
            "text": self.text,
            "words": self.words,
            "duration": round(self.duration, 4),
            "decoder": self.decoder,
        }
        if self.language is not None:
            out["language"] = self.language
            out["language_confidence"] = (
                None if self.language_confidence is None else round(self.language_confidence, 4)
            )
        return out


@dataclass(frozen=True)
class TranscribeOptions:
    batch_size: int = DEFAULT_BATCH_SIZE
    chunk_seconds: float | None = DEFAULT_CHUNK_SECONDS
    context_seconds: float = DEFAULT_CHUNK_CONTEXT_SECONDS
    max_padding: float = 0.25

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch size must be at least 1")
        if self.chunk_seconds is not None and self.chunk_seconds <= 0:
            raise ValueError("chunk seconds must be positive")
        if self.context_seconds < 0:
            raise ValueError("context seconds must be >= 0")
        if not 0 <= self.max_padding < 1:
            raise ValueError("max_padding must be within [0, 1)")


@dataclass
class _Item:
    name: str
    samples: np.ndarray | None = None
    frames: int = 0
    error: str | None = None
    logits: np.ndarray | None = None  # hidden states for multi-language backbones
    language: str | None = None
    language_confidence: float | None = None


class Recognizer:
    """Bundle + runner + decoder. `transcribe` returns one Transcript per input, errors included, in order."""

    def __init__(self, manifest: BundleManifest, runner: Runner, decoder: Decoder) -> None:
        self.manifest = manifest
        self.info = manifest.model
        self.runner = runner
        self.decoder = decoder
        self.vocab = Vocabulary.from_model_info(self.info)

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        *,
        backend: str = "onnxruntime",
        providers: Sequence[str] | str | None = None,
        threads: int | None = None,
        decoder: Decoder | Any = None,
        verify: bool = True,
        language: str | None = None,
        lid_threshold: float | None = None,
        below_threshold: str | None = None,
        **runner_kwargs,
    ) -> Recognizer:
        """Verify the bundle (schema, hashes), build the runner and the decoder (options or a Decoder).

        Multi-language bundles give a MultiRecognizer: `language` forces a head, otherwise language ID routes;
        below `lid_threshold` it runs every head and keeps the most confident (`below_threshold="all"`) or
        answers language "unknown" (`"unknown"`).
        """
        folder = Path(path)
        manifest = load_bundle(folder, verify=verify)
        kwargs = dict(runner_kwargs)
        if backend == "onnxruntime":
            kwargs.update(providers=providers, threads=threads)
        elif providers not in (None, "cpu") or threads:
            raise XlsrEdgeError(f"--providers/--threads apply to the onnxruntime backend, not {backend}")
        runner = make_runner(backend, folder, manifest, **kwargs).activate()
        if manifest.extra.get("kind") == "multi":
            from xlsr_edge.runtime.multi import MultiRecognizer

            return MultiRecognizer.create(
                folder,
                manifest,
                runner,
                decoder,
                language=language,
                threshold=lid_threshold,
                policy=below_threshold,
            )
        if not isinstance(decoder, Decoder):
            decoder = make_decoder(Vocabulary.from_model_info(manifest.model), decoder or GreedyOptions())
        return cls(manifest, runner, decoder)

    def close(self) -> None:
        self.runner.deactivate()
        self.decoder.close()

    def __enter__(self) -> Recognizer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- stages ---------------------------------------------------------------------------------------------

    def load(self, source: AudioInput, index: int, sample_rate: int | None = None) -> _Item:
        """Stage 1+2: read/resample and normalize; an unusable input becomes an item with an error."""
        rate = self.info.sample_rate
        name = str(source) if not isinstance(source, np.ndarray) else f"<array {index}>"
        try:
            if isinstance(source, np.ndarray):
                x = prepare_audio(source, sample_rate or rate, rate, name=name)
            else:
                x = load_audio(source, rate)
            frames = self.info.frames_for(len(x))
            if frames == 0:
                raise AudioError(
                    f"{name}: {len(x) / rate:.3f} s is shorter than one frame "
                    f"({self.info.receptive_field_samples / rate:.3f} s)"
                )
            return _Item(name, normalize(x, self.info.do_normalize), frames)
        except XlsrEdgeError as exc:
            return _Item(name, error=str(exc))

    def windows(self, items: list[_Item], options: TranscribeOptions) -> list[Window]:
        """Stage 3: split long inputs into overlapping windows aligned to frames."""
        rate = self.info.sample_rate
        chunk = None if options.chunk_seconds is None else int(options.chunk_seconds * rate)
        context = int(options.context_seconds * rate)
        limit = self.runner.max_samples
        if limit:  # an engine profile caps the window: core + 2 * context + (receptive field - stride)
            room = limit - (self.info.receptive_field_samples - self.info.frame_stride_samples)
            context = min(context, room // 4)
            chunk = room - 2 * context if chunk is None else min(chunk, room - 2 * context)
        out: list[Window] = []
        for i, it in enumerate(items):
            if it.samples is None:
                continue
            out += plan_windows(
                i,
                len(it.samples),
                stride=self.info.frame_stride_samples,
                receptive_field=self.info.receptive_field_samples,
                total_frames=it.frames,
                chunk_samples=chunk,
                context_samples=context,
            )
        return out

    def infer(
        self, items: list[_Item], windows: list[Window], options: TranscribeOptions, progress=None
    ) -> None:
        """Stage 4+5: bucket windows into batches, run the graph, stitch kept frames back per item."""
        pieces: dict[int, list[tuple[int, np.ndarray]]] = {}
        # models without an attention mask must never see padding: batch equal lengths only
        max_padding = options.max_padding if self.info.uses_attention_mask else 0.0
        stride = self.info.frame_stride_samples
        batch_size = min(options.batch_size, self.runner.max_batch or options.batch_size)
        for batch in bucket([w.num_samples for w in windows], batch_size, max_padding):
            ws = [windows[j] for j in batch]
            values, mask = pad_batch([items[w.item].samples[w.start : w.end] for w in ws])
            logits, lengths = self.runner.infer(values, mask)
            for w, lg, n in zip(ws, logits, lengths):
                keep_to = min(w.keep_to, int(n))
                pieces.setdefault(w.item, []).append((w.first_frame(stride), lg[w.keep_from : keep_to]))
            if progress is not None:
                progress.update(sum(w.num_samples for w in ws) / self.info.sample_rate)
        for i, parts in pieces.items():
            parts.sort(key=lambda p: p[0])
            items[i].logits = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]

    def decode(self, items: list[_Item]) -> list[Decoded | None]:
        """Stage 6: decode every item that has logits, in batches of similar length."""
        ok = [i for i, it in enumerate(items) if it.logits is not None]
        out: list[Decoded | None] = [None] * len(items)
        if not ok:
            return out
        vocab = self.info.vocab
        for batch in bucket([items[i].logits.shape[0] for i in ok], 64, max_padding=0.5):
            idx = [ok[j] for j in batch]
            longest = max(items[i].logits.shape[0] for i in idx)
            stacked = np.full((len(idx), longest, len(vocab)), -1e4, dtype=np.float32)
            lengths = np.zeros(len(idx), dtype=np.int64)
            for k, i in enumerate(idx):
                lg = items[i].logits
                stacked[k, : lg.shape[0]] = lg
                lengths[k] = lg.shape[0]
            for i, d in zip(idx, self.decoder.decode_batch(stacked, lengths)):
                out[i] = d
        return out

    # -- public -----------------------------------------------------------------------------------------------

    def transcribe(
        self,
        inputs: Sequence[AudioInput] | AudioInput,
        options: TranscribeOptions | None = None,
        *,
        sample_rate: int | None = None,
        progress: bool = False,
    ) -> list[Transcript]:
        if isinstance(inputs, str | Path | np.ndarray):
            inputs = [inputs]
        options = options or TranscribeOptions()
        items = [self.load(src, i, sample_rate) for i, src in enumerate(inputs)]
        bar = None
        if progress:
            from tqdm import tqdm

            total = sum(len(it.samples) for it in items if it.samples is not None) / self.info.sample_rate
            bar = tqdm(total=round(total, 1), unit="audio-s", desc="transcribe", leave=False)
        try:
            self.infer(items, self.windows(items, options), options, bar)
        finally:
            if bar is not None:
                bar.close()
        decoded = self.decode(items)
        return [self._format(it, d) for it, d in zip(items, decoded)]

    def logits(
        self, inputs: Sequence[AudioInput], options: TranscribeOptions | None = None
    ) -> list[np.ndarray | None]:
        """Stitched logits per input (None where the input failed): for gates and evaluation."""
        options = options or TranscribeOptions()
        items = [self.load(src, i) for i, src in enumerate(inputs)]
        self.infer(items, self.windows(items, options), options)
        return [it.logits for it in items]

    def _format(self, item: _Item, decoded: Decoded | None) -> Transcript:
        if item.error is not None or decoded is None:
            return Transcript(audio=item.name, error=item.error or "no output")
        return Transcript(
            audio=item.name,
            text=decoded.text,
            words=[
                {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)} for w in decoded.words
            ],
            duration=len(item.samples) / self.info.sample_rate,
            decoder=self.decoder.name,
            language=item.language,
            language_confidence=item.language_confidence,
        )
