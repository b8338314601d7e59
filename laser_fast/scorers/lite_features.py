"""Features of the lite quality scorer: cheap text features and SmolLM2 log-probability features."""
from __future__ import annotations

import logging
import math
import re
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from laser_fast.runtime.devices import cpu_bf16_supported, planned_device, torch_device
from laser_fast.runtime.models import load_sentence_model, load_smollm2
from laser_fast.runtime.progress import progress_iter

logger = logging.getLogger(__name__)


#: Rows of vocabulary logits (49,152 wide) reduced at a time: 128 rows (25 MB in float32) stay in
#: cache; 1024 rows ran 15% slower end to end on 2 cores (results are the same: each row is independent).
LM_HEAD_CHUNK = 128


#: Bumped whenever a feature's definition changes (cached training features are keyed by it).
FEATURE_VERSION = 1


def hidden_states_thread_safe() -> bool:
    """Whether this transformers records ``output_hidden_states`` per call, so that forwards of one
    model may run side by side in threads and each read its own hidden states.

    Up to 5.0 at least, transformers collected them by replacing the shared layers' ``forward``
    for the length of a call: two forwards side by side then read each other's states (with
    4.56 the mean-pooled SmolLM2 features came out up to 48 off where they had to be equal).
    Later releases record through a context variable, in ``transformers.utils.output_capturing``.
    """
    import importlib.util

    try:
        return importlib.util.find_spec("transformers.utils.output_capturing") is not None
    except ImportError:  # pragma: no cover - no transformers at all
        return False


@dataclass(frozen=True)
class FeatureConfig:
    """Truncation and layer settings of the feature extractor (stored in meta.json).

    Attributes:
        inst_head, inst_tail: instruction tokens kept from the start / end (SmolLM2 tokens).
        resp_head, resp_tail: response tokens kept from the start / end.
        layer: SmolLM2 hidden state mean-pooled for the ``hs`` group (``hidden_states[layer]``).
        junction_skip: response tokens right after a cut that are left out of the log-prob
            statistics (their context is broken).
        minilm_head_words, minilm_tail_words: words of the response MiniLM reads (start / end).
        minilm_max_seq: MiniLM's word-piece limit.
    """

    inst_head: int = 32
    inst_tail: int = 16
    resp_head: int = 64
    resp_tail: int = 32
    layer: int = 20
    junction_skip: int = 4
    minilm_head_words: int = 70
    minilm_tail_words: int = 25
    minilm_max_seq: int = 128


# --------------------------------------------------------------------------------------
# cheap text features
# --------------------------------------------------------------------------------------

CHEAP_FEATURES = (
    "log_chars", "log_words", "log_lines", "list_share", "code_fence", "headers", "bold",
    "distinct_3gram", "max_line_repeat", "top_word_share", "ends_terminal", "ends_midword",
    "refusal", "ai_disclaimer", "apology", "very_short", "inst_overlap", "inst_copy",
    "non_ascii", "digit_share", "upper_share", "question_share", "log_len_ratio",
    "arith_count", "arith_wrong_share", "num_coverage", "final_num_in_inst", "has_final_answer",
    "placeholder_junk",
)

_RE_WORD = re.compile(r"\w+", re.UNICODE)
_RE_LIST = re.compile(r"^\s*(?:[-*\u2022+]|\d+[.)]|[a-zA-Z][.)])\s+")
_RE_HEADER = re.compile(r"^\s*#{1,6}\s|^\s*[A-Z][^\n]{0,60}:\s*$")
_RE_NUM = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?")
_RE_ARITH = re.compile(
    r"(-?\d+(?:\.\d+)?)\s*([-+*/x\u00d7\u00f7])\s*(-?\d+(?:\.\d+)?)\s*=\s*\$?\s*(-?\d+(?:,\d{3})*(?:\.\d+)?)")
_REFUSAL = re.compile(
    r"\b(i(?:'m| am) (?:sorry|unable|not able)|i can(?:no|')t (?:help|assist|provide|answer|do)|"
    r"i (?:won't|will not|cannot) (?:help|provide|assist)|unable to (?:help|assist|provide|answer)|"
    r"not (?:able|allowed) to (?:help|provide|answer)|cannot fulfill|can't fulfill)", re.I)
_AI = re.compile(r"\b(as an ai|as a language model|i am an ai|i'm an ai|language model developed|"
                 r"i don't have (?:personal|the ability|access)|i do not have (?:personal|the ability|access))", re.I)
