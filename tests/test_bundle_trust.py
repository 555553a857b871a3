"""Trust (issue 14): a bundle never reaches outside its folder, bundle.json is validated field by field, a
checkpoint's vocabulary and weights are checked where the parity gate cannot see, inspect shows every language.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import read_bundle_json
from xlsr_edge.bundle import BundleManifest, read_manifest, write_manifest
from xlsr_edge.cli import export_main, main
from xlsr_edge.data import default_clips
from xlsr_edge.errors import BundleError
from xlsr_edge.runtime import Recognizer

CLIP = str(min(default_clips(), key=lambda p: p.stat().st_size))
REPO = Path(__file__).resolve().parents[1]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write(bundle: Path, meta: object) -> None:
    (bundle / "bundle.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# -- containment ------------------------------------------------------------------------------------------------


def _plant(bundle: Path, where: str, rel: str, digest: str) -> None:
    """Make bundle.json name `rel` in one of the places the runtime opens files from."""
    meta = read_bundle_json(bundle)
    if where == "graph":
        meta["graph"] = rel
        meta["files"] = {rel: digest}
    elif where == "files":
        meta["files"][rel] = digest
    elif where == "engine":
        meta["extra"]["engine"] = {
            "file": rel,
            "sha256": digest,
            "tensorrt_version": "10.3.0",
            "compute_capability": "8.7",
            "gpu_name": "Orin",
        }
        meta["files"][rel] = digest
    else:  # head or lid of a multi-language bundle
        meta["extra"] = {
            "kind": "multi",
            "languages": {
                "tr": {
                    "vocab": meta["vocab"],
                    "blank_id": 0,
                    "word_delimiter": "|",
                    "unk_token": None,
                    "head": rel if where == "head" else "heads/tr.npz",
                }
            },
        }
        if where == "lid":
            meta["extra"]["lid"] = {"file": rel, "policy": "all", "threshold": 0.5}
        meta["files"][rel] = digest
    _write(bundle, meta)


WHERE = ["graph", "files", "engine", "head", "lid"]
FORMS = ["dotdot", "absolute", "symlink", "symlinked-folder"]


def _outside_name(bundle: Path, outside: Path, form: str) -> str:
    """The name bundle.json uses to reach `outside` (which may or may not exist)."""
    if form == "dotdot":
        return os.path.relpath(outside, bundle)
    if form == "absolute":
        return str(outside)
    if form == "symlink":
        (bundle / "link.bin").symlink_to(outside)
        return "link.bin"
    (bundle / "sub").symlink_to(outside.parent, target_is_directory=True)
    return f"sub/{outside.name}"


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("where", WHERE)
def test_inspect_cannot_probe_files_outside_the_bundle(tiny_bundle, tmp_path, capsys, where, form):
    """The answer for an existing outside file and a missing one is the same refusal: nothing leaks."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "present.bin").write_bytes(b"exists")
    answers = []
    for name in ("present.bin", "absent.bin"):
        bundle = _copy(tiny_bundle, tmp_path / f"b-{name}")
        rel = _outside_name(bundle, secret / name, form)
        _plant(bundle, where, rel, _sha(secret / "present.bin"))
        assert main(["inspect", str(bundle)]) == 2
        line = _one_error(capsys)
        assert "plain relative path inside the bundle" in line or "leads outside the bundle" in line
        answers.append(line.replace(str(tmp_path / f"b-{name}"), "B").replace(name, "NAME"))
    assert answers[0] == answers[1]


@pytest.mark.parametrize("form", ["dotdot", "absolute", "symlink"])
def test_runtime_never_loads_a_graph_from_outside(tiny_bundle, tmp_path, form):
    """A correctly hashed graph outside the folder used to load; now it is refused (also with verify off)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(tiny_bundle / "model.onnx", elsewhere / "model.onnx")
    bundle = _copy(tiny_bundle, tmp_path / "b")
    (bundle / "model.onnx").unlink()
    rel = _outside_name(bundle, elsewhere / "model.onnx", form)
    _plant(bundle, "graph", rel, _sha(elsewhere / "model.onnx"))
    for verify in (True, False):
        with pytest.raises(BundleError, match="(leads outside|plain relative path inside) the bundle"):
            Recognizer.from_bundle(bundle, verify=verify)


def _run_py(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run python code in a child: opening a FIFO blocks, so a child that opens one times out."""
    try:
        return subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the child blocked: it opened the FIFO outside the bundle")


