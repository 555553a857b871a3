"""The README's main job on a fresh machine: export the shipped demo model, transcribe its test clips, score.

models/demo-tr is a small XLS-R-shaped Wav2Vec2ForCTC trained by this repo's recipe on synthetic (espeak-ng)
Turkish speech. The demo exports it as fp32 and int8-dynamic bundles (both gated), transcribes a few clips, and
prints WER/CER and real-time factor of each bundle on the shipped held-out clips.

The table also goes to ``--results DIR`` (default ``OUT/results``) as results.json (with provenance: git commit,
command, machine, load average before/after) and results.md. The README's table is
``python scripts/demo.py --results benchmarks/results/demo``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "models" / "demo-tr"
COLUMNS = ["bundle", "wer", "cer", "rtf", "audio_s", "clips"]


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    """`xlsr-edge ARGS` with this interpreter (`python -m xlsr_edge`): no PATH lookup, so an inactive venv
    or another install's script on PATH cannot be picked up."""
    print("+ xlsr-edge " + " ".join(args), flush=True)
    return subprocess.run([sys.executable, "-m", "xlsr_edge", *args], check=True, text=True, **kw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("demo-out"))
    ap.add_argument("--checkpoint", type=Path, default=DEMO)
    ap.add_argument(
        "--results", type=Path, default=None, help="results.json/.md folder (default: OUT/results)"
    )
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from xlsr_edge.measure.sysinfo import environment, start_run

    started = start_run(sys.argv)
    test = args.checkpoint / "test" / "test.jsonl"
    rows = []
    for precision in ("fp32", "int8-dynamic"):
        bundle = args.out / f"bundle-{precision}"
        run("export", str(args.checkpoint), "-o", str(bundle), "--precision", precision, "--overwrite")
        if precision == "fp32":
            run("inspect", str(bundle))
            clips = sorted((args.checkpoint / "test").glob("*.flac"))[:3]
            run("transcribe", str(bundle), *map(str, clips))
        out = run("eval", str(bundle), str(test), "--json", capture_output=True).stdout
        r = json.loads(out)
        rows.append((precision, r["wer"], r["cer"], r["rtf"], r["audio_seconds"], r["utterances"]))
    lines = ["| bundle | WER | CER | RTF | audio s | clips |", "|---|---:|---:|---:|---:|---:|"]
    lines += [
        f"| {p} | {wer:.1%} | {cer:.2%} | {rtf:.4f} | {secs:.1f} | {n} |"
        for p, wer, cer, rtf, secs, n in rows
    ]
    print("\n" + "\n".join(lines))
    write_results(args.results or args.out / "results", rows, started, environment(), lines)
    return 0


def write_results(folder: Path, rows: list[tuple], started, env: dict, lines: list[str]) -> None:
    """results.json (rows, environment, provenance) and results.md: where the README's table comes from."""
    from xlsr_edge.measure.bench_report import write_json

    prov = started.finish()
    data = {
        "rows": [dict(zip(COLUMNS, r)) for r in rows],
        "method": "`xlsr-edge eval BUNDLE models/demo-tr/test/test.jsonl --json` per bundle (greedy); rtf = "
        "wall-clock transcription seconds (front end + inference + decoding, model load excluded) / audio "
        "seconds, default onnxruntime threads",
        "environment": env,
        "provenance": prov,
    }
    write_json(folder / "results.json", data)
    commit = (prov["git_commit"] or "no git checkout")[:12] + (" (dirty tree)" if prov["git_dirty"] else "")
    before, after = prov["loadavg_before"], prov["loadavg_after"]
    load = f"{before[0]:.2f} -> {after[0]:.2f}" if before and after else "unknown"
    (folder / "results.md").write_text(
        "# scripts/demo.py\n\n"
        + "\n".join(lines)
        + f"\n\nCPU {env.get('cpu')} ({env.get('usable_cpus')} usable "
        f"cores), 1-minute load average {load} (before -> after). Commit {commit}; command "
        f"`{' '.join(prov['command'])}`.\n",
        encoding="utf-8",
    )
    print(f"wrote {folder / 'results.json'} and results.md")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:  # the step printed its own error line
        print(f"error: demo step failed with exit code {exc.returncode}", file=sys.stderr)
        sys.exit(2)
