"""Graph rewrites and facts for the precision passes (onnx and onnxruntime.quantization, imported lazily).

* ``fold_initializer_identities``: the exporter's Identity-of-initializer nodes become plain initializers
  (fp16 conversion needs one type per tensor);
* ``fuse_parallel_matmuls``: the q/k/v projections become one MatMul (+ bias Add) + Split, so one bigger int8
  GEMM runs and onnxruntime can fuse the static Q/DQ MatMuls into MatMulIntegerToFloat;
* ``shapes_read_float``: Shape nodes read the float tensor, not its DequantizeLinear (same reason);
* ``prune_unused``: nodes and initializers nothing reads are dropped (onnxruntime warns about each on load);
* ``fuse_attention``: each layer's score/softmax/context subgraph becomes one onnxruntime ``MultiHeadAttention``
  (com.microsoft) with the padding mask kept as its ``attention_bias`` (int8-dynamic, the onnxruntime format);
* ``preprocess``: onnxruntime's ``quant_pre_process`` followed by the fusion;
* ``op_summary``: which compute ops run quantized, fp16 or fp32 (for bundle.json and ``inspect``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xlsr_edge.constants import EXTERNAL_DATA_THRESHOLD
from xlsr_edge.errors import ExportError, require

QUANTIZED_OP_TYPES = {
    "DynamicQuantizeLinear",
    "QuantizeLinear",
    "DequantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "QLinearMatMul",
    "QLinearConv",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
}
COMPUTE_OP_TYPES = ("MatMul", "Gemm", "Conv", "LayerNormalization", "Softmax", "MultiHeadAttention")


def ort_quantization():
    require("onnxruntime", "export")
    require("onnx", "export")
    import onnxruntime.quantization as q

    return q


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """onnxruntime's quantizer print()s progress and logs 'consider pre-processing' warnings: keep the CLI's
    stderr to our own progress lines (errors still raise)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def fold_initializer_identities(model) -> int:
    """Replace each Identity node that reads an initializer by its own copy of that initializer.

    The exporter deduplicates equal weights (e.g. LayerNorm weights that are all ones) into one initializer
    read through Identity nodes. onnxruntime refuses onnxconverter-common's fp16 output of such graphs, and
    folding them into one shared initializer is no better: a tensor shared by a blocked (fp32) op and an fp16
    op cannot have one type. Copies are small (norm weights, biases). Returns how many were replaced.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    keep, added = [], []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            arr = numpy_helper.to_array(inits[node.input[0]])
            added.append(numpy_helper.from_array(arr, node.output[0]))
        else:
            keep.append(node)
    if not added:
        return 0
    del graph.node[:]
    graph.node.extend(keep)
    graph.initializer.extend(added)
    return len(added)


def save_graph(model, path: Path, data_name: str | None = None) -> bool:
    """Save as one file when the weights fit in a protobuf, else with one external data file. True if external."""
    import onnx

    path = Path(path)
    weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    if weight_bytes <= EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(model, str(path))
        return False
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_name or path.name + ".data",
    )
    return True


def graph_bytes(path: Path) -> int:
    """Size of a graph file plus the external data files it names."""
    path = Path(path)
    total = path.stat().st_size
    for extra in path.parent.glob(path.name + ".data"):
        total += extra.stat().st_size
    data = path.parent / "model.onnx.data"
    if path.name == "model.onnx" and data.is_file():
        total += data.stat().st_size
    return total


def iter_graph_files(path: Path) -> list[Path]:
    path = Path(path)
    return [path, *path.parent.glob(path.name + ".data")]


def fuse_parallel_matmuls(model) -> int:
    """One MatMul (+ Split) for MatMuls that read the same input with constant weights (q/k/v projections).

    Same maths (weight columns concatenated, per-channel quantization stays per column), one bigger GEMM, and
    one consumer per quantized input: onnxruntime fuses DequantizeLinear -> MatMul into MatMulIntegerToFloat
    only when the DequantizeLinear feeds that MatMul alone (and it merges duplicated Q/DQ pairs back into one).
    The fused node is named after its members joined by "+", so --exclude-ops patterns still match it. When
    every member feeds one Add of a constant bias, the biases are concatenated too and added before the Split
    (one Add that onnxruntime folds into DynamicQuantizeMatMul, instead of three after it).
    Returns how many MatMuls were merged away.
    """
    import numpy as np_
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    groups: dict[str, list] = {}
    for node in graph.node:
        w = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        if w is not None and len(w.dims) == 2 and w.data_type == 1 and node.input[0] not in inits:
            groups.setdefault(node.input[0], []).append(node)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)

    def bias_add(node, width: int):
        """The Add of a constant [width] bias that alone reads ``node``'s output, or None."""
        users = consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "Add":
            return None
        other = [i for i in users[0].input if i != node.output[0]]
        b = inits.get(other[0]) if len(other) == 1 else None
        return users[0] if b is not None and list(b.dims) == [width] and b.data_type == 1 else None

    fused = 0
    replace: dict[int, list] = {}
    index = {id(n): i for i, n in enumerate(graph.node)}
    for source, nodes in groups.items():
        if len(nodes) < 2 or len({inits[n.input[1]].dims[0] for n in nodes}) != 1:
            continue
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
        adds = [bias_add(n, w.shape[1]) for n, w in zip(nodes, weights)]
        with_bias = all(a is not None for a in adds)
        name = "+".join(n.name for n in nodes)
        w_name = f"{nodes[0].input[1]}__fused{fused}"
        split_name = f"{w_name}__split"
        graph.initializer.append(numpy_helper.from_array(np_.concatenate(weights, axis=1), w_name))
        sizes = np_.array([w.shape[1] for w in weights], dtype=np_.int64)
        graph.initializer.append(numpy_helper.from_array(sizes, split_name))
        joined = f"{nodes[0].output[0]}__fused"
        new = [helper.make_node("MatMul", [source, w_name], [joined], name=name)]
        outputs = [n.output[0] for n in nodes]
        if with_bias:
            biases = [numpy_helper.to_array(inits[next(i for i in a.input if i in inits)]) for a in adds]
            b_name = f"{w_name}__bias"
            graph.initializer.append(numpy_helper.from_array(np_.concatenate(biases), b_name))
            new.append(helper.make_node("Add", [joined, b_name], [joined + "_biased"], name=name + "/Add"))
            joined, outputs = joined + "_biased", [a.output[0] for a in adds]
        new.append(helper.make_node("Split", [joined, split_name], outputs, name=name + "/Split", axis=-1))
        replace[min(index[id(n)] for n in nodes)] = new
        for n in nodes + (adds if with_bias else []):
            replace.setdefault(index[id(n)], [])
        fused += len(nodes) - 1
    if not fused:
        return 0
    out = []
    for i, node in enumerate(graph.node):
        out.extend(replace[i] if i in replace else [node])
    del graph.node[:]
    graph.node.extend(out)
    prune_unused(graph)
    return fused


