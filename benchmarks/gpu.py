"""GPU benchmark (issue 9): ORT CUDA fp32/fp16, ORT TensorRT EP, native TensorRT fp16/int8, 300M-shaped model.

Run on a machine with an NVIDIA GPU, tensorrt, cuda-python and onnxruntime-gpu. Every engine is loaded, then
timed in interleaved rounds (warm-up excluded) at each batch size on 10 s of speech per item. Prints JSON and a
markdown table, writes results.{json,md,png} into -o. GPU memory is the device memory in use after loading
each engine (cudaMemGetInfo delta).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import environment, interleave, markdown_table, plot_bars, start, summarize, write_results

from xlsr_edge.measure.bench import exact_audio, load_source_audio, throughput


def gpu_used_bytes() -> int:
    from xlsr_edge.runtime.tensorrt import _cuda, _import_cudart

    free, total = _cuda(_import_cudart().cudaMemGetInfo())
    return int(total - free)


def make_bundles(work: Path, layers: int) -> dict[str, Path]:
    from xlsr_edge.export import ExportOptions, export_bundle
    from xlsr_edge.export.tiny import XLSR_300M, build_checkpoint

    ckpt = work / "ckpt"
    if not (ckpt / "model.safetensors").exists():
        build_checkpoint(ckpt, **{**XLSR_300M, "num_hidden_layers": layers}, head_gain=1.0)
    out = {}
    for precision in ("fp32", "fp16", "int8"):
        b = work / precision
        if not b.exists():
            export_bundle(ckpt, b, ExportOptions(precision=precision, max_cer_delta=100.0))
        out[precision] = b
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-o", "--out", type=Path, default=Path("benchmarks/results/gpu"))
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--batch", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--layers", type=int, default=24)
    args = ap.parse_args()
    run = start()
    batches = [int(b) for b in args.batch.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="xlsr-gpu-"))
    bundles = make_bundles(work, args.layers)

    from xlsr_edge.bundle import load_bundle
    from xlsr_edge.runtime.runners import OnnxRuntimeRunner
    from xlsr_edge.runtime.tensorrt import BuildOptions, EngineProfile, TensorRTRunner, build_engine

    rate = 16000
    engines: dict[str, object] = {}
    memory: dict[str, int] = {}

    def load(name: str, make) -> None:
        before = gpu_used_bytes()
        engines[name] = make().activate()
        memory[name] = gpu_used_bytes() - before

    load("ort-cuda fp32", lambda: OnnxRuntimeRunner(bundles["fp32"] / "model.onnx", providers=["cuda"]))
    load("ort-cuda fp16", lambda: OnnxRuntimeRunner(bundles["fp16"] / "model.onnx", providers=["cuda"]))
    load(
        "ort-trt-ep fp16",
        lambda: OnnxRuntimeRunner(
            bundles["fp16"] / "model.onnx", providers=["tensorrt"], trt_cache_dir=work / "trt-ep"
        ),
    )
    profile = EngineProfile(
        min_seconds=1, opt_seconds=args.seconds, max_seconds=max(args.seconds, 30), max_batch=max(batches)
    )
    for precision in ("fp16", "int8"):
        build_engine(bundles[precision], BuildOptions(profile=profile, workspace_mb=8192))
        load(f"trt {precision}", lambda p=precision: TensorRTRunner(bundles[p], load_bundle(bundles[p])))

    audio = load_source_audio(None, rate)
    rows = []
    for batch in batches:
        values = np.stack(
            [exact_audio(audio, args.seconds, rate, offset_seconds=i * 0.37) for i in range(batch)]
        )
        values = (values - values.mean(1, keepdims=True)) / np.sqrt(values.var(1, keepdims=True) + 1e-7)
        mask = np.ones(values.shape, dtype=np.int64)
        cases = {name: (lambda r=r, v=values, m=mask: r.infer(v, m)) for name, r in engines.items()}
        samples = interleave(cases, args.repeat, warmup=3)
        for name, s in samples.items():
            st = summarize(s)
            audio_s = batch * args.seconds
            rows.append(
                {
                    "engine": name,
                    "batch": batch,
                    "audio_s_per_s": throughput(audio_s, st["p50"]),
                    "rtf": st["p50"] / audio_s,
                    "p50_ms": st["p50"] * 1e3,
                    "p95_ms": st["p95"] * 1e3,
                    "gpu_mem_mb": memory[name] / 2**20,
                }
            )
    base = {r["batch"]: r["audio_s_per_s"] for r in rows if r["engine"] == "ort-cuda fp16"}
    for r in rows:
        r["vs_ort_cuda_fp16"] = r["audio_s_per_s"] / base[r["batch"]]
    results = {"environment": environment(), "seconds": args.seconds, "rows": rows}
    table = markdown_table(
        rows,
        [
            ("engine", "engine"),
            ("batch", "batch"),
            ("audio_s_per_s", "audio-s/s", "{:.0f}"),
            ("rtf", "RTF", "{:.2e}"),
            ("p50_ms", "p50 ms", "{:.2f}"),
            ("p95_ms", "p95 ms", "{:.2f}"),
            ("gpu_mem_mb", "GPU MB", "{:.0f}"),
            ("vs_ort_cuda_fp16", "× ORT CUDA fp16", "{:.2f}"),
        ],
    )
    plot = [
        lambda: plot_bars(
            rows,
            args.out / "results.png",
            value="audio_s_per_s",
            group=lambda r: f"batch {r['batch']}",
            series=lambda r: r["engine"],
            title="XLS-R 300M shape, 10 s audio",
            ylabel="audio-s / s",
            log=True,
        )
    ]
    write_results(args.out, results, run, markdown=table, plots=plot)
    print(table)
    for r in engines.values():
        r.deactivate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
