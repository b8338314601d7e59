"""Record shapes: schema detection, the turn readers and their checks, JSON helpers."""
from __future__ import annotations

import datetime as _dt
import decimal
import json
from collections.abc import Container, Mapping
from typing import Any

_json_decode = json.JSONDecoder().decode


def _std_loads(raw: bytes) -> Any:
    # Decoding first skips json.loads' per-call encoding detection (~25% faster).
    return _json_decode(raw.decode("utf-8"))


try:  # orjson is optional: ~3x faster parsing when present.
    import orjson as _orjson  # type: ignore[import-not-found]

    def _loads(raw: bytes) -> Any:
        try:
            return _orjson.loads(raw)
        except _orjson.JSONDecodeError:
            # what orjson refuses and Python's json reads (NaN / Infinity, integers beyond 64 bits) is
            # read the same with or without orjson; text neither reads is an error from json
            return _std_loads(raw)
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None
    _loads = _std_loads

_JSON_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError)

# The C string encoder json.dumps(..., ensure_ascii=False) uses, without its per-call set-up.
_enc_str = getattr(json.encoder, "c_encode_basestring", None) or json.encoder.py_encode_basestring


_ROLES = frozenset(("system", "user", "assistant"))
#: Roles of tool results (OpenAI ``tool`` / legacy ``function``, Llama ``ipython``): passed through to the
#: output, not scored (a record's instruction and answers are its user and assistant texts)
TOOL_ROLES = frozenset(("tool", "function", "ipython"))
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
    # preference pairs keep prompt/chosen/rejected (KTO: prompt/completion/label) as they came, for the output
    "dpo": frozenset(("data_id", "origin")),
    "kto": frozenset(("data_id", "origin")),
}
_STRIP_SUFFIXES = (".gz", ".jsonl", ".json", ".parquet", ".csv", ".tsv")
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


def _detect_schema(rec: Container[str]) -> str | None:
    """The schema a record's keys (a mapping, or a table's column names as a set) name; None
    when none fits."""
    if "messages" in rec:
        return "messages"
    if "conversations" in rec:
        return "sharegpt"
    if "chosen" in rec and "rejected" in rec:
        return "dpo"
    if "completion" in rec and "label" in rec:
        return "kto"
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
        if role in TOOL_ROLES:
            continue  # a tool's result: kept in the output (see has_tool_turns), not a turn
        if role not in _ROLES:
            raise _RecordProblem(f"unknown role {role!r} (accepted: system, user, assistant, and tool/function/ipython "
                                 "results)", f"messages[{i}].role")
        content = m.get("content")
        if role == "assistant" and (m.get("tool_calls") or m.get("function_call")) and not (isinstance(content, str) and content.strip()):
            continue  # a call of a tool without text: kept in the output, not an answer
        if not isinstance(content, str):
            raise _RecordProblem(f"content must be a string, got {_type_name(content)}",
                                 f"messages[{i}].content")
        out.append((role, content))
    return out


def has_tool_turns(msgs: Any) -> bool:
    """Whether a ``messages`` list holds more than role/content text turns (tool results, tool
    calls, names): then the list is passed through to the output as it came."""
    return isinstance(msgs, (list, tuple)) and any(
        isinstance(m, Mapping) and (m.get("role") in TOOL_ROLES or any(k not in ("role", "content") for k in m)) for m in msgs)


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


# --------------------------------------------------------------------------------------------
# Preference data (TRL's DPO and KTO formats; see laser_fast.io.pairs)
# --------------------------------------------------------------------------------------------


def _pair_messages(v: Any, key: str, default_role: str) -> list[tuple[str, str]]:
    """A prompt or completion: a string (one ``default_role`` turn) or a list of {role, content}."""
    if isinstance(v, str):
        return [(default_role, v)]
    if not isinstance(v, (list, tuple)):
        raise _RecordProblem(f"'{key}' must be a string or a list of {{role, content}}, got {_type_name(v)}", key)
    out = []
    for i, m in enumerate(v):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise _RecordProblem("each message must be an object with a string role and content", f"{key}[{i}]")
        if m["role"] not in _ROLES:
            raise _RecordProblem(f"unknown role {m['role']!r} (accepted in preference pairs: system, user, assistant)", f"{key}[{i}].role")
        out.append((m["role"], m["content"]))
    return out


def pair_sides(rec: Mapping[str, Any], a: str, b: str) -> tuple[list[tuple[str, str]], str, str]:
    """``(prompt turns, answer a, answer b)`` of a preference record whose completions are fields
    ``a`` and ``b`` (DPO: chosen, rejected; KTO: completion only, ``b`` = None). With a
    ``prompt`` field each completion is one assistant answer; without one (TRL's implicit
    prompt) each is a whole conversation ending in an assistant answer, and the turns before it
    must be the same on both sides."""
    prompt = rec.get("prompt")
    answers, prefixes = [], []
    for key in (a, b) if b else (a,):
        if key not in rec:
            raise _RecordProblem(f"record has no '{key}' field", key)
        side = _pair_messages(rec[key], key, "assistant")
        if not side or side[-1][0] != "assistant":
            raise _RecordProblem(f"'{key}' must end with an assistant answer", key)
        if prompt is not None and len(side) != 1:
            raise _RecordProblem(f"with a 'prompt' field, '{key}' must be one assistant answer (a string or a list of one "
                                 f"assistant message), got {len(side)} messages", key)
        answers.append(side[-1][1])
        prefixes.append(side[:-1])
    if prompt is not None:
        turns = _pair_messages(prompt, "prompt", "user")
    else:
        turns = prefixes[0]
        if b and prefixes[1] != turns:
            raise _RecordProblem(f"'{a}' and '{b}' differ before their last answer; give the shared turns as a 'prompt' field", b)
    return turns, answers[0], answers[1] if b else ""


def _turns_dpo(rec: Mapping[str, Any]) -> list[tuple[str, str]]:
    turns, chosen, rejected = pair_sides(rec, "chosen", "rejected")
    if not rejected.strip():
        raise _RecordProblem("empty rejected answer", "rejected")
    return turns + [("assistant", chosen)]


def _turns_kto(rec: Mapping[str, Any]) -> list[tuple[str, str]]:
    if not isinstance(rec.get("label"), bool):
        raise _RecordProblem(f"'label' must be true (a desirable completion) or false, got {_type_name(rec.get('label'))}", "label")
    turns, completion, _ = pair_sides(rec, "completion", None)
    return turns + [("assistant", completion)]


_MISSING = object()
_TURN_READERS = {"messages": _turns_messages, "sharegpt": _turns_sharegpt, "alpaca": _turns_alpaca, "dpo": _turns_dpo, "kto": _turns_kto}
_TURN_KEY_FMT = {"messages": "messages[{}]", "sharegpt": "conversations[{}]", "alpaca": "{}", "dpo": "prompt", "kto": "prompt"}


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
    """Convert a value read from Arrow/Parquet into something JSON can represent. Floats stay as
    they are, NaN and infinities too (Python's ``json`` writes them ``NaN`` / ``Infinity``, as it
    does for a JSONL input's, and reads them back): an infinite score is then refused by name
    instead of read as missing, and the output writes them as null either way."""
    if v is None or isinstance(v, (str, bool, int, float)):
        return v
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


#: Accepted values of ``schema=``.
SCHEMAS: tuple[str, ...] = ("messages", "sharegpt", "alpaca", "dpo", "kto")
