"""The engines of `xlsr-edge bench`, each in its own spawned worker process, and the audio they are fed.

* Every engine (each bundle on a backend, and PyTorch eager from a checkpoint when given) runs in its **own
  spawned worker process**, so its peak RSS is its own and torch is imported only in the torch worker. The parent
  drives the workers over a pipe; each worker times only its model call (``perf_counter`` around
  ``runner.infer`` / ``model(...)``), so pipe latency is not measured.
* ``exact_audio``: exactly N seconds cut from (or looped over) the given audio, by default the shipped clips;
  rows of a batch are the same audio at different offsets (``batch_offsets``), with no padding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xlsr_edge.errors import XlsrEdgeError
from xlsr_edge.measure.timing import peak_rss_bytes, rss_bytes


def load_source_audio(
    source: str | Path | None, sample_rate: int, max_seconds: float | None = None
) -> np.ndarray:
    """Concatenate the audio of a folder or manifest (default: the shipped clips) at `sample_rate`.

    max_seconds: stop reading files once this much audio is loaded (a large manifest is not read whole).
    """
    from xlsr_edge.data import default_clips
    from xlsr_edge.datasets import read_manifest
    from xlsr_edge.runtime.audio import load_audio

    paths = [u.audio for u in read_manifest(source)] if source is not None else default_clips()
    if not paths:
        raise XlsrEdgeError("no audio to benchmark with: pass --audio DIR_OR_MANIFEST")
    parts: list[np.ndarray] = []
    total = 0
    for p in paths:
        parts.append(load_audio(p, sample_rate))
        total += len(parts[-1])
        if max_seconds is not None and total >= max_seconds * sample_rate:
            break
    return np.ascontiguousarray(np.concatenate(parts).astype(np.float32, copy=False))


def exact_audio(
    base: np.ndarray, seconds: float, sample_rate: int, offset_seconds: float = 0.0
) -> np.ndarray:
    """Exactly round(seconds * sample_rate) samples of `base`, starting at `offset_seconds` and looping."""
    n = int(round(seconds * sample_rate))
    if n <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    if len(base) == 0:
        raise ValueError("empty source audio")
    start = int(round(offset_seconds * sample_rate)) % len(base)
    return base[(np.arange(n) + start) % len(base)]


def batch_offsets(base_samples: int, batch: int, sample_rate: int) -> list[float]:
    """Start offsets (seconds) that spread `batch` rows over the source audio, so rows differ."""
    return [i * base_samples / max(batch, 1) / sample_rate for i in range(batch)]


# -- engines in worker processes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineSpec:
    label: str
    kind: str  # "bundle" | "torch"
    path: str
    backend: str = "onnxruntime"
    providers: str | None = None
    threads: int | None = None
    options: tuple[tuple[str, Any], ...] = ()  # runner keywords (openvino: precision_hint, cache_dir)
    autocast: str | None = None  # torch: "bfloat16" runs the model under torch.autocast("cpu", bfloat16)


class _BundleEngine:
    def __init__(self, spec: EngineSpec) -> None:
        from xlsr_edge.runtime import Recognizer
        from xlsr_edge.runtime.backend_options import BackendOptions

        options = BackendOptions.from_keywords(
            spec.backend,
            providers=spec.providers,
            threads=spec.threads,
            ignore_unused=("providers", "threads"),
            **dict(spec.options),
        )
        self.rec = Recognizer.from_bundle(spec.path, backend_options=options)
        actual = getattr(self.rec.runner, "actual_precision", None)
        self.detail = {"inference_precision": actual()} if actual else {}
        self.do_normalize = self.rec.info.do_normalize
        self.uses_mask = self.rec.info.uses_attention_mask

    def infer(self, values: np.ndarray, mask: np.ndarray) -> None:
        self.rec.runner.infer(values, mask if self.uses_mask else None)


class _TorchEngine:
    """PyTorch eager from a checkpoint folder: the only place in the bench that imports torch."""

    def __init__(self, spec: EngineSpec) -> None:
        import torch

        from xlsr_edge.export.checkpoint import inspect_checkpoint, load_model

        if spec.threads:
            torch.set_num_threads(int(spec.threads))
        self.torch = torch
        ckpt = inspect_checkpoint(spec.path)
        self.model = load_model(ckpt).eval()
        self.do_normalize = ckpt.info.do_normalize
        self.uses_mask = ckpt.info.uses_attention_mask
        self.autocast = getattr(torch, spec.autocast) if spec.autocast else None
        self.detail = {"autocast": spec.autocast} if spec.autocast else {}

    def infer(self, values: np.ndarray, mask: np.ndarray) -> None:
        import contextlib

        torch = self.torch
        cast = torch.autocast("cpu", dtype=self.autocast) if self.autocast else contextlib.nullcontext()
        with torch.inference_mode(), cast:
            kwargs = {"attention_mask": torch.from_numpy(mask)} if self.uses_mask else {}
            self.model(torch.from_numpy(values), **kwargs)


def _describe(exc: BaseException) -> str:
    """A user error's own message; anything else with its type, so a crash is recognizable."""
    return str(exc) if isinstance(exc, XlsrEdgeError) else f"{type(exc).__name__}: {exc}"