_APOLOGY = re.compile(r"\b(sorry|apologi[sz]e)\b", re.I)
_FINAL = re.compile(r"(####|\bthe (?:final )?answer is\b|\banswer:|^a:|\btherefore\b|\bso the\b|\\boxed)", re.I | re.M)
_JUNK = re.compile(r"\[split\]|<unk>|\ufffd|</?s>|\{\{|\}\}|lorem ipsum", re.I)
_RE_BOLD = re.compile(r"(?<![\w)\]*])\*\*(?=\S)[^*\n]{1,200}?(?<=\S)\*\*(?![\w*])")

#: Position of the ``bold`` cue in :data:`CHEAP_FEATURES`.
BOLD = CHEAP_FEATURES.index("bold")


def bold_markup(response: str) -> float:
    """1.0 when ``response`` has a Markdown bold span (``**text**`` within one line, not glued to
    a word on the outside), else 0.0.

    The ``bold`` cue of :func:`cheap_features` is any ``**``, which also fires on Python's power
    and ``**kwargs`` operators and on stray asterisks in junk; the ``lite-llm`` weights were fitted
    with it, so it stays there. The ``onepass`` heads (version 3) use this one instead.
    """
    return float(bool(_RE_BOLD.search(response or "")))


def _to_float(s: str) -> float | None:
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return None


def _arith(resp: str) -> tuple[int, int]:
    """(number of ``a op b = c`` statements, how many of them are wrong)."""
    n = bad = 0
    for a, op, b, c in _RE_ARITH.findall(resp[:20_000]):
        x, y, z = _to_float(a), _to_float(b), _to_float(c)
        if x is None or y is None or z is None:
            continue
        if op in "+":
            v = x + y
        elif op == "-":
            v = x - y
        elif op in "*x\u00d7":
            v = x * y
        else:
            if y == 0:
                continue
            v = x / y
        n += 1
        if abs(v - z) > max(0.011, 0.005 * abs(v)):
            bad += 1
    return n, bad


def _nums(text: str) -> list[float]:
    out = []
    for s in _RE_NUM.findall(text[:20_000]):
        v = _to_float(s)
        if v is not None:
            out.append(v)
    return out


def cheap_features(instruction: str, response: str) -> np.ndarray:
    """The :data:`CHEAP_FEATURES` of one (instruction, response) pair (float64 vector)."""
    inst = instruction or ""
    resp = response or ""
    if len(resp) > 200_000:
        resp = resp[:150_000] + resp[-50_000:]
    stripped = resp.strip()
    words = _RE_WORD.findall(resp.lower())
    nw = len(words)
    lines = [ln for ln in resp.splitlines() if ln.strip()]
    nl = max(1, len(lines))
    list_lines = sum(1 for ln in lines if _RE_LIST.match(ln))
    headers = sum(1 for ln in lines if _RE_HEADER.match(ln))
    grams = [tuple(words[i:i + 3]) for i in range(max(0, nw - 2))]
    distinct3 = len(set(grams)) / len(grams) if grams else 1.0
    line_counts = Counter(ln.strip() for ln in lines if len(ln.strip()) > 3)
    max_rep = max(line_counts.values()) if line_counts else 1
    wc = Counter(words)
    top_share = wc.most_common(1)[0][1] / nw if nw else 0.0
    last = stripped[-1:] if stripped else ""
    ends_terminal = float(last in ".!?)]}\"'`*:;" or last in "\u3002\uff01\uff1f" or stripped.endswith("```"))
    ends_midword = float(bool(last) and last.isalnum() and not last.isdigit() and nw > 20)
    head = resp[:600]
    inst_words = set(_RE_WORD.findall(inst.lower()))
    resp_set = set(words)
    content = {w for w in inst_words if len(w) > 3}
    overlap = len(content & resp_set) / len(content) if content else 0.0
    ic = inst.strip()
    inst_copy = float(len(ic) > 20 and ic[:200] in resp)
    n_chars = max(1, len(resp))
    non_ascii = sum(1 for ch in resp[:5000] if ord(ch) > 127) / min(n_chars, 5000)
    digits = sum(ch.isdigit() for ch in resp[:5000]) / min(n_chars, 5000)
    letters = [ch for ch in resp[:5000] if ch.isalpha()]
    upper = sum(ch.isupper() for ch in letters) / len(letters) if letters else 0.0
    questions = resp.count("?") / nl
    len_ratio = math.log1p(len(resp)) - math.log1p(len(inst))
    n_ar, bad_ar = _arith(resp)
    inst_nums = set(_nums(inst))
    resp_nums = _nums(resp)
    resp_num_set = set(resp_nums)
    coverage = len(inst_nums & resp_num_set) / len(inst_nums) if inst_nums else 0.0
    final_in_inst = float(bool(resp_nums) and bool(inst_nums) and resp_nums[-1] in inst_nums)
    return np.array([
        math.log1p(len(resp)), math.log1p(nw), math.log1p(len(lines)), list_lines / nl,
        float("```" in resp), headers / nl, float("**" in resp), distinct3, math.log(max_rep),
        top_share, ends_terminal, ends_midword, float(bool(_REFUSAL.search(head))),
        float(bool(_AI.search(resp[:3000]))), float(bool(_APOLOGY.search(head))), float(nw < 5),
        overlap, inst_copy, non_ascii, digits, upper, min(questions, 3.0), len_ratio,
        math.log1p(n_ar), bad_ar / n_ar if n_ar else 0.0, coverage, final_in_inst,
        float(bool(_FINAL.search(resp[-400:]))), float(bool(_JUNK.search(resp))),
    ], dtype=np.float64)


