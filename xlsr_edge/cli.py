"""Command lines: argument parsing, the one `error:` line, exit codes. Library code never imports this."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from xlsr_edge import __version__
from xlsr_edge.constants import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK_CONTEXT_SECONDS,
    DEFAULT_CHUNK_SECONDS,
    DEFAULT_OPSET,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USER_ERROR,
    PARITY_MAX_ABS_DIFF,
    PARITY_MIN_ARGMAX_AGREEMENT,
    PRECISION_GATE_SIZE,
    PRECISION_MAX_CER_DELTA,
    PRECISION_MIN_FRAME_AGREEMENT,
)
from xlsr_edge.errors import XlsrEdgeError

MANIFEST_SUFFIXES = (".json", ".jsonl", ".txt", ".lst", ".tsv", ".csv")


def _run(fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """User errors (XlsrEdgeError, invalid option values) -> one `error:` line and exit 2, no traceback."""
    try:
        return fn(args)
    except (XlsrEdgeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


# -- export ---------------------------------------------------------------------------------------------------


def _export_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="export-xlsr",
        description="Export a fine-tuned XLS-R/Wav2Vec2 CTC checkpoint folder to a verified ONNX bundle.",
    )
    ap.add_argument("checkpoint", type=Path, nargs="?", help="local Hugging Face checkpoint folder")
    ap.add_argument("-o", "--output", type=Path, required=True, help="bundle folder to write")
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    ap.add_argument("--max-batch", type=int, default=None, help="largest batch the deployment will use")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    ap.add_argument("--no-verify", action="store_true", help="skip the parity gate (not recommended)")
    ap.add_argument(
        "--verify-audio", type=Path, default=None, help="folder or manifest of speech for the gate"
    )
    ap.add_argument("--allow-pickle", action="store_true", help="accept pytorch_model.bin (runs pickle code)")
    ap.add_argument("--max-abs-diff", type=float, default=PARITY_MAX_ABS_DIFF, help="gate: max |logit diff|")
    ap.add_argument(
        "--min-agreement",
        type=float,
        default=PARITY_MIN_ARGMAX_AGREEMENT,
        help="gate: frame argmax agreement",
    )
    q = ap.add_argument_group("precision (fp16 / int8 bundles with an accuracy gate against fp32)")
    q.add_argument(
        "--precision",
        choices=["fp32", "fp16", "int8-dynamic", "int8"],
        default="fp32",
        help="fp16: GPUs (LayerNorm/Softmax/reductions stay fp32); int8-dynamic: fast CPU path; "
        "int8: static Q/DQ calibrated on --calibration (TensorRT)",
    )
    q.add_argument(
        "--calibration",
        type=Path,
        default=None,
        metavar="MANIFEST",
        help="NeMo JSONL, Common Voice TSV, CSV (path,text) or a folder of audio: calibration (int8) and "
        "accuracy gate; default: the shipped clips",
    )
    q.add_argument("--calibration-size", type=int, default=64, metavar="N", help="utterances for int8 ranges")
    q.add_argument("--calibration-method", choices=["percentile", "entropy", "minmax"], default="percentile")
    q.add_argument(
        "--max-cer-delta",
        type=float,
        default=PRECISION_MAX_CER_DELTA,
        metavar="PTS",
        help="gate: CER percentage points the converted graph may add over fp32 (transcribed manifests)",
    )
    q.add_argument(
        "--min-frame-agreement",
        type=float,
        default=PRECISION_MIN_FRAME_AGREEMENT,
        metavar="F",
        help="gate without transcripts: frame argmax agreement with the fp32 graph",
    )
    q.add_argument(
        "--gate-size", type=int, default=PRECISION_GATE_SIZE, metavar="N", help="utterances the gate decodes"
    )
    q.add_argument(
        "--exclude-ops",
        nargs="+",
        default=[],
        metavar="OP",
        help="op types (MatMul, Attention, ...) or node-name patterns (e.g. '*layers.23*') kept float",
    )
    q.add_argument(
        "--quantize-ops",
        nargs="+",
        default=["MatMul", "Gemm"],
        choices=["MatMul", "Gemm", "Attention", "FeatureEncoder", "Conv"],
        metavar="GROUP",
        help="what int8 quantizes: MatMul (weights), Gemm, Attention (score/context MatMuls), FeatureEncoder "
        "(CNN layers 1-6 exported as MatMuls: faster on CPU), Conv (ConvInteger: slow, not recommended)",
    )
    q.add_argument("--seed", type=int, default=0, help="calibration/gate utterance selection")
    ap.add_argument(
        "--engine", choices=["onnx", "trt"], default="onnx", help="trt: also build a TensorRT engine"
    )
    from xlsr_edge.commands.engine import add_engine_arguments

    add_engine_arguments(ap)
    m = ap.add_argument_group("multi-language (one backbone, a head per language)")
    m.add_argument("--multi", nargs="+", metavar="LANG=CKPT", help="checkpoints sharing one frozen backbone")
    m.add_argument(
        "--lid-data", nargs="+", metavar="LANG=MANIFEST", help="speech per language for language ID"
    )
    m.add_argument(
        "--lid-threshold",
        type=_threshold,
        default=None,
        metavar="P|auto",
        help="below it, the --below-threshold policy applies (default auto: the confidence that keeps 95 %% of "
        "held-out --lid-data clips routed)",
    )
    m.add_argument(
        "--below-threshold",
        choices=["all", "unknown"],
        default="all",
        help="all: run every head and keep the most confident; unknown: answer language 'unknown'",
    )
    return ap


def _threshold(value: str) -> float | None:
    """--lid-threshold: a probability, or 'auto' (None: calibrated on the held-out --lid-data split)."""
    if value == "auto":
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability or 'auto', got {value!r}") from None


def parse_pairs(items: Sequence[str] | None, what: str) -> dict[str, Path]:
    """LANG=PATH pairs, in the order given."""
    out: dict[str, Path] = {}
    for item in items or ():
        lang, sep, path = item.partition("=")
        if not sep or not lang or not path:
            raise XlsrEdgeError(f"{what} expects LANG=PATH, got {item!r}")
        if lang in out:
            raise XlsrEdgeError(f"{what} names {lang} twice")
        out[lang] = Path(path)
    return out


def _export_multi(args: argparse.Namespace, options) -> int:
    from xlsr_edge.export.multi import LidOptions, export_multi

    if args.checkpoint is not None:
        raise XlsrEdgeError("give either CHECKPOINT or --multi LANG=CKPT ..., not both")
    lid_data = parse_pairs(args.lid_data, "--lid-data")
    specs = parse_pairs(args.multi, "--multi")
    if lid_data and set(lid_data) != set(specs):
        raise XlsrEdgeError(f"--lid-data must cover the same languages as --multi ({', '.join(specs)})")
    lid = LidOptions(lid_data, args.lid_threshold, args.below_threshold) if lid_data else None
    manifest = export_multi(specs, args.output, options, lid)
    lid_meta = manifest.extra.get("lid") or {}
    acc = lid_meta.get("holdout_accuracy")
    print(
        f"wrote {args.output}: {', '.join(specs)} on one backbone"
        + (f", language ID held-out accuracy {acc:.3f}" if acc is not None else ", no language ID")
        + (f", threshold {lid_meta['threshold']:.3f} ({lid_meta['threshold_source']})" if lid_meta else "")
    )
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from xlsr_edge.export import ExportOptions, export_bundle
    from xlsr_edge.export.parity import ParityThresholds

    options = ExportOptions(
        opset=args.opset,
        max_batch=args.max_batch,
        overwrite=args.overwrite,
        verify=not args.no_verify,
        verify_audio=args.verify_audio,
        allow_pickle=args.allow_pickle,
        thresholds=ParityThresholds(max_abs_diff=args.max_abs_diff, min_argmax_agreement=args.min_agreement),
        precision=args.precision,
        calibration=args.calibration,
        calibration_size=args.calibration_size,
        calibration_method=args.calibration_method,
        max_cer_delta=args.max_cer_delta,
        min_frame_agreement=args.min_frame_agreement,
        gate_size=args.gate_size,
        exclude_ops=tuple(args.exclude_ops),
        quantize_ops=tuple(args.quantize_ops),
        seed=args.seed,
    )
    if args.multi and args.precision != "fp32":
        raise XlsrEdgeError("--precision is not supported with --multi yet; export fp32")
    if args.multi:
        return _export_multi(args, options)
    if args.checkpoint is None:
        raise XlsrEdgeError("give a CHECKPOINT folder (or --multi LANG=CKPT ...)")
    if args.engine == "trt":
        return _export_with_engine(args, options)
    manifest = export_bundle(args.checkpoint, args.output, options)
    p = manifest.parity or {}
    gate = "skipped" if "skipped" in p else f"passed (max |diff| {p['vs_pytorch']['max_abs_diff']:.2e})"
    print(f"wrote {args.output}: {manifest.precision}, opset {manifest.opset}, parity gate {gate}")
    report = manifest.extra.get("precision_report")
    if report:
        from xlsr_edge.export.precision import format_report

        for line in format_report(report):
            print(f"  {line}")
    return EXIT_OK


def _export_with_engine(args: argparse.Namespace, options) -> int:
    """Export, then build the TensorRT engine into the bundle; refuse at once when TensorRT/GPU are missing."""
    import shutil

    from xlsr_edge.commands.engine import build_options
    from xlsr_edge.export import export_bundle
    from xlsr_edge.runtime.tensorrt import build_engine, current_device, describe

    if args.multi:
        raise XlsrEdgeError("--engine trt is not supported with --multi yet")
    build = build_options(args, args.max_batch)
    device = current_device()  # before any export work: nothing is written when this fails
    export_bundle(args.checkpoint, args.output, options)
    try:
        sidecar = build_engine(args.output, build, device)
    except BaseException:
        shutil.rmtree(args.output, ignore_errors=True)  # no bundle that claims an engine it lacks
        raise
    print(f"wrote {args.output}: {describe(sidecar)}, engine built in {sidecar['build_seconds']} s")
    return EXIT_OK


def export_main(argv: Sequence[str] | None = None) -> int:
    args = _export_parser().parse_args(argv)
    return _run(_export, args)


# -- inspect --------------------------------------------------------------------------------------------------


def _inspect(args: argparse.Namespace) -> int:
    from xlsr_edge.bundle import read_manifest, verify_files

    manifest = read_manifest(args.bundle)
    checks = verify_files(args.bundle, manifest)
    bad = [c for c in checks if c.status != "ok"]
    data = manifest.to_json()
    data["verification"] = {c.path: c.status for c in checks}
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        m = manifest.model
        print(f"bundle        {args.bundle}")
        print(
            f"schema        {manifest.schema_version}   precision {manifest.precision}   opset {manifest.opset}"
        )
        print(f"vocabulary    {len(m.vocab)} tokens, blank id {m.blank_id}, delimiter {m.word_delimiter!r}")
        print(
            f"audio         {m.sample_rate} Hz, do_normalize={m.do_normalize}, frame stride {m.frame_stride_samples}"
            f" samples, receptive field {m.receptive_field_samples}"
        )
        print(f"padding       {'attention_mask' if m.uses_attention_mask else 'none: feed unpadded'}")
        print(
            f"source        {manifest.source.get('path')} sha256 {str(manifest.source.get('sha256'))[:16]}…"
        )
        p = manifest.parity or {}
        if "vs_pytorch" in p:
            v = p["vs_pytorch"]
            print(
                f"parity        {'passed' if p.get('passed') else 'FAILED'}: max |diff| {v['max_abs_diff']:.2e}, "
                f"argmax agreement {v['argmax_agreement']:.4f}, transcripts equal {v['transcripts_equal']}"
            )
        else:
            print(f"parity        {p.get('skipped', 'none')}")
        if "precision_report" in manifest.extra:
            from xlsr_edge.export.precision import format_report

            for line in format_report(manifest.extra["precision_report"]):
                print(line)
        for extra_key in ("engine",):
            if extra_key in manifest.extra:
                print(f"{extra_key:<13} {json.dumps(manifest.extra[extra_key], ensure_ascii=False)}")
        for c in checks:
            print(f"file          {c.path}: {c.status}")
    if bad:
        print(
            "error: bundle verification failed: " + ", ".join(f"{c.path} {c.status}" for c in bad),
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    return EXIT_OK


# -- transcribe -----------------------------------------------------------------------------------------------


def expand_inputs(specs: Sequence[str]) -> list[tuple[str, Path]]:
    """(label, path) per audio: a folder expands to its audio files, a manifest to its entries.

    The label is the path exactly as the user (or the manifest) wrote it, so output joins back to manifests.
    """
    from xlsr_edge.calibration import read_manifest
    from xlsr_edge.constants import AUDIO_EXTENSIONS

    out: list[tuple[str, Path]] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            out += [(str(f), f) for f in sorted(p.rglob("*")) if f.suffix.lower() in AUDIO_EXTENSIONS]
        elif p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES:
            out += [(u.raw_path or str(u.audio), u.audio) for u in read_manifest(p, check_audio=False)]
        else:
            out.append((spec, p))
    return out


def decoder_options(args: argparse.Namespace):
    from xlsr_edge.decoders import BeamOptions, GreedyOptions

    hotwords = tuple(getattr(args, "hotword", None) or ())  # eval has no hotword options
    if args.decoder == "greedy":
        if args.lm or hotwords:
            raise XlsrEdgeError("--lm and --hotword need --decoder beam")
        return GreedyOptions()
    return BeamOptions(
        beam_width=args.beam_width,
        alpha=args.alpha,
        beta=args.beta,
        lm_path=str(args.lm) if args.lm else None,
        hotwords=hotwords,
        hotword_weight=getattr(args, "hotword_weight", 10.0),
        num_workers=args.workers,
    )


def _transcribe(args: argparse.Namespace) -> int:
    from xlsr_edge.runtime import Recognizer, TranscribeOptions

    options = TranscribeOptions(
        batch_size=args.batch_size,
        chunk_seconds=args.chunk_seconds if args.chunk_seconds > 0 else None,
        context_seconds=args.context_seconds,
    )
    inputs = expand_inputs(args.audio)
    if not inputs:
        raise XlsrEdgeError("no audio files found in the given inputs")
    with Recognizer.from_bundle(
        args.bundle,
        backend=args.backend,
        providers=args.providers if args.backend == "onnxruntime" else None,
        threads=args.threads,
        decoder=decoder_options(args),
        language=args.language,
        lid_threshold=args.lid_threshold,
        below_threshold=args.below_threshold,
    ) as rec:
        results = rec.transcribe(
            [p for _, p in inputs], options, progress=len(inputs) > 1 and sys.stderr.isatty()
        )
    failed = 0
    for (label, _), t in zip(inputs, results):
        t.audio = label
        if t.error:
            failed += 1
        if args.json:
            print(json.dumps(t.to_json(), ensure_ascii=False))
        elif t.error:
            print(f"{label}\terror: {t.error}")
        else:
            print(f"{label}\t{t.text}")
    if failed:
        print(f"{failed} of {len(results)} inputs failed", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _add_language(args: argparse.Namespace) -> int:
    from xlsr_edge.export import ExportOptions
    from xlsr_edge.export.multi import add_language

    manifest = add_language(
        args.bundle,
        args.language,
        args.checkpoint,
        args.lid_data,
        ExportOptions(overwrite=True, verify=not args.no_verify),
    )
    print(f"{args.bundle}: languages {', '.join(manifest.extra['languages'])}")
    return EXIT_OK


# -- lm -------------------------------------------------------------------------------------------------------


def _lm_build(args: argparse.Namespace) -> int:
    from xlsr_edge.decoders.lm import build_lm

    out = build_lm(args.text, args.output, order=args.order, language=args.language, normalize=not args.raw)
    print(f"wrote {out}")
    return EXIT_OK


# -- main -----------------------------------------------------------------------------------------------------


def _main_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="xlsr-edge", description="Run and inspect xlsr-edge bundles.")
    ap.add_argument("--version", action="version", version=f"xlsr-edge {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="print a bundle's manifest and verify every file hash")
    p.add_argument("bundle", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_inspect)

    p = sub.add_parser("transcribe", help="transcribe audio files, folders or manifests")
    p.add_argument("bundle", type=Path)
    p.add_argument(
        "audio", nargs="+", help="audio files, folders, or manifests (NeMo JSONL, one path per line)"
    )
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument(
        "--providers", default="cpu", help="onnxruntime providers, comma-separated: cpu,cuda,tensorrt"
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--decoder", choices=["greedy", "beam"], default="greedy")
    p.add_argument("--lm", type=Path, default=None, help="KenLM model (.arpa or .bin), beam decoder only")
    p.add_argument("--hotword", action="append", help="boost this word (repeatable), beam decoder only")
    p.add_argument("--hotword-weight", type=float, default=10.0)
    p.add_argument("--beam-width", type=int, default=100)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--beta", type=float, default=1.5)
    p.add_argument("--workers", type=int, default=0, help="beam decoding processes")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--chunk-seconds", type=float, default=DEFAULT_CHUNK_SECONDS, help="0 disables chunking")
    p.add_argument("--context-seconds", type=float, default=DEFAULT_CHUNK_CONTEXT_SECONDS)
    p.add_argument("--json", action="store_true", help="JSON lines with words and timestamps")
    p.add_argument("--language", default=None, help="multi-language bundles: use this head, skip language ID")
    p.add_argument(
        "--lid-threshold", type=float, default=None, help="multi-language bundles: override the bundle's"
    )
    p.add_argument(
        "--below-threshold",
        choices=["all", "unknown"],
        default=None,
        help="multi-language bundles: below the threshold run all heads, or answer 'unknown'",
    )
    p.set_defaults(fn=_transcribe)

    p = sub.add_parser(
        "add-language", help="add a language head (trained on the bundle's backbone) to a bundle"
    )
    p.add_argument("bundle", type=Path)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--language", required=True)
    p.add_argument(
        "--lid-data", type=Path, default=None, help="speech of the new language, to retrain language ID"
    )
    p.add_argument("--no-verify", action="store_true")
    p.set_defaults(fn=_add_language)

    lm = sub.add_parser("lm", help="language models").add_subparsers(dest="lm_command", required=True)
    p = lm.add_parser("build", help="build a KenLM n-gram model with lmplz/build_binary")
    p.add_argument("text", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="LM.arpa or LM.bin")
    p.add_argument("--order", type=int, default=3)
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
    p.set_defaults(fn=_lm_build)

    import importlib

    from xlsr_edge.commands import COMMAND_MODULES

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _main_parser().parse_args(argv)
    return _run(args.fn, args)


if __name__ == "__main__":
    sys.exit(main())
