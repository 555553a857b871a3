"""MMS attention adapters as a graph input: one body graph serves every language of an MMS multi bundle.

MMS (facebook/mms-1b-all and its fine-tunes) adds a small adapter (LayerNorm, Linear, ReLU, Linear) after every
transformer layer and gives each language its own adapter weights and CTC head; the body is shared. A multi
bundle therefore exports the body once with one extra input, `adapter_weights` (float32 [P]: every adapter
parameter of the model, flattened in module order), and stores each language's vector beside its head
(heads/<lang>.npz: weight, bias, adapter). One session holds the body; a language costs its adapter and head.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

ADAPTER_MARK = ".adapter_layer."  # transformers' attribute for Wav2Vec2AttnAdapterLayer inside encoder layers


def has_attention_adapters(model: nn.Module) -> bool:
    return any(ADAPTER_MARK in name for name, _ in model.named_parameters())


def adapter_parameters(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of every attention-adapter parameter, in the order the graph input concatenates them."""
    return [(name, p) for name, p in model.named_parameters() if ADAPTER_MARK in name]


def flat_adapter(model: nn.Module) -> np.ndarray:
    """One language's adapter weights as the `adapter_weights` input vector."""
    return np.concatenate(
        [p.detach().float().reshape(-1).numpy() for _, p in adapter_parameters(model)]
    ).astype(np.float32)


class AdapterInput:
    """Holds the graph's `adapter_weights` tensor while the wrapper's forward runs."""

    def __init__(self) -> None:
        self.flat: torch.Tensor | None = None


def _functional_forward(holder: AdapterInput, offsets: list[tuple[int, tuple[int, ...]]], eps: float):
    def forward(self, hidden_states):
        flat = holder.flat
        (o_nw, s_nw), (o_nb, s_nb), (o_w1, s_w1), (o_b1, s_b1), (o_w2, s_w2), (o_b2, s_b2) = offsets

        def take(o: int, shape: tuple[int, ...]) -> torch.Tensor:
            n = int(np.prod(shape))
            return flat[o : o + n].reshape(shape)

        h = nn.functional.layer_norm(hidden_states, s_nw, take(o_nw, s_nw), take(o_nb, s_nb), eps)
        h = torch.relu(nn.functional.linear(h, take(o_w1, s_w1), take(o_b1, s_b1)))
        return nn.functional.linear(h, take(o_w2, s_w2), take(o_b2, s_b2))

    return forward


@contextmanager
def adapters_from_input(model: nn.Module, holder: AdapterInput) -> Iterator[None]:
    """While tracing: every attention adapter computes with its slice of `holder.flat` instead of its weights."""
    offset, by_module = 0, {}
    for name, p in adapter_parameters(model):
        module_name = name.rsplit(".", 2)[0]  # encoder.layers.3.adapter_layer
        by_module.setdefault(module_name, []).append((name, offset, tuple(p.shape)))
        offset += p.numel()
    patched = []
    for module_name, params in by_module.items():
        module = model.get_submodule(module_name)
        order = [
            f"{module_name}.{k}" for k in ("norm.weight", "norm.bias", "linear_1.weight", "linear_1.bias")
        ]
        order += [f"{module_name}.linear_2.weight", f"{module_name}.linear_2.bias"]
        found = {n: (o, s) for n, o, s in params}
        if sorted(found) != sorted(order) or not isinstance(getattr(module, "act_fn", None), nn.ReLU):
            raise ValueError(
                f"{module_name} is not an MMS attention adapter (LayerNorm, Linear, ReLU, Linear)"
            )
        forward = _functional_forward(holder, [found[n] for n in order], module.norm.eps)
        module.forward = types.MethodType(forward, module)
        patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward  # back to the class method
