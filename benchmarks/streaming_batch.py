"""Streaming benchmark, section 4 (``batch``): wall and CPU ms per stream window by batch size
(see benchmarks/streaming.py)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import logger, markdown_table
from streaming_audio import RATE

log = logger("streaming bench")


def bench_batch(bundle: Path, args: argparse.Namespace) -> dict:
    """Wall and CPU ms per window of the default stream window (chunk 1 s + left 2 s + right 0.25 s) by batch
    size: what cross-stream batching can save on this machine."""
    from xlsr_edge.runtime import Recognizer

    rows = []
    for threads in args.batch_threads:
        with Recognizer.from_bundle(bundle, threads=threads) as rec:
            info = rec.info
            n = (
                int(RATE / info.frame_stride_samples) - 1
            ) * info.frame_stride_samples + info.receptive_field_samples
            n += int(2.0 * RATE) + int(0.25 * RATE)
            x = np.random.default_rng(0).standard_normal((max(args.batch_sizes), n)).astype(np.float32)
            for b in args.batch_sizes:
                values, mask = x[:b], np.ones((b, n), dtype=np.int64)
                rec.runner.infer(values, mask)
                walls, cpus = [], []
                t_end = time.perf_counter() + args.batch_seconds
                while time.perf_counter() < t_end or len(walls) < 3:
                    w0, c0 = time.perf_counter(), time.process_time()
                    rec.runner.infer(values, mask)
                    walls.append(time.perf_counter() - w0)
                    cpus.append(time.process_time() - c0)
                rows.append(
                    {
                        "threads": threads,
                        "batch": b,
                        "window_s": n / RATE,
                        "wall_ms_per_window": 1000 * float(np.median(walls)) / b,
                        "cpu_ms_per_window": 1000 * float(np.median(cpus)) / b,
                    }
                )
                log(f"threads {threads} batch {b}: {rows[-1]['wall_ms_per_window']:.1f} ms/window wall")
    return {"rows": rows}


def batch_markdown(results: dict) -> list[str]:
    """The batch section of results.md."""
    rows = results["batch"]["rows"]
    return [
        f"## Inference per window by batch size (window {rows[0]['window_s']:.2f} s: chunk 1 s + left 2 s + "
        "right 0.25 s)",
        "",
        markdown_table(
            rows,
            [
                ("threads", "threads"),
                ("batch", "batch"),
                ("wall_ms_per_window", "wall ms / window", "{:.2f}"),
                ("cpu_ms_per_window", "CPU ms / window", "{:.2f}"),
            ],
        ),
        "",
    ]
