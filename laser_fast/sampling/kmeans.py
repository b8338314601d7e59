"""k-means for step 3: k-means++ seeding, flat Lloyd (faiss, or torch on a GPU that faiss does
not see) and the two-level k-means for large k.

Backends (:func:`kmeans_labels`, ``backend=``): ``"auto"`` runs faiss on the GPU when faiss sees
one, else torch on CUDA when torch sees a GPU (:mod:`laser_fast.sampling.kmeans_torch`: the
plain ``pip install laser_fast`` on a CUDA machine, whose faiss-cpu has no GPU), else faiss on
the CPU (torch on the CPU when faiss is missing); ``"faiss"`` and ``"torch"`` force one. The
stats record the backend and device that really ran (``kmeans_device``: ``"torch:cuda"``,
``"faiss:cpu"``, ``"faiss:cuda (N GPUs)"``).
"""
from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from laser_fast.runtime.devices import faiss_gpus, kmeans_device_label, resolve_kmeans_backend
from laser_fast.runtime.memory import release_free_heap

logger = logging.getLogger(__name__)


#: k-means++ seeding costs about n * k * d * trials flops; above these n*k products we fall back
#: to cheaper seeding (1 trial), then to faiss's random seeding.
KMEANSPP_GREEDY_MAX_NK = 1e8
KMEANSPP_MAX_NK = 2e9
#: ``method="auto"`` runs flat Lloyd up to this n*k product and the two-level k-means above it
#: (flat Lloyd costs n*k*d per iteration; two-level about 2*n*sqrt(k)*d).
TWO_LEVEL_MIN_NK = 5e7
#: the two-level path needs enough clusters for the coarse level to make sense
TWO_LEVEL_MIN_K = 64
#: k-means++ allocation: each cell is seeded up to ``SEED_CAP_FACTOR`` x its share by size
#: (+ ``SEED_CAP_EXTRA``) before the clusters are split by gain; a cell whose allocation reaches
#: its cap is seeded further (the cap doubles) and the split is redone
SEED_CAP_FACTOR = 2.0
SEED_CAP_EXTRA = 16
#: refinement: a pass is skipped (and passes stop) when at most this share of the rows move;
#: a probe on every REFINE_PROBE_STRIDE-th row estimates the first pass's moves
REFINE_MIN_MOVED = 5e-3
REFINE_PROBE_STRIDE = 8
#: rows per block of a refinement pass (each worker thread holds one rows x centroids block)
REFINE_CHUNK = 2048
#: two-level k-means: k-means++ seeding inside the coarse level and each cell runs on at most
#: this many rows per cluster (0: all rows); seeding streams the rows once per centre, and a
#: sample this size stays in cache. Measured on 2 cores, synthetic 60k/5k: 1.49 s ->
#: 1.14 s at a 0.05% higher objective; 300k/25k 14.1 s -> 10.4 s at 3.7% higher
SEED_ROWS_PER_CLUSTER = 6
#: Lloyd iterations for the coarse level (it only partitions the rows into cells)
COARSE_NITER = 10


def _f32(a: np.ndarray) -> np.ndarray:
    """``a`` as a C-contiguous float32 array (no copy when it is one already)."""
    return np.ascontiguousarray(a, dtype=np.float32)


