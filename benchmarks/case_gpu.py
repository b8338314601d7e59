"""Benchmark case ``gpu``: the paper's recipe at the paper's model shapes, on one GPU.

Models are random-init and built directly on the device (no download, no CPU copy of the
weights): bf16 for the scorers, float16 for the embedders. Random weights change no FLOP, no
memory figure and no batching decision, so records/s, tokens/s, MFU and peak memory are those of
the real checkpoints; the scores themselves are meaningless, only their agreement is checked.

* scorers (:mod:`laser_fast.scorers.models`), each on real AlpacaEval records
  (``../shared/data/alpaca_eval_pool.jsonl.gz``):

  - ``difficulty``: Qwen3-8B shape, ``Qwen3ForSequenceClassification`` with one label;
  - ``deita_quality``: LLaMA-13B shape, ``LlamaForCausalLM`` (DEITA's scorers are LLaMA-13B);
  - ``process_reward``: Qwen2.5-Math-PRM-7B shape, a Qwen2 decoder with the PRM head of
    :func:`laser_fast.runtime.models.prm_model_class`.

  Each is timed with its default settings (on CUDA a token budget from the free GPU memory and
  up to 4,096 rows per forward, packed where ``varlen_attn`` runs, with ``padded_rec_s`` the
  padded forward of the same scorer beside it; difficulty also with ``max_batch_size=512``) and
  one record per forward (``max_batch_size=1``) on a random subset of the records
  (``single_records`` of them: its records/s is that subset's rate, and ``speedup`` compares the
  two rates), and the two results are compared on that subset (Spearman rank correlation,
  largest absolute difference, read against ``score_std``, the spread of the scores). Times are wall-clock seconds of ``scorer.score`` (templating and tokenization
  included; ``forward_share`` is the part spent in forward passes, ``forwards`` their count).
  Difficulty is also timed through the scoring stage the CLI runs (four cached chunks) with the
  next chunk tokenized in a thread while the model runs (``stage_rec_s_prefetch``) and without
  (``stage_rec_s_serial``).
* embedders: a MiniLM-shape encoder (BERT, 6 layers, hidden 384, 256 tokens) and a BERT-large
  shape one (24 layers, hidden 1024, 512 tokens), mean pooling, timed through
  :func:`laser_fast.sampling.embed.encode_texts` (length-sorted token-budget batches) and one
  text per forward on a subset.
* k-means (``benchmarks/gpu_kmeans.py``, 1M x 384, k = 25k in the full run), when present.

The tokenizer is a byte-level BPE trained here on the pool (32k tokens in the full run) with a
ChatML chat template, ``<extra_0>`` (the PRM step separator) as one token and the digits 1..6 as
single tokens (DEITA's answers); the models keep their real vocabulary sizes.

MFU = 2 x matmul parameters x real tokens / seconds / the device's dense bf16 peak (989 TFLOP/s
for H100 / H200; other GPUs in ``_PEAK``): the input embeddings and the output head (run on a few
positions per sequence) are left out, and so are attention's own FLOPs, so MFU is a lower bound.
It is None on a CPU: a CPU figure is never reported as a GPU one. Peak memory is
``torch.cuda.max_memory_allocated`` per model on CUDA, the process's peak RSS on a CPU.

``--quick`` runs tiny models of the same architectures in float32 on the CPU, one torch thread
(CI's smoke test, ``tests/test_bench_gpu.py``); the full run needs a CUDA GPU and says so
otherwise (``scripts/gpu_check.sh`` runs it on a lent GPU machine). ``LASER_BENCH_GPU_RECORDS=N`` overrides the
records per scorer of the full run. Each row is printed as JSON as soon as it is measured, so a
run cut short keeps what it measured in its log.
"""
from __future__ import annotations

import gc
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from benchmarks.common import timed

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<extra_0>"]

#: dense bf16 / fp16 tensor-core peak FLOP/s by device name (no sparsity)
_PEAK = ((r"\bH100 PCIe\b", 756e12), (r"\bH100 NVL\b", 835e12),  # the SXM parts below: 989
         (r"\bGH200\b|\bH200\b|\bH100\b|\bH800\b", 989e12), (r"\bB200\b", 2.25e15), (r"\bA100\b|\bA800\b", 312e12),
         (r"\bL40S\b", 362e12), (r"\bA10G?\b", 125e12), (r"\bL4\b", 121e12))

