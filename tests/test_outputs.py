"""Issue 14, "trust": --overwrite never destroys a user's files, writes survive kill -9 and SIGTERM, leftovers of
dead runs are cleaned up (and nothing else is)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import read_bundle_json
from xlsr_edge.cli import export_main, main
from xlsr_edge.errors import XlsrEdgeError
from xlsr_edge.outputs import (
    BUNDLE,
    ENV_KILL_AT,
    ENV_NO_EXCHANGE,
    MARKER,
    check_output,
    recover,
)

REPO = Path(__file__).resolve().parents[1]


def tree(root: Path) -> dict[str, str]:
    """Every path under root -> sha256 of its bytes ("dir" for folders): any change shows."""
    return {
        p.relative_to(root).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the PID names no process now
    return proc.pid


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".xlsr-" in p.name)


# -- refusals: exit 2 before any work, nothing touched --------------------------------------------------------


@pytest.fixture()
def workspace(tiny_ckpt, tmp_path) -> Path:
    """tmp_path with a checkpoint copy, a folder of a user's files, a plain file and an older bundle."""
    shutil.copytree(tiny_ckpt, tmp_path / "ckpt")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    (tmp_path / "notes.txt").write_text("a plain file")
    return tmp_path


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("ckpt", "is the checkpoint itself"),
        ("ckpt/bundle", "lies inside the checkpoint"),
        ("mine", "not a bundle"),
        ("notes.txt", "is a file"),
        (".", "current folder"),
        ("..", "holds the current folder"),
    ],
)
def test_overwrite_refuses_what_it_did_not_write(workspace, monkeypatch, capsys, output, message):
    monkeypatch.chdir(workspace)
    before = tree(workspace)
    rc = export_main(["ckpt", "-o", output, "--overwrite", "--no-verify"])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(error_lines(err)) == 1 and message in error_lines(err)[0] and "-o" in error_lines(err)[0]
    assert "export [" not in err  # refused before any stage started
    assert tree(workspace) == before


def test_checkpoint_inside_the_output_is_refused(workspace, capsys):
    before = tree(workspace)
    assert export_main([str(workspace / "ckpt"), "-o", str(workspace), "--overwrite", "--no-verify"]) == 2
    assert "holds the checkpoint" in error_lines(capsys.readouterr().err)[0]
    assert tree(workspace) == before


