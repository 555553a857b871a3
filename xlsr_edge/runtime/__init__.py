"""Embedded runtime: numpy + onnxruntime (+ tensorrt when present). Never imports torch or transformers."""

from xlsr_edge.runtime.backend_options import BackendOptions, OpenVinoOptions, OrtOptions, TrtOptions

# multilang defines the Recognizer of multi-language bundles: imported here, so load_recognizer finds it whatever
# module of the runtime a caller imports first
from xlsr_edge.runtime.multilang import MultiItem, MultiRecognizer
from xlsr_edge.runtime.recognizer import (
    AudioItem,
    Recognizer,
    TranscribeOptions,
    Transcript,
    load_recognizer,
)
from xlsr_edge.runtime.runners import OnnxRuntimeRunner, Runner, backends, make_runner, register_backend
from xlsr_edge.runtime.stream import Final, Partial, Stream, StreamOptions
from xlsr_edge.runtime.vad import VadOptions

__all__ = [
    "AudioItem",
    "BackendOptions",
    "Final",
    "MultiItem",
    "MultiRecognizer",
    "OnnxRuntimeRunner",
    "OpenVinoOptions",
    "OrtOptions",
    "Partial",
    "Recognizer",
    "Runner",
    "Stream",
    "StreamOptions",
    "TranscribeOptions",
    "Transcript",
    "TrtOptions",
    "VadOptions",
    "backends",
    "load_recognizer",
    "make_runner",
    "register_backend",
]
