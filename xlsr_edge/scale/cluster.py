"""Connecting to Ray and sizing the worker pool.

`--address local` (the default) starts a one-machine cluster inside this process that binds to loopback only:
every Ray process (GCS, raylet, workers) listens on and talks to 127.0.0.1, the dashboard is off and usage
statistics are not sent. Ray turns `_node_ip_address="127.0.0.1"` into the machine's routable address on
Linux (it means clusters to span machines), so a local start also sets `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`,
the switch that keeps Ray on loopback as it does on macOS; the node's address is checked after the start.

`auto`, `HOST:PORT` and `ray://HOST:10001` join a cluster someone started (`ray start --head`, KubeRay); its
network is whatever that cluster was started with.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from xlsr_edge.errors import XlsrEdgeError, require
from xlsr_edge.progress import Stages

LOOPBACK = "127.0.0.1"
LOCAL = "local"
# Ray's own switches for a cluster that stays on this machine (read when ray is imported, inherited by workers)
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
_ADDRESS = re.compile(r"^(auto|local|ray://[^\s/:]+(:\d+)?|[^\s/:]+:\d+)$")
_HINT = "Ray Data runs transcribe-dataset and eval --address"


@dataclass(frozen=True)
class ClusterOptions:
    """Where the workers run."""

    address: str = LOCAL  # local | auto | HOST:PORT | ray://HOST:10001
    temp_dir: str | None = None  # local only: Ray's session folder (default /tmp/ray); keep it short
    num_cpus: int | None = None  # local only: CPUs the cluster offers (default: this machine's)
    num_gpus: int | None = None  # local only: GPUs the cluster offers (default: detected)
    object_store_mb: int | None = None  # local only: object store size (default: Ray's, 30 % of memory)
    # stage lines with times (start-up, workers, first results): start-up alone takes 15-20 s (the CLI: stderr)
    log: Callable[[str], None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        check_address(self.address)


@dataclass(frozen=True)
class PoolOptions:
    """The pool of actors, each holding one Recognizer."""

    workers: int | None = None  # None: as many as the cluster's CPUs (and GPUs) hold
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise XlsrEdgeError(f"--workers must be >= 1, got {self.workers}")
        if not self.cpus_per_worker > 0:
            raise XlsrEdgeError(f"--cpus-per-worker must be > 0, got {self.cpus_per_worker:g}")
        if not self.gpus_per_worker >= 0:
            raise XlsrEdgeError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker:g}")

    @property
    def threads(self) -> int:
        """onnxruntime intra-op threads of one worker: its CPUs."""
        return max(1, math.ceil(self.cpus_per_worker))


def _silent(msg: str) -> None:
    pass


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


@dataclass
class Connection:
    ray: ModuleType
    address: str
    local: bool
    connect_seconds: float
    nodes: list[str] = field(default_factory=list)  # each alive node's address
    resources: dict[str, float] = field(default_factory=dict)
    started_here: bool = True  # False: ray was initialized by the caller, leave it running
    stage: Callable[[str], None] = _silent  # ClusterOptions.log as `ray [  1.2 s] msg` lines

    def describe(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "ray_version": getattr(self.ray, "__version__", "?"),
            "nodes": self.nodes,
            "cpus": self.resources.get("CPU", 0.0),
            "gpus": self.resources.get("GPU", 0.0),
            "connect_seconds": round(self.connect_seconds, 3),
        }


def check_address(address: str) -> str:
    if not isinstance(address, str) or not _ADDRESS.match(address.strip()):
        raise XlsrEdgeError(
            f"--address {address!r}: expected local (a cluster in this process), auto (the cluster started "
            "with `ray start` on this machine), HOST:PORT (its GCS) or ray://HOST:10001 (Ray Client)"
        )
    return address.strip()


def import_ray(*, loopback: bool = False) -> ModuleType:
    """`ray` with Ray Data, or MissingDependencyError naming the extra. `loopback`: before a local start."""
    if loopback:
        os.environ.update(LOOPBACK_ENV)  # read by ray when imported, and by every process it starts
        if "ray" in sys.modules:  # imported earlier in this process: the constant is already read
            constants = sys.modules.get("ray._private.ray_constants")
            if constants is not None and hasattr(constants, "ENABLE_RAY_CLUSTER"):
                constants.ENABLE_RAY_CLUSTER = False
    ray = require("ray", "ray", _HINT)
    require("ray.data", "ray", _HINT)
    return ray


def _quiet(ray: ModuleType) -> None:
    """Ray Data logs every execution at INFO and draws progress bars; keep stderr for our own lines."""
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False


# Ray Data hands its actors their DataContext and map function as object-store references and asks Ray to
# restart dead actors (max_restarts=-1: how a killed worker's batch runs again). Since Ray 2.47 the driver's
# core worker logs, for every such actor, that a restart would fail should those objects be lost: they are
# owned by this driver and live as long as the job does, so the line only alarms. Dropped from stderr.
RAY_NOISE = re.compile(
    rb"^\[[^\]]*\] core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object "
    rb"store and max_restarts > 0\."
)


def _write_all(fd: int, data: bytes) -> None:
    """Write all of `data`; where the real stderr is gone (a closed pipe) drop it: the pump must keep draining,
    or writers would block on a full pipe."""
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:
        pass


@contextmanager
def dropping_stderr_lines(pattern: re.Pattern[bytes]) -> Iterator[None]:
    """Pass everything written to file descriptor 2 (Python's and C++ code's alike) through, except whole
    lines that match `pattern`. A no-op where stderr is no file descriptor (an IDE, captured output)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    real = os.dup(fd)
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)

    def pump() -> None:
        pending = b""
        while chunk := os.read(read_end, 65536):
            *lines, pending = (pending + chunk).split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not pattern.match(line))
            if pending and not pending.startswith(b"["):  # not a log line's head: a prompt, a progress bar
                out, pending = out + pending, b""
            _write_all(real, out)
        if not pattern.match(pending):
            _write_all(real, pending)
        os.close(read_end)
        os.close(real)

    thread = threading.Thread(target=pump, name="xlsr-edge-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, fd)  # closes this process's last write end: the pump reads to the end and stops
        thread.join(timeout=5)


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """A joined cluster's head must answer on its port: Ray itself retries an unreachable GCS for minutes."""
    target = address
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address("auto")
        except Exception:  # noqa: BLE001 - a private helper of Ray's: let ray.init say what is wrong
            return
        if target is None:
            raise XlsrEdgeError(
                "--address auto: no Ray cluster was started on this machine (ray start --head ...) and RAY_ADDRESS "
                "is not set; or use --address local"
            )
    if target.startswith("ray://"):
        target = target[len("ray://") :]
        if ":" not in target:
            target += ":10001"
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise XlsrEdgeError(
            f"--address {address}: nothing answers at {host}:{port} ({why}); start the head with "
            "`ray start --head` or check the address"
        ) from None


@contextmanager
def connect(options: ClusterOptions, pool: PoolOptions | None = None) -> Iterator[Connection]:
    """Start (local) or join a Ray cluster; shut down or disconnect on the way out."""
    address = check_address(options.address)
    local = address == LOCAL
    stage = Stages("ray", options.log) if options.log is not None else _silent
    ray = import_ray(loopback=local)
    t0 = time.perf_counter()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            if local:  # the token guards a cluster on loopback in our own process: no need to say so
                stage(f"starting a local Ray cluster on {LOOPBACK}")
                logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
                    logging.ERROR
                )
                need = 0 if pool is None or pool.workers is None else pool.workers * pool.cpus_per_worker
                ray.init(
                    address=LOCAL,
                    _node_ip_address=LOOPBACK,
                    include_dashboard=False,
                    num_cpus=options.num_cpus or max(os.cpu_count() or 1, math.ceil(need)),
                    num_gpus=options.num_gpus,
                    object_store_memory=options.object_store_mb * 2**20 if options.object_store_mb else None,
                    _temp_dir=options.temp_dir,
                    logging_level=logging.WARNING,
                    log_to_driver=True,
                )
            else:
                if options.temp_dir or options.num_cpus or options.num_gpus or options.object_store_mb:
                    raise XlsrEdgeError(
                        "--ray-temp-dir, CPU/GPU counts and object store size apply to --address local only; "
                        "a cluster you join has its own (ray start ...)"
                    )
                check_reachable(address)
                stage(f"joining the Ray cluster at {address}")
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        except (ConnectionError, RuntimeError, TimeoutError, ValueError) as exc:
            ray.shutdown()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            how = "" if local else "; start one with `ray start --head` or use --address local"
            raise XlsrEdgeError(
                f"--address {address}: cannot start or reach a Ray cluster ({first}){how}"
            ) from exc
    try:
        _quiet(ray)
        nodes = sorted(n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive"))
        conn = Connection(
            ray=ray,
            address=address,
            local=local,
            connect_seconds=time.perf_counter() - t0,
            nodes=nodes,
            resources=dict(ray.cluster_resources()),
            started_here=started_here,
            stage=stage,
        )
        res = conn.resources
        stage(
            f"cluster up: {plural(len(nodes), 'node')}, {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs"
        )
        if local and started_here and set(nodes) != {LOOPBACK}:
            raise XlsrEdgeError(
                f"the local Ray cluster came up on {', '.join(nodes)} instead of {LOOPBACK}; "
                "ray was imported before with other settings: run the job in a new process"
            )
        yield conn
    finally:
        if started_here:
            stage("stopping Ray")
            ray.shutdown()
            stage("Ray stopped")


def pool_size(conn: Connection, pool: PoolOptions) -> tuple[int, int]:
    """(min, max) actors. A fixed pool when the cluster holds it now; otherwise start with what fits and let
    Ray Data add actors as nodes join (an autoscaling cluster), with a note on stderr."""
    cpus = conn.resources.get("CPU", 0.0)
    gpus = conn.resources.get("GPU", 0.0)
    fit = math.floor(cpus / pool.cpus_per_worker + 1e-9)
    if pool.gpus_per_worker:
        fit = min(fit, math.floor(gpus / pool.gpus_per_worker + 1e-9))
    want = f"{pool.cpus_per_worker:g} CPU" + (
        f" and {pool.gpus_per_worker:g} GPU" if pool.gpus_per_worker else ""
    )
    has = f"{cpus:g} CPUs and {gpus:g} GPUs"
    if pool.workers is None:
        if fit < 1:
            raise XlsrEdgeError(f"the Ray cluster has {has}: not enough for one worker of {want}")
        return fit, fit
    if pool.workers <= fit:
        return pool.workers, pool.workers
    if conn.local:  # nothing joins a local cluster later
        raise XlsrEdgeError(
            f"this machine offers {has}: {pool.workers} workers of {want} do not fit; "
            "lower --workers or the per-worker resources"
        )
    logging.getLogger(__name__).warning(
        "note: the Ray cluster has %s now, enough for %s of the %s workers of %s; the pool grows as nodes join",
        has,
        fit,
        pool.workers,
        want,
    )
    return max(1, fit), pool.workers
