"""INT8 graphs from an fp32 export: a calibration reader over manifests, dynamic and static (Q/DQ) quantization.

Export side only (imports onnx and onnxruntime.quantization lazily). What is quantized, by default:

* the transformer's MatMuls with a constant weight (q/k/v/out projections, feed-forward): ~85 % of the
  FLOPs of an XLS-R model, and they quantize well;
* not the CNN feature encoder (Conv: naive INT8 destroys accuracy and ConvInteger has no fast CPU kernel),
  not LayerNormalization/Softmax, not the attention score MatMuls (activation x activation), not the
  feature projection (outlier channels, see DEFAULT_FLOAT_NODES) and not the CTC head (``lm_head``: tiny,
  and its logits decide every frame's argmax).

``int8-dynamic`` is onnxruntime's dynamic quantization (weights int8 per output channel, activations uint8
quantized per call): the fast CPU path. ``int8`` is static quantization in the explicit Q/DQ form TensorRT
consumes: symmetric int8 activations and per-channel int8 weights, Q/DQ on the MatMul inputs only
(``OpTypesToExcludeOutputQuantization``), ranges calibrated on the user's manifest.

Before quantizing, the graph goes through onnxruntime's ``quant_pre_process`` and ``fuse_parallel_matmuls``
(q/k/v projections -> one MatMul + Split: one bigger int8 GEMM, and the only form in which onnxruntime fuses
the static Q/DQ MatMuls into MatMulIntegerToFloat); after static quantization ``shapes_read_float`` keeps Shape
nodes off the DequantizeLinear outputs for the same reason.

Calibration collects one utterance per pass (onnxruntime's histogram calibrators merge their histograms
between passes), so utterances of any length work with every method and memory stays bounded; the
onnxruntime-only route (one ``collect_data`` over a list of different lengths) crashes Entropy/Percentile
with "inhomogeneous shape".
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import logging
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xlsr_edge.bundle import ModelInfo
from xlsr_edge.calibration.manifests import (
    Utterance,
    manifest_digest,
    read_manifest,
    select_stratified,
)
from xlsr_edge.constants import ATTENTION_MASK, EXTERNAL_DATA_THRESHOLD, INPUT_VALUES
from xlsr_edge.errors import ExportError, ManifestError, XlsrEdgeError, require
from xlsr_edge.export.cnn_matmul import FEATURE_ENCODER_SCOPE
from xlsr_edge.export.precision import CALIBRATION_METHODS, PRECISIONS, QUANTIZABLE_GROUPS  # noqa: F401

DEFAULT_CALIBRATION_METHOD = "percentile"
DEFAULT_CALIBRATION_SIZE = 64
DEFAULT_PERCENTILE = 99.999
# Utterances longer than this are cropped (centre) for calibration: ranges need speech, not whole lectures.
CALIBRATION_MAX_SECONDS = 20.0

# Op groups --quantize-ops understands (QUANTIZABLE_GROUPS): "MatMul" = MatMuls with a weight (transformer,
# feature projection); "Attention" = the activation x activation MatMuls (scores, context); "FeatureEncoder" =
# CNN layers 1-6 exported as MatMuls (xlsr_edge.export.cnn_matmul); "Conv" = Conv nodes (ConvInteger: slow).
DEFAULT_QUANTIZE_GROUPS = ("MatMul", "Gemm")
# Node-name patterns kept in float by default, and why. The feature projection reads the CNN's layer-normed
# output, whose outlier channels a per-tensor activation scale serves badly (measured on the demo model: frame
# agreement 0.9969 -> 0.9976, CER delta +0.41 -> +0.20 points), for ~0.2 % of XLS-R 300M's FLOPs.
DEFAULT_FLOAT_NODES = {
    "*lm_head*": "CTC head kept float",
    "*feature_projection*": "feature projection kept float",
}

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
COMPUTE_OP_TYPES = ("MatMul", "Gemm", "Conv", "LayerNormalization", "Softmax")


# -- calibration set ----------------------------------------------------------------------------------------


@dataclass
class CalibrationSet:
    """Utterances picked from a manifest, loaded with the runtime's front end (load_audio + normalize)."""

    source: str
    utterances: list[Utterance]
    arrays: list[np.ndarray]  # normalized float32, one per utterance (cropped for calibration)
    manifest_size: int  # utterances in the whole manifest
    digest: str  # manifest_digest of the picked utterances
    seed: int
    cropped: int = 0

    @property
    def has_text(self) -> bool:
        return all(u.text is not None and u.text.strip() for u in self.utterances)

    def seconds(self, sample_rate: int) -> float:
        return sum(len(a) for a in self.arrays) / sample_rate

    def describe(self, sample_rate: int) -> dict[str, Any]:
        return {
            "source": self.source,
            "utterances": len(self.utterances),
            "manifest_utterances": self.manifest_size,
            "seconds": round(self.seconds(sample_rate), 2),
            "sha256": self.digest,
            "seed": self.seed,
            "selection": "stratified by duration",
            "cropped_to_seconds": CALIBRATION_MAX_SECONDS if self.cropped else None,
            "has_text": self.has_text,
        }


