"""Issue 17: `transcribe-dataset` and `eval --address` on Ray, on this machine only.

Every command that starts Ray runs in a sandbox when the machine allows one (`unshare`: new user, network,
PID and mount namespaces, with loopback as the only interface): Ray cannot reach any other address, the
machine's own private one included, and every process the command started dies with the sandbox. Without
unshare the local-cluster tests still run (`--address local` keeps Ray on 127.0.0.1 by itself, checked from
_summary.json) and the `ray start` test is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from functools import cache
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "demo-tr"
DEMO_MANIFEST = DEMO / "test" / "test.jsonl"
CLI = [sys.executable, "-m", "xlsr_edge"]
SANDBOX = [
    "unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc",
    "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
]  # fmt: skip
TIMEOUT = 300


@cache
def sandbox() -> list[str] | None:
    """The sandbox prefix, or None where this machine cannot make one."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    try:
        done = subprocess.run([*SANDBOX, "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return SANDBOX if done.returncode == 0 else None


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ)
    out.update(RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", **extra)
    return out


def run_script(script: str, *, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """A shell script (in the sandbox when there is one); `$CLI` is `python -m xlsr_edge`."""
    prefix = sandbox() or []
    cmd = [*prefix, "sh", "-c", script] if prefix else ["sh", "-c", script]
    e = env(CLI=" ".join(CLI), **(extra_env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=e, cwd=ROOT)


def cli(
    *args: str, sandboxed: bool = False, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    prefix = (sandbox() or []) if sandboxed else []
    e = env(**(extra_env or {}))
    return subprocess.run(
        [*prefix, *CLI, *args], capture_output=True, text=True, timeout=TIMEOUT, env=e, cwd=ROOT
    )


@pytest.fixture
def ray_tmp():
    """A short session folder under /tmp for Ray (unix socket paths are limited to ~107 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="xr", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def read_shard(path: Path) -> list[dict]:
    from xlsr_edge.scale.output import read_shard

    return read_shard(path)


def read_rows(out: Path) -> list[dict]:
    from xlsr_edge.scale.output import read_shard, shard_files

    return [row for p in shard_files(out) for row in read_shard(p)]


def summary(out: Path) -> dict:
    return json.loads((out / "_summary.json").read_text(encoding="utf-8"))


def plain_transcribe(bundle: Path, manifest: Path) -> dict[str, dict]:
    done = cli("transcribe", str(bundle), str(manifest), "--json")
    assert done.returncode in (0, 1), done.stderr
    return {d["audio"]: d for d in map(json.loads, done.stdout.splitlines())}


def same_as_plain(row: dict, plain: dict) -> bool:
    return (row["text"], row["words"], round(row["duration"], 4)) == (
        plain["text"],
        plain["words"],
        plain["duration"],
    )


def clips_manifest(folder: Path, n: int) -> Path:
    """n utterances: the shipped clips looped (absolute paths), with their text."""
    from xlsr_edge.data import CLIPS_MANIFEST

    base = [json.loads(line) for line in CLIPS_MANIFEST.read_text(encoding="utf-8").splitlines() if line]
    path = folder / f"clips{n}.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            u = base[i % len(base)]
            f.write(
                json.dumps({**u, "audio_filepath": str(CLIPS_MANIFEST.parent / u["audio_filepath"])}) + "\n"
            )
    return path


# -- the demo test set, one local run ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory) -> Path:
    if not DEMO_MANIFEST.is_file():
        pytest.skip(f"the demo model is not in this checkout ({DEMO})")
    pytest.importorskip("torch")
    from xlsr_edge.export import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("demo") / "bundle"
    export_bundle(DEMO, out, ExportOptions(verify_audio=DEMO_MANIFEST))
    return out


@pytest.fixture(scope="module")
def demo_run(demo_bundle, tmp_path_factory):
    """The demo test set plus a manifest naming a missing file, through --address local with the bundle
    shipped through the object store."""
    d = tmp_path_factory.mktemp("demo-run")
    bad = d / "bad.jsonl"
    bad.write_text(json.dumps({"audio_filepath": "missing.flac", "text": "yok"}) + "\n", encoding="utf-8")
    out = d / "out"
    tmp = Path(tempfile.mkdtemp(prefix="xr", dir="/tmp"))
    try:
        done = cli(
            "transcribe-dataset", str(demo_bundle), str(DEMO_MANIFEST), str(bad), "-o", str(out),
            "--workers", "2", "--ship-bundle", "--ray-temp-dir", str(tmp), "--shard-rows", "8",
            sandboxed=True, extra_env={"XLSR_EDGE_BUNDLE_CACHE": str(d / "cache")},
        )  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return done, out, bad


def test_demo_test_set_equals_plain_transcribe_row_by_row(demo_run, demo_bundle):
    done, out, _ = demo_run
    assert done.returncode in (0, 1), done.stderr
    plain = plain_transcribe(demo_bundle, DEMO_MANIFEST)
    rows = [r for r in read_rows(out) if r["source"] == str(DEMO_MANIFEST)]
    assert len(plain) == 30 and sorted(r["audio"] for r in rows) == sorted(plain)
    for r in rows:
        assert r["error"] is None and same_as_plain(r, plain[r["audio"]]), r["audio"]
    assert {r["bundle_sha256"] for r in rows} == {summary(out)["bundle_sha256"]}
    sizes = [len(read_shard(p)) for p in out.glob("part-001-*.parquet")]
    assert sum(sizes) == 31 and max(sizes) == 8  # --shard-rows 8


def test_missing_file_is_an_error_row_and_exit_1(demo_run):
    done, out, bad = demo_run
    assert done.returncode == 1, done.stderr
    rows = read_rows(out)
    assert len(rows) == 31 and len({r["id"] for r in rows}) == 31
    (missing,) = [r for r in rows if r["source"] == str(bad)]
    assert missing["audio"] == str(bad.parent / "missing.flac") and missing["text"] is None  # a path to open
    assert "no such file" in missing["error"]
    s = summary(out)
    assert (s["inputs"], s["transcribed"], s["failed"], s["complete"]) == (31, 30, 1, True)
    assert s["failures"][0]["audio"] == missing["audio"]
    assert "1 inputs failed" in done.stderr and "Traceback" not in done.stderr


def test_local_cluster_is_on_loopback_only(demo_run):
    s = summary(demo_run[1])
    assert s["cluster"]["nodes"] == ["127.0.0.1"]
    assert s["pool"]["workers"] == 2 and s["pool"]["ship_bundle"] is True
    (cached,) = (demo_run[1].parent / "cache").iterdir()  # the shipped bundle, unpacked once on the node
    assert cached.name == s["bundle_sha256"]


def test_existing_output_needs_resume_and_the_same_bundle(demo_run, tiny_bundle):
    _, out, _ = demo_run
    before = sorted(p.name for p in out.iterdir())
    again = cli("transcribe-dataset", str(tiny_bundle), str(DEMO_MANIFEST), "-o", str(out))
    assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr
    assert again.stderr.startswith("error: ") and "--resume" in again.stderr
    other = cli("transcribe-dataset", str(tiny_bundle), str(DEMO_MANIFEST), "-o", str(out), "--resume")
    assert other.returncode == 2 and other.stderr.count("\n") == 1, other.stderr
    assert "belongs to another job" in other.stderr and "bundle" in other.stderr
    assert sorted(p.name for p in out.iterdir()) == before


# -- exactly once: a killed worker, an interrupted job -----------------------------------------------------------


def test_killed_worker_every_input_exactly_once(tiny_bundle, tmp_path, ray_tmp):
    manifest = clips_manifest(tmp_path, 120)
    pids = tmp_path / "pids"
    pids.mkdir()
    out = tmp_path / "out"
    script = f"""
        $CLI transcribe-dataset {tiny_bundle} {manifest} -o {out} --workers 2 --task-size 4 --shard-rows 16 \
            --ray-temp-dir {ray_tmp} > {tmp_path}/stdout 2> {tmp_path}/stderr &
        job=$!
        while [ -z "$(ls {pids})" ] && kill -0 $job 2>/dev/null; do sleep 0.1; done
        victim=$(ls {pids} | head -n 1)
        kill -0 $job && kill -9 $victim && echo $victim > {tmp_path}/victim
        wait $job
        echo $? > {tmp_path}/rc
    """
    run_script(
        script, extra_env={"XLSR_EDGE_TEST_WORKER_DELAY": "0.4", "XLSR_EDGE_TEST_WORKER_PIDS": str(pids)}
    )
    stderr = (tmp_path / "stderr").read_text()
    assert (tmp_path / "rc").read_text().strip() == "0", stderr
    assert (tmp_path / "victim").is_file(), "the job ended before a worker could be killed"
    assert len(list(pids.iterdir())) >= 3, "no worker took over from the killed one"  # 2 + its replacement
    rows = read_rows(out)
    ids = Counter(r["id"] for r in rows)
    assert len(ids) == 120 and set(ids.values()) == {1}
    plain = plain_transcribe(tiny_bundle, manifest)  # the retried batches transcribed the same
    assert all(same_as_plain(r, plain[r["audio"]]) for r in rows)
    s = summary(out)
    assert s["complete"] and s["transcribed"] == 120 and s["rows"] == 120


def test_interrupt_then_resume_writes_only_the_missing_rows(tiny_bundle, tmp_path, ray_tmp):
    manifest = clips_manifest(tmp_path, 120)
    out = tmp_path / "out"
    common = f"{tiny_bundle} {manifest} -o {out} --format jsonl --task-size 4 --shard-rows 8"
    script = f"""
        $CLI transcribe-dataset {common} --workers 2 --ray-temp-dir {ray_tmp} > {tmp_path}/stdout 2> {tmp_path}/stderr &
        job=$!
        while [ -z "$(ls {out} 2>/dev/null | grep '^part-')" ] && kill -0 $job 2>/dev/null; do sleep 0.1; done
        kill -INT $job
        wait $job
        echo $? > {tmp_path}/rc
    """
    run_script(script, extra_env={"XLSR_EDGE_TEST_WORKER_DELAY": "0.4"})
    stderr = (tmp_path / "stderr").read_text()
    assert (tmp_path / "rc").read_text().strip() == "130", stderr
    assert stderr.splitlines()[-1] == "error: interrupted"
    first = {p.name: p.read_bytes() for p in out.glob("part-*.jsonl")}
    done_ids = {r["id"] for r in read_rows(out)}
    assert 0 < len(done_ids) < 120 and summary(out)["run"]["interrupted"] is True

    again = run_script(f"$CLI transcribe-dataset {common} --resume --workers 1 --ray-temp-dir {ray_tmp}")
    assert again.returncode == 0, again.stderr
    assert {p.name: p.read_bytes() for p in out.glob("part-001-*.jsonl")} == first  # untouched
    new_rows = [
        r for p in sorted(out.glob("part-002-*.jsonl")) for r in map(json.loads, p.read_text().splitlines())
    ]
    assert {r["id"] for r in new_rows}.isdisjoint(done_ids)
    ids = Counter(r["id"] for r in read_rows(out))
    assert len(ids) == 120 and set(ids.values()) == {1}
    run = summary(out)["run"]
    left = 120 - len(done_ids)
    assert (run["number"], run["skipped_already_written"], run["written"]) == (2, len(done_ids), left)
    assert run["submitted"] == left and run["duplicates_dropped"] == 0  # only the missing went to the cluster
    assert len(new_rows) == left


# -- a cluster of two processes started with `ray start` ----------------------------------------------------------


def test_head_and_worker_started_with_ray_start_run_the_same_job(tiny_bundle, tmp_path, ray_tmp):
    if sandbox() is None:
        pytest.skip(
            "needs unshare (a network namespace with only loopback): `ray start --node-ip-address 127.0.0.1` "
            "joins nodes on the machine's routable address wherever it has one"
        )
    import secrets

    from xlsr_edge.data import CLIPS_MANIFEST

    manifest = clips_manifest(tmp_path, 24)
    pids = tmp_path / "pids"
    pids.mkdir()
    ray = Path(sys.executable).with_name("ray")
    start = "--node-ip-address 127.0.0.1 --num-cpus 1 --disable-usage-stats"
    script = f"""
        set -e
        {ray} start --head --port 6380 {start} --include-dashboard=false --temp-dir {ray_tmp} > {tmp_path}/head.log 2>&1
        {ray} start --address 127.0.0.1:6380 {start} > {tmp_path}/worker.log 2>&1
        $CLI transcribe-dataset {tiny_bundle} {manifest} -o {tmp_path}/out --address 127.0.0.1:6380 \
            --workers 2 --task-size 2 > {tmp_path}/stdout 2> {tmp_path}/stderr
        $CLI eval {tiny_bundle} {CLIPS_MANIFEST} --json --address 127.0.0.1:6380 \
            --workers 2 > {tmp_path}/eval.json 2> {tmp_path}/eval.err
    """
    done = run_script(
        script,
        extra_env={
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(16),
            "XLSR_EDGE_TEST_WORKER_PIDS": str(pids),
            "XLSR_EDGE_TEST_WORKER_DELAY": "0.2",
        },
    )
    logs = {p.name: p.read_text()[-2000:] for p in tmp_path.glob("*.log")} | {
        p.name: p.read_text()[-2000:] for p in tmp_path.glob("*err")
    }
    assert done.returncode == 0, (done.stderr, logs)
    s = summary(tmp_path / "out")
    assert s["cluster"]["nodes"] == ["127.0.0.1", "127.0.0.1"] and s["pool"]["workers"] == 2
    assert len(set(p.read_text() for p in pids.iterdir())) == 2  # both nodes ran a worker
    rows = read_rows(tmp_path / "out")
    plain = plain_transcribe(tiny_bundle, manifest)
    assert len(rows) == 24 and all(same_as_plain(r, plain[r["audio"]]) for r in rows)

    local = cli("eval", str(tiny_bundle), str(CLIPS_MANIFEST), "--json")
    assert local.returncode == 0, local.stderr
    a, b = json.loads(local.stdout), json.loads((tmp_path / "eval.json").read_text())
    for key in ("wer", "cer", "words", "chars", "utterances", "audio_seconds"):
        assert a[key] == b[key], key


# -- without a cluster ------------------------------------------------------------------------------------------


def test_eval_with_address_local_scores_like_eval(tiny_bundle, ray_tmp):
    if sandbox() is not None:
        pytest.skip("eval --address runs in test_head_and_worker_started_with_ray_start_run_the_same_job")
    from xlsr_edge.data import CLIPS_MANIFEST

    local = cli("eval", str(tiny_bundle), str(CLIPS_MANIFEST), "--json")
    ray = cli(
        "eval", str(tiny_bundle), str(CLIPS_MANIFEST), "--json", "--address", "local", "--workers", "2",
        "--ray-temp-dir", str(ray_tmp), sandboxed=True,
    )  # fmt: skip
    assert local.returncode == 0 and ray.returncode == 0, ray.stderr
    a, b = json.loads(local.stdout), json.loads(ray.stdout)
    for key in ("wer", "cer", "words", "chars", "utterances", "audio_seconds"):
        assert a[key] == b[key], key


def test_without_ray_the_error_names_the_extra(tiny_bundle, tmp_path):
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from xlsr_edge.cli import main\n"
        f"sys.exit(main(['transcribe-dataset', {str(tiny_bundle)!r}, {str(tmp_path / 'm.txt')!r}, "
        f"'-o', {str(tmp_path / 'out')!r}]))\n"
    )
    (tmp_path / "m.txt").write_text("a.wav\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.startswith(
        "error: the optional dependency 'ray' is not installed: pip install 'xlsr-edge[ray]'"
    )
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--address", "http://x"], "--address"),
        (["--workers", "0"], "--workers must be >= 1"),
        (["--cpus-per-worker", "0"], "--cpus-per-worker"),
        (["--task-size", "0"], "--task-size"),
    ],
)
def test_bad_options_are_one_error_line(tiny_bundle, tmp_path, args, message):
    done = cli("transcribe-dataset", str(tiny_bundle), str(DEMO_MANIFEST), "-o", str(tmp_path / "o"), *args)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and message in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and not (tmp_path / "o").exists()


def test_unreachable_cluster_is_one_error_line_and_leaves_no_output(tiny_bundle, tmp_path):
    from xlsr_edge.data import CLIPS_MANIFEST

    out = tmp_path / "o"
    done = cli(
        "transcribe-dataset",
        str(tiny_bundle),
        str(CLIPS_MANIFEST),
        "-o",
        str(out),
        "--address",
        "127.0.0.1:1",
    )
    assert done.returncode == 2 and done.stderr.startswith("error: --address 127.0.0.1:1: nothing answers")
    assert done.stderr.count("\n") == 1 and not out.exists()  # a rerun needs no --resume


def test_foreign_output_folder_and_bad_manifest_are_refused_untouched(tiny_bundle, tmp_path):
    from xlsr_edge.data import CLIPS_MANIFEST

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me", encoding="utf-8")
    done = cli("transcribe-dataset", str(tiny_bundle), str(CLIPS_MANIFEST), "-o", str(foreign))
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no audio"}\n', encoding="utf-8")
    done = cli("transcribe-dataset", str(tiny_bundle), str(bad), "-o", str(tmp_path / "o"))
    assert done.returncode == 2 and "audio_filepath" in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_bundle_is_checked_by_sha256_on_the_worker(tiny_bundle, tmp_path):
    from xlsr_edge.errors import BundleError
    from xlsr_edge.scale.worker import BundleSource, bundle_sha256, pack_bundle, resolve_bundle, unpack_bundle

    sha = bundle_sha256(tiny_bundle)
    assert resolve_bundle(BundleSource(sha256=sha, path=str(tiny_bundle))) == tiny_bundle
    with pytest.raises(BundleError, match="not the one the job started with.*--ship-bundle"):
        resolve_bundle(BundleSource(sha256="0" * 64, path=str(tiny_bundle)))
    with pytest.raises(BundleError, match="no bundle at"):
        resolve_bundle(BundleSource(sha256=sha, path=str(tmp_path / "nowhere")))
    files = pack_bundle(tiny_bundle)
    folder = unpack_bundle(files, sha, tmp_path / "cache")
    assert folder == tmp_path / "cache" / sha and bundle_sha256(folder) == sha
    assert unpack_bundle(files, sha, tmp_path / "cache") == folder  # the second actor on a node reuses it
    graph = next(k for k in files if k.endswith(".onnx"))
    broken = {**files, graph: files[graph][:-1] + bytes([files[graph][-1] ^ 1])}
    with pytest.raises(BundleError):
        unpack_bundle(broken, sha, tmp_path / "cache2")
    assert not any((tmp_path / "cache2").glob(f"{sha}*"))


def test_ray_is_imported_only_by_the_scale_package():
    from test_architecture import PACKAGE, import_edges

    _, edges = import_edges(PACKAGE)
    users = {e.source for e in edges if e.target == "ray" or e.target.startswith("ray.")}
    assert users and all(u.startswith("xlsr_edge.scale") for u in users), users
    assert all(not e.module_level for e in edges if e.target.split(".")[0] in ("ray", "pyarrow"))
    code = (
        "import sys\nfrom xlsr_edge.cli import build_parser\nbuild_parser()\n"
        "import xlsr_edge.runtime, xlsr_edge.scale, xlsr_edge.commands.transcribe_dataset\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'pyarrow', 'pandas')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env()
    )
    assert done.stdout.strip() == "[]", done.stderr
