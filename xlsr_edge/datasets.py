"""Read utterance lists (manifests) in the formats speech datasets ship in. numpy + stdlib only.

Formats, picked by the path:

* a folder: every audio file under it (recursive, sorted by relative path; hidden files and folders,
  e.g. macOS ``._x.wav`` resource forks, are skipped). No transcripts. ``raw_path`` is the path relative
  to the folder, so the digest does not depend on where the folder lives.
* ``.json`` / ``.jsonl``: NeMo manifest, one JSON object per line with ``audio_filepath`` (required),
  ``text``, ``duration`` and an optional ``entities`` list of strings. NeMo ``offset`` segments are
  refused (the whole file would be transcribed instead of the segment).
* ``.tsv``: Common Voice (``path`` and ``sentence`` columns, no quoting). Audio is looked up in the
  ``clips/`` folder next to the TSV, then next to the TSV. Durations come from ``clip_durations.tsv``
  next to the TSV when it is there (Common Voice ships it).
* ``.csv``: header with an audio column (``path``, ``audio_filepath`` or ``audio``), optionally a text
  column (``text``, ``sentence`` or ``transcript``), ``duration`` and ``entities`` (separated by ``|``
  or ``;``).
* ``.txt`` / ``.lst``: one audio path per line, no transcripts.
* a single audio file: one utterance.

Relative audio paths resolve against the manifest's folder (never the working directory). Blank lines
and lines starting with ``#`` are skipped in JSONL and list files. Lines of a list file are paths, so bytes
that are not UTF-8 are kept (as surrogates, like ``os.fsdecode``): Linux file names are bytes.

``read_manifest`` raises ManifestError at the first bad line; ``read_manifest_entries`` puts a BadLine in its
place and reads on (transcribe writes an error line for it and transcribes the rest).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from xlsr_edge.constants import AUDIO_EXTENSIONS
from xlsr_edge.errors import ManifestError

JSONL_SUFFIXES = (".json", ".jsonl")
LIST_SUFFIXES = (".txt", ".lst")

AUDIO_COLUMNS = ("path", "audio_filepath", "audio")
TEXT_COLUMNS = ("sentence", "text", "transcript")
ENTITY_SEPARATORS = ("|", ";")


@dataclass(frozen=True)
class Utterance:
    """One audio file and what the manifest says about it."""

    audio: Path  # resolved path (relative paths joined to the manifest's folder)
    text: str | None  # reference transcript; None when the manifest has none
    duration: float | None  # seconds; None when the manifest does not say
    entities: tuple[str, ...] = ()  # entity strings (numbers, names) for micro-WER
    line: int | None = None  # 1-based line in the manifest; None for folders / CLI paths
    raw_path: str = ""  # the audio path exactly as written in the manifest / on the command line

    @property
    def label(self) -> str:
        """The path outputs print for this utterance: one the user can open from where the command ran (a
        manifest's relative path joined to the manifest's folder as it was given), not the manifest's text."""
        return str(self.audio)


@dataclass(frozen=True)
class BadLine:
    """A manifest line that cannot be used, in its place among the utterances."""

    where: str  # "<manifest> line <n>"
    error: str  # one line, starting with `where`


def read_manifest(path: str | Path, *, check_audio: bool = True) -> list[Utterance]:
    """Read a manifest (format from the suffix, see the module docstring) or a folder of audio files.

    A bad line raises ManifestError naming the line. With ``check_audio=True`` a line naming a missing
    audio file does too; with ``check_audio=False`` such utterances are kept (see ``split_missing``).
    """
    utts: list[Utterance] = []
    for entry in read_manifest_entries(path):
        if isinstance(entry, BadLine):
            raise ManifestError(entry.error)
        utts.append(entry)
    if check_audio:
        _check_present(utts, str(path))
    return utts


