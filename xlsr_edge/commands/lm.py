"""`xlsr-edge lm ...`: KenLM n-gram language models for the beam decoder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xlsr_edge.constants import EXIT_OK


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _lm_build(args: argparse.Namespace) -> int:
    from xlsr_edge.decoders.lm import build_lm

    out = build_lm(
        args.text, args.output, order=args.order, language=args.language, normalize=not args.raw, log=_log
    )
    print(f"wrote {out}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add `lm` and its own subcommands."""
    lm = sub.add_parser("lm", help="language models").add_subparsers(dest="lm_command", required=True)
    p = lm.add_parser("build", help="build a KenLM n-gram model with lmplz/build_binary")
    p.add_argument("text", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="LM.arpa or LM.bin")
    p.add_argument("--order", type=int, default=3, help="n-gram order, 2 to 6 (KenLM's limits)")
    p.add_argument(
        "--language",
        default=None,
        help="normalize like the recipe for this language (tr/az: İ/I lower-casing)",
    )
    p.add_argument(
        "--raw",
        action="store_true",
        help="keep the corpus text as it is (no lower-casing or punctuation removal)",
    )
    p.set_defaults(fn=_lm_build)
