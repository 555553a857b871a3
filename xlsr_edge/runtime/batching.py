"""Batching and chunking: sort by length, bucket to keep padding small, split long audio into windows, and the
one batched-inference path (bucket -> pad -> mask -> infer -> each input's valid output frames) that the
Recognizer, the stream and its server, the precision gate and the parity gate all run.

Chunk windows are aligned to the frame stride, so frame j of a window is global frame start/stride + j and
the CNN sees exactly what it sees on the whole file; only the transformer's global context is cut, which the
context margins on both sides make up for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from xlsr_edge.constants import MAX_PADDING

if TYPE_CHECKING:
    from xlsr_edge.runtime.runners import Runner


@dataclass(frozen=True)
class Window:
    """A slice of one utterance fed to the model; frames [keep_from, keep_to) of its output are kept."""

    item: int
    start: int  # sample offset in the utterance (a multiple of the frame stride)
    end: int  # exclusive
    keep_from: int  # first kept frame, relative to the window's own frames
    keep_to: int  # exclusive, relative

    @property
    def num_samples(self) -> int:
        return self.end - self.start

    def first_frame(self, stride: int) -> int:
        """Global index of the first kept frame (windows can share a start near the file's beginning)."""
        return self.start // stride + self.keep_from


def plan_windows(
    item: int,
    num_samples: int,
    *,
    stride: int,
    receptive_field: int,
    total_frames: int,
    chunk_samples: int | None,
    context_samples: int,
) -> list[Window]:
    """Split one utterance into overlapping windows whose kept frames tile [0, total_frames) exactly once."""
    if chunk_samples is None or num_samples <= chunk_samples:
        return [Window(item, 0, num_samples, 0, total_frames)]
    core = max(stride, chunk_samples // stride * stride)
    ctx = context_samples // stride * stride
    windows = []
    for core_start in range(0, total_frames * stride, core):
        first_frame = core_start // stride
        last_frame = min(total_frames, (core_start + core) // stride)  # exclusive
        start = max(0, core_start - ctx)
        # the last kept frame needs its whole receptive field, plus the right context
        end = min(num_samples, (last_frame - 1) * stride + receptive_field + ctx)
        keep_from = first_frame - start // stride
        windows.append(Window(item, start, end, keep_from, keep_from + last_frame - first_frame))
    return windows


def bucket(lengths: Sequence[int], batch_size: int, max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Group indices into batches: longest first, a batch closes when full or when padding would exceed
    `max_padding` of the padded batch. max_padding=0 groups equal lengths only (models fed unpadded)."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    batches: list[list[int]] = []
    current: list[int] = []
    total = 0
    for idx in order.tolist():
        n = int(lengths[idx])
        if current:
            longest = int(lengths[current[0]])
            waste = 1.0 - (total + n) / (longest * (len(current) + 1))
            if len(current) >= batch_size or waste > max_padding + 1e-12:
                batches.append(current)
                current, total = [], 0
        current.append(idx)
        total += n
    if current:
        batches.append(current)
    return batches


def pad_batch(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad float32 arrays into [batch, max_len] plus an int64 attention mask."""
    longest = max(len(a) for a in arrays)
    values = np.zeros((len(arrays), longest), dtype=np.float32)
    mask = np.zeros((len(arrays), longest), dtype=np.int64)
    for i, a in enumerate(arrays):
        values[i, : len(a)] = a
        mask[i, : len(a)] = 1
    return values, mask


# -- batched inference: the one path every caller runs ---------------------------------------------------------


def padding_limit(uses_mask: bool, max_padding: float = MAX_PADDING) -> float:
    """The padding a batch may hold: a graph without an attention mask would read the zeros as audio, so it is
    fed equal lengths only (0)."""
    return max_padding if uses_mask else 0.0


def batch_limit(runner: Runner, batch_size: int) -> int:
    """``batch_size``, capped by the engine's profile (TensorRT engines have a largest batch)."""
    return max(1, min(batch_size, runner.max_batch or batch_size))


def plan_batches(
    lengths: Sequence[int], batch_size: int, uses_mask: bool, max_padding: float = MAX_PADDING
) -> list[list[int]]:
    """Indices grouped into batches (``bucket``) under the padding the graph allows (``padding_limit``)."""
    return bucket(lengths, batch_size, padding_limit(uses_mask, max_padding))


def infer_batch(
    runner: Runner,
    arrays: Sequence[np.ndarray],
    uses_mask: bool,
    check: Callable[[np.ndarray], None] | None = None,
) -> tuple[list[np.ndarray], list[int]]:
    """Run ``arrays`` as one zero-padded batch (with an attention mask only for graphs that take one) and
    return each array's valid output frames plus the lengths the graph reported.

    ``check``: called with the batch's raw output first (a Recognizer's vocabulary check)."""
    values, mask = pad_batch(arrays)
    outputs, lengths = runner.infer(values, mask if uses_mask else None)
    if check is not None:
        check(outputs)
    counts = [int(n) for n in lengths]
    return [outputs[k, :n] for k, n in enumerate(counts)], counts


def run_batches(
    runner: Runner,
    arrays: Sequence[np.ndarray],
    *,
    batch_size: int,
    uses_mask: bool,
    max_padding: float = MAX_PADDING,
    check: Callable[[np.ndarray], None] | None = None,
) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    """Bucket ``arrays`` by length, run each batch, and yield (indices into ``arrays``, their valid output
    frames) batch by batch; batches fit the runner's profile and hold no padding for graphs without a mask."""
    for batch in plan_batches(
        [len(a) for a in arrays], batch_limit(runner, batch_size), uses_mask, max_padding
    ):
        outputs, _ = infer_batch(runner, [arrays[i] for i in batch], uses_mask, check)
        yield batch, outputs
