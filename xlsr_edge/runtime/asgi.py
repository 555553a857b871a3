"""The web side of `xlsr-edge serve`: a Starlette app on uvicorn (`pip install 'xlsr-edge[serve]'`).

One port serves the WebSocket protocol (any path), the OpenAI-compatible HTTP API (/v1, runtime.http_api),
`GET /health` and the browser page (`/`, files in xlsr_edge/data/web/). With an API key, /v1 needs
`Authorization: Bearer KEY` and a WebSocket the same header or `?token=KEY`; the page and /health stay open
(the page asks for the key: it has none of its own).

uvicorn is driven here rather than through `uvicorn.run`: the server binds its own socket (so port 0 works and
bind errors are one line), installs no signal handlers (serve_forever does, to flush streams on SIGTERM) and
shuts down in the server's order: streams flush their finals first, then the connections close.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from xlsr_edge.runtime.http_api import TranscriptionApi, error_response
from xlsr_edge.runtime.uploads import drain

log = logging.getLogger("xlsr_edge.serve")

WEB_DIR = Path(__file__).resolve().parents[1] / "data" / "web"
WEB_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "worklet.js": "text/javascript; charset=utf-8",
}
HEALTH_PATHS = ("/health", "/healthz", "/ready")
FIRST_REQUEST_SECONDS = 10.0  # a connection that sends no request line by then is closed
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _public(path: str) -> bool:
    return path == "/" or path.startswith("/web/") or path in HEALTH_PATHS


class ApiKeyAuth:
    """ASGI middleware: a request to a non-public path needs the key (Bearer header; WebSockets may also use
    ?token=, which is all a browser can send). Refused: 401 in OpenAI's error shape (WebSockets: the same as
    an HTTP answer to the handshake)."""

    def __init__(self, app, key: str) -> None:
        self.app = app
        self.key = key.encode()

    def _allowed(self, scope) -> bool:
        given = [
            value.decode("latin-1")[7:].strip()
            for name, value in scope.get("headers", [])
            if name == b"authorization" and value[:7].lower() == b"bearer "
        ]
        if scope["type"] == "websocket":
            given += parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [])
        return any(hmac.compare_digest(g.encode(), self.key) for g in given)

    async def __call__(self, scope, receive, send) -> None:
        public = scope["type"] == "http" and _public(scope["path"])  # a WebSocket at / is not the page
        if scope["type"] not in ("http", "websocket") or public or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        response = error_response(
            401,
            "missing or wrong API key: send 'Authorization: Bearer KEY' (WebSocket: or ?token=KEY)",
            None,
            "invalid_api_key",
        )
        if scope["type"] == "http":
            await drain(receive)
            await response(scope, receive, send)
            return
        from starlette.websockets import WebSocket

        ws = WebSocket(scope, receive, send)
        await ws.receive()  # websocket.connect
        if "websocket.http.response" in scope.get("extensions", {}):
            await ws.send_denial_response(response)
        else:
            await ws.close(1008, "missing or wrong API key")


def build_app(
    *,
    health: Callable[[], tuple[int, dict[str, Any]]],
    websocket: Callable[[Any], Awaitable[None]],
    api: TranscriptionApi,
    api_key: str | None,
):
    """The ASGI app: page, health, /v1 (api), and `websocket(ws)` for WebSocket connections on any path."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route, WebSocketRoute

    async def health_endpoint(request):
        status, body = health()
        return JSONResponse(body, status_code=status)

    async def page(request):
        name = request.path_params.get("name", "index.html")
        if name not in WEB_FILES:
            return Response("not found\n", 404, media_type="text/plain")
        return Response((WEB_DIR / name).read_bytes(), media_type=WEB_FILES[name])

    async def http_error(request, exc: HTTPException):
        return error_response(exc.status_code, str(exc.detail))

    async def internal_error(request, exc: Exception):
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", None, "internal_error")

    every = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    routes = [
        Route("/", page),
        Route("/web/{name}", page),
        *(Route(p, health_endpoint) for p in HEALTH_PATHS),
        Route("/v1/models", api.models),
        Route("/v1/models/{model:path}", api.model),
        Route("/v1/audio/transcriptions", api.transcriptions, methods=["POST"]),
        Route("/v1/audio/translations", api.translations, methods=["POST"]),
        Route("/v1/{rest:path}", api.not_found, methods=every),
        WebSocketRoute("/{path:path}", websocket),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: internal_error})
    return ApiKeyAuth(app, api_key) if api_key else app


def _http_protocol():
    """uvicorn's h11 protocol, plus a deadline for the first request (uvicorn has none before it)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class FirstRequestDeadline(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._deadline = self.loop.call_later(FIRST_REQUEST_SECONDS, self._no_request)

        def _no_request(self) -> None:
            if self.scope is None and not self.transport.is_closing():
                self.transport.close()

        def connection_lost(self, exc) -> None:
            self._deadline.cancel()
            super().connection_lost(exc)

    return FirstRequestDeadline


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (IPv4 first where a name has both). Raises OSError."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = sorted(infos, key=lambda i: i[0] != socket.AF_INET)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


class Listener:
    """uvicorn serving `app` on one socket: `start`, then `stop_accepting` and `close`."""

    def __init__(self, app, *, max_frame_bytes: int) -> None:
        import uvicorn

        self.config = uvicorn.Config(
            app,
            http=_http_protocol(),
            ws="websockets-sansio",
            ws_max_size=max_frame_bytes,
            ws_ping_interval=None,  # liveness is the session's idle timeout (pongs can queue behind audio)
            ws_ping_timeout=None,
            ws_per_message_deflate=False,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=False,
            timeout_keep_alive=5,
        )
        self.server = uvicorn.Server(self.config)
        self.socket: socket.socket | None = None
        # a malformed multipart body is answered with 400; the parser's own warning would let any client
        # write to the server's stderr at will
        logging.getLogger("python_multipart").setLevel(logging.ERROR)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self.socket = bind(host, port)
        self.config.load()
        self.server.lifespan = self.config.lifespan_class(self.config)
        await self.server.startup(sockets=[self.socket])
        return self.socket.getsockname()[:2]

    def stop_accepting(self) -> None:
        for s in getattr(self.server, "servers", []):
            s.close()

    async def close(self, grace: float) -> None:
        """Close every connection (idle keep-alive ones at once, requests in progress when they end, within
        `grace` seconds), then the socket."""
        self.stop_accepting()
        state = self.server.server_state
        for connection in list(state.connections):
            connection.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while (state.connections or state.tasks) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for task in list(state.tasks):
            task.cancel()
        for connection in list(state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        if self.socket is not None:
            self.socket.close()
