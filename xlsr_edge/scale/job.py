"""The driver of `transcribe-dataset`: manifests -> Ray Data -> shards, every input exactly once.

1. The manifests are read here with xlsr_edge.datasets (NeMo JSONL, Common Voice TSV, CSV, lists, folders), so
   a malformed line is one `error:` line before the cluster does any work. Each utterance gets a stable id,
   `MANIFEST_INDEX:ORDINAL`.
2. The bundle is verified (every sha256) and named by the sha256 of its bundle.json; workers get it by path
   or through the object store (`--ship-bundle`) and check it (xlsr_edge.scale.worker).
3. `--resume`: the ids already written with this bundle are left out (xlsr_edge.scale.output).
4. Ray Data carries {id, path} rows through `map_batches(TranscribeWorker, compute=ActorPoolStrategy)`: a pool
   of actors, each holding one Recognizer. A worker process that dies mid-batch is restarted by Ray and the
   batch runs again (Ray Data's actor pools retry); should a batch come back twice, the driver keeps the first
   row of each id and counts the rest (`duplicates_dropped`).
5. The driver writes the rows it receives into shards of `--shard-rows` rows (or whatever arrived within
   SHARD_SECONDS), each to a temp name and renamed; on Ctrl-C/SIGTERM the rows already received are written
   before it stops. At the end it reads every shard back: the summary counts each input exactly once, and an
   input that did not come back is an error, not a silent gap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from xlsr_edge.bundle import load_bundle
from xlsr_edge.constants import DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_CONTEXT_SECONDS, DEFAULT_CHUNK_SECONDS
from xlsr_edge.errors import OutputError, XlsrEdgeError
from xlsr_edge.scale import output
from xlsr_edge.scale.cluster import (
    LOCAL,
    RAY_NOISE,
    ClusterOptions,
    Connection,
    PoolOptions,
    connect,
    dropping_stderr_lines,
    import_ray,
    plural,
    pool_size,
)
from xlsr_edge.scale.worker import (
    BundleSource,
    TranscribeWorker,
    WorkerConfig,
    bundle_sha256,
    pack_bundle,
    utf8,
)

SHARD_ROWS = 1000
SHARD_SECONDS = (
    60.0  # a shard is written at least this often while rows arrive: a kill loses at most this much
)
MAX_TASK_SIZE = 64  # inputs per map_batches call: enough to sort by length inside the Recognizer


@dataclass(frozen=True)
class JobOptions:
    format: str = "parquet"
    resume: bool = False
    ship_bundle: bool = False
    backend: str | None = None  # None: the runtime bundle.json records (xlsr-edge optimize), else onnxruntime
    providers: str | None = "cpu"
    decoder: Any = None
    language: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    chunk_seconds: float | None = DEFAULT_CHUNK_SECONDS
    context_seconds: float = DEFAULT_CHUNK_CONTEXT_SECONDS
    task_size: int | None = None  # None: split the inputs so every worker gets several tasks
    recognizer_kwargs: tuple[tuple[str, Any], ...] = ()  # more Recognizer.from_bundle keywords
    shard_rows: int = SHARD_ROWS
    shard_seconds: float = SHARD_SECONDS
    log: Callable[[str], None] | None = None  # progress lines (the CLI: stderr)

    def __post_init__(self) -> None:
        if self.format not in output.FORMATS:
            raise XlsrEdgeError(f"--format must be one of {', '.join(output.FORMATS)}, got {self.format!r}")
        for flag, value in (("--batch-size", self.batch_size), ("--shard-rows", self.shard_rows)):
            if value < 1:
                raise XlsrEdgeError(f"{flag} must be >= 1, got {value}")
        if self.task_size is not None and self.task_size < 1:
            raise XlsrEdgeError(f"--task-size must be >= 1, got {self.task_size}")


@dataclass(frozen=True)
class InputRow:
    id: str
    source: str  # the manifest (or folder, or audio file) as given
    line: int | None
    audio: str  # the path as `xlsr-edge transcribe` prints it (Utterance.label: one the user can open)
    path: Path  # resolved
    reference: str | None


@dataclass
class JobResult:
    out_dir: Path
    summary: dict[str, Any]

    @property
    def failed(self) -> int:
        return int(self.summary["failed"])

    @property
    def exit_code(self) -> int:
        from xlsr_edge.constants import EXIT_OK, EXIT_SOME_FAILED

        return EXIT_SOME_FAILED if self.failed else EXIT_OK


# -- inputs ------------------------------------------------------------------------------------------------------


def read_inputs(specs: Sequence[str | os.PathLike]) -> tuple[list[InputRow], list[dict[str, Any]]]:
    """Every utterance of every manifest, folder or audio file, in order; and what _job.json records of them."""
    from xlsr_edge.datasets import read_manifest

    rows: list[InputRow] = []
    meta: list[dict[str, Any]] = []
    for k, spec in enumerate(specs):
        spec = str(spec)
        is_dir = Path(spec).is_dir()
        utts = read_manifest(spec, check_audio=False)  # ManifestError: one `error:` line, nothing started
        digest = hashlib.sha256()
        for n, u in enumerate(utts):
            rows.append(InputRow(f"{k}:{n}", spec, u.line, u.label, u.audio, u.text))
            key = u.label if is_dir else (u.raw_path or u.label)  # what _job.json has always hashed
            digest.update(json.dumps([key, u.text], ensure_ascii=False).encode("utf-8", "surrogatepass"))
        meta.append(
            {
                "manifest": spec,
                "path": os.path.abspath(spec),
                "utterances": len(utts),
                "sha256": digest.hexdigest(),
            }
        )
    return rows, meta


def check_bundle(bundle: str | os.PathLike) -> str:
    """Verify every file of the bundle here (BundleError otherwise) and return its sha256."""
    load_bundle(Path(bundle), verify=True)
    return bundle_sha256(bundle)


# -- the Ray Data pipeline -----------------------------------------------------------------------------------------


def _task_size(n: int, workers: int, wanted: int | None) -> int:
    if wanted:
        return wanted
    return max(1, min(MAX_TASK_SIZE, math.ceil(n / (4 * max(1, workers)))))


def bundle_source(conn: Connection, bundle: str | os.PathLike, sha256: str, ship: bool) -> BundleSource:
    if ship:
        return BundleSource(sha256=sha256, shipped=(conn.ray.put(pack_bundle(bundle)),))
    return BundleSource(sha256=sha256, path=os.path.abspath(bundle))


def run_pipeline(
    conn: Connection,
    items: Sequence[tuple[str, Path]],
    config: WorkerConfig,
    pool: PoolOptions,
    task_size: int | None = None,
    sizes: tuple[int, int] | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Transcribe (id, path) pairs on the cluster; yields lists of result rows (xlsr_edge.scale.worker
    .result_schema) as they arrive, in no particular order. Ray failures become XlsrEdgeError."""
    ray = conn.ray
    lo, hi = sizes or pool_size(conn, pool)
    size = _task_size(len(items), hi, task_size)
    compute = (
        ray.data.ActorPoolStrategy(size=lo)
        if lo == hi
        else ray.data.ActorPoolStrategy(min_size=lo, max_size=hi)
    )
    ds = ray.data.from_items(
        [{"id": key, "path": os.fsencode(str(path))} for key, path in items],
        override_num_blocks=max(1, math.ceil(len(items) / size)),
    )
    ds = ds.map_batches(
        TranscribeWorker,
        fn_constructor_kwargs={"config": config},
        batch_size=size,
        batch_format="numpy",
        compute=compute,
        num_cpus=pool.cpus_per_worker,
        num_gpus=pool.gpus_per_worker or None,
    )
    workers = plural(lo, "worker") if lo == hi else f"{lo}-{hi} workers"
    conn.stage(f"starting {workers} (each loads the bundle), {len(items)} inputs in tasks of {size}")
    first = True
    try:
        with dropping_stderr_lines(RAY_NOISE):
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                if first:
                    conn.stage("first results")
                    first = False
                yield batch.to_pylist()
    except XlsrEdgeError:
        raise
    except ray.exceptions.RayError as exc:
        raise XlsrEdgeError(f"the Ray job failed: {_cause(exc)}") from exc