def _load_utterance(u: Utterance, source: str, info: ModelInfo) -> np.ndarray:
    from xlsr_edge.runtime.audio import load_audio

    try:
        x = load_audio(u.audio, info.sample_rate)
    except XlsrEdgeError as exc:
        where = f"{source} line {u.line}" if u.line is not None else source
        raise ManifestError(f"{where}: {exc}") from exc
    if info.frames_for(len(x)) == 0:
        where = f"{source} line {u.line}" if u.line is not None else source
        raise ManifestError(
            f"{where}: {u.raw_path} is shorter than one frame ({len(x) / info.sample_rate:.3f} s); remove it"
        )
    return x


def load_calibration_set(
    source: str | Path,
    info: ModelInfo,
    size: int = DEFAULT_CALIBRATION_SIZE,
    seed: int = 0,
    *,
    max_seconds: float | None = CALIBRATION_MAX_SECONDS,
) -> CalibrationSet:
    """Read a manifest (any format xlsr_edge.calibration reads, or a folder), pick ``size`` utterances
    stratified by duration, load and normalize them exactly as the runtime does.

    Raises ManifestError naming the manifest line for missing or unreadable audio.
    """
    from xlsr_edge.runtime.audio import normalize

    if size < 1:
        raise ValueError(f"--calibration-size must be at least 1, got {size}")
    utts = read_manifest(source, check_audio=True)
    picked = select_stratified(utts, size, seed=seed)
    arrays, cropped = [], 0
    limit = None if max_seconds is None else int(max_seconds * info.sample_rate)
    for u in picked:
        x = _load_utterance(u, str(source), info)
        if limit is not None and len(x) > limit:
            start = (len(x) - limit) // 2
            x, cropped = x[start : start + limit], cropped + 1
        arrays.append(normalize(x, info.do_normalize))
    return CalibrationSet(
        source=str(source),
        utterances=picked,
        arrays=arrays,
        manifest_size=len(utts),
        digest=manifest_digest(picked),
        seed=seed,
        cropped=cropped,
    )


def _reader_base():
    require("onnxruntime", "export")
    from onnxruntime.quantization import CalibrationDataReader

    return CalibrationDataReader


class ManifestCalibrationReader(_reader_base()):  # type: ignore[misc]
    """onnxruntime ``CalibrationDataReader`` over a CalibrationSet: one utterance per ``get_next`` ([1, L]).

    ``fixed_samples`` pads (zeros, mask 0) or centre-crops every utterance to one length, for callers that
    pass the reader straight to ``quantize_static`` with Entropy/Percentile (which need equal shapes).
    Models without an attention mask are never padded: short utterances are repeated to the length instead.
    Supports ``set_range`` (onnxruntime's strided calibration) and ``rewind``.
    """

    def __init__(self, arrays: Sequence[np.ndarray], uses_mask: bool, fixed_samples: int | None = None):
        self.arrays = list(arrays)
        self.uses_mask = uses_mask
        self.fixed_samples = fixed_samples
        self._start, self._end, self._pos = 0, len(self.arrays), 0

    def __len__(self) -> int:
        return len(self.arrays)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._start, self._end = start_index, min(end_index, len(self.arrays))
        self._pos = self._start

    def rewind(self) -> None:
        self._start, self._end, self._pos = 0, len(self.arrays), 0

    def feeds(self, x: np.ndarray) -> dict[str, np.ndarray]:
        mask = np.ones(len(x), dtype=np.int64)
        n = self.fixed_samples
        if n is not None and len(x) > n:
            start = (len(x) - n) // 2
            x, mask = x[start : start + n], mask[:n]
        elif n is not None and len(x) < n:
            if self.uses_mask:
                x = np.concatenate([x, np.zeros(n - len(x), np.float32)])
                mask = np.concatenate([mask, np.zeros(n - len(mask), np.int64)])
            else:
                x, mask = np.resize(x, n), np.ones(n, dtype=np.int64)
        out = {INPUT_VALUES: np.ascontiguousarray(x, dtype=np.float32)[None]}
        if self.uses_mask:
            out[ATTENTION_MASK] = mask[None]
        return out

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= self._end:
            return None
        self._pos += 1
        return self.feeds(self.arrays[self._pos - 1])


