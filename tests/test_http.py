"""The OpenAI-compatible HTTP API of `xlsr-edge serve` (issue 24): the official `openai` client against a server
on 127.0.0.1, every response format, bad uploads, the queue limit, API keys, several bundles and languages.

Runs on the shipped demo model exported once for this module; servers listen on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "demo-tr"
CLIPS = sorted((DEMO / "test").glob("*.flac"))[:4]

pytestmark = [
    pytest.mark.skipif(
        not (DEMO / "config.json").is_file(),
        reason="the demo model is not in this checkout (make demo-model)",
    ),
    pytest.mark.skipif(
        any(
            __import__("importlib").util.find_spec(m) is None
            for m in ("starlette", "uvicorn", "python_multipart", "httpx", "openai")
        ),
        reason="needs the stream extra and the dev test clients (pip install -e '.[dev]')",
    ),
]


# -- fixtures and helpers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(demo_fp32_bundle) -> Path:
    return demo_fp32_bundle


@pytest.fixture(scope="module")
def rec(bundle):
    from xlsr_edge.runtime import Recognizer

    with Recognizer.from_bundle(bundle, threads=1) as r:
        yield r


class ServerThread:
    """A StreamServer on 127.0.0.1 in its own thread and event loop, for blocking clients (openai, httpx,
    selenium). `with ServerThread(rec, ...) as s: s.url`."""

    def __init__(self, rec, **kwargs) -> None:
        self.rec, self.kwargs = rec, kwargs
        self.loop = asyncio.new_event_loop()
        self.server = None
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from xlsr_edge.runtime.server import StreamServer

        asyncio.set_event_loop(self.loop)
        try:
            self.server = StreamServer(self.rec, **self.kwargs)
            self.address = self.loop.run_until_complete(self.server.start("127.0.0.1", 0))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc
            return
        finally:
            self.ready.set()
        self.loop.run_forever()

    def __enter__(self) -> ServerThread:
        self.thread.start()
        assert self.ready.wait(60), "the server did not start"
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc) -> None:
        if self.error is None:
            asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(60)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def status(self) -> dict:
        return json.loads(urllib.request.urlopen(self.url + "/health", timeout=10).read())


@pytest.fixture(scope="module")
def server(rec):
    from xlsr_edge.runtime.http_api import HttpOptions
    from xlsr_edge.runtime.server import ServerOptions

    with ServerThread(
        rec,
        name="demo-tr",
        options=ServerOptions(max_wait_ms=50.0),
        http=HttpOptions(max_upload_mb=1.0),
    ) as s:
        yield s


def transcribe_cli(bundle: Path, clips: list[Path]) -> list[dict]:
    """`xlsr-edge transcribe --json` on the clips: what the HTTP answers must equal."""
    out = subprocess.run(
        [sys.executable, "-m", "xlsr_edge", "transcribe", str(bundle), *map(str, clips), "--json"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture(scope="module")
def expected(bundle) -> dict[str, dict]:
    return {Path(r["audio"]).name: r for r in transcribe_cli(bundle, CLIPS)}


def openai_client(url: str, key: str = "none"):
    from openai import OpenAI

    return OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


def post(url: str, files=None, data=None, headers=None, **kw):
    import httpx

    return httpx.post(
        url + "/v1/audio/transcriptions", files=files, data=data, headers=headers, timeout=60, **kw
    )


def srt_texts(body: str) -> list[str]:
    """The text lines of an SRT or VTT body (no cue numbers, times or header)."""
    return [
        line
        for line in body.splitlines()
        if line and line != "WEBVTT" and not line.isdigit() and "-->" not in line
    ]


# -- the openai client ----------------------------------------------------------------------------------------


def test_openai_client_gets_the_transcribe_text_in_every_format(server, expected):
    client = openai_client(server.url)
    for clip in CLIPS:
        want = expected[clip.name]
        with clip.open("rb") as f:
            got = client.audio.transcriptions.create(model="whisper-1", file=f)  # any name: one bundle
        assert got.text == want["text"] and want["text"]
    clip = CLIPS[0]
    want = expected[clip.name]
    with clip.open("rb") as f:
        text = client.audio.transcriptions.create(model="demo-tr", file=f, response_format="text")
    assert text.strip() == want["text"]
    with clip.open("rb") as f:
        verbose = client.audio.transcriptions.create(
            model="demo-tr",
            file=f,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
            language="tr",
            prompt="ignored",
            temperature=0.0,
        )
    assert verbose.text == want["text"] and verbose.language == "tr"
    assert verbose.duration == pytest.approx(want["duration"], abs=1e-3)
    assert [(w.word, w.start, w.end) for w in verbose.words] == [
        (w["word"], w["start"], w["end"]) for w in want["words"]
    ]
    assert " ".join(s.text for s in verbose.segments) == want["text"]
    assert [s.id for s in verbose.segments] == list(range(len(verbose.segments)))
    assert verbose.segments[0].start == want["words"][0]["start"]
    assert verbose.segments[-1].end == want["words"][-1]["end"]
    for fmt in ("srt", "vtt"):
        with clip.open("rb") as f:
            body = client.audio.transcriptions.create(model="demo-tr", file=f, response_format=fmt)
        assert " ".join(srt_texts(body)) == want["text"]
        stamp = r"\d\d:\d\d:\d\d" + ("," if fmt == "srt" else r"\.") + r"\d\d\d"
        assert re.search(stamp + " --> " + stamp, body)
    assert body.startswith("WEBVTT\n")
    models = client.models.list()
    assert [m.id for m in models.data] == ["demo-tr"]


def test_concurrent_requests_share_inference_calls(server, expected):
    from concurrent.futures import ThreadPoolExecutor

    before = server.status()
    client = openai_client(server.url)

    def one(clip: Path) -> str:
        with clip.open("rb") as f:
            return client.audio.transcriptions.create(model="demo-tr", file=f).text

    clips = [CLIPS[i % len(CLIPS)] for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        texts = list(pool.map(one, clips))
    after = server.status()
    assert texts == [expected[c.name]["text"] for c in clips]
    calls = after["inference_calls"] - before["inference_calls"]
    windows = after["windows"] - before["windows"]
    assert windows == 12 and calls < windows  # windows of several requests shared calls


# -- bad requests -------------------------------------------------------------------------------------------


def test_bad_uploads_get_openai_errors_and_the_server_stays_up(server, expected, tmp_path):
    import openai
    import soundfile as sf

    from xlsr_edge.runtime.audio import load_audio

    wav = tmp_path / "clip.wav"
    sf.write(wav, load_audio(CLIPS[1], 16000), 16000, subtype="PCM_16")
    data = wav.read_bytes()
    truncated = data[: len(data) // 2]  # the header still claims the whole clip
    cases = {
        "text": (("notes.wav", b"this is a text file, not audio\n" * 20), 400, "invalid_audio"),
        "empty": (("empty.wav", b""), 400, "invalid_audio"),
        "too large": (("big.wav", os.urandom(3 * 2**20)), 413, "file_too_large"),
    }
    for name, (file, status, code) in cases.items():
        r = post(server.url, files={"file": file}, data={"model": "demo-tr"})
        assert r.status_code == status, (name, r.text)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, name
        assert error["type"] == "invalid_request_error" and error["message"], name
    r = post(server.url, files={"file": ("cut.wav", truncated)})  # its header claims twice the data
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_audio"
    assert (
        "cut.wav" in r.json()["error"]["message"] and "xlsr-edge-uploads" not in r.text
    )  # not our temp name
    # a chunked body (no Content-Length) over the limit: counted while it streams in
    part = b'--zzz\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'
    chunks = iter([part] + [b"x" * 65536] * 40)
    r = post(
        server.url,
        content=chunks,
        headers={"Content-Type": "multipart/form-data; boundary=zzz", "Transfer-Encoding": "chunked"},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"
    r = post(server.url, data={"model": "demo-tr"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    good = ("clip.wav", data)
    for field, value in (
        ("response_format", "xml"),
        ("timestamp_granularities[]", "sentence"),
        ("temperature", "warm"),
    ):
        r = post(server.url, files={"file": good}, data={field: value})
        assert r.status_code == 400 and r.json()["error"]["param"] in (field, "timestamp_granularities")
    r = post(server.url, files={"file": good}, data={"timestamp_granularities[]": "word"})  # json format
    assert r.status_code == 400
    import httpx

    r = httpx.post(server.url + "/v1/audio/translations", files={"file": good}, timeout=30)
    assert r.status_code == 400 and "not supported" in r.json()["error"]["message"]
    assert httpx.get(server.url + "/v1/audio/transcriptions").status_code == 405
    assert httpx.get(server.url + "/v1/nothing").json()["error"]["code"] == "not_found"
    client = openai_client(server.url)
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.transcriptions.create(model="demo-tr", file=("notes.txt", b"hello"))
    assert err.value.code == "invalid_audio"
    # still up: a good request, health, no request left in flight, no upload left on disk
    r = post(server.url, files={"file": good})
    assert r.status_code == 200 and r.json()["text"] == expected[CLIPS[1].name]["text"]
    status = server.status()
    assert status["status"] == "ok" and status["http_in_flight"] == 0
    assert list(server.server.api.folder.iterdir()) == []


def test_requests_over_the_queue_limit_get_429(rec):
    """max_requests=1: while one upload is still arriving, the next request is refused with 429."""
    import httpx

    from xlsr_edge.runtime.http_api import HttpOptions

    clip = CLIPS[2].read_bytes()
    head, tail, content_type = multipart_frame()

    async def main(url: str):
        gate = asyncio.Event()

        async def slow_body():
            yield head + clip[:1000]
            await gate.wait()
            yield clip[1000:] + tail

        async with httpx.AsyncClient(timeout=60) as client:
            first = asyncio.ensure_future(
                client.post(
                    url + "/v1/audio/transcriptions",
                    content=slow_body(),
                    headers={"Content-Type": content_type},
                )
            )
            await asyncio.sleep(0.5)  # the first request is in flight, its body half sent
            second = await client.post(url + "/v1/audio/transcriptions", files={"file": ("b.flac", clip)})
            gate.set()
            return await first, second

    with ServerThread(rec, http=HttpOptions(max_requests=1)) as s:
        first, second = asyncio.run(main(s.url))
        assert second.status_code == 429 and second.json()["error"]["code"] == "queue_full"
        assert first.status_code == 200 and first.json()["text"]
        assert s.status()["http_refused"] == 1


def multipart_frame(boundary: str = "b0undary") -> tuple[bytes, bytes, str]:
    """What goes before and after a file's bytes in a one-part multipart body, and its Content-Type."""
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.flac"\r\n'
        "Content-Type: audio/flac\r\n\r\n"
    ).encode()
    return head, f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_a_stalled_upload_is_dropped_and_frees_its_slot(rec, monkeypatch):
    import httpx

    from xlsr_edge.runtime import uploads

    monkeypatch.setattr(uploads, "STALL_SECONDS", 0.5)
    head, tail, content_type = multipart_frame()

    async def main(s: ServerThread):
        async def stalled():
            yield head + b"RIFF"
            await asyncio.sleep(30)
            yield tail

        async with httpx.AsyncClient(timeout=60) as client:
            task = asyncio.ensure_future(
                client.post(
                    s.url + "/v1/audio/transcriptions",
                    content=stalled(),
                    headers={"Content-Type": content_type},
                )
            )
            await asyncio.sleep(0.3)
            during = await asyncio.to_thread(s.status)
            await asyncio.sleep(1.5)
            after = await asyncio.to_thread(s.status)
            task.cancel()
            return during, after

    with ServerThread(rec) as s:
        during, after = asyncio.run(main(s))
    assert during["http_in_flight"] == 1 and after["http_in_flight"] == 0


