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
import mmap
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, LaserError, ModelLoadError
from .scores import minilm_path

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {"default", "minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}

TEXT_FIELDS = ("response", "instruction", "both")
#: the record columns :func:`texts_for` reads
TEXT_COLUMNS = ("instruction", "responses")

#: padded-token budget per forward pass on the CPU in float32: 8 rows of MiniLM's 256 tokens.
#: Measured on 2 Xeon cores (AlpacaEval responses): 2048 -> 52 rec/s, 4096 -> 48, 8192 -> 45;
#: smaller batches stay in cache, and a single 256-token row already fills the GEMMs
DEFAULT_BATCH_TOKENS_CPU = 2048
#: the same for bfloat16 / float16 on the CPU (AMX): 2048 -> 148 rec/s, 4096 -> 160, 8192 -> 119
DEFAULT_BATCH_TOKENS_CPU_LOW_PRECISION = 4096
#: padded-token budget per forward pass on a GPU (fp16 MiniLM: 256 rows of 256 tokens)
DEFAULT_BATCH_TOKENS_GPU = 65536
#: most rows per forward pass when the caller sets no cap
DEFAULT_MAX_BATCH_SIZE = 512
#: missing texts are tokenized and length-sorted this many at a time (bounds the token-id memory:
#: at most 64k x max_seq_length int32 ids), then cut into shards of ``chunk_rows``
SORT_WINDOW = 65536


def resolve_model_name(model: str | None) -> str:
    """Map None / 'minilm' / 'sentence-transformers/all-MiniLM-L6-v2' to the shipped local copy."""
    if model is None or str(model).strip().lower() in _DEFAULT_ALIASES:
        return minilm_path()
    return str(model)


def best_torch_device(device: str | None = None) -> str:
    if device:
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


_MODEL_CACHE: dict[tuple[str, str], object] = {}


_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}


def _resolve_dtype(dtype: str | None, dev: str) -> str:
    if dtype is None or str(dtype).lower() == "auto":
        return "float16" if dev.startswith("cuda") else "float32"
    key = str(dtype).lower()
    if key not in _DTYPES:
        from .errors import ConfigError

        raise ConfigError(f"unknown embedding dtype '{dtype}': use float32, float16 or bfloat16 (or leave it out)")
    return _DTYPES[key]


def load_sentence_model(model: str | None, device: str | None = None, dtype: str | None = None):
    """Load a sentence-transformers model by hub id or local path (lazily cached per process).

    Args:
        model: hub id or local path (None: the bundled all-MiniLM-L6-v2).
        device: torch device (None: CUDA when available, else the CPU).
        dtype: compute dtype; None = float16 on CUDA, float32 on the CPU (exact). ``bfloat16``
            on a CPU with AMX / AVX512-BF16 is ~3x faster (see benchmarks/case_embed.py) and
            moves unit vectors by up to ~3e-3 per component (cosine to the float32 vector
            >= 0.9999); the store does not key its cache by dtype, as with CUDA float16.

    Raises:
        ModelLoadError: the model cannot be loaded (e.g. offline without a local copy).
        ConfigError: an unknown dtype.
    """
    name = resolve_model_name(model)
    dev = best_torch_device(device)
    dt = _resolve_dtype(dtype, dev)
    key = (name, dev, dt)
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    from sentence_transformers import SentenceTransformer

    local = os.path.isdir(name)
    try:
        m = SentenceTransformer(name, device=dev, local_files_only=local or os.environ.get("HF_HUB_OFFLINE") == "1", trust_remote_code=False)
    except Exception as e:
        raise ModelLoadError(
            f"could not load the embedding model '{model}' ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}). "
            "Without network access, download it elsewhere and pass its local folder with --embedding-model PATH "
            "(or leave the option out to use the bundled all-MiniLM-L6-v2)"
        ) from None
    if dt == "float16":
        m = m.half()
    elif dt == "bfloat16":
        import torch

        m = m.to(torch.bfloat16)
    _MODEL_CACHE[key] = m
    return m


def texts_for(records, field: str) -> list[str]:
    """The text embedded per record: the first answer (``response``, as the reference embeds),
    the first user turn (``instruction``), or both joined by a blank line."""
    if field not in TEXT_FIELDS:
        from .errors import ConfigError

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


def text_hash(t: str) -> bytes:
    return hashlib.sha1(t.encode("utf-8", "surrogatepass")).digest()


