"""Multi-language bundles: one backbone pass, language ID, the chosen language's head and decoder.

`MultiRecognizer` is the Recognizer of bundles whose bundle.json says ``"kind": "multi"`` (its `bundle_kind`):
`load_recognizer` / `Recognizer.from_bundle` build it for them. Its items (`MultiItem`) carry the backbone's
hidden states in `output` and, for MMS bundles routed by language ID, each language's own hidden states.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from xlsr_edge.bundle import BundleManifest, ModelInfo, bundle_path
from xlsr_edge.decoders import Decoded, Decoder, GreedyOptions, Vocabulary, make_decoder
from xlsr_edge.errors import BundleError, XlsrEdgeError
from xlsr_edge.runtime.recognizer import AudioItem, Recognizer
from xlsr_edge.runtime.router import Head, LanguageId, ctc_confidence, pool
from xlsr_edge.runtime.runners import Runner

UNKNOWN = "unknown"
POLICIES = ("all", UNKNOWN)


def language_info(manifest: BundleManifest, lang: str) -> ModelInfo:
    """The shared audio facts of the bundle with one language's vocabulary."""
    entry = manifest.extra["languages"][lang]
    return dataclasses.replace(
        manifest.model,
        vocab=list(entry["vocab"]),
        blank_id=entry["blank_id"],
        word_delimiter=entry["word_delimiter"],
        unk_token=entry.get("unk_token"),
    )


@dataclass
class MultiItem(AudioItem):
    """An input of a multi-language bundle: `output` holds the backbone's hidden states (read by language ID);
    `by_language`, for MMS bundles routed by language ID, the hidden states of the body run with each language's
    own adapters (the chosen head reads its language's)."""

    by_language: dict[str, np.ndarray] = field(default_factory=dict)


