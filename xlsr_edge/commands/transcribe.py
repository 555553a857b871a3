"""`xlsr-edge transcribe`: audio files, folders or manifests -> one line (or JSON line) per input."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from xlsr_edge.commands.common import add_decoder_arguments, decoder_options
from xlsr_edge.constants import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK_CONTEXT_SECONDS,
    DEFAULT_CHUNK_SECONDS,
    EXIT_OK,
    EXIT_SOME_FAILED,
)
from xlsr_edge.errors import XlsrEdgeError

MANIFEST_SUFFIXES = (".json", ".jsonl", ".txt", ".lst", ".tsv", ".csv")


def expand_inputs(specs: Sequence[str]) -> list[tuple[str, Path]]:
    """(label, path) per audio: a folder expands to its audio files, a manifest to its entries.

    The label is the path exactly as the user (or the manifest) wrote it, so output joins back to manifests.
    """
    from xlsr_edge.constants import AUDIO_EXTENSIONS
    from xlsr_edge.datasets import read_manifest

    out: list[tuple[str, Path]] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            out += [(str(f), f) for f in sorted(p.rglob("*")) if f.suffix.lower() in AUDIO_EXTENSIONS]
        elif p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES:
            out += [(u.raw_path or str(u.audio), u.audio) for u in read_manifest(p, check_audio=False)]
        else:
            out.append((spec, p))
    return out


def _transcribe(args: argparse.Namespace) -> int:
    from xlsr_edge.runtime import Recognizer, TranscribeOptions

    options = TranscribeOptions(
        batch_size=args.batch_size,
        chunk_seconds=args.chunk_seconds if args.chunk_seconds > 0 else None,
        context_seconds=args.context_seconds,
    )
    inputs = expand_inputs(args.audio)
    if not inputs:
        raise XlsrEdgeError("no audio files found in the given inputs")
    with Recognizer.from_bundle(
        args.bundle,
        backend=args.backend,
        providers=args.providers if args.backend == "onnxruntime" else None,
        threads=args.threads,
        decoder=decoder_options(args),
        language=args.language,
        lid_threshold=args.lid_threshold,
        below_threshold=args.below_threshold,
    ) as rec:
        results = rec.transcribe(
            [p for _, p in inputs], options, progress=len(inputs) > 1 and sys.stderr.isatty()
        )
    failed = 0
    for (label, _), t in zip(inputs, results):
        t.audio = label
        if t.error:
            failed += 1
        if args.json:
            print(json.dumps(t.to_json(), ensure_ascii=False))
        elif t.error:
            print(f"{label}\terror: {t.error}")
        else:
            print(f"{label}\t{t.text}")
    if failed:
        print(f"{failed} of {len(results)} inputs failed", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommand."""
    p = sub.add_parser("transcribe", help="transcribe audio files, folders or manifests")
    p.add_argument("bundle", type=Path)
    p.add_argument(
        "audio", nargs="+", help="audio files, folders, or manifests (NeMo JSONL, one path per line)"
    )
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument(
        "--providers", default="cpu", help="onnxruntime providers, comma-separated: cpu,cuda,tensorrt"
    )
    p.add_argument("--threads", type=int, default=None)
    add_decoder_arguments(p, hotwords=True)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--chunk-seconds", type=float, default=DEFAULT_CHUNK_SECONDS, help="0 disables chunking")
    p.add_argument("--context-seconds", type=float, default=DEFAULT_CHUNK_CONTEXT_SECONDS)
    p.add_argument("--json", action="store_true", help="JSON lines with words and timestamps")
    p.add_argument("--language", default=None, help="multi-language bundles: use this head, skip language ID")
    p.add_argument(
        "--lid-threshold", type=float, default=None, help="multi-language bundles: override the bundle's"
    )
    p.add_argument(
        "--below-threshold",
        choices=["all", "unknown"],
        default=None,
        help="multi-language bundles: below the threshold run all heads, or answer 'unknown'",
    )
    p.set_defaults(fn=_transcribe)
