"""Torch + transformers side: checkpoint -> ONNX -> parity gate -> bundle. Heavy imports live here only."""

from __future__ import annotations

__all__ = ["ExportOptions", "export_bundle"]


def __getattr__(name: str):
    # lazy, so `python -m xlsr_edge.export.tiny` and the CLI's --help do not pay for torch
    if name in __all__:
        from xlsr_edge.export import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
