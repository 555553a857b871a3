"""PyTorch -> ONNX for every CTC family: weight-norm folded, eval mode, padded dummy batch, in-graph frame lengths,
padding fixes (xlsr_edge.export.masking) and the log-mel front end where the family has one."""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from xlsr_edge.bundle import ModelInfo
from xlsr_edge.constants import (
    ADAPTER_WEIGHTS,
    ATTENTION_MASK,
    EXTERNAL_DATA_THRESHOLD,
    INPUT_VALUES,
    MODEL_ONNX_DATA,
    OUTPUT_HIDDEN,
    OUTPUT_LENGTHS,
    OUTPUT_LOGITS,
)
from xlsr_edge.errors import ExportError
from xlsr_edge.export.adapters import AdapterInput, adapters_from_input, flat_adapter
from xlsr_edge.export.families import Family, Stages, family_of
from xlsr_edge.export.fbank import FbankFrontEnd
from xlsr_edge.export.masking import FrameLengths, bool_mask_index_put, padding_fixes, squeeze_tail_mask


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


def family_plan(model: nn.Module, info: ModelInfo) -> tuple[Family, Stages]:
    """The family of a loaded model and its length stages (from the bundle facts and the model config)."""
    config = model.config.to_dict()
    family = family_of(config, type(model).__name__)
    adapters = int(config.get("num_adapter_layers", 3)) if config.get("add_adapter") else 0
    kernel = list(info.conv_kernel)
    stages = Stages(kernel, list(info.conv_stride), info.paddings, len(kernel) - adapters)
    return family, stages


def feature_extractor_settings(model: nn.Module, info: ModelInfo) -> dict:
    """The checkpoint's feature extractor settings (stored on the model by load_model), else its defaults."""
    stored = getattr(model, "xlsr_feature_extractor", None)
    if isinstance(stored, dict):
        return stored
    stack = info.conv_stride[1] if len(info.conv_stride) > 1 else 2
    mels = getattr(model.config, "feature_projection_input_dim", 160) // stack
    return {"sampling_rate": info.sample_rate, "num_mel_bins": mels, "stride": stack}


class CTCExportWrapper(nn.Module):
    """(input_values, attention_mask?) -> (logits, logit_lengths): the same forward for every CTC family.

    The backbone is `<base>(inputs, attention_mask).last_hidden_state` and the head `lm_head`, as in every
    transformers *ForCTC model; a log-mel front end (Wav2Vec2-BERT) runs in the graph first; lengths follow
    the stages of the length formula (CNN or fbank framing, then add_adapter layers).
    """

    def __init__(
        self, model: nn.Module, info: ModelInfo, backbone_only: bool = False, adapter_input: bool = False
    ) -> None:
        super().__init__()
        # adapter_input: MMS attention adapters computed from an `adapter_weights` graph input (multi bundles)
        self.adapters = AdapterInput() if adapter_input else None
        # backbone_only: output the last hidden states (shared by per-language heads) instead of logits
        self.family, stages = family_plan(model, info)
        self.model = model  # node and initializer names keep the model's paths (model.lm_head.bias, ...)
        self.backbone_only = backbone_only
        self.uses_mask = info.uses_attention_mask
        self.lengths = FrameLengths(stages)
        self.squeeze = int(model.config.squeeze_factor) if self.family.squeeze else 0
        # SEW/SEW-D need one pooled frame (squeeze frames) or their attention reshapes an empty sequence; a
        # shorter clip is zero-padded to that in the graph (masked), its frames are zeros after the upsampling
        # either way, as in PyTorch
        self.min_samples = 0
        if self.squeeze:
            self.min_samples = 1
            while stages.lengths(self.min_samples, stages.encoder) < self.squeeze:
                self.min_samples += 1
        self.front_end = (
            FbankFrontEnd(feature_extractor_settings(model, info))
            if self.family.front_end == "fbank"
            else None
        )

    def forward(self, input_values: torch.Tensor, *extra: torch.Tensor):
        attention_mask = extra[0] if self.uses_mask else None
        if self.adapters is not None:
            self.adapters.flat = extra[-1]
        if self.uses_mask:
            samples = attention_mask.sum(-1)
        else:
            samples = torch.ones_like(input_values, dtype=torch.int64).sum(-1)
        self.lengths.samples = samples  # read by the padding fixes (xlsr_edge.export.masking)
        if self.min_samples:
            short = (self.min_samples - input_values.shape[1]) * torch.ones_like(samples[:1])
            tail = torch.zeros_like(input_values[:, :1]).expand(-1, int(self.min_samples)).clone()
            tail = tail[:, : short.clamp(min=0)[0]]
            input_values = torch.cat([input_values, tail], dim=1)
            if attention_mask is not None:
                attention_mask = torch.cat(
                    [attention_mask, torch.zeros_like(tail, dtype=attention_mask.dtype)], 1
                )
        base = getattr(self.model, self.family.base)
        if self.front_end is not None:
            features, mask = self.front_end(input_values, samples)
            out = base(features, attention_mask=mask if self.uses_mask else None)
        elif self.uses_mask:
            out = base(input_values, attention_mask=attention_mask)
        else:
            out = base(input_values)
        hidden = out[0]
        if self.squeeze:
            hidden = squeeze_tail_mask(hidden, self.lengths, self.squeeze)
        frames = self.lengths.at(len(self.lengths.stages.kernel))
        return (hidden if self.backbone_only else self.model.lm_head(hidden)), frames


