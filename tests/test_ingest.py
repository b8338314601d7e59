"""Tests for laser_fast.io.ingest: formats, schemas, ids, origins, extra passthrough and bad input."""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laser_fast.errors import InputError, LaserError
from laser_fast.io.builder import OUTPUT_COLUMNS
from laser_fast.io.ingest import read_records, records_from_frame

SHARED_POOL = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_eval_pool.jsonl.gz"


def write_jsonl(path: Path, rows, *, trailing_newline: bool = True) -> Path:
    text = "\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows)
    if trailing_newline:
        text += "\n"
    path.write_text(text, encoding="utf-8")
    return path


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def expected_hash(messages) -> str:
    canon = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return "h" + hashlib.sha1(canon.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Schemas
# ---------------------------------------------------------------------------------------------


def test_messages_schema_and_output_columns(tmp_path):
    p = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": msgs(("system", "Be brief."), ("user", "Hi?"), ("assistant", "Hello."))},
    ])
    df, skipped = read_records(p)
    assert skipped == []
    assert df.columns == list(OUTPUT_COLUMNS)
    assert dict(df.schema) == OUTPUT_COLUMNS
    row = df.row(0, named=True)
    assert row["messages"] == msgs(("system", "Be brief."), ("user", "Hi?"), ("assistant", "Hello."))
    assert row["instruction"] == "Hi?"
    assert row["response"] == "Hello."
    assert row["user_turns"] == ["Hi?"]
    assert row["responses"] == ["Hello."]
    assert row["n_turns"] == 1
    assert row["schema"] == "messages"
    assert row["source"] == f"{p}:1"
    assert row["origin"] == "chat"
    assert row["extra"] == "{}"


def test_sharegpt_schema_role_mapping(tmp_path):
    conv = [
        {"from": "system", "value": "sys"},
        {"from": "human", "value": "q1"},
        {"from": "gpt", "value": "a1"},
        {"from": "user", "value": "q2"},
        {"from": "chatgpt", "value": "a2"},
        {"from": "human", "value": "q3"},
        {"from": "bing", "value": "a3"},
        {"from": "human", "value": "q4"},
        {"from": "bard", "value": "a4"},
        {"from": "human", "value": "q5"},
        {"from": "assistant", "value": "a5"},
    ]
    p = write_jsonl(tmp_path / "sg.jsonl", [{"id": "x1", "conversations": conv}])
    df, _ = read_records(p)
    row = df.row(0, named=True)
    assert row["schema"] == "sharegpt"
    assert [m["role"] for m in row["messages"]] == ["system"] + ["user", "assistant"] * 5
    assert row["user_turns"] == ["q1", "q2", "q3", "q4", "q5"]
    assert row["responses"] == ["a1", "a2", "a3", "a4", "a5"]
    assert row["extra"] == '{"id": "x1"}'


def test_alpaca_with_and_without_input(tmp_path):
    p = write_jsonl(tmp_path / "alp.jsonl", [
        {"instruction": "Translate.", "input": "Bonjour", "output": "Hello"},
        {"instruction": "Say hi.", "input": "", "output": "Hi"},
        {"instruction": "Say bye.", "output": "Bye"},
    ])
    df, _ = read_records(p)
    assert df["instruction"].to_list() == ["Translate.\n\nBonjour", "Say hi.", "Say bye."]
    assert df["response"].to_list() == ["Hello", "Hi", "Bye"]
    assert df["messages"][0].to_list() == msgs(("user", "Translate.\n\nBonjour"), ("assistant", "Hello"))
    assert set(df["schema"]) == {"alpaca"}
    assert df["extra"].to_list() == ["{}"] * 3
    assert df["n_turns"].to_list() == [1, 1, 1]


