"""Where OpenVINO's int8 graph spends its time, and what the graph and engine settings tried against it give
(docs/precision.md, "The AMX aim"): issue 26's search for the last factor on AMX.

On a random-weight model with XLS-R 300M's configuration (``--layers``, default 24), exported as ``int8`` with
``--quantize-ops MatMul Gemm FeatureEncoder Attention`` (the fastest OpenVINO graph measured), 10 s of audio,
batch 1, ``--threads`` (default 1), OpenVINO's precision hint chosen from the CPU:

1. ``settings``: every case compiled in ONE process and timed in interleaved rounds (median; one process,
   because separate processes differ by up to 10 % from memory placement alone):
   the shipped graph (dynamic input shape); the feature encoder's earlier MatMul form (k strided slices per
   layer instead of whole stride blocks reshaped); a static compile of the input shape (``--static-shapes``);
   the Q/DQ pair moved above each feature-encoder layer's slices (int8 slicing); ``CPU_DENORMALS_OPTIMIZATION``;
   snippets off (``SNIPPETS_MODE=DISABLE``). The two feature-encoder forms also on onnxruntime.
2. ``profile``: OpenVINO's per-node times (``PERF_COUNT``) of the shipped graph summed by region (the 24 layers'
   int8 GEMMs, attention subgraphs, the feature encoder, the rest), median of 3 calls.

Writes results.json (with provenance), results.md and settings.png into -o (default
benchmarks/results/precision/amx/openvino_graph). Exports are kept in --work and reused.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from _common import Column, cpu_isa, interleave, logger, markdown_table, plot_bars, start, write_results

log = logger("openvino_graph")
QUANTIZE = ("MatMul", "Gemm", "FeatureEncoder", "Attention")


def _strided_windows(x, k: int, s: int):
    """The feature encoder's earlier MatMul form: k strided slices, concatenated (for the comparison)."""
    import torch

    t_out = torch.div(x.shape[1] - k, s, rounding_mode="floor") + 1
    span = s * (t_out - 1) + 1
    cols = [x[:, j : j + span : s, :] for j in range(k)]
    return torch.cat(cols, dim=-1) if k > 1 else cols[0]


def export(ckpt: Path, out: Path, form: str) -> Path:
    """The int8 bundle with the feature encoder in `form` ("blocks": shipped; "strided": the earlier one)."""
    import xlsr_edge.export.cnn_matmul as cnn
    from xlsr_edge.export import ExportOptions, export_bundle

    if (out / "bundle.json").is_file():
        log(f"reusing {out}")
        return out
    shipped = cnn._windows
    if form == "strided":
        cnn._windows = _strided_windows
    try:
        log(f"exporting {out.name} (feature encoder: {form})")
        opts = ExportOptions(
            precision="int8", quantize_ops=QUANTIZE, max_cer_delta=float("inf"), min_frame_agreement=0.0
        )
        export_bundle(ckpt, out, opts)
    finally:
        cnn._windows = shipped
    return out


