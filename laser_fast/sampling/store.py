"""The embedding store: float16 vectors per text in append-only shards, one memmap per request."""
from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from laser_fast.errors import InputError, LaserError
from laser_fast.runtime.engine import UnitTask, current_executor, stat_columns, summed_stats
from laser_fast.runtime.memory import release_pages
from laser_fast.runtime.models import DEFAULT_EMBEDDING_MODEL, is_default_model, load_sentence_model
from laser_fast.runtime.stage import Resources
from laser_fast.runtime.workdir import LAYOUT_VERSION, WorkDir, npy_header, sidecar, unique_suffix
from laser_fast.sampling.embed import DEFAULT_BATCH_TOKENS_CPU_LOW_PRECISION, SORT_WINDOW, VECTOR_SCHEME, RecordTexts, _Encoder, _key_of_digests, hash_texts, new_embed_stats, non_padding_share
from laser_fast.sampling.store_index import INDEX_CACHE, ShardIndex

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# store
# --------------------------------------------------------------------------------------

def first_occurrences(digs: np.ndarray) -> np.ndarray:
    """The position of the first occurrence of every distinct digest, ascending."""
    _, first = np.unique(digs.view("V20").ravel(), return_index=True)
    return np.sort(first)


def embed_windows(pos: np.ndarray, digs: np.ndarray, firsts: np.ndarray | None = None) -> list[np.ndarray]:
    """The rows to embed, by window: the first occurrence of every distinct text (stored or not)
    cut into windows of ``SORT_WINDOW`` (``$LASER_FAST_EMBED_WINDOW``), and of each window the
    rows not stored yet (``pos < 0``); windows with nothing missing are left out.

    Each window is sorted by length and embedded as one unit of work (by this process or an
    engine's worker) and stored in whole shards of its longest-first order. So the windows of a
    request do not depend on what is already stored, and a run killed mid-window resumes with
    the window's missing shards, computed in the same batches as an uninterrupted run: the
    vectors are the same, bit for bit. ``firsts``: :func:`first_occurrences` of ``digs`` when
    the caller has them (one distinct pass per request)."""
    w = max(1, int(os.environ.get("LASER_FAST_EMBED_WINDOW") or SORT_WINDOW))
    firsts = first_occurrences(digs) if firsts is None else firsts
    out = []
    for i in range(0, firsts.size, w):
        win = firsts[i:i + w]
        miss = win[pos[win] < 0]
        if miss.size:
            out.append(miss)
    return out


#: the encoder stats a worker sends back per window
_STAT_KEYS = ("records", "forward_passes", "tokens", "padded_tokens", "seconds", "truncated", "oom_splits")


class EmbedTask(UnitTask):
    """Embedding windows on an engine's workers: each loads the model once, embeds its windows
    (:meth:`EmbeddingStore._embed_window`) into the shared store and returns its encoder stats."""

    label = "embed"

    def __init__(self, root, model, label, field, batch_tokens, max_batch_size, chunk_rows, device, dtype):
        self.root, self.model, self.model_label, self.field = str(root), model, label, field
        self.batch_tokens, self.max_batch_size, self.chunk_rows, self.device, self.dtype = batch_tokens, max_batch_size, chunk_rows, device, dtype
        self.resources = Resources(num_cpus=1, num_gpus=0.25)  # a small model: four workers share a GPU
        self.uses_gpu = not str(device or "").startswith("cpu")

    def memory_mb(self) -> int:  # the embedder's estimate
        from laser_fast.runtime.model_memory import model_mb
        from laser_fast.runtime.models import resolve_model_name

        # a narrower dtype is counted as float32 (model_memory)
        return self.estimated_once(lambda: model_mb(resolve_model_name(self.model), seq_len=512,
                                                    batch_tokens=int(self.batch_tokens or DEFAULT_BATCH_TOKENS_CPU_LOW_PRECISION)))

    def setup(self) -> None:
        self._store = EmbeddingStore(self.root)
        self._ns = self._store._namespace(self.model_label, self.field)
        self._ns.mkdir(parents=True, exist_ok=True)
        self._enc = _Encoder(load_sentence_model(self.model, self.device, self.dtype), self.batch_tokens, self.max_batch_size)

    def run(self, unit) -> dict[str, np.ndarray]:
        digs = np.frombuffer(b"".join(unit["digest"].to_list()), dtype=np.uint8).reshape(-1, 20)
        stats = new_embed_stats()
        self._store._embed_window(self._ns, self._enc, unit["text"].to_list(), digs, self.chunk_rows, stats)
        return stat_columns(unit.height, {k: stats[k] for k in _STAT_KEYS})


