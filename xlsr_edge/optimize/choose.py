"""The choice: given each candidate's speed (side by side with the fp32 reference) and gate result, the fastest that
passes; the budget; the table; the record that ``bundle.json`` keeps under ``"runtime"``.

Pure functions of recorded measurements (the tests feed them), no clock but the one ``Budget`` is given.

* Screening gives each candidate a speed ratio to fp32 on onnxruntime, measured in alternation with it
  (``measure``), so a load change on the machine hits both sides of the ratio alike. A candidate slower than
  one that already passed (beyond ``FINAL_MARGIN``), or cut short as far slower than fp32, is not gated
  (``cannot_win``): the gate decodes the whole dev set, and it could not be chosen anyway.
* The finalists (passing candidates within ``FINAL_MARGIN`` of the best ratio, at most ``FINALISTS``) are timed
  again in one interleaved round; the choice is the fastest there, a tie (within ``TIE``) goes to the smaller
  peak RSS. A candidate that failed the gate, crashed or was not measured is never chosen; the reference
  passes by definition, so there is always a choice.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from xlsr_edge.optimize.candidates import Candidate, Skipped

PASSED, FAILED_GATE, CRASHED, NOT_MEASURED, SKIPPED = (
    "passed",
    "failed gate",
    "crashed",
    "not measured",
    "skipped",
)
SLOWER = "slower"  # timed, but slower than a candidate that passed (or than SLOW x fp32): not gated
FINALISTS = 3
FINAL_MARGIN = (
    0.25  # screening ratios within 25 % of the best are re-timed side by side (a shared CPU is noisy)
)
TIE = 0.02  # final speeds within 2 %: the smaller peak RSS wins


@dataclass
class Speed:
    """One candidate's timing: median seconds per call and its ratio to the reference timed beside it."""

    audio_s_per_s: float
    vs_fp32: float
    peak_rss_mb: float | None = None
    load_s: float | None = None
    samples: int = 0
    cut: bool = False  # one warm-up call only: it was already far slower than the reference


@dataclass
class Outcome:
    candidate: Candidate
    status: str = NOT_MEASURED
    reason: str | None = None
    speed: Speed | None = None  # screening
    final: Speed | None = None  # the finalists' interleaved round
    gate: dict[str, Any] | None = None  # xlsr_edge.precision.gate.precision_gate's report
    size_bytes: int | None = None

    @property
    def name(self) -> str:
        return self.candidate.name

    @property
    def score(self) -> float:
        """The speed ratio the choice compares: the final round's where there was one."""
        s = self.final or self.speed
        return s.vs_fp32 if s is not None else -math.inf


@dataclass
class Budget:
    """--budget-minutes: no new candidate is measured once it is spent (None: no limit)."""

    minutes: float | None
    clock: Callable[[], float] = time.monotonic
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def elapsed_minutes(self) -> float:
        return (self.clock() - self.started) / 60

    def spent(self) -> bool:
        return self.minutes is not None and self.elapsed_minutes() >= self.minutes


def cut_by_budget(outcomes: Sequence[Outcome], budget: Budget) -> list[Outcome]:
    """Mark the not-yet-measured outcomes ``NOT_MEASURED`` with the reason once the budget is spent; returns them."""
    left = [o for o in outcomes if o.status == NOT_MEASURED and o.speed is None and o.reason is None]
    for o in left:
        o.reason = f"--budget-minutes {budget.minutes:g} spent ({budget.elapsed_minutes():.1f} min)"
    return left


def passed(outcomes: Iterable[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.status == PASSED and o.speed is not None]


def cannot_win(speed: Speed, outcomes: Sequence[Outcome], margin: float = FINAL_MARGIN) -> str | None:
    """Why a timed candidate need not be gated: cut short as far slower than fp32, or slower than a candidate
    that already passed by more than the final round's margin (it could not be chosen). None: gate it."""
    if speed.cut:
        return f"{speed.vs_fp32:.2f}x fp32 on its warm-up call: not timed further, not gated"
    ok = passed(outcomes)
    if not ok:
        return None
    best = max(ok, key=lambda o: o.speed.vs_fp32)  # type: ignore[union-attr]
    ratio = best.speed.vs_fp32  # type: ignore[union-attr]
    if speed.vs_fp32 < ratio * (1 - margin):
        return f"slower than {best.name} ({ratio:.2f}x fp32), which passed: not gated"
    return None


def finalists(outcomes: Sequence[Outcome], k: int = FINALISTS, margin: float = FINAL_MARGIN) -> list[Outcome]:
    """The passing candidates worth timing again side by side: within ``margin`` of the best screening ratio."""
    ok = sorted(passed(outcomes), key=lambda o: o.speed.vs_fp32, reverse=True)  # type: ignore[union-attr]
    if not ok:
        return []
    best = ok[0].speed.vs_fp32  # type: ignore[union-attr]
    return [o for o in ok if o.speed.vs_fp32 >= best * (1 - margin)][:k]  # type: ignore[union-attr]


def choose(outcomes: Sequence[Outcome], tie: float = TIE) -> Outcome:
    """The fastest passing candidate (final round first); within ``tie`` of it, the smallest peak RSS.
    The reference (fp32 on onnxruntime) when nothing else passed."""
    ok = passed(outcomes)
    if not ok:
        ref = [o for o in outcomes if o.candidate.is_reference]
        if not ref:
            raise ValueError("no candidate passed and the fp32 reference is missing")
        return ref[0]
    finals = [o for o in ok if o.final is not None]
    pool = finals or ok
    best = max(o.score for o in pool)
    close = [o for o in pool if o.score >= best * (1 - tie)]
    return min(close, key=lambda o: ((o.final or o.speed).peak_rss_mb or math.inf, -o.score))  # type: ignore[union-attr]


# -- the record and the table -----------------------------------------------------------------------------------


def _r(x: float | None, n: int) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, n)


