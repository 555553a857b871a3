"""Read a fine-tuned Wav2Vec2/XLS-R CTC checkpoint from a local folder (never a hub)."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from xlsr_edge.bundle import ModelInfo, sha256_file
from xlsr_edge.errors import CheckpointError, require

SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class Checkpoint:
    folder: Path
    info: ModelInfo
    safetensors: bool
    lm_head_size: int

    def digest(self) -> dict:
        """sha256 of every file of the checkpoint, and one digest over them all."""
        files = {p.name: sha256_file(p) for p in sorted(self.folder.iterdir()) if p.is_file()}
        overall = hashlib.sha256("".join(f"{k}:{v}\n" for k, v in files.items()).encode()).hexdigest()
        return {"path": str(self.folder), "sha256": overall, "files": files}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def _feature_extractor_config(folder: Path) -> dict:
    """preprocessor_config.json (transformers 4) or the feature_extractor part of processor_config.json (5)."""
    if (folder / "preprocessor_config.json").is_file():
        return _read_json(folder / "preprocessor_config.json")
    if (folder / "processor_config.json").is_file():
        fe = _read_json(folder / "processor_config.json").get("feature_extractor")
        if isinstance(fe, dict):
            return fe
    raise CheckpointError(
        f"{folder} has no feature extractor settings (preprocessor_config.json); save the processor with the model"
    )


def _vocab_in_id_order(tokenizer) -> list[str]:
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    size = max(by_id) + 1 if by_id else 0
    missing = [i for i in range(size) if i not in by_id]
    if missing:
        raise CheckpointError(f"tokenizer vocabulary has gaps at ids {missing[:10]}; fix vocab.json")
    return [by_id[i] for i in range(size)]


def inspect_checkpoint(folder: str | Path, *, allow_pickle: bool = False) -> Checkpoint:
    """Validate the folder and read everything the bundle needs; raises CheckpointError with a fix."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder} has no config.json: is it a Hugging Face checkpoint folder?")
    has_st = any((folder / f).is_file() for f in SAFETENSORS_FILES)
    has_pickle = any((folder / f).is_file() for f in PICKLE_FILES)
    if not has_st and not has_pickle:
        raise CheckpointError(f"{folder} has no model weights (model.safetensors or pytorch_model.bin)")
    if not has_st and not allow_pickle:
        raise CheckpointError(
            f"{folder} holds only pickle weights (pytorch_model.bin), which can run code when loaded; "
            "convert it to safetensors or pass --allow-pickle if you trust its source"
        )
    config = _read_json(config_path)
    if config.get("model_type") not in ("wav2vec2", None):
        raise CheckpointError(
            f"{folder} is a {config.get('model_type')!r} model, not a Wav2Vec2/XLS-R CTC model"
        )
    pre = _feature_extractor_config(folder)

    transformers = require("transformers", "export")
    try:
        tokenizer = transformers.Wav2Vec2CTCTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"cannot load the CTC tokenizer from {folder} (vocab.json missing?): {exc}"
        ) from exc
    vocab = _vocab_in_id_order(tokenizer)
    not_nfc = [t for t in vocab if not unicodedata.is_normalized("NFC", t)]
    if not_nfc:
        raise CheckpointError(
            f"vocabulary tokens are not NFC-normalized: {not_nfc[:5]!r}; normalize vocab.json and the training text"
        )
    lm_head_size = int(config.get("vocab_size", -1))
    if len(vocab) != lm_head_size:
        raise CheckpointError(
            f"tokenizer has {len(vocab)} tokens but the lm_head outputs {lm_head_size} (config vocab_size); "
            "the checkpoint's vocab.json does not belong to this model"
        )
    if tokenizer.pad_token_id is None:
        raise CheckpointError("the tokenizer has no pad token: CTC needs it as the blank")

    feat_norm = config.get("feat_extract_norm", "group")
    info = ModelInfo(
        vocab=vocab,
        blank_id=int(tokenizer.pad_token_id),
        word_delimiter=tokenizer.word_delimiter_token or "|",
        unk_token=tokenizer.unk_token,
        sample_rate=int(pre.get("sampling_rate", 16000)),
        do_normalize=bool(pre.get("do_normalize", True)),
        feat_extract_norm=feat_norm,
        conv_kernel=[int(k) for k in config.get("conv_kernel", [10, 3, 3, 3, 3, 2, 2])],
        conv_stride=[int(s) for s in config.get("conv_stride", [5, 2, 2, 2, 2, 2, 2])],
        # Group-norm (base) models normalize over time inside the CNN: padding changes them, so no mask.
        uses_attention_mask=feat_norm == "layer",
    )
    if config.get("add_adapter"):
        raise CheckpointError("checkpoints with add_adapter=True change the frame rate; not supported yet")
    return Checkpoint(folder=folder, info=info, safetensors=has_st, lm_head_size=lm_head_size)


def load_model(ckpt: Checkpoint):
    """Load Wav2Vec2ForCTC in eval mode with eager attention (exports and fuses most predictably)."""
    transformers = require("transformers", "export")
    transformers.utils.logging.disable_progress_bar()  # our CLI prints its own progress lines
    try:
        model = transformers.Wav2Vec2ForCTC.from_pretrained(
            str(ckpt.folder),
            local_files_only=True,
            use_safetensors=ckpt.safetensors,
            attn_implementation="eager",
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot load the model from {ckpt.folder}: {exc}") from exc
    if model.lm_head.out_features != len(ckpt.info.vocab):
        raise CheckpointError(
            f"lm_head has {model.lm_head.out_features} outputs but the vocabulary has {len(ckpt.info.vocab)} tokens"
        )
    return model.eval()
