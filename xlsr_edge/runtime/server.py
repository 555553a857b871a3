"""`xlsr-edge serve`: live streams over WebSocket (the ``websockets`` library, ``pip install 'xlsr-edge[stream]'``).

Protocol, per connection: an optional first text frame ``{"config": {...}}`` (``sample_rate``, ``chunk_seconds``,
``left_context_seconds``, ``right_context_seconds``, ``vad``, ``partials``; checked against the server's limits),
then binary frames of s16le mono PCM (whole samples), then the text frame ``{"eof": true}``. The server
answers with JSON text frames ``{"type": "partial"|"final", "text", "start", "end", "words"}`` as they happen,
and closes (code 1000) after the last final. Errors are a frame ``{"type": "error", "error": "..."}`` followed
by a close: 1008 for a malformed frame or config, 1013 when ``max_streams`` streams are open, 1011 on an
internal error, 1001 when the server shuts down (after the finals of the audio received so far).

One model serves every stream: each stream's windows (``Stream.pending``) go to a batcher that runs the
windows due across streams in one inference call (up to ``max_batch``, waiting at most ``max_wait_ms`` for
more when the model is idle; while a call runs, the next batch gathers). Inference runs in one worker thread,
so the event loop keeps reading sockets meanwhile; VAD and decoding run on the loop.

Flow control: a connection is read only as fast as ``max_speed`` x real time once it is ``burst_seconds``
ahead (a token bucket); a faster client waits in TCP (the library buffers at most ``max_queue`` frames of at
most ``max_frame_bytes``; a larger frame closes the connection with 1009), so no stream buffers without bound. A malformed frame or a vanished client ends only
its own stream and frees its slot. ``GET /health`` on the same port answers 200 with a JSON status (503 while
shutting down). SIGTERM/SIGINT: stop accepting, flush every stream's final, close, exit 0.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from xlsr_edge.errors import XlsrEdgeError, require
from xlsr_edge.runtime.batching import batch_limit, infer_batch, plan_batches
from xlsr_edge.runtime.stream import Stream, StreamOptions, WindowRequest

if TYPE_CHECKING:
    from xlsr_edge.runtime.recognizer import Recognizer

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013
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
    stream is read at after burst_seconds (0 = unthrottled); limits on what a client's config may ask for."""

    max_streams: int = 16
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_speed: float = 1.5
    burst_seconds: float = 2.0
    max_frame_bytes: int = 1 << 18  # 8 s of 16 kHz s16le
    max_queue: int = 4
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
        if self.max_wait_ms < 0 or self.max_speed < 0 or self.burst_seconds < 0:
            raise ValueError("max_wait_ms, max_speed and burst_seconds must be >= 0")


class ProtocolError(Exception):
    def __init__(self, message: str, code: int = CLOSE_POLICY) -> None:
        super().__init__(message)
        self.code = code


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
    """The WebSocket server around one Recognizer. ``await start(host, port)``, then ``await shutdown()``."""

    def __init__(
        self,
        recognizer: Recognizer,
        stream_options: StreamOptions | None = None,
        options: ServerOptions | None = None,
    ) -> None:
        self.websockets = require("websockets", "stream", "needed by xlsr-edge serve")
        self.rec = recognizer
        self.defaults = stream_options or StreamOptions()
        self.options = options or ServerOptions()
        self.sessions: set[_Session] = set()
        self.draining = False
        self.stopping: asyncio.Event | None = None
        self.batcher: Batcher | None = None
        self.server = None
        self.address: tuple[str, int] | None = None
        self.refused = 0
        self.served = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        from websockets.asyncio.server import serve

        self.stopping = asyncio.Event()
        self.batcher = Batcher(self.rec, self.options.max_batch, self.options.max_wait_ms / 1000.0)
        self.batcher.start()
        self.server = await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            compression=None,
            max_size=self.options.max_frame_bytes,
            max_queue=self.options.max_queue,
            close_timeout=2.0,  # a peer that never finishes the closing handshake (or an idle HTTP client)
        )
        sock = next(iter(self.server.sockets))
        self.address = sock.getsockname()[:2]
        return self.address

    def status(self) -> dict[str, Any]:
        b = self.batcher
        return {
            "status": "draining" if self.draining else "ok",
            "streams": len(self.sessions),
            "max_streams": self.options.max_streams,
            "served": self.served,
            "refused": self.refused,
            "inference_calls": b.calls if b else 0,
            "windows": b.windows if b else 0,
        }

    def request_shutdown(self) -> None:
        """Stop accepting; every open stream flushes its finals and closes (safe from a signal handler)."""
        self.draining = True
        if self.stopping is not None:
            self.stopping.set()

    async def wait_shutdown_requested(self) -> None:
        await self.stopping.wait()

    async def shutdown(self) -> None:
        """Stop listening, let every stream flush its finals and close (within shutdown_grace_seconds; streams
        still open then are dropped), stop the batcher."""
        self.request_shutdown()
        if self.server is not None:
            self.server.close(close_connections=False)
            try:
                await asyncio.wait_for(self.server.wait_closed(), self.options.shutdown_grace_seconds)
            except TimeoutError:
                for s in list(self.sessions):
                    s.abort()
                try:
                    await asyncio.wait_for(self.server.wait_closed(), 5.0)
                except TimeoutError:
                    pass
        if self.batcher is not None:
            await self.batcher.stop()

    # -- websockets hooks --------------------------------------------------------------------------------------

    def _process_request(self, connection, request):
        """Plain HTTP on the WebSocket port: GET /health (readiness), anything else 404/426."""
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        path = request.path.split("?", 1)[0]
        if path in ("/health", "/healthz", "/ready"):
            response = connection.respond(503 if self.draining else 200, json.dumps(self.status()) + "\n")
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = "application/json"
            return response
        if path == "/":
            return connection.respond(426, "xlsr-edge serve: connect with a WebSocket client\n")
        return connection.respond(404, "not found\n")

    async def _handle(self, ws) -> None:
        if self.draining:
            await _refuse(ws, "the server is shutting down", CLOSE_GOING_AWAY)
            return
        if len(self.sessions) >= self.options.max_streams:
            self.refused += 1
            await _refuse(
                ws, f"server busy: {self.options.max_streams} streams open (max-streams)", CLOSE_TRY_AGAIN
            )
            return
        session = _Session(self, ws)
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