# the paper's model shapes (config fields of transformers' config classes)
_QWEN3_8B = {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32,
             "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 40960,
             "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
_LLAMA_13B = {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40, "num_attention_heads": 40,
              "num_key_value_heads": 40, "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
              "tie_word_embeddings": False}
_QWEN25_MATH_7B = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                   "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 4096, "rope_theta": 10_000.0,
                   "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
_TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "head_dim": 16, "max_position_embeddings": 4096, "tie_word_embeddings": False, "initializer_range": 0.2}
_MINILM = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
           "max_position_embeddings": 512, "vocab_size": 30522}
_BERT_LARGE = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
               "max_position_embeddings": 512, "vocab_size": 30522}
_BERT_TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
              "max_position_embeddings": 512}

# full-run sizes: ~4-5 minutes on one H200 (DEITA at ~45 records/s is the long pole)
_FULL_RECORDS = {"difficulty": 3000, "deita_quality": 2000, "process_reward": 2000}
_FULL_SINGLE = 300
_FULL_EMBED = {"minilm_shape": 20000, "bert_large_shape": 10000}
_FULL_EMBED_SINGLE = 300


# --------------------------------------------------------------------------------------
# device facts
# --------------------------------------------------------------------------------------

def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of a GPU by its name (None when unknown, and for a CPU)."""
    for pat, flops in _PEAK:
        if re.search(pat, device_name or ""):
            return flops
    return None


def _device_label(dev: str) -> str:
    import torch

    if dev.startswith("cuda"):
        return f"cuda ({torch.cuda.get_device_name(torch.device(dev))})"
    return "cpu"


def _reset_peak(dev: str) -> None:
    import torch

    if dev.startswith("cuda"):
        torch.cuda.synchronize(torch.device(dev))
        torch.cuda.reset_peak_memory_stats(torch.device(dev))


def _peak_mem(dev: str) -> tuple[float | None, str]:
    import torch

    if dev.startswith("cuda"):
        return round(torch.cuda.max_memory_allocated(torch.device(dev)) / 2**20, 1), "cuda_max_allocated"
    from laser_fast.runtime.stats import peak_rss_mb

    return peak_rss_mb(), "process_peak_rss"


def _free(dev: str) -> None:
    gc.collect()
    if dev.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def matmul_params(model) -> int:
    """Parameters that take part in a matmul for every token: 2-D weights outside the input
    embeddings and the output head (``lm_head`` / ``score`` / ``classifier`` / ``pooler``)."""
    skip = ("lm_head", "score", "classifier", "pooler")
    return int(sum(p.numel() for n, p in model.named_parameters()
                   if p.dim() == 2 and "embed" not in n and not any(s in n.split(".") for s in skip)))


def _mfu(n_params: int, tokens: int, seconds: float, peak: float | None) -> float | None:
    if peak is None or seconds <= 0:
        return None
    return float(f"{2.0 * n_params * tokens / seconds / peak:.3g}")  # 3 significant digits (tiny models: ~1e-5)


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation over the rows finite in both (None when fewer than 3)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return None
    ra = np.argsort(np.argsort(a[ok], kind="stable"), kind="stable").astype(np.float64)
    rb = np.argsort(np.argsort(b[ok], kind="stable"), kind="stable").astype(np.float64)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return round(float(np.corrcoef(ra, rb)[0, 1]), 4)


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.max(np.abs(a[ok] - b[ok]))) if ok.any() else None


# --------------------------------------------------------------------------------------
# data, tokenizer, models
# --------------------------------------------------------------------------------------

def _pool(seed: int = 0) -> list[dict] | None:
    """Real (instruction, output) rows of the AlpacaEval pool (no NullModel junk), shuffled."""
    from benchmarks.data import alpaca_pool_rows

    rows = alpaca_pool_rows()
    if rows is None:
        return None
    rows = [{"instruction": r["instruction"], "output": r["output"]} for r in rows
            if r.get("generator") != "NullModel" and r.get("output") and r.get("instruction")]
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[i] for i in order]


def _records(rows: list[dict], n: int):
    """The first ``n`` rows as an ingested record table (category 'Generation')."""
    import polars as pl

    from laser_fast.io.ingest import records_from_frame

    recs, _ = records_from_frame(pl.DataFrame(rows[:n]), origin="alpaca_eval_pool")
    return recs.with_columns(pl.lit("Generation").alias("category"))


def pool_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``texts``, with a ChatML template, ``<extra_0>`` and
    ``<|im_start|>`` / ``<|im_end|>`` as single special tokens and every digit a token of its own
    (the byte alphabet), pad = ``<|endoftext|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<extra_0>"], model_max_length=1 << 16,
                                   model_input_names=["input_ids", "attention_mask"])
    fast.chat_template = CHATML
    return fast


def build_on_device(cls, config, dev: str, dtype):
    """``cls`` with random weights, allocated and initialised on ``dev`` in ``dtype`` (an 8B
    model never exists on the CPU)."""
    import torch

    with torch.device(dev):
        model = cls._from_config(config, dtype=dtype)
    return model.eval()


def _attach(scorer, model, tok, dev: str):
    """Give ``scorer`` a model and tokenizer built here instead of loading them (``attach``)."""
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    scorer.attach(model, tok, dev)
    return scorer


class BenchScorer(NamedTuple):
    """One scorer of the case (``benchmarks/ray_scale.py`` builds its models from these too)."""

    name: str
    shape: str  #: the label in the rows
    make_model: Callable  #: config keywords -> (model class, config)
    full_kw: dict  #: the paper shape's config keywords
    make_scorer: Callable  #: scorer keywords -> scorer
    key: str  #: the output compared batched vs one per forward
    wide: int | None  #: an extra max_batch_size to time
    staged: bool  #: time the cached, chunked scoring stage with and without its prefetch thread


def _scorer_specs(quick: bool) -> list[BenchScorer]:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen3Config, Qwen3ForSequenceClassification

    from laser_fast.runtime.models import prm_model_class
    from laser_fast.scorers.models import DeitaScorer, DifficultyScorer, ProcessRewardScorer

    tiny = "tiny " if quick else ""
    specs = [
        ("difficulty", f"{tiny}Qwen3-8B shape (Qwen3ForSequenceClassification, 1 label)",
         lambda kw: (Qwen3ForSequenceClassification, Qwen3Config(num_labels=1, **kw)), _QWEN3_8B,
         lambda **k: DifficultyScorer("random-init:qwen3-8b-seq-regression", **k), "difficulty", 512, True),
        ("deita_quality", f"{tiny}LLaMA-13B shape (LlamaForCausalLM)",
         lambda kw: (LlamaForCausalLM, LlamaConfig(**kw)), _LLAMA_13B,
         lambda **k: DeitaScorer("quality", "random-init:llama-13b", **k), "quality", None, False),
        ("process_reward", f"{tiny}Qwen2.5-Math-PRM-7B shape (Qwen2 + PRM head)",
         lambda kw: (prm_model_class(), Qwen2Config(num_labels=2, **kw)), _QWEN25_MATH_7B,
         lambda **k: ProcessRewardScorer("random-init:qwen2.5-math-prm-7b", **k), "process_reward", None, False),
    ]
    return [BenchScorer(*s) for s in specs]


# --------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------

def _emit(rows: list[dict], row: dict) -> None:
    rows.append(row)
    print(json.dumps(row), flush=True)


def _timed_score(scorer, recs):
    for k, v in scorer.stats.items():  # the counters, not the ``packed`` setting
        if isinstance(v, (int, float)) and k != "packed":
            scorer.stats[k] = type(v)(0)
    out, t = timed(scorer.score, recs)
    return out, t, dict(scorer.stats)


def bench_scorer(spec: BenchScorer, tok, recs, n_single: int, dev: str, dtype, quick: bool) -> dict:
    import torch

    kw = dict(_TINY, vocab_size=len(tok)) if quick else dict(spec.full_kw)
    cls, cfg = spec.make_model(kw)
    cfg.pad_token_id = tok.pad_token_id
    _free(dev)
    _reset_peak(dev)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = build_on_device(cls, cfg, dev, dtype)
    if dev.startswith("cuda"):
        torch.cuda.synchronize(torch.device(dev))  # the random init runs asynchronously
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    n_mm = matmul_params(model)
    peak = peak_flops(torch.cuda.get_device_name(torch.device(dev))) if dev.startswith("cuda") else None
    sw = sp = single = None
    try:
        sc = _attach(spec.make_scorer(device=dev), model, tok, dev)
        sc.score(recs[:16])  # warm-up (kernels, allocator) outside the timing
        out_b, t_b, st_b = _timed_score(sc, recs)
        packed = bool(sc.stats.get("packed"))
        padded_rec_s = None
        if packed:  # the padding-free lever, measured against the padded forward of the same batches
            sp = _attach(spec.make_scorer(device=dev, packing=False), model, tok, dev)
            _, t_p, _ = _timed_score(sp, recs)
            padded_rec_s = round(recs.height / t_p, 2)
        wide_rec_s = None
        if spec.wide:
            sw = _attach(spec.make_scorer(device=dev, max_batch_size=spec.wide), model, tok, dev)
            _, t_w, _ = _timed_score(sw, recs)
            wide_rec_s = round(recs.height / t_w, 2)
        stage_rec_s = _staged(spec.make_scorer, model, tok, recs, dev) if spec.staged else {}
        single = _attach(spec.make_scorer(device=dev, max_batch_size=1), model, tok, dev)
        sub = recs[:n_single]
        single.score(sub[:2])
        out_1, t_1, st_1 = _timed_score(single, sub)
        mem, mem_kind = _peak_mem(dev)
    finally:
        del model
        sc = sw = sp = single = None  # drop the scorers' references to the model
        _free(dev)
    a, b = out_b[spec.key][:n_single], out_1[spec.key]
    single_rec_s = n_single / t_1
    return {
        "case": "gpu", "what": "scorer", "scorer": spec.name, "shape": spec.shape, "device": _device_label(dev),
        "dtype": str(dtype).replace("torch.", ""), "params_m": round(n_params / 1e6, 1), "build_s": round(build_s, 1),
        "records": recs.height, "tokens_per_record": round(st_b["tokens"] / recs.height, 1),
        "non_padding": round(st_b["tokens"] / st_b["padded_tokens"], 3) if st_b["padded_tokens"] else None,
        "batched_rec_s": round(recs.height / t_b, 2), "batched_tok_s": round(st_b["tokens"] / t_b, 1),
        "batched_mfu": _mfu(n_mm, st_b["tokens"], t_b, peak),
        "forwards": st_b["forward_passes"],
        "forward_share": round(st_b["seconds"] / t_b, 3),  # of the wall time: the rest is templating and tokenizing
        "packed": packed, "padded_rec_s": padded_rec_s,
        "rec_s_max_batch_512": wide_rec_s,
        "stage_rec_s_prefetch": stage_rec_s.get("prefetch"), "stage_rec_s_serial": stage_rec_s.get("serial"),
        "single_records": n_single, "single_rec_s": round(single_rec_s, 2),
        "single_mfu": _mfu(n_mm, st_1["tokens"], t_1, peak),
        "speedup": round((recs.height / t_b) / single_rec_s, 1),
        "spearman": spearman(a, b), "max_abs_diff": _max_abs_diff(a, b),
        "score_std": round(float(np.nanstd(out_b[spec.key])), 4),  # the spread the two columns before are read against
        "peak_mem_mb": mem, "mem_kind": mem_kind,
    }


def _staged(make_scorer, model, tok, recs, dev: str) -> dict:
    """records/s of the scoring stage (:func:`laser_fast.scorers.stage.score_records`: four chunks,
    each cached as a shard, in a fresh work directory) with the next chunk's inputs prepared in a
    thread while the model runs (``prefetch``) and without (``serial``): the prefetch lever."""
    import tempfile

    from laser_fast.scorers.stage import score_records

    cats = np.full(recs.height, "Generation", dtype=object)
    chunk = max(1, -(-recs.height // 4))
    out = {}
    for ahead in (True, False):
        sc = _attach(make_scorer(device=dev), model, tok, dev)
        with tempfile.TemporaryDirectory(prefix="laser-bench-stage-") as wd:
            _, t = timed(score_records, recs, cats, sc, wd, chunk_records=chunk, prefetch=ahead)
        out["prefetch" if ahead else "serial"] = round(recs.height / t, 2)
    return out


def _embedder(bert, tok, max_seq_length: int):
    """A BERT model with mean pooling, shaped like a SentenceTransformer for
    :func:`laser_fast.sampling.embed.encode_texts` (tokenizer, max_seq_length, preprocess,
    ``forward(features) -> {'sentence_embedding'}``)."""
    import torch

    class MeanPoolEmbedder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert
            self.tokenizer = tok
            self.max_seq_length = max_seq_length

        @property
        def device(self):
            return next(self.parameters()).device

        def get_sentence_embedding_dimension(self) -> int:
            return int(self.bert.config.hidden_size)

        def preprocess(self, texts):
            return dict(self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_seq_length,
                                       return_tensors="pt"))

        def forward(self, features):
            h = self.bert(input_ids=features["input_ids"], attention_mask=features["attention_mask"]).last_hidden_state
            m = features["attention_mask"].unsqueeze(-1).to(torch.float32)
            return {"sentence_embedding": (h.float() * m).sum(1) / m.sum(1).clamp(min=1.0)}

    return MeanPoolEmbedder()


def bench_embedder(name: str, kw: dict, max_len: int, tok, texts: list[str], n_single: int, dev: str) -> dict:
    import torch
    from transformers import BertConfig, BertModel

    from laser_fast.sampling.embed import encode_texts

    dtype = torch.float16 if dev.startswith("cuda") else torch.float32
    cfg = BertConfig(**{**kw, "vocab_size": max(kw.get("vocab_size", 0), len(tok))}, pad_token_id=tok.pad_token_id)
    _free(dev)
    _reset_peak(dev)
    torch.manual_seed(0)
    bert = build_on_device(BertModel, cfg, dev, dtype)
    n_params = sum(p.numel() for p in bert.parameters())
    n_mm = matmul_params(bert)
    peak = peak_flops(torch.cuda.get_device_name(torch.device(dev))) if dev.startswith("cuda") else None
    try:
        m = _embedder(bert, tok, max_len)
        encode_texts(m, texts[:32])  # warm-up
        (vb, st_b), t_b = timed(encode_texts, m, texts)
        sub = texts[:n_single]
        (v1, _st_1), t_1 = timed(encode_texts, m, sub, max_batch_size=1)
        mem, mem_kind = _peak_mem(dev)
    finally:
        del bert
        m = None
        _free(dev)
    cos = np.sum(vb[:n_single] * v1, axis=1)
    return {
        "case": "gpu", "what": "embedder", "model": name, "device": _device_label(dev),
        "dtype": str(dtype).replace("torch.", ""), "params_m": round(n_params / 1e6, 1), "max_tokens": max_len,
        "records": len(texts), "tokens_per_record": round(st_b["tokens"] / len(texts), 1), "non_padding": st_b["non_padding"],
        "batched_rec_s": round(len(texts) / t_b, 1), "batched_tok_s": round(st_b["tokens"] / t_b, 1),
        "batched_mfu": _mfu(n_mm, st_b["tokens"], t_b, peak), "fast_path": st_b["fast_path"],
        "single_records": len(sub), "single_rec_s": round(len(sub) / t_1, 1),
        "speedup": round((len(texts) / t_b) / (len(sub) / t_1), 1),
        "max_abs_diff": float(np.max(np.abs(vb[:n_single] - v1))), "min_cosine": round(float(cos.min()), 5),
        "peak_mem_mb": mem, "mem_kind": mem_kind,
    }


def _kmeans_row(quick: bool, dev: str) -> dict:
    try:
        from benchmarks.gpu_kmeans import bench_kmeans

        res = bench_kmeans(quick, dev)
        res.pop("case", None)
        return {"case": "gpu", "what": "kmeans", **res}
    except Exception as e:  # noqa: BLE001  # keep the scorer rows of a long run; the error is in the table
        if isinstance(e, ModuleNotFoundError) and e.name == "benchmarks.gpu_kmeans":
            return {"case": "gpu", "what": "kmeans", "note": "benchmarks/gpu_kmeans.py is not there: k-means not measured"}
        traceback.print_exc(file=sys.stderr)
        return {"case": "gpu", "what": "kmeans", "error": f"{type(e).__name__}: {e}"[:300]}


# --------------------------------------------------------------------------------------
# the case
# --------------------------------------------------------------------------------------

def run(quick: bool, device: str | None = None, dtype: str | None = None) -> list[dict]:
    """Rows of the ``gpu`` case (see the module docstring).

    Args:
        quick: tiny models (on the CPU in float32 unless ``device`` names a GPU); else the
            paper's shapes on CUDA. On CUDA the scorers run in bf16, the embedders in float16.
        device: torch device (default: the CPU for ``quick``, ``cuda`` otherwise).
        dtype: the scorers' dtype (``"bfloat16"`` / ``"float32"``; default bf16 on CUDA, float32
            on the CPU): bf16 on the CPU previews the GPU run's batched-vs-single agreement.
    """
    import torch

    dev = device or os.environ.get("LASER_BENCH_GPU_DEVICE") or ("cpu" if quick else "cuda")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        row = {"case": "gpu", "what": "skipped", "note": "no CUDA GPU visible to torch: the full gpu case needs one "
               "(python -m benchmarks --quick --cases gpu runs tiny models on the CPU)"}
        print(json.dumps(row), flush=True)
        return [row]
    pool = _pool()
    if pool is None:
        print("gpu: ../shared/data/alpaca_eval_pool.jsonl.gz not found; case skipped", flush=True)
        return []
    n_rec = int(os.environ.get("LASER_BENCH_GPU_RECORDS") or 0)
    records = {k: (64 if quick else n_rec or v) for k, v in _FULL_RECORDS.items()}
    n_single = 16 if quick else _FULL_SINGLE
    t0 = time.perf_counter()
    train = pool[-(1500 if quick else 10000):]  # the records come from the front (disjoint when the pool is large)
    tok = pool_tokenizer([t for r in train for t in (r["instruction"], r["output"])], 1000 if quick else 32000)
    print(f"gpu: tokenizer ({len(tok)} tokens) trained in {time.perf_counter() - t0:.1f} s on {len(train)} pool rows", flush=True)
    dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if dev.startswith("cuda") else torch.float32)
    threads = torch.get_num_threads()
    if quick and dev == "cpu":
        # tiny models: one thread (the threads of tiny ops mostly wait on each other, worst on a busy machine)
        torch.set_num_threads(1)
    try:
        return _measure(quick, dev, dtype, pool, tok, records, n_single)
    finally:
        torch.set_num_threads(threads)


def _row_or_error(dev: str, what: str, label: dict, measure) -> dict:
    """``measure()``'s row, or an ``error`` row naming what failed (the traceback goes to stderr),
    so one failing model (out of memory, a kernel the device lacks) does not cost the rows after
    it: on a lent GPU a rerun costs device time. ``scripts/gpu_check.sh`` fails on error rows."""
    try:
        return measure()
    except Exception as e:  # noqa: BLE001  # reported in the row and on stderr, never dropped
        traceback.print_exc(file=sys.stderr)
        row = {"case": "gpu", "what": what, **label, "error": f"{type(e).__name__}: {e}"[:300]}
    _free(dev)  # after the except block: the traceback no longer holds the failed model's tensors
    return row


def _measure(quick: bool, dev: str, dtype, pool: list[dict], tok, records: dict[str, int], n_single: int) -> list[dict]:
    rows: list[dict] = []
    # k-means first: the shortest row, and the one a run cut short by its time limit would otherwise lose
    _emit(rows, _kmeans_row(quick, dev))
    for spec in _scorer_specs(quick):
        recs = _records(pool, records[spec.name])
        _emit(rows, _row_or_error(dev, "scorer", {"scorer": spec.name, "shape": spec.shape}, lambda spec=spec, recs=recs:
                                  bench_scorer(spec, tok, recs, min(n_single, recs.height), dev, dtype, quick)))
    n_emb = {"minilm_shape": 64, "bert_large_shape": 64} if quick else _FULL_EMBED
    outs = [r["output"] for r in pool]
    texts = [outs[i % len(outs)] for i in range(max(n_emb.values()))]  # a small pool (the GPU check's sample) repeats
    for name, kw, max_len in (("minilm_shape", _MINILM, 256), ("bert_large_shape", _BERT_TINY if quick else _BERT_LARGE, 512)):
        label = f"{name} (tiny)" if quick and kw is _BERT_TINY else name
        _emit(rows, _row_or_error(dev, "embedder", {"model": label}, lambda label=label, kw=kw, max_len=max_len, name=name:
                                  bench_embedder(label, kw, max_len, tok, texts[:n_emb[name]], 16 if quick else _FULL_EMBED_SINGLE, dev)))
    return rows
