"""Shared helpers of the benchmark scripts (benchmarks/*.py): provenance, results writing, tables, plots, the CPU.

Every script records where its figures come from the same way:

    run = start()                                   # command line, git commit, load average before the work
    ...
    write_results(out, results, run, markdown=md, plots=[lambda: plot_bars(...)])

``write_results`` adds ``"provenance"`` to results.json (``git_commit``, ``git_dirty``, ``command``, ``machine``:
CPU model, architecture, instruction sets, cores, and ``loadavg_before`` / ``loadavg_after``), appends a provenance
line to results.md, and only then draws the plots: a missing matplotlib or a failing plot skips that plot (and
says so), never the figures. Ratios to a baseline are judged ("meets" / "misses") only where ``baseline_check``
finds the baseline's own run clean (``xlsr_edge.measure.sysinfo``).

The scripts run as ``python benchmarks/NAME.py`` (this folder is on sys.path, so ``import _common`` works).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # a checkout without `pip install -e .`: the package next to this folder
    sys.path.insert(0, str(REPO))

from xlsr_edge.measure.bench_report import Column, markdown_table, plot_bars, write_json  # noqa: E402
from xlsr_edge.measure.sysinfo import (  # noqa: E402
    Run,
    baseline_check,
    environment,
    isa_summary,
    loadavg,
    machine,
    start_run,
)
from xlsr_edge.measure.timing import interleave, mib, peak_rss_bytes, summarize  # noqa: E402
from xlsr_edge.runtime.cpu import read_cpuinfo  # noqa: E402

__all__ = [
    "REPO",
    "Column",
    "Run",
    "baseline_check",
    "cpu_isa",
    "environment",
    "interleave",
    "isa_summary",
    "loadavg",
    "logger",
    "machine",
    "markdown_table",
    "mib",
    "peak_rss_bytes",
    "plot_bars",
    "provenance_line",
    "start",
    "summarize",
    "write_json",
    "write_results",
]


def logger(name: str) -> Callable[[str], None]:
    """A progress printer for one script: "[name HH:MM:SS] message" on stderr."""

    def log(msg: str) -> None:
        print(f"[{name} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    return log


def start(argv: Iterable[str] | None = None) -> Run:
    """Begin a measured run: the command line (default sys.argv), the commit, the load average now."""
    return start_run(list(sys.argv if argv is None else argv), REPO)


def cpu_isa() -> list[str]:
    """The instruction sets this CPU has, by name (x86: AVX2, AVX512-VNNI, AMX-BF16...; ARM: asimd, asimddp,
    i8mm, bf16, sve, fphp...): what onnxruntime's and OpenVINO's kernels can use."""
    return [name for name, have in read_cpuinfo().instruction_sets().items() if have]


def provenance_line(prov: Mapping[str, Any]) -> str:
    """One markdown line: commit, command, machine and load around the run."""
    commit = (prov.get("git_commit") or "no git checkout")[:12] + (
        " (dirty tree)" if prov.get("git_dirty") else ""
    )
    m = prov.get("machine") or {}
    before, after = prov.get("loadavg_before"), prov.get("loadavg_after")
    load = f"{before[0]:.2f} -> {after[0]:.2f}" if before and after else "unknown"
    machine = (
        f"{m.get('cpu')} ({m.get('arch')}, {m.get('usable_cpus')} usable cores; "
        f"{isa_summary(m.get('instruction_sets'))})"
        if m
        else "machine unrecorded"
    )
    return (
        f"Provenance: commit {commit}; command `{' '.join(prov.get('command') or [])}`; {machine}; "
        f"1-minute load average {load} (before -> after)."
    )


def write_results(
    out: Path,
    results: dict[str, Any],
    run: Run,
    *,
    markdown: str | None = None,
    plots: Iterable[Callable[[], Any]] = (),
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """results.json (with "provenance") and results.md (with a provenance line) in `out`, then each plot:
    a plot that cannot be drawn is reported and skipped, the figures stay written."""
    log = log or logger(Path(sys.argv[0]).stem or "benchmark")
    out.mkdir(parents=True, exist_ok=True)
    results["provenance"] = run.finish()
    written = [write_json(out / "results.json", results)]
    if markdown is not None:
        md = markdown.rstrip("\n") + "\n\n" + provenance_line(results["provenance"]) + "\n"
        (out / "results.md").write_text(md, encoding="utf-8")
        written.append(out / "results.md")
    for plot in plots:
        try:
            p = plot()
        except Exception as exc:  # noqa: BLE001  (a plot never costs the figures, written above)
            log(f"plot skipped: {exc}")
            continue
        if p is not None:
            written.append(Path(p))
    return written
