"""Read a fine-tuned CTC audio checkpoint (any family of xlsr_edge.export.families) from a folder or the Hub.

Checks what the parity gate cannot: it compares PyTorch with ONNX through the same vocabulary, so a vocab.json
with a duplicate or missing id passes the gate and yields wrong transcripts; weights and shard indexes are
checked before transformers reads them (no shard from outside the folder, no half-written file).

A hub id (`org/name` or `org/name@revision`) that is not a local folder is fetched with huggingface_hub's
`snapshot_download` (safetensors and JSON files only, into the standard Hugging Face cache), or taken from that
cache when offline (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xlsr_edge.bundle import ModelInfo, plain_relative, sha256_file
from xlsr_edge.errors import CheckpointError, require
from xlsr_edge.export.families import Family, family_of, length_stages

SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# MMS: one file of attention-adapter and head weights per language beside the shared body
ADAPTER_FILE = "adapter.{}.safetensors"
SPARE_TOKEN = "<spare_{}>"  # placeholder for a head column the tokenizer has no token for
HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96})(?:@(?P<revision>[\w./-]{1,255}))?")
LANGUAGE_CODE = re.compile(r"[A-Za-z0-9][\w-]{0,63}")  # MMS languages name files: adapter.LANG.safetensors
HUB_FILES = ("*.json", "model.safetensors", "model-*.safetensors")


@dataclass(frozen=True)
class Checkpoint:
    folder: Path
    info: ModelInfo
    safetensors: bool
    lm_head_size: int
    family: Family | None = None
    feature_extractor: dict = field(default_factory=dict)
    target_lang: str | None = None  # MMS: the language chosen from a per-language vocab.json
    adapter_file: Path | None = None  # MMS: that language's adapter + head weights, loaded over the body

    def digest(self) -> dict:
        """sha256 of every file of the checkpoint, and one digest over them all.

        An MMS folder's adapter files of other languages are left out: they are not part of this export."""
        files = {
            p.name: sha256_file(p)
            for p in sorted(self.folder.iterdir())
            if p.is_file() and (not _is_adapter_file(p.name) or p == self.adapter_file)
        }
        overall = hashlib.sha256("".join(f"{k}:{v}\n" for k, v in files.items()).encode()).hexdigest()
        out = {"path": str(self.folder), "sha256": overall, "files": files}
        if self.target_lang is not None:
            out["target_lang"] = self.target_lang
        return out


def _is_adapter_file(name: str) -> bool:
    return name.startswith("adapter.") and name.endswith((".safetensors", ".bin"))


# -- hub ids --------------------------------------------------------------------------------------------------


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def resolve_checkpoint(spec: str | Path, target_langs: tuple[str, ...] = ()) -> Path:
    """A local folder as given; a hub id (`org/name[@revision]`) through the Hugging Face cache.

    Online: snapshot_download of the JSON and safetensors files (and the adapters of `target_langs`), into the
    standard cache. Offline (HF_HUB_OFFLINE=1) or without network: the cached snapshot. Neither: CheckpointError.
    """
    path = Path(spec)
    if path.exists():
        return path
    text = str(spec)
    m = HUB_ID.fullmatch(text)
    if m is None or text.startswith((".", "/", "~")):
        raise CheckpointError(f"checkpoint folder not found: {path}")
    hub = require("huggingface_hub", "export")
    repo, revision = m["repo"], m["revision"]
    patterns = [*HUB_FILES, *(ADAPTER_FILE.format(lang) for lang in target_langs)]
    try:
        folder = hub.snapshot_download(
            repo, revision=revision, allow_patterns=patterns, local_files_only=_offline()
        )
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # network, offline without a cache, missing repo or revision, gated repo
        if type(exc).__name__ == "LocalEntryNotFoundError":
            why = "not in the local Hugging Face cache, " + (
                "and HF_HUB_OFFLINE is set" if _offline() else "and the Hub cannot be reached"
            )
        else:
            first = (str(exc).strip().splitlines() or [""])[0]
            why = f"{type(exc).__name__}: {first[:120]}"
        raise CheckpointError(
            f"{text} is no local folder, and the Hugging Face Hub id cannot be fetched ({why}); download the "
            "checkpoint where there is network and pass its local folder instead: export-xlsr ./folder -o BUNDLE"
        ) from exc
    return Path(folder)


_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