def dummy_batch(info: ModelInfo, stages: Stages | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of 2 (so the mask path is traced), lengths not multiples of the stride.

    The longer clip has an odd number of encoder frames: SEW/SEW-D pad their upsampled output by one frame
    only then, and tracing keeps just the branch it saw (the pad of 0 frames is fine for even counts).
    """
    long = info.sample_rate + 123
    if stages is not None:
        while stages.lengths(long, stages.encoder) % 2 == 0:
            long += 1
    lengths = [long, info.sample_rate // 2 + 7]
    values = torch.zeros(len(lengths), max(lengths))
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.int64)
    gen = torch.Generator().manual_seed(0)
    for i, n in enumerate(lengths):
        values[i, :n] = torch.randn(n, generator=gen)
        mask[i, :n] = 1
    return values, mask


def export_onnx(
    model: nn.Module,
    info: ModelInfo,
    path: Path,
    opset: int,
    backbone_only: bool = False,
    adapter_input: bool = False,
) -> dict:
    """Export to `path` (external data beside it for > 2 GB models). Returns facts for bundle.json."""
    path = Path(path)
    staging = path.parent / ".export-staging"  # the exporter may scatter one file per tensor here
    staging.mkdir()
    folded = fold_weight_norm(model)
    wrapper = CTCExportWrapper(model, info, backbone_only, adapter_input).eval()  # export restores train mode
    values, mask = dummy_batch(info, wrapper.lengths.stages)
    group_norm = info.feat_extract_norm == "group" and wrapper.family.front_end == "waveform"
    fixes = padding_fixes(
        model, wrapper.family, wrapper.lengths, uses_mask=info.uses_attention_mask, group_norm=group_norm
    )
    args = (values, mask) if info.uses_attention_mask else (values,)
    inputs = [INPUT_VALUES, ATTENTION_MASK] if info.uses_attention_mask else [INPUT_VALUES]
    adapters = nullcontext()
    if adapter_input:
        args += (torch.from_numpy(flat_adapter(model)),)
        inputs.append(ADAPTER_WEIGHTS)
        adapters = adapters_from_input(model, wrapper.adapters)
    first_output = OUTPUT_HIDDEN if backbone_only else OUTPUT_LOGITS
    axes = {
        INPUT_VALUES: {0: "batch", 1: "samples"},
        first_output: {0: "batch", 1: "frames"},
        OUTPUT_LENGTHS: {0: "batch"},
    }
    if info.uses_attention_mask:
        axes[ATTENTION_MASK] = {0: "batch", 1: "samples"}
    try:
        with torch.no_grad(), fixes, adapters, bool_mask_index_put(opset), warnings.catch_warnings():
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
    return {
        "weight_norm_folded": folded,
        "external_data": external,
        "exporter": "torch.onnx (TorchScript)",
        "family": wrapper.family.model_type,
        "front_end": "SeamlessM4T log-mel fbank in the graph"
        if wrapper.front_end is not None
        else "waveform",
    }


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
