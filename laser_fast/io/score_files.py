"""Scores given with the data: input columns, score files keyed by data_id and the reference's
line-aligned analysis folders."""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl

from laser_fast.categories import canonical_category
from laser_fast.errors import InputError
from laser_fast.metrics import METRIC_ALIASES, METRICS
from laser_fast.runtime.stage import Resources, StageResult, StageSpec, StageStats

logger = logging.getLogger(__name__)


#: Reference analysis folder names -> our metric names (categories handled separately).
REFERENCE_METRIC_DIRS = {
    "quality_scores": "quality",
    "complexity_scores": "complexity",
    "difficulty_v2_scores": "difficulty",
    "if_quality_scores": "if_quality",
    "process_reward_modelling_scores": "process_reward",
    "code_quality_scores": "code_quality",
    "tokens_scores/instructions": "inst_length",
    "tokens_scores/responses": "resp_length",
    "tokens_scores/last_responses": "last_resp_length",
}


def canonical_metric(name: str) -> str | None:
    n = str(name).strip()
    if n in METRICS:
        return n
    return METRIC_ALIASES.get(n)


def _to_float(v, where: str, key: str) -> float:
    if v is None:
        return np.nan
    if isinstance(v, bool):
        raise InputError(where, f"score '{key}' is a boolean, expected a number", "write numbers (or null for missing)", key=key)
    if isinstance(v, (int, float)):
        return _finite(float(v), v, where, key)
    if isinstance(v, str):
        s = v.strip()
        if s in _MISSING_TOKENS:
            return np.nan
        try:
            return _finite(float(s), v, where, key)
        except ValueError:
            pass
    raise InputError(where, f"score '{key}' has the non-numeric value {v!r}", "write numbers (or null/None for missing)", key=key)


def _finite(x: float, given, where: str, key: str) -> float:
    """``x`` unless it is infinite: an infinite score would rank above (or below) every other and
    robust scaling cannot place it, so it is refused rather than read as missing."""
    if np.isinf(x):
        raise InputError(where, f"score '{key}' is infinite ({given!r})",
                         "write a finite number, or null / NaN where the score is missing", key=key)
    return x


def scores_from_extra(records: pl.DataFrame) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Read metric columns and a category column (``category`` or ``setfit_label``) from the
    passthrough fields of the input records.

    Returns:
        ``(scores, categories)``: metric -> float array (NaN where missing) for every metric present
        in at least one record, and an object array of canonical categories (None where absent),
        or None when no record carries a category.
    """
    n = records.height
    # only the records that carry extra fields become Python strings (most pools have none)
    extra = records["extra"]
    rows = np.flatnonzero((extra.is_not_null() & (extra != "{}") & (extra != "")).fill_null(False).to_numpy())
    extras = extra.gather(rows).to_list() if rows.size else []
    sources = records["source"].gather(rows).to_list() if rows.size else []
    scores: dict[str, np.ndarray] = {}
    cats = None
    for i, ex, src in zip(rows.tolist(), extras, sources):
        d = json.loads(ex)
        for k, v in d.items():
            m = canonical_metric(k)
            if m is not None:
                arr = scores.get(m)
                if arr is None:
                    arr = scores[m] = np.full(n, np.nan)
                arr[i] = _to_float(v, src, k)
            elif k in ("category", "setfit_label") and v is not None:
                c = canonical_category(v)
                if c is None:
                    raise InputError(src, f"unknown category {v!r}", "use one of Math, Coding, Generation, Reasoning, Brainstorming, Factual QA, Extraction, or drop the field to classify the record", key=k)
                if cats is None:
                    cats = np.full(n, None, dtype=object)
                cats[i] = c
    return scores, cats


def read_score_file(path: str | Path) -> pl.DataFrame:
    """Read a score file keyed by ``data_id`` (CSV, TSV, JSONL or Parquet).

    Returns a frame with ``data_id`` (str) and one float column per recognised metric (aliases
    such as ``difficulty_v2`` are renamed). Unknown columns are ignored with a warning.

    Raises:
        InputError: missing file, no ``data_id`` column, duplicate ids, non-numeric scores.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(str(p), "score file not found", "check the path given to --scores")
    name = p.name.lower()
    try:
        if name.endswith(".parquet"):
            df = pl.read_parquet(p)
        elif name.endswith((".jsonl", ".jsonl.gz", ".json")):
            df = pl.read_ndjson(p, infer_schema_length=None)
        else:
            df = pl.read_csv(p, separator="\t" if name.endswith(".tsv") else ",", infer_schema_length=0)
    except Exception as e:
        raise InputError(str(p), f"could not read the score file ({type(e).__name__}: {str(e).splitlines()[0][:200]})", "write CSV/TSV with a header, JSONL or Parquet") from None
    if "data_id" not in df.columns:
        raise InputError(str(p), "the score file has no 'data_id' column", "scores are matched by data_id, never by line position: add a data_id column", key="data_id")
    df = df.with_columns(pl.col("data_id").cast(pl.Utf8))
    dup = df.filter(pl.col("data_id").is_duplicated())
    if dup.height:
        raise InputError(str(p), f"data_id '{dup['data_id'][0]}' appears more than once", "keep one score row per data_id", key="data_id")
    keep = {"data_id": "data_id"}
    ignored = []
    for c in df.columns:
        if c == "data_id":
            continue
        m = canonical_metric(c)
        if m is None:
            if c in ("category", "setfit_label"):
                keep[c] = "category"
            else:
                ignored.append(c)
        else:
            keep[c] = m
    if ignored:
        logger.warning("%s: ignoring columns that are not known metrics: %s", p, ", ".join(ignored))
    out = {}
    for c, m in keep.items():
        col = df[c]
        if m in ("data_id", "category"):
            out[m] = col.cast(pl.Utf8)
        else:
            out[m] = _float_column(col, str(p), c).alias(m)
    return pl.DataFrame(out)


