"""Read instruction-tuning records (JSONL, JSONL.gz, Parquet) into one normalised table.

Three input schemas are understood and detected per file from its first valid record
(or forced with ``schema=``):

* ``messages``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``
* ``sharegpt``: ``{"conversations": [{"from": "human"|"gpt"|..., "value": str}, ...]}``
* ``alpaca``: ``{"instruction": str, "input": str (optional), "output": str}``

Every record becomes one row of a :class:`polars.DataFrame` (see :data:`OUTPUT_COLUMNS`)
holding the normalised conversation, its first instruction / last response, every user turn
and every answer (so turn *i* and its answer share index *i*), a stable ``data_id``, the
record's ``origin``, where it came from (``source``) and every other input field, untouched,
as a JSON object string (``extra``).

Example:
    >>> from laser_fast.io.ingest import read_records
    >>> records, skipped = read_records(["pool.jsonl.gz"], skip_invalid=True)  # doctest: +SKIP
    >>> records.select("data_id", "instruction", "response").head()  # doctest: +SKIP
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from laser_fast.config import SelectOptions, SourceSpec
from laser_fast.errors import ConfigError, InputError, LaserError
from laser_fast.io.builder import DEFAULT_MAX_RECORD_BYTES, _Builder
from laser_fast.io.sources import InputFile, _as_paths, _check_schema_arg, _file_kind, _finish, _origin_for, _read_csv, _read_jsonl, _read_parquet, _read_table, _short
from laser_fast.runtime.progress import want_progress

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def read_records(
    paths: list[str | Path] | str | Path,
    *,
    schema: str | None = None,
    origin: str | dict | None = None,
    skip_invalid: bool = False,
    show_progress: bool | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    _id_flag: bool = False,
) -> tuple[pl.DataFrame, list[dict]]:
    """Read and normalise instruction-tuning records from JSONL, JSONL.gz and Parquet files.

    The format is taken from the suffix (``.jsonl``/``.json``[``.gz``], ``.parquet``), falling
    back to the file's magic bytes. The schema (``messages``, ``sharegpt`` or ``alpaca``) is
    detected per file from its first valid record unless ``schema`` forces one. JSONL is read
    line by line; blank lines are ignored.

    Args:
        paths: One path or a list of paths (local or URIs, or :class:`~laser_fast.io.sources.InputFile`).
        schema: ``"messages"``, ``"sharegpt"`` or ``"alpaca"`` to force a schema for every file;
            None (or ``"auto"``) to detect it.
        origin: Fallback origin for records without an ``origin`` field: a string for all files,
            or a dict mapping a path (as given, resolved, or its file name) to a name. Files not
            covered use their name without ``.jsonl``/``.json``/``.gz``/``.parquet`` suffixes.
        skip_invalid: Drop invalid records (bad JSON, wrong types, bad conversation structure,
            duplicate data_id) and list them in ``skipped`` instead of raising. File-level problems
            (missing, empty, unreadable or truncated gzip) still raise.
        show_progress: Show a tqdm progress bar; None shows one when INFO logging is enabled for
            ``laser_fast``.
        max_record_bytes: a record larger than this is invalid (0: no limit; default 1 MiB). A
            JSONL line is measured before it is parsed and read in bounded pieces, so one huge
            line costs no more memory than the limit; Parquet and frame records are measured by
            the UTF-8 bytes of their turns.

    Returns:
        ``(records, skipped)``: a :class:`polars.DataFrame` with the columns of
        :data:`OUTPUT_COLUMNS` (one row per record, input order), and a list of
        ``{"file", "line", "key", "reason"}`` dicts, one per dropped record (``line`` is the
        1-based JSONL line, or the 0-based Parquet row).

    Raises:
        InputError: a missing/empty/unreadable file, invalid JSON (with its line; a truncated
            last line or gzip stream is called out), a line that is not an object, an
            unrecognised schema, wrong types, an unknown role, a conversation breaking the
            system?/user/assistant/... order or without an assistant answer, an empty turn, or a
            duplicate explicit ``data_id``. Record-level problems are collected instead when
            ``skip_invalid`` is True.

    Example:
        >>> records, skipped = read_records("alpaca.jsonl", origin="alpaca")  # doctest: +SKIP
        >>> records["instruction"][0], records["response"][0]  # doctest: +SKIP
        ('Give three tips for staying healthy.', '1. Eat a balanced diet ...')
    """
    forced = _check_schema_arg(schema)
    files = _as_paths(paths)
    progress = want_progress(show_progress)
    b = _Builder(skip_invalid, max_record_bytes)
    n_seen = 0
    for path in files:
        label = str(path)
        path.check()
        try:
            kind = _file_kind(path)
        except OSError as e:
            raise InputError(label, f"cannot read the file ({_short(e)})", "Check the permissions") from None
        file_origin = _origin_for(path, origin)
        before = b.n
        if kind == "parquet":
            n_seen += _read_parquet(path, label, forced, file_origin, b, progress)
        elif kind in ("csv", "tsv"):
            n_seen += _read_csv(path, label, kind, forced, file_origin, b, progress)
        else:
            n_seen += _read_jsonl(path, label, kind, forced, file_origin, b, progress)
        logger.debug("%s: %d records", label, b.n - before)
    what = str(files[0]) if len(files) == 1 else f"{len(files)} files"
    return _finish(b, n_seen, what, _id_flag)


def records_from_frame(
    df: pl.DataFrame | pa.Table,
    *,
    origin: str = "dataframe",
    schema: str | None = None,
    skip_invalid: bool = False,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> tuple[pl.DataFrame, list[dict]]:
    """Normalise an in-memory table exactly as :func:`read_records` normalises a Parquet file.

    Args:
        df: A polars DataFrame or a pyarrow Table with a ``messages``, ``conversations`` or
            ``instruction``/``output`` (optional ``input``) column set; other columns go to
            ``extra``.
        origin: Origin for rows without an ``origin`` column value; also names the table in
            ``source`` (``"<origin>:row N"``) and in error messages.
        schema: Force ``"messages"``, ``"sharegpt"`` or ``"alpaca"``; None detects it.
        skip_invalid: Collect invalid rows in ``skipped`` instead of raising.
        max_record_bytes: as for :func:`read_records` (the turns' UTF-8 bytes).

    Returns:
        ``(records, skipped)`` as :func:`read_records` returns them.

    Raises:
        InputError: as :func:`read_records` for the row-level and schema problems, or when the
            table is empty or of an unsupported type.

    Example:
        >>> import polars as pl
        >>> recs, _ = records_from_frame(pl.DataFrame({"instruction": ["Hi?"], "output": ["Hello."]}))
        >>> recs["data_id"][0].startswith("h"), recs["source"][0]
        (True, 'dataframe:row 0')
    """
    forced = _check_schema_arg(schema)
    if isinstance(df, pl.DataFrame):
        table = df.to_arrow()
    elif isinstance(df, pa.Table):
        table = df
    else:
        raise InputError(origin, f"expected a polars DataFrame or a pyarrow Table, got {type(df).__name__}")
    b = _Builder(skip_invalid, max_record_bytes)
    n = _read_table(table, origin, forced, origin, b, False)
    return _finish(b, n, origin)


def records_from_dataset(ds, *, name: str = "dataset", split: str | None = None, schema: str | None = None,
                         skip_invalid: bool = False, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES, _id_flag: bool = False):
    """Normalise a Hugging Face ``Dataset``, ``IterableDataset`` (streamed in batches) or
    ``DatasetDict`` (its ``split``, or its only one) as :func:`records_from_frame` does a table.

    Returns:
        ``(records, skipped, the dataset read)``.
    """
    from laser_fast.io.hf_inputs import hf_batches, pick_split

    ds = pick_split(ds, split, name)
    forced = _check_schema_arg(schema)
    b = _Builder(skip_invalid, max_record_bytes)
    n = 0
    for table, row0 in hf_batches(ds, name):
        if table.num_rows:
            n += _read_table(table, name, forced, name, b, False, row0=row0)
    if n == 0:
        raise InputError(name, "the dataset holds no records", "Pass a non-empty dataset")
    recs, sk = _finish(b, n, name, _id_flag)
    return recs, sk, ds


def _dataset_name(ds, given: str | None) -> str:
    info = getattr(ds, "info", None)
    return given or getattr(info, "dataset_name", None) or getattr(info, "builder_name", None) or "dataset"


def load_pool(data, opts: SelectOptions) -> tuple[pl.DataFrame, list[dict], list[dict]]:
    """Read the inputs into one records table; returns (records, skipped, input facts).
    Preference data becomes one row per unit (see :func:`laser_fast.io.pairs.attach_pairs`)."""
    from laser_fast.io.pairs import attach_pairs

    recs, skipped, inputs = _read_pool(data, opts)
    return attach_pairs(recs, opts.type_dataset), skipped, inputs


def _read_pool(data, opts: SelectOptions) -> tuple[pl.DataFrame, list[dict], list[dict]]:
    """The records of every input, as read (see :func:`load_pool`).

    ``data``: paths or URIs (files, ``save_to_disk`` folders, hub dataset names), a polars
    DataFrame or Arrow table, or a Hugging Face dataset (see :mod:`laser_fast.io.hf_inputs`)."""
    from laser_fast.io.hf_inputs import hf_facts, is_hf_dataset
    from laser_fast.runtime.engine import current_executor
    from laser_fast.runtime.stage import Resources

    inputs: list[dict] = []
    skipped: list[dict] = []
    if is_hf_dataset(data):
        name = _dataset_name(data, opts.name)
        recs, sk, ds = records_from_dataset(data, name=name, split=opts.split, schema=opts.schema, skip_invalid=opts.skip_invalid,
                                            max_record_bytes=opts.max_record_bytes)
        inputs.append(hf_facts(ds, name, recs.height, len(sk), opts.split))
        return recs, sk, inputs
    if isinstance(data, (pl.DataFrame,)) or type(data).__name__ == "Table":
        recs, sk = records_from_frame(data, origin=opts.name or "dataframe", schema=opts.schema, skip_invalid=opts.skip_invalid,
                                     max_record_bytes=opts.max_record_bytes)
        inputs.append({"path": None, "kind": type(data).__name__, "rows": recs.height, "skipped": len(sk)})
        return recs, sk, inputs
    if isinstance(data, (str, os.PathLike)):
        data = [data]
    specs: list[SourceSpec] = []
    for d in data or []:
        specs.append(d if isinstance(d, SourceSpec) else SourceSpec(path=str(d)))
    specs += list(opts.sources)
    if not specs:
        raise ConfigError("no input: give input files (JSONL, JSONL.gz or Parquet) or a config with data: entries")
    calls = [{"path": str(spec.path), "name": spec.name, "schema": spec.schema or opts.schema, "split": opts.split, "index": i,
              "skip_invalid": opts.skip_invalid, "max_record_bytes": opts.max_record_bytes, "show_progress": opts.show_progress}
             for i, spec in enumerate(specs)]
    ex = current_executor()
    done = None
    if ex is not None:  # read by the workers (paths must be reachable from every node); large JSONL files in byte ranges when asked
        from laser_fast.io.ranges import read_in_ranges

        done = read_in_ranges(ex, calls)
        if done is None and len(calls) > 1:  # one input per worker
            done = ex.call_each("read", "laser_fast.io.ingest:read_source", [{**c, "show_progress": False} for c in calls], Resources(num_cpus=1))
    if done is None:
        done = [read_source(**c) for c in calls]
    frames = [f for f, _, _ in done]
    for _, sk, fact in done:
        skipped += sk
        inputs.append(fact)
    if opts.split is not None and not any("split" in f for f in inputs):
        raise ConfigError(f"--split {opts.split} (split=) chooses the split of a Hugging Face dataset input (a DatasetDict, a "
                          "save_to_disk folder or a hub name), and no input is one: drop --split")
    recs = pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]
    recs = _number_hashed_ids(recs).drop("_id_hashed")
    dup = recs.filter(pl.col("data_id").is_duplicated())
    if dup.height:
        first = dup["data_id"][0]
        locs = recs.filter(pl.col("data_id") == first)["source"].to_list()
        raise LaserError(f"data_id '{first}' appears in more than one record ({', '.join(locs[:3])}): data_ids must be unique across inputs; rename them or drop the field so ids are hashed from content")
    return recs, skipped, inputs


def read_source(path: str, *, name: str | None, schema: str | None, split: str | None, index: int, skip_invalid: bool,
                max_record_bytes: int, show_progress: bool | None) -> tuple[pl.DataFrame, list[dict], dict]:
    """One input of the pool (a file or URI, a ``save_to_disk`` folder or a hub dataset name):
    its records (with ``_source_index`` = ``index`` and the ``_id_hashed`` flag), the records
    skipped, and its manifest entry. Run here, or by an engine's worker (see :func:`load_pool`)."""
    from laser_fast.io.hf_inputs import hf_facts, hf_source

    hf = hf_source(path, split)
    if hf is not None:  # a save_to_disk folder or a hub dataset name
        label = name or hf[1]
        recs, sk, ds = records_from_dataset(hf[0], name=label, split=split, schema=schema, skip_invalid=skip_invalid,
                                            max_record_bytes=max_record_bytes, _id_flag=True)
        fact = {**hf_facts(ds, label, recs.height, len(sk), split), "path": path, "name": label}
    else:
        src = InputFile(path)  # remembers the hash and size of its read: a bucket's file is downloaded once
        recs, sk = read_records([src], schema=schema, origin=name, skip_invalid=skip_invalid, show_progress=show_progress,
                                max_record_bytes=max_record_bytes, _id_flag=True)
        fact = {"path": path, "name": name or (recs["origin"][0] if recs.height else None), "sha256": src.sha256(), "bytes": src.size(),
                "rows": recs.height, "skipped": len(sk), "schema": recs["schema"][0] if recs.height else None}
    return recs.with_columns(pl.lit(index, dtype=pl.Int32).alias("_source_index")), sk, fact


def _number_hashed_ids(recs: pl.DataFrame) -> pl.DataFrame:
    """Content-hashed data_ids numbered across the whole pool, as within one file: the first
    record with a content keeps ``h<hash>``, later ones (in another input too) get ``-2``, ``-3``
    ..., skipping ids some record gives explicitly. Explicit ids are left as they are."""
    hashed = recs["_id_hashed"].to_numpy()
    if not hashed.any():
        return recs
    base = recs["data_id"].str.replace(r"-\d+$", "")
    rank = pl.DataFrame({"b": base, "h": hashed}).select(pl.int_range(pl.len()).over("b", "h").alias("r"))["r"] + 1
    cand = pl.DataFrame({"b": base, "r": rank}).select(pl.when(pl.col("r") == 1).then(pl.col("b"))
                                                        .otherwise(pl.col("b") + "-" + pl.col("r").cast(pl.String)))["b"]
    ids = pl.Series("data_id", np.where(hashed, cand.to_numpy(), recs["data_id"].to_numpy()), dtype=pl.String)
    explicit = recs["data_id"].filter(~recs["_id_hashed"])
    # rare: an explicit id looks like a numbered hash (`is_in(Series)` is deprecated in polars 2; `implode` works from 1.44.1)
    if explicit.len() and cand.filter(pl.Series(hashed)).is_in(explicit.implode()).any():
        used, seen, out = set(explicit.to_list()), {}, ids.to_list()
        for k in np.flatnonzero(hashed).tolist():
            b = base[k]
            c = seen.get(b, 0) + 1
            while (b if c == 1 else f"{b}-{c}") in used:
                c += 1
            seen[b] = c
            out[k] = b if c == 1 else f"{b}-{c}"
            used.add(out[k])
        ids = pl.Series("data_id", out, dtype=pl.String)
    return recs.with_columns(ids)


# --------------------------------------------------------------------------- steps
