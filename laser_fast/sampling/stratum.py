"""Selection inside one stratum: k-means best-per-cluster, greedy, or top by preference."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from laser_fast.config import SelectOptions
from laser_fast.runtime.engine import current_executor
from laser_fast.runtime.memory import release_free_heap
from laser_fast.runtime.progress import progress_bar

logger = logging.getLogger(__name__)


def _take_budget(order: np.ndarray, target: int, lengths: np.ndarray | None) -> np.ndarray:
    """First ``target`` entries of ``order`` (records), or, with token ``lengths``, every entry in
    order that still fits into ``target`` tokens."""
    if lengths is None:
        return order[:target]
    ln = lengths[order]
    keep = np.zeros(order.size, dtype=bool)
    used = 0
    for i, l in enumerate(ln):
        if used + l <= target:
            keep[i] = True
            used += l
            if used == target:
                break
    return order[keep]


class StoreRows:
    """Rows ``idx`` of a (memory-mapped) float16 store, read on demand.

    A stand-in for the gathered array that never holds all of it as float16: slicing
    (``view[a:b]``) reads just those rows, and ``np.asarray(view, dtype)`` fills one array of the
    requested dtype chunk by chunk. Rows are read in ascending file order and the memmap's pages
    are handed back to the kernel after each read (``MADV_DONTNEED``), so reading a stratum does
    not leave the store resident in this process. PCA streams over it in chunks; greedy converts
    it once, straight to float32.
    """

    ndim = 2

    def __init__(self, arr: np.ndarray, idx: np.ndarray, *, chunk_rows: int = 4096):
        self.arr = arr
        self.idx = np.asarray(idx, dtype=np.int64)
        self.chunk_rows = int(chunk_rows)
        self.shape = (int(self.idx.size), int(arr.shape[1]))
        self.dtype = np.dtype(np.float16) if arr.dtype == np.float16 else np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, rows: np.ndarray, out: np.ndarray) -> None:
        from laser_fast.runtime.memory import release_pages

        order = np.argsort(rows, kind="stable")
        for s in range(0, rows.size, self.chunk_rows):
            o = order[s : s + self.chunk_rows]
            out[o] = self.arr[rows[o]]
            release_pages(self.arr)  # the file pages just read leave this process's RSS

    def subset(self, rows: np.ndarray) -> StoreRows:
        """The rows ``rows`` of this view, as a view (nothing is read)."""
        return StoreRows(self.arr, self.idx[np.asarray(rows, dtype=np.int64)], chunk_rows=self.chunk_rows)

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("StoreRows supports row slices (view[a:b]) and np.asarray(view)")
        rows = self.idx[key]
        out = np.empty((rows.size, self.shape[1]), dtype=self.dtype)
        self._read(rows, out)
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.empty(self.shape, dtype=self.dtype if dtype is None else dtype)
        self._read(self.idx, out)
        return out


def gather_rows(arr: np.ndarray, idx: np.ndarray, *, chunk_rows: int = 16384) -> np.ndarray:
    """Rows ``idx`` of a (memory-mapped) float16 store as one float16 array, in ``idx``'s order
    (see :class:`StoreRows`, which reads the same rows without holding them all)."""
    return np.asarray(StoreRows(arr, idx, chunk_rows=chunk_rows))


def select_stratum(
    emb_fn,
    pref: np.ndarray,
    target: int,
    *,
    mode: str,
    strategy: str,
    opts: SelectOptions,
    lengths: np.ndarray | None,
    min_distance: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Select within one stratum. Returns (chosen local indices in selection order,
    selected_by per chosen, cluster label per local row (-1 = none), stats)."""
    from laser_fast.sampling.cluster import cluster_select_detailed, preference_order

    n = pref.size
    labels = np.full(n, -1, dtype=np.int64)
    stats: dict[str, Any] = {"mode": mode, "n": int(n), "target": int(target)}
    if target <= 0 or n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=object), labels, stats
    by_pref = preference_order(pref, opts.seed)
    if mode == "none":
        chosen = _take_budget(by_pref, target, lengths)
        return chosen, np.full(chosen.size, "top", dtype=object), labels, stats
    if lengths is None:
        k = min(target, n)
    else:
        mean_len = max(float(lengths.mean()), 1.0)
        k = int(min(n, max(1, round(target / mean_len))))
    stats["k"] = int(k)
    emb = emb_fn()
    if mode in ("kmeans", "kmeans+greedy"):
        thr = None if strategy == "random" else opts.threshold_percentile
        res = cluster_select_detailed(emb, pref, k, threshold_percentile=thr, seed=opts.seed, num_threads=opts.num_threads,
                                      kmeans_backend=opts.kmeans_backend, device=opts.device)
        labels = res.labels
        stats.update(res.stats)
        stats["threshold"] = res.threshold
        best = np.zeros(n, dtype=bool)
        best[res.order[: res.n_cluster_best]] = True
        if mode == "kmeans":
            chosen = _take_budget(res.order, target, lengths)
            by = np.where(best[chosen], "cluster_best", "fill").astype(object)
            return chosen, by, labels, stats
        order = res.order
    else:
        order = by_pref
        best = np.zeros(n, dtype=bool)
    from laser_fast.sampling.greedy import greedy_diverse

    acc = greedy_diverse(emb, min_distance=min_distance, order=order, budget=(target if lengths is None else None), num_threads=opts.num_threads, show_progress=opts.show_progress)
    chosen = _take_budget(acc, target, lengths)
    stats["greedy_accepted"] = int(acc.size)
    by = np.where(best[chosen], "cluster_best", "greedy").astype(object)
    return chosen, by, labels, stats