# -- API key ------------------------------------------------------------------------------------------------


def test_api_key_guards_http_and_websocket_but_not_the_page(rec):
    import httpx
    import openai
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    with ServerThread(rec, api_key="s3cret") as s:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = httpx.get(s.url + "/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai_client(s.url, "wrong").models.list()
        with CLIPS[0].open("rb") as f:
            assert openai_client(s.url, "s3cret").audio.transcriptions.create(model="m", file=f).text
        r = post(
            s.url, files={"file": ("a.flac", CLIPS[0].read_bytes())}, headers={"Authorization": "Bearer x"}
        )
        assert r.status_code == 401
        assert httpx.get(s.url + "/").status_code == 200 and httpx.get(s.url + "/health").status_code == 200
        ws_url = s.url.replace("http://", "ws://")

        async def ws_cases():
            with pytest.raises(InvalidStatus) as refused:
                async with connect(ws_url + "/", open_timeout=20):
                    pass
            assert refused.value.response.status_code == 401
            assert json.loads(refused.value.response.body)["error"]["code"] == "invalid_api_key"
            out = []
            for url, headers in (
                (ws_url + "/?token=s3cret", None),
                (ws_url, {"Authorization": "Bearer s3cret"}),
            ):
                async with connect(url, additional_headers=headers, open_timeout=20) as ws:
                    await ws.send(json.dumps({"eof": True}))
                    await ws.wait_closed()
                    out.append(ws.close_code)
            return out

        assert asyncio.run(ws_cases()) == [1000, 1000]


def test_non_loopback_without_a_key_is_warned_about():
    from xlsr_edge.commands.serve import exposure_warning

    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("::1", None) is None
    assert exposure_warning("localhost", None) is None and exposure_warning("0.0.0.0", "k") is None
    assert "--api-key" in exposure_warning("0.0.0.0", None)
    assert "--api-key" in exposure_warning("192.168.1.5", "")


# -- several bundles, languages -------------------------------------------------------------------------------


def test_several_bundles_and_language_routing(rec, tmp_path_factory, speech_dir):
    """--bundle NAME=PATH: `model` picks one; a multi-language bundle routes on `language`."""
    import httpx

    from xlsr_edge.export.multi import export_multi
    from xlsr_edge.export.tiny import build_checkpoint
    from xlsr_edge.runtime import Recognizer

    root = tmp_path_factory.mktemp("http-multi")
    alphabets = {"tr": list("abcçdefgğhıijklmnoöprsştuüvyz"), "es": list("abcdefghijlmnñopqrstuvxyzáéíóú")}
    ckpts = {lang: build_checkpoint(root / lang, chars=chars, seed=0) for lang, chars in alphabets.items()}
    export_multi(ckpts, root / "multi")
    clip = sorted(speech_dir.glob("*.wav"))[0]
    with (
        Recognizer.from_bundle(root / "multi", language="tr", threads=1) as multi,
        Recognizer.from_bundle(root / "multi", language="es", threads=1) as es,
    ):
        want = {"tr": multi.transcribe([clip])[0].text, "es": es.transcribe([clip])[0].text}
        with ServerThread(rec, name="demo-tr", models={"multi": multi}) as s:
            models = httpx.get(s.url + "/v1/models").json()["data"]
            assert [m["id"] for m in models] == ["demo-tr", "multi"]
            assert models[1]["languages"] == ["tr", "es"]
            audio = {"file": (clip.name, clip.read_bytes())}
            for lang in ("tr", "es"):
                r = post(
                    s.url,
                    files=audio,
                    data={"model": "multi", "language": lang, "response_format": "verbose_json"},
                )
                assert (
                    r.status_code == 200 and r.json()["text"] == want[lang] and r.json()["language"] == lang
                )
            for data, param, code in (
                ({"model": "multi", "language": "xx"}, "language", "unsupported_language"),
                ({"model": "multi"}, "language", "missing_language"),
                ({"model": "whisper-1"}, "model", "model_not_found"),
                ({}, "model", "missing_model"),
            ):
                error = post(s.url, files=audio, data=data).json()["error"]
                assert (error["param"], error["code"]) == (param, code), data
            r = post(s.url, files={"file": (CLIPS[0].name, CLIPS[0].read_bytes())}, data={"model": "demo-tr"})
            assert r.status_code == 200 and r.json()["text"]


# -- the command ----------------------------------------------------------------------------------------------


def test_serve_cli_bundles_key_from_the_environment_and_sigterm(bundle, expected):
    import httpx

    proc = subprocess.Popen(
        [sys.executable, "-m", "xlsr_edge", "serve", str(bundle), "--bundle", f"second={bundle}"]
        + ["--host", "127.0.0.1", "--port", "0", "--threads", "1", "--max-upload-mb", "2"],
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "XLSR_EDGE_API_KEY": "k3y"},
    )
    try:
        line = proc.stderr.readline().decode()
        assert "listening on ws://127.0.0.1:" in line, line + proc.stderr.read().decode()
        port = int(line.split("ws://127.0.0.1:")[1].split()[0])
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/v1/models").status_code == 401
        client = openai_client(url, "k3y")
        assert [m.id for m in client.models.list().data] == [bundle.name, "second"]
        with CLIPS[0].open("rb") as f:
            text = client.audio.transcriptions.create(model="second", file=f).text
        assert text == expected[CLIPS[0].name]["text"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.stderr.close()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bundle", "nameless"], "NAME=PATH"),
        (["--bundle", "x=/nonexistent/bundle"], "/nonexistent/bundle"),
        (["--max-upload-mb", "0"], "--max-upload-mb"),
        (["--max-upload-mb", "inf"], "--max-upload-mb"),
        (["--idle-timeout-seconds", "-1"], "--idle-timeout-seconds"),
        (["--max-requests", "0"], "--max-requests"),
        (["--max-buffer-mb", "nan"], "--max-buffer-mb"),
    ],
)
def test_serve_cli_refuses_bad_options_in_one_line(bundle, args, message):
    r = subprocess.run(
        [sys.executable, "-m", "xlsr_edge", "serve", str(bundle), "--port", "0", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


# -- formats (no server) ----------------------------------------------------------------------------------------


def test_segments_split_at_pauses_and_subtitle_times():
    from xlsr_edge.runtime.formats import render, segments

    words = [
        {"word": "a", "start": 0.1, "end": 0.3},
        {"word": "b", "start": 0.4, "end": 0.6},
        {"word": "c", "start": 1.2, "end": 1.4},  # after a 0.6 s pause
        {"word": "d", "start": 3725.25, "end": 3726.5},  # past an hour
    ]
    parts = segments("a b c d", words, 3727.0)
    assert [(p.text, p.start, p.end) for p in parts] == [
        ("a b", 0.1, 0.6),
        ("c", 1.2, 1.4),
        ("d", 3725.25, 3726.5),
    ]
    srt = render("srt", text="a b c d", words=words, duration=3727.0, language="x")
    assert srt.splitlines()[:3] == ["1", "00:00:00,100 --> 00:00:00,600", "a b"]
    assert "01:02:05,250 --> 01:02:06,500" in srt
    vtt = render("vtt", text="a b c d", words=words, duration=3727.0, language="x")
    assert vtt.startswith("WEBVTT\n\n00:00:00.100 --> 00:00:00.600\na b\n")
    assert segments("", [], 2.0) == [] and render("srt", text="", words=[], duration=2.0, language="x") == ""
    long_words = [{"word": str(i), "start": i * 0.4, "end": i * 0.4 + 0.3} for i in range(60)]
    assert all(p.end - p.start <= 10.0 for p in segments("", long_words, 30.0))
    verbose = render("verbose_json", text="a b", words=words[:2], duration=1.0, language="tr")
    assert "words" not in verbose and verbose["segments"][0]["text"] == "a b"
    assert np.isclose(verbose["duration"], 1.0)


def test_connections_that_send_no_request_are_closed(rec, monkeypatch):
    """uvicorn has no deadline for a first request: the server adds one, so idle sockets cannot pile up."""
    import socket
    import time

    from xlsr_edge.runtime import asgi

    monkeypatch.setattr(asgi, "FIRST_REQUEST_SECONDS", 0.5)
    with ServerThread(rec) as s:
        socks = [socket.create_connection(s.address, timeout=10) for _ in range(20)]
        t0 = time.monotonic()
        for sock in socks:
            assert sock.recv(1) == b""  # closed by the server
            sock.close()
        assert time.monotonic() - t0 < 5
        assert s.status()["status"] == "ok"


def test_the_web_stack_is_imported_only_when_serving():
    """starlette, uvicorn and multipart stay out of `import xlsr_edge.runtime...` (the extra is optional)."""
    code = (
        "import sys, xlsr_edge.runtime, xlsr_edge.runtime.server, xlsr_edge.runtime.asgi, xlsr_edge.runtime.http_api;"
        "print([m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn', 'python_multipart', 'websockets')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