@pytest.mark.parametrize("where", ["graph", "engine", "head"])
def test_outside_fifo_is_never_opened(tiny_bundle, tmp_path, where):
    """A FIFO blocks whoever opens it: the child returning at all proves the refusal came before any open."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    bundle = _copy(tiny_bundle, tmp_path / "b")
    (bundle / "link.bin").symlink_to(fifo)
    _plant(bundle, where, "link.bin", "0" * 64)
    if where == "engine":
        code = (
            "from xlsr_edge.bundle import read_manifest\n"
            "from xlsr_edge.runtime.tensorrt import DeviceInfo, TensorRTRunner\n"
            f"b = {str(bundle)!r}\n"
            "TensorRTRunner(b, read_manifest(b), device=DeviceInfo('10.3.0', '8.7', 'Orin')).activate()\n"
        )
    else:
        code = f"from xlsr_edge.runtime import Recognizer\nRecognizer.from_bundle({str(bundle)!r}, verify=False)\n"
    done = _run_py(code)
    assert done.returncode != 0 and "BundleError" in done.stderr and "outside the bundle" in done.stderr


def test_hashing_refuses_a_symlink_out_of_the_folder(tiny_bundle, tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"not yours")
    bundle = _copy(tiny_bundle, tmp_path / "b")
    (bundle / "stolen.bin").symlink_to(outside)
    with pytest.raises(BundleError, match="outside the bundle"):
        write_manifest(bundle, read_manifest(bundle))
    # a link that stays inside is fine and hashed like the file it names
    (bundle / "stolen.bin").unlink()
    (bundle / "alias.onnx").symlink_to("model.onnx")
    write_manifest(bundle, read_manifest(bundle))
    files = read_bundle_json(bundle)["files"]
    assert files["alias.onnx"] == files["model.onnx"]


def test_bundle_json_itself_may_not_be_a_link_outside(tiny_bundle, tmp_path, capsys):
    real = tmp_path / "real.json"
    shutil.copy(tiny_bundle / "bundle.json", real)
    bundle = _copy(tiny_bundle, tmp_path / "b")
    (bundle / "bundle.json").unlink()
    (bundle / "bundle.json").symlink_to(real)
    assert main(["inspect", str(bundle)]) == 2
    assert "outside the bundle" in _one_error(capsys)


@pytest.mark.parametrize(
    "rel", ["a\\..\\..\\x", "C:/x", "model.onnx\x00", "./model.onnx", "heads//tr.npz", "heads/..", ""]
)
def test_odd_names_are_refused(tiny_bundle, tmp_path, capsys, rel):
    bundle = _copy(tiny_bundle, tmp_path / "b")
    meta = read_bundle_json(bundle)
    meta["graph"] = rel
    _write(bundle, meta)
    assert main(["inspect", str(bundle)]) == 2
    assert '"graph" must be a plain relative path inside the bundle' in _one_error(capsys)


# -- one validating loader --------------------------------------------------------------------------------------


def _set(key, value):
    def f(meta):
        meta[key] = value
        return meta

    return f


def _drop(key):
    def f(meta):
        del meta[key]
        return meta

    return f


BAD_FIELDS = [
    (lambda m: list(m), "must hold a JSON object, found a list of"),
    (lambda m: "bundle", "must hold a JSON object, found the string"),
    (_set("files", None), '"files" must be an object of path -> sha256, found null'),
    (_set("files", {"model.onnx": "abc"}), '"files.model.onnx" must be a sha256'),
    (
        _set("sample_rate", "16000"),
        '"sample_rate" must be an integer between 1000 and 1000000, found the string "16000"',
    ),
    (
        _set("sample_rate", 10**40),
        '"sample_rate" must be an integer between 1000 and 1000000, found a 41-digit integer',
    ),
    (
        _set("sample_rate", float("nan")),
        '"sample_rate" must be an integer between 1000 and 1000000, found NaN',
    ),
    (_set("sample_rate", 16000.0), "found the number 16000.0"),
    (_set("vocab", "abc"), '"vocab" must be a non-empty list of strings, found the string "abc"'),
    (_set("vocab", []), '"vocab" must be a non-empty list of strings, found an empty list'),
    (_set("vocab", ["<pad>", 7]), '"vocab[1]" must be a string, found the integer 7'),
    (_set("blank_id", 36), '"blank_id" must be an integer between 0 and 35, found the integer 36'),
    (_set("blank_id", -1), '"blank_id" must be an integer between 0 and 35, found the integer -1'),
    (_set("blank_id", True), '"blank_id" must be an integer between 0 and 35, found true'),
    (
        _set("conv_kernel", [10, 3, 3]),
        '"conv_kernel" and "conv_stride" must have the same length, found 3 and 7',
    ),
    (_set("conv_stride", [5, 2, 2, 2, 2, 2, 0]), '"conv_stride[6]" must be an integer between 1 and 4096'),
    (_set("conv_stride", [4096] * 7), '"conv_kernel" and "conv_stride" give frames of'),
    (_set("do_normalize", "true"), '"do_normalize" must be true or false, found the string "true"'),
    (_set("uses_attention_mask", 1), '"uses_attention_mask" must be true or false, found the integer 1'),
    (_set("feat_extract_norm", "batch"), '"feat_extract_norm" must be "group" or "layer"'),
    (_set("word_delimiter", None), '"word_delimiter" must be a string, found null'),
    (_set("graph", 5), '"graph" must be a plain relative path inside the bundle'),
    (_set("extra", []), '"extra" must be an object, found an empty list'),
    (_set("parity", "passed"), '"parity" must be an object or null, found the string "passed"'),
    (_set("source", 3), '"source" must be an object, found the integer 3'),
    (_set("opset", "17"), '"opset" must be an integer between 1 and 1000'),
    (_set("schema_version", "1"), '"schema_version" must be an integer'),
    (_set("schema_version", 99), "schema_version 99 is newer than this xlsr-edge understands"),
    (_drop("vocab"), '"vocab" is missing'),
    (_drop("sample_rate"), '"sample_rate" is missing'),
    (_drop("schema_version"), '"schema_version" is missing'),
    (_set("extra", {"kind": "multi"}), '"extra.languages" is missing'),
    (
        _set("extra", {"kind": "multi", "languages": {"tr": {"vocab": ["a"], "blank_id": 1}}}),
        '"extra.languages.tr.blank_id"',
    ),
    (
        _set("extra", {"engine": {"file": "engine.plan", "sha256": None}}),
        '"extra.engine.sha256" must be a sha256',
    ),
    (
        _set("extra", {"engine": {"file": "e", "sha256": "0" * 64, "profile": {"shapes": {"max": [4]}}}}),
        '"extra.engine.profile.shapes.max"',
    ),
]


@pytest.mark.parametrize("mutate,expected", BAD_FIELDS, ids=[e[:40] for _, e in BAD_FIELDS])
def test_bad_bundle_json_names_the_field_type_and_value(tiny_bundle, tmp_path, capsys, mutate, expected):
    bundle = _copy(tiny_bundle, tmp_path / "b")
    _write(bundle, mutate(read_bundle_json(bundle)))
    assert main(["inspect", str(bundle)]) == 2
    line = _one_error(capsys)
    assert expected in line
    with pytest.raises(BundleError):
        read_manifest(bundle)


def test_vocabulary_that_does_not_fit_the_graph_names_both_sizes(tiny_bundle, tmp_path, capsys):
    bundle = _copy(tiny_bundle, tmp_path / "b")
    meta = read_bundle_json(bundle)
    meta["vocab"] = meta["vocab"][:30]
    _write(bundle, meta)
    assert main(["transcribe", str(bundle), CLIP]) == 2
    assert "bundle vocabulary has 30 tokens but the graph emits 36 logits per frame" in _one_error(capsys)


def test_greedy_decoder_names_both_sizes():
    from xlsr_edge.decoders import GreedyOptions, Vocabulary, make_decoder

    decoder = make_decoder(Vocabulary(("<pad>", "a", "|"), 0), GreedyOptions())
    with pytest.raises(ValueError, match="vocabulary has 3 tokens but the logits have 5 classes per frame"):
        decoder.decode(np.zeros((4, 5), dtype=np.float32))


# -- fuzz: whatever bundle.json says, inspect and transcribe answer cleanly ---------------------------------------

VALUES = [None, True, False, 0, -1, 7, 10**30, 1.5, float("nan"), float("inf"), "", "x", "16000", "../x",
          "/etc/passwd", [], [1, 2], ["a"], {}, {"a": {"b": [1]}}]  # fmt: skip
FIELDS = [
    "schema_version", "precision", "opset", "graph", "vocab", "blank_id", "word_delimiter", "unk_token",
    "sample_rate", "do_normalize", "feat_extract_norm", "conv_kernel", "conv_stride", "uses_attention_mask",
    "source", "versions", "files", "parity", "extra",
]  # fmt: skip
NESTED = [
    ("files", "model.onnx"), ("parity", "vs_pytorch"), ("parity", "passed"), ("extra", "engine"),
    ("extra", "kind"), ("extra", "precision_report"), ("extra", "languages"), ("extra", "lid"),
]  # fmt: skip


def _mutations(base: dict) -> list[tuple[str, object]]:
    cases: list[tuple[str, object]] = [("whole", v) for v in (None, [], "x", 3)]
    for key in FIELDS:
        cases.append((f"del {key}", _drop(key)(copy.deepcopy(base))))
        for v in VALUES:
            cases.append((f"{key}={v!r}", _set(key, v)(copy.deepcopy(base))))
    rng = random.Random(14)
    for seed in range(150):
        meta = copy.deepcopy(base)
        for _ in range(rng.randint(1, 3)):
            kind = rng.random()
            if kind < 0.4:
                outer, inner = rng.choice(NESTED)
                if not isinstance(meta.get(outer), dict):
                    meta[outer] = {}
                meta[outer][inner] = rng.choice(VALUES)
            elif kind < 0.7:
                key = rng.choice(["vocab", "conv_kernel", "conv_stride"])
                if isinstance(meta.get(key), list) and meta[key]:
                    meta[key][rng.randrange(len(meta[key]))] = rng.choice(VALUES + [1, 2, 400])
            elif kind < 0.85:
                meta["extra"] = {
                    "kind": "multi",
                    "languages": {"tr": {k: rng.choice([base[k], rng.choice(VALUES)]) for k in
                                         ("vocab", "blank_id", "word_delimiter", "unk_token")}
                                  | {"head": rng.choice(["heads/tr.npz", "../h.npz", 3])}},
                }  # fmt: skip
            else:
                meta[rng.choice(FIELDS)] = rng.choice(VALUES)
        cases.append((f"seed {seed}", meta))
    return cases


def _clean(code: int, err: str) -> None:
    assert "Traceback" not in err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
    else:
        assert code in (0, 1) and "error:" not in err, err


def test_fuzzed_bundle_json_always_gives_one_error_line_or_works(tiny_bundle, tmp_path, capsys):
    bundle = _copy(tiny_bundle, tmp_path / "b")
    base = read_bundle_json(tiny_bundle)
    cases = _mutations(base)
    assert len(cases) > 400
    outcomes = {0: 0, 1: 0, 2: 0}
    for name, meta in cases:
        _write(bundle, meta)
        for argv in (["inspect", str(bundle)], ["transcribe", str(bundle), CLIP]):
            try:
                code = main(argv)
            except BaseException as exc:  # a traceback: name the case
                pytest.fail(f"{name}: {argv[0]} raised {type(exc).__name__}: {exc}")
            captured = capsys.readouterr()
            try:
                _clean(code, captured.err)
            except AssertionError:
                pytest.fail(f"{name}: {argv[0]} exit {code}, stderr {captured.err!r}")
            outcomes[code] += 1
    assert outcomes[2] > 300 and outcomes[0] > 10  # mostly refusals, some harmless edits still run


@pytest.mark.parametrize(
    "mutate",
    [lambda m: [m], _set("files", None), _set("sample_rate", "16000"), _set("graph", "../../etc/passwd")],
)
def test_fuzz_cases_in_a_real_process(tiny_bundle, tmp_path, mutate):
    bundle = _copy(tiny_bundle, tmp_path / "b")
    _write(bundle, mutate(read_bundle_json(bundle)))
    for argv in (["inspect", str(bundle)], ["transcribe", str(bundle), CLIP]):
        done = subprocess.run(
            [sys.executable, "-m", "xlsr_edge", *argv], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr


# -- checkpoint checks the parity gate cannot make ---------------------------------------------------------------


def _ckpt_variant(tiny_ckpt: Path, tmp_path: Path, edit) -> Path:
    ckpt = _copy(tiny_ckpt, tmp_path / "ckpt")
    edit(ckpt)
    return ckpt


def _edit_json(name: str, fn):
    def edit(ckpt: Path) -> None:
        path = ckpt / name
        path.write_text(json.dumps(fn(json.loads(path.read_text(encoding="utf-8"))), ensure_ascii=False))

    return edit


def _truncate(ckpt: Path) -> None:
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])


def _garbage(ckpt: Path) -> None:
    (ckpt / "model.safetensors").write_bytes(b"<html>404 not found</html>" * 20)


def _index_naming(shard: str, move_to: str | None = None):
    def edit(ckpt: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(ckpt / "model.safetensors"), "np") as f:
            names = list(f.keys())
        if move_to is not None:
            (ckpt / "model.safetensors").rename(ckpt / move_to)
        else:
            (ckpt / "model.safetensors").unlink()
        index = {"metadata": {}, "weight_map": {n: shard for n in names}}
        (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))

    return edit


def _index_not_json(ckpt: Path) -> None:
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors.index.json").write_text("{ not json")


CHECKPOINT_CASES = {
    # "q" shares "a"'s id: the tokenizer keeps one of them, the gate compares through the same wrong table
    "duplicate id": (_edit_json("vocab.json", lambda v: {**v, "q": v["a"]}), "vocab.json", "share id"),
    "negative id": (
        _edit_json("vocab.json", lambda v: {**v, "q": -1}),
        "vocab.json",
        "must be exactly 0..36",
    ),
    "gap filled by an added token": (
        _edit_json("vocab.json", lambda v: {k: i for k, i in v.items() if k != "<unk>"}),
        "vocab.json",
        "missing [3]",
    ),
    "string id": (_edit_json("vocab.json", lambda v: {**v, "a": "5"}), "vocab.json", "ids must be integers"),
    "vocab is a list": (_edit_json("vocab.json", lambda v: list(v)), "vocab.json", "must hold a JSON object"),
    "config is a list": (_edit_json("config.json", lambda c: [c]), "config.json", "must hold a JSON object"),
    "config vocab_size text": (
        _edit_json("config.json", lambda c: {**c, "vocab_size": "36"}),
        "config.json",
        '"vocab_size" must be a positive integer',
    ),
    "truncated safetensors": (_truncate, "model.safetensors", "truncated"),
    "garbage safetensors": (_garbage, "model.safetensors", "not a valid safetensors file"),
    "index names a missing shard": (
        _index_naming("model-00001-of-00002.safetensors"),
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
    ),
    "index names a shard outside": (
        _index_naming("../outside.safetensors", move_to="../outside.safetensors"),
        "model.safetensors.index.json",
        "inside the checkpoint folder",
    ),
    "index names an absolute shard": (
        _index_naming(str(Path("/tmp") / "x.safetensors")),
        "model.safetensors.index.json",
        "inside the checkpoint folder",
    ),
    "index is not json": (_index_not_json, "model.safetensors.index.json", "cannot read"),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_bad_checkpoint_is_one_error_line_naming_the_file(tiny_ckpt, tmp_path, capsys, case):
    edit, file_name, words = CHECKPOINT_CASES[case]
    ckpt = _ckpt_variant(tiny_ckpt, tmp_path, edit)
    out = tmp_path / "bundle"
    assert export_main([str(ckpt), "-o", str(out), "--no-verify"]) == 2
    line = _one_error(capsys)
    assert file_name in line and words in line
    assert not out.exists()


# -- inspect of multi-language bundles, and which graph each figure belongs to ----------------------------------


@pytest.fixture(scope="module")
def two_language_bundle(tmp_path_factory) -> Path:
    from xlsr_edge.export.multi import export_multi
    from xlsr_edge.export.tiny import build_checkpoint

    root = tmp_path_factory.mktemp("two")
    ckpts = {
        "tr": build_checkpoint(root / "tr", chars=list("abcçdefgğhıijklmnoöprsştuüvyz"), seed=0),
        "id": build_checkpoint(root / "id", chars=list("abcdefghijklmnoprstuwy"), seed=0),
    }
    out = root / "bundle"
    export_multi(ckpts, out)
    return out


def test_inspect_shows_each_language_with_its_parity_and_source(two_language_bundle, capsys):
    meta = read_bundle_json(two_language_bundle)
    assert main(["inspect", str(two_language_bundle)]) == 0
    out = capsys.readouterr().out
    assert "languages     2: tr, id" in out
    for lang in ("tr", "id"):
        entry = meta["extra"]["languages"][lang]
        report = meta["parity"]["languages"][lang]["vs_pytorch"]
        block = out[out.index(f"language {lang}") :]
        assert f"{len(entry['vocab'])} tokens" in block.splitlines()[0]
        parity = next(ln for ln in block.splitlines() if ln.startswith("  parity"))
        assert f"passed ({lang} head on the backbone vs PyTorch)" in parity
        assert f"{report['max_abs_diff']:.2e}" in parity
        source = next(ln for ln in block.splitlines() if ln.startswith("  source"))
        assert entry["source"]["path"] in source and entry["source"]["sha256"][:16] in source
    assert "language ID   none (pass --language)" in out
    assert "source        None" not in out  # the single-bundle line made no sense for several sources


def test_head_that_does_not_fit_its_vocabulary_is_refused(two_language_bundle, tmp_path):
    bundle = _copy(two_language_bundle, tmp_path / "b")
    meta = read_bundle_json(bundle)
    meta["extra"]["languages"]["tr"]["vocab"] = meta["extra"]["languages"]["tr"]["vocab"][:-2]
    _write(bundle, meta)
    n = len(meta["extra"]["languages"]["tr"]["vocab"])
    with pytest.raises(
        BundleError, match=f"the tr head emits {n + 2} logits per frame but its vocabulary has {n}"
    ):
        Recognizer.from_bundle(bundle, language="tr")


REPORT = {
    "precision": "int8",
    "method": {"method": "static Q/DQ"},
    "ops": {"quantized": {"MatMul": 8}, "float32": {"Conv": 8}},
    "gate": {
        "passed": True,
        "fp32": {"cer": 0.10, "wer": 0.20},
        "candidate": {"cer": 0.11, "wer": 0.21},
        "cer_delta_points": 1.0,
        "max_cer_delta": 2.0,
        "argmax_agreement": 0.97,
        "transcripts_changed": 1,
        "set": {"utterances": 4, "seconds": 5.0, "sha256": "f" * 64},
    },
}


def _converted(tiny_bundle: Path, tmp_path: Path) -> Path:
    bundle = _copy(tiny_bundle, tmp_path / "int8")
    meta = read_bundle_json(bundle)
    meta["precision"] = "int8"
    meta["extra"]["precision_report"] = REPORT
    _write(bundle, meta)
    return bundle


def test_inspect_says_which_graphs_each_gate_compares(tiny_bundle, tmp_path, capsys):
    bundle = _converted(tiny_bundle, tmp_path)
    assert main(["inspect", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "parity        passed (fp32 graph vs PyTorch, before conversion to int8): max |diff|" in out
    assert "gate          passed: CER fp32 10.00% -> int8 11.00%" in out
    assert "int8 graph vs the fp32 graph: frame argmax agreement 0.9700" in out


def test_export_summary_says_which_graphs_each_gate_compares(tiny_bundle, tmp_path, capsys, monkeypatch):
    import xlsr_edge.export as export_pkg

    manifest = read_manifest(_converted(tiny_bundle, tmp_path))
    monkeypatch.setattr(export_pkg, "export_bundle", lambda *a, **k: manifest)
    assert export_main([str(tmp_path), "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "parity gate (fp32 graph vs PyTorch, before conversion to int8) passed" in out
    assert "int8 graph vs the fp32 graph" in out and "CER fp32 10.00% -> int8 11.00%" in out


def test_malformed_precision_report_is_one_error_line(tiny_bundle, tmp_path, capsys):
    bundle = _converted(tiny_bundle, tmp_path)
    meta = read_bundle_json(bundle)
    meta["extra"]["precision_report"] = {"gate": {"cer_delta_points": 1, "fp32": 3}}
    _write(bundle, meta)
    assert main(["inspect", str(bundle)]) == 2
    assert '"extra.precision_report" is malformed' in _one_error(capsys)


def test_manifest_round_trips_through_the_validating_loader(tiny_bundle):
    manifest = read_manifest(tiny_bundle)
    assert BundleManifest.from_json(manifest.to_json()).to_json() == manifest.to_json()
