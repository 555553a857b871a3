"""Cross-lingual CTC fine-tuning of Wav2Vec2/XLS-R: new head for the target alphabet, frozen CNN, source mixing.

The recipe, step by step (each step is a small function below):

1. Transcripts go through ``normalize_text(text, language)``; the vocabulary is built from the training (and
   ``--mix`` source) transcripts or read with ``--vocab``; characters train/dev/mix use that the vocabulary
   lacks stop the run with their counts (or become ``<unk>`` with ``--map-unknown``).
2. The body comes from ``--init``: a checkpoint folder (weights reused, its ``lm_head`` thrown away unless
   ``--keep-head`` continues it with the same vocabulary), or a
   configuration (a named one such as ``tiny-demo``, a ``config.json``, or a folder with only a config) for
   training from scratch. A new randomly initialized ``lm_head`` is sized to the vocabulary.
3. The CNN feature encoder is frozen by default when the body is pretrained (``--no-freeze-feature-encoder``
   to train it); a from-scratch body trains it unless ``--freeze-feature-encoder`` is given. ``--heads-only``
   freezes the whole body and trains the CTC head alone: the body stays bit-identical to ``--init``, so heads
   for several languages trained this way share one backbone (``export-xlsr --multi``).
4. Every epoch holds every target utterance once plus source utterances for the ``--mix`` share, in
   length-grouped batches; noise is added with ``--noise-prob`` at ``--snr-db``.
5. CTC loss, AdamW, linear warm-up + cosine decay, gradient clipping. Audio goes through the runtime's own
   front end (``load_audio`` + ``normalize``), so training and deployment see the same samples.
6. ``OUT/last/`` holds the latest weights and optimizer state (``--resume`` continues from it); at the end
   ``OUT/`` is a normal Hugging Face checkpoint folder (model + processor with the vocabulary) that
   ``export-xlsr OUT -o BUNDLE`` takes unchanged.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xlsr_edge.errors import XlsrEdgeError, require
from xlsr_edge.export.tiny import TINY
from xlsr_edge.measure.metrics import error_rates
from xlsr_edge.outputs import OutputKind, atomic_output, check_output, has_file, interrupts_raise, swap_in
from xlsr_edge.train.augment import NoiseAugmenter
from xlsr_edge.train.data import (
    Example,
    batches_per_epoch,
    epoch_batches,
    load_examples,
    lr_factor,
    parse_mix,
)
from xlsr_edge.train.vocab import CtcVocab, build_vocab, check_alphabet, read_vocab

SAMPLE_RATE = 16000
STATE_DIR = "last"
STATE_FILE = "trainer_state.pt"
LOG_FILE = "train_log.jsonl"
ARGS_FILE = "finetune_args.json"
RESULT_FILE = "train_result.json"
# written when a run starts: a folder with it is this command's output (resumable, or finished)
FINETUNE_OUTPUT = OutputKind("fine-tuning output", "xlsr-edge finetune", has_file(ARGS_FILE))

_XLSR_LAYOUT = dict(
    conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    conv_stride=(5, 2, 2, 2, 2, 2, 2),
    feat_extract_norm="layer",
    do_stable_layer_norm=True,
)
# Configurations for training from scratch, by name.
NAMED_CONFIGS: dict[str, dict[str, Any]] = {
    # The shipped demo model: XLS-R-shaped (layer norm, stable layer norm, XLS-R kernels/strides), ~2.2 M params.
    "tiny-demo": dict(
        hidden_size=192,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=768,
        conv_dim=(32, 32, 32, 64, 128, 128, 128),
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
        # small model, plenty of synthetic data: under- not over-fitting limits it, so no dropout (SpecAugment
        # time masking stays at transformers' default 0.05)
        layerdrop=0.0,
        hidden_dropout=0.0,
        activation_dropout=0.0,
        attention_dropout=0.0,
        final_dropout=0.0,
        **_XLSR_LAYOUT,
    ),
    # For tests: xlsr_edge.export.tiny's TINY with the XLS-R layout (a few seconds per dozen steps).
    "tiny": {**TINY, "layerdrop": 0.0, **_XLSR_LAYOUT},
}


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


@dataclass(frozen=True)
class FrontEnd:
    """How audio becomes model input: the runtime's load_audio + normalize, and whether batches carry a mask."""

    do_normalize: bool = True
    feat_extract_norm: str = "layer"

    @property
    def uses_attention_mask(self) -> bool:
        return self.feat_extract_norm == "layer"