def _reads(node) -> Iterator[str]:
    """Every tensor name a node reads, also from inside its subgraphs (If/Loop bodies read outer names)."""
    yield from node.input
    for a in node.attribute:
        for g in [a.g] if a.HasField("g") else list(a.graphs):
            for inner in g.node:
                yield from _reads(inner)


def prune_unused(graph) -> int:
    """Drop nodes whose outputs nothing reads and initializers no node reads (left behind by the fusions and
    the quantizer). onnxruntime removes them itself on every load, with a warning per initializer on stderr
    ("CleanUnusedInitializersAndNodeArgs ... Removing initializer"). Returns how many entries were removed."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):  # a topologically sorted graph: readers come after what they read
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(_reads(node))
    inits = [t for t in graph.initializer if t.name in needed]
    removed = len(graph.node) - len(keep) + len(graph.initializer) - len(inits)
    if removed:
        del graph.node[:]
        graph.node.extend(reversed(keep))
        del graph.initializer[:]
        graph.initializer.extend(inits)
    return removed


def _const_array(name: str, inits: dict, producers: dict):
    """The value of an initializer or Constant node output, else None."""
    from onnx import numpy_helper

    if name in inits:
        return numpy_helper.to_array(inits[name])
    node = producers.get(name)
    if (
        node is not None
        and node.op_type == "Constant"
        and node.attribute
        and node.attribute[0].name == "value"
    ):
        return numpy_helper.to_array(node.attribute[0].t)
    return None


def _perm(node) -> list[int]:
    return [list(a.ints) for a in node.attribute if a.name == "perm"][0] if node.attribute else []


def fuse_attention(model) -> int:
    """Replace each self-attention core by one ``com.microsoft.MultiHeadAttention`` node (onnxruntime).

    Matched (the exporter's eager attention; the projections before it and out_proj after it stay as they are,
    int8 included)::

        q, k, v [B, T, H*D] -> Reshape [B, T, H, D] -> Transpose (q, v: 0213; k: 0231)
        scores = MatMul(q, k) * scale + mask_bias   (mask_bias [B, 1, T, T]: 0 or -inf-like for padded keys)
        context = MatMul(Softmax(scores), v) -> Transpose 0213 -> Reshape [B, T, H*D]

    becomes ``MultiHeadAttention(q, k, v, attention_bias=mask_bias, num_heads=H, scale=scale)``: the padding mask
    is kept, so a padded batch still gives each clip's own result. One kernel instead of ~12 nodes and their
    [B, H, T, T] intermediates. H comes from the head size in the Reshape target and the projection width.
    Returns how many layers were fused.
    """
    import numpy as np_
    from onnx import helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)

    def scalar(name: str) -> float | None:
        a = _const_array(name, inits, producers)
        return None if a is None or a.size != 1 else float(a.reshape(-1)[0])

    def only_consumer(name: str, op_type: str):
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None

    def width(name: str) -> int | None:
        """Last-axis size of a projection output: its bias Add, Split sizes or weight columns."""
        node = producers.get(name)
        for _ in range(4):
            if node is None:
                return None
            if node.op_type == "Add":
                bias = [inits[i] for i in node.input if i in inits and len(inits[i].dims) == 1]
                if bias:
                    return int(bias[0].dims[0])
                ups = [producers.get(i) for i in node.input if i not in inits]
                node = next(
                    (u for u in ups if u is not None and u.op_type not in ("Constant", "Identity")), None
                )
            elif node.op_type == "Split" and len(node.input) > 1:
                sizes = _const_array(node.input[1], inits, producers)
                return None if sizes is None else int(np_.asarray(sizes)[list(node.output).index(name)])
            elif len(node.input) > 1 and node.input[1] in inits:
                return int(inits[node.input[1]].dims[-1])
            else:
                return None
        return None

    fused: dict[int, Any] = {}  # id(final Reshape) -> MultiHeadAttention node
    removed: set[int] = set()
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        add = producers.get(softmax.input[0])
        if add is None or add.op_type != "Add":
            continue
        scaled = [(producers.get(i), j) for i, j in zip(add.input, reversed(add.input))]
        scaled = [(m, bias) for m, bias in scaled if m is not None and m.op_type in ("Mul", "Div")]
        if len(scaled) != 1:
            continue
        mul, bias = scaled[0]
        factor = scalar(mul.input[1])
        scores = producers.get(mul.input[0])
        if factor is None or factor == 0 or scores is None or scores.op_type != "MatMul":
            continue
        scale = factor if mul.op_type == "Mul" else 1.0 / factor
        context = only_consumer(softmax.output[0], "MatMul")
        if context is None or context.input[0] != softmax.output[0]:
            continue
        qt, kt, vt = (producers.get(i) for i in (scores.input[0], scores.input[1], context.input[1]))
        if not all(t is not None and t.op_type == "Transpose" for t in (qt, kt, vt)):
            continue
        if (_perm(qt), _perm(kt), _perm(vt)) != ([0, 2, 1, 3], [0, 2, 3, 1], [0, 2, 1, 3]):
            continue
        rq, rk, rv = (producers.get(t.input[0]) for t in (qt, kt, vt))
        if not all(r is not None and r.op_type == "Reshape" for r in (rq, rk, rv)):
            continue
        back = only_consumer(context.output[0], "Transpose")
        if back is None or _perm(back) != [0, 2, 1, 3]:
            continue
        out = only_consumer(back.output[0], "Reshape")
        target = producers.get(rq.input[1])
        if out is None or target is None or target.op_type != "Concat" or len(target.input) != 4:
            continue
        head_size = scalar(target.input[3])
        heads = scalar(target.input[2])
        if heads is None or heads <= 0:  # Reshape to (B, T, -1, D): H from the projection width
            hidden = width(rq.input[0])
            heads = hidden / head_size if hidden and head_size else None
        if not heads or heads != int(heads):
            continue
        chain = [rq, rk, rv, qt, kt, vt, scores, mul, add, softmax, context, back]
        if any(len(consumers.get(n.output[0], [])) != 1 for n in chain):
            continue
        fused[id(out)] = helper.make_node(
            "MultiHeadAttention",
            [rq.input[0], rk.input[0], rv.input[0], "", "", bias],
            [out.output[0]],
            name=softmax.name.rsplit("/", 1)[0] + "/MultiHeadAttention",
            domain="com.microsoft",
            num_heads=int(heads),
            scale=float(scale),
        )
        removed.update(id(n) for n in chain)
    if not fused:
        return 0
    nodes = [fused.get(id(n), n) for n in graph.node if id(n) not in removed]
    del graph.node[:]
    graph.node.extend(nodes)
    prune_unused(graph)  # the scale constants and Reshape targets of the fused cores
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(fused)


def shapes_read_float(model) -> int:
    """Point Shape nodes that read a DequantizeLinear(QuantizeLinear(x)) at x itself.

    onnxruntime's static quantizer rewires every consumer of a quantized tensor, Shape included; the
    DequantizeLinear then has two consumers, and onnxruntime does not fuse it into MatMulIntegerToFloat (the
    MatMul stays float with weights dequantized on every call: no faster than fp32). Same values, same graph
    for TensorRT. Returns how many Shape nodes were changed.
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Shape":
            continue
        dq = producers.get(node.input[0])
        q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            node.input[0] = q.input[0]
            changed += 1
    return changed


