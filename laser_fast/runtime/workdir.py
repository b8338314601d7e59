"""The work directory: where caches live."""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import polars as pl

logger = logging.getLogger(__name__)


def default_workdir() -> str:
    return os.environ.get("LASER_FAST_WORKDIR") or str(Path.home() / ".cache" / "laser_fast")


def _iter_column(records: pl.DataFrame, name: str, chunk: int = 65536):
    """The values of one column, converted to Python 65,536 at a time (a million-row list of
    strings is a large transient)."""
    col = records[name]
    for s in range(0, col.len(), chunk):
        yield from col.slice(s, chunk).to_list()


def _hash_strings(parts: Iterable[str], prefix: str) -> str:
    from laser_fast.sampling.embed import text_hash

    h = hashlib.sha256(prefix.encode())
    for s in parts:
        h.update(text_hash(s))
    return h.hexdigest()[:32]


# --------------------------------------------------------------------------- ingest


def _cache_path(workdir: str, stage: str, key: str) -> Path:
    return Path(workdir) / "cache" / f"{stage}-{key}.npz"


def _cached_arrays(workdir: str, stage: str, key: str, compute) -> dict[str, np.ndarray]:
    """``compute()``'s arrays, from ``cache/<stage>-<key>.npz`` when a run stored them there
    (written to a temporary file and renamed)."""
    cp = _cache_path(workdir, stage, key)
    if cp.exists():
        z = np.load(cp)
        return {k: z[k] for k in z.files}
    out = compute()
    cp.parent.mkdir(parents=True, exist_ok=True)
    tmp = cp.with_name(cp.name + ".tmp.npz")
    np.savez(tmp, **out)
    os.replace(tmp, cp)
    return out


