"""The score cache: one folder per (scorer, fingerprint), append-only Parquet shards keyed by ``data_id``.

Layout (under the work directory, see :mod:`laser_fast.runtime.workdir`)::

    scores/<scorer name>-<sha256(layout + fingerprint)[:16]>/
        FINGERPRINT                               the full fingerprint (written once, atomically)
        part-<ns>-<host>-<pid>-<rand>.parquet     data_id, content, <output columns>  (one shard per batch)
        part-<...>.parquet.meta.json              its integrity record (size, checksum)

Every shard is written through :meth:`WorkDir.atomic` (unique temporary name, fsync, rename,
integrity record), so a run killed with SIGKILL leaves only whole shards behind: it loses at most
the batch it was scoring. Shard names are unique per process, so runs sharing the folder never
collide. A changed fingerprint (model, revision, prompt template, max length, code version) or
layout is a different folder, so nothing stale is ever reused. Rows are matched on ``data_id``
*and* a hash of the content the scorer reads (messages and category), so a work directory shared
by datasets that reuse ids never hands one record's score to another. Every shard is checked
when it is read; a damaged one is logged with its path and removed, and its rows are not found,
so :func:`~laser_fast.scorers.stage.score_records` scores them again. When a folder holds many
shards they are compacted into one by one run at a time (the new shard is renamed into place
before the old ones are removed; duplicates that a crash could leave are harmless: the first row
per key wins).
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from laser_fast.runtime.workdir import LAYOUT_VERSION, WorkDir, unique_suffix

#: Compact a cache folder once it holds more shards than this.
COMPACT_AFTER = 64


def fingerprint_key(fingerprint: str) -> str:
    """The folder key of a fingerprint: sha256 of the work directory layout and the fingerprint."""
    return hashlib.sha256(f"layout {LAYOUT_VERSION}\n{fingerprint}".encode()).hexdigest()[:16]


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
        root: the work directory (a path or a :class:`WorkDir`; the cache lives in ``root/scores``).
        name: the scorer's name.
        fingerprint: the scorer's fingerprint.
        outputs: the scorer's output columns.
    """

    def __init__(self, root: WorkDir | str | Path, name: str, fingerprint: str, outputs: Sequence[str]):
        self.wd = WorkDir.of(root)
        self.name = name
        self.fingerprint = fingerprint
        self.outputs = tuple(outputs)
        self.dir = self.wd.scores / f"{name}-{fingerprint_key(fingerprint)}"

    def _ensure_dir(self) -> None:
        if (self.dir / "FINGERPRINT").exists():
            return
        with self.wd.atomic(self.dir / "FINGERPRINT", record=False) as tmp:
            tmp.write_text(json.dumps({"name": self.name, "fingerprint": self.fingerprint, "outputs": list(self.outputs)}, indent=1) + "\n")

    def shards(self) -> list[Path]:
        """The folder's shards, oldest first."""
        return self.wd.entries(self.dir, "part-*.parquet")

    def _read(self, path: Path, schema: dict) -> pl.DataFrame | None:
        """One shard in ``schema``; None when it is gone or damaged (logged and removed)."""
        if not self.wd.verify(path):
            return None
        try:
            f = pl.read_parquet(path)
        except FileNotFoundError:
            return None
        except (OSError, pl.exceptions.PolarsError) as e:  # intact bytes that do not read: written wrong
            self.wd.discard(path, f"it cannot be read as Parquet ({e})")
            return None
        missing = [c for c in ("data_id", "content") if c not in f.columns]
        if missing:
            self.wd.discard(path, f"it has no column {missing}")
            return None
        return f.select([pl.col(c).cast(t) if c in f.columns else pl.lit(None, dtype=t).alias(c) for c, t in schema.items()])

    def load(self) -> pl.DataFrame:
        """All cached rows (``data_id``, ``content`` and the outputs), first row per key.

        Shards are checked as they are read: a damaged one is logged with its path and removed
        (its rows are then not found). A shard that another run compacted away meanwhile is
        found again in the compacted shard (the listing is read again).
        """
        schema = {"data_id": pl.Utf8, "content": pl.Utf8, **{o: pl.Float64 for o in self.outputs}}
        frames: dict[Path, pl.DataFrame] = {}
        for _ in range(5):
            gone = False
            for p in self.shards():
                if p not in frames:
                    f = self._read(p, schema)
                    if f is None:
                        gone = True  # damaged (removed) or compacted away: list the folder again
                    else:
                        frames[p] = f
            if not gone:
                break
        if not frames:
            return pl.DataFrame(schema=schema)
        return pl.concat([frames[p] for p in sorted(frames)]).unique(subset=["data_id", "content"], keep="first", maintain_order=True)
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
        """Write one shard atomically (unique temporary file, fsync, rename, integrity record).

        Args:
            data_ids: the records' ids.
            content: their :func:`content_keys`.
            values: per output, one value per record.

        Returns:
            The shard's path.

        Raises:
            ValueError: an output has the wrong length.
        """
        self._ensure_dir()
        cols = {"data_id": pl.Series("data_id", list(data_ids), dtype=pl.Utf8),
                "content": pl.Series("content", list(content), dtype=pl.Utf8)}
        for o in self.outputs:
            v = np.asarray(values[o], dtype=np.float64)
            if v.shape != (len(data_ids),):
                raise ValueError(f"scorer {self.name}: output {o} has shape {v.shape}, expected ({len(data_ids)},)")
            cols[o] = pl.Series(o, v)
        final = self.dir / f"part-{time.time_ns():020d}-{unique_suffix()}.parquet"
        with self.wd.atomic(final) as tmp:
            pl.DataFrame(cols).write_parquet(tmp)
        return final

    def compact(self, force: bool = False) -> None:
        """Merge the shards into one when there are many (or when ``force``); one run at a time
        (a run that finds another compacting the folder skips it)."""
        if len(self.shards()) < 2 or (len(self.shards()) <= COMPACT_AFTER and not force):
            return
        with self.wd.lock(f"scores-{self.dir.name}", blocking=False) as held:
            if not held:
                return
            parts = self.shards()
            if len(parts) < 2:
                return
            merged = self.load()  # reads at least every shard of ``parts`` that is intact
            final = self.dir / f"part-{time.time_ns():020d}-{unique_suffix()}-compact.parquet"
            with self.wd.atomic(final) as tmp:
                merged.write_parquet(tmp)
            for p in parts:
                self.wd.remove_entry(p)
