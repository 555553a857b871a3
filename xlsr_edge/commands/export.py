"""`export-xlsr` / `xlsr-edge export`: checkpoint -> verified ONNX bundle (fp32, fp16, int8; multi-language;
optionally a TensorRT engine)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from xlsr_edge import limits
from xlsr_edge.commands.engine import add_engine_arguments
from xlsr_edge.constants import (
    DEFAULT_OPSET,
    EXIT_OK,
    PARITY_MAX_ABS_DIFF,
    PARITY_MIN_ARGMAX_AGREEMENT,
    PRECISION_GATE_SIZE,
    PRECISION_MAX_CER_DELTA,
    PRECISION_MIN_FRAME_AGREEMENT,
)
from xlsr_edge.errors import XlsrEdgeError, require
from xlsr_edge.precision.options import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_CALIBRATION_SIZE,
    DEFAULT_QUANTIZE_GROUPS,
    GATE_BACKENDS,
    PRECISIONS,
    QUANTIZABLE_GROUPS,
)

DESCRIPTION = (
    "Export a fine-tuned CTC speech checkpoint (XLS-R/Wav2Vec2, MMS, HuBERT, WavLM, Wav2Vec2-BERT, ...; a folder "
    "or a hub id) to a verified ONNX bundle."
)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The export options; the same for `export-xlsr` and `xlsr-edge export`."""
    ap.add_argument(
        "checkpoint",
        type=Path,
        nargs="?",
        help="Hugging Face checkpoint folder of any *ForCTC audio model (Wav2Vec2/XLS-R/MMS, Wav2Vec2-Conformer, "
        "HuBERT, WavLM, Data2Vec-Audio, UniSpeech(-SAT), SEW(-D), Wav2Vec2-BERT), or a hub id org/name[@revision] "
        "(fetched into the Hugging Face cache; HF_HUB_OFFLINE=1 uses the cache only)",
    )
    ap.add_argument(
        "--target-lang",
        default=None,
        metavar="LANG",
        help="MMS: the language of a vocab.json with one vocabulary per language (and its adapter.LANG.safetensors)",
    )
    ap.add_argument("-o", "--output", type=Path, required=True, help="bundle folder to write")
    ap.add_argument("--opset", type=limits.int_in(1, 99), default=DEFAULT_OPSET)
    ap.add_argument(
        "--max-batch",
        type=limits.int_in(1, limits.MAX_BATCH),
        default=None,
        help="largest batch the deployment will use",
    )
    ap.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    ap.add_argument("--no-verify", action="store_true", help="skip the parity gate (not recommended)")
    ap.add_argument(
        "--verify-audio", type=Path, default=None, help="folder or manifest of speech for the gate"
    )
    ap.add_argument("--allow-pickle", action="store_true", help="accept pytorch_model.bin (runs pickle code)")
    ap.add_argument(
        "--max-abs-diff",
        type=limits.positive_float(1e6),
        default=PARITY_MAX_ABS_DIFF,
        help="gate: max |logit diff|",
    )
    ap.add_argument(
        "--min-agreement",
        type=limits.float_in(0.0, 1.0),
        default=PARITY_MIN_ARGMAX_AGREEMENT,
        help="gate: frame argmax agreement",
    )
    _add_precision_arguments(ap)
    ap.add_argument(
        "--engine", choices=["onnx", "trt"], default="onnx", help="trt: also build a TensorRT engine"
    )
    add_engine_arguments(ap)
    _add_multi_arguments(ap)
    ap.set_defaults(fn=_export)


def _add_precision_arguments(ap: argparse.ArgumentParser) -> None:
    """--precision and its calibration / accuracy-gate options."""
    q = ap.add_argument_group("precision (fp16 / int8 bundles with an accuracy gate against fp32)")
    q.add_argument(
        "--precision",
        choices=PRECISIONS,
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
    q.add_argument(
        "--calibration-size",
        type=limits.int_in(1, 1_000_000),
        default=DEFAULT_CALIBRATION_SIZE,
        metavar="N",
        help="utterances for int8 ranges",
    )
    q.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default=DEFAULT_CALIBRATION_METHOD)
    q.add_argument(
        "--max-cer-delta",
        type=limits.float_in(-100.0, 100.0),
        default=PRECISION_MAX_CER_DELTA,
        metavar="PTS",
        help="gate: CER percentage points the converted graph may add over fp32 (transcribed manifests)",
    )
    q.add_argument(
        "--min-frame-agreement",
        type=limits.float_in(0.0, 1.0),
        default=PRECISION_MIN_FRAME_AGREEMENT,
        metavar="F",
        help="gate without transcripts: frame argmax agreement with the fp32 graph",
    )
    q.add_argument(
        "--gate-size",
        type=limits.int_in(1, 1_000_000),
        default=PRECISION_GATE_SIZE,
        metavar="N",
        help="utterances the gate decodes",
    )
    q.add_argument(
        "--gate-backend",
        choices=GATE_BACKENDS,
        default="onnxruntime",
        help="engine that runs the converted graph in the gate (openvino: with the CPU's precision hint, "
        "bf16 on AVX512-BF16/AMX; the fp32 reference always runs on onnxruntime)",
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
        default=list(DEFAULT_QUANTIZE_GROUPS),
        choices=QUANTIZABLE_GROUPS,
        metavar="GROUP",
        help="what int8 quantizes: MatMul (weights), Gemm, Attention (score/context MatMuls), FeatureEncoder "
        "(CNN layers 1-6 exported as MatMuls: faster on CPU), Conv (ConvInteger: slow, not recommended)",
    )
    q.add_argument("--seed", type=limits.seed(), default=0, help="calibration/gate utterance selection")


