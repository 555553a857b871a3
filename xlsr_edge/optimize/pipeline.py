"""``optimize``: export the graph variants, gate and time every candidate on this machine, write ONE bundle.

1. Refuse a bad ``-o`` before any work (``xlsr_edge.outputs``), read the checkpoint, the dev manifest (the
   accuracy gate's utterances) and, for int8 Q/DQ, the calibration set.
2. Export the fp32 graph (and, for the FeatureEncoder variants, the channels-last one), each checked against
   PyTorch by the parity gate; then the model is dropped (memory for the engines).
3. For each candidate in ``candidates.plan`` order, until ``--budget-minutes`` is spent: convert its graph (once
   per graph variant, into a bundle folder of the scratch space), time it side by side with the fp32 reference
   (``measure``), and where it could still be chosen (not slower than one that passed) run the accuracy gate
   against the fp32 graph's logits (computed once) on the candidate's own backend and hint. A crash
   (conversion, load, run) is recorded with its message.
4. Re-time the finalists together, choose (``choose``), and write the chosen variant's files with
   ``bundle.json`` + ``"runtime"`` through ``atomic_output``; ``--keep-candidates DIR`` also keeps every
   variant bundle (to re-measure them with `xlsr-edge bench`).
"""

from __future__ import annotations

import fnmatch
import gc
import logging
import math
import os
import re
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xlsr_edge import __version__
from xlsr_edge.bundle import BundleManifest, write_manifest
from xlsr_edge.constants import (
    BUNDLE_JSON,
    DEFAULT_OPSET,
    MODEL_ONNX,
    MODEL_ONNX_DATA,
    PRECISION_GATE_SIZE,
    PRECISION_MIN_FRAME_AGREEMENT,
)
from xlsr_edge.errors import XlsrEdgeError
from xlsr_edge.optimize.candidates import Candidate, GraphVariant, Skipped, isa_class, plan
from xlsr_edge.optimize.choose import (
    CRASHED,
    FAILED_GATE,
    PASSED,
    SLOWER,
    Budget,
    Outcome,
    candidate_record,
    cannot_win,
    choose,
    cut_by_budget,
    finalists,
    runtime_record,
    table_lines,
)
from xlsr_edge.outputs import BUNDLE, atomic_output, check_output, scratch_folder
from xlsr_edge.precision.options import DEFAULT_CALIBRATION_METHOD, DEFAULT_CALIBRATION_SIZE
from xlsr_edge.progress import Stages

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptimizeOptions:
    dev: Path  # transcribed manifest (or folder of audio): the accuracy gate's utterances
    max_cer_delta: float = 0.3
    min_frame_agreement: float = PRECISION_MIN_FRAME_AGREEMENT
    threads: int = 1
    seconds: float = 10.0
    budget_minutes: float | None = None
    repeat: int = 3
    warmup: int = 1
    calibration: Path | None = None  # int8 Q/DQ ranges; default: the shipped clips (as export)
    calibration_size: int = DEFAULT_CALIBRATION_SIZE
    calibration_method: str = DEFAULT_CALIBRATION_METHOD
    gate_size: int = PRECISION_GATE_SIZE
    seed: int = 0
    candidates: tuple[str, ...] = ()  # fnmatch patterns over candidate or graph names; () = every planned one
    backends: tuple[str, ...] | None = None  # None: the installed ones
    keep_candidates: Path | None = None
    overwrite: bool = False
    allow_pickle: bool = False
    opset: int = DEFAULT_OPSET
    audio: Path | None = None  # what the timed calls transcribe (default: the shipped clips, looped)

    def __post_init__(self) -> None:
        checks = [
            (self.threads >= 1, f"--threads must be >= 1, got {self.threads}"),
            (
                math.isfinite(self.seconds) and self.seconds >= 0.1,
                f"--seconds must be >= 0.1, got {self.seconds}",
            ),
            (self.repeat >= 1, f"--repeat must be >= 1, got {self.repeat}"),
            (self.warmup >= 0, f"--warmup must be >= 0, got {self.warmup}"),
            (
                self.budget_minutes is None
                or (math.isfinite(self.budget_minutes) and self.budget_minutes > 0),
                f"--budget-minutes must be a positive number, got {self.budget_minutes}",
            ),
            (self.max_cer_delta == self.max_cer_delta, "--max-cer-delta must be a number of CER points"),
        ]
        for ok, message in checks:
            if not ok:
                raise XlsrEdgeError(message)


