"""`xlsr-edge lm ...`: KenLM n-gram language models for the beam decoder: `build` one, `tune` its weights."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from xlsr_edge import limits
from xlsr_edge.commands.common import add_backend_argument, check_at_least_one
from xlsr_edge.constants import DEFAULT_BATCH_SIZE, EXIT_OK
from xlsr_edge.errors import XlsrEdgeError

# `-1,0`, `-10:0:5`, `-.5`: a value (a negative range of `lm tune`), not an option; argparse would read it as one
_NEGATIVE_VALUE = re.compile(r"^-\.?\d")


def _negative_values_parser(base: type[argparse.ArgumentParser]) -> type[argparse.ArgumentParser]:
    """The parser class of `lm`'s subcommands: `base` that takes `--beta -1,0` like `--beta=-1,0`."""

    class NegativeValuesParser(base):  # type: ignore[valid-type, misc]
        def _parse_optional(self, arg_string):  # noqa: ANN001, ANN202 (argparse's own hook)
            if _NEGATIVE_VALUE.match(arg_string):
                return None  # a positional-like value, consumed by the option before it
            return super()._parse_optional(arg_string)

    return NegativeValuesParser


def _bundle_alphabet(bundle: Path, language: str | None) -> set[str]:
    """The characters the bundle's model can write (for a multi-language bundle: the --language head's)."""
    from xlsr_edge.bundle import load_bundle
    from xlsr_edge.lm.fit import model_alphabet

    manifest = load_bundle(bundle, verify=False)  # only the vocabulary is read
    if manifest.extra.get("kind") == "multi":
        languages = manifest.extra.get("languages", {})
        if language not in languages:
            raise XlsrEdgeError(
                f"--bundle {bundle} has one vocabulary per language ({', '.join(languages)}): "
                "pick one with --language"
            )
        entry = languages[language]
        vocab = list(entry["vocab"])
        blank = entry.get("blank_id", 0)
        delimiter = entry.get("word_delimiter", manifest.model.word_delimiter)
        return model_alphabet(vocab, blank, delimiter)
    info = manifest.model
    return model_alphabet(info.vocab, info.blank_id, info.word_delimiter)


def _lm_build(args: argparse.Namespace) -> int:
    from xlsr_edge.decoders.lm_files import read_unigrams, unigrams_path_for
    from xlsr_edge.lm.build import build_lm
    from xlsr_edge.lm.coverage import oov_rate
    from xlsr_edge.lm.fit import TextFitter, normalize_corpus

    alphabet = _bundle_alphabet(args.bundle, args.language) if args.bundle else None
    dev = None
    if args.dev:  # read before the (possibly long) build: a bad manifest fails now
        from xlsr_edge.datasets import read_manifest

        dev = [u.text for u in read_manifest(args.dev, check_audio=False) if u.text]
        if not dev:
            raise XlsrEdgeError(f"--dev {args.dev} has no transcripts to measure the LM's vocabulary on")
    out = build_lm(
        args.text,
        args.output,
        order=args.order,
        language=args.language,
        normalize=not args.raw,
        alphabet=alphabet,
        overwrite=args.overwrite,
        kenlm_bin=args.kenlm_bin,
    )
    print(f"wrote {out}")
    if dev is not None:
        texts = list(normalize_corpus(dev, args.language, not args.raw))
        if alphabet is not None:  # the words as this model would spell them, as the LM's were
            fitter = TextFitter(alphabet)
            texts = [fitter.line(t) for t in texts]
        report = oov_rate(set(read_unigrams(unigrams_path_for(out))), texts)
        print(report.describe(str(args.dev)))
    return EXIT_OK


