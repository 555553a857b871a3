"""`xlsr-edge optimize` (issue 26): the candidate plan per instruction-set class, the choice from recorded
measurements, the budget cut-off, the bundle.json "runtime" record and how the runtime reads it back (ISA warning).

The machines are flag sets as /proc/cpuinfo prints them (xlsr_edge.runtime.cpu parses them):
Sapphire Rapids (AMX), Zen 4 (AVX512-VNNI + BF16, no AMX), Zen 3 (AVX2, no VNNI)."""

from __future__ import annotations

import logging

import pytest

from xlsr_edge.bundle import BundleManifest, ModelInfo
from xlsr_edge.errors import BundleError
from xlsr_edge.optimize.candidates import Candidate, GraphVariant, isa_class, plan
from xlsr_edge.optimize.choose import (
    CRASHED,
    FAILED_GATE,
    NOT_MEASURED,
    PASSED,
    SLOWER,
    Budget,
    Outcome,
    Speed,
    cannot_win,
    choose,
    cut_by_budget,
    finalists,
    runtime_record,
    table_lines,
)
from xlsr_edge.runtime import tuned
from xlsr_edge.runtime.cpu import CpuInfo, instruction_sets

AVX2 = "fpu sse4_2 avx fma avx2"
ZEN3 = f"{AVX2} vaes"
ZEN4 = f"{AVX2} avx512f avx512bw avx512vl avx512_vnni avx512_bf16"
SPR = f"{ZEN4} avx_vnni avx512_fp16 amx_tile amx_bf16 amx_int8"
BOTH = ("onnxruntime", "openvino")


def isa(flags: str) -> dict[str, bool]:
    return instruction_sets(flags.split())


def names(cands: list[Candidate]) -> list[str]:
    return [c.name for c in cands]


# -- the plan -----------------------------------------------------------------------------------------------------


def test_isa_classes():
    assert isa_class(isa(SPR)) == "amx"
    assert isa_class(isa(ZEN4)) == "avx512-vnni"
    assert isa_class(isa(ZEN3)) == "avx2"
    assert isa_class({"asimd": True, "asimddp": True}, "aarch64") == "arm-dotprod"


def test_amx_plan_tries_every_hint_and_fp16_on_openvino_with_full_range_int8():
    cands, skipped = plan(isa(SPR), backends=BOTH)
    assert cands[0].is_reference and cands[0].name == "fp32 @ onnxruntime"
    got = names(cands)
    for hint in ("f32", "bf16", "f16"):
        assert f"int8+fe @ openvino {hint}" in got and f"fp32 @ openvino {hint}" in got
    assert "fp16 @ openvino f16" in got and "fp16 @ openvino bf16" not in got
    # an int8 dot product: int8 attention MatMuls are worth a try (Q/DQ, with the FeatureEncoder variant)
    attn = [c for c in cands if c.graph.attention]
    assert attn and all(c.graph.name == "int8+fe+attn" and "Attention" in c.graph.quantize_ops for c in attn)
    # VNNI/AMX: one int8-dynamic kernel choice (u8s8, full range), no u8u8 / reduce-range variants
    assert [c.graph.name for c in cands if c.graph.precision == "int8-dynamic"] == [
        "int8-dynamic+fe",
        "int8-dynamic",
    ]
    # most promising first on a bf16 CPU: OpenVINO int8+FeatureEncoder with the bf16 hint right after fp32
    assert got[1] == "int8+fe @ openvino bf16"
    why = {s.name: s.reason for s in skipped}
    assert "no fp16 GEMM" in why["fp16 @ onnxruntime"]
    assert "DynamicQuantizeLinear" in why["int8-dynamic @ openvino"]


def test_avx2_plan_measures_the_int8_kernel_choices_and_skips_fp16():
    cands, skipped = plan(isa(ZEN3), backends=BOTH)
    dyn = {c.graph.name for c in cands if c.graph.precision == "int8-dynamic"}
    assert dyn == {
        "int8-dynamic",
        "int8-dynamic reduce-range",
        "int8-dynamic u8u8",
        "int8-dynamic+fe",
        "int8-dynamic+fe reduce-range",
        "int8-dynamic+fe u8u8",
    }
    u8u8 = next(c for c in cands if c.graph.name == "int8-dynamic u8u8")
    assert u8u8.graph.to_json()["weight_type"] == "uint8" and u8u8.backend == "onnxruntime"
    assert {c.precision_hint for c in cands if c.backend == "openvino"} == {"f32"}  # no bf16/f16 math
    assert not any(c.graph.attention for c in cands)  # no int8 dot product: no int8 attention
    assert not any(c.graph.precision == "fp16" for c in cands)
    assert any(s.name == "fp16" and "no fp16 arithmetic" in s.reason for s in skipped)
    # no bf16: onnxruntime first (on Zen 3 its int8-dynamic+FE was the fastest, OpenVINO's 1.2x eager)
    assert names(cands)[1] == "int8-dynamic+fe @ onnxruntime"


