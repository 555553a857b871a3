"""`xlsr-edge bench`: throughput, latency, load time, peak RSS and size of bundles (xlsr_edge.measure.bench)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xlsr_edge import limits
from xlsr_edge.commands.common import add_backend_argument, check_at_least_one, runner_options
from xlsr_edge.constants import EXIT_OK
from xlsr_edge.errors import XlsrEdgeError


def _list(kind: type, flag: str):
    def parse(text: str) -> list:
        try:  # kind: int, float or a xlsr_edge.limits type (whose range errors argparse prints as they are)
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} takes comma-separated {kind.__name__} values, e.g. {'5,10,30' if kind is float else '1,8'}"
            ) from None
        if not values:
            raise argparse.ArgumentTypeError(f"{flag} needs at least one value")
        return values

    return parse


def _from_cli() -> bool:
    """sys.argv is this command line (the console script or `python -m xlsr_edge bench`), not a test runner's."""
    return len(sys.argv) > 1 and sys.argv[1] == "bench"


def _bench(args: argparse.Namespace) -> int:
    from xlsr_edge.measure.bench import (
        BenchConfig,
        check_results_folder,
        plot_available,
        results_markdown,
        run_bench,
        write_results,
    )

    check_at_least_one("--threads", args.threads)
    if args.audio is not None and not args.audio.exists():
        raise XlsrEdgeError(f"--audio: no such folder or manifest: {args.audio}")
    config = BenchConfig(
        bundles=list(args.bundles),
        seconds=args.seconds,
        batch=args.batch,
        threads=args.threads,
        audio=args.audio,
        backend=args.backend,
        providers=args.providers,
        torch=args.torch,
        torch_bf16=args.torch_bf16,
        repeat=args.repeat,
        warmup=args.warmup,
        runner_options=runner_options(args),
    )
    check_results_folder(args.output)  # before the runs: never lose someone's files at the end
    no_plot = plot_available()  # before the runs too: a missing plotting library never costs the timings
    if no_plot:
        print(
            f"note: results.png will be skipped ({no_plot}); the figures are written all the same",
            file=sys.stderr,
        )
    results = run_bench(config, command=["xlsr-edge", *sys.argv[1:]] if _from_cli() else None)
    written = write_results(results, args.output)
    print(results_markdown(results))
    for p in written:
        print(f"wrote {p}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands."""
    p = sub.add_parser(
        "bench",
        help="throughput, latency, load time, peak RSS and size of bundles (and PyTorch as baseline)",
        description=(
            "Run the same audio through every bundle (and PyTorch eager from --torch CHECKPOINT, the baseline) "
            "in interleaved rounds, each engine in its own process; warm-up excluded. Writes results.json, "
            "results.md and results.png into -o DIR and prints the markdown table with the CPU's instruction "
            "sets (AVX512-VNNI, AVX512-BF16, AMX)."
        ),
    )
    p.add_argument("bundles", type=Path, nargs="+", metavar="BUNDLE")
    p.add_argument(
        "--audio", type=Path, default=None, help="folder or manifest to cut/loop (default: shipped clips)"
    )
    p.add_argument(
        "--seconds",
        type=_list(limits.positive_float(limits.MAX_CHUNK_SECONDS), "--seconds"),
        default=[5.0, 10.0, 30.0],
        help="e.g. 5,10,30",
    )
    p.add_argument(
        "--batch", type=_list(limits.int_in(1, limits.MAX_BATCH), "--batch"), default=[1, 8], help="e.g. 1,8"
    )
    p.add_argument("--threads", type=_list(limits.threads(), "--threads"), default=[1, 2], help="e.g. 1,2")
    add_backend_argument(p, openvino_flags=True, multiple=True)
    p.add_argument(
        "--providers", default="cpu", help="onnxruntime providers, comma-separated: cpu,cuda,tensorrt"
    )
    p.add_argument("--torch", type=Path, default=None, metavar="CHECKPOINT", help="PyTorch eager baseline")
    p.add_argument(
        "--torch-bf16",
        action="store_true",
        help="also PyTorch eager under torch.autocast('cpu', bfloat16) (needs --torch)",
    )
    p.add_argument("--repeat", type=limits.int_in(1, 10_000), default=5, help="timed rounds")
    p.add_argument(
        "--warmup",
        type=limits.int_in(0, 10_000),
        default=1,
        help="untimed calls per engine and configuration",
    )
    p.add_argument("-o", "--output", type=Path, default=Path("out/bench"), help="folder for the results")
    p.set_defaults(fn=_bench)