def _worker_main(conn, spec: EngineSpec, base: np.ndarray, sample_rate: int) -> None:
    """Worker process: import, load, then answer ("run", batch, seconds) with the seconds of one model call."""
    t0 = time.perf_counter()
    try:
        if spec.kind == "torch":
            import torch  # noqa: F401  (timed as import)
            import transformers  # noqa: F401
        else:
            import onnxruntime  # noqa: F401

            import xlsr_edge.runtime  # noqa: F401

            if spec.backend == "openvino":
                import xlsr_edge.runtime.openvino as ov_backend

                ov_backend.import_openvino()
        import_s = time.perf_counter() - t0
        rss_before = rss_bytes()
        t0 = time.perf_counter()
        engine = _TorchEngine(spec) if spec.kind == "torch" else _BundleEngine(spec)
        load_s = time.perf_counter() - t0
        rss_after = rss_bytes()
    except BaseException as exc:  # report, do not hang the parent
        conn.send(("error", _describe(exc), isinstance(exc, XlsrEdgeError)))
        conn.close()
        return
    from xlsr_edge.runtime.audio import normalize

    conn.send(
        (
            "ok",
            {
                "import_s": import_s,
                "load_s": load_s,
                "load_rss_bytes": None if rss_after is None or rss_before is None else rss_after - rss_before,
                "peak_rss_bytes": peak_rss_bytes(),
                "detail": engine.detail,
            },
        )
    )
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg[0] == "close":
            conn.close()
            return
        _, batch, seconds = msg
        try:
            rows = [
                normalize(exact_audio(base, seconds, sample_rate, off), engine.do_normalize)
                for off in batch_offsets(len(base), batch, sample_rate)
            ]
            values = np.ascontiguousarray(np.stack(rows), dtype=np.float32)
            mask = np.ones(values.shape, dtype=np.int64)
            del rows
            t0 = time.perf_counter()
            engine.infer(values, mask)
            elapsed = time.perf_counter() - t0
            del values, mask
            conn.send(("ok", {"seconds": elapsed, "peak_rss_bytes": peak_rss_bytes()}))
        except BaseException as exc:
            conn.send(("error", _describe(exc), isinstance(exc, XlsrEdgeError)))
            return


class EngineProcess:
    """One engine in its own spawned process (own RSS, own imports); a context manager."""

    def __init__(self, spec: EngineSpec, base: np.ndarray, sample_rate: int) -> None:
        import multiprocessing

        self.spec = spec
        ctx = multiprocessing.get_context("spawn")  # no fork after onnxruntime/torch threads started
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_worker_main,
            args=(child, spec, base, sample_rate),
            daemon=True,
            name=f"bench-{spec.label}",
        )
        self._proc.start()
        child.close()
        self.info = self._answer()

    def _answer(self) -> dict[str, Any]:
        try:
            reply = self._conn.recv()
        except (EOFError, ConnectionError):
            self._proc.join(timeout=5)
            raise XlsrEdgeError(
                f"{self.spec.label}: the benchmark worker died (exit code {self._proc.exitcode}; "
                "out of memory?)"
            ) from None
        if reply[0] == "error":
            self.close()
            raise XlsrEdgeError(f"{self.spec.label}: {reply[1]}")
        return reply[1]

    def run(self, batch: int, seconds: float) -> dict[str, Any]:
        """One model call on `batch` rows of `seconds` audio: {"seconds": model call time, "peak_rss_bytes"}."""
        self._conn.send(("run", batch, seconds))
        return self._answer()

    def close(self) -> None:
        if self._proc.is_alive():
            try:
                self._conn.send(("close",))
            except (OSError, BrokenPipeError):
                pass
            self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(timeout=5)
        self._conn.close()

    def __enter__(self) -> EngineProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
