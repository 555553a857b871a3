"""Greedy (best path) CTC decoding in numpy: text identical to Wav2Vec2CTCTokenizer.batch_decode(argmax ids)."""

from __future__ import annotations

import numpy as np

from .base import Decoded, Decoder, Vocabulary, Word


def check_batch(
    logits: np.ndarray, lengths: np.ndarray | None, vocab_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validate decoder input: logits [batch, frames, vocab] and lengths [batch] in 0..frames (None = all)."""
    logits = np.asarray(logits)
    if logits.ndim != 3:
        raise ValueError(f"logits must be [batch, frames, vocab], got shape {logits.shape}")
    batch, frames, width = logits.shape
    if width != vocab_size:
        raise ValueError(
            f"the vocabulary has {vocab_size} tokens but the logits have {width} classes per frame; "
            "logits and vocabulary must come from the same model"
        )
    if lengths is None:
        return logits, np.full(batch, frames, dtype=np.int64)
    lengths = np.asarray(lengths)
    if lengths.shape != (batch,) or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"lengths must be {batch} integers (one per batch item), got {lengths!r}")
    if lengths.size and (lengths.min() < 0 or lengths.max() > frames):
        raise ValueError(f"lengths must lie in 0..{frames} (the number of frames), got {lengths.tolist()}")
    return logits, lengths.astype(np.int64)


class GreedyDecoder(Decoder):
    """Argmax per frame, collapse repeats, drop the blank, word delimiter -> space.

    Text follows transformers' Wav2Vec2CTCTokenizer.decode (defaults): tokens are concatenated without separators,
    the delimiter becomes " ", consecutive delimiters are NOT collapsed ("a||b" -> "a  b"), the result is stripped,
    and special tokens such as <unk>, <s>, </s> are emitted literally.
    Word timestamps: [first frame of the word's first token, last frame of its last token + 1) x frame_seconds.
    """

    name = "greedy"

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        self._pieces = tuple(" " if tok == vocab.word_delimiter else tok for tok in vocab.tokens)
        self._is_space = tuple(piece == " " for piece in self._pieces)
        self._silent = np.zeros(len(vocab.tokens), dtype=bool)  # the blank and spare (placeholder) columns
        self._silent[[vocab.blank_id, *vocab.spare_ids]] = True

    def decode_batch(self, logits: np.ndarray, lengths: np.ndarray | None = None) -> list[Decoded]:
        logits, lengths = check_batch(logits, lengths, len(self.vocab.tokens))
        batch, frames, _ = logits.shape
        if frames == 0:
            return [Decoded("") for _ in range(batch)]
        ids = logits.argmax(axis=-1)  # [batch, frames]
        # A run of equal ids starts where the id differs from the previous frame (frame 0 always starts one).
        run_start = np.ones(ids.shape, dtype=bool)
        np.not_equal(ids[:, 1:], ids[:, :-1], out=run_start[:, 1:])
        run_start &= np.arange(frames)[None, :] < lengths[:, None]
        rows, starts = np.nonzero(run_start)  # row-major: sorted by row, then frame
        bounds = np.searchsorted(rows, np.arange(batch + 1))
        silent = self._silent
        results = []
        for b in range(batch):
            row_starts = starts[bounds[b] : bounds[b + 1]]
            row_ends = np.append(row_starts[1:], lengths[b])  # a run ends where the next starts (exclusive)
            row_ids = ids[b, row_starts]
            keep = ~silent[row_ids]
            results.append(self._assemble(row_ids[keep], row_starts[keep], row_ends[keep]))
        return results

    def _assemble(self, ids: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> Decoded:
        """One utterance from its emitted tokens (ids) and their frame spans [start, end)."""
        pieces, is_space, seconds = self._pieces, self._is_space, self.vocab.frame_seconds
        ids_list = ids.tolist()
        text = "".join([pieces[i] for i in ids_list]).strip()
        words: list[Word] = []
        chars: list[str] = []
        word_start = word_end = 0
        for i, start, end in zip(ids_list, starts.tolist(), ends.tolist()):
            if is_space[i]:
                if chars:
                    words.append(Word("".join(chars), word_start * seconds, word_end * seconds))
                    chars = []
                continue
            if not chars:
                word_start = start
            chars.append(pieces[i])
            word_end = end
        if chars:
            words.append(Word("".join(chars), word_start * seconds, word_end * seconds))
        return Decoded(text=text, words=tuple(words))
