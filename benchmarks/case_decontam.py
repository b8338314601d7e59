"""Benchmark case ``decontam``: benchmark decontamination (:mod:`laser_fast.sampling.decontam`)
against a plain Python set of n-gram tuples, on the same records, in one run.

Benchmarks: the five evaluation sets in ``../shared/data`` that the tests use (GSM8K test,
HumanEval, Vicuna, Koala, Self-Instruct user-oriented: 1,995 items), 13-word n-grams.
Records: the 32,199 AlpacaEval conversations of ``../shared/data/alpaca_eval_pool.jsonl.gz``
repeated up to N rows (each repetition after the first gets a suffix), and one record in 1,000
replaced by a GSM8K question or HumanEval prompt embedded in a longer instruction. ``--quick``:
100,000 rows; full: 1,000,000 (``LASER_BENCH_DECONTAM_ROWS=N``). The Python baseline (each
text normalised with ``unicodedata`` and a regex, its n-grams looked up one by one) runs on the
first ``LASER_BENCH_DECONTAM_BASELINE_ROWS`` rows (default 20,000 quick, 100,000 full) beside
ours on the same rows; ours then runs alone on all N. Both must flag the same records (``agree``)
and every planted item (``planted_found``).
"""
from __future__ import annotations

import json
import os
import re
import time
import unicodedata
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
POOL = DATA / "alpaca_eval_pool.jsonl.gz"
FILES = ("gsm8k_test.jsonl", "humaneval.jsonl", "vicuna_bench.jsonl", "koala_test_set.jsonl", "self_instruct_user_oriented.jsonl")


def _pool(n: int) -> tuple[list[str], list[str], np.ndarray]:
    from benchmarks.data import repeated_alpaca

    items = [json.loads(x)["instruction"] for x in (DATA / "gsm8k_test.jsonl").read_text().splitlines()]
    items += [json.loads(x)["instruction"] for x in (DATA / "humaneval.jsonl").read_text().splitlines()]
    ins, out = repeated_alpaca(n)
    planted = np.arange(500, n, 1000)
    for j, i in enumerate(planted):
        ins[i] = f"Please help me with this one, thanks.\n\n{items[j % len(items)]}\n\nShow every step."
    return ins, out, planted


_PUNCT = re.compile(r"[^\w\s]")


def _norm_words(t: str) -> list[str]:
    """NFKC, lower case, punctuation and symbols dropped, split on whitespace (ours, in Python)."""
    t = unicodedata.normalize("NFKC", t).lower()
    if _PUNCT.search(t):
        t = "".join(c for c in t if unicodedata.category(c)[0] not in "PS")
    return t.split()


def _python(paths: list[Path], ins: list[str], out: list[str], n_words: int = 13) -> np.ndarray:
    """The plain-Python way: a set of n-gram tuples from the benchmarks, then each record's
    n-grams looked up one by one (plus the exact normalised prompt match)."""
    grams: set[tuple[str, ...]] = set()
    prompts: set[str] = set()
    for p in paths:
        for line in p.read_text().splitlines():
            d = json.loads(line)
            for k, v in d.items():
                if not isinstance(v, str):
                    continue
                w = _norm_words(v)
                grams.update(tuple(w[i:i + n_words]) for i in range(len(w) - n_words + 1))
                if k in ("prompt", "instruction", "question", "problem", "input", "query", "text") and w:
                    prompts.add(" ".join(w))
    hit = np.zeros(len(ins), dtype=bool)
    for r, (a, b) in enumerate(zip(ins, out)):
        wa = _norm_words(a)
        if " ".join(wa) in prompts:
            hit[r] = True
            continue
        for w in (wa, _norm_words(b)):
            if any(tuple(w[i:i + n_words]) in grams for i in range(len(w) - n_words + 1)):
                hit[r] = True
                break
    return hit


def run(quick: bool) -> list[dict]:
    from laser_fast.sampling.decontam import Benchmarks

    paths = [DATA / f for f in FILES]
    if not POOL.exists() or not all(p.exists() for p in paths):
        print(f"decontam: {DATA} lacks the pool or a benchmark file, skipped", flush=True)
        return []
    n = int(os.environ.get("LASER_BENCH_DECONTAM_ROWS") or (100_000 if quick else 1_000_000))
    m = min(n, int(os.environ.get("LASER_BENCH_DECONTAM_BASELINE_ROWS") or (20_000 if quick else 100_000)))
    ins, out, planted = _pool(n)
    t0 = time.perf_counter()
    bench = Benchmarks([str(p) for p in paths])
    t_load = time.perf_counter() - t0
    n_grams = bench._grams.height
    rows = []
    t0 = time.perf_counter()
    ours_m = bench.match(pl.Series(ins[:m], dtype=pl.String), pl.Series(out[:m], dtype=pl.String)) != None
    t1 = time.perf_counter()
    base = _python(paths, ins[:m], out[:m])
    t2 = time.perf_counter()
    pm = planted[planted < m]
    row = {"case": "decontam", "rows": m, "benchmark_items": bench.items, "benchmark_ngrams": n_grams, "load_s": round(t_load, 2),
           # the baseline builds its n-gram set inside its timing: ours is counted with its load too
           "polars_s": round(t1 - t0, 2), "python_set_s": round(t2 - t1, 2), "speedup": round((t2 - t1) / max(t1 - t0 + t_load, 1e-9), 2),
           "flagged": int(ours_m.sum()), "planted": int(pm.size), "planted_found": bool(ours_m[pm].all()),
           "agree": bool((ours_m == base).all()), "python_flagged": int(base.sum())}
    print(json.dumps(row), flush=True)
    rows.append(row)
    if n > m:
        t0 = time.perf_counter()
        ours = bench.match(pl.Series(ins, dtype=pl.String), pl.Series(out, dtype=pl.String)) != None
        t1 = time.perf_counter()
        row = {"case": "decontam", "rows": n, "benchmark_items": bench.items, "benchmark_ngrams": n_grams, "load_s": round(t_load, 2),
               "polars_s": round(t1 - t0, 2), "records_per_s": round(n / max(t1 - t0, 1e-9)), "flagged": int(ours.sum()),
               "planted": int(planted.size), "planted_found": bool(ours[planted].all())}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows
