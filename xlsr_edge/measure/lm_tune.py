"""`xlsr-edge lm tune`: find the LM weights (alpha, beta, unknown-word offset) that decode a dev set best.

The model runs once: the dev set's logits are computed and kept, then every setting is only a beam search over
them (`BeamDecoder.set_weights` changes the weights without reloading the LM; `workers` processes share the
utterances). Every setting is scored with the project's WER/CER (``xlsr_edge.measure.metrics.error_rates``),
next to greedy decoding and beam search without the LM on the same utterances.

Search (`TuneOptions.search`):

* ``coordinate`` (default): start at pyctcdecode's defaults (alpha 0.5, beta 1.5, offset -10), then try every
  candidate of one weight with the others fixed, keep the best, go on with the next weight; repeat until a
  round changes nothing (at most `rounds`). About 25 settings a round with the default candidates.
* ``grid``: every combination of the candidates.

The best setting is the one with the lowest WER (then CER, then the smaller alpha). When it does not beat
beam search without the LM, the LM does not help on this set: the weights recorded are alpha 0, beta 0,
offset 0, with which pyctcdecode scores nothing from the LM, i.e. it decodes exactly like beam search without
it (harmless rather than harmful); the result says so (`helps` is False).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xlsr_edge.constants import DEFAULT_BATCH_SIZE
from xlsr_edge.datasets import read_manifest, split_missing
from xlsr_edge.decoders.options import PYCTCDECODE_WEIGHTS, WEIGHT_NAMES
from xlsr_edge.errors import XlsrEdgeError
from xlsr_edge.lm.weights import WEIGHT_RANGES
from xlsr_edge.measure.metrics import ErrorRates, error_rates, normalize_text
from xlsr_edge.progress import Stages

logger = logging.getLogger(__name__)

DEFAULT_ALPHAS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
DEFAULT_BETAS = (-2.0, -1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
DEFAULT_UNK_OFFSETS = (-10.0, -7.0, -5.0, -3.0, -2.0, -1.0, 0.0)
SEARCHES = ("coordinate", "grid")
START = PYCTCDECODE_WEIGHTS  # what an untuned LM decodes with
HARMLESS = (0.0, 0.0, 0.0)  # no LM score at all: beam search as without the LM
NAMES = WEIGHT_NAMES
FLAGS = ("--alpha", "--beta", "--unk-offset")


def parse_range(text: str, flag: str) -> tuple[float, ...]:
    """`A:B:STEP` (A to B inclusive), `A,B,C` or a single number -> the values, rounded to 6 decimals."""
    text = text.strip()
    try:
        if ":" in text:
            parts = [float(x) for x in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if step <= 0 or stop < start:
                raise XlsrEdgeError(f"{flag} {text}: needs START <= STOP and STEP > 0 (START:STOP:STEP)")
            n = int(np.floor((stop - start) / step + 1e-9)) + 1
            if n > 1000:
                raise XlsrEdgeError(f"{flag} {text}: {n} values; use a larger STEP")
            values = [start + i * step for i in range(n)]
        else:
            values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise XlsrEdgeError(f"{flag} {text!r}: expected START:STOP:STEP, A,B,C or a number") from None
    if not values or not all(np.isfinite(values)):
        raise XlsrEdgeError(f"{flag} {text!r}: expected finite numbers")
    return tuple(dict.fromkeys(round(v, 6) for v in values))


@dataclass(frozen=True)
class TuneOptions:
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    betas: tuple[float, ...] = DEFAULT_BETAS
    unk_offsets: tuple[float, ...] = DEFAULT_UNK_OFFSETS
    search: str = "coordinate"
    rounds: int = 4  # coordinate search: at most this many passes over the three weights
    beam_width: int = 100
    workers: int = 0  # beam search processes (BeamOptions.num_workers)
    language: str | None = None  # text normalization for scoring (tr/az: dotted/dotless i)
    batch_size: int = DEFAULT_BATCH_SIZE
    threads: int | None = None
    backend: str | None = None  # None: the runtime bundle.json records (xlsr-edge optimize), else onnxruntime
    providers: Sequence[str] | str | None = None
    progress: bool = False  # a progress bar (a terminal); else one log line per stage, with times

    def __post_init__(self) -> None:
        if self.search not in SEARCHES:
            raise XlsrEdgeError(f"--search must be one of {', '.join(SEARCHES)}, got {self.search!r}")
        for flag, values in (
            ("--alpha", self.alphas),
            ("--beta", self.betas),
            ("--unk-offset", self.unk_offsets),
        ):
            if not values:
                raise XlsrEdgeError(f"{flag}: no values to try")
        if min(self.alphas) < 0:
            raise XlsrEdgeError(f"--alpha: the LM weight must be >= 0, got {min(self.alphas)}")
        if max(self.unk_offsets) > 0:
            raise XlsrEdgeError(
                f"--unk-offset: the unknown-word offset must be <= 0, got {max(self.unk_offsets)}"
            )
        for flag, name, values in zip(FLAGS, NAMES, self.candidates):
            low, high = WEIGHT_RANGES[name]
            if min(values) < low or max(values) > high:
                raise XlsrEdgeError(
                    f"{flag}: values from {low:g} to {high:g} (what a tuned sidecar may hold), "
                    f"got {min(values):g} to {max(values):g}"
                )
        if self.rounds < 1:
            raise XlsrEdgeError(f"rounds must be >= 1, got {self.rounds}")
        if self.beam_width < 1:
            raise XlsrEdgeError(f"--beam-width must be >= 1, got {self.beam_width}")
        if self.workers < 0:
            raise XlsrEdgeError(f"--workers must be >= 0, got {self.workers}")

    @property
    def candidates(self) -> tuple[tuple[float, ...], ...]:
        return (self.alphas, self.betas, self.unk_offsets)


@dataclass(frozen=True)
class Row:
    """One decoding of the dev set: a label, the LM weights (None for greedy / beam without LM), its rates."""

    label: str
    weights: tuple[float, float, float] | None
    rates: ErrorRates

    @property
    def key(self) -> tuple[float, float, float]:
        """What `best` minimizes: WER, then CER, then the LM weight (the more cautious setting on a tie)."""
        return (self.rates.wer, self.rates.cer, self.weights[0] if self.weights else 0.0)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "wer": self.rates.wer, "cer": self.rates.cer}
        if self.weights is not None:
            out.update(zip(NAMES, self.weights))
        return out


@dataclass
class TuneResult:
    lm: str
    manifest: str
    utterances: int  # scored
    words: int  # reference words
    beam_width: int
    search: str
    greedy: Row
    beam: Row  # beam search without the LM
    untuned: Row  # the LM with pyctcdecode's defaults
    rows: list[Row]  # every LM setting tried, in the order tried
    best: Row  # the best LM setting
    helps: bool  # the best LM setting beats beam search without the LM
    lm_oov: float | None  # share of the dev references' words the LM does not know
    missing: int = 0  # utterances without audio (left out)
    failed: list[str] = field(default_factory=list)  # utterances whose audio could not be used (left out)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def weights(self) -> tuple[float, float, float]:
        """The weights to record: the best setting's when it helps, else the harmless ones."""
        return self.best.weights if self.helps else HARMLESS

    def sidecar(self, bundle: str | Path | None = None) -> dict[str, Any]:
        """What `lm tune` writes next to the LM (write_tuned_weights adds the LM's name and sha256)."""
        return {
            **dict(zip(NAMES, self.weights)),
            "helps": self.helps,
            "beam_width": self.beam_width,
            "tuned_on": {
                "manifest": self.manifest,
                "utterances": self.utterances,
                "words": self.words,
                "bundle": None if bundle is None else str(bundle),
            },
            "wer": {
                "greedy": self.greedy.rates.wer,
                "beam_without_lm": self.beam.rates.wer,
                "lm_pyctcdecode_defaults": self.untuned.rates.wer,
                "lm_tuned": self.best.rates.wer if self.helps else self.beam.rates.wer,
            },
            "cer": {
                "greedy": self.greedy.rates.cer,
                "beam_without_lm": self.beam.rates.cer,
                "lm_pyctcdecode_defaults": self.untuned.rates.cer,
                "lm_tuned": self.best.rates.cer if self.helps else self.beam.rates.cer,
            },
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "lm": self.lm,
            "manifest": self.manifest,
            "utterances": self.utterances,
            "words": self.words,
            "beam_width": self.beam_width,
            "search": self.search,
            "helps": self.helps,
            "recorded": dict(zip(NAMES, self.weights)),
            "lm_oov_rate": self.lm_oov,
            "greedy": self.greedy.to_json(),
            "beam_without_lm": self.beam.to_json(),
            "lm_pyctcdecode_defaults": self.untuned.to_json(),
            "best": self.best.to_json(),
            "settings": [r.to_json() for r in self.rows],
            "missing": self.missing,
            "failed": self.failed,
            "seconds": self.seconds,
        }


