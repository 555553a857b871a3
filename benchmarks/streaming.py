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

Prints JSON and markdown; writes results.json (with provenance: commit, command, machine, load), results.md,
latency_vs_cer.png and capacity.png into -o. One module per section: streaming_vad, streaming_grid,
streaming_capacity, streaming_batch (their audio: streaming_audio); shared helpers: _common.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _common import cpu_isa, environment, logger, plot_bars, start, write_results
from streaming_audio import DEMO
from streaming_batch import batch_markdown, bench_batch
from streaming_capacity import bench_capacity, capacity_markdown
from streaming_grid import bench_grid, grid_markdown, plot_latency_vs_cer
from streaming_vad import bench_vad, vad_markdown

log = logger("streaming bench")
SECTIONS = {  # name -> (measure, markdown)
    "vad": (lambda bundle, args, work: bench_vad(work), vad_markdown),
    "grid": (lambda bundle, args, work: bench_grid(bundle, args), grid_markdown),
    "batch": (lambda bundle, args, work: bench_batch(bundle, args), batch_markdown),
    "capacity": (lambda bundle, args, work: bench_capacity(bundle, args), capacity_markdown),
}
TITLES = {
    "vad": "VAD comparison",
    "grid": "chunk x context grid",
    "batch": "inference per window by batch size",
    "capacity": "server capacity",
}


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


def markdown(results: dict) -> str:
    env = results["environment"]
    out = [
        "# Streaming benchmark",
        "",
        f"CPU: {env['cpu']} ({env.get('usable_cpus')} usable cores, load {env.get('loadavg_1m')}); "
        f"instruction sets: {', '.join(results['cpu_isa']) or 'unknown'}. Model: {results['model']}.",
        "",
    ]
    for name, (_, section_markdown) in SECTIONS.items():
        if name not in results:
            continue
        lines = section_markdown(results)
        other = results.get("section_environment", {}).get(name, {})
        if other.get("cpu") not in (None, env["cpu"]):  # --update on another machine
            lines[2:2] = [
                f"(Measured on another machine: {other['cpu']}, load {other.get('loadavg_1m')}.)",
                "",
            ]
        out += lines
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

    run = start()
    work = args.work or Path(tempfile.mkdtemp(prefix="xlsr-streaming-"))
    work.mkdir(parents=True, exist_ok=True)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        ap.error(f"--sections: unknown {', '.join(unknown)} (choose from {', '.join(SECTIONS)})")
    bundle = get_bundle(args, work)
    previous = args.out / "results.json"
    results: dict = (
        json.loads(previous.read_text(encoding="utf-8")) if args.update and previous.is_file() else {}
    )
    # --update keeps earlier sections: each says which run (commit, command) measured it
    if results:
        old = results.get("provenance", "unrecorded (before issue 22)")
        for name in SECTIONS:
            if name in results and name not in sections:
                kept = _short(old) if isinstance(old, dict) else old
                results.setdefault("section_provenance", {}).setdefault(name, kept)
    results |= {
        "model": str(args.bundle)
        if args.bundle is not None
        else {"demo": "models/demo-tr (exported)", "xlsr-300m": "random weights, XLS-R 300M shape"}[
            args.model
        ],
        "bundle": str(bundle),
        # the machine of the first run; a section measured elsewhere says so (section_environment, markdown)
        "environment": results.get("environment") or environment(),
        "cpu_isa": results.get("cpu_isa") or cpu_isa(),
    }
    for name in sections:
        results.setdefault("section_environment", {})[name] = environment()
        results.setdefault("section_provenance", {})[name] = _short(run.finish())
        log(TITLES[name])
        results[name] = SECTIONS[name][0](bundle, args, work)
    plots = []
    if "grid" in sections:
        g = results["grid"]
        plots.append(
            lambda: plot_latency_vs_cer(g["rows"], args.out / "latency_vs_cer.png", g["offline_cer"])
        )
    if "capacity" in sections:
        plots.append(
            lambda: plot_bars(
                results["capacity"]["levels"],
                args.out / "capacity.png",
                value="final_latency_p95_s",
                group=lambda r: str(r["streams"]),
                series=lambda r: r["mode"],
                title="server: p95 final latency by concurrent real-time streams",
                ylabel="p95 end of speech -> final, s",
            )
        )
    md = markdown(results)
    write_results(args.out, results, run, markdown=md, plots=plots, log=log)
    print(json.dumps(results, indent=2, ensure_ascii=False, default=str))
    print(md)
    return 0


def _short(prov: dict) -> dict:
    return {k: prov.get(k) for k in ("git_commit", "git_dirty", "command", "started")}


if __name__ == "__main__":
    sys.exit(main())
