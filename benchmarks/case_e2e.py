"""End-to-end ``laser-fast select`` on a large synthetic pool with cached embeddings and scores.

The pool is synthetic (short distinct texts, categories and scores given in a score file, so no
model runs), its embeddings are clustered unit vectors put into the embedding store beforehand
(:meth:`laser_fast.sampling.store.EmbeddingStore.put`), exactly as a run with a warm cache finds them.
``select`` then runs twice in a child process each:

* ``cold``: the token counts are computed (tokenizer over every text) and cached;
* ``warm``: everything comes from the caches — the figure the issue's target is about.

Each run reports its per-stage seconds and the high-water mark after each stage (from
``manifest.json``) and its peak RSS (the child's own ``VmHWM``), next to the size of the float16
embeddings it reads.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CATEGORIES = ("Math", "Coding", "Generation", "Reasoning", "Brainstorming", "Factual QA", "Extraction")
# a skewed mix like real pools (Generation and Factual QA dominate)
MIX = np.array([0.08, 0.10, 0.30, 0.10, 0.07, 0.25, 0.10])
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima")


def _texts(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    w = rng.integers(0, len(WORDS), size=(n, 6))
    ins = [f"Write about {WORDS[a]} {WORDS[b]} and {WORDS[c]} (task {i})." for i, (a, b, c) in enumerate(w[:, :3].tolist())]
    res = [f"Here is a note on {WORDS[a]}, {WORDS[b]} and {WORDS[c]}, number {i}." for i, (a, b, c) in enumerate(w[:, 3:].tolist())]
    return ins, res


def build_pool(root: Path, n: int, d: int = 384, seed: int = 0) -> dict:
    """Write ``pool.parquet`` (Alpaca schema with data_id), ``scores.parquet`` (category and every
    metric the combination strategy reads) and seed ``root/work``'s embedding store."""
    import polars as pl

    from benchmarks.common import clustered
    from laser_fast.sampling.store import EmbeddingStore

    rng = np.random.default_rng(seed)
    ins, res = _texts(n, seed)
    ids = [f"s{i}" for i in range(n)]
    pl.DataFrame({"data_id": ids, "instruction": ins, "output": res}).write_parquet(root / "pool.parquet")
    cats = np.array(CATEGORIES, dtype=object)[rng.choice(len(CATEGORIES), size=n, p=MIX)]
    cols = {"data_id": ids, "category": cats.tolist()}
    for m in ("quality", "difficulty", "if_quality", "process_reward", "code_quality"):
        cols[m] = rng.random(n)
    pl.DataFrame(cols).write_parquet(root / "scores.parquet")
    store = EmbeddingStore(root / "work")
    t0 = time.perf_counter()
    step = 100_000
    for s in range(0, n, step):
        e = clustered(min(step, n - s), d=d, centers=2000, seed=seed + 1 + s // step)
        store.put(res[s : s + step], e, model=None, field="response")
    return {"rows": n, "embedding_bytes": n * d * 2, "put_s": round(time.perf_counter() - t0, 2)}


def run_select(root: Path, out: Path, budget: int, mode: str) -> dict:
    """One ``laser-fast select`` in a child process; its stage timings and peak RSS."""
    if out.exists():
        shutil.rmtree(out)
    rss_file = out.with_name(out.name + ".rss")
    # the child's own high-water mark (ru_maxrss would carry the forking parent's peak over exec)
    wrapper = ("import sys\nfrom laser_fast.cli import main\nfrom laser_fast.runtime.stats import peak_rss_mb\ntry:\n"
               "    rc = main(sys.argv[2:])\nfinally:\n    open(sys.argv[1], 'w').write(str(peak_rss_mb()))\nsys.exit(rc)\n")
    cmd = [sys.executable, "-c", wrapper, str(rss_file), "select", str(root / "pool.parquet"), "--scores", str(root / "scores.parquet"),
           "--budget", str(budget), "--strategy", "combination", "--profile", "none", "--mode", mode, "--seed", "0",
           "--proportions", "natural", "--keep-non-english", "--no-report", "--format", "parquet",
           "--workdir", str(root / "work"), "--output-dir", str(out), "-q"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, check=False, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"select failed ({p.returncode}): {p.stderr[-3000:]}")
    man = json.loads((out / "manifest.json").read_text())
    peak = rss_file.read_text()
    return {"wall_s": round(wall, 2), "peak_rss_mb": None if peak == "None" else float(peak),
            "stages_s": man.get("timings_seconds", {}), "selected": _total(man.get("counts", {}).get("selected")),
            "peak_after_stage": man.get("peak_rss_mb_after_stage") or {}}


def _total(v):
    """The manifest counts the selection per category: the total."""
    return int(sum(v.values())) if isinstance(v, dict) else v


def run(quick: bool, *, workroot: str | None = None, rows: int | None = None, budget: int | None = None) -> list[dict]:
    """Quick: 100k rows, budget 8k. Full: 1M rows, budget 80k (n/k = 12.5, as in the paper)."""
    n, budget = (rows, budget or rows // 12) if rows else ((100_000, 8_000) if quick else (1_000_000, 80_000))
    root = Path(workroot or os.environ.get("LASER_FAST_BENCH_TMP") or "/tmp/laser_fast_bench_e2e") / f"n{n}"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    out_rows = []
    try:
        info = build_pool(root, n)
        # the cold run computes and caches the token counts; the warm runs find every cache filled
        for mode, phase in (("kmeans", "cold"), ("kmeans", "warm"), ("greedy", "warm")):
            r = run_select(root, root / f"out-{mode}-{phase}", budget, mode)
            row = {"case": "e2e", "rows": n, "budget": budget, "mode": mode, "run": phase, "wall_s": r["wall_s"],
                   "peak_rss_mb": r["peak_rss_mb"], "embedding_mb": round(info["embedding_bytes"] / 2**20, 1),
                   "rss_over_embeddings": round(r["peak_rss_mb"] * 2**20 / info["embedding_bytes"], 2) if r["peak_rss_mb"] else None,
                   "selected": r["selected"],
                   "stages_s": " ".join(f"{k}={v:.1f}" for k, v in r["stages_s"].items() if isinstance(v, (int, float))),
                   # the process's high-water mark (MB) when each stage ended: which stage sets the peak
                   "peak_mb_after_stage": " ".join(f"{k}={v:.0f}" for k, v in r["peak_after_stage"].items() if isinstance(v, (int, float)))}
            out_rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out_rows
