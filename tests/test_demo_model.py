"""The shipped demo model (models/demo-tr), exported and run by the runtime: a regression test on a trained model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo-tr"
TEST_MANIFEST = DEMO / "test" / "test.jsonl"
# Issue 6's target: test CER <= 5 %. The shipped model measures 3.87 % on the shipped clips (3.88 % on the full
# synthetic test split, see MODEL_CARD.md); any exporter/runtime regression costs far more than a point.
MAX_TEST_CER = 0.05

pytestmark = pytest.mark.skipif(
    not (DEMO / "config.json").is_file() or not TEST_MANIFEST.is_file(),
    reason=f"the demo model is not in this checkout ({DEMO}); `make demo-model` trains it",
)


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    from xlsr_edge.export import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("demo") / "bundle"
    export_bundle(DEMO, out, ExportOptions(verify_audio=TEST_MANIFEST))
    return out


@pytest.fixture(scope="module")
def recognizer(demo_bundle):
    from xlsr_edge.runtime import Recognizer

    with Recognizer.from_bundle(demo_bundle, threads=1) as rec:
        yield rec


def test_demo_model_reaches_its_test_cer(recognizer):
    from xlsr_edge.datasets import read_manifest
    from xlsr_edge.measure.metrics import error_rates

    utts = read_manifest(TEST_MANIFEST)
    assert len(utts) >= 20
    results = recognizer.transcribe([u.audio for u in utts])
    assert all(r.error is None for r in results)
    rates = error_rates([u.text for u in utts], [r.text for r in results], language="tr")
    assert rates.utterances == len(utts)
    assert rates.cer <= MAX_TEST_CER, f"demo test CER {rates.cer:.4f} (WER {rates.wer:.4f})"


@pytest.fixture(scope="module")
def long_audio() -> tuple[np.ndarray, str]:
    """Shipped clips with 0.5 s pauses, concatenated to > 20 s, and their joined reference."""
    from xlsr_edge.datasets import read_manifest
    from xlsr_edge.runtime.audio import load_audio

    pieces, refs, total = [], [], 0
    gap = np.zeros(8000, dtype=np.float32)
    for u in read_manifest(TEST_MANIFEST):
        x = load_audio(u.audio, 16000)
        pieces += [x, gap]
        refs.append(u.text)
        total += len(x) + len(gap)
        if total > 22 * 16000:
            break
    audio = np.concatenate(pieces)
    assert len(audio) > 20 * 16000
    return audio, " ".join(refs)


def _text(recognizer, audio, chunk, context) -> str:
    from xlsr_edge.runtime import TranscribeOptions

    options = TranscribeOptions(chunk_seconds=chunk, context_seconds=context)
    t = recognizer.transcribe(audio, options, sample_rate=16000)[0]
    assert t.error is None
    return t.text


def test_chunk_stitching_is_exact_when_the_context_covers_the_audio(recognizer, long_audio):
    """8 s chunks whose context reaches both ends see exactly the unchunked input: identical logits and text."""
    from xlsr_edge.runtime import TranscribeOptions

    audio, _ = long_audio
    whole = recognizer.logits([audio], TranscribeOptions(chunk_seconds=None))[0]
    stitched = recognizer.logits([audio], TranscribeOptions(chunk_seconds=8.0, context_seconds=30.0))[0]
    assert stitched.shape == whole.shape
    assert np.array_equal(stitched.argmax(-1), whole.argmax(-1))
    assert float(np.abs(stitched - whole).max()) < 1e-4
    assert _text(recognizer, audio, 8.0, 30.0) == _text(recognizer, audio, None, 0.0)


def test_chunked_transcript_close_to_unchunked_with_4s_context(recognizer, long_audio):
    from xlsr_edge.measure.metrics import error_rates

    audio, ref = long_audio
    whole = _text(recognizer, audio, None, 0.0)
    chunked = _text(recognizer, audio, 8.0, 4.0)
    assert len(whole.split()) >= 10
    # at most 5 % of the characters differ, and chunking costs at most 2 points of CER against the reference
    assert error_rates([whole], [chunked], language="tr").cer <= 0.05
    cer_whole = error_rates([ref], [whole], language="tr").cer
    assert error_rates([ref], [chunked], language="tr").cer <= cer_whole + 0.02


@pytest.mark.xfail(
    strict=True,
    reason="self-attention is global: with 4 s of context each 8 s chunk sees a different input than the full "
    "22 s pass, and a trained model's logits differ enough to flip a few argmax frames (exact stitching is "
    "checked with a context covering the audio above). XPASS here means the runtime now reaches exact equality.",
)
def test_chunked_transcript_equals_unchunked_exactly_with_4s_context(recognizer, long_audio):
    audio, _ = long_audio
    assert _text(recognizer, audio, 8.0, 4.0) == _text(recognizer, audio, None, 0.0)
