"""Where the LLM judges get their answers: ``--judge-backend {vllm,transformers,openai}``.

* ``openai``: an OpenAI-compatible endpoint (:class:`~laser_fast.scorers.judge_client.JudgeClient`),
  the default when a judge URL is given (``--judge-url`` or ``LASER_FAST_JUDGE_URL``).
* ``vllm``: an in-process vLLM engine (optional extra ``laser_fast[vllm]``) with guided JSON
  decoding, the default when vLLM is installed and torch sees a GPU.
* ``transformers``: batched greedy generation with a Hugging Face causal LM, the answer held to
  the judge's JSON schema by :mod:`laser_fast.scorers.constrained`; the default otherwise (CPU too).

Every backend answers ``chat_many(conversations, max_tokens=..., response_format=...)`` with one
text (or None) per conversation, keeps the same ``stats`` keys and caches answers through
:class:`~laser_fast.scorers.judge_client.AnswerCache`, so a rerun generates nothing it has already
answered. In-process engines are shared: judges that name the same model (and device) use one.
"""
from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from laser_fast.errors import ConfigError, LaserError, ModelLoadError
from laser_fast.scorers.judge_client import AnswerCache, JudgeClient, default_judge_url

logger = logging.getLogger(__name__)

__all__ = ["BACKENDS", "TransformersJudge", "VLLMJudge", "make_backend", "release_engines", "resolve_backend"]

#: The judge backends, in the order ``--judge-backend`` lists them.
BACKENDS = ("vllm", "transformers", "openai")
#: prompt and answer tokens per batch of the transformers backend on the CPU
CPU_BATCH_TOKENS = 16384

_ENGINES: dict[tuple, Any] = {}
_ENGINES_LOCK = threading.Lock()


def vllm_installed() -> bool:
    """Whether the ``vllm`` package can be imported (it is not imported here)."""
    return importlib.util.find_spec("vllm") is not None


def resolve_backend(backend: str | None, base_url: str | None = None, device: str | None = None) -> str:
    """The backend a judge uses.

    ``backend`` as given when set (checked); else ``openai`` when a judge URL is given (the
    argument or ``LASER_FAST_JUDGE_URL``), else ``vllm`` when it is installed and the judge runs
    on the first GPU (``device`` unset with a GPU torch sees, or the Ray engine's GPU workers,
    :func:`~laser_fast.runtime.devices.planned_device`; ``cuda`` or ``cuda:0``: see
    :func:`vllm_device_problem`), else ``transformers``.

    Raises:
        ConfigError: an unknown backend name.
    """
    import os

    if backend not in (None, "", "auto"):
        b = str(backend).strip().lower()
        if b not in BACKENDS:
            raise ConfigError(f"unknown judge backend '{backend}': use one of {', '.join(BACKENDS)} (or auto)")
        return b
    if base_url or os.environ.get("LASER_FAST_JUDGE_URL"):
        return "openai"
    from laser_fast.runtime.devices import planned_device

    # for the engine's GPU workers when they run the judge (workers take the driver's choice over)
    if vllm_installed() and planned_device(device).startswith("cuda") and vllm_device_problem(device) is None:
        return "vllm"
    return "transformers"


def vllm_device_problem(device: str | None) -> str | None:
    """Why the vLLM backend cannot run on ``device`` (None when it can): vLLM places its engine on
    the GPUs ``CUDA_VISIBLE_DEVICES`` shows, from the first, so only an unset device, ``cuda``
    and ``cuda:0`` mean what they say."""
    from laser_fast.runtime.devices import AUTO

    if device in AUTO or str(device) in ("cuda", "cuda:0"):
        return None
    return (f"the vLLM backend runs on the GPUs CUDA_VISIBLE_DEVICES shows, from the first, not on device {device!r}: for "
            "another GPU set CUDA_VISIBLE_DEVICES (e.g. CUDA_VISIBLE_DEVICES=1), on the CPU use --judge-backend transformers")


