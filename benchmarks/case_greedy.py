"""The exact greedy min-distance filter: ours (C++ core) vs brute force, a numpy per-candidate loop,
a faiss IndexFlatIP loop and the reference's ChromaDB loop (see benchmarks/__main__.py)."""
from __future__ import annotations

import json
import time

import numpy as np

from benchmarks.common import _have, clustered, timed


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




def run(quick: bool) -> list[dict]:
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


