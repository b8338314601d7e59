"""Padding-free forwards for the model scorers: the real tokens of a batch in one packed row.

A length-sorted, right-padded batch still computes its padding. Packed, the batch's real tokens
are laid end to end in one row of ``T`` tokens, each sequence keeps its own position ids
(0, 1, ...), and attention runs per sequence on cumulative offsets (``cu_seqlens``) through
``torch.nn.attention.varlen.varlen_attn`` (flash attention without the flash-attn package, CUDA
only). The decoder's last hidden states are scattered back to the padded ``(B, L, H)`` layout, so
the scorers read them exactly as before.

Packing is used where it can run (:func:`packing_supported`: CUDA, a torch with ``varlen_attn``
and a Hugging Face decoder that takes its attention from ``ALL_ATTENTION_FUNCTIONS``); elsewhere the
padded forward runs. On the CPU the same attention is computed per sequence with
``scaled_dot_product_attention`` (slow: used by the tests to check that packed and padded hidden
states agree).
"""
from __future__ import annotations

import functools
import logging
import threading

from laser_fast.runtime.batching import head_dim_of
from laser_fast.runtime.models import decoder_of

logger = logging.getLogger(__name__)

#: The attention implementation name registered with transformers.
VARLEN = "laser_varlen"

_REGISTERED = False
_WARNED = False  # the sliding-window fallback of call_varlen was logged
_LOCK = threading.Lock()
#: held through each packed forward: it switches the attention on the model's shared config, so
#: forwards run side by side in threads (one torch thread each, on the CPU) take turns here
_FORWARD_LOCK = threading.Lock()
#: attention arguments the packed path cannot apply: logit soft-capping (Gemma-2) and attention
#: sinks (gpt-oss); a model that passes them runs padded (:func:`packing_supported`)
UNSUPPORTED_ARGUMENTS = ("softcap", "s_aux")


def varlen_available() -> bool:
    """Whether this torch has ``torch.nn.attention.varlen.varlen_attn``."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def _segments_sdpa(q, k, v, cu, scaling, window):
    """Causal attention per packed sequence (the CPU path): ``(T, H, D)`` inputs and output."""
    import torch
    import torch.nn.functional as F

    out = torch.empty_like(q)
    rep = q.shape[1] // k.shape[1]
    bounds = cu.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1)
        if rep > 1:
            ks = ks.repeat_interleave(rep, dim=0)
            vs = vs.repeat_interleave(rep, dim=0)
        mask = None
        if window:
            n = b - a
            i = torch.arange(n, device=q.device)
            mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)
        o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, is_causal=mask is None, scale=scaling)
        out[a:b] = o.transpose(0, 1)
    return out


def varlen_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     sliding_window: int | None = None, **kwargs):
    """A transformers attention function over one packed row (``query``: ``(1, H, T, D)``).

    Reads ``cu_seq_lens_q`` and ``max_length_q`` from the forward's keyword arguments; returns
    ``((1, T, H, D), None)`` as transformers' own attention functions do.
    """
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[0] != 1:
        raise RuntimeError("laser_varlen attention needs one packed row and cu_seq_lens_q (use laser_fast.runtime.packing.packed_hidden)")
    extra = [k for k in UNSUPPORTED_ARGUMENTS if kwargs.get(k) is not None]
    if extra:
        raise RuntimeError(f"laser_varlen attention cannot apply {', '.join(extra)} ({type(module).__name__}): score this model "
                           "with packing=False")
    q = query[0].transpose(0, 1).contiguous()
    k = key[0].transpose(0, 1).contiguous()
    v = value[0].transpose(0, 1).contiguous()
    window = int(sliding_window) if sliding_window else 0
    out = None
    if q.is_cuda and varlen_available() and flash_fits(q.dtype, q.shape[-1]) and flash_device(q.device):
        from torch.nn.attention.varlen import varlen_attn

        m = int(kwargs.get("max_length_q") or int((cu[1:] - cu[:-1]).max()))
        out = call_varlen(varlen_attn, q, k, v, cu, m, scaling, window)
    if out is None:
        out = _segments_sdpa(q, k, v, cu, scaling, window)
    return out.unsqueeze(0), None


@functools.lru_cache(maxsize=8)
def _parameters(fn) -> frozenset[str]:
    import inspect

    return frozenset(inspect.signature(fn).parameters)


def call_varlen(fn, q, k, v, cu, max_len: int, scaling: float | None, window: int):
    """Causal attention over packed ``(T, H, D)`` sequences through ``fn`` (``varlen_attn``), in the
    keywords of the torch at hand: torch 2.9 takes ``is_causal`` and no ``scale``; 2.10 and 2.11
    take ``scale`` and ``window_size`` (``(-1, 0)``: causal) and hand fewer key/value heads (GQA)
    to the flash kernel as they are; later releases want ``enable_gqa=True`` for those.

    Returns None where this torch cannot express the call (a sliding window without
    ``window_size``); the caller then attends per sequence, with a warning logged once.
    """
    names = _parameters(fn)
    kw: dict = {}
    if "window_size" in names:
        kw["window_size"] = (window - 1 if window else -1, 0)
    elif not window and "is_causal" in names:
        kw["is_causal"] = True
    else:
        global _WARNED
        if not _WARNED:
            _WARNED = True
            logger.warning("this torch's varlen_attn takes no sliding window; packed sliding-window layers "
                           "attend per sequence instead (correct, slower; upgrade torch, or score with packing=False)")
        return None
    if scaling is not None:
        if "scale" in names:
            kw["scale"] = scaling
        else:  # the kernel scales by 1/sqrt(D)
            q = q * (scaling * q.shape[-1] ** 0.5)
    if q.shape[1] != k.shape[1] and "enable_gqa" in names:
        kw["enable_gqa"] = True
    return fn(q, k, v, cu, cu, max_len, max_len, **kw)


def register() -> None:
    """Register :data:`VARLEN` with transformers' attention and mask interfaces (once)."""
    global _REGISTERED
    with _LOCK:
        if _REGISTERED:
            return
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

        AttentionInterface.register(VARLEN, varlen_attention)
        AttentionMaskInterface.register(VARLEN, flash_attention_mask)
        _REGISTERED = True


