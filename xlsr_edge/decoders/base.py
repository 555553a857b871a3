"""The decoder interface: CTC logits in, text and word timestamps out. numpy only."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger("xlsr_edge.decoders")


def warn(message: str) -> None:
    """One prefixed warning line (`warning: ...`) through this package's logger: what a user sees on stderr
    (the CLI's handler, or Python's bare message when logging is not configured)."""
    logger.warning("warning: %s", message)


@dataclass(frozen=True)
class Vocabulary:
    """Tokens in id order plus what CTC decoding needs to know about them."""

    tokens: tuple[str, ...]
    blank_id: int
    word_delimiter: str = "|"
    frame_seconds: float = 0.02  # frame stride in samples / sample rate
    # placeholder entries for head columns the tokenizer has no token for: decoded like the blank, never text
    spare_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.blank_id < len(self.tokens):
            raise ValueError(f"blank_id {self.blank_id} outside vocabulary of {len(self.tokens)} tokens")
        if self.frame_seconds <= 0:
            raise ValueError("frame_seconds must be positive")

    @classmethod
    def from_model_info(cls, info) -> Vocabulary:  # info: xlsr_edge.bundle.ModelInfo
        return cls(
            tokens=tuple(info.vocab),
            blank_id=info.blank_id,
            word_delimiter=info.word_delimiter,
            frame_seconds=info.frame_stride_samples / info.sample_rate,
            spare_ids=tuple(getattr(info, "spare_ids", ()) or ()),
        )


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds
    end: float  # seconds


@dataclass(frozen=True)
class Decoded:
    text: str
    words: tuple[Word, ...] = ()
    score: float | None = None


class Decoder(ABC):
    """Strategy interface: greedy and beam decoders are small classes behind it."""

    name: str = "decoder"

    @abstractmethod
    def decode_batch(self, logits: np.ndarray, lengths: np.ndarray | None = None) -> list[Decoded]:
        """logits: float [batch, frames, vocab]; lengths: valid frames per item (None = all)."""

    def decode(self, logits: np.ndarray) -> Decoded:
        """One utterance: logits [frames, vocab]."""
        return self.decode_batch(logits[None], np.array([logits.shape[0]]))[0]

    def close(self) -> None:
        """Release pools or LM handles; decoders are context managers."""

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
