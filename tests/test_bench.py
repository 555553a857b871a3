"""`xlsr-edge bench` and the timing helpers in xlsr_edge.measure.bench."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from xlsr_edge.cli import main
from xlsr_edge.data import CLIPS_MANIFEST
from xlsr_edge.measure.bench import (
    exact_audio,
    interleave,
    markdown_table,
    peak_rss_bytes,
    rss_bytes,
    summarize,
)


def test_bench_two_bundles_one_row_per_bundle_batch_length(tiny_bundle, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle, copy)
    out = tmp_path / "out"
    argv = ["bench", str(tiny_bundle), str(copy), "--seconds", "1,2", "--batch", "1,2", "--threads", "1"]
    rc = main([*argv, "--repeat", "2", "-o", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    rows = data["rows"]
    keys = [(r["engine"], r["batch"], r["seconds"]) for r in rows]
    assert len(rows) == 8 and len(set(keys)) == 8
    assert {r["engine"] for r in rows} == {tiny_bundle.name, "copy"}
    for r in rows:
        for k in (
            "audio_s_per_s",
            "rtf",
            "p50_ms",
            "p95_ms",
            "load_s",
            "peak_rss_mb",
            "size_mb",
            "vs_baseline",
        ):
            assert r[k] > 0, (k, r)
        assert r["p95_ms"] >= r["p50_ms"] >= r["min_ms"] and r["repeat"] == 2
        assert r["audio_s_per_s"] == pytest.approx(r["batch"] * r["seconds"] / (r["p50_ms"] / 1000))
        assert r["size_mb"] == pytest.approx(
            sum(f.stat().st_size for f in tiny_bundle.rglob("*") if f.is_file()) / 2**20
        )
    assert data["baseline"] == tiny_bundle.name
    assert all(r["vs_baseline"] == 1.0 for r in rows if r["engine"] == tiny_bundle.name)
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "| engine |" in md and "audio-s/s" in md and md.count(f"| {tiny_bundle.name} |") == 4
    assert "| engine |" in printed and f"wrote {out / 'results.png'}" in printed

    from matplotlib.image import imread

    img = imread(out / "results.png")
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_bench_without_matplotlib_keeps_the_figures(tiny_bundle, tmp_path, capsys, monkeypatch):
    """issue 25: `bench` on a machine without matplotlib ran every timing and then died for the plot."""
    import builtins
    import importlib

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    real_import_module = importlib.import_module

    def no_matplotlib_module(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import_module(name, *args, **kwargs)

    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    monkeypatch.setattr(importlib, "import_module", no_matplotlib_module)
    out = tmp_path / "out"
    argv = ["bench", str(tiny_bundle), "--seconds", "1", "--batch", "1", "--threads", "1", "--repeat", "2"]
    assert main([*argv, "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "results.png will be skipped" in captured.err  # said before the work
    assert "results.png skipped" in captured.err
    assert (out / "results.json").is_file() and (out / "results.md").is_file()
    assert not (out / "results.png").exists() and "results.png" not in captured.out
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert len(data["rows"]) == 1 and data["rows"][0]["audio_s_per_s"] > 0
    # provenance: commit (None outside a checkout), command, machine, load before/after
    prov = data["provenance"]
    assert {"git_commit", "git_dirty", "command", "machine", "loadavg_before", "loadavg_after"} <= set(prov)
    assert {"arch", "cpu", "instruction_sets", "logical_cpus", "usable_cpus"} <= set(prov["machine"])
    check = data["load_during_rounds"][0]["baseline_check"]
    assert isinstance(check["sane"], bool) and data["baseline_sane"] == check["sane"]


def test_baseline_check_flags_spread_and_load():
    from xlsr_edge.measure.sysinfo import baseline_check

    assert baseline_check(
        [1.0, 1.1, 1.05], loadavg_before=[0.5, 0, 0], loadavg_after=[2.5, 0, 0], own_threads=2, cores=2
    )["sane"]
    spread = baseline_check([1.0, 2.4, 1.1], cores=2)
    assert not spread["sane"] and "spread 2.40x" in spread["flags"][0]
    busy = baseline_check([1.0, 1.0], loadavg_before=[5.1, 4, 3], cores=2)
    assert not busy["sane"] and "5.10 before the rounds > 2" in busy["flags"][0]
    late = baseline_check(
        [1.0, 1.0], loadavg_before=[1.0, 1, 1], loadavg_after=[6.0, 3, 2], own_threads=1, cores=2
    )
    assert not late["sane"] and "after the rounds" in late["flags"][0]


def test_bench_torch_baseline(tiny_ckpt, tiny_bundle, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    argv = ["bench", str(tiny_bundle), "--torch", str(tiny_ckpt), "--seconds", "1", "--batch", "2"]
    argv += ["--audio", str(CLIPS_MANIFEST)]
    rc = main([*argv, "--threads", "1", "--repeat", "1", "-o", str(out)])
    capsys.readouterr()
    assert rc == 0
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    by_engine = {r["engine"]: r for r in data["rows"]}
    assert set(by_engine) == {"pytorch-eager", tiny_bundle.name} and data["baseline"] == "pytorch-eager"
    torch_row, ort_row = by_engine["pytorch-eager"], by_engine[tiny_bundle.name]
    assert torch_row["vs_baseline"] == 1.0 and torch_row["kind"] == "torch"
    assert ort_row["vs_baseline"] == pytest.approx(ort_row["audio_s_per_s"] / torch_row["audio_s_per_s"])
    # each engine has its own process: the torch worker's footprint is not charged to the bundle
    assert torch_row["peak_rss_mb"] > ort_row["peak_rss_mb"]


def test_bench_user_errors(tiny_bundle, tmp_path, capsys):
    assert main(["bench", str(tmp_path / "nope")]) == 2
    assert "bundle folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # refused while parsing (xlsr_edge.limits)
        main(["bench", str(tiny_bundle), "--batch", "0", "-o", str(tmp_path)])
    assert exc.value.code == 2 and capsys.readouterr().err == "error: --batch must be >= 1, got 0\n"
    with pytest.raises(SystemExit) as exc:
        main(["bench", str(tiny_bundle), "--seconds", "five"])
    assert exc.value.code == 2
    capsys.readouterr()
    # a bundle that fails verification inside its worker: one error line naming the engine, exit 2
    bad = tmp_path / "tampered"
    shutil.copytree(tiny_bundle, bad)
    with (bad / "model.onnx").open("ab") as f:
        f.write(b"\0")
    assert (
        main(
            ["bench", str(bad), "--seconds", "1", "--batch", "1", "--threads", "1", "-o", str(tmp_path / "r")]
        )
        == 2
    )
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: tampered: ") and "failed verification" in err


def test_interleave_excludes_warmup_and_rotates_the_order():
    calls: list[str] = []
    cases = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    samples = interleave(cases, 3, warmup=2)
    assert calls[:6] == list("abcabc")  # warm-up, untimed
    assert calls[6:] == list("abc" + "bca" + "cab")  # every round rotates by one
    assert all(len(s) == 3 and min(s) >= 0 for s in samples.values())
    # groups run back to back, each rotated on its own; self-timed callables report their own seconds
    calls.clear()
    timed = {(g, k): (lambda g=g, k=k: calls.append(g + k) or 0.5) for g in "xy" for k in "12"}
    samples = interleave(timed, 2, warmup=0, self_timed=True, group=lambda key: key[0])
    assert calls == ["x1", "x2", "y1", "y2", "x2", "x1", "y2", "y1"]
    assert all(s == [0.5, 0.5] for s in samples.values())
    with pytest.raises(ValueError):
        interleave(cases, 0)


def test_summarize_and_markdown():
    s = summarize([1.0, 2.0, 3.0, 4.0, 10.0])
    assert s["p50"] == 3.0 and s["p95"] == pytest.approx(np.percentile([1, 2, 3, 4, 10], 95)) and s["n"] == 5
    table = markdown_table(
        [{"a": "x|y", "b": 1.2345}, {"a": "z", "b": None}], [("a", "A"), ("b", "B", "{:.2f}")]
    )
    assert table.splitlines() == ["| A | B |", "|---|---:|", "| x\\|y | 1.23 |", "| z | — |"]


def test_exact_audio_cuts_and_loops():
    base = np.arange(10, dtype=np.float32)
    assert exact_audio(base, 0.5, 10).tolist() == [0, 1, 2, 3, 4]
    assert exact_audio(base, 1.5, 10, offset_seconds=0.8).tolist() == [8, 9, *range(10), 0, 1, 2]


def test_rss_from_proc():
    peak, now = peak_rss_bytes(), rss_bytes()
    assert peak is not None and peak > 10 * 2**20
    if now is not None:
        assert peak >= now


def test_bench_and_eval_modules_do_not_import_torch():
    code = (
        "import sys, xlsr_edge.measure.bench, xlsr_edge.measure.evaluation, xlsr_edge.commands.bench, "
        "xlsr_edge.commands.evaluate; from xlsr_edge.cli import build_parser; build_parser();"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
