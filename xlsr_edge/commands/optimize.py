"""`xlsr-edge optimize`: measure precision x backend x hint on this machine under the accuracy gate, write ONE bundle
with the fastest candidate and its choice in bundle.json "runtime" (used by default by every runtime command)."""

from __future__ import annotations

import argparse
from pathlib import Path

from xlsr_edge import limits
from xlsr_edge.constants import EXIT_OK, PRECISION_GATE_SIZE
from xlsr_edge.precision.options import DEFAULT_CALIBRATION_SIZE

DESCRIPTION = (
    "Export every candidate (fp32, fp16 where the CPU has fp16 math, int8-dynamic, int8 Q/DQ, each with and without "
    "the FeatureEncoder group), run each on every installed backend (onnxruntime; OpenVINO with the precision "
    "hints this CPU computes natively) at --threads, gate each against fp32 on --dev, time each side by side "
    "with fp32, and write ONE bundle holding the fastest that passes; its bundle.json records the choice "
    '("runtime"), which transcribe, eval, stream, serve and transcribe-dataset use unless told otherwise.'
)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="fine-tuned *ForCTC checkpoint folder")
    p.add_argument("-o", "--output", type=Path, required=True, help="bundle folder to write")
    p.add_argument(
        "--dev",
        type=Path,
        required=True,
        metavar="MANIFEST",
        help="transcribed speech of the model's language (NeMo JSONL, Common Voice TSV, CSV, or a folder of "
        "audio: then frame agreement): every candidate's accuracy gate",
    )
    p.add_argument(
        "--max-cer-delta",
        type=limits.float_in(-100.0, 100.0),
        default=0.3,
        metavar="PTS",
        help="CER points a candidate may add over the fp32 graph on --dev (default 0.3)",
    )
    p.add_argument(
        "--threads",
        type=limits.threads(),
        default=None,
        help="threads the candidates are timed with, and the bundle runs with (default: this machine's CPUs)",
    )
    p.add_argument(
        "--seconds",
        type=limits.float_in(0.1, 600.0),
        default=10.0,
        help="audio per timed call, batch 1 (default 10)",
    )
    p.add_argument(
        "--budget-minutes",
        type=limits.positive_float(7 * 24 * 60.0),
        default=None,
        metavar="M",
        help="stop starting new candidates after M minutes (exports included); the rest are listed as not measured",
    )
    p.add_argument("--repeat", type=limits.int_in(1, 1000), default=3, help="timed rounds per candidate")
    p.add_argument(
        "--candidates",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="only these candidates or graph variants (shell patterns, e.g. 'int8*' 'fp32 @ openvino*'); "
        "fp32 on onnxruntime, the reference, always runs",
    )
    p.add_argument(
        "--backends",
        nargs="+",
        choices=["onnxruntime", "openvino"],
        default=None,
        help="default: onnxruntime and, when installed, openvino",
    )
    p.add_argument(
        "--calibration",
        type=Path,
        default=None,
        metavar="MANIFEST",
        help="int8 Q/DQ ranges (default: the shipped clips, as export)",
    )
    p.add_argument("--calibration-size", type=limits.int_in(1, 1_000_000), default=DEFAULT_CALIBRATION_SIZE)
    p.add_argument(
        "--gate-size",
        type=limits.int_in(1, 1_000_000),
        default=PRECISION_GATE_SIZE,
        metavar="N",
        help="utterances of --dev the gate decodes",
    )
    p.add_argument(
        "--keep-candidates",
        type=Path,
        default=None,
        metavar="DIR",
        help="also keep every converted candidate graph as a bundle DIR/<variant> (to bench them yourself)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    p.add_argument("--allow-pickle", action="store_true", help="accept pytorch_model.bin (runs pickle code)")
    p.add_argument("--seed", type=limits.seed(), default=0, help="calibration/gate utterance selection")
    p.set_defaults(fn=_optimize)


def _optimize(args: argparse.Namespace) -> int:
    from xlsr_edge.commands.export import require_export_extra

    require_export_extra()
    from xlsr_edge.optimize.pipeline import OptimizeOptions, optimize

    options = OptimizeOptions(
        dev=args.dev,
        max_cer_delta=args.max_cer_delta,
        threads=args.threads or limits.cpu_count(),
        seconds=args.seconds,
        budget_minutes=args.budget_minutes,
        repeat=args.repeat,
        calibration=args.calibration,
        calibration_size=args.calibration_size,
        gate_size=args.gate_size,
        seed=args.seed,
        candidates=tuple(args.candidates),
        backends=tuple(args.backends) if args.backends else None,
        keep_candidates=args.keep_candidates,
        overwrite=args.overwrite,
        allow_pickle=args.allow_pickle,
    )
    result = optimize(args.checkpoint, args.output, options)
    for line in result.table():
        print(line)
    rt = result.runtime
    hint = f" {rt['precision_hint']}" if rt.get("precision_hint") else ""
    print(
        f"wrote {result.bundle}: {result.choice.candidate.graph.name} on {rt['backend']}{hint}, {rt['threads']} "
        f'thread(s) (bundle.json "runtime": the default of transcribe, eval, stream, serve)'
    )
    for kept in result.kept:
        print(f"kept candidate bundle {kept}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add `xlsr-edge optimize`."""
    _add_arguments(
        sub.add_parser(
            "optimize",
            help="choose precision x backend x threads on this machine under the accuracy gate",
            description=DESCRIPTION,
        )
    )