class MultiRecognizer(Recognizer):
    bundle_kind: ClassVar[str | None] = "multi"
    item_type: ClassVar[type[AudioItem]] = MultiItem

    def __init__(
        self,
        manifest: BundleManifest,
        runner: Runner,
        heads: dict[str, Head],
        decoders: dict[str, Decoder],
        lid: LanguageId | None,
        *,
        language: str | None,
        threshold: float,
        policy: str,
    ) -> None:
        super().__init__(manifest, runner, next(iter(decoders.values())))
        self.heads, self.decoders, self.lid = heads, decoders, lid
        self.language, self.threshold, self.policy = language, threshold, policy
        # MMS: every language has its own attention adapters inside the shared body, fed to the graph as an
        # input; language ID reads the body with one language's adapters (the one it was trained on)
        self.adapters = any(h.adapter is not None for h in heads.values())
        self.lid_language = (manifest.extra.get("adapters") or {}).get("lid") or next(iter(heads))
        if self.adapters:
            self._use(language or self.lid_language)

    def _use(self, lang: str) -> None:
        """Run the body with `lang`'s adapters from now on (MMS bundles)."""
        if hasattr(self.runner, "adapter_weights"):
            self.runner.adapter_weights = self.heads[lang].adapter

    def infer(self, items: list[MultiItem], windows, options, progress=None) -> None:
        """MMS with language ID: the body runs once per language (each with its adapters); otherwise once."""
        if not self.adapters or self.language is not None or len(self.heads) == 1:
            if self.adapters:
                self._use(self.language or self.lid_language)
            return super().infer(items, windows, options, progress)
        hidden: dict[str, list] = {}
        for k, lang in enumerate(self.heads):
            self._use(lang)
            super().infer(items, windows, options, progress if k == 0 else None)
            hidden[lang] = [it.output for it in items]
        self._use(self.lid_language)
        for i, it in enumerate(items):
            if it.output is not None:
                it.output = hidden[self.lid_language][i]
                it.by_language = {lang: h[i] for lang, h in hidden.items()}

    @classmethod
    def create(
        cls,
        folder: Path,
        manifest: BundleManifest,
        runner: Runner,
        decoder: Any,
        *,
        language: str | None = None,
        threshold: float | None = None,
        policy: str | None = None,
    ) -> MultiRecognizer:
        """Load the heads, the language-ID model and one decoder per language (`decoder`: options, not a
        Decoder) next to the active backbone runner."""
        langs = manifest.extra["languages"]
        if language is not None and language not in langs:
            raise XlsrEdgeError(f"--language {language}: this bundle has {', '.join(langs)}")
        if isinstance(decoder, Decoder):
            raise XlsrEdgeError("a multi-language bundle needs decoder options (one decoder per language)")
        heads = {}
        for lang, e in langs.items():  # bundle.json was validated on load; the .npz files are checked here
            field = f"extra.languages.{lang}.head"
            head = heads[lang] = Head.load(bundle_path(folder, e["head"], field=field))
            if head.weight.shape[0] != len(e["vocab"]):
                raise BundleError(
                    f"the {lang} head emits {head.weight.shape[0]} logits per frame but its vocabulary has "
                    f"{len(e['vocab'])} tokens; re-export the bundle"
                )
        widths = {h.weight.shape[1] for h in heads.values()}
        if len(widths) > 1:
            raise BundleError(
                f"the heads expect different hidden sizes {sorted(widths)}; re-export the bundle"
            )
        (hidden,) = widths
        decoders = {
            lang: make_decoder(
                Vocabulary.from_model_info(language_info(manifest, lang)), decoder or GreedyOptions()
            )
            for lang in langs
        }
        lid_meta = manifest.extra.get("lid")
        lid = (
            LanguageId.load(bundle_path(folder, lid_meta["file"], field="extra.lid.file"))
            if lid_meta
            else None
        )
        if lid is not None:
            strangers = sorted(set(lid.languages) - set(langs))
            if strangers or lid.weight.shape[1] != 2 * hidden:  # features: mean and std of hidden states
                raise BundleError(
                    f"the language-ID model does not fit the heads ({', '.join(strangers) or 'feature size'}); "
                    "re-export the bundle or re-run add-language"
                )
        if lid is None and language is None and len(langs) > 1:
            raise BundleError("this bundle has no language-ID model: pass --language")
        policy = policy or (lid_meta or {}).get("policy", "all")
        if policy not in POLICIES:
            raise ValueError(f"below-threshold policy must be one of {POLICIES}")
        threshold = (lid_meta or {}).get("threshold", 0.5) if threshold is None else threshold
        if not 0 <= threshold <= 1:
            raise ValueError("--lid-threshold must be within [0, 1]")
        return cls(
            manifest, runner, heads, decoders, lid, language=language, threshold=threshold, policy=policy
        )

    def _check_output(self, hidden: np.ndarray) -> None:
        width = next(iter(self.heads.values())).weight.shape[1]
        if hidden.shape[-1] != width:
            raise BundleError(
                f"the backbone graph emits {hidden.shape[-1]} values per frame but the heads expect {width}; "
                "re-export the bundle"
            )

    def close(self) -> None:
        self.runner.deactivate()
        for d in self.decoders.values():
            d.close()

    def route(
        self, hidden: np.ndarray, by_language: dict[str, np.ndarray] | None = None
    ) -> tuple[str, float | None, np.ndarray]:
        """Pick the language for one utterance's hidden states: (language, confidence, logits).

        by_language: MMS bundles, each language's own hidden states (the body with its adapters)."""
        own = by_language or {}
        if self.language is not None:
            return self.language, None, self.heads[self.language].apply(hidden)
        if self.lid is None:  # one language, no classifier needed
            lang = next(iter(self.heads))
            return lang, None, self.heads[lang].apply(hidden)
        probs = self.lid.probabilities(pool(hidden))[0]
        best = int(probs.argmax())
        lang, conf = self.lid.languages[best], float(probs[best])
        if conf >= self.threshold:
            return lang, conf, self.heads[lang].apply(own.get(lang, hidden))
        if self.policy == UNKNOWN:
            return UNKNOWN, conf, np.zeros((0, 1), dtype=np.float32)
        # run every head; keep the one most sure of its own transcript
        scored = [
            (ctc_confidence(lg), lg_lang, lg)
            for lg_lang, lg in ((k, h.apply(own.get(k, hidden))) for k, h in self.heads.items())
        ]
        _, lang, logits = max(scored, key=lambda t: t[0])
        return lang, float(probs[self.lid.languages.index(lang)]), logits

    def decode(self, items: list[MultiItem]) -> list[Decoded | None]:
        out: list[Decoded | None] = [None] * len(items)
        for i, it in enumerate(items):
            if it.output is None:
                continue
            it.language, it.language_confidence, logits = self.route(it.output, it.by_language or None)
            out[i] = Decoded("") if it.language == UNKNOWN else self.decoders[it.language].decode(logits)
        return out
