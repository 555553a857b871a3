"""`xlsr-edge finetune`: the cross-lingual CTC fine-tuning recipe (xlsr_edge.train.finetune)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xlsr_edge import limits
from xlsr_edge.constants import EXIT_OK
from xlsr_edge.errors import XlsrEdgeError

# --snr-db bounds: far past any useful signal-to-noise ratio, short of inf and nan
_SNR_DB = limits.float_in(-100.0, 100.0)


def _pair(text: str, kind=_SNR_DB) -> tuple:
    parts = text.replace(":", ",").split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected LO,HI, got {text!r}")
    try:
        return kind(parts[0]), kind(parts[1])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected two numbers LO,HI, got {text!r}") from exc


def _finetune(args: argparse.Namespace) -> int:
    from xlsr_edge.train.finetune import FinetuneOptions, finetune

    if args.noise_prob and not 0 <= args.noise_prob <= 1:
        raise XlsrEdgeError("--noise-prob must be in [0, 1]")
    options = FinetuneOptions(
        init=args.init,
        train=args.train,
        dev=args.dev,
        out=args.output,
        language=args.language,
        vocab=args.vocab,
        map_unknown=args.map_unknown,
        freeze_feature_encoder=args.freeze_feature_encoder,
        mix=args.mix,
        mix_language=args.mix_language,
        noise_prob=args.noise_prob,
        snr_db=args.snr_db,
        noise_dir=args.noise_dir,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        grad_clip=args.grad_clip,
        max_seconds=args.max_seconds,
        threads=args.threads,
        seed=args.seed,
        eval_every=args.eval_every,
        dev_max=args.dev_max,
        save_every=args.save_every,
        log_every=args.log_every,
        resume=args.resume,
        overwrite=args.overwrite,
        allow_pickle=args.allow_pickle,
        keep_head=args.keep_head,
        heads_only=args.heads_only,
        progress=sys.stderr.isatty(),
    )
    result = finetune(options)
    dev = result.dev
    print(
        f"wrote {result.out}: {result.step} steps in {result.seconds / 60:.1f} min, "
        f"dev CER {dev.get('cer', float('nan')):.4f} WER {dev.get('wer', float('nan')):.4f}"
    )
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommand."""
    p = sub.add_parser("finetune", help="fine-tune (or train from scratch) a Wav2Vec2/XLS-R CTC model")
    p.add_argument(
        "--init", required=True, help="checkpoint folder, config.json, or a named config: tiny-demo"
    )
    p.add_argument("--train", type=Path, required=True, help="training manifest (NeMo JSONL, TSV, CSV)")
    p.add_argument("--dev", type=Path, required=True, help="dev manifest (scored with greedy CER/WER)")
    p.add_argument("-o", "--output", type=Path, required=True, help="checkpoint folder to write")
    p.add_argument("--language", default=None, help="transcript language for normalization (tr: İ/I rules)")
    p.add_argument("--vocab", type=Path, default=None, help="vocab.json (or checkpoint folder) to use as is")
    p.add_argument(
        "--map-unknown", action="store_true", help="train characters missing from --vocab as <unk>"
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--freeze-feature-encoder", dest="freeze_feature_encoder", action="store_true", default=None
    )
    g.add_argument("--no-freeze-feature-encoder", dest="freeze_feature_encoder", action="store_false")
    p.add_argument("--mix", default=None, metavar="SOURCE_MANIFEST:SHARE", help="share of source utterances")
    p.add_argument("--mix-language", default=None, help="language of the --mix transcripts")
    p.add_argument(
        "--noise-prob",
        type=limits.float_in(0.0, 1.0),
        default=0.0,
        help="probability of adding noise to an utterance",
    )
    p.add_argument("--snr-db", type=_pair, default=(5.0, 30.0), metavar="LO,HI")
    p.add_argument("--noise-dir", type=Path, default=None, help="folder of noise recordings")
    steps = limits.int_in(0, 10**9)
    p.add_argument("--epochs", type=limits.int_in(1, 1_000_000), default=10)
    p.add_argument("--max-steps", type=limits.int_in(1, 10**9), default=None, help="overrides --epochs")
    p.add_argument("--batch-size", type=limits.int_in(1, limits.MAX_BATCH), default=16)
    p.add_argument("--lr", type=limits.positive_float(10.0), default=3e-4, help="peak learning rate")
    p.add_argument("--weight-decay", type=limits.nonneg_float(1.0), default=0.01)
    p.add_argument("--warmup-ratio", type=limits.float_in(0.0, 1.0, hi_open=True), default=0.1)
    p.add_argument("--grad-clip", type=limits.nonneg_float(1e6), default=1.0)
    p.add_argument(
        "--max-seconds",
        type=limits.positive_float(limits.MAX_CHUNK_SECONDS),
        default=20.0,
        help="leave out longer training utterances",
    )
    p.add_argument("--threads", type=limits.threads(), default=None, help="torch threads")
    p.add_argument("--seed", type=limits.seed(), default=0)
    p.add_argument(
        "--eval-every", type=steps, default=0, help="steps between dev evaluations (0: every epoch)"
    )
    p.add_argument(
        "--dev-max", type=limits.int_in(1, 10**7), default=200, help="dev utterances scored during training"
    )
    p.add_argument("--save-every", type=steps, default=200, help="steps between resumable state saves")
    p.add_argument(
        "--log-every",
        type=steps,
        default=50,
        help="steps between progress lines (loss, dev CER, steps/s, ETA) when stderr is not a terminal",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/last")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--allow-pickle", action="store_true", help="accept pytorch_model.bin for --init")
    p.add_argument(
        "--keep-head",
        action="store_true",
        help="continue --init as it is: keep its lm_head (its vocabulary must equal the run's: use --vocab INIT)",
    )
    p.add_argument(
        "--heads-only",
        action="store_true",
        help="train only the CTC head; the body stays bit-identical to --init (heads for export-xlsr --multi)",
    )
    p.set_defaults(fn=_finetune)
