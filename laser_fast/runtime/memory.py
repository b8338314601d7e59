"""Memory of a run: record tables kept in a memory-mapped file, and freed heap handed back.

A million-record pool is a few hundred MB of text that the selection reads only in passes
(hashing for the caches, token counts, the selected rows at the end). :func:`spill_frame` writes
the table once as an uncompressed Arrow IPC file and maps it back: polars reads the columns
straight from the mapping (no copy), the pages the process touches come from the page cache,
and :meth:`MappedFrame.release_pages` drops them from the process again after each pass. The
file is unlinked as soon as it is mapped, so nothing is left behind, even after a crash.

Example:
    >>> import polars as pl
    >>> df = pl.DataFrame({"text": ["a", "b"]})
    >>> mapped_df, handle = spill_frame(df, "/tmp/laser-fast-doc", min_bytes=0)  # doctest: +SKIP
    >>> mapped_df.equals(df)  # doctest: +SKIP
    True
"""
from __future__ import annotations

import logging
import mmap
import os
from pathlib import Path

import numpy as np
import polars as pl

from laser_fast.runtime.workdir import unique_suffix

logger = logging.getLogger(__name__)


__all__ = ["SPILL_MIN_BYTES", "TRIM_EVERY_S", "HeapTrim", "MappedFrame", "limit_heap_arenas", "release_free_heap", "spill_frame"]

#: Tables smaller than this (polars' estimate) stay on the heap: mapping pays off only when the
#: table is a large share of a run's memory.
SPILL_MIN_BYTES = 128 << 20


class MappedFrame:
    """The mapping behind a spilled frame. The frame's buffers keep the mapping alive on their
    own; this handle only lets the pipeline drop resident pages between passes."""

    def __init__(self, mm: mmap.mmap, nbytes: int):
        self._mm = mm
        self.nbytes = nbytes

    def release_pages(self) -> None:
        """Drop the mapped pages this process has touched (they stay in the page cache and are
        read back on the next access)."""
        try:
            self._mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # pragma: no cover - closed or unsupported
            pass


def _can_map() -> bool:
    # unlinking a mapped file and MADV_DONTNEED on a read-only file mapping are POSIX behaviour
    return os.name == "posix" and hasattr(mmap, "MADV_DONTNEED") and hasattr(mmap.mmap, "madvise")


def spill_frame(frame: pl.DataFrame, directory: str | os.PathLike, *, min_bytes: int | None = None) -> tuple[pl.DataFrame, MappedFrame | None]:
    """Move ``frame`` into a memory-mapped Arrow file under ``directory``.

    Args:
        frame: The table to move (any column types polars writes to Arrow IPC).
        directory: Where the file is written; it is unlinked once mapped.
        min_bytes: Keep frames smaller than this on the heap (default :data:`SPILL_MIN_BYTES`).

    Returns:
        ``(frame, handle)``: an equal frame whose columns live in the mapping, and its
        :class:`MappedFrame`; or ``(frame, None)`` unchanged when the frame is small, the platform
        cannot map, or the file cannot be written (logged as a warning: the run goes on in memory).
    """
    limit = SPILL_MIN_BYTES if min_bytes is None else min_bytes
    if not _can_map() or frame.height == 0 or frame.estimated_size() < limit:
        return frame, None
    import pyarrow as pa
    from pyarrow import ipc

    path = None
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        # records-<host>-<pid>-<random>.arrow: unique, private (0600), and a file a killed run left
        # behind is removed by WorkDir.clean_stale once no process of that pid is alive
        name = Path(directory) / f"records-{unique_suffix()}.arrow"
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        path = name
        with os.fdopen(fd, "wb") as fh:
            # string views are what polars holds, so the IPC file carries them and reading maps them
            table = frame.to_arrow(compat_level=pl.CompatLevel.newest())
            with ipc.new_file(fh, table.schema) as writer:
                for batch in table.to_batches():
                    writer.write_batch(batch)
            del table
        with open(path, "rb") as fh:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        path.unlink()
        path = None
        mapped = pl.from_arrow(ipc.open_file(pa.py_buffer(mm)).read_all(), rechunk=False)
    except (OSError, pa.ArrowException, pl.exceptions.PolarsError) as e:
        logger.warning("could not move the record table to a file in %s (%s); it stays in memory", directory, e)
        if path is not None:
            try:
                path.unlink()
            except OSError:
                pass
        return frame, None
    assert isinstance(mapped, pl.DataFrame)
    if mapped.schema != frame.schema:  # same data; keep the caller's exact types
        mapped = mapped.cast(dict(frame.schema))
    handle = MappedFrame(mm, len(mm))
    logger.debug("record table mapped from disk (%.0f MB)", handle.nbytes / 2**20)
    return mapped, handle


def _libc_function(name: str):
    """A function of the C library this process runs on, or None (not Linux, or not there)."""
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError, TypeError):
        return None


