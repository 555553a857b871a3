"""Flags shared by several subcommands: decoder choice (transcribe, eval), backend (transcribe, eval, bench)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from xlsr_edge import limits
from xlsr_edge.constants import MAX_STATIC_SHAPES
from xlsr_edge.errors import XlsrEdgeError

BACKENDS = ("onnxruntime", "tensorrt", "openvino")
BACKEND_ALIASES = {"ort": "onnxruntime", "trt": "tensorrt", "ov": "openvino"}
# OpenVINO's inference precision for what is not int8 (xlsr_edge.runtime.openvino.PRECISION_HINTS)
PRECISION_HINTS = ("auto", "bf16", "f32", "f16")


def backend_name(text: str) -> str:
    """--backend value: a backend's name or its short alias (trt = tensorrt, ov = openvino)."""
    name = text.strip().lower()
    return BACKEND_ALIASES.get(name, name)


def backend_list(text: str) -> list[str]:
    """bench's --backend: comma-separated backends (every bundle runs on each)."""
    names = list(dict.fromkeys(backend_name(t) for t in text.split(",") if t.strip()))
    bad = [n for n in names if n not in BACKENDS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"invalid choice {', '.join(bad) or repr(text)} (choose from {', '.join(BACKENDS)}, comma-separated)"
        )
    return names


def add_backend_argument(
    p: argparse.ArgumentParser,
    *,
    openvino_flags: bool = False,
    multiple: bool = False,
    trt_cache: bool = False,
) -> None:
    """--backend (with openvino_flags: --precision-hint, --cache-dir; with trt_cache: --trt-cache-dir); read them
    with backend_options (one backend) or runner_options."""
    if multiple:
        p.add_argument(
            "--backend",
            type=backend_list,
            default=None,
            help=f"comma-separated, each bundle runs on each: {', '.join(BACKENDS)} (aliases: ort, trt, ov); "
            "default: each bundle on the runtime it records (`xlsr-edge optimize`), else onnxruntime",
        )
    else:
        p.add_argument(
            "--backend",
            type=backend_name,
            choices=BACKENDS,
            default=None,
            help="default: the runtime the bundle records (`xlsr-edge optimize`: backend, threads, precision hint), "
            "else onnxruntime; aliases: ort, trt, ov",
        )
    if openvino_flags:
        p.add_argument(
            "--precision-hint",
            choices=PRECISION_HINTS,
            default=None,
            help="openvino: precision of what is not int8; auto (default) = bf16 where the CPU has AMX-BF16 or "
            "AVX512-BF16, else f32",
        )
        p.add_argument(
            "--cache-dir",
            default=None,
            help="openvino: compiled-model cache (default ~/.cache/xlsr-edge/openvino; 'none' turns it off)",
        )
        p.add_argument(
            "--static-shapes",
            type=limits.int_in(0, MAX_STATIC_SHAPES),
            default=None,
            metavar="N",
            help="openvino: compile up to N input shapes that repeat (long-file windows, fixed-size batches) for "
            "that shape alone: faster per call, each costs a compile and a copy of the weights (default: 0)",
        )
    if trt_cache:
        p.add_argument(
            "--trt-cache-dir",
            type=Path,
            default=None,
            metavar="DIR",
            help="onnxruntime's TensorRT provider (--providers tensorrt): keep the engines it builds in DIR, so "
            "only the first start on a GPU builds them (default: built at every start)",
        )


def runner_options(args: argparse.Namespace) -> dict:
    """Backend-specific keywords for Recognizer.from_bundle (BackendOptions.from_keywords); refuses OpenVINO flags
    with another backend (no --backend: the bundle decides, and BackendOptions.resolve checks them then)."""
    hint, cache = getattr(args, "precision_hint", None), getattr(args, "cache_dir", None)
    static = getattr(args, "static_shapes", None)
    # [None]: no --backend, the bundle decides
    backends = args.backend if isinstance(args.backend, list) else [args.backend]
    out: dict = {}
    if getattr(args, "trt_cache_dir", None) is not None:  # checked against the backend by BackendOptions
        out["trt_cache_dir"] = args.trt_cache_dir
    if "openvino" not in backends and None not in backends:
        if hint is not None or cache is not None or static is not None:
            from xlsr_edge.runtime.openvino import OPENVINO_FLAGS_ONLY

            raise XlsrEdgeError(OPENVINO_FLAGS_ONLY)
        return out
    if hint is not None:
        out["precision_hint"] = hint
    if static is not None:
        out["static_shapes"] = static
    if cache is not None:
        out["cache_dir"] = None if cache.strip().lower() in ("", "none", "off") else Path(cache)
    return out


def backend_options(args: argparse.Namespace):
    """The typed runner settings (xlsr_edge.runtime.BackendOptions) of --backend, --providers, --threads and the
    engine flags, checked once, before anything is loaded. --providers (default cpu) only concerns onnxruntime."""
    from xlsr_edge.runtime.backend_options import BackendOptions

    return BackendOptions.from_keywords(
        args.backend,
        providers=getattr(args, "providers", None),
        threads=getattr(args, "threads", None),
        ignore_unused=("providers",),
        **runner_options(args),
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
        p.add_argument("--hotword-weight", type=limits.float_in(-1000.0, 1000.0), default=10.0)
    p.add_argument("--beam-width", type=limits.int_in(1, limits.MAX_BEAM_WIDTH), default=100)
    tuned = "default: the LM's tuned value (`lm tune`, LM.tuned.json) if present, else pyctcdecode's "
    weight = limits.finite()  # ranges: BeamOptions
    p.add_argument("--alpha", type=weight, default=None, help="LM weight; " + tuned + "0.5")
    p.add_argument("--beta", type=weight, default=None, help="word insertion bonus; " + tuned + "1.5")
    p.add_argument(
        "--unk-offset",
        type=weight,
        default=None,
        help="score of a word the LM lacks (<= 0); " + tuned + "-10",
    )
    p.add_argument("--workers", type=limits.workers(), default=0, help="beam decoding processes")


def decoder_options(args: argparse.Namespace):
    from xlsr_edge.decoders import BeamOptions, GreedyOptions
    from xlsr_edge.lm.weights import with_tuned_weights

    hotwords = tuple(getattr(args, "hotword", None) or ())  # eval has no hotword options
    # an LM or hotwords only mean something to the beam decoder: asking for them asks for it
    decoder = args.decoder or ("beam" if args.lm or hotwords else "greedy")
    if decoder == "greedy":
        if args.lm or hotwords:
            raise XlsrEdgeError(
                "--lm and --hotword need --decoder beam (leave --decoder out: they select it)"
            )
        return GreedyOptions()
    options = BeamOptions(
        beam_width=args.beam_width,
        alpha=args.alpha,
        beta=args.beta,
        unk_score_offset=getattr(args, "unk_offset", None),
        lm_path=str(args.lm) if args.lm else None,
        hotwords=hotwords,
        hotword_weight=getattr(args, "hotword_weight", 10.0),
        num_workers=args.workers,
    )
    return with_tuned_weights(options)  # the LM's tuned sidecar, read once here (Ray workers get the weights)
