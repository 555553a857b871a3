"""What runs on the Ray workers: the callable class of `map_batches`, one Recognizer per actor.

The bundle is named by the sha256 of its bundle.json (which lists the sha256 of every other file, so it names
the whole bundle). Every actor checks it before it loads anything:

* by path (shared storage: NFS, a mounted bucket, the same folder on every node): the bundle.json at that path
  must have the job's sha256, then `Recognizer.from_bundle(verify=True)` checks every file against it;
* shipped (`--ship-bundle`): the driver puts the bundle's files into the object store once; each node unpacks
  them into a cache folder named by the sha256 (temp folder, then renamed: actors on one node share it) and
  checks it the same way.

Bad audio is an error row, never a failed task: the Recognizer turns unreadable inputs into Transcripts with an
error, and an unexpected exception in a batch is retried input by input so that only the culprit gets an
error row. A process that dies (killed, out of memory) is restarted by Ray and its batch runs again; the
driver keeps the first row of each input (see xlsr_edge.scale.job).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlsr_edge.bundle import check_relative, load_bundle, read_manifest, sha256_file
from xlsr_edge.constants import (
    BUNDLE_JSON,
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK_CONTEXT_SECONDS,
    DEFAULT_CHUNK_SECONDS,
)
from xlsr_edge.errors import BundleError

# Test hooks (environment of the Ray workers): seconds every batch waits before it returns (a job long enough
# to kill a worker in the middle), and a folder where each worker writes a file named by its PID after a batch
# (holding its Ray node id).
ENV_DELAY = "XLSR_EDGE_TEST_WORKER_DELAY"
ENV_PIDS = "XLSR_EDGE_TEST_WORKER_PIDS"

# shipped bundles, one folder per sha256, on every node: $XLSR_EDGE_BUNDLE_CACHE, else TMPDIR/xlsr-edge-bundles
ENV_CACHE = "XLSR_EDGE_BUNDLE_CACHE"
CACHE_FOLDER = "xlsr-edge-bundles"


def bundle_sha256(folder: str | Path) -> str:
    """The bundle's identity: sha256 of its bundle.json (which holds the sha256 of every other file)."""
    path = Path(folder) / BUNDLE_JSON
    try:
        return sha256_file(path)
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror or exc}") from exc


@dataclass(frozen=True)
class BundleSource:
    """How a worker finds the bundle: a path valid on every node, or a reference into the object store."""

    sha256: str
    path: str | None = None
    shipped: tuple[
        Any, ...
    ] = ()  # (ObjectRef of {relative path: bytes},): in a tuple so Ray does not resolve it


def pack_bundle(folder: str | Path) -> dict[str, bytes]:
    """bundle.json and every file it lists, by relative path (for the object store)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    files = {BUNDLE_JSON: (folder / BUNDLE_JSON).read_bytes()}
    for rel in sorted(manifest.files):
        files[rel] = (folder / check_relative(rel, "files")).read_bytes()
    return files


def unpack_bundle(files: dict[str, bytes], sha256: str, root: str | Path | None = None) -> Path:
    """The shipped bundle as a folder `ROOT/SHA256`, written once per node and checked by sha256."""
    root = Path(root or os.environ.get(ENV_CACHE) or Path(tempfile.gettempdir()) / CACHE_FOLDER)
    dest = root / sha256
    if dest.is_dir() and _matches(dest, sha256):
        return dest
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{sha256[:16]}.tmp-", dir=root))
    try:
        for rel, data in files.items():
            target = tmp / check_relative(rel, "files")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        got = bundle_sha256(tmp)
        if got != sha256:
            raise BundleError(f"the shipped bundle has bundle.json sha256 {got}, expected {sha256}")
        load_bundle(tmp, verify=True)  # every file against bundle.json
        try:
            os.rename(tmp, dest)
        except OSError:  # another actor on this node was faster (or a stale folder is in the way)
            if not (dest.is_dir() and _matches(dest, sha256)):
                shutil.rmtree(dest, ignore_errors=True)
                os.rename(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _matches(folder: Path, sha256: str) -> bool:
    try:
        return bundle_sha256(folder) == sha256
    except BundleError:
        return False


def resolve_bundle(source: BundleSource) -> Path:
    """The local folder of the job's bundle on this node, checked by sha256 (BundleError naming the host)."""
    host = socket.gethostname()
    if source.shipped:
        import ray

        return unpack_bundle(ray.get(source.shipped[0]), source.sha256)
    folder = Path(source.path or "")
    if not (folder / BUNDLE_JSON).is_file():
        raise BundleError(
            f"worker on {host}: no bundle at {folder}; put the bundle on storage every node mounts at the same "
            "path, or pass --ship-bundle to send it through Ray's object store"
        )
    got = bundle_sha256(folder)
    if got != source.sha256:
        raise BundleError(
            f"worker on {host}: the bundle at {folder} is not the one the job started with (bundle.json sha256 "
            f"{got[:16]}..., expected {source.sha256[:16]}...); copy the same bundle to every node, or pass "
            "--ship-bundle"
        )
    return folder