def candidate_record(o: Outcome, chosen: bool = False) -> dict[str, Any]:
    c = o.candidate
    gate = o.gate or {}
    out: dict[str, Any] = {
        "name": c.name,
        **c.graph.to_json(),
        "backend": c.backend,
        "precision_hint": c.precision_hint,
        "status": "chosen" if chosen else o.status,
        "reason": o.reason,
        "vs_fp32": _r(o.speed.vs_fp32, 3) if o.speed else None,
        "audio_s_per_s": _r(o.speed.audio_s_per_s, 3) if o.speed else None,
        "final_vs_fp32": _r(o.final.vs_fp32, 3) if o.final else None,
        "cer_delta_points": 0.0 if c.is_reference else gate.get("cer_delta_points"),
        "argmax_agreement": 1.0 if c.is_reference else gate.get("argmax_agreement"),
        "peak_rss_mb": _r(o.speed.peak_rss_mb, 1) if o.speed else None,
        "load_s": _r(o.speed.load_s, 2) if o.speed else None,
        "size_mb": _r(o.size_bytes / 2**20, 1) if o.size_bytes else None,
    }
    return out


def runtime_record(
    choice: Outcome,
    outcomes: Sequence[Outcome],
    skipped: Sequence[Skipped],
    *,
    threads: int,
    machine: Mapping[str, Any],
    measured: Mapping[str, Any],
) -> dict[str, Any]:
    """``bundle.json``'s ``"runtime"``: what the runtime uses by default, where it was measured, every candidate."""
    c = choice.candidate
    return {
        "backend": c.backend,
        "precision_hint": c.precision_hint,
        "threads": threads,
        "chosen": c.name,
        "machine": {k: machine[k] for k in ("cpu", "arch", "instruction_sets") if k in machine},
        "measured": dict(measured),
        "candidates": [candidate_record(o, o is choice) for o in outcomes]
        + [{"name": s.name, "status": SKIPPED, "reason": s.reason} for s in skipped],
    }


def _fmt(v: Any, spec: str) -> str:
    return format(v, spec) if isinstance(v, int | float) and not isinstance(v, bool) else "—"


def _fmtx(v: Any, spec: str) -> str:
    """A speed ratio with its x, a dash where there is none."""
    text = _fmt(v, spec)
    return text if text == "—" else text + "x"


def table_lines(candidates: Sequence[Mapping[str, Any]]) -> list[str]:
    """The candidates of a runtime record as a text table, then one line per candidate not in it (why).

    Rendered defensively (``inspect`` shows hand-edited bundles too): a missing figure is a dash."""
    rows = [c for c in candidates if isinstance(c, Mapping) and c.get("vs_fp32") is not None]
    width = max([len(str(c.get("name"))) for c in rows] + [9])
    head = f"{'candidate':<{width}}  {'x fp32':>7}  {'final':>6}  {'CER Δ pts':>9}  {'peak RSS MiB':>12}  {'size MiB':>8}"
    out = [head]
    for c in rows:
        mark = "  <- chosen" if c.get("status") == "chosen" else ""
        out.append(
            f"{str(c.get('name')):<{width}}  {_fmtx(c.get('vs_fp32'), '6.2f'):>7}  {_fmtx(c.get('final_vs_fp32'), '5.2f'):>6}"
            f"  {_fmt(c.get('cer_delta_points'), '+9.2f'):>9}  {_fmt(c.get('peak_rss_mb'), '12.0f'):>12}"
            f"  {_fmt(c.get('size_mb'), '8.1f'):>8}{mark}"
        )
    for c in candidates:
        if isinstance(c, Mapping) and c.get("status") not in (PASSED, "chosen"):
            delta = c.get("cer_delta_points")
            fig = f" (CER Δ {delta:+.2f} pts)" if isinstance(delta, int | float) else ""
            out.append(
                f"{c.get('status', '?')}: {c.get('name')}{fig}: {c.get('reason') or 'no reason recorded'}"
            )
    return out
