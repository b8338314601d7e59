"""Run the benchmark cases side by side in one process and write results.json + results.md.

    python -m benchmarks [--quick] [--out DIR] [--cases greedy,cluster,embed,kernels,scorers,e2e]

Baselines that need extra packages (scikit-learn, chromadb) come with ``pip install '.[bench]'``
(``make bench`` installs them and runs ``--quick``); a missing one is reported in its column.

Cases:

* ``greedy``: the exact greedy min-distance filter -- ours (C++ core; ``auto`` = brute force
  until enough rows are accepted, then the exact cell index that prunes with the triangle
  inequality on angles) vs our brute force vs a numpy per-candidate loop vs a faiss IndexFlatIP
  add/search loop vs the reference's ChromaDB loop (cosine HNSW with the reference's settings;
  all with the reference's semantics: accept iff the nearest accepted row is farther than
  ``min_distance``), on synthetic clustered unit vectors at 20k and 100k (the loops at 20k in
  --quick; the ChromaDB loop stops after 15 min in the full run and its ratio is then a labelled
  projection) and ours alone at 1M in the full run; accepted sets are compared for equality.
* ``cluster``: per-category selection — ours (PCA 0.99 + faiss k-means, two-level above n*k =
  5e7, + best per cluster above the percentile + fill) vs the reference path (PCA 0.99,
  scikit-learn KMeans n_init=10 up to 25k rows, MiniBatchKMeans batch 2048 max_iter 50 above) at
  n/k = 12, on synthetic clustered data (random preference) and on real MiniLM embeddings of the
  AlpacaEval pool (preference = the generator's AlpacaEval 2 win rate); time, k-means objective
  in the PCA space, coverage (mean cosine distance of every row to its nearest selected row, on
  a 20k-row sample), mean preference of the selection, and rows taken as cluster bests.
* ``embed`` (``case_embed.py``): MiniLM records/s with length-sorted token-budget batching vs
  naive fixed-size batching vs one sample per forward, non-padding share; the float16 memmap
  store's write/read throughput.
* ``kernels`` (``case_kernels.py``): the numba statistics kernels vs per-record loops.
* ``scorers``: the model scorers on real AlpacaEval responses (``../shared/data``): token-budget
  batching (sorted by length, packed up to a token budget) vs one sample per forward pass;
  records/s, share of non-padding tokens, and the largest difference between the two results.
  Runs on CUDA in bf16 when torch sees a GPU, else on the CPU (the ``device`` column says which).
* ``e2e`` (``case_e2e.py``): ``laser-fast select`` in a child process on 100k (quick) or 1M
  synthetic rows whose embeddings and scores are cached: seconds per stage and peak RSS, cold
  (token counts computed) and warm.

Timings are wall-clock seconds on this machine; ratios compare methods within the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
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


def numpy_greedy(x: np.ndarray, min_distance: float) -> np.ndarray:
    thr = 1.0 - min_distance
    acc = np.empty_like(x)
    m = 0
    out = []
    for i in range(x.shape[0]):
        if m == 0 or (acc[:m] @ x[i]).max() < thr:
            acc[m] = x[i]
            m += 1
            out.append(i)
    return np.array(out, dtype=np.int64)


def faiss_greedy(x: np.ndarray, min_distance: float) -> np.ndarray:
    import faiss

    thr = 1.0 - min_distance
    index = faiss.IndexFlatIP(x.shape[1])
    out = []
    for i in range(x.shape[0]):
        q = x[i : i + 1]
        if index.ntotal == 0 or index.search(q, 1)[0][0, 0] < thr:
            index.add(q)
            out.append(i)
    return np.array(out, dtype=np.int64)


def chroma_greedy(x: np.ndarray, min_distance: float, *, time_limit: float | None = None) -> tuple[np.ndarray, int]:
    """The reference's filter loop over ChromaDB: an in-memory collection in cosine space with
    the reference's HNSW settings (search_ef 8000, M 32); per candidate one query for the nearest
    accepted row, and an insert when it is farther than ``min_distance``. Embeddings are passed
    in (the reference lets ChromaDB embed the text; that cost is left out here, which favours the
    baseline). Emptiness is checked with a counter instead of the reference's ``get()`` of all
    ids per candidate (also in the baseline's favour).

    Returns:
        ``(accepted, candidates_done)``: stops after ``time_limit`` seconds when given.
    """
    import chromadb

    client = chromadb.EphemeralClient()
    name = f"bench{time.monotonic_ns()}"
    col = client.create_collection(name=name, metadata={"hnsw:space": "cosine", "hnsw:search_ef": 8000, "hnsw:M": 32})
    out: list[int] = []
    t0 = time.perf_counter()
    i = 0
    try:
        for i in range(x.shape[0]):
            if time_limit is not None and (i & 255) == 0 and time.perf_counter() - t0 > time_limit:
                return np.array(out, dtype=np.int64), i
            q = x[i : i + 1].tolist()
            if out:
                d = col.query(query_embeddings=q, n_results=1, include=["distances"])["distances"][0][0]
            else:
                d = min_distance + 1.0
            if d > min_distance:
                col.add(ids=[str(i)], embeddings=q)
                out.append(i)
    finally:
        client.delete_collection(name)
    return np.array(out, dtype=np.int64), x.shape[0]


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def case_greedy(quick: bool) -> list[dict]:
    """Ours (auto: brute force, then the exact cell index) vs our brute force vs the numpy and
    faiss per-candidate loops. The loops run at 20k rows (and 100k in the full run); 1M rows
    (full run) is ours alone. Every accepted set is compared with ours."""
    from laser_fast.sampling.greedy import greedy_diverse

    greedy_diverse(clustered(3000, seed=9), min_distance=0.1, show_progress=False)  # warm-up outside the timing
    rows = []
    sizes = [20_000, 100_000] if quick else [20_000, 100_000, 1_000_000]
    loops_up_to = 20_000 if quick else 100_000
    chroma_limit = None if quick else 900.0
    brute_up_to = 100_000
    for n in sizes:
        x = clustered(n, seed=1)
        for md in (0.1,):
            st: dict = {}
            ours, t_ours = timed(greedy_diverse, x, min_distance=md, show_progress=False, stats=st)
            row = {
                "case": "greedy", "n": n, "d": x.shape[1], "min_distance": md, "accepted": int(ours.size),
                "ours_s": round(t_ours, 3), "ours_method": st["method"], "cells": st["cells"],
                "switched_at_accepted": st["switched_at"],
                "pairs_checked_share": round(st["pairs_scheduled"] / max(st["pairs_total"], 1), 5),
            }
            if n <= brute_up_to:
                brute, t_brute = timed(greedy_diverse, x, min_distance=md, show_progress=False, method="brute")
                row.update(brute_s=round(t_brute, 3), brute_equal=bool(np.array_equal(brute, ours)), speedup_vs_brute=round(t_brute / t_ours, 1))
            if n <= loops_up_to:
                ref, t_np = timed(numpy_greedy, x, md)
                row.update(numpy_loop_s=round(t_np, 3), numpy_equal=bool(np.array_equal(ref, ours)), speedup_vs_numpy=round(t_np / t_ours, 1))
                fa, t_fa = timed(faiss_greedy, x, md)
                row.update(faiss_flat_loop_s=round(t_fa, 3), faiss_equal=bool(np.array_equal(fa, ours)), speedup_vs_faiss_loop=round(t_fa / t_ours, 1))
            if n <= loops_up_to:
                if _have("chromadb"):
                    (ch, done), t_ch = timed(chroma_greedy, x, md, time_limit=chroma_limit)
                    # HNSW search is approximate: the set may differ; compare on the rows it reached
                    mine = ours[ours < done]
                    row.update(chroma_loop_s=round(t_ch, 3), chroma_candidates=int(done), chroma_equal=bool(np.array_equal(ch, mine)),
                               chroma_jaccard=round(len(np.intersect1d(ch, mine)) / max(len(np.union1d(ch, mine)), 1), 4))
                    if done == n:
                        row["speedup_vs_chroma_loop"] = round(t_ch / t_ours, 1)
                    else:  # stopped at the time limit: the ratio is a lower bound (its cost per candidate grows with the index)
                        row["speedup_vs_chroma_loop"] = f">= {t_ch / done * n / t_ours:.0f} (projected linearly from {done} of {n} candidates)"
                else:
                    row["chroma_loop_s"] = "chromadb not installed (pip install '.[bench]')"
            rows.append(row)
            print(json.dumps(row), flush=True)
        del x
    return rows


def coverage(x: np.ndarray, sel: np.ndarray, sample: int = 20_000, seed: int = 0) -> float:
    """Mean cosine distance of rows to their nearest selected row (unit rows), on a fixed sample
    of ``sample`` rows (all rows when fewer): O(sample * |sel| * d), never O(n^2)."""
    rows = np.arange(x.shape[0]) if x.shape[0] <= sample else np.sort(np.random.default_rng(seed).choice(x.shape[0], sample, replace=False))
    s = np.ascontiguousarray(x[sel])
    best = np.full(rows.size, -np.inf, dtype=np.float32)
    for i in range(0, rows.size, 4096):
        best[i : i + 4096] = (x[rows[i : i + 4096]] @ s.T).max(1)
    return float(np.mean(1.0 - best))


def reference_cluster_select(x: np.ndarray, pref: np.ndarray, k: int, pct: float = 0.8, seed: int = 42) -> tuple[np.ndarray, float, int]:
    """The reference's path, re-implemented for comparison (PCA 0.99 full SVD, KMeans n_init=10
    up to 25k rows else MiniBatchKMeans, best per cluster above the percentile, fill).

    Returns:
        ``(selected rows, k-means inertia, number of cluster bests above the threshold)``.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.decomposition import PCA

    order = np.argsort(-pref, kind="stable")
    xs, ps = x[order], pref[order]
    thr = np.percentile(ps, int(pct * 100))
    z = PCA(n_components=0.99, svd_solver="full").fit_transform(xs)
    if z.shape[0] > 25_000:
        km = MiniBatchKMeans(n_clusters=k, init="k-means++", max_iter=50, batch_size=2048, random_state=seed, n_init="auto")
    else:
        km = KMeans(n_clusters=k, random_state=seed, n_init=10)
    lab = km.fit_predict(z)
    chosen = []
    for c in np.unique(lab):
        idx = np.flatnonzero(lab == c)
        j = idx[np.argmax(ps[idx])]
        if ps[j] > thr:
            chosen.append(j)
    n_bests = len(chosen)
    taken = set(chosen)
    for j in range(len(ps)):
        if len(chosen) >= k:
            break
        if j not in taken:
            chosen.append(j)
            taken.add(j)
    return order[np.array(chosen)], float(km.inertia_), n_bests


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
    from laser_fast.sampling.store import EmbeddingStore
    from laser_fast.sampling.embed import texts_for
    from laser_fast.io.ingest import records_from_frame

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


