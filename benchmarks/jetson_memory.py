"""Memory budget per precision (docs/jetson.md): bundle size on disk and the runtime's peak RSS.

For the demo model (models/demo-tr) and the XLS-R 300M shape (random weights, benchmarks/export_300m.py's
configuration), each precision is exported with export-xlsr. The 300M graph has random weights, so its gates
would compare noise with noise (CER above 300 %): it is exported with --no-verify and an accuracy-gate threshold
that cannot fail; the demo model's bundles pass both gates. Then, in a fresh process per bundle and audio length: import the runtime, load the bundle
(onnxruntime CPU, --threads), transcribe N seconds of speech (the shipped test clips looped) at batch 1, and read
VmRSS after the imports, VmHWM after loading and VmHWM after the call.

This is the CPU path (onnxruntime's CPU provider) on x86: on a Jetson the same bundle on the CPU needs about the
same; a TensorRT engine lives in the GPU's share of the same unified memory and is not measured here.

    python benchmarks/jetson_memory.py                 # demo + 300M shape, 10 and 30 s (~8 min on 2 cores)
    python benchmarks/jetson_memory.py --skip-300m     # demo only (~1 min)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, logger, markdown_table, start, write_results

log = logger("jetson_memory")
DEMO = REPO / "models" / "demo-tr"
DEMO_PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8")
# int8 (static Q/DQ) of the 300M shape calibrates for ~9 min here: its size and RSS are in
# benchmarks/results/precision (340 MB, 1002 MiB at 10 s); --precisions-300m adds it
PRECISIONS_300M = ("fp32", "fp16", "int8-dynamic")


# The measured process: only the runtime's imports (not this script's helpers), RSS read from /proc/self/status.
CHILD = """
import json, sys, time
from pathlib import Path

import numpy as np
import soundfile as sf

from xlsr_edge.runtime import Recognizer


def status_mib(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return round(int(line.split()[1]) / 1024, 1)


bundle, seconds, threads, clips = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
after_import = status_mib("VmRSS")
speech = np.concatenate([sf.read(c, dtype="float32")[0] for c in clips])
need = int(seconds * 16000)
audio = np.tile(speech, need // len(speech) + 1)[:need]
t0 = time.perf_counter()
with Recognizer.from_bundle(bundle, threads=threads) as rec:
    after_load = status_mib("VmHWM")
    t1 = time.perf_counter()
    rec.transcribe([audio], sample_rate=16000)
    t2 = time.perf_counter()
    peak = status_mib("VmHWM")
print(json.dumps({"rss_after_import_mib": after_import, "peak_after_load_mib": after_load,
                  "peak_after_run_mib": peak, "load_s": round(t1 - t0, 2), "run_s": round(t2 - t1, 2)}))
"""


def export(checkpoint: Path, bundle: Path, precision: str, random_weights: bool) -> float | None:
    """export-xlsr (this interpreter); seconds taken, None when the bundle was already there (--work reuse)."""
    if (bundle / "bundle.json").exists():
        return None
    cmd = [sys.executable, "-m", "xlsr_edge", "export", str(checkpoint), "-o", str(bundle)]
    cmd += ["--precision", precision, "--overwrite"]
    if random_weights:  # the gates would compare noise with noise
        cmd += ["--no-verify", "--max-cer-delta", "100", "--min-frame-agreement", "0"]
    log(" ".join(cmd[2:]))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"export failed ({precision}):\n{proc.stderr[-2000:]}")
    return round(time.perf_counter() - t0, 1)


def measure(bundle: Path, seconds: float, threads: int) -> dict:
    clips = [str(c) for c in sorted((DEMO / "test").glob("*.flac"))]
    cmd = [sys.executable, "-c", CHILD, str(bundle), str(seconds), str(threads), *clips]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"measurement failed ({bundle}, {seconds} s):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def size_mb(folder: Path) -> float:
    return round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", type=Path, default=REPO / "benchmarks" / "results" / "jetson_memory")
    ap.add_argument("--work", type=Path, default=None, help="checkpoints and bundles (reused when present)")
    ap.add_argument("--seconds", type=float, nargs="+", default=[10.0, 30.0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-300m", action="store_true")
    ap.add_argument("--precisions-300m", nargs="+", default=list(PRECISIONS_300M), choices=DEMO_PRECISIONS)
    args = ap.parse_args()
    run = start()
    work = args.work or Path(tempfile.mkdtemp(prefix="jetson-mem-"))
    models = [("demo", DEMO, DEMO_PRECISIONS, False)]
    if not args.skip_300m:
        from xlsr_edge.export.tiny import XLSR_300M, build_checkpoint

        ckpt = work / "ckpt-300m"
        if not (ckpt / "model.safetensors").exists():
            log("building the random-weight XLS-R 300M-shaped checkpoint")
            build_checkpoint(ckpt, **XLSR_300M, head_gain=1.0)
        models.append(("xls-r-300m-shape", ckpt, tuple(args.precisions_300m), True))
    rows = []
    for model, ckpt, precisions, random_weights in models:
        for precision in precisions:
            bundle = work / f"{model}-{precision}"
            export_s = export(ckpt, bundle, precision, random_weights)
            for seconds in args.seconds:
                log(f"{model} {precision}: {seconds:g} s")
                m = measure(bundle, seconds, args.threads)
                rows.append(
                    {
                        "model": model,
                        "precision": precision,
                        "bundle_mb": size_mb(bundle),
                        "export_s": export_s,
                    }
                    | {
                        "seconds": seconds,
                        "batch": 1,
                        "threads": args.threads,
                        "backend": "onnxruntime (CPU)",
                    }
                    | m
                )
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    cols = [
        ("model", "model", "{}"),
        ("precision", "precision", "{}"),
        ("bundle_mb", "bundle MB", "{:.1f}"),
        ("seconds", "audio s", "{:g}"),
        ("rss_after_import_mib", "RSS after imports MiB", "{:.0f}"),
        ("peak_after_load_mib", "peak after load MiB", "{:.0f}"),
        ("peak_after_run_mib", "peak after the call MiB", "{:.0f}"),
        ("run_s", "call s", "{:.2f}"),
    ]
    table = markdown_table(rows, cols)
    print(table)
    results = {
        "what": "bundle size and peak RSS of the runtime (onnxruntime CPU, batch 1) per precision",
        "method": __doc__.split("\n\n")[1].replace("\n", " "),
        "rows": rows,
    }
    write_results(args.out, results, run, markdown=table, log=log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
