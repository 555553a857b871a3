"""`xlsr-edge serve`: live streams over WebSocket, the OpenAI-compatible HTTP API and a browser page on one
port (Starlette on uvicorn, ``pip install 'xlsr-edge[stream]'``; the web side is runtime.asgi, the HTTP API
runtime.http_api, one stream's connection runtime.ws_session).

Protocol, per connection (any path): an optional first text frame ``{"config": {...}}`` (``sample_rate``,
``chunk_seconds``, ``left_context_seconds``, ``right_context_seconds``, ``vad``, ``partials``; checked against
the server's limits), then binary frames of s16le mono PCM (whole samples), then the text frame
``{"eof": true}``. The server answers with JSON text frames ``{"type": "partial"|"final", "text", "start",
"end", "words"}`` as they happen, and closes (code 1000) after the last final. Errors are a frame
``{"type": "error", "error": "..."}`` followed by a close: 1008 for a malformed frame or config (or no frame for
``idle_timeout_seconds``, after the finals), 1009 for a frame over ``max_frame_bytes``, 1013 when
``max_streams`` streams are open, 1011 on an internal error, 1001 when the server shuts down (after the finals of
the audio received so far).

One model serves every stream: each stream's windows (``Stream.pending``) go to a batcher that runs the
windows due across streams (and HTTP requests) in one inference call (up to ``max_batch``, waiting at most
``max_wait_ms`` for more when the model is idle; while a call runs, the next batch gathers). Inference runs in
one worker thread, so the event loop keeps reading sockets meanwhile; VAD and decoding run on the loop.

Flow control (runtime.ws_session): frames are read as they arrive and queued; a stream takes them at most
``max_speed`` x real time once it is ``burst_seconds`` ahead (a token bucket), and past ``max_buffer_bytes``
queued the socket is not read (TCP pushes back), so no stream buffers without bound and a fast client is slowed,
not dropped. A malformed frame or a vanished client ends only its own stream and frees its slot. ``GET
/health`` answers 200 with a JSON status (503 while shutting down). SIGTERM/SIGINT: stop accepting, flush every
stream's final, close, exit 0.
"""

from __future__ import annotations

import asyncio
import math
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from xlsr_edge.errors import XlsrEdgeError, require
from xlsr_edge.runtime.asgi import Listener, build_app
from xlsr_edge.runtime.batching import batch_limit, infer_batch, plan_batches
from xlsr_edge.runtime.http_api import HttpOptions, ServedModel, TranscriptionApi
from xlsr_edge.runtime.recognizer import TranscribeOptions
from xlsr_edge.runtime.stream import StreamOptions, WindowRequest
from xlsr_edge.runtime.ws_session import (  # noqa: F401 - the protocol's names, importable from here
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    ProtocolError,
    Session,
    refuse,
)

if TYPE_CHECKING:
    from xlsr_edge.runtime.recognizer import Recognizer

CONFIG_KEYS = (
    "sample_rate",
    "chunk_seconds",
    "left_context_seconds",
    "right_context_seconds",
    "vad",
    "partials",
)


@dataclass(frozen=True)
class ServerOptions:
    """max_streams: open streams at most; max_batch: windows per inference call (1 = no cross-stream
    batching); max_wait_ms: how long an idle model waits to fill a batch; max_speed: audio seconds per second a
    stream is read at after burst_seconds (0 = unthrottled); max_buffer_bytes: frames a stream may have
    received but not taken yet (then TCP pushes back); idle_timeout_seconds: a stream that sends nothing this
    long is closed (0 = never); limits on what a client's config may ask for."""

    max_streams: int = 16
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_speed: float = 1.5
    burst_seconds: float = 2.0
    max_frame_bytes: int = 1 << 18  # 8 s of 16 kHz s16le
    max_buffer_bytes: int = 1 << 23  # 262 s of 16 kHz s16le
    idle_timeout_seconds: float = 30.0
    min_chunk_seconds: float = 0.25
    max_chunk_seconds: float = 8.0
    max_left_context_seconds: float = 10.0
    max_right_context_seconds: float = 2.0
    min_sample_rate: int = 8000
    max_sample_rate: int = 48000
    shutdown_grace_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.max_streams < 1:
            raise ValueError("max_streams must be at least 1")
        if self.max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        seconds = (self.max_wait_ms, self.max_speed, self.burst_seconds, self.idle_timeout_seconds)
        if not all(math.isfinite(v) and v >= 0 for v in seconds):
            raise ValueError(
                "max_wait_ms, max_speed, burst_seconds and idle_timeout_seconds must be finite and >= 0"
            )
        if self.max_frame_bytes < 2 or self.max_buffer_bytes < self.max_frame_bytes:
            raise ValueError("max_buffer_bytes must hold at least one frame of max_frame_bytes")


