"""The model side of fine-tuning: the body from ``--init`` with a new CTC head, frozen parts, checkpoints, and the
runtime's own front end, batching and greedy decoding for inputs and scores (torch and transformers, lazily)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xlsr_edge.errors import XlsrEdgeError, require
from xlsr_edge.export.tiny import TINY
from xlsr_edge.measure.metrics import error_rates
from xlsr_edge.train.augment import NoiseAugmenter
from xlsr_edge.train.data import Example
from xlsr_edge.train.options import SAMPLE_RATE
from xlsr_edge.train.vocab import CtcVocab, read_vocab

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
class FrontEnd:
    """How audio becomes model input: the runtime's load_audio + normalize, and whether batches carry a mask."""

    do_normalize: bool = True
    feat_extract_norm: str = "layer"

    @property
    def uses_attention_mask(self) -> bool:
        return self.feat_extract_norm == "layer"


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


def load_resumed(state_dir: Path, vocab: CtcVocab):
    """(model, front end) saved in OUT/last/ by an interrupted run, for --resume."""
    torch, transformers = _torch(), _transformers()
    model = transformers.Wav2Vec2ForCTC.from_pretrained(
        str(state_dir), local_files_only=True, dtype=torch.float32
    )
    if model.lm_head.out_features != len(vocab):
        raise XlsrEdgeError(
            f"{state_dir} has {model.lm_head.out_features} outputs but the vocabulary {len(vocab)}"
        )
    return model, read_front_end(state_dir, model.config)


def set_trainable(model, pretrained: bool, freeze_feature_encoder: bool | None, heads_only: bool) -> bool:
    """Freeze what the run does not train; returns whether the CNN feature encoder is frozen.

    ``freeze_feature_encoder`` None: frozen for a pretrained body, trained from scratch. ``heads_only``: the whole
    body frozen, lm_head alone trains (the body stays bit-identical to --init)."""
    freeze = pretrained if freeze_feature_encoder is None else freeze_feature_encoder
    set_feature_encoder_frozen(model, freeze)
    if heads_only:
        if not pretrained:
            raise XlsrEdgeError(
                "--heads-only trains a head on a trained body: --init must be a checkpoint folder"
            )
        freeze = True
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("lm_head.")
    return freeze


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
