"""Speed of a candidate side by side with the fp32 reference, each engine in its own worker process.

The engines are `xlsr-edge bench`'s (``xlsr_edge.measure.bench_engines``: spawned workers that time only their
model call, on exactly ``seconds`` of audio, batch 1) and the rounds are its ``interleave``. The fp32 reference
on onnxruntime stays loaded for the whole run; each candidate is warmed up, then timed in alternation with it
(``repeat`` rounds), so its ratio compares two figures taken under the same load: the machine may be shared.
``final_round`` times the finalists and the reference together, all loaded at once, in interleaved rounds.

A candidate whose warm-up calls are already slower than ``SLOW`` x the reference's is not timed further
(``Speed.cut``): it cannot win, and such engines (OpenVINO's f16 hint on some graphs) can take minutes. A slow
first call gets a second one first (OpenVINO compiles kernels for a new input shape on its first call).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from xlsr_edge.measure.bench_engines import EngineProcess, EngineSpec, load_source_audio
from xlsr_edge.measure.timing import interleave, mib, summarize
from xlsr_edge.optimize.choose import Speed

logger = logging.getLogger(__name__)
REFERENCE = "fp32 reference"
SLOW = 2.0  # warm-up call slower than this x the reference's: not timed further


@dataclass(frozen=True)
class Engine:
    """A candidate bundle on a backend (OpenVINO: with a precision hint, no compiled-model cache)."""

    label: str
    bundle: Path
    backend: str = "onnxruntime"
    precision_hint: str | None = None

    def spec(self, threads: int) -> EngineSpec:
        options: tuple = ()
        if self.backend == "openvino":
            options = (("cache_dir", None), ("precision_hint", self.precision_hint or "auto"))
        providers = "cpu" if self.backend == "onnxruntime" else None
        return EngineSpec(self.label, "bundle", str(self.bundle), self.backend, providers, threads, options)


class SideBySide:
    """The fp32 reference loaded once; candidates timed against it (a context manager)."""

    def __init__(
        self,
        reference: Path,
        sample_rate: int,
        *,
        threads: int,
        seconds: float,
        repeat: int = 3,
        warmup: int = 1,
        audio: Path | None = None,
    ) -> None:
        self.threads, self.seconds, self.repeat, self.warmup = threads, seconds, repeat, warmup
        self.sample_rate = sample_rate
        self.base = load_source_audio(audio, sample_rate, max_seconds=max(60.0, 2 * seconds))
        self.ref = self._start(Engine(REFERENCE, Path(reference)))
        self.ref_samples: list[float] = [self.ref.info["warm_seconds"]]

    def _start(self, engine: Engine) -> EngineProcess:
        proc = EngineProcess(engine.spec(self.threads), self.base, self.sample_rate)
        try:
            reply = {"peak_rss_bytes": proc.info.get("peak_rss_bytes"), "seconds": None}
            calls = []
            for _ in range(max(1, self.warmup)):  # at least one: its time decides whether to go on
                reply = proc.run(1, self.seconds)
                calls.append(reply["seconds"])
            proc.info["warm_peak_rss_bytes"] = reply["peak_rss_bytes"]
            proc.info["warm_seconds"] = min(calls)
        except BaseException:
            proc.close()
            raise
        return proc

    def _call(self, proc: EngineProcess):
        return lambda: proc.run(1, self.seconds)["seconds"]

    def _speeds(self, procs: Mapping[str, EngineProcess], repeat: int) -> dict[str, Speed]:
        samples = interleave(
            {REFERENCE: self._call(self.ref), **{k: self._call(p) for k, p in procs.items()}},
            repeat,
            warmup=0,
            self_timed=True,
        )
        self.ref_samples += samples[REFERENCE]
        ref = summarize(samples[REFERENCE])["p50"]
        out = {
            REFERENCE: Speed(
                audio_s_per_s=self.seconds / ref,
                vs_fp32=1.0,
                peak_rss_mb=mib(self.ref.info.get("warm_peak_rss_bytes")),
                load_s=self.ref.info.get("load_s"),
                samples=len(samples[REFERENCE]),
            )
        }
        for label, proc in procs.items():
            p50 = summarize(samples[label])["p50"]
            out[label] = Speed(
                audio_s_per_s=self.seconds / p50,
                vs_fp32=ref / p50,
                peak_rss_mb=mib(proc.info.get("warm_peak_rss_bytes")),
                load_s=proc.info.get("load_s"),
                samples=len(samples[label]),
            )
        return out

    def measure(self, engine: Engine, slow: float | None = SLOW) -> Speed:
        """Warm-up, then ``repeat`` rounds of (reference, candidate) in alternating order; a warm-up call slower
        than ``slow`` x the reference's median ends it there (``Speed.cut``)."""
        proc = self._start(engine)
        try:
            ref = summarize(self.ref_samples)["p50"]
            if slow is not None and proc.info["warm_seconds"] > slow * ref and self.warmup < 2:
                proc.info["warm_seconds"] = min(
                    proc.info["warm_seconds"], proc.run(1, self.seconds)["seconds"]
                )
            warm = proc.info["warm_seconds"]
            if slow is not None and warm > slow * ref:
                return Speed(
                    audio_s_per_s=self.seconds / warm,
                    vs_fp32=ref / warm,
                    peak_rss_mb=mib(proc.info.get("warm_peak_rss_bytes")),
                    load_s=proc.info.get("load_s"),
                    samples=1,
                    cut=True,
                )
            return self._speeds({engine.label: proc}, self.repeat)[engine.label]
        finally:
            proc.close()

    def reference_speed(self, rounds: int | None = None) -> Speed:
        """The reference's own figures (ratio 1 by definition): the median of every call it made so far, after
        ``rounds`` more calls (default ``repeat``)."""
        xs = [
            self.ref.run(1, self.seconds)["seconds"] for _ in range(self.repeat if rounds is None else rounds)
        ]
        self.ref_samples += xs
        xs = self.ref_samples
        p50 = summarize(xs)["p50"]
        return Speed(
            audio_s_per_s=self.seconds / p50,
            vs_fp32=1.0,
            peak_rss_mb=mib(self.ref.info.get("warm_peak_rss_bytes")),
            load_s=self.ref.info.get("load_s"),
            samples=len(xs),
        )

    def final_round(self, engines: list[Engine], repeat: int | None = None) -> dict[str, Speed]:
        """The finalists and the reference loaded together, timed in interleaved rounds (order rotating)."""
        procs: dict[str, EngineProcess] = {}
        try:
            for e in engines:
                procs[e.label] = self._start(e)
            return self._speeds(procs, repeat or 2 * self.repeat)  # it decides: twice the screening rounds
        finally:
            for p in procs.values():
                p.close()

    def close(self) -> None:
        self.ref.close()

    def __enter__(self) -> SideBySide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
