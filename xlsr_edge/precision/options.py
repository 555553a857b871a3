"""Precision facts shared by the exporter, the quantizers and the CLI: one place, no heavy imports."""

from __future__ import annotations

from xlsr_edge.errors import ExportError

PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8")
# engines the accuracy gate can run the converted graph on (the fp32 reference runs on onnxruntime)
GATE_BACKENDS = ("onnxruntime", "openvino")
CALIBRATION_METHODS = ("percentile", "entropy", "minmax")

# Op groups --quantize-ops understands: "MatMul" = MatMuls with a weight (transformer, feature projection);
# "Gemm"; "Attention" = the activation x activation MatMuls (scores, context); "FeatureEncoder" = CNN layers
# 1-6 exported as MatMuls (xlsr_edge.export.cnn_matmul); "Conv" = Conv nodes (ConvInteger: slow).
QUANTIZABLE_GROUPS = ("MatMul", "Gemm", "Attention", "FeatureEncoder", "Conv")
DEFAULT_QUANTIZE_GROUPS = ("MatMul", "Gemm")
# Node-name scope of the channels-last feature encoder in the exported graph (TorchScript exporter: module path).
FEATURE_ENCODER_SCOPE = "feature_extractor"
# Node-name patterns kept in float by default, and why. The feature projection reads the CNN's layer-normed
# output, whose outlier channels a per-tensor activation scale serves badly (measured on the demo model: frame
# agreement 0.9969 -> 0.9976, CER delta +0.41 -> +0.20 points), for ~0.2 % of XLS-R 300M's FLOPs.
DEFAULT_FLOAT_NODES = {
    "*lm_head*": "CTC head kept float",
    "*feature_projection*": "feature projection kept float",
}

DEFAULT_CALIBRATION_METHOD = "percentile"
DEFAULT_CALIBRATION_SIZE = 64
DEFAULT_PERCENTILE = 99.999
# Utterances longer than this are cropped (centre) for calibration: ranges need speech, not whole lectures.
CALIBRATION_MAX_SECONDS = 20.0


def wants_channels_last_cnn(options) -> bool:
    """FeatureEncoder quantization needs the CNN exported as MatMuls (xlsr_edge.export.cnn_matmul)."""
    return options.precision in ("int8", "int8-dynamic") and "FeatureEncoder" in options.quantize_ops


def check_options(o) -> None:
    """Validate the precision fields of ExportOptions (ExportError names the CLI flag)."""
    if o.precision not in PRECISIONS:
        raise ExportError(f"--precision must be one of {', '.join(PRECISIONS)}, got {o.precision!r}")
    if o.precision == "fp32":
        if o.calibration is not None:
            raise ExportError("--calibration applies to --precision fp16, int8-dynamic or int8, not fp32")
        return
    if o.calibration_size < 1:
        raise ExportError(f"--calibration-size must be at least 1, got {o.calibration_size}")
    if getattr(o, "gate_backend", "onnxruntime") not in GATE_BACKENDS:
        raise ExportError(f"--gate-backend must be one of {', '.join(GATE_BACKENDS)}, got {o.gate_backend!r}")
    if o.gate_size < 1:
        raise ExportError(f"--gate-size must be at least 1, got {o.gate_size}")
    if o.calibration_method not in CALIBRATION_METHODS:
        raise ExportError(
            f"--calibration-method must be one of {', '.join(CALIBRATION_METHODS)}, got {o.calibration_method!r}"
        )
    if not 0 <= o.min_frame_agreement <= 1:
        raise ExportError(f"--min-frame-agreement must be within [0, 1], got {o.min_frame_agreement}")
    if o.max_cer_delta != o.max_cer_delta:  # NaN
        raise ExportError("--max-cer-delta must be a number of CER points")
    bad = [g for g in o.quantize_ops if g not in QUANTIZABLE_GROUPS]
    if bad or not o.quantize_ops:
        raise ExportError(
            f"--quantize-ops: unknown {bad or 'empty list'}; choose from {', '.join(QUANTIZABLE_GROUPS)}"
        )