def test_multi_turn_kept_whole_and_addressable(tmp_path):
    m = msgs(("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("assistant", "a2"),
             ("user", "u3"), ("assistant", "a3"))
    df, _ = read_records(write_jsonl(tmp_path / "mt.jsonl", [{"messages": m}]))
    row = df.row(0, named=True)
    assert row["messages"] == m
    assert row["n_turns"] == 3
    assert row["instruction"] == "u1" and row["response"] == "a3"
    for i in range(3):
        assert row["user_turns"][i] == f"u{i + 1}"
        assert row["responses"][i] == f"a{i + 1}"
    # Turn i and its answer line up in polars too.
    pairs = df.select(pl.col("user_turns").list.get(1), pl.col("responses").list.get(1)).row(0)
    assert pairs == ("u2", "a2")


# ---------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------


def test_jsonl_gz_by_suffix_and_by_magic(tmp_path):
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(5)]
    data = ("\n".join(json.dumps(r) for r in rows) + "\n").encode()
    gz = tmp_path / "pool.jsonl.gz"
    gz.write_bytes(gzip.compress(data))
    df, _ = read_records(gz)
    assert df.height == 5 and df["origin"][0] == "pool"
    odd = tmp_path / "pool.data"  # no known suffix: gzip magic bytes decide
    odd.write_bytes(gzip.compress(data))
    df2, _ = read_records(odd)
    assert df2["instruction"].to_list() == df["instruction"].to_list()


def test_parquet_all_schemas_and_extra(tmp_path):
    pq.write_table(pa.table({
        "instruction": ["q0", "q1"], "input": ["ctx", None], "output": ["a0", "a1"],
        "score": [1.5, float("nan")], "tags": [["a", "b"], []],
    }), tmp_path / "alp.parquet")
    pq.write_table(pa.table({
        "messages": [msgs(("user", "hi"), ("assistant", "yo")),
                     msgs(("system", "s"), ("user", "u"), ("assistant", "a"), ("user", "u2"), ("assistant", "a2"))],
        "data_id": ["m1", "m2"],
    }), tmp_path / "msg.parquet")
    pq.write_table(pa.table({
        "conversations": [[{"from": "human", "value": "q"}, {"from": "gpt", "value": "r"}]],
        "origin": ["sg-src"],
    }), tmp_path / "sg.parquet")
    df, skipped = read_records([tmp_path / "alp.parquet", tmp_path / "msg.parquet", tmp_path / "sg.parquet"])
    assert skipped == []
    assert df["schema"].to_list() == ["alpaca", "alpaca", "messages", "messages", "sharegpt"]
    assert df["instruction"].to_list() == ["q0\n\nctx", "q1", "hi", "u", "q"]
    assert df["extra"][0] == '{"score": 1.5, "tags": ["a", "b"]}'
    got = json.loads(df["extra"][1])  # NaN kept as a JSONL input keeps it (the output writes null)
    assert got["tags"] == [] and math.isnan(got["score"])
    assert df["data_id"][2:4].to_list() == ["m1", "m2"]
    assert df["n_turns"][3] == 2
    assert df["source"].to_list()[:2] == [f"{tmp_path / 'alp.parquet'}:row 0", f"{tmp_path / 'alp.parquet'}:row 1"]
    assert df["origin"].to_list() == ["alp", "alp", "msg", "msg", "sg-src"]


def test_parquet_bad_row_names_row(tmp_path):
    p = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"instruction": ["q0", "q1"], "output": ["a0", None]}), p)
    with pytest.raises(InputError, match=r"bad\.parquet:row 1: .*output"):
        read_records(p)
    df, skipped = read_records(p, skip_invalid=True)
    assert df.height == 1
    assert skipped == [{"file": str(p), "line": 1, "key": "output", "reason": skipped[0]["reason"]}]


