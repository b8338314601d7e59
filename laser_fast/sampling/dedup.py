"""Duplicates before scoring (issue 19, first slice): records whose conversation repeats an
earlier one are left out of scoring and selection, each naming the copy it repeats.

Modes (``--dedup``, config ``dedup``):

* ``exact``: the same conversation, role by role and character by character (the default);
* ``normalized``: the same after Unicode NFKC, lower case, punctuation and symbols removed and
  whitespace runs collapsed (``"Hello,  World!"`` repeats ``"hello world"``);
* ``instruction``: the same user turns after that normalisation (the answers may differ);
* ``none``: nothing is removed.

The first copy in input order is kept (a record's ``duplicate_of`` names its ``data_id``): the
copies are found before any model runs, so none is scored twice. Keys are two 64-bit hashes of
the text computed in polars (column-wise, no Python object per record); two different texts
share both with a probability of about 2^-128 per pair.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl

from laser_fast.config import DEDUP_MODES  # noqa: F401 - the modes, importable from here
from laser_fast.runtime.stage import Resources, StageResult, StageSpec, StageStats


def _normalized(e: pl.Expr) -> pl.Expr:
    return (e.str.normalize("NFKC").str.to_lowercase().str.replace_all(r"[\p{P}\p{S}]+", "")
            .str.replace_all(r"\s+", " ").str.strip_chars())


def dedup_keys(records: pl.DataFrame, mode: str) -> pl.DataFrame:
    """Two 64-bit hashes per record of what ``mode`` compares (columns ``k1``, ``k2``)."""
    msgs = pl.col("messages")
    if mode == "exact":  # the list of (role, content) structs hashed as it is
        return records.select(msgs.hash(seed=1).alias("k1"), msgs.hash(seed=2).alias("k2"))
    if mode == "normalized":
        text = msgs.list.eval(pl.element().struct.field("role") + "\x1f" + _normalized(pl.element().struct.field("content"))).list.join("\x1e")
    elif mode == "instruction":
        text = pl.col("user_turns").list.eval(_normalized(pl.element())).list.join("\x1e")
    else:
        raise ValueError(f"unknown dedup mode {mode!r}")
    return records.select(text.hash(seed=1).alias("k1"), text.hash(seed=2).alias("k2"))


def find_duplicates(records: pl.DataFrame, mode: str) -> np.ndarray:
    """Per record, the ``data_id`` of the earlier copy it repeats (None for the first copy)."""
    n = records.height
    if mode == "none" or n == 0:
        return np.full(n, None, dtype=object)
    keys = dedup_keys(records, mode).with_columns(records["data_id"])
    res = keys.select(pl.col("data_id").first().over(["k1", "k2"]).alias("first"),
                      pl.struct("k1", "k2").is_first_distinct().alias("is_first"))
    out = np.asarray(res["first"].to_list(), dtype=object)
    out[res["is_first"].to_numpy()] = None
    return out


DEDUP = StageSpec("dedup", "laser_fast.sampling.dedup:dedup_stage", reads=("messages", "user_turns", "data_id"),
                  writes=("duplicate_of",), resources=Resources(num_cpus=1, row_wise=False))


def dedup_stage(records: pl.DataFrame, opts, *, workdir=None, columns: Mapping[str, np.ndarray] | None = None) -> StageResult:
    """``duplicate_of`` per record (see :func:`find_duplicates`); stats: the mode and how many
    copies were found per source file."""
    dup = find_duplicates(records, opts.dedup)
    is_dup = dup != None  # noqa: E711 - elementwise
    per_origin: dict[str, int] = {}
    if is_dup.any():
        origins = records["origin"].to_numpy()[is_dup]
        vals, cnt = np.unique(origins.astype(str), return_counts=True)
        per_origin = {str(v): int(c) for v, c in zip(vals, cnt)}
    return StageResult({"duplicate_of": dup}, StageStats("dedup", mode=opts.dedup, duplicates=int(is_dup.sum()), per_origin=per_origin))
