"""Training data: manifests -> examples, the per-epoch mixing plan, length-grouped batches, LR schedule.

Everything here is numpy + stdlib and deterministic for (seed, epoch), so a resumed run sees exactly the
batches the interrupted one would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xlsr_edge.datasets import fill_durations, read_manifest
from xlsr_edge.errors import XlsrEdgeError
from xlsr_edge.text import normalize_text


@dataclass(frozen=True)
class Example:
    audio: Path
    text: str  # normalized
    duration: float
    source: bool = False  # from the --mix source-language manifest


def load_examples(
    manifest: str | Path, language: str | None, *, source: bool = False, max_seconds: float | None = None
) -> tuple[list[Example], int]:
    """Read a manifest with transcripts; returns (examples, number dropped as too long or empty)."""
    utts = fill_durations(read_manifest(manifest))
    out: list[Example] = []
    dropped = 0
    for u in utts:
        if u.text is None:
            raise XlsrEdgeError(
                f"{manifest} line {u.line}: no transcript; training needs a text for every line"
            )
        text = normalize_text(u.text, language)
        if not text or (max_seconds is not None and u.duration > max_seconds):
            dropped += 1
            continue
        out.append(Example(u.audio, text, float(u.duration), source))
    if not out:
        raise XlsrEdgeError(f"{manifest}: no usable utterances (all empty or longer than {max_seconds} s)")
    return out, dropped


def parse_mix(spec: str) -> tuple[Path, float]:
    """'SOURCE_MANIFEST:0.1' -> (path, share); the share of source utterances per epoch, in (0, 1)."""
    path, sep, share = spec.rpartition(":")
    try:
        value = float(share)
    except ValueError:
        value = float("nan")
    if not sep or not path or not 0 < value < 1:
        raise XlsrEdgeError(f"--mix expects SOURCE_MANIFEST:SHARE with 0 < SHARE < 1, got {spec!r}")
    return Path(path), value


def source_count(n_target: int, share: float) -> int:
    """How many source utterances make up `share` of an epoch that holds every target utterance once."""
    return round(n_target * share / (1.0 - share)) if share > 0 else 0


def epoch_plan(n_target: int, n_source: int, share: float, seed: int, epoch: int) -> list[tuple[bool, int]]:
    """The utterances of one epoch: every target index once, plus source indices for the mixing share.

    Source utterances are drawn without replacement, continuing through a seeded permutation across
    epochs (so over several epochs the whole source set is used), as (is_source, index) pairs.
    """
    plan = [(False, i) for i in range(n_target)]
    k = source_count(n_target, share) if n_source else 0
    if k:
        start = epoch * k
        picks = []
        while len(picks) < k:
            cycle, offset = divmod(start + len(picks), n_source)
            perm = np.random.default_rng([seed, 1, cycle]).permutation(n_source)
            take = min(k - len(picks), n_source - offset)
            picks += perm[offset : offset + take].tolist()
        plan += [(True, int(i)) for i in picks]
    return plan


def length_grouped_batches(
    durations: Sequence[float], batch_size: int, rng: np.random.Generator, megabatch: int = 50
) -> list[list[int]]:
    """Shuffle, cut into mega-batches of `megabatch` batches, sort each by duration, split into batches, shuffle
    the batches (as transformers' LengthGroupedSampler): similar lengths share a batch (little padding) while
    every epoch still sees a different mix."""
    if batch_size < 1:
        raise ValueError("batch size must be at least 1")
    order = rng.permutation(len(durations))
    size = batch_size * megabatch
    batches: list[list[int]] = []
    for m in range(0, len(order), size):
        group = sorted(order[m : m + size].tolist(), key=lambda i: -durations[i])
        batches += [group[b : b + batch_size] for b in range(0, len(group), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def epoch_batches(
    target: Sequence[Example], source: Sequence[Example], share: float, batch_size: int, seed: int, epoch: int
) -> list[list[Example]]:
    """The batches of one epoch, deterministic for (seed, epoch)."""
    plan = epoch_plan(len(target), len(source), share, seed, epoch)
    items = [source[i] if is_src else target[i] for is_src, i in plan]
    rng = np.random.default_rng([seed, 2, epoch])
    return [
        [items[i] for i in b] for b in length_grouped_batches([e.duration for e in items], batch_size, rng)
    ]


def batches_per_epoch(
    n_target: int, n_source: int, share: float, batch_size: int, megabatch: int = 50
) -> int:
    n = n_target + (source_count(n_target, share) if n_source else 0)
    size = batch_size * megabatch
    full, rest = divmod(n, size)
    return full * megabatch + math.ceil(rest / batch_size)


def lr_factor(step: int, total: int, warmup: int, final: float = 0.0) -> float:
    """Linear warm-up from 0 to 1 over `warmup` steps, then cosine decay to `final` at `total` steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
