"""Typed runner settings per backend, in the style of Polygraphy's loaders: one frozen dataclass per engine,
validated when it is made and able to build its own runner, and ``BackendOptions``, which names the engine and
carries the settings of each.

The CLI builds one ``BackendOptions`` from its flags (``xlsr_edge.commands.common.backend_options``) and hands it
down; library callers pass one to ``Recognizer.from_bundle(backend_options=...)`` / ``load_recognizer``, or keep
using the shorthands (``backend``, ``providers``, ``threads`` and a backend's runner keywords), which
``BackendOptions.from_keywords`` maps. This is the one module that dispatches on a backend's name.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xlsr_edge import limits
from xlsr_edge.errors import XlsrEdgeError
from xlsr_edge.runtime.openvino import (
    OPENVINO_FLAGS_ONLY,
    OpenVinoRunner,
    check_precision_hint,
    check_static_shapes,
    default_cache_dir,
)
from xlsr_edge.runtime.runners import OnnxRuntimeRunner, Runner, make_runner
from xlsr_edge.runtime.tuned import runtime_defaults

if TYPE_CHECKING:
    from xlsr_edge.bundle import BundleManifest

ONNXRUNTIME, OPENVINO, TENSORRT = "onnxruntime", "openvino", "tensorrt"
BUILTIN_BACKENDS = (ONNXRUNTIME, TENSORRT, OPENVINO)
DEFAULT_BACKEND = ONNXRUNTIME
_TRT_PROVIDERS = ("tensorrt", "trt", "tensorrtexecutionprovider")
# runner keywords of Recognizer.from_bundle that belong to a built-in backend's typed options
_OPENVINO_KEYWORDS = ("precision_hint", "cache_dir", "device", "static_shapes")
_TRT_CACHE_KEYWORD = "trt_cache_dir"


def _check_threads(threads: int | None) -> None:
    """None (the engine's default) or 1 to xlsr_edge.limits.max_threads() (thousands of threads only eat memory)."""
    if threads is not None:
        limits.check_threads("threads", threads)


def _path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)


@dataclass(frozen=True)
class TrtOptions:
    """TensorRT engines. ``cache_dir`` (``--trt-cache-dir``): where onnxruntime's TensorRT execution provider
    (``--providers tensorrt``) keeps the engines it builds, so that only the first load on a GPU pays for the
    build (None: built again at every load). The native backend (``--backend tensorrt``) runs the engine.plan
    that `xlsr-edge build-engine` wrote into the bundle, with that engine's shape profile."""

    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache_dir", _path(self.cache_dir))

    def make_runner(self, bundle: Path, manifest: BundleManifest) -> Runner:
        """The native TensorRT runner of a bundle folder (tensorrt and cuda-python are imported when it starts)."""
        from xlsr_edge.runtime.tensorrt import TensorRTRunner

        return TensorRTRunner(Path(bundle), manifest)


@dataclass(frozen=True)
class OrtOptions:
    """onnxruntime: execution providers in order of preference (short names cpu, cuda, tensorrt/trt or
    onnxruntime's own; a string is split at commas; CPU is always added last as the fallback) and intra-op
    threads (None: onnxruntime's default)."""

    providers: tuple[str, ...] = ("cpu",)
    threads: int | None = None

    def __post_init__(self) -> None:
        providers: Sequence[str] | str | None = self.providers
        if providers is None:
            providers = ()
        elif isinstance(providers, str):
            providers = providers.split(",")
        object.__setattr__(self, "providers", tuple(p.strip() for p in providers if p.strip()) or ("cpu",))
        _check_threads(self.threads)

    @property
    def uses_tensorrt(self) -> bool:
        return any(p.lower() in _TRT_PROVIDERS for p in self.providers)

    def make_runner(self, graph: Path, tensorrt: TrtOptions | None = None) -> Runner:
        """A runner for one ONNX file; ``tensorrt.cache_dir``: the TensorRT provider's engine cache."""
        cache = tensorrt.cache_dir if tensorrt is not None else None
        return OnnxRuntimeRunner(
            Path(graph), providers=self.providers, threads=self.threads, trt_cache_dir=cache
        )


