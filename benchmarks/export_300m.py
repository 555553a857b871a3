"""Export a random-weight model with facebook/wav2vec2-xls-r-300m's configuration; report time, peak RSS, size.

The export runs in a child process (`export-xlsr`) so its peak RSS is measured alone. Prints JSON and a
markdown table; writes both (and a PNG) into -o.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import markdown_table, plot_bars, start, write_results


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-o", "--out", type=Path, default=Path("benchmarks/results/export_300m"))
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--layers", type=int, default=24, help="fewer layers for a quick run")
    args = ap.parse_args()
    run = start()
    work = args.work or Path(tempfile.mkdtemp(prefix="xlsr300m-"))

    from xlsr_edge.export.tiny import XLSR_300M, build_checkpoint

    ckpt = work / "ckpt"
    if not (ckpt / "model.safetensors").exists():
        build_checkpoint(ckpt, **{**XLSR_300M, "num_hidden_layers": args.layers}, head_gain=1.0)
    bundle = work / "bundle"
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["export-xlsr", str(ckpt), "-o", str(bundle), "--overwrite"], capture_output=True, text=True
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return proc.returncode
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    meta = json.loads((bundle / "bundle.json").read_text())
    result = {
        "config": "xls-r-300m (random weights)" + ("" if args.layers == 24 else f", {args.layers} layers"),
        "export_seconds": round(seconds, 1),
        "peak_rss_gb": round(peak_kb / 1024**2, 2),
        "checkpoint_mb": round(dir_size(ckpt) / 1e6, 1),
        "bundle_mb": round(dir_size(bundle) / 1e6, 1),
        "external_data": meta["extra"]["export"]["external_data"],
        "parity_max_abs_diff": meta["parity"]["vs_pytorch"]["max_abs_diff"],
        "parity_argmax_agreement": meta["parity"]["vs_pytorch"]["argmax_agreement"],
        "parity_passed": meta["parity"]["passed"],
    }
    table = markdown_table([result], [(k, k) for k in result])
    print(json.dumps(result, indent=2))
    print(table)
    bars = [
        {"what": "export s", "value": result["export_seconds"]},
        {"what": "peak RSS GB", "value": result["peak_rss_gb"]},
        {"what": "bundle GB", "value": result["bundle_mb"] / 1000},
    ]
    plot = [
        lambda: plot_bars(
            bars,
            args.out / "results.png",
            value="value",
            group=lambda r: r["what"],
            series=lambda r: "export-xlsr",
            title="export-xlsr, XLS-R 300M shape",
        )
    ]
    write_results(args.out, result, run, markdown=table, plots=plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
