"""Issue 27, "the first hour": what a new user meets in the first commands (extras named, quiet success, gate
warnings, the README's walkthroughs running as written)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
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


# -- 6 and 8: Ray runs say where the start-up time goes, without Ray's alarming core_worker line --------------

RAY_LINE = (
    "[2026-12-05 16:42:54,091 E 26556 26556] core_worker.cc:2465: Actor with class name: "
    "'MapWorker(MapBatches(TranscribeWorker))' and ID: '15ba81' has constructor arguments in the object store "
    "and max_restarts > 0. If the arguments in the object store go out of scope or are lost, the actor restart "
    "will fail. See https://github.com/ray-project/ray/issues/53727 for more details"
)


def test_dropping_stderr_lines_filters_fd_2_and_passes_the_rest():
    code = (
        "import os, sys\n"
        "from xlsr_edge.scale.cluster import RAY_NOISE, dropping_stderr_lines\n"
        "with dropping_stderr_lines(RAY_NOISE):\n"
        f"    os.write(2, b'kept 1\\n' + {RAY_LINE.encode()!r} + b'\\n')\n"
        "    print('kept 2', file=sys.stderr)\n"
        "    os.write(2, b'[a line in')\n"
        "    os.write(2, b' two writes]\\nno newline')\n"
        "print(' after', file=sys.stderr)\n"
    )
    done = run_python(code, timeout=60)
    assert done.returncode == 0
    assert done.stderr == "kept 1\nkept 2\n[a line in two writes]\nno newline after\n"


def test_ray_run_prints_stage_lines_no_core_worker_error_and_a_bad_path_once(tiny_bundle, tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"audio_filepath": "missing.flac"}\n', encoding="utf-8")
    ray_tmp = Path(tempfile.mkdtemp(prefix="xr", dir="/tmp"))  # unix socket paths must stay short
    try:
        done = subprocess.run(
            [sys.executable, "-m", "xlsr_edge", "transcribe-dataset", str(tiny_bundle), str(bad),
             "xlsr_edge/data/clips/clips.jsonl", "-o", str(tmp_path / "out"), "--workers", "1",
             "--ray-temp-dir", str(ray_tmp), "--format", "jsonl"],
            capture_output=True, text=True, cwd=ROOT, timeout=300,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        )  # fmt: skip
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 1, done.stderr
    missing = str(tmp_path / "missing.flac")
    assert f"1 inputs failed (error rows; first: {missing}: no such file)" in done.stderr
    assert done.stderr.count(missing) == 1
    rows = [
        json.loads(line) for f in (tmp_path / "out").glob("*.jsonl") for line in f.read_text().splitlines()
    ]
    # each row names a file the user can open from where the command ran
    assert sorted(r["audio"] for r in rows) == sorted(
        [missing, *(f"xlsr_edge/data/clips/tr_{i}.flac" for i in range(1, 5))]
    )
    assert "core_worker.cc" not in done.stderr and "max_restarts" not in done.stderr
    stages = [line for line in done.stderr.splitlines() if line.startswith("ray [")]
    assert [s.split("] ", 1)[1].split(":")[0].split(", ")[0] for s in stages] == [
        "starting a local Ray cluster on 127.0.0.1",
        "cluster up",
        "starting 1 worker (each loads the bundle)",
        "first results",
        "stopping Ray",
        "Ray stopped",
    ]


# -- 10: small things a new user trips over ---------------------------------------------------------------------


def test_manifest_rows_print_a_path_that_opens_from_here(tiny_bundle, capsys, monkeypatch):
    from xlsr_edge.cli import main

    monkeypatch.chdir(ROOT)
    assert main(["transcribe", str(tiny_bundle), "xlsr_edge/data/clips/clips.jsonl"]) == 0
    labels = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert labels == [f"xlsr_edge/data/clips/tr_{i}.flac" for i in range(1, 5)]
    assert all(Path(label).is_file() for label in labels)


def test_every_option_help_is_a_whole_sentence():
    """No help text cut off mid-phrase (the transcribe --lid-threshold help ended in "the bundle's")."""
    import argparse

    from xlsr_edge.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        for action in parser._actions:
            text = (action.help or "").rstrip()
            assert not text.endswith(("'s", " the", " a", " of", ",")), (name, action.option_strings, text)


# -- 9: the README's WebSocket client (examples/stream_client.py) -------------------------------------------------


def test_stream_client_mixes_stereo_down_to_the_mono_transcript(tiny_bundle, tmp_path):
    pytest.importorskip("websockets")
    import soundfile as sf

    from xlsr_edge.data import CLIPS_DIR

    mono, rate = sf.read(str(CLIPS_DIR / "tr_3.flac"), dtype="float32")
    stereo = tmp_path / "stereo.wav"
    sf.write(str(stereo), np.stack([mono, mono], axis=1), rate, subtype="PCM_16")  # the same speech twice
    server = subprocess.Popen(
        [sys.executable, "-m", "xlsr_edge", "serve", str(tiny_bundle), "--host", "127.0.0.1", "--port", "0",
         "--threads", "1", "--max-speed", "0"],
        stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        line = server.stderr.readline()
        assert "listening on ws://127.0.0.1:" in line, line
        url = "ws://127.0.0.1:" + line.split("ws://127.0.0.1:")[1].split()[0].rstrip("/")
        client = [sys.executable, "examples/stream_client.py", "--url", url]
        plain = subprocess.run(
            client, capture_output=True, text=True, cwd=ROOT, timeout=120
        )  # the default clip
        mixed = subprocess.run([*client, str(stereo)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    finally:
        server.terminate()
        server.wait(timeout=30)
        server.stderr.close()
    assert plain.returncode == 0 and mixed.returncode == 0, plain.stderr + mixed.stderr
    assert plain.stdout.startswith("[") and mixed.stdout == plain.stdout  # not twice as long, not other words


# -- 7: the README's LM walkthrough runs as written ----------------------------------------------------------


def readme_block(marker: str) -> list[str]:
    """The command lines of the ```bash block after `<!-- marker ...-->` in README.md."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    after = text[text.index(f"<!-- {marker}") :]
    block = after[after.index("```bash\n") + len("```bash\n") :]
    return [line for line in block[: block.index("```")].splitlines() if line.strip()]