@dataclass(frozen=True)
class WorkerConfig:
    bundle: BundleSource
    backend: str | None = None  # None: the runtime bundle.json records (xlsr-edge optimize), else onnxruntime
    providers: str | None = "cpu"
    threads: int | None = None
    decoder: Any = None  # GreedyOptions | BeamOptions (the LM path must exist on every node)
    language: str | None = None  # multi-language bundles: force this head
    batch_size: int = DEFAULT_BATCH_SIZE
    chunk_seconds: float | None = DEFAULT_CHUNK_SECONDS
    context_seconds: float = DEFAULT_CHUNK_CONTEXT_SECONDS
    # more keywords of Recognizer.from_bundle (a backend's runner options, multi-language settings)
    recognizer_kwargs: tuple[tuple[str, Any], ...] = ()


# What a worker returns per input: the output rows' fields the Recognizer decides (the driver adds the rest).
WORKER_FIELDS = ("id", "text", "words", "duration", "error", "decoder", "language", "language_confidence")


def result_schema():
    import pyarrow as pa

    from xlsr_edge.scale.output import output_schema

    schema = output_schema()
    return pa.schema([schema.field(n) for n in WORKER_FIELDS])


def utf8(text: str | None) -> str | None:
    """Arrow strings are UTF-8: a file name's undecodable bytes (surrogates) become backslash escapes."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class TranscribeWorker:
    """`ds.map_batches(TranscribeWorker, fn_constructor_kwargs={"config": ...})`: batches of {id, path} in,
    a pyarrow table of results (`result_schema`) out, one row per input."""

    def __init__(self, config: WorkerConfig) -> None:
        from xlsr_edge.runtime import BackendOptions, Recognizer, TranscribeOptions

        folder = resolve_bundle(config.bundle)
        kwargs = dict(config.recognizer_kwargs)
        multilang = {k: kwargs.pop(k) for k in ("lid_threshold", "below_threshold") if k in kwargs}
        # the worker's threads are its CPUs: given to the backends that take a thread count, dropped for others
        backend = BackendOptions.from_keywords(
            config.backend,
            providers=config.providers,
            threads=config.threads,
            ignore_unused=("providers", "threads"),
            **kwargs,
        )
        self.recognizer = Recognizer.from_bundle(
            folder, backend_options=backend, decoder=config.decoder, language=config.language, **multilang
        )
        self.options = TranscribeOptions(
            batch_size=config.batch_size,
            chunk_seconds=config.chunk_seconds,
            context_seconds=config.context_seconds,
        )

    def _transcribe(self, paths: list[str]) -> list[Any]:
        from xlsr_edge.runtime import Transcript

        try:
            return self.recognizer.transcribe(paths, self.options)
        except Exception:  # noqa: BLE001 - find the input that breaks the batch; the others still get text
            out = []
            for p in paths:
                try:
                    out += self.recognizer.transcribe([p], self.options)
                except Exception as exc:  # noqa: BLE001
                    out.append(Transcript(audio=p, error=f"{type(exc).__name__}: {exc}"))
            return out

    def __call__(self, batch: dict[str, Any]):
        import pyarrow as pa

        ids = [str(x) for x in batch["id"]]
        paths = [os.fsdecode(x) for x in batch["path"]]
        results = self._transcribe(paths)
        rows = []
        for key, t in zip(ids, results):
            ok = t.error is None
            rows.append(
                {
                    "id": key,
                    "text": utf8(t.text) if ok else None,
                    "words": [_word(w) for w in t.words] if ok else None,
                    "duration": float(t.duration) if ok else None,
                    "error": None if ok else utf8(str(t.error)),
                    "decoder": t.decoder or None,
                    "language": t.language,
                    "language_confidence": t.language_confidence,
                }
            )
        _test_hooks()
        return pa.Table.from_pylist(rows, schema=result_schema())

    def __del__(self) -> None:
        rec = getattr(self, "recognizer", None)
        if rec is not None:
            try:
                rec.close()
            except Exception:  # noqa: BLE001 - the process is going away
                pass


def _word(w: dict[str, Any]) -> dict[str, Any]:
    return {"word": utf8(str(w["word"])), "start": float(w["start"]), "end": float(w["end"])}


def _test_hooks() -> None:
    delay = os.environ.get(ENV_DELAY)
    if delay:
        time.sleep(float(delay))
    folder = os.environ.get(ENV_PIDS)
    if folder:
        import ray

        Path(folder, str(os.getpid())).write_text(ray.get_runtime_context().get_node_id(), encoding="utf-8")
