"""Which nodes a quantizer touches: the --quantize-ops groups, --exclude-ops, and the nodes kept float by default."""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from xlsr_edge.errors import ExportError
from xlsr_edge.precision.options import (
    DEFAULT_FLOAT_NODES,
    DEFAULT_QUANTIZE_GROUPS,
    FEATURE_ENCODER_SCOPE,
    QUANTIZABLE_GROUPS,
)


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

    def kept_summary(self) -> dict[str, int]:
        return dict(Counter(self.kept_float.values()))


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