class Batcher:
    """Runs the windows that streams wait for, several streams' windows in one inference call."""

    def __init__(self, recognizer: Recognizer, max_batch: int, max_wait_s: float) -> None:
        self.runner = recognizer.runner
        self.uses_mask = recognizer.info.uses_attention_mask
        self.max_batch = batch_limit(self.runner, max_batch)
        self.max_wait_s = max_wait_s
        self.queue: list[tuple[WindowRequest, asyncio.Future]] = []
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="xlsr-infer")
        self.calls = 0
        self.windows = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for _, fut in self.queue:
            if not fut.done():
                fut.cancel()
        self.queue.clear()
        self.executor.shutdown(wait=True)

    async def infer(self, request: WindowRequest) -> tuple[np.ndarray, int]:
        fut = asyncio.get_running_loop().create_future()
        self.queue.append((request, fut))
        self._wakeup.set()
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        idle = True  # the queue was empty when the last call ended: wait a little for company
        while True:
            if not self.queue:
                idle = True
                self._wakeup.clear()
                await self._wakeup.wait()
            if idle and self.max_batch > 1 and self.max_wait_s > 0:
                deadline = loop.time() + self.max_wait_s
                while len(self.queue) < self.max_batch and (left := deadline - loop.time()) > 0:
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), left)
                    except TimeoutError:
                        break
            batch = [(r, f) for r, f in self.queue[: self.max_batch] if not f.done()]
            del self.queue[: self.max_batch]
            idle = False
            if not batch:
                continue
            for g in plan_batches([len(r.samples) for r, _ in batch], self.max_batch, self.uses_mask):
                items = [batch[j] for j in g]
                await self._infer(loop, items)

    async def _infer(self, loop, items: list[tuple[WindowRequest, asyncio.Future]]) -> None:
        try:
            outputs, lengths = await loop.run_in_executor(
                self.executor, infer_batch, self.runner, [r.samples for r, _ in items], self.uses_mask
            )
        except Exception as exc:  # noqa: BLE001 - handed to the streams that wait for it
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self.calls += 1
        self.windows += len(items)
        for k, (_, fut) in enumerate(items):
            if not fut.done():
                fut.set_result((outputs[k], lengths[k]))


