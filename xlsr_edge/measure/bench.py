"""Benchmark helpers and `xlsr-edge bench`: the same audio through several engines, interleaved.

Reusable pieces (the scripts in ``benchmarks/`` use these instead of their own timing loops):

* ``interleave``: warm-up calls (excluded), then ``repeat`` rounds in which every case runs once, cases
  of one group back to back in an order that rotates every round, so machine noise (other processes,
  thermal drift) hits all cases alike. Wall-clock (``time.perf_counter``) or process CPU time
  (``time.process_time``, all threads of this process).
* ``summarize`` (n, mean, p50, p95, min, max; percentiles linear-interpolated as numpy does),
  ``throughput`` (audio-seconds per second), ``rtf`` and ``ratio``.
* ``peak_rss_bytes`` / ``rss_bytes``: VmHWM / VmRSS from ``/proc/self/status`` (no psutil); elsewhere
  ``resource.getrusage``'s ``ru_maxrss``.
* ``exact_audio``: exactly N seconds cut from (or looped over) the given audio, by default the shipped clips.
* ``write_json``, ``markdown_table``, ``plot_bars`` (matplotlib, Agg; ``pip install 'xlsr-edge[eval]'``).

How ``run_bench`` measures (``xlsr-edge bench``):

* Every engine (each bundle, and PyTorch eager from a checkpoint when given) runs in its **own spawned
  worker process**, so its peak RSS is its own and torch is imported only in the torch worker. The parent
  drives all workers in interleaved rounds over a pipe; each worker times only its model call
  (``perf_counter`` around ``runner.infer`` / ``model(...)``), so pipe latency is not measured.
* What is timed: the model call on a batch of ``batch`` equal-length rows of exactly ``seconds`` of
  normalized audio (the front end's zero-mean/unit-variance normalization and greedy decoding are outside
  it; ``benchmarks/decode.py`` splits a whole ``transcribe`` into stages). Rows are the same audio at
  different offsets, with no padding.
* One set of workers per thread count (onnxruntime fixes intra-op threads when the session is made,
  ``torch.set_num_threads`` in the torch worker); ``load_s`` is that worker's load (bundle hash
  verification + session creation, or checkpoint read + model load), ``import_s`` its library imports.
* Warm-up: every (engine, configuration) runs ``warmup`` times before the timed rounds, configurations
  in increasing batch x seconds order. ``peak_rss_mb`` of a row is the worker's VmHWM read right after
  that configuration's warm-up: the peak of the process (interpreter, libraries, model, arena) once it
  has run this configuration and every smaller one, which is this configuration's own peak as long as
  memory grows with the input size.
* ``audio_s_per_s`` = batch x seconds / median call time; ``rtf`` is its inverse; ``vs_baseline`` =
  this engine's audio_s_per_s / the baseline's for the same (batch, seconds, threads); the baseline is the
  PyTorch engine when ``--torch`` is given, else the first bundle.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xlsr_edge.errors import XlsrEdgeError, require

# -- measurement primitives ----------------------------------------------------------------------------------


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])  # "VmHWM:   123456 kB"
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process: VmHWM from /proc/self/status, else getrusage's ru_maxrss."""
    kb = _proc_status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):
        return None
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # macOS: bytes, Linux: KiB


def rss_bytes() -> int | None:
    """Current resident set size (VmRSS); None where /proc is not available."""
    kb = _proc_status_kb("VmRSS")
    return None if kb is None else kb * 1024


