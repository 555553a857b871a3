"""The CTC audio families of transformers as data: one export path reads these facts, nothing else differs.

Every `*ForCTC` audio model is `lm_head(dropout(<base>(inputs, attention_mask).last_hidden_state))`. What
differs between families, and is written down here, is:

- the classes and the attribute that holds the backbone (`base`);
- the front end: the raw waveform into a CNN (`waveform`) or SeamlessM4T log-mel features (`fbank`,
  Wav2Vec2-BERT), which the exported graph computes itself so that every bundle takes the waveform;
- the frame-length formula as (kernel, stride, padding) stages: the CNN (or fbank framing + stacking), then
  the `add_adapter` layers, which change the frame stride;
- where PyTorch lets padding leak into real frames on a padded batch, so the graph masks it (`masked_convs`,
  `adapter_convs`, a group-norm CNN); SEW/SEW-D's squeeze/upsample (`squeeze`).

This module imports neither torch nor transformers: `inspect_checkpoint` reads it from config.json alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from xlsr_edge.errors import CheckpointError

# SeamlessM4T / Kaldi fbank framing (Wav2Vec2-BERT): 25 ms windows every 10 ms at 16 kHz, then `stride` frames
# stacked into one feature vector.
FBANK_FRAME = 400
FBANK_HOP = 160


@dataclass(frozen=True)
class Family:
    model_type: str  # config.json "model_type"
    ctc_class: str  # transformers class
    base: str  # attribute of the CTC model holding the backbone (its base_model_prefix)
    front_end: str = "waveform"  # "waveform": CNN on input_values; "fbank": SeamlessM4T log-mel in the graph
    norm_key: str | None = "feat_extract_norm"  # config key of the CNN norm; None: layer norm (no such key)
    # module paths under `base` whose Conv1d layers (kernel > 1) run at the encoder frame rate and would read
    # padded frames: their inputs are zeroed beyond each clip's length in the graph
    masked_convs: tuple[str, ...] = ("encoder",)
    adapter_padding: str = "one"  # add_adapter convs: padding 1 (wav2vec2 style) or "half_stride" (W2V-BERT)
    squeeze: bool = False  # SEW / SEW-D: pooled encoder + upsampling (pooled mask and tail are fixed)
    feature_extractor_class: str = "Wav2Vec2FeatureExtractor"
    processor_class: str = "Wav2Vec2Processor"


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family("wav2vec2", "Wav2Vec2ForCTC", "wav2vec2"),
        Family("wav2vec2-conformer", "Wav2Vec2ConformerForCTC", "wav2vec2_conformer"),
        Family("hubert", "HubertForCTC", "hubert"),
        Family("wavlm", "WavLMForCTC", "wavlm"),
        Family("data2vec-audio", "Data2VecAudioForCTC", "data2vec_audio", norm_key=None),
        Family("unispeech", "UniSpeechForCTC", "unispeech"),
        Family("unispeech-sat", "UniSpeechSatForCTC", "unispeech_sat"),
        Family("sew", "SEWForCTC", "sew", masked_convs=("encoder.pos_conv_embed",), squeeze=True),
        Family("sew-d", "SEWDForCTC", "sew_d", masked_convs=("encoder.pos_conv_embed",), squeeze=True),
        Family(
            "wav2vec2-bert",
            "Wav2Vec2BertForCTC",
            "wav2vec2_bert",
            front_end="fbank",
            norm_key=None,
            masked_convs=(),  # its conv module masks its own input (and pads on the left)
            adapter_padding="half_stride",
            feature_extractor_class="SeamlessM4TFeatureExtractor",
            processor_class="Wav2Vec2BertProcessor",
        ),
    )
}


def family_of(config: dict, source: str) -> Family:
    """The family of a config.json (model_type; none means an old Wav2Vec2 config)."""
    model_type = config.get("model_type") or "wav2vec2"
    family = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if family is None:
        raise CheckpointError(
            f"{source} is a {model_type!r} model; export-xlsr exports the CTC audio families "
            f"{', '.join(FAMILIES)}"
        )
    return family


@dataclass(frozen=True)
class Stages:
    """The frame-length formula: n -> (n + 2 * padding - kernel) // stride + 1 per stage, in order."""

    kernel: list[int]
    stride: list[int]
    padding: list[int]
    encoder: int  # how many stages lead to the encoder's frame rate (the rest are add_adapter layers)

    def lengths(self, n: int, upto: int | None = None) -> int:
        for k, s, p in list(zip(self.kernel, self.stride, self.padding))[:upto]:
            n = (n + 2 * p - k) // s + 1
            if n <= 0:
                return 0
        return n


def length_stages(family: Family, config: dict, feature_extractor: dict, conv_kernel, conv_stride) -> Stages:
    """(kernel, stride, padding) of every stage, from config.json and the feature extractor settings."""
    if family.front_end == "fbank":
        stack = feature_extractor.get("stride", 2)
        if not isinstance(stack, int) or isinstance(stack, bool) or not 1 <= stack <= 16:
            raise CheckpointError(
                f'the feature extractor\'s "stride" must be an integer 1..16, found {stack!r}'
            )
        kernel, stride = [FBANK_FRAME, stack], [FBANK_HOP, stack]
    else:
        kernel, stride = list(conv_kernel), list(conv_stride)
    padding = [0] * len(kernel)
    encoder = len(kernel)
    if config.get("add_adapter"):
        layers = config.get("num_adapter_layers", 3)
        k = config.get("adapter_kernel_size", 3)
        s = config.get("adapter_stride", 2)
        for name, v in (("num_adapter_layers", layers), ("adapter_kernel_size", k), ("adapter_stride", s)):
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 64:
                raise CheckpointError(f'config.json: "{name}" must be an integer 1..64, found {v!r}')
        p = 1 if family.adapter_padding == "one" else s // 2
        kernel += [k] * layers
        stride += [s] * layers
        padding += [p] * layers
    return Stages(kernel, stride, padding, encoder)