def _kind(value: object) -> str:
    """A JSON value's kind, for messages."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), "a number")


def _read_json(path: Path, what: str = "a JSON object", pairs_hook=None) -> dict:
    """A JSON object from the checkpoint; CheckpointError naming the file when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=pairs_hook)
    except RecursionError:
        raise CheckpointError(f"cannot read {path}: JSON nested too deeply") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:  # ValueError: JSONDecodeError, huge integers
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold {what}, found {_kind(data)}")
    return data


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _setting(path: Path, data: dict, key: str, default: Any, ok, what: str) -> Any:
    """One typed setting of config.json / preprocessor_config.json; CheckpointError naming file and key."""
    v = data.get(key, default)
    if not ok(v):
        raise CheckpointError(f'{path}: "{key}" must be {what}, found {_kind(v)} {json.dumps(v)[:40]}')
    return v


def _positive_ints(v: object) -> bool:
    return isinstance(v, list) and 0 < len(v) <= 64 and all(_is_int(x) and 0 < x <= 4096 for x in v)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """object_pairs_hook: json.loads would keep the last of two equal keys silently."""
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"token {k!r} is listed twice")
        out[k] = v
    return out


def _vocab_languages(folder: Path) -> list[str] | None:
    """The languages of an MMS-style vocab.json (one vocabulary per language), None for a plain one."""
    path = folder / "vocab.json"
    if not path.is_file():
        return None
    vocab = _read_json(path, "a JSON object of token -> id", _unique_keys)
    if vocab and all(isinstance(v, dict) for v in vocab.values()):
        return list(vocab)
    return None


def _list_languages(langs: list[str], limit: int = 60) -> str:
    shown = ", ".join(langs[:limit])
    return shown + (f" and {len(langs) - limit} more" if len(langs) > limit else "")


def choose_target_lang(folder: Path, target_lang: str | None) -> str | None:
    """The language of an MMS-style vocab.json: --target-lang, else the tokenizer's saved target_lang.

    None for a plain vocab.json. Without either on a per-language file: CheckpointError listing its languages.
    """
    langs = _vocab_languages(folder)
    if langs is None:
        if target_lang is not None:
            raise CheckpointError(
                f"--target-lang {target_lang}: {folder / 'vocab.json'} holds a single vocabulary; --target-lang "
                "chooses one language of an MMS checkpoint (one vocabulary per language)"
            )
        return None
    if target_lang is None:
        tok_config = folder / "tokenizer_config.json"
        saved = _read_json(tok_config).get("target_lang") if tok_config.is_file() else None
        if isinstance(saved, str) and saved in langs and LANGUAGE_CODE.fullmatch(saved):
            return saved
        raise CheckpointError(
            f"{folder / 'vocab.json'} holds one vocabulary per language ({len(langs)}: {_list_languages(langs)}); "
            "choose one with --target-lang LANG"
        )
    if not LANGUAGE_CODE.fullmatch(target_lang):  # it names a file: adapter.LANG.safetensors
        raise CheckpointError(
            f"--target-lang {target_lang!r} must be a language code (letters, digits, _ and -)"
        )
    if target_lang not in langs:
        raise CheckpointError(
            f"--target-lang {target_lang} is not in {folder / 'vocab.json'}; its languages are {_list_languages(langs)}"
        )
    return target_lang


def _check_vocab_json(folder: Path, target_lang: str | None) -> None:
    """vocab.json maps N distinct tokens to exactly the ids 0..N-1 (the lm_head rows)."""
    path = folder / "vocab.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no vocab.json: save the processor (tokenizer) with the model")
    vocab = _read_json(path, "a JSON object of token -> id", _unique_keys)
    if target_lang is not None:  # MMS style: one vocabulary per language
        vocab = vocab[target_lang]
    if not vocab:
        raise CheckpointError(f"{path} is empty: a CTC vocabulary needs tokens")
    by_id: dict[int, str] = {}
    for token, i in vocab.items():
        if isinstance(i, bool) or not isinstance(i, int):
            raise CheckpointError(
                f"{path}: token {token!r} has id {json.dumps(i)[:40]}; ids must be integers"
            )
        if i in by_id:
            raise CheckpointError(
                f"{path}: tokens {by_id[i]!r} and {token!r} share id {i}; every token needs its own id "
                "(a shared id passes the parity gate and garbles every transcript)"
            )
        by_id[i] = token
    n = len(by_id)
    missing = sorted(set(range(n)) - set(by_id))
    if missing:
        outside = sorted(set(by_id) - set(range(n)))
        raise CheckpointError(
            f"{path}: the {n} token ids must be exactly 0..{n - 1}; missing {missing[:5]}, "
            f"found {outside[:5]} instead"
        )


