"""Greedy and beam CTC decoders against the references they promise to match (HF tokenizer, pyctcdecode)."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from xlsr_edge.decoders import (
    BeamDecoder,
    BeamOptions,
    Decoded,
    GreedyDecoder,
    GreedyOptions,
    Vocabulary,
    make_decoder,
)
from xlsr_edge.decoders.beam import log_softmax, pyctcdecode_labels
from xlsr_edge.errors import XlsrEdgeError

TOKENS = (
    "<pad>", "<s>", "</s>", "<unk>", "|", "'", "a", "b", "c", "ç", "d", "e", "é", "g", "ğ", "i", "ı", "k",
    "l", "m", "n", "o", "ö", "p", "r", "s", "ş", "t", "u", "ü", "y", "z",
)  # fmt: skip
ID = {token: i for i, token in enumerate(TOKENS)}
FRAME_SECONDS = 0.02


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary(TOKENS, blank_id=ID["<pad>"], word_delimiter="|", frame_seconds=FRAME_SECONDS)


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    vocab_file = tmp_path_factory.mktemp("tok") / "vocab.json"
    vocab_file.write_text(json.dumps(dict(ID), ensure_ascii=False), encoding="utf-8")
    tokenizer = transformers.Wav2Vec2CTCTokenizer(str(vocab_file))
    assert tokenizer.pad_token_id == ID["<pad>"] and tokenizer.word_delimiter_token_id == ID["|"]
    return tokenizer


def one_hot_logits(id_rows: list[list[int]], frames: int | None = None, peak: float = 8.0, seed: int = 0):
    """Logits whose argmax is the given ids (rows padded with blank-argmax frames to `frames`)."""
    rng = np.random.default_rng(seed)
    frames = frames or max(len(r) for r in id_rows)
    logits = rng.normal(0.0, 0.5, size=(len(id_rows), frames, len(TOKENS))).astype(np.float32)
    for b, row in enumerate(id_rows):
        full = list(row) + [ID["<pad>"]] * (frames - len(row))
        logits[b, np.arange(frames), full] += peak
    return logits


def run_logits(batch: int, frames: int, seed: int, peak: float = 3.0) -> np.ndarray:
    """Random logits with CTC-like runs: ids held for 1-4 frames, blanks frequent, plus noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(batch):
        row: list[int] = []
        while len(row) < frames:
            token = ID["<pad>"] if rng.random() < 0.35 else int(rng.integers(1, len(TOKENS)))
            row += [token] * int(rng.integers(1, 5))
        rows.append(row[:frames])
    logits = rng.normal(0.0, 1.0, size=(batch, frames, len(TOKENS))).astype(np.float32)
    logits[np.arange(batch)[:, None], np.arange(frames)[None, :], np.array(rows)] += peak
    return logits


def hf_reference(tokenizer, ids: np.ndarray):
    """Text and word spans (seconds) from transformers' own decoding of argmax ids."""
    out = tokenizer.decode(ids.tolist(), output_word_offsets=True)
    words = [
        (w["word"], w["start_offset"] * FRAME_SECONDS, w["end_offset"] * FRAME_SECONDS)
        for w in out.word_offsets
    ]
    return out.text, words


def assert_matches_hf(decoded: list[Decoded], tokenizer, logits: np.ndarray, lengths) -> None:
    ids = logits.argmax(-1)
    expected_texts = tokenizer.batch_decode([ids[b, :n] for b, n in enumerate(lengths)])
    assert [d.text for d in decoded] == expected_texts
    for b, n in enumerate(lengths):
        text, words = hf_reference(tokenizer, ids[b, :n])
        assert decoded[b].text == text
        assert_words(decoded[b].words, words)


def assert_words(words, expected) -> None:
    """Same words, times equal within float tolerance (pytest.approx compares flat sequences only)."""
    assert [w.word for w in words] == [e[0] for e in expected]
    assert [t for w in words for t in (w.start, w.end)] == pytest.approx([t for e in expected for t in e[1:]])


# ---------------------------------------------------------------------------------------------- import hygiene