def test_root_and_home_are_refused(tiny_ckpt, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("# mine")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    for target, what in (("/", "root folder"), (str(home), "home folder")):
        assert export_main([str(tiny_ckpt), "-o", target, "--overwrite", "--no-verify"]) == 2
        assert what in error_lines(capsys.readouterr().err)[0]
    assert tree(tmp_path) == before
    with pytest.raises(XlsrEdgeError, match="home folder"):  # the library refuses too, not only the CLI
        check_output(home, BUNDLE, overwrite=True)


def test_overwrite_replaces_a_bundle_and_an_empty_folder(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "b"
    out.mkdir()  # an empty folder is fine without --overwrite
    assert export_main([str(tiny_ckpt), "-o", str(out), "--no-verify"]) == 0
    first = read_bundle_json(out)
    assert export_main([str(tiny_ckpt), "-o", str(out), "--no-verify"]) == 2
    assert "--overwrite" in error_lines(capsys.readouterr().err)[0]
    assert export_main([str(tiny_ckpt), "-o", str(out), "--no-verify", "--overwrite"]) == 0
    err = capsys.readouterr().err
    # progress: every stage on its own line with the seconds since the start
    for stage in ("loading checkpoint", "exporting ONNX", "writing bundle.json", "wrote"):
        assert any(line.startswith("export [") and stage in line for line in err.splitlines()), stage
    assert read_bundle_json(out)["files"] == first["files"]
    assert leftovers(tmp_path) == []


def test_failed_engine_build_keeps_the_previous_bundle(tiny_ckpt, tiny_bundle, tmp_path, monkeypatch, capsys):
    import xlsr_edge.runtime.tensorrt as trt

    def broken_build(bundle, options, device):
        raise XlsrEdgeError("TensorRT failed to build the engine")

    monkeypatch.setattr(trt, "current_device", lambda: object())
    monkeypatch.setattr(trt, "build_engine", broken_build)
    out = tmp_path / "b"
    shutil.copytree(tiny_bundle, out)
    before = tree(tmp_path)
    rc = export_main([str(tiny_ckpt), "-o", str(out), "--overwrite", "--no-verify", "--engine", "trt"])
    assert rc == 2 and "TensorRT failed" in error_lines(capsys.readouterr().err)[0]
    assert tree(tmp_path) == before


def test_report_and_bench_folders_of_other_files_are_refused_before_the_work(tiny_bundle, tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "keep.csv").write_text("a,b\n")
    before = tree(tmp_path)
    missing = tmp_path / "no-such-manifest.jsonl"  # the evaluation itself would fail: it must not start
    assert main(["eval", str(tiny_bundle), str(missing), "--report", str(folder)]) == 2
    assert "--report" in error_lines(capsys.readouterr().err)[0]
    quick = ["--seconds", "1", "--batch", "1", "--threads", "1", "--repeat", "1", "--warmup", "0"]
    assert main(["bench", str(tiny_bundle), *quick, "-o", str(folder)]) == 2
    assert "-o" in error_lines(capsys.readouterr().err)[0]
    assert tree(tmp_path) == before


def test_finetune_and_synth_refuse_other_folders(tiny_ckpt, tmp_path, capsys):
    pytest.importorskip("transformers")
    from xlsr_edge.train.finetune import FinetuneOptions, finetune
    from xlsr_edge.train.synth import SynthOptions, build_corpus

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.txt").write_text("mine")
    before = tree(tmp_path)
    manifest = tmp_path / "train.jsonl"  # never read: the refusals come first
    for out, message in (
        (tmp_path / "mine", "not a fine-tuning output"),
        (tiny_ckpt / "run", "inside --init"),
    ):
        opts = FinetuneOptions(init=str(tiny_ckpt), train=manifest, dev=manifest, out=out, overwrite=True)
        with pytest.raises(XlsrEdgeError, match=message):
            finetune(opts)
    with pytest.raises(XlsrEdgeError, match="not a speech corpus"):
        build_corpus(SynthOptions(language="tr", hours=0.01, out=tmp_path / "mine", overwrite=True))
    assert tree(tmp_path) == before


# -- kill -9 at every step of a replace -----------------------------------------------------------------------

WRITER = """
import json, sys
from pathlib import Path
from xlsr_edge.outputs import BUNDLE, atomic_output
target, tag = Path(sys.argv[1]), sys.argv[2]
with atomic_output(target, BUNDLE, overwrite=True) as tmp:
    (tmp / "model.onnx").write_text(tag * 4096)
    (tmp / "heads").mkdir()
    (tmp / "heads" / "tr.npz").write_text(tag)
    (tmp / "bundle.json").write_text(json.dumps({"schema_version": 1, "tag": tag}))
"""


def write_bundle(target: Path, tag: str, **env: str) -> subprocess.CompletedProcess:
    """The writers' mechanism in a process of its own, writing a small bundle tagged `tag`."""
    return subprocess.run(
        [sys.executable, "-c", WRITER, str(target), tag],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )


def bundle_tag(target: Path) -> str:
    """The tag of the complete bundle at target (fails on a partial or mixed one)."""
    tag = json.loads((target / "bundle.json").read_text())["tag"]
    assert tree(target) == tree_of(tag)
    return tag


def tree_of(tag: str) -> dict[str, str]:
    def h(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    bundle_json = json.dumps({"schema_version": 1, "tag": tag})
    return {
        "bundle.json": h(bundle_json),
        "heads": "dir",
        "heads/tr.npz": h(tag),
        "model.onnx": h(tag * 4096),
    }


STEPS = [
    ("exchange", "created"),
    ("exchange", "written"),
    ("exchange", "ready"),
    ("exchange", "exchanged"),
    ("exchange", "removing"),
    ("fallback", "created"),
    ("fallback", "ready"),
    ("fallback", "old-aside"),
    ("fallback", "new-in"),
    ("fallback", "removing"),
]


@pytest.mark.parametrize(("path", "step"), STEPS)
def test_kill_at_each_step_leaves_a_complete_bundle_and_the_next_run_cleans_up(tmp_path, path, step):
    target = tmp_path / "b"
    assert write_bundle(target, "old").returncode == 0
    env = {ENV_KILL_AT: step} | ({ENV_NO_EXCHANGE: "1"} if path == "fallback" else {})
    killed = write_bundle(target, "new", **env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert leftovers(tmp_path)  # the kill left something behind
    said = []
    if step == "old-aside":  # the one moment the fallback has no bundle at -o: what the next run does first
        assert not target.exists()
        said = recover(target, BUNDLE)
        assert any(line.startswith(f"restored {target}") for line in said)
    expected = "new" if step in ("exchanged", "new-in", "removing") else "old"
    assert bundle_tag(target) == expected
    nxt = write_bundle(target, "next")
    assert nxt.returncode == 0, nxt.stderr
    said += nxt.stderr.splitlines()
    assert len([line for line in said if "left behind by an interrupted run" in line]) == 1
    assert bundle_tag(target) == "next" and leftovers(tmp_path) == []


def test_killed_export_is_cleaned_up_by_the_next_export(tiny_ckpt, tiny_bundle, tmp_path, capfd):
    out = tmp_path / "b"
    shutil.copytree(tiny_bundle, out)
    before = tree(out)
    cmd = [sys.executable, "-m", "xlsr_edge", "export", str(tiny_ckpt), "-o", str(out), "--overwrite"]
    killed = subprocess.run(
        cmd + ["--no-verify"], cwd=REPO, env={**os.environ, ENV_KILL_AT: "written"}, capture_output=True
    )
    assert killed.returncode == -signal.SIGKILL
    assert tree(out) == before and len(leftovers(tmp_path)) == 1  # the old bundle, and the full new temp
    assert main(["inspect", str(out)]) == 0
    capfd.readouterr()
    assert export_main([str(tiny_ckpt), "-o", str(out), "--overwrite", "--no-verify"]) == 0
    err = capfd.readouterr().err
    assert len([line for line in err.splitlines() if "left behind by an interrupted run" in line]) == 1
    assert leftovers(tmp_path) == []


# -- leftovers: only ours, only of dead processes ----------------------------------------------------------


def fake_temp(folder: Path, pid: int, marker_pid: int | None = None) -> Path:
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"\0" * 1024)
    if marker_pid is not None:
        info = {"pid": marker_pid, "host": socket.gethostname(), "tool": "xlsr-edge"}
        (folder / MARKER).write_text(json.dumps(info))
    return folder


def test_only_temp_folders_of_dead_runs_are_removed(tiny_ckpt, tmp_path, capsys):
    dead = dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ours_dead = fake_temp(tmp_path / f".b.xlsr-tmp-{dead}", dead, dead)
        ours_live = fake_temp(tmp_path / f".b.xlsr-tmp-{live.pid}", live.pid, live.pid)
        user_same_name = fake_temp(tmp_path / f".b.xlsr-tmp-{dead}-2", dead)  # no marker: not ours
        user_similar = [
            fake_temp(tmp_path / name, dead, dead)
            for name in (f"b.xlsr-tmp-{dead}", f".b.xlsr-tmp-{dead}x", f".c.xlsr-tmp-{dead}", ".b.xlsr-tmp-")
        ]
        kept = {p: tree(p) for p in [ours_live, user_same_name, *user_similar]}
        assert export_main([str(tiny_ckpt), "-o", str(tmp_path / "b"), "--no-verify"]) == 0
        err = capsys.readouterr().err
        removed = [line for line in err.splitlines() if line.startswith("removed ")]
        assert removed == [f"removed {ours_dead}: left behind by an interrupted run (process {dead})"]
        assert not ours_dead.exists()
        assert {p: tree(p) for p in kept} == kept
    finally:
        live.kill()
        live.wait()


# -- SIGTERM ----------------------------------------------------------------------------------------------


def test_sigterm_during_export_leaves_no_temp_folder(tiny_ckpt, tmp_path):
    out = tmp_path / "b"
    proc = subprocess.Popen(
        [sys.executable, "-m", "xlsr_edge", "export", str(tiny_ckpt), "-o", str(out)],
        cwd=REPO,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    seen = []
    assert proc.stderr is not None
    for line in proc.stderr:  # the temp folder exists from the "exporting ONNX" stage on
        seen.append(line)
        if "exporting ONNX" in line:
            assert list(tmp_path.iterdir())  # the write has started
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stderr.read()
    rc = proc.wait()
    assert list(tmp_path.iterdir()) == []
    assert rc == 130, "".join(seen) + rest
    assert "error: interrupted" in rest and "Traceback" not in rest


# -- fine-tuning: an earlier run stays until the new one has something to keep ---------------------------------


@pytest.fixture()
def earlier_run(tmp_path) -> Path:
    out = tmp_path / "ft"
    (out / "last").mkdir(parents=True)
    (out / "finetune_args.json").write_text('{"total_steps": 8}')
    (out / "model.safetensors").write_bytes(b"weights of the earlier run")
    return out


def _finetune_options(out: Path, **kw):
    from xlsr_edge.train.finetune import FinetuneOptions

    manifest = out.parent / "never-read.jsonl"
    return FinetuneOptions(init="tiny", train=manifest, dev=manifest, out=out, **kw)


def test_finetune_overwrite_keeps_the_earlier_run_when_the_new_one_fails(earlier_run, monkeypatch):
    pytest.importorskip("torch")
    from xlsr_edge.train import finetune as ft

    def fails_midway(options, out, work, resuming, stop_after):
        assert work != out and work.parent == out.parent  # the new run works next to the old one
        (work / "finetune_args.json").write_text("{}")
        raise RuntimeError("out of memory")

    before = tree(earlier_run.parent)
    monkeypatch.setattr(ft, "_finetune", fails_midway)
    with pytest.raises(XlsrEdgeError, match="--overwrite"):
        ft.finetune(_finetune_options(earlier_run))
    with pytest.raises(RuntimeError, match="out of memory"):
        ft.finetune(_finetune_options(earlier_run, overwrite=True))
    assert tree(earlier_run.parent) == before


def test_finetune_overwrite_interrupted_with_saved_state_replaces_the_earlier_run(earlier_run, monkeypatch):
    pytest.importorskip("torch")
    from xlsr_edge.train import finetune as ft

    def interrupted(options, out, work, resuming, stop_after):
        (work / "finetune_args.json").write_text('{"total_steps": 99}')
        (work / "last").mkdir()
        (work / "last" / "trainer_state.pt").write_bytes(b"step 5")
        raise KeyboardInterrupt  # Ctrl-C or SIGTERM after the loop saved its state: --resume continues it

    monkeypatch.setattr(ft, "_finetune", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(_finetune_options(earlier_run, overwrite=True))
    assert (earlier_run / "last" / "trainer_state.pt").read_bytes() == b"step 5"
    assert not (earlier_run / "model.safetensors").exists() and leftovers(earlier_run.parent) == []


def test_finetune_logs_progress_lines_without_a_terminal(speech_dir, tmp_path, capsys):
    pytest.importorskip("transformers")
    from xlsr_edge.cli import cli_logging
    from xlsr_edge.train.finetune import finetune

    texts = ["iyi günler", "çocuklar bahçede oynuyor", "öğretmen sınıfa girdi ve ders başladı"]
    manifest = tmp_path / "train.jsonl"
    lines = [
        json.dumps({"audio_filepath": str(speech_dir / f"es_{i}.wav"), "text": t})
        for i, t in enumerate(texts)
    ]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "ft"
    opts = _finetune_options(
        out, max_steps=4, batch_size=2, threads=1, save_every=0, log_every=2, progress=False
    )
    with cli_logging():  # the library logs; the CLI's handler puts the lines on stderr
        result = finetune(opts.__class__(**{**opts.__dict__, "train": manifest, "dev": manifest}))
    assert result.finished and (out / "model.safetensors").is_file()
    steps = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in steps] == ["step 2/4", "step 4/4"]
    assert all("loss " in line and " steps/s, ETA " in line for line in steps)
    assert "dev CER" in steps[-1]  # evaluated at the last step
