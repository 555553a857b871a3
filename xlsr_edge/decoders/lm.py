"""Build word n-gram language models for the beam decoder with KenLM's `lmplz` / `build_binary`.

The kenlm Python module can only query models; building one needs KenLM's command-line tools, which
`make kenlm` (scripts/build_kenlm.sh) compiles into <repo>/.tools/kenlm/bin.

Unigram file convention (one place, used by build_lm and the beam decoder): the words of an LM live next to it in
`<lm path without its LM suffix>.unigrams.txt`, one word per line, e.g. `lm.arpa`, `lm.arpa.gz` and `lm.bin` all
use `lm.unigrams.txt` (so an ARPA model and the binary made from it share one list).

Tuned weights (`xlsr-edge lm tune`) live next to the LM the same way, in `<stem>.tuned.json`: alpha, beta and the
unknown-word offset that decoded a dev set best, with the LM's sha256. `resolve_weights` uses them for every
BeamOptions field left at None, but only while the LM file still has that sha256 (otherwise one warning, and
pyctcdecode's defaults).
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import shutil
import subprocess
import time
import unicodedata
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bundle import sha256_file
from ..errors import XlsrEdgeError
from ..outputs import install_files, recover, scratch_folder
from ..text import normalize_text
from .options import LM_SUFFIXES, PYCTCDECODE_WEIGHTS

logger = logging.getLogger(__name__)

ENV_KENLM_BIN = "XLSR_EDGE_KENLM_BIN"
UNIGRAMS_SUFFIX = ".unigrams.txt"
TUNED_SUFFIX = ".tuned.json"
TUNED_SCHEMA = 1
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


def tuned_path_for(lm_path: str | os.PathLike) -> Path:
    """The tuned-weights sidecar of an LM: `lm.bin` -> `lm.tuned.json` (written by `xlsr-edge lm tune`)."""
    path = Path(lm_path)
    return path.with_name(_strip_lm_suffix(path.name) + TUNED_SUFFIX)


def warn(message: str) -> None:
    """One prefixed warning line (`warning: ...`) through this package's logger: what a user sees on stderr
    when logging is not configured (Python prints a warning's bare message then)."""
    logging.getLogger("xlsr_edge.decoders").warning("warning: %s", message)


@dataclass(frozen=True)
class Weights:
    """The LM fusion weights a BeamDecoder uses, and where they came from."""

    alpha: float
    beta: float
    unk_score_offset: float
    source: str  # "given", "tuned (lm.tuned.json)", "pyctcdecode defaults", or a mix: "alpha given, ..."
    tuned: dict[str, Any] | None = None  # the sidecar's content when it was used

    @property
    def from_sidecar(self) -> bool:
        return self.tuned is not None


# (LM path, size, mtime, sidecar size, sidecar mtime) -> the sidecar's content or None: hashing a large LM once
# per process, and warning about a stale sidecar once.
_TUNED_CACHE: dict[tuple, dict[str, Any] | None] = {}


def _stat_key(path: Path) -> tuple:
    try:
        st = path.stat()
    except OSError:
        return (None, None)
    return (st.st_size, st.st_mtime_ns)


def tuned_weights_for(lm_path: str | os.PathLike) -> dict[str, Any] | None:
    """The content of the LM's tuned sidecar (`tuned_path_for`) when it belongs to this LM file: its `lm_sha256`
    equals the file's sha256. None when there is no sidecar; None and one warning when it belongs to another
    LM (the LM was rebuilt since `lm tune`) or cannot be read."""
    lm = Path(lm_path).absolute()
    sidecar = tuned_path_for(lm)
    key = (str(lm), *_stat_key(lm), *_stat_key(sidecar))
    if key in _TUNED_CACHE:
        return _TUNED_CACHE[key]
    data = None
    if sidecar.is_file():
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            weights = [data.get(k) for k in ("alpha", "beta", "unk_score_offset")]
            if not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
                raise ValueError("alpha, beta and unk_score_offset must be numbers")
            if not all(math.isfinite(w) for w in weights) or weights[0] < 0 or weights[2] > 0:
                raise ValueError("alpha must be >= 0, unk_score_offset <= 0, all finite")
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            warn(f"ignoring {sidecar}: it cannot be read ({exc}); run `xlsr-edge lm tune` again")
            data = None
        else:
            expected = data.get("lm_sha256")
            if expected != sha256_file(lm):
                warn(
                    f"ignoring the tuned weights in {sidecar}: they were tuned for another version of {lm.name} "
                    "(its sha256 differs; was the LM rebuilt?); decoding with pyctcdecode's defaults. "
                    "Run `xlsr-edge lm tune` again"
                )
                data = None
    _TUNED_CACHE[key] = data
    return data


def resolve_weights(options) -> Weights:  # options: BeamOptions
    """alpha, beta and unk_score_offset for BeamOptions: each field given (not None) is used as it is; the
    others come from the LM's tuned sidecar when one matches the LM (tuned_weights_for), else pyctcdecode's
    defaults (0.5, 1.5, -10)."""
    given = {
        "alpha": options.alpha,
        "beta": options.beta,
        "unk_score_offset": options.unk_score_offset,
    }
    missing = [name for name, value in given.items() if value is None]
    if not missing:
        return Weights(**given, source="given")
    tuned = tuned_weights_for(options.lm_path) if options.lm_path is not None else None
    fallback = dict(zip(("alpha", "beta", "unk_score_offset"), PYCTCDECODE_WEIGHTS))
    values = {
        name: float(value if value is not None else (tuned or fallback)[name])
        for name, value in given.items()
    }
    origin = f"tuned ({tuned_path_for(options.lm_path).name})" if tuned else "pyctcdecode defaults"
    if len(missing) == len(given):
        source = origin
    else:
        source = ", ".join(name + " given" for name in given if name not in missing) + f", others {origin}"
    return Weights(**values, source=source, tuned=tuned)


def write_tuned_weights(lm_path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write `tuned_path_for(lm_path)` (atomically: a temp file renamed into place) with `data` plus the LM's
    sha256 and the schema version. Returns the sidecar's path."""
    lm = Path(lm_path)
    target = tuned_path_for(lm)
    content = {"schema": TUNED_SCHEMA, "lm": lm.name, "lm_sha256": sha256_file(lm), **data}
    recover(target)
    with scratch_folder(target) as tmpdir:
        staged = tmpdir / "tuned.json"
        staged.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        install_files([(staged, target)])
    _TUNED_CACHE.clear()
    return target


# -- fitting text to what a model can write ------------------------------------------------------------------


def model_alphabet(tokens: Sequence[str], blank_id: int, word_delimiter: str) -> set[str]:
    """The characters a CTC model can write: its single-character tokens except the blank and the word
    delimiter (multi-character tokens such as <unk>, <s> are never words of a corpus)."""
    return {
        token
        for index, token in enumerate(tokens)
        if len(token) == 1 and index != blank_id and token != word_delimiter and not token.isspace()
    }


def _example(items: list[str], word: str, limit: int = 5) -> None:
    if word not in items and len(items) < limit:
        items.append(word)


@dataclass
class CorpusFit:
    """What `TextFitter` changed: characters mapped (to a base letter, or removed: apostrophes) and words
    dropped because they hold a character the model cannot write (digits, foreign letters, symbols)."""

    mapped: Counter = field(default_factory=Counter)  # (char, replacement) -> occurrences ("" = removed)
    dropped: Counter = field(default_factory=Counter)  # char -> words dropped because of it
    dropped_words: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)  # char -> a few words it changed or dropped
    lines_dropped: int = 0  # lines left empty

    @property
    def changed(self) -> bool:
        return bool(self.mapped or self.dropped_words)

    def summary(self, writer: str = "the model") -> list[str]:
        """Human-readable lines: counts per mapped and per dropping character, with examples."""
        out = []
        if self.mapped:
            parts = []
            for (char, repl), n in self.mapped.most_common():
                what = "removed" if repl == "" else f"-> {repl!r}"
                examples = ", ".join(self.examples.get(char, [])[:3])
                parts.append(f"{char!r} {what} x{n}" + (f" ({examples})" if examples else ""))
            lines = sum(self.mapped.values())
            out.append(f"mapped {lines} characters {writer} cannot write: " + "; ".join(parts))
        if self.dropped_words:
            parts = []
            for char, n in self.dropped.most_common(12):
                examples = ", ".join(self.examples.get(char, [])[:3])
                parts.append(f"{char!r} x{n}" + (f" ({examples})" if examples else ""))
            out.append(
                f"dropped {self.dropped_words} words with characters {writer} cannot write: "
                + "; ".join(parts)
            )
        if self.lines_dropped:
            out.append(f"dropped {self.lines_dropped} lines left without words")
        return out


class TextFitter:
    """Fit normalized text to a model's alphabet, word by word: a character the model lacks is mapped when that
    keeps the word as the model would spell it (an apostrophe is removed, `ankara'dır` -> `ankaradır`; a letter
    with a diacritic the model lacks becomes its base letter, `â` -> `a`), otherwise the word is dropped (digits,
    letters of another alphabet, symbols: no spelling the model can write says how it is pronounced). A model
    whose alphabet has upper-case letters only gets upper-cased text."""

    APOSTROPHE = "'"

    def __init__(self, alphabet: Collection[str]) -> None:
        self.alphabet = frozenset(alphabet)
        letters = [c for c in self.alphabet if c.isalpha()]
        self.upper = bool(letters) and all(c.isupper() for c in letters)
        self.fit = CorpusFit()
        self._map: dict[str, str | None] = {}

    def _map_char(self, char: str) -> str | None:
        """The replacement of a character outside the alphabet ("" = removed), None = the word must go."""
        if char in self._map:
            return self._map[char]
        repl: str | None = None
        if char == self.APOSTROPHE or char in "\u2019\u2018\u02bc":
            repl = ""
        else:
            base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
            if self.upper:
                base = base.upper()
            if base and base != char and all(c in self.alphabet for c in base):
                repl = base
        self._map[char] = repl
        return repl

    def word(self, word: str) -> str | None:
        """The word spelled with the model's alphabet, or None when it cannot be (counted in `fit`)."""
        if self.upper:
            word = word.upper()
        out = []
        for char in word:
            if char in self.alphabet:
                out.append(char)
                continue
            repl = self._map_char(char)
            if repl is None:
                self.fit.dropped[char] += 1
                self.fit.dropped_words += 1
                _example(self.fit.examples.setdefault(char, []), word)
                return None
            out.append(repl)
        fitted = "".join(out)
        if fitted != word:
            for char in word:
                if char not in self.alphabet:
                    self.fit.mapped[(char, self._map_char(char) or "")] += 1
                    _example(self.fit.examples.setdefault(char, []), f"{word} -> {fitted}")
        return fitted or None

    def line(self, line: str) -> str:
        """A normalized line with every word fitted ("" when no word is left)."""
        words = [w for w in (self.word(word) for word in line.split()) if w]
        if not words and line.strip():
            self.fit.lines_dropped += 1
        return " ".join(words)


@dataclass(frozen=True)
class OovReport:
    """How much of some text an LM's vocabulary covers."""

    words: int  # running words of the text
    oov: int  # of them not in the LM's vocabulary
    distinct_oov: tuple[str, ...]  # most frequent first

    @property
    def rate(self) -> float:
        return self.oov / self.words if self.words else 0.0

    def describe(self, what: str) -> str:
        examples = ", ".join(self.distinct_oov[:8])
        return (
            f"out-of-vocabulary rate on {what}: {100 * self.rate:.1f} % ({self.oov} of {self.words} words; "
            f"{len(self.distinct_oov)} distinct" + (f": {examples}" if examples else "") + ")"
        )


def oov_rate(vocabulary: Collection[str], texts: Iterable[str]) -> OovReport:
    """Share of the words of `texts` (already normalized, split on whitespace) that are not in `vocabulary`."""
    counts: Counter = Counter()
    total = 0
    for text in texts:
        for word in text.split():
            total += 1
            if word not in vocabulary:
                counts[word] += 1
    return OovReport(total, sum(counts.values()), tuple(w for w, _ in counts.most_common()))


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
    alphabet: Collection[str] | None = None,
) -> Path:
    """Train a word n-gram LM on a text corpus (one sentence per line) and write it as .arpa, .arpa.gz or a KenLM
    binary (.bin/.binary/.klm), plus `unigrams_path_for(out_path)`: the corpus's sorted unique words.

    Lines go through normalize_corpus (the recipe's transcript normalization for ``language``). ``alphabet``
    (the characters the acoustic model can write, `model_alphabet`): words are then fitted to it by
    `TextFitter` (apostrophes removed, diacritics the model lacks mapped to base letters, words with digits or
    foreign letters dropped), with the counts logged. prune: None (no pruning), an int k (drop n-grams of
    order >= 2 seen <= k times) or lmplz's per-order thresholds, e.g. (0, 0, 1). ``log`` receives one line per
    stage. Returns out_path.

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
        fitter = TextFitter(alphabet) if alphabet is not None else None
        try:
            with open(text_path, encoding="utf-8") as src, open(corpus, "w", encoding="utf-8") as dst:
                for line in normalize_corpus(src, language, normalize):
                    if fitter is not None and not (line := fitter.line(line)):
                        continue
                    dst.write(line + "\n")
                    words.update(line.split())
                    n_lines += 1
        except UnicodeDecodeError as exc:
            raise XlsrEdgeError(f"corpus {text_path} is not UTF-8 text: {exc}") from exc
        if fitter is not None:
            for line in fitter.fit.summary() or ["every word uses only characters the model can write"]:
                stage(line)
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
