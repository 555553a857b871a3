"""Export the CNN feature encoder as channels-last MatMuls, so its layers 1-6 can run as int8 GEMMs.

The feature encoder is ~13 % of XLS-R's FLOPs but, once the transformer runs in int8, a third of the CPU time:
onnxruntime has no fast int8 convolution (ConvInteger is slower than fp32 Conv), but its int8 MatMul is fast.
A strided Conv1d with kernel k and stride s is exactly a MatMul over k strided slices of the [batch, time,
channels] input, concatenated on the channel axis; working channels-last also removes the two Transposes
around every conv LayerNorm. Only layers 1-6 are worth quantizing: layer 0 reads the raw waveform (one input
channel) and int8 there destroys accuracy (measured: +10.7 CER points vs +0.1 for layers 1-6).

Used only when ``--quantize-ops`` includes ``FeatureEncoder``; the default export keeps the Conv1d graph.
The exported graph is still checked against the unpatched PyTorch model by the parity gate.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager

from xlsr_edge.errors import ExportError

# The patched encoder's nodes are named after its module path (``...feature_extractor...``): that is how
# xlsr_edge.precision.options.FEATURE_ENCODER_SCOPE finds them in the graph.


def _windows(x, k: int, s: int):
    """[N, T, C] -> [N, T_out, k * C], tap-major: the input rows each output frame reads.

    Whole stride blocks are contiguous slices reshaped ([N, T_out * s, C] -> [N, T_out, s * C]: a view); only
    the taps past the last whole block (k % s of them: one for XLS-R's k=3, s=2 layers) are strided slices.
    Engines copy a contiguous slice fast, a strided one element by element."""
    import torch

    n, c = x.shape[0], x.shape[2]
    t_out = torch.div(x.shape[1] - k, s, rounding_mode="floor") + 1
    parts = [x[:, s * j : s * j + s * t_out, :].reshape(n, t_out, s * c) for j in range(k // s)]
    span = s * (t_out - 1) + 1
    parts += [x[:, j : j + span : s, :] for j in range(s * (k // s), k)]
    return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]


def _conv_as_matmul(x, conv):
    """x [N, T, C_in] -> [N, T_out, C_out]: Conv1d (no padding, dilation 1, groups 1) as one MatMul."""
    k, s = conv.kernel_size[0], conv.stride[0]
    weight = conv.weight.permute(2, 1, 0).reshape(k * conv.in_channels, conv.out_channels)
    y = _windows(x, k, s) @ weight
    return y + conv.bias if conv.bias is not None else y


def _forward(self, input_values):
    hidden = input_values[:, :, None]  # [N, T, 1]
    for layer in self.conv_layers:
        hidden = _conv_as_matmul(hidden, layer.conv)
        hidden = layer.layer_norm(hidden)  # over channels: already the last axis
        hidden = layer.activation(hidden)
    return hidden.transpose(1, 2)  # the model expects [N, C, T] (and transposes it straight back)


@contextmanager
def channels_last_feature_encoder(model) -> Iterator[None]:
    """Patch the CNN feature encoder's forward (``model.<base>.feature_extractor``) while the block runs."""
    from torch import nn

    base = getattr(model, model.base_model_prefix)
    encoder = getattr(base, "feature_extractor", None)
    if encoder is None or not hasattr(encoder, "conv_layers"):
        raise ExportError(
            f"FeatureEncoder quantization needs a CNN feature encoder; {type(model).__name__} has none"
        )
    for layer in encoder.conv_layers:
        conv = layer.conv
        if not isinstance(getattr(layer, "layer_norm", None), nn.LayerNorm) or conv.groups != 1:
            raise ExportError(
                "FeatureEncoder quantization needs an XLS-R-style feature encoder (feat_extract_norm='layer'); "
                "this checkpoint uses group norm: drop FeatureEncoder from --quantize-ops"
            )
        if conv.padding not in ((0,), 0) or conv.dilation not in ((1,), 1):
            raise ExportError("FeatureEncoder quantization supports unpadded, undilated convolutions only")
    encoder.forward = types.MethodType(_forward, encoder)
    try:
        yield
    finally:
        del encoder.forward  # back to the class method
