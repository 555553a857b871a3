"""Writing benchmark results: JSON, markdown tables, bar charts, and `xlsr-edge bench`'s results folder.

A plot never costs a run: ``write_results`` writes results.json and results.md first, and draws results.png only
where matplotlib is importable (``plot_available``; ``pip install 'xlsr-edge[eval]'``), saying so otherwise.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlsr_edge.errors import MissingDependencyError, require
from xlsr_edge.measure.sysinfo import isa_summary

logger = logging.getLogger(__name__)


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
        f"CPU {env.get('cpu')} ({env.get('arch', '?')}, {env.get('usable_cpus', env.get('logical_cpus'))} usable "
        f"cores, load {env.get('loadavg_1m')}; {isa_summary(env.get('instruction_sets'))}), {versions}, "
        f"python {env.get('python')}. Baseline: {results['baseline']}. Rounds: {results['settings']['repeat']}.",
        "",
        markdown_table(rows, BENCH_COLUMNS),
        "",
        results["method"],
    ]
    flagged = [
        x for x in results.get("load_during_rounds", []) if not x.get("baseline_check", {}).get("sane", True)
    ]
    for x in flagged:
        head += [
            "",
            f"**Baseline not clean at {x['threads']} thread(s)**: {'; '.join(x['baseline_check']['flags'])}. "
            "The vs-baseline ratios of that run are no verdict.",
        ]
    prov = results.get("provenance") or {}
    if prov:
        commit = (prov.get("git_commit") or "no git checkout")[:12] + (
            " (dirty)" if prov.get("git_dirty") else ""
        )
        head += ["", f"Commit {commit}; command: `{' '.join(prov.get('command') or [])}`."]
    return "\n".join(head) + "\n"


def plot_available() -> str | None:
    """None when plots can be drawn, else why not (matplotlib missing): check it before the work."""
    try:
        require("matplotlib", "eval", "needed to draw benchmark plots")
    except MissingDependencyError as exc:
        return str(exc)
    return None


def _results_kind():
    from xlsr_edge.outputs import OutputKind, has_file

    return OutputKind("bench results folder", "xlsr-edge bench", has_file("results.json"))


def check_results_folder(folder: str | Path) -> Path:
    """Refuse a -o folder that would lose someone's files, before the benchmark runs."""
    from xlsr_edge.outputs import check_output

    return check_output(folder, _results_kind(), overwrite=True, overwrite_flag=None)


def write_results(
    results: Mapping[str, Any], folder: str | Path, log: Callable[[str], None] | None = None
) -> list[Path]:
    """results.json, results.md, then results.png (audio-s/s per engine and configuration) in `folder`: a new
    folder swapped in whole, replacing earlier results (never a folder of other files). Without matplotlib (or
    when drawing fails) the results are written all the same, the plot is left out and `log` says so."""
    from xlsr_edge.outputs import atomic_output

    log = log or logging.getLogger(__name__).info  # the CLI shows it on stderr
    folder = Path(folder)
    written = [folder / "results.json", folder / "results.md"]
    with atomic_output(folder, _results_kind(), overwrite=True, overwrite_flag=None) as tmp:
        write_json(tmp / "results.json", results)
        (tmp / "results.md").write_text(results_markdown(results), encoding="utf-8")
        try:
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
            written.append(folder / Path(png).name)
        except Exception as exc:  # noqa: BLE001  (a plot never costs the run: the figures are written above)
            log(f"bench: results.png skipped: {exc}")
    return written
