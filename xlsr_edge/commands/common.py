"""Flags shared by several subcommands (decoder choice for transcribe and eval)."""

from __future__ import annotations

import argparse
from pathlib import Path

from xlsr_edge.errors import XlsrEdgeError


def add_decoder_arguments(p: argparse.ArgumentParser, *, hotwords: bool) -> None:
    """--decoder, --lm, beam settings (and --hotword for commands that take them)."""
    p.add_argument("--decoder", choices=["greedy", "beam"], default="greedy")
    p.add_argument("--lm", type=Path, default=None, help="KenLM model (.arpa or .bin), beam decoder only")
    if hotwords:
        p.add_argument("--hotword", action="append", help="boost this word (repeatable), beam decoder only")
        p.add_argument("--hotword-weight", type=float, default=10.0)
    p.add_argument("--beam-width", type=int, default=100)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--beta", type=float, default=1.5)
    p.add_argument("--workers", type=int, default=0, help="beam decoding processes")


def decoder_options(args: argparse.Namespace):
    from xlsr_edge.decoders import BeamOptions, GreedyOptions

    hotwords = tuple(getattr(args, "hotword", None) or ())  # eval has no hotword options
    if args.decoder == "greedy":
        if args.lm or hotwords:
            raise XlsrEdgeError("--lm and --hotword need --decoder beam")
        return GreedyOptions()
    return BeamOptions(
        beam_width=args.beam_width,
        alpha=args.alpha,
        beta=args.beta,
        lm_path=str(args.lm) if args.lm else None,
        hotwords=hotwords,
        hotword_weight=getattr(args, "hotword_weight", 10.0),
        num_workers=args.workers,
    )