def _reference_in_child(x: np.ndarray, pref: np.ndarray, k: int, limit: float | None):
    """:func:`reference_cluster_select` in a fresh (spawned) process, stopped after ``limit`` s.

    Spawned, not forked: a forked child of a process that has run OpenMP code (faiss, our
    k-means) hangs in its first OpenMP region (GNU OpenMP is not fork-safe), which would look
    like a slow reference. The data goes through a temporary ``.npz`` file.

    Returns:
        ``((selected, inertia, bests) or None when stopped, seconds)``.
    """
    if limit is None:
        return timed(reference_cluster_select, x, pref, k)
    import multiprocessing as mp
    import queue
    import tempfile

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.npz")
        np.savez(path, x=x, pref=pref)
        q = ctx.Queue()
        from benchmarks._reference import run_reference

        p = ctx.Process(target=run_reference, args=(path, k, q), daemon=True)
        t0 = time.perf_counter()
        p.start()
        try:
            out, t = q.get(timeout=limit)
        except queue.Empty:  # the reference did not finish in time
            p.kill()
            p.join()
            return None, time.perf_counter() - t0
        p.join()
    return out, t


#: the full run stops the reference path after this many seconds (300k/25k takes longer)
REFERENCE_LIMIT_S = float(os.environ.get("LASER_FAST_BENCH_REF_LIMIT_S", 1500))


