"""Streaming benchmark, section 2 (``grid``): chunk x right context (and a left-context sweep) on the demo model's
test set, VAD on: CER and latencies (see benchmarks/streaming.py)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import logger, markdown_table, summarize
from streaming_audio import RATE, cer, quiet, speech_span, test_set

log = logger("streaming bench")
WHOLE = 60.0  # a chunk longer than any utterance: one window per utterance


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


def grid_markdown(results: dict) -> list[str]:
    """The chunk x context section of results.md."""
    g = results["grid"]
    return [
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
