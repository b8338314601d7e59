"""Embeddings for step 3: sentence-transformers models and a content-keyed float16 memmap store.

The store lives in ``<workdir>/embeddings/``. An array is keyed by the sha256 of the model name,
the embedded text field and the hashes of every text in order, so a later run over the same
records reuses it, and any change (a record, the model, the field) computes a new one. Rows are
written in chunks into ``<key>.partial.npy`` with a progress sidecar, so a run killed while
embedding resumes from the last finished chunk; the finished array is renamed into place
(atomic).
"""
from __future__ import annotations

import hashlib
import json
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
        h.update(hashlib.sha1(t.encode("utf-8", "surrogatepass")).digest())
    return h.hexdigest()[:32]


class EmbeddingStore:
    """Content-keyed float16 memmap arrays under ``<workdir>/embeddings``.

    Example:
        >>> store = EmbeddingStore("/tmp/work")                      # doctest: +SKIP
        >>> emb, info = store.get(["a text", "another"], model=None)  # doctest: +SKIP
        >>> emb.dtype, emb.shape                                      # doctest: +SKIP
        (dtype('float16'), (2, 384))
    """

    def __init__(self, workdir: str | os.PathLike):
        self.root = Path(workdir) / "embeddings"

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
        """Return the (n, d) float16 memmap of ``texts`` embeddings, computing what is missing.

        Returns:
            ``(array, info)`` where info says whether the cache was hit, the key, the model, the
            device and the seconds spent embedding.
        """
        import time

        name = resolve_model_name(model)
        label = DEFAULT_EMBEDDING_MODEL if name == resolve_model_name(None) else str(model)
        key = content_key(texts, label, field)
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"{key}.npy"
        meta_path = self.root / f"{key}.json"
        info = {"key": key, "model": label, "field": field, "rows": len(texts)}
        if final.exists():
            arr = np.load(final, mmap_mode="r")
            if arr.shape[0] == len(texts):
                info.update(cache_hit=True, device=None, seconds=0.0, dim=int(arr.shape[1]))
                logger.info("embeddings: reusing %s (%d x %d)", final, arr.shape[0], arr.shape[1])
                return arr, info
        t0 = time.perf_counter()
        m = load_sentence_model(model, device)
        dim = int(m.get_sentence_embedding_dimension())
        dev = str(m.device)
        partial = self.root / f"{key}.partial.npy"
        progress = self.root / f"{key}.partial.json"
        done = 0
        if partial.exists() and progress.exists():
            try:
                done = int(json.loads(progress.read_text())["rows_done"])
                out = np.lib.format.open_memmap(partial, mode="r+")
                if out.shape != (len(texts), dim):
                    done = 0
            except Exception:  # corrupt leftovers: start over
                done = 0
        if done == 0:
            out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(len(texts), dim))
        elif done:
            logger.info("embeddings: resuming %s at row %d of %d", key, done, len(texts))
        from .progress import progress_bar

        with progress_bar(total=len(texts), initial=done, desc="embed", unit="rec", show=show_progress) as bar:
            for start in range(done, len(texts), chunk_rows):
                chunk = list(texts[start : start + chunk_rows])
                e = m.encode(chunk, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
                out[start : start + len(chunk)] = e.astype(np.float16)
                out.flush()
                tmp = progress.with_suffix(".tmp")
                tmp.write_text(json.dumps({"rows_done": start + len(chunk)}))
                os.replace(tmp, progress)
                bar.update(len(chunk))
        del out
        os.replace(partial, final)
        progress.unlink(missing_ok=True)
        seconds = time.perf_counter() - t0
        info.update(cache_hit=False, device=dev, seconds=round(seconds, 3), dim=dim)
        tmp = meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: v for k, v in info.items() if k != "cache_hit"}, indent=1))
        os.replace(tmp, meta_path)
        return np.load(final, mmap_mode="r"), info