def kmeanspp_init(
    x: np.ndarray, k: int, *, seed: int = 0, trials: int | None = None, return_potential: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """k-means++ seeding (greedy variant: the best of ``trials`` D^2 samples per step, as
    scikit-learn does with 2 + log k). Returns (k, d) float32 centroids, and with
    ``return_potential`` also the potential (sum of squared distances to the nearest chosen
    centre) after each of the k steps (float64, non-increasing)."""
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    trials = trials or 2 + int(np.log(k))
    sq = np.einsum("ij,ij->i", x, x)
    first = int(rng.integers(n))
    chosen = [first]
    dist = np.maximum(sq - 2.0 * (x @ x[first]) + sq[first], 0.0)
    pot = [float(dist.sum(dtype=np.float64))]
    xt = x.T
    for _ in range(1, k):
        cs = np.cumsum(dist, dtype=np.float64)
        total = float(cs[-1])
        if total <= 0:  # fewer distinct points than k: take unused rows
            rest = np.setdiff1d(np.arange(n), chosen)[: k - len(chosen)]
            chosen.extend(rest.tolist())
            pot.extend([0.0] * rest.size)
            break
        # D^2 sampling: rows drawn with probability proportional to their squared distance
        cand = np.minimum(np.searchsorted(cs, rng.random(trials) * total, side="right"), n - 1)
        dc = x[cand] @ xt
        dc *= -2.0
        dc += sq[None, :]
        dc += sq[cand][:, None]
        np.maximum(dc, 0.0, out=dc)
        np.minimum(dc, dist[None, :], out=dc)
        sums = dc.sum(1, dtype=np.float64)
        b = int(np.argmin(sums))
        chosen.append(int(cand[b]))
        dist = dc[b]
        pot.append(float(sums[b]))
    cent = np.ascontiguousarray(x[np.asarray(chosen[:k])], dtype=np.float32)
    if return_potential:
        return cent, np.minimum.accumulate(np.asarray(pot[:k], dtype=np.float64))
    return cent


def allocate_by_gain(potentials: list[np.ndarray], k: int) -> np.ndarray:
    """Split ``k`` clusters over cells given each cell's objective curve (``potentials[i][j]`` =
    objective with j+1 clusters, non-increasing): every non-empty cell gets one cluster, then the
    ``k - cells`` largest marginal gains across all cells (gains made non-increasing within a cell,
    ties by cell then step). A cell gets at most ``len(potentials[i])`` clusters."""
    caps = np.array([len(p) for p in potentials], dtype=np.int64)
    out = (caps > 0).astype(np.int64)
    extra = k - int(out.sum())
    if extra < 0 or extra > int((caps - out).sum()):
        raise ValueError(f"cannot split k={k} clusters over cells of capacity {int(caps.sum())}")
    if extra == 0:
        return out
    gains, owner = [], []
    for i, p in enumerate(potentials):
        if len(p) > 1:
            g = np.minimum.accumulate(np.maximum(-np.diff(np.asarray(p, dtype=np.float64)), 0.0))
            gains.append(g)
            owner.append(np.full(g.size, i, dtype=np.int64))
    g = np.concatenate(gains)
    o = np.concatenate(owner)
    top = np.lexsort((np.arange(g.size), -g))[:extra]  # non-increasing within a cell: a prefix per cell
    out += np.bincount(o[top], minlength=len(potentials))
    return out


def _omp_threads() -> int:
    import faiss

    return int(faiss.omp_get_max_threads())


def _set_omp_threads(t: int) -> None:
    import faiss

    faiss.omp_set_num_threads(int(t))


def _single_threaded_blas(enabled: bool = True):
    """Context limiting BLAS to one thread (threadpoolctl when installed, else a no-op)."""
    if enabled:
        try:
            from threadpoolctl import threadpool_limits

            return threadpool_limits(1, user_api="blas")
        except ImportError:  # pragma: no cover - optional
            pass
    return contextlib.nullcontext()


def _faiss_gpus() -> int:
    return faiss_gpus()


def _use_gpu(gpu: bool | None) -> bool:
    """faiss on its GPUs: ``gpu`` when given (False keeps faiss on the CPU), else when faiss sees one."""
    return _faiss_gpus() > 0 if gpu is None else bool(gpu)


def _seed_sample(n: int, k: int, rows_per_cluster: float, seed: int) -> np.ndarray | slice:
    """Rows (sorted) of a seeded sample of ``rows_per_cluster * k`` of ``n`` rows, or all rows
    (``slice(None)``) when that is not fewer or ``rows_per_cluster`` is 0."""
    m = int(rows_per_cluster * k) if rows_per_cluster else n
    return np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False)) if m < n else slice(None)