async def _refuse(ws, message: str, code: int) -> None:
    try:
        await ws.send(json.dumps({"type": "error", "error": message}))
        await ws.close(code, message[:100])
    except Exception:  # noqa: BLE001 - the client may already be gone
        pass


class _Session:
    """One connection: frames in, events out, its own Stream."""

    def __init__(self, server: StreamServer, ws) -> None:
        self.server = server
        self.ws = ws
        self.stream: Stream | None = None
        self.options = server.defaults
        self.input_rate = server.rec.info.sample_rate
        self.tokens = server.options.burst_seconds  # token bucket: audio seconds the client may send ahead
        self.refilled = time.monotonic()
        self._stop_task: asyncio.Task | None = None

    def abort(self) -> None:
        """Drop the connection without a closing handshake (shutdown grace exceeded)."""
        transport = getattr(self.ws, "transport", None)
        if transport is not None:
            transport.abort()

    async def run(self) -> None:
        closed = self.server.websockets.exceptions.ConnectionClosed
        self._stop_task = asyncio.ensure_future(self.server.stopping.wait())
        try:
            code, reason = await self._serve()
            await self._flush()
            await self.ws.close(code, reason)
        except ProtocolError as exc:
            await _refuse(self.ws, str(exc), exc.code)
        except closed:
            pass  # the client went away: its stream is dropped, its slot freed
        except Exception as exc:  # noqa: BLE001 - one stream's failure must not stop the others
            await _refuse(self.ws, f"internal error: {type(exc).__name__}: {exc}", CLOSE_INTERNAL)
        finally:
            self._stop_task.cancel()

    async def _serve(self) -> tuple[int, str]:
        first = True
        while True:
            msg = await self._recv()
            if msg is None:
                return CLOSE_GOING_AWAY, "server shutting down"
            if isinstance(msg, bytes | bytearray | memoryview):
                await self._audio(bytes(msg))
            else:
                try:
                    obj = json.loads(msg)
                except ValueError:
                    raise ProtocolError(
                        'text frames must be JSON: {"config": {...}} or {"eof": true}'
                    ) from None
                if not isinstance(obj, dict) or len(obj) != 1:
                    raise ProtocolError('text frames must be {"config": {...}} or {"eof": true}')
                if "config" in obj:
                    if not first:
                        raise ProtocolError("config must be the first frame")
                    self.options, self.input_rate = self.server.stream_options(obj["config"])
                elif obj.get("eof") is True:
                    return CLOSE_NORMAL, "done"
                else:
                    raise ProtocolError('text frames must be {"config": {...}} or {"eof": true}')
            first = False

    async def _recv(self):
        """The next frame, or None when the server shuts down first (cancelling recv loses nothing)."""
        recv = asyncio.ensure_future(self.ws.recv())
        done, _ = await asyncio.wait({recv, self._stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if recv in done:
            return recv.result()
        recv.cancel()
        try:
            await recv
        except (asyncio.CancelledError, Exception):  # noqa: BLE001
            pass
        return None

    async def _audio(self, data: bytes) -> None:
        if len(data) % 2:
            raise ProtocolError("binary frames must hold whole s16le samples (an even number of bytes)")
        if self.stream is None:
            self.stream = self.server.rec.stream(self.options)
        x = np.frombuffer(data, dtype="<i2")
        self.stream.feed(x)
        await self._drain()
        await self._throttle(len(x) / self.input_rate)

    async def _throttle(self, seconds: float) -> None:
        """A token bucket (burst_seconds deep, refilled at max_speed audio seconds per second): once the client
        is further ahead than that, the next frame is read only when it is due (TCP pushes back meanwhile)."""
        opts = self.server.options
        if opts.max_speed <= 0:
            return
        now = time.monotonic()
        self.tokens = min(opts.burst_seconds, self.tokens + (now - self.refilled) * opts.max_speed) - seconds
        self.refilled = now
        wait = -self.tokens / opts.max_speed
        if wait > 0:
            try:
                await asyncio.wait_for(asyncio.shield(self._stop_task), wait)
            except TimeoutError:
                pass

    async def _drain(self) -> None:
        stream = self.stream
        while (req := stream.pending()) is not None:
            logits, length = await self.server.batcher.infer(req)
            stream.complete(logits, length)
        for event in stream.take_events():
            await self.ws.send(json.dumps(event.to_json(), ensure_ascii=False))

    async def _flush(self) -> None:
        if self.stream is not None:
            self.stream.finish()
            await self._drain()


def serve_forever(
    recognizer: Recognizer,
    host: str,
    port: int,
    stream_options: StreamOptions | None = None,
    options: ServerOptions | None = None,
    ready: Callable[[tuple[str, int]], None] | None = None,
) -> int:
    """Run the server until SIGTERM/SIGINT, then flush every stream and return 0."""

    async def main() -> int:
        server = StreamServer(recognizer, stream_options, options)
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