def kenlm_tools_missing() -> str | None:
    """Why `lm build` cannot run here (its own lookup: XLSR_EDGE_KENLM_BIN, PATH, the checkout's .tools)."""
    folders = [os.environ.get("XLSR_EDGE_KENLM_BIN"), ROOT / ".tools" / "kenlm" / "bin"]
    if shutil.which("lmplz") or any(f and (Path(f) / "lmplz").is_file() for f in folders):
        return None
    return "KenLM's lmplz is not built (make kenlm)"


@pytest.mark.slow
def test_readme_lm_walkthrough_runs_as_written(tmp_path):
    """The block as written (the demo model exported, both sentence sets spoken, the LM built, tuned and used),
    except for a two-setting tune instead of the full search (the figures: benchmarks/lm_tune.py)."""
    for module in ("torch", "pyctcdecode", "kenlm", "jiwer"):
        pytest.importorskip(module)
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    if kenlm_tools_missing():
        pytest.skip(kenlm_tools_missing())
    lines = readme_block("lm-walkthrough")
    assert lines[0].startswith("export-xlsr models/demo-tr -o tr-bundle") and any(
        " lm tune " in x for x in lines
    )
    script = [
        line.split("#")[0] + (" --alpha 0,0.5 --beta 2 --unk-offset=-10" if " lm tune " in line else "")
        for line in lines
    ]
    for name in ("examples", "models"):
        (tmp_path / name).symlink_to(ROOT / name)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert (tmp_path / "tr.bin").is_file() and (tmp_path / "tr.tuned.json").is_file()
    assert "out-of-vocabulary rate on lm-dev/sentences.jsonl" in done.stdout + done.stderr
    assert done.stdout.count("WER") >= 2  # both evals scored the spoken test sentences
    assert "weights" in done.stdout and "tuned (tr.tuned.json)" in done.stdout


# -- 1: make setup's check of the installed torch ----------------------------------------------------------------


@pytest.mark.parametrize("cuda", [None, "12.8"])
def test_check_torch_names_the_build_and_warns_loudly_about_cuda(tmp_path, cuda):
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "import types\n"
        f"__version__ = {'2.13.0+cpu' if cuda is None else '2.13.0'!r}\n"
        f"version = types.SimpleNamespace(cuda={cuda!r})\n",
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    check = [sys.executable, str(ROOT / "scripts" / "check_torch.py")]
    done = subprocess.run(check, capture_output=True, text=True, env=env, timeout=60)
    strict = subprocess.run([*check, "--strict"], capture_output=True, text=True, env=env, timeout=60)
    if cuda is None:
        assert (done.returncode, strict.returncode) == (0, 0)
        assert done.stdout == "setup: torch 2.13.0+cpu is the CPU build\n" and done.stderr == ""
    else:
        assert (done.returncode, strict.returncode) == (0, 1)
        assert "WARNING: torch 2.13.0 is a CUDA 12.8 build" in done.stderr
        assert "--index-url https://download.pytorch.org/whl/cpu" in done.stderr


def test_license_file_is_the_apache_2_text_pyproject_names():
    import tomllib

    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 150  # the whole text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == {"text": "Apache-2.0"}
