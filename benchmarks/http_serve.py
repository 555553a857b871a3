"""HTTP throughput and latency of `xlsr-edge serve`'s OpenAI-compatible endpoint, batched vs unbatched.

Two servers (child processes on 127.0.0.1, 1 onnxruntime thread each unless --threads): one batching the
windows of concurrent requests (`--max-batch 16 --max-wait-ms 5`), one not (`--max-batch 1`). For each
number of concurrent clients (1, 4, 16) and each server, in alternating order, the clients post the demo
model's test clips back to back for --seconds; per request the wall time from sending the upload to the parsed
answer is its latency. Throughput = audio seconds transcribed / wall seconds. Mean batch = windows per
inference call over the level (from /health).

    python benchmarks/http_serve.py                      # demo model (models/demo-tr, exported fp32 once)
    python benchmarks/http_serve.py --bundle B --seconds 20 --clients 1,4,16

Results: benchmarks/results/http/ (results.json, results.md, throughput.png, latency.png).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import _common as common

DEMO = common.REPO / "models" / "demo-tr"
OUT = common.REPO / "benchmarks" / "results" / "http"
MODES = {"batched": ["--max-batch", "16", "--max-wait-ms", "5"], "unbatched": ["--max-batch", "1"]}
log = common.logger("http")


def demo_bundle(folder: Path) -> Path:
    """The demo model exported as fp32 (as scripts/demo.py does), once."""
    bundle = folder / "demo-tr-fp32"
    if not (bundle / "bundle.json").is_file():
        log(f"exporting {DEMO} -> {bundle}")
        subprocess.run(
            [sys.executable, "-m", "xlsr_edge", "export", str(DEMO), "-o", str(bundle)]
            + ["--precision", "fp32", "--overwrite"],
            check=True,
            cwd=common.REPO,
        )
    return bundle


class Server:
    def __init__(self, bundle: Path, mode: str, threads: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xlsr_edge", "serve", str(bundle), "--host", "127.0.0.1", "--port", "0"]
            + ["--threads", str(threads), "--max-requests", "256", *MODES[mode]],
            stderr=subprocess.PIPE,
            text=True,
            cwd=common.REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        line = self.proc.stderr.readline()
        if "listening on ws://" not in line:
            self.proc.kill()
            raise RuntimeError(f"the {mode} server did not start: {line}{self.proc.stderr.read()}")
        self.url = "http://" + line.split("ws://")[1].split()[0]

    def health(self) -> dict:
        return json.loads(urllib.request.urlopen(self.url + "/health", timeout=30).read())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def run_level(server: Server, clips: list[tuple[str, bytes, float]], clients: int, seconds: float) -> dict:
    """`clients` threads posting clips back to back for `seconds`; latency and throughput."""
    import httpx

    latencies: list[float] = []
    audio = [0.0]
    errors = [0]
    lock = threading.Lock()
    before = server.health()
    t0 = time.monotonic()
    deadline = t0 + seconds

    def client(k: int) -> None:
        with httpx.Client(timeout=120) as http:
            i = k
            while time.monotonic() < deadline:
                name, data, duration = clips[i % len(clips)]
                i += clients
                start = time.monotonic()
                r = http.post(server.url + "/v1/audio/transcriptions", files={"file": (name, data)})
                took = time.monotonic() - start
                with lock:
                    if r.status_code == 200 and r.json().get("text") is not None:
                        latencies.append(took)
                        audio[0] += duration
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    after = server.health()
    calls = after["inference_calls"] - before["inference_calls"]
    windows = after["windows"] - before["windows"]
    s = common.summarize(latencies)
    return {
        "clients": clients,
        "requests": s["n"],
        "errors": errors[0],
        "audio_seconds": round(audio[0], 2),
        "wall_seconds": round(wall, 2),
        "throughput": audio[0] / wall,
        "latency_p50": s["p50"],
        "latency_p95": s["p95"],
        "latency_mean": s["mean"],
        "mean_batch": windows / calls if calls else None,
    }


def runner_cost(bundle: Path, clips: list[tuple[str, bytes, float]], threads: int) -> list[dict]:
    """What batching costs the model on this machine: the clips' inference CPU time run one by one, and in
    groups of 4 and 16 in arrival order, each group bucketed as the server's Batcher does (plan_batches)."""
    import io

    import soundfile as sf

    from xlsr_edge.runtime import Recognizer
    from xlsr_edge.runtime.audio import normalize, prepare_audio
    from xlsr_edge.runtime.batching import infer_batch, plan_batches

    rows = []
    with Recognizer.from_bundle(bundle, threads=threads) as rec:
        audio = []
        for _, data, _ in clips:
            x, rate = sf.read(io.BytesIO(data), dtype="float32")
            audio.append(normalize(prepare_audio(x, rate, rec.info.sample_rate), rec.info.do_normalize))
        seconds = sum(len(a) for a in audio) / rec.info.sample_rate
        uses_mask = rec.info.uses_attention_mask
        for group in (1, 4, 16):
            cpu, calls = [], 0
            for _ in range(3):
                t = time.process_time()
                for i in range(0, len(audio), group):
                    part = audio[i : i + group]
                    for batch in plan_batches([len(a) for a in part], group, uses_mask):
                        infer_batch(rec.runner, [part[j] for j in batch], uses_mask)
                        calls += 1
                cpu.append(time.process_time() - t)
            rows.append(
                {"group": group, "cpu_ms_per_audio_s": 1000 * min(cpu) / seconds, "calls": calls // 3}
            )
            log(f"runner: groups of {group}: {rows[-1]['cpu_ms_per_audio_s']:.1f} CPU ms per audio s")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=None, help="default: the demo model, exported fp32")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--seconds", type=float, default=15.0, help="per level and server")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads of each server")
    ap.add_argument("--work", type=Path, default=common.REPO / "build" / "bench-http")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    run = common.start()
    import soundfile as sf

    bundle = args.bundle or demo_bundle(args.work)
    clips = [
        (p.name, p.read_bytes(), sf.info(str(p)).duration) for p in sorted((DEMO / "test").glob("*.flac"))
    ]
    levels = [int(c) for c in args.clients.split(",")]
    servers = {mode: Server(bundle, mode, args.threads) for mode in MODES}
    rows = []
    try:
        for server in servers.values():  # warm-up: sessions, first calls
            run_level(server, clips, 2, 3.0)
        for i, clients in enumerate(levels):
            order = list(MODES) if i % 2 == 0 else list(reversed(MODES))
            for mode in order:
                row = {"mode": mode, **run_level(servers[mode], clips, clients, args.seconds)}
                log(
                    f"{mode:9s} {clients:2d} clients: {row['throughput']:.1f} audio-s/s, p50 "
                    f"{row['latency_p50']:.3f} s, p95 {row['latency_p95']:.3f} s, mean batch {row['mean_batch']}"
                )
                rows.append(row)
    finally:
        for server in servers.values():
            server.stop()
    rows.sort(key=lambda r: (r["clients"], r["mode"]))
    cost = runner_cost(bundle, clips, args.threads)
    columns = [
        ("clients", "clients"),
        ("mode", "server"),
        ("requests", "requests"),
        ("throughput", "audio-s / s", "{:.1f}"),
        ("latency_p50", "latency p50 s", "{:.3f}"),
        ("latency_p95", "latency p95 s", "{:.3f}"),
        ("mean_batch", "windows / call", "{:.2f}"),
        ("errors", "errors"),
    ]
    md = (
        "# HTTP transcription: batched vs unbatched\n\n"
        f"`benchmarks/http_serve.py`: {len(clips)} demo clips ({sum(c[2] for c in clips):.0f} s of audio) posted back to "
        f"back by N concurrent clients for {args.seconds:g} s per level, {args.threads} onnxruntime thread(s) per "
        "server.\n\n" + common.markdown_table(rows, columns) + "\n\n"
        "What a padded batch costs the model here (the same clips, in groups as concurrent requests would arrive, "
        "each group bucketed like the server's batcher; best of 3):\n\n"
        + common.markdown_table(
            cost,
            [
                ("group", "requests per group"),
                ("calls", "inference calls"),
                ("cpu_ms_per_audio_s", "CPU ms / audio s", "{:.1f}"),
            ],
        )
        + "\n"
    )
    results = {
        "bundle": str(bundle),
        "seconds": args.seconds,
        "threads": args.threads,
        "rows": rows,
        "runner_cost": cost,
    }
    plots = [
        lambda: common.plot_bars(
            rows,
            args.out / "throughput.png",
            value="throughput",
            group=lambda r: f"{r['clients']} clients",
            series=lambda r: r["mode"],
            title="HTTP throughput (demo model)",
            ylabel="audio seconds per second",
        ),
        lambda: common.plot_bars(
            rows,
            args.out / "latency.png",
            value="latency_p95",
            group=lambda r: f"{r['clients']} clients",
            series=lambda r: r["mode"],
            title="HTTP latency p95 (demo model)",
            ylabel="seconds",
        ),
    ]
    for p in common.write_results(args.out, results, run, markdown=md, plots=plots, log=log):
        log(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
