"""`xlsr-edge transcribe`: audio files, folders or manifests -> one line (or JSON line) per input.

Each result is written and flushed as soon as it is done, so a crash or a kill later on loses none of them.
An input that cannot be used (unreadable audio, a bad manifest line, a manifest that cannot be read) gets its
own error line in its place and the others are still transcribed (exit code 1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from xlsr_edge import limits
from xlsr_edge.commands.common import (
    add_backend_argument,
    add_decoder_arguments,
    backend_options,
    check_at_least_one,
    decoder_options,
)
from xlsr_edge.constants import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK_CONTEXT_SECONDS,
    DEFAULT_CHUNK_SECONDS,
    DEFAULT_MAX_SECONDS,
    EXIT_OK,
    EXIT_SOME_FAILED,
)
from xlsr_edge.errors import ManifestError, XlsrEdgeError

MANIFEST_SUFFIXES = (".json", ".jsonl", ".txt", ".lst", ".tsv", ".csv")

# (label, audio path or None, error or None): the label is the path exactly as the user (or the manifest)
# wrote it, so output joins back to manifests
Entry = tuple[str, Path | None, str | None]


def expand_inputs(specs: Sequence[str]) -> list[Entry]:
    """One entry per audio: a folder expands to its audio files, a manifest to its entries; a manifest line
    (or a whole manifest) that cannot be read becomes an entry with its error."""
    from xlsr_edge.constants import AUDIO_EXTENSIONS
    from xlsr_edge.datasets import BadLine, read_manifest_entries

    out: list[Entry] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            out += [
                (str(f), f, None)
                for f in sorted(p.rglob("*"))
                if f.suffix.lower() in AUDIO_EXTENSIONS and not f.is_dir()
            ]
        elif p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES:
            try:
                entries = read_manifest_entries(p)
            except ManifestError as exc:
                out.append((spec, None, str(exc)))
                continue
            for e in entries:
                if isinstance(e, BadLine):
                    out.append((e.where, None, e.error))
                else:
                    out.append((e.label, e.audio, None))
        else:
            out.append((spec, p, None))
    return out


def _write(line: str) -> None:
    """One line on stdout, flushed now. What the encoding cannot hold (a file name whose bytes are not UTF-8
    comes as surrogates) is written as backslash escapes (\\udce9), whatever error handler stdout has."""
    encoding = sys.stdout.encoding or "utf-8"
    try:
        line.encode(encoding)
    except UnicodeEncodeError:
        line = line.encode(encoding, "backslashreplace").decode(encoding)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _json_line(data: dict) -> str:
    line = json.dumps(data, ensure_ascii=False)
    try:
        line.encode(sys.stdout.encoding or "utf-8")
    except UnicodeEncodeError:
        # \uXXXX escapes: still JSON, and json.loads + os.fsencode give back the name's bytes
        line = json.dumps(data)
    return line


def _one_line(text: str) -> str:
    """Line breaks and tabs in a file name would break the one-line-per-input text format."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def _transcribe(args: argparse.Namespace) -> int:
    from xlsr_edge.runtime import Recognizer, TranscribeOptions, Transcript

    check_at_least_one("--threads", args.threads)
    check_at_least_one("--batch-size", args.batch_size)
    if args.max_seconds < 0:
        raise XlsrEdgeError(f"--max-seconds must be >= 0 (0: no limit), got {args.max_seconds:g}")
    options = TranscribeOptions(
        batch_size=args.batch_size,
        chunk_seconds=args.chunk_seconds if args.chunk_seconds > 0 else None,
        context_seconds=args.context_seconds,
        max_seconds=args.max_seconds or None,
    )
    backend = backend_options(args)
    decoder = decoder_options(args)
    entries = expand_inputs(args.audio)
    if not entries:
        raise XlsrEdgeError("no audio files found in the given inputs")
    failed = 0
    with (
        Recognizer.from_bundle(
            args.bundle,
            backend_options=backend,
            decoder=decoder,
            language=args.language,
            lid_threshold=args.lid_threshold,
            below_threshold=args.below_threshold,
        ) as rec,
        contextlib.closing(
            rec.transcribe_iter(
                [p for _, p, error in entries if error is None],
                options,
                progress=len(entries) > 1 and sys.stderr.isatty(),
            )
        ) as results,
    ):
        for label, _, error in entries:  # results come in input order, as each finishes
            t = Transcript(audio=label, error=error) if error is not None else next(results)
            t.audio = label
            if t.error:
                failed += 1
            if args.json:
                _write(_json_line(t.to_json()))
            elif t.error:
                _write(f"{_one_line(label)}\terror: {_one_line(t.error)}")
            else:
                _write(f"{_one_line(label)}\t{t.text}")
    if failed:
        print(f"{failed} of {len(entries)} inputs failed", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommand."""
    p = sub.add_parser("transcribe", help="transcribe audio files, folders or manifests")
    p.add_argument("bundle", type=Path)
    p.add_argument(
        "audio",
        nargs="+",
        help="audio files, folders, or manifests (NeMo JSONL, Common Voice TSV, CSV, one path per line)",
    )
    add_backend_argument(p, openvino_flags=True, trt_cache=True)
    p.add_argument(
        "--providers", default="cpu", help="onnxruntime providers, comma-separated: cpu,cuda,tensorrt"
    )
    p.add_argument("--threads", type=limits.threads(), default=None, help="onnxruntime intra-op threads")
    add_decoder_arguments(p, hotwords=True)
    p.add_argument("--batch-size", type=limits.int_in(1, limits.MAX_BATCH), default=DEFAULT_BATCH_SIZE)
    p.add_argument(
        "--chunk-seconds",
        type=limits.chunk_seconds(),
        default=DEFAULT_CHUNK_SECONDS,
        help="0 disables chunking",
    )
    p.add_argument("--context-seconds", type=limits.context_seconds(), default=DEFAULT_CHUNK_CONTEXT_SECONDS)
    p.add_argument(
        "--max-seconds",
        type=limits.nonneg_float(limits.MAX_SECONDS),
        default=DEFAULT_MAX_SECONDS,
        help="longer inputs get an error line (long files are streamed, so memory does not grow with length); "
        "0: no limit",
    )
    p.add_argument("--json", action="store_true", help="JSON lines with words and timestamps")
    p.add_argument("--language", default=None, help="multi-language bundles: use this head, skip language ID")
    p.add_argument(
        "--lid-threshold",
        type=limits.float_in(0.0, 1.0),
        default=None,
        metavar="P",
        help="multi-language bundles: the language-ID confidence below which --below-threshold applies "
        "(default: the threshold bundle.json records)",
    )
    p.add_argument(
        "--below-threshold",
        choices=["all", "unknown"],
        default=None,
        help="multi-language bundles: below the threshold run all heads, or answer 'unknown'",
    )
    p.set_defaults(fn=_transcribe)
