"""Issue 15: every *ForCTC audio family of transformers exports to one kind of bundle, exactly.

Tiny random checkpoints built with transformers' own config / model / tokenizer / feature-extractor classes
(save_pretrained, safetensors). Each bundle is checked against transformers itself (not only the gate): a padded
batch of 3 clips whose lengths are not multiples of the stride gives every clip the logits of PyTorch on that clip
alone (max difference <= 1e-4 of the logit scale, argmax >= 99.9 %, logit_lengths equal), and each clip alone
through the graph equals the clip inside the batch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import transformers

from tests.conftest import read_bundle_json
from xlsr_edge.bundle import ModelInfo
from xlsr_edge.cli import export_main, main
from xlsr_edge.data import default_clips
from xlsr_edge.export import ExportOptions, export_bundle
from xlsr_edge.export.families import FAMILIES
from xlsr_edge.export.tiny import build_checkpoint
from xlsr_edge.runtime.audio import load_audio

ADAPTER = {"add_adapter": True, "num_adapter_layers": 2}
# (id, family, build_checkpoint arguments)
CASES = [
    ("wav2vec2", "wav2vec2", {}),
    ("wav2vec2-add_adapter", "wav2vec2", ADAPTER),
    ("wav2vec2-group-masked", "wav2vec2", {"feat_extract_norm": "group", "return_attention_mask": True}),
    ("conformer-rotary", "wav2vec2-conformer", {"position_embeddings_type": "rotary"}),
    ("conformer-relative", "wav2vec2-conformer", {"position_embeddings_type": "relative"}),
    ("hubert", "hubert", {}),
    ("hubert-group-unpadded", "hubert", {"feat_extract_norm": "group"}),
    ("wavlm", "wavlm", {}),
    ("data2vec-audio", "data2vec-audio", {}),
    ("unispeech", "unispeech", {}),
    ("unispeech-sat", "unispeech-sat", {}),
    ("sew-group-unpadded", "sew", {"feat_extract_norm": "group"}),
    ("sew-d", "sew-d", {}),
    ("wav2vec2-bert", "wav2vec2-bert", {}),
    ("wav2vec2-bert-add_adapter", "wav2vec2-bert", ADAPTER),
]
# PyTorch itself lets padding into real frames on a padded batch here; the graph must not
LEAKY = {
    "wav2vec2-add_adapter",
    "wav2vec2-group-masked",
    "conformer-rotary",
    "conformer-relative",
    "data2vec-audio",
}


def _clips(n: int = 3) -> list[np.ndarray]:
    clips = [load_audio(p, 16000) for p in default_clips()[:n]]
    assert len({len(c) for c in clips}) == n and all(len(c) % 320 for c in clips)
    return clips


_MODELS: dict[Path, tuple] = {}


def _reference(ckpt: Path, family: str, clip: np.ndarray) -> np.ndarray:
    """transformers on one clip alone, prepared by the checkpoint's own feature extractor."""
    fam = FAMILIES[family]
    if ckpt not in _MODELS:
        model = getattr(transformers, fam.ctc_class).from_pretrained(str(ckpt), dtype=torch.float32).eval()
        _MODELS[ckpt] = (model, transformers.AutoFeatureExtractor.from_pretrained(str(ckpt)))
    model, fe = _MODELS[ckpt]
    feats = fe(clip, sampling_rate=16000, return_tensors="pt", return_attention_mask=True)
    key = "input_features" if fam.front_end == "fbank" else "input_values"
    values, mask = feats[key], feats["attention_mask"]
    if fam.front_end == "fbank":  # alone: without the masked frame that pads an odd frame count to even
        n = int(mask.sum())
        values, mask = values[:, :n], mask[:, :n]
    with torch.no_grad():
        logits = model(values, attention_mask=mask if fe.return_attention_mask else None).logits[0].numpy()
    if fam.front_end == "fbank":  # valid frames: the feature mask through the adapters' length formula
        n = model._get_feat_extract_output_lengths(feats["attention_mask"].sum(-1)).item()
        logits = logits[:n]
    return logits


def _session(bundle: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])