class _One(_reader_base()):  # type: ignore[misc]
    def __init__(self, feeds: dict[str, np.ndarray]):
        self._feeds: dict[str, np.ndarray] | None = feeds

    def get_next(self):
        feeds, self._feeds = self._feeds, None
        return feeds


# -- graph helpers -------------------------------------------------------------------------------------------


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


def _is_weight_matmul(node, inits: set[str]) -> bool:
    return node.op_type == "MatMul" and (node.input[1] in inits or node.input[0] in inits)


def _group_of(node, inits: set[str]) -> str | None:
    if node.op_type == "MatMul":
        if not _is_weight_matmul(node, inits):
            return "Attention"
        return "FeatureEncoder" if FEATURE_ENCODER_SCOPE in node.name else "MatMul"
    if node.op_type in ("Gemm", "Conv"):
        return node.op_type
    return None


def _waveform_matmul(model) -> str | None:
    """The feature encoder's first layer as a MatMul (it reads the raw waveform: fewest weight rows)."""
    inits = {i.name: i for i in model.graph.initializer}
    rows = {
        n.name: inits[n.input[1]].dims[0]
        for n in model.graph.node
        if n.op_type == "MatMul" and FEATURE_ENCODER_SCOPE in n.name and n.input[1] in inits
    }
    return min(rows, key=rows.get) if rows else None


@dataclass(frozen=True)
class NodeSelection:
    quantize: list[str]  # node names
    kept_float: dict[str, str]  # node name -> reason
    groups: Counter = field(default_factory=Counter)  # group -> quantized count


def split_excludes(exclude: Sequence[str], op_types: set[str]) -> tuple[set[str], list[str]]:
    """--exclude-ops entries: op types / groups, or node-name patterns (fnmatch; no wildcard = substring)."""
    ops, patterns = set(), []
    for e in exclude:
        if e in QUANTIZABLE_GROUPS or e in op_types:
            ops.add(e)
        elif any(c in e for c in "*?["):
            patterns.append(e)
        else:
            patterns.append(f"*{e}*")
    return ops, patterns


def select_nodes(
    model,
    quantize_groups: Sequence[str] = DEFAULT_QUANTIZE_GROUPS,
    exclude: Sequence[str] = (),
    default_float_nodes: dict[str, str] = DEFAULT_FLOAT_NODES,
) -> NodeSelection:
    """Pick the nodes to quantize. ``exclude`` entries are op types or groups (``Attention``), or node-name
    patterns (fnmatch, e.g. ``*layers.23*``)."""
    unknown = [g for g in quantize_groups if g not in QUANTIZABLE_GROUPS]
    if unknown:
        raise ValueError(f"--quantize-ops: unknown {unknown}; choose from {', '.join(QUANTIZABLE_GROUPS)}")
    inits = {i.name for i in model.graph.initializer}
    op_excludes, patterns = split_excludes(exclude, {n.op_type for n in model.graph.node})
    quantize, kept, groups = [], {}, Counter()
    waveform = _waveform_matmul(model)
    for node in model.graph.node:
        group = _group_of(node, inits)
        if group is None:
            continue
        if node.name == waveform:
            kept[node.name] = "CNN layer 0 (waveform) kept float"
        elif group not in quantize_groups:
            kept[node.name] = f"{group} kept float"
        elif (
            group in op_excludes
            or node.op_type in op_excludes
            or any(fnmatch.fnmatchcase(node.name, p) for p in patterns)
        ):
            kept[node.name] = "excluded by --exclude-ops"
        elif any(fnmatch.fnmatchcase(node.name, p) for p in default_float_nodes):
            kept[node.name] = next(
                default_float_nodes[p] for p in default_float_nodes if fnmatch.fnmatchcase(node.name, p)
            )
        else:
            quantize.append(node.name)
            groups[group] += 1
    if not quantize:
        raise ExportError(
            "nothing to quantize: every MatMul/Gemm/Conv is excluded; check --quantize-ops/--exclude-ops"
        )
    return NodeSelection(quantize=quantize, kept_float=kept, groups=groups)


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