def mib(n: float | None) -> float | None:
    return None if n is None else n / (1024 * 1024)


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def interleave(
    cases: Mapping[Hashable, Callable[[], Any]],
    repeat: int,
    *,
    warmup: int = 1,
    clock: str = "wall",
    self_timed: bool = False,
    group: Callable[[Hashable], Hashable] | None = None,
) -> dict[Hashable, list[float]]:
    """Time every case `repeat` times in interleaved rounds; returns the samples (seconds) per case.

    warmup: untimed calls of each case first, in the mapping's order. Each round runs every case once:
    cases of one group (``group(key)``; default: all in one group) back to back, groups in the order of
    their first case, and inside a group the order rotates by one every round, so no case is always first.
    clock: "wall" (perf_counter) or "cpu" (process_time: CPU seconds of all threads of this process).
    self_timed: the callables measure themselves and return seconds (e.g. a worker process timing its own
    model call); otherwise the clock is read around each call and return values are ignored.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    try:
        now = CLOCKS[clock]
    except KeyError:
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}") from None
    keys = list(cases)
    groups: dict[Hashable, list[Hashable]] = {}
    for k in keys:
        groups.setdefault(group(k) if group else None, []).append(k)
    for _ in range(warmup):
        for k in keys:
            cases[k]()
    samples: dict[Hashable, list[float]] = {k: [] for k in keys}
    for r in range(repeat):
        for members in groups.values():
            shift = r % len(members)
            for k in members[shift:] + members[:shift]:
                if self_timed:
                    samples[k].append(float(cases[k]()))
                else:
                    t0 = now()
                    cases[k]()
                    samples[k].append(now() - t0)
    return samples


def percentile(samples: Sequence[float], q: float) -> float:
    """q-th percentile (0..100), linear interpolation between closest ranks (numpy's default)."""
    if not len(samples):
        raise ValueError("no samples")
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """n, mean, p50, p95, min, max, stdev of timing samples (seconds)."""
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no samples")
    return {
        "n": int(a.size),
        "mean": float(a.mean()),
        "p50": percentile(a, 50),
        "p95": percentile(a, 95),
        "min": float(a.min()),
        "max": float(a.max()),
        "stdev": float(a.std(ddof=1)) if a.size > 1 else 0.0,
    }


def throughput(audio_seconds: float, seconds: float) -> float:
    """Audio-seconds processed per second of (wall or CPU) time."""
    return audio_seconds / seconds if seconds > 0 else math.inf


def rtf(audio_seconds: float, seconds: float) -> float:
    """Real-time factor: processing time / audio duration (< 1 is faster than real time)."""
    return seconds / audio_seconds if audio_seconds > 0 else math.inf


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None or baseline == 0:
        return None
    return value / baseline


def folder_size_bytes(path: str | Path, names: Sequence[str] | None = None) -> int:
    """Bytes of every file under `path` (or of the given file names in it); a file path gives its size."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if names is not None:
        return sum((p / n).stat().st_size for n in names if (p / n).is_file())
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Where the figures come from: CPU, cores, load, library versions."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "numpy": np.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if hasattr(os, "sched_getaffinity"):
        env["usable_cpus"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        env["loadavg_1m"] = round(os.getloadavg()[0], 2)
        env["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    env["instruction_sets"] = cpu_instruction_sets()
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    from importlib import metadata

    for dist in ("openvino", "torch"):  # versions without importing them here
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return env


def cpu_instruction_sets() -> dict[str, bool]:
    """AVX512-VNNI, AVX512-BF16, AMX-BF16, ... of this CPU (``xlsr_edge.runtime.openvino.instruction_sets``)."""
    from xlsr_edge.runtime.openvino import instruction_sets

    return instruction_sets()


def isa_summary(isa: Mapping[str, bool] | None) -> str:
    """ "AVX512-VNNI, AVX512-BF16; no AMX-BF16, AMX-INT8" for a markdown header."""
    if not isa:
        return "instruction sets unknown"
    have = [k for k, v in isa.items() if v]
    lack = [k for k, v in isa.items() if not v and ("VNNI" in k or "BF16" in k or "AMX" in k)]
    return ", ".join(have) + (f"; no {', '.join(lack)}" if lack else "")


# -- writers ---------------------------------------------------------------------------------------------------


def write_json(path: str | Path, data: Any) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return p


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: str = "{}"  # str.format pattern for the value; None values print as "—"


def _fmt_cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    try:
        text = fmt.format(value)
    except (ValueError, TypeError):
        text = str(value)
    return text.replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column | tuple]) -> str:
    """A GitHub markdown table; columns are Column(key, header, fmt) or (key, header[, fmt]) tuples."""
    cols = [c if isinstance(c, Column) else Column(*c) for c in columns]
    numeric = [all(isinstance(r.get(c.key), int | float) or r.get(c.key) is None for r in rows) for c in cols]
    lines = [
        "| " + " | ".join(c.header for c in cols) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(_fmt_cell(r.get(c.key), c.fmt) for c in cols) + " |")
    return "\n".join(lines)


def short_number(x: float) -> str:
    """A bar label: 3 significant digits without exponent notation (1234 -> "1234", 0.0123 -> "0.0123")."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    digits = max(0, 2 - int(math.floor(math.log10(abs(x)))))
    return f"{x:.{digits}f}"


def plot_bars(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    value: str,
    group: Callable[[Mapping[str, Any]], str],
    series: Callable[[Mapping[str, Any]], str],
    panel: Callable[[Mapping[str, Any]], str] | None = None,
    title: str = "",
    ylabel: str = "",
    log: bool = False,
    annotate: bool = True,
) -> Path:
    """Grouped bar chart as PNG: one panel per ``panel(row)``, x groups ``group(row)``, bars ``series(row)``."""
    matplotlib = require("matplotlib", "eval", "needed to draw benchmark plots")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(panel(r) for r in rows)) if panel else [""]
    groups = list(dict.fromkeys(group(r) for r in rows))
    names = list(dict.fromkeys(series(r) for r in rows))
    width = 0.8 / max(len(names), 1)
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(max(4.0, 1.0 + len(groups) * (0.5 + 0.35 * len(names))) * len(panels), 4.2),
        squeeze=False,
    )
    cmap = plt.get_cmap("tab10")
    for ax, pname in zip(axes[0], panels):
        for si, sname in enumerate(names):
            xs, ys = [], []
            for gi, gname in enumerate(groups):
                for r in rows:
                    if (
                        (not panel or panel(r) == pname)
                        and group(r) == gname
                        and series(r) == sname
                        and r.get(value) is not None
                    ):
                        xs.append(gi + (si - (len(names) - 1) / 2) * width)
                        ys.append(float(r[value]))
                        break
            bars = ax.bar(xs, ys, width=width, label=sname, color=cmap(si % 10))
            if annotate and len(groups) * len(names) <= 48:
                ax.bar_label(bars, labels=[short_number(y) for y in ys], fontsize=7, padding=1)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(
            groups, rotation=30 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center"
        )
        if log:
            ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.set_title(pname)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


