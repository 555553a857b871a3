"""Cross-lingual transfer in miniature (issue: XLS-R fine-tuning claims), on synthetic espeak-ng speech.

A source model is trained on English espeak-ng speech; then Turkish with ~10 minutes of training audio:

  (a) zero-shot: the English source model, no fine-tuning (letters it lacks simply count as errors);
  (b) scratch: the tiny-demo configuration trained on the Turkish minutes only;
  (c) finetuned: the source model's body, new CTC head, frozen CNN feature encoder (the recipe's default
      for a checkpoint);
  (d) finetuned+mix: (c) plus 10 % English utterances per epoch (--mix EN:0.1);
  (e) finetuned+noise: (c) plus noise augmentation (--noise-prob 0.5 --snr-db 0,20).

Every model is scored (greedy CER/WER, PyTorch in-process, ``xlsr_edge.train.finetune.evaluate``, text
normalized per language as the recipe does) on: the Turkish test split (clean), the same clips mixed with
coloured noise at a fixed SNR (noisy), the same sentences spoken by a voice no training run heard (held-out
voice, an "accent" test), and the English test split (forgetting). All Turkish-side runs share one
vocabulary (the union of the Turkish and English transcripts' characters) so that English CER is measurable
on every model; the source model keeps its own English vocabulary.

Stages (under --work, each skipped when its output exists, so a cut-off run resumes; a training run cut off
mid-way continues with ``finetune --resume``): English corpus, Turkish corpus (with the held-out voice), the
Turkish training subset, the noisy test copy, the shared vocabulary, five ``xlsr-edge finetune`` runs
(subprocesses, one torch thread by default; exact command lines in results.json), evaluation, report.

Writes results.json, results.md and results.png into -o (default benchmarks/results/transfer) and the docs
page (--docs, default docs/transfer.md). ``--quick``: tiny corpora and a few steps per run, everything in a
temporary folder unless -o/--docs/--work are given.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, environment, markdown_table, plot_bars, start, write_results
from transfer_report import COLUMNS, LABELS, RUNS, TESTS, comparisons, derived, docs_page, markdown

SAMPLE_RATE = 16000

COLOUR_NAMES = {0.0: "white", 1.0: "pink", 2.0: "brown"}

# --quick: small corpora, a few steps per run (a smoke test of the whole pipeline, numbers are meaningless)
QUICK = dict(
    source_hours=0.03, target_hours=0.05, target_minutes=2.0, source_steps=15, target_steps=10, batch_size=4
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cli() -> list[str]:
    exe = shutil.which("xlsr-edge")
    return [exe] if exe else [sys.executable, "-m", "xlsr_edge.cli"]


def shown(cmd: list[str]) -> str:
    """The command as a user would type it (the xlsr-edge executable by name)."""
    parts = list(cmd)
    if parts[:3] == [sys.executable, "-m", "xlsr_edge.cli"]:
        parts = ["xlsr-edge", *parts[3:]]
    elif parts and Path(parts[0]).name == "xlsr-edge":
        parts[0] = "xlsr-edge"
    return shlex.join(p.replace(f"{REPO}/", "") for p in parts)


def run(cmd: list[str]) -> float:
    """Run a command (output to our stderr); returns its wall seconds."""
    log("+ " + shown(cmd))
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    return round(time.monotonic() - t0, 1)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.rename(path)


# -- data ----------------------------------------------------------------------------------------------------


def synth_corpus(
    out: Path, *, language: str, hours: float, seed: int, test_share: float, holdout=None
) -> dict:
    """`xlsr-edge synth` into `out` unless it is there with the same options; returns its synth.json."""
    cmd = [*cli(), "synth", "--language", language, "--hours", f"{hours:g}", "--seed", str(seed)]
    cmd += ["--jobs", "2", "--test-share", f"{test_share:g}"]
    cmd += ["--holdout-voice", holdout] if holdout else []
    cmd += ["-o", str(out)]
    info_file = out / "synth.json"
    if info_file.is_file():
        info = json.loads(info_file.read_text(encoding="utf-8"))
        o = info["options"]
        want = {"language": language, "hours": hours, "seed": seed, "test_share": test_share}
        want["holdout_voice"] = holdout
        if any(o.get(k) != v for k, v in want.items()):
            raise SystemExit(f"{out} was synthesized with other options ({o}); use another --work")
        log(f"reusing {out}")
    else:
        run(cmd + (["--overwrite"] if out.exists() else []))
        info = json.loads(info_file.read_text(encoding="utf-8"))
    return {
        "command": shown(cmd),
        "counts": info["counts"],
        "seconds": info["seconds"],
        "voices": info["voices"],
    }


def train_subset(train: Path, minutes: float, seed: int) -> tuple[Path, dict]:
    """A seeded random subset of the train split, utterances added until `minutes` of audio (corpus order)."""
    import numpy as np

    out = train.with_name(f"train_{minutes:g}min_seed{seed}.jsonl")
    rows = read_jsonl(train)
    if not out.is_file():
        order = np.random.default_rng(seed).permutation(len(rows))
        chosen, total = [], 0.0
        for i in order:
            if total >= minutes * 60:
                break
            chosen.append(int(i))
            total += float(rows[i]["duration"])
        if total < minutes * 60:
            log(f"warning: {train} holds only {total / 60:.1f} min; using all of it")
        write_jsonl(out, [rows[i] for i in sorted(chosen)])
    sub = read_jsonl(out)
    return out, {
        "manifest": str(out),
        "utterances": len(sub),
        "minutes": round(sum(r["duration"] for r in sub) / 60, 2),
        "of_utterances": len(rows),
        "seed": seed,
    }


def noisy_copy(test: Path, out: Path, snr_db: float, seed: int) -> tuple[Path, dict]:
    """Every clip of `test` + coloured noise (white/pink/brown, drawn per clip) at `snr_db`, 16 kHz FLAC."""
    import numpy as np
    import soundfile as sf

    from xlsr_edge.datasets import read_manifest
    from xlsr_edge.runtime.audio import load_audio
    from xlsr_edge.train.augment import COLOUR_EXPONENTS, coloured_noise, mix_at_snr

    manifest = out / "test.jsonl"
    if not manifest.is_file():
        log(f"writing the noisy test copy ({snr_db:g} dB SNR) to {out}")
        (out / "audio").mkdir(parents=True, exist_ok=True)
        rows = []
        for i, u in enumerate(read_manifest(test)):
            x = load_audio(u.audio, SAMPLE_RATE)
            rng = np.random.default_rng([seed, i])
            exponent = COLOUR_EXPONENTS[int(rng.integers(len(COLOUR_EXPONENTS)))]
            y = mix_at_snr(x, coloured_noise(len(x), exponent, rng), snr_db)
            peak = float(np.max(np.abs(y))) if len(y) else 0.0
            if peak > 0.99:  # scale, never clip (the model normalizes every utterance anyway)
                y = (y * (0.99 / peak)).astype(np.float32)
            name = f"audio/{Path(u.audio).stem}.flac"
            sf.write(str(out / name), y, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            rows.append(
                {
                    "audio_filepath": name,
                    "duration": round(len(y) / SAMPLE_RATE, 4),
                    "text": u.text,
                    "noise": COLOUR_NAMES[exponent],
                    "snr_db": snr_db,
                }
            )
        write_jsonl(manifest, rows)
    rows = read_jsonl(manifest)
    colours = {c: sum(r["noise"] == c for r in rows) for c in COLOUR_NAMES.values()}
    return manifest, {"manifest": str(manifest), "utterances": len(rows), "snr_db": snr_db, "noise": colours}


def shared_vocab(out: Path, sources: dict[str, tuple[list[Path], str]]) -> tuple[Path, list[str]]:
    """One vocabulary for every Turkish-side run: the characters of the given transcripts, normalized."""
    from xlsr_edge.text import normalize_text
    from xlsr_edge.train.vocab import build_vocab

    texts = [
        normalize_text(r.get("text") or "", lang)
        for manifests, lang in sources.values()
        for m in manifests
        for r in read_jsonl(m)
    ]
    vocab = build_vocab(texts)
    vocab.write(out)
    return out, list(vocab.tokens)


# -- training ------------------------------------------------------------------------------------------------


def train_run(name: str, folder: Path, args: list[str]) -> dict:
    """`xlsr-edge finetune ARGS -o folder` unless finished there; a cut-off run continues with --resume."""
    sessions_file = folder.with_name(folder.name + ".sessions.json")
    sessions = json.loads(sessions_file.read_text()) if sessions_file.is_file() else []
    result_file = folder / "train_result.json"
    base = [*cli(), "finetune", *args, "-o", str(folder)]
    if sessions and sessions[0]["command"].rsplit(" ", 1)[0] != shown(base):
        raise SystemExit(
            f"{folder} was trained with another command ({sessions[0]['command']}); "
            "delete it or use another --work"
        )
    if result_file.is_file():
        log(f"{name}: reusing {folder}")
    else:
        resume = (folder / "last" / "trainer_state.pt").is_file()
        cmd = base + (["--resume"] if resume else ["--overwrite"])
        log(f"{name}: {'resuming' if resume else 'training'} -> {folder}")
        wall = run(cmd)
        sessions.append({"command": shown(cmd), "wall_s": wall})
        sessions_file.write_text(json.dumps(sessions, indent=2) + "\n")
    result = json.loads(result_file.read_text(encoding="utf-8"))
    fargs = json.loads((folder / "finetune_args.json").read_text(encoding="utf-8"))
    train_s = result.get("train_seconds_wall") or 0.0
    return {
        "folder": str(folder),
        "command": shown(base),
        "sessions": sessions,
        "steps": result["steps"],
        "train_seconds": train_s,
        "process_seconds": round(sum(s["wall_s"] for s in sessions), 1) if sessions else None,
        "steps_per_s": round(result["steps"] / train_s, 3) if train_s else None,
        "dev": result.get("dev"),
        "lr": fargs.get("lr"),
        "batch_size": fargs.get("batch_size"),
        "feature_encoder_frozen": fargs.get("feature_encoder_frozen"),
        "pretrained_body": fargs.get("pretrained_body"),
        "parameters": fargs.get("parameters"),
        "vocab_size": len(fargs.get("vocab") or []),
        "train_utterances": fargs.get("train_utterances"),
        "train_minutes": round((fargs.get("train_seconds") or 0.0) / 60, 2),
        "source_utterances": fargs.get("source_utterances"),
    }


# -- evaluation ----------------------------------------------------------------------------------------------


def evaluate_models(models: dict[str, Path], tests: dict[str, tuple[Path, str]], threads: int) -> dict:
    """{model: {test: {cer, wer, utterances}}}: greedy decoding, PyTorch in-process."""
    import torch
    import transformers

    from xlsr_edge.train.data import load_examples
    from xlsr_edge.train.finetune import evaluate, read_front_end
    from xlsr_edge.train.vocab import read_vocab

    torch.set_num_threads(threads)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    examples = {t: (load_examples(m, lang)[0], lang) for t, (m, lang) in tests.items()}
    out: dict[str, dict] = {}
    for name, folder in models.items():
        model = transformers.Wav2Vec2ForCTC.from_pretrained(str(folder), local_files_only=True)
        model.eval()
        vocab, front = read_vocab(folder), read_front_end(folder, model.config)
        out[name] = {}
        for t, (ex, lang) in examples.items():
            t0 = time.monotonic()
            r = evaluate(model, ex, vocab, front, lang)
            out[name][t] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
            log(
                f"eval {name:16s} {t:9s} CER {r['cer']:7.2%}  WER {r['wer']:7.2%}  "
                f"({r['utterances']} utts, {time.monotonic() - t0:.1f} s)"
            )
    return out


def prepare_data(args: argparse.Namespace, work: Path) -> tuple[dict, Path, Path, Path, list[str]]:
    """The corpora (English source, Turkish target), the Turkish training subset, the noisy test copy and the
    shared vocabulary: (corpora facts, subset manifest, noisy test manifest, vocab.json, tokens)."""
    corpora = {
        "en": synth_corpus(
            work / "en",
            language="en",
            hours=args.source_hours,
            seed=0,
            test_share=args.source_test_share,
        ),
        "tr": synth_corpus(
            work / "tr",
            language="tr",
            hours=args.target_hours,
            seed=2,
            test_share=args.target_test_share,
            holdout=args.holdout_voice,
        ),
    }
    en, tr = work / "en", work / "tr"
    subset, corpora["tr_train_subset"] = train_subset(tr / "train.jsonl", args.target_minutes, seed=0)
    noisy, corpora["tr_noisy_test"] = noisy_copy(
        tr / "test.jsonl", work / f"tr-test-noisy-{args.test_snr_db:g}db", args.test_snr_db, seed=0
    )
    vocab, tokens = shared_vocab(
        work / "vocab.json",
        {
            "tr": ([tr / "train.jsonl", tr / "dev.jsonl"], "tr"),
            "en": ([en / "train.jsonl", en / "dev.jsonl"], "en"),
        },
    )

    return corpora, subset, noisy, vocab, tokens


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", type=Path, default=None, help="default benchmarks/results/transfer")
    ap.add_argument("--docs", type=Path, default=None, help="docs page to write (default docs/transfer.md)")
    ap.add_argument("--work", type=Path, default=None, help="corpora and runs (default build/transfer)")
    ap.add_argument("--source-hours", type=float, default=1.0, help="English corpus (train+dev+test)")
    ap.add_argument("--target-hours", type=float, default=0.5, help="Turkish corpus (train+dev+test)")
    ap.add_argument("--target-minutes", type=float, default=10.0, help="Turkish training audio used")
    ap.add_argument("--source-test-share", type=float, default=0.05)
    ap.add_argument(
        "--target-test-share",
        type=float,
        default=0.2,
        help="Turkish test share (larger than synth's 0.05 for a ~100-utterance test set)",
    )
    ap.add_argument("--holdout-voice", default="tr+f4", help="Turkish voice kept out of every run")
    ap.add_argument(
        "--source-steps",
        type=int,
        default=2400,
        help="English source run (measured ~2-2.5 steps/s on one shared thread: ≈ 16-20 min)",
    )
    ap.add_argument(
        "--target-steps",
        type=int,
        default=600,
        help="every Turkish run (from scratch ~1.6 steps/s: ≈ 6-7 min; frozen CNN ~2.3 steps/s: ≈ 4-5 min)",
    )
    ap.add_argument("--source-lr", type=float, default=2e-3)
    ap.add_argument("--target-lr", type=float, default=1e-3, help="every Turkish run")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--mix-share", type=float, default=0.1)
    ap.add_argument("--noise-prob", type=float, default=0.5)
    ap.add_argument("--snr-db", default="0,20", help="noise augmentation SNR range LO,HI (dB)")
    ap.add_argument("--test-snr-db", type=float, default=5.0, help="SNR of the noisy test copy")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (training and evaluation)")
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny corpora, a few steps per run")
    return ap


def main() -> int:
    args = build_parser().parse_args()
    started = start()
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
        args.work = args.work or Path(tempfile.mkdtemp(prefix="xlsr-transfer-"))
        args.out = args.out or args.work / "results"
    args.work = (args.work or REPO / "build" / "transfer").resolve()
    args.out = args.out or REPO / "benchmarks" / "results" / "transfer"
    if args.docs is None and not args.quick:
        args.docs = REPO / "docs" / "transfer.md"
    work = args.work
    (work / "runs").mkdir(parents=True, exist_ok=True)
    log(f"work folder: {work}")

    # 1. data
    corpora, subset, noisy, vocab, tokens = prepare_data(args, work)
    en, tr = work / "en", work / "tr"

    # 2. training
    runs_dir = work / "runs"
    common = ["--batch-size", str(args.batch_size), "--threads", str(args.threads), "--seed", str(args.seed)]
    source_args = [
        "--init", "tiny-demo", "--language", "en",
        "--train", str(en / "train.jsonl"), "--dev", str(en / "dev.jsonl"),
        "--max-steps", str(args.source_steps), "--lr", f"{args.source_lr:g}",
        "--eval-every", str(max(1, args.source_steps // 4)), *common,
    ]  # fmt: skip
    target = [
        "--language", "tr", "--vocab", str(vocab),
        "--train", str(subset), "--dev", str(tr / "dev.jsonl"),
        "--max-steps", str(args.target_steps), "--lr", f"{args.target_lr:g}",
        "--eval-every", str(max(1, args.target_steps // 4)), *common,
    ]  # fmt: skip
    mix = ["--mix", f"{en / 'train.jsonl'}:{args.mix_share:g}", "--mix-language", "en"]
    noise = ["--noise-prob", f"{args.noise_prob:g}", "--snr-db", args.snr_db]
    src = runs_dir / "source"
    plan = {
        "source": source_args,
        "scratch": ["--init", "tiny-demo", *target],
        "finetuned": ["--init", str(src), *target],
        "finetuned+mix": ["--init", str(src), *target, *mix],
        "finetuned+noise": ["--init", str(src), *target, *noise],
    }
    runs = {name: train_run(name, runs_dir / name, plan[name]) for name in RUNS}

    # 3. evaluation
    tests = {
        "tr_clean": (tr / "test.jsonl", "tr"),
        "tr_noisy": (noisy, "tr"),
        "tr_voice": (tr / "test_voice.jsonl", "tr"),
        "en": (en / "test.jsonl", "en"),
    }
    ev = evaluate_models({name: runs_dir / name for name in RUNS}, tests, args.threads)

    # 4. report
    import torch
    import transformers

    rows = [
        {
            "run": name,
            "model": LABELS[name],
            **{t: ev[name][t]["cer"] for t in TESTS},
            "train_min": runs[name]["train_seconds"] / 60,
        }
        for name in RUNS
    ]
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["when"] = time.strftime("%Y-%m-%d")
    settings["invocation"] = shlex.join(["python", "benchmarks/transfer.py", *sys.argv[1:]])
    res = {
        "settings": settings,
        "environment": environment() | {"torch": torch.__version__, "transformers": transformers.__version__},
        "corpora": corpora,
        "vocab": tokens,
        "runs": runs,
        "eval": ev,
        "tests": {t: str(m) for t, (m, _) in tests.items()},
        "rows": rows,
        "derived": derived(ev),
    }
    from xlsr_edge.train.vocab import read_vocab

    res["zero_shot_missing_letters"] = sorted(set(tokens) - set(read_vocab(runs_dir / "source").tokens))
    res["comparisons"] = comparisons(ev, res["zero_shot_missing_letters"])
    table = markdown_table(rows, COLUMNS)
    bars = [{"model": LABELS[m], "test": TESTS[t], "cer": 100 * ev[m][t]["cer"]} for m in RUNS for t in TESTS]
    plot = [
        lambda: plot_bars(
            bars,
            args.out / "results.png",
            value="cer",
            group=lambda r: r["test"],
            series=lambda r: r["model"],
            title=f"Turkish with {corpora['tr_train_subset']['minutes']:.0f} min of speech: CER per test set",
            ylabel="CER % (lower is better)",
        )
    ]
    written = write_results(args.out, res, started, markdown=markdown(res, table), plots=plot, log=log)
    if args.docs:
        args.docs.parent.mkdir(parents=True, exist_ok=True)
        plot = os.path.relpath(args.out.resolve() / "results.png", args.docs.resolve().parent)
        args.docs.write_text(docs_page(res, table, plot), encoding="utf-8")
        written.append(args.docs)
    print(json.dumps({k: res[k] for k in ("rows", "derived", "comparisons")}, indent=2, ensure_ascii=False))
    print(table)
    log("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
