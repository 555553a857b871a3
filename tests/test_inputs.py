"""Bounded inputs and output that can be trusted: hostile files between good ones, long files streamed in bounded
memory, results written as each input finishes, bad manifest lines, non-UTF-8 file names, CLI hygiene."""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from xlsr_edge.cli import build_parser, main
from xlsr_edge.commands.common import decoder_options
from xlsr_edge.data import default_clips
from xlsr_edge.errors import AudioError
from xlsr_edge.runtime import Recognizer, TranscribeOptions
from xlsr_edge.runtime import audio as audio_module
from xlsr_edge.runtime.audio import AudioFile, load_audio

CLI = [sys.executable, "-m", "xlsr_edge"]
# Runs the command given after it and reports the peak RSS of that command (its only child) on stderr.
MEASURED = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:]).returncode\n"
    "print(f'peak_rss_kb={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', file=sys.stderr)\n"
    "sys.exit(rc)\n"
)
NOT_HOURS = 120  # seconds: a generous bound that only proves "not hours"


def sparse_wav(path: Path, rate: int, channels: int, seconds: float, *, float32: bool = False) -> Path:
    """A WAV whose header truthfully announces `seconds` of audio that is one hole on disk (zeros, a few KB)."""
    width = 4 if float32 else 2
    data = int(seconds * rate) * channels * width
    fmt = struct.pack(
        "<HHIIHH", 3 if float32 else 1, channels, rate, rate * channels * width, channels * width, 8 * width
    )
    header = b"RIFF" + struct.pack("<I", min(36 + data, 0xFFFFFFFF)) + b"WAVE"
    header += b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", data)
    with path.open("wb") as f:
        f.write(header)
        f.truncate(len(header) + data)
    return path


def patched_wav(source: Path, path: Path, *, rate: int | None = None, data_bytes: int | None = None) -> Path:
    """A copy of `source` as 16-bit WAV whose header lies: another sample rate, or a longer data chunk."""
    x, sr = sf.read(source, dtype="float32")
    sf.write(path, x, sr, subtype="PCM_16", format="WAV")
    b = bytearray(path.read_bytes())
    assert b[36:40] == b"data"  # soundfile writes the plain 44-byte header
    if rate is not None:
        b[24:28] = struct.pack("<I", rate)
        b[28:32] = struct.pack("<I", rate * 2)
    if data_bytes is not None:
        b[40:44] = struct.pack("<I", data_bytes)
        b[4:8] = struct.pack("<I", 36 + data_bytes)
    path.write_bytes(bytes(b))
    return path


