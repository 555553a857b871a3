"""The README's main job on a fresh machine: export a model, transcribe the shipped clips, print speed.

Until the trained demo model ships, this uses a tiny random-weight checkpoint built locally (its transcripts are
gibberish by construction; the point is the full path: checkpoint -> verified bundle -> runtime).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from xlsr_edge.data import CLIPS_MANIFEST


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("demo-out"))
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: a tiny random checkpoint")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.checkpoint
    if ckpt is None:
        from xlsr_edge.export.tiny import build_checkpoint

        ckpt = build_checkpoint(args.out / "tiny-checkpoint")
        print(f"built a tiny random checkpoint in {ckpt}")
    bundle = args.out / "bundle"
    subprocess.run(["export-xlsr", str(ckpt), "-o", str(bundle), "--overwrite"], check=True)
    subprocess.run(["xlsr-edge", "inspect", str(bundle)], check=True)
    t0 = time.perf_counter()
    out = subprocess.run(
        ["xlsr-edge", "transcribe", str(bundle), str(CLIPS_MANIFEST), "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in out.splitlines()]
    audio = sum(r.get("duration", 0) for r in rows)
    for r in rows:
        print(f"{r['audio']}\t{r.get('text', r.get('error'))}")
    print(f"{len(rows)} clips, {audio:.1f} s of audio in {wall:.2f} s (process start included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