class StreamServer:
    """The server around one Recognizer (plus, for the HTTP API, more bundles by name): WebSocket streams,
    /v1 (runtime.http_api), /health and the page (runtime.asgi). ``await start(host, port)``, then
    ``await shutdown()``."""

    def __init__(
        self,
        recognizer: Recognizer,
        stream_options: StreamOptions | None = None,
        options: ServerOptions | None = None,
        *,
        name: str = "default",
        models: dict[str, Recognizer] | None = None,
        http: HttpOptions | None = None,
        api_key: str | None = None,
    ) -> None:
        for module in ("starlette", "uvicorn", "python_multipart", "websockets"):
            require(module, "stream", "needed by xlsr-edge serve")
        self.rec = recognizer
        self.name = name
        self.defaults = stream_options or StreamOptions()
        self.options = options or ServerOptions()
        self.http = http or HttpOptions(transcribe=TranscribeOptions(batch_size=self.options.max_batch))
        self.api_key = api_key or None
        self.models = {name: ServedModel(name, recognizer)}
        for other, rec in (models or {}).items():
            if other in self.models:
                raise ValueError(f"two bundles are named {other!r}")
            self.models[other] = ServedModel(other, rec)
        self.sessions: set[Session] = set()
        self.draining = False
        self.stopping: asyncio.Event | None = None
        self.batcher: Batcher | None = None
        self.api: TranscriptionApi | None = None
        self.listener: Listener | None = None
        self.address: tuple[str, int] | None = None
        self.refused = 0
        self.served = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        self.stopping = asyncio.Event()
        for m in self.models.values():
            m.batcher = Batcher(m.recognizer, self.options.max_batch, self.options.max_wait_ms / 1000.0)
            m.batcher.start()
        self.batcher = self.models[self.name].batcher
        self.api = TranscriptionApi(self, self.http)
        app = build_app(health=self.health, websocket=self._handle, api=self.api, api_key=self.api_key)
        self.listener = Listener(app, max_frame_bytes=self.options.max_frame_bytes)
        try:
            self.address = await self.listener.start(host, port)
        except BaseException:
            await self._stop_workers()
            raise
        return self.address

    def status(self) -> dict[str, Any]:
        calls = sum(m.batcher.calls for m in self.models.values() if m.batcher)
        windows = sum(m.batcher.windows for m in self.models.values() if m.batcher)
        return {
            "status": "draining" if self.draining else "ok",
            "streams": len(self.sessions),
            "max_streams": self.options.max_streams,
            "served": self.served,
            "refused": self.refused,
            "inference_calls": calls,
            "windows": windows,
            "models": list(self.models),
            **(self.api.status() if self.api else {}),
        }

    def health(self) -> tuple[int, dict[str, Any]]:
        return (503 if self.draining else 200), self.status()

    def request_shutdown(self) -> None:
        """Stop accepting; every open stream flushes its finals and closes (safe from a signal handler)."""
        self.draining = True
        if self.stopping is not None:
            self.stopping.set()

    async def wait_shutdown_requested(self) -> None:
        await self.stopping.wait()

    async def shutdown(self) -> None:
        """Stop listening, let every stream flush its finals and close and every HTTP request finish (within
        shutdown_grace_seconds; what is still open then is dropped), stop the batchers."""
        self.request_shutdown()
        if self.listener is not None:
            self.listener.stop_accepting()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.options.shutdown_grace_seconds
            while (self.sessions or (self.api and self.api.in_flight)) and loop.time() < deadline:
                await asyncio.sleep(0.05)
            for s in list(self.sessions):
                s.abort()
            await self.listener.close(grace=2.0)
        await self._stop_workers()

    async def _stop_workers(self) -> None:
        if self.api is not None:
            self.api.closing.set()  # HTTP workers stop waiting for the batchers
        for m in self.models.values():
            if m.batcher is not None:
                await m.batcher.stop()
        if self.api is not None:
            await asyncio.to_thread(self.api.close)

    async def _handle(self, ws) -> None:
        """A WebSocket connection (any path): refused while shutting down or at max_streams, else a stream."""
        await ws.accept()
        if self.draining:
            await refuse(ws, "the server is shutting down", CLOSE_GOING_AWAY)
            return
        if len(self.sessions) >= self.options.max_streams:
            self.refused += 1
            await refuse(
                ws, f"server busy: {self.options.max_streams} streams open (max-streams)", CLOSE_TRY_AGAIN
            )
            return
        session = Session(self, ws)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            self.served += 1

    def stream_options(self, config: Any) -> tuple[StreamOptions, int]:
        """A client's {"config": {...}} within the server's limits -> (StreamOptions, input sample rate)."""
        o, limits = self.defaults, self.options
        if not isinstance(config, dict):
            raise ProtocolError('"config" must be an object')
        unknown = sorted(set(config) - set(CONFIG_KEYS))
        if unknown:
            raise ProtocolError(
                f"unknown config keys: {', '.join(unknown)} (known: {', '.join(CONFIG_KEYS)})"
            )

        def number(key: str, lo: float, hi: float) -> float | None:
            if key not in config:
                return None
            v = config[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
                raise ProtocolError(f"config {key} must be a number within [{lo:g}, {hi:g}], got {v!r}")
            return float(v)

        def flag(key: str) -> bool | None:
            if key not in config:
                return None
            if not isinstance(config[key], bool):
                raise ProtocolError(f"config {key} must be true or false")
            return config[key]

        rate = number("sample_rate", limits.min_sample_rate, limits.max_sample_rate)
        if rate is not None and rate != int(rate):
            raise ProtocolError("config sample_rate must be an integer")
        changes: dict[str, Any] = {}
        for key, lo, hi in (
            ("chunk_seconds", limits.min_chunk_seconds, limits.max_chunk_seconds),
            ("left_context_seconds", 0.0, limits.max_left_context_seconds),
            ("right_context_seconds", 0.0, limits.max_right_context_seconds),
        ):
            v = number(key, lo, hi)
            if v is not None:
                changes[key] = v
        vad = flag("vad")
        if vad is not None:
            changes["vad"] = (o.vad or True) if vad else None
        partials = flag("partials")
        if partials is not None:
            changes["partials"] = partials
        input_rate = int(rate) if rate is not None else self.rec.info.sample_rate
        changes["sample_rate"] = input_rate
        try:
            return replace(o, **changes), input_rate
        except ValueError as exc:
            raise ProtocolError(f"config: {exc}") from exc


def serve_forever(
    recognizer: Recognizer,
    host: str,
    port: int,
    stream_options: StreamOptions | None = None,
    options: ServerOptions | None = None,
    ready: Callable[[tuple[str, int]], None] | None = None,
    **server_kwargs,
) -> int:
    """Run the server until SIGTERM/SIGINT, then flush every stream and return 0. server_kwargs: StreamServer's
    keywords (name, models, http, api_key)."""

    async def main() -> int:
        server = StreamServer(recognizer, stream_options, options, **server_kwargs)
        try:
            address = await server.start(host, port)
        except OSError as exc:
            raise XlsrEdgeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.request_shutdown)
        if ready is not None:
            ready(address)
        await server.wait_shutdown_requested()
        await server.shutdown()
        return 0

    return asyncio.run(main())