# -- audio -------------------------------------------------------------------------------------------------------


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

        self.rec = Recognizer.from_bundle(
            spec.path,
            backend=spec.backend,
            providers=spec.providers if spec.backend == "onnxruntime" else None,
            threads=spec.threads,
            **dict(spec.options),
        )
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


# -- the bench ---------------------------------------------------------------------------------------------------


@dataclass
class BenchConfig:
    bundles: list[Path]
    seconds: list[float] = field(default_factory=lambda: [5.0, 10.0, 30.0])
    batch: list[int] = field(default_factory=lambda: [1, 8])
    threads: list[int] = field(default_factory=lambda: [1, 2])
    audio: Path | None = None
    backend: str | list[str] = "onnxruntime"  # several: every bundle runs on each
    providers: str | None = "cpu"
    torch: Path | None = None
    torch_bf16: bool = False  # also PyTorch eager under torch.autocast("cpu", bfloat16)
    repeat: int = 5
    warmup: int = 1
    runner_options: dict[str, Any] = field(default_factory=dict)  # openvino: precision_hint, cache_dir
    # str(bundle path) -> the backends it runs on, where not all of ``backend`` (benchmarks/precision.py)
    bundle_backends: dict[str, list[str]] = field(default_factory=dict)

    @property
    def backends(self) -> list[str]:
        return [self.backend] if isinstance(self.backend, str) else list(self.backend)

    def __post_init__(self) -> None:
        if not self.bundles and self.torch is None:
            raise XlsrEdgeError("nothing to benchmark: give at least one bundle")
        if not self.backends:
            raise XlsrEdgeError("--backend needs at least one value")
        if self.torch_bf16 and self.torch is None:
            raise XlsrEdgeError("--torch-bf16 needs --torch CHECKPOINT")
        for name, values in (("seconds", self.seconds), ("batch", self.batch), ("threads", self.threads)):
            if not values:
                raise XlsrEdgeError(f"--{name} needs at least one value")
        if any(not math.isfinite(s) or s < 0.1 for s in self.seconds):
            raise XlsrEdgeError(f"--seconds values must be >= 0.1, got {self.seconds}")
        if any(b < 1 for b in self.batch):
            raise XlsrEdgeError(f"--batch values must be >= 1, got {self.batch}")
        if any(t < 1 for t in self.threads):
            raise XlsrEdgeError(f"--threads values must be >= 1, got {self.threads}")
        if self.repeat < 1:
            raise XlsrEdgeError(f"--repeat must be >= 1, got {self.repeat}")
        if self.warmup < 0:
            raise XlsrEdgeError(f"--warmup must be >= 0, got {self.warmup}")


