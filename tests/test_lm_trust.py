"""The LM commands as a careful user meets them (issues 23 and 27): `lm build` never replaces a file it did not
write, finds KenLM's tools on a pip install, counts words right; a damaged `LM.tuned.json` is a warning, never a
traceback; `lm tune` takes negative ranges, says when a best weight sits on the edge of its range, prints stage
lines without a terminal, and refuses an unwritable sidecar before tuning."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from xlsr_edge.cli import build_parser, main
from xlsr_edge.decoders import BeamOptions, Vocabulary
from xlsr_edge.errors import XlsrEdgeError
from xlsr_edge.lm import build as lm_build
from xlsr_edge.lm import weights
from xlsr_edge.lm.build import ENV_KENLM_BIN, build_lm, build_record_path, find_kenlm_binaries
from xlsr_edge.lm.weights import tuned_path_for, with_tuned_weights

CORPUS = ["bu kitap çok güzel", "o kitap masada", "Bu kitap, bu gün!", "", "kitap kitap"]
TOKENS = (
    "<pad>", "<s>", "</s>", "<unk>", "|", "a", "b", "ç", "e", "g", "i", "k", "l", "m", "n", "o", "p", "r", "s",
    "t", "u", "ü", "z",
)  # fmt: skip
# A valid bigram ARPA model of a few words (what the kenlm module loads; no KenLM tools needed).
ARPA = (
    "\\data\\\nngram 1=6\nngram 2=3\n\n\\1-grams:\n-1.0\t<unk>\t0\n-1.0\t<s>\t-0.3\n-0.7\t</s>\t0\n"
    "-0.5\tbu\t-0.3\n-0.5\tkitap\t-0.3\n-0.9\tgüzel\t-0.3\n\n\\2-grams:\n-0.2\t<s> bu\n-0.2\tbu kitap\n"
    "-0.3\tkitap güzel\n\n\\end\\\n"
)


def write_tool(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture()
def tools(tmp_path, monkeypatch) -> Path:
    """Fake lmplz (a one-line 'ARPA file': enough for .arpa outputs) and build_binary, via the environment."""
    folder = tmp_path / "tools"
    folder.mkdir()
    write_tool(folder, "lmplz", "cat >/dev/null; printf '\\\\data\\\\\\n'")
    write_tool(folder, "build_binary", 'cp "$1" "$2"')
    monkeypatch.setenv(ENV_KENLM_BIN, str(folder))
    return folder


@pytest.fixture()
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    return path


def run_cli(capfd, *argv) -> tuple[int, str, list[str]]:
    rc = main([str(a) for a in argv])
    err = capfd.readouterr().err
    return rc, err, [line for line in err.splitlines() if line.strip()]


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# -- lm build never replaces what it did not write (23.1) ----------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_users_own_lm_and_word_list_survive_lm_build(tools, corpus, tmp_path, capfd, overwrite):
    out = tmp_path / "out"
    out.mkdir()
    (out / "kenlm.bin").write_bytes(b"mmap lm a KenLM model built elsewhere")
    (out / "mine.unigrams.txt").write_text("hand made words\n", encoding="utf-8")
    before = files(out)
    flag = ["--overwrite"] if overwrite else []
    for target, named in ((out / "kenlm.bin", "kenlm.bin"), (out / "mine.arpa", "mine.unigrams.txt")):
        rc, err, lines = run_cli(capfd, "lm", "build", corpus, "-o", target, *flag)
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
        assert named in lines[0] and "not written by `xlsr-edge lm build`" in lines[0]
        assert "Traceback" not in err
    assert files(out) == before
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # no temp folder, no record, no word list


def test_lm_build_replaces_its_own_outputs_only_with_overwrite(tools, corpus, tmp_path, capfd):
    out = tmp_path / "lm.arpa"
    rc, err, _ = run_cli(capfd, "lm", "build", corpus, "-o", out)
    assert rc == 0, err
    record = json.loads(build_record_path(out).read_text(encoding="utf-8"))
    assert record["tool"] == "xlsr-edge lm build" and set(record["files"]) == {"lm.arpa", "lm.unigrams.txt"}
    built = files(tmp_path)

    rc, err, lines = run_cli(capfd, "lm", "build", corpus, "-o", out)
    assert rc == 2 and len(lines) == 1 and "--overwrite" in lines[0], err
    assert files(tmp_path) == built
    rc, err, _ = run_cli(capfd, "lm", "build", corpus, "-o", out, "--overwrite")
    assert rc == 0, err
    assert files(tmp_path)["lm.arpa"] == built["lm.arpa"]  # same corpus, same model

    # the user edits the LM by hand: it is no longer what lm build wrote, so --overwrite keeps it too
    with open(out, "ab") as handle:
        handle.write(b"% edited\n")
    edited = files(tmp_path)
    rc, err, lines = run_cli(capfd, "lm", "build", corpus, "-o", out, "--overwrite")
    assert rc == 2 and len(lines) == 1 and "not written by" in lines[0], err
    assert files(tmp_path) == edited


def test_a_record_file_lm_build_did_not_write_is_refused(tools, corpus, tmp_path, capfd):
    (tmp_path / "lm.build.json").write_text('{"my": "notes"}', encoding="utf-8")
    rc, err, lines = run_cli(capfd, "lm", "build", corpus, "-o", tmp_path / "lm.arpa")
    assert rc == 2 and len(lines) == 1 and "lm.build.json" in lines[0], err
    assert not (tmp_path / "lm.arpa").exists()
    assert (tmp_path / "lm.build.json").read_text(encoding="utf-8") == '{"my": "notes"}'


def test_a_replacement_interrupted_after_its_record_keeps_the_old_files_recognisable(
    tools, corpus, tmp_path, monkeypatch
):
    """The record goes in first and lists the old and the new versions: whichever files a kill leaves behind,
    the next build recognises them as its own."""
    out = tmp_path / "lm.bin"
    build_lm(corpus, out)
    old = files(tmp_path)
    other = tmp_path / "other.txt"
    other.write_text("ganz andere wörter\n", encoding="utf-8")

    def killed(pairs):  # after the new record, before the word list and the LM
        raise KeyboardInterrupt

    monkeypatch.setattr(lm_build, "install_files", killed)
    with pytest.raises(KeyboardInterrupt):
        build_lm(other, out, overwrite=True)
    assert files(tmp_path)["lm.build.json"] != old["lm.build.json"]
    assert files(tmp_path)["lm.unigrams.txt"] == old["lm.unigrams.txt"]
    monkeypatch.undo()
    monkeypatch.setenv(ENV_KENLM_BIN, str(tools))
    build_lm(other, out, overwrite=True)  # the old word list is still known as lm build's own
    assert "wörter" in (tmp_path / "lm.unigrams.txt").read_text(encoding="utf-8")


def test_a_full_disk_is_one_error_line_and_the_old_lm_stays(tools, corpus, tmp_path, monkeypatch, capfd):
    import errno

    out = tmp_path / "lm.arpa"
    build_lm(corpus, out)
    before = files(tmp_path)

    def full(pairs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lm_build, "install_files", full)
    rc, err, lines = run_cli(capfd, "lm", "build", corpus, "-o", out, "--overwrite")
    errors = [line for line in lines if not line.startswith("lm build [")]  # progress lines come first
    assert rc == 2 and errors == [f"error: lm build: cannot write {out}: No space left on device"], err
    assert {k: v for k, v in files(tmp_path).items() if k != "lm.build.json"} == {
        k: v for k, v in before.items() if k != "lm.build.json"
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before) + ["tools"]  # no temp folder left


# -- counts and tools (27.10, 27.3) --------------------------------------------------------------------------------


def test_lm_build_reports_running_and_distinct_words(tools, corpus, tmp_path, capfd):
    rc, err, _ = run_cli(capfd, "lm", "build", corpus, "-o", tmp_path / "lm.arpa")
    tokens = sum(len(line.split()) for line in CORPUS)
    distinct = {"bu", "kitap", "çok", "güzel", "o", "masada", "gün"}
    assert rc == 0 and f"4 lines, {tokens} words ({len(distinct)} distinct)" in err, err


def test_kenlm_bin_flag_wins_and_is_checked(tools, corpus, tmp_path, monkeypatch, capfd):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(ENV_KENLM_BIN, str(empty))  # wrong, but --kenlm-bin comes first
    rc, err, _ = run_cli(capfd, "lm", "build", corpus, "-o", tmp_path / "lm.arpa", "--kenlm-bin", tools)
    assert rc == 0, err
    rc, err, lines = run_cli(capfd, "lm", "build", corpus, "-o", tmp_path / "b.arpa", "--kenlm-bin", empty)
    assert rc == 2 and len(lines) == 1 and f"--kenlm-bin {empty} does not hold" in lines[0], err


def test_a_pip_install_is_told_how_to_get_kenlm_and_never_searched(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_KENLM_BIN, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(lm_build, "checkout_kenlm_bin_dir", lambda: None)
    with pytest.raises(XlsrEdgeError) as info:
        find_kenlm_binaries()
    message = str(info.value)
    assert "scripts/build_kenlm.sh" in message and "--kenlm-bin" in message and ENV_KENLM_BIN in message
    assert "make kenlm" not in message and "site-packages" not in message


def test_checkout_tools_are_only_looked_for_in_a_source_checkout(tmp_path, monkeypatch):
    assert (
        lm_build.checkout_kenlm_bin_dir() == Path(__file__).resolve().parents[1] / ".tools" / "kenlm" / "bin"
    )
    installed = tmp_path / "lib" / "python3.11" / "site-packages" / "xlsr_edge" / "lm" / "build.py"
    installed.parent.mkdir(parents=True)
    monkeypatch.setattr(lm_build, "__file__", str(installed))
    assert lm_build.checkout_kenlm_bin_dir() is None


# -- a damaged tuned sidecar is a warning in every command (23.9, 23.13) -----------------------------------------


@pytest.fixture()
def lm(tmp_path) -> Path:
    path = tmp_path / "lm.arpa"
    path.write_text(ARPA, encoding="utf-8")
    return path


def sidecar_with(lm: Path, **fields) -> str:
    from xlsr_edge.bundle import sha256_file

    data = {"schema": 1, "lm": lm.name, "lm_sha256": sha256_file(lm), "alpha": 0.5, "beta": 1.0}
    data |= {"unk_score_offset": -5.0, **fields}
    return json.dumps(data)


BAD_SIDECARS = {
    "401 digits": lambda lm: sidecar_with(lm).replace('"alpha": 0.5', '"alpha": 1' + "0" * 400),
    "50000 levels": lambda lm: "[" * 50_000 + "]" * 50_000,
    "alpha 1e308": lambda lm: sidecar_with(lm, alpha=1e308),
    "beta 1e6": lambda lm: sidecar_with(lm, beta=1e6),
    "offset 5": lambda lm: sidecar_with(lm, unk_score_offset=5.0),
    "NaN": lambda lm: sidecar_with(lm).replace('"beta": 1.0', '"beta": NaN'),
    "1e400": lambda lm: sidecar_with(lm).replace('"beta": 1.0', '"beta": 1e400'),
    "2 MB": lambda lm: sidecar_with(lm, padding="x" * 2_000_000),
    "not an object": lambda lm: "[1, 2, 3]",
    "not UTF-8": lambda lm: "\udcff",
}


@pytest.mark.parametrize("case", list(BAD_SIDECARS))
def test_a_damaged_sidecar_is_ignored_with_one_warning(lm, case, caplog):
    text = BAD_SIDECARS[case](lm)
    tuned_path_for(lm).write_bytes(text.encode("utf-8", "surrogateescape"))
    with caplog.at_level(logging.WARNING, logger="xlsr_edge"):
        options = with_tuned_weights(BeamOptions(lm_path=str(lm)))
        with_tuned_weights(BeamOptions(lm_path=str(lm)))  # once per sidecar and process
    assert options.tuned is None
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith(f"warning: ignoring {tuned_path_for(lm)}"), said


def test_a_sane_sidecar_is_used(lm):
    tuned_path_for(lm).write_text(sidecar_with(lm, alpha=2.0), encoding="utf-8")
    options = with_tuned_weights(BeamOptions(lm_path=str(lm)))
    assert options.tuned is not None and (options.tuned.alpha, options.tuned.beta) == (2.0, 1.0)


@pytest.mark.parametrize("case", ["401 digits", "50000 levels", "alpha 1e308"])
def test_every_command_with_lm_takes_a_damaged_sidecar(lm, case, tiny_bundle, capfd):
    pytest.importorskip("pyctcdecode")
    pytest.importorskip("kenlm")
    from xlsr_edge.commands.common import decoder_options
    from xlsr_edge.data import default_clips

    tuned_path_for(lm).write_text(BAD_SIDECARS[case](lm), encoding="utf-8")
    parser = build_parser()
    for argv in (["transcribe", "b", "a.wav"], ["eval", "b", "m.jsonl"], ["stream", "b", "-"]):
        assert decoder_options(parser.parse_args([*argv, "--lm", str(lm)])).tuned is None
    for argv in (
        ["transcribe", tiny_bundle, default_clips()[0]],
        ["stream", tiny_bundle, default_clips()[0]],
    ):
        weights._TUNED_CACHE.clear()  # a new process: the warning comes again
        rc, err, lines = run_cli(capfd, *argv, "--lm", lm, "--beam-width", "4")
        assert rc == 0 and "Traceback" not in err, err
        assert not [line for line in lines if line.startswith("error")], err
        assert len([line for line in lines if "ignoring" in line]) == 1, err


# -- lm tune (27.4, 27.8, 23.9) -------------------------------------------------------------------------------------


def test_lm_tune_takes_negative_ranges_without_equals():
    from xlsr_edge.measure.lm_tune import parse_range

    args = build_parser().parse_args(
        ["lm", "tune", "b", "m.jsonl", "--lm", "x.bin", "--beta", "-1,0", "--unk-offset", "-10:0:5"]
    )
    assert parse_range(args.beta, "--beta") == (-1.0, 0.0)
    assert parse_range(args.unk_offset, "--unk-offset") == (-10.0, -5.0, 0.0)
    args = build_parser().parse_args(["lm", "tune", "b", "m.jsonl", "--lm", "x.bin", "--alpha", "-.5"])
    assert args.alpha == "-.5"


def test_lm_tune_refuses_weights_a_sidecar_may_not_hold():
    from xlsr_edge.measure.lm_tune import TuneOptions

    with pytest.raises(XlsrEdgeError, match="--alpha: values from 0 to 10"):
        TuneOptions(alphas=(0.5, 50.0))
    with pytest.raises(XlsrEdgeError, match="--beta: values from -20 to 20"):
        TuneOptions(betas=(-100.0,))


@pytest.mark.parametrize("kind", ["folder", "read-only"])
def test_lm_tune_refuses_an_unwritable_sidecar_before_tuning(lm, tmp_path, capfd, monkeypatch, kind):
    import xlsr_edge.measure.lm_tune as lm_tune

    if kind == "folder":
        tuned_path_for(lm).mkdir()
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        lm.parent.chmod(0o555)
    monkeypatch.setattr(lm_tune, "tune", lambda *a, **k: pytest.fail("tuned before checking the sidecar"))
    try:
        rc, err, lines = run_cli(capfd, "lm", "tune", "bundle", "dev.jsonl", "--lm", lm)
    finally:
        lm.parent.chmod(0o755)
    assert rc == 2 and len(lines) == 1 and str(tuned_path_for(lm)) in lines[0], err
    assert ("is a folder" if kind == "folder" else "not writable") in lines[0]


def spell(text: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = [0]
    for char in text:
        ids += [TOKENS.index("|" if char == " " else char)] * 2 + [0]
    logits = rng.normal(0.0, 1.0, size=(len(ids), len(TOKENS))).astype(np.float32)
    logits[np.arange(len(ids)), ids] += 6.0
    return logits


def test_tune_logs_stages_and_a_best_weight_on_the_edge(lm, caplog):
    pytest.importorskip("pyctcdecode")
    pytest.importorskip("kenlm")
    from xlsr_edge.measure.lm_tune import TuneOptions, edge_notes, tune_logits

    vocab = Vocabulary(TOKENS, blank_id=0, word_delimiter="|")
    refs = ["bu kitap güzel", "bu kitap", "kitap güzel"]
    options = TuneOptions(alphas=(0.5, 1.0), betas=(-1.0, 0.0, 1.0), unk_offsets=(-10.0,), beam_width=8)
    with caplog.at_level(logging.INFO, logger="xlsr_edge"):
        result = tune_logits(vocab, [spell(r, i) for i, r in enumerate(refs)], refs, lm, options)
    said = [r.getMessage() for r in caplog.records]
    stages = [line for line in said if line.startswith("lm tune [")]
    assert len(stages) >= 4 and any("round 1, alpha" in line for line in stages), said
    assert [line for line in said if line.startswith("note: ")] == edge_notes(result, options)
    assert any(line.startswith("lm tune [") and "settings decoded; best alpha" in line for line in said)


def test_edge_notes_say_which_way_to_extend_the_range():
    from xlsr_edge.measure.lm_tune import Row, TuneOptions, TuneResult, edge_notes
    from xlsr_edge.measure.metrics import error_rates

    def row(weights, wer_hyp):
        return Row("x", weights, error_rates(["a b c d"], [wer_hyp]))

    options = TuneOptions(alphas=(0.0, 0.5, 1.0), betas=(-2.0, 0.0, 2.0), unk_offsets=(-10.0, -5.0, 0.0))
    greedy, beam = row(None, "x y z w"), row(None, "a y z w")

    def result(weights):
        best = row(weights, "a b c d")
        return TuneResult("lm", "m", 1, 4, 8, "coordinate", greedy, beam, beam, [best], best, True, None)

    notes = edge_notes(result((1.0, -2.0, -10.0)), options)
    assert len(notes) == 3
    assert "alpha, 1, is the highest value tried (--alpha)" in notes[0] and "--alpha 1:3:0.5" in notes[0]
    assert "beta, -2, is the lowest" in notes[1] and "--beta -10:-2:2" in notes[1]
    assert "--unk-offset -30:-10:5" in notes[2]
    assert edge_notes(result((0.0, 0.0, 0.0)), options) == []  # alpha 0 and offset 0 cannot go further
    assert edge_notes(result((0.5, 0.0, -5.0)), options) == []


def test_recognizer_hands_the_tuned_weights_to_its_decoder(lm, tiny_bundle):
    pytest.importorskip("pyctcdecode")
    pytest.importorskip("kenlm")
    from xlsr_edge.runtime import Recognizer

    tuned_path_for(lm).write_text(sidecar_with(lm, alpha=2.0), encoding="utf-8")
    with Recognizer.from_bundle(tiny_bundle, decoder=BeamOptions(lm_path=str(lm), beam_width=4)) as rec:
        weights = rec.decoder.weights
    assert weights.from_sidecar and weights.alpha == 2.0 and weights.source == "tuned (lm.tuned.json)"
    with Recognizer.from_bundle(tiny_bundle, decoder=BeamOptions(lm_path=str(lm), alpha=0.1)) as rec:
        given = rec.decoder.weights  # given wins, field by field
    assert (given.alpha, given.beta) == (0.1, 1.0)