def run_measured(args: list, timeout: float = NOT_HOURS) -> tuple[int, bytes, str, int]:
    """(exit code, stdout, stderr, peak RSS in bytes) of the CLI; killed with its whole session on timeout."""
    proc = subprocess.Popen(
        [sys.executable, "-c", MEASURED, *CLI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"transcribe still running after {timeout} s")
    text = err.decode("utf-8", "replace")
    rss = [line for line in text.splitlines() if line.startswith("peak_rss_kb=")]
    return proc.returncode, out, text, int(rss[-1].split("=")[1]) * 1024


def json_rows(out: bytes) -> list[dict]:
    return [json.loads(line) for line in out.decode("utf-8").splitlines()]


# -- bounded inputs -----------------------------------------------------------------------------------------


def test_hostile_inputs_between_good_files_get_error_lines_in_bounded_time_and_memory(tiny_bundle, tmp_path):
    clips = default_clips()
    one_hz = patched_wav(clips[0], tmp_path / "one_hz.wav", rate=1)  # 1 Hz -> 16 kHz would take hours
    huge = sparse_wav(tmp_path / "huge.wav", 16000, 1, 4_000_000_000 // 32000)  # 4 GB, 35 h, a few KB on disk
    assert huge.stat().st_size >= 4e9
    claims_more = patched_wav(clips[1], tmp_path / "claims_more.wav", data_bytes=0xFFFFFF00)
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)  # opening it would block until a writer comes
    low = tmp_path / "low.wav"
    sf.write(low, np.zeros(4000, dtype=np.float32), 4000)
    inputs = [clips[0], one_hz, clips[1], huge, fifo, Path("/dev/zero"), claims_more, low, clips[2]]

    rc, out, err, rss = run_measured(["transcribe", str(tiny_bundle), *map(str, inputs), "--json"])

    assert "Traceback" not in err
    rows = json_rows(out)
    assert [r["audio"] for r in rows] == [str(p) for p in inputs]  # one line each, in order
    by = dict(zip(["c0", "one_hz", "c1", "huge", "fifo", "zero", "claims_more", "low", "c2"], rows))
    assert rc == 1
    for key in ("c0", "c1", "c2"):
        assert "text" in by[key], by[key]
    assert "1 Hz" in by["one_hz"]["error"] and "8000 Hz" in by["one_hz"]["error"]
    assert "--max-seconds" in by["huge"]["error"]
    assert "named pipe (FIFO)" in by["fifo"]["error"]
    assert "character device" in by["zero"]["error"]
    assert "below 8000 Hz" in by["low"]["error"]
    # a data chunk that claims more than the file holds (libsndfile would quietly read what is there): truncated
    assert "the file is truncated or its header is wrong" in by["claims_more"]["error"]
    assert rss < huge.stat().st_size / 10, f"peak RSS {rss / 2**20:.0f} MiB"


def test_long_file_is_streamed_in_bounded_memory(tiny_bundle, tmp_path):
    """10 minutes of 16-channel 48 kHz float: 1.8 GB decoded, never held; memory stays a fraction of it."""
    wav = sparse_wav(tmp_path / "ten_minutes.wav", 48000, 16, 600, float32=True)
    size = wav.stat().st_size
    assert size > 1.8e9
    assert not AudioFile.open(wav, 16000).fits_in_memory

    rc, out, err, rss = run_measured(
        ["transcribe", str(tiny_bundle), str(wav), "--json", "--batch-size", "1"]
    )

    assert rc == 0, err
    (row,) = json_rows(out)
    assert row["duration"] == 600.0
    assert rss < size / 4, f"peak RSS {rss / 2**20:.0f} MiB for a {size / 2**30:.1f} GiB file"


def test_streamed_file_gives_the_same_logits_as_a_whole_read(tiny_bundle, tmp_path, monkeypatch):
    x = np.concatenate([sf.read(c, dtype="float32")[0] for c in default_clips()] * 2)
    import soxr

    y = soxr.resample(x, 16000, 44100)
    path = tmp_path / "stereo44k.wav"
    sf.write(path, np.stack([y, 0.5 * y], axis=1), 44100, subtype="FLOAT")
    options = TranscribeOptions(chunk_seconds=4, context_seconds=2, batch_size=3)
    with Recognizer.from_bundle(tiny_bundle) as rec:
        whole = rec.logits([path], options)[0]
        text = rec.transcribe([path], options)[0].text
        monkeypatch.setattr(audio_module, "WHOLE_READ_MAX_SAMPLES", 1000)
        assert not AudioFile.open(path, 16000).fits_in_memory
        streamed = rec.logits([path], options)[0]
        t = rec.transcribe([path], options)[0]
    assert streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, atol=1e-5)
    assert t.text == text and t.error is None
    assert abs(t.duration - len(x) / 16000) < 1e-3


def test_below_8khz_is_refused(tiny_bundle, tmp_path):
    low = tmp_path / "low.wav"
    sf.write(low, np.zeros(6000, dtype=np.float32), 6000)
    with pytest.raises(AudioError, match="6000 Hz is below 8000 Hz"):
        load_audio(low, 16000)
    with Recognizer.from_bundle(tiny_bundle) as rec:
        (t,) = rec.transcribe([np.zeros(6000, dtype=np.float32)], sample_rate=6000)
    assert t.error is not None and "below 8000 Hz" in t.error


def test_pipes_and_devices_are_named_not_opened(tmp_path):
    with pytest.raises(AudioError, match="/dev/null: a character device, not an audio file"):
        load_audio("/dev/null", 16000)
    with pytest.raises(AudioError, match="a folder, not an audio file"):
        load_audio(tmp_path, 16000)
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    with pytest.raises(AudioError, match="named pipe"):  # would block forever if it were opened
        AudioFile.open(fifo, 16000)


