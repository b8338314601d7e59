"""The column builder shared by every reader (Arrow string views over one text buffer)."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from laser_fast.errors import InputError
from laser_fast.io.schemas import (
    _CONSUMED,
    _MISSING,
    _TURN_READERS,
    _canonical_json,
    _check_data_id,
    _check_structure,
    _RecordProblem,
    _type_name,
    has_tool_turns,
)

#: Output columns, in order, with their polars types.
OUTPUT_COLUMNS: dict[str, pl.DataType] = {
    "data_id": pl.String(),
    "origin": pl.String(),
    "messages": pl.List(pl.Struct({"role": pl.String(), "content": pl.String()})),
    "instruction": pl.String(),
    "response": pl.String(),
    "user_turns": pl.List(pl.String()),
    "responses": pl.List(pl.String()),
    "n_turns": pl.Int32(),
    "schema": pl.String(),
    "source": pl.String(),
    "extra": pl.String(),
}


# --------------------------------------------------------------------------------------------
# The column builder shared by every reader
# --------------------------------------------------------------------------------------------


#: records per Arrow chunk while reading (Python objects of at most this many records live at once)
FLUSH_ROWS = 65536
#: characters of message text per chunk: a chunk's text buffer stays under 2 GiB of UTF-8, the
#: most a string view can address
FLUSH_CHARS = 1 << 28


def _string_views(strings: pa.Array, idx: np.ndarray) -> pa.Array:
    """``strings[idx]`` as an Arrow ``string_view`` array that shares ``strings``' text buffer.

    ``strings`` is a ``large_string`` array without nulls whose text buffer is under 2 GiB.
    Each view is 16 bytes: the length, then the text itself when it is at most 12 bytes long, or
    else its first 4 bytes, the buffer index (0) and the offset into the buffer (Arrow's layout).
    """
    if strings.null_count:
        raise ValueError("string views are built only for arrays without nulls")
    idx = np.asarray(idx, dtype=np.int64)
    _, obuf, dbuf = strings.buffers()
    off = np.frombuffer(obuf, dtype=np.int64)[strings.offset: strings.offset + len(strings) + 1]
    if off.size and off[-1] >= 2**31:
        raise ValueError("text buffer over 2 GiB: flush chunks earlier (FLUSH_CHARS)")
    data = np.frombuffer(dbuf, dtype=np.uint8) if dbuf is not None and dbuf.size else np.zeros(1, np.uint8)
    start = off[idx]
    length = off[idx + 1] - start
    views = np.zeros((idx.size, 16), dtype=np.uint8)
    views[:, :4] = length.astype("<i4").view(np.uint8).reshape(-1, 4)
    # bytes 4..16: the inline text (<= 12 bytes, zero-padded); for longer texts the first 4 are
    # the prefix and the rest is overwritten below
    j = np.arange(12)
    inside = j < length[:, None]
    head = data[np.minimum(start[:, None] + j, data.size - 1)]
    head[~inside] = 0
    views[:, 4:] = head
    long = np.flatnonzero(length > 12)
    views[long, 8:12] = 0
    views[long, 12:16] = start[long].astype("<i4").view(np.uint8).reshape(-1, 4)
    buffers = [None, pa.py_buffer(views)]
    if long.size:
        buffers.append(dbuf)
    return pa.Array.from_buffers(pa.string_view(), idx.size, buffers)


#: Records larger than this (bytes) are invalid unless ``max_record_bytes`` says otherwise.
DEFAULT_MAX_RECORD_BYTES = 1 << 20


def too_large(nbytes: int, limit: int, what: str) -> _RecordProblem:
    """The problem of a record over ``--max-record-bytes``."""
    return _RecordProblem(f"{what} is {nbytes:,} bytes, more than the --max-record-bytes limit of {limit:,}",
                          hint="Raise --max-record-bytes (max_record_bytes=; 0: no limit) to keep such records, or pass "
                               "--skip-invalid (skip_invalid=True) to drop them")


class _Builder:
    """Accumulates normalised records in flat column lists (cheap appends, one table at the end)."""

    def __init__(self, skip_invalid: bool, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES):
        self.skip_invalid = skip_invalid
        self.max_record_bytes = int(max_record_bytes or 0)
        self.skipped: list[dict] = []
        self.n = 0
        self.ids: list[str | None] = []
        self.hashes: list[str | None] = []
        self.explicit: dict[str, int] = {}  # data_id -> record index (its "where" via _where_of)
        self._parts: list[dict[str, pa.Array]] = []  # flushed column chunks (all but data_id)
        self._part_rows: list[int] = []
        self._pending = 0
        self.origins: list[str] = []
        self.roles: list[str] = []
        self.contents: list[str] = []
        self._pending_chars = 0
        self.msg_offsets: list[int] = [0]
        self.n_turns: list[int] = []
        self.schema: list[str] = []
        self.source: list[str] = []
        self.extra: list[str] = []

    # -- problems ----------------------------------------------------------------------------
    def problem(self, file: str, line: int, where: str, p: _RecordProblem) -> None:
        """Raise ``p`` as an InputError, or record it in ``skipped`` when skipping invalid records."""
        if not self.skip_invalid:
            raise InputError(where, p.problem, p.hint, key=p.key)
        self.skipped.append({"file": file, "line": line, "key": p.key, "reason": p.problem})

    # -- one record ----------------------------------------------------------------------------
    def add(self, rec: Mapping[str, Any], schema: str, origin: str, where: str,
            extra_json: Any, *, measured: bool = False) -> None:
        """Validate and append one record (raises _RecordProblem; nothing is appended then).
        ``measured``: its size was checked already (a JSONL line, before it was parsed)."""
        turns = _TURN_READERS[schema](rec)
        users, _answers = _check_structure(turns, schema)
        original = rec["messages"] if schema == "messages" and has_tool_turns(rec.get("messages")) else None
        if self.max_record_bytes and not measured:
            limit = self.max_record_bytes
            size = 0
            for _, text in turns:
                size += len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
                if size > limit:
                    raise too_large(size, limit, "the record's text (its turns, UTF-8) at least")

        did = rec.get("data_id", _MISSING)
        if did is not _MISSING:
            did = _check_data_id(did)
            first_i = self.explicit.get(did)
            if first_i is not None:
                first = self._where_of(first_i)
                raise _RecordProblem(f"duplicate data_id {did!r} (first seen at {first})", "data_id",
                                     hint="data_ids must be unique; fix or remove one of them, or pass "
                                          "--skip-invalid (skip_invalid=True) to drop the later one")
            h = None
        else:
            did = None
            key = _canonical_json(turns)
            if original is not None:  # the tool turns are content too: two runs of one tool differ
                key += "\x1f" + json.dumps(original, ensure_ascii=False, sort_keys=True, default=str)
            h = "h" + hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]

        rec_origin = rec.get("origin")
        if rec_origin is not None:
            if not isinstance(rec_origin, str) or not rec_origin.strip():
                raise _RecordProblem(f"origin must be a non-empty string, got {_type_name(rec_origin)}"
                                     if not isinstance(rec_origin, str) else "origin is empty", "origin")
            origin = rec_origin

        consumed = _CONSUMED[schema]
        extra = {k: v for k, v in rec.items() if k not in consumed}
        if original is not None:  # the whole conversation, tool calls and results included, for the output
            extra["messages"] = original
        extra_s = extra_json(extra)

        # Everything validated: append.
        if did is not None:
            self.explicit[did] = self.n
        self.ids.append(did)
        self.hashes.append(h)
        self.origins.append(origin)
        for r, c in turns:
            self.roles.append(r)
            self.contents.append(c)
            self._pending_chars += len(c)
        self.msg_offsets.append(len(self.roles))
        self.n_turns.append(len(users))
        self.schema.append(schema)
        self.source.append(where)
        self.extra.append(extra_s)
        self.n += 1
        self._pending += 1
        if self._pending >= FLUSH_ROWS or self._pending_chars >= FLUSH_CHARS:
            self._flush()

    def _where_of(self, i: int) -> str:
        """The ``file:line`` of record ``i`` (flushed or pending)."""
        for part, rows in zip(self._parts, self._part_rows):
            if i < rows:
                return str(part["source"][i].as_py())
            i -= rows
        return self.source[i]

    def _flush(self) -> None:
        """Move the pending records' columns into Arrow arrays and drop their Python objects, so
        memory holds Arrow buffers (a few bytes over the text) rather than Python strings.

        Every text is stored once: the message contents go into one buffer, and ``instruction``,
        ``response``, ``user_turns`` and ``responses`` are string views into it (16 bytes a
        value; users' turns and answers are exactly the contents of the user and assistant
        messages), so the table holds each text once rather than three times."""
        if self._pending == 0:
            return
        s = pa.large_string()
        # the system allocator: these buffers end up in the polars frame (zero-copy), and what is
        # freed goes back to the OS instead of staying in Arrow's own pool (measured at 1M rows:
        # 120 MB lower peak, and faster)
        pool = pa.system_memory_pool()

        def arr(values, typ=s):
            return pa.array(values, typ, memory_pool=pool)

        contents = arr(self.contents)
        role = np.asarray(self.roles, dtype=object)
        msg_off = np.asarray(self.msg_offsets, dtype=np.int64)
        is_user, is_answer = role == "user", role == "assistant"
        # per record: [first, end) of its user turns among all user turns, the same for answers
        user_off = np.concatenate(([0], np.cumsum(is_user)))[msg_off]
        answer_off = np.concatenate(([0], np.cumsum(is_answer)))[msg_off]
        user_idx, answer_idx = np.flatnonzero(is_user), np.flatnonzero(is_answer)

        self._parts.append({
            "origin": arr(self.origins),
            "messages": pa.LargeListArray.from_arrays(
                arr(msg_off, pa.int64()),
                pa.StructArray.from_arrays([arr(self.roles), _string_views(contents, np.arange(len(contents)))],
                                           names=["role", "content"], memory_pool=pool),
                pool=pool),
            "instruction": _string_views(contents, user_idx[user_off[:-1]]),
            "response": _string_views(contents, answer_idx[answer_off[1:] - 1]),
            "user_turns": pa.LargeListArray.from_arrays(arr(user_off, pa.int64()), _string_views(contents, user_idx), pool=pool),
            "responses": pa.LargeListArray.from_arrays(arr(answer_off, pa.int64()), _string_views(contents, answer_idx), pool=pool),
            "n_turns": arr(self.n_turns, pa.int32()),
            "schema": arr(self.schema),
            "source": arr(self.source),
            "extra": arr(self.extra),
        })
        self._part_rows.append(self._pending)
        self._pending = self._pending_chars = 0
        self.origins, self.roles, self.contents, self.msg_offsets = [], [], [], [0]
        self.n_turns, self.schema, self.source, self.extra = [], [], [], []

    # -- final table -------------------------------------------------------------------------
    def _assign_ids(self) -> list[str]:
        used = set(self.explicit)
        seen: dict[str, int] = {}
        out = []
        for did, h in zip(self.ids, self.hashes):
            if did is not None:
                out.append(did)
                continue
            k = seen.get(h, 0) + 1
            cand = h if k == 1 else f"{h}-{k}"
            while cand in used:  # only when an explicit id happens to look like a hash id
                k += 1
                cand = f"{h}-{k}"
            seen[h] = k
            used.add(cand)
            out.append(cand)
        return out

    def frame(self, id_flag: bool = False) -> pl.DataFrame:
        """The records as one polars frame. Columns are converted one at a time and each one's
        Arrow chunks are released right after, so the peak holds the frame plus one column.
        ``id_flag``: add ``_id_hashed`` (the data_id was made from the content, not given), which
        lets several inputs' hashed ids be numbered across the pool (see ``load_pool``)."""
        self._flush()
        ids = self._assign_ids()
        series = [pl.Series("data_id", ids, dtype=pl.String)]
        if id_flag:
            series.append(pl.Series("_id_hashed", [i is None for i in self.ids], dtype=pl.Boolean))
        del ids
        names = ["origin", "messages", "instruction", "response", "user_turns", "responses", "n_turns", "schema", "source", "extra"]
        for name in names:
            arr = pa.chunked_array([p.pop(name) for p in self._parts])
            col = pl.from_arrow(arr, rechunk=False)
            assert isinstance(col, pl.Series)
            series.append(col.alias(name).cast(OUTPUT_COLUMNS[name]))  # type: ignore[arg-type]
            del arr, col
        self._parts = []
        return pl.DataFrame(series)