def test_plan_without_openvino_or_an_xlsr_cnn():
    cands, skipped = plan(isa(ZEN4), backends=("onnxruntime",), feature_encoder=False)
    assert {c.backend for c in cands} == {"onnxruntime"}
    assert not any(c.graph.feature_encoder for c in cands)
    reasons = " ".join(s.reason for s in skipped)
    assert "OpenVINO is not installed" in reasons and "feat_extract_norm" in reasons


# -- the choice -----------------------------------------------------------------------------------------------------

REF = Candidate(GraphVariant("fp32"))
OV = Candidate(GraphVariant("int8", True), "openvino", "bf16")
ORT = Candidate(GraphVariant("int8-dynamic", True))
FAST_BAD = Candidate(GraphVariant("int8", False), "openvino", "f16")
BROKEN = Candidate(GraphVariant("fp16"), "openvino", "f16")


def outcome(c, status, ratio=None, rss=1000.0, final=None, delta=0.0, reason=None) -> Outcome:
    o = Outcome(c, status=status, reason=reason)
    if ratio is not None:
        o.speed = Speed(audio_s_per_s=ratio * 3, vs_fp32=ratio, peak_rss_mb=rss)
    if final is not None:
        o.final = Speed(audio_s_per_s=final * 3, vs_fp32=final, peak_rss_mb=rss)
    if status not in (CRASHED, SLOWER):  # a crash or a slower candidate has no gate result
        o.gate = {"cer_delta_points": delta, "argmax_agreement": 0.99, "passed": status != FAILED_GATE}
    return o


def recorded() -> list[Outcome]:
    """A run as recorded: the fastest candidate failed the gate, one crashed, one was cut by the budget."""
    return [
        outcome(REF, PASSED, 1.0),
        outcome(OV, PASSED, 3.7, rss=990),
        outcome(ORT, PASSED, 2.5, rss=990),
        outcome(FAST_BAD, FAILED_GATE, None, delta=1.2, reason="CER rose 1.20 points > --max-cer-delta 0.3"),
        outcome(BROKEN, CRASHED, None, reason="openvino cannot load model.onnx: f16 unsupported"),
        Outcome(Candidate(GraphVariant("int8")), reason="--budget-minutes 5 spent (5.1 min)"),
    ]


def test_the_fastest_passing_candidate_is_chosen_never_a_failed_or_crashed_one():
    outs = recorded()
    assert choose(outs).candidate == OV
    assert [o.candidate for o in finalists(outs)] == [OV]  # ORT's 2.5 is not within 25 % of 3.7


def test_the_final_round_decides_and_a_tie_goes_to_the_smaller_peak_rss():
    outs = [
        outcome(REF, PASSED, 1.0),
        outcome(OV, PASSED, 3.7, final=3.2),
        outcome(ORT, PASSED, 3.5, final=3.4),
    ]
    assert [o.candidate for o in finalists(outs)] == [OV, ORT]
    assert choose(outs).candidate == ORT  # faster side by side, though slower in screening
    tie = [outcome(REF, PASSED, 1.0), outcome(OV, PASSED, 3.0, rss=2000), outcome(ORT, PASSED, 2.97, rss=900)]
    assert choose(tie).candidate == ORT


def test_a_candidate_that_cannot_win_is_not_gated():
    outs = [outcome(REF, PASSED, 1.0), outcome(OV, PASSED, 3.7)]
    assert "slower than int8+fe @ openvino bf16 (3.70x fp32)" in cannot_win(Speed(6.0, 2.0), outs)
    assert cannot_win(Speed(10.5, 3.5), outs) is None  # within the final round's margin: gate it
    assert "warm-up call" in cannot_win(Speed(0.9, 0.3, cut=True), [outs[0]])
    assert cannot_win(Speed(3.0, 1.0), [outcome(FAST_BAD, FAILED_GATE, None)]) is None
    slow = outcome(ORT, SLOWER, 2.0, reason="slower than int8+fe @ openvino bf16 (3.70x fp32), which passed")
    assert choose([*outs, slow]).candidate == OV
    lines = table_lines(record_for([*outs, slow])["candidates"])
    assert any(x.startswith("int8-dynamic+fe @ onnxruntime") and "2.00x" in x for x in lines)
    assert any(x.startswith("slower: int8-dynamic+fe @ onnxruntime: slower than") for x in lines)