def flash_fits(dtype, head_dim: int | None) -> bool:
    """Whether the flash kernel under ``varlen_attn`` takes these attention inputs: float16 or
    bfloat16, a head size that is a multiple of 8 up to 256. A float32 model on CUDA
    (``dtype="float32"``) does not: the kernel would raise."""
    import torch

    return dtype in (torch.float16, torch.bfloat16) and (head_dim is None or (head_dim % 8 == 0 and head_dim <= 256))


def flash_device(device) -> bool:
    """Whether the flash kernel under ``varlen_attn`` runs on this CUDA device: compute capability
    8.0 (Ampere: A100, A10, RTX 30xx) or later. Older cards (T4, V100) score with the padded forward."""
    import torch

    dev = torch.device(device)
    return _capability(dev.index if dev.index is not None else torch.cuda.current_device()) >= (8, 0)


@functools.lru_cache(maxsize=16)
def _capability(index: int) -> tuple[int, int]:
    import torch

    return tuple(torch.cuda.get_device_capability(index))


def packing_supported(model, device: str | None = None) -> bool:
    """Whether :func:`packed_hidden` can run ``model`` fast: CUDA on a card the flash kernel runs
    on (:func:`flash_device`), ``varlen_attn`` in torch, weights the flash kernel takes
    (:func:`flash_fits`), and a decoder whose attention modules dispatch through transformers'
    attention interface and ask for nothing the packed attention cannot apply (logit
    soft-capping, attention sinks: :data:`UNSUPPORTED_ARGUMENTS`)."""
    p = next(model.parameters())
    dev = str(device if device is not None else p.device)
    if not dev.startswith("cuda") or not varlen_available() or not flash_fits(p.dtype, head_dim_of(model.config)):
        return False
    if not flash_device(dev):
        return False
    return _dispatches(model)


def _dispatches(model) -> bool:
    import inspect

    cfg = getattr(model.config, "text_config", None) or model.config
    if getattr(cfg, "attn_logit_softcapping", None):
        return False
    for mod in decoder_of(model).modules():
        if type(mod).__name__.endswith("Attention"):
            try:
                src = inspect.getsource(type(mod).forward)
            except (OSError, TypeError):
                return False
            if getattr(mod, "sinks", None) is not None or any(f"{k}=" in src for k in UNSUPPORTED_ARGUMENTS):
                return False
            return "ALL_ATTENTION_FUNCTIONS" in src and "**kwargs" in src
    return False


def packed_hidden(model, input_ids, attention_mask):
    """Last hidden states ``(B, L, H)`` of a right-padded batch, computed padding-free.

    The real tokens (``attention_mask == 1``, a prefix of each row) run as one packed row with
    per-sequence position ids and causal attention within each sequence; padding positions of
    the result are zero. Packed forwards run one at a time (the attention switch is on the
    model's shared config); on a GPU they do anyway, and on the CPU packing is opt-in.
    """
    import torch

    register()
    m = attention_mask.bool()
    lengths = m.sum(dim=1)
    flat = input_ids[m].unsqueeze(0)
    pos = (m.long().cumsum(-1) - 1)[m].unsqueeze(0)
    cu = torch.zeros(lengths.numel() + 1, dtype=torch.int32, device=input_ids.device)
    cu[1:] = lengths.cumsum(0)
    longest = int(lengths.max())
    base = decoder_of(model)
    cfg = base.config
    with _FORWARD_LOCK:  # another thread's forward must neither see the switch nor undo it
        was = getattr(cfg, "_attn_implementation", None)
        cfg._attn_implementation = VARLEN
        try:
            out = base(input_ids=flat, position_ids=pos, attention_mask=None, use_cache=False,
                       cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest).last_hidden_state
        finally:
            cfg._attn_implementation = was
    hidden = out.new_zeros((*input_ids.shape, out.shape[-1]))
    hidden[m] = out[0]
    return hidden