def _safetensors_header(path: Path) -> dict:
    """The JSON header of a (checked) safetensors file: tensor name -> {dtype, shape, data_offsets}."""
    with path.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n).decode("utf-8"))


def _check_safetensors(path: Path) -> None:
    """The header (8-byte little-endian size, a JSON object) and that the tensors' data fills the file exactly:
    a truncated download or a file of another format is refused before transformers reads it."""

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a valid safetensors file ({why}); download or save it again")

    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            n = int.from_bytes(prefix, "little")
            if len(prefix) < 8 or n < 2 or n > min(size - 8, _MAX_HEADER):
                raise bad(
                    f"{size} bytes, header size {n if len(prefix) == 8 else '?'}: truncated or not safetensors"
                )
            header = json.loads(f.read(n).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise bad(f"unreadable header: {exc}") from exc
    if not isinstance(header, dict):
        raise bad(f"the header is {_kind(header)}, not an object")
    end = 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        offsets = t.get("data_offsets") if isinstance(t, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            raise bad(f"tensor {name!r} has no valid data_offsets")
        end = max(end, offsets[1])
    data = size - 8 - n
    if end != data:
        raise bad(f"the tensors need {end} bytes of data, the file holds {data}: truncated or padded")


def _check_index(folder: Path, index: Path, safetensors: bool) -> None:
    """A sharded checkpoint's index names shard files that exist inside the folder (and are valid)."""
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f'{index}: "weight_map" must be an object of tensor name -> shard file')
    for shard in sorted(set(map(str, weight_map.values()))):
        # lexical: a Hugging Face cache snapshot's files are symlinks into its blobs folder, which is fine
        if not plain_relative(shard) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(
                f"{index} names shard {shard!r}: shards must be files inside the checkpoint folder"
            )
        if not (folder / shard).is_file():
            raise CheckpointError(f"{index} names shard {shard}, which is not in {folder}")
        if safetensors:
            _check_safetensors(folder / shard)


def _check_weights(folder: Path, safetensors: bool) -> None:
    """The weights transformers will load: the single file if present (it wins over an index), else the index."""
    single, index = SAFETENSORS_FILES if safetensors else PICKLE_FILES
    if (folder / single).is_file():
        if safetensors:
            _check_safetensors(folder / single)
    elif (folder / index).is_file():
        _check_index(folder, folder / index, safetensors)


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
    """The tokenizer's tokens (vocab.json plus added tokens) in id order; each id 0..N-1 exactly once."""
    by_id: dict[int, str] = {}
    for t, i in tokenizer.get_vocab().items():
        if i in by_id:
            raise CheckpointError(
                f"tokens {by_id[i]!r} and {t!r} share id {i} (vocab.json and tokenizer_config.json's added tokens); "
                "every token needs its own id"
            )
        by_id[i] = t
    size = max(by_id) + 1 if by_id else 0
    missing = [i for i in range(size) if i not in by_id]
    if missing:
        raise CheckpointError(f"tokenizer vocabulary has gaps at ids {missing[:10]}; fix vocab.json")
    return [by_id[i] for i in range(size)]


def _spare_tokens(vocab: list[str], head: int) -> tuple[list[str], list[int]]:
    """Placeholders for head columns beyond the tokenizer: (their tokens, their ids)."""
    taken = set(vocab)
    tokens, ids = [], []
    for i in range(len(vocab), head):
        token = SPARE_TOKEN.format(i)
        while token in taken:
            token = "<" + token + ">"
        tokens.append(token)
        ids.append(i)
    return tokens, ids


def _adapter_head_size(path: Path) -> int:
    """Rows of lm_head.weight in an MMS adapter file."""
    _check_safetensors(path)
    entry = _safetensors_header(path).get("lm_head.weight")
    shape = entry.get("shape") if isinstance(entry, dict) else None
    if not (isinstance(shape, list) and len(shape) == 2 and all(_is_int(x) and x > 0 for x in shape)):
        raise CheckpointError(f"{path} has no lm_head.weight: it is not an MMS language adapter file")
    return shape[0]


def _mms_adapter(folder: Path, config: dict, target_lang: str | None) -> Path | None:
    """The adapter file of `target_lang` when the folder holds per-language adapters (MMS), else None."""
    if target_lang is None or not config.get("adapter_attn_dim"):
        return None
    path = folder / ADAPTER_FILE.format(target_lang)
    if path.is_file():
        return path
    others = sorted(p.name for p in folder.glob("adapter.*.safetensors"))
    if others:
        raise CheckpointError(
            f"{folder} has no {path.name} for --target-lang {target_lang} (it has {len(others)} adapter files, "
            f"e.g. {', '.join(others[:3])})"
        )
    return None  # a fine-tuned MMS checkpoint: its one language's adapters are in the model weights


def _check_files(folder: Path, allow_pickle: bool) -> bool:
    """The folder, its config.json and its weights exist (pickle only with allow_pickle); True for safetensors."""
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    if not (folder / "config.json").is_file():
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
    return has_st


def _load_tokenizer(folder: Path, target_lang: str | None):
    """The checkpoint's CTC tokenizer (for `target_lang` of an MMS checkpoint); its tokens must be NFC."""
    transformers = require("transformers", "export")
    try:
        tokenizer = transformers.Wav2Vec2CTCTokenizer.from_pretrained(
            str(folder), local_files_only=True, target_lang=target_lang
        )
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"cannot load the CTC tokenizer from {folder}: {exc}") from exc
    not_nfc = [t for t in _vocab_in_id_order(tokenizer) if not unicodedata.is_normalized("NFC", t)]
    if not_nfc:
        raise CheckpointError(
            f"vocabulary tokens are not NFC-normalized: {not_nfc[:5]!r}; normalize vocab.json and the training text"
        )
    return tokenizer