def _run(sess: ort.InferenceSession, clips: list[np.ndarray], normalize: bool):
    from xlsr_edge.runtime.audio import normalize as norm
    from xlsr_edge.runtime.batching import pad_batch

    values, mask = pad_batch([norm(c, normalize) for c in clips])
    feeds = {"input_values": values}
    if "attention_mask" in [i.name for i in sess.get_inputs()]:
        feeds["attention_mask"] = mask
    logits, lengths = sess.run(None, feeds)
    return [logits[i, : lengths[i]] for i in range(len(clips))], lengths.tolist()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Build and export each case once (the export runs the parity gate)."""
    root = tmp_path_factory.mktemp("families")
    cache: dict[str, tuple[Path, Path]] = {}

    def get(case_id: str) -> tuple[Path, Path]:
        if case_id not in cache:
            _, family, kwargs = next(c for c in CASES if c[0] == case_id)
            ckpt = build_checkpoint(root / case_id / "ckpt", family=family, **kwargs)
            export_bundle(ckpt, root / case_id / "bundle")
            cache[case_id] = (ckpt, root / case_id / "bundle")
        return cache[case_id]

    return get


@pytest.mark.parametrize("case_id,family,kwargs", CASES, ids=[c[0] for c in CASES])
def test_family_exports_exactly(exported, case_id, family, kwargs):
    ckpt, bundle = exported(case_id)
    meta = read_bundle_json(bundle)
    assert meta["model_type"] == family and meta["parity"]["passed"], meta["parity"].get("failures")
    info = ModelInfo.from_json(meta)
    sess = _session(bundle)
    clips = _clips()
    refs = [_reference(ckpt, family, c) for c in clips]
    scale = max(float(np.abs(r).max()) for r in refs)
    if info.uses_attention_mask:
        batch, lengths = _run(sess, clips, info.do_normalize)  # one padded batch of 3
    else:  # fed unpadded: each clip alone is the deployment
        runs = [_run(sess, [c], info.do_normalize) for c in clips]
        batch, lengths = [r[0][0] for r in runs], [r[1][0] for r in runs]
    assert lengths == [r.shape[0] for r in refs] == [info.frames_for(len(c)) for c in clips]
    agree = sum(int((b.argmax(-1) == r.argmax(-1)).sum()) for b, r in zip(batch, refs))
    assert agree / sum(r.shape[0] for r in refs) >= 0.999
    assert max(float(np.abs(b - r).max()) for b, r in zip(batch, refs)) <= 1e-4 * scale
    # batch versus alone: each clip alone through the graph equals the clip inside the batch
    if info.uses_attention_mask:
        for clip, inside in zip(clips, batch):
            alone, _ = _run(sess, [clip], info.do_normalize)
            assert np.abs(alone[0] - inside).max() <= 1e-4 * scale
        assert [i.name for i in sess.get_inputs()] == ["input_values", "attention_mask"]
    else:
        assert [i.name for i in sess.get_inputs()] == ["input_values"]
        assert "unpadded" in meta["extra"]["padding"]
        short = min(len(c) for c in clips)  # the runtime batches equal lengths only
        same, _ = _run(sess, [c[:short] for c in clips], info.do_normalize)
        for c, inside in zip(clips, same):
            alone, _ = _run(sess, [c[:short]], info.do_normalize)
            assert np.abs(alone[0] - inside).max() <= 1e-4 * scale
    parity = meta["parity"]
    assert parity["vs_pytorch"]["relative_max_abs_diff"] <= 1e-4 and parity["lengths_match"]
    assert parity["batch_vs_single"]["transcripts_equal"]
    if case_id in LEAKY:  # PyTorch on the padded batch differs from PyTorch alone; the graph does not
        assert (
            parity["pytorch_padded_batch_vs_alone"]["max_abs_diff"]
            > 100 * parity["vs_pytorch"]["max_abs_diff"]
        )


def test_frame_rate_includes_adapter_strides(exported):
    for case_id, stride in (("wav2vec2-add_adapter", 320 * 4), ("wav2vec2-bert-add_adapter", 320 * 4)):
        meta = read_bundle_json(exported(case_id)[1])
        assert meta["frame_stride_samples"] == stride
        assert meta["conv_padding"][-2:] == [1, 1]
    meta = read_bundle_json(exported("wav2vec2-bert")[1])
    assert meta["conv_kernel"] == [400, 2] and meta["conv_stride"] == [160, 2]
    assert meta["do_normalize"] is False  # the graph takes the raw waveform and normalizes its own features
    assert "conv_padding" not in read_bundle_json(exported("wavlm")[1])  # older readers see the same fields


@pytest.mark.parametrize("case_id", ["sew-group-unpadded", "sew-d"])
def test_sew_frame_counts_are_exact_at_every_length(exported, case_id):
    """SEW/SEW-D pool frames in pairs and pad the upsampled output: odd and even frame counts both exact."""
    ckpt, bundle = exported(case_id)
    family = "sew" if case_id.startswith("sew-group") else "sew-d"
    sess = _session(bundle)
    info = ModelInfo.from_json(read_bundle_json(bundle))
    rng = np.random.default_rng(0)
    lengths = [720, 721, 1039, 1040, 1041, 1359, 1360, 3201, 3520, 16000, 16001, 16320, 16321, 16640, 16641]
    frames = {info.frames_for(n) % 2 for n in lengths}
    assert frames == {0, 1}
    for n in lengths:
        clip = (rng.standard_normal(n) * 0.1).astype(np.float32)
        ref = _reference(ckpt, family, clip)
        got, got_len = _run(sess, [clip], info.do_normalize)
        assert got_len == [ref.shape[0]] == [info.frames_for(n)], n
        np.testing.assert_allclose(got[0], ref, atol=1e-4 * max(1.0, float(np.abs(ref).max())))


def test_wav2vec2_bert_front_end_equals_the_feature_extractor():
    """The in-graph log-mel front end against transformers' SeamlessM4TFeatureExtractor, batched and alone."""
    from xlsr_edge.export.fbank import FbankFrontEnd

    fe = transformers.SeamlessM4TFeatureExtractor()
    front = FbankFrontEnd(fe.to_dict())
    clips = _clips() + [np.random.default_rng(1).standard_normal(8017).astype(np.float32) * 0.1]
    values = np.zeros((len(clips), max(map(len, clips))), np.float32)
    for i, c in enumerate(clips):
        values[i, : len(c)] = c
    feats, mask = front(torch.from_numpy(values), torch.tensor([len(c) for c in clips]))
    for i, c in enumerate(clips):
        ref = fe(c, sampling_rate=16000, return_tensors="np", pad_to_multiple_of=None)["input_features"][0]
        assert int(mask[i].sum()) == ref.shape[0]
        np.testing.assert_allclose(feats[i, : ref.shape[0]].numpy(), ref, atol=1e-4)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_checkpoints_export_as_float32(tmp_path, dtype):
    ckpt = build_checkpoint(tmp_path / "ckpt", family="wav2vec2", dtype=dtype)
    header = json.loads((ckpt / "model.safetensors").read_bytes()[8:][:10_000].split(b"}}")[0] + b"}}")
    assert {"F16" if dtype == "float16" else "BF16"} <= {
        v.get("dtype") for v in header.values() if isinstance(v, dict)
    }
    manifest = export_bundle(ckpt, tmp_path / "b")
    assert manifest.parity["passed"] and manifest.precision == "fp32"
    clips = _clips()
    ref = [_reference(ckpt, "wav2vec2", c) for c in clips]  # the stored weights, computed in float32
    got, _ = _run(_session(tmp_path / "b"), clips, True)
    scale = max(float(np.abs(r).max()) for r in ref)
    assert max(float(np.abs(g - r).max()) for g, r in zip(got, ref)) <= 1e-4 * scale


