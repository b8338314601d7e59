"""Benchmark case ``embed``: embedder batching and the float16 memmap store.

Batching (real texts from ``../shared/data/alpaca_eval_pool.jsonl.gz``: long responses, 55% of
them truncated at MiniLM's 256 tokens, and short instructions; the bundled all-MiniLM-L6-v2):

* ``exact_length``: :func:`laser_fast.sampling.embed.encode_texts` as the CPU runs it (ours, the
  default there) -- tokenized once, texts of one token length per forward, at least two rows, up
  to ``batch_tokens`` tokens: no padding, so a vector does not depend on the other texts;
* ``token_budget``: the same tokens sorted by count and packed up to ``batch_tokens`` padded
  tokens per forward (``exact=False``; the GPU default);
* ``naive_32``: consecutive runs of 32 texts in input order, no sorting (the model is called per
  run, so sentence-transformers' internal length sort cannot help);
* ``st_encode_64``: ``SentenceTransformer.encode(batch_size=64)`` on the whole list (sorts by
  character count, fixed 64 rows: what the store did before);
* ``one_per_forward``: one text per forward pass (the reference of the max-abs-diff column);
* ``*_bf16`` (CPUs with AMX / AVX512-BF16 only): the same in bfloat16 (``dtype="bfloat16"``), an
  opt-in that trades ~3e-3 per component for ~3x on such CPUs.

The full run interleaves the modes twice and keeps each one's best time; ``--quick`` runs once.
Torch uses its default thread count (``LASER_BENCH_TORCH_THREADS=N`` overrides it). On a machine
whose cores are busy with other work, multi-threaded forwards wait for descheduled threads at
every op, which slows the many small forwards of ``one_per_forward`` most and inflates the
ratios; the ``load_avg_1m_at_start`` column shows how busy the machine was.
On a GPU the model runs in float16 and the bf16 rows are left out.

Each row: records/s, forward passes, share of non-padding tokens, speedup over one per forward,
largest absolute difference of the unit vectors from one per forward.

Store (synthetic float16 unit vectors, d = 384, texts of realistic length): ``EmbeddingStore.put``
(rows/s, MB/s of float16 written), ``get`` from the shards (hash, index, reassemble into the
request's memmap: the cold path), ``get`` of the same request again (a single memmap open), a full
read of that memmap into float32 chunks, and ``get`` of a random half (a new request, reassembled).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _pool_texts(field: str, n: int, seed: int = 0) -> list[str] | None:
    """``n`` distinct texts of ``field`` ('output' or 'instruction') from the AlpacaEval pool."""
    from benchmarks.data import alpaca_pool_rows

    rows = alpaca_pool_rows()
    if rows is None:
        return None
    seen: dict[str, None] = {}
    for r in rows:
        t = r.get(field)
        if r.get("generator") != "NullModel" and t:
            seen.setdefault(t, None)
    texts = list(seen)
    pick = np.random.default_rng(seed).choice(len(texts), size=min(n, len(texts)), replace=False)
    return [texts[i] for i in pick]


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return f"cpu ({torch.get_num_threads()} torch threads, {os.cpu_count()} cpus)"


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _batching_rows(quick: bool) -> list[dict]:
    import torch

    from laser_fast.runtime.models import load_sentence_model
    from laser_fast.sampling.embed import DEFAULT_MAX_BATCH_SIZE, _Encoder, encode_texts

    sets = {"responses": ("output", 96 if quick else 512), "instructions": ("instruction", 192 if quick else 805)}
    m = load_sentence_model(None)
    models = {"default": m}
    bf16 = not torch.cuda.is_available() and _cpu_has_bf16()
    if bf16:
        models["bf16"] = load_sentence_model(None, "cpu", "bfloat16")
    threads = os.environ.get("LASER_BENCH_TORCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    enc = _Encoder(m, None, None)
    device = _device_name()
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    repeat = 1 if quick else 2  # full run: modes interleaved twice, best time kept (a shared machine is noisy)
    rows: list[dict] = []
    for label, (field, n) in sets.items():
        texts = _pool_texts(field, n)
        if texts is None:
            print("embed: ../shared/data/alpaca_eval_pool.jsonl.gz not found; batching rows skipped", flush=True)
            return rows
        for mm in models.values():
            encode_texts(mm, texts[:16])  # warm up outside the timings
        modes = [
            ("one_per_forward", {"max_batch_size": 1}, "default"),
            ("exact_length", {}, "default"),
            ("token_budget", {"exact": False}, "default"),
            ("naive_32", {"sort": False, "max_batch_size": 32}, "default"),
            ("st_encode_64", None, "default"),
        ]
        if not quick and label == "responses":
            modes += [(f"token_budget_{bt}", {"batch_tokens": bt, "exact": False}, "default") for bt in (8192, 32768)]
        if bf16:
            modes += [("one_per_forward_bf16", {"max_batch_size": 1}, "bf16"), ("token_budget_bf16", {"exact": False}, "bf16")]
        res: dict[str, tuple[np.ndarray, float, dict]] = {}
        for _ in range(repeat):
            for mode, kw, which in modes:
                mm = models[which]
                t0 = time.perf_counter()
                if kw is None:
                    v = mm.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
                    dt = time.perf_counter() - t0
                    # its padding, replayed: sorted by characters (longest first), runs of 64
                    _ids, off = enc.tokenize(texts)
                    lens = off[1:] - off[:-1]
                    order = np.argsort([-len(t) for t in texts], kind="stable")
                    runs = [lens[order[s:s + 64]] for s in range(0, len(texts), 64)]
                    st = {"forward_passes": len(runs), "tokens": int(lens.sum()), "padded_tokens": int(sum(r.size * r.max() for r in runs))}
                    st["non_padding"] = round(st["tokens"] / st["padded_tokens"], 4)
                else:
                    v, st = encode_texts(mm, texts, **kw)
                    dt = time.perf_counter() - t0
                if mode not in res or dt < res[mode][1]:
                    res[mode] = (np.asarray(v, dtype=np.float32), dt, st)
        ref, t_one, _ = res["one_per_forward"]
        for mode, kw, which in modes:
            v, dt, st = res[mode]
            row = {
                "case": "embed", "texts": label, "n": len(texts), "mode": mode, "device": device,
                "dtype": str(next(models[which].parameters()).dtype).replace("torch.", ""),
                "batch_tokens": (kw or {}).get("batch_tokens", _Encoder(models[which], None, None).batch_tokens)
                if mode.startswith(("token_budget", "exact_length")) else None,
                "max_batch_size": 1 if mode.startswith("one_per_forward") else {"naive_32": 32, "st_encode_64": 64}.get(mode, DEFAULT_MAX_BATCH_SIZE),
                "seconds": round(dt, 3), "records_per_s": round(len(texts) / dt, 1),
                "forward_passes": int(st["forward_passes"]), "mean_tokens": round(st["tokens"] / len(texts), 1),
                "non_padding": st["non_padding"], "speedup_vs_one_per_forward": round(t_one / dt, 2),
                "max_abs_diff_vs_one": float(np.abs(v - ref).max()), "load_avg_1m_at_start": load,
            }
            if which == "bf16":
                row["speedup_vs_one_per_forward_bf16"] = round(res["one_per_forward_bf16"][1] / dt, 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _store_rows(quick: bool) -> list[dict]:
    import laser_fast.runtime.models as E
    from laser_fast.sampling.store import EmbeddingStore
    from laser_fast.sampling.store_index import INDEX_CACHE

    n, d = (50_000 if quick else 200_000), 384
    rng = np.random.default_rng(0)
    base = "".join(chr(97 + c) for c in rng.integers(0, 26, 4000))
    lens = rng.integers(40, 2000, n)  # ~1 KB per text on average, like the pool's responses
    texts = [f"{i}: {base[:k]}" for i, k in enumerate(lens)]
    v = rng.standard_normal((n, d), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v = v.astype(np.float16)
    mb = v.nbytes / 2**20
    rows: list[dict] = []

    def no_model(*a, **k):  # every get below must be served from the store
        raise RuntimeError("the store benchmark must not load a model")

    saved = E.load_sentence_model
    E.load_sentence_model = no_model
    try:
        with tempfile.TemporaryDirectory(prefix="laser-embed-bench-") as td:
            store = EmbeddingStore(td)
            t0 = time.perf_counter()
            info = store.put(texts, v)
            t_put = time.perf_counter() - t0
            ns = store._namespace(E.DEFAULT_EMBEDDING_MODEL, "response")
            INDEX_CACHE.clear()  # what a new process pays
            t0 = time.perf_counter()
            store._index(ns)
            t_index = time.perf_counter() - t0
            t0 = time.perf_counter()
            _a, ginfo = store.get(texts)
            t_cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            a2, ginfo2 = store.get(texts)
            t_warm = time.perf_counter() - t0
            t0 = time.perf_counter()
            s = 0.0
            for c in range(0, n, 65536):
                s += float(np.asarray(a2[c:c + 65536], dtype=np.float32)[:, 0].sum())
            t_read = time.perf_counter() - t0
            equal = bool(np.array_equal(np.asarray(a2), v))
            half = np.sort(rng.choice(n, n // 2, replace=False))
            sub = [texts[i] for i in half]
            t0 = time.perf_counter()
            b, _ = store.get(sub)
            t_sub = time.perf_counter() - t0
            sub_equal = bool(np.array_equal(np.asarray(b), v[half]))
            row = {
                "case": "embed_store", "n": n, "d": d, "float16_mb": round(mb, 1), "shards": info["shards"],
                "put_s": round(t_put, 3), "put_rows_per_s": round(n / t_put), "put_mb_per_s": round(mb / t_put, 1),
                "index_s": round(t_index, 3),
                "get_cold_s": round(t_cold, 3), "get_cold_rows_per_s": round(n / t_cold), "assemble_s": ginfo["assemble_seconds"],
                "get_cached_s": round(t_warm, 3), "cached_hit": bool(ginfo2["cache_hit"]),
                "read_f32_s": round(t_read, 3), "read_mb_per_s": round(mb / t_read, 1),
                "get_half_s": round(t_sub, 3), "round_trip_equal": equal and sub_equal,
                "note": "float16 in = float16 out (unit rows); timings include hashing the texts (sha1)",
            }
    finally:
        E.load_sentence_model = saved
    rows.append(row)
    print(json.dumps(row), flush=True)
    return rows


def _lookup_rows(quick: bool) -> list[dict]:
    """A scorer's pattern over a store that already holds ``n`` texts in shards of 4,096: chunks
    of 2,048 new texts, each looked up (``stored``) and then stored (``put``, which looks them up
    again), as the classifier's ``embed`` does. Side by side: the process's index cache (only new
    shards are read) and the index rebuilt for every request (every shard's digests read,
    checked and sorted again: what each request cost before the cache; the cache is cleared
    before each call)."""
    from laser_fast.sampling.store import EmbeddingStore
    from laser_fast.sampling.store_index import INDEX_CACHE

    n, chunks, d = (200_000 if quick else 1_000_000), 20, 8  # narrow vectors: the lookup does not read them
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="laser-lookup-bench-") as td:
        store = EmbeddingStore(td)
        for s0 in range(0, n, 65536):
            m = min(n, s0 + 65536) - s0
            store.put([f"stored {i}" for i in range(s0, s0 + m)], rng.standard_normal((m, d), dtype=np.float32), chunk_rows=4096)
        shards = (n + 4095) // 4096
        res = {}
        for mode in ("rebuilt_per_request", "process_cache"):
            INDEX_CACHE.clear()
            store.stored(["warm-up"])  # both modes start from a built index
            t_look = t_put = 0.0
            for c in range(chunks):
                texts = [f"{mode} chunk {c} text {i}" for i in range(2048)]
                if mode == "rebuilt_per_request":
                    INDEX_CACHE.clear()
                t0 = time.perf_counter()
                have = store.stored(texts)
                t1 = time.perf_counter()
                if mode == "rebuilt_per_request":
                    INDEX_CACHE.clear()
                store.put(texts, rng.standard_normal((len(texts), d), dtype=np.float32), chunk_rows=4096)
                t2 = time.perf_counter()
                t_look += t1 - t0
                t_put += t2 - t1
                assert not have.any()
            res[mode] = (t_look, t_put)
            row = {"case": "embed_store_lookup", "stored_texts": n, "shards_at_start": shards, "chunks": chunks, "chunk_texts": 2048,
                   "mode": mode, "lookup_ms": round(1000 * t_look / chunks, 1), "put_ms": round(1000 * t_put / chunks, 1),
                   "seconds": round(t_look + t_put, 3)}
            if mode == "process_cache":
                old = res["rebuilt_per_request"]
                row["speedup_vs_rebuilt"] = round(sum(old) / (t_look + t_put), 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def run(quick: bool) -> list[dict]:
    """Batching rows (per text set and mode), one store row and the lookup rows; printed as JSON
    lines as they come."""
    return _batching_rows(quick) + _store_rows(quick) + _lookup_rows(quick)


if __name__ == "__main__":  # pragma: no cover - manual use
    import sys

    run("--quick" in sys.argv)
