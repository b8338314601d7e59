"""The embedding store's digest index: where each stored text is, kept per process and grown as
shards appear.

A namespace of the store is a list of append-only shards, each with the sha1 digests of its texts
(:mod:`laser_fast.sampling.store`). Reading every shard's digests, checking them and sorting them
again for each request made every lookup cost the whole store: a scorer that asks for 2,048
texts at a time over a pool of N texts paid O(N) per chunk, O(N^2) per run (1M stored texts:
0.3 s per lookup, two lookups per chunk). :class:`ShardIndex` is immutable and can be extended
by new shards without touching the old rows: the rows live in a growable buffer and their
8-byte prefixes are sorted in tiers, merged like a binary counter (a tier absorbs the next one
when it is not larger), so adding rows costs O(new log N) amortised and a lookup searches at
most ~log2(N / shard rows) tiers. :class:`IndexCache` keeps the latest index per namespace for
the process; the store extends it with the shards it has not read yet, and rebuilds it from
scratch when a known shard is gone or changed, or a new one sorts before the known ones (two
runs writing at once), so the answer is always the one a full rebuild would give: a text
stored twice resolves to its first copy (lowest shard id, then row).
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np


def _prefix64(d: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(d[:, :8]).view(">u8").ravel()


class _Tier(NamedTuple):
    lo: int  # first row
    hi: int  # one past the last row
    order: np.ndarray  # rows - lo, sorted by prefix (stable: the lower row first among equal prefixes)
    pre: np.ndarray  # the sorted prefixes


def _tier(digs: np.ndarray, lo: int, hi: int) -> _Tier:
    pre = _prefix64(digs[lo:hi])
    order = np.argsort(pre, kind="stable")
    return _Tier(lo, hi, order, pre[order])


class _Rows:
    """A growable (capacity, 20) digest buffer shared by an index and the indexes extended from
    it. Rows past ``used`` are free; :meth:`claim` hands them to one extension only, so two
    indexes extended from the same one never write the same rows (the second gets a copy)."""

    def __init__(self, capacity: int):
        self.buf = np.empty((capacity, 20), dtype=np.uint8)
        self.used = 0
        self._lock = threading.Lock()

    def claim(self, n: int, add: int) -> _Rows:
        """The buffer to write rows ``[n, n + add)`` into: this one when ``n`` is its end and the
        rows fit, else a new one (doubling) holding a copy of rows ``[0, n)``."""
        with self._lock:
            if self.used == n and n + add <= self.buf.shape[0]:
                self.used = n + add
                return self
        grown = _Rows(max(2 * self.buf.shape[0], n + add, 1024))
        grown.buf[:n] = self.buf[:n]
        grown.used = n + add
        return grown


class ShardIndex:
    """Digests of a namespace's shards, in shard order, with a lookup from digest to row.

    Rows are numbered across shards (shard ``s`` holds rows ``starts[s]`` to ``starts[s+1]``).
    Lookups compare the 8-byte prefix (``searchsorted`` per tier) and then the full 20 bytes; a
    shared prefix of two different digests is resolved by scanning the run of equal prefixes.
    Instances never change: :meth:`extended` returns a new index that shares the old rows.

    Example:
        >>> import numpy as np
        >>> d = np.arange(40, dtype=np.uint8).reshape(2, 20)
        >>> idx = ShardIndex.empty().extended([d[:1], d[1:]])
        >>> idx.lookup(d[::-1]).tolist(), idx.shard_of(np.array([0, 1])).tolist()
        ([1, 0], [0, 1])
    """

    def __init__(self, rows: _Rows, n: int, starts: np.ndarray, tiers: tuple[_Tier, ...]):
        self._rows = rows  # rows [0, n) of its buffer are this index's
        self.n = n
        self.starts = starts
        self.tiers = tiers

    @classmethod
    def empty(cls) -> ShardIndex:
        return cls(_Rows(0), 0, np.zeros(1, dtype=np.int64), ())

    @classmethod
    def build(cls, shard_digests: Sequence[np.ndarray]) -> ShardIndex:
        """An index over these shards' digests ((m, 20) uint8 each), in this order."""
        return cls.empty().extended(shard_digests)

    def __len__(self) -> int:
        return self.n

    @property
    def digests(self) -> np.ndarray:
        return self._rows.buf[:self.n]

    @property
    def rows_per_shard(self) -> np.ndarray:
        return np.diff(self.starts)

    def shard_of(self, pos: np.ndarray) -> np.ndarray:
        """The shard (in index order) of rows ``pos``."""
        return np.searchsorted(self.starts, np.asarray(pos, dtype=np.int64), side="right") - 1

    def row_of(self, pos: np.ndarray, shard: np.ndarray | None = None) -> np.ndarray:
        """The row within its shard of rows ``pos``."""
        pos = np.asarray(pos, dtype=np.int64)
        return pos - self.starts[self.shard_of(pos) if shard is None else shard]

    def extended(self, shard_digests: Sequence[np.ndarray]) -> ShardIndex:
        """This index with more shards after its own (their digests, (m, 20) uint8 each)."""
        add = sum(int(d.shape[0]) for d in shard_digests)
        rows = self._rows.claim(self.n, add)
        buf = rows.buf
        at = self.n
        starts = [int(s) for s in self.starts]
        for d in shard_digests:  # rows claimed for this index alone: no other index reads them
            buf[at:at + d.shape[0]] = d
            at += int(d.shape[0])
            starts.append(at)
        tiers = list(self.tiers)
        if add:
            tiers.append(_tier(buf, self.n, at))
        while len(tiers) > 1 and tiers[-2].hi - tiers[-2].lo <= tiers[-1].hi - tiers[-1].lo:
            a, b = tiers[-2], tiers[-1]
            tiers[-2:] = [_tier(buf, a.lo, b.hi)]
        return ShardIndex(rows, at, np.array(starts, dtype=np.int64), tuple(tiers))

    def lookup(self, q: np.ndarray) -> np.ndarray:
        """Rows of query digests ``q`` (k, 20); -1 if absent. The lowest row of a digest stored
        twice."""
        res = np.full(q.shape[0], -1, dtype=np.int64)
        if q.shape[0] == 0 or self.n == 0:
            return res
        todo = np.arange(q.shape[0])
        qp = _prefix64(q)
        digs = self._rows.buf
        for t in self.tiers:  # in row order: the first tier that has a digest has its lowest row
            if todo.size == 0:
                break
            got = self._in_tier(t, digs, q[todo], qp[todo])
            hit = got >= 0
            res[todo[hit]] = got[hit]
            todo = todo[~hit]
        return res

    @staticmethod
    def _in_tier(t: _Tier, digs: np.ndarray, q: np.ndarray, qp: np.ndarray) -> np.ndarray:
        res = np.full(q.shape[0], -1, dtype=np.int64)
        size = t.pre.size
        qo = np.argsort(qp)  # sorted queries: searchsorted then walks forward (~5x faster at 1M)
        at = np.empty(qp.size, dtype=np.int64)
        at[qo] = np.searchsorted(t.pre, qp[qo], side="left")
        inb = at < size
        j = np.minimum(at, size - 1)
        cand = np.where(inb, t.lo + t.order[j], 0)
        hit = inb & (t.pre[j] == qp)
        full = hit & np.all(digs[cand] == q, axis=1)
        res[full] = cand[full]
        for i in np.flatnonzero(hit & ~full):  # an 8-byte prefix shared by two digests: practically never
            k = int(at[i])
            while k < size and t.pre[k] == qp[i]:
                r = t.lo + int(t.order[k])
                if np.array_equal(digs[r], q[i]):
                    res[i] = r
                    break
                k += 1
        return res


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class _Known(NamedTuple):
    sid: str
    hashes: Path
    stamp: tuple[int, int, int] | None