def test_padded_vocabulary_gets_placeholders_never_emitted(tmp_path, capsys):
    from xlsr_edge.decoders import BeamDecoder, GreedyDecoder, Vocabulary

    ckpt = build_checkpoint(tmp_path / "ckpt", spare_vocab=4, head_gain=1.0)
    manifest = export_bundle(ckpt, tmp_path / "b")
    info = manifest.model
    n = len(json.loads((ckpt / "vocab.json").read_text(encoding="utf-8")))
    assert len(info.vocab) == n + 4 and info.spare_ids == [n, n + 1, n + 2, n + 3]
    assert all(info.vocab[i].startswith("<spare") for i in info.spare_ids)
    assert isinstance(manifest.parity["spare_vocab_frames"], int)  # counted by the gate
    assert read_bundle_json(tmp_path / "b")["spare_ids"] == info.spare_ids
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "b")]) == 0
    assert "4 placeholder entries" in capsys.readouterr().out
    # logits whose argmax is a spare column: neither decoder writes it
    vocab = Vocabulary.from_model_info(info)
    logits = np.full((1, 6, len(info.vocab)), -5.0, np.float32)
    a = info.vocab.index("a")
    for t, i in enumerate([a, n, a, n + 2, info.blank_id, a]):
        logits[0, t, i] = 5.0
    assert GreedyDecoder(vocab).decode_batch(logits)[0].text == "aaa"
    with BeamDecoder(vocab) as beam:
        assert "<spare" not in beam.decode_batch(logits)[0].text


def test_bundle_json_without_the_new_fields_still_loads(exported):
    meta = read_bundle_json(exported("wav2vec2")[1])
    for key in ("model_type", "conv_padding", "spare_ids"):
        meta.pop(key, None)
    info = ModelInfo.from_json(meta)
    assert info.model_type == "wav2vec2" and info.paddings == [0] * 7 and info.spare_ids == []
    assert info.frames_for(16000) == 49