def _lloyd(
    x: np.ndarray, k: int, *, seed: int, niter: int, max_points_per_centroid: int = 256, init: np.ndarray | None = None,
    trials: int | None = None, seed_rows_per_cluster: float = 0, gpu: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, str, list]:
    """faiss k-means on ``x`` (on faiss's GPUs when ``gpu``; None: when faiss sees one),
    k-means++ seeded where affordable.

    Returns ``(centroids (k, d) float32, labels (n,) int64, init method, objective per iteration)``.
    """
    import faiss

    n, d = x.shape
    if k <= 1:
        return x.mean(0, keepdims=True).astype(np.float32), np.zeros(n, dtype=np.int64), "mean", []
    if k >= n:
        return np.ascontiguousarray(x[:k], dtype=np.float32), np.arange(n, dtype=np.int64), "all rows", []
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, gpu=_use_gpu(gpu), min_points_per_centroid=1, max_points_per_centroid=max_points_per_centroid, verbose=False)
    nk = float(n) * float(k)
    if init is not None:
        init_method = "given"
        km.train(x, init_centroids=np.ascontiguousarray(init[:k], dtype=np.float32))
    elif nk <= KMEANSPP_MAX_NK:
        init_method = "k-means++ (greedy)" if nk <= KMEANSPP_GREEDY_MAX_NK else "k-means++"
        # seeding streams the rows once per centre: on a sample of SEED_ROWS_PER_CLUSTER rows per
        # cluster it stays in cache (Lloyd then runs on every row)
        xs = x[_seed_sample(n, k, seed_rows_per_cluster, seed)]
        init = kmeanspp_init(xs, k, seed=seed, trials=trials if nk <= KMEANSPP_GREEDY_MAX_NK else 1)
        km.train(x, init_centroids=init)
    else:
        init_method = "random (faiss)"
        km.train(x)
    _, lab = km.index.search(x, 1)
    obj = [float(v) for v in np.asarray(km.obj)] if getattr(km, "obj", None) is not None else []
    return np.ascontiguousarray(km.centroids, dtype=np.float32), lab.ravel().astype(np.int64), init_method, obj


def allocate_clusters(sizes: np.ndarray, k: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Split ``k`` clusters over cells of ``sizes`` rows in proportion to ``weights`` (default: the
    sizes), capped at each cell's size (the excess is shared out again), by largest remainder (ties
    by cell index): the counts sum to exactly ``k``, no cell gets more clusters than rows, and every
    non-empty cell gets at least one (needs ``k`` >= the non-empty cells and ``k`` <= the rows).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    n = int(sizes.sum())
    if not 0 <= k <= n:
        raise ValueError(f"cannot split k={k} clusters over {n} rows")
    if k == n:
        return sizes.copy()
    w = sizes.astype(np.float64) if weights is None else np.where(sizes > 0, np.maximum(np.asarray(weights, dtype=np.float64), 0.0), 0.0)
    if w.sum() <= 0:
        w = sizes.astype(np.float64)
    # water-filling: cells whose share exceeds their size get their size; the rest share the remainder
    q = np.zeros(sizes.size)
    capped = np.zeros(sizes.size, dtype=bool)
    for _ in range(sizes.size + 1):
        free = ~capped & (w > 0)
        if not free.any():  # every weighted cell is full: the rest goes to the others by size
            w = np.where(capped, w, sizes.astype(np.float64))
            free = ~capped & (w > 0)
        left = k - sizes[capped].sum()
        q[capped] = sizes[capped]
        q[free] = left * w[free] / w[free].sum() if w[free].sum() > 0 else 0.0
        over = free & (q > sizes)
        if not over.any():
            break
        capped |= over
    out = np.minimum(np.floor(q + 1e-9).astype(np.int64), sizes)
    rem = k - int(out.sum())
    frac = np.where(out < sizes, q - out, -np.inf)
    out[np.lexsort((np.arange(sizes.size), -frac))[:rem]] += 1
    # every non-empty cell gets one cluster, taken from the most over-served cell with >= 2
    for i in np.flatnonzero((sizes > 0) & (out == 0)):
        over = np.where(out >= 2, out - q, -np.inf)
        j = int(np.argmax(over))
        if not np.isfinite(over[j]):
            raise ValueError(f"cannot give each of the non-empty cells a cluster with k={k}")
        out[j] -= 1
        out[i] += 1
    return out


