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

from laser_fast.errors import InputError, LaserError
from laser_fast.runtime.memory import release_pages
from laser_fast.runtime.models import DEFAULT_EMBEDDING_MODEL, load_sentence_model, resolve_model_name
from laser_fast.sampling.embed import SORT_WINDOW, RecordTexts, _Encoder, _key_of_digests, hash_texts, new_embed_stats, non_padding_share

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# store
# --------------------------------------------------------------------------------------

class _ShardIndex:
    """Where each stored text's vector is: (shard, row), found by a vectorised search.

    The 20-byte sha1 digests of all shards are concatenated; lookups sort the first 8 bytes (as
    uint64) once and ``searchsorted`` the queries, then confirm the full 20 bytes (a shared 8-byte
    prefix of two different digests is resolved by scanning the run of equal prefixes). A text
    stored twice resolves to its first copy (lowest shard, then row).
    """

    def __init__(self, digests: np.ndarray, shard: np.ndarray, row: np.ndarray):
        self.digests = digests  # (m, 20) uint8
        self.shard = shard
        self.row = row
        pre = _prefix64(digests)
        self.order = np.argsort(pre, kind="stable")
        self.sorted_pre = pre[self.order]

    def __len__(self) -> int:
        return int(self.digests.shape[0])

    def lookup(self, q: np.ndarray) -> np.ndarray:
        """Positions (into the concatenated digests) of query digests ``q`` (k, 20); -1 if absent."""
        res = np.full(q.shape[0], -1, dtype=np.int64)
        if q.shape[0] == 0 or len(self) == 0:
            return res
        qp = _prefix64(q)
        qo = np.argsort(qp)  # sorted queries: searchsorted then walks forward (~5x faster at 1M)
        at = np.empty(qp.size, dtype=np.int64)
        at[qo] = np.searchsorted(self.sorted_pre, qp[qo], side="left")
        inb = at < self.sorted_pre.size
        cand = np.where(inb, self.order[np.minimum(at, self.sorted_pre.size - 1)], 0)
        hit = inb & (self.sorted_pre[np.minimum(at, self.sorted_pre.size - 1)] == qp)
        full = hit & np.all(self.digests[cand] == q, axis=1)
        res[full] = cand[full]
        for i in np.flatnonzero(hit & ~full):  # an 8-byte prefix shared by two digests: practically never
            j = int(at[i])
            while j < self.sorted_pre.size and self.sorted_pre[j] == qp[i]:
                if np.array_equal(self.digests[self.order[j]], q[i]):
                    res[i] = self.order[j]
                    break
                j += 1
        return res