def _lm_tune(args: argparse.Namespace) -> int:
    from xlsr_edge.lm.weights import check_sidecar_writable, write_tuned_weights
    from xlsr_edge.measure.evaluation import progress_wanted
    from xlsr_edge.measure.lm_tune import (
        DEFAULT_ALPHAS,
        DEFAULT_BETAS,
        DEFAULT_UNK_OFFSETS,
        TuneOptions,
        format_table,
        parse_range,
        tune,
    )

    check_at_least_one("--threads", args.threads)
    check_at_least_one("--batch-size", args.batch_size)
    options = TuneOptions(
        alphas=parse_range(args.alpha, "--alpha") if args.alpha else DEFAULT_ALPHAS,
        betas=parse_range(args.beta, "--beta") if args.beta else DEFAULT_BETAS,
        unk_offsets=parse_range(args.unk_offset, "--unk-offset") if args.unk_offset else DEFAULT_UNK_OFFSETS,
        search=args.search,
        beam_width=args.beam_width,
        workers=args.workers,
        language=args.language,
        batch_size=args.batch_size,
        threads=args.threads,
        backend=args.backend,
        providers=args.providers,
        progress=progress_wanted(),
    )
    if not args.dry_run:
        check_sidecar_writable(args.lm)  # now, not after the whole search
    result = tune(args.bundle, args.manifest, args.lm, options)
    sidecar = None if args.dry_run else write_tuned_weights(args.lm, result.sidecar(args.bundle))
    if args.json:
        data = result.to_json()
        data["sidecar"] = None if sidecar is None else str(sidecar)
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print(format_table(result, top=args.top))
        if sidecar is not None:
            print(
                f"wrote {sidecar}: `transcribe`, `eval` and `stream` with --lm {args.lm} use these weights "
                "unless --alpha/--beta/--unk-offset are given"
            )
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add `lm` and its own subcommands."""
    lm_parser = sub.add_parser("lm", help="language models")
    lm = lm_parser.add_subparsers(
        dest="lm_command", required=True, parser_class=_negative_values_parser(type(lm_parser))
    )
    p = lm.add_parser("build", help="build a KenLM n-gram model with lmplz/build_binary")
    p.add_argument("text", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="LM.arpa or LM.bin")
    p.add_argument(
        "--order", type=limits.int_in(2, 6), default=3, help="n-gram order, 2 to 6 (KenLM's limits)"
    )
    p.add_argument(
        "--language",
        default=None,
        help="normalize like the recipe for this language (tr/az: İ/I lower-casing)",
    )
    p.add_argument(
        "--raw",
        action="store_true",
        help="keep the corpus text as it is (no lower-casing or punctuation removal)",
    )
    p.add_argument(
        "--bundle",
        type=Path,
        default=None,
        help="fit the text to this bundle's vocabulary: apostrophes removed, diacritics it lacks mapped to "
        "base letters, words with digits or other letters it cannot write dropped (counts printed)",
    )
    p.add_argument(
        "--dev",
        type=Path,
        default=None,
        help="a manifest with transcripts: print the LM's out-of-vocabulary rate on them",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the LM and word list of an earlier `lm build` (never files it did not write)",
    )
    p.add_argument(
        "--kenlm-bin",
        type=Path,
        default=None,
        help="folder holding KenLM's lmplz and build_binary (default: $XLSR_EDGE_KENLM_BIN, PATH, or "
        "a source checkout's .tools/kenlm/bin from `make kenlm`)",
    )
    p.set_defaults(fn=_lm_build)

    t = lm.add_parser(
        "tune",
        help="find the LM weights (alpha, beta, unknown-word offset) that decode a dev set best",
        description=(
            "Compute the dev set's logits once, then beam-decode them with the LM for every setting of a "
            "coordinate (or grid) search and print WER/CER per setting next to greedy decoding and beam "
            "search without the LM. The best weights go to LM.tuned.json next to the LM (with its sha256); "
            "transcribe, eval and stream use them whenever they decode with that LM. When the LM does not "
            "beat beam search without it, the weights recorded make it harmless (alpha 0)."
        ),
    )
    t.add_argument("bundle", type=Path)
    t.add_argument(
        "manifest", type=Path, help="dev set: NeMo JSONL, Common Voice TSV or CSV with transcripts"
    )
    t.add_argument("--lm", type=Path, required=True, help="the KenLM model to tune (.arpa or .bin)")
    t.add_argument(
        "--alpha", default=None, help="LM weights to try, 0 to 10: START:STOP:STEP, A,B,C or one value"
    )
    t.add_argument(
        "--beta", default=None, help="word insertion bonuses to try, -20 to 20 (same forms; -1,0 works)"
    )
    t.add_argument(
        "--unk-offset", default=None, help="unknown-word offsets to try, -100 to 0 (same forms: -10:0:5)"
    )
    t.add_argument(
        "--search",
        choices=["coordinate", "grid"],
        default="coordinate",
        help="coordinate: one weight at a time, repeated until nothing changes; grid: every combination",
    )
    t.add_argument("--beam-width", type=limits.int_in(1, limits.MAX_BEAM_WIDTH), default=100)
    t.add_argument("--workers", type=limits.workers(), default=0, help="beam decoding processes")
    t.add_argument(
        "--language", default=None, help="language code for text normalization (tr/az: dotted/dotless i)"
    )
    t.add_argument(
        "--top",
        type=limits.int_in(1, 1_000_000),
        default=15,
        help="settings listed in the table (best first)",
    )
    t.add_argument("--json", action="store_true", help="print every setting as one JSON object")
    t.add_argument("--dry-run", action="store_true", help="print the table, write no sidecar")
    t.add_argument("--batch-size", type=limits.int_in(1, limits.MAX_BATCH), default=DEFAULT_BATCH_SIZE)
    t.add_argument("--threads", type=limits.threads(), default=None, help="onnxruntime intra-op threads")
    add_backend_argument(t)
    t.add_argument(
        "--providers", default="cpu", help="onnxruntime providers, comma-separated: cpu,cuda,tensorrt"
    )
    t.set_defaults(fn=_lm_tune)
