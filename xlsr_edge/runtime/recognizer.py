"""Recognizer: a pipeline of small stages (load -> normalize -> window -> batch -> infer -> stitch -> decode).

Inputs run in groups, in order: a group closes when its windows fill GROUP_BATCHES batches, and a long file
(streamed from disk, see runtime.audio.StreamedAudio) runs alone. Each group's transcripts are yielded as soon
as it is decoded (`transcribe_iter`), so a caller can write them before the next input is even read.

`load_recognizer` (and its shorthand `Recognizer.from_bundle`) builds the Recognizer a bundle needs: this class
for CTC bundles, the subclass whose `bundle_kind` names bundle.json's `extra.kind` otherwise (the multi-language
one lives in runtime.multilang, which imports this module and never the reverse).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from xlsr_edge import limits
from xlsr_edge.bundle import BundleManifest, load_bundle
from xlsr_edge.constants import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK_CONTEXT_SECONDS,
    DEFAULT_CHUNK_SECONDS,
    DEFAULT_MAX_SECONDS,
    MAX_PADDING,
)
from xlsr_edge.decoders import Decoded, Decoder, GreedyOptions, Vocabulary, make_decoder
from xlsr_edge.errors import AudioError, BundleError, XlsrEdgeError
from xlsr_edge.runtime.audio import AudioFile, StreamedAudio, check_duration, normalize, prepare_audio
from xlsr_edge.runtime.backend_options import BackendOptions
from xlsr_edge.runtime.batching import Window, batch_limit, bucket, plan_windows, run_batches
from xlsr_edge.runtime.runners import Runner

AudioInput = str | Path | np.ndarray

# a group of inputs closes when its windows fill this many batches: enough to sort by length and keep padding
# small, few enough that results come out (and memory is freed) every few batches
GROUP_BATCHES = 4


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
    max_padding: float = MAX_PADDING  # graphs without an attention mask are never padded
    max_seconds: float | None = DEFAULT_MAX_SECONDS  # longer inputs get an error; None: no limit

    def __post_init__(self) -> None:  # finite and in range (xlsr_edge.limits): inf would overflow much later
        check = limits.check_number
        check("batch_size", self.batch_size, 1, limits.MAX_BATCH, integer=True)
        if self.max_seconds is not None:  # None: no limit
            check("max_seconds", self.max_seconds, 0, limits.MAX_SECONDS, lo_open=True)
        if self.chunk_seconds is not None:  # None: no chunking
            check("chunk_seconds", self.chunk_seconds, 0, limits.MAX_CHUNK_SECONDS, lo_open=True)
        check("context_seconds", self.context_seconds, 0, limits.MAX_CONTEXT_SECONDS)
        check("max_padding", self.max_padding, 0, 1, hi_open=True)


@dataclass
class AudioItem:
    """One input on its way through the stages: its audio, then the graph's output frames, then (multi-language
    bundles) the language chosen for it."""

    name: str
    samples: np.ndarray | None = None  # normalized, whole (arrays and files that fit in memory)
    stream: StreamedAudio | None = None  # long files: read again window by window
    num_samples: int = 0
    frames: int = 0
    error: str | None = None
    # the graph's stitched output [frames, width]: logits of a CTC bundle, hidden states of a multi-language
    # backbone (its language heads turn them into logits when decoding)
    output: np.ndarray | None = None
    language: str | None = None
    language_confidence: float | None = None


class Recognizer:
    """Bundle + runner + decoder. `transcribe_iter` yields one Transcript per input, errors included, in order,
    as each group finishes; `transcribe` returns them as a list."""

    # the bundle.json extra.kind this class runs (None: a CTC bundle); load_recognizer picks the class by it
    bundle_kind: ClassVar[str | None] = None
    item_type: ClassVar[type[AudioItem]] = AudioItem

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
        backend_options: BackendOptions | None = None,
        backend: str | None = None,
        providers: Sequence[str] | str | None = None,
        threads: int | None = None,
        decoder: Decoder | Any = None,
        verify: bool = True,
        language: str | None = None,
        lid_threshold: float | None = None,
        below_threshold: str | None = None,
        **runner_kwargs,
    ) -> Recognizer:
        """`load_recognizer`, with the runner settings as BackendOptions or as shorthands: `backend`, `providers`,
        `threads` and a backend's runner keywords (`BackendOptions.from_keywords`: onnxruntime `trt_cache_dir`,
        openvino `precision_hint`, `cache_dir`), not both."""
        if backend_options is None:  # checked here, before anything is loaded
            backend_options = BackendOptions.from_keywords(
                backend, providers=providers, threads=threads, **runner_kwargs
            )
        elif backend is not None or providers is not None or threads is not None or runner_kwargs:
            raise TypeError(
                "pass backend_options or the shorthands (backend, providers, threads, ...), not both"
            )
        return load_recognizer(
            path,
            backend_options=backend_options,
            decoder=decoder,
            verify=verify,
            language=language,
            lid_threshold=lid_threshold,
            below_threshold=below_threshold,
        )

    @classmethod
    def create(
        cls,
        folder: Path,
        manifest: BundleManifest,
        runner: Runner,
        decoder: Decoder | Any,
        *,
        language: str | None = None,
        threshold: float | None = None,
        policy: str | None = None,
    ) -> Recognizer:
        """The Recognizer of a loaded bundle and its active runner (`decoder`: options or a Decoder). A CTC bundle
        has one language: the multi-language settings do not apply to it."""
        if not isinstance(decoder, Decoder):
            decoder = make_decoder(Vocabulary.from_model_info(manifest.model), decoder or GreedyOptions())
        return cls(manifest, runner, decoder)

    def _check_output(self, logits: np.ndarray) -> None:
        """The graph's logit width must be the bundle's vocabulary (else decoding fails or reads wrong tokens)."""
        if logits.ndim != 3 or logits.shape[-1] != len(self.info.vocab):
            width = logits.shape[-1] if logits.ndim else 0
            raise BundleError(
                f"bundle vocabulary has {len(self.info.vocab)} tokens but the graph emits {width} logits per frame; "
                "bundle.json does not belong to this graph: re-export the bundle"
            )

    def close(self) -> None:
        self.runner.deactivate()
        self.decoder.close()

    def __enter__(self) -> Recognizer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def stream(self, options=None):
        """A live Stream (xlsr_edge.runtime.stream): accept(packet) -> Partial/Final events, close()."""
        from xlsr_edge.runtime.stream import Stream

        return Stream(self, options)

    # -- stages ---------------------------------------------------------------------------------------------

    def load(
        self,
        source: AudioInput,
        index: int,
        sample_rate: int | None = None,
        max_seconds: float | None = DEFAULT_MAX_SECONDS,
    ) -> AudioItem:
        """Stage 1+2: read/resample and normalize (a file too long to hold is measured in a first pass over its
        stream, then read again window by window); an unusable input becomes an item with an error."""
        item = self._open(source, index, sample_rate, max_seconds)
        return self._scan(item) if item.stream is not None else item

    def _open(
        self, source: AudioInput, index: int, sample_rate: int | None, max_seconds: float | None
    ) -> AudioItem:
        """Arrays and files that fit in memory are read whole; a longer file only has its header checked."""
        rate = self.info.sample_rate
        name = str(source) if not isinstance(source, np.ndarray) else f"<array {index}>"
        try:
            if isinstance(source, np.ndarray):
                source_rate = sample_rate or rate
                if np.ndim(source) and source_rate > 0:  # before resampling: a week of audio takes a while
                    check_duration(name, np.shape(source)[0] / source_rate, max_seconds)
                x = prepare_audio(source, source_rate, rate, name=name)
            else:
                audio = AudioFile.open(source, rate, max_seconds=max_seconds)
                if not audio.fits_in_memory:
                    return self.item_type(name, stream=StreamedAudio(audio, self.info.do_normalize))
                x = audio.read()
            frames = self._frames(name, len(x))
            return self.item_type(
                name, normalize(x, self.info.do_normalize), num_samples=len(x), frames=frames
            )
        except XlsrEdgeError as exc:
            return self.item_type(name, error=str(exc))

    def _scan(self, item: AudioItem) -> AudioItem:
        """The first pass over a streamed file: its length and normalization statistics."""
        try:
            item.num_samples = item.stream.scan()
            item.frames = self._frames(item.name, item.num_samples)
        except XlsrEdgeError as exc:
            item.stream.close()
            item.stream, item.error = None, str(exc)
        return item

    def _frames(self, name: str, num_samples: int) -> int:
        frames = self.info.frames_for(num_samples)
        if frames == 0:
            rate = self.info.sample_rate
            raise AudioError(
                f"{name}: {num_samples / rate:.3f} s is shorter than one frame "
                f"({self.info.receptive_field_samples / rate:.3f} s)"
            )
        return frames

    def windows(self, items: list[AudioItem], options: TranscribeOptions) -> list[Window]:
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
            if it.samples is None and it.stream is None:
                continue
            out += plan_windows(
                i,
                it.num_samples,
                stride=self.info.frame_stride_samples,
                receptive_field=self.info.receptive_field_samples,
                total_frames=it.frames,
                chunk_samples=chunk,
                context_samples=context,
            )
        return out

    def infer(
        self, items: list[AudioItem], windows: list[Window], options: TranscribeOptions, progress=None
    ) -> None:
        """Stage 4+5: bucket windows into batches, run the graph, stitch kept frames back per item.

        Windows are read in order, GROUP_BATCHES batches' worth at a time (a streamed file front to back), and
        bucketed by length within that span."""
        pieces: dict[int, list[tuple[int, np.ndarray]]] = {}
        stride = self.info.frame_stride_samples
        span = batch_limit(self.runner, options.batch_size) * GROUP_BATCHES
        for first in range(0, len(windows), span):
            part = windows[first : first + span]
            samples = [self._window_samples(items[w.item], w) for w in part]
            for batch, outputs in run_batches(
                self.runner,
                samples,
                batch_size=options.batch_size,
                uses_mask=self.info.uses_attention_mask,
                max_padding=options.max_padding,
                check=self._check_output,
            ):
                ws = [part[j] for j in batch]
                for w, out in zip(ws, outputs):
                    pieces.setdefault(w.item, []).append(
                        (w.first_frame(stride), out[w.keep_from : w.keep_to])
                    )
                if progress is not None:
                    progress.update(sum(w.num_samples for w in ws) / self.info.sample_rate)
        for i, parts in pieces.items():
            parts.sort(key=lambda p: p[0])
            items[i].output = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]

    def decode(self, items: list[AudioItem]) -> list[Decoded | None]:
        """Stage 6: decode every item that has logits, in batches of similar length."""
        ok = [i for i, it in enumerate(items) if it.output is not None]
        out: list[Decoded | None] = [None] * len(items)
        if not ok:
            return out
        vocab = self.info.vocab
        for batch in bucket([items[i].output.shape[0] for i in ok], 64, max_padding=0.5):
            idx = [ok[j] for j in batch]
            longest = max(items[i].output.shape[0] for i in idx)
            stacked = np.full((len(idx), longest, len(vocab)), -1e4, dtype=np.float32)
            lengths = np.zeros(len(idx), dtype=np.int64)
            for k, i in enumerate(idx):
                lg = items[i].output
                stacked[k, : lg.shape[0]] = lg
                lengths[k] = lg.shape[0]
            for i, d in zip(idx, self.decoder.decode_batch(stacked, lengths)):
                out[i] = d
        return out

    def _window_samples(self, item: AudioItem, w: Window) -> np.ndarray:
        if item.samples is not None:
            return item.samples[w.start : w.end]
        return item.stream.window(w.start, w.end)

    def _run(self, items: list[AudioItem], options: TranscribeOptions, progress=None) -> list[AudioItem]:
        """Windows and inference for one group; the audio is let go once its logits are there."""
        try:
            self.infer(items, self.windows(items, options), options, progress)
        except AudioError as exc:  # only a streamed file reads audio here, and it runs alone
            if len(items) != 1 or items[0].stream is None:
                raise
            items[0].error, items[0].output = str(exc), None
        finally:
            for it in items:
                if it.stream is not None:
                    it.stream.close()
                it.samples = it.stream = None
        return items

    def _groups(
        self,
        inputs: Sequence[AudioInput],
        options: TranscribeOptions,
        sample_rate: int | None = None,
        progress=None,
    ) -> Iterator[list[AudioItem]]:
        """Load inputs in order and run them in groups (see the module docstring), each yielded when done."""
        span = options.batch_size * GROUP_BATCHES
        pending: list[AudioItem] = []
        windows = 0
        for i, src in enumerate(inputs):
            item = self._open(src, i, sample_rate, options.max_seconds)
            if item.stream is not None:  # a long file runs alone, read from disk window by window
                if pending:  # finish what came before it first: its two passes over the file take a while
                    yield self._run(pending, options, progress)
                    pending, windows = [], 0
                yield self._run([self._scan(item)], options, progress)
                continue
            pending.append(item)
            if item.error is None:
                windows += len(self.windows([item], options))
            if windows >= span or windows == 0:  # full, or only errors: nothing to wait for
                yield self._run(pending, options, progress)
                pending, windows = [], 0
        if pending:
            yield self._run(pending, options, progress)

    # -- public -----------------------------------------------------------------------------------------------

    def transcribe_iter(
        self,
        inputs: Sequence[AudioInput] | AudioInput,
        options: TranscribeOptions | None = None,
        *,
        sample_rate: int | None = None,
        progress: bool = False,
    ) -> Iterator[Transcript]:
        """One Transcript per input, errors included, in input order; each is yielded as soon as its group is
        decoded, before later inputs are read, so a crash or a kill later on loses nothing already yielded."""
        if isinstance(inputs, str | Path | np.ndarray):
            inputs = [inputs]
        options = options or TranscribeOptions()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(unit="audio-s", desc="transcribe", leave=False)
        try:
            for group in self._groups(inputs, options, sample_rate, bar):
                for it, d in zip(group, self.decode(group)):
                    yield self._format(it, d)
        finally:
            if bar is not None:
                bar.close()

    def transcribe(
        self,
        inputs: Sequence[AudioInput] | AudioInput,
        options: TranscribeOptions | None = None,
        *,
        sample_rate: int | None = None,
        progress: bool = False,
    ) -> list[Transcript]:
        """`transcribe_iter` as a list."""
        return list(self.transcribe_iter(inputs, options, sample_rate=sample_rate, progress=progress))

    def logits(
        self, inputs: Sequence[AudioInput], options: TranscribeOptions | None = None
    ) -> list[np.ndarray | None]:
        """The graph's stitched output per input (None where the input failed): logits for gates and evaluation
        (a multi-language backbone's hidden states)."""
        options = options or TranscribeOptions()
        return [it.output for group in self._groups(inputs, options) for it in group]

    def _format(self, item: AudioItem, decoded: Decoded | None) -> Transcript:
        if item.error is not None or decoded is None:
            return Transcript(audio=item.name, error=item.error or "no output")
        return Transcript(
            audio=item.name,
            text=decoded.text,
            words=[
                {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)} for w in decoded.words
            ],
            duration=item.num_samples / self.info.sample_rate,
            decoder=self.decoder.name,
            language=item.language,
            language_confidence=item.language_confidence,
        )


