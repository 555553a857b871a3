"""Multi-language bundles: one shared backbone graph, one small head per language, a language-ID classifier.

Checkpoints fine-tuned with a frozen body (or heads trained on one body) share every backbone tensor bit for
bit; that is checked by hashing, never assumed. Different backbones are refused with the tensors that differ:
averaging them would silently give a model nobody trained.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xlsr_edge.bundle import BundleManifest, ModelInfo, load_bundle, write_manifest
from xlsr_edge.constants import ADAPTER_WEIGHTS
from xlsr_edge.errors import ExportError, XlsrEdgeError
from xlsr_edge.export.adapters import ADAPTER_MARK, flat_adapter, has_attention_adapters
from xlsr_edge.export.checkpoint import Checkpoint, inspect_checkpoint, load_model
from xlsr_edge.export.onnx_export import export_onnx
from xlsr_edge.export.parity import run_parity, verification_audio
from xlsr_edge.export.pipeline import ExportOptions, Stages, library_versions
from xlsr_edge.outputs import BUNDLE, atomic_output, check_output
from xlsr_edge.precision.convert import convert_precision, load_precision_inputs
from xlsr_edge.runtime.audio import load_audio, normalize
from xlsr_edge.runtime.router import Head, HeadRunner, LanguageId, pool
from xlsr_edge.runtime.runners import OnnxRuntimeRunner

BACKBONE_ONNX = "backbone.onnx"
LID_FILE = "lid.npz"
LID_FEATURES = "lid_features.npz"  # kept so `add-language` can retrain language ID without the old audio
SHARED_AUDIO_FIELDS = (
    "sample_rate",
    "do_normalize",
    "feat_extract_norm",
    "conv_kernel",
    "conv_stride",
    "conv_padding",
    "model_type",
    "uses_attention_mask",
)


# --lid-threshold auto: the confidence that keeps this share of held-out known-language clips routed to their
# head (the rest go to the --below-threshold policy). A fixed 0.5 turned away almost nothing: a closed-set
# classifier is confident on nearly every clip, the unseen languages included.
AUTO_THRESHOLD_KEEP = 0.95
FALLBACK_THRESHOLD = 0.5  # auto with fewer held-out clips than AUTO_MIN_HOLDOUT (too little --lid-data)
AUTO_MIN_HOLDOUT = 20


@dataclass(frozen=True)
class LidOptions:
    data: dict[str, Path]  # language -> manifest or folder of that language's speech
    threshold: float | None = None  # None: auto (AUTO_THRESHOLD_KEEP of held-out clips routed)
    policy: str = "all"  # below the threshold: "all" heads by CTC confidence, or "unknown"
    holdout: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ValueError("--lid-threshold must be within [0, 1]")
        if self.policy not in ("all", "unknown"):
            raise ValueError("--below-threshold must be 'all' or 'unknown'")


def check_language_code(lang: str) -> None:
    """Language names become file names (heads/LANG.npz): letters, digits, '-' and '_' only (e.g. tr, pt-BR)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}", lang):
        raise ExportError(
            f"language code {lang!r} must be 1-32 letters, digits, '-' or '_' (e.g. tr, pt-BR, cmn_hans)"
        )


def backbone_hashes(model, adapters: bool = False) -> dict[str, str]:
    """sha256 of every backbone tensor (everything but the CTC head, and the MMS adapters with `adapters`)."""
    return {
        name: hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        for name, t in model.state_dict().items()
        if not name.startswith("lm_head.") and not (adapters and ADAPTER_MARK in name)
    }