# --------------------------------------------------------------------------------------
# model features
# --------------------------------------------------------------------------------------

LP_FEATURES = (
    "lp_mean", "lp_min", "lp_p10", "lp_p25", "lp_median", "lp_low_share", "lp_vlow_share",
    "lp_top1_share", "lp_margin_mean", "lp_head_mean", "lp_tail_mean", "lp_end", "log_tokens",
)
IFD_FEATURES = ("ulp_mean", "ulp_p10", "log_ifd")

#: Feature groups in the order they are concatenated.
GROUPS = ("cheap", "lp", "ifd", "hs", "emb", "embx")


def _cut(ids: list[int], head: int, tail: int) -> tuple[list[int], int]:
    """Keep ``head`` + ``tail`` tokens; returns (ids, position of the cut or -1)."""
    if len(ids) <= head + tail:
        return ids, -1
    return ids[:head] + (ids[-tail:] if tail else []), head


def _lp_stats(lp: np.ndarray, margin: np.ndarray, top1: np.ndarray, keep: np.ndarray, end_lp: float,
              n_tokens: int) -> np.ndarray:
    """Statistics of a response's token log-probs (``keep`` masks tokens after a cut)."""
    v = lp[keep] if keep.any() else lp
    if v.size == 0:
        return np.array([np.nan] * len(LP_FEATURES))
    k = min(32, v.size)
    return np.array([
        v.mean(), v.min(), np.percentile(v, 10), np.percentile(v, 25), np.median(v),
        (v < -5.0).mean(), (v < -10.0).mean(), top1[keep].mean() if keep.any() else top1.mean(),
        margin[keep].mean() if keep.any() else margin.mean(), v[:k].mean(), v[-k:].mean(), end_lp,
        math.log1p(n_tokens),
    ])


def auto_dtype(device: str | None) -> str:
    """SmolLM2's dtype when none is given: bfloat16 on a GPU that computes in it
    (:func:`~laser_fast.runtime.devices.torch_dtype`) and on a CPU that multiplies it natively
    (:func:`~laser_fast.runtime.devices.cpu_bf16_supported`), else float32."""
    if planned_device(device).startswith("cuda"):  # on a Ray driver: its GPU workers' device
        from laser_fast.runtime.devices import planned_dtype

        return planned_dtype(device)
    return "bfloat16" if cpu_bf16_supported() else "float32"