def _sq_dist_to(x: np.ndarray, c: np.ndarray, lab: np.ndarray, chunk: int = 8192) -> np.ndarray:
    out = np.empty(x.shape[0], dtype=np.float32)
    for s in range(0, x.shape[0], chunk):
        diff = _f32(x[s : s + chunk]) - c[lab[s : s + chunk]]
        out[s : s + chunk] = np.einsum("ij,ij->i", diff, diff)
    return out


def _centroids_of(x: np.ndarray, lab: np.ndarray, k: int, old: np.ndarray | None = None, *, inplace: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Means of the clusters (float64 sums, a block of clusters at a time:
    :func:`laser_fast.runtime.kernels.label_means_into`); empty clusters keep ``old`` (or zeros).
    ``inplace``: the means are written into ``old`` (a float32 array the caller owns), saving a
    k x d copy."""
    from laser_fast.runtime.kernels import label_means_into

    if old is None:
        cent = np.zeros((k, x.shape[1]), dtype=np.float32)
    elif inplace and old.dtype == np.float32 and old.flags.c_contiguous:
        cent = old
    else:
        cent = np.array(old, dtype=np.float32)
    counts = label_means_into(x, lab, cent)
    return cent, counts


def kmeans_objective(x: np.ndarray, labels: np.ndarray, k: int | None = None) -> float:
    """Sum of squared distances of the rows to the mean of their cluster (O(n d))."""
    k = int(labels.max()) + 1 if k is None else k
    x = x if isinstance(x, np.ndarray) and x.dtype in (np.float16, np.float32) else np.asarray(x, dtype=np.float32)
    cent, _ = _centroids_of(x, labels, k)
    return float(_sq_dist_to(x, cent, labels).astype(np.float64).sum())


def _fill_empty(x: np.ndarray, lab: np.ndarray, cent: np.ndarray, k: int) -> int:
    """Give each empty cluster the row farthest from its centroid among clusters with >= 2 rows
    (in place); returns how many clusters were filled."""
    counts = np.bincount(lab, minlength=k)
    empty = np.flatnonzero(counts == 0)
    if empty.size == 0 or x.shape[0] < k:
        return 0
    d = _sq_dist_to(x, cent, lab)
    filled = 0
    for c in empty:
        cand = np.flatnonzero(counts[lab] >= 2)
        if cand.size == 0:
            break
        j = int(cand[np.argmax(d[cand])])
        counts[lab[j]] -= 1
        lab[j] = c
        counts[c] = 1
        d[j] = 0.0
        cent[c] = x[j]
        filled += 1
    return filled


def kmeans_two_level(
    x: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    niter: int = 25,
    coarse_k: int | None = None,
    refine_passes: int = 3,
    neighbours: int = 6,
    num_threads: int = 0,
    allocation: str = "size",
    seed_trials: int | None = None,
    faiss_gpu: bool | None = None,
) -> tuple[np.ndarray, dict]:
    """Two-level k-means: ``coarse_k`` (default ~sqrt(k)) coarse clusters, then each coarse cell
    split into clusters, then faiss k-means inside each cell, then up to ``refine_passes`` Lloyd
    passes where each row may move to any fine centroid of its own or its ``neighbours``
    most-shared neighbouring coarse cells (a row only moves when the new centroid is nearer, so the
    objective never increases; the passes are skipped when a probe on every
    :data:`REFINE_PROBE_STRIDE`-th row finds at most :data:`REFINE_MIN_MOVED` of the rows would
    move).

    ``allocation``: ``"size"`` splits the ``k`` clusters over the cells in proportion to their
    sizes (largest remainder, exactly ``k`` in all); ``"kmeans++"`` seeds each cell's k-means++
    potential curve first and gives the clusters to the cells where they lower the potential most
    (a lower objective on mixed spreads, at several times the seeding cost). k-means++ seeding
    runs on :data:`SEED_ROWS_PER_CLUSTER` rows per cluster.

    Cost: coarse n*sqrt(k)*d*niter + fine sum(n_i*k_i)*d*niter ~ n*sqrt(k)*d*niter, instead of
    flat Lloyd's n*k*d*niter. ``faiss_gpu``: run faiss on its GPUs (None: when faiss sees one;
    False keeps it on the CPU). Returns ``(labels int64 in [0, k), stats)``; every cluster is
    non-empty when n >= k.
    """
    # float16 rows (a large stratum, see HALF_MIN_BYTES) stay float16 and are read in float32 blocks
    x = np.ascontiguousarray(x) if getattr(x, "dtype", None) == np.float16 else _f32(x)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"two-level k-means needs 1 <= k <= n, got k={k}, n={n}")
    # one BLAS thread throughout: faiss's OpenMP threads and OpenBLAS's threads oversubscribe the
    # cores otherwise (measured 4x slower on 2 busy cores); parallelism comes from faiss's OpenMP
    # and from running the cells in a thread pool
    # faiss's OpenMP thread count, read before the BLAS limit: limiting faiss's OpenMP build of
    # OpenBLAS to one thread also sets faiss's OpenMP runtime to one thread, which left the cell
    # workers and faiss's own loops on one core (measured: 19.4 s -> 13.0 s at 300k/24k on 2
    # cores once restored)
    omp = _omp_threads()
    gpu = _use_gpu(faiss_gpu)
    with _single_threaded_blas(not gpu):
        _set_omp_threads(omp)
        return _two_level(x, k, seed, niter, coarse_k, refine_passes, neighbours, num_threads or omp, allocation, seed_trials, gpu)


def _two_level(x, k, seed, niter, coarse_k, refine_passes, neighbours, num_threads, allocation, seed_trials, gpu):
    n, d = x.shape
    rng = np.random.default_rng(seed)
    k1 = int(coarse_k or max(2, round(np.sqrt(k))))
    k1 = max(1, min(k1, k, n))
    t0 = time.perf_counter()
    # --- coarse level: k-means on a sample (<= 256 rows per coarse cluster), assign all rows
    m = min(n, k1 * 256)
    sample = np.sort(rng.choice(n, size=m, replace=False)) if m < n else np.arange(n)
    coarse_c, _, _, _ = _lloyd(_f32(x[sample]), k1, seed=seed, niter=min(niter, COARSE_NITER), seed_rows_per_cluster=SEED_ROWS_PER_CLUSTER, gpu=gpu)
    top = min(2, k1)
    _, near = _search(coarse_c, x, top, gpu=gpu)
    cell = near[:, 0].astype(np.int64)
    sizes = np.bincount(cell, minlength=k1)
    kc_size = allocate_clusters(sizes, k)
    t_coarse = time.perf_counter() - t0
    # --- fine level: cells run in parallel, each single-threaded (faiss's OpenMP threads and
    # OpenBLAS's threads fight over cores on small problems)
    t0 = time.perf_counter()
    order = np.argsort(cell, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    cells_by_size = [int(i) for i in np.argsort(-sizes, kind="stable") if sizes[i] > 0]
    workers = 1 if gpu else max(1, min(num_threads or _omp_threads(), len(cells_by_size)))

    def run_cells(fn, cells):
        if workers == 1:
            prev = _omp_threads()
            if not gpu:
                _set_omp_threads(1)
            try:
                return [fn(i) for i in cells]
            finally:
                _set_omp_threads(prev)
        try:
            with ThreadPoolExecutor(workers, initializer=_set_omp_threads, initargs=(1,)) as ex:
                return list(ex.map(fn, cells))
        finally:
            release_free_heap()

    seeds: dict[int, np.ndarray] = {}
    seed_rounds = seeded = 0
    if allocation == "size":
        kc = kc_size
    elif allocation == "kmeans++":
        # each cell's k-means++ potential curve (from about twice its share by size, extended
        # while the allocation uses all of it); the clusters go where they lower the potential
        # most, so wide cells get more than dense tight ones
        caps = np.minimum(sizes, np.ceil(SEED_CAP_FACTOR * kc_size).astype(np.int64) + SEED_CAP_EXTRA)

        def seed_cell(i: int) -> tuple[int, np.ndarray, np.ndarray]:
            # seeded on a sample; its potential is scaled up to the whole cell
            rows = order[starts[i] : starts[i + 1]]
            rows = rows[_seed_sample(rows.size, int(caps[i]), SEED_ROWS_PER_CLUSTER, seed + 1 + i)]
            c, pot = kmeanspp_init(_f32(x[rows]), int(caps[i]), seed=seed + 1 + i, trials=seed_trials, return_potential=True)
            return i, c, pot * (sizes[i] / rows.size)

        pots = [np.zeros(0)] * k1
        todo = cells_by_size
        for _ in range(32):
            seed_rounds += 1
            seeded += int(caps[todo].sum())
            for i, c, pot in run_cells(seed_cell, todo):
                seeds[i] = c
                pots[i] = pot
            kc = allocate_by_gain(pots, k)
            full = (kc >= caps) & (caps < sizes)
            if not full.any():
                break
            caps[full] = np.minimum(sizes[full], 2 * caps[full])  # a cell that wants more: double it
            todo = [i for i in cells_by_size if full[i]]
    else:
        raise ValueError(f"unknown allocation {allocation!r}: use 'kmeans++' or 'size'")
    t_seed = time.perf_counter() - t0
    t0 = time.perf_counter()
    labels = np.empty(n, dtype=np.int64)
    cent = np.empty((k, d), dtype=np.float32)
    cstarts = np.concatenate([[0], np.cumsum(kc)])

    def fine(i: int) -> tuple[int, np.ndarray, np.ndarray]:
        rows = order[starts[i] : starts[i + 1]]
        c, lab, _, _ = _lloyd(_f32(x[rows]), int(kc[i]), seed=seed + 1 + i, niter=niter, max_points_per_centroid=1 << 30, init=seeds.get(i), trials=seed_trials,
                          seed_rows_per_cluster=SEED_ROWS_PER_CLUSTER, gpu=gpu)
        return i, c, lab

    for i, c, lab in run_cells(fine, [i for i in cells_by_size if kc[i] > 0]):
        cent[cstarts[i] : cstarts[i + 1]] = c
        labels[order[starts[i] : starts[i + 1]]] = lab + cstarts[i]
    t_fine = time.perf_counter() - t0
    obj_fine = None
    # --- refinement: Lloyd passes restricted to neighbouring coarse cells
    t0 = time.perf_counter()
    moved: list[int] = []
    probe = None
    if refine_passes > 0 and k1 > 1 and neighbours > 0:
        # neighbours of a cell: the cells most often second-nearest for its rows
        pair = np.bincount(cell * k1 + near[:, 1], minlength=k1 * k1).reshape(k1, k1)
        np.fill_diagonal(pair, -1)
        nb = np.argsort(-pair, axis=1, kind="stable")[:, : min(neighbours, k1 - 1)]
        cent, _ = _centroids_of(x, labels, k, cent, inplace=True)
        xsq = np.concatenate([np.einsum("ij,ij->i", c, c) for c in map(_f32, _chunks(x))]) if n else np.zeros(0, np.float32)
        csq = np.einsum("ij,ij->i", cent, cent)

        def refine_cell(i: int, stride: int = 1, apply: bool = True) -> int:
            rows = order[starts[i] : starts[i + 1]][::stride]
            cells = [i] + [int(j) for j in nb[i] if pair[i, j] > 0]
            cids = np.concatenate([np.arange(cstarts[j], cstarts[j + 1]) for j in cells])
            cc = cent[cids]
            ccsq = csq[cids]
            moved_here = 0
            for s in range(0, rows.size, REFINE_CHUNK):
                r = rows[s : s + REFINE_CHUNK]
                xr = _f32(x[r])
                # ccsq - 2 x.c, built in place (one block of distances per worker thread)
                dd = xr @ cc.T
                dd *= -2.0
                dd += ccsq[None, :]
                b = dd.argmin(1)
                best = dd[np.arange(r.size), b]
                cur = csq[labels[r]] - 2.0 * np.einsum("ij,ij->i", xr, cent[labels[r]])
                new = cids[b]
                # move only on a real improvement (beyond float32 rounding of the expansion)
                better = (new != labels[r]) & (best < cur - 1e-6 * (xsq[r] + ccsq[b]))
                moved_here += int(better.sum())
                if apply:
                    labels[r[better]] = new[better]
            return moved_here

        # a probe on every REFINE_PROBE_STRIDE-th row first: when hardly any row would move (the
        # fine level already converged across cell borders) the full passes are skipped
        stride = max(1, min(REFINE_PROBE_STRIDE, n // 4096))
        if stride > 1:
            probe = int(sum(run_cells(lambda i: refine_cell(i, stride, False), cells_by_size))) * stride
        if probe is None or probe > n * REFINE_MIN_MOVED:
            obj_fine = float(_sq_dist_to(x, cent, labels).astype(np.float64).sum())  # cent: the fine level's means
            for _ in range(refine_passes):
                # cells own disjoint rows and read the pass's fixed centroids: safe in parallel
                n_moved = int(sum(run_cells(refine_cell, cells_by_size)))
                cent, _ = _centroids_of(x, labels, k, cent, inplace=True)
                csq = np.einsum("ij,ij->i", cent, cent)
                moved.append(n_moved)
                if n_moved <= n * REFINE_MIN_MOVED:  # converged enough: a pass costs about n * 7 * k/k1 * d
                    break
    t_refine = time.perf_counter() - t0
    filled = _fill_empty(x, labels, cent, k)
    stats = {
        "method": "two-level",
        "coarse_k": int(k1),
        "fine_k_per_cell_min": int(kc[kc > 0].min()),
        "fine_k_per_cell_max": int(kc.max()),
        "refine_passes": len(moved),
        "refine_moved": moved,
        "refine_probe_moves": probe,
        "objective_before_refine": obj_fine,
        "empty_clusters_filled": int(filled),
        "allocation": allocation,
        "workers": int(workers),
        "seconds_coarse": round(t_coarse, 3),
        "seconds_seed": round(t_seed, 3),
        "seed_rounds": seed_rounds,
        "seed_centres": seeded,
        "seconds_fine": round(t_fine, 3),
        "seconds_refine": round(t_refine, 3),
    }
    return labels, stats


def _search(c: np.ndarray, x: np.ndarray, top: int, gpu: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest ``top`` rows of ``c`` for every row of ``x`` (faiss flat L2; on faiss's GPUs when
    ``gpu``, None: when faiss sees one)."""
    import faiss

    index = faiss.IndexFlatL2(c.shape[1])
    if _use_gpu(gpu):
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(np.ascontiguousarray(c, dtype=np.float32))
    if x.dtype == np.float32:
        return index.search(_f32(x), top)
    parts = [index.search(_f32(xc), top) for xc in _chunks(x)]  # float16 rows: float32 a chunk at a time
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _chunks(x: np.ndarray, rows: int = 16384):
    """Consecutive row blocks of ``x`` (views)."""
    return (x[s : s + rows] for s in range(0, x.shape[0], rows))


