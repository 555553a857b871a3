"""Streaming benchmark, section 3 (``capacity``): `xlsr-edge serve` with and without cross-stream batching, real-time
WebSocket clients in growing numbers until p95 final latency misses the goal (see benchmarks/streaming.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import logger, markdown_table, summarize
from streaming_audio import RATE, ROOT, quiet, speech_span, test_set

log = logger("streaming bench")


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


def capacity_markdown(results: dict) -> list[str]:
    """The server capacity section of results.md."""
    c = results["capacity"]
    for r in c.get("levels", []):
        r["server_cpu_ms_per_stream_s"] = 1000 * r["server_cpu_share"] / r["streams"]
    return [
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