def _describe(row: Row) -> str:
    a, b, u = row.weights or HARMLESS
    return f"alpha {_fmt(a)}, beta {_fmt(b)}, unk offset {_fmt(u)}: WER {100 * row.rates.wer:.2f} %"


def _search(
    evaluate: Callable[[tuple[float, float, float]], Row],
    options: TuneOptions,
    note: Callable[[str], None] = lambda msg: None,
) -> tuple[Row, list[Row]]:
    """Coordinate or grid search; returns (the untuned start row, every row tried in order). `note` gets one
    line per pass over a weight (coordinate) or per tenth of the grid."""
    candidates = options.candidates
    tried: dict[tuple[float, float, float], Row] = {}

    def run(weights: tuple[float, float, float]) -> Row:
        if weights not in tried:
            tried[weights] = evaluate(weights)
        return tried[weights]

    untuned = run(START)
    run(HARMLESS)  # always measured: what `helps == False` records
    if options.search == "grid":
        grid = [(a, b, u) for a in options.alphas for b in options.betas for u in options.unk_offsets]
        for i, weights in enumerate(grid, 1):
            run(weights)
            if i == len(grid) or i % max(1, len(grid) // 10) == 0:
                best = min(tried.values(), key=lambda r: r.key)
                note(f"grid: {i} of {len(grid)} settings; best so far {_describe(best)}")
        return untuned, list(tried.values())
    current = min((untuned, tried[HARMLESS]), key=lambda r: r.key).weights
    # the start may lie outside user-given candidate lists: begin from the candidates nearest to it
    current = tuple(min(c, key=lambda v, x=x: abs(v - x)) for c, x in zip(candidates, current))
    for round_ in range(1, options.rounds + 1):
        before = current
        for dim, values in enumerate(candidates):
            rows = [run(current[:dim] + (v,) + current[dim + 1 :]) for v in values]
            best = min(rows, key=lambda r: r.key)
            current = best.weights
            note(f"round {round_}, {NAMES[dim]}: {len(values)} values; best {_describe(best)}")
        if current == before:
            break
    return untuned, list(tried.values())


def tune_logits(
    vocab,  # xlsr_edge.decoders.Vocabulary
    logits: Sequence[np.ndarray],
    refs: Sequence[str],
    lm_path: str | Path,
    options: TuneOptions | None = None,
    *,
    manifest: str = "",
    stage: Stages | None = None,
) -> TuneResult:
    """Tune on precomputed logits ([frames, vocab] per utterance) and their reference texts. Without a progress
    bar (`options.progress`), each stage is a log line with its time (`stage`, default a new `lm tune` clock).
    A best weight on the edge of its candidates is said in a `note:` line (`edge_notes`)."""
    from xlsr_edge.decoders import BeamDecoder, BeamOptions, GreedyDecoder

    options = options or TuneOptions()
    stage = stage or Stages("lm tune", logger.info)
    say = (lambda msg: None) if options.progress else stage
    if len(logits) != len(refs):
        raise ValueError(f"{len(logits)} logits but {len(refs)} references")
    if not logits:
        raise XlsrEdgeError("nothing to tune on: no utterance has both audio and a reference text")
    width = len(vocab.tokens)
    longest = max(x.shape[0] for x in logits)
    batch = np.full((len(logits), longest, width), -1e4, dtype=np.float32)
    lengths = np.array([x.shape[0] for x in logits], dtype=np.int64)
    for i, x in enumerate(logits):
        batch[i, : x.shape[0]] = x
    lang = options.language
    seconds: dict[str, float] = {}

    def score(label: str, decoder, weights=None) -> Row:
        hyps = [d.text for d in decoder.decode_batch(batch, lengths)]
        return Row(label, weights, error_rates(list(refs), hyps, language=lang))

    t0 = time.perf_counter()
    say(f"decoding {len(logits)} utterances greedily and with beam search without the LM")
    greedy = score("greedy", GreedyDecoder(vocab))
    beam_options = dict(beam_width=options.beam_width, num_workers=options.workers)
    with BeamDecoder(vocab, BeamOptions(**beam_options)) as plain:
        beam = score("beam, no LM", plain)
    seconds["baselines"] = round(time.perf_counter() - t0, 3)

    start = dict(zip(NAMES, START))
    lm_options = BeamOptions(lm_path=str(lm_path), **start, **beam_options)
    bar = _progress_bar(options)
    t0 = time.perf_counter()
    say(
        f"greedy WER {100 * greedy.rates.wer:.2f} %, beam without the LM {100 * beam.rates.wer:.2f} %; "
        f"{options.search} search of the LM weights with {Path(lm_path).name}"
    )
    try:
        with BeamDecoder(vocab, lm_options, check_coverage=False) as fused:
            lm_words = fused.lm_words

            def evaluate(weights: tuple[float, float, float]) -> Row:
                fused.set_weights(*weights)
                row = score("beam + LM", fused, weights)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"best WER so far {100 * row.rates.wer:.1f} %", refresh=False)
                return row

            untuned, rows = _search(evaluate, options, say)
    finally:
        if bar is not None:
            bar.close()
    seconds["search"] = round(time.perf_counter() - t0, 3)
    best = min(rows, key=lambda r: r.key)
    helps = best.key[:2] < beam.key[:2]
    say(f"{len(rows)} settings decoded; best {_describe(best)}")
    lm_oov = None
    if lm_words:
        from xlsr_edge.lm.coverage import oov_rate

        lm_oov = oov_rate(lm_words, (normalize_text(r, lang) for r in refs)).rate
    result = TuneResult(
        lm=str(lm_path),
        manifest=manifest,
        utterances=greedy.rates.utterances,
        words=greedy.rates.ref_words,
        beam_width=options.beam_width,
        search=options.search,
        greedy=greedy,
        beam=beam,
        untuned=untuned,
        rows=rows,
        best=best,
        helps=helps,
        lm_oov=lm_oov,
        seconds=seconds,
    )
    for line in edge_notes(result, options):
        logger.warning("%s", line)
    return result


