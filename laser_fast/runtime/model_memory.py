"""How much host memory one worker needs to run a model on the CPU, read from the checkpoint's
file headers without loading it. The Ray engine reserves it for CPU actors, so a node runs only
as many copies of a model as its memory holds.

A worker's peak resident memory on the CPU is the interpreter with torch and transformers
(320 MB measured with torch 2.13's CPU build, 496 MB with torch 2.2's CUDA build), the weights
(bfloat16 counted as float32, see below), the file's copy while they are converted (its pages are mapped during the
load), and one forward's activations. Those grow with the tokens of a batch, per token:

* about ``12 x hidden + 4 x intermediate`` float32 values, the MLP's and the attention's
  intermediate tensors (torch 2.2 on the CPU took twice the activations of torch 2.13);
* the attention over a padded batch. Where torch materialises it (its math path: torch 2.2 with a
  padding mask, or an architecture transformers runs without ``sdpa``), ``4 x heads x sequence
  length`` values for the scores, their softmax and the mask; measured, 1.25-1.9 of them. Where
  ``sdpa`` runs a fused kernel (:func:`fused_attention`: torch's own dispatch is asked), only the
  mask, which the kernel reads as floats: ``2 x sequence length`` values; measured, about one
  (one forward of a BERT-base shape built in memory, torch 2.13: 64 x 512 tokens, 1,902 MB at
  the peak with ``sdpa``, 2,905 MB with ``eager``; 4 x 8,192 tokens with ``sdpa``, 2,707 MB);
* in generation (the transformers judge), every token's keys and values, twice over (the cache
  and the copy it makes as it grows): ``4 x layers x key width`` values (for latent attention
  where transformers caches the latent, :func:`caches_latent`, the latent's width instead, plus
  one layer's expanded keys and values); measured, SmolLM2's
  shape generating from 16,000 prompt tokens took 1,215 MB of activations at 1,000 tokens a
  prompt, 1,633 MB at 8,000;
* where a forward keeps every layer's hidden states (``lite_quality``'s SmolLM2 features), ``layers
  + 1`` times the hidden width;
* where a scorer reads log-probabilities over the vocabulary (IFD), its head's rows times the
  vocabulary, three times (the logits, their float32 copy, the log-probabilities).

Weights in bfloat16 are counted as float32: on the CPU they run through oneDNN, which keeps a
compiled kernel per batch shape (up to 1,024 of them), and a worker held as much as float32 would:
``lite_quality`` (SmolLM2 and MiniLM) on 1,024 records of the AlpacaEval pool, one thread, peaked
at 2,168-2,447 MB in bfloat16 (three runs; 2,033 MB with ``ONEDNN_PRIMITIVE_CACHE_CAPACITY=64``)
and 2,227 MB in float32. The estimate adds 10% to the sum, so it is meant to be an upper bound.

It counts one forward at a time, as a Ray actor of one CPU runs (``OMP_NUM_THREADS=1``; a
process with more threads runs as many forwards side by side). Measured peaks (random-init
checkpoints saved in bfloat16 and run in float32; 2 Xeon cores with AVX-512 and AMX, 2026-12-07;
one thread), and the estimate as a multiple of them:

* torch 2.13 + transformers 5.25 (fused attention): DEITA on a LLaMA 512 wide with 8 layers (56M
  weights) at 4,096 tokens per batch, 931 MB (1.43x); IFD on a LLaMA 64 wide with a vocabulary of
  128,256, 3,092 MB (1.34x); the transformers judge on a LLaMA 512 wide with a context of 4,096,
  16,384 tokens per batch, 1,788 MB (1.56x); the bundled classifier, 829 MB (1.31x);
* torch 2.2 + transformers 4.56 (the floors; attention materialised): the same judge, 6,187 MB
  (1.82x).

Before the attention term followed the kernel, every estimate counted the scores; figures
measured then (2 threads unless named): on torch 2.13, the 56M LLaMA at 1,024, 4,096 and 8,192
tokens per batch, 881, 1,187 and 1,495 MB; a Qwen3 regression model 1,024 wide with 24 layers
(335M) and a LLaMA of that shape (368M) on short inputs, 3,079 and 3,131 MB; ``lite_difficulty``,
``lite_quality`` and ``onepass`` 714-1,966 MB; on torch 2.2, the 56M LLaMA at the same budgets,
1,079, 1,653 and 2,186 MB, and the IFD case 3,233 MB.

``tests/test_model_memory.py`` checks the estimate against a worker's peak.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from laser_fast.runtime.hub_cache import cached_file, index_files

logger = logging.getLogger(__name__)

#: the interpreter with torch, transformers and a tokenizer loaded: 320 MB measured with torch 2.13's
#: CPU build, 496 MB with torch 2.2's CUDA build (the wheel a GPU cluster's CPU nodes have), rounded up
BASE_MB = 640
#: added to the sum of the parts
MARGIN = 1.10
#: a worker that holds no model (an HTTP judge's client): the interpreter, with the margin
NO_MODEL_MB = round(BASE_MB * MARGIN)
#: bytes per element of the safetensors dtypes (the hub's metadata counts weights per dtype)
_WIDTH = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
          "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint's headers say: its weight count, the bytes a load maps (the files, or for
    a GGUF its float32 conversion, which is what transformers loads), the layer widths, the
    attention heads, the vocabulary, the layers, the width of one layer's keys (or values; their
    mean where they differ), for latent attention the same for its latent (half the compressed
    width plus the shared rotary key; 0 for other attention), the context length (0 when unknown)
    and the architecture (``model_type``; "" when unknown)."""

    elements: int
    file_bytes: int
    hidden: int = 0
    intermediate: int = 0
    heads: int = 0
    vocab: int = 0
    layers: int = 0
    kv_width: int = 0
    context: int = 0
    latent_width: int = 0
    model_type: str = ""


