"""OpenVINO backend (issue 19): precision hint from the CPU flags, the missing extra, padded-batch exactness against
onnxruntime, the compiled-model cache, the CLI flags, and `bench` with several backends and the CPU's ISA."""

from __future__ import annotations

import builtins
import importlib.util
import json

import numpy as np
import pytest

from tests.conftest import speech_arrays
from xlsr_edge.cli import main
from xlsr_edge.errors import MissingDependencyError, XlsrEdgeError
from xlsr_edge.runtime.openvino import (
    PRECISION_HINTS,
    choose_precision_hint,
    cpu_flags,
    instruction_sets,
    resolve_precision_hint,
)

# -- pure functions: no openvino needed ------------------------------------------------------------------------

EPYC_ZEN5 = {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512bw"}
XEON_SPR = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}
XEON_ICX = {"avx2", "avx512f", "avx512_vnni"}  # Ice Lake: VNNI but no bf16


@pytest.mark.parametrize(
    ("flags", "hint"),
    [
        (EPYC_ZEN5, "bf16"),  # AVX512-BF16
        (XEON_SPR, "bf16"),  # AMX
        ({"amx_bf16"}, "bf16"),
        (XEON_ICX, "f32"),
        ({"avx2", "fma"}, "f32"),
        (set(), "f32"),
        ({"fp", "asimd", "asimddp", "fphp", "asimdhp"}, "f16"),  # ARM with fp16 arithmetic (Jetson Orin)
        ({"fp", "asimd", "crc32"}, "f32"),  # ARM without it (Cortex-A72, Raspberry Pi 4)
    ],
)
def test_precision_hint_follows_the_cpu_flags(flags, hint):
    assert choose_precision_hint(flags) == hint
    assert resolve_precision_hint("auto", flags) == hint
    assert resolve_precision_hint(None, flags) == hint


def test_forced_precision_hint_and_bad_values():
    assert resolve_precision_hint("f32", EPYC_ZEN5) == "f32"
    assert resolve_precision_hint("BF16", XEON_ICX) == "bf16"  # forcing is the user's choice
    with pytest.raises(XlsrEdgeError, match="--precision-hint must be one of"):
        resolve_precision_hint("int4", EPYC_ZEN5)


def test_cli_precision_hint_choices_match_the_runtime():
    from xlsr_edge.commands.common import PRECISION_HINTS as CLI_HINTS

    assert CLI_HINTS == PRECISION_HINTS


