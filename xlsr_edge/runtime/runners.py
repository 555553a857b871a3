"""One runner interface (activate / infer / deactivate), one backend per engine (Polygraphy style)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from xlsr_edge.constants import ADAPTER_WEIGHTS, ATTENTION_MASK, INPUT_VALUES, OUTPUT_LENGTHS
from xlsr_edge.errors import XlsrEdgeError


def graph_feeds(
    input_values: np.ndarray, attention_mask: np.ndarray | None, uses_mask: bool
) -> dict[str, np.ndarray]:
    """The graph's inputs, as every backend feeds them: float32 samples (+ an int64 mask, all ones if none given)."""
    feeds = {INPUT_VALUES: np.ascontiguousarray(input_values, dtype=np.float32)}
    if uses_mask:
        if attention_mask is None:
            attention_mask = np.ones(input_values.shape, dtype=np.int64)
        feeds[ATTENTION_MASK] = np.ascontiguousarray(attention_mask, dtype=np.int64)
    return feeds


class Runner(ABC):
    """Runs a bundle's graph: float32 [batch, samples] (+ int64 mask) -> logits [batch, frames, vocab], lengths."""

    name = "runner"
    # Shape limits of the engine (TensorRT profiles); None = any. The Recognizer chunks and batches to fit.
    max_batch: int | None = None
    max_samples: int | None = None

    def __init__(self) -> None:
        self.active = False

    def activate(self) -> Runner:
        if not self.active:
            self._activate()
            self.active = True
        return self

    def deactivate(self) -> None:
        if self.active:
            self._deactivate()
            self.active = False

    @abstractmethod
    def _activate(self) -> None: ...

    def _deactivate(self) -> None:
        """Free sessions/engines; default: nothing to do."""

    @abstractmethod
    def infer(
        self, input_values: np.ndarray, attention_mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (logits float32 [B, T, V], logit_lengths int64 [B])."""

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()


_PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}


def resolve_providers(providers: Sequence[str] | str | None, trt_cache_dir: Path | None = None) -> list:
    """Map short names (cpu, cuda, tensorrt) to onnxruntime providers; refuse ones this build lacks."""
    import onnxruntime as ort

    if providers is None:
        providers = ["cpu"]
    if isinstance(providers, str):
        providers = [p for p in providers.split(",") if p]
    available = ort.get_available_providers()
    out: list = []
    for p in providers:
        full = _PROVIDER_ALIASES.get(p.lower(), p)
        if full not in available:
            raise XlsrEdgeError(
                f"onnxruntime provider {full} is not available here (available: {', '.join(available)}); "
                "install onnxruntime-gpu for CUDA/TensorRT, or use --providers cpu"
            )
        if full == "TensorrtExecutionProvider" and trt_cache_dir is not None:
            trt_cache_dir.mkdir(parents=True, exist_ok=True)
            out.append((full, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(trt_cache_dir)}))
        else:
            out.append(full)
    if "CPUExecutionProvider" not in [p if isinstance(p, str) else p[0] for p in out]:
        out.append("CPUExecutionProvider")  # fallback for nodes an accelerator provider does not take
    return out


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(
        self,
        model_path: Path,
        *,
        providers: Sequence[str] | str | None = None,
        threads: int | None = None,
        trt_cache_dir: Path | None = None,
    ) -> None:
        super().__init__()
        self.model_path = Path(model_path)
        self.providers = providers
        self.threads = threads
        self.trt_cache_dir = trt_cache_dir
        self.session = None
        self.uses_mask = False
        # MMS multi backbones take the language's attention-adapter weights as an input: set by the head runner
        self.needs_adapter = False
        self.adapter_weights: np.ndarray | None = None

    def _activate(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle pool threads sleep instead of spinning: 10-11 % faster at 2 threads with other work on the CPU
        # (decoding, other processes), no slower at 1 thread or on 30 s windows (docs/precision.md)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.threads:
            opts.intra_op_num_threads = int(self.threads)
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(self.model_path), opts, providers=resolve_providers(self.providers, self.trt_cache_dir)
            )
        except XlsrEdgeError:
            raise
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise XlsrEdgeError(f"onnxruntime cannot load {self.model_path}: {exc}") from exc
        inputs = {i.name for i in self.session.get_inputs()}
        self.uses_mask = ATTENTION_MASK in inputs
        self.needs_adapter = ADAPTER_WEIGHTS in inputs
        # logits for CTC bundles, hidden_states for shared multi-language backbones
        names = [o.name for o in self.session.get_outputs()]
        self.outputs = [next(n for n in names if n != OUTPUT_LENGTHS), OUTPUT_LENGTHS]

    def _deactivate(self) -> None:
        self.session = None

    def infer(
        self, input_values: np.ndarray, attention_mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.session is None:
            self.activate()
        feeds = graph_feeds(input_values, attention_mask, self.uses_mask)
        if self.needs_adapter:
            if self.adapter_weights is None:
                raise XlsrEdgeError(
                    f"{self.model_path} needs a language's adapter weights (an MMS multi backbone)"
                )
            feeds[ADAPTER_WEIGHTS] = self.adapter_weights
        logits, lengths = self.session.run(self.outputs, feeds)
        return logits, lengths


RunnerFactory = Callable[..., Runner]
_BACKENDS: dict[str, RunnerFactory] = {}


def register_backend(name: str, factory: RunnerFactory) -> None:
    _BACKENDS[name] = factory


register_backend(
    "onnxruntime",
    lambda folder, manifest, **kw: OnnxRuntimeRunner(Path(folder) / manifest.graph, **kw),
)


# backends whose module registers itself on import (kept out of the import path until asked for)
_LAZY_BACKENDS = {"tensorrt": "xlsr_edge.runtime.tensorrt", "openvino": "xlsr_edge.runtime.openvino"}


def make_runner(backend: str, folder: Path, manifest, **kwargs) -> Runner:
    if backend not in _BACKENDS and backend in _LAZY_BACKENDS:
        import importlib

        importlib.import_module(_LAZY_BACKENDS[backend])
    try:
        factory = _BACKENDS[backend]
    except KeyError:
        raise XlsrEdgeError(
            f"unknown backend {backend!r}; choose one of {', '.join(sorted(_BACKENDS))}"
        ) from None
    return factory(folder, manifest, **kwargs)


def backends() -> list[str]:
    return sorted(set(_BACKENDS) | set(_LAZY_BACKENDS))
