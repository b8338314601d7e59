"""The pool table with every decision (``decisions.parquet``) and the run manifest.

:func:`pool_table` joins the record table with what every stage decided for each pool row
(category, scores, preference, status, cluster, how it was selected); :func:`run_manifest`
describes the run (inputs, options, counts, targets, per-stage stats, devices, versions).
"""
from __future__ import annotations

import platform
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl

from laser_fast._version import __version__
from laser_fast.metrics import SCORE_COLUMNS


def pool_table(records: pl.DataFrame, row_map: np.ndarray, columns: Mapping[str, Any]) -> pl.DataFrame:
    """One row per pool row (a record, or a copy of it when its source is oversampled).

    Args:
        records: the record table.
        row_map: pool row -> record row.
        columns: name -> a function returning that column over the pool rows (called one at a
            time, so float arrays are shared with polars instead of copied where they can be).
            A ``cluster`` column with -1 for "none" becomes null.

    Returns:
        The record columns (without the internal ``_source_index``) followed by ``columns``.
    """
    keep = [c for c in records.columns if c != "_source_index"]
    pool = records.select(keep)[row_map.tolist()] if row_map.size != records.height else records.select(keep)
    pool = pool.with_columns([pl.Series(k, make()) for k, make in columns.items()])
    if "cluster" in columns:
        pool = pool.with_columns(pl.when(pl.col("cluster") < 0).then(None).otherwise(pl.col("cluster")).alias("cluster"))
    return pool


def decision_columns(*, n_records: int, row_map: np.ndarray, copy: np.ndarray, cats: np.ndarray, conf: np.ndarray, english: np.ndarray,
                     pref: np.ndarray, status: np.ndarray, selected_by: np.ndarray, cluster: np.ndarray, metrics: Mapping[str, np.ndarray],
                     raw: Mapping[str, np.ndarray], scaled: Mapping[str, np.ndarray], language: np.ndarray | None = None,
                     duplicate_of: np.ndarray | None = None, contaminated_by: np.ndarray | None = None) -> dict[str, Any]:
    """The decision columns of :func:`pool_table` (record-level arrays are mapped to pool rows;
    score columns in :data:`laser_fast.metrics.SCORE_COLUMNS` order, metrics before raw scorer
    outputs of the same name, then the ``*_scaled`` metrics)."""
    ident = row_map.size == n_records

    def per_row(a: np.ndarray) -> np.ndarray:
        return a if ident else a[row_map]

    cols: dict[str, Any] = {
        "copy": lambda: copy,
        "category": lambda: pl.Series(cats.tolist(), dtype=pl.Utf8),
        "category_confidence": lambda: per_row(conf),
        "is_english": lambda: per_row(english),
        **{name: (lambda a=a: pl.Series(per_row(np.asarray(a, dtype=object)).tolist(), dtype=pl.Utf8))  # None stays null
           for name, a in (("language", language), ("duplicate_of", duplicate_of), ("contaminated_by", contaminated_by)) if a is not None},
        "preference": lambda: pref,
        "status": lambda: pl.Series(status.tolist(), dtype=pl.Utf8),
        "selected_by": lambda: pl.Series(selected_by.tolist(), dtype=pl.Utf8),
        "cluster": lambda: np.where(cluster >= 0, cluster, -1),
    }
    for m in SCORE_COLUMNS:
        if m in metrics:
            cols[m] = lambda m=m: per_row(metrics[m])
        elif m in raw:
            cols[m] = lambda m=m: per_row(raw[m])
    for m in raw:  # preference units: the quality of both answers (see laser_fast.io.pairs)
        if m.startswith(("chosen_", "rejected_")):
            cols[m] = lambda m=m: per_row(raw[m])
    for m in scaled:
        cols[f"{m}_scaled"] = lambda m=m: per_row(scaled[m])
    return cols


def category_counts(cats: np.ndarray, mask: np.ndarray) -> dict[str, int]:
    """Records per category among ``mask``."""
    vals, cnt = np.unique(cats[mask].astype(str), return_counts=True)
    return {str(a): int(b) for a, b in zip(vals, cnt)}


def versions() -> dict:
    """Python, platform and the versions of the libraries that decide the results."""
    import importlib.metadata as md

    from laser_fast.runtime.devices import faiss_distributions

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("numpy", "polars", "torch", "transformers", "sentence-transformers", "numba"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    out.update(faiss_distributions())  # faiss-cpu, or the one CUDA build (two: a broken install)
    return out


def kmeans_device_used(strata_stats: Mapping[str, Any], planned: str | None = None) -> str | list[str] | None:
    """The device k-means really ran on, from the strata's stats (``kmeans_device``:
    ``"torch:cuda"``, ``"faiss:cpu"``, ``"faiss:cuda (N GPUs)"``): one value, or the sorted
    values when strata differ. ``planned`` (None when the mode runs no k-means) when no stratum
    ran k-means: then ``"not run (no stratum needed k-means)"``."""
    used = sorted({str(st["kmeans_device"]) for st in strata_stats.values() if isinstance(st, Mapping) and st.get("kmeans_device")})
    if used:
        return used[0] if len(used) == 1 else used
    return None if planned is None else "not run (no stratum needed k-means)"


def run_manifest(*, opts, inputs: list[dict], skipped: list[dict], score_files: list, plan, cats: np.ndarray, status: np.ndarray,
                 eligible: np.ndarray, n_selected: int, strata_stats: dict, embedding: dict, devices: dict, stages: Mapping[str, Any], timer) -> dict:
    """The run's ``manifest.json`` content (before the outputs are written); ``eligible`` marks the
    pool rows that were candidates when sampling started."""
    return {
        "laser_fast": __version__,
        "name": opts.name,
        "seed": opts.seed,
        "options": opts.to_dict(),
        "inputs": inputs,
        "skipped_invalid": {"count": len(skipped), "records": skipped},
        "score_sources": score_files,
        "budget": {"unit": "tokens" if plan.unit_tokens else "records", "value": plan.budget},
        "proportions": plan.proportions,
        "targets": plan.targets,
        "redistribution": plan.moves,
        "counts": {
            "pool": category_counts(cats, np.ones(status.size, dtype=bool)),
            "duplicate_excluded": category_counts(cats, status == "duplicate"),
            "contaminated_excluded": category_counts(cats, status == "contaminated"),
            "non_english_excluded": category_counts(cats, status == "non_english"),
            "too_long_excluded": category_counts(cats, status == "too_long"),
            "not_scored_excluded": category_counts(cats, status == "not_scored"),
            "source_limit_excluded": category_counts(cats, status == "source_limit"),
            "eligible": category_counts(cats, eligible),
            "selected": category_counts(cats, status == "selected"),
            "total_pool": int(status.size),
            "total_selected": int(n_selected),
        },
        "strata": strata_stats,
        "embedding": embedding or None,
        "devices": {**devices, "kmeans": kmeans_device_used(strata_stats, devices.get("kmeans"))} if "kmeans" in devices else devices,
        "versions": versions(),
        **dict(stages),
        "timings_seconds": timer.t,
        "peak_rss_mb_after_stage": timer.peak_mb,
    }