_MISSING_TOKENS = ("", "None", "NaN", "nan", "null")


def _float_column(col: pl.Series, path: str, key: str) -> pl.Series:
    """A score column as Float64 (NaN where missing), with :func:`_to_float`'s rules: numbers
    pass, nulls and the missing tokens are NaN, booleans and other text are errors naming the row.

    Numeric columns are cast at once; text columns are parsed by polars first and only the values
    it cannot parse go through Python's ``float`` (which also reads forms such as ``1_000``)."""
    if col.dtype.is_numeric():
        out = col.cast(pl.Float64).fill_null(np.nan)
        _no_inf(out.to_numpy(), col, path, key)
        return out
    if col.dtype in (pl.String, pl.Categorical):
        text = col.cast(pl.String).str.strip_chars()
        missing = (text.is_null() | text.is_in(list(_MISSING_TOKENS))).to_numpy()
        vals = text.cast(pl.Float64, strict=False).to_numpy().astype(np.float64, copy=True)
        vals[missing] = np.nan
        _no_inf(vals, col, path, key)
        for i in np.flatnonzero(~missing & np.isnan(vals)).tolist():
            vals[i] = _to_float(col[i], f"{path}:row {i}", key)  # raises on non-numbers
        return pl.Series(key, vals, dtype=pl.Float64)
    vals = col.to_list()  # booleans, lists, ...: the per-value rules (and their errors)
    return pl.Series(key, [_to_float(v, f"{path}:row {i}", key) for i, v in enumerate(vals)], dtype=pl.Float64)


def _no_inf(vals: np.ndarray, col: pl.Series, path: str, key: str) -> None:
    bad = np.flatnonzero(np.isinf(vals))
    if bad.size:
        i = int(bad[0])
        _finite(float(vals[i]), col[i], f"{path}:row {i}", key)


def merge_score_files(records: pl.DataFrame, paths: Sequence[str | Path], scores: dict[str, np.ndarray], categories: np.ndarray | None):
    """Fill ``scores`` (and categories) from score files keyed by data_id; returns updated pair and
    a per-file report (matched / unmatched ids)."""
    n = records.height
    report = []
    ids = records["data_id"]
    rec_rows = pl.DataFrame({"data_id": ids}).with_row_index("_row")
    for path in paths:
        sf = read_score_file(path)
        # (score row, record row) of every matched id: each column is scattered into the records'
        # order through it (a left join would build every column for every record)
        pairs = sf.select("data_id").with_row_index("_srow").join(rec_rows, on="data_id", how="inner")
        srow, row = pairs["_srow"].to_numpy().astype(np.int64), pairs["_row"].to_numpy().astype(np.int64)
        del pairs
        matched = int(row.size)
        unknown = sf.height - matched
        if unknown:
            logger.warning("%s: %d score row(s) have data_ids not in the input", path, unknown)
        report.append({"path": str(path), "rows": sf.height, "matched": matched, "unknown_ids": unknown})
        for c in sf.columns:
            if c == "data_id":
                continue
            if c == "category":
                # each distinct label is mapped once; rows go through their label's code. A label
                # is checked where it is used: on rows whose category is not known yet
                col = sf[c].cast(pl.String)
                if categories is None:
                    categories = np.full(n, None, dtype=object)
                uniq = col.unique(maintain_order=True).drop_nulls().to_list()
                if not uniq:
                    continue
                canon = np.array([canonical_category(v) for v in uniq], dtype=object)
                scodes = col.replace_strict(uniq, list(range(len(uniq))), default=-1, return_dtype=pl.Int64).to_numpy()
                codes = np.full(n, -1, dtype=np.int64)
                codes[row] = scodes[srow]
                fill = np.flatnonzero((codes >= 0) & (categories == None))  # noqa: E711
                mapped = canon[codes[fill]]
                bad = np.flatnonzero(mapped == None)  # noqa: E711
                if bad.size:
                    i = int(fill[bad[0]])
                    raise InputError(str(path), f"unknown category {uniq[codes[i]]!r} for data_id {ids[i]}", "use the 7 LASER category names", key="category")
                categories[fill] = mapped
                continue
            v = np.full(n, np.nan)
            v[row] = sf[c].to_numpy().astype(np.float64)[srow]
            if c in scores:
                gap = ~np.isfinite(scores[c])
                scores[c][gap] = v[gap]
            else:
                scores[c] = v
    return scores, categories, report


