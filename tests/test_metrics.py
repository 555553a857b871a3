"""Text normalization, WER/CER against jiwer, entity micro-WER, per-utterance rows and confusions."""

from __future__ import annotations

import jiwer
import pytest

from xlsr_edge.errors import XlsrEdgeError
from xlsr_edge.measure.metrics import (
    NORMALIZATION_DESCRIPTION,
    ErrorRates,
    char_confusions,
    error_rates,
    micro_wer,
    normalize_text,
    per_utterance,
)

# --- normalize_text ---------------------------------------------------------------------------------


def test_turkish_dotted_and_dotless_i() -> None:
    assert normalize_text("İSTANBUL", "tr") == "istanbul"
    assert normalize_text("IŞIK", "tr") == "ışık"
    assert normalize_text("IĞDIR İLİ", "tr-TR") == "ığdır ili"
    assert normalize_text("İzmir", "az") == "izmir"
    # "I" + COMBINING DOT ABOVE composes to İ under NFC, then lower-cases to plain i
    assert normalize_text("I\u0307STANBUL", "tr") == "istanbul"
    # a stray i + U+0307 left by naive lower-casing is repaired for Turkish
    assert normalize_text("i\u0307stanbul", "tr") == "istanbul"


def test_non_turkish_uses_plain_lower() -> None:
    assert normalize_text("IŞIK") == "işik"
    assert normalize_text("İSTANBUL") == "i\u0307stanbul"  # documented: str.lower() keeps the dot
    assert normalize_text("Straße") == "straße"  # lower(), not casefold()


def test_combining_marks_normalized_to_nfc() -> None:
    assert normalize_text("caf" + "e\u0301") == normalize_text("café") == "café"
    assert normalize_text("E\u0301TE\u0301") == "été"
    assert len(normalize_text("e\u0301")) == 1


def test_punctuation_apostrophes_and_whitespace() -> None:
    assert normalize_text("Türkiye'nin başkenti, Ankara!", "tr") == "türkiye'nin başkenti ankara"
    assert normalize_text("Türkiye’nin") == "türkiye'nin"  # typographic apostrophe unified
    assert normalize_text("'quoted' words") == "quoted words"  # edge apostrophes are quotes
    assert normalize_text("well-known  3.5\t«ok»\n…") == "well known 3 5 ok"
    assert normalize_text("+ $3 €") == "+ $3 €"  # symbols (S*) are not punctuation
    assert normalize_text("50% a&b @x #1 a/b") == "50 a b x 1 a b"  # but % & @ # / are (Po)
    assert normalize_text("  ,  ") == ""


@pytest.mark.parametrize(
    "text", ["İSTANBUL'A, git!", "e\u0301te\u0301 -- 'x'", "IŞIK’ı gördüm?", "a ' b", "don''t"]
)
@pytest.mark.parametrize("language", [None, "tr"])
def test_normalize_is_idempotent(text: str, language: str | None) -> None:
    once = normalize_text(text, language)
    assert normalize_text(once, language) == once


def test_description_mentions_the_rules() -> None:
    for word in ("NFC", "lower", "punctuation", "apostrophe", "empty"):
        assert word.lower() in NORMALIZATION_DESCRIPTION.lower()


# --- error_rates ------------------------------------------------------------------------------------

REFS = ["the cat sat on the mat", "hello world", "a b c d", "one two three"]
HYPS = ["the cat sit on mat", "hello there world", "", "one two three"]


def test_error_rates_match_jiwer() -> None:
    r = error_rates(REFS, HYPS)
    assert isinstance(r, ErrorRates)
    assert r.wer == pytest.approx(jiwer.wer(REFS, HYPS))
    assert r.cer == pytest.approx(jiwer.cer(REFS, HYPS))
    out = jiwer.process_words(REFS, HYPS)
    assert (r.substitutions, r.deletions, r.insertions, r.hits) == (
        out.substitutions,
        out.deletions,
        out.insertions,
        out.hits,
    )
    assert r.ref_words == sum(len(x.split()) for x in REFS)
    assert r.ref_chars == sum(len(x) for x in REFS)  # spaces count as characters
    assert r.utterances == 4 and r.skipped_empty_refs == 0
    assert r.word_errors == r.substitutions + r.deletions + r.insertions


def test_empty_hypothesis_is_all_deletions() -> None:
    r = error_rates(["a b c d"], [""])
    assert r.wer == 1.0 and r.deletions == 4 and r.insertions == 0
    assert r.cer == 1.0 and r.char_deletions == 7


def test_empty_references_are_skipped_and_counted() -> None:
    r = error_rates(REFS + ["", " ... "], HYPS + ["noise words", "more"])
    assert r.skipped_empty_refs == 2 and r.utterances == 4
    assert r.wer == pytest.approx(jiwer.wer(REFS, HYPS))
    assert r.cer == pytest.approx(jiwer.cer(REFS, HYPS))
    with pytest.raises(XlsrEdgeError, match="no reference transcripts"):
        error_rates(["", "!"], ["x", "y"])