def test_import_needs_only_numpy():
    """With torch/transformers/pyctcdecode/kenlm blocked, the package imports and greedy decoding works."""
    code = textwrap.dedent(
        """
        import sys
        BLOCKED = ("torch", "transformers", "pyctcdecode", "kenlm", "onnxruntime")
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("blocked " + name)
        sys.meta_path.insert(0, Block())
        import numpy as np
        import xlsr_edge.decoders as d
        from xlsr_edge.errors import MissingDependencyError
        vocab = d.Vocabulary(("<pad>", "|", "a", "b"), blank_id=0)
        dec = d.make_decoder(vocab, d.GreedyOptions())
        logits = np.eye(4, dtype=np.float32)[[2, 2, 0, 1, 3]]
        assert dec.decode(logits).text == "a b", dec.decode(logits)
        d.BeamOptions(beam_width=8, hotwords=("ab",))
        try:
            d.BeamDecoder(vocab, d.BeamOptions())
        except MissingDependencyError as exc:
            assert "xlsr-edge[lm]" in str(exc), exc
        else:
            raise AssertionError("BeamDecoder built without pyctcdecode")
        print("OK")
        """
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stderr


# ------------------------------------------------------------------------------------------------------- greedy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_matches_hf_on_random_logits(vocab, hf_tokenizer, seed):
    rng = np.random.default_rng(seed)
    flat = rng.normal(size=(3, 150, len(TOKENS))).astype(np.float32)  # argmax changes almost every frame
    runs = run_logits(4, 250, seed)  # repeats, blanks between repeats, delimiters
    for logits in (flat, runs):
        decoded = GreedyDecoder(vocab).decode_batch(logits)
        assert_matches_hf(decoded, hf_tokenizer, logits, [logits.shape[1]] * logits.shape[0])


CRAFTED = [
    "| | a a <pad> a | | b <pad> b b | |",  # leading/trailing delimiters; blank splits a repeat
    "a | <pad> | b",  # two delimiters separated by a blank: HF keeps two spaces
    "ç ç a ğ | ş ı <pad> ı | ö ü é é",  # non-ASCII letters, repeats collapse
    "k <unk> <unk> a | <s> </s> t",  # special tokens are emitted literally
    "' a | b '",
    "<pad> <pad> <pad>",  # only blanks
    "|",  # only a delimiter
    "a",
]


@pytest.mark.parametrize("sequence", CRAFTED)
def test_greedy_matches_hf_on_crafted_sequences(vocab, hf_tokenizer, sequence):
    ids = [ID[t] for t in sequence.split()]
    logits = one_hot_logits([ids])
    decoded = GreedyDecoder(vocab).decode_batch(logits)
    assert_matches_hf(decoded, hf_tokenizer, logits, [len(ids)])


def test_greedy_crafted_expectations(vocab):
    """Spell out the HF conventions the greedy decoder reproduces."""
    dec = GreedyDecoder(vocab)
    text = lambda seq: dec.decode(one_hot_logits([[ID[t] for t in seq.split()]])[0]).text  # noqa: E731
    assert text("a a <pad> a") == "aa"
    assert text("| a | <pad> | b |") == "a  b"
    assert text("k <unk> t") == "k<unk>t"
    assert text("<pad>") == ""


def test_greedy_respects_lengths(vocab, hf_tokenizer):
    logits = run_logits(4, 120, seed=7)
    lengths = np.array([120, 37, 0, 90])
    decoded = GreedyDecoder(vocab).decode_batch(logits, lengths)
    assert_matches_hf(decoded, hf_tokenizer, logits, lengths)
    assert decoded[2] == Decoded("")
    # frames past the length change nothing
    garbage = logits.copy()
    garbage[1, 37:] = np.random.default_rng(1).normal(size=garbage[1, 37:].shape) * 10
    assert GreedyDecoder(vocab).decode_batch(garbage, lengths)[1] == decoded[1]
    assert GreedyDecoder(vocab).decode(logits[1, :37]) == decoded[1]


def test_greedy_timestamps_are_monotonic_and_within_audio(vocab):
    logits = run_logits(5, 300, seed=11)
    lengths = np.array([300, 250, 123, 64, 5])
    for decoded, n in zip(GreedyDecoder(vocab).decode_batch(logits, lengths), lengths):
        assert [w.word for w in decoded.words] == decoded.text.split()
        previous_end = 0.0
        for word in decoded.words:
            assert previous_end <= word.start < word.end <= n * FRAME_SECONDS + 1e-9
            previous_end = word.end


def test_greedy_word_times_exact(vocab):
    #                 0    1    2      3    4    5    6    7      8    9
    seq = ["<pad>", "k", "k", "<pad>", "a", "|", "|", "t", "<pad>", "<pad>"]
    decoded = GreedyDecoder(vocab).decode(one_hot_logits([[ID[t] for t in seq]])[0])
    assert decoded.text == "ka t"
    assert_words(
        decoded.words,
        [("ka", 1 * FRAME_SECONDS, 5 * FRAME_SECONDS), ("t", 7 * FRAME_SECONDS, 8 * FRAME_SECONDS)],
    )


@pytest.mark.parametrize(
    ("shape", "lengths", "message"),
    [
        ((2, 10), None, r"\[batch, frames, vocab\]"),
        ((1, 10, 5), None, "classes"),
        ((2, 10, len(TOKENS)), np.array([10, 11]), "lengths must lie"),
        ((2, 10, len(TOKENS)), np.array([10]), "one per batch item"),
        ((2, 10, len(TOKENS)), np.array([1.0, 2.0]), "integers"),
    ],
)
def test_bad_batches_raise(vocab, shape, lengths, message):
    with pytest.raises(ValueError, match=message):
        GreedyDecoder(vocab).decode_batch(np.zeros(shape, np.float32), lengths)


# --------------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beam_width": 0}, "beam_width"),
        ({"beam_width": 2.5}, "beam_width"),
        ({"beam_width": True}, "beam_width"),
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"beta": "1"}, "beta"),
        ({"lm_path": "model.txt"}, "lm_path"),
        ({"lm_path": ""}, "lm_path"),
        ({"unigrams_path": "words.txt"}, "needs lm_path"),
        ({"hotwords": "kedi"}, "not one string"),
        ({"hotwords": ("kedi", " ")}, "non-empty"),
        ({"hotwords": ("kedi", 3)}, "non-empty string"),
        ({"hotword_weight": float("inf")}, "hotword_weight"),
        ({"num_workers": -1}, "num_workers"),
        ({"beam_prune_logp": 1.0}, "beam_prune_logp"),
        ({"token_min_logp": 0.5}, "token_min_logp"),
        ({"unk_score_offset": 1.0}, "unk_score_offset"),
        ({"unk_score_offset": float("-inf")}, "unk_score_offset"),
        ({"unk_score_offset": "-5"}, "unk_score_offset"),
    ],
)
def test_beam_options_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BeamOptions(**kwargs)


