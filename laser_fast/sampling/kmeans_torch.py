"""k-means in torch: Lloyd iterations and nearest-centroid assignment on any torch device.

The GPU path for a plain ``pip install laser_fast`` on a CUDA machine: faiss-cpu has no GPU, torch
does (see :func:`laser_fast.runtime.devices.resolve_kmeans_backend`). It follows the faiss path
of :func:`laser_fast.sampling.kmeans.kmeans_labels` (``method="flat"``) step by step: the same
k-means++ seeding rule, the training sample of at most ``max_points_per_centroid`` rows per
cluster, ``niter`` iterations of assign-then-update with the objective recorded per iteration, and
a final assignment of every row to the nearest final centroid.

Memory: the distances are computed a block of rows at a time (``rows x k`` float32, about
:data:`CUDA_BLOCK_BYTES` on a GPU), so 1M x 384 with k = 25,000 needs the rows (1.5 GB as two
halves), the centroids and one block. On CUDA the distance product runs on half-precision rows
and centroids (float16, or bfloat16 when a value is too large for float16) with float32 outputs;
the centroid sums are float32 products of a one-hot block with the rows split into two halves
(``hi + lo`` carries about 22 bits of each float32 value, and one-hot products are exact), so the
update is deterministic: no atomics. On the CPU the rows stay float32 and the means come from the
compiled core's float64 sums (:func:`laser_fast.runtime.kernels.label_means_into`), as in the faiss
path. Deterministic for a fixed seed on a given device.
"""
from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

#: bytes of one block of distances (rows x k float32) on a GPU and on the CPU
CUDA_BLOCK_BYTES = 1 << 30
CPU_BLOCK_BYTES = 64 << 20
#: rows whose largest absolute value exceeds this are held as bfloat16 on a GPU instead of float16
HALF_MAX_ABS = 2.0**14
#: float16 rows keep their rounding remainders times this (see ``_Rows``)
LO_SCALE = 2.0**12
DTYPES = ("auto", "float32", "float16", "bfloat16")


