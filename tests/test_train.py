"""synth corpus + finetune recipe: determinism, splits, durations, loss, head, freezing, mixing, alphabet, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from xlsr_edge.errors import XlsrEdgeError  # noqa: E402
from xlsr_edge.train.data import (  # noqa: E402
    Example,
    batches_per_epoch,
    epoch_batches,
    length_grouped_batches,
    lr_factor,
    parse_mix,
)
from xlsr_edge.train.synth import SynthOptions, build_corpus, split_of, usable_word  # noqa: E402

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
VOICES = ("tr", "tr+m3", "tr+f2")


def _synth(out: Path, seed: int = 0, hours: float = 0.02, **kw) -> Path:
    opts = dict(dev_share=0.15, test_share=0.15, jobs=2, progress=False, voices=VOICES)
    build_corpus(SynthOptions(language="tr", hours=hours, out=out, seed=seed, **(opts | kw)))
    return out


def _manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    return _synth(tmp_path_factory.mktemp("synth") / "a", holdout_voice="tr+m3")


# -- synth --------------------------------------------------------------------------------------------------


@needs_espeak
def test_synth_same_seed_same_manifests_other_seed_differs(corpus, tmp_path):
    again = _synth(tmp_path / "b", holdout_voice="tr+m3")
    other = _synth(tmp_path / "c", seed=1, holdout_voice="tr+m3")
    for name in ("train.jsonl", "dev.jsonl", "test.jsonl", "test_voice.jsonl"):
        assert (corpus / name).read_bytes() == (again / name).read_bytes(), name
    assert (corpus / "train.jsonl").read_bytes() != (other / "train.jsonl").read_bytes()


@needs_espeak
def test_synth_splits_disjoint_by_sentence_and_holdout_voice(corpus):
    splits = {s: _manifest(corpus / f"{s}.jsonl") for s in ("train", "dev", "test", "test_voice")}
    assert all(splits[s] for s in splits), {s: len(v) for s, v in splits.items()}
    texts = {s: {r["text"] for r in splits[s]} for s in ("train", "dev", "test")}
    assert not texts["train"] & texts["dev"]
    assert not texts["train"] & texts["test"]
    assert not texts["dev"] & texts["test"]
    # the held-out voice speaks the test sentences, and only there
    assert {r["text"] for r in splits["test_voice"]} == texts["test"]
    assert {r["voice"] for r in splits["test_voice"]} == {"tr+m3"}
    assert all(r["voice"] != "tr+m3" for s in ("train", "dev", "test") for r in splits[s])


@needs_espeak
def test_synth_audio_exists_with_stated_duration_and_normalized_text(corpus):
    import soundfile as sf

    from xlsr_edge.text import normalize_text

    total = 0.0
    for name in ("train", "dev", "test", "test_voice"):
        for r in _manifest(corpus / f"{name}.jsonl"):
            info = sf.info(str(corpus / r["audio_filepath"]))
            assert info.samplerate == 16000 and info.channels == 1 and info.format == "FLAC"
            assert abs(info.frames / 16000 - r["duration"]) <= 0.01, r
            assert r["text"] == normalize_text(r["text"], "tr")
            assert 3 <= len(r["text"].split()) <= 10
            assert not any(ch.isdigit() for ch in r["text"])
            total += r["duration"] if name != "test_voice" else 0.0
    assert total >= 0.02 * 3600
    listed = {
        r["audio_filepath"]
        for n in ("train", "dev", "test", "test_voice")
        for r in _manifest(corpus / f"{n}.jsonl")
    }
    on_disk = {p.relative_to(corpus).as_posix() for p in (corpus / "audio").iterdir()}
    assert on_disk == listed  # no stray files from the last batch


def test_split_shares_hold_for_every_prefix():
    counts: dict[str, int] = {}
    for i in range(400):
        s = split_of(i, counts, 0.05, 0.1)
        counts[s] = counts.get(s, 0) + 1
        assert abs(counts.get("dev", 0) - (i + 1) * 0.05) <= 1
        assert abs(counts.get("test", 0) - (i + 1) * 0.1) <= 1


def test_usable_word_excludes_digits_apostrophes_and_foreign_letters():
    assert usable_word("İstanbul", "tr") == "istanbul"
    assert usable_word("IŞIK", "tr") == "ışık"
    assert usable_word("1923", "tr") is None
    assert usable_word("türkiye'nin", "tr") is None
    assert usable_word("windows", "tr") is None


@needs_espeak
def test_synth_sentences_speaks_each_line_with_transcripts_the_model_can_write(tmp_path, capsys):
    """synth --sentences: every usable line spoken (x repeat) into sentences.jsonl in file order; apostrophes
    leave the transcript (the model has none), lines with digits or foreign letters are left out and named."""
    import soundfile as sf

    from xlsr_edge.cli import main

    text = tmp_path / "sentences.txt"
    text.write_text(
        "Bugün hava çok güzel.\nAnkara'ya 3 günde gittik.\n\nİstanbul'a gidiyoruz!\nBugün hava çok güzel.\n"
        "Wifi şifresi ne?\n",
        encoding="utf-8",
    )

    def synth(out: Path, seed: int = 0):
        options = SynthOptions(
            language="tr", hours=None, out=out, sentences=text, repeat=2, seed=seed, jobs=2, progress=False,
            voices=VOICES,
        )  # fmt: skip
        return build_corpus(options)

    report = synth(tmp_path / "a")
    rows = _manifest(tmp_path / "a" / "sentences.jsonl")
    assert [r["text"] for r in rows] == ["bugün hava çok güzel"] * 2 + ["istanbula gidiyoruz"] * 2
    assert report.dropped == ["Ankara'ya 3 günde gittik.", "Wifi şifresi ne?"]
    assert report.counts == {"sentences": 4} and any(
        "istanbul'a -> istanbula" in line for line in report.fitted
    )
    for r in rows:
        info = sf.info(str(tmp_path / "a" / r["audio_filepath"]))
        assert abs(info.frames / 16000 - r["duration"]) <= 0.01 and r["duration"] > 0.5
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["audio", "sentences.jsonl", "synth.json"]
    synth(tmp_path / "b")
    assert (tmp_path / "a" / "sentences.jsonl").read_bytes() == (
        tmp_path / "b" / "sentences.jsonl"
    ).read_bytes()

    with pytest.raises(XlsrEdgeError, match="--hours"):
        SynthOptions(language="tr", hours=None, out=tmp_path / "c")
    rc = main(
        [
            "synth",
            "--language",
            "tr",
            "--sentences",
            str(text),
            "-o",
            str(tmp_path / "d"),
            "--dev-share",
            "0.1",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --dev-share does not apply to --sentences")
    assert not (tmp_path / "d").exists()


# -- data / schedule ----------------------------------------------------------------------------------------


def _examples(n: int, source: bool = False) -> list[Example]:
    rng = np.random.default_rng(n)
    return [
        Example(Path(f"{'s' if source else 't'}{i}.flac"), "a", float(rng.uniform(1, 9)), source)
        for i in range(n)
    ]


@pytest.mark.parametrize("share", [0.1, 0.3])
def test_mix_gives_requested_source_share_per_epoch(share):
    target, source = _examples(300), _examples(40, source=True)
    seen_sources: set = set()
    for epoch in range(3):
        batches = epoch_batches(target, source, share, 8, seed=0, epoch=epoch)
        flat = [e for b in batches for e in b]
        assert len(batches) == batches_per_epoch(300, 40, share, 8)
        assert sorted(e.audio.name for e in flat if not e.source) == sorted(e.audio.name for e in target)
        got = sum(e.source for e in flat) / len(flat)
        assert abs(got - share) <= 0.05, (epoch, got)
        seen_sources |= {e.audio.name for e in flat if e.source}
    assert len(seen_sources) == 40  # sampling walks through the whole source set
    assert epoch_batches(target, source, share, 8, 0, 1) != epoch_batches(target, source, share, 8, 0, 2)
    assert epoch_batches(target, source, share, 8, 0, 1) == epoch_batches(target, source, share, 8, 0, 1)


def test_parse_mix():
    assert parse_mix("a/b:c.jsonl:0.1") == (Path("a/b:c.jsonl"), 0.1)
    for bad in ("x.jsonl", "x.jsonl:1.5", "x.jsonl:0", ":0.1", "x.jsonl:ten"):
        with pytest.raises(XlsrEdgeError):
            parse_mix(bad)


def test_length_grouped_batches_cover_everything_with_little_padding():
    durs = list(np.random.default_rng(0).uniform(1, 10, 500))
    batches = length_grouped_batches(durs, 8, np.random.default_rng(1), megabatch=50)
    assert sorted(i for b in batches for i in b) == list(range(500))
    spread_grouped = np.mean([max(durs[i] for i in b) - min(durs[i] for i in b) for b in batches])
    shuffled = np.random.default_rng(2).permutation(500)
    spread_random = np.mean([np.ptp([durs[i] for i in shuffled[k : k + 8]]) for k in range(0, 500, 8)])
    assert spread_grouped < spread_random / 3


def test_lr_schedule_warmup_then_cosine():
    f = [lr_factor(s, 100, 10) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:9], f[1:10]))
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[55] == pytest.approx(0.5, abs=0.02) and lr_factor(100, 100, 10) == pytest.approx(0.0)


def test_noise_augmenter_hits_the_snr():
    from xlsr_edge.train.augment import NoiseAugmenter

    x = np.sin(np.linspace(0, 2000, 32000)).astype(np.float32)
    aug = NoiseAugmenter(prob=1.0, snr_db=(10.0, 10.0))
    for seed in range(4):
        y = aug(x, np.random.default_rng(seed))
        snr = 10 * np.log10(np.mean(x**2) / np.mean((y - x) ** 2))
        assert snr == pytest.approx(10.0, abs=0.01)
    assert aug.__class__(prob=0.0)(x, np.random.default_rng(0)) is x


# -- finetune -----------------------------------------------------------------------------------------------


def _options(corpus: Path, out: Path, **kw):
    from xlsr_edge.train.finetune import FinetuneOptions

    base = dict(
        init="tiny",
        train=corpus / "train.jsonl",
        dev=corpus / "dev.jsonl",
        out=out,
        language="tr",
        max_steps=8,
        batch_size=4,
        lr=2e-3,
        threads=1,
        save_every=0,
        eval_every=0,
        progress=False,
    )
    return FinetuneOptions(**(base | kw))


def _state_dict(folder: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


@needs_espeak
def test_finetune_lowers_ctc_loss_and_writes_an_exportable_checkpoint(corpus, tmp_path):
    import transformers

    from xlsr_edge.export.checkpoint import inspect_checkpoint
    from xlsr_edge.train.data import load_examples
    from xlsr_edge.train.finetune import build_model, ctc_loss, finetune
    from xlsr_edge.train.vocab import read_vocab

    out = tmp_path / "ft"
    options = _options(corpus, out, max_steps=36)
    result = finetune(options)
    assert result.finished and result.step == 36
    vocab = read_vocab(out)
    train, _ = load_examples(corpus / "train.jsonl", "tr")
    start, front, _ = build_model("tiny", vocab, seed=0)  # the same initial weights the run started from
    trained = transformers.Wav2Vec2ForCTC.from_pretrained(str(out))
    before, after = ctc_loss(start, train, vocab, front), ctc_loss(trained, train, vocab, front)
    assert after < 0.7 * before, (before, after)
    # new head sized to the vocabulary built from the transcripts
    chars = {ch for e in train for ch in e.text if ch != " "}
    assert set(vocab.tokens) >= chars and len(vocab) == 5 + len(chars)
    assert trained.lm_head.out_features == len(vocab) == trained.config.vocab_size
    ckpt = inspect_checkpoint(out)  # what export-xlsr reads
    assert ckpt.info.vocab == list(vocab.tokens) and ckpt.info.blank_id == vocab.tokens.index("<pad>")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 37))
    assert "dev_cer" in log[-2]


@needs_espeak
@pytest.mark.parametrize("freeze", [None, False])
def test_feature_encoder_frozen_by_default_for_a_pretrained_body(corpus, tmp_path, freeze):
    from xlsr_edge.export.tiny import build_checkpoint
    from xlsr_edge.train.finetune import finetune

    init = build_checkpoint(tmp_path / "init", chars=list("abc"))  # a different vocabulary: head replaced
    out = tmp_path / "ft"
    finetune(_options(corpus, out, init=str(init), max_steps=3, freeze_feature_encoder=freeze))
    before, after = _state_dict(init), _state_dict(out)
    conv = [k for k in before if k.startswith("wav2vec2.feature_extractor.")]
    body = [k for k in before if k.startswith("wav2vec2.encoder.layers.")]
    assert conv and body
    conv_changed = any(not np.array_equal(before[k], after[k]) for k in conv)
    assert conv_changed == (freeze is False)
    assert any(not np.array_equal(before[k], after[k]) for k in body)
    assert after["lm_head.weight"].shape[0] != before["lm_head.weight"].shape[0]
    args = json.loads((out / "finetune_args.json").read_text())
    assert args["feature_encoder_frozen"] == (freeze is None)


def test_keep_head_continues_a_checkpoint_and_refuses_another_vocabulary(tmp_path):
    from xlsr_edge.export.tiny import build_checkpoint
    from xlsr_edge.train.finetune import build_model
    from xlsr_edge.train.vocab import read_vocab

    init = build_checkpoint(tmp_path / "init", chars=list("abc"))
    vocab = read_vocab(init)
    kept, _, _ = build_model(str(init), vocab, keep_head=True)
    fresh, _, _ = build_model(str(init), vocab)
    head = _state_dict(init)["lm_head.weight"]
    assert np.array_equal(kept.lm_head.weight.detach().numpy(), head)  # continued: the trained head
    assert not np.array_equal(fresh.lm_head.weight.detach().numpy(), head)  # default: a new head
    other = build_checkpoint(tmp_path / "other", chars=list("abd"))  # same size, other tokens
    with pytest.raises(XlsrEdgeError, match="--keep-head"):
        build_model(str(init), read_vocab(other), keep_head=True)
    with pytest.raises(XlsrEdgeError, match="--keep-head continues a checkpoint"):
        build_model("tiny", vocab, keep_head=True)


@needs_espeak
def test_heads_only_keeps_the_body_bit_identical_so_heads_share_a_backbone(corpus, tmp_path):
    from xlsr_edge.export.tiny import build_checkpoint
    from xlsr_edge.train.finetune import finetune

    init = build_checkpoint(tmp_path / "init", chars=list("abc"))
    outs = [tmp_path / "h1", tmp_path / "h2"]
    for seed, out in enumerate(outs):
        finetune(_options(corpus, out, init=str(init), max_steps=3, heads_only=True, seed=seed))
    before = _state_dict(init)
    for out in outs:
        after = _state_dict(out)
        body = [k for k in before if not k.startswith("lm_head.")]
        assert body and all(np.array_equal(before[k], after[k]) for k in body)
        assert (
            after["lm_head.weight"].shape != before["lm_head.weight"].shape
        )  # a head for the new vocabulary
        assert json.loads((out / "finetune_args.json").read_text())["body_frozen"] is True
    h1, h2 = (_state_dict(o)["lm_head.weight"] for o in outs)
    assert not np.array_equal(h1, h2)  # two different heads on one body
    with pytest.raises(XlsrEdgeError, match="--heads-only"):
        finetune(_options(corpus, tmp_path / "scratch", heads_only=True))  # no trained body to keep


@needs_espeak
def test_alphabet_check_stops_and_lists_unknown_characters(corpus, tmp_path, capsys):
    from xlsr_edge.cli import main
    from xlsr_edge.train.finetune import finetune
    from xlsr_edge.train.vocab import SPECIALS, CtcVocab

    no_e = CtcVocab(SPECIALS + tuple("abcçdfgğhıijklmnoöprsştuüvyz"))  # no "e"
    vocab_path = no_e.write(tmp_path / "vocab.json")
    n_e = sum(r["text"].count("e") for r in _manifest(corpus / "train.jsonl"))
    with pytest.raises(XlsrEdgeError, match=rf"'e' \(U\+0065\) x{n_e}"):
        finetune(_options(corpus, tmp_path / "a", vocab=vocab_path))
    assert not (tmp_path / "a").exists()
    argv = [
        "finetune",
        "--init",
        "tiny",
        "--train",
        str(corpus / "train.jsonl"),
        "--dev",
        str(corpus / "dev.jsonl"),
    ]
    code = main(argv + ["-o", str(tmp_path / "b"), "--vocab", str(vocab_path), "--max-steps", "1"])
    assert code == 2 and "'e'" in capsys.readouterr().err
    result = finetune(_options(corpus, tmp_path / "c", vocab=vocab_path, map_unknown=True, max_steps=1))
    assert result.finished and result.vocab_size == len(no_e)


@needs_espeak
def test_resume_continues_from_the_saved_step(corpus, tmp_path):
    from xlsr_edge.train.finetune import finetune, load_state

    out = tmp_path / "ft"
    first = finetune(_options(corpus, out, max_steps=8), stop_after=5)
    assert not first.finished and load_state(out)["step"] == 5
    assert not (out / "model.safetensors").exists()  # no final checkpoint yet
    with pytest.raises(XlsrEdgeError, match="--resume"):
        finetune(_options(corpus, out, max_steps=8))
    second = finetune(_options(corpus, out, max_steps=8, resume=True))
    assert second.finished and second.step == 8
    steps = [json.loads(line).get("step") for line in (out / "train_log.jsonl").read_text().splitlines()]
    # steps 1-5, the first session's end, then 6-8 and the second session's end
    assert steps == [1, 2, 3, 4, 5, 5, 6, 7, 8, 8]
    assert (out / "model.safetensors").is_file()
    # the resumed run ends where an uninterrupted one does
    straight = finetune(_options(corpus, tmp_path / "straight", max_steps=8))
    a, b = _state_dict(out), _state_dict(tmp_path / "straight")
    assert straight.step == 8
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-4
    # a finished run can be extended: --resume with a longer schedule continues from its last step
    third = finetune(_options(corpus, out, max_steps=10, resume=True))
    assert third.finished and third.step == 10
    args = json.loads((out / "finetune_args.json").read_text())
    assert [r["at_step"] for r in args["resumed"]] == [5, 8] and args["total_steps"] == 10