@dataclass
class OptimizeResult:
    bundle: Path
    choice: Outcome
    outcomes: list[Outcome]
    skipped: list[Skipped]
    runtime: dict[str, Any]
    kept: list[Path] = field(default_factory=list)

    def table(self) -> list[str]:
        return table_lines(self.runtime["candidates"])


@dataclass(frozen=True)
class _ConvertSettings:
    """What xlsr_edge.precision.convert.convert_graph reads of one graph variant."""

    precision: str
    quantize_ops: tuple[str, ...]
    calibration_method: str
    weight_type: str = "int8"
    reduce_range: bool = False
    exclude_ops: tuple[str, ...] = ()


def slug(name: str) -> str:
    """A folder name for a graph variant or candidate: "int8-dynamic+fe u8u8" -> "int8-dynamic+fe_u8u8"."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", name).strip("_")


def installed_backends() -> tuple[str, ...]:
    import importlib.util

    return ("onnxruntime",) + (("openvino",) if importlib.util.find_spec("openvino") else ())


def select(
    candidates: list[Candidate], skipped: list[Skipped], patterns: tuple[str, ...]
) -> tuple[list[Candidate], list[Skipped]]:
    """Keep the candidates a pattern names (candidate or graph name; the fp32 reference always stays)."""
    if not patterns:
        return candidates, skipped
    bad = [
        p
        for p in patterns
        if not any(fnmatch.fnmatchcase(n, p) for c in candidates for n in (c.name, c.graph.name))
    ]
    if bad:
        names = ", ".join(c.name for c in candidates)
        raise XlsrEdgeError(f"--candidates {' '.join(bad)} matches none of the candidates here: {names}")
    keep, out = [], list(skipped)
    for c in candidates:
        if c.is_reference or any(fnmatch.fnmatchcase(n, p) for p in patterns for n in (c.name, c.graph.name)):
            keep.append(c)
        else:
            out.append(Skipped(c.name, "not selected (--candidates)"))
    return keep, out


class _Variants:
    """Graph variants, converted on first use into bundle folders under ``work`` (the bench's workers load
    bundles). A variant that failed to convert fails the same way for every candidate that needs it."""

    def __init__(
        self, work: Path, ckpt, sources: dict[bool, tuple[Path, dict, dict]], options, calib, digest
    ):
        self.work, self.ckpt, self.sources, self.options, self.calib = work, ckpt, sources, options, calib
        self.digest = digest
        self.ready: dict[GraphVariant, tuple[Path, BundleManifest]] = {}
        self.failed: dict[GraphVariant, str] = {}

    def folder(self, g: GraphVariant) -> tuple[Path, BundleManifest]:
        if g in self.failed:
            raise XlsrEdgeError(self.failed[g])
        if g not in self.ready:
            try:
                self.ready[g] = self._make(g)
            except Exception as exc:  # noqa: BLE001  (recorded as this candidate's crash, the run goes on)
                self.failed[g] = f"{g.name}: {type(exc).__name__}: {exc}"
                raise XlsrEdgeError(self.failed[g]) from exc
        return self.ready[g]

    def _make(self, g: GraphVariant) -> tuple[Path, BundleManifest]:
        import onnx

        from xlsr_edge.export.pipeline import bundle_manifest
        from xlsr_edge.precision.convert import convert_graph, precision_report
        from xlsr_edge.precision.graph import graph_bytes, save_graph

        if g.feature_encoder not in self.sources:
            raise XlsrEdgeError(f"no {'channels-last ' if g.feature_encoder else ''}fp32 export to convert")
        src, facts, parity = self.sources[g.feature_encoder]
        folder = self.work / slug(g.name)
        folder.mkdir()
        t0 = time.perf_counter()
        if g.precision == "fp32":
            for f in src.parent.iterdir():
                if f.name in (MODEL_ONNX, MODEL_ONNX_DATA):
                    os.link(f, folder / f.name)
            report = None
        else:
            settings = _ConvertSettings(
                g.precision, g.quantize_ops, self.options.calibration_method, g.weight_type, g.reduce_range
            )
            tmp = self.work / f".{slug(g.name)}.onnx"
            method = convert_graph(src, tmp, self.ckpt.info, settings, self.calib)
            calib = self.calib if g.precision == "int8" else None  # only static int8 reads it
            report = precision_report(g.precision, method, tmp, graph_bytes(src), calib, self.ckpt.info)
            report["sizes"]["external_data"] = save_graph(
                onnx.load(str(tmp)), folder / MODEL_ONNX, MODEL_ONNX_DATA
            )
            for f in self.work.glob(f".{slug(g.name)}.onnx*"):
                f.unlink()
            report["seconds"] = round(time.perf_counter() - t0, 1)
        manifest = bundle_manifest(
            self.ckpt, g.precision, self.options.opset, facts, parity, report, source=self.digest
        )
        write_manifest(folder, manifest)
        return folder, manifest


def _link_files(src: Path, dst: Path) -> None:
    """Every file of bundle folder ``src`` but bundle.json into ``dst`` (hard links: same filesystem)."""
    for f in src.iterdir():
        if f.name == BUNDLE_JSON or f.name.startswith("."):
            continue
        try:
            os.link(f, dst / f.name)
        except OSError:
            shutil.copy2(f, dst / f.name)


def _export_sources(model, ckpt, work: Path, feature_encoder: bool, opset: int, stage) -> dict:
    """fp32 exports (plain; channels-last CNN for the FeatureEncoder variants), each parity-checked."""
    from xlsr_edge.export.cnn_matmul import channels_last_feature_encoder
    from xlsr_edge.export.onnx_export import export_onnx
    from xlsr_edge.export.parity import ParityThresholds, run_parity, verification_audio

    audios = verification_audio(None, ckpt.info.sample_rate)
    sources: dict[bool, tuple[Path, dict, dict]] = {}
    for fe in [False, True] if feature_encoder else [False]:
        folder = work / ("fp32-channels-last" if fe else "fp32-export")
        folder.mkdir()
        what = "fp32 graph with the CNN as channels-last MatMuls" if fe else "fp32 graph"
        stage(f"exporting the {what} (opset {opset}) and its parity gate on {len(audios)} utterances")
        try:
            with channels_last_feature_encoder(model) if fe else nullcontext():
                facts = export_onnx(model, ckpt.info, folder / MODEL_ONNX, opset)
        except XlsrEdgeError as exc:
            if not fe:
                raise
            logger.warning("warning: no FeatureEncoder variants: %s", exc)
            continue
        parity = run_parity(model, folder / MODEL_ONNX, ckpt.info, audios, ParityThresholds())
        parity["audio_source"] = "shipped clips"
        if not parity["passed"]:
            raise XlsrEdgeError(f"parity gate of the {what} failed: " + "; ".join(parity["failures"]))
        sources[fe] = (folder / MODEL_ONNX, facts, parity)
    return sources


def _gate_inputs(options: OptimizeOptions, info, needs_calibration: bool):
    """The dev manifest's gate set and (int8 Q/DQ) the calibration set, with export's warnings about them."""
    from xlsr_edge.datasets import read_manifest
    from xlsr_edge.precision.calibration_set import load_calibration_set
    from xlsr_edge.precision.convert import PrecisionInputs, gate_set_warnings
    from xlsr_edge.precision.gate import select_gate_set

    calib = None
    if needs_calibration:
        from xlsr_edge.data import CLIPS_MANIFEST

        source = options.calibration if options.calibration is not None else CLIPS_MANIFEST
        calib = load_calibration_set(source, info, options.calibration_size, options.seed)
    dev = read_manifest(options.dev)
    gate = select_gate_set(dev, [], info, options.gate_size, options.seed, str(options.dev))
    inputs = PrecisionInputs(source=str(options.dev), calibration=calib, gate=gate)
    fix = "give --dev MANIFEST with more transcribed speech in the model's language (the gate reads it)"
    for message in gate_set_warnings(inputs, info, shipped=False, fix=fix):
        logger.warning("warning: %s", message)
    return inputs


def _describe_outcome(o: Outcome) -> str:
    g = o.gate or {}
    cer = f"CER Δ {g['cer_delta_points']:+.2f} pts" if "cer_delta_points" in g else ""
    s = o.speed
    if o.status != PASSED:
        return f"{o.status}" + (f" ({s.vs_fp32:.2f}x fp32)" if s else "") + f": {o.reason}"
    return ", ".join(
        x
        for x in (
            cer,
            f"{s.vs_fp32:.2f}x fp32 ({s.audio_s_per_s:.1f} audio-s/s)" if s else "",
            f"peak RSS {s.peak_rss_mb:.0f} MiB" if s and s.peak_rss_mb else "",
        )
        if x
    )


def _run_candidate(o: Outcome, outcomes: list[Outcome], variants: _Variants, bench, gate_args: dict) -> None:
    """Convert (once per variant), time beside fp32, gate where it could still be chosen: fills ``o`` (status,
    reason, speed, gate, size). The gate decodes the whole dev set on the candidate's engine: timing first
    spares it for candidates that cannot win."""
    from xlsr_edge.measure.timing import folder_size_bytes
    from xlsr_edge.optimize.measure import Engine
    from xlsr_edge.precision.gate import precision_gate

    c = o.candidate
    try:
        folder, _ = variants.folder(c.graph)
        o.size_bytes = folder_size_bytes(folder)
        if c.is_reference:
            o.speed = bench.reference_speed()
            o.status = PASSED
            return
        o.speed = bench.measure(Engine(c.name, folder, c.backend, c.precision_hint))
        why = cannot_win(o.speed, outcomes)
        if why:
            o.status, o.reason = SLOWER, why
            return
        o.gate = precision_gate(
            gate_args["fp32"],
            folder / MODEL_ONNX,
            gate_args["info"],
            gate_args["gate"],
            max_cer_delta=gate_args["max_cer_delta"],
            min_agreement=gate_args["min_agreement"],
            backend=c.backend,
            precision_hint=c.precision_hint,
            reference=gate_args["reference"],
        )
        if not o.gate["passed"]:
            o.status, o.reason = FAILED_GATE, "; ".join(o.gate["failures"])
            return
        o.status = PASSED
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001  (a crashing candidate is listed with why; the others go on)
        o.status = CRASHED
        o.reason = str(exc) if isinstance(exc, XlsrEdgeError) else f"{type(exc).__name__}: {exc}"


def _final_round(outcomes: list[Outcome], variants: _Variants, bench, stage) -> None:
    from xlsr_edge.optimize.measure import REFERENCE, Engine

    final = finalists(outcomes)
    if len(final) < 2:
        return
    stage(f"final round: {', '.join(o.name for o in final)} timed together with the fp32 reference")
    engines = [
        Engine(o.name, variants.folder(o.candidate.graph)[0], o.candidate.backend, o.candidate.precision_hint)
        for o in final
        if not o.candidate.is_reference
    ]
    try:
        speeds = bench.final_round(engines)
    except XlsrEdgeError as exc:  # a finalist that ran alone but not beside the others: keep the screening
        logger.warning("warning: final round failed (%s); choosing on the screening figures", exc)
        return
    for o in final:
        o.final = speeds[REFERENCE if o.candidate.is_reference else o.name]


def _write(
    out: Path, protect, options: OptimizeOptions, folder: Path, manifest: BundleManifest, choice, record
):
    """The chosen variant's files and its bundle.json with "runtime" (and the gate it passed) at ``out``."""
    manifest.runtime = record
    report = manifest.extra.get("precision_report")
    if report is not None and choice.gate is not None:
        report["gate"] = {"source": str(options.dev), **choice.gate}
    with atomic_output(out, BUNDLE, overwrite=options.overwrite, protect=protect) as tmp:
        _link_files(folder, tmp)
        write_manifest(tmp, manifest)


