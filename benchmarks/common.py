"""What several benchmark cases share: synthetic clustered vectors, the machine facts, timing,
coverage of a selection, and the real AlpacaEval embeddings (cached)."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def clustered(n: int, d: int = 384, centers: int = 200, seed: int = 0) -> np.ndarray:
    """Unit vectors around random centres with mixed spreads (uniform vectors make every method
    look alike)."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    lab = rng.integers(0, centers, n)
    scale = rng.choice([0.05, 0.1, 0.2, 0.4], size=centers)[lab][:, None]
    x = c[lab] + rng.normal(size=(n, d)).astype(np.float32) * scale.astype(np.float32) / np.sqrt(d) * 1.5
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def machine_info() -> dict:
    info = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}
    try:
        import faiss

        info["faiss"] = faiss.__version__
        info["faiss_gpus"] = faiss.get_num_gpus()
    except (ImportError, AttributeError, RuntimeError) as e:
        info["faiss"] = f"unavailable ({type(e).__name__})"
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except (ImportError, RuntimeError) as e:
        info["torch"] = f"unavailable ({type(e).__name__})"
    from laser_fast import _core

    info["core"] = _core.build_info()
    return info


def timed(fn, *a, **k):
    t0 = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t0




def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None




def coverage(x: np.ndarray, sel: np.ndarray, sample: int = 20_000, seed: int = 0) -> float:
    """Mean cosine distance of rows to their nearest selected row (unit rows), on a fixed sample
    of ``sample`` rows (all rows when fewer): O(sample * |sel| * d), never O(n^2)."""
    rows = np.arange(x.shape[0]) if x.shape[0] <= sample else np.sort(np.random.default_rng(seed).choice(x.shape[0], sample, replace=False))
    s = np.ascontiguousarray(x[sel])
    best = np.full(rows.size, -np.inf, dtype=np.float32)
    for i in range(0, rows.size, 4096):
        best[i : i + 4096] = (x[rows[i : i + 4096]] @ s.T).max(1)
    return float(np.mean(1.0 - best))




def bench_cache() -> Path:
    """Where the benchmarks keep what is slow to recompute (real embeddings): the embedding store
    is keyed by content, so any run over the same texts reuses it."""
    return Path(os.environ.get("LASER_FAST_BENCH_CACHE") or Path.home() / ".cache" / "laser_fast" / "bench")


def real_pool_embeddings(n: int | None, seed: int = 0):
    """MiniLM embeddings (float32, unit rows) of the shared AlpacaEval pool's responses and a
    real preference per row: the length-controlled AlpacaEval 2 win rate of the row's generator
    (``alpaca_eval_leaderboard.jsonl``; generators not on it get 0), ties broken by response
    length. ``n`` rows are sampled (all when None). Embeddings are computed once (slow on a CPU:
    ~20-40 responses/s) and cached under :func:`bench_cache`.

    Returns:
        ``(x, pref)`` or None when ``../shared/data`` is missing.
    """

    import polars as pl

    from benchmarks.data import DATA as data
    from benchmarks.data import alpaca_pool_rows
    from laser_fast.io.ingest import records_from_frame
    from laser_fast.sampling.embed import texts_for
    from laser_fast.sampling.store import EmbeddingStore

    rows = alpaca_pool_rows()
    if rows is None:
        return None
    rows = [{"instruction": r["instruction"], "output": r["output"], "generator": r.get("generator") or ""} for r in rows if r.get("output")]
    if n is not None and n < len(rows):
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), size=n, replace=False))
        rows = [rows[i] for i in pick]
    recs, _ = records_from_frame(pl.DataFrame(rows), origin="alpaca_eval_pool")
    lc = {}
    with open(data / "alpaca_eval_leaderboard.jsonl") as fh:
        for line in fh:
            r = json.loads(line)
            lc[r["generator"]] = float(r["length_controlled_winrate"])
    gens = [json.loads(e).get("generator", "") for e in recs["extra"].to_list()]
    texts = texts_for(recs, "response")
    lengths = np.array([len(t) for t in texts], dtype=np.float64)
    pref = np.array([lc.get(g, 0.0) for g in gens]) / 100.0 + 1e-6 * lengths / max(lengths.max(), 1.0)
    arr, _ = EmbeddingStore(bench_cache()).get(texts, model=None, field="response", show_progress=False)
    return np.asarray(arr, dtype=np.float32), pref




def head_jsonl(src, out, n: int):
    """The first ``n`` lines of a (gzipped) JSONL file ``src`` written to ``out``; returns ``out``."""
    import gzip

    opener = gzip.open if str(src).endswith(".gz") else open
    with opener(src, "rt") as f, open(out, "w") as g:
        for i, line in enumerate(f):
            if i >= n:
                break
            g.write(line)
    return out


def ray_case_missing(case: str, pool: Path) -> bool:
    """True (after printing why) when a Ray case cannot run here: no shared pool, or no Ray."""
    if not pool.exists():
        print(f"{case}: {pool} not present, skipped", flush=True)
        return True
    try:
        import ray  # noqa: F401
    except ImportError:
        print(f"{case}: Ray Data is not installed (pip install 'laser_fast[ray]'), skipped", flush=True)
        return True
    return False
