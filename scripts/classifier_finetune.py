"""Fine-tuning the top MiniLM layers for the default classifier (``scripts/train_classifier.py
--finetune K``): supervised cross-entropy with a linear head over the mean-pooled embedding and the
lexical features, a cheap SetFit-like step. The hidden states entering the top layers are computed
once and cached on disk, so each epoch runs only the layers being trained."""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np

from laser_fast.categories import CATEGORIES
from laser_fast.classifier.features import embedding_text
from laser_fast.classifier.models import _load_minilm

HEAD_WORDS, TAIL_WORDS = 150, 50  # the embedding view; train_classifier.py imports these
log = logging.getLogger("train_classifier")


def _hidden_cache_path(k):
    """Where the hidden states entering the top ``k`` layers are cached between runs."""
    return f"/tmp/laser_cls_hidden{k}.pt"


def _hidden_cache(st, texts, k, cache_path):
    """Hidden states entering the top-k layers, one unpadded (T, 384) tensor per text."""
    import torch
    prep = [embedding_text(t, HEAD_WORDS, TAIL_WORDS) for t in texts]
    keys = [hashlib.sha1(p.encode()).hexdigest() for p in prep]
    store = torch.load(cache_path) if Path(cache_path).exists() else {}
    todo = sorted({kk: p for kk, p in zip(keys, prep) if kk not in store}.items(), key=lambda kv: len(kv[1]))
    bert, tok = st[0].auto_model, st.tokenizer
    nl = len(bert.encoder.layer)
    if todo:
        t0 = time.time()
        with torch.inference_mode():
            for s in range(0, len(todo), 64):
                chunk = todo[s:s + 64]
                enc = tok([p for _, p in chunk], padding=True, truncation=True,
                          max_length=st.max_seq_length, return_tensors="pt")
                hs = bert(**enc, output_hidden_states=True).hidden_states[nl - k]
                for j, (kk, _) in enumerate(chunk):
                    n = int(enc["attention_mask"][j].sum())
                    store[kk] = hs[j, :n].clone().to(torch.float16)
        torch.save(store, cache_path)
        log.info("hidden states for %d texts in %.1fs", len(todo), time.time() - t0)
    return [store[kk] for kk in keys]


def _top_forward(layers, hs_list):
    import torch
    T = max(h.shape[0] for h in hs_list)
    B = len(hs_list)
    h = torch.zeros(B, T, hs_list[0].shape[1])
    m = torch.zeros(B, T)
    for i, x in enumerate(hs_list):
        h[i, :x.shape[0]] = x.float()
        m[i, :x.shape[0]] = 1
    ext = (1.0 - m[:, None, None, :]) * torch.finfo(torch.float32).min
    for layer in layers:
        r = layer(h, attention_mask=ext)
        h = r[0] if isinstance(r, tuple) else r
    pooled = (h * m[:, :, None]).sum(1) / m.sum(1, keepdim=True)
    return torch.nn.functional.normalize(pooled, dim=-1)