MMS = {"tur": list("abcçdeğ"), "fra": list("abcdeéè"), "deu": list("abcdeäöüß")}


@pytest.fixture(scope="module")
def mms_ckpt(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("mms") / "ckpt", mms_languages=MMS)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_mms_needs_target_lang_and_lists_the_languages(mms_ckpt, tmp_path, capsys):
    capsys.readouterr()  # whatever building the checkpoint printed
    assert export_main([str(mms_ckpt), "-o", str(tmp_path / "b")]) == 2
    line = _one_error_line(capsys)
    assert "--target-lang" in line and all(lang in line for lang in MMS)
    assert export_main([str(mms_ckpt), "-o", str(tmp_path / "b"), "--target-lang", "ita"]) == 2
    line = _one_error_line(capsys)
    assert "ita" in line and all(lang in line for lang in MMS)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("lang", list(MMS))
def test_mms_target_lang_exports_that_languages_adapter(mms_ckpt, tmp_path, lang):
    out = tmp_path / lang
    assert export_main([str(mms_ckpt), "-o", str(out), "--target-lang", lang]) == 0
    meta = read_bundle_json(out)
    assert meta["vocab"][5:] == MMS[lang] and meta["source"]["target_lang"] == lang
    assert f"adapter.{lang}.safetensors" in meta["source"]["files"]
    assert not any(f.startswith("adapter.") and lang not in f for f in meta["source"]["files"])
    # transformers' own MMS loading (target_lang -> load_adapter) is the reference
    model = transformers.Wav2Vec2ForCTC.from_pretrained(
        str(mms_ckpt), target_lang=lang, ignore_mismatched_sizes=True
    ).eval()
    clips = _clips()
    got, lengths = _run(_session(out), clips, True)
    fe = transformers.AutoFeatureExtractor.from_pretrained(str(mms_ckpt))
    for clip, g in zip(clips, got):
        x = fe(clip, sampling_rate=16000, return_tensors="pt").input_values
        with torch.no_grad():
            ref = model(x).logits[0].numpy()
        assert g.shape == ref.shape
        assert np.abs(g - ref).max() <= 1e-4 * np.abs(ref).max()


