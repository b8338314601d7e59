"""The base of the LLM judges: prompts rendered per record, sent through a judge
backend (:mod:`~laser_fast.scorers.judge_backends`: an endpoint, vLLM or transformers), answers parsed into scores, every answer cached."""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from laser_fast._version import __version__
from laser_fast.scorers.base import Scorer
from laser_fast.scorers.judge_client import _KEY_ENV, _hash

logger = logging.getLogger(__name__)

#: What an unparsable or failed judge answer scores: the reference's value, or missing (NaN).
FALLBACKS = ("reference", "missing")


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
        backend: ``vllm``, ``transformers``, ``openai`` or None (``openai`` when a URL is given,
            else vLLM with a GPU, else transformers; see :mod:`~laser_fast.scorers.judge_backends`).
        device: torch device of an in-process backend.
        fallback: ``"reference"`` (default): an unparsable or failed answer gets the reference's
            fallback value (the class's :attr:`fallback_value`); ``"missing"``: it scores NaN and
            the record is left out of the selection (``not_scored``); with ``per_turn`` a record
            averages the exchanges that were judged and is NaN only when none was. Either way it is counted in
            ``stats`` (``unparsable``, ``failures``, ``fallbacks``) and so in the manifest.
        trust_remote_code: run the judge model's own code (in-process backends; opt-in per model).
        gpus: GPUs one vLLM replica spans (``tensor_parallel_size``); an engine's worker holding
            this judge asks for that many GPUs, so a node runs one replica per group of GPUs.
    """

    default_model = ""
    default_max_tokens = 1024
    template_text = ""  # hashed into the fingerprint
    #: the score the reference gives an exchange whose answer cannot be read (None: no fallback, NaN)
    fallback_value: float | None = None

    def __init__(self, model: str | None = None, base_url: str | None = None, *, max_concurrency: int = 8,
                 timeout: float = 120, max_retries: int = 4, backoff: float = 1.0,
                 api_key_env: Sequence[str] = _KEY_ENV, cache_dir: str | Path | None = None,
                 temperature: float = 0.0, top_p: float | None = 0.5, max_tokens: int | None = None,
                 max_input_chars: int = 8000, json_schema: bool = True, per_turn: bool = True,
                 disable_thinking: bool | None = None, backend: str | None = None, device: str | None = None,
                 fallback: str = "reference", trust_remote_code: Sequence[str] | bool = (), gpus: int = 1):
        from laser_fast.errors import ConfigError
        from laser_fast.scorers.judge_backends import resolve_backend, vllm_device_problem

        self.model = model or self.default_model
        self.base_url = base_url
        self.backend = resolve_backend(backend, base_url, device)
        self.device = device
        problem = vllm_device_problem(device) if self.backend == "vllm" else None
        if problem:  # at construction, before any stage runs (the engine itself starts lazily)
            raise ConfigError(f"{self.name}: {problem}")
        self.gpus = int(gpus)
        if self.gpus < 1 or (self.gpus > 1 and self.backend != "vllm"):
            raise ConfigError(f"{self.name}: gpus={gpus}: a judge spans several GPUs only with the vllm backend (tensor parallel), "
                              f"this one uses {self.backend}")
        # an in-process 14B judge takes a GPU (a vLLM replica: its tensor-parallel group); an endpoint none
        self.gpu_share = 0.0 if self.backend == "openai" else float(self.gpus)
        if fallback not in FALLBACKS:
            raise ConfigError(f"{self.name}: fallback must be one of {', '.join(FALLBACKS)}, got {fallback!r}")
        self.fallback = fallback
        from laser_fast.runtime.models import remote_code_allowed

        self.trust_remote_code = trust_remote_code is True or remote_code_allowed(self.model, trust_remote_code or ())
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
        self._dtype: str | None = None  # the transformers backend's dtype when a driver pinned it (None: the policy)
        self._client: Any = None  # the backend, built on first use
        self.stats: dict[str, float] = {"records": 0, "requests": 0, "cache_hits": 0, "retries": 0,
                                        "failures": 0, "unparsable": 0, "fallbacks": 0, "seconds": 0.0,
                                        "prompt_tokens": 0, "completion_tokens": 0}

    def resolved_dtype(self) -> str | None:
        """The ``transformers`` backend's dtype: pinned by a driver, else the policy for the device
        the run plans for (:func:`~laser_fast.runtime.devices.planned_dtype`: bfloat16 on a GPU that
        computes in it, float32 elsewhere). None for vLLM (the checkpoint's dtype, on a GPU only)
        and an endpoint (its own)."""
        if self.backend != "transformers":
            return None
        if self._dtype:
            return self._dtype
        from laser_fast.runtime.devices import planned_dtype

        return planned_dtype(self.device)

    def worker_pins(self) -> dict:
        # the backend ``auto`` chose on the driver (for its engine's workers) and the transformers
        # backend's dtype: a worker whose own choice would differ (vLLM installed there, another GPU)
        # answers with the driver's
        dt = self.resolved_dtype()
        return {"backend": self.backend, **({"dtype": dt} if dt else {})}

    def apply_pins(self, pins: dict) -> None:
        # the pins come from worker_pins of this class on the driver
        if pins["backend"] != self.backend or pins.get("dtype") != self._dtype:
            self.release()
            self._client = None
            self.backend = pins["backend"]
            self._dtype = pins.get("dtype")

    # ---- plumbing ----------------------------------------------------------------------------

    @property
    def client(self):
        """The backend answering this judge's prompts (:func:`~laser_fast.scorers.judge_backends.make_backend`)."""
        if self._client is None:
            from laser_fast.scorers.judge_backends import make_backend

            self._client = make_backend(self.backend, self.model, self.base_url, cache_dir=self._cache_dir, device=self.device,
                                        trust_remote_code=self.trust_remote_code, gpus=self.gpus, dtype=self._dtype, **self._client_args)
        return self._client

    @property
    def cache_chunk(self) -> int:
        """Records per cached shard in a scoring run: large for an in-process engine on a GPU (a chunk
        bounds what one generate call sees), 128 otherwise (every answer is cached as it comes anyway)."""
        if self.backend == "vllm":
            return 4096
        if self.backend == "transformers":
            from laser_fast.runtime.devices import planned_device

            return 1024 if planned_device(self.device).startswith("cuda") else 128
        return 128

    @property
    def used_device(self) -> str | None:
        if self.backend == "openai":
            return f"endpoint {self.client.shown_url}"
        if self._client is None:
            return None
        return f"{self.backend}:{getattr(self._client, 'used_device', None) or '?'}"

    def host_memory_mb(self) -> int | None:
        """An endpoint's client holds no model; the transformers backend its judge model (float32
        on the CPU, :data:`~laser_fast.scorers.judge_backends.CPU_BATCH_TOKENS` prompt and answer
        tokens per batch, each exchange as long as the model's context, up to that budget, and the
        keys and values generation keeps); vLLM runs on GPUs only (None). An exchange longer than
        the budget runs alone and is not covered; the judges' input limits (8,000 and 24,000
        characters) keep ordinary text well below it."""
        from laser_fast.runtime.model_memory import NO_MODEL_MB, checkpoint, worker_mb
        from laser_fast.scorers.judge_backends import CPU_BATCH_TOKENS

        if self.backend == "openai":
            return NO_MODEL_MB
        if self.backend == "transformers":
            ck = checkpoint(self.model)
            if ck is None:
                return None
            longest = min(CPU_BATCH_TOKENS, ck.context or CPU_BATCH_TOKENS)
            return worker_mb(ck, batch_tokens=CPU_BATCH_TOKENS, seq_len=longest, kv_cache=True)
        return None

    @property
    def engine_key(self) -> str | None:
        """Scorers with the same key share one in-process engine (a scoring run runs them one after
        the other and releases the engine after the last); None for an endpoint."""
        return None if self.backend == "openai" else f"{self.backend}|{self.model}"

    def release(self) -> None:
        """Drop this judge's in-process engine once it is done (frees its GPU memory)."""
        if self._client is not None and self.backend != "openai":
            from laser_fast.scorers.judge_backends import release_engines

            self._client.close()
            self._client = None
            release_engines(self.backend, self.model)

    def preflight(self) -> None:
        """Check before any work that the judge can answer: the endpoint answers (``openai``), or
        the model can be found without loading it (in-process backends)."""
        if self.backend == "openai":
            from laser_fast.scorers.stage import check_endpoint

            check_endpoint(self)
            return
        if self.backend == "vllm":
            from laser_fast.scorers.judge_backends import vllm_installed

            if not vllm_installed():
                from laser_fast.errors import ConfigError

                raise ConfigError(f"scorer {self.name}: --judge-backend vllm needs vLLM: pip install 'laser_fast[vllm]' "
                                  "(or use --judge-backend transformers)")
        from laser_fast.scorers.stage import check_model_source

        check_model_source(self.name, self.model, None)

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
        if self.fallback_value is not None:  # scores made before the reference's fallbacks were NaN there
            params["fallback"] = f"{self.fallback}:{self.fallback_value}"
        tmpl = hashlib.sha256(self.template_text.encode("utf-8")).hexdigest()[:16]
        dt = self.resolved_dtype()  # an in-process model's answers differ between bfloat16 and float32
        backend = f"|backend={self.backend}{'|dtype=' + dt if dt else ''}"
        return f"{self.name}|{self.model}|tmpl={tmpl}|{_hash(params)[:16]}{backend}|v{__version__}"

    def _fingerprint_extra(self) -> dict:
        return {}

    def _chat(self, prompts: Sequence[str], max_tokens: int | None = None, schema: dict | Sequence[dict] | None = None) -> list[str | None]:
        """Answers to ``prompts`` (user messages); ``schema``: one JSON schema for all, or one per prompt."""
        convs = [[{"role": "user", "content": p}] for p in prompts]
        if not self.json_schema or schema is None:
            return self.client.chat_many(convs, max_tokens=max_tokens)
        if isinstance(schema, Mapping):
            fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
            return self.client.chat_many(convs, max_tokens=max_tokens, response_format=fmt)
        # one schema per prompt: group prompts that share one (an endpoint takes one format per request)
        out: list[str | None] = [None] * len(prompts)
        groups: dict[str, list[int]] = {}
        for j, sch in enumerate(schema):
            groups.setdefault(_hash(sch), []).append(j)
        for idx in groups.values():
            fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema[idx[0]]}}
            for j, a in zip(idx, self.client.chat_many([convs[j] for j in idx], max_tokens=max_tokens, response_format=fmt)):
                out[j] = a
        return out

    def _fallback(self, what: str, answer: str | None) -> float:
        """The score of an exchange whose answer is unparsable (or None: the request failed):
        the reference's fallback value, or NaN with ``fallback="missing"``; counted either way."""
        if answer is not None:
            self._unparsable(what, answer)
        if self.fallback == "reference" and self.fallback_value is not None:
            self.stats["fallbacks"] += 1
            return float(self.fallback_value)
        return float("nan")

    def _unparsable(self, what: str, answer: str | None, count: int = 1) -> None:
        """Count an answer that could not be read (a failed request, ``answer`` None, is already
        counted in ``failures`` by the backend)."""
        if answer is None:
            return
        self.stats["unparsable"] += count
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
            logger.warning("%s: %d judge answer(s) could not be parsed (model %s, backend %s); those exchanges %s",
                           self.name, int(new_unp), self.model, self.backend,
                           "get the reference's fallback score" if self.fallback == "reference" and self.fallback_value is not None
                           else "score NaN")
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
