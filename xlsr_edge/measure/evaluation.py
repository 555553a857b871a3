"""Evaluate a bundle on a manifest: corpus WER/CER, entity micro-WER, real-time factor, per-utterance report.

Scoring is done by ``xlsr_edge.measure.metrics`` (jiwer alignments, ``normalize_text``); this module only runs the
recognizer, joins hypotheses to references and writes the results.

What is scored (and what is not):

* Utterances whose audio file is missing are not transcribed and not scored; they are counted and listed
  (``missing``), and the evaluation goes on.
* Utterances whose audio exists but cannot be decoded (corrupt file, shorter than one frame, ...) are
  *excluded* from WER/CER, counted and listed (``failed``) with the reason. Rationale: a decode failure is
  a property of the audio file, not of the model, so it is the same for every bundle evaluated on the
  manifest; counting it as all-deletions would mix data problems into the model comparison. The CLI exits
  with code 1 (some inputs failed) whenever anything is missing or failed, so a script cannot miss it.
* Utterances whose reference is empty after normalization (or that have no text at all) are skipped by
  ``metrics.error_rates`` and counted in ``skipped_empty_refs``.
* References with characters the model cannot emit (zero-shot evaluation on another language) are scored
  like any other; ``oov_chars`` reports how many reference characters lie outside the model's vocabulary.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xlsr_edge.constants import DEFAULT_BATCH_SIZE
from xlsr_edge.datasets import Utterance, read_manifest, split_missing
from xlsr_edge.errors import XlsrEdgeError
from xlsr_edge.measure.metrics import (
    NORMALIZATION_DESCRIPTION,
    ErrorRates,
    _entity_positions,
    char_confusions,
    error_rates,
    micro_wer,
    per_utterance,
)

# Utterances transcribed per Recognizer.transcribe call: bounds the audio held in memory on large sets.
TRANSCRIBE_GROUP = 256
WORST_DEFAULT = 10
CONFUSIONS_IN_MARKDOWN = 30


@dataclass(frozen=True)
class EvalOptions:
    decoder: Any = None  # GreedyOptions | BeamOptions | a Decoder instance | None (greedy)
    language: str | None = None  # for normalize_text (tr/az: dotted/dotless i)
    batch_size: int = DEFAULT_BATCH_SIZE
    threads: int | None = None
    backend: str | None = None  # None: the runtime bundle.json records (xlsr-edge optimize), else onnxruntime
    providers: Sequence[str] | str | None = None
    # backend-specific runner keywords, e.g. {"precision_hint": "f32"} for openvino
    runner_options: dict[str, Any] = field(default_factory=dict)
    entities: tuple[str, ...] = ()  # applied to every utterance whose reference contains them
    worst: int = WORST_DEFAULT
    progress: bool = False
    # None: a local Recognizer; else a callable with Recognizer.from_bundle's keywords (xlsr_edge.scale.RayRecognizer)
    recognizer: Any = None


@dataclass
class EvalResult:
    bundle: str
    manifest: str
    decoder: str
    decoder_options: dict[str, Any]
    language: str | None
    rates: ErrorRates
    micro_wer: float | None
    entity_words: int
    audio_seconds: float
    load_seconds: float
    transcribe_seconds: float
    manifest_utterances: int
    missing: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    oov_chars: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    confusions: list[tuple[str, str, int]] = field(default_factory=list)
    worst: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rtf(self) -> float | None:
        """Wall-clock transcription time (front end + inference + decoding, model load excluded) / audio time."""
        return self.transcribe_seconds / self.audio_seconds if self.audio_seconds > 0 else None

    @property
    def has_failures(self) -> bool:
        return bool(self.missing or self.failed)

    def summary(self) -> dict[str, Any]:
        r = self.rates
        return {
            "wer": r.wer,
            "cer": r.cer,
            "micro_wer": self.micro_wer,
            "utterances": r.utterances,
            "audio_seconds": round(self.audio_seconds, 3),
            "rtf": None if self.rtf is None else round(self.rtf, 5),
            "decoder": self.decoder,
            "bundle": self.bundle,
            "manifest": self.manifest,
            "decoder_options": self.decoder_options,
            "language": self.language,
            "normalization": NORMALIZATION_DESCRIPTION,
            "manifest_utterances": self.manifest_utterances,
            "skipped_empty_refs": r.skipped_empty_refs,
            "missing_audio": len(self.missing),
            "failed_audio": len(self.failed),
            "entity_words": self.entity_words,
            "words": {
                "ref_words": r.ref_words,
                "hits": r.hits,
                "substitutions": r.substitutions,
                "deletions": r.deletions,
                "insertions": r.insertions,
            },
            "chars": {
                "ref_chars": r.ref_chars,
                "hits": r.char_hits,
                "substitutions": r.char_substitutions,
                "deletions": r.char_deletions,
                "insertions": r.char_insertions,
            },
            "oov_chars": self.oov_chars,
            "load_seconds": round(self.load_seconds, 4),
            "transcribe_seconds": round(self.transcribe_seconds, 4),
            "missing": self.missing,
            "failed": self.failed,
        }

    def to_json(self) -> dict[str, Any]:
        """The summary plus the per-utterance rows, the worst utterances and the character confusions."""
        return {
            **self.summary(),
            "worst": self.worst,
            "char_confusions": [{"ref": r, "hyp": h, "count": n} for r, h, n in self.confusions],
            "per_utterance": self.rows,
        }


def read_entities_file(path: str | Path) -> tuple[str, ...]:
    """One entity (a number, a name, a multi-word phrase) per line; blank lines and '#' comments skipped."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise XlsrEdgeError(f"entities file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise XlsrEdgeError(f"{path}: not UTF-8 text ({exc.reason}); save the entity list as UTF-8") from exc
    out = []
    for line in text.splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            out.append(s)
    return tuple(dict.fromkeys(out))


