"""CTC prefix beam search with optional KenLM fusion, through pyctcdecode 0.5.0 (imported lazily).

What is passed to pyctcdecode is what calling it directly the documented way gets:
- labels: the vocabulary in id order with the blank -> "" and the word delimiter -> " " (pyctcdecode itself turns
  <unk>/[UNK] into "⁇" and keeps other multi-character tokens such as <s>, </s> as literal text, like HF's greedy
  decoding does);
- log-probabilities [frames, vocab] of the valid frames (its documented input; raw logits are converted here with a
  stable log_softmax in float32/float64, so fp16 logits are not re-normalized in fp16);
- decode_beams(..., prune_history=True), i.e. exactly what its decode()/decode_batch() run, keeping the top beam's
  word frames and combined (acoustic + LM + hotword) score;
- alpha, beta and unk_score_offset from resolve_weights: the options' values, else the LM's tuned weights
  (`xlsr-edge lm tune`) that the caller put into `BeamOptions.tuned`, else pyctcdecode's defaults. `set_weights` changes them without reloading
  the LM (what `lm tune` does for every setting it tries).

pyctcdecode's own log messages (unprefixed, some on every run: "Only 179 unigrams passed as vocabulary. Is this
small or artificial data?") are caught while it builds; the ones that matter come out as our own `warning: ...`
lines. Decoding with an LM whose vocabulary covers few of the words heard (as read by greedy decoding) gives one
warning per decoder that names `lm tune`, unless the weights come from a tuned sidecar.

Multiprocessing: pyctcdecode keeps its LM in a class-level registry that only forked children created *after* the
decoder inherit. To work with any pool, tasks go through a module-level function that looks the decoder up in a
per-process cache and, in a process that lacks it (spawned pool, or a pool forked before this decoder existed),
rebuilds it once from a small picklable spec.
"""

from __future__ import annotations

import dataclasses
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
from .base import Decoded, Decoder, Vocabulary, Word, warn
from .greedy import GreedyDecoder, check_batch
from .lm_files import check_lm_file, read_arpa_unigrams, read_unigrams, unigrams_path_for
from .options import BeamOptions, resolve_weights

# The decode-time coverage check: after this many words heard (greedy reading), warn once when fewer than this
# share of them are words of the LM (or two of its words run together: greedy decoding misses word boundaries).
# Measured on the demo model: an LM of unrelated text covers 15 %, LMs that help 52-84 %.
COVERAGE_MIN_WORDS = 20
COVERAGE_WARN_BELOW = 0.4
_COVERAGE_WARNED: set[str] = set()  # LM paths this process has warned about (one line per LM)
KENLM_SPECIAL_WORDS = frozenset({"<s>", "</s>", "<unk>"})
_SPELLING_WARNED: set[str] = set()
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


_PYCTCDECODE_LOGGERS = ("pyctcdecode.alphabet", "pyctcdecode.decoder", "pyctcdecode.language_model")
# pyctcdecode messages said better elsewhere (ours) or not worth saying: message prefix -> None (dropped) or ours.
_PYCTCDECODE_MESSAGES = {
    # <s>, </s> in every XLS-R vocabulary; _check_labels checks the labels itself
    "Found entries of length > 1 in alphabet": None,
    # on every run with a small LM; the decode-time coverage warning says what matters
    "Only %s unigrams passed as vocabulary": None,
    # BeamDecoder warns itself, naming the file it looked for
    "Unigrams not provided and cannot be automatically determined": None,
    # BeamDecoder counts the LM's words the model cannot write and names `lm build --bundle`
    "Unigrams and labels don't seem to agree": None,
    "Only %s%% of unigrams in vocabulary found in kenlm model": (
        "only {0} % of the words in the unigram list are in the language model {lm}: the list belongs to "
        "another LM; rebuild both with `xlsr-edge lm build`"
    ),
    "No known unigrams provided": (
        "the unigram list of {lm} is empty: beam search cannot score partial words; rebuild it with "
        "`xlsr-edge lm build`"
    ),
}