def test_error_rates_normalize_case_and_punctuation() -> None:
    r = error_rates(["Merhaba, DÜNYA!"], ["merhaba dünya"], language="tr")
    assert r.wer == 0.0 and r.cer == 0.0
    raw = error_rates(["Merhaba, DÜNYA!"], ["merhaba dünya"], normalize=False)
    assert raw.wer == pytest.approx(jiwer.wer("Merhaba, DÜNYA!", "merhaba dünya")) and raw.wer > 0
    # Turkish casing matters: with plain lower() "IŞIK" != "ışık"
    assert error_rates(["IŞIK"], ["ışık"], language="tr").wer == 0.0
    assert error_rates(["IŞIK"], ["ışık"]).wer == 1.0


def test_corpus_level_not_mean_of_utterances() -> None:
    refs, hyps = ["a", "a b c d e f g h i j"], ["b", "a b c d e f g h i j"]
    r = error_rates(refs, hyps)
    assert r.wer == pytest.approx(1 / 11)  # mean of utterance WERs would be 0.5


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        error_rates(["a"], ["a", "b"])


# --- per_utterance / confusions ---------------------------------------------------------------------


def test_per_utterance_rows_match_jiwer() -> None:
    rows = per_utterance(REFS + [""], HYPS + ["x y"])
    assert [row["index"] for row in rows] == list(range(5))
    for row, ref, hyp in zip(rows[:4], REFS, HYPS, strict=True):
        assert row["wer"] == pytest.approx(jiwer.wer(ref, hyp))
        assert row["cer"] == pytest.approx(jiwer.cer(ref, hyp))
        assert row["ref_words"] == len(ref.split()) and row["ref_chars"] == len(ref)
        assert row["skipped"] is False
    assert rows[2]["deletions"] == 4 and rows[2]["word_errors"] == 4
    assert rows[1]["insertions"] == 1 and rows[0]["substitutions"] == 1 and rows[0]["deletions"] == 1
    assert rows[4]["skipped"] is True and rows[4]["wer"] is None and rows[4]["insertions"] == 2
    total = error_rates(REFS, HYPS)
    assert sum(r["word_errors"] for r in rows[:4]) == total.word_errors
    assert sum(r["char_errors"] for r in rows[:4]) == total.char_errors


def test_char_confusions() -> None:
    conf = char_confusions(["ışık ışık", "kedi"], ["isik isik", "kedim"], top=None)
    assert conf[0] == ("ı", "i", 4)
    assert ("ş", "s", 2) in conf
    assert ("", "m", 1) in conf
    assert char_confusions(["abc"], ["ab"]) == [("c", "", 1)]
    assert len(char_confusions(["abcdef"], ["uvwxyz"], top=3)) == 3
    total = sum(n for _, _, n in conf)
    assert total == error_rates(["ışık ışık", "kedi"], ["isik isik", "kedim"]).char_errors


# --- micro-WER --------------------------------------------------------------------------------------


def test_micro_wer_only_entities_differ() -> None:
    refs = ["i paid twenty dollars to ali yesterday", "call me at five"]
    hyps = ["i paid forty dollars to alice yesterday", "call me at nine"]
    ents = [["twenty", "Ali"], ["five"]]
    assert micro_wer(refs, hyps, ents) == 1.0
    assert error_rates(refs, hyps).wer == pytest.approx(3 / 11)


def test_micro_wer_only_non_entities_differ() -> None:
    refs = ["i paid twenty dollars to ali yesterday"]
    hyps = ["you spent twenty euros for ali today and"]
    assert micro_wer(refs, hyps, [["twenty", "ali"]]) == 0.0
    assert error_rates(refs, hyps).wer > 0.5


def test_micro_wer_multiword_entity_deletion_and_insertions_ignored() -> None:
    refs = ["we flew to new york on monday", "new car"]
    hyps = ["we flew to new on uh monday", "new car"]
    # "new york" marks two positions in utterance 1; "new" in "new car" is not the entity
    assert micro_wer(refs, hyps, [["New York"], ["New York"]]) == pytest.approx(1 / 2)


def test_micro_wer_counts_every_occurrence() -> None:
    # both occurrences of "two" are entity words; the second one is misrecognized
    assert micro_wer(["two plus two"], ["two plus three"], [["two"]]) == pytest.approx(1 / 2)


def test_micro_wer_none_without_entities_and_normalizes() -> None:
    assert micro_wer(["a b"], ["a c"], [[]]) is None
    assert micro_wer(["a b"], ["a c"], [["zzz"]]) is None  # entity absent from the reference
    assert micro_wer(["İki yüz, lütfen"], ["iki yüz lütfen"], [["İKİ YÜZ"]], language="tr") == 0.0
    with pytest.raises(ValueError):
        micro_wer(["a"], ["a"], [])


def test_metrics_module_imports_jiwer_lazily() -> None:
    import subprocess
    import sys

    code = (
        "import sys, xlsr_edge.measure.metrics as m\n"
        "assert 'jiwer' not in sys.modules\n"
        "m.normalize_text('A')\n"
        "assert 'jiwer' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
