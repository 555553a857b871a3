"""`xlsr-edge transcribe-dataset`: a corpus on a Ray cluster -> Parquet/JSONL shards (xlsr_edge.scale).

Also the Ray flags `eval --address` shares (`add_cluster_arguments`, `cluster_recognizer`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from xlsr_edge import limits
from xlsr_edge.commands.common import add_backend_argument, add_decoder_arguments, decoder_options
from xlsr_edge.constants import DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_CONTEXT_SECONDS, DEFAULT_CHUNK_SECONDS
from xlsr_edge.errors import XlsrEdgeError

FORMATS = ("parquet", "jsonl")  # xlsr_edge.scale.output.FORMATS (not imported: --help stays light)


def add_cluster_arguments(
    p: argparse.ArgumentParser, *, workers: bool = True, default_address: str | None = "local"
):
    """--address and the worker pool. `workers=False`: the command has --workers already (eval: beam decoding
    processes locally, the pool size with --address)."""
    p.add_argument(
        "--address",
        default=default_address,
        help="local: a Ray cluster in this process, on 127.0.0.1 only"
        + (" (default)" if default_address == "local" else "")
        + "; auto: the cluster `ray start` runs on this machine; HOST:PORT or ray://HOST:10001: a remote one"
        + (
            ""
            if workers
            else ". With --address, --workers is the number of Ray workers (default: as many as fit)"
        ),
    )
    if workers:
        p.add_argument(
            "--workers",
            type=limits.int_in(1, limits.MAX_CLUSTER_WORKERS),
            default=None,
            help="Ray workers, each holding one model (default: as many as fit)",
        )
    p.add_argument(
        "--cpus-per-worker",
        type=limits.positive_float(1024.0),
        default=1.0,
        help="CPUs per worker = its onnxruntime threads",
    )
    p.add_argument(
        "--gpus-per-worker",
        type=limits.nonneg_float(64.0),
        default=0.0,
        help="GPUs per worker (then --providers cuda)",
    )
    p.add_argument(
        "--ship-bundle",
        action="store_true",
        help="send the bundle through Ray's object store instead of reading it at the same path on every node",
    )
    p.add_argument(
        "--ray-temp-dir", default=None, help="--address local: Ray's session folder (default /tmp/ray)"
    )


def _cluster(args: argparse.Namespace, workers: int | None):
    from xlsr_edge.progress import to_stderr
    from xlsr_edge.scale import ClusterOptions, PoolOptions

    cluster = ClusterOptions(address=args.address, temp_dir=args.ray_temp_dir, log=to_stderr)
    pool = PoolOptions(
        workers=workers, cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker
    )
    return cluster, pool


def _providers(args: argparse.Namespace) -> str:
    return args.providers or ("cuda" if args.gpus_per_worker > 0 else "cpu")


def cluster_recognizer(args: argparse.Namespace):
    """eval --address: a factory for EvalOptions.recognizer (None without --address: the local Recognizer)."""
    if not args.address:
        for flag, value, default in (
            ("--cpus-per-worker", args.cpus_per_worker, 1.0),
            ("--gpus-per-worker", args.gpus_per_worker, 0.0),
            ("--ship-bundle", args.ship_bundle, False),
            ("--ray-temp-dir", args.ray_temp_dir, None),
        ):
            if value != default:
                raise XlsrEdgeError(f"{flag} needs --address (local, auto, HOST:PORT or ray://HOST:10001)")
        return None
    from xlsr_edge.scale import RayRecognizer

    cluster, pool = _cluster(args, args.workers or None)
    return RayRecognizer.factory(cluster=cluster, pool=pool, ship_bundle=args.ship_bundle)


def _transcribe_dataset(args: argparse.Namespace) -> int:
    from xlsr_edge.scale import JobOptions, transcribe_dataset

    if args.chunk_seconds < 0 or args.context_seconds < 0:
        raise XlsrEdgeError("--chunk-seconds and --context-seconds must be >= 0")
    # --workers is the Ray pool here; beam decoding runs inside each worker
    decoder = decoder_options(argparse.Namespace(**{**vars(args), "workers": 0}))
    cluster, pool = _cluster(args, args.workers)
    options = JobOptions(
        format=args.format,
        resume=args.resume,
        ship_bundle=args.ship_bundle,
        backend=args.backend,
        providers=_providers(args),
        decoder=decoder,
        language=args.language,
        batch_size=args.batch_size,
        chunk_seconds=args.chunk_seconds if args.chunk_seconds > 0 else None,
        context_seconds=args.context_seconds,
        task_size=args.task_size,
        shard_rows=args.shard_rows,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    result = transcribe_dataset(args.bundle, args.manifest, args.output, options, cluster, pool)
    s = result.summary
    if args.json:
        print(json.dumps(s, indent=2, ensure_ascii=False))
    else:
        run = s["run"]
        rate = run["audio_hours_per_hour"]
        print(
            f"{s['inputs']} inputs: {s['transcribed']} transcribed, {s['failed']} failed, "
            f"{s['audio_hours']:.3f} audio hours in {s['shards']} {s['format']} shards\n"
            f"this run: {run['written']} rows ({run['skipped_already_written']} already written) in "
            f"{run['wall_seconds']:.1f} s" + (f", {rate:.1f} audio hours per hour" if rate else "")
        )
        print(f"wrote {result.out_dir / '_summary.json'}")
    if result.failed:
        first = s["failures"][0] if s["failures"] else {}
        audio, error = str(first.get("audio")), str(first.get("error"))
        # audio errors start with the file's path already: name it once
        detail = error if error.startswith(audio) else f"{audio}: {error}"
        print(f"{result.failed} inputs failed (error rows; first: {detail})", file=sys.stderr)
    return result.exit_code


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommand."""
    p = sub.add_parser(
        "transcribe-dataset",
        help="transcribe a corpus on a Ray cluster into Parquet/JSONL shards (resumable, exactly once)",
        description=(
            "Transcribe every utterance of the manifests (NeMo JSONL, Common Voice TSV, CSV, lists, folders) on "
            "a pool of Ray workers, each holding one model, into shards with one row per input (audio, text, "
            "words, duration, error, bundle sha256) and a _summary.json. Bad audio is an error row (exit 1). "
            "Needs the ray extra: pip install 'xlsr-edge[ray]'."
        ),
        conflict_handler="resolve",  # our --workers (the pool) replaces the beam decoder's
    )
    p.add_argument("bundle", type=Path)
    p.add_argument("manifest", nargs="+", help="manifests, folders of audio, or audio files")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder (new, empty, or --resume)")
    p.add_argument("--format", choices=FORMATS, default="parquet")
    p.add_argument(
        "--resume", action="store_true", help="continue OUT_DIR: write only the inputs it lacks (same bundle)"
    )
    add_decoder_arguments(p, hotwords=True)
    add_cluster_arguments(p)
    add_backend_argument(p)  # default: the runtime the bundle records, as transcribe
    p.add_argument("--providers", default=None, help="onnxruntime providers (default cpu; cuda with GPUs)")
    p.add_argument(
        "--batch-size",
        type=limits.int_in(1, limits.MAX_BATCH),
        default=DEFAULT_BATCH_SIZE,
        help="inference batch inside a worker",
    )
    p.add_argument(
        "--task-size",
        type=limits.int_in(1, 1_000_000),
        default=None,
        help="inputs per Ray task (default: from the input count)",
    )
    p.add_argument("--shard-rows", type=limits.int_in(1, 10**7), default=1000, help="rows per output shard")
    p.add_argument(
        "--chunk-seconds",
        type=limits.chunk_seconds(),
        default=DEFAULT_CHUNK_SECONDS,
        help="0 disables chunking",
    )
    p.add_argument("--context-seconds", type=limits.context_seconds(), default=DEFAULT_CHUNK_CONTEXT_SECONDS)
    p.add_argument("--language", default=None, help="multi-language bundles: use this head, skip language ID")
    p.add_argument("--json", action="store_true", help="print _summary.json instead of two lines")
    p.set_defaults(fn=_transcribe_dataset)