def _progress_bar(options: TuneOptions):
    """A tqdm bar of the settings tried (a terminal), else None."""
    if not options.progress:
        return None
    from tqdm import tqdm

    total = (
        len(options.alphas) * len(options.betas) * len(options.unk_offsets) + 2
        if options.search == "grid"
        else None
    )
    return tqdm(total=total, unit="setting", desc="lm tune", leave=False)


def edge_notes(result: TuneResult, options: TuneOptions) -> list[str]:
    """A `note:` line for each recorded weight that is the lowest or highest of its candidates (where the
    weight could go further: not alpha 0, not offset 0): the best setting may lie beyond the range tried."""
    if not result.helps:
        return []  # the harmless weights are recorded: they are no choice within the ranges
    notes = []
    for flag, name, values, value in zip(FLAGS, NAMES, options.candidates, result.weights):
        if len(values) < 2:
            continue
        low, high = WEIGHT_RANGES[name]
        ordered = sorted(values)
        step = min(b - a for a, b in zip(ordered, ordered[1:]))
        if value == ordered[0] and value > low:
            side, suggestion = "lowest", f"{max(low, value - 4 * step):g}:{value:g}:{step:g}"
        elif value == ordered[-1] and value < high:
            side, suggestion = "highest", f"{value:g}:{min(high, value + 4 * step):g}:{step:g}"
        else:
            continue
        notes.append(
            f"note: the best {name.replace('_', ' ')}, {value:g}, is the {side} value tried ({flag}): a better "
            f"one may lie beyond it; try {flag} {suggestion}"
        )
    return notes