def test_records_from_frame_polars_and_arrow():
    pdf = pl.DataFrame({"instruction": ["Hi?", "Yo?"], "output": ["Hello.", "Hey."], "k": [1, 2]})
    df, skipped = records_from_frame(pdf, origin="mem")
    assert skipped == []
    assert df["source"].to_list() == ["mem:row 0", "mem:row 1"]
    assert df["origin"].to_list() == ["mem", "mem"]
    assert df["extra"].to_list() == ['{"k": 1}', '{"k": 2}']
    df2, _ = records_from_frame(pdf.to_arrow())
    assert df2["data_id"].to_list() == df["data_id"].to_list()
    assert df2["origin"][0] == "dataframe"
    with pytest.raises(InputError, match="no records"):
        records_from_frame(pdf.head(0))


# ---------------------------------------------------------------------------------------------
# Schema detection and override
# ---------------------------------------------------------------------------------------------


def test_autodetect_per_file_and_override(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "q", "output": "r", "messages": "not a list"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"conversations": [{"from": "human", "value": "q"},
                                                              {"from": "gpt", "value": "r"}]}])
    # 'messages' wins detection for file a, and its value is invalid.
    with pytest.raises(InputError, match="messages"):
        read_records([a, b])
    df, _ = read_records([a], schema="alpaca")
    assert df["schema"].to_list() == ["alpaca"]
    # the unconsumed 'messages' field is passed through untouched
    assert df["extra"][0] == '{"messages": "not a list"}'
    df, _ = read_records(b)
    assert df["schema"][0] == "sharegpt"
    with pytest.raises(InputError, match="unknown schema"):
        read_records(b, schema="vicuna")


def test_detection_uses_first_valid_record_when_skipping(tmp_path):
    p = write_jsonl(tmp_path / "x.jsonl", [
        "{broken",
        {"foo": 1},
        {"instruction": "q", "output": "r"},
    ])
    df, skipped = read_records(p, skip_invalid=True)
    assert df.height == 1 and df["schema"][0] == "alpaca"
    assert [s["line"] for s in skipped] == [1, 2]


def test_record_not_matching_detected_schema(tmp_path):
    p = write_jsonl(tmp_path / "x.jsonl", [
        {"instruction": "q", "output": "r"},
        {"messages": msgs(("user", "u"), ("assistant", "a"))},
    ])
    with pytest.raises(InputError, match=r"x\.jsonl:2: .*'instruction'"):
        read_records(p)


# ---------------------------------------------------------------------------------------------
# data_id
# ---------------------------------------------------------------------------------------------


def test_data_id_kept_hashed_and_suffixed(tmp_path):
    m1 = msgs(("user", "same"), ("assistant", "answer é"))
    p = write_jsonl(tmp_path / "ids.jsonl", [
        {"data_id": "keep-me", "messages": m1},
        {"data_id": 42, "messages": m1},
        {"messages": m1},
        {"messages": msgs(("user", "other"), ("assistant", "x"))},
        {"messages": m1},
        {"messages": m1},
    ])
    df, _ = read_records(p)
    h = expected_hash(m1)
    assert df["data_id"].to_list() == ["keep-me", "42", h, expected_hash(msgs(("user", "other"), ("assistant", "x"))),
                                       f"{h}-2", f"{h}-3"]
    # Stable across reads.
    assert read_records(p)[0]["data_id"].to_list() == df["data_id"].to_list()


def test_explicit_id_that_looks_like_a_numbered_hash_is_skipped(tmp_path):
    """A record whose own data_id is the next numbered hash ("<hash>-2") keeps it; the repeated
    conversation without an id takes the number after it, so no id is given twice."""
    m1 = msgs(("user", "same"), ("assistant", "answer"))
    h = expected_hash(m1)
    p = write_jsonl(tmp_path / "ids.jsonl", [
        {"messages": m1},
        {"data_id": f"{h}-2", "messages": msgs(("user", "another"), ("assistant", "x"))},
        {"messages": m1},
    ])
    ids = read_records(p)[0]["data_id"].to_list()
    assert ids == [h, f"{h}-2", f"{h}-3"]


def test_alpaca_hash_is_over_normalised_messages(tmp_path):
    p = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Do", "input": "this", "output": "ok"}])
    df, _ = read_records(p)
    assert df["data_id"][0] == expected_hash(msgs(("user", "Do\n\nthis"), ("assistant", "ok")))


