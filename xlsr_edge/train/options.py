"""What a fine-tuning run is given and what it returns: ``FinetuneOptions`` (the CLI flags), the files of its
output folder, ``TrainData`` (the utterances and vocabulary) and ``FinetuneResult``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from xlsr_edge.errors import XlsrEdgeError
from xlsr_edge.outputs import OutputKind, has_file
from xlsr_edge.train.data import Example
from xlsr_edge.train.vocab import CtcVocab

SAMPLE_RATE = 16000
STATE_DIR = "last"
STATE_FILE = "trainer_state.pt"
LOG_FILE = "train_log.jsonl"
ARGS_FILE = "finetune_args.json"
RESULT_FILE = "train_result.json"
# written when a run starts: a folder with it is this command's output (resumable, or finished)
FINETUNE_OUTPUT = OutputKind("fine-tuning output", "xlsr-edge finetune", has_file(ARGS_FILE))


@dataclass(frozen=True)
class FinetuneOptions:
    init: str
    train: Path
    dev: Path
    out: Path
    language: str | None = None
    vocab: Path | None = None
    map_unknown: bool = False
    freeze_feature_encoder: bool | None = None  # None: on for a pretrained body, off from scratch
    mix: str | None = None  # SOURCE_MANIFEST:SHARE
    mix_language: str | None = None
    noise_prob: float = 0.0
    snr_db: tuple[float, float] = (5.0, 30.0)
    noise_dir: Path | None = None
    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    max_seconds: float | None = 20.0
    threads: int | None = None
    seed: int = 0
    eval_every: int = 0  # steps; 0: at the end of every epoch
    dev_max: int = 200  # utterances scored during training (the final score uses all of dev)
    save_every: int = 200
    log_every: int = 50  # steps between progress lines on stderr when it is not a terminal (no progress bar)
    resume: bool = False
    overwrite: bool = False
    allow_pickle: bool = False
    keep_head: bool = False  # continue a checkpoint: reuse its lm_head when its vocabulary is the run's
    heads_only: bool = False  # train lm_head alone on a frozen body (heads for a multi-language bundle)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 and not self.max_steps:
            raise XlsrEdgeError("--epochs must be at least 1")
        if self.batch_size < 1:
            raise XlsrEdgeError("--batch-size must be at least 1")
        if self.lr <= 0:
            raise XlsrEdgeError("--lr must be positive")
        if not 0 <= self.warmup_ratio < 1:
            raise XlsrEdgeError("--warmup-ratio must be in [0, 1)")
        if self.log_every < 0:
            raise XlsrEdgeError("--log-every must be >= 0 (0: no progress lines)")


@dataclass
class FinetuneResult:
    out: Path
    step: int
    total_steps: int
    finished: bool
    dev: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    vocab_size: int = 0


@dataclass
class TrainData:
    train: list[Example]
    dev: list[Example]
    source: list[Example]  # --mix utterances of the source language
    share: float  # their share of every epoch
    vocab: CtcVocab