def release_free_heap() -> None:
    """Hand the C heap's free pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    glibc keeps freed memory inside its heap and per-thread arenas. After a stage frees large
    transients (the ingest builder, the k-means cell workers: ~220 MB at the 1M-row e2e select)
    that memory would stay in this process while the next stage allocates afresh."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        _MALLOC_TRIM = _libc_function("malloc_trim") or False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None

#: the least time between two hand-backs of :class:`HeapTrim`: each costs the page faults of
#: reusing the pages
TRIM_EVERY_S = 0.25


class HeapTrim:
    """Hands the C heap's free pages back (:func:`release_free_heap`) when called, at most every
    :data:`TRIM_EVERY_S`: called after each forward of a CPU batch loop. Batches of many shapes
    leave freed activations scattered through glibc's heap, which it keeps (see
    :func:`laser_fast.runtime.batching.one_thread_per_forward` for the measured effect)."""

    def __init__(self, on: bool = True):
        import time

        self.on = bool(on)  # False (a GPU loop): calls do nothing
        self._clock = time.perf_counter
        self._last = self._clock()

    def __call__(self) -> None:
        if self.on and self._clock() - self._last >= TRIM_EVERY_S:
            release_free_heap()
            self._last = self._clock()

#: glibc heaps ("arenas") threads may allocate from; see :func:`limit_heap_arenas`
HEAP_ARENAS = 2
_ARENAS_SET = False


def limit_heap_arenas(arenas: int = HEAP_ARENAS) -> bool:
    """Let threads share at most ``arenas`` glibc heaps (``mallopt(M_ARENA_MAX)``), once per process.

    By default glibc gives threads up to 8 heaps per core, and each heap keeps the fragments its
    threads left behind: at the 1M-row e2e select the k-means cell workers left ~280 MB resident
    across the seven strata, and ``malloc_trim`` cannot return it. With two heaps
    (``MALLOC_ARENA_MAX=2`` set for that run) its peak fell from 1,150 MB to 1,041 MB at the same
    speed (``select`` 37.1 s vs 36.4 s). Only allocations made after the call are affected.
    Leaves the setting alone when the user set ``MALLOC_ARENA_MAX``, and does nothing outside
    Linux. Returns whether it set the limit.
    """
    global _ARENAS_SET
    if _ARENAS_SET or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    _ARENAS_SET = True
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    M_ARENA_MAX = -8  # from glibc's malloc.h
    return bool(mallopt(M_ARENA_MAX, int(arenas)))


def _owned_type(t):
    """``t`` with every view type replaced by its offset-based twin (whose cast copies the bytes)."""
    import pyarrow as pa

    if t == pa.string_view():
        return pa.large_string()
    if t == pa.binary_view():
        return pa.large_binary()
    if pa.types.is_large_list(t) or pa.types.is_list(t):
        return pa.large_list(pa.field(t.value_field.name, _owned_type(t.value_type), t.value_field.nullable))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _owned_type(f.type), f.nullable) for f in t])
    return t


def gather_owned(frame: pl.DataFrame, rows, *, chunk_rows: int = 8192, release=None) -> pl.DataFrame:
    """``frame[rows]`` with its bytes copied onto the heap, ``chunk_rows`` rows at a time.

    A plain gather of a string column copies only the 16-byte views: the result would still read
    its text from ``frame``'s buffers, here a mapped file, and touch a page of it per row when
    written. Copying chunk by chunk, with ``release()`` (e.g. :meth:`MappedFrame.release_pages`)
    after each, keeps at most one chunk's pages resident.

    Example:
        >>> import polars as pl
        >>> gather_owned(pl.DataFrame({"a": ["x", "y", "z"]}), [2, 0])["a"].to_list()
        ['z', 'x']
    """
    import numpy as np

    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return frame.clear()
    # in pool order, so that each chunk reads one stretch of the buffers (random rows would touch
    # nearly every page of every column's 16-byte views in each chunk); output order at the end
    ascending = bool((np.diff(rows) > 0).all())
    order = None if ascending else np.argsort(rows, kind="stable")
    srt = rows if order is None else rows[order]
    parts = []
    for s in range(0, srt.size, chunk_rows):
        table = frame[srt[s : s + chunk_rows]].to_arrow(compat_level=pl.CompatLevel.newest())
        owned = table.cast(owned_schema(table.schema))
        del table
        part = pl.from_arrow(owned, rechunk=False)
        assert isinstance(part, pl.DataFrame)
        parts.append(part.cast(dict(frame.schema)))
        if release is not None:
            release()
    out = parts[0] if len(parts) == 1 else pl.concat(parts, how="vertical", rechunk=False)
    if order is None:
        return out
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    return out[inverse]


def owned_schema(schema):
    """An Arrow schema with every view type replaced by its offset-based twin (see
    :func:`gather_owned`); casting to it copies the bytes into new buffers."""
    import pyarrow as pa

    return pa.schema([pa.field(f.name, _owned_type(f.type), f.nullable, f.metadata) for f in schema])


def release_pages(arr: np.ndarray) -> None:
    """Drop a read-only memmap's resident pages from this process (they stay in the page cache)."""
    mm = getattr(arr, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # pragma: no cover - a platform without it
            pass


