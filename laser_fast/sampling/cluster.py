"""Step 3 (kmeans mode): PCA to 99% variance, k-means (faiss, or torch on a GPU faiss does not see), the best
record of each cluster above a preference percentile, then fill by preference.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from laser_fast.sampling.kmeans import kmeans_labels

logger = logging.getLogger(__name__)


#: a stratum whose float32 working copy (after PCA) would be larger than this is held as float16
#: and read in float32 chunks: half the memory of the largest array of a big select (300k rows x
#: 380 components: 228 MB instead of 456 MB); distances and means are still computed in float32
HALF_MIN_BYTES = 256 << 20


def pca_reduce(x: np.ndarray, variance: float = 0.99, *, chunk_rows: int = 4096, dtype: str | np.dtype = np.float32) -> tuple[np.ndarray, int]:
    """Project rows onto the principal components that keep ``variance`` of the total variance.

    Works in chunks (the covariance is d x d), so a float16 memmap is read once per pass.
    Returns ``(projected (n, c), c)``, float32 or ``dtype``; ``dtype="auto"`` stores the
    projection as float16 when float32 would take more than :data:`HALF_MIN_BYTES` (the k-means
    code reads it in float32 chunks).
    """
    n, d = x.shape
    mean = np.zeros(d, dtype=np.float64)
    for s in range(0, n, chunk_rows):
        mean += np.asarray(x[s : s + chunk_rows], dtype=np.float32).sum(0, dtype=np.float64)
    mean /= max(n, 1)
    # centred chunks in float32 (a float32 SYRK is twice as fast as float64 and the centring
    # removes the large common offset), chunk products summed in float64
    cov = np.zeros((d, d), dtype=np.float64)
    m32 = mean.astype(np.float32)
    for s in range(0, n, chunk_rows):
        c = np.asarray(x[s : s + chunk_rows], dtype=np.float32) - m32
        cov += c.T @ c
    evals, evecs = np.linalg.eigh(cov)
    evals, evecs = evals[::-1].clip(min=0), evecs[:, ::-1]
    total = evals.sum()
    if total <= 0:
        comps = 1
    else:
        comps = int(np.searchsorted(np.cumsum(evals) / total, variance) + 1)
        comps = min(max(comps, 1), d)
    # sign convention: largest |loading| positive, so the projection is deterministic
    w = evecs[:, :comps]
    w = w * np.sign(w[np.abs(w).argmax(0), np.arange(comps)])
    w32 = w.astype(np.float32)
    if isinstance(dtype, str) and dtype == "auto":
        dtype = np.float16 if n * comps * 4 > HALF_MIN_BYTES else np.float32
    out = np.empty((n, comps), dtype=dtype)
    for s in range(0, n, chunk_rows):
        out[s : s + chunk_rows] = (np.asarray(x[s : s + chunk_rows], dtype=np.float32) - m32) @ w32
    return out, comps


@dataclass
class ClusterResult:
    """What :func:`cluster_select_detailed` returns."""

    order: np.ndarray  #: candidate order: cluster bests (by preference) then the rest (by preference)
    n_cluster_best: int  #: how many leading entries of ``order`` are cluster bests
    labels: np.ndarray  #: cluster id per row (int64)
    threshold: float
    stats: dict = field(default_factory=dict)


def preference_order(preference: np.ndarray, seed: int = 0) -> np.ndarray:
    """Indices by descending preference; ties broken by a seeded random permutation (as the
    reference shuffles with a fixed seed before its stable sort)."""
    p = np.asarray(preference, dtype=np.float64)
    tie = np.random.default_rng(seed).permutation(p.size)
    return np.lexsort((tie, -p))


def cluster_select_detailed(
    embeddings: np.ndarray,
    preference: np.ndarray,
    k: int,
    *,
    threshold_percentile: float | None = 0.8,
    seed: int = 0,
    pca_variance: float | None = 0.99,
    niter: int = 25,
    num_threads: int = 0,
    method: str = "auto",
    kmeans_backend: str = "auto",
    device: str | None = None,
) -> ClusterResult:
    """The full kmeans-mode computation for one stratum (see :func:`cluster_select`).

    ``method``, ``kmeans_backend`` (``"auto"``: faiss GPU > torch CUDA > faiss CPU; ``"faiss"``;
    ``"torch"``) and ``device`` go to :func:`laser_fast.sampling.kmeans.kmeans_labels`; the stats
    record where k-means really ran (``kmeans_device``, e.g. ``"torch:cuda"``)."""
    # an array, a memmap, or an array-like that reads its rows on demand (shape, ndim, row
    # slices and np.asarray: see pipeline.StoreRows); PCA reads it in row chunks
    emb = embeddings if hasattr(embeddings, "shape") and hasattr(embeddings, "__getitem__") and hasattr(embeddings, "ndim") else np.asarray(embeddings)
    pref = np.asarray(preference, dtype=np.float64)
    n = emb.shape[0] if emb.ndim == 2 else 0
    if emb.ndim != 2:
        raise ValueError(f"embeddings must have shape (n, d), got {emb.shape}")
    if pref.shape != (n,):
        raise ValueError(f"preference must have shape ({n},), got {pref.shape}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    by_pref = preference_order(pref, seed)
    if n == 0 or k == 0:
        return ClusterResult(by_pref, 0, np.full(n, -1, dtype=np.int64), float("nan"), {"k": int(k), "n": int(n)})
    if k >= n:
        # every row is its own cluster: each is a cluster best
        return ClusterResult(by_pref, n, np.arange(n, dtype=np.int64), float("nan"), {"k": int(k), "n": int(n), "note": "k >= n: all rows selected"})
    if pca_variance:
        x, comps = pca_reduce(emb, pca_variance, dtype="auto")
    else:
        half = emb.dtype == np.float16 and n * emb.shape[1] * 4 > HALF_MIN_BYTES
        x, comps = np.ascontiguousarray(np.asarray(emb, dtype=np.float16 if half else np.float32)), emb.shape[1]
    labels, stats = kmeans_labels(x, k, seed=seed, niter=niter, num_threads=num_threads, method=method, backend=kmeans_backend, device=device)
    stats["pca_components"] = int(comps)
    if threshold_percentile is None:
        threshold = -np.inf
    else:
        threshold = float(np.percentile(pref, round(threshold_percentile * 100, 9)))  # 0.805: the 80.5th, not the 80th
    # best per cluster = first occurrence of each label in preference order
    lab_in_order = labels[by_pref]
    _, first = np.unique(lab_in_order, return_index=True)
    bests = by_pref[np.sort(first)]  # already in preference order
    bests = bests[pref[bests] > threshold]
    is_best = np.zeros(n, dtype=bool)
    is_best[bests] = True
    order = np.concatenate([bests, by_pref[~is_best[by_pref]]])
    sizes = np.bincount(labels, minlength=k)
    stats.update(
        clusters_nonempty=int((sizes > 0).sum()),
        cluster_size_min=int(sizes.min()),
        cluster_size_max=int(sizes.max()),
        cluster_bests_above_threshold=int(bests.size),
    )
    return ClusterResult(order.astype(np.int64), int(bests.size), labels, threshold, stats)


def cluster_select(embeddings: np.ndarray, preference: np.ndarray, k: int, *, threshold_percentile: float = 0.8, seed: int = 0) -> np.ndarray:
    """Select ``k`` diverse, high-preference rows of one stratum, as LASER's kmeans mode does.

    PCA keeping 99% of the variance, k-means with ``k`` clusters (faiss on the GPU when faiss
    sees one, else torch on CUDA when torch sees a GPU, else faiss on the CPU), the
    highest-preference row of each cluster when its preference is above the
    ``threshold_percentile`` percentile of the stratum's preferences, then the remaining slots
    filled with the highest-preference rows not yet taken.

    Args:
        embeddings: (n, d) float32/float16 array (a memmap works).
        preference: (n,) preference per row (higher is better).
        k: number of rows to select (= number of clusters); ``k >= n`` selects every row.
        threshold_percentile: percentile in [0, 1] of the stratum's preference a cluster best
            must exceed.
        seed: k-means seed and tie-break seed.

    Returns:
        int64 row indices: the cluster bests in preference order, then the fill.

    Raises:
        ValueError: on shape mismatches or negative ``k``.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(200, 16)).astype("float32")
        >>> idx = cluster_select(x, np.arange(200.0), 10)
        >>> len(idx), len(set(idx.tolist()))
        (10, 10)
    """
    res = cluster_select_detailed(embeddings, preference, k, threshold_percentile=threshold_percentile, seed=seed)
    return res.order[: min(k, res.order.size)]
