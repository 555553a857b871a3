"""Build word n-gram language models for the beam decoder with KenLM's `lmplz` / `build_binary`.

The kenlm Python module can only query models; building one needs KenLM's command-line tools, which
`make kenlm` (scripts/build_kenlm.sh) compiles into <repo>/.tools/kenlm/bin.

Unigram file convention (one place, used by build_lm and the beam decoder): the words of an LM live next to it in
`<lm path without its LM suffix>.unigrams.txt`, one word per line, e.g. `lm.arpa`, `lm.arpa.gz` and `lm.bin` all
use `lm.unigrams.txt` (so an ARPA model and the binary made from it share one list).
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import XlsrEdgeError
from ..outputs import install_files, recover, scratch_folder
from ..text import normalize_text
from .options import LM_SUFFIXES

ENV_KENLM_BIN = "XLSR_EDGE_KENLM_BIN"
UNIGRAMS_SUFFIX = ".unigrams.txt"
KENLM_MAX_ORDER = (
    6  # KENLM_MAX_ORDER of the kenlm module and build_binary as pip and scripts/build_kenlm.sh build them
)
_STDERR_TAIL_LINES = 15
ARPA_HEADER = b"\\data\\"
KENLM_BINARY_MAGIC = b"mmap lm "  # what build_binary writes first


@dataclass(frozen=True)
class KenLMBinaries:
    lmplz: Path
    build_binary: Path


def repo_kenlm_bin_dir() -> Path:
    """`<repo>/.tools/kenlm/bin`, where `make kenlm` installs the tools (repo = the package's parent folder)."""
    return Path(__file__).resolve().parents[2] / ".tools" / "kenlm" / "bin"


def _binaries_in(folder: Path) -> KenLMBinaries | None:
    lmplz, build_binary = folder / "lmplz", folder / "build_binary"
    if all(p.is_file() and os.access(p, os.X_OK) for p in (lmplz, build_binary)):
        return KenLMBinaries(lmplz, build_binary)
    return None


def find_kenlm_binaries() -> KenLMBinaries:
    """Locate lmplz and build_binary: $XLSR_EDGE_KENLM_BIN (a folder; authoritative when set), then PATH,
    then <repo>/.tools/kenlm/bin. Raises XlsrEdgeError naming `make kenlm` when they are missing."""
    how_to = (
        "run `make kenlm` (scripts/build_kenlm.sh) to build them into .tools/kenlm/bin, "
        f"or set {ENV_KENLM_BIN} to a folder that holds both"
    )
    env = os.environ.get(ENV_KENLM_BIN)
    if env:
        found = _binaries_in(Path(env).expanduser())
        if found is None:
            raise XlsrEdgeError(
                f"{ENV_KENLM_BIN}={env} does not hold executable lmplz and build_binary: {how_to}"
            )
        return found
    lmplz, build_binary = shutil.which("lmplz"), shutil.which("build_binary")
    if lmplz and build_binary:
        return KenLMBinaries(Path(lmplz), Path(build_binary))
    found = _binaries_in(repo_kenlm_bin_dir())
    if found is None:
        raise XlsrEdgeError(
            f"KenLM's lmplz and build_binary were not found (looked in ${ENV_KENLM_BIN}, PATH and "
            f"{repo_kenlm_bin_dir()}): {how_to}"
        )
    return found


def _strip_lm_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in sorted(LM_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def unigrams_path_for(lm_path: str | os.PathLike) -> Path:
    """The unigram list that belongs to an LM: `lm.arpa` / `lm.arpa.gz` / `lm.bin` -> `lm.unigrams.txt`."""
    path = Path(lm_path)
    return path.with_name(_strip_lm_suffix(path.name) + UNIGRAMS_SUFFIX)


def read_unigrams(path: str | os.PathLike) -> list[str]:
    """Words of a unigram file (one per line; whitespace-separated words on a line are split), deduplicated."""
    words: dict[str, None] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                for word in line.split():
                    words[word] = None
    except UnicodeDecodeError as exc:
        raise XlsrEdgeError(
            f"unigram file {path} is not UTF-8 text ({exc.reason}); rebuild it with `xlsr-edge lm build`"
        ) from exc
    except OSError as exc:
        raise XlsrEdgeError(f"cannot read the unigram file {path}: {exc.strerror or exc}") from exc
    return list(words)


def read_arpa_unigrams(path: str | os.PathLike) -> list[str]:
    """Words of the `\\1-grams:` section of an .arpa or .arpa.gz file (what pyctcdecode does for plain .arpa)."""
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    words: dict[str, None] = {}
    in_unigrams = False
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                line = line.strip()
                if line == "\\1-grams:":
                    in_unigrams = True
                elif line.startswith("\\") and in_unigrams:
                    break  # \2-grams: or \end\
                elif in_unigrams and line:
                    parts = line.split("\t")
                    if len(parts) >= 2:
                        words[parts[1]] = None
    except UnicodeDecodeError as exc:
        raise XlsrEdgeError(f"language model {path} is not UTF-8 text ({exc.reason})") from exc
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError; a cut-off .gz ends in EOFError
        raise XlsrEdgeError(f"cannot read the language model {path}: {exc}") from exc
    if not words:
        raise XlsrEdgeError(f"no unigrams found in {path}: is it an ARPA language model?")
    return list(words)


def check_lm_file(path: str | os.PathLike) -> None:
    """Refuse, with one line, a file that is neither an ARPA model (plain or .gz) nor a KenLM binary, before
    KenLM reads it (its errors on such files are long, and a garbage .gz is not even its error)."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise XlsrEdgeError(f"language model {path} is empty")
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as handle:
            head = handle.read(4096)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError; a cut-off .gz ends in EOFError
        raise XlsrEdgeError(f"cannot read the language model {path}: {exc}") from exc
    if head.startswith(KENLM_BINARY_MAGIC) or head.lstrip().startswith(ARPA_HEADER):
        return
    raise XlsrEdgeError(
        f"language model {path} is neither an ARPA file (which starts with \\data\\) nor a KenLM binary; "
        "build one with `xlsr-edge lm build`"
    )


def normalize_corpus(
    lines: Iterable[str], language: str | None = None, normalize: bool = True
) -> Iterable[str]:
    """Corpus lines as the LM sees them: ``xlsr_edge.text.normalize_text`` (the recipe's normalization:
    lower-case with Turkish/Azerbaijani İ/I rules for ``language``, NFC, punctuation stripped), so the LM's
    words are spelled the way the acoustic model was trained to spell them; ``normalize=False`` keeps the text
    as it is (NFC and whitespace only). Empty lines are dropped."""
    for line in lines:
        text = (
            normalize_text(line, language)
            if normalize
            else " ".join(unicodedata.normalize("NFC", line).split())
        )
        if text:
            yield text


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


def build_lm(
    text_path: str | os.PathLike,
    out_path: str | os.PathLike,
    order: int = 3,
    prune: int | Sequence[int] | None = None,
    *,
    language: str | None = None,
    normalize: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Train a word n-gram LM on a text corpus (one sentence per line) and write it as .arpa, .arpa.gz or a KenLM
    binary (.bin/.binary/.klm), plus `unigrams_path_for(out_path)`: the corpus's sorted unique words.

    Lines go through normalize_corpus (the recipe's transcript normalization for ``language``). prune: None
    (no pruning), an int k (drop n-grams of order >= 2 seen <= k times) or lmplz's per-order thresholds, e.g.
    (0, 0, 1). ``log`` receives one line per stage. Returns out_path.

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
    unigrams = unigrams_path_for(out_path)
    for target in (out_path, unigrams):
        if target.is_dir() or (target.exists() and target.resolve() == text_path.resolve()):
            what = "a folder" if target.is_dir() else "the corpus"
            raise XlsrEdgeError(f"-o/--output: {target} is {what}; give the path of the LM file to write")
    tools = find_kenlm_binaries()
    recover(out_path)
    started = time.monotonic()

    def stage(msg: str) -> None:
        if log is not None:
            log(f"lm build [{time.monotonic() - started:6.1f} s] {msg}")

    with scratch_folder(out_path) as tmpdir:
        corpus = tmpdir / "corpus.txt"
        words: set[str] = set()
        n_lines = 0
        stage(f"normalizing {text_path}")
        try:
            with open(text_path, encoding="utf-8") as src, open(corpus, "w", encoding="utf-8") as dst:
                for line in normalize_corpus(src, language, normalize):
                    dst.write(line + "\n")
                    words.update(line.split())
                    n_lines += 1
        except UnicodeDecodeError as exc:
            raise XlsrEdgeError(f"corpus {text_path} is not UTF-8 text: {exc}") from exc
        if n_lines == 0:
            raise XlsrEdgeError(f"corpus {text_path} has no text to train a language model on")

        stage(f"{n_lines} lines, {len(words)} words; counting {order}-grams with lmplz")
        arpa = tmpdir / "lm.arpa"
        cmd = [str(tools.lmplz), "-o", str(order), "--discount_fallback", "-S", "100M", "-T", f"{tmpdir}/"]
        with open(corpus, "rb") as stdin, open(arpa, "wb") as stdout:
            _run(cmd + prune_args, "lmplz", log=stage, stdin=stdin, stdout=stdout)

        staged = tmpdir / "out"
        if to_binary:
            stage("writing the KenLM binary (build_binary)")
            _run([str(tools.build_binary), str(arpa), str(staged)], "build_binary", stdout=subprocess.DEVNULL)
        elif name.endswith(".gz"):
            stage("compressing the ARPA file")
            with open(arpa, "rb") as src, gzip.open(staged, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            staged = arpa
        staged_unigrams = tmpdir / "unigrams.txt"
        staged_unigrams.write_text("".join(word + "\n" for word in sorted(words)), encoding="utf-8")
        # The LM and its unigrams are one unit, but two renames. The unigrams go in first: the LM is what a
        # decoder opens, so a new LM never appears without its word list (a binary LM without one silently
        # decodes worse). A kill between the two renames leaves the old LM with the new word list until the
        # next `lm build`; that pair still loads and decodes (the list only steers partial-word scoring).
        install_files([(staged_unigrams, unigrams), (staged, out_path)])
    stage(f"wrote {out_path} and {unigrams.name}")
    return out_path