def describe_decoder(options: Any) -> tuple[str, dict[str, Any]]:
    """('greedy' | 'beam' | a Decoder's name, the options that change its output)."""
    from xlsr_edge.decoders import BeamOptions, Decoder

    if isinstance(options, Decoder):
        return options.name, {}
    if isinstance(options, BeamOptions):
        from xlsr_edge.lm.weights import effective_weights

        weights = effective_weights(options)  # given, tuned (LM.tuned.json) or pyctcdecode's defaults
        described = {"beam_width": options.beam_width, "lm": options.lm_path}
        if options.lm_path is not None:
            described.update(
                alpha=weights.alpha,
                beta=weights.beta,
                unk_score_offset=weights.unk_score_offset,
                weights=weights.source,
            )
        return "beam", {**described, "hotwords": list(options.hotwords)}
    return "greedy", {}


def _oov_chars(refs_normalized: Sequence[str], vocab: Sequence[str], delimiter: str) -> dict[str, Any]:
    """Reference characters (spaces excluded) that no single-character token of the model can produce."""
    emit = {t for t in vocab if len(t) == 1 and t != delimiter}
    total = 0
    unknown: dict[str, int] = {}
    for r in refs_normalized:
        for ch in r:
            if ch == " ":
                continue
            total += 1
            if ch not in emit:
                unknown[ch] = unknown.get(ch, 0) + 1
    n = sum(unknown.values())
    return {
        "count": n,
        "share": n / total if total else 0.0,
        "chars": "".join(sorted(unknown, key=lambda c: (-unknown[c], c))),
    }


def _where(u: Utterance) -> dict[str, Any]:
    return {"audio": u.raw_path or str(u.audio), "line": u.line}


