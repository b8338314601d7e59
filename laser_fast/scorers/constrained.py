"""Constrained decoding of JSON answers for the in-process judges (``--judge-backend transformers``).

A judge's answer format is a JSON schema (the same one an OpenAI-compatible server gets as
``response_format``). :func:`compile_schema` turns the small subset of JSON schema the judges use
into a token-level program; :class:`JSONConstraint` is a logits processor that lets greedy
decoding pick only the tokens that keep the answer inside the schema, so every answer parses,
even from a 135M model.

The program is a tiny non-deterministic automaton over token ids:

* ``lit``: a fixed token sequence (braces, keys, separators, the quotes of an enum value);
* ``str``: free text inside a JSON string: any token whose characters keep the string open
  (escapes checked; control characters such as newlines only escaped, as JSON wants), or one whose
  last character closes it; after ``cap`` tokens the string is closed by force;
* ``alt`` / ``jmp``: a choice between continuations (enums, booleans, the end of an array) and a jump;
* ``end``: the end-of-sequence token.

Supported schema: objects (``properties`` written in order, all of them), strings (``enum`` too),
booleans, integers (with both ``minimum`` and ``maximum`` at most 1,000 values apart, else unbounded:
an optional minus sign and 1-6 digits), arrays of any of these (``maxItems``, default 8); a string's
``maxLength`` caps it in tokens, not characters. An unsupported schema raises
:class:`UnsupportedSchema`; the backend then decodes freely.
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["JSONConstraint", "Program", "TokenTable", "UnsupportedSchema", "compile_schema", "token_table"]

_VALID_ESCAPES = frozenset('"\\/bfnrt')


class UnsupportedSchema(ValueError):
    """The schema uses a feature the constrained decoder does not handle."""


# --------------------------------------------------------------------------------------------
# the vocabulary seen from inside a JSON string
# --------------------------------------------------------------------------------------------

@dataclass
class TokenTable:
    """Per-token facts for string content, for a start state ``s`` (0: normal, 1: after a backslash).

    Attributes:
        stay: ``stay[s]`` bool per token: the token's characters keep the string open.
        close: ``close[s]`` bool per token: the token closes the string with its last character.
        end_escaped: ``end_escaped[s]`` per token: 1 when the string is left after a backslash.
        quote: the id of the token ``"`` alone (used to close a string by force).
        eos: end-of-sequence ids.
        size: vocabulary size the tables cover.
    """

    stay: tuple[np.ndarray, np.ndarray]
    close: tuple[np.ndarray, np.ndarray]
    end_escaped: tuple[np.ndarray, np.ndarray]
    quote: int
    eos: tuple[int, ...]
    size: int
    _masks: dict = field(default_factory=dict, repr=False)

    def string_mask(self, state: int, at_cap: bool) -> np.ndarray:
        """Allowed tokens inside a string in ``state``; at the cap only what closes it soonest
        (computed once per case; do not change the array returned)."""
        key = (state, at_cap)
        m = self._masks.get(key)
        if m is None:
            if at_cap and state == 0:
                m = np.zeros(self.size, dtype=bool)
                m[self.quote] = True
            elif at_cap:
                m = self.stay[1] & (self.end_escaped[1] == 0)
            else:
                m = self.stay[state] | self.close[state]
            self._masks[key] = m
        return m


def _scan(text: str, state: int) -> tuple[int, int]:
    """(-1 invalid | 0 stays open | 1 closes at the last char, end state) of ``text`` from ``state``."""
    esc = state
    n = len(text)
    for k, ch in enumerate(text):
        if esc:
            if ch not in _VALID_ESCAPES:
                return -1, 0
            esc = 0
        elif ch == "\\":
            esc = 1
        elif ch == '"':
            return (1, 0) if k == n - 1 else (-1, 0)
        elif ord(ch) < 0x20:  # JSON strings hold control characters (newlines, tabs) only escaped
            return -1, 0
    return 0, esc


#: (id(tokenizer), vocabulary size) -> (tokenizer, table); the tokenizer is kept so its id stays its own
_TABLES: dict[tuple[int, int], tuple[Any, TokenTable]] = {}
_TABLES_KEPT = 8
_TABLES_LOCK = threading.Lock()


def token_table(tok, vocab_size: int | None = None) -> TokenTable:
    """The :class:`TokenTable` of a tokenizer (built once per tokenizer object, ~1 s per 50k tokens).

    Special and added tokens and tokens that decode to nothing are never allowed inside a string.
    """
    size = int(vocab_size or len(tok))
    key = (id(tok), size)
    with _TABLES_LOCK:
        hit = _TABLES.get(key)
        if hit is not None and hit[0] is tok:  # the id of a freed tokenizer can be another's
            return hit[1]
    n = min(size, len(tok))
    texts = tok.batch_decode([[i] for i in range(n)], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    banned = set(getattr(tok, "all_special_ids", []) or [])
    banned |= set(getattr(tok, "added_tokens_decoder", {}) or {})
    stay = (np.zeros(size, dtype=bool), np.zeros(size, dtype=bool))
    close = (np.zeros(size, dtype=bool), np.zeros(size, dtype=bool))
    end_esc = (np.zeros(size, dtype=np.int8), np.zeros(size, dtype=np.int8))
    for i, t in enumerate(texts):
        if not t or i in banned:
            continue
        for s in (0, 1):
            kind, e = _scan(t, s)
            if kind == 0:
                stay[s][i] = True
                end_esc[s][i] = e
            elif kind == 1:
                close[s][i] = True
    quote = tok.encode('"', add_special_tokens=False)
    if len(quote) != 1 or not close[0][quote[0]]:
        cands = np.flatnonzero(close[0])
        if cands.size == 0:
            raise UnsupportedSchema("the tokenizer has no token that closes a JSON string")
        quote = [int(min(cands, key=lambda i: len(texts[i])))]
    eos = tok.eos_token_id
    eos_ids = tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None)
    if not eos_ids:
        raise UnsupportedSchema("the tokenizer has no end-of-sequence token")
    table = TokenTable(stay, close, end_esc, int(quote[0]), eos_ids, size)
    with _TABLES_LOCK:
        while len(_TABLES) >= _TABLES_KEPT:  # the entries hold their tokenizers: keep a few
            _TABLES.pop(next(iter(_TABLES)))
        _TABLES[key] = (tok, table)
    return table


# --------------------------------------------------------------------------------------------
# schema -> program
# --------------------------------------------------------------------------------------------

@dataclass
class Program:
    """A compiled schema: ``ops`` (see the module doc) and the most tokens it can produce."""

    ops: list[tuple]
    max_tokens: int


class _Builder:
    """Emits the ops of a schema; each method returns the most non-string tokens it can produce."""

    def __init__(self, encode, string_cap: int, max_items: int):
        self.encode = encode
        self.cap = string_cap
        self.max_items = max_items
        self.ops: list[tuple] = []
        self.strings = 0

    def lit(self, text: str) -> int:
        ids = tuple(self.encode(text))
        if ids:
            self.ops.append(("lit", ids))
        return len(ids)

    def alt(self) -> int:
        self.ops.append(("alt", []))
        return len(self.ops) - 1

    def jmp(self) -> int:
        self.ops.append(("jmp", None))
        return len(self.ops) - 1

    def choice(self, options: Sequence[str]) -> int:
        """One of several literal texts."""
        if len(options) == 1:
            return self.lit(options[0])
        a = self.alt()
        jumps = []
        longest = 0
        for opt in options:
            self.ops[a][1].append(len(self.ops))
            longest = max(longest, self.lit(opt))
            jumps.append(self.jmp())
        for j in jumps:
            self.ops[j] = ("jmp", len(self.ops))
        return longest

    def value(self, schema: Mapping[str, Any]) -> int:
        if not isinstance(schema, Mapping):
            raise UnsupportedSchema(f"schema {schema!r} is not an object")
        if "enum" in schema:
            return self.choice([json.dumps(v, ensure_ascii=False) for v in schema["enum"]])
        if "const" in schema:
            return self.lit(json.dumps(schema["const"], ensure_ascii=False))
        typ = schema.get("type")
        if typ == "object":
            props = schema.get("properties")
            if not props:
                raise UnsupportedSchema("an object schema without 'properties'")
            n = self.lit("{")
            for k, (name, sub) in enumerate(props.items()):
                n += self.lit((", " if k else "") + json.dumps(str(name), ensure_ascii=False) + ": ")
                n += self.value(sub)
            return n + self.lit("}")
        if typ == "string":
            n = self.lit('"')
            self.ops.append(("str", int(schema.get("maxLength") or self.cap)))
            self.strings += 0 if schema.get("maxLength") else 1
            return n
        if typ == "boolean":
            return self.choice(["true", "false"])
        if typ == "integer":
            lo, hi = schema.get("minimum"), schema.get("maximum")
            if lo is not None and hi is not None and 0 <= int(hi) - int(lo) <= 1000:
                return self.choice([str(v) for v in range(int(lo), int(hi) + 1)])
            if lo is not None or hi is not None:
                raise UnsupportedSchema(f"integer bounds minimum={lo}, maximum={hi}: the constrained decoder holds "
                                        "only ranges of at most 1,001 values with both bounds")
            a = self.alt()  # an optional minus sign
            self.ops[a][1].append(len(self.ops))
            n = self.lit("-")
            self.ops[a][1].append(len(self.ops))
            z = self.alt()  # then 0, or a leading digit 1-9 and up to 5 more digits
            self.ops[z][1].append(len(self.ops))
            zero = self.lit("0")
            j = self.jmp()
            self.ops[z][1].append(len(self.ops))
            digits = self.choice([str(v) for v in range(1, 10)])
            for _ in range(5):
                a = self.alt()
                self.ops[a][1].append(len(self.ops))
                digits += self.choice([str(v) for v in range(10)])
                self.ops[a][1].append(len(self.ops))
            self.ops[j] = ("jmp", len(self.ops))
            return n + max(zero, digits)
        if typ == "array":
            items = schema.get("items")
            if not isinstance(items, Mapping):
                raise UnsupportedSchema("an array schema without one 'items' schema")
            count = int(schema.get("maxItems") or self.max_items)
            n = self.lit("[")
            exits = []
            for k in range(count):
                a = self.alt()
                exits.append(a)
                self.ops[a][1].append(len(self.ops))  # another item
                if k:
                    n += self.lit(", ")
                n += self.value(items)
            end = len(self.ops)
            for a in exits:
                self.ops[a][1].append(end)  # or the end of the array
            return n + self.lit("]")
        raise UnsupportedSchema(f"schema type {typ!r} is not supported by the constrained decoder")


def compile_schema(schema: Mapping[str, Any], tok, *, max_tokens: int = 1024, max_items: int = 8) -> Program:
    """Compile ``schema`` for ``tok`` so that every complete answer has at most ``max_tokens`` tokens
    (or the fixed parts alone, if they are longer).

    Each string gets an equal share of what the fixed parts leave (at least 8 tokens); a string
    with ``maxLength`` keeps that cap in tokens.

    Raises:
        UnsupportedSchema: the schema uses a feature outside the supported subset.
    """
    def encode(text: str) -> list[int]:
        return list(tok.encode(text, add_special_tokens=False))

    probe = _Builder(encode, 0, max_items)
    fixed = probe.value(schema)
    # a string takes at most cap + 2 tokens: cap of text, one that ends an escape, the closing quote
    fixed += 2 * sum(1 for op in probe.ops if op[0] == "str")
    cap = max(8, (int(max_tokens) - fixed - 1) // probe.strings) if probe.strings else 0
    b = _Builder(encode, cap, max_items)
    b.value(schema)
    b.ops.append(("end", None))
    strings = sum(op[1] for op in b.ops if op[0] == "str")
    return Program(b.ops, fixed + strings + 1)


# --------------------------------------------------------------------------------------------
# running a program
# --------------------------------------------------------------------------------------------

class _Row:
    """The automaton state of one answer: a set of threads ``(pc, a, b)``.

    ``lit``: a = position in the literal; ``str``: a = tokens so far, b = escaped (0/1).
    """

    __slots__ = ("done", "ops", "threads")

    def __init__(self, program: Program):
        self.ops = program.ops
        self.threads: set[tuple[int, int, int]] = set()
        self.done = False
        self._add(0, 0, 0)

    def _add(self, pc: int, a: int, b: int, seen: set | None = None) -> None:
        """Add a thread at ``pc``, following ``alt`` and ``jmp`` (epsilon moves)."""
        seen = seen if seen is not None else set()
        if pc in seen:
            return
        seen.add(pc)
        op = self.ops[pc]
        if op[0] == "alt":
            for t in op[1]:
                self._add(t, 0, 0, seen)
        elif op[0] == "jmp":
            self._add(op[1], 0, 0, seen)
        else:
            self.threads.add((pc, a, b))

    def allowed(self, table: TokenTable) -> tuple[set[int], list[int]]:
        """What the threads accept: ``(string mask keys, single token ids)``; a key is
        ``2 * escaped + at_cap`` (see :meth:`TokenTable.string_mask`)."""
        keys: set[int] = set()
        ids: list[int] = []
        for pc, a, b in self.threads:
            op = self.ops[pc]
            if op[0] == "lit":
                ids.append(op[1][a])
            elif op[0] == "str":
                keys.add(2 * b + int(a >= op[1]))
            else:  # end
                ids.extend(table.eos)
        return keys, ids

    def advance(self, token: int, table: TokenTable) -> None:
        old, self.threads = self.threads, set()
        for pc, a, b in old:
            op = self.ops[pc]
            if op[0] == "lit":
                if op[1][a] == token:
                    if a + 1 < len(op[1]):
                        self.threads.add((pc, a + 1, b))
                    else:
                        self._add(pc + 1, 0, 0)
            elif op[0] == "str":
                at_cap = a >= op[1]
                if at_cap and b == 0:
                    if token == table.quote:
                        self._add(pc + 1, 0, 0)
                elif table.close[b][token] and not at_cap:
                    self._add(pc + 1, 0, 0)
                elif table.stay[b][token]:
                    self.threads.add((pc, a + 1, int(table.end_escaped[b][token])))
            elif token in table.eos:
                self.done = True
        if not self.threads:
            self.done = True


class JSONConstraint:
    """A logits processor (``transformers`` ``LogitsProcessor`` protocol) for a batch of answers.

    Args:
        programs: one :class:`Program` per row of the batch, or None for a row decoded freely.
        table: the tokenizer's :class:`TokenTable`.
        prompt_width: the width of the (left-padded) prompt batch; columns after it are generated.
    """

    def __init__(self, programs: Sequence[Program | None], table: TokenTable, prompt_width: int):
        self.rows = [None if p is None else _Row(p) for p in programs]
        self.table = table
        self.width = int(prompt_width)
        self._masks = None  # (6, V) on the scores' device: the 4 string masks, "anything", "nothing"

    def _device_masks(self, scores):
        import torch

        if self._masks is None or self._masks.device != scores.device or self._masks.shape[1] != scores.shape[1]:
            v = scores.shape[1]
            m = np.zeros((6, v), dtype=bool)
            n = min(v, self.table.size)
            for key in range(4):
                m[key, :n] = self.table.string_mask(key // 2, bool(key % 2))[:n]
            m[4] = True
            self._masks = torch.from_numpy(m).to(scores.device)
        return self._masks

    def __call__(self, input_ids, scores):
        """Advance every row by its last token and mask the scores of the tokens no row state
        accepts. The per-row work is a few set operations; the ``(B, V)`` mask is gathered and
        scattered on the scores' device."""
        import torch

        step = input_ids.shape[1] - self.width
        if step > 0:
            last = input_ids[:, -1].tolist()
            for r, t in zip(self.rows, last):
                if r is not None and not r.done:
                    r.advance(int(t), self.table)
        masks = self._device_masks(scores)
        v = scores.shape[1]
        first = np.full(len(self.rows), 5, dtype=np.int64)  # one string-mask key per row ("anything" 4, "nothing" 5)
        # further string keys of a row (rare: several string threads), by their rank in the row, so that
        # no row repeats within one rank: a repeated index in ``keep[rows] |= ...`` keeps one write only
        extra_rows: list[list[int]] = [[], [], []]
        extra_keys: list[list[int]] = [[], [], []]
        tok_rows: list[int] = []
        tok_ids: list[int] = []
        eos = list(self.table.eos)
        for k, r in enumerate(self.rows):
            if r is None:
                first[k] = 4
                continue
            keys, ids = (set(), eos) if r.done else r.allowed(self.table)
            for j, key in enumerate(sorted(keys)):
                if j == 0:
                    first[k] = key
                else:
                    extra_rows[j - 1].append(k)
                    extra_keys[j - 1].append(key)
            tok_rows.extend([k] * len(ids))
            tok_ids.extend(ids)
        dev = scores.device
        keep = torch.index_select(masks, 0, torch.from_numpy(first).to(dev))
        for rows, keys in zip(extra_rows, extra_keys):
            if rows:
                er = torch.tensor(rows, device=dev)
                keep[er] |= masks[torch.tensor(keys, device=dev)]
        if tok_rows:
            ids_t = torch.tensor(tok_ids, device=dev)
            ok = ids_t < v
            keep[torch.tensor(tok_rows, device=dev)[ok], ids_t[ok]] = True
        return scores.masked_fill(~keep, float("-inf"))
