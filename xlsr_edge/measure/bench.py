"""`xlsr-edge bench`: the same audio through several engines in interleaved rounds (orchestration).

The pieces live next to this module, and stay importable from here (the scripts in ``benchmarks/`` use them
instead of their own timing loops):

* ``xlsr_edge.measure.timing``: ``interleave``, ``summarize``, ``throughput``, ``rtf``, ``ratio``, RSS readers.
* ``xlsr_edge.measure.bench_engines``: the engine worker processes, ``exact_audio``, ``load_source_audio``.
* ``xlsr_edge.measure.bench_report``: ``write_json``, ``markdown_table``, ``plot_bars``, the results folder.
* ``xlsr_edge.measure.sysinfo``: ``environment``, ``machine``, provenance (``start_run``), ``baseline_check``.

How ``run_bench`` measures:

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
* Per thread count, ``load_during_rounds`` records the load average before/after the rounds and
  ``baseline_check`` whether the baseline's own run was clean (its repeats' spread, other work above the
  cores): ratios to a flagged baseline are no verdict. ``provenance`` records commit, command and machine.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xlsr_edge.constants import STATIC_SHAPE_REPEATS
from xlsr_edge.errors import XlsrEdgeError
from xlsr_edge.measure.bench_engines import (
    EngineProcess,
    EngineSpec,
    batch_offsets,
    exact_audio,
    load_source_audio,
)
from xlsr_edge.measure.bench_report import (
    Column,
    check_results_folder,
    markdown_table,
    plot_available,
    plot_bars,
    results_markdown,
    short_number,
    write_json,
    write_results,
)
from xlsr_edge.measure.sysinfo import baseline_check, cpu_model, environment, isa_summary, loadavg, start_run
from xlsr_edge.measure.timing import (
    CLOCKS,
    folder_size_bytes,
    interleave,
    mib,
    peak_rss_bytes,
    percentile,
    ratio,
    rss_bytes,
    rtf,
    summarize,
    throughput,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CLOCKS",
    "METHOD",
    "BenchConfig",
    "Column",
    "EngineProcess",
    "EngineSpec",
    "baseline_check",
    "batch_offsets",
    "check_results_folder",
    "cpu_model",
    "environment",
    "exact_audio",
    "folder_size_bytes",
    "interleave",
    "isa_summary",
    "load_source_audio",
    "markdown_table",
    "mib",
    "peak_rss_bytes",
    "percentile",
    "plot_available",
    "plot_bars",
    "ratio",
    "results_markdown",
    "rss_bytes",
    "rtf",
    "run_bench",
    "short_number",
    "start_run",
    "summarize",
    "throughput",
    "write_json",
    "write_results",
]


@dataclass
class BenchConfig:
    bundles: list[Path]
    seconds: list[float] = field(default_factory=lambda: [5.0, 10.0, 30.0])
    batch: list[int] = field(default_factory=lambda: [1, 8])
    threads: list[int] = field(default_factory=lambda: [1, 2])
    audio: Path | None = None
    # several: every bundle runs on each; None: each on the runtime it records (xlsr-edge optimize)
    backend: str | list[str] | None = "onnxruntime"
    providers: str | None = "cpu"
    torch: Path | None = None
    torch_bf16: bool = False  # also PyTorch eager under torch.autocast("cpu", bfloat16)
    repeat: int = 5
    warmup: int = 1
    runner_options: dict[str, Any] = field(default_factory=dict)  # openvino: precision_hint, cache_dir
    # str(bundle path) -> the backends it runs on, where not all of ``backend`` (benchmarks/precision.py)
    bundle_backends: dict[str, list[str]] = field(default_factory=dict)
    # every OpenVINO engine also with a static compile of the benchmark's shapes (``static_shapes``), side by side
    openvino_static_too: bool = False

    @property
    def backends(self) -> list[str | None]:
        return [self.backend] if isinstance(self.backend, str) or self.backend is None else list(self.backend)

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
            recorded = ""
            if backend is None:  # the runtime `xlsr-edge optimize` recorded (its hint is applied at load)
                rt = manifest.runtime or {}
                backend = rt.get("backend") or "onnxruntime"
                recorded = " ".join(x for x in (backend, rt.get("precision_hint")) if x) if rt else ""
            options = dict(config.runner_options) if backend == "openvino" else {}
            name = (
                f"{label} ({recorded})"
                if recorded
                else label
                if len(set(backends).union(*config.bundle_backends.values())) == 1
                else f"{label} ({backend})"
            )
            meta = {
                "kind": "bundle",
                "precision": manifest.precision,
                "backend": backend,
                "size_bytes": folder_size_bytes(path),
                "sample_rate": manifest.model.sample_rate,
            }
            variants = [(name, options)]
            if backend == "openvino" and config.openvino_static_too and not options.get("static_shapes"):
                variants.append((f"{name} static", {**options, "static_shapes": 1}))
            for engine_label, opts in variants:
                spec = EngineSpec(
                    engine_label,
                    "bundle",
                    str(path),
                    backend,
                    config.providers,
                    threads,
                    tuple(sorted(opts.items())),
                )
                specs.append((spec, {**meta, "static_shapes": opts.get("static_shapes", 0)}))
    return specs


def _sample_rate(config: BenchConfig) -> int:
    from xlsr_edge.bundle import read_manifest

    rates = {read_manifest(p).model.sample_rate for p in config.bundles}
    if len(rates) > 1:
        raise XlsrEdgeError(
            f"the bundles expect different sample rates {sorted(rates)}; bench them separately"
        )
    return rates.pop() if rates else 16000


def _configurations(config: BenchConfig) -> list[tuple[int, float]]:
    """(batch, seconds) pairs in increasing batch x seconds order (the warm-up order, see peak_rss_mb)."""
    return sorted(
        ((b, float(s)) for b in dict.fromkeys(config.batch) for s in dict.fromkeys(config.seconds)),
        key=lambda bs: (bs[0] * bs[1], bs[0]),
    )


Key = tuple[str, int, float]  # (engine label, batch, seconds)


def _warm_up(
    engines: list[EngineProcess], configs: list[tuple[int, float]], warmup: int
) -> dict[Key, int | None]:
    """`warmup` untimed calls per engine and configuration, smallest first; the peak RSS after each."""
    peak: dict[Key, int | None] = {}
    for batch, seconds in configs:
        for eng in engines:
            reply = {"peak_rss_bytes": eng.info.get("peak_rss_bytes")}
            # an OpenVINO static compile happens on a shape's STATIC_SHAPE_REPEATS-th call: not in the timing
            static = dict(eng.spec.options).get("static_shapes")
            for _ in range(max(warmup, STATIC_SHAPE_REPEATS) if static else warmup):
                reply = eng.run(batch, seconds)
            peak[(eng.spec.label, batch, seconds)] = reply["peak_rss_bytes"]
    return peak


def _row(
    spec: EngineSpec, meta: dict[str, Any], info: dict[str, Any], key: Key, samples: list[float], peak
) -> dict:
    _, batch, seconds = key
    st = summarize(samples)
    audio_s = batch * seconds
    return {
        "engine": spec.label,
        "kind": meta["kind"],
        "path": spec.path,
        "precision": meta["precision"],
        "backend": meta["backend"],
        **({"static_shapes": meta["static_shapes"]} if meta.get("static_shapes") else {}),
        "threads": spec.threads,
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
        "load_s": info["load_s"],
        "import_s": info["import_s"],
        "load_rss_mb": mib(info.get("load_rss_bytes")),
        **(info.get("detail") or {}),
        "peak_rss_mb": mib(peak),
        "size_mb": mib(meta["size_bytes"]),
    }


def _baseline_check(samples: dict[Key, list[float]], baseline: str, threads: int, before, after) -> dict:
    """The baseline's own run: spread of its repeats per configuration, and the load around the rounds."""
    flags: list[str] = []
    for (label, batch, seconds), xs in samples.items():
        if label == baseline:
            flags += [f"b{batch} {seconds:g}s: {f}" for f in baseline_check(xs)["flags"]]
    flags += baseline_check([], loadavg_before=before, loadavg_after=after, own_threads=threads)["flags"]
    return {"sane": not flags, "flags": flags}