def test_max_seconds_refuses_longer_inputs_and_names_the_flag(tiny_bundle, capsys):
    clip = default_clips()[1]  # 3.0 s
    assert main(["transcribe", str(tiny_bundle), str(clip), "--max-seconds", "2", "--json"]) == 1
    (row,) = json_rows(capsys.readouterr().out.encode())
    assert "--max-seconds 2" in row["error"]
    assert main(["transcribe", str(tiny_bundle), str(clip), "--max-seconds", "0", "--json"]) == 0  # no limit
    with Recognizer.from_bundle(tiny_bundle) as rec:
        (t,) = rec.transcribe([np.zeros(16000 * 3, dtype=np.float32)], TranscribeOptions(max_seconds=2))
    assert "--max-seconds 2" in t.error


# -- results as they finish -----------------------------------------------------------------------------------


def test_results_are_on_stdout_before_a_later_input_is_killed(tiny_bundle, tmp_path):
    """Three clips, then three hours of audio: the clips' lines come out while the long file still runs."""
    clips = default_clips()[:3]
    long = sparse_wav(tmp_path / "three_hours.wav", 16000, 1, 3 * 3600)
    args = ["transcribe", str(tiny_bundle), *map(str, clips), str(long), "--json", "--batch-size", "1"]
    proc = subprocess.Popen(
        [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True
    )
    lines: queue.Queue[bytes] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + NOT_HOURS
        while len(got) < len(clips):
            try:
                got.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail(f"only {len(got)} results on stdout while the long input runs")
        time.sleep(2)  # the long input's line comes minutes later, not with the others
        assert lines.empty() and proc.poll() is None, "the three-hour input should still be running"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    rows = [json.loads(line) for line in got]
    assert [r["audio"] for r in rows] == [str(c) for c in clips]
    assert all("text" in r for r in rows)


# -- manifests and file names -----------------------------------------------------------------------------------


def test_bad_manifest_lines_get_error_lines_and_the_rest_is_transcribed(tiny_bundle, tmp_path, capsys):
    clips = default_clips()
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(
        b"\n".join(
            [
                json.dumps({"audio_filepath": str(clips[0]), "text": "a"}).encode(),
                b'{"audio_filepath": "x.wav", "text": ',  # cut off
                json.dumps({"audio_filepath": str(clips[1]), "duration": "long"}).encode(),
                b'{"audio_filepath": "caf\xe9.wav"}',  # not UTF-8
                json.dumps({"audio_filepath": str(clips[2])}).encode(),
            ]
        )
        + b"\n"
    )
    broken_csv = tmp_path / "broken.csv"
    broken_csv.write_text("name,text\na.wav,hello\n", encoding="utf-8")  # no audio column: the whole file
    rc = main(["transcribe", str(tiny_bundle), str(manifest), str(broken_csv), str(clips[3]), "--json"])
    captured = capsys.readouterr()
    rows = json_rows(captured.out.encode())
    assert rc == 1
    assert len(rows) == 7
    assert [("text" in r) for r in rows] == [True, False, False, False, True, False, True]
    assert rows[0]["audio"] == str(clips[0]) and rows[4]["audio"] == str(clips[2])
    assert rows[1]["audio"] == f"{manifest} line 2" and "not valid JSON" in rows[1]["error"]
    assert "line 3" in rows[2]["error"] and '"duration"' in rows[2]["error"]
    assert "line 4" in rows[3]["error"] and "not UTF-8" in rows[3]["error"]
    assert rows[5]["audio"] == str(broken_csv) and "no audio column" in rows[5]["error"]
    assert "4 of 7 inputs failed" in captured.err


def test_non_utf8_file_names_are_transcribed_and_written_escaped(tiny_bundle, tmp_path):
    raw = b"caf\xe9.flac"  # Latin-1 bytes: not UTF-8, and Linux allows them in names
    folder = tmp_path / "names"
    folder.mkdir()
    path = folder / os.fsdecode(raw)
    shutil.copy(default_clips()[0], path)
    listing = tmp_path / "list.txt"
    listing.write_bytes(os.fsencode(path) + b"\n")
    args = ["transcribe", str(tiny_bundle), os.fsencode(path), str(folder), str(listing)]

    r = subprocess.run([*CLI, *args, "--json"], capture_output=True, timeout=NOT_HOURS)
    assert r.returncode == 0, r.stderr.decode()
    rows = json_rows(r.stdout)  # valid UTF-8 JSON: the byte is written as \udce9
    assert len(rows) == 3 and all("text" in row for row in rows)
    assert {os.fsencode(row["audio"]) for row in rows} == {os.fsencode(path)}  # the name's bytes come back
    assert b"\\udce9" in r.stdout

    r = subprocess.run([*CLI, *args], capture_output=True, timeout=NOT_HOURS)
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode("utf-8").splitlines()
    assert len(lines) == 3 and all(line.split("\t")[0].endswith("caf\\udce9.flac") for line in lines)


# -- command line ---------------------------------------------------------------------------------------------


def test_lm_alone_selects_the_beam_decoder(tiny_bundle, tmp_path, capsys):
    from xlsr_edge.decoders import BeamOptions

    args = build_parser().parse_args(["transcribe", "b", "a.wav", "--lm", "x.arpa"])
    options = decoder_options(args)
    assert isinstance(options, BeamOptions) and options.lm_path == "x.arpa"
    args = build_parser().parse_args(["transcribe", "b", "a.wav", "--decoder", "greedy", "--lm", "x.arpa"])
    with pytest.raises(Exception, match="--decoder beam"):
        decoder_options(args)

    pytest.importorskip("pyctcdecode")
    pytest.importorskip("kenlm")
    arpa = tmp_path / "x.arpa"  # the smallest model KenLM loads: two unigrams and a bigram
    arpa.write_text(
        "\\data\\\nngram 1=4\nngram 2=1\n\n\\1-grams:\n-1.0\t<unk>\t0\n0\t<s>\t-0.5\n-1.0\t</s>\t0\n"
        "-0.5\tjt\t-0.3\n\n\\2-grams:\n-0.3\t<s> jt\n\n\\end\\\n",
        encoding="utf-8",
    )
    clip = default_clips()[0]
    assert main(["transcribe", str(tiny_bundle), str(clip), "--lm", str(arpa), "--json"]) == 0
    (row,) = json_rows(capsys.readouterr().out.encode())
    assert row["decoder"] == "beam"


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["transcribe", "{bundle}", "{clip}", "--threads", "0"], "--threads"),
        (["transcribe", "{bundle}", "{clip}", "--batch-size", "0"], "--batch-size"),
        (["eval", "{bundle}", "{clip}", "--threads", "-1"], "--threads"),
        (["bench", "{bundle}", "--threads", "1,0"], "--threads"),
    ],
)
def test_counts_below_one_are_one_error_line(tiny_bundle, capsys, argv, flag):
    argv = [a.format(bundle=tiny_bundle, clip=default_clips()[0]) for a in argv]
    with pytest.raises(SystemExit) as info:  # refused while parsing (xlsr_edge.limits), nothing loaded
        main(argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"error: {flag} must be >= 1")


