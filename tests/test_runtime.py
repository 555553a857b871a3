"""Embedded runtime: numpy-only Recognizer, front end, batching, chunking, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import transformers

from tests.conftest import speech_arrays
from xlsr_edge.bundle import ModelInfo
from xlsr_edge.cli import main
from xlsr_edge.errors import BundleError
from xlsr_edge.runtime import Recognizer, TranscribeOptions
from xlsr_edge.runtime.audio import load_audio, normalize, prepare_audio
from xlsr_edge.runtime.batching import bucket, plan_windows


def test_runtime_and_decoders_do_not_import_torch_or_transformers():
    code = (
        "import sys, xlsr_edge.runtime, xlsr_edge.decoders, xlsr_edge.bundle;"
        "from xlsr_edge.decoders import GreedyDecoder, BeamDecoder;"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules];"
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, f"runtime imported: {r.stdout} {r.stderr}"


def test_front_end_matches_the_feature_extractor(tiny_ckpt, speech_dir):
    processor = transformers.Wav2Vec2Processor.from_pretrained(str(tiny_ckpt))
    for a in speech_arrays(speech_dir, 3):
        ref = processor(a, sampling_rate=16000, return_tensors="np").input_values[0]
        np.testing.assert_array_equal(normalize(a, True), ref)


def test_stereo_8k_is_downmixed_and_resampled(tmp_path):
    t = np.arange(8000) / 8000
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t) * 0.5], axis=1).astype(
        np.float32
    )
    sf.write(tmp_path / "s.wav", stereo, 8000)
    x = load_audio(tmp_path / "s.wav", 16000)
    assert x.ndim == 1 and abs(len(x) - 16000) <= 2
    ref = prepare_audio(stereo.mean(axis=1), 8000, 16000)
    np.testing.assert_allclose(x, ref, atol=1e-4)


def test_greedy_transcripts_equal_batch_decode_of_transformers(tiny_ckpt, tiny_bundle, speech_dir):
    model = transformers.Wav2Vec2ForCTC.from_pretrained(str(tiny_ckpt)).eval()
    processor = transformers.Wav2Vec2Processor.from_pretrained(str(tiny_ckpt))
    files = sorted(speech_dir.glob("*.wav"))[:3]
    audio = [load_audio(f, 16000) for f in files]
    feats = processor(
        audio, sampling_rate=16000, padding=True, return_tensors="pt", return_attention_mask=True
    )
    with torch.no_grad():
        logits = model(feats.input_values, attention_mask=feats.attention_mask).logits
    lengths = model._get_feat_extract_output_lengths(feats.attention_mask.sum(-1))
    expected = processor.batch_decode([logits[i, :n].argmax(-1) for i, n in enumerate(lengths)])
    with Recognizer.from_bundle(tiny_bundle) as rec:
        got = rec.transcribe(files, TranscribeOptions(batch_size=3))
    assert [t.text for t in got] == expected
    assert [t.audio for t in got] == [str(f) for f in files]


def test_batch_size_does_not_change_transcripts(tiny_bundle, speech_dir):
    files = sorted(speech_dir.iterdir())
    with Recognizer.from_bundle(tiny_bundle) as rec:
        one = rec.transcribe(files, TranscribeOptions(batch_size=1))
        many = rec.transcribe(files, TranscribeOptions(batch_size=8, max_padding=0.9))
    assert [t.text for t in one] == [t.text for t in many]


def test_group_norm_bundle_runs_unpadded(tiny_group_ckpt, tiny_group_bundle, speech_dir):
    model = transformers.Wav2Vec2ForCTC.from_pretrained(str(tiny_group_ckpt)).eval()
    processor = transformers.Wav2Vec2Processor.from_pretrained(str(tiny_group_ckpt))
    files = sorted(speech_dir.glob("*.wav"))[:3]
    expected = []
    for f in files:
        x = processor(load_audio(f, 16000), sampling_rate=16000, return_tensors="pt").input_values
        with torch.no_grad():
            expected.append(processor.batch_decode(model(x).logits.argmax(-1))[0])
    with Recognizer.from_bundle(tiny_group_bundle) as rec:
        assert [t.text for t in rec.transcribe(files, TranscribeOptions(batch_size=8))] == expected


def test_word_timestamps_are_monotonic_and_inside_the_audio(tiny_bundle, speech_dir):
    with Recognizer.from_bundle(tiny_bundle) as rec:
        results = rec.transcribe(sorted(speech_dir.iterdir()))
    words = 0
    for t in results:
        prev = 0.0
        for w in t.words:
            assert prev <= w["start"] < w["end"] <= t.duration + 1e-6
            prev = w["end"]
            words += 1
        assert [w["word"] for w in t.words] == t.text.split()
    assert words > 0


def test_windows_tile_every_frame_once():
    info = ModelInfo(
        ["<pad>", "a"],
        0,
        "|",
        None,
        16000,
        True,
        "layer",
        [10, 3, 3, 3, 3, 2, 2],
        [5, 2, 2, 2, 2, 2, 2],
        True,
    )
    for n in (400, 16000 * 3 + 17, 16000 * 10, 16000 * 31 + 319):
        frames = info.frames_for(n)
        ws = plan_windows(
            0,
            n,
            stride=320,
            receptive_field=400,
            total_frames=frames,
            chunk_samples=16000 * 2,
            context_samples=8000,
        )
        covered = []
        for w in ws:
            assert w.start % 320 == 0 and 0 <= w.start < w.end <= n
            own = info.frames_for(w.num_samples)
            assert 0 <= w.keep_from < w.keep_to <= own, (w, own)
            covered += list(range(w.start // 320 + w.keep_from, w.start // 320 + w.keep_to))
        assert covered == list(range(frames))


def test_bucket_limits_padding_and_batch_size():
    lengths = [100, 98, 50, 49, 48, 10, 97, 51]
    batches = bucket(lengths, batch_size=3, max_padding=0.1)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) <= 3
        assert 1 - sum(lengths[i] for i in b) / (longest * len(b)) <= 0.1
    assert bucket([5, 6, 5], 8, max_padding=0.0) == [[1], [0, 2]]


def test_chunked_long_audio_matches_unchunked(tiny_bundle, speech_dir, tmp_path):
    """Random weights give a few near-tie frames; the exact-transcript check runs on the trained demo model."""
    audio = np.concatenate([load_audio(f, 16000) for f in sorted(speech_dir.iterdir())] * 2)
    assert len(audio) > 16000 * 12
    sf.write(tmp_path / "long.wav", audio, 16000)
    chunked_opts = TranscribeOptions(chunk_seconds=4, context_seconds=5)
    with Recognizer.from_bundle(tiny_bundle) as rec:
        whole = rec.logits([tmp_path / "long.wav"], TranscribeOptions(chunk_seconds=None))[0]
        chunked = rec.logits([tmp_path / "long.wav"], chunked_opts)[0]
        text_whole = rec.transcribe([tmp_path / "long.wav"], TranscribeOptions(chunk_seconds=None))[0]
        text_chunked = rec.transcribe([tmp_path / "long.wav"], chunked_opts)[0]
    assert whole.shape == chunked.shape  # every frame stitched exactly once, in order
    assert (whole.argmax(-1) == chunked.argmax(-1)).mean() > 0.995
    assert np.abs(whole - chunked).max() < 0.1
    import jiwer

    assert jiwer.cer(text_whole.text, text_chunked.text) < 0.02
    assert text_chunked.words[-1]["end"] <= text_chunked.duration + 1e-6


def test_newer_schema_is_refused(tiny_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    meta = json.loads((copy / "bundle.json").read_text())
    meta["schema_version"] = 99
    (copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="newer"):
        Recognizer.from_bundle(copy)


def test_modified_graph_is_refused(tiny_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    with (copy / "model.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="model.onnx \\(modified\\)"):
        Recognizer.from_bundle(copy)


def _bad_inputs(folder: Path, good: Path) -> dict[str, Path]:
    rate = 16000
    files = {}
    files["empty"] = folder / "empty.wav"
    files["empty"].write_bytes(b"")
    files["truncated"] = folder / "truncated.flac"
    files["truncated"].write_bytes(good.read_bytes()[:40])
    files["text"] = folder / "notes.wav"
    files["text"].write_text("this is not audio\n" * 20)
    files["nan"] = folder / "nan.wav"
    x = np.zeros(rate, dtype=np.float32)
    x[100] = np.nan
    sf.write(files["nan"], x, rate, subtype="FLOAT")
    files["short"] = folder / "short.wav"
    sf.write(files["short"], np.zeros(300, dtype=np.float32), rate)
    return files


def test_bad_inputs_get_an_error_line_and_the_rest_are_transcribed(tiny_bundle, speech_dir, tmp_path, capsys):
    good = sorted(speech_dir.glob("*.flac"))[0]
    bad = _bad_inputs(tmp_path, good)
    stereo8k = tmp_path / "stereo8k.wav"
    a, _ = sf.read(good)
    import soxr

    a8 = soxr.resample(a, 16000, 8000)
    sf.write(stereo8k, np.stack([a8, a8], axis=1), 8000)
    args = [
        "transcribe",
        str(tiny_bundle),
        str(good),
        *map(str, bad.values()),
        str(stereo8k),
        str(tmp_path / "missing.wav"),
        "--json",
    ]
    assert main(args) == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_audio = {r["audio"]: r for r in rows}
    assert len(rows) == 8
    assert "text" in by_audio[str(good)] and "text" in by_audio[str(stereo8k)]
    for key, path in bad.items():
        assert "error" in by_audio[str(path)], key
    assert "empty" in by_audio[str(bad["empty"])]["error"]
    assert "NaN" in by_audio[str(bad["nan"])]["error"]
    assert "shorter than one frame" in by_audio[str(bad["short"])]["error"]
    assert "no such file" in by_audio[str(tmp_path / "missing.wav")]["error"]


@pytest.mark.slow
def test_two_hour_file_is_transcribed_in_chunks(tiny_bundle, tmp_path):
    rate = 16000
    path = tmp_path / "two_hours.flac"
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as f:
        for _ in range(120):  # 2 h in 1-minute blocks of quiet noise
            f.write((rng.standard_normal(rate * 60) * 0.01).astype(np.float32))
    with Recognizer.from_bundle(tiny_bundle) as rec:
        t = rec.transcribe([path], TranscribeOptions(batch_size=8))[0]
    assert t.error is None
    assert abs(t.duration - 7200) < 0.01
    if t.words:
        assert t.words[-1]["end"] <= 7200


def test_numpy_arrays_are_accepted(tiny_bundle, speech_dir):
    files = sorted(speech_dir.glob("*.flac"))[:2]
    arrays = [sf.read(f, dtype="float32")[0] for f in files]
    with Recognizer.from_bundle(tiny_bundle) as rec:
        from_files = rec.transcribe(files)
        from_arrays = rec.transcribe(arrays, sample_rate=16000)
    assert [t.text for t in from_arrays] == [t.text for t in from_files]
    assert from_arrays[0].audio == "<array 0>"


# -- the one batched-inference path (runtime.batching.run_batches) ------------------------------------------------


class _Recording:
    """A runner that records what it is fed and hands it to the real one."""

    def __init__(self, runner) -> None:
        self.runner, self.calls = runner, []
        self.max_batch = None

    def infer(self, values, mask):
        self.calls.append((values.shape, None if mask is None else mask.copy()))
        return self.runner.infer(values, mask)


def _runner(bundle: Path):
    from xlsr_edge.bundle import read_manifest
    from xlsr_edge.runtime.runners import make_runner

    manifest = read_manifest(bundle)
    return manifest.model, make_runner("onnxruntime", bundle, manifest, threads=1).activate()


def test_run_batches_gives_each_clip_its_own_logits(tiny_bundle, speech_dir):
    """Padded batches (a graph with an attention mask) give every clip the logits it gets alone."""
    from xlsr_edge.runtime.batching import run_batches

    info, runner = _runner(tiny_bundle)
    assert info.uses_attention_mask
    clips = [normalize(a, True) for a in speech_arrays(speech_dir, 3)]
    # each cut clip is close in length to its whole clip: they share a padded batch
    arrays = clips + [c[: len(c) * 9 // 10] for c in clips]
    rec = _Recording(runner)
    got: dict[int, np.ndarray] = {}
    for batch, logits in run_batches(rec, arrays, batch_size=4, uses_mask=True, max_padding=0.9):
        got.update(zip(batch, logits))
    assert sorted(got) == list(range(len(arrays)))
    assert any(shape[0] > 1 for shape, _ in rec.calls) and all(m is not None for _, m in rec.calls)
    assert any((m == 0).any() for _, m in rec.calls)  # some batch was padded
    for i, a in enumerate(arrays):
        alone, lengths = runner.infer(a[None], None)
        assert got[i].shape[0] == int(lengths[0]) == info.frames_for(len(a))
        np.testing.assert_allclose(got[i], alone[0, : int(lengths[0])], atol=1e-4)


def test_run_batches_never_pads_a_graph_without_a_mask(tiny_group_bundle, speech_dir):
    from xlsr_edge.runtime.batching import padding_limit, run_batches

    info, runner = _runner(tiny_group_bundle)
    assert not info.uses_attention_mask and padding_limit(False) == 0.0 and padding_limit(True) > 0
    a = speech_arrays(speech_dir, 3)
    arrays = [a[0], a[1], a[0].copy(), a[2], a[1][:-1]]
    rec = _Recording(runner)
    out = {}
    for batch, logits in run_batches(rec, arrays, batch_size=8, uses_mask=False, max_padding=0.9):
        assert len({len(arrays[i]) for i in batch}) == 1  # equal lengths only
        out.update(zip(batch, logits))
    assert all(mask is None for _, mask in rec.calls)
    assert len(rec.calls) == 4 and sorted(shape[0] for shape, _ in rec.calls) == [1, 1, 1, 2]
    np.testing.assert_array_equal(out[0], out[2])


def test_run_batches_fits_the_engine_profile(tiny_bundle, speech_dir):
    from xlsr_edge.runtime.batching import run_batches

    _, runner = _runner(tiny_bundle)
    rec = _Recording(runner)
    rec.max_batch = 2
    clips = [normalize(a, True) for a in speech_arrays(speech_dir, 3)]
    arrays = clips + [c[:-160] for c in clips]
    done = [i for batch, _ in run_batches(rec, arrays, batch_size=8, uses_mask=True) for i in batch]
    assert sorted(done) == list(range(6)) and all(shape[0] <= 2 for shape, _ in rec.calls)


# -- typed backend options (runtime.backend_options) ---------------------------------------------------------------


def test_backend_options_validate_once():
    from xlsr_edge.errors import XlsrEdgeError
    from xlsr_edge.runtime import BackendOptions, OpenVinoOptions, OrtOptions, TrtOptions

    assert OrtOptions("cuda, cpu").providers == ("cuda", "cpu") and OrtOptions(None).providers == ("cpu",)
    assert OrtOptions("tensorrt,cuda").uses_tensorrt and not OrtOptions().uses_tensorrt
    with pytest.raises(ValueError, match="threads"):
        OrtOptions(threads=0)
    with pytest.raises(XlsrEdgeError, match="--precision-hint must be one of"):
        OpenVinoOptions(precision_hint="int4")
    assert OpenVinoOptions(precision_hint="F32").precision_hint == "f32"
    assert OpenVinoOptions(cache_dir=None).cache_dir is None and OpenVinoOptions().cache_dir is not None
    with pytest.raises(XlsrEdgeError, match="--trt-cache-dir.*--providers tensorrt"):
        BackendOptions(tensorrt=TrtOptions("cache"))  # onnxruntime on the CPU builds no engines
    with pytest.raises(XlsrEdgeError, match="--trt-cache-dir"):
        BackendOptions("tensorrt", tensorrt=TrtOptions("cache"))  # runs the bundle's engine.plan
    ok = BackendOptions(onnxruntime=OrtOptions("tensorrt,cuda"), tensorrt=TrtOptions("cache"))
    assert ok.tensorrt.cache_dir == Path("cache") and ok.selected is ok.onnxruntime


def test_backend_options_from_keywords_maps_from_bundles_shorthands():
    from xlsr_edge.errors import XlsrEdgeError
    from xlsr_edge.runtime import BackendOptions

    o = BackendOptions.from_keywords(None, providers="cpu", threads=2)
    # no backend: the bundle decides when loaded (its recorded runtime, else onnxruntime; tests/test_optimize.py)
    assert (o.backend, o.onnxruntime.threads, o.onnxruntime.providers) == (None, 2, ("cpu",))
    assert o.openvino.threads == 2
    ov = BackendOptions.from_keywords("openvino", threads=3, precision_hint="f32", cache_dir=None)
    assert (ov.openvino.threads, ov.openvino.precision_hint, ov.openvino.cache_dir) == (3, "f32", None)
    trt = BackendOptions.from_keywords("onnxruntime", providers=["tensorrt"], trt_cache_dir="engines")
    assert trt.tensorrt.cache_dir == Path("engines")
    for backend, kw in (("openvino", {"providers": "cuda"}), ("tensorrt", {"threads": 2})):
        with pytest.raises(XlsrEdgeError, match="apply to the onnxruntime backend"):
            BackendOptions.from_keywords(backend, **kw)
    dropped = BackendOptions.from_keywords(
        "tensorrt", providers="cuda", threads=2, ignore_unused=("providers", "threads")
    )
    assert dropped.backend == "tensorrt" and dropped.selected.cache_dir is None
    with pytest.raises(TypeError, match="precision_hint: not a setting of the onnxruntime backend"):
        BackendOptions.from_keywords("onnxruntime", precision_hint="f32")
    assert dict(BackendOptions.from_keywords("mine", flavour=1).extra) == {
        "flavour": 1
    }  # a registered backend's


def _args(*argv: str):
    from xlsr_edge.cli import build_parser

    return build_parser().parse_args(list(argv))


def test_backend_options_from_the_command_line(tmp_path):
    from xlsr_edge.commands.common import backend_options

    o = backend_options(
        _args("transcribe", "b", "a.wav", "--providers", "tensorrt,cuda", "--trt-cache-dir", "eng")
    )
    # no --backend: the bundle decides when loaded (xlsr-edge optimize's record, else onnxruntime)
    assert o.backend is None and o.onnxruntime.providers == ("tensorrt", "cuda")
    assert o.tensorrt.cache_dir == Path("eng")
    ov = backend_options(
        _args(
            "stream",
            "b",
            "-",
            "--backend",
            "ov",
            "--threads",
            "2",
            "--precision-hint",
            "f32",
            "--cache-dir",
            "none",
        )
    )
    assert (ov.backend, ov.openvino.threads, ov.openvino.precision_hint, ov.openvino.cache_dir) == (
        "openvino",
        2,
        "f32",
        None,
    )
    # --providers only concerns onnxruntime (its default is cpu whatever the backend): ignored, as before
    assert backend_options(
        _args("transcribe", "b", "a.wav", "--backend", "trt", "--providers", "cuda")
    ).backend == ("tensorrt")
    for command in (
        ["transcribe", "b", "a.wav"],
        ["stream", "b", "-"],
        ["serve", "b"],
        ["eval", "b", "m.jsonl"],
    ):
        assert _args(*command, "--trt-cache-dir", str(tmp_path)).trt_cache_dir == tmp_path


def test_trt_cache_dir_reaches_the_tensorrt_provider_or_is_refused(tiny_bundle, tmp_path, capsys):
    from xlsr_edge.commands.common import backend_options
    from xlsr_edge.runtime.runners import resolve_providers

    o = backend_options(
        _args("transcribe", "b", "a.wav", "--providers", "tensorrt", "--trt-cache-dir", str(tmp_path))
    )
    runner = o.graph_runner(tiny_bundle / "model.onnx")
    assert runner.trt_cache_dir == tmp_path and runner.providers == ("tensorrt",)
    import onnxruntime

    if "TensorrtExecutionProvider" in onnxruntime.get_available_providers():
        (name, settings), *_ = resolve_providers(runner.providers, runner.trt_cache_dir)
        assert settings["trt_engine_cache_path"] == str(tmp_path)
    # without the TensorRT provider there is nothing to cache: one error line, exit 2, before loading anything
    assert main(["transcribe", str(tiny_bundle), "x.wav", "--trt-cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --trt-cache-dir") and err.count("\n") == 1


def test_from_bundle_takes_backend_options_or_shorthands(tiny_bundle, speech_dir):
    from xlsr_edge.runtime import BackendOptions, OrtOptions, load_recognizer

    files = sorted(speech_dir.glob("*.wav"))[:2]
    with Recognizer.from_bundle(tiny_bundle, threads=1) as a:
        ref = [t.text for t in a.transcribe(files)]
    typed = BackendOptions(onnxruntime=OrtOptions(threads=1))
    with Recognizer.from_bundle(tiny_bundle, backend_options=typed) as b, load_recognizer(tiny_bundle) as c:
        assert b.runner.threads == 1 and [t.text for t in b.transcribe(files)] == ref
        assert [t.text for t in c.transcribe(files)] == ref
    with pytest.raises(TypeError, match="not both"):
        Recognizer.from_bundle(tiny_bundle, backend_options=typed, threads=2)