def _run_threads(
    config: BenchConfig, threads: int, base, sample_rate: int, log: Callable[[str], None]
) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """One set of workers at `threads`: warm-up, interleaved rounds -> (rows, load entry, baseline label)."""
    configs = _configurations(config)
    specs = _engine_specs(config, threads)
    engines: list[EngineProcess] = []
    try:
        for spec, _ in specs:
            log(f"bench: starting {spec.label} ({threads} thread{'s' if threads > 1 else ''})")
            engines.append(EngineProcess(spec, base, sample_rate))
        peak = _warm_up(engines, configs, config.warmup)
        log(
            f"bench: {config.repeat} interleaved rounds of {len(configs)} configurations x {len(engines)} engines"
        )
        cases = {
            (eng.spec.label, batch, seconds): (lambda e=eng, b=batch, s=seconds: e.run(b, s)["seconds"])
            for batch, seconds in configs
            for eng in engines
        }
        before = loadavg()  # other work on the machine while the rounds ran
        samples = interleave(cases, config.repeat, warmup=0, self_timed=True, group=lambda k: k[1:])
        after = loadavg()
    finally:
        for eng in engines:
            eng.close()
    baseline = specs[0][0].label
    rows = [
        _row(spec, meta, eng.info, (spec.label, b, s), samples[(spec.label, b, s)], peak[(spec.label, b, s)])
        for (spec, meta), eng in zip(specs, engines)
        for b, s in configs
    ]
    check = _baseline_check(samples, baseline, threads, before, after)
    if not check["sane"]:
        log(f"bench: baseline {baseline} ({threads} thread(s)) not clean: {'; '.join(check['flags'])}")
    return (
        rows,
        {"threads": threads, "loadavg_before": before, "loadavg_after": after, "baseline_check": check},
        baseline,
    )