def case_cluster(quick: bool) -> list[dict]:
    """Ours (flat faiss k-means for small n*k, two-level above) vs the reference path at n/k = 12.
    The objective is the k-means sum of squared distances in the PCA space; coverage is measured
    on a 20k-row sample."""
    from laser_fast.sampling.cluster import cluster_select_detailed

    # warm-up outside the timing (imports, numba and faiss initialisation), as for the reference
    w = clustered(600, seed=9, centers=20)
    cluster_select_detailed(w, np.random.default_rng(0).random(600), 50, seed=0)
    reference_cluster_select(w, np.random.default_rng(0).random(600), 50)
    rows = []
    shapes = [(6_000, 500, "synthetic"), (2_000, 166, "alpaca_eval")] if quick else [(60_000, 5_000, "synthetic"), (300_000, 25_000, "synthetic"), (32_183, 2_682, "alpaca_eval")]
    for n, k, data in shapes:
        if data == "synthetic":
            x = clustered(n, seed=2, centers=max(k // 4, 10))
            pref = np.random.default_rng(3).random(n)
        else:
            got = real_pool_embeddings(n if quick else None)
            if got is None:
                print("cluster: ../shared/data not found; the real-embedding row is skipped", flush=True)
                continue
            x, pref = got
            n = x.shape[0]
        res, t_ours = timed(cluster_select_detailed, x, pref, k, threshold_percentile=0.8, seed=0)
        ours = res.order[:k]
        got, t_ref = _reference_in_child(x, pref, k, None if quick else REFERENCE_LIMIT_S)
        row = {
            "case": "cluster", "data": data, "n": n, "k": k, "method": res.stats.get("method"), "ours_s": round(t_ours, 3),
            "ours_objective": round(float(res.stats["objective"]), 2), "ours_coverage": round(coverage(x, ours), 5),
            "ours_mean_pref": round(float(pref[ours].mean()), 4),
            # rows taken as a cluster best (the rest is filled by preference alone)
            "ours_cluster_bests": int(res.n_cluster_best), "device": res.stats.get("device"),
        }
        if got is None:
            row.update(reference_s=f"> {t_ref:.0f} (stopped)", speedup=f">= {t_ref / t_ours:.1f}")
        else:
            ref, ref_inertia, ref_bests = got
            row.update(reference_s=round(t_ref, 3), speedup=round(t_ref / t_ours, 1), reference_objective=round(ref_inertia, 2),
                       reference_coverage=round(coverage(x, ref), 5), reference_mean_pref=round(float(pref[ref].mean()), 4),
                       reference_cluster_bests=ref_bests)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _pool_sample(n: int, seed: int = 0):
    """``n`` real (instruction, response) records from the shared AlpacaEval pool, as an ingested table."""

    import polars as pl

    from benchmarks.data import alpaca_pool_rows
    from laser_fast.io.ingest import records_from_frame

    pool = alpaca_pool_rows()
    if pool is None:
        return None
    rows = [{"instruction": r["instruction"], "output": r["output"]} for r in pool if r.get("generator") != "NullModel" and r.get("output")]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
    recs, _ = records_from_frame(pl.DataFrame([rows[i] for i in sorted(pick)]), origin="alpaca_eval_pool")
    return recs.with_columns(pl.lit("Generation").alias("category"))


def case_scorers(quick: bool) -> list[dict]:
    import torch

    from laser_fast.scorers.stage import ScorerSettings, build_scorer

    n = 96 if quick else 192
    recs = _pool_sample(n)
    if recs is None:
        print("scorers: ../shared/data/alpaca_eval_pool.jsonl.gz not found; case skipped", flush=True)
        return []
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for name in ("ifd", "lite_quality"):
        res = {}
        for mode in ("batched", "one_per_forward"):
            sc = build_scorer(name, ScorerSettings(device=device))
            if mode == "one_per_forward":
                if not hasattr(sc, "max_batch_size"):
                    break
                sc.max_batch_size = 1
            sc.score(recs[:2])  # load the model and warm up outside the timing
            if hasattr(sc, "stats"):
                for k in list(sc.stats):
                    sc.stats[k] = type(sc.stats[k])(0)
            out, t = timed(sc.score, recs)
            st = dict(getattr(sc, "stats", {}) or {})
            res[mode] = (out, t, st)
        if "batched" not in res:
            continue
        out_b, t_b, st_b = res["batched"]
        row = {"case": "scorers", "scorer": name, "records": recs.height, "device": device,
               "batched_rec_s": round(recs.height / t_b, 2),
               "batched_non_padding": round(st_b["tokens"] / st_b["padded_tokens"], 3) if st_b.get("padded_tokens") else None}
        if "one_per_forward" in res:
            out_1, t_1, _ = res["one_per_forward"]
            key = sc.outputs[0]
            row.update(one_per_forward_rec_s=round(recs.height / t_1, 2), speedup=round(t_1 / t_b, 1),
                       max_abs_diff=float(np.nanmax(np.abs(out_b[key] - out_1[key]))))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def to_markdown(results: dict) -> str:
    m = results["machine"]
    head = (f"Machine: {m.get('cpus')} CPUs, {m.get('platform')}; faiss GPUs: {m.get('faiss_gpus')}; CUDA: {m.get('cuda')}; "
            f"load average at start: {m.get('load_average_at_start')}; {'--quick' if results.get('quick') else 'full run'}")
    out = [head, ""]
    for case, rows in results["cases"].items():
        if not rows:
            continue
        out.append(f"### {case}")
        # rows with the same columns share a table (a case may report several kinds of row)
        groups: dict[tuple, list[dict]] = {}
        for r in rows:
            groups.setdefault(tuple(r), []).append(r)
        for keys, grp in groups.items():
            out.append("| " + " | ".join(keys) + " |")
            out.append("|" + "---|" * len(keys))
            for r in grp:
                out.append("| " + " | ".join(str(r.get(k)) for k in keys) + " |")
            out.append("")
    return "\n".join(out)


CASES = ("greedy", "cluster", "embed", "kernels", "scorers", "e2e")


def _case(name: str):
    """The ``run(quick)`` function of a case (the later cases live in their own modules)."""
    if name in ("greedy", "cluster", "scorers"):
        return globals()[f"case_{name}"]

    def run(quick: bool) -> list[dict]:
        import importlib

        return importlib.import_module(f"benchmarks.case_{name}").run(quick)

    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks")
    ap.add_argument("--quick", action="store_true", help="small sizes (a few minutes on 2 cores)")
    ap.add_argument("--out", default="benchmarks/results", help="output folder")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    a = ap.parse_args(argv)
    cases = {name: _case(name) for name in CASES}
    results = {"quick": a.quick, "machine": machine_info(), "cases": {}}
    unknown = [c for c in a.cases.split(",") if c not in cases]
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}: use {', '.join(CASES)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from laser_fast.io.output import write_json, write_text

    for name in a.cases.split(","):
        t0 = time.perf_counter()
        results["cases"][name] = cases[name](a.quick)
        print(f"case {name}: {time.perf_counter() - t0:.0f} s", flush=True)
        # written after every case: a long run that fails late keeps what it measured
        write_json(out / "results.json", results)
        write_text(out / "results.md", to_markdown(results))
    print(to_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
