"""Cross-lingual CTC fine-tuning of Wav2Vec2/XLS-R: new head for the target alphabet, frozen CNN, source mixing.

This module runs the recipe (orchestration); the model side is ``train.model``, the loop and its saved state
``train.loop``, the options and result types ``train.options``. Their public names stay importable from here.

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
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from xlsr_edge.errors import XlsrEdgeError
from xlsr_edge.outputs import atomic_output, check_output, interrupts_raise
from xlsr_edge.train.augment import NoiseAugmenter
from xlsr_edge.train.data import Example, batches_per_epoch, load_examples, lr_factor, parse_mix
from xlsr_edge.train.loop import TrainState, load_state, restore, run_loop, save_final, save_state, train_step
from xlsr_edge.train.model import (
    NAMED_CONFIGS,
    FrontEnd,
    _torch,
    _transformers,
    build_model,
    collate,
    ctc_loss,
    evaluate,
    feature_encoder_params,
    has_weights,
    load_resumed,
    new_head,
    prepare_input,
    read_front_end,
    resolve_init,
    save_checkpoint,
    set_feature_encoder_frozen,
    set_trainable,
    spread,
    transcribe,
)
from xlsr_edge.train.options import (
    ARGS_FILE,
    FINETUNE_OUTPUT,
    LOG_FILE,
    RESULT_FILE,
    SAMPLE_RATE,
    STATE_DIR,
    STATE_FILE,
    FinetuneOptions,
    FinetuneResult,
    TrainData,
)
from xlsr_edge.train.vocab import build_vocab, check_alphabet, read_vocab

__all__ = [
    "ARGS_FILE",
    "FINETUNE_OUTPUT",
    "LOG_FILE",
    "NAMED_CONFIGS",
    "RESULT_FILE",
    "SAMPLE_RATE",
    "STATE_DIR",
    "STATE_FILE",
    "FinetuneOptions",
    "FinetuneResult",
    "FrontEnd",
    "TrainData",
    "TrainState",
    "build_model",
    "collate",
    "ctc_loss",
    "evaluate",
    "feature_encoder_params",
    "finetune",
    "has_weights",
    "load_data",
    "load_state",
    "new_head",
    "prepare_input",
    "read_front_end",
    "resolve_init",
    "save_checkpoint",
    "save_final",
    "save_state",
    "set_feature_encoder_frozen",
    "spread",
    "train_step",
    "transcribe",
]


def _log(msg: str) -> None:
    logging.getLogger(__name__).info(msg)  # the CLI shows it on stderr (xlsr_edge.cli.cli_logging)


def load_data(options: FinetuneOptions, resuming: bool) -> TrainData:
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
    return TrainData(train, dev, source, share, vocab)


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


def _prepare_model(options: FinetuneOptions, work: Path, vocab, resuming: bool) -> tuple:
    """(model, front end, pretrained body?, feature encoder frozen?) for a new or a resumed run."""
    if resuming:
        model, front = load_resumed(work / STATE_DIR, vocab)
        pretrained = json.loads((work / ARGS_FILE).read_text(encoding="utf-8")).get("pretrained_body", True)
    else:
        model, front, pretrained = build_model(
            options.init,
            vocab,
            seed=options.seed,
            allow_pickle=options.allow_pickle,
            keep_head=options.keep_head,
        )
    freeze = set_trainable(model, pretrained, options.freeze_feature_encoder, options.heads_only)
    model.train()
    return model, front, pretrained, freeze


def _new_state(options: FinetuneOptions, data: TrainData, model, front: FrontEnd) -> TrainState:
    """AdamW on the trainable parameters, linear warm-up + cosine decay over the run's steps, at step 0."""
    torch = _torch()
    per_epoch = batches_per_epoch(len(data.train), len(data.source), data.share, options.batch_size)
    total = options.max_steps or options.epochs * per_epoch
    warmup = round(options.warmup_ratio * total)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup))
    return TrainState(model, optimizer, scheduler, data.vocab, front, 0, total, per_epoch)


def _write_args(
    work: Path, options: FinetuneOptions, data: TrainData, state: TrainState, facts: dict
) -> None:
    """OUT/finetune_args.json: the options and facts of the run; a resumed run appends its session's plan (it may
    extend the schedule with more --epochs)."""
    path = work / ARGS_FILE
    if facts.get("resumed_at") is None:
        args = _json_options(options) | {
            "pretrained_body": facts["pretrained"],
            "feature_encoder_frozen": facts["freeze"],
            "body_frozen": options.heads_only,
            "parameters": facts["parameters"],
            "vocab": list(data.vocab.tokens),
            "train_utterances": len(data.train),
            "train_seconds": round(sum(e.duration for e in data.train), 1),
            "source_utterances": len(data.source),
            "steps_per_epoch": state.per_epoch,
            "total_steps": state.total,
        }
    else:
        args = json.loads(path.read_text(encoding="utf-8"))
        args.setdefault("resumed", []).append(
            {
                "at_step": facts["resumed_at"],
                "epochs": options.epochs,
                "max_steps": options.max_steps,
                "total_steps": state.total,
            }
        )
        args["total_steps"] = state.total
    path.write_text(json.dumps(args, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


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
    model, front, pretrained, freeze = _prepare_model(options, work, data.vocab, resuming)
    state = _new_state(options, data, model, front)
    if resuming:
        restore(state, work)
        _log(f"resuming {out} from step {state.step} of {state.total}")
    work.mkdir(parents=True, exist_ok=True)
    n_params = sum(p.numel() for p in model.parameters())
    facts = {"pretrained": pretrained, "freeze": freeze, "parameters": n_params}
    _write_args(work, options, data, state, facts | {"resumed_at": state.step if resuming else None})
    hours = sum(e.duration for e in data.train) / 3600
    _log(
        f"finetune: {n_params / 1e6:.2f} M parameters, {len(data.vocab)} tokens, feature encoder "
        f"{'frozen' if freeze else 'trained'}{' (whole body frozen: --heads-only)' if options.heads_only else ''}, "
        f"{len(data.train)} train utterances ({hours:.2f} h), {len(data.source)} source, "
        f"{state.per_epoch} steps/epoch, {state.total} steps"
    )
    augment = NoiseAugmenter(options.noise_prob, options.snr_db, options.noise_dir, SAMPLE_RATE)
    dev_small = spread(data.dev, options.dev_max)
    result = run_loop(
        state, data, options, work, augment=augment, dev=dev_small, log=_log, stop_after=stop_after
    )
    result.out = out
    if result.finished:
        model.eval()
        result.dev = evaluate(model, data.dev, data.vocab, front, options.language)
        save_final(model, data.vocab, front, work)
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
