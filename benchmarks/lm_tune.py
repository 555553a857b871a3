"""LM benchmark (issue 18): greedy / beam without LM / beam + untuned LM / beam + tuned LM on the demo model.

Two test sets, neither seen by the LM or by the tuning:

(a) the demo model's 30 shipped test clips (random word sequences from wordfreq, spoken by espeak-ng).
    LM: the model's own training transcripts (the first corpus' train split and every split of the second
    corpus, regenerated here from `xlsr-edge synth`'s seeded sampler exactly as models/demo-tr/MODEL_CARD.md
    made them; no audio needed), a word 3-gram. Tuned on the first corpus' dev split (83 utterances, rendered
    here with the voices/speeds/pitches the corpus drew). The test clips' sentences are in neither.
    Also the natural-sentence LM of (b), which is unrelated text for these clips (the issue's case: an LM that
    hurts), and for reference an "oracle" LM of the test transcripts themselves (what tests/test_lm_tune.py
    checks).
(b) natural Turkish sentences written for this benchmark (benchmarks/data): an LM of 60 sentences
    (tr_lm_text.txt, built with `--bundle` fitting), weights tuned on 20 other sentences (tr_dev_sentences.txt),
    tested on 20 more (tr_test_sentences.txt); dev and test spoken by `xlsr-edge synth --sentences`
    (--repeat 2: each sentence by two voices). Also the training-transcript LM of (a) on the same set.

"untuned" = pyctcdecode's defaults (alpha 0.5, beta 1.5, unknown-word offset -10); "tuned" = the weights
`xlsr-edge lm tune` (its default coordinate search, beam width 100) finds on the dev set, then applied to the
test set. Prints markdown; writes results.json and results.md in -o.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPO, start, write_results

ROOT = REPO
DEMO = ROOT / "models" / "demo-tr"
DATA = ROOT / "benchmarks" / "data"
UNTUNED = (0.5, 1.5, -10.0)


def corpus_plans(seed: int, hours: float, dev_share: float, test_share: float, count: int):
    """The first `count` utterance plans of `xlsr-edge synth --language tr --seed S ...` (MODEL_CARD.md)."""
    from xlsr_edge.train.synth import SynthOptions, default_voices, load_words, plan_stream

    options = SynthOptions(
        language="tr", hours=hours, out=Path("unused"), seed=seed, dev_share=dev_share, test_share=test_share
    )
    words, freqs, _ = load_words("tr", options.top_words)
    plans = []
    for plan in plan_stream(options, words, freqs, default_voices("tr")):
        plans.append(plan)
        if len(plans) == count:
            return plans
    raise AssertionError("unreachable")


def render_manifest(plans, folder: Path, name: str) -> Path:
    """Render plans with espeak-ng into folder/audio and write folder/name.jsonl."""
    from concurrent.futures import ThreadPoolExecutor

    from xlsr_edge.train.synth import _line, _render, espeak_binary

    exe = espeak_binary()
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(2) as pool:
        durations = list(pool.map(lambda p: _render(p, folder, exe), plans))
    path = folder / f"{name}.jsonl"
    path.write_text("".join(_line(p, d) + "\n" for p, d in zip(plans, durations)), encoding="utf-8")
    return path


def logits_of(bundle: Path, manifest: Path):
    from xlsr_edge.datasets import read_manifest
    from xlsr_edge.runtime import Recognizer

    utts = read_manifest(manifest)
    with Recognizer.from_bundle(bundle, threads=1) as rec:
        logits = rec.logits([u.audio for u in utts])
        vocab = rec.vocab
    return vocab, logits, [u.text for u in utts], sum(u.duration or 0 for u in utts)


def decode_rates(vocab, logits, refs, options) -> dict:
    from xlsr_edge.decoders import make_decoder
    from xlsr_edge.measure.metrics import error_rates

    longest = max(x.shape[0] for x in logits)
    batch = np.full((len(logits), longest, len(vocab.tokens)), -1e4, dtype=np.float32)
    for i, x in enumerate(logits):
        batch[i, : x.shape[0]] = x
    lengths = np.array([x.shape[0] for x in logits])
    with make_decoder(vocab, options) as decoder:
        hyps = [d.text for d in decoder.decode_batch(batch, lengths)]
    rates = error_rates(refs, hyps, language="tr")
    return {"wer": rates.wer, "cer": rates.cer, "words": rates.ref_words, "utterances": rates.utterances}


def measure(name, vocab, dev, test, lms: dict[str, Path], workers: int) -> dict:
    """Greedy and beam without LM on the test set, then per LM: untuned, and tuned on dev."""
    from xlsr_edge.decoders import BeamOptions, GreedyOptions
    from xlsr_edge.decoders.lm_files import read_unigrams, unigrams_path_for
    from xlsr_edge.lm.coverage import oov_rate
    from xlsr_edge.measure.lm_tune import TuneOptions, tune_logits
    from xlsr_edge.measure.metrics import normalize_text

    out = {"set": name, "rows": []}
    out["rows"].append({"decoding": "greedy", **decode_rates(vocab, *test[:2], GreedyOptions())})
    plain = BeamOptions(num_workers=workers)
    out["rows"].append({"decoding": "beam, no LM", **decode_rates(vocab, *test[:2], plain)})
    for lm_name, lm in lms.items():
        words = set(read_unigrams(unigrams_path_for(lm)))
        oov = oov_rate(words, (normalize_text(t, "tr") for t in test[1])).rate
        untuned = BeamOptions(
            lm_path=str(lm), num_workers=workers, **dict(zip(("alpha", "beta", "unk_score_offset"), UNTUNED))
        )
        out["rows"].append(
            {
                "decoding": f"beam + {lm_name} LM, untuned",
                "lm_oov": oov,
                **decode_rates(vocab, *test[:2], untuned),
            }
        )
        if dev is None:
            continue
        t0 = time.perf_counter()
        tuned = tune_logits(vocab, dev[0], dev[1], lm, TuneOptions(language="tr", workers=workers))
        seconds = time.perf_counter() - t0
        a, b, u = tuned.weights
        options = BeamOptions(lm_path=str(lm), num_workers=workers, alpha=a, beta=b, unk_score_offset=u)
        out["rows"].append(
            {
                "decoding": f"beam + {lm_name} LM, tuned on dev",
                "alpha": a,
                "beta": b,
                "unk_score_offset": u,
                "helps_on_dev": tuned.helps,
                "dev_wer": {
                    "beam": tuned.beam.rates.wer,
                    "untuned": tuned.untuned.rates.wer,
                    "tuned": tuned.best.rates.wer,
                },
                "tune_settings": len(tuned.rows),
                "tune_seconds": round(seconds, 1),
                "lm_oov": oov,
                **decode_rates(vocab, *test[:2], options),
            }
        )
    return out


def markdown(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines += [
            f"### {r['set']}",
            "",
            "| decoding | alpha | beta | unk | WER | CER | LM OOV |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in r["rows"]:
            w = [row.get(k) for k in ("alpha", "beta", "unk_score_offset")]
            cells = ["" if v is None else f"{v:g}" for v in w]
            oov = "" if row.get("lm_oov") is None else f"{100 * row['lm_oov']:.1f} %"
            lines.append(
                f"| {row['decoding']} | {' | '.join(cells)} | {100 * row['wer']:.1f} % | {100 * row['cer']:.2f} % | {oov} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", type=Path, default=ROOT / "benchmarks" / "results" / "lm")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp folder)")
    args = ap.parse_args()
    run = start()

    from xlsr_edge.bundle import load_bundle
    from xlsr_edge.export import export_bundle
    from xlsr_edge.lm import build_lm, model_alphabet
    from xlsr_edge.train.synth import SynthOptions, build_corpus

    work = args.work or Path(tempfile.mkdtemp(prefix="lm-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = work / "bundle"
    if not (bundle / "bundle.json").is_file():
        export_bundle(DEMO, bundle)
    info = load_bundle(bundle).model
    alphabet = model_alphabet(info.vocab, info.blank_id, info.word_delimiter)

    # (a) the training transcripts, the corpus' dev split, the shipped test clips
    first = corpus_plans(0, 1.5, 0.05, 0.05, 1651)
    second = corpus_plans(1, 3.0, 0.02, 0.02, 3305)
    shipped = [
        json.loads(line)["text"]
        for line in (DEMO / "test" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    train_text = [p.text for p in first if p.split == "train"] + [p.text for p in second]
    assert not set(shipped) & set(train_text)
    (work / "train_text.txt").write_text("\n".join(train_text) + "\n", encoding="utf-8")
    lm_train = build_lm(
        work / "train_text.txt",
        work / "lm_train" / "lm.bin",
        order=3,
        language="tr",
        alphabet=alphabet,
        overwrite=True,  # the benchmark's own work folder (--work): rebuilt on every run
    )
    (work / "oracle.txt").write_text("\n".join(shipped) + "\n", encoding="utf-8")
    lm_oracle = build_lm(
        work / "oracle.txt",
        work / "lm_oracle" / "lm.bin",
        order=3,
        language="tr",
        alphabet=alphabet,
        overwrite=True,  # the benchmark's own work folder (--work): rebuilt on every run
    )
    dev_a = work / "dev_a" / "dev.jsonl"
    if not dev_a.is_file():
        render_manifest([p for p in first if p.split == "dev"], dev_a.parent, "dev")

    # (b) natural sentences
    lm_natural = build_lm(
        DATA / "tr_lm_text.txt",
        work / "lm_natural" / "lm.bin",
        order=3,
        language="tr",
        alphabet=alphabet,
        overwrite=True,  # the benchmark's own work folder (--work): rebuilt on every run
    )
    sets = {}
    for split in ("dev", "test"):
        folder = work / f"sentences_{split}"
        if not (folder / "sentences.jsonl").is_file():
            build_corpus(
                SynthOptions(
                    language="tr", hours=None, out=folder, sentences=DATA / f"tr_{split}_sentences.txt",
                    repeat=2, seed=7 if split == "dev" else 8, jobs=2, progress=False, overwrite=True,
                )
            )  # fmt: skip
        sets[split] = folder / "sentences.jsonl"

    vocab, dev_logits, dev_refs, _ = logits_of(bundle, dev_a)
    _, test_logits, test_refs, test_seconds = logits_of(bundle, DEMO / "test" / "test.jsonl")
    results = [
        measure(
            f"(a) the 30 shipped test clips (random word sequences, {test_seconds:.0f} s); dev: the corpus' dev split (83)",
            vocab,
            (dev_logits, dev_refs),
            (test_logits, test_refs),
            {"training-transcript": lm_train, "natural-text (60 sentences, unrelated here)": lm_natural},
            args.workers,
        ),
        measure(
            "(a') same clips, oracle LM (the test transcripts; untuned only)",
            vocab,
            None,
            (test_logits, test_refs),
            {"oracle": lm_oracle},
            args.workers,
        ),
    ]
    _, ndev_logits, ndev_refs, _ = logits_of(bundle, sets["dev"])
    _, ntest_logits, ntest_refs, ntest_seconds = logits_of(bundle, sets["test"])
    results.append(
        measure(
            f"(b) natural sentences: 20 test sentences x 2 voices ({ntest_seconds:.0f} s); dev: 20 other sentences x 2",
            vocab,
            (ndev_logits, ndev_refs),
            (ntest_logits, ntest_refs),
            {"natural-text (60 sentences)": lm_natural, "training-transcript": lm_train},
            args.workers,
        )
    )
    md = markdown(results)
    print(md)
    write_results(args.output, {"sets": results}, run, markdown=md)


if __name__ == "__main__":
    main()
