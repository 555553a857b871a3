"""Build tiny random-weight Wav2Vec2ForCTC checkpoints locally (tests, demo, benchmarks: no hub)."""

from __future__ import annotations

import json
from pathlib import Path

from xlsr_edge.errors import require

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


def build_checkpoint(
    out: str | Path,
    *,
    feat_extract_norm: str = "layer",
    chars: list[str] | None = None,
    seed: int = 0,
    safetensors: bool = True,
    head_gain: float = 8.0,
    **config_overrides,
) -> Path:
    """Write a complete fine-tuned-style checkpoint folder (model, vocab.json, tokenizer, feature extractor)."""
    torch = require("torch", "export")
    transformers = require("transformers", "export")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokens = SPECIAL + (chars or DEFAULT_CHARS)
    (out / "vocab.json").write_text(
        json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False), encoding="utf-8"
    )
    tokenizer = transformers.Wav2Vec2CTCTokenizer(
        str(out / "vocab.json"), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|"
    )
    layer = feat_extract_norm == "layer"
    extractor = transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=layer
    )
    params = {**TINY, **config_overrides}
    config = transformers.Wav2Vec2Config(
        vocab_size=len(tokens),
        pad_token_id=tokenizer.pad_token_id,
        feat_extract_norm=feat_extract_norm,
        do_stable_layer_norm=layer,
        ctc_loss_reduction="mean",
        **{k: v for k, v in params.items() if k not in ("feat_extract_norm", "do_stable_layer_norm")},
    )
    torch.manual_seed(seed)
    model = transformers.Wav2Vec2ForCTC(config).eval()
    with torch.no_grad():
        # Random heads give near-flat logits where any 1e-6 wobble flips the argmax; trained CTC heads are
        # peaked. A gain on the head makes the random model's decisions as stable as a trained one's.
        model.lm_head.weight.mul_(head_gain)
    model.save_pretrained(str(out), safe_serialization=safetensors)
    transformers.Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(str(out))
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="write a tiny random Wav2Vec2ForCTC checkpoint folder")
    ap.add_argument("out")
    ap.add_argument("--norm", default="layer", choices=["layer", "group"])
    args = ap.parse_args()
    print(build_checkpoint(args.out, feat_extract_norm=args.norm))
