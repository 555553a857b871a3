"""Live streams (issue 16): the Stream API, the Silero VAD, `xlsr-edge stream` and the WebSocket server.

Runs on the shipped demo model (trained, so its transcripts are words and its logits are peaked) exported once
for this module. Servers listen on 127.0.0.1 only, every client talks to loopback, with bounded counts and
timeouts.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from xlsr_edge.runtime.audio import load_audio

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "demo-tr"
TEST_DIR = DEMO / "test"
RATE = 16000

pytestmark = pytest.mark.skipif(
    not (DEMO / "config.json").is_file(), reason="the demo model is not in this checkout (make demo-model)"
)


# -- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(demo_fp32_bundle) -> Path:
    return demo_fp32_bundle


@pytest.fixture(scope="module")
def rec(bundle):
    from xlsr_edge.runtime import Recognizer

    with Recognizer.from_bundle(bundle, threads=1) as r:
        yield r


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [load_audio(p, RATE) for p in sorted(TEST_DIR.glob("*.flac"))[:10]]


def quiet(seconds: float, seed: int = 0) -> np.ndarray:
    """A noise floor (-60 dBFS), not digital silence: what a microphone gives between words."""
    rng = np.random.default_rng(seed)
    return (1e-3 * rng.standard_normal(int(seconds * RATE))).astype(np.float32)


def conversation(utterances: list[np.ndarray], gap: float = 1.0, lead: float = 0.5) -> np.ndarray:
    parts = [quiet(lead, 1)]
    for i, u in enumerate(utterances):
        parts += [u, quiet(gap, 10 + i)]
    return np.concatenate(parts)


def run_stream(rec, audio: np.ndarray, options, cuts: list[int] | None = None) -> list:
    stream = rec.stream(options)
    events, pos = [], 0
    for c in [*(cuts or []), len(audio)]:
        events += stream.accept(audio[pos:c])
        pos = c
    return events + stream.close()


def random_cuts(n: int, seed: int, largest: int = RATE) -> list[int]:
    """Packet boundaries with sizes from 1 sample to `largest`, log-uniform (many tiny, some long)."""
    rng = np.random.default_rng(seed)
    sizes = np.exp(rng.uniform(0.0, np.log(largest), size=4 * n // largest + 400)).astype(int)
    cuts = np.cumsum(np.maximum(sizes, 1))
    return [int(c) for c in cuts[cuts < n]]


def finals(events) -> list:
    return [e for e in events if e.type == "final"]


def options(**kw):
    from xlsr_edge.runtime.stream import StreamOptions

    return StreamOptions(**kw)


# -- the Stream API ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {},  # defaults: VAD, chunk 1 s, left 2 s, right 0.25 s
        {"vad": None, "chunk_seconds": 0.5, "right_context_seconds": 0.0, "max_utterance_seconds": 4.0},
    ],
    ids=["vad", "no-vad-cuts"],
)
def test_random_packet_sizes_give_the_same_events_as_one_packet(rec, clips, kw):
    audio = conversation(clips[:3])
    whole = run_stream(rec, audio, options(**kw))
    assert finals(whole) and any(e.type == "partial" for e in whole)
    for seed in (0, 1):
        assert run_stream(rec, audio, options(**kw), random_cuts(len(audio), seed)) == whole
    # int16 PCM gives what the same samples as float32 give
    pcm = np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16)
    as_float = pcm.astype(np.float32) / 32768.0
    assert run_stream(rec, pcm, options(**kw), random_cuts(len(pcm), 2)) == run_stream(
        rec, as_float, options(**kw)
    )


def test_finals_are_never_revised(rec, clips):
    """Once a final is out, nothing later covers its span: later events start at or after its end, finals
    tile forward in time, and the finals seen so far are a prefix of the finals at the end."""
    audio = conversation(clips[3:6], gap=0.8)
    for kw in ({}, {"vad": None, "max_utterance_seconds": 4.0, "chunk_seconds": 0.5}):
        stream = rec.stream(options(**kw))
        seen: list = []
        snapshots = []
        for c0, c1 in zip([0, *random_cuts(len(audio), 3)], [*random_cuts(len(audio), 3), len(audio)]):
            seen += stream.accept(audio[c0:c1])
            snapshots.append([e for e in seen if e.type == "final"])
        seen += stream.close()
        all_finals = finals(seen)
        assert len(all_finals) >= 2
        for snap in snapshots:
            assert all_finals[: len(snap)] == snap
        last_end = 0.0
        for e in seen:
            assert e.start >= last_end - 1e-9, f"{e} starts inside an earlier final (ends {last_end})"
            assert e.end >= e.start
            for w in e.words:
                assert e.start - 1e-9 <= w.start <= w.end <= e.end + 1e-9
            if e.type == "final":
                last_end = e.end


def test_chunk_longer_than_the_file_gives_the_offline_transcript(rec, clips):
    for clip in clips[:3]:
        offline = rec.transcribe([clip])[0]
        events = run_stream(rec, clip, options(vad=None, chunk_seconds=60.0), random_cuts(len(clip), 4))
        (final,) = finals(events)
        assert final.text == offline.text
        got = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)} for w in final.words]
        assert got == offline.words
        assert final.start == 0.0 and final.end == pytest.approx(len(clip) / RATE)


def test_vad_splits_two_utterances_separated_by_one_second_of_silence(rec, clips):
    a, b = clips[1], clips[2]
    audio = conversation([a, b], gap=1.0, lead=0.5)
    b_start = (0.5 * RATE + len(a) + RATE) / RATE
    events = run_stream(rec, audio, options())
    got = finals(events)
    assert len(got) == 2, [e.text for e in got]
    first, second = got
    assert first.text and second.text
    assert first.end <= b_start < second.end
    assert 0.5 + len(a) / RATE <= second.start + 0.5  # the second starts after the first utterance's speech
    # without VAD (and a long max length) the same audio is one utterance
    assert len(finals(run_stream(rec, audio, options(vad=None)))) == 1
    # each final reads like the clip alone (the windows differ, so allow a few characters)
    for final, clip in ((first, a), (second, b)):
        offline = rec.transcribe([clip])[0].text
        assert _cer(offline, final.text) < 0.15, (offline, final.text)


def test_silence_gives_no_events(rec):
    assert run_stream(rec, quiet(3.0), options()) == []


def test_max_utterance_length_cuts_without_vad(rec, clips):
    audio = conversation(clips[:4], gap=0.3)
    got = finals(run_stream(rec, audio, options(vad=None, max_utterance_seconds=4.0)))
    assert len(got) >= len(audio) / RATE / 4.0 - 1
    for prev, nxt in zip(got, got[1:]):
        assert nxt.start == pytest.approx(prev.end)  # without VAD, utterances tile the stream
    assert all(f.end - f.start <= 4.0 + 1e-6 for f in got)


def test_resampled_input_matches_offline_resampling(rec, clips):
    """8 kHz packets resampled on the fly (soxr's stream) give what the offline front end gives the file."""
    import soxr

    for clip in clips[:2]:
        at_8k = soxr.resample(clip, RATE, 8000).astype(np.float32)
        offline = rec.transcribe([at_8k], sample_rate=8000)[0]
        opts = options(vad=None, chunk_seconds=60.0, sample_rate=8000)
        (final,) = finals(run_stream(rec, at_8k, opts, random_cuts(len(at_8k), 5, 8000)))
        assert final.text == offline.text and final.end == pytest.approx(offline.duration, abs=1e-3)
    # with VAD and short chunks, 8 kHz input still ends utterances at the pauses
    audio = conversation(clips[:2])
    at_8k = soxr.resample(audio, RATE, 8000).astype(np.float32)
    assert (
        len(finals(run_stream(rec, at_8k, options(sample_rate=8000), random_cuts(len(at_8k), 6, 8000)))) == 2
    )


def test_vad_probabilities_do_not_depend_on_blocking():
    from xlsr_edge.runtime.vad import VAD_FRAME, SileroVad

    vad = SileroVad.shared()
    x = np.concatenate([quiet(0.5), load_audio(sorted(TEST_DIR.glob("*.flac"))[0], RATE)])
    x = x[: len(x) // VAD_FRAME * VAD_FRAME]
    one = vad.probabilities(vad.new_state(), x)
    state, parts, pos = vad.new_state(), [], 0
    for n in (1, 7, 2, 31, 1, 3):
        parts.append(vad.probabilities(state, x[pos : pos + n * VAD_FRAME]))
        pos += n * VAD_FRAME
    parts.append(vad.probabilities(state, x[pos:]))
    np.testing.assert_array_equal(np.concatenate(parts), one)
    assert one[: int(0.4 * RATE / VAD_FRAME)].max() < 0.5 < one.max()


def test_stream_rejects_bad_input(rec):
    from xlsr_edge.errors import AudioError, XlsrEdgeError

    s = rec.stream(options())
    with pytest.raises(AudioError):
        s.accept(np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(AudioError):
        s.accept(np.array([0.0, np.nan], dtype=np.float32))
    s.close()
    with pytest.raises(XlsrEdgeError):
        s.accept(np.zeros(10, dtype=np.float32))
    with pytest.raises(ValueError):
        options(chunk_seconds=0)


def _cer(ref: str, hyp: str) -> float:
    from xlsr_edge.measure.metrics import error_rates

    return error_rates([ref], [hyp]).cer


# -- xlsr-edge stream ----------------------------------------------------------------------------------------


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xlsr_edge", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        **kw,
    )


def test_stream_cli_reads_stdin_pcm_and_flushes_each_final_as_it_happens(bundle, rec, clips):
    a, b = clips[4], clips[5]
    first = np.concatenate([quiet(0.3), a, quiet(1.0, 2)])
    pcm1 = (np.clip(first, -1, 1) * 32767).astype("<i2")
    pcm2 = (np.clip(np.concatenate([b, quiet(0.5, 3)]), -1, 1) * 32767).astype("<i2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "xlsr_edge", "stream", str(bundle), "-", "--threads", "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        proc.stdin.write(pcm1.tobytes()[:-1])  # an odd byte count: the half sample waits for the next read
        proc.stdin.flush()
        # the first utterance's final comes while stdin is still open
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, proc.stderr.read().decode()
            lines.append(json.loads(line))
            if lines[-1]["type"] == "final":
                break
        assert lines[-1]["type"] == "final" and lines[-1]["text"]
        proc.stdin.write(pcm1.tobytes()[-1:] + pcm2.tobytes())
        proc.stdin.close()
        rest = proc.stdout.read().decode()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    lines += [json.loads(x) for x in rest.splitlines()]
    for line in lines:
        assert set(line) == {"type", "text", "start", "end", "words"}
    audio = np.concatenate([pcm1, pcm2]).astype(np.float32) / 32768.0
    expected = [e.to_json() for e in run_stream(rec, audio, options())]
    assert lines == expected


def test_stream_cli_files_and_user_errors(bundle, tmp_path, clips):
    import soundfile as sf

    wav = tmp_path / "two.wav"
    sf.write(wav, conversation(clips[:2]), RATE, subtype="PCM_16")
    r = _cli("stream", str(bundle), str(wav), "--no-partials", "--threads", "1")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["type"] for x in lines] == ["final", "final"] and all(x["audio"] == str(wav) for x in lines)
    for args, what in (
        (["stream", str(bundle), str(tmp_path / "missing.wav")], "no such file"),
        (["stream", str(bundle), str(wav), "--chunk-seconds", "0"], "--chunk-seconds must be > 0"),
        (["stream", str(bundle), str(wav), "--max-utterance-seconds", "inf"], "must be a finite number"),
        (["stream", str(bundle), "-", "--sample-rate", "1"], "--sample-rate must be >= 8000"),
        (["stream", str(tmp_path / "no-bundle"), str(wav)], ""),
        (["stream", str(bundle), "-", str(wav)], "stdin"),
    ):
        r = _cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and what in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


# -- the WebSocket server -------------------------------------------------------------------------------------


def _pcm(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


async def _client(url: str, audio: bytes, *, packet: int = 3200, config: dict | None = None, seed: int = 0):
    """Send audio in packets of random size, then eof; return (events, close code)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    rng = np.random.default_rng(seed)
    events = []
    async with connect(url, compression=None, open_timeout=20) as ws:

        async def reader():
            try:
                async for msg in ws:
                    events.append(json.loads(msg))
            except ConnectionClosed:
                pass

        task = asyncio.ensure_future(reader())
        try:
            if config is not None:
                await ws.send(json.dumps({"config": config}))
            pos = 0
            while pos < len(audio):
                n = 2 * int(rng.integers(1, packet))
                await ws.send(audio[pos : pos + n])
                pos += n
            await ws.send(json.dumps({"eof": True}))
        except ConnectionClosed:
            pass
        await asyncio.wait_for(task, 60)
    return events, ws.close_code


def _server_test(rec, body, **server_kw):
    """Run `body(url, server)` against an in-process server on 127.0.0.1, bounded in time."""
    from xlsr_edge.runtime.server import ServerOptions, StreamServer

    pytest.importorskip("websockets")

    async def main():
        server = StreamServer(rec, options(), ServerOptions(**server_kw))
        host, port = await server.start("127.0.0.1", 0)
        try:
            return await asyncio.wait_for(body(f"ws://{host}:{port}", server), 120)
        finally:
            await server.shutdown()

    return asyncio.run(main())


def _expected_finals(rec, audio: np.ndarray, **kw) -> list[dict]:
    pcm = np.frombuffer(_pcm(audio), dtype="<i2")
    return [e.to_json() for e in finals(run_stream(rec, pcm, options(**kw)))]


def _final_frames(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "final"]


def _same_finals(got: list[dict], expected: list[dict]) -> None:
    """Same text and span; word times within one frame (a padded batch may move a frame boundary)."""
    assert [e["text"] for e in got] == [e["text"] for e in expected]
    for g, x in zip(got, expected):
        assert (g["start"], g["end"]) == (x["start"], x["end"])
        for gw, xw in zip(g["words"], x["words"]):
            assert gw["word"] == xw["word"]
            assert abs(gw["start"] - xw["start"]) <= 0.021 and abs(gw["end"] - xw["end"]) <= 0.021


def test_server_eight_concurrent_clients_get_the_stream_api_finals(rec, clips):
    audios = [conversation([clips[i], clips[(i + 3) % len(clips)]], gap=0.8) for i in range(8)]

    async def body(url, server):
        results = await asyncio.gather(*(_client(url, _pcm(a), seed=i) for i, a in enumerate(audios)))
        return results, server.status()

    results, status = _server_test(rec, body, max_streams=8, max_speed=0)
    for (events, code), audio in zip(results, audios):
        assert code == 1000
        _same_finals(_final_frames(events), _expected_finals(rec, audio))
    assert status["windows"] > status["inference_calls"]  # windows of several streams shared calls


def test_server_junk_client_gets_an_error_while_the_others_finish(rec, clips):
    pytest.importorskip("websockets")
    from websockets.asyncio.client import connect

    audios = [conversation([clips[i]]) for i in (6, 7)]

    async def junk(url, frames):
        async with connect(url, open_timeout=20) as ws:
            for f in frames:
                await ws.send(f)
            msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
            await ws.wait_closed()
            return msg, ws.close_code

    async def body(url, server):
        return await asyncio.gather(
            _client(url, _pcm(audios[0]), seed=1),
            junk(url, [_pcm(audios[1])[:6400], "this is not json"]),
            junk(url, [b"\x01\x02\x03"]),  # half a sample
            junk(url, [json.dumps({"config": {"chunk_seconds": 100}})]),
            junk(url, [_pcm(audios[1])[:6400], json.dumps({"config": {"sample_rate": 8000}})]),
            _client(url, _pcm(audios[1]), seed=2),
        )

    ok1, *bad, ok2 = _server_test(rec, body, max_streams=8, max_speed=0)
    for msg, code in bad:
        assert msg["type"] == "error" and msg["error"] and code == 1008
    for (events, code), audio in ((ok1, audios[0]), (ok2, audios[1])):
        assert code == 1000
        _same_finals(_final_frames(events), _expected_finals(rec, audio))


def test_server_max_streams_refusal_and_a_vanished_client_frees_its_slot(rec, clips):
    pytest.importorskip("websockets")
    from websockets.asyncio.client import connect

    audio = conversation([clips[8]])

    async def body(url, server):
        first = await connect(url, open_timeout=20)
        await first.send(_pcm(audio)[:16000])
        await asyncio.sleep(0.2)
        async with connect(url, open_timeout=20) as second:
            refusal = json.loads(await asyncio.wait_for(second.recv(), 30))
            await second.wait_closed()
        refused_code = second.close_code
        first.transport.abort()  # vanish without a closing handshake
        for _ in range(100):
            if server.status()["streams"] == 0:
                break
            await asyncio.sleep(0.05)
        health_url = url.replace("ws://", "http://") + "/health"
        health = json.loads(
            await asyncio.to_thread(lambda: urllib.request.urlopen(health_url, timeout=10).read())
        )
        events, code = await _client(url, _pcm(audio), seed=3)
        return refusal, refused_code, health, events, code

    refusal, refused_code, health, events, code = _server_test(rec, body, max_streams=1, max_speed=0)
    assert refusal["type"] == "error" and "busy" in refusal["error"] and refused_code == 1013
    assert health["status"] == "ok" and health["streams"] == 0 and health["refused"] == 1
    assert code == 1000
    _same_finals(_final_frames(events), _expected_finals(rec, audio))


def test_server_throttles_a_client_faster_than_real_time(rec, clips):
    audio = conversation([clips[9], clips[0]], gap=0.5)  # about 10 s
    seconds = len(audio) / RATE

    async def body(url, server):
        t0 = time.monotonic()
        events, code = await _client(url, _pcm(audio), packet=16000, seed=4)
        return events, code, time.monotonic() - t0

    events, code, took = _server_test(rec, body, max_speed=4.0, burst_seconds=1.0)
    assert code == 1000 and _final_frames(events)
    assert took >= (seconds - 1.0) / 4.0 - 0.1


def test_server_config_resamples_8k(rec, clips):
    import soxr

    audio = conversation([clips[1]])
    at_8k = soxr.resample(audio, RATE, 8000).astype(np.float32)

    async def body(url, server):
        return await _client(url, _pcm(at_8k), config={"sample_rate": 8000, "chunk_seconds": 0.5}, seed=5)

    events, code = _server_test(rec, body, max_speed=0)
    assert code == 1000
    pcm = np.frombuffer(_pcm(at_8k), dtype="<i2")
    expected = finals(run_stream(rec, pcm, options(sample_rate=8000, chunk_seconds=0.5)))
    _same_finals(_final_frames(events), [e.to_json() for e in expected])


def test_serve_sigterm_flushes_finals_and_exits_0(bundle, clips):
    pytest.importorskip("websockets")
    from websockets.asyncio.client import connect

    proc = subprocess.Popen(
        [sys.executable, "-m", "xlsr_edge", "serve", str(bundle), "--host", "127.0.0.1", "--port", "0"]
        + ["--threads", "1", "--max-speed", "0"],
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stderr.readline().decode()
        assert "listening on ws://127.0.0.1:" in line, line + proc.stderr.read().decode()
        port = int(line.split("ws://127.0.0.1:")[1].split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as health:
            assert health.status == 200 and json.loads(health.read())["status"] == "ok"

        async def client():
            events = []
            async with connect(f"ws://127.0.0.1:{port}", open_timeout=20) as ws:
                await ws.send(_pcm(np.concatenate([quiet(0.3), clips[2]])))  # speech still going: no eof
                for _ in range(100):  # wait until the server has the stream's first partial
                    events.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
                    if events[-1]["type"] == "partial":
                        break
                proc.send_signal(signal.SIGTERM)
                async for msg in ws:
                    events.append(json.loads(msg))
            return events, ws.close_code

        events, code = asyncio.run(asyncio.wait_for(client(), 60))
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.stderr.close()
    assert code == 1001
    got = _final_frames(events)
    assert len(got) == 1 and got[0]["text"]


# -- issue 23: idle clients, fast clients' keepalive, hostile frames ----------------------------------------


def test_server_idle_client_is_closed_and_frees_its_slot(rec, clips):
    """A client that sends nothing (or stops sending) is closed after idle_timeout_seconds with 1008; one that
    sent speech gets its finals first."""
    pytest.importorskip("websockets")
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    audio = conversation([clips[3]])

    async def silent(url):
        async with connect(url, open_timeout=20) as ws:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
            await asyncio.wait_for(ws.wait_closed(), 10)
            return msg, ws.close_code

    async def stops_sending(url):
        events = []
        async with connect(url, open_timeout=20) as ws:
            await ws.send(_pcm(audio))  # no eof
            try:
                async for m in ws:
                    events.append(json.loads(m))
            except ConnectionClosed:
                pass
        return events, ws.close_code

    async def body(url, server):
        idle = await asyncio.wait_for(silent(url), 15)
        events, code = await asyncio.wait_for(stops_sending(url), 30)
        for _ in range(100):
            if server.status()["streams"] == 0:
                break
            await asyncio.sleep(0.05)
        return idle, events, code, server.status()

    (msg, idle_code), events, code, status = _server_test(
        rec, body, max_streams=1, max_speed=0, idle_timeout_seconds=1.0
    )
    assert msg["type"] == "error" and "idle" in msg["error"] and idle_code == 1008
    assert code == 1008 and events[-1]["type"] == "error"
    _same_finals(_final_frames(events), _expected_finals(rec, audio))
    assert status["streams"] == 0 and status["refused"] == 0  # the second client got the only slot


def test_server_slows_a_fast_client_without_dropping_it(rec, clips):
    """A client far faster than max_speed, with its own keepalive pings: the pings are answered while its
    audio waits, so it is slowed, not closed with 1011 'keepalive ping timeout', and gets every final."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    audio = conversation([clips[i] for i in range(4)], gap=0.8)  # about 20 s
    pcm = _pcm(audio)

    async def fast(url):
        events = []
        async with connect(url, ping_interval=0.5, ping_timeout=2.0, compression=None, open_timeout=20) as ws:

            async def reader():
                try:
                    async for m in ws:
                        events.append(json.loads(m))
                except ConnectionClosed:
                    pass

            task = asyncio.ensure_future(reader())
            try:
                for i in range(0, len(pcm), 3200):  # 100 ms packets, as fast as the socket takes them
                    await ws.send(pcm[i : i + 3200])
                await ws.send(json.dumps({"eof": True}))
            except ConnectionClosed:
                pass
            await asyncio.wait_for(task, 60)
        return events, ws.close_code, ws.close_reason

    async def body(url, server):
        t0 = time.monotonic()
        result = await fast(url)
        return *result, time.monotonic() - t0

    events, code, reason, took = _server_test(rec, body, max_speed=4.0, burst_seconds=1.0)
    assert code == 1000, (code, reason)
    _same_finals(_final_frames(events), _expected_finals(rec, audio))
    assert took >= (len(audio) / RATE - 1.0) / 4.0 - 0.1  # still read at max_speed


def test_server_hostile_frames_get_1008_or_1009_not_internal_errors(rec, clips):
    pytest.importorskip("websockets")
    from websockets.asyncio.client import connect

    deep = '{"config": ' + "[" * 50_000 + "]" * 50_000 + "}"

    async def send(url, frame):
        async with connect(url, open_timeout=20, max_size=None) as ws:
            await ws.send(frame)
            try:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
            except Exception:  # noqa: BLE001 - a frame over the limit gets only the close
                msg = None
            await asyncio.wait_for(ws.wait_closed(), 30)
            return msg, ws.close_code

    async def body(url, server):
        return await asyncio.gather(send(url, deep), send(url, b"\0" * (1 << 20)))

    (msg, code), (_, big_code) = _server_test(rec, body, max_speed=0)
    assert code == 1008 and msg["type"] == "error" and "JSON" in msg["error"], (code, msg)
    assert big_code == 1009
