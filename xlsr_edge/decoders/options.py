"""Decoding options: frozen dataclasses validated once, at construction (whisper's DecodingOptions style).

Invalid values raise ValueError with a message that names the field; the CLIs print it as `error: ...`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from xlsr_edge.limits import check_workers

# Suffixes of KenLM files the beam decoder accepts (kenlm.Model detects ARPA vs binary by content).
LM_SUFFIXES = (".arpa", ".arpa.gz", ".bin", ".binary", ".klm")
# pyctcdecode 0.5.0's defaults (alpha, beta, unk_score_offset), tuned on English LibriSpeech: used for an LM
# without tuned weights (resolve_weights).
PYCTCDECODE_WEIGHTS = (0.5, 1.5, -10.0)
WEIGHT_NAMES = ("alpha", "beta", "unk_score_offset")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _path_or_none(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"{name} must be a path, got {value!r}")
    text = os.fspath(value)
    if not text:
        raise ValueError(f"{name} must not be empty (use None for no {name})")
    return text


@dataclass(frozen=True)
class Weights:
    """LM fusion weights and where they came from.

    As `BeamOptions.tuned`: the weights `xlsr-edge lm tune` stored for the LM, read and checked by the caller
    (xlsr_edge.lm.weights.with_tuned_weights; the decoders never read files of their own accord). As
    `BeamDecoder.weights`: what the decoder uses (resolve_weights).
    """

    alpha: float
    beta: float
    unk_score_offset: float
    source: str  # "given", "tuned (lm.tuned.json)", "pyctcdecode defaults", or a mix: "alpha given, ..."
    from_sidecar: bool = False  # some of the weights come from the LM's tuned sidecar

    def __post_init__(self) -> None:
        for name in WEIGHT_NAMES:
            object.__setattr__(self, name, _finite(name, getattr(self, name)))


@dataclass(frozen=True)
class GreedyOptions:
    """Best path (argmax) decoding. Nothing to configure."""


@dataclass(frozen=True)
class BeamOptions:
    """CTC prefix beam search (pyctcdecode), optionally fused with a KenLM n-gram model.

    beam_width: beams kept per frame. alpha: LM weight; beta: word insertion bonus; unk_score_offset: score added
    for a word the LM does not know (all three only used with an LM). None (the default) = the value in `tuned`,
    else pyctcdecode's default (PYCTCDECODE_WEIGHTS); see resolve_weights.
    tuned: the weights `xlsr-edge lm tune` stored next to the LM (`<lm stem>.tuned.json`), filled in by the
    caller: xlsr_edge.lm.weights.with_tuned_weights (Recognizer.from_bundle and the commands call it).
    lm_path: .arpa, .arpa.gz or KenLM binary (.bin/.binary/.klm). unigrams_path: the LM's words, one per line;
    None = `<lm stem>.unigrams.txt` next to the LM when it exists (see xlsr_edge.decoders.lm_files).
    hotwords: words or phrases boosted by hotword_weight per match. num_workers > 1: the decoder forks its own
    process pool for batches. beam_prune_logp: drop beams this far below the best; token_min_logp: skip tokens
    below this log-probability in a frame unless they are its argmax.
    """

    beam_width: int = 100
    alpha: float | None = None
    beta: float | None = None
    lm_path: str | None = None
    unigrams_path: str | None = None
    hotwords: tuple[str, ...] = ()
    hotword_weight: float = 10.0
    num_workers: int = 0
    beam_prune_logp: float = -10.0
    token_min_logp: float = -5.0
    unk_score_offset: float | None = None
    tuned: Weights | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalize fields in place once, here
        if not _is_int(self.beam_width) or self.beam_width < 1:
            raise ValueError(f"beam_width must be an integer >= 1, got {self.beam_width!r}")
        if self.alpha is not None:
            alpha = _finite("alpha", self.alpha)
            if alpha < 0:
                raise ValueError(f"alpha (LM weight) must be >= 0, got {alpha}")
            set_(self, "alpha", alpha)
        if self.beta is not None:
            set_(self, "beta", _finite("beta", self.beta))
        if self.unk_score_offset is not None:
            unk = _finite("unk_score_offset", self.unk_score_offset)
            if unk > 0:
                raise ValueError(f"unk_score_offset is a penalty and must be <= 0, got {unk}")
            set_(self, "unk_score_offset", unk)

        lm_path = _path_or_none("lm_path", self.lm_path)
        if lm_path is not None and not lm_path.lower().endswith(LM_SUFFIXES):
            raise ValueError(
                f"lm_path must be a KenLM model ending in one of {', '.join(LM_SUFFIXES)}, got {lm_path!r}"
            )
        set_(self, "lm_path", lm_path)
        unigrams_path = _path_or_none("unigrams_path", self.unigrams_path)
        if unigrams_path is not None and lm_path is None:
            raise ValueError("unigrams_path needs lm_path: unigrams only matter with a language model")
        set_(self, "unigrams_path", unigrams_path)
        if self.tuned is not None:
            if not isinstance(self.tuned, Weights):
                raise ValueError(f"tuned must be Weights or None, got {self.tuned!r}")
            if lm_path is None:
                raise ValueError("tuned weights need lm_path: they belong to a language model")

        hotwords = self.hotwords
        if isinstance(hotwords, str):
            raise ValueError(
                f"hotwords must be a sequence of strings, not one string ({hotwords!r}); use (word,)"
            )
        try:
            hotwords = tuple(hotwords)
        except TypeError:
            raise ValueError(f"hotwords must be a sequence of strings, got {self.hotwords!r}") from None
        for word in hotwords:
            if not isinstance(word, str) or not word.strip():
                raise ValueError(f"every hotword must be a non-empty string, got {word!r}")
        set_(self, "hotwords", tuple(word.strip() for word in hotwords))
        set_(self, "hotword_weight", _finite("hotword_weight", self.hotword_weight))

        check_workers("num_workers", self.num_workers)  # a process each: at most a few per CPU
        for name in ("beam_prune_logp", "token_min_logp"):
            value = _finite(name, getattr(self, name))
            if value > 0:
                raise ValueError(f"{name} is a log-probability threshold and must be <= 0, got {value}")
            set_(self, name, value)


def resolve_weights(options: BeamOptions) -> Weights:
    """alpha, beta and unk_score_offset for BeamOptions: each field given (not None) is used as it is; the
    others come from `options.tuned` (the LM's sidecar, when the caller found one), else pyctcdecode's
    defaults (0.5, 1.5, -10)."""
    given = {name: getattr(options, name) for name in WEIGHT_NAMES}
    missing = [name for name, value in given.items() if value is None]
    if not missing:
        return Weights(**given, source="given")
    tuned = options.tuned if options.lm_path is not None else None
    fallback = dict(zip(WEIGHT_NAMES, PYCTCDECODE_WEIGHTS))
    values = {
        name: value if value is not None else (getattr(tuned, name) if tuned else fallback[name])
        for name, value in given.items()
    }
    origin = tuned.source if tuned else "pyctcdecode defaults"
    if len(missing) == len(given):
        source = origin
    else:
        source = ", ".join(name + " given" for name in given if name not in missing) + f", others {origin}"
    return Weights(**values, source=source, from_sidecar=tuned is not None)
