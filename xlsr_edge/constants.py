"""Constants shared by the export and runtime halves (one place, like pyctcdecode's constants)."""

from __future__ import annotations

# Bundle layout
SCHEMA_VERSION = 1
BUNDLE_JSON = "bundle.json"
MODEL_ONNX = "model.onnx"
MODEL_ONNX_DATA = "model.onnx.data"

# Graph IO names: the runtime and every exporter agree on these.
INPUT_VALUES = "input_values"
ATTENTION_MASK = "attention_mask"
OUTPUT_LOGITS = "logits"
OUTPUT_LENGTHS = "logit_lengths"
OUTPUT_HIDDEN = "hidden_states"  # multi-language backbones: per-language heads are applied in numpy
# MMS multi backbones: the language's attention-adapter weights, flattened, as a graph input
ADAPTER_WEIGHTS = "adapter_weights"

DEFAULT_OPSET = 17
MIN_OPSET = 17
# ONNX protobuf files cannot exceed 2 GiB; above this many bytes of weights we write external data.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000

# Feature extractor normalization epsilon used by transformers' Wav2Vec2FeatureExtractor.
NORMALIZE_EPS = 1e-7

# Parity gate defaults (fp32 export vs PyTorch, on speech).
PARITY_MAX_ABS_DIFF = 1e-3
PARITY_MIN_ARGMAX_AGREEMENT = 0.999
PARITY_MIN_UTTERANCES = 3

# Precision (fp16 / int8) accuracy gate defaults: fp32 graph vs converted graph on the calibration manifest.
PRECISION_MAX_CER_DELTA = 0.5  # CER percentage points the converted graph may add (transcribed manifests)
PRECISION_MIN_FRAME_AGREEMENT = 0.95  # frame argmax agreement with fp32 (manifests without transcripts)
PRECISION_GATE_SIZE = 100  # utterances the gate transcribes (stratified by duration)

# What soundfile reads that we look for in folders (runtime, manifests, parity gate).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3")

# Runtime defaults
DEFAULT_CHUNK_SECONDS = 30.0
DEFAULT_CHUNK_CONTEXT_SECONDS = 5.0
DEFAULT_BATCH_SIZE = 8
# Batches of windows close when zero padding would exceed this share of the padded batch (runtime.batching.bucket).
# Graphs without an attention mask are never padded (runtime.batching.padding_limit: equal lengths only).
MAX_PADDING = 0.25
# Longest input transcribe accepts (TranscribeOptions.max_seconds, --max-seconds; 0 disables). Audio is streamed
# window by window, so memory grows only with the logits (50 frames/s x vocabulary, about 100 MB for 4 h); 4 h
# covers a long meeting or lecture in one file, while a header that claims days is refused at once.
DEFAULT_MAX_SECONDS = 4 * 3600.0
# Sample rates the front end accepts: below 8 kHz there is no speech band left to recognize (and a 1 Hz header
# would resample for hours); above 384 kHz (the fastest audio converters) the header is wrong.
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 384_000

# Exit codes of the CLIs
EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT
EXIT_BROKEN_PIPE = 141  # stdout closed by the reader (`| head`), as shells report SIGPIPE

# OpenVINO static compiles of repeated input shapes (xlsr_edge.runtime.openvino, --static-shapes): a shape's
# second call compiles it (a one-off length never pays a compile), at most this many per runner (each holds its
# own copy of the weights).
STATIC_SHAPE_REPEATS = 2
MAX_STATIC_SHAPES = 16