def test_beam_options_normalize_and_freeze():
    options = BeamOptions(lm_path=Path("x/lm.bin"), hotwords=[" kedi ", "ali veli"], alpha=1, beam_width=8)
    assert options.lm_path == str(Path("x/lm.bin"))
    assert options.hotwords == ("kedi", "ali veli")
    assert isinstance(options.alpha, float)
    # weights left out are None: the LM's tuned sidecar, else pyctcdecode's defaults (decoders.options.resolve_weights)
    assert (options.beta, options.unk_score_offset) == (None, None)
    assert isinstance(BeamOptions(unk_score_offset=-3).unk_score_offset, float)
    with pytest.raises(AttributeError):
        options.beam_width = 3  # type: ignore[misc]
    assert GreedyOptions() == GreedyOptions()


def test_make_decoder_dispatch(vocab):
    assert isinstance(make_decoder(vocab, GreedyOptions()), GreedyDecoder)
    with make_decoder(vocab, BeamOptions(beam_width=4)) as beam:
        assert isinstance(beam, BeamDecoder)
    with pytest.raises(TypeError):
        make_decoder(vocab, {"beam_width": 4})


# ------------------------------------------------------------------------------------------------------ beam


def reference_labels() -> list[str]:
    return ["" if t == "<pad>" else " " if t == "|" else t for t in TOKENS]


def test_pyctcdecode_labels(vocab):
    assert pyctcdecode_labels(vocab) == reference_labels()


def test_log_softmax_is_stable_and_normalized():
    x = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]], dtype=np.float32)
    out = log_softmax(x)
    assert out.dtype == np.float32 and np.isfinite(out[:, :2]).all()
    assert np.allclose(np.exp(out).sum(-1), 1.0)
    assert log_softmax(x.astype(np.float16)).dtype == np.float32


@pytest.fixture(scope="module")
def pyctcdecode():
    return pytest.importorskip("pyctcdecode")


@pytest.mark.parametrize("seed", [0, 1])
def test_beam_equals_pyctcdecode_directly(vocab, pyctcdecode, seed):
    logits = run_logits(4, 80, seed=seed, peak=2.5)
    lengths = np.array([80, 61, 33, 80])
    kwargs = {"beam_width": 16, "beam_prune_logp": -10.0, "token_min_logp": -5.0}
    with BeamDecoder(vocab, BeamOptions(**kwargs)) as decoder:
        decoded = decoder.decode_batch(logits, lengths)

    direct = pyctcdecode.build_ctcdecoder(reference_labels())
    items = [logits[b, :n] for b, n in enumerate(lengths)]
    assert [d.text for d in decoded] == direct.decode_batch(None, items, **kwargs)
    for d, item, n in zip(decoded, items, lengths):
        text, _, frames, _, score = direct.decode_beams(item, prune_history=True, **kwargs)[0]
        assert d.text == text and d.score == pytest.approx(score, rel=1e-5)
        expected = [(w, max(s, 0) * FRAME_SECONDS, min(e, n) * FRAME_SECONDS) for w, (s, e) in frames]
        assert_words(d.words, expected)
        assert all(0 <= w.start <= w.end <= n * FRAME_SECONDS + 1e-9 for w in d.words)