def _cause(exc: BaseException) -> str:
    """The line of a Ray error that says what went wrong (our own exception's message when there is one)."""
    text = str(exc)
    for line in reversed(text.splitlines()):
        m = re.search(r"xlsr_edge\.errors\.\w+: (.+)$", line)
        if m:
            return m.group(1).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def worker_config(sha_source: BundleSource, options: JobOptions, pool: PoolOptions) -> WorkerConfig:
    decoder = options.decoder
    if getattr(decoder, "num_workers", 0):  # beam decoding processes: the pool is the parallelism here
        decoder = replace(decoder, num_workers=0)
    return WorkerConfig(
        bundle=sha_source,
        backend=options.backend,
        providers=options.providers,
        threads=pool.threads,
        decoder=decoder,
        language=options.language,
        batch_size=options.batch_size,
        chunk_seconds=options.chunk_seconds,
        context_seconds=options.context_seconds,
        recognizer_kwargs=options.recognizer_kwargs,
    )


# -- transcribe-dataset --------------------------------------------------------------------------------------------


def _say(options: JobOptions, msg: str) -> None:
    if options.log is not None:
        options.log(msg)


def transcribe_dataset(
    bundle: str | os.PathLike,
    manifests: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    options: JobOptions | None = None,
    cluster: ClusterOptions | None = None,
    pool: PoolOptions | None = None,
) -> JobResult:
    """Transcribe every utterance of `manifests` into shards in `out_dir` (module docstring)."""
    from xlsr_edge.interrupts import interrupts_raise

    options = options or JobOptions()
    cluster = cluster or ClusterOptions()
    pool = pool or PoolOptions()
    out = Path(out_dir)
    t_start = time.perf_counter()
    import_ray(loopback=cluster.address == LOCAL)  # a missing extra is said before anything is written
    if not manifests:
        raise XlsrEdgeError("give at least one manifest, folder or audio file")
    inputs, meta = read_inputs(manifests)
    if not inputs:
        raise XlsrEdgeError("the manifests list no utterances")
    sha = check_bundle(bundle)
    job = {
        "tool": output.KIND.writer,
        "bundle": str(bundle),
        "bundle_sha256": sha,
        "format": options.format,
        "inputs": meta,
    }
    existed = out.exists()
    run, before = output.prepare(out, job, resume=options.resume, protect=[("the bundle", bundle)])
    todo = [r for r in inputs if r.id not in before.ids]
    by_id = {r.id: r for r in inputs}
    if before.rows:
        _say(options, f"{out}: {len(before.ids)} of {len(inputs)} inputs already written, {len(todo)} to go")

    writer = output.ShardWriter(out, options.format, run)
    seen = set(before.ids)
    # t_first/t_last: when the first/last results arrived; first_audio: the audio of the first results
    state: dict[str, Any] = {"written": 0, "dropped": 0, "audio": 0.0, "interrupted": False}
    state.update(t_first=None, t_last=None, first_audio=0.0, submitted=len(todo))
    conn_info: dict[str, Any] = {}
    pool_info: dict[str, Any] = {}
    buffer: list[dict[str, Any]] = []
    last_flush = time.perf_counter()

    def flush(n: int | None = None) -> None:
        nonlocal buffer, last_flush
        rows, buffer = (buffer, []) if n is None else (buffer[:n], buffer[n:])
        path = writer.write(rows)
        if path is not None:
            state["written"] += len(rows)
            done = len(before.ids) + state["written"]
            _say(options, f"wrote {path.name}: {len(rows)} rows ({done}/{len(inputs)} inputs)")
        last_flush = time.perf_counter()

    def finish(check: bool) -> JobResult:
        return _finish(
            out, bundle, sha, inputs, before, writer, state, conn_info, pool_info, options, t_start, check
        )

    try:
        with interrupts_raise():
            if todo:
                with connect(cluster, pool) as conn:
                    conn_info.update(conn.describe())
                    sizes = pool_size(conn, pool)
                    pool_info.update(
                        workers=sizes[1],
                        min_workers=sizes[0],
                        cpus_per_worker=pool.cpus_per_worker,
                        gpus_per_worker=pool.gpus_per_worker,
                        threads_per_worker=pool.threads,
                        ship_bundle=options.ship_bundle,
                    )
                    source = bundle_source(conn, bundle, sha, options.ship_bundle)
                    config = worker_config(source, options, pool)
                    items = [(r.id, r.path) for r in todo]
                    for rows in run_pipeline(conn, items, config, pool, options.task_size, sizes):
                        state["t_last"] = time.perf_counter()
                        first = state["t_first"] is None
                        if first:
                            state["t_first"] = state["t_last"]
                        for res in rows:
                            key = res["id"]
                            if key in seen or key not in by_id:  # a batch that ran twice
                                state["dropped"] += 1
                                continue
                            seen.add(key)
                            buffer.append(_row(by_id[key], res, sha))
                            if res.get("error") is None:
                                state["audio"] += float(res.get("duration") or 0.0)
                        if first:
                            state["first_audio"] = state["audio"]
                        while len(buffer) >= options.shard_rows:
                            flush(options.shard_rows)
                        if buffer and time.perf_counter() - last_flush >= options.shard_seconds:
                            flush()
            flush()
    except BaseException as exc:
        state["interrupted"] = isinstance(exc, KeyboardInterrupt)
        state["error"] = None if state["interrupted"] else str(exc) or type(exc).__name__
        writable = not isinstance(exc, OutputError)  # after a failed write (full disk), more writes fail too
        try:
            if writable:
                flush()  # the rows already received are finished work: keep them
            if run == 1 and not writer.written:  # nothing done: leave no output that would need --resume
                output.discard(out, remove_folder=not existed)
            elif writable:
                finish(check=False)
        except Exception as inner:  # noqa: BLE001 - the first failure is the one to report
            logging.getLogger(__name__).warning(
                "note: could not write the last rows or _summary.json: %s", inner
            )
        raise
    return finish(check=True)


