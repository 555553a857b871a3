"""TensorRT: unit tests that need no GPU (profiles, sidecar compatibility, refusal) and GPU tests that skip."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

from xlsr_edge.bundle import ModelInfo, read_manifest
from xlsr_edge.cli import main
from xlsr_edge.errors import BundleError
from xlsr_edge.runtime.tensorrt import (
    DeviceInfo,
    EngineProfile,
    TensorRTRunner,
    check_engine,
    engine_compatibility,
    network_flags,
)

INFO = ModelInfo(
    ["<pad>", "a"], 0, "|", None, 16000, True, "layer", [10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2], True
)
SIDECAR = {
    "tensorrt_version": "10.3.0",
    "compute_capability": "8.7",
    "gpu_name": "Orin",
    "file": "engine.plan",
}


def _has_gpu_trt() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed (pip install 'xlsr-edge[trt]')"
    try:
        from xlsr_edge.runtime.tensorrt import current_device

        current_device()
    except Exception as exc:  # no GPU, no cuda-python
        return f"no usable GPU: {exc}"
    return None


GPU_SKIP = _has_gpu_trt()


def test_profile_shapes_follow_seconds_and_the_conv_stack():
    shapes = EngineProfile(min_seconds=0.5, opt_seconds=10, max_seconds=30, max_batch=16, opt_batch=4).shapes(
        INFO
    )
    assert shapes["min"] == (1, 8000) and shapes["opt"] == (4, 160000) and shapes["max"] == (16, 480000)
    assert shapes["frames"] == {"min": INFO.frames_for(8000), "opt": 499, "max": 1499}
    # the default minimum is one frame's receptive field, so every valid input fits
    assert EngineProfile().shapes(INFO)["min"] == (1, 400)
    assert EngineProfile().shapes(INFO)["frames"]["min"] == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(min_seconds=0),
        dict(opt_seconds=40),
        dict(min_seconds=5, opt_seconds=2),
        dict(max_batch=0),
        dict(opt_batch=9),
    ],
)
def test_bad_profiles_are_refused(kwargs):
    with pytest.raises(ValueError):
        EngineProfile(**kwargs)


def test_compatibility_decision():
    assert engine_compatibility(SIDECAR, DeviceInfo("10.3.0", "8.7", "Orin")) is None
    other_cc = engine_compatibility(SIDECAR, DeviceInfo("10.3.0", "9.0", "H100"))
    assert "compute capability 8.7" in other_cc and "9.0" in other_cc
    other_trt = engine_compatibility(SIDECAR, DeviceInfo("10.7.0", "8.7", "Orin"))
    assert "TensorRT 10.3.0" in other_trt and "10.7.0" in other_trt
    assert engine_compatibility(SIDECAR, DeviceInfo("10.3", "8.7", "Orin")) is None  # 10.3 == 10.3.0


def test_strongly_typed_flag_depends_on_the_version():
    class Flag:
        STRONGLY_TYPED = 1

    class FakeTrt:
        NetworkDefinitionCreationFlag = Flag

    assert network_flags(FakeTrt, "10.3.0") == 1 << 1
    assert network_flags(FakeTrt, "11.4.0") == 0  # always strongly typed; the flag is deprecated


def _bundle_with_fake_engine(tiny_bundle, tmp_path):
    from xlsr_edge.bundle import write_manifest

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    (copy / "engine.plan").write_bytes(b"not really an engine")
    manifest = read_manifest(copy)
    manifest.extra["engine"] = dict(
        SIDECAR, sha256="0" * 64, profile={"shapes": {"min": [1, 400], "max": [4, 160000]}}
    )
    write_manifest(copy, manifest)
    return copy


def test_runner_refuses_an_engine_for_another_gpu(tiny_bundle, tmp_path):
    copy = _bundle_with_fake_engine(tiny_bundle, tmp_path)
    runner = TensorRTRunner(copy, read_manifest(copy), device=DeviceInfo("10.3.0", "9.0", "H100"))
    with pytest.raises(BundleError, match="rebuild it on this device with `xlsr-edge build-engine"):
        runner.activate()
    assert runner.max_batch == 4 and runner.max_samples == 160000
    with pytest.raises(BundleError, match="no TensorRT engine"):
        check_engine(read_manifest(tiny_bundle), DeviceInfo("10.3.0", "8.7", "Orin"))


@pytest.mark.skipif(
    GPU_SKIP is None, reason="TensorRT and a GPU are present: the refusal path does not apply"
)
def test_build_engine_without_tensorrt_fails_at_once_and_writes_nothing(tiny_bundle, tmp_path, capsys):
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    assert main(["build-engine", str(copy), "--max-seconds", "20"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert "xlsr-edge[trt]" in err[0] or "GPU" in err[0]
    assert "JetPack" in err[0] or "GPU" in err[0]
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before


def test_bad_build_options_are_user_errors(tiny_bundle, capsys):
    assert main(["build-engine", str(tiny_bundle), "--min-seconds", "5", "--opt-seconds", "1"]) == 2
    assert "--min-seconds" in capsys.readouterr().err


def test_recognizer_fits_windows_and_batches_into_the_profile(tiny_bundle, speech_dir):
    """A runner with profile limits gets only windows and batches inside them, and the same transcript."""
    from xlsr_edge.runtime import Recognizer, TranscribeOptions

    seen = []
    with Recognizer.from_bundle(tiny_bundle) as rec:
        reference = rec.transcribe(sorted(speech_dir.iterdir()), TranscribeOptions(chunk_seconds=None))
        inner = rec.runner.infer

        def limited(values, mask):
            seen.append(values.shape)
            return inner(values, mask)

        rec.runner.infer = limited
        rec.runner.max_batch, rec.runner.max_samples = 2, 16000 * 3
        limited_out = rec.transcribe(
            sorted(speech_dir.iterdir()), TranscribeOptions(batch_size=8, chunk_seconds=30)
        )
    assert all(b <= 2 and n <= 16000 * 3 for b, n in seen)
    assert any(n > 16000 * 2 for _, n in seen)  # long clips were chunked, not dropped
    assert [t.duration for t in limited_out] == [t.duration for t in reference]
    import jiwer

    assert jiwer.cer(" ".join(t.text for t in reference), " ".join(t.text for t in limited_out)) < 0.02


# -- GPU tests: run where the device tool lends a GPU --------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(GPU_SKIP is not None, reason=GPU_SKIP or "")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_transcripts_equal_the_onnxruntime_bundle(
    tiny_ckpt, tiny_bundle, speech_dir, tmp_path, precision
):
    from xlsr_edge.export import ExportOptions, export_bundle
    from xlsr_edge.runtime import Recognizer
    from xlsr_edge.runtime.tensorrt import BuildOptions, EngineProfile, build_engine

    bundle = tmp_path / precision
    export_bundle(tiny_ckpt, bundle, ExportOptions(precision=precision))
    sidecar = build_engine(bundle, BuildOptions(profile=EngineProfile(max_seconds=8, max_batch=4)))
    assert json.loads((bundle / "bundle.json").read_text())["extra"]["engine"]["sha256"] == sidecar["sha256"]
    files = sorted(speech_dir.iterdir())
    with (
        Recognizer.from_bundle(tiny_bundle) as ref,
        Recognizer.from_bundle(bundle, backend="tensorrt") as trt,
    ):
        expected = [t.text for t in ref.transcribe(files)]
        got = [t.text for t in trt.transcribe(files)]
    import jiwer

    assert jiwer.cer(" ".join(expected), " ".join(got)) <= (0.0 if precision == "fp32" else 0.05)


@pytest.mark.skipif(
    GPU_SKIP is None, reason="TensorRT and a GPU are present: the refusal path does not apply"
)
def test_export_with_trt_engine_refuses_at_once_and_writes_nothing(tiny_ckpt, tmp_path, capsys):
    from xlsr_edge.cli import export_main

    out = tmp_path / "b"
    assert export_main([str(tiny_ckpt), "-o", str(out), "--engine", "trt", "--precision", "fp16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and ("xlsr-edge[trt]" in err[0] or "GPU" in err[0])
    assert list(tmp_path.iterdir()) == []
