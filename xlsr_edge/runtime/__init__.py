"""Embedded runtime: numpy + onnxruntime (+ tensorrt when present). Never imports torch or transformers."""

from xlsr_edge.runtime.recognizer import Recognizer, TranscribeOptions, Transcript
from xlsr_edge.runtime.runners import OnnxRuntimeRunner, Runner, backends, make_runner, register_backend

__all__ = [
    "OnnxRuntimeRunner",
    "Recognizer",
    "Runner",
    "TranscribeOptions",
    "Transcript",
    "backends",
    "make_runner",
    "register_backend",
]
