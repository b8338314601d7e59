"""Selection of one stratum (a category, or a category of one source) on an engine's worker.

Only what the stratum's selection reads travels: preference, token lengths when the budget is in
tokens, and the float16 embeddings of its rows (their bits, as uint16: the worker sees the same
float16 values). The worker runs :func:`select_stratum`, the
same k-means / greedy code as the local loop, and sends back per row its rank in the selection
order, how it was chosen and its cluster; records are joined back by row on the driver. One
stratum is one unit, so the strata run in parallel on as many workers (a GPU each when the
cluster has GPUs, for the torch k-means).
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import polars as pl

from laser_fast.runtime.engine import UnitTask
from laser_fast.runtime.stage import Resources


class StratumTask(UnitTask):
    """:func:`~laser_fast.sampling.stratum.select_stratum` over one stratum per unit."""

    label = "select"

    def __init__(self, opts, unit_tokens: bool):
        self.opts, self.unit_tokens = opts, bool(unit_tokens)
        self.resources = Resources(num_cpus=1, num_gpus=1.0, row_wise=False)
        # a GPU for torch's k-means (its auto device), and for faiss when a CUDA device is named (a faiss
        # GPU build); faiss on auto runs on the CPU actor, which sees no GPU on a cluster with some
        dev = str(opts.device or "")
        self.uses_gpu = not dev.startswith("cpu") and (opts.kmeans_backend != "faiss" or dev.startswith("cuda"))

    def run(self, unit: pl.DataFrame) -> dict[str, np.ndarray]:
        from laser_fast.sampling.stratum import select_stratum

        o = self.opts
        n = unit.height
        emb = np.ascontiguousarray(unit["emb"].to_numpy()).astype(np.uint16, copy=False).view(np.float16)
        target = int(unit["_target"][0])
        lengths = unit["length"].to_numpy() if self.unit_tokens else None
        loc, by, labels, st = select_stratum(lambda: emb, unit["pref"].to_numpy(), target, mode=o.mode, strategy=o.strategy, opts=o,
                                             lengths=lengths, min_distance=o.min_distance)
        rank = np.full(n, -1, dtype=np.int64)
        rank[loc] = np.arange(loc.size)
        by_row = np.full(n, None, dtype=object)
        by_row[loc] = by
        stats = np.full(n, None, dtype=object)
        stats[0] = json.dumps(st, default=_plain)
        return {"rank": rank, "by": by_row, "label": np.asarray(labels, dtype=np.int64), "stats": stats}


def _plain(v: Any):
    return v.item() if isinstance(v, np.generic) else str(v)


def stratum_unit(rows: np.ndarray, pref: np.ndarray, length: np.ndarray, target: int, emb, unit_tokens: bool) -> pl.DataFrame:
    """The unit of one stratum (``emb``: its rows' float16 vectors, any array-like)."""
    e = np.ascontiguousarray(np.asarray(emb, dtype=np.float16)).view(np.uint16)
    cols = {"pref": pref[rows], "_target": np.full(rows.size, int(target), dtype=np.int64),
            "emb": pl.Series("emb", e, dtype=pl.Array(pl.UInt16, e.shape[1]))}
    if unit_tokens:
        cols["length"] = length[rows]
    return pl.DataFrame(cols)


def unpack(part: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """``(chosen local rows in selection order, selected_by of each, cluster per row, stats)``."""
    rank = np.asarray(part["rank"])
    chosen = np.flatnonzero(rank >= 0)
    chosen = chosen[np.argsort(rank[chosen], kind="stable")]
    by = np.asarray(part["by"], dtype=object)[chosen]
    return chosen, by, np.asarray(part["label"], dtype=np.int64), json.loads(part["stats"][0])