@dataclass(frozen=True)
class OpenVinoOptions:
    """OpenVINO (extra ``[openvino]``, see ``xlsr_edge.runtime.openvino``): threads (INFERENCE_NUM_THREADS; None:
    OpenVINO's default), the inference precision of what is not int8 (auto/bf16/f32/f16), the compiled-model
    cache folder (default ``~/.cache/xlsr-edge/openvino``; None: no cache), the device, and how many repeated
    input shapes get a static compile (0: none; ``xlsr_edge.runtime.openvino``)."""

    threads: int | None = None
    precision_hint: str = "auto"
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    device: str = "CPU"
    static_shapes: int = 0

    def __post_init__(self) -> None:
        _check_threads(self.threads)
        object.__setattr__(self, "precision_hint", check_precision_hint(self.precision_hint))
        object.__setattr__(self, "static_shapes", check_static_shapes(self.static_shapes))
        cache = self.cache_dir
        object.__setattr__(self, "cache_dir", default_cache_dir() if cache == "auto" else _path(cache))

    def make_runner(self, graph: Path) -> Runner:
        return OpenVinoRunner(
            Path(graph),
            threads=self.threads,
            precision_hint=self.precision_hint,
            cache_dir=self.cache_dir,
            device=self.device,
            static_shapes=self.static_shapes,
        )


