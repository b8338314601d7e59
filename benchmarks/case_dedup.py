"""Benchmark case ``dedup``: duplicate detection before scoring (:mod:`laser_fast.sampling.dedup`)
against a plain Python dict/set over the same keys, on the same records, in one run.

Records: the 32,199 AlpacaEval conversations of ``../shared/data/alpaca_eval_pool.jsonl.gz``
(real texts), repeated up to N rows: every repetition after the first gets a suffix that makes it
unique, then 10% of the rows are replaced by exact copies of earlier rows and 5% by copies
re-cased, re-spaced and re-punctuated (normalised duplicates). ``--quick``: 100,000 rows; full:
1,000,000 (``LASER_BENCH_DEDUP_ROWS=N`` overrides). Each mode's result must equal the baseline's
(``agree``), and the planted copies must all be found.

``near`` (MinHash-LSH, threshold 0.8) runs on the first ``LASER_BENCH_DEDUP_NEAR_ROWS`` rows
(default 20,000 quick, 100,000 full) beside datasketch's ``MinHashLSH`` with the same 128
permutations, 5-word shingles and threshold, when datasketch is installed (``pip install
datasketch``); ``agree`` there is the share of records both call copies or both keep, and
``normalized_found`` the share of the planted normalised copies each finds.
"""
from __future__ import annotations

import itertools
import json
import os
import time
import unicodedata
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT.parent / "shared" / "data" / "alpaca_eval_pool.jsonl.gz"


def _pool(n: int, seed: int = 0) -> tuple[pl.DataFrame, int, int]:
    from benchmarks.data import repeated_alpaca

    rng = np.random.default_rng(seed)
    ins, out = repeated_alpaca(n)
    exact = rng.choice(np.arange(1, n), size=n // 10, replace=False)
    for i in exact:
        j = int(rng.integers(0, i))
        ins[i], out[i] = ins[j], out[j]
    rest = np.setdiff1d(np.arange(1, n), exact)
    normal = rng.choice(rest, size=n // 20, replace=False)
    for i in normal:
        j = int(rng.integers(0, i))
        ins[i], out[i] = "  " + ins[j].upper().replace(" ", "   ") + " !!", out[j].upper() + "."
    msgs = [[{"role": "user", "content": a}, {"role": "assistant", "content": b}] for a, b in zip(ins, out)]
    df = pl.DataFrame({"data_id": [f"r{i}" for i in range(n)], "messages": msgs, "user_turns": [[a] for a in ins]})
    return df, len(exact), len(normal)


def _norm(t: str) -> str:
    """As :func:`laser_fast.sampling.dedup._normalized`: NFKC, lower case, punctuation and symbols
    dropped, whitespace runs collapsed."""
    t = unicodedata.normalize("NFKC", t).lower()
    return " ".join("".join(c for c in t if unicodedata.category(c)[0] not in "PS").split())


def _python(df: pl.DataFrame, mode: str) -> np.ndarray:
    """The baseline: a dict from each record's key to the first data_id, in a Python loop."""
    first: dict = {}
    out = np.full(df.height, None, dtype=object)
    for i, (did, msgs, users) in enumerate(zip(df["data_id"].to_list(), df["messages"].to_list(), df["user_turns"].to_list())):
        if mode == "exact":
            key = "\x1e".join(m["role"] + "\x1f" + m["content"] for m in msgs)
        elif mode == "normalized":
            key = "\x1e".join(m["role"] + "\x1f" + _norm(m["content"]) for m in msgs)
        else:
            key = "\x1e".join(_norm(u) for u in users)
        j = first.setdefault(key, did)
        if j != did:
            out[i] = j
    return out


def _datasketch(df: pl.DataFrame, threshold: float) -> np.ndarray:
    """datasketch's MinHash + MinHashLSH over the same shingles: a record is a copy when the LSH
    index already holds a record it matches (inserted in input order)."""
    from datasketch import MinHash, MinHashLSH

    from laser_fast.sampling.dedup import _shingles

    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    out = np.full(df.height, False)
    for s in range(0, df.height, 20_000):  # the same shingles as ours, built a chunk at a time
        rows, hashes = _shingles(df.slice(s, 20_000), 5)
        starts = np.r_[0, np.flatnonzero(rows[1:] != rows[:-1]) + 1, rows.size]
        for a, b in itertools.pairwise(starts):
            m = MinHash(num_perm=128, seed=1)
            m.update_batch([int(h).to_bytes(8, "little") for h in hashes[a:b]])
            key = s + int(rows[a])
            if lsh.query(m):
                out[key] = True
            lsh.insert(key, m)
    return out


def run(quick: bool) -> list[dict]:
    from laser_fast.sampling.dedup import find_duplicates

    if not POOL.exists():
        print(f"dedup: {POOL} not present, skipped", flush=True)
        return []
    n = int(os.environ.get("LASER_BENCH_DEDUP_ROWS") or (100_000 if quick else 1_000_000))
    modes = [m for m in (os.environ.get("LASER_BENCH_DEDUP_MODES") or "exact,normalized,instruction,near").split(",") if m]
    df, n_exact, n_norm = _pool(n)
    rows = []
    for mode in [m for m in ("exact", "normalized", "instruction") if m in modes]:
        t0 = time.perf_counter()
        ours = find_duplicates(df, mode)
        t1 = time.perf_counter()
        base = _python(df, mode)
        t2 = time.perf_counter()
        found = int(sum(x is not None for x in ours))
        row = {"case": "dedup", "rows": n, "mode": mode, "polars_s": round(t1 - t0, 2), "python_dict_s": round(t2 - t1, 2),
               "speedup": round((t2 - t1) / max(t1 - t0, 1e-9), 2), "duplicates": found, "planted_exact": n_exact,
               "planted_normalized": n_norm, "agree": bool((ours == base).all())}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if "near" not in modes:
        return rows
    m = min(n, int(os.environ.get("LASER_BENCH_DEDUP_NEAR_ROWS") or (20_000 if quick else 100_000)))
    sub = df.head(m)
    planted = find_duplicates(sub, "normalized") != None  # noqa: E711 - the normalised copies among them
    t0 = time.perf_counter()
    ours = find_duplicates(sub, "near") != None  # noqa: E711
    t1 = time.perf_counter()
    row = {"case": "dedup", "rows": m, "mode": "near", "polars_s": round(t1 - t0, 2), "duplicates": int(ours.sum()),
           "normalized_found": round(float(ours[planted].mean()), 4) if planted.any() else None}
    print(json.dumps({**row, "note": "ours done, datasketch running"}), flush=True)
    try:
        base = _datasketch(sub, 0.8)
        t2 = time.perf_counter()
        row.update(datasketch_s=round(t2 - t1, 2), speedup=round((t2 - t1) / max(t1 - t0, 1e-9), 2), datasketch_duplicates=int(base.sum()),
                   datasketch_normalized_found=round(float(base[planted].mean()), 4) if planted.any() else None,
                   agree=round(float((ours == base).mean()), 4))
    except ImportError:
        row["datasketch_s"] = None
    print(json.dumps(row), flush=True)
    rows.append(row)
    return rows