def test_cpu_flags_and_instruction_sets_from_cpuinfo(tmp_path):
    x86 = tmp_path / "cpuinfo"
    x86.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    flags = cpu_flags(x86)
    assert {"avx512_vnni", "avx512_bf16"} <= flags and "fpu" in flags
    isa = instruction_sets(flags)
    assert isa["AVX512-VNNI"] and isa["AVX512-BF16"] and not isa["AMX-BF16"] and not isa["AMX-INT8"]
    arm = tmp_path / "cpuinfo-arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\n")
    assert cpu_flags(arm) == {"fp", "asimd", "asimddp"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert set(instruction_sets()) == set(isa)  # this machine: same keys


# -- the missing extra -----------------------------------------------------------------------------------------


@pytest.fixture
def no_openvino(monkeypatch):
    """Make `import openvino` fail as it does where the extra is not installed."""
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    import sys

    for mod in [m for m in sys.modules if m == "openvino" or m.startswith("openvino.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    real_import_module = importlib.import_module

    def fake_import_module(name, package=None):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import_module(name, package)

    monkeypatch.setattr(importlib, "import_module", fake_import_module)


def test_missing_extra_names_it(no_openvino, tiny_bundle):
    from xlsr_edge.runtime import Recognizer

    with pytest.raises(MissingDependencyError, match=r"pip install 'xlsr-edge\[openvino\]'"):
        Recognizer.from_bundle(tiny_bundle, backend="openvino")


def test_missing_extra_is_one_error_line_exit_2(no_openvino, tiny_bundle, capsys):
    from xlsr_edge.data import default_clips

    code = main(["transcribe", str(tiny_bundle), str(default_clips()[0]), "--backend", "openvino"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [err[0]] and err[0].startswith("error: ") and "xlsr-edge[openvino]" in err[0], err


# -- CLI flags (no openvino needed: refused before anything is loaded) ------------------------------------------


def test_openvino_flags_need_the_openvino_backend(tiny_bundle, capsys):
    from xlsr_edge.data import default_clips

    code = main(["transcribe", str(tiny_bundle), str(default_clips()[0]), "--precision-hint", "f32"])
    err = capsys.readouterr().err.strip()
    assert (
        code == 2
        and err == "error: --precision-hint, --cache-dir and --static-shapes apply to --backend openvino"
    )


def test_backend_aliases_and_lists():
    import argparse

    from xlsr_edge.commands.common import backend_list, backend_name

    assert backend_name("OV") == "openvino" and backend_name("trt") == "tensorrt"
    assert backend_list("ort,ov,ort") == ["onnxruntime", "openvino"]
    with pytest.raises(argparse.ArgumentTypeError, match="invalid choice"):
        backend_list("ort,tflite")


# -- running on OpenVINO -----------------------------------------------------------------------------------------

needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None,
    reason="openvino is not installed (pip install '.[openvino]')",
)


def _padded_batch(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    n = max(len(a) for a in arrays)
    x = np.zeros((len(arrays), n), np.float32)
    m = np.zeros((len(arrays), n), np.int64)
    for i, a in enumerate(arrays):
        x[i, : len(a)] = (a - a.mean()) / np.sqrt(a.var() + 1e-7)
        m[i, : len(a)] = 1
    return x, m


@pytest.fixture(scope="module")
def runners(tiny_bundle, tmp_path_factory):
    from xlsr_edge.bundle import read_manifest
    from xlsr_edge.runtime import make_runner

    manifest = read_manifest(tiny_bundle)
    cache = tmp_path_factory.mktemp("ov-cache")
    ort = make_runner("onnxruntime", tiny_bundle, manifest, threads=1).activate()
    ov = make_runner("openvino", tiny_bundle, manifest, threads=1, precision_hint="f32", cache_dir=cache)
    yield ort, ov.activate(), cache
    ort.deactivate()
    ov.deactivate()


@needs_openvino
def test_padded_batch_logits_equal_onnxruntime(runners, speech_dir):
    ort, ov, _ = runners
    arrays = speech_arrays(speech_dir, 3)
    assert len({len(a) for a in arrays}) == 3  # really padded
    x, m = _padded_batch(arrays)
    ref_logits, ref_lengths = ort.infer(x, m)
    logits, lengths = ov.infer(x, m)
    assert logits.dtype == np.float32 and lengths.dtype == np.int64
    np.testing.assert_array_equal(lengths, ref_lengths)
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(logits[i, :n], ref_logits[i, :n], atol=2e-4, rtol=0)
        # each clip alone gives what it gives inside the padded batch
        alone, _ = ov.infer(x[i : i + 1, : m[i].sum()], m[i : i + 1, : m[i].sum()])
        np.testing.assert_allclose(alone[0, :n], logits[i, :n], atol=2e-4, rtol=0)


@needs_openvino
def test_transcripts_equal_onnxruntime(tiny_bundle, speech_dir, tmp_path):
    from xlsr_edge.runtime import Recognizer, TranscribeOptions

    files = sorted(str(p) for p in speech_dir.glob("*.wav"))
    opts = TranscribeOptions(batch_size=4)  # padded batches
    with Recognizer.from_bundle(tiny_bundle, threads=1) as rec:
        ref = [t.text for t in rec.transcribe(files, opts)]
    ov = {"backend": "openvino", "threads": 1, "precision_hint": "f32", "cache_dir": tmp_path}
    with Recognizer.from_bundle(tiny_bundle, **ov) as rec:
        assert rec.runner.name == "openvino" and rec.runner.actual_precision() == "f32"
        got = [t.text for t in rec.transcribe(files, opts)]
    assert got == ref and any(ref)


@needs_openvino
def test_compiled_model_cache_is_written_and_reused(runners, tiny_bundle):
    from xlsr_edge.runtime.openvino import OpenVinoRunner

    _, ov, cache = runners
    blobs = [p for p in cache.rglob("*") if p.is_file()]
    assert blobs, "CACHE_DIR holds the compiled model after the first load"
    again = OpenVinoRunner(tiny_bundle / "model.onnx", threads=1, precision_hint="f32", cache_dir=cache)
    again.activate()
    assert sorted(p for p in cache.rglob("*") if p.is_file()) == sorted(blobs)  # read, not rewritten
    x = np.zeros((1, 8000), np.float32)
    np.testing.assert_allclose(again.infer(x, None)[0], ov.infer(x, None)[0], atol=1e-6)
    again.deactivate()
    off = OpenVinoRunner(tiny_bundle / "model.onnx", cache_dir=None)
    assert "CACHE_DIR" not in off.config()


@needs_openvino
def test_static_shapes_compile_repeated_shapes_only_and_match_the_dynamic_model(
    tiny_bundle, speech_dir, caplog
):
    """--static-shapes N: a shape's second call gets its own static compile (up to N shapes); a one-off shape
    never does; the static compile's logits equal the dynamic one's (f32 hint)."""
    from xlsr_edge.runtime.openvino import OpenVinoRunner

    a, b, c = speech_arrays(speech_dir, 3)
    x, m = _padded_batch([a, b])
    kw = {"threads": 1, "precision_hint": "f32", "cache_dir": None}
    ref = OpenVinoRunner(tiny_bundle / "model.onnx", **kw).activate()
    ov = OpenVinoRunner(tiny_bundle / "model.onnx", static_shapes=1, **kw).activate()
    try:
        with caplog.at_level("INFO", logger="xlsr_edge"):
            first = ov.infer(x, m)
            assert not ov._static  # seen once: the dynamic model ran it
            one_off = ov.infer(c[None], None)
            second = ov.infer(x, m)
            third = ov.infer(x, m)
            assert list(ov._static) == [x.shape]  # compiled on the second call
            ov.infer(c[None], None)  # repeated too, but the one static slot is taken
            assert list(ov._static) == [x.shape]
        assert sum("for input shape [2, " in r.getMessage() for r in caplog.records) == 1
        want = ref.infer(x, m)
        for got in (first, second, third):
            np.testing.assert_array_equal(got[1], want[1])
            for i, n in enumerate(want[1]):
                np.testing.assert_allclose(got[0][i, :n], want[0][i, :n], atol=1e-4, rtol=0)
        np.testing.assert_allclose(one_off[0], ref.infer(c[None], None)[0], atol=1e-4, rtol=0)
    finally:
        ov.deactivate()
        ref.deactivate()
    assert not ov._static  # released with the runner


@needs_openvino
def test_static_shapes_give_a_long_files_windows_one_compile_and_the_same_transcript(
    tiny_bundle, speech_dir, caplog
):
    """A long recording in equal windows (--chunk-seconds): the repeated window shape gets one static compile,
    and the transcript is the dynamic model's."""
    from xlsr_edge.runtime import Recognizer, TranscribeOptions

    long = np.concatenate(speech_arrays(speech_dir, 6) * 2)  # ~14 s: a dozen 1 s windows
    opts = TranscribeOptions(batch_size=1, chunk_seconds=1.0, context_seconds=0.5)
    ov = {"backend": "openvino", "threads": 1, "precision_hint": "f32", "cache_dir": None}
    with Recognizer.from_bundle(tiny_bundle, **ov) as rec:
        want = rec.transcribe([long], opts)[0].text
    with caplog.at_level("INFO", logger="xlsr_edge"):
        with Recognizer.from_bundle(tiny_bundle, static_shapes=2, **ov) as rec:
            got = rec.transcribe([long], opts)[0].text
            shapes = list(rec.runner._static)
    assert got == want and want
    assert len(long) > 8 * 16000 and len(shapes) == 1  # the middle windows; first and last are one-offs
    assert sum("for input shape" in r.getMessage() for r in caplog.records) == 1


def test_static_shapes_flag_is_checked(tiny_bundle, capsys):
    from xlsr_edge.runtime import BackendOptions

    assert BackendOptions.from_keywords("openvino", static_shapes=3).openvino.static_shapes == 3
    for bad in (-1, 17, 1.5, "x"):
        with pytest.raises(XlsrEdgeError, match="static_shapes must be"):
            BackendOptions.from_keywords("openvino", static_shapes=bad)
    with pytest.raises(SystemExit) as exit_:
        main(["transcribe", str(tiny_bundle), "x.wav", "--backend", "openvino", "--static-shapes", "99"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --static-shapes must be <= 16, got 99"
    # without --backend the bundle decides: one that runs on onnxruntime refuses the OpenVINO-only flag
    from xlsr_edge.bundle import read_manifest

    with pytest.raises(XlsrEdgeError, match="--static-shapes apply to --backend openvino"):
        BackendOptions.from_keywords(None, static_shapes=1).resolve(read_manifest(tiny_bundle), tiny_bundle)


def test_bench_lists_each_openvino_engine_also_static_and_warms_it_past_the_compile(tiny_bundle):
    """benchmarks/precision.py --ov-static-too: each OpenVINO engine twice (dynamic, static shape), side by side;
    the static one's warm-up covers the call that compiles, so no timed call includes a compile."""
    from xlsr_edge.constants import STATIC_SHAPE_REPEATS
    from xlsr_edge.measure.bench import BenchConfig, _engine_specs, _warm_up

    config = BenchConfig(bundles=[tiny_bundle], backend=["onnxruntime", "openvino"], openvino_static_too=True)
    specs = _engine_specs(config, threads=1)
    labels = [spec.label for spec, _ in specs]
    assert labels == [f"{tiny_bundle.name} (onnxruntime)", f"{tiny_bundle.name} (openvino)"] + [
        f"{tiny_bundle.name} (openvino) static"
    ]
    assert [meta["static_shapes"] for _, meta in specs] == [0, 0, 1]
    assert dict(specs[2][0].options) == {"static_shapes": 1}

    class Engine:  # counts the warm-up calls of each engine
        def __init__(self, spec):
            self.spec, self.info, self.calls = spec, {}, 0

        def run(self, batch, seconds):
            self.calls += 1
            return {"peak_rss_bytes": 1}

    engines = [Engine(spec) for spec, _ in specs]
    _warm_up(engines, [(1, 1.0)], warmup=1)
    assert [e.calls for e in engines] == [1, 1, STATIC_SHAPE_REPEATS]


@needs_openvino
def test_default_hint_is_the_cpus(tiny_bundle, tmp_path):
    from xlsr_edge.runtime.openvino import OpenVinoRunner

    r = OpenVinoRunner(tiny_bundle / "model.onnx", threads=2, cache_dir=tmp_path)
    assert r.precision_hint == choose_precision_hint(cpu_flags())
    assert r.config()["INFERENCE_NUM_THREADS"] == 2 and r.config()["CACHE_DIR"] == str(tmp_path)


@pytest.fixture(scope="module")
def int8_cnn_bundle(tiny_ckpt, tmp_path_factory):
    from xlsr_edge.export import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("ov-int8") / "int8-cnn"
    opts = ExportOptions(
        precision="int8", quantize_ops=("MatMul", "Gemm", "FeatureEncoder"), max_cer_delta=100.0
    )
    export_bundle(tiny_ckpt, out, opts)
    return out


@needs_openvino
def test_int8_qdq_with_feature_encoder_runs_on_openvino(int8_cnn_bundle, speech_dir, tmp_path):
    """The Q/DQ graph (CNN layers 1-6 included) on OpenVINO: same lengths, near onnxruntime's logits."""
    from xlsr_edge.bundle import read_manifest
    from xlsr_edge.runtime import make_runner

    manifest = read_manifest(int8_cnn_bundle)
    x, m = _padded_batch(speech_arrays(speech_dir, 3))
    with make_runner("onnxruntime", int8_cnn_bundle, manifest, threads=1) as ort:
        ref, ref_len = ort.infer(x, m)
    runner = make_runner(
        "openvino", int8_cnn_bundle, manifest, threads=1, precision_hint="f32", cache_dir=tmp_path
    )
    with runner as ov:
        got, lengths = ov.infer(x, m)
    np.testing.assert_array_equal(lengths, ref_len)
    valid = np.concatenate([np.ones(n, bool) for n in lengths])
    a = np.concatenate([got[i, :n] for i, n in enumerate(lengths)])
    b = np.concatenate([ref[i, :n] for i, n in enumerate(lengths)])
    assert valid.all() and (a.argmax(-1) == b.argmax(-1)).mean() > 0.9
    assert np.abs(a - b).max() < 0.25 * np.abs(b).max()  # int8 rounding differs between engines, not more


@needs_openvino
def test_eval_and_stream_run_on_openvino(tiny_bundle, tmp_path, capsys):
    from xlsr_edge.data import CLIPS_MANIFEST, default_clips

    args = ["--backend", "ov", "--precision-hint", "f32", "--cache-dir", str(tmp_path), "--threads", "1"]
    assert main(["eval", str(tiny_bundle), str(CLIPS_MANIFEST), "--json", *args]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["utterances"] == len(default_clips())
    assert main(["stream", str(tiny_bundle), str(default_clips()[0]), *args]) == 0


@needs_openvino
def test_bench_runs_each_bundle_on_each_backend_and_reports_the_isa(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(
        [
            "bench",
            str(tiny_bundle),
            "--backend",
            "ort,ov",
            "--precision-hint",
            "f32",
            "--cache-dir",
            str(tmp_path / "ov-cache"),
            "--seconds",
            "1",
            "--batch",
            "1",
            "--threads",
            "1",
            "--repeat",
            "1",
            "--warmup",
            "1",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    rows = {r["engine"]: r for r in results["rows"]}
    assert set(rows) == {"layer (onnxruntime)", "layer (openvino)"}
    assert rows["layer (openvino)"]["backend"] == "openvino"
    assert rows["layer (openvino)"]["inference_precision"] == "f32"
    isa = results["environment"]["instruction_sets"]
    assert {"AVX512-VNNI", "AVX512-BF16", "AMX-BF16"} <= set(isa)
    assert "AVX512" in printed or "no AVX512" in printed or "AVX2" in printed
    assert results["load_during_rounds"] and len(results["load_during_rounds"][0]["loadavg_before"]) == 3


@needs_openvino
def test_the_accuracy_gate_can_run_the_converted_graph_on_openvino(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "b"
    code = main(
        [
            "export",
            str(tiny_ckpt),
            "-o",
            str(out),
            "--precision",
            "int8",
            "--quantize-ops",
            "MatMul",
            "Gemm",
            "FeatureEncoder",
            "--gate-backend",
            "openvino",
            "--max-cer-delta",
            "100",
        ]
    )
    assert code == 0, capsys.readouterr().err
    gate = json.loads((out / "bundle.json").read_text())["extra"]["precision_report"]["gate"]
    assert gate["backend"] == "openvino" and gate["passed"]
    assert main(["inspect", str(out)]) == 0
    assert "int8 graph run on openvino" in capsys.readouterr().out


def _group_conv_graph(path, channels_per_group: int, groups: int = 4):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c = channels_per_group * groups
    w = np.zeros((c, channels_per_group, 5), dtype=np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=groups, pads=[2, 2], kernel_shape=[5])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_auto_hint_on_amx_keeps_f32_for_narrow_grouped_convolutions(tmp_path):
    """OpenVINO's AMX bf16 grouped convolution is wrong below 13 channels per group (the demo model has 12)."""
    ov = pytest.importorskip("openvino")
    from xlsr_edge.runtime.openvino import amx_safe_hint, narrow_group_convolutions

    core = ov.Core()
    narrow = narrow_group_convolutions(core.read_model(str(_group_conv_graph(tmp_path / "a.onnx", 12))))
    assert len(narrow) == 1
    assert narrow_group_convolutions(core.read_model(str(_group_conv_graph(tmp_path / "b.onnx", 16)))) == []
    amx = {"avx512_bf16", "amx_bf16"}
    hint, warning = amx_safe_hint("auto", "bf16", amx, narrow)
    assert hint == "f32" and "--precision-hint f32" in warning
    hint, warning = amx_safe_hint("bf16", "bf16", amx, narrow)
    assert hint == "bf16" and "expect wrong transcripts" in warning
    assert amx_safe_hint("auto", "bf16", {"avx512_bf16"}, narrow) == (
        "bf16",
        None,
    )  # no AMX: its kernel is right
    assert amx_safe_hint("auto", "bf16", amx, []) == ("bf16", None)
