"""Issue 18 on the shipped demo model: `lm tune` (oracle and protection), the tuned sidecar in transcribe/eval/stream,
`lm build --bundle/--dev`, and the one prefixed low-coverage warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xlsr_edge.errors import XlsrEdgeError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "demo-tr"
TEST_MANIFEST = DEMO / "test" / "test.jsonl"
# Natural Turkish sentences (benchmarks/data): unrelated to the demo model's random word sequences.
UNRELATED_TEXT = ROOT / "benchmarks" / "data" / "tr_lm_text.txt"
FAST = dict(beam_width=32)  # the decisions below do not need pyctcdecode's default width of 100

pytestmark = pytest.mark.skipif(
    not (DEMO / "config.json").is_file() or not TEST_MANIFEST.is_file(),
    reason=f"the demo model is not in this checkout ({DEMO}); `make demo-model` trains it",
)


def _kenlm_missing() -> str | None:
    from xlsr_edge.lm.build import find_kenlm_binaries

    try:
        find_kenlm_binaries()
    except XlsrEdgeError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("pyctcdecode")
    pytest.importorskip("kenlm")
    if _kenlm_missing():
        pytest.skip(_kenlm_missing())
    from xlsr_edge.export import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("demo") / "bundle"
    export_bundle(DEMO, out, ExportOptions(verify_audio=TEST_MANIFEST))
    return out


@pytest.fixture(scope="module")
def dev(demo_bundle):
    """The test clips' logits (computed once) and reference texts."""
    from xlsr_edge.datasets import read_manifest
    from xlsr_edge.runtime import Recognizer

    utts = read_manifest(TEST_MANIFEST)
    with Recognizer.from_bundle(demo_bundle, threads=1) as rec:
        logits = rec.logits([u.audio for u in utts])
        vocab = rec.vocab
    assert all(x is not None for x in logits)
    return vocab, logits, [u.text for u in utts]


@pytest.fixture(scope="module")
def demo_alphabet(demo_bundle) -> set[str]:
    from xlsr_edge.bundle import load_bundle
    from xlsr_edge.lm.fit import model_alphabet

    info = load_bundle(demo_bundle).model
    return model_alphabet(info.vocab, info.blank_id, info.word_delimiter)


def _lm(folder: Path, lines: list[str] | Path, alphabet=None) -> Path:
    from xlsr_edge.lm.build import build_lm

    folder.mkdir(parents=True, exist_ok=True)
    text = lines if isinstance(lines, Path) else folder / "corpus.txt"
    if not isinstance(lines, Path):
        text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return build_lm(text, folder / "lm.bin", order=3, language="tr", alphabet=alphabet)


@pytest.fixture()
def oracle_lm(dev, tmp_path) -> Path:
    """An LM of the dev set's own transcripts (a fresh copy per test: tests write sidecars next to it)."""
    return _lm(tmp_path / "oracle", dev[2])


@pytest.fixture()
def unrelated_lm(demo_alphabet, tmp_path) -> Path:
    return _lm(tmp_path / "unrelated", UNRELATED_TEXT, alphabet=demo_alphabet)


def _wer(vocab, logits, refs, options) -> float:
    import numpy as np

    from xlsr_edge.decoders import BeamDecoder
    from xlsr_edge.measure.metrics import error_rates

    with BeamDecoder(vocab, options) as decoder:
        hyps = [decoder.decode_batch(x[None], np.array([x.shape[0]]))[0].text for x in logits]
    return error_rates(refs, hyps, language="tr").wer


# -- tuning -------------------------------------------------------------------------------------------------------


def test_oracle_lm_tuned_cuts_wer_well_below_greedy(dev, oracle_lm):
    from xlsr_edge.measure.lm_tune import TuneOptions, tune_logits

    vocab, logits, refs = dev
    options = TuneOptions(
        alphas=(0.0, 0.25, 0.5, 1.0),
        betas=(0.0, 1.5, 3.0),
        unk_offsets=(-10.0, -3.0, 0.0),
        language="tr",
        **FAST,
    )
    result = tune_logits(vocab, logits, refs, oracle_lm, options)
    greedy, best = result.greedy.rates.wer, result.best.rates.wer
    assert greedy > 0.2  # the demo model's word-boundary errors (31 %)
    assert result.helps and best <= greedy / 4, (greedy, best)
    assert result.weights == result.best.weights and result.weights[0] > 0
    assert result.lm_oov == 0.0
    assert result.sidecar()["wer"]["lm_tuned"] == best