def _add_multi_arguments(ap: argparse.ArgumentParser) -> None:
    """--multi: one frozen backbone with a head per language, and language ID."""
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


def _threshold(value: str) -> float | None:
    """--lid-threshold: a probability, or 'auto' (None: calibrated on the held-out --lid-data split)."""
    if value.strip().lower() == "auto":
        return None
    try:
        float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a probability or 'auto', got {value!r}") from None
    return limits.float_in(0.0, 1.0, hint="a probability, or 'auto'")(value)


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


def require_export_extra() -> None:
    """Exporting needs PyTorch, transformers and onnx (the [export] extra, which a plain `pip install xlsr-edge`
    leaves out): one `error:` line naming the extra, not an import traceback."""
    for module in ("torch", "transformers", "onnx"):
        require(
            module, "export", "export-xlsr converts PyTorch checkpoints; running bundles needs none of it"
        )


def _export(args: argparse.Namespace) -> int:
    require_export_extra()
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
        gate_backend=args.gate_backend,
        exclude_ops=tuple(args.exclude_ops),
        quantize_ops=tuple(args.quantize_ops),
        seed=args.seed,
        target_lang=args.target_lang,
    )
    if args.multi and args.target_lang:
        raise XlsrEdgeError(
            "--multi names each language as LANG=CKPT (an MMS checkpoint's LANG); drop --target-lang"
        )
    if args.multi:
        return _export_multi(args, options)
    if args.checkpoint is None:
        raise XlsrEdgeError("give a CHECKPOINT folder (or --multi LANG=CKPT ...)")
    if args.engine == "trt":
        return _export_with_engine(args, options)
    manifest = export_bundle(args.checkpoint, args.output, options)
    p = manifest.parity or {}
    # name the graphs: parity compares the fp32 export with PyTorch, the precision gate the converted graph
    # with that fp32 export; neither figure is about the other pair
    compared = "fp32 graph vs PyTorch" + (
        f", before conversion to {manifest.precision}" if manifest.precision != "fp32" else ""
    )
    gate = "skipped" if "skipped" in p else f"passed (max |diff| {p['vs_pytorch']['max_abs_diff']:.2e})"
    print(
        f"wrote {args.output}: {manifest.precision}, opset {manifest.opset}, parity gate ({compared}) {gate}"
    )
    report = manifest.extra.get("precision_report")
    if report:
        from xlsr_edge.precision.convert import format_report

        for line in format_report(report):
            print(f"  {line}")
    return EXIT_OK


def _export_with_engine(args: argparse.Namespace, options) -> int:
    """Export, then build the TensorRT engine into the bundle; refuse at once when TensorRT/GPU are missing."""
    from xlsr_edge.commands.engine import build_options
    from xlsr_edge.export import export_bundle
    from xlsr_edge.runtime.tensorrt import build_engine, current_device, describe

    if args.multi:
        raise XlsrEdgeError("--engine trt is not supported with --multi yet")
    build = build_options(args, args.max_batch)
    device = current_device()  # before any export work: nothing is written when this fails
    sidecars: list[dict] = []
    # the engine is built inside the new bundle before it replaces -o: a failed build leaves what was there
    export_bundle(
        args.checkpoint,
        args.output,
        options,
        finish=lambda tmp: sidecars.append(build_engine(tmp, build, device)),
    )
    sidecar = sidecars[0]
    print(f"wrote {args.output}: {describe(sidecar)}, engine built in {sidecar['build_seconds']} s")
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add `xlsr-edge export` (the same command as `export-xlsr`)."""
    add_arguments(
        sub.add_parser(
            "export", help="export a checkpoint to a verified ONNX bundle", description=DESCRIPTION
        )
    )
