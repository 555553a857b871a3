"""The README's main job on a fresh machine: export the shipped demo model, transcribe its test clips, score.

models/demo-tr is a small XLS-R-shaped Wav2Vec2ForCTC trained by this repo's recipe on synthetic (espeak-ng)
Turkish speech. The demo exports it as fp32 and int8-dynamic bundles (both gated), transcribes a few clips, and
prints WER/CER and real-time factor of each bundle on the shipped held-out clips.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "models" / "demo-tr"


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    """`xlsr-edge ARGS` with this interpreter (`python -m xlsr_edge`): no PATH lookup, so an inactive venv
    or another install's script on PATH cannot be picked up."""
    print("+ xlsr-edge " + " ".join(args), flush=True)
    return subprocess.run([sys.executable, "-m", "xlsr_edge", *args], check=True, text=True, **kw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("demo-out"))
    ap.add_argument("--checkpoint", type=Path, default=DEMO)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
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
    print("\n| bundle | WER | CER | RTF | audio s | clips |\n|---|---:|---:|---:|---:|---:|")
    for p, wer, cer, rtf, secs, n in rows:
        print(f"| {p} | {wer:.1%} | {cer:.2%} | {rtf:.4f} | {secs:.1f} | {n} |")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:  # the step printed its own error line
        print(f"error: demo step failed with exit code {exc.returncode}", file=sys.stderr)
        sys.exit(2)