def _labels(paths: Sequence[Path]) -> list[str]:
    """Bundle folder names; "parent/name" where two bundles share a name, "#2", "#3" for the same folder."""
    names = [Path(p).resolve().name for p in paths]
    out: list[str] = []
    for p, n in zip(paths, names):
        base = f"{Path(p).resolve().parent.name}/{n}" if names.count(n) > 1 else n
        label, k = base, 2
        while label in out:
            label, k = f"{base}#{k}", k + 1
        out.append(label)
    return out


def _engine_specs(config: BenchConfig, threads: int) -> list[tuple[EngineSpec, dict[str, Any]]]:
    from xlsr_edge.bundle import read_manifest

    specs = []
    if config.torch is not None:
        ckpt = Path(config.torch)
        if not ckpt.is_dir():
            raise XlsrEdgeError(f"--torch checkpoint folder not found: {ckpt}")
        weights = [n for n in ("model.safetensors", "pytorch_model.bin") if (ckpt / n).is_file()]
        for label, autocast in [("pytorch-eager", None)] + (
            [("pytorch-bf16-autocast", "bfloat16")] if config.torch_bf16 else []
        ):
            specs.append(
                (
                    EngineSpec(label, "torch", str(ckpt), threads=threads, autocast=autocast),
                    {
                        "kind": "torch",
                        "precision": "bf16 autocast" if autocast else "fp32",
                        "backend": "pytorch",
                        "size_bytes": folder_size_bytes(ckpt, weights),
                    },
                )
            )
    backends = config.backends
    for label, path in zip(_labels(config.bundles), config.bundles):
        manifest = read_manifest(path)  # BundleError for a wrong folder before any worker starts
        chosen = config.bundle_backends.get(str(path), backends)
        for backend in chosen:
            options = tuple(sorted(config.runner_options.items())) if backend == "openvino" else ()
            specs.append(
                (
                    EngineSpec(
                        label
                        if len(set(backends).union(*config.bundle_backends.values())) == 1
                        else f"{label} ({backend})",
                        "bundle",
                        str(path),
                        backend,
                        config.providers,
                        threads,
                        options,
                    ),
                    {
                        "kind": "bundle",
                        "precision": manifest.precision,
                        "backend": backend,
                        "size_bytes": folder_size_bytes(path),
                        "sample_rate": manifest.model.sample_rate,
                    },
                )
            )
    return specs


def _sample_rate(config: BenchConfig) -> int:
    from xlsr_edge.bundle import read_manifest

    rates = {read_manifest(p).model.sample_rate for p in config.bundles}
    if len(rates) > 1:
        raise XlsrEdgeError(
            f"the bundles expect different sample rates {sorted(rates)}; bench them separately"
        )
    return rates.pop() if rates else 16000