def _keep(
    variants: _Variants, keep: Path, overwrite: bool, outcomes: list[Outcome], record: dict
) -> list[Path]:
    """--keep-candidates DIR: every converted variant as a bundle of its own, DIR/<variant>, recording as its
    runtime its fastest backend and hint that passed the gate or was not gated (so `xlsr-edge bench` without
    --backend runs each kept bundle as it was timed here)."""
    kept = []
    keep.mkdir(parents=True, exist_ok=True)
    for g, (folder, manifest) in variants.ready.items():
        mine = [o for o in outcomes if o.candidate.graph == g and o.speed is not None]
        usable = [o for o in mine if o.status in (PASSED, SLOWER)]
        if usable and manifest.runtime is None:  # the chosen one has its record already
            best = max(usable, key=lambda o: o.score)
            c = best.candidate
            manifest.runtime = {
                **record,
                "backend": c.backend,
                "precision_hint": c.precision_hint,
                "chosen": best.name,
                "candidates": [candidate_record(o, o is best) for o in mine],
            }
        target = keep / slug(g.name)
        with atomic_output(target, BUNDLE, overwrite=overwrite, flag="--keep-candidates") as tmp:
            _link_files(folder, tmp)
            write_manifest(tmp, manifest)
        kept.append(target)
    return kept


