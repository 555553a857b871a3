"""Padding fixes installed while a model is traced: a clip's frames never depend on what it is batched with.

PyTorch zeroes padded frames where the encoder starts, but some modules read neighbouring frames after that:
the Conformer's depthwise convolution, Data2Vec-Audio's stack of positional convolutions, the `add_adapter`
convolutions, a group-norm CNN (statistics over time), SEW/SEW-D's pooled attention mask. On a padded batch
those modules see the other clips' padding, so PyTorch itself gives a clip different logits in a batch than
alone. While the graph is traced, hooks on exactly those modules zero what lies beyond each clip's length (at
that module's frame rate), so the exported graph reproduces every clip alone. The hooks exist only inside
`padding_fixes`; the PyTorch model the parity gate runs afterwards is the untouched model.

What each family needs is data (xlsr_edge.export.families); this module is the one mechanism.
"""

from __future__ import annotations

import math
import types
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from xlsr_edge.export.families import Family, Stages


class FrameLengths:
    """Valid lengths per clip at every stage of the length formula, computed in the graph from sample counts."""

    def __init__(self, stages: Stages) -> None:
        self.stages = stages
        self.samples: torch.Tensor | None = None  # [batch] int64, set by the export wrapper's forward

    def at(self, stage: int) -> torch.Tensor:
        n = self.samples
        for k, s, p in list(zip(self.stages.kernel, self.stages.stride, self.stages.padding))[:stage]:
            n = torch.div(n + (2 * p - k), s, rounding_mode="floor") + 1
        return n.clamp(min=0)


def time_mask(x: torch.Tensor, lengths: torch.Tensor, dim: int) -> torch.Tensor:
    """A 0/1 mask in x's dtype, broadcastable to x, that keeps positions < length along `dim` (x[0] is batch)."""
    steps = torch.arange(x.shape[dim], device=x.device)
    keep = (steps[None, :] < lengths[:, None]).to(x.dtype)  # [batch, time]
    shape = [1] * x.dim()
    shape[0], shape[dim] = -1, x.shape[dim]
    return keep.reshape(shape)


def _mask_input(lengths: FrameLengths, stage: int, dim: int):
    def hook(module, args):
        x = args[0]
        return (x * time_mask(x, lengths.at(stage), dim), *args[1:])

    return hook


def _masked_group_norm(lengths: FrameLengths, stage: int):
    """GroupNorm with one group per channel (the group-norm CNN's first layer), statistics over valid frames."""

    def hook(module: nn.GroupNorm, args, output):
        x = args[0]  # [batch, channels, time]
        m = time_mask(x, lengths.at(stage), 2)
        n = m.sum(-1, keepdim=True).clamp(min=1)
        mean = (x * m).sum(-1, keepdim=True) / n
        var = ((x - mean) * m).pow(2).sum(-1, keepdim=True) / n
        y = (x - mean) / torch.sqrt(var + module.eps)
        return y * module.weight[None, :, None] + module.bias[None, :, None]

    return hook


def _sew_layer_mask(lengths: FrameLengths, stage: int, squeeze: int):
    """SEW: the pooled frames attended to are floor(frames / squeeze), as for the clip alone (transformers 5
    max-pools the frame mask, which keeps a half-padded pooled frame on odd frame counts)."""

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        valid = time_mask(
            hidden, torch.div(lengths.at(stage), squeeze, rounding_mode="floor"), 1
        )  # [b, t, 1]
        keys = valid[:, None, None, :, 0]  # [batch, 1, 1, keys]
        blocked = (1.0 - keys) * torch.finfo(hidden.dtype).min
        t = hidden.shape[1]
        kwargs["attention_mask"] = blocked.expand(-1, 1, t, t)
        return args, kwargs

    return hook


def _sew_d_encoder_mask(lengths: FrameLengths, stage: int, squeeze: int):
    """SEW-D: the DeBERTa encoder takes a [batch, pooled frames] mask: floor(frames / squeeze) valid."""

    def hook(module, args, kwargs):
        hidden = args[0]
        pooled = torch.div(lengths.at(stage), squeeze, rounding_mode="floor")
        mask = time_mask(hidden, pooled, 1)[:, :, 0].to(torch.long)
        if len(args) > 1:
            args = (hidden, mask, *args[2:])
        else:
            kwargs["attention_mask"] = mask
        return args, kwargs

    return hook


def _reset_rotary_cache(module, args):
    # Wav2Vec2-Conformer caches its rotary table by sequence length in Python: a table cached before tracing
    # would enter the graph as a constant of that length
    module.cached_sequence_length = None
    module.cached_rotary_positional_embedding = None