def test_beam_without_lm_agrees_with_greedy_on_confident_logits(vocab):
    ids = [[ID[t] for t in "k k <pad> e d | | <pad> i ş | ç ö ğ".split()]]
    logits = one_hot_logits(ids, peak=12.0)
    with BeamDecoder(vocab, BeamOptions(beam_width=8)) as decoder:
        assert decoder.decode(logits[0]).text == GreedyDecoder(vocab).decode(logits[0]).text == "ked iş çöğ"


def test_beam_unk_becomes_pyctcdecode_symbol(vocab):
    logits = one_hot_logits([[ID["k"], ID["<unk>"], ID["t"]]], peak=12.0)
    with BeamDecoder(vocab, BeamOptions(beam_width=4)) as decoder:
        assert decoder.decode(logits[0]).text == "k⁇t"


def test_beam_zero_length_item(vocab):
    logits = run_logits(2, 30, seed=3)
    with BeamDecoder(vocab, BeamOptions(beam_width=4)) as decoder:
        out = decoder.decode_batch(logits, np.array([0, 30]))
    assert out[0] == Decoded("") and out[1].text


def test_beam_rejects_labels_pyctcdecode_would_reinterpret():
    with pytest.raises(XlsrEdgeError, match="same decoder label"):
        BeamDecoder(Vocabulary(("<pad>", "|", " ", "a"), blank_id=0), BeamOptions())
    with pytest.raises(XlsrEdgeError, match="reinterpret"):  # a second <pad>-like token would become a blank
        BeamDecoder(Vocabulary(("_", "|", "[PAD]", "a"), blank_id=0), BeamOptions())


def ambiguous_word_logits() -> np.ndarray:
    """'k ? d i' where the vowel frame is 60 % 'a', 40 % 'e': 'kadi' wins acoustically, 'kedi' is close."""
    frames = ["k", "k", "<pad>", None, "<pad>", "d", "d", "<pad>", "i", "i"]
    probs = np.full((len(frames), len(TOKENS)), 1e-6)
    for t, token in enumerate(frames):
        if token is None:
            probs[t, ID["a"]], probs[t, ID["e"]] = 0.6, 0.4
        else:
            probs[t, ID[token]] = 1.0
    return np.log(probs / probs.sum(-1, keepdims=True)).astype(np.float32)


def test_hotword_changes_the_ambiguous_word(vocab):
    logits = ambiguous_word_logits()
    assert GreedyDecoder(vocab).decode(logits).text == "kadi"
    with BeamDecoder(vocab, BeamOptions(beam_width=10)) as plain:
        assert plain.decode(logits).text == "kadi"
    with BeamDecoder(vocab, BeamOptions(beam_width=10, hotwords=("kedi",))) as boosted:
        hot = boosted.decode(logits)
    assert hot.text == "kedi"
    assert hot.words[0].word == "kedi"


# ------------------------------------------------------------------------------------------------------ pools


def as_tuples(decoded: list[Decoded]):
    return [(d.text, d.words, round(d.score, 6)) for d in decoded]


def test_pool_paths_equal_serial(vocab):
    logits = run_logits(6, 60, seed=5, peak=2.5)
    lengths = np.array([60, 50, 40, 30, 20, 10])
    options = BeamOptions(beam_width=8, hotwords=("kedi",))
    with BeamDecoder(vocab, options) as serial:
        expected = as_tuples(serial.decode_batch(logits, lengths))

    before = set(multiprocessing.active_children())
    own = BeamDecoder(vocab, BeamOptions(beam_width=8, hotwords=("kedi",), num_workers=2))
    assert len(set(multiprocessing.active_children()) - before) == 2
    assert as_tuples(own.decode_batch(logits, lengths)) == expected
    own.close()
    assert set(multiprocessing.active_children()) - before == set()

    # caller pools: forked before the decoder existed (workers rebuild it), and spawned
    for method in ("fork", "spawn"):
        with multiprocessing.get_context(method).Pool(2) as pool:
            with BeamDecoder(vocab, options, pool=pool) as decoder:
                assert as_tuples(decoder.decode_batch(logits, lengths)) == expected, method
            # a caller's pool stays usable after the decoder closes
            assert pool.map(abs, [-1, -2]) == [1, 2]


def test_closed_decoder_refuses_work(vocab):
    from xlsr_edge.decoders import beam

    decoder = BeamDecoder(vocab, BeamOptions(beam_width=4))
    assert decoder._key in beam._DECODERS
    decoder.close()
    decoder.close()  # idempotent
    assert decoder._key not in beam._DECODERS  # the pyctcdecode decoder (and its LM) are released
    with pytest.raises(XlsrEdgeError, match="closed"):
        decoder.decode(run_logits(1, 10, seed=0)[0])
