"""One large JSONL file read by several workers, each a byte range of it (``--engine ray``,
opt-in: ``LASER_FAST_READ_RANGE_BYTES=N``).

A plain (not gzipped) JSONL file larger than N bytes is cut every N bytes.
A first round of tasks counts the newlines of each range, so that every worker knows the line
number its range starts at; a second round parses the ranges (a worker takes the lines that
*start* in its range). Records, line numbers, skipped lines and errors are those of one reader of
the whole file: the schema is the one the file's first record gives, an explicit ``data_id``
repeated across two ranges is reported (or skipped) at its later line as the local reader does,
and the manifest entry (sha256, bytes, rows) is the same. A gzipped file, a JSON array, Parquet,
CSV and Hugging Face datasets are read whole by one worker. In a file with several bad records
(and no ``--skip-invalid``), the one reported may be a later one than a single reader reports:
ranges stop on their own first problem.
"""
from __future__ import annotations

import os
from typing import Any

import polars as pl

from laser_fast.errors import InputError

#: A plain JSONL input larger than this many bytes is read in ranges of this size by an
#: engine's workers; 0 (the default): off, set ``LASER_FAST_READ_RANGE_BYTES`` (e.g. 67108864)
#: to turn it on. ``python -m benchmarks --cases read`` on one 2-core machine with Ray (355 MB,
#: 193,194 records): 3.4 s on the driver, 18.7 s as 22 ranges of 16 MiB on two workers; each
#: range parses in about 0.4 s on one thread, the rest is moving the records to the driver. It
#: can only pay off where parsing, not that transfer, is the bottleneck (not measured there).
RANGE_BYTES = 0
#: How far the driver looks for the file's first record to learn its schema.
_SCHEMA_SCAN_BYTES = 4 << 20


def range_bytes() -> int:
    return int(os.environ.get("LASER_FAST_READ_RANGE_BYTES", RANGE_BYTES))


def plan_ranges(path: str, schema: str | None) -> tuple[list[tuple[int, int]], str | None] | None:
    """``(byte ranges, schema of the later ranges)`` when ``path`` is a plain JSONL file larger
    than :func:`range_bytes` whose schema is known from its first record (or forced); None: read
    it whole."""
    from laser_fast.io.sources import InputFile, _file_kind

    step = range_bytes()
    if step <= 0:
        return None
    src = InputFile(path)
    try:
        src.check()
        if _file_kind(src) != "jsonl":
            return None
        size = src.size()
    except (InputError, OSError):
        return None  # the whole-file reader gives the error
    if size <= step:
        return None
    if schema is None:
        schema = _first_schema(src)
        if schema is None:
            return None
    return [(s, min(s + step, size)) for s in range(0, size, step)], schema


def _first_schema(src) -> str | None:
    """The schema of the file's first record, as the whole-file reader detects it (None: not
    found in the first bytes, or the file is a JSON array)."""
    import json

    from laser_fast.io.schemas import _detect_schema

    seen = 0
    with src.open_at(0) as fh:
        for i, line in enumerate(fh):
            seen += len(line)
            if i == 0:
                line = line.removeprefix(b"\xef\xbb\xbf")
                if line.lstrip().startswith(b"["):
                    return None
            if line.strip():
                try:
                    rec = json.loads(line)
                except ValueError:
                    rec = None
                if isinstance(rec, dict) and _detect_schema(rec) is not None:
                    return _detect_schema(rec)
            if seen > _SCHEMA_SCAN_BYTES:
                return None
    return None


def count_newlines(path: str, start: int, end: int) -> int:
    """The number of newline bytes in ``[start, end)`` of ``path`` (a worker's first task)."""
    from laser_fast.io.sources import InputFile

    n, left = 0, end - start
    with InputFile(path).open_at(start) as fh:
        while left > 0:
            block = fh.read(min(left, 8 << 20))
            if not block:
                break
            n += block.count(b"\n")
            left -= len(block)
    return n


def read_range(path: str, *, start: int, end: int, newlines_before: int, name: str | None, schema: str | None,
               index: int, skip_invalid: bool, max_record_bytes: int) -> tuple[pl.DataFrame | None, list[dict], int]:
    """The records of the lines that start in ``[start, end)`` of ``path``: ``(frame or None when
    the range holds no valid record, skipped, non-blank lines seen)``."""
    from laser_fast.io.builder import _Builder
    from laser_fast.io.sources import InputFile, _origin_for, _read_jsonl

    src = InputFile(path)
    b = _Builder(skip_invalid, max_record_bytes)
    n_seen = _read_jsonl(src, str(src), "jsonl", schema, _origin_for(src, name), b, False, span=(start, end, newlines_before))
    frame = b.frame(True).with_columns(pl.lit(index, dtype=pl.Int32).alias("_source_index")) if b.n else None
    return frame, b.skipped, n_seen