def run_bench(
    config: BenchConfig, log: Callable[[str], None] | None = None, command: Sequence[str] | None = None
) -> dict[str, Any]:
    """Run the benchmark (see the module docstring); returns {"rows", "baseline", "baseline_sane", "settings",
    "environment", "load_during_rounds", "method", "provenance"}. `command`: what to record as the command line
    (default sys.argv)."""
    log = log or logging.getLogger(__name__).info  # the CLI shows it on stderr
    run = start_run(command)
    sample_rate = _sample_rate(config)
    base = load_source_audio(config.audio, sample_rate, max_seconds=max(60.0, 2 * max(config.seconds)))
    rows: list[dict[str, Any]] = []
    loads: list[dict[str, Any]] = []
    baseline_label = None
    for threads in dict.fromkeys(config.threads):
        new_rows, load, baseline_label = _run_threads(config, threads, base, sample_rate, log)
        rows += new_rows
        loads.append(load)
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
        "baseline_sane": all(x["baseline_check"]["sane"] for x in loads),
        "settings": settings,
        "environment": environment(),
        "load_during_rounds": loads,
        "method": METHOD,
        "provenance": run.finish(),
    }


METHOD = (
    "Each engine runs in its own spawned worker process; the parent drives them in interleaved rounds "
    "(engines for the same configuration back to back, order rotated each round); warm-up calls excluded. "
    "Timed: one model call on batch x seconds of normalized audio (equal lengths, no padding), median of "
    "the rounds -> audio_s_per_s and rtf. peak_rss_mb: the worker's VmHWM after warming up this "
    "configuration (configurations warmed in increasing size). load_s: bundle verification + session "
    "creation (or checkpoint load), imports excluded (import_s). vs_baseline: audio_s_per_s / baseline's; "
    "baseline_check flags a baseline whose repeats spread > 1.5x or that ran with other work above the cores."
)