def evaluate(bundle: str | Path, manifest: str | Path, options: EvalOptions | None = None) -> EvalResult:
    """Transcribe every present utterance of `manifest` with `bundle` and score it (see the module docstring)."""
    from xlsr_edge.runtime import Recognizer, TranscribeOptions

    options = options or EvalOptions()
    utts = read_manifest(manifest, check_audio=False)  # ManifestError names the bad line
    if all(u.text is None for u in utts):
        raise XlsrEdgeError(
            f"{manifest} has no transcripts: evaluation needs a reference text per utterance "
            "(NeMo 'text', Common Voice 'sentence', CSV 'text' column)"
        )
    present, missing = split_missing(utts)
    t0 = time.perf_counter()
    rec = (options.recognizer or Recognizer.from_bundle)(
        bundle,
        backend=options.backend,
        providers=options.providers,
        threads=options.threads,
        decoder=options.decoder,
        **options.runner_options,
    )
    load_seconds = time.perf_counter() - t0
    topts = TranscribeOptions(batch_size=options.batch_size)
    hyps: dict[int, str] = {}
    durations: dict[int, float] = {}
    failed: list[dict[str, Any]] = []
    bar = None
    if options.progress and present:
        from tqdm import tqdm

        bar = tqdm(total=len(present), unit="utt", desc="eval", leave=False)
    transcribe_seconds = 0.0
    try:
        with rec:
            vocab, delimiter = list(rec.info.vocab), rec.info.word_delimiter
            step = getattr(rec, "transcribe_group", TRANSCRIBE_GROUP)  # a Ray-backed one takes all at once
            for g in range(0, len(present), step):
                group = present[g : g + step]
                t0 = time.perf_counter()
                results = rec.transcribe([u.audio for u in group], topts)
                transcribe_seconds += time.perf_counter() - t0
                for k, (u, t) in enumerate(zip(group, results)):
                    if t.error is not None:
                        failed.append({**_where(u), "error": t.error})
                    else:
                        hyps[g + k] = t.text
                        durations[g + k] = t.duration
                if bar is not None:
                    bar.update(len(group))
    finally:
        if bar is not None:
            bar.close()

    done = sorted(hyps)
    scored_utts = [present[i] for i in done]
    refs = [u.text or "" for u in scored_utts]
    hyp_list = [hyps[i] for i in done]
    if not scored_utts:
        raise XlsrEdgeError(
            f"nothing to score: {len(missing)} utterances have missing audio and {len(failed)} failed to decode"
            + (f" (first: {failed[0]['audio']}: {failed[0]['error']})" if failed else "")
        )
    lang = options.language
    rates = error_rates(refs, hyp_list, language=lang)
    entity_lists = [tuple(u.entities) + tuple(options.entities) for u in scored_utts]
    mwer = micro_wer(refs, hyp_list, entity_lists, language=lang)
    rows = per_utterance(refs, hyp_list, language=lang)
    entity_words = 0
    for row, u, ents in zip(rows, scored_utts, entity_lists):
        row["audio"] = u.raw_path or str(u.audio)
        row["line"] = u.line
        row["duration"] = round(durations[done[row["index"]]], 3)
        # the entities that occur in this reference (micro_wer ignores the others), and how many words they mark
        row["entities"] = [e for e in ents if _entity_word_positions(row["ref"], [e], lang)]
        if not row["skipped"]:
            entity_words += len(_entity_word_positions(row["ref"], row["entities"], lang))
    worst = sorted(
        (r for r in rows if not r["skipped"] and r["word_errors"] + r["char_errors"] > 0),
        key=lambda r: (-r["word_errors"], -r["wer"], -r["cer"], r["index"]),
    )[: max(options.worst, 0)]
    name, dec_opts = describe_decoder(options.decoder)
    return EvalResult(
        bundle=str(bundle),
        manifest=str(manifest),
        decoder=name,
        decoder_options=dec_opts,
        language=lang,
        rates=rates,
        micro_wer=mwer,
        entity_words=entity_words,
        audio_seconds=sum(durations.values()),
        load_seconds=load_seconds,
        transcribe_seconds=transcribe_seconds,
        manifest_utterances=len(utts),
        missing=[_where(u) for u in missing],
        failed=failed,
        oov_chars=_oov_chars([r["ref"] for r in rows if not r["skipped"]], vocab, delimiter),
        rows=rows,
        confusions=char_confusions(refs, hyp_list, top=None, language=lang),
        worst=worst,
    )


