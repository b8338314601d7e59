"""Benchmark case ``ray``: the same ``laser-fast select`` with the local engine and with
``--engine ray`` on the same machine, cold caches each, and the two selections compared byte for byte.

On a CPU-only machine this measures the Ray engine's overhead (starting a local Ray instance,
actors that load their own models, moving units through the object store) against the local
engine on the same cores: ``ratio`` = Ray wall time / local wall time (target <= 1.3 for the lite
profile on 5k rows). Records are the first N of ``../shared/data/alpaca_eval_pool.jsonl.gz``
(real AlpacaEval conversations); the lite profile with the bundled classifier, the paper's
combination strategy, k-means, budget N/12.

Each run is a child process (its own Ray instance for ``--engine ray``), wall time measured
around it. ``--quick``: 1,000 records; full: 5,000 (``LASER_BENCH_RAY_ROWS=N`` overrides).
Then the scaling of the model stages over 1..N workers (:mod:`benchmarks.ray_scale`): the GPU
benchmark's paper-shape scorers on 1, 2, ... N GPU actors on a GPU machine, tiny models of the
same architectures on 1 and 2 CPU actors here (``LASER_BENCH_RAY_SCALE=0`` leaves it out).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import head_jsonl, ray_case_missing

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT.parent / "shared" / "data" / "alpaca_eval_pool.jsonl.gz"


def _run(pool: Path, root: Path, tag: str, budget: int, engine: str, profile: str) -> dict:
    out, wd = root / f"out-{tag}", root / f"wd-{tag}"
    cmd = [sys.executable, "-m", "laser_fast.cli", "select", str(pool), "--budget", str(budget), "--profile", profile,
           "--strategy", "combination", "--mode", "kmeans", "--seed", "0", "--engine", engine,
           "--workdir", str(wd), "--output-dir", str(out), "--no-report", "-q"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=str(ROOT), stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    man = json.loads((out / "manifest.json").read_text())
    tasks = man.get("engine", {}).get("tasks", {})
    return {"wall_s": round(wall, 2), "sha256": hashlib.sha256((out / "selected.jsonl").read_bytes()).hexdigest(),
            "stages_s": {k: round(v, 1) for k, v in (man.get("timings_seconds") or {}).items() if isinstance(v, (int, float))},
            "tasks": {k: {"units": v["units"], "actors": v["actors"], "wall_s": v["wall_s"]} for k, v in tasks.items()}}


def run(quick: bool) -> list[dict]:
    if ray_case_missing("ray", POOL):
        return []
    n = int(os.environ.get("LASER_BENCH_RAY_ROWS") or (1_000 if quick else 5_000))
    profile = os.environ.get("LASER_BENCH_RAY_PROFILE") or "lite"
    root = Path(os.environ.get("LASER_FAST_BENCH_TMP") or "/tmp/laser_fast_bench_ray") / f"n{n}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        pool = head_jsonl(POOL, root / f"alpaca_eval_{n}.jsonl", n)
        budget = max(1, n // 12)
        local = _run(pool, root, "local", budget, "local", profile)
        remote = _run(pool, root, "ray", budget, "ray", profile)
        row = {"case": "ray", "rows": n, "profile": profile, "budget": budget, "cpus": os.cpu_count(),
               "local_wall_s": local["wall_s"], "ray_wall_s": remote["wall_s"], "ratio": round(remote["wall_s"] / local["wall_s"], 3),
               "identical": local["sha256"] == remote["sha256"],
               "ray_tasks": " ".join(f"{k}={v['units']}u/{v['actors']}a/{v['wall_s']:.1f}s" for k, v in remote["tasks"].items()),
               "local_stages_s": " ".join(f"{k}={v}" for k, v in local["stages_s"].items())}
        print(json.dumps(row), flush=True)
        rows = [row]
        if os.environ.get("LASER_BENCH_RAY_SCALE", "1") != "0":
            from benchmarks import ray_scale

            rows += ray_scale.run(quick)
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)