def run_bench(config: BenchConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark (see the module docstring); returns {"rows", "environment", "settings", "method"}."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    sample_rate = _sample_rate(config)
    base = load_source_audio(config.audio, sample_rate, max_seconds=max(60.0, 2 * max(config.seconds)))
    configs = sorted(
        ((b, float(s)) for b in dict.fromkeys(config.batch) for s in dict.fromkeys(config.seconds)),
        key=lambda bs: (bs[0] * bs[1], bs[0]),
    )
    rows: list[dict[str, Any]] = []
    baseline_label = None
    loads: list[dict[str, Any]] = []
    for threads in dict.fromkeys(config.threads):
        specs = _engine_specs(config, threads)
        baseline_label = specs[0][0].label
        engines: list[EngineProcess] = []
        try:
            for spec, _ in specs:
                log(f"bench: starting {spec.label} ({threads} thread{'s' if threads > 1 else ''})")
                engines.append(EngineProcess(spec, base, sample_rate))
            peak: dict[tuple[str, int, float], int | None] = {}
            for batch, seconds in configs:  # warm-up, smallest configuration first (see peak_rss_mb)
                for eng in engines:
                    reply = {"peak_rss_bytes": eng.info.get("peak_rss_bytes")}
                    for _ in range(config.warmup):
                        reply = eng.run(batch, seconds)
                    peak[(eng.spec.label, batch, seconds)] = reply["peak_rss_bytes"]
            log(
                f"bench: {config.repeat} interleaved rounds of {len(configs)} configurations x {len(engines)} engines"
            )
            cases = {
                (eng.spec.label, batch, seconds): (lambda e=eng, b=batch, s=seconds: e.run(b, s)["seconds"])
                for batch, seconds in configs
                for eng in engines
            }
            load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
            samples = interleave(cases, config.repeat, warmup=0, self_timed=True, group=lambda k: k[1:])
            if load_before is not None:  # other work on the machine while the rounds ran
                after = os.getloadavg()
                loads.append({"threads": threads, "loadavg_before": load_before, "loadavg_after": after})
        finally:
            for eng in engines:
                eng.close()
        for (spec, meta), eng in zip(specs, engines):
            for batch, seconds in configs:
                st = summarize(samples[(spec.label, batch, seconds)])
                audio_s = batch * seconds
                rows.append(
                    {
                        "engine": spec.label,
                        "kind": meta["kind"],
                        "path": spec.path,
                        "precision": meta["precision"],
                        "backend": meta["backend"],
                        "threads": threads,
                        "batch": batch,
                        "seconds": seconds,
                        "audio_s": audio_s,
                        "repeat": st["n"],
                        "p50_ms": 1000 * st["p50"],
                        "p95_ms": 1000 * st["p95"],
                        "mean_ms": 1000 * st["mean"],
                        "min_ms": 1000 * st["min"],
                        "max_ms": 1000 * st["max"],
                        "audio_s_per_s": throughput(audio_s, st["p50"]),
                        "rtf": rtf(audio_s, st["p50"]),
                        "vs_baseline": None,
                        "load_s": eng.info["load_s"],
                        "import_s": eng.info["import_s"],
                        "load_rss_mb": mib(eng.info.get("load_rss_bytes")),
                        **(eng.info.get("detail") or {}),
                        "peak_rss_mb": mib(peak[(spec.label, batch, seconds)]),
                        "size_mb": mib(meta["size_bytes"]),
                    }
                )
    base_rows = {(r["threads"], r["batch"], r["seconds"]): r for r in rows if r["engine"] == baseline_label}
    for r in rows:
        b = base_rows.get((r["threads"], r["batch"], r["seconds"]))
        r["vs_baseline"] = ratio(r["audio_s_per_s"], b["audio_s_per_s"] if b else None)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    settings["bundles"] = [str(p) for p in config.bundles]
    settings["audio"] = str(config.audio) if config.audio else "shipped clips (xlsr_edge.data), looped"
    return {
        "rows": rows,
        "baseline": baseline_label,
        "settings": settings,
        "environment": environment(),
        "load_during_rounds": loads,
        "method": METHOD,
    }


METHOD = (
    "Each engine runs in its own spawned worker process; the parent drives them in interleaved rounds "
    "(engines for the same configuration back to back, order rotated each round); warm-up calls excluded. "
    "Timed: one model call on batch x seconds of normalized audio (equal lengths, no padding), median of "
    "the rounds -> audio_s_per_s and rtf. peak_rss_mb: the worker's VmHWM after warming up this "
    "configuration (configurations warmed in increasing size). load_s: bundle verification + session "
    "creation (or checkpoint load), imports excluded (import_s). vs_baseline: audio_s_per_s / baseline's."
)

BENCH_COLUMNS = [
    Column("engine", "engine"),
    Column("precision", "precision"),
    Column("backend", "backend"),
    Column("threads", "threads"),
    Column("batch", "batch"),
    Column("seconds", "audio s", "{:g}"),
    Column("audio_s_per_s", "audio-s/s", "{:.2f}"),
    Column("rtf", "RTF", "{:.4f}"),
    Column("p50_ms", "p50 ms", "{:.1f}"),
    Column("p95_ms", "p95 ms", "{:.1f}"),
    Column("vs_baseline", "vs baseline", "{:.2f}x"),
    Column("load_s", "load s", "{:.2f}"),
    Column("peak_rss_mb", "peak RSS MiB", "{:.0f}"),
    Column("size_mb", "size MiB", "{:.1f}"),
]


def results_markdown(results: Mapping[str, Any]) -> str:
    env = results["environment"]
    rows = sorted(results["rows"], key=lambda r: (r["threads"], r["batch"], r["seconds"]))
    versions = ", ".join(f"{k} {env[k]}" for k in ("onnxruntime", "openvino", "torch") if env.get(k))
    head = [
        "# xlsr-edge bench",
        "",
        f"CPU {env.get('cpu')} ({env.get('usable_cpus', env.get('logical_cpus'))} usable cores, "
        f"load {env.get('loadavg_1m')}; {isa_summary(env.get('instruction_sets'))}), {versions}, "
        f"python {env.get('python')}. Baseline: {results['baseline']}. Rounds: {results['settings']['repeat']}.",
        "",
        markdown_table(rows, BENCH_COLUMNS),
        "",
        results["method"],
    ]
    return "\n".join(head) + "\n"


def _results_kind():
    from xlsr_edge.outputs import OutputKind, has_file

    return OutputKind("bench results folder", "xlsr-edge bench", has_file("results.json"))


def check_results_folder(folder: str | Path) -> Path:
    """Refuse a -o folder that would lose someone's files, before the benchmark runs."""
    from xlsr_edge.outputs import check_output

    return check_output(folder, _results_kind(), overwrite=True, overwrite_flag=None)


def write_results(results: Mapping[str, Any], folder: str | Path) -> list[Path]:
    """results.json, results.md and results.png (audio-s/s per engine and configuration) in `folder`: a new
    folder swapped in whole, replacing earlier results (never a folder of other files)."""
    from xlsr_edge.outputs import atomic_output

    folder = Path(folder)
    with atomic_output(folder, _results_kind(), overwrite=True, overwrite_flag=None) as tmp:
        write_json(tmp / "results.json", results)
        (tmp / "results.md").write_text(results_markdown(results), encoding="utf-8")
        png = plot_bars(
            results["rows"],
            tmp / "results.png",
            value="audio_s_per_s",
            group=lambda r: f"b{r['batch']} {r['seconds']:g}s",
            series=lambda r: r["engine"],
            panel=lambda r: f"{r['threads']} thread{'s' if r['threads'] > 1 else ''}",
            title="throughput (audio-seconds per second, higher is better)",
            ylabel="audio-s / s",
        )
    return [folder / "results.json", folder / "results.md", folder / Path(png).name]
