"""The base of the LLM judges: prompts rendered per record, sent concurrently through a
:class:`~laser_fast.scorers.judge_client.JudgeClient`, answers parsed into scores, every answer cached."""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from laser_fast._version import __version__
from laser_fast.scorers.base import Scorer
from laser_fast.scorers.judge_client import _KEY_ENV, JudgeClient, _hash

logger = logging.getLogger(__name__)


class JudgeScorer(Scorer):
    """Base of the LLM judges: client handling, per-exchange scoring, stats and fingerprints.

    Args:
        model: model name at the endpoint; None = the class default.
        base_url: endpoint base URL; None = ``LASER_FAST_JUDGE_URL`` or ``http://127.0.0.1:8000/v1``.
        max_concurrency, timeout, max_retries, backoff, api_key_env: see :class:`JudgeClient`.
        cache_dir: response cache folder (also set by :meth:`set_workdir`).
        temperature, top_p: sampling parameters (reference: 0.0 and 0.5).
        max_tokens: answer budget per request (None = the class default).
        max_input_chars: instruction + response characters put in a prompt (longer texts are cut).
        json_schema: send ``response_format`` with a JSON schema (guided decoding in vLLM and
            llama.cpp, like the reference's guided decoding); servers that ignore it are fine.
        per_turn: score every exchange of a multi-turn record and average (reference); False = the
            last exchange only.
        disable_thinking: for Qwen3-style models send ``chat_template_kwargs: {enable_thinking: false}``
            (None = when the model name contains "qwen3").
    """

    default_model = ""
    default_max_tokens = 1024
    template_text = ""  # hashed into the fingerprint

    def __init__(self, model: str | None = None, base_url: str | None = None, *, max_concurrency: int = 8,
                 timeout: float = 120, max_retries: int = 4, backoff: float = 1.0,
                 api_key_env: Sequence[str] = _KEY_ENV, cache_dir: str | Path | None = None,
                 temperature: float = 0.0, top_p: float | None = 0.5, max_tokens: int | None = None,
                 max_input_chars: int = 8000, json_schema: bool = True, per_turn: bool = True,
                 disable_thinking: bool | None = None):
        self.model = model or self.default_model
        self.base_url = base_url
        self.max_tokens = int(max_tokens or self.default_max_tokens)
        self.max_input_chars = int(max_input_chars)
        self.json_schema = bool(json_schema)
        self.per_turn = bool(per_turn)
        if disable_thinking is None:
            disable_thinking = "qwen3" in self.model.lower()
        self.disable_thinking = bool(disable_thinking)
        extra = {"chat_template_kwargs": {"enable_thinking": False}} if self.disable_thinking else None
        self._client_args: dict[str, Any] = {
            "api_key_env": api_key_env, "max_concurrency": max_concurrency, "timeout": timeout,
            "max_retries": max_retries, "backoff": backoff, "temperature": temperature, "top_p": top_p,
            "max_tokens": self.max_tokens, "extra_body": extra}
        self._cache_dir = cache_dir
        self._client: JudgeClient | None = None
        self.stats: dict[str, float] = {"records": 0, "requests": 0, "cache_hits": 0, "retries": 0,
                                        "failures": 0, "unparsable": 0, "seconds": 0.0,
                                        "prompt_tokens": 0, "completion_tokens": 0}

    # ---- plumbing ----------------------------------------------------------------------------

    @property
    def client(self) -> JudgeClient:
        if self._client is None:
            self._client = JudgeClient(self.base_url, self.model, cache_dir=self._cache_dir, **self._client_args)
        return self._client

    def set_workdir(self, path: str | Path) -> None:
        """Keep the response cache in ``path`` (the orchestrator's per-scorer folder)."""
        self._cache_dir = Path(path)
        if self._client is not None:
            self._client.set_cache_dir(self._cache_dir)

    @property
    def fingerprint(self) -> str:
        a = self._client_args
        params = {"temperature": a["temperature"], "top_p": a["top_p"], "max_tokens": self.max_tokens,
                  "max_input_chars": self.max_input_chars, "json_schema": self.json_schema,
                  "per_turn": self.per_turn, "no_think": self.disable_thinking, **self._fingerprint_extra()}
        tmpl = hashlib.sha256(self.template_text.encode("utf-8")).hexdigest()[:16]
        return f"{self.name}|{self.model}|tmpl={tmpl}|{_hash(params)[:16]}|v{__version__}"

    def _fingerprint_extra(self) -> dict:
        return {}

    def _chat(self, prompts: Sequence[str], max_tokens: int | None = None, schema: dict | None = None) -> list[str | None]:
        fmt = None
        if self.json_schema and schema is not None:
            fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
        return self.client.chat_many([[{"role": "user", "content": p}] for p in prompts],
                                     max_tokens=max_tokens, response_format=fmt)

    def _unparsable(self, what: str, answer: str | None, count: int = 1) -> None:
        self.stats["unparsable"] += count
        if answer is not None:
            logger.debug("%s: unparsable %s: %r", self.name, what, (answer or "")[:300])

    # ---- Scorer ------------------------------------------------------------------------------

    def score(self, batch: pl.DataFrame, *, batch_size: int | None = None, show_progress: bool | None = None) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        n = batch.height
        out = {o: np.full(n, np.nan) for o in self.outputs}
        if "category" in batch.columns and self.categories is not None:
            mask = self.applies_to(batch["category"].to_list())
        else:
            mask = np.ones(n, dtype=bool)
        rows = np.flatnonzero(mask)
        if self.per_turn and "user_turns" in batch.columns:
            users, resps = batch["user_turns"].to_list(), batch["responses"].to_list()
        else:
            users = [[u] for u in batch["instruction"].to_list()]
            resps = [[r] for r in batch["response"].to_list()]
        ex_rec, ex_inst, ex_resp = [], [], []
        for i in rows:
            u, r = users[i] or [], resps[i] or []
            for k in range(min(len(u), len(r))):
                if r[k] and r[k].strip():
                    ex_rec.append(i)
                    ex_inst.append(u[k] or "")
                    ex_resp.append(r[k])
        before = dict(self.client.stats)
        unparsable0 = self.stats["unparsable"]
        ex_scores = self.score_exchanges(ex_inst, ex_resp) if ex_rec else {o: np.zeros(0) for o in self.outputs}
        for o in self.outputs:
            acc = np.zeros(n)
            cnt = np.zeros(n)
            vals = np.asarray(ex_scores[o], dtype=np.float64)
            bad = np.zeros(n, dtype=bool)
            for j, i in enumerate(ex_rec):
                if np.isfinite(vals[j]):
                    acc[i] += vals[j]
                    cnt[i] += 1
                else:
                    bad[i] = True
            ok = cnt > 0
            out[o][ok] = acc[ok] / cnt[ok]
            out[o][bad & ~ok] = np.nan
        no_ex = np.setdiff1d(rows, np.asarray(ex_rec, dtype=np.int64))
        if no_ex.size:
            logger.warning("%s: %d record(s) have no non-empty response to judge; their score is NaN", self.name, no_ex.size)
        cs = self.client.stats
        for k in ("requests", "cache_hits", "retries", "failures", "prompt_tokens", "completion_tokens"):
            self.stats[k] += cs[k] - before[k]
        new_unp = self.stats["unparsable"] - unparsable0
        if new_unp:
            logger.warning("%s: %d judge answer(s) could not be parsed (model %s); those exchanges fall back "
                           "as documented or score NaN", self.name, int(new_unp), self.model)
        nan_rows = int(np.sum(~np.isfinite(out[self.outputs[0]][rows]))) if rows.size else 0
        if nan_rows:
            logger.warning("%s: %d of %d judged record(s) got no score (NaN): unparsable answers or failed requests",
                           self.name, nan_rows, rows.size)
        self.stats["records"] += int(rows.size)
        self.stats["seconds"] += time.perf_counter() - t0
        return out

    def score_exchanges(self, instructions: list[str], responses: list[str]) -> dict[str, np.ndarray]:
        """Scores of single (instruction, response) exchanges; NaN where not scorable."""
        raise NotImplementedError