def _recognizer_class(kind: str | None) -> type[Recognizer]:
    """The Recognizer subclass whose `bundle_kind` is `kind` (xlsr_edge.runtime imports them all), else this one."""
    todo: list[type[Recognizer]] = [Recognizer]
    while todo:
        c = todo.pop()
        if c.bundle_kind == kind:
            return c
        todo += c.__subclasses__()
    return Recognizer


def load_recognizer(
    path: str | Path,
    *,
    backend_options: BackendOptions | None = None,
    decoder: Decoder | Any = None,
    verify: bool = True,
    language: str | None = None,
    lid_threshold: float | None = None,
    below_threshold: str | None = None,
) -> Recognizer:
    """Verify the bundle (schema, hashes), build its runner (`backend_options`; default: the runtime bundle.json
    records (`xlsr-edge optimize`), else onnxruntime on the CPU)
    and the Recognizer its kind needs, with the decoder (options or a Decoder).

    Multi-language bundles give a MultiRecognizer (runtime.multilang): `language` forces a head, otherwise
    language ID routes; below `lid_threshold` it runs every head and keeps the most confident
    (`below_threshold="all"`) or answers language "unknown" (`"unknown"`).
    """
    folder = Path(path)
    # validates bundle.json and refuses every path it names that leads outside the folder (graph included)
    manifest = load_bundle(folder, verify=verify)
    from xlsr_edge.lm.weights import with_tuned_weights

    decoder = with_tuned_weights(decoder)  # BeamOptions with an LM: the weights `lm tune` stored for it
    # no backend given: the runtime `xlsr-edge optimize` recorded in bundle.json, else onnxruntime (runtime.tuned)
    runner = (backend_options or BackendOptions(backend=None)).make_runner(folder, manifest).activate()
    try:
        return _recognizer_class(manifest.extra.get("kind")).create(
            folder,
            manifest,
            runner,
            decoder,
            language=language,
            threshold=lid_threshold,
            policy=below_threshold,
        )
    except BaseException:
        runner.deactivate()
        raise
