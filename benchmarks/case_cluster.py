"""Per-category selection: ours (PCA + faiss/two-level k-means + best per cluster + fill) vs the
reference path (scikit-learn KMeans / MiniBatchKMeans), on synthetic and real AlpacaEval embeddings."""
from __future__ import annotations

import json
import os
import time

import numpy as np

from benchmarks.common import clustered, coverage, real_pool_embeddings, timed


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


def run(quick: bool) -> list[dict]:
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


