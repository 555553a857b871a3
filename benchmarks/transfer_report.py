"""The report of benchmarks/transfer.py: derived comparisons, results.md and the docs page (docs/transfer.md)."""

from __future__ import annotations

RUNS = ("source", "scratch", "finetuned", "finetuned+mix", "finetuned+noise")
LABELS = {
    "source": "(a) zero-shot (English source)",
    "scratch": "(b) from scratch",
    "finetuned": "(c) fine-tuned, frozen CNN",
    "finetuned+mix": "(d) fine-tuned + 10 % English",
    "finetuned+noise": "(e) fine-tuned + noise aug.",
}
TESTS = {
    "tr_clean": "tr clean",
    "tr_noisy": "tr noisy",
    "tr_voice": "tr held-out voice",
    "en": "en",
}

# -- report --------------------------------------------------------------------------------------------------


def pts(a: float, b: float) -> str:
    """b - a in CER points, signed."""
    return f"{(b - a) * 100:+.1f} points"


def derived(ev: dict) -> dict:
    """The comparisons as numbers: CER differences in points (positive = the first model is worse)."""

    def diff(m1: str, t1: str, m2: str, t2: str) -> float:
        return round((ev[m1][t1]["cer"] - ev[m2][t2]["cer"]) * 100, 2)

    return {
        "transfer_gain_points": diff("scratch", "tr_clean", "finetuned", "tr_clean"),
        "zero_shot_vs_finetuned_points": diff("source", "tr_clean", "finetuned", "tr_clean"),
        "forgetting_points": diff("finetuned", "en", "source", "en"),
        "forgetting_with_mix_points": diff("finetuned+mix", "en", "source", "en"),
        "mix_cost_tr_clean_points": diff("finetuned+mix", "tr_clean", "finetuned", "tr_clean"),
        "noise_gain_points": diff("finetuned", "tr_noisy", "finetuned+noise", "tr_noisy"),
        "noise_cost_tr_clean_points": diff("finetuned+noise", "tr_clean", "finetuned", "tr_clean"),
        "voice_gap_points": {m: diff(m, "tr_voice", m, "tr_clean") for m in ev},
    }


def comparisons(ev: dict, missing: list[str]) -> list[str]:
    """The derived comparisons as sentences, worded by the sign of what was measured."""

    def c(m: str, t: str) -> float:
        return ev[m][t]["cer"]

    def verdict(new: float, old: float, what: str) -> str:
        """Lower CER is better; |difference| < 0.05 points counts as none."""
        if abs(new - old) < 0.0005:
            return f"{what} made no difference"
        return f"{what} helped" if new < old else f"{what} did **not** help"

    s, f, fm, fn, sc = "source", "finetuned", "finetuned+mix", "finetuned+noise", "scratch"
    gaps = ", ".join(f"{m} {pts(c(m, 'tr_clean'), c(m, 'tr_voice'))}" for m in RUNS)
    return [
        f"**Transfer vs scratch** (tr clean): scratch {c(sc, 'tr_clean'):.1%} → fine-tuned "
        f"{c(f, 'tr_clean'):.1%} "
        f"({pts(c(sc, 'tr_clean'), c(f, 'tr_clean'))}): "
        + verdict(c(f, "tr_clean"), c(sc, "tr_clean"), "starting from the English model")
        + ".",
        f"**Zero-shot** (tr clean): the English model alone {c(s, 'tr_clean'):.1%} (its vocabulary lacks "
        f"{' '.join(missing) or 'no Turkish letter'}: they count as errors), fine-tuned "
        f"{c(f, 'tr_clean'):.1%}.",
        f"**Forgetting** (en): source {c(s, 'en'):.1%} → fine-tuned {c(f, 'en'):.1%} "
        f"({pts(c(s, 'en'), c(f, 'en'))}) → fine-tuned + 10 % English {c(fm, 'en'):.1%} "
        f"({pts(c(s, 'en'), c(fm, 'en'))}): "
        + verdict(c(fm, "en"), c(f, "en"), "mixing")
        + f" against forgetting, at {pts(c(f, 'tr_clean'), c(fm, 'tr_clean'))} on tr clean.",
        f"**Noise robustness** (tr noisy): fine-tuned {c(f, 'tr_noisy'):.1%} vs with noise augmentation "
        f"{c(fn, 'tr_noisy'):.1%} ({pts(c(f, 'tr_noisy'), c(fn, 'tr_noisy'))}): "
        + verdict(c(fn, "tr_noisy"), c(f, "tr_noisy"), "augmentation")
        + f" on noisy audio, at {pts(c(f, 'tr_clean'), c(fn, 'tr_clean'))} on clean audio.",
        f"**Held-out voice gap** (held-out voice minus clean, same sentences): {gaps}.",
    ]


COLUMNS = [
    ("model", "model"),
    ("tr_clean", "tr CER clean", "{:.1%}"),
    ("tr_noisy", "tr CER noisy", "{:.1%}"),
    ("tr_voice", "tr CER held-out voice", "{:.1%}"),
    ("en", "en CER", "{:.1%}"),
    ("train_min", "train min", "{:.1f}"),
]