def test_unrelated_lm_tuned_is_not_worse_than_beam_without_lm(dev, unrelated_lm):
    """Protection: untuned, an LM of unrelated text makes beam search much worse; tuned (the default search),
    decoding with it by default (its sidecar) costs at most 0.5 WER points against beam search without it."""
    from xlsr_edge.decoders import BeamOptions
    from xlsr_edge.lm.weights import with_tuned_weights, write_tuned_weights
    from xlsr_edge.measure.lm_tune import TuneOptions, tune_logits

    vocab, logits, refs = dev
    result = tune_logits(vocab, logits, refs, unrelated_lm, TuneOptions(language="tr", **FAST))
    beam = result.beam.rates.wer
    assert result.untuned.rates.wer > beam + 0.10, "the untuned LM should hurt (else this test shows nothing)"
    write_tuned_weights(unrelated_lm, result.sidecar())
    by_default = with_tuned_weights(BeamOptions(lm_path=str(unrelated_lm), **FAST))  # what Recognizer does
    tuned = _wer(vocab, logits, refs, by_default)
    assert tuned <= beam + 0.005, (tuned, beam)
    untuned = _wer(
        vocab,
        logits,
        refs,
        BeamOptions(lm_path=str(unrelated_lm), alpha=0.5, beta=1.5, unk_score_offset=-10.0, **FAST),
    )
    assert untuned == pytest.approx(result.untuned.rates.wer)  # explicit weights override the sidecar


def test_lm_that_does_not_help_records_harmless_weights(dev, unrelated_lm):
    from xlsr_edge.measure.lm_tune import HARMLESS, TuneOptions, format_table, tune_logits

    vocab, logits, refs = dev
    options = TuneOptions(alphas=(0.5, 1.0, 2.0), betas=(1.5,), unk_offsets=(-10.0,), language="tr", **FAST)
    result = tune_logits(vocab, logits, refs, unrelated_lm, options)
    assert not result.helps
    assert result.weights == HARMLESS and result.sidecar()["alpha"] == 0.0 and not result.sidecar()["helps"]
    harmless = next(r for r in result.rows if r.weights == HARMLESS)
    assert harmless.rates.wer == result.beam.rates.wer  # alpha 0, beta 0, offset 0 = beam without the LM
    table = format_table(result)
    assert "does not beat beam search without it" in table and "recording alpha 0" in table
    assert table.index("greedy") < table.index("beam, no LM") < table.index("pyctcdecode defaults")


# -- the command and the sidecar in transcribe / eval / stream ---------------------------------------------------


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    from xlsr_edge.cli import main

    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_lm_tune_cli_writes_the_sidecar_that_transcribe_eval_and_stream_use(demo_bundle, oracle_lm, capsys):
    from xlsr_edge.cli import build_parser
    from xlsr_edge.commands.common import decoder_options
    from xlsr_edge.decoders.options import resolve_weights
    from xlsr_edge.lm.weights import tuned_path_for

    rc, out, err = _run(
        capsys, "lm", "tune", demo_bundle, TEST_MANIFEST, "--lm", oracle_lm, "--alpha", "0:1:0.5", "--beta",
        "-1,0,1.5", "--unk-offset", "-10", "--beam-width", "16", "--language", "tr",
    )  # fmt: skip
    assert rc == 0
    # stderr is not a terminal here: stage lines with times instead of a progress bar
    stages = [line for line in err.splitlines() if line.startswith("lm tune [")]
    assert "computing the logits of 30 utterances" in stages[0] and "settings decoded" in stages[-1], err
    for label in ("greedy", "beam, no LM", "beam + LM, pyctcdecode defaults", "beam + LM, best", "wrote"):
        assert label in out, out
    sidecar = json.loads(tuned_path_for(oracle_lm).read_text(encoding="utf-8"))
    assert sidecar["helps"] and sidecar["lm"] == "lm.bin" and len(sidecar["lm_sha256"]) == 64
    assert sidecar["wer"]["lm_tuned"] < sidecar["wer"]["greedy"] / 4

    rc, out, _ = _run(
        capsys, "eval", demo_bundle, TEST_MANIFEST, "--lm", oracle_lm, "--beam-width", "16", "--json"
    )
    options = json.loads(out)["decoder_options"]
    assert rc == 0 and options["weights"] == "tuned (lm.tuned.json)"
    assert (options["alpha"], options["beta"]) == (sidecar["alpha"], sidecar["beta"])
    rc, out, _ = _run(
        capsys, "eval", demo_bundle, TEST_MANIFEST, "--lm", oracle_lm, "--alpha", "0.9", "--json"
    )
    options = json.loads(out)["decoder_options"]
    assert options["alpha"] == 0.9 and options["beta"] == sidecar["beta"]
    # every command that decodes with --lm resolves its weights the same way (stream included)
    parser = build_parser()
    for argv in (["transcribe", "b", "a.wav"], ["eval", "b", "m.jsonl"], ["stream", "b", "-"]):
        args = parser.parse_args([*argv, "--lm", str(oracle_lm)])
        beam = decoder_options(args)
        assert beam.alpha is None and resolve_weights(beam).from_sidecar, argv


