"""Issue 23, "trust, round 3": every number a user gives is bounded (one mechanism, xlsr_edge.limits), `-o` is
created atomically, a failed write is one line, truncated or absurd audio is an error row, a duplicated shard
is named."""

from __future__ import annotations

import argparse
import errno
import hashlib
import math
import shutil
import struct
from pathlib import Path

import pytest

from xlsr_edge import limits
from xlsr_edge.cli import build_parser, export_main, export_parser, main
from xlsr_edge.limits import OptionError, check_number

# -- numbers: finite, in range, bounded by the machine ---------------------------------------------------------


def parse_error(argv: list[str], capsys) -> str:
    """The one `error:` line (exit 2) a bad option value gives while the command line is parsed."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ") and captured.err.count("\n") == 1
    return captured.err


@pytest.mark.parametrize(
    "argv, message",
    [
        # 7: inf passes `> 0`; it is refused at start-up (transcribe, stream, serve)
        (
            ["transcribe", "B", "a.wav", "--chunk-seconds", "inf"],
            "--chunk-seconds must be a finite number, got inf",
        ),
        (
            ["transcribe", "B", "a.wav", "--context-seconds", "inf"],
            "--context-seconds must be a finite number",
        ),
        (["stream", "B", "-", "--chunk-seconds", "inf"], "--chunk-seconds must be a finite number"),
        (
            ["stream", "B", "-", "--left-context-seconds", "nan"],
            "--left-context-seconds must be a finite number",
        ),
        (["stream", "B", "-", "--max-utterance-seconds", "inf"], "--max-utterance-seconds must be a finite"),
        (["serve", "B", "--chunk-seconds", "inf"], "--chunk-seconds must be a finite number"),
        (["serve", "B", "--max-utterance-seconds", "inf"], "--max-utterance-seconds must be a finite number"),
        (
            ["transcribe-dataset", "B", "m", "-o", "o", "--chunk-seconds", "inf"],
            "--chunk-seconds must be a finite",
        ),
        # 5: threads and beam worker processes are capped by the machine
        (["transcribe", "B", "a.wav", "--threads", "100000"], "--threads must be <= "),
        (["serve", "B", "--threads", "100000"], "--threads must be <= "),
        (["transcribe", "B", "a.wav", "--workers", "1500"], "--workers must be <= "),
        (["eval", "B", "m.jsonl", "--workers", "1500"], "--workers must be <= "),
        (["lm", "tune", "B", "dev.jsonl", "--lm", "x.bin", "--workers", "1500"], "--workers must be <= "),
        # 6: stdin's sample rate follows the rule files follow (8 to 384 kHz)
        (["stream", "B", "-", "--sample-rate", "1"], "--sample-rate must be >= 8000, got 1"),
        (["stream", "B", "-", "--sample-rate", "1000000000"], "--sample-rate must be <= 384000"),
        # around them: sizes, signs, words, numbers past a float
        (["transcribe", "B", "a.wav", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["transcribe", "B", "a.wav", "--batch-size", "1000000000"], "--batch-size must be <= 1024"),
        (["transcribe", "B", "a.wav", "--max-seconds", "-1"], "--max-seconds must be >= 0, got -1"),
        (
            ["transcribe", "B", "a.wav", "--max-seconds", "1e400"],
            "--max-seconds must be a finite number, got 1e400",
        ),
        (["transcribe", "B", "a.wav", "--threads", "two"], "--threads must be an integer, got 'two'"),
        (["transcribe", "B", "a.wav", "--threads", "9" * 500], "--threads must be <= "),
        (["transcribe", "B", "a.wav", "--lid-threshold", "2"], "--lid-threshold must be <= 1, got 2"),
        (["stream", "B", "-", "--vad-threshold", "1"], "--vad-threshold must be < 1, got 1"),
        (["serve", "B", "--port", "70000"], "--port must be <= 65535"),
        (["serve", "B", "--max-streams", "0"], "--max-streams must be >= 1"),
        (
            ["transcribe-dataset", "B", "m", "-o", "o", "--cpus-per-worker", "inf"],
            "--cpus-per-worker must be a",
        ),
        (["transcribe-dataset", "B", "m", "-o", "o", "--shard-rows", "0"], "--shard-rows must be >= 1"),
        (["bench", "B", "--seconds", "1,inf"], "--seconds must be a finite number, got inf"),
        (["finetune", "C", "m", "-o", "o", "--lr", "nan"], "--lr must be a finite number, got nan"),
        (["finetune", "C", "m", "-o", "o", "--snr-db", "5,inf"], "--snr-db must be a finite number, got inf"),
        (["lm", "build", "t.txt", "-o", "x.bin", "--order", "9"], "--order must be <= 6, got 9"),
    ],
)
def test_bad_numbers_are_one_error_line_at_start_up(capsys, argv, message):
    err = parse_error(argv, capsys)
    assert err.startswith(f"error: {message}"), err
    assert len(err) < 200  # a 500-digit value is shown cut


def test_export_numbers_too(capsys):
    with pytest.raises(SystemExit) as info:
        export_parser().parse_args(["ckpt", "-o", "b", "--max-abs-diff", "nan"])
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: --max-abs-diff must be a finite number, got nan\n"


def _number_options(parser: argparse.ArgumentParser, where: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _number_options(child, f"{where} {name}")
        elif action.option_strings:
            yield where, action


def test_every_numeric_flag_of_every_command_is_checked_by_limits():
    """No `type=int` / `type=float` is left: each numeric flag refuses inf, nan and values out of its range."""
    options = [
        *_number_options(build_parser(), "xlsr-edge"),
        *_number_options(export_parser(), "export-xlsr"),
    ]
    assert len(options) > 100
    plain = [f"{where} {a.option_strings[-1]}" for where, a in options if a.type in (int, float)]
    assert plain == []
    checked = [a for _, a in options if isinstance(a.type, limits.NumberType)]
    assert len(checked) > 60


def test_thread_cap_follows_the_machine(monkeypatch, capsys):
    monkeypatch.setattr(limits, "cpu_count", lambda: 1)
    assert limits.max_threads() == limits.THREADS_PER_CPU
    parser = build_parser()
    args = parser.parse_args(["transcribe", "B", "a.wav", "--threads", str(limits.THREADS_PER_CPU)])
    assert args.threads == limits.THREADS_PER_CPU
    err = parse_error(["transcribe", "B", "a.wav", "--threads", str(limits.THREADS_PER_CPU + 1)], capsys)
    assert "(4 per CPU; this machine has 1 CPU)" in err


@pytest.mark.parametrize(
    "value, lo, hi, kwargs, message",
    [
        (math.inf, 0, None, {}, "x must be a finite number, got inf"),
        (math.nan, 0, 1, {}, "x must be a finite number, got nan"),
        (-math.inf, None, None, {}, "x must be a finite number"),
        (0, 0, 1, {"lo_open": True}, "x must be > 0, got 0"),
        (1.0, 0, 1, {"hi_open": True}, "x must be < 1, got 1.0"),
        (10**401, 1, 8, {"integer": True}, "x must be <= 8, got 1000"),
        (10**401, 0, None, {}, "x must be a finite number"),  # past what a float holds
        (2.5, 1, 8, {"integer": True}, "x must be an integer, got 2.5"),
        (True, 0, 8, {"integer": True}, "x must be an integer, got True"),
        ("3", 0, 8, {}, "x must be a number, got '3'"),
        (None, 0, 8, {}, "x must be a number, got None"),
    ],
)
def test_check_number_refuses(value, lo, hi, kwargs, message):
    with pytest.raises(OptionError, match="^" + message.replace("(", r"\(").replace(")", r"\)")) as info:
        check_number("x", value, lo, hi, **kwargs)
    assert isinstance(
        info.value, ValueError
    )  # the option dataclasses' contract: ValueError, exit 2 in the CLI
    assert len(str(info.value)) < 100


def test_check_number_accepts_and_converts():
    import numpy as np

    assert check_number("x", 3, 1, 8, integer=True) == 3
    assert check_number("x", np.int64(3), 1, 8, integer=True) == 3
    assert check_number("x", np.float32(0.5), 0, 1) == 0.5 and isinstance(check_number("x", 1, 0, 1), float)
    assert check_number("x", 10**401, 1, None, integer=True) == 10**401


def test_option_dataclasses_refuse_non_finite_and_out_of_range():
    from xlsr_edge.decoders import BeamOptions
    from xlsr_edge.runtime.recognizer import TranscribeOptions
    from xlsr_edge.runtime.stream import StreamOptions
    from xlsr_edge.runtime.vad import VadOptions

    cases = [
        (TranscribeOptions, {"chunk_seconds": math.inf}, "chunk_seconds must be a finite number"),
        (TranscribeOptions, {"context_seconds": math.inf}, "context_seconds must be a finite number"),
        (TranscribeOptions, {"max_seconds": math.nan}, "max_seconds must be a finite number"),
        (TranscribeOptions, {"batch_size": 10**9}, "batch_size must be <= 1024"),
        (StreamOptions, {"chunk_seconds": math.inf}, "chunk_seconds must be a finite number"),
        (StreamOptions, {"right_context_seconds": math.inf}, "right_context_seconds must be a finite number"),
        (StreamOptions, {"max_utterance_seconds": math.inf}, "max_utterance_seconds must be a finite number"),
        (StreamOptions, {"sample_rate": 1}, "sample_rate must be >= 8000"),
        (StreamOptions, {"sample_rate": 10**9}, "sample_rate must be <= 384000"),
        (VadOptions, {"min_silence_seconds": math.inf}, "min_silence_seconds must be a finite number"),
        (BeamOptions, {"num_workers": 1500}, "num_workers must be <= "),
    ]
    for cls, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            cls(**kwargs)


def test_recognizer_refuses_thousands_of_threads_before_loading(tmp_path):
    from xlsr_edge.runtime import Recognizer

    with pytest.raises(OptionError, match="threads must be <= "):
        Recognizer.from_bundle(tmp_path / "no-bundle", threads=100_000)


# -- 2: creating -o is one atomic step: of concurrent writers exactly one wins ---------------------------------


def _race_kind():
    from xlsr_edge.outputs import OutputKind, has_file

    return OutputKind("race output", "the race test", has_file("who.txt"))


def _racer(target: str, barrier, n: int, fallback: bool) -> None:
    """A child process: write an output of its own at `target`, published when every racer is ready."""
    import os

    from xlsr_edge import outputs
    from xlsr_edge.errors import XlsrEdgeError

    if fallback:
        os.environ[outputs.ENV_NO_EXCHANGE] = "1"
    sync = outputs._fsync_tree

    def synced(folder):  # every racer has checked `target` and written its files: now all publish at once
        barrier.wait(timeout=60)
        sync(folder)

    outputs._fsync_tree = synced
    try:
        with outputs.atomic_output(target, _race_kind(), overwrite=False) as tmp:
            (tmp / "who.txt").write_text(str(n))
    except XlsrEdgeError as exc:
        os._exit(2 if "already exists" in str(exc) else 3)
    except BaseException:  # noqa: BLE001 - any other failure is a distinct exit code for the test
        os._exit(4)
    os._exit(0)


@pytest.mark.parametrize("fallback", [False, True], ids=["renameat2", "mkdir-claim"])
@pytest.mark.parametrize("state", ["absent", "empty folder"])
def test_concurrent_writers_of_a_new_output_exactly_one_wins(tmp_path, fallback, state):
    import multiprocessing

    target = tmp_path / "out" / "b"
    if state == "empty folder":
        target.mkdir(parents=True)
    ctx = multiprocessing.get_context("fork")
    n = 4
    barrier = ctx.Barrier(n)
    procs = [ctx.Process(target=_racer, args=(str(target), barrier, i, fallback)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    codes = [p.exitcode for p in procs]
    assert sorted(codes) == [0, 2, 2, 2], codes  # one wins; the others: "already exists" (exit 2)
    winner = codes.index(0)
    assert sorted(p.name for p in target.iterdir()) == ["who.txt"]
    assert (target / "who.txt").read_text() == str(winner)  # the winner's output, nobody replaced it
    assert sorted(p.name for p in target.parent.iterdir()) == ["b"]  # the losers left nothing


def test_install_files_without_replace_never_replaces(tmp_path):
    from xlsr_edge.errors import XlsrEdgeError
    from xlsr_edge.outputs import install_files

    (tmp_path / "a.tmp").write_text("new")
    (tmp_path / "a").write_text("someone else's")
    with pytest.raises(XlsrEdgeError, match="appeared while this run wrote it"):
        install_files([(tmp_path / "a.tmp", tmp_path / "a")], replace=False)
    assert (tmp_path / "a").read_text() == "someone else's"
    install_files([(tmp_path / "a.tmp", tmp_path / "b")], replace=False)
    assert (tmp_path / "b").read_text() == "new" and not (tmp_path / "a.tmp").exists()


# -- 8: a full disk or a read-only folder: one `error:` line naming the path, earlier outputs intact ------------

CLIPS = Path(__file__).resolve().parents[1] / "xlsr_edge" / "data" / "clips" / "clips.jsonl"


def tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def full_disk_on(monkeypatch, name: str) -> None:
    """Writing a file called `name` fails as write() does on a full disk: ENOSPC, no file name."""
    write_text = Path.write_text

    def write(self, *args, **kwargs):
        if self.name == name:
            write_text(self, "half of it")
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write)


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_export_with_a_full_disk_at_bundle_json_keeps_the_old_bundle(
    tiny_ckpt, tiny_bundle, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "b"
    shutil.copytree(tiny_bundle, out)  # an earlier export
    before = tree(tmp_path)
    full_disk_on(monkeypatch, ".bundle.json.tmp")
    assert export_main([str(tiny_ckpt), "-o", str(out), "--overwrite", "--no-verify"]) == 1  # a failed run
    line = one_error(capsys)
    assert line == (
        f"error: cannot write {out / 'bundle.json'}: No space left on device; free some space and run again "
        f"({out} is as it was)"
    )
    assert tree(tmp_path) == before  # the old bundle, and no temp folder left


def test_eval_report_on_a_full_disk_keeps_the_old_report(tiny_bundle, tmp_path, monkeypatch, capsys):
    report = tmp_path / "report"
    assert main(["eval", str(tiny_bundle), str(CLIPS), "--report", str(report)]) == 0
    before = tree(tmp_path)
    capsys.readouterr()
    full_disk_on(monkeypatch, "report.md")
    assert main(["eval", str(tiny_bundle), str(CLIPS), "--report", str(report)]) == 1
    line = one_error(capsys)
    assert line.startswith(f"error: cannot write {report}") and "No space left on device" in line
    assert tree(tmp_path) == before


def test_read_only_targets_are_refused_before_any_work(tiny_ckpt, tiny_bundle, tmp_path, monkeypatch, capsys):
    """EROFS: found when the command starts (also as root, whom permissions do not stop), nothing written."""
    import os

    from xlsr_edge import outputs

    statvfs = os.statvfs
    readonly = tmp_path / "ro"
    readonly.mkdir()

    class ReadOnly:
        def __init__(self, real):
            self.f_flag = real.f_flag | os.ST_RDONLY

    def fake(path):
        real = statvfs(path)
        return ReadOnly(real) if Path(path) == readonly else real

    monkeypatch.setattr(outputs.os, "statvfs", fake)
    cases = [
        lambda: export_main([str(tiny_ckpt), "-o", str(readonly / "b")]),
        lambda: main(["eval", str(tiny_bundle), str(CLIPS), "--report", str(readonly / "r")]),
        lambda: main(["transcribe-dataset", str(tiny_bundle), str(CLIPS), "-o", str(readonly / "t")]),
    ]
    for case in cases:
        assert case() == 2
        line = one_error(capsys)
        assert f"cannot write there ({readonly} is on a read-only file system)" in line, line
    assert list(readonly.iterdir()) == []


def test_a_shard_that_hits_a_full_disk_is_one_line_and_earlier_shards_stay(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from xlsr_edge.errors import OutputError
    from xlsr_edge.scale import output

    writer = output.ShardWriter(tmp_path, "parquet", 1)
    first = writer.write([{"id": "0:0", "text": "a"}])
    before = tree(tmp_path)

    def full(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1")
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    with pytest.raises(OutputError) as info:
        writer.write([{"id": "0:1", "text": "b"}])
    second = tmp_path / "part-001-00001.parquet"
    assert str(info.value).startswith(f"cannot write {second}: No space left on device; free some space")
    assert info.value.exit_code == 1
    assert tree(tmp_path) == before and first.is_file()  # no temp shard, the first shard untouched


def test_an_os_error_no_writer_named_is_still_one_line(capsys):
    from xlsr_edge.cli import run

    def handler(args):
        raise OSError(errno.EROFS, "Read-only file system", "/mnt/x/out.json")

    assert run(argparse.Namespace(fn=handler)) == 1
    assert capsys.readouterr().err == "error: /mnt/x/out.json: Read-only file system\n"


# -- 11, 12: a truncated WAV, NaN/inf and absurd samples are the input's error row, never a silent result ------


def _wav_set(folder: Path) -> tuple[dict[str, Path], float]:
    """A good WAV and its hostile variants, and the good one's length in seconds."""
    import numpy as np
    import soundfile as sf

    from xlsr_edge.data import default_clips

    x, rate = sf.read(default_clips()[0], dtype="float32")
    out = {"good": folder / "good.wav"}
    sf.write(out["good"], x, rate, subtype="PCM_16")
    data = out["good"].read_bytes()
    out["half"] = folder / "half.wav"  # cut to half its size: the header still claims the whole clip
    out["half"].write_bytes(data[: len(data) // 2])
    at = data.find(b"data")
    claimed = struct.unpack("<I", data[at + 4 : at + 8])[0]
    out["tenfold"] = folder / "tenfold.wav"  # a header claiming 10x the bytes present
    out["tenfold"].write_bytes(data[: at + 4] + struct.pack("<I", claimed * 10) + data[at + 8 :])
    for name, y in (("huge", x * 1e30), ("nan", np.where(np.arange(len(x)) == 500, np.nan, x))):
        out[name] = folder / f"{name}.wav"
        sf.write(out[name], y.astype("float32"), rate, subtype="FLOAT")
    out["inf"] = folder / "inf.wav"
    sf.write(
        out["inf"], np.where(np.arange(len(x)) % 7 == 0, np.inf, x).astype("float32"), rate, subtype="FLOAT"
    )
    return out, len(x) / rate


def test_truncated_and_garbage_wavs_are_error_rows_between_good_files(tiny_bundle, tmp_path, capfd):
    import json
    import warnings

    files, seconds = _wav_set(tmp_path)
    names = ["good", "half", "tenfold", "huge", "nan", "inf", "good"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(["transcribe", str(tiny_bundle), *(str(files[n]) for n in names), "--json"])
    captured = capfd.readouterr()
    assert rc == 1  # some inputs of the batch failed
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["audio"] for r in rows] == [str(files[n]) for n in names]
    assert "error" not in rows[0] and "error" not in rows[-1] and rows[0]["text"] == rows[-1]["text"]
    errors = {n: r["error"] for n, r in zip(names, rows) if "error" in r}
    assert set(errors) == {"half", "tenfold", "huge", "nan", "inf"}
    half, whole, tenfold = f"{seconds / 2:.1f} s", f"{seconds:.1f} s", f"{seconds * 10:.1f} s"
    assert f"the header says {whole} but the file holds {half}; the file is truncated" in errors["half"]
    assert f"the header says {tenfold} but the file holds {whole}" in errors["tenfold"], errors
    assert "e+29, far outside audio's range" in errors["huge"] and "wrongly scaled" in errors["huge"]
    assert "1 NaN/inf samples" in errors["nan"] and "NaN/inf samples" in errors["inf"]
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert "Warning" not in captured.err and "Traceback" not in captured.err


def test_arrays_with_absurd_values_are_refused_without_warnings():
    import warnings

    import numpy as np

    from xlsr_edge.errors import AudioError
    from xlsr_edge.runtime.audio import prepare_audio
    from xlsr_edge.runtime.stream import to_float32

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any RuntimeWarning fails the test
        for x in (
            np.full(1600, 1e300),
            np.array([[np.inf, -np.inf]] * 800),
            np.full(1600, 3e6, dtype="float32"),
        ):
            with pytest.raises(AudioError, match="NaN/inf|far outside"):
                prepare_audio(x, 16000, 16000, name="a")
        with pytest.raises(AudioError, match="stream: .*the stream is corrupt"):
            to_float32(np.full(160, 1e300))
        quiet = prepare_audio(np.full(1600, 32767.0), 16000, 16000)  # int16 values saved as float: accepted
        assert quiet.dtype == np.float32


def test_a_wav_of_unknown_length_is_not_called_truncated(tmp_path):
    from xlsr_edge.runtime.audio import wav_data_claim

    files, _ = _wav_set(tmp_path)
    data = files["good"].read_bytes()
    at = data.find(b"data")
    streamed = tmp_path / "streamed.wav"  # as a writer to a pipe leaves it: the length field says "unknown"
    streamed.write_bytes(data[: at + 4] + struct.pack("<I", 0xFFFFFFFF) + data[at + 8 :])
    assert wav_data_claim(streamed) is None
    claimed, present, align = wav_data_claim(files["half"])
    assert claimed > present and align == 2
    assert wav_data_claim(Path(__file__)) is None  # not a WAV


# -- 14: --resume on an output with a duplicated shard names the file to remove ---------------------------------


def _job(sha: str) -> dict:
    from xlsr_edge.scale import output

    inputs = [{"manifest": "m.jsonl", "sha256": "0" * 64, "utterances": 4}]
    return {
        "tool": output.KIND.writer,
        "bundle": "b",
        "bundle_sha256": sha,
        "format": "jsonl",
        "inputs": inputs,
    }


def _rows(sha: str, ids: list[str]) -> list[dict]:
    return [{"id": i, "audio": f"{i}.wav", "text": "a", "duration": 1.0, "bundle_sha256": sha} for i in ids]


def test_resume_with_a_copied_shard_names_the_copy_and_goes_on_once_it_is_removed(tmp_path):
    from xlsr_edge.errors import XlsrEdgeError
    from xlsr_edge.scale import output

    sha, out = "a" * 64, tmp_path / "out"
    run, _ = output.prepare(out, _job(sha), resume=False)
    writer = output.ShardWriter(out, "jsonl", run)
    first = writer.write(_rows(sha, ["0:0", "0:1"]))
    shutil.copy(first, out / "part-001-00007.jsonl")  # the user copied a shard into the folder
    before = tree(out)
    for _ in range(2):  # the same answer each time, and nothing touched
        with pytest.raises(XlsrEdgeError) as info:
            output.prepare(out, _job(sha), resume=True)
        message = str(info.value)
        assert "2 inputs are written twice" in message
        assert (
            "part-001-00007.jsonl is an exact copy of part-001-00000.jsonl: remove part-001-00007.jsonl"
            in message
        )
        assert "then run again with --resume" in message
        assert tree(out) == before
    (out / "part-001-00007.jsonl").unlink()
    run, found = output.prepare(out, _job(sha), resume=True)
    assert run == 2 and found.ids == {"0:0", "0:1"} and found.duplicates == 0


def test_a_shard_that_repeats_some_rows_is_named_with_what_it_repeats(tmp_path):
    from xlsr_edge.errors import XlsrEdgeError
    from xlsr_edge.scale import output

    sha, out = "a" * 64, tmp_path / "out"
    run, _ = output.prepare(out, _job(sha), resume=False)
    writer = output.ShardWriter(out, "jsonl", run)
    writer.write(_rows(sha, ["0:0", "0:1"]))
    writer.write(_rows(sha, ["0:2"]))
    mixed = output.ShardWriter(out, "jsonl", 9)  # a shard edited by hand: one row repeated, one new
    mixed.write(_rows(sha, ["0:1", "0:3"]))
    with pytest.raises(XlsrEdgeError) as info:
        output.prepare(out, _job(sha), resume=True)
    assert (
        "part-009-00000.jsonl repeats 1 of its 2 rows from part-001-00000.jsonl: move part-009-00000.jsonl"
        in str(info.value)
    )
