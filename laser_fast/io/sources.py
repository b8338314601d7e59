"""Input files: JSONL (optionally gzipped) and Parquet readers."""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import logging
import os
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from laser_fast.errors import InputError
from laser_fast.io.builder import _Builder, too_large
from laser_fast.io.schemas import (
    _GZIP_MAGIC,
    _JSON_ERRORS,
    _PARQUET_MAGIC,
    _SCHEMA_HELP,
    _STRIP_SUFFIXES,
    SCHEMAS,
    _detect_schema,
    _dumps_arrow_extra,
    _dumps_json_extra,
    _loads,
    _RecordProblem,
    _unknown_schema,
)
from laser_fast.runtime.progress import progress_bar

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


class _RawStream(io.RawIOBase):
    """A readable stream of any object with ``read(n)`` (a pyarrow input stream), so that
    ``io.BufferedReader`` gives it lines. With ``on_end``, the bytes are hashed as they pass and
    ``on_end(sha256 hex digest, byte count)`` is called once the end is reached."""

    def __init__(self, f, on_end=None):
        self._f = f
        self._on_end = on_end
        self._h = hashlib.sha256() if on_end is not None else None
        self._n = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._f.read(len(b))
        n = len(data)
        b[:n] = data
        if self._h is not None:
            if n:
                self._h.update(data)
                self._n += n
            elif self._on_end is not None:
                self._on_end(self._h.hexdigest(), self._n)
                self._on_end = None
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