def tune(
    bundle: str | Path, manifest: str | Path, lm_path: str | Path, options: TuneOptions | None = None
) -> TuneResult:
    """Compute the dev set's logits once with `bundle`, then tune (tune_logits). Utterances without audio or
    whose audio cannot be used are left out and counted."""
    from xlsr_edge.decoders.lm_files import check_lm_file
    from xlsr_edge.runtime import Recognizer, TranscribeOptions

    options = options or TuneOptions()
    stage = Stages("lm tune", logger.info)
    lm = Path(lm_path)
    if not lm.is_file():
        raise XlsrEdgeError(f"language model not found: {lm_path}")
    check_lm_file(lm)
    utts = read_manifest(manifest, check_audio=False)
    if all(u.text is None for u in utts):
        raise XlsrEdgeError(
            f"{manifest} has no transcripts: tuning needs a reference text per utterance "
            "(NeMo 'text', Common Voice 'sentence', CSV 'text' column)"
        )
    present, missing = split_missing(utts)
    present = [u for u in present if u.text]
    t0 = time.perf_counter()
    if not options.progress:
        stage(f"computing the logits of {len(present)} utterances with {bundle}")
    with Recognizer.from_bundle(
        bundle, backend=options.backend, providers=options.providers, threads=options.threads
    ) as rec:
        if rec.manifest.extra.get("kind") == "multi":
            raise XlsrEdgeError("lm tune works on a single-language bundle (this one has several heads)")
        logits = rec.logits([u.audio for u in present], TranscribeOptions(batch_size=options.batch_size))
        vocab = rec.vocab
    logits_seconds = time.perf_counter() - t0
    kept = [(u, x) for u, x in zip(present, logits) if x is not None]
    failed = [u.raw_path or str(u.audio) for u, x in zip(present, logits) if x is None]
    result = tune_logits(
        vocab,
        [x for _, x in kept],
        [u.text or "" for u, _ in kept],
        lm,
        options,
        manifest=str(manifest),
        stage=stage,
    )
    result.missing = len(missing)
    result.failed = failed
    result.seconds = {"logits": round(logits_seconds, 3), **result.seconds}
    return result