def _relative_table(self, hidden_states):
    """Wav2Vec2-Conformer's relative sinusoids for offsets T-1 .. -(T-1), computed for the input's length.

    transformers slices a table built for `max_source_positions` frames and rebuilds it in Python for longer
    inputs; traced, the slice would silently wrap around beyond that length. Same formula, in the graph."""
    t = hidden_states.shape[1]
    offsets = torch.arange(t - 1, -t, -1, device=hidden_states.device).float()[:, None]
    div = torch.exp(
        torch.arange(0, self.d_model, 2, dtype=torch.int64).float() * -(math.log(10000.0) / self.d_model)
    )
    angles = offsets * div
    table = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).reshape(1, -1, self.d_model)
    return table.to(dtype=hidden_states.dtype)


def squeeze_tail_mask(hidden: torch.Tensor, lengths: FrameLengths, squeeze: int) -> torch.Tensor:
    """SEW/SEW-D alone: frames past squeeze * floor(frames / squeeze) are zero padding after upsampling."""
    covered = torch.div(lengths.at(lengths.stages.encoder), squeeze, rounding_mode="floor") * squeeze
    return hidden * time_mask(hidden, covered, 1)


@contextmanager
def bool_mask_index_put(opset: int) -> Iterator[None]:
    """`x[mask] = v` with a mask of lower rank than x (transformers 4.x: `hidden_states[~attention_mask] = 0`
    in the Conformer, WavLM and SEW encoders) exports as a Where that broadcasts [batch, frames] against
    [batch, frames, channels], which onnxruntime refuses at run time. While exporting, such an index_put becomes
    Where(Unsqueeze(mask), v, x); every other index_put keeps torch's own translation."""
    from torch.onnx import symbolic_helper, symbolic_opset11

    def index_put(g, self, indices_list_value, values, accumulate=False):
        if symbolic_helper._is_packed_list(indices_list_value):
            indices = symbolic_helper._unpack_list(indices_list_value)
            ranks = [symbolic_helper._get_tensor_rank(t) for t in (self, *indices)]
            if (
                len(indices) == 1
                and symbolic_helper._is_bool(indices[0])
                and None not in ranks
                and ranks[1] < ranks[0]
                and not symbolic_helper._maybe_get_const(accumulate, "b")
            ):
                axes = g.op("Constant", value_t=torch.tensor(list(range(ranks[1], ranks[0]))))
                return g.op("Where", g.op("Unsqueeze", indices[0], axes), values, self)
        return symbolic_opset11.index_put(g, self, indices_list_value, values, accumulate)

    torch.onnx.register_custom_op_symbolic("aten::index_put", index_put, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::index_put", opset)


@contextmanager
def padding_fixes(
    model: nn.Module, family: Family, lengths: FrameLengths, *, uses_mask: bool, group_norm: bool
) -> Iterator[None]:
    """Install the hooks for tracing; always removed afterwards."""
    base = getattr(model, family.base)
    enc = lengths.stages.encoder
    handles, tables = [], []
    for module in base.modules():
        if hasattr(module, "cached_rotary_positional_embedding"):
            handles.append(module.register_forward_pre_hook(_reset_rotary_cache))
        if all(hasattr(module, a) for a in ("extend_pe", "pe", "d_model")) and module.d_model % 2 == 0:
            module.forward = types.MethodType(_relative_table, module)
            tables.append(module)
    if family.squeeze:
        squeeze = int(model.config.squeeze_factor)
        if family.model_type == "sew":
            for layer in base.encoder.layers:
                handles.append(
                    layer.register_forward_pre_hook(_sew_layer_mask(lengths, enc, squeeze), with_kwargs=True)
                )
        else:
            handles.append(
                base.encoder.encoder.register_forward_pre_hook(
                    _sew_d_encoder_mask(lengths, enc, squeeze), with_kwargs=True
                )
            )
    if uses_mask:
        for path in family.masked_convs:
            scope = base.get_submodule(path)
            for module in scope.modules():
                if isinstance(module, nn.Conv1d) and module.kernel_size[0] > 1:
                    handles.append(module.register_forward_pre_hook(_mask_input(lengths, enc, 2)))
        adapter = getattr(base, "adapter", None)
        for i, layer in enumerate(getattr(adapter, "layers", None) or []):
            for child in layer.children():
                if isinstance(child, nn.Conv1d):
                    handles.append(child.register_forward_pre_hook(_mask_input(lengths, enc + i, 2)))
        if group_norm:
            norm = base.feature_extractor.conv_layers[0].layer_norm
            handles.append(norm.register_forward_hook(_masked_group_norm(lengths, 1)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for module in tables:
            del module.forward  # back to the class method