def test_help_shows_defaults_and_choices(capsys):
    (subparsers,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in subparsers.choices.items():  # every subcommand shows the defaults it has
        if any(a.option_strings and a.default not in (None, False, argparse.SUPPRESS) for a in sub._actions):
            assert "(default: " in sub.format_help(), name
    with pytest.raises(SystemExit) as info:
        main(["transcribe", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--batch-size BATCH_SIZE (default: 8)" in text
    assert "{onnxruntime,tensorrt,openvino}" in text
    assert "--max-seconds MAX_SECONDS" in text and "(default: 14400.0)" in text


@pytest.mark.parametrize("command", ["transcribe b a.wav", "eval b m.jsonl", "bench b"])
def test_backend_trt_means_tensorrt(command):
    args = build_parser().parse_args([*command.split(), "--backend", "trt"])
    assert args.backend == (["tensorrt"] if command.startswith("bench") else "tensorrt")  # bench takes a list


def test_closed_stdout_ends_quietly(tiny_bundle, tmp_path):
    """`| head -1`: the reader goes away after one line; no traceback, whatever is left to write."""
    missing = " ".join(f"m{i:04d}.wav" for i in range(3000))  # error lines: more than a pipe buffer holds
    clip = default_clips()[0]
    script = f'"{sys.executable}" -m xlsr_edge transcribe "{tiny_bundle}" "{clip}" {missing} 2>stderr.txt | head -1'
    r = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, timeout=NOT_HOURS)
    assert r.stdout.decode().startswith(f"{clip}\t") and len(r.stdout.splitlines()) == 1
    text = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in text and "Exception ignored" not in text, text
