"""The model scorers on real AlpacaEval responses: token-budget batching vs one sample per forward."""
from __future__ import annotations

import json

import numpy as np

from benchmarks.common import timed


def _pool_sample(n: int, seed: int = 0):
    """``n`` real (instruction, response) records from the shared AlpacaEval pool, as an ingested table."""

    import polars as pl

    from benchmarks.data import alpaca_pool_rows
    from laser_fast.io.ingest import records_from_frame

    pool = alpaca_pool_rows()
    if pool is None:
        return None
    rows = [{"instruction": r["instruction"], "output": r["output"]} for r in pool if r.get("generator") != "NullModel" and r.get("output")]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
    recs, _ = records_from_frame(pl.DataFrame([rows[i] for i in sorted(pick)]), origin="alpaca_eval_pool")
    return recs.with_columns(pl.lit("Generation").alias("category"))


def run(quick: bool) -> list[dict]:
    import torch

    from laser_fast.metrics import ScorerSettings, build_scorer

    n = 96 if quick else 192
    recs = _pool_sample(n)
    if recs is None:
        print("scorers: ../shared/data/alpaca_eval_pool.jsonl.gz not found; case skipped", flush=True)
        return []
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for name in ("ifd", "lite_quality"):
        res = {}
        for mode in ("batched", "one_per_forward"):
            sc = build_scorer(name, ScorerSettings(device=device))
            if mode == "one_per_forward":
                if not hasattr(sc, "max_batch_size"):
                    break
                sc.max_batch_size = 1
            sc.score(recs[:2])  # load the model and warm up outside the timing
            if hasattr(sc, "stats"):
                for k in list(sc.stats):
                    sc.stats[k] = type(sc.stats[k])(0)
            out, t = timed(sc.score, recs)
            st = dict(getattr(sc, "stats", {}) or {})
            res[mode] = (out, t, st)
        if "batched" not in res:
            continue
        out_b, t_b, st_b = res["batched"]
        row = {"case": "scorers", "scorer": name, "records": recs.height, "device": device,
               "batched_rec_s": round(recs.height / t_b, 2),
               "batched_non_padding": round(st_b["tokens"] / st_b["padded_tokens"], 3) if st_b.get("padded_tokens") else None}
        if "one_per_forward" in res:
            out_1, t_1, _ = res["one_per_forward"]
            key = sc.outputs[0]
            row.update(one_per_forward_rec_s=round(recs.height / t_1, 2), speedup=round(t_1 / t_b, 1),
                       max_abs_diff=float(np.nanmax(np.abs(out_b[key] - out_1[key]))))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