def test_duplicate_explicit_data_id(tmp_path):
    p = write_jsonl(tmp_path / "dup.jsonl", [
        {"data_id": "a", "instruction": "q1", "output": "r"},
        {"data_id": "b", "instruction": "q2", "output": "r"},
        {"data_id": "a", "instruction": "q3", "output": "r"},
    ])
    with pytest.raises(InputError) as ei:
        read_records(p)
    msg = str(ei.value)
    assert f"{p}:3" in msg and f"{p}:1" in msg and "'a'" in msg
    df, skipped = read_records(p, skip_invalid=True)
    assert df["data_id"].to_list() == ["a", "b"]
    assert skipped[0]["line"] == 3 and skipped[0]["key"] == "data_id"


def test_duplicate_explicit_data_id_across_files(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"data_id": 7, "instruction": "q", "output": "r"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"data_id": "7", "instruction": "q2", "output": "r"}])
    with pytest.raises(InputError, match=r"b\.jsonl:1.*a\.jsonl:1"):
        read_records([a, b])


@pytest.mark.parametrize("bad", ["", "   ", None, 1.5, True, ["x"]])
def test_bad_data_id(tmp_path, bad):
    p = write_jsonl(tmp_path / "x.jsonl", [{"data_id": bad, "instruction": "q", "output": "r"}])
    with pytest.raises(InputError, match=r"x\.jsonl:1: .*data_id"):
        read_records(p)


# ---------------------------------------------------------------------------------------------
# origin
# ---------------------------------------------------------------------------------------------


def test_origin_rules(tmp_path):
    a = write_jsonl(tmp_path / "first.jsonl", [
        {"instruction": "q", "output": "r", "origin": "from-record"},
        {"instruction": "q2", "output": "r"},
    ])
    gz = tmp_path / "second.json.gz"
    gz.write_bytes(gzip.compress(b'{"instruction": "q3", "output": "r"}\n'))
    df, _ = read_records([a, gz])
    assert df["origin"].to_list() == ["from-record", "first", "second"]
    df, _ = read_records([a, gz], origin="given")
    assert df["origin"].to_list() == ["from-record", "given", "given"]
    df, _ = read_records([a, gz], origin={str(gz): "mapped"})
    assert df["origin"].to_list() == ["from-record", "first", "mapped"]
    df, _ = read_records([a, gz], origin={"first.jsonl": "by-name"})
    assert df["origin"].to_list() == ["from-record", "by-name", "second"]
    # origin is consumed, not in extra
    assert df["extra"][0] == "{}"


# ---------------------------------------------------------------------------------------------
# extra passthrough
# ---------------------------------------------------------------------------------------------


def test_extra_passthrough_exact(tmp_path):
    rec = {"zeta": 1, "instruction": "q", "nested": {"b": [1, 2.5, None], "a": "é"}, "output": "r",
           "flag": False, "big": 12345678901234567890, "alpha": "x\ny", "none": None, "input": ""}
    p = write_jsonl(tmp_path / "x.jsonl", [rec])
    df, _ = read_records(p)
    extra = df["extra"][0]
    expected = {k: v for k, v in rec.items() if k not in ("instruction", "input", "output")}
    assert extra == json.dumps(expected, ensure_ascii=False)
    assert list(json.loads(extra)) == ["zeta", "nested", "flag", "big", "alpha", "none"]
    # flat fast path produces the same text as json.dumps
    flat = {"s": "tab\t\"q\" ü \u2028", "i": -3, "t": True, "n": None}
    p2 = write_jsonl(tmp_path / "y.jsonl", [{**flat, "instruction": "q", "output": "r"}])
    assert read_records(p2)[0]["extra"][0] == json.dumps(flat, ensure_ascii=False)


