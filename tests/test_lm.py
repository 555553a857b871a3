"""KenLM language models: building them with lmplz/build_binary and fusing them in the beam decoder."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest

from xlsr_edge.decoders import BeamDecoder, BeamOptions, GreedyDecoder, Vocabulary
from xlsr_edge.decoders.lm import (
    ENV_KENLM_BIN,
    build_lm,
    find_kenlm_binaries,
    read_arpa_unigrams,
    read_unigrams,
    unigrams_path_for,
)
from xlsr_edge.errors import XlsrEdgeError

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
        ({"order": 0}, "order"),
        ({"prune": (0, 2, 1)}, "decrease"),
        ({"prune": (1, 1)}, "unigrams"),
        ({"prune": (0, 0, 0, 0)}, "thresholds"),
        ({"prune": -1}, ">= 0"),
    ],
)
def test_build_lm_argument_errors(tmp_path, corpus, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_lm(corpus, tmp_path / "lm.arpa", **kwargs)


def test_build_lm_bad_paths(tmp_path, corpus):
    with pytest.raises(ValueError, match="out_path"):
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