def finetune_top_layers(texts, y, lex, k=2, epochs=4, lr=5e-5, head_lr=2e-3, batch=16, seed=0,
                        cache_path=None):
    """Fine-tune the top ``k`` MiniLM layers with a linear softmax head (cross-entropy).

    Returns the trained layers' state dict (keys relative to ``encoder.layer``) and a function
    that embeds texts with the fine-tuned model.
    """
    import copy

    import torch
    torch.manual_seed(seed)  # torch's own thread count (the cores): no process-wide change
    st, _ = _load_minilm("cpu")
    bert = st[0].auto_model
    nl = len(bert.encoder.layer)
    cache_path = cache_path or _hidden_cache_path(k)
    hs = _hidden_cache(st, texts, k, cache_path)
    layers = torch.nn.ModuleList([copy.deepcopy(bert.encoder.layer[i]) for i in range(nl - k, nl)])
    layers.train()
    lex_t = torch.tensor(lex, dtype=torch.float32)
    lmu, lsd = lex_t.mean(0), lex_t.std(0) + 1e-6
    head = torch.nn.Linear(384 + lex.shape[1], len(CATEGORIES))
    counts = np.bincount(y, minlength=len(CATEGORIES)).astype(np.float32)
    w = torch.tensor(counts.sum() / (len(CATEGORIES) * np.maximum(counts, 1)))
    opt = torch.optim.AdamW([{"params": layers.parameters(), "lr": lr},
                             {"params": head.parameters(), "lr": head_lr}], weight_decay=0.01)
    yt = torch.tensor(y)
    rng = np.random.default_rng(seed)
    order_len = np.argsort([h.shape[0] for h in hs])
    n_steps = epochs * ((len(hs) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (0.1 * n_steps)) *
                                              max(0.0, 1 - s / n_steps))
    t0 = time.time()
    for ep in range(epochs):
        # length-bucketed shuffled batches
        chunks = [order_len[i:i + batch] for i in range(0, len(hs), batch)]
        rng.shuffle(chunks)
        tot = 0.0
        for idx in chunks:
            idx = rng.permutation(idx)
            e = _top_forward(layers, [hs[i] for i in idx])
            logits = head(torch.cat([e * 10.0, (lex_t[idx] - lmu) / lsd], 1))
            loss = torch.nn.functional.cross_entropy(logits, yt[idx], weight=w, label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(layers.parameters(), 1.0)
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
        log.info("fine-tune epoch %d: loss %.4f (%.0fs)", ep + 1, tot / len(hs), time.time() - t0)
    layers.eval()
    state = {f"{nl - k + j}.{name}": p.detach().clone() for j, layer in enumerate(layers)
             for name, p in layer.state_dict().items()}
    return state, tuned_embedder(state, k, cache_path, st)  # the loaded MiniLM, not a second copy


def soup(states):
    """The uniform weight average of fine-tuned layer states (same keys; a "model soup")."""
    keys = set(states[0])
    if any(set(s) != keys for s in states[1:]):
        raise ValueError("soup: the fine-tuned states hold different parameters")
    return {key: sum(s[key] for s in states) / len(states) for key in sorted(keys)}


def tuned_embedder(state, k, cache_path=None, st=None):
    """A function that embeds texts with MiniLM whose top ``k`` layers carry ``state`` (``st``: a
    MiniLM already loaded by ``_load_minilm``; its own layers are left as they are)."""
    import copy

    import torch
    st = st if st is not None else _load_minilm("cpu")[0]
    bert = st[0].auto_model
    nl = len(bert.encoder.layer)
    cache_path = cache_path or _hidden_cache_path(k)
    layers = torch.nn.ModuleList([copy.deepcopy(bert.encoder.layer[i]) for i in range(nl - k, nl)])
    for j, layer in enumerate(layers):
        layer.load_state_dict({name: state[f"{nl - k + j}.{name}"] for name in layer.state_dict()})
    layers.eval()

    def embed(more_texts):
        hh = _hidden_cache(st, more_texts, k, cache_path)
        out = np.zeros((len(hh), 384), dtype=np.float32)
        order = np.argsort([h.shape[0] for h in hh])
        with torch.inference_mode():
            for s in range(0, len(hh), 64):
                idx = order[s:s + 64]
                out[idx] = _top_forward(layers, [hh[i] for i in idx]).numpy()
        return out

    return embed


def save_tuned_layers(out, state):
    """Write fine-tuned layers as ``out/layers.npz`` (float16, ``<layer>.<parameter>``; what
    ``DefaultClassifier`` loads); ``state`` None removes a stale file."""
    out = Path(out)
    if state is not None:
        np.savez_compressed(out / "layers.npz", **{k: v.numpy().astype(np.float16) for k, v in sorted(state.items())})
    elif (out / "layers.npz").exists():
        (out / "layers.npz").unlink()
