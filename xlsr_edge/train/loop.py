"""The training loop of fine-tuning: optimizer steps over deterministic epochs, dev scores, progress, and the state
in OUT/last/ that ``--resume`` continues (``TrainState``: model, optimizer, scheduler, vocabulary, front end, step)."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xlsr_edge.errors import XlsrEdgeError
from xlsr_edge.outputs import swap_in
from xlsr_edge.train.augment import NoiseAugmenter
from xlsr_edge.train.data import Example, epoch_batches
from xlsr_edge.train.model import FrontEnd, _torch, collate, evaluate, prepare_input, save_checkpoint
from xlsr_edge.train.options import (
    LOG_FILE,
    STATE_DIR,
    STATE_FILE,
    FinetuneOptions,
    FinetuneResult,
    TrainData,
)
from xlsr_edge.train.vocab import CtcVocab


@dataclass
class TrainState:
    """Everything a step changes or a saved state holds; ``step`` counts optimizer steps done."""

    model: Any
    optimizer: Any
    scheduler: Any
    vocab: CtcVocab
    front: FrontEnd
    step: int
    total: int  # steps of the whole run
    per_epoch: int  # steps per epoch


def train_step(model, batch: dict, optimizer, scheduler, grad_clip: float) -> float:
    """One optimizer step; a non-finite loss skips the update (and is returned as nan)."""
    torch = _torch()
    loss = model(**batch).loss
    if not torch.isfinite(loss):
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        return float("nan")
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def save_state(state: TrainState, out: Path) -> None:
    """OUT/last/: weights + tokenizer (a loadable checkpoint) and the optimizer/scheduler state at the step.

    Written next to it and swapped in: a kill at any moment leaves the previous or the new state for --resume.
    """
    torch = _torch()
    folder = out / STATE_DIR
    tmp = out / f".{STATE_DIR}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_checkpoint(state.model, state.vocab, state.front, tmp)
    torch.save(
        {
            "step": state.step,
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
        },
        tmp / STATE_FILE,
    )
    if not swap_in(tmp, folder):
        raise XlsrEdgeError(
            f"{folder} appeared while this run saved its state there; is another run writing {out}?"
        )


def save_final(model, vocab: CtcVocab, front: FrontEnd, out: Path) -> None:
    """The finished checkpoint in OUT/: saved aside, then each file renamed over its old version (never a
    half-written model.safetensors; OUT/last/ stays for --resume whatever happens)."""
    staging = out / ".final.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    save_checkpoint(model, vocab, front, staging)
    for f in sorted(staging.iterdir()):
        os.replace(f, out / f.name)
    staging.rmdir()


def load_state(out: Path) -> dict:
    torch = _torch()
    return torch.load(out / STATE_DIR / STATE_FILE, map_location="cpu", weights_only=True)


def restore(state: TrainState, out: Path) -> None:
    """Optimizer, scheduler and step of OUT/last/ into `state` (--resume)."""
    saved = load_state(out)
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.step = int(saved["step"])


def _eta(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _Progress:
    """The tqdm bar on a terminal; otherwise one line every --log-every steps; the loss EMA and the last dev CER."""

    def __init__(self, state: TrainState, options: FinetuneOptions, log: Callable[[str], None]) -> None:
        from tqdm import tqdm

        self.options, self.log = options, log
        self.started, self.first_step = time.monotonic(), state.step
        self.bar = tqdm(
            total=state.total, initial=state.step, unit="step", desc="finetune", disable=not options.progress
        )
        self.ema: float | None = None
        self.last_eval: dict = {}

    def update(self, step: int, total: int, loss: float) -> None:
        if math.isfinite(loss):
            self.ema = loss if self.ema is None else 0.95 * self.ema + 0.05 * loss
        loss_text = f"{self.ema:.3f}" if self.ema is not None else "nan"
        cer = self.last_eval.get("cer")
        self.bar.set_postfix(loss=loss_text, cer=f"{cer:.3f}" if cer is not None else "-", refresh=False)
        self.bar.update(1)
        every = self.options.log_every
        if not self.options.progress and every and (step % every == 0 or step == total):
            # no progress bar (stderr is a file or a pipe): one line every --log-every steps instead
            rate = (step - self.first_step) / max(self.elapsed(), 1e-9)
            cer_text = f", dev CER {cer:.4f}" if cer is not None else ""
            self.log(
                f"step {step}/{total}: loss {f'{self.ema:.4f}' if self.ema is not None else 'nan'}{cer_text}, "
                f"{rate:.2f} steps/s, ETA {_eta((total - step) / rate) if rate > 0 else '?'}"
            )

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def _one_step(
    state: TrainState, examples: list[Example], options: FinetuneOptions, augment: NoiseAugmenter
) -> float:
    torch = _torch()
    rng = np.random.default_rng([options.seed, 3, state.step])
    # dropout (torch) and SpecAugment masks (numpy's global generator in transformers) per step, so a resumed
    # run draws exactly what the interrupted one would have drawn
    torch.manual_seed(options.seed * 1_000_003 + state.step)
    np.random.seed((options.seed * 1_000_003 + state.step) % 2**32)
    arrays = [prepare_input(e, state.front, augment, rng) for e in examples]
    batch, _ = collate(arrays, [state.vocab.encode(e.text) for e in examples], state.front)
    loss = train_step(state.model, batch, state.optimizer, state.scheduler, options.grad_clip)
    state.step += 1
    return loss


def run_loop(
    state: TrainState,
    data: TrainData,
    options: FinetuneOptions,
    out: Path,
    *,
    augment: NoiseAugmenter,
    dev: list[Example],
    log: Callable[[str], None],
    stop_after: int | None = None,
) -> FinetuneResult:
    """Epochs of deterministic batches from ``state.step`` to ``state.total``: dev CER on `dev` every --eval-every
    steps (or epoch end), state saved every --save-every steps, at epoch ends, at the end and on Ctrl-C/SIGTERM.
    `stop_after` ends the run after that many steps as an interruption would (tests)."""
    progress = _Progress(state, options, log)
    finished = False
    with (out / LOG_FILE).open("a", encoding="utf-8") as journal:
        try:
            while state.step < state.total:
                epoch, offset = divmod(state.step, state.per_epoch)
                batches = epoch_batches(
                    data.train, data.source, data.share, options.batch_size, options.seed, epoch
                )
                for examples in batches[offset:]:
                    loss = _one_step(state, examples, options, augment)
                    step, total = state.step, state.total
                    record = {
                        "step": step,
                        "epoch": epoch,
                        "loss": loss,
                        "lr": state.scheduler.get_last_lr()[0],
                    }
                    end_of_epoch = step % state.per_epoch == 0
                    every = options.eval_every
                    if (every and step % every == 0) or (not every and end_of_epoch) or step == total:
                        progress.last_eval = evaluate(
                            state.model, dev, state.vocab, state.front, options.language
                        )
                        record |= {"dev_cer": progress.last_eval["cer"], "dev_wer": progress.last_eval["wer"]}
                        state.model.train()
                    journal.write(json.dumps(record) + "\n")
                    journal.flush()
                    progress.update(step, total, loss)
                    if (
                        (options.save_every and step % options.save_every == 0)
                        or end_of_epoch
                        or step == total
                    ):
                        save_state(state, out)
                    if stop_after is not None and stop_after <= step < total:
                        save_state(state, out)
                        return _result(state, out, False, progress)
                    if step >= total:
                        break
            finished = True
        except KeyboardInterrupt:
            save_state(state, out)
            log(
                f"\ninterrupted: state saved at step {state.step}; continue with the same command and --resume"
            )
            raise
        finally:
            progress.bar.close()
            journal.write(
                json.dumps({"event": "session", "seconds": round(progress.elapsed(), 1), "step": state.step})
            )
            journal.write("\n")
    return _result(state, out, finished, progress)


def _result(state: TrainState, out: Path, finished: bool, progress: _Progress) -> FinetuneResult:
    return FinetuneResult(
        out, state.step, state.total, finished, progress.last_eval, progress.elapsed(), len(state.vocab)
    )
