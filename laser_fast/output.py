"""Atomic output writers: everything goes to a temporary file in the same folder, then a rename."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        f = float(o)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def clean_json(v: Any) -> Any:
    """NaN/inf -> None recursively (JSON has no NaN)."""
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(v, dict):
        return {k: clean_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean_json(x) for x in v]
    return v


class atomic_path:
    """Context manager yielding a temporary path next to ``path``; renamed onto it on success,
    removed on failure, so readers never see a partial file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
        return False


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, obj) -> None:
    write_text(path, json.dumps(clean_json(obj), indent=2, ensure_ascii=False, default=_json_default) + "\n")


def write_jsonl(path, rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(clean_json(r), ensure_ascii=False, default=_json_default))
                f.write("\n")


def write_parquet(path, df, *, slice_rows: int | None = None, release=None) -> None:
    """Write ``df`` atomically. With ``slice_rows``, a larger frame is written one row group of
    that many rows at a time and ``release()`` runs after each (for a frame read from a mapped
    file: the pages each slice touched leave the process again)."""
    with atomic_path(path) as tmp:
        if not slice_rows or df.height <= slice_rows:
            df.write_parquet(tmp, statistics=False)
            return
        import polars as pl
        import pyarrow.parquet as pq

        from .memory import owned_schema

        schema = owned_schema(df.head(0).to_arrow(compat_level=pl.CompatLevel.newest()).schema)
        with pq.ParquetWriter(tmp, schema, write_statistics=False) as writer:
            for s in range(0, df.height, slice_rows):
                part = df.slice(s, slice_rows).to_arrow(compat_level=pl.CompatLevel.newest())
                writer.write_table(part.cast(schema))
                del part
                if release is not None:
                    release()
