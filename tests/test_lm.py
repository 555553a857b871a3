"""KenLM language models: building them with lmplz/build_binary and fusing them in the beam decoder."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest

from xlsr_edge.decoders import BeamDecoder, BeamOptions, GreedyDecoder, Vocabulary
from xlsr_edge.decoders.lm_files import read_arpa_unigrams, read_unigrams, unigrams_path_for
from xlsr_edge.errors import XlsrEdgeError
from xlsr_edge.lm.build import ENV_KENLM_BIN, build_lm, find_kenlm_binaries

TOKENS = (
    "<pad>", "<s>", "</s>", "<unk>", "|", "'", "a", "b", "c", "ç", "d", "e", "é", "g", "ğ", "i", "ı", "k",
    "l", "m", "n", "o", "ö", "p", "r", "s", "ş", "t", "u", "ü", "y", "z",
)  # fmt: skip
ID = {token: i for i, token in enumerate(TOKENS)}
LABELS = ["" if t == "<pad>" else " " if t == "|" else t for t in TOKENS]
FRAME_SECONDS = 0.02

CORPUS = [
    "bu kitap çok güzel",
    "Kitap   okumayı öğrendim",  # upper case and repeated spaces are normalized
    "o kitap masada",
    "ben bir kitap aldım",
    "gu\u0308zel bir gün",  # NFD ü -> NFC
    "",
    "BU GÜN ÇOK GÜZEL",
    "o kitap çok eski",
]
WORDS = sorted({w for line in CORPUS for w in line.replace("u\u0308", "ü").lower().split()})


def kenlm_missing_reason() -> str | None:
    try:
        find_kenlm_binaries()
    except XlsrEdgeError as exc:
        return f"KenLM binaries not available ({exc})"
    return None


needs_kenlm = pytest.mark.skipif(kenlm_missing_reason() is not None, reason=str(kenlm_missing_reason()))


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary(TOKENS, blank_id=0, word_delimiter="|", frame_seconds=FRAME_SECONDS)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def lms(corpus, tmp_path_factory) -> dict[str, Path]:
    if kenlm_missing_reason():
        pytest.skip(kenlm_missing_reason())
    out = tmp_path_factory.mktemp("lm")
    return {
        "arpa": build_lm(corpus, out / "lm.arpa", order=3),
        "bin": build_lm(corpus, out / "bin" / "lm.bin", order=3),
        "gz": build_lm(corpus, out / "gz" / "lm.arpa.gz", order=3),
    }


def spell(text: str, seed: int, peak: float = 3.0, noise: float = 1.0) -> np.ndarray:
    """Noisy logits for a sentence: each char for 1-3 frames, blanks in between, '|' between words."""
    rng = np.random.default_rng(seed)
    ids: list[int] = [0]
    for char in text:
        ids += [ID["|" if char == " " else char]] * int(rng.integers(1, 4)) + [0] * int(rng.integers(0, 2))
    logits = rng.normal(0.0, noise, size=(len(ids), len(TOKENS))).astype(np.float32)
    logits[np.arange(len(ids)), ids] += peak
    return logits


def pad_batch(items: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    frames = max(len(x) for x in items)
    batch = np.zeros((len(items), frames, len(TOKENS)), np.float32)
    for i, x in enumerate(items):
        batch[i, : len(x)] = x
    return batch, np.array([len(x) for x in items])


# ------------------------------------------------------------------------------------------------- naming


def test_unigrams_path_convention():
    for name in ("lm.arpa", "lm.arpa.gz", "lm.bin", "lm.binary", "lm.klm", "LM.ARPA"):
        stem = name.split(".")[0]
        assert unigrams_path_for(Path("d") / name) == Path("d") / f"{stem}.unigrams.txt"


# ------------------------------------------------------------------------------------ tools and their errors


def write_fake_tool(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def fake_kenlm(folder: Path, monkeypatch) -> Path:
    """lmplz that writes a one-line 'ARPA file' (enough for .arpa outputs), build_binary that does nothing."""
    folder.mkdir(parents=True, exist_ok=True)
    write_fake_tool(folder, "lmplz", "cat >/dev/null; printf '\\\\data\\\\\\n'")
    write_fake_tool(folder, "build_binary", "exit 0")
    if monkeypatch is not None:
        monkeypatch.setenv(ENV_KENLM_BIN, str(folder))
    return folder


def test_missing_binaries_name_make_kenlm(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_KENLM_BIN, str(tmp_path))
    with pytest.raises(XlsrEdgeError, match="make kenlm"):
        find_kenlm_binaries()


def test_env_var_wins(tmp_path, monkeypatch):
    write_fake_tool(tmp_path, "lmplz", "exit 0")
    write_fake_tool(tmp_path, "build_binary", "exit 0")
    monkeypatch.setenv(ENV_KENLM_BIN, str(tmp_path))
    tools = find_kenlm_binaries()
    assert (tools.lmplz, tools.build_binary) == (tmp_path / "lmplz", tmp_path / "build_binary")


def test_lmplz_failure_reports_stderr(tmp_path, monkeypatch, corpus):
    write_fake_tool(
        tmp_path, "lmplz", "cat >/dev/null; echo 'line one' >&2; echo 'ERROR: disk on fire' >&2; exit 3"
    )
    write_fake_tool(tmp_path, "build_binary", "exit 0")
    monkeypatch.setenv(ENV_KENLM_BIN, str(tmp_path))
    with pytest.raises(XlsrEdgeError, match=r"lmplz failed with exit code 3:[\s\S]*disk on fire"):
        build_lm(corpus, tmp_path / "out.arpa")
    assert not (tmp_path / "out.arpa").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prune": (0, 2, 1)}, "decrease"),
        ({"prune": (1, 1)}, "unigrams"),
        ({"prune": (0, 0, 0, 0)}, "thresholds"),
        ({"prune": -1}, ">= 0"),
    ],
)
def test_build_lm_argument_errors(tmp_path, corpus, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_lm(corpus, tmp_path / "lm.arpa", **kwargs)


@pytest.mark.parametrize("order", [0, 1, 7, True])
def test_build_lm_orders_kenlm_cannot_load(tmp_path, corpus, order):
    with pytest.raises(XlsrEdgeError, match=r"--order must be an integer from 2 to 6"):
        build_lm(corpus, tmp_path / "lm.arpa", order=order)
    assert list(tmp_path.iterdir()) == []


def test_build_lm_bad_paths(tmp_path, corpus):
    with pytest.raises(XlsrEdgeError, match="-o/--output must end in"):
        build_lm(corpus, tmp_path / "lm.txt")
    with pytest.raises(XlsrEdgeError, match="corpus not found"):
        build_lm(tmp_path / "missing.txt", tmp_path / "lm.arpa")


@needs_kenlm
def test_empty_corpus_is_an_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n", encoding="utf-8")
    with pytest.raises(XlsrEdgeError, match="no text"):
        build_lm(empty, tmp_path / "lm.arpa")


# ----------------------------------------------------------------------------------------------- building


@needs_kenlm
def test_build_arpa_bin_gz_and_unigrams(lms):
    kenlm = pytest.importorskip("kenlm")
    arpa_text = lms["arpa"].read_text(encoding="utf-8")
    assert arpa_text.startswith("\\data\\") and "ngram 3=" in arpa_text and "\\end\\" in arpa_text
    for path in lms.values():
        assert read_unigrams(unigrams_path_for(path)) == WORDS
    assert set(WORDS) <= set(read_arpa_unigrams(lms["arpa"])) == set(read_arpa_unigrams(lms["gz"]))
    assert lms["bin"].read_bytes()[:4] != b"\\dat"  # a real KenLM binary, not a renamed ARPA
    sentence = "bu kitap çok güzel"
    scores = [kenlm.Model(str(p)).score(sentence) for p in lms.values()]
    assert scores == pytest.approx([scores[0]] * 3, abs=1e-4)
    model = kenlm.Model(str(lms["arpa"]))
    assert model.score(sentence) > model.score(" ".join(reversed(sentence.split()))) + 1.0


@needs_kenlm
def test_corpus_is_normalized_like_the_training_transcripts(tmp_path):
    """LM words must be spelled as the acoustic model spells them: Turkish İ/I rules, no punctuation."""
    from xlsr_edge.text import normalize_text

    text = tmp_path / "tr.txt"
    lines = ["İSTANBUL'A GİTTİM.", "Işık, Iğdır'da yandı!", "  «Kedi» ve köpek…  "]
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    words = read_unigrams(unigrams_path_for(build_lm(text, tmp_path / "tr.arpa", order=2, language="tr")))
    assert words == sorted({w for line in lines for w in normalize_text(line, "tr").split()})
    assert {"istanbul'a", "gittim", "ışık", "ığdır'da", "kedi"} <= set(words)
    raw = read_unigrams(unigrams_path_for(build_lm(text, tmp_path / "raw.arpa", order=2, normalize=False)))
    assert "GİTTİM." in raw and "gittim" not in raw


@needs_kenlm
def test_prune_drops_singleton_ngrams(corpus, tmp_path):
    def trigram_count(path: Path) -> int:
        line = next(li for li in path.read_text(encoding="utf-8").splitlines() if li.startswith("ngram 3="))
        return int(line.split("=")[1])

    full = build_lm(corpus, tmp_path / "full.arpa", order=3)
    pruned = build_lm(corpus, tmp_path / "pruned.arpa", order=3, prune=(0, 0, 1))
    assert trigram_count(pruned) < trigram_count(full)


# ------------------------------------------------------------------------------------------------ decoding


@needs_kenlm
@pytest.mark.parametrize("kind", ["arpa", "bin", "gz"])
def test_beam_with_lm_equals_pyctcdecode_directly(vocab, lms, kind):
    pyctcdecode = pytest.importorskip("pyctcdecode")
    lm = lms[kind]
    items = [
        spell(s, seed=i, peak=2.0) for i, s in enumerate(["bu kitap çok güzel", "o kitap eski", "bir gün"])
    ]
    batch, lengths = pad_batch(items)
    kwargs = {"beam_width": 24, "beam_prune_logp": -10.0, "token_min_logp": -5.0}
    options = BeamOptions(lm_path=str(lm), alpha=0.7, beta=1.0, **kwargs)
    with BeamDecoder(vocab, options) as decoder:
        assert decoder.unigrams_path == str(unigrams_path_for(lm))  # found next to the LM automatically
        decoded = decoder.decode_batch(batch, lengths)

    unigrams = read_unigrams(unigrams_path_for(lm))
    direct = pyctcdecode.build_ctcdecoder(
        LABELS, kenlm_model_path=str(lm), unigrams=unigrams, alpha=0.7, beta=1.0
    )
    try:
        assert [d.text for d in decoded] == direct.decode_batch(None, items, **kwargs)
        for d, item in zip(decoded, items):
            text, _, _, _, score = direct.decode_beams(item, prune_history=True, **kwargs)[0]
            assert d.text == text and d.score == pytest.approx(score, rel=1e-5)
    finally:
        direct.cleanup()


@needs_kenlm
def test_explicit_unigrams_path(vocab, lms, tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("kitap\ngüzel\n", encoding="utf-8")
    with BeamDecoder(vocab, BeamOptions(lm_path=str(lms["bin"]), unigrams_path=str(words))) as decoder:
        assert decoder.unigrams_path == str(words)
    with pytest.raises(XlsrEdgeError, match="unigrams file not found"):
        BeamDecoder(vocab, BeamOptions(lm_path=str(lms["bin"]), unigrams_path=str(tmp_path / "nope.txt")))
    with pytest.raises(XlsrEdgeError, match="language model not found"):
        BeamDecoder(vocab, BeamOptions(lm_path=str(tmp_path / "nope.bin")))


def misspelled_logits() -> np.ndarray:
    """'bu kit?p' where the vowel is 60 % 'e', 40 % 'a': acoustically 'kitep', but only 'kitap' is a word."""
    frames = "<pad> b u u | <pad> k i i t <pad> ? p p <pad>".split()
    probs = np.full((len(frames), len(TOKENS)), 1e-6)
    for t, token in enumerate(frames):
        if token == "?":
            probs[t, ID["e"]], probs[t, ID["a"]] = 0.6, 0.4
        else:
            probs[t, ID[token]] = 1.0
    return np.log(probs / probs.sum(-1, keepdims=True)).astype(np.float32)


@needs_kenlm
@pytest.mark.parametrize("kind", ["arpa", "bin"])
def test_lm_fixes_a_misspelling(vocab, lms, kind):
    logits = misspelled_logits()
    assert GreedyDecoder(vocab).decode(logits).text == "bu kitep"
    with BeamDecoder(vocab, BeamOptions(beam_width=16)) as plain:
        assert plain.decode(logits).text == "bu kitep"
    with BeamDecoder(vocab, BeamOptions(beam_width=16, lm_path=str(lms[kind]))) as fused:
        out = fused.decode(logits)
    assert out.text == "bu kitap"
    assert [w.word for w in out.words] == ["bu", "kitap"]
    assert all(0 <= w.start < w.end <= len(logits) * FRAME_SECONDS + 1e-9 for w in out.words)


@needs_kenlm
def test_lm_decoding_with_own_pool_equals_serial(vocab, lms):
    items = [
        spell(s, seed=10 + i, peak=2.0) for i, s in enumerate(["bu kitap", "o kitap masada", "güzel bir gün"])
    ]
    batch, lengths = pad_batch(items)
    options = dict(lm_path=str(lms["bin"]), beam_width=16)
    with BeamDecoder(vocab, BeamOptions(**options)) as serial:
        expected = [(d.text, d.words, d.score) for d in serial.decode_batch(batch, lengths)]
    with BeamDecoder(vocab, BeamOptions(num_workers=2, **options)) as pooled:
        got = [(d.text, d.words, d.score) for d in pooled.decode_batch(batch, lengths)]
    assert got == expected


# ---------------------------------------------------------------------------------------- trust (issue 14)


def cli_errors(capfd) -> tuple[list[str], str]:
    err = capfd.readouterr().err
    return [line for line in err.splitlines() if line.startswith("error:")], err


@needs_kenlm
@pytest.mark.parametrize("order", ["1", "7"])
def test_lm_build_cli_refuses_orders_kenlm_cannot_load(corpus, tmp_path, capfd, order):
    from xlsr_edge.cli import main

    try:  # refused while parsing (xlsr_edge.limits) or by the command: exit 2 either way
        code = main(["lm", "build", str(corpus), "-o", str(tmp_path / "lm.arpa"), "--order", order])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    errors, err = cli_errors(capfd)
    assert len(errors) == 1 and "--order" in errors[0] and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@needs_kenlm
def test_lm_build_killed_midway_keeps_the_old_lm_and_the_next_build_cleans_up(corpus, tmp_path, capfd):
    """kill -9 while lmplz runs: the old LM and its unigrams stay byte-identical, the work folder (in the LM's
    own folder, not in /tmp) is removed by the next build, which says so on stderr and shows its stages."""
    import os
    import subprocess
    import sys

    from xlsr_edge.cli import main

    out = tmp_path / "lm" / "lm.bin"
    assert main(["lm", "build", str(corpus), "-o", str(out), "--order", "2"]) == 0
    err = capfd.readouterr().err
    assert "lmplz: 1/5 Counting and sorting n-grams" in err and "build_binary" in err  # progress lines
    old = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    assert set(old) == {"lm.bin", "lm.unigrams.txt", "lm.build.json"}
    tools = tmp_path / "tools"
    tools.mkdir()
    write_fake_tool(tools, "lmplz", "cat >/dev/null; kill -9 $PPID; sleep 5")
    write_fake_tool(tools, "build_binary", "exit 0")
    other = tmp_path / "other.txt"
    other.write_text("ganz andere wörter\n", encoding="utf-8")
    killed = subprocess.run(
        [sys.executable, "-m", "xlsr_edge", "lm", "build", str(other), "-o", str(out), "--overwrite"],
        env={**os.environ, ENV_KENLM_BIN: str(tools)},
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
    )
    assert killed.returncode == -9
    left = sorted(p.name for p in out.parent.iterdir() if p.name not in old)
    assert len(left) == 1 and left[0].startswith(".lm.bin.xlsr-tmp-")
    assert {p.name: p.read_bytes() for p in out.parent.iterdir() if p.name in old} == old
    assert main(["lm", "build", str(corpus), "-o", str(out), "--order", "2", "--overwrite"]) == 0
    err = capfd.readouterr().err
    assert f"removed {out.parent / left[0]}: left behind by an interrupted run" in err
    assert sorted(p.name for p in out.parent.iterdir()) == ["lm.bin", "lm.build.json", "lm.unigrams.txt"]


def test_lm_build_failure_keeps_the_old_lm_and_its_unigrams(corpus, tmp_path, monkeypatch):
    tools = fake_kenlm(tmp_path / "tools", monkeypatch)
    out = tmp_path / "lm.arpa"
    build_lm(corpus, out)
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    write_fake_tool(tools, "lmplz", "cat >/dev/null; echo partial > /dev/stdout; exit 1")
    with pytest.raises(XlsrEdgeError, match="lmplz failed"):
        build_lm(corpus, out, overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == old


def test_lm_build_installs_the_unigrams_before_the_lm(corpus, tmp_path, monkeypatch):
    """Killed between the two renames of a first build: the LM a decoder would open is not there yet, so no LM
    is ever visible without its word list."""
    import os
    import subprocess
    import sys

    fake_kenlm(tmp_path, None)
    out = tmp_path / "out" / "lm.arpa"
    killed = subprocess.run(
        [sys.executable, "-m", "xlsr_edge", "lm", "build", str(corpus), "-o", str(out)],
        env={**os.environ, ENV_KENLM_BIN: str(tmp_path), "XLSR_EDGE_TEST_KILL_AT": "new-in"},
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
    )
    assert killed.returncode == -9, killed.stderr
    assert unigrams_path_for(out).is_file() and not out.exists()


@pytest.fixture(scope="module")
def bad_lms(tmp_path_factory) -> dict[str, Path]:
    import gzip

    d = tmp_path_factory.mktemp("bad-lm")
    files = {
        "garbage.arpa.gz": b"this is not gzip",
        "cut.arpa.gz": gzip.compress(b"\\data\\\nngram 1=3\n" * 50)[:40],
        "empty.arpa": b"",
        "garbage.arpa": b"hello world\n",
        "garbage.bin": bytes(range(256)) * 8,
        "latin1.arpa": b"\\data\\\nngram 1=1\n\n\\1-grams:\n-1.0\tg\xfczel\n\n\\end\\\n",
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    # a valid LM whose unigram file is not UTF-8
    (d / "words").mkdir()
    (d / "words" / "lm.arpa").write_text(
        "\\data\\\nngram 1=3\nngram 2=1\n\n\\1-grams:\n-1.0\t<s>\t-0.5\n-1.0\t</s>\n-1.0\ta\t-0.5\n\n"
        "\\2-grams:\n-0.5\t<s> a\n\n\\end\\\n"
    )
    (d / "words" / "lm.unigrams.txt").write_bytes(b"g\xfczel\n")
    return {p.name: p for p in d.iterdir() if p.is_file()} | {"unigrams": d / "words" / "lm.arpa"}


@pytest.mark.parametrize(
    "name",
    [
        "garbage.arpa.gz",
        "cut.arpa.gz",
        "empty.arpa",
        "garbage.arpa",
        "garbage.bin",
        "latin1.arpa",
        "unigrams",
    ],
)
def test_malformed_lm_is_one_error_line(tiny_bundle, bad_lms, capfd, name):
    pytest.importorskip("pyctcdecode")
    pytest.importorskip("kenlm")
    from xlsr_edge.cli import main
    from xlsr_edge.data import default_clips

    lm = bad_lms[name]
    rc = main(["transcribe", str(tiny_bundle), str(default_clips()[0]), "--decoder", "beam", "--lm", str(lm)])
    errors, err = cli_errors(capfd)
    assert rc == 2 and "Traceback" not in err
    assert len(errors) == 1, err
    shown = unigrams_path_for(lm) if name == "unigrams" else lm
    assert str(shown) in errors[0]  # names the file, in words: no C++ frames, no raw codec message
    assert not any(s in errors[0] for s in (".cc:", "threw", "codec can't decode")), errors[0]
    if name != "latin1.arpa":  # refused before KenLM reads it: the error line is all the user sees
        assert [line for line in err.splitlines() if line.strip()] == errors


# ------------------------------------------------------------ fitting text to the model, OOV rate (issue 18)


def test_text_fitter_maps_what_it_can_and_drops_words_it_cannot_spell():
    from xlsr_edge.lm.fit import TextFitter, model_alphabet

    alphabet = model_alphabet(TOKENS, blank_id=0, word_delimiter="|") - {"'"}  # a model without an apostrophe
    assert "a" in alphabet and not {"|", "<pad>", "<unk>", "'"} & alphabet
    fitter = TextFitter(alphabet)
    assert fitter.line("ankara'dır çok güzel") == "ankaradır çok güzel"  # apostrophe removed, word kept
    assert fitter.line("kâr bitti") == "kar bitti"  # â is not in the vocabulary: its base letter is
    assert fitter.line("1923 yılında kuruldu") == "yılında kuruldu"  # a number has no spelling: dropped
    assert fitter.line("wifi") == ""
    fit = fitter.fit
    assert fit.mapped[("'", "")] == 1 and fit.mapped[("â", "a")] == 1
    assert fit.dropped["1"] == 1 and fit.dropped["w"] == 1 and fit.dropped_words == 2
    assert fit.lines_dropped == 1
    summary = "\n".join(fit.summary())
    assert "'\\'' removed x1" in summary or '"\'" removed x1' in summary
    assert "ankara'dır -> ankaradır" in summary and "dropped 2 words" in summary and "1923" in summary
    # the same text for a model that has the apostrophe keeps it
    assert TextFitter(alphabet | {"'"}).line("ankara'dır") == "ankara'dır"
    # a model with an upper-case vocabulary gets upper-case words
    assert TextFitter(set("ABCDEFGHIJKLMNOPQRSTUVWXYZ")).line("kedi ve köpek") == "KEDI VE KOPEK"


def test_oov_rate_counts_running_words():
    from xlsr_edge.lm.coverage import oov_rate

    report = oov_rate({"bu", "kitap"}, ["bu kitap güzel", "bu ev güzel"])
    assert (report.words, report.oov) == (6, 3)
    assert report.distinct_oov == ("güzel", "ev") and report.rate == pytest.approx(0.5)
    assert "50.0 %" in report.describe("dev.jsonl") and "güzel" in report.describe("dev.jsonl")


# ------------------------------------------------------------------------ tuned weights (issue 18)


@needs_kenlm
def test_tuned_sidecar_is_used_by_default_and_ignored_when_the_lm_changes(vocab, corpus, tmp_path, caplog):
    import json
    import logging

    from xlsr_edge.bundle import sha256_file
    from xlsr_edge.lm.weights import tuned_path_for, with_tuned_weights, write_tuned_weights

    lm = build_lm(corpus, tmp_path / "lm.bin", order=2)
    logits = misspelled_logits()

    def decode(**weights) -> tuple[str, object]:
        options = with_tuned_weights(BeamOptions(beam_width=16, lm_path=str(lm), **weights))
        with BeamDecoder(vocab, options) as decoder:
            return decoder.decode(logits).text, decoder.weights

    text, weights = decode()  # no sidecar: pyctcdecode's defaults, and the LM fixes the misspelling
    assert text == "bu kitap" and weights.source == "pyctcdecode defaults"
    assert (weights.alpha, weights.beta, weights.unk_score_offset) == (0.5, 1.5, -10.0)

    # what `lm tune` records for an LM that does not help: weights that make it decode as without an LM
    path = write_tuned_weights(lm, {"alpha": 0.0, "beta": 0.0, "unk_score_offset": 0.0, "helps": False})
    assert path == tuned_path_for(lm) == tmp_path / "lm.tuned.json"
    assert json.loads(path.read_text(encoding="utf-8"))["lm_sha256"] == sha256_file(lm)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "lm.bin",
        "lm.build.json",
        "lm.tuned.json",
        "lm.unigrams.txt",
    ]
    text, weights = decode()
    assert text == "bu kitep" and weights.from_sidecar and weights.source == "tuned (lm.tuned.json)"
    # the decoder itself reads no sidecar: the caller passes the weights in (BeamOptions.tuned)
    with BeamDecoder(vocab, BeamOptions(beam_width=16, lm_path=str(lm))) as decoder:
        assert decoder.weights.source == "pyctcdecode defaults" and decoder.decode(logits).text == "bu kitap"
    # explicit weights win over the sidecar, field by field
    assert decode(alpha=0.5, beta=1.5, unk_score_offset=-10.0)[0] == "bu kitap"
    _, weights = decode(alpha=0.9)
    assert (weights.alpha, weights.beta) == (0.9, 0.0) and weights.source.startswith("alpha given")

    # the LM is rebuilt: its sha256 no longer matches, so the sidecar is ignored, with one warning
    other = tmp_path / "other.txt"
    other.write_text("bu kitap\nkitap güzel\n", encoding="utf-8")
    build_lm(other, lm, order=2, overwrite=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        text, weights = decode()
        decode()
    assert text == "bu kitap" and weights.source == "pyctcdecode defaults" and not weights.from_sidecar
    said = [r.getMessage() for r in caplog.records if "tuned weights" in r.getMessage()]
    assert len(said) == 1, said
    assert said[0].startswith("warning: ignoring the tuned weights in") and "lm tune" in said[0]


@needs_kenlm
def test_pyctcdecode_logging_is_replaced_by_our_prefixed_warnings(vocab, lms, tmp_path, caplog):
    import logging

    words = tmp_path / "words.txt"  # a word list of another LM: pyctcdecode logs "Only 9.1% of unigrams ..."
    words.write_text("\n".join(["kitap"] + [f"yok{i}" for i in range(10)]) + "\n", encoding="utf-8")
    with caplog.at_level(logging.DEBUG):
        BeamDecoder(vocab, BeamOptions(lm_path=str(lms["bin"]))).close()  # "Only 8 unigrams passed ..."
        BeamDecoder(vocab, BeamOptions(lm_path=str(lms["bin"]), unigrams_path=str(words))).close()
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("pyctcdecode")]
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("xlsr_edge")]
    assert len(ours) == 1 and ours[0].startswith("warning: only 9.1 % of the words in the unigram list")


@needs_kenlm
def test_lm_that_knows_few_of_the_words_heard_warns_once(vocab, lms, caplog):
    import logging

    from xlsr_edge.decoders import beam

    known = ["bu kitap çok güzel", "o kitap masada", "ben bir kitap aldım"] * 3
    glued = ["bukitap çokgüzel", "okitap masada", "benbir kitapaldım"] * 3  # greedy misses word boundaries
    unknown = ["ali ekmek yedi", "kedi süt içti", "anne ayran doldurdu", "dede ders okudu"] * 2
    assert sum(len(s.split()) for s in unknown) >= beam.COVERAGE_MIN_WORDS

    def warnings(sentences, decoders: int = 1) -> list[str]:
        beam._COVERAGE_WARNED.clear()  # one line per LM and process: start afresh
        batch, lengths = pad_batch([spell(s, seed=i, peak=12.0) for i, s in enumerate(sentences)])
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            for _ in range(decoders):
                with BeamDecoder(vocab, BeamOptions(beam_width=8, lm_path=str(lms["bin"]))) as d:
                    d.decode_batch(batch, lengths)
                    d.decode_batch(batch, lengths)
        return [r.getMessage() for r in caplog.records if "knows only" in r.getMessage()]

    said = warnings(unknown, decoders=2)
    assert len(said) == 1, said
    assert said[0].startswith("warning: the language model lm.bin knows only 0 %") and "lm tune" in said[0]
    assert warnings(known) == []
    assert warnings(glued) == []
    assert warnings(unknown[:2]) == []  # too few words heard to judge
