"""Scale-out benchmark (issue 17): plain `xlsr-edge transcribe` against `transcribe-dataset` on local Ray.

The demo model's test set (models/demo-tr/test, 30 clips, 102 s) looped to --hours of audio (default 1 h:
1080 utterances), transcribed by the demo model's fp32 bundle (exported here unless --bundle is given):

* plain: `xlsr-edge transcribe BUNDLE MANIFEST --json --threads T` (one process, the whole corpus);
* ray-N: `xlsr-edge transcribe-dataset BUNDLE MANIFEST -o OUT --address local --workers N --cpus-per-worker 1`
  (a local cluster on 127.0.0.1 only, inside an `unshare` network namespace with loopback alone when the
  machine allows it).

Every run is a fresh process, as a user runs it, so the wall time holds the start-up: interpreter, bundle
load, and for Ray the cluster start, the actors and the shutdown. Columns:

* audio h / h: audio hours per wall-clock hour, end to end;
* steady audio h / h: plain: audio / (wall - wall of the same command on one clip); Ray: between the first
  and the last results (_summary.json `steady_audio_hours_per_hour`);
* overhead s: wall - audio / steady rate (start-up, shutdown, the tail when one worker finishes last).

Goals (2 cores): ray-1 >= 0.9x plain with 1 thread, ray-2 >= 1.7x ray-1 (end to end). Prints JSON and a
markdown table; writes results.json, results.md and results.png to -o.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, baseline_check, environment, markdown_table, plot_bars, start, write_results

DEMO = REPO / "models" / "demo-tr"
DEMO_MANIFEST = DEMO / "test" / "test.jsonl"
CLI = [sys.executable, "-m", "xlsr_edge"]
SANDBOX = [
    "unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc",
    "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
]  # fmt: skip
GOAL_RAY1_VS_PLAIN = 0.9
GOAL_RAY2_VS_RAY1 = 1.7


def sandbox() -> list[str]:
    if shutil.which("unshare") and shutil.which("ip"):
        if subprocess.run([*SANDBOX, "true"], capture_output=True).returncode == 0:
            return SANDBOX
    return []


def looped_manifest(folder: Path, hours: float) -> tuple[Path, float, int]:
    base = [
        json.loads(line) for line in DEMO_MANIFEST.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    seconds = sum(u["duration"] for u in base)
    loops = max(1, math.ceil(hours * 3600 / seconds))
    path = folder / "looped.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for _ in range(loops):
            for u in base:
                f.write(
                    json.dumps({**u, "audio_filepath": str(DEMO_MANIFEST.parent / u["audio_filepath"])})
                    + "\n"
                )
    return path, loops * seconds, loops * len(base)


def timed(cmd: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, **kw)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])}... failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, done


def plain(bundle: Path, manifest: Path, one_clip: Path, audio_s: float, threads: int) -> dict:
    base = [*CLI, "transcribe", str(bundle)]
    start, _ = timed([*base, str(one_clip), "--json", "--threads", str(threads)])
    wall, done = timed([*base, str(manifest), "--json", "--threads", str(threads)])
    assert len(done.stdout.splitlines()) > 0
    steady = audio_s / (wall - start)
    return {
        "run": f"plain, {threads} thread" + ("s" if threads > 1 else ""),
        "workers": None,
        "wall_s": wall,
        "audio_h_per_h": audio_s / wall,
        "steady_audio_h_per_h": steady,
        "overhead_s": wall - audio_s / steady,
        "first_result_s": None,
    }


def ray(bundle: Path, manifest: Path, work: Path, workers: int, prefix: list[str]) -> dict:
    out = work / f"ray-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix="xrb", dir="/tmp"))
    try:
        cmd = [
            *prefix, *CLI, "transcribe-dataset", str(bundle), str(manifest), "-o", str(out),
            "--address", "local", "--workers", str(workers), "--cpus-per-worker", "1", "--ray-temp-dir", str(tmp),
        ]  # fmt: skip
        wall, _ = timed(cmd)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    s = json.loads((out / "_summary.json").read_text(encoding="utf-8"))
    assert s["complete"] and s["failed"] == 0, s
    assert set(s["cluster"]["nodes"]) == {"127.0.0.1"}, s["cluster"]
    run = s["run"]
    audio_s = run["audio_hours"] * 3600
    return {
        "run": f"ray, {workers} worker" + ("s" if workers > 1 else ""),
        "workers": workers,
        "wall_s": wall,
        "audio_h_per_h": audio_s / wall,
        "steady_audio_h_per_h": run["steady_audio_hours_per_hour"],
        "overhead_s": wall - audio_s / run["steady_audio_hours_per_hour"],
        "first_result_s": run["first_result_seconds"],
        "connect_s": s["cluster"]["connect_seconds"],
        "job_wall_s": run["wall_seconds"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", type=Path, default=REPO / "benchmarks" / "results" / "scale")
    ap.add_argument("--hours", type=float, default=1.0, help="audio to transcribe (the test set looped)")
    ap.add_argument("--bundle", type=Path, default=None, help="default: export models/demo-tr (fp32)")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    run = start()

    if not DEMO_MANIFEST.is_file():
        raise SystemExit(f"needs the demo model's test set: {DEMO_MANIFEST}")
    work = args.work or Path(tempfile.mkdtemp(prefix="xlsr-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or work / "demo-bundle"
    if not bundle.exists():
        from xlsr_edge.export import ExportOptions, export_bundle

        export_bundle(DEMO, bundle, ExportOptions(verify_audio=DEMO_MANIFEST))
    manifest, audio_s, n = looped_manifest(work, args.hours)
    one_clip = DEMO_MANIFEST.parent / json.loads(DEMO_MANIFEST.read_text().splitlines()[0])["audio_filepath"]
    prefix = sandbox()
    loads = []
    rows = []
    for step in ("plain1", "ray1", "ray2", "plain2"):
        loads.append(round(os.getloadavg()[0], 2))
        if step.startswith("plain"):
            rows.append(plain(bundle, manifest, one_clip, audio_s, int(step[-1])))
        else:
            rows.append(ray(bundle, manifest, work, int(step[-1]), prefix))
        print(json.dumps(rows[-1]), file=sys.stderr)
    loads.append(round(os.getloadavg()[0], 2))
    by = {r["run"]: r for r in rows}
    base, r1, r2 = by["plain, 1 thread"], by["ray, 1 worker"], by["ray, 2 workers"]
    for r in rows:
        r["x_plain1"] = r["audio_h_per_h"] / base["audio_h_per_h"]
    ratios = {
        "ray1_vs_plain1": r1["audio_h_per_h"] / base["audio_h_per_h"],
        "ray2_vs_ray1": r2["audio_h_per_h"] / r1["audio_h_per_h"],
        "ray1_vs_plain1_steady": r1["steady_audio_h_per_h"] / base["steady_audio_h_per_h"],
        "ray2_vs_ray1_steady": r2["steady_audio_h_per_h"] / r1["steady_audio_h_per_h"],
    }
    # a goal is a ratio to a baseline run (plain 1 thread, then ray 1 worker): judged only when that run was clean
    checks = {
        name: baseline_check([], loadavg_before=[loads[i]], loadavg_after=[loads[i + 1]], own_threads=1)
        for i, name in ((0, "plain, 1 thread"), (1, "ray, 1 worker"))
    }
    goal1 = ratios["ray1_vs_plain1"] >= GOAL_RAY1_VS_PLAIN if checks["plain, 1 thread"]["sane"] else None
    goal2 = ratios["ray2_vs_ray1"] >= GOAL_RAY2_VS_RAY1 if checks["ray, 1 worker"]["sane"] else None
    result = {
        "audio_hours": audio_s / 3600,
        "utterances": n,
        "bundle": str(bundle),
        "sandbox": bool(prefix),
        "rows": rows,
        "ratios": ratios,
        "goals": {
            f"ray-1 >= {GOAL_RAY1_VS_PLAIN}x plain (1 thread)": goal1,
            f"ray-2 >= {GOAL_RAY2_VS_RAY1}x ray-1": goal2,
        },
        "baseline_checks": checks,
        "loadavg_1m_before_each_run": loads[:-1],
        "loadavg_1m_after_last_run": loads[-1],
        "environment": environment(),
    }
    table = markdown_table(
        rows,
        [
            ("run", "run"),
            ("wall_s", "wall s", "{:.1f}"),
            ("audio_h_per_h", "audio h / h", "{:.1f}"),
            ("x_plain1", "× plain 1 thread", "{:.2f}"),
            ("steady_audio_h_per_h", "steady audio h / h", "{:.1f}"),
            ("overhead_s", "overhead s", "{:.1f}"),
            ("first_result_s", "first result s", "{:.1f}"),
        ],
    )
    for name, check in checks.items():
        if not check["sane"]:
            table += f"\n\nNo verdict against {name}: its run was not clean ({'; '.join(check['flags'])})."
    long_rows = [
        {"run": r["run"], "metric": label, "value": r[key]}
        for r in rows
        for key, label in (("audio_h_per_h", "end to end"), ("steady_audio_h_per_h", "steady state"))
    ]
    plot = [
        lambda: plot_bars(
            long_rows,
            args.out / "results.png",
            value="value",
            group=lambda r: r["metric"],
            series=lambda r: r["run"],
            title=f"audio hours per hour, {audio_s / 3600:.2f} h of audio, {os.cpu_count()} CPUs",
            ylabel="audio hours / hour",
        )
    ]
    write_results(args.out, result, run, markdown=table, plots=plot)
    print(json.dumps(result, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