def new_embed_stats() -> dict[str, float]:
    """Zeroed encoder stats: records, forward_passes, tokens (real), padded_tokens, seconds."""
    return {"records": 0, "forward_passes": 0, "tokens": 0, "padded_tokens": 0, "seconds": 0.0}


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

    def __init__(self, model: Any, batch_tokens: int | None, max_batch_size: int | None):
        self.m = model
        if hasattr(model, "eval"):
            model.eval()  # as encode does: no dropout in the direct forward calls
        self.device = str(model.device)
        on_gpu = not self.device.startswith("cpu")
        if batch_tokens:
            self.batch_tokens = int(batch_tokens)
        elif on_gpu:
            self.batch_tokens = DEFAULT_BATCH_TOKENS_GPU
        else:
            low = str(next(iter(model.parameters())).dtype) in ("torch.bfloat16", "torch.float16")
            self.batch_tokens = DEFAULT_BATCH_TOKENS_CPU_LOW_PRECISION if low else DEFAULT_BATCH_TOKENS_CPU
        self.max_batch_size = int(max_batch_size) if max_batch_size else DEFAULT_MAX_BATCH_SIZE
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
    def tokenize(self, texts: Sequence[str], block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Flat int32 token ids and int64 offsets (n + 1) of ``texts``, truncated like the model."""
        if self.tok is None:
            # no tokenizer (e.g. a static model): character counts only order the batches
            lens = np.fromiter((max(1, len(t)) for t in texts), dtype=np.int64, count=len(texts))
            off = np.zeros(len(texts) + 1, dtype=np.int64)
            np.cumsum(lens, out=off[1:])
            return np.zeros(0, dtype=np.int32), off
        parts, lens = [], []
        for s in range(0, len(texts), block):
            ids = self.tok(list(texts[s:s + block]), truncation=True, max_length=self.max_len, add_special_tokens=True,
                           return_attention_mask=False, return_token_type_ids=False)["input_ids"]
            ln = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
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
        """Use our own features only if they equal ``model.preprocess`` on a sample of texts."""
        import torch

        self.fast = False
        m = self.m
        if self.tok is None or getattr(m, "default_prompt_name", None) or not hasattr(m, "preprocess"):
            return
        n = len(texts)
        if n == 0:
            self.fast = None  # decide later
            return
        lens = off[1:] - off[:-1]
        order = np.argsort(-lens, kind="stable")
        sample = np.unique(np.concatenate([order[:4], order[-4:]]))
        try:
            ref = m.preprocess([texts[i] for i in sample])
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
        from .scorers.hf import plan_batches

        return plan_batches(lens, self.batch_tokens, self.max_batch_size)

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
        with torch.inference_mode():
            for rows in self.plan(lens, sort):
                if self.fast:
                    f = {k: (v.to(self.m.device) if isinstance(v, torch.Tensor) else v) for k, v in self._features(ids, off, rows).items()}
                    e = self.m(f)["sentence_embedding"].float()
                    e = torch.nn.functional.normalize(e, p=2, dim=1).cpu().numpy()
                else:
                    e = self.m.encode([texts[i] for i in rows], batch_size=len(rows), normalize_embeddings=True,
                                      convert_to_numpy=True, show_progress_bar=False)
                out[rows] = np.asarray(e, dtype=np.float32)
                if stats is not None:
                    bl = lens[rows]
                    stats["forward_passes"] += 1
                    stats["tokens"] += int(bl.sum())
                    stats["padded_tokens"] += int(rows.size * bl.max())
                    stats["records"] += int(rows.size)
                if bar is not None:
                    bar.update(int(rows.size))
        if stats is not None:
            stats["seconds"] += time.perf_counter() - t0
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
    enc = _Encoder(m, batch_tokens, max_batch_size)
    stats = new_embed_stats()
    t0 = time.perf_counter()
    ids, off = enc.tokenize(texts)
    stats["tokenize_seconds"] = round(time.perf_counter() - t0, 4)
    from .progress import progress_bar

    with progress_bar(total=len(texts), desc="embed", unit="rec", show=show_progress) as bar:
        out = enc.run(texts, ids, off, sort=sort, stats=stats, bar=bar)
    stats["non_padding"] = non_padding_share(stats)
    stats["fast_path"] = bool(enc.fast)
    return out, stats


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


def release_pages(arr: np.ndarray) -> None:
    """Drop a read-only memmap's resident pages from this process (they stay in the page cache)."""
    mm = getattr(arr, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # pragma: no cover - a platform without it
            pass


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
            from .progress import progress_bar

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
