"""Embedded runtime: numpy + onnxruntime (+ tensorrt when present). Never imports torch or transformers."""

from xlsr_edge.runtime.recognizer import Recognizer, TranscribeOptions, Transcript
from xlsr_edge.runtime.runners import OnnxRuntimeRunner, Runner, backends, make_runner, register_backend
from xlsr_edge.runtime.stream import Final, Partial, Stream, StreamOptions
from xlsr_edge.runtime.vad import VadOptions

__all__ = [
    "Final",
    "OnnxRuntimeRunner",
    "Partial",
    "Recognizer",
    "Runner",
    "Stream",
    "StreamOptions",
    "TranscribeOptions",
    "Transcript",
    "VadOptions",
    "backends",
    "make_runner",
    "register_backend",
]