def _safetensors_elements(path: Path) -> int:
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    return sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")


def _widest(value) -> int:
    """A config width as one number: the largest of a per-layer list; 0 when it is not a number."""
    if isinstance(value, (list, tuple)):
        return max((_widest(v) for v in value), default=0)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _first(cfg: dict, *keys: str) -> int:
    return next((w for w in (_widest(cfg.get(k)) for k in keys) if w), 0)


def config_widths(cfg: dict) -> dict:
    """The :class:`Checkpoint` fields a transformers config gives (``hidden``, ``intermediate``,
    ``heads``, ``vocab``, ``layers``, ``kv_width``, ``context``, ``model_type``), under the names
    the architectures use (GPT-2's ``n_embd``, T5's ``d_ff``, ...); 0 where it does not say."""
    outer = cfg
    cfg = cfg["text_config"] if isinstance(cfg.get("text_config"), dict) else cfg
    hidden = _first(cfg, "hidden_size", "d_model", "n_embd", "dim")
    inter = _first(cfg, "intermediate_size", "ffn_dim", "n_inner", "d_ff", "ffn_hidden_size", "hidden_dim") or 4 * hidden
    heads = _first(cfg, "num_attention_heads", "n_head", "n_heads", "num_heads", "encoder_attention_heads")
    head_dim = _first(cfg, "head_dim") or (hidden // heads if heads else 0)
    kv_heads = _first(cfg, "num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num") or heads
    kv_width, latent = kv_heads * head_dim, 0
    rank, rope = _first(cfg, "kv_lora_rank"), _first(cfg, "qk_rope_head_dim")
    if rank and rope:
        # multi-head latent attention (DeepSeek-V2/V3's): per head, keys of the no-position and the
        # rotary part, values of their own width; the latent is the compressed keys and values
        # with the one rotary key all heads share
        key = _first(cfg, "qk_nope_head_dim") + rope
        kv_width, latent = -(-kv_heads * (key + (_first(cfg, "v_head_dim") or key)) // 2), -(-(rank + rope) // 2)
    # a checkpoint that ships its own code runs its own attention: counted as unknown
    model_type = "" if "auto_map" in outer else cfg.get("model_type") or outer.get("model_type") or ""
    return {"hidden": hidden, "intermediate": inter, "heads": heads, "vocab": _first(cfg, "vocab_size") or _first(outer, "vocab_size"),
            "layers": _first(cfg, "num_hidden_layers", "n_layer", "num_layers", "n_layers"), "kv_width": kv_width,
            "latent_width": latent, "context": _first(cfg, "max_position_embeddings", "n_positions", "max_seq_len", "seq_length"),
            "model_type": model_type if isinstance(model_type, str) else ""}


def _config(folder: Path) -> dict:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _gguf(path: Path) -> Checkpoint:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    n = sum(int(t.n_elements) for t in reader.tensors)

    def field(suffix: str) -> int:
        for name, f in reader.fields.items():
            if name.endswith(suffix) and f.data:
                return int(f.parts[f.data[0]][0])
        return 0

    arch = reader.fields.get("general.architecture")
    arch = bytes(arch.parts[arch.data[0]]).decode("utf-8", "replace") if arch is not None and arch.data else ""
    vocab = next((len(f.data) for name, f in reader.fields.items() if name == "tokenizer.ggml.tokens"), 0)
    hidden, heads = field(".embedding_length"), field(".attention.head_count")
    key = field(".attention.key_length") or (hidden // heads if heads else 0)
    kv_width = -(-(field(".attention.head_count_kv") or heads) * (key + (field(".attention.value_length") or key)) // 2)
    # (transformers loads no latent-attention GGUF: DeepSeek's are not read for it)
    return Checkpoint(n, 4 * n, hidden, field(".feed_forward_length"), heads, vocab, layers=field(".block_count"),
                      kv_width=kv_width, context=field(".context_length"), model_type=arch)


def folder_checkpoint(folder: str | Path, gguf_file: str | None = None) -> Checkpoint | None:
    """The :class:`Checkpoint` of a local model folder (safetensors, a GGUF file, or PyTorch
    ``.bin`` files read memory-mapped); None when the folder holds no weights, or not every shard
    its index names (a download under way: the hub's figures are asked for instead)."""
    folder = Path(folder)
    if gguf_file:
        return _gguf(folder / gguf_file)
    cfg = _config(folder)
    st = index_files(folder, "model.safetensors.index.json")
    if st is None:
        return None
    st = st or sorted(folder.glob("*.safetensors"))
    if st:
        return Checkpoint(sum(_safetensors_elements(p) for p in st), sum(p.stat().st_size for p in st), **config_widths(cfg))
    ggufs = sorted(folder.glob("*.gguf"))
    if ggufs:
        return _gguf(ggufs[0])
    bins = index_files(folder, "pytorch_model.bin.index.json")
    if bins is None:
        return None
    bins = bins or sorted(p for p in folder.glob("*.bin") if p.name.startswith(("pytorch_model", "model")))
    if bins:
        return Checkpoint(sum(_pickled_elements(p) for p in bins), sum(p.stat().st_size for p in bins), **config_widths(cfg))
    return None


def _pickled_elements(path: Path) -> int:
    """The weights of a PyTorch ``.bin`` file, read memory-mapped (no copy of the tensors)."""
    import torch

    state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)  # torch 2.2 maps only a str path
    return sum(t.numel() for t in state.values() if isinstance(t, torch.Tensor))


def _hub_checkpoint(repo_id: str, revision: str | None) -> Checkpoint | None:
    """From the local Hugging Face cache when the snapshot holds the weights, else from the hub's
    safetensors metadata when the hub may be asked; None otherwise."""
    from laser_fast.runtime.models import hub_offline, hub_reachable

    config = cached_file(repo_id, "config.json", revision)
    if config is not None:
        found = folder_checkpoint(config.parent)
        if found is not None:
            return found
    if hub_offline() or not hub_reachable():
        return None
    try:
        from huggingface_hub import get_safetensors_metadata, hf_hub_download

        meta = get_safetensors_metadata(repo_id, revision=revision)
    except Exception:  # noqa: BLE001 - no safetensors, gated, unknown: the estimate is unknown
        return None
    try:
        widths = config_widths(_config(Path(hf_hub_download(repo_id, "config.json", revision=revision)).parent))
    except Exception:  # noqa: BLE001 - the count alone still bounds the weights
        widths = {}
    counts = dict(meta.parameter_count)
    return Checkpoint(sum(counts.values()), sum(n * _WIDTH.get(d, 4) for d, n in counts.items()), **widths)


def checkpoint(model_id: str | None, revision: str | None = None) -> Checkpoint | None:
    """The :class:`Checkpoint` of a model as the loaders resolve it (``None``/``smollm2``: the
    packaged SmolLM2 GGUF; a local folder or ``.gguf`` file; a hub id); None when its files are
    neither here nor described by the hub."""
    from laser_fast.errors import ModelLoadError
    from laser_fast.runtime.models import SMOLLM_ALIASES, smollm2_gguf

    if model_id is None or str(model_id).strip().lower() in SMOLLM_ALIASES:
        try:
            folder, name = smollm2_gguf()
        except ModelLoadError:
            return None
        return _gguf(Path(folder) / name)
    p = Path(str(model_id)).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return _gguf(p)
    if p.is_dir():
        return folder_checkpoint(p)
    return _hub_checkpoint(str(model_id), revision)


@functools.cache
def _fused_masked_sdpa() -> bool:
    """Whether this torch's CPU ``scaled_dot_product_attention`` runs a padded batch (a boolean
    mask) in a fused kernel: torch 2.13 does; torch 2.2 falls back to the math path, which
    materialises the scores. Asked of torch's own dispatch (``torch._fused_sdp_choice``); False
    when it cannot be asked."""
    try:
        import torch

        q = torch.zeros(1, 2, 8, 16)
        return int(torch._fused_sdp_choice(q, q, q, torch.ones(1, 1, 8, 8, dtype=torch.bool), 0.0, False)) != 0
    except Exception:  # noqa: BLE001 - a torch without the probe: count the scores
        return False


@functools.cache
def _runs_sdpa(model_type: str) -> bool:
    """Whether transformers runs the architecture ``model_type`` through ``sdpa`` when the loader
    names no attention (its model class supports it); False when unknown (remote code)."""
    try:
        import transformers
        from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

        name = MODEL_MAPPING_NAMES.get(model_type)
        return isinstance(name, str) and bool(getattr(getattr(transformers, name, None), "_supports_sdpa", False))
    except Exception:  # noqa: BLE001 - count the scores
        return False


@functools.cache
def caches_latent(model_type: str) -> bool:
    """Whether this transformers keeps latent attention's compressed keys and values in the cache
    and expands them one layer at a time (5.x's DeepSeek-V2/V3 do; 4.56 caches the expanded keys
    and values): its attention class has ``expand_kv``. False when unknown (remote code), which
    counts the larger, expanded cache."""
    try:
        import inspect
        import sys

        import transformers
        from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

        name = MODEL_MAPPING_NAMES.get(model_type)
        cls = getattr(transformers, name, None) if isinstance(name, str) else None
        module = sys.modules.get(cls.__module__) if cls is not None else None
        return module is not None and any(callable(getattr(c, "expand_kv", None)) for n, c in inspect.getmembers(module, inspect.isclass)
                                          if n.endswith("Attention"))
    except Exception:  # noqa: BLE001 - count the expanded cache
        return False


def fused_attention(model_type: str) -> bool:
    """Whether a padded CPU forward of this architecture keeps its attention scores out of memory
    (``sdpa`` in a fused kernel); the estimate then counts the mask instead of the scores."""
    return bool(model_type) and _runs_sdpa(model_type) and _fused_masked_sdpa()


def worker_mb(ck: Checkpoint, *, batch_tokens: int, seq_len: int, head_rows: int = 0, kv_cache: bool = False,
              all_hidden: bool = False, copies: int = 1) -> int:
    """One worker's peak host memory in MB for checkpoint ``ck`` (``copies`` of its weights) run
    with forwards of ``batch_tokens`` tokens in sequences of at most ``seq_len``, and
    ``head_rows`` positions at a time through the vocabulary head (their logits, a float32 copy
    and the log-probabilities); ``kv_cache``: generation, which keeps every token's keys and
    values; ``all_hidden``: forwards that keep every layer's hidden states
    (``output_hidden_states``; see the module doc). Without the widths, the activations are taken
    as a quarter of the weights. Weights are counted in float32 whatever their dtype: bfloat16 on
    the CPU runs through oneDNN, whose cache of kernels per batch shape takes what it saves."""
    width = 4 * copies
    if ck.hidden:
        longest = min(seq_len, batch_tokens)
        if fused_attention(ck.model_type):
            att = 2 * longest
        else:
            att = 4 * (ck.heads or max(1, ck.hidden // 64)) * longest
        layers = ck.layers or max(1, ck.elements // (12 * ck.hidden ** 2))  # a standard layer has 12 x hidden^2 weights
        if not kv_cache:
            kv = 0
        elif ck.latent_width and caches_latent(ck.model_type):
            kv = 4 * layers * ck.latent_width + 4 * ck.kv_width  # one layer's keys and values expanded at a time
        else:
            kv = 4 * layers * (ck.kv_width or ck.hidden)
        kept = (layers + 1) * ck.hidden if all_hidden else 0
        act = batch_tokens * 4 * (12 * ck.hidden + 4 * ck.intermediate + att + kv + kept)
    else:
        act = ck.elements  # a quarter of the float32 weights
    act += 3 * 4 * head_rows * ck.vocab
    return math.ceil((BASE_MB * 2**20 + ck.elements * width + ck.file_bytes + act) * MARGIN / 2**20)


def model_mb(model_id: str | None, *, revision: str | None = None, batch_tokens: int = 8192, seq_len: int = 2048,
             head_rows: int = 0, kv_cache: bool = False, all_hidden: bool = False) -> int | None:
    """:func:`worker_mb` of ``model_id`` (None when its size is unknown)."""
    ck = checkpoint(model_id, revision)
    return None if ck is None else worker_mb(ck, batch_tokens=batch_tokens, seq_len=seq_len, head_rows=head_rows, kv_cache=kv_cache,
                                                  all_hidden=all_hidden)


def reserved_mb(who: str, estimate) -> int:
    """``estimate()`` as the memory to reserve for one CPU worker of ``who``: 0 (nothing reserved)
    when it is unknown or fails; a failure is logged and never stops the run."""
    try:
        return int(estimate() or 0)
    except Exception as e:  # noqa: BLE001 - unreadable headers, a hub error: run without a reservation
        logger.warning("%s: no memory estimate for its workers (%s); Ray reserves none", who, e)
        return 0