class InputFile:
    """One input: a local path or a URI (``s3://``, ``gs://``, ``hf://``, ``file://``, …, through
    pyarrow's or fsspec's filesystems; see :mod:`laser_fast.runtime.storage`).

    Args:
        where: the path or URI as the user gave it (the label of every error about it).
    """

    def __init__(self, where: str | os.PathLike):
        from laser_fast.runtime.storage import is_uri

        self.label = str(where)
        self.uri = self.label if is_uri(self.label) else None
        self.path = None if self.uri else Path(where)
        self._remote = None
        self._read: tuple[str, int] | None = None  # (sha256, bytes) of a read to the end

    def __str__(self) -> str:
        return self.label

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else self.label.rstrip("/").rsplit("/", 1)[-1]

    def _fs(self):
        if self._remote is None:
            from laser_fast.runtime.storage import RemoteStore

            self._remote = RemoteStore(self.uri)
        return self._remote.fs, self._remote.path("")

    def check(self) -> None:
        """Raises InputError when the input is missing or a folder."""
        if self.path is not None:
            exists, folder = self.path.exists(), self.path.is_dir()
        else:
            import pyarrow.fs as pafs

            try:
                fs, p = self._fs()
                info = fs.get_file_info(p)
            except Exception as e:  # noqa: BLE001 - any filesystem's error: one clear message
                raise InputError(self.label, f"cannot open it ({_short(e)})",
                                 "Check the URI, its credentials and that the storage is reachable") from None
            exists, folder = info.type != pafs.FileType.NotFound, info.type == pafs.FileType.Directory
        if not exists:
            raise InputError(self.label, "file not found", "Check the path")
        if folder:
            raise InputError(self.label, "is a directory, not a file", "Pass the data files themselves")

    def open(self, *, digest: bool = False):
        """The file's bytes as a buffered binary stream (iterates over lines).

        ``digest``: hash the bytes as they are read; once the stream has been read to its end,
        :meth:`sha256` and :meth:`size` answer without reading the file again (an input on a
        bucket is downloaded once).
        """
        if self.path is not None:
            f = open(self.path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
            if not digest:
                return f
        else:
            fs, p = self._fs()
            f = fs.open_input_stream(p, compression=None)

        def done(hexdigest: str, nbytes: int) -> None:
            self._read = (hexdigest, nbytes)

        return io.BufferedReader(_RawStream(f, done if digest else None), 1 << 20)

    def open_at(self, offset: int):
        """The file's bytes from ``offset`` on, as a buffered binary stream (a byte range of a
        local file or of an object on shared storage, read without the bytes before it)."""
        if self.path is not None:
            f = open(self.path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
            f.seek(offset)
            return f
        fs, p = self._fs()
        f = fs.open_input_file(p)
        f.seek(offset)
        return io.BufferedReader(_RawStream(f), 1 << 20)

    def head(self, n: int) -> bytes:
        """The file's first ``n`` bytes (without reading ahead: a bucket's file is not
        downloaded for its magic bytes)."""
        if self.path is not None:
            with open(self.path, "rb") as f:
                return f.read(n)
        fs, p = self._fs()
        with fs.open_input_stream(p, compression=None) as f:
            return f.read(n)

    def parquet(self):
        """What ``pyarrow.parquet.ParquetFile`` reads."""
        if self.path is not None:
            return self.path
        fs, p = self._fs()
        return fs.open_input_file(p)

    def size(self) -> int:
        if self._read is not None:
            return self._read[1]
        if self.path is not None:
            return os.path.getsize(self.path)
        fs, p = self._fs()
        return int(fs.get_file_info(p).size)

    def sha256(self, chunk: int = 1 << 20) -> str:
        if self._read is not None:
            return self._read[0]
        h = hashlib.sha256()
        with self.open() as f:
            while b := f.read(chunk):
                h.update(b)
        return h.hexdigest()


def _stem(path: Path | InputFile) -> str:
    name = path.name
    changed = True
    while changed:
        changed = False
        for suf in _STRIP_SUFFIXES:
            if name.lower().endswith(suf) and len(name) > len(suf):
                name = name[: -len(suf)]
                changed = True
    return name


def _origin_for(path: Path | InputFile, given: str | Mapping | None) -> str:
    if isinstance(given, str):
        return given
    if isinstance(path, InputFile):
        if path.path is None:
            return str(given[path.label]) if isinstance(given, Mapping) and path.label in given else _stem(path)
        path = path.path
    if isinstance(given, Mapping):
        candidates = [str(path), os.fspath(path), path.name]
        try:
            candidates.append(str(path.resolve()))
        except OSError:  # pragma: no cover
            pass
        for c in candidates:
            if c in given:
                return str(given[c])
        resolved = path.resolve()
        for k, v in given.items():
            try:
                if Path(k).resolve() == resolved:
                    return str(v)
            except (OSError, TypeError):  # pragma: no cover
                continue
    return _stem(path)


def _file_kind(path: Path | InputFile) -> str:
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".gz"):
        return "gzip"
    if name.endswith((".csv", ".tsv")):
        return name[-3:]
    head = (path if isinstance(path, InputFile) else InputFile(path)).head(4)
    if head[:2] == _GZIP_MAGIC:
        return "gzip"
    if head == _PARQUET_MAGIC:
        return "parquet"
    return "jsonl"


class _Progress:
    """A progress bar over records, updated in batches (no cost when disabled)."""

    def __init__(self, enabled: bool, desc: str, total: int | None = None):
        self.bar = progress_bar(total=total, desc=desc, unit=" rec", show=True, leave=False, mininterval=0.5) if enabled else None

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _bounded_lines(fh, limit: int):
    """The lines of ``fh`` (bytes, newline kept); with a ``limit``, a line whose content is longer
    than ``limit`` bytes is read past in 1 MiB pieces and yielded as its length (an int), so memory
    stays bounded by the limit whatever the file holds."""
    if not limit:
        yield from fh
        return
    while True:
        line = fh.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
            continue
        n = len(line)
        while True:
            part = fh.readline(1 << 20)
            n += len(part)
            if not part or part.endswith(b"\n"):
                break
        yield n - (1 if part.endswith(b"\n") else 0)


def _starts_array(fh) -> bool:
    """Whether the stream's first non-blank byte opens a JSON array (peeked, nothing consumed)."""
    peek = getattr(fh, "peek", None)
    head = peek(256)[:256] if peek is not None else b""
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")


def _read_json_array(fh, label: str, schema: str | None, origin: str, b: _Builder) -> int:
    """Add the records of a file holding one JSON array (read whole: such files are loaded at once
    by every reader; JSONL streams). Items are located as ``FILE:item K`` (0-based)."""
    data = fh.read().lstrip(b"\xef\xbb\xbf")
    try:
        items = _loads(data)
    except _JSON_ERRORS as e:
        raise InputError(label, f"invalid JSON array ({_short(e)})",
                         "Fix the file, or write one record per line (JSONL)") from None
    del data
    if not isinstance(items, list):
        raise InputError(label, f"the file is JSON but not an array of records (got {_json_kind(items)})",
                         "Give a JSON array of record objects, or JSONL (one object per line)")
    file_schema = schema
    for k, rec in enumerate(items):
        file_schema = _add_json(b, rec, file_schema, origin, label, k, f"{label}:item {k}", "item")
    return len(items)


def _add_json(b: _Builder, rec: Any, schema: str | None, origin: str, label: str, pos: int, where: str, unit: str,
              measured: bool = False) -> str | None:
    """Add one parsed JSON value (a line's or an array item's) as a record; returns the file's
    schema (detected from its first record unless forced)."""
    if not isinstance(rec, dict):
        b.problem(label, pos, where, _RecordProblem(f"{unit} {pos} is JSON but not an object (got {_json_kind(rec)}); "
                                                    f"each {unit} must hold one record object"))
        return schema
    try:
        if schema is None:
            schema = _detect_schema(rec)
            if schema is None:
                raise _unknown_schema(rec)
            logger.debug("%s: detected schema %r at %s", label, schema, where)
        b.add(rec, schema, origin, where, _dumps_json_extra, measured=measured)
    except _RecordProblem as p:
        b.problem(label, pos, where, p)
    return schema


#: CSV/TSV columns read as text without a guess (any further ones are guessed, then cast back)
_CSV_TEXT_COLUMNS = 4096


def _read_csv(path: Path | InputFile, label: str, kind: str, schema: str | None, origin: str, b: _Builder, progress: bool) -> int:
    """Add the rows of a CSV (or TSV) file with a header, e.g. ``instruction,input,output``; every
    column is read as text (CSV has no types)."""
    import pyarrow.csv as pcsv

    src = path if isinstance(path, InputFile) else InputFile(path)
    # no type is guessed (``007`` stays ``007``): the header is read as a row of generated columns,
    # all of them text, and then names them
    as_text = {f"f{i}": pa.string() for i in range(_CSV_TEXT_COLUMNS)}
    try:
        with src.open(digest=True) as f:
            table = pcsv.read_csv(f, read_options=pcsv.ReadOptions(autogenerate_column_names=True),
                                  parse_options=pcsv.ParseOptions(delimiter="\t" if kind == "tsv" else ",", newlines_in_values=True),
                                  convert_options=pcsv.ConvertOptions(column_types=as_text))
        names = [table.column(i)[0].as_py() if table.num_rows else "" for i in range(table.num_columns)]
        table = table.slice(1).cast(pa.schema([(f"f{i}", pa.string()) for i in range(table.num_columns)]))
    except (OSError, pa.ArrowException) as e:
        raise InputError(label, f"cannot read the {kind.upper()} file ({_short(e)})",
                         "Give a header row (e.g. instruction,input,output), quote fields that hold the delimiter or newlines, "
                         "and save the file as UTF-8") from None
    return _read_table(table.rename_columns(names), label, schema, origin, b, progress)


def _lines_in_span(fh, limit: int, start: int, end: int, newlines_before: int):
    """``(line number, line)`` of the lines of a plain file that start in the byte range
    ``[start, end)``; ``fh`` is positioned at ``start - 1`` (at 0 for the first range) and
    ``newlines_before`` counts the newline bytes in ``[0, start)``. Lines as :func:`_bounded_lines`."""
    pos, lineno = start, newlines_before + 1
    if start > 0:
        pos = start - 1
        if fh.read(1) != b"\n":  # inside a line that starts in an earlier range: skip its rest
            pos += 1
            while True:
                part = fh.readline(1 << 20)
                pos += len(part)
                if not part or part.endswith(b"\n"):
                    break
            lineno += 1
        else:
            pos += 1
    for raw in _bounded_lines(fh, limit):
        if pos >= end:
            return
        n = raw if isinstance(raw, int) else len(raw)
        pos += n + (1 if isinstance(raw, int) else 0)
        yield lineno, raw
        lineno += 1


def _read_jsonl(path: Path | InputFile, label: str, kind: str, schema: str | None, origin: str, b: _Builder,
                progress: bool, span: tuple[int, int, int] | None = None) -> int:
    """Stream one JSONL(.gz) file into the builder; return the number of non-blank lines.
    ``span``: ``(start, end, newlines before start - 1)``: only the lines that start in that
    byte range of a plain JSONL file (a range read by one of an engine's workers)."""
    src = path if isinstance(path, InputFile) else InputFile(path)

    @contextlib.contextmanager
    def opener(_, mode):
        if span is not None:
            with src.open_at(max(span[0] - 1, 0)) as raw:
                yield raw
            return
        with src.open(digest=True) as raw:  # closed with the gzip reader over it
            if kind != "gzip":
                yield raw
                return
            with gzip.open(raw, mode) as g:
                yield g

    file_schema = schema
    n_lines = 0
    lineno = 0
    bar = _Progress(progress, label)
    pending = 0
    try:
        with opener(path, "rb") as fh:
            try:
                if span is None and _starts_array(fh):  # one JSON array of records (the Alpaca / DEITA release format)
                    return _read_json_array(fh, label, schema, origin, b)
                lines = (enumerate(_bounded_lines(fh, b.max_record_bytes), 1) if span is None
                         else _lines_in_span(fh, b.max_record_bytes, *span))
                for lineno, raw in lines:
                    if isinstance(raw, int):  # a line over the limit, read past in pieces and never held whole
                        n_lines += 1
                        b.problem(label, lineno, f"{label}:{lineno}", too_large(raw, b.max_record_bytes, f"line {lineno}"))
                        continue
                    if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                        raw = raw[3:]
                    if not raw.strip():
                        continue
                    n_lines += 1
                    pending += 1
                    if pending >= 20000:
                        bar.update(pending)
                        pending = 0
                    where = f"{label}:{lineno}"
                    try:
                        rec = _loads(raw)
                    except _JSON_ERRORS as e:
                        if not raw.endswith(b"\n"):
                            p = _RecordProblem(
                                f"invalid JSON on the last line, and the file does not end with a newline: "
                                f"the file looks truncated ({_short(e)})",
                                hint="Re-create or re-download the file, or pass --skip-invalid "
                                     "(skip_invalid=True) to drop the broken line")
                        else:
                            p = _RecordProblem(f"invalid JSON on line {lineno} ({_short(e)})")
                        b.problem(label, lineno, where, p)
                        continue
                    file_schema = _add_json(b, rec, file_schema, origin, label, lineno, where, "line", measured=True)
            except (EOFError, zlib.error, gzip.BadGzipFile) as e:
                if lineno == 0 and isinstance(e, gzip.BadGzipFile):  # the first bytes are not a gzip header
                    raise InputError(label, f"not a gzip file ({_short(e)}), though its name ends in .gz",
                                     "Compress it with gzip, or rename it without .gz if it is plain JSONL") from None
                raise InputError(
                    f"{label}:{lineno + 1}",
                    f"the gzip stream ends early or is corrupt after line {lineno}: the file looks "
                    f"truncated ({_short(e)})",
                    "Re-create or re-download the file") from None
    except OSError as e:
        raise InputError(label, f"cannot read the file ({_short(e)})", "Check the path and permissions") from None
    finally:
        bar.update(pending)
        bar.close()
    if n_lines == 0 and span is None:
        raise InputError(label, "the file contains no records", "Pass a non-empty JSONL, JSONL.gz or Parquet file")
    return n_lines


def _short(e: BaseException) -> str:
    s = str(e).strip() or type(e).__name__
    return s if len(s) <= 200 else s[:197] + "..."


def _json_kind(v: Any) -> str:
    if isinstance(v, list):
        return "an array"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if v is None:
        return "null"
    return type(v).__name__


def _read_table(table: pa.Table | Any, label: str, schema: str | None, origin: str, b: _Builder,
                progress: bool, row0: int = 0) -> int:
    """Add every row of an Arrow table (an in-memory frame) or of a ``pyarrow.parquet.ParquetFile``
    (read 65,536 rows at a time, so the whole file is never decoded at once) to the builder."""
    if isinstance(table, pa.Table):
        names, num_rows = table.column_names, table.num_rows
        batches = lambda: table.to_batches(max_chunksize=65536)  # noqa: E731
    else:
        names, num_rows = table.schema_arrow.names, table.metadata.num_rows
        batches = lambda: table.iter_batches(batch_size=65536)  # noqa: E731
    if num_rows == 0:
        raise InputError(label, "the table contains no records", "Pass a non-empty table or file")
    file_schema = schema or _detect_schema(set(names))
    if file_schema is None:
        cols = ", ".join(repr(c) for c in names[:20]) or "none"
        raise InputError(label, f"unrecognised table schema; columns seen: {cols}", _SCHEMA_HELP)
    bar = _Progress(progress, label, total=num_rows)
    limit = b.max_record_bytes
    try:
        for batch in batches():
            rows = range(batch.num_rows)
            if limit:  # measured in Arrow, so an oversized value never becomes a Python string
                sizes = _row_text_bytes(batch.to_struct_array() if batch.num_columns else pa.array([]), batch.num_rows)
                over = np.flatnonzero(sizes > limit)
                for j in over.tolist():
                    b.problem(label, row0 + j, f"{label}:row {row0 + j}",
                              too_large(int(sizes[j]), limit, "the record's text (its string values, UTF-8)"))
                if over.size:
                    keep = np.flatnonzero(sizes <= limit)
                    batch, rows = batch.take(pa.array(keep)), keep.tolist()
            cols = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
            for j, values in zip(rows, zip(*cols)):
                row = row0 + j
                where = f"{label}:row {row}"
                rec = dict(zip(names, values))
                try:
                    b.add(rec, file_schema, origin, where, _dumps_arrow_extra, measured=bool(limit))
                except _RecordProblem as p:
                    b.problem(label, row, where, p)
            row0 += len(sizes) if limit else batch.num_rows
            bar.update(batch.num_rows)
    finally:
        bar.close()
    return num_rows


def _row_text_bytes(arr: pa.Array, n: int) -> np.ndarray:
    """UTF-8 bytes of every text value in each of the ``n`` rows of ``arr`` (strings inside
    lists and structs included), computed in Arrow without building Python objects."""
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t) \
            or pa.types.is_string_view(t):
        return pc.binary_length(arr).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_struct(t):
        total = np.zeros(n, np.int64)
        for field in arr.flatten():  # the fields, with the struct's offset applied
            total += _row_text_bytes(field, n)
        return total
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_list_view(t):
        values = arr.flatten()
        inner = _row_text_bytes(values, len(values))
        if not inner.any():
            return np.zeros(n, np.int64)
        parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
        return np.bincount(parents, weights=inner, minlength=n).astype(np.int64)
    if pa.types.is_map(t):
        return _row_text_bytes(pa.ListArray.from_arrays(arr.offsets, arr.keys), n) + \
            _row_text_bytes(pa.ListArray.from_arrays(arr.offsets, arr.items), n)
    if pa.types.is_dictionary(t):
        return _row_text_bytes(arr.dictionary_decode(), n)
    return np.zeros(n, np.int64)