def test_blank_lines_ignored_and_line_numbers_physical(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('\n{"instruction": "q", "output": "r"}\n\n   \n{"instruction": "q2", "output": "r"}\n\n')
    df, _ = read_records(p)
    assert df["source"].to_list() == [f"{p}:2", f"{p}:5"]


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_records(tmp_path / "nope.jsonl")


def test_empty_files(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    (tmp_path / "b.jsonl").write_text("\n  \n\n")
    (tmp_path / "e.jsonl.gz").write_bytes(gzip.compress(b""))
    for name in ("e.jsonl", "b.jsonl", "e.jsonl.gz"):
        with pytest.raises(InputError, match="contains no records"):
            read_records(tmp_path / name, skip_invalid=True)
    pq.write_table(pa.table({"instruction": pa.array([], pa.string()), "output": pa.array([], pa.string())}),
                   tmp_path / "e.parquet")
    with pytest.raises(InputError, match="contains no records"):
        read_records(tmp_path / "e.parquet")


def test_invalid_json_names_line(tmp_path):
    p = write_jsonl(tmp_path / "x.jsonl", [{"instruction": "q", "output": "r"}, '{"instruction": "q",',
                                           {"instruction": "q2", "output": "r"}])
    with pytest.raises(InputError) as ei:
        read_records(p)
    assert f"{p}:2:" in str(ei.value) and "line 2" in str(ei.value)
    assert "truncated" not in str(ei.value)
    assert "--skip-invalid" in str(ei.value)


def test_truncated_last_line(tmp_path):
    p = write_jsonl(tmp_path / "x.jsonl", [{"instruction": "q", "output": "r"}, '{"instruction": "q2", "outp'],
                    trailing_newline=False)
    with pytest.raises(InputError, match=r"x\.jsonl:2: .*truncated"):
        read_records(p)
    df, skipped = read_records(p, skip_invalid=True)
    assert df.height == 1 and skipped[0]["line"] == 2


def test_truncated_gzip(tmp_path):
    rows = "".join(json.dumps({"instruction": f"q{i}" * 50, "output": f"r{i}"}) + "\n" for i in range(2000))
    blob = gzip.compress(rows.encode())
    p = tmp_path / "t.jsonl.gz"
    p.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InputError, match="truncated"):
        read_records(p)
    with pytest.raises(InputError, match="truncated"):  # file-level: raised even when skipping
        read_records(p, skip_invalid=True)


def test_not_an_object(tmp_path):
    p = write_jsonl(tmp_path / "x.jsonl", [{"instruction": "q", "output": "r"}, "[1, 2]"])
    with pytest.raises(InputError, match=r"x\.jsonl:2: .*not an object"):
        read_records(p)


def test_unknown_schema_lists_keys(tmp_path):
    p = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "q", "completion": "r"}])
    with pytest.raises(InputError) as ei:
        read_records(p)
    msg = str(ei.value)
    for word in ("'prompt'", "'completion'", "messages", "sharegpt", "alpaca", "schema"):
        assert word in msg
    pq.write_table(pa.table({"prompt": ["q"]}), tmp_path / "x.parquet")
    with pytest.raises(InputError, match="'prompt'"):
        read_records(tmp_path / "x.parquet")


@pytest.mark.parametrize("rec, key", [
    ({"messages": msgs(("user", "q"), ("assistant", "a"))[:1] + [{"role": "assistant", "content": 3}]},
     "messages[1].content"),
    ({"messages": [{"role": "user", "content": "q"}, "oops"]}, "messages[1]"),
    ({"messages": {"role": "user"}}, "messages"),
    ({"messages": [{"role": 1, "content": "q"}]}, "messages[0].role"),
    ({"conversations": [{"from": "human", "value": None}]}, "conversations[0].value"),
    ({"instruction": ["q"], "output": "r"}, "instruction"),
    ({"instruction": "q", "input": 5, "output": "r"}, "input"),
    ({"instruction": "q", "output": {"text": "r"}}, "output"),
])
def test_wrong_types_name_key(tmp_path, rec, key):
    p = write_jsonl(tmp_path / "x.jsonl", [rec])
    with pytest.raises(InputError) as ei:
        read_records(p)
    assert ei.value.key == key
    assert ei.value.where == f"{p}:1"
    assert f"(key '{key}')" in str(ei.value)


