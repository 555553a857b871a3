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
import tempfile
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import XlsrEdgeError
from ..text import normalize_text
from .options import LM_SUFFIXES

ENV_KENLM_BIN = "XLSR_EDGE_KENLM_BIN"
UNIGRAMS_SUFFIX = ".unigrams.txt"
_STDERR_TAIL_LINES = 15


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
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            for word in line.split():
                words[word] = None
    return list(words)


def read_arpa_unigrams(path: str | os.PathLike) -> list[str]:
    """Words of the `\\1-grams:` section of an .arpa or .arpa.gz file (what pyctcdecode does for plain .arpa)."""
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    words: dict[str, None] = {}
    in_unigrams = False
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
    if not words:
        raise XlsrEdgeError(f"no unigrams found in {path}: is it an ARPA language model?")
    return list(words)


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


def _run(cmd: list[str], what: str, **kwargs) -> None:
    try:
        proc = subprocess.run(cmd, stderr=subprocess.PIPE, check=False, **kwargs)
    except OSError as exc:
        raise XlsrEdgeError(f"could not run {cmd[0]}: {exc}") from exc
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-_STDERR_TAIL_LINES:]
        detail = "\n".join("  " + line for line in tail) or "  (no output on stderr)"
        raise XlsrEdgeError(f"{what} failed with exit code {proc.returncode}:\n{detail}")


def build_lm(
    text_path: str | os.PathLike,
    out_path: str | os.PathLike,
    order: int = 3,
    prune: int | Sequence[int] | None = None,
    *,
    language: str | None = None,
    normalize: bool = True,
) -> Path:
    """Train a word n-gram LM on a text corpus (one sentence per line) and write it as .arpa, .arpa.gz or a KenLM
    binary (.bin/.binary/.klm), plus `unigrams_path_for(out_path)`: the corpus's sorted unique words.

    Lines go through normalize_corpus (the recipe's transcript normalization for ``language``). prune: None
    (no pruning), an int k (drop n-grams of order >= 2 seen <= k times) or lmplz's per-order thresholds, e.g.
    (0, 0, 1). Returns out_path.
    """
    text_path, out_path = Path(text_path), Path(out_path)
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be an integer >= 1, got {order!r}")
    prune_args = _prune_args(prune, order)
    name = out_path.name.lower()
    if not name.endswith(LM_SUFFIXES):
        raise ValueError(f"out_path must end in one of {', '.join(LM_SUFFIXES)}, got {out_path}")
    to_binary = not name.endswith((".arpa", ".arpa.gz"))
    if not text_path.is_file():
        raise XlsrEdgeError(f"corpus not found: {text_path}")
    tools = find_kenlm_binaries()
    out_path.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="xlsr-edge-lm-") as tmp:
        tmpdir = Path(tmp)
        corpus = tmpdir / "corpus.txt"
        words: set[str] = set()
        n_lines = 0
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

        arpa = tmpdir / "lm.arpa"
        cmd = [str(tools.lmplz), "-o", str(order), "--discount_fallback", "-S", "100M", "-T", f"{tmpdir}/"]
        with open(corpus, "rb") as stdin, open(arpa, "wb") as stdout:
            _run(cmd + prune_args, "lmplz", stdin=stdin, stdout=stdout)

        staged = tmpdir / "out"
        if to_binary:
            _run([str(tools.build_binary), str(arpa), str(staged)], "build_binary", stdout=subprocess.DEVNULL)
        elif name.endswith(".gz"):
            with open(arpa, "rb") as src, gzip.open(staged, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            staged = arpa
        shutil.move(str(staged), str(out_path))

    unigrams = unigrams_path_for(out_path)
    unigrams.write_text("".join(word + "\n" for word in sorted(words)), encoding="utf-8")
    return out_path
