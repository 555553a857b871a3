"""`xlsr-edge eval`: WER, CER, entity micro-WER and RTF of a bundle on a manifest (xlsr_edge.measure.evaluation)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from xlsr_edge import limits
from xlsr_edge.commands.common import (
    add_backend_argument,
    add_decoder_arguments,
    decoder_options,
    runner_options,
)
from xlsr_edge.commands.transcribe_dataset import add_cluster_arguments, cluster_recognizer
from xlsr_edge.constants import DEFAULT_BATCH_SIZE, EXIT_OK, EXIT_SOME_FAILED
from xlsr_edge.errors import XlsrEdgeError


def _eval(args: argparse.Namespace) -> int:
    from xlsr_edge.measure.evaluation import (
        EvalOptions,
        check_report_folder,
        evaluate,
        format_text,
        progress_wanted,
        read_entities_file,
        write_report,
    )

    if args.batch_size < 1:
        raise XlsrEdgeError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise XlsrEdgeError(f"--threads must be >= 1, got {args.threads}")
    options = EvalOptions(
        decoder=decoder_options(args),
        language=args.language,
        batch_size=args.batch_size,
        threads=args.threads,
        backend=args.backend,
        providers=args.providers,
        runner_options=runner_options(args),
        entities=read_entities_file(args.entities) if args.entities else (),
        worst=args.worst,
        progress=progress_wanted(),
        recognizer=cluster_recognizer(args),  # --address: transcribed on a Ray cluster, scored the same
    )
    if args.report:
        check_report_folder(args.report)  # before the evaluation: never lose someone's files at the end
    result = evaluate(args.bundle, args.manifest, options)
    written = write_report(result, args.report) if args.report else []
    if args.json:
        data = result.summary()
        if args.report:
            data["report"] = [str(p) for p in written]
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print(format_text(result))
        for p in written:
            print(f"wrote {p}")
    if result.has_failures:
        print(
            f"{len(result.missing)} utterances with missing audio and {len(result.failed)} that failed to "
            "decode were left out of the scores",
            file=sys.stderr,
        )
        return EXIT_SOME_FAILED
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands."""
    p = sub.add_parser(
        "eval",
        help="WER, CER, entity micro-WER and real-time factor of a bundle on a manifest",
        description=(
            "Transcribe every utterance of MANIFEST with BUNDLE and score it against the manifest's text "
            "(corpus-level WER/CER with jiwer after xlsr_edge.text.normalize_text). Missing audio and "
            "audio that fails to decode are listed and left out of the scores (exit code 1)."
        ),
    )
    p.add_argument("bundle", type=Path)
    p.add_argument("manifest", type=Path, help="NeMo JSONL, Common Voice TSV or CSV with reference text")
    add_decoder_arguments(p, hotwords=False)
    p.add_argument(
        "--entities",
        type=Path,
        default=None,
        help="entity list (one number/name per line) applied to every utterance that contains it; "
        "adds to the manifest's per-utterance 'entities'",
    )
    p.add_argument(
        "--language", default=None, help="language code for text normalization (tr/az: dotted/dotless i)"
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument(
        "--report", type=Path, default=None, help="write report.md and report.json (per utterance) here"
    )
    p.add_argument(
        "--worst", type=limits.int_in(0, 1_000_000), default=10, help="worst utterances listed in the report"
    )
    p.add_argument("--batch-size", type=limits.int_in(1, limits.MAX_BATCH), default=DEFAULT_BATCH_SIZE)
    p.add_argument("--threads", type=limits.threads(), default=None, help="onnxruntime intra-op threads")
    add_backend_argument(p, openvino_flags=True, trt_cache=True)
    p.add_argument(
        "--providers", default="cpu", help="onnxruntime providers, comma-separated: cpu,cuda,tensorrt"
    )
    add_cluster_arguments(p, workers=False, default_address=None)  # --workers: the Ray pool with --address
    p.set_defaults(fn=_eval)
