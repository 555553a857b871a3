"""Issue 27, "the first hour": what a new user meets in the first commands (extras named, quiet success, gate
warnings, the README's walkthroughs running as written)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = "import sys\nfor m in {mods!r}:\n    sys.modules[m] = None  # import raises ImportError\n"


def run_python(code: str, *, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -c code` from the repository root, stderr captured at the file-descriptor level (what
    onnxruntime's C++ logger writes too)."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )


# -- 2: export-xlsr without the [export] extra -------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        "export_main([{ckpt!r}, '-o', {out!r}])",
        "main(['add-language', {out!r}, {ckpt!r}, '--language', 'de'])",
    ],
)
def test_export_without_torch_names_the_extra(tmp_path, entry):
    ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "bundle")
    code = BLOCK.format(mods=("torch",)) + (
        f"from xlsr_edge.cli import export_main, main\nsys.exit({entry.format(ckpt=ckpt, out=out)})\n"
    )
    done = run_python(code)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(
        "error: the optional dependency 'torch' is not installed: pip install 'xlsr-edge[export]'"
    )
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not Path(out).exists()


# -- 5 and 6: int8-dynamic export warns about its tiny gate set; the bundle loads without onnxruntime noise ----


def test_int8_dynamic_export_warns_about_the_shipped_clips_and_loads_quietly(tiny_ckpt, tmp_path):
    pytest.importorskip("onnxruntime.quantization")
    out = tmp_path / "int8d"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "xlsr_edge",
            "export",
            str(tiny_ckpt),
            "-o",
            str(out),
            "--precision",
            "int8-dynamic",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    (warning,) = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert "4 utterances (9.3 s) of the shipped Turkish demo clips" in warning
    assert "--calibration MANIFEST" in warning

    import onnx

    graph = onnx.load(str(out / "model.onnx")).graph
    read = {i for n in graph.node for i in n.input}
    assert [t.name for t in graph.initializer if t.name not in read] == []

    clip = ROOT / "xlsr_edge" / "data" / "clips" / "tr_1.flac"
    load = run_python(
        "from xlsr_edge.runtime import Recognizer\n"
        f"with Recognizer.from_bundle({str(out)!r}, threads=1) as rec:\n"
        f"    print(rec.transcribe([{str(clip)!r}])[0].text is not None)\n"
    )
    assert load.returncode == 0 and load.stdout.strip() == "True", load.stderr
    assert load.stderr == ""  # no "CleanUnusedInitializersAndNodeArgs ... Removing initializer"


def _inputs(texts: list[str], seconds: float):
    from xlsr_edge.datasets import Utterance
    from xlsr_edge.precision.convert import PrecisionInputs
    from xlsr_edge.precision.gate import GateSet

    utts = [
        Utterance(audio=Path(f"{i}.wav"), text=t, duration=seconds, raw_path=f"{i}.wav")
        for i, t in enumerate(texts)
    ]
    arrays = [np.zeros(int(seconds * 16000), np.float32) for _ in texts]
    return PrecisionInputs(source="set.jsonl", calibration=None, gate=GateSet(utts, arrays, held_out=True))


TURKISH = SimpleNamespace(sample_rate=16000, vocab=["<pad>", "|", *"abcçdefgğhıijklmnoöprsştuüvyz"])
ENGLISH = SimpleNamespace(sample_rate=16000, vocab=["<pad>", "|", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ'"])


def test_gate_set_warnings_small_foreign_or_fine():
    from xlsr_edge.precision.convert import gate_set_warnings

    turkish = ["şehirde iki yüz öğrenci okula gidiyor", "ışık yandı", "bugün hava çok güzel ve güneşli"]
    big = _inputs(turkish * 10, 3.0)  # 30 utterances, 90 s
    assert gate_set_warnings(big, TURKISH, shipped=False) == []
    assert gate_set_warnings(big, TURKISH, shipped=True, languages=["tr"]) == []
    (small,) = gate_set_warnings(_inputs(turkish, 3.0), TURKISH, shipped=False)
    assert "3 utterances (9.0 s) of set.jsonl" in small and "--calibration MANIFEST" in small
    (foreign,) = gate_set_warnings(big, ENGLISH, shipped=False)  # Turkish speech, an English vocabulary
    assert "not in the model's vocabulary (ç ö ü ğ ı ş)" in foreign
    (named,) = gate_set_warnings(big, TURKISH, shipped=True, languages=["fra"])
    assert "Turkish, not fra like the model" in named