def test_nothing_passing_chooses_the_fp32_reference():
    outs = [outcome(REF, PASSED, 1.0), outcome(FAST_BAD, FAILED_GATE, None, delta=2.0, reason="CER rose")]
    assert choose(outs).candidate.is_reference


def test_budget_cut_off_marks_the_rest_not_measured():
    now = [0.0]
    budget = Budget(2.0, clock=lambda: now[0])
    outs = [outcome(REF, PASSED, 1.0), Outcome(OV), Outcome(ORT)]
    assert not budget.spent()
    now[0] = 121.0
    assert budget.spent()
    cut = cut_by_budget(outs, budget)
    assert [o.candidate for o in cut] == [OV, ORT]
    assert all(o.status == NOT_MEASURED and "--budget-minutes 2 spent (2.0 min)" in o.reason for o in cut)
    assert choose(outs).candidate.is_reference
    assert not Budget(None).spent()


MACHINE = {
    "cpu": "Intel(R) Xeon(R) Processor",
    "arch": "x86_64",
    "instruction_sets": isa(SPR),
    "usable_cpus": 2,
}


def record_for(outs: list[Outcome]) -> dict:
    from xlsr_edge.optimize.candidates import Skipped

    skipped = [Skipped("fp16 @ onnxruntime", "no fp16 GEMM")]
    return runtime_record(choose(outs), outs, skipped, threads=1, machine=MACHINE, measured={"seconds": 10.0})


def test_runtime_record_lists_every_candidate_with_why_and_the_table_shows_them():
    rec = record_for(recorded())
    assert (rec["backend"], rec["precision_hint"], rec["threads"]) == ("openvino", "bf16", 1)
    assert rec["machine"] == {k: MACHINE[k] for k in ("cpu", "arch", "instruction_sets")}
    by = {c["name"]: c for c in rec["candidates"]}
    assert by["int8+fe @ openvino bf16"]["status"] == "chosen"
    assert by["fp32 @ onnxruntime"]["cer_delta_points"] == 0.0
    assert (
        by["int8 @ openvino f16"]["status"] == FAILED_GATE
        and by["int8 @ openvino f16"]["cer_delta_points"] == 1.2
    )
    assert by["fp16 @ openvino f16"]["status"] == CRASHED
    assert by["int8 @ onnxruntime"]["status"] == NOT_MEASURED
    assert by["fp16 @ onnxruntime"]["status"] == "skipped"
    lines = table_lines(rec["candidates"])
    assert "<- chosen" in next(x for x in lines if x.startswith("int8+fe @ openvino bf16"))
    text = "\n".join(lines)
    assert "failed gate: int8 @ openvino f16 (CER Δ +1.20 pts): CER rose 1.20 points" in text
    assert "crashed: fp16 @ openvino f16: openvino cannot load" in text
    assert "not measured: int8 @ onnxruntime: --budget-minutes 5 spent" in text


def manifest_json(runtime) -> dict:
    info = ModelInfo(["<pad>", "a", "|"], 0, "|", None, 16000, True, "layer", [10, 3], [5, 2], True)
    data = BundleManifest(model=info).to_json()
    if runtime is not None:
        data["runtime"] = runtime
    return data


def test_bundle_json_validates_the_runtime_section_and_old_bundles_have_none():
    rec = record_for(recorded())
    assert BundleManifest.from_json(manifest_json(rec)).runtime == rec
    assert BundleManifest.from_json(manifest_json(None)).runtime is None
    assert "runtime" not in BundleManifest.from_json(manifest_json(None)).to_json()
    for bad, field in [
        ({**rec, "backend": "cuda"}, '"runtime.backend"'),
        ({**rec, "threads": 0}, '"runtime.threads"'),
        ({**rec, "precision_hint": "int4"}, '"runtime.precision_hint"'),
        (
            {**rec, "machine": {"instruction_sets": {"AMX-INT8": "yes"}}},
            '"runtime.machine.instruction_sets.AMX-INT8"',
        ),
        ({**rec, "candidates": [1]}, '"runtime.candidates[0]"'),
        ([], '"runtime"'),
    ]:
        with pytest.raises(BundleError, match=field.replace(".", r"\.").replace("[", r"\[")):
            BundleManifest.from_json(manifest_json(bad))


