"""Build word n-gram LMs for the beam decoder with KenLM's `lmplz` / `build_binary` (`xlsr-edge lm build`).

The kenlm Python module can only query models; building one needs KenLM's command-line tools. They are looked
up in `--kenlm-bin DIR`, then $XLSR_EDGE_KENLM_BIN, then PATH, then (in a source checkout only, never inside an
installed package) `<checkout>/.tools/kenlm/bin`, where `make kenlm` (scripts/build_kenlm.sh) compiles them.

What `lm build` writes: the LM, its word list (`<stem>.unigrams.txt`, see xlsr_edge.decoders.lm_files) and a
record of both (`<stem>.build.json`: their sha256, the corpus and the counts). The record is how a later build
knows which files are its own: it replaces them only with `overwrite` (`--overwrite`), and never replaces a file
it did not write (a user's own KenLM model, a hand-made word list). Every file is written in a temp folder next
to the LM and renamed into place.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import subprocess
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from xlsr_edge.bundle import sha256_file
from xlsr_edge.decoders.lm_files import lm_sidecar, unigrams_path_for
from xlsr_edge.decoders.options import LM_SUFFIXES
from xlsr_edge.errors import XlsrEdgeError
from xlsr_edge.lm.fit import TextFitter, normalize_corpus
from xlsr_edge.outputs import install_files, recover, scratch_folder
from xlsr_edge.progress import Stages

logger = logging.getLogger(__name__)

ENV_KENLM_BIN = "XLSR_EDGE_KENLM_BIN"
BUILD_SUFFIX = ".build.json"
BUILD_TOOL = "xlsr-edge lm build"
# KENLM_MAX_ORDER of the kenlm module and build_binary as pip and scripts/build_kenlm.sh build them
KENLM_MAX_ORDER = 6
_STDERR_TAIL_LINES = 15


# -- KenLM's tools -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KenLMBinaries:
    lmplz: Path
    build_binary: Path


def checkout_kenlm_bin_dir() -> Path | None:
    """`<checkout>/.tools/kenlm/bin` when this package runs from a source checkout (where `make kenlm` installs
    the tools); None for an installed package, whose parent folder is site-packages."""
    root = Path(__file__).resolve().parents[2]
    if (root / "scripts" / "build_kenlm.sh").is_file() and (root / "pyproject.toml").is_file():
        return root / ".tools" / "kenlm" / "bin"
    return None


def _binaries_in(folder: Path) -> KenLMBinaries | None:
    lmplz, build_binary = folder / "lmplz", folder / "build_binary"
    if all(p.is_file() and os.access(p, os.X_OK) for p in (lmplz, build_binary)):
        return KenLMBinaries(lmplz, build_binary)
    return None


def _how_to_get_kenlm() -> str:
    checkout = checkout_kenlm_bin_dir()
    pass_dir = f"pass --kenlm-bin DIR (or set {ENV_KENLM_BIN}=DIR) for a folder that holds both"
    if checkout is not None:
        return f"run `make kenlm` (scripts/build_kenlm.sh) to build them into {checkout}, or {pass_dir}"
    return (
        "build them with the xlsr-edge source's scripts/build_kenlm.sh (in a clone: "
        "`KENLM_PREFIX=$HOME/.local/kenlm bash scripts/build_kenlm.sh`; needs cmake, a C++ compiler and Boost, "
        f"see docs/lm.md), then {pass_dir}, e.g. --kenlm-bin $HOME/.local/kenlm/bin"
    )


def find_kenlm_binaries(kenlm_bin: str | os.PathLike | None = None) -> KenLMBinaries:
    """Locate lmplz and build_binary: `kenlm_bin` (--kenlm-bin), then $XLSR_EDGE_KENLM_BIN (each a folder,
    authoritative when given), then PATH, then a source checkout's .tools/kenlm/bin. Raises XlsrEdgeError
    saying how to get them."""
    for label, folder in (("--kenlm-bin", kenlm_bin), (ENV_KENLM_BIN, os.environ.get(ENV_KENLM_BIN))):
        if folder:
            found = _binaries_in(Path(folder).expanduser())
            if found is None:
                raise XlsrEdgeError(
                    f"{label} {folder} does not hold executable lmplz and build_binary: {_how_to_get_kenlm()}"
                )
            return found
    lmplz, build_binary = shutil.which("lmplz"), shutil.which("build_binary")
    if lmplz and build_binary:
        return KenLMBinaries(Path(lmplz), Path(build_binary))
    checkout = checkout_kenlm_bin_dir()
    found = _binaries_in(checkout) if checkout is not None else None
    if found is None:
        looked = f"--kenlm-bin, ${ENV_KENLM_BIN}, PATH" + (f" and {checkout}" if checkout else "")
        raise XlsrEdgeError(
            f"KenLM's lmplz and build_binary were not found (looked in {looked}): {_how_to_get_kenlm()}"
        )
    return found


def _prune_args(prune: int | Sequence[int] | None, order: int) -> list[str]:
    if prune is None:
        return []
    if isinstance(prune, int) and not isinstance(prune, bool):
        thresholds = [0, prune]  # unigrams are never pruned; n-grams of order >= 2 with count <= prune are
    else:
        thresholds = list(prune)
    if not thresholds or len(thresholds) > order:
        raise ValueError(f"prune needs 1..{order} count thresholds (one per order), got {prune!r}")
    if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in thresholds):
        raise ValueError(f"prune thresholds must be integers >= 0, got {prune!r}")
    if any(b < a for a, b in zip(thresholds, thresholds[1:])):
        raise ValueError(f"prune thresholds must not decrease with the order, got {prune!r}")
    if thresholds[0] != 0:
        raise ValueError(f"KenLM cannot prune unigrams: the first prune threshold must be 0, got {prune!r}")
    return ["--prune", *map(str, thresholds)]


def _run(cmd: list[str], what: str, log: Callable[[str], None] | None = None, **kwargs) -> None:
    """Run a KenLM tool; its stage headers (`=== 1/5 Counting and sorting n-grams ===`) go to `log`, the tail of
    its stderr into the error when it fails."""
    try:
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, **kwargs)
    except OSError as exc:
        raise XlsrEdgeError(f"could not run {cmd[0]}: {exc}") from exc
    tail: deque[str] = deque(maxlen=_STDERR_TAIL_LINES)
    assert proc.stderr is not None
    try:
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                tail.append(line)
            if log is not None and line.startswith("=== "):
                log(f"{what}: {line.strip('= ')}")
    finally:
        returncode = proc.wait()  # an interrupt (Ctrl-C reaches the whole process group) ends it too
    if returncode != 0:
        detail = "\n".join("  " + line for line in tail) or "  (no output on stderr)"
        raise XlsrEdgeError(f"{what} failed with exit code {returncode}:\n{detail}")


def check_order(order: object) -> int:
    """--order: KenLM's query side (the kenlm module, build_binary) loads orders 2..KENLM_MAX_ORDER only."""
    if isinstance(order, bool) or not isinstance(order, int) or not 2 <= order <= KENLM_MAX_ORDER:
        raise XlsrEdgeError(
            f"--order must be an integer from 2 to {KENLM_MAX_ORDER}, got {order!r} (KenLM cannot load unigram "
            f"models and is compiled for at most {KENLM_MAX_ORDER}-grams)"
        )
    return order