def inspect_checkpoint(
    folder: str | Path,
    *,
    allow_pickle: bool = False,
    target_lang: str | None = None,
    language_hint: str | None = None,
) -> Checkpoint:
    """Validate the checkpoint (a folder or a hub id) and read everything the bundle needs; CheckpointError with
    a fix otherwise. `target_lang` chooses the language of an MMS checkpoint (--target-lang); `language_hint`
    (--multi LANG=...) does so only for a checkpoint with one vocabulary per language."""
    wanted = target_lang or language_hint
    folder = resolve_checkpoint(folder, (wanted,) if wanted else ())
    if target_lang is None and language_hint is not None and _vocab_languages(folder) is not None:
        target_lang = language_hint
    has_st = _check_files(folder, allow_pickle)
    config_path = folder / "config.json"
    config = _read_json(config_path)
    family = family_of(config, str(folder))
    pre = _feature_extractor_config(folder)
    target_lang = choose_target_lang(folder, target_lang)
    _check_vocab_json(folder, target_lang)
    _check_weights(folder, has_st)
    adapter_file = _mms_adapter(folder, config, target_lang)

    tokenizer = _load_tokenizer(folder, target_lang)
    vocab = _vocab_in_id_order(tokenizer)
    lm_head_size = _setting(
        config_path, config, "vocab_size", None, lambda v: _is_int(v) and v > 0, "a positive integer"
    )
    if adapter_file is not None:
        lm_head_size = _adapter_head_size(adapter_file)
    if len(vocab) > lm_head_size:
        raise CheckpointError(
            f"tokenizer has {len(vocab)} tokens but the lm_head outputs {lm_head_size} (config vocab_size); "
            "the checkpoint's vocab.json does not belong to this model"
        )
    spare_tokens, spare_ids = _spare_tokens(vocab, lm_head_size)  # a head wider than the tokenizer
    if tokenizer.pad_token_id is None:
        raise CheckpointError("the tokenizer has no pad token: CTC needs it as the blank")

    if family.norm_key is None:
        feat_norm = "layer"  # Data2Vec-Audio: layer-normed CNN; Wav2Vec2-BERT: no CNN
    else:
        feat_norm = _setting(
            config_path,
            config,
            family.norm_key,
            "group",
            lambda v: v in ("group", "layer"),
            '"group" or "layer"',
        )
    pre_path = folder / "preprocessor_config.json"  # or processor_config.json's feature_extractor part
    conv_kernel, conv_stride = (
        _setting(config_path, config, key, default, _positive_ints, "a list of positive integers")
        for key, default in (("conv_kernel", [10, 3, 3, 3, 3, 2, 2]), ("conv_stride", [5, 2, 2, 2, 2, 2, 2]))
    )
    if len(conv_kernel) != len(conv_stride):
        raise CheckpointError(f'{config_path}: "conv_kernel" and "conv_stride" must have the same length')
    stages = length_stages(family, config, pre, conv_kernel, conv_stride)
    # The mask decision is the feature extractor's: checkpoints trained with attention masks get padded
    # batches; without (group-norm base models) the bundle is fed unpadded, one length per batch.
    mask_setting = pre.get("return_attention_mask")
    uses_mask = mask_setting if isinstance(mask_setting, bool) else feat_norm == "layer"
    waveform = family.front_end == "waveform"
    info = ModelInfo(
        vocab=vocab + spare_tokens,
        blank_id=int(tokenizer.pad_token_id),
        word_delimiter=tokenizer.word_delimiter_token or "|",
        unk_token=tokenizer.unk_token,
        sample_rate=_setting(
            pre_path,
            pre,
            "sampling_rate",
            16000,
            lambda v: _is_int(v) and 1000 <= v <= 1_000_000,
            "an integer (Hz)",
        ),
        # the log-mel front end (in the graph) normalizes its own features: the runtime feeds the raw waveform
        do_normalize=_setting(
            pre_path, pre, "do_normalize", True, lambda v: isinstance(v, bool), "true or false"
        )
        if waveform
        else False,
        feat_extract_norm=feat_norm,
        conv_kernel=stages.kernel,
        conv_stride=stages.stride,
        uses_attention_mask=uses_mask,
        conv_padding=stages.padding if any(stages.padding) else None,
        model_type=family.model_type,
        spare_ids=spare_ids,
    )
    return Checkpoint(
        folder=folder,
        info=info,
        safetensors=has_st,
        lm_head_size=lm_head_size,
        family=family,
        feature_extractor=pre,
        target_lang=target_lang,
        adapter_file=adapter_file,
    )


