"""Foundation: export-xlsr produces a verified bundle whose graph reproduces transformers exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import transformers

from tests.conftest import read_bundle_json, speech_arrays
from xlsr_edge.cli import export_main, main
from xlsr_edge.constants import SCHEMA_VERSION
from xlsr_edge.errors import ExportError
from xlsr_edge.export import ExportOptions, export_bundle


def _hf(ckpt: Path):
    model = transformers.Wav2Vec2ForCTC.from_pretrained(str(ckpt)).eval()
    processor = transformers.Wav2Vec2Processor.from_pretrained(str(ckpt))
    return model, processor


def _session(bundle: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])


def test_layer_export_matches_transformers_on_padded_speech(tiny_ckpt, tiny_bundle, speech_dir):
    model, processor = _hf(tiny_ckpt)
    audio = speech_arrays(speech_dir, 3)
    assert len({len(a) for a in audio}) == 3
    feats = processor(
        audio, sampling_rate=16000, padding=True, return_tensors="np", return_attention_mask=True
    )
    with torch.no_grad():
        ref = model(
            torch.from_numpy(feats.input_values), attention_mask=torch.from_numpy(feats.attention_mask)
        ).logits
    ref_len = model._get_feat_extract_output_lengths(torch.from_numpy(feats.attention_mask).sum(-1)).numpy()
    sess = _session(tiny_bundle)
    assert [i.name for i in sess.get_inputs()] == ["input_values", "attention_mask"]
    logits, lengths = sess.run(
        None, {"input_values": feats.input_values, "attention_mask": feats.attention_mask.astype(np.int64)}
    )
    np.testing.assert_array_equal(lengths, ref_len)
    ids_onnx, ids_ref = [], []
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(logits[i, :n], ref.numpy()[i, :n], atol=1e-4)
        ids_onnx.append(logits[i, :n].argmax(-1))
        ids_ref.append(ref.numpy()[i, :n].argmax(-1))
    assert processor.batch_decode(ids_onnx) == processor.batch_decode(ids_ref)


def test_group_norm_export_has_no_mask_and_matches_unpadded(tiny_group_ckpt, tiny_group_bundle, speech_dir):
    model, processor = _hf(tiny_group_ckpt)
    sess = _session(tiny_group_bundle)
    assert [i.name for i in sess.get_inputs()] == ["input_values"]
    meta = read_bundle_json(tiny_group_bundle)
    assert meta["uses_attention_mask"] is False
    assert "unpadded" in meta["extra"]["padding"]
    for a in speech_arrays(speech_dir, 3):
        x = processor(a, sampling_rate=16000, return_tensors="np").input_values
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).logits.numpy()
        logits, lengths = sess.run(None, {"input_values": x})
        assert lengths.tolist() == [ref.shape[1]]
        np.testing.assert_allclose(logits, ref, atol=1e-4)


def test_logit_lengths_follow_the_conv_formula(tiny_ckpt, tiny_bundle):
    model, _ = _hf(tiny_ckpt)
    lengths = [400, 401, 719, 720, 721, 1023, 3201, 16000, 16001, 24567]
    mask = np.zeros((len(lengths), max(lengths)), dtype=np.int64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    values = (np.random.default_rng(0).standard_normal(mask.shape) * mask).astype(np.float32)
    _, got = _session(tiny_bundle).run(None, {"input_values": values, "attention_mask": mask})
    expected = model._get_feat_extract_output_lengths(torch.tensor(lengths)).numpy()
    np.testing.assert_array_equal(got, expected)
    assert got[0] == 1  # 400 samples: the shortest audio that yields a frame


def test_positional_conv_weight_norm_is_folded_into_an_initializer(tiny_bundle):
    graph = onnx.load(str(tiny_bundle / "model.onnx")).graph
    inits = {i.name for i in graph.initializer}
    convs = [
        n
        for n in graph.node
        if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)
    ]
    assert convs, "the grouped positional conv is missing"
    for node in convs:
        assert node.input[1] in inits, f"positional conv weight {node.input[1]} is computed in-graph"
    assert not any("weight_g" in n or "original0" in n for n in inits)


def test_bundle_json_records_the_contract(tiny_bundle):
    meta = read_bundle_json(tiny_bundle)
    assert meta["schema_version"] == SCHEMA_VERSION
    assert meta["vocab"][meta["blank_id"]] == "<pad>"
    assert meta["word_delimiter"] == "|" and meta["unk_token"] == "<unk>"
    assert {"ç", "ş", "ğ", "ı", "ö", "ü", "é"} <= set(meta["vocab"])
    assert meta["frame_stride_samples"] == 320 and meta["receptive_field_samples"] == 400
    assert meta["uses_attention_mask"] is True and meta["precision"] == "fp32" and meta["opset"] >= 17
    assert set(meta["versions"]) >= {"torch", "transformers", "onnx", "onnxruntime", "xlsr-edge"}
    assert len(meta["source"]["sha256"]) == 64 and "model.safetensors" in meta["source"]["files"]
    assert set(meta["files"]) == {"model.onnx"}
    parity = meta["parity"]
    assert parity["passed"] and parity["lengths_match"]
    assert len(parity["utterances"]) >= 3
    assert parity["vs_pytorch"]["max_abs_diff"] < 1e-4
    assert parity["batch_vs_single"]["transcripts_equal"]


def test_broken_graph_fails_the_gate_and_leaves_nothing(tiny_ckpt, tmp_path, monkeypatch):
    from xlsr_edge.export import onnx_export, pipeline

    def broken_export(model, info, path, opset):
        facts = onnx_export.export_onnx(model, info, path, opset)
        m = onnx.load(str(path))
        for init in m.graph.initializer:  # corrupt the CTC head's bias
            if init.name.endswith("lm_head.bias"):
                arr = onnx.numpy_helper.to_array(init).copy()
                arr[1] += 5.0
                init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
        onnx.save(m, str(path))
        return facts

    monkeypatch.setattr(pipeline, "export_onnx", broken_export)
    out = tmp_path / "bundle"
    with pytest.raises(ExportError, match="parity gate failed"):
        export_bundle(tiny_ckpt, out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temp folder left behind either


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    return err[0]


def test_vocab_lm_head_mismatch_names_both_numbers(tiny_ckpt, tmp_path, capsys):
    bad = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, bad)
    vocab = json.loads((bad / "vocab.json").read_text(encoding="utf-8"))
    vocab["x̧"] = len(vocab)  # one more token than the head has, not NFC either
    vocab = {k: v for k, v in vocab.items() if k != "x̧"}
    vocab["ʃ"] = len(vocab)
    (bad / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    assert export_main([str(bad), "-o", str(tmp_path / "b")]) == 2
    line = _one_error_line(capsys)
    assert str(len(vocab)) in line and str(len(vocab) - 1) in line
    assert not (tmp_path / "b").exists()


def test_non_nfc_token_is_refused(tiny_ckpt, tmp_path, capsys):
    bad = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, bad)
    vocab = json.loads((bad / "vocab.json").read_text(encoding="utf-8"))
    vocab = {("e\u0301" if k == "é" else k): v for k, v in vocab.items()}
    (bad / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    assert export_main([str(bad), "-o", str(tmp_path / "b")]) == 2
    assert "NFC" in _one_error_line(capsys)


def test_missing_folder_is_a_user_error(tmp_path, capsys):
    assert export_main([str(tmp_path / "nope"), "-o", str(tmp_path / "b")]) == 2
    assert "not found" in _one_error_line(capsys)


def test_pickle_only_checkpoint_needs_allow_pickle(tiny_ckpt, tmp_path, capsys):
    pk = tmp_path / "pickle"
    shutil.copytree(tiny_ckpt, pk)
    model = transformers.Wav2Vec2ForCTC.from_pretrained(str(tiny_ckpt))
    (pk / "model.safetensors").unlink()
    torch.save(model.state_dict(), pk / "pytorch_model.bin")
    capsys.readouterr()
    assert export_main([str(pk), "-o", str(tmp_path / "b")]) == 2
    assert "--allow-pickle" in _one_error_line(capsys)
    assert export_main([str(pk), "-o", str(tmp_path / "b"), "--allow-pickle"]) == 0
    assert read_bundle_json(tmp_path / "b")["parity"]["passed"]


def test_existing_output_needs_overwrite(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert export_main([str(tiny_ckpt), "-o", str(out), "--no-verify"]) == 2
    assert "--overwrite" in _one_error_line(capsys)
    assert (out / "keep.txt").read_text() == "mine"
    # --overwrite replaces only a bundle (or an empty folder), never a folder of someone's files
    assert export_main([str(tiny_ckpt), "-o", str(out), "--no-verify", "--overwrite"]) == 2
    assert "not a bundle" in _one_error_line(capsys)
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert export_main([str(tiny_ckpt), "-o", str(out), "--no-verify"]) == 0
    assert export_main([str(tiny_ckpt), "-o", str(out), "--no-verify", "--overwrite"]) == 0
    assert read_bundle_json(out)["parity"] == {"skipped": "--no-verify"}


def test_opset_below_17_is_refused(tiny_ckpt, tmp_path, capsys):
    assert export_main([str(tiny_ckpt), "-o", str(tmp_path / "b"), "--opset", "13"]) == 2
    assert "opset" in _one_error_line(capsys)


def test_verify_audio_from_user_folder(tiny_ckpt, speech_dir, tmp_path):
    out = tmp_path / "b"
    export_bundle(tiny_ckpt, out, ExportOptions(verify_audio=speech_dir))
    parity = read_bundle_json(out)["parity"]
    assert parity["audio_source"] == str(speech_dir)
    assert any(u["audio"].endswith("es_0.wav") for u in parity["utterances"])


def test_inspect_detects_a_flipped_byte(tiny_bundle, tmp_path, capsys):
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    assert main(["inspect", str(copy)]) == 0
    assert "model.onnx: ok" in capsys.readouterr().out
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    assert main(["inspect", str(copy), "--json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["verification"]["model.onnx"] == "modified"
    assert captured.err.strip() == "error: bundle verification failed: model.onnx modified"