def backbone_digest(hashes: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()


def compare_backbones(hashes: dict[str, dict[str, str]]) -> list[str]:
    """Names of tensors that differ between the checkpoints' backbones (empty when they are shared)."""
    langs = list(hashes)
    ref = hashes[langs[0]]
    differ = set()
    for lang in langs[1:]:
        other = hashes[lang]
        differ |= {k for k in ref.keys() | other.keys() if ref.get(k) != other.get(k)}
    return sorted(differ)


def _head(model, adapters: bool = False) -> Head:
    return Head(
        model.lm_head.weight.detach().numpy().astype(np.float32),
        model.lm_head.bias.detach().numpy().astype(np.float32),
        flat_adapter(model) if adapters else None,
    )


def _mms_mode(models: dict) -> bool:
    """MMS attention-adapter checkpoints (one body, per-language adapters and heads); all or none of them."""
    kinds = {lang: has_attention_adapters(m) for lang, m in models.items()}
    if len(set(kinds.values())) > 1:
        with_ = ", ".join(lang for lang, k in kinds.items() if k)
        raise ExportError(
            f"{with_} have MMS attention adapters and the others do not: they cannot share one backbone"
        )
    return any(kinds.values())


def _language_entry(ckpt: Checkpoint, lang: str) -> dict:
    info = ckpt.info
    return {
        "vocab": info.vocab,
        "blank_id": info.blank_id,
        "word_delimiter": info.word_delimiter,
        "unk_token": info.unk_token,
        "head": f"heads/{lang}.npz",
        "source": ckpt.digest(),
    }


def _check_shared_audio(infos: dict[str, ModelInfo]) -> None:
    first_lang, first = next(iter(infos.items()))
    for lang, info in infos.items():
        for f in SHARED_AUDIO_FIELDS:
            if getattr(info, f) != getattr(first, f):
                raise ExportError(
                    f"{lang} and {first_lang} disagree on {f} ({getattr(info, f)} vs {getattr(first, f)}): "
                    "they cannot share one backbone"
                )


def lid_features(
    runner: OnnxRuntimeRunner, info: ModelInfo, data: dict[str, Path]
) -> tuple[np.ndarray, list[str]]:
    """Pooled backbone features of every utterance of every language (one backbone pass each)."""
    from tqdm import tqdm

    from xlsr_edge.datasets import read_manifest

    jobs = []
    for lang, src in data.items():
        utts = read_manifest(src)
        if not utts:
            raise XlsrEdgeError(f"no audio for language {lang} in {src}")
        jobs += [(lang, u.audio) for u in utts]
    feats, labels = [], []
    for lang, path in tqdm(jobs, desc="language-ID features", unit="utt", file=sys.stderr, leave=False):
        x = normalize(load_audio(path, info.sample_rate), info.do_normalize)
        hidden, lengths = runner.infer(x[None], None)
        feats.append(pool(hidden[0, : lengths[0]]))
        labels.append(lang)
    return np.stack(feats), labels


def train_lid(features: np.ndarray, labels: list[str], options: LidOptions) -> tuple[LanguageId, dict]:
    """Fit on a seeded split, report held-out accuracy, then refit on everything for the bundle."""
    rng = np.random.default_rng(options.seed)
    order = rng.permutation(len(labels))
    n_test = int(round(len(labels) * options.holdout))
    test, train = order[:n_test], order[n_test:]
    report: dict = {
        "utterances": len(labels),
        "per_language": {lb: labels.count(lb) for lb in sorted(set(labels))},
    }
    threshold, source = options.threshold, "given"
    if n_test:
        held = LanguageId.fit(features[train], [labels[i] for i in train])
        pred = held.predict(features[test])
        report["holdout_accuracy"] = float(np.mean([p[0] == labels[i] for p, i in zip(pred, test)]))
        report["holdout_utterances"] = int(n_test)
        confidence = np.array([p[1] for p in pred])
        if threshold is None and n_test >= AUTO_MIN_HOLDOUT:
            threshold = float(np.quantile(confidence, 1 - AUTO_THRESHOLD_KEEP))
            source = f"auto: keeps {AUTO_THRESHOLD_KEEP:.0%} of {n_test} held-out clips routed"
    if threshold is None:
        threshold = FALLBACK_THRESHOLD
        source = f"fallback: auto needs {AUTO_MIN_HOLDOUT} held-out clips, had {n_test}"
    if n_test:
        report["holdout_routed"] = float(np.mean(confidence >= threshold))
    report["threshold"], report["threshold_source"] = round(threshold, 4), source
    return LanguageId.fit(features, labels), report


def _wrap(head: Head):
    return lambda runner: HeadRunner(runner, head)


def export_multi(
    specs: dict[str, Path],
    out: Path,
    options: ExportOptions | None = None,
    lid: LidOptions | None = None,
) -> BundleManifest:
    options = options or ExportOptions()
    if len(specs) < 1:
        raise ExportError("--multi needs at least one LANG=CHECKPOINT")
    for lang in specs:
        check_language_code(lang)
    out = Path(out)
    protect = [(f"the {lang} checkpoint", Path(p)) for lang, p in specs.items()]
    check_output(out, BUNDLE, overwrite=options.overwrite, protect=protect)  # before any work
    stage = Stages("export")
    # an MMS checkpoint (one vocabulary per language) gives the language named LANG: tur=mms-1b-all
    ckpts = {
        lang: inspect_checkpoint(p, allow_pickle=options.allow_pickle, language_hint=lang)
        for lang, p in specs.items()
    }
    _check_shared_audio({lang: ck.info for lang, ck in ckpts.items()})
    first = next(iter(ckpts))
    info = ckpts[first].info
    precision_inputs = None
    if options.precision != "fp32":  # a bad --calibration manifest fails before any export work
        precision_inputs = load_precision_inputs(options, info, languages=list(specs))
    stage(f"loading {len(ckpts)} checkpoints ({', '.join(ckpts)})")
    models = {lang: load_model(ck) for lang, ck in ckpts.items()}  # an MMS body once per language
    mms = _mms_mode(models)
    if mms and options.precision == "int8":
        raise ExportError(
            "--precision int8 (static) is not supported for MMS multi bundles yet; use int8-dynamic"
        )
    hashes = {lang: backbone_hashes(m, adapters=mms) for lang, m in models.items()}
    differ = compare_backbones(hashes)
    if differ:
        raise ExportError(
            f"the checkpoints do not share a backbone: {len(differ)} tensors differ (e.g. {', '.join(differ[:3])}); "
            "train heads on one frozen body (xlsr-edge finetune --init BODY --heads-only), or export one bundle "
            "per language and pick it with --language (Option B)"
        )
    audios = verification_audio(options.verify_audio, info.sample_rate) if options.verify else []
    with atomic_output(out, BUNDLE, overwrite=options.overwrite, protect=protect) as tmp:
        stage(f"exporting the backbone to ONNX (opset {options.opset})")
        facts = export_onnx(
            models[first], info, tmp / BACKBONE_ONNX, options.opset, backbone_only=True, adapter_input=mms
        )
        backbone = OnnxRuntimeRunner(tmp / BACKBONE_ONNX).activate()
        parity = {}
        heads = {}
        for lang, model in models.items():
            head = heads[lang] = _head(model, adapters=mms)
            head.save(tmp / "heads" / f"{lang}.npz")
            if options.verify:
                stage(f"parity gate for {lang} on {len(audios)} utterances")
                report = run_parity(
                    model, HeadRunner(backbone, head), ckpts[lang].info, audios, options.thresholds
                )
                backbone.activate()  # the gate deactivates the runner it was given
                if not report["passed"]:
                    raise ExportError(f"parity gate failed for {lang}: " + "; ".join(report["failures"]))
                parity[lang] = report
        extra: dict = {
            "kind": "multi",
            "export": facts,
            "backbone_sha256": backbone_digest(hashes[first]),
            "languages": {lang: _language_entry(ck, lang) for lang, ck in ckpts.items()},
        }
        if mms:
            # language ID reads the body with the first language's adapters (the runtime does the same)
            extra["adapters"] = {
                "input": ADAPTER_WEIGHTS,
                "size": int(heads[first].adapter.size),
                "lid": first,
            }
            backbone.adapter_weights = heads[first].adapter
        if lid is not None:
            stage("language ID: backbone features of --lid-data")
            feats, labels = lid_features(backbone, info, lid.data)
            classifier, report = train_lid(feats, labels, lid)
            classifier.save(tmp / LID_FILE)
            with (tmp / LID_FEATURES).open("wb") as f:
                np.savez(f, features=feats, labels=np.array(labels))
            extra["lid"] = {"file": LID_FILE, "policy": lid.policy, **report}
        backbone.deactivate()
        if precision_inputs is not None:
            # the parity gates above checked the fp32 backbone; convert it, and gate every language's transcripts
            stage(f"converting the backbone to {options.precision} (with its accuracy gate per language)")
            extra["precision_report"] = convert_precision(
                tmp / BACKBONE_ONNX,
                tmp,
                info,
                options,
                precision_inputs,
                graph_name=BACKBONE_ONNX,
                heads={lang: (ckpts[lang].info, _wrap(heads[lang])) for lang in ckpts},
            )
        manifest = BundleManifest(
            model=info,
            precision=options.precision,
            graph=BACKBONE_ONNX,
            opset=options.opset,
            source={lang: ck.digest() for lang, ck in ckpts.items()},
            versions=library_versions(),
            parity={"passed": True, "languages": parity} if options.verify else {"skipped": "--no-verify"},
            extra=extra,
        )
        stage("writing bundle.json (hashing the files)")
        write_manifest(tmp, manifest)
    stage(f"wrote {out}")
    return manifest


def add_language(
    bundle: Path,
    lang: str,
    checkpoint: Path,
    lid_data: Path | None = None,
    options: ExportOptions | None = None,
) -> BundleManifest:
    """Add a head trained on the bundle's frozen backbone; retrain language ID from the stored features."""
    options = options or ExportOptions()
    check_language_code(lang)
    import shutil

    bundle = Path(bundle)
    protect = [("the checkpoint", Path(checkpoint))]
    check_output(bundle, BUNDLE, overwrite=True, flag="BUNDLE", protect=protect)
    stage = Stages("add-language")
    manifest = load_bundle(bundle)
    if manifest.extra.get("kind") != "multi":
        raise ExportError(f"{bundle} is a single-language bundle; export it with --multi first")
    if lang in manifest.extra["languages"]:
        raise ExportError(f"{bundle} already has language {lang}")
    ckpt = inspect_checkpoint(checkpoint, allow_pickle=options.allow_pickle, language_hint=lang)
    _check_shared_audio({"the bundle": manifest.model, lang: ckpt.info})
    stage(f"loading checkpoint {ckpt.folder}")
    model = load_model(ckpt)
    mms = "adapters" in manifest.extra
    if mms != has_attention_adapters(model):
        raise ExportError(f"{checkpoint} and the bundle differ in MMS attention adapters: they share no body")
    digest = backbone_digest(backbone_hashes(model, adapters=mms))
    if digest != manifest.extra["backbone_sha256"]:
        raise ExportError(
            f"{checkpoint}'s backbone differs from the bundle's; train the {lang} head on the bundle's body "
            "with `xlsr-edge finetune --heads-only`"
        )
    lid_meta = manifest.extra.get("lid")
    if lid_meta and lid_data is None:
        raise ExportError(
            f"the bundle routes by language ID: pass --lid-data with {lang} speech to retrain it"
        )
    # a copy of the bundle is changed and swapped in: a failure (or a kill) leaves the bundle as it was
    with atomic_output(bundle, BUNDLE, overwrite=True, flag="BUNDLE", protect=protect) as tmp:
        stage("copying the bundle")
        shutil.copytree(bundle, tmp, dirs_exist_ok=True)
        head = _head(model, adapters=mms)
        head.save(tmp / "heads" / f"{lang}.npz")
        backbone = OnnxRuntimeRunner(tmp / manifest.graph).activate()
        if mms:  # language ID features: the body with the language-ID adapters, as at export
            lid_lang = manifest.extra["adapters"]["lid"]
            backbone.adapter_weights = Head.load(tmp / manifest.extra["languages"][lid_lang]["head"]).adapter
        if options.verify:
            audios = verification_audio(options.verify_audio, manifest.model.sample_rate)
            stage(f"parity gate for {lang} on {len(audios)} utterances")
            report = run_parity(model, HeadRunner(backbone, head), ckpt.info, audios, options.thresholds)
            backbone.activate()
            if mms:
                backbone.adapter_weights = Head.load(
                    tmp / manifest.extra["languages"][lid_lang]["head"]
                ).adapter
            if not report["passed"]:
                raise ExportError(f"parity gate failed for {lang}: " + "; ".join(report["failures"]))
            manifest.parity.setdefault("languages", {})[lang] = report
        manifest.extra["languages"][lang] = _language_entry(ckpt, lang)
        manifest.source[lang] = ckpt.digest()
        if lid_meta:
            with np.load(tmp / LID_FEATURES) as z:
                old_feats, old_labels = z["features"], [str(s) for s in z["labels"]]
            stage("language ID: backbone features of --lid-data")
            feats, labels = lid_features(backbone, manifest.model, {lang: lid_data})
            feats, labels = np.concatenate([old_feats, feats]), old_labels + labels
            auto = str(lid_meta.get("threshold_source", "")).startswith(("auto", "fallback"))
            threshold = None if auto else lid_meta["threshold"]  # auto: recalibrated with the new language
            lid_opts = LidOptions(data={}, threshold=threshold, policy=lid_meta["policy"])
            classifier, report = train_lid(feats, labels, lid_opts)
            classifier.save(tmp / LID_FILE)
            with (tmp / LID_FEATURES).open("wb") as f:
                np.savez(f, features=feats, labels=np.array(labels))
            manifest.extra["lid"] = {**lid_meta, **report}
        backbone.deactivate()
        stage("writing bundle.json (hashing the files)")
        write_manifest(tmp, manifest)
    stage(f"wrote {bundle}")
    return manifest
