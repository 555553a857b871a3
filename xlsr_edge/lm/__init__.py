"""Word n-gram language models around the beam decoder: everything but decoding itself.

- `build`: KenLM's lmplz/build_binary (`xlsr-edge lm build`), what a build wrote and may replace;
- `fit`: corpus normalization and fitting text to the characters a model can write;
- `weights`: the tuned-weights sidecar (`xlsr-edge lm tune` writes it; `with_tuned_weights` reads it for
  BeamOptions);
- `coverage`: out-of-vocabulary reports.

Decoding (pyctcdecode + KenLM) is xlsr_edge.decoders, which reads an LM and its word list but no other file:
whoever builds BeamOptions puts the tuned weights in. Never imports torch or transformers.
"""

from __future__ import annotations

from xlsr_edge.lm.build import ENV_KENLM_BIN, build_lm, find_kenlm_binaries
from xlsr_edge.lm.coverage import OovReport, oov_rate
from xlsr_edge.lm.fit import TextFitter, model_alphabet, normalize_corpus
from xlsr_edge.lm.weights import (
    effective_weights,
    tuned_path_for,
    tuned_weights_for,
    with_tuned_weights,
    write_tuned_weights,
)

__all__ = [
    "ENV_KENLM_BIN",
    "OovReport",
    "TextFitter",
    "build_lm",
    "effective_weights",
    "find_kenlm_binaries",
    "model_alphabet",
    "normalize_corpus",
    "oov_rate",
    "tuned_path_for",
    "tuned_weights_for",
    "with_tuned_weights",
    "write_tuned_weights",
]
