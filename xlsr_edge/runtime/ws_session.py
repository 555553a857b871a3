"""One WebSocket stream of `xlsr-edge serve` (the protocol of runtime.server) on a Starlette WebSocket.

Two tasks per connection. The reader takes frames off the socket as they arrive, so the client's pings are
answered at once whatever the stream is doing, and queues them; the stream takes them from the queue at most
`max_speed` x real time (a token bucket `burst_seconds` deep). Flow control is the queue's bound: once it holds
`max_buffer_bytes`, the reader stops reading and TCP pushes back on the client. A fast client is slowed, never
dropped: its pings wait only behind what is still in flight once the server holds that much (on loopback,
where a sender's kernel buffer can hold 4 MB, about a minute of audio at 1.5x).

Liveness: no server pings (a pong can only come back behind the client's queued audio, so a ping timeout would
drop exactly the fast clients); instead a client that sends no frame for `idle_timeout_seconds` while the
server waits for one gets its finals, an error frame and close 1008, which frees its slot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from xlsr_edge.errors import XlsrEdgeError

if TYPE_CHECKING:
    from xlsr_edge.runtime.stream import Stream

log = logging.getLogger("xlsr_edge.serve")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013

SEND_TIMEOUT_SECONDS = 30.0  # a client that reads no event for this long is dropped (its slot freed)
_IDLE = object()  # queued by the reader: no frame for idle_timeout_seconds
_FRAMES_HINT = 'text frames must be {"config": {...}} or {"eof": true}'


class ProtocolError(Exception):
    def __init__(self, message: str, code: int = CLOSE_POLICY) -> None:
        super().__init__(message)
        self.code = code


class ClientGone(Exception):
    """The client closed or vanished: its stream is dropped and its slot freed."""


async def refuse(ws, message: str, code: int) -> None:
    """An error frame, then a close with `code` (the reason cut to fit a close frame)."""
    try:
        await ws.send_text(json.dumps({"type": "error", "error": message}, ensure_ascii=False))
        await ws.close(code, message.encode()[:120].decode(errors="ignore"))
    except Exception:  # noqa: BLE001 - the client may already be gone
        pass


def parse_text_frame(text: str) -> dict[str, Any]:
    """A text frame as a one-key dict; ProtocolError (1008) for anything else, however deeply nested."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        raise ProtocolError('text frames must be JSON: {"config": {...}} or {"eof": true}') from None
    if not isinstance(obj, dict) or len(obj) != 1:
        raise ProtocolError(_FRAMES_HINT)
    return obj


