"""Corpus word and character error rates (the shared floor: the precision gate, training and ``measure`` score
with the same function).

Both sides are normalized with ``xlsr_edge.text.normalize_text``. Alignments and edit counts come from jiwer
(imported lazily; ``pip install 'xlsr-edge[eval]'``), never hand-rolled. Per-utterance rows, entity micro-WER
and character confusions build on this in ``xlsr_edge.measure.metrics``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from xlsr_edge.errors import XlsrEdgeError, require
from xlsr_edge.text import normalize_text


@dataclass(frozen=True)
class ErrorRates:
    """Corpus-level error rates: summed errors / summed reference length (not a mean of utterance rates)."""

    wer: float
    cer: float
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    ref_words: int
    char_substitutions: int
    char_deletions: int
    char_insertions: int
    char_hits: int
    ref_chars: int  # includes the spaces between words
    utterances: int  # utterances scored
    skipped_empty_refs: int  # utterances not scored because the reference is empty after normalization

    @property
    def word_errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def char_errors(self) -> int:
        return self.char_substitutions + self.char_deletions + self.char_insertions

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Scored:
    """Normalized references and hypotheses; only utterances with a non-empty reference are scored."""

    indices: list[int]  # positions (in the caller's lists) of the scored utterances
    refs: list[str]  # normalized
    hyps: list[str]  # normalized
    all_refs: list[str]
    all_hyps: list[str]


def prepare(refs: Sequence[str], hyps: Sequence[str], language: str | None, normalize: bool) -> Scored:
    """Normalize both sides (unless ``normalize=False``) and pick the utterances that can be scored."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if normalize:
        all_refs = [normalize_text(r, language) for r in refs]
        all_hyps = [normalize_text(h, language) for h in hyps]
    else:
        all_refs, all_hyps = list(refs), list(hyps)
    indices = [i for i, r in enumerate(all_refs) if r.split()]
    return Scored(
        indices=indices,
        refs=[all_refs[i] for i in indices],
        hyps=[all_hyps[i] for i in indices],
        all_refs=all_refs,
        all_hyps=all_hyps,
    )


def require_jiwer():
    """The jiwer module, or the error that names the extra installing it."""
    return require("jiwer", "eval", "needed to compute WER/CER")


def error_rates(
    refs: Sequence[str], hyps: Sequence[str], *, language: str | None = None, normalize: bool = True
) -> ErrorRates:
    """Corpus WER and CER with jiwer.process_words / jiwer.process_characters.

    Both sides go through ``normalize_text(..., language)`` unless ``normalize=False``. Utterances whose
    reference is empty (after normalization) are left out of both rates and counted in
    ``skipped_empty_refs`` (an empty reference has no length to divide by, and its insertions would
    otherwise be charged to other utterances' references). An empty hypothesis is scored: all its
    reference words are deletions. CER counts the spaces between words as characters, as jiwer does.
    Raises XlsrEdgeError when no utterance has a non-empty reference.
    """
    sc = prepare(refs, hyps, language, normalize)
    skipped = len(refs) - len(sc.indices)
    if not sc.indices:
        raise XlsrEdgeError(
            f"no reference transcripts to score ({skipped} utterances, all with empty text); "
            f"use a manifest with a text/sentence column to compute WER"
        )
    jw = require_jiwer()
    w = jw.process_words(sc.refs, sc.hyps)
    c = jw.process_characters(sc.refs, sc.hyps)
    ref_words = w.hits + w.substitutions + w.deletions
    ref_chars = c.hits + c.substitutions + c.deletions
    return ErrorRates(
        wer=(w.substitutions + w.deletions + w.insertions) / ref_words,
        cer=(c.substitutions + c.deletions + c.insertions) / ref_chars,
        substitutions=w.substitutions,
        deletions=w.deletions,
        insertions=w.insertions,
        hits=w.hits,
        ref_words=ref_words,
        char_substitutions=c.substitutions,
        char_deletions=c.deletions,
        char_insertions=c.insertions,
        char_hits=c.hits,
        ref_chars=ref_chars,
        utterances=len(sc.indices),
        skipped_empty_refs=skipped,
    )