def _entity_word_positions(ref_normalized: str, entities: Sequence[str], language: str | None) -> set[int]:
    """The reference word positions micro_wer counts as entity words (its own matching rule)."""
    return _entity_positions(ref_normalized.split(), entities, language, True)


# -- output -----------------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def format_text(result: EvalResult) -> str:
    """The human-readable summary the CLI prints."""
    r = result.rates
    lines = [
        f"bundle         {result.bundle}",
        f"manifest       {result.manifest}: {result.manifest_utterances} utterances, {r.utterances} scored, "
        f"{len(result.missing)} missing audio, {len(result.failed)} failed to decode, "
        f"{r.skipped_empty_refs} empty references skipped",
        f"decoder        {result.decoder}"
        + (f" {json.dumps(result.decoder_options, ensure_ascii=False)}" if result.decoder_options else ""),
        f"normalization  {NORMALIZATION_DESCRIPTION} (language: {result.language or 'not set'})",
        f"WER            {_pct(r.wer)}  ({r.substitutions} sub, {r.deletions} del, {r.insertions} ins "
        f"over {r.ref_words} reference words)",
        f"CER            {_pct(r.cer)}  ({r.char_substitutions} sub, {r.char_deletions} del, "
        f"{r.char_insertions} ins over {r.ref_chars} reference characters)",
        f"micro-WER      {_pct(result.micro_wer)}"
        + (f"  ({result.entity_words} entity words)" if result.micro_wer is not None else "  (no entities)"),
    ]
    oov = result.oov_chars
    if oov["count"]:
        lines.append(
            f"vocabulary     {oov['count']} reference characters ({100 * oov['share']:.1f} %) are not in the "
            f"model's vocabulary: {oov['chars'][:40]}"
        )
    rtf = result.rtf
    speed = f"RTF {rtf:.4f} ({1 / rtf:.1f}x real time)" if rtf else "RTF n/a"
    lines.append(
        f"speed          {result.audio_seconds:.1f} s of audio in {result.transcribe_seconds:.2f} s: {speed}; "
        f"bundle load {result.load_seconds:.2f} s"
    )
    for label, items in (("missing audio", result.missing), ("failed audio", result.failed)):
        if items:
            lines.append(f"{label} ({len(items)}):")
            for it in items:
                where = f" (line {it['line']})" if it.get("line") is not None else ""
                err = f": {it['error']}" if it.get("error") else ""
                lines.append(f"  {it['audio']}{where}{err}")
    return "\n".join(lines)


def _md(s: Any) -> str:
    """A markdown table cell: pipes escaped, newlines flattened, empty shown as an em dash."""
    text = "" if s is None else str(s)
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
    return text if text else "—"


def _cell_char(c: str) -> str:
    return "∅" if c == "" else ("␣" if c == " " else c)


