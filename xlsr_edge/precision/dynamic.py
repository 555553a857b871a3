"""Dynamic INT8 (onnxruntime ``quantize_dynamic``): int8 weights per output channel, uint8 activations quantized
per call. The fast CPU path: no calibration data needed.

The int8-dynamic bundle is onnxruntime's format, so its attention cores are also fused into onnxruntime's
``MultiHeadAttention`` (``graph.fuse_attention``, padding mask kept): measured on the XLS-R 300M shape, see
docs/precision.md."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xlsr_edge.constants import EXTERNAL_DATA_THRESHOLD
from xlsr_edge.errors import ExportError
from xlsr_edge.precision.graph import (
    fuse_attention,
    graph_bytes,
    iter_graph_files,
    ort_quantization,
    preprocess,
    prune_unused,
    quiet,
    save_graph,
)
from xlsr_edge.precision.options import DEFAULT_QUANTIZE_GROUPS
from xlsr_edge.precision.selection import select_nodes

WEIGHT_TYPES = ("int8", "uint8")  # onnxruntime's u8s8 and u8u8 kernels


def quantize_int8_dynamic(
    src: Path,
    dst: Path,
    *,
    quantize_groups: Sequence[str] = DEFAULT_QUANTIZE_GROUPS,
    exclude: Sequence[str] = (),
    per_channel: bool = True,
    fused_attention: bool = True,
    weight_type: str = "int8",
    reduce_range: bool = False,
) -> dict[str, Any]:
    """Dynamic INT8: int8 weights (per output channel), uint8 activations quantized at run time; then (with
    ``fused_attention``) one MultiHeadAttention node per layer for the score/softmax/context part.

    ``weight_type`` "uint8" gives onnxruntime's u8u8 kernels, ``reduce_range`` 7-bit weights: the two ways
    around the int16 saturation of its u8s8 kernel on x86 CPUs without VNNI (AVX2, AVX512BW); with VNNI,
    AMX or ARM dot products the default (int8, full range) is exact (xlsr_edge.optimize.candidates)."""
    if weight_type not in WEIGHT_TYPES:
        raise ExportError(f"weight_type must be one of {', '.join(WEIGHT_TYPES)}, got {weight_type!r}")
    import onnx

    q = ort_quantization()
    work = Path(tempfile.mkdtemp(prefix="xlsr-int8d-", dir=dst.parent))
    try:
        pre = work / "pre.onnx"
        fused = preprocess(src, pre)
        sel = select_nodes(onnx.load(str(pre), load_external_data=False), quantize_groups, exclude)
        try:
            with quiet():
                q.quantize_dynamic(
                    str(pre),
                    str(dst),
                    op_types_to_quantize=sorted(
                        {"MatMul" if g in ("Attention", "FeatureEncoder") else g for g in quantize_groups}
                    ),
                    per_channel=per_channel,
                    reduce_range=reduce_range,
                    weight_type=q.QuantType.QInt8 if weight_type == "int8" else q.QuantType.QUInt8,
                    nodes_to_quantize=sel.quantize,
                    use_external_data_format=graph_bytes(pre) > EXTERNAL_DATA_THRESHOLD,
                    extra_options={"MatMulConstBOnly": "Attention" not in quantize_groups},
                )
        except Exception as exc:
            raise ExportError(f"onnxruntime dynamic quantization failed: {exc}") from exc
        model = onnx.load(str(dst))
        attention = fuse_attention(model) if fused_attention else 0
        # what the quantizer left unread: onnxruntime would warn about each initializer on every load
        if attention or prune_unused(model.graph):
            for f in iter_graph_files(dst):
                f.unlink()
            save_graph(model, dst)
        del model
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "method": "onnxruntime quantize_dynamic",
        "weights": ("int8 symmetric, " if weight_type == "int8" else "uint8, ")
        + ("per output channel" if per_channel else "per tensor")
        + (", 7-bit range (reduce_range)" if reduce_range else ""),
        "activations": "uint8, range computed per call (DynamicQuantizeLinear)",
        "quantized_groups": dict(sel.groups),
        "kept_float_nodes": sel.kept_summary(),
        "matmuls_fused": fused,
        "attention_fused": attention,
    }