@contextmanager
def _pyctcdecode_logs(lm_path: str | None = None):
    """Catch pyctcdecode's log records while it builds (they would print unprefixed, some on every run) and
    say the ones that matter as our own prefixed warnings afterwards."""
    caught: list[logging.LogRecord] = []

    def catch(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            caught.append(record)
        return False  # INFO and below are dropped too: pyctcdecode's chatter, not ours

    loggers = [logging.getLogger(name) for name in _PYCTCDECODE_LOGGERS]
    for lg in loggers:
        lg.addFilter(catch)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(catch)
    lm = os.path.basename(lm_path) if lm_path else "?"
    for record in caught:
        msg = str(record.msg)
        known = next((key for key in _PYCTCDECODE_MESSAGES if msg.startswith(key)), None)
        if known is None:
            warn("pyctcdecode: " + " ".join(record.getMessage().split()))
        elif _PYCTCDECODE_MESSAGES[known] is not None:
            warn(_PYCTCDECODE_MESSAGES[known].format(*record.args, lm=lm))


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
        with _pyctcdecode_logs():
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
    unk_score_offset: float

    @property
    def weights(self) -> tuple[float, float, float]:
        return (self.alpha, self.beta, self.unk_score_offset)


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
        with _pyctcdecode_logs(spec.lm_path):
            return pyctcdecode.build_ctcdecoder(
                list(spec.labels),
                kenlm_model_path=spec.lm_path,
                unigrams=unigrams,
                alpha=spec.alpha,
                beta=spec.beta,
                unk_score_offset=spec.unk_score_offset,
            )
    except UnicodeDecodeError as exc:  # pyctcdecode reads a plain .arpa's words itself
        raise XlsrEdgeError(f"language model {spec.lm_path} is not UTF-8 text ({exc.reason})") from exc
    except (OSError, RuntimeError, ValueError, EOFError) as exc:
        detail = " ".join(str(exc).split())  # KenLM's messages span lines; the CLI prints one
        detail = _KENLM_LOCATION.sub("(", detail)  # keep its reason, not the C++ function that threw
        raise XlsrEdgeError(f"could not load the language model {spec.lm_path}: {detail}") from exc


# Per-process cache: decoder key -> pyctcdecode decoder, and the weights it decodes with. Fork children inherit
# the parent's entries.
_DECODERS: dict[str, Any] = {}
_WEIGHTS: dict[str, tuple[float, float, float]] = {}


def _decoder_for(key: str, spec: _Spec) -> Any:
    decoder = _DECODERS.get(key)
    if decoder is None:
        decoder = _DECODERS[key] = _build_ctc_decoder(spec)
        _WEIGHTS[key] = spec.weights
    elif _WEIGHTS.get(key) != spec.weights:  # set_weights() since: reset in place, the LM stays loaded
        alpha, beta, unk = spec.weights
        decoder.reset_params(alpha=alpha, beta=beta, unk_score_offset=unk)
        _WEIGHTS[key] = spec.weights
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
    _WEIGHTS.pop(key, None)
    if decoder is not None:
        decoder.cleanup()  # drops the LM from pyctcdecode's class-level registry


class BeamDecoder(Decoder):
    """pyctcdecode beam search over a Vocabulary, optionally with a KenLM model, hotwords and a process pool.

    pool: a caller-owned multiprocessing pool (fork or spawn; left open by close()). Otherwise, with
    options.num_workers > 1, the decoder forks its own pool and closes it in close().
    check_coverage: warn once when the LM knows few of the words heard (off for `lm tune`, which measures it).
    Text uses pyctcdecode's conventions: whitespace normalized, <unk> shown as "⁇".
    `weights` are the alpha/beta/unk_score_offset in use and where they came from (options, the tuned weights in
    `options.tuned` or pyctcdecode's defaults).
    """

    name = "beam"

    def __init__(
        self,
        vocab: Vocabulary,
        options: BeamOptions | None = None,
        pool=None,
        *,
        check_coverage: bool = True,
    ) -> None:
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
                warn(
                    f"no unigrams for the binary LM {lm_path} (expected {unigrams_path_for(lm_path)}): beam "
                    "search with an LM works better with them; pass unigrams_path"
                )
        self.lm_path = lm_path
        self.unigrams_path = unigrams  # the unigram file in use (None: none, or read from the .arpa)
        self.weights = resolve_weights(options)
        w = self.weights
        self._spec = _Spec(tuple(self.labels), lm_path, unigrams, w.alpha, w.beta, w.unk_score_offset)
        self._key = uuid.uuid4().hex
        self._decoder = _decoder_for(self._key, self._spec)
        self.lm_words: frozenset[str] = frozenset()  # the LM's vocabulary as pyctcdecode uses it
        if lm_path is not None:
            language_model = self._decoder._language_model
            self.lm_words = frozenset(getattr(language_model, "_unigram_set", None) or ())
            self._check_lm_spelling()
        # decode-time coverage check: words heard (greedy reading) and how many the LM knows
        self._coverage: list[int] | None = None
        if lm_path is not None and self.lm_words and check_coverage and not w.from_sidecar:
            self._coverage = [0, 0]
            self._greedy = GreedyDecoder(vocab)
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

    def set_weights(
        self, alpha: float | None = None, beta: float | None = None, unk_score_offset: float | None = None
    ) -> None:
        """Decode with other LM weights from now on (None keeps a weight) without reloading the LM; a pool's
        workers pick them up with their next task."""
        if self._decoder is None:
            raise XlsrEdgeError("this BeamDecoder is closed")
        changes = {
            k: v
            for k, v in (("alpha", alpha), ("beta", beta), ("unk_score_offset", unk_score_offset))
            if v is not None
        }
        self.options = dataclasses.replace(self.options, **changes)  # validated like any BeamOptions
        w = self.weights
        given = {k: getattr(self.options, k) for k in ("alpha", "beta", "unk_score_offset")}
        new = {k: given[k] if given[k] is not None else getattr(w, k) for k in given}
        if len(changes) == 3:
            self.weights = dataclasses.replace(w, **new, source="given", from_sidecar=False)
        else:
            self.weights = dataclasses.replace(w, **new)
        self._spec = dataclasses.replace(self._spec, **new)
        _decoder_for(self._key, self._spec)

    def _check_lm_spelling(self) -> None:
        """The LM's words that use characters the model cannot write can never be decoded: say so, once."""
        writable = {label for label in self.labels if len(label) == 1 and label != " "}
        words = self.lm_words - KENLM_SPECIAL_WORDS  # in a plain .arpa's unigrams, never decoded as text
        strange = [word for word in words if any(ch not in writable for ch in word)]
        if strange and self.lm_path not in _SPELLING_WARNED:
            _SPELLING_WARNED.add(self.lm_path)
            chars = sorted({ch for word in strange for ch in word if ch not in writable})
            warn(
                f"{len(strange)} of the {len(words)} words of the language model "
                f"{os.path.basename(self.lm_path)} use characters the model cannot write "
                f"({' '.join(chars[:12])}; e.g. {', '.join(sorted(strange)[:3])}); beam search never produces "
                "them: rebuild the LM with `xlsr-edge lm build --bundle BUNDLE`"
            )

    def _note_coverage(self, logits: np.ndarray, lengths: np.ndarray) -> None:
        """Count the words heard (greedy reading of the same logits) that the LM knows; warn once, then stop."""
        counts, known_words = self._coverage, self.lm_words
        for decoded in self._greedy.decode_batch(logits, lengths):
            for word in decoded.text.split():
                if "<" not in word:  # <unk>, <s> are tokens, not words
                    counts[0] += 1
                    counts[1] += word in known_words or any(
                        word[:i] in known_words and word[i:] in known_words for i in range(1, len(word))
                    )
        heard, known = counts
        if heard < COVERAGE_MIN_WORDS:
            return
        self._coverage = None  # decided: checked once per decoder
        if known < COVERAGE_WARN_BELOW * heard and self.lm_path not in _COVERAGE_WARNED:
            _COVERAGE_WARNED.add(self.lm_path)
            lm = os.path.basename(self.lm_path)
            warn(
                f"the language model {lm} knows only {100 * known / heard:.0f} % of the words heard so far "
                f"({known} of {heard}, greedy reading), and its weights are not tuned "
                f"({self.weights.source}): it may make beam search worse than without it. Run `xlsr-edge lm "
                f"tune BUNDLE DEV_MANIFEST --lm {lm}` to find weights that help or make it harmless"
            )

    def decode_batch(self, logits: np.ndarray, lengths: np.ndarray | None = None) -> list[Decoded]:
        if self._decoder is None:
            raise XlsrEdgeError("this BeamDecoder is closed")
        logits, lengths = check_batch(logits, lengths, len(self.labels))
        if self.vocab.spare_ids:  # placeholder columns (a head wider than the tokenizer): never searched
            logits = np.array(logits, dtype=np.float32)
            logits[..., list(self.vocab.spare_ids)] = -1e9
        if self._coverage is not None:
            self._note_coverage(logits, lengths)
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
