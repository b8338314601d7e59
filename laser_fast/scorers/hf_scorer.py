"""The base of the Hugging Face model scorers: lazy loading, the token-budget batched run, and the
conversation views (every exchange, the last one) they score."""
from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np
import polars as pl

from laser_fast._version import __version__
from laser_fast.errors import ConfigError, ModelLoadError
from laser_fast.runtime.batching import new_stats, run_batched
from laser_fast.runtime.devices import torch_device
from laser_fast.runtime.kernels import offsets_from_lengths, segment_mean
from laser_fast.runtime.models import load_hf
from laser_fast.scorers.base import Scorer

logger = logging.getLogger(__name__)


#: System prompt the difficulty scorer was trained with (the model card's; ``{category}`` is filled in).


_TURNS = ("all", "last")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _want_progress(show_progress: bool | None) -> bool:
    if show_progress is None:
        return logger.isEnabledFor(logging.INFO)
    return bool(show_progress)


def _exchanges(batch: pl.DataFrame, turns: str) -> tuple[np.ndarray, list[str | None], list[str | None]]:
    """Units to score: ``(record index per unit, user turn, its answer)``, in record order."""
    n = batch.height
    if turns == "last":
        users, resps = _last_exchange(batch)
        return np.arange(n, dtype=np.int64), users, resps
    if "user_turns" not in batch.columns:
        return (np.arange(n, dtype=np.int64), batch["instruction"].to_list(),
                batch["response"].to_list() if "response" in batch.columns else [None] * n)
    rec: list[int] = []
    users: list[str | None] = []
    resps: list[str | None] = []
    ut = batch["user_turns"].to_list()
    rs = batch["responses"].to_list() if "responses" in batch.columns else [None] * n
    for i in range(n):
        u = ut[i] or []
        r = rs[i] or []
        if not u:  # keep a unit so the record shows up (scored NaN)
            rec.append(i)
            users.append(None)
            resps.append(None)
            continue
        for k, text in enumerate(u):
            rec.append(i)
            users.append(text)
            resps.append(r[k] if k < len(r) else None)
    return np.asarray(rec, dtype=np.int64), users, resps


def _last_exchange(batch: pl.DataFrame) -> tuple[list[str | None], list[str | None]]:
    """The last user turn and the last response of each record (the ingestion's ``instruction``
    column is the first user turn)."""
    n = batch.height
    resps = batch["response"].to_list() if "response" in batch.columns else [None] * n
    if "user_turns" in batch.columns:
        users = [u[-1] if u else None for u in batch["user_turns"].to_list()]
        return [u if u is not None else f for u, f in zip(users, batch["instruction"].to_list())], resps
    return batch["instruction"].to_list(), resps


def _per_record_mean(values: np.ndarray, rec: np.ndarray, n: int) -> np.ndarray:
    """Mean of the finite unit values of each record (NaN when none)."""
    counts = np.bincount(rec, minlength=n)
    return segment_mean(np.asarray(values, dtype=np.float64), offsets_from_lengths(counts), skipna=True)


def _gather_last(hidden, lengths: np.ndarray):
    import torch

    rows = torch.arange(hidden.shape[0], device=hidden.device)
    last = torch.as_tensor(np.asarray(lengths) - 1, device=hidden.device)
    return hidden[rows, last]


class _HFScorer(Scorer):
    """Shared plumbing: lazy loading, stats, fingerprint, batching knobs."""

    kind: str = "causal_lm"
    default_model: str = ""
    num_labels: int | None = None

    def __init__(self, model: str | None = None, *, revision: str | None = None, device: str | None = None,
                 batch_tokens: int | None = None, max_batch_size: int = 64, max_length: int = 2048,
                 turns: str = "all", dtype: str | None = None):
        if turns not in _TURNS:
            raise ConfigError(f"{self.name}: turns must be one of {', '.join(_TURNS)}, got {turns!r}")
        self.model_id = model or self.default_model
        self.revision = revision
        self.device = device
        self.batch_tokens = batch_tokens
        self.max_batch_size = int(max_batch_size)
        self.max_length = int(max_length)
        self.turns = turns
        if dtype not in (None, "bfloat16", "float32"):
            raise ConfigError(f"{self.name}: dtype must be 'bfloat16', 'float32' or None, got {dtype!r}")
        self.dtype = dtype  # None: bf16 on CUDA, float32 on CPU
        self.stats: dict[str, Any] = new_stats()
        self._model = None
        self._tok = None
        self._dev: str | None = None

    # -- identity -------------------------------------------------------------------
    def _template_text(self) -> str:
        return ""

    @property
    def fingerprint(self) -> str:
        return (f"{self.name}|model={self.model_id}@{self.revision or 'main'}|tpl={_sha(self._template_text())}"
                f"|max_length={self.max_length}|turns={self.turns}{'|dtype=' + self.dtype if self.dtype else ''}|v{__version__}")

    # -- loading --------------------------------------------------------------------
    def _load(self):
        if self._model is None:
            self._dev = torch_device(self.device)
            self._model, self._tok = load_hf(self.model_id, self.kind, revision=self.revision, device=self._dev,
                                             num_labels=self.num_labels, dtype=self.dtype)
            self._after_load()
        return self._model, self._tok

    def _after_load(self) -> None:
        pass

    def _budget(self, batch_size: int | None) -> tuple[int, int]:
        bt = self.batch_tokens or (32768 if str(self._dev).startswith("cuda") else 8192)
        mbs = int(batch_size) if batch_size else self.max_batch_size
        return int(bt), max(1, mbs)

    def _encode(self, texts: list[str], special: bool = False) -> list[list[int]]:
        if not texts:
            return []
        return self._tok(texts, add_special_tokens=special)["input_ids"]

    def _chat(self, convs: list[list[dict]], generation_prompt: bool) -> list[str]:
        tok = self._tok
        if getattr(tok, "chat_template", None) is None:
            raise ModelLoadError(f"{self.name}: the tokenizer of model '{self.model_id}' has no chat template; "
                                 "use the model's own tokenizer folder (with chat_template) or another model")
        return [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=generation_prompt) for c in convs]

    def _run(self, seqs, fn, batch_size, show_progress):
        bt, mbs = self._budget(batch_size)
        return run_batched(seqs, fn, batch_tokens=bt, max_batch_size=mbs, pad_id=int(self._tok.pad_token_id),
                           device=self._dev, stats=self.stats, show_progress=_want_progress(show_progress), desc=self.name)

    def _warn_missing(self, out: np.ndarray, why: str) -> None:
        bad = int((~np.isfinite(out)).sum())
        if bad:
            logger.warning("%s: %d record(s) not scored (NaN): %s", self.name, bad, why)