@dataclass
class FinetuneResult:
    out: Path
    step: int
    total_steps: int
    finished: bool
    dev: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    vocab_size: int = 0


# -- model --------------------------------------------------------------------------------------------------


def _transformers():
    return require("transformers", "train", "needed to fine-tune")


def _torch():
    return require("torch", "train", "needed to fine-tune")


def has_weights(folder: Path) -> bool:
    return any((folder / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json")) or any(
        (folder / f).is_file() for f in ("pytorch_model.bin", "pytorch_model.bin.index.json")
    )


def resolve_init(init: str) -> tuple[str, Any]:
    """('config', Wav2Vec2Config kwargs or a config file) for from-scratch training, or ('checkpoint', folder)."""
    if init in NAMED_CONFIGS:
        return "config", dict(NAMED_CONFIGS[init])
    p = Path(init)
    if p.is_file() and p.suffix == ".json":
        return "config", p
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise XlsrEdgeError(f"--init {p}: no config.json; give a Hugging Face checkpoint folder")
        return ("checkpoint", p) if has_weights(p) else ("config", p / "config.json")
    raise XlsrEdgeError(
        f"--init {init!r} is neither a checkpoint folder, a config.json nor a named configuration "
        f"({', '.join(NAMED_CONFIGS)})"
    )


def read_front_end(folder: Path, config) -> FrontEnd:
    """do_normalize from the checkpoint's feature extractor settings (default True), norm from its config."""
    do_normalize = True
    for name in ("preprocessor_config.json", "processor_config.json"):
        p = folder / name
        if p.is_file():
            data = json.loads(p.read_text(encoding="utf-8"))
            data = data.get("feature_extractor", data) if name == "processor_config.json" else data
            do_normalize = bool(data.get("do_normalize", True))
            break
    return FrontEnd(do_normalize, getattr(config, "feat_extract_norm", "group"))


def _ctc_settings(config, vocab: CtcVocab) -> None:
    config.vocab_size = len(vocab)
    config.pad_token_id = vocab.pad_id
    config.ctc_loss_reduction = "mean"
    config.ctc_zero_infinity = True


def new_head(model, vocab: CtcVocab, seed: int) -> None:
    """Replace lm_head by a randomly initialized Linear with one output per vocabulary token."""
    torch = _torch()
    gen = torch.Generator().manual_seed(seed)
    std = float(getattr(model.config, "initializer_range", 0.02))
    head = torch.nn.Linear(model.lm_head.in_features, len(vocab))
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * std)
        head.bias.zero_()
    model.lm_head = head
    _ctc_settings(model.config, vocab)