def _float32_kwargs(transformers, torch) -> dict:
    """Load weights as float32 whatever dtype they are stored in (transformers 5 keeps the stored dtype)."""
    from packaging.version import Version

    key = "dtype" if Version(transformers.__version__).major >= 5 else "torch_dtype"
    return {key: torch.float32}


def load_adapter(model, path: Path) -> None:
    """MMS: one language's attention-adapter and head weights over the shared body (as model.load_adapter)."""
    import torch
    from safetensors.torch import load_file

    state = load_file(str(path))
    expected = {
        name
        for name, _ in model.named_parameters()
        if ".adapter_layer." in name or name.startswith("lm_head.")
    }
    unexpected, missing = sorted(set(state) - expected), sorted(expected - set(state))
    if unexpected or missing:
        raise CheckpointError(
            f"{path} does not fit the model: unexpected {unexpected[:3]}, missing {missing[:3]}"
        )
    rows, width = state["lm_head.weight"].shape
    if rows != model.lm_head.out_features:
        model.lm_head = torch.nn.Linear(width, rows)
        model.config.vocab_size = rows
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    model.target_lang = path.name.split(".")[1]


def load_model(ckpt: Checkpoint):
    """Load the family's *ForCTC model in float32, eval mode, eager attention (exports most predictably)."""
    torch = require("torch", "export")
    transformers = require("transformers", "export")
    transformers.utils.logging.disable_progress_bar()  # our CLI prints its own progress lines
    family = ckpt.family or family_of({}, str(ckpt.folder))
    cls = getattr(transformers, family.ctc_class, None)
    if cls is None:
        raise CheckpointError(
            f"transformers {transformers.__version__} has no {family.ctc_class}; upgrade transformers"
        )
    try:
        model, loading = cls.from_pretrained(
            str(ckpt.folder),
            local_files_only=True,
            use_safetensors=ckpt.safetensors,
            attn_implementation="eager",
            output_loading_info=True,
            **_float32_kwargs(transformers, torch),
        )
    except Exception as exc:  # safetensors raises its own SafetensorError (not an OSError)
        if (
            not isinstance(exc, OSError | ValueError | RuntimeError)
            and type(exc).__name__ != "SafetensorError"
        ):
            raise
        raise CheckpointError(f"cannot load the model from {ckpt.folder}: {exc}") from exc
    if ckpt.adapter_file is not None:
        load_adapter(model, ckpt.adapter_file)
    else:
        head = [k for k in loading.get("missing_keys", ()) if "lm_head" in k]
        if head:
            raise CheckpointError(
                f"{ckpt.folder} has no CTC head weights ({', '.join(sorted(head))}): is it a fine-tuned "
                f"{family.ctc_class} checkpoint?"
            )
    model = model.float()
    if model.lm_head.out_features != len(ckpt.info.vocab):
        raise CheckpointError(
            f"lm_head has {model.lm_head.out_features} outputs but the vocabulary has {len(ckpt.info.vocab)} tokens"
        )
    model.xlsr_feature_extractor = dict(ckpt.feature_extractor)  # the in-graph front end's settings
    return model.eval()
