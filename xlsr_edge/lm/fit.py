"""Fitting text to what a CTC model can write, and the corpus normalization of `xlsr-edge lm build`.

`normalize_corpus` spells corpus lines the way the acoustic model was trained to spell them (the recipe's
``xlsr_edge.text.normalize_text``); `TextFitter` then maps or drops, word by word, what the model's alphabet
(`model_alphabet`) cannot write. `synth --sentences` fits its transcripts the same way.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from xlsr_edge.text import normalize_text


def model_alphabet(tokens: Sequence[str], blank_id: int, word_delimiter: str) -> set[str]:
    """The characters a CTC model can write: its single-character tokens except the blank and the word
    delimiter (multi-character tokens such as <unk>, <s> are never words of a corpus)."""
    return {
        token
        for index, token in enumerate(tokens)
        if len(token) == 1 and index != blank_id and token != word_delimiter and not token.isspace()
    }


def _example(items: list[str], word: str, limit: int = 5) -> None:
    if word not in items and len(items) < limit:
        items.append(word)


@dataclass
class CorpusFit:
    """What `TextFitter` changed: characters mapped (to a base letter, or removed: apostrophes) and words
    dropped because they hold a character the model cannot write (digits, foreign letters, symbols)."""

    mapped: Counter = field(default_factory=Counter)  # (char, replacement) -> occurrences ("" = removed)
    dropped: Counter = field(default_factory=Counter)  # char -> words dropped because of it
    dropped_words: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)  # char -> a few words it changed or dropped
    lines_dropped: int = 0  # lines left empty

    @property
    def changed(self) -> bool:
        return bool(self.mapped or self.dropped_words)

    def summary(self, writer: str = "the model") -> list[str]:
        """Human-readable lines: counts per mapped and per dropping character, with examples."""
        out = []
        if self.mapped:
            parts = []
            for (char, repl), n in self.mapped.most_common():
                what = "removed" if repl == "" else f"-> {repl!r}"
                examples = ", ".join(self.examples.get(char, [])[:3])
                parts.append(f"{char!r} {what} x{n}" + (f" ({examples})" if examples else ""))
            lines = sum(self.mapped.values())
            out.append(f"mapped {lines} characters {writer} cannot write: " + "; ".join(parts))
        if self.dropped_words:
            parts = []
            for char, n in self.dropped.most_common(12):
                examples = ", ".join(self.examples.get(char, [])[:3])
                parts.append(f"{char!r} x{n}" + (f" ({examples})" if examples else ""))
            out.append(
                f"dropped {self.dropped_words} words with characters {writer} cannot write: "
                + "; ".join(parts)
            )
        if self.lines_dropped:
            out.append(f"dropped {self.lines_dropped} lines left without words")
        return out


class TextFitter:
    """Fit normalized text to a model's alphabet, word by word: a character the model lacks is mapped when that
    keeps the word as the model would spell it (an apostrophe is removed, `ankara'dır` -> `ankaradır`; a letter
    with a diacritic the model lacks becomes its base letter, `â` -> `a`), otherwise the word is dropped (digits,
    letters of another alphabet, symbols: no spelling the model can write says how it is pronounced). A model
    whose alphabet has upper-case letters only gets upper-cased text."""

    APOSTROPHE = "'"

    def __init__(self, alphabet: Collection[str]) -> None:
        self.alphabet = frozenset(alphabet)
        letters = [c for c in self.alphabet if c.isalpha()]
        self.upper = bool(letters) and all(c.isupper() for c in letters)
        self.fit = CorpusFit()
        self._map: dict[str, str | None] = {}

    def _map_char(self, char: str) -> str | None:
        """The replacement of a character outside the alphabet ("" = removed), None = the word must go."""
        if char in self._map:
            return self._map[char]
        repl: str | None = None
        if char == self.APOSTROPHE or char in "\u2019\u2018\u02bc":
            repl = ""
        else:
            base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
            if self.upper:
                base = base.upper()
            if base and base != char and all(c in self.alphabet for c in base):
                repl = base
        self._map[char] = repl
        return repl

    def word(self, word: str) -> str | None:
        """The word spelled with the model's alphabet, or None when it cannot be (counted in `fit`)."""
        if self.upper:
            word = word.upper()
        out = []
        for char in word:
            if char in self.alphabet:
                out.append(char)
                continue
            repl = self._map_char(char)
            if repl is None:
                self.fit.dropped[char] += 1
                self.fit.dropped_words += 1
                _example(self.fit.examples.setdefault(char, []), word)
                return None
            out.append(repl)
        fitted = "".join(out)
        if fitted != word:
            for char in word:
                if char not in self.alphabet:
                    self.fit.mapped[(char, self._map_char(char) or "")] += 1
                    _example(self.fit.examples.setdefault(char, []), f"{word} -> {fitted}")
        return fitted or None

    def line(self, line: str) -> str:
        """A normalized line with every word fitted ("" when no word is left)."""
        words = [w for w in (self.word(word) for word in line.split()) if w]
        if not words and line.strip():
            self.fit.lines_dropped += 1
        return " ".join(words)


def normalize_corpus(
    lines: Iterable[str], language: str | None = None, normalize: bool = True
) -> Iterable[str]:
    """Corpus lines as the LM sees them: ``xlsr_edge.text.normalize_text`` (the recipe's normalization:
    lower-case with Turkish/Azerbaijani İ/I rules for ``language``, NFC, punctuation stripped), so the LM's
    words are spelled the way the acoustic model was trained to spell them; ``normalize=False`` keeps the text
    as it is (NFC and whitespace only). Empty lines are dropped."""
    for line in lines:
        text = (
            normalize_text(line, language)
            if normalize
            else " ".join(unicodedata.normalize("NFC", line).split())
        )
        if text:
            yield text
