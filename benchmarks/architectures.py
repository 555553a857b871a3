"""Every CTC family export-xlsr exports (issue 15): export time, bundle size, parity, int8 speed, MMS memory.

Per family, a random-weight checkpoint of the base shape (transformers' default config of the family: hidden
768, 12 layers, 12 heads, FFN 3072; XLS-R-style layer-norm CNN and attention mask where the family has the
choice; Wav2Vec2-BERT with its log-mel front end in the graph) is built with transformers' own classes, then:

* export s: `export_bundle` fp32, parity gate included (on the shipped clips), wall seconds;
* bundle MB: model.onnx of the fp32 bundle;
* parity: the gate's figures: max |logit diff| ONNX (padded batch) vs PyTorch (each clip alone), relative to
  the logit scale; frame argmax agreement; ONNX each clip alone vs inside the batch; and how far PyTorch itself
  moves a clip when it is padded in a batch (the leak the graph masks);
* int8-dynamic ms and PyTorch eager ms: one 10 s utterance, 1 thread, median of --runs (after a warm-up); the
  int8-dynamic bundle's gate is relaxed (random weights have no accuracy to keep: its frame agreement with the
  fp32 graph is reported instead).

MMS: a base-shape MMS checkpoint (attention adapters, 3 languages) as one multi bundle with 1 and with 3
languages, against 3 single-language bundles: peak RSS of a fresh process that loads the bundle(s) and
transcribes one 10 s clip per language.

Writes results.json and results.md to -o (default benchmarks/results/architectures) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, machine, start, write_results

# (row name, family, build_checkpoint overrides on top of the family's default (base) configuration)
CASES = [
    ("wav2vec2 (XLS-R style)", "wav2vec2", {}),
    ("wav2vec2 + add_adapter", "wav2vec2", {"add_adapter": True, "num_adapter_layers": 2}),
    ("wav2vec2-conformer (rotary)", "wav2vec2-conformer", {"position_embeddings_type": "rotary"}),
    ("wav2vec2-conformer (relative)", "wav2vec2-conformer", {"position_embeddings_type": "relative"}),
    ("hubert", "hubert", {}),
    ("wavlm", "wavlm", {}),
    ("data2vec-audio", "data2vec-audio", {}),
    ("unispeech", "unispeech", {}),
    ("unispeech-sat", "unispeech-sat", {}),
    ("sew", "sew", {}),
    ("sew-d", "sew-d", {}),
    ("wav2vec2-bert", "wav2vec2-bert", {}),
]
BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
MMS_LANGS = {
    "tur": list("abcçdefgğhıijklmnoöprsştuüvyz"),
    "fra": list("abcdeéèfghijlmnopqrstuv"),
    "deu": list("abcdefghijklmnopqrstuvwxyzäöüß"),
}


def base_overrides(family: str) -> dict:
    """The family's default (base) shape, with the tiny builder's small defaults undone."""
    import transformers

    from xlsr_edge.export.tiny import FAMILY_CONFIGS

    name, _ = FAMILY_CONFIGS[family]
    d = getattr(transformers, name)().to_dict()
    out = dict(BASE)
    for k in ("conv_dim", "conv_kernel", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups"):
        if k in d:
            out[k] = tuple(d[k]) if isinstance(d[k], list) else d[k]
    for k in (
        "conv_pos_kernel_size",
        "conv_depthwise_kernel_size",
        "position_buckets",
        "max_position_embeddings",
    ):
        if k in d:
            out[k] = d[k]
    if family == "wav2vec2-bert":
        out.update(
            feature_projection_input_dim=160, left_max_position_embeddings=64, right_max_position_embeddings=8
        )
    if family == "wavlm":
        out.update(num_buckets=d["num_buckets"], max_bucket_distance=d["max_bucket_distance"])
    return out


def params_millions(ckpt: Path) -> float:
    from safetensors import safe_open

    n = 0
    with safe_open(str(ckpt / "model.safetensors"), "np") as f:
        for k in f.keys():
            n += int(__import__("numpy").prod(f.get_slice(k).get_shape()))
    return n / 1e6


def time_int8_and_torch(ckpt: Path, bundle: Path, seconds: float, runs: int) -> tuple[float, float]:
    """Median ms of one utterance of `seconds`, 1 thread: the int8-dynamic bundle and PyTorch eager."""
    import numpy as np
    import torch

    from xlsr_edge.export.checkpoint import inspect_checkpoint, load_model
    from xlsr_edge.export.parity import torch_logits
    from xlsr_edge.runtime.runners import OnnxRuntimeRunner

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)
    runner = OnnxRuntimeRunner(bundle / "model.onnx", threads=1).activate()
    mask = np.ones((1, len(x)), np.int64)

    def med(fn) -> float:
        fn()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1000

    onnx_ms = med(lambda: runner.infer(x[None], mask))
    runner.deactivate()
    ck = inspect_checkpoint(ckpt)
    model = load_model(ck)
    torch_ms = med(lambda: torch_logits(model, ck.info, [x]))  # the family's own front end included
    return onnx_ms, torch_ms


def family_row(name: str, family: str, extra: dict, work: Path, seconds: float, runs: int) -> dict:
    from xlsr_edge.export import ExportOptions, export_bundle
    from xlsr_edge.export.tiny import build_checkpoint

    ckpt = build_checkpoint(
        work / "ckpt", family=family, feat_extract_norm="layer", **base_overrides(family), **extra
    )
    t0 = time.perf_counter()
    manifest = export_bundle(ckpt, work / "fp32")
    export_s = time.perf_counter() - t0
    p = manifest.parity
    int8 = export_bundle(
        ckpt,
        work / "int8",
        ExportOptions(precision="int8-dynamic", verify=False, max_cer_delta=1e9, min_frame_agreement=0.0),
    )
    onnx_ms, torch_ms = time_int8_and_torch(ckpt, work / "int8", seconds, runs)
    gate = int8.extra["precision_report"]["gate"]
    row = {
        "name": name,
        "family": family,
        "params_m": round(params_millions(ckpt), 1),
        "mask": manifest.model.uses_attention_mask,
        "frame_stride": manifest.model.frame_stride_samples,
        "export_s": round(export_s, 1),
        "bundle_mb": round((work / "fp32" / "model.onnx").stat().st_size / 1e6, 1),
        "parity_passed": p["passed"],
        "max_abs_diff": p["vs_pytorch"]["max_abs_diff"],
        "relative_diff": p["vs_pytorch"]["relative_max_abs_diff"],
        "argmax_agreement": p["vs_pytorch"]["argmax_agreement"],
        "batch_vs_alone": p["batch_vs_single"]["max_abs_diff"],
        "pytorch_padding_leak": (p.get("pytorch_padded_batch_vs_alone") or {}).get("max_abs_diff"),
        "int8_ms": round(onnx_ms, 1),
        "torch_ms": round(torch_ms, 1),
        "speedup": round(torch_ms / onnx_ms, 2),
        "int8_frame_agreement": gate["argmax_agreement"],
    }
    print(json.dumps(row), flush=True)
    return row


RSS_SCRIPT = r"""
import json, sys
import numpy as np
from xlsr_edge.runtime import Recognizer
def peak_mb():  # VmHWM: this process's peak resident set (ru_maxrss would include the forking parent's)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
x = (np.random.default_rng(0).standard_normal(160000) * 0.1).astype(np.float32)
recs = [Recognizer.from_bundle(b, threads=1) for b in json.loads(sys.argv[1])]  # one session per language
for rec in recs:
    rec.transcribe([x])
