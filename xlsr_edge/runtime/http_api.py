"""The OpenAI-compatible audio API of `xlsr-edge serve` (Starlette endpoints; `pip install 'xlsr-edge[serve]'`).

POST /v1/audio/transcriptions takes what OpenAI's takes (multipart `file`, `model`, `language`, `prompt`,
`response_format`, `timestamp_granularities[]`, `temperature`) and answers in the same shapes; errors are
OpenAI's `{"error": {"message", "type", "param", "code"}}`. An upload is read by the runtime's audio reader and
windowed like `transcribe` (the same TranscribeOptions, so the same text), but its windows do not run on the
model directly: they go to the server's Batcher, which runs the windows of every request and every live stream
that are due in one inference call. Each request runs in a worker thread (`workers` at once); more than
`max_requests` in flight (uploading, waiting or running) get 429.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import math
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xlsr_edge.runtime.formats import GRANULARITIES, MEDIA_TYPES, RESPONSE_FORMATS, render
from xlsr_edge.runtime.recognizer import TranscribeOptions, Transcript
from xlsr_edge.runtime.stream import WindowRequest
from xlsr_edge.runtime.uploads import Upload, UploadError, drain, receive_upload

if TYPE_CHECKING:
    from xlsr_edge.runtime.recognizer import Recognizer

ERROR_TYPES = {
    401: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


@dataclass(frozen=True)
class HttpOptions:
    """max_upload_mb: request bodies larger than this get 413; max_requests: transcriptions in flight (more get
    429); workers: transcriptions running at once (each feeds the shared batcher from its own thread)."""

    max_upload_mb: float = 100.0
    max_requests: int = 64
    workers: int = 16
    transcribe: TranscribeOptions = field(default_factory=TranscribeOptions)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_upload_mb) and self.max_upload_mb > 0):
            raise ValueError(f"max upload size must be a positive number of MiB, got {self.max_upload_mb}")
        if self.max_requests < 1 or self.workers < 1:
            raise ValueError("max_requests and workers must be at least 1")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


@dataclass
class ServedModel:
    """One bundle the server answers for: `name` is what clients send as `model`."""

    name: str
    recognizer: Recognizer
    batcher: Any = None  # xlsr_edge.runtime.server.Batcher, made when the server starts

    @property
    def languages(self) -> list[str]:
        return list(getattr(self.recognizer, "heads", {}))


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


def error_response(status: int, message: str, param: str | None = None, code: str | None = None):
    """OpenAI's error body."""
    from starlette.responses import JSONResponse

    body = {
        "message": message,
        "type": ERROR_TYPES.get(status, "invalid_request_error"),
        "param": param,
        "code": code,
    }
    return JSONResponse({"error": body}, status_code=status)