def hoist_qdq(src: Path, dst: Path) -> int:
    """Move each Q/DQ pair that follows a feature-encoder im2col Concat above its slices (one pair on the
    layer's input): OpenVINO then slices and concatenates int8 data. Returns how many pairs moved."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)

    def source(tensor: str):  # the first Slice/Reshape of a Slice/Reshape chain
        node, first = producer.get(tensor), None
        while node is not None and node.op_type in ("Slice", "Reshape"):
            first, node = node, producer.get(node.input[0])
        return first

    moved, drop, before = 0, set(), {}
    for q in list(graph.node):
        concat = producer.get(q.input[0]) if q.op_type == "QuantizeLinear" else None
        if concat is None or concat.op_type != "Concat" or len(consumers[concat.output[0]]) != 1:
            continue
        heads = [source(i) for i in concat.input]
        dqs = consumers[q.output[0]]
        if any(h is None for h in heads) or len({h.input[0] for h in heads}) != 1 or len(dqs) != 1:
            continue
        dq, x = dqs[0], heads[0].input[0]
        new_q = helper.make_node("QuantizeLinear", [x, *q.input[1:]], [x + "_q"], name=q.name + "_hoisted")
        new_dq = helper.make_node(
            "DequantizeLinear", [x + "_q", *dq.input[1:]], [x + "_dq"], name=dq.name + "_h"
        )
        for h in heads:
            h.input[0] = x + "_dq"
        for c in consumers[dq.output[0]]:
            c.input[:] = [concat.output[0] if i == dq.output[0] else i for i in c.input]
        drop.update((q.name, dq.name))
        before.setdefault(id(heads[0]), []).extend([new_q, new_dq])
        moved += 1
    nodes = []
    for n in graph.node:
        if n.name not in drop:
            nodes.extend(before.get(id(n), []))
            nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return moved


def runner_config(threads: int) -> dict:
    """The compile settings the runtime uses (OpenVinoRunner.config: hint from this CPU, latency, one stream,
    unpinned threads), without its on-disk cache: each case here is compiled fresh."""
    from xlsr_edge.runtime.openvino import OpenVinoRunner

    return OpenVinoRunner(Path("model.onnx"), threads=threads, cache_dir=None).config()


def feeds(seconds: float) -> dict[str, np.ndarray]:
    x = np.random.RandomState(0).randn(1, int(16000 * seconds)).astype(np.float32)
    return {"input_values": x, "attention_mask": np.ones(x.shape, np.int64)}


def bench_settings(shipped: Path, strided: Path, hoisted: Path, args) -> list[dict]:
    import onnxruntime as ort
    import openvino as ov

    core = ov.Core()
    base = runner_config(args.threads)
    f = feeds(args.seconds)
    cases = [  # (label, engine, graph, extra config, static shape)
        ("shipped graph (dynamic shape)", "openvino", shipped, {}, False),
        ("feature encoder as k strided slices (earlier form)", "openvino", strided, {}, False),
        ("static compile of the input shape", "openvino", shipped, {}, True),
        ("Q/DQ above the feature encoder's slices", "openvino", hoisted, {}, False),
        ("CPU_DENORMALS_OPTIMIZATION on", "openvino", shipped, {"CPU_DENORMALS_OPTIMIZATION": True}, False),
        ("snippets off (SNIPPETS_MODE=DISABLE)", "openvino", shipped, {"SNIPPETS_MODE": "DISABLE"}, False),
        ("shipped graph", "onnxruntime", shipped, {}, False),
        ("feature encoder as k strided slices (earlier form)", "onnxruntime", strided, {}, False),
    ]
    calls = {}
    for label, engine, path, extra, static in cases:
        log(f"compiling {label} ({engine})")
        graph = str(path / "model.onnx")
        if engine == "openvino":
            model = core.read_model(graph)
            if static:
                model.reshape({k: list(v.shape) for k, v in f.items()})
            request = core.compile_model(model, "CPU", {**base, **extra}).create_infer_request()
            call = (lambda r: lambda: r.infer(f))(request)
        else:
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
            session = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
            call = (lambda s: lambda: s.run(None, f))(session)
        for _ in range(2):  # warm-up
            call()
        calls[(label, engine)] = call
    log(f"timing {len(calls)} cases, {args.repeat} interleaved rounds")
    samples = interleave(calls, args.repeat, warmup=0)
    rows = []
    for engine in ("openvino", "onnxruntime"):
        ref = np.median(samples[next(k for k in calls if k[1] == engine)])
        for (label, eng), times in samples.items():
            if eng == engine:
                ms = 1000 * float(np.median(times))
                rows.append({"engine": engine, "case": label, "ms": ms, "vs_shipped": 1000 * ref / ms})
    return rows


def region(node: str, node_type: str) -> str:
    if "feature_extractor" in node or re.fullmatch(r"MVN_\d+", node) and "layers." not in node:
        return "feature encoder (and other LayerNorms)"
    if "layers." in node and node_type == "Subgraph":
        return "attention subgraphs"
    if "layers." in node and "FullyConnected" in node_type:
        return "transformer int8 GEMMs"
    if "pos_conv" in node:
        return "positional conv"
    return "everything else"


def profile(shipped: Path, args) -> list[dict]:
    import openvino as ov

    config = {**runner_config(args.threads), "PERF_COUNT": True}
    request = ov.Core().compile_model(str(shipped / "model.onnx"), "CPU", config).create_infer_request()
    f = feeds(args.seconds)
    request.infer(f)
    per_call = []
    for _ in range(3):
        request.infer(f)
        sums: dict[str, float] = defaultdict(float)
        for p in request.profiling_info:
            sums[region(p.node_name, p.node_type)] += p.real_time.total_seconds() * 1000
        per_call.append(sums)
    names = sorted({k for s in per_call for k in s}, key=lambda k: -per_call[0][k])
    total = float(np.median([sum(s.values()) for s in per_call]))
    rows = [{"region": k, "ms": float(np.median([s[k] for s in per_call]))} for k in names]
    return [{**r, "share": r["ms"] / total, "total_ms": total} for r in rows]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--out", type=Path, default=Path("benchmarks/results/precision/amx/openvino_graph"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/xlsr-openvino-graph"))
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    run = start()
    from xlsr_edge.export.tiny import XLSR_300M, build_checkpoint

    ckpt = args.work / "checkpoint"
    if not (ckpt / "config.json").is_file():
        log(f"building a random-weight XLS-R 300M-shape checkpoint ({args.layers} layers)")
        build_checkpoint(ckpt, **{**XLSR_300M, "num_hidden_layers": args.layers})
    shipped = export(ckpt, args.work / "int8-fe-attn", "blocks")
    strided = export(ckpt, args.work / "int8-fe-attn-strided", "strided")
    hoisted = args.work / "int8-fe-attn-hoisted"
    if not (hoisted / "model.onnx").is_file():
        hoisted.mkdir(parents=True, exist_ok=True)
        log(f"moved {hoist_qdq(shipped / 'model.onnx', hoisted / 'model.onnx')} Q/DQ pairs above the slices")
    settings = bench_settings(shipped, strided, hoisted, args)
    regions = profile(shipped, args)
    results = {
        "model": f"XLS-R 300M shape, random weights, {args.layers} layers, int8 + {' '.join(QUANTIZE)}",
        "seconds": args.seconds,
        "threads": args.threads,
        "repeat": args.repeat,
        "instruction_sets": cpu_isa(),
        "settings": settings,
        "profile": regions,
    }
    md = "\n".join(
        [
            "# OpenVINO int8 graph: settings tried, and where its time goes",
            "",
            f"{results['model']}; {args.seconds:g} s of audio, batch 1, {args.threads} thread(s); all cases "
            f"compiled in one process, {args.repeat} interleaved rounds, median. vs shipped = the shipped graph's "
            "time / this case's time (> 1: faster).",
            "",
            markdown_table(
                settings,
                [
                    Column("engine", "engine"),
                    Column("case", "case"),
                    Column("ms", "ms per call", "{:.1f}"),
                    Column("vs_shipped", "vs shipped", "{:.3f}x"),
                ],
            ),
            "",
            "OpenVINO PERF_COUNT of the shipped graph (sum of per-node times, median of 3 calls):",
            "",
            markdown_table(
                regions,
                [
                    Column("region", "region"),
                    Column("ms", "ms", "{:.1f}"),
                    Column("share", "share", "{:.0%}"),
                ],
            ),
        ]
    )
    print(md)
    write_results(
        args.out,
        results,
        run,
        markdown=md,
        log=log,
        plots=[
            lambda: plot_bars(
                settings,
                args.out / "settings.png",
                value="ms",
                group=lambda r: r["case"],
                series=lambda r: r["engine"],
                title="int8 XLS-R 300M shape, 10 s, 1 thread: ms per call",
                ylabel="ms per call (lower is better)",
            )
        ],
    )
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