@dataclass(frozen=True)
class BackendOptions:
    """The engine that runs a bundle (``backend``: onnxruntime, openvino, tensorrt, or a name added with
    ``runners.register_backend``, which gets ``extra`` as keywords) and the typed settings of each built-in one.

    ``backend=None``: the bundle decides when it is loaded (``resolve``): the runtime `xlsr-edge optimize`
    recorded in its bundle.json (backend, threads, OpenVINO hint; settings given here win), else onnxruntime."""

    backend: str | None = DEFAULT_BACKEND
    onnxruntime: OrtOptions = field(default_factory=OrtOptions)
    openvino: OpenVinoOptions = field(default_factory=OpenVinoOptions)
    tensorrt: TrtOptions = field(default_factory=TrtOptions)
    extra: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.backend is not None and (not isinstance(self.backend, str) or not self.backend):
            raise ValueError(f"backend must be a backend's name, got {self.backend!r}")
        if isinstance(self.extra, dict):
            object.__setattr__(self, "extra", tuple(self.extra.items()))
        if self.extra and self.backend in BUILTIN_BACKENDS:
            names = ", ".join(k for k, _ in self.extra)
            raise TypeError(f"{names}: not a setting of the {self.backend} backend")
        if self.tensorrt.cache_dir is not None and not (
            self.backend in (ONNXRUNTIME, None) and self.onnxruntime.uses_tensorrt
        ):
            raise XlsrEdgeError(
                "--trt-cache-dir is where onnxruntime's TensorRT provider keeps its engines: it needs "
                "--backend onnxruntime --providers tensorrt (--backend tensorrt runs the engine.plan that "
                "`xlsr-edge build-engine` wrote into the bundle)"
            )

    @classmethod
    def from_keywords(
        cls,
        backend: str | None = None,
        *,
        providers: Sequence[str] | str | None = None,
        threads: int | None = None,
        ignore_unused: Collection[str] = (),
        **runner_kwargs: Any,
    ) -> BackendOptions:
        """Recognizer.from_bundle's shorthands: ``providers`` (onnxruntime), ``threads`` (onnxruntime and
        OpenVINO) and a backend's runner keywords (onnxruntime: ``trt_cache_dir``; openvino: ``precision_hint``,
        ``cache_dir``, ``device``; a registered backend: its own). ``providers``/``threads`` that the backend does
        not take are refused, or dropped when named in ``ignore_unused`` (the CLI's --providers defaults to cpu
        whatever the backend; a Ray worker's threads are its CPUs). ``backend`` None: the bundle decides when it
        is loaded (``resolve``); the settings of onnxruntime and OpenVINO are both kept for it."""
        kw = dict(runner_kwargs)
        if providers not in (None, "cpu") and backend not in (ONNXRUNTIME, None):
            if "providers" not in ignore_unused:
                raise XlsrEdgeError(f"--providers/--threads apply to the onnxruntime backend, not {backend}")
            providers = None
        if threads is not None and backend not in (ONNXRUNTIME, OPENVINO, None):
            if threads and "threads" not in ignore_unused:
                raise XlsrEdgeError(f"--providers/--threads apply to the onnxruntime backend, not {backend}")
            threads = None
        ort, ov = OrtOptions(), OpenVinoOptions()
        if backend in (ONNXRUNTIME, None):
            ort = OrtOptions(providers=providers, threads=threads)
        if backend in (OPENVINO, None):
            ov = OpenVinoOptions(threads=threads, **{k: kw.pop(k) for k in _OPENVINO_KEYWORDS if k in kw})
        trt = TrtOptions(cache_dir=kw.pop(_TRT_CACHE_KEYWORD, None))
        return cls(backend=backend, onnxruntime=ort, openvino=ov, tensorrt=trt, extra=tuple(kw.items()))

    @property
    def selected(self) -> OrtOptions | OpenVinoOptions | TrtOptions | None:
        """The chosen backend's settings (None for a backend added with register_backend)."""
        return {ONNXRUNTIME: self.onnxruntime, OPENVINO: self.openvino, TENSORRT: self.tensorrt}.get(
            self.backend
        )

    @property
    def takes_threads(self) -> bool:
        return self.backend in (ONNXRUNTIME, OPENVINO, None)

    def resolve(self, manifest: BundleManifest, bundle: Path) -> BackendOptions:
        """These options completed from the runtime the bundle records (`xlsr-edge optimize`; runtime.tuned, which
        warns once on a CPU with other instruction sets than the one it was measured on): ``backend`` None takes
        the recorded backend (else onnxruntime); threads and an OpenVINO hint not given here take the recorded
        ones where the backend is the recorded one. What is given here wins."""
        ort, ov = self.onnxruntime, self.openvino
        threads = {ONNXRUNTIME: ort.threads, OPENVINO: ov.threads}.get(
            self.backend, ort.threads if ort.threads is not None else ov.threads
        )
        given = {} if ov.precision_hint == "auto" else {"precision_hint": ov.precision_hint}
        backend, threads, kw = runtime_defaults(
            manifest.runtime, bundle, backend=self.backend, threads=threads, runner_kwargs=given
        )
        if self.backend is None and (given or ov.static_shapes) and backend != OPENVINO:
            # the same words as with an explicit --backend (the bundle records no OpenVINO runtime)
            raise XlsrEdgeError(OPENVINO_FLAGS_ONLY)
        if manifest.runtime is None and self.backend is not None:
            return self
        return replace(
            self,
            backend=backend,
            onnxruntime=replace(ort, threads=threads) if backend == ONNXRUNTIME else ort,
            openvino=replace(ov, threads=threads, **kw) if backend == OPENVINO else ov,
        )

    def make_runner(self, bundle: Path, manifest: BundleManifest) -> Runner:
        """The runner (not yet activated) for a loaded bundle folder, with the settings ``resolve`` completes
        from the runtime the bundle records."""
        bundle = Path(bundle)
        options = self.resolve(manifest, bundle)
        if options.backend == TENSORRT:
            return options.tensorrt.make_runner(bundle, manifest)
        if options.backend in (ONNXRUNTIME, OPENVINO):
            return options.graph_runner(bundle / manifest.graph)
        # a backend added with register_backend (an unknown name gets the list of known ones)
        return make_runner(options.backend, bundle, manifest, **dict(options.extra))

    def graph_runner(self, graph: Path) -> Runner:
        """A runner for a bare ONNX file (the precision gate's graphs): onnxruntime or OpenVINO only."""
        if self.backend in (ONNXRUNTIME, None):  # a bare graph has no recorded runtime
            return self.onnxruntime.make_runner(graph, self.tensorrt)
        if self.backend == OPENVINO:
            return self.openvino.make_runner(graph)
        raise ValueError(f"a bare ONNX graph runs on onnxruntime or openvino, not {self.backend!r}")
