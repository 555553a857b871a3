"""CTC prefix beam search with optional KenLM fusion, through pyctcdecode 0.5.0 (imported lazily).

What is passed to pyctcdecode is what calling it directly the documented way gets:
- labels: the vocabulary in id order with the blank -> "" and the word delimiter -> " " (pyctcdecode itself turns
  <unk>/[UNK] into "⁇" and keeps other multi-character tokens such as <s>, </s> as literal text, like HF's greedy
  decoding does);
- log-probabilities [frames, vocab] of the valid frames (its documented input; raw logits are converted here with a
  stable log_softmax in float32/float64, so fp16 logits are not re-normalized in fp16);
- decode_beams(..., prune_history=True), i.e. exactly what its decode()/decode_batch() run, keeping the top beam's
  word frames and combined (acoustic + LM + hotword) score.

Multiprocessing: pyctcdecode keeps its LM in a class-level registry that only forked children created *after* the
decoder inherit. To work with any pool, tasks go through a module-level function that looks the decoder up in a
per-process cache and, in a process that lacks it (spawned pool, or a pool forked before this decoder existed),
rebuilds it once from a small picklable spec.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import uuid
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import XlsrEdgeError, require
from .base import Decoded, Decoder, Vocabulary, Word
from .greedy import check_batch
from .lm import check_lm_file, read_arpa_unigrams, read_unigrams, unigrams_path_for
from .options import BeamOptions

logger = logging.getLogger(__name__)
# "(lm/model.cc:100 in void lm::...::InitializeFromARPA(...) threw FormatLoadException because `...`. "
_KENLM_LOCATION = re.compile(r"\(\S+:\d+ in .*? threw \w+(?: because `[^']*')?\.?\s*")


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log_softmax (float16/ints are computed in float32; float64 stays float64)."""
    x = np.asarray(x)
    if x.dtype != np.float64:
        x = x.astype(np.float32, copy=False)
    peak = np.max(x, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0)
    shifted = x - peak
    with np.errstate(divide="ignore"):
        return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def pyctcdecode_labels(vocab: Vocabulary) -> list[str]:
    """The label list pyctcdecode expects: vocabulary in id order, blank -> "", word delimiter -> " "."""
    labels = []
    for index, token in enumerate(vocab.tokens):
        if index == vocab.blank_id:
            labels.append("")
        elif token == vocab.word_delimiter:
            labels.append(" ")
        else:
            labels.append(token)
    return labels


@contextmanager
def _quiet_multichar_warning():
    """pyctcdecode warns about every multi-character label (<s>, </s> in every XLS-R vocabulary); we checked the
    labels ourselves, so drop just that message while building."""

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Found entries of length > 1 in alphabet")

    alphabet_logger = logging.getLogger("pyctcdecode.alphabet")
    alphabet_logger.addFilter(keep)
    try:
        yield
    finally:
        alphabet_logger.removeFilter(keep)


def _check_labels(labels: list[str], blank_id: int) -> None:
    require("pyctcdecode", "lm")
    from pyctcdecode.alphabet import Alphabet

    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise XlsrEdgeError(
            f"the vocabulary maps several tokens to the same decoder label {duplicates!r} (after blank -> '' and "
            "word delimiter -> ' '); the beam decoder needs distinct labels"
        )
    try:
        with _quiet_multichar_warning():
            alphabet = Alphabet.build_alphabet(labels)
    except ValueError as exc:
        raise XlsrEdgeError(f"pyctcdecode cannot use this vocabulary: {exc}") from exc
    normalized = alphabet.labels
    if alphabet.is_bpe or len(normalized) != len(labels) or normalized.count("") != 1 or normalized[blank_id]:
        raise XlsrEdgeError(
            "pyctcdecode would reinterpret this vocabulary (BPE-style tokens, or a second blank-like token such as "
            f"<pad>/[PAD] that is not the blank): labels {labels!r} became {normalized!r}"
        )


@dataclass(frozen=True)
class _Spec:
    """Everything needed to rebuild the pyctcdecode decoder in another process (small and picklable)."""

    labels: tuple[str, ...]
    lm_path: str | None
    unigrams_path: str | None  # a one-word-per-line file; None = pyctcdecode's own handling
    alpha: float
    beta: float


def _build_ctc_decoder(spec: _Spec) -> Any:
    pyctcdecode = require("pyctcdecode", "lm")
    unigrams = None
    if spec.lm_path is not None:
        require("kenlm", "lm", "the KenLM Python module loads the language model")
        if spec.unigrams_path is not None:
            unigrams = read_unigrams(spec.unigrams_path)
        elif spec.lm_path.lower().endswith((".arpa", ".arpa.gz")) and not spec.lm_path.endswith(".arpa"):
            unigrams = read_arpa_unigrams(spec.lm_path)  # pyctcdecode reads only "*.arpa" (lower-case) itself
    try:
        with _quiet_multichar_warning():
            return pyctcdecode.build_ctcdecoder(
                list(spec.labels),
                kenlm_model_path=spec.lm_path,
                unigrams=unigrams,
                alpha=spec.alpha,
                beta=spec.beta,
            )
    except UnicodeDecodeError as exc:  # pyctcdecode reads a plain .arpa's words itself
        raise XlsrEdgeError(f"language model {spec.lm_path} is not UTF-8 text ({exc.reason})") from exc
    except (OSError, RuntimeError, ValueError, EOFError) as exc:
        detail = " ".join(str(exc).split())  # KenLM's messages span lines; the CLI prints one
        detail = _KENLM_LOCATION.sub("(", detail)  # keep its reason, not the C++ function that threw
        raise XlsrEdgeError(f"could not load the language model {spec.lm_path}: {detail}") from exc