# -- what lm build wrote: its record, and the checks that keep a user's files ----------------------------------


def build_record_path(lm_path: str | os.PathLike) -> Path:
    """lm build's record of an LM and its word list: `lm.bin` -> `lm.build.json`."""
    return lm_sidecar(lm_path, BUILD_SUFFIX)


def read_build_record(path: str | os.PathLike) -> dict | None:
    """The record `lm build` wrote at `path`; None when there is none or the file is not one."""
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read(1 << 20).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if (
        not isinstance(data, dict)
        or data.get("tool") != BUILD_TOOL
        or not isinstance(data.get("files"), dict)
    ):
        return None
    return data


def _digest(path: Path, cache: dict[tuple, str]) -> str:
    """sha256 of a file, hashed once per version (a large LM is checked before and after the build)."""
    st = path.stat()
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in cache:
        cache[key] = sha256_file(path)
    return cache[key]


def check_build_outputs(
    out_path: Path, corpus: Path, *, overwrite: bool, digests: dict[tuple, str] | None = None
) -> dict[str, str]:
    """Raise XlsrEdgeError unless `lm build` may write the LM, its word list and its record: each is absent, or
    an earlier output of `lm build` (its sha256 is in the record) and `overwrite` is set. Returns the sha256 of
    each own output there now, by file name (the new record keeps them, so that a kill between the renames
    leaves every file recognisable)."""
    digests = {} if digests is None else digests
    unigrams, record_path = unigrams_path_for(out_path), build_record_path(out_path)
    record = None
    if os.path.lexists(record_path):
        record = None if record_path.is_symlink() else read_build_record(record_path)
        if record is None:
            raise XlsrEdgeError(
                f"{record_path} exists and is not a record of `{BUILD_TOOL}`, which writes its record there: "
                "move it away or choose another -o"
            )
    own: dict[str, str] = {}
    for target, what in ((out_path, f"-o {out_path}"), (unigrams, f"{unigrams} (the word list of -o)")):
        if not os.path.lexists(target):
            continue
        if target.is_dir() or (target.is_file() and target.resolve() == corpus.resolve()):
            kind = "a folder" if target.is_dir() else "the corpus"
            raise XlsrEdgeError(f"-o/--output: {target} is {kind}; give the path of the LM file to write")
        if target.is_symlink() or not target.is_file():
            kind = "a symbolic link" if target.is_symlink() else "not a regular file"
            raise XlsrEdgeError(f"{what} is {kind}; lm build only replaces files it wrote: choose another -o")
        try:
            digest = _digest(target, digests)
        except OSError as exc:
            raise XlsrEdgeError(f"cannot read {target}: {exc.strerror or exc}") from exc
        accepted = record["files"].get(target.name) if record is not None else None
        if not isinstance(accepted, list) or digest not in accepted:
            raise XlsrEdgeError(
                f"{what} already exists and was not written by `{BUILD_TOOL}` (no matching entry in "
                f"{record_path.name}); lm build never replaces such a file, not even with --overwrite: "
                "choose another -o, or move the file away"
            )
        if not overwrite:
            raise XlsrEdgeError(
                f"{what} already exists (written by `{BUILD_TOOL}`); pass --overwrite to replace it"
            )
        own[target.name] = digest
    return own