# -- quantizers ----------------------------------------------------------------------------------------------


def _ort_quant():
    require("onnxruntime", "export")
    require("onnx", "export")
    import onnxruntime.quantization as q

    return q


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
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
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return fused


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

    _ort_quant()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    big = graph_bytes(src) > EXTERNAL_DATA_THRESHOLD
    try:
        with _quiet():
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


def iter_graph_files(path: Path) -> list[Path]:
    path = Path(path)
    return [path, *path.parent.glob(path.name + ".data")]


def quantize_int8_dynamic(
    src: Path,
    dst: Path,
    *,
    quantize_groups: Sequence[str] = DEFAULT_QUANTIZE_GROUPS,
    exclude: Sequence[str] = (),
    per_channel: bool = True,
) -> dict[str, Any]:
    """Dynamic INT8: int8 weights (per output channel), uint8 activations quantized at run time."""
    import onnx

    q = _ort_quant()
    work = Path(tempfile.mkdtemp(prefix="xlsr-int8d-", dir=dst.parent))
    try:
        pre = work / "pre.onnx"
        fused = preprocess(src, pre)
        sel = select_nodes(onnx.load(str(pre), load_external_data=False), quantize_groups, exclude)
        try:
            with _quiet():
                q.quantize_dynamic(
                    str(pre),
                    str(dst),
                    op_types_to_quantize=sorted(
                        {"MatMul" if g in ("Attention", "FeatureEncoder") else g for g in quantize_groups}
                    ),
                    per_channel=per_channel,
                    reduce_range=False,  # AVX512-VNNI / ARM dot-product: full 8-bit range is exact
                    weight_type=q.QuantType.QInt8,
                    nodes_to_quantize=sel.quantize,
                    use_external_data_format=graph_bytes(pre) > EXTERNAL_DATA_THRESHOLD,
                    extra_options={"MatMulConstBOnly": "Attention" not in quantize_groups},
                )
        except Exception as exc:
            raise ExportError(f"onnxruntime dynamic quantization failed: {exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "method": "onnxruntime quantize_dynamic",
        "weights": "int8 symmetric, " + ("per output channel" if per_channel else "per tensor"),
        "activations": "uint8, range computed per call (DynamicQuantizeLinear)",
        "quantized_groups": dict(sel.groups),
        "kept_float_nodes": _kept_summary(sel),
        "matmuls_fused": fused,
    }


def _kept_summary(sel: NodeSelection) -> dict[str, int]:
    return dict(Counter(sel.kept_float.values()))


def calibrate_ranges(
    model_path: Path,
    calib: CalibrationSet,
    uses_mask: bool,
    *,
    method: str = DEFAULT_CALIBRATION_METHOD,
    op_types: Sequence[str] = ("MatMul",),
    percentile: float = DEFAULT_PERCENTILE,
    num_bins: int = 2048,
    only_tensors: Sequence[str] | None = None,
    work: Path,
):
    """Activation ranges over the calibration set, one utterance per pass. Returns onnxruntime TensorsData."""
    q = _ort_quant()
    from onnxruntime.quantization.calibrate import create_calibrator

    methods = {
        "minmax": q.CalibrationMethod.MinMax,
        "entropy": q.CalibrationMethod.Entropy,
        "percentile": q.CalibrationMethod.Percentile,
    }
    if method not in methods:
        raise ValueError(f"calibration method must be one of {', '.join(methods)}, got {method!r}")
    extra: dict[str, Any] = {"symmetric": True}
    if method == "percentile":
        extra.update(num_bins=num_bins, percentile=percentile)
    elif method == "entropy":
        # onnxruntime's default (128 bins) equals MinMax; 2048 bins is the TensorRT-style KL calibration
        extra.update(num_bins=num_bins, num_quantized_bins=128)
    calibrator = create_calibrator(
        Path(model_path),
        list(op_types),
        augmented_model_path=str(work / "augmented.onnx"),
        calibrate_method=methods[method],
        use_external_data_format=graph_bytes(model_path) > EXTERNAL_DATA_THRESHOLD,
        extra_options=extra,
    )
    if only_tensors is not None and getattr(calibrator, "tensors_to_calibrate", None) is not None:
        # histograms (and their threshold search) only for the tensors that get a Q/DQ pair
        calibrator.tensors_to_calibrate = set(calibrator.tensors_to_calibrate) & set(only_tensors)
    reader = ManifestCalibrationReader(calib.arrays, uses_mask)
    try:
        # one utterance per pass: every calibrator merges its ranges/histograms between passes, so any
        # lengths work and only one utterance's intermediate tensors are held at a time
        for feeds in iter(reader.get_next, None):
            calibrator.collect_data(_One(feeds))
        return calibrator.compute_data()
    finally:
        del calibrator


