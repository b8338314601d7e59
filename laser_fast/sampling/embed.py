"""Embeddings for step 3: sentence-transformers models and a content-keyed float16 memmap store.

Encoding (:func:`encode_texts`): texts are tokenized once with the model's own tokenizer
(truncated to its ``max_seq_length``), sorted by token count and packed into batches whose padded
size ``rows x longest`` stays under a token budget (``batch_tokens``), so nearly every token fed to
the model is a real one; the vectors are L2-normalised and returned in the input order. The result
equals ``SentenceTransformer.encode(texts, normalize_embeddings=True)`` up to float rounding.

Storage (:class:`EmbeddingStore`): vectors are cached per text (per model and text field) in
append-only float16 shards, and each request is served as one memmap keyed by content + model +
text field. :meth:`EmbeddingStore.put` stores vectors computed elsewhere the same way.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from laser_fast.runtime.batching import one_thread_per_forward, oom_halves
from laser_fast.runtime.models import load_sentence_model
from laser_fast.runtime.workdir import text_hash

logger = logging.getLogger(__name__)


TEXT_FIELDS = ("response", "instruction", "both")
#: the record columns :func:`texts_for` reads
TEXT_COLUMNS = ("instruction", "responses")

#: padded-token budget per forward pass on the CPU in float32: 8 rows of MiniLM's 256 tokens.
#: Measured on 2 Xeon cores (AlpacaEval responses): 2048 -> 52 rec/s, 4096 -> 48, 8192 -> 45;
#: smaller batches stay in cache, and a single 256-token row already fills the GEMMs
DEFAULT_BATCH_TOKENS_CPU = 2048
#: the same for bfloat16 / float16 on the CPU (AMX): 2048 -> 148 rec/s, 4096 -> 160, 8192 -> 119
DEFAULT_BATCH_TOKENS_CPU_LOW_PRECISION = 4096
#: the least padded-token budget per forward pass on a GPU (more when the free memory allows it)
DEFAULT_BATCH_TOKENS_GPU = 65536
#: most rows per forward pass when the caller sets no cap
DEFAULT_MAX_BATCH_SIZE = 512
#: Most rows per forward on a GPU: a small encoder needs many short texts per forward to fill it.
DEFAULT_MAX_BATCH_SIZE_GPU = 4096
#: How the vectors of a text are computed, in every key that caches them or results made from
#: them. 2: on the CPU a forward pass holds only texts of one token length (no padding) and at
#: least two rows, so a text's vector does not depend on which texts share its batch.
#: 3: and each forward runs on one torch thread (several forwards side by side in Python threads,
#: as many as torch's thread count): a multi-threaded matrix product of few rows splits its work
#: by the rows it has (seen on Intel Xeon with AVX-512: a text's vector changed with the size of
#: its batch on 2 threads, never on one).
VECTOR_SCHEME = 3


def _gpu_batch_tokens(model: Any) -> int:
    """The token budget of an embedder on a GPU: from the free memory and the encoder's shape
    (:func:`~laser_fast.runtime.batching.cuda_batch_tokens`), at least ``DEFAULT_BATCH_TOKENS_GPU``."""
    from laser_fast.runtime.batching import cuda_batch_tokens

    inner = None
    try:
        inner = model[0].auto_model  # sentence-transformers: the Transformer module's HF model
    except (TypeError, IndexError, KeyError, AttributeError):
        inner = None
    if inner is None or not hasattr(inner, "config"):
        return DEFAULT_BATCH_TOKENS_GPU
    return cuda_batch_tokens(inner, floor=DEFAULT_BATCH_TOKENS_GPU)
#: missing texts are tokenized and length-sorted this many at a time (bounds the token-id memory:
#: at most 64k x max_seq_length int32 ids), then cut into shards of ``chunk_rows``
SORT_WINDOW = 65536


def texts_for(records, field: str) -> list[str]:
    """The text embedded per record: the first answer (``response``, as the reference embeds),
    the first user turn (``instruction``), or both joined by a blank line."""
    if field not in TEXT_FIELDS:
        from laser_fast.errors import ConfigError

        raise ConfigError(f"unknown embedding text field '{field}': use one of {', '.join(TEXT_FIELDS)}")
    # the first answer per record, taken in polars (a Python list of every record's answers
    # would be a large transient at a million rows)
    first_resp = records["responses"].list.first().fill_null("").to_list()
    if field == "response":
        return first_resp
    inst = records["instruction"].to_list()
    if field == "instruction":
        return inst
    return [f"{a}\n\n{b}" for a, b in zip(inst, first_resp)]


class RecordTexts(Sequence):
    """The texts :func:`texts_for` gives, read from the records on demand: ``len``, ``[i]``,
    ``[a:b]`` and :meth:`take` build only the texts asked for, so hashing a million records
    never holds a million Python strings (:meth:`EmbeddingStore.get` reads it in chunks)."""

    def __init__(self, records, field: str):
        texts_for(records.head(0), field)  # checks the field name
        self.records, self.field = records, field

    def __len__(self) -> int:
        return self.records.height

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            out = texts_for(self.records.slice(start, max(stop - start, 0)), self.field)
            return out[::step] if step != 1 else out
        n = len(self)
        if not -n <= i < n:
            raise IndexError(i)
        return texts_for(self.records.slice(i % n, 1), self.field)[0]

    def take(self, rows) -> list[str]:
        """The texts of ``rows`` (in that order)."""
        return texts_for(self.records[np.asarray(rows, dtype=np.int64).tolist()], self.field) if len(rows) else []


#: texts hashed at a time by :func:`hash_texts`
HASH_CHUNK = 65536


def hash_texts(texts: Sequence[str]) -> np.ndarray:
    """SHA-1 of every text (:func:`text_hash`) as an (n, 20) uint8 array, computed ``HASH_CHUNK``
    texts at a time (``texts`` may be a :class:`RecordTexts`)."""
    n = len(texts)
    out = np.empty((n, 20), dtype=np.uint8)
    for s in range(0, n, HASH_CHUNK):
        chunk = texts[s : s + HASH_CHUNK]
        out[s : s + len(chunk)] = np.frombuffer(b"".join([text_hash(t) for t in chunk]), dtype=np.uint8).reshape(-1, 20)
    return out


def _key_of_digests(digs: np.ndarray, model_name: str, field: str) -> str:
    """:func:`content_key` from the texts' digests."""
    h = hashlib.sha256()
    h.update(f"{model_name}\x00{field}\x00{digs.shape[0]}\x00".encode())
    h.update(np.ascontiguousarray(digs).data)
    return h.hexdigest()[:32]