def preprocess(src: Path, dst: Path) -> int:
    """onnxruntime's quant_pre_process (onnx shape inference + basic graph optimization, which folds the
    exporter's Identity/constant subgraphs; symbolic shape inference fails on this graph, so it is skipped),
    then ``fuse_parallel_matmuls``. Returns how many MatMuls were fused away."""
    import onnx

    ort_quantization()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    big = graph_bytes(src) > EXTERNAL_DATA_THRESHOLD
    try:
        with quiet():
            quant_pre_process(
                str(src),
                str(dst),
                skip_symbolic_shape=True,
                save_as_external_data=big,
                all_tensors_to_one_file=True,
                external_data_location=dst.name + ".data",
            )
    except Exception as exc:  # onnxruntime raises many types here
        raise ExportError(f"quantization pre-processing failed: {exc}") from exc
    model = onnx.load(str(dst))
    fused = fuse_parallel_matmuls(model)
    if fused:
        for f in iter_graph_files(dst):
            f.unlink()
        save_graph(model, dst)
    return fused


def op_summary(path: Path) -> dict[str, Any]:
    """What a graph computes in which precision: counts of quantization ops, quantized and float compute ops."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    nodes = list(graph.node)
    producers = {o: n for n in nodes for o in n.output}
    types = Counter(n.op_type for n in nodes)
    quantized: Counter = Counter()
    float_ops: Counter = Counter()
    fp16_ops: Counter = Counter()
    value_types = {vi.name: vi.type.tensor_type.elem_type for vi in graph.value_info}
    value_types.update({i.name: i.data_type for i in graph.initializer})
    for n in nodes:
        if n.op_type in ("MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv"):
            quantized[n.op_type.replace("Integer", "").replace("QLinear", "")] += 1
        elif n.op_type in COMPUTE_OP_TYPES:
            fed = [producers.get(i) for i in n.input[:2]]
            if (
                n.op_type in ("MatMul", "Gemm", "Conv")
                and all(p is not None and p.op_type == "DequantizeLinear" for p in fed if p is not None)
                and any(p is not None and p.op_type == "DequantizeLinear" for p in fed)
            ):
                quantized[n.op_type] += 1
            elif value_types.get(n.input[0]) == onnx.TensorProto.FLOAT16:
                fp16_ops[n.op_type] += 1
            else:
                float_ops[n.op_type] += 1
    init_types = Counter(onnx.TensorProto.DataType.Name(i.data_type) for i in graph.initializer)
    out = {
        "quantized": dict(sorted(quantized.items())),
        "float32": dict(sorted(float_ops.items())),
        "quantization_nodes": {t: types[t] for t in sorted(QUANTIZED_OP_TYPES) if types[t]},
        "initializer_types": dict(sorted(init_types.items())),
        "io_types": {
            v.name: onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type)
            for v in list(graph.input) + list(graph.output)
        },
    }
    if fp16_ops:
        out["float16"] = dict(sorted(fp16_ops.items()))
    return out
