"""Precision benchmark (issue 7): fp32 / fp16 / int8-dynamic / int8 bundles against PyTorch eager fp32.

Models:
  (a) the demo model (``models/demo-tr``, or ``--demo CKPT``) when present: also CER/WER on its test set;
  (b) a random-weight model with facebook/wav2vec2-xls-r-300m's configuration (built locally, no hub).

Per model, every precision is exported with ``export_bundle`` (parity gate on the fp32 graph, accuracy gate on
the converted one; the random model's gate is informational only: its transcripts are noise), then timed with
``xlsr_edge.measure.bench.run_bench``: each engine in its own spawned process, PyTorch eager fp32 in the same run,
interleaved rounds, warm-up excluded; throughput = audio seconds / median model-call seconds on exactly
``--seconds`` of audio (batch rows of equal length, no padding). Also reported: bundle size, load time, peak RSS.

Extra variants ``int8-dynamic+cnn`` and ``int8+cnn``: int8-dynamic / static Q/DQ int8 with the CNN feature
encoder's layers 1-6 exported as MatMuls and quantized too (``--quantize-ops MatMul Gemm FeatureEncoder``);
``int8+cnn+attn`` also quantizes the attention score/context MatMuls (``Attention``).

Engines (issue 19): every variant on onnxruntime, the ``--ov-variants`` (default fp32, int8, int8+cnn) also on
OpenVINO (``--backend openvino``, precision hint chosen from the CPU unless ``--precision-hint``), and PyTorch eager
under ``torch.autocast("cpu", bfloat16)`` next to the eager fp32 baseline (``--no-torch-bf16`` leaves it out),
all in one ``run_bench`` per model and thread count; ``--ov-static-too`` adds each OpenVINO engine with a
static compile of the timed shape (``--static-shapes``: what repeated shapes get). The CPU's instruction sets
(AVX512-VNNI, AVX512-BF16, AMX) and the load average before and after the timed rounds are written with the
figures.

Writes results.json, results.md and throughput_<model>.png into ``-o``. ``--quick`` is a small run (4-layer 300M shape,
2 threads, batch 1, 2 rounds).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from _common import REPO, isa_summary, markdown_table, plot_bars, start, write_results

VARIANTS = {
    "fp32": {},
    "fp16": {"precision": "fp16"},
    "int8-dynamic": {"precision": "int8-dynamic"},
    "int8": {"precision": "int8"},
    "int8-dynamic+cnn": {"precision": "int8-dynamic", "quantize_ops": ("MatMul", "Gemm", "FeatureEncoder")},
    "int8+cnn": {"precision": "int8", "quantize_ops": ("MatMul", "Gemm", "FeatureEncoder")},
    # + the attention score/context MatMuls in int8 (xlsr-edge optimize's "int8+fe+attn" on int8-dot-product CPUs)
    "int8+cnn+attn": {"precision": "int8", "quantize_ops": ("MatMul", "Gemm", "FeatureEncoder", "Attention")},
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def find_demo(path: Path | None) -> tuple[Path | None, Path | None, Path | None]:
    """(checkpoint, test manifest, calibration manifest) of the demo model, or Nones."""
    root = path or REPO / "models" / "demo-tr"
    if not root.exists():
        return None, None, None
    candidates = [root, root / "checkpoint", root / "ckpt"]
    ckpt = next((c for c in candidates if (c / "config.json").is_file()), None)

    def manifest(*names: str) -> Path | None:
        for name in names:
            hits = sorted(root.rglob(name))
            if hits:
                return hits[0]
        return None

    return ckpt, manifest("test.jsonl", "test.tsv", "test.csv"), manifest("dev.jsonl", "train.jsonl")


def export_variants(
    ckpt: Path, work: Path, names: list[str], calibration: Path | None, informational_gate: bool
) -> dict[str, dict]:
    from xlsr_edge.export import ExportOptions, export_bundle

    out = {}
    for name in names:
        bundle = work / name
        meta = {"bundle": bundle}
        times_file = work / "export_seconds.json"
        times = json.loads(times_file.read_text()) if times_file.is_file() else {}
        if (bundle / "bundle.json").is_file():
            log(f"reusing {bundle}")
            meta["export_s"] = times.get(name)
        else:
            kw = dict(VARIANTS[name])
            if kw.get("precision"):
                kw["calibration"] = calibration
                if informational_gate:
                    kw.update(max_cer_delta=math.inf, min_frame_agreement=0.0)
            log(f"exporting {ckpt} as {name}")
            t0 = time.perf_counter()
            export_bundle(ckpt, bundle, ExportOptions(overwrite=True, **kw))
            meta["export_s"] = times[name] = round(time.perf_counter() - t0, 1)
            times_file.write_text(json.dumps(times, indent=2) + "\n")
        data = json.loads((bundle / "bundle.json").read_text())
        report = data.get("extra", {}).get("precision_report") or {}
        gate = report.get("gate") or {}
        meta.update(
            precision=data["precision"],
            gate_cer_delta_points=gate.get("cer_delta_points"),
            gate_argmax_agreement=gate.get("argmax_agreement"),
            quantized=(report.get("ops") or {}).get("quantized"),
        )
        out[name] = meta
    return out


def engines(bundles: dict[str, dict], args) -> list[tuple[str, str]]:
    """(variant, backend) pairs to run: every variant on onnxruntime, the --ov-variants also on openvino."""
    out = []
    for name in bundles:
        for backend in args.backends:
            if backend == "openvino" and name not in args.ov_variants:
                continue
            out.append((name, backend))
    return out


def test_set_cer(bundles: dict[str, dict], manifest: Path, args) -> dict[tuple[str, str], dict]:
    """CER/WER of every (variant, backend) on the demo test set (greedy, the runtime's own pipeline)."""
    from xlsr_edge.datasets import read_manifest
    from xlsr_edge.measure.metrics import error_rates
    from xlsr_edge.runtime import Recognizer

    utts = read_manifest(manifest)
    refs = [u.text or "" for u in utts]
    out = {}
    for name, backend in engines(bundles, args):
        kw = runner_options(args) if backend == "openvino" else {}
        with Recognizer.from_bundle(bundles[name]["bundle"], backend=backend, threads=2, **kw) as rec:
            hyps = [t.text for t in rec.transcribe([u.audio for u in utts])]
        r = error_rates(refs, hyps, language="tr")
        out[(name, backend)] = {"test_cer": r.cer, "test_wer": r.wer, "test_utterances": r.utterances}
        log(f"{name} on {backend}: test CER {r.cer:.2%} WER {r.wer:.2%}")
    return out


def runner_options(args) -> dict:
    return {"precision_hint": args.precision_hint} if args.precision_hint else {}


def bench(
    model: str, ckpt: Path, bundles: dict[str, dict], args, batch: list[int], cer: dict | None = None
) -> list[dict]:
    from xlsr_edge.measure.bench import BenchConfig, run_bench

    pairs = engines(bundles, args)
    paths = {name: str(m["bundle"]) for name, m in bundles.items()}
    config = BenchConfig(
        bundles=[m["bundle"] for m in bundles.values()],
        seconds=[args.seconds],
        batch=batch,
        threads=args.threads,
        torch=ckpt,
        torch_bf16=args.torch_bf16,
        repeat=args.repeat,
        warmup=args.warmup,
        backend=list(args.backends),
        runner_options=runner_options(args),
        bundle_backends={paths[n]: [b for v, b in pairs if v == n] for n in bundles},
        openvino_static_too=args.ov_static_too,
    )
    rows = []
    for threads in args.threads:  # one run per thread count: its load average is its own
        results = run_bench(replace(config, threads=[threads]), log, command=sys.argv)
        by_path = {paths[n]: n for n in bundles}
        fp32_cer = (cer or {}).get(("fp32", "onnxruntime"), {}).get("test_cer")
        for r in results["rows"]:
            name = by_path.get(r["path"], r["engine"])
            meta = bundles.get(name, {})
            backend = r["backend"]
            static = bool(r.get("static_shapes"))
            c = {} if static else (cer or {}).get((name, backend), {})
            rows.append(
                {
                    "model": model,
                    "variant": name,
                    "backend": backend,
                    "engine": name
                    if backend in ("pytorch",)
                    else f"{name} ({backend}{', static shape' if static else ''})",
                    "static_shapes": static,
                    "compute": r.get("inference_precision") or r.get("autocast"),
                    **{
                        k: r[k]
                        for k in ("precision", "threads", "batch", "seconds", "audio_s_per_s", "p50_ms")
                    },
                    "vs_eager": r["vs_baseline"],
                    "load_s": r["load_s"],
                    "peak_rss_mb": r["peak_rss_mb"],
                    "size_mb": r["size_mb"],
                    "export_s": meta.get("export_s"),
                    "test_cer": c.get("test_cer"),
                    "test_wer": c.get("test_wer"),
                    "cer_delta_points": None
                    if c.get("test_cer") is None or fp32_cer is None
                    else 100 * (c["test_cer"] - fp32_cer),
                    "gate_cer_delta_points": meta.get("gate_cer_delta_points"),
                    "gate_argmax_agreement": meta.get("gate_argmax_agreement"),
                }
            )
        rows.append(
            {
                "model": model,
                "threads": threads,
                "environment": results["environment"],
                "load_during_rounds": results["load_during_rounds"],
                "baseline_sane": results["baseline_sane"],
                "baseline_flags": [
                    f for x in results["load_during_rounds"] for f in x["baseline_check"]["flags"]
                ],
                "method": results["method"],
            }
        )
    return rows


def goal_lines(rows: list[dict], runs: list[dict], target: float = 5.5) -> list[str]:
    """Per model and thread count at batch 1: the fastest engine and its ratio to eager fp32. The verdict
    ("meets"/"misses") only where eager's own run was clean (``baseline_check``): a ratio to an eager run that
    slowed down under other load (once printed as "34.55x (meets 5.5x)") is reported without one."""
    flags = {(r["model"], r["threads"]): r.get("baseline_flags", []) for r in runs}
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for threads in sorted({r["threads"] for r in rows if r["model"] == model}):
            cand = [
                r
                for r in rows
                if r["model"] == model and r["threads"] == threads and r["batch"] == 1 and r["vs_eager"]
            ]
            if not cand:
                continue
            best = max(cand, key=lambda r: r["vs_eager"])
            bad = flags.get((model, threads), [])
            verdict = (
                f"no verdict: eager's run not clean, {'; '.join(bad)}"
                if bad
                else f"{'meets' if best['vs_eager'] >= target else 'misses'} {target}x"
            )
            out.append(
                f"- {model}, {threads} thread{'s' if threads > 1 else ''}, batch 1: fastest {best['engine']} "
                f"{best['audio_s_per_s']:.2f} audio-s/s = {best['vs_eager']:.2f}x eager fp32 ({verdict})"
            )
    return out


COLUMNS = [
    ("model", "model"),
    ("engine", "engine"),
    ("compute", "non-int8 math"),
    ("threads", "threads"),
    ("batch", "batch"),
    ("audio_s_per_s", "audio-s/s", "{:.2f}"),
    ("vs_eager", "vs eager", "{:.2f}x"),
    ("load_s", "load s", "{:.2f}"),
    ("peak_rss_mb", "peak RSS MiB", "{:.0f}"),
    ("size_mb", "size MiB", "{:.1f}"),
    ("test_cer", "test CER", "{:.2%}"),
    ("cer_delta_points", "ΔCER vs fp32 pts", "{:+.2f}"),
    ("gate_cer_delta_points", "gate ΔCER pts", "{:+.2f}"),
    ("gate_argmax_agreement", "frame agree", "{:.4f}"),
]


def plots(rows: list[dict], out: Path, seconds: float) -> list:
    """One PNG per model: throughput per (threads, batch), one bar per engine (drawn after the figures)."""
    return [
        lambda model=model: plot_bars(
            [r for r in rows if r["model"] == model],
            out / f"throughput_{model}.png",
            value="audio_s_per_s",
            group=lambda r: f"{r['threads']} thr, batch {r['batch']}",
            series=lambda r: r["engine"],
            title=f"{model}: throughput on {seconds:g} s audio (audio-seconds per second)",
            ylabel="audio-s/s",
        )
        for model in dict.fromkeys(r["model"] for r in rows)
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", type=Path, default=REPO / "benchmarks" / "results" / "precision")
    ap.add_argument("--work", type=Path, default=None, help="bundles and checkpoints (reused when present)")
    ap.add_argument("--demo", type=Path, default=None, help="demo model folder (default models/demo-tr)")
    ap.add_argument("--demo-test", type=Path, default=None, help="test manifest (default: found in --demo)")
    ap.add_argument(
        "--demo-calibration", type=Path, default=None, help="default: dev/train manifest in --demo"
    )
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--skip-300m", action="store_true")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument(
        "--backends", nargs="+", default=["onnxruntime", "openvino"], choices=["onnxruntime", "openvino"]
    )
    ap.add_argument(
        "--ov-variants",
        nargs="+",
        default=["fp32", "int8", "int8+cnn"],
        choices=list(VARIANTS),
        help="variants also run on OpenVINO",
    )
    ap.add_argument(
        "--variants-300m", nargs="+", default=None, choices=list(VARIANTS), help="default: --variants"
    )
    ap.add_argument(
        "--ov-variants-300m", nargs="+", default=None, choices=list(VARIANTS), help="default: --ov-variants"
    )
    ap.add_argument("--precision-hint", default=None, help="OpenVINO hint (default: chosen from the CPU)")
    ap.add_argument(
        "--ov-static-too",
        action="store_true",
        help="every OpenVINO engine also with a static compile of the timed shape (--static-shapes 1), "
        "side by side",
    )
    ap.add_argument("--no-torch-bf16", dest="torch_bf16", action="store_false")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--batch-300m", type=int, nargs="+", default=None, help="default: --batch")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--layers", type=int, default=24, help="transformer layers of the 300M-shaped model")
    ap.add_argument("--quick", action="store_true", help="4 layers, 2 threads, batch 1, 2 rounds")
    args = ap.parse_args()
    run = start()
    if args.quick:
        args.layers, args.threads, args.batch, args.repeat = 4, [2], [1], 2
    work = args.work or Path(tempfile.mkdtemp(prefix="xlsr-precision-"))
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    if not args.skip_demo:
        ckpt, test_manifest, cal = find_demo(args.demo)
        test_manifest, cal = args.demo_test or test_manifest, args.demo_calibration or cal
        if ckpt is None:
            log("demo model not found (models/demo-tr): skipping part (a)")
        else:
            bundles = export_variants(ckpt, work / "demo", args.variants, cal, informational_gate=False)
            cer = test_set_cer(bundles, test_manifest, args) if test_manifest is not None else None
            rows += bench("demo", ckpt, bundles, args, args.batch, cer)

    if not args.skip_300m:
        from xlsr_edge.export.tiny import XLSR_300M, build_checkpoint

        name = "xls-r-300m-shape" + ("" if args.layers == 24 else f"-{args.layers}L")
        ckpt = work / name / "checkpoint"
        if not (ckpt / "model.safetensors").is_file():
            log(f"building a random-weight {name} checkpoint")
            build_checkpoint(ckpt, **{**XLSR_300M, "num_hidden_layers": args.layers})
        variants = args.variants_300m or args.variants
        bundles = export_variants(ckpt, work / name, variants, None, informational_gate=True)
        args300 = argparse.Namespace(
            **{**vars(args), "ov_variants": args.ov_variants_300m or args.ov_variants}
        )
        rows += bench(name, ckpt, bundles, args300, args.batch_300m or args.batch)

    table_rows = [r for r in rows if "variant" in r]
    envs = [r for r in rows if "environment" in r]
    table = markdown_table(table_rows, COLUMNS)
    print(json.dumps(table_rows, indent=2, default=str))
    print(table)
    env = envs[0]["environment"] if envs else {}
    versions = ", ".join(f"{k} {env[k]}" for k in ("onnxruntime", "openvino", "torch") if env.get(k))
    loads = "; ".join(
        f"{e['model']} {e['threads']} thr: "
        + ", ".join(
            f"{x['loadavg_before'][0]:.2f} -> {x['loadavg_after'][0]:.2f}" for x in e["load_during_rounds"]
        )
        for e in envs
    )
    md = (
        f"# precision benchmark\n\nCPU {env.get('cpu')} ({env.get('usable_cpus')} usable cores; "
        f"{isa_summary(env.get('instruction_sets'))}), {versions}; {args.seconds:g} s audio, "
        f"{args.repeat} interleaved rounds, median. vs eager = audio-s/s / PyTorch eager fp32's in the same run "
        f"(one run per model and thread count). 1-minute load average before -> after the timed rounds: {loads}. "
        "non-int8 math: OpenVINO's inference precision (bf16/f32) or PyTorch autocast.\n\n"
        + table
        + "\n\n"
        + "\n".join(goal_lines(table_rows, envs))
        + "\n"
    )
    results = {"rows": table_rows, "runs": envs, "settings": vars(args)}
    written = write_results(
        args.out, results, run, markdown=md, plots=plots(table_rows, args.out, args.seconds)
    )
    log(f"wrote {', '.join(p.name for p in written)} in {args.out} (work: {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