print(peak_mb())
"""

RSS_MULTI = r"""
import json, sys
import numpy as np
from xlsr_edge.runtime import Recognizer
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
bundle, langs = sys.argv[1], json.loads(sys.argv[2])
x = (np.random.default_rng(0).standard_normal(160000) * 0.1).astype(np.float32)
with Recognizer.from_bundle(bundle, language=langs[0], threads=1) as rec:
    for lang in langs:  # every language through one session: its adapters and head
        rec.language = lang
        rec.transcribe([x])
print(peak_mb())
"""


def peak_rss(script: str, *args: str) -> float:
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=REPO)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return round(float(out.stdout.strip().splitlines()[-1]), 1)


def mms_rows(work: Path) -> list[dict]:
    from xlsr_edge.export import ExportOptions, export_bundle
    from xlsr_edge.export.multi import export_multi
    from xlsr_edge.export.tiny import build_checkpoint

    shape = base_overrides("wav2vec2")
    ckpt = build_checkpoint(work / "mms", mms_languages=MMS_LANGS, adapter_attn_dim=16, **shape)
    langs = list(MMS_LANGS)
    export_multi({langs[0]: ckpt}, work / "multi1", ExportOptions(verify=False))
    export_multi({lang: ckpt for lang in langs}, work / "multi3", ExportOptions(verify=False))
    singles = []
    for lang in langs:
        export_bundle(ckpt, work / f"single-{lang}", ExportOptions(target_lang=lang, verify=False))
        singles.append(str(work / f"single-{lang}"))

    def size(folder: Path) -> float:
        return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6, 1)

    rows = [
        {"setup": "MMS multi bundle, 1 language", "mb": size(work / "multi1"),
         "peak_rss_mb": peak_rss(RSS_MULTI, str(work / "multi1"), json.dumps(langs[:1]))},
        {"setup": "MMS multi bundle, 3 languages", "mb": size(work / "multi3"),
         "peak_rss_mb": peak_rss(RSS_MULTI, str(work / "multi3"), json.dumps(langs))},
        {"setup": "1 single-language bundle", "mb": size(Path(singles[0])),
         "peak_rss_mb": peak_rss(RSS_SCRIPT, json.dumps(singles[:1]))},
        {"setup": "3 single-language bundles", "mb": round(sum(size(Path(s)) for s in singles), 1),
         "peak_rss_mb": peak_rss(RSS_SCRIPT, json.dumps(singles))},
    ]  # fmt: skip
    for r in rows:
        print(json.dumps(r), flush=True)
    return rows


def markdown(rows: list[dict], mms: list[dict], meta: dict) -> str:
    out = [
        f"Random-weight base-shape checkpoints, {meta['cpu']}; int8-dynamic vs PyTorch eager on one "
        f"{meta['seconds']:g} s utterance, 1 thread, median of {meta['runs']}. transformers {meta['transformers']}, "
        f"torch {meta['torch']}, onnxruntime {meta['onnxruntime']}.",
        "",
        "| family | params (M) | padding | export s | bundle MB | rel. max diff | argmax agree | batch vs alone "
        "| PyTorch padding leak | int8-dyn ms | PyTorch ms | speed-up |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        leak = "—" if r["pytorch_padding_leak"] is None else f"{r['pytorch_padding_leak']:.2g}"
        out.append(
            f"| {r['name']} | {r['params_m']} | {'mask' if r['mask'] else 'unpadded'} | {r['export_s']} | "
            f"{r['bundle_mb']} | {r['relative_diff']:.1e} | {r['argmax_agreement']:.4f} | "
            f"{r['batch_vs_alone']:.1e} | {leak} | {r['int8_ms']} | {r['torch_ms']} | {r['speedup']}x |"
        )
    if mms:
        out += ["", "| MMS (base shape, adapter_attn_dim 16) | files MB | peak RSS MB |", "|---|---:|---:|"]
        out += [f"| {r['setup']} | {r['mb']} | {r['peak_rss_mb']} |" for r in mms]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--output", type=Path, default=REPO / "benchmarks" / "results" / "architectures")
    ap.add_argument("--families", nargs="*", default=None, help="row names or families (default: all)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-mms", action="store_true")
    args = ap.parse_args()
    run = start()

    import onnxruntime
    import torch
    import transformers

    meta = {
        "seconds": args.seconds,
        "runs": args.runs,
        "cpu": f"{os.cpu_count()} CPU cores ({machine()['cpu']})",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="xlsr-arch-") as tmp:
        for i, (name, family, extra) in enumerate(CASES):
            if args.families and name not in args.families and family not in args.families:
                continue
            work = Path(tmp) / str(i)
            rows.append(family_row(name, family, extra, work, args.seconds, args.runs))
            shutil.rmtree(work, ignore_errors=True)
        mms = [] if args.no_mms else mms_rows(Path(tmp) / "mms")
    args.output.mkdir(parents=True, exist_ok=True)
    old = args.output / "results.json"
    if (args.families is not None or args.no_mms) and old.is_file():  # a partial run replaces its own rows
        before = json.loads(old.read_text())
        ran = {r["name"] for r in rows}
        rows = [r for r in before["families"] if r["name"] not in ran] + rows
        rows.sort(key=lambda r: [c[0] for c in CASES].index(r["name"]))
        mms = mms or before.get("mms", [])
    table = markdown(rows, mms, meta)
    write_results(args.output, {"meta": meta, "families": rows, "mms": mms}, run, markdown=table)
    print(table)


if __name__ == "__main__":
    main()
