"""The settings behind docs/precision.md's choices, measured (``--sections calibration,ort,openvino``):

1. ``calibration``: the demo model (models/demo-tr) as ``int8`` (static Q/DQ) with each calibration method
   (percentile, entropy with 2048 bins, minmax), calibrated on every other clip of its test set and scored on the
   other half: CER delta against the fp32 bundle (points, greedy) and frame argmax agreement with it.
2. ``ort``: onnxruntime on a random-weight model with XLS-R 300M's width and ``--layers`` layers (default 4):
   ``int8-dynamic`` with the attention core fused (MultiHeadAttention, the shipped form) against unfused, at 1 and
   2 threads on 10 s and 30 s input; thread spinning off (the runtime's setting) against on, 2 threads, 10 s.
   One process, onnxruntime sessions made directly, interleaved rounds (the compared cases back to back), median.
3. ``openvino``: start-up of that model's fp32 graph on OpenVINO (``OpenVinoRunner.activate``, 2 threads) with an
   empty compiled-model cache folder against a second load from the cache.

Writes results.json (with provenance) and results.md into -o (default benchmarks/results/precision_settings).
A few minutes on 2 cores (``--repeat``, ``--layers`` make it shorter or longer).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import (
    REPO,
    baseline_check,
    interleave,
    loadavg,
    logger,
    markdown_table,
    start,
    summarize,
    write_results,
)

DEMO = REPO / "models" / "demo-tr"
METHODS = ("percentile", "entropy", "minmax")
log = logger("precision settings")


# -- 1. calibration method ------------------------------------------------------------------------------------


def _halves(work: Path) -> tuple[Path, int, list[dict]]:
    """The demo test set split in two: every other clip calibrates (a manifest), the rest is scored."""
    rows = [
        json.loads(x) for x in (DEMO / "test" / "test.jsonl").read_text(encoding="utf-8").splitlines() if x
    ]
    for r in rows:
        r["audio_filepath"] = str((DEMO / "test" / r["audio_filepath"]).resolve())
    calib = work / "calibration.jsonl"
    calib.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[0::2]), encoding="utf-8")
    return calib, len(rows[0::2]), rows[1::2]


def _score(bundle: Path, clips: list[dict]) -> tuple[list[str], list[np.ndarray]]:
    """Greedy transcripts and per-frame argmax of each clip alone."""
    from xlsr_edge.runtime import Recognizer
    from xlsr_edge.runtime.audio import load_audio, normalize

    texts, frames = [], []
    with Recognizer.from_bundle(bundle, threads=2) as rec:
        for c in clips:
            x = normalize(load_audio(c["audio_filepath"], rec.info.sample_rate), rec.info.do_normalize)
            logits, lengths = rec.runner.infer(x[None, :], np.ones((1, len(x)), dtype=np.int64))
            frames.append(logits[0, : int(lengths[0])].argmax(-1))
            texts.append(rec.transcribe([c["audio_filepath"]])[0].text)
    return texts, frames


def bench_calibration(work: Path) -> dict:
    from xlsr_edge.export import ExportOptions, export_bundle
    from xlsr_edge.measure.metrics import error_rates

    calib, n_calib, clips = _halves(work)
    refs = [c["text"] for c in clips]
    fp32 = work / "demo-fp32"
    if not (fp32 / "bundle.json").is_file():
        export_bundle(DEMO, fp32, ExportOptions(overwrite=True))
    ref_texts, ref_frames = _score(fp32, clips)
    base_cer = error_rates(refs, ref_texts, language="tr").cer
    rows = []
    for method in METHODS:
        bundle = work / f"demo-int8-{method}"
        log(f"int8, {method} calibration")
        t0 = time.perf_counter()
        options = ExportOptions(
            overwrite=True,
            precision="int8",
            calibration=calib,
            calibration_method=method,
            max_cer_delta=float("inf"),  # scored below on the other half, not gated here
            min_frame_agreement=0.0,
        )
        export_bundle(DEMO, bundle, options)
        seconds = time.perf_counter() - t0
        texts, frames = _score(bundle, clips)
        same = sum(int((a == b).sum()) for a, b in zip(frames, ref_frames))
        cer = error_rates(refs, texts, language="tr").cer
        rows.append(
            {
                "method": method,
                "cer": cer,
                "cer_delta_points": 100 * (cer - base_cer),
                "frame_agreement": same / sum(len(f) for f in ref_frames),
                "export_s": seconds,
            }
        )
    return {
        "model": "models/demo-tr",
        "calibration_utterances": n_calib,
        "scored_utterances": len(clips),
        "fp32_cer": base_cer,
        "rows": rows,
    }


# -- 2. onnxruntime settings ----------------------------------------------------------------------------------


def _model(work: Path, layers: int) -> Path:
    """A random-weight XLS-R 300M-width model, exported fp32 (no parity gate: the settings compare graphs)."""
    from xlsr_edge.export import ExportOptions, export_bundle
    from xlsr_edge.export.tiny import XLSR_300M, build_checkpoint

    folder = work / f"xls-r-300m-shape-{layers}L"
    if not (folder / "fp32" / "bundle.json").is_file():
        log(f"building and exporting a random-weight 300M-width model with {layers} layers")
        build_checkpoint(folder / "checkpoint", **{**XLSR_300M, "num_hidden_layers": layers})
        export_bundle(folder / "checkpoint", folder / "fp32", ExportOptions(overwrite=True, verify=False))
    return folder


def _session(path: Path, threads: int, spinning: bool):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def bench_ort(work: Path, layers: int, seconds: list[float], repeat: int) -> dict:
    from xlsr_edge.measure.bench import exact_audio, load_source_audio
    from xlsr_edge.precision.dynamic import quantize_int8_dynamic
    from xlsr_edge.runtime.audio import normalize
    from xlsr_edge.runtime.runners import graph_feeds

    folder = _model(work, layers)
    graphs = {}
    for name, fused in (("fused", True), ("unfused", False)):
        graphs[name] = folder / f"int8-dynamic-{name}" / "model.onnx"
        if not graphs[name].is_file():
            graphs[name].parent.mkdir(parents=True, exist_ok=True)
            log(f"int8-dynamic, attention {name}")
            quantize_int8_dynamic(folder / "fp32" / "model.onnx", graphs[name], fused_attention=fused)
    base = load_source_audio(None, 16000, max_seconds=2 * max(seconds))
    feeds = {}
    for s in seconds:
        x = normalize(exact_audio(base, s, 16000), True)[None, :]
        feeds[s] = graph_feeds(x, np.ones(x.shape, dtype=np.int64), True)
    sessions = {(g, t, False): _session(p, t, False) for g, p in graphs.items() for t in (1, 2)}
    sessions[("fused", 2, True)] = _session(graphs["fused"], 2, True)
    cases = {}
    for (g, t, spin), sess in sessions.items():
        for s in seconds:
            if spin and s != min(seconds):
                continue
            names = {i.name for i in sess.get_inputs()}
            f = {k: v for k, v in feeds[s].items() if k in names}
            cases[(g, t, spin, s)] = lambda sess=sess, f=f: sess.run(None, f)
    before = loadavg()
    samples = interleave(cases, repeat, warmup=1, group=lambda k: (k[1], k[3]))
    after = loadavg()
    p50 = {k: summarize(v)["p50"] for k, v in samples.items()}
    rows = []
    for (g, t, spin, s), v in samples.items():
        row = {"graph": f"int8-dynamic, attention {g}", "threads": t, "spinning": spin, "seconds": s}
        row |= {"p50_s": p50[(g, t, spin, s)], "min_s": min(v), "max_s": max(v)}
        if g == "fused" and not spin:  # the change in call time against the alternative
            row["vs_unfused"] = row["p50_s"] / p50[("unfused", t, False, s)] - 1
            if ("fused", t, True, s) in p50:
                row["vs_spinning_on"] = row["p50_s"] / p50[("fused", t, True, s)] - 1
        rows.append(row)
    # the baselines (unfused, spinning on): their own repeats, and the load around the rounds
    flags = [
        f"{k[0]} {k[1]} thr {k[3]:g} s{' spinning' if k[2] else ''}: {f}"
        for k, v in samples.items()
        if k[0] == "unfused" or k[2]
        for f in baseline_check(v)["flags"]
    ]
    flags += baseline_check([], loadavg_before=before, loadavg_after=after, own_threads=2)["flags"]
    return {
        "model": f"random weights, XLS-R 300M width, {layers} layers",
        "repeat": repeat,
        "loadavg_before": before,
        "loadavg_after": after,
        "baseline_check": {"sane": not flags, "flags": flags},
        "rows": rows,
    }


# -- 3. OpenVINO compiled-model cache -------------------------------------------------------------------------


def bench_openvino(work: Path, layers: int, repeat: int) -> dict:
    from xlsr_edge.runtime.openvino import OpenVinoRunner

    graph = _model(work, layers) / "fp32" / "model.onnx"
    cache = work / "openvino-cache"
    cold, warm = [], []
    for _ in range(repeat):
        shutil.rmtree(cache, ignore_errors=True)
        for out in (cold, warm):
            runner = OpenVinoRunner(graph, threads=2, cache_dir=cache)
            t0 = time.perf_counter()
            runner.activate()
            out.append(time.perf_counter() - t0)
            runner.deactivate()
    size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    return {
        "model": f"random weights, XLS-R 300M width, {layers} layers, fp32 graph",
        "threads": 2,
        "repeat": repeat,
        "cold_s": summarize(cold)["p50"],
        "cached_s": summarize(warm)["p50"],
        "cold_samples_s": cold,
        "cached_samples_s": warm,
        "cache_mb": size / 2**20,
        "graph_mb": sum(f.stat().st_size for f in graph.parent.glob("model.onnx*")) / 2**20,
    }


# -- output -----------------------------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    out = ["# precision settings (benchmarks/precision_settings.py)", ""]
    if "calibration" in results:
        c = results["calibration"]
        out += [
            f"## Calibration method (demo model, int8 Q/DQ; calibrated on {c['calibration_utterances']} test clips, "
            f"scored on the other {c['scored_utterances']}; fp32 CER {c['fp32_cer']:.2%})",
            "",
            markdown_table(
                c["rows"],
                [
                    ("method", "method"),
                    ("cer", "CER", "{:.2%}"),
                    ("cer_delta_points", "Δ CER vs fp32 (points)", "{:+.2f}"),
                    ("frame_agreement", "frame agreement with fp32", "{:.4f}"),
                    ("export_s", "export s", "{:.1f}"),
                ],
            ),
            "",
        ]
    if "ort" in results:
        o = results["ort"]
        clean = (
            "" if o["baseline_check"]["sane"] else f" Not clean: {'; '.join(o['baseline_check']['flags'])}."
        )
        out += [
            f"## onnxruntime settings ({o['model']}; median of {o['repeat']} interleaved rounds, load "
            f"{o['loadavg_before'][0]:.2f} -> {o['loadavg_after'][0]:.2f}).{clean}",
            "",
            markdown_table(
                o["rows"],
                [
                    ("graph", "graph"),
                    ("threads", "threads"),
                    ("spinning", "spinning"),
                    ("seconds", "input s", "{:g}"),
                    ("p50_s", "call s (p50)", "{:.3f}"),
                    ("vs_unfused", "vs unfused", "{:+.1%}"),
                    ("vs_spinning_on", "vs spinning on", "{:+.1%}"),
                ],
            ),
            "",
        ]
    if "openvino" in results:
        v = results["openvino"]
        out += [
            f"## OpenVINO start-up ({v['model']}, {v['threads']} threads, median of {v['repeat']})",
            "",
            f"Empty cache folder: {v['cold_s']:.2f} s; from the cache: {v['cached_s']:.2f} s. Cache "
            f"{v['cache_mb']:.0f} MiB for a {v['graph_mb']:.0f} MiB graph.",
            "",
        ]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", type=Path, default=REPO / "benchmarks" / "results" / "precision_settings")
    ap.add_argument("--work", type=Path, default=None, help="bundles (reused when present)")
    ap.add_argument("--sections", default="calibration,ort,openvino")
    ap.add_argument("--layers", type=int, default=4, help="transformer layers of the 300M-width model")
    ap.add_argument("--seconds", type=lambda t: [float(x) for x in t.split(",")], default=[10.0, 30.0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    run = start()
    work = args.work or Path(tempfile.mkdtemp(prefix="xlsr-precision-settings-"))
    work.mkdir(parents=True, exist_ok=True)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    results: dict = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    if "calibration" in sections:
        results["calibration"] = bench_calibration(work)
    if "ort" in sections:
        results["ort"] = bench_ort(work, args.layers, args.seconds, args.repeat)
    if "openvino" in sections:
        results["openvino"] = bench_openvino(work, args.layers, max(1, min(args.repeat, 3)))
    md = markdown(results)
    write_results(args.out, results, run, markdown=md, log=log)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
