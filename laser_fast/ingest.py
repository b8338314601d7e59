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
    >>> from laser_fast.ingest import read_records
    >>> records, skipped = read_records(["pool.jsonl.gz"], skip_invalid=True)  # doctest: +SKIP
    >>> records.select("data_id", "instruction", "response").head()  # doctest: +SKIP
"""
from __future__ import annotations

import datetime as _dt
import decimal
import gzip
import hashlib
import json
import logging
import math
import os
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from .errors import InputError
from .progress import want_progress

try:  # orjson is optional: ~3x faster parsing when present.
    import orjson as _orjson  # type: ignore[import-not-found]

    _loads = _orjson.loads
    _JSON_ERRORS: tuple[type[BaseException], ...] = (_orjson.JSONDecodeError, ValueError, TypeError)
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None
    _json_decode = json.JSONDecoder().decode

    def _loads(raw: bytes) -> Any:
        # Decoding first skips json.loads' per-call encoding detection (~25% faster).
        return _json_decode(raw.decode("utf-8"))

    _JSON_ERRORS = (ValueError, TypeError)

# The C string encoder json.dumps(..., ensure_ascii=False) uses, without its per-call set-up.
_enc_str = getattr(json.encoder, "c_encode_basestring", None) or json.encoder.py_encode_basestring

logger = logging.getLogger(__name__)

__all__ = [
    "OUTPUT_COLUMNS",
    "SCHEMAS",
    "read_records",
    "records_from_frame",
]

#: Accepted values of ``schema=``.
SCHEMAS: tuple[str, ...] = ("messages", "sharegpt", "alpaca")

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

_ROLES = frozenset(("system", "user", "assistant"))
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
}
# Fields consumed by each schema (everything else goes to ``extra``).
_CONSUMED = {
    "messages": frozenset(("messages", "data_id", "origin")),
    "sharegpt": frozenset(("conversations", "data_id", "origin")),
    "alpaca": frozenset(("instruction", "input", "output", "data_id", "origin")),
}
_STRIP_SUFFIXES = (".gz", ".jsonl", ".json", ".parquet")
_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"

_RECORD_HINT = "Fix the record or pass --skip-invalid (skip_invalid=True) to drop it"
_SCHEMA_HELP = (
    "Accepted schemas: 'messages' (a list of {role, content}), "
    "'sharegpt' ('conversations': a list of {from, value}), "
    "'alpaca' ('instruction', optional 'input', 'output'). "
    "Rename the fields, or force a schema with --schema / schema=..."
)


class _RecordProblem(Exception):
    """A problem with one record; turned into an InputError or a ``skipped`` entry."""

    def __init__(self, problem: str, key: str | None = None, hint: str = _RECORD_HINT):
        super().__init__(problem)
        self.problem = problem
        self.key = key
        self.hint = hint


# --------------------------------------------------------------------------------------------
# Schema detection and normalisation of one record
# --------------------------------------------------------------------------------------------


def _detect_schema(rec: Mapping[str, Any]) -> str | None:
    if "messages" in rec:
        return "messages"
    if "conversations" in rec:
        return "sharegpt"
    if "instruction" in rec and "output" in rec:
        return "alpaca"
    return None


def _unknown_schema(rec: Mapping[str, Any]) -> _RecordProblem:
    keys = ", ".join(repr(k) for k in list(rec)[:20]) or "none"
    if len(rec) > 20:
        keys += ", ..."
    return _RecordProblem(f"unrecognised record schema; keys seen: {keys}", hint=_SCHEMA_HELP)


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _turns_messages(rec: Mapping[str, Any]) -> list[tuple[str, str]]:
    msgs = rec.get("messages", _MISSING)
    if msgs is _MISSING:
        raise _RecordProblem("record has no 'messages' field (file schema is 'messages')", "messages")
    if not isinstance(msgs, (list, tuple)):
        raise _RecordProblem(f"'messages' must be a list of {{role, content}}, got {_type_name(msgs)}", "messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, Mapping):
            raise _RecordProblem(f"message must be an object with role and content, got {_type_name(m)}",
                                 f"messages[{i}]")
        role = m.get("role")
        if not isinstance(role, str):
            raise _RecordProblem(f"role must be a string, got {_type_name(role)}", f"messages[{i}].role")
        if role not in _ROLES:
            raise _RecordProblem(f"unknown role {role!r} (accepted: system, user, assistant)",
                                 f"messages[{i}].role")
        content = m.get("content")
        if not isinstance(content, str):
            raise _RecordProblem(f"content must be a string, got {_type_name(content)}",
                                 f"messages[{i}].content")
        out.append((role, content))
    return out


def _turns_sharegpt(rec: Mapping[str, Any]) -> list[tuple[str, str]]:
    conv = rec.get("conversations", _MISSING)
    if conv is _MISSING:
        raise _RecordProblem("record has no 'conversations' field (file schema is 'sharegpt')", "conversations")
    if not isinstance(conv, (list, tuple)):
        raise _RecordProblem(f"'conversations' must be a list of {{from, value}}, got {_type_name(conv)}",
                             "conversations")
    out = []
    for i, m in enumerate(conv):
        if not isinstance(m, Mapping):
            raise _RecordProblem(f"turn must be an object with from and value, got {_type_name(m)}",
                                 f"conversations[{i}]")
        frm = m.get("from")
        if not isinstance(frm, str):
            raise _RecordProblem(f"'from' must be a string, got {_type_name(frm)}", f"conversations[{i}].from")
        role = _SHAREGPT_ROLES.get(frm.strip().lower())
        if role is None:
            raise _RecordProblem(
                f"unknown speaker {frm!r} (accepted: human/user, gpt/assistant/chatgpt/bing/bard, system)",
                f"conversations[{i}].from")
        value = m.get("value")
        if not isinstance(value, str):
            raise _RecordProblem(f"value must be a string, got {_type_name(value)}", f"conversations[{i}].value")
        out.append((role, value))
    return out


def _turns_alpaca(rec: Mapping[str, Any]) -> list[tuple[str, str]]:
    if "instruction" not in rec:
        raise _RecordProblem("record has no 'instruction' field (file schema is 'alpaca')", "instruction")
    if "output" not in rec:
        raise _RecordProblem("record has no 'output' field (file schema is 'alpaca')", "output")
    ins = rec["instruction"]
    if not isinstance(ins, str):
        raise _RecordProblem(f"instruction must be a string, got {_type_name(ins)}", "instruction")
    inp = rec.get("input")
    if inp is not None and not isinstance(inp, str):
        raise _RecordProblem(f"input must be a string, got {_type_name(inp)}", "input")
    out = rec["output"]
    if not isinstance(out, str):
        raise _RecordProblem(f"output must be a string, got {_type_name(out)}", "output")
    # As the LASER reference: instruction + "\n\n" + input when there is an input.
    user = ins + "\n\n" + inp if inp else ins
    return [("user", user), ("assistant", out)]


_MISSING = object()
_TURN_READERS = {"messages": _turns_messages, "sharegpt": _turns_sharegpt, "alpaca": _turns_alpaca}
_TURN_KEY_FMT = {"messages": "messages[{}]", "sharegpt": "conversations[{}]", "alpaca": "{}"}


def _check_structure(turns: list[tuple[str, str]], schema: str) -> tuple[list[str], list[str]]:
    """Validate turn order; return (user_turns, responses)."""
    kfmt = _TURN_KEY_FMT[schema]

    def key(i: int, field: str) -> str:
        if schema == "alpaca":
            return "instruction" if field == "user" else "output"
        return kfmt.format(i)

    if not turns:
        raise _RecordProblem("conversation is empty (no user turn)", key(0, "user") if schema != "alpaca" else None)
    users: list[str] = []
    answers: list[str] = []
    prev = None
    for i, (role, content) in enumerate(turns):
        if role == "system":
            if i != 0:
                raise _RecordProblem("a system message is only allowed as the first turn", key(i, role))
        elif role == prev:
            raise _RecordProblem(f"two consecutive '{role}' turns (turns must alternate user/assistant)",
                                 key(i, role))
        elif role == "assistant":
            if prev != "user":
                raise _RecordProblem("the conversation must start with a user turn (after an optional system "
                                     "message), not an assistant turn", key(i, role))
            if not content.strip():
                raise _RecordProblem("empty assistant answer", key(i, role))
            answers.append(content)
        else:  # user
            if not content.strip():
                raise _RecordProblem("empty or whitespace-only user turn", key(i, role))
            users.append(content)
        prev = role
    if prev != "assistant":
        if not users:
            raise _RecordProblem("conversation has no user turn", key(0, "user") if schema != "alpaca" else None)
        raise _RecordProblem("no assistant answer: the conversation ends with a user turn",
                             key(len(turns) - 1, "user"))
    return users, answers


def _check_data_id(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise _RecordProblem(f"data_id must be a non-empty string or an integer, got {_type_name(v)}", "data_id")
    s = str(v)
    if not s.strip():
        raise _RecordProblem("data_id is empty", "data_id")
    return s


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


class _Builder:
    """Accumulates normalised records in flat column lists (cheap appends, one table at the end)."""

    def __init__(self, skip_invalid: bool):
        self.skip_invalid = skip_invalid
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
            extra_json: Any) -> None:
        """Validate and append one record (raises _RecordProblem; nothing is appended then)."""
        turns = _TURN_READERS[schema](rec)
        users, _answers = _check_structure(turns, schema)

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
            h = "h" + hashlib.sha1(_canonical_json(turns).encode("utf-8")).hexdigest()[:16]

        rec_origin = rec.get("origin")
        if rec_origin is not None:
            if not isinstance(rec_origin, str) or not rec_origin.strip():
                raise _RecordProblem(f"origin must be a non-empty string, got {_type_name(rec_origin)}"
                                     if not isinstance(rec_origin, str) else "origin is empty", "origin")
            origin = rec_origin

        consumed = _CONSUMED[schema]
        extra = {k: v for k, v in rec.items() if k not in consumed}
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

    def frame(self) -> pl.DataFrame:
        """The records as one polars frame. Columns are converted one at a time and each one's
        Arrow chunks are released right after, so the peak holds the frame plus one column."""
        self._flush()
        ids = self._assign_ids()
        series = [pl.Series("data_id", ids, dtype=pl.String)]
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


# --------------------------------------------------------------------------------------------
# JSON helpers
# --------------------------------------------------------------------------------------------


def _canonical_json(turns: list[tuple[str, str]]) -> str:
    """Exactly ``json.dumps([{"role": r, "content": c}, ...], ensure_ascii=False, sort_keys=True,
    separators=(",", ":"))``, built directly (several times faster)."""
    return "[" + ",".join(['{"content":' + _enc_str(c) + ',"role":' + _enc_str(r) + "}" for r, c in turns]) + "]"


def _dumps_json_extra(obj: dict) -> str:
    """``extra`` for JSONL input: the parsed fields re-serialised as they came, key order kept.

    Same text as ``json.dumps(obj, ensure_ascii=False)``; flat string/int/bool/null values take a
    fast path.
    """
    if not obj:
        return "{}"
    parts = []
    for k, v in obj.items():
        t = type(v)
        if t is str:
            vs = _enc_str(v)
        elif t is int:
            vs = int.__repr__(v)
        elif v is None:
            vs = "null"
        elif t is bool:
            vs = "true" if v else "false"
        else:
            return json.dumps(obj, ensure_ascii=False)
        if type(k) is not str:
            return json.dumps(obj, ensure_ascii=False)
        parts.append(_enc_str(k) + ": " + vs)
    return "{" + ", ".join(parts) + "}"


def _json_safe(v: Any) -> Any:
    """Convert a value read from Arrow/Parquet into something JSON can represent."""
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        # Arrow map columns come back as lists of (key, value) pairs.
        if v and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in v):
            return {k: _json_safe(x) for k, x in v}
        return [_json_safe(x) for x in v]
    if isinstance(v, (_dt.datetime, _dt.date, _dt.time)):
        return v.isoformat()
    if isinstance(v, _dt.timedelta):
        return v.total_seconds()
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            return b.hex()
    if hasattr(v, "tolist"):  # numpy scalars / arrays
        return _json_safe(v.tolist())
    return str(v)


def _dumps_arrow_extra(obj: dict) -> str:
    if not obj:
        return "{}"
    return json.dumps({k: _json_safe(v) for k, v in obj.items()}, ensure_ascii=False)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _stem(path: Path) -> str:
    name = path.name
    changed = True
    while changed:
        changed = False
        for suf in _STRIP_SUFFIXES:
            if name.lower().endswith(suf) and len(name) > len(suf):
                name = name[: -len(suf)]
                changed = True
    return name


def _origin_for(path: Path, given: str | Mapping | None) -> str:
    if isinstance(given, str):
        return given
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


def _file_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".gz"):
        return "gzip"
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:2] == _GZIP_MAGIC:
        return "gzip"
    if head == _PARQUET_MAGIC:
        return "parquet"
    return "jsonl"


class _Progress:
    """A thin optional tqdm wrapper updated in batches (no cost when disabled)."""

    def __init__(self, enabled: bool, desc: str, total: int | None = None):
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # pragma: no cover
                return
            self.bar = tqdm(desc=desc, total=total, unit=" rec", leave=False, mininterval=0.5)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _read_jsonl(path: Path, label: str, kind: str, schema: str | None, origin: str, b: _Builder,
                progress: bool) -> int:
    """Stream one JSONL(.gz) file into the builder; return the number of non-blank lines."""
    opener = gzip.open if kind == "gzip" else open
    file_schema = schema
    n_lines = 0
    lineno = 0
    bar = _Progress(progress, label)
    pending = 0
    try:
        with opener(path, "rb") as fh:
            try:
                for lineno, raw in enumerate(fh, 1):
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
                    if not isinstance(rec, dict):
                        b.problem(label, lineno, where, _RecordProblem(
                            f"line {lineno} is JSON but not an object (got {_json_kind(rec)}); "
                            "each line must hold one record object"))
                        continue
                    try:
                        if file_schema is None:
                            file_schema = _detect_schema(rec)
                            if file_schema is None:
                                raise _unknown_schema(rec)
                            logger.debug("%s: detected schema %r at line %d", label, file_schema, lineno)
                        b.add(rec, file_schema, origin, where, _dumps_json_extra)
                    except _RecordProblem as p:
                        b.problem(label, lineno, where, p)
            except (EOFError, zlib.error, gzip.BadGzipFile) as e:
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
    if n_lines == 0:
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


def _detect_table_schema(columns: list[str]) -> str | None:
    cols = set(columns)
    if "messages" in cols:
        return "messages"
    if "conversations" in cols:
        return "sharegpt"
    if "instruction" in cols and "output" in cols:
        return "alpaca"
    return None


def _read_table(table: pa.Table | Any, label: str, schema: str | None, origin: str, b: _Builder,
                progress: bool) -> int:
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
    file_schema = schema or _detect_table_schema(names)
    if file_schema is None:
        cols = ", ".join(repr(c) for c in names[:20]) or "none"
        raise InputError(label, f"unrecognised table schema; columns seen: {cols}", _SCHEMA_HELP)
    bar = _Progress(progress, label, total=num_rows)
    row0 = 0
    try:
        for batch in batches():
            cols = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
            for j, values in enumerate(zip(*cols)):
                row = row0 + j
                where = f"{label}:row {row}"
                rec = dict(zip(names, values))
                try:
                    b.add(rec, file_schema, origin, where, _dumps_arrow_extra)
                except _RecordProblem as p:
                    b.problem(label, row, where, p)
            row0 += batch.num_rows
            bar.update(batch.num_rows)
    finally:
        bar.close()
    return num_rows


def _read_parquet(path: Path, label: str, schema: str | None, origin: str, b: _Builder, progress: bool) -> int:
    import pyarrow.parquet as pq

    try:
        # streamed: row groups are decoded batch by batch, never the whole file at once
        pf = pq.ParquetFile(path, memory_map=True)
        return _read_table(pf, label, schema, origin, b, progress)
    except (OSError, pa.ArrowException) as e:
        raise InputError(label, f"cannot read the Parquet file ({_short(e)}); it may be truncated or not Parquet",
                         "Re-create the file") from None


def _as_paths(paths: list[str | Path] | str | Path) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    if not isinstance(paths, Iterable):
        raise InputError("input", f"expected a path or a list of paths, got {type(paths).__name__}")
    out = [Path(p) for p in paths]
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


def _finish(b: _Builder, n_seen: int, what: str) -> tuple[pl.DataFrame, list[dict]]:
    if b.skipped:
        logger.warning("skipped %d invalid record(s) of %d; first: %s:%s %s", len(b.skipped), n_seen,
                       b.skipped[0]["file"], b.skipped[0]["line"], b.skipped[0]["reason"])
    if b.n == 0:
        first = b.skipped[0] if b.skipped else None
        detail = f"; first problem at {first['file']}:{first['line']}: {first['reason']}" if first else ""
        raise InputError(what, f"no valid records: all {n_seen} records were invalid{detail}",
                         "Fix the input (see the problem above)")
    df = b.frame()
    logger.info("read %d records from %s (%d skipped)", b.n, what, len(b.skipped))
    return df, b.skipped


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
) -> tuple[pl.DataFrame, list[dict]]:
    """Read and normalise instruction-tuning records from JSONL, JSONL.gz and Parquet files.

    The format is taken from the suffix (``.jsonl``/``.json``[``.gz``], ``.parquet``), falling
    back to the file's magic bytes. The schema (``messages``, ``sharegpt`` or ``alpaca``) is
    detected per file from its first valid record unless ``schema`` forces one. JSONL is read
    line by line; blank lines are ignored.

    Args:
        paths: One path or a list of paths.
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
    b = _Builder(skip_invalid)
    n_seen = 0
    for path in files:
        label = str(path)
        if not path.exists():
            raise InputError(label, "file not found", "Check the path")
        if path.is_dir():
            raise InputError(label, "is a directory, not a file", "Pass the data files themselves")
        try:
            kind = _file_kind(path)
        except OSError as e:
            raise InputError(label, f"cannot read the file ({_short(e)})", "Check the permissions") from None
        file_origin = _origin_for(path, origin)
        before = b.n
        if kind == "parquet":
            n_seen += _read_parquet(path, label, forced, file_origin, b, progress)
        else:
            n_seen += _read_jsonl(path, label, kind, forced, file_origin, b, progress)
        logger.debug("%s: %d records", label, b.n - before)
    what = str(files[0]) if len(files) == 1 else f"{len(files)} files"
    return _finish(b, n_seen, what)


def records_from_frame(
    df: pl.DataFrame | pa.Table,
    *,
    origin: str = "dataframe",
    schema: str | None = None,
    skip_invalid: bool = False,
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
    b = _Builder(skip_invalid)
    n = _read_table(table, origin, forced, origin, b, False)
    return _finish(b, n, origin)
