"""The score cache: one folder per (scorer, fingerprint), append-only Parquet shards keyed by ``data_id``.

Layout (under the work directory)::

    scores/<scorer name>-<sha256(fingerprint)[:16]>/
        FINGERPRINT              the full fingerprint string (written once, atomically)
        part-<ns>-<pid>-<n>.parquet   data_id, content, <output columns>   (one shard per batch)

Every shard is written to a temporary name, flushed to disk and renamed, so a run killed with
SIGKILL leaves only whole shards behind: it loses at most the batch it was scoring. A changed
fingerprint (model, revision, prompt template, max length, code version) is a different folder,
so nothing stale is ever reused. Rows are matched on ``data_id`` *and* a hash of the content the
scorer reads (messages and category), so a work directory shared by datasets that reuse ids
never hands one record's score to another. When a folder holds many shards they are compacted
into one (the new shard is renamed into place before the old ones are removed; duplicates that a
crash could leave are harmless: the first row per key wins).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl

#: Compact a cache folder once it holds more shards than this.
COMPACT_AFTER = 64


def fingerprint_key(fingerprint: str) -> str:
    return hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:16]


def content_keys(records: pl.DataFrame, categories: Sequence | None = None) -> list[str]:
    """A short hash per record of what a scorer reads: the whole conversation and the category."""
    msgs = records["messages"].to_list()
    cats = [None] * records.height if categories is None else list(categories)
    out = []
    for conv, cat in zip(msgs, cats):
        h = hashlib.blake2b(digest_size=12)
        for m in conv:
            h.update(str(m["role"]).encode("utf-8"))
            h.update(b"\x1f")
            h.update(str(m["content"]).encode("utf-8"))
            h.update(b"\x1e")
        h.update(b"\x1d" + str(cat).encode("utf-8"))
        out.append(h.hexdigest())
    return out


class ScoreCache:
    """Cached scores of one scorer under one fingerprint.

    Args:
        root: the work directory (the cache lives in ``root/scores``).
        name: the scorer's name.
        fingerprint: the scorer's fingerprint.
        outputs: the scorer's output columns.
    """

    def __init__(self, root: str | Path, name: str, fingerprint: str, outputs: Sequence[str]):
        self.name = name
        self.fingerprint = fingerprint
        self.outputs = tuple(outputs)
        self.dir = Path(root) / "scores" / f"{name}-{fingerprint_key(fingerprint)}"
        self._seq = 0

    def _ensure_dir(self) -> None:
        if (self.dir / "FINGERPRINT").exists():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".FINGERPRINT.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"name": self.name, "fingerprint": self.fingerprint, "outputs": list(self.outputs)}, indent=1) + "\n")
        os.replace(tmp, self.dir / "FINGERPRINT")

    def shards(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.glob("part-*.parquet"))

    def load(self) -> pl.DataFrame:
        """All cached rows (``data_id``, ``content`` and the outputs), first row per key."""
        schema = {"data_id": pl.Utf8, "content": pl.Utf8, **{o: pl.Float64 for o in self.outputs}}
        parts = self.shards()
        if not parts:
            return pl.DataFrame(schema=schema)
        frames = []
        for p in parts:
            try:
                f = pl.read_parquet(p)
            except Exception:  # a torn file cannot exist (rename is atomic), but never trust a disk blindly
                continue
            frames.append(f.select([pl.col(c).cast(t) if c in f.columns else pl.lit(None, dtype=t).alias(c) for c, t in schema.items()]))
        if not frames:
            return pl.DataFrame(schema=schema)
        return pl.concat(frames).unique(subset=["data_id", "content"], keep="first", maintain_order=True)

    def lookup(self, data_ids: Sequence[str], content: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(found mask, {output: values})`` for the given keys (NaN where not found)."""
        n = len(data_ids)
        found = np.zeros(n, dtype=bool)
        vals = {o: np.full(n, np.nan) for o in self.outputs}
        cached = self.load()
        if cached.height == 0 or n == 0:
            return found, vals
        want = pl.DataFrame({"data_id": list(data_ids), "content": list(content), "_i": np.arange(n)})
        hit = want.join(cached, on=["data_id", "content"], how="inner")
        idx = hit["_i"].to_numpy()
        found[idx] = True
        for o in self.outputs:
            vals[o][idx] = hit[o].to_numpy().astype(np.float64)
        return found, vals

    def append(self, data_ids: Sequence[str], content: Sequence[str], values: dict[str, np.ndarray]) -> Path:
        """Write one shard atomically (temp file, fsync, rename)."""
        self._ensure_dir()
        cols = {"data_id": pl.Series("data_id", list(data_ids), dtype=pl.Utf8),
                "content": pl.Series("content", list(content), dtype=pl.Utf8)}
        for o in self.outputs:
            v = np.asarray(values[o], dtype=np.float64)
            if v.shape != (len(data_ids),):
                raise ValueError(f"scorer {self.name}: output {o} has shape {v.shape}, expected ({len(data_ids)},)")
            cols[o] = pl.Series(o, v)
        self._seq += 1
        final = self.dir / f"part-{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.parquet"
        tmp = self.dir / f".{final.name}.tmp"
        pl.DataFrame(cols).write_parquet(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        return final

    def compact(self, force: bool = False) -> None:
        """Merge the shards into one when there are many (or when ``force``)."""
        parts = self.shards()
        if len(parts) < 2 or (len(parts) <= COMPACT_AFTER and not force):
            return
        merged = self.load()
        final = self.dir / f"part-{time.time_ns():020d}-{os.getpid()}-compact.parquet"
        tmp = self.dir / f".{final.name}.tmp"
        merged.write_parquet(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        for p in parts:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