def _prefix64(d: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(d[:, :8]).view(">u8").ravel()


class EmbeddingStore:
    """Float16 embeddings cached per text under ``<workdir>/embeddings``.

    Vectors live in append-only shards per (model, text field) namespace: ``shard-N.f16.npy``
    (vectors) and ``shard-N.hashes.npy`` (sha1 of each text), each written to a temporary file
    and renamed, the hashes last, so a shard is either complete or absent. Missing texts are
    tokenized and sorted by length (``SORT_WINDOW`` at a time) before they are cut into shards of
    ``chunk_rows``: each shard holds its own hashes, so its order does not matter, and sorting
    before cutting pads less than sorting inside each chunk. A run killed while embedding keeps
    every finished shard and resumes from there; any later run over any subset of the same texts
    reuses them. For each requested list of texts the store also assembles one (n, d) float16
    memmap ``<key>.npy`` keyed by content + model + field, so an identical request is a single
    file open.

    Example:
        >>> store = EmbeddingStore("/tmp/work")                      # doctest: +SKIP
        >>> emb, info = store.get(["a text", "another"], model=None)  # doctest: +SKIP
        >>> emb.dtype, emb.shape                                      # doctest: +SKIP
        (dtype('float16'), (2, 384))
    """

    def __init__(self, workdir: str | os.PathLike):
        self.root = Path(workdir) / "embeddings"

    def _namespace(self, label: str, field: str) -> Path:
        return self.root / hashlib.sha1(f"{label}\x00{field}".encode()).hexdigest()[:16]

    @staticmethod
    def _label(model: str | None) -> str:
        name = resolve_model_name(model)
        return DEFAULT_EMBEDDING_MODEL if name == resolve_model_name(None) else str(model)

    @staticmethod
    def _shard_files(ns: Path) -> list[tuple[int, Path]]:
        out = []
        for hp in ns.glob("shard-*.hashes.npy"):
            try:
                out.append((int(hp.name.split("-")[1].split(".")[0]), hp))
            except ValueError:
                continue
        return sorted(out)

    def _index(self, ns: Path) -> tuple[_ShardIndex, list[Path]]:
        """The namespace's digest index and its shards' vector files (in index order)."""
        digs, shard, row, vec_paths = [], [], [], []
        for si, (_, hp) in enumerate(self._shard_files(ns)):
            d = np.load(hp)  # (m, 20) uint8: sha1 digests
            digs.append(d.reshape(-1, 20))
            shard.append(np.full(d.shape[0], si, dtype=np.int32))
            row.append(np.arange(d.shape[0], dtype=np.int64))
            vec_paths.append(hp.with_name(hp.name.replace(".hashes.npy", ".f16.npy")))
        if not digs:
            z = np.zeros(0, dtype=np.int64)
            return _ShardIndex(np.zeros((0, 20), dtype=np.uint8), z.astype(np.int32), z), []
        return _ShardIndex(np.concatenate(digs), np.concatenate(shard), np.concatenate(row)), vec_paths

    @staticmethod
    def _save(path: Path, arr: np.ndarray) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.save(f, arr)
        os.replace(tmp, path)

    def _write_shard(self, ns: Path, shard_id: int, vecs16: np.ndarray, digests: np.ndarray) -> None:
        base = ns / f"shard-{shard_id}"
        self._save(base.with_name(base.name + ".f16.npy"), vecs16)
        self._save(base.with_name(base.name + ".hashes.npy"), np.ascontiguousarray(digests, dtype=np.uint8))

    def _next_shard_id(self, ns: Path) -> int:
        files = self._shard_files(ns)
        return files[-1][0] + 1 if files else 0

    @staticmethod
    def _missing(pos: np.ndarray, digs: np.ndarray) -> np.ndarray:
        """Positions of the first occurrence of each digest not found (``pos < 0``), ascending."""
        absent = np.flatnonzero(pos < 0)
        if absent.size == 0:
            return absent
        _, first = np.unique(digs[absent].view("V20").ravel(), return_index=True)
        return np.sort(absent[first])

    def _assemble(self, final: Path, index: _ShardIndex, vec_paths: list[Path], digs: np.ndarray,
                  pos: np.ndarray | None = None, block_rows: int = 1 << 16) -> tuple[np.memmap, float]:
        """Write the request's (n, d) float16 ``.npy`` from the shards, ``block_rows`` output rows
        at a time: each block is gathered from the shards' memmaps and appended to the file with
        plain writes, and the shard pages it touched are released from this process (the page
        cache keeps them), so the resident memory stays near one block instead of growing to the
        request plus the shards (1M x 384 rows: ~0.2 GB peak instead of ~1.9 GB)."""
        t0 = time.perf_counter()
        if pos is None:
            pos = index.lookup(digs)
        if (pos < 0).any():  # pragma: no cover - every text was stored just before
            raise LaserError(f"embedding store {final.parent}: {(pos < 0).sum()} texts have no stored vector; delete that folder and rerun")
        shards = [np.load(p, mmap_mode="r") for p in vec_paths]
        dim = int(shards[0].shape[1]) if shards else 0
        n = digs.shape[0]
        tmp = final.with_name(final.name + ".tmp.npy")
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
                                                     "fortran_order": False, "shape": (n, dim)})
            sh = index.shard[pos]
            rw = index.row[pos]
            for b0 in range(0, n, block_rows):
                bs, br = sh[b0:b0 + block_rows], rw[b0:b0 + block_rows]
                block = np.empty((bs.size, dim), dtype=np.float16)
                order = np.argsort(bs, kind="stable")
                cuts = np.flatnonzero(np.diff(bs[order])) + 1
                touched = []
                for grp in np.split(order, cuts):
                    si = int(bs[grp[0]])
                    block[grp] = shards[si][br[grp]]
                    touched.append(si)
                f.write(block.data)  # contiguous: no copy
                for si in touched:
                    release_pages(shards[si])
        del shards
        os.replace(tmp, final)
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

        Returns:
            ``(array, info)``: info has ``key``, ``model``, ``field``, ``rows``, ``cache_hit``
            (the request's memmap existed), ``computed`` (texts embedded now), ``device``,
            ``seconds`` (total), ``dim``, and when texts were embedded the encoder stats
            ``records``, ``forward_passes``, ``tokens``, ``padded_tokens``, ``embed_seconds``,
            ``non_padding``; ``assemble_seconds`` when the memmap was written.

        Raises:
            ModelLoadError: the model cannot be loaded.
        """
        t_start = time.perf_counter()
        label = self._label(model)
        digs = hash_texts(texts)
        key = _key_of_digests(digs, label, field)
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"{key}.npy"
        info: dict[str, Any] = {"key": key, "model": label, "field": field, "rows": len(texts)}
        if final.exists():
            arr = np.load(final, mmap_mode="r")
            if arr.shape[0] == len(texts):
                info.update(cache_hit=True, computed=0, device=None, seconds=round(time.perf_counter() - t_start, 3), dim=int(arr.shape[1]))
                logger.info("embeddings: reusing %s (%d x %d)", final, arr.shape[0], arr.shape[1])
                return arr, info
        ns = self._namespace(label, field)
        ns.mkdir(parents=True, exist_ok=True)
        index, vec_paths = self._index(ns)
        pos = index.lookup(digs)
        todo = self._missing(pos, digs)
        dev = None
        if todo.size:
            logger.info("embeddings: %d of %d texts to embed (%d cached)", todo.size, len(texts), len(texts) - todo.size)
            m = load_sentence_model(model, device, dtype)
            dev = str(m.device)
            enc = _Encoder(m, batch_tokens, max_batch_size or batch_size)
            stats = new_embed_stats()
            from laser_fast.runtime.progress import progress_bar

            next_id = self._next_shard_id(ns)
            with progress_bar(total=int(todo.size), desc="embed", unit="rec", show=show_progress) as bar:
                for w in range(0, todo.size, SORT_WINDOW):
                    rows = todo[w:w + SORT_WINDOW]
                    wtexts = texts.take(rows) if isinstance(texts, RecordTexts) else [texts[i] for i in rows]
                    ids, off = enc.tokenize(wtexts)
                    order = np.argsort(-(off[1:] - off[:-1]), kind="stable")  # longest first
                    for c in range(0, order.size, chunk_rows):
                        sel = order[c:c + chunk_rows]
                        sub_off = np.zeros(sel.size + 1, dtype=np.int64)
                        np.cumsum(off[sel + 1] - off[sel], out=sub_off[1:])
                        sub_ids = np.concatenate([ids[off[i]:off[i + 1]] for i in sel]) if ids.size else ids
                        e = enc.run([wtexts[i] for i in sel], sub_ids, sub_off, stats=stats, bar=bar)
                        self._write_shard(ns, next_id, e.astype(np.float16), digs[rows[sel]])
                        next_id += 1
            index, vec_paths = self._index(ns)
            pos = None  # the index changed: look the texts up again
            info.update({k: stats[k] for k in ("records", "forward_passes", "tokens", "padded_tokens")},
                        embed_seconds=round(stats["seconds"], 3), non_padding=non_padding_share(stats))
        arr, t_asm = self._assemble(final, index, vec_paths, digs, pos)
        info.update(cache_hit=False, computed=int(todo.size), device=dev, seconds=round(time.perf_counter() - t_start, 3),
                    dim=int(arr.shape[1]), assemble_seconds=round(t_asm, 3))
        return arr, info

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
        index, _ = self._index(ns)
        if len(index):
            first_vec = np.load(next(ns.glob("shard-*.f16.npy")), mmap_mode="r")
            if first_vec.shape[1] != vec.shape[1]:
                raise InputError("EmbeddingStore.put", f"the store {ns} holds {first_vec.shape[1]}-d vectors for model '{label}', got {vec.shape[1]}-d ones",
                                 "pass the model label the vectors come from (model=...)")
        todo = self._missing(index.lookup(digs), digs)
        next_id = self._next_shard_id(ns)
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
            self._write_shard(ns, next_id, out16, digs[rows])
            next_id += 1
            shards += 1
        key = _key_of_digests(digs, label, field)
        if assemble:
            self.root.mkdir(parents=True, exist_ok=True)
            index, vec_paths = self._index(ns)
            self._assemble(self.root / f"{key}.npy", index, vec_paths, digs)
        return {"rows": len(texts), "stored": int(todo.size), "already": len(texts) - int(todo.size), "shards": shards,
                "dim": int(vec.shape[1]), "seconds": round(time.perf_counter() - t0, 3), "key": key}