def _hf_cache(root: Path, repo: str, ckpt: Path) -> str:
    """A checkpoint placed in a Hugging Face cache in the hub's own layout: blobs, snapshots/<commit>, refs/main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo_dir / "blobs").mkdir()
    for f in sorted(ckpt.iterdir()):
        import hashlib

        blob = repo_dir / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(Path("../..") / "blobs" / blob.name)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return commit


def test_hub_id_resolves_from_the_cache_offline(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    ckpt = build_checkpoint(tmp_path / "src", family="wavlm")
    cache = tmp_path / "hf-cache"
    commit = _hf_cache(cache, "acme/tiny-wavlm-ctc", ckpt)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for spec, out in (("acme/tiny-wavlm-ctc", "b1"), (f"acme/tiny-wavlm-ctc@{commit}", "b2")):
        assert export_main([spec, "-o", str(tmp_path / out)]) == 0
        meta = read_bundle_json(tmp_path / out)
        assert meta["model_type"] == "wavlm" and meta["parity"]["passed"]
        assert commit in meta["source"]["path"]
    capsys.readouterr()
    assert export_main(["acme/not-cached", "-o", str(tmp_path / "b3")]) == 2
    line = _one_error_line(capsys)
    assert "acme/not-cached" in line and "local folder" in line and "cache" in line
    assert not (tmp_path / "b3").exists()


def test_unknown_model_type_names_the_families(tmp_path, capsys):
    ckpt = build_checkpoint(tmp_path / "ckpt")
    config = json.loads((ckpt / "config.json").read_text())
    config["model_type"] = "whisper"
    (ckpt / "config.json").write_text(json.dumps(config))
    assert export_main([str(ckpt), "-o", str(tmp_path / "b")]) == 2
    line = _one_error_line(capsys)
    assert "'whisper'" in line and "wav2vec2-bert" in line and "sew-d" in line


def test_mms_multi_bundle_shares_one_body_and_equals_each_single_export(mms_ckpt, tmp_path):
    from xlsr_edge.export.multi import LidOptions, export_multi
    from xlsr_edge.runtime import Recognizer

    clips = default_clips()
    lid_data = {}
    for i, lang in enumerate(MMS):  # language ID needs speech per language: any clips do for routing
        d = tmp_path / "lid" / lang
        d.mkdir(parents=True)
        for clip in clips[i : i + 2]:
            shutil.copy(clip, d / clip.name)
        lid_data[lang] = d
    bundle = tmp_path / "multi"
    manifest = export_multi({lang: mms_ckpt for lang in MMS}, bundle, lid=LidOptions(lid_data, threshold=0.0))
    assert manifest.extra["adapters"]["lid"] == "tur" and manifest.parity["passed"]
    graphs = sorted(p.name for p in bundle.glob("*.onnx*"))
    assert graphs == ["backbone.onnx"]  # the body once
    inputs = [i.name for i in _session_file(bundle / "backbone.onnx").get_inputs()]
    assert inputs == ["input_values", "attention_mask", "adapter_weights"]
    size = manifest.extra["adapters"]["size"]
    for lang in MMS:
        with np.load(bundle / "heads" / f"{lang}.npz") as z:
            assert z["adapter"].shape == (size,) and z["weight"].shape[0] == len(MMS[lang]) + 5
    singles = {}
    for lang in MMS:
        export_bundle(mms_ckpt, tmp_path / lang, ExportOptions(target_lang=lang, verify=False))
        with (
            Recognizer.from_bundle(tmp_path / lang) as one,
            Recognizer.from_bundle(bundle, language=lang) as shared,
        ):
            singles[lang] = [t.text for t in one.transcribe(clips)]
            assert [t.text for t in shared.transcribe(clips)] == singles[lang]
            ref, got = one.logits(clips), shared.logits(clips)
            head = shared.heads[lang]
            assert max(float(np.abs(head.apply(g) - r).max()) for g, r in zip(got, ref)) < 1e-4
    # routed by language ID: each clip's transcript is the routed language's own (its adapters, its head)
    with Recognizer.from_bundle(bundle) as routed:
        for i, t in enumerate(routed.transcribe(clips)):
            assert t.language in MMS and t.text == singles[t.language][i]


def _session_file(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_precision_with_multi(tmp_path, capsys):
    from xlsr_edge.runtime import Recognizer

    ckpts = {
        lang: build_checkpoint(tmp_path / lang, chars=chars, seed=0)
        for lang, chars in (("tr", list("abcçdefgğ")), ("es", list("abcdeñáé")))
    }
    out = tmp_path / "b"
    args = ["--multi", *(f"{k}={v}" for k, v in ckpts.items()), "-o", str(out), "--precision", "int8-dynamic"]
    assert export_main(args) == 0
    meta = read_bundle_json(out)
    assert meta["precision"] == "int8-dynamic"
    gate = meta["extra"]["precision_report"]["gate"]
    assert gate["passed"] and set(gate["languages"]) == set(ckpts)
    with Recognizer.from_bundle(out, language="es") as rec:
        assert len(rec.transcribe(default_clips()[:2])) == 2


def test_mms_add_language_adds_that_languages_adapters(mms_ckpt, tmp_path):
    from xlsr_edge.export.multi import add_language, export_multi
    from xlsr_edge.runtime import Recognizer

    bundle = tmp_path / "multi"
    export_multi({"tur": mms_ckpt, "fra": mms_ckpt}, bundle, ExportOptions(verify=False))
    manifest = add_language(bundle, "deu", mms_ckpt)
    assert manifest.parity["languages"]["deu"]["passed"]
    export_bundle(mms_ckpt, tmp_path / "deu", ExportOptions(target_lang="deu", verify=False))
    clips = default_clips()[:2]
    with (
        Recognizer.from_bundle(tmp_path / "deu") as one,
        Recognizer.from_bundle(bundle, language="deu") as shared,
    ):
        assert [t.text for t in shared.transcribe(clips)] == [t.text for t in one.transcribe(clips)]


def test_conformer_relative_positions_beyond_the_precomputed_table(tmp_path):
    """transformers extends the relative table in Python for inputs longer than max_source_positions; the graph
    computes it for the input's length (a traced slice of the stored table would wrap around silently)."""
    ckpt = build_checkpoint(
        tmp_path / "ckpt",
        family="wav2vec2-conformer",
        position_embeddings_type="relative",
        max_source_positions=60,
    )
    export_bundle(ckpt, tmp_path / "b", ExportOptions(verify=False))
    clips = _clips()  # 78 to 168 frames, beyond the 60 of the table (the export traces 50)
    got, lengths = _run(_session(tmp_path / "b"), clips, True)
    for clip, g in zip(clips, got):
        ref = _reference(ckpt, "wav2vec2-conformer", clip)
        assert g.shape == ref.shape and ref.shape[0] > 60
        assert np.abs(g - ref).max() <= 1e-4 * np.abs(ref).max()