class _BatchedRunner:
    """The runner a request's Recognizer sees: each window of a padded batch goes, unpadded, to the shared
    Batcher on the event loop (so it can share an inference call with other requests and streams), and the
    outputs come back as one padded batch."""

    def __init__(self, model: ServedModel, loop: asyncio.AbstractEventLoop, closing: threading.Event) -> None:
        self.runner = model.recognizer.runner
        self.batcher = model.batcher
        self.loop = loop
        self.closing = closing
        self.max_batch = self.runner.max_batch
        self.max_samples = self.runner.max_samples
        if hasattr(self.runner, "adapter_weights"):  # MMS: MultiRecognizer picks a language's adapters
            self.adapter_weights = None

    def infer(self, values: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        if getattr(self, "adapter_weights", None) is not None:
            return self._result(self._submit(self._exclusive(values, mask)))
        lengths = mask.sum(axis=1) if mask is not None else np.full(len(values), values.shape[1])
        futures = [
            self._submit(self.batcher.infer(WindowRequest(values[i, : int(n)], 0, 0)))
            for i, n in enumerate(lengths)
        ]
        outputs = [self._result(f) for f in futures]
        frames = max(n for _, n in outputs)
        logits = np.zeros((len(outputs), frames, outputs[0][0].shape[-1]), dtype=np.float32)
        for k, (lg, n) in enumerate(outputs):
            logits[k, :n] = lg[:n]
        return logits, np.array([n for _, n in outputs], dtype=np.int64)

    def _submit(self, coroutine):
        if self.closing.is_set():
            coroutine.close()
            raise RuntimeError("the server is shutting down")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def _result(self, future):
        """The batcher's answer; given up once the server shuts down (its batcher stops answering)."""
        while True:
            try:
                return future.result(timeout=0.5)
            except concurrent.futures.TimeoutError:
                if self.closing.is_set():
                    future.cancel()
                    raise RuntimeError("the server is shutting down") from None

    async def _exclusive(self, values: np.ndarray, mask: np.ndarray | None):
        """A language's adapters are an input of the whole batch: such windows run alone, in the batcher's
        inference thread (so never beside another call), with the shared runner's adapters put back after."""

        def run():
            saved, self.runner.adapter_weights = self.runner.adapter_weights, self.adapter_weights
            try:
                return self.runner.infer(values, mask)
            finally:
                self.runner.adapter_weights = saved

        return await asyncio.get_running_loop().run_in_executor(self.batcher.executor, run)


def _request_recognizer(model: ServedModel, runner: _BatchedRunner, language: str | None) -> Recognizer:
    """A shallow copy of the served Recognizer for one request: its own runner (the batcher) and, for
    multi-language bundles, its own language choice."""
    rec = copy.copy(model.recognizer)
    rec.runner = runner
    if model.languages:  # each request's items carry their own per-language outputs (MultiItem)
        rec.language = language
    return rec


@dataclass
class _Params:
    model: ServedModel
    language: str | None
    response_format: str
    granularities: list[str]


class TranscriptionApi:
    """The /v1 endpoints. `server` gives `models` (name -> ServedModel, batchers started) and `draining`."""

    def __init__(self, server: Any, options: HttpOptions) -> None:
        self.server = server
        self.options = options
        self.executor = ThreadPoolExecutor(options.workers, thread_name_prefix="xlsr-http")
        self.closing = threading.Event()  # set at shutdown: workers stop waiting for the batcher
        self.folder = Path(tempfile.mkdtemp(prefix="xlsr-edge-uploads-"))
        self.in_flight = 0
        self.served = 0
        self.refused = 0
        self.created = int(time.time())

    def close(self) -> None:
        """After the requests ended (or the shutdown grace): stop the workers, remove what uploads left."""
        self.closing.set()
        self.executor.shutdown(wait=True)
        for p in self.folder.glob("*"):
            p.unlink(missing_ok=True)
        self.folder.rmdir()

    def status(self) -> dict[str, Any]:
        return {"http_in_flight": self.in_flight, "http_served": self.served, "http_refused": self.refused}

    # -- endpoints --------------------------------------------------------------------------------------------

    async def models(self, request):
        from starlette.responses import JSONResponse

        return JSONResponse(
            {"object": "list", "data": [self._model_json(m) for m in self.server.models.values()]}
        )

    async def model(self, request):
        from starlette.responses import JSONResponse

        name = request.path_params["model"]
        if name not in self.server.models:
            return error_response(404, f"the model {name!r} does not exist", "model", "model_not_found")
        return JSONResponse(self._model_json(self.server.models[name]))

    async def translations(self, request):
        await drain(request.receive)
        return error_response(
            400,
            "translations are not supported: these models transcribe speech in the language it is spoken",
            None,
            "unsupported",
        )

    async def not_found(self, request):
        await drain(request.receive)
        path = request.url.path.rstrip("/")
        if path in ("/v1/audio/transcriptions", "/v1/audio/translations"):
            return error_response(405, f"{path} takes POST, not {request.method}", None, "method_not_allowed")
        return error_response(
            404, f"no such endpoint: {request.method} {request.url.path}", None, "not_found"
        )

    async def transcriptions(self, request):
        if self.server.draining or self.in_flight >= self.options.max_requests:
            self.refused += 1
            await drain(request.receive)
            if self.server.draining:
                return error_response(503, "the server is shutting down", None, "shutting_down")
            return error_response(
                429,
                f"the server is busy: {self.options.max_requests} transcriptions in flight; try again shortly",
                None,
                "queue_full",
            )
        self.in_flight += 1
        try:
            return await self._transcription(request)
        except (ApiError, UploadError) as exc:
            return error_response(exc.status, str(exc), exc.param, exc.code)
        finally:
            self.in_flight -= 1

    # -- work ---------------------------------------------------------------------------------------------------

    async def _transcription(self, request):
        from starlette.responses import JSONResponse, Response

        upload = await receive_upload(
            request.scope, request.receive, self.options.max_upload_bytes, self.folder
        )
        try:
            params = self._params(upload)
            loop = asyncio.get_running_loop()
            t = await loop.run_in_executor(self.executor, self._run, params, upload.path, loop)
        finally:
            upload.close()
        if t.error is not None:
            raise ApiError(400, t.error.replace(str(upload.path), upload.filename), "file", "invalid_audio")
        self.served += 1
        body = render(
            params.response_format,
            text=t.text,
            words=t.words,
            duration=t.duration,
            language=t.language or params.language or "unknown",
            granularities=params.granularities,
        )
        media_type = MEDIA_TYPES[params.response_format]
        if isinstance(body, dict):
            return JSONResponse(body, media_type=media_type)
        return Response(body, media_type=media_type)

    def _run(self, params: _Params, path: Path, loop: asyncio.AbstractEventLoop) -> Transcript:
        """In a worker thread: the whole `transcribe` pipeline, with inference through the batcher."""
        runner = _BatchedRunner(params.model, loop, self.closing)
        rec = _request_recognizer(params.model, runner, params.language)
        return rec.transcribe([path], self.options.transcribe)[0]

    def _params(self, upload: Upload) -> _Params:
        fmt = upload.get("response_format") or "json"
        if fmt not in RESPONSE_FORMATS:
            raise ApiError(
                400,
                f"response_format {fmt!r} is not one of {', '.join(RESPONSE_FORMATS)}",
                "response_format",
                "invalid_value",
            )
        granularities = upload.fields.get("timestamp_granularities[]", []) + upload.fields.get(
            "timestamp_granularities", []
        )
        bad = [g for g in granularities if g not in GRANULARITIES]
        if bad:
            raise ApiError(
                400,
                f"timestamp_granularities {bad[0]!r} is not one of {', '.join(GRANULARITIES)}",
                "timestamp_granularities",
                "invalid_value",
            )
        if granularities and fmt != "verbose_json":
            raise ApiError(
                400,
                "timestamp_granularities need response_format verbose_json",
                "timestamp_granularities",
                "invalid_value",
            )
        temperature = upload.get("temperature")
        if (
            temperature is not None
        ):  # accepted and ignored (CTC decoding does not sample), but must be a number
            try:
                float(temperature)
            except ValueError:
                raise ApiError(
                    400, f"temperature must be a number, got {temperature!r}", "temperature"
                ) from None
        if (upload.get("stream") or "false").lower() not in ("false", "0"):
            raise ApiError(400, "streamed responses are not supported: use the WebSocket protocol", "stream")
        model = self._model(upload.get("model"))
        return _Params(model, self._language(model, upload.get("language")), fmt, granularities)

    def _model(self, name: str | None) -> ServedModel:
        models = self.server.models
        if name in models:
            return models[name]
        if len(models) == 1:  # one bundle answers to any name ("whisper-1" from a client's defaults)
            return next(iter(models.values()))
        known = ", ".join(models)
        if not name:
            raise ApiError(400, f"model is required: one of {known}", "model", "missing_model")
        raise ApiError(400, f"unknown model {name!r}: this server has {known}", "model", "model_not_found")

    @staticmethod
    def _language(model: ServedModel, language: str | None) -> str | None:
        """Multi-language bundles: the head to use (None: language ID picks). Single-language bundles do not
        record their language: the value is only echoed in verbose_json."""
        language = (language or "").strip() or None
        heads = model.languages
        if not heads:
            return language
        if language is not None and language not in heads:
            raise ApiError(
                400,
                f"unknown language {language!r}: the model {model.name} has {', '.join(heads)}",
                "language",
                "unsupported_language",
            )
        if language is None and getattr(model.recognizer, "lid", None) is None and len(heads) > 1:
            raise ApiError(
                400,
                f"the model {model.name} has no language identification: send language (one of {', '.join(heads)})",
                "language",
                "missing_language",
            )
        return language

    def _model_json(self, m: ServedModel) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": m.name,
            "object": "model",
            "created": self.created,
            "owned_by": "xlsr-edge",
        }
        if m.languages:
            out["languages"] = m.languages
        return out