# --------------------------------------------------------------------------- main


@dataclass
class Selection:
    """What sampling decided: the chosen pool rows in selection order, how each pool row was
    chosen (``selected_by``: cluster_best / fill / greedy / top, None when not selected), its
    cluster (-1: none), the updated pool status and per-stratum stats."""

    rows: np.ndarray
    selected_by: np.ndarray
    cluster: np.ndarray
    status: np.ndarray
    stats: dict[str, dict]


def select_strata(plan, pref: np.ndarray, length: np.ndarray, status: np.ndarray, embeddings, opts: SelectOptions) -> Selection:
    """Sample every stratum of ``plan`` (a :class:`~laser_fast.sampling.strata.StrataPlan` over pool rows).

    A stratum that holds no more than its target is taken whole (by preference, no embeddings);
    the others go through :func:`select_stratum`. ``embeddings(rows)`` returns the rows'
    embeddings (a :class:`StoreRows`) and is called only for strata that must choose.

    Returns:
        A :class:`Selection`; candidates left unselected get status ``not_selected``, strata with
        a zero target ``zero_target``.
    """
    n = status.size
    status = status.copy()
    for c, r in plan.strata.items():
        if plan.targets.get(c, 0) == 0 and r.size:
            status[r] = "zero_target"
    selected_by = np.full(n, None, dtype=object)
    cluster = np.full(n, -1, dtype=np.int64)
    sel_order: list[np.ndarray] = []
    stats: dict[str, dict] = {}
    unit_tokens = plan.unit_tokens

    def must_choose(c, rows) -> bool:
        t = plan.targets.get(c, 0)
        return t > 0 and rows.size > 0 and not (plan.available[c] <= t and opts.mode not in ("greedy", "kmeans+greedy"))

    remote: dict[str, tuple] = {}
    ex = current_executor()
    todo = [c for c, rows in plan.strata.items() if must_choose(c, rows)] if ex is not None else []
    if todo:  # one unit per stratum on the engine's workers, all at once
        from laser_fast.sampling.remote import StratumTask, stratum_unit, unpack

        units = [stratum_unit(plan.strata[c], pref, length, plan.targets[c], embeddings(plan.strata[c]), unit_tokens) for c in todo]
        remote = dict(zip(todo, (unpack(p) for p in ex.map_units(StratumTask(opts, unit_tokens), units))))
        del units
    with progress_bar(total=len(plan.strata), desc=f"select ({opts.mode})", unit="stratum", show=opts.show_progress) as bar:
        for c, rows in plan.strata.items():
            bar.update(1)
            t = plan.targets.get(c, 0)
            if t <= 0 or rows.size == 0:
                stats[c] = {"n": int(rows.size), "target": int(t), "selected": 0}
                continue
            if plan.available[c] <= t and opts.mode != "greedy" and opts.mode != "kmeans+greedy":
                chosen = rows[np.argsort(-pref[rows], kind="stable")]
                by = np.full(chosen.size, "top", dtype=object)  # everything fits: taken by preference
                st = {"mode": opts.mode, "n": int(rows.size), "target": int(t), "note": "stratum smaller than its target: all taken"}
            elif c in remote:
                loc, by, labels, st = remote.pop(c)
                chosen = rows[loc]
                cluster[rows] = labels
            else:
                loc, by, labels, st = select_stratum(
                    lambda rows=rows: embeddings(rows),
                    pref[rows],
                    t,
                    mode=opts.mode,
                    strategy=opts.strategy,
                    opts=opts,
                    lengths=length[rows] if unit_tokens else None,
                    min_distance=opts.min_distance,
                )
                chosen = rows[loc]
                if labels is not None:
                    cluster[rows] = labels
                del loc, labels
                release_free_heap()  # the stratum's working set, before the next one allocates
            selected_by[chosen] = by
            status[chosen] = "selected"
            st["selected"] = int(chosen.size)
            if unit_tokens:
                st["selected_tokens"] = int(length[chosen].sum())
            if chosen.size < (t if not unit_tokens else 1) and not unit_tokens:
                logger.warning("%s: selected %d of a target of %d (%s mode ran out of candidates)", c, chosen.size, t, opts.mode)
            stats[c] = st
            sel_order.append(chosen)
    status[status == "candidate"] = "not_selected"
    rows = np.concatenate(sel_order) if sel_order else np.zeros(0, dtype=np.int64)
    return Selection(rows=rows, selected_by=selected_by, cluster=cluster, status=status, stats=stats)
