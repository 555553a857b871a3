"""Multi-language bundles: one backbone, per-language heads, language-ID routing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import read_bundle_json
from xlsr_edge.cli import export_main, main
from xlsr_edge.errors import BundleError, ExportError
from xlsr_edge.export import ExportOptions, export_bundle
from xlsr_edge.export.multi import add_language, export_multi
from xlsr_edge.runtime import Recognizer
from xlsr_edge.runtime.router import LanguageId, ctc_confidence

ALPHABETS = {
    "tr": list("abcçdefgğhıijklmnoöprsştuüvyz"),
    "id": list("abcdefghijklmnoprstuwy"),
    "es": list("abcdefghijlmnñopqrstuvxyzáéíóú"),
}


@pytest.fixture(scope="module")
def lang_ckpts(tmp_path_factory):
    """Three checkpoints with one body (same seed and configuration) and their own heads and alphabets."""
    from xlsr_edge.export.tiny import build_checkpoint

    root = tmp_path_factory.mktemp("multi")
    return {lang: build_checkpoint(root / lang, chars=chars, seed=0) for lang, chars in ALPHABETS.items()}


@pytest.fixture(scope="module")
def shared_bundle(lang_ckpts, tmp_path_factory):
    out = tmp_path_factory.mktemp("mb") / "shared"
    export_multi(lang_ckpts, out)
    return out


def test_shared_bundle_equals_each_single_bundle(lang_ckpts, shared_bundle, speech_dir, tmp_path):
    meta = read_bundle_json(shared_bundle)
    assert meta["extra"]["kind"] == "multi" and set(meta["extra"]["languages"]) == set(ALPHABETS)
    assert meta["parity"]["passed"] and all(r["passed"] for r in meta["parity"]["languages"].values())
    files = sorted(speech_dir.iterdir())
    for lang, ckpt in lang_ckpts.items():
        single = tmp_path / lang
        export_bundle(ckpt, single, ExportOptions(verify=False))
        with (
            Recognizer.from_bundle(single) as one,
            Recognizer.from_bundle(shared_bundle, language=lang) as shared,
        ):
            expected = [t.text for t in one.transcribe(files)]
            got = shared.transcribe(files)
        assert [t.text for t in got] == expected
        assert all(t.language == lang and t.language_confidence is None for t in got)
        assert meta["extra"]["languages"][lang]["vocab"] == read_bundle_json(single)["vocab"]


def test_heads_are_small_next_to_the_backbone(shared_bundle):
    backbone = (shared_bundle / "backbone.onnx").stat().st_size
    heads = sum(p.stat().st_size for p in (shared_bundle / "heads").iterdir())
    assert heads < 0.2 * backbone


def test_mismatched_backbones_are_detected(lang_ckpts, tmp_path, capsys):
    from xlsr_edge.export.tiny import build_checkpoint

    other = build_checkpoint(tmp_path / "other", chars=ALPHABETS["es"], seed=1)
    out = tmp_path / "b"
    code = export_main(["--multi", f"tr={lang_ckpts['tr']}", f"es={other}", "-o", str(out)])
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith("error: the checkpoints do not share a backbone") and "Option B" in errors[0]
    assert not out.exists()
    with pytest.raises(ExportError, match="tensors differ"):
        export_multi({"tr": lang_ckpts["tr"], "es": other}, tmp_path / "c")


def test_add_language_checks_the_backbone_and_adds_a_head(lang_ckpts, tmp_path):
    from xlsr_edge.export.tiny import build_checkpoint

    bundle = tmp_path / "two"
    export_multi({"tr": lang_ckpts["tr"], "es": lang_ckpts["es"]}, bundle)
    add_language(bundle, "id", lang_ckpts["id"])
    meta = read_bundle_json(bundle)
    assert set(meta["extra"]["languages"]) == {"tr", "es", "id"} and "heads/id.npz" in meta["files"]
    stranger = build_checkpoint(tmp_path / "x", chars=ALPHABETS["id"], seed=7)
    with pytest.raises(ExportError, match="backbone differs"):
        add_language(bundle, "xx", stranger)
    assert set(read_bundle_json(bundle)["extra"]["languages"]) == {"tr", "es", "id"}  # nothing changed


def test_bad_multi_arguments_are_user_errors(lang_ckpts, tmp_path, capsys):
    assert export_main(["--multi", "tr", "-o", str(tmp_path / "b")]) == 2
    assert "LANG=PATH" in capsys.readouterr().err
    # a language name becomes heads/LANG.npz: a path in it must not write outside the bundle
    assert export_main(["--multi", f"../x={lang_ckpts['tr']}", "-o", str(tmp_path / "b")]) == 2
    assert "language code '../x'" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "b").exists()
    code = export_main(
        ["--multi", f"tr={lang_ckpts['tr']}", "--lid-data", "es=x.jsonl", "-o", str(tmp_path / "b")]
    )
    assert code == 2 and "same languages" in capsys.readouterr().err


def test_auto_lid_threshold_keeps_95_percent_of_held_out_clips_routed():
    from xlsr_edge.export.multi import AUTO_THRESHOLD_KEEP, LidOptions, train_lid

    rng = np.random.default_rng(0)
    centres = {"tr": 0.0, "es": 1.5, "id": 3.0}  # overlapping clusters: confidences spread below 1
    labels = [lang for lang in centres for _ in range(100)]
    feats = np.stack([rng.normal(centres[lang], 1.0, 8) for lang in labels]).astype(np.float32)
    _, auto = train_lid(feats, labels, LidOptions({}))
    assert auto["threshold_source"].startswith("auto") and auto["holdout_utterances"] == 60
    assert 0.5 < auto["threshold"] < 1.0
    assert AUTO_THRESHOLD_KEEP <= auto["holdout_routed"] < 1.0  # ~5 % of the held-out clips fall below it
    _, given = train_lid(feats, labels, LidOptions({}, threshold=0.5))
    assert given["threshold"] == 0.5 and given["threshold_source"] == "given"
    assert given["holdout_routed"] > auto["holdout_routed"]  # 0.5 turns away (almost) nothing
    few = [0, 1, 100, 101]  # two languages, no held-out split: the fallback threshold
    _, tiny = train_lid(feats[few], [labels[i] for i in few], LidOptions({}, holdout=0.0))
    assert tiny["threshold"] == 0.5 and "fallback" in tiny["threshold_source"]
    _, few_held = train_lid(feats[::10], labels[::10], LidOptions({}))  # 6 held-out clips: too few for auto
    assert few_held["threshold"] == 0.5 and "had 6" in few_held["threshold_source"]


def test_lid_threshold_argument_takes_a_probability_or_auto(tmp_path, capsys):
    from xlsr_edge.commands.export import _threshold

    assert _threshold("auto") is None and _threshold("0.7") == 0.7
    with pytest.raises(SystemExit) as exc:  # argparse: usage + one error line, exit 2
        export_main(["--multi", "tr=x", "--lid-threshold", "high", "-o", str(tmp_path / "b")])
    assert exc.value.code == 2
    assert "error: --lid-threshold must be a probability or 'auto', got 'high'" in capsys.readouterr().err


def test_router_below_threshold_policies(shared_bundle, speech_dir):
    """With a classifier that is never sure, 'unknown' answers unknown and 'all' picks the most confident head."""
    files = sorted(speech_dir.iterdir())[:2]
    with Recognizer.from_bundle(shared_bundle, language="tr") as rec:
        hidden = rec.logits(files)
    langs = ("es", "id", "tr")
    unsure = LanguageId(
        langs,
        np.zeros((3, 64), np.float32),
        np.zeros(3, np.float32),
        np.zeros(64, np.float32),
        np.ones(64, np.float32),
    )
    with Recognizer.from_bundle(shared_bundle, language="tr") as rec:
        rec.language, rec.lid = None, unsure
        rec.policy, rec.threshold = "unknown", 0.5
        out = rec.transcribe(files)
        assert [t.language for t in out] == ["unknown", "unknown"] and all(t.text == "" for t in out)
        assert all(abs(t.language_confidence - 1 / 3) < 1e-6 for t in out)
        rec.policy = "all"
        out = rec.transcribe(files)
        for t, h in zip(out, hidden):
            best = max(langs, key=lambda lg: ctc_confidence(rec.heads[lg].apply(h)))
            assert t.language == best
            assert t.text == rec.decoders[best].decode(rec.heads[best].apply(h)).text


def test_transcribe_cli_reports_the_language(shared_bundle, speech_dir, capsys):
    clip = sorted(speech_dir.iterdir())[0]
    assert main(["transcribe", str(shared_bundle), str(clip), "--language", "es", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["language"] == "es" and "language_confidence" in row
    assert main(["transcribe", str(shared_bundle), str(clip), "--language", "fr"]) == 2
    assert "this bundle has" in capsys.readouterr().err


def test_bundle_without_lid_needs_a_language(shared_bundle):
    from xlsr_edge.errors import BundleError

    with pytest.raises(BundleError, match="--language"):
        Recognizer.from_bundle(shared_bundle)


def test_load_recognizer_builds_the_multi_language_recognizer_and_its_items(
    shared_bundle, speech_dir, monkeypatch
):
    """load_recognizer picks the class by bundle.json's kind; its items are public and keep hidden states in
    `output` (not in a field named logits), the per-language ones in `by_language`."""
    from xlsr_edge.runtime import AudioItem, MultiItem, MultiRecognizer, TranscribeOptions, load_recognizer

    clip = sorted(speech_dir.iterdir())[0]
    with load_recognizer(shared_bundle, language="tr") as rec:
        assert (
            type(rec) is MultiRecognizer and rec.bundle_kind == "multi" and issubclass(MultiItem, AudioItem)
        )
        (item,) = rec._run([rec.load(clip, 0)], TranscribeOptions())
        assert isinstance(item, MultiItem) and item.by_language == {}  # a forced language runs the body once
        width = rec.heads["tr"].weight.shape[1]
        assert item.output.shape == (rec.info.frames_for(item.num_samples), width)
        (decoded,) = rec.decode([item])
        assert item.language == "tr" and decoded.text == rec.transcribe([clip])[0].text
    from xlsr_edge.runtime.runners import OnnxRuntimeRunner

    released = []
    monkeypatch.setattr(OnnxRuntimeRunner, "_deactivate", lambda self: released.append(self.model_path))
    with pytest.raises(BundleError, match="--language"):
        load_recognizer(shared_bundle)
    assert len(released) == 1  # the runner it had started is let go again


# -- language ID on a trained body --------------------------------------------------------------------------

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo-tr"


@pytest.fixture(scope="module")
def lid_corpora(tmp_path_factory):
    """espeak-ng speech of tr/id/es (+ de, a language the router never saw), split by sentence."""
    from xlsr_edge.train.synth import SynthOptions, build_corpus

    root = tmp_path_factory.mktemp("lid")
    for lang in ("tr", "id", "es", "de"):
        build_corpus(
            SynthOptions(
                language=lang,
                hours=0.12,
                out=root / lang,
                seed=11,
                jobs=2,
                progress=False,
                dev_share=0.1,
                test_share=0.1,
            )
        )
    return root


@pytest.mark.skipif(
    not (DEMO / "config.json").exists(), reason="models/demo-tr (the trained body) is missing"
)
def test_language_id_routes_held_out_speech(lid_corpora, tmp_path):
    """Heads for tr (the demo model), id and es on the demo's frozen body; LID trained on the train splits."""
    import jiwer

    from xlsr_edge.datasets import read_manifest
    from xlsr_edge.export.multi import LidOptions
    from xlsr_edge.train.finetune import build_model, save_checkpoint
    from xlsr_edge.train.vocab import build_vocab

    ckpts = {"tr": DEMO}
    for lang in ("id", "es"):
        texts = [u.text for u in read_manifest(lid_corpora / lang / "train.jsonl")]
        model, front, _ = build_model(str(DEMO), build_vocab(texts), seed=1)
        ckpts[lang] = save_checkpoint(model, build_vocab(texts), front, tmp_path / lang)
    data = {lang: lid_corpora / lang / "train.jsonl" for lang in ckpts}
    bundle = tmp_path / "multi"
    export_multi(ckpts, bundle, lid=LidOptions(data, threshold=0.5))
    held_out = {
        lang: [u for split in ("dev", "test") for u in read_manifest(lid_corpora / lang / f"{split}.jsonl")]
        for lang in ("tr", "id", "es", "de")
    }
    with Recognizer.from_bundle(bundle, below_threshold="unknown") as rec:
        routed = {lang: rec.transcribe([u.audio for u in utts]) for lang, utts in held_out.items()}
        thr = rec.threshold
    known = [(lang, t) for lang in ("tr", "id", "es") for t in routed[lang]]
    accuracy = np.mean([t.language == lang for lang, t in known])
    assert accuracy >= 0.95, accuracy
    conf_known = np.mean([t.language_confidence for _, t in known])
    conf_de = np.mean([t.language_confidence for t in routed["de"]])
    assert conf_de < conf_known  # the unseen language is less sure of itself ...
    # ... so a threshold that keeps 90 % of known-language clips routed turns away more of the unseen language
    known_conf = np.array([t.language_confidence for _, t in known])
    de_conf = np.array([t.language_confidence for t in routed["de"]])
    cut = np.percentile(known_conf, 10)
    print(
        f"LID accuracy {accuracy:.3f}, confidence known {conf_known:.3f} / de {conf_de:.3f}, "
        f"below the p10 cut {cut:.3f}: known {np.mean(known_conf < cut):.2f}, de {np.mean(de_conf < cut):.2f}"
    )
    assert np.mean(de_conf < cut) > np.mean(known_conf < cut)
    assert thr == 0.5
    # the default threshold (auto) is calibrated on the held-out LID split: it keeps most known-language clips
    # routed and turns away more of the unseen language than of the known ones
    auto = tmp_path / "multi-auto"
    export_multi(ckpts, auto, lid=LidOptions(data))
    lid_meta = read_bundle_json(auto)["extra"]["lid"]
    assert lid_meta["threshold_source"].startswith("auto") and lid_meta["threshold"] > 0.5
    with Recognizer.from_bundle(auto, below_threshold="unknown") as rec:
        assert rec.threshold == lid_meta["threshold"]
        known_auto = [
            (lang, t)
            for lang in ("tr", "id", "es")
            for t in rec.transcribe([u.audio for u in held_out[lang]])
        ]
        de_auto = rec.transcribe([u.audio for u in held_out["de"]])
    routed = [(lang, t) for lang, t in known_auto if t.language != "unknown"]
    rejected_known = 1 - len(routed) / len(known_auto)
    rejected_de = np.mean([t.language == "unknown" for t in de_auto])
    print(f"auto threshold {rec.threshold:.3f}: turned away known {rejected_known:.2f}, de {rejected_de:.2f}")
    assert rejected_known <= 0.15 and rejected_de > rejected_known
    assert np.mean([t.language == lang for lang, t in routed]) >= 0.95
    # ... and the Turkish route transcribes like the Turkish model alone
    with Recognizer.from_bundle(bundle, language="tr") as rec:
        hyp = [t.text for t in rec.transcribe([u.audio for u in held_out["tr"]])]
    assert jiwer.cer([u.text for u in held_out["tr"]], hyp) < 0.15
