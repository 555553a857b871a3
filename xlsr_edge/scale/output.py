"""The output folder of `transcribe-dataset`: shards with one row per input, _job.json, _summary.json.

```
OUT/
  _job.json                 what the job is: bundle sha256, format, the manifests (sha256 of their entries)
  part-001-00000.parquet    run 1, shard 0 (or .jsonl): one row per input, written to a temp name and renamed
  part-001-00001.parquet
  part-002-00000.parquet    run 2 (--resume): only the inputs the earlier runs did not write
  _summary.json             counts, audio hours, throughput, failures (rewritten at the end of every run)
```

A shard is complete or absent: it is written to `.NAME.tmp`, synced, then renamed (xlsr_edge.outputs), so a
kill loses at most the rows not yet in a shard, and `--resume` finds every finished row. The folder is only
ever created new (missing or empty) or continued with `--resume` when its _job.json says it is the same job;
anything else there is refused before any work (xlsr_edge.outputs.check_output), and nothing in it is ever
deleted except our own temp shards of killed runs.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xlsr_edge.errors import XlsrEdgeError
from xlsr_edge.outputs import OutputKind, check_output, has_file, install_files, write_failure

JOB_JSON = "_job.json"
SUMMARY_JSON = "_summary.json"
FORMATS = ("parquet", "jsonl")
KIND = OutputKind("transcription output", "xlsr-edge transcribe-dataset", has_file(JOB_JSON))
SHARD = re.compile(r"^part-(?P<run>\d{3,})-(?P<seq>\d{5,})\.(?P<ext>parquet|jsonl)$")
TEMP_SHARD = re.compile(r"^\.part-\d{3,}-\d{5,}\.(parquet|jsonl)\.tmp$")
FAILURES_LISTED = 20  # in _summary.json; every failure is a row in the shards

# One row per input. `id` is "MANIFEST_INDEX:ORDINAL" (the position among the command's manifests and the
# utterance's position in its manifest): stable across runs with the same manifests, which --resume checks.
COLUMNS = (
    "id",
    "source",
    "line",
    "audio",
    "reference",
    "text",
    "words",
    "duration",
    "error",
    "decoder",
    "language",
    "language_confidence",
    "bundle_sha256",
)


def output_schema():
    import pyarrow as pa

    word = pa.struct([("word", pa.string()), ("start", pa.float64()), ("end", pa.float64())])
    return pa.schema(
        [
            ("id", pa.string()),
            ("source", pa.string()),
            ("line", pa.int64()),
            ("audio", pa.string()),
            ("reference", pa.string()),
            ("text", pa.string()),
            ("words", pa.list_(word)),
            ("duration", pa.float64()),
            ("error", pa.string()),
            ("decoder", pa.string()),
            ("language", pa.string()),
            ("language_confidence", pa.float64()),
            ("bundle_sha256", pa.string()),
        ]
    )


@dataclass
class Scan:
    """What the shards of an output folder hold (the columns a summary and --resume need)."""

    ids: set[str] = field(default_factory=set)
    rows: int = 0
    errors: int = 0
    duplicates: int = 0
    other_bundle: int = 0  # rows written with another bundle (never skipped by --resume)
    audio_seconds: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)
    first_shard: dict[str, str] = field(default_factory=dict)  # id -> the shard whose row of it counts
    shard_rows: dict[str, int] = field(default_factory=dict)
    repeats: dict[str, dict[str, int]] = field(
        default_factory=dict
    )  # shard -> {earlier shard: rows repeated}

    def add(self, row: dict[str, Any], sha256: str, shard: str = "") -> None:
        self.rows += 1
        self.shard_rows[shard] = self.shard_rows.get(shard, 0) + 1
        if row.get("bundle_sha256") != sha256:
            self.other_bundle += 1
            return
        if row["id"] in self.ids:
            self.duplicates += 1
            first = self.first_shard[row["id"]]
            counts = self.repeats.setdefault(shard, {})
            counts[first] = counts.get(first, 0) + 1
            return
        self.ids.add(row["id"])
        self.first_shard[row["id"]] = shard
        if row.get("error") is not None:
            self.errors += 1
            if len(self.failures) < FAILURES_LISTED:
                self.failures.append({"audio": row.get("audio"), "error": row["error"]})
        else:
            self.audio_seconds += float(row.get("duration") or 0.0)


def shard_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if SHARD.match(p.name) and p.is_file())


def read_shard(path: Path, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path, columns=list(columns) if columns else None).to_pylist()
        rows = []
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    rows.append({c: row.get(c) for c in columns} if columns else row)
        return rows
    except (OSError, ValueError) as exc:
        raise XlsrEdgeError(
            f"{path}: cannot read this shard ({exc}); it was not written by transcribe-dataset or was changed "
            "since: move it out of the folder and run again with --resume"
        ) from exc
    except Exception as exc:  # pyarrow's ArrowInvalid is a ValueError; anything else: same advice
        raise XlsrEdgeError(f"{path}: cannot read this shard ({type(exc).__name__}: {exc})") from exc


def scan(folder: Path, sha256: str) -> Scan:
    out = Scan()
    for path in shard_files(folder):
        out.shards.append(path.name)
        for row in read_shard(path, ("id", "audio", "error", "duration", "bundle_sha256")):
            out.add(row, sha256, path.name)
    return out


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        return filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def duplicates_error(folder: Path, found: Scan) -> str:
    """What to do about inputs written twice: which shard file to remove. transcribe-dataset never writes an
    id twice (each run leaves out what the folder holds), so a repeat is a copied or moved-in shard, and
    --resume cannot undo it: the user removes the file named (the rows of the other shard stay counted)."""
    advice = []
    for shard, counts in found.repeats.items():
        repeated, total = sum(counts.values()), found.shard_rows.get(shard, 0)
        others = ", ".join(sorted(counts))
        if repeated == total and len(counts) == 1 and _same_bytes(folder / shard, folder / others):
            advice.append(f"{shard} is an exact copy of {others}: remove {shard}")
        elif repeated == total:
            advice.append(f"every row of {shard} is also in {others}: remove {shard}")
        else:
            advice.append(
                f"{shard} repeats {repeated} of its {total} rows from {others}: move {shard} out of the folder "
                "(--resume transcribes its other rows again)"
            )
    return (
        f"-o {folder}: {found.duplicates} inputs are written twice; {'; '.join(advice)}; then run again with "
        "--resume (transcribe-dataset never writes an input twice: the extra shard was copied in)"
    )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with _naming(path, tmp):
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        install_files([(tmp, path)])


@contextmanager
def _naming(path: Path, tmp: Path) -> Iterator[None]:
    """A full disk or a read-only folder while writing `path` (via `tmp`): one OutputError naming it, no temp
    file left; what the folder held before (every finished shard) stays."""
    try:
        yield
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        failure = write_failure(
            exc, path, after="(the shards written before it are complete: --resume goes on)"
        )
        if failure is None:
            raise
        raise failure from exc


def read_job(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / JOB_JSON).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise XlsrEdgeError(f"{folder / JOB_JSON}: cannot read it ({exc})") from exc
    if not isinstance(data, dict) or data.get("tool") != KIND.writer:
        raise XlsrEdgeError(f"{folder / JOB_JSON} was not written by {KIND.writer}")
    return data


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    if old.get("bundle_sha256") != new["bundle_sha256"]:
        out.append(
            f"it was written with bundle {old.get('bundle')} (bundle.json sha256 "
            f"{str(old.get('bundle_sha256'))[:16]}...), this bundle is {new['bundle']} "
            f"({new['bundle_sha256'][:16]}...)"
        )
    if old.get("format") != new["format"]:
        out.append(f"it holds {old.get('format')} shards, not {new['format']} (--format)")
    old_inputs = [(i.get("manifest"), i.get("sha256")) for i in old.get("inputs", [])]
    new_inputs = [(i["manifest"], i["sha256"]) for i in new["inputs"]]
    if old_inputs != new_inputs:
        was = ", ".join(
            f"{m} ({n} utterances)"
            for m, n in ((i.get("manifest"), i.get("utterances")) for i in old.get("inputs", []))
        )
        now = ", ".join(f"{i['manifest']} ({i['utterances']} utterances)" for i in new["inputs"])
        out.append(
            f"its inputs were {was}; now they are {now} (the same manifests, unchanged, in the same order)"
        )
    return out


def prepare(
    folder: Path,
    job: dict[str, Any],
    *,
    resume: bool,
    protect: Sequence[tuple[str, str | os.PathLike]] = (),
) -> tuple[int, Scan]:
    """Make `folder` ready for run N of `job`: (N, what earlier runs wrote). Refuses (XlsrEdgeError) a folder
    that holds anything else, an earlier output without --resume, and --resume of a different job."""
    folder = Path(folder)
    check_output(folder, KIND, overwrite=True, flag="-o", protect=protect, overwrite_flag=None)
    if KIND.is_ours(folder):
        old = read_job(folder)
        existing = scan(folder, job["bundle_sha256"])
        if not resume:
            raise XlsrEdgeError(
                f"-o {folder} already holds a transcribe-dataset output ({existing.rows} rows in "
                f"{len(existing.shards)} shards); pass --resume to write only the inputs it lacks, "
                "or choose another -o"
            )
        diff = _differences(old, job)
        if diff:
            raise XlsrEdgeError(
                f"--resume: -o {folder} belongs to another job: {'; '.join(diff)}; choose another -o"
            )
        if existing.duplicates:  # before any work: the same error would come back after every run
            raise XlsrEdgeError(duplicates_error(folder, existing))
        for p in folder.iterdir():  # temp shards of a killed run: ours by name, never a finished shard
            if TEMP_SHARD.match(p.name) and p.is_file():
                p.unlink()
        run = int(old.get("runs", 1)) + 1
        _write_json(folder / JOB_JSON, {**old, "runs": run})
        return run, existing
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / JOB_JSON, {**job, "runs": 1})
    return 1, Scan()


class ShardWriter:
    """Writes `part-RUN-SEQ.EXT`, each complete or not at all."""

    def __init__(self, folder: Path, fmt: str, run: int) -> None:
        if fmt not in FORMATS:
            raise XlsrEdgeError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        self.folder = Path(folder)
        self.fmt = fmt
        self.run = run
        self.seq = 0
        self.written: list[Path] = []

    def write(self, rows: Iterable[dict[str, Any]]) -> Path | None:
        rows = list(rows)
        if not rows:
            return None
        name = f"part-{self.run:03d}-{self.seq:05d}.{self.fmt}"
        tmp = self.folder / f".{name}.tmp"
        with _naming(self.folder / name, tmp):
            if self.fmt == "parquet":
                import pyarrow as pa
                import pyarrow.parquet as pq

                pq.write_table(pa.Table.from_pylist(rows, schema=output_schema()), tmp)
            else:
                with tmp.open("w", encoding="utf-8") as f:
                    for row in rows:
                        f.write(json.dumps({c: row.get(c) for c in COLUMNS}, ensure_ascii=False) + "\n")
            install_files([(tmp, self.folder / name)], replace=False)  # another run's shard is never replaced
        self.seq += 1
        self.written.append(self.folder / name)
        return self.folder / name


def discard(folder: Path, *, remove_folder: bool) -> None:
    """Undo `prepare` of a first run that wrote no shard: our two files, and the folder if we made it."""
    folder = Path(folder)
    if shard_files(folder):
        return
    for name in (JOB_JSON, SUMMARY_JSON):
        (folder / name).unlink(missing_ok=True)
    if remove_folder:
        try:
            folder.rmdir()  # only when empty
        except OSError:
            pass


def write_summary(folder: Path, summary: dict[str, Any]) -> Path:
    path = Path(folder) / SUMMARY_JSON
    _write_json(path, summary)
    return path