class LiteFeatures:
    """Computes the feature groups of :data:`GROUPS` for (instruction, response) pairs.

    Models load lazily (SmolLM2 on the first ``lp``/``ifd``/``hs`` request, MiniLM on the
    first ``emb``/``embx`` request). SmolLM2 runs in bfloat16 where the CPU supports it (AMX /
    AVX-512 BF16; about 4x faster than float32), else in float32; ``dtype`` forces one. MiniLM
    uses the same dtype.

    Args:
        config: truncation / layer settings.
        device: torch device; None = "cuda" if available else "cpu".
        dtype: "bfloat16", "float32" or None (auto).
        batch_tokens: SmolLM2 token budget per forward pass (padded tokens).
        max_batch_size: most sequences per forward pass.
    """

    def __init__(self, config: FeatureConfig | None = None, *, device: str | None = None,
                 dtype: str | None = None, batch_tokens: int = 4096, max_batch_size: int = 64):
        self.config = config or FeatureConfig()
        self.device = device
        self.dtype_name = dtype
        self.batch_tokens = int(batch_tokens)
        self.max_batch_size = int(max_batch_size)
        self._smol = None
        self._minilm = None
        self._lock = threading.Lock()
        self.stats = {"forward_passes": 0, "tokens": 0, "padded_tokens": 0}

    # -- loading ------------------------------------------------------------------------
    def _resolve_device(self) -> str:
        return torch_device(self.device)

    def resolved_dtype(self) -> str:
        """The SmolLM2 dtype that will be used ("bfloat16" or "float32")."""
        return self.dtype_name or auto_dtype(self.device)

    def load_smol(self):
        if self._smol is not None:
            return self._smol
        with self._lock:
            if self._smol is not None:
                return self._smol
            import torch

            tok, model, name = load_smollm2("lite_quality")
            dt = torch.bfloat16 if self.resolved_dtype() == "bfloat16" else torch.float32
            model = model.to(self._resolve_device(), dtype=dt).eval()
            enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
            self._smol = {
                "torch": torch, "tok": tok, "model": model, "name": name,
                "user": enc("<|im_start|>user\n"), "mid": enc("<|im_end|>\n<|im_start|>assistant\n"),
                "asst": enc("<|im_start|>assistant\n"), "end": tok.convert_tokens_to_ids("<|im_end|>"),
                "pad": tok.convert_tokens_to_ids("<|im_end|>"),
            }
            logger.info("lite_quality: loaded SmolLM2 (%s, %s)", name, self.resolved_dtype())
        return self._smol

    def load_minilm(self):
        if self._minilm is None:
            import torch

            m = load_sentence_model(None, self._resolve_device(), "float32", shared=False)  # a private copy: its dtype is changed below
            m.max_seq_length = self.config.minilm_max_seq
            if self.resolved_dtype() == "bfloat16":
                m = m.to(torch.bfloat16)
            self._minilm = m
        return self._minilm

    # -- SmolLM2 ------------------------------------------------------------------------
    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        tok = self._smol["tok"]
        clipped = [t if len(t) < 60_000 else t[:40_000] + t[-20_000:] for t in texts]
        return tok(clipped, add_special_tokens=False)["input_ids"] if clipped else []

    def _run_smol(self, seqs: list[tuple[list[int], int, int]], want_hidden: bool, progress: bool, desc: str):
        """Forward ``(ids, response start, cut position)`` sequences, sorted by length and batched.

        Returns per sequence: (token log-probs of the response tokens incl. the end token,
        margins, top-1 flags, mean hidden state of the response tokens or None).
        """
        s = self._smol
        torch, model = s["torch"], s["model"]
        dev = self._resolve_device()
        from laser_fast.runtime.batching import one_thread_per_forward, plan_batches

        out: list = [None] * len(seqs)
        batches = [b.tolist() for b in plan_batches([len(q[0]) for q in seqs], self.batch_tokens, self.max_batch_size)]
        layer = self.config.layer

        def forward(b: list[int]):
            """One batch: per row (log-probs, margins, top-1 flags, mean hidden state or None), and
            the batch's real and padded token counts."""
            L = max(len(seqs[i][0]) for i in b)
            ids = torch.full((len(b), L), s["pad"], dtype=torch.long)
            att = torch.zeros((len(b), L), dtype=torch.long)
            for r, i in enumerate(b):
                q = seqs[i][0]
                ids[r, :len(q)] = torch.tensor(q)
                att[r, :len(q)] = 1
            with torch.inference_mode():  # thread-local: set in each worker thread
                ids = ids.to(dev)
                # right padding + causal attention: real tokens only ever attend to real tokens, so
                # no mask is needed (and the unmasked causal kernel is much faster on CPU)
                res = model.model(input_ids=ids, output_hidden_states=want_hidden)
                last = res.last_hidden_state
                # positions predicting response tokens: start-1 .. len-2
                rows, pos, tgt = [], [], []
                spans = []
                for r, i in enumerate(b):
                    q, start, _ = seqs[i]
                    p = list(range(start - 1, len(q) - 1))
                    spans.append((len(pos), len(pos) + len(p)))
                    rows += [r] * len(p)
                    pos += p
                    tgt += q[start:]
                hsel = last[torch.tensor(rows, device=dev), torch.tensor(pos, device=dev)]
                tg = torch.tensor(tgt, device=dev)
                lp_all, mg_all, t1_all = [], [], []
                for c in range(0, hsel.shape[0], LM_HEAD_CHUNK):
                    logits = model.lm_head(hsel[c:c + LM_HEAD_CHUNK]).float()
                    lse = torch.logsumexp(logits, dim=-1)
                    tl = logits.gather(1, tg[c:c + LM_HEAD_CHUNK, None])[:, 0]
                    mx, am = logits.max(dim=-1)
                    lp_all.append(tl - lse)
                    mg_all.append(tl - mx)
                    t1_all.append(am == tg[c:c + LM_HEAD_CHUNK])
                lp_all = torch.cat(lp_all).cpu().numpy().astype(np.float64)
                mg_all = torch.cat(mg_all).cpu().numpy().astype(np.float64)
                t1_all = torch.cat(t1_all).cpu().numpy().astype(np.float64)
                hs = None
                if want_hidden:
                    h = res.hidden_states[layer].float()
                    hs = []
                    for r, i in enumerate(b):
                        q, start, _ = seqs[i]
                        # response tokens (not the end token): start .. len-2
                        hs.append(h[r, start:len(q) - 1].mean(0).cpu().numpy() if len(q) - 1 > start
                                  else np.zeros(h.shape[-1], dtype=np.float32))
            rows_out = [(lp_all[a:e], mg_all[a:e], t1_all[a:e], None if hs is None else hs[r]) for r, (a, e) in enumerate(spans)]
            return rows_out, int(att.sum()), int(att.numel())

        # on the CPU one torch thread per forward, forwards side by side: a row's features do not
        # depend on torch's thread count (a Ray actor runs one thread, the local engine all cores).
        # Hidden states only side by side where transformers records them per call.
        side_by_side = not want_hidden or hidden_states_thread_safe()
        with one_thread_per_forward(str(dev).startswith("cpu"), side_by_side=side_by_side) as run_all:
            for b, (rows_out, real, padded) in progress_iter(run_all(forward, batches), desc=desc, unit="batch", show=progress,
                                                             total=len(batches)):
                self.stats["forward_passes"] += 1
                self.stats["tokens"] += real
                self.stats["padded_tokens"] += padded
                for i, row in zip(b, rows_out):
                    out[i] = row
        return out

    def smol_features(self, instructions: list[str], responses: list[str], groups: Sequence[str],
                      progress: bool = False) -> dict[str, np.ndarray]:
        """``lp`` / ``ifd`` / ``hs`` groups for non-empty responses."""
        self.load_smol()
        s, c = self._smol, self.config
        n = len(responses)
        inst_ids = self._tokenize(instructions)
        resp_ids = self._tokenize(responses)
        cond, unc, meta = [], [], []
        for ii, rr in zip(inst_ids, resp_ids):
            ii, _ = _cut(ii, c.inst_head, c.inst_tail)
            r2, cut = _cut(rr, c.resp_head, c.resp_tail)
            r2 = r2 + [s["end"]]
            pre = s["user"] + ii + s["mid"]
            cond.append((pre + r2, len(pre), cut))
            unc.append((s["asst"] + r2, len(s["asst"]), cut))
            meta.append((cut, len(rr)))
        want_hs = "hs" in groups
        out: dict[str, np.ndarray] = {}
        need_cond = "lp" in groups or want_hs or "ifd" in groups
        res_c = self._run_smol(cond, want_hs, progress, "lite_quality: SmolLM2") if need_cond else None

        def stats(res):
            arr = np.zeros((n, len(LP_FEATURES)))
            for k, (lp, mg, t1, _) in enumerate(res):
                cut, ntok = meta[k]
                body, end_lp = lp[:-1], lp[-1]
                keep = np.ones(body.size, dtype=bool)
                if cut >= 0:
                    keep[cut:cut + c.junction_skip] = False
                arr[k] = _lp_stats(body, mg[:-1], t1[:-1], keep, end_lp, ntok)
            return arr

        lp_c = stats(res_c) if res_c is not None else None
        if "lp" in groups:
            out["lp"] = lp_c
        if want_hs:
            out["hs"] = np.stack([r[3] for r in res_c]).astype(np.float64) if n else np.zeros((0, 576))
        if "ifd" in groups:
            res_u = self._run_smol(unc, False, progress, "lite_quality: SmolLM2 (no instruction)")
            lp_u = stats(res_u)
            i_mean, i_p10 = LP_FEATURES.index("lp_mean"), LP_FEATURES.index("lp_p10")
            out["ifd"] = np.stack([lp_u[:, i_mean], lp_u[:, i_p10], lp_u[:, i_mean] - lp_c[:, i_mean]], axis=1)
        return out

    # -- MiniLM -------------------------------------------------------------------------
    def minilm_features(self, instructions: list[str], responses: list[str], groups: Sequence[str],
                        batch_size: int = 32, progress: bool = False) -> dict[str, np.ndarray]:
        from laser_fast.classifier.features import embedding_text
        from laser_fast.sampling.embed import encode_texts

        m = self.load_minilm()
        c = self.config
        # encode_texts: on the CPU batches of one token length, one torch thread per forward, so a
        # vector does not depend on the other texts or on torch's thread count
        r_txt = [embedding_text(r, c.minilm_head_words, c.minilm_tail_words) for r in responses]
        er = encode_texts(m, r_txt, show_progress=progress)[0].astype(np.float64)
        out = {}
        if "emb" in groups:
            out["emb"] = er
        if "embx" in groups:
            i_txt = [embedding_text(t, 150, 50) for t in instructions]
            ei = encode_texts(m, i_txt, show_progress=progress)[0].astype(np.float64)
            prod = ei * er
            out["embx"] = np.concatenate([prod, prod.sum(1, keepdims=True)], axis=1)
        return out

    # -- all ------------------------------------------------------------------------------
    def __call__(self, instructions: Sequence[str], responses: Sequence[str], groups: Sequence[str] = GROUPS,
                 *, batch_size: int = 32, progress: bool = False) -> dict[str, np.ndarray]:
        """Feature groups for each pair, ``{group: float64 array (n, d)}``.

        Pairs whose response is empty / whitespace get NaN rows (the caller reports them).
        """
        unknown = set(groups) - set(GROUPS)
        if unknown:
            raise ValueError(f"unknown lite_quality feature groups {sorted(unknown)}; known: {GROUPS}")
        insts = ["" if t is None else str(t) for t in instructions]
        resps = ["" if t is None else str(t) for t in responses]
        if len(insts) != len(resps):
            raise ValueError(f"{len(insts)} instructions but {len(resps)} responses")
        n = len(resps)
        ok = np.array([bool(r.strip()) for r in resps], dtype=bool)
        idx = np.flatnonzero(ok)
        ins_ok = [insts[i] for i in idx]
        res_ok = [resps[i] for i in idx]
        parts: dict[str, np.ndarray] = {}
        if "cheap" in groups:
            parts["cheap"] = np.stack([cheap_features(a, b) for a, b in zip(ins_ok, res_ok)]) if idx.size \
                else np.zeros((0, len(CHEAP_FEATURES)))
        sg = [g for g in groups if g in ("lp", "ifd", "hs")]
        if sg and idx.size:
            parts.update(self.smol_features(ins_ok, res_ok, sg, progress))
        mg = [g for g in groups if g in ("emb", "embx")]
        if mg and idx.size:
            parts.update(self.minilm_features(ins_ok, res_ok, mg, batch_size, progress))
        out = {}
        for g in groups:
            if g not in parts:
                d = {"cheap": len(CHEAP_FEATURES), "lp": len(LP_FEATURES), "ifd": len(IFD_FEATURES),
                     "hs": 576, "emb": 384, "embx": 385}[g]
                parts[g] = np.zeros((0, d))
            full = np.full((n, parts[g].shape[1]), np.nan)
            full[idx] = parts[g]
            out[g] = full
        return out


def group_names(group: str, dim: int) -> list[str]:
    """Column names of a feature group."""
    if group == "cheap":
        return list(CHEAP_FEATURES)
    if group == "lp":
        return list(LP_FEATURES)
    if group == "ifd":
        return list(IFD_FEATURES)
    if group == "embx":
        return [f"embx_{i}" for i in range(dim - 1)] + ["emb_cosine"]
    return [f"{group}_{i}" for i in range(dim)]


# --------------------------------------------------------------------------------------
# the shipped linear model