def kmeans_labels(
    x: np.ndarray, k: int, *, seed: int = 0, niter: int = 25, num_threads: int = 0, method: str = "auto",
    backend: str = "auto", device: str | None = None, chunk_rows: int | None = None,
) -> tuple[np.ndarray, dict]:
    """Cluster rows of ``x`` into ``k`` clusters with faiss or torch.

    Args:
        x: (n, d) float32 rows (float16 rows of a large stratum are read in float32 blocks).
        k: clusters.
        seed: seeding and sampling seed.
        niter: Lloyd iterations.
        num_threads: CPU threads for faiss (0 = all).
        method: ``"flat"`` (one k-means, k-means++ seeded where affordable), ``"two-level"``
            (:func:`kmeans_two_level`, faiss only), or ``"auto"``: two-level with faiss while
            n*k > :data:`TWO_LEVEL_MIN_NK` and k >= :data:`TWO_LEVEL_MIN_K`, else flat (always
            flat with torch: on a GPU flat Lloyd is affordable).
        backend: ``"auto"`` (faiss GPU > torch CUDA > faiss CPU, see
            :func:`laser_fast.runtime.devices.resolve_kmeans_backend`), ``"faiss"`` or ``"torch"``.
        device: ``None`` / ``"auto"`` or a torch device (``"cpu"``, ``"cuda:1"``) that narrows
            the choice; for backend torch, the device it runs on.
        chunk_rows: rows per ``rows x k`` distance block of the torch backend (default: about
            1 GiB of float32 distances on a GPU, 64 MiB on the CPU).

    Returns:
        Labels (n,) int64 and stats: ``objective`` (sum of squared distances to the cluster
        means), ``backend``, ``device`` and ``kmeans_device`` (``"torch:cuda"``, ``"faiss:cpu"``,
        ``"faiss:cuda (N GPUs)"``: where it really ran), ``method``, ``init``,
        ``objective_per_iteration``.

    Raises:
        ValueError: an unknown method or backend, or ``method="two-level"`` with the torch backend.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
        >>> lab, st = kmeans_labels(x, 5, backend="torch", device="cpu")
        >>> st["kmeans_device"], sorted(set(lab.tolist())) == list(range(5))
        ('torch:cpu', True)
    """
    be, dev = resolve_kmeans_backend(backend, device)
    x = np.ascontiguousarray(x) if getattr(x, "dtype", None) == np.float16 else _f32(x)
    n, d = x.shape
    if method == "auto":
        big = float(n) * float(k) > TWO_LEVEL_MIN_NK and k >= TWO_LEVEL_MIN_K and k < n
        method = "two-level" if big and be == "faiss" else "flat"
    if method not in ("flat", "two-level"):
        raise ValueError(f"unknown k-means method {method!r}: use 'auto', 'flat' or 'two-level'")
    if method == "two-level" and be == "torch":
        raise ValueError("the two-level k-means runs on faiss: use method 'flat' or 'auto' with backend 'torch', or backend 'faiss'")
    stats = {"backend": be, "device": dev, "kmeans_device": kmeans_device_label(be, dev), "k": int(k), "n": int(n), "dim": int(d), "rows_dtype": str(x.dtype)}
    if be == "torch":
        from laser_fast.sampling.kmeans_torch import lloyd_torch

        _, lab, init_method, obj, info = lloyd_torch(x, k, seed=seed, niter=niter, device=dev, chunk_rows=chunk_rows)
        stats.update(method="flat", init=init_method, objective_per_iteration=obj, torch=info)
    else:
        import faiss

        if num_threads > 0:
            faiss.omp_set_num_threads(num_threads)
        gpu = dev != "cpu"
        if method == "flat":
            _, lab, init_method, obj = _lloyd(_f32(x), k, seed=seed, niter=niter, gpu=gpu)
            stats.update(method="flat", init=init_method, objective_per_iteration=obj)
        else:
            lab, st = kmeans_two_level(x, k, seed=seed, niter=niter, num_threads=num_threads, faiss_gpu=gpu)
            stats.update(st)
    stats["objective"] = kmeans_objective(x, lab, k)
    return lab, stats
