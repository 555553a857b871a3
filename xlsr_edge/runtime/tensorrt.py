"""Native TensorRT: engine profiles, building from the bundle's ONNX, the engine sidecar and a runner backend.

Precision lives in the ONNX graph (fp16 casts, Q/DQ nodes) and the network is strongly typed: TensorRT 11
removed the FP16/INT8 builder flags and calibrators, and TensorRT 10.3 (JetPack 6) builds such graphs the same
way. No torch: this module runs on a Jetson, where engines must be built on the board itself.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from packaging.version import Version

from xlsr_edge.bundle import (
    BundleManifest,
    ModelInfo,
    bundle_path,
    read_manifest,
    sha256_file,
    write_manifest,
)
from xlsr_edge.constants import ATTENTION_MASK, INPUT_VALUES, OUTPUT_LENGTHS, OUTPUT_LOGITS
from xlsr_edge.errors import BundleError, MissingDependencyError, XlsrEdgeError
from xlsr_edge.runtime.runners import Runner, register_backend

ENGINE_FILE = "engine.plan"
TRT_INSTALL_HINT = (
    "TensorRT needs an NVIDIA GPU; on Jetson use the TensorRT that JetPack ships "
    "(JetPack 6: TensorRT 10.3, `apt install python3-libnvinfer`) instead of the pip wheel"
)


# -- profiles -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineProfile:
    """Optimization profile in seconds and batch; shapes follow from the bundle's sample rate and conv stack."""

    min_seconds: float = 0.025
    opt_seconds: float = 10.0
    max_seconds: float = 30.0
    max_batch: int = 8
    opt_batch: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.min_seconds <= self.opt_seconds <= self.max_seconds:
            raise ValueError(
                f"need 0 < --min-seconds ({self.min_seconds}) <= --opt-seconds ({self.opt_seconds}) "
                f"<= --max-seconds ({self.max_seconds})"
            )
        if self.max_batch < 1 or (self.opt_batch is not None and not 1 <= self.opt_batch <= self.max_batch):
            raise ValueError("need 1 <= opt batch <= --max-batch")

    def shapes(self, info: ModelInfo) -> dict[str, Any]:
        """min/opt/max input shapes [batch, samples] and the frame counts they produce."""
        rate = info.sample_rate
        lo = max(info.receptive_field_samples, round(self.min_seconds * rate))
        opt = max(lo, round(self.opt_seconds * rate))
        hi = max(opt, round(self.max_seconds * rate))
        opt_batch = self.opt_batch or self.max_batch
        return {
            "min": (1, lo),
            "opt": (opt_batch, opt),
            "max": (self.max_batch, hi),
            "frames": {"min": info.frames_for(lo), "opt": info.frames_for(opt), "max": info.frames_for(hi)},
        }


# -- compatibility --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceInfo:
    tensorrt_version: str
    compute_capability: str  # "8.7"
    gpu_name: str


def engine_compatibility(sidecar: dict[str, Any], device: DeviceInfo) -> str | None:
    """None when the engine can run here, else why not. Engines are tied to the GPU architecture (compute
    capability) and to the exact TensorRT release that built them."""
    cc, built_trt = sidecar.get("compute_capability"), sidecar.get("tensorrt_version")
    if cc != device.compute_capability:
        return (
            f"the engine was built for compute capability {cc} ({sidecar.get('gpu_name')}), "
            f"this GPU is {device.compute_capability} ({device.gpu_name})"
        )
    try:
        same = Version(str(built_trt)) == Version(device.tensorrt_version)
    except Exception:  # an unparsable version string: treat as a mismatch
        same = False
    if not same:
        return f"the engine was built with TensorRT {built_trt}, this device has TensorRT {device.tensorrt_version}"
    return None


def check_engine(manifest: BundleManifest, device: DeviceInfo) -> dict[str, Any]:
    sidecar = manifest.extra.get("engine")
    if not sidecar:
        raise BundleError(
            "this bundle has no TensorRT engine; build one with `xlsr-edge build-engine BUNDLE`"
        )
    why = engine_compatibility(sidecar, device)
    if why:
        raise BundleError(f"{why}; rebuild it on this device with `xlsr-edge build-engine BUNDLE`")
    return sidecar


