"""`xlsr-edge stream`: live transcription of stdin PCM or audio files, JSON lines as events happen."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from xlsr_edge import limits
from xlsr_edge.commands.common import (
    add_backend_argument,
    add_decoder_arguments,
    backend_options,
    decoder_options,
)
from xlsr_edge.constants import EXIT_OK
from xlsr_edge.errors import XlsrEdgeError

PACKET_SECONDS = 0.1  # files are fed in packets of this length (at real time with --realtime)
STDIN_READ_BYTES = 3200  # up to 0.1 s of 16 kHz s16le per read; a read returns what the pipe has


def add_stream_arguments(p: argparse.ArgumentParser) -> None:
    """Window and endpointing flags (shared with `serve`, where they are the defaults clients start from)."""
    g = p.add_argument_group("streaming")
    g.add_argument(
        "--chunk-seconds",
        type=limits.positive_float(limits.MAX_STREAM_SECONDS),
        default=1.0,
        help="audio decided per step (partial cadence)",
    )
    context = limits.nonneg_float(limits.MAX_STREAM_SECONDS)
    g.add_argument("--left-context-seconds", type=context, default=2.0, help="earlier audio each window sees")
    g.add_argument(
        "--right-context-seconds",
        type=context,
        default=0.25,
        help="look-ahead each chunk waits for (latency)",
    )
    g.add_argument("--no-vad", action="store_true", help="no endpointing: finals at --max-utterance-seconds")
    g.add_argument(
        "--vad-threshold",
        type=limits.float_in(0.0, 1.0, lo_open=True, hi_open=True),
        default=0.5,
        help="speech probability of a speech frame",
    )
    g.add_argument(
        "--min-silence-seconds",
        type=limits.positive_float(limits.MAX_STREAM_SECONDS),
        default=0.5,
        help="pause that ends an utterance",
    )
    g.add_argument("--speech-pad-seconds", type=context, default=0.1, help="audio kept around the speech")
    g.add_argument(
        "--max-utterance-seconds",
        type=limits.positive_float(limits.MAX_UTTERANCE_SECONDS),
        default=20.0,
        help="cut longer utterances at a pause",
    )
    g.add_argument("--no-partials", action="store_true", help="emit finals only")


def stream_options(args: argparse.Namespace, sample_rate: int | None = None):
    from xlsr_edge.runtime.stream import StreamOptions
    from xlsr_edge.runtime.vad import VadOptions

    vad = None
    if not args.no_vad:
        vad = VadOptions(
            threshold=args.vad_threshold,
            min_silence_seconds=args.min_silence_seconds,
            speech_pad_seconds=args.speech_pad_seconds,
        )
    return StreamOptions(
        chunk_seconds=args.chunk_seconds,
        left_context_seconds=args.left_context_seconds,
        right_context_seconds=args.right_context_seconds,
        vad=vad,
        max_utterance_seconds=args.max_utterance_seconds,
        partials=not args.no_partials,
        sample_rate=sample_rate,
    )


def load_recognizer(args: argparse.Namespace, bundle: Path | None = None, language: str | None = None):
    """The Recognizer of args.bundle (or of `bundle`) with the command's backend and decoder flags."""
    from xlsr_edge.runtime import Recognizer

    if args.threads is not None and args.threads < 1:
        raise XlsrEdgeError(f"--threads must be >= 1, got {args.threads}")
    return Recognizer.from_bundle(
        bundle or args.bundle,
        backend_options=backend_options(args),
        decoder=decoder_options(args),
        language=language,
    )


def _emit(event, audio: str | None) -> None:
    data = event.to_json()
    if audio is not None:
        data["audio"] = audio
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _stream_stdin(rec, options) -> None:
    import numpy as np

    if sys.stdin is None or sys.stdin.isatty():
        raise XlsrEdgeError(
            "stdin is a terminal: pipe raw s16le mono PCM into it, e.g. "
            "arecord -f S16_LE -r 16000 -c 1 | xlsr-edge stream BUNDLE -"
        )
    fd = sys.stdin.buffer.fileno()
    stream = rec.stream(options)
    carry = b""
    while True:
        data = os.read(fd, STDIN_READ_BYTES)
        if not data:
            break
        data = carry + data
        whole = len(data) - len(data) % 2
        carry = data[whole:]
        for event in stream.accept(np.frombuffer(data[:whole], dtype="<i2")):
            _emit(event, None)
    for event in stream.close():
        _emit(event, None)


def _stream_file(rec, options, label: str, path: Path, realtime: bool) -> None:
    from xlsr_edge.runtime.audio import load_audio

    x = load_audio(path, rec.info.sample_rate)
    stream = rec.stream(options)
    step = max(1, int(PACKET_SECONDS * rec.info.sample_rate))
    t0 = time.monotonic()
    for i in range(0, len(x), step):
        if realtime:
            delay = t0 + (i + step) / rec.info.sample_rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # the packet [i, i + step) exists once its last sample was "spoken"
        for event in stream.accept(x[i : i + step]):
            _emit(event, label)
    for event in stream.close():
        _emit(event, label)


def _stream(args: argparse.Namespace) -> int:
    stdin = args.audio == ["-"]
    if "-" in args.audio and not stdin:
        raise XlsrEdgeError("'-' (stdin) cannot be combined with files")
    if args.sample_rate is not None and not stdin:
        raise XlsrEdgeError("--sample-rate describes raw stdin PCM; files carry their own rate")
    if args.sample_rate is not None and args.sample_rate <= 0:
        raise XlsrEdgeError(f"--sample-rate must be positive, got {args.sample_rate}")
    missing = [a for a in args.audio if not stdin and not Path(a).is_file()]
    if missing:
        raise XlsrEdgeError(f"no such file: {missing[0]}")
    options = stream_options(args, sample_rate=args.sample_rate if stdin else None)
    with load_recognizer(args) as rec:
        if stdin:
            _stream_stdin(rec, options)
        else:
            for a in args.audio:
                _stream_file(rec, options, a, Path(a), args.realtime)
    return EXIT_OK


def add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    add_backend_argument(p, openvino_flags=True, trt_cache=True)
    p.add_argument(
        "--providers", default="cpu", help="onnxruntime providers, comma-separated: cpu,cuda,tensorrt"
    )
    p.add_argument("--threads", type=limits.threads(), default=None, help="onnxruntime intra-op threads")
    add_decoder_arguments(p, hotwords=True)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommand."""
    p = sub.add_parser(
        "stream",
        help="live transcription of stdin PCM or audio files (JSON lines as events happen)",
        description="Live transcription: '-' reads raw s16le mono PCM from stdin (16 kHz unless --sample-rate), "
        "e.g. `arecord -f S16_LE -r 16000 -c 1 | xlsr-edge stream BUNDLE -`; files are fed as fast as "
        'possible, or at real time with --realtime. Prints {"type": "partial"|"final", "text", "start", '
        '"end", "words"} per event (plus "audio" for files), flushed as it happens.',
    )
    p.add_argument("bundle", type=Path)
    p.add_argument("audio", nargs="+", help="'-' for raw PCM on stdin, or audio files")
    p.add_argument("--realtime", action="store_true", help="feed files at real time (as a microphone would)")
    p.add_argument(
        "--sample-rate",
        type=limits.sample_rate(),
        default=None,
        help="rate of the stdin PCM (default: 16000)",
    )
    add_stream_arguments(p)
    add_runtime_arguments(p)
    p.set_defaults(fn=_stream)
