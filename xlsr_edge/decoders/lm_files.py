"""The files of a KenLM model as the beam decoder reads them: the model (checked before KenLM opens it) and its
unigram list. Building LMs, fitting corpora and tuned weights live in xlsr_edge.lm.

Unigram file convention (one place, used by `xlsr-edge lm build` and the beam decoder): the words of an LM live
next to it in `<lm path without its LM suffix>.unigrams.txt`, one word per line, e.g. `lm.arpa`, `lm.arpa.gz` and
`lm.bin` all use `lm.unigrams.txt` (so an ARPA model and the binary made from it share one list). The LM's other
sidecars (`lm.tuned.json`, `lm.build.json`) use the same stem (`lm_sidecar`).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from ..errors import XlsrEdgeError
from .options import LM_SUFFIXES

UNIGRAMS_SUFFIX = ".unigrams.txt"
ARPA_HEADER = b"\\data\\"
KENLM_BINARY_MAGIC = b"mmap lm "  # what build_binary writes first


def lm_stem(name: str) -> str:
    """A file name without its LM suffix: `lm.arpa.gz` -> `lm` (unchanged when it has none)."""
    lower = name.lower()
    for suffix in sorted(LM_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def lm_sidecar(lm_path: str | os.PathLike, suffix: str) -> Path:
    """A file that belongs to an LM, next to it: (`lm.bin`, `.tuned.json`) -> `lm.tuned.json`."""
    path = Path(lm_path)
    return path.with_name(lm_stem(path.name) + suffix)


def unigrams_path_for(lm_path: str | os.PathLike) -> Path:
    """The unigram list that belongs to an LM: `lm.arpa` / `lm.arpa.gz` / `lm.bin` -> `lm.unigrams.txt`."""
    return lm_sidecar(lm_path, UNIGRAMS_SUFFIX)


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
