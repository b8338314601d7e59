"""The base of the Hugging Face model scorers: lazy loading, the token-budget batched run, and the
conversation views (every exchange, the last one) they score."""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from laser_fast._version import __version__
from laser_fast.errors import ConfigError, ModelLoadError
from laser_fast.runtime.batching import MIN_FILL, cuda_batch_tokens, new_stats, run_batched
from laser_fast.runtime.devices import planned_device, planned_dtype, torch_device
from laser_fast.runtime.kernels import offsets_from_lengths, segment_mean
from laser_fast.runtime.models import free_cuda_cache, load_hf, remote_code_allowed
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
    gpu_share = 1.0  # 7-14B models: a GPU each
    """Shared plumbing: lazy loading, stats, fingerprint, batching knobs."""

    kind: str = "causal_lm"
    default_model: str = ""
    num_labels: int | None = None

    def __init__(self, model: str | None = None, *, revision: str | None = None, device: str | None = None,
                 batch_tokens: int | None = None, max_batch_size: int | None = None, max_length: int = 2048,
                 turns: str = "all", dtype: str | None = None, trust_remote_code: Sequence[str] | bool = (),
                 packing: bool | str = "auto"):
        if turns not in _TURNS:
            raise ConfigError(f"{self.name}: turns must be one of {', '.join(_TURNS)}, got {turns!r}")
        self.model_id = model or self.default_model
        self.revision = revision
        self.device = device
        self.batch_tokens = batch_tokens
        self.max_batch_size = int(max_batch_size) if max_batch_size else None
        # the opt-in list of --trust-remote-code (True: this scorer's model, whatever it is)
        self.trust_remote_code = trust_remote_code
        if packing not in ("auto", True, False):
            raise ConfigError(f"{self.name}: packing must be 'auto', True or False, got {packing!r}")
        self.packing = packing
        self.max_length = int(max_length)
        self.turns = turns
        if dtype not in (None, "bfloat16", "float32"):
            raise ConfigError(f"{self.name}: dtype must be 'bfloat16', 'float32' or None, got {dtype!r}")
        self.dtype = dtype  # None: bf16 on CUDA, float32 on CPU
        self.stats: dict[str, Any] = new_stats()
        self._model = None
        self._tok = None
        self._dev: str | None = None
        self._auto_tokens: int | None = None

    # -- identity -------------------------------------------------------------------
    def _template_text(self) -> str:
        return ""

    def _model_key(self) -> str:
        """The model in the fingerprint: a hub id, or a local folder's path and files."""
        from laser_fast.runtime.fingerprint import model_identity

        return str(model_identity(self.model_id))

    @property
    def fingerprint(self) -> str:
        return (f"{self.name}|model={self._model_key()}@{self.revision or 'main'}|tpl={_sha(self._template_text())}"
                f"|max_length={self.max_length}|turns={self.turns}|dtype={self.resolved_dtype()}|v{__version__}")

    def resolved_dtype(self) -> str:
        """The dtype the model runs in: ``dtype``, else the policy
        (:func:`~laser_fast.runtime.devices.torch_dtype`: bfloat16 on a GPU that computes in it,
        float32 elsewhere) for the device the run plans for (:func:`planned_device`: on a Ray
        driver, its workers'). Part of the fingerprint: scores of two dtypes differ in their last
        digits, so a cache never mixes them (a GPU run and a CPU run over one work directory)."""
        if self.dtype:
            return self.dtype
        return planned_dtype(self.device)

    def worker_pins(self) -> dict:
        return {"dtype": self.resolved_dtype()}  # a worker with another kind of GPU computes in the driver's

    def apply_pins(self, pins: dict) -> None:
        if pins["dtype"] != self.dtype:  # the pins come from worker_pins of this class on the driver
            self.release()
            self.dtype = pins["dtype"]

    # -- loading --------------------------------------------------------------------
    @property
    def used_device(self) -> str | None:
        if self._model is None:
            return self._dev
        try:
            p = next(self._model.parameters())
            packed = ", packed" if getattr(self._model, "_laser_packing", False) else ""
            return f"{p.device} ({str(p.dtype).replace('torch.', '')}{packed})"
        except (StopIteration, AttributeError):
            return self._dev

    def prepare(self, batch: pl.DataFrame):
        """The token ids :meth:`score` would build for ``batch`` (its ``build_inputs``), to be passed
        back as ``score(batch, prepared=...)``: a scoring run builds the next chunk's inputs in a
        thread while the model runs on the current one (see :attr:`prefetch`)."""
        return self.build_inputs(batch)

    @property
    def prefetch(self) -> bool:
        """Whether a scoring run should prepare the next chunk while this one runs: on CUDA, where
        the GPU would otherwise wait for chat templating and tokenizing (on the CPU both would
        compete for the same cores)."""
        return torch_device(self.device).startswith("cuda")

    @property
    def cache_chunk(self) -> int:
        """Records per cached shard in a scoring run: 8192 on CUDA (a chunk bounds the batches, and
        small ones would leave the GPU idle; a crash loses at most one chunk), 128 on the CPU. The
        driver cuts the chunks, for the device its engine's workers have (:func:`planned_device`)."""
        return 8192 if planned_device(self.device).startswith("cuda") else 128

    @property
    def remote_code(self) -> bool:
        """Whether the user opted in to run this scorer's checkpoint code (``--trust-remote-code``)."""
        if self.trust_remote_code is True:
            return True
        return remote_code_allowed(self.model_id, self.trust_remote_code or ())

    def host_memory_mb(self) -> int | None:
        from laser_fast.runtime.model_memory import model_mb

        # the longest sequence: the kept tokens, and for IFD its instruction's tokens too; IFD reads
        # log-probabilities over the vocabulary head_chunk positions at a time
        longest = self.max_length + int(getattr(self, "max_prompt_length", 0))
        bt = int(self.batch_tokens or 8192)
        return model_mb(self.model_id, revision=self.revision,  # bfloat16 is counted as float32 (model_memory)
                        batch_tokens=bt, seq_len=longest, head_rows=min(int(getattr(self, "head_chunk", 0)), bt))

    def _load(self):
        if self._model is None:
            self._dev = torch_device(self.device)
            self._model, self._tok = load_hf(self.model_id, self._load_kind(), revision=self.revision, device=self._dev,
                                             num_labels=self.num_labels, dtype=self.dtype, trust_remote_code=self.remote_code)
            self._after_load()
        return self._model, self._tok

    def _load_kind(self) -> str:
        return self.kind

    def _after_load(self) -> None:
        self._set_packing()

    def _set_packing(self) -> None:
        """Mark the model for padding-free forwards (``packing``: ``"auto"`` = where
        :func:`~laser_fast.runtime.packing.packing_supported`; True = always, also on the CPU
        where it is slow; False = never). The published remote-code difficulty model is never packed."""
        from laser_fast.runtime.packing import packing_supported

        model = self._model
        if self.remote_code:
            on = False
        elif self.packing == "auto":
            on = packing_supported(model, self._dev)
        else:
            on = bool(self.packing)
        model._laser_packing = on
        self.stats["packed"] = int(on)

    def attach(self, model, tokenizer, device: str | None = None) -> None:
        """Use an already built model and tokenizer (benchmarks, tests, a model shared with other
        code) instead of loading ``model_id``."""
        self._model, self._tok = model, tokenizer
        self._dev = str(device) if device else str(next(model.parameters()).device)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.convert_ids_to_tokens(0)
        self._auto_tokens = None
        self._after_load()

    def release(self) -> None:
        """Drop the model (its GPU memory is freed); the next :meth:`score` loads it again."""
        self._model = None
        self._tok = None
        self._auto_tokens = None
        free_cuda_cache()

    def _budget(self, batch_size: int | None) -> tuple[int, int]:
        """``(batch_tokens, max_batch_size)``: on CUDA the token budget comes from the free GPU memory
        and the model's shape (:func:`~laser_fast.runtime.batching.cuda_batch_tokens`) and the row cap
        is high (4096), so short inputs fill the GPU; on the CPU 8192 tokens and 64 rows."""
        cuda = str(self._dev).startswith("cuda")
        if self.batch_tokens:
            bt = int(self.batch_tokens)
        elif cuda:
            if self._auto_tokens is None:
                self._auto_tokens = cuda_batch_tokens(self._model)
                logger.info("%s: %d tokens per batch (from the free GPU memory)", self.name, self._auto_tokens)
            bt = self._auto_tokens
        else:
            bt = 8192
        mbs = int(batch_size) if batch_size else (self.max_batch_size or (4096 if cuda else 64))
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
        # a packed forward computes no padding, so batches need not keep lengths alike (the fill rule):
        # fewer, larger forwards under the same padded-token bound (the padded layout still holds the results)
        fill = 0.0 if getattr(self._model, "_laser_packing", False) else MIN_FILL
        return run_batched(seqs, fn, batch_tokens=bt, max_batch_size=mbs, pad_id=int(self._tok.pad_token_id),
                           device=self._dev, stats=self.stats, show_progress=_want_progress(show_progress), desc=self.name,
                           min_fill=fill)

    def _truncated(self, count: int, how: str) -> None:
        """Count ``count`` inputs cut to fit ``max_length`` (``stats["truncated"]``, in the manifest)."""
        if count:
            self.stats["truncated"] = self.stats.get("truncated", 0) + int(count)
            logger.debug("%s: %d input(s) longer than %d tokens %s", self.name, count, self.max_length, how)

    def _warn_missing(self, out: np.ndarray, why: str) -> None:
        bad = int((~np.isfinite(out)).sum())
        if bad:
            logger.warning("%s: %d record(s) not scored (NaN): %s", self.name, bad, why)