def read_manifest_entries(path: str | Path) -> list[Utterance | BadLine]:
    """Like ``read_manifest(path, check_audio=False)``, but a line that cannot be used becomes a BadLine in
    its place and the lines after it are still read. What spoils the whole file (unknown format, no
    header, not text) still raises ManifestError."""
    p = Path(path)
    if p.is_dir():
        return list(_read_folder(p))
    if not p.exists():
        raise ManifestError(f"{path}: no such manifest file or folder; check the path")
    suffix = p.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        entries = _read_jsonl(p)
    elif suffix == ".tsv":
        entries = _read_table(p, delimiter="\t")
    elif suffix == ".csv":
        entries = _read_table(p, delimiter=",")
    elif suffix in LIST_SUFFIXES:
        entries = _read_list(p)
    elif suffix in AUDIO_EXTENSIONS:
        return list(from_audio_paths([str(path)], check_audio=False))
    else:
        raise ManifestError(
            f"{path}: unknown manifest format '{p.suffix}'; use .jsonl/.json (NeMo), .tsv (Common Voice), "
            f".csv (path,text), .txt/.lst (one audio path per line) or a folder of audio files"
        )
    if not entries:
        raise ManifestError(f"{path}: the manifest lists no utterances; add at least one line")
    return entries


def from_audio_paths(paths: Iterable[str | Path], *, check_audio: bool = True) -> list[Utterance]:
    """Utterances for audio paths given directly (e.g. on the command line); no transcripts."""
    utts = [Utterance(audio=Path(p).expanduser(), text=None, duration=None, raw_path=str(p)) for p in paths]
    if check_audio:
        _check_present(utts, "command line")
    return utts


def split_missing(utts: Iterable[Utterance]) -> tuple[list[Utterance], list[Utterance]]:
    """Split into (present, missing) audio files, each in the original order."""
    present: list[Utterance] = []
    missing: list[Utterance] = []
    for u in utts:
        (present if u.audio.is_file() else missing).append(u)
    return present, missing


def fill_durations(utts: Iterable[Utterance]) -> list[Utterance]:
    """Return the utterances with missing durations read from the audio headers (soundfile.info)."""
    return [u if u.duration is not None else replace(u, duration=_probe_duration(u)) for u in utts]


def select_stratified(utts: Sequence[Utterance], n: int, seed: int = 0) -> list[Utterance]:
    """Pick ``n`` utterances spread over the duration range, deterministically for a given ``seed``.

    The utterances are sorted by duration (ties keep manifest order), the sorted list is cut into ``n``
    consecutive bins of (almost) equal count (duration quantiles), and one utterance is drawn from each
    bin with ``numpy.random.default_rng(seed)``. The picks are returned in manifest order. Durations the
    manifest lacks are read from the audio headers, only when a selection is actually needed. With
    ``n >= len(utts)`` every utterance is returned in manifest order.
    """
    if n < 1:
        raise ValueError(f"select_stratified needs n >= 1, got {n}")
    utts = list(utts)
    if n >= len(utts):
        return utts
    durations = np.array(
        [u.duration if u.duration is not None else _probe_duration(u) for u in utts], dtype=np.float64
    )
    order = np.argsort(durations, kind="stable")
    rng = np.random.default_rng(seed)
    picked = [int(b[rng.integers(len(b))]) for b in np.array_split(order, n)]
    return [utts[i] for i in sorted(picked)]