def test_transcribe_uses_the_sidecar_and_explicit_weights_override_it(demo_bundle, oracle_lm, capsys):
    from xlsr_edge.lm.weights import write_tuned_weights

    write_tuned_weights(oracle_lm, {"alpha": 0.0, "beta": 0.0, "unk_score_offset": 0.0, "helps": False})
    common = ["transcribe", demo_bundle, TEST_MANIFEST, "--beam-width", "16"]
    rc, plain, _ = _run(capsys, *common, "--decoder", "beam")
    rc2, tuned, _ = _run(capsys, *common, "--lm", oracle_lm)
    rc3, given, _ = _run(
        capsys, *common, "--lm", oracle_lm, "--alpha", "0.5", "--beta", "1.5", "--unk-offset", "-10"
    )
    assert rc == rc2 == rc3 == 0
    assert tuned == plain  # the harmless sidecar: the LM changes nothing
    assert given != plain  # the oracle LM with explicit weights changes the transcripts


def test_lm_tune_user_errors_are_one_line(demo_bundle, oracle_lm, tmp_path, capsys):
    no_text = tmp_path / "audio_only.jsonl"
    no_text.write_text(json.dumps({"audio_filepath": str(DEMO / "test" / "000050.flac")}) + "\n")
    cases = [
        (["--lm", oracle_lm, "--alpha", "2:1:0.5"], "--alpha"),
        (["--lm", oracle_lm, "--alpha", "x"], "--alpha"),
        (["--lm", oracle_lm, "--unk-offset", "3"], "--unk-offset"),
        (["--lm", tmp_path / "missing.bin"], "language model not found"),
    ]
    for extra, message in cases:
        rc, _, err = _run(capsys, "lm", "tune", demo_bundle, TEST_MANIFEST, *extra)
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    rc, _, err = _run(capsys, "lm", "tune", demo_bundle, no_text, "--lm", oracle_lm)
    assert rc == 2 and err.startswith("error: ") and "no transcripts" in err


# -- lm build --bundle / --dev ----------------------------------------------------------------------------------


def test_lm_build_bundle_maps_or_drops_characters_the_model_cannot_write(demo_bundle, tmp_path, capsys):
    from xlsr_edge.decoders.lm_files import read_unigrams, unigrams_path_for

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "Ankara'dır başkent.\n1923 yılında kuruldu.\nWi-fi şifresi yok!\nKâr etmedik, İstanbul'a döndük.\n",
        encoding="utf-8",
    )
    rc, out, err = _run(
        capsys, "lm", "build", corpus, "-o", tmp_path / "fit.bin", "--language", "tr", "--bundle", demo_bundle,
        "--dev", TEST_MANIFEST,
    )  # fmt: skip
    assert rc == 0
    words = set(read_unigrams(unigrams_path_for(tmp_path / "fit.bin")))
    assert {"ankaradır", "istanbula", "kar", "yılında", "fi", "şifresi"} <= words
    assert not any(ch in word for word in words for ch in "'â0123456789w"), sorted(words)
    assert "mapped 3 characters" in err and "ankara'dır -> ankaradır" in err and "'â' -> 'a' x1" in err
    assert "dropped 2 words" in err and "1923" in err and "'w' x1" in err
    assert "out-of-vocabulary rate on" in out and str(TEST_MANIFEST) in out
    # without --bundle the corpus keeps what the model cannot write
    rc, _, _ = _run(capsys, "lm", "build", corpus, "-o", tmp_path / "raw.bin", "--language", "tr")
    raw = set(read_unigrams(unigrams_path_for(tmp_path / "raw.bin")))
    assert rc == 0 and {"ankara'dır", "1923", "kâr"} <= raw


def test_lm_with_words_the_model_cannot_write_is_named_at_load(dev, tmp_path, caplog):
    import logging

    from xlsr_edge.decoders import BeamDecoder, BeamOptions

    lm = _lm(tmp_path / "apostrophes", ["ankara'dır başkent", "istanbul'a gittim"])  # built without --bundle
    with caplog.at_level(logging.WARNING), BeamDecoder(dev[0], BeamOptions(lm_path=str(lm), beam_width=8)):
        pass
    said = [r.getMessage() for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("warning: 2 of the") and "lm build --bundle" in said[0]


# -- the decode-time warning, as a user sees it ------------------------------------------------------------------


def _transcribe_stderr(bundle: Path, lm: Path) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "xlsr_edge", "transcribe", str(bundle), str(TEST_MANIFEST), "--lm", str(lm)]
        + ["--beam-width", "16"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 30
    return [line for line in proc.stderr.splitlines() if line.strip()]


def test_low_coverage_warning_is_one_prefixed_line_naming_lm_tune(demo_bundle, unrelated_lm, oracle_lm):
    from xlsr_edge.lm.weights import write_tuned_weights

    lines = _transcribe_stderr(demo_bundle, unrelated_lm)
    assert len(lines) == 1, lines  # ours, once; nothing from pyctcdecode ("Only 244 unigrams passed ...")
    assert (
        lines[0].startswith("warning: the language model lm.bin knows only")
        and "`xlsr-edge lm tune" in lines[0]
    )
    assert _transcribe_stderr(demo_bundle, oracle_lm) == []  # an LM that knows the words: no warning
    write_tuned_weights(unrelated_lm, {"alpha": 0.0, "beta": 0.0, "unk_score_offset": 0.0, "helps": False})
    assert _transcribe_stderr(demo_bundle, unrelated_lm) == []  # tuned: `lm tune` has been run