class EmbeddingStore:
    """Float16 embeddings cached per text under ``<workdir>/embeddings``.

    Vectors live in append-only shards per (model, text field, layout) namespace:
    ``shard-<id>.f16.npy`` (vectors) and ``shard-<id>.hashes.npy`` (sha1 of each text), written
    through :class:`~laser_fast.runtime.workdir.WorkDir` (unique temporary name, fsync, rename,
    integrity record), the hashes last, so a shard is either complete or absent. A shard id is
    the time in ns plus host, pid and random digits: two runs sharing the folder never allocate
    the same name, so no lock is needed (a text both embedded lands in two shards; the first
    shard by name wins). Missing texts are tokenized and sorted by length (``SORT_WINDOW`` at a
    time) before they are cut into shards of ``chunk_rows``: each shard holds its own hashes, so
    its order does not matter, and sorting before cutting pads less than sorting inside each
    chunk. A run killed while embedding keeps every finished shard and resumes from there; any
    later run over any subset of the same texts reuses them. For each requested list of texts
    the store also assembles one (n, d) float16 memmap ``<key>.npy`` keyed by content + model +
    field + layout, so an identical request is a single checked file open.

    Every shard a request reads and every reused ``<key>.npy`` is checked against its integrity
    record first; a damaged one is logged with its path and removed (a shard's two files
    together), and its texts are embedded again (the memmap is assembled again). The digests are
    checked once per process: the process keeps the namespace's digest index
    (:mod:`laser_fast.sampling.store_index`) and reads only shards it has not seen, so a lookup
    does not cost the whole store; the vectors a request reads are checked at every request.

    In a URI work directory (:mod:`laser_fast.runtime.storage`) each shard is also uploaded as one
    Parquet object ``shard-<id>.parquet`` (columns ``sha1``: fixed_size_binary(20), ``embedding``:
    fixed_size_list<float16>[d]) with its integrity record; a machine that lacks a shard fetches
    that object and keeps the ``.npy`` pair locally. The per-request ``<key>.npy`` stays local.

    Example:
        >>> store = EmbeddingStore("/tmp/work")                      # doctest: +SKIP
        >>> emb, info = store.get(["a text", "another"], model=None)  # doctest: +SKIP
        >>> emb.dtype, emb.shape                                      # doctest: +SKIP
        (dtype('float16'), (2, 384))
    """

    def __init__(self, workdir: WorkDir | str | os.PathLike):
        self.wd = WorkDir.of(workdir)
        self.root = self.wd.embeddings

    def _namespace(self, label: str, field: str) -> Path:
        return self.root / hashlib.sha1(f"{label}\x00{field}\x00layout {LAYOUT_VERSION}\x00vectors {VECTOR_SCHEME}".encode()).hexdigest()[:16]

    @staticmethod
    def _request_key(digs: np.ndarray, label: str, field: str) -> str:
        return _key_of_digests(digs, f"{label}\x00layout {LAYOUT_VERSION}\x00vectors {VECTOR_SCHEME}", field)

    @staticmethod
    def _label(model: str | None) -> str:
        """The model part of the keys: the default's name, a hub id, or a local folder's path and files."""
        from laser_fast.runtime.fingerprint import model_identity

        return DEFAULT_EMBEDDING_MODEL if is_default_model(model) else str(model_identity(model))

    def _shard_files(self, ns: Path) -> list[tuple[str, Path]]:
        """``(shard id, hashes path)`` of the namespace's shards, in id order. In a URI work
        directory, shards only the shared storage holds (as Parquet) are fetched and kept here as
        the ``.npy`` pair first."""
        ids = {hp.name[len("shard-"):-len(".hashes.npy")] for hp in ns.glob("shard-*.hashes.npy")} if ns.is_dir() else set()
        if self.wd.remote is not None:
            for pq in self.wd.entries(ns, "shard-*.parquet"):
                sid = pq.name[len("shard-"):-len(".parquet")]
                if sid not in ids and self._fetch_shared(pq):
                    ids.add(sid)
        return [(sid, ns / f"shard-{sid}.hashes.npy") for sid in sorted(ids)]

    def _share(self, ns: Path, base: str, vecs16: np.ndarray, digests: np.ndarray) -> None:
        """Upload one shard as ``<base>.parquet``: ``sha1`` (fixed_size_binary(20)) and
        ``embedding`` (fixed_size_list<float16>[d]), one object that any Parquet reader takes."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        n, d = vecs16.shape
        sha = pa.FixedSizeBinaryArray.from_buffers(pa.binary(20), n, [None, pa.py_buffer(np.ascontiguousarray(digests, dtype=np.uint8).tobytes())])
        emb = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(vecs16, dtype=np.float16).ravel()), d)
        with self.wd.atomic(ns / f"{base}.parquet", keep=False) as tmp:
            pq.write_table(pa.table({"sha1": sha, "embedding": emb}), tmp, compression="zstd")

    def _fetch_shared(self, path: Path) -> bool:
        """Fetch the shared Parquet form of a shard (checked) and keep it here as its ``.npy``
        pair; False when it is gone or damaged (then logged and removed)."""
        import pyarrow.parquet as pq

        if self.wd.check(path) is None:
            return False
        try:
            t = pq.read_table(path)
            sha, emb = t["sha1"].combine_chunks(), t["embedding"].combine_chunks()
            n, d = len(sha), emb.type.list_size
            digests = np.frombuffer(sha.buffers()[1], dtype=np.uint8, count=n * 20, offset=sha.offset * 20).reshape(n, 20)
            vecs = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float16, copy=False).reshape(n, d)
        except (OSError, KeyError, ValueError, AttributeError) as e:
            self.wd.discard(path, f"it is not an embedding shard ({e})")
            return False
        base = path.name[:-len(".parquet")]
        self.wd.save_array(path.with_name(f"{base}.f16.npy"), vecs, share=False)
        self.wd.save_array(path.with_name(f"{base}.hashes.npy"), digests, share=False)
        for p in (path, sidecar(path)):  # the pair is what this machine reads (file first: see WorkDir.remove_entry)
            p.unlink(missing_ok=True)
        return True

    @staticmethod
    def _vectors_of(hashes_path: Path) -> Path:
        return hashes_path.with_name(hashes_path.name.replace(".hashes.npy", ".f16.npy"))

    def _forget(self, path: Path, why: str) -> None:
        """Remove the intact half of a shard whose other half was damaged (its texts are then
        missing; a URI work directory fetches the shard again from its shared form)."""
        self.wd.remove_entry(path)
        logger.info("embedding store: removed %s (%s)", path, why)

    def _index(self, ns: Path) -> tuple[ShardIndex, list[Path]]:
        """The namespace's digest index (over the shards whose hashes file is intact) and the
        shards' hashes files (in index order). The process keeps it (:data:`INDEX_CACHE`) and
        reads only the shards it has not seen; a damaged hashes file is logged and removed with
        its shard's vectors."""
        return INDEX_CACHE.index(ns, self._shard_files(ns), self._load_hashes)

    def _load_hashes(self, hp: Path) -> np.ndarray | None:
        """One shard's checked digests ((m, 20) uint8), or None when damaged (then its shard is
        removed) or gone."""
        d = self.wd.load_array(hp, mmap=False, shared=False)  # sha1 digests (kept here only)
        if d is not None and (d.ndim != 2 or d.shape[1] != 20 or d.dtype != np.uint8):
            self.wd.discard(hp, f"it holds a {d.dtype} array of shape {d.shape}, not (m, 20) uint8 digests")
            d = None
        if d is None:  # damaged (logged and removed) or removed meanwhile
            self._forget(self._vectors_of(hp), f"the hashes file {hp.name} of its shard is gone")
        return d

    def _resolve(self, ns: Path, digs: np.ndarray) -> tuple[ShardIndex, list[np.ndarray | None], np.ndarray]:
        """``(index, vectors, pos)``: where each of ``digs`` is stored (-1: not stored) and the
        checked vector memmaps of the shards those texts are in (None for the other shards). A
        shard that fails its check is removed with its hashes file, so its texts come back as
        not stored."""
        while True:
            index, hash_paths = self._index(ns)
            pos = index.lookup(digs)
            rows = index.rows_per_shard
            vecs: list[np.ndarray | None] = [None] * len(hash_paths)
            damaged = False
            for si in np.unique(index.shard_of(pos[pos >= 0])):
                vp = self._vectors_of(hash_paths[si])
                v = self.wd.load_array(vp, mmap=True, shared=False)
                if v is not None and (v.ndim != 2 or v.shape[0] != rows[si] or v.dtype != np.float16):
                    self.wd.discard(vp, f"it holds a {v.dtype} array of shape {v.shape} for {rows[si]} texts")
                    v = None
                if v is None:
                    self._forget(hash_paths[si], f"the vectors file {vp.name} of its shard is damaged or gone")
                    damaged = True
                vecs[si] = v
            if not damaged:
                return index, vecs, pos

    def _write_shard(self, ns: Path, shard_id: str, vecs16: np.ndarray, digests: np.ndarray) -> None:
        base = f"shard-{shard_id}"
        shared = self.wd.remote is not None  # the shared storage gets one Parquet object per shard instead of the pair
        self.wd.save_array(ns / f"{base}.f16.npy", vecs16, share=not shared)
        self.wd.save_array(ns / f"{base}.hashes.npy", np.ascontiguousarray(digests, dtype=np.uint8), share=not shared)  # last: the shard exists
        if shared:
            self._share(ns, base, vecs16, digests)

    @staticmethod
    def _new_shard_id() -> str:
        """Time in ns, host, pid and random digits: unique across runs, ordered by time."""
        return f"{time.time_ns():020d}-{unique_suffix()}"

    @staticmethod
    def _missing(pos: np.ndarray, digs: np.ndarray) -> np.ndarray:
        """Positions of the first occurrence of each digest not found (``pos < 0``), ascending."""
        absent = np.flatnonzero(pos < 0)
        if absent.size == 0:
            return absent
        _, first = np.unique(digs[absent].view("V20").ravel(), return_index=True)
        return np.sort(absent[first])

    @staticmethod
    def _dim(where: Path, vecs: list[np.ndarray | None], pos: np.ndarray) -> int:
        """The vectors' width, after checking that every text has a stored vector of one width."""
        if (pos < 0).any():  # pragma: no cover - every text was stored just before
            raise LaserError(f"embedding store {where}: {(pos < 0).sum()} texts have no stored vector; delete that folder and rerun")
        dims = {int(v.shape[1]) for v in vecs if v is not None}
        if len(dims) > 1:
            raise LaserError(f"embedding store {where}: the shards of one namespace hold vectors of {sorted(dims)} dimensions; "
                             "delete that folder and rerun")
        return dims.pop() if dims else 0

    @staticmethod
    def _gather(index: ShardIndex, vecs: list[np.ndarray | None], pos: np.ndarray, dim: int) -> tuple[np.ndarray, list[int]]:
        """The float16 rows of store positions ``pos`` (read shard by shard), and the shards read."""
        bs = index.shard_of(pos)
        br = index.row_of(pos, bs)
        block = np.empty((bs.size, dim), dtype=np.float16)
        order = np.argsort(bs, kind="stable")
        cuts = np.flatnonzero(np.diff(bs[order])) + 1
        touched = []
        for grp in np.split(order, cuts) if order.size else []:
            si = int(bs[grp[0]])
            block[grp] = vecs[si][br[grp]]
            touched.append(si)
        return block, touched

    def _assemble(self, final: Path, index: ShardIndex, vecs: list[np.ndarray | None],
                  pos: np.ndarray, block_rows: int = 1 << 16) -> tuple[np.memmap, float]:
        """Write the request's (n, d) float16 ``.npy`` from the shards' checked memmaps ``vecs``,
        ``block_rows`` output rows at a time: each block is gathered from the shards' memmaps and
        appended to the file with plain writes, and the shard pages it touched are released from
        this process (the page cache keeps them), so the resident memory stays near one block
        instead of growing to the request plus the shards (1M x 384 rows: ~0.2 GB peak instead of
        ~1.9 GB). The file is written through :meth:`WorkDir.atomic` (integrity record included)."""
        t0 = time.perf_counter()
        dim = self._dim(final.parent, vecs, pos)
        n = pos.size
        with self.wd.atomic(final, share=False) as tmp, open(tmp, "wb") as f:  # rebuilt from the shared shards anywhere
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
                                                     "fortran_order": False, "shape": (n, dim)})
            for b0 in range(0, n, block_rows):
                block, touched = self._gather(index, vecs, pos[b0:b0 + block_rows], dim)
                f.write(block.data)  # contiguous: no copy
                for si in touched:
                    release_pages(vecs[si])
        return np.load(final, mmap_mode="r"), time.perf_counter() - t0

    def get(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        field: str = "response",
        batch_size: int | None = None,
        batch_tokens: int | None = None,
        max_batch_size: int | None = None,
        chunk_rows: int = 4096,
        device: str | None = None,
        dtype: str | None = None,
        show_progress: bool | None = None,
        keep: bool = True,
    ) -> tuple[np.memmap, dict]:
        """Return the (n, d) float16 memmap of ``texts`` embeddings, computing only what is missing.

        Args:
            texts: the texts, one per row of the result.
            model: embedding model name or path (None: the bundled all-MiniLM-L6-v2).
            field: text field label (a separate cache namespace per field).
            batch_size: older name of ``max_batch_size`` (used when that is not given).
            batch_tokens: padded-token budget per forward (see :func:`encode_texts`).
            max_batch_size: most rows per forward.
            chunk_rows: rows per stored shard (what a killed run loses at most).
            device: torch device (default: CUDA when available).
            dtype: compute dtype (see :func:`load_sentence_model`; default exact float32 on the
                CPU, float16 on CUDA).
            show_progress: progress bar (None: when INFO logging is on).
            keep: write the request's own ``<key>.npy`` and return it memory-mapped (a whole pool,
                asked for again by the next run); False returns an in-memory float16 array
                gathered from the shards and writes nothing but the shards (small, one-off
                requests such as a scorer's chunk).

        Returns:
            ``(array, info)``: info has ``key``, ``model``, ``field``, ``rows``, ``cache_hit``
            (the request's memmap existed), ``computed`` (texts embedded now), ``device``,
            ``seconds`` (total), ``dim``, and when texts were embedded the encoder stats
            ``records``, ``forward_passes``, ``tokens``, ``padded_tokens``, ``embed_seconds``,
            ``non_padding``; ``assemble_seconds`` when the memmap was written.

        Raises:
            ModelLoadError: the model cannot be loaded.
            LaserError: shards written now keep failing their check (a failing disk), or a
                damaged shard cannot be removed.
        """
        t_start = time.perf_counter()
        label = self._label(model)
        digs = hash_texts(texts)
        key = self._request_key(digs, label, field)
        final = self.root / f"{key}.npy"
        info: dict[str, Any] = {"key": key, "model": label, "field": field, "rows": len(texts)}
        arr = self.wd.load_array(final, mmap=True, shared=False) if keep else None  # checked; a request file is never shared
        if arr is not None and (arr.ndim != 2 or arr.shape[0] != len(texts) or arr.dtype != np.float16):
            self.wd.discard(final, f"it holds a {arr.dtype} array of shape {arr.shape} for {len(texts)} texts")
            arr = None
        if arr is not None:
            info.update(cache_hit=True, computed=0, device=None, seconds=round(time.perf_counter() - t_start, 3), dim=int(arr.shape[1]))
            logger.info("embeddings: reusing %s (%d x %d)", final, arr.shape[0], arr.shape[1])
            return arr, info
        ns = self._namespace(label, field)
        ns.mkdir(parents=True, exist_ok=True)
        dev, enc, stats, computed = None, None, new_embed_stats(), 0
        firsts = first_occurrences(digs)  # the distinct texts, found once per request
        for attempt in range(3):
            index, vecs, pos = self._resolve(ns, digs)
            todo = firsts[pos[firsts] < 0]
            if todo.size == 0:
                break
            if attempt == 2:
                raise LaserError(f"embedding store {ns}: {todo.size} texts are still missing after they were embedded and stored twice "
                                 "(their shards fail their check as soon as they are written: is the disk full or failing?); "
                                 "check the warnings above, free or fix the disk and rerun")
            logger.info("embeddings: %d of %d texts to embed (%d cached)", todo.size, len(texts), len(texts) - todo.size)
            ex = current_executor()
            if ex is not None:  # the same windows, embedded and stored by the engine's workers
                task = EmbedTask(str(self.wd), model, label, field, batch_tokens, max_batch_size or batch_size, chunk_rows, device, dtype)
                units = []
                for rows in embed_windows(pos, digs, firsts):
                    wtexts = texts.take(rows) if isinstance(texts, RecordTexts) else [texts[i] for i in rows]
                    units.append(pl.DataFrame({"text": list(wtexts), "digest": [bytes(d) for d in digs[rows]]}, schema={"text": pl.Utf8, "digest": pl.Binary}))
                for k, v in summed_stats(ex.map_units(task, units)).items():
                    stats[k] += v
                dev = f"{ex.name} workers"
                computed += int(todo.size)
                continue
            if enc is None:
                m = load_sentence_model(model, device, dtype)
                dev = str(m.device)
                enc = _Encoder(m, batch_tokens, max_batch_size or batch_size)
            self._embed(ns, enc, texts, digs, pos, todo.size, chunk_rows, stats, show_progress, firsts)
            computed += int(todo.size)
        if computed:
            info.update({k: int(stats[k]) for k in ("records", "forward_passes", "tokens", "padded_tokens", "truncated")},
                        embed_seconds=round(stats["seconds"], 3), non_padding=non_padding_share(stats))
            if info["truncated"]:
                logger.info("embed: %d of %d text(s) were longer than the model's max_seq_length and were embedded "
                            "from their beginning (as sentence-transformers does)", info["truncated"], computed)
        if keep:
            arr, t_asm = self._assemble(final, index, vecs, pos)
        else:
            t0 = time.perf_counter()
            arr, _ = self._gather(index, vecs, pos, self._dim(final.parent, vecs, pos))
            t_asm = time.perf_counter() - t0
        info.update(cache_hit=False, computed=computed, device=dev, seconds=round(time.perf_counter() - t_start, 3),
                    dim=int(arr.shape[1]), assemble_seconds=round(t_asm, 3))
        return arr, info

    def _embed(self, ns: Path, enc: _Encoder, texts: Sequence[str], digs: np.ndarray, pos: np.ndarray, n_todo: int, chunk_rows: int,
               stats: dict, show_progress: bool | None, firsts: np.ndarray | None = None) -> None:
        """Embed the texts not stored yet (``pos < 0``), window by window (:func:`embed_windows`),
        and store them in shards of ``chunk_rows`` (longest first)."""
        from laser_fast.runtime.progress import progress_bar

        with progress_bar(total=int(n_todo), desc="embed", unit="rec", show=show_progress) as bar:
            for rows in embed_windows(pos, digs, firsts):
                wtexts = texts.take(rows) if isinstance(texts, RecordTexts) else [texts[i] for i in rows]
                self._embed_window(ns, enc, wtexts, digs[rows], chunk_rows, stats, bar)

    def _embed_window(self, ns: Path, enc: _Encoder, wtexts: Sequence[str], wdigs: np.ndarray, chunk_rows: int, stats: dict, bar=None) -> None:
        """Embed one window of texts, longest first, and store it in shards of ``chunk_rows``
        (the unit of work of both engines, see :class:`EmbedTask`)."""
        ids, off = enc.tokenize(wtexts, stats=stats)
        order = np.argsort(-(off[1:] - off[:-1]), kind="stable")  # longest first
        for c in range(0, order.size, chunk_rows):
            sel = order[c:c + chunk_rows]
            sub_off = np.zeros(sel.size + 1, dtype=np.int64)
            np.cumsum(off[sel + 1] - off[sel], out=sub_off[1:])
            sub_ids = np.concatenate([ids[off[i]:off[i + 1]] for i in sel]) if ids.size else ids
            e = enc.run([wtexts[i] for i in sel], sub_ids, sub_off, stats=stats, bar=bar)
            self._write_shard(ns, self._new_shard_id(), e.astype(np.float16), wdigs[sel])

    def put(
        self,
        texts: Sequence[str],
        vectors: np.ndarray,
        *,
        model: str | None = None,
        field: str = "response",
        chunk_rows: int = 65536,
        assemble: bool = False,
    ) -> dict:
        """Store vectors computed elsewhere for ``texts``, exactly as :meth:`get` stores its own.

        Rows are stored as float16 unit vectors: a row whose L2 norm is off 1 by more than 1% is
        divided by its norm (in float32; an all-zero row stays zero), the others are stored as
        given, so float16 unit vectors round-trip bit for bit and any scale is accepted. Texts already in the store (or
        repeated in ``texts``) keep their first stored vector. A later :meth:`get` with the same
        ``model`` label and ``field`` finds them without loading the model. The vectors must come
        from that model for the cache to mean anything: the store cannot check it.

        Args:
            texts: n texts.
            vectors: (n, d) float array (float16/32/64, memmap fine); read ``chunk_rows`` at a time.
            model: model label the vectors belong to (None: the bundled all-MiniLM-L6-v2).
            field: text field label.
            chunk_rows: rows per shard written.
            assemble: also write the request memmap of ``texts`` (a later ``get(texts)`` is then
                a single file open instead of a reassembly from the shards).

        Returns:
            ``{"rows", "stored", "already", "shards", "dim", "seconds", "key"}``.

        Raises:
            InputError: ``vectors`` is not (len(texts), d) or holds a non-finite value.
        """
        t0 = time.perf_counter()
        vec = vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors)
        if vec.ndim != 2 or vec.shape[0] != len(texts):
            raise InputError("EmbeddingStore.put", f"vectors must be ({len(texts)}, d) for {len(texts)} texts, got shape {vec.shape}", "pass one row per text")
        label = self._label(model)
        ns = self._namespace(label, field)
        ns.mkdir(parents=True, exist_ok=True)
        digs = hash_texts(texts)
        index, _, pos = self._resolve(ns, digs)
        stored_dim = self._stored_dim(ns) if len(index) else None
        if stored_dim is not None and stored_dim != vec.shape[1]:
            raise InputError("EmbeddingStore.put", f"the store {ns} holds {stored_dim}-d vectors for model '{label}', got {vec.shape[1]}-d ones",
                             "pass the model label the vectors come from (model=...)")
        todo = self._missing(pos, digs)
        shards = 0
        for s in range(0, todo.size, chunk_rows):
            rows = todo[s:s + chunk_rows]
            raw = np.asarray(vec[rows])
            part = raw.astype(np.float32)
            norm = np.linalg.norm(part, axis=1)
            if not np.isfinite(norm).all():
                bad = rows[np.flatnonzero(~np.isfinite(norm))[0]]
                raise InputError("EmbeddingStore.put", f"the vector of text {int(bad)} has a non-finite value", "fix or drop that row")
            # rows already within 1% of unit length are kept bit for bit (float16 unit vectors
            # are only unit up to rounding); the others are scaled to unit length
            fix = (norm > 0) & (np.abs(norm - 1.0) > 1e-2)
            if raw.dtype == np.float16 and not fix.any():
                out16 = raw  # skips a float32 -> float16 round trip
            else:
                part[fix] /= norm[fix, None]
                out16 = part.astype(np.float16)
            self._write_shard(ns, self._new_shard_id(), out16, digs[rows])
            shards += 1
        key = self._request_key(digs, label, field)
        if assemble:
            index, vecs, pos = self._resolve(ns, digs)
            self._assemble(self.root / f"{key}.npy", index, vecs, pos)
        return {"rows": len(texts), "stored": int(todo.size), "already": len(texts) - int(todo.size), "shards": shards,
                "dim": int(vec.shape[1]), "seconds": round(time.perf_counter() - t0, 3), "key": key}

    def stored(self, texts: Sequence[str], *, model: str | None = None, field: str = "response") -> np.ndarray:
        """A bool mask: which of ``texts`` already have a vector under ``model`` and ``field``
        (what :meth:`put` would keep and :meth:`get` would not compute). A damaged shard is
        removed as :meth:`get` removes it, so its texts count as not stored.

        >>> EmbeddingStore("/tmp/work").stored(["a text"], field="instruction")  # doctest: +SKIP
        array([ True])
        """
        ns = self._namespace(self._label(model), field)
        if not ns.is_dir() and self.wd.remote is None:
            return np.zeros(len(texts), dtype=bool)
        _, _, pos = self._resolve(ns, hash_texts(texts))
        return pos >= 0

    def _stored_dim(self, ns: Path) -> int | None:
        """The dimension of the namespace's vectors, from the ``.npy`` header of the first shard
        whose header reads. Only the header is read: checksumming a shard's vectors here would
        cost every ``put`` a pass over that shard, and the vectors are checked wherever a request
        reads them."""
        for _, hp in self._shard_files(ns):
            try:
                shape, _ = npy_header(self._vectors_of(hp))
            except (OSError, ValueError):  # gone or damaged: a request that reads the shard finds out
                continue
            if len(shape) == 2:
                return int(shape[1])
        return None