def build_model(
    init: str, vocab: CtcVocab, *, seed: int = 0, allow_pickle: bool = False, keep_head: bool = False
):
    """(model, front end, pretrained?) for --init, with a new head sized to the vocabulary.

    ``keep_head`` continues a checkpoint instead: its ``lm_head`` is kept, which only makes sense when the
    checkpoint's vocabulary is exactly ``vocab`` (same tokens, same ids): anything else is an error.
    """
    torch, transformers = _torch(), _transformers()
    transformers.utils.logging.set_verbosity_error()  # "newly initialized lm_head" is what we want
    kind, value = resolve_init(init)
    if kind == "config" and keep_head:
        raise XlsrEdgeError(f"--keep-head continues a checkpoint folder; {init} is a configuration (no head)")
    if kind == "config":
        if isinstance(value, dict):
            config = transformers.Wav2Vec2Config(**value)
            front = FrontEnd(True, config.feat_extract_norm)
        else:
            config = transformers.Wav2Vec2Config.from_json_file(str(value))
            front = read_front_end(Path(value).parent, config)
        _ctc_settings(config, vocab)
        torch.manual_seed(seed)
        model = transformers.Wav2Vec2ForCTC(config)
        new_head(model, vocab, seed)
        return model, front, False
    folder: Path = value
    safetensors = any((folder / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json"))
    if not safetensors and not allow_pickle:
        raise XlsrEdgeError(
            f"{folder} holds only pickle weights (pytorch_model.bin), which can run code when loaded; "
            "convert it to safetensors or pass --allow-pickle if you trust its source"
        )
    try:
        model = transformers.Wav2Vec2ForCTC.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=safetensors, dtype=torch.float32
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise XlsrEdgeError(f"cannot load the body from {folder}: {exc}") from exc
    if getattr(model.config, "add_adapter", False):
        raise XlsrEdgeError("checkpoints with add_adapter=True are not supported (export cannot take them)")
    if keep_head:
        own = folder / "vocab.json"
        tokens = read_vocab(own).tokens if own.is_file() else None
        if tokens != vocab.tokens or model.lm_head.out_features != len(vocab):
            raise XlsrEdgeError(
                f"--keep-head: {folder}'s vocabulary ({'none' if tokens is None else len(tokens)} tokens) is not "
                f"the run's ({len(vocab)} tokens); pass --vocab {folder} or drop --keep-head"
            )
        _ctc_settings(model.config, vocab)
    else:
        new_head(model, vocab, seed)
    return model, read_front_end(folder, model.config), True


def feature_encoder_params(model) -> list:
    return list(model.wav2vec2.feature_extractor.parameters())


def set_feature_encoder_frozen(model, frozen: bool) -> None:
    for p in feature_encoder_params(model):
        p.requires_grad = not frozen
    model.wav2vec2.feature_extractor._requires_grad = not frozen


def save_checkpoint(model, vocab: CtcVocab, front: FrontEnd, folder: Path) -> Path:
    """A normal Hugging Face checkpoint folder: safetensors model, vocab.json, tokenizer, feature extractor."""
    transformers = _transformers()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    vocab.write(folder / "vocab.json")
    tokenizer = transformers.Wav2Vec2CTCTokenizer(
        str(folder / "vocab.json"), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|"
    )
    extractor = transformers.Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=SAMPLE_RATE,
        padding_value=0.0,
        do_normalize=front.do_normalize,
        return_attention_mask=front.uses_attention_mask,
    )
    transformers.Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(
        str(folder)
    )
    return folder


# -- batches ------------------------------------------------------------------------------------------------


def prepare_input(
    example: Example, front: FrontEnd, augment: NoiseAugmenter | None, rng: np.random.Generator
) -> np.ndarray:
    """The runtime's front end (load_audio + normalize) with optional noise before normalization."""
    from xlsr_edge.runtime.audio import load_audio, normalize

    x = load_audio(example.audio, SAMPLE_RATE)
    if augment is not None:
        x = augment(x, rng)
    return normalize(x, front.do_normalize)


def collate(
    arrays: list[np.ndarray], labels: list[list[int]] | None, front: FrontEnd
) -> tuple[dict, np.ndarray]:
    """(batch, samples per item): zero-padded input_values, attention_mask (layer-norm models only), labels
    padded with -100."""
    from xlsr_edge.runtime.batching import pad_batch

    torch = _torch()
    values, mask = pad_batch(arrays)  # the runtime's padding: training sees what inference sees
    batch = {"input_values": torch.from_numpy(values)}
    if front.uses_attention_mask:
        batch["attention_mask"] = torch.from_numpy(mask)
    if labels is not None:
        width = max(1, max(len(x) for x in labels))
        lab = np.full((len(labels), width), -100, dtype=np.int64)
        for i, x in enumerate(labels):
            lab[i, : len(x)] = x
        batch["labels"] = torch.from_numpy(lab)
    return batch, mask.sum(axis=1)


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


def ctc_loss(model, examples: list[Example], vocab: CtcVocab, front: FrontEnd, batch_size: int = 16) -> float:
    """Mean CTC loss over examples in eval mode (no dropout): for tests and reports."""
    torch = _torch()
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for b in range(0, len(examples), batch_size):
            chunk = examples[b : b + batch_size]
            rng = np.random.default_rng(0)
            arrays = [prepare_input(e, front, None, rng) for e in chunk]
            batch, _ = collate(arrays, [vocab.encode(e.text) for e in chunk], front)
            total += float(model(**batch).loss) * len(chunk)
            n += len(chunk)
    model.train(was_training)
    return total / max(1, n)


def transcribe(
    model, examples: list[Example], vocab: CtcVocab, front: FrontEnd, batch_size: int = 16
) -> list[str]:
    """Greedy transcripts with the runtime's decoder (same text rules as the deployed model)."""
    torch = _torch()
    from xlsr_edge.decoders import Vocabulary
    from xlsr_edge.decoders.greedy import GreedyDecoder

    decoder = GreedyDecoder(Vocabulary(tokens=vocab.tokens, blank_id=vocab.pad_id, word_delimiter="|"))
    order = sorted(range(len(examples)), key=lambda i: examples[i].duration)
    out: list[str] = [""] * len(examples)
    was_training = model.training
    model.eval()
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            batch, samples = collate([prepare_input(examples[i], front, None, rng) for i in idx], None, front)
            logits = model(**batch).logits.float().numpy()
            frames = model._get_feat_extract_output_lengths(torch.from_numpy(samples)).numpy()
            for i, d in zip(idx, decoder.decode_batch(logits, frames.astype(np.int64))):
                out[i] = d.text
    model.train(was_training)
    return out


def evaluate(model, examples: list[Example], vocab: CtcVocab, front: FrontEnd, language: str | None) -> dict:
    hyps = transcribe(model, examples, vocab, front)
    r = error_rates([e.text for e in examples], hyps, language=language)
    return {"cer": r.cer, "wer": r.wer, "utterances": r.utterances}


def spread(examples: list[Example], n: int) -> list[Example]:
    """n examples evenly spaced through the list (all when n >= len)."""
    if n <= 0 or n >= len(examples):
        return list(examples)
    return [examples[int(i)] for i in np.linspace(0, len(examples) - 1, n).round()]


# -- state --------------------------------------------------------------------------------------------------


def save_state(model, optimizer, scheduler, step: int, vocab: CtcVocab, front: FrontEnd, out: Path) -> None:
    """OUT/last/: weights + tokenizer (a loadable checkpoint) and the optimizer/scheduler state at `step`.

    Written next to it and swapped in: a kill at any moment leaves the previous or the new state for --resume.
    """
    torch = _torch()
    folder = out / STATE_DIR
    tmp = out / f".{STATE_DIR}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_checkpoint(model, vocab, front, tmp)
    torch.save(
        {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
        tmp / STATE_FILE,
    )
    swap_in(tmp, folder)


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


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the run ------------------------------------------------------------------------------------------------


@dataclass
class _Data:
    train: list[Example]
    dev: list[Example]
    source: list[Example]
    share: float
    vocab: CtcVocab


def load_data(options: FinetuneOptions, resuming: bool) -> _Data:
    train, dropped = load_examples(options.train, options.language, max_seconds=options.max_seconds)
    if dropped:
        _log(
            f"train: left out {dropped} utterances (empty transcript or longer than {options.max_seconds} s)"
        )
    dev, _ = load_examples(options.dev, options.language)
    source: list[Example] = []
    share = 0.0
    if options.mix:
        path, share = parse_mix(options.mix)
        source, _ = load_examples(path, options.mix_language, source=True, max_seconds=options.max_seconds)
    if options.vocab is not None:
        vocab = read_vocab(options.vocab)
    elif resuming:
        vocab = read_vocab(Path(options.out) / STATE_DIR)
    else:
        vocab = build_vocab(e.text for e in train + source)
    sources = {"train": [e.text for e in train], "dev": [e.text for e in dev]}
    if source:
        sources["mix"] = [e.text for e in source]
    unknown = check_alphabet(sources, vocab, options.map_unknown)
    if unknown:
        _log(f"--map-unknown: {sum(unknown.values())} characters trained as <unk>: {dict(unknown)}")
    return _Data(train, dev, source, share, vocab)


def _json_options(options: FinetuneOptions) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()}


def _has_state(work: Path, exc: BaseException) -> bool:
    """An interrupted run that saved its state replaces the old output anyway: it is what --resume continues."""
    return isinstance(exc, KeyboardInterrupt) and (work / STATE_DIR / STATE_FILE).is_file()


def finetune(options: FinetuneOptions, *, stop_after: int | None = None) -> FinetuneResult:
    """Run the recipe. `stop_after` ends the run after that many steps as an interruption would (tests).

    -o is written in place when it is new (or empty) or resumed, so a killed run can be resumed. With
    --overwrite, an earlier run stays at -o until the new one finishes or is interrupted with its state saved
    (Ctrl-C, SIGTERM); a kill -9 before that loses only the new run's temp folder, which the next run removes.
    """
    out = Path(options.out)
    init = Path(options.init)
    protect = [("--init", init)] if init.exists() else []
    resuming = options.resume and (out / STATE_DIR / STATE_FILE).is_file()
    # before any work: never the --init checkpoint, never a folder of someone else's files
    check_output(out, FINETUNE_OUTPUT, overwrite=True, protect=protect)
    replacing = not resuming and out.is_dir() and any(out.iterdir())
    if replacing and not options.overwrite:
        raise XlsrEdgeError(
            f"output {out} already exists; pass --resume to continue it or --overwrite to replace it"
        )
    if options.resume and not resuming:
        _log(f"--resume: no saved state in {out / STATE_DIR}; starting from the beginning")
    if replacing:
        work = atomic_output(out, FINETUNE_OUTPUT, overwrite=True, protect=protect, commit_if=_has_state)
    else:
        work = _in_place(out)
    with work as folder:
        return _finetune(options, out, folder, resuming, stop_after)


@contextmanager
def _in_place(out: Path) -> Iterator[Path]:
    with interrupts_raise():  # SIGTERM/SIGHUP save the state like Ctrl-C does
        yield out


def _finetune(
    options: FinetuneOptions, out: Path, work: Path, resuming: bool, stop_after: int | None
) -> FinetuneResult:
    torch = _torch()
    transformers = _transformers()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if options.threads:
        torch.set_num_threads(options.threads)
    data = load_data(options, resuming)
    vocab = data.vocab

    if resuming:
        state_dir = work / STATE_DIR
        model = transformers.Wav2Vec2ForCTC.from_pretrained(
            str(state_dir), local_files_only=True, dtype=torch.float32
        )
        front = read_front_end(state_dir, model.config)
        pretrained = json.loads((work / ARGS_FILE).read_text(encoding="utf-8")).get("pretrained_body", True)
        if model.lm_head.out_features != len(vocab):
            raise XlsrEdgeError(
                f"{state_dir} has {model.lm_head.out_features} outputs but the vocabulary {len(vocab)}"
            )
    else:
        model, front, pretrained = build_model(
            options.init,
            vocab,
            seed=options.seed,
            allow_pickle=options.allow_pickle,
            keep_head=options.keep_head,
        )
    freeze = pretrained if options.freeze_feature_encoder is None else options.freeze_feature_encoder
    set_feature_encoder_frozen(model, freeze)
    if options.heads_only:
        if not pretrained:
            raise XlsrEdgeError(
                "--heads-only trains a head on a trained body: --init must be a checkpoint folder"
            )
        freeze = True
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("lm_head.")
    model.train()

    per_epoch = batches_per_epoch(len(data.train), len(data.source), data.share, options.batch_size)
    total = options.max_steps or options.epochs * per_epoch
    warmup = round(options.warmup_ratio * total)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup))
    step = 0
    if resuming:
        state = load_state(work)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        _log(f"resuming {out} from step {step} of {total}")
    work.mkdir(parents=True, exist_ok=True)
    n_params = sum(p.numel() for p in model.parameters())
    if not resuming:
        args = _json_options(options) | {
            "pretrained_body": pretrained,
            "feature_encoder_frozen": freeze,
            "body_frozen": options.heads_only,
            "parameters": n_params,
            "vocab": list(vocab.tokens),
            "train_utterances": len(data.train),
            "train_seconds": round(sum(e.duration for e in data.train), 1),
            "source_utterances": len(data.source),
            "steps_per_epoch": per_epoch,
            "total_steps": total,
        }
        (work / ARGS_FILE).write_text(json.dumps(args, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    else:
        # a resumed run may extend the schedule (more --epochs): record every session's plan
        args = json.loads((work / ARGS_FILE).read_text(encoding="utf-8"))
        args.setdefault("resumed", []).append(
            {"at_step": step, "epochs": options.epochs, "max_steps": options.max_steps, "total_steps": total}
        )
        args["total_steps"] = total
        (work / ARGS_FILE).write_text(json.dumps(args, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    _log(
        f"finetune: {n_params / 1e6:.2f} M parameters, {len(vocab)} tokens, feature encoder "
        f"{'frozen' if freeze else 'trained'}{' (whole body frozen: --heads-only)' if options.heads_only else ''}, "
        f"{len(data.train)} train utterances "
        f"({sum(e.duration for e in data.train) / 3600:.2f} h), {len(data.source)} source, {per_epoch} steps/epoch, "
        f"{total} steps"
    )
    augment = NoiseAugmenter(options.noise_prob, options.snr_db, options.noise_dir, SAMPLE_RATE)
    dev_small = spread(data.dev, options.dev_max)
    result = _loop(
        model,
        optimizer,
        scheduler,
        data,
        front,
        augment,
        dev_small,
        options,
        step,
        total,
        per_epoch,
        stop_after,
        work,
    )
    result.out = out
    if result.finished:
        model.eval()
        result.dev = evaluate(model, data.dev, vocab, front, options.language)
        save_final(model, vocab, front, work)
        _write_result(work, result, options)
        _log(f"wrote {out}: dev CER {result.dev['cer']:.4f} WER {result.dev['wer']:.4f}")
    return result


def _write_result(out: Path, result: FinetuneResult, options: FinetuneOptions) -> None:
    log = [
        json.loads(line) for line in (out / LOG_FILE).read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    obj = {
        "steps": result.step,
        "train_seconds_wall": round(
            sum(r.get("seconds", 0.0) for r in log if r.get("event") == "session"), 1
        ),
        "dev": result.dev,
        "threads": options.threads,
    }
    (out / RESULT_FILE).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _eta(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _loop(
    model,
    optimizer,
    scheduler,
    data,
    front,
    augment,
    dev_small,
    options,
    step,
    total,
    per_epoch,
    stop_after,
    out: Path,
):
    """The training loop proper: epochs of deterministic batches, eval, periodic state saves."""
    torch = _torch()
    from tqdm import tqdm

    vocab = data.vocab
    started = time.monotonic()
    first_step = step
    log = (out / LOG_FILE).open("a", encoding="utf-8")
    bar = tqdm(total=total, initial=step, unit="step", desc="finetune", disable=not options.progress)
    ema = None
    last_eval: dict = {}
    finished = False

    def write(record: dict) -> None:
        log.write(json.dumps(record) + "\n")
        log.flush()

    try:
        while step < total:
            epoch, offset = divmod(step, per_epoch)
            batches = epoch_batches(
                data.train, data.source, data.share, options.batch_size, options.seed, epoch
            )
            for batch_examples in batches[offset:]:
                rng = np.random.default_rng([options.seed, 3, step])
                # dropout (torch) and SpecAugment masks (numpy's global generator in transformers) per step,
                # so a resumed run draws exactly what the interrupted one would have drawn
                torch.manual_seed(options.seed * 1_000_003 + step)
                np.random.seed((options.seed * 1_000_003 + step) % 2**32)
                arrays = [prepare_input(e, front, augment, rng) for e in batch_examples]
                batch, _ = collate(arrays, [vocab.encode(e.text) for e in batch_examples], front)
                loss = train_step(model, batch, optimizer, scheduler, options.grad_clip)
                step += 1
                if math.isfinite(loss):
                    ema = loss if ema is None else 0.95 * ema + 0.05 * loss
                record = {"step": step, "epoch": epoch, "loss": loss, "lr": scheduler.get_last_lr()[0]}
                end_of_epoch = step % per_epoch == 0
                if (
                    (options.eval_every and step % options.eval_every == 0)
                    or (not options.eval_every and end_of_epoch)
                    or step == total
                ):
                    last_eval = evaluate(model, dev_small, vocab, front, options.language)
                    record |= {"dev_cer": last_eval["cer"], "dev_wer": last_eval["wer"]}
                    model.train()
                write(record)
                bar.set_postfix(
                    loss=f"{ema:.3f}" if ema is not None else "nan",
                    cer=f"{last_eval['cer']:.3f}" if last_eval else "-",
                    refresh=False,
                )
                bar.update(1)
                if (
                    not options.progress
                    and options.log_every
                    and (step % options.log_every == 0 or step == total)
                ):
                    # no progress bar (stderr is a file or a pipe): one line every --log-every steps instead
                    rate = (step - first_step) / max(time.monotonic() - started, 1e-9)
                    cer = f", dev CER {last_eval['cer']:.4f}" if last_eval else ""
                    loss_text = f"{ema:.4f}" if ema is not None else "nan"
                    _log(
                        f"step {step}/{total}: loss {loss_text}{cer}, {rate:.2f} steps/s, "
                        f"ETA {_eta((total - step) / rate) if rate > 0 else '?'}"
                    )
                if (options.save_every and step % options.save_every == 0) or end_of_epoch or step == total:
                    save_state(model, optimizer, scheduler, step, vocab, front, out)
                if stop_after is not None and step >= stop_after and step < total:
                    save_state(model, optimizer, scheduler, step, vocab, front, out)
                    return FinetuneResult(
                        out, step, total, False, last_eval, time.monotonic() - started, len(vocab)
                    )
                if step >= total:
                    break
        finished = True
    except KeyboardInterrupt:
        save_state(model, optimizer, scheduler, step, vocab, front, out)
        _log(f"\ninterrupted: state saved at step {step}; continue with the same command and --resume")
        raise
    finally:
        bar.close()
        write({"event": "session", "seconds": round(time.monotonic() - started, 1), "step": step})
        log.close()
    return FinetuneResult(out, step, total, finished, last_eval, time.monotonic() - started, len(vocab))
