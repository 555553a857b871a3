"""Flags shared by several subcommands: decoder choice (transcribe, eval), backend (transcribe, eval, bench)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from xlsr_edge.errors import XlsrEdgeError

BACKENDS = ("onnxruntime", "tensorrt")
BACKEND_ALIASES = {"ort": "onnxruntime", "trt": "tensorrt"}


def backend_name(text: str) -> str:
    """--backend value: a backend's name or its short alias (trt = tensorrt)."""
    name = text.strip().lower()
    return BACKEND_ALIASES.get(name, name)


def add_backend_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend", type=backend_name, choices=BACKENDS, default="onnxruntime", help="aliases: ort, trt"
    )


def check_at_least_one(flag: str, value: int | Iterable[int] | None) -> None:
    """Counts such as --threads and --batch-size: one `error:` line (exit 2) before anything is loaded."""
    values = [value] if value is None or isinstance(value, int) else list(value)
    for v in values:
        if v is not None and v < 1:
            raise XlsrEdgeError(f"{flag} must be >= 1, got {v}")


def add_decoder_arguments(p: argparse.ArgumentParser, *, hotwords: bool) -> None:
    """--decoder, --lm, beam settings (and --hotword for commands that take them)."""
    p.add_argument(
        "--decoder",
        choices=["greedy", "beam"],
        default=None,
        help="default: beam when --lm" + (" or --hotword" if hotwords else "") + " is given, else greedy",
    )
    p.add_argument(
        "--lm", type=Path, default=None, help="KenLM model (.arpa or .bin), implies --decoder beam"
    )
    if hotwords:
        p.add_argument(
            "--hotword", action="append", help="boost this word (repeatable), implies --decoder beam"
        )
        p.add_argument("--hotword-weight", type=float, default=10.0)
    p.add_argument("--beam-width", type=int, default=100)
    tuned = "default: the LM's tuned value (`lm tune`, LM.tuned.json) if present, else pyctcdecode's "
    p.add_argument("--alpha", type=float, default=None, help="LM weight; " + tuned + "0.5")
    p.add_argument("--beta", type=float, default=None, help="word insertion bonus; " + tuned + "1.5")
    p.add_argument(
        "--unk-offset", type=float, default=None, help="score of a word the LM lacks (<= 0); " + tuned + "-10"
    )
    p.add_argument("--workers", type=int, default=0, help="beam decoding processes")


def decoder_options(args: argparse.Namespace):
    from xlsr_edge.decoders import BeamOptions, GreedyOptions

    hotwords = tuple(getattr(args, "hotword", None) or ())  # eval has no hotword options
    # an LM or hotwords only mean something to the beam decoder: asking for them asks for it
    decoder = args.decoder or ("beam" if args.lm or hotwords else "greedy")
    if decoder == "greedy":
        if args.lm or hotwords:
            raise XlsrEdgeError(
                "--lm and --hotword need --decoder beam (leave --decoder out: they select it)"
            )
        return GreedyOptions()
    return BeamOptions(
        beam_width=args.beam_width,
        alpha=args.alpha,
        beta=args.beta,
        unk_score_offset=getattr(args, "unk_offset", None),
        lm_path=str(args.lm) if args.lm else None,
        hotwords=hotwords,
        hotword_weight=getattr(args, "hotword_weight", 10.0),
        num_workers=args.workers,
    )