def report_markdown(result: EvalResult) -> str:
    r = result.rates
    rtf = "n/a" if result.rtf is None else f"{result.rtf:.4f}"
    out = [
        f"# Evaluation of `{result.bundle}`",
        "",
        f"Manifest `{result.manifest}`, decoder **{result.decoder}**"
        + (f" `{json.dumps(result.decoder_options, ensure_ascii=False)}`" if result.decoder_options else ""),
        "",
        "| metric | value |",
        "|---|---|",
        f"| WER | {_pct(r.wer)} ({r.word_errors} errors / {r.ref_words} words) |",
        f"| CER | {_pct(r.cer)} ({r.char_errors} errors / {r.ref_chars} chars) |",
        f"| micro-WER | {_pct(result.micro_wer)} ({result.entity_words} entity words) |",
        f"| utterances scored | {r.utterances} of {result.manifest_utterances} |",
        f"| missing audio | {len(result.missing)} |",
        f"| failed audio | {len(result.failed)} |",
        f"| empty references skipped | {r.skipped_empty_refs} |",
        f"| audio | {result.audio_seconds:.1f} s |",
        f"| RTF | {rtf} |",
        f"| reference chars outside the vocabulary | {result.oov_chars['count']} "
        f"({100 * result.oov_chars['share']:.1f} %) {_md(result.oov_chars['chars'][:40])} |",
        "",
        f"Normalization (references and hypotheses): {NORMALIZATION_DESCRIPTION} "
        f"Language: {result.language or 'not set'}.",
        "",
        "Missing and failed audio is excluded from every score (listed below).",
        "",
        f"## Worst utterances (by word errors, then WER; top {len(result.worst)})",
        "",
        "| # | audio | WER | CER | errors (S/D/I) | reference | hypothesis |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result.worst:
        out.append(
            f"| {row['index']} | {_md(row['audio'])} | {_pct(row['wer'])} | {_pct(row['cer'])} | "
            f"{row['word_errors']} ({row['substitutions']}/{row['deletions']}/{row['insertions']}) | "
            f"{_md(row['ref'])} | {_md(row['hyp'])} |"
        )
    out += [
        "",
        f"## Character confusions (top {min(CONFUSIONS_IN_MARKDOWN, len(result.confusions))} of "
        f"{len(result.confusions)}; ∅ = nothing, ␣ = space)",
        "",
        "| reference | hypothesis | kind | count |",
        "|---|---|---|---|",
    ]
    for ref_c, hyp_c, n in result.confusions[:CONFUSIONS_IN_MARKDOWN]:
        kind = "deletion" if hyp_c == "" else ("insertion" if ref_c == "" else "substitution")
        out.append(f"| {_md(_cell_char(ref_c))} | {_md(_cell_char(hyp_c))} | {kind} | {n} |")
    out += [
        "",
        "## Per utterance",
        "",
        "| # | audio | WER | CER | word errors | ref words | entities | reference | hypothesis |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result.rows:
        out.append(
            f"| {row['index']} | {_md(row['audio'])} | "
            f"{'skipped' if row['skipped'] else _pct(row['wer'])} | "
            f"{'skipped' if row['skipped'] else _pct(row['cer'])} | {row['word_errors']} | "
            f"{row['ref_words']} | {_md(', '.join(row['entities']))} | {_md(row['ref'])} | {_md(row['hyp'])} |"
        )
    for label, items in (("Missing audio", result.missing), ("Failed audio", result.failed)):
        if items:
            out += ["", f"## {label} ({len(items)})", ""]
            for it in items:
                where = f" (line {it['line']})" if it.get("line") is not None else ""
                err = f": {it['error']}" if it.get("error") else ""
                out.append(f"- `{it['audio']}`{where}{err}")
    return "\n".join(out) + "\n"


REPORT_FILES = ("report.json", "report.md")


def _report_output(folder: str | Path):
    """`--report DIR` as an output: replaced as a whole, only when it holds nothing but report files."""
    from xlsr_edge.outputs import OutputKind, atomic_output, only_files

    kind = OutputKind("eval report", "xlsr-edge eval", only_files(REPORT_FILES))
    return atomic_output(folder, kind, overwrite=True, flag="--report", overwrite_flag=None)


def check_report_folder(folder: str | Path) -> Path:
    """Refuse a --report folder that would lose someone's files, before the evaluation runs."""
    from xlsr_edge.outputs import OutputKind, check_output, only_files

    kind = OutputKind("eval report", "xlsr-edge eval", only_files(REPORT_FILES))
    return check_output(folder, kind, overwrite=True, flag="--report", overwrite_flag=None)


def write_report(result: EvalResult, folder: str | Path) -> list[Path]:
    """Write report.json (summary, per-utterance rows, worst, confusions) and report.md into `folder`: a new
    folder swapped in whole, so an earlier report is replaced only when the new one is complete."""
    folder = Path(folder)
    with _report_output(folder) as tmp:
        text = json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n"
        (tmp / "report.json").write_text(text, encoding="utf-8")
        (tmp / "report.md").write_text(report_markdown(result), encoding="utf-8")
    return [folder / name for name in REPORT_FILES]


def progress_wanted() -> bool:
    return sys.stderr.isatty()
