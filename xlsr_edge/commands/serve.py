"""`xlsr-edge serve`: the WebSocket server for live streams (xlsr_edge.runtime.server)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xlsr_edge import limits
from xlsr_edge.commands.stream import (
    add_runtime_arguments,
    add_stream_arguments,
    load_recognizer,
    stream_options,
)
from xlsr_edge.errors import require


def _serve(args: argparse.Namespace) -> int:
    require("websockets", "stream", "needed by xlsr-edge serve")
    from xlsr_edge.runtime.server import ServerOptions, serve_forever

    options = ServerOptions(
        max_streams=args.max_streams,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_speed=args.max_speed,
        burst_seconds=args.burst_seconds,
    )
    defaults = stream_options(args)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be within 0..65535, got {args.port}")

    def ready(address: tuple[str, int]) -> None:
        host, port = address
        print(
            f"xlsr-edge serve: listening on ws://{host}:{port} (health: http://{host}:{port}/health), "
            f"max {options.max_streams} streams, batches of up to {options.max_batch}",
            file=sys.stderr,
            flush=True,
        )

    with load_recognizer(args) as rec:
        return serve_forever(rec, args.host, args.port, defaults, options, ready=ready)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommand."""
    p = sub.add_parser(
        "serve",
        help="WebSocket server for live streams (s16le PCM in, JSON events out)",
        description='Clients send an optional {"config": {...}} text frame, binary s16le mono PCM frames, then '
        '{"eof": true}; the server sends {"type": "partial"|"final", ...} frames and closes after the last '
        "final. GET /health on the same port is the readiness check. SIGTERM: flush every stream, exit 0.",
    )
    p.add_argument("bundle", type=Path)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: all)")
    p.add_argument(
        "--port", type=limits.int_in(0, 65535), default=8765, help="0 picks a free port (printed on stderr)"
    )
    p.add_argument(
        "--max-streams",
        type=limits.int_in(1, limits.MAX_STREAMS),
        default=16,
        help="more connections get close code 1013",
    )
    p.add_argument(
        "--max-batch",
        type=limits.int_in(1, limits.MAX_BATCH),
        default=16,
        help="windows per inference call (1: no batching)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=limits.nonneg_float(10_000.0),
        default=5.0,
        help="an idle model waits this long to batch",
    )
    p.add_argument(
        "--max-speed",
        type=limits.nonneg_float(1000.0),
        default=1.5,
        help="x real time a stream is read at after the burst (0: no limit)",
    )
    p.add_argument(
        "--burst-seconds",
        type=limits.nonneg_float(limits.MAX_STREAM_SECONDS),
        default=2.0,
        help="audio a stream may send ahead at once",
    )
    add_stream_arguments(p)
    add_runtime_arguments(p)
    p.set_defaults(fn=_serve)
