"""export_bundle: checkpoint -> ONNX -> parity gate -> bundle folder, written atomically."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from xlsr_edge import __version__
from xlsr_edge.bundle import BundleManifest, write_manifest
from xlsr_edge.constants import (
    DEFAULT_OPSET,
    MIN_OPSET,
    MODEL_ONNX,
    PRECISION_GATE_SIZE,
    PRECISION_MAX_CER_DELTA,
    PRECISION_MIN_FRAME_AGREEMENT,
)
from xlsr_edge.errors import ExportError
from xlsr_edge.export.checkpoint import inspect_checkpoint, load_model
from xlsr_edge.export.cnn_matmul import channels_last_feature_encoder
from xlsr_edge.export.onnx_export import export_onnx
from xlsr_edge.export.parity import ParityThresholds, run_parity, verification_audio
from xlsr_edge.outputs import BUNDLE, atomic_output, check_output
from xlsr_edge.precision.convert import convert_precision, load_precision_inputs
from xlsr_edge.precision.options import check_options, wants_channels_last_cnn
from xlsr_edge.progress import Stages


@dataclass(frozen=True)
class ExportOptions:
    opset: int = DEFAULT_OPSET
    max_batch: int | None = None
    overwrite: bool = False
    verify: bool = True
    verify_audio: Path | None = None
    allow_pickle: bool = False
    thresholds: ParityThresholds = field(default_factory=ParityThresholds)
    # precision (issue 7): fp32 | fp16 | int8-dynamic | int8, see xlsr_edge.precision.convert
    precision: str = "fp32"
    calibration: Path | None = None  # manifest or folder; default: the shipped clips (transcribed)
    calibration_size: int = 64
    calibration_method: str = "percentile"  # int8: percentile | entropy | minmax
    max_cer_delta: float = PRECISION_MAX_CER_DELTA
    min_frame_agreement: float = PRECISION_MIN_FRAME_AGREEMENT
    gate_size: int = PRECISION_GATE_SIZE
    gate_backend: str = "onnxruntime"  # runs the converted graph in the accuracy gate (| openvino)
    exclude_ops: tuple[str, ...] = ()  # op types or node-name patterns kept float
    quantize_ops: tuple[str, ...] = ("MatMul", "Gemm")  # + Attention, FeatureEncoder, Conv
    seed: int = 0
    target_lang: str | None = None  # MMS: the language of a per-language vocab.json (--target-lang)

    def __post_init__(self) -> None:
        if self.opset < MIN_OPSET:
            raise ExportError(
                f"--opset {self.opset} is too old; xlsr-edge needs opset >= {MIN_OPSET} (LayerNormalization)"
            )
        if self.max_batch is not None and self.max_batch < 1:
            raise ExportError("--max-batch must be at least 1")
        check_options(self)


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"xlsr-edge": __version__, "python": sys.version.split()[0]}
    for dist in ("torch", "transformers", "onnx", "onnxruntime"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def bundle_manifest(
    ckpt,
    precision: str,
    opset: int,
    facts: dict,
    parity: dict | None,
    precision_report: dict | None = None,
    max_batch: int | None = None,
    source: dict | None = None,
) -> BundleManifest:
    """The manifest of a single-model bundle whose graph is ``model.onnx`` (``parity`` None: --no-verify;
    ``source``: ``ckpt.digest()`` when the caller already has it, hashing a 300M checkpoint takes seconds)."""
    info = ckpt.info
    return BundleManifest(
        model=info,
        precision=precision,
        opset=opset,
        graph=MODEL_ONNX,
        source=source or ckpt.digest(),
        versions=library_versions(),
        parity=parity if parity is not None else {"skipped": "--no-verify"},
        extra={
            "export": facts,
            "max_batch": max_batch,
            "padding": "padded batches with attention_mask"
            if info.uses_attention_mask
            else "feed unpadded: batches of equal lengths only (no attention mask in the feature extractor)",
            **({"precision_report": precision_report} if precision_report else {}),
        },
    )


def export_bundle(
    checkpoint: str | Path,
    out: str | Path,
    options: ExportOptions = ExportOptions(),
    finish: Callable[[Path], object] | None = None,
) -> BundleManifest:
    """Export a checkpoint folder to a verified bundle. Raises XlsrEdgeError; never leaves a partial bundle.

    `finish(folder)` runs on the complete bundle before it replaces `out` (the TensorRT engine is built there):
    when it fails, whatever was at `out` before stays.
    """
    out = Path(out)
    protect = [("the checkpoint", Path(checkpoint))]
    # before any work: never the checkpoint itself, never a folder of someone else's files
    check_output(out, BUNDLE, overwrite=options.overwrite, protect=protect)
    stage = Stages("export")
    ckpt = inspect_checkpoint(checkpoint, allow_pickle=options.allow_pickle, target_lang=options.target_lang)
    info = ckpt.info
    # read the gate's audio first: a bad --verify-audio should fail before minutes of export
    audios = verification_audio(options.verify_audio, info.sample_rate) if options.verify else []
    precision_inputs = None
    if options.precision != "fp32":  # likewise a bad --calibration manifest
        precision_inputs = load_precision_inputs(options, info)
    stage(
        f"loading checkpoint {ckpt.folder} ({info.model_type}, {len(info.vocab)} tokens, "
        f"feat_extract_norm={info.feat_extract_norm})"
    )
    model = load_model(ckpt)
    with atomic_output(out, BUNDLE, overwrite=options.overwrite, protect=protect) as tmp:
        stage(f"exporting ONNX (opset {options.opset})")
        with channels_last_feature_encoder(model) if wants_channels_last_cnn(options) else nullcontext():
            facts = export_onnx(model, info, tmp / MODEL_ONNX, options.opset)
        parity = None
        if options.verify:
            stage(f"parity gate on {len(audios)} utterances")
            parity = run_parity(model, tmp / MODEL_ONNX, info, audios, options.thresholds)
            parity["audio_source"] = str(options.verify_audio or "shipped clips")
            if not parity["passed"]:
                raise ExportError("parity gate failed, no bundle written: " + "; ".join(parity["failures"]))
        precision_report = None
        if precision_inputs is not None:
            # parity above checked the fp32 graph; now convert it and gate the result against it
            if parity is not None:
                parity["graph"] = f"fp32 export, before conversion to {options.precision}"
            stage(f"converting to {options.precision} (with its accuracy gate)")
            precision_report = convert_precision(tmp / MODEL_ONNX, tmp, info, options, precision_inputs)
        manifest = bundle_manifest(
            ckpt, options.precision, options.opset, facts, parity, precision_report, options.max_batch
        )
        stage("writing bundle.json (hashing the files)")
        write_manifest(tmp, manifest)
        if finish is not None:
            finish(tmp)
    stage(f"wrote {out}")
    return manifest
