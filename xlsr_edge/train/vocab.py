"""CTC character vocabulary: build it from transcripts, read a fixed one, check the alphabet, encode text."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from xlsr_edge.errors import XlsrEdgeError

PAD, BOS, EOS, UNK, DELIM = "<pad>", "<s>", "</s>", "<unk>", "|"
# Same specials, same order as xlsr_edge.export.tiny: <pad> (id 0) is the CTC blank, | the word delimiter.
SPECIALS = (PAD, BOS, EOS, UNK, DELIM)


@dataclass(frozen=True)
class CtcVocab:
    tokens: tuple[str, ...]

    def __post_init__(self) -> None:
        missing = [t for t in (PAD, UNK, DELIM) if t not in self.tokens]
        if missing:
            raise XlsrEdgeError(
                f"the vocabulary lacks the special tokens {missing}; CTC needs <pad>, <unk> and |"
            )
        if len(set(self.tokens)) != len(self.tokens):
            dup = [t for t, n in Counter(self.tokens).items() if n > 1]
            raise XlsrEdgeError(f"the vocabulary has duplicate tokens {dup}")

    @property
    def ids(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    @property
    def pad_id(self) -> int:
        return self.tokens.index(PAD)

    @property
    def unk_id(self) -> int:
        return self.tokens.index(UNK)

    @property
    def characters(self) -> set[str]:
        """Characters a transcript may contain (space is spelled by the word delimiter)."""
        return {t for t in self.tokens if len(t) == 1 and t != DELIM} | {" "}

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Normalized text -> ids; a space becomes |, an unknown character <unk> (check_alphabet runs first)."""
        ids = self.ids
        unk = self.unk_id
        return [ids[DELIM] if ch == " " else ids.get(ch, unk) for ch in text]

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(self.ids, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        return path


def build_vocab(texts: Iterable[str]) -> CtcVocab:
    """Specials first, then every character of the (normalized) transcripts in sorted order."""
    chars = sorted({ch for t in texts for ch in t if ch != " "} - set(SPECIALS))
    return CtcVocab(SPECIALS + tuple(chars))


def read_vocab(path: str | Path) -> CtcVocab:
    """A vocab.json (token -> id), or a checkpoint folder that holds one."""
    p = Path(path)
    if p.is_dir():
        p = p / "vocab.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise XlsrEdgeError(f"cannot read the vocabulary {p}: {exc}") from exc
    if not isinstance(data, Mapping) or not all(isinstance(v, int) for v in data.values()):
        raise XlsrEdgeError(f"{p} must be a JSON object mapping tokens to integer ids")
    by_id = {i: t for t, i in data.items()}
    if sorted(by_id) != list(range(len(data))):
        raise XlsrEdgeError(f"{p}: token ids must be 0..{len(data) - 1} without gaps or repeats")
    return CtcVocab(tuple(by_id[i] for i in range(len(data))))


def unknown_characters(texts: Iterable[str], vocab: CtcVocab) -> Counter:
    known = vocab.characters
    return Counter(ch for t in texts for ch in t if ch not in known)


def check_alphabet(
    sources: Mapping[str, Iterable[str]], vocab: CtcVocab, map_unknown: bool = False
) -> Counter:
    """Count characters the vocabulary lacks, per source; stop with the list unless map_unknown.

    Returns the counts over all sources (empty when every character is known). Nothing is dropped silently:
    either the run stops, or (map_unknown) the characters are trained as <unk> and the counts are reported.
    """
    total: Counter = Counter()
    parts = []
    for name, texts in sources.items():
        c = unknown_characters(texts, vocab)
        if c:
            total += c
            listed = ", ".join(f"{ch!r} (U+{ord(ch):04X}) x{n}" for ch, n in c.most_common())
            parts.append(f"{name}: {listed}")
    if total and not map_unknown:
        raise XlsrEdgeError(
            "characters missing from the vocabulary: "
            + "; ".join(parts)
            + ". Fix the transcripts, use a vocabulary that has them (--vocab), or pass --map-unknown to "
            "train them as <unk>"
        )
    return total
