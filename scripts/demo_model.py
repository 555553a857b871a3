"""Reproduce the shipped demo model (models/demo-tr): synth -> finetune -> package -> export + transcribe + score.

    python scripts/demo_model.py --work build/demo-tr --out models/demo-tr      # (make demo-model)

Steps (each is the exact CLI command the model card lists; --skip-synth / --skip-train reuse WORK):
1. ``xlsr-edge synth``: 1.5 h of Turkish espeak-ng speech, seed 0.
2. ``xlsr-edge finetune --init tiny-demo``: from scratch, one torch thread, 12 epochs, then ``--resume`` with
   ``--epochs 18`` (~42 min on one shared CPU core in all); packaged as WORK/stage1.
3. More data, continued training: ``xlsr-edge synth`` 3 h more (seed 1); its sentences that occur in the first
   corpus' dev/test splits are dropped; ``xlsr-edge finetune --init WORK/stage1 --vocab WORK/stage1 --keep-head``
   on the first corpus' train split + all of the second corpus, 3 epochs, feature encoder frozen (the default
   for a checkpoint), lr 1e-3 (~16 min on one core).
4. package: the checkpoint's config, tokenizer/processor files and weights (stored as float16 to halve the
   size; ``config.json`` says float32, so transformers loads them as float32), plus CLIPS clips of the first
   corpus' held-out test split (stratified by duration) as ``test/*.flac`` with ``test/test.jsonl``.
5. score: ``export-xlsr`` the packaged model, ``xlsr-edge transcribe --json`` (greedy) the corpus dev and test
   splits and the shipped clips, ``xlsr_edge.measure.metrics.error_rates``; writes WORK/eval.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

SYNTH = ["--language", "tr", "--hours", "1.5", "--seed", "0", "--freq-power", "1.0", "--jobs", "2"]
FINETUNE = [
    "--init", "tiny-demo", "--language", "tr", "--batch-size", "8", "--lr", "2e-3", "--threads", "1", "--seed", "0",
]  # fmt: skip
# How the shipped model was made: 12 epochs (warm-up + cosine), then the same run resumed with an 18-epoch
# schedule: a warm restart at step 2232 (lr back to ~6e-4) and a cosine decay over 6 more epochs.
STAGES = (["--epochs", "12", "--overwrite"], ["--epochs", "18", "--resume"])
# Stage 3: 3 h more synthetic speech (another seed) and 3 epochs of continued training at a lower peak lr.
SYNTH_MORE = [
    "--language", "tr", "--hours", "3", "--seed", "1", "--freq-power", "1.0", "--jobs", "2",
    "--dev-share", "0.02", "--test-share", "0.02",
]  # fmt: skip
CONTINUE = [
    "--keep-head", "--language", "tr", "--batch-size", "8", "--lr", "1e-3", "--warmup-ratio", "0.05",
    "--threads", "1", "--seed", "1", "--epochs", "3", "--eval-every", "300", "--overwrite",
]  # fmt: skip
CHECKPOINT_FILES = ("config.json", "vocab.json", "tokenizer_config.json", "processor_config.json")


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, **kw)


def package(ckpt: Path, corpus: Path, out: Path, clips: int) -> None:
    from safetensors.torch import load_file, save_file

    from xlsr_edge.datasets import read_manifest, select_stratified

    if out.exists():
        shutil.rmtree(out)
    (out / "test").mkdir(parents=True)
    for name in CHECKPOINT_FILES:
        if (ckpt / name).is_file():
            shutil.copy(ckpt / name, out / name)
    weights = load_file(str(ckpt / "model.safetensors"))
    save_file(
        {k: v.half() for k, v in weights.items()}, str(out / "model.safetensors"), metadata={"format": "pt"}
    )
    (out / "model.safetensors").chmod(0o644)
    lines = []
    for u in select_stratified(read_manifest(corpus / "test.jsonl"), clips, seed=0):
        shutil.copy(u.audio, out / "test" / u.audio.name)
        lines.append(
            json.dumps(
                {"audio_filepath": u.audio.name, "duration": u.duration, "text": u.text}, ensure_ascii=False
            )
        )
    (out / "test" / "test.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def continued_training_set(corpus: Path, more: Path, out: Path) -> Path:
    """First corpus' train split + every split of the second corpus, minus sentences of the first's dev/test."""
    held = {json.loads(line)["text"] for name in ("dev", "test") for line in _lines(corpus / f"{name}.jsonl")}
    kept = []
    for manifest in (corpus / "train.jsonl", *(more / f"{n}.jsonl" for n in ("train", "dev", "test"))):
        for line in _lines(manifest):
            entry = json.loads(line)
            if entry["text"] in held:
                continue
            entry["audio_filepath"] = str((manifest.parent / entry["audio_filepath"]).resolve())
            kept.append(json.dumps(entry, ensure_ascii=False))
    out.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return out


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def score(bundle: Path, manifest: Path) -> dict:
    from xlsr_edge.datasets import read_manifest
    from xlsr_edge.measure.metrics import error_rates

    utts = read_manifest(manifest)
    start = time.monotonic()
    proc = run(
        ["xlsr-edge", "transcribe", str(bundle), str(manifest), "--json", "--threads", "1"],
        capture_output=True,
        text=True,
    )
    seconds = time.monotonic() - start
    hyps = {}
    for line in proc.stdout.splitlines():
        obj = json.loads(line)
        hyps[obj["audio"]] = obj.get("text", "")
    r = error_rates([u.text for u in utts], [hyps[u.raw_path] for u in utts], language="tr")
    audio = sum(u.duration or 0.0 for u in utts)
    return {
        "utterances": r.utterances,
        "audio_seconds": round(audio, 1),
        "cer": round(r.cer, 4),
        "wer": round(r.wer, 4),
        "transcribe_wall_seconds": round(seconds, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("build/demo-tr"))
    ap.add_argument("--out", type=Path, default=Path("models/demo-tr"))
    ap.add_argument("--clips", type=int, default=30, help="test clips to ship")
    ap.add_argument("--skip-synth", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()
    work = args.work
    corpus, more, bundle = work / "corpus", work / "corpus-more", work / "bundle"
    ckpt, stage1, ckpt_more = work / "ckpt", work / "stage1", work / "ckpt-more"
    if not args.skip_synth:
        run(["xlsr-edge", "synth", *SYNTH, "-o", str(corpus), "--overwrite"])
        run(["xlsr-edge", "synth", *SYNTH_MORE, "-o", str(more), "--overwrite"])
    dev = ["--dev", str(corpus / "dev.jsonl")]
    if not args.skip_train:
        first = ["--train", str(corpus / "train.jsonl"), *dev, "-o", str(ckpt)]
        for stage in STAGES:
            run(["xlsr-edge", "finetune", *FINETUNE, *first, *stage])
        package(ckpt, corpus, stage1, args.clips)
        train = continued_training_set(corpus, more, work / "train-more.jsonl")
        run(["xlsr-edge", "finetune", "--init", str(stage1), "--vocab", str(stage1), *CONTINUE, "--train", str(train), *dev, "-o", str(ckpt_more)])  # fmt: skip
    package(ckpt_more, corpus, args.out, args.clips)
    run(
        [
            "export-xlsr",
            str(args.out),
            "-o",
            str(bundle),
            "--overwrite",
            "--verify-audio",
            str(args.out / "test" / "test.jsonl"),
        ]
    )
    results = {
        "dev": score(bundle, corpus / "dev.jsonl"),
        "test": score(bundle, corpus / "test.jsonl"),
        "shipped_test": score(bundle, args.out / "test" / "test.jsonl"),
        "training": [
            json.loads((c / "train_result.json").read_text(encoding="utf-8")) for c in (ckpt, ckpt_more)
        ],
    }
    (args.work / "eval.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
