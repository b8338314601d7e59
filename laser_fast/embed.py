"""Embeddings for step 3: sentence-transformers models and a content-keyed float16 memmap store.

See :class:`EmbeddingStore`: vectors are cached per text (per model and text field) in
append-only float16 shards, and each request is served as one memmap keyed by content + model +
text field.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import ModelLoadError
from .scores import minilm_path

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {"default", "minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}

TEXT_FIELDS = ("response", "instruction", "both")


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


def load_sentence_model(model: str | None, device: str | None = None):
    """Load a sentence-transformers model by hub id or local path (lazily cached per process).

    Raises:
        ModelLoadError: the model cannot be loaded (e.g. offline without a local copy).
    """
    name = resolve_model_name(model)
    dev = best_torch_device(device)
    key = (name, dev)
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
    if dev.startswith("cuda"):
        m = m.half()
    _MODEL_CACHE[key] = m
    return m


def texts_for(records, field: str) -> list[str]:
    """The text embedded per record: the first answer (``response``, as the reference embeds),
    the first user turn (``instruction``), or both joined by a blank line."""
    if field not in TEXT_FIELDS:
        from .errors import ConfigError

        raise ConfigError(f"unknown embedding text field '{field}': use one of {', '.join(TEXT_FIELDS)}")
    first_resp = [r[0] if r else "" for r in records["responses"].to_list()]
    if field == "response":
        return first_resp
    inst = records["instruction"].to_list()
    if field == "instruction":
        return inst
    return [f"{a}\n\n{b}" for a, b in zip(inst, first_resp)]


def content_key(texts: Sequence[str], model_name: str, field: str) -> str:
    h = hashlib.sha256()
    h.update(f"{model_name}\x00{field}\x00{len(texts)}\x00".encode())
    for t in texts:
        h.update(text_hash(t))
    return h.hexdigest()[:32]


def text_hash(t: str) -> bytes:
    return hashlib.sha1(t.encode("utf-8", "surrogatepass")).digest()


class EmbeddingStore:
    """Float16 embeddings cached per text under ``<workdir>/embeddings``.

    Vectors live in append-only shards per (model, text field) namespace: ``shard-N.f16.npy``
    (vectors) and ``shard-N.hashes.npy`` (sha1 of each text), each written to a temporary file
    and renamed, the hashes last, so a shard is either complete or absent. A run killed while
    embedding keeps every finished chunk and resumes from there; any later run over any subset
    of the same texts reuses them. For each requested list of texts the store also assembles
    one (n, d) float16 memmap ``<key>.npy`` keyed by content + model + field, so an identical
    request is a single file open.

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

    def _index(self, ns: Path) -> tuple[dict[bytes, tuple[int, int]], list[Path]]:
        index: dict[bytes, tuple[int, int]] = {}
        shards = sorted(ns.glob("shard-*.hashes.npy"), key=lambda p: int(p.name.split("-")[1].split(".")[0]))
        vec_paths = []
        for si, hp in enumerate(shards):
            raw = np.load(hp).tobytes()  # (m, 20) uint8: sha1 digests (bytes keep trailing zeros)
            vec_paths.append(hp.with_name(hp.name.replace(".hashes.npy", ".f16.npy")))
            for r in range(len(raw) // 20):
                index.setdefault(raw[20 * r : 20 * r + 20], (si, r))
        return index, vec_paths

    @staticmethod
    def _save(path: Path, arr: np.ndarray) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.save(f, arr)
        os.replace(tmp, path)

    def get(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        field: str = "response",
        batch_size: int = 64,
        chunk_rows: int = 4096,
        device: str | None = None,
        show_progress: bool | None = None,
    ) -> tuple[np.memmap, dict]:
        """Return the (n, d) float16 memmap of ``texts`` embeddings, computing only what is missing.

        Returns:
            ``(array, info)``: info says how many texts were cached vs computed, the key, the
            model, the device and the seconds spent embedding.

        Raises:
            ModelLoadError: the model cannot be loaded.
        """
        import time

        name = resolve_model_name(model)
        label = DEFAULT_EMBEDDING_MODEL if name == resolve_model_name(None) else str(model)
        key = content_key(texts, label, field)
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"{key}.npy"
        info = {"key": key, "model": label, "field": field, "rows": len(texts)}
        if final.exists():
            arr = np.load(final, mmap_mode="r")
            if arr.shape[0] == len(texts):
                info.update(cache_hit=True, computed=0, device=None, seconds=0.0, dim=int(arr.shape[1]))
                logger.info("embeddings: reusing %s (%d x %d)", final, arr.shape[0], arr.shape[1])
                return arr, info
        ns = self._namespace(label, field)
        ns.mkdir(parents=True, exist_ok=True)
        hashes = [text_hash(t) for t in texts]
        index, vec_paths = self._index(ns)
        missing_pos: dict[bytes, int] = {}
        for i, h in enumerate(hashes):
            if h not in index and h not in missing_pos:
                missing_pos[h] = i
        todo = list(missing_pos.values())
        t0 = time.perf_counter()
        dev = None
        if todo:
            logger.info("embeddings: %d of %d texts to embed (%d cached)", len(todo), len(texts), len(texts) - len(todo))
            m = load_sentence_model(model, device)
            dev = str(m.device)
            from .progress import progress_bar

            # longest first inside each chunk is done by sentence-transformers; chunks keep resume cheap
            next_id = len(vec_paths)
            with progress_bar(total=len(todo), desc="embed", unit="rec", show=show_progress) as bar:
                for start in range(0, len(todo), chunk_rows):
                    rows = todo[start : start + chunk_rows]
                    e = m.encode([texts[i] for i in rows], batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
                    base = ns / f"shard-{next_id}"
                    self._save(base.with_name(base.name + ".f16.npy"), e.astype(np.float16))
                    self._save(base.with_name(base.name + ".hashes.npy"), np.frombuffer(b"".join(hashes[i] for i in rows), dtype=np.uint8).reshape(-1, 20))
                    next_id += 1
                    bar.update(len(rows))
            index, vec_paths = self._index(ns)
        # assemble the request's array, shard by shard
        shards = [np.load(p, mmap_mode="r") for p in vec_paths]
        dim = int(shards[0].shape[1]) if shards else 0
        loc = np.array([index[h] for h in hashes], dtype=np.int64).reshape(-1, 2)
        tmp = final.with_name(final.name + ".tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(texts), dim))
        for si, sh in enumerate(shards):
            sel = np.flatnonzero(loc[:, 0] == si)
            if sel.size:
                out[sel] = sh[loc[sel, 1]]
        out.flush()
        del out
        os.replace(tmp, final)
        info.update(cache_hit=False, computed=len(todo), device=dev, seconds=round(time.perf_counter() - t0, 3), dim=dim)
        return np.load(final, mmap_mode="r"), info