# -- the runtime reads it back ------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(tuned, "_warned", set())


def test_recorded_runtime_is_the_default_and_explicit_values_win():
    rec = record_for(recorded())
    here = CpuInfo("x86_64", "Intel(R) Xeon(R) Processor", frozenset(SPR.split()))
    defaults = tuned.runtime_defaults(rec, "b", backend=None, threads=None, runner_kwargs={}, cpu=here)
    assert defaults == ("openvino", 1, {"precision_hint": "bf16"})
    explicit = tuned.runtime_defaults(
        rec, "b", backend="openvino", threads=2, runner_kwargs={"precision_hint": "f32"}, cpu=here
    )
    assert explicit == ("openvino", 2, {"precision_hint": "f32"})
    assert tuned.runtime_defaults(
        rec, "b", backend="onnxruntime", threads=None, runner_kwargs={}, cpu=here
    ) == (
        "onnxruntime",
        1,
        {},
    )
    assert tuned.runtime_defaults(None, "b", backend=None, threads=None, runner_kwargs={}) == (
        "onnxruntime",
        None,
        {},
    )


def test_another_cpu_warns_once_suggests_optimize_and_never_fails(caplog):
    rec = record_for(recorded())
    zen3 = CpuInfo("x86_64", "AMD EPYC 7B13", frozenset(ZEN3.split()))
    with caplog.at_level(logging.WARNING, logger="xlsr_edge.runtime.tuned"):
        first = tuned.runtime_defaults(rec, "tr-opt", backend=None, threads=None, runner_kwargs={}, cpu=zen3)
        again = tuned.runtime_defaults(rec, "tr-opt", backend=None, threads=None, runner_kwargs={}, cpu=zen3)
    # still the recorded backend and threads, but OpenVINO picks the hint from this CPU (no bf16 math on Zen 3)
    assert first == again == ("openvino", 1, {"precision_hint": "auto"})
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "lacks AVX512F, AVX-VNNI, AVX512-VNNI" in warnings[0] and "AMX-INT8" in warnings[0]
    assert "run `xlsr-edge optimize` on this machine" in warnings[0]
    same = CpuInfo("x86_64", "Intel(R) Xeon(R) Processor", frozenset(SPR.split()))
    assert tuned.mismatch(tuned.TunedRuntime.from_record(rec), same) is None
    arm = CpuInfo("aarch64", "Arm Cortex-A78AE", frozenset({"asimd", "asimddp"}))
    assert "optimized on x86_64" in tuned.mismatch(tuned.TunedRuntime.from_record(rec), arm)


def test_an_openvino_choice_runs_on_onnxruntime_where_openvino_is_missing(monkeypatch, caplog):
    rec = record_for(recorded())
    here = CpuInfo("x86_64", "Intel(R) Xeon(R) Processor", frozenset(SPR.split()))
    monkeypatch.setattr(tuned, "_installed", lambda module: False)
    with caplog.at_level(logging.WARNING, logger="xlsr_edge.runtime.tuned"):
        got = tuned.runtime_defaults(rec, "b", backend=None, threads=None, runner_kwargs={}, cpu=here)
    assert got == ("onnxruntime", 1, {})
    assert "OpenVINO, which is not installed here" in caplog.text


def test_isa_differences():
    assert tuned.isa_differences({"AVX2": True, "AMX-INT8": True}, {"AVX2": True, "AMX-INT8": False}) == (
        ["AMX-INT8"],
        [],
    )
    assert tuned.isa_differences({"AVX2": True}, {"AVX2": True, "AVX-VNNI": True}) == ([], ["AVX-VNNI"])


# -- end to end on the tiny model -----------------------------------------------------------------------------------


