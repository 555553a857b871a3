"""`xlsr-edge optimize` on this machine, confirmed by `xlsr-edge bench` (issue 26).

Per model:
  (a) the demo model (``models/demo-tr``), gated on its 30 held-out test clips (the dev set is the test set, so
      the gate's CER delta is the test-set CER delta, max 0.3 points);
  (b) a random-weight model with facebook/wav2vec2-xls-r-300m's configuration (``--work`` reuses it), gated on
      the same clips with an informational threshold (its transcripts are noise).

1. ``optimize`` (``xlsr_edge.optimize.pipeline``) writes the bundle and keeps every converted candidate
   (``--keep-candidates``), each recording the backend and hint it ran fastest on.
2. ``run_bench`` (what `xlsr-edge bench` runs) times the chosen bundle and the kept candidates, each on the
   runtime it records (bench without ``--backend``), with PyTorch eager fp32 in the same run: the chosen one's
   audio-s/s against the fastest candidate's (the issue's "within 10 %"), and against eager.

Writes results.json and results.md (with provenance: commit, command, machine, load) into ``-o``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _common import REPO, isa_summary, logger, markdown_table, start, write_results

log = logger("optimize")


def run_model(
    name: str, ckpt: Path, dev: Path, work: Path, args, max_cer_delta: float, gate_size: int
) -> dict:
    from xlsr_edge.measure.bench import BenchConfig, run_bench
    from xlsr_edge.optimize.pipeline import OptimizeOptions, optimize, slug

    out, kept = work / f"{name}-bundle", work / f"{name}-candidates"
    options = OptimizeOptions(
        dev=dev,
        max_cer_delta=max_cer_delta,
        gate_size=gate_size,
        threads=args.threads,
        seconds=args.seconds,
        repeat=args.repeat,
        keep_candidates=kept,
        overwrite=True,
        budget_minutes=args.budget_minutes,
    )
    result = optimize(ckpt, out, options)
    others = [
        p for p in result.kept if p.name != slug(result.choice.candidate.graph.name)
    ]  # the chosen is `out`
    bench = run_bench(
        BenchConfig(
            bundles=[out, *others],
            seconds=[args.seconds],
            batch=[1],
            threads=[args.threads],
            backend=None,  # each bundle on the runtime it records
            torch=ckpt,
            repeat=args.bench_repeat,
        ),
        log,
        command=sys.argv,
    )
    rows = [r for r in bench["rows"] if r["kind"] == "bundle"]
    chosen = next(r for r in rows if r["path"] == str(out))
    fastest = max(rows, key=lambda r: r["audio_s_per_s"])
    return {
        "model": name,
        "runtime": result.runtime,
        "bench": bench,
        "chosen": chosen["engine"],
        "chosen_audio_s_per_s": chosen["audio_s_per_s"],
        "chosen_vs_eager": chosen["vs_baseline"],
        "fastest": fastest["engine"],
        "chosen_vs_fastest": chosen["audio_s_per_s"] / fastest["audio_s_per_s"],
        "gate_cer_delta_points": next(
            (c.get("cer_delta_points") for c in result.runtime["candidates"] if c["status"] == "chosen"), None
        ),
    }


COLUMNS = [
    ("engine", "engine (bundle, recorded runtime)"),
    ("audio_s_per_s", "audio-s/s", "{:.2f}"),
    ("vs_baseline", "vs eager", "{:.2f}x"),
    ("peak_rss_mb", "peak RSS MiB", "{:.0f}"),
    ("size_mb", "size MiB", "{:.1f}"),
]


def summary_lines(m: dict) -> list[str]:
    ok = m["chosen_vs_fastest"] >= 0.9
    load = m["bench"]["load_during_rounds"][0]
    flags = load["baseline_check"]["flags"]
    delta = m["gate_cer_delta_points"]
    return [
        f"- {m['model']}: optimize chose {m['runtime']['chosen']} ({m['runtime']['threads']} thread); bench: "
        f"{m['chosen_audio_s_per_s']:.2f} audio-s/s = {m['chosen_vs_fastest']:.1%} of the fastest candidate "
        f"({m['fastest']}): {'within' if ok else 'NOT within'} 10 %; {m['chosen_vs_eager']:.2f}x PyTorch eager fp32"
        + (f" (no verdict on eager: {'; '.join(flags)})" if flags else "")
        + (f"; gate CER delta {delta:+.2f} points" if isinstance(delta, int | float) else ""),
    ]


def main() -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # optimize's stage lines on stderr
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", type=Path, required=True, help="results folder (results.json, results.md)")
    ap.add_argument(
        "--work", type=Path, default=None, help="bundles and the 300M checkpoint (reused when present)"
    )
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--skip-300m", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=3, help="optimize's timed rounds per candidate")
    ap.add_argument("--bench-repeat", type=int, default=5, help="bench's interleaved rounds")
    ap.add_argument("--budget-minutes", type=float, default=None)
    args = ap.parse_args()
    run = start()
    work = args.work or Path(tempfile.mkdtemp(prefix="xlsr-optimize-"))
    dev = REPO / "models" / "demo-tr" / "test" / "test.jsonl"
    models = []
    if not args.skip_demo:
        models.append(run_model("demo", REPO / "models" / "demo-tr", dev, work, args, 0.3, 100))
    if not args.skip_300m:
        from xlsr_edge.export.tiny import XLSR_300M, build_checkpoint

        ckpt = work / "xls-r-300m-shape" / "checkpoint"
        if not (ckpt / "model.safetensors").is_file():
            log("building a random-weight xls-r-300m-shape checkpoint")
            build_checkpoint(ckpt, **XLSR_300M)
        # random weights: the gate is informational (10 clips, any CER change passes), the speed is what is measured
        models.append(run_model("xls-r-300m-shape", ckpt, dev, work, args, 100.0, 10))
    env = models[0]["bench"]["environment"] if models else {}
    parts = [
        f"# xlsr-edge optimize, confirmed by bench\n\nCPU {env.get('cpu')} ({env.get('usable_cpus')} usable cores; "
        f"{isa_summary(env.get('instruction_sets'))}); {args.threads} thread, {args.seconds:g} s of audio, batch 1. "
        "Bench: the chosen bundle and every kept candidate, each on the runtime it records, PyTorch eager fp32 "
        f"in the same run, {args.bench_repeat} interleaved rounds, median.\n"
    ]
    for m in models:
        parts.append(
            f"## {m['model']}\n\n"
            + markdown_table(m["bench"]["rows"], COLUMNS)
            + "\n\n"
            + "\n".join(summary_lines(m))
        )
    results = {"models": models, "settings": {k: str(v) for k, v in vars(args).items()}}
    written = write_results(args.out, results, run, markdown="\n\n".join(parts) + "\n", log=log)
    log(f"wrote {', '.join(p.name for p in written)} in {args.out} (work: {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