def _read_parquet(path: Path | InputFile, label: str, schema: str | None, origin: str, b: _Builder, progress: bool) -> int:
    import pyarrow.parquet as pq

    src = path.parquet() if isinstance(path, InputFile) else path
    try:
        # streamed: row groups are decoded batch by batch, never the whole file at once
        pf = pq.ParquetFile(src, memory_map=isinstance(src, Path))
        return _read_table(pf, label, schema, origin, b, progress)
    except (OSError, pa.ArrowException) as e:
        raise InputError(label, f"cannot read the Parquet file ({_short(e)}); it may be truncated or not Parquet",
                         "Re-create the file") from None


def _as_paths(paths: list[str | Path] | str | Path) -> list[InputFile]:
    if isinstance(paths, InputFile):
        return [paths]
    if isinstance(paths, (str, os.PathLike)):
        return [InputFile(paths)]
    if not isinstance(paths, Iterable):
        raise InputError("input", f"expected a path or a list of paths, got {type(paths).__name__}")
    out = [p if isinstance(p, InputFile) else InputFile(p) for p in paths]
    if not out:
        raise InputError("input", "no input files were given", "Pass at least one JSONL, JSONL.gz or Parquet file")
    return out


def _check_schema_arg(schema: str | None) -> str | None:
    if schema is None:
        return None
    s = str(schema).strip().lower()
    if s in ("auto", ""):
        return None
    if s == "conversations":
        s = "sharegpt"
    if s not in SCHEMAS:
        raise InputError("schema", f"unknown schema {schema!r}", f"Use one of: {', '.join(SCHEMAS)} (or leave it "
                                                                 "unset to auto-detect)")
    return s


def _finish(b: _Builder, n_seen: int, what: str, id_flag: bool = False) -> tuple[pl.DataFrame, list[dict]]:
    if b.skipped:
        logger.warning("skipped %d invalid record(s) of %d; first: %s:%s %s", len(b.skipped), n_seen,
                       b.skipped[0]["file"], b.skipped[0]["line"], b.skipped[0]["reason"])
    if b.n == 0:
        first = b.skipped[0] if b.skipped else None
        detail = f"; first problem at {first['file']}:{first['line']}: {first['reason']}" if first else ""
        raise InputError(what, f"no valid records: all {n_seen} records were invalid{detail}",
                         "Fix the input (see the problem above)")
    df = b.frame(id_flag)
    logger.info("read %d records from %s (%d skipped)", b.n, what, len(b.skipped))
    return df, b.skipped


