"""One type per pass-through field across the selected records, so the JSONL output loads in
pyarrow, polars and ``datasets`` alike and the Parquet output keeps every value.

Input sources may give the same field different JSON types (``"id": 5`` in one file,
``"id": "s3"`` in another). pyarrow's JSON reader then stops ("changed from number to string")
and a Parquet column would have to turn one kind into the other. A field whose kinds conflict
(at any depth; integers and floats are one kind, null goes with anything) is written as text
in both outputs: strings as they are, every other value as its JSON text; so is a field holding
an integer outside 64 bits, which no Parquet reader of ours takes. The manifest lists
these fields with the kinds they had (``outputs.retyped_fields``), and the run warns about them.

Example:
    >>> extras = [{"id": 5, "tags": ["a"]}, {"id": "s3", "tags": []}]
    >>> conflicting_fields(extras)
    {'id': ['number', 'string']}
    >>> [retype(e, {"id"}) for e in extras]
    [{'id': '5', 'tags': ['a']}, {'id': 's3', 'tags': []}]
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

_CONFLICT = "conflict"
#: an integer outside int64: polars would store it as Int128, which pyarrow and ``datasets`` cannot read
_BIG = "integer beyond int64"


def _kind(v: Any) -> Any:
    """The JSON type signature of ``v``: a kind name, ``("list", item)`` or ``("object", {key: sig})``."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int) and not -(2**63) <= v < 2**63:
        return _BIG
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        item: Any = "null"
        for x in v:
            item = _merge(item, _kind(x))
        return ("list", item)
    if isinstance(v, dict):
        return ("object", {k: _kind(x) for k, x in v.items()})
    return "string"  # anything else is written as text anyway


def _merge(a: Any, b: Any) -> Any:
    if a == "null" or a == b:
        return b
    if b == "null":
        return a
    if isinstance(a, tuple) and isinstance(b, tuple) and a[0] == b[0]:
        if a[0] == "list":
            return ("list", _merge(a[1], b[1]))
        keys = dict.fromkeys([*a[1], *b[1]])
        return ("object", {k: _merge(a[1].get(k, "null"), b[1].get(k, "null")) for k in keys})
    return _CONFLICT


def _conflicts(sig: Any) -> bool:
    if sig in (_CONFLICT, _BIG):
        return True
    if isinstance(sig, tuple):
        return _conflicts(sig[1]) if sig[0] == "list" else any(_conflicts(s) for s in sig[1].values())
    return False


def _top(sig: Any) -> str:
    return sig[0] if isinstance(sig, tuple) else sig


def conflicting_fields(extras: Iterable[dict]) -> dict[str, list[str]]:
    """The fields whose values have conflicting JSON types, each with the (top-level) kinds seen."""
    merged: dict[str, Any] = {}
    kinds: dict[str, set[str]] = {}
    for ex in extras:
        for k, v in ex.items():
            s = _kind(v)
            merged[k] = _merge(merged.get(k, "null"), s)
            if s != "null":
                kinds.setdefault(k, set()).add(_top(s))
    return {k: sorted(kinds.get(k, ())) for k, s in merged.items() if _conflicts(s)}


def as_text(v: Any) -> str | None:
    """A value of a retyped field: strings unchanged, None stays None, the rest as JSON text."""
    if v is None or isinstance(v, str):
        return v
    return json.dumps(v, ensure_ascii=False, sort_keys=False)


def retype(extra: dict, fields: set[str] | frozenset[str]) -> dict:
    """``extra`` with the values of ``fields`` as text (see :func:`as_text`)."""
    if not fields or fields.isdisjoint(extra):
        return extra
    return {k: as_text(v) if k in fields else v for k, v in extra.items()}
