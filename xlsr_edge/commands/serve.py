"""`xlsr-edge serve`: live WebSocket streams, the OpenAI-compatible HTTP API and a browser page on one port
(xlsr_edge.runtime.server, .http_api, .asgi)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from xlsr_edge import limits
from xlsr_edge.commands.stream import (
    add_runtime_arguments,
    add_stream_arguments,
    load_recognizer,
    stream_options,
)
from xlsr_edge.errors import XlsrEdgeError, require

API_KEY_ENV = "XLSR_EDGE_API_KEY"


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning for a server others can reach with no key, or None."""
    from xlsr_edge.runtime.asgi import is_loopback

    if api_key or is_loopback(host):
        return None
    return (
        f"warning: listening on {host} without an API key: anyone who can reach this port can use the server; "
        f"set --api-key or {API_KEY_ENV}"
    )


def _bundles(args: argparse.Namespace) -> dict[str, Path]:
    """NAME -> bundle folder: the positional bundle (named after its folder), then each --bundle NAME=PATH."""
    out = {args.bundle.name or "default": args.bundle}
    for spec in args.bundles or ():
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise XlsrEdgeError(f"--bundle takes NAME=PATH, got {spec!r}")
        if name in out:
            raise XlsrEdgeError(f"--bundle {name}: two bundles have this name")
        out[name.strip()] = Path(path)
    return out


def _load(args: argparse.Namespace, path: Path):
    """A bundle's Recognizer. A multi-language bundle without language ID is loaded with its first head (the
    loader wants one); each HTTP request names its own language."""
    from xlsr_edge.bundle import load_bundle

    language = None
    if path.is_dir():
        manifest = load_bundle(path, verify=False)
        if manifest.extra.get("kind") == "multi" and not manifest.extra.get("lid"):
            language = next(iter(manifest.extra["languages"]))
    return load_recognizer(args, path, language=language)


def _serve(args: argparse.Namespace) -> int:
    for module in ("starlette", "uvicorn", "python_multipart", "websockets"):
        require(module, "stream", "needed by xlsr-edge serve")
    from xlsr_edge.runtime.http_api import HttpOptions
    from xlsr_edge.runtime.recognizer import TranscribeOptions
    from xlsr_edge.runtime.server import ServerOptions, serve_forever

    bundles = _bundles(args)
    options = ServerOptions(
        max_streams=args.max_streams,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_speed=args.max_speed,
        burst_seconds=args.burst_seconds,
        idle_timeout_seconds=args.idle_timeout_seconds,
        max_buffer_bytes=int(args.max_buffer_mb * 2**20),
    )
    http = HttpOptions(
        max_upload_mb=args.max_upload_mb,
        max_requests=args.max_requests,
        transcribe=TranscribeOptions(batch_size=options.max_batch),
    )
    defaults = stream_options(args)
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    names = list(bundles)

    def ready(address: tuple[str, int]) -> None:
        host, port = address
        print(
            f"xlsr-edge serve: listening on ws://{host}:{port} (page: http://{host}:{port}/, OpenAI API: "
            f"http://{host}:{port}/v1, health: /health), models {', '.join(names)}, "
            f"max {options.max_streams} streams, batches of up to {options.max_batch}",
            file=sys.stderr,
            flush=True,
        )
        warning = exposure_warning(args.host, api_key)
        if warning:
            print(warning, file=sys.stderr, flush=True)

    with contextlib.ExitStack() as stack:
        rec = stack.enter_context(_load(args, args.bundle))
        others = {}
        for name in names[1:]:
            if not bundles[name].is_dir():
                raise XlsrEdgeError(f"--bundle {name}: no bundle folder at {bundles[name]}")
            others[name] = stack.enter_context(_load(args, bundles[name]))
        return serve_forever(
            rec,
            args.host,
            args.port,
            defaults,
            options,
            ready=ready,
            name=names[0],
            models=others,
            http=http,
            api_key=api_key,
        )


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommand."""
    p = sub.add_parser(
        "serve",
        help="server: WebSocket streams, an OpenAI-compatible transcription API and a browser page",
        description='WebSocket clients send an optional {"config": {...}} text frame, binary s16le mono PCM frames, '
        'then {"eof": true}; the server sends {"type": "partial"|"final", ...} frames and closes after the last '
        "final. POST /v1/audio/transcriptions is OpenAI's transcription API (any OpenAI client works), GET / a "
        "page to talk into or upload a file, GET /health the readiness check. SIGTERM: flush every stream, "
        "exit 0.",
    )
    p.add_argument("bundle", type=Path, help="the bundle of the WebSocket streams (and of the HTTP API)")
    p.add_argument(
        "--bundle",
        dest="bundles",
        action="append",
        metavar="NAME=PATH",
        help="another bundle for the HTTP API, chosen by the request's model (repeatable)",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: all)")
    p.add_argument(
        "--port", type=limits.int_in(0, 65535), default=8765, help="0 picks a free port (printed on stderr)"
    )
    p.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' (WebSocket: or ?token=KEY); default ${API_KEY_ENV}",
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
    p.add_argument(
        "--idle-timeout-seconds",
        type=limits.nonneg_float(limits.MAX_SECONDS),
        default=30.0,
        help="a stream that sends nothing this long is closed (1008), freeing its slot (0: never)",
    )
    p.add_argument(
        "--max-buffer-mb",
        type=limits.float_in(0.25, 4096.0),
        default=8.0,
        help="audio a stream may have sent ahead of its throttle before TCP pushes back (8: 4.4 min at 16 kHz)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=limits.positive_float(1_000_000.0),
        default=100.0,
        help="larger HTTP uploads get 413",
    )
    p.add_argument(
        "--max-requests",
        type=limits.int_in(1, limits.MAX_STREAMS),
        default=64,
        help="HTTP transcriptions in flight; more get 429",
    )
    add_stream_arguments(p)
    add_runtime_arguments(p)
    p.set_defaults(fn=_serve)