def _row(inp: InputRow, res: dict[str, Any], sha: str) -> dict[str, Any]:
    return {
        "id": inp.id,
        "source": utf8(inp.source),
        "line": inp.line,
        "audio": utf8(inp.audio),
        "reference": inp.reference,
        "text": res.get("text"),
        "words": res.get("words"),
        "duration": res.get("duration"),
        "error": res.get("error"),
        "decoder": res.get("decoder"),
        "language": res.get("language"),
        "language_confidence": res.get("language_confidence"),
        "bundle_sha256": sha,
    }


def _finish(
    out: Path,
    bundle: str | os.PathLike,
    sha: str,
    inputs: list[InputRow],
    before: output.Scan,
    writer: output.ShardWriter,
    state: dict[str, Any],
    conn_info: dict[str, Any],
    pool_info: dict[str, Any],
    options: JobOptions,
    t_start: float,
    check: bool,
) -> JobResult:
    wall = time.perf_counter() - t_start
    final = output.scan(out, sha)
    expected = {r.id for r in inputs}
    missing = len(expected - final.ids)
    audio_h = state["audio"] / 3600
    t_first, t_last = state["t_first"], state["t_last"]
    steady = None  # between the first and the last results: the pool at work, start-up and shutdown excluded
    if t_first is not None and t_last > t_first:
        steady = (state["audio"] - state["first_audio"]) / (t_last - t_first)
    summary = {
        "tool": output.KIND.writer,
        "bundle": str(bundle),
        "bundle_sha256": sha,
        "format": options.format,
        "inputs": len(inputs),
        "rows": final.rows,
        "transcribed": len(final.ids & expected) - final.errors,
        "failed": final.errors,
        "missing": missing,
        "duplicates": final.duplicates,
        "audio_hours": round(final.audio_seconds / 3600, 6),
        "complete": missing == 0 and final.duplicates == 0,
        "run": {
            "number": writer.run,
            "skipped_already_written": len(before.ids),
            "submitted": state["submitted"],  # inputs sent to the cluster in this run
            "written": state["written"],
            "duplicates_dropped": state["dropped"],
            "audio_hours": round(audio_h, 6),
            "wall_seconds": round(wall, 3),
            "first_result_seconds": None if t_first is None else round(t_first - t_start, 3),
            "audio_hours_per_hour": round(audio_h / (wall / 3600), 3) if wall > 0 else None,
            "steady_audio_hours_per_hour": None if steady is None else round(steady, 3),
            "overhead_seconds": None if not steady else round(wall - state["audio"] / steady, 3),
            "interrupted": state["interrupted"],
            "error": state.get("error"),
            "shards": [p.name for p in writer.written],
        },
        "cluster": conn_info,
        "pool": pool_info,
        "failures": final.failures,
        "shards": len(final.shards),
    }
    output.write_summary(out, summary)
    if check and final.duplicates:  # a shard copied in while the job ran: --resume alone cannot undo it
        raise XlsrEdgeError(output.duplicates_error(out, final))
    if check and missing:
        raise XlsrEdgeError(
            f"{out}: {missing} inputs missing after the run (see _summary.json); run again with --resume to fill "
            "the gaps"
        )
    return JobResult(out, summary)


