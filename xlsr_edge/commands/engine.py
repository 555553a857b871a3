"""`xlsr-edge build-engine`: build a TensorRT engine from an existing bundle on the target device (Jetson flow)."""

from __future__ import annotations

import argparse
from pathlib import Path

from xlsr_edge import limits
from xlsr_edge.constants import EXIT_OK


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """Profile and builder options, shared by `export-xlsr --engine trt` and `xlsr-edge build-engine`."""
    g = p.add_argument_group("TensorRT engine")
    seconds = limits.positive_float(limits.MAX_CHUNK_SECONDS)
    g.add_argument("--min-seconds", type=seconds, default=0.025, help="shortest input of the profile")
    g.add_argument("--opt-seconds", type=seconds, default=10.0, help="input length TensorRT tunes for")
    g.add_argument("--max-seconds", type=seconds, default=30.0, help="longest input; longer audio is chunked")
    g.add_argument(
        "--opt-batch",
        type=limits.int_in(1, limits.MAX_BATCH),
        default=None,
        help="batch TensorRT tunes for (default: max batch)",
    )
    g.add_argument(
        "--workspace-mb",
        type=limits.int_in(16, 1 << 24),
        default=None,
        help="builder workspace cap (e.g. 1024 on 8 GB Orin)",
    )
    g.add_argument("--timing-cache", type=Path, default=None, help="reuse/update this timing cache file")
    g.add_argument(
        "--builder-optimization-level",
        type=limits.int_in(0, 5),
        default=None,
        help="0..5 (TensorRT default 3)",
    )


def build_options(args: argparse.Namespace, max_batch: int | None):
    from xlsr_edge.runtime.tensorrt import BuildOptions, EngineProfile

    return BuildOptions(
        profile=EngineProfile(
            min_seconds=args.min_seconds,
            opt_seconds=args.opt_seconds,
            max_seconds=args.max_seconds,
            max_batch=max_batch or 8,
            opt_batch=args.opt_batch,
        ),
        workspace_mb=args.workspace_mb,
        timing_cache=args.timing_cache,
        builder_optimization_level=args.builder_optimization_level,
    )


def _build_engine(args: argparse.Namespace) -> int:
    from xlsr_edge.bundle import load_bundle
    from xlsr_edge.runtime.tensorrt import build_engine, current_device, describe

    options = build_options(args, args.max_batch)  # validate options before anything else
    device = current_device()  # fails at once, writes nothing, when TensorRT/GPU are missing
    load_bundle(args.bundle)  # verify hashes before building from the graph
    sidecar = build_engine(args.bundle, options, device)
    print(f"wrote {args.bundle / sidecar['file']}: {describe(sidecar)} in {sidecar['build_seconds']} s")
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-engine", help="build a TensorRT engine for this GPU from a bundle's ONNX")
    p.add_argument("bundle", type=Path)
    p.add_argument("--max-batch", type=limits.int_in(1, limits.MAX_BATCH), default=8)
    add_engine_arguments(p)
    p.set_defaults(fn=_build_engine)
