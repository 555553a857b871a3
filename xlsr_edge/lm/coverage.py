"""How much of some text an LM's vocabulary covers (`lm build --dev`, `lm tune`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class OovReport:
    """How much of some text an LM's vocabulary covers."""

    words: int  # running words of the text
    oov: int  # of them not in the LM's vocabulary
    distinct_oov: tuple[str, ...]  # most frequent first

    @property
    def rate(self) -> float:
        return self.oov / self.words if self.words else 0.0

    def describe(self, what: str) -> str:
        examples = ", ".join(self.distinct_oov[:8])
        return (
            f"out-of-vocabulary rate on {what}: {100 * self.rate:.1f} % ({self.oov} of {self.words} words; "
            f"{len(self.distinct_oov)} distinct" + (f": {examples}" if examples else "") + ")"
        )


def oov_rate(vocabulary: Collection[str], texts: Iterable[str]) -> OovReport:
    """Share of the words of `texts` (already normalized, split on whitespace) that are not in `vocabulary`."""
    counts: Counter = Counter()
    total = 0
    for text in texts:
        for word in text.split():
            total += 1
            if word not in vocabulary:
                counts[word] += 1
    return OovReport(total, sum(counts.values()), tuple(w for w, _ in counts.most_common()))