def content_key(texts: Sequence[str], model_name: str, field: str, *, hashes: Sequence[bytes] | None = None) -> str:
    """Key of one request: sha256 over model, field, count and every text's sha1 (``hashes``, when
    the caller has them already, saves hashing the texts twice)."""
    digs = hash_texts(texts) if hashes is None else np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(-1, 20)
    return _key_of_digests(digs, model_name, field)


def new_embed_stats() -> dict[str, float]:
    """Zeroed encoder stats: records, forward_passes, tokens (real), padded_tokens, seconds,
    ``truncated`` (texts cut to the model's ``max_seq_length``) and ``oom_splits`` (batches run
    again as two halves after running out of GPU memory)."""
    return {"records": 0, "forward_passes": 0, "tokens": 0, "padded_tokens": 0, "seconds": 0.0, "truncated": 0, "oom_splits": 0}


def non_padding_share(stats: dict) -> float | None:
    """``tokens / padded_tokens`` of a stats dict (None before any forward pass)."""
    return round(stats["tokens"] / stats["padded_tokens"], 4) if stats.get("padded_tokens") else None


# --------------------------------------------------------------------------------------
# token-budget encoder
# --------------------------------------------------------------------------------------

class _Encoder:
    """Tokenize once, pack by padded-token budget, forward, normalise, restore the order.

    The fast path builds the model's features (``input_ids``, ``attention_mask``,
    ``token_type_ids``) from the token ids we already have and calls the model directly; it is
    used only after checking, on the longest and shortest texts of the first call, that those
    features are identical to the model's own ``preprocess``. Models with a default prompt, other
    feature keys or a tokenizer that differs fall back to ``model.encode`` on each packed batch
    (batch_size = the batch's rows), which is exact by construction.
    """

    _FEATURE_KEYS = frozenset({"input_ids", "attention_mask", "token_type_ids"})

    def __init__(self, model: Any, batch_tokens: int | None, max_batch_size: int | None, *, exact: bool | None = None):
        self.m = model
        if hasattr(model, "eval"):
            model.eval()  # as encode does: no dropout in the direct forward calls
        self.device = str(model.device)
        on_gpu = not self.device.startswith("cpu")
        if batch_tokens:
            self.batch_tokens = int(batch_tokens)
        elif on_gpu:
            self.batch_tokens = _gpu_batch_tokens(model)
        else:
            low = str(next(iter(model.parameters())).dtype) in ("torch.bfloat16", "torch.float16")
            self.batch_tokens = DEFAULT_BATCH_TOKENS_CPU_LOW_PRECISION if low else DEFAULT_BATCH_TOKENS_CPU
        self.max_batch_size = int(max_batch_size) if max_batch_size else (DEFAULT_MAX_BATCH_SIZE_GPU if on_gpu else DEFAULT_MAX_BATCH_SIZE)
        # exact-length batches (the CPU default): a padded batch, or a batch of one row, gives a
        # text a vector a few float32 ulps off the one it gets among other texts (the GEMM shapes
        # differ), so vectors would depend on which texts were embedded together: on the cache's
        # state, the engine's split into workers, a resumed run. One text per forward is
        # canonical already.
        self.exact = (not on_gpu if exact is None else bool(exact)) and self.max_batch_size > 1
        tok = getattr(model, "tokenizer", None)
        self.tok = tok
        self.max_len = int(getattr(model, "max_seq_length", None) or getattr(tok, "model_max_length", 512) or 512)
        self.pad_id = int(tok.pad_token_id) if tok is not None and tok.pad_token_id is not None else 0
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(get_dim() or 0)
        self.fast: bool | None = None  # decided on the first texts seen
        self.extra: dict[str, Any] = {}
        self.with_token_types = False

    # ---- tokenization -------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], block: int = 4096, stats: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Flat int32 token ids and int64 offsets (n + 1) of ``texts``, truncated like the model
        (``stats["truncated"]`` counts the texts cut: those with tokens left over, or, from a
        tokenizer that does not say, those at the length limit)."""
        if self.tok is None:
            # no tokenizer (e.g. a static model): character counts only order the batches
            lens = np.fromiter((max(1, len(t)) for t in texts), dtype=np.int64, count=len(texts))
            off = np.zeros(len(texts) + 1, dtype=np.int64)
            np.cumsum(lens, out=off[1:])
            return np.zeros(0, dtype=np.int32), off
        parts, lens = [], []
        for s in range(0, len(texts), block):
            got = self.tok(list(texts[s:s + block]), truncation=True, max_length=self.max_len, add_special_tokens=True,
                           return_attention_mask=False, return_token_type_ids=False)
            ids = got["input_ids"]
            ln = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
            if stats is not None:
                encs = getattr(got, "encodings", None)
                cut = sum(1 for e in encs if e.overflowing) if encs else int((ln >= self.max_len).sum())
                stats["truncated"] = stats.get("truncated", 0) + cut
            flat = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(ln.sum()))
            parts.append(flat)
            lens.append(ln)
        lens_all = np.concatenate(lens) if lens else np.zeros(0, dtype=np.int64)
        off = np.zeros(lens_all.size + 1, dtype=np.int64)
        np.cumsum(lens_all, out=off[1:])
        return (np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)), off

    def _features(self, ids: np.ndarray, off: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
        lens = off[rows + 1] - off[rows]
        width = int(lens.max())
        inp = np.full((rows.size, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((rows.size, width), dtype=np.int64)
        for k, r in enumerate(rows):
            ln = int(lens[k])
            inp[k, :ln] = ids[off[r]:off[r] + ln]
            mask[k, :ln] = 1
        import torch

        f: dict[str, Any] = {"input_ids": torch.from_numpy(inp), "attention_mask": torch.from_numpy(mask)}
        if self.with_token_types:
            f["token_type_ids"] = torch.zeros_like(f["input_ids"])
        f.update(self.extra)
        return f

    def _decide_fast(self, texts: Sequence[str], ids: np.ndarray, off: np.ndarray) -> None:
        """Use our own features only if they equal ``model.preprocess`` (``model.tokenize`` before
        sentence-transformers 6) on a sample of texts."""
        import torch

        self.fast = False
        m = self.m
        # sentence-transformers 6 calls it `preprocess` (and deprecates `tokenize`); 5.x has `tokenize` only
        preprocess = getattr(m, "preprocess", None) or getattr(m, "tokenize", None)
        if self.tok is None or getattr(m, "default_prompt_name", None) or preprocess is None:
            return
        n = len(texts)
        if n == 0:
            self.fast = None  # decide later
            return
        lens = off[1:] - off[:-1]
        order = np.argsort(-lens, kind="stable")
        sample = np.unique(np.concatenate([order[:4], order[-4:]]))
        try:
            ref = preprocess([texts[i] for i in sample])
        except Exception:  # noqa: BLE001  # pragma: no cover - any failure here only means: use the exact fallback
            return
        tensor_keys = {k for k, v in ref.items() if isinstance(v, torch.Tensor)}
        if not tensor_keys <= self._FEATURE_KEYS or "input_ids" not in tensor_keys or "attention_mask" not in tensor_keys:
            return
        self.with_token_types = "token_type_ids" in tensor_keys
        if self.with_token_types and bool(ref["token_type_ids"].any()):
            return
        self.extra = {k: v for k, v in ref.items() if k not in tensor_keys}
        ours = self._features(ids, off, sample)
        self.fast = all(ours[k].shape == ref[k].shape and bool(torch.equal(ours[k], ref[k].to(ours[k].dtype))) for k in tensor_keys)
        if not self.fast:
            logger.info("embeddings: the model's preprocessing differs from plain tokenization; encoding each packed batch with model.encode")

    # ---- batching -----------------------------------------------------------------------
    def plan(self, lens: np.ndarray, sort: bool = True) -> list[np.ndarray]:
        """Batches of row indices: token-budget packing of length-sorted rows, or (``sort=False``)
        consecutive runs of ``max_batch_size`` rows in input order."""
        if not sort:
            return [np.arange(s, min(s + self.max_batch_size, lens.size), dtype=np.int64) for s in range(0, lens.size, self.max_batch_size)]
        if self.exact:
            return exact_length_batches(lens, self.batch_tokens, self.max_batch_size)
        from laser_fast.runtime.batching import plan_batches

        return plan_batches(lens, self.batch_tokens, self.max_batch_size)

    def forward_batch(self, texts: Sequence[str], ids: np.ndarray, off: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Unit vectors (len(rows), dim) of one packed batch (called under ``torch.inference_mode``)."""
        import torch

        if self.fast:
            f = {k: (v.to(self.m.device) if isinstance(v, torch.Tensor) else v) for k, v in self._features(ids, off, rows).items()}
            e = self.m(f)["sentence_embedding"].float()
            return torch.nn.functional.normalize(e, p=2, dim=1).cpu().numpy()
        return self.m.encode([texts[i] for i in rows], batch_size=len(rows), normalize_embeddings=True,
                             convert_to_numpy=True, show_progress_bar=False)

    def run(self, texts: Sequence[str], ids: np.ndarray, off: np.ndarray, *, sort: bool = True,
            stats: dict | None = None, bar: Any = None) -> np.ndarray:
        """float32 (n, d) unit vectors of ``texts`` (their ids/offsets from :meth:`tokenize`), in order."""
        import torch

        n = len(texts)
        out = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        if self.fast is None:
            self._decide_fast(texts, ids, off)
        lens = off[1:] - off[:-1]
        t0 = time.perf_counter()

        def padded(rows: np.ndarray) -> int:  # a one-row batch is forwarded twice (exact)
            return (2 if self.exact and rows.size == 1 else rows.size) * int(lens[rows].max())

        def forward(rows: np.ndarray) -> np.ndarray:
            fw = np.repeat(rows, 2) if self.exact and rows.size == 1 else rows  # at least two rows (see exact)
            try:
                with torch.inference_mode():  # thread-local: set in each worker thread
                    e = self.forward_batch(texts, ids, off, fw)
                return np.asarray(e, dtype=np.float32)[:rows.size]
            except torch.cuda.OutOfMemoryError as err:
                oom = str(err)  # the error itself would keep the failed forward's tensors alive (its traceback)
            first, second = oom_halves(rows, oom, lens, stats, desc="embedding", unit="text", padded=padded,
                                       fix="free the GPU or embed on the CPU (--device cpu)")
            return np.concatenate([forward(first), forward(second)])

        with one_thread_per_forward(self.exact and self.device.startswith("cpu"), side_by_side=bool(self.fast)) as run_all:
            for rows, e in run_all(forward, self.plan(lens, sort)):
                out[rows] = e
                if stats is not None:
                    bl = lens[rows]
                    stats["forward_passes"] += 1
                    stats["tokens"] += int(bl.sum())
                    stats["padded_tokens"] += padded(rows)
                    stats["records"] += int(rows.size)
                if bar is not None:
                    bar.update(int(rows.size))
        if stats is not None:
            stats["seconds"] += time.perf_counter() - t0
        return out