# -- lazy imports and the device ----------------------------------------------------------------------------


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise MissingDependencyError("tensorrt", "trt", TRT_INSTALL_HINT) from exc
    return trt


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as exc:
            raise MissingDependencyError("cuda-python", "trt", TRT_INSTALL_HINT) from exc
    return cudart


def _cuda(result):
    """cuda-python calls return (err, *values); raise on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise XlsrEdgeError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else values


def current_device() -> DeviceInfo:
    """TensorRT version and the GPU's compute capability; raises with an install hint when either is missing."""
    trt = _import_tensorrt()
    cudart = _import_cudart()
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count < 1:
        raise XlsrEdgeError(
            f"no NVIDIA GPU is visible to CUDA (cudaGetDeviceCount: {err}); TensorRT needs one"
        )
    props = _cuda(cudart.cudaGetDeviceProperties(0))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return DeviceInfo(trt.__version__, f"{props.major}.{props.minor}", name.strip("\x00 "))


# -- building -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildOptions:
    profile: EngineProfile = EngineProfile()
    workspace_mb: int | None = None  # cap for 8 GB Jetson boards
    timing_cache: Path | None = None
    builder_optimization_level: int | None = None  # 0..5, TensorRT default 3

    def __post_init__(self) -> None:
        if self.workspace_mb is not None and self.workspace_mb < 16:
            raise ValueError("--workspace-mb must be at least 16")
        if self.builder_optimization_level is not None and not 0 <= self.builder_optimization_level <= 5:
            raise ValueError("--builder-optimization-level must be within 0..5")


def network_flags(trt, version: str) -> int:
    """Strongly typed networks: an explicit flag on TensorRT 10, always on (flag deprecated) on 11."""
    if Version(version) >= Version("11") or not hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _progress_monitor(trt):
    """Prints build phases to stderr (TensorRT >= 10 has IProgressMonitor)."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.t0 = time.perf_counter()

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None:
                logging.getLogger(__name__).info(
                    "[%6.1fs] %s (%s steps)", time.perf_counter() - self.t0, phase_name, num_steps
                )

        def step_complete(self, phase_name, step):
            return True  # keep building

        def phase_finish(self, phase_name):
            pass

    return Monitor()


def build_engine(bundle: Path, options: BuildOptions, device: DeviceInfo | None = None) -> dict[str, Any]:
    """Build engine.plan from the bundle's graph and record the sidecar in bundle.json (atomically)."""
    device = device or current_device()
    trt = _import_tensorrt()
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    info = manifest.model
    shapes = options.profile.shapes(info)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, trt.__version__))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(bundle_path(bundle, manifest.graph, field="graph"))):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise XlsrEdgeError(f"TensorRT cannot parse {manifest.graph}: {errors}")
    config = builder.create_builder_config()
    if options.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    if options.builder_optimization_level is not None:
        config.builder_optimization_level = options.builder_optimization_level
    monitor = _progress_monitor(trt)
    if monitor is not None:
        config.progress_monitor = monitor
    cache_bytes = (
        options.timing_cache.read_bytes() if options.timing_cache and options.timing_cache.is_file() else b""
    )
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    names = [INPUT_VALUES] + ([ATTENTION_MASK] if info.uses_attention_mask else [])
    for name in names:
        profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise XlsrEdgeError(
            "TensorRT failed to build the engine (see the log above); try a smaller --workspace-mb "
            "or profile on memory-limited boards"
        )
    seconds = time.perf_counter() - t0
    tmp = bundle / f".{ENGINE_FILE}.tmp"
    tmp.unlink(missing_ok=True)  # never write through a symlink someone left in the bundle
    tmp.write_bytes(bytes(serialized))
    if options.timing_cache:
        options.timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    os.replace(tmp, bundle / ENGINE_FILE)
    sidecar = {
        "file": ENGINE_FILE,
        "tensorrt_version": device.tensorrt_version,
        "gpu_name": device.gpu_name,
        "compute_capability": device.compute_capability,
        "precision": manifest.precision,
        "profile": {
            **asdict(options.profile),
            "shapes": {k: list(v) if isinstance(v, tuple) else v for k, v in shapes.items()},
        },
        "build_options": {
            "workspace_mb": options.workspace_mb,
            "builder_optimization_level": options.builder_optimization_level,
            "timing_cache": str(options.timing_cache) if options.timing_cache else None,
            "strongly_typed": True,
        },
        "build_seconds": round(seconds, 1),
        "sha256": sha256_file(bundle / ENGINE_FILE),
    }
    manifest.extra["engine"] = sidecar
    write_manifest(bundle, manifest)  # re-hashes every file, engine included; atomic
    return sidecar