def release_engines(backend: str | None = None, model: str | None = None) -> None:
    """Drop the shared in-process engines of ``backend`` / ``model`` (None: any) and free their
    GPU memory. A vLLM engine is shut down first (deleting the object alone does not reliably
    give its memory back, and the next judge's engine would not fit beside it)."""
    with _ENGINES_LOCK:
        gone = [_ENGINES.pop(k) for k in [k for k in _ENGINES if (backend is None or k[0] == backend) and (model is None or k[1] == model)]]
        last_vllm = not any(k[0] == "vllm" for k in _ENGINES)
    vllm = [eng for eng in gone if not isinstance(eng, tuple)]  # the transformers backend keeps a tuple
    for eng in vllm:
        _shutdown_vllm(eng)
    if vllm and last_vllm:
        _destroy_vllm_state()
    del gone, vllm
    from laser_fast.runtime.models import free_cuda_cache

    free_cuda_cache()


def _shutdown_vllm(llm) -> None:
    """Stop a vLLM engine's workers where this vLLM can (``LLM.shutdown`` in newer releases, the
    V1 engine core's before, the V0 model executor's); a failure is logged and never stops the run."""
    try:
        engine = getattr(llm, "llm_engine", None)
        for stop in (getattr(llm, "shutdown", None), getattr(getattr(engine, "engine_core", None), "shutdown", None),
                     getattr(getattr(engine, "model_executor", None), "shutdown", None)):
            if callable(stop):
                stop()
                break
    except Exception as e:  # noqa: BLE001 - the object is dropped all the same
        logger.warning("judge engine shutdown (vLLM): %s: %s", type(e).__name__, e)


def _destroy_vllm_state() -> None:
    """vLLM's process-wide parallel state, once its last engine is gone (a failure is logged)."""
    try:
        from vllm.distributed import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()
    except Exception as e:  # noqa: BLE001 - a vLLM without these steps
        logger.warning("judge engine shutdown (vLLM): %s: %s", type(e).__name__, e)


def _new_stats() -> dict[str, float]:
    return {"requests": 0, "cache_hits": 0, "retries": 0, "failures": 0, "prompt_tokens": 0, "completion_tokens": 0}


class _LocalJudge(AnswerCache):
    """Shared plumbing of the in-process backends: parameters, cache lookups, stats."""

    backend = ""

    def __init__(self, model: str, *, cache_dir: str | Path | None = None, temperature: float = 0.0,
                 top_p: float | None = None, max_tokens: int = 1024, extra_body: Mapping[str, Any] | None = None,
                 device: str | None = None, trust_remote_code: bool = False):
        self.model = model
        self.base_url = None
        self.device = device
        self.trust_remote_code = bool(trust_remote_code)
        self.params: dict[str, Any] = {"temperature": float(temperature), "max_tokens": int(max_tokens)}
        if top_p is not None:
            self.params["top_p"] = float(top_p)
        self.extra_body = dict(extra_body or {})
        self.stats = _new_stats()
        self._lock = threading.Lock()
        self._cache: dict[str, str] | None = None
        self._cache_dir: Path | None = None
        self._shard = None
        self.set_cache_dir(cache_dir)

    def chat_many(self, conversations: Sequence[Sequence[Mapping[str, str]]], **overrides: Any) -> list[str | None]:
        """Answer each conversation; cached answers are reused (see the module doc)."""
        params = {**self.params, **self.extra_body, **{k: v for k, v in overrides.items() if v is not None}}
        if not conversations:
            return []
        key_params = {**params, "backend": self.backend}
        keys = [self.cache_key(c, key_params) for c in conversations]
        out: list[str | None] = [None] * len(conversations)
        todo = []
        with self._lock:
            cache = self._load_cache()
            for i, k in enumerate(keys):
                hit = cache.get(k)
                if hit is None:
                    todo.append(i)
                else:
                    out[i] = hit
            self.stats["cache_hits"] += len(conversations) - len(todo)
            self.stats["requests"] += len(todo)
        if todo:
            answers = self._generate([conversations[i] for i in todo], params)
            with self._lock:
                for i, a in zip(todo, answers):
                    out[i] = a
                    if a is None:
                        self.stats["failures"] += 1
                    else:
                        self._store(keys[i], a)
        return out

    def chat(self, messages: Sequence[Mapping[str, str]], **overrides: Any) -> str | None:
        return self.chat_many([messages], **overrides)[0]

    def _generate(self, conversations: Sequence[Sequence[Mapping[str, str]]], params: dict) -> list[str | None]:
        raise NotImplementedError