class Session:
    """One connection: frames in, events out, its own Stream. `server` is the StreamServer."""

    def __init__(self, server: Any, ws) -> None:
        self.server = server
        self.ws = ws
        self.stream: Stream | None = None
        self.options = server.defaults
        self.input_rate = server.rec.info.sample_rate
        opts = server.options
        self.tokens = opts.burst_seconds  # token bucket: audio seconds the client may send ahead
        self.refilled = time.monotonic()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.queued_bytes = 0
        self.room = asyncio.Event()
        self._stop_task: asyncio.Task | None = None
        self._reader: asyncio.Task | None = None
        self._task: asyncio.Task | None = None
        self._aborted = False

    def abort(self) -> None:
        """End the stream now, finals or not (shutdown grace exceeded); the listener drops the socket."""
        self._aborted = True
        if self._task is not None:
            self._task.cancel()

    async def run(self) -> None:
        from starlette.websockets import WebSocketDisconnect

        self._task = asyncio.current_task()
        self._stop_task = asyncio.ensure_future(self.server.stopping.wait())
        self._reader = asyncio.ensure_future(self._read())
        try:
            code, reason, error = await self._serve()
            await self._flush()
            if error is not None:
                await refuse(self.ws, error, code)
            else:
                await self.ws.close(code, reason)
        except ProtocolError as exc:
            await refuse(self.ws, str(exc), exc.code)
        except (ClientGone, WebSocketDisconnect, OSError):
            pass  # the client went away (or reads nothing): its stream is dropped, its slot freed
        except asyncio.CancelledError:
            if not self._aborted:
                raise
        except Exception as exc:  # noqa: BLE001 - one stream's failure must not stop the others
            log.error("stream failed", exc_info=exc)
            await refuse(self.ws, f"internal error: {type(exc).__name__}: {exc}", CLOSE_INTERNAL)
        finally:
            self._reader.cancel()
            self._stop_task.cancel()

    # -- the socket side -----------------------------------------------------------------------------------

    async def _read(self) -> None:
        """Queue every frame as it arrives; pause while the queue holds max_buffer_bytes (TCP pushes back)."""
        opts = self.server.options
        idle = opts.idle_timeout_seconds or None
        try:
            while True:
                while self.queued_bytes >= opts.max_buffer_bytes:
                    self.room.clear()
                    await self.room.wait()
                try:
                    message = await asyncio.wait_for(self.ws.receive(), idle)
                except TimeoutError:
                    self.queue.put_nowait(_IDLE)
                    return
                if message["type"] == "websocket.disconnect":
                    self.queue.put_nowait(ClientGone())
                    return
                data = message.get("bytes")
                if data is None:
                    data = message.get("text") or ""
                self.queued_bytes += len(data)
                self.queue.put_nowait(data)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a broken socket ends the stream like a disconnect
            self.queue.put_nowait(ClientGone())

    async def _next(self) -> Any:
        """The next queued frame, or None once the server shuts down (queued audio is still taken then)."""
        if not self.server.draining:
            get = asyncio.ensure_future(self.queue.get())
            await asyncio.wait({get, self._stop_task}, return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                return None if self.queue.empty() else self._take(self.queue.get_nowait())
            return self._take(get.result())
        return None if self.queue.empty() else self._take(self.queue.get_nowait())

    def _take(self, item: Any) -> Any:
        if isinstance(item, str | bytes):
            self.queued_bytes -= len(item)
            self.room.set()
        if isinstance(item, ClientGone):
            raise item
        return item

    # -- the stream side -------------------------------------------------------------------------------------

    async def _serve(self) -> tuple[int, str, str | None]:
        """Frames until eof, shutdown or idleness: (close code, reason, error message or None)."""
        first = True
        while True:
            msg = await self._next()
            if msg is None:
                return CLOSE_GOING_AWAY, "server shutting down", None
            if msg is _IDLE:
                seconds = self.server.options.idle_timeout_seconds
                return CLOSE_POLICY, "idle", f"no audio for {seconds:g} s: closing the stream (idle timeout)"
            if isinstance(msg, bytes):
                await self._audio(msg)
            else:
                obj = parse_text_frame(msg)
                if "config" in obj:
                    if not first:
                        raise ProtocolError("config must be the first frame")
                    self.options, self.input_rate = self.server.stream_options(obj["config"])
                elif obj.get("eof") is True:
                    return CLOSE_NORMAL, "done", None
                else:
                    raise ProtocolError(_FRAMES_HINT)
            first = False

    async def _audio(self, data: bytes) -> None:
        if len(data) % 2:
            raise ProtocolError("binary frames must hold whole s16le samples (an even number of bytes)")
        if self.stream is None:
            try:
                self.stream = self.server.rec.stream(self.options)
            except XlsrEdgeError as exc:  # e.g. a multi-language bundle, which cannot stream
                raise ProtocolError(str(exc), CLOSE_INTERNAL) from None
        x = np.frombuffer(data, dtype="<i2")
        self.stream.feed(x)
        await self._drain()
        await self._throttle(len(x) / self.input_rate)

    async def _throttle(self, seconds: float) -> None:
        """A token bucket (burst_seconds deep, refilled at max_speed audio seconds per second): once the client
        is further ahead than that, the next frame is taken only when it is due (it waits in the queue)."""
        opts = self.server.options
        if opts.max_speed <= 0 or self.server.draining:
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
            text = json.dumps(event.to_json(), ensure_ascii=False)
            try:
                await asyncio.wait_for(self.ws.send_text(text), SEND_TIMEOUT_SECONDS)
            except TimeoutError:
                raise ClientGone() from None

    async def _flush(self) -> None:
        if self.stream is not None:
            self.stream.finish()
            await self._drain()
