"""Streaming benchmark, section 1 (``vad``): Silero and webrtcvad on speech + silence, clean and noisy
(see benchmarks/streaming.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import logger, markdown_table
from streaming_audio import DEMO, RATE, speech_span

log = logger("streaming bench")


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


def vad_markdown(results: dict) -> list[str]:
    """The VAD section of results.md."""
    v = results["vad"]
    return [
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