def _render(tok, conversations: Sequence[Sequence[Mapping[str, str]]], params: Mapping[str, Any]) -> list[str]:
    """The chat-templated prompt of each conversation, ready for generation (``chat_template_kwargs``
    from the judge, e.g. thinking off for Qwen3)."""
    kw = params.get("chat_template_kwargs") or {}
    return [tok.apply_chat_template([dict(m) for m in c], tokenize=False, add_generation_prompt=True, **kw) for c in conversations]


def _schema_of(response_format: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if not response_format or response_format.get("type") != "json_schema":
        return None
    js = response_format.get("json_schema") or {}
    return js.get("schema")


# --------------------------------------------------------------------------------------------
# transformers
# --------------------------------------------------------------------------------------------

class TransformersJudge(_LocalJudge):
    """Judge answers from a Hugging Face causal LM, generated in batches in this process.

    Prompts are rendered with the model's chat template (``chat_template_kwargs`` from the judge,
    e.g. thinking off for Qwen3), left-padded and packed into batches under ``batch_tokens``
    (prompt + answer tokens per batch). Greedy decoding at temperature 0 (the reference's setting);
    a positive temperature samples with a fixed seed per batch. With a JSON schema in
    ``response_format`` every answer is held to it (:class:`~laser_fast.scorers.constrained.JSONConstraint`),
    so it parses; a schema outside the supported subset is decoded freely (logged once).

    Args:
        model: hub id, local folder, ``.gguf`` file or ``smollm2``.
        device: torch device (None = CUDA when available, else the CPU).
        batch_tokens: prompt + answer tokens per batch (None = 16384 on the CPU, from free memory on CUDA).
        max_batch_size: most answers per batch (None = 16 on the CPU, 256 on CUDA).
        constrained: hold answers to the schema (default True).
        cache_dir, temperature, top_p, max_tokens, extra_body: as for :class:`JudgeClient`.
    """

    backend = "transformers"

    def __init__(self, model: str, *, batch_tokens: int | None = None, max_batch_size: int | None = None,
                 constrained: bool = True, dtype: str | None = None, **kwargs: Any):
        super().__init__(model, **kwargs)
        self.dtype = dtype  # None: the policy (bfloat16 on a GPU that computes in it, else float32)
        self._dev: str | None = None  # where the engine runs, once loaded
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        self.constrained = bool(constrained)
        self._warned: set[str] = set()

    def engine(self):
        """``(model, tokenizer, device)``, loaded once per (model, device) in the process."""
        from laser_fast.runtime.devices import torch_device

        dev = torch_device(self.device)
        key = ("transformers", self.model, dev, self.trust_remote_code, self.dtype)
        with _ENGINES_LOCK:
            eng = _ENGINES.get(key)
            if eng is None:
                from laser_fast.runtime.models import load_hf

                model, tok = load_hf(self.model, "causal_lm", device=dev, trust_remote_code=self.trust_remote_code, dtype=self.dtype)
                if getattr(tok, "chat_template", None) is None:
                    raise ModelLoadError(f"judge model '{self.model}': its tokenizer has no chat template; use an instruct/chat model")
                eng = _ENGINES[key] = (model, tok, dev)
        self._dev = str(eng[2])
        return eng

    @property
    def used_device(self) -> str | None:
        return self._dev

    def _budget(self, dev: str, model) -> tuple[int, int]:
        cuda = str(dev).startswith("cuda")
        if self.batch_tokens:
            bt = int(self.batch_tokens)
        elif cuda:
            from laser_fast.runtime.batching import cuda_batch_tokens

            bt = cuda_batch_tokens(model, kv_cache=True)
        else:
            bt = CPU_BATCH_TOKENS
        mbs = int(self.max_batch_size or (256 if cuda else 16))
        return bt, mbs

    def _programs(self, tok, schema, max_tokens: int, vocab: int):
        from laser_fast.scorers.constrained import UnsupportedSchema, compile_schema, token_table

        if not self.constrained or schema is None:
            return None, None
        try:
            return compile_schema(schema, tok, max_tokens=max_tokens), token_table(tok, vocab)
        except UnsupportedSchema as e:
            if str(e) not in self._warned:
                self._warned.add(str(e))
                logger.warning("judge %s: %s; these answers are generated without constraint", self.model, e)
            return None, None

    def _generate(self, conversations, params):
        import numpy as np
        import torch
        from transformers import LogitsProcessorList

        from laser_fast.scorers.constrained import JSONConstraint

        model, tok, dev = self.engine()
        max_new = int(params.get("max_tokens") or 1024)
        enc = [tok(p, add_special_tokens=False)["input_ids"] for p in _render(tok, conversations, params)]
        head = model.get_output_embeddings()
        vocab = int(head.weight.shape[0]) if head is not None else len(tok)
        # one answer format per call (a judge groups its prompts by schema): compiled once
        prog, table = self._programs(tok, _schema_of(params.get("response_format")), max_new, vocab)
        progs = [prog] * len(conversations)
        news = [max_new if prog is None else prog.max_tokens] * len(conversations)  # a program ends within its own bound
        ctx = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        out: list[str | None] = [None] * len(conversations)
        ok = []
        for i, e in enumerate(enc):
            if ctx and len(e) + news[i] > ctx:
                logger.warning("judge %s: a prompt of %d tokens plus %d answer tokens exceeds the model's context (%d); "
                               "that exchange gets no answer", self.model, len(e), news[i], ctx)
            else:
                ok.append(i)
        bt, mbs = self._budget(dev, model)
        order = sorted(ok, key=lambda i: -(len(enc[i]) + news[i]))
        pad = tok.pad_token_id if tok.pad_token_id is not None else (table.eos[0] if table else 0)
        eos = list(table.eos) if table else []
        gen_eos = getattr(model.generation_config, "eos_token_id", None)
        for e in (gen_eos if isinstance(gen_eos, list) else [gen_eos]):
            if e is not None and e not in eos:
                eos.append(int(e))
        if tok.eos_token_id is not None and tok.eos_token_id not in eos:
            eos.append(int(tok.eos_token_id))
        start = 0
        t0 = time.perf_counter()
        while start < len(order):
            width = len(enc[order[start]]) + news[order[start]]
            size = max(1, min(mbs, bt // max(1, width), len(order) - start))
            idx = order[start:start + size]
            start += size
            plen = max(len(enc[i]) for i in idx)
            ids = np.full((len(idx), plen), pad, dtype=np.int64)
            mask = np.zeros((len(idx), plen), dtype=np.int64)
            for r, i in enumerate(idx):
                ids[r, plen - len(enc[i]):] = enc[i]
                mask[r, plen - len(enc[i]):] = 1
            rows = [progs[i] for i in idx]
            procs = LogitsProcessorList()
            if table is not None and any(p is not None for p in rows):
                procs.append(JSONConstraint(rows, table, plen))
            gen: dict[str, Any] = {"max_new_tokens": max(news[i] for i in idx), "pad_token_id": pad,
                                   "eos_token_id": eos or None, "logits_processor": procs}
            temp = float(params.get("temperature") or 0.0)
            if temp > 0:
                gen.update(do_sample=True, temperature=temp, top_p=float(params.get("top_p") or 1.0), top_k=0)
                torch.manual_seed(0)
            else:
                gen.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            with torch.inference_mode():
                res = model.generate(torch.from_numpy(ids).to(dev), attention_mask=torch.from_numpy(mask).to(dev), **gen)
            new = res[:, plen:].cpu().numpy()
            for r, i in enumerate(idx):
                toks = new[r].tolist()
                cut = next((k for k, t in enumerate(toks) if t in eos), len(toks))
                out[i] = tok.decode(toks[:cut], skip_special_tokens=True)
                with self._lock:
                    self.stats["prompt_tokens"] += len(enc[i])
                    self.stats["completion_tokens"] += cut
        logger.debug("judge %s: %d answers in %.1f s", self.model, len(ok), time.perf_counter() - t0)
        return out


# --------------------------------------------------------------------------------------------
# vLLM
# --------------------------------------------------------------------------------------------

class VLLMJudge(_LocalJudge):
    """Judge answers from an in-process vLLM engine with guided JSON decoding (the reference's setup).

    Needs ``pip install laser_fast[vllm]`` and a GPU. The engine is built once per model in the
    process (``LLM(model, gpu_memory_utilization, max_model_len)``) and takes every prompt of a
    call in one ``generate``; a JSON schema in ``response_format`` becomes vLLM's structured-output
    (guided decoding) parameter, so every answer parses.

    Args:
        gpu_memory_utilization: share of GPU memory vLLM may take (default 0.85).
        max_model_len: context length (default 8192, the reference's if_quality setting).
        tensor_parallel_size: GPUs the engine spans (default 1). Above 1 the engine runs its
            shards as processes of this one (``distributed_executor_backend="mp"``) on the GPUs
            this process sees, so inside a Ray actor holding N GPUs it stays on those N.
        cache_dir, temperature, top_p, max_tokens, extra_body: as for :class:`JudgeClient`.
    """

    backend = "vllm"

    def __init__(self, model: str, *, gpu_memory_utilization: float = 0.85, max_model_len: int = 8192,
                 tensor_parallel_size: int = 1, **kwargs: Any):
        super().__init__(model, **kwargs)
        problem = vllm_device_problem(self.device)
        if problem:
            raise ConfigError(f"judge model '{model}': {problem}")
        self.tensor_parallel_size = int(tensor_parallel_size)
        self.gpu_memory_utilization = float(gpu_memory_utilization)
        self.max_model_len = int(max_model_len)

    def engine(self):
        key = ("vllm", self.model, self.trust_remote_code, self.tensor_parallel_size)
        with _ENGINES_LOCK:
            eng = _ENGINES.get(key)
            if eng is None:
                if not vllm_installed():
                    raise ConfigError("--judge-backend vllm needs vLLM: pip install 'laser_fast[vllm]' "
                                      "(or use --judge-backend transformers)")
                from vllm import LLM

                src = self.model
                if src.strip().lower() in ("smollm2", "smollm", "smollm2-135m-instruct"):
                    from laser_fast.runtime.models import smollm2_folder

                    src = smollm2_folder()[0]
                tp = {"tensor_parallel_size": self.tensor_parallel_size, "distributed_executor_backend": "mp"} if self.tensor_parallel_size > 1 else {}
                try:
                    eng = LLM(model=src, trust_remote_code=self.trust_remote_code,
                              gpu_memory_utilization=self.gpu_memory_utilization, max_model_len=self.max_model_len, **tp)
                except Exception as e:  # noqa: BLE001
                    raise ModelLoadError(f"judge model '{self.model}': vLLM could not load it ({type(e).__name__}: {e})") from None
                _ENGINES[key] = eng
        return eng

    @property
    def used_device(self) -> str | None:
        return "cuda"

    @staticmethod
    def _guided(schema: Mapping[str, Any]) -> dict[str, Any]:
        """The SamplingParams keyword for a JSON schema (``structured_outputs`` in newer vLLM,
        ``guided_decoding`` before)."""
        import vllm.sampling_params as sp

        if hasattr(sp, "StructuredOutputsParams"):
            return {"structured_outputs": sp.StructuredOutputsParams(json=dict(schema))}
        return {"guided_decoding": sp.GuidedDecodingParams(json=dict(schema))}

    def _generate(self, conversations, params):
        from vllm import SamplingParams

        llm = self.engine()
        tok = llm.get_tokenizer()
        # token ids, as the transformers backend makes them: the chat template already holds any
        # BOS token, which vLLM's own tokenising of a text prompt would add a second time
        ids = [tok.encode(p, add_special_tokens=False) for p in _render(tok, conversations, params)]
        # vLLM refuses a whole generate() call when one prompt does not fit the context: such a
        # prompt is left out here (it gets no answer, as in the transformers backend)
        ok = []
        for i, p in enumerate(ids):
            n = len(p)
            if n >= self.max_model_len:
                logger.warning("judge %s (vLLM): a prompt of %d tokens does not fit max_model_len %d; that exchange gets no answer",
                               self.model, n, self.max_model_len)
            else:
                ok.append(i)
        out: list[str | None] = [None] * len(conversations)
        if not ok:
            return out
        schema = _schema_of(params.get("response_format"))
        extra = self._guided(schema) if schema is not None else {}
        sp = SamplingParams(temperature=float(params.get("temperature") or 0.0), top_p=float(params.get("top_p") or 1.0),
                            max_tokens=int(params.get("max_tokens") or 1024), seed=0, **extra)
        try:
            res = llm.generate([{"prompt_token_ids": ids[i]} for i in ok], [sp] * len(ok), use_tqdm=False)
        except Exception as e:  # noqa: BLE001 - one failed call must not lose the others' cache entries
            logger.warning("judge %s (vLLM): generation failed (%s: %s)", self.model, type(e).__name__, e)
            return out
        for i, r in zip(ok, res):
            with self._lock:
                self.stats["prompt_tokens"] += len(getattr(r, "prompt_token_ids", None) or [])
                self.stats["completion_tokens"] += len(r.outputs[0].token_ids) if r.outputs else 0
            out[i] = r.outputs[0].text if r.outputs else None
        return out


# --------------------------------------------------------------------------------------------
# choosing one
# --------------------------------------------------------------------------------------------

def make_backend(backend: str | None, model: str, base_url: str | None = None, *, cache_dir: str | Path | None = None,
                 device: str | None = None, trust_remote_code: bool = False, gpus: int = 1, dtype: str | None = None,
                 **client_args: Any):
    """The backend object a judge sends its prompts to (see :func:`resolve_backend`).

    Args:
        backend: ``vllm``, ``transformers``, ``openai`` or None / ``auto``.
        model: the judge model (hub id, local folder, ``smollm2``; the served name for ``openai``).
        base_url: the endpoint for ``openai``.
        cache_dir: the answer cache folder.
        device: torch device of the in-process backends.
        trust_remote_code: run the model repository's own code (in-process backends).
        gpus: GPUs one vLLM engine spans (its ``tensor_parallel_size``).
        dtype: the ``transformers`` backend's dtype (``bfloat16`` / ``float32``; None: the policy of
            :func:`~laser_fast.runtime.devices.torch_dtype`).
        **client_args: :class:`JudgeClient` arguments (sampling parameters, concurrency, retries...);
            those an in-process backend has no use for are ignored.
    """
    b = resolve_backend(backend, base_url, device)
    if b == "openai":
        return JudgeClient(base_url or default_judge_url(), model, cache_dir=cache_dir, **client_args)
    local = {k: v for k, v in client_args.items() if k in ("temperature", "top_p", "max_tokens", "extra_body")}
    if b == "vllm":
        return VLLMJudge(model, cache_dir=cache_dir, device=device, trust_remote_code=trust_remote_code, tensor_parallel_size=gpus, **local)
    if b == "transformers":
        return TransformersJudge(model, cache_dir=cache_dir, device=device, trust_remote_code=trust_remote_code, dtype=dtype, **local)
    raise LaserError(f"unknown judge backend {b!r}")  # pragma: no cover - resolve_backend checked it
