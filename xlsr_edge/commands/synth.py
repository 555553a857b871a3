"""`xlsr-edge synth`: an espeak-ng speech corpus with NeMo manifests (xlsr_edge.train.synth)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xlsr_edge import limits
from xlsr_edge.constants import EXIT_OK
from xlsr_edge.errors import XlsrEdgeError


def _synth(args: argparse.Namespace) -> int:
    from xlsr_edge.train.synth import SynthOptions, build_corpus

    voices: list[str] = []
    for v in args.voices or ():
        voices += [x for x in v.replace(",", " ").split() if x]
    shares = {"dev_share": args.dev_share, "test_share": args.test_share}
    if args.sentences is not None:
        given = [f"--{k.replace('_', '-')}" for k, v in shares.items() if v is not None]
        if given:
            verb = "does" if len(given) == 1 else "do"
            raise XlsrEdgeError(
                f"{', '.join(given)} {verb} not apply to --sentences: every sentence goes to sentences.jsonl, "
                "in file order (split the sentence file itself)"
            )
    elif args.repeat != 1:
        raise XlsrEdgeError("--repeat applies to --sentences only")
    options = SynthOptions(
        language=args.language,
        hours=args.hours,
        out=args.output,
        voices=tuple(voices),
        seed=args.seed,
        jobs=args.jobs,
        holdout_voice=args.holdout_voice,
        **{k: v for k, v in shares.items() if v is not None},
        top_words=args.top_words,
        freq_power=args.freq_power,
        overwrite=args.overwrite,
        progress=sys.stderr.isatty(),
        sentences=args.sentences,
        repeat=args.repeat,
    )
    report = build_corpus(options)
    for line in report.fitted:
        print(f"synth: {line}", file=sys.stderr)
    if report.dropped:
        examples = "; ".join(report.dropped[:3])
        print(
            f"synth: left out {len(report.dropped)} sentences with words the {args.language} alphabet cannot "
            f"spell (digits, foreign letters): {examples}" + (" ..." if len(report.dropped) > 3 else ""),
            file=sys.stderr,
        )
    parts = ", ".join(f"{s} {report.counts[s]} ({report.seconds[s] / 60:.1f} min)" for s in report.counts)
    print(f"wrote {report.out}: {parts}; words from {report.word_source}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommand."""
    p = sub.add_parser("synth", help="synthesize an espeak-ng speech corpus with NeMo manifests")
    p.add_argument("--language", required=True, help="language code (espeak-ng voice and wordfreq), e.g. tr")
    p.add_argument(
        "--hours",
        type=limits.positive_float(100_000.0),
        default=None,
        help="audio in train+dev+test (required without --sentences)",
    )
    p.add_argument(
        "--sentences",
        type=Path,
        default=None,
        help="speak the lines of this text file (natural sentences) instead of drawn words, into "
        "sentences.jsonl; --hours then caps the audio",
    )
    p.add_argument(
        "--repeat",
        type=limits.int_in(1, 1000),
        default=1,
        help="--sentences: speak each sentence N times (other voices)",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="corpus folder to write")
    p.add_argument(
        "--voices",
        action="append",
        help="espeak-ng voices (comma/space separated; default LANG, LANG+m1 .. +f4)",
    )
    p.add_argument(
        "--holdout-voice", default=None, help="voice kept out of train/dev/test, for test_voice.jsonl"
    )
    p.add_argument("--seed", type=limits.seed(), default=0)
    p.add_argument("--jobs", type=limits.threads(), default=1, help="parallel espeak-ng processes")
    share = limits.float_in(0.0, 1.0, hi_open=True)
    p.add_argument("--dev-share", type=share, default=None, help="default 0.05")
    p.add_argument("--test-share", type=share, default=None, help="default 0.05")
    p.add_argument(
        "--top-words",
        type=limits.int_in(1, 10**8),
        default=20000,
        help="draw from this many most frequent words",
    )
    p.add_argument(
        "--freq-power",
        type=limits.float_in(0.0, 10.0),
        default=1.0,
        help="draw words by frequency**P (1: real frequencies, <1 flatter)",
    )
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(fn=_synth)