class IndexCache:
    """The latest :class:`ShardIndex` per namespace folder, for this process (at most ``size``
    folders, least recently used dropped first).

    :meth:`index` is given the namespace's shards as listed now and a loader that reads and
    checks one shard's digests (None when it is damaged or gone). A shard's digests are read and
    checked once per process; a known shard is read again only after its hashes file changed
    (inode, size or modification time) or vanished, which rebuilds the whole index. The digests
    in memory are the ones that passed their check, so damage done to a hashes file after that
    check cannot change an answer; the next process finds it.
    """

    def __init__(self, size: int = 16):
        self.size = size
        self._lock = threading.Lock()
        self._folders: OrderedDict[str, _Folder] = OrderedDict()

    def clear(self) -> None:
        with self._lock:
            self._folders.clear()

    def index(self, ns: Path, listing: Sequence[tuple[str, Path]],
              load: Callable[[Path], np.ndarray | None]) -> tuple[ShardIndex, list[Path]]:
        """``(index, hashes files in index order)`` of namespace ``ns``; ``listing``: its
        ``(shard id, hashes file)`` pairs in id order."""
        key = os.path.realpath(ns)
        with self._lock:
            folder = self._folders.setdefault(key, _Folder())
            self._folders.move_to_end(key)
            while len(self._folders) > self.size:  # a folder dropped while in use stays consistent
                self._folders.popitem(last=False)
        with folder.lock:
            k = len(folder.known)
            if not (k <= len(listing) and all(sid == kn.sid and kn.stamp is not None and _stamp(kn.hashes) == kn.stamp
                                              for (sid, _), kn in zip(listing[:k], folder.known))):
                folder.known, folder.index, k = [], ShardIndex.empty(), 0
            new, digs = [], []
            for sid, hp in listing[k:]:
                d = load(hp)
                if d is not None:
                    new.append(_Known(sid, hp, _stamp(hp)))
                    digs.append(d)
            if digs:  # shards and index change together: a load that raises leaves both as they were
                folder.index = folder.index.extended(digs)
                folder.known = folder.known + new
            return folder.index, [kn.hashes for kn in folder.known]


class _Folder:
    """One namespace's state in the cache: its lock, the shards read (in index order), the index."""

    def __init__(self):
        self.lock = threading.Lock()
        self.known: list[_Known] = []
        self.index = ShardIndex.empty()


#: the process's index cache (every :class:`~laser_fast.sampling.store.EmbeddingStore` shares it)
INDEX_CACHE = IndexCache()