def quantize_int8_static(
    src: Path,
    dst: Path,
    calib: CalibrationSet,
    uses_mask: bool,
    *,
    method: str = DEFAULT_CALIBRATION_METHOD,
    quantize_groups: Sequence[str] = DEFAULT_QUANTIZE_GROUPS,
    exclude: Sequence[str] = (),
    percentile: float = DEFAULT_PERCENTILE,
) -> dict[str, Any]:
    """Static INT8 in explicit Q/DQ form: Q/DQ pairs on the inputs of the selected MatMuls only."""
    import onnx
    from onnxruntime.quantization.calibrate import save_tensors_data

    q = _ort_quant()
    work = Path(tempfile.mkdtemp(prefix="xlsr-int8s-", dir=dst.parent))
    try:
        pre = work / "pre.onnx"
        fused = preprocess(src, pre)
        pre_model = onnx.load(str(pre), load_external_data=False)
        sel = select_nodes(pre_model, quantize_groups, exclude)
        inits = {i.name for i in pre_model.graph.initializer}
        chosen = set(sel.quantize)
        activations = {i for n in pre_model.graph.node if n.name in chosen for i in n.input if i not in inits}
        del pre_model
        op_types = sorted({"MatMul" if g in ("Attention", "FeatureEncoder") else g for g in quantize_groups})
        try:
            with _quiet():
                ranges = calibrate_ranges(
                    pre,
                    calib,
                    uses_mask,
                    method=method,
                    op_types=op_types,
                    percentile=percentile,
                    only_tensors=activations,
                    work=work,
                )
                cache = work / "calibration.json"
                save_tensors_data(ranges, cache)
                q.quantize_static(
                    str(pre),
                    str(dst),
                    calibration_data_reader=None,
                    calibration_cache_path=str(cache),
                    quant_format=q.QuantFormat.QDQ,
                    op_types_to_quantize=op_types,
                    nodes_to_quantize=sel.quantize,
                    per_channel=True,
                    reduce_range=False,
                    activation_type=q.QuantType.QInt8,
                    weight_type=q.QuantType.QInt8,
                    calibrate_method=ranges.calibration_method,
                    use_external_data_format=graph_bytes(pre) > EXTERNAL_DATA_THRESHOLD,
                    extra_options={
                        "ActivationSymmetric": True,
                        "WeightSymmetric": True,
                        # Q/DQ on MatMul inputs only, as TensorRT wants (and more accurate): no requantized output
                        "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm", "Conv"],
                        "MatMulConstBOnly": "Attention" not in quantize_groups,
                        # one Q/DQ pair per consumer: onnxruntime fuses DQ->MatMul into MatMulIntegerToFloat
                        # only when the DequantizeLinear feeds that MatMul alone (q/k/v share an input)
                        "DedicatedQDQPair": True,
                    },
                )
        except XlsrEdgeError:
            raise
        except Exception as exc:
            raise ExportError(f"onnxruntime static quantization failed: {exc}") from exc
        quantized = onnx.load(str(dst))
        if shapes_read_float(quantized):
            for f in iter_graph_files(dst):
                f.unlink()
            save_graph(quantized, dst)
        del quantized
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "method": f"onnxruntime quantize_static, QDQ, {method} calibration",
        "calibration_method": method,
        **({"percentile": percentile} if method == "percentile" else {}),
        "weights": "int8 symmetric, per output channel",
        "activations": "int8 symmetric (zero point 0), calibrated; Q/DQ on MatMul inputs only",
        "quantized_groups": dict(sel.groups),
        "kept_float_nodes": _kept_summary(sel),
        "matmuls_fused": fused,
    }
