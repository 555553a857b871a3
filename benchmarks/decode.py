"""Decoding benchmark (issue 4): greedy vs beam vs beam + KenLM, and where a transcribe call spends its time.

1. Decoder throughput on recorded logits, in audio-seconds per CPU-second (time.process_time of this
   process; the decoders run single-threaded here, so that is per core): greedy, beam search without LM,
   beam search with a KenLM word 3-gram built by xlsr_edge.lm.build_lm from the shipped clips'
   text plus synthetic Turkish sentences. Logit sources:
   * "recorded": logits of a bundle on ~60 s of speech (the shipped clips cut/looped into utterances).
     The bundle is --bundle, else models/demo-tr when it exists (a bundle, or a checkpoint that is
     exported here), else a tiny random-weight checkpoint built with xlsr_edge.export.tiny
     (--model tiny) or a random-weight model with XLS-R 300M's shape (--model xlsr-300m).
   * "synthetic": trained-like CTC posteriors made from in-LM sentences (a peaked token per frame, mostly
     blank, with noise), because a random-weight model's logits are not what a trained model emits and
     beam speed depends on how peaked the logits are.
2. End-to-end Recognizer.transcribe on the same audio files, split into its stages by calling them one by
   one (Recognizer.load / windows+infer / decode: no timing hooks in the runtime): load (bundle
   verification + session), front end (read, resample, normalize), inference, decode (greedy, and beam +
   LM for comparison). Wall-clock, median over --repeat rounds after one warm-up round.

Goals checked: greedy decode <= 2 % of end-to-end (load excluded); beam + KenLM >= 100x real time per core.
Prints JSON and markdown; writes results.json, results.md, decode_throughput.png and e2e_split.png in -o.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import (
    environment,
    interleave,
    logger,
    markdown_table,
    plot_bars,
    start,
    summarize,
    write_results,
)

from xlsr_edge.measure.bench import exact_audio, load_source_audio, throughput

RATE = 16000
GREEDY_SHARE_GOAL = 0.02
BEAM_LM_GOAL = 100.0  # x real time per core

# Small Turkish vocabulary for the synthetic LM corpus (letters the tiny/demo vocabulary covers).
SUBJECTS = [
    "ben",
    "sen",
    "o",
    "biz",
    "çocuklar",
    "öğretmen",
    "annem",
    "babam",
    "kedi",
    "komşumuz",
    "öğrenciler",
]
OBJECTS = [
    "okula",
    "eve",
    "pazara",
    "denize",
    "parka",
    "işe",
    "şehre",
    "köye",
    "sınıfa",
    "bahçeye",
    "istanbula",
]
VERBS = ["gidiyor", "geldi", "koştu", "bakıyor", "yürüdü", "döndü", "gidecek", "oturdu", "başladı", "uyudu"]
ADVERBS = ["bugün", "yarın", "dün", "sabah", "akşam", "hemen", "yavaşça", "çok", "biraz", "sonra", "şimdi"]
ADJECTIVES = ["güzel", "büyük", "küçük", "sıcak", "soğuk", "yeni", "eski", "güneşli", "uzun", "kısa"]
NOUNS = ["hava", "dünya", "gün", "yol", "ders", "kitap", "su", "ışık", "ev", "araba", "çiçek", "deniz"]


def sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)

    def pick(words: list[str]) -> str:
        return words[int(rng.integers(len(words)))]

    out = []
    for _ in range(n):
        form = int(rng.integers(4))
        if form == 0:
            s = [pick(ADVERBS), pick(SUBJECTS), pick(OBJECTS), pick(VERBS)]
        elif form == 1:
            s = [pick(ADVERBS), pick(NOUNS), pick(ADVERBS), pick(ADJECTIVES)]
        elif form == 2:
            s = [pick(SUBJECTS), pick(ADJECTIVES), pick(NOUNS), pick(OBJECTS), pick(VERBS)]
        else:
            s = [pick(NOUNS), pick(ADJECTIVES), "ve", pick(ADJECTIVES)]
        out.append(" ".join(s))
    return out


log = logger("decode bench")


# -- setup ---------------------------------------------------------------------------------------------------


def get_bundle(args: argparse.Namespace, work: Path) -> tuple[Path, str]:
    from xlsr_edge.export import export_bundle

    if args.bundle is not None:
        return args.bundle, f"bundle {args.bundle}"
    demo = Path("models/demo-tr")
    if args.model == "demo" or (args.model is None and demo.is_dir()):
        if (demo / "bundle.json").is_file():
            return demo, "models/demo-tr (trained bundle)"
        out = work / "demo-bundle"
        if not out.exists():
            export_bundle(demo, out)
        return out, "models/demo-tr (trained checkpoint, exported here)"
    from xlsr_edge.export.tiny import XLSR_300M, build_checkpoint

    model = args.model or "tiny"
    ckpt, out = work / f"{model}-ckpt", work / f"{model}-bundle"
    if not out.exists():
        if model == "xlsr-300m":
            build_checkpoint(ckpt, **XLSR_300M, head_gain=8.0)
        else:
            build_checkpoint(ckpt)
        export_bundle(ckpt, out)
    what = "tiny random-weight model" if model == "tiny" else "random-weight model with XLS-R 300M's shape"
    return out, what


def get_lm(work: Path) -> tuple[Path, int]:
    from xlsr_edge.data import CLIPS_MANIFEST
    from xlsr_edge.lm import build_lm

    corpus = work / "lm-corpus.txt"
    lines = [
        json.loads(x)["text"] for x in CLIPS_MANIFEST.read_text(encoding="utf-8").splitlines() if x.strip()
    ]
    lines += sentences(5000, seed=1)
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    lm = work / "lm.bin"
    if not lm.exists():
        build_lm(corpus, lm, order=3)
    return lm, len(lines)


def make_audio_files(work: Path, total_seconds: float, n: int) -> list[Path]:
    """n utterances of total_seconds / n each, cut from the shipped clips at different offsets."""
    import soundfile as sf

    base = load_source_audio(None, RATE)
    folder = work / "audio"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    each = total_seconds / n
    for i in range(n):
        p = folder / f"utt_{i:02d}.wav"
        sf.write(p, exact_audio(base, each, RATE, offset_seconds=i * 1.37), RATE, subtype="PCM_16")
        paths.append(p)
    return paths


def synthetic_logits(vocab: list[str], blank: int, delimiter: str, seconds: float, n: int, seed: int):
    """Trained-like CTC logits [frames, vocab] of in-LM sentences: ~4 frames per character, mostly blank."""
    rng = np.random.default_rng(seed)
    ids = {t: i for i, t in enumerate(vocab)}
    space = ids[delimiter]
    frames_each = int(seconds / n / 0.02)
    out, texts = [], []
    pool = iter(sentences(10 * n + 100, seed=seed + 7))
    for _ in range(n):
        seq: list[int] = []
        words: list[str] = []
        while len(seq) < frames_each:
            for w in next(pool).split():
                chars = [ids[c] for c in w if c in ids]
                if not chars:
                    continue
                words.append(w)
                for c in chars:
                    seq += [c] * int(rng.integers(1, 3)) + [blank] * int(rng.integers(1, 4))
                seq += [space] + [blank] * int(rng.integers(1, 3))
        seq = seq[:frames_each]
        peak = rng.uniform(4.0, 12.0, size=len(seq)).astype(np.float32)
        logits = rng.normal(0.0, 1.0, size=(len(seq), len(vocab))).astype(np.float32)
        logits[np.arange(len(seq)), seq] += peak
        out.append(logits)
        texts.append(" ".join(words))
    return out, texts


def peakedness(logits: list[np.ndarray], blank: int) -> dict[str, float]:
    x = np.concatenate(logits).astype(np.float64)
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return {
        "mean_max_prob": float(p.max(-1).mean()),
        "blank_frames": float((x.argmax(-1) == blank).mean()),
    }


def stack(logits: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    longest = max(x.shape[0] for x in logits)
    out = np.full((len(logits), longest, logits[0].shape[1]), -1e4, dtype=np.float32)
    lengths = np.zeros(len(logits), dtype=np.int64)
    for i, x in enumerate(logits):
        out[i, : x.shape[0]] = x
        lengths[i] = x.shape[0]
    return out, lengths


# -- measurements --------------------------------------------------------------------------------------------


def decoder_throughput(decoders: dict, sources: dict, repeat: int) -> list[dict]:
    """Interleaved CPU-time rounds of every (source, decoder) on the whole stacked batch of that source."""
    wall: dict[tuple[str, str], list[float]] = {}
    cases = {}
    for src, (logits, _) in sources.items():
        batch, lengths = stack(logits)
        for name, dec in decoders.items():
            key = (src, name)
            wall[key] = []

            def run(dec=dec, batch=batch, lengths=lengths, key=key) -> float:
                c0, w0 = time.process_time(), time.perf_counter()
                dec.decode_batch(batch, lengths)
                wall[key].append(time.perf_counter() - w0)
                return time.process_time() - c0

            cases[key] = run
    log(f"decoder throughput: {len(cases)} cases, 1 warm-up + {repeat} rounds")
    samples = interleave(cases, repeat, warmup=1, self_timed=True, group=lambda k: k[0])
    rows = []
    for (src, name), cpu in samples.items():
        logits, audio_s = sources[src]
        st, wt = summarize(cpu), summarize(wall[(src, name)][1:])  # wall[0] is the warm-up call
        rows.append(
            {
                "logits": src,
                "decoder": name,
                "audio_s": audio_s,
                "cpu_s_p50": st["p50"],
                "cpu_s_p95": st["p95"],
                "wall_s_p50": wt["p50"],
                "x_real_time_per_core": throughput(audio_s, st["p50"]),
                "ms_per_audio_s": 1000 * st["p50"] / audio_s,
            }
        )
    return rows


def end_to_end(
    bundle: Path, paths: list[Path], decoders: dict, repeat: int, threads: int | None
) -> list[dict]:
    """Recognizer.transcribe stage by stage (same calls as transcribe), one case per decoder, interleaved."""
    from xlsr_edge.runtime import Recognizer, TranscribeOptions

    options = TranscribeOptions()
    stages: dict[str, list[dict[str, float]]] = {name: [] for name in decoders}
    audio_total = [0.0]

    def run(name: str) -> float:
        t0 = time.perf_counter()
        rec = Recognizer.from_bundle(bundle, threads=threads, decoder=decoders[name])
        t1 = time.perf_counter()
        items = [rec.load(p, i) for i, p in enumerate(paths)]
        t2 = time.perf_counter()
        rec.infer(items, rec.windows(items, options), options)
        t3 = time.perf_counter()
        results = [rec._format(it, d) for it, d in zip(items, rec.decode(items))]
        t4 = time.perf_counter()
        rec.runner.deactivate()  # the decoder is shared across rounds: not rec.close()
        assert not any(r.error for r in results)
        audio_total[0] = sum(r.duration for r in results)
        stages[name].append({"load": t1 - t0, "front_end": t2 - t1, "inference": t3 - t2, "decode": t4 - t3})
        return t4 - t1

    log(f"end to end: {len(decoders)} decoders, 1 warm-up + {repeat} rounds")
    interleave({name: (lambda n=name: run(n)) for name in decoders}, repeat, warmup=1, self_timed=True)
    rows = []
    for name, per_round in stages.items():
        per_round = per_round[1:]  # drop the warm-up round
        med = {k: float(np.median([r[k] for r in per_round])) for k in per_round[0]}
        e2e = med["front_end"] + med["inference"] + med["decode"]
        rows.append(
            {
                "decoder": name,
                "audio_s": audio_total[0],
                **{f"{k}_s": v for k, v in med.items()},
                "e2e_s": e2e,
                "decode_share": med["decode"] / e2e,
                "x_real_time": audio_total[0] / e2e,
            }
        )
    return rows


def markdown(results: dict) -> str:
    """results.md: decoder throughput, the end-to-end split by stage, the goals."""
    dec_rows, e2e_rows, goals = results["decoders"], results["end_to_end"], results["goals"]
    model_desc, audio_s, lm_lines = results["model"], results["audio_seconds"], results["lm"]["corpus_lines"]
    dec_table = markdown_table(
        dec_rows,
        [
            ("logits", "logits"),
            ("decoder", "decoder"),
            ("audio_s", "audio s", "{:.1f}"),
            ("cpu_s_p50", "CPU s (p50)", "{:.4f}"),
            ("wall_s_p50", "wall s (p50)", "{:.4f}"),
            ("x_real_time_per_core", "× real time / core", "{:.0f}"),
            ("ms_per_audio_s", "CPU ms / audio-s", "{:.3f}"),
        ],
    )
    e2e_table = markdown_table(
        e2e_rows,
        [
            ("decoder", "decoder"),
            ("load_s", "load s", "{:.3f}"),
            ("front_end_s", "front end s", "{:.3f}"),
            ("inference_s", "inference s", "{:.3f}"),
            ("decode_s", "decode s", "{:.4f}"),
            ("e2e_s", "end-to-end s (no load)", "{:.3f}"),
            ("decode_share", "decode share", "{:.2%}"),
            ("x_real_time", "× real time", "{:.1f}"),
        ],
    )
    goal_rows = [{"check": k, **v, "met": "yes" if v["met"] else "NO"} for k, v in goals.items()]
    goal_table = markdown_table(
        goal_rows, [("check", "check"), ("value", "value", "{:.4g}"), ("goal", "goal"), ("met", "met")]
    )
    peaks = ", ".join(
        f"{k}: mean max prob {v['mean_max_prob']:.3f}, blank frames {v['blank_frames']:.0%}"
        for k, v in results["logits"].items()
    )
    md = "\n".join(
        [
            "# Decoding benchmark",
            "",
            f"Model: {model_desc}. Audio: {audio_s:.1f} s in {results['utterances']} files. "
            f"Beam width {results['beam_width']}; "
            f"KenLM 3-gram on {lm_lines} lines. Logits: {peaks}. CPU: {results['environment']['cpu']} "
            f"(load {results['environment'].get('loadavg_1m')}).",
            "",
            "## Decoder throughput (CPU time of this process, single-threaded decoders)",
            "",
            dec_table,
            "",
            "## End-to-end transcribe, split by stage (wall-clock, median)",
            "",
            e2e_table,
            "",
            "## Goals",
            "",
            goal_table,
            "",
        ]
    )
    return md


def plots(results: dict, out: Path) -> list:
    """decode_throughput.png and e2e_split.png, drawn after the figures are written."""
    dec_rows, e2e_rows, audio_s = results["decoders"], results["end_to_end"], results["audio_seconds"]
    split = [
        {"decoder": r["decoder"], "stage": s, "seconds": r[f"{s}_s"]}
        for r in e2e_rows
        for s in ("front_end", "inference", "decode")
    ]
    return [
        lambda: plot_bars(
            dec_rows,
            out / "decode_throughput.png",
            value="x_real_time_per_core",
            group=lambda r: r["decoder"],
            series=lambda r: f"{r['logits']} logits",
            title=f"decoding speed, beam width {results['beam_width']}",
            ylabel="× real time per core (log)",
            log=True,
        ),
        lambda: plot_bars(
            split,
            out / "e2e_split.png",
            value="seconds",
            group=lambda r: r["stage"],
            series=lambda r: r["decoder"],
            title=f"transcribe of {audio_s:.0f} s of audio, by stage",
            ylabel="seconds, median (log)",
            log=True,
        ),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", type=Path, default=Path("benchmarks/results/decode"))
    ap.add_argument("--work", type=Path, default=None, help="scratch folder, reused when given")
    ap.add_argument("--bundle", type=Path, default=None, help="bundle to record logits with")
    ap.add_argument("--model", choices=["demo", "tiny", "xlsr-300m"], default=None, help="when no --bundle")
    ap.add_argument("--seconds", type=float, default=60.0, help="total audio (split into --utterances)")
    ap.add_argument("--utterances", type=int, default=8)
    ap.add_argument("--beam-width", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads for the end-to-end run")
    ap.add_argument("--no-synthetic", action="store_true", help="only recorded logits")
    args = ap.parse_args()
    run = start()

    from xlsr_edge.bundle import load_bundle
    from xlsr_edge.decoders import BeamDecoder, BeamOptions, GreedyDecoder, Vocabulary
    from xlsr_edge.runtime import Recognizer

    work = args.work or Path(tempfile.mkdtemp(prefix="xlsr-decode-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle, model_desc = get_bundle(args, work)
    lm, lm_lines = get_lm(work)
    paths = make_audio_files(work, args.seconds, args.utterances)
    info = load_bundle(bundle).model
    vocab = Vocabulary.from_model_info(info)
    with Recognizer.from_bundle(bundle, threads=args.threads) as rec:
        recorded = rec.logits(paths)
    audio_s = sum(len(x) for x in (load_source_audio(p, RATE) for p in paths)) / RATE
    sources = {"recorded": (recorded, audio_s)}
    if not args.no_synthetic:
        synth, _ = synthetic_logits(
            info.vocab, info.blank_id, info.word_delimiter, args.seconds, args.utterances, 3
        )
        sources["synthetic"] = (synth, sum(x.shape[0] for x in synth) * vocab.frame_seconds)
    decoders = {
        "greedy": GreedyDecoder(vocab),
        "beam": BeamDecoder(vocab, BeamOptions(beam_width=args.beam_width)),
        "beam+kenlm": BeamDecoder(vocab, BeamOptions(beam_width=args.beam_width, lm_path=str(lm))),
    }
    log(f"{model_desc}; {audio_s:.1f} s of audio in {len(paths)} files")
    dec_rows = decoder_throughput(decoders, sources, args.repeat)
    e2e_rows = end_to_end(
        bundle, paths, {k: decoders[k] for k in ("greedy", "beam+kenlm")}, args.repeat, args.threads
    )
    for d in decoders.values():
        d.close()

    greedy = next(r for r in e2e_rows if r["decoder"] == "greedy")
    goals = {
        "greedy_share_of_e2e": {
            "value": greedy["decode_share"],
            "goal": f"<= {GREEDY_SHARE_GOAL:.0%}",
            "met": greedy["decode_share"] <= GREEDY_SHARE_GOAL,
        },
    }
    for r in dec_rows:
        if r["decoder"] == "beam+kenlm":
            goals[f"beam_kenlm_x_real_time_per_core[{r['logits']}]"] = {
                "value": r["x_real_time_per_core"],
                "goal": f">= {BEAM_LM_GOAL:.0f}",
                "met": r["x_real_time_per_core"] >= BEAM_LM_GOAL,
            }
    results = {
        "model": model_desc,
        "bundle": str(bundle),
        "audio_seconds": audio_s,
        "utterances": len(paths),
        "beam_width": args.beam_width,
        "lm": {"path": str(lm), "order": 3, "corpus_lines": lm_lines},
        "logits": {k: peakedness(v[0], info.blank_id) for k, v in sources.items()},
        "decoders": dec_rows,
        "end_to_end": e2e_rows,
        "goals": goals,
        "environment": environment(),
    }
    md = markdown(results)
    write_results(args.out, results, run, markdown=md, plots=plots(results, args.out), log=log)
    print(json.dumps(results, indent=2, ensure_ascii=False, default=str))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