def setup_text(res: dict) -> str:
    s, c = res["settings"], res["corpora"]
    en, tr = c["en"], c["tr"]
    sub, noisy = c["tr_train_subset"], c["tr_noisy_test"]
    return (
        f"English source corpus: {en['seconds']['train'] / 60:.0f} min of training speech "
        f"({en['counts']['train']} utterances), test {en['counts']['test']} utterances. Turkish: "
        f"**{sub['minutes']:.1f} min** of training speech ({sub['utterances']} utterances, a seeded "
        f"subset of the corpus' train split), test {tr['counts']['test']} utterances "
        f"({tr['seconds']['test'] / 60:.1f} min); noisy test = the same clips + white/pink/brown noise at "
        f"{noisy['snr_db']:g} dB SNR; held-out voice = the same sentences spoken by "
        f"`{s['holdout_voice']}`, which no run trained on. Model: the `tiny-demo` configuration "
        f"({res['runs']['source']['parameters'] / 1e6:.2f} M parameters). Source: {s['source_steps']} "
        f"steps, lr {s['source_lr']:g}, batch {s['batch_size']}. Every Turkish run: {s['target_steps']} "
        f"steps, lr {s['target_lr']:g}, batch {s['batch_size']}, seed {s['seed']}, {s['threads']} torch "
        "thread(s); the fine-tuned runs start from the source model's body with a new CTC head for a shared "
        f"{len(res['vocab'])}-token vocabulary and a frozen CNN feature encoder. "
        "Greedy decoding; CER counts the spaces between words."
    )


def markdown(res: dict, table: str) -> str:
    note = (
        "CER: greedy decoding, corpus-level (summed errors / summed reference characters). train min: wall "
        "time of the training loop, periodic dev scoring included."
    )
    lines = ["# Cross-lingual transfer, in miniature", "", setup_text(res), "", table, "", note, ""]
    lines += [f"- {x}" for x in res["comparisons"]]
    return "\n".join(lines) + "\n"


def caveats(res: dict) -> str:
    en_min = res["corpora"]["en"]["seconds"]["train"] / 60
    n_test = res["corpora"]["tr"]["counts"]["test"]
    return (
        "**Caveats.** Synthetic speech: espeak-ng is a formant synthesizer with a dozen voice variants per "
        "language, far more regular than human speech, and the sentences are word salad drawn from word "
        "frequencies. A tiny model (~2 M parameters, trained for minutes on one CPU thread) stands in for "
        f"the 300 M-parameter XLS-R, and its 'pretraining' is {en_min:.0f} minutes of supervised English, "
        "not 436 k hours of self-supervised speech in 128 languages: the size of every effect here says "
        f"little about the real one. One seed per run and one Turkish test set of {n_test} utterances: "
        "differences of a few CER points may be seed noise (a run with another --seed and --work measures "
        "it; docs/transfer.md reports one: 1-4 points per cell). The noise is synthetic "
        "(coloured Gaussian), and the held-out voice is another espeak-ng variant of the same synthesizer, "
        "not a real accent. Every Turkish run gets the same step budget and learning rate: a from-scratch "
        "model would gain more than the fine-tuned ones from a longer schedule or a higher learning rate, so "
        "the transfer gain is measured at equal (small) compute, not at convergence. Where these numbers "
        "disagree with the article, they are reported as measured."
    )


def docs_page(res: dict, table: str, plot: str) -> str:
    cmds = [res["corpora"]["en"]["command"], res["corpora"]["tr"]["command"]]
    cmds += [res["runs"][r]["command"] for r in RUNS]
    sub, noisy = res["corpora"]["tr_train_subset"], res["corpora"]["tr_noisy_test"]
    steps = (
        f"The Turkish training subset ({sub['manifest'].split('/')[-1]}) is a seeded random choice of "
        f"train-split utterances until {res['settings']['target_minutes']:g} minutes are reached; the noisy "
        f"test copy mixes every test clip with white, pink or brown noise (drawn per clip, seeded; "
        f"`xlsr_edge.train.augment.coloured_noise` + `mix_at_snr`) at {noisy['snr_db']:g} dB SNR; the shared "
        "vocabulary is built with `xlsr_edge.train.vocab.build_vocab` from the normalized Turkish and "
        "English train and dev transcripts. Every model is then scored in-process with "
        "`xlsr_edge.train.finetune.evaluate` (greedy, `normalize_text` per language)."
    )
    runs = "\n".join(
        f"| {LABELS[r]} | {res['runs'][r]['steps']} | {res['runs'][r]['train_seconds'] / 60:.1f} | "
        f"{res['runs'][r]['steps_per_s']} |"
        for r in RUNS
    )
    return (
        markdown(res, table)
        + f"\n![CER per test set]({plot})\n\n"
        + "## How it was made\n\n"
        + f"`{res['settings']['invocation']}` ({res['settings']['when']}) runs:\n\n```\n"
        + "\n".join(cmds)
        + "\n```\n\n"
        + steps
        + "\n\n| run | steps | train min | steps/s |\n|---|---:|---:|---:|\n"
        + runs
        + f"\n\nCPU: {res['environment'].get('cpu')} (load {res['environment'].get('loadavg_1m')} at start), "
        + f"torch {res['environment'].get('torch')}, "
        + f"transformers {res['environment'].get('transformers')}.\n\n"
        + caveats(res)
        + "\n"
    )