def test_bad_role(tmp_path):
    p = write_jsonl(tmp_path / "x.jsonl", [
        {"messages": msgs(("user", "q"), ("assistant", "a"))},
        {"messages": msgs(("user", "q"), ("narrator", "a"))},
    ])
    with pytest.raises(InputError, match=r"x\.jsonl:2: .*'narrator'"):
        read_records(p)
    # a tool's result passes through (issue 18), but it is no answer
    p1 = write_jsonl(tmp_path / "t.jsonl", [{"messages": msgs(("user", "q"), ("tool", "a"))}])
    with pytest.raises(InputError, match=r"t\.jsonl:1: .*no assistant answer"):
        read_records(p1)
    p2 = write_jsonl(tmp_path / "y.jsonl", [{"conversations": [{"from": "robot", "value": "q"}]}])
    with pytest.raises(InputError, match="'robot'"):
        read_records(p2)


@pytest.mark.parametrize("turns, pattern", [
    ((("user", "q"),), "no assistant answer"),
    ((("user", "q"), ("assistant", "a"), ("user", "q2")), "no assistant answer"),
    ((("system", "s"),), "no user turn"),
    ((), "empty"),
    ((("user", "q"), ("user", "q2"), ("assistant", "a")), "consecutive"),
    ((("user", "q"), ("assistant", "a"), ("assistant", "b")), "consecutive"),
    ((("assistant", "a"), ("user", "q")), "start with a user turn"),
    ((("user", "q"), ("system", "s"), ("assistant", "a")), "system"),
    ((("user", "  \n"), ("assistant", "a")), "empty"),
    ((("user", "q"), ("assistant", "")), "empty assistant"),
])
def test_conversation_structure(tmp_path, turns, pattern):
    p = write_jsonl(tmp_path / "x.jsonl", [{"messages": msgs(*turns)}])
    with pytest.raises(InputError, match=pattern) as ei:
        read_records(p)
    assert str(ei.value).startswith(f"{p}:1: ")


def test_alpaca_empty_instruction_or_output(tmp_path):
    p = write_jsonl(tmp_path / "x.jsonl", [{"instruction": " ", "output": "r"}])
    with pytest.raises(InputError, match="empty"):
        read_records(p)
    p = write_jsonl(tmp_path / "y.jsonl", [{"instruction": "q", "output": ""}])
    with pytest.raises(InputError, match="empty assistant"):
        read_records(p)


def test_errors_are_laser_errors(tmp_path):
    with pytest.raises(LaserError):
        read_records(tmp_path / "nope.jsonl")


def test_skip_invalid_counts(tmp_path):
    p = write_jsonl(tmp_path / "x.jsonl", [
        {"instruction": "ok1", "output": "r"},
        "not json",
        "[1]",
        {"instruction": 3, "output": "r"},
        {"instruction": "q", "output": ""},
        {"instruction": "ok2", "output": "r"},
        {"data_id": "d", "instruction": "ok3", "output": "r"},
        {"data_id": "d", "instruction": "dup", "output": "r"},
    ])
    df, skipped = read_records(p, skip_invalid=True)
    assert df["instruction"].to_list() == ["ok1", "ok2", "ok3"]
    assert len(skipped) == 5
    assert [s["line"] for s in skipped] == [2, 3, 4, 5, 8]
    assert all(set(s) == {"file", "line", "key", "reason"} and s["file"] == str(p) for s in skipped)
    assert skipped[2]["key"] == "instruction"
    # without skip_invalid: the first bad line raises
    with pytest.raises(InputError, match=r"x\.jsonl:2"):
        read_records(p)