def _read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").rstrip("\r") for line in f]


def _plain_file_name(name: str) -> bool:
    """Whether ``name`` is one path component (no separator, not ``.``/``..``, no NUL or drive)."""
    return bool(name) and name not in (".", "..") and not any(ch in name for ch in ("/", "\\", "\0", ":"))


def import_reference_analysis(records: pl.DataFrame, analysis_dir: str | Path, scores: dict[str, np.ndarray], categories: np.ndarray | None):
    """Import the reference code's line-aligned analysis CSVs for each origin (dataset name).

    For every origin ``name`` present in the records, reads ``<dir>/<metric folder>/<name>.csv``
    and ``<dir>/categories_v2/<name>_aggr.csv`` when they exist. Lines map to that origin's
    records in input order; a line count that differs from the record count is an error.
    """
    root = Path(analysis_dir)
    if not root.is_dir():
        raise InputError(str(root), "analysis folder not found", "pass the folder holding quality_scores/, difficulty_v2_scores/, ... with --analysis-dir")
    n = records.height
    origins = records["origin"].to_numpy()
    report = []
    unsafe = []
    for name in dict.fromkeys(origins.tolist()):
        idx = np.flatnonzero(origins == name)
        if not _plain_file_name(str(name)):  # a record's origin names a file inside each folder, never elsewhere
            unsafe.append(str(name))
            continue
        entries = [("categories_v2", None, root / "categories_v2" / f"{name}_aggr.csv")]
        entries += [(d, m, root / d / f"{name}.csv") for d, m in REFERENCE_METRIC_DIRS.items()]
        for folder, metric, path in entries:
            if not path.exists():
                continue
            lines = _read_lines(path)
            if lines and lines[-1] == "" and len(lines) == idx.size + 1:
                lines = lines[:-1]
            if len(lines) != idx.size:
                raise InputError(
                    str(path), f"has {len(lines)} lines but dataset '{name}' has {idx.size} records",
                    "line-aligned score files must have exactly one line per record; regenerate it, or write a score file keyed by data_id and pass it with --scores",
                )
            if metric is None:
                if categories is None:
                    categories = np.full(n, None, dtype=object)
                for j, line in zip(idx, lines):
                    s = line.strip()
                    if s in ("", "None") or categories[j] is not None:
                        continue
                    c = canonical_category(s)
                    if c is None:
                        raise InputError(f"{path}:{int(np.searchsorted(idx, j)) + 1}", f"unknown category {s!r}", "use the 7 LASER category names")
                    categories[j] = c
            else:
                vals = np.array([_to_float(l, f"{path}:{k + 1}", metric) for k, l in enumerate(lines)], dtype=np.float64)
                arr = scores.get(metric)
                if arr is None:
                    arr = scores[metric] = np.full(n, np.nan)
                gap = ~np.isfinite(arr[idx])
                arr[idx[gap]] = vals[gap]
            report.append({"path": str(path), "origin": name, "metric": metric or "category", "lines": len(lines)})
    if unsafe:
        logger.warning("%s: %d dataset name(s) are not plain file names and were not looked up there (an origin may not "
                       "name a path): %s; give those records plain origin names (letters, digits, '.', '-', '_') to "
                       "import their files", root, len(unsafe), ", ".join(repr(u) for u in unsafe[:5]))
    if not report:
        logger.warning("%s: no analysis files matched the dataset names %s", root, sorted(set(origins.tolist())))
    return scores, categories, report


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


__all__ = [
    "scores_from_extra",
    "read_score_file",
    "merge_score_files",
    "import_reference_analysis",
    "REFERENCE_METRIC_DIRS",
]


SCORES_LOAD = StageSpec("scores_load", "laser_fast.io.score_files:scores_load_stage", reads=("data_id", "extra", "origin"),
                        writes=("category", "<metrics>"), resources=Resources(num_cpus=1, row_wise=False))


def scores_load_stage(records: pl.DataFrame, opts, *, workdir=None, columns: Mapping[str, np.ndarray] | None = None) -> StageResult:
    """The scores and categories that come with the data: input fields (:func:`scores_from_extra`),
    then ``opts.scores`` files (:func:`merge_score_files`) and ``opts.analysis_dir``
    (:func:`import_reference_analysis`).

    Returns:
        Metric columns (NaN where missing) and, when any record has one, ``category`` (None where
        missing); stats: ``score_sources`` (one report per file).
    """
    scores, known = scores_from_extra(records)
    score_files: list = []
    if opts.scores:
        scores, known, score_files = merge_score_files(records, opts.scores, scores, known)
    if opts.analysis_dir:
        scores, known, rep = import_reference_analysis(records, opts.analysis_dir, scores, known)
        score_files += rep
    cols: dict[str, np.ndarray] = dict(scores)
    if known is not None:
        cols["category"] = known
    return StageResult(cols, StageStats("scores_load", score_sources=score_files))