def optimize(checkpoint: str | Path, out: str | Path, options: OptimizeOptions) -> OptimizeResult:
    """Measure the candidates on this machine and write ONE bundle with the fastest that passes the gate."""
    from xlsr_edge.export.checkpoint import inspect_checkpoint, load_model
    from xlsr_edge.measure.sysinfo import loadavg, machine
    from xlsr_edge.optimize.measure import SideBySide
    from xlsr_edge.precision.gate import run_graph

    out = Path(out)
    protect = [("the checkpoint", Path(checkpoint))]
    check_output(out, BUNDLE, overwrite=options.overwrite, protect=protect)  # before any work
    budget = Budget(options.budget_minutes)
    stage = Stages("optimize")
    ckpt = inspect_checkpoint(checkpoint, allow_pickle=options.allow_pickle)
    info = ckpt.info
    here = machine()
    isa = here["instruction_sets"]
    backends = options.backends or installed_backends()
    candidates, skipped = plan(
        isa, here["arch"], backends=backends, feature_encoder=info.feat_extract_norm == "layer"
    )
    candidates, skipped = select(candidates, skipped, options.candidates)
    stage(
        f"{here['cpu']} ({isa_class(isa, here['arch'])}: {', '.join(k for k, v in isa.items() if v) or 'no listed ISA'}); "
        f"{len(candidates)} candidates at {options.threads} thread(s), {options.seconds:g} s of audio"
    )
    for s in skipped:
        stage(f"skipped {s.name}: {s.reason}")
    inputs = _gate_inputs(options, info, any(c.graph.precision == "int8" for c in candidates))
    outcomes = [Outcome(c) for c in candidates]
    load_before = loadavg()
    with scratch_folder(out) as work:
        model = load_model(ckpt)
        sources = _export_sources(
            model, ckpt, work, any(c.graph.feature_encoder for c in candidates), options.opset, stage
        )
        del model
        gc.collect()  # the engines get the memory
        variants = _Variants(work, ckpt, sources, options, inputs.calibration, ckpt.digest())
        ref_graph = sources[False][0]
        stage(
            f"fp32 reference logits on the gate set ({len(inputs.gate.utterances)} utterances of {options.dev})"
        )
        gate_args = {
            "fp32": ref_graph,
            "info": info,
            "gate": inputs.gate,
            "max_cer_delta": options.max_cer_delta,
            "min_agreement": options.min_frame_agreement,
            "reference": run_graph(ref_graph, info, inputs.gate.arrays),
        }
        ref_folder = variants.folder(GraphVariant("fp32"))[0]
        with SideBySide(
            ref_folder,
            info.sample_rate,
            threads=options.threads,
            seconds=options.seconds,
            repeat=options.repeat,
            warmup=options.warmup,
            audio=options.audio,
        ) as bench:
            for i, o in enumerate(outcomes, 1):
                if budget.spent() and not o.candidate.is_reference:  # the reference always runs: the baseline
                    for left in cut_by_budget(outcomes, budget):
                        stage(f"not measured {left.name}: {left.reason}")
                    break
                _run_candidate(o, outcomes, variants, bench, gate_args)
                stage(f"[{i}/{len(outcomes)}] {o.name}: {_describe_outcome(o)}")
            _final_round(outcomes, variants, bench, stage)
            ref = next(o for o in outcomes if o.candidate.is_reference)
            ref.speed = bench.reference_speed(rounds=0)  # its figures over every call it made
        choice = choose(outcomes)
        record = runtime_record(
            choice,
            outcomes,
            skipped,
            threads=options.threads,
            machine=here,
            measured=_measured(options, inputs, info.sample_rate, budget, load_before, loadavg()),
        )
        folder, manifest = variants.folder(choice.candidate.graph)
        stage(f"chosen: {choice.name} ({_describe_outcome(choice)}); writing {out}")
        _write(out, protect, options, folder, manifest, choice, record)
        kept = []
        if options.keep_candidates:
            kept = _keep(variants, options.keep_candidates, options.overwrite, outcomes, record)
    stage(f"wrote {out}")
    return OptimizeResult(out, choice, outcomes, skipped, record, kept)


def _measured(
    options: OptimizeOptions, inputs, sample_rate: int, budget: Budget, before, after
) -> dict[str, Any]:
    """How the candidates were measured (bundle.json "runtime.measured")."""
    from importlib import metadata

    versions = {"xlsr-edge": __version__}
    for dist in ("onnxruntime", "openvino"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return {
        "reference": "fp32 @ onnxruntime, timed in alternation with each candidate",
        "threads": options.threads,
        "batch": 1,
        "seconds": options.seconds,
        "repeat": options.repeat,
        "warmup": options.warmup,
        "dev": str(options.dev),
        "gate": inputs.gate.describe(sample_rate),
        "max_cer_delta": options.max_cer_delta,
        "budget_minutes": options.budget_minutes,
        "minutes": round(budget.elapsed_minutes(), 2),
        "loadavg_before": before,
        "loadavg_after": after,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions,
    }
