"""Multipart uploads for the HTTP API: the body is counted as it streams in and refused past a limit, never
held whole in memory (Starlette's parser spools file parts to disk after 1 MiB), and the file part ends up in a
named temporary file the audio reader can open.

A refused request's remaining body is read and thrown away (up to `DRAIN_SECONDS`) before the answer goes
out: most HTTP clients send the whole body before they read a response, and would report a broken connection
instead of the 413.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DRAIN_SECONDS = 30.0
# an upload that sends nothing this long is refused (408): a stalled body holds no request slot forever
STALL_SECONDS = 30.0
COPY_BLOCK = 1 << 20
MAX_FIELDS = 32
MAX_FIELD_BYTES = 64 * 1024


class UploadError(Exception):
    """A request the upload layer refuses: HTTP status, message, and the form field it concerns."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


@dataclass
class Upload:
    path: Path  # a temporary file, removed by close()
    filename: str
    fields: dict[str, list[str]] = field(default_factory=dict)

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else default

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


class _Counter:
    """An ASGI receive that counts body bytes and raises UploadError(413) past `limit`."""

    def __init__(self, receive, limit: int) -> None:
        self.receive, self.limit, self.seen, self.done = receive, limit, 0, False

    async def __call__(self) -> dict[str, Any]:
        try:
            message = await asyncio.wait_for(self.receive(), STALL_SECONDS)
        except TimeoutError:
            self.done = True  # nothing to drain: the client stopped sending
            raise UploadError(
                408, f"the upload stalled: no data for {STALL_SECONDS:g} s", "file", "upload_stalled"
            ) from None
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            self.done = not message.get("more_body", False)
            if self.seen > self.limit:
                raise too_large(self.limit)
        elif message["type"] == "http.disconnect":
            self.done = True
        return message


def too_large(limit: int) -> UploadError:
    return UploadError(
        413,
        f"the request body is larger than the server's limit of {limit / 2**20:g} MiB (--max-upload-mb)",
        "file",
        "file_too_large",
    )


async def drain(receive, seconds: float = DRAIN_SECONDS) -> None:
    """Read and drop the rest of a request body (bounded in time), so the client gets to read the answer."""
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            message = await asyncio.wait_for(receive(), left)
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
    except (TimeoutError, OSError):
        pass


async def receive_upload(scope, receive, limit: int, folder: Path) -> Upload:
    """The multipart form of a request: its file part (`file`) copied to a temporary file in `folder`, its
    text fields by name. Raises UploadError (400/413/415); the body is drained first where it was refused."""
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.requests import Request

    counter = _Counter(receive, limit)
    try:
        content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
        if not content_type.lower().startswith("multipart/form-data"):
            raise UploadError(
                415,
                f"expected a multipart/form-data body with a 'file' part, got {content_type or 'no Content-Type'!r}",
                "file",
                "unsupported_media_type",
            )
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_large(limit)
        request = Request(scope, counter)
        try:
            form = await request.form(max_files=1, max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES)
        except HTTPException as exc:  # the parser's 400s: bad multipart, too many parts, field too long
            raise UploadError(400, f"malformed multipart body: {exc.detail}", "file") from None
        try:
            part = form.get("file")
            if not isinstance(part, UploadFile):
                raise UploadError(400, "the 'file' part (the audio) is missing", "file", "missing_file")
            fields: dict[str, list[str]] = {}
            for key, value in form.multi_items():
                if isinstance(value, str):
                    fields.setdefault(key, []).append(value)
            filename = part.filename or "upload"
            suffix = "".join(c for c in Path(filename).suffix[:16] if c.isalnum() or c == ".")
            path = await asyncio.to_thread(_copy, part.file, folder, suffix)
            return Upload(path, filename, fields)
        finally:
            await form.close()
    except UploadError:
        if not counter.done:
            await drain(receive)
        raise


def _copy(source, folder: Path, suffix: str) -> Path:
    source.seek(0)
    with tempfile.NamedTemporaryFile(dir=folder, suffix=suffix, delete=False) as out:
        shutil.copyfileobj(source, out, COPY_BLOCK)
    return Path(out.name)
