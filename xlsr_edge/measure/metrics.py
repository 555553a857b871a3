"""Word and character error rates, entity micro-WER and confusion counts.

Corpus WER/CER (``error_rates``, ``ErrorRates``) live on the shared floor, ``xlsr_edge.scoring`` (the precision
gate scores with them too), and are re-exported here. Both sides are normalized with
``xlsr_edge.text.normalize_text`` (re-exported here). Alignments and edit counts come from jiwer (imported lazily;
``pip install 'xlsr-edge[eval]'``), never hand-rolled.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from xlsr_edge.scoring import ErrorRates, error_rates, prepare, require_jiwer  # noqa: F401  (re-exported)
from xlsr_edge.text import NORMALIZATION_DESCRIPTION, normalize_text  # noqa: F401  (scoring and its normalization)


def _counts(chunks) -> tuple[int, int, int, int]:
    """(hits, substitutions, deletions, insertions) of one utterance's jiwer alignment."""
    h = s = d = n = 0
    for c in chunks:
        if c.type == "equal":
            h += c.ref_end_idx - c.ref_start_idx
        elif c.type == "substitute":
            s += c.ref_end_idx - c.ref_start_idx
        elif c.type == "delete":
            d += c.ref_end_idx - c.ref_start_idx
        elif c.type == "insert":
            n += c.hyp_end_idx - c.hyp_start_idx
    return h, s, d, n


def per_utterance(
    refs: Sequence[str], hyps: Sequence[str], *, language: str | None = None, normalize: bool = True
) -> list[dict[str, Any]]:
    """One row per utterance (same order as the input), with the normalized texts that were scored.

    Keys: index, ref, hyp, wer, cer, hits, substitutions, deletions, insertions, word_errors, ref_words,
    char_errors, ref_chars, skipped. Rows for empty references have ``skipped=True`` and ``wer``/``cer``
    None (their word/char errors are still the hypothesis length, as insertions).
    """
    sc = prepare(refs, hyps, language, normalize)
    rows: list[dict[str, Any]] = []
    for i, (r, h) in enumerate(zip(sc.all_refs, sc.all_hyps, strict=True)):
        rows.append(
            {
                "index": i,
                "ref": r,
                "hyp": h,
                "wer": None,
                "cer": None,
                "hits": 0,
                "substitutions": 0,
                "deletions": 0,
                "insertions": len(h.split()),
                "word_errors": len(h.split()),
                "ref_words": 0,
                "char_errors": len(h.strip()),
                "ref_chars": 0,
                "skipped": True,
            }
        )
    if not sc.indices:
        return rows
    jw = require_jiwer()
    w = jw.process_words(sc.refs, sc.hyps)
    c = jw.process_characters(sc.refs, sc.hyps)
    for k, i in enumerate(sc.indices):
        hits, subs, dels, ins = _counts(w.alignments[k])
        chits, csubs, cdels, cins = _counts(c.alignments[k])
        n_words, n_chars = hits + subs + dels, chits + csubs + cdels
        rows[i].update(
            wer=(subs + dels + ins) / n_words,
            cer=(csubs + cdels + cins) / n_chars,
            hits=hits,
            substitutions=subs,
            deletions=dels,
            insertions=ins,
            word_errors=subs + dels + ins,
            ref_words=n_words,
            char_errors=csubs + cdels + cins,
            ref_chars=n_chars,
            skipped=False,
        )
    return rows


def _entity_positions(
    ref_words: list[str], entities: Sequence[str], language: str | None, normalize: bool
) -> set[int]:
    marked: set[int] = set()
    for e in entities:
        seq = (normalize_text(e, language) if normalize else e).split()
        k = len(seq)
        if not k:
            continue
        for j in range(len(ref_words) - k + 1):
            if ref_words[j : j + k] == seq:
                marked.update(range(j, j + k))
    return marked


def micro_wer(
    refs: Sequence[str],
    hyps: Sequence[str],
    entities_per_utt: Sequence[Sequence[str]],
    *,
    language: str | None = None,
    normalize: bool = True,
) -> float | None:
    """WER restricted to entity words (numbers, names): errors on entity words / entity-word count.

    Exactly: references, hypotheses and entity strings are normalized with ``normalize_text``. In each
    reference, every occurrence of an entity's word sequence (contiguous, whole words; an entity that
    does not occur in its reference is ignored) marks those word positions as entity words; overlapping
    occurrences are counted once per position. The reference and hypothesis words are aligned with
    jiwer.process_words; a marked position that falls in a "substitute" or "delete" chunk is one error.
    Insertions are never counted (not even next to an entity), and nothing outside marked positions is.
    Denominator: the number of marked positions over all utterances. Utterances with an empty reference
    are skipped. Returns None when no entity word occurs in any reference.
    """
    if len(entities_per_utt) != len(refs):
        raise ValueError(f"{len(refs)} references but {len(entities_per_utt)} entity lists")
    sc = prepare(refs, hyps, language, normalize)
    marks = []
    for k, i in enumerate(sc.indices):
        marks.append(_entity_positions(sc.refs[k].split(), entities_per_utt[i], language, normalize))
    total = sum(len(m) for m in marks)
    if total == 0:
        return None
    w = require_jiwer().process_words(sc.refs, sc.hyps)
    errors = 0
    for k, marked in enumerate(marks):
        if not marked:
            continue
        for chunk in w.alignments[k]:
            if chunk.type in ("substitute", "delete"):
                errors += sum(1 for p in range(chunk.ref_start_idx, chunk.ref_end_idx) if p in marked)
    return errors / total


def char_confusions(
    refs: Sequence[str],
    hyps: Sequence[str],
    top: int | None = 20,
    *,
    language: str | None = None,
    normalize: bool = True,
) -> list[tuple[str, str, int]]:
    """Most frequent character errors from jiwer's character alignment, as (ref_char, hyp_char, count).

    Substitutions are (r, h, n); deletions (r, "", n); insertions ("", h, n). A space is " ". Sorted by
    count (descending), then by the characters; ``top=None`` returns all. Empty references are skipped.
    """
    sc = prepare(refs, hyps, language, normalize)
    if not sc.indices:
        return []
    c = require_jiwer().process_characters(sc.refs, sc.hyps)
    counts: Counter[tuple[str, str]] = Counter()
    for ref_chars, hyp_chars, chunks in zip(c.references, c.hypotheses, c.alignments, strict=True):
        for ch in chunks:
            if ch.type == "substitute":
                for r, h in zip(
                    ref_chars[ch.ref_start_idx : ch.ref_end_idx],
                    hyp_chars[ch.hyp_start_idx : ch.hyp_end_idx],
                    strict=True,
                ):
                    counts[(r, h)] += 1
            elif ch.type == "delete":
                for r in ref_chars[ch.ref_start_idx : ch.ref_end_idx]:
                    counts[(r, "")] += 1
            elif ch.type == "insert":
                for h in hyp_chars[ch.hyp_start_idx : ch.hyp_end_idx]:
                    counts[("", h)] += 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if top is not None:
        ranked = ranked[:top]
    return [(r, h, n) for (r, h), n in ranked]