def _publish(staged: Path, target: Path) -> None:
    """Rename a finished file into place, its data on disk first."""
    fd = os.open(staged, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(staged, target)


# -- building ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusCounts:
    lines: int
    tokens: int  # running words
    words: int  # distinct words


def _prepare_corpus(
    text_path: Path,
    dst: Path,
    language: str | None,
    normalize: bool,
    alphabet: Collection[str] | None,
    stage: Stages,
) -> tuple[CorpusCounts, set[str]]:
    """Write the corpus as the LM sees it (normalized, fitted to `alphabet`) to `dst`: its counts and words."""
    stage(f"normalizing {text_path}")
    fitter = TextFitter(alphabet) if alphabet is not None else None
    words: set[str] = set()
    lines = tokens = 0
    try:
        src = open(text_path, encoding="utf-8")
    except OSError as exc:
        raise XlsrEdgeError(f"cannot read the corpus {text_path}: {exc.strerror or exc}") from exc
    with src, open(dst, "w", encoding="utf-8") as out:
        try:
            for line in normalize_corpus(src, language, normalize):
                if fitter is not None and not (line := fitter.line(line)):
                    continue
                out.write(line + "\n")
                split = line.split()
                words.update(split)
                tokens += len(split)
                lines += 1
        except UnicodeDecodeError as exc:
            raise XlsrEdgeError(f"corpus {text_path} is not UTF-8 text: {exc}") from exc
    if fitter is not None:
        for line in fitter.fit.summary() or ["every word uses only characters the model can write"]:
            stage(line)
    if lines == 0:
        raise XlsrEdgeError(f"corpus {text_path} has no text to train a language model on")
    return CorpusCounts(lines, tokens, len(words)), words


def build_lm(
    text_path: str | os.PathLike,
    out_path: str | os.PathLike,
    order: int = 3,
    prune: int | Sequence[int] | None = None,
    *,
    language: str | None = None,
    normalize: bool = True,
    alphabet: Collection[str] | None = None,
    overwrite: bool = False,
    kenlm_bin: str | os.PathLike | None = None,
) -> Path:
    """Train a word n-gram LM on a text corpus (one sentence per line) and write it as .arpa, .arpa.gz or a KenLM
    binary (.bin/.binary/.klm), plus `unigrams_path_for(out_path)`: the corpus's sorted unique words, and
    `build_record_path(out_path)`: what was written (see the module docstring).

    Lines go through normalize_corpus (the recipe's transcript normalization for ``language``). ``alphabet``
    (the characters the acoustic model can write, `model_alphabet`): words are then fitted to it by
    `TextFitter` (apostrophes removed, diacritics the model lacks mapped to base letters, words with digits or
    foreign letters dropped), with the counts logged. prune: None (no pruning), an int k (drop n-grams of
    order >= 2 seen <= k times) or lmplz's per-order thresholds, e.g. (0, 0, 1). Each stage is logged (logger
    xlsr_edge.lm.build). Existing files are replaced only when this tool wrote them and ``overwrite`` is set.
    ``kenlm_bin``: the folder holding lmplz and build_binary (see find_kenlm_binaries). Returns out_path.

    Crash safety: all work happens in a temp folder next to the LM (`.NAME.xlsr-tmp-PID`, removed by the next
    run if a kill leaves it), so the finished files are renamed into place on the same filesystem; an existing
    LM is never written over in place.
    """
    text_path, out_path = Path(text_path), Path(out_path)
    order = check_order(order)
    prune_args = _prune_args(prune, order)
    name = out_path.name.lower()
    if not name.endswith(LM_SUFFIXES):
        raise XlsrEdgeError(f"-o/--output must end in one of {', '.join(LM_SUFFIXES)}, got {out_path}")
    to_binary = not name.endswith((".arpa", ".arpa.gz"))
    if not text_path.is_file():
        raise XlsrEdgeError(f"corpus not found: {text_path}")
    digests: dict[tuple, str] = {}
    check_build_outputs(out_path, text_path, overwrite=overwrite, digests=digests)  # before the work
    tools = find_kenlm_binaries(kenlm_bin)
    recover(out_path)
    stage = Stages("lm build", logger.info)
    unigrams, record = unigrams_path_for(out_path), build_record_path(out_path)
    try:
        with scratch_folder(out_path) as tmpdir:
            corpus = tmpdir / "corpus.txt"
            counts, words = _prepare_corpus(text_path, corpus, language, normalize, alphabet, stage)
            stage(
                f"{counts.lines} lines, {counts.tokens} words ({counts.words} distinct); "
                f"counting {order}-grams with lmplz"
            )
            arpa = tmpdir / "lm.arpa"
            cmd = [
                str(tools.lmplz),
                "-o",
                str(order),
                "--discount_fallback",
                "-S",
                "100M",
                "-T",
                f"{tmpdir}/",
            ]
            with open(corpus, "rb") as stdin, open(arpa, "wb") as stdout:
                _run(cmd + prune_args, "lmplz", log=stage, stdin=stdin, stdout=stdout)

            staged = tmpdir / "out"
            if to_binary:
                stage("writing the KenLM binary (build_binary)")
                _run(
                    [str(tools.build_binary), str(arpa), str(staged)],
                    "build_binary",
                    stdout=subprocess.DEVNULL,
                )
            elif name.endswith(".gz"):
                stage("compressing the ARPA file")
                with open(arpa, "rb") as src, gzip.open(staged, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                staged = arpa
            staged_unigrams = tmpdir / "unigrams.txt"
            staged_unigrams.write_text("".join(word + "\n" for word in sorted(words)), encoding="utf-8")
            # the targets may have changed during a long build: check again right before replacing them
            before = check_build_outputs(out_path, text_path, overwrite=overwrite, digests=digests)
            new = {out_path.name: sha256_file(staged), unigrams.name: sha256_file(staged_unigrams)}
            content = {
                "schema": 1,
                "tool": BUILD_TOOL,
                # file -> sha256 of the versions this tool wrote: the new one, and the one it replaces (still there
                # if a kill comes between the renames below)
                "files": {
                    f: [digest] + ([before[f]] if before.get(f, digest) != digest else [])
                    for f, digest in new.items()
                },
                "corpus": str(text_path),
                "order": order,
                "prune": prune_args[1:] or None,
                "language": language,
                "normalized": normalize,
                "fitted_to_model_alphabet": alphabet is not None,
                **{k: getattr(counts, k) for k in ("lines", "tokens", "words")},
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            staged_record = tmpdir / "build.json"
            staged_record.write_text(
                json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
            )
            # The record goes first (so every file there is recognisable at every moment), then the LM and its
            # unigrams, one unit but two renames. The unigrams go in before the LM: the LM is what a decoder opens,
            # so a new LM never appears without its word list (a binary LM without one silently decodes worse).
            # A kill between the two leaves the old LM with the new word list until the next `lm build`; that pair
            # still loads and decodes (the list only steers partial-word scoring).
            _publish(staged_record, record)
            install_files([(staged_unigrams, unigrams), (staged, out_path)])
    except OSError as exc:
        raise XlsrEdgeError(f"lm build: cannot write {out_path}: {exc.strerror or exc}") from exc
    stage(f"wrote {out_path}, {unigrams.name} and {record.name}")
    return out_path