def block_rows(n: int, k: int, device: str, chunk_rows: int | None = None) -> int:
    """Rows per block of the ``rows x k`` distance matrix: ``chunk_rows`` when given, else as
    many as fit :data:`CUDA_BLOCK_BYTES` (a GPU) or :data:`CPU_BLOCK_BYTES` (elsewhere)."""
    if chunk_rows:
        return max(1, min(max(n, 1), int(chunk_rows)))
    budget = CUDA_BLOCK_BYTES if str(device).startswith("cuda") else CPU_BLOCK_BYTES
    return max(1, min(max(n, 1), budget // (4 * max(k, 1))))


def _mm_f32(a, b):
    """``a @ b`` as float32: half inputs with float32 outputs where torch has that kernel
    (``torch.mm(..., out_dtype=float32)`` on CUDA), else the product of float32 copies."""
    import torch

    if a.dtype == torch.float32 and b.dtype == torch.float32:
        return a @ b
    if a.is_cuda:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError, NotImplementedError):  # an older torch: no mixed-precision mm
            pass
    return a.float() @ b.float()


def _chunks(x: np.ndarray, rows: int = 16384):
    return ((s, x[s : s + rows]) for s in range(0, x.shape[0], rows))


class _Rows:
    """Rows of ``x`` on a torch device: ``hi`` (the compute dtype) plus, for half dtypes, ``lo``
    (the rounding remainder times ``lo_scale``, so ``hi + lo / lo_scale`` is float32 to about 20
    bits), and the float32 squared norms ``sq``. On the CPU in float32, ``hi`` shares memory with
    ``x`` where it can.

    float16's remainders of components below 0.125 (all of a unit-length 384-wide embedding's)
    would be subnormal and keep only a few bits: they are stored times 2^12 (exact; with
    components up to :data:`HALF_MAX_ABS` the remainder stays below 8, times 2^12 below
    float16's largest value)."""

    def __init__(self, x: np.ndarray, device: str, dtype, lo_scale: float | None = None):
        import torch

        n, d = x.shape
        self.n, self.d, self.device, self.dtype = n, d, torch.device(device), dtype
        self.host = x if x.dtype == np.float32 else None  # float32 rows for the CPU update
        if dtype == torch.float32 and self.device.type == "cpu":
            x32 = np.ascontiguousarray(x, dtype=np.float32)
            if not x32.flags.writeable:  # torch.from_numpy wants a writable array (a read-only memmap)
                x32 = x32.copy()
            self.host = x32
            self.hi = torch.from_numpy(x32)
            self.lo, self.lo_scale = None, 1.0
            self.sq = torch.einsum("ij,ij->i", self.hi, self.hi)
            return
        self.hi = torch.empty((n, d), dtype=dtype, device=self.device)
        self.lo = None if dtype == torch.float32 else torch.empty((n, d), dtype=dtype, device=self.device)
        self.lo_scale = _lo_scale(x, dtype) if lo_scale is None else float(lo_scale)
        self.sq = torch.empty(n, dtype=torch.float32, device=self.device)
        for s, c in _chunks(x):
            c = np.ascontiguousarray(c, dtype=np.float32)
            t = torch.from_numpy(c if c.flags.writeable else c.copy()).to(self.device)
            e = s + t.shape[0]
            self.hi[s:e] = t
            if self.lo is not None:
                self.lo[s:e] = (t - self.hi[s:e].float()) * self.lo_scale
            self.sq[s:e] = torch.einsum("ij,ij->i", t, t)

    def f32(self, idx):
        """Rows ``idx`` as float32 (``hi`` plus the unscaled remainder)."""
        r = self.hi[idx].float()
        return r if self.lo is None else r + self.lo[idx].float() / self.lo_scale

    def host_f32(self) -> np.ndarray:
        """All rows as a float32 host array (for the host update), made once."""
        if self.host is None:
            self.host = np.ascontiguousarray(np.concatenate([self.f32(slice(s, s + 16384)).cpu().numpy()
                                                             for s in range(0, self.n, 16384)]) if self.n else
                                             np.zeros((0, self.d), np.float32))
        return self.host


def _abs_max(x: np.ndarray) -> float:
    return max((float(np.abs(c).max()) for _, c in _chunks(x)), default=0.0)


def _lo_scale(x: np.ndarray, dtype, amax: float | None = None) -> float:
    """The factor ``_Rows`` stores half-precision remainders times: :data:`LO_SCALE` for float16
    rows within :data:`HALF_MAX_ABS` (float16 asked for above it: remainders up to 16, kept
    unscaled), 1 otherwise."""
    import torch

    if dtype != torch.float16:
        return 1.0
    return LO_SCALE if (_abs_max(x) if amax is None else amax) <= HALF_MAX_ABS else 1.0


def _compute_dtype(x: np.ndarray, device: str, dtype: str):
    """The compute dtype and its remainders' factor (:func:`_lo_scale`), reading ``x`` at most once."""
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"unknown k-means compute dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if dtype == "auto":
        if not str(device).startswith("cuda"):
            return torch.float32, 1.0
        amax = _abs_max(x)
        t = torch.float16 if amax <= HALF_MAX_ABS else torch.bfloat16
        return t, _lo_scale(x, t, amax)
    t = getattr(torch, dtype)
    return t, _lo_scale(x, t)


def assign(rows: _Rows, cent, *, chunk: int, cent_sq=None):
    """Nearest centroid (squared L2) for every row, a ``chunk x k`` block at a time.

    Returns ``(labels int64 (n,), squared distances float32 (n,))`` on the rows' device."""
    import torch

    c32 = cent.float()
    csq = torch.einsum("ij,ij->i", c32, c32) if cent_sq is None else cent_sq
    ct = c32.to(rows.dtype).T.contiguous()
    lab = torch.empty(rows.n, dtype=torch.int64, device=rows.device)
    dist = torch.empty(rows.n, dtype=torch.float32, device=rows.device)
    for s in range(0, rows.n, chunk):
        e = min(rows.n, s + chunk)
        dd = _mm_f32(rows.hi[s:e], ct)  # x.c, then ||c||^2 - 2 x.c in place
        dd.mul_(-2.0).add_(csq)
        v, i = dd.min(1)
        lab[s:e] = i
        dist[s:e] = (v + rows.sq[s:e]).clamp_(min=0.0)
        del dd
    return lab, dist


def _update(rows: _Rows, lab, cent, *, chunk: int, on_device: bool):
    """New centroids (means of their rows; empty clusters keep ``cent``) and the counts."""
    import torch

    k, d = cent.shape
    if not on_device:
        from laser_fast.runtime.kernels import label_means_into

        out = cent.detach().cpu().numpy().astype(np.float32, copy=True)
        counts = label_means_into(rows.host_f32(), lab.cpu().numpy(), out)
        return torch.from_numpy(out).to(rows.device), torch.from_numpy(counts).to(rows.device)
    # one-hot block products: deterministic float32 sums (no atomics), exact one-hot products
    sums = torch.zeros((k, d), dtype=torch.float32, device=rows.device)
    for s in range(0, rows.n, chunk):
        e = min(rows.n, s + chunk)
        oh = torch.zeros((e - s, k), dtype=rows.dtype, device=rows.device)
        oh[torch.arange(e - s, device=rows.device), lab[s:e]] = 1
        oht = oh.T
        sums += _mm_f32(oht, rows.hi[s:e])
        if rows.lo is not None:
            sums += _mm_f32(oht, rows.lo[s:e]) / rows.lo_scale
        del oh, oht
    counts = torch.bincount(lab, minlength=k)
    nz = counts > 0
    new = cent.float().clone()
    new[nz] = sums[nz] / counts[nz].unsqueeze(1).float()
    return new, counts


def _split_empty(rows: _Rows, cent, counts, dist) -> int:
    """Give each empty cluster one of the rows farthest from their centroid (in place, as
    scikit-learn relocates); returns how many clusters were moved."""
    import torch

    empty = torch.nonzero(counts == 0).flatten()
    m = int(empty.numel())
    if m == 0:
        return 0
    far = torch.topk(dist, min(m, rows.n)).indices
    cent[empty[: far.numel()]] = rows.f32(far)
    return m


def kmeanspp_torch(rows: _Rows, k: int, *, seed: int = 0, trials: int | None = None):
    """k-means++ seeding on a torch device (greedy: the best of ``trials`` D^2 samples per step,
    as :func:`laser_fast.sampling.kmeans.kmeanspp_init`). The D^2 samples are drawn as an
    exponential race (the row minimising ``E / D^2`` with ``E ~ Exp(1)`` is a D^2 sample), so
    no floating-point prefix sum (not bitwise reproducible on a GPU) is needed. Returns the
    chosen row indices (int64 numpy array of k distinct rows)."""
    import torch

    n = rows.n
    trials = trials or 2 + int(np.log(k))
    gen = torch.Generator(device=rows.device)
    gen.manual_seed(int(seed))
    first = int(np.random.default_rng(seed).integers(n))
    chosen = [first]

    row = rows.f32
    xt = rows.hi.T
    dist = (rows.sq - 2.0 * _mm_f32(row(slice(first, first + 1)).to(rows.dtype), xt)[0] + rows.sq[first]).clamp_(min=0.0)
    dist[first] = 0.0  # exactly: half-precision products leave a chosen row a little off zero
    for _ in range(1, k):
        if float(dist.sum(dtype=torch.float64)) <= 0.0:  # fewer distinct rows than k: take unused rows
            rest = np.setdiff1d(np.arange(n), chosen)[: k - len(chosen)]
            chosen.extend(rest.tolist())
            break
        e = torch.empty((trials, n), dtype=torch.float32, device=rows.device).exponential_(generator=gen)
        cand = (e / dist).argmin(1)  # dist 0 (a chosen row) -> inf: never drawn while any is > 0
        dc = _mm_f32(row(cand).to(rows.dtype), xt)
        dc.mul_(-2.0).add_(rows.sq).add_(rows.sq[cand].unsqueeze(1)).clamp_(min=0.0)
        torch.minimum(dc, dist, out=dc)
        b = int(dc.sum(1, dtype=torch.float64).argmin())
        c = int(cand[b])
        chosen.append(c)
        dist = dc[b].clone()
        dist[c] = 0.0
    return np.asarray(chosen[:k], dtype=np.int64)


def lloyd_torch(
    x: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    niter: int = 25,
    device: str = "cpu",
    init: np.ndarray | None = None,
    max_points_per_centroid: int = 256,
    chunk_rows: int | None = None,
    dtype: str = "auto",
    update: str = "auto",
    seeding: str = "auto",
) -> tuple[np.ndarray, np.ndarray, str, list, dict]:
    """Flat k-means (Lloyd) with torch on ``device``.

    Args:
        x: (n, d) float32 or float16 rows.
        k: clusters.
        seed: seeds the seeding, the training sample and nothing else (deterministic per device).
        niter: Lloyd iterations (assign, then update), as faiss counts them.
        device: a torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        init: (k, d) initial centroids; default k-means++ (see :func:`_seed`).
        max_points_per_centroid: train on a seeded sample of at most this many rows per cluster
            (faiss's rule); every row is assigned to the final centroids.
        chunk_rows: rows per distance block (default: :func:`block_rows`).
        dtype: ``"auto"`` (float32 on the CPU; float16 on CUDA, bfloat16 when a value exceeds
            :data:`HALF_MAX_ABS`), or ``"float32"``, ``"float16"``, ``"bfloat16"``.
        update: ``"auto"`` (one-hot products on a GPU, the compiled core's float64 means on the
            CPU), ``"device"`` or ``"host"``.
        seeding: where k-means++ runs: ``"auto"`` (numpy on the CPU, exactly as the faiss path
            seeds; :func:`kmeanspp_torch` on a GPU), ``"numpy"`` or ``"torch"``.

    Returns:
        ``(centroids (k, d) float32, labels (n,) int64, init method, objective per iteration,
        info)``; ``info`` holds the device, dtype, block rows and seconds per iteration.

    Raises:
        ValueError: an unknown ``dtype``, ``update`` or ``seeding``.
    """
    import time

    import torch

    from laser_fast.sampling.kmeans import KMEANSPP_GREEDY_MAX_NK, KMEANSPP_MAX_NK, SEED_ROWS_PER_CLUSTER, kmeanspp_init

    if update not in ("auto", "device", "host"):
        raise ValueError(f"unknown update {update!r}: use 'auto', 'device' or 'host'")
    if seeding not in ("auto", "numpy", "torch"):
        raise ValueError(f"unknown seeding {seeding!r}: use 'auto', 'numpy' or 'torch'")
    n = x.shape[0]
    if k <= 1:
        return np.asarray(x, dtype=np.float32).mean(0, keepdims=True), np.zeros(n, dtype=np.int64), "mean", [], {"device": str(device)}
    if k >= n:
        return np.ascontiguousarray(x[:k], dtype=np.float32), np.arange(n, dtype=np.int64), "all rows", [], {"device": str(device)}
    dev = torch.device(device)
    tdtype, lo_scale = _compute_dtype(x, str(dev), dtype)
    on_device = update == "device" or (update == "auto" and dev.type != "cpu")
    chunk = block_rows(n, k, str(dev), chunk_rows)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        # --- seeding: the faiss path's rule (greedy k-means++ up to KMEANSPP_GREEDY_MAX_NK, one
        # trial up to KMEANSPP_MAX_NK); above it k-means++ on SEED_ROWS_PER_CLUSTER rows per cluster
        # (affordable here, where the faiss path falls back to random rows)
        nk = float(n) * float(k)
        if init is not None:
            init_method = "given"
            cent0 = np.ascontiguousarray(init[:k], dtype=np.float32)
        else:
            trials = None if nk <= KMEANSPP_GREEDY_MAX_NK else 1
            m = n if nk <= KMEANSPP_MAX_NK else min(n, int(SEED_ROWS_PER_CLUSTER * k))
            sub = np.sort(rng.choice(n, size=m, replace=False)) if m < n else None
            xs = x if sub is None else x[sub]
            init_method = ("k-means++ (greedy)" if trials is None else "k-means++") + ("" if sub is None else f" (sample of {m} rows)")
            if seeding == "numpy" or (seeding == "auto" and dev.type == "cpu"):
                cent0 = kmeanspp_init(np.ascontiguousarray(xs, dtype=np.float32), k, seed=seed, trials=trials)
            else:
                picks = kmeanspp_torch(_Rows(xs, str(dev), tdtype, lo_scale), k, seed=seed, trials=trials)
                cent0 = np.ascontiguousarray(xs[picks], dtype=np.float32)
        t_seed = time.perf_counter() - t0
        # --- Lloyd on the training rows (faiss's sample rule), then every row assigned
        mt = min(n, k * max_points_per_centroid) if max_points_per_centroid else n
        train = np.sort(rng.choice(n, size=mt, replace=False)) if mt < n else None
        rows = _Rows(x if train is None else x[train], str(dev), tdtype, lo_scale)
        cent = torch.from_numpy(cent0).to(dev)
        obj: list[float] = []
        moved_empty = 0
        t1 = time.perf_counter()
        for _ in range(niter):
            lab, dist = assign(rows, cent, chunk=chunk)
            obj.append(float(dist.sum(dtype=torch.float64)))
            cent, counts = _update(rows, lab, cent, chunk=chunk, on_device=on_device)
            moved_empty += _split_empty(rows, cent, counts, dist)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t_iter = time.perf_counter() - t1
        if train is not None:
            del rows
            rows = _Rows(x, str(dev), tdtype, lo_scale)
        lab, _ = assign(rows, cent, chunk=chunk)
        labels = lab.cpu().numpy().astype(np.int64, copy=False)
        centroids = np.ascontiguousarray(cent.float().cpu().numpy(), dtype=np.float32)
    info = {
        "device": str(dev),
        "compute_dtype": str(tdtype).replace("torch.", ""),
        "block_rows": int(chunk),
        "train_rows": int(mt),
        "empty_clusters_moved": int(moved_empty),
        "seconds_seed": round(t_seed, 3),
        "seconds_per_iteration": round(t_iter / max(niter, 1), 4),
        "seconds_total": round(time.perf_counter() - t0, 3),
    }
    return centroids, labels, init_method, obj, info
