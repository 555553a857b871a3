"""Build tiny random-weight CTC checkpoints of every family locally (tests, demo, benchmarks: no hub)."""

from __future__ import annotations

import json
from pathlib import Path

from xlsr_edge.errors import require
from xlsr_edge.export.families import FAMILIES

# Turkish letters plus é, so NFC and non-ASCII paths are exercised everywhere.
DEFAULT_CHARS = list("abcçdefgğhıijklmnoöprsştuüvyzé'")
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "|"]

# The configuration of facebook/wav2vec2-xls-r-300m (for random-weight benchmarks).
XLSR_300M = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    conv_dim=(512,) * 7,
    feat_extract_norm="layer",
    do_stable_layer_norm=True,
    num_conv_pos_embeddings=128,
    num_conv_pos_embedding_groups=16,
)

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(16, 16, 16, 16, 16, 16, 16),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)

# Per family: the transformers config class and the tiny shape (on top of TINY where the family has those keys).
FAMILY_CONFIGS: dict[str, tuple[str, dict]] = {
    "wav2vec2": ("Wav2Vec2Config", {}),
    "wav2vec2-conformer": (
        "Wav2Vec2ConformerConfig",
        {"position_embeddings_type": "rotary", "conv_depthwise_kernel_size": 7},
    ),
    "hubert": ("HubertConfig", {}),
    "wavlm": ("WavLMConfig", {"num_buckets": 16, "max_bucket_distance": 40}),
    "data2vec-audio": (
        "Data2VecAudioConfig",
        {"num_conv_pos_embeddings": 3, "conv_pos_kernel_size": 5},
    ),
    "unispeech": ("UniSpeechConfig", {}),
    "unispeech-sat": ("UniSpeechSatConfig", {}),
    "sew": (
        "SEWConfig",
        {"conv_dim": (16,) * 13, "conv_kernel": (10, 3, 1, 3, 1, 3, 1, 3, 1, 2, 1, 2, 1)},
    ),
    "sew-d": (
        "SEWDConfig",
        {
            "conv_dim": (16,) * 13,
            "conv_kernel": (10, 3, 1, 3, 1, 3, 1, 3, 1, 2, 1, 2, 1),
            "position_buckets": 16,
            "max_position_embeddings": 64,
        },
    ),
    "wav2vec2-bert": (
        "Wav2Vec2BertConfig",
        {
            "conv_depthwise_kernel_size": 5,
            "feature_projection_input_dim": 160,
            "left_max_position_embeddings": 8,
            "right_max_position_embeddings": 4,
        },
    ),
}
# keys of TINY that only the CNN families have
_CNN_KEYS = ("conv_dim", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups")
# stored dtypes build_checkpoint can save the weights in (fp16/bf16 checkpoints are common on the hub)
DTYPES = ("float32", "float16", "bfloat16")


def _config(transformers, family: str, feat_extract_norm: str, vocab_size: int, pad_id: int, overrides: dict):
    name, shape = FAMILY_CONFIGS[family]
    cls = getattr(transformers, name)
    defaults = cls().to_dict()
    params = {k: v for k, v in TINY.items() if k in defaults}
    if family == "wav2vec2-bert":
        params = {k: v for k, v in params.items() if k not in _CNN_KEYS}
    params.update(shape)
    params.update(overrides)
    if "feat_extract_norm" in defaults:
        params["feat_extract_norm"] = feat_extract_norm
    if "do_stable_layer_norm" in defaults:
        params.setdefault("do_stable_layer_norm", feat_extract_norm == "layer")
    if params.get("add_adapter") and "output_hidden_size" in defaults:
        params.setdefault("output_hidden_size", params.get("hidden_size", 32))
    return cls(vocab_size=vocab_size, pad_token_id=pad_id, ctc_loss_reduction="mean", **params)


def build_checkpoint(
    out: str | Path,
    *,
    family: str = "wav2vec2",
    feat_extract_norm: str = "layer",
    chars: list[str] | None = None,
    seed: int = 0,
    safetensors: bool = True,
    head_gain: float = 8.0,
    dtype: str = "float32",
    spare_vocab: int = 0,
    return_attention_mask: bool | None = None,
    mms_languages: dict[str, list[str]] | None = None,
    **config_overrides,
) -> Path:
    """Write a complete fine-tuned-style checkpoint folder (model, vocab.json, tokenizer, feature extractor).

    family: a transformers model_type (xlsr_edge.export.families); dtype: the stored weight dtype; spare_vocab:
    head columns beyond the tokenizer; return_attention_mask: the feature extractor's setting (default: the
    family's usual one); mms_languages: language -> characters, an MMS checkpoint (attention adapters, one
    vocabulary per language in vocab.json, one adapter.<lang>.safetensors per language; no target_lang saved).
    """
    torch = require("torch", "export")
    transformers = require("transformers", "export")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if mms_languages:
        vocabs = {lang: SPECIAL + list(cs) for lang, cs in mms_languages.items()}
        first = next(iter(vocabs))
        tokens = vocabs[first]
        (out / "vocab.json").write_text(
            json.dumps(
                {lang: {t: i for i, t in enumerate(v)} for lang, v in vocabs.items()}, ensure_ascii=False
            ),
            encoding="utf-8",
        )
        tokenizer = transformers.Wav2Vec2CTCTokenizer(
            str(out / "vocab.json"),
            unk_token="<unk>",
            pad_token="<pad>",
            word_delimiter_token="|",
            target_lang=first,
        )
        config_overrides.setdefault("adapter_attn_dim", 8)
    else:
        tokens = SPECIAL + (chars or DEFAULT_CHARS)
        (out / "vocab.json").write_text(
            json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False), encoding="utf-8"
        )
        tokenizer = transformers.Wav2Vec2CTCTokenizer(
            str(out / "vocab.json"), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|"
        )
    layer = feat_extract_norm == "layer" or family in ("data2vec-audio", "wav2vec2-bert")
    mask = layer if return_attention_mask is None else return_attention_mask
    if family == "wav2vec2-bert":
        extractor = transformers.SeamlessM4TFeatureExtractor(sampling_rate=16000)
        extractor.return_attention_mask = mask
    else:
        extractor = transformers.Wav2Vec2FeatureExtractor(
            feature_size=1,
            sampling_rate=16000,
            padding_value=0.0,
            do_normalize=True,
            return_attention_mask=mask,
        )
    config = _config(
        transformers,
        family,
        feat_extract_norm,
        len(tokens) + spare_vocab,
        tokenizer.pad_token_id,
        config_overrides,
    )
    torch.manual_seed(seed)
    cls = getattr(transformers, FAMILIES[family].ctc_class)
    model = cls(config).eval()
    with torch.no_grad():
        # Random heads give near-flat logits where any 1e-6 wobble flips the argmax; trained CTC heads are
        # peaked. A gain on the head makes the random model's decisions as stable as a trained one's.
        model.lm_head.weight.mul_(head_gain)
    stored = getattr(torch, dtype)
    model.to(stored).save_pretrained(str(out), safe_serialization=safetensors)
    processor = getattr(transformers, FAMILIES[family].processor_class)
    processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(str(out))
    if mms_languages:
        _write_mms_adapters(torch, model, vocabs, out, head_gain, seed)
        tok_config = out / "tokenizer_config.json"  # like facebook/mms-1b-all: no language chosen
        data = json.loads(tok_config.read_text(encoding="utf-8"))
        data.pop("target_lang", None)
        tok_config.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    return out


def _write_mms_adapters(
    torch, model, vocabs: dict[str, list[str]], out: Path, head_gain: float, seed: int
) -> None:
    """adapter.<lang>.safetensors: random attention adapters and a head of that language's vocabulary size."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed + 1)
    for lang, tokens in vocabs.items():
        state = {}
        for name, p in model.named_parameters():
            if ".adapter_layer." in name:
                state[name] = torch.randn(p.shape, generator=gen) * 0.2 + (
                    1.0 if name.endswith("norm.weight") else 0
                )
        width = model.lm_head.in_features
        state["lm_head.weight"] = torch.randn(len(tokens), width, generator=gen) * 0.2 * head_gain
        state["lm_head.bias"] = torch.zeros(len(tokens))
        save_file({k: v.contiguous() for k, v in state.items()}, str(out / f"adapter.{lang}.safetensors"))


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="write a tiny random CTC checkpoint folder (any family)")
    ap.add_argument("out")
    ap.add_argument("--family", default="wav2vec2", choices=sorted(FAMILY_CONFIGS))
    ap.add_argument("--norm", default="layer", choices=["layer", "group"])
    args = ap.parse_args()
    print(build_checkpoint(args.out, family=args.family, feat_extract_norm=args.norm))
