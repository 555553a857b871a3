"""CTC decoders: logits in, text and word timestamps out.

Importing this package needs only numpy: pyctcdecode and kenlm are imported when a BeamDecoder is built.
"""

from __future__ import annotations

from .base import Decoded, Decoder, Vocabulary, Word
from .beam import BeamDecoder
from .greedy import GreedyDecoder
from .options import BeamOptions, GreedyOptions


def make_decoder(vocab: Vocabulary, options: GreedyOptions | BeamOptions, pool=None) -> Decoder:
    """GreedyOptions -> GreedyDecoder, BeamOptions -> BeamDecoder (pool: optional caller-owned process pool)."""
    if isinstance(options, GreedyOptions):
        return GreedyDecoder(vocab)
    if isinstance(options, BeamOptions):
        return BeamDecoder(vocab, options, pool=pool)
    raise TypeError(f"options must be GreedyOptions or BeamOptions, got {type(options).__name__}")


__all__ = [
    "BeamDecoder",
    "BeamOptions",
    "Decoded",
    "Decoder",
    "GreedyDecoder",
    "GreedyOptions",
    "Vocabulary",
    "Word",
    "make_decoder",
]
