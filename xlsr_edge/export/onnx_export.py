"""PyTorch -> ONNX: weight-norm folded, eval mode, padded dummy batch, in-graph frame lengths."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from xlsr_edge.bundle import ModelInfo
from xlsr_edge.constants import (
    ATTENTION_MASK,
    EXTERNAL_DATA_THRESHOLD,
    INPUT_VALUES,
    MODEL_ONNX_DATA,
    OUTPUT_HIDDEN,
    OUTPUT_LENGTHS,
    OUTPUT_LOGITS,
)
from xlsr_edge.errors import ExportError


def fold_weight_norm(model: nn.Module) -> int:
    """Replace weight-normed convs (XLS-R's positional conv) by plain weights; returns how many were folded.

    In-graph weight-norm leaves the conv weight as a computed tensor, which quantizers refuse.
    """
    from torch.nn.utils import parametrize

    folded = 0
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            folded += 1
        elif hasattr(module, "weight_g") and hasattr(module, "weight_v"):
            torch.nn.utils.remove_weight_norm(module)
            folded += 1
    return folded


class CTCExportWrapper(nn.Module):
    """(input_values, attention_mask?) -> (logits, logit_lengths) with lengths from the conv formula."""

    def __init__(self, model: nn.Module, info: ModelInfo, backbone_only: bool = False) -> None:
        super().__init__()
        # backbone_only: output the last hidden states (shared by per-language heads) instead of logits
        self.model = model.wav2vec2 if backbone_only else model
        self.backbone_only = backbone_only
        self.kernels = list(info.conv_kernel)
        self.strides = list(info.conv_stride)
        self.uses_mask = info.uses_attention_mask

    def _frames(self, samples: torch.Tensor) -> torch.Tensor:
        for k, s in zip(self.kernels, self.strides):
            samples = torch.div(samples - k, s, rounding_mode="floor") + 1
        return samples.clamp(min=0)

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None):
        if self.uses_mask:
            out = self.model(input_values, attention_mask=attention_mask)
            samples = attention_mask.sum(-1)
        else:
            out = self.model(input_values)
            samples = torch.ones_like(input_values, dtype=torch.int64).sum(-1)
        return (out.last_hidden_state if self.backbone_only else out.logits), self._frames(samples)


def dummy_batch(info: ModelInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of 2 (so the mask path is traced), lengths not multiples of the stride."""
    lengths = [info.sample_rate + 123, info.sample_rate // 2 + 7]
    values = torch.zeros(len(lengths), max(lengths))
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.int64)
    gen = torch.Generator().manual_seed(0)
    for i, n in enumerate(lengths):
        values[i, :n] = torch.randn(n, generator=gen)
        mask[i, :n] = 1
    return values, mask


def export_onnx(
    model: nn.Module, info: ModelInfo, path: Path, opset: int, backbone_only: bool = False
) -> dict:
    """Export to `path` (external data beside it for > 2 GB models). Returns facts for bundle.json."""
    path = Path(path)
    staging = path.parent / ".export-staging"  # the exporter may scatter one file per tensor here
    staging.mkdir()
    folded = fold_weight_norm(model)
    wrapper = CTCExportWrapper(
        model, info, backbone_only
    ).eval()  # the exporter restores train mode; be explicit
    values, mask = dummy_batch(info)
    args = (values, mask) if info.uses_attention_mask else (values,)
    inputs = [INPUT_VALUES, ATTENTION_MASK] if info.uses_attention_mask else [INPUT_VALUES]
    first_output = OUTPUT_HIDDEN if backbone_only else OUTPUT_LOGITS
    axes = {
        INPUT_VALUES: {0: "batch", 1: "samples"},
        first_output: {0: "batch", 1: "frames"},
        OUTPUT_LENGTHS: {0: "batch"},
    }
    if info.uses_attention_mask:
        axes[ATTENTION_MASK] = {0: "batch", 1: "samples"}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python ints are expected here
            torch.onnx.export(
                wrapper,
                args,
                str(staging / path.name),
                input_names=inputs,
                output_names=[first_output, OUTPUT_LENGTHS],
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:  # the exporter raises many types; they are all export failures
        raise ExportError(f"torch.onnx.export failed: {exc}") from exc
    external = _consolidate(staging / path.name, path)
    return {"weight_norm_folded": folded, "external_data": external, "exporter": "torch.onnx (TorchScript)"}


def _consolidate(src: Path, path: Path) -> bool:
    """Write one file when it fits, otherwise one external data file; remove the staging folder."""
    import shutil

    import onnx

    model = onnx.load(str(src), load_external_data=True)
    shutil.rmtree(src.parent)
    weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    if weight_bytes <= EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(model, str(path))
        return False
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=MODEL_ONNX_DATA
    )
    return True
