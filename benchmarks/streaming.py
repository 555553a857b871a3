"""Streaming benchmark (issue 16): what live recognition costs in accuracy, latency and CPU, and what a server holds.

Sections (``--sections vad,grid,batch,capacity``; each writes its part of results.json):

1. ``vad``: the two candidate VADs on speech + silence built from the shipped clips, the demo test clips and
   espeak-ng sentences in four other voices/languages (24 utterances, gaps 0.4-2 s), clean and with white,
   pink and 50 Hz-hum noise at 20/10/5 dB SNR. Truth: each utterance's span from its clean energy. Reported:
   missed speech and false-alarm share of samples (frame decisions at probability 0.5), the share of
   utterances the endpointer (``runtime.vad.Endpointer``: 0.5 s silence ends an utterance, 0.1 s pad) gives
   as exactly one segment covering it, and CPU ms per audio second (process time, one thread): Silero fed
   100 ms packets through ``SileroVad`` (one ONNX call per packet), webrtcvad (``webrtcvad-wheels``, if
   importable) 30 ms frames at aggressiveness 0-3.
2. ``grid``: chunk x right context (left context fixed, plus a left-context sweep) on the demo model's test set
   (models/demo-tr/test, 30 clips), VAD on. Each clip is its own stream: 0.5 s noise floor (-60 dBFS), the
   clip, 1.0 s noise floor, fed in 20 ms packets as fast as possible. Latencies are what a real-time feed
   would see: the audio time at which the packet that produced the event ends, minus the speech end (start,
   for the first partial; speech found from the clip's energy), plus the wall time of the ``accept`` call that
   returned it. CER of the finals (joined) against the references and against the offline transcript of the
   same clip (``Recognizer.transcribe``); CPU seconds per audio second of the whole stream (process time,
   onnxruntime with --threads).
3. ``capacity``: ``xlsr-edge serve`` in a child process (127.0.0.1, --threads), N WebSocket clients in this
   process, each streaming a 3-clip conversation (1 s gaps) in real time in 100 ms packets, starts spread over
   1 s. Final latency = arrival of the utterance's final - the wall time its speech end was sent. A level
   passes when every utterance got its final and p95 <= 1 s; it fails when two attempts in a row miss that
   (this machine is shared: one load spike is not the server's capacity). Levels grow x1.5 until one fails,
   then bisect;
   two servers, with cross-stream batching (--max-batch 32) and without (--max-batch 1), run at once and their
   ladders advance in lockstep (order alternating), so both see the same load from other processes.

4. ``batch``: wall and CPU ms per window of the default window (chunk 1 s + left 2 s + right 0.25 s) by batch
   size, 1 and 2 onnxruntime threads: how much a batched call saves per window on this machine.

``--model xlsr-300m`` runs on a random-weight model with XLS-R 300M's shape instead (latency, CPU and capacity
only: its transcripts are noise).

Prints JSON and markdown; writes results.json, results.md, latency_vs_cer.png and capacity.png into -o.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from xlsr_edge.measure.bench import environment, markdown_table, plot_bars, summarize, write_json

RATE = 16000
ROOT = Path(__file__).resolve().parents[1]
WHOLE = 60.0  # a chunk longer than any utterance: one window per utterance
DEMO = ROOT / "models" / "demo-tr"
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "sve",
)


def log(msg: str) -> None:
    print(f"[streaming bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_isa() -> list[str]:
    """The SIMD instruction sets /proc/cpuinfo lists (what onnxruntime's kernels can use)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        if line.lower().startswith(("flags", "features")):
            have = set(line.split(":", 1)[1].split())
            return [f for f in ISA_FLAGS if f in have]
    return []


def quiet(seconds: float, seed: int, level: float = 1e-3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (level * rng.standard_normal(int(round(seconds * RATE)))).astype(np.float32)


def speech_span(x: np.ndarray) -> tuple[int, int]:
    """[first, last) sample of a clean clip whose 10 ms energy is within 40 dB of its peak."""
    e = np.convolve(x.astype(np.float64) ** 2, np.ones(160) / 160, mode="same")
    idx = np.nonzero(e > e.max() * 1e-4)[0]
    return (int(idx[0]), int(idx[-1]) + 1) if len(idx) else (0, len(x))


def get_bundle(args: argparse.Namespace, work: Path) -> Path:
    if args.bundle is not None:
        return args.bundle
    if args.model == "xlsr-300m":
        from xlsr_edge.export import export_bundle
        from xlsr_edge.export.tiny import XLSR_300M, build_checkpoint

        ckpt, out = work / "xlsr-300m-ckpt", work / "xlsr-300m-bundle"
        if not (out / "bundle.json").exists():
            log("building and exporting a random-weight model with XLS-R 300M's shape")
            if not (ckpt / "config.json").exists():
                build_checkpoint(ckpt, **XLSR_300M, head_gain=8.0)
            export_bundle(ckpt, out)
        return out
    out = work / "demo-bundle"
    if not (out / "bundle.json").exists():
        from xlsr_edge.export import export_bundle

        log("exporting models/demo-tr")
        export_bundle(DEMO, out)
    return out


def test_set() -> list[tuple[np.ndarray, str]]:
    from xlsr_edge.runtime.audio import load_audio

    manifest = DEMO / "test" / "test.jsonl"
    out = []
    for line in manifest.read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            out.append((load_audio(DEMO / "test" / d["audio_filepath"], RATE), d["text"]))
    return out


def cer(refs: list[str], hyps: list[str]) -> float:
    from xlsr_edge.measure.metrics import error_rates

    return error_rates(refs, hyps).cer


# -- 1. VAD ----------------------------------------------------------------------------------------------------


def vad_material(work: Path, seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    from xlsr_edge.data import default_clips
    from xlsr_edge.runtime.audio import load_audio

    utts = [load_audio(p, RATE) for p in default_clips()]
    utts += [load_audio(p, RATE) for p in sorted((DEMO / "test").glob("*.flac"))[:16]]
    espeak = shutil.which("espeak-ng")
    if espeak:
        import soundfile as sf
        import soxr

        for i, (voice, text) in enumerate(
            [
                ("en", "the quick brown fox jumps over the lazy dog"),
                ("de", "guten morgen wie geht es dir heute"),
                ("en+f3", "please call me back tomorrow afternoon"),
                ("es", "buenos dias senor como esta usted"),
            ]
        ):
            wav = work / f"espeak_{i}.wav"
            subprocess.run([espeak, "-v", voice, "-w", str(wav), text], check=True)
            x, sr = sf.read(str(wav), dtype="float32")
            utts.append(soxr.resample(x, sr, RATE).astype(np.float32))
    rng = np.random.default_rng(seed)
    parts, truth, pos = [], [], 0
    for u in utts:
        gap = int(rng.uniform(0.4, 2.0) * RATE)
        parts.append(np.zeros(gap, dtype=np.float32))
        pos += gap
        a, b = speech_span(u)
        truth.append((pos + a, pos + b))
        parts.append((u / (np.abs(u).max() + 1e-9) * 0.5).astype(np.float32))
        pos += len(u)
    parts.append(np.zeros(RATE, dtype=np.float32))
    return np.concatenate(parts), truth


def noisy(
    clean: np.ndarray, speech: np.ndarray, kind: str | None, snr_db: float | None, seed: int
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = len(clean)
    if kind is None:
        return clean + (1e-4 * rng.standard_normal(n)).astype(np.float32)
    w = rng.standard_normal(n)
    if kind == "pink":
        f = np.fft.rfft(w)
        k = np.arange(len(f), dtype=np.float64)
        k[0] = 1.0
        w = np.fft.irfft(f / np.sqrt(k), n)
    elif kind == "hum":
        t = np.arange(n) / RATE
        w = sum(np.sin(2 * np.pi * 50 * h * t + h) / h for h in range(1, 8)) + 0.1 * w
    power = np.mean(clean[speech] ** 2)
    w *= np.sqrt(power / np.mean(w**2) / 10 ** (snr_db / 10))
    return (clean + w).astype(np.float32)


def endpoint(probs: np.ndarray, frame: int, n: int) -> list[tuple[int, int]]:
    from xlsr_edge.runtime.vad import Endpointer, VadOptions

    opts = VadOptions()
    ep = Endpointer(opts, frame, RATE)
    pad = int(opts.speech_pad_seconds * RATE)
    segs, start = [], None
    for p in probs.tolist():
        change = ep.step(p)
        if change and change[0] == "start":
            start = max(0, change[1] - pad)
        elif change and change[0] == "end":
            segs.append((start, change[1] + pad))
            start = None
    if start is not None:
        segs.append((start, n))
    return segs


def vad_scores(probs, frame, segs, labels, truth) -> dict[str, float]:
    decided = np.repeat(probs >= 0.5, frame)[: len(labels)]
    lab = labels[: len(decided)]
    ok = 0
    for a, b in truth:
        cover = [s for s in segs if min(b, s[1]) > max(a, s[0])]
        if len(cover) == 1 and cover[0][0] <= a + 320 and cover[0][1] >= b - 320:
            if sum(1 for a2, b2 in truth if min(b2, cover[0][1]) > max(a2, cover[0][0])) == 1:
                ok += 1
    return {
        "missed_speech": float(1 - (decided & lab).sum() / lab.sum()),
        "false_alarm": float((decided & ~lab).sum() / (~lab).sum()),
        "utterances_ok": ok / len(truth),
        "segments": len(segs),
    }


def bench_vad(work: Path) -> dict:
    from xlsr_edge.runtime.vad import VAD_FRAME, SileroVad

    clean, truth = vad_material(work)
    labels = np.zeros(len(clean), dtype=bool)
    for a, b in truth:
        labels[a:b] = True
    silero = SileroVad(threads=1)
    methods = {"silero": None}
    try:
        sys.path[:0] = [p for p in os.environ.get("XLSR_BENCH_EXTRA_PATH", "").split(os.pathsep) if p]
        import webrtcvad

        for mode in range(4):
            methods[f"webrtcvad-{mode}"] = mode
    except ImportError:
        log("webrtcvad not importable: comparing Silero alone (pip install webrtcvad-wheels to compare)")

    def run_silero(x):
        state, out, packet = silero.new_state(), [], 1600
        buf = np.zeros(0, dtype=np.float32)
        for i in range(0, len(x), packet):
            buf = np.concatenate([buf, x[i : i + packet]])
            whole = len(buf) // VAD_FRAME * VAD_FRAME
            out.append(silero.probabilities(state, buf[:whole]))
            buf = buf[whole:]
        return np.concatenate(out), VAD_FRAME

    def run_webrtc(x, mode):
        v = webrtcvad.Vad(mode)
        pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
        n = len(pcm) // 480
        return np.array(
            [v.is_speech(pcm[i * 480 : (i + 1) * 480].tobytes(), RATE) for i in range(n)], float
        ), 480

    rows = []
    conditions = [("clean", None, None)] + [
        (f"{k} {s} dB", k, s) for k in ("white", "pink", "hum") for s in (20, 10, 5)
    ]
    for ci, (name, kind, snr) in enumerate(conditions):
        x = noisy(clean, labels, kind, snr, seed=ci)
        for method, mode in methods.items():
            c0 = time.process_time()
            probs, frame = run_silero(x) if mode is None else run_webrtc(x, mode)
            cpu = time.process_time() - c0
            segs = endpoint(probs, frame, len(x))
            rows.append(
                {
                    "condition": name,
                    "vad": method,
                    **vad_scores(probs, frame, segs, labels, truth),
                    "cpu_ms_per_audio_s": 1000 * cpu / (len(x) / RATE),
                }
            )
    summary = []
    for method in methods:
        mine = [r for r in rows if r["vad"] == method]
        summary.append(
            {
                "vad": method,
                "utterances_ok_mean": float(np.mean([r["utterances_ok"] for r in mine])),
                "utterances_ok_worst": float(min(r["utterances_ok"] for r in mine)),
                "missed_speech_mean": float(np.mean([r["missed_speech"] for r in mine])),
                "false_alarm_mean": float(np.mean([r["false_alarm"] for r in mine])),
                "cpu_ms_per_audio_s": float(np.median([r["cpu_ms_per_audio_s"] for r in mine])),
            }
        )
    return {
        "audio_seconds": len(clean) / RATE,
        "utterances": len(truth),
        "conditions": [c[0] for c in conditions],
        "rows": rows,
        "summary": summary,
    }


# -- 2. chunk x context grid -----------------------------------------------------------------------------------


def stream_clip(rec, options, audio: np.ndarray, packet: int) -> tuple[list, list[tuple[int, float]], float]:
    """Events, (samples fed, accept wall seconds) per event, process CPU seconds."""
    stream = rec.stream(options)
    events, when = [], []
    c0 = time.process_time()
    for i in range(0, len(audio), packet):
        t0 = time.perf_counter()
        got = stream.accept(audio[i : i + packet])
        dt = time.perf_counter() - t0
        events += got
        when += [(min(i + packet, len(audio)), dt)] * len(got)
    t0 = time.perf_counter()
    got = stream.close()
    dt = time.perf_counter() - t0
    events += got
    when += [(len(audio), dt)] * len(got)
    return events, when, time.process_time() - c0


def bench_grid(bundle: Path, args: argparse.Namespace) -> dict:
    from xlsr_edge.runtime import Recognizer
    from xlsr_edge.runtime.stream import StreamOptions

    clips = test_set()[: args.clips]
    lead, trail, packet = 0.5, 1.0, int(0.02 * RATE)
    configs = [(c, args.left, r, True) for c in args.chunks for r in args.rights]
    configs += [(args.sweep_chunk, left, args.sweep_right, True) for left in args.lefts if left != args.left]
    # no windowing: each utterance in one window (what the VAD cut alone costs), and without VAD the whole
    # stream, silence included, in one window (what the model makes of the silence around the speech)
    configs += [(WHOLE, 0.0, 0.0, True), (WHOLE, 0.0, 0.0, False)]
    rows = []
    with Recognizer.from_bundle(bundle, threads=args.threads) as rec:
        c0 = time.process_time()
        offline = [rec.transcribe([x])[0].text for x, _ in clips]
        offline_cpu = (time.process_time() - c0) / (sum(len(x) for x, _ in clips) / RATE)
        refs = [t for _, t in clips]
        offline_cer = cer(refs, offline)
        log(
            f"offline: CER {offline_cer:.2%} on {len(clips)} clips, {offline_cpu * 1000:.1f} CPU ms per audio s"
        )
        for chunk, left, right, vad in configs:
            opts = StreamOptions(
                chunk_seconds=chunk, left_context_seconds=left, right_context_seconds=right, vad=vad
            )
            hyps, final_lat, first_lat, cpu, audio_s, partials, missing = [], [], [], 0.0, 0.0, 0, 0
            for i, (x, _) in enumerate(clips):
                audio = np.concatenate([quiet(lead, 2 * i), x, quiet(trail, 2 * i + 1)])
                a, b = speech_span(x)
                s0, s1 = int(lead * RATE) + a, int(lead * RATE) + b
                events, when, c = stream_clip(rec, opts, audio, packet)
                cpu += c
                audio_s += len(audio) / RATE
                fin = [(e, w) for e, w in zip(events, when) if e.type == "final"]
                hyps.append(" ".join(e.text for e, _ in fin))
                part = [(e, w) for e, w in zip(events, when) if e.type == "partial"]
                partials += len(part)
                if fin and vad:  # without VAD the final comes at close(), which says nothing about latency
                    e, (fed, dt) = fin[-1]
                    final_lat.append((fed - s1) / RATE + dt)
                elif vad:
                    missing += 1
                if part:
                    e, (fed, dt) = part[0]
                    first_lat.append((fed - s0) / RATE + dt)
            fl = summarize(final_lat) if final_lat else {"p50": None, "p95": None}
            pl = summarize(first_lat) if first_lat else None
            rows.append(
                {
                    "chunk_s": chunk,
                    "chunk": (
                        ("whole utterance" if vad else "whole stream, no VAD")
                        if chunk == WHOLE
                        else f"{chunk:g}"
                    ),
                    "vad": vad,
                    "left_s": left,
                    "right_s": right,
                    "cer": cer(refs, hyps),
                    "cer_offline": offline_cer,
                    "cer_vs_offline": cer(offline, hyps),
                    "final_latency_p50_s": fl["p50"],
                    "final_latency_p95_s": fl["p95"],
                    "first_partial_p50_s": pl["p50"] if pl else None,
                    "first_partial_p95_s": pl["p95"] if pl else None,
                    "cpu_ms_per_audio_s": 1000 * cpu / audio_s,
                    "partials_per_clip": partials / len(clips),
                    "clips_without_final": missing,
                }
            )
            r = rows[-1]
            log(
                f"chunk {chunk} left {left} right {right} vad {vad}: CER {r['cer']:.2%} "
                f"(vs offline {r['cer_vs_offline']:.2%}), "
                f"final p50/p95 {r['final_latency_p50_s']}/{r['final_latency_p95_s']} s, "
                f"first partial p50 {r['first_partial_p50_s']}, {r['cpu_ms_per_audio_s']:.1f} CPU ms/s"
            )
    return {
        "clips": len(clips),
        "audio_seconds_per_config": sum(len(x) for x, _ in clips) / RATE + len(clips) * (lead + trail),
        "lead_s": lead,
        "trail_s": trail,
        "packet_s": packet / RATE,
        "threads": args.threads,
        "offline_cer": offline_cer,
        "offline_cpu_ms_per_audio_s": offline_cpu * 1000,
        "vad": "silero, min silence 0.5 s, pad 0.1 s (the defaults)",
        "rows": rows,
    }


# -- 3. server capacity ----------------------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerProcess:
    def __init__(self, bundle: Path, threads: int, max_batch: int, extra: list[str]) -> None:
        cmd = [sys.executable, "-m", "xlsr_edge", "serve", str(bundle), "--host", "127.0.0.1", "--port", "0"]
        cmd += ["--threads", str(threads), "--max-batch", str(max_batch), "--max-streams", "2048", *extra]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, cwd=ROOT)
        line = self.proc.stderr.readline().decode()
        if "listening on ws://" not in line:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line}{self.proc.stderr.read().decode()}")
        self.url = line.split("listening on ")[1].split()[0]
        self.port = int(self.url.rsplit(":", 1)[1])

    def health(self) -> dict:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=10) as r:
            return json.loads(r.read())

    def stop(self) -> int:
        import signal

        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self.proc.kill()
            self.proc.stderr.close()


async def realtime_client(
    url: str, audio: np.ndarray, spans: list[tuple[int, int]], delay: float, packet: int
):
    """Stream in real time; return per utterance (final latency or None, error or None)."""
    from websockets.asyncio.client import connect

    await asyncio.sleep(delay)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    finals: list[tuple[float, dict]] = []
    error = None
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        async with connect(url, compression=None, open_timeout=30, max_size=2**22) as ws:
            t0 = loop.time()

            async def reader():
                async for msg in ws:
                    e = json.loads(msg)
                    if e["type"] == "final":
                        finals.append((loop.time(), e))
                    elif e["type"] == "error":
                        raise RuntimeError(e["error"])

            task = asyncio.ensure_future(reader())
            for i in range(0, len(audio), packet):
                end = min(i + packet, len(audio))
                wait = t0 + end / RATE - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await ws.send(pcm[2 * i : 2 * end])
            await ws.send(json.dumps({"eof": True}))
            await asyncio.wait_for(task, 60)
    except Exception as exc:  # noqa: BLE001 - counted as failures of this client
        error = f"{type(exc).__name__}: {exc}"
    out = []
    for _, b in spans:
        match = [
            (t, e)
            for t, e in finals
            if e["start"] * RATE <= b + 0.3 * RATE and e["end"] * RATE >= b - 0.3 * RATE
        ]
        if match:
            out.append((match[-1][0] - (t0 + b / RATE), None))
        else:
            out.append((None, error or "no final"))
    return out


def conversation(clips, index: int, n: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    parts, spans, pos = [quiet(0.3, 1000 + index)], [], int(0.3 * RATE)
    for k in range(n):
        x = clips[(index * n + k) % len(clips)][0]
        a, b = speech_span(x)
        spans.append((pos + a, pos + b))
        gap = quiet(1.0, 2000 + index * n + k)
        parts += [x, gap]
        pos += len(x) + len(gap)
    parts.append(quiet(0.5, 3000 + index))
    return np.concatenate(parts), spans


async def run_level(url: str, clips, n: int, per_client: int, packet: int) -> list:
    rng = np.random.default_rng(n)
    tasks = []
    for i in range(n):
        audio, spans = conversation(clips, i, per_client)
        tasks.append(realtime_client(url, audio, spans, float(rng.uniform(0, 1.0)), packet))
    return await asyncio.gather(*tasks)


def next_level(n: int, passed: int, failed: int | None) -> int | None:
    """x1.5 until a level fails, then bisect until the gap is small; None when done."""
    if failed is None:
        return int(np.ceil(n * 1.5))
    if passed and failed - passed > max(2, passed // 8):
        return (passed + failed) // 2
    return None


def bench_capacity(bundle: Path, args: argparse.Namespace) -> dict:
    """Both servers run at once; their ladders advance in lockstep, the order alternating every round, so
    both modes see the same machine (other processes' load drifts)."""
    clips = test_set()
    packet = int(0.1 * RATE)
    modes = {"batching": args.max_batch, "no batching": 1}
    servers = {
        m: ServerProcess(
            bundle,
            args.server_threads,
            b,
            ["--max-wait-ms", str(args.max_wait_ms), *args.server_args.split()],
        )
        for m, b in modes.items()
    }
    state = {m: {"next": args.start_streams, "passed": 0, "failed": None} for m in modes}
    levels_out = []
    try:
        for rnd in range(64):
            order = list(modes) if rnd % 2 == 0 else list(reversed(modes))
            active = [m for m in order if state[m]["next"] is not None]
            if not active:
                break
            for mode in active:
                server, st = servers[mode], state[mode]
                n = st["next"]
                before = server.health()
                load0 = os.getloadavg()[0]
                cpu0, t0 = proc_cpu_seconds(server.proc.pid), time.monotonic()
                results = asyncio.run(run_level(server.url, clips, n, args.utterances, packet))
                wall = time.monotonic() - t0
                cpu = proc_cpu_seconds(server.proc.pid) - cpu0
                after = server.health()
                lat = [x for client in results for x, _ in client if x is not None]
                errors = [e for client in results for _, e in client if e is not None]
                p = summarize(lat) if lat else {"p50": None, "p95": None, "max": None}
                ok = not errors and p["p95"] is not None and p["p95"] <= args.p95_goal
                calls = after["inference_calls"] - before["inference_calls"]
                windows = after["windows"] - before["windows"]
                levels_out.append(
                    {
                        "mode": mode,
                        "streams": n,
                        "utterances": sum(len(c) for c in results),
                        "failed_utterances": len(errors),
                        "final_latency_p50_s": p["p50"],
                        "final_latency_p95_s": p["p95"],
                        "final_latency_max_s": p["max"],
                        "server_cpu_share": cpu / wall,
                        "mean_batch": windows / calls if calls else None,
                        "loadavg_1m": round((load0 + os.getloadavg()[0]) / 2, 2),
                        "passed": ok,
                        "first_error": errors[0] if errors else None,
                    }
                )
                log(
                    f"{mode}: {n} streams: p50/p95 {p['p50']}/{p['p95']} s, {len(errors)} failed, "
                    f"server CPU {cpu / wall:.2f} cores, mean batch {levels_out[-1]['mean_batch']}, "
                    f"load {levels_out[-1]['loadavg_1m']}"
                )
                for _ in range(100):  # let the server forget the level's streams
                    if server.health()["streams"] == 0:
                        break
                    time.sleep(0.1)
                if ok:
                    st["passed"] = max(st["passed"], n)
                elif (
                    st.get("retried") != n
                ):  # other processes' load spikes: a level fails only twice in a row
                    st["retried"] = n
                    continue
                else:
                    st["failed"] = n if st["failed"] is None else min(st["failed"], n)
                st["next"] = next_level(n, st["passed"], st["failed"])
                if st["next"] is not None and st["next"] > args.max_streams_tried:
                    st["next"] = None
    finally:
        for mode, server in servers.items():
            log(f"{mode}: server exited with {server.stop()} after SIGTERM")
    best = {m: state[m]["passed"] for m in modes}
    ratio = best["batching"] / best["no batching"] if best.get("no batching") else None
    return {
        "p95_goal_s": args.p95_goal,
        "utterances_per_client": args.utterances,
        "packet_s": packet / RATE,
        "server_threads": args.server_threads,
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "server_args": args.server_args,
        "levels": levels_out,
        "capacity": best,
        "batching_gain": ratio,
    }


# -- 4. inference per window by batch size ----------------------------------------------------------------------


def bench_batch(bundle: Path, args: argparse.Namespace) -> dict:
    """Wall and CPU ms per window of the default stream window (chunk 1 s + left 2 s + right 0.25 s) by batch
    size: what cross-stream batching can save on this machine."""
    from xlsr_edge.runtime import Recognizer

    rows = []
    for threads in args.batch_threads:
        with Recognizer.from_bundle(bundle, threads=threads) as rec:
            info = rec.info
            n = (
                int(RATE / info.frame_stride_samples) - 1
            ) * info.frame_stride_samples + info.receptive_field_samples
            n += int(2.0 * RATE) + int(0.25 * RATE)
            x = np.random.default_rng(0).standard_normal((max(args.batch_sizes), n)).astype(np.float32)
            for b in args.batch_sizes:
                values, mask = x[:b], np.ones((b, n), dtype=np.int64)
                rec.runner.infer(values, mask)
                walls, cpus = [], []
                t_end = time.perf_counter() + args.batch_seconds
                while time.perf_counter() < t_end or len(walls) < 3:
                    w0, c0 = time.perf_counter(), time.process_time()
                    rec.runner.infer(values, mask)
                    walls.append(time.perf_counter() - w0)
                    cpus.append(time.process_time() - c0)
                rows.append(
                    {
                        "threads": threads,
                        "batch": b,
                        "window_s": n / RATE,
                        "wall_ms_per_window": 1000 * float(np.median(walls)) / b,
                        "cpu_ms_per_window": 1000 * float(np.median(cpus)) / b,
                    }
                )
                log(f"threads {threads} batch {b}: {rows[-1]['wall_ms_per_window']:.1f} ms/window wall")
    return {"rows": rows}


# -- output ----------------------------------------------------------------------------------------------------


def plot_latency_vs_cer(rows: list[dict], path: Path, offline_cer: float) -> None:
    from xlsr_edge.errors import require

    matplotlib = require("matplotlib", "eval", "needed to draw benchmark plots")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    cmap = plt.get_cmap("tab10")
    rights = sorted({r["right_s"] for r in rows})
    for ax, key, title in (
        (axes[0], "first_partial_p50_s", "first partial (p50)"),
        (axes[1], "final_latency_p50_s", "final, end of speech -> final (p50)"),
    ):
        for r in rows:
            if r[key] is None:
                continue
            color = cmap(rights.index(r["right_s"]) % 10)
            marker = "o" if r["left_s"] == rows[0]["left_s"] else "s"
            ax.scatter(r[key], 100 * r["cer"], color=color, marker=marker)
            ax.annotate(
                "whole utt." if r["chunk_s"] == WHOLE else f"c{r['chunk_s']:g}/L{r['left_s']:g}",
                (r[key], 100 * r["cer"]),
                fontsize=7,
                xytext=(3, 2),
                textcoords="offset points",
            )
        ax.axhline(100 * offline_cer, color="gray", linestyle="--", linewidth=1, label="offline")
        ax.set_xlabel(f"{title} latency, s")
        ax.set_ylabel("CER %")
        ax.grid(alpha=0.3)
    for i, r in enumerate(rights):
        axes[0].scatter([], [], color=cmap(i % 10), label=f"right context {r:g} s")
    axes[0].legend(fontsize=7)
    fig.suptitle("streaming on the demo model: latency against CER (c = chunk s, L = left context s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(results: dict) -> str:
    env = results["environment"]
    for r in results.get("capacity", {}).get("levels", []):
        r["server_cpu_ms_per_stream_s"] = 1000 * r["server_cpu_share"] / r["streams"]
    out = [
        "# Streaming benchmark",
        "",
        f"CPU: {env['cpu']} ({env.get('usable_cpus')} usable cores, load {env.get('loadavg_1m')}); "
        f"instruction sets: {', '.join(results['cpu_isa']) or 'unknown'}. Model: {results['model']}.",
        "",
    ]
    if "vad" in results:
        v = results["vad"]
        out += [
            f"## VAD ({v['utterances']} utterances, {v['audio_seconds']:.0f} s, {len(v['conditions'])} noise conditions)",
            "",
            markdown_table(
                v["summary"],
                [
                    ("vad", "VAD"),
                    ("utterances_ok_mean", "utterances segmented right (mean)", "{:.1%}"),
                    ("utterances_ok_worst", "(worst condition)", "{:.1%}"),
                    ("missed_speech_mean", "missed speech", "{:.1%}"),
                    ("false_alarm_mean", "false alarm", "{:.1%}"),
                    ("cpu_ms_per_audio_s", "CPU ms / audio s", "{:.2f}"),
                ],
            ),
            "",
            "<details><summary>per condition</summary>",
            "",
            markdown_table(
                v["rows"],
                [
                    ("condition", "condition"),
                    ("vad", "VAD"),
                    ("utterances_ok", "utterances ok", "{:.1%}"),
                    ("segments", "segments"),
                    ("missed_speech", "missed", "{:.1%}"),
                    ("false_alarm", "false alarm", "{:.1%}"),
                    ("cpu_ms_per_audio_s", "CPU ms/s", "{:.2f}"),
                ],
            ),
            "",
            "</details>",
            "",
        ]
    if "grid" in results:
        g = results["grid"]
        out += [
            f"## Chunk x context ({g['clips']} test clips, VAD on, {g['packet_s'] * 1000:.0f} ms packets, "
            f"{g['threads']} onnxruntime thread(s))",
            "",
            f"Offline (whole clip): CER {g['offline_cer']:.2%}, {g['offline_cpu_ms_per_audio_s']:.1f} CPU ms per audio s.",
            "",
            markdown_table(
                g["rows"],
                [
                    ("chunk", "chunk s"),
                    ("left_s", "left s", "{:g}"),
                    ("right_s", "right s", "{:g}"),
                    ("cer", "CER", "{:.2%}"),
                    ("cer_vs_offline", "CER vs offline text", "{:.2%}"),
                    ("final_latency_p50_s", "final p50 s", "{:.3f}"),
                    ("final_latency_p95_s", "final p95 s", "{:.3f}"),
                    ("first_partial_p50_s", "first partial p50 s", "{:.3f}"),
                    ("first_partial_p95_s", "first partial p95 s", "{:.3f}"),
                    ("cpu_ms_per_audio_s", "CPU ms / audio s", "{:.1f}"),
                ],
            ),
            "",
        ]
    if "batch" in results:
        rows = results["batch"]["rows"]
        out += [
            f"## Inference per window by batch size (window {rows[0]['window_s']:.2f} s: chunk 1 s + left 2 s + "
            "right 0.25 s)",
            "",
            markdown_table(
                rows,
                [
                    ("threads", "threads"),
                    ("batch", "batch"),
                    ("wall_ms_per_window", "wall ms / window", "{:.2f}"),
                    ("cpu_ms_per_window", "CPU ms / window", "{:.2f}"),
                ],
            ),
            "",
        ]
    if "capacity" in results:
        c = results["capacity"]
        out += [
            f"## Server capacity (real-time streams with p95 final latency <= {c['p95_goal_s']:g} s)",
            "",
            f"Server: {c['server_threads']} onnxruntime thread(s); batching = --max-batch {c['max_batch']} "
            f"--max-wait-ms {c['max_wait_ms']:g} {c.get('server_args', '')}; clients in the benchmark process on "
            "the same machine, "
            f"{c['utterances_per_client']} utterances each, {c['packet_s'] * 1000:.0f} ms packets.",
            "",
            markdown_table(
                [{"mode": k, "streams": v} for k, v in c["capacity"].items()],
                [("mode", "mode"), ("streams", "streams held")],
            ),
            "",
            f"Batching gain: {c['batching_gain']:.2f}x" if c["batching_gain"] else "Batching gain: —",
            "",
            markdown_table(
                c["levels"],
                [
                    ("mode", "mode"),
                    ("streams", "streams"),
                    ("final_latency_p50_s", "p50 s", "{:.3f}"),
                    ("final_latency_p95_s", "p95 s", "{:.3f}"),
                    ("final_latency_max_s", "max s", "{:.3f}"),
                    ("failed_utterances", "no final"),
                    ("server_cpu_share", "server CPU (cores)", "{:.2f}"),
                    ("server_cpu_ms_per_stream_s", "server CPU ms / stream-s", "{:.1f}"),
                    ("mean_batch", "mean batch", "{:.2f}"),
                    ("loadavg_1m", "machine load", "{:.1f}"),
                    ("passed", "passed"),
                ],
            ),
            "",
        ]
    return "\n".join(out)


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", type=Path, default=Path("benchmarks/results/streaming"))
    ap.add_argument("--work", type=Path, default=None, help="scratch folder, reused when given")
    ap.add_argument("--bundle", type=Path, default=None, help="default: models/demo-tr, exported here")
    ap.add_argument("--sections", default="vad,grid,batch,capacity")
    ap.add_argument(
        "--update", action="store_true", help="keep the other sections of an existing results.json"
    )
    ap.add_argument(
        "--batch-sizes", type=lambda t: [int(x) for x in t.split(",")], default=[1, 2, 4, 8, 16, 32]
    )
    ap.add_argument("--batch-threads", type=lambda t: [int(x) for x in t.split(",")], default=[1, 2])
    ap.add_argument("--batch-seconds", type=float, default=1.5, help="timing per batch size")
    ap.add_argument("--clips", type=int, default=None, help="first N test clips only (grid)")
    ap.add_argument("--model", choices=["demo", "xlsr-300m"], default="demo", help="when no --bundle")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads for the grid")
    ap.add_argument("--chunks", type=floats, default=[0.5, 1.0, 2.0, 4.0])
    ap.add_argument("--rights", type=floats, default=[0.0, 0.25, 0.5])
    ap.add_argument("--left", type=float, default=2.0, help="left context of the chunk x right grid")
    ap.add_argument("--lefts", type=floats, default=[0.0, 0.5, 1.0, 4.0], help="left-context sweep")
    ap.add_argument("--sweep-chunk", type=float, default=1.0)
    ap.add_argument("--sweep-right", type=float, default=0.25)
    ap.add_argument("--server-threads", type=int, default=1)
    ap.add_argument(
        "--server-args", default="", help="more `xlsr-edge serve` flags, e.g. '--chunk-seconds 4'"
    )
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--start-streams", type=int, default=8)
    ap.add_argument("--max-streams-tried", type=int, default=400)
    ap.add_argument("--utterances", type=int, default=3, help="utterances per client in the capacity test")
    ap.add_argument("--p95-goal", type=float, default=1.0)
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="xlsr-streaming-"))
    work.mkdir(parents=True, exist_ok=True)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bundle = get_bundle(args, work)
    previous = args.out / "results.json"
    results: dict = (
        json.loads(previous.read_text(encoding="utf-8")) if args.update and previous.is_file() else {}
    )
    results |= {
        "model": str(args.bundle)
        if args.bundle is not None
        else {"demo": "models/demo-tr (exported)", "xlsr-300m": "random weights, XLS-R 300M shape"}[
            args.model
        ],
        "bundle": str(bundle),
        "environment": results.get("environment") or environment(),
        "cpu_isa": cpu_isa(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    if "vad" in sections:
        results.setdefault("section_environment", {})["vad"] = environment()
        log("VAD comparison")
        results["vad"] = bench_vad(work)
    if "grid" in sections:
        results.setdefault("section_environment", {})["grid"] = environment()
        log("chunk x context grid")
        results["grid"] = bench_grid(bundle, args)
        plot_latency_vs_cer(
            results["grid"]["rows"], args.out / "latency_vs_cer.png", results["grid"]["offline_cer"]
        )
    if "batch" in sections:
        results.setdefault("section_environment", {})["batch"] = environment()
        log("inference per window by batch size")
        results["batch"] = bench_batch(bundle, args)
    if "capacity" in sections:
        results.setdefault("section_environment", {})["capacity"] = environment()
        log("server capacity")
        results["capacity"] = bench_capacity(bundle, args)
        plot_bars(
            results["capacity"]["levels"],
            args.out / "capacity.png",
            value="final_latency_p95_s",
            group=lambda r: str(r["streams"]),
            series=lambda r: r["mode"],
            title="server: p95 final latency by concurrent real-time streams",
            ylabel="p95 end of speech -> final, s",
        )
    md = markdown(results)
    write_json(args.out / "results.json", results)
    (args.out / "results.md").write_text(md + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2, ensure_ascii=False, default=str))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