def manifest_digest(utts: Iterable[Utterance]) -> str:
    """sha256 (hex) over the sorted (raw_path, text) pairs: names the set of utterances, not their order."""
    pairs = sorted(((u.raw_path, u.text) for u in utts), key=lambda p: (p[0], p[1] is not None, p[1] or ""))
    blob = json.dumps(pairs, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8", "surrogateescape")).hexdigest()  # non-UTF-8 names: their bytes


# ----------------------------------------------------------------------------------------------------


def _where(u: Utterance, source: str) -> str:
    return f"{source} line {u.line}" if u.line is not None else source


def _check_present(utts: list[Utterance], source: str) -> None:
    _, missing = split_missing(utts)
    if missing:
        u = missing[0]
        more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise ManifestError(
            f"{_where(u, source)}: audio file not found: {u.raw_path} (looked for {u.audio}){more}; "
            f"fix the path (relative paths resolve against the manifest's folder)"
        )


def _probe_duration(u: Utterance) -> float:
    import soundfile as sf

    try:
        return float(sf.info(str(u.audio)).duration)
    except Exception as exc:  # soundfile raises several types (LibsndfileError, RuntimeError, OSError)
        where = f"line {u.line}: " if u.line is not None else ""
        raise ManifestError(
            f"{where}cannot read the duration of {u.raw_path} ({str(exc).strip() or type(exc).__name__}); "
            f"fix or remove the file, or give a duration in the manifest"
        ) from exc


def _resolve(base: Path, raw: str) -> Path:
    p = Path(raw).expanduser()
    return p if p.is_absolute() else base / p


def _parse_duration(value: object, where: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        value = "bool"  # reject true/false
    try:
        d = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ManifestError(f'{where}: "duration" must be a number of seconds, got {value!r}') from None
    if not math.isfinite(d) or d < 0:
        raise ManifestError(f'{where}: "duration" must be a non-negative number of seconds, got {value!r}')
    return d


def _iter_content_lines(path: Path, *, paths: bool = False) -> Iterable[tuple[int, str | BadLine]]:
    """(line number, stripped text) of the lines that are not blank or comments; a line that is not UTF-8
    comes as a BadLine, except in lists of paths (``paths``), whose bytes are kept as surrogates."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if b"\0" in data:  # UTF-16 or binary: the whole file is wrong, not a line
        raise ManifestError(f"{path}: not UTF-8 text (NUL bytes); save the manifest as UTF-8")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8", "surrogateescape" if paths else "strict")
        except UnicodeDecodeError as exc:
            where = f"{path} line {number}"
            yield (
                number,
                BadLine(where, f"{where}: not UTF-8 text ({exc.reason}); save the manifest as UTF-8"),
            )
            continue
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            yield number, stripped


def _read_jsonl(path: Path) -> list[Utterance | BadLine]:
    base = path.parent
    entries: list[Utterance | BadLine] = []
    for number, line in _iter_content_lines(path):
        if isinstance(line, BadLine):
            entries.append(line)
            continue
        where = f"{path} line {number}"
        try:
            entries.append(_jsonl_utterance(base, where, number, line))
        except ManifestError as exc:
            entries.append(BadLine(where, str(exc)))
    return entries


def _jsonl_utterance(base: Path, where: str, number: int, line: str) -> Utterance:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        hint = (
            "; the file looks like one JSON array, write one JSON object per line (JSONL) instead"
            if line.startswith("[")
            else '; each line must be one JSON object like {"audio_filepath": "a.wav", "text": "..."}'
        )
        raise ManifestError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}){hint}") from None
    if not isinstance(obj, dict):
        raise ManifestError(
            f'{where}: expected a JSON object like {{"audio_filepath": "a.wav", "text": "..."}}, '
            f"got {type(obj).__name__}"
        )
    raw = obj.get("audio_filepath")
    if raw is None:
        raise ManifestError(f'{where}: missing "audio_filepath"; add the path of the audio file')
    if not isinstance(raw, str) or not raw.strip():
        raise ManifestError(f'{where}: "audio_filepath" must be a non-empty string, got {raw!r}')
    text = obj.get("text")
    if text is not None and not isinstance(text, str):
        raise ManifestError(f'{where}: "text" must be a string, got {type(text).__name__}')
    offset = obj.get("offset")
    if offset not in (None, 0, 0.0):
        raise ManifestError(
            f'{where}: "offset" segments are not supported; cut the segment into its own audio file'
        )
    entities = obj.get("entities", ())
    if entities is None:
        entities = ()
    if not isinstance(entities, list | tuple) or not all(isinstance(e, str) for e in entities):
        raise ManifestError(f'{where}: "entities" must be a list of strings, got {entities!r}')
    return Utterance(
        audio=_resolve(base, raw),
        text=text,
        duration=_parse_duration(obj.get("duration"), where),
        entities=tuple(e for e in entities if e.strip()),
        line=number,
        raw_path=raw,
    )


def _pick_column(fields: list[str], names: tuple[str, ...]) -> str | None:
    lowered = {f.strip().lower(): f for f in fields}
    for name in names:
        if name in lowered:
            return lowered[name]
    return None


def _read_clip_durations(folder: Path) -> dict[str, float]:
    """Common Voice's clip_durations.tsv (columns clip, duration[ms]); {} when absent or unreadable."""
    p = folder / "clip_durations.tsv"
    if not p.is_file():
        return {}
    out: dict[str, float] = {}
    try:
        with p.open(encoding="utf-8-sig", newline="") as f:
            for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                clip, ms = row.get("clip"), row.get("duration[ms]")
                if clip and ms:
                    out[clip.strip()] = float(ms) / 1000.0
    except (OSError, UnicodeDecodeError, ValueError, csv.Error):
        return {}  # durations are an optimization; select_stratified reads headers instead
    return out


def _split_entities(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    for sep in ENTITY_SEPARATORS:
        value = value.replace(sep, "\x00")
    return tuple(e.strip() for e in value.split("\x00") if e.strip())


def _read_table(path: Path, *, delimiter: str) -> list[Utterance | BadLine]:
    is_tsv = delimiter == "\t"
    base = path.parent
    clips = base / "clips"
    # Common Voice TSVs are unquoted and their sentences contain quote characters.
    quoting = csv.QUOTE_NONE if is_tsv else csv.QUOTE_MINIMAL
    kind = "Common Voice TSV" if is_tsv else "CSV"
    expected = "path<TAB>sentence" if is_tsv else "path,text"
    utts: list[Utterance | BadLine] = []
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter=delimiter, quoting=quoting, restkey="\x00extra")
            fields = list(reader.fieldnames or [])
            audio_col = _pick_column(fields, AUDIO_COLUMNS)
            if audio_col is None:
                raise ManifestError(
                    f"{path} line 1: {kind} header {fields!r} has no audio column "
                    f"({' / '.join(AUDIO_COLUMNS)}); the first line must be a header like '{expected}'"
                )
            text_col = _pick_column(fields, TEXT_COLUMNS)
            if is_tsv and text_col is None:
                raise ManifestError(
                    f"{path} line 1: {kind} header {fields!r} has no text column "
                    f"({' / '.join(TEXT_COLUMNS)}); the first line must be a header like '{expected}'"
                )
            dur_col = _pick_column(fields, ("duration",))
            ent_col = _pick_column(fields, ("entities",))
            clip_durations = _read_clip_durations(base) if is_tsv else {}
            for row in reader:
                number = reader.line_num
                where = f"{path} line {number}"
                if all(v is None or not str(v).strip() for k, v in row.items() if k != "\x00extra"):
                    continue  # blank line
                try:
                    if any(v is None for v in row.values()):
                        raise ManifestError(
                            f"{where}: fewer fields than the {len(fields)} header columns; "
                            f"check the {'tabs' if is_tsv else 'commas and quotes'} on this line"
                        )
                    if row.get("\x00extra"):
                        raise ManifestError(
                            f"{where}: more fields than the {len(fields)} header columns; "
                            + (
                                "remove the extra tabs"
                                if is_tsv
                                else 'quote text that contains commas ("a, b")'
                            )
                        )
                    raw = (row[audio_col] or "").strip()
                    if not raw:
                        raise ManifestError(f"{where}: empty {audio_col!r} field; give the audio file path")
                    if is_tsv and not Path(raw).is_absolute():
                        audio = clips / raw
                        if not audio.is_file() and ((base / raw).is_file() or not clips.is_dir()):
                            audio = base / raw
                    else:
                        audio = _resolve(base, raw)
                    duration = _parse_duration(row[dur_col], where) if dur_col else None
                    if duration is None and raw in clip_durations:
                        duration = clip_durations[raw]
                    utts.append(
                        Utterance(
                            audio=audio,
                            text=row[text_col] if text_col else None,
                            duration=duration,
                            entities=_split_entities(row[ent_col]) if ent_col else (),
                            line=number,
                            raw_path=raw,
                        )
                    )
                except ManifestError as exc:  # this row only: the others are still read
                    utts.append(BadLine(where, str(exc)))
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text ({exc.reason}); save the manifest as UTF-8") from exc
    except csv.Error as exc:
        raise ManifestError(f"{path}: malformed {kind} ({exc}); fix the quoting on that line") from exc
    return utts


def _read_list(path: Path) -> list[Utterance | BadLine]:
    base = path.parent
    return [
        raw
        if isinstance(raw, BadLine)
        else Utterance(audio=_resolve(base, raw), text=None, duration=None, line=number, raw_path=raw)
        for number, raw in _iter_content_lines(path, paths=True)
    ]


def _read_folder(folder: Path) -> list[Utterance]:
    found = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file():
            found.append(rel.as_posix())
    if not found:
        raise ManifestError(
            f"{folder}: no audio files ({' '.join(AUDIO_EXTENSIONS)}) in this folder or below; "
            f"check the folder or pass a manifest"
        )
    return [Utterance(audio=folder / rel, text=None, duration=None, raw_path=rel) for rel in sorted(found)]
