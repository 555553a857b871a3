"""OpenVINO runner backend (`--backend openvino`, extra ``xlsr-edge[openvino]``) and the CPU's instruction sets.

OpenVINO reads the bundle's ONNX as it is (fp32, fp16 casts, int8 Q/DQ: its low-precision transformations turn
the Q/DQ MatMuls into int8 kernels) and compiles it for the CPU. It is fed ``input_values`` + ``attention_mask``
exactly like onnxruntime, so a padded batch gives the same transcripts as each clip alone.

* Inference precision hint (the precision of everything that is not int8): ``bf16`` where the CPU has
  AMX-BF16 or AVX512-BF16, ``f16`` on ARM with fp16 arithmetic (``fphp``/``asimdhp``), ``f32`` elsewhere
  (``choose_precision_hint``, a pure function of the CPU flags of ``xlsr_edge.runtime.cpu``);
  ``precision_hint="f32"`` (``--precision-hint f32``) forces full precision. On AMX, ``auto`` keeps f32 for a
  graph with narrow grouped convolutions (``AMX_BF16_MIN_GROUP_CHANNELS``: OpenVINO's bf16 kernel is wrong there).
* Threads: ``INFERENCE_NUM_THREADS``; one stream and the latency hint (one request at a time, all threads on it);
  threads are not pinned to cores (``ENABLE_CPU_PINNING`` off: on a machine that also runs other work, decoding
  included, a pinned thread waits for its busy core; measured 7 % faster unpinned at 2 threads under load, the
  same at 1 thread).
* Compiled-model cache (``CACHE_DIR``): the first load compiles and writes a blob, later loads of the same graph
  with the same settings read it back (start-up of seconds instead of tens of seconds on the 300M shape).
  Default ``$XDG_CACHE_HOME/xlsr-edge/openvino`` (``~/.cache/...``); ``cache_dir=None`` turns it off.
* Static shapes (``static_shapes=N``, ``--static-shapes N``; off by default): the graph is compiled for any
  input length, and OpenVINO's kernels for a dynamic length are slower than for a fixed one. An input shape seen
  STATIC_SHAPE_REPEATS times gets its own static compile, for up to N shapes per runner: the equal windows of a
  long file (``--chunk-seconds``), batches of them, a benchmark's fixed input; a one-off length never pays a
  compile. Measured on the 300M shape, 10 s, 1 thread, AMX, bf16 hint (docs/precision.md): int8 graphs 9-19 %
  faster per call, the fp32 graph 40-58 %; the price is the compile (logged with its seconds; cached on disk
  like the dynamic one) and a second copy of the weights (peak RSS 1086 -> 2138 MiB for the int8 bundle).
  Results equal the dynamic compile's up to the precision hint's rounding.

No torch here: this module is part of the runtime.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from xlsr_edge import limits
from xlsr_edge.constants import ATTENTION_MASK, MAX_STATIC_SHAPES, OUTPUT_LENGTHS, STATIC_SHAPE_REPEATS
from xlsr_edge.errors import XlsrEdgeError, require
from xlsr_edge.runtime.cpu import (  # noqa: F401  (cpu_flags, instruction_sets: imported from here before)
    ARM_FP16_FLAGS,
    BF16_FLAGS,
    cpu_flags,
    instruction_sets,
)
from xlsr_edge.runtime.runners import Runner, graph_feeds, register_backend

OPENVINO_EXTRA = "openvino"
PRECISION_HINTS = ("auto", "bf16", "f32", "f16")
logger = logging.getLogger(__name__)
# OpenVINO's bf16 grouped convolution on AMX computes wrong values when a group has few input channels (OpenVINO
# 2026.4 on an AMX Xeon: 4, 8 and 12 channels per group off by ~100 %, 15, 16, 17, 20 ... 64 right): the demo
# model's positional conv (192 channels in 16 groups) took its CER from 3.9 % to 48 %; XLS-R's (1024 in 16) is
# right. On AMX, `auto` gives such graphs f32 math (docs/precision.md).
AMX_BF16_MIN_GROUP_CHANNELS = 13
OPENVINO_FLAGS_ONLY = "--precision-hint, --cache-dir and --static-shapes apply to --backend openvino"
_SEEN_SHAPES_KEPT = 4096  # distinct shapes counted before the count starts over (a server's lengths vary)


def narrow_group_convolutions(model) -> list[str]:
    """The GroupConvolution ops of an ``ov.Model`` with fewer than AMX_BF16_MIN_GROUP_CHANNELS input channels per
    group (weights [groups, out/group, in/group, kernel...])."""
    out = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "GroupConvolution":
            continue
        shape = op.input(1).get_partial_shape()
        if (
            shape.rank.is_static
            and shape[2].is_static
            and shape[2].get_length() < AMX_BF16_MIN_GROUP_CHANNELS
        ):
            out.append(op.get_friendly_name())
    return out


def amx_safe_hint(
    requested: str, resolved: str, flags: Iterable[str], narrow: list[str]
) -> tuple[str, str | None]:
    """(hint, warning or None): ``auto`` that resolved to bf16 on an AMX CPU becomes f32 for a graph with narrow
    grouped convolutions; an explicit bf16 stays, with a warning."""
    if resolved != "bf16" or "amx_bf16" not in frozenset(flags) or not narrow:
        return resolved, None
    what = (
        f"OpenVINO's bf16 grouped convolution on AMX is wrong for groups of fewer than "
        f"{AMX_BF16_MIN_GROUP_CHANNELS} channels ({', '.join(narrow[:2])})"
    )
    if requested == "auto":
        return "f32", f"{what}: running this graph with --precision-hint f32"
    return resolved, f"{what}, and --precision-hint bf16 was asked for: expect wrong transcripts"


def choose_precision_hint(flags: Iterable[str]) -> str:
    """bf16 where an x86 CPU computes bf16 natively (AMX-BF16 or AVX512-BF16); f16 where an ARM CPU has fp16
    arithmetic (``fphp``/``asimdhp``: OpenVINO's ARM plugin runs f16 best there, its own default); f32 elsewhere.
    The flags come from ``xlsr_edge.runtime.cpu`` (one cpuinfo parser for the runtime and the benchmarks)."""
    have = frozenset(flags)
    if BF16_FLAGS & have:
        return "bf16"
    return "f16" if ARM_FP16_FLAGS & have else "f32"


def check_static_shapes(value: object) -> int:
    """0 (off) to MAX_STATIC_SHAPES static compiles per runner."""
    return limits.check_number("static_shapes", value, 0, MAX_STATIC_SHAPES, integer=True)


def check_precision_hint(hint: str | None) -> str:
    """The hint in canonical form (None -> ``auto``), or XlsrEdgeError naming the choices."""
    hint = (hint or "auto").strip().lower()
    if hint not in PRECISION_HINTS:
        raise XlsrEdgeError(f"--precision-hint must be one of {', '.join(PRECISION_HINTS)}, got {hint!r}")
    return hint


def resolve_precision_hint(hint: str | None, flags: Iterable[str] | None = None) -> str:
    """``auto``/None -> choose_precision_hint(flags, default: this CPU); bf16/f32/f16 as given."""
    hint = check_precision_hint(hint)
    if hint == "auto":
        return choose_precision_hint(cpu_flags() if flags is None else flags)
    return hint


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xlsr-edge" / "openvino"


def import_openvino():
    """The openvino module, or MissingDependencyError naming the extra (exit 2 with one `error:` line)."""
    return require("openvino", OPENVINO_EXTRA, "OpenVINO runs the bundle on Intel/AMD x86 and ARM CPUs")


# -- the runner ---------------------------------------------------------------------------------------------

_AUTO = "auto"


class OpenVinoRunner(Runner):
    name = "openvino"

    def __init__(
        self,
        model_path: Path,
        *,
        threads: int | None = None,
        precision_hint: str | None = None,
        cache_dir: str | Path | None = _AUTO,
        device: str = "CPU",
        static_shapes: int = 0,
    ) -> None:
        super().__init__()
        self.model_path = Path(model_path)
        self.threads = threads
        self.requested_hint = check_precision_hint(precision_hint)
        self.precision_hint = resolve_precision_hint(precision_hint)
        self.cache_dir = (
            default_cache_dir() if cache_dir == _AUTO else (Path(cache_dir) if cache_dir else None)
        )
        self.device = device
        self.compiled = None
        self.request = None
        self.uses_mask = False
        self.static_shapes = check_static_shapes(static_shapes)
        self._core: Any = None
        self._model: Any = None  # the ov.Model, kept to compile static copies of it (static_shapes only)
        self._seen: Counter[tuple[int, ...]] = Counter()
        self._static: dict[tuple[int, ...], Any] = {}  # input shape -> infer request of its static compile
        self._lock = threading.Lock()  # one infer request: calls from several threads take turns

    def config(self) -> dict[str, Any]:
        """The properties given to ``compile_model``."""
        cfg: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": self.precision_hint,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "ENABLE_CPU_PINNING": False,
        }
        if self.threads:
            cfg["INFERENCE_NUM_THREADS"] = int(self.threads)
        if self.cache_dir is not None:
            cfg["CACHE_DIR"] = str(self.cache_dir)
        return cfg

    def _activate(self) -> None:
        ov = import_openvino()
        if self.cache_dir is not None:
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise XlsrEdgeError(
                    f"cannot create the OpenVINO cache folder {self.cache_dir}: {exc}"
                ) from exc
        try:
            core = ov.Core()
            model: Any = str(self.model_path)
            flags = cpu_flags()
            amx_bf16 = self.precision_hint == "bf16" and "amx_bf16" in flags
            # read first: checked for AMX_BF16_MIN_GROUP_CHANNELS, kept for static compiles
            if amx_bf16 or self.static_shapes:
                model = core.read_model(model)
            if amx_bf16:
                self.precision_hint, warning = amx_safe_hint(
                    self.requested_hint, self.precision_hint, flags, narrow_group_convolutions(model)
                )
                if warning:
                    logger.warning("warning: %s: %s", self.model_path, warning)
            self.compiled = core.compile_model(model, self.device, self.config())
        except Exception as exc:  # openvino raises RuntimeError subclasses for unreadable graphs/settings
            raise XlsrEdgeError(f"openvino cannot load {self.model_path}: {exc}") from exc
        self.uses_mask = ATTENTION_MASK in {n for i in self.compiled.inputs for n in i.get_names()}
        names = [o.get_any_name() for o in self.compiled.outputs]
        # logits for CTC bundles, hidden_states for shared multi-language backbones
        self.outputs = [next(n for n in names if n != OUTPUT_LENGTHS), OUTPUT_LENGTHS]
        self.request = self.compiled.create_infer_request()
        if self.static_shapes:
            self._core, self._model = core, model

    def _deactivate(self) -> None:
        self.request = None
        self.compiled = None
        self._core = self._model = None
        self._static.clear()
        self._seen.clear()

    def _request_for(self, shape: tuple[int, ...]) -> Any:
        """The infer request for an input shape: its static compile once the shape has repeated (static_shapes),
        else the dynamic one. Called under the lock."""
        request = self._static.get(shape)
        if request is not None or len(self._static) >= self.static_shapes:
            return self.request if request is None else request
        if len(self._seen) >= _SEEN_SHAPES_KEPT:
            self._seen.clear()
        self._seen[shape] += 1
        if self._seen[shape] < STATIC_SHAPE_REPEATS:
            return self.request
        request = self._compile_static(shape)
        if request is None:  # no further attempts: the dynamic model runs every shape
            self.static_shapes = len(self._static)
            return self.request
        self._static[shape] = request
        return request

    def _compile_static(self, shape: tuple[int, ...]) -> Any:
        start = time.perf_counter()
        try:
            model = self._model.clone()
            model.reshape({i.get_any_name(): list(shape) for i in model.inputs})  # input_values (+ mask)
            compiled = self._core.compile_model(model, self.device, self.config())
        except Exception as exc:  # a shape OpenVINO cannot compile: the dynamic model still runs it
            logger.warning("warning: openvino: no static compile for input shape %s (%s)", list(shape), exc)
            return None
        logger.info(
            "openvino: compiled %s for input shape %s in %.1f s (%d of %d static shapes)",
            self.model_path.name,
            list(shape),
            time.perf_counter() - start,
            len(self._static) + 1,
            self.static_shapes,
        )
        return compiled.create_infer_request()

    def actual_precision(self) -> str | None:
        """The inference precision the compiled model uses (after OpenVINO's own checks)."""
        if self.compiled is None:
            return None
        value = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        return value.get_type_name() if hasattr(value, "get_type_name") else str(value)  # "f32", "bf16"

    def infer(
        self, input_values: np.ndarray, attention_mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.request is None:
            self.activate()
        feeds = graph_feeds(input_values, attention_mask, self.uses_mask)
        # share_outputs=False: the arrays are copies, not views of buffers the next call overwrites
        with self._lock:
            request = self._request_for(tuple(input_values.shape))
            result = request.infer(feeds, share_inputs=True, share_outputs=False)
        logits = np.asarray(result[self.outputs[0]], dtype=np.float32)
        lengths = np.asarray(result[self.outputs[1]], dtype=np.int64)
        return logits, lengths


register_backend(
    "openvino",
    lambda folder, manifest, **kw: OpenVinoRunner(Path(folder) / manifest.graph, **kw),
)