def test_optimize_writes_one_bundle_whose_runtime_transcribe_uses(tiny_ckpt, tmp_path, capsys):
    """Two candidates beside the fp32 reference, tiny timings; the bundle holds the chosen graph and its record."""
    import json

    from xlsr_edge.cli import main
    from xlsr_edge.data import CLIPS_MANIFEST, default_clips
    from xlsr_edge.runtime import Recognizer
    from xlsr_edge.runtime.cpu import read_cpuinfo

    out, keep = tmp_path / "opt", tmp_path / "kept"
    args = [
        "optimize",
        str(tiny_ckpt),
        "-o",
        str(out),
        "--dev",
        str(CLIPS_MANIFEST),
        "--max-cer-delta",
        "100",
    ]
    args += ["--threads", "1", "--seconds", "0.5", "--repeat", "1", "--keep-candidates", str(keep)]
    args += ["--candidates", "int8-dynamic @ onnxruntime", "int8 @ onnxruntime"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    rt = json.loads((out / "bundle.json").read_text(encoding="utf-8"))["runtime"]
    data = json.loads((out / "bundle.json").read_text(encoding="utf-8"))
    assert rt["threads"] == 1 and rt["backend"] == "onnxruntime" and rt["precision_hint"] is None
    assert rt["machine"]["instruction_sets"] == read_cpuinfo().instruction_sets()
    by = {c["name"]: c for c in rt["candidates"]}
    assert {"fp32 @ onnxruntime", "int8-dynamic @ onnxruntime", "int8 @ onnxruntime"} <= set(by)
    chosen = [c for c in rt["candidates"] if c["status"] == "chosen"]
    assert len(chosen) == 1 and chosen[0]["name"] == rt["chosen"]
    assert data["precision"] == chosen[0]["precision"]  # the bundle holds the chosen graph
    assert all(c["vs_fp32"] > 0 for c in rt["candidates"] if c["status"] in ("chosen", "passed"))
    assert any(
        c["status"] == "skipped" and c["reason"] == "not selected (--candidates)" for c in rt["candidates"]
    )
    assert "<- chosen" in printed and f"wrote {out}" in printed
    assert sorted(p.name for p in keep.iterdir()) == ["fp32", "int8", "int8-dynamic"]
    for kept in keep.iterdir():  # each kept variant records where it ran fastest here (bench runs it there)
        kept_rt = json.loads((kept / "bundle.json").read_text(encoding="utf-8"))["runtime"]
        assert kept_rt["backend"] == "onnxruntime" and kept_rt["threads"] == 1
    # the runtime reads the record: backend and threads by default, explicit values win
    with Recognizer.from_bundle(out) as rec:
        assert rec.runner.name == "onnxruntime" and rec.runner.threads == 1
        assert rec.transcribe([default_clips()[0]])[0].text is not None
    with Recognizer.from_bundle(out, threads=2) as rec:
        assert rec.runner.threads == 2
    with Recognizer.from_bundle(out, backend="onnxruntime") as rec:  # the recorded threads still apply
        assert rec.runner.threads == 1
    # bench without --backend runs the bundle on the runtime it records (the label says which)
    bench = ["bench", str(out), "--seconds", "0.5", "--batch", "1", "--threads", "1", "--repeat", "1"]
    assert main([*bench, "--warmup", "0", "-o", str(tmp_path / "bench")]) == 0
    bench_rows = json.loads((tmp_path / "bench" / "results.json").read_text(encoding="utf-8"))["rows"]
    assert [r["engine"] for r in bench_rows] == ["opt (onnxruntime)"]
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert f"runtime       {rt['chosen']}" in shown and "<- chosen" in shown


def test_a_spent_budget_measures_only_the_reference_and_lists_the_rest(tiny_ckpt, tmp_path, capsys):
    import json

    from xlsr_edge.cli import main
    from xlsr_edge.data import CLIPS_MANIFEST

    out = tmp_path / "opt"
    args = ["optimize", str(tiny_ckpt), "-o", str(out), "--dev", str(CLIPS_MANIFEST), "--threads", "1"]
    args += [
        "--seconds",
        "0.5",
        "--repeat",
        "1",
        "--budget-minutes",
        "0.0001",
        "--candidates",
        "int8-dynamic*",
    ]
    assert main(args) == 0
    data = json.loads((out / "bundle.json").read_text(encoding="utf-8"))
    by = {c["name"]: c for c in data["runtime"]["candidates"]}
    assert data["precision"] == "fp32" and by["fp32 @ onnxruntime"]["status"] == "chosen"
    assert by["int8-dynamic @ onnxruntime"]["status"] == "not measured"
    assert "--budget-minutes 0.0001 spent" in by["int8-dynamic @ onnxruntime"]["reason"]
    assert "not measured: int8-dynamic @ onnxruntime: --budget-minutes" in capsys.readouterr().out
