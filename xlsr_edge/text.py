"""The one text normalization of the project: training transcripts, LM corpora, references and hypotheses all
go through ``normalize_text``, so a WER never counts casing or punctuation as errors. Standard library only."""

from __future__ import annotations

import unicodedata

# Languages whose dotted/dotless i pair lower-cases differently: İ -> i and I -> ı.
TURKIC_LANGUAGES = frozenset({"tr", "az", "tur", "aze", "azj", "azb"})
# Characters treated as an apostrophe; a word-internal one is kept and written as U+0027.
APOSTROPHES = frozenset({"'", "\u2019", "\u2018", "\u02bc"})  # ' ’ ‘ ʼ

NORMALIZATION_DESCRIPTION = (
    "Unicode NFC; lower-case with str.lower() (Turkish/Azerbaijani: İ->i, I->ı, and a stray 'i'+U+0307 "
    "-> i), then NFC again; apostrophes (' ’ ‘ ʼ) between two letters/digits kept as ', every other "
    "Unicode punctuation character (categories P*, which include % & @ # / *) replaced by a space; "
    "symbols (S*: $ € + =) and digits kept; "
    "whitespace collapsed to single spaces and trimmed. References that are empty after normalization "
    "are skipped and counted; CER counts the spaces between words as characters (as jiwer does)."
)


def _is_turkic(language: str | None) -> bool:
    if not language:
        return False
    return language.strip().lower().replace("_", "-").split("-")[0] in TURKIC_LANGUAGES


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or unicodedata.category(ch).startswith("M")


def normalize_text(s: str, language: str | None = None) -> str:
    """Normalize a transcript for training and for scoring (idempotent).

    1. Unicode NFC, so "e" + U+0301 and "é" are the same text.
    2. Lower-case. ``str.lower()`` rather than ``casefold()`` (casefold rewrites letters, e.g. ß -> ss).
       ``str.lower()`` is locale-independent, which is wrong for Turkish and Azerbaijani: it maps "I" to
       "i" (should be dotless "ı") and "İ" to "i" + U+0307 COMBINING DOT ABOVE (should be plain "i").
       With ``language`` "tr"/"az" (also "tr-TR", "tur", "aze") we map İ->i and I->ı first and also
       repair a "i" + U+0307 left by an earlier naive lower-casing. Other languages get plain
       ``str.lower()``, so "İ" becomes "i" + U+0307 there (consistently for references, hypotheses and
       training text). Then NFC again.
    3. Punctuation: every character of Unicode category P* becomes a space ("well-known" -> "well known",
       "3.5" -> "3 5"), except an apostrophe (' ’ ‘ ʼ) between two letters/digits, which is kept and
       written as ASCII ' ("Türkiye'nin", "don't", "м'ясо" stay one word; quotes around words go).
       Note that Unicode files % & @ # * / under punctuation (Po), so they go too; symbols (category S*:
       $ € + = < > etc.) and digits are kept.
    4. Whitespace (any Unicode space) collapsed to single spaces, trimmed.
    """
    s = unicodedata.normalize("NFC", s)
    turkic = _is_turkic(language)
    if turkic:
        s = s.replace("İ", "i").replace("I", "ı")
    s = s.lower()
    if turkic:
        s = s.replace("i\u0307", "i")
    s = unicodedata.normalize("NFC", s)
    out = []
    last = len(s) - 1
    for i, ch in enumerate(s):
        if ch in APOSTROPHES:
            inside = 0 < i < last and _is_word_char(s[i - 1]) and _is_word_char(s[i + 1])
            out.append("'" if inside else " ")
        elif unicodedata.category(ch).startswith("P"):
            out.append(" ")
        else:
            out.append(ch)
    return " ".join("".join(out).split())