def merge_ranges(path: str, name: str | None, parts: list[tuple[pl.DataFrame | None, list[dict], int]],
                 skip_invalid: bool) -> tuple[pl.DataFrame, list[dict], dict]:
    """One input's records from its ranges, as :func:`~laser_fast.io.ingest.read_source` gives
    them for the whole file: ``(records, skipped, manifest entry)``."""
    import logging

    from laser_fast.io.sources import InputFile

    label = str(path)
    skipped = [s for _, sk, _ in parts for s in sk]
    n_seen = sum(n for _, _, n in parts)
    frames = [f for f, _, _ in parts if f is not None]
    if n_seen == 0:
        raise InputError(label, "the file contains no records", "Pass a non-empty JSONL, JSONL.gz or Parquet file")
    if not frames:
        first = skipped[0] if skipped else None
        detail = f"; first problem at {first['file']}:{first['line']}: {first['reason']}" if first else ""
        raise InputError(label, f"no valid records: all {n_seen} records were invalid{detail}", "Fix the input (see the problem above)")
    recs = pl.concat(frames, how="vertical")
    given = recs.select(pl.when(~pl.col("_id_hashed")).then(pl.col("data_id")).alias("k"))["k"]  # explicit ids, else null
    dup = given.is_duplicated() & given.is_not_null()
    if dup.any():  # an explicit id repeated in another range: the later line is the bad one, as in one reader
        later = dup & ~given.is_first_distinct()
        first_at = dict(recs.filter(dup & ~later).select("data_id", "source").rows())
        lines = recs["source"].str.extract(r":(\d+)$").cast(pl.Int64).filter(later).to_list()
        for (did, where), ln in zip(recs.filter(later).select("data_id", "source").rows(), lines):
            problem = f"duplicate data_id {did!r} (first seen at {first_at[did]})"
            if not skip_invalid:
                raise InputError(where, problem, "data_ids must be unique; fix or remove one of them, or pass "
                                                 "--skip-invalid (skip_invalid=True) to drop the later one", key="data_id")
            skipped.append({"file": label, "line": ln, "key": "data_id", "reason": problem})
        skipped.sort(key=lambda s: s["line"])
        recs = recs.filter(~later)
    if skipped:
        logging.getLogger("laser_fast.io.sources").warning("skipped %d invalid record(s) of %d; first: %s:%s %s", len(skipped), n_seen,
                                                            skipped[0]["file"], skipped[0]["line"], skipped[0]["reason"])
    src = InputFile(path)
    fact = {"path": path, "name": name or recs["origin"][0], "sha256": src.sha256(), "bytes": src.size(),
            "rows": recs.height, "skipped": len(skipped), "schema": recs["schema"][0], "ranges": len(parts)}
    return recs, skipped, fact


def read_in_ranges(ex: Any, calls: list[dict]) -> list[tuple[pl.DataFrame, list[dict], dict]] | None:
    """Every input of ``calls`` (keyword dicts of :func:`~laser_fast.io.ingest.read_source`) read
    on ``ex``'s workers, large plain JSONL files in byte ranges; None when no input is large
    enough to be cut (the caller reads one input per task)."""
    from laser_fast.runtime.stage import Resources

    plans = [plan_ranges(c["path"], c["schema"]) for c in calls]
    if not any(plans):
        return None
    res = Resources(num_cpus=1)
    counts = ex.call_each("read:count", "laser_fast.io.ranges:count_newlines",
                          [{"path": c["path"], "start": s, "end": e} for c, p in zip(calls, plans) if p for s, e in p[0]], res)
    tasks: list[tuple[str, dict]] = []
    k = 0
    for c, p in zip(calls, plans):
        if not p:
            tasks.append(("laser_fast.io.ingest:read_source", {**c, "show_progress": False}))
            continue
        ranges, later_schema = p
        before = 0
        for j, (s, e) in enumerate(ranges):
            tasks.append(("laser_fast.io.ranges:read_range",
                          {"path": c["path"], "start": s, "end": e, "newlines_before": before, "name": c["name"],
                           "schema": c["schema"] if j == 0 else later_schema, "index": c["index"],
                           "skip_invalid": c["skip_invalid"], "max_record_bytes": c["max_record_bytes"]}))
            before += counts[k]
            k += 1
    results = ex.call_each("read", "laser_fast.runtime.engine:run_named", [{"fn": fn, "kwargs": kw} for fn, kw in tasks], res)
    out, r = [], 0
    for c, p in zip(calls, plans):
        if not p:
            out.append(results[r])
            r += 1
            continue
        n = len(p[0])
        out.append(merge_ranges(c["path"], c["name"], results[r:r + n], c["skip_invalid"]))
        r += n
    return out