def test_all_invalid_raises_even_when_skipping(tmp_path):
    p = write_jsonl(tmp_path / "x.jsonl", ["nope", "[]"])
    with pytest.raises(InputError, match="no valid records"):
        read_records(p, skip_invalid=True)


# ---------------------------------------------------------------------------------------------
# Real data (skipped when the shared folder is absent)
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not SHARED_POOL.exists(), reason=f"shared data not present at {SHARED_POOL}")
def test_alpaca_eval_pool():
    t0 = time.perf_counter()
    df, skipped = read_records(SHARED_POOL)
    elapsed = time.perf_counter() - t0
    print(f"read {df.height} rows from {SHARED_POOL.name} in {elapsed:.2f}s")
    assert skipped == []
    assert df.height == 32199
    assert df["data_id"].n_unique() == 32199
    assert set(df["schema"]) == {"alpaca"}
    assert set(json.loads(df["extra"][0])) == {"generator", "source"}


def test_chunked_builder_same_frame_and_duplicate_location(tmp_path, monkeypatch):
    """Records are moved into Arrow every FLUSH_ROWS records: the frame must not depend on that,
    and a duplicate data_id must still name where its first copy is."""
    import laser_fast.io.ingest as ing

    rows = [{"data_id": f"r{i}", "instruction": f"q{i}", "output": f"a{i}", "tag": i} for i in range(23)]
    p = tmp_path / "pool.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    whole, _ = ing.read_records(p)
    monkeypatch.setattr("laser_fast.io.builder.FLUSH_ROWS", 5)
    chunked, _ = ing.read_records(p)
    assert chunked.equals(whole)
    p.write_text("\n".join(json.dumps(r) for r in rows + [dict(rows[2], instruction="other")]) + "\n")
    with pytest.raises(InputError, match=r"duplicate data_id 'r2' \(first seen at .*pool.jsonl:3\)"):
        ing.read_records(p)


def test_string_views_share_one_text_buffer():
    """instruction/response/turn columns are Arrow string views into the chunk's one text
    buffer: every length class (empty, inline <= 12 bytes, longer), multi-byte UTF-8, a sliced
    source array, and a source without any long text."""
    import numpy as np
    import pyarrow as pa

    from laser_fast.io.builder import _string_views

    texts = ["", "a", "twelve bytes", "thirteen byte", "héllo wörld ünïcode ✓", "x" * 100, "ok"]
    base = pa.array(["pad"] + texts, pa.large_string()).slice(1)
    idx = np.array([6, 0, 3, 2, 4, 5, 1, 3])
    v = _string_views(base, idx)
    assert v.type == pa.string_view() and v.to_pylist() == [texts[i] for i in idx]
    assert pl.from_arrow(v).to_list() == [texts[i] for i in idx]
    short = pa.array(["a", "bb", ""], pa.large_string())
    assert _string_views(short, np.array([2, 1, 0])).to_pylist() == ["", "bb", "a"]
    with pytest.raises(ValueError, match="without nulls"):
        _string_views(pa.array(["a", None], pa.large_string()), np.array([0]))


def test_jsonl_reads_the_same_with_or_without_orjson(tmp_path):
    """NaN, Infinity and integers beyond 64 bits, which Python's json reads and orjson refuses, give
    the same records whether the optional orjson is installed or not."""
    from laser_fast.io import schemas

    f = tmp_path / "odd.jsonl"
    f.write_text('{"instruction": "a", "output": "x", "w": NaN, "big": 1180591620717411303424}\n'
                 '{"instruction": "b", "output": "y", "w": -Infinity}\n')
    df, _ = read_records(str(f))
    first, second = (json.loads(e) for e in df["extra"].to_list())
    assert math.isnan(first["w"]) and first["big"] == 2**70 and second["w"] == -math.inf
    for line in f.read_bytes().splitlines():
        assert repr(schemas._loads(line)) == repr(schemas._std_loads(line))
    with pytest.raises(schemas._JSON_ERRORS):
        schemas._loads(b'{"instruction": nope}')
