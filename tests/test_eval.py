"""`xlsr-edge eval`: WER/CER equal to jiwer's, micro-WER, missing/failed audio, bad manifests, report files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jiwer
import numpy as np
import pytest

from xlsr_edge.bundle import read_manifest as read_bundle
from xlsr_edge.cli import main
from xlsr_edge.data import CLIPS_DIR, default_clips
from xlsr_edge.decoders import Decoded, Decoder
from xlsr_edge.measure.evaluation import EvalOptions, evaluate
from xlsr_edge.measure.metrics import NORMALIZATION_DESCRIPTION, char_confusions, normalize_text
from xlsr_edge.runtime import Recognizer
from xlsr_edge.runtime.audio import load_audio

CLIPS = default_clips()  # tr_1..tr_4, of four different lengths


class ScriptedDecoder(Decoder):
    """Returns a fixed hypothesis per utterance, recognised by its number of frames (the clips differ)."""

    name = "scripted"

    def __init__(self, by_frames: dict[int, str]) -> None:
        self.by_frames = by_frames

    def decode_batch(self, logits, lengths=None):
        lengths = [logits.shape[1]] * len(logits) if lengths is None else lengths
        return [Decoded(self.by_frames[int(n)]) for n in lengths]


def scripted(bundle: Path, hyps: list[str]) -> ScriptedDecoder:
    info = read_bundle(bundle).model
    return ScriptedDecoder({info.frames_for(len(load_audio(c, 16000))): h for c, h in zip(CLIPS, hyps)})


def write_manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def clip_rows(texts: list[str], entities: list[list[str]] | None = None) -> list[dict]:
    rows = []
    for i, (clip, text) in enumerate(zip(CLIPS, texts)):
        row = {"audio_filepath": str(clip), "text": text}
        if entities is not None:
            row["entities"] = entities[i]
        rows.append(row)
    return rows


def run_json(capsys, *argv) -> tuple[int, dict, str]:
    rc = main(["eval", *map(str, argv), "--json"])
    out = capsys.readouterr()
    return rc, (json.loads(out.out) if out.out.strip() else {}), out.err


def test_cli_wer_cer_equal_jiwer_on_the_recognizer_output(tiny_bundle, capsys):
    """Real greedy transcripts of the tiny model: the CLI's corpus WER/CER are jiwer's on the normalized pairs."""
    manifest = CLIPS_DIR / "clips.jsonl"
    refs = [json.loads(line)["text"] for line in manifest.read_text(encoding="utf-8").splitlines()]
    with Recognizer.from_bundle(tiny_bundle) as rec:
        hyps = [t.text for t in rec.transcribe(CLIPS)]
    rc, data, _ = run_json(capsys, tiny_bundle, manifest)
    assert rc == 0
    r = [normalize_text(x) for x in refs]
    h = [normalize_text(x) for x in hyps]
    assert data["wer"] == pytest.approx(jiwer.wer(r, h), abs=1e-12)
    assert data["cer"] == pytest.approx(jiwer.cer(r, h), abs=1e-12)
    assert data["utterances"] == 4 and data["decoder"] == "greedy" and data["bundle"] == str(tiny_bundle)
    assert data["audio_seconds"] == pytest.approx(sum(len(load_audio(c, 16000)) for c in CLIPS) / 16000, 1e-3)
    assert data["rtf"] > 0 and data["micro_wer"] is None
    assert data["normalization"] == NORMALIZATION_DESCRIPTION
    assert data["missing_audio"] == 0 and data["failed_audio"] == 0


def test_scripted_hypotheses_unicode_empty_hyp_and_empty_ref(tiny_bundle, tmp_path):
    """Hand-made pairs: Turkish İ/I with --language tr, NFD input, an empty hypothesis, an empty reference."""
    refs = ["İstanbul'a GİDİYORUM.", "cafe\u0301 açık", "", "ışık yandı"]
    hyps = ["istanbul'a gidiyorum", "café acik", "bir şey", ""]
    manifest = write_manifest(tmp_path / "m.jsonl", clip_rows(refs))
    res = evaluate(tiny_bundle, manifest, EvalOptions(decoder=scripted(tiny_bundle, hyps), language="tr"))
    r = [normalize_text(x, "tr") for x in refs]
    h = [normalize_text(x, "tr") for x in hyps]
    keep = [i for i, x in enumerate(r) if x]  # the empty reference is skipped (documented in metrics)
    rr, hh = [r[i] for i in keep], [h[i] for i in keep]
    assert r[0] == "istanbul'a gidiyorum"  # Turkish lower-casing: no combining dot left behind
    assert res.rates.wer == pytest.approx(jiwer.wer(rr, hh))
    assert res.rates.cer == pytest.approx(jiwer.cer(rr, hh))
    assert res.rates.wer == pytest.approx((0 + 1 + 2) / (2 + 2 + 2))  # açık->acik; empty hyp: 2 deletions
    assert res.rates.utterances == 3 and res.rates.skipped_empty_refs == 1
    assert res.decoder == "scripted"


def test_micro_wer_only_entity_words_differ(tiny_bundle, tmp_path, capsys):
    refs = [
        "call 112 now",
        "Ahmet lives in Ankara",
        "bugün hava güzel",  # no entity
        "the year 1923 and Atatürk",
    ]
    hyps = ["call 911 now", "Mehmet lives in Ankara", "bugün hava güzel", "the year 1924 and atatürk"]
    entities = [["112"], ["Ahmet", "Ankara"], [], ["1923", "Atatürk"]]
    manifest = write_manifest(tmp_path / "m.jsonl", clip_rows(refs, entities))
    res = evaluate(tiny_bundle, manifest, EvalOptions(decoder=scripted(tiny_bundle, hyps)))
    # entity words: 112 | Ahmet Ankara | 1923 Atatürk = 5; wrong: 112, Ahmet, 1923 = 3
    assert res.micro_wer == pytest.approx(3 / 5)
    assert res.entity_words == 5
    n_words = sum(len(normalize_text(x).split()) for x in refs)
    assert res.rates.wer == pytest.approx(3 / n_words)  # every error is on an entity word

    # the same entities from a list file, applied to every utterance that contains them
    ents = tmp_path / "entities.txt"
    ents.write_text("# numbers and names\n112\nAhmet\nAnkara\n1923\nAtatürk\nİzmir\n", encoding="utf-8")
    bare = write_manifest(tmp_path / "bare.jsonl", clip_rows(refs))
    res2 = evaluate(
        tiny_bundle,
        bare,
        EvalOptions(
            decoder=scripted(tiny_bundle, hyps), entities=("112", "Ahmet", "Ankara", "1923", "Atatürk")
        ),
    )
    assert res2.micro_wer == pytest.approx(3 / 5)
    rc, data, _ = run_json(capsys, tiny_bundle, bare, "--entities", ents)
    assert rc == 0 and data["entity_words"] == 5 and data["micro_wer"] is not None


def test_missing_and_undecodable_audio_are_listed_and_eval_goes_on(tiny_bundle, tmp_path, capsys):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wav file")
    rows = clip_rows(["merhaba dünya", "bugün hava çok güzel ve güneşli", "x", "ışık yandı"])
    rows[2] = {"audio_filepath": "gone/nowhere.wav", "text": "kayıp ses"}
    rows.append({"audio_filepath": "broken.wav", "text": "bozuk dosya"})
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    rc, data, err = run_json(capsys, tiny_bundle, manifest)
    assert rc == 1  # some inputs missing/failed: results printed, exit code says so
    assert data["missing_audio"] == 1 and data["missing"] == [{"audio": "gone/nowhere.wav", "line": 3}]
    assert data["failed_audio"] == 1 and data["failed"][0]["audio"] == "broken.wav"
    assert data["failed"][0]["line"] == 5 and "not readable" in data["failed"][0]["error"]
    assert data["utterances"] == 3 and data["manifest_utterances"] == 5
    assert "left out of the scores" in err
    # text output lists them too
    rc = main(["eval", str(tiny_bundle), str(manifest)])
    out = capsys.readouterr().out
    assert rc == 1 and "gone/nowhere.wav (line 3)" in out and "broken.wav (line 5)" in out


def test_malformed_manifest_line_exits_2_with_line_number(tiny_bundle, tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"audio_filepath": str(CLIPS[0]), "text": "merhaba dünya"})
        + "\n\n"
        + '{"audio_filepath": "a.wav", "text": "unterminated\n',
        encoding="utf-8",
    )
    rc = main(["eval", str(tiny_bundle), str(manifest)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and "line 3" in err and len(err.strip().splitlines()) == 1


def test_manifest_without_transcripts_is_a_user_error(tiny_bundle, tmp_path, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(c) for c in CLIPS) + "\n", encoding="utf-8")
    assert main(["eval", str(tiny_bundle), str(listing)]) == 2
    assert "no transcripts" in capsys.readouterr().err


def test_report_files(tiny_bundle, tmp_path, capsys):
    refs = ["merhaba dünya", "bugün hava çok güzel ve güneşli", "şehirde iki yüz öğrenci", "ışık yandı"]
    manifest = write_manifest(tmp_path / "m.jsonl", clip_rows(refs, [[], [], ["iki yüz"], []]))
    report = tmp_path / "report"
    rc = main(["eval", str(tiny_bundle), str(manifest), "--report", str(report), "--worst", "2"])
    out = capsys.readouterr().out
    assert rc == 0 and "normalization" in out and f"wrote {report / 'report.md'}" in out
    data = json.loads((report / "report.json").read_text(encoding="utf-8"))
    rows = data["per_utterance"]
    assert len(rows) == 4 and [r["audio"] for r in rows] == [str(c) for c in CLIPS]
    for r in rows:
        assert {"ref", "hyp", "wer", "cer", "word_errors", "substitutions", "deletions", "insertions"} <= set(
            r
        )
        assert r["ref"] == normalize_text(r["ref"])
    assert rows[2]["entities"] == ["iki yüz"]
    worst = data["worst"]
    assert len(worst) == 2 and worst[0]["word_errors"] >= worst[1]["word_errors"]
    assert worst[0]["word_errors"] == max(r["word_errors"] for r in rows)
    expected = char_confusions([r["ref"] for r in rows], [r["hyp"] for r in rows], top=None)
    assert [(c["ref"], c["hyp"], c["count"]) for c in data["char_confusions"]] == expected
    assert data["wer"] == pytest.approx(
        sum(r["word_errors"] for r in rows) / sum(r["ref_words"] for r in rows)
    )
    md = (report / "report.md").read_text(encoding="utf-8")
    for heading in ("## Worst utterances", "## Character confusions", "## Per utterance"):
        assert heading in md
    assert NORMALIZATION_DESCRIPTION in md and "merhaba dünya" in md


def test_zero_shot_unknown_alphabet_does_not_crash(tiny_bundle, tmp_path, capsys):
    """Turkish model scored on Cyrillic/Greek/Chinese references: rates computed, OOV characters reported."""
    refs = ["Привет, мир!", "γειά σου κόσμε", "你好 世界", "ışık yandı"]
    manifest = write_manifest(tmp_path / "m.jsonl", clip_rows(refs))
    rc, data, _ = run_json(capsys, tiny_bundle, manifest, "--language", "ru")
    assert rc == 0
    assert np.isfinite(data["wer"]) and np.isfinite(data["cer"]) and data["utterances"] == 4
    assert data["oov_chars"]["count"] == sum(len(normalize_text(r).replace(" ", "")) for r in refs[:3])
    assert "你" in data["oov_chars"]["chars"]


def test_beam_decoder_option_and_lm_needs_beam(tiny_bundle, tmp_path, capsys):
    pytest.importorskip("pyctcdecode")
    manifest = CLIPS_DIR / "clips.jsonl"
    rc, data, _ = run_json(capsys, tiny_bundle, manifest, "--decoder", "beam", "--beam-width", "8")
    assert rc == 0 and data["decoder"] == "beam" and data["decoder_options"]["beam_width"] == 8
    lm = tmp_path / "x.arpa"
    shutil.copy(manifest, lm)  # never read: the flag combination is refused first
    assert main(["eval", str(tiny_bundle), str(manifest), "--decoder", "greedy", "--lm", str(lm)]) == 2
    assert "--decoder beam" in capsys.readouterr().err