# -- eval --address ------------------------------------------------------------------------------------------------


class RayRecognizer:
    """What `xlsr_edge.measure.evaluation.evaluate` needs of a Recognizer (`info`, `transcribe`, a context
    manager), with the transcription done by one Ray Data job over all utterances: same worker class, same
    Recognizer on every worker, so the transcripts (and the corpus WER/CER) are those of a local `eval`."""

    transcribe_group = sys.maxsize  # evaluate() hands every utterance over in one call

    def __init__(
        self,
        bundle: str | os.PathLike,
        *,
        cluster: ClusterOptions,
        pool: PoolOptions,
        ship_bundle: bool = False,
        backend: str | None = None,
        providers: str | None = "cpu",
        decoder: Any = None,
        language: str | None = None,
        task_size: int | None = None,
        recognizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        import_ray(loopback=cluster.address == LOCAL)
        self.bundle = Path(bundle)
        self.manifest = load_bundle(self.bundle, verify=True)
        self.info = self.manifest.model
        self.sha256 = bundle_sha256(self.bundle)
        self.pool = pool
        self.options = JobOptions(
            backend=backend,
            providers=providers,
            decoder=decoder,
            language=language,
            task_size=task_size,
            recognizer_kwargs=tuple(sorted((recognizer_kwargs or {}).items())),
        )
        self._connection = connect(cluster, pool)
        self.connection = self._connection.__enter__()
        try:
            self.source = bundle_source(self.connection, self.bundle, self.sha256, ship_bundle)
        except BaseException:
            self.close()
            raise

    @classmethod
    def factory(cls, *, cluster: ClusterOptions, pool: PoolOptions, ship_bundle: bool = False) -> Callable:
        """A callable with Recognizer.from_bundle's keywords (what EvalOptions.recognizer takes)."""

        def make(bundle, *, backend=None, providers=None, threads=None, decoder=None, **kwargs):
            p = pool if threads is None else replace(pool, cpus_per_worker=max(pool.cpus_per_worker, threads))
            return cls(
                bundle,
                cluster=cluster,
                pool=p,
                ship_bundle=ship_bundle,
                backend=backend,
                providers=providers,
                decoder=decoder,
                language=kwargs.pop("language", None),
                recognizer_kwargs=kwargs,  # e.g. a backend's runner options: the workers build the same runner
            )

        return make

    def transcribe(self, inputs: Sequence[str | os.PathLike], options: Any = None) -> list[Any]:
        from xlsr_edge.runtime import Transcript

        opts = self.options
        if options is not None:
            opts = replace(
                opts,
                batch_size=options.batch_size,
                chunk_seconds=options.chunk_seconds,
                context_seconds=options.context_seconds,
            )
        items = [(str(i), Path(p)) for i, p in enumerate(inputs)]
        got: dict[str, dict[str, Any]] = {}
        if items:
            config = worker_config(self.source, opts, self.pool)
            for rows in run_pipeline(self.connection, items, config, self.pool, opts.task_size):
                for r in rows:
                    got.setdefault(r["id"], r)
        out = []
        for key, path in items:
            r = got.get(key)
            if r is None:
                out.append(Transcript(audio=str(path), error="no result came back from the Ray cluster"))
            elif r["error"] is not None:
                out.append(Transcript(audio=str(path), error=r["error"]))
            else:
                out.append(
                    Transcript(
                        audio=str(path),
                        text=r["text"],
                        words=r["words"],
                        duration=r["duration"],
                        decoder=r["decoder"] or "",
                        language=r["language"],
                        language_confidence=r["language_confidence"],
                    )
                )
        return out

    def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            connection.__exit__(None, None, None)

    def __enter__(self) -> RayRecognizer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