# Per-process cache: decoder key -> pyctcdecode decoder. Fork children inherit the parent's entries.
_DECODERS: dict[str, Any] = {}


def _decoder_for(key: str, spec: _Spec) -> Any:
    decoder = _DECODERS.get(key)
    if decoder is None:
        decoder = _DECODERS[key] = _build_ctc_decoder(spec)
    return decoder


def _decode_task(task: tuple[str, _Spec, np.ndarray, dict]) -> tuple[str, list, float]:
    """Top beam of one utterance: (text, [(word, (start_frame, end_frame))], combined score). Pool-safe."""
    key, spec, logprobs, kwargs = task
    beams = _decoder_for(key, spec).decode_beams(logprobs, prune_history=True, **kwargs)
    text, _lm_state, word_frames, _logit_score, combined_score = beams[0]
    return text, word_frames, float(combined_score)


def _release(key: str, pool) -> None:
    """Free one BeamDecoder's resources (runs once: from close(), garbage collection or interpreter exit)."""
    if pool is not None:
        pool.terminate()
        pool.join()
    decoder = _DECODERS.pop(key, None)
    if decoder is not None:
        decoder.cleanup()  # drops the LM from pyctcdecode's class-level registry


class BeamDecoder(Decoder):
    """pyctcdecode beam search over a Vocabulary, optionally with a KenLM model, hotwords and a process pool.

    pool: a caller-owned multiprocessing pool (fork or spawn; left open by close()). Otherwise, with
    options.num_workers > 1, the decoder forks its own pool and closes it in close().
    Text uses pyctcdecode's conventions: whitespace normalized, <unk> shown as "⁇".
    """

    name = "beam"

    def __init__(self, vocab: Vocabulary, options: BeamOptions | None = None, pool=None) -> None:
        options = BeamOptions() if options is None else options
        if not isinstance(options, BeamOptions):
            raise TypeError(f"options must be BeamOptions, got {type(options).__name__}")
        self.vocab = vocab
        self.options = options
        self.labels = pyctcdecode_labels(vocab)
        _check_labels(self.labels, vocab.blank_id)

        lm_path = unigrams = None
        if options.lm_path is not None:
            lm_path = os.path.abspath(options.lm_path)
            if not os.path.isfile(lm_path):
                raise XlsrEdgeError(f"language model not found: {options.lm_path}")
            check_lm_file(lm_path)
            if options.unigrams_path is not None:
                unigrams = os.path.abspath(options.unigrams_path)
                if not os.path.isfile(unigrams):
                    raise XlsrEdgeError(f"unigrams file not found: {options.unigrams_path}")
            elif unigrams_path_for(lm_path).is_file():
                unigrams = str(unigrams_path_for(lm_path))
            elif not lm_path.lower().endswith((".arpa", ".arpa.gz")):
                logger.warning(
                    "no unigrams for the binary LM %s (expected %s): beam search with an LM works better with "
                    "them; pass unigrams_path",
                    lm_path,
                    unigrams_path_for(lm_path),
                )
        self.lm_path = lm_path
        self.unigrams_path = unigrams  # the unigram file in use (None: none, or read from the .arpa)
        self._spec = _Spec(tuple(self.labels), lm_path, unigrams, options.alpha, options.beta)
        self._key = uuid.uuid4().hex
        self._decoder = _decoder_for(self._key, self._spec)
        self._kwargs = {
            "beam_width": options.beam_width,
            "beam_prune_logp": options.beam_prune_logp,
            "token_min_logp": options.token_min_logp,
            "hotwords": list(options.hotwords) or None,
            "hotword_weight": options.hotword_weight,
        }
        self._pool = pool
        own_pool = None
        if pool is None and options.num_workers > 1:
            # Forked after the decoder is registered above, so workers inherit it (and its LM) without reloading.
            try:
                context = multiprocessing.get_context("fork")
            except ValueError as exc:
                _release(self._key, None)
                raise XlsrEdgeError("num_workers > 1 needs the 'fork' start method (Linux/macOS)") from exc
            self._pool = own_pool = context.Pool(options.num_workers)
        self._finalizer = weakref.finalize(self, _release, self._key, own_pool)

    def decode_batch(self, logits: np.ndarray, lengths: np.ndarray | None = None) -> list[Decoded]:
        if self._decoder is None:
            raise XlsrEdgeError("this BeamDecoder is closed")
        logits, lengths = check_batch(logits, lengths, len(self.labels))
        tasks, slots = [], []
        for i, length in enumerate(lengths.tolist()):
            if length > 0:  # pyctcdecode cannot take zero frames
                tasks.append((self._key, self._spec, log_softmax(logits[i, :length]), self._kwargs))
                slots.append(i)
        if self._pool is not None and len(tasks) > 1:
            outputs = self._pool.map(_decode_task, tasks)
        else:
            outputs = [_decode_task(task) for task in tasks]
        results = [Decoded("") for _ in range(len(lengths))]  # zero frames: nothing to search
        for i, (text, word_frames, score) in zip(slots, outputs):
            results[i] = Decoded(text, self._words(word_frames, int(lengths[i])), score)
        return results

    def _words(self, word_frames, length: int) -> tuple[Word, ...]:
        seconds = self.vocab.frame_seconds
        words = []
        for word, (start, end) in word_frames:
            start = min(max(int(start), 0), length)  # pyctcdecode may leave -1 at the edges
            end = min(max(int(end), start), length)
            words.append(Word(word, start * seconds, end * seconds))
        return tuple(words)

    def close(self) -> None:
        """Close the decoder's own pool (a caller's pool stays open) and free the LM. Idempotent."""
        self._finalizer()
        self._pool = None
        self._decoder = None