def exact_length_batches(lens: np.ndarray, batch_tokens: int, max_batch_size: int) -> list[np.ndarray]:
    """Batches of row indices where every row of a batch has the same length: rows grouped by
    length (shortest first, ties in input order), each group cut into runs of
    ``max(2, min(max_batch_size, batch_tokens // length))`` rows. Nothing is padded, so a row's
    result does not depend on the other rows of its batch (a run of one row is forwarded twice by
    the caller: one-row forwards take other kernels).

    >>> [b.tolist() for b in exact_length_batches(np.array([3, 5, 3, 3, 5]), 6, 8)]
    [[0, 2], [3], [1, 4]]
    """
    lens = np.asarray(lens, dtype=np.int64)
    if lens.size == 0:
        return []
    order = np.argsort(lens, kind="stable")
    cuts = np.flatnonzero(np.diff(lens[order])) + 1
    out: list[np.ndarray] = []
    for group in np.split(order, cuts):
        b = max(2, min(int(max_batch_size), int(batch_tokens) // max(int(lens[group[0]]), 1)))
        out.extend(group[s:s + b] for s in range(0, group.size, b))
    return out


def encode_texts(
    model: Any,
    texts: Sequence[str],
    *,
    batch_tokens: int | None = None,
    max_batch_size: int | None = None,
    sort: bool = True,
    device: str | None = None,
    dtype: str | None = None,
    show_progress: bool | None = False,
    exact: bool | None = None,
) -> tuple[np.ndarray, dict]:
    """Embed ``texts`` with token-budget batching; unit-length float32 rows in the input order.

    Args:
        model: a loaded ``SentenceTransformer``, or a model name / path / None (the bundled
            all-MiniLM-L6-v2), loaded with :func:`load_sentence_model`.
        texts: the texts.
        batch_tokens: padded-token budget per forward (rows x longest row); default
            ``DEFAULT_BATCH_TOKENS_CPU`` on the CPU (``..._LOW_PRECISION`` for a bfloat16 /
            float16 model), ``DEFAULT_BATCH_TOKENS_GPU`` on a GPU.
        max_batch_size: most rows per forward (1 = one text per forward); default
            ``DEFAULT_MAX_BATCH_SIZE``.
        sort: False runs consecutive ``max_batch_size`` rows in input order (the naive baseline
            of the benchmark; the budget is then ignored).
        device, dtype: device and compute dtype when ``model`` is a name (see
            :func:`load_sentence_model`).
        show_progress: a progress bar over records.
        exact: batches of one token length only, at least two rows (:func:`exact_length_batches`),
            so each vector is independent of the other texts; None: on the CPU (False packs
            lengths by the padded-token budget, the GPU default).

    Returns:
        ``(vectors, stats)``: ``(n, d)`` float32 and ``records``, ``forward_passes``, ``tokens``
        (real tokens, after truncation to the model's ``max_seq_length``), ``padded_tokens``,
        ``seconds`` (forward passes), ``tokenize_seconds``, ``non_padding`` (tokens / padded).

    Example:
        >>> vecs, st = encode_texts(None, ["a short text", "a longer text " * 20])  # doctest: +SKIP
        >>> vecs.shape, st["forward_passes"]                                          # doctest: +SKIP
        ((2, 384), 1)
    """
    m = load_sentence_model(model, device, dtype) if model is None or isinstance(model, (str, os.PathLike)) else model
    enc = _Encoder(m, batch_tokens, max_batch_size, exact=exact)
    stats = new_embed_stats()
    t0 = time.perf_counter()
    ids, off = enc.tokenize(texts, stats=stats)
    stats["tokenize_seconds"] = round(time.perf_counter() - t0, 4)
    from laser_fast.runtime.progress import progress_bar

    with progress_bar(total=len(texts), desc="embed", unit="rec", show=show_progress) as bar:
        out = enc.run(texts, ids, off, sort=sort, stats=stats, bar=bar)
    stats["non_padding"] = non_padding_share(stats)
    stats["fast_path"] = bool(enc.fast)
    return out, stats




class PoolEmbeddings:
    """The embeddings of a pool's candidate records, loaded on first use.

    Called with pool rows, returns their vectors as a :class:`~laser_fast.sampling.stratum.StoreRows`
    view over the store's float16 memmap. The texts of every candidate record (copies share
    their record's vector) are looked up in — or embedded into — the :class:`EmbeddingStore`
    once, on the first call, inside the ``embed`` timing stage; a run whose strata all fit their
    targets never loads the model.

    Args:
        records: the record table.
        candidate: per record, whether it can be selected.
        row_map: pool row -> record row.
        opts: the run's options (model, field, batching, device).
        workdir: the work directory that holds the store.
        timer: the run's stage timer (the first call is timed as ``embed``).
    """

    def __init__(self, records, candidate: np.ndarray, row_map: np.ndarray, opts, workdir, timer):
        self.records, self.candidate, self.row_map = records, candidate, row_map
        self.opts, self.workdir, self.timer = opts, workdir, timer
        self.info: dict[str, Any] = {}
        self._arr = None
        self._pos = None

    def _load(self) -> None:
        from laser_fast.sampling.store import EmbeddingStore

        opts = self.opts
        with self.timer.stage("embed"):
            n = self.records.height
            emb_rows = np.flatnonzero(self.candidate)  # record rows (copies share them)
            # only the text columns, and no row copy when every record is a candidate
            sub = self.records.select([c for c in TEXT_COLUMNS if c in self.records.columns])
            if emb_rows.size != n:
                sub = sub[emb_rows]
            store = EmbeddingStore(self.workdir)
            # the texts are built and hashed 65k at a time, never all at once
            arr, info = store.get(RecordTexts(sub, opts.embed_field), model=opts.embedding_model, field=opts.embed_field, batch_size=opts.batch_size,
                                  batch_tokens=opts.batch_tokens, device=opts.device, show_progress=opts.show_progress)
            pos = np.full(n, -1, dtype=np.int64)
            pos[emb_rows] = np.arange(emb_rows.size)
            self._arr, self._pos = arr, pos
            self.info.update(info)

    def __call__(self, rows: np.ndarray):
        from laser_fast.sampling.stratum import StoreRows

        if self._arr is None:
            self._load()
        return StoreRows(self._arr, self._pos[self.row_map[rows]])