# -- output -------------------------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:6.2f} %"


def _fmt(v: float) -> str:
    return f"{v:g}"


def format_table(result: TuneResult, top: int | None = None) -> str:
    """The table `lm tune` prints: the baselines, then every LM setting tried (best first; `top` limits them)."""
    header = f"{'decoding':<34} {'alpha':>6} {'beta':>6} {'unk':>6} {'WER':>9} {'CER':>9}"
    lines = [
        f"lm tune: {result.utterances} utterances ({result.words} words) of {result.manifest}, LM {result.lm}, "
        f"beam width {result.beam_width}, {result.search} search, {len(result.rows)} settings",
    ]
    if result.lm_oov is not None:
        lines.append(f"the LM does not know {100 * result.lm_oov:.1f} % of the dev references' words")
    lines += ["", header, "-" * len(header)]

    def line(label: str, row: Row) -> str:
        w = row.weights
        cells = ("-", "-", "-") if w is None else tuple(_fmt(v) for v in w)
        return (
            f"{label:<34} {cells[0]:>6} {cells[1]:>6} {cells[2]:>6} "
            f"{_pct(row.rates.wer)} {_pct(row.rates.cer)}"
        )

    lines.append(line("greedy", result.greedy))
    lines.append(line("beam, no LM", result.beam))
    lines.append(line("beam + LM, pyctcdecode defaults", result.untuned))
    lines.append(line("beam + LM, best" + ("" if result.helps else " (no better than no LM)"), result.best))
    lines.append("")
    ranked = sorted(result.rows, key=lambda r: r.key)
    shown = ranked if top is None else ranked[:top]
    for row in shown:
        mark = "beam + LM" + (" *" if row is result.best else "")
        if row.weights == HARMLESS:
            mark += " (= no LM)"
        lines.append(line(mark, row))
    if top is not None and len(ranked) > top:
        lines.append(f"... {len(ranked) - top} more settings (all of them: --json)")
    lines.append("")
    a, b, u = result.weights
    if result.helps:
        gain = result.beam.rates.wer - result.best.rates.wer
        lines.append(
            f"best: alpha {_fmt(a)}, beta {_fmt(b)}, unk offset {_fmt(u)}: WER {100 * result.best.rates.wer:.2f} % "
            f"({100 * gain:.2f} points below beam search without the LM, "
            f"{100 * (result.greedy.rates.wer - result.best.rates.wer):.2f} below greedy)"
        )
    else:
        lines.append(
            "the LM does not beat beam search without it on this set (best WER "
            f"{100 * result.best.rates.wer:.2f} % vs {100 * result.beam.rates.wer:.2f} %): recording alpha 0, "
            "beta 0, unk offset 0, with which it decodes like beam search without an LM. An LM from text "
            "closer to the speech may help (`xlsr-edge lm build --bundle B --dev DEV` reports its "
            "out-of-vocabulary rate)"
        )
    recorded = result.best if result.helps else result.beam  # what decoding with the sidecar gives
    if recorded.key[:2] > result.greedy.key[:2]:
        lines.append(
            f"note: beam search with these weights ({100 * recorded.rates.wer:.2f} %) is still worse than greedy "
            f"decoding ({100 * result.greedy.rates.wer:.2f} %) on this set: consider --decoder greedy"
        )
    if result.missing or result.failed:
        lines.append(
            f"left out: {result.missing} utterances with missing audio, {len(result.failed)} whose audio "
            "could not be used" + (f" (first: {result.failed[0]})" if result.failed else "")
        )
    return "\n".join(lines)
