"""Multi-language deployment (issue 8): a 3-language shared bundle vs one single-language bundle.

Goal: memory <= 1.2x and routed transcription time <= 1.15x of the single-language bundle. Bodies: the shipped
demo model's (models/demo-tr) when present, else the tiny demo configuration with random weights; the two other
heads are new random heads on the same frozen body. Language ID is trained on espeak-ng speech of the three
languages. Peak RSS is measured in a fresh process per bundle (load + transcribe the same clips); time is
measured in one process, the two recognizers interleaved. Prints JSON + markdown, writes results.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import (
    REPO,
    baseline_check,
    interleave,
    loadavg,
    markdown_table,
    mib,
    peak_rss_bytes,
    plot_bars,
    start,
    summarize,
    write_results,
)

DEMO = REPO / "models" / "demo-tr"
SENTENCES = {
    "tr": [
        "bugün hava çok güzel",
        "kitap okumayı severim",
        "yarın okula gideceğiz",
        "annem çay yaptı",
        "şehirde çok insan var",
        "kedi bahçede uyuyor",
        "akşam yemeği hazır",
        "çocuklar parkta oynuyor",
    ],
    "id": [
        "hari ini cuacanya cerah",
        "saya suka membaca buku",
        "besok kami pergi ke sekolah",
        "ibu membuat teh manis",
        "kota ini sangat ramai",
        "kucing tidur di kebun",
        "makan malam sudah siap",
        "anak anak bermain di taman",
    ],
    "es": [
        "hoy hace muy buen tiempo",
        "me gusta leer libros",
        "mañana vamos a la escuela",
        "mi madre hizo café",
        "la ciudad está llena de gente",
        "el gato duerme en el jardín",
        "la cena está lista",
        "los niños juegan",
    ],
}
VOICES = ["", "+m3", "+f2", "+m7"]


def synth(work: Path) -> dict[str, Path]:
    import soundfile as sf
    import soxr

    out = {}
    for lang, sents in SENTENCES.items():
        d = work / "speech" / lang
        d.mkdir(parents=True, exist_ok=True)
        lines = []
        for i, s in enumerate(sents):
            raw, wav = d / "raw.wav", d / f"{i:02d}.wav"
            subprocess.run(["espeak-ng", "-v", lang + VOICES[i % 4], "-w", str(raw), s], check=True)
            x, sr = sf.read(raw, dtype="float32")
            sf.write(wav, soxr.resample(x, sr, 16000), 16000)
            raw.unlink()
            lines.append(json.dumps({"audio_filepath": str(wav), "text": s}))
        out[lang] = work / "speech" / f"{lang}.jsonl"
        out[lang].write_text("\n".join(lines) + "\n")
    return out


def with_new_head(src: Path, chars: list[str], out: Path) -> Path:
    """The same body with a new random CTC head and tokenizer for another alphabet."""
    import torch
    import transformers

    from xlsr_edge.export.tiny import SPECIAL

    model = transformers.Wav2Vec2ForCTC.from_pretrained(str(src))
    tokens = SPECIAL + chars
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    tok = transformers.Wav2Vec2CTCTokenizer(
        str(out / "vocab.json"), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|"
    )
    torch.manual_seed(len(chars))
    model.lm_head = torch.nn.Linear(model.config.hidden_size, len(tokens))
    model.config.vocab_size = len(tokens)
    model.save_pretrained(str(out))
    fe = transformers.Wav2Vec2FeatureExtractor.from_pretrained(str(src))
    transformers.Wav2Vec2Processor(feature_extractor=fe, tokenizer=tok).save_pretrained(str(out))
    return out


def checkpoints(work: Path) -> dict[str, Path]:
    """tr: the demo model (or a random tiny-demo body); id/es: the same body with new random heads."""
    import shutil

    from xlsr_edge.export.tiny import build_checkpoint

    base = DEMO if (DEMO / "config.json").exists() else None
    tr = work / "ckpt-tr"
    if base is not None:
        shutil.copytree(base, tr, dirs_exist_ok=True, ignore=shutil.ignore_patterns("test", "*.md"))
    else:
        from xlsr_edge.train.finetune import NAMED_CONFIGS

        build_checkpoint(tr, **NAMED_CONFIGS["tiny-demo"])
    out = {"tr": tr}
    for lang, chars in (("id", "abcdefghijklmnoprstuwy"), ("es", "abcdefghijlmnñopqrstuvxyzáéíóú")):
        out[lang] = with_new_head(tr, list(chars), work / f"ckpt-{lang}")
    return out


def measure_rss(bundle: str, clips: list[str], language: str | None) -> None:
    """Child mode: load, transcribe, print peak RSS (MB)."""
    from xlsr_edge.runtime import Recognizer

    with Recognizer.from_bundle(bundle, threads=1, language=language) as rec:
        rec.transcribe(clips)
    print(json.dumps({"peak_rss_mb": mib(peak_rss_bytes())}))


def child_rss(bundle: Path, clips: list[str], language: str | None = None) -> float:
    cmd = [
        sys.executable,
        __file__,
        "--measure-rss",
        str(bundle),
        *(["--language", language] if language else []),
        "--",
        *clips,
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)["peak_rss_mb"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-o", "--out", type=Path, default=REPO / "benchmarks" / "results" / "multilang")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--measure-rss", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--language", default=None, help=argparse.SUPPRESS)
    ap.add_argument("clips", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure_rss:
        measure_rss(args.measure_rss, args.clips, args.language)
        return 0
    run = start()

    from xlsr_edge.export import export_bundle
    from xlsr_edge.export.multi import LidOptions, export_multi
    from xlsr_edge.runtime import Recognizer

    work = args.work or Path(tempfile.mkdtemp(prefix="xlsr-multi-"))
    data = synth(work)
    ckpts = checkpoints(work)
    single, shared = work / "single-tr", work / "shared"
    if not single.exists():
        export_bundle(ckpts["tr"], single)
    if not shared.exists():
        export_multi(ckpts, shared, lid=LidOptions(data))
    lid = json.loads((shared / "bundle.json").read_text())["extra"]["lid"]
    clips = [json.loads(line)["audio_filepath"] for line in data["tr"].read_text().splitlines()]
    rss_single, rss_shared = child_rss(single, clips), child_rss(shared, clips)
    with (
        Recognizer.from_bundle(single, threads=1) as one,
        Recognizer.from_bundle(shared, threads=1) as routed,
    ):
        before = loadavg()
        samples = interleave(
            {"single": lambda: one.transcribe(clips), "shared, routed": lambda: routed.transcribe(clips)},
            args.repeat,
            warmup=1,
        )
        after = loadavg()
        routed_langs = [t.language for t in routed.transcribe(clips)]
    # the time goal is a ratio to the single bundle: judged only when that baseline's own run was clean
    check = baseline_check(samples["single"], loadavg_before=before, loadavg_after=after, own_threads=1)
    t = {k: summarize(v)["p50"] for k, v in samples.items()}
    rows = [
        {
            "bundle": "single (tr)",
            "peak_rss_mb": rss_single,
            "transcribe_s": t["single"],
            "memory_x": 1.0,
            "time_x": 1.0,
        },
        {
            "bundle": "shared (tr, id, es)",
            "peak_rss_mb": rss_shared,
            "transcribe_s": t["shared, routed"],
            "memory_x": rss_shared / rss_single,
            "time_x": t["shared, routed"] / t["single"],
        },
    ]
    result = {
        "body": "models/demo-tr" if (DEMO / "config.json").exists() else "random tiny-demo configuration",
        "rows": rows,
        "lid": {k: lid.get(k) for k in ("holdout_accuracy", "holdout_utterances", "utterances")},
        "routed_to_tr": routed_langs.count("tr") / len(routed_langs),
        "goals": {
            "memory_x <= 1.2": rows[1]["memory_x"] <= 1.2,
            "time_x <= 1.15": rows[1]["time_x"] <= 1.15 if check["sane"] else None,
        },
        "baseline_check": check,
    }
    table = markdown_table(
        rows,
        [
            ("bundle", "bundle"),
            ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
            ("memory_x", "memory ×", "{:.3f}"),
            ("transcribe_s", "transcribe s (p50)", "{:.3f}"),
            ("time_x", "time ×", "{:.3f}"),
        ],
    )
    if not check["sane"]:
        table += f"\n\nNo time verdict: the single bundle's run was not clean ({'; '.join(check['flags'])})."
    long_rows = [
        {"bundle": r["bundle"], "metric": m, "value": r[m]} for r in rows for m in ("memory_x", "time_x")
    ]
    plot = [
        lambda: plot_bars(
            long_rows,
            args.out / "results.png",
            value="value",
            group=lambda r: r["metric"],
            series=lambda r: r["bundle"],
            title="shared 3-language bundle vs single",
            ylabel="× single bundle",
        )
    ]
    write_results(args.out, result, run, markdown=table, plots=plot)
    print(json.dumps(result, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
