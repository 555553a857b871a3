"""Manifest readers, missing-audio handling, stratified selection and the manifest digest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from xlsr_edge.datasets import (
    Utterance,
    fill_durations,
    from_audio_paths,
    manifest_digest,
    read_manifest,
    select_stratified,
    split_missing,
)
from xlsr_edge.errors import ManifestError, XlsrEdgeError

SR = 16000


def write_wav(path: Path, seconds: float = 0.5, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(str(path), (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SR, format=fmt)
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- formats ----------------------------------------------------------------------------------------


def test_nemo_jsonl(tmp_path: Path) -> None:
    write_wav(tmp_path / "audio" / "a.wav")
    write_wav(tmp_path / "audio" / "b.wav", 0.25)
    m = write_lines(
        tmp_path / "manifest.jsonl",
        [
            "# a comment",
            json.dumps(
                {"audio_filepath": "audio/a.wav", "text": "iki yüz", "duration": 0.5, "entities": ["iki yüz"]}
            ),
            "",
            json.dumps({"audio_filepath": "audio/b.wav", "text": "merhaba"}),
        ],
    )
    utts = read_manifest(m)
    assert [u.raw_path for u in utts] == ["audio/a.wav", "audio/b.wav"]
    assert [u.line for u in utts] == [2, 4]
    assert utts[0].audio == tmp_path / "audio" / "a.wav"
    assert utts[0].text == "iki yüz" and utts[0].duration == 0.5 and utts[0].entities == ("iki yüz",)
    assert utts[1].duration is None and utts[1].entities == ()


def test_json_suffix_is_jsonl_and_absolute_paths_kept(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "elsewhere" / "x.flac", fmt="FLAC")
    (tmp_path / "m").mkdir()
    m = write_lines(tmp_path / "m" / "train.json", [json.dumps({"audio_filepath": str(wav), "text": "x"})])
    (u,) = read_manifest(m)
    assert u.audio == wav and u.raw_path == str(wav)


def test_relative_paths_resolve_against_manifest_folder_not_cwd(tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "data"
    write_wav(data / "clip.wav")
    write_wav(tmp_path / "clip.wav")  # a decoy in the working directory
    m = write_lines(data / "m.jsonl", [json.dumps({"audio_filepath": "clip.wav", "text": "a"})])
    monkeypatch.chdir(tmp_path)
    (u,) = read_manifest(m)
    assert u.audio == data / "clip.wav"
    (u,) = read_manifest(write_lines(data / "list.txt", ["clip.wav"]))
    assert u.audio == data / "clip.wav"


def test_common_voice_tsv_uses_clips_folder_and_clip_durations(tmp_path: Path) -> None:
    write_wav(tmp_path / "clips" / "cv_1.wav")
    write_wav(tmp_path / "cv_2.wav")  # not in clips/: falls back to next to the TSV
    write_lines(tmp_path / "clip_durations.tsv", ["clip\tduration[ms]", "cv_1.wav\t1500"])
    m = write_lines(
        tmp_path / "test.tsv",
        [
            "client_id\tpath\tsentence\tup_votes",
            'abc\tcv_1.wav\t"Hi," he said, "then" left.\t2',
            "def\tcv_2.wav\tİstanbul'a gidiyorum\t1",
        ],
    )
    utts = read_manifest(m)
    assert [u.audio for u in utts] == [tmp_path / "clips" / "cv_1.wav", tmp_path / "cv_2.wav"]
    assert utts[0].text == '"Hi," he said, "then" left.'  # quotes are text in Common Voice TSVs
    assert utts[1].text == "İstanbul'a gidiyorum"
    assert utts[0].duration == pytest.approx(1.5) and utts[1].duration is None
    assert [u.line for u in utts] == [2, 3]


def test_tsv_without_sentence_column_is_rejected(tmp_path: Path) -> None:
    write_wav(tmp_path / "clips" / "a.wav")
    m = write_lines(tmp_path / "x.tsv", ["path\tfoo", "a.wav\tbar"])
    with pytest.raises(ManifestError, match=r"line 1: .*no text column"):
        read_manifest(m)


def test_csv_with_aliases_duration_and_entities(tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav")
    write_wav(tmp_path / "b.wav")
    m = write_lines(
        tmp_path / "eval.csv",
        [
            "audio_filepath,transcript,duration,entities",
            'a.wav,"twenty three, please",0.5,twenty three|Ankara',
            "b.wav,no entities,,",
        ],
    )
    utts = read_manifest(m)
    assert utts[0].text == "twenty three, please" and utts[0].duration == 0.5
    assert utts[0].entities == ("twenty three", "Ankara")
    assert utts[1].duration is None and utts[1].entities == ()
    m2 = write_lines(tmp_path / "eval2.csv", ["path,text,entities", "a.wav,x,one; two"])
    assert read_manifest(m2)[0].entities == ("one", "two")


def test_csv_unquoted_comma_is_an_error(tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav")
    m = write_lines(tmp_path / "e.csv", ["path,text", "a.wav,hello, world"])
    with pytest.raises(ManifestError, match=r"e\.csv line 2: more fields"):
        read_manifest(m)


def test_plain_list(tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav")
    write_wav(tmp_path / "sub dir" / "b.wav")
    m = write_lines(tmp_path / "files.lst", ["# header", "a.wav", "", "  sub dir/b.wav  "])
    utts = read_manifest(m)
    assert [u.raw_path for u in utts] == ["a.wav", "sub dir/b.wav"]
    assert all(u.text is None for u in utts)
    assert utts[1].audio == tmp_path / "sub dir" / "b.wav" and utts[1].line == 4


def test_folder_recursive_sorted_skips_hidden_and_non_audio(tmp_path: Path) -> None:
    write_wav(tmp_path / "b.wav")
    write_wav(tmp_path / "a" / "z.flac", fmt="FLAC")
    write_wav(tmp_path / "c.OGG", fmt="OGG")
    write_wav(tmp_path / "._b.wav")  # macOS resource fork
    (tmp_path / "notes.txt").write_text("x")
    utts = read_manifest(tmp_path)
    assert [u.raw_path for u in utts] == ["a/z.flac", "b.wav", "c.OGG"]
    assert utts[0].audio == tmp_path / "a" / "z.flac" and utts[0].text is None and utts[0].line is None


def test_empty_folder_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no audio files"):
        read_manifest(tmp_path)
    with pytest.raises(ManifestError, match="unknown manifest format"):
        read_manifest(write_lines(tmp_path / "m.yaml", ["a"]))
    with pytest.raises(ManifestError, match="no such manifest"):
        read_manifest(tmp_path / "nope.jsonl")
    with pytest.raises(ManifestError, match="no utterances"):
        read_manifest(write_lines(tmp_path / "empty.jsonl", ["# nothing"]))


# --- errors -----------------------------------------------------------------------------------------


def test_malformed_json_line_names_file_and_line(tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav")
    good = json.dumps({"audio_filepath": "a.wav", "text": "a"})
    m = write_lines(tmp_path / "manifest.jsonl", [good, good, '{"audio_filepath": "a.wav", "text": }'])
    with pytest.raises(ManifestError, match=r"manifest\.jsonl line 3: not valid JSON") as info:
        read_manifest(m)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ('{"text": "no path"}', r'line 2: missing "audio_filepath"'),
        ('["a.wav"]', r"line 2: expected a JSON object"),
        ('{"audio_filepath": "a.wav", "duration": "long"}', r'line 2: "duration" must be'),
        ('{"audio_filepath": "a.wav", "duration": -1}', r'line 2: "duration" must be'),
        ('{"audio_filepath": "a.wav", "text": 5}', r'line 2: "text" must be a string'),
        ('{"audio_filepath": "a.wav", "entities": "x"}', r'line 2: "entities" must be a list'),
        ('{"audio_filepath": "a.wav", "offset": 1.5}', r'line 2: "offset" segments'),
    ],
)
def test_bad_jsonl_fields(tmp_path: Path, line: str, pattern: str) -> None:
    write_wav(tmp_path / "a.wav")
    m = write_lines(tmp_path / "m.jsonl", [json.dumps({"audio_filepath": "a.wav"}), line])
    with pytest.raises(ManifestError, match=pattern):
        read_manifest(m)


def test_missing_audio_names_line_and_path(tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav")
    m = write_lines(
        tmp_path / "m.jsonl",
        [
            json.dumps({"audio_filepath": "a.wav", "text": "a"}),
            json.dumps({"audio_filepath": "gone/b.wav", "text": "b"}),
            json.dumps({"audio_filepath": "gone/c.wav", "text": "c"}),
        ],
    )
    with pytest.raises(ManifestError, match=r"m\.jsonl line 2: audio file not found: gone/b\.wav") as info:
        read_manifest(m)
    assert "1 more missing" in str(info.value)

    utts = read_manifest(m, check_audio=False)
    present, missing = split_missing(utts)
    assert [u.raw_path for u in present] == ["a.wav"]
    assert [(u.line, u.raw_path) for u in missing] == [(2, "gone/b.wav"), (3, "gone/c.wav")]


def test_missing_audio_in_csv_and_cli_paths(tmp_path: Path) -> None:
    m = write_lines(tmp_path / "m.csv", ["path,text", "nope.wav,x"])
    with pytest.raises(ManifestError, match=r"m\.csv line 2: audio file not found: nope\.wav"):
        read_manifest(m)
    with pytest.raises(ManifestError, match="audio file not found: nope.wav"):
        from_audio_paths(["nope.wav"])
    wav = write_wav(tmp_path / "ok.wav")
    (u,) = from_audio_paths([str(wav)])
    assert u.raw_path == str(wav) and u.text is None
    (u,) = read_manifest(wav)  # a single audio file is a one-utterance manifest
    assert u.audio == wav


def test_manifest_error_is_a_user_error() -> None:
    assert issubclass(ManifestError, XlsrEdgeError)


# --- selection and digest ---------------------------------------------------------------------------


def make_utts(durations: list[float]) -> list[Utterance]:
    return [
        Utterance(audio=Path(f"u{i}.wav"), text=f"t{i}", duration=d, raw_path=f"u{i}.wav")
        for i, d in enumerate(durations)
    ]


def test_select_stratified_deterministic_seeded_and_spanning() -> None:
    rng = np.random.default_rng(123)
    durations = list(rng.uniform(0.5, 20.0, size=200))
    utts = make_utts(durations)
    a = select_stratified(utts, 10, seed=0)
    assert a == select_stratified(utts, 10, seed=0)
    assert a != select_stratified(utts, 10, seed=1)
    assert len(a) == 10 and len(set(a)) == 10
    # manifest order
    assert [utts.index(u) for u in a] == sorted(utts.index(u) for u in a)
    # one pick per duration decile: rank of each pick in the sorted durations falls in its own bin
    ranks = np.argsort(np.argsort(durations, kind="stable"), kind="stable")
    bins = sorted(int(ranks[utts.index(u)]) // 20 for u in a)
    assert bins == list(range(10))
    assert min(u.duration for u in a) < np.quantile(durations, 0.1)
    assert max(u.duration for u in a) > np.quantile(durations, 0.9)


def test_select_stratified_all_when_n_large_and_rejects_zero() -> None:
    utts = make_utts([3.0, 1.0, 2.0])
    assert select_stratified(utts, 3) == utts
    assert select_stratified(utts, 10, seed=5) == utts
    with pytest.raises(ValueError):
        select_stratified(utts, 0)


def test_select_stratified_reads_missing_durations(tmp_path: Path) -> None:
    durs = [0.1, 0.2, 0.3, 1.0, 1.1, 1.2]
    utts = [
        Utterance(audio=write_wav(tmp_path / f"{i}.wav", d), text=None, duration=None, raw_path=f"{i}.wav")
        for i, d in enumerate(durs)
    ]
    picked = select_stratified(utts, 2, seed=3)
    assert len(picked) == 2
    assert picked[0].raw_path in {"0.wav", "1.wav", "2.wav"} and picked[1].raw_path in {
        "3.wav",
        "4.wav",
        "5.wav",
    }
    filled = fill_durations(utts)
    assert [u.duration for u in filled] == pytest.approx(durs)


def test_select_stratified_unreadable_audio_is_manifest_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    utts = [Utterance(audio=bad, text=None, duration=None, line=4, raw_path="bad.wav")] + make_utts(
        [1.0, 2.0]
    )
    with pytest.raises(ManifestError, match=r"line 4: cannot read the duration of bad\.wav"):
        select_stratified(utts, 1)


def test_manifest_digest_order_independent_and_content_sensitive() -> None:
    utts = make_utts([1.0, 2.0, 3.0])
    d = manifest_digest(utts)
    assert len(d) == 64 and d == manifest_digest(list(reversed(utts)))
    changed = [
        utts[0],
        utts[1],
        Utterance(audio=Path("u2.wav"), text="other", duration=3.0, raw_path="u2.wav"),
    ]
    assert manifest_digest(changed) != d
    assert manifest_digest(utts[:2]) != d
    # durations and resolved locations do not matter, only (raw_path, text)
    moved = [
        Utterance(audio=Path("/x") / u.raw_path, text=u.text, duration=None, raw_path=u.raw_path)
        for u in utts
    ]
    assert manifest_digest(moved) == d


def test_manifests_module_imports_no_heavy_dependencies() -> None:
    code = (
        "import sys, xlsr_edge.datasets\n"
        "bad = [m for m in ('torch', 'transformers', 'onnx', 'onnxruntime', 'jiwer') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
