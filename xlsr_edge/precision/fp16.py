"""Mixed fp16 graphs for GPUs: onnxconverter-common's converter with a block list; graph IO stays fp32.

LayerNormalization overflows in fp16 (TensorRT warns and the variance saturates on long utterances), Softmax
and the reductions lose too much; they stay fp32 with Casts around them. The graph inputs and outputs keep
their types (``keep_io_types``), so the runtime feeds and reads float32 exactly as for fp32 bundles.
fp16 on onnxruntime's CPU provider is slower than fp32 (extra Casts, no fp16 GEMM): it is for GPUs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xlsr_edge.errors import ExportError, require
from xlsr_edge.precision.graph import fold_initializer_identities, save_graph
from xlsr_edge.precision.selection import split_excludes

# Kept fp32 (plus onnxconverter-common's own default list: Range, CumSum, Resize, TopK, ...).
FP16_BLOCKED_OPS = (
    "LayerNormalization",
    "InstanceNormalization",  # the group norm of base (non-XLS-R) feature encoders
    "GroupNormalization",
    "Softmax",
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL2",
    "ReduceLogSumExp",
    "Pow",
    "Sqrt",
    "Reciprocal",
)


def convert_fp16(src: Path, dst: Path, *, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Write the fp16 graph of ``src`` to ``dst``. ``exclude``: more op types or node-name patterns kept fp32."""
    import fnmatch
    import warnings

    onnx = require("onnx", "export")
    float16 = require("onnxconverter_common.float16", "export", "fp16 conversion")

    model = onnx.load(str(src), load_external_data=True)
    folded = fold_initializer_identities(model)
    op_types = {n.op_type for n in model.graph.node}
    ops, patterns = split_excludes(exclude, op_types)
    blocked_ops = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP16_BLOCKED_OPS) | ops)
    blocked_nodes = [
        n.name for n in model.graph.node if any(fnmatch.fnmatchcase(n.name, p) for p in patterns)
    ]
    # Cast-to-float nodes (e.g. the mask/lengths path of group-norm models) keep their `to` attribute while the
    # converter retypes their outputs to fp16, which onnxruntime refuses: keep them fp32 with Casts around them.
    casts = [
        n.name
        for n in model.graph.node
        if n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)
    ]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one "truncated to 1e-07" warning per tiny weight
            converted = float16.convert_float_to_float16(
                model,
                keep_io_types=True,
                op_block_list=blocked_ops,
                node_block_list=blocked_nodes + casts,
                # clip constants into fp16 range (the attention mask's finfo(float32).min becomes -1e4)
                max_finite_val=1e4,
                # graphs > 2 GB cannot go through onnx.shape_inference in memory
                disable_shape_infer=sum(len(t.raw_data) for t in model.graph.initializer) > 1_800_000_000,
            )
    except Exception as exc:  # the converter raises ValueError/RuntimeError/onnx errors
        raise ExportError(f"fp16 conversion failed: {exc}") from exc
    save_graph(converted, dst)
    return {
        "method": "onnxconverter-common convert_float_to_float16 (keep_io_types)",
        "kept_float32_op_types": [o for o in blocked_ops if o in op_types],
        "kept_float32_nodes": len(blocked_nodes),
        "identity_nodes_folded": folded,
        "io": "float32 (Cast at the graph edges)",
    }