# -- runner ---------------------------------------------------------------------------------------------------


class TensorRTRunner(Runner):
    """Runs engine.plan with cuda-python buffers on one CUDA stream; shapes set per batch within the profile."""

    name = "tensorrt"

    def __init__(self, bundle: Path, manifest: BundleManifest, device: DeviceInfo | None = None) -> None:
        super().__init__()
        self.bundle = Path(bundle)
        self.manifest = manifest
        self._device_info = device
        self.engine = self.context = self.stream = None
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        shapes = (manifest.extra.get("engine") or {}).get("profile", {}).get("shapes", {})
        self.max_batch = shapes.get("max", [None, None])[0]
        self.max_samples = shapes.get("max", [None, None])[1]

    def _device(self) -> DeviceInfo:
        return self._device_info or current_device()

    def _activate(self) -> None:
        sidecar = check_engine(self.manifest, self._device())  # refuse before touching the GPU
        path = bundle_path(self.bundle, sidecar["file"], field="extra.engine.file")
        if sha256_file(path) != sidecar["sha256"]:
            raise BundleError(
                f"{path} does not match its sha256 in bundle.json; rebuild with `xlsr-edge build-engine`"
            )
        trt = _import_tensorrt()
        self.cudart = _import_cudart()
        self.trt_runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.trt_runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BundleError(f"TensorRT could not load {path}; rebuild with `xlsr-edge build-engine`")
        self.context = self.engine.create_execution_context()
        self.stream = _cuda(self.cudart.cudaStreamCreate())

    def _deactivate(self) -> None:
        for ptr, _ in self._buffers.values():
            self.cudart.cudaFree(ptr)
        self._buffers.clear()
        if self.stream is not None:
            self.cudart.cudaStreamDestroy(self.stream)
        self.context = self.engine = self.stream = None

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:  # grow only; batches vary in shape
            if ptr:
                self.cudart.cudaFree(ptr)
            ptr = _cuda(self.cudart.cudaMalloc(nbytes))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def infer(
        self, input_values: np.ndarray, attention_mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.context is None:
            self.activate()
        cudart = self.cudart
        batch, samples = input_values.shape
        if (self.max_batch and batch > self.max_batch) or (self.max_samples and samples > self.max_samples):
            raise XlsrEdgeError(
                f"batch {batch}x{samples} is outside the engine profile (max {self.max_batch}x{self.max_samples}); "
                "the Recognizer splits batches to fit, other callers must too"
            )
        feeds = {INPUT_VALUES: np.ascontiguousarray(input_values, dtype=np.float32)}
        if self.manifest.model.uses_attention_mask:
            mask = (
                attention_mask if attention_mask is not None else np.ones(input_values.shape, dtype=np.int64)
            )
            feeds[ATTENTION_MASK] = np.ascontiguousarray(mask, dtype=np.int64)
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, arr in feeds.items():
            self.context.set_input_shape(name, arr.shape)
            ptr = self._buffer(name, arr.nbytes)
            _cuda(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self.stream))
            self.context.set_tensor_address(name, ptr)
        outputs = {}
        for name, dtype in ((OUTPUT_LOGITS, np.float32), (OUTPUT_LENGTHS, np.int64)):
            out = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype)
            self.context.set_tensor_address(name, self._buffer(name, max(out.nbytes, 1)))
            outputs[name] = out
        if not self.context.execute_async_v3(self.stream):
            raise XlsrEdgeError("TensorRT execution failed")
        for name, out in outputs.items():
            _cuda(
                cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[name][0], out.nbytes, d2h, self.stream)
            )
        _cuda(cudart.cudaStreamSynchronize(self.stream))
        return outputs[OUTPUT_LOGITS], outputs[OUTPUT_LENGTHS]


register_backend("tensorrt", lambda folder, manifest, **kw: TensorRTRunner(folder, manifest, **kw))


def describe(sidecar: dict[str, Any]) -> str:
    return json.dumps(
        {k: sidecar[k] for k in ("tensorrt_version", "gpu_name", "compute_capability", "precision")}
    )
